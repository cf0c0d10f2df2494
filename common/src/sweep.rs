//! `gc`'s second half, for format 3: deleting the objects no snapshot in
//! the store reaches. Mark: every root under `snapshots/` (kept, in flight,
//! named or not) and what it names, down to the chunks. Sweep: an object
//! nothing reaches is deleted once it has been seen unreferenced for the
//! grace period, by this gc or an earlier one (`gc/unreferenced.json`
//! records when each was first seen so). A publish uploads its objects
//! before its root, so for a moment they are unreferenced: the grace
//! period (default an hour, far longer than a publish) keeps them, and the
//! roots are listed again right before deleting, so a root written
//! meanwhile keeps what it names.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use crate::bundle::tree::read::ObjectSource;
use crate::bundle::tree::{self, Held, TreeFrames};
use crate::bundle::{self, FORMAT_TREE, Limits, SignatureCheck};
use crate::layout;
use crate::operator::OperatorError;
use crate::store::{self, StoreError, WriteStore};
use crate::time;

/// Where gc records when it first saw each unreferenced object.
pub const UNREFERENCED_KEY: &str = "gc/unreferenced.json";

/// How long an unreferenced object is kept by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// What the sweep found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Objects some root reaches.
    pub reachable: u64,
    /// Unreferenced objects deleted (dry run: to delete).
    pub deleted: u64,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// Unreferenced objects kept, first seen within the grace period.
    pub in_grace: u64,
}

/// Every object the roots under `snapshots/` reach (but those of the
/// versions `gone`, which a dry run would have deleted). A root that
/// cannot be read stops gc: it cannot tell what that root needs.
fn mark(
    store: &dyn WriteStore,
    gone: &[u64],
    seen: &mut HashSet<String>,
    marked: &mut HashSet<[u8; 32]>,
) -> Result<(), OperatorError> {
    let limits = Limits::agents();
    for key in store::list(store, layout::SNAPSHOTS)? {
        let Some(version) = layout::bundle_version(&key) else {
            continue;
        };
        if gone.contains(&version) || !seen.insert(key.clone()) {
            continue;
        }
        let unreadable = |reason: String| OperatorError::Unreadable {
            key: key.clone(),
            reason: format!(
                "{reason}; gc deletes no object while it cannot tell what this snapshot needs"
            ),
        };
        let bytes = match store.get(&key, limits.max_bundle_bytes) {
            Ok(o) => o.bytes,
            // Deleted meanwhile (by this gc's first half): it names nothing.
            Err(StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let verified = bundle::verify(
            std::io::Cursor::new(bytes),
            SignatureCheck::SkipForInspection,
            &limits,
        )
        .map_err(|e| unreadable(e.to_string()))?;
        if verified.manifest().format != FORMAT_TREE {
            continue;
        }
        let manifest = verified.manifest().clone();
        let raw = verified.root().map_err(|e| unreadable(e.to_string()))?;
        let frames = TreeFrames::open(
            ObjectSource::Store(store),
            &manifest,
            &raw,
            &Held::nothing(),
            &limits,
        )
        .map_err(|e| unreadable(e.to_string()))?;
        marked.extend(frames.root().objects().map(|o| o.sha256));
        marked.extend(frames.chunks().iter().map(|c| c.obj.sha256));
    }
    Ok(())
}

/// Every object key in the store, with its size when the store gives it.
fn list_objects(store: &dyn WriteStore) -> Result<BTreeMap<String, Option<u64>>, StoreError> {
    let mut out = BTreeMap::new();
    for prefix in 0..=255u8 {
        let prefix = format!("{}{prefix:02x}/", tree::OBJECTS);
        let mut after = None;
        loop {
            let page = store.list_page(&prefix, after.as_deref())?;
            for key in page.keys {
                let size = page.sizes.get(&key).copied();
                out.insert(key, size);
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
    }
    Ok(out)
}

/// When gc first saw each unreferenced object (seconds since the epoch),
/// and the record's ETag to replace it with.
fn read_first_seen(
    store: &dyn WriteStore,
) -> Result<(BTreeMap<String, u64>, Option<String>), OperatorError> {
    match store.get(UNREFERENCED_KEY, 64 << 20) {
        Ok(o) => {
            // A record gc cannot read is started afresh: it only ever delays a deletion.
            let map = serde_json::from_slice(&o.bytes).unwrap_or_default();
            Ok((map, Some(o.etag)))
        }
        Err(StoreError::NotFound { .. }) => Ok((BTreeMap::new(), None)),
        Err(e) => Err(e.into()),
    }
}

/// Deletes every object no root under `snapshots/` reaches that has been
/// unreferenced for `grace` (`dry_run`: counts them as if the bundles of
/// the versions `gone` were deleted, deletes nothing, records nothing).
pub fn sweep(
    store: &dyn WriteStore,
    grace: Duration,
    dry_run: bool,
    gone: &[u64],
) -> Result<Swept, OperatorError> {
    let mut seen = HashSet::new();
    let mut marked = HashSet::new();
    mark(store, gone, &mut seen, &mut marked)?;
    let listed = list_objects(store)?;
    let now = time::now();
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let (first_seen, etag) = read_first_seen(store)?;
    let mut swept = Swept::default();
    let mut record = BTreeMap::new();
    let mut doomed = Vec::new();
    for (key, size) in &listed {
        if tree::object_hash(key).is_some_and(|h| marked.contains(&h)) {
            swept.reachable += 1;
            continue;
        }
        let first = first_seen.get(key).copied().unwrap_or(secs(now));
        if secs(now).saturating_sub(first) >= grace.as_secs() {
            doomed.push((key.clone(), *size));
        } else {
            swept.in_grace += 1;
            record.insert(key.clone(), first);
        }
    }
    if !doomed.is_empty() && !dry_run {
        // Roots written since the mark keep what they name.
        mark(store, gone, &mut seen, &mut marked)?;
    }
    for (key, size) in doomed {
        if tree::object_hash(&key).is_some_and(|h| marked.contains(&h)) {
            swept.reachable += 1;
            continue;
        }
        if !dry_run {
            store.delete(&key)?;
        }
        swept.deleted += 1;
        swept.deleted_bytes += size.unwrap_or(0);
    }
    if !dry_run {
        let bytes = serde_json::to_vec(&record).map_err(|e| OperatorError::Unreadable {
            key: UNREFERENCED_KEY.to_owned(),
            reason: e.to_string(),
        })?;
        store.put_if(UNREFERENCED_KEY, &bytes, etag.as_deref())?;
    }
    Ok(swept)
}
