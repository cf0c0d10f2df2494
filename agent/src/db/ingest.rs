//! The write transaction that stores a snapshot (a new node's first one is
//! written in parts: `cold`).

use redb::{ReadableTable, Table, TableError};
use strata_common::bundle::{BundleError, Frames, Group};
use strata_common::canonical::sha256_hex;

use super::bodies::{Bodies, CONFIG_PIECES, PROMPT_PIECES};
use super::keep::{self, Keep, SERVED_UNTIL};
use super::rows::{
    OPEN, OpenRows, RouteBody, RouteSet, TenantRow, prompt_etag, prune_routes, prune_tenants,
};
use super::{
    CLOSED, CONFIG_BODIES, Db, DbError, ETAG_LEN, LAYER1, META, PROMPT_BODIES, ROUTE_SETS, ROUTES,
    SNAPSHOTS, SnapshotMeta, TENANTS,
};

impl Db {
    /// Writes a whole snapshot in one transaction, makes it current and prunes
    /// what `keep` lets go (an older version than the newest stored is
    /// written between them: `older`; the first snapshot of a file that
    /// stores none, in parts: `cold`). A snapshot from the channel (not
    /// `meta.pinned`) raises the high-water mark in the same commit. Tenants whose config hash (and
    /// Layer 1) are unchanged since the newest stored snapshot share its
    /// bodies, and a body frame whose tenants are all unchanged is not even
    /// decompressed. Any bad record rolls everything back.
    pub fn ingest(
        &self,
        meta: &SnapshotMeta,
        payload: &mut dyn Frames,
        keep: Keep,
    ) -> Result<Ingested, DbError> {
        let v = meta.version;
        let txn = self.db.begin_write()?;
        let newest = txn.open_table(SNAPSHOTS)?.last()?.map(|(k, _)| k.value());
        if newest.is_some_and(|n| n > v) {
            return self.ingest_older(txn, meta, payload, keep);
        }
        if newest.is_none() {
            return self.ingest_cold(txn, meta, payload, keep);
        }
        let mut done = Ingested::default();
        let kept_versions: Vec<u64>;
        {
            let mut t = Tables::open(&txn)?;
            let mut m = txn.open_table(META)?;
            if t.snapshots.get(v)?.is_some() {
                return Err(DbError::AlreadyStored { version: v });
            }
            // The newest stored snapshot: bodies unchanged since it are shared.
            let base = t.snapshots.last()?.map(|(k, _)| k.value());
            // The base's rows, from the committed state, walked in tenant
            // order beside the index: rows of tenants the index no longer
            // lists are closed as the walk passes them.
            let committed = self.db.begin_read()?;
            let base_rows = match committed.open_table(TENANTS) {
                Ok(t) => Some(t),
                Err(TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e.into()),
            };
            let mut open = OpenRows {
                rows: base_rows.as_ref().map(|t| t.iter()).transpose()?,
            };
            let mut head = open.next()?;
            let close = |tenants: &mut Table<(&str, u64), &[u8]>,
                         closed: &mut Table<(u64, &str), u64>,
                         (tenant, first, mut row): (String, u64, TenantRow)|
             -> Result<(), DbError> {
                row.last = v - 1;
                tenants.insert((tenant.as_str(), first), row.encode().as_slice())?;
                closed.insert((row.last, tenant.as_str()), first)?;
                Ok(())
            };
            let layer1_hash = sha256_hex(payload.layer1());
            // Under the same Layer 1, an unchanged config means an unchanged
            // prompt: its ETag is the base row's, no need to hash again.
            let same_layer1 = match base {
                Some(b) => t
                    .layer1
                    .get(b)?
                    .is_some_and(|g| g.value().get(..ETAG_LEN) == Some(layer1_hash.as_bytes())),
                None => false,
            };

            while let Some(group) = payload.next_group()? {
                let frame = match group {
                    Group::Listed(frame) => frame,
                    // A chunk the newest stored snapshot has: its tenants
                    // are exactly the stored rows in its range, kept.
                    Group::Held { first, end, count } => {
                        while let Some(gone) = head.take_if(|(t, ..)| *t < first) {
                            close(&mut t.tenants, &mut t.closed, gone)?;
                            head = open.next()?;
                        }
                        let mut kept = 0u64;
                        while head
                            .as_ref()
                            .is_some_and(|(t, ..)| end.as_ref().is_none_or(|e| t < e))
                        {
                            kept += 1;
                            head = open.next()?;
                        }
                        if kept != count {
                            return Err(DbError::Damaged(format!(
                                "the stored rows from {first} are {kept} tenant(s), the chunk the snapshot shares with them holds {count}"
                            )));
                        }
                        done.tenants += kept;
                        done.bodies_shared += 2 * kept;
                        done.frames_skipped += 1;
                        continue;
                    }
                };
                let mut rows = Vec::with_capacity(frame.tenants.len());
                let mut changed = false;
                for entry in &frame.tenants {
                    while let Some(gone) = head.take_if(|(t, ..)| *t < entry.tenant) {
                        close(&mut t.tenants, &mut t.closed, gone)?;
                        head = open.next()?;
                    }
                    let before = match head.take_if(|(t, ..)| *t == entry.tenant) {
                        Some(current) => {
                            head = open.next()?;
                            Some(current)
                        }
                        None => None,
                    };
                    let prompt = match &before {
                        Some((_, _, r)) if same_layer1 && r.config_etag == entry.config_hash => {
                            r.prompt_etag
                        }
                        _ => prompt_etag(&entry.config_hash, &layer1_hash),
                    };
                    let same = before.as_ref().is_some_and(|(_, _, r)| {
                        r.config_etag == entry.config_hash && r.prompt_etag == prompt
                    });
                    changed |= !same;
                    rows.push((before, prompt, same));
                }
                let bodies = if changed {
                    done.frames_decoded += 1;
                    Some(payload.bodies(&frame)?)
                } else {
                    done.frames_skipped += 1;
                    None
                };
                for (i, (entry, (before, prompt_etag, same))) in
                    frame.tenants.iter().zip(rows).enumerate()
                {
                    done.tenants += 1;
                    if same {
                        done.bodies_shared += 2;
                        continue;
                    }
                    let was = before.as_ref().map(|(_, _, r)| *r);
                    let key = (v, entry.tenant.as_str());
                    let config_version = done.share_or_write(
                        &mut t.config_bodies,
                        was.map(|r| (r.config_version, r.config_etag)),
                        &entry.config_hash,
                        key,
                        || Ok(bodies.as_ref().map(|b| b.config(i)).transpose()?),
                    )?;
                    let prompt_version = done.share_or_write(
                        &mut t.prompt_bodies,
                        was.map(|r| (r.prompt_version, r.prompt_etag)),
                        &prompt_etag,
                        key,
                        || Ok(bodies.as_ref().map(|b| b.prompt(i)).transpose()?),
                    )?;
                    if let Some(before) = before {
                        close(&mut t.tenants, &mut t.closed, before)?;
                    }
                    let row = TenantRow {
                        last: OPEN,
                        config_version,
                        prompt_version,
                        config_etag: entry.config_hash,
                        prompt_etag,
                    };
                    t.tenants
                        .insert((entry.tenant.as_str(), v), row.encode().as_slice())?;
                    done.rows_written += 1;
                }
            }
            // Tenants after the index's last one are gone too.
            while let Some(gone) = head.take() {
                close(&mut t.tenants, &mut t.closed, gone)?;
                head = open.next()?;
            }
            drop(open);
            drop(base_rows);
            drop(committed);
            kept_versions = seal(&mut t, &mut m, meta, payload, base, keep, &done)?;
        }
        let unsynced = done.bytes_written;
        self.finish(txn, payload, v, &kept_versions, done, unsynced)
    }

