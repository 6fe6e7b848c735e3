//! The redb backend: one file, one writer thread with group commit.
//!
//! redb is synchronous and allows one write transaction at a time. All writes
//! go through a queue to a single writer thread, which takes every operation
//! waiting (up to [`MAX_BATCH`]), applies each inside one write transaction —
//! each sees the effects of those before it, so "exactly one rotation" and
//! reuse detection stay exact — commits once with `Durability::Immediate`,
//! and only then answers them all. A lone request pays one commit; a crowd
//! shares one. Reads run in their own read transaction (a consistent snapshot)
//! and never wait for the writer.
//!
//! Schema (typed table definitions below are the whole of it):
//! - `users`: id → JSON record; `user_emails`: normalised email → id;
//! - `sessions`: time-ordered session id → fixed-size binary record;
//! - `user_sessions`: (user id, session id), for global logout and user removal;
//! - `session_expiry`: (absolute end, session id), for the sweep;
//! - `signing_keys`: kid → JSON record of one signing key (see [`crate::keys`]);
//! - `revocations`: seq → a session that ended early, for the revocation feed;
//! - `meta`: counters (the next user id; ids are never reused) and the key
//!   set's generation, untyped-token cutoff and access-token lifetime.
//!
//! When a write fails at the file (a failing disk, a read-only remount),
//! redb refuses every later operation on that handle. The writer then swaps
//! it for a read-only view of the last commit, so reads go on while writes
//! answer 503, and tries the file for writing again at later writes.
//!
//! Files: `writer.rs` (the queue, group commit, swapping handles after I/O
//! errors), `records.rs` (record encodings and per-table helpers), `file.rs`
//! (opening the file; fault injection), `read_only.rs` (the read-only view),
//! `bulk.rs` (bulk loading for `bench --populate`).

mod backup;
mod bulk;
#[cfg(feature = "test-hooks")]
mod fault_injecting_file;
mod file;
mod read_only;
pub(crate) mod records;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use redb::{
    Database, DatabaseError, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

use super::space::SpaceGuard;
use super::{
    GlobalLogout, Import, NewSession, NewUser, RefreshOutcome, RevocationPage, RevokeSessions,
    Store, StoreError, StoreResult, User, UserChange, UserPage, UserUpdate,
};
use crate::clock::Clock;
use crate::keys::KeySet;
use crate::session::{
    Millis, RefreshDecision, RotationPolicy, Session, SessionId, TokenId, UserId,
};
use file::Opener;
use records::{
    decode_user, delete_session, encode_user, end_session, insert_session, log_revocation,
    put_session, read_session, read_session_in_write, read_user, read_user_in_write,
    session_ids_of_user,
};
use writer::{run_writer, Pending, WriteJob};

const USERS: TableDefinition<u64, &[u8]> = TableDefinition::new("users");
const USER_EMAILS: TableDefinition<&str, u64> = TableDefinition::new("user_emails");
const SESSIONS: TableDefinition<u128, &[u8]> = TableDefinition::new("sessions");
const USER_SESSIONS: TableDefinition<(u64, u128), ()> = TableDefinition::new("user_sessions");
const SESSION_EXPIRY: TableDefinition<(u64, u128), ()> = TableDefinition::new("session_expiry");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_USER_ID: &str = "next_user_id";
/// kid → JSON record (see `records::encode_key`).
const SIGNING_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("signing_keys");
const KEY_SET_GENERATION: &str = "key_set_generation";
const UNTYPED_TOKENS_BEFORE: &str = "untyped_tokens_before";
const KEY_ACCESS_TTL: &str = "key_access_ttl";
/// seq → revocation record (see `records::log_revocation`).
const REVOCATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("revocations");
const REVOCATION_NEXT_SEQ: &str = "revocation_next_seq";
const REVOCATION_EPOCH: &str = "revocation_epoch";
const REVOCATIONS_PRUNED_THROUGH: &str = "revocations_pruned_through";

/// Most operations applied in one write transaction.
const MAX_BATCH: usize = 512;
/// Operations that may wait for the writer before senders are slowed down.
const QUEUE_DEPTH: usize = 8192;

/// Any redb error as a store error. I/O failures are told apart: after one,
/// redb refuses everything on that handle until it is replaced.
fn backend<E: Into<redb::Error>>(err: E) -> StoreError {
    match err.into() {
        io @ (redb::Error::Io(_) | redb::Error::PreviousIo) => StoreError::Io(io.to_string()),
        other => StoreError::Backend(other.to_string()),
    }
}

/// An open database, and whether it may be written.
pub(super) enum Handle {
    Writable(Arc<Database>),
    /// The file cannot be written: a view of its last commit that only
    /// reads (see `read_only.rs`). The writer refuses every batch meanwhile.
    ReadOnly(Arc<Database>),
}

impl Handle {
    fn database(&self) -> &Arc<Database> {
        match self {
            Handle::Writable(db) | Handle::ReadOnly(db) => db,
        }
    }
}

/// Shared by the readers and the writer; only the writer replaces it.
///
/// `None` while the writer swaps handles, and when the file could be opened
/// neither for writing nor for reading (the writer tries again at later
/// writes). A reader that finds it empty waits for the writer and reads again.
pub(super) type Slot = RwLock<Option<Handle>>;

/// A read transaction and the handle it reads from, kept open until the
/// read ends: redb fails the reads of a handle closed under them, and the
/// writer drops its own reference when it swaps handles.
struct Snapshot {
    txn: ReadTransaction,
    _database: Arc<Database>,
}

/// Where the database file is and how to open it: what every command that
/// opens it needs (`serve`, the `user` commands, `bench --populate`).
#[derive(Debug, Clone)]
pub struct Location {
    pub path: PathBuf,
    /// redb page cache.
    pub cache_bytes: usize,
    /// Free space to keep on the data file system (0: no guard).
    pub min_free_bytes: u64,
}

pub struct RedbStore {
    slot: Arc<Slot>,
    /// Where the writer records commit times and batch sizes, once set.
    metrics: Arc<std::sync::OnceLock<crate::metrics::WorkMetrics>>,
    jobs: Option<mpsc::Sender<Box<dyn WriteJob>>>,
    writer: Option<JoinHandle<()>>,
    /// Bumped by the writer after each commit that logged a revocation.
    revocations: tokio::sync::watch::Receiver<u64>,
    /// When sessions ended, for the revocation log.
    clock: Clock,
}

impl RedbStore {
    /// The one way commands open the database: creates its folder (0700)
    /// if missing, guards the free space of its file system, and opens the
    /// file on the blocking pool. Returns the store and its free-space guard.
    pub async fn open_at(
        location: &Location,
    ) -> Result<(Self, Arc<SpaceGuard>), Box<dyn std::error::Error + Send + Sync>> {
        Self::open_at_with(location, |opener| opener).await
    }

