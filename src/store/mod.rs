//! The storage interface, in domain words.
//!
//! Handlers and use cases see only [`Store`]; no backend type leaks out. The
//! rules (rotation, reuse, expiry) live in [`crate::session`]; a backend's job
//! is to apply them atomically and durably: [`Store::refresh_session`] runs
//! [`crate::session::Session::refresh`] against the state its transaction
//! sees and answers only after the result is committed.
//!
//! Two backends: [`redb::RedbStore`] (one file, the default) and
//! [`postgres::PgStore`] (several instances on one database). `contract.rs`
//! holds the checks every backend passes.

#[cfg(test)]
pub mod contract;
pub mod folder;
pub mod postgres;
pub mod redb;
pub mod space;

use async_trait::async_trait;
use std::fmt;

use crate::clock::Clock;
use crate::keys::KeySet;
use crate::session::{
    Millis, RefreshDecision, RotationPolicy, Session, SessionId, TokenId, UserId,
};

/// A stored user. Holds the password hash, so it is never serialised to a
/// client (HTTP answers use their own types) and its `Debug` hides the hash.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    /// Normalised: trimmed and lower-cased.
    pub email: String,
    pub name: String,
    pub role_id: i64,
    pub password_hash: String,
    pub created_at: Millis,
    /// A disabled user cannot log in, and has no live sessions.
    pub disabled: bool,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("name", &self.name)
            .field("role_id", &self.role_id)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// What [`Store::create_user`] needs; the store assigns the id.
#[derive(Clone)]
pub struct NewUser {
    pub email: String,
    pub name: String,
    pub role_id: i64,
    pub password_hash: String,
    pub created_at: Millis,
    pub disabled: bool,
}

impl NewUser {
    /// The stored user, once the store has assigned `id`.
    pub fn into_user(self, id: UserId) -> User {
        User {
            id,
            email: self.email,
            name: self.name,
            role_id: self.role_id,
            password_hash: self.password_hash,
            created_at: self.created_at,
            disabled: self.disabled,
        }
    }
}

/// The result of [`Store::create_session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewSession {
    /// Stored; the cap revoked this many older live sessions.
    Created { capped: usize },
    /// The user changed since the password was checked: no session.
    UserChanged,
}

/// Which sessions a change to a user revokes, in the same transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeSessions {
    None,
    All,
    /// All but this one (the caller's own, on a password change).
    AllExcept(SessionId),
}

/// A change to a user: every field given is set.
#[derive(Debug, Clone)]
pub struct UserChange {
    /// Normalised.
    pub email: Option<String>,
    pub name: Option<String>,
    pub role_id: Option<i64>,
    pub password_hash: Option<String>,
    pub disabled: Option<bool>,
    pub revoke_sessions: RevokeSessions,
}

/// The result of [`Store::update_user`].
#[derive(Debug)]
pub enum UserUpdate {
    Updated(User),
    NotFound,
    /// Another user has the new email.
    EmailTaken,
}

/// The result of [`Store::import_users`]: all or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Import {
    Imported(usize),
    /// The user at this index (0-based) has an email that is taken, in the
    /// database or earlier in the same import; nothing was imported.
    EmailTaken(usize),
}

/// One page of users, ordered by id.
#[derive(Debug)]
pub struct UserPage {
    pub users: Vec<User>,
    /// The id to pass as `after` for the next page, if there is one.
    pub next: Option<UserId>,
    /// How many users there are in all.
    pub total: u64,
}

/// The result of presenting a refresh token to its session.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // moved once per request; boxing would cost more
pub enum RefreshOutcome {
    /// No user with the token's `sub` exists (any more).
    UserGone,
    /// No such session, or it belongs to another user.
    UnknownSession,
    /// The state machine decided; `session` is the state after the decision
    /// (already committed), `user` the session's owner.
    Decided {
        decision: RefreshDecision,
        session: Session,
        user: User,
    },
}

/// How far a logout reaches (`scope` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutScope {
    /// `local`: the presented token's session.
    Local,
    /// `global`: every session of the token's user.
    Global,
}

