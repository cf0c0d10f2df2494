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
//! and every decoded frame checked against the index.

use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Take};
use std::ops::Range;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::canonical;
use crate::sign::{self, KeyId, Role, SignatureEntry, SignatureError, TrustedKeys};

/// The first 8 bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"STRATAB1";
/// The manifest's `type`.
pub const MANIFEST_TYPE: &str = "strata-bundle";
/// The manifest's `format`.
pub const FORMAT_VERSION: u32 = 2;
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
}

/// Build provenance, from the CI environment when it provides it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// The config repository's commit, or empty.
    pub git_commit: String,
    /// The CI run id, or empty.
    pub ci_run_id: String,
}

impl Provenance {
    /// Reads the usual CI variables (GitHub Actions, GitLab, Jenkins, Buildkite)
    /// and `STRATA_GIT_COMMIT` / `STRATA_CI_RUN_ID`, which win.
    pub fn from_env() -> Self {
        let first = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
                .unwrap_or_default()
        };
        Self {
            git_commit: first(&[
                "STRATA_GIT_COMMIT",
                "GITHUB_SHA",
                "CI_COMMIT_SHA",
                "GIT_COMMIT",
                "BUILDKITE_COMMIT",
            ]),
            ci_run_id: first(&[
                "STRATA_CI_RUN_ID",
                "GITHUB_RUN_ID",
                "CI_PIPELINE_ID",
                "BUILD_ID",
                "BUILDKITE_BUILD_ID",
            ]),
        }
    }
}

/// What a payload record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// Layer 1 as JSON; key `layer1`. The index's first record.
    Layer1 = 1,
    /// A tenant's effective config as canonical JSON; key the tenant id.
    Config = 2,
    /// A tenant's combined system prompt, UTF-8; key the tenant id.
    Prompt = 3,
    /// A phone route; key the E.164 number, value the tenant id.
    Route = 4,
    /// In the index: a body frame's compressed and decompressed sizes. The
    /// tenant records after it name the tenants that frame holds.
    Frame = 5,
    /// In the index: a tenant id and its config hash.
    Tenant = 6,
}

impl RecordKind {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Layer1,
            2 => Self::Config,
            3 => Self::Prompt,
            4 => Self::Route,
            5 => Self::Frame,
            6 => Self::Tenant,
            _ => return None,
        })
    }
}

/// One decoded payload record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// What it holds.
    pub kind: RecordKind,
    /// Its key (tenant id, number, or `layer1`).
    pub key: String,
    /// Its value bytes.
    pub value: Vec<u8>,
}

/// The decompressed size at which the writer closes a body frame: big enough
/// to compress within ~3 % of one frame for everything, small enough that an
/// agent holding all but a few tenants decodes little of a new snapshot.
pub const FRAME_TARGET_BYTES: usize = 512 * 1024;

/// Builds a payload: the index frame, then body frames of about
/// [`FRAME_TARGET_BYTES`]. Records must come in payload order: Layer 1,
/// tenants in ascending id order, then routes in ascending number order.
pub struct PayloadWriter {
    compressor: zstd::bulk::Compressor<'static>,
    /// The index's records, decompressed.
    index: Vec<u8>,
    /// The open body frame's records, decompressed.
    frame: Vec<u8>,
    /// The open body frame's tenants and config hashes.
    frame_tenants: Vec<(String, String)>,
    /// Closed body frames, compressed, in order.
    bodies: Vec<u8>,
    bodies_raw: u64,
    record_count: u64,
    routes_started: bool,
    routes: Sha256,
}

/// A finished, compressed payload.
#[derive(Debug, Clone)]
pub struct Payload {
    /// The index frame followed by the body frames.
    pub compressed: Vec<u8>,
    /// Hex SHA-256 of `compressed`.
    pub sha256: String,
    /// Compressed size of the index frame.
    pub index_size: u64,
    /// Hex SHA-256 of the route records.
    pub routes_sha256: String,
    /// Decompressed size of every frame together.
    pub raw_size: u64,
    /// Records written.
    pub record_count: u64,
}

fn out_of_order(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("payload records out of order: {what}"),
    )
}

/// Appends one encoded record to `out`.
fn put_record(out: &mut Vec<u8>, kind: RecordKind, key: &str, value: &[u8]) -> io::Result<()> {
    let too_long = |what| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("record {what} too long"),
        )
    };
    let key_len = u32::try_from(key.len())
        .ok()
        .filter(|l| *l <= MAX_KEY_LEN)
        .ok_or_else(|| too_long("key"))?;
    let value_len = u32::try_from(value.len()).map_err(|_| too_long("value"))?;
    out.push(kind as u8);
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&value_len.to_le_bytes());
    out.extend_from_slice(value);
    Ok(())
}

