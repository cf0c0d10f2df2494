//! The objects a publish builds, by hash, until they are uploaded.
//!
//! A full build of a million tenants makes ~400 MB of compressed chunks,
//! and uploads them only after the whole snapshot is built and checked.
//! Held in memory, they were a third of the publisher's peak. So the first
//! [`IN_MEMORY_BYTES`] stay in memory (a one-tenant publish touches no
//! disk) and the rest go to an unnamed temporary file (in `TMPDIR`, gone
//! when the publish ends, whatever way), read back as they are uploaded.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::store::StoreError;

/// Bytes of objects kept in memory before the rest are spooled to disk.
pub const IN_MEMORY_BYTES: u64 = 16 << 20;

/// Where an object's bytes are.
#[derive(Debug)]
enum Slot {
    Memory(Vec<u8>),
    Spooled { offset: u64, len: usize },
}

/// The objects of a snapshot, by hash: what a publish uploads (those the
/// store does not hold yet).
#[derive(Debug)]
pub struct Objects {
    slots: BTreeMap<[u8; 32], Slot>,
    in_memory: u64,
    memory_limit: u64,
    spool: Option<File>,
    spooled: u64,
}

impl Default for Objects {
    fn default() -> Self {
        Self::new()
    }
}

impl Objects {
    /// No objects; the first [`IN_MEMORY_BYTES`] added stay in memory.
    pub fn new() -> Self {
        Self::spooling_after(IN_MEMORY_BYTES)
    }

    /// No objects; those added past `bytes` in memory are spooled.
    pub fn spooling_after(bytes: u64) -> Self {
        Self {
            slots: BTreeMap::new(),
            in_memory: 0,
            memory_limit: bytes,
            spool: None,
            spooled: 0,
        }
    }

    /// Adds the object named `hash` (once: an object already held is kept).
    /// Fails only if the spool file cannot be created or written.
    pub fn insert(&mut self, hash: [u8; 32], bytes: Vec<u8>) -> io::Result<()> {
        if self.slots.contains_key(&hash) {
            return Ok(());
        }
        let len = bytes.len();
        let slot = if self.in_memory + len as u64 <= self.memory_limit {
            self.in_memory += len as u64;
            Slot::Memory(bytes)
        } else {
            // Written at its offset, not at the file's position: a write
            // that failed half way leaves no gap between later objects and
            // their offsets.
            let offset = self.spooled;
            self.spool_file()?
                .write_all_at(&bytes, offset)
                .map_err(spool_error)?;
            self.spooled += len as u64;
            Slot::Spooled { offset, len }
        };
        self.slots.insert(hash, slot);
        Ok(())
    }

    fn spool_file(&mut self) -> io::Result<&mut File> {
        match &mut self.spool {
            Some(file) => Ok(file),
            spool => Ok(spool.insert(tempfile::tempfile().map_err(spool_error)?)),
        }
    }

    /// The bytes of the object named `hash`, if held (read back from the
    /// spool file if it went there).
    pub fn get(&self, hash: &[u8; 32]) -> io::Result<Option<Vec<u8>>> {
        match self.slots.get(hash) {
            None => Ok(None),
            Some(Slot::Memory(bytes)) => Ok(Some(bytes.clone())),
            Some(Slot::Spooled { offset, len }) => {
                let file = self
                    .spool
                    .as_ref()
                    .ok_or_else(|| io::Error::other("the spool file is missing"))?;
                let mut bytes = vec![0; *len];
                file.read_exact_at(&mut bytes, *offset).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("reading a spooled object back from its temporary file: {e}"),
                    )
                })?;
                Ok(Some(bytes))
            }
        }
    }

    /// Forgets the object named `hash` (its spooled bytes, if any, stay in
    /// the file until it goes); returns whether it was held.
    pub fn remove(&mut self, hash: &[u8; 32]) -> bool {
        match self.slots.remove(hash) {
            Some(Slot::Memory(bytes)) => {
                self.in_memory -= bytes.len() as u64;
                true
            }
            Some(Slot::Spooled { .. }) => true,
            None => false,
        }
    }

    /// Whether the object named `hash` is held.
    pub fn contains_key(&self, hash: &[u8; 32]) -> bool {
        self.slots.contains_key(hash)
    }

    /// The hashes held, in order.
    pub fn keys(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.slots.keys()
    }

    /// How many objects are held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes of every object held.
    pub fn bytes(&self) -> u64 {
        self.slots
            .values()
            .map(|slot| match slot {
                Slot::Memory(bytes) => bytes.len() as u64,
                Slot::Spooled { len, .. } => *len as u64,
            })
            .sum()
    }

    /// A copy of every object, held in memory: for a caller that changes
    /// some (a test damaging one).
    pub fn to_memory(&self) -> io::Result<Objects> {
        let mut copy = Objects::spooling_after(u64::MAX);
        for hash in self.slots.keys() {
            if let Some(bytes) = self.get(hash)? {
                copy.insert(*hash, bytes)?;
            }
        }
        Ok(copy)
    }

    /// Bytes spooled to disk so far.
    pub fn spooled_bytes(&self) -> u64 {
        self.spooled
    }
}

/// A spooled object that could not be read back, as a store error (fatal:
/// the publish stops, nothing is moved).
pub(crate) fn unreadable(hash: &[u8; 32], e: io::Error) -> StoreError {
    StoreError::Fatal {
        key: super::object_key(hash),
        source: e.into(),
    }
}

fn spool_error(e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "spooling the snapshot's objects to a temporary file in {}: {e} (set TMPDIR to a directory with room for them)",
            std::env::temp_dir().display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_past_the_memory_limit_are_spooled_and_read_back_whole() {
        let mut objects = Objects::spooling_after(10);
        let bytes = |i: u8| vec![i; 4 + i as usize];
        for i in 0..6u8 {
            objects.insert([i; 32], bytes(i)).expect("insert");
        }
        // 4 + 5 fit in 10 bytes; the other four went to the spool.
        assert_eq!(objects.spooled_bytes(), (6 + 7 + 8 + 9) as u64);
        objects.insert([0; 32], vec![9; 3]).expect("again");
        assert_eq!(objects.len(), 6);
        for i in 0..6u8 {
            assert_eq!(objects.get(&[i; 32]).expect("read"), Some(bytes(i)));
        }
        assert_eq!(objects.get(&[7; 32]).expect("read"), None);
    }

    #[test]
    fn spooled_objects_are_uploaded_with_their_bytes() {
        use crate::store::ReadStore;
        use sha2::{Digest, Sha256};

        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::FileStore::new(dir.path()).expect("store");
        let mut objects = Objects::spooling_after(0);
        let mut all = Vec::new();
        for i in 0..20u32 {
            let bytes = format!("object {i} ").repeat(i as usize + 1).into_bytes();
            let hash: [u8; 32] = Sha256::digest(&bytes).into();
            objects.insert(hash, bytes.clone()).expect("insert");
            all.push((hash, bytes));
        }
        assert!(objects.spooled_bytes() > 0);
        let present = [all[3].0].into_iter().collect();
        let done = super::super::upload(&store, &objects, &present, false).expect("upload");
        assert_eq!(done.objects, 19);
        for (hash, bytes) in &all[4..] {
            let got = store
                .get(&super::super::object_key(hash), 1 << 20)
                .expect("stored");
            assert_eq!(&got.bytes, bytes);
        }
    }
}
