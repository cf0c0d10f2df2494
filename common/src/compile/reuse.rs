//! Incremental compile (format 3): which chunks of the channel's snapshot
//! a publish keeps as they are. A chunk whose tenants' source files are
//! byte for byte those it was built from (its sources digest), under the
//! same Layer 1 and dictionary, is neither validated nor rendered again:
//! a one-tenant change at 100k tenants compiles the dozen tenants of one
//! chunk, not 100,000. Everything else is compiled as in a full build, so
//! the result is the snapshot a full build would make.

use std::ops::Range;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::learned::{Known, Learned};
use crate::bundle::tree::{CHUNK_PARAMS, ChunkRef};
use crate::chunk;
use crate::source::Tenants;
use crate::source::hash_cache::{HashCache, Stamp};

/// What a publish may reuse of the channel's snapshot.
#[derive(Debug, Clone, Default)]
pub struct Reuse {
    /// Its Layer 1, as compiled (JSON): chunks are reused only under an
    /// identical one (its base prompt is in every prompt, its policy
    /// decides every validation).
    pub layer1: Vec<u8>,
    /// Its chunks, in order.
    pub chunks: Vec<ChunkRef>,
}

/// One step of an incremental compile, in tenant order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// Compile these tenants (indices into the source's).
    Compile(Range<usize>),
    /// These tenants are exactly chunk `chunk`'s: take it as it is (if the
    /// writer is between chunks there; else compile them).
    Reuse {
        /// The chunk's index.
        chunk: usize,
        /// Its tenants.
        tenants: Range<usize>,
    },
}

/// SHA-256 (hex) of each tenant's source as compiling it reads it: a
/// file's bytes (`None` if it cannot be read: compiling it then says
/// why, on `threads` threads), a row's hash as the database listed it.
/// A file whose status `learned`'s cache knows is not read; what is
/// found of each file is told to `learned`.
pub(super) fn source_hashes(
    tenants: &Tenants,
    max_file: u64,
    threads: usize,
    learned: &mut Learned,
) -> Vec<Option<String>> {
    match tenants {
        Tenants::Files { root, files, .. } => {
            let found = file_hashes(tenants, files, root, max_file, threads, learned.cache());
            if learned.cache().is_some() {
                let known = found.iter().flatten().filter(|k| k.cached).count();
                tracing::info!(
                    "source hash cache: {known} of {} tenant files unchanged since it was written (not read)",
                    files.len()
                );
            }
            found
                .into_iter()
                .enumerate()
                .map(|(i, k)| {
                    learned.set(i, k);
                    k.map(|k| hex::encode(k.sha256))
                })
                .collect()
        }
        Tenants::Rows { rows, .. } => rows
            .iter()
            .map(|r| (r.others.is_empty() && !r.sha256.is_empty()).then(|| r.sha256.clone()))
            .collect(),
    }
}

fn file_hashes(
    tenants: &Tenants,
    files: &[PathBuf],
    root: &Path,
    max_file: u64,
    threads: usize,
    cache: Option<&HashCache>,
) -> Vec<Option<Known>> {
    let per = files.len().div_ceil(threads.max(1)).max(1);
    let hash = |i: usize| {
        let file = files.get(i)?;
        file_hash(file, tenants.id(i), root, max_file, cache)
    };
    let hash = &hash;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..files.len())
            .step_by(per)
            .map(|start| {
                let part = start..(start + per).min(files.len());
                (
                    part.len(),
                    s.spawn(move || part.map(hash).collect::<Vec<_>>()),
                )
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|(n, h)| h.join().unwrap_or_else(|_| vec![None; n]))
            .collect()
    })
}

/// The hash of tenant `id`'s file: from `cache` if it knows the file's
/// status, else read.
fn file_hash(
    file: &Path,
    id: &str,
    root: &Path,
    max_file: u64,
    cache: Option<&HashCache>,
) -> Option<Known> {
    if let Some(cache) = cache
        && let Ok(meta) = std::fs::metadata(file)
        && meta.len() <= max_file
    {
        let stamp = Stamp::of(&meta);
        if let Some(sha256) = cache.get(id.as_bytes(), &stamp) {
            return Some(Known {
                stamp,
                sha256,
                cached: true,
            });
        }
    }
    let (text, meta) = crate::localfile::read_text_inside_with_status(file, max_file, root).ok()?;
    Some(Known {
        stamp: Stamp::of(&meta),
        sha256: Sha256::digest(text.as_bytes()).into(),
        cached: false,
    })
}

/// The sources digest of tenants `ids` with source hashes `shas`, as
/// [`crate::bundle::tree::TreeWriter`] computes it.
fn digest<'a>(ids: impl Iterator<Item = &'a str>, shas: &[Option<String>]) -> Option<[u8; 32]> {
    let mut h = Sha256::new();
    for (id, sha) in ids.zip(shas) {
        h.update(id.as_bytes());
        h.update([0]);
        h.update(sha.as_deref()?.as_bytes());
        h.update([b'\n']);
    }
    Some(h.finalize().into())
}

/// The steps that compile `tenants` (sorted by id, with their source
/// `shas`) reusing what `chunks` allow.
pub(super) fn plan(tenants: &Tenants, shas: &[Option<String>], chunks: &[ChunkRef]) -> Vec<Step> {
    let ids: Vec<&str> = (0..tenants.len()).map(|i| tenants.id(i)).collect();
    let at = |id: &str| ids.partition_point(|x| *x < id);
    let mut steps = Vec::new();
    let compile = |steps: &mut Vec<Step>, r: Range<usize>| {
        if r.is_empty() {
            return;
        }
        match steps.last_mut() {
            Some(Step::Compile(last)) if last.end == r.start => last.end = r.end,
            _ => steps.push(Step::Compile(r)),
        }
    };
    let first = chunks.first().map_or(ids.len(), |c| at(&c.first));
    compile(&mut steps, 0..first);
    for (i, c) in chunks.iter().enumerate() {
        let start = at(&c.first);
        let end = chunks.get(i + 1).map_or(ids.len(), |n| at(&n.first));
        let r = start..end;
        let same = !r.is_empty()
            && r.len() as u64 == c.obj.count
            && ids[start] == c.first
            && digest(ids[r.clone()].iter().copied(), &shas[r.clone()]) == Some(c.sources);
        // A chunk cut where its own last tenant allowed: the cut does not
        // depend on the tenant after it, which may have changed.
        let own_end = i + 1 == chunks.len()
            || (c.obj.raw_size >= CHUNK_PARAMS.min_bytes as u64
                && chunk::is_boundary(
                    ids[end.saturating_sub(1).max(start)],
                    CHUNK_PARAMS.mask_bits,
                ));
        if same && own_end {
            steps.push(Step::Reuse {
                chunk: i,
                tenants: r,
            });
        } else {
            compile(&mut steps, r);
        }
    }
    steps
}