impl PayloadWriter {
    /// A writer compressing at zstd `level`, with frame checksums.
    pub fn new(level: i32) -> io::Result<Self> {
        let mut compressor = zstd::bulk::Compressor::new(level)?;
        compressor.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
        Ok(Self {
            compressor,
            index: Vec::new(),
            frame: Vec::with_capacity(2 * FRAME_TARGET_BYTES),
            frame_tenants: Vec::new(),
            bodies: Vec::new(),
            bodies_raw: 0,
            record_count: 0,
            routes_started: false,
            routes: Sha256::new(),
        })
    }

    /// Writes Layer 1, the first record.
    pub fn layer1(&mut self, json: &[u8]) -> io::Result<()> {
        if !self.index.is_empty() {
            return Err(out_of_order("Layer 1 must come first, once"));
        }
        self.put_index(RecordKind::Layer1, "layer1", json)
    }

    /// Writes a tenant: its config (whose `config_hash` is `config_hash`)
    /// and its combined prompt.
    pub fn tenant(
        &mut self,
        tenant: &str,
        config_hash: &str,
        config: &[u8],
        prompt: &[u8],
    ) -> io::Result<()> {
        if self.index.is_empty() || self.routes_started {
            return Err(out_of_order("tenants come after Layer 1 and before routes"));
        }
        put_record(&mut self.frame, RecordKind::Config, tenant, config)?;
        put_record(&mut self.frame, RecordKind::Prompt, tenant, prompt)?;
        self.record_count += 2;
        self.frame_tenants
            .push((tenant.to_owned(), config_hash.to_owned()));
        if self.frame.len() >= FRAME_TARGET_BYTES {
            self.close_frame()?;
        }
        Ok(())
    }

    /// Writes a phone route; after the last tenant.
    pub fn route(&mut self, number: &str, tenant: &str) -> io::Result<()> {
        if self.index.is_empty() {
            return Err(out_of_order("routes come after Layer 1"));
        }
        self.close_frame()?;
        self.routes_started = true;
        let start = self.index.len();
        self.put_index(RecordKind::Route, number, tenant.as_bytes())?;
        self.routes.update(&self.index[start..]);
        Ok(())
    }

    fn put_index(&mut self, kind: RecordKind, key: &str, value: &[u8]) -> io::Result<()> {
        put_record(&mut self.index, kind, key, value)?;
        self.record_count += 1;
        Ok(())
    }

    /// Compresses the open body frame and lists it, and its tenants, in the index.
    fn close_frame(&mut self) -> io::Result<()> {
        if self.frame_tenants.is_empty() {
            return Ok(());
        }
        let compressed = self.compressor.compress(&self.frame)?;
        let mut sizes = [0u8; 16];
        sizes[..8].copy_from_slice(&(compressed.len() as u64).to_le_bytes());
        sizes[8..].copy_from_slice(&(self.frame.len() as u64).to_le_bytes());
        self.put_index(RecordKind::Frame, "", &sizes)?;
        for (tenant, hash) in std::mem::take(&mut self.frame_tenants) {
            self.put_index(RecordKind::Tenant, &tenant, hash.as_bytes())?;
        }
        self.bodies.extend_from_slice(&compressed);
        self.bodies_raw += self.frame.len() as u64;
        self.frame.clear();
        Ok(())
    }

    /// Closes the last body frame and compresses the index in front of them.
    pub fn finish(mut self) -> io::Result<Payload> {
        if self.index.is_empty() {
            return Err(out_of_order("a payload needs Layer 1"));
        }
        self.close_frame()?;
        let mut compressed = self.compressor.compress(&self.index)?;
        let index_size = compressed.len() as u64;
        compressed.extend_from_slice(&self.bodies);
        Ok(Payload {
            sha256: canonical::sha256_hex(&compressed),
            compressed,
            index_size,
            routes_sha256: hex::encode(self.routes.finalize()),
            raw_size: self.index.len() as u64 + self.bodies_raw,
            record_count: self.record_count,
        })
    }
}