/// The result of a global logout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalLogout {
    /// Every session of the user is revoked now; this many were not before.
    Done { revoked: usize },
    /// No user with the token's `sub` exists (any more).
    UserGone,
    /// No such session, or it belongs to another user.
    UnknownSession,
    /// The token is not one refresh would accept now; nothing else was
    /// revoked. On [`RefreshDecision::Reused`] its own session now is.
    Refused(RefreshDecision),
}

/// A session that ended before its time (logout, reuse, revocation, a
/// password change, a disable or removal of its user, the session cap), as
/// logged for the revocation feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    /// Position in the log: increasing, never reused in one database.
    pub seq: u64,
    pub session_id: SessionId,
    pub user_id: UserId,
    pub ended_at: Millis,
}

/// A page of the revocation log, and where the log stands.
#[derive(Debug, Clone, Default)]
pub struct RevocationPage {
    /// Identifies this database's log: a cursor of another one is refused.
    pub epoch: u64,
    /// The newest entry's `seq` (0: none yet).
    pub last_seq: u64,
    /// Entries up to this `seq` were pruned: a cursor before it cannot be served.
    pub pruned_through: u64,
    /// Oldest first.
    pub entries: Vec<Revocation>,
}

/// What keeping a user under the session cap takes before one more session
/// is stored (see [`Store::create_session`]), as positions in `sessions`
/// (the user's sessions, oldest first): the oldest live ones to end, so that
/// at most `max_live` are live with the new one, and the oldest ended ones
/// (those ended here included) to delete, so that at most `2 × max_live`
/// are kept. The one rule every backend applies.
pub struct RoomForASession {
    pub end: Vec<usize>,
    pub delete: Vec<usize>,
}

pub fn room_for_a_session(
    sessions: &[(SessionId, Session)],
    now: Millis,
    max_live: usize,
) -> RoomForASession {
    let max_live = max_live.max(1);
    let live: Vec<usize> = (0..sessions.len())
        .filter(|&i| sessions[i].1.is_live(now))
        .collect();
    let end: Vec<usize> = live
        .iter()
        .copied()
        .take((live.len() + 1).saturating_sub(max_live))
        .collect();
    let delete = (0..sessions.len())
        .filter(|i| !sessions[*i].1.is_live(now) || end.contains(i))
        .take((sessions.len() + 1).saturating_sub(2 * max_live))
        .collect();
    RoomForASession { end, delete }
}

/// A failure budget shared by instances (an account's or a client
/// address's, named by a keyed hash), in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct LoginBudget {
    /// Failed checks before back-off starts.
    pub free: u32,
    /// The first block, doubled by every further failure...
    pub base_delay: Millis,
    /// ...up to this.
    pub max_delay: Millis,
    /// Failures older than this no longer count.
    pub forget_after: Millis,
}

impl LoginBudget {
    /// The block that the `failures`-th failure (counted within
    /// `forget_after`) starts at `now`, if any: the failure that spends the
    /// budget starts a block of `base_delay`, each further one doubles it.
    pub fn block_after(&self, failures: u32, now: Millis) -> Option<Millis> {
        let over = failures.saturating_sub(self.free.saturating_sub(1));
        (over > 0).then(|| {
            let delay = self
                .base_delay
                .saturating_mul(1u64 << (over - 1).min(30))
                .min(self.max_delay);
            now.saturating_add(delay)
        })
    }
}

/// One budget that a login attempt draws on.
#[derive(Debug, Clone, Copy)]
pub struct LoginClaim {
    /// A keyed hash naming the account or address; the same on every
    /// instance.
    pub name: [u8; 16],
    pub budget: LoginBudget,
}

/// How long a running attempt holds its place in a shared budget: an
/// instance that dies mid-check frees it after this.
pub const LOGIN_ATTEMPT_LEASE: Millis = 30_000;

/// The answer of [`Store::begin_login_attempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginAdmission {
    /// Counted as running on every claim; end it with
    /// [`Store::end_login_attempt`] and this id.
    Admitted { attempt: u128 },
    /// A claim is blocked until then.
    Blocked { until: Millis },
    /// Running attempts (on any instance) could spend what is left of a
    /// budget: try again when one has ended.
    Busy,
}

