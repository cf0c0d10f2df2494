//! The local snapshot store: one redb file, `data_dir/strata.redb`.
//!
//! Every table is keyed by snapshot version first, so the last `retain`
//! snapshots coexist and `?snapshot=N` reads an older one. A snapshot is
//! written in one write transaction, together with its metadata, the
//! "current" marker and the pruning of older versions: after a crash the
//! file holds the previous snapshot or the new one, never a mix.
//!
//! Values are stored exactly as they are served (`etag ‖ body`), so a lookup
//! hands redb's page to the HTTP response without copying or re-serialising.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use redb::{ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use serde::{Deserialize, Serialize};
use strata_common::bundle::{BundleError, Record, RecordKind};
use strata_common::canonical::sha256_hex;
use strata_common::sign::SignatureEntry;

/// `(version, tenant id)` → config hash (64 hex bytes) ‖ effective config JSON.
const CONFIGS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("configs");
/// `(version, tenant id)` → prompt ETag (64 hex bytes, see [`prompt_etag`]) ‖ system prompt.
const PROMPTS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("prompts");
/// `(version, E.164)` → `{"tenant_id":"…"}`.
const ROUTES: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("routes");
/// version → Layer 1 SHA-256 (64 hex bytes) ‖ Layer 1 JSON.
const LAYER1: TableDefinition<u64, &[u8]> = TableDefinition::new("layer1");
/// version → [`SnapshotMeta`] JSON.
const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");
/// `current` → the version served.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Length of the ETag prefix of stored values.
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
    /// redb reported an error.
    #[error("redb: {0}")]
    Redb(String),
    /// A record of the bundle failed to decode (ingest is rolled back).
    #[error("bundle: {0}")]
    Bundle(#[from] BundleError),
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
}

