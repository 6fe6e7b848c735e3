//! argon2id password hashing, off the async workers and bounded.
//!
//! Each hash takes ~17 ms of CPU and ~19 MiB of memory at the OWASP
//! parameters, so hashes run on tokio's blocking pool behind a semaphore:
//! at most `workers` at once, the rest wait their turn without occupying a
//! thread. Unknown emails are verified against a dummy hash with the same
//! parameters, so a login takes as long whether or not the account exists.

use std::fmt;
use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::config::{Argon2Costs, ConfigError};
use crate::error::Error;

/// A password in memory; `Debug` never shows it.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn new(text: String) -> Self {
        Password(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<hidden>)")
    }
}

/// The outcome of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verification {
    pub matches: bool,
    /// The stored hash uses other parameters than the configured ones.
    pub needs_rehash: bool,
}

pub struct Passwords {
    params: Params,
    permits: Arc<Semaphore>,
    dummy_hash: Arc<str>,
}

impl Passwords {
    pub fn new(costs: Argon2Costs, workers: usize) -> Result<Self, ConfigError> {
        let params = costs.to_params()?;
        let dummy_hash = hash_now(&params, b"latchkey dummy password for unknown accounts")
            .map_err(|e| ConfigError(format!("argon2 self-test failed: {e}")))?;
        Ok(Passwords {
            params,
            permits: Arc::new(Semaphore::new(workers.max(1))),
            dummy_hash: dummy_hash.into(),
        })
    }

    /// Hashes a new password (PHC string, random salt).
    pub async fn hash(&self, password: Password) -> Result<String, Error> {
        let params = self.params.clone();
        self.run(move || hash_now(&params, password.as_str().as_bytes()))
            .await?
            .map_err(Error::Internal)
    }

    /// Checks `password` against `stored`, or against the dummy hash when
    /// there is no account (then it never matches).
    pub async fn verify(
        &self,
        password: Password,
        stored: Option<&str>,
    ) -> Result<Verification, Error> {
        let account_exists = stored.is_some();
        let hash: Arc<str> = stored.map_or_else(|| Arc::clone(&self.dummy_hash), Arc::from);
        let params = self.params.clone();
        let verification = self
            .run(move || {
                let Ok(parsed) = PasswordHash::new(&hash) else {
                    return Verification {
                        matches: false,
                        needs_rehash: false,
                    };
                };
                let matches = Argon2::default()
                    .verify_password(password.as_str().as_bytes(), &parsed)
                    .is_ok();
                let needs_rehash = Params::try_from(&parsed).map_or(true, |p| {
                    p.m_cost() != params.m_cost()
                        || p.t_cost() != params.t_cost()
                        || p.p_cost() != params.p_cost()
                }) || parsed.algorithm.as_str() != "argon2id";
                Verification {
                    matches,
                    needs_rehash,
                }
            })
            .await?;
        Ok(Verification {
            matches: verification.matches && account_exists,
            needs_rehash: verification.needs_rehash && account_exists,
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::Internal("hasher closed".into()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Error::Internal(format!("hash task failed: {e}")))
    }
}

fn hash_now(params: &Params, password: &[u8]) -> Result<String, String> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password)
        .map(|hash| hash.to_string())
        .map_err(|e| format!("hashing failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: Argon2Costs = Argon2Costs {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[tokio::test]
    async fn hashes_verify_and_report_outdated_parameters() {
        let passwords = Passwords::new(CHEAP, 2).unwrap();
        let hash = passwords
            .hash(Password::new("correct horse".into()))
            .await
            .unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let ok = passwords
            .verify(Password::new("correct horse".into()), Some(&hash))
            .await
            .unwrap();
        assert_eq!(
            ok,
            Verification {
                matches: true,
                needs_rehash: false
            }
        );
        let wrong = passwords
            .verify(Password::new("wrong horse".into()), Some(&hash))
            .await
            .unwrap();
        assert!(!wrong.matches);

        let stronger = Passwords::new(
            Argon2Costs {
                memory_kib: 128,
                ..CHEAP
            },
            1,
        )
        .unwrap();
        let upgrade = stronger
            .verify(Password::new("correct horse".into()), Some(&hash))
            .await
            .unwrap();
        assert_eq!(
            upgrade,
            Verification {
                matches: true,
                needs_rehash: true
            }
        );
    }

    #[tokio::test]
    async fn unknown_accounts_never_match() {
        let passwords = Passwords::new(CHEAP, 1).unwrap();
        let dummy = passwords.verify(
            Password::new("latchkey dummy password for unknown accounts".into()),
            None,
        );
        assert!(!dummy.await.unwrap().matches);
        let garbage = passwords
            .verify(Password::new("x".into()), Some("not a phc string"))
            .await
            .unwrap();
        assert!(!garbage.matches);
    }
}