/// Assembles a bundle: serialises the manifest once, signs those bytes with
/// every key, and returns exactly the bytes to upload.
pub fn write_bundle(
    manifest: &Manifest,
    payload: &[u8],
    keys: &[SigningKey],
) -> Result<Vec<u8>, BundleError> {
    let manifest_bytes =
        canonical::to_vec(manifest).map_err(|e| BundleError::Encode(e.to_string()))?;
    let sigs = sign::sign(keys, &manifest_bytes);
    let sig_bytes = canonical::to_vec(&sigs).map_err(|e| BundleError::Encode(e.to_string()))?;
    let len = |b: &[u8]| {
        u32::try_from(b.len())
            .ok()
            .filter(|l| *l <= MAX_HEADER_PART)
    };
    let (Some(ml), Some(sl)) = (len(&manifest_bytes), len(&sig_bytes)) else {
        return Err(BundleError::Encode(
            "manifest or signatures over 64 KiB".into(),
        ));
    };
    let mut out = Vec::with_capacity(16 + manifest_bytes.len() + sig_bytes.len() + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&ml.to_le_bytes());
    out.extend_from_slice(&manifest_bytes);
    out.extend_from_slice(&sl.to_le_bytes());
    out.extend_from_slice(&sig_bytes);
    out.extend_from_slice(payload);
    Ok(out)
}

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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bundle_bytes: 1 << 30,
            max_decompressed_bytes: 1 << 30,
            max_records: 10_000_000,
            max_value_bytes: 16 << 20,
        }
    }
}

/// Why a bundle was refused. Each kind of damage has its own variant so
/// callers and tests can tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file does not start with [`MAGIC`].
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

/// The parsed, not yet verified, header of a bundle.
#[derive(Debug, Clone)]
pub struct Header {
    /// The manifest.
    pub manifest: Manifest,
    /// The exact manifest bytes the signatures cover.
    pub manifest_bytes: Vec<u8>,
    /// The detached signatures.
    pub signatures: Vec<SignatureEntry>,
    /// Where the payload starts.
    pub payload_offset: u64,
}

/// Reads the header: magic, manifest and signatures, with size limits.
pub fn read_header<R: Read>(r: &mut R) -> Result<Header, BundleError> {
    let mut magic = [0u8; 8];
    read_exact(r, &mut magic, "magic")?;
    if &magic != MAGIC {
        return Err(BundleError::BadMagic);
    }
    let manifest_bytes = read_part(r, "manifest")?;
    let signature_bytes = read_part(r, "signatures")?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| BundleError::BadManifest(e.to_string()))?;
    if manifest.kind != MANIFEST_TYPE || manifest.format != FORMAT_VERSION {
        return Err(BundleError::BadManifest(format!(
            "type {:?} format {}, expected {MANIFEST_TYPE:?} format {FORMAT_VERSION}",
            manifest.kind, manifest.format
        )));
    }
    let signatures: Vec<SignatureEntry> = serde_json::from_slice(&signature_bytes)
        .map_err(|e| BundleError::BadSignatureBlock(e.to_string()))?;
    let payload_offset = 16 + manifest_bytes.len() as u64 + signature_bytes.len() as u64;
    Ok(Header {
        manifest,
        manifest_bytes,
        signatures,
        payload_offset,
    })
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], what: &'static str) -> Result<(), BundleError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => BundleError::Truncated(what),
        _ => BundleError::Io(e),
    })
}

fn read_part<R: Read>(r: &mut R, part: &'static str) -> Result<Vec<u8>, BundleError> {
    let mut len = [0u8; 4];
    read_exact(r, &mut len, part)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_HEADER_PART {
        return Err(BundleError::HeaderTooLarge { part, len });
    }
    let mut buf = vec![0u8; len as usize];
    read_exact(r, &mut buf, part)?;
    Ok(buf)
}

/// A bundle whose signatures, size and payload hash have been checked.
/// Its records are decoded lazily, with limits.
pub struct VerifiedBundle<R> {
    /// The verified header.
    pub header: Header,
    /// Trusted publisher keys that signed it.
    pub signed_by: Vec<KeyId>,
    reader: R,
    limits: Limits,
}

/// Whether [`verify`] checks signatures. Only `inspect` without keys skips
/// them, and says so; everything that serves or trusts a bundle checks.
#[derive(Debug, Clone, Copy)]
pub enum SignatureCheck<'a> {
    /// Require a threshold of these keys' publisher signatures.
    Trusted(&'a TrustedKeys),
    /// Check structure, limits and hashes only.
    SkipForInspection,
}

