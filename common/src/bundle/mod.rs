//! The snapshot bundle: one immutable file holding a whole snapshot.
//!
//! ```text
//! magic "STRATAB1" | u32le manifest_len | manifest (canonical JSON)
//!                  | u32le signatures_len | signatures (JSON array)
//!                  | payload: index frame | body frame 1 | … | body frame n
//! ```
//! The signatures cover the manifest bytes; the manifest carries the payload's
//! size and SHA-256. The index (a zstd frame) holds Layer 1, the routes, and
//! for each body frame its sizes and its tenants' ids and config hashes; body
//! frames (zstd, about [`FRAME_TARGET_BYTES`] each) hold the tenants' configs
//! and prompts. A reader that already has most tenants decodes only the
//! frames whose tenants changed. docs/FORMAT.md specifies every byte.
//!
//! Reading is a pipeline that trusts nothing it has not checked: header limits
//! → manifest signatures → payload size and hash (streamed) → decompression
//! with limits on the window, the decompressed size and the record count,
//! and every decoded frame checked against the index.//!
//! The module is split along the format's seams: this file holds the
//! constants, the manifest and the limits; [`record`] the one record
//! layout; `writer` builds payloads and bundles; `reader` verifies and
//! decodes them; `contents` decodes a whole payload at once; `error` says
//! why a bundle was refused.

mod contents;
mod error;
mod frame;
mod frames;
mod payload;
mod reader;
pub mod record;
pub mod tree;
mod writer;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use contents::{Contents, Records};
pub use error::BundleError;
pub use frame::{BodySpan, Frame, FrameBodies, IndexEntry};
pub use frames::{Frames, Group};
pub use payload::PayloadReader;
pub use reader::{Header, SignatureCheck, VerifiedBundle, read_header, verify};
pub use record::{Record, RecordKind};
pub use writer::{Payload, PayloadWriter, assemble, write_bundle};

/// The first 8 bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"STRATAB1";
/// The manifest's `type`.
pub const MANIFEST_TYPE: &str = "strata-bundle";
/// The manifest's `format`.
pub const FORMAT_VERSION: u32 = 2;
/// The manifest's `format` of a format 3 root ([`crate::bundle::tree`]).
pub const FORMAT_TREE: u32 = 3;
/// The largest manifest or signature block a reader accepts.
pub const MAX_HEADER_PART: u32 = 64 * 1024;
/// The largest zstd window a reader allocates (2^27 = 128 MiB).
pub const MAX_WINDOW_LOG: u32 = 27;
/// The longest record key.
pub const MAX_KEY_LEN: u32 = 1024;

/// The signed description of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_TYPE`]: a signature over a manifest can never be
    /// mistaken for one over a pointer.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always [`FORMAT_VERSION`].
    pub format: u32,
    /// The snapshot version.
    pub version: u64,
    /// When the bundle was built (RFC 3339 UTC).
    pub created_at: String,
    /// After this an agent refuses to ingest the bundle (RFC 3339 UTC).
    pub expires_at: String,
    /// Layer 1's version.
    pub layer1_version: String,
    /// Tenants in the payload.
    pub tenant_count: u64,
    /// Records in the payload.
    pub record_count: u64,
    /// Compressed payload bytes.
    pub payload_size: u64,
    /// Compressed bytes of the index, the payload's first frame.
    pub index_size: u64,
    /// Hex SHA-256 of the index's route records: equal routes, equal digest.
    pub routes_sha256: String,
    /// Decompressed payload bytes.
    pub payload_raw_size: u64,
    /// Hex SHA-256 of the compressed payload.
    pub payload_sha256: String,
    /// Where the bundle came from.
    pub provenance: Provenance,
    /// Tenants a rollback took back (`rollback --tenant`), by id: each
    /// serves the record it was rolled back to until its source rises
    /// above the version rolled back from. Left out when none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub held: BTreeMap<String, Hold>,
}

/// The most tenants one snapshot holds back by rollback (the manifest
/// holds them, and is at most [`MAX_HEADER_PART`] bytes).
pub const MAX_HOLDS: usize = 256;

/// A tenant held back by a rollback ([`Manifest::held`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    /// The tenant's version served: its record of snapshot `snapshot`.
    pub version: String,
    /// The version it was rolled back from: a publish takes the tenant's
    /// source again only once its version is above this.
    pub above: String,
    /// The snapshot whose record of the tenant is served.
    pub snapshot: u64,
    /// The snapshot the rollback published.
    pub since: u64,
}

/// Where a bundle came from; the publisher fills it from the CI environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// The config repository's commit, or empty.
    pub git_commit: String,
    /// The CI run id, or empty.
    pub ci_run_id: String,
}

/// The decompressed size at which the writer closes a body frame: big enough
/// to compress within ~3 % of one frame for everything, small enough that an
/// agent holding all but a few tenants decodes little of a new snapshot.
pub const FRAME_TARGET_BYTES: usize = 512 * 1024;

