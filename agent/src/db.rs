//! The local snapshot store: one redb file, `data_dir/strata.redb`.
//!
//! Every index table is keyed by snapshot version first, so the last
//! `retain` snapshots coexist and `?snapshot=N` reads an older one. A
//! snapshot is written in one write transaction, together with its metadata,
//! the "current" marker and the pruning of older versions: after a crash the
//! file holds the previous snapshot or the new one, never a mix.
//!
//! Consecutive snapshots share almost every tenant, so a tenant's row covers
//! a range of versions: it is written when the tenant appears or changes and
//! closed (its last version set) when the tenant changes again or leaves. Its
//! config and prompt bodies are written once, under the version that
//! introduced them. A publish that changes ten tenants of 100,000 writes ten
//! rows and ten bodies and closes ten rows, whatever the tenant count.
//! Closed rows and their bodies are deleted once no retained version is in
//! their range. Ranges are in version numbers, so snapshots are ingested in
//! increasing version order (an older one is refused); serving an older,
//! no-longer-retained version (a region pin's rollback) would need the rows
//! around it split.
//!
//! Bodies are stored exactly as they are served, so a lookup hands redb's
//! page to the HTTP response without copying or re-serialising.

use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use redb::{ReadOnlyTable, ReadableDatabase, ReadableTable, Table, TableDefinition, TableError};
use serde::{Deserialize, Serialize};
use strata_common::bundle::{BundleError, PayloadReader};
use strata_common::canonical::sha256_hex;
use strata_common::sign::SignatureEntry;

use crate::writeback::{EagerWriteback, open_data_file};

/// `(tenant id, first version)` → [`TenantRow`]: the versions through which
/// the tenant is unchanged, where its bodies are, and their ETags.
const TENANTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("tenants");
/// `(last version, tenant id)` → first version: the closed rows of
/// [`TENANTS`], oldest first, so pruning finds them without a scan.
const CLOSED: TableDefinition<(u64, &str), u64> = TableDefinition::new("closed");
/// `(version that introduced it, tenant id)` → effective config JSON.
const CONFIG_BODIES: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("config_bodies");
/// `(version that introduced it, tenant id)` → combined system prompt.
const PROMPT_BODIES: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("prompt_bodies");
/// `(version that introduced the route set, E.164)` → `{"tenant_id":"…"}`.
const ROUTES: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("routes");
/// version → [`RouteSet`]: which version's routes it serves.
const ROUTE_SETS: TableDefinition<u64, &[u8]> = TableDefinition::new("route_sets");
/// version → Layer 1 SHA-256 (64 hex bytes) ‖ Layer 1 JSON.
const LAYER1: TableDefinition<u64, &[u8]> = TableDefinition::new("layer1");
/// version → [`SnapshotMeta`] JSON.
const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");
/// `current` → the version served; `schema` → [`SCHEMA`].
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The table layout this module writes; a file with another is emptied at open.
const SCHEMA: u64 = 4;

/// Length of an ETag: 64 hex digits of a SHA-256.
pub const ETAG_LEN: usize = 64;

/// What the agent verified about a snapshot, kept beside it so a restart can
/// serve (and re-check the signatures) without the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Snapshot version.
    pub version: u64,
    /// SHA-256 of the bundle file.
    pub bundle_sha256: String,
    /// Bundle size in bytes.
    pub bundle_size: u64,
    /// When the bundle was built.
    pub created_at: String,
    /// The channel pointer's expiry when the snapshot was fetched.
    pub expires_at: String,
    /// Layer 1 version.
    pub layer1_version: String,
    /// Tenants in the snapshot.
    pub tenant_count: u64,
    /// Store URL it came from.
    pub source: String,
    /// When the agent fetched it.
    pub fetched_at: String,
    /// Whether a region pin selected it.
    pub pinned: bool,
    /// The verified manifest, exactly as signed.
    pub manifest: String,
    /// The manifest's signatures.
    pub signatures: Vec<SignatureEntry>,
}

/// Why the database failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database file could not be opened or created.
    #[error("opening {}: {source} (check that data_dir exists and is writable)", path.display())]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// redb reported an error.
    #[error("redb: {0}")]
    Redb(String),
    /// A record of the bundle failed to decode (ingest is rolled back).
    #[error("bundle: {0}")]
    Bundle(#[from] BundleError),
    /// A committed snapshot cannot be read back: the file names no current one.
    #[error("the snapshot file names no current snapshot")]
    NoCurrent,
    /// The payload is not a complete snapshot.
    #[error("snapshot incomplete: {0}")]
    Incomplete(String),
}

macro_rules! redb_err {
    ($($t:ty),*) => {$(
        impl From<$t> for DbError {
            fn from(e: $t) -> Self {
                DbError::Redb(e.to_string())
            }
        }
    )*};
}
redb_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The redb file.
pub struct Db {
    db: redb::Database,
    /// How many bytes of pages redb buffers in memory before writing them to
    /// the file: half its cache.
    write_buffer_bytes: u64,
    /// Set during an ingest while nothing is served: see [`EagerWriteback`].
    eager_writeback: Arc<AtomicBool>,
}

impl Db {
    /// Opens (or creates) the database file; `cache_bytes` bounds redb's cache.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self, DbError> {
        let file = open_data_file(path).map_err(|source| DbError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let eager_writeback = Arc::new(AtomicBool::new(false));
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create_with_backend(EagerWriteback::new(file, eager_writeback.clone())?)?;
        let this = Self {
            db,
            write_buffer_bytes: cache_bytes as u64 / 2,
            eager_writeback,
        };
        this.migrate()?;
        Ok(this)
    }

