//! Opening the database file, and the file backend redb writes through.
//!
//! [`GuardedFile`] wraps redb's own file backend and passes everything
//! through, except that [`StorageFaults`] can make writes fail the way a
//! full or read-only disk does. Production never sets the switch; the tests
//! use it to prove that the store survives real write errors.

use std::fs::{File, OpenOptions};
use std::ops::Bound;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redb::backends::FileBackend;
use redb::{BackendError, Database, DatabaseError, StorageBackend};

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
}