    /// Records a format 3 snapshot's chunks and objects, drops those no
    /// kept version names, and commits; `unsynced` is the bytes of bodies
    /// written since the last durable commit.
    pub(super) fn finish(
        &self,
        mut txn: redb::WriteTransaction,
        payload: &mut dyn Frames,
        v: u64,
        kept_versions: &[u64],
        mut done: Ingested,
        unsynced: u64,
    ) -> Result<Ingested, DbError> {
        if let Some(applied) = payload.take_tree() {
            done.objects_fetched = applied.stats.objects;
            done.bytes_fetched = applied.stats.bytes;
            super::tree::record(&txn, v, &applied)?;
        }
        super::tree::prune(&txn, kept_versions)?;
        // Durable before it is served, unless the bodies outgrew redb's write
        // buffer (a cold apply): redb has then spilled pages to the file and
        // the fsync would wait seconds for the disk, so the snapshot is served
        // first and `persist` follows. Committing durably otherwise keeps
        // lookups off the write buffer's locks, which readers must take while a
        // non-durable commit's pages sit there (BENCHMARKS.md measures both).
        done.durable = unsynced <= self.write_buffer_bytes;
        if !done.durable {
            txn.set_durability(redb::Durability::None)?;
        }
        txn.commit()?;
        // A non-durable commit's pages stay in redb's write buffer and are
        // written (again) by the next durable commit: still remembered.
        if done.durable {
            self.written.forget();
        }
        done.transactions += 1;
        Ok(done)
    }
}