/// Verifies a bundle: header → publisher signatures over the manifest →
/// payload size limit → payload SHA-256 (streamed) → no trailing bytes.
/// Nothing in the payload is decoded until all of these passed.
pub fn verify<R: Read + Seek>(
    mut reader: R,
    check: SignatureCheck<'_>,
    limits: &Limits,
) -> Result<VerifiedBundle<R>, BundleError> {
    let header = read_header(&mut reader)?;
    let signed_by = match check {
        SignatureCheck::Trusted(trust) => {
            trust.verify(Role::Publisher, &header.manifest_bytes, &header.signatures)?
        }
        SignatureCheck::SkipForInspection => Vec::new(),
    };
    let m = &header.manifest;
    if m.payload_size > limits.max_bundle_bytes {
        return Err(BundleError::TooLarge {
            size: m.payload_size,
            limit: limits.max_bundle_bytes,
        });
    }
    if m.payload_raw_size > limits.max_decompressed_bytes {
        return Err(BundleError::DecompressedTooLarge {
            limit: limits.max_decompressed_bytes,
        });
    }
    if m.record_count > limits.max_records {
        return Err(BundleError::TooManyRecords {
            limit: limits.max_records,
        });
    }
    let mut hasher = Sha256::new();
    let copied = crate::copy::copy_chunked(
        &mut (&mut reader).take(m.payload_size),
        &mut HashWriter(&mut hasher),
    )?;
    if copied < m.payload_size {
        return Err(BundleError::Truncated("payload"));
    }
    let actual = hex::encode(hasher.finalize());
    if actual != m.payload_sha256 {
        return Err(BundleError::PayloadHashMismatch {
            expected: m.payload_sha256.clone(),
            actual,
        });
    }
    let trailing = io::copy(&mut (&mut reader).take(1 << 20), &mut io::sink())?;
    if trailing > 0 {
        return Err(BundleError::TrailingBytes(trailing));
    }
    reader.seek(SeekFrom::Start(header.payload_offset))?;
    Ok(VerifiedBundle {
        header,
        signed_by,
        reader,
        limits: *limits,
    })
}

struct HashWriter<'a>(&'a mut Sha256);

impl io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<R: Read + Seek> VerifiedBundle<R> {
    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.header.manifest
    }

    /// Decompresses the index and returns a reader that decodes body frames
    /// on demand, each within the limits.
    pub fn payload(self) -> Result<PayloadReader<R>, BundleError> {
        PayloadReader::new(self)
    }

    /// Decodes every record in logical order (Layer 1, each tenant's config
    /// and prompt, routes), checking the whole payload against the index and
    /// the manifest.
    pub fn records(self) -> Result<Records<R>, BundleError> {
        Ok(Records {
            payload: self.payload()?,
            queue: std::collections::VecDeque::new(),
            stage: Stage::Layer1,
        })
    }
}

/// A tenant as the index lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The tenant id.
    pub tenant: String,
    /// Its config's `config_hash`, 64 hex digits: equal hashes mean equal
    /// configs, and (under the same Layer 1) equal prompts.
    pub config_hash: [u8; 64],
}

/// A body frame as the index describes it.
#[derive(Debug, Clone)]
pub struct Frame {
    /// 1 for the first body frame (0 is the index).
    pub number: u64,
    /// Its tenants, in order.
    pub tenants: Vec<IndexEntry>,
    offset: u64,
    size: u64,
    raw_size: u64,
}

/// A decoded body frame: each tenant's config and prompt, borrowed from the
/// reader's buffer until the next frame is read.
#[derive(Debug)]
pub struct FrameBodies<'a> {
    raw: &'a [u8],
    number: u64,
    tenants: &'a [IndexEntry],
    spans: Vec<BodySpan>,
}

/// Where one tenant's records sit in a decoded frame.
#[derive(Debug)]
struct BodySpan {
    at: u64,
    config: Range<usize>,
    prompt: Range<usize>,
}

impl FrameBodies<'_> {
    /// Where the frame's `i`th tenant's records are, and its index entry.
    fn tenant(&self, i: usize) -> Result<(&BodySpan, &IndexEntry), BundleError> {
        match (self.spans.get(i), self.tenants.get(i)) {
            (Some(span), Some(entry)) => Ok((span, entry)),
            _ => Err(bad(self.number, 0, format!("no tenant {i} in the frame"))),
        }
    }

    /// The config of the frame's `i`th tenant, once its `config_hash` is
    /// found to be the one the index lists. Checked here, per config taken,
    /// so that a reader keeping most of a frame's tenants from an earlier
    /// snapshot does not parse the configs it leaves (docs/FORMAT.md).
    pub fn config(&self, i: usize) -> Result<&[u8], BundleError> {
        let (span, entry) = self.tenant(i)?;
        let config = &self.raw[span.config.clone()];
        let hash = config_hash_of(config).map_err(|r| bad(self.number, span.at, r))?;
        if hash != entry.config_hash {
            return Err(bad(
                self.number,
                span.at,
                format!(
                    "the config of {} does not have the config_hash the index lists",
                    entry.tenant
                ),
            ));
        }
        Ok(config)
    }

    /// The combined prompt of the frame's `i`th tenant.
    pub fn prompt(&self, i: usize) -> Result<&[u8], BundleError> {
        let (span, _) = self.tenant(i)?;
        Ok(&self.raw[span.prompt.clone()])
    }
}

/// The bundle as the index stream reads it: every read seeks to where the
/// index left off, so body frames can be read in between.
struct Tracked<R> {
    inner: R,
    pos: u64,
}

