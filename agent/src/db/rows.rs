//! How tenant rows and route sets are laid out in their tables, and how
//! versions no longer retained are pruned from them.

use redb::{ReadableTable, Table};
use serde::Serialize;
use strata_common::canonical::sha256_hex;

use super::bodies::Bodies;
use super::{DbError, ETAG_LEN};

/// A tenant's row in [`TENANTS`]: which version's body it serves for its
/// config and its prompt, and their ETags. Stored as 16 + 2 × 64 bytes:
/// config body version and prompt body version (u64 LE), then both ETags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TenantRow {
    /// The last version the row serves; [`OPEN`] while it serves the newest.
    pub(super) last: u64,
    pub(super) config_version: u64,
    pub(super) prompt_version: u64,
    pub(super) config_etag: [u8; ETAG_LEN],
    pub(super) prompt_etag: [u8; ETAG_LEN],
}

pub(super) const ROW_LEN: usize = 24 + 2 * ETAG_LEN;

/// [`TenantRow::last`] of a row that serves the newest snapshot.
pub(super) const OPEN: u64 = u64::MAX;

impl TenantRow {
    pub(super) fn encode(&self) -> [u8; ROW_LEN] {
        let mut out = [0u8; ROW_LEN];
        out[..8].copy_from_slice(&self.last.to_le_bytes());
        out[8..16].copy_from_slice(&self.config_version.to_le_bytes());
        out[16..24].copy_from_slice(&self.prompt_version.to_le_bytes());
        out[24..24 + ETAG_LEN].copy_from_slice(&self.config_etag);
        out[24 + ETAG_LEN..].copy_from_slice(&self.prompt_etag);
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, DbError> {
        let bad = || {
            DbError::Damaged(format!(
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
pub(super) fn prune_tenants(
    oldest: u64,
    tenants: &mut Table<(&str, u64), &[u8]>,
    closed: &mut Table<(u64, &str), u64>,
    config_bodies: &mut Bodies<'_>,
    prompt_bodies: &mut Bodies<'_>,
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
        // A later row may share the bodies: the next one (unchanged
        // content), or the far side of a row split around an older
        // snapshot written between (`older`).
        let (mut config_shared, mut prompt_shared) = (false, false);
        for later in tenants.range((tenant.as_str(), first + 1)..=(tenant.as_str(), OPEN))? {
            let later = TenantRow::decode(later?.1.value())?;
            config_shared |= later.config_version == row.config_version;
            prompt_shared |= later.prompt_version == row.prompt_version;
        }
        if !config_shared {
            config_bodies.remove((row.config_version, tenant.as_str()))?;
        }
        if !prompt_shared {
            prompt_bodies.remove((row.prompt_version, tenant.as_str()))?;
        }
    }
    Ok(())
}

/// The open rows of the committed state, in tenant order: the rows the
/// newest stored snapshot serves.
pub(super) struct OpenRows<'a> {
    pub(super) rows: Option<redb::Range<'a, (&'static str, u64), &'static [u8]>>,
}

impl OpenRows<'_> {
    /// The next open row: tenant, first version, row.
    pub(super) fn next(&mut self) -> Result<Option<(String, u64, TenantRow)>, DbError> {
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
pub(super) fn prompt_etag(config_etag: &[u8; ETAG_LEN], layer1_hash: &str) -> [u8; ETAG_LEN] {
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
pub(super) struct RouteSet {
    pub(super) version: u64,
    pub(super) digest: [u8; ETAG_LEN],
}

impl RouteSet {
    pub(super) fn new(version: u64, digest: &str) -> Result<Self, DbError> {
        let digest = digest
            .as_bytes()
            .try_into()
            .map_err(|_| DbError::Damaged("route digest is not 64 hex digits".into()))?;
        Ok(Self { version, digest })
    }

    pub(super) fn encode(&self) -> [u8; 8 + ETAG_LEN] {
        let mut out = [0u8; 8 + ETAG_LEN];
        out[..8].copy_from_slice(&self.version.to_le_bytes());
        out[8..].copy_from_slice(&self.digest);
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, DbError> {
        let bad = || DbError::Damaged(format!("route set of {} bytes", bytes.len()));
        let (version, digest) = bytes.split_at_checked(8).ok_or_else(bad)?;
        Ok(Self {
            version: u64::from_le_bytes(version.try_into().map_err(|_| bad())?),
            digest: digest.try_into().map_err(|_| bad())?,
        })
    }
}

/// Drops `old`'s route set entry, and its routes when no kept version
/// serves them.
pub(super) fn prune_routes(
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
pub(super) struct RouteBody<'a> {
    pub(super) tenant_id: &'a str,
}