/// Writes what follows a snapshot's tenants, in the transaction that
/// serves it: its Layer 1, its routes (`base`'s set when identical), its
/// metadata, the current marker and (from the channel) the high-water mark;
/// then prunes what `keep` lets go. Returns the versions kept.
pub(super) fn seal(
    t: &mut Tables<'_>,
    m: &mut Table<'_, &'static str, u64>,
    meta: &SnapshotMeta,
    payload: &mut dyn Frames,
    base: Option<u64>,
    keep: Keep,
    done: &Ingested,
) -> Result<Vec<u64>, DbError> {
    let v = meta.version;
    let mut value = Vec::with_capacity(ETAG_LEN + payload.layer1().len());
    value.extend_from_slice(sha256_hex(payload.layer1()).as_bytes());
    value.extend_from_slice(payload.layer1());
    t.layer1.insert(v, value.as_slice())?;
    // Routes rarely change: an identical set is shared, not rewritten.
    let digest = payload.routes_sha256().to_owned();
    let base_set = match base {
        Some(b) => t
            .route_sets
            .get(b)?
            .map(|g| RouteSet::decode(g.value()))
            .transpose()?,
        None => None,
    };
    let set = match base_set {
        Some(set) if set.digest.as_slice() == digest.as_bytes() => set,
        _ => RouteSet::new(v, &digest)?,
    };
    if set.version == v {
        let check = !payload.routes_checked();
        while let Some((number, tenant)) = payload.next_route()? {
            if check && !is_open(&t.tenants, tenant)? {
                return Err(BundleError::RouteToUnknownTenant {
                    number: number.to_owned(),
                    tenant: tenant.to_owned(),
                }
                .into());
            }
            let body = serde_json::to_vec(&RouteBody { tenant_id: tenant })?;
            t.routes.insert((v, number), body.as_slice())?;
        }
    } else {
        payload.keep_routes()?;
    }
    t.route_sets.insert(v, set.encode().as_slice())?;
    serve_version(t, m, meta, keep, done)
}

/// Checks the tenant count, stores `meta` and makes its version current
/// (from the channel: raises the high-water mark), then prunes what
/// `keep` lets go. Returns the versions kept.
pub(super) fn serve_version(
    t: &mut Tables<'_>,
    m: &mut Table<'_, &'static str, u64>,
    meta: &SnapshotMeta,
    keep: Keep,
    done: &Ingested,
) -> Result<Vec<u64>, DbError> {
    let v = meta.version;
    if done.tenants != meta.tenant_count {
        return Err(DbError::TenantCount {
            found: done.tenants,
            expected: meta.tenant_count,
        });
    }
    t.snapshots
        .insert(v, serde_json::to_vec(meta)?.as_slice())?;
    let now = keep::now_secs();
    let was = m.get("current")?.map(|g| g.value());
    keep::note_switch(&mut t.served_until, was, v, now)?;
    m.insert("current", v)?;
    if !meta.pinned {
        super::marks::raise_high_water(m, v)?;
    }
    prune_versions(keep, v, now, t)
}

/// Every table a snapshot is written into, open in one write transaction.
pub(super) struct Tables<'t> {
    pub(super) tenants: Table<'t, (&'static str, u64), &'static [u8]>,
    pub(super) closed: Table<'t, (u64, &'static str), u64>,
    pub(super) config_bodies: Bodies<'t>,
    pub(super) prompt_bodies: Bodies<'t>,
    pub(super) routes: Table<'t, (u64, &'static str), &'static [u8]>,
    pub(super) route_sets: Table<'t, u64, &'static [u8]>,
    pub(super) layer1: Table<'t, u64, &'static [u8]>,
    pub(super) snapshots: Table<'t, u64, &'static [u8]>,
    pub(super) served_until: Table<'t, u64, u64>,
}

