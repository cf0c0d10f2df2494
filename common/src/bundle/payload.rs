//! A verified payload read through its index, decompressed as it is read:
//! body frames on demand, then the routes, every rule of docs/FORMAT.md
//! checked on what is decoded and the totals against the manifest.

use std::cell::OnceCell;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Take};

use sha2::{Digest, Sha256};

use super::contents::Records;
use super::error::bad;
use super::frame::{BodySpan, Frame, FrameBodies, IndexEntry, check_frame_header};
use super::reader::{VerifiedBundle, read_exact};
use super::record::{self, RawRecord, RecordKind, StreamError, hex_digest};
use super::{BundleError, Limits, MAX_WINDOW_LOG, Manifest};

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

/// The tenant ids of the index, in their (ascending) order: what a route
/// may name. One string and its ends, not an allocation per tenant
/// (measured: a hash set of boxed ids made a 1 % apply slower).
#[derive(Default)]
struct TenantIds {
    names: String,
    ends: Vec<usize>,
}

impl TenantIds {
    fn push(&mut self, id: &str) {
        self.names.push_str(id);
        self.ends.push(self.names.len());
    }

    fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.names[start..self.ends[i]]
    }

    fn last(&self) -> Option<&str> {
        self.ends.len().checked_sub(1).map(|i| self.get(i))
    }

    fn contains(&self, id: &str) -> bool {
        let (mut lo, mut hi) = (0, self.ends.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid).cmp(id) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }

    fn len(&self) -> usize {
        self.ends.len()
    }
}

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
    prompt_prefix: OnceCell<Result<Vec<u8>, String>>,
    /// The last index record, whole.
    record: Vec<u8>,
    /// Decompressed index bytes read so far.
    index_raw: u64,
    frames: u64,
    /// Where the next body frame starts, from the payload's start.
    offset: u64,
    frames_raw: u64,
    records: u64,
    tenants: TenantIds,
    /// The number of the last route read.
    last_route: Option<Vec<u8>>,
    /// The tenant the last route named, found among the index's.
    last_route_tenant: Option<String>,
    routes: Sha256,
    compressed: Vec<u8>,
    raw: Vec<u8>,
    decompressor: zstd::bulk::Decompressor<'static>,
}

impl<R: Read + Seek> PayloadReader<R> {
    pub(super) fn new(verified: VerifiedBundle<R>) -> Result<Self, BundleError> {
        let VerifiedBundle {
            header,
            mut reader,
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
        let mut head = [0u8; 5];
        reader.seek(SeekFrom::Start(header.payload_offset))?;
        let head_len = head.len().min(m.index_size as usize);
        read_exact(&mut reader, &mut head[..head_len], "payload")?;
        check_frame_header(0, &head[..head_len])?;
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
            index: BufReader::with_capacity(64 * 1024, decoder.single_frame()),
            payload_offset: header.payload_offset,
            offset: m.index_size,
            manifest: m,
            limits,
            layer1: Vec::new(),
            prompt_prefix: OnceCell::new(),
            record: Vec::new(),
            index_raw: 0,
            frames: 0,
            frames_raw: 0,
            records: 0,
            tenants: TenantIds::default(),
            last_route: None,
            last_route_tenant: None,
            routes: Sha256::new(),
            compressed: Vec::new(),
            raw: Vec::new(),
            decompressor: zstd::bulk::Decompressor::new().map_err(BundleError::Decompress)?,
        };
        let at = this.index_raw;
        if !this.read_index_record()? {
            return Err(bad(0, 0, "the index is empty".into()));
        }
        let first = this.current(at)?;
        if first.kind != RecordKind::Layer1 {
            return Err(bad(0, 0, "the index does not start with Layer 1".into()));
        }
        this.layer1 = first.value.to_vec();
        Ok(this)
    }

    /// Layer 1 as JSON.
    pub fn layer1(&self) -> &[u8] {
        &self.layer1
    }

    /// The kind byte of the next index record, without reading it; `None`
    /// at the end of the index.
    fn peek(&mut self) -> Result<Option<u8>, BundleError> {
        use std::io::BufRead;
        Ok(self
            .index
            .fill_buf()
            .map_err(BundleError::Decompress)?
            .first()
            .copied())
    }

    /// Reads the next index record into `self.record`, within the limits;
    /// `false` at the end of the index.
    fn read_index_record(&mut self) -> Result<bool, BundleError> {
        let at = self.index_raw;
        let cap = self
            .manifest
            .payload_raw_size
            .min(self.limits.max_decompressed_bytes);
        let read = record::read_next(
            &mut self.index,
            &mut self.record,
            &self.limits,
            cap.saturating_sub(at),
        );
        match read {
            Ok(false) => return Ok(false),
            Ok(true) => {}
            Err(StreamError::OverBudget) => {
                return Err(BundleError::DecompressedTooLarge { limit: cap });
            }
            Err(StreamError::Truncated(what)) => {
                return Err(bad(0, at, format!("ends inside a record's {what}")));
            }
            Err(StreamError::Malformed(reason)) => return Err(bad(0, at, reason)),
            Err(StreamError::Io(e)) => return Err(BundleError::Decompress(e)),
        }
        self.index_raw += self.record.len() as u64;
        self.records += 1;
        let limit = self.manifest.record_count.min(self.limits.max_records);
        if self.records > limit {
            return Err(BundleError::TooManyRecords { limit });
        }
        Ok(true)
    }

