//! Checking and decoding the objects of a format 3 snapshot, each against
//! what its parent names: its size and hash, then exactly one zstd frame
//! with its checksum that decompresses to exactly its declared size, then
//! its records in order and in number (docs/FORMAT.md, "Format 3").
//! Decompression is [`super::unpack`]'s.

use sha2::{Digest, Sha256};

use super::{ChunkRef, Keyed, ObjectRef, TreeError};
use crate::bundle::record::{self, RecordKind};
use crate::bundle::{BodySpan, IndexEntry, Limits, Manifest};
use crate::store::ReadStore;

pub use super::unpack::Unpacker;

/// What a signed root names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// The Layer 1 object.
    pub layer1: ObjectRef,
    /// The zstd dictionary the chunks are compressed with, if any.
    pub dictionary: Option<ObjectRef>,
    /// The pages of chunk references, in tenant order.
    pub pages: Vec<Keyed>,
    /// The pages of routes, in number order.
    pub route_pages: Vec<Keyed>,
}

impl Root {
    /// The root payload's records (decompressed): what [`decode_root`]
    /// reads back.
    pub fn encode(&self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        record::encode(
            &mut out,
            RecordKind::Object,
            "layer1",
            &self.layer1.encode(),
        )?;
        if let Some(d) = &self.dictionary {
            record::encode(&mut out, RecordKind::Object, "dictionary", &d.encode())?;
        }
        for p in &self.pages {
            record::encode(&mut out, RecordKind::Page, &p.first, &p.obj.encode())?;
        }
        for p in &self.route_pages {
            record::encode(&mut out, RecordKind::RoutePage, &p.first, &p.obj.encode())?;
        }
        Ok(out)
    }

    /// Every object the root names directly.
    pub fn objects(&self) -> impl Iterator<Item = &ObjectRef> {
        std::iter::once(&self.layer1)
            .chain(self.dictionary.iter())
            .chain(self.pages.iter().map(|p| &p.obj))
            .chain(self.route_pages.iter().map(|p| &p.obj))
    }
}

fn bad(object: &str, offset: usize, reason: impl Into<String>) -> TreeError {
    TreeError::BadRecord {
        object: object.to_owned(),
        offset: offset as u64,
        reason: reason.into(),
    }
}

fn order(object: &str, reason: String) -> TreeError {
    TreeError::Order {
        object: object.to_owned(),
        reason,
    }
}

/// Checks that `key`, the next item (`what`) of `object`, is its parent's
/// `first` if it is the first, comes strictly after the item before it
/// (none twice, none out of order), and before `end`, where the next
/// object (the next page, chunk or route page) starts.
fn in_order(
    object: &str,
    what: &str,
    key: &str,
    last: Option<&str>,
    first: &str,
    end: Option<&str>,
) -> Result<(), TreeError> {
    match last {
        None if key != first => Err(order(
            object,
            format!("it starts at {what} {key}, its parent says {first}"),
        )),
        Some(l) if key <= l => Err(order(
            object,
            format!("{what} {key} after {l}: listed twice or out of order"),
        )),
        _ if end.is_some_and(|e| key >= e) => Err(order(
            object,
            format!("{what} {key} belongs to the next one"),
        )),
        _ => Ok(()),
    }
}

fn count(object: &str, what: &'static str, expected: u64, actual: u64) -> Result<(), TreeError> {
    if expected == actual {
        Ok(())
    } else {
        Err(TreeError::Count {
            object: object.to_owned(),
            what,
            expected,
            actual,
        })
    }
}