impl<R: Read + Seek> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.seek(SeekFrom::Start(self.pos))?;
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The index, decompressed as it is read.
type IndexStream<R> = BufReader<zstd::Decoder<'static, BufReader<Take<Tracked<R>>>>>;

/// A verified payload, read through its index, which is decompressed as it
/// is read: memory stays at one body frame whatever the tenant count. Call
/// [`Self::next_frame`] until it returns `None`, decoding the frames you need
/// with [`Self::read_frame`], then [`Self::next_route`] until it returns
/// `None`: that last call checks the totals against the manifest.
pub struct PayloadReader<R: Read + Seek> {
    index: IndexStream<R>,
    payload_offset: u64,
    manifest: Manifest,
    limits: Limits,
    layer1: Vec<u8>,
    /// The last index record's key and value.
    key: Vec<u8>,
    value: Vec<u8>,
    last_tenant: Vec<u8>,
    /// Decompressed index bytes read so far.
    index_raw: u64,
    frames: u64,
    /// Where the next body frame starts, from the payload's start.
    offset: u64,
    frames_raw: u64,
    records: u64,
    tenants: u64,
    routes: Sha256,
    compressed: Vec<u8>,
    raw: Vec<u8>,
    decompressor: zstd::bulk::Decompressor<'static>,
}

/// One record borrowed from a decompressed frame.
struct RawRecord<'a> {
    kind: RecordKind,
    key: &'a str,
    value: &'a [u8],
}

/// Decodes the record at `*pos` of `buf` and moves `pos` past it.
fn read_record<'a>(
    buf: &'a [u8],
    pos: &mut usize,
    limits: &Limits,
) -> Result<RawRecord<'a>, String> {
    let mut at = *pos;
    let mut take = |n: usize, what: &str| -> Result<&'a [u8], String> {
        let part = buf
            .get(at..at.saturating_add(n))
            .ok_or_else(|| format!("ends inside the {what}"))?;
        at += n;
        Ok(part)
    };
    let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let kind = take(1, "kind")?[0];
    let kind = RecordKind::from_byte(kind).ok_or_else(|| format!("unknown record kind {kind}"))?;
    let key_len = u32_at(take(4, "key length")?);
    if key_len > MAX_KEY_LEN {
        return Err(format!("key of {key_len} bytes"));
    }
    let key = std::str::from_utf8(take(key_len as usize, "key")?)
        .map_err(|_| "key is not UTF-8".to_owned())?;
    let value_len = u32_at(take(4, "value length")?);
    if value_len > limits.max_value_bytes {
        return Err(format!("value of {value_len} bytes, over the limit"));
    }
    let value = take(value_len as usize, "value")?;
    *pos = at;
    Ok(RawRecord { kind, key, value })
}

/// The `config_hash` an effective config carries.
fn config_hash_of(json: &[u8]) -> Result<[u8; 64], String> {
    #[derive(Deserialize)]
    struct Hash<'a> {
        #[serde(borrow)]
        config_hash: &'a str,
    }
    let h: Hash<'_> =
        serde_json::from_slice(json).map_err(|e| format!("config without config_hash: {e}"))?;
    hex_digest(h.config_hash.as_bytes())
}

/// `bytes` as 64 lower-case hex digits.
fn hex_digest(bytes: &[u8]) -> Result<[u8; 64], String> {
    let digest: [u8; 64] = bytes
        .try_into()
        .map_err(|_| "config hash is not 64 hex digits".to_owned())?;
    if digest
        .iter()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(digest)
    } else {
        Err("config hash is not lower-case hex".to_owned())
    }
}

impl<R: Read + Seek> PayloadReader<R> {
    fn new(verified: VerifiedBundle<R>) -> Result<Self, BundleError> {
        let VerifiedBundle {
            header,
            reader,
            limits,
            ..
        } = verified;
        let m = header.manifest;
        if m.index_size == 0 || m.index_size > m.payload_size {
            return Err(BundleError::BadManifest(format!(
                "index_size {} outside the {}-byte payload",
                m.index_size, m.payload_size
            )));
        }
        let tracked = Tracked {
            inner: reader,
            pos: header.payload_offset,
        };
        let mut decoder =
            zstd::Decoder::new(tracked.take(m.index_size)).map_err(BundleError::Decompress)?;
        decoder
            .window_log_max(MAX_WINDOW_LOG)
            .map_err(BundleError::Decompress)?;
        let mut this = Self {
            index: BufReader::with_capacity(64 * 1024, decoder),
            payload_offset: header.payload_offset,
            offset: m.index_size,
            manifest: m,
            limits,
            layer1: Vec::new(),
            key: Vec::new(),
            value: Vec::new(),
            last_tenant: Vec::new(),
            index_raw: 0,
            frames: 0,
            frames_raw: 0,
            records: 0,
            tenants: 0,
            routes: Sha256::new(),
            compressed: Vec::new(),
            raw: Vec::new(),
            decompressor: zstd::bulk::Decompressor::new().map_err(BundleError::Decompress)?,
        };
        if this.read_index_record()? != Some(RecordKind::Layer1) {
            return Err(bad(0, 0, "the index does not start with Layer 1".into()));
        }
        this.layer1 = std::mem::take(&mut this.value);
        Ok(this)
    }

