//! Writing a snapshot older than the newest stored (a pin back to a
//! version the node no longer holds) between the stored ones, in one
//! transaction, without dropping them: sessions locked to newer snapshots
//! keep them.
//!
//! A tenant row covers a range of versions; the row covering the older
//! version `v` is split around it (`first..v-1`, then `v+1..last` sharing
//! the same bodies) wherever `v`'s tenant differs or is absent, and `v`'s
//! own record gets a row covering `v` alone. Every chunk is read: the
//! chunks a node skips are those of its newest snapshot, not of `v`.

use std::collections::HashSet;

use redb::{ReadableTable, WriteTransaction};
use strata_common::bundle::{Frames, Group};
use strata_common::canonical::sha256_hex;

use super::ingest::{Tables, serve_version};
use super::keep::Keep;
use super::rows::{OPEN, RouteBody, RouteSet, TenantRow, prompt_etag};
use super::{Db, DbError, Ingested, META, SnapshotMeta};

impl Db {
    /// Writes `meta`'s snapshot (older than the newest stored) between the
    /// stored ones and serves it; see the module docs.
    pub(super) fn ingest_older(
        &self,
        txn: WriteTransaction,
        meta: &SnapshotMeta,
        payload: &mut dyn Frames,
        keep: Keep,
    ) -> Result<Ingested, DbError> {
        let v = meta.version;
        let mut done = Ingested::default();
        let kept;
        {
            let mut t = Tables::open(&txn)?;
            let mut m = txn.open_table(META)?;
            if t.snapshots.get(v)?.is_some() {
                return Err(DbError::AlreadyStored { version: v });
            }
            let layer1_hash = sha256_hex(payload.layer1());
            let mut value = layer1_hash.as_bytes().to_vec();
            value.extend_from_slice(payload.layer1());
            t.layer1.insert(v, value.as_slice())?;

            let mut listed = HashSet::new();
            while let Some(group) = payload.next_group()? {
                let Group::Listed(frame) = group else {
                    return Err(DbError::Damaged(format!(
                        "snapshot {v} is older than the newest stored, so every chunk is read; one was held"
                    )));
                };
                let bodies = payload.bodies(&frame)?;
                done.frames_decoded += 1;
                for (i, entry) in frame.tenants.iter().enumerate() {
                    let tenant = entry.tenant.as_str();
                    done.tenants += 1;
                    listed.insert(entry.tenant.clone());
                    let prompt = prompt_etag(&entry.config_hash, &layer1_hash);
                    let covering = covering_row(&t, tenant, v)?;
                    if let Some((_, r)) = &covering
                        && r.config_etag == entry.config_hash
                        && r.prompt_etag == prompt
                    {
                        done.bodies_shared += 2;
                        continue;
                    }
                    if let Some(row) = covering {
                        split_around(&mut t, tenant, row, v)?;
                    }
                    let (config, prompt_body) = (bodies.config(i)?, bodies.prompt(i)?);
                    t.config_bodies.insert((v, tenant), config)?;
                    t.prompt_bodies.insert((v, tenant), prompt_body)?;
                    done.bodies_written += 2;
                    done.bytes_written += (config.len() + prompt_body.len()) as u64;
                    let row = TenantRow {
                        last: v,
                        config_version: v,
                        prompt_version: v,
                        config_etag: entry.config_hash,
                        prompt_etag: prompt,
                    };
                    t.tenants.insert((tenant, v), row.encode().as_slice())?;
                    t.closed.insert((v, tenant), v)?;
                    done.rows_written += 1;
                }
            }
            // Rows of tenants `v` does not hold stop covering it.
            let mut absent = Vec::new();
            for entry in t.tenants.iter()? {
                let (key, value) = entry?;
                let (tenant, first) = key.value();
                let row = TenantRow::decode(value.value())?;
                if first <= v && row.last >= v && !listed.contains(tenant) {
                    absent.push((tenant.to_owned(), (first, row)));
                }
            }
            for (tenant, row) in absent {
                split_around(&mut t, &tenant, row, v)?;
            }
            write_routes(&mut t, payload, v, &listed)?;
            kept = serve_version(&mut t, &mut m, meta, keep, &done)?;
        }
        let unsynced = done.bytes_written;
        self.finish(txn, payload, v, &kept, done, unsynced)
    }
}

