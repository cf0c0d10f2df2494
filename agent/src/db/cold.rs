//! A new node's first snapshot, written in parts.
//!
//! Nothing is stored, so nothing is served: no lookup can see a snapshot
//! half written. One write transaction over a million tenants would make
//! redb remember every page it allocates (~2.2 million, in
//! `UncommittedPages`) until the commit and copy that set at the commit:
//! ~140 MB of the agent's peak memory, growing with the tenant count. So
//! the tenants are written in durable parts of [`PART_BYTES`] of bodies,
//! and the last part writes the routes, the metadata and the current
//! marker that serve the snapshot.
//!
//! Within a part, the tenants are committed without durability every half
//! of redb's write buffer (steps). redb computes a leaf page's checksum at
//! commit; a page its write buffer evicted before then is read back from
//! the file to be checksummed. In steps, a commit finds its pages still in
//! the buffer, and each is written to the file once, after it (a 100k cold
//! start from the in-process S3 server: 8.7–8.9 s in one step a part,
//! 6.0–7.1 s in steps; BENCHMARKS.md). A crash loses the steps since the
//! last durable part, which is what it would lose of a part anyway.
//!
//! A crash or a refusal between parts leaves rows that no stored snapshot
//! names (leftovers). They are deleted when the file is opened, before a
//! cold apply starts and when one fails, so the file holds, as the module
//! promises, no snapshot or the whole one.

use std::sync::atomic::{AtomicBool, Ordering};

use redb::{ReadableTableMetadata, TableError, WriteTransaction};
use strata_common::bundle::Frames;
use strata_common::canonical::sha256_hex;

use super::bodies::{CONFIG_PIECES, PROMPT_PIECES};
use super::ingest::{Tables, seal};
use super::keep::{Keep, SERVED_UNTIL};
use super::rows::{OPEN, TenantRow, prompt_etag};
use super::tree::{CHUNK_SETS, OBJECTS, ROOT_OBJECTS};
use super::{
    CLOSED, CONFIG_BODIES, Db, DbError, Ingested, LAYER1, META, PROMPT_BODIES, ROUTE_SETS, ROUTES,
    SNAPSHOTS, SnapshotMeta, TENANTS,
};

/// Bytes of bodies a cold apply writes per durable part: ~280,000 pages,
/// a few MB of redb's set. Each part's commit waits for the disk; measured
/// before the steps (when each part's commit also read back the pages its
/// write buffer had evicted, ~1.5 s a part at 1M tenants), 2 GiB parts
/// took as long and ~20 MB more, 512 MiB parts longer (BENCHMARKS.md,
/// "Format 3 at 1M tenants").
pub(super) const PART_BYTES: u64 = 1 << 30;

impl Db {
    /// Writes `meta`'s snapshot into a file that stores none, in parts; see
    /// the module docs. A failure deletes the parts written.
    pub(super) fn ingest_cold(
        &self,
        txn: WriteTransaction,
        meta: &SnapshotMeta,
        payload: &mut dyn Frames,
        keep: Keep,
    ) -> Result<Ingested, DbError> {
        // No lookup to stay out of the way of: the disk may start on the
        // apply's pages at once.
        let _eager = EagerWhile::set(&self.eager_writeback);
        let txn = if delete_leftovers(&txn)? {
            txn.commit()?;
            self.db.begin_write()?
        } else {
            txn
        };
        let written = self.write_parts(txn, meta, payload, keep);
        if written.is_err() {
            match self.db.begin_write().and_then(|txn| {
                if delete_leftovers(&txn)? {
                    txn.commit()?;
                }
                Ok(())
            }) {
                Ok(()) => {}
                Err(e) => tracing::warn!(
                    "could not delete the parts of a failed first apply ({e}); they are deleted when the file is next opened"
                ),
            }
        }
        written
    }

    /// Deletes leftovers of a first apply that did not finish, if the file
    /// stores no snapshot: what [`Db::open`] does before anything is read.
    pub(super) fn delete_leftovers(&self) -> Result<(), DbError> {
        let txn = self.db.begin_write()?;
        if delete_leftovers(&txn)? {
            tracing::warn!(
                "deleted the rows of a first apply that did not finish (a crash or a refused snapshot); the snapshot is fetched again"
            );
            txn.commit()?;
        }
        Ok(())
    }