/// Decodes the root payload (decompressed) of a verified format 3 bundle
/// and checks it against the manifest and `limits`: Layer 1, then an
/// optional dictionary, then pages and route pages, each in strictly
/// ascending key order, counting the manifest's tenants and records.
pub fn decode_root(raw: &[u8], manifest: &Manifest, limits: &Limits) -> Result<Root, TreeError> {
    const ROOT: &str = "root";
    let mut pos = 0;
    let next = |pos: &mut usize| -> Result<Option<(RecordKind, String, ObjectRef)>, TreeError> {
        if *pos == raw.len() {
            return Ok(None);
        }
        let at = *pos;
        let rec = record::decode(raw, pos, limits).map_err(|r| bad(ROOT, at, r))?;
        let obj = ObjectRef::decode(rec.value).ok_or_else(|| {
            bad(
                ROOT,
                at,
                format!("{:?} value is not a 56-byte reference", rec.kind),
            )
        })?;
        Ok(Some((rec.kind, rec.key.to_owned(), obj)))
    };
    let layer1 = match next(&mut pos)? {
        Some((RecordKind::Object, key, obj)) if key == "layer1" => obj,
        _ => return Err(bad(ROOT, 0, "the root does not start with Layer 1")),
    };
    count(ROOT, "Layer 1 records", 1, layer1.count)?;
    let mut dictionary = None;
    let mut pages: Vec<Keyed> = Vec::new();
    let mut route_pages: Vec<Keyed> = Vec::new();
    let mut at = pos;
    while let Some((kind, key, obj)) = next(&mut pos)? {
        if (pages.len() + route_pages.len()) as u64 >= limits.max_objects {
            return Err(TreeError::TooManyObjects {
                count: (pages.len() + route_pages.len()) as u64 + 1,
                limit: limits.max_objects,
            });
        }
        let list = match kind {
            RecordKind::Object
                if key == "dictionary" && dictionary.is_none() && pages.is_empty() =>
            {
                if obj.size > limits.max_dictionary_bytes {
                    return Err(TreeError::DictionaryTooLarge {
                        key: obj.key(),
                        size: obj.size,
                        limit: limits.max_dictionary_bytes,
                    });
                }
                if obj.raw_size != obj.size || obj.count != 0 {
                    return Err(bad(
                        ROOT,
                        at,
                        "the dictionary's sizes or count are not its own",
                    ));
                }
                dictionary = Some(obj);
                at = pos;
                continue;
            }
            RecordKind::Page if route_pages.is_empty() => &mut pages,
            RecordKind::RoutePage => &mut route_pages,
            other => {
                return Err(bad(
                    ROOT,
                    at,
                    format!("a {other:?} record ({key}) where it does not belong"),
                ));
            }
        };
        if let Some(last) = list.last()
            && key.as_str() <= last.first.as_str()
        {
            return Err(order(
                ROOT,
                format!(
                    "{kind:?} {key} after {}: listed twice or out of order",
                    last.first
                ),
            ));
        }
        list.push(Keyed { first: key, obj });
        at = pos;
    }
    let tenants = pages
        .iter()
        .try_fold(0u64, |n, p| n.checked_add(p.obj.count));
    count(
        ROOT,
        "tenants",
        manifest.tenant_count,
        tenants.unwrap_or(u64::MAX),
    )?;
    let routes = route_pages
        .iter()
        .try_fold(0u64, |n, p| n.checked_add(p.obj.count));
    let records = routes.and_then(|r| {
        manifest
            .tenant_count
            .checked_mul(3)?
            .checked_add(r)?
            .checked_add(1)
    });
    count(
        ROOT,
        "records",
        manifest.record_count,
        records.unwrap_or(u64::MAX),
    )?;
    Ok(Root {
        layer1,
        dictionary,
        pages,
        route_pages,
    })
}

/// Checks that `bytes` are the object `obj` names: its size, then its hash.
pub fn check_object(obj: &ObjectRef, bytes: &[u8]) -> Result<(), TreeError> {
    if bytes.len() as u64 != obj.size {
        return Err(TreeError::SizeMismatch {
            key: obj.key(),
            expected: obj.size,
            actual: bytes.len() as u64,
        });
    }
    let actual: [u8; 32] = Sha256::digest(bytes).into();
    if actual != obj.sha256 {
        return Err(TreeError::HashMismatch {
            key: obj.key(),
            actual: hex::encode(actual),
        });
    }
    Ok(())
}

/// Where a reader finds objects: a store, or the objects a publisher just
/// built (to compare them with the served snapshot before uploading).
#[derive(Clone, Copy)]
pub enum ObjectSource<'a> {
    /// A store.
    Store(&'a dyn ReadStore),
    /// Objects built in memory, then (for the chunks a publish kept of the
    /// channel's snapshot) a store.
    Built(&'a super::write::Objects, Option<&'a dyn ReadStore>),
}