    /// The record [`Self::read_index_record`] read, decoded; `at` is where
    /// it started, for messages.
    fn current(&self, at: u64) -> Result<RawRecord<'_>, BundleError> {
        record::decode(&self.record, &mut 0, &self.limits).map_err(|r| bad(0, at, r))
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
            .current(at)?
            .value
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
        if raw_size > self.limits.max_frame_bytes {
            return Err(BundleError::DecompressedTooLarge {
                limit: self.limits.max_frame_bytes,
            });
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
            let rec = self.current(at)?;
            let config_hash = hex_digest(rec.value).map_err(|r| bad(0, at, r))?;
            if self.tenants.last().is_some_and(|last| rec.key <= last) {
                return Err(bad(0, at, format!("tenant {} is out of order", rec.key)));
            }
            let tenant = rec.key.to_owned();
            self.tenants.push(&tenant);
            tenants.push(IndexEntry {
                tenant,
                config_hash,
            });
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
    /// that it is one zstd frame with its checksum, holding exactly its
    /// tenants' configs and prompts; each config and prompt is checked as
    /// [`FrameBodies`] hands it out.
    pub fn read_frame<'a>(&'a mut self, frame: &'a Frame) -> Result<FrameBodies<'a>, BundleError> {
        let n = frame.number;
        let bundle = &mut self.index.get_mut().get_mut().get_mut().get_mut().inner;
        bundle.seek(SeekFrom::Start(self.payload_offset + frame.offset))?;
        self.compressed.resize(frame.size as usize, 0);
        read_exact(bundle, &mut self.compressed, "payload")?;
        check_frame_header(n, &self.compressed)?;
        if zstd::zstd_safe::find_frame_compressed_size(&self.compressed)
            != Ok(self.compressed.len())
        {
            return Err(bad(
                n,
                0,
                "is not exactly one zstd frame of the size the index gives".into(),
            ));
        }
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
                let rec = record::decode(raw, &mut pos, &self.limits).map_err(|r| bad(n, at, r))?;
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
                Ok((at, rec.value_at))
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
            layer1: &self.layer1,
            prompt_prefix: &self.prompt_prefix,
        })
    }

    /// The signed SHA-256 of the route records (the manifest's
    /// `routes_sha256`): equal digests mean equal routes, so a reader can
    /// keep the routes it has. [`Self::next_route`] checks it at the end.
    pub fn routes_sha256(&self) -> &str {
        &self.manifest.routes_sha256
    }

    /// The next phone route, `(number, tenant id)`, once it is found to come
    /// after the one before (so no number is routed twice) and to name a
    /// tenant of the index; `None` after the last, once the routes' digest
    /// and the payload's totals match the manifest.
    pub fn next_route(&mut self) -> Result<Option<(&str, &str)>, BundleError> {
        let at = self.index_raw;
        if !self.read_index_record()? {
            self.check_totals()?;
            return Ok(None);
        }
        self.routes.update(&self.record);
        let rec = record::decode(&self.record, &mut 0, &self.limits).map_err(|r| bad(0, at, r))?;
        if rec.kind != RecordKind::Route {
            return Err(bad(
                0,
                at,
                format!("expected a route, found a {:?} record", rec.kind),
            ));
        }
        let number = rec.key;
        let tenant = std::str::from_utf8(rec.value)
            .map_err(|_| bad(0, at, format!("route {number} is not UTF-8")))?;
        if let Some(last) = &self.last_route {
            match last.as_slice().cmp(number.as_bytes()) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => {
                    return Err(BundleError::DuplicateRoute {
                        number: number.to_owned(),
                    });
                }
                std::cmp::Ordering::Greater => {
                    return Err(BundleError::RouteOutOfOrder {
                        number: number.to_owned(),
                        previous: String::from_utf8_lossy(last).into_owned(),
                    });
                }
            }
        }
        // A tenant's numbers are usually adjacent: look each tenant up once.
        if self.last_route_tenant.as_deref() != Some(tenant) && !self.tenants.contains(tenant) {
            return Err(BundleError::RouteToUnknownTenant {
                number: number.to_owned(),
                tenant: tenant.to_owned(),
            });
        }
        let last = self.last_route.get_or_insert_with(Vec::new);
        last.clear();
        last.extend_from_slice(number.as_bytes());
        let last_tenant = self.last_route_tenant.get_or_insert_with(String::new);
        last_tenant.clear();
        last_tenant.push_str(tenant);
        Ok(Some((number, tenant)))
    }

    fn check_totals(&mut self) -> Result<(), BundleError> {
        // The index is exactly one frame of `index_size` bytes: nothing may
        // follow it, read or still unread.
        let after_frame = self.index.get_ref().get_ref();
        let unread = after_frame.buffer().len() as u64 + after_frame.get_ref().limit();
        if unread > 0 {
            return Err(bad(
                0,
                self.index_raw,
                format!("{unread} byte(s) after the index's one zstd frame"),
            ));
        }
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
            ("tenants", m.tenant_count, self.tenants.len() as u64),
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

impl<R: Read + Seek> VerifiedBundle<R> {
    /// Decompresses the index and returns a reader that decodes body frames
    /// on demand, each within the limits.
    pub fn payload(self) -> Result<PayloadReader<R>, BundleError> {
        PayloadReader::new(self)
    }

    /// Decodes every record in logical order (Layer 1, each tenant's config
    /// and prompt, routes), checking the whole payload against the index and
    /// the manifest.
    pub fn records(self) -> Result<Records<R>, BundleError> {
        Ok(Records::new(self.payload()?))
    }
}
