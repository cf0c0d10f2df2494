//! Building a format 3 snapshot: Layer 1, tenants in id order, then routes
//! in number order go in; the objects and the root payload come out.

use std::io;

use sha2::{Digest, Sha256};

use super::read::{self, Root};
use super::{
    CHUNK_PARAMS, ChunkRef, DICTIONARY_BYTES, Keyed, ObjectRef, PAGE_PARAMS, ROUTE_PAGE_PARAMS,
    SAMPLE_BYTES, page_boundary,
};
use crate::bundle::Payload;
use crate::bundle::record::{self, RecordKind};
use crate::bundle::writer::{ascend, out_of_order};
use crate::canonical;
use crate::chunk;

pub use super::objects::Objects;

/// Where a writer's objects go.
pub trait ObjectSink {
    /// Takes one object (called once per distinct object).
    fn put(&mut self, obj: &ObjectRef, bytes: Vec<u8>) -> io::Result<()>;
}

impl ObjectSink for Objects {
    fn put(&mut self, obj: &ObjectRef, bytes: Vec<u8>) -> io::Result<()> {
        self.insert(obj.sha256, bytes)
    }
}

/// A finished snapshot.
#[derive(Debug)]
pub struct Built {
    /// The root payload: one zstd frame (format 3), to sign in a bundle.
    pub root: Payload,
    /// Every object the root reaches.
    pub objects: Objects,
    /// The dictionary the chunks were compressed with, if any.
    pub dictionary: Option<Vec<u8>>,
    /// The chunks, in order.
    pub chunks: Vec<ChunkRef>,
}

/// A chunk cut but not yet compressed (while the dictionary is trained).
struct RawChunk {
    first: String,
    count: u64,
    sources: [u8; 32],
    raw: Vec<u8>,
}

/// Builds the objects of a snapshot. Records come in order: Layer 1,
/// tenants in ascending id order, routes in ascending number order.
pub struct TreeWriter {
    level: i32,
    plain: zstd::bulk::Compressor<'static>,
    /// With the dictionary, once there is one.
    with_dict: Option<zstd::bulk::Compressor<'static>>,
    dictionary: Option<Vec<u8>>,
    /// Whether a dictionary is still to be trained from the first chunks.
    training: bool,
    samples: Vec<u8>,
    sample_sizes: Vec<usize>,
    pending: Vec<RawChunk>,
    objects: Objects,
    layer1: Option<ObjectRef>,
    // The open chunk.
    chunk: Vec<u8>,
    chunk_first: Option<String>,
    chunk_count: u64,
    chunk_sources: Sha256,
    chunks: Vec<ChunkRef>,
    last_tenant: Option<String>,
    tenants: u64,
    // Routes.
    route_page: Vec<u8>,
    route_first: Option<String>,
    route_count: u64,
    route_pages: Vec<Keyed>,
    last_route: Option<String>,
    routes: u64,
    routes_digest: Sha256,
    /// One record reused for each tenant.
    rec: Vec<u8>,
}

impl TreeWriter {
    /// A writer compressing at zstd `level`. With `dictionary` (the one
    /// the channel's snapshot uses) chunks are compressed with it, so the
    /// chunks of unchanged tenants keep their names; without, one is
    /// trained on the first [`SAMPLE_BYTES`] of records.
    pub fn new(level: i32, dictionary: Option<Vec<u8>>) -> io::Result<Self> {
        let plain = compressor(level, None)?;
        let with_dict = dictionary
            .as_deref()
            .map(|d| compressor(level, Some(d)))
            .transpose()?;
        Ok(Self {
            level,
            plain,
            with_dict,
            training: dictionary.is_none(),
            dictionary,
            samples: Vec::new(),
            sample_sizes: Vec::new(),
            pending: Vec::new(),
            objects: Objects::new(),
            layer1: None,
            chunk: Vec::new(),
            chunk_first: None,
            chunk_count: 0,
            chunk_sources: Sha256::new(),
            chunks: Vec::new(),
            last_tenant: None,
            tenants: 0,
            route_page: Vec::new(),
            route_first: None,
            route_count: 0,
            route_pages: Vec::new(),
            last_route: None,
            routes: 0,
            routes_digest: Sha256::new(),
            rec: Vec::new(),
        })
    }

    /// Writes Layer 1 (JSON), the first record: its own object.
    pub fn layer1(&mut self, json: &[u8]) -> io::Result<()> {
        if self.layer1.is_some() {
            return Err(out_of_order("Layer 1 must come first, once"));
        }
        let mut raw = Vec::with_capacity(json.len() + 16);
        record::encode(&mut raw, RecordKind::Layer1, "layer1", json)?;
        self.layer1 = Some(self.put_plain(&raw, 1)?);
        Ok(())
    }

