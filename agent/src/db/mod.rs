//! The local snapshot store: one redb file, `data_dir/strata.redb`.
//!
//! Every index table is keyed by snapshot version first, so the retained
//! snapshots (`keep`) coexist and `?snapshot=N` reads an older one. A
//! snapshot is written in one write transaction, together with its metadata,
//! the "current" marker and the pruning of older versions: after a crash the
//! file holds the previous snapshot or the new one, never a mix. A new
//! node's first snapshot, with nothing served to keep, is written in
//! durable parts whose leftovers are deleted at open (`cold`).
//!
//! Consecutive snapshots share almost every tenant, so a tenant's row covers
//! a range of versions: it is written when the tenant appears or changes and
//! closed (its last version set) when the tenant changes again or leaves. Its
//! config and prompt bodies are written once, under the version that
//! introduced them. A publish that changes ten tenants of 100,000 writes ten
//! rows and ten bodies and closes ten rows, whatever the tenant count.
//! Closed rows and their bodies are deleted once no retained version is in
//! their range. Ranges are in version numbers, so a snapshot newer than
//! every stored one is written by walking the open rows (`ingest`), and an
//! older one (a pin back to a version the node does not hold) is written
//! between them by splitting the rows that cover it (`older`); a retained
//! one is switched to (`marks`).
//!
//! Bodies are stored exactly as they are served, in page-sized pieces
//! (`bodies`), so a lookup hands redb's page to the HTTP response (or
//! gathers a long body's pieces) without re-serialising.
//!
//! The module follows the file's seams: this file holds the schema, the
//! metadata and opening (with migration); `bodies` how a body fills redb's
//! pages; `rows` the encoding of tenant
//! rows and route sets; `ingest` the one write transaction (`cold` the
//! parts of a first one); `keep` which
//! versions stay; `read` the
//! read view the HTTP handlers serve from.

mod bodies;
mod cold;
mod ingest;
mod keep;
mod marks;
mod older;
mod read;
mod rows;
#[cfg(test)]
mod tests;
mod tree;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use strata_common::bundle::BundleError;
use strata_common::sign::SignatureEntry;

pub use ingest::Ingested;
pub use keep::Keep;
pub use marks::Marks;
pub use read::{Entry, Reader};

use crate::writeback::{EagerWriteback, Written, open_data_file};

/// `(tenant id, first version)` → [`TenantRow`]: the versions through which
/// the tenant is unchanged, where its bodies are, and their ETags.
const TENANTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("tenants");
/// `(last version, tenant id)` → first version: the closed rows of
/// [`TENANTS`], oldest first, so pruning finds them without a scan.
const CLOSED: TableDefinition<(u64, &str), u64> = TableDefinition::new("closed");
/// `(version that introduced it, tenant id)` → the effective config JSON's
/// tail and the pieces holding the rest (`bodies`).
const CONFIG_BODIES: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("config_bodies");
/// `(version that introduced it, tenant id)` → the combined system prompt's
/// tail and the pieces holding the rest (`bodies`).
const PROMPT_BODIES: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("prompt_bodies");
/// `(version that introduced the route set, E.164)` → `{"tenant_id":"…"}`.
const ROUTES: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("routes");
/// version → [`RouteSet`]: which version's routes it serves.
const ROUTE_SETS: TableDefinition<u64, &[u8]> = TableDefinition::new("route_sets");
/// version → Layer 1 SHA-256 (64 hex bytes) ‖ Layer 1 JSON.
const LAYER1: TableDefinition<u64, &[u8]> = TableDefinition::new("layer1");
/// version → [`SnapshotMeta`] JSON.
const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");
/// `current` → the version served; `schema` → [`SCHEMA`]; the rollback
/// marks (`marks`).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The table layout this module writes; a file with another is emptied at open.
const SCHEMA: u64 = 5;

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

