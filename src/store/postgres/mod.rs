//! The PostgreSQL backend: the same [`Store`] contract as the redb file,
//! for several latchkey instances on one database.
//!
//! Every operation is one transaction on a pooled connection
//! (deadpool-postgres over tokio-postgres). Rules stay in the domain core:
//! an operation reads the rows it decides on with `SELECT … FOR UPDATE`,
//! runs the same [`Session`] methods the redb writer runs, and writes the
//! result, so two instances presenting one refresh token at once perform
//! exactly one rotation (the second waits for the row lock and then sees
//! the rotated state). Serialization failures and deadlocks are retried.
//!
//! The revocation feed's wake-up: a commit on this instance that logged a
//! revocation bumps the watch channel at once; a watcher task polls the log
//! counter every [`LOG_POLL`] for commits of other instances (no
//! LISTEN/NOTIFY, so PostgreSQL-compatible engines without it work too).
//!
//! SQL, the pool and the migrations stay in this module; nothing outside
//! knows which store it has.

pub mod schema;
mod tls;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};

use super::{
    login_attempt_may_start, GlobalLogout, Import, LoginAdmission, LoginBudget, LoginClaim,
    LoginEnd, NewSession, NewUser, RefreshOutcome, Revocation, RevocationPage, RevokeSessions,
    Store, StoreError, StoreResult, User, UserChange, UserPage, UserUpdate, LOGIN_ATTEMPT_LEASE,
};
use crate::clock::Clock;
use crate::keys::KeySet;
use crate::session::{
    IssuedRefresh, Millis, RefreshDecision, Rotation, RotationPolicy, Session, SessionId, TokenId,
    UserId,
};

/// How often other instances' revocations are looked for.
const LOG_POLL: Duration = Duration::from_millis(200);
/// Revocation-feed reads running at once (of the pool's connections).
const FEED_READS: usize = 4;
/// How long a request waits for a pooled connection, or to connect.
const CONNECT_WAIT: Duration = Duration::from_secs(5);
/// Server-side limits on every connection: no lock wait, and no idle open
/// transaction, can hold a request (and its connection) for long.
const SESSION_LIMITS: &str = "-c lock_timeout=5s -c idle_in_transaction_session_timeout=30s";
/// Attempts of one operation that keeps meeting serialization failures.
const ATTEMPTS: usize = 12;

/// The pause before attempt `attempts + 1`: doubling from about 1 ms, up to
/// about 64 ms, with jitter, so that transactions that collided do not
/// collide again in step (engines that run every transaction serializable
/// refuse many more than PostgreSQL's read committed does).
async fn retry_pause(attempts: usize) {
    let mut jitter = [0u8; 1];
    let _ = getrandom::fill(&mut jitter);
    let base = 1u64 << attempts.saturating_sub(1).min(6);
    let micros = base * 1000 / 2 + base * u64::from(jitter[0]) * 1000 / 512;
    tokio::time::sleep(std::time::Duration::from_micros(micros)).await;
}

/// Why one attempt of an operation failed.
enum Failure {
    /// A serialization failure or deadlock: run the whole operation again.
    Retry,
    Fail(StoreError),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.code() {
            Some(code)
                if *code == SqlState::T_R_SERIALIZATION_FAILURE
                    || *code == SqlState::T_R_DEADLOCK_DETECTED =>
            {
                Failure::Retry
            }
            _ => Failure::Fail(StoreError::Backend(format!("PostgreSQL: {}", describe(&e)))),
        }
    }
}

/// An error with the server's own message and code (tokio-postgres's
/// `Display` says only "db error").
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}, {})", db.message(), db.code().code(), e),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// The database's clock, in Unix milliseconds: what every instance decides
/// time-dependent questions by (a grace window opened by one instance and
/// checked by another must not depend on their clocks agreeing).
async fn database_now(txn: &Txn<'_>) -> Attempt<Millis> {
    let now: i64 = txn
        .query_one(&format!("SELECT {DATABASE_NOW}"), &[])
        .await?
        .get(0);
    Ok(uint(now))
}

/// A first connection that failed, with the cause (TLS, authentication,
/// an unreachable host) spelt out.
fn cannot_connect(e: deadpool_postgres::PoolError) -> StoreError {
    let cause = match &e {
        deadpool_postgres::PoolError::Backend(pg) => describe(pg),
        other => other.to_string(),
    };
    StoreError::Backend(format!("cannot connect to PostgreSQL: {cause}"))
}

impl From<deadpool_postgres::PoolError> for Failure {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Failure::Fail(StoreError::Backend(format!("PostgreSQL pool: {e}")))
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Fail(e)
    }
}

type Attempt<T> = Result<T, Failure>;

/// Runs the block (one attempt of an operation, ending in `Ok`) until it
/// succeeds, fails for good, or has met [`ATTEMPTS`] serialization
/// failures; evaluates to a `StoreResult`.
macro_rules! retrying {
    ($body:block) => {{
        let mut attempts = 0;
        loop {
            attempts += 1;
            let attempt: Attempt<_> = async { $body }.await;
            match attempt {
                Ok(value) => break Ok(value),
                Err(Failure::Fail(e)) => break Err(e),
                Err(Failure::Retry) if attempts < ATTEMPTS => retry_pause(attempts).await,
                Err(Failure::Retry) => {
                    break Err(StoreError::Backend(
                        "PostgreSQL kept refusing the transaction as a serialization conflict"
                            .into(),
                    ))
                }
            }
        }
    }};
}

fn id_bytes(id: u128) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

fn id_from(bytes: &[u8]) -> StoreResult<u128> {
    let array: [u8; 16] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("an id of {} bytes", bytes.len())))?;
    Ok(u128::from_be_bytes(array))
}

/// The database's clock in Unix milliseconds, as SQL: what time-dependent
/// questions shared by instances are decided by.
const DATABASE_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::BIGINT";

/// The same clock, read once per statement (stable, so that a `WHERE` on it
/// can use an index): for sweeps.
const DATABASE_NOW_STABLE: &str = "(extract(epoch FROM statement_timestamp()) * 1000)::BIGINT";

/// Moves the user id sequence forward (never back) so that the next id is
/// at least `$1` and above every stored id.
const ADVANCE_USER_IDS: &str = "SELECT setval('latchkey_user_ids', wanted - 1) FROM ( \
     SELECT GREATEST((SELECT COALESCE(MAX(id), 0) + 1 FROM latchkey_users), $1::BIGINT) AS wanted, \
            (SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END \
             FROM latchkey_user_ids) AS next) AS ids \
     WHERE wanted > next";

/// Rate windows older than this are over (they are hourly) and swept.
const RATE_WINDOW_KEPT: u64 = 3_600_000;

/// Most batches of forgotten login-budget rows one sweep deletes.
const LOGIN_SWEEP_BATCHES: usize = 100;

/// Runs `delete` (a `DELETE` of at most `$1` rows, each batch its own short
/// transaction) until a batch deletes fewer than `limit`, at most
/// [`LOGIN_SWEEP_BATCHES`] times.
async fn delete_in_batches(
    client: &deadpool_postgres::Client,
    delete: &str,
    limit: usize,
) -> Attempt<()> {
    for _ in 0..LOGIN_SWEEP_BATCHES {
        if client.execute(delete, &[&int(limit as u64)]).await? < limit as u64 {
            break;
        }
    }
    Ok(())
}

/// A budget's row as it counts at `now`: failures older than the
/// budget's `forget_after` no longer count.
#[derive(Debug, Default, Clone, Copy)]
struct BudgetRow {
    failures: u32,
    last_failure: Millis,
    blocked_until: Millis,
}

