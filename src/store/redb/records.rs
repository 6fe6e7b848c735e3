//! How records are stored: user and session encodings, and helpers that
//! read and write them inside a transaction.

use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{
    backend, KEY_ACCESS_TTL, KEY_SET_GENERATION, META, REVOCATIONS, REVOCATIONS_PRUNED_THROUGH,
    REVOCATION_EPOCH, REVOCATION_NEXT_SEQ, SESSIONS, SESSION_EXPIRY, SIGNING_KEYS,
    UNTYPED_TOKENS_BEFORE, USERS, USER_SESSIONS,
};
use crate::keys::{KeySet, SigningAlg, StoredKey};
use crate::session::{IssuedRefresh, Millis, Rotation, Session, SessionId, TokenId, UserId};
use crate::store::{Revocation, RevocationPage};
use crate::store::{StoreError, StoreResult, User};

#[derive(Serialize, Deserialize)]
struct StoredUser {
    email: String,
    name: String,
    role_id: i64,
    password_hash: String,
    created_at: Millis,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    disabled: bool,
}

pub(super) fn encode_user(user: &User) -> Vec<u8> {
    let stored = StoredUser {
        email: user.email.clone(),
        name: user.name.clone(),
        role_id: user.role_id,
        password_hash: user.password_hash.clone(),
        created_at: user.created_at,
        disabled: user.disabled,
    };
    serde_json::to_vec(&stored).expect("a user record always serialises")
}

pub(super) fn decode_user(id: UserId, bytes: &[u8]) -> StoreResult<User> {
    let stored: StoredUser = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("user {id}: {e}")))?;
    Ok(User {
        id,
        email: stored.email,
        name: stored.name,
        role_id: stored.role_id,
        password_hash: stored.password_hash,
        created_at: stored.created_at,
        disabled: stored.disabled,
    })
}

/// Session records, version 1, little-endian, fixed size: version (1 byte),
/// user id (8), created at (8), absolute end (8), current token: jti (16),
/// iat (8), exp (8); whether there is a previous token (1), its jti (16) and
/// rotation time (8); revoked (1). That is 83 bytes; the last 8 of the 91
/// are reserved, written as zero and ignored when read, so that one more
/// 64-bit field can be added without changing the size of every record.
const SESSION_RECORD_V1: u8 = 1;
const SESSION_RECORD_LEN: usize = 91;

