//! Format 3: a snapshot as a tree of immutable, content-addressed objects,
//! so that a change costs what changed (docs/FORMAT.md, "Format 3").
//!
//! ```text
//! snapshots/<version>.bundle   the signed root: the bundle container whose
//!                              payload is one zstd frame naming, by hash,
//!                              Layer 1, the dictionary, the pages and the
//!                              route pages
//! objects/<2 hex>/<sha256>     a page (chunk references), a chunk (whole
//!                              tenant records), a route page, Layer 1 or
//!                              the zstd dictionary; its name is its hash
//! ```
//! Chunks are cut where tenant ids say ([`crate::chunk`]), so a publish
//! that changes one tenant makes one new chunk, one new page and a new
//! root; everything else keeps its name, is not uploaded again and is not
//! fetched again by a node that holds it. Every object is vouched for by
//! the hash its parent names, up to the signed root.
//!
//! [`write`] builds the objects of a snapshot; [`read`] checks and
//! decodes each kind of object; [`frames`] walks a verified root for a
//! node, fetching only the chunks it does not hold.

mod error;
mod fetch;
pub mod frames;
mod objects;
pub mod read;
pub mod store;
mod unpack;
pub mod write;

use sha2::{Digest, Sha256};

use crate::chunk::ChunkParams;

pub use error::TreeError;
pub use fetch::{AHEAD_THREADS, FETCH_BATCH, FETCH_THREADS};
pub use frames::{Applied, Fetched, Held, TreeFrames};
pub use read::Root;
pub use store::{Uploaded, restore, upload};
pub use write::{Built, ObjectSink, Objects, TreeWriter};

/// The prefix of every object key.
pub const OBJECTS: &str = "objects/";

/// Where chunks are cut: after a tenant whose id hash has its 3 low bits
/// zero (one in 8) once the chunk holds 32 KiB of records, and before one
/// that would take it past 512 KiB. At ~8 KiB per tenant a chunk holds
/// about 12 tenants, 100 KiB: small enough that one tenant's change costs a
/// node a few KiB, large enough (with the dictionary) to compress like one
/// frame. `bench/chunking` measured the choice (BENCHMARKS.md).
pub const CHUNK_PARAMS: ChunkParams = ChunkParams {
    min_bytes: 32 * 1024,
    max_bytes: 512 * 1024,
    mask_bits: 3,
};

/// Where pages are cut: after a chunk whose first tenant id hashes to a
/// boundary (6 low bits zero: one in 64) once the page names 8 chunks, and
/// always at 512. About 70 chunks per page: at 100k tenants ~120 pages,
/// a root of ~10 KiB and pages of ~4 KiB, so a one-tenant change fetches
/// the root, one page and one chunk.
pub const PAGE_PARAMS: ChunkParams = ChunkParams {
    min_bytes: 8,
    max_bytes: 512,
    mask_bits: 6,
};

/// Where route pages are cut, by number: one in 2,048 numbers ends a page
/// once it holds 32 KiB of route records, and never past 256 KiB: about
/// 100 KiB of routes (a few thousand numbers) a page, so that the root of
/// 100k tenants' 300k routes names ~100 route pages, not thousands.
pub const ROUTE_PAGE_PARAMS: ChunkParams = ChunkParams {
    min_bytes: 32 * 1024,
    max_bytes: 256 * 1024,
    mask_bits: 11,
};

/// The size of a trained dictionary.
pub const DICTIONARY_BYTES: usize = 32 * 1024;

/// How many bytes of tenant records the dictionary is trained on (the
/// first tenants in id order, up to this much).
pub const SAMPLE_BYTES: usize = 4 << 20;

/// The store key of the object whose SHA-256 is `sha256`:
/// `objects/<first 2 hex digits>/<64 hex digits>`. The prefix spreads
/// objects over 256 key prefixes (S3 scales request rates per prefix).
pub fn object_key(sha256: &[u8; 32]) -> String {
    let hex = hex::encode(sha256);
    format!("{OBJECTS}{}/{hex}", &hex[..2])
}

