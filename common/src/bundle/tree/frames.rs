//! A verified format 3 root as a node applies it: the objects it names are
//! taken from the node's cache or fetched (in parallel, each checked
//! against its hash), and the chunks the node holds are not fetched at all
//! but handed to it as [`Group::Held`] ranges.

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::fetch::{self, FETCH_BATCH, Finish};
use super::read::{self, ObjectSource, Root, Unpacker};
use super::{ChunkRef, ObjectRef, TreeError};
use crate::bundle::record::{self, RecordKind};
use crate::bundle::{
    BodySpan, BundleError, Frame, FrameBodies, Frames, Group, IndexEntry, Limits, Manifest,
};

/// What a node holds already.
pub struct Held<'a> {
    /// A small object (page, route page, Layer 1, dictionary) the node
    /// stored, by hash; checked again against its reference when used.
    pub cached: &'a dyn Fn(&[u8; 32]) -> Option<Vec<u8>>,
    /// The chunks of the snapshot the node stores newest, by
    /// [`TreeFrames::held_id`]: their tenants are its stored rows, so they
    /// are not fetched.
    pub chunks: &'a HashSet<[u8; 32]>,
}

fn no_object(_: &[u8; 32]) -> Option<Vec<u8>> {
    None
}

static NO_CHUNKS: std::sync::LazyLock<HashSet<[u8; 32]>> = std::sync::LazyLock::new(HashSet::new);

impl Held<'static> {
    /// Nothing held: every object is fetched (a new node, a verifier).
    pub fn nothing() -> Self {
        Held {
            cached: &no_object,
            chunks: &NO_CHUNKS,
        }
    }
}

/// What a [`TreeFrames`] fetched, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Objects read from the store.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Chunks the node held and did not fetch.
    pub chunks_held: u64,
}

/// A format 3 snapshot as [`Frames`].
pub struct TreeFrames<'a> {
    store: ObjectSource<'a>,
    limits: Limits,
    root: Root,
    layer1: Vec<u8>,
    prompt_prefix: OnceCell<Result<Vec<u8>, String>>,
    unpacker: Unpacker,
    dictionary: Option<Arc<[u8]>>,
    chunks: Arc<[ChunkRef]>,
    held: HashSet<[u8; 32]>,
    next: usize,
    /// Fetched chunks, in order, waiting to be decoded.
    queue: VecDeque<(usize, Vec<u8>)>,
    /// Where the next batch to fetch starts.
    fetch_from: usize,
    /// Chunks fetched ahead on another thread ([`TreeFrames::prefetch`]),
    /// in order, after the queue.
    ahead: Option<fetch::Ahead<Decoded>>,
    raw: Vec<u8>,
    spans: Vec<BodySpan>,
    routes_sha256: String,
    /// The routes of the route page being read, and the next one's index.
    routes: Vec<(String, String)>,
    route_at: usize,
    route_page: usize,
    routes_digest: sha2::Sha256,
    small: Vec<(ObjectRef, Vec<u8>)>,
    /// Where each object of `small` is in it, by hash.
    small_index: HashMap<[u8; 32], usize>,
    fetched: Fetched,
    /// The route pages the node held, checked, until each is read.
    held_routes: HashMap<[u8; 32], Vec<u8>>,
    frames: u64,
}