    /// A file written with another table layout is emptied (the store still
    /// has every snapshot), then marked with this one.
    fn migrate(&self) -> Result<(), DbError> {
        let txn = self.db.begin_write()?;
        {
            let meta = txn.open_table(META)?;
            let found = meta.get("schema")?.map(|g| g.value());
            if found == Some(SCHEMA) {
                return Ok(());
            }
            let stale = meta.get("current")?.is_some();
            drop(meta);
            if stale {
                tracing::warn!(
                    "local snapshot file has table layout {found:?}, this agent writes {SCHEMA}; \
                     emptying it and fetching the current snapshot again"
                );
            }
        }
        Self::empty(txn)
    }

    /// Drops every stored snapshot, leaving the file as a new node's: for a
    /// stored snapshot today's trusted keys no longer vouch for, which must
    /// neither be served nor stand in the way of (or lend bodies to) the
    /// store's snapshot, whatever its version.
    pub fn clear(&self) -> Result<(), DbError> {
        Self::empty(self.db.begin_write()?)
    }

    /// Deletes every table in `txn`, marks the file with [`SCHEMA`] and commits.
    fn empty(txn: redb::WriteTransaction) -> Result<(), DbError> {
        for table in txn.list_tables()?.collect::<Vec<_>>() {
            txn.delete_table(table)?;
        }
        txn.open_table(META)?.insert("schema", SCHEMA)?;
        txn.commit()?;
        Ok(())
    }

    /// Writes a whole snapshot in one transaction, makes it current and prunes
    /// all but the newest `retain` versions. Tenants whose config hash (and
    /// Layer 1) are unchanged since the newest stored snapshot share its
    /// bodies, and a body frame whose tenants are all unchanged is not even
    /// decompressed. Any bad record rolls everything back.
    pub fn ingest<R: Read + Seek>(
        &self,
        meta: &SnapshotMeta,
        payload: &mut PayloadReader<R>,
        retain: usize,
    ) -> Result<Ingested, DbError> {
        let v = meta.version;
        let mut txn = self.db.begin_write()?;
        let mut done = Ingested::default();
        {
            let mut tenants = txn.open_table(TENANTS)?;
            let mut closed = txn.open_table(CLOSED)?;
            let mut config_bodies = txn.open_table(CONFIG_BODIES)?;
            let mut prompt_bodies = txn.open_table(PROMPT_BODIES)?;
            let mut routes = txn.open_table(ROUTES)?;
            let mut route_sets = txn.open_table(ROUTE_SETS)?;
            let mut layer1 = txn.open_table(LAYER1)?;
            let mut snapshots = txn.open_table(SNAPSHOTS)?;
            let mut m = txn.open_table(META)?;
            if snapshots.get(v)?.is_some() {
                return Err(DbError::Incomplete(format!(
                    "snapshot {v} is already stored"
                )));
            }
            // The newest stored snapshot: bodies unchanged since it are shared.
            let base = snapshots.last()?.map(|(k, _)| k.value());
            // Nothing stored means nothing served: no lookup to stay out of
            // the way of, so the disk may start on the apply's pages at once.
            let _eager = EagerWhile::set(&self.eager_writeback, base.is_none());
            if base.is_some_and(|b| b > v) {
                return Err(DbError::Incomplete(format!(
                    "snapshot {v} is older than the stored {base:?}"
                )));
            }
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
                Some(b) => layer1
                    .get(b)?
                    .is_some_and(|g| g.value().get(..ETAG_LEN) == Some(layer1_hash.as_bytes())),
                None => false,
            };
            let mut value = Vec::with_capacity(ETAG_LEN + payload.layer1().len());
            value.extend_from_slice(layer1_hash.as_bytes());
            value.extend_from_slice(payload.layer1());
            layer1.insert(v, value.as_slice())?;

            while let Some(frame) = payload.next_frame()? {
                let mut rows = Vec::with_capacity(frame.tenants.len());
                let mut changed = false;
                for entry in &frame.tenants {
                    while let Some(gone) = head.take_if(|(t, ..)| *t < entry.tenant) {
                        close(&mut tenants, &mut closed, gone)?;
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
                    Some(payload.read_frame(&frame)?)
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
                        &mut config_bodies,
                        was.map(|r| (r.config_version, r.config_etag)),
                        &entry.config_hash,
                        key,
                        || Ok(bodies.as_ref().map(|b| b.config(i)).transpose()?),
                    )?;
                    let prompt_version = done.share_or_write(
                        &mut prompt_bodies,
                        was.map(|r| (r.prompt_version, r.prompt_etag)),
                        &prompt_etag,
                        key,
                        || Ok(bodies.as_ref().map(|b| b.prompt(i)).transpose()?),
                    )?;
                    if let Some(before) = before {
                        close(&mut tenants, &mut closed, before)?;
                    }
                    let row = TenantRow {
                        last: OPEN,
                        config_version,
                        prompt_version,
                        config_etag: entry.config_hash,
                        prompt_etag,
                    };
                    tenants.insert((entry.tenant.as_str(), v), row.encode().as_slice())?;
                    done.rows_written += 1;
                }
            }
            // Tenants after the index's last one are gone too.
            while let Some(gone) = head.take() {
                close(&mut tenants, &mut closed, gone)?;
                head = open.next()?;
            }
            drop(open);
            drop(base_rows);
            drop(committed);
            // Routes rarely change: an identical set is shared, not rewritten.
            let digest = payload.routes_sha256().to_owned();
            let base_set = match base {
                Some(b) => route_sets
                    .get(b)?
                    .map(|g| RouteSet::decode(g.value()))
                    .transpose()?,
                None => None,
            };
            let set = match base_set {
                Some(set) if set.digest.as_slice() == digest.as_bytes() => set,
                _ => RouteSet::new(v, &digest)?,
            };
            while let Some((number, tenant)) = payload.next_route()? {
                if set.version == v {
                    let body = serde_json::to_vec(&RouteBody { tenant_id: tenant })
                        .map_err(|e| DbError::Incomplete(e.to_string()))?;
                    routes.insert((v, number), body.as_slice())?;
                }
            }
            route_sets.insert(v, set.encode().as_slice())?;
            if done.tenants != meta.tenant_count {
                return Err(DbError::Incomplete(format!(
                    "{} tenants for {} in the manifest",
                    done.tenants, meta.tenant_count
                )));
            }
            let meta_json =
                serde_json::to_vec(meta).map_err(|e| DbError::Incomplete(e.to_string()))?;
            snapshots.insert(v, meta_json.as_slice())?;
            m.insert("current", v)?;

            let mut versions: Vec<u64> = snapshots
                .iter()?
                .map(|e| e.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?;
            versions.sort_unstable();
            let (old, kept) = versions.split_at(versions.len().saturating_sub(retain));
            if let Some(&oldest) = kept.first() {
                prune_tenants(
                    oldest,
                    &mut tenants,
                    &mut closed,
                    &mut config_bodies,
                    &mut prompt_bodies,
                )?;
            }
            for old in old.iter().copied().filter(|o| *o != v) {
                prune_routes(old, kept, &mut route_sets, &mut routes)?;
                layer1.remove(old)?;
                snapshots.remove(old)?;
            }
        }
        // Durable before it is served, unless the bodies outgrew redb's write
        // buffer (a cold apply): redb has then spilled pages to the file and
        // the fsync would wait seconds for the disk, so the snapshot is served
        // first and `persist` follows. Committing durably otherwise keeps
        // lookups off the write buffer's locks, which readers must take while a
        // non-durable commit's pages sit there (BENCHMARKS.md measures both).
        done.durable = done.bytes_written <= self.write_buffer_bytes;
        if !done.durable {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| DbError::Redb(e.to_string()))?;
        }
        txn.commit()?;
        Ok(done)
    }

    /// Makes every earlier commit durable (an empty commit with immediate
    /// durability flushes and fsyncs them): what follows an ingest that was
    /// not [`Ingested::durable`].
    pub fn persist(&self) -> Result<(), DbError> {
        self.db.begin_write()?.commit()?;
        Ok(())
    }

    /// A consistent read view of every retained snapshot, or `None` before
    /// the first ingest.
    pub fn reader(&self) -> Result<Option<Reader>, DbError> {
        let txn = self.db.begin_read()?;
        let meta = match txn.open_table(META) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(current) = meta.get("current")?.map(|g| g.value()) else {
            return Ok(None);
        };
        let snapshots = txn.open_table(SNAPSHOTS)?;
        let mut metas = BTreeMap::new();
        for entry in snapshots.iter()? {
            let (k, v) = entry?;
            let meta: SnapshotMeta = serde_json::from_slice(v.value()).map_err(|e| {
                DbError::Incomplete(format!("snapshot {} metadata: {e}", k.value()))
            })?;
            metas.insert(k.value(), meta);
        }
        if !metas.contains_key(&current) {
            return Err(DbError::Incomplete(format!(
                "current snapshot {current} has no metadata"
            )));
        }
        let mut route_sets = BTreeMap::new();
        for entry in txn.open_table(ROUTE_SETS)?.iter()? {
            let (k, v) = entry?;
            route_sets.insert(k.value(), RouteSet::decode(v.value())?.version);
        }
        Ok(Some(Reader {
            tenants: txn.open_table(TENANTS)?,
            config_bodies: txn.open_table(CONFIG_BODIES)?,
            prompt_bodies: txn.open_table(PROMPT_BODIES)?,
            routes: txn.open_table(ROUTES)?,
            layer1: txn.open_table(LAYER1)?,
            route_sets,
            current,
            metas,
        }))
    }
}

