//! Wiring: a validated [`ServeConfig`] becomes the shared [`App`] state
//! (store, token keys, password hasher, use cases), and seed users are
//! created. Nothing global: the server and the tests receive an `Arc<App>`.

use std::sync::Arc;
use std::time::Duration;

use crate::accounts::{Credential, NewAccount};
use crate::auth::{Auth, AuthPolicy};
use crate::clock::Clock;
use crate::config::ServeConfig;
use crate::error::Error;
use crate::keys::Keys;
use crate::passwords::{Password, Passwords};
use crate::store::postgres::PgStore;
use crate::store::redb::{Location, RedbStore};
use crate::store::space::SpaceGuard;
use crate::store::Store;

/// Sessions deleted per sweep transaction, so the sweep never holds the writer long.
const SWEEP_BATCH: usize = 1000;

/// How often the signing keys are checked for changes made elsewhere (by
/// another instance) and for keys that expired.
const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

pub struct App {
    pub auth: Auth,
    /// The signing keys: the JWKS, rotation, reloads.
    pub keys: Arc<Keys>,
    pub config: ServeConfig,
    /// The free-space guard of the data file system.
    pub space: Arc<SpaceGuard>,
    /// What /metrics reports.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The revocation feed (`/oauth/revocations`).
    pub revocations: crate::revocations::RevocationFeed,
    /// Set to `true` when the server stops taking connections: long polls
    /// answer at once, so the graceful shutdown is not held up.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Set when a stop signal arrived: /readyz answers 503 from then on.
    pub draining: std::sync::atomic::AtomicBool,
    /// Request ids: a random prefix for this process and a counter.
    request_ids: (u32, std::sync::atomic::AtomicU64),
    /// Fault injection for this app's store, hasher and throttle (test builds only).
    #[cfg(feature = "test-hooks")]
    pub hooks: Arc<crate::test_hooks::TestHooks>,
}

/// The signing secret kept in the database, made from `candidate` by the
/// first instance (the others read it). Refused when the database has
/// sessions but no secret: their tokens were signed with a `--secret-file`
/// that this instance was not given, and a new secret would split the
/// instances (and log everybody out).
async fn secret_kept_in(
    store: &PgStore,
    candidate: &crate::secrets::Secret,
) -> Result<crate::secrets::Secret, Box<dyn std::error::Error + Send + Sync>> {
    if store.signing_secret().await?.is_none() && store.count_sessions().await? > 0 {
        return Err(
            "the database holds sessions but no signing secret: its servers were given \
             --secret-file (or --secret); give this one the same"
                .into(),
        );
    }
    let kept = store
        .signing_secret_or(candidate.bytes().to_vec())
        .await?
        .ok_or("the PostgreSQL store keeps no signing secret")?;
    let made_here = kept == candidate.bytes();
    let kept = crate::secrets::Secret::new(kept).map_err(|e| {
        format!("the signing secret kept in the database (latchkey_secret) is unusable: {e}")
    })?;
    tracing::info!(
        made_here,
        "signing with the secret kept in the database (no --secret or --secret-file)"
    );
    Ok(kept)
}

