//! Bulk loading for `latchkey bench --populate`.

use redb::ReadableTable;

use super::records::{encode_session, encode_user};
use super::{
    backend, RedbStore, META, NEXT_USER_ID, SESSIONS, SESSION_EXPIRY, USERS, USER_EMAILS,
    USER_SESSIONS,
};
use crate::session::{Session, SessionId, UserId};
use crate::store::{NewUser, StoreResult};

/// Inserts users whose emails are known to be free, with ids from the
/// counter; returns their ids. Shared by `--populate` and `user import`
/// (which checks the emails first, in the same transaction).
pub(super) fn insert_users(
    txn: &redb::WriteTransaction,
    users: Vec<NewUser>,
) -> StoreResult<Vec<UserId>> {
    let mut meta = txn.open_table(META).map_err(backend)?;
    let mut emails = txn.open_table(USER_EMAILS).map_err(backend)?;
    let mut table = txn.open_table(USERS).map_err(backend)?;
    let mut next = meta
        .get(NEXT_USER_ID)
        .map_err(backend)?
        .map_or(1, |v| v.value());
    let mut ids = Vec::with_capacity(users.len());
    for new in users {
        let user = new.into_user(next);
        emails.insert(user.email.as_str(), next).map_err(backend)?;
        table
            .insert(next, encode_user(&user).as_slice())
            .map_err(backend)?;
        ids.push(next);
        next += 1;
    }
    meta.insert(NEXT_USER_ID, next).map_err(backend)?;
    Ok(ids)
}

/// Bulk loading for `latchkey bench --populate` (not part of [`crate::store::Store`]: an
/// admin path that only this backend needs). Each call is one durable
/// transaction that opens its tables once.
impl RedbStore {
    /// Creates users whose emails are known to be free; returns their ids.
    pub async fn bulk_create_users(&self, users: Vec<NewUser>) -> StoreResult<Vec<UserId>> {
        self.write(move |txn| insert_users(txn, users)).await
    }

    /// Inserts sessions (with their index entries).
    pub async fn bulk_create_sessions(
        &self,
        sessions: Vec<(SessionId, Session)>,
    ) -> StoreResult<()> {
        self.write(move |txn| {
            let mut table = txn.open_table(SESSIONS).map_err(backend)?;
            let mut by_user = txn.open_table(USER_SESSIONS).map_err(backend)?;
            let mut by_expiry = txn.open_table(SESSION_EXPIRY).map_err(backend)?;
            for (id, session) in sessions {
                table
                    .insert(id.0, encode_session(&session).as_slice())
                    .map_err(backend)?;
                by_user
                    .insert((session.user_id, id.0), ())
                    .map_err(backend)?;
                by_expiry
                    .insert((session.expires_at, id.0), ())
                    .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }
}