impl ObjectSource<'_> {
    /// The bytes of the object `obj` names, checked against it.
    pub fn object(&self, obj: &ObjectRef) -> Result<Vec<u8>, TreeError> {
        match self {
            ObjectSource::Store(store) => fetch(*store, obj),
            ObjectSource::Built(objects, store) => {
                let held = objects.get(&obj.sha256).map_err(|e| TreeError::Fetch {
                    key: obj.key(),
                    source: super::objects::unreadable(&obj.sha256, e),
                })?;
                match (held, store) {
                    (Some(bytes), _) => {
                        check_object(obj, &bytes)?;
                        Ok(bytes)
                    }
                    (None, Some(store)) => fetch(*store, obj),
                    (None, None) => Err(TreeError::Fetch {
                        key: obj.key(),
                        source: crate::store::StoreError::NotFound { key: obj.key() },
                    }),
                }
            }
        }
    }
}

/// Reads the object `obj` names from `store` (never more than its size)
/// and checks it.
pub fn fetch<S: ReadStore + ?Sized>(store: &S, obj: &ObjectRef) -> Result<Vec<u8>, TreeError> {
    checked(obj, store.get(&obj.key(), obj.size).map(|o| o.bytes))
}

/// What a read of the object `obj` names (never more than its size)
/// brought, checked against it.
pub(super) fn checked(
    obj: &ObjectRef,
    read: Result<Vec<u8>, crate::store::StoreError>,
) -> Result<Vec<u8>, TreeError> {
    let key = obj.key();
    let bytes = match read {
        Ok(bytes) => bytes,
        // Longer than its parent names: altered, not unavailable.
        Err(crate::store::StoreError::TooLarge { size, .. }) => {
            return Err(TreeError::SizeMismatch {
                key,
                expected: obj.size,
                actual: size,
            });
        }
        Err(source) => return Err(TreeError::Fetch { key, source }),
    };
    check_object(obj, &bytes)?;
    Ok(bytes)
}

/// A page's records (decompressed): what [`decode_page`] reads back.
pub fn encode_page(chunks: &[ChunkRef]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(chunks.len() * (ChunkRef::LEN + 32));
    for c in chunks {
        record::encode(&mut out, RecordKind::Chunk, &c.first, &c.encode_value())?;
    }
    Ok(out)
}

/// Decodes a page (decompressed): chunk records in strictly ascending
/// order of first tenant id, the first being the page's, all before `end`
/// (the next page's first id), holding the page's tenant count.
pub fn decode_page(
    raw: &[u8],
    page: &Keyed,
    end: Option<&str>,
    limits: &Limits,
) -> Result<Vec<ChunkRef>, TreeError> {
    let object = page.obj.key();
    let mut pos = 0;
    let mut chunks: Vec<ChunkRef> = Vec::new();
    let mut tenants = 0u64;
    while pos < raw.len() {
        let at = pos;
        let rec = record::decode(raw, &mut pos, limits).map_err(|r| bad(&object, at, r))?;
        if rec.kind != RecordKind::Chunk || rec.value.len() != ChunkRef::LEN {
            return Err(bad(
                &object,
                at,
                format!("a {:?} record where a chunk belongs", rec.kind),
            ));
        }
        let first = rec.key;
        let last = chunks.last().map(|c| c.first.as_str());
        in_order(&object, "chunk", first, last, &page.first, end)?;
        if chunks.len() as u64 >= limits.max_objects {
            return Err(TreeError::TooManyObjects {
                count: chunks.len() as u64 + 1,
                limit: limits.max_objects,
            });
        }
        let obj = ObjectRef::decode(&rec.value[..ObjectRef::LEN])
            .ok_or_else(|| bad(&object, at, "bad chunk reference"))?;
        if obj.count == 0 {
            return Err(bad(&object, at, format!("chunk {first} holds no tenant")));
        }
        tenants = tenants.saturating_add(obj.count);
        let mut sources = [0u8; 32];
        sources.copy_from_slice(&rec.value[ObjectRef::LEN..]);
        chunks.push(ChunkRef {
            first: first.to_owned(),
            obj,
            sources,
        });
    }
    if chunks.is_empty() {
        return Err(bad(&object, 0, "a page names no chunk"));
    }
    count(&object, "tenants", page.obj.count, tenants)?;
    Ok(chunks)
}

