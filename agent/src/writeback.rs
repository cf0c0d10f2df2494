//! The redb file's storage: redb's own file backend, plus early writeback of
//! what an apply writes, every [`KICK_BYTES`], while the agent serves nothing.
//!
//! A cold apply writes ~1.2 GB of pages into the page cache. Left alone, the
//! kernel writes none of it back before a `fdatasync` (its background
//! threshold is a tenth of memory), and redb `fdatasync`s at each doubling of
//! the file, so each of those syncs waits for everything written so far.
//! Started early, by a helper thread at the sync thread's idle priority that
//! `fdatasync`s its own handle, the writeback runs beside the apply: a new
//! node's first snapshot is served ~2 s sooner (BENCHMARKS.md).
//!
//! Only while nothing is served: under lookups the same early writeback made
//! a large apply slower and the lookup p99 during it 3.5-4.7x idle (its
//! journal commits and block allocations run all through the apply rather
//! than at the file's few growths), so an agent that serves a snapshot
//! leaves the switch off. `sync_file_range` would need no thread but needs
//! `unsafe`, which the workspace forbids. This adds no durability promise:
//! redb's own `fdatasync` at commit is what makes a snapshot durable.
//!
//! It also drops a write of the very bytes the file already holds at that
//! offset (`EagerWriteback::unchanged`): redb writes every page of a
//! transaction larger than its write buffer twice (see there), and for a
//! cold apply the second 1.2 GB was 3 s of the time to durable.

use std::collections::HashSet;
use std::fs::File;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// What redb 4's backend I/O methods return (its experimental API 5 changes it).
type BackendIoError = std::io::Error;

/// Bytes written between two writeback kicks: large enough that a small
/// publish never kicks, small enough that a cold apply's writeback keeps pace.
pub const KICK_BYTES: u64 = 32 << 20;

/// [`FileBackend`] plus early writeback of what it writes while `on`, and
/// without rewrites of unchanged pages.
#[derive(Debug)]
pub struct EagerWriteback {
    inner: FileBackend,
    /// Whether to kick the writeback thread: set while nothing is served.
    on: Arc<AtomicBool>,
    since_kick: AtomicU64,
    /// Wakes the writeback thread; it exits when this is dropped.
    kick: SyncSender<()>,
    /// The offsets written through this backend: see [`Self::unchanged`].
    written: Arc<Written>,
}

/// Every offset written through the backend since the database forgot
/// them (one per page: ~3.5 MB for a new node's 100k tenants, ~36 MB at
/// 1M), and a buffer to read a page back into. A durable commit rewrites
/// only its own transactions' pages (a non-durable one leaves them in
/// redb's write buffer for the next durable commit), so the database
/// forgets them after each durable commit of a snapshot and after
/// `persist` ([`Written::forget`]): the set stays the size of one
/// snapshot's transaction, not of every page the agent ever wrote.
#[derive(Debug, Default)]
pub struct Written(Mutex<(HashSet<u64>, Vec<u8>)>);

impl Written {
    /// Forgets the offsets written so far: what follows a commit. A page
    /// written at a forgotten offset again is simply written.
    pub fn forget(&self) {
        let mut written = self.0.lock().unwrap_or_else(|e| e.into_inner());
        written.0 = HashSet::new();
    }
}

impl EagerWriteback {
    /// Wraps `file` (opened read-write) as redb's backend and starts its
    /// writeback thread, which writes back early while `on` is set.
    pub fn new(file: File, on: Arc<AtomicBool>) -> Result<Self, redb::DatabaseError> {
        let handle = file.try_clone()?;
        let (kick, kicked) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("strata-writeback".into())
            .spawn(move || {
                crate::priority::lowest_priority("the writeback thread");
                for () in kicked {
                    if let Err(e) = handle.sync_data() {
                        // The commit's own fdatasync will report it, if it persists.
                        tracing::debug!("early writeback of the snapshot file: {e}");
                    }
                }
            })?;
        Ok(Self {
            inner: FileBackend::new(file)?,
            on,
            since_kick: AtomicU64::new(0),
            kick,
            written: Arc::default(),
        })
    }

    /// The offsets it remembers, for the database to forget after a commit.
    pub fn written(&self) -> Arc<Written> {
        self.written.clone()
    }

    /// Whether the file already holds `data` at `offset`, written there by
    /// this backend. redb computes a leaf page's checksum at commit through a
    /// mutable handle, so a page its write buffer has already evicted is
    /// read back and written again unchanged: a cold apply would write its
    /// 1.2 GB twice. Skipping a write of the very bytes the file holds
    /// changes nothing, in the file or in what the next `fdatasync` makes
    /// durable.
    fn unchanged(&self, offset: u64, data: &[u8]) -> bool {
        let mut written = self.written.0.lock().unwrap_or_else(|e| e.into_inner());
        let (offsets, buf) = &mut *written;
        if offsets.insert(offset) {
            return false;
        }
        buf.resize(data.len(), 0);
        // Unreadable (the file was cut shorter since): write it.
        self.inner.read(offset, buf).is_ok() && buf.as_slice() == data
    }
}

/// Opens (or creates) the redb file for reading and writing, keeping what it
/// holds: what redb's own `Builder::create` does before it makes a backend.
pub fn open_data_file(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
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
        if self.unchanged(offset, data) {
            return Ok(());
        }
        self.inner.write(offset, data)?;
        if !self.on.load(Ordering::Relaxed) {
            return Ok(());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_past_several_kicks_reads_back_and_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let open = || open_data_file(&path).expect("open");
        let backend =
            EagerWriteback::new(open(), Arc::new(AtomicBool::new(true))).expect("backend");
        let chunk = 1 << 20;
        let chunks = 3 * KICK_BYTES / chunk;
        backend.set_len(chunks * chunk).expect("set_len");
        for i in 0..chunks {
            let fill = vec![i as u8; chunk as usize];
            backend.write(i * chunk, &fill).expect("write");
        }
        backend.sync_data().expect("sync");
        drop(backend);
        let again = EagerWriteback::new(open(), Arc::default()).expect("backend");
        assert_eq!(again.len().expect("len"), chunks * chunk);
        let mut out = vec![0; 1 << 20];
        for i in [0, chunks / 2, chunks - 1] {
            again.read(i * chunk, &mut out).expect("read");
            assert!(out.iter().all(|b| *b == i as u8), "chunk {i}");
        }
    }
}