/// Limits a reader enforces before it trusts or allocates anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest bundle file (and compressed payload).
    pub max_bundle_bytes: u64,
    /// The largest decompressed payload.
    pub max_decompressed_bytes: u64,
    /// The most records.
    pub max_records: u64,
    /// The largest single record value.
    pub max_value_bytes: u32,
    /// The largest decompressed body frame: a reader holds one at a time,
    /// so this bounds its memory whatever a signed manifest declares
    /// (publishers cut frames at [`FRAME_TARGET_BYTES`] plus one tenant).
    pub max_frame_bytes: u64,
    /// Format 3: the most objects (chunks, pages, route pages) one
    /// snapshot may name. A root or page naming more is refused before
    /// anything is fetched.
    pub max_objects: u64,
    /// Format 3: the largest compression dictionary.
    pub max_dictionary_bytes: u64,
}

/// `max_bundle_bytes` of the agents a publisher command works for, when
/// raised above the default (0: not raised). Set once, from the command
/// line, before anything is read.
static AGENTS_MAX_BUNDLE_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Limits {
    /// The limits the channel's agents apply: the defaults, with
    /// `max_bundle_bytes` (and the decompressed total with it, as
    /// agent.toml sets both) as [`Limits::raise_for_agents`] was told. What
    /// a publisher command checks a new snapshot against and reads the
    /// store's snapshots with.
    pub fn agents() -> Self {
        let raised = AGENTS_MAX_BUNDLE_BYTES.load(std::sync::atomic::Ordering::Relaxed);
        let mut limits = Self::default();
        if raised > 0 {
            limits.max_bundle_bytes = raised;
            limits.max_decompressed_bytes = raised;
        }
        limits
    }

    /// Says that the channel's agents run with `max_bundle_bytes` (the
    /// publisher's `--agent-max-bundle-bytes`), for every later
    /// [`Limits::agents`] in this process.
    pub fn raise_for_agents(max_bundle_bytes: u64) {
        AGENTS_MAX_BUNDLE_BYTES.store(max_bundle_bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bundle_bytes: 1 << 30,
            max_decompressed_bytes: 1 << 30,
            max_records: 10_000_000,
            max_value_bytes: 16 << 20,
            max_frame_bytes: 64 << 20,
            max_objects: 1 << 20,
            max_dictionary_bytes: 1 << 20,
        }
    }
}

/// The manifest of the bundle at `key` in `store` (snapshot `version`),
/// read alone (its header, never its payload) and its publisher signatures
/// verified with `trust`:
/// what a publisher may act on (the tenants a rollback holds back) without
/// fetching a whole format 2 bundle.
pub fn signed_manifest(
    store: &dyn crate::store::ReadStore,
    key: &str,
    version: u64,
    trust: &crate::sign::TrustedKeys,
) -> Result<Manifest, BundleError> {
    let io = |e: crate::store::StoreError| BundleError::Io(std::io::Error::other(e.to_string()));
    let part_len = |b: &[u8]| -> Result<u64, BundleError> {
        let len = b
            .get(b.len().saturating_sub(4)..)
            .and_then(|l| <[u8; 4]>::try_from(l).ok())
            .map(u32::from_le_bytes)
            .ok_or(BundleError::Truncated("header"))?;
        if len > MAX_HEADER_PART {
            return Err(BundleError::Truncated("header"));
        }
        Ok(u64::from(len))
    };
    let mut header = store.get_range(key, 0..12).map_err(io)?;
    let m = part_len(&header)?;
    header.extend(store.get_range(key, 12..16 + m).map_err(io)?);
    let s = part_len(&header)?;
    header.extend(store.get_range(key, 16 + m..16 + m + s).map_err(io)?);
    let header = read_header(&mut std::io::Cursor::new(header))?;
    trust.verify(
        crate::sign::Role::Publisher,
        &header.manifest_bytes,
        &header.signatures,
    )?;
    // Another signed manifest copied under this key is not this snapshot.
    if header.manifest.version != version {
        return Err(BundleError::BadManifest(format!(
            "{key} holds the manifest of version {}, not {version}",
            header.manifest.version
        )));
    }
    Ok(header.manifest)
}

/// The manifest of the bundle at `key` in `store`, read alone (its first
/// bytes) and not verified: for a scheduling decision or a message, never
/// for what is served. `None` if it cannot be read.
pub fn peek_manifest(store: &dyn crate::store::ReadStore, key: &str) -> Option<Manifest> {
    let head = store.get_range(key, 0..12).ok()?;
    let len = head
        .get(8..12)
        .map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]))?;
    if len > MAX_HEADER_PART {
        return None;
    }
    let bytes = store.get_range(key, 12..12 + u64::from(len)).ok()?;
    serde_json::from_slice(&bytes).ok()
}