    /// [`RedbStore::open_at`], with test hooks (test builds only).
    #[cfg(feature = "test-hooks")]
    pub async fn open_at_with_hooks(
        location: &Location,
        hooks: Arc<crate::test_hooks::TestHooks>,
    ) -> Result<(Self, Arc<SpaceGuard>), Box<dyn std::error::Error + Send + Sync>> {
        Self::open_at_with(location, move |mut opener| {
            opener.hooks = hooks;
            opener
        })
        .await
    }

    async fn open_at_with(
        location: &Location,
        prepare: impl FnOnce(Opener) -> Opener + Send + 'static,
    ) -> Result<(Self, Arc<SpaceGuard>), Box<dyn std::error::Error + Send + Sync>> {
        super::folder::ensure_data_folder(&location.path)?;
        let space = Arc::new(SpaceGuard::new(&location.path, location.min_free_bytes));
        let opener = prepare(Opener::new(location.path.clone(), location.cache_bytes));
        let store_space = Arc::clone(&space);
        let store =
            tokio::task::spawn_blocking(move || Self::open_with(opener, store_space)).await??;
        Ok((store, space))
    }

    /// Opens (or creates, mode 0600) the database at `path` with a page cache
    /// of `cache_bytes`, and starts its writer, which asks `space` before
    /// every commit.
    pub fn open(path: &Path, cache_bytes: usize, space: Arc<SpaceGuard>) -> StoreResult<Self> {
        Self::open_with(Opener::new(path.to_path_buf(), cache_bytes), space)
    }

    /// [`RedbStore::open`], with test hooks that can make writes fail and
    /// the writer panic (test builds only).
    #[cfg(feature = "test-hooks")]
    pub fn open_with_hooks(
        path: &Path,
        cache_bytes: usize,
        space: Arc<SpaceGuard>,
        hooks: Arc<crate::test_hooks::TestHooks>,
    ) -> StoreResult<Self> {
        let mut opener = Opener::new(path.to_path_buf(), cache_bytes);
        opener.hooks = hooks;
        Self::open_with(opener, space)
    }

    fn open_with(opener: Opener, space: Arc<SpaceGuard>) -> StoreResult<Self> {
        let path = opener.path.clone();
        let handle = match opener.writable() {
            Ok(db) => {
                create_tables(&db)?;
                Handle::Writable(Arc::new(db))
            }
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked(path.display().to_string()))
            }
            // A file that exists but cannot be written (a read-only mount,
            // no write permission) is served read-only, as after a write error.
            Err(write_error) => match opener.read_only_view() {
                Ok(db) => {
                    tracing::error!(
                        error = %write_error,
                        path = %path.display(),
                        "cannot open the database file for writing: serving reads only; \
                         writes answer 503 and are retried about once a second"
                    );
                    Handle::ReadOnly(Arc::new(db))
                }
                Err(_) => {
                    return Err(StoreError::Backend(format!(
                        "cannot open {}: {write_error}",
                        path.display()
                    )))
                }
            },
        };

