//! Reading a bundle: a pipeline that trusts nothing it has not checked.
//! Header limits → canonical manifest → publisher signatures → size limits
//! → payload SHA-256 (streamed) → then, lazily, decompression within the
//! limits, with every payload rule of docs/FORMAT.md checked on what is
//! decoded: frame checksums, record layout against the index, canonical
//! configs that hash to their `config_hash`, prompts that start with the
//! Layer 1 base prompt, routes unique, in order and to a tenant present.

use std::io::{self, Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

use super::{
    BundleError, FORMAT_TREE, FORMAT_VERSION, Limits, MAGIC, MANIFEST_TYPE, MAX_HEADER_PART,
    Manifest,
};
use crate::canonical;
use crate::sign::{KeyId, Role, SignatureEntry, TrustedKeys};

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
    if manifest.kind != MANIFEST_TYPE
        || (manifest.format != FORMAT_VERSION && manifest.format != FORMAT_TREE)
    {
        return Err(BundleError::BadManifest(format!(
            "type {:?} format {}, expected {MANIFEST_TYPE:?} format {FORMAT_VERSION} or {FORMAT_TREE}",
            manifest.kind, manifest.format
        )));
    }
    canonical::require_canonical(&manifest_bytes, &manifest)
        .map_err(BundleError::NonCanonicalManifest)?;
    for (field, value) in [
        ("created_at", &manifest.created_at),
        ("expires_at", &manifest.expires_at),
    ] {
        crate::time::parse_exact(value).map_err(|_| BundleError::BadTimestamp {
            field,
            value: value.clone(),
        })?;
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

pub(super) fn read_exact<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), BundleError> {
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
    pub(super) reader: R,
    pub(super) limits: Limits,
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

    /// The decompressed root frame of a format 3 bundle: its payload is
    /// exactly one zstd frame (with its checksum) of `payload_raw_size`
    /// bytes, at most `max_frame_bytes`.
    pub fn root(mut self) -> Result<Vec<u8>, BundleError> {
        let m = &self.header.manifest;
        if m.format != FORMAT_TREE || m.index_size != m.payload_size {
            return Err(BundleError::BadManifest(format!(
                "format {} with an index of {} of {} payload bytes is not a format {FORMAT_TREE} root",
                m.format, m.index_size, m.payload_size
            )));
        }
        if m.payload_raw_size > self.limits.max_frame_bytes {
            return Err(BundleError::DecompressedTooLarge {
                limit: self.limits.max_frame_bytes,
            });
        }
        let mut compressed = Vec::with_capacity(m.payload_size as usize);
        (&mut self.reader)
            .take(m.payload_size)
            .read_to_end(&mut compressed)?;
        super::frame::check_frame_header(0, &compressed)?;
        if zstd::zstd_safe::find_frame_compressed_size(&compressed) != Ok(compressed.len()) {
            return Err(super::error::bad(
                0,
                0,
                "the root is not exactly one zstd frame".into(),
            ));
        }
        let mut raw = Vec::with_capacity(m.payload_raw_size as usize);
        let mut d = zstd::bulk::Decompressor::new().map_err(BundleError::Decompress)?;
        d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
            super::MAX_WINDOW_LOG,
        ))
        .map_err(BundleError::Decompress)?;
        d.decompress_to_buffer(compressed.as_slice(), &mut raw)
            .map_err(|e| {
                super::error::bad(
                    0,
                    0,
                    format!(
                        "the root does not decompress to its {} bytes: {e}",
                        m.payload_raw_size
                    ),
                )
            })?;
        if raw.len() as u64 != m.payload_raw_size {
            return Err(BundleError::CountMismatch {
                what: "decompressed bytes",
                expected: m.payload_raw_size,
                actual: raw.len() as u64,
            });
        }
        Ok(raw)
    }
}