/// Sets the early-writeback switch for as long as it lives.
struct EagerWhile<'a>(&'a AtomicBool);

impl<'a> EagerWhile<'a> {
    fn set(switch: &'a AtomicBool, on: bool) -> Self {
        switch.store(on, Ordering::Relaxed);
        Self(switch)
    }
}

impl Drop for EagerWhile<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
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
}

impl Ingested {
    /// The version whose body to serve: the previous snapshot's when the ETag
    /// is unchanged, else this one's, after writing `body` under `key`
    /// (`None` if its frame was not decoded). `body` is called only to write.
    fn share_or_write<'b>(
        &mut self,
        bodies: &mut Table<(u64, &str), &[u8]>,
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
                    DbError::Incomplete(format!("the body of {} was not decoded", key.1))
                })?;
                bodies.insert(key, body)?;
                self.bodies_written += 1;
                self.bytes_written += body.len() as u64;
                Ok(key.0)
            }
        }
    }
}

/// A tenant's row in [`TENANTS`]: which version's body it serves for its
/// config and its prompt, and their ETags. Stored as 16 + 2 × 64 bytes:
/// config body version and prompt body version (u64 LE), then both ETags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TenantRow {
    /// The last version the row serves; [`OPEN`] while it serves the newest.
    last: u64,
    config_version: u64,
    prompt_version: u64,
    config_etag: [u8; ETAG_LEN],
    prompt_etag: [u8; ETAG_LEN],
}

const ROW_LEN: usize = 24 + 2 * ETAG_LEN;

/// [`TenantRow::last`] of a row that serves the newest snapshot.
const OPEN: u64 = u64::MAX;