impl<'a> TreeFrames<'a> {
    /// Reads a verified root (`root_raw`, decompressed): Layer 1, the
    /// dictionary and every page, from `held.cached` or `store`, and checks
    /// the snapshot's totals against `limits` before any chunk is fetched.
    pub fn open(
        store: ObjectSource<'a>,
        manifest: &Manifest,
        root_raw: &[u8],
        held: &Held<'a>,
        limits: &Limits,
    ) -> Result<Self, TreeError> {
        let root = read::decode_root(root_raw, manifest, limits)?;
        // Every small object the node does not hold, fetched at once in
        // parallel: one by one, a store 20 ms away took seconds for a
        // hundred pages.
        let mut cached: HashMap<[u8; 32], Vec<u8>> = HashMap::new();
        let mut wanted = Vec::new();
        for obj in root.objects() {
            match (held.cached)(&obj.sha256) {
                Some(bytes) if read::check_object(obj, &bytes).is_ok() => {
                    cached.insert(obj.sha256, bytes);
                }
                _ if !wanted.contains(obj) => wanted.push(*obj),
                _ => {}
            }
        }
        let mut fetched = Fetched::default();
        let mut small = Vec::with_capacity(wanted.len());
        for (obj, bytes) in wanted.iter().zip(fetch::parallel(store, &wanted)) {
            let bytes = bytes?;
            fetched.objects += 1;
            fetched.bytes += obj.size;
            small.push((*obj, bytes));
        }
        let small_index: HashMap<[u8; 32], usize> = small
            .iter()
            .enumerate()
            .map(|(i, (o, _))| (o.sha256, i))
            .collect();
        let get = |obj: &ObjectRef| -> Result<Vec<u8>, TreeError> {
            match (cached.get(&obj.sha256), small_index.get(&obj.sha256)) {
                (Some(bytes), _) => Ok(bytes.clone()),
                (None, Some(&i)) => Ok(small[i].1.clone()),
                (None, None) => store.object(obj),
            }
        };
        let dict = root
            .dictionary
            .map(|d| get(&d).map(|b| (d, b)))
            .transpose()?;
        let mut unpacker = Unpacker::new(dict.as_ref().map(|(d, b)| (d, b.as_slice())), limits)?;
        let mut raw = Vec::new();
        let layer1_bytes = get(&root.layer1)?;
        unpacker.unpack(&root.layer1, &layer1_bytes, false, &mut raw)?;
        let layer1 = {
            let mut pos = 0;
            let object = root.layer1.key();
            let rec = record::decode(&raw, &mut pos, limits).map_err(|r| TreeError::BadRecord {
                object: object.clone(),
                offset: 0,
                reason: r,
            })?;
            if rec.kind != RecordKind::Layer1 || pos != raw.len() {
                return Err(TreeError::BadRecord {
                    object,
                    offset: 0,
                    reason: "not exactly one Layer 1 record".into(),
                });
            }
            rec.value.to_vec()
        };
        let mut chunks: Vec<ChunkRef> = Vec::new();
        let (mut size, mut raw_size) = (0u64, 0u64);
        for (i, page) in root.pages.iter().enumerate() {
            let bytes = get(&page.obj)?;
            unpacker.unpack(&page.obj, &bytes, false, &mut raw)?;
            let end = root.pages.get(i + 1).map(|p| p.first.as_str());
            let listed = read::decode_page(&raw, page, end, limits)?;
            if (chunks.len() + listed.len()) as u64 > limits.max_objects {
                return Err(TreeError::TooManyObjects {
                    count: (chunks.len() + listed.len()) as u64,
                    limit: limits.max_objects,
                });
            }
            for c in &listed {
                size = size.saturating_add(c.obj.size);
                raw_size = raw_size.saturating_add(c.obj.raw_size);
            }
            chunks.extend(listed);
        }
        // Of what the node held, only the route pages are still to be read.
        let routes: HashSet<[u8; 32]> = root.route_pages.iter().map(|p| p.obj.sha256).collect();
        let mut held_routes = cached;
        held_routes.retain(|h, _| routes.contains(h));
        for (what, total, limit) in [
            ("objects", size, limits.max_bundle_bytes),
            (
                "decompressed records",
                raw_size,
                limits.max_decompressed_bytes,
            ),
        ] {
            if total > limit {
                return Err(TreeError::TooLarge {
                    what,
                    size: total,
                    limit,
                });
            }
        }
        Ok(Self {
            store,
            limits: *limits,
            routes_sha256: manifest.routes_sha256.clone(),
            root,
            layer1,
            prompt_prefix: OnceCell::new(),
            unpacker,
            dictionary: dict.map(|(_, b)| b.into()),
            chunks: chunks.into(),
            held: held.chunks.clone(),
            next: 0,
            queue: VecDeque::new(),
            fetch_from: 0,
            ahead: None,
            raw,
            spans: Vec::new(),
            routes: Vec::new(),
            route_at: 0,
            route_page: 0,
            routes_digest: sha2::Digest::new(),
            small,
            small_index,
            fetched,
            held_routes,
            frames: 0,
        })
    }

