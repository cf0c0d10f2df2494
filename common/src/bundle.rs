//! The snapshot bundle: one immutable file holding a whole snapshot.
//!
//! ```text
//! magic "STRATAB1" | u32le manifest_len | manifest (canonical JSON)
//!                  | u32le signatures_len | signatures (JSON array)
//!                  | payload (one zstd frame, manifest.payload_size bytes)
//! ```
//! The signatures cover the manifest bytes; the manifest carries the payload's
//! size and SHA-256. docs/FORMAT.md specifies every byte.
//!
//! Reading is a pipeline that trusts nothing it has not checked: header limits
//! → manifest signatures → payload size and hash (streamed) → decompression
//! with limits on the window, the decompressed size and the record count.

use std::io::{self, BufReader, Read, Seek, SeekFrom, Take, Write as _};

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
pub const FORMAT_VERSION: u32 = 1;
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
    /// Layer 1 as JSON; key `layer1`.
    Layer1 = 1,
    /// A tenant's effective config as canonical JSON; key the tenant id.
    Config = 2,
    /// A tenant's combined system prompt, UTF-8; key the tenant id.
    Prompt = 3,
    /// A phone route; key the E.164 number, value the tenant id.
    Route = 4,
}

impl RecordKind {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Layer1,
            2 => Self::Config,
            3 => Self::Prompt,
            4 => Self::Route,
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

/// Writes payload records into a zstd stream.
pub struct PayloadWriter {
    encoder: zstd::Encoder<'static, Vec<u8>>,
    raw_size: u64,
    record_count: u64,
}

/// A finished, compressed payload.
#[derive(Debug, Clone)]
pub struct Payload {
    /// The zstd frame.
    pub compressed: Vec<u8>,
    /// Hex SHA-256 of `compressed`.
    pub sha256: String,
    /// Decompressed size.
    pub raw_size: u64,
    /// Records written.
    pub record_count: u64,
}

impl PayloadWriter {
    /// A writer compressing at `level` with `threads` zstd workers (0: none).
    pub fn new(level: i32, threads: u32) -> io::Result<Self> {
        let mut encoder = zstd::Encoder::new(Vec::new(), level)?;
        if threads > 0 {
            encoder.multithread(threads)?;
        }
        encoder.include_checksum(true)?;
        Ok(Self {
            encoder,
            raw_size: 0,
            record_count: 0,
        })
    }

