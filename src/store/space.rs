//! The free-space guard: writes stop before the disk is full.
//!
//! redb treats a failed write as fatal for the open database: after one
//! ENOSPC every later read and write fails until the file is reopened. So the
//! writer asks this guard before each batch, and while the data file system
//! has less than the reserve free, it refuses the batch (503 `unavailable`)
//! without touching the file. Reads keep working from the intact file, and
//! writes resume by themselves once space is back.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::StoreError;

pub struct SpaceGuard {
    folder: PathBuf,
    reserve_bytes: AtomicU64,
}

impl SpaceGuard {
    /// Guards the file system holding `data_file`, keeping `reserve_bytes` free.
    pub fn new(data_file: &Path, reserve_bytes: u64) -> Self {
        let folder = match data_file.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        SpaceGuard {
            folder,
            reserve_bytes: AtomicU64::new(reserve_bytes),
        }
    }

    /// Changes the reserve, to simulate a full disk (test builds only).
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn set_reserve(&self, bytes: u64) {
        self.reserve_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Bytes available to this process on the data file system.
    pub fn available(&self) -> Result<u64, StoreError> {
        let stats = rustix::fs::statvfs(&self.folder).map_err(|e| {
            StoreError::Backend(format!(
                "cannot read free space of {}: {e}",
                self.folder.display()
            ))
        })?;
        Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
    }

    /// Fails when less than the reserve is free.
    pub fn check(&self) -> Result<(), StoreError> {
        let reserve = self.reserve_bytes.load(Ordering::Relaxed);
        if reserve == 0 {
            return Ok(());
        }
        let available = self.available()?;
        if available < reserve {
            return Err(StoreError::DiskFull { available, reserve });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_below_the_reserve_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let guard = SpaceGuard::new(&dir.path().join("latchkey.redb"), 1);
        assert!(guard.available().unwrap() > 0);
        assert!(guard.check().is_ok());
        guard.set_reserve(u64::MAX);
        assert!(matches!(guard.check(), Err(StoreError::DiskFull { .. })));
        guard.set_reserve(0);
        assert!(guard.check().is_ok());
    }
}