    /// The root's references.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The dictionary's bytes, if the snapshot has one.
    pub fn dictionary(&self) -> Option<&[u8]> {
        self.dictionary.as_deref()
    }

    /// Every chunk, in order.
    pub fn chunks(&self) -> &[ChunkRef] {
        &self.chunks
    }

    /// What identifies chunk `c` as one a reader holds: its reference
    /// (hash, sizes, count) and first tenant id as this snapshot names it,
    /// and the Layer 1 and dictionary it is read with. A chunk is skipped
    /// only when all of these are what the reader verified before: the same
    /// bytes under another size, key or dictionary are read and checked.
    pub fn held_id(&self, c: &ChunkRef) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.root.layer1.sha256);
        h.update(self.root.dictionary.map_or([0; 32], |d| d.sha256));
        h.update(c.obj.encode());
        h.update(c.first.as_bytes());
        h.finalize().into()
    }

    /// What was fetched so far.
    pub fn fetched(&self) -> Fetched {
        self.fetched
    }

    /// From here on, fetches every chunk still to be read that the node
    /// does not hold on a thread of `scope`, ahead of the reader, and
    /// decompresses and decodes each there: the next chunks arrive ready
    /// while the last ones are written (a new node's cold start). Without
    /// it, chunks are fetched a batch at a time when the reader reaches
    /// them, and decoded by it.
    pub fn prefetch<'scope>(&mut self, scope: &'scope std::thread::Scope<'scope, '_>)
    where
        'a: 'scope,
    {
        let plan: Vec<_> = (self.fetch_from..self.chunks.len())
            .filter(|&i| !self.held.contains(&self.held_id(&self.chunks[i])))
            .map(|i| (i, self.chunks[i].obj))
            .collect();
        self.fetch_from = self.chunks.len();
        self.ahead = Some(fetch::ahead(scope, self.store, plan, self.decoder()));
    }

    /// What decompresses and decodes this snapshot's chunks: the reader's
    /// own [`Unpacker`] for a batch, each fetching thread's ahead of it.
    fn decoder(&self) -> Decode {
        Decode {
            chunks: Arc::clone(&self.chunks),
            dictionary: self.root.dictionary.zip(self.dictionary.clone()),
            limits: self.limits,
        }
    }

    /// After the set of held chunks changed: what was fetched past the
    /// next chunk to read is dropped (a thread fetching ahead stops) and
    /// fetched again as needed.
    fn replan(&mut self) {
        self.ahead = None;
        self.queue.clear();
        self.fetch_from = self.next;
    }

    /// Fetches the next [`FETCH_BATCH`] chunks the node does not hold, on
    /// [`fetch::FETCH_THREADS`] threads, into the queue in chunk order.
    fn fetch_batch(&mut self) -> Result<(), TreeError> {
        let wanted: Vec<usize> = (self.fetch_from..self.chunks.len())
            .filter(|&i| !self.held.contains(&self.held_id(&self.chunks[i])))
            .take(FETCH_BATCH)
            .collect();
        self.fetch_from = wanted.last().map_or(self.chunks.len(), |&i| i + 1);
        let objs: Vec<ObjectRef> = wanted.iter().map(|&i| self.chunks[i].obj).collect();
        let results = fetch::parallel(self.store, &objs);
        for (i, r) in wanted.into_iter().zip(results) {
            self.queue.push_back((i, r?));
        }
        Ok(())
    }

    /// The next fetched chunk, in order, decoded: from the thread fetching
    /// ahead (decoded there), or from the queue or a batch fetched now
    /// (decoded here).
    fn next_fetched(&mut self) -> Result<Option<(usize, Decoded)>, TreeError> {
        if self.queue.is_empty() && self.ahead.is_none() {
            self.fetch_batch()?;
        }
        let next = match (self.queue.pop_front(), &self.ahead) {
            (Some((i, bytes)), _) => {
                Some((i, self.decoder().finish(&mut self.unpacker, i, bytes)?))
            }
            (None, Some(ahead)) => ahead.recv().map(|(i, d)| d.map(|d| (i, d))).transpose()?,
            (None, None) => None,
        };
        if let Some((_, d)) = &next {
            self.fetched.objects += 1;
            self.fetched.bytes += d.size;
        }
        Ok(next)
    }

    fn next_chunk(&mut self) -> Result<Option<Group>, TreeError> {
        let i = self.next;
        let Some(chunk) = self.chunks.get(i).cloned() else {
            return Ok(None);
        };
        self.next += 1;
        let end = self.chunks.get(i + 1).map(|c| c.first.clone());
        if self.held.contains(&self.held_id(&chunk)) {
            self.fetched.chunks_held += 1;
            return Ok(Some(Group::Held {
                first: chunk.first.clone(),
                end,
                count: chunk.obj.count,
            }));
        }
        let decoded = match self.next_fetched()? {
            Some((at, decoded)) if at == i => decoded,
            _ => {
                return Err(TreeError::Order {
                    object: chunk.obj.key(),
                    reason: "fetched out of order".into(),
                });
            }
        };
        self.raw = decoded.raw;
        self.spans = decoded.spans;
        self.frames += 1;
        Ok(Some(Group::Listed(Frame {
            number: self.frames,
            tenants: decoded.tenants,
            offset: 0,
            size: chunk.obj.size,
            raw_size: chunk.obj.raw_size,
        })))
    }

    /// Reads the next route page (cached or fetched) in place of the
    /// last; `false` after the last, once the routes' digest is checked.
    fn read_route_page(&mut self) -> Result<bool, TreeError> {
        let i = self.route_page;
        let Some(page) = self.root.route_pages.get(i).cloned() else {
            let digest = hex::encode(sha2::Digest::finalize_reset(&mut self.routes_digest));
            if digest != self.routes_sha256 {
                return Err(TreeError::BadRecord {
                    object: "route pages".into(),
                    offset: 0,
                    reason: format!(
                        "the route records hash to {digest}, the manifest's routes_sha256 is {}",
                        self.routes_sha256
                    ),
                });
            }
            return Ok(false);
        };
        self.route_page += 1;
        let fetched = self.small_index.get(&page.obj.sha256).copied();
        // `open` read or fetched every route page: the node's copy (checked
        // there, read once) or the fetched one.
        let bytes = match (fetched, self.held_routes.remove(&page.obj.sha256)) {
            (Some(at), _) => self.small[at].1.clone(),
            (None, Some(b)) => b,
            (None, None) => self.store.object(&page.obj)?,
        };
        self.unpacker
            .unpack(&page.obj, &bytes, false, &mut self.raw)?;
        sha2::Digest::update(&mut self.routes_digest, &self.raw);
        let end = self.root.route_pages.get(i + 1).map(|p| p.first.as_str());
        let routes = &mut self.routes;
        routes.clear();
        self.route_at = 0;
        read::decode_routes(&self.raw, &page, end, &self.limits, |n, t| {
            routes.push((n.to_owned(), t.to_owned()));
            Ok(())
        })?;
        Ok(true)
    }
}