impl TenantRow {
    fn encode(&self) -> [u8; ROW_LEN] {
        let mut out = [0u8; ROW_LEN];
        out[..8].copy_from_slice(&self.last.to_le_bytes());
        out[8..16].copy_from_slice(&self.config_version.to_le_bytes());
        out[16..24].copy_from_slice(&self.prompt_version.to_le_bytes());
        out[24..24 + ETAG_LEN].copy_from_slice(&self.config_etag);
        out[24 + ETAG_LEN..].copy_from_slice(&self.prompt_etag);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, DbError> {
        let bad = || {
            DbError::Incomplete(format!(
                "tenant row of {} bytes, want {ROW_LEN}",
                bytes.len()
            ))
        };
        let row: &[u8; ROW_LEN] = bytes.try_into().map_err(|_| bad())?;
        let (versions, etags) = row.split_at(24);
        let (config_etag, prompt_etag) = etags.split_at(ETAG_LEN);
        let u64_at = |i: usize| {
            versions[i..i + 8]
                .try_into()
                .map(u64::from_le_bytes)
                .map_err(|_| bad())
        };
        Ok(Self {
            last: u64_at(0)?,
            config_version: u64_at(8)?,
            prompt_version: u64_at(16)?,
            config_etag: config_etag.try_into().map_err(|_| bad())?,
            prompt_etag: prompt_etag.try_into().map_err(|_| bad())?,
        })
    }
}

/// Deletes the rows closed before version `oldest` (the oldest retained),
/// and each body the tenant's next row does not share.
fn prune_tenants(
    oldest: u64,
    tenants: &mut Table<(&str, u64), &[u8]>,
    closed: &mut Table<(u64, &str), u64>,
    config_bodies: &mut Table<(u64, &str), &[u8]>,
    prompt_bodies: &mut Table<(u64, &str), &[u8]>,
) -> Result<(), DbError> {
    let expired = closed
        .range((0, "")..(oldest, ""))?
        .map(|e| {
            e.map(|(k, first)| {
                let (last, tenant) = k.value();
                (last, tenant.to_owned(), first.value())
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Oldest first: a row whose bodies its successor shares is deleted before
    // that successor, which then decides the bodies' fate.
    for (last, tenant, first) in expired {
        closed.remove((last, tenant.as_str()))?;
        let Some(row) = tenants
            .remove((tenant.as_str(), first))?
            .map(|g| TenantRow::decode(g.value()))
            .transpose()?
        else {
            continue;
        };
        let next = tenants
            .range((tenant.as_str(), first + 1)..=(tenant.as_str(), OPEN))?
            .next()
            .transpose()?
            .map(|(_, g)| TenantRow::decode(g.value()))
            .transpose()?;
        if next.is_none_or(|n| n.config_version != row.config_version) {
            config_bodies.remove((row.config_version, tenant.as_str()))?;
        }
        if next.is_none_or(|n| n.prompt_version != row.prompt_version) {
            prompt_bodies.remove((row.prompt_version, tenant.as_str()))?;
        }
    }
    Ok(())
}

/// The open rows of the committed state, in tenant order: the rows the
/// newest stored snapshot serves.
struct OpenRows<'a> {
    rows: Option<redb::Range<'a, (&'static str, u64), &'static [u8]>>,
}

impl OpenRows<'_> {
    /// The next open row: tenant, first version, row.
    fn next(&mut self) -> Result<Option<(String, u64, TenantRow)>, DbError> {
        let Some(rows) = self.rows.as_mut() else {
            return Ok(None);
        };
        for entry in rows {
            let (key, value) = entry?;
            let row = TenantRow::decode(value.value())?;
            if row.last == OPEN {
                let (tenant, first) = key.value();
                return Ok(Some((tenant.to_owned(), first, row)));
            }
        }
        Ok(None)
    }
}

/// SHA-256 of `config hash ‖ Layer 1 hash`: changes whenever the rendered
/// prompt can. FORMAT.md orders each tenant's config record before its prompt.
fn prompt_etag(config_etag: &[u8; ETAG_LEN], layer1_hash: &str) -> [u8; ETAG_LEN] {
    let mut input = Vec::with_capacity(ETAG_LEN + layer1_hash.len());
    input.extend_from_slice(config_etag);
    input.extend_from_slice(layer1_hash.as_bytes());
    let mut etag = [0u8; ETAG_LEN];
    etag.copy_from_slice(sha256_hex(&input).as_bytes());
    etag
}

/// A snapshot's route set in [`ROUTE_SETS`]: the version whose routes it
/// serves, and the SHA-256 of the route records (equal digests, equal
/// routes). Stored as the version (u64 LE) then the 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RouteSet {
    version: u64,
    digest: [u8; ETAG_LEN],
}

impl RouteSet {
    fn new(version: u64, digest: &str) -> Result<Self, DbError> {
        let digest = digest
            .as_bytes()
            .try_into()
            .map_err(|_| DbError::Incomplete("route digest is not 64 hex digits".into()))?;
        Ok(Self { version, digest })
    }