    /// Appends one record.
    pub fn record(&mut self, kind: RecordKind, key: &str, value: &[u8]) -> io::Result<()> {
        let too_long = |what| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("record {what} too long"),
            )
        };
        let key_len = u32::try_from(key.len()).map_err(|_| too_long("key"))?;
        let value_len = u32::try_from(value.len()).map_err(|_| too_long("value"))?;
        self.encoder.write_all(&[kind as u8])?;
        self.encoder.write_all(&key_len.to_le_bytes())?;
        self.encoder.write_all(key.as_bytes())?;
        self.encoder.write_all(&value_len.to_le_bytes())?;
        self.encoder.write_all(value)?;
        self.raw_size += 9 + u64::from(key_len) + u64::from(value_len);
        self.record_count += 1;
        Ok(())
    }

    /// Ends the zstd frame.
    pub fn finish(self) -> io::Result<Payload> {
        let compressed = self.encoder.finish()?;
        Ok(Payload {
            sha256: canonical::sha256_hex(&compressed),
            compressed,
            raw_size: self.raw_size,
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
    /// A record that cannot be decoded.
    #[error("payload record {index} is malformed: {reason}")]
    BadRecord {
        /// Its index.
        index: u64,
        /// What is wrong.
        reason: String,
    },
    /// The payload disagrees with the manifest's counts.
    #[error(
        "payload holds {actual} records / {actual_bytes} bytes, the manifest says {expected} / {expected_bytes}"
    )]
    CountMismatch {
        /// From the manifest.
        expected: u64,
        /// Decoded.
        actual: u64,
        /// From the manifest.
        expected_bytes: u64,
        /// Decoded.
        actual_bytes: u64,
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
    let copied = io::copy(
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

    /// Streams the payload's records. The iterator ends with an error if the
    /// payload exceeds a limit or disagrees with the manifest.
    pub fn records(self) -> Result<Records<R>, BundleError> {
        let payload = self.reader.take(self.header.manifest.payload_size);
        let mut decoder = zstd::Decoder::new(payload).map_err(BundleError::Decompress)?;
        decoder
            .window_log_max(MAX_WINDOW_LOG)
            .map_err(BundleError::Decompress)?;
        let max = self
            .limits
            .max_decompressed_bytes
            .min(self.header.manifest.payload_raw_size);
        // Records are read in small pieces (a kind byte, a length): buffer the
        // decompressed stream so each is not a call into zstd.
        Ok(Records {
            inner: BufReader::with_capacity(64 * 1024, decoder).take(max + 1),
            limits: self.limits,
            max_bytes: max,
            expected: self.header.manifest.record_count,
            expected_bytes: self.header.manifest.payload_raw_size,
            index: 0,
            bytes: 0,
            done: false,
        })
    }
}

/// Iterator over a verified payload's records.
pub struct Records<R: Read> {
    inner: Take<BufReader<zstd::Decoder<'static, BufReader<Take<R>>>>>,
    limits: Limits,
    max_bytes: u64,
    expected: u64,
    expected_bytes: u64,
    index: u64,
    bytes: u64,
    done: bool,
}

impl<R: Read> Records<R> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, BundleError> {
        let mut read = 0;
        while read < buf.len() {
            let n = self
                .inner
                .read(&mut buf[read..])
                .map_err(BundleError::Decompress)?;
            if n == 0 {
                break;
            }
            read += n;
        }
        self.bytes += read as u64;
        if self.bytes > self.max_bytes {
            return Err(BundleError::DecompressedTooLarge {
                limit: self.max_bytes,
            });
        }
        Ok(read)
    }

    fn read_u32(&mut self, what: &str) -> Result<u32, BundleError> {
        let mut b = [0u8; 4];
        if self.fill(&mut b)? < 4 {
            return Err(self.bad(format!("ends inside the {what} length")));
        }
        Ok(u32::from_le_bytes(b))
    }

    fn bad(&self, reason: String) -> BundleError {
        BundleError::BadRecord {
            index: self.index,
            reason,
        }
    }

    fn next_record(&mut self) -> Result<Option<Record>, BundleError> {
        let mut kind = [0u8; 1];
        if self.fill(&mut kind)? == 0 {
            if self.index != self.expected || self.bytes != self.expected_bytes {
                return Err(BundleError::CountMismatch {
                    expected: self.expected,
                    actual: self.index,
                    expected_bytes: self.expected_bytes,
                    actual_bytes: self.bytes,
                });
            }
            return Ok(None);
        }
        if self.index >= self.expected.min(self.limits.max_records) {
            return Err(BundleError::TooManyRecords {
                limit: self.expected.min(self.limits.max_records),
            });
        }
        let kind = RecordKind::from_byte(kind[0])
            .ok_or_else(|| self.bad(format!("unknown kind {}", kind[0])))?;
        let key_len = self.read_u32("key")?;
        if key_len > MAX_KEY_LEN {
            return Err(self.bad(format!("key of {key_len} bytes")));
        }
        let mut key = vec![0u8; key_len as usize];
        if self.fill(&mut key)? < key.len() {
            return Err(self.bad("ends inside the key".into()));
        }
        let key = String::from_utf8(key).map_err(|_| self.bad("key is not UTF-8".into()))?;
        let value_len = self.read_u32("value")?;
        if value_len > self.limits.max_value_bytes {
            return Err(self.bad(format!("value of {value_len} bytes, over the limit")));
        }
        let mut value = vec![0u8; value_len as usize];
        if self.fill(&mut value)? < value.len() {
            return Err(self.bad("ends inside the value".into()));
        }
        self.index += 1;
        Ok(Some(Record { kind, key, value }))
    }
}

impl<R: Read> Iterator for Records<R> {
    type Item = Result<Record, BundleError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.next_record().transpose();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
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
        for (index, r) in records.enumerate() {
            let r = r?;
            let utf8 = |v: Vec<u8>| {
                String::from_utf8(v).map_err(|_| BundleError::BadRecord {
                    index: index as u64,
                    reason: "value is not UTF-8".into(),
                })
            };
            match r.kind {
                RecordKind::Layer1 => c.layer1 = r.value,
                RecordKind::Config => {
                    c.configs.insert(r.key, r.value);
                }
                RecordKind::Prompt => {
                    c.prompts.insert(r.key, utf8(r.value)?);
                }
                RecordKind::Route => {
                    c.routes.insert(r.key, utf8(r.value)?);
                }
            }
        }
        Ok(c)
    }
}
