//! What a node keeps beside a format 3 snapshot: the hashes of its chunks
//! (the next snapshot does not fetch those it shares: their tenants are the
//! stored rows) and its small objects (Layer 1, the dictionary, pages and
//! route pages), kept while a retained snapshot names them.

use std::collections::HashSet;

use redb::{ReadableTable, TableDefinition, TableError, WriteTransaction};
use strata_common::bundle::tree::Applied;

use super::{Db, DbError, SNAPSHOTS};

/// version → its chunks' hashes, 32 bytes each, in order.
pub(super) const CHUNK_SETS: TableDefinition<u64, &[u8]> = TableDefinition::new("chunk_sets");
/// version → the hashes of the objects its root names, 32 bytes each.
pub(super) const ROOT_OBJECTS: TableDefinition<u64, &[u8]> = TableDefinition::new("root_objects");
/// object hash → the object's bytes (as fetched; checked again when used).
pub(super) const OBJECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("objects");

fn hashes(bytes: &[u8]) -> impl Iterator<Item = [u8; 32]> + '_ {
    bytes.chunks_exact(32).map(|c| {
        let mut h = [0u8; 32];
        h.copy_from_slice(c);
        h
    })
}

impl Db {
    /// The chunks a snapshot of `version` need not fetch: those of the
    /// newest stored snapshot, whose tenants are the stored rows the new
    /// one is written over. None when `version` is not newer (it is then
    /// written between the stored ones, every chunk read) or the newest is
    /// not format 3.
    pub fn held_chunks(&self, version: u64) -> Result<HashSet<[u8; 32]>, DbError> {
        let txn = self.db.begin_read()?;
        let newest = match txn.open_table(SNAPSHOTS) {
            Ok(t) => t.last()?.map(|(k, _)| k.value()),
            Err(TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(newest) = newest.filter(|n| *n < version) else {
            return Ok(HashSet::new());
        };
        match txn.open_table(CHUNK_SETS) {
            Ok(t) => Ok(t
                .get(newest)?
                .map(|g| hashes(g.value()).collect())
                .unwrap_or_default()),
            Err(TableError::TableDoesNotExist(_)) => Ok(HashSet::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// A small object this node keeps, by hash.
    pub fn cached_object(&self, hash: &[u8; 32]) -> Option<Vec<u8>> {
        let txn = self.db.begin_read().ok()?;
        let table = txn.open_table(OBJECTS).ok()?;
        let bytes = table.get(hash.as_slice()).ok()??.value().to_vec();
        Some(bytes)
    }
}

/// Records `applied` for version `v` in `txn`.
pub(super) fn record(txn: &WriteTransaction, v: u64, applied: &Applied) -> Result<(), DbError> {
    txn.open_table(CHUNK_SETS)?
        .insert(v, applied.chunks.concat().as_slice())?;
    txn.open_table(ROOT_OBJECTS)?
        .insert(v, applied.objects.concat().as_slice())?;
    let mut objects = txn.open_table(OBJECTS)?;
    for (obj, bytes) in &applied.fetched {
        objects.insert(obj.sha256.as_slice(), bytes.as_slice())?;
    }
    Ok(())
}

/// Forgets pruned versions' chunk sets and every object no kept version's
/// root names.
pub(super) fn prune(txn: &WriteTransaction, kept: &[u64]) -> Result<(), DbError> {
    let mut sets = txn.open_table(CHUNK_SETS)?;
    let mut roots = txn.open_table(ROOT_OBJECTS)?;
    let stored: Vec<u64> = roots
        .iter()?
        .map(|e| e.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;
    let mut named = HashSet::new();
    for v in stored {
        if kept.contains(&v) {
            if let Some(g) = roots.get(v)? {
                named.extend(hashes(g.value()));
            }
        } else {
            roots.remove(v)?;
            sets.remove(v)?;
        }
    }
    let mut objects = txn.open_table(OBJECTS)?;
    let unnamed: Vec<Vec<u8>> = objects
        .iter()?
        .filter_map(|e| match e {
            Ok((k, _)) => {
                let key = k.value();
                (!<[u8; 32]>::try_from(key).is_ok_and(|h| named.contains(&h)))
                    .then(|| Ok(key.to_vec()))
            }
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()?;
    for key in unnamed {
        objects.remove(key.as_slice())?;
    }
    Ok(())
}
