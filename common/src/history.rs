//! One tenant across the store's snapshots (`strata-publisher history`):
//! which version of it each snapshot serves, with its config hash, when
//! and from where, and whether a rollback holds it. Each snapshot is
//! verified, and only the frame or chunk holding the tenant is read.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::bundle::{Group, Hold, Limits, Provenance, SignatureCheck};
use crate::model::SnapshotVersion;
use crate::operator::{OperatorError, StoredBundle, fetch_bundle};
use crate::store::{ReadStore, WriteStore};

/// A tenant's record in one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    /// Its config hash (64 hex digits).
    pub config_hash: String,
    /// Its effective config, canonical JSON.
    pub config: Vec<u8>,
    /// Its combined prompt.
    pub prompt: Vec<u8>,
    /// The config's `version`.
    pub version: String,
    /// The config's `phone_numbers`.
    pub phones: Vec<String>,
}

/// `tenant`'s record in the verified bundle `stored` (at `key`; a format
/// 3 root's objects read from `store`), and the snapshot's Layer 1 (JSON).
pub fn tenant_record(
    store: &dyn ReadStore,
    stored: &StoredBundle,
    key: &str,
    tenant: &str,
    limits: &Limits,
) -> Result<(Vec<u8>, Option<TenantRecord>), OperatorError> {
    let bad = |source| OperatorError::Bundle {
        key: key.to_owned(),
        source,
    };
    let mut reader = stored.reader(store, key, limits)?;
    let layer1 = reader.layer1().to_vec();
    reader.only_tenants(&BTreeSet::from([tenant.to_owned()]));
    while let Some(group) = reader.next_group().map_err(bad)? {
        let Group::Listed(frame) = group else {
            continue;
        };
        let Some(i) = frame.tenants.iter().position(|t| t.tenant == tenant) else {
            continue;
        };
        let bodies = reader.bodies(&frame).map_err(bad)?;
        let config = bodies.config(i).map_err(bad)?.to_vec();
        let prompt = bodies.prompt(i).map_err(bad)?.to_vec();
        let parsed: serde_json::Value = serde_json::from_slice(&config).unwrap_or_default();
        let version = parsed["version"].as_str().unwrap_or_default().to_owned();
        let phones = serde_json::from_value(parsed["phone_numbers"].clone()).unwrap_or_default();
        let record = TenantRecord {
            config_hash: String::from_utf8_lossy(&frame.tenants[i].config_hash).into_owned(),
            config,
            prompt,
            version,
            phones,
        };
        return Ok((layer1, Some(record)));
    }
    Ok((layer1, None))
}

/// One snapshot's line of a tenant's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The snapshot version.
    pub snapshot: u64,
    /// When it was built.
    pub created_at: String,
    /// The tenant's version there (`None`: not in that snapshot).
    pub version: Option<String>,
    /// Its config hash there.
    pub config_hash: Option<String>,
    /// The snapshot's provenance (CI commit and run).
    pub provenance: Provenance,
    /// Set when a rollback holds the tenant in that snapshot.
    pub held: Option<Hold>,
    /// Why the snapshot could not be read (gone, damaged, untrusted).
    pub error: Option<String>,
}

/// `tenant` in every snapshot of `store`, oldest first; bundles are
/// verified with `check` (signatures too, when it holds keys).
pub fn history(
    store: &dyn WriteStore,
    tenant: &str,
    check: SignatureCheck<'_>,
) -> Result<Vec<Entry>, OperatorError> {
    let limits = Limits::agents();
    let versions = crate::channel::list_versions(store)?;
    let mut out = Vec::with_capacity(versions.len());
    for SnapshotVersion(v) in versions {
        let key = SnapshotVersion(v).bundle_key();
        let read = fetch_bundle(store, v, check, &limits).and_then(|stored| {
            let (_, record) = tenant_record(store, &stored, &key, tenant, &limits)?;
            Ok((stored.header.manifest, record))
        });
        out.push(match read {
            Ok((m, record)) => Entry {
                snapshot: v,
                created_at: m.created_at,
                version: record.as_ref().map(|r| r.version.clone()),
                config_hash: record.map(|r| r.config_hash),
                provenance: m.provenance,
                held: m.held.get(tenant).cloned(),
                error: None,
            },
            Err(e) => Entry {
                snapshot: v,
                created_at: String::new(),
                version: None,
                config_hash: None,
                provenance: Provenance::default(),
                held: None,
                error: Some(e.to_string()),
            },
        });
    }
    Ok(out)
}