    /// Writes a tenant: its config hash, config and combined prompt, and
    /// the SHA-256 (hex) of its source, for the chunk's sources digest.
    pub fn tenant(
        &mut self,
        tenant: &str,
        config_hash: &str,
        config: &[u8],
        prompt: &[u8],
        source_sha256: &str,
    ) -> io::Result<()> {
        if self.layer1.is_none() || self.route_first.is_some() {
            return Err(out_of_order("tenants come after Layer 1 and before routes"));
        }
        ascend(&mut self.last_tenant, tenant, "tenant")?;
        self.rec.clear();
        record::encode(
            &mut self.rec,
            RecordKind::Tenant,
            tenant,
            config_hash.as_bytes(),
        )?;
        record::encode(&mut self.rec, RecordKind::Config, tenant, config)?;
        record::encode(&mut self.rec, RecordKind::Prompt, tenant, prompt)?;
        if !self.chunk.is_empty() && self.chunk.len() + self.rec.len() > CHUNK_PARAMS.max_bytes {
            self.close_chunk()?;
        }
        if self.training && self.samples.len() < SAMPLE_BYTES {
            self.samples.extend_from_slice(&self.rec);
            self.sample_sizes.push(self.rec.len());
        }
        self.chunk.extend_from_slice(&self.rec);
        self.chunk_first.get_or_insert_with(|| tenant.to_owned());
        self.chunk_count += 1;
        self.tenants += 1;
        self.chunk_sources.update(tenant.as_bytes());
        self.chunk_sources.update([0]);
        self.chunk_sources.update(source_sha256.as_bytes());
        self.chunk_sources.update([b'\n']);
        if self.chunk.len() >= CHUNK_PARAMS.min_bytes
            && chunk::is_boundary(tenant, CHUNK_PARAMS.mask_bits)
        {
            self.close_chunk()?;
        }
        Ok(())
    }

    /// Ends the open chunk after the last tenant written, whatever the
    /// cut rules say: a rollback of one tenant rewrites its chunk and keeps
    /// every other as it is.
    pub fn cut(&mut self) -> io::Result<()> {
        self.close_chunk()
    }

    /// Whether a chunk is open (holds tenants not yet cut into a chunk).
    pub fn chunk_open(&self) -> bool {
        self.chunk_first.is_some()
    }

    /// Takes chunk `c` of the channel's snapshot as it is, its tenants
    /// (the last of them `last`) unchanged since: no record is rendered or
    /// compressed again. Only between chunks, with the dictionary it was
    /// compressed with, and only for a chunk that ended at a boundary of
    /// its own (so that the cuts after it are the ones a full build makes).
    pub fn reuse_chunk(&mut self, c: &ChunkRef, last: &str) -> io::Result<()> {
        if self.layer1.is_none() || self.route_first.is_some() || self.chunk_open() || self.training
        {
            return Err(out_of_order(
                "a chunk is reused between chunks, after Layer 1, under the dictionary it was made with",
            ));
        }
        ascend(&mut self.last_tenant, &c.first, "tenant")?;
        ascend(&mut self.last_tenant, last, "tenant")
            .or_else(|e| if last == c.first { Ok(()) } else { Err(e) })?;
        self.last_tenant = Some(last.to_owned());
        self.tenants += c.obj.count;
        self.chunks.push(c.clone());
        Ok(())
    }

    /// Writes a phone route; after the last tenant.
    pub fn route(&mut self, number: &str, tenant: &str) -> io::Result<()> {
        if self.layer1.is_none() {
            return Err(out_of_order("routes come after Layer 1"));
        }
        ascend(&mut self.last_route, number, "route")?;
        self.close_chunk()?;
        self.rec.clear();
        record::encode(&mut self.rec, RecordKind::Route, number, tenant.as_bytes())?;
        if !self.route_page.is_empty()
            && self.route_page.len() + self.rec.len() > ROUTE_PAGE_PARAMS.max_bytes
        {
            self.close_route_page()?;
        }
        self.routes_digest.update(&self.rec);
        self.route_page.extend_from_slice(&self.rec);
        self.route_first.get_or_insert_with(|| number.to_owned());
        self.route_count += 1;
        self.routes += 1;
        if self.route_page.len() >= ROUTE_PAGE_PARAMS.min_bytes
            && page_boundary(number, ROUTE_PAGE_PARAMS)
        {
            self.close_route_page()?;
        }
        Ok(())
    }

    /// Closes the open chunk: compressed now, or kept raw until the
    /// dictionary is trained.
    fn close_chunk(&mut self) -> io::Result<()> {
        let Some(first) = self.chunk_first.take() else {
            return Ok(());
        };
        let raw = RawChunk {
            first,
            count: std::mem::take(&mut self.chunk_count),
            sources: std::mem::take(&mut self.chunk_sources).finalize().into(),
            raw: std::mem::take(&mut self.chunk),
        };
        if self.training {
            self.pending.push(raw);
            if self.samples.len() >= SAMPLE_BYTES {
                self.train()?;
            }
            return Ok(());
        }
        self.put_chunk(raw)
    }