/// How an admitted attempt ended, for one of its claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginEnd {
    /// The password check failed: one more failure.
    Failed,
    /// It ended without a failure (a success on an address, or no check
    /// at all): only its running place is given back.
    Released,
    /// The password was right (its account): failures forgotten.
    Cleared,
}

/// Whether an attempt may start on a budget with `failures` counted
/// failures and `running` attempts still running: while the running ones
/// could not spend the budget even if all fail, or, once it is spent, one
/// at a time (and not while blocked, which the caller checks first).
pub fn login_attempt_may_start(failures: u32, running: u32, free: u32) -> bool {
    failures.saturating_add(running) < free || running == 0
}

/// A batch written by [`Store::restore`], ids and all (`latchkey store copy`).
#[derive(Debug, Clone)]
pub enum Restore {
    Users(Vec<User>),
    /// The source's next user id: ids of users deleted there are not
    /// handed out again (the target's counter only moves forward).
    NextUserId(u64),
    Sessions(Vec<(SessionId, Session)>),
    Revocations(Vec<Revocation>),
}

/// A storage failure. Never shown to clients (they get `unavailable`).
#[derive(Debug, Clone)]
pub enum StoreError {
    /// Another process holds the database file.
    Locked(String),
    /// The backend failed (I/O, disk full, …).
    Backend(String),
    /// The file could not be written or read; the open database is unusable.
    Io(String),
    /// The data file system has less free space than the reserve.
    DiskFull { available: u64, reserve: u64 },
    /// The file cannot be written (after a write error, or since start):
    /// only reads are served until the writer can open it for writing.
    ReadOnly,
    /// A record could not be decoded.
    Corrupt(String),
    /// The store is shutting down.
    Closed,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Locked(path) => write!(
                f,
                "the database {path} is in use by another process (is `latchkey serve` running with this --data \
                 and --no-admin-socket?). Stop that process and retry, or run the server with its admin socket, \
                 through which these commands work while it runs"
            ),
            StoreError::Backend(cause) => write!(f, "storage failure: {cause}"),
            StoreError::Io(cause) => write!(f, "storage I/O failure: {cause}"),
            StoreError::DiskFull { available, reserve } => write!(
                f,
                "the data file system has {} MiB free, less than the reserve of {} MiB: writes are paused until space is freed",
                available >> 20,
                reserve >> 20
            ),
            StoreError::ReadOnly => write!(
                f,
                "the database file cannot be written (a failing disk, a read-only mount or no permission): \
                 only reads are served until it can"
            ),
            StoreError::Corrupt(cause) => write!(f, "corrupt record: {cause}"),
            StoreError::Closed => write!(f, "the store is closed"),
        }
    }
}

impl StoreError {
    /// A lasting condition rather than a failure of this one operation: the
    /// store logs when it starts and ends, so requests refused because of it
    /// are not logged one by one (a log line per refused request would fill
    /// a full disk faster).
    pub fn is_lasting_condition(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. } | StoreError::ReadOnly)
    }
}