    fn encode(&self) -> [u8; 8 + ETAG_LEN] {
        let mut out = [0u8; 8 + ETAG_LEN];
        out[..8].copy_from_slice(&self.version.to_le_bytes());
        out[8..].copy_from_slice(&self.digest);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, DbError> {
        let bad = || DbError::Incomplete(format!("route set of {} bytes", bytes.len()));
        let (version, digest) = bytes.split_at_checked(8).ok_or_else(bad)?;
        Ok(Self {
            version: u64::from_le_bytes(version.try_into().map_err(|_| bad())?),
            digest: digest.try_into().map_err(|_| bad())?,
        })
    }
}

/// Drops `old`'s route set entry, and its routes when no kept version
/// serves them.
fn prune_routes(
    old: u64,
    kept: &[u64],
    route_sets: &mut Table<u64, &[u8]>,
    routes: &mut Table<(u64, &str), &[u8]>,
) -> Result<(), DbError> {
    let Some(set) = route_sets
        .remove(old)?
        .map(|g| RouteSet::decode(g.value()))
        .transpose()?
    else {
        return Ok(());
    };
    for k in kept {
        if let Some(g) = route_sets.get(*k)?
            && RouteSet::decode(g.value())?.version == set.version
        {
            return Ok(());
        }
    }
    routes.retain_in((set.version, "")..(set.version + 1, ""), |_, _| false)?;
    Ok(())
}

/// A route's body: the tenant that owns the number.
#[derive(Serialize)]
struct RouteBody<'a> {
    tenant_id: &'a str,
}

/// A stored value, borrowed from redb's page: the body points into the page
/// the read transaction keeps alive; the ETag is a 64-byte copy.
#[derive(Clone)]
pub struct Entry {
    etag: Option<[u8; ETAG_LEN]>,
    body: Bytes,
}

impl Entry {
    fn new(etag: Option<[u8; ETAG_LEN]>, guard: redb::OwnedAccessGuard<&'static [u8]>) -> Self {
        Self {
            etag,
            body: Bytes::from_owner(Page(guard)),
        }
    }

    /// A value stored as `etag ‖ body`.
    fn etag_prefixed(guard: redb::OwnedAccessGuard<&'static [u8]>) -> Result<Self, DbError> {
        let bytes = Bytes::from_owner(Page(guard));
        let etag = bytes
            .get(..ETAG_LEN)
            .and_then(|e| <[u8; ETAG_LEN]>::try_from(e).ok())
            .ok_or_else(|| DbError::Incomplete("stored value shorter than its ETag".into()))?;
        Ok(Self {
            etag: Some(etag),
            body: bytes.slice(ETAG_LEN..),
        })
    }

    /// The ETag (empty for values served without one).
    pub fn etag(&self) -> &[u8] {
        self.etag.as_ref().map_or(&[], |e| e.as_slice())
    }