/// Why the database failed. redb's errors keep their type, one variant per
/// kind of operation that can fail, so a caller can tell a full disk
/// (`Storage`, `Commit`) from a damaged file.
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
    /// Another process holds the file (redb's lock).
    #[error(
        "{} is in use by another process (another agent with the same data_dir?); stop it, or give this agent its own data_dir",
        path.display()
    )]
    InUse {
        /// The file.
        path: std::path::PathBuf,
    },
    /// redb could not open the file as a database.
    #[error("redb database: {0}")]
    Database(#[from] redb::DatabaseError),
    /// A read or write transaction could not begin.
    #[error("redb transaction: {0}")]
    Transaction(#[from] redb::TransactionError),
    /// A table could not be opened, created or deleted.
    #[error("redb table: {0}")]
    Table(#[from] redb::TableError),
    /// Reading or writing pages failed (a full disk, an I/O error).
    #[error("redb storage: {0}")]
    Storage(#[from] redb::StorageError),
    /// The commit failed (a full disk, an I/O error): nothing was written.
    #[error("redb commit: {0}")]
    Commit(#[from] redb::CommitError),
    /// The transaction's durability could not be set.
    #[error("redb durability: {0}")]
    Durability(#[from] redb::SetDurabilityError),
    /// A record of the bundle failed to decode (ingest is rolled back).
    #[error("bundle: {0}")]
    Bundle(#[from] BundleError),
    /// The version is stored already: snapshots are immutable.
    #[error("snapshot {version} is already stored")]
    AlreadyStored {
        /// The version.
        version: u64,
    },
    /// The payload held another number of tenants than its manifest says.
    #[error("snapshot incomplete: {found} tenants for {expected} in the manifest")]
    TenantCount {
        /// Tenants ingested.
        found: u64,
        /// The manifest's count.
        expected: u64,
    },
    /// The file is open read-only (its directory cannot be written).
    #[error(
        "the snapshot file is open read-only: data_dir cannot be written (a read-only mount or its permissions); make it writable, the agent then opens the file again"
    )]
    ReadOnly,
    /// The file is closed after an I/O error and could not be opened again yet.
    #[error(
        "the snapshot file is closed after an I/O error and could not be opened again yet (a full disk?)"
    )]
    Closed,
    /// A committed snapshot cannot be read back: the file names no current one.
    #[error("the snapshot file names no current snapshot")]
    NoCurrent,
    /// Stored metadata or a stored row does not decode: the file is damaged.
    #[error("damaged snapshot file: {0}")]
    Damaged(String),
    /// Metadata could not be encoded.
    #[error("encoding snapshot metadata: {0}")]
    Encode(#[from] serde_json::Error),
}

impl DbError {
    /// Whether the file itself is damaged (not locked by another agent, not
    /// unreadable for lack of permission): it can be moved aside and the
    /// snapshot fetched again from the store.
    pub fn is_damage(&self) -> bool {
        use redb::{DatabaseError, StorageError};
        match self {
            DbError::Database(DatabaseError::Storage(StorageError::Corrupted(_)))
            | DbError::Database(DatabaseError::UpgradeRequired(_))
            | DbError::Database(DatabaseError::RepairAborted)
            | DbError::Storage(StorageError::Corrupted(_))
            | DbError::Damaged(_) => true,
            // "Not a redb database: magic number mismatch".
            DbError::Database(DatabaseError::Storage(StorageError::Io(e)))
                if e.kind() == std::io::ErrorKind::InvalidData =>
            {
                true
            }
            DbError::Open { .. }
            | DbError::InUse { .. }
            | DbError::Database(_)
            | DbError::Transaction(_)
            | DbError::Table(_)
            | DbError::Storage(_)
            | DbError::Commit(_)
            | DbError::Durability(_)
            | DbError::Bundle(_)
            | DbError::AlreadyStored { .. }
            | DbError::TenantCount { .. }
            | DbError::NoCurrent
            | DbError::ReadOnly
            | DbError::Closed
            | DbError::Encode(_) => false,
        }
    }
}

/// The redb file.
pub struct Db {
    db: Handle,
    /// Where the file is, and redb's cache size: to open it again.
    path: std::path::PathBuf,
    cache_bytes: usize,
    /// How many bytes of pages redb buffers in memory before writing them to
    /// the file: half its cache.
    write_buffer_bytes: u64,
    /// Set during an ingest while nothing is served: see [`EagerWriteback`].
    eager_writeback: Arc<AtomicBool>,
    /// Bytes of bodies per durable part of a first apply (`cold`).
    pub(crate) part_bytes: u64,
    /// The pages the backend wrote, forgotten after each commit.
    written: Arc<Written>,
}

/// How the file is open: for writing (the normal case), read-only (its
/// directory is on a read-only filesystem: what is on disk is served, no
/// update can be applied), or not at all (an empty in-memory stand-in,
/// while the file cannot be opened again after an I/O error).
enum Handle {
    Write(redb::Database),
    ReadOnly(redb::ReadOnlyDatabase),
    Closed(redb::Database),
}

impl Handle {
    fn begin_read(&self) -> Result<redb::ReadTransaction, redb::TransactionError> {
        use redb::ReadableDatabase;
        match self {
            Handle::Write(db) | Handle::Closed(db) => db.begin_read(),
            Handle::ReadOnly(db) => db.begin_read(),
        }
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, DbError> {
        match self {
            Handle::Write(db) => Ok(db.begin_write()?),
            Handle::ReadOnly(_) => Err(DbError::ReadOnly),
            Handle::Closed(_) => Err(DbError::Closed),
        }
    }
}

/// Whether an open for writing failed because the file or its directory
/// cannot be written (a read-only mount, permissions), not because the
/// file is bad.
fn is_read_only(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
    )
}

impl Db {
    /// Opens (or creates) the database file; `cache_bytes` bounds redb's
    /// cache. A file that cannot be opened for writing (a read-only
    /// `data_dir`) but exists is opened read-only: see [`Db::is_writable`].
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self, DbError> {
        let eager_writeback = Arc::new(AtomicBool::new(false));
        let mut written = Arc::default();
        let db = match open_data_file(path) {
            Ok(file) => {
                let backend = EagerWriteback::new(file, eager_writeback.clone())?;
                written = backend.written();
                Handle::Write(
                    redb::Builder::new()
                        .set_cache_size(cache_bytes)
                        .create_with_backend(backend)
                        .map_err(|e| match e {
                            redb::DatabaseError::DatabaseAlreadyOpen => DbError::InUse {
                                path: path.to_path_buf(),
                            },
                            e => e.into(),
                        })?,
                )
            }
            Err(e) if is_read_only(&e) && path.exists() => {
                match redb::Builder::new()
                    .set_cache_size(cache_bytes)
                    .open_read_only(path)
                {
                    Ok(db) => Handle::ReadOnly(db),
                    // Not clean (a crash before the directory turned
                    // read-only): it cannot be recovered without writing,
                    // nor moved aside. Nothing is served until it can be.
                    Err(e) => {
                        tracing::warn!(
                            "{} cannot be written and cannot be read without recovery ({e}); serving nothing until data_dir is writable",
                            path.display()
                        );
                        Handle::Closed(
                            redb::Builder::new()
                                .create_with_backend(redb::backends::InMemoryBackend::new())?,
                        )
                    }
                }
            }
            Err(source) => {
                return Err(DbError::Open {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let this = Self {
            db,
            path: path.to_path_buf(),
            cache_bytes,
            write_buffer_bytes: cache_bytes as u64 / 2,
            eager_writeback,
            part_bytes: cold::PART_BYTES,
            written,
        };
        if this.is_writable() {
            this.migrate()?;
            this.delete_leftovers()?;
        }
        Ok(this)
    }

    /// Opens the file as [`Db::open`] does; a damaged one (the agent would
    /// otherwise exit at every start, a crash loop under `Restart=`) is
    /// moved aside to `strata.redb.damaged` (replacing an older one, for
    /// forensics) and a new one created: the store still has every snapshot.
    pub fn open_or_set_aside(path: &Path, cache_bytes: usize) -> Result<Self, DbError> {
        match Self::open(path, cache_bytes) {
            Err(e) if e.is_damage() => {
                let aside = path.with_extension("redb.damaged");
                tracing::warn!(
                    "{} is damaged ({e}); moving it to {} and fetching the snapshot from the store again",
                    path.display(),
                    aside.display()
                );
                std::fs::rename(path, &aside).map_err(|source| DbError::Open {
                    path: aside,
                    source,
                })?;
                Self::open(path, cache_bytes)
            }
            opened => opened,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether updates can be written: false while the file is open
    /// read-only or closed after an I/O error (see [`Db::needs_reopen`]).
    pub fn is_writable(&self) -> bool {
        matches!(self.db, Handle::Write(_))
    }

    /// Whether the file should be opened again before the next update:
    /// redb refuses every write after an I/O error (a full disk) until the
    /// database is reopened; a read-only file is reopened once its
    /// directory can be written again.
    pub fn needs_reopen(&self) -> bool {
        match &self.db {
            // An uncommitted write transaction is only dropped.
            Handle::Write(db) => db.begin_write().is_err(),
            Handle::ReadOnly(_) => {
                let probe = self.path.with_extension("redb.probe");
                let writable = std::fs::write(&probe, b"").is_ok()
                    && std::fs::OpenOptions::new()
                        .write(true)
                        .open(&self.path)
                        .is_ok();
                let _ = std::fs::remove_file(&probe);
                writable
            }
            Handle::Closed(_) => true,
        }
    }

    /// Whether `data_dir` has at least `bytes` free: reopening after a
    /// full disk is pointless (and costs the served snapshot) before then.
    pub fn has_room(&self, bytes: u64) -> bool {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        rustix::fs::statvfs(dir).is_ok_and(|s| s.f_bavail.saturating_mul(s.f_frsize) >= bytes)
    }

    /// Closes the file and opens it again (moving it aside if it is now
    /// found damaged). Until that succeeds the handle stays closed, and a
    /// later call tries again. Closing empties redb's cache: readers of the
    /// old handle can no longer read anything, so the caller serves a
    /// reader of the new one, or nothing.
    pub fn reopen(&mut self) -> Result<(), DbError> {
        // redb holds its lock on the file until the old handle is dropped.
        let stand_in =
            redb::Builder::new().create_with_backend(redb::backends::InMemoryBackend::new())?;
        match std::mem::replace(&mut self.db, Handle::Closed(stand_in)) {
            // Closed at once, though the served snapshot's read
            // transactions still hold the old handle's memory.
            Handle::Write(db) => {
                if let Err(e) = db.close() {
                    tracing::debug!("closing the snapshot file after an I/O error: {e}");
                }
            }
            Handle::ReadOnly(db) => {
                if let Err(e) = db.close() {
                    tracing::debug!("closing the read-only snapshot file: {e}");
                }
            }
            Handle::Closed(_) => {}
        }
        *self = Self::open_or_set_aside(&self.path, self.cache_bytes)?;
        Ok(())
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

    /// Makes every earlier commit durable (an empty commit with immediate
    /// durability flushes and fsyncs them): what follows an ingest that was
    /// not [`Ingested::durable`].
    pub fn persist(&self) -> Result<(), DbError> {
        self.db.begin_write()?.commit()?;
        self.written.forget();
        Ok(())
    }
}