        let slot = Arc::new(RwLock::new(Some(handle)));
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let writer_slot = Arc::clone(&slot);
        let metrics = Arc::new(std::sync::OnceLock::new());
        let writer_metrics = Arc::clone(&metrics);
        let (revoked, revocations) = tokio::sync::watch::channel(0u64);
        let writer = std::thread::Builder::new()
            .name("latchkey-writer".into())
            .spawn(move || {
                run_writer(
                    &writer_slot,
                    &opener,
                    &space,
                    &writer_metrics,
                    &revoked,
                    queue,
                )
            })
            .map_err(backend)?;
        Ok(RedbStore {
            slot,
            metrics,
            jobs: Some(jobs),
            writer: Some(writer),
            revocations,
            clock: Clock::default(),
        })
    }

    /// Records commit times and batch sizes into `metrics` from now on.
    pub fn install_metrics(&self, metrics: crate::metrics::WorkMetrics) {
        let _ = self.metrics.set(metrics);
    }

    /// A read snapshot of the current database handle, writable or not.
    /// [`StoreError::Io`] when the handle saw an I/O error (or there is none).
    fn snapshot(slot: &Slot) -> StoreResult<Snapshot> {
        // Only the writer takes the lock to write, for a swap that cannot
        // leave the slot half-written: a poisoned lock holds a usable value.
        let database = slot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|handle| Arc::clone(handle.database()))
            .ok_or_else(|| StoreError::Io("the database file cannot be opened".into()))?;
        Ok(Snapshot {
            txn: database.begin_read().map_err(backend)?,
            _database: database,
        })
    }

    /// Sends an empty batch through the writer, which first deals with the
    /// handle: a dead one (it saw an I/O error) fails the batch and is
    /// swapped before the answer; while only reads are served, the file is
    /// tried for writing if the last try was over a second ago. The answer
    /// says whether the batch committed.
    async fn empty_batch(&self) -> StoreResult<()> {
        self.write(|_| Ok(())).await
    }

    /// Runs `attempt`, and once more if it met a dead handle (one that saw an
    /// I/O error, or none during a swap), after the writer has replaced it.
    /// The writer replaces a handle whose commit failed, but a read can see
    /// the failure a moment before the swap, and a failed read kills a
    /// handle without the writer knowing.
    async fn retry_on_dead_handle<T, Attempt>(
        &self,
        attempt: impl Fn() -> Attempt,
    ) -> StoreResult<T>
    where
        Attempt: std::future::Future<Output = StoreResult<T>>,
    {
        match attempt().await {
            Err(StoreError::Io(_)) => {
                // Boxed: the rare path must not grow every read's future.
                let _ = Box::pin(self.empty_batch()).await;
                attempt().await
            }
            other => other,
        }
    }

    /// Whether the current handle accepts writes.
    fn is_writable(&self) -> bool {
        let handle = self.slot.read().unwrap_or_else(PoisonError::into_inner);
        matches!(*handle, Some(Handle::Writable(_)))
    }

    async fn write<T, F>(&self, operation: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Pending {
            operation: Some(operation),
            result: None,
            reply,
        });
        let jobs = self.jobs.as_ref().ok_or(StoreError::Closed)?;
        jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `operation` in a read snapshot on the blocking pool; once more
    /// on a fresh handle if the first one was dead.
    async fn read<T, F>(&self, operation: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&ReadTransaction) -> StoreResult<T> + Send + Sync + 'static,
    {
        let operation = Arc::new(operation);
        self.retry_on_dead_handle(|| {
            let (operation, slot) = (Arc::clone(&operation), Arc::clone(&self.slot));
            async move {
                tokio::task::spawn_blocking(move || operation(&Self::snapshot(&slot)?.txn))
                    .await
                    .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
            }
        })
        .await
    }
}

/// Deletes a user, their email's index entry and all of their sessions.
fn delete_user_in(txn: &WriteTransaction, id: UserId, now: Millis) -> StoreResult<Option<User>> {
    let Some(user) = read_user_in_write(txn, id)? else {
        return Ok(None);
    };
    txn.open_table(USER_EMAILS)
        .map_err(backend)?
        .remove(user.email.as_str())
        .map_err(backend)?;
    txn.open_table(USERS)
        .map_err(backend)?
        .remove(id)
        .map_err(backend)?;
    for sid in session_ids_of_user(txn, id)? {
        if let Some(session) = read_session_in_write(txn, SessionId(sid))? {
            if session.is_live(now) {
                log_revocation(txn, SessionId(sid), id, now)?;
            }
            delete_session(txn, sid, &session)?;
        }
    }
    Ok(Some(user))
}

/// Revokes every session of `user_id` that is not revoked yet, but `except`.
fn revoke_all_sessions(
    txn: &WriteTransaction,
    user_id: UserId,
    except: Option<SessionId>,
    now: Millis,
) -> StoreResult<usize> {
    let mut revoked = 0;
    for sid in session_ids_of_user(txn, user_id)? {
        if Some(SessionId(sid)) == except {
            continue;
        }
        if let Some(mut target) = read_session_in_write(txn, SessionId(sid))? {
            if target.is_live(now) {
                end_session(txn, SessionId(sid), &mut target, now)?;
                revoked += 1;
            } else if !target.revoked {
                // Expired already: nothing of it is valid; mark it all the same.
                target.revoked = true;
                put_session(txn, SessionId(sid), &target)?;
            }
        }
    }
    Ok(revoked)
}

