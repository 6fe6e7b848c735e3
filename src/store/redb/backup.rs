//! `latchkey backup`: a consistent copy of the database as a database of
//! its own. Everything is read from one read snapshot (the state of one
//! commit), so the copy is consistent while the writer goes on; it is
//! written to a file of its own beside the target (mode 0600) in
//! transactions of bounded size and linked to the target's name once
//! complete, so a half-written copy never has that name and no existing file
//! is replaced.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use redb::{
    Database, Key, ReadTransaction, ReadableTable, TableDefinition, Value, WriteTransaction,
};

use super::{
    backend, create_tables, META, REVOCATIONS, SESSIONS, SESSION_EXPIRY, SIGNING_KEYS, USERS,
    USER_EMAILS, USER_SESSIONS,
};
use crate::store::{StoreError, StoreResult};

/// Entries copied per write transaction of the copy.
const ENTRIES_PER_TRANSACTION: usize = 50_000;

pub(super) fn copy_snapshot(snapshot: &ReadTransaction, target: &Path) -> StoreResult<()> {
    let fail = |what: &str, e: std::io::Error| StoreError::Backend(format!("{what}: {e}"));
    if target.exists() {
        return Err(StoreError::Backend(format!(
            "{} exists already; give a new file",
            target.display()
        )));
    }
    // A name of our own beside the target: nobody else's file is touched,
    // and two backups to one target cannot mix their copies.
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| StoreError::Backend(e.to_string()))?;
    let mut partial = target.as_os_str().to_owned();
    partial.push(format!(".partial-{:016x}", u64::from_le_bytes(nonce)));
    let partial = std::path::PathBuf::from(partial);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| fail(&format!("cannot create {}", partial.display()), e))?;
    let copy = (|| {
        let db = Database::builder()
            .create_with_backend(redb::backends::FileBackend::new(file).map_err(backend)?)
            .map_err(backend)?;
        create_tables(&db)?;
        copy_table(snapshot, &db, USERS)?;
        copy_table(snapshot, &db, USER_EMAILS)?;
        copy_table(snapshot, &db, SESSIONS)?;
        copy_table(snapshot, &db, USER_SESSIONS)?;
        copy_table(snapshot, &db, SESSION_EXPIRY)?;
        copy_table(snapshot, &db, META)?;
        copy_table(snapshot, &db, SIGNING_KEYS)?;
        copy_table(snapshot, &db, REVOCATIONS)?;
        // A copy is a database of its own: cursors of the revocation feed
        // handed out by the original must not pass for its own.
        let txn = db.begin_write().map_err(backend)?;
        super::records::new_revocation_epoch(&txn)?;
        txn.commit().map_err(backend)?;
        Ok::<_, StoreError>(())
    })();
    // Published with a hard link, which fails rather than replace a file
    // that appeared at the target meanwhile.
    let published = copy.and_then(|()| {
        std::fs::hard_link(&partial, target)
            .map_err(|e| fail(&format!("cannot create {}", target.display()), e))
    });
    let _ = std::fs::remove_file(&partial);
    published
}

fn copy_table<K: Key + 'static, V: Value + 'static>(
    snapshot: &ReadTransaction,
    target: &Database,
    definition: TableDefinition<K, V>,
) -> StoreResult<()>
where
    for<'a> K::SelfType<'a>: std::borrow::Borrow<K::SelfType<'a>>,
{
    let source = match snapshot.open_table(definition) {
        Ok(table) => table,
        // A file from before this table existed, served read-only.
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(backend(e)),
    };
    let mut txn: Option<WriteTransaction> = None;
    let mut in_txn = 0;
    for entry in source.iter().map_err(backend)? {
        let (key, value) = entry.map_err(backend)?;
        let write = match &mut txn {
            Some(write) => write,
            None => txn.insert(target.begin_write().map_err(backend)?),
        };
        write
            .open_table(definition)
            .map_err(backend)?
            .insert(key.value(), value.value())
            .map_err(backend)?;
        in_txn += 1;
        if in_txn == ENTRIES_PER_TRANSACTION {
            txn.take()
                .map(|t| t.commit())
                .transpose()
                .map_err(backend)?;
            in_txn = 0;
        }
    }
    if let Some(write) = txn {
        write.commit().map_err(backend)?;
    }
    Ok(())
}