/// The row of `tenant` covering version `v`, with its first version.
fn covering_row(t: &Tables<'_>, tenant: &str, v: u64) -> Result<Option<(u64, TenantRow)>, DbError> {
    let Some(entry) = t.tenants.range((tenant, 0)..=(tenant, v))?.next_back() else {
        return Ok(None);
    };
    let (key, value) = entry?;
    let row = TenantRow::decode(value.value())?;
    Ok((row.last >= v).then_some((key.value().1, row)))
}

/// Splits `tenant`'s row `(first, row)`, which covers `v`, into the part
/// before `v` and the part after it (same bodies), so that `v` is free.
/// A row starting at `v` (the far part of an earlier split, or one an
/// earlier copy of `v` left open) has no part before: it goes, and its
/// bodies with it when they were `v`'s own and nothing after shares them.
fn split_around(
    t: &mut Tables<'_>,
    tenant: &str,
    (first, row): (u64, TenantRow),
    v: u64,
) -> Result<(), DbError> {
    if row.last != OPEN {
        t.closed.remove((row.last, tenant))?;
    }
    if first < v {
        let before = TenantRow { last: v - 1, ..row };
        t.tenants
            .insert((tenant, first), before.encode().as_slice())?;
        t.closed.insert((v - 1, tenant), first)?;
    } else {
        t.tenants.remove((tenant, v))?;
        if row.last == v {
            if row.config_version == v {
                t.config_bodies.remove((v, tenant))?;
            }
            if row.prompt_version == v {
                t.prompt_bodies.remove((v, tenant))?;
            }
        } else if row.config_version == v || row.prompt_version == v {
            // `v`'s own bodies, still used after it: `v` is stored again
            // with other content under the same key. A copy of `v` left
            // them, and `v` is signed once: the file is damaged.
            return Err(DbError::Damaged(format!(
                "the stored rows of {tenant} disagree with snapshot {v}, which wrote them"
            )));
        }
    }
    if row.last > v {
        t.tenants.insert((tenant, v + 1), row.encode().as_slice())?;
        if row.last != OPEN {
            t.closed.insert((row.last, tenant), v + 1)?;
        }
    }
    Ok(())
}

/// `v`'s route set: a stored set with the same digest is shared, else its
/// routes are written (each to a tenant of `v`).
fn write_routes(
    t: &mut Tables<'_>,
    payload: &mut dyn Frames,
    v: u64,
    listed: &HashSet<String>,
) -> Result<(), DbError> {
    let digest = payload.routes_sha256().to_owned();
    let mut shared = None;
    for entry in t.route_sets.iter()? {
        let set = RouteSet::decode(entry?.1.value())?;
        if set.digest.as_slice() == digest.as_bytes() {
            shared = Some(set);
            break;
        }
    }
    let set = match shared {
        Some(set) => {
            payload.keep_routes()?;
            set
        }
        None => {
            let check = !payload.routes_checked();
            while let Some((number, tenant)) = payload.next_route()? {
                if check && !listed.contains(tenant) {
                    return Err(strata_common::bundle::BundleError::RouteToUnknownTenant {
                        number: number.to_owned(),
                        tenant: tenant.to_owned(),
                    }
                    .into());
                }
                let body = serde_json::to_vec(&RouteBody { tenant_id: tenant })?;
                t.routes.insert((v, number), body.as_slice())?;
            }
            RouteSet::new(v, &digest)?
        }
    };
    t.route_sets.insert(v, set.encode().as_slice())?;
    Ok(())
}