pub(super) fn encode_session(s: &Session) -> [u8; SESSION_RECORD_LEN] {
    let mut out = [0u8; SESSION_RECORD_LEN];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        out[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(&[SESSION_RECORD_V1]);
    put(&s.user_id.to_le_bytes());
    put(&s.created_at.to_le_bytes());
    put(&s.expires_at.to_le_bytes());
    put(&s.current.jti.0.to_le_bytes());
    put(&s.current.issued_at.to_le_bytes());
    put(&s.current.expires_at.to_le_bytes());
    let previous = s.previous.unwrap_or(Rotation {
        jti: TokenId(0),
        rotated_at: 0,
    });
    put(&[u8::from(s.previous.is_some())]);
    put(&previous.jti.0.to_le_bytes());
    put(&previous.rotated_at.to_le_bytes());
    put(&[u8::from(s.revoked)]);
    out
}

pub(super) fn decode_session(id: u128, bytes: &[u8]) -> StoreResult<Session> {
    let corrupt = || StoreError::Corrupt(format!("session {id:032x}"));
    if bytes.len() != SESSION_RECORD_LEN || bytes[0] != SESSION_RECORD_V1 {
        return Err(corrupt());
    }
    let mut at = 1;
    let mut take = |n: usize| {
        let slice = &bytes[at..at + n];
        at += n;
        slice
    };
    let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let u128_at = |b: &[u8]| u128::from_le_bytes(b.try_into().expect("16 bytes"));
    let user_id = u64_at(take(8));
    let created_at = u64_at(take(8));
    let expires_at = u64_at(take(8));
    let current = IssuedRefresh {
        jti: TokenId(u128_at(take(16))),
        issued_at: u64_at(take(8)),
        expires_at: u64_at(take(8)),
    };
    let has_previous = take(1)[0] == 1;
    let previous = Rotation {
        jti: TokenId(u128_at(take(16))),
        rotated_at: u64_at(take(8)),
    };
    let revoked = take(1)[0] == 1;
    Ok(Session {
        user_id,
        created_at,
        expires_at,
        current,
        previous: has_previous.then_some(previous),
        revoked,
    })
}

/// The user stored under `id` in the users table of any transaction.
fn user_in(
    users: &impl ReadableTable<u64, &'static [u8]>,
    id: UserId,
) -> StoreResult<Option<User>> {
    let found = users.get(id).map_err(backend)?;
    found
        .map(|bytes| decode_user(id, bytes.value()))
        .transpose()
}

/// The session stored under `id` in the sessions table of any transaction.
fn session_in(
    sessions: &impl ReadableTable<u128, &'static [u8]>,
    id: SessionId,
) -> StoreResult<Option<Session>> {
    let found = sessions.get(id.0).map_err(backend)?;
    found
        .map(|bytes| decode_session(id.0, bytes.value()))
        .transpose()
}

pub(super) fn read_user(txn: &ReadTransaction, id: UserId) -> StoreResult<Option<User>> {
    user_in(&txn.open_table(USERS).map_err(backend)?, id)
}

pub(super) fn read_session(txn: &ReadTransaction, id: SessionId) -> StoreResult<Option<Session>> {
    session_in(&txn.open_table(SESSIONS).map_err(backend)?, id)
}

pub(super) fn read_user_in_write(txn: &WriteTransaction, id: UserId) -> StoreResult<Option<User>> {
    user_in(&txn.open_table(USERS).map_err(backend)?, id)
}

pub(super) fn read_session_in_write(
    txn: &WriteTransaction,
    id: SessionId,
) -> StoreResult<Option<Session>> {
    session_in(&txn.open_table(SESSIONS).map_err(backend)?, id)
}

pub(super) fn put_session(
    txn: &WriteTransaction,
    id: SessionId,
    session: &Session,
) -> StoreResult<()> {
    let mut sessions = txn.open_table(SESSIONS).map_err(backend)?;
    sessions
        .insert(id.0, encode_session(session).as_slice())
        .map_err(backend)?;
    Ok(())
}

/// Stores a new session with its entries in the by-user and by-expiry
/// indexes (the counterpart of [`delete_session`]).
pub(super) fn insert_session(
    txn: &WriteTransaction,
    id: SessionId,
    session: &Session,
) -> StoreResult<()> {
    put_session(txn, id, session)?;
    txn.open_table(USER_SESSIONS)
        .map_err(backend)?
        .insert((session.user_id, id.0), ())
        .map_err(backend)?;
    txn.open_table(SESSION_EXPIRY)
        .map_err(backend)?
        .insert((session.expires_at, id.0), ())
        .map_err(backend)?;
    Ok(())
}

pub(super) fn delete_session(
    txn: &WriteTransaction,
    id: u128,
    session: &Session,
) -> StoreResult<()> {
    txn.open_table(SESSIONS)
        .map_err(backend)?
        .remove(id)
        .map_err(backend)?;
    txn.open_table(USER_SESSIONS)
        .map_err(backend)?
        .remove((session.user_id, id))
        .map_err(backend)?;
    txn.open_table(SESSION_EXPIRY)
        .map_err(backend)?
        .remove((session.expires_at, id))
        .map_err(backend)?;
    Ok(())
}

pub(super) fn session_ids_of_user(
    txn: &WriteTransaction,
    user_id: UserId,
) -> StoreResult<Vec<u128>> {
    let index = txn.open_table(USER_SESSIONS).map_err(backend)?;
    let range = index
        .range((user_id, 0u128)..=(user_id, u128::MAX))
        .map_err(backend)?;
    range
        .map(|entry| entry.map(|(key, _)| key.value().1).map_err(backend))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::RotationPolicy;
    use std::time::Duration;

    #[test]
    fn session_records_round_trip() {
        let mut session = Session::start(
            9,
            1_000,
            Duration::from_secs(60),
            Duration::from_secs(30),
            TokenId(5),
        );
        assert_eq!(
            decode_session(1, &encode_session(&session)).unwrap(),
            session
        );
        let policy = RotationPolicy {
            refresh_ttl: Duration::from_secs(30),
            reuse_grace: Duration::from_secs(1),
        };
        session.refresh(TokenId(5), 2_000, policy, TokenId(u128::MAX));
        session.revoked = true;
        assert_eq!(
            decode_session(1, &encode_session(&session)).unwrap(),
            session
        );
        assert!(decode_session(1, &[1, 2, 3]).is_err());
    }
}

/// A signing key as stored: JSON, the private key (if any) in base64url.
#[derive(Serialize, Deserialize)]
struct StoredKeyRecord {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    private_pkcs8: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_jwk: Option<crate::keys::PublicJwk>,
    created_at: Millis,
    signs_from: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signs_until: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    published_until: Option<Millis>,
}

pub(crate) fn encode_key(key: &StoredKey) -> Vec<u8> {
    use base64::Engine as _;
    let record = StoredKeyRecord {
        alg: key.alg.as_str().to_string(),
        private_pkcs8: key
            .private_pkcs8
            .as_ref()
            .map(|der| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(der)),
        public_jwk: key.public_jwk.clone(),
        created_at: key.created_at,
        signs_from: key.signs_from,
        signs_until: key.signs_until,
        published_until: key.published_until,
    };
    serde_json::to_vec(&record).expect("a key record always serialises")
}

pub(crate) fn decode_key(kid: &str, bytes: &[u8]) -> StoreResult<StoredKey> {
    use base64::Engine as _;
    let corrupt = |what: &str| StoreError::Corrupt(format!("signing key {kid}: {what}"));
    let record: StoredKeyRecord =
        serde_json::from_slice(bytes).map_err(|e| corrupt(&e.to_string()))?;
    Ok(StoredKey {
        kid: kid.to_string(),
        alg: SigningAlg::parse(&record.alg).ok_or_else(|| corrupt("unknown algorithm"))?,
        private_pkcs8: record
            .private_pkcs8
            .map(|text| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
            .transpose()
            .map_err(|_| corrupt("bad private key encoding"))?,
        public_jwk: record.public_jwk,
        created_at: record.created_at,
        signs_from: record.signs_from,
        signs_until: record.signs_until,
        published_until: record.published_until,
    })
}

/// The key set as a snapshot sees it. A file written before signing keys
/// existed, opened read-only, has no such table: an empty set.
pub(super) fn read_key_set(txn: &ReadTransaction) -> StoreResult<KeySet> {
    let table = match txn.open_table(SIGNING_KEYS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(KeySet::default()),
        Err(e) => return Err(backend(e)),
    };
    let mut keys = Vec::new();
    for entry in table.iter().map_err(backend)? {
        let (kid, bytes) = entry.map_err(backend)?;
        keys.push(decode_key(kid.value(), bytes.value())?);
    }
    let meta = txn.open_table(META).map_err(backend)?;
    let get = |name: &str| -> StoreResult<u64> {
        Ok(meta.get(name).map_err(backend)?.map_or(0, |v| v.value()))
    };
    Ok(KeySet {
        generation: get(KEY_SET_GENERATION)?,
        keys,
        untyped_tokens_before: get(UNTYPED_TOKENS_BEFORE)?,
        access_ttl: get(KEY_ACCESS_TTL)?,
    })
}

/// Replaces the key set if its generation is still `set.generation`.
pub(super) fn replace_key_set(txn: &WriteTransaction, set: &KeySet) -> StoreResult<bool> {
    let mut meta = txn.open_table(META).map_err(backend)?;
    let stored = meta
        .get(KEY_SET_GENERATION)
        .map_err(backend)?
        .map_or(0, |v| v.value());
    if stored != set.generation {
        return Ok(false);
    }
    meta.insert(KEY_SET_GENERATION, set.generation + 1)
        .map_err(backend)?;
    meta.insert(UNTYPED_TOKENS_BEFORE, set.untyped_tokens_before)
        .map_err(backend)?;
    meta.insert(KEY_ACCESS_TTL, set.access_ttl)
        .map_err(backend)?;
    let mut table = txn.open_table(SIGNING_KEYS).map_err(backend)?;
    table.retain(|_, _| false).map_err(backend)?;
    for key in &set.keys {
        table
            .insert(key.kid.as_str(), encode_key(key).as_slice())
            .map_err(backend)?;
    }
    Ok(true)
}

// ---- the revocation log ----------------------------------------------------

thread_local! {
    /// Set on the writer thread when an operation of the current batch logged
    /// a revocation; the writer takes it after the commit and wakes the feed.
    static REVOCATIONS_LOGGED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the batch just applied logged a revocation (and clears it).
pub(super) fn take_revocations_logged() -> bool {
    REVOCATIONS_LOGGED.with(|logged| logged.replace(false))
}

/// Revocation records, fixed size, little-endian: session id (16), user id
/// (8), when it ended (8).
const REVOCATION_RECORD_LEN: usize = 32;

fn encode_revocation(
    session_id: SessionId,
    user_id: UserId,
    ended_at: Millis,
) -> [u8; REVOCATION_RECORD_LEN] {
    let mut out = [0u8; REVOCATION_RECORD_LEN];
    out[..16].copy_from_slice(&session_id.0.to_le_bytes());
    out[16..24].copy_from_slice(&user_id.to_le_bytes());
    out[24..].copy_from_slice(&ended_at.to_le_bytes());
    out
}

fn decode_revocation(seq: u64, bytes: &[u8]) -> StoreResult<Revocation> {
    if bytes.len() != REVOCATION_RECORD_LEN {
        return Err(StoreError::Corrupt(format!(
            "revocation {seq}: {} bytes",
            bytes.len()
        )));
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    Ok(Revocation {
        seq,
        session_id: SessionId(u128::from_le_bytes(
            bytes[..16].try_into().expect("16 bytes"),
        )),
        user_id: u64_at(16),
        ended_at: u64_at(24),
    })
}

/// Appends "session `id` of `user_id` ended at `ended_at`" to the log that
/// the revocation feed serves, in the transaction that ends it.
pub(super) fn log_revocation(
    txn: &WriteTransaction,
    id: SessionId,
    user_id: UserId,
    ended_at: Millis,
) -> StoreResult<()> {
    let mut meta = txn.open_table(META).map_err(backend)?;
    let seq = meta
        .get(REVOCATION_NEXT_SEQ)
        .map_err(backend)?
        .map_or(1, |v| v.value());
    meta.insert(REVOCATION_NEXT_SEQ, seq + 1).map_err(backend)?;
    txn.open_table(REVOCATIONS)
        .map_err(backend)?
        .insert(seq, encode_revocation(id, user_id, ended_at).as_slice())
        .map_err(backend)?;
    REVOCATIONS_LOGGED.with(|logged| logged.set(true));
    Ok(())
}

/// Ends a live session before its time: revoked, stored, and logged.
pub(super) fn end_session(
    txn: &WriteTransaction,
    id: SessionId,
    session: &mut Session,
    now: Millis,
) -> StoreResult<()> {
    session.revoked = true;
    put_session(txn, id, session)?;
    log_revocation(txn, id, session.user_id, now)
}

/// Gives this database's revocation log an identity of its own (a new file,
/// or a backup copy: cursors of the original must not pass for its own).
pub(super) fn new_revocation_epoch(txn: &WriteTransaction) -> StoreResult<()> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Backend(format!("no randomness available: {e}")))?;
    txn.open_table(META)
        .map_err(backend)?
        .insert(REVOCATION_EPOCH, u64::from_le_bytes(bytes) | 1)
        .map_err(backend)?;
    Ok(())
}

/// Up to `limit` log entries after `after` (from the start without), and
/// where the log stands.
pub(super) fn read_revocations(
    txn: &ReadTransaction,
    after: Option<u64>,
    limit: usize,
) -> StoreResult<RevocationPage> {
    let meta = txn.open_table(META).map_err(backend)?;
    let get = |name: &str| -> StoreResult<u64> {
        Ok(meta.get(name).map_err(backend)?.map_or(0, |v| v.value()))
    };
    let mut page = RevocationPage {
        epoch: get(REVOCATION_EPOCH)?,
        last_seq: get(REVOCATION_NEXT_SEQ)?.saturating_sub(1),
        pruned_through: get(REVOCATIONS_PRUNED_THROUGH)?,
        entries: Vec::new(),
    };
    let table = match txn.open_table(REVOCATIONS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(page),
        Err(e) => return Err(backend(e)),
    };
    let from = after.map_or(0, |a| a.saturating_add(1));
    for entry in table.range(from..).map_err(backend)?.take(limit) {
        let (seq, bytes) = entry.map_err(backend)?;
        page.entries
            .push(decode_revocation(seq.value(), bytes.value())?);
    }
    Ok(page)
}

/// Deletes up to `limit` of the oldest entries that ended before
/// `ended_before`, and records how far the log is pruned.
pub(super) fn prune_revocations(
    txn: &WriteTransaction,
    ended_before: Millis,
    limit: usize,
) -> StoreResult<usize> {
    let mut table = txn.open_table(REVOCATIONS).map_err(backend)?;
    let mut pruned = Vec::new();
    for entry in table.iter().map_err(backend)?.take(limit) {
        let (seq, bytes) = entry.map_err(backend)?;
        let revocation = decode_revocation(seq.value(), bytes.value())?;
        if revocation.ended_at >= ended_before {
            break;
        }
        pruned.push(revocation.seq);
    }
    for seq in &pruned {
        table.remove(*seq).map_err(backend)?;
    }
    if let Some(last) = pruned.last() {
        txn.open_table(META)
            .map_err(backend)?
            .insert(REVOCATIONS_PRUNED_THROUGH, *last)
            .map_err(backend)?;
    }
    Ok(pruned.len())
}

/// Writes another store's records as they are (`latchkey store copy`).
pub(super) fn restore(txn: &WriteTransaction, batch: crate::store::Restore) -> StoreResult<()> {
    use crate::store::Restore;
    let mut meta = txn.open_table(META).map_err(backend)?;
    let counter = |meta: &redb::Table<&str, u64>, name: &str| -> StoreResult<u64> {
        Ok(meta.get(name).map_err(backend)?.map_or(0, |v| v.value()))
    };
    match batch {
        Restore::Users(users) => {
            let mut table = txn.open_table(USERS).map_err(backend)?;
            let mut emails = txn.open_table(super::USER_EMAILS).map_err(backend)?;
            let mut next = counter(&meta, super::NEXT_USER_ID)?.max(1);
            for user in users {
                table
                    .insert(user.id, encode_user(&user).as_slice())
                    .map_err(backend)?;
                emails
                    .insert(user.email.as_str(), user.id)
                    .map_err(backend)?;
                next = next.max(user.id + 1);
            }
            meta.insert(super::NEXT_USER_ID, next).map_err(backend)?;
        }
        Restore::NextUserId(given) => {
            let next = counter(&meta, super::NEXT_USER_ID)?.max(1).max(given);
            meta.insert(super::NEXT_USER_ID, next).map_err(backend)?;
        }
        Restore::Sessions(sessions) => {
            for (id, session) in sessions {
                insert_session(txn, id, &session)?;
            }
        }
        Restore::Revocations(entries) => {
            let mut table = txn.open_table(REVOCATIONS).map_err(backend)?;
            let mut next = counter(&meta, REVOCATION_NEXT_SEQ)?.max(1);
            for entry in entries {
                table
                    .insert(
                        entry.seq,
                        encode_revocation(entry.session_id, entry.user_id, entry.ended_at)
                            .as_slice(),
                    )
                    .map_err(backend)?;
                next = next.max(entry.seq + 1);
            }
            meta.insert(REVOCATION_NEXT_SEQ, next).map_err(backend)?;
        }
    }
    Ok(())
}
