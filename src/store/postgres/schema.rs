//! The PostgreSQL schema, as versioned migrations that run at start.
//!
//! Each migration runs once, in order, inside one transaction that holds the
//! lock of row 0 of `latchkey_migrations`, so instances starting together
//! migrate one at a time. A migration only adds (tables, columns): older
//! instances still running during a rolling upgrade keep working. A database that has migrations this binary does
//! not know (a newer latchkey ran on it) is refused.
//!
//! Kept within what PostgreSQL-compatible distributed engines also accept:
//! plain tables, B-tree indexes, no advisory locks, no LISTEN/NOTIFY.

use tokio_postgres::Client;

use crate::store::{StoreError, StoreResult};

/// `(version, SQL)`, in order. Never edit one that shipped: add the next.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
    -- Ids never reused (as in the redb file's counter).
    CREATE SEQUENCE latchkey_user_ids START 1;
    CREATE TABLE latchkey_users (
        id            BIGINT PRIMARY KEY,
        email         TEXT NOT NULL UNIQUE,
        name          TEXT NOT NULL,
        role_id       BIGINT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at    BIGINT NOT NULL,
        disabled      BOOLEAN NOT NULL DEFAULT FALSE
    );
    -- Session and token ids are 128-bit, stored big-endian so that their
    -- byte order is their numeric (time) order.
    CREATE TABLE latchkey_sessions (
        id                  BYTEA PRIMARY KEY,
        user_id             BIGINT NOT NULL REFERENCES latchkey_users (id) ON DELETE CASCADE,
        created_at          BIGINT NOT NULL,
        expires_at          BIGINT NOT NULL,
        current_jti         BYTEA NOT NULL,
        current_iat         BIGINT NOT NULL,
        current_exp         BIGINT NOT NULL,
        previous_jti        BYTEA,
        previous_rotated_at BIGINT,
        revoked             BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE INDEX latchkey_sessions_by_user ON latchkey_sessions (user_id, id);
    CREATE INDEX latchkey_sessions_by_expiry ON latchkey_sessions (expires_at);
    -- The revocation log: `seq` comes from the `revocation_next_seq`
    -- counter row, updated in the transaction that logs, so entries become
    -- visible in `seq` order (a sequence would let a later seq commit first).
    CREATE TABLE latchkey_revocations (
        seq        BIGINT PRIMARY KEY,
        session_id BYTEA NOT NULL,
        user_id    BIGINT NOT NULL,
        ended_at   BIGINT NOT NULL
    );
    CREATE TABLE latchkey_counters (
        name  TEXT PRIMARY KEY,
        value BIGINT NOT NULL
    );
    INSERT INTO latchkey_counters (name, value) VALUES
        ('revocation_next_seq', 1),
        ('revocations_pruned_through', 0),
        ('revocation_epoch', (floor(random() * 9007199254740991))::BIGINT * 2 + 1),
        ('key_set_generation', 0),
        ('untyped_tokens_before', 0),
        ('key_access_ttl', 0);
    CREATE TABLE latchkey_signing_keys (
        kid    TEXT PRIMARY KEY,
        record TEXT NOT NULL
    );
    "#,
    ),
    (
        2,
        r#"
    -- Failed password checks per account (a keyed hash of the email),
    -- shared by every instance; rows are deleted once forgotten.
    CREATE TABLE latchkey_login_failures (
        account       BYTEA PRIMARY KEY,
        failures      INTEGER NOT NULL,
        last_failure  BIGINT NOT NULL,
        blocked_until BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX latchkey_login_failures_by_age ON latchkey_login_failures (last_failure);
    "#,
    ),
    (
        3,
        r#"
    -- Client addresses get budgets too (`account` names any budget), and
    -- attempts still running count, so a burst spread over instances gets
    -- no more checks than the budget: one lease row per running attempt
    -- and budget, deleted when it ends, or swept after `expires_at` if its
    -- instance died.
    CREATE TABLE latchkey_login_attempts (
        account    BYTEA NOT NULL,
        attempt    BYTEA NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (account, attempt)
    );
    CREATE INDEX latchkey_login_attempts_by_expiry ON latchkey_login_attempts (expires_at);
    -- Fixed hourly windows shared by instances: sign-ups per address,
    -- email changes per user (`name`: a keyed hash). `count` is `limit + 1`
    -- once an event was refused.
    CREATE TABLE latchkey_rate_windows (
        name    BYTEA PRIMARY KEY,
        started BIGINT NOT NULL,
        count   INTEGER NOT NULL
    );
    CREATE INDEX latchkey_rate_windows_by_start ON latchkey_rate_windows (started);
    "#,
    ),
    (
        4,
        r#"
    -- The signing secret of instances started without --secret: made by
    -- the first, read by the others (one row).
    CREATE TABLE latchkey_secret (
        id     INTEGER PRIMARY KEY CHECK (id = 1),
        secret BYTEA NOT NULL
    );
    "#,
    ),
];

fn backend(e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(format!(
        "migrating the PostgreSQL schema: {}",
        super::describe(&e)
    ))
}

/// Whether `e` is another instance creating the same table at the same
/// moment (the table exists now; going on is right).
fn created_meanwhile(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|code| {
        [
            SqlState::UNIQUE_VIOLATION,
            SqlState::DUPLICATE_TABLE,
            SqlState::DUPLICATE_OBJECT,
        ]
        .contains(code)
    })
}