impl<'t> Tables<'t> {
    /// Opens (or creates) every table in `txn`.
    pub(super) fn open(txn: &'t redb::WriteTransaction) -> Result<Self, DbError> {
        Ok(Self {
            tenants: txn.open_table(TENANTS)?,
            closed: txn.open_table(CLOSED)?,
            config_bodies: Bodies::open(txn, CONFIG_BODIES, CONFIG_PIECES, "config")?,
            prompt_bodies: Bodies::open(txn, PROMPT_BODIES, PROMPT_PIECES, "prompt")?,
            routes: txn.open_table(ROUTES)?,
            route_sets: txn.open_table(ROUTE_SETS)?,
            layer1: txn.open_table(LAYER1)?,
            snapshots: txn.open_table(SNAPSHOTS)?,
            served_until: txn.open_table(SERVED_UNTIL)?,
        })
    }
}

/// Drops the stored versions `keep` lets go (`current`, just written, is
/// kept), with the rows, bodies and routes only they used; returns the
/// versions kept.
pub(super) fn prune_versions(
    keep: Keep,
    current: u64,
    now: u64,
    t: &mut Tables<'_>,
) -> Result<Vec<u64>, DbError> {
    let mut versions: Vec<u64> = t
        .snapshots
        .iter()?
        .map(|e| e.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;
    versions.sort_unstable();
    let kept = keep.kept(&versions, current, &t.served_until, now)?;
    if let Some(&oldest) = kept.first() {
        prune_tenants(
            oldest,
            &mut t.tenants,
            &mut t.closed,
            &mut t.config_bodies,
            &mut t.prompt_bodies,
        )?;
    }
    for old in versions.iter().copied().filter(|o| !kept.contains(o)) {
        prune_routes(old, &kept, &mut t.route_sets, &mut t.routes)?;
        t.layer1.remove(old)?;
        t.snapshots.remove(old)?;
        t.served_until.remove(old)?;
    }
    Ok(kept)
}

/// What an ingest wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    /// Tenants in the snapshot.
    pub tenants: u64,
    /// Config and prompt bodies written by this snapshot.
    pub bodies_written: u64,
    /// Bodies unchanged since the previous snapshot, shared with it.
    pub bodies_shared: u64,
    /// Tenant rows written: tenants new or changed in this snapshot.
    pub rows_written: u64,
    /// Body frames decompressed: those holding a changed tenant.
    pub frames_decoded: u64,
    /// Body frames whose tenants were all unchanged, never decompressed.
    pub frames_skipped: u64,
    /// Bytes of the bodies written.
    pub bytes_written: u64,
    /// Whether the commit was durable; if not, [`Db::persist`] makes it so.
    pub durable: bool,
    /// Write transactions the snapshot was committed in: one, or (a new
    /// node's first snapshot) one durable part per full GiB of bodies plus
    /// the last, as the `cold` module says; its steps within a part,
    /// committed without durability, are not counted.
    pub transactions: u64,
    /// Format 3: objects fetched from the store.
    pub objects_fetched: u64,
    /// Format 3: their bytes.
    pub bytes_fetched: u64,
}

impl Ingested {
    /// The version whose body to serve: the previous snapshot's when the ETag
    /// is unchanged, else this one's, after writing `body` under `key`
    /// (`None` if its frame was not decoded). `body` is called only to write.
    fn share_or_write<'b>(
        &mut self,
        bodies: &mut Bodies<'_>,
        before: Option<(u64, [u8; ETAG_LEN])>,
        etag: &[u8; ETAG_LEN],
        key: (u64, &str),
        body: impl FnOnce() -> Result<Option<&'b [u8]>, DbError>,
    ) -> Result<u64, DbError> {
        match before {
            Some((version, before)) if before == *etag => {
                self.bodies_shared += 1;
                Ok(version)
            }
            _ => {
                let body = body()?.ok_or_else(|| {
                    DbError::Damaged(format!("the body of {} was not decoded", key.1))
                })?;
                bodies.insert(key, body)?;
                self.bodies_written += 1;
                self.bytes_written += body.len() as u64;
                Ok(key.0)
            }
        }
    }
}

/// Whether `tenant` has an open row: it is in the snapshot being written.
fn is_open(tenants: &Table<(&str, u64), &[u8]>, tenant: &str) -> Result<bool, DbError> {
    let Some(last) = tenants.range((tenant, 0)..=(tenant, u64::MAX))?.next_back() else {
        return Ok(false);
    };
    let (_, row) = last?;
    Ok(TenantRow::decode(row.value())?.last == OPEN)
}
