//! Login throttling: exponential back-off per account and per client address.
//!
//! Each key (a normalised email, or a client IP address) counts failed
//! logins. The first `free_failures` cost nothing; every failure after that
//! blocks the key for `base_delay × 2^(extra failures − 1)`, capped at
//! `max_delay`. A blocked key is answered 429 before any password is hashed.
//! Nothing locks an account for good: the block always ends, and a key
//! whose last failure is older than `forget_after` starts clean. A
//! successful login clears its account's record (not its address's: one
//! good password must not buy an attacker more guesses elsewhere).
//!
//! Attempts are counted while they run, too: once an account has failed,
//! at most as many attempts on it may run at once as it has failures left
//! before back-off (at least one), because checks happen before hashing and
//! failures are recorded after it.
//!
//! Memory is bounded: records live in two generations of at most
//! `capacity / 2` entries each. When the young generation fills up, the old
//! one is dropped and the young one becomes old; a key still in use is
//! carried into the young generation when it is touched. An attacker cycling
//! through millions of emails or addresses can at worst push out idle
//! records; the table never grows past `capacity`.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    /// Failures per account before back-off starts.
    pub account_free_failures: u32,
    /// Failures per client address before back-off starts.
    pub address_free_failures: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A record whose last failure is older than this is forgotten.
    pub forget_after: Duration,
    /// Most records kept per table (accounts, addresses).
    pub capacity: usize,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        ThrottlePolicy {
            account_free_failures: 5,
            address_free_failures: 20,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(15 * 60),
            forget_after: Duration::from_secs(60 * 60),
            capacity: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last_failure: Instant,
    blocked_until: Instant,
    /// Attempts admitted and not finished yet.
    in_flight: u32,
}

/// A bounded map in two generations (see the module doc).
struct Generations<K> {
    young: HashMap<K, Record>,
    old: HashMap<K, Record>,
    half_capacity: usize,
}

impl<K: Hash + Eq + Clone> Generations<K> {
    fn new(capacity: usize) -> Self {
        Generations {
            young: HashMap::new(),
            old: HashMap::new(),
            half_capacity: (capacity / 2).max(1),
        }
    }

    fn get(&self, key: &K) -> Option<Record> {
        self.young.get(key).or_else(|| self.old.get(key)).copied()
    }

    fn put(&mut self, key: K, record: Record) {
        self.old.remove(&key);
        if self.young.len() >= self.half_capacity && !self.young.contains_key(&key) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, record);
    }

    fn remove(&mut self, key: &K) {
        self.young.remove(key);
        self.old.remove(key);
    }

    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

/// Which key is blocked, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    pub retry_after: Duration,
}

pub struct Throttle {
    policy: ThrottlePolicy,
    accounts: Mutex<Generations<String>>,
    addresses: Mutex<Generations<IpAddr>>,
}

/// Failures that still count at `now`.
fn recent_failures(record: &Record, policy: &ThrottlePolicy, now: Instant) -> u32 {
    if now.duration_since(record.last_failure) < policy.forget_after {
        record.failures
    } else {
        0
    }
}

/// Whether one more attempt for this key may start now: not while blocked,
/// and, when `limit_in_flight` and the key has failed recently, never more at
/// once than the failures it has left before back-off (at least one), so
/// parallel guesses get no more tries than a sequence would. A key with no
/// recent failure is not limited: honest clients log in in parallel.
fn admit<K: Hash + Eq + Clone>(
    table: &Generations<K>,
    key: &K,
    free: u32,
    limit_in_flight: bool,
    policy: &ThrottlePolicy,
    now: Instant,
) -> Result<(), Blocked> {
    let Some(record) = table.get(key) else {
        return Ok(());
    };
    if record.blocked_until > now {
        return Err(Blocked {
            retry_after: record.blocked_until - now,
        });
    }
    if !limit_in_flight {
        return Ok(());
    }
    let failures = recent_failures(&record, policy, now);
    if failures == 0 {
        return Ok(());
    }
    let budget = free.saturating_sub(failures).max(1);
    if record.in_flight >= budget {
        return Err(Blocked {
            retry_after: policy.base_delay,
        });
    }
    Ok(())
}

fn change_in_flight<K: Hash + Eq + Clone>(
    table: &mut Generations<K>,
    key: K,
    now: Instant,
    up: bool,
) {
    let record = table.get(&key);
    let in_flight = record.map_or(0, |r| r.in_flight);
    let in_flight = if up {
        in_flight.saturating_add(1)
    } else {
        in_flight.saturating_sub(1)
    };
    match record {
        Some(record) => table.put(
            key,
            Record {
                in_flight,
                ..record
            },
        ),
        None if up => table.put(
            key,
            Record {
                failures: 0,
                last_failure: now,
                blocked_until: now,
                in_flight,
            },
        ),
        None => {}
    }
}

