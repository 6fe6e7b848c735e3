//! Keeping the process's key ring in step with the stored key set: the
//! start-up reconciliation, periodic reloads (another instance may have
//! rotated; a retired key may have expired), and `keys list` / `keys rotate`,
//! on a running server ([`Keys`]) or on a stopped database ([`KeyAdmin::Offline`]).

use std::sync::Arc;
use std::time::Duration;

use super::schedule::{self, KeyInfo};
use super::{KeyRing, KeySet, KeyState, SigningConfig};
use crate::clock::Clock;
use crate::error::Error;
use crate::session::Millis;
use crate::store::Store;
use crate::tokens::TokenKeys;

/// Attempts at a compare-and-swap of the key set before giving up (another
/// instance changing it at the same moment makes one attempt fail).
const SWAP_ATTEMPTS: usize = 5;

fn key_error(error: super::KeyError) -> Error {
    Error::Internal(format!("signing keys: {error}"))
}

/// Runs a decision that may generate a key (RSA takes a while) off the
/// async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("key task failed: {e}")))
}

pub struct Keys {
    store: Arc<dyn Store>,
    config: SigningConfig,
    /// The access-token lifetime of the server that ran on this database
    /// before this one (0 if none): its tokens may still be out there.
    pub previous_access_ttl: Duration,
    tokens: Arc<TokenKeys>,
    clock: Clock,
    /// Serialises this process's changes to the set.
    changing: tokio::sync::Mutex<()>,
    /// When the last reload for a token of an unknown key started.
    unknown_key_reload: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// Reloads asked for by tokens of unknown keys start at most this often.
const UNKNOWN_KEY_RELOAD_EVERY: Duration = Duration::from_millis(250);

impl Keys {
    /// Brings the stored set in line with `config` (see
    /// [`schedule::plan_start`]) and builds the ring. Fails the start when
    /// the set cannot be used (e.g. it signs with a key file this server
    /// was not given).
    pub async fn start(
        store: Arc<dyn Store>,
        config: SigningConfig,
        access_ttl: Duration,
        clock: Clock,
    ) -> Result<Keys, Error> {
        let access_ttl = u64::try_from(access_ttl.as_millis()).unwrap_or(u64::MAX);
        let (previous_access_ttl, set, ring) =
            Self::reconcile(&store, &config, access_ttl, &clock).await?;
        tracing::info!(
            alg = config.alg.as_str(),
            kid = %ring.access_signer(clock.now_millis()).kid,
            keys = set.keys.len(),
            "signing keys ready"
        );
        let tokens = Arc::new(TokenKeys::from_ring(ring, &config));
        Ok(Keys {
            store,
            config,
            previous_access_ttl,
            tokens,
            clock,
            changing: tokio::sync::Mutex::new(()),
            unknown_key_reload: tokio::sync::Mutex::new(None),
        })
    }

    async fn reconcile(
        store: &Arc<dyn Store>,
        config: &SigningConfig,
        access_ttl: Millis,
        clock: &Clock,
    ) -> Result<(Duration, KeySet, KeyRing), Error> {
        // The lifetime of the last server that ran here, as first read.
        let mut previous_access_ttl = None;
        for _ in 0..SWAP_ATTEMPTS {
            let set = store.signing_keys().await?;
            let previous =
                *previous_access_ttl.get_or_insert(Duration::from_millis(set.access_ttl));
            let has_sessions = set.generation == 0 && store.count_sessions().await? > 0;
            let now = clock.now_millis();
            let plan = {
                let (config, set) = (config.clone(), set.clone());
                blocking(move || schedule::plan_start(&config, access_ttl, &set, now, has_sessions))
                    .await?
            }
            .map_err(key_error)?;
            let set = match plan {
                None => set,
                Some(mut next) => {
                    if !store.replace_signing_keys(next.clone()).await? {
                        continue;
                    }
                    let signing = |set: &KeySet| {
                        set.keys
                            .iter()
                            .find(|k| k.state(now) == KeyState::Current)
                            .map(|k| (k.kid.clone(), k.alg.as_str()))
                    };
                    if let (Some(before), Some(after)) = (signing(&set), signing(&next)) {
                        if before != after {
                            // Worth a look if nobody meant it (a lost
                            // --signing-alg flag falls back to HS256).
                            tracing::warn!(
                                event = "signing_key_switched",
                                from_kid = %before.0,
                                from_alg = before.1,
                                to_kid = %after.0,
                                to_alg = after.1,
                                "access tokens are now signed with another key; the old one verifies until its tokens expire"
                            );
                        }
                    }
                    next.generation += 1;
                    next
                }
            };
            let ring = KeyRing::build(config, &set, now).map_err(key_error)?;
            return Ok((previous, set, ring));
        }
        Err(Error::Internal(
            "the signing key set kept changing under this server's start".into(),
        ))
    }

    /// The token signer and verifier that uses this key ring.
    pub fn tokens(&self) -> Arc<TokenKeys> {
        Arc::clone(&self.tokens)
    }

