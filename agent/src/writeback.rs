//! The redb file's storage: redb's own file backend, plus early writeback of
//! what an apply writes, every [`KICK_BYTES`].
//!
//! A cold apply writes ~1.2 GB of pages into the page cache. Left alone, the
//! kernel writes none of it back before the commit's `fdatasync` (its
//! background threshold is a tenth of memory), so the commit then waits
//! seconds for the disk while the CPU work is long done. Started early, the
//! writeback runs beside the apply and the commit finds little left to write.
//! A helper thread at the sync thread's idle priority does it with
//! `fdatasync` on its own handle, so the writer does not wait for it, and its
//! own syncs (redb's at each growth of the file, and the commit's) find less
//! to wait for. `sync_file_range` would start the I/O without a thread, but
//! needs `unsafe`, which the workspace forbids; it measured no faster here
//! (BENCHMARKS.md). This adds no durability promise: redb's own `fdatasync`
//! at commit is still what makes a snapshot durable.

use std::fs::File;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// What redb 4's backend I/O methods return (its experimental API 5 changes it).
type BackendIoError = std::io::Error;

/// Bytes written between two writeback kicks: large enough that a small
/// publish never kicks, small enough that a cold apply's writeback keeps pace.
pub const KICK_BYTES: u64 = 32 << 20;

/// [`FileBackend`] plus early writeback of what it writes.
#[derive(Debug)]
pub struct EagerWriteback {
    inner: FileBackend,
    since_kick: AtomicU64,
    /// Wakes the writeback thread; it exits when this is dropped.
    kick: SyncSender<()>,
}

impl EagerWriteback {
    /// Wraps `file` (opened read-write) as redb's backend and starts its
    /// writeback thread.
    pub fn new(file: File) -> Result<Self, redb::DatabaseError> {
        let handle = file.try_clone()?;
        let (kick, kicked) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("strata-writeback".into())
            .spawn(move || {
                crate::sync::lowest_priority("the writeback thread");
                for () in kicked {
                    if let Err(e) = handle.sync_data() {
                        // The commit's own fdatasync will report it, if it persists.
                        tracing::debug!("early writeback of the snapshot file: {e}");
                    }
                }
            })?;
        Ok(Self {
            inner: FileBackend::new(file)?,
            since_kick: AtomicU64::new(0),
            kick,
        })
    }
}

impl StorageBackend for EagerWriteback {
    fn len(&self) -> Result<u64, BackendIoError> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendIoError> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), BackendIoError> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), BackendIoError> {
        self.since_kick.store(0, Ordering::Relaxed);
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendIoError> {
        self.inner.write(offset, data)?;
        let len = data.len() as u64;
        if self.since_kick.fetch_add(len, Ordering::Relaxed) + len >= KICK_BYTES {
            self.since_kick.store(0, Ordering::Relaxed);
            // Full: a writeback is already running, and will take these pages too
            // or the next kick will.
            if let Err(TrySendError::Disconnected(())) = self.kick.try_send(()) {
                tracing::debug!("the writeback thread has stopped");
            }
        }
        Ok(())
    }

    fn close(&self) -> Result<(), BackendIoError> {
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