impl Db {
    /// Opens (or creates) the database file; `cache_bytes` bounds redb's cache.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self, DbError> {
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)?;
        Ok(Self { db })
    }

    /// Writes a whole snapshot in one transaction, makes it current and prunes
    /// all but the newest `retain` versions. Any bad record rolls everything back.
    pub fn ingest<I>(&self, meta: &SnapshotMeta, records: I, retain: usize) -> Result<(), DbError>
    where
        I: Iterator<Item = Result<Record, BundleError>>,
    {
        let v = meta.version;
        let mut txn = self.db.begin_write()?;
        // Visible at once, made durable by `persist` (a crash before then
        // leaves the previous durable snapshot: still whole, still verified).
        txn.set_durability(redb::Durability::None)
            .map_err(|e| DbError::Redb(e.to_string()))?;
        {
            let mut configs = txn.open_table(CONFIGS)?;
            let mut prompts = txn.open_table(PROMPTS)?;
            let mut routes = txn.open_table(ROUTES)?;
            let mut layer1 = txn.open_table(LAYER1)?;
            let mut snapshots = txn.open_table(SNAPSHOTS)?;
            let mut m = txn.open_table(META)?;
            let (mut n_configs, mut n_prompts, mut n_layer1) = (0u64, 0u64, 0u64);
            let mut value = Vec::new();
            let mut layer1_hash = String::new();
            let mut last_config_hash: Option<(String, String)> = None;
            for record in records {
                let record = record?;
                match record.kind {
                    RecordKind::Config => {
                        let hash = config_hash(&record.value)?;
                        etagged(&mut value, hash.as_bytes(), &record.value);
                        last_config_hash = Some((record.key.clone(), hash));
                        configs.insert((v, record.key.as_str()), value.as_slice())?;
                        n_configs += 1;
                    }
                    RecordKind::Prompt => {
                        // The prompt is a function of the tenant's config and
                        // Layer 1, so its ETag is too: no hash of the text.
                        let etag = prompt_etag(&last_config_hash, &record.key, &layer1_hash)?;
                        etagged(&mut value, etag.as_bytes(), &record.value);
                        prompts.insert((v, record.key.as_str()), value.as_slice())?;
                        n_prompts += 1;
                    }
                    RecordKind::Route => {
                        let tenant = String::from_utf8(record.value).map_err(|_| {
                            DbError::Incomplete(format!("route {} is not UTF-8", record.key))
                        })?;
                        let body = serde_json::to_vec(&serde_json::json!({ "tenant_id": tenant }))
                            .map_err(|e| DbError::Incomplete(e.to_string()))?;
                        routes.insert((v, record.key.as_str()), body.as_slice())?;
                    }
                    RecordKind::Layer1 => {
                        layer1_hash = sha256_hex(&record.value);
                        etagged(&mut value, layer1_hash.as_bytes(), &record.value);
                        layer1.insert(v, value.as_slice())?;
                        n_layer1 += 1;
                    }
                }
            }
            if n_layer1 != 1 || n_configs != meta.tenant_count || n_prompts != meta.tenant_count {
                return Err(DbError::Incomplete(format!(
                    "{n_configs} configs, {n_prompts} prompts, {n_layer1} layer1 for {} tenants",
                    meta.tenant_count
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
            let keep_from = versions.len().saturating_sub(retain);
            for old in versions[..keep_from].iter().copied().filter(|o| *o != v) {
                let range = (old, "")..(old + 1, "");
                configs.retain_in(range.clone(), |_, _| false)?;
                prompts.retain_in(range.clone(), |_, _| false)?;
                routes.retain_in(range, |_, _| false)?;
                layer1.remove(old)?;
                snapshots.remove(old)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Makes every earlier commit durable (an empty commit with immediate
    /// durability flushes and fsyncs them).
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
        Ok(Some(Reader {
            configs: txn.open_table(CONFIGS)?,
            prompts: txn.open_table(PROMPTS)?,
            routes: txn.open_table(ROUTES)?,
            layer1: txn.open_table(LAYER1)?,
            current,
            metas,
        }))
    }
}

fn etagged(buf: &mut Vec<u8>, etag: &[u8], body: &[u8]) {
    buf.clear();
    buf.extend_from_slice(etag);
    buf.extend_from_slice(body);
}

/// SHA-256 of `config hash ‖ Layer 1 hash`: changes whenever the rendered
/// prompt can. FORMAT.md orders each tenant's config record before its prompt.
fn prompt_etag(
    config: &Option<(String, String)>,
    tenant: &str,
    layer1_hash: &str,
) -> Result<String, DbError> {
    match config {
        Some((t, hash)) if t == tenant && !layer1_hash.is_empty() => {
            Ok(sha256_hex(format!("{hash}{layer1_hash}").as_bytes()))
        }
        _ => Err(DbError::Incomplete(format!(
            "prompt of {tenant} does not follow its config and Layer 1"
        ))),
    }
}

fn config_hash(json: &[u8]) -> Result<String, DbError> {
    #[derive(Deserialize)]
    struct Hash {
        config_hash: String,
    }
    let h: Hash = serde_json::from_slice(json)
        .map_err(|e| DbError::Incomplete(format!("config without config_hash: {e}")))?;
    if h.config_hash.len() != ETAG_LEN {
        return Err(DbError::Incomplete(
            "config_hash is not 64 hex digits".into(),
        ));
    }
    Ok(h.config_hash)
}

/// A stored value, borrowed from redb's page: `etag` and `body` both point
/// into the page the read transaction keeps alive.
#[derive(Clone)]
pub struct Entry {
    bytes: Bytes,
    etag_len: usize,
}

impl Entry {
    fn new(guard: redb::OwnedAccessGuard<&'static [u8]>, etag_len: usize) -> Result<Self, DbError> {
        let bytes = Bytes::from_owner(Page(guard));
        if bytes.len() < etag_len {
            return Err(DbError::Incomplete(
                "stored value shorter than its ETag".into(),
            ));
        }
        Ok(Self { bytes, etag_len })
    }

    /// The ETag (empty for values stored without one).
    pub fn etag(&self) -> &[u8] {
        &self.bytes[..self.etag_len]
    }

    /// The body, as a zero-copy slice of the page.
    pub fn body(&self) -> Bytes {
        self.bytes.slice(self.etag_len..)
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
    configs: ReadOnlyTable<(u64, &'static str), &'static [u8]>,
    prompts: ReadOnlyTable<(u64, &'static str), &'static [u8]>,
    routes: ReadOnlyTable<(u64, &'static str), &'static [u8]>,
    layer1: ReadOnlyTable<u64, &'static [u8]>,
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

    /// A tenant's effective config (ETag: its config hash).
    pub fn config(&self, version: u64, tenant: &str) -> Result<Option<Entry>, DbError> {
        self.configs
            .get_owned((version, tenant))?
            .map(|g| Entry::new(g, ETAG_LEN))
            .transpose()
    }

    /// A tenant's combined system prompt (ETag: its SHA-256).
    pub fn prompt(&self, version: u64, tenant: &str) -> Result<Option<Entry>, DbError> {
        self.prompts
            .get_owned((version, tenant))?
            .map(|g| Entry::new(g, ETAG_LEN))
            .transpose()
    }

    /// The route of a number, as `{"tenant_id":"…"}`.
    pub fn route(&self, version: u64, number: &str) -> Result<Option<Entry>, DbError> {
        self.routes
            .get_owned((version, number))?
            .map(|g| Entry::new(g, 0))
            .transpose()
    }

    /// Layer 1 as JSON.
    pub fn layer1(&self, version: u64) -> Result<Option<Entry>, DbError> {
        self.layer1
            .get_owned(version)?
            .map(|g| Entry::new(g, ETAG_LEN))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
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

    fn records(version: u64) -> Vec<Result<Record, BundleError>> {
        let config = format!("{{\"config_hash\":\"{}\",\"v\":{version}}}", "a".repeat(64));
        vec![
            Ok(Record {
                kind: RecordKind::Layer1,
                key: "layer1".into(),
                value: b"{}".to_vec(),
            }),
            Ok(Record {
                kind: RecordKind::Config,
                key: "t1".into(),
                value: config.into_bytes(),
            }),
            Ok(Record {
                kind: RecordKind::Prompt,
                key: "t1".into(),
                value: format!("prompt v{version}").into_bytes(),
            }),
            Ok(Record {
                kind: RecordKind::Route,
                key: "+15550000001".into(),
                value: b"t1".to_vec(),
            }),
        ]
    }

    #[test]
    fn the_body_points_into_the_redb_page_not_a_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&dir.path().join("s.redb"), 1 << 20).expect("open");
        db.ingest(&meta(1, 1), records(1).into_iter(), 5)
            .expect("ingest");
        let reader = db.reader().expect("reader").expect("has snapshot");
        let guard = reader
            .prompts
            .get_owned((1u64, "t1"))
            .expect("get")
            .expect("present");
        let page_ptr = guard.value().as_ptr();
        let entry = Entry::new(guard, ETAG_LEN).expect("entry");
        let body = entry.body();
        assert_eq!(&body[..], b"prompt v1");
        assert_eq!(
            body.as_ptr(),
            page_ptr.wrapping_add(ETAG_LEN),
            "body borrows the guard's bytes"
        );
    }

    #[test]
    fn retains_the_newest_versions_and_rolls_back_bad_ingests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&dir.path().join("s.redb"), 1 << 20).expect("open");
        for v in 1..=4 {
            db.ingest(&meta(v, 1), records(v).into_iter(), 2)
                .expect("ingest");
        }
        let r = db.reader().expect("reader").expect("snapshot");
        assert_eq!(r.current, 4);
        assert_eq!(r.metas.keys().copied().collect::<Vec<_>>(), vec![3, 4]);
        assert!(r.prompt(2, "t1").expect("get").is_none());
        assert_eq!(
            &r.prompt(3, "t1").expect("get").expect("v3").body()[..],
            b"prompt v3"
        );
        assert_eq!(
            &r.route(4, "+15550000001")
                .expect("get")
                .expect("route")
                .body()[..],
            br#"{"tenant_id":"t1"}"#
        );
        drop(r);

        let mut bad = records(5);
        bad.push(Err(BundleError::Truncated("payload")));
        assert!(db.ingest(&meta(5, 1), bad.into_iter(), 2).is_err());
        let r = db.reader().expect("reader").expect("snapshot");
        assert_eq!(
            r.current, 4,
            "a failed ingest leaves the previous snapshot current"
        );
        assert!(r.prompt(5, "t1").expect("get").is_none());
    }
}
