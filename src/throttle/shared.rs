//! Login failure budgets kept in a store that several instances share.
//!
//! With one process the in-process [`Throttle`](super::Throttle) is exact.
//! With several behind a load balancer, each would count only the guesses
//! it saw, and an attacker spreading guesses over N instances would get N
//! budgets. So with a shared store every attempt also draws on the same
//! budgets there, with the same rules: per account and per client address,
//! running attempts count (a burst spread over instances gets no more
//! checks than the budget), blocks double up to the maximum, and a success
//! clears its account's failures but not its address's.
//!
//! Time is the store's shared clock (the database's), so that instances
//! whose clocks differ agree on blocks and leases.
//!
//! Budgets are named by an HMAC of the account's email or the address's
//! network, keyed by the signing secret that every instance shares; the
//! store holds no email or address. The in-process throttle still runs in
//! front (it bounds how many attempts per key one instance sends to the
//! store) and is never more permissive than this.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;

use super::{address_key, Blocked, ThrottlePolicy};
use crate::clock::Clock;
use crate::session::Millis;
use crate::store::{LoginAdmission, LoginBudget, LoginClaim, LoginEnd, Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    Account,
    Address,
}

/// How often a busy budget is asked again while waiting.
const BUSY_POLL: Duration = Duration::from_millis(100);

/// Why an attempt did not start.
#[derive(Debug)]
pub enum Refused {
    Blocked(Blocked),
    Store(StoreError),
}

pub struct SharedBudgets {
    store: Arc<dyn Store>,
    names: hmac::Key,
    policy: ThrottlePolicy,
    clock: Clock,
}

/// A running attempt in the shared budgets. End it with
/// [`SharedAttempt::failed`] or [`SharedAttempt::succeeded`]; dropped
/// without either (an error, or a client gone mid-check), it gives its
/// running places back in the background.
pub struct SharedAttempt {
    /// The store's id of this attempt (its lease rows).
    attempt: u128,
    store: Arc<dyn Store>,
    clock: Clock,
    account: LoginClaim,
    address: Option<LoginClaim>,
    ended: bool,
}

/// What one try to start an attempt came to.
enum Step {
    Started(SharedAttempt),
    Blocked { retry_after: Duration },
    Busy,
}

/// The blocks a failure started (account, address), in milliseconds.
pub type StartedBlocks = (Option<Duration>, Option<Duration>);

/// The name a shared store keeps a budget or window under: the first 128
/// bits of an HMAC of `parts` with the shared secret (the same on every
/// instance; no email or address is stored).
fn keyed_name(key: &hmac::Key, parts: &[&[u8]]) -> [u8; 16] {
    let mut context = hmac::Context::with_key(key);
    for part in parts {
        context.update(part);
    }
    let mut name = [0u8; 16];
    name.copy_from_slice(&context.sign().as_ref()[..16]);
    name
}

/// The time budgets are decided by: the store's shared clock, so that
/// instances whose clocks differ still agree on blocks and leases.
async fn now(store: &dyn Store, clock: &Clock) -> Result<Millis, StoreError> {
    Ok(store
        .shared_now()
        .await?
        .unwrap_or_else(|| clock.now_millis()))
}

impl SharedBudgets {
    /// `secret` is the same on every instance, so the names are too.
    pub fn new(
        store: Arc<dyn Store>,
        secret: &crate::secrets::Secret,
        policy: ThrottlePolicy,
        clock: Clock,
    ) -> Self {
        SharedBudgets {
            store,
            names: hmac::Key::new(hmac::HMAC_SHA256, secret.bytes()),
            policy,
            clock,
        }
    }

    /// An account's budget is named as schema version 2 named it (instances
    /// of both versions share it during a rolling upgrade); an address's
    /// name has a prefix no email can have (a NUL).
    fn name(&self, kind: Budget, key: &[u8]) -> [u8; 16] {
        let address: &[u8] = if kind == Budget::Address {
            b"address\0"
        } else {
            b""
        };
        keyed_name(&self.names, &[b"latchkey login budget\0", address, key])
    }

    fn budget(&self, free: u32) -> LoginBudget {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        LoginBudget {
            free,
            base_delay: millis(self.policy.base_delay),
            max_delay: millis(self.policy.max_delay),
            forget_after: millis(self.policy.forget_after),
        }
    }

