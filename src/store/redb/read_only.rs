//! A read-only view of the database file, for when the file cannot be written.
//!
//! After a write error redb refuses every operation on its handle, and it
//! will not open the file read-only either: a writable handle marks the
//! header "recovery required" and only a clean close (a write) clears it.
//! [`ReadOnlyFile`] lets redb open the file anyway, with its own recovery:
//! every read goes to the file (opened `O_RDONLY`, so this works on a
//! read-only mount too), while the few pages redb writes while it opens
//! (the header, a rebuilt allocator state) land in memory. After the open the
//! view is sealed, so any later write fails instead of being acknowledged
//! from memory. Nothing here ever writes the file.
//!
//! Locks are taken shared on the real file even when redb asks for
//! exclusive ones: the view excludes writers (another process, or this one
//! reopening the file for writing) and admits other readers.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use redb::backends::FileBackend;
use redb::{BackendError, DatabaseError, StorageBackend};

/// Granularity of the in-memory pages; redb's own page size.
const BLOCK: u64 = 4096;

/// Shared between the backend (owned by redb) and whoever opened it, who
/// seals the view once redb's open has finished.
#[derive(Debug, Default)]
pub(super) struct Seal(AtomicBool);

impl Seal {
    pub(super) fn seal(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn check(&self) -> io::Result<()> {
        if self.0.load(Ordering::Acquire) {
            return Err(io::Error::from_raw_os_error(30)); // EROFS
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Written {
    /// The length redb sees.
    len: u64,
    /// Bytes below this come from the file unless a block overrides them;
    /// bytes above it read as zeros (redb shrank and regrew the file).
    file_len: u64,
    /// Block index → the block's bytes as redb last wrote them.
    blocks: BTreeMap<u64, Box<[u8]>>,
}

#[derive(Debug)]
pub(super) struct ReadOnlyFile {
    file: FileBackend,
    written: RwLock<Written>,
    seal: Arc<Seal>,
}

impl ReadOnlyFile {
    pub(super) fn new(file: File, seal: Arc<Seal>) -> Result<Self, DatabaseError> {
        let len = file.metadata()?.len();
        Ok(ReadOnlyFile {
            file: FileBackend::new(file)?,
            written: RwLock::new(Written {
                len,
                file_len: len,
                blocks: BTreeMap::new(),
            }),
            seal,
        })
    }

    /// Reads `out.len()` bytes at `offset` of the file as redb left it:
    /// the file below `file_len`, zeros above.
    fn read_base(&self, written: &Written, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let end = offset + out.len() as u64;
        let from_file = end.min(written.file_len).saturating_sub(offset) as usize;
        if from_file > 0 {
            self.file.read(offset, &mut out[..from_file])?;
        }
        out[from_file..].fill(0);
        Ok(())
    }
}

/// The part of block `index` that overlaps `offset..offset + len`, as
/// (start within the block, start within the range, length).
fn overlap(index: u64, offset: u64, len: usize) -> (usize, usize, usize) {
    let block_start = index * BLOCK;
    let start = offset.max(block_start);
    let end = (offset + len as u64).min(block_start + BLOCK);
    (
        (start - block_start) as usize,
        (start - offset) as usize,
        (end - start) as usize,
    )
}

impl StorageBackend for ReadOnlyFile {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self
            .written
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let written = self.written.read().unwrap_or_else(PoisonError::into_inner);
        if offset + out.len() as u64 > written.len {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        self.read_base(&written, offset, out)?;
        if out.is_empty() {
            return Ok(());
        }
        let (first, last) = (offset / BLOCK, (offset + out.len() as u64 - 1) / BLOCK);
        for (&index, block) in written.blocks.range(first..=last) {
            let (in_block, in_out, len) = overlap(index, offset, out.len());
            out[in_out..in_out + len].copy_from_slice(&block[in_block..in_block + len]);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.seal.check()?;
        let mut written = self.written.write().unwrap_or_else(PoisonError::into_inner);
        written.file_len = written.file_len.min(len);
        // Bytes past the new end must read as zeros if the file grows again.
        let tail = len % BLOCK;
        written.blocks.retain(|&index, _| index * BLOCK < len);
        if tail > 0 {
            if let Some(block) = written.blocks.get_mut(&(len / BLOCK)) {
                block[tail as usize..].fill(0);
            }
        }
        written.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.seal.check()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.seal.check()?;
        if data.is_empty() {
            return Ok(());
        }
        let mut written = self.written.write().unwrap_or_else(PoisonError::into_inner);
        let (first, last) = (offset / BLOCK, (offset + data.len() as u64 - 1) / BLOCK);
        for index in first..=last {
            if !written.blocks.contains_key(&index) {
                let mut block = vec![0u8; BLOCK as usize].into_boxed_slice();
                self.read_base(&written, index * BLOCK, &mut block)?;
                written.blocks.insert(index, block);
            }
            let (in_block, in_data, len) = overlap(index, offset, data.len());
            let block = written.blocks.get_mut(&index).expect("inserted above");
            block[in_block..in_block + len].copy_from_slice(&data[in_data..in_data + len]);
        }
        written.len = written.len.max(offset + data.len() as u64);
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, ReadOnlyFile, Arc<Seal>) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(bytes).unwrap();
        let seal = Arc::new(Seal::default());
        let view = ReadOnlyFile::new(File::open(tmp.path()).unwrap(), Arc::clone(&seal)).unwrap();
        (tmp, view, seal)
    }

    fn read(view: &ReadOnlyFile, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0xEE; len];
        view.read(offset, &mut out).unwrap();
        out
    }

    #[test]
    fn writes_are_read_back_but_never_reach_the_file() {
        let original: Vec<u8> = (0..3 * BLOCK).map(|i| (i % 251) as u8).collect();
        let (tmp, view, _seal) = file_with(&original);
        // Across a block boundary, then past the end of the file.
        view.write(BLOCK - 3, &[1, 2, 3, 4, 5, 6]).unwrap();
        view.write(3 * BLOCK + 10, &[9; 5]).unwrap();

        let mut expected = original.clone();
        expected[(BLOCK - 3) as usize..(BLOCK + 3) as usize].copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        expected.resize((3 * BLOCK + 15) as usize, 0);
        expected[(3 * BLOCK + 10) as usize..].copy_from_slice(&[9; 5]);
        assert_eq!(view.len().unwrap(), 3 * BLOCK + 15);
        assert_eq!(read(&view, 0, expected.len()), expected);
        assert_eq!(
            read(&view, BLOCK - 5, 4),
            expected[(BLOCK - 5) as usize..][..4]
        );
        assert!(
            view.read(3 * BLOCK + 14, &mut [0; 2]).is_err(),
            "past the end"
        );
        assert_eq!(std::fs::read(tmp.path()).unwrap(), original);
    }

    #[test]
    fn a_shrunk_and_regrown_file_reads_zeros_past_the_cut() {
        let (_tmp, view, _seal) = file_with(&[7; (2 * BLOCK) as usize]);
        view.write(BLOCK, &[8; 100]).unwrap();
        view.set_len(BLOCK + 50).unwrap();
        view.set_len(2 * BLOCK).unwrap();
        let after = read(&view, 0, (2 * BLOCK) as usize);
        assert!(after[..BLOCK as usize].iter().all(|&b| b == 7));
        assert!(after[BLOCK as usize..][..50].iter().all(|&b| b == 8));
        assert!(after[(BLOCK + 50) as usize..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_sealed_view_refuses_writes() {
        let (_tmp, view, seal) = file_with(&[1; 100]);
        view.write(0, &[2]).unwrap();
        seal.seal();
        assert_eq!(view.write(0, &[3]).unwrap_err().raw_os_error(), Some(30));
        assert!(view.sync_data().is_err());
        assert!(view.set_len(0).is_err());
        assert_eq!(read(&view, 0, 2), [2, 1]);
    }

    #[test]
    fn exclusive_locks_are_taken_shared() {
        let (tmp, view, _seal) = file_with(&[0; 64]);
        assert!(view
            .try_lock_range(Bound::Unbounded, Bound::Unbounded)
            .unwrap());
        let other = FileBackend::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(tmp.path())
                .unwrap(),
        )
        .unwrap();
        assert!(
            !other
                .try_lock_range(Bound::Unbounded, Bound::Unbounded)
                .unwrap(),
            "a writer is kept out"
        );
        assert!(
            other
                .try_lock_shared_range(Bound::Unbounded, Bound::Unbounded)
                .unwrap(),
            "a reader is let in"
        );
    }
}