    /// Layer 1 as JSON.
    pub fn layer1(&self) -> &[u8] {
        &self.layer1
    }

    /// Fills `buf` from the index, counting what was decompressed.
    fn index_exact(
        &mut self,
        buf_of: fn(&mut Self) -> &mut Vec<u8>,
        len: usize,
        what: &str,
    ) -> Result<(), BundleError> {
        let cap = self
            .manifest
            .payload_raw_size
            .min(self.limits.max_decompressed_bytes);
        let at = self.index_raw;
        if at + len as u64 > cap {
            return Err(BundleError::DecompressedTooLarge { limit: cap });
        }
        let mut buf = std::mem::take(buf_of(self));
        buf.resize(len, 0);
        let read = self.index.read_exact(&mut buf);
        *buf_of(self) = buf;
        read.map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => bad(0, at, format!("ends inside a record's {what}")),
            _ => BundleError::Decompress(e),
        })?;
        self.index_raw += len as u64;
        Ok(())
    }

    /// The kind byte of the next index record, without reading it; `None`
    /// at the end of the index.
    fn peek(&mut self) -> Result<Option<u8>, BundleError> {
        Ok(self
            .index
            .fill_buf()
            .map_err(BundleError::Decompress)?
            .first()
            .copied())
    }

    /// Reads the next index record into `self.key` and `self.value`.
    fn read_index_record(&mut self) -> Result<Option<RecordKind>, BundleError> {
        let at = self.index_raw;
        let Some(kind) = self.peek()? else {
            return Ok(None);
        };
        let kind = RecordKind::from_byte(kind)
            .ok_or_else(|| bad(0, at, format!("unknown record kind {kind}")))?;
        self.index_exact(|s| &mut s.key, 5, "key length")?;
        let key_len = u32::from_le_bytes([self.key[1], self.key[2], self.key[3], self.key[4]]);
        if key_len > MAX_KEY_LEN {
            return Err(bad(0, at, format!("key of {key_len} bytes")));
        }
        self.index_exact(|s| &mut s.key, key_len as usize, "key")?;
        if std::str::from_utf8(&self.key).is_err() {
            return Err(bad(0, at, "key is not UTF-8".into()));
        }
        self.index_exact(|s| &mut s.value, 4, "value length")?;
        let value_len =
            u32::from_le_bytes([self.value[0], self.value[1], self.value[2], self.value[3]]);
        if value_len > self.limits.max_value_bytes {
            return Err(bad(
                0,
                at,
                format!("value of {value_len} bytes, over the limit"),
            ));
        }
        self.index_exact(|s| &mut s.value, value_len as usize, "value")?;
        self.records += 1;
        let limit = self.manifest.record_count.min(self.limits.max_records);
        if self.records > limit {
            return Err(BundleError::TooManyRecords { limit });
        }
        Ok(Some(kind))
    }

    fn key(&self) -> &str {
        std::str::from_utf8(&self.key).unwrap_or_default()
    }

    /// The next body frame the index lists, with its tenants; `None` after
    /// the last.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, BundleError> {
        if self.peek()? != Some(RecordKind::Frame as u8) {
            return Ok(None);
        }
        let at = self.index_raw;
        self.read_index_record()?;
        let sizes: [u8; 16] = self
            .value
            .as_slice()
            .try_into()
            .map_err(|_| bad(0, at, "frame record value is not 16 bytes".into()))?;
        let (size, raw_size) = sizes.split_at(8);
        let le = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
        let (size, raw_size) = (le(size), le(raw_size));
        self.frames += 1;
        let number = self.frames;
        if self
            .offset
            .checked_add(size)
            .is_none_or(|end| end > self.manifest.payload_size)
        {
            return Err(bad(number, 0, "runs past the end of the payload".into()));
        }
        self.frames_raw = self.frames_raw.saturating_add(raw_size);
        let raw_limit = self
            .manifest
            .payload_raw_size
            .min(self.limits.max_decompressed_bytes);
        if self.frames_raw > raw_limit {
            return Err(BundleError::DecompressedTooLarge { limit: raw_limit });
        }
        let mut tenants = Vec::new();
        while self.peek()? == Some(RecordKind::Tenant as u8) {
            let at = self.index_raw;
            self.read_index_record()?;
            let config_hash = hex_digest(&self.value).map_err(|r| bad(0, at, r))?;
            if self.tenants > 0 && self.key <= self.last_tenant {
                return Err(bad(0, at, format!("tenant {} is out of order", self.key())));
            }
            self.last_tenant.clone_from(&self.key);
            tenants.push(IndexEntry {
                tenant: self.key().to_owned(),
                config_hash,
            });
            self.tenants += 1;
            // Its config and prompt, in the body frame.
            self.records += 2;
        }
        if tenants.is_empty() {
            return Err(bad(0, at, "a frame record lists no tenants".into()));
        }
        let frame = Frame {
            number,
            tenants,
            offset: self.offset,
            size,
            raw_size,
        };
        self.offset += size;
        Ok(Some(frame))
    }

    /// Decompresses `frame` (which [`Self::next_frame`] returned) and checks
    /// that it holds exactly its tenants' configs and prompts; each config's
    /// hash is checked as [`FrameBodies::config`] hands it out.
    pub fn read_frame<'a>(&'a mut self, frame: &'a Frame) -> Result<FrameBodies<'a>, BundleError> {
        let n = frame.number;
        let bundle = &mut self.index.get_mut().get_mut().get_mut().get_mut().inner;
        bundle.seek(SeekFrom::Start(self.payload_offset + frame.offset))?;
        self.compressed.resize(frame.size as usize, 0);
        read_exact(bundle, &mut self.compressed, "payload")?;
        self.raw.clear();
        self.raw.reserve(frame.raw_size as usize);
        self.decompressor
            .decompress_to_buffer(self.compressed.as_slice(), &mut self.raw)
            .map_err(|e| {
                bad(
                    n,
                    0,
                    format!("does not decompress to its {} bytes: {e}", frame.raw_size),
                )
            })?;
        let raw = self.raw.as_slice();
        if raw.len() as u64 != frame.raw_size {
            return Err(bad(
                n,
                0,
                format!(
                    "decompresses to {} bytes, the index says {}",
                    raw.len(),
                    frame.raw_size
                ),
            ));
        }
        let mut pos = 0;
        let mut spans = Vec::with_capacity(frame.tenants.len());
        for entry in &frame.tenants {
            let mut next = |kind: RecordKind| {
                let at = pos as u64;
                let rec = read_record(raw, &mut pos, &self.limits).map_err(|r| bad(n, at, r))?;
                if rec.kind != kind || rec.key != entry.tenant {
                    return Err(bad(
                        n,
                        at,
                        format!(
                            "expected the {kind:?} of {}, found the {:?} of {}",
                            entry.tenant, rec.kind, rec.key
                        ),
                    ));
                }
                Ok((at, pos - rec.value.len()..pos))
            };
            let (at, config) = next(RecordKind::Config)?;
            let (_, prompt) = next(RecordKind::Prompt)?;
            spans.push(BodySpan { at, config, prompt });
        }
        if pos != raw.len() {
            return Err(bad(
                n,
                pos as u64,
                "bytes after the frame's last tenant".into(),
            ));
        }
        Ok(FrameBodies {
            raw,
            number: n,
            tenants: &frame.tenants,
            spans,
        })
    }

    /// The signed SHA-256 of the route records (the manifest's
    /// `routes_sha256`): equal digests mean equal routes, so a reader can
    /// keep the routes it has. [`Self::next_route`] checks it at the end.
    pub fn routes_sha256(&self) -> &str {
        &self.manifest.routes_sha256
    }

    /// The next phone route, `(number, tenant id)`; `None` after the last,
    /// once the routes' digest and the payload's totals match the manifest.
    pub fn next_route(&mut self) -> Result<Option<(&str, &str)>, BundleError> {
        let at = self.index_raw;
        match self.read_index_record()? {
            None => {
                self.check_totals()?;
                Ok(None)
            }
            Some(RecordKind::Route) => {
                for part in [
                    &[RecordKind::Route as u8][..],
                    &(self.key.len() as u32).to_le_bytes(),
                    &self.key,
                    &(self.value.len() as u32).to_le_bytes(),
                    &self.value,
                ] {
                    self.routes.update(part);
                }
                let tenant = std::str::from_utf8(&self.value)
                    .map_err(|_| bad(0, at, format!("route {} is not UTF-8", self.key())))?;
                Ok(Some((self.key(), tenant)))
            }
            Some(kind) => Err(bad(
                0,
                at,
                format!("expected a route, found a {kind:?} record"),
            )),
        }
    }

    fn check_totals(&mut self) -> Result<(), BundleError> {
        let digest = hex::encode(std::mem::take(&mut self.routes).finalize());
        if digest != self.manifest.routes_sha256 {
            return Err(bad(
                0,
                self.index_raw,
                format!(
                    "the route records hash to {digest}, the manifest's routes_sha256 is {}",
                    self.manifest.routes_sha256
                ),
            ));
        }
        let m = &self.manifest;
        for (what, expected, actual) in [
            ("records", m.record_count, self.records),
            (
                "decompressed bytes",
                m.payload_raw_size,
                self.index_raw + self.frames_raw,
            ),
            ("compressed bytes", m.payload_size, self.offset),
            ("tenants", m.tenant_count, self.tenants),
        ] {
            if expected != actual {
                return Err(BundleError::CountMismatch {
                    what,
                    expected,
                    actual,
                });
            }
        }
        Ok(())
    }
}