    /// Trains the dictionary on the samples (none if zstd finds too few),
    /// then compresses the chunks that waited for it.
    fn train(&mut self) -> io::Result<()> {
        self.training = false;
        let samples = std::mem::take(&mut self.samples);
        let sizes = std::mem::take(&mut self.sample_sizes);
        // zstd needs enough material to learn from; below it, no dictionary.
        if sizes.len() >= 64
            && samples.len() >= 8 * DICTIONARY_BYTES
            && let Ok(dict) = zstd::dict::from_continuous(&samples, &sizes, DICTIONARY_BYTES)
        {
            self.with_dict = Some(compressor(self.level, Some(&dict))?);
            self.dictionary = Some(dict);
        }
        for raw in std::mem::take(&mut self.pending) {
            self.put_chunk(raw)?;
        }
        Ok(())
    }

    fn put_chunk(&mut self, raw: RawChunk) -> io::Result<()> {
        let mut compressed = match self.with_dict.as_mut() {
            Some(c) => c.compress(&raw.raw)?,
            None => self.plain.compress(&raw.raw)?,
        };
        // zstd allocates its bound (the raw size); a chunk compresses to a
        // tenth of it, and a build holds every chunk until it uploads them.
        compressed.shrink_to_fit();
        let obj = ObjectRef::to(&compressed, raw.raw.len() as u64, raw.count);
        self.objects.put(&obj, compressed)?;
        self.chunks.push(ChunkRef {
            first: raw.first,
            obj,
            sources: raw.sources,
        });
        Ok(())
    }

    fn close_route_page(&mut self) -> io::Result<()> {
        let Some(first) = self.route_first.take() else {
            return Ok(());
        };
        let raw = std::mem::take(&mut self.route_page);
        let count = std::mem::take(&mut self.route_count);
        let obj = self.put_plain(&raw, count)?;
        self.route_pages.push(Keyed { first, obj });
        Ok(())
    }

    /// Compresses `raw` without the dictionary into an object.
    fn put_plain(&mut self, raw: &[u8], count: u64) -> io::Result<ObjectRef> {
        let mut compressed = self.plain.compress(raw)?;
        compressed.shrink_to_fit();
        let obj = ObjectRef::to(&compressed, raw.len() as u64, count);
        self.objects.put(&obj, compressed)?;
        Ok(obj)
    }

    /// Closes the last chunk and route page, cuts the pages and writes the
    /// root payload.
    pub fn finish(mut self) -> io::Result<Built> {
        let Some(layer1) = self.layer1 else {
            return Err(out_of_order("a snapshot needs Layer 1"));
        };
        self.close_chunk()?;
        if self.training {
            self.train()?;
        }
        self.close_route_page()?;
        let dictionary = match self.dictionary.clone() {
            Some(dict) => {
                let obj = ObjectRef::to(&dict, dict.len() as u64, 0);
                self.objects.put(&obj, dict)?;
                Some(obj)
            }
            None => None,
        };
        let chunks = std::mem::take(&mut self.chunks);
        let mut pages = Vec::new();
        let mut start = 0;
        for i in 0..chunks.len() {
            let n = i + 1 - start;
            let next_starts_page = chunks
                .get(i + 1)
                .is_none_or(|c| page_boundary(&c.first, PAGE_PARAMS));
            if n >= PAGE_PARAMS.max_bytes
                || (n >= PAGE_PARAMS.min_bytes && next_starts_page)
                || i + 1 == chunks.len()
            {
                let part = &chunks[start..=i];
                let raw = read::encode_page(part)?;
                let tenants = part.iter().map(|c| c.obj.count).sum();
                let obj = self.put_plain(&raw, tenants)?;
                pages.push(Keyed {
                    first: part[0].first.clone(),
                    obj,
                });
                start = i + 1;
            }
        }
        let root = Root {
            layer1,
            dictionary,
            pages,
            route_pages: std::mem::take(&mut self.route_pages),
        }
        .encode()?;
        let compressed = self.plain.compress(&root)?;
        Ok(Built {
            root: Payload {
                format: 3,
                sha256: canonical::sha256_hex(&compressed),
                index_size: compressed.len() as u64,
                raw_size: root.len() as u64,
                compressed,
                routes_sha256: hex::encode(self.routes_digest.finalize()),
                record_count: 1 + 3 * self.tenants + self.routes,
            },
            objects: self.objects,
            dictionary: self.dictionary,
            chunks,
        })
    }
}

/// A zstd compressor at `level` writing content checksums, with `dict`.
fn compressor(level: i32, dict: Option<&[u8]>) -> io::Result<zstd::bulk::Compressor<'static>> {
    let mut c = match dict {
        Some(d) => zstd::bulk::Compressor::with_dictionary(level, d)?,
        None => zstd::bulk::Compressor::new(level)?,
    };
    c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
    Ok(c)
}