    fn write_parts(
        &self,
        mut txn: WriteTransaction,
        meta: &SnapshotMeta,
        payload: &mut dyn Frames,
        keep: Keep,
    ) -> Result<Ingested, DbError> {
        let v = meta.version;
        let layer1_hash = sha256_hex(payload.layer1());
        let mut done = Ingested::default();
        let mut synced = 0;
        // Within a part, a non-durable commit every half write buffer (the
        // steps of the module docs).
        let step = (self.write_buffer_bytes / 2).max(1);
        loop {
            let in_part = done.bytes_written - synced;
            let budget = step.min(self.part_bytes.saturating_sub(in_part)).max(1);
            if write_part(
                &mut Tables::open(&txn)?,
                payload,
                v,
                &layer1_hash,
                &mut done,
                budget,
            )? {
                break;
            }
            let part_ends = done.bytes_written - synced >= self.part_bytes;
            let committing = std::time::Instant::now();
            if !part_ends {
                txn.set_durability(redb::Durability::None)?;
            }
            txn.commit()?;
            if part_ends {
                self.written.forget();
                done.transactions += 1;
                tracing::debug!(
                    part = done.transactions,
                    tenants = done.tenants,
                    commit_seconds = committing.elapsed().as_secs_f64(),
                    "first apply: part committed"
                );
                synced = done.bytes_written;
            }
            txn = self.db.begin_write()?;
        }
        let kept = {
            let mut m = txn.open_table(META)?;
            seal(
                &mut Tables::open(&txn)?,
                &mut m,
                meta,
                payload,
                None,
                keep,
                &done,
            )?
        };
        let unsynced = done.bytes_written - synced;
        self.finish(txn, payload, v, &kept, done, unsynced)
    }
}

/// Writes whole chunks of tenants until `budget` bytes of bodies are
/// written (false: more to come) or the tenants end (true).
fn write_part(
    t: &mut Tables<'_>,
    payload: &mut dyn Frames,
    v: u64,
    layer1_hash: &str,
    done: &mut Ingested,
    budget: u64,
) -> Result<bool, DbError> {
    let start = done.bytes_written;
    while done.bytes_written - start < budget {
        // Nothing is stored, so no chunk can be held.
        let Some(frame) = payload.next_listed()? else {
            return Ok(true);
        };
        let bodies = payload.bodies(&frame)?;
        done.frames_decoded += 1;
        for (i, entry) in frame.tenants.iter().enumerate() {
            let key = (v, entry.tenant.as_str());
            let config = bodies.config(i)?;
            let prompt = bodies.prompt(i)?;
            t.config_bodies.insert(key, config)?;
            t.prompt_bodies.insert(key, prompt)?;
            let row = TenantRow {
                last: OPEN,
                config_version: v,
                prompt_version: v,
                config_etag: entry.config_hash,
                prompt_etag: prompt_etag(&entry.config_hash, layer1_hash),
            };
            t.tenants
                .insert((entry.tenant.as_str(), v), row.encode().as_slice())?;
            done.tenants += 1;
            done.rows_written += 1;
            done.bodies_written += 2;
            done.bytes_written += (config.len() + prompt.len()) as u64;
        }
    }
    Ok(false)
}

/// Deletes in `txn` every table a snapshot is written into, if no
/// snapshot is stored; returns whether there was any to delete. The node's
/// own marks (`META`, the pin followed) are kept.
fn delete_leftovers(txn: &WriteTransaction) -> Result<bool, DbError> {
    match txn.open_table(SNAPSHOTS) {
        Ok(t) if !t.is_empty()? => return Ok(false),
        Ok(_) | Err(TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let mut any = false;
    any |= txn.delete_table(TENANTS)?;
    any |= txn.delete_table(CLOSED)?;
    any |= txn.delete_table(CONFIG_BODIES)?;
    any |= txn.delete_table(CONFIG_PIECES)?;
    any |= txn.delete_table(PROMPT_BODIES)?;
    any |= txn.delete_table(PROMPT_PIECES)?;
    any |= txn.delete_table(ROUTES)?;
    any |= txn.delete_table(ROUTE_SETS)?;
    any |= txn.delete_table(LAYER1)?;
    any |= txn.delete_table(SERVED_UNTIL)?;
    any |= txn.delete_table(CHUNK_SETS)?;
    any |= txn.delete_table(ROOT_OBJECTS)?;
    any |= txn.delete_table(OBJECTS)?;
    Ok(any)
}

/// Sets the early-writeback switch for as long as it lives.
struct EagerWhile<'a>(&'a AtomicBool);

impl<'a> EagerWhile<'a> {
    fn set(switch: &'a AtomicBool) -> Self {
        switch.store(true, Ordering::Relaxed);
        Self(switch)
    }
}

impl Drop for EagerWhile<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}