/// Keeps a user below the session cap before `new` is stored (see
/// [`Store::create_session`]): revokes the oldest live sessions past
/// `max_live - 1` and deletes the oldest ended ones past `2 × max_live - 1`.
/// Costs one index range read while the user has fewer than `max_live`
/// sessions of any kind.
fn make_room_for_a_session(
    txn: &WriteTransaction,
    new: &Session,
    max_live: usize,
) -> StoreResult<usize> {
    let max_live = max_live.max(1);
    let ids = session_ids_of_user(txn, new.user_id)?;
    if ids.len() < max_live {
        return Ok(0);
    }
    // Oldest first: session ids are time-ordered.
    let mut sessions = Vec::with_capacity(ids.len());
    for sid in ids {
        if let Some(session) = read_session_in_write(txn, SessionId(sid))? {
            sessions.push((SessionId(sid), session));
        }
    }
    let room = super::room_for_a_session(&sessions, new.created_at, max_live);
    for &i in &room.end {
        let (sid, session) = &mut sessions[i];
        end_session(txn, *sid, session, new.created_at)?;
    }
    for &i in &room.delete {
        let (sid, session) = &sessions[i];
        delete_session(txn, sid.0, session)?;
    }
    Ok(room.end.len())
}

/// Creates the tables a new file lacks (a no-op on an existing one).
fn create_tables(db: &Database) -> StoreResult<()> {
    let txn = db.begin_write().map_err(backend)?;
    txn.open_table(USERS).map_err(backend)?;
    txn.open_table(USER_EMAILS).map_err(backend)?;
    txn.open_table(SESSIONS).map_err(backend)?;
    txn.open_table(USER_SESSIONS).map_err(backend)?;
    txn.open_table(SESSION_EXPIRY).map_err(backend)?;
    txn.open_table(META).map_err(backend)?;
    txn.open_table(SIGNING_KEYS).map_err(backend)?;
    txn.open_table(REVOCATIONS).map_err(backend)?;
    let has_epoch = txn
        .open_table(META)
        .map_err(backend)?
        .get(REVOCATION_EPOCH)
        .map_err(backend)?
        .is_some();
    if !has_epoch {
        records::new_revocation_epoch(&txn)?;
    }
    txn.commit().map_err(backend)
}

