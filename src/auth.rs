//! The use cases: login, refresh, profile, logout, sign-up and self-service.
//!
//! No HTTP here: inputs are already-parsed values, outputs are domain values
//! or [`Error`]. Time comes from the process [`Clock`], read where each
//! decision is taken; the session rules themselves live in
//! [`crate::session`].

use std::sync::Arc;

use crate::accounts::{
    check_email, check_name, check_password as check_new_password, updated_user, Accounts,
    SessionInfo,
};
use crate::clock::Clock;
use crate::config::{Lifetimes, TypeRoles};
use crate::credentials::{normalize_email, MAX_PASSWORD_BYTES};
use crate::error::Error;
use crate::passwords::{Password, Passwords};
use crate::session::{RefreshDecision, RotationPolicy, Session, SessionId, TokenId};
use crate::store::{
    GlobalLogout, LogoutScope, NewSession, NewUser, RefreshOutcome, RevokeSessions, Store, User,
    UserChange,
};
use crate::throttle::shared::{Limit, Refused as SharedRefusal, SharedBudgets, SharedLimits};
use crate::throttle::{SignupLimit, Throttle, ThrottlePolicy};
use crate::tokens::{Profile, TokenKeys, TokenType};

/// What login and refresh answer.
#[derive(Debug, Clone)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// A refresh answered within the grace window: the refresh token is the
    /// one the first rotation issued (for metrics).
    pub grace_replay: bool,
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

/// Email changes a user may make in an hour.
const EMAIL_CHANGES_PER_HOUR: u32 = 10;

/// Settings of the use cases, beside the lifetimes.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    pub lifetimes: Lifetimes,
    pub type_roles: TypeRoles,
    /// Most live sessions per user; a login past it revokes the oldest.
    pub max_sessions_per_user: usize,
    /// `None` when sign-up is closed.
    pub registration: Option<Registration>,
}

/// Sign-up settings.
#[derive(Debug, Clone, Copy)]
pub struct Registration {
    /// The role of new users.
    pub role_id: i64,
    /// Most sign-ups per client address per hour.
    pub per_address_per_hour: u32,
}

/// A sign-up, as the client sent it.
pub struct SignUp {
    pub email: String,
    pub password: Password,
    pub name: String,
    pub client_type: Option<String>,
    pub client_address: Option<std::net::IpAddr>,
}

/// The holder of a live access token: who, and with which session.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: u64,
    pub session_id: SessionId,
    pub profile: Profile,
}

/// A change to one's own profile.
pub struct ProfileChange {
    pub name: Option<String>,
    pub email: Option<String>,
}

/// What introspection answers.
#[derive(Debug)]
pub enum Introspection {
    Inactive,
    Active {
        token_type: TokenType,
        claims: Box<crate::tokens::Claims>,
    },
}

pub struct Auth {
    store: Arc<dyn Store>,
    keys: Arc<TokenKeys>,
    passwords: Arc<Passwords>,
    lifetimes: Lifetimes,
    type_roles: TypeRoles,
    max_sessions_per_user: usize,
    registration: Option<(Registration, SignupLimit)>,
    /// Email changes per user per hour: each answers whether an email is
    /// taken, so they are limited like sign-ups.
    email_changes: SignupLimit,
    /// `None` when throttling is turned off.
    throttle: Option<Throttle>,
    /// With a store shared by several instances: the failure budgets kept
    /// in it, which every instance draws on.
    shared_budgets: Option<SharedBudgets>,
    /// With a store shared by several instances: the sign-up and
    /// email-change limits kept in it.
    shared_limits: Option<SharedLimits>,
    /// With a store shared by several instances: the key set, reloaded at
    /// once for a token of a key this instance does not know yet.
    key_reloader: Option<Arc<crate::keys::manager::Keys>>,
    clock: Clock,
    accounts: Accounts,
}