/// The budget rows of `names` (sorted), made if missing and locked in name
/// order: instances cannot both take one attempt's place, nor deadlock
/// over two claims.
async fn lock_budget_rows(txn: &Txn<'_>, names: &[Vec<u8>]) -> Attempt<Vec<Row>> {
    txn.execute(
        "INSERT INTO latchkey_login_failures (account, failures, last_failure) \
         SELECT unnest($1::BYTEA[]), 0, 0 ON CONFLICT (account) DO NOTHING",
        &[&names],
    )
    .await?;
    Ok(txn
        .query(
            "SELECT account, failures, last_failure, blocked_until \
             FROM latchkey_login_failures WHERE account = ANY($1) ORDER BY account FOR UPDATE",
            &[&names],
        )
        .await?)
}

impl BudgetRow {
    /// `claim`'s row among `rows` (of [`lock_budget_rows`]). A row deleted
    /// between the insert and the lock (swept, or by an instance of the
    /// previous version) counts nothing; a failure still counts.
    fn of(rows: &[Row], claim: &LoginClaim, now: Millis) -> BudgetRow {
        rows.iter()
            .find(|row| row.get::<_, &[u8]>(0) == claim.name.as_slice())
            .map_or_else(BudgetRow::default, |row| {
                BudgetRow::read(row, claim.budget, now)
            })
    }

    fn read(row: &Row, budget: LoginBudget, now: Millis) -> BudgetRow {
        let last_failure = uint(row.get(2));
        let forgotten = last_failure < now.saturating_sub(budget.forget_after);
        BudgetRow {
            failures: if forgotten {
                0
            } else {
                u32::try_from(row.get::<_, i32>(1)).unwrap_or(0)
            },
            last_failure,
            blocked_until: uint(row.get(3)),
        }
    }
}

/// Budget names sorted and without repeats: the order rows are locked in.
fn sorted_names(names: impl Iterator<Item = [u8; 16]>) -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = names.map(|name| name.to_vec()).collect();
    names.sort();
    names.dedup();
    names
}

/// Milliseconds and seconds are stored as BIGINT.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn uint(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

const USER_COLUMNS: &str = "id, email, name, role_id, password_hash, created_at, disabled";

fn user_from(row: &Row) -> User {
    user_from_columns(row, 0)
}

/// A user from the row's columns `at..at + 7`, in [`USER_COLUMNS`] order.
fn user_from_columns(row: &Row, at: usize) -> User {
    User {
        id: uint(row.get(at)),
        email: row.get(at + 1),
        name: row.get(at + 2),
        role_id: row.get(at + 3),
        password_hash: row.get(at + 4),
        created_at: uint(row.get(at + 5)),
        disabled: row.get(at + 6),
    }
}

/// A rotation as one statement (see `refresh_session`); times on the
/// database's clock, as the general path's `database_now`.
const ROTATE: &str = "
    WITH t AS (SELECT (extract(epoch FROM statement_timestamp()) * 1000)::BIGINT AS now)
    UPDATE latchkey_sessions s SET
        previous_jti = s.current_jti,
        previous_rotated_at = t.now,
        current_jti = $4,
        current_iat = t.now / 1000,
        current_exp = LEAST(t.now + $5, s.expires_at) / 1000
    FROM t, latchkey_users u
    WHERE s.id = $1 AND s.user_id = $2 AND s.current_jti = $3 AND NOT s.revoked
      AND t.now < s.expires_at AND u.id = s.user_id AND NOT u.disabled
    RETURNING s.id, s.user_id, s.created_at, s.expires_at, s.current_jti, s.current_iat,
        s.current_exp, s.previous_jti, s.previous_rotated_at, s.revoked,
        u.id, u.email, u.name, u.role_id, u.password_hash, u.created_at, u.disabled";

const SESSION_COLUMNS: &str = "id, user_id, created_at, expires_at, current_jti, current_iat, \
     current_exp, previous_jti, previous_rotated_at, revoked";

fn session_from(row: &Row) -> StoreResult<(SessionId, Session)> {
    let previous_jti: Option<Vec<u8>> = row.get(7);
    let previous_at: Option<i64> = row.get(8);
    let previous = match (previous_jti, previous_at) {
        (Some(jti), Some(at)) => Some(Rotation {
            jti: TokenId(id_from(&jti)?),
            rotated_at: uint(at),
        }),
        _ => None,
    };
    let id: Vec<u8> = row.get(0);
    let current_jti: Vec<u8> = row.get(4);
    Ok((
        SessionId(id_from(&id)?),
        Session {
            user_id: uint(row.get(1)),
            created_at: uint(row.get(2)),
            expires_at: uint(row.get(3)),
            current: IssuedRefresh {
                jti: TokenId(id_from(&current_jti)?),
                issued_at: uint(row.get(5)),
                expires_at: uint(row.get(6)),
            },
            previous,
            revoked: row.get(9),
        },
    ))
}

type Txn<'a> = deadpool_postgres::Transaction<'a>;

async fn user_in(txn: &Txn<'_>, id: UserId, lock: bool) -> Attempt<Option<User>> {
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM latchkey_users WHERE id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    Ok(txn
        .query_opt(&sql, &[&int(id)])
        .await?
        .as_ref()
        .map(user_from))
}

async fn session_in(txn: &Txn<'_>, id: SessionId, lock: bool) -> Attempt<Option<Session>> {
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM latchkey_sessions WHERE id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    match txn.query_opt(&sql, &[&id_bytes(id.0)]).await? {
        Some(row) => Ok(Some(session_from(&row)?.1)),
        None => Ok(None),
    }
}

