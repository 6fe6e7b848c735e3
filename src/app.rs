//! Wiring: a validated [`ServeConfig`] becomes the shared [`App`] state
//! (store, token keys, password hasher, use cases), and seed users are
//! created. Nothing global: the server and the tests receive an `Arc<App>`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::Auth;
use crate::config::ServeConfig;
use crate::error::Error;
use crate::passwords::{Password, Passwords};
use crate::session::Millis;
use crate::store::redb::{RedbStore, StorageFaults};
use crate::store::space::SpaceGuard;
use crate::store::Store;
use crate::tokens::TokenKeys;

/// Sessions deleted per sweep transaction, so the sweep never holds the writer long.
const SWEEP_BATCH: usize = 1000;

pub struct App {
    pub auth: Auth,
    pub config: ServeConfig,
    /// The free-space guard of the data file system.
    pub space: Arc<SpaceGuard>,
    /// Storage fault injection (tests make writes fail with it).
    pub storage_faults: Arc<StorageFaults>,
}

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl App {
    /// Opens the database, prepares keys and the hasher, and seeds users.
    pub async fn start(
        config: ServeConfig,
    ) -> Result<Arc<App>, Box<dyn std::error::Error + Send + Sync>> {
        crate::config::ensure_data_folder(&config.data)?;
        let (path, cache_bytes) = (config.data.clone(), config.cache_bytes);
        let space = Arc::new(SpaceGuard::new(&config.data, config.min_free_bytes));
        let store_space = Arc::clone(&space);
        let faults = Arc::new(StorageFaults::default());
        let store_faults = Arc::clone(&faults);
        let store = tokio::task::spawn_blocking(move || {
            RedbStore::open(&path, cache_bytes, store_space, store_faults)
        })
        .await??;
        let store: Arc<dyn Store> = Arc::new(store);
        let passwords = Passwords::new(config.argon2, config.hash_workers, config.hash_queue)?;
        let throttle = config.throttle.map(crate::throttle::Throttle::new);
        let auth = Auth::new(
            store,
            TokenKeys::new(&config.secret),
            passwords,
            config.lifetimes,
            config.type_roles.clone(),
            throttle,
        );
        for seed in &config.seed_users {
            let password = Password::new(seed.password.clone());
            match auth
                .add_user(
                    &seed.email,
                    &seed.name,
                    seed.role_id,
                    password,
                    now_millis(),
                )
                .await?
            {
                Some(user) => tracing::info!(user_id = user.id, email = %user.email, "seeded user"),
                None => {
                    tracing::info!(email = %seed.email, "seed user already exists; left unchanged")
                }
            }
        }
        Ok(Arc::new(App {
            auth,
            config,
            space,
            storage_faults: faults,
        }))
    }

    /// Deletes expired sessions in bounded batches until none are left.
    pub async fn sweep_expired_sessions(&self) -> Result<usize, Error> {
        let mut total = 0;
        loop {
            let removed = self
                .auth
                .store()
                .sweep_expired_sessions(now_millis(), SWEEP_BATCH)
                .await?;
            total += removed;
            if removed < SWEEP_BATCH {
                return Ok(total);
            }
        }
    }

    /// Runs [`App::sweep_expired_sessions`] every `interval`, forever.
    pub async fn run_sweeper(self: Arc<Self>, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match self.sweep_expired_sessions().await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "swept expired sessions"),
                Err(e) => tracing::warn!(error = %e, "session sweep failed"),
            }
        }
    }
}