fn record_failure<K: Hash + Eq + Clone>(
    table: &Mutex<Generations<K>>,
    key: K,
    free: u32,
    policy: &ThrottlePolicy,
    now: Instant,
) {
    let Ok(mut table) = table.lock() else { return };
    let previous = table.get(&key);
    let failures = previous
        .map_or(0, |r| recent_failures(&r, policy, now))
        .saturating_add(1);
    let blocked_until = match failures.checked_sub(free) {
        None | Some(0) => now,
        Some(extra) => {
            let factor = 2u32.saturating_pow(extra - 1);
            now + policy
                .base_delay
                .saturating_mul(factor)
                .min(policy.max_delay)
        }
    };
    let in_flight = previous.map_or(0, |r| r.in_flight);
    table.put(
        key,
        Record {
            failures,
            last_failure: now,
            blocked_until,
            in_flight,
        },
    );
}

/// An admitted login attempt; dropping it ends the attempt.
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    email: String,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Ok(mut accounts) = self.throttle.accounts.lock() {
            change_in_flight(
                &mut accounts,
                std::mem::take(&mut self.email),
                Instant::now(),
                false,
            );
        }
    }
}

impl Throttle {
    pub fn new(policy: ThrottlePolicy) -> Self {
        Throttle {
            policy,
            accounts: Mutex::new(Generations::new(policy.capacity)),
            addresses: Mutex::new(Generations::new(policy.capacity)),
        }
    }

    /// Admits a login attempt for `email` from `address`, or says how long
    /// to wait; called before any hashing. Hold the [`Attempt`] until done.
    /// Parallel attempts are limited per account only: one address may be a
    /// proxy or a NAT in front of many honest users.
    pub fn begin(
        &self,
        email: &str,
        address: Option<IpAddr>,
        now: Instant,
    ) -> Result<Attempt<'_>, Blocked> {
        let policy = &self.policy;
        // Always accounts first, then addresses: one lock order.
        let mut accounts = self.accounts.lock().map_err(|_| Blocked {
            retry_after: policy.base_delay,
        })?;
        let addresses = self.addresses.lock().map_err(|_| Blocked {
            retry_after: policy.base_delay,
        })?;
        let email = email.to_string();
        let account = admit(
            &accounts,
            &email,
            policy.account_free_failures,
            true,
            policy,
            now,
        );
        let client = match address {
            Some(a) => admit(
                &addresses,
                &a,
                policy.address_free_failures,
                false,
                policy,
                now,
            ),
            None => Ok(()),
        };
        match (account, client) {
            (Ok(()), Ok(())) => {}
            (Err(a), Err(b)) => {
                return Err(Blocked {
                    retry_after: a.retry_after.max(b.retry_after),
                })
            }
            (Err(blocked), _) | (_, Err(blocked)) => return Err(blocked),
        }
        change_in_flight(&mut accounts, email.clone(), now, true);
        Ok(Attempt {
            throttle: self,
            email,
        })
    }

    pub fn record_failure(&self, email: &str, address: Option<IpAddr>, now: Instant) {
        let policy = &self.policy;
        record_failure(
            &self.accounts,
            email.to_string(),
            policy.account_free_failures,
            policy,
            now,
        );
        if let Some(address) = address {
            record_failure(
                &self.addresses,
                address,
                policy.address_free_failures,
                policy,
                now,
            );
        }
    }

    pub fn record_success(&self, email: &str) {
        if let Ok(mut accounts) = self.accounts.lock() {
            let key = email.to_string();
            match accounts.get(&key) {
                // Other attempts are still running: keep their count.
                Some(record) if record.in_flight > 0 => accounts.put(
                    key,
                    Record {
                        failures: 0,
                        ..record
                    },
                ),
                _ => accounts.remove(&key),
            }
        }
    }

    /// Records held (accounts, addresses); for tests and metrics.
    pub fn sizes(&self) -> (usize, usize) {
        let accounts = self.accounts.lock().map_or(0, |t| t.len());
        let addresses = self.addresses.lock().map_or(0, |t| t.len());
        (accounts, addresses)
    }
}