/// A refusal of the throttle or a sign-up limit, in whole seconds (at
/// least one, so a client never retries at once).
fn rate_limited(blocked: crate::throttle::Blocked) -> Error {
    Error::RateLimited {
        retry_after_secs: blocked.retry_after.as_secs_f64().ceil().max(1.0) as u64,
    }
}

/// Both token types, the `hint` (else `otherwise`) first: a
/// `token_type_hint` says only which to try first (RFC 7662, RFC 7009).
fn types_in_order(hint: Option<TokenType>, otherwise: TokenType) -> [TokenType; 2] {
    match hint.unwrap_or(otherwise) {
        TokenType::Access => [TokenType::Access, TokenType::Refresh],
        TokenType::Refresh => [TokenType::Refresh, TokenType::Access],
    }
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
        keys: Arc<TokenKeys>,
        passwords: Passwords,
        policy: AuthPolicy,
        throttle: Option<Throttle>,
        clock: Clock,
    ) -> Self {
        let passwords = Arc::new(passwords);
        let accounts = Accounts::new(Arc::clone(&store), Arc::clone(&passwords), clock.clone());
        let bounds = throttle
            .as_ref()
            .map_or_else(ThrottlePolicy::default, |t| *t.policy());
        let registration = policy.registration.map(|registration| {
            // Bounded, and IPv6 grouped, like the login throttle's address table.
            let limit = SignupLimit::new(
                registration.per_address_per_hour,
                bounds.capacity,
                bounds.ipv6_prefix,
            );
            (registration, limit)
        });
        let email_changes = SignupLimit::new(EMAIL_CHANGES_PER_HOUR, bounds.capacity, 64);
        Auth {
            store,
            keys,
            passwords,
            email_changes,
            lifetimes: policy.lifetimes,
            type_roles: policy.type_roles,
            max_sessions_per_user: policy.max_sessions_per_user,
            registration,
            throttle,
            shared_budgets: None,
            key_reloader: None,
            shared_limits: None,
            clock,
            accounts,
        }
    }

    /// Account management (the admin API and the CLI).
    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// The roles a login `type` admits; `None` (any role) without a type.
    fn roles_for_type(&self, client_type: Option<&str>) -> Result<Option<&[i64]>, Error> {
        match client_type {
            None => Ok(None),
            Some(kind) => Some(self.type_roles.roles_for(kind).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "type must be one of: {}",
                    self.type_roles.known_types().join(", ")
                ))
            }))
            .transpose(),
        }
    }

    /// Signs a new user up and starts their first session.
    pub async fn register(&self, sign_up: SignUp) -> Result<(User, TokenPair), Error> {
        let Some((registration, limit)) = &self.registration else {
            return Err(Error::RegistrationClosed);
        };
        let email = check_email(&sign_up.email)?;
        let name = check_name(&sign_up.name)?;
        check_new_password(&sign_up.password)?;
        let roles = self.roles_for_type(sign_up.client_type.as_deref())?;
        if roles.is_some_and(|roles| !roles.contains(&registration.role_id)) {
            return Err(Error::RoleNotAllowed);
        }
        if let Some(address) = sign_up.client_address {
            match &self.shared_limits {
                Some(shared) => shared
                    .take(Limit::SignUp, limit.key_of(address), limit.per_hour())
                    .await?
                    .map_err(rate_limited)?,
                None => limit
                    .take(address, std::time::Instant::now())
                    .map_err(rate_limited)?,
            }
        }
        if self.store.user_by_email(&email).await?.is_some() {
            return Err(Error::EmailTaken);
        }
        let password_hash = self.passwords.hash(sign_up.password).await?;
        let new = NewUser {
            email,
            name,
            role_id: registration.role_id,
            password_hash,
            created_at: self.clock.now_millis(),
            disabled: false,
        };
        let user = self
            .store
            .create_user(new)
            .await?
            .ok_or(Error::EmailTaken)?;
        tracing::info!(user_id = user.id, "signed up");
        let pair = self.start_session(&user).await?;
        Ok((user, pair))
    }

    /// The caller behind a live access token (as `/auth/profile` checks it).
    pub async fn authenticate(&self, access_token: &str) -> Result<Caller, Error> {
        let verified = self.verify_token(access_token, TokenType::Access).await?;
        let session = self.store.session(verified.session_id).await?;
        let session = session
            .filter(|s| s.user_id == verified.user_id)
            .ok_or(Error::InvalidToken("unknown session"))?;
        if session.revoked {
            return Err(Error::SessionRevoked);
        }
        if !session.is_live(self.clock.now_millis()) {
            return Err(Error::TokenExpired);
        }
        let profile = verified
            .claims
            .profile
            .ok_or(Error::InvalidToken("malformed profile"))?;
        Ok(Caller {
            user_id: verified.user_id,
            session_id: verified.session_id,
            profile,
        })
    }

    /// RFC 7662 introspection: whether `token` is one latchkey would accept
    /// now (an access token of a live session; a refresh token that refresh
    /// would accept, the grace window included), from the same state as
    /// [`Auth::authenticate`]. Changes nothing: a rotated refresh token
    /// presented here is not a reuse. `hint` only says which type to try first.
    pub async fn introspect(
        &self,
        token: &str,
        hint: Option<TokenType>,
    ) -> Result<Introspection, Error> {
        let now = self.clock.now_millis();
        if let Some((kind, verified)) = self
            .verify_as_one_of(token, types_in_order(hint, TokenType::Access))
            .await
        {
            let session = self
                .store
                .session(verified.session_id)
                .await?
                .filter(|s| s.user_id == verified.user_id);
            let active = session.is_some_and(|session| match kind {
                TokenType::Access => session.is_live(now),
                TokenType::Refresh => matches!(
                    session.decide(verified.token_id, now, self.rotation_policy()),
                    RefreshDecision::Rotated | RefreshDecision::GraceReplay
                ),
            });
            return Ok(if active {
                Introspection::Active {
                    token_type: kind,
                    claims: Box::new(verified.claims),
                }
            } else {
                Introspection::Inactive
            });
        }
        Ok(Introspection::Inactive)
    }

    /// RFC 7009 revocation: a valid token (refresh or access) ends its own
    /// session; anything else changes nothing, and the caller is told
    /// nothing either way.
    pub async fn revoke_token(&self, token: &str, hint: Option<TokenType>) -> Result<(), Error> {
        let Some((_, verified)) = self
            .verify_as_one_of(token, types_in_order(hint, TokenType::Refresh))
            .await
        else {
            return Ok(());
        };
        // Decided from a read first: a token of a session that has ended
        // (anyone may send one, again and again) costs no write.
        let live = self
            .store
            .session(verified.session_id)
            .await?
            .is_some_and(|s| s.user_id == verified.user_id && s.is_live(self.clock.now_millis()));
        if !live {
            return Ok(());
        }
        let revoked = self
            .store
            .revoke_session(
                verified.session_id,
                verified.user_id,
                self.clock.now_millis(),
            )
            .await?;
        if revoked {
            tracing::info!(user_id = verified.user_id, session = ?verified.session_id, "session revoked through /oauth/revoke");
        }
        Ok(())
    }

    /// Changes the caller's name or email; tokens issued from then on carry them.
    pub async fn update_profile(
        &self,
        caller: &Caller,
        change: ProfileChange,
    ) -> Result<Profile, Error> {
        if change.name.is_none() && change.email.is_none() {
            return Err(Error::InvalidRequest("give name, email or both".into()));
        }
        if change.email.is_some() {
            match &self.shared_limits {
                Some(shared) => shared
                    .take(
                        Limit::EmailChange,
                        u128::from(caller.user_id),
                        EMAIL_CHANGES_PER_HOUR,
                    )
                    .await?
                    .map_err(rate_limited)?,
                None => self
                    .email_changes
                    .take_for_user(caller.user_id, std::time::Instant::now())
                    .map_err(rate_limited)?,
            }
        }
        let change = UserChange {
            email: change.email.as_deref().map(check_email).transpose()?,
            name: change.name.as_deref().map(check_name).transpose()?,
            role_id: None,
            password_hash: None,
            disabled: None,
            revoke_sessions: RevokeSessions::None,
        };
        let user = updated_user(self.store.update_user(caller.user_id, change).await?)?;
        Ok(profile_of(&user))
    }

    /// Changes the caller's password after checking the current one (a
    /// wrong one counts as a failed login), and revokes every other
    /// session of theirs; the caller's own session stays.
    pub async fn change_password(
        &self,
        caller: &Caller,
        current: Password,
        new: Password,
        client_address: Option<std::net::IpAddr>,
    ) -> Result<(), Error> {
        check_new_password(&new)?;
        let user = self
            .store
            .user(caller.user_id)
            .await?
            .ok_or(Error::UserNotFound)?;
        self.check_password(&user.email, current, client_address)
            .await?;
        let password_hash = self.passwords.hash(new).await?;
        let change = UserChange {
            email: None,
            name: None,
            role_id: None,
            password_hash: Some(password_hash),
            disabled: None,
            revoke_sessions: RevokeSessions::AllExcept(caller.session_id),
        };
        updated_user(self.store.update_user(caller.user_id, change).await?)?;
        tracing::info!(
            user_id = caller.user_id,
            "password changed; other sessions revoked"
        );
        Ok(())
    }

    /// The caller's live sessions, oldest first, and which is theirs now.
    pub async fn own_sessions(&self, caller: &Caller) -> Result<Vec<(SessionInfo, bool)>, Error> {
        let sessions = self.accounts.sessions(caller.user_id).await?;
        Ok(sessions
            .into_iter()
            .map(|info| {
                let current = info.id == caller.session_id;
                (info, current)
            })
            .collect())
    }

    /// Revokes one of the caller's live sessions.
    pub async fn revoke_own_session(&self, caller: &Caller, id: SessionId) -> Result<(), Error> {
        self.accounts.revoke_session(id, Some(caller.user_id)).await
    }

    pub fn passwords(&self) -> &Passwords {
        &self.passwords
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    fn rotation_policy(&self) -> RotationPolicy {
        RotationPolicy {
            refresh_ttl: self.lifetimes.refresh_ttl,
            reuse_grace: self.lifetimes.reuse_grace,
        }
    }

    pub async fn login(&self, attempt: LoginAttempt) -> Result<TokenPair, Error> {
        let email = normalize_email(&attempt.email)
            .ok_or_else(|| Error::InvalidRequest("email is not a valid email address".into()))?;
        if attempt.password.as_str().is_empty() {
            return Err(Error::InvalidRequest("password must not be empty".into()));
        }
        if attempt.password.as_str().len() > MAX_PASSWORD_BYTES {
            return Err(Error::InvalidRequest(format!(
                "password must be at most {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        let allowed_roles = self.roles_for_type(attempt.client_type.as_deref())?;
        let user = self
            .check_password(&email, attempt.password.clone(), attempt.client_address)
            .await?;
        // Said only to someone who knows the password.
        if user.disabled {
            return Err(Error::UserDisabled);
        }
        if allowed_roles.is_some_and(|roles| !roles.contains(&user.role_id)) {
            return Err(Error::RoleNotAllowed);
        }
        match self.start_session(&user).await {
            // The hash changed while the password was being checked: a
            // re-hash to new parameters (the password still matches) or a
            // new password (it does not). Checked once more, untimed.
            Err(Error::InvalidCredentials) => {
                let current = self
                    .store
                    .user(user.id)
                    .await?
                    .ok_or(Error::InvalidCredentials)?;
                let verification = self
                    .passwords
                    .verify(attempt.password, Some(&current.password_hash))
                    .await?;
                if !verification.matches {
                    return Err(Error::InvalidCredentials);
                }
                self.start_session(&current).await
            }
            other => other,
        }
    }

    /// With a store shared by several instances, keeps the login failure
    /// budgets and the sign-up and email-change limits in it as well, so
    /// that attempts spread over the instances share one budget per account
    /// and per address. `secret` (the same on every instance) keys the
    /// hashes that name them.
    pub fn sharing_limits(mut self, secret: &crate::secrets::Secret) -> Self {
        if self.store.is_shared() {
            self.shared_limits = Some(SharedLimits::new(
                Arc::clone(&self.store),
                secret,
                self.clock.clone(),
            ));
        }
        if let Some(throttle) = &self.throttle {
            if self.store.is_shared() {
                self.shared_budgets = Some(SharedBudgets::new(
                    Arc::clone(&self.store),
                    secret,
                    *throttle.policy(),
                    self.clock.clone(),
                ));
            }
        }
        self
    }

    /// Reloads the key set when a token names a key this instance lacks,
    /// if the store is shared (another instance may have just rotated).
    pub fn reloading_keys_for_unknown_kids(
        mut self,
        keys: Arc<crate::keys::manager::Keys>,
    ) -> Self {
        if self.store.is_shared() {
            self.key_reloader = Some(keys);
        }
        self
    }

    /// Verifies `token` as a `kind` token; with a shared store, a token of
    /// a key this instance does not know yet gets a second look after a
    /// reload (another instance may have rotated a moment ago).
    async fn verify_token(
        &self,
        token: &str,
        kind: TokenType,
    ) -> Result<crate::tokens::Verified, Error> {
        let failed_at = std::time::Instant::now();
        match self.keys.verify(token, kind, self.clock.now_secs()) {
            Err(Error::InvalidToken(crate::tokens::UNKNOWN_KEY))
                if self.keys_reloaded_since(failed_at).await =>
            {
                self.keys.verify(token, kind, self.clock.now_secs())
            }
            other => other,
        }
    }

    /// With a shared store, whether the key set may have changed since a
    /// token of an unknown key failed at `failed_at` (a reload started
    /// after it; see `Keys::reload_for_unknown_key`).
    async fn keys_reloaded_since(&self, failed_at: std::time::Instant) -> bool {
        match &self.key_reloader {
            Some(keys) => keys.reload_for_unknown_key(failed_at).await,
            None => false,
        }
    }

    /// The first of `kinds` that `token` verifies as, with the same second
    /// look as [`Auth::verify_token`] (one reload for all kinds).
    async fn verify_as_one_of(
        &self,
        token: &str,
        kinds: [TokenType; 2],
    ) -> Option<(TokenType, crate::tokens::Verified)> {
        let failed_at = std::time::Instant::now();
        let mut unknown_key = false;
        for kind in kinds {
            match self.keys.verify(token, kind, self.clock.now_secs()) {
                Ok(verified) => return Some((kind, verified)),
                Err(Error::InvalidToken(crate::tokens::UNKNOWN_KEY)) => unknown_key = true,
                Err(_) => {}
            }
        }
        if !unknown_key || !self.keys_reloaded_since(failed_at).await {
            return None;
        }
        kinds.into_iter().find_map(|kind| {
            self.keys
                .verify(token, kind, self.clock.now_secs())
                .ok()
                .map(|verified| (kind, verified))
        })
    }

    /// The user whose password this is, under the throttle: a throttled
    /// attempt is refused before any hashing, and the result counts for the
    /// account and the address. The password is checked before anything
    /// else is said about the account (its role), so a 403 never reveals
    /// that an email exists to someone who does not know its password.
    async fn check_password(
        &self,
        email: &str,
        password: Password,
        client_address: Option<std::net::IpAddr>,
    ) -> Result<User, Error> {
        let attempt = match &self.throttle {
            Some(throttle) => Some(
                throttle
                    .begin(email, client_address)
                    .await
                    .map_err(rate_limited)?,
            ),
            None => None,
        };
        // The in-process throttle above bounds how many attempts per key
        // this instance sends here.
        let shared = match &self.shared_budgets {
            Some(budgets) => Some(budgets.begin(email, client_address).await.map_err(
                |refused| match refused {
                    SharedRefusal::Blocked(blocked) => rate_limited(blocked),
                    SharedRefusal::Store(e) => Error::from(e),
                },
            )?),
            None => None,
        };
        let user = self.store.user_by_email(email).await?;
        let verification = self
            .passwords
            .verify(
                password.clone(),
                user.as_ref().map(|u| u.password_hash.as_str()),
            )
            .await?;
        match user {
            Some(user) if verification.matches => {
                if let Some(attempt) = attempt {
                    attempt.succeeded();
                }
                if let Some(shared) = shared {
                    shared.succeeded().await?;
                }
                if verification.needs_rehash {
                    self.upgrade_hash_in_background(&user, password);
                }
                Ok(user)
            }
            _ => {
                // A security event once per block, not per refused attempt;
                // with shared budgets, theirs (the local ones are a subset).
                let local = attempt.map(|attempt| attempt.failed());
                let blocks = match shared {
                    Some(shared) => Some(shared.failed().await?),
                    None => local,
                };
                if let Some((account, address)) = blocks {
                    let shared = self.shared_budgets.is_some();
                    if let Some(block) = account {
                        tracing::warn!(
                            event = "login_throttled",
                            key = "account",
                            shared,
                            blocked_secs = block.as_secs(),
                            "login throttled: an account's failure budget is spent"
                        );
                    }
                    if let Some(block) = address {
                        tracing::warn!(event = "login_throttled", key = "address", shared, client = %client_address.map_or_else(String::new, |c| c.to_string()), blocked_secs = block.as_secs(), "login throttled: a client address's failure budget is spent");
                    }
                }
                Err(Error::InvalidCredentials)
            }
        }
    }

    /// Starts a session for `user` and issues its first tokens.
    async fn start_session(&self, user: &User) -> Result<TokenPair, Error> {
        let now = self.clock.now_millis();
        let session_id = SessionId::generate(now);
        let session = Session::start(
            user.id,
            now,
            self.lifetimes.session_ttl,
            self.lifetimes.refresh_ttl,
            TokenId::generate(),
        );
        let created = self
            .store
            .create_session(
                session_id,
                &session,
                self.max_sessions_per_user,
                &user.password_hash,
            )
            .await?;
        let capped = match created {
            NewSession::Created { capped } => capped,
            // Disabled, removed or given a new password while this login's
            // password was being checked: that change wins.
            NewSession::UserChanged => {
                return Err(match self.store.user(user.id).await? {
                    Some(now) if now.disabled && now.password_hash == user.password_hash => {
                        Error::UserDisabled
                    }
                    _ => Error::InvalidCredentials,
                })
            }
        };
        if capped > 0 {
            tracing::info!(
                user_id = user.id,
                revoked = capped,
                "session cap reached; revoked the oldest sessions"
            );
        }
        self.token_pair(user, session_id, &session, false)
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, Error> {
        let verified =
            self.keys
                .verify(refresh_token, TokenType::Refresh, self.clock.now_secs())?;
        let policy = self.rotation_policy();
        // A refresh that changes nothing (a revoked or expired session, an
        // unknown one, a replay within the grace window, the last only with
        // a store of one process) is answered from a read, without waiting
        // for a commit: a flood of one dead token costs no disk bandwidth. Only a rotation or a first reuse goes to
        // the writer, which decides again at the time it applies it.
        let found = self
            .store
            .session_with_owner(verified.session_id)
            .await?
            .filter(|(s, _)| s.user_id == verified.user_id);
        let Some((session, owner)) = found else {
            return Err(self.unknown_session_error(verified.user_id).await?);
        };
        match session.decide(verified.token_id, self.clock.now_millis(), policy) {
            RefreshDecision::Revoked => return Err(Error::SessionRevoked),
            RefreshDecision::Expired => return Err(Error::TokenExpired),
            // With a store shared by instances, the grace window is judged
            // by the store on the database's clock (as it was opened), not
            // on this instance's: a clock behind must not stretch it.
            RefreshDecision::GraceReplay if !self.store.is_shared() => {
                let user = owner.ok_or(Error::UserNotFound)?;
                return self.token_pair(&user, verified.session_id, &session, true);
            }
            RefreshDecision::GraceReplay | RefreshDecision::Rotated | RefreshDecision::Reused => {}
        }
        let write = self.store.refresh_session(
            verified.session_id,
            verified.user_id,
            verified.token_id,
            &self.clock,
            policy,
            TokenId::generate(),
        );
        // The access token, signed while the commit is under way (an
        // asymmetric signature takes 10-20 µs): answers leave as soon as
        // the commit ends, so the next requests make the next batch bigger.
        // Used only if the rotation happens for the user as read here.
        let early_access = async {
            match (
                &owner,
                session.decide(verified.token_id, self.clock.now_millis(), policy),
            ) {
                (Some(user), RefreshDecision::Rotated) => {
                    let profile = profile_of(user);
                    let lifetime = self.access_lifetime(&session);
                    let token = self.access_token(profile.clone(), verified.session_id, lifetime);
                    Some((profile, token, lifetime))
                }
                _ => None,
            }
        };
        let (outcome, early_access) = tokio::join!(biased; write, early_access);
        let outcome = outcome?;
        match outcome {
            RefreshOutcome::UserGone => Err(Error::UserNotFound),
            RefreshOutcome::UnknownSession => Err(Error::InvalidToken("unknown session")),
            RefreshOutcome::Decided {
                decision,
                session,
                user,
            } => match decision {
                RefreshDecision::Rotated | RefreshDecision::GraceReplay => {
                    let replay = decision == RefreshDecision::GraceReplay;
                    match early_access {
                        Some((profile, access_token, lifetime))
                            if !replay && profile == profile_of(&user) =>
                        {
                            Ok(TokenPair {
                                access_token: access_token?,
                                refresh_token: self.keys.refresh_token(
                                    user.id,
                                    verified.session_id,
                                    &session.current,
                                )?,
                                expires_in: lifetime,
                                grace_replay: false,
                            })
                        }
                        _ => self.token_pair(&user, verified.session_id, &session, replay),
                    }
                }
                RefreshDecision::Reused => {
                    tracing::warn!(event = "token_reuse", user_id = user.id, session = ?verified.session_id, "refresh token reuse detected; session revoked");
                    Err(Error::TokenReused)
                }
                RefreshDecision::Revoked => Err(Error::SessionRevoked),
                RefreshDecision::Expired => Err(Error::TokenExpired),
            },
        }
    }

    /// What a token of a session that does not exist is told: the user is
    /// gone (404), or the session is unknown (401).
    async fn unknown_session_error(&self, user_id: u64) -> Result<Error, Error> {
        Ok(match self.store.user(user_id).await? {
            None => Error::UserNotFound,
            Some(_) => Error::InvalidToken("unknown session"),
        })
    }

    /// The profile carried by an access token whose session is still live.
    /// The profile comes from the token: a user's sessions are deleted with
    /// the user, so a live session implies its user exists.
    pub async fn profile(&self, access_token: &str) -> Result<Profile, Error> {
        Ok(self.authenticate(access_token).await?.profile)
    }

    /// Logs out. `local` revokes the token's session, and accepts quietly
    /// (changing nothing) a token of a session that is already revoked or
    /// gone. `global` revokes every session of the user, but only for a
    /// token that refresh would accept now; a stale or revoked token gets
    /// the answer refresh would give, and ends at most its own session (as
    /// reuse detection does), so an old token from a backup or a log cannot
    /// log a user out everywhere.
    pub async fn logout(&self, refresh_token: &str, scope: LogoutScope) -> Result<(), Error> {
        let verified =
            self.keys
                .verify(refresh_token, TokenType::Refresh, self.clock.now_secs())?;
        // As for refresh: a logout that would change nothing is answered
        // from a read, so a flood of one dead token writes nothing.
        let now = self.clock.now_millis();
        let session = self
            .store
            .session(verified.session_id)
            .await?
            .filter(|s| s.user_id == verified.user_id);
        match scope {
            LogoutScope::Local => {
                if !session.is_some_and(|s| s.is_live(now)) {
                    return Ok(());
                }
                let revoked = self
                    .store
                    .revoke_session(verified.session_id, verified.user_id, now)
                    .await?;
                tracing::info!(
                    user_id = verified.user_id,
                    scope = "local",
                    revoked = usize::from(revoked),
                    "logout"
                );
                Ok(())
            }
            LogoutScope::Global => {
                let Some(session) = session else {
                    return Err(self.unknown_session_error(verified.user_id).await?);
                };
                match session.decide(verified.token_id, now, self.rotation_policy()) {
                    RefreshDecision::Revoked => return Err(Error::SessionRevoked),
                    RefreshDecision::Expired => return Err(Error::TokenExpired),
                    _ => {}
                }
                let outcome = self
                    .store
                    .logout_everywhere(
                        verified.session_id,
                        verified.user_id,
                        verified.token_id,
                        &self.clock,
                        self.rotation_policy(),
                    )
                    .await?;
                match outcome {
                    GlobalLogout::Done { revoked } => {
                        tracing::info!(
                            user_id = verified.user_id,
                            scope = "global",
                            revoked,
                            "logout"
                        );
                        Ok(())
                    }
                    GlobalLogout::UserGone => Err(Error::UserNotFound),
                    GlobalLogout::UnknownSession => Err(Error::InvalidToken("unknown session")),
                    GlobalLogout::Refused(RefreshDecision::Reused) => {
                        tracing::warn!(user_id = verified.user_id, session = ?verified.session_id, "global logout with a rotated refresh token: treated as reuse, session revoked");
                        Err(Error::TokenReused)
                    }
                    GlobalLogout::Refused(RefreshDecision::Expired) => Err(Error::TokenExpired),
                    GlobalLogout::Refused(_) => Err(Error::SessionRevoked),
                }
            }
        }
    }

    /// The tokens of `session`; `grace_replay` when the refresh token is
    /// the one an earlier rotation already issued.
    fn token_pair(
        &self,
        user: &User,
        session_id: SessionId,
        session: &Session,
        grace_replay: bool,
    ) -> Result<TokenPair, Error> {
        let lifetime = self.access_lifetime(session);
        Ok(TokenPair {
            access_token: self.access_token(profile_of(user), session_id, lifetime)?,
            refresh_token: self
                .keys
                .refresh_token(user.id, session_id, &session.current)?,
            expires_in: lifetime,
            grace_replay,
        })
    }

    /// Seconds an access token of `session` issued now may live:
    /// `--access-ttl`, but never past the session's own end, so no access
    /// token outlives its session (services that verify tokens themselves
    /// need no word of sessions that simply expire).
    fn access_lifetime(&self, session: &Session) -> u64 {
        let left = (session.expires_at / 1000).saturating_sub(self.clock.now_secs());
        self.lifetimes.access_ttl.as_secs().min(left)
    }

    /// A new access token for `profile` in session `session_id`, issued
    /// now, living `lifetime` seconds.
    fn access_token(
        &self,
        profile: Profile,
        session_id: SessionId,
        lifetime: u64,
    ) -> Result<String, Error> {
        self.keys
            .access_token(profile, session_id, self.clock.now_secs(), lifetime)
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