    /// The body, as a zero-copy slice of the page.
    pub fn body(&self) -> Bytes {
        self.body.clone()
    }
}

/// Owner of a redb value for [`Bytes::from_owner`].
struct Page(redb::OwnedAccessGuard<&'static [u8]>);

impl AsRef<[u8]> for Page {
    fn as_ref(&self) -> &[u8] {
        self.0.value()
    }
}

/// A read view over every retained snapshot, shared by all requests until
/// the next ingest swaps in a new one.
pub struct Reader {
    tenants: ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    config_bodies: ReadOnlyTable<(u64, &'static str), &'static [u8]>,
    prompt_bodies: ReadOnlyTable<(u64, &'static str), &'static [u8]>,
    routes: ReadOnlyTable<(u64, &'static str), &'static [u8]>,
    layer1: ReadOnlyTable<u64, &'static [u8]>,
    /// Snapshot version → the version whose route set it serves.
    route_sets: BTreeMap<u64, u64>,
    /// The version served by default.
    pub current: u64,
    /// Metadata of every retained version.
    pub metas: BTreeMap<u64, SnapshotMeta>,
}

impl Reader {
    /// Metadata of the current snapshot.
    pub fn current_meta(&self) -> Option<&SnapshotMeta> {
        self.metas.get(&self.current)
    }

    /// The row serving `tenant` in `version` (a retained one): the last row
    /// starting at or before it, if it has not closed before it.
    fn row(&self, version: u64, tenant: &str) -> Result<Option<TenantRow>, DbError> {
        if !self.metas.contains_key(&version) {
            return Ok(None);
        }
        let Some(entry) = self
            .tenants
            .range((tenant, 0)..=(tenant, version))?
            .next_back()
        else {
            return Ok(None);
        };
        let row = TenantRow::decode(entry?.1.value())?;
        Ok((row.last >= version).then_some(row))
    }

    /// A tenant's effective config (ETag: its config hash).
    pub fn config(&self, version: u64, tenant: &str) -> Result<Option<Entry>, DbError> {
        let Some(row) = self.row(version, tenant)? else {
            return Ok(None);
        };
        let body = body(&self.config_bodies, row.config_version, tenant, "config")?;
        Ok(Some(Entry::new(Some(row.config_etag), body)))
    }

    /// A tenant's combined system prompt (ETag: see `prompt_etag`).
    pub fn prompt(&self, version: u64, tenant: &str) -> Result<Option<Entry>, DbError> {
        let Some(row) = self.row(version, tenant)? else {
            return Ok(None);
        };
        let body = body(&self.prompt_bodies, row.prompt_version, tenant, "prompt")?;
        Ok(Some(Entry::new(Some(row.prompt_etag), body)))
    }

    /// The route of a number, as `{"tenant_id":"…"}`.
    pub fn route(&self, version: u64, number: &str) -> Result<Option<Entry>, DbError> {
        let Some(set) = self.route_sets.get(&version) else {
            return Ok(None);
        };
        Ok(self
            .routes
            .get_owned((*set, number))?
            .map(|g| Entry::new(None, g)))
    }

    /// Layer 1 as JSON.
    pub fn layer1(&self, version: u64) -> Result<Option<Entry>, DbError> {
        self.layer1
            .get_owned(version)?
            .map(Entry::etag_prefixed)
            .transpose()
    }
}

/// The body a tenant row points at; its absence is damage, not a 404.
fn body(
    table: &ReadOnlyTable<(u64, &'static str), &'static [u8]>,
    version: u64,
    tenant: &str,
    what: &str,
) -> Result<redb::OwnedAccessGuard<&'static [u8]>, DbError> {
    table.get_owned((version, tenant))?.ok_or_else(|| {
        DbError::Incomplete(format!(
            "{what} body of {tenant} from snapshot {version} is missing"
        ))
    })
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use strata_common::bundle::{
        self, Limits, Manifest, PayloadWriter, Provenance, SignatureCheck,
    };

    use super::*;

    fn meta(version: u64, tenants: u64) -> SnapshotMeta {
        SnapshotMeta {
            version,
            bundle_sha256: String::new(),
            bundle_size: 0,
            created_at: String::new(),
            expires_at: String::new(),
            layer1_version: String::new(),
            tenant_count: tenants,
            source: String::new(),
            fetched_at: String::new(),
            pinned: false,
            manifest: String::new(),
            signatures: Vec::new(),
        }
    }

    /// Layer 1 of the test payloads: what their prompts start with.
    const LAYER1_JSON: &str = r#"{"base_prompt":"base"}"#;

    /// A tenant's combined prompt under [`LAYER1_JSON`], ending in `text`.
    fn prompt(text: &str) -> String {
        format!("base{}{text}", strata_common::render::SEPARATOR)
    }

    /// A canonical config with `member` (a `"key":value` sorting after
    /// `config_hash`), sealed with its real hash: `(hash, config)`.
    fn sealed(member: &str) -> (String, String) {
        let hash = sha256_hex(format!("{{{member}}}").as_bytes());
        let config = format!("{{\"config_hash\":\"{hash}\",{member}}}");
        (hash, config)
    }

    /// A real payload holding tenant `t1` at `version` (its config hash
    /// changes with it, as the publisher makes it), whose manifest claims
    /// `tenants` tenants; with `route` routed to it.
    fn payload(version: u64, tenants: u64, route: Option<&str>) -> PayloadReader<Cursor<Vec<u8>>> {
        payload_of(version, &[("t1", version)], tenants, route)
    }

    /// A real payload of `version` holding each `(tenant, content version)`
    /// of `tenants` (in id order), whose manifest claims `claimed` tenants;
    /// with `route` routed to the first.
    fn payload_of(
        version: u64,
        tenants: &[(&str, u64)],
        claimed: u64,
        route: Option<&str>,
    ) -> PayloadReader<Cursor<Vec<u8>>> {
        let mut w = PayloadWriter::new(1).expect("writer");
        w.layer1(LAYER1_JSON.as_bytes()).expect("layer1");
        for (tenant, content) in tenants {
            let (hash, config) = sealed(&format!("\"v\":{content}"));
            w.tenant(
                tenant,
                &hash,
                config.as_bytes(),
                prompt(&format!("prompt v{content}")).as_bytes(),
            )
            .expect("tenant");
        }
        if let Some(number) = route {
            w.route(number, tenants[0].0).expect("route");
        }
        verified(version, claimed, w)
    }

    /// The payload `w` wrote, in a bundle of `version` whose manifest claims
    /// `claimed` tenants, verified and ready to ingest.
    fn verified(version: u64, claimed: u64, w: PayloadWriter) -> PayloadReader<Cursor<Vec<u8>>> {
        let p = w.finish().expect("finish");
        let manifest = Manifest {
            kind: bundle::MANIFEST_TYPE.into(),
            format: bundle::FORMAT_VERSION,
            version,
            created_at: strata_common::time::format(strata_common::time::now()),
            expires_at: strata_common::time::format(strata_common::time::now()),
            layer1_version: String::new(),
            tenant_count: claimed,
            record_count: p.record_count,
            payload_size: p.compressed.len() as u64,
            index_size: p.index_size,
            routes_sha256: p.routes_sha256.clone(),
            payload_raw_size: p.raw_size,
            payload_sha256: p.sha256.clone(),
            provenance: Provenance::default(),
        };
        let bytes = bundle::write_bundle(&manifest, &p.compressed, &[]).expect("bundle");
        bundle::verify(
            Cursor::new(bytes),
            SignatureCheck::SkipForInspection,
            &Limits::default(),
        )
        .expect("verify")
        .payload()
        .expect("payload")
    }

    fn records(version: u64) -> PayloadReader<Cursor<Vec<u8>>> {
        payload(version, 1, Some("+15550000001"))
    }

    #[test]
    fn the_body_points_into_the_redb_page_not_a_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&dir.path().join("s.redb"), 1 << 20).expect("open");
        db.ingest(&meta(1, 1), &mut records(1), 5).expect("ingest");
        let reader = db.reader().expect("reader").expect("has snapshot");
        let guard = reader
            .prompt_bodies
            .get_owned((1u64, "t1"))
            .expect("get")
            .expect("present");
        let page_ptr = guard.value().as_ptr();
        let entry = reader.prompt(1, "t1").expect("get").expect("present");
        let body = entry.body();
        assert_eq!(&body[..], prompt("prompt v1").as_bytes());
        assert_eq!(
            body.as_ptr(),
            page_ptr,
            "the served body is the bytes of redb's cached page"
        );
        let again = Entry::new(None, guard).body();
        assert_eq!(again.as_ptr(), page_ptr, "Entry wraps the guard, no copy");
    }

    #[test]
    fn a_changed_config_whose_hash_is_not_the_index_s_is_refused_and_nothing_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&dir.path().join("s.redb"), 1 << 20).expect("open");
        db.ingest(&meta(1, 1), &mut records(1), 5).expect("ingest");
        let mut w = PayloadWriter::new(1).expect("writer");
        w.layer1(LAYER1_JSON.as_bytes()).expect("layer1");
        let config = format!("{{\"config_hash\":\"{}\"}}", "a".repeat(64));
        w.tenant("t1", &"b".repeat(64), config.as_bytes(), b"prompt")
            .expect("tenant");
        let err = db
            .ingest(&meta(2, 1), &mut verified(2, 1, w), 5)
            .expect_err("a config that does not match its index entry");
        let err = err.to_string();
        assert!(
            err.contains("the config of t1 does not have the config_hash"),
            "{err}"
        );
        let r = db.reader().expect("reader").expect("v1 still stored");
        assert_eq!(r.current, 1);
        assert!(r.config(2, "t1").expect("get").is_none());
    }

    #[test]
    fn a_snapshot_is_committed_durably_unless_its_bodies_outgrow_the_write_buffer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let roomy = Db::open(&dir.path().join("roomy.redb"), 1 << 20).expect("open");
        let small = roomy
            .ingest(&meta(1, 1), &mut records(1), 5)
            .expect("ingest");
        assert!(small.durable, "{small:?}");
        assert!(small.bytes_written > 0);

        // A write buffer smaller than one tenant's bodies: served first,
        // made durable by persist, and still whole after a reopen.
        let path = dir.path().join("tight.redb");
        let tight = Db::open(&path, 2 * small.bytes_written as usize - 2).expect("open");
        let large = tight
            .ingest(&meta(1, 1), &mut records(1), 5)
            .expect("ingest");
        assert!(!large.durable, "{large:?}");
        tight.persist().expect("persist");
        drop(tight);
        let reopened = Db::open(&path, 1 << 20).expect("reopen");
        let reader = reopened.reader().expect("reader").expect("has snapshot");
        let body = reader.prompt(1, "t1").expect("get").expect("present");
        assert_eq!(&body.body()[..], prompt("prompt v1").as_bytes());
    }