impl App {
    /// Opens the database, prepares keys and the hasher, and seeds users.
    pub async fn start(
        config: ServeConfig,
    ) -> Result<Arc<App>, Box<dyn std::error::Error + Send + Sync>> {
        let location = Location {
            path: config.data.clone(),
            cache_bytes: config.cache_bytes,
            min_free_bytes: config.min_free_bytes,
        };
        #[cfg(feature = "test-hooks")]
        let hooks = Arc::new(crate::test_hooks::TestHooks::default());
        let metrics = Arc::new(crate::metrics::Metrics::new(config.metrics_bind.is_some()));
        let mut config = config;
        let (store, space): (Arc<dyn Store>, Arc<SpaceGuard>) = match &config.database {
            Some(url) => {
                let store = PgStore::open(
                    url,
                    config.database_pool,
                    config.database_ca_file.as_deref(),
                )
                .await?;
                if config.secret_from_database {
                    config.signing.secret = secret_kept_in(&store, &config.signing.secret).await?;
                }
                // The data folder holds only the admin socket: no reserve.
                let space = Arc::new(SpaceGuard::new(&config.data, 0));
                (Arc::new(store), space)
            }
            None => {
                #[cfg(feature = "test-hooks")]
                let (store, space) =
                    RedbStore::open_at_with_hooks(&location, Arc::clone(&hooks)).await?;
                #[cfg(not(feature = "test-hooks"))]
                let (store, space) = RedbStore::open_at(&location).await?;
                if let Some(work) = metrics.work() {
                    store.install_metrics(work);
                }
                (Arc::new(store), space)
            }
        };
        let passwords = Passwords::new(config.argon2, config.hash_workers, config.hash_queue)?;
        if let Some(work) = metrics.work() {
            passwords.install_metrics(work.hash_duration);
        }
        #[cfg(feature = "test-hooks")]
        passwords.install_hooks(Arc::clone(&hooks));
        let throttle = config.throttle.map(crate::throttle::Throttle::new);
        #[cfg(feature = "test-hooks")]
        let throttle = throttle.map(|t| t.with_hooks(Arc::clone(&hooks)));
        let policy = AuthPolicy {
            lifetimes: config.lifetimes,
            type_roles: config.type_roles.clone(),
            max_sessions_per_user: config.max_sessions_per_user,
            registration: config.registration,
        };
        let keys = Arc::new(
            Keys::start(
                Arc::clone(&store),
                config.signing.clone(),
                config.lifetimes.access_ttl,
                Clock::default(),
            )
            .await?,
        );
        // After --access-ttl was lowered, tokens of the last run may outlive
        // the new lifetime: the feed keeps entries for the longer of the two.
        let revocations = crate::revocations::RevocationFeed::new(
            Arc::clone(&store),
            config.lifetimes.access_ttl.max(keys.previous_access_ttl),
            Clock::default(),
        );
        let auth = Auth::new(
            store,
            keys.tokens(),
            passwords,
            policy,
            throttle,
            Clock::default(),
        )
        .sharing_limits(&config.signing.secret)
        .reloading_keys_for_unknown_kids(Arc::clone(&keys));
        for seed in &config.seed_users {
            let account = NewAccount {
                email: seed.email.clone(),
                name: seed.name.clone(),
                role_id: seed.role_id,
                credential: Credential::Password(Password::new(seed.password.clone())),
                disabled: false,
            };
            match auth.accounts().create(account).await {
                Ok(user) => tracing::info!(user_id = user.id, email = %user.email, "seeded user"),
                Err(Error::EmailTaken) => {
                    tracing::info!(email = %seed.email, "seed user already exists; left unchanged")
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut prefix = [0u8; 4];
        getrandom::fill(&mut prefix).map_err(|e| format!("no randomness available: {e}"))?;
        Ok(Arc::new(App {
            auth,
            keys,
            revocations,
            stopping: tokio::sync::watch::Sender::new(false),
            config,
            space,
            metrics,
            draining: std::sync::atomic::AtomicBool::new(false),
            request_ids: (
                u32::from_le_bytes(prefix),
                std::sync::atomic::AtomicU64::new(0),
            ),
            #[cfg(feature = "test-hooks")]
            hooks,
        }))
    }

    /// A new request id, unique in this process and unlikely to repeat
    /// across restarts.
    pub fn next_request_id(&self) -> String {
        let n = self
            .request_ids
            .1
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let value = (u64::from(self.request_ids.0) << 32) ^ n;
        let mut id = String::with_capacity(16);
        for shift in (0..16).rev() {
            let digit = ((value >> (shift * 4)) & 0xf) as u8;
            id.push(char::from(if digit < 10 {
                b'0' + digit
            } else {
                b'a' + digit - 10
            }));
        }
        id
    }

    /// Deletes expired sessions in bounded batches until none are left.
    pub async fn sweep_expired_sessions(&self) -> Result<usize, Error> {
        let mut total = 0;
        loop {
            let removed = self
                .auth
                .store()
                .sweep_expired_sessions(self.auth.clock().now_millis(), SWEEP_BATCH)
                .await?;
            total += removed;
            if removed < SWEEP_BATCH {
                return Ok(total);
            }
        }
    }

    /// Keeps the signing keys in step with the store, forever.
    pub async fn run_key_reloader(self: Arc<Self>) {
        Arc::clone(&self.keys)
            .run_reloader(KEY_RELOAD_INTERVAL)
            .await
    }

    /// Runs [`App::sweep_expired_sessions`] (and prunes the revocation
    /// log) every `interval`, forever.
    pub async fn run_sweeper(self: Arc<Self>, interval: Duration) {
        // The first run one interval after the start, not at it: a start
        // does its own writes (seed users, keys), and tests that inject a
        // fault into the next write must not have it land here.
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match self.sweep_expired_sessions().await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "swept expired sessions"),
                Err(e) => tracing::warn!(error = %e, "session sweep failed"),
            }
            match self.revocations.prune().await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(pruned, "pruned the revocation log"),
                Err(e) => tracing::warn!(error = %e, "pruning the revocation log failed"),
            }
        }
    }
}
