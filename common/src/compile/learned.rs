//! What a compile learns of a directory source's files for the source hash
//! cache ([`crate::source::hash_cache`]): each file's status and SHA-256,
//! from the cache (unchanged files of an incremental publish) or from
//! reading it. Saved after the compile, so the next publish reads only the
//! files that changed.

use std::path::PathBuf;
use std::time::SystemTime;

use super::tenant::TenantResult;
use crate::source::hash_cache::{self, Entry, HashCache, Stamp};
use crate::source::{Source, Tenants};

/// One file's status and hash, and whether the cache gave it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Known {
    pub(super) stamp: Stamp,
    pub(super) sha256: [u8; 32],
    pub(super) cached: bool,
}

/// The cache a compile reads, and what it learns, by tenant index.
#[derive(Debug, Default)]
pub(super) struct Learned {
    /// Where the cache lives, and the source's root; `None`: no caching.
    at: Option<(PathBuf, PathBuf)>,
    cache: HashCache,
    slots: Vec<Option<Known>>,
    started: Option<SystemTime>,
}

impl Learned {
    /// The cache of `source`, if it is a directory kept with one.
    pub(super) fn load(source: &Source) -> Self {
        let (Some(dir), Tenants::Files { root, files, .. }) = (&source.hash_cache, &source.tenants)
        else {
            return Self::default();
        };
        Self {
            started: Some(SystemTime::now()),
            cache: HashCache::load(dir, root, files.len()),
            at: Some((dir.clone(), root.clone())),
            slots: vec![None; files.len()],
        }
    }

    /// The cache, if this compile keeps one.
    pub(super) fn cache(&self) -> Option<&HashCache> {
        self.at.as_ref().map(|_| &self.cache)
    }

    /// Tenant `i`'s file was found as `known`.
    pub(super) fn set(&mut self, i: usize, known: Option<Known>) {
        if let Some(slot) = self.slots.get_mut(i) {
            *slot = known;
        }
    }

    /// Tenant `i` was compiled as `t` (read from its file).
    pub(super) fn compiled(&mut self, i: usize, t: &TenantResult) {
        let mut sha256 = [0u8; 32];
        let known = match t.stamp {
            Some(stamp) if hex::decode_to_slice(&t.source_sha256, &mut sha256).is_ok() => {
                Some(Known {
                    stamp,
                    sha256,
                    cached: false,
                })
            }
            _ => None,
        };
        self.set(i, known);
    }

    /// Saves what was learned, unless the cache held all of it already. A
    /// cache that cannot be written only costs the next publish a read of
    /// every file: logged, not an error.
    pub(super) fn save(self, source: &Source) {
        let (Some((dir, root)), Some(started), Tenants::Files { .. }) =
            (self.at, self.started, &source.tenants)
        else {
            return;
        };
        let known = self.slots.iter().flatten().count();
        if known == self.cache.len() && self.slots.iter().flatten().all(|k| k.cached) {
            return;
        }
        let entries = self
            .slots
            .into_iter()
            .enumerate()
            .filter_map(|(i, k)| {
                let k = k?;
                Some(Entry {
                    name: source.tenants.id(i).as_bytes().into(),
                    stamp: k.stamp,
                    sha256: k.sha256,
                })
            })
            .collect();
        if let Err(e) = hash_cache::save(&dir, &root, entries, started) {
            tracing::warn!(
                dir = %dir.display(),
                "the source hash cache could not be written ({e}); the next incremental publish reads every tenant file"
            );
        }
    }
}
