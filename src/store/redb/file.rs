//! Opening the database file: for writing through redb's own file backend,
//! or, for when it cannot be written, as a read-only view through
//! [`super::read_only::ReadOnlyFile`]. Test builds (the `test-hooks`
//! feature) write through [`super::fault_injecting_file`] instead, which
//! can make writes fail the way a failing disk does.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use redb::backends::FileBackend;
use redb::{Database, DatabaseError, StorageBackend};

use super::read_only::{ReadOnlyFile, Seal};

/// How to (re)open the database file.
pub(super) struct Opener {
    pub(super) path: PathBuf,
    pub(super) cache_bytes: usize,
    #[cfg(feature = "test-hooks")]
    pub(super) hooks: Arc<crate::test_hooks::TestHooks>,
}

impl Opener {
    pub(super) fn new(path: PathBuf, cache_bytes: usize) -> Self {
        Opener {
            path,
            cache_bytes,
            #[cfg(feature = "test-hooks")]
            hooks: Arc::default(),
        }
    }

    #[cfg(not(feature = "test-hooks"))]
    fn backend(&self, file: File) -> Result<impl StorageBackend, DatabaseError> {
        FileBackend::new(file)
    }

    #[cfg(feature = "test-hooks")]
    fn backend(&self, file: File) -> Result<impl StorageBackend, DatabaseError> {
        Ok(super::fault_injecting_file::FaultInjectingFile::new(
            FileBackend::new(file)?,
            Arc::clone(&self.hooks),
        ))
    }

    /// Opens (or creates, mode 0600) the database for reading and writing.
    pub(super) fn writable(&self) -> Result<Database, DatabaseError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.path)?;
        Database::builder()
            .set_cache_size(self.cache_bytes)
            .create_with_backend(self.backend(file)?)
    }

    /// Opens the file for reading only, as the last commit left it, without
    /// writing to it: see [`ReadOnlyFile`]. For when the file cannot be written.
    pub(super) fn read_only_view(&self) -> Result<Database, DatabaseError> {
        let file = File::open(&self.path)?;
        if file.metadata()?.len() == 0 {
            // redb would create a fresh, empty database in memory
            return Err(DatabaseError::Storage(redb::StorageError::Corrupted(
                "the database file is empty".into(),
            )));
        }
        let seal = Arc::new(Seal::default());
        let db = Database::builder()
            .set_cache_size(self.cache_bytes)
            .create_with_backend(ReadOnlyFile::new(file, Arc::clone(&seal))?)?;
        seal.seal();
        Ok(db)
    }
}

#[cfg(all(test, feature = "test-hooks"))]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, TableDefinition};

    const TABLE: TableDefinition<u64, u64> = TableDefinition::new("t");

    /// A handle that saw a write error leaves the file marked "recovery
    /// required": redb's own read-only open refuses it, the view opens it,
    /// reads the last commit, and writes nothing.
    #[test]
    fn the_read_only_view_opens_a_file_that_failed_writes_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let opener = Opener::new(dir.path().join("db.redb"), 1 << 20);
        let db = opener.writable().unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TABLE).unwrap().insert(1, 10).unwrap();
        txn.commit().unwrap();
        opener.hooks.set_fail_writes(true);
        let txn = db.begin_write().unwrap();
        txn.open_table(TABLE).unwrap().insert(1, 11).unwrap();
        assert!(txn.commit().is_err());
        drop(db);
        let file_before = std::fs::read(&opener.path).unwrap();

        assert!(Database::builder().open_read_only(&opener.path).is_err());
        let view = opener.read_only_view().unwrap();
        let read = view.begin_read().unwrap();
        let value = read.open_table(TABLE).unwrap().get(1).unwrap().unwrap();
        assert_eq!(value.value(), 10, "the last commit, not the failed one");
        drop((value, read));
        let txn = view.begin_write().unwrap();
        txn.open_table(TABLE).unwrap().insert(2, 20).unwrap();
        assert!(txn.commit().is_err(), "the view is sealed");
        assert!(
            matches!(opener.writable(), Err(DatabaseError::DatabaseAlreadyOpen)),
            "the view keeps writers out of the file"
        );
        drop(view);
        assert_eq!(std::fs::read(&opener.path).unwrap(), file_before);

        opener.hooks.set_fail_writes(false);
        let db = opener.writable().unwrap();
        let read = db.begin_read().unwrap();
        assert_eq!(
            read.open_table(TABLE)
                .unwrap()
                .get(1)
                .unwrap()
                .unwrap()
                .value(),
            10
        );
    }
}
