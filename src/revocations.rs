//! The revocation feed: which sessions ended before their time while some
//! of their access tokens may still be unexpired, so that services that
//! verify access tokens themselves can refuse them too.
//!
//! Every way a session ends early appends an entry to a log in the store,
//! in the transaction that ends it ([`crate::store::Store::revocations`]).
//! This module turns the log into answers: a bootstrap (every entry still
//! in force), increments after a cursor, and long polls that wait for the
//! next commit that logs one. An entry is in force `until` its session's
//! end plus the access-token lifetime (the latest `exp` any of its access
//! tokens can have); after that it is left out, and later pruned.
//!
//! A cursor names the log (its epoch: another database, or a backup copy,
//! has another) and a position in it; it survives restarts, since both are
//! stored. A cursor the log can no longer serve (pruned past it, another
//! log, ahead of it) is [`Error::CursorExpired`]: the verifier starts over.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::error::Error;
use crate::store::{Revocation, Store};

/// Most entries in one answer; a verifier follows the cursor for the rest.
pub const MAX_ENTRIES: usize = 50_000;
/// Longest long poll.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Most long polls waiting at once; past it a poll answers at once, so
/// waiting requests cannot take every connection the server allows.
pub const MAX_PARKED: usize = 4096;
/// Log entries pruned per transaction.
const PRUNE_BATCH: usize = 10_000;

/// One session that ended, as a verifier sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    /// Session id, as in the tokens' `sid`.
    pub sid: String,
    /// User id, as in the tokens' `sub`.
    pub sub: String,
    /// Unix seconds: refuse access tokens of `sid` until then.
    pub until: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedAnswer {
    pub entries: Vec<FeedEntry>,
    pub cursor: String,
}

/// A position in one database's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    epoch: u64,
    seq: u64,
}

impl Cursor {
    fn encode(self) -> String {
        format!("{:016x}-{:x}", self.epoch, self.seq)
    }

    fn parse(text: &str) -> Result<Cursor, Error> {
        let malformed = || Error::InvalidRequest("after is not a cursor of this feed".into());
        let (epoch, seq) = text.split_once('-').ok_or_else(malformed)?;
        if epoch.len() != 16 || seq.is_empty() || seq.len() > 16 {
            return Err(malformed());
        }
        Ok(Cursor {
            epoch: u64::from_str_radix(epoch, 16).map_err(|_| malformed())?,
            seq: u64::from_str_radix(seq, 16).map_err(|_| malformed())?,
        })
    }
}

pub struct RevocationFeed {
    store: Arc<dyn Store>,
    access_ttl: Duration,
    clock: Clock,
    /// Long polls waiting now.
    parked: Arc<AtomicUsize>,
}

/// A place among the parked long polls, given back on drop.
struct Parked(Arc<AtomicUsize>);

impl Parked {
    fn take(count: &Arc<AtomicUsize>) -> Option<Parked> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_PARKED).then_some(n + 1)
            })
            .ok()
            .map(|_| Parked(Arc::clone(count)))
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RevocationFeed {
    pub fn new(store: Arc<dyn Store>, access_ttl: Duration, clock: Clock) -> Self {
        RevocationFeed {
            store,
            access_ttl,
            clock,
            parked: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Unix seconds until which access tokens of a session that ended at
    /// `ended_at` (ms) may be unexpired.
    fn until(&self, revocation: &Revocation) -> u64 {
        let ttl = u64::try_from(self.access_ttl.as_millis()).unwrap_or(u64::MAX);
        revocation.ended_at.saturating_add(ttl).div_ceil(1000)
    }

    /// Without `after`, every entry still in force; with it, the entries
    /// logged since, waiting up to `wait` (at most [`MAX_WAIT`]) for one
    /// when there is none, or until `stop` completes.
    pub async fn read(
        &self,
        after: Option<&str>,
        wait: Duration,
        stop: impl Future<Output = ()>,
    ) -> Result<FeedAnswer, Error> {
        let after = after.map(Cursor::parse).transpose()?;
        let wait = wait.min(MAX_WAIT);
        // Subscribed before the read, so a commit between the read and the
        // wait still wakes it.
        let mut changes = self.store.watch_revocations();
        changes.borrow_and_update();
        let deadline = tokio::time::Instant::now() + wait;
        tokio::pin!(stop);
        let mut parked = None;
        loop {
            let page = self
                .store
                .revocations(after.map(|c| c.seq), MAX_ENTRIES)
                .await?;
            if let Some(cursor) = after {
                let servable = cursor.epoch == page.epoch
                    && cursor.seq >= page.pruned_through
                    && cursor.seq <= page.last_seq;
                if !servable {
                    return Err(Error::CursorExpired);
                }
            }
            let next = match page.entries.last() {
                Some(last) if page.entries.len() == MAX_ENTRIES => last.seq,
                _ => page.last_seq,
            };
            let now = self.clock.now_secs();
            let entries: Vec<FeedEntry> = page
                .entries
                .iter()
                .map(|r| (r, self.until(r)))
                .filter(|(_, until)| *until > now)
                .map(|(r, until)| FeedEntry {
                    sid: r.session_id.to_hex(),
                    sub: r.user_id.to_string(),
                    until,
                })
                .collect();
            let answer = FeedAnswer {
                entries,
                cursor: Cursor {
                    epoch: page.epoch,
                    seq: next,
                }
                .encode(),
            };
            let nothing_new = page.entries.is_empty();
            if after.is_none() || !nothing_new || wait.is_zero() {
                return Ok(answer);
            }
            if parked.is_none() {
                parked = Parked::take(&self.parked);
                if parked.is_none() {
                    return Ok(answer);
                }
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(answer);
                    }
                }
                () = tokio::time::sleep_until(deadline) => return Ok(answer),
                () = &mut stop => return Ok(answer),
            }
        }
    }

    /// Deletes log entries no longer in force (all of their access tokens
    /// have expired); returns how many.
    pub async fn prune(&self) -> Result<usize, Error> {
        let ttl = u64::try_from(self.access_ttl.as_millis()).unwrap_or(u64::MAX);
        let ended_before = self.clock.now_millis().saturating_sub(ttl);
        let mut total = 0;
        loop {
            let pruned = self
                .store
                .prune_revocations(ended_before, PRUNE_BATCH)
                .await?;
            total += pruned;
            if pruned < PRUNE_BATCH {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = Cursor {
            epoch: 0xdead_beef_0000_0001,
            seq: 42,
        };
        assert_eq!(Cursor::parse(&cursor.encode()).unwrap(), cursor);
        for bad in [
            "",
            "x",
            "deadbeef-1",
            "00000000deadbeef-",
            "00000000deadbeef-zz",
            "00000000deadbeef-11111111111111111",
        ] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }
}
