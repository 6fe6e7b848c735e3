//! The use cases: login, refresh, profile, logout, and adding users.
//!
//! No HTTP here: inputs are already-parsed values, outputs are domain values
//! or [`Error`]. Every method takes `now` (milliseconds) so tests can drive
//! time; the session rules themselves live in [`crate::session`].

use std::sync::Arc;

use crate::config::{Lifetimes, TypeRoles, MAX_PASSWORD_BYTES};
use crate::error::Error;
use crate::passwords::{Password, Passwords};
use crate::session::{Millis, RefreshDecision, RotationPolicy, Session, SessionId, TokenId};
use crate::store::{LogoutScope, NewUser, RefreshOutcome, Store, User};
use crate::throttle::Throttle;
use crate::tokens::{Profile, TokenKeys, TokenType};

/// What login and refresh answer.
#[derive(Debug, Clone)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

pub struct LoginAttempt {
    /// As the client sent it; normalised here.
    pub email: String,
    pub password: Password,
    /// The client `type` (`web`, `mobile`, …); `None` admits any role.
    pub client_type: Option<String>,
    /// Where the attempt comes from, for per-address throttling.
    pub client_address: Option<std::net::IpAddr>,
}

pub struct Auth {
    store: Arc<dyn Store>,
    keys: TokenKeys,
    passwords: Arc<Passwords>,
    lifetimes: Lifetimes,
    type_roles: TypeRoles,
    /// `None` when throttling is turned off.
    throttle: Option<Throttle>,
}

fn profile_of(user: &User) -> Profile {
    Profile {
        id: user.id.to_string(),
        email: user.email.clone(),
        name: user.name.clone(),
        role_id: user.role_id,
    }
}

