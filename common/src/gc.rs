//! `gc`: deleting the bundles nothing references. Mark and sweep over the
//! store's pointers and pins: a bundle among the newest `keep`, named by a
//! channel pointer or a pin, or newer than every pointer (a publish in
//! flight) is kept; the pointers and pins are read again right before each
//! deletion, so a pin written while gc runs keeps its bundle.

use std::collections::BTreeMap;

use crate::channel;
use crate::layout::{self, Document};
use crate::model::SnapshotVersion;
use crate::operator::OperatorError;
use crate::pointer::Pointer;
use crate::store::{self, WriteStore};

/// Why gc keeps a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// Among the newest `--keep`.
    Newest,
    /// Named by a channel pointer or a pin (its key).
    Referenced(String),
    /// Newer than every pointer: a publish in flight.
    InFlight,
}

/// What gc found: every bundle kept (with why) and every bundle deleted
/// (or, in a dry run, to delete).
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    /// Versions kept, with the reasons.
    pub kept: BTreeMap<u64, Vec<Kept>>,
    /// Versions deleted (dry run: that would be).
    pub deleted: Vec<u64>,
    /// Format 3 objects: what the sweep found and deleted.
    pub objects: crate::sweep::Swept,
}

/// Every version a channel pointer or pin names, with the documents that
/// name it. A pointer or pin that cannot be parsed is an error: gc cannot
/// tell what it references.
fn referenced(store: &dyn WriteStore) -> Result<BTreeMap<u64, Vec<String>>, OperatorError> {
    let mut named: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for prefix in [layout::CHANNELS, layout::PINS] {
        for key in store::list(store, prefix)? {
            if !key.ends_with(".json") {
                continue;
            }
            let Some(Document { bytes, .. }) = layout::read(store, &key)? else {
                continue;
            };
            let pointer =
                Pointer::parse_unverified(&bytes).map_err(|e| OperatorError::Unreadable {
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
            // An unpin names no bundle.
            if pointer.kind != crate::pointer::PointerKind::Unpin {
                named.entry(pointer.version).or_default().push(key);
            }
        }
    }
    Ok(named)
}

/// Deletes the bundles of versions that are not among the newest `keep`,
/// not named by any channel pointer or pin, and not newer than every
/// pointer (a publish in flight). A pointer or pin that cannot be parsed
/// stops gc before it deletes anything. `dry_run` deletes nothing.
///
/// The pointers and pins are read again right before each deletion, so a
/// pin (or rollback) written while gc ran keeps its bundle; `pin` checks
/// its bundle after writing, for the moment in between.
///
/// Then the objects no remaining snapshot reaches, unreferenced for
/// `grace`, are deleted ([`crate::sweep`]).
pub fn gc(
    store: &dyn WriteStore,
    keep: usize,
    dry_run: bool,
    grace: std::time::Duration,
) -> Result<GcReport, OperatorError> {
    let versions = channel::list_versions(store)?;
    let mut report = GcReport::default();
    let named = referenced(store)?;
    let newest_named = named.keys().next_back().copied().unwrap_or(0);
    for (version, keys) in named {
        report
            .kept
            .entry(version)
            .or_default()
            .extend(keys.into_iter().map(Kept::Referenced));
    }
    let newest: Vec<u64> = versions.iter().rev().take(keep).map(|v| v.0).collect();
    for v in versions {
        let v = v.0;
        if newest.contains(&v) {
            report.kept.entry(v).or_default().push(Kept::Newest);
        }
        if v > newest_named {
            report.kept.entry(v).or_default().push(Kept::InFlight);
        }
        if report.kept.contains_key(&v) {
            continue;
        }
        if !dry_run {
            if let Some(keys) = referenced(store)?.remove(&v) {
                report
                    .kept
                    .entry(v)
                    .or_default()
                    .extend(keys.into_iter().map(Kept::Referenced));
                continue;
            }
            store.delete(&SnapshotVersion(v).bundle_key())?;
        }
        report.deleted.push(v);
    }
    // A dry run counts the objects as if its bundles were deleted.
    let gone = if dry_run {
        report.deleted.as_slice()
    } else {
        &[]
    };
    report.objects = crate::sweep::sweep(store, grace, dry_run, gone)?;
    Ok(report)
}