impl Drop for RedbStore {
    /// Closing the queue lets the writer finish what is queued and exit; the
    /// file is released when the last handle goes.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn create_user(&self, new: NewUser) -> StoreResult<Option<User>> {
        self.write(move |txn| {
            let mut emails = txn.open_table(USER_EMAILS).map_err(backend)?;
            if emails.get(new.email.as_str()).map_err(backend)?.is_some() {
                return Ok(None);
            }
            let mut meta = txn.open_table(META).map_err(backend)?;
            let id = meta
                .get(NEXT_USER_ID)
                .map_err(backend)?
                .map_or(1, |v| v.value());
            meta.insert(NEXT_USER_ID, id + 1).map_err(backend)?;
            let user = new.into_user(id);
            emails.insert(user.email.as_str(), id).map_err(backend)?;
            txn.open_table(USERS)
                .map_err(backend)?
                .insert(id, encode_user(&user).as_slice())
                .map_err(backend)?;
            Ok(Some(user))
        })
        .await
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let email = email.to_string();
        self.read(move |txn| {
            let emails = txn.open_table(USER_EMAILS).map_err(backend)?;
            let Some(id) = emails
                .get(email.as_str())
                .map_err(backend)?
                .map(|v| v.value())
            else {
                return Ok(None);
            };
            read_user(txn, id)
        })
        .await
    }

    async fn user(&self, id: UserId) -> StoreResult<Option<User>> {
        self.read(move |txn| read_user(txn, id)).await
    }

    async fn list_users(&self) -> StoreResult<Vec<User>> {
        self.read(|txn| {
            let users = txn.open_table(USERS).map_err(backend)?;
            let mut out = Vec::new();
            for entry in users.iter().map_err(backend)? {
                let (id, bytes) = entry.map_err(backend)?;
                out.push(decode_user(id.value(), bytes.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn remove_user(&self, email: &str) -> StoreResult<Option<User>> {
        let email = email.to_string();
        let clock = self.clock.clone();
        self.write(move |txn| {
            let id = txn
                .open_table(USER_EMAILS)
                .map_err(backend)?
                .get(email.as_str())
                .map_err(backend)?
                .map(|v| v.value());
            match id {
                Some(id) => delete_user_in(txn, id, clock.now_millis()),
                None => Ok(None),
            }
        })
        .await
    }

    async fn users_page(&self, after: Option<UserId>, limit: usize) -> StoreResult<UserPage> {
        self.read(move |txn| {
            let users = txn.open_table(USERS).map_err(backend)?;
            let total = redb::ReadableTableMetadata::len(&users).map_err(backend)?;
            let start = after.map_or(0, |id| id.saturating_add(1));
            let mut page = Vec::new();
            let mut next = None;
            for entry in users.range(start..).map_err(backend)? {
                let (id, bytes) = entry.map_err(backend)?;
                if page.len() == limit {
                    next = page.last().map(|u: &User| u.id);
                    break;
                }
                page.push(decode_user(id.value(), bytes.value())?);
            }
            Ok(UserPage {
                users: page,
                next,
                total,
            })
        })
        .await
    }

    async fn update_user(&self, id: UserId, change: UserChange) -> StoreResult<UserUpdate> {
        let clock = self.clock.clone();
        self.write(move |txn| {
            let Some(mut user) = read_user_in_write(txn, id)? else {
                return Ok(UserUpdate::NotFound);
            };
            if let Some(email) = change.email.filter(|e| *e != user.email) {
                let mut emails = txn.open_table(USER_EMAILS).map_err(backend)?;
                if emails.get(email.as_str()).map_err(backend)?.is_some() {
                    return Ok(UserUpdate::EmailTaken);
                }
                emails.remove(user.email.as_str()).map_err(backend)?;
                emails.insert(email.as_str(), id).map_err(backend)?;
                user.email = email;
            }
            if let Some(name) = change.name {
                user.name = name;
            }
            if let Some(role_id) = change.role_id {
                user.role_id = role_id;
            }
            if let Some(hash) = change.password_hash {
                user.password_hash = hash;
            }
            if let Some(disabled) = change.disabled {
                user.disabled = disabled;
            }
            txn.open_table(USERS)
                .map_err(backend)?
                .insert(id, encode_user(&user).as_slice())
                .map_err(backend)?;
            let except = match change.revoke_sessions {
                RevokeSessions::None => return Ok(UserUpdate::Updated(user)),
                RevokeSessions::All => None,
                RevokeSessions::AllExcept(keep) => Some(keep),
            };
            revoke_all_sessions(txn, id, except, clock.now_millis())?;
            Ok(UserUpdate::Updated(user))
        })
        .await
    }

    async fn delete_user(&self, id: UserId) -> StoreResult<Option<User>> {
        let clock = self.clock.clone();
        self.write(move |txn| delete_user_in(txn, id, clock.now_millis()))
            .await
    }

    async fn import_users(&self, users: Vec<NewUser>) -> StoreResult<Import> {
        self.write(move |txn| {
            let emails = txn.open_table(USER_EMAILS).map_err(backend)?;
            let mut seen = std::collections::HashSet::new();
            for (index, user) in users.iter().enumerate() {
                let taken = emails.get(user.email.as_str()).map_err(backend)?.is_some();
                if taken || !seen.insert(user.email.clone()) {
                    return Ok(Import::EmailTaken(index));
                }
            }
            drop(emails);
            Ok(Import::Imported(bulk::insert_users(txn, users)?.len()))
        })
        .await
    }

    async fn sessions_of_user(&self, id: UserId) -> StoreResult<Vec<(SessionId, Session)>> {
        self.read(move |txn| {
            let index = txn.open_table(USER_SESSIONS).map_err(backend)?;
            let range = index
                .range((id, 0u128)..=(id, u128::MAX))
                .map_err(backend)?;
            let mut out = Vec::new();
            for entry in range {
                let sid = SessionId(entry.map_err(backend)?.0.value().1);
                if let Some(session) = read_session(txn, sid)? {
                    out.push((sid, session));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn revoke_sessions_of_user(&self, id: UserId) -> StoreResult<usize> {
        let clock = self.clock.clone();
        self.write(move |txn| revoke_all_sessions(txn, id, None, clock.now_millis()))
            .await
    }

    async fn backup(&self, target: &Path) -> StoreResult<()> {
        let target = target.to_path_buf();
        let slot = Arc::clone(&self.slot);
        tokio::task::spawn_blocking(move || {
            let snapshot = Self::snapshot(&slot)?;
            backup::copy_snapshot(&snapshot.txn, &target)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("backup task failed: {e}")))?
    }

    async fn replace_password_hash(
        &self,
        id: UserId,
        old_hash: &str,
        new_hash: &str,
    ) -> StoreResult<bool> {
        let (old_hash, new_hash) = (old_hash.to_string(), new_hash.to_string());
        self.write(move |txn| {
            let Some(mut user) = read_user_in_write(txn, id)? else {
                return Ok(false);
            };
            if user.password_hash != old_hash {
                return Ok(false);
            }
            user.password_hash = new_hash;
            txn.open_table(USERS)
                .map_err(backend)?
                .insert(id, encode_user(&user).as_slice())
                .map_err(backend)?;
            Ok(true)
        })
        .await
    }

    async fn create_session(
        &self,
        id: SessionId,
        session: &Session,
        max_live: usize,
        checked_hash: &str,
    ) -> StoreResult<NewSession> {
        let (session, checked_hash) = (session.clone(), checked_hash.to_string());
        self.write(move |txn| {
            let user = read_user_in_write(txn, session.user_id)?;
            if !user.is_some_and(|u| !u.disabled && u.password_hash == checked_hash) {
                return Ok(NewSession::UserChanged);
            }
            let capped = make_room_for_a_session(txn, &session, max_live)?;
            insert_session(txn, id, &session)?;
            Ok(NewSession::Created { capped })
        })
        .await
    }

    async fn session(&self, id: SessionId) -> StoreResult<Option<Session>> {
        // Inline on the async worker, unlike other reads: a point lookup in a
        // read snapshot takes ~1-2 µs from redb's cache, several times less
        // than a hop to the blocking pool, and this is the hot path of every
        // access-token check. A read never waits for the writer.
        self.retry_on_dead_handle(|| {
            std::future::ready(
                Self::snapshot(&self.slot).and_then(|snapshot| read_session(&snapshot.txn, id)),
            )
        })
        .await
    }

    async fn session_with_owner(
        &self,
        id: SessionId,
    ) -> StoreResult<Option<(Session, Option<User>)>> {
        // Inline, like `session`: the refresh path's pre-read.
        self.retry_on_dead_handle(|| {
            std::future::ready(Self::snapshot(&self.slot).and_then(|snapshot| {
                let Some(session) = read_session(&snapshot.txn, id)? else {
                    return Ok(None);
                };
                let owner = read_user(&snapshot.txn, session.user_id)?;
                Ok(Some((session, owner)))
            }))
        })
        .await
    }

    async fn refresh_session(
        &self,
        id: SessionId,
        user_id: UserId,
        presented: TokenId,
        clock: &Clock,
        policy: RotationPolicy,
        fresh_jti: TokenId,
    ) -> StoreResult<RefreshOutcome> {
        let clock = clock.clone();
        self.write(move |txn| {
            let Some(user) = read_user_in_write(txn, user_id)? else {
                return Ok(RefreshOutcome::UserGone);
            };
            let Some(mut session) =
                read_session_in_write(txn, id)?.filter(|s| s.user_id == user_id)
            else {
                return Ok(RefreshOutcome::UnknownSession);
            };
            // Disabling revokes every session; this holds even for one
            // that slipped past it.
            if user.disabled {
                session.revoked = true;
            }
            let now = clock.now_millis();
            let decision = session.refresh(presented, now, policy, fresh_jti);
            if decision.changes_session() {
                put_session(txn, id, &session)?;
            }
            if decision == RefreshDecision::Reused {
                log_revocation(txn, id, user_id, now)?;
            }
            Ok(RefreshOutcome::Decided {
                decision,
                session,
                user,
            })
        })
        .await
    }

    async fn revoke_session(
        &self,
        id: SessionId,
        user_id: UserId,
        now: Millis,
    ) -> StoreResult<bool> {
        self.write(move |txn| {
            let Some(mut session) = read_session_in_write(txn, id)? else {
                return Ok(false);
            };
            if session.user_id != user_id || !session.is_live(now) {
                return Ok(false);
            }
            end_session(txn, id, &mut session, now)?;
            Ok(true)
        })
        .await
    }

    async fn logout_everywhere(
        &self,
        id: SessionId,
        user_id: UserId,
        presented: TokenId,
        clock: &Clock,
        policy: RotationPolicy,
    ) -> StoreResult<GlobalLogout> {
        let clock = clock.clone();
        self.write(move |txn| {
            if read_user_in_write(txn, user_id)?.is_none() {
                return Ok(GlobalLogout::UserGone);
            }
            let Some(mut session) =
                read_session_in_write(txn, id)?.filter(|s| s.user_id == user_id)
            else {
                return Ok(GlobalLogout::UnknownSession);
            };
            if let Err(refused) =
                session.authorise_global_logout(presented, clock.now_millis(), policy)
            {
                if refused == RefreshDecision::Reused {
                    put_session(txn, id, &session)?;
                    log_revocation(txn, id, user_id, clock.now_millis())?;
                }
                return Ok(GlobalLogout::Refused(refused));
            }
            let revoked = revoke_all_sessions(txn, user_id, None, clock.now_millis())?;
            Ok(GlobalLogout::Done { revoked })
        })
        .await
    }

    async fn sweep_expired_sessions(&self, now: Millis, limit: usize) -> StoreResult<usize> {
        self.write(move |txn| {
            let expired: Vec<(u64, u128)> = {
                let index = txn.open_table(SESSION_EXPIRY).map_err(backend)?;
                let range = index.range(..(now, 0u128)).map_err(backend)?;
                range
                    .take(limit)
                    .map(|entry| entry.map(|(key, _)| key.value()).map_err(backend))
                    .collect::<StoreResult<_>>()?
            };
            for &(expires_at, sid) in &expired {
                match read_session_in_write(txn, SessionId(sid))? {
                    Some(session) => delete_session(txn, sid, &session)?,
                    None => {
                        txn.open_table(SESSION_EXPIRY)
                            .map_err(backend)?
                            .remove((expires_at, sid))
                            .map_err(backend)?;
                    }
                }
            }
            Ok(expired.len())
        })
        .await
    }

    async fn probe_writes(&self) -> StoreResult<()> {
        if self.is_writable() {
            return Ok(());
        }
        self.empty_batch().await
    }

    async fn count_sessions(&self) -> StoreResult<u64> {
        self.read(|txn| {
            let sessions = txn.open_table(SESSIONS).map_err(backend)?;
            redb::ReadableTableMetadata::len(&sessions).map_err(backend)
        })
        .await
    }

    async fn signing_keys(&self) -> StoreResult<KeySet> {
        self.read(records::read_key_set).await
    }

    async fn replace_signing_keys(&self, set: KeySet) -> StoreResult<bool> {
        self.write(move |txn| records::replace_key_set(txn, &set))
            .await
    }

    async fn next_user_id(&self) -> StoreResult<u64> {
        self.read(|txn| {
            Ok(txn
                .open_table(META)
                .map_err(backend)?
                .get(NEXT_USER_ID)
                .map_err(backend)?
                .map_or(1, |v| v.value()))
        })
        .await
    }

    async fn is_empty(&self) -> StoreResult<bool> {
        self.read(|txn| {
            let users = txn.open_table(USERS).map_err(backend)?;
            let sessions = txn.open_table(SESSIONS).map_err(backend)?;
            let revocations = txn.open_table(REVOCATIONS).map_err(backend)?;
            Ok(
                redb::ReadableTableMetadata::len(&users).map_err(backend)? == 0
                    && redb::ReadableTableMetadata::len(&sessions).map_err(backend)? == 0
                    && redb::ReadableTableMetadata::len(&revocations).map_err(backend)? == 0,
            )
        })
        .await
    }

    async fn sessions_page(
        &self,
        after: Option<SessionId>,
        limit: usize,
    ) -> StoreResult<Vec<(SessionId, Session)>> {
        self.read(move |txn| {
            let table = txn.open_table(SESSIONS).map_err(backend)?;
            let from = after.map_or(0, |a| a.0.saturating_add(1));
            let mut page = Vec::new();
            for entry in table.range(from..).map_err(backend)?.take(limit) {
                let (id, bytes) = entry.map_err(backend)?;
                page.push((
                    SessionId(id.value()),
                    records::decode_session(id.value(), bytes.value())?,
                ));
            }
            Ok(page)
        })
        .await
    }

    async fn clear(&self) -> StoreResult<()> {
        self.write(|txn| {
            txn.delete_table(USERS).map_err(backend)?;
            txn.delete_table(USER_EMAILS).map_err(backend)?;
            txn.delete_table(SESSIONS).map_err(backend)?;
            txn.delete_table(USER_SESSIONS).map_err(backend)?;
            txn.delete_table(SESSION_EXPIRY).map_err(backend)?;
            txn.delete_table(SIGNING_KEYS).map_err(backend)?;
            txn.delete_table(REVOCATIONS).map_err(backend)?;
            // Every counter back to its start (absent), then a new epoch.
            txn.delete_table(META).map_err(backend)?;
            txn.open_table(USERS).map_err(backend)?;
            txn.open_table(USER_EMAILS).map_err(backend)?;
            txn.open_table(SESSIONS).map_err(backend)?;
            txn.open_table(USER_SESSIONS).map_err(backend)?;
            txn.open_table(SESSION_EXPIRY).map_err(backend)?;
            txn.open_table(SIGNING_KEYS).map_err(backend)?;
            txn.open_table(REVOCATIONS).map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
            records::new_revocation_epoch(txn)
        })
        .await
    }

    async fn restore(&self, batch: super::Restore) -> StoreResult<()> {
        self.write(move |txn| records::restore(txn, batch)).await
    }

    async fn revocations(&self, after: Option<u64>, limit: usize) -> StoreResult<RevocationPage> {
        if after.is_none() {
            // A bootstrap may read many entries: on the blocking pool.
            return self
                .read(move |txn| records::read_revocations(txn, after, limit))
                .await;
        }
        // What followers ask after a wake-up is a few entries: inline, like
        // `session`, so a thousand woken long polls do not flood the pool.
        self.retry_on_dead_handle(|| {
            std::future::ready(
                Self::snapshot(&self.slot)
                    .and_then(|snapshot| records::read_revocations(&snapshot.txn, after, limit)),
            )
        })
        .await
    }

    async fn prune_revocations(&self, ended_before: Millis, limit: usize) -> StoreResult<usize> {
        self.write(move |txn| records::prune_revocations(txn, ended_before, limit))
            .await
    }

    fn watch_revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revocations.clone()
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|txn| {
            txn.open_table(META)
                .map_err(backend)?
                .get(NEXT_USER_ID)
                .map_err(backend)?;
            Ok(())
        })
        .await
    }
}

#[cfg(all(test, feature = "test-hooks"))]
mod tests {
    use super::*;
    use crate::test_hooks::TestHooks;

    fn new_user(email: &str) -> NewUser {
        NewUser {
            email: email.into(),
            name: "Ana".into(),
            role_id: 1,
            password_hash: "$argon2id$not-a-real-hash".into(),
            created_at: 1,
            disabled: false,
        }
    }

    /// A store in `folder` with one user, ana@example.com.
    async fn store_with_ana(folder: &Path) -> (RedbStore, User) {
        let store = open(&folder.join("db.redb"), &Arc::default()).unwrap();
        let user = store
            .create_user(new_user("ana@example.com"))
            .await
            .unwrap()
            .unwrap();
        (store, user)
    }

    crate::store_contract_tests!(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("db.redb"), &Arc::default()).unwrap();
        (Arc::new(store) as Arc<dyn Store>, dir)
    });

    fn open(path: &Path, hooks: &Arc<TestHooks>) -> StoreResult<RedbStore> {
        let space = Arc::new(SpaceGuard::new(path, 0));
        RedbStore::open_with_hooks(path, 1 << 20, space, Arc::clone(hooks))
    }

    /// A file that cannot be written at start is served read-only, and the
    /// store starts writing once the file accepts writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_that_cannot_be_written_at_start_is_served_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let faults = Arc::new(TestHooks::default());
        let store = open(&path, &faults).unwrap();
        let ana = store.create_user(new_user("ana@example.com")).await;
        assert!(ana.unwrap().is_some());
        drop(store);

        faults.set_fail_writes(true);
        let store = open(&path, &faults).unwrap();
        assert!(!store.is_writable());
        let found = store.user_by_email("ana@example.com").await.unwrap();
        assert_eq!(found.unwrap().name, "Ana");
        let refused = store.create_user(new_user("mo@example.com")).await;
        assert!(matches!(refused, Err(StoreError::ReadOnly)), "{refused:?}");
        assert!(store.probe_writes().await.is_err());

        faults.set_fail_writes(false);
        tokio::time::sleep(writer::REOPEN_INTERVAL).await;
        assert!(store.probe_writes().await.is_ok());
        assert!(store.is_writable());
        let mo = store.create_user(new_user("mo@example.com")).await;
        assert!(mo.unwrap().is_some());
        assert_eq!(store.list_users().await.unwrap().len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_session_cap_revokes_the_oldest_and_bounds_what_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (store, user) = store_with_ana(dir.path()).await;
        let day = std::time::Duration::from_secs(86_400);
        let mut ids = Vec::new();
        for n in 0..20u64 {
            let now = 1_700_000_000_000 + n;
            let id = SessionId::generate(now);
            let session = Session::start(user.id, now, 30 * day, 7 * day, TokenId::generate());
            let created = store
                .create_session(id, &session, 3, &user.password_hash)
                .await
                .unwrap();
            let capped = usize::from(n >= 3);
            assert_eq!(created, NewSession::Created { capped }, "login {n}");
            ids.push(id);
        }
        for (n, id) in ids.iter().enumerate() {
            match store.session(*id).await.unwrap() {
                Some(session) => assert_eq!(session.revoked, n < 17, "session {n}"),
                None => assert!(n < 17, "a live session was deleted"),
            }
        }
        let user_id = user.id;
        let kept = store
            .write(move |txn| session_ids_of_user(txn, user_id))
            .await
            .unwrap();
        assert!(kept.len() <= 6, "{} sessions kept", kept.len());
    }

    /// A login checks the password, then stores its session; a disable or
    /// a new password that committed in between wins.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_is_not_stored_for_a_user_who_changed_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let (store, user) = store_with_ana(dir.path()).await;
        let day = std::time::Duration::from_secs(86_400);
        let start = |n: u64| {
            let session = Session::start(
                user.id,
                1_700_000_000_000 + n,
                day,
                day,
                TokenId::generate(),
            );
            (SessionId::generate(1_700_000_000_000 + n), session)
        };
        let change = |disabled: Option<bool>, hash: Option<&str>| UserChange {
            email: None,
            name: None,
            role_id: None,
            password_hash: hash.map(str::to_string),
            disabled,
            revoke_sessions: RevokeSessions::All,
        };
        let (id, session) = start(1);
        let created = store
            .create_session(id, &session, 10, &user.password_hash)
            .await;
        assert_eq!(created.unwrap(), NewSession::Created { capped: 0 });
        store
            .update_user(user.id, change(Some(true), None))
            .await
            .unwrap();
        let (id, session) = start(2);
        let created = store
            .create_session(id, &session, 10, &user.password_hash)
            .await;
        assert_eq!(
            created.unwrap(),
            NewSession::UserChanged,
            "disabled meanwhile"
        );
        assert!(store.session(id).await.unwrap().is_none());
        store
            .update_user(user.id, change(Some(false), Some("$argon2id$new")))
            .await
            .unwrap();
        let (id, session) = start(3);
        let created = store
            .create_session(id, &session, 10, &user.password_hash)
            .await;
        assert_eq!(
            created.unwrap(),
            NewSession::UserChanged,
            "a new password meanwhile"
        );
        let created = store
            .create_session(id, &session, 10, "$argon2id$new")
            .await;
        assert_eq!(created.unwrap(), NewSession::Created { capped: 0 });
    }

    #[test]
    fn a_missing_or_empty_file_that_cannot_be_written_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let faults = Arc::new(TestHooks::default());
        faults.set_fail_writes(true);
        assert!(matches!(open(&path, &faults), Err(StoreError::Backend(_))));
    }
}
