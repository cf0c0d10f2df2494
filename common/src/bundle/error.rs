//! Why a bundle was refused: one variant per kind of damage, so callers
//! branch on the variant and tests assert it.

use std::io;

use super::MAX_HEADER_PART;
use crate::canonical::NotCanonical;
use crate::sign::SignatureError;

/// Why a bundle was refused. Each kind of damage has its own variant so
/// callers and tests can tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// An object of a format 3 snapshot was refused.
    #[error("{0}")]
    Object(#[from] crate::bundle::tree::TreeError),
    /// The file does not start with [`super::MAGIC`].
    #[error("not a Strata bundle (bad magic bytes)")]
    BadMagic,
    /// The file ends before the header, manifest, signatures or payload do.
    #[error("bundle is truncated: {0}")]
    Truncated(&'static str),
    /// Bytes after the payload.
    #[error("bundle has {0} unexpected byte(s) after the payload")]
    TrailingBytes(u64),
    /// A header part over [`MAX_HEADER_PART`].
    #[error("bundle {part} is {len} bytes, over the {MAX_HEADER_PART}-byte limit")]
    HeaderTooLarge {
        /// "manifest" or "signatures".
        part: &'static str,
        /// Its declared length.
        len: u32,
    },
    /// The manifest is not the JSON this version writes.
    #[error("bundle manifest is malformed: {0}")]
    BadManifest(String),
    /// The signature block is not a JSON list of signatures.
    #[error("bundle signature block is malformed: {0}")]
    BadSignatureBlock(String),
    /// Signatures do not meet the publisher threshold.
    #[error("bundle signatures: {0}")]
    Signature(#[from] SignatureError),
    /// The payload is larger than the reader's limit.
    #[error(
        "bundle payload is {size} bytes, over the limit of {limit}; raise max_bundle_bytes if this is expected"
    )]
    TooLarge {
        /// Declared or actual size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The payload does not hash to the signed value.
    #[error(
        "bundle payload SHA-256 is {actual}, the signed manifest says {expected}: the payload was altered"
    )]
    PayloadHashMismatch {
        /// From the manifest.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// Decompression would exceed the limit (a zstd bomb, or a lying manifest).
    #[error("decompressed payload exceeds {limit} bytes; refusing it")]
    DecompressedTooLarge {
        /// The limit.
        limit: u64,
    },
    /// More records than the limit or the manifest allows.
    #[error("payload has more than {limit} records; refusing it")]
    TooManyRecords {
        /// The limit.
        limit: u64,
    },
    /// A frame that cannot be decoded, or disagrees with the index.
    #[error("payload frame {frame} (0 is the index) is malformed at byte {offset}: {reason}")]
    BadRecord {
        /// The frame: 0 for the index, 1 for the first body frame.
        frame: u64,
        /// Where in the decompressed frame.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The payload disagrees with the manifest's counts.
    #[error("payload holds {actual} {what}, the manifest says {expected}")]
    CountMismatch {
        /// What was counted.
        what: &'static str,
        /// From the manifest.
        expected: u64,
        /// Decoded.
        actual: u64,
    },
    /// The manifest's bytes are not the canonical JSON of the manifest they
    /// hold (whitespace, key order, escapes): two byte strings would then
    /// sign one manifest.
    #[error("bundle manifest is not canonical JSON: {0}")]
    NonCanonicalManifest(NotCanonical),
    /// A timestamp that is not RFC 3339 UTC with whole seconds and `Z`.
    #[error(
        "bundle manifest {field} is {value:?}, not an RFC 3339 UTC timestamp with whole seconds (2026-11-23T20:14:24Z)"
    )]
    BadTimestamp {
        /// `created_at` or `expires_at`.
        field: &'static str,
        /// What it holds.
        value: String,
    },
    /// A zstd frame written without its content checksum (or not a zstd
    /// frame at all).
    #[error("payload frame {frame} (0 is the index) {reason}")]
    FrameChecksumMissing {
        /// The frame: 0 for the index.
        frame: u64,
        /// What is wrong with its zstd frame header.
        reason: &'static str,
    },
    /// A tenant's config is not canonical JSON.
    #[error("the config of tenant {tenant} (frame {frame}) is not canonical JSON: {source}")]
    NonCanonicalConfig {
        /// The tenant.
        tenant: String,
        /// Its body frame.
        frame: u64,
        /// Where and how it departs from the canonical form.
        source: NotCanonical,
    },
    /// A config whose bytes do not hash to the `config_hash` it carries.
    #[error(
        "the config of tenant {tenant} carries config_hash {claimed}, but its content hashes to {computed}"
    )]
    ConfigHashMismatch {
        /// The tenant.
        tenant: String,
        /// The `config_hash` it carries (and the index lists).
        claimed: String,
        /// SHA-256 of its canonical JSON without `config_hash`.
        computed: String,
    },
    /// A combined prompt that does not start with Layer 1's base prompt and
    /// the separator: the platform's guardrails would be missing from a call.
    #[error(
        "the prompt of tenant {tenant} does not start with the Layer 1 base prompt and separator"
    )]
    PromptWithoutBase {
        /// The tenant.
        tenant: String,
    },
    /// Layer 1 is not JSON with a string `base_prompt`.
    #[error("the Layer 1 record is not JSON with a string base_prompt: {0}")]
    BadLayer1(String),
    /// A route whose number sorts before the route before it.
    #[error("route {number} comes after {previous}: routes must be in ascending byte order")]
    RouteOutOfOrder {
        /// The route's number.
        number: String,
        /// The number before it.
        previous: String,
    },
    /// The same number routed twice.
    #[error("route {number} appears twice: a number belongs to exactly one tenant")]
    DuplicateRoute {
        /// The number.
        number: String,
    },
    /// A route to a tenant the bundle does not hold: a call would be routed
    /// to a tenant that then answers 404.
    #[error("route {number} names tenant {tenant}, which is not in the bundle")]
    RouteToUnknownTenant {
        /// The number.
        number: String,
        /// The tenant it names.
        tenant: String,
    },
    /// zstd could not decode the payload.
    #[error("payload does not decompress: {0}")]
    Decompress(io::Error),
    /// Reading the bundle failed.
    #[error("reading bundle: {0}")]
    Io(#[from] io::Error),
    /// Building a bundle failed.
    #[error("encoding bundle: {0}")]
    Encode(String),
}