impl Frames for TreeFrames<'_> {
    fn layer1(&self) -> &[u8] {
        &self.layer1
    }

    fn next_group(&mut self) -> Result<Option<Group>, BundleError> {
        Ok(self.next_chunk()?)
    }

    fn bodies<'b>(&'b mut self, frame: &'b Frame) -> Result<FrameBodies<'b>, BundleError> {
        Ok(FrameBodies {
            raw: &self.raw,
            number: frame.number,
            tenants: &frame.tenants,
            spans: std::mem::take(&mut self.spans),
            layer1: &self.layer1,
            prompt_prefix: &self.prompt_prefix,
        })
    }

    fn routes_sha256(&self) -> &str {
        &self.routes_sha256
    }

    fn next_route(&mut self) -> Result<Option<(&str, &str)>, BundleError> {
        while self.route_at == self.routes.len() {
            if !self.read_route_page()? {
                return Ok(None);
            }
        }
        let Some((n, t)) = self.routes.get(self.route_at) else {
            return Ok(None);
        };
        self.route_at += 1;
        Ok(Some((n.as_str(), t.as_str())))
    }

    fn keep_routes(&mut self) -> Result<(), BundleError> {
        Ok(())
    }

    fn routes_checked(&self) -> bool {
        false
    }

    fn chunk_hashes(&self) -> Option<HashSet<[u8; 32]>> {
        Some(self.chunks.iter().map(|c| self.held_id(c)).collect())
    }

    fn skip_chunks(&mut self, shared: &HashSet<[u8; 32]>) {
        self.held = shared.clone();
        self.replan();
    }

    fn only_tenants(&mut self, tenants: &std::collections::BTreeSet<String>) {
        let mut skipped = HashSet::new();
        for (i, c) in self.chunks.iter().enumerate() {
            let end = self.chunks.get(i + 1).map(|n| n.first.as_str());
            let mut inside = tenants.range(c.first.clone()..);
            let holds = inside
                .next()
                .is_some_and(|t| end.is_none_or(|e| t.as_str() < e));
            if !holds {
                skipped.insert(self.held_id(c));
            }
        }
        self.held = skipped;
        self.replan();
    }

    fn take_tree(&mut self) -> Option<Applied> {
        Some(Applied {
            chunks: self.chunks.iter().map(|c| self.held_id(c)).collect(),
            objects: self.root.objects().map(|o| o.sha256).collect(),
            fetched: std::mem::take(&mut self.small),
            stats: self.fetched,
        })
    }
}

