//! A file backend for test builds only (the `test-hooks` feature): redb's
//! own file backend, except that every write, resize and sync fails with
//! EROFS while the test hooks say so, the way a failing disk or a read-only
//! remount makes them fail, and a write can be made to panic inside redb's
//! commit. The tests use it to prove that the store survives both.

use std::ops::Bound;
use std::sync::Arc;

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

use crate::test_hooks::TestHooks;

#[derive(Debug)]
pub(super) struct FaultInjectingFile {
    inner: FileBackend,
    hooks: Arc<TestHooks>,
}

impl FaultInjectingFile {
    pub(super) fn new(inner: FileBackend, hooks: Arc<TestHooks>) -> Self {
        FaultInjectingFile { inner, hooks }
    }
}

impl StorageBackend for FaultInjectingFile {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.hooks.check_write()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.hooks.check_write()?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.hooks
            .panic_if_armed(crate::test_hooks::PanicPoint::FileWrite);
        self.hooks.check_write()?;
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
