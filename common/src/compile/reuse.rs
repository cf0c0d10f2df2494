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

use crate::bundle::tree::{CHUNK_PARAMS, ChunkRef};
use crate::chunk;
use crate::source::Tenants;

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
pub(super) fn source_hashes(
    tenants: &Tenants,
    max_file: u64,
    threads: usize,
) -> Vec<Option<String>> {
    match tenants {
        Tenants::Files { root, files } => file_hashes(files, root, max_file, threads),
        Tenants::Rows { rows, .. } => rows
            .iter()
            .map(|r| (r.others.is_empty() && !r.sha256.is_empty()).then(|| r.sha256.clone()))
            .collect(),
    }
}

fn file_hashes(
    files: &[PathBuf],
    root: &Path,
    max_file: u64,
    threads: usize,
) -> Vec<Option<String>> {
    let per = files.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|f| {
                            crate::localfile::read_text_inside(f, max_file, root)
                                .ok()
                                .map(|t| crate::canonical::sha256_hex(t.as_bytes()))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(files.chunks(per))
            .flat_map(|(h, part)| h.join().unwrap_or_else(|_| vec![None; part.len()]))
            .collect()
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