/// A chunk decompressed and decoded (by the thread that fetched it ahead,
/// or by the reader).
pub(super) struct Decoded {
    /// Its compressed size, as fetched.
    size: u64,
    raw: Vec<u8>,
    tenants: Vec<IndexEntry>,
    spans: Vec<BodySpan>,
}

/// Decompresses and decodes chunks: with the reader's [`Unpacker`] for a
/// batch, and on the threads that fetch them ahead of a new node's reader
/// (~13 % of the writing thread's time in a cold start, moved off it).
struct Decode {
    chunks: Arc<[ChunkRef]>,
    dictionary: Option<(ObjectRef, Arc<[u8]>)>,
    limits: Limits,
}

impl Finish for Decode {
    type Out = Decoded;
    type State = Unpacker;

    fn start(&self) -> Result<Unpacker, TreeError> {
        let dict = self.dictionary.as_ref().map(|(d, b)| (d, &b[..]));
        Unpacker::new(dict, &self.limits)
    }

    fn finish(
        &self,
        unpacker: &mut Unpacker,
        index: usize,
        bytes: Vec<u8>,
    ) -> Result<Decoded, TreeError> {
        let chunk = self.chunks.get(index).ok_or_else(|| TreeError::Order {
            object: format!("chunk {index}"),
            reason: "not one of the snapshot's chunks".into(),
        })?;
        let end = self.chunks.get(index + 1).map(|c| c.first.as_str());
        let mut raw = Vec::new();
        unpacker.unpack(&chunk.obj, &bytes, true, &mut raw)?;
        let (tenants, spans) = read::decode_chunk(&raw, chunk, end, &self.limits)?;
        Ok(Decoded {
            size: bytes.len() as u64,
            raw,
            tenants,
            spans,
        })
    }
}

/// What a node keeps beside a format 3 snapshot it applied.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Its chunks' [`TreeFrames::held_id`]s, in order: the next snapshot
    /// need not fetch them.
    pub chunks: Vec<[u8; 32]>,
    /// The objects its root names (Layer 1, dictionary, pages, route pages).
    pub objects: Vec<[u8; 32]>,
    /// Those of them fetched from the store this time, with their bytes.
    pub fetched: Vec<(ObjectRef, Vec<u8>)>,
    /// What was fetched.
    pub stats: Fetched,
}
