//! Where format 3 cuts a snapshot's tenant records into chunks: after a
//! tenant whose id hashes to a boundary (its id's SHA-256, first 8 bytes
//! as a big-endian integer, has its low `mask_bits` bits zero), once the
//! chunk holds at least `min_bytes`; and in any case before it would pass
//! `max_bytes`. Since the decision depends on the ids (and sizes) near a
//! cut and not on a tenant's position, inserting, deleting or resizing one
//! tenant moves the cuts of the chunk it lands in and rarely of the next,
//! never of the rest: the chunks a publish uploads, and a node fetches,
//! follow the size of the change. (Cutting at fixed sizes re-cut 1,352 of
//! 1,487 frames for one insert.) `bench/chunking` measures the parameters.

use sha2::{Digest, Sha256};

/// The cut rule's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParams {
    /// No cut before a chunk holds this many raw bytes.
    pub min_bytes: usize,
    /// A cut before a record that would take the chunk past this.
    pub max_bytes: usize,
    /// A tenant whose id hash has this many low bits zero ends a chunk:
    /// one in `2^mask_bits` tenants.
    pub mask_bits: u32,
}

impl ChunkParams {
    /// Chunks of about `target` raw bytes for records of about
    /// `record_bytes` each: a boundary every `target / record_bytes`
    /// tenants (rounded to a power of two), at least a quarter and at most
    /// four times the target.
    pub fn for_target(target: usize, record_bytes: usize) -> Self {
        let per_chunk = (target / record_bytes.max(1)).max(1);
        let mask_bits = usize::BITS - 1 - per_chunk.leading_zeros();
        Self {
            min_bytes: target / 4,
            max_bytes: target * 4,
            mask_bits,
        }
    }
}

/// Whether a chunk may end after tenant `id` (by its id alone).
pub fn is_boundary(id: &str, mask_bits: u32) -> bool {
    let digest = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let mask = if mask_bits >= 64 {
        u64::MAX
    } else {
        (1u64 << mask_bits) - 1
    };
    u64::from_be_bytes(first) & mask == 0
}

/// Cuts records (tenant id and raw size, in id order) into chunks: the
/// index one past each chunk's last record, ascending, the last equal to
/// the record count (none for no records).
pub fn cut<'a>(records: impl IntoIterator<Item = (&'a str, usize)>, p: ChunkParams) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut size = 0usize;
    let mut n = 0usize;
    for (id, bytes) in records {
        if size > 0 && size.saturating_add(bytes) > p.max_bytes {
            ends.push(n);
            size = 0;
        }
        size = size.saturating_add(bytes);
        n += 1;
        if size >= p.min_bytes && is_boundary(id, p.mask_bits) {
            ends.push(n);
            size = 0;
        }
    }
    if size > 0 || ends.last().is_some_and(|&e| e != n) {
        ends.push(n);
    }
    ends
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("tenant-{i:06}")).collect()
    }

    /// The chunks of `ids` (each of `sizes(id)` bytes) as lists of ids and
    /// sizes: what a content hash would tell apart.
    fn chunks(
        ids: &[String],
        sizes: &dyn Fn(&str) -> usize,
        p: ChunkParams,
    ) -> Vec<Vec<(String, usize)>> {
        let ends = cut(ids.iter().map(|i| (i.as_str(), sizes(i))), p);
        let mut out = Vec::new();
        let mut start = 0;
        for end in ends {
            out.push(
                ids[start..end]
                    .iter()
                    .map(|i| (i.clone(), sizes(i)))
                    .collect(),
            );
            start = end;
        }
        out
    }

    fn changed(a: &[Vec<(String, usize)>], b: &[Vec<(String, usize)>]) -> usize {
        b.iter().filter(|c| !a.contains(c)).count()
    }

    #[test]
    fn chunks_cover_every_record_once_within_the_bounds() {
        let p = ChunkParams::for_target(64 * 1024, 1000);
        let ids = ids(10_000);
        let ends = cut(ids.iter().map(|i| (i.as_str(), 1000)), p);
        assert_eq!(ends.last(), Some(&10_000));
        assert!(ends.windows(2).all(|w| w[0] < w[1]));
        let mut start = 0;
        for &end in &ends[..ends.len() - 1] {
            let bytes = (end - start) * 1000;
            assert!(bytes >= p.min_bytes && bytes <= p.max_bytes, "{bytes}");
            start = end;
        }
        assert!(cut(std::iter::empty(), p).is_empty());
    }

    #[test]
    fn one_insert_delete_or_resize_changes_a_chunk_or_two() {
        let p = ChunkParams::for_target(64 * 1024, 1000);
        let base = ids(20_000);
        let flat = |_: &str| 1000;
        let before = chunks(&base, &flat, p);
        let mut inserted = base.clone();
        inserted.insert(9_000, "tenant-008999a".to_owned());
        let mut deleted = base.clone();
        deleted.remove(12_345);
        let big = |id: &str| if id == "tenant-004321" { 40_000 } else { 1000 };
        for (what, after) in [
            ("insert", chunks(&inserted, &flat, p)),
            ("delete", chunks(&deleted, &flat, p)),
            ("resize", chunks(&base, &big, p)),
        ] {
            let n = changed(&before, &after);
            assert!((1..=2).contains(&n), "{what}: {n} chunks changed");
        }
    }
}