    /// Bytes this thread has passed to `write`-family system calls.
    fn thread_bytes_written() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").expect("/proc/thread-self/io");
        io.lines()
            .find_map(|l| l.strip_prefix("wchar: "))
            .and_then(|n| n.parse().ok())
            .expect("wchar")
    }

    #[test]
    fn a_snapshot_larger_than_the_write_buffer_is_written_to_the_file_once() {
        // redb reads back every leaf page its write buffer evicted, to
        // checksum it at commit, and would write each out a second time.
        let payload = || {
            let mut w = PayloadWriter::new(1).expect("writer");
            w.layer1(LAYER1_JSON.as_bytes()).expect("layer1");
            for i in 0..400 {
                let pad = "c".repeat(1500);
                let (hash, config) = sealed(&format!("\"pad\":\"{pad}{i}\""));
                let prompt = prompt(&format!("prompt {i} {}", "p".repeat(2500)));
                w.tenant(
                    &format!("t{i:04}"),
                    &hash,
                    config.as_bytes(),
                    prompt.as_bytes(),
                )
                .expect("tenant");
            }
            verified(1, 400, w)
        };
        let dir = tempfile::tempdir().expect("tempdir");
        // Bytes written to ingest the snapshot and make it durable, with a
        // redb cache (and so write buffer) of `cache` bytes.
        let written_with = |cache: usize| {
            let db = Db::open(&dir.path().join(format!("{cache}.redb")), cache).expect("open");
            let before = thread_bytes_written();
            let done = db.ingest(&meta(1, 400), &mut payload(), 2).expect("ingest");
            if !done.durable {
                db.persist().expect("persist");
            }
            let reader = db.reader().expect("reader").expect("snapshot");
            let body = reader.prompt(1, "t0399").expect("get").expect("present");
            assert!(body.body().starts_with(prompt("prompt 399 ").as_bytes()));
            (thread_bytes_written() - before, done.durable)
        };
        let (roomy, durable) = written_with(64 << 20);
        assert!(durable, "fits the write buffer");
        let (tight, durable) = written_with(256 << 10);
        assert!(!durable, "outgrows the write buffer");
        assert!(
            tight < roomy * 3 / 2,
            "{tight} bytes written through a small write buffer, {roomy} through one it fits"
        );
    }

    fn count<K: redb::Key + 'static, V: redb::Value + 'static>(
        db: &Db,
        table: TableDefinition<K, V>,
    ) -> u64 {
        let txn = db.db.begin_read().expect("read");
        use redb::ReadableTableMetadata;
        txn.open_table(table).expect("table").len().expect("len")
    }

    #[test]
    fn unchanged_bodies_are_shared_and_freed_with_the_last_version_using_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&dir.path().join("s.redb"), 1 << 20).expect("open");
        let same_as_v1 = |v: u64| db.ingest(&meta(v, 1), &mut payload(1, 1, None), 2);
        let first = db.ingest(&meta(1, 1), &mut records(1), 2).expect("v1");
        assert_eq!((first.bodies_written, first.bodies_shared), (2, 0));
        let second = same_as_v1(2).expect("v2");
        assert_eq!(
            (second.bodies_written, second.bodies_shared),
            (0, 2),
            "an unchanged tenant writes no body"
        );
        let r = db.reader().expect("reader").expect("snapshot");
        assert_eq!(
            r.config(2, "t1").expect("get").expect("v2").body().as_ptr(),
            r.config(1, "t1").expect("get").expect("v1").body().as_ptr(),
            "both versions serve the one stored body"
        );
        drop(r);

        // v3 changes the tenant; v1 is pruned but v2 still uses its bodies.
        db.ingest(&meta(3, 1), &mut records(3), 2).expect("v3");
        assert_eq!(count(&db, CONFIG_BODIES), 2);
        let r = db.reader().expect("reader").expect("snapshot");
        assert_eq!(
            &r.prompt(2, "t1").expect("get").expect("v2").body()[..],
            prompt("prompt v1").as_bytes()
        );
        drop(r);
        // v4 prunes v2, the last version using v1's bodies: they go too.
        db.ingest(&meta(4, 1), &mut records(4), 2).expect("v4");
        assert_eq!(count(&db, CONFIG_BODIES), 2, "v3's and v4's configs");
        assert_eq!(count(&db, PROMPT_BODIES), 2);
        assert_eq!(count(&db, TENANTS), 2);
        assert!(
            db.ingest(&meta(4, 1), &mut records(4), 2).is_err(),
            "v4 again"
        );
    }

    #[test]
    fn a_tenant_that_leaves_is_gone_from_the_next_version_and_freed_with_the_last_that_had_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&dir.path().join("s.redb"), 1 << 20).expect("open");
        let both = [("t1", 1), ("t2", 1)];
        db.ingest(&meta(1, 2), &mut payload_of(1, &both, 2, None), 2)
            .expect("v1");
        let v2 = db
            .ingest(&meta(2, 1), &mut payload_of(2, &[("t1", 1)], 1, None), 2)
            .expect("v2");
        assert_eq!(v2.rows_written, 0, "t1 is unchanged, t2 only closes");
        let r = db.reader().expect("reader").expect("snapshot");
        assert!(r.config(2, "t2").expect("get").is_none(), "gone from v2");
        assert!(r.config(1, "t2").expect("get").is_some(), "still in v1");
        assert!(r.config(2, "t1").expect("get").is_some());
        drop(r);
        // t2 comes back in v3, changed; v1 is pruned, and with it t2's first row.
        db.ingest(
            &meta(3, 2),
            &mut payload_of(3, &[("t1", 1), ("t2", 3)], 2, None),
            2,
        )
        .expect("v3");
        let r = db.reader().expect("reader").expect("snapshot");
        assert!(r.config(2, "t2").expect("get").is_none());
        assert_eq!(
            &r.prompt(3, "t2").expect("get").expect("back in v3").body()[..],
            prompt("prompt v3").as_bytes()
        );
        assert_eq!(
            &r.prompt(3, "t1").expect("get").expect("v3").body()[..],
            prompt("prompt v1").as_bytes(),
            "t1 still serves the body v1 wrote"
        );
        drop(r);
        assert_eq!(count(&db, TENANTS), 2, "t1's one row, t2's new row");
        assert_eq!(count(&db, CONFIG_BODIES), 2, "t2's v1 body was freed");
        assert_eq!(count(&db, CLOSED), 0);
    }

    #[test]
    fn a_file_with_another_layout_is_emptied_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        {
            let db = redb::Database::create(&path).expect("create");
            let txn = db.begin_write().expect("write");
            txn.open_table(META)
                .expect("meta")
                .insert("current", 7)
                .expect("insert");
            let old: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("configs");
            txn.open_table(old)
                .expect("old")
                .insert((7, "t1"), b"x".as_slice())
                .expect("insert");
            txn.commit().expect("commit");
        }
        let db = Db::open(&path, 1 << 20).expect("open");
        assert!(
            db.reader().expect("reader").is_none(),
            "nothing served from the old layout"
        );
        db.ingest(&meta(8, 1), &mut records(8), 2).expect("ingest");
        assert_eq!(db.reader().expect("reader").expect("snapshot").current, 8);
    }

    #[test]
    fn retains_the_newest_versions_and_rolls_back_bad_ingests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&dir.path().join("s.redb"), 1 << 20).expect("open");
        for v in 1..=4 {
            db.ingest(&meta(v, 1), &mut records(v), 2).expect("ingest");
        }
        let r = db.reader().expect("reader").expect("snapshot");
        assert_eq!(r.current, 4);
        assert_eq!(r.metas.keys().copied().collect::<Vec<_>>(), vec![3, 4]);
        assert!(r.prompt(2, "t1").expect("get").is_none());
        assert_eq!(
            &r.prompt(3, "t1").expect("get").expect("v3").body()[..],
            prompt("prompt v3").as_bytes()
        );
        assert_eq!(
            &r.route(4, "+15550000001")
                .expect("get")
                .expect("route")
                .body()[..],
            br#"{"tenant_id":"t1"}"#
        );
        drop(r);

        assert_eq!(
            count(&db, ROUTES),
            1,
            "versions with the same routes share one stored set"
        );
        db.ingest(&meta(5, 1), &mut payload(5, 1, Some("+15550000002")), 2)
            .expect("v5");
        let r = db.reader().expect("reader").expect("snapshot");
        assert!(r.route(5, "+15550000001").expect("get").is_none());
        assert!(r.route(5, "+15550000002").expect("get").is_some());
        assert!(
            r.route(4, "+15550000001").expect("get").is_some(),
            "v4 still serves the set it shares with pruned versions"
        );
        drop(r);
        assert_eq!(count(&db, ROUTES), 2);
        db.ingest(&meta(6, 1), &mut payload(6, 1, Some("+15550000002")), 2)
            .expect("v6");
        assert_eq!(count(&db, ROUTES), 1, "v4's set went with v4");

        // The manifest claims two tenants; the payload holds one.
        assert!(
            db.ingest(&meta(7, 1), &mut payload(7, 2, Some("+15550000001")), 2)
                .is_err()
        );
        let r = db.reader().expect("reader").expect("snapshot");
        assert_eq!(
            r.current, 6,
            "a failed ingest leaves the previous snapshot current"
        );
        assert!(r.prompt(7, "t1").expect("get").is_none());
    }
}