impl std::error::Error for StoreError {}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a user; `Ok(None)` when the email is already taken.
    async fn create_user(&self, user: NewUser) -> StoreResult<Option<User>>;
    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>>;
    async fn user(&self, id: UserId) -> StoreResult<Option<User>>;
    /// Up to `limit` users with ids above `after`, in id order.
    async fn users_page(&self, after: Option<UserId>, limit: usize) -> StoreResult<UserPage>;
    /// Applies `change` to user `id` (and revokes the sessions it says) in
    /// one transaction.
    async fn update_user(&self, id: UserId, change: UserChange) -> StoreResult<UserUpdate>;
    /// Deletes user `id` and all of their sessions; `None` if unknown.
    async fn delete_user(&self, id: UserId) -> StoreResult<Option<User>>;
    /// Creates all of `users` or, if any email is taken, none.
    async fn import_users(&self, users: Vec<NewUser>) -> StoreResult<Import>;
    /// Every stored session of user `id` (live or not), oldest first.
    async fn sessions_of_user(&self, id: UserId) -> StoreResult<Vec<(SessionId, Session)>>;
    /// Revokes every session of user `id` not revoked yet; returns how many.
    async fn revoke_sessions_of_user(&self, id: UserId) -> StoreResult<usize>;
    /// Writes a consistent copy of the whole database to `target` (a new
    /// file), usable as a database of its own, while the store serves.
    async fn backup(&self, target: &std::path::Path) -> StoreResult<()>;
    async fn list_users(&self) -> StoreResult<Vec<User>>;
    /// Removes a user and deletes all of their sessions; `None` if unknown.
    async fn remove_user(&self, email: &str) -> StoreResult<Option<User>>;
    /// Replaces a password hash if it is still `old_hash` (after a parameter upgrade).
    async fn replace_password_hash(
        &self,
        id: UserId,
        old_hash: &str,
        new_hash: &str,
    ) -> StoreResult<bool>;

    /// Stores a new session for a login whose password was checked against
    /// `checked_hash`: only if, when the write is applied, the user still
    /// exists, is not disabled and has that same hash (a password change,
    /// a disable or a removal that committed while the password was being
    /// checked wins). If the user would then have more than `max_live` live
    /// sessions, the oldest live ones are revoked, and the oldest ended ones
    /// are deleted so that at most `2 × max_live` are kept, so everything
    /// done per user has a bounded cost.
    async fn create_session(
        &self,
        id: SessionId,
        session: &Session,
        max_live: usize,
        checked_hash: &str,
    ) -> StoreResult<NewSession>;
    async fn session(&self, id: SessionId) -> StoreResult<Option<Session>>;
    /// Session `id` and its owner, from one snapshot (the owner is `None`
    /// only if the user is gone).
    async fn session_with_owner(
        &self,
        id: SessionId,
    ) -> StoreResult<Option<(Session, Option<User>)>>;
    /// Presents refresh token `presented` of user `user_id` to session `id`:
    /// one atomic, durable step (see the module doc). The decision reads
    /// `clock` when it is applied, not when the request arrived, so time
    /// spent in a queue cannot stretch the grace window.
    async fn refresh_session(
        &self,
        id: SessionId,
        user_id: UserId,
        presented: TokenId,
        clock: &Clock,
        policy: RotationPolicy,
        fresh_jti: TokenId,
    ) -> StoreResult<RefreshOutcome>;
    /// Revokes session `id` if it is live and belongs to `user_id`.
    /// Returns whether it was revoked now.
    async fn revoke_session(
        &self,
        id: SessionId,
        user_id: UserId,
        now: Millis,
    ) -> StoreResult<bool>;
    /// Revokes every session of `user_id`, if `presented` is a token of
    /// session `id` that refresh would accept now (see
    /// [`Session::authorise_global_logout`]); decided when applied, as
    /// [`Store::refresh_session`] is.
    async fn logout_everywhere(
        &self,
        id: SessionId,
        user_id: UserId,
        presented: TokenId,
        clock: &Clock,
        policy: RotationPolicy,
    ) -> StoreResult<GlobalLogout>;
    /// Up to `limit` entries of the revocation log after `after` (from the
    /// start without). Every way a session ends early, in every method of
    /// this trait, appends an entry in the same transaction.
    async fn revocations(&self, after: Option<u64>, limit: usize) -> StoreResult<RevocationPage>;
    /// Deletes up to `limit` of the oldest log entries that ended before
    /// `ended_before`.
    async fn prune_revocations(&self, ended_before: Millis, limit: usize) -> StoreResult<usize>;
    /// Changes after every commit that logged a revocation.
    fn watch_revocations(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Deletes up to `limit` sessions whose absolute end is before `now`.
    async fn sweep_expired_sessions(&self, now: Millis, limit: usize) -> StoreResult<usize>;
    /// How many sessions are stored (live, and ended ones until swept).
    async fn count_sessions(&self) -> StoreResult<u64>;
    /// Whether several processes may share this store (then login failure
    /// budgets are kept in it too, below; a store of one process leaves
    /// them to the in-process throttle).
    fn is_shared(&self) -> bool {
        false
    }
    /// The signing secret kept in the store, if it keeps one (a shared
    /// store does, so that instances started without `--secret` agree; the
    /// redb file's generated secret is a file beside it instead).
    async fn signing_secret(&self) -> StoreResult<Option<Vec<u8>>> {
        Ok(None)
    }
    /// The signing secret kept in the store, `candidate` becoming it if
    /// none is kept yet (instances starting together all get the one that
    /// won). `None` for a store that keeps no secret.
    async fn signing_secret_or(&self, _candidate: Vec<u8>) -> StoreResult<Option<Vec<u8>>> {
        Ok(None)
    }
    /// Keeps `secret` as the store's signing secret (`store copy`); false
    /// for a store that keeps none.
    async fn set_signing_secret(&self, _secret: Vec<u8>) -> StoreResult<bool> {
        Ok(false)
    }
    /// The time shared by every process of a shared store (the database's
    /// clock), for decisions several instances must agree on; `None` for a
    /// store of one process (its own clock is the one).
    async fn shared_now(&self) -> StoreResult<Option<Millis>> {
        Ok(None)
    }
    /// Counts one event of the fixed hourly (`window` ms) window named
    /// `name` at `now`, if fewer than `limit` were counted in it: sign-ups
    /// per address, email changes per user, shared by instances. `Ok(None)`
    /// when counted, `Ok(Some(until))` when the window is full until then.
    /// Only a shared store keeps windows (a store of one process leaves
    /// them to the in-process limits).
    async fn take_rate_window(
        &self,
        _name: [u8; 16],
        _limit: u32,
        _window: Millis,
        _now: Millis,
    ) -> StoreResult<Option<Millis>> {
        Ok(None)
    }
    /// Starts a login attempt on every claim at `now`, in one transaction:
    /// refused if one is blocked or busy (see [`login_attempt_may_start`]),
    /// else counted as running on all of them until it ends, for at most
    /// [`LOGIN_ATTEMPT_LEASE`]. Only a shared store keeps budgets.
    async fn begin_login_attempt(
        &self,
        _claims: &[LoginClaim],
        _now: Millis,
    ) -> StoreResult<LoginAdmission> {
        Ok(LoginAdmission::Admitted { attempt: 0 })
    }
    /// Ends the admitted `attempt`: each claim with how it ended. Answers, per
    /// claim, the block this failure started, if it started one.
    async fn end_login_attempt(
        &self,
        _attempt: u128,
        ends: &[(LoginClaim, LoginEnd)],
        _now: Millis,
    ) -> StoreResult<Vec<Option<Millis>>> {
        Ok(vec![None; ends.len()])
    }
    /// The id the next new user gets (ids are never reused).
    async fn next_user_id(&self) -> StoreResult<u64>;
    /// Whether the store holds no user, no session and no revocation-log
    /// entry (a copy's target).
    async fn is_empty(&self) -> StoreResult<bool>;
    /// Deletes every user, session, revocation-log entry, signing key and
    /// login budget, and gives the revocation log a new identity (cursors
    /// of what was there get 410): the store is as new, for `store copy
    /// --replace`. One transaction.
    async fn clear(&self) -> StoreResult<()>;
    /// Up to `limit` sessions with ids above `after`, in id order.
    async fn sessions_page(
        &self,
        after: Option<SessionId>,
        limit: usize,
    ) -> StoreResult<Vec<(SessionId, Session)>>;
    /// Writes records of another store as they are (ids, sequence numbers):
    /// moving between backends. Later ids and sequence numbers continue
    /// after the highest restored.
    async fn restore(&self, batch: Restore) -> StoreResult<()>;
    /// The signing key set (empty, generation 0, before it is first written).
    async fn signing_keys(&self) -> StoreResult<KeySet>;
    /// Replaces the whole key set with `set`, if the stored generation is
    /// still `set.generation` (what the caller read); the stored generation
    /// becomes `set.generation + 1`. Returns whether it was replaced: two
    /// instances changing the set at once cannot both win.
    async fn replace_signing_keys(&self, set: KeySet) -> StoreResult<bool>;
    /// Succeeds when the database is readable.
    async fn ping(&self) -> StoreResult<()>;
    /// Succeeds when writes are accepted. While they are refused because
    /// the file cannot be written, this is also the retry: it tries to open
    /// the file for writing again (not more often than the backend allows)
    /// and answers with the result.
    async fn probe_writes(&self) -> StoreResult<()>;
}