/// The hash an object key names, if `key` is one.
pub fn object_hash(key: &str) -> Option<[u8; 32]> {
    let rest = key.strip_prefix(OBJECTS)?;
    let (prefix, hex) = rest.split_once('/')?;
    if hex.len() != 64 || prefix != hex.get(..2)? {
        return None;
    }
    if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).ok()?;
    Some(out)
}

/// A reference to an object, as a parent names it: 56 bytes, the SHA-256
/// of the object's bytes, then its size, its decompressed size and how
/// many items it holds (u64 LE each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    /// SHA-256 of the object's bytes: its name.
    pub sha256: [u8; 32],
    /// The object's size in bytes.
    pub size: u64,
    /// Its decompressed size (its size, for the dictionary).
    pub raw_size: u64,
    /// Tenants (a chunk or page), routes (a route page), 1 (Layer 1) or 0
    /// (the dictionary).
    pub count: u64,
}

impl ObjectRef {
    /// The encoded length.
    pub const LEN: usize = 56;

    /// The reference to `bytes`.
    pub fn to(bytes: &[u8], raw_size: u64, count: u64) -> Self {
        Self {
            sha256: Sha256::digest(bytes).into(),
            size: bytes.len() as u64,
            raw_size,
            count,
        }
    }

    /// The object's store key.
    pub fn key(&self) -> String {
        object_key(&self.sha256)
    }

    /// The 56 bytes of the reference.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..32].copy_from_slice(&self.sha256);
        out[32..40].copy_from_slice(&self.size.to_le_bytes());
        out[40..48].copy_from_slice(&self.raw_size.to_le_bytes());
        out[48..56].copy_from_slice(&self.count.to_le_bytes());
        out
    }

    /// Decodes a reference from exactly [`Self::LEN`] bytes.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != Self::LEN {
            return None;
        }
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&b[..32]);
        Some(Self {
            sha256,
            size: u64_at(32),
            raw_size: u64_at(40),
            count: u64_at(48),
        })
    }
}

/// A page or route page as the root names it: its first key (tenant id or
/// number) and the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed {
    /// The first tenant id (page) or number (route page) it holds.
    pub first: String,
    /// The object.
    pub obj: ObjectRef,
}

/// A chunk as a page names it: its first tenant id, the object, and the
/// digest of its tenants' sources (which the publisher compares to reuse
/// the chunk without validating its tenants again; readers ignore it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRef {
    /// The first tenant id it holds.
    pub first: String,
    /// The object.
    pub obj: ObjectRef,
    /// SHA-256 over its tenants' `id NUL source-sha256-hex LF`, in order.
    pub sources: [u8; 32],
}

impl ChunkRef {
    /// The encoded length of a chunk record's value.
    pub const LEN: usize = ObjectRef::LEN + 32;

    /// The chunk record's value: the reference, then the sources digest.
    pub fn encode_value(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..ObjectRef::LEN].copy_from_slice(&self.obj.encode());
        out[ObjectRef::LEN..].copy_from_slice(&self.sources);
        out
    }
}

/// Whether a page (or route page) may end after an item keyed `key`.
pub(crate) fn page_boundary(key: &str, p: ChunkParams) -> bool {
    crate::chunk::is_boundary(key, p.mask_bits)
}

/// The tenants and routes of a verified bundle of either format, every
/// object of a format 3 root read from `objects` (nothing held): what
/// inspection and the publisher's comparisons read.
pub fn frames_of<'s, R: std::io::Read + std::io::Seek + 's>(
    verified: crate::bundle::VerifiedBundle<R>,
    objects: read::ObjectSource<'s>,
    limits: &crate::bundle::Limits,
) -> Result<Box<dyn crate::bundle::Frames + 's>, crate::bundle::BundleError> {
    if verified.manifest().format != crate::bundle::FORMAT_TREE {
        return Ok(Box::new(verified.payload()?));
    }
    let manifest = verified.manifest().clone();
    let raw = verified.root()?;
    Ok(Box::new(TreeFrames::open(
        objects,
        &manifest,
        &raw,
        &Held::nothing(),
        limits,
    )?))
}
