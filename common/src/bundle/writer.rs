//! Building a payload (the index frame, then body frames) and the bundle
//! file around it.

use std::io;

use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

use super::record::{self, RecordKind};
use super::{BundleError, FRAME_TARGET_BYTES, MAGIC, MAX_HEADER_PART, Manifest};
use crate::{canonical, sign};

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
    /// The last tenant written: ids must ascend, as agents check.
    last_tenant: Option<String>,
    routes_started: bool,
    routes: Sha256,
}

/// A finished, compressed payload.
#[derive(Debug, Clone)]
pub struct Payload {
    /// The manifest's `format`: 2 (this writer), or 3 (a format 3 root,
    /// [`crate::bundle::tree::TreeWriter`]).
    pub format: u32,
    /// The index frame followed by the body frames (format 2), or the
    /// root frame (format 3).
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

pub(crate) fn out_of_order(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("payload records out of order: {what}"),
    )
}

/// Takes `key` as the new `last` if it comes after it: tenants (and
/// routes) must strictly ascend, as readers check.
pub(crate) fn ascend(last: &mut Option<String>, key: &str, what: &str) -> io::Result<()> {
    if let Some(l) = last.as_deref()
        && key <= l
    {
        return Err(out_of_order(&format!(
            "{what} {key} comes after {l}; they must ascend"
        )));
    }
    *last = Some(key.to_owned());
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
            last_tenant: None,
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
        ascend(&mut self.last_tenant, tenant, "tenant")?;
        record::encode(&mut self.frame, RecordKind::Config, tenant, config)?;
        record::encode(&mut self.frame, RecordKind::Prompt, tenant, prompt)?;
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
        record::encode(&mut self.index, kind, key, value)?;
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
            format: super::FORMAT_VERSION,
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
    assemble(&manifest_bytes, payload, keys)
}

/// The bundle file around `manifest_bytes` (signed as they are, by every
/// key) and `payload`. [`write_bundle`] passes the canonical manifest; tests
/// pass others, to check that readers refuse them.
pub fn assemble(
    manifest_bytes: &[u8],
    payload: &[u8],
    keys: &[SigningKey],
) -> Result<Vec<u8>, BundleError> {
    let sigs = sign::sign(keys, manifest_bytes);
    let sig_bytes = canonical::to_vec(&sigs).map_err(|e| BundleError::Encode(e.to_string()))?;
    let len = |b: &[u8]| {
        u32::try_from(b.len())
            .ok()
            .filter(|l| *l <= MAX_HEADER_PART)
    };
    let (Some(ml), Some(sl)) = (len(manifest_bytes), len(&sig_bytes)) else {
        return Err(BundleError::Encode(
            "manifest or signatures over 64 KiB".into(),
        ));
    };
    let mut out = Vec::with_capacity(16 + manifest_bytes.len() + sig_bytes.len() + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&ml.to_le_bytes());
    out.extend_from_slice(manifest_bytes);
    out.extend_from_slice(&sl.to_le_bytes());
    out.extend_from_slice(&sig_bytes);
    out.extend_from_slice(payload);
    Ok(out)
}