    /// Starts an attempt for `email` (normalised) from `address`: at once,
    /// or after running attempts (on any instance) have ended, waiting at
    /// most `MAX_WAIT` as the in-process throttle does.
    pub async fn begin(
        &self,
        email: &str,
        address: Option<IpAddr>,
    ) -> Result<SharedAttempt, Refused> {
        let account = LoginClaim {
            name: self.name(Budget::Account, email.as_bytes()),
            budget: self.budget(self.policy.account_free_failures),
        };
        let address = address.map(|address| LoginClaim {
            name: self.name(
                Budget::Address,
                &address_key(address, self.policy.ipv6_prefix).to_be_bytes(),
            ),
            budget: self.budget(self.policy.address_free_failures),
        });
        let claims: Vec<LoginClaim> = std::iter::once(account).chain(address).collect();
        let deadline = tokio::time::Instant::now() + super::MAX_WAIT;
        loop {
            // In a task of its own: if this request is dropped (its client
            // went away) after the store admitted the attempt, the task
            // still builds the guard, whose drop gives the places back; a
            // lease admitted for nobody would hold them for its whole term.
            let step = tokio::spawn({
                let (store, clock, claims) =
                    (Arc::clone(&self.store), self.clock.clone(), claims.clone());
                async move {
                    let now = now(&*store, &clock).await?;
                    let admission = store.begin_login_attempt(&claims, now).await?;
                    Ok::<_, StoreError>(match admission {
                        LoginAdmission::Admitted { attempt } => Step::Started(SharedAttempt {
                            attempt,
                            store,
                            clock,
                            account,
                            address,
                            ended: false,
                        }),
                        LoginAdmission::Blocked { until } => Step::Blocked {
                            retry_after: Duration::from_millis(until.saturating_sub(now)),
                        },
                        LoginAdmission::Busy => Step::Busy,
                    })
                }
            })
            .await
            .map_err(|e| {
                Refused::Store(StoreError::Backend(format!(
                    "a login attempt's store task failed: {e}"
                )))
            })?
            .map_err(Refused::Store)?;
            match step {
                Step::Started(attempt) => return Ok(attempt),
                Step::Blocked { retry_after } => {
                    return Err(Refused::Blocked(Blocked { retry_after }))
                }
                Step::Busy => {
                    if tokio::time::Instant::now() + BUSY_POLL > deadline {
                        return Err(Refused::Blocked(Blocked {
                            retry_after: self.policy.base_delay.max(Duration::from_secs(1)),
                        }));
                    }
                    tokio::time::sleep(BUSY_POLL).await;
                }
            }
        }
    }
}

impl SharedAttempt {
    fn ends(&self, account: LoginEnd, address: LoginEnd) -> Vec<(LoginClaim, LoginEnd)> {
        std::iter::once((self.account, account))
            .chain(self.address.map(|claim| (claim, address)))
            .collect()
    }

    /// The password check failed: counts against both budgets. Returns the
    /// blocks it started.
    pub async fn failed(mut self) -> Result<StartedBlocks, StoreError> {
        let now = now(&*self.store, &self.clock).await?;
        let ends = self.ends(LoginEnd::Failed, LoginEnd::Failed);
        // Ended once the store has it: a failed or cancelled call leaves
        // the drop to give the places back.
        let blocks = self
            .store
            .end_login_attempt(self.attempt, &ends, now)
            .await?;
        self.ended = true;
        let started = |i: usize| {
            blocks
                .get(i)
                .copied()
                .flatten()
                .map(|until: Millis| Duration::from_millis(until.saturating_sub(now)))
        };
        Ok((started(0), started(1)))
    }

    /// The password was right: the account starts clean again (its address
    /// does not: one good password buys no guesses elsewhere).
    pub async fn succeeded(mut self) -> Result<(), StoreError> {
        let ends = self.ends(LoginEnd::Cleared, LoginEnd::Released);
        let now = now(&*self.store, &self.clock).await?;
        self.store
            .end_login_attempt(self.attempt, &ends, now)
            .await?;
        self.ended = true;
        Ok(())
    }
}

impl Drop for SharedAttempt {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let ends = self.ends(LoginEnd::Released, LoginEnd::Released);
        let store = Arc::clone(&self.store);
        let clock = self.clock.clone();
        let attempt = self.attempt;
        // Outside a runtime (shutdown), the lease frees the places.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let released = match now(&*store, &clock).await {
                    Ok(now) => store.end_login_attempt(attempt, &ends, now).await.map(drop),
                    Err(e) => Err(e),
                };
                if let Err(e) = released {
                    tracing::warn!(error = %e, "could not give back a login attempt's place in the shared budgets; its lease frees it");
                }
            });
        }
    }
}

/// What a shared rate window counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Sign-ups (and attempts on taken emails) per client address.
    SignUp,
    /// Email changes per user.
    EmailChange,
}

/// The hourly limits on sign-ups and email changes, kept in a store that
/// several instances share (else each instance would allow its own hour's
/// worth), on the database's clock.
pub struct SharedLimits {
    store: Arc<dyn Store>,
    names: hmac::Key,
    clock: Clock,
}

impl SharedLimits {
    /// `secret` is the same on every instance, so the names are too.
    pub fn new(store: Arc<dyn Store>, secret: &crate::secrets::Secret, clock: Clock) -> Self {
        SharedLimits {
            store,
            names: hmac::Key::new(hmac::HMAC_SHA256, secret.bytes()),
            clock,
        }
    }

    /// Counts one `limit` event of `key` (an address key, a user id) if
    /// fewer than `per_hour` were counted in its window; else says how
    /// long to wait.
    pub async fn take(
        &self,
        limit: Limit,
        key: u128,
        per_hour: u32,
    ) -> Result<Result<(), Blocked>, StoreError> {
        let kind: &[u8] = match limit {
            Limit::SignUp => b"sign-up\0",
            Limit::EmailChange => b"email change\0",
        };
        let name = keyed_name(
            &self.names,
            &[b"latchkey rate window\0", kind, &key.to_be_bytes()],
        );
        let now = now(&*self.store, &self.clock).await?;
        let window = u64::try_from(super::SIGNUP_WINDOW.as_millis()).unwrap_or(u64::MAX);
        Ok(
            match self
                .store
                .take_rate_window(name, per_hour, window, now)
                .await?
            {
                None => Ok(()),
                Some(until) => Err(Blocked {
                    retry_after: Duration::from_millis(until.saturating_sub(now)),
                }),
            },
        )
    }
}
