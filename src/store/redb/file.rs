//! Opening the database file, and the file backend redb writes through.
//!
//! [`GuardedFile`] wraps redb's own file backend and passes everything
//! through, except that [`StorageFaults`] can make writes fail the way a
//! full or read-only disk does. Production never sets the switch; the tests
//! use it to prove that the store survives real write errors.
//! [`Opener::read_only_view`] opens the file through
//! [`super::read_only::ReadOnlyFile`] instead, for when it cannot be written.

use std::fs::{File, OpenOptions};
use std::ops::Bound;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redb::backends::FileBackend;
use redb::{BackendError, Database, DatabaseError, StorageBackend};

use super::read_only::{ReadOnlyFile, Seal};

/// A switch that makes every write to the database file fail (EROFS).
#[derive(Debug, Default)]
pub struct StorageFaults {
    fail_writes: AtomicBool,
}

impl StorageFaults {
    pub fn set_fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::Release);
    }

    fn check(&self) -> std::io::Result<()> {
        if self.fail_writes.load(Ordering::Acquire) {
            return Err(std::io::Error::from_raw_os_error(30)); // EROFS
        }
        Ok(())
    }
}

#[derive(Debug)]
pub(super) struct GuardedFile {
    inner: FileBackend,
    faults: Arc<StorageFaults>,
}

impl StorageBackend for GuardedFile {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.faults.check()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.faults.check()?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.faults.check()?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

/// How to (re)open the database file.
pub(super) struct Opener {
    pub(super) path: std::path::PathBuf,
    pub(super) cache_bytes: usize,
    pub(super) faults: Arc<StorageFaults>,
}

impl Opener {
    fn backend(&self, file: File) -> Result<GuardedFile, DatabaseError> {
        Ok(GuardedFile {
            inner: FileBackend::new(file)?,
            faults: Arc::clone(&self.faults),
        })
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

#[cfg(test)]
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
        let opener = Opener {
            path: dir.path().join("db.redb"),
            cache_bytes: 1 << 20,
            faults: Arc::new(StorageFaults::default()),
        };
        let db = opener.writable().unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TABLE).unwrap().insert(1, 10).unwrap();
        txn.commit().unwrap();
        opener.faults.set_fail_writes(true);
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

        opener.faults.set_fail_writes(false);
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