pub(super) fn bad(frame: u64, offset: u64, reason: String) -> BundleError {
    BundleError::BadRecord {
        frame,
        offset,
        reason,
    }
}

impl BundleError {
    /// The short reason for metrics and `/v1/snapshot`: one label per kind
    /// of refusal an operator acts on differently.
    pub fn reason(&self) -> &'static str {
        match self {
            BundleError::Object(e) => e.reason(),
            BundleError::Signature(_) => "bundle_signature",
            BundleError::TooLarge { .. }
            | BundleError::DecompressedTooLarge { .. }
            | BundleError::TooManyRecords { .. } => "bundle_too_large",
            BundleError::PayloadHashMismatch { .. } => "bundle_hash",
            BundleError::NonCanonicalManifest(_) => "manifest_not_canonical",
            BundleError::BadTimestamp { .. } => "bad_timestamp",
            BundleError::FrameChecksumMissing { .. } => "frame_checksum_missing",
            BundleError::NonCanonicalConfig { .. } => "config_not_canonical",
            BundleError::ConfigHashMismatch { .. } => "config_hash_mismatch",
            BundleError::PromptWithoutBase { .. } => "prompt_without_base",
            BundleError::RouteOutOfOrder { .. } => "route_out_of_order",
            BundleError::DuplicateRoute { .. } => "duplicate_route",
            BundleError::RouteToUnknownTenant { .. } => "route_to_unknown_tenant",
            BundleError::BadMagic
            | BundleError::Truncated(_)
            | BundleError::TrailingBytes(_)
            | BundleError::HeaderTooLarge { .. }
            | BundleError::BadManifest(_)
            | BundleError::BadSignatureBlock(_)
            | BundleError::BadRecord { .. }
            | BundleError::CountMismatch { .. }
            | BundleError::BadLayer1(_)
            | BundleError::Decompress(_) => "bundle_malformed",
            BundleError::Io(_) => "spool",
            BundleError::Encode(_) => "encode",
        }
    }
}