fn bad(frame: u64, offset: u64, reason: String) -> BundleError {
    BundleError::BadRecord {
        frame,
        offset,
        reason,
    }
}

enum Stage {
    Layer1,
    Frames,
    Routes,
    Done,
}

/// Every record of a verified payload, in logical order.
pub struct Records<R: Read + Seek> {
    payload: PayloadReader<R>,
    queue: std::collections::VecDeque<Record>,
    stage: Stage,
}

impl<R: Read + Seek> Records<R> {
    fn advance(&mut self) -> Result<Option<Record>, BundleError> {
        loop {
            if let Some(r) = self.queue.pop_front() {
                return Ok(Some(r));
            }
            match self.stage {
                Stage::Layer1 => {
                    self.stage = Stage::Frames;
                    return Ok(Some(Record {
                        kind: RecordKind::Layer1,
                        key: "layer1".into(),
                        value: self.payload.layer1().to_vec(),
                    }));
                }
                Stage::Frames => match self.payload.next_frame()? {
                    Some(frame) => {
                        let bodies = self.payload.read_frame(&frame)?;
                        for (i, entry) in frame.tenants.iter().enumerate() {
                            self.queue.push_back(Record {
                                kind: RecordKind::Config,
                                key: entry.tenant.clone(),
                                value: bodies.config(i)?.to_vec(),
                            });
                            self.queue.push_back(Record {
                                kind: RecordKind::Prompt,
                                key: entry.tenant.clone(),
                                value: bodies.prompt(i)?.to_vec(),
                            });
                        }
                    }
                    None => self.stage = Stage::Routes,
                },
                Stage::Routes => {
                    return Ok(self.payload.next_route()?.map(|(number, tenant)| Record {
                        kind: RecordKind::Route,
                        key: number.to_owned(),
                        value: tenant.as_bytes().to_vec(),
                    }));
                }
                Stage::Done => return Ok(None),
            }
        }
    }
}