/// A read-only transaction that sees one snapshot throughout.
async fn snapshot(client: &mut deadpool_postgres::Client) -> Attempt<Txn<'_>> {
    Ok(client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

/// The values of the counters `names`, as a lookup (0 for one not there).
async fn counters(txn: &Txn<'_>, names: &[&str]) -> Attempt<impl Fn(&str) -> u64> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let rows = txn
        .query(
            "SELECT name, value FROM latchkey_counters WHERE name = ANY($1)",
            &[&names],
        )
        .await?;
    let values: Vec<(String, u64)> = rows
        .iter()
        .map(|row| (row.get(0), uint(row.get(1))))
        .collect();
    Ok(move |name: &str| {
        values
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    })
}

async fn put_session(txn: &Txn<'_>, id: SessionId, s: &Session) -> Attempt<()> {
    txn.execute(
        "INSERT INTO latchkey_sessions (id, user_id, created_at, expires_at, current_jti, \
             current_iat, current_exp, previous_jti, previous_rotated_at, revoked) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (id) DO UPDATE SET current_jti = EXCLUDED.current_jti, \
             current_iat = EXCLUDED.current_iat, current_exp = EXCLUDED.current_exp, \
             previous_jti = EXCLUDED.previous_jti, \
             previous_rotated_at = EXCLUDED.previous_rotated_at, revoked = EXCLUDED.revoked",
        &[
            &id_bytes(id.0),
            &int(s.user_id),
            &int(s.created_at),
            &int(s.expires_at),
            &id_bytes(s.current.jti.0),
            &int(s.current.issued_at),
            &int(s.current.expires_at),
            &s.previous.map(|p| id_bytes(p.jti.0)),
            &s.previous.map(|p| int(p.rotated_at)),
            &s.revoked,
        ],
    )
    .await?;
    Ok(())
}

/// Appends to the revocation log; the counter row's lock orders appenders
/// by commit.
async fn log_revocation(
    txn: &Txn<'_>,
    id: SessionId,
    user_id: UserId,
    ended_at: Millis,
) -> Attempt<()> {
    let seq: i64 = txn
        .query_one(
            "UPDATE latchkey_counters SET value = value + 1 \
             WHERE name = 'revocation_next_seq' RETURNING value - 1",
            &[],
        )
        .await?
        .get(0);
    txn.execute(
        "INSERT INTO latchkey_revocations (seq, session_id, user_id, ended_at) VALUES ($1, $2, $3, $4)",
        &[&seq, &id_bytes(id.0), &int(user_id), &int(ended_at)],
    )
    .await?;
    Ok(())
}

/// Ends a live session early: revoked and logged.
async fn end_session(
    txn: &Txn<'_>,
    id: SessionId,
    session: &mut Session,
    now: Millis,
) -> Attempt<()> {
    session.revoked = true;
    put_session(txn, id, session).await?;
    log_revocation(txn, id, session.user_id, now).await
}

async fn sessions_of(
    txn: &Txn<'_>,
    user_id: UserId,
    lock: bool,
) -> Attempt<Vec<(SessionId, Session)>> {
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM latchkey_sessions WHERE user_id = $1 ORDER BY id{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let rows = txn.query(&sql, &[&int(user_id)]).await?;
    Ok(rows.iter().map(session_from).collect::<StoreResult<_>>()?)
}

/// Revokes every live session of `user_id` but `except`; returns how many.
async fn revoke_all(
    txn: &Txn<'_>,
    user_id: UserId,
    except: Option<SessionId>,
    now: Millis,
) -> Attempt<usize> {
    let mut revoked = 0;
    for (id, mut session) in sessions_of(txn, user_id, true).await? {
        if Some(id) == except {
            continue;
        }
        if session.is_live(now) {
            end_session(txn, id, &mut session, now).await?;
            revoked += 1;
        } else if !session.revoked {
            session.revoked = true;
            put_session(txn, id, &session).await?;
        }
    }
    Ok(revoked)
}

async fn delete_user_in(txn: &Txn<'_>, id: UserId, now: Millis) -> Attempt<Option<User>> {
    let Some(user) = user_in(txn, id, true).await? else {
        return Ok(None);
    };
    for (sid, session) in sessions_of(txn, id, true).await? {
        if session.is_live(now) {
            log_revocation(txn, sid, id, now).await?;
        }
    }
    // The sessions go with the user (ON DELETE CASCADE).
    txn.execute("DELETE FROM latchkey_users WHERE id = $1", &[&int(id)])
        .await?;
    Ok(Some(user))
}

async fn insert_user(txn: &Txn<'_>, user: &NewUser) -> Attempt<Option<User>> {
    let row = txn
        .query_opt(
            &format!(
                "INSERT INTO latchkey_users ({USER_COLUMNS}) \
                 VALUES (nextval('latchkey_user_ids'), $1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (email) DO NOTHING RETURNING {USER_COLUMNS}"
            ),
            &[
                &user.email,
                &user.name,
                &user.role_id,
                &user.password_hash,
                &int(user.created_at),
                &user.disabled,
            ],
        )
        .await?;
    Ok(row.as_ref().map(user_from))
}

pub struct PgStore {
    pool: Pool,
    /// Feed reads at once: a revocation wakes every parked long poll, and
    /// their reads must not take the whole pool from ordinary requests.
    feed_reads: tokio::sync::Semaphore,
    clock: Clock,
    revocations: tokio::sync::watch::Sender<u64>,
    watcher: tokio::task::JoinHandle<()>,
}

/// `url` with libpq's `sslmode=verify-full` and `verify-ca` (which the
/// driver does not know) as `require`: here TLS always verifies. Only the
/// query's own `sslmode` parameter is touched.
fn with_verifying_modes_as_require(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let query: Vec<&str> = query
        .split('&')
        .map(|parameter| match parameter {
            "sslmode=verify-full" | "sslmode=verify-ca" => "sslmode=require",
            other => other,
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// A pool of at most `max_connections` connections to `url`.
///
/// TLS: with `sslmode=require` in the URL (`verify-full` and `verify-ca`
/// mean the same here), or with `ca_file`, connections use TLS and the
/// server's certificate and host name are verified (as libpq's
/// `verify-full`) against the system's roots and the PEM certificates in
/// `ca_file`; a server that cannot be verified is refused. Otherwise
/// (no `sslmode`, `prefer`, `disable`) connections are plain TCP.
fn connection_pool(url: &str, max_connections: usize, ca_file: Option<&Path>) -> StoreResult<Pool> {
    let url = with_verifying_modes_as_require(url);
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Backend(format!("--database is not a PostgreSQL URL: {e}")))?;
    let options = match config.get_options() {
        Some(given) => format!("{given} {SESSION_LIMITS}"),
        None => SESSION_LIMITS.to_string(),
    };
    config.options(&options);
    config.connect_timeout(CONNECT_WAIT);
    let use_tls =
        ca_file.is_some() || config.get_ssl_mode() == tokio_postgres::config::SslMode::Require;
    let recycling = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = if use_tls {
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
        Manager::from_config(config, tls::connector(ca_file)?, recycling)
    } else {
        Manager::from_config(config, NoTls, recycling)
    };
    Pool::builder(manager)
        .max_size(max_connections.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_WAIT))
        .create_timeout(Some(CONNECT_WAIT))
        .build()
        .map_err(|e| StoreError::Backend(format!("PostgreSQL pool: {e}")))
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host/db`), runs the
    /// migrations, and starts watching the revocation log. `ca_file`: see
    /// [`connection_pool`].
    pub async fn open(
        url: &str,
        max_connections: usize,
        ca_file: Option<&Path>,
    ) -> StoreResult<Self> {
        let pool = connection_pool(url, max_connections, ca_file)?;
        let mut client = pool.get().await.map_err(cannot_connect)?;
        schema::migrate(&mut client).await?;
        drop(client);
        let revocations = tokio::sync::watch::Sender::new(0u64);
        let watcher = tokio::spawn(watch_the_log(pool.clone(), revocations.clone()));
        Ok(PgStore {
            pool,
            feed_reads: tokio::sync::Semaphore::new(FEED_READS),
            clock: Clock::default(),
            revocations,
            watcher,
        })
    }

    /// Connects to `url` and runs the migrations alone; returns the version.
    pub async fn migrate(url: &str, ca_file: Option<&Path>) -> StoreResult<i32> {
        let pool = connection_pool(url, 1, ca_file)?;
        let mut client = pool.get().await.map_err(cannot_connect)?;
        schema::migrate(&mut client).await
    }

    /// Wakes this instance's feed readers after a commit that logged.
    fn logged(&self) {
        self.revocations.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Bumps `changes` whenever the log counter moves (commits of any instance).
async fn watch_the_log(pool: Pool, changes: tokio::sync::watch::Sender<u64>) {
    let mut last = None;
    let mut ticks = tokio::time::interval(LOG_POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Ok(client) = pool.get().await else {
            continue;
        };
        let Ok(row) = client
            .query_one(
                "SELECT value FROM latchkey_counters WHERE name = 'revocation_next_seq'",
                &[],
            )
            .await
        else {
            continue;
        };
        let next: i64 = row.get(0);
        if last.is_some_and(|last| last != next) {
            changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        last = Some(next);
    }
}

#[async_trait]
impl Store for PgStore {
    async fn create_user(&self, user: NewUser) -> StoreResult<Option<User>> {
        retrying!({
            let mut client = self.pool.get().await?;
            let txn = client.transaction().await?;
            let created = insert_user(&txn, &user).await?;
            txn.commit().await?;
            Ok(created)
        })
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        retrying!({
            let client = self.pool.get().await?;
            let sql = format!("SELECT {USER_COLUMNS} FROM latchkey_users WHERE email = $1");
            let statement = client.prepare_cached(&sql).await?;
            Ok(client
                .query_opt(&statement, &[&email])
                .await?
                .as_ref()
                .map(user_from))
        })
    }

    async fn user(&self, id: UserId) -> StoreResult<Option<User>> {
        retrying!({
            let client = self.pool.get().await?;
            let sql = format!("SELECT {USER_COLUMNS} FROM latchkey_users WHERE id = $1");
            let statement = client.prepare_cached(&sql).await?;
            Ok(client
                .query_opt(&statement, &[&int(id)])
                .await?
                .as_ref()
                .map(user_from))
        })
    }

    async fn users_page(&self, after: Option<UserId>, limit: usize) -> StoreResult<UserPage> {
        retrying!({
            let mut client = self.pool.get().await?;
            let txn = client.transaction().await?;
            let sql = format!(
                "SELECT {USER_COLUMNS} FROM latchkey_users WHERE id > $1 ORDER BY id LIMIT $2"
            );
            let rows = txn
                .query(&sql, &[&int(after.unwrap_or(0)), &int(limit as u64 + 1)])
                .await?;
            let mut users: Vec<User> = rows.iter().map(user_from).collect();
            let next = (users.len() > limit).then(|| {
                users.truncate(limit);
                users.last().map(|u| u.id)
            });
            let total: i64 = txn
                .query_one("SELECT count(*) FROM latchkey_users", &[])
                .await?
                .get(0);
            txn.commit().await?;
            Ok(UserPage {
                users,
                next: next.flatten(),
                total: uint(total),
            })
        })
    }

    async fn update_user(&self, id: UserId, change: UserChange) -> StoreResult<UserUpdate> {
        retrying!({
            let mut client = self.pool.get().await?;
            let txn = client.transaction().await?;
            let Some(mut user) = user_in(&txn, id, true).await? else {
                return Ok(UserUpdate::NotFound);
            };
            if let Some(email) = change.email.clone().filter(|e| *e != user.email) {
                let taken = txn
                    .query_opt("SELECT 1 FROM latchkey_users WHERE email = $1", &[&email])
                    .await?
                    .is_some();
                if taken {
                    return Ok(UserUpdate::EmailTaken);
                }
                user.email = email;
            }
            if let Some(name) = &change.name {
                user.name = name.clone();
            }
            if let Some(role_id) = change.role_id {
                user.role_id = role_id;
            }
            if let Some(hash) = &change.password_hash {
                user.password_hash = hash.clone();
            }
            if let Some(disabled) = change.disabled {
                user.disabled = disabled;
            }
            let updated = txn
                .execute(
                    "UPDATE latchkey_users SET email = $2, name = $3, role_id = $4, \
                         password_hash = $5, disabled = $6 WHERE id = $1",
                    &[
                        &int(id),
                        &user.email,
                        &user.name,
                        &user.role_id,
                        &user.password_hash,
                        &user.disabled,
                    ],
                )
                .await;
            match updated {
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    return Ok(UserUpdate::EmailTaken)
                }
                other => other?,
            };
            let except = match change.revoke_sessions {
                RevokeSessions::None => None,
                RevokeSessions::All => Some(None),
                RevokeSessions::AllExcept(keep) => Some(Some(keep)),
            };
            let mut logged = false;
            if let Some(except) = except {
                logged = revoke_all(&txn, id, except, self.clock.now_millis()).await? > 0;
            }
            txn.commit().await?;
            if logged {
                self.logged();
            }
            Ok(UserUpdate::Updated(user))
        })
    }

    async fn delete_user(&self, id: UserId) -> StoreResult<Option<User>> {
        let deleted = retrying!({
            let mut client = self.pool.get().await?;
            let txn = client.transaction().await?;
            let deleted = delete_user_in(&txn, id, self.clock.now_millis()).await?;
            txn.commit().await?;
            Ok(deleted)
        })?;
        self.logged();
        Ok(deleted)
    }

    async fn import_users(&self, users: Vec<NewUser>) -> StoreResult<Import> {
        retrying!({
            let mut client = self.pool.get().await?;
            let txn = client.transaction().await?;
            let mut seen = std::collections::HashSet::new();
            for (index, user) in users.iter().enumerate() {
                let taken = txn
                    .query_opt(
                        "SELECT 1 FROM latchkey_users WHERE email = $1",
                        &[&user.email],
                    )
                    .await?
                    .is_some();
                if taken || !seen.insert(user.email.clone()) {
                    return Ok(Import::EmailTaken(index));
                }
            }
            for (index, user) in users.iter().enumerate() {
                if insert_user(&txn, user).await?.is_none() {
                    // Taken meanwhile by another instance: nothing is imported.
                    return Ok(Import::EmailTaken(index));
                }
            }
            txn.commit().await?;
            Ok(Import::Imported(users.len()))
        })
    }

    async fn sessions_of_user(&self, id: UserId) -> StoreResult<Vec<(SessionId, Session)>> {
        retrying!({
            let mut client = self.pool.get().await?;
            let txn = client.transaction().await?;
            let sessions = sessions_of(&txn, id, false).await?;
            txn.commit().await?;
            Ok(sessions)
        })
    }

    async fn revoke_sessions_of_user(&self, id: UserId) -> StoreResult<usize> {
        let revoked = retrying!({
            let mut client = self.pool.get().await?;
            let txn = client.transaction().await?;
            // The user row first, as every path that locks several sessions.
            user_in(&txn, id, true).await?;
            let revoked = revoke_all(&txn, id, None, self.clock.now_millis()).await?;
            txn.commit().await?;
            Ok(revoked)
        })?;
        if revoked > 0 {
            self.logged();
        }
        Ok(revoked)
    }

    async fn backup(&self, _target: &Path) -> StoreResult<()> {
        Err(StoreError::Backend(
            "`latchkey backup` copies the redb file; back a PostgreSQL database up with pg_dump"
                .into(),
        ))
    }

    async fn list_users(&self) -> StoreResult<Vec<User>> {
        retrying!({
            let client = self.pool.get().await?;
            let sql = format!("SELECT {USER_COLUMNS} FROM latchkey_users ORDER BY id");
            Ok(client
                .query(&sql, &[])
                .await?
                .iter()
                .map(user_from)
                .collect())
        })
    }

    async fn remove_user(&self, email: &str) -> StoreResult<Option<User>> {
        let removed = retrying!({
            let mut client = self.pool.get().await?;
            let txn = client.transaction().await?;
            let id: Option<i64> = txn
                .query_opt("SELECT id FROM latchkey_users WHERE email = $1", &[&email])
                .await?
                .map(|row| row.get(0));
            let removed = match id {
                Some(id) => delete_user_in(&txn, uint(id), self.clock.now_millis()).await?,
                None => None,
            };
            txn.commit().await?;
            Ok(removed)
        })?;
        self.logged();
        Ok(removed)
    }

    async fn replace_password_hash(
        &self,
        id: UserId,
        old_hash: &str,
        new_hash: &str,
    ) -> StoreResult<bool> {
        retrying!({
            let client = self.pool.get().await?;
            let changed = client
                .execute(
                    "UPDATE latchkey_users SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
                    &[&int(id), &old_hash, &new_hash],
                )
                .await?;
            Ok(changed == 1)
        })
    }

    async fn create_session(
        &self,
        id: SessionId,
        session: &Session,
        max_live: usize,
        checked_hash: &str,
    ) -> StoreResult<NewSession> {
        let created = retrying!({
            let mut client = self.pool.get().await?;
            let txn = client.transaction().await?;
            // The user row's lock orders this login against a password
            // change or a disable committing meanwhile, on any instance.
            let user = user_in(&txn, session.user_id, true).await?;
            if !user.is_some_and(|u| !u.disabled && u.password_hash == checked_hash) {
                return Ok(NewSession::UserChanged);
            }
            let mut existing = sessions_of(&txn, session.user_id, true).await?;
            let now = session.created_at;
            let room = super::room_for_a_session(&existing, now, max_live);
            for &i in &room.end {
                let (sid, old) = &mut existing[i];
                end_session(&txn, *sid, old, now).await?;
            }
            for &i in &room.delete {
                txn.execute(
                    "DELETE FROM latchkey_sessions WHERE id = $1",
                    &[&id_bytes(existing[i].0 .0)],
                )
                .await?;
            }
            put_session(&txn, id, session).await?;
            txn.commit().await?;
            Ok(NewSession::Created {
                capped: room.end.len(),
            })
        })?;
        if matches!(created, NewSession::Created { capped } if capped > 0) {
            self.logged();
        }
        Ok(created)
    }

    async fn session(&self, id: SessionId) -> StoreResult<Option<Session>> {
        retrying!({
            let client = self.pool.get().await?;
            let sql = format!("SELECT {SESSION_COLUMNS} FROM latchkey_sessions WHERE id = $1");
            // Prepared once per connection: one round trip a check, not two
            // (a statement given as text is parsed in a round trip of its own).
            let statement = client.prepare_cached(&sql).await?;
            match client.query_opt(&statement, &[&id_bytes(id.0)]).await? {
                Some(row) => Ok(Some(session_from(&row)?.1)),
                None => Ok(None),
            }
        })
    }

    async fn session_with_owner(
        &self,
        id: SessionId,
    ) -> StoreResult<Option<(Session, Option<User>)>> {
        retrying!({
            let client = self.pool.get().await?;
            let sql =
                "SELECT s.id, s.user_id, s.created_at, s.expires_at, s.current_jti, s.current_iat, \
                     s.current_exp, s.previous_jti, s.previous_rotated_at, s.revoked, \
                     u.id, u.email, u.name, u.role_id, u.password_hash, u.created_at, u.disabled \
                 FROM latchkey_sessions s LEFT JOIN latchkey_users u ON u.id = s.user_id \
                 WHERE s.id = $1";
            let statement = client.prepare_cached(sql).await?;
            let Some(row) = client.query_opt(&statement, &[&id_bytes(id.0)]).await? else {
                return Ok(None);
            };
            let (_, session) = session_from(&row)?;
            let owner: Option<i64> = row.get(10);
            let owner = owner.map(|_| user_from_columns(&row, 10));
            Ok(Some((session, owner)))
        })
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
        // The common case in one statement (one round trip, one commit): the
        // current token of a live session of an enabled user rotates. Its
        // WHERE is exactly when `Session::decide` says `Rotated`; a
        // concurrent rotation makes it match nothing (PostgreSQL re-checks
        // the row after waiting for its lock), and everything else (grace,
        // reuse, revoked, expired, unknown) takes the general path below.
        if let Some(outcome) = retrying!({
            let client = self.pool.get().await?;
            let statement = client.prepare_cached(ROTATE).await?;
            let ttl = int(u64::try_from(policy.refresh_ttl.as_millis()).unwrap_or(u64::MAX));
            let row = client
                .query_opt(
                    &statement,
                    &[
                        &id_bytes(id.0),
                        &int(user_id),
                        &id_bytes(presented.0),
                        &id_bytes(fresh_jti.0),
                        &ttl,
                    ],
                )
                .await?;
            let Some(row) = row else { return Ok(None) };
            let (_, session) = session_from(&row)?;
            Ok(Some(RefreshOutcome::Decided {
                decision: RefreshDecision::Rotated,
                session,
                user: user_from_columns(&row, 10),
            }))
        })? {
            return Ok(outcome);
        }
        let outcome = retrying!({
            let mut client = self.pool.get().await?;
            let txn = client.transaction().await?;
            let session = session_in(&txn, id, true).await?;
            // The user as it is once the session's lock is ours.
            let Some(user) = user_in(&txn, user_id, false).await? else {
                return Ok(RefreshOutcome::UserGone);
            };
            let Some(mut session) = session.filter(|s| s.user_id == user_id) else {
                return Ok(RefreshOutcome::UnknownSession);
            };
            if user.disabled {
                session.revoked = true;
            }
            // Decided now, under the row lock, by the shared rules, on the
            // database's clock (see `database_now`).
            let _ = clock;
            let now = database_now(&txn).await?;
            let decision = session.refresh(presented, now, policy, fresh_jti);
            if decision.changes_session() {
                put_session(&txn, id, &session).await?;
            }
            if decision == RefreshDecision::Reused {
                log_revocation(&txn, id, user_id, now).await?;
            }
            txn.commit().await?;
            Ok(RefreshOutcome::Decided {
                decision,
                session,
                user,
            })
        })?;
        if matches!(
            outcome,
            RefreshOutcome::Decided {
                decision: RefreshDecision::Reused,
                ..
            }
        ) {
            self.logged();
        }
        Ok(outcome)
    }

    async fn revoke_session(
        &self,
        id: SessionId,
        user_id: UserId,
        now: Millis,
    ) -> StoreResult<bool> {
        let revoked = retrying!({
            let mut client = self.pool.get().await?;
            let txn = client.transaction().await?;
            let Some(mut session) = session_in(&txn, id, true).await? else {
                return Ok(false);
            };
            if session.user_id != user_id || !session.is_live(now) {
                return Ok(false);
            }
            end_session(&txn, id, &mut session, now).await?;
            txn.commit().await?;
            Ok(true)
        })?;
        if revoked {
            self.logged();
        }
        Ok(revoked)
    }

    async fn logout_everywhere(
        &self,
        id: SessionId,
        user_id: UserId,
        presented: TokenId,
        clock: &Clock,
        policy: RotationPolicy,
    ) -> StoreResult<GlobalLogout> {
        let outcome = retrying!({
            let mut client = self.pool.get().await?;
            let txn = client.transaction().await?;
            if user_in(&txn, user_id, true).await?.is_none() {
                return Ok(GlobalLogout::UserGone);
            }
            let Some(mut session) = session_in(&txn, id, true)
                .await?
                .filter(|s| s.user_id == user_id)
            else {
                return Ok(GlobalLogout::UnknownSession);
            };
            let _ = clock;
            let now = database_now(&txn).await?;
            if let Err(refused) = session.authorise_global_logout(presented, now, policy) {
                if refused == RefreshDecision::Reused {
                    put_session(&txn, id, &session).await?;
                    log_revocation(&txn, id, user_id, now).await?;
                    txn.commit().await?;
                }
                return Ok(GlobalLogout::Refused(refused));
            }
            let revoked = revoke_all(&txn, user_id, None, now).await?;
            txn.commit().await?;
            Ok(GlobalLogout::Done { revoked })
        })?;
        self.logged();
        Ok(outcome)
    }

    async fn revocations(&self, after: Option<u64>, limit: usize) -> StoreResult<RevocationPage> {
        let _turn = self
            .feed_reads
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        retrying!({
            let mut client = self.pool.get().await?;
            // One snapshot for the counters and the entries.
            let txn = snapshot(&mut client).await?;
            let counter = counters(
                &txn,
                &[
                    "revocation_epoch",
                    "revocation_next_seq",
                    "revocations_pruned_through",
                ],
            )
            .await?;
            let rows = txn
                .query(
                    "SELECT seq, session_id, user_id, ended_at FROM latchkey_revocations \
                     WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&int(after.unwrap_or(0)), &int(limit as u64)],
                )
                .await?;
            let mut entries = Vec::with_capacity(rows.len());
            for row in &rows {
                let session: Vec<u8> = row.get(1);
                entries.push(Revocation {
                    seq: uint(row.get(0)),
                    session_id: SessionId(id_from(&session)?),
                    user_id: uint(row.get(2)),
                    ended_at: uint(row.get(3)),
                });
            }
            txn.commit().await?;
            Ok(RevocationPage {
                epoch: counter("revocation_epoch"),
                last_seq: counter("revocation_next_seq").saturating_sub(1),
                pruned_through: counter("revocations_pruned_through"),
                entries,
            })
        })
    }

    async fn prune_revocations(&self, ended_before: Millis, limit: usize) -> StoreResult<usize> {
        retrying!({
            let mut client = self.pool.get().await?;
            let txn = client.transaction().await?;
            // The oldest entries, up to the first one still in force.
            let rows = txn
                .query(
                    "SELECT seq, ended_at FROM latchkey_revocations ORDER BY seq LIMIT $1",
                    &[&int(limit as u64)],
                )
                .await?;
            let through = rows
                .iter()
                .take_while(|row| uint(row.get(1)) < ended_before)
                .map(|row| row.get::<_, i64>(0))
                .last();
            let Some(through) = through else {
                return Ok(0);
            };
            let pruned = txn
                .execute(
                    "DELETE FROM latchkey_revocations WHERE seq <= $1",
                    &[&through],
                )
                .await?;
            txn.execute(
                "UPDATE latchkey_counters SET value = GREATEST(value, $1) \
                 WHERE name = 'revocations_pruned_through'",
                &[&through],
            )
            .await?;
            txn.commit().await?;
            Ok(pruned as usize)
        })
    }

    async fn is_empty(&self) -> StoreResult<bool> {
        retrying!({
            let client = self.pool.get().await?;
            let row = client
                .query_one(
                    "SELECT NOT EXISTS (SELECT 1 FROM latchkey_users) \
                         AND NOT EXISTS (SELECT 1 FROM latchkey_sessions) \
                         AND NOT EXISTS (SELECT 1 FROM latchkey_revocations)",
                    &[],
                )
                .await?;
            Ok(row.get(0))
        })
    }

    async fn clear(&self) -> StoreResult<()> {
        retrying!({
            let mut client = self.pool.get().await?;
            let txn = client.transaction().await?;
            txn.batch_execute(
                "TRUNCATE latchkey_sessions, latchkey_revocations, latchkey_users, \
                     latchkey_signing_keys, latchkey_login_failures, latchkey_login_attempts, \
                     latchkey_rate_windows, latchkey_secret; \
                 UPDATE latchkey_counters SET value = CASE name \
                     WHEN 'revocation_next_seq' THEN 1 \
                     WHEN 'revocation_epoch' THEN (floor(random() * 9007199254740991))::BIGINT * 2 + 1 \
                     ELSE 0 END; \
                 ALTER SEQUENCE latchkey_user_ids RESTART WITH 1;",
            )
            .await?;
            txn.commit().await?;
            Ok(())
        })
    }

    async fn sessions_page(
        &self,
        after: Option<SessionId>,
        limit: usize,
    ) -> StoreResult<Vec<(SessionId, Session)>> {
        retrying!({
            let client = self.pool.get().await?;
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM latchkey_sessions WHERE id > $1 ORDER BY id LIMIT $2"
            );
            // Big-endian ids order as numbers; "after nothing" is below every id.
            let from = after.map_or_else(Vec::new, |a| id_bytes(a.0));
            let rows = client.query(&sql, &[&from, &int(limit as u64)]).await?;
            Ok(rows.iter().map(session_from).collect::<StoreResult<_>>()?)
        })
    }

    async fn restore(&self, batch: super::Restore) -> StoreResult<()> {
        use super::Restore;
        retrying!({
            let mut client = self.pool.get().await?;
            let txn = client.transaction().await?;
            match &batch {
                Restore::Users(users) => {
                    for user in users {
                        txn.execute(
                            &format!(
                                "INSERT INTO latchkey_users ({USER_COLUMNS}) \
                                 VALUES ($1, $2, $3, $4, $5, $6, $7)"
                            ),
                            &[
                                &int(user.id),
                                &user.email,
                                &user.name,
                                &user.role_id,
                                &user.password_hash,
                                &int(user.created_at),
                                &user.disabled,
                            ],
                        )
                        .await?;
                    }
                    // Later ids continue after the highest restored.
                    txn.execute(ADVANCE_USER_IDS, &[&0i64]).await?;
                }
                Restore::Sessions(sessions) => {
                    for (id, session) in sessions {
                        put_session(&txn, *id, session).await?;
                    }
                }
                Restore::NextUserId(next) => {
                    txn.execute(ADVANCE_USER_IDS, &[&int(*next)]).await?;
                }
                Restore::Revocations(entries) => {
                    for entry in entries {
                        txn.execute(
                            "INSERT INTO latchkey_revocations (seq, session_id, user_id, ended_at) \
                             VALUES ($1, $2, $3, $4)",
                            &[
                                &int(entry.seq),
                                &id_bytes(entry.session_id.0),
                                &int(entry.user_id),
                                &int(entry.ended_at),
                            ],
                        )
                        .await?;
                    }
                    txn.execute(
                        "UPDATE latchkey_counters SET value = GREATEST(value, \
                             (SELECT COALESCE(MAX(seq), 0) + 1 FROM latchkey_revocations)) \
                         WHERE name = 'revocation_next_seq'",
                        &[],
                    )
                    .await?;
                }
            }
            txn.commit().await?;
            Ok(())
        })
    }

    async fn next_user_id(&self) -> StoreResult<u64> {
        retrying!({
            let client = self.pool.get().await?;
            let next: i64 = client
                .query_one(
                    "SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END \
                     FROM latchkey_user_ids",
                    &[],
                )
                .await?
                .get(0);
            Ok(uint(next))
        })
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn signing_secret(&self) -> StoreResult<Option<Vec<u8>>> {
        retrying!({
            let client = self.pool.get().await?;
            Ok(client
                .query_opt("SELECT secret FROM latchkey_secret WHERE id = 1", &[])
                .await?
                .map(|row| row.get(0)))
        })
    }

    async fn signing_secret_or(&self, candidate: Vec<u8>) -> StoreResult<Option<Vec<u8>>> {
        retrying!({
            let client = self.pool.get().await?;
            client
                .execute(
                    "INSERT INTO latchkey_secret (id, secret) VALUES (1, $1) \
                     ON CONFLICT (id) DO NOTHING",
                    &[&candidate],
                )
                .await?;
            let row = client
                .query_one("SELECT secret FROM latchkey_secret WHERE id = 1", &[])
                .await?;
            Ok(Some(row.get(0)))
        })
    }

    async fn set_signing_secret(&self, secret: Vec<u8>) -> StoreResult<bool> {
        retrying!({
            let client = self.pool.get().await?;
            client
                .execute(
                    "INSERT INTO latchkey_secret (id, secret) VALUES (1, $1) \
                     ON CONFLICT (id) DO UPDATE SET secret = EXCLUDED.secret",
                    &[&secret],
                )
                .await?;
            Ok(true)
        })
    }

    async fn shared_now(&self) -> StoreResult<Option<Millis>> {
        retrying!({
            let client = self.pool.get().await?;
            let now: i64 = client
                .query_one(&format!("SELECT {DATABASE_NOW}"), &[])
                .await?
                .get(0);
            Ok(Some(uint(now)))
        })
    }

    async fn take_rate_window(
        &self,
        name: [u8; 16],
        limit: u32,
        window: Millis,
        now: Millis,
    ) -> StoreResult<Option<Millis>> {
        // `limit + 1` must fit: it marks a refusal.
        let limit = i32::try_from(limit.min(i32::MAX as u32 - 1)).unwrap_or(i32::MAX - 1);
        retrying!({
            let client = self.pool.get().await?;
            // One statement under the row's lock: instances cannot both
            // take the last place.
            let row = client
                .query_one(
                    "INSERT INTO latchkey_rate_windows AS w (name, started, count) \
                     VALUES ($1, $2, 1) \
                     ON CONFLICT (name) DO UPDATE SET \
                         started = CASE WHEN w.started <= $2 - $3 THEN $2 ELSE w.started END, \
                         count = CASE WHEN w.started <= $2 - $3 THEN 1 \
                                      WHEN w.count < $4 THEN w.count + 1 \
                                      ELSE GREATEST(w.count, $4 + 1) END \
                     RETURNING started, count",
                    &[&name.as_slice(), &int(now), &int(window), &limit],
                )
                .await?;
            let (started, count): (i64, i32) = (row.get(0), row.get(1));
            Ok((count > limit).then(|| uint(started).saturating_add(window)))
        })
    }

    async fn begin_login_attempt(
        &self,
        claims: &[LoginClaim],
        now: Millis,
    ) -> StoreResult<LoginAdmission> {
        let names = sorted_names(claims.iter().map(|claim| claim.name));
        let mut attempt = [0u8; 16];
        getrandom::fill(&mut attempt)
            .map_err(|e| StoreError::Backend(format!("no randomness available: {e}")))?;
        retrying!({
            let mut client = self.pool.get().await?;
            let txn = client.transaction().await?;
            let rows = lock_budget_rows(&txn, &names).await?;
            let running = txn
                .query(
                    "SELECT account, count(*) FROM latchkey_login_attempts \
                     WHERE account = ANY($1) AND expires_at > $2 GROUP BY account",
                    &[&names, &int(now)],
                )
                .await?;
            for claim in claims {
                let state = BudgetRow::of(&rows, claim, now);
                if state.blocked_until > now {
                    return Ok(LoginAdmission::Blocked {
                        until: state.blocked_until,
                    });
                }
                let running = running
                    .iter()
                    .find(|row| row.get::<_, &[u8]>(0) == claim.name.as_slice())
                    .map_or(0, |row| {
                        u32::try_from(row.get::<_, i64>(1)).unwrap_or(u32::MAX)
                    });
                if !login_attempt_may_start(state.failures, running, claim.budget.free) {
                    return Ok(LoginAdmission::Busy);
                }
            }
            // One lease row per claim: it ends with the attempt, or by itself
            // after the lease if the instance running it dies.
            txn.execute(
                "INSERT INTO latchkey_login_attempts (account, attempt, expires_at) \
                 SELECT unnest($1::BYTEA[]), $2, $3",
                &[
                    &names,
                    &attempt.as_slice(),
                    &int(now.saturating_add(LOGIN_ATTEMPT_LEASE)),
                ],
            )
            .await?;
            txn.commit().await?;
            Ok(LoginAdmission::Admitted {
                attempt: u128::from_be_bytes(attempt),
            })
        })
    }

    async fn end_login_attempt(
        &self,
        attempt: u128,
        ends: &[(LoginClaim, LoginEnd)],
        now: Millis,
    ) -> StoreResult<Vec<Option<Millis>>> {
        let names = sorted_names(ends.iter().map(|(claim, _)| claim.name));
        retrying!({
            let mut client = self.pool.get().await?;
            let txn = client.transaction().await?;
            let rows = lock_budget_rows(&txn, &names).await?;
            txn.execute(
                "DELETE FROM latchkey_login_attempts WHERE account = ANY($1) AND attempt = $2",
                &[&names, &id_bytes(attempt)],
            )
            .await?;
            let mut blocks = Vec::with_capacity(ends.len());
            for (claim, end) in ends {
                let mut state = BudgetRow::of(&rows, claim, now);
                let mut block = None;
                match end {
                    LoginEnd::Released => {}
                    LoginEnd::Cleared => {
                        state.failures = 0;
                        state.blocked_until = 0;
                    }
                    LoginEnd::Failed => {
                        state.failures = state.failures.saturating_add(1);
                        state.last_failure = now;
                        block = claim.budget.block_after(state.failures, now);
                        if let Some(until) = block {
                            state.blocked_until = state.blocked_until.max(until);
                        }
                    }
                }
                txn.execute(
                    "INSERT INTO latchkey_login_failures \
                         (account, failures, last_failure, blocked_until) \
                     VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (account) DO UPDATE SET failures = $2, last_failure = $3, \
                         blocked_until = $4",
                    &[
                        &claim.name.as_slice(),
                        &i32::try_from(state.failures).unwrap_or(i32::MAX),
                        &int(state.last_failure),
                        &int(state.blocked_until),
                    ],
                )
                .await?;
                blocks.push(block);
            }
            txn.commit().await?;
            Ok(blocks)
        })
    }

    fn watch_revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    async fn sweep_expired_sessions(&self, now: Millis, limit: usize) -> StoreResult<usize> {
        retrying!({
            let client = self.pool.get().await?;
            // A bounded batch: short locks, whatever the backlog.
            let deleted = client
                .execute(
                    "DELETE FROM latchkey_sessions WHERE id IN ( \
                         SELECT id FROM latchkey_sessions WHERE expires_at < $1 \
                         ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
                    &[&int(now), &int(limit as u64)],
                )
                .await?;
            // Leases of attempts whose instance died, then budget rows that
            // count no more, block nothing and run nothing (failures are
            // forgotten after an hour: the throttle's `forget_after`; rows
            // of successes only at once), each in bounded batches until
            // none is left, so the tables hold about one hour of failures.
            delete_in_batches(
                &client,
                &format!(
                    "DELETE FROM latchkey_login_attempts WHERE (account, attempt) IN ( \
                     SELECT account, attempt FROM latchkey_login_attempts \
                     WHERE expires_at < {DATABASE_NOW_STABLE} LIMIT $1 FOR UPDATE SKIP LOCKED)"
                ),
                limit,
            )
            .await?;
            delete_in_batches(
                &client,
                &format!(
                    "DELETE FROM latchkey_rate_windows WHERE name IN ( \
                     SELECT name FROM latchkey_rate_windows \
                     WHERE started < {DATABASE_NOW_STABLE} - {RATE_WINDOW_KEPT} \
                     LIMIT $1 FOR UPDATE SKIP LOCKED)"
                ),
                limit,
            )
            .await?;
            delete_in_batches(
                &client,
                &format!(
                    "DELETE FROM latchkey_login_failures WHERE account IN ( \
                     SELECT account FROM latchkey_login_failures AS budget \
                     WHERE last_failure < {DATABASE_NOW_STABLE} - 3600000 \
                         AND blocked_until < {DATABASE_NOW_STABLE} \
                         AND NOT EXISTS (SELECT 1 FROM latchkey_login_attempts AS running \
                             WHERE running.account = budget.account) \
                     LIMIT $1 FOR UPDATE SKIP LOCKED)"
                ),
                limit,
            )
            .await?;
            Ok(deleted as usize)
        })
    }

    async fn count_sessions(&self) -> StoreResult<u64> {
        retrying!({
            let client = self.pool.get().await?;
            let count: i64 = client
                .query_one("SELECT count(*) FROM latchkey_sessions", &[])
                .await?
                .get(0);
            Ok(uint(count))
        })
    }

    async fn signing_keys(&self) -> StoreResult<KeySet> {
        retrying!({
            let mut client = self.pool.get().await?;
            let txn = snapshot(&mut client).await?;
            let counter = counters(
                &txn,
                &[
                    "key_set_generation",
                    "untyped_tokens_before",
                    "key_access_ttl",
                ],
            )
            .await?;
            let mut keys = Vec::new();
            for row in txn
                .query(
                    "SELECT kid, record FROM latchkey_signing_keys ORDER BY kid",
                    &[],
                )
                .await?
            {
                let (kid, record): (String, String) = (row.get(0), row.get(1));
                keys.push(crate::store::redb::records::decode_key(
                    &kid,
                    record.as_bytes(),
                )?);
            }
            txn.commit().await?;
            Ok(KeySet {
                generation: counter("key_set_generation"),
                keys,
                untyped_tokens_before: counter("untyped_tokens_before"),
                access_ttl: counter("key_access_ttl"),
            })
        })
    }

    async fn replace_signing_keys(&self, set: KeySet) -> StoreResult<bool> {
        retrying!({
            let mut client = self.pool.get().await?;
            let txn = client.transaction().await?;
            // The generation row's update decides: of two instances that
            // read the same generation, one matches, the other finds 0 rows.
            let advanced = txn
                .execute(
                    "UPDATE latchkey_counters SET value = value + 1 \
                     WHERE name = 'key_set_generation' AND value = $1",
                    &[&int(set.generation)],
                )
                .await?;
            if advanced != 1 {
                return Ok(false);
            }
            for (name, value) in [
                ("untyped_tokens_before", set.untyped_tokens_before),
                ("key_access_ttl", set.access_ttl),
            ] {
                txn.execute(
                    "UPDATE latchkey_counters SET value = $2 WHERE name = $1",
                    &[&name, &int(value)],
                )
                .await?;
            }
            txn.execute("DELETE FROM latchkey_signing_keys", &[])
                .await?;
            for key in &set.keys {
                let record = crate::store::redb::records::encode_key(key);
                let record = String::from_utf8(record).expect("key records are JSON");
                txn.execute(
                    "INSERT INTO latchkey_signing_keys (kid, record) VALUES ($1, $2)",
                    &[&key.kid, &record],
                )
                .await?;
            }
            txn.commit().await?;
            Ok(true)
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        retrying!({
            let client = self.pool.get().await?;
            client.query_one("SELECT 1", &[]).await?;
            Ok(())
        })
    }

    async fn probe_writes(&self) -> StoreResult<()> {
        self.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Login requests dropped at any moment (their clients went away) leave
    /// no lease behind: a lease admitted for nobody would hold a place of
    /// the account's budget for 30 s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_logins_leave_no_lease() {
        let Some(pg) = fresh_pg().await else {
            return;
        };
        let store = Arc::clone(&pg) as Arc<dyn Store>;
        let policy = crate::throttle::ThrottlePolicy {
            account_free_failures: 1_000_000,
            address_free_failures: 1_000_000,
            ..Default::default()
        };
        let secret = crate::secrets::Secret::new(vec![7; 32]).unwrap();
        let budgets = crate::throttle::shared::SharedBudgets::new(
            Arc::clone(&store),
            &secret,
            policy,
            Clock::default(),
        );
        let address = Some(std::net::IpAddr::from([127, 0, 0, 1]));
        let (mut finished, mut cancelled) = (0, 0);
        // Patience from 0.1 to 10 ms: cancelled before, during and after
        // the store's answer, however busy the machine is.
        for i in 0..300u64 {
            let patience = std::time::Duration::from_micros(100 + (i * 7919) % 10_000);
            match tokio::time::timeout(patience, budgets.begin("ana@example.com", address)).await {
                Ok(started) => {
                    started
                        .map_err(|_| "refused")
                        .unwrap()
                        .succeeded()
                        .await
                        .unwrap();
                    finished += 1;
                }
                Err(_) => cancelled += 1,
            }
        }
        assert!(cancelled > 0, "{cancelled} cancelled, {finished} finished");
        // The guards of admitted-but-abandoned attempts release in the background.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let client = pg.pool.get().await.unwrap();
            let leases: i64 = client
                .query_one("SELECT count(*) FROM latchkey_login_attempts", &[])
                .await
                .unwrap()
                .get(0);
            if leases == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{leases} leases left after {cancelled} cancelled logins"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// A fresh database for one test: a schema of its own in the database
    /// at `LATCHKEY_TEST_DATABASE_URL` (tests are skipped without it).
    async fn fresh() -> Option<(Arc<dyn Store>, ())> {
        let store = fresh_pg().await?;
        Some((store as Arc<dyn Store>, ()))
    }

    async fn fresh_pg() -> Option<Arc<PgStore>> {
        let url = std::env::var("LATCHKEY_TEST_DATABASE_URL").ok()?;
        let mut name = [0u8; 8];
        getrandom::fill(&mut name).unwrap();
        let schema = format!("t{:016x}", u64::from_le_bytes(name));
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap();
        let separator = if url.contains('?') { '&' } else { '?' };
        let scoped = format!("{url}{separator}options=-csearch_path%3D{schema}");
        Some(Arc::new(PgStore::open(&scoped, 4, None).await.unwrap()))
    }

    macro_rules! pg_contract {
        ($($check:ident),*) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some((store, ())) = fresh().await else {
                    // Straight to stderr: the harness does not swallow it.
                    use std::io::Write;
                    let _ = writeln!(
                        std::io::stderr(),
                        "SKIPPED: the PostgreSQL contract needs LATCHKEY_TEST_DATABASE_URL"
                    );
                    return;
                };
                crate::store::contract::$check(store).await;
            }
        )*};
    }

    pg_contract!(
        users,
        rotation,
        sessions,
        revocation_log,
        restore,
        signing_keys,
        login_budgets,
        rate_windows
    );

    /// Instances starting together on an empty database all start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_starting_together_migrate_once() {
        let Some(url) = std::env::var("LATCHKEY_TEST_DATABASE_URL").ok() else {
            return;
        };
        for _ in 0..10 {
            let mut name = [0u8; 8];
            getrandom::fill(&mut name).unwrap();
            let schema = format!("t{:016x}", u64::from_le_bytes(name));
            let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
            tokio::spawn(connection);
            client
                .batch_execute(&format!("CREATE SCHEMA {schema}"))
                .await
                .unwrap();
            let scoped = format!("{url}?options=-csearch_path%3D{schema}");
            let (a, b, c) = tokio::join!(
                PgStore::open(&scoped, 2, None),
                PgStore::open(&scoped, 2, None),
                PgStore::open(&scoped, 2, None)
            );
            for opened in [a, b, c] {
                if let Err(e) = opened {
                    panic!("{e}");
                }
            }
        }
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let Some(url) = std::env::var("LATCHKEY_TEST_DATABASE_URL").ok() else {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: needs LATCHKEY_TEST_DATABASE_URL"
            );
            return;
        };
        let mut name = [0u8; 8];
        getrandom::fill(&mut name).unwrap();
        let schema = format!("t{:016x}", u64::from_le_bytes(name));
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap();
        let scoped = format!("{url}?options=-csearch_path%3D{schema}");
        drop(PgStore::open(&scoped, 2, None).await.unwrap());
        client
            .batch_execute(&format!(
                "INSERT INTO {schema}.latchkey_migrations (version) VALUES (999)"
            ))
            .await
            .unwrap();
        let Err(refused) = PgStore::open(&scoped, 2, None).await else {
            panic!("a newer schema was accepted");
        };
        assert!(refused.to_string().contains("newer"), "{refused}");
    }
}