/// Decodes a chunk (decompressed): for each tenant, in strictly ascending
/// id order from the chunk's first id and before `end`, its tenant record
/// (config hash), config and prompt. Returns the tenants and where their
/// records are; each config and prompt is checked as it is taken
/// ([`crate::bundle::FrameBodies`]).
pub fn decode_chunk(
    raw: &[u8],
    chunk: &ChunkRef,
    end: Option<&str>,
    limits: &Limits,
) -> Result<(Vec<IndexEntry>, Vec<BodySpan>), TreeError> {
    let object = chunk.obj.key();
    let mut pos = 0;
    let mut tenants: Vec<IndexEntry> = Vec::with_capacity(chunk.obj.count.min(4096) as usize);
    let mut spans = Vec::with_capacity(tenants.capacity());
    while pos < raw.len() {
        let at = pos;
        let rec = record::decode(raw, &mut pos, limits).map_err(|r| bad(&object, at, r))?;
        if rec.kind != RecordKind::Tenant {
            return Err(bad(
                &object,
                at,
                format!("a {:?} record where a tenant record belongs", rec.kind),
            ));
        }
        let id = rec.key;
        let last = tenants.last().map(|t| t.tenant.as_str());
        in_order(&object, "tenant", id, last, &chunk.first, end)?;
        let config_hash = record::hex_digest(rec.value).map_err(|r| bad(&object, at, r))?;
        let mut body = |kind: RecordKind| {
            let at = pos;
            let r = record::decode(raw, &mut pos, limits).map_err(|e| bad(&object, at, e))?;
            if r.kind != kind || r.key != id {
                return Err(bad(
                    &object,
                    at,
                    format!(
                        "expected the {kind:?} of {id}, found the {:?} of {}",
                        r.kind, r.key
                    ),
                ));
            }
            Ok(r.value_at)
        };
        let config = body(RecordKind::Config)?;
        let prompt = body(RecordKind::Prompt)?;
        spans.push(BodySpan {
            at: at as u64,
            config,
            prompt,
        });
        tenants.push(IndexEntry {
            tenant: id.to_owned(),
            config_hash,
        });
    }
    if tenants.is_empty() {
        return Err(bad(&object, 0, "a chunk holds no tenant"));
    }
    count(&object, "tenants", chunk.obj.count, tenants.len() as u64)?;
    Ok((tenants, spans))
}

/// Decodes a route page (decompressed): routes in strictly ascending
/// number order from the page's first, before `end`, as many as the
/// parent says; each is handed to `route`.
pub fn decode_routes(
    raw: &[u8],
    page: &Keyed,
    end: Option<&str>,
    limits: &Limits,
    mut route: impl FnMut(&str, &str) -> Result<(), TreeError>,
) -> Result<(), TreeError> {
    let object = page.obj.key();
    let mut pos = 0;
    let mut last: Option<&str> = None;
    let mut n = 0u64;
    while pos < raw.len() {
        let at = pos;
        let rec = record::decode(raw, &mut pos, limits).map_err(|r| bad(&object, at, r))?;
        if rec.kind != RecordKind::Route {
            return Err(bad(
                &object,
                at,
                format!("a {:?} record where a route belongs", rec.kind),
            ));
        }
        let number = rec.key;
        in_order(&object, "route", number, last, &page.first, end)?;
        let tenant = std::str::from_utf8(rec.value).map_err(|_| {
            bad(
                &object,
                at,
                format!("the tenant of route {number} is not UTF-8"),
            )
        })?;
        route(number, tenant)?;
        last = Some(number);
        n += 1;
    }
    if n == 0 {
        return Err(bad(&object, 0, "a route page holds no route"));
    }
    count(&object, "routes", page.obj.count, n)
}