    /// Rebuilds the ring if the stored set changed (another instance
    /// rotated) or a key of it expired. An expired key leaves the ring even
    /// when the store cannot be read or written.
    pub async fn reload(&self) -> Result<(), Error> {
        let _changing = self.changing.lock().await;
        let now = self.clock.now_millis();
        let ring = self.tokens.ring();
        let expired = ring.rebuild_at.is_some_and(|at| now >= at);
        let set = match self.store.signing_keys().await {
            Ok(set) => set,
            Err(e) => {
                if expired {
                    if let Ok(rebuilt) = KeyRing::build(&self.config, &ring.set, now) {
                        self.tokens.replace_ring(rebuilt);
                    }
                }
                return Err(e.into());
            }
        };
        if set.generation < ring.generation || (set.generation == ring.generation && !expired) {
            return Ok(());
        }
        // Drop expired keys from the store too, so the set stays small. The
        // ring leaves them out whether or not this write succeeds.
        let mut set = set;
        if set.generation > 0 && set.keys.iter().any(|k| k.state(now) == KeyState::Expired) {
            let mut pruned = set.clone();
            pruned.keys.retain(|k| k.state(now) != KeyState::Expired);
            match self.store.replace_signing_keys(pruned.clone()).await {
                Ok(true) => {
                    pruned.generation += 1;
                    set = pruned;
                }
                // Changed elsewhere meanwhile: the next reload reads it.
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "dropping expired signing keys from the store failed")
                }
            }
        }
        let ring = KeyRing::build(&self.config, &set, now).map_err(key_error)?;
        self.tokens.replace_ring(ring);
        Ok(())
    }

    /// A token whose key this ring lacks failed at `failed_at`: with several
    /// instances, another one may have rotated (`keys rotate --now`) a
    /// moment ago. Makes sure a reload of the set starts after `failed_at`
    /// (one reload serves every token that failed before it started; they
    /// start at most every [`UNKNOWN_KEY_RELOAD_EVERY`], so made-up `kid`s
    /// cost a few store reads a second and wait for them) and answers
    /// whether the ring may have changed since, so the caller verifies
    /// again.
    pub async fn reload_for_unknown_key(&self, failed_at: std::time::Instant) -> bool {
        let mut last = self.unknown_key_reload.lock().await;
        if let Some(started) = *last {
            if started >= failed_at {
                return true;
            }
            let since = started.elapsed();
            if since < UNKNOWN_KEY_RELOAD_EVERY {
                tokio::time::sleep(UNKNOWN_KEY_RELOAD_EVERY - since).await;
            }
        }
        *last = Some(std::time::Instant::now());
        match self.reload().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "reloading the signing keys for an unknown key failed");
                false
            }
        }
    }

    /// Reloads every `interval`, forever.
    pub async fn run_reloader(self: Arc<Self>, interval: Duration) {
        // The first run one interval after the start, not at it: a start
        // does its own writes (seed users, keys), and tests that inject a
        // fault into the next write must not have it land here.
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = self.reload().await {
                tracing::warn!(error = %e, "reloading the signing keys failed");
            }
        }
    }

    async fn rotate(&self, switch_now: bool) -> Result<Vec<KeyInfo>, Error> {
        let _changing = self.changing.lock().await;
        let set = rotate_stored(&self.store, &self.clock, switch_now).await?;
        let now = self.clock.now_millis();
        let ring = KeyRing::build(&self.config, &set, now).map_err(key_error)?;
        self.tokens.replace_ring(ring);
        Ok(schedule::key_infos(&set, now))
    }
}

/// Rotates the stored set with compare-and-swap; returns the set written.
async fn rotate_stored(
    store: &Arc<dyn Store>,
    clock: &Clock,
    switch_now: bool,
) -> Result<KeySet, Error> {
    for _ in 0..SWAP_ATTEMPTS {
        let set = store.signing_keys().await?;
        let now = clock.now_millis();
        let plan = {
            let set = set.clone();
            blocking(move || schedule::plan_rotation(&set, now, switch_now)).await?
        }
        .map_err(key_error)?;
        let (mut next, kid) = plan.map_err(|refused| Error::CannotRotate(refused.0))?;
        if store.replace_signing_keys(next.clone()).await? {
            tracing::warn!(event = "key_rotation", kid = %kid, now = switch_now, "signing key rotated");
            next.generation += 1;
            return Ok(next);
        }
    }
    Err(Error::Internal(
        "the signing key set kept changing during the rotation".into(),
    ))
}

/// `keys list` and `keys rotate`, on a running server or a stopped database.
pub enum KeyAdmin {
    Serving(Arc<Keys>),
    Offline { store: Arc<dyn Store>, clock: Clock },
}

impl KeyAdmin {
    pub async fn list(&self) -> Result<Vec<KeyInfo>, Error> {
        let (store, clock) = match self {
            KeyAdmin::Serving(keys) => (&keys.store, &keys.clock),
            KeyAdmin::Offline { store, clock } => (store, clock),
        };
        let set = store.signing_keys().await?;
        Ok(schedule::key_infos(&set, clock.now_millis()))
    }

    pub async fn rotate(&self, switch_now: bool) -> Result<Vec<KeyInfo>, Error> {
        match self {
            KeyAdmin::Serving(keys) => keys.rotate(switch_now).await,
            KeyAdmin::Offline { store, clock } => {
                let set = rotate_stored(store, clock, switch_now).await?;
                Ok(schedule::key_infos(&set, clock.now_millis()))
            }
        }
    }
}