impl<R: Read + Seek> Iterator for Records<R> {
    type Item = Result<Record, BundleError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.advance().transpose();
        if !matches!(item, Some(Ok(_))) {
            self.stage = Stage::Done;
            self.queue.clear();
        }
        item
    }
}

/// A whole payload decoded into maps, for inspection, diffs and tests.
/// (The agent streams records into redb instead.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contents {
    /// Layer 1 as JSON.
    pub layer1: Vec<u8>,
    /// Tenant id → effective config JSON.
    pub configs: std::collections::BTreeMap<String, Vec<u8>>,
    /// Tenant id → combined system prompt.
    pub prompts: std::collections::BTreeMap<String, String>,
    /// E.164 number → tenant id.
    pub routes: std::collections::BTreeMap<String, String>,
}

impl Contents {
    /// Collects every record.
    pub fn collect<I: Iterator<Item = Result<Record, BundleError>>>(
        records: I,
    ) -> Result<Self, BundleError> {
        let mut c = Self::default();
        for r in records {
            let r = r?;
            let utf8 = |v: Vec<u8>, key: &str| {
                String::from_utf8(v).map_err(|_| BundleError::BadRecord {
                    frame: 0,
                    offset: 0,
                    reason: format!("the {:?} of {key} is not UTF-8", r.kind),
                })
            };
            match r.kind {
                RecordKind::Layer1 => c.layer1 = r.value,
                RecordKind::Config => {
                    c.configs.insert(r.key, r.value);
                }
                RecordKind::Prompt => {
                    let prompt = utf8(r.value, &r.key)?;
                    c.prompts.insert(r.key, prompt);
                }
                RecordKind::Route => {
                    let tenant = utf8(r.value, &r.key)?;
                    c.routes.insert(r.key, tenant);
                }
                // Index structure, never yielded by `records()`.
                RecordKind::Frame | RecordKind::Tenant => {}
            }
        }
        Ok(c)
    }
}