/// Brings the schema to the newest version this binary knows; refuses a
/// database that is newer. Returns the version. An engine that runs the
/// transaction more strictly than asked (serializable only) may refuse a
/// migrator that raced another: it starts again, and then finds the work
/// done.
pub async fn migrate(client: &mut Client) -> StoreResult<i32> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match migrate_unchecked(client).await {
            Ok(result) => return result,
            Err(e) if raced(&e) && attempts < 5 => {
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempts)).await
            }
            Err(e) => return Err(backend(e)),
        }
    }
}

/// Whether `e` is a conflict with a migrator running at the same moment
/// that an engine stricter than asked reports (serializable only). Under
/// read committed, migrators wait in turn on the lock of row 0, so other
/// errors (a table that exists already) are real and reported as they are.
fn raced(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|code| {
        *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED
    })
}

async fn migrate_unchecked(client: &mut Client) -> Result<StoreResult<i32>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one("SELECT to_regclass('latchkey_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        let created = client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS latchkey_migrations (
                     version    INTEGER PRIMARY KEY,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 )",
            )
            .await;
        match created {
            Err(e) if created_meanwhile(&e) => {}
            other => other?,
        }
    }
    // One migrator at a time: they queue on the lock of row 0 (not a
    // version; `LOCK TABLE` modes are not accepted by CockroachDB).
    client
        .execute(
            "INSERT INTO latchkey_migrations (version) VALUES (0) ON CONFLICT (version) DO NOTHING",
            &[],
        )
        .await?;
    // Read committed whatever the database's default: after the lock, the
    // versions read must be those the previous migrator committed.
    let txn = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
        .start()
        .await?;
    txn.query_one(
        "SELECT version FROM latchkey_migrations WHERE version = 0 FOR UPDATE",
        &[],
    )
    .await?;
    let current: i32 = txn
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM latchkey_migrations",
            &[],
        )
        .await?
        .get(0);
    let newest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if current > newest {
        return Ok(Err(StoreError::Backend(format!(
            "the database's schema is version {current}, newer than this latchkey knows ({newest}): \
             upgrade latchkey, or point it at another database"
        ))));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        txn.batch_execute(sql).await?;
        txn.execute(
            "INSERT INTO latchkey_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
        tracing::info!(version, "applied a schema migration");
    }
    txn.commit().await?;
    Ok(Ok(newest))
}
