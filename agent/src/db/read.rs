//! The read view: what a lookup is answered from, borrowed from redb's pages.

use std::collections::BTreeMap;

use bytes::Bytes;
use redb::{ReadOnlyTable, ReadableTable, TableError};

use super::bodies::{CONFIG_PIECES, PROMPT_PIECES, ReadBodies};
use super::rows::{RouteSet, TenantRow};
use super::{
    CONFIG_BODIES, Db, DbError, ETAG_LEN, LAYER1, META, PROMPT_BODIES, ROUTE_SETS, ROUTES,
    SNAPSHOTS, SnapshotMeta, TENANTS,
};

impl Db {
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
            let meta: SnapshotMeta = serde_json::from_slice(v.value())
                .map_err(|e| DbError::Damaged(format!("snapshot {} metadata: {e}", k.value())))?;
            metas.insert(k.value(), meta);
        }
        if !metas.contains_key(&current) {
            return Err(DbError::Damaged(format!(
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
            config_bodies: ReadBodies::open(&txn, CONFIG_BODIES, CONFIG_PIECES, "config")?,
            prompt_bodies: ReadBodies::open(&txn, PROMPT_BODIES, PROMPT_PIECES, "prompt")?,
            routes: txn.open_table(ROUTES)?,
            layer1: txn.open_table(LAYER1)?,
            route_sets,
            current,
            metas,
        }))
    }
}

/// A stored value, borrowed from redb's page: the body points into the page
/// the read transaction keeps alive (or, for a body stored in pieces, is
/// gathered from them: `bodies`); the ETag is a 64-byte copy.
#[derive(Clone)]
pub struct Entry {
    etag: Option<[u8; ETAG_LEN]>,
    body: Bytes,
}

impl Entry {
    pub(super) fn new(
        etag: Option<[u8; ETAG_LEN]>,
        guard: redb::OwnedAccessGuard<&'static [u8]>,
    ) -> Self {
        Self {
            etag,
            body: Bytes::from_owner(Page(guard)),
        }
    }

    /// An entry over bytes already taken from the pages.
    pub(super) fn from_bytes(etag: Option<[u8; ETAG_LEN]>, body: Bytes) -> Self {
        Self { etag, body }
    }

    /// A value stored as `etag ‖ body`.
    fn etag_prefixed(guard: redb::OwnedAccessGuard<&'static [u8]>) -> Result<Self, DbError> {
        let bytes = Bytes::from_owner(Page(guard));
        let etag = bytes
            .get(..ETAG_LEN)
            .and_then(|e| <[u8; ETAG_LEN]>::try_from(e).ok())
            .ok_or_else(|| DbError::Damaged("stored value shorter than its ETag".into()))?;
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
pub(super) struct Page(pub(super) redb::OwnedAccessGuard<&'static [u8]>);

impl AsRef<[u8]> for Page {
    fn as_ref(&self) -> &[u8] {
        self.0.value()
    }
}

/// A read view over every retained snapshot, shared by all requests until
/// the next ingest swaps in a new one.
pub struct Reader {
    tenants: ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    config_bodies: ReadBodies,
    pub(super) prompt_bodies: ReadBodies,
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
        let body = self.config_bodies.get(row.config_version, tenant)?;
        Ok(Some(Entry::from_bytes(Some(row.config_etag), body)))
    }

    /// A tenant's combined system prompt (ETag: see `prompt_etag`).
    pub fn prompt(&self, version: u64, tenant: &str) -> Result<Option<Entry>, DbError> {
        let Some(row) = self.row(version, tenant)? else {
            return Ok(None);
        };
        let body = self.prompt_bodies.get(row.prompt_version, tenant)?;
        Ok(Some(Entry::from_bytes(Some(row.prompt_etag), body)))
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
