//! `latchkey backup`: a consistent copy of the database as a database of
//! its own. Everything is read from one read snapshot (the state of one
//! commit), so the copy is consistent while the writer goes on; it is
//! written to `<target>.partial` (mode 0600) in transactions of bounded size
//! and renamed into place once complete, so a half-written copy never has
//! the target's name.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use redb::{
    Database, Key, ReadTransaction, ReadableTable, TableDefinition, Value, WriteTransaction,
};

use super::{
    backend, create_tables, META, SESSIONS, SESSION_EXPIRY, USERS, USER_EMAILS, USER_SESSIONS,
};
use crate::store::{StoreError, StoreResult};

/// Entries copied per write transaction of the copy.
const ENTRIES_PER_TRANSACTION: usize = 50_000;

pub(super) fn copy_snapshot(snapshot: &ReadTransaction, target: &Path) -> StoreResult<()> {
    if target.exists() {
        return Err(StoreError::Backend(format!(
            "{} exists already; give a new file",
            target.display()
        )));
    }
    let partial = target.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", partial.display())))?;
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
        Ok::<_, StoreError>(())
    })();
    match copy {
        Ok(()) => std::fs::rename(&partial, target)
            .map_err(|e| StoreError::Backend(format!("cannot rename the copy: {e}"))),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

fn copy_table<K: Key + 'static, V: Value + 'static>(
    snapshot: &ReadTransaction,
    target: &Database,
    definition: TableDefinition<K, V>,
) -> StoreResult<()>
where
    for<'a> K::SelfType<'a>: std::borrow::Borrow<K::SelfType<'a>>,
{
    let source = snapshot.open_table(definition).map_err(backend)?;
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