#[cfg(test)]
impl Throttle {
    /// Admits and at once ends an attempt: whether one could start now.
    fn check(&self, email: &str, address: Option<IpAddr>, now: Instant) -> Result<(), Blocked> {
        self.begin(email, address, now).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_attempts_get_no_more_tries_than_sequential_ones() {
        let throttle = Throttle::new(policy());
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        // No failure yet: parallel logins are not limited.
        let honest: Vec<_> = (0..10)
            .map(|_| throttle.begin("a@b.c", Some(ip), t0).unwrap())
            .collect();
        drop(honest);
        // One of three free failures used: two attempts may run at once, not a third.
        throttle.record_failure("a@b.c", None, t0);
        let running: Vec<_> = (0..2)
            .map(|_| throttle.begin("a@b.c", Some(ip), t0).unwrap())
            .collect();
        assert!(throttle.begin("a@b.c", Some(ip), t0).is_err());
        assert!(
            throttle.begin("other@b.c", Some(ip), t0).is_ok(),
            "other accounts from the same address are not limited"
        );
        drop(running);
        assert!(
            throttle.begin("a@b.c", Some(ip), t0).is_ok(),
            "finished attempts free their slots"
        );
        // Past the free failures, one attempt at a time.
        for _ in 0..2 {
            throttle.record_failure("a@b.c", None, t0);
        }
        let one = throttle.begin("a@b.c", None, t0).unwrap();
        assert!(throttle.begin("a@b.c", None, t0).is_err());
        drop(one);
        // A success resets the count: parallel logins are free again.
        let a = throttle.begin("a@b.c", None, t0).unwrap();
        throttle.record_success("a@b.c");
        let more: Vec<_> = (0..5)
            .map(|_| throttle.begin("a@b.c", None, t0).unwrap())
            .collect();
        drop((a, more));
    }

    fn policy() -> ThrottlePolicy {
        ThrottlePolicy {
            account_free_failures: 3,
            address_free_failures: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            forget_after: Duration::from_secs(600),
            capacity: 1000,
        }
    }

    #[test]
    fn back_off_doubles_after_the_free_failures_and_is_capped() {
        let throttle = Throttle::new(policy());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(throttle.check("a@b.c", None, t0).is_ok());
            throttle.record_failure("a@b.c", None, t0);
        }
        assert!(
            throttle.check("a@b.c", None, t0).is_ok(),
            "three free failures"
        );
        throttle.record_failure("a@b.c", None, t0);
        assert_eq!(
            throttle.check("a@b.c", None, t0),
            Err(Blocked {
                retry_after: Duration::from_secs(1)
            })
        );
        assert!(
            throttle
                .check("a@b.c", None, t0 + Duration::from_secs(1))
                .is_ok(),
            "the block ends"
        );
        let t1 = t0 + Duration::from_secs(1);
        throttle.record_failure("a@b.c", None, t1);
        assert_eq!(
            throttle.check("a@b.c", None, t1),
            Err(Blocked {
                retry_after: Duration::from_secs(2)
            })
        );
        for _ in 0..20 {
            throttle.record_failure("a@b.c", None, t1);
        }
        assert_eq!(
            throttle.check("a@b.c", None, t1),
            Err(Blocked {
                retry_after: Duration::from_secs(60)
            })
        );
        assert!(throttle.check("other@b.c", None, t1).is_ok(), "per account");
    }

    #[test]
    fn success_clears_the_account_but_not_the_address() {
        let throttle = Throttle::new(policy());
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for n in 0..6 {
            throttle.record_failure(&format!("user{n}@b.c"), Some(ip), t0);
        }
        assert!(
            throttle.check("fresh@b.c", Some(ip), t0).is_err(),
            "the address is blocked for any account"
        );
        assert!(throttle.check("fresh@b.c", None, t0).is_ok());
        for _ in 0..4 {
            throttle.record_failure("victim@b.c", None, t0);
        }
        throttle.record_success("victim@b.c");
        assert!(throttle.check("victim@b.c", None, t0).is_ok());
        assert!(throttle.check("victim@b.c", Some(ip), t0).is_err());
    }

    #[test]
    fn old_failures_are_forgotten() {
        let throttle = Throttle::new(policy());
        let t0 = Instant::now();
        for _ in 0..4 {
            throttle.record_failure("a@b.c", None, t0);
        }
        let later = t0 + Duration::from_secs(601);
        throttle.record_failure("a@b.c", None, later);
        assert!(
            throttle.check("a@b.c", None, later).is_ok(),
            "counting starts again"
        );
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_keys() {
        let throttle = Throttle::new(policy());
        let t0 = Instant::now();
        for n in 0..50_000u32 {
            let ip = IpAddr::from(n.to_be_bytes());
            throttle.record_failure(&format!("user{n}@b.c"), Some(ip), t0);
        }
        let (accounts, addresses) = throttle.sizes();
        assert!(
            accounts <= 1000 && addresses <= 1000,
            "{accounts} {addresses}"
        );
        // A key that keeps failing stays tracked: it is carried into the young generation.
        for _ in 0..10 {
            throttle.record_failure("persistent@b.c", None, t0);
            for n in 0..300u32 {
                throttle.record_failure(&format!("noise{n}@b.c"), None, t0);
            }
        }
        assert!(throttle.check("persistent@b.c", None, t0).is_err());
    }
}
