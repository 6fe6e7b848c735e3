//! Fault injection for tests, compiled only with the `test-hooks` cargo
//! feature (the tests turn it on; `cargo build` never does), so a release
//! binary has no test switch on its write path.
//!
//! One [`TestHooks`] belongs to one running [`crate::app::App`], so tests
//! that run in parallel in one process never see each other's faults. The
//! switches: database writes that fail the way a failing disk does (EROFS),
//! and one-shot panics at the points whose recovery the tests prove (inside
//! the throttle's lock, in a hashing worker, in the writer thread).

use std::sync::atomic::{AtomicBool, Ordering};

/// Where an injected panic fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicPoint {
    /// While a login attempt holds the throttle's table lock.
    ThrottleLock,
    /// In a hashing worker, while it runs a job.
    HashWorker,
    /// In the writer thread, while a batch's transaction is open.
    Writer,
    /// Inside redb's commit, when it writes to the file.
    FileWrite,
}

#[derive(Debug, Default)]
pub struct TestHooks {
    fail_writes: AtomicBool,
    throttle_lock: AtomicBool,
    hash_worker: AtomicBool,
    writer: AtomicBool,
    file_write: AtomicBool,
}

impl TestHooks {
    fn flag(&self, point: PanicPoint) -> &AtomicBool {
        match point {
            PanicPoint::ThrottleLock => &self.throttle_lock,
            PanicPoint::HashWorker => &self.hash_worker,
            PanicPoint::Writer => &self.writer,
            PanicPoint::FileWrite => &self.file_write,
        }
    }

    /// The next time code passes `point`, it panics (once).
    pub fn arm_panic(&self, point: PanicPoint) {
        self.flag(point).store(true, Ordering::Release);
    }

    /// Panics if `point` was armed, and disarms it.
    pub fn panic_if_armed(&self, point: PanicPoint) {
        if self.flag(point).swap(false, Ordering::AcqRel) {
            panic!("injected panic at {point:?}");
        }
    }

    /// Makes every write to the database file fail (EROFS) until turned off.
    pub fn set_fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::Release);
    }

    /// The error a write gets while writes are set to fail.
    pub fn check_write(&self) -> std::io::Result<()> {
        if self.fail_writes.load(Ordering::Acquire) {
            return Err(std::io::Error::from_raw_os_error(30)); // EROFS
        }
        Ok(())
    }
}