impl Auth {
    pub fn new(
        store: Arc<dyn Store>,
        keys: TokenKeys,
        passwords: Passwords,
        lifetimes: Lifetimes,
        type_roles: TypeRoles,
        throttle: Option<Throttle>,
    ) -> Self {
        Auth {
            store,
            keys,
            passwords: Arc::new(passwords),
            lifetimes,
            type_roles,
            throttle,
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub async fn login(&self, attempt: LoginAttempt, now: Millis) -> Result<TokenPair, Error> {
        let email = crate::config::normalize_email(&attempt.email)
            .ok_or_else(|| Error::InvalidRequest("email is not a valid email address".into()))?;
        if attempt.password.as_str().is_empty() {
            return Err(Error::InvalidRequest("password must not be empty".into()));
        }
        if attempt.password.as_str().len() > MAX_PASSWORD_BYTES {
            return Err(Error::InvalidRequest(format!(
                "password must be at most {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        let allowed_roles = match &attempt.client_type {
            None => None,
            Some(kind) => Some(self.type_roles.roles_for(kind).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "type must be one of: {}",
                    self.type_roles.known_types().join(", ")
                ))
            })?),
        };

        // Throttled attempts are refused before any hashing; the attempt
        // counts as in flight until this function returns.
        let _attempt = match &self.throttle {
            Some(throttle) => Some(
                throttle
                    .begin(&email, attempt.client_address, std::time::Instant::now())
                    .map_err(|blocked| Error::RateLimited {
                        retry_after_secs: blocked.retry_after.as_secs_f64().ceil() as u64,
                    })?,
            ),
            None => None,
        };
        let user = self.store.user_by_email(&email).await?;
        let verification = self
            .passwords
            .verify(
                attempt.password.clone(),
                user.as_ref().map(|u| u.password_hash.as_str()),
            )
            .await?;
        // The password is checked before the role: a 403 must not reveal
        // that an email exists to someone who does not know its password.
        let user = match user {
            Some(user) if verification.matches => user,
            _ => {
                if let Some(throttle) = &self.throttle {
                    throttle.record_failure(
                        &email,
                        attempt.client_address,
                        std::time::Instant::now(),
                    );
                }
                return Err(Error::InvalidCredentials);
            }
        };
        if let Some(throttle) = &self.throttle {
            throttle.record_success(&email);
        }
        if allowed_roles.is_some_and(|roles| !roles.contains(&user.role_id)) {
            return Err(Error::RoleNotAllowed);
        }
        if verification.needs_rehash {
            self.upgrade_hash_in_background(&user, attempt.password);
        }

        let session_id = SessionId::generate(now);
        let session = Session::start(
            user.id,
            now,
            self.lifetimes.session_ttl,
            self.lifetimes.refresh_ttl,
            TokenId::generate(),
        );
        self.store.create_session(session_id, &session).await?;
        self.token_pair(&user, session_id, &session, now)
    }

    pub async fn refresh(&self, refresh_token: &str, now: Millis) -> Result<TokenPair, Error> {
        let verified = self.keys.verify(refresh_token, TokenType::Refresh)?;
        let policy = RotationPolicy {
            refresh_ttl: self.lifetimes.refresh_ttl,
            reuse_grace: self.lifetimes.reuse_grace,
        };
        let outcome = self
            .store
            .refresh_session(
                verified.session_id,
                verified.user_id,
                verified.token_id,
                now,
                policy,
                TokenId::generate(),
            )
            .await?;
        match outcome {
            RefreshOutcome::UserGone => Err(Error::UserNotFound),
            RefreshOutcome::UnknownSession => Err(Error::InvalidToken("unknown session")),
            RefreshOutcome::Decided {
                decision,
                session,
                user,
            } => match decision {
                RefreshDecision::Rotated | RefreshDecision::GraceReplay => {
                    self.token_pair(&user, verified.session_id, &session, now)
                }
                RefreshDecision::Reused => {
                    tracing::warn!(user_id = user.id, session = ?verified.session_id, "refresh token reuse detected; session revoked");
                    Err(Error::TokenReused)
                }
                RefreshDecision::Revoked => Err(Error::SessionRevoked),
                RefreshDecision::Expired => Err(Error::TokenExpired),
            },
        }
    }

    /// The profile carried by an access token whose session is still live.
    /// The profile comes from the token: a user's sessions are deleted with
    /// the user, so a live session implies its user exists.
    pub async fn profile(&self, access_token: &str, now: Millis) -> Result<Profile, Error> {
        let verified = self.keys.verify(access_token, TokenType::Access)?;
        let session = self.store.session(verified.session_id).await?;
        let session = session
            .filter(|s| s.user_id == verified.user_id)
            .ok_or(Error::InvalidToken("unknown session"))?;
        if session.revoked {
            return Err(Error::SessionRevoked);
        }
        if !session.is_live(now) {
            return Err(Error::TokenExpired);
        }
        verified
            .claims
            .profile
            .ok_or(Error::InvalidToken("malformed profile"))
    }

    /// Revokes the token's session (or all of its user's sessions). A token of
    /// a session that is already revoked or gone is accepted quietly and
    /// changes nothing.
    pub async fn logout(
        &self,
        refresh_token: &str,
        scope: LogoutScope,
        now: Millis,
    ) -> Result<(), Error> {
        let verified = self.keys.verify(refresh_token, TokenType::Refresh)?;
        let revoked = self
            .store
            .logout(verified.session_id, verified.user_id, scope, now)
            .await?;
        tracing::info!(user_id = verified.user_id, ?scope, revoked, "logout");
        Ok(())
    }

    /// Creates a user unless the email is taken; `Ok(None)` when it is.
    pub async fn add_user(
        &self,
        email: &str,
        name: &str,
        role_id: i64,
        password: Password,
        now: Millis,
    ) -> Result<Option<User>, Error> {
        create_user(
            self.store.as_ref(),
            &self.passwords,
            email,
            name,
            role_id,
            password,
            now,
        )
        .await
    }

    fn token_pair(
        &self,
        user: &User,
        session_id: SessionId,
        session: &Session,
        now: Millis,
    ) -> Result<TokenPair, Error> {
        let access_ttl = self.lifetimes.access_ttl.as_secs();
        Ok(TokenPair {
            access_token: self.keys.access_token(
                profile_of(user),
                session_id,
                now / 1000,
                access_ttl,
            )?,
            refresh_token: self
                .keys
                .refresh_token(user.id, session_id, &session.current)?,
            expires_in: access_ttl,
        })
    }

    fn upgrade_hash_in_background(&self, user: &User, password: Password) {
        let (store, passwords) = (Arc::clone(&self.store), Arc::clone(&self.passwords));
        let (id, old_hash) = (user.id, user.password_hash.clone());
        tokio::spawn(async move {
            let result = async {
                let new_hash = passwords.hash(password).await?;
                Ok::<_, Error>(
                    store
                        .replace_password_hash(id, &old_hash, &new_hash)
                        .await?,
                )
            };
            match result.await {
                Ok(_) => tracing::info!(
                    user_id = id,
                    "password hash upgraded to the configured parameters"
                ),
                Err(e) => tracing::warn!(user_id = id, error = %e, "password hash upgrade failed"),
            }
        });
    }
}

/// Creates a user unless the (normalised) email is taken; `Ok(None)` when it
/// is. Shared by seeding at start and the `user add` command.
pub async fn create_user(
    store: &dyn Store,
    passwords: &Passwords,
    email: &str,
    name: &str,
    role_id: i64,
    password: Password,
    now: Millis,
) -> Result<Option<User>, Error> {
    let email = crate::config::normalize_email(email)
        .ok_or_else(|| Error::InvalidRequest("email is not a valid email address".into()))?;
    if store.user_by_email(&email).await?.is_some() {
        return Ok(None);
    }
    let password_hash = passwords.hash(password).await?;
    let new = NewUser {
        email,
        name: name.trim().to_string(),
        role_id,
        password_hash,
        created_at: now,
    };
    Ok(store.create_user(new).await?)
}
