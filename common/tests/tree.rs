//! Format 3: a snapshot as content-addressed objects. What a one-tenant
//! change costs, and every kind of bad object refused with its own error.

mod support;

use std::collections::HashSet;

use strata_common::bundle::tree::read::{self, Root};
use strata_common::bundle::tree::{ChunkRef, Held, ObjectRef, Objects, TreeError};
use strata_common::bundle::{self, Contents, Limits, Manifest};
use strata_common::compile::Compiled;
use support::{compile, contents, open, open_all, root_of, source, verified};

fn zstd(raw: &[u8], checksum: bool) -> Vec<u8> {
    let mut c = zstd::bulk::Compressor::new(3).expect("zstd");
    c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(checksum))
        .expect("checksum");
    c.compress(raw).expect("compress")
}

#[test]
fn a_format_3_snapshot_holds_exactly_what_format_2_holds() {
    let dir = source(600);
    let two = compile(dir.path(), 2, None);
    let three = compile(dir.path(), 3, None);
    let (manifest, raw) = root_of(&three);
    let got = contents(&three.objects, &manifest, &raw).expect("format 3 reads");
    let want = strata_tests_contents(&two);
    assert_eq!(got, want);
    assert_eq!(manifest.format, 3);
    assert_eq!(manifest.tenant_count, 600);
}

/// Format 2's contents, decoded through its own reader.
fn strata_tests_contents(compiled: &Compiled) -> Contents {
    let (_, verified) = verified(compiled);
    Contents::collect(verified.records().expect("records")).expect("contents")
}

#[test]
fn one_changed_tenant_makes_one_new_chunk_and_one_new_page_and_a_node_fetches_only_them() {
    let dir = source(3000);
    let before = compile(dir.path(), 3, None);
    let dict = before
        .objects
        .keys()
        .filter_map(|h| before.objects.get(h).expect("read"))
        .find(|b| b.starts_with(&[0x37, 0xa4, 0x30, 0xec]));
    assert!(dict.is_some(), "3,000 tenants train a dictionary");
    // An operator's edit of one tenant.
    let file = std::fs::read_dir(dir.path().join("tenants"))
        .expect("tenants")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .min()
        .expect("a tenant");
    let text = std::fs::read_to_string(&file).expect("read");
    let edited = text.replacen("version = \"", "version = \"9", 1);
    assert_ne!(text, edited);
    std::fs::write(&file, edited).expect("write");
    let after = compile(dir.path(), 3, dict);
    let new: Vec<_> = after
        .objects
        .keys()
        .filter(|k| !before.objects.contains_key(k))
        .collect();
    assert_eq!(new.len(), 2, "one chunk and one page are new");
    let (m1, r1) = root_of(&before);
    let (m2, r2) = root_of(&after);
    let v1 = open(
        &before.objects,
        &m1,
        &r1,
        &Held::nothing(),
        &Limits::default(),
    )
    .expect("open");
    let chunks_before: HashSet<[u8; 32]> = v1.chunks().iter().map(|c| v1.held_id(c)).collect();
    // A node holding version 1 (its pages cached) fetches one chunk and one page.
    let cache = |h: &[u8; 32]| before.objects.get(h).expect("read");
    let held = Held {
        cached: &cache,
        chunks: &chunks_before,
    };
    let mut frames = open(&after.objects, &m2, &r2, &held, &Limits::default()).expect("open");
    let mut listed = 0;
    while let Some(group) = bundle::Frames::next_group(&mut frames).expect("group") {
        if let bundle::Group::Listed(f) = group {
            listed += 1;
            let bodies = bundle::Frames::bodies(&mut frames, &f).expect("bodies");
            for i in 0..f.tenants.len() {
                bodies.config(i).expect("config");
            }
        }
    }
    let fetched = frames.fetched();
    assert_eq!(listed, 1, "one chunk read");
    assert_eq!(fetched.objects, 2, "one page and one chunk fetched");
    let total = after.objects.bytes();
    assert!(
        fetched.bytes * 100 < total,
        "{} of {total} bytes fetched",
        fetched.bytes
    );
}

/// A snapshot to damage: its objects, manifest, root.
fn fixture() -> (Objects, Manifest, Root) {
    let dir = source(400);
    let c = compile(dir.path(), 3, None);
    let (manifest, raw) = root_of(&c);
    let root = read::decode_root(&raw, &manifest, &Limits::default()).expect("root");
    (c.objects, manifest, root)
}

fn first_chunk(objects: &Objects, root: &Root) -> (Vec<ChunkRef>, Vec<u8>) {
    let page = &root.pages[0];
    let bytes = objects.get(&page.obj.sha256).expect("read").expect("page");
    let raw = zstd::bulk::decompress(&bytes, page.obj.raw_size as usize).expect("page raw");
    let end = root.pages.get(1).map(|p| p.first.as_str());
    let chunks = read::decode_page(&raw, page, end, &Limits::default()).expect("page");
    (chunks, raw)
}

/// Replaces the first page by `chunks` (re-encoded, `count` tenants) in
/// `objects` and returns the root naming it.
fn with_first_page(objects: &mut Objects, root: &Root, chunks: &[ChunkRef], count: u64) -> Vec<u8> {
    let raw = read::encode_page(chunks).expect("encode");
    let bytes = zstd(&raw, true);
    let obj = ObjectRef::to(&bytes, raw.len() as u64, count);
    objects.insert(obj.sha256, bytes).expect("insert");
    let mut root = root.clone();
    root.pages[0].obj = obj;
    root.encode().expect("root")
}

fn refusal(objects: &Objects, manifest: &Manifest, raw: &[u8], limits: &Limits) -> TreeError {
    let opened = open(objects, manifest, raw, &Held::nothing(), limits);
    let mut frames = match opened {
        Err(e) => return e,
        Ok(f) => f,
    };
    loop {
        match bundle::Frames::next_group(&mut frames) {
            Err(bundle::BundleError::Object(e)) => return e,
            Err(other) => panic!("not an object refusal: {other}"),
            Ok(None) => panic!("every chunk read"),
            Ok(Some(_)) => {}
        }
    }
}

#[test]
fn a_chunk_whose_bytes_do_not_match_its_hash_is_refused() {
    let (mut objects, manifest, root) = fixture();
    let (chunks, _) = first_chunk(&objects, &root);
    let hash = chunks[0].obj.sha256;
    let mut bytes = objects.get(&hash).expect("read").expect("chunk");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    objects.remove(&hash);
    objects.insert(hash, bytes).expect("insert");
    let raw = root.encode().expect("root");
    let e = refusal(&objects, &manifest, &raw, &Limits::default());
    assert!(matches!(e, TreeError::HashMismatch { .. }), "{e}");
    assert_eq!(e.reason(), "object_hash_mismatch");
}

#[test]
fn a_missing_object_is_a_transient_refusal() {
    let (mut objects, manifest, root) = fixture();
    let (chunks, _) = first_chunk(&objects, &root);
    objects.remove(&chunks[0].obj.sha256);
    let raw = root.encode().expect("root");
    let e = refusal(&objects, &manifest, &raw, &Limits::default());
    assert!(matches!(e, TreeError::Fetch { .. }), "{e}");
    assert!(e.is_transient());
}

#[test]
fn a_page_listing_a_chunk_twice_or_out_of_order_is_refused() {
    let (objects, manifest, root) = fixture();
    let (chunks, _) = first_chunk(&objects, &root);
    assert!(chunks.len() >= 2);
    let count: u64 = chunks.iter().map(|c| c.obj.count).sum();
    let mut twice = chunks.clone();
    twice.insert(1, chunks[0].clone());
    let mut swapped = chunks.clone();
    swapped.swap(1, 2.min(chunks.len() - 1).max(1));
    swapped.swap(0, 1);
    for (what, list, n) in [("twice", twice, count), ("out of order", swapped, count)] {
        let mut objects = objects.to_memory().expect("copy");
        let raw = with_first_page(&mut objects, &root, &list, n);
        let e = refusal(&objects, &manifest, &raw, &Limits::default());
        assert!(matches!(e, TreeError::Order { .. }), "{what}: {e}");
    }
}

#[test]
fn a_root_naming_more_objects_than_the_limit_is_refused_before_any_fetch() {
    let (objects, manifest, root) = fixture();
    let raw = root.encode().expect("root");
    let limits = Limits {
        max_objects: 1,
        ..Limits::default()
    };
    let e = refusal(&Objects::new(), &manifest, &raw, &limits);
    assert!(matches!(e, TreeError::TooManyObjects { .. }), "{e}");
    // Ten million chunks: a page that would hold them is refused by its
    // declared size, before a byte is fetched or allocated.
    let mut big = root.clone();
    big.pages[0].obj.raw_size = 10_000_000 * 123;
    big.pages[0].obj.count = manifest.tenant_count;
    let e = refusal(
        &objects,
        &manifest,
        &big.encode().expect("root"),
        &Limits::default(),
    );
    assert!(
        matches!(
            e,
            TreeError::ObjectTooLarge { .. } | TreeError::HashMismatch { .. }
        ),
        "{e}"
    );
}

#[test]
fn a_dictionary_over_its_limit_is_refused() {
    let (objects, manifest, root) = fixture();
    let mut big = root.clone();
    let dict = big.dictionary.as_mut().expect("a dictionary");
    dict.size = 2 << 20;
    dict.raw_size = 2 << 20;
    let e = refusal(
        &objects,
        &manifest,
        &big.encode().expect("root"),
        &Limits::default(),
    );
    assert!(matches!(e, TreeError::DictionaryTooLarge { .. }), "{e}");
}

#[test]
fn a_chunk_that_decompresses_past_its_declared_size_is_refused() {
    let (mut objects, manifest, root) = fixture();
    let (mut chunks, _) = first_chunk(&objects, &root);
    chunks[0].obj.raw_size -= 1;
    let count: u64 = chunks.iter().map(|c| c.obj.count).sum();
    let raw = with_first_page(&mut objects, &root, &chunks, count);
    let e = refusal(&objects, &manifest, &raw, &Limits::default());
    assert!(matches!(e, TreeError::Decompress { .. }), "{e}");
}

#[test]
fn an_object_without_its_zstd_checksum_is_refused() {
    let (mut objects, manifest, root) = fixture();
    let page = &root.pages[0];
    let bytes = objects.get(&page.obj.sha256).expect("read").expect("page");
    let raw_page = zstd::bulk::decompress(&bytes, page.obj.raw_size as usize).expect("raw");
    let plain = zstd(&raw_page, false);
    let obj = ObjectRef::to(&plain, page.obj.raw_size, page.obj.count);
    objects.insert(obj.sha256, plain).expect("insert");
    let mut root = root.clone();
    root.pages[0].obj = obj;
    let e = refusal(
        &objects,
        &manifest,
        &root.encode().expect("root"),
        &Limits::default(),
    );
    assert!(matches!(e, TreeError::NotOneFrame { .. }), "{e}");
}

#[test]
fn a_chunk_is_held_only_under_the_reference_key_and_dictionary_it_was_verified_with() {
    let (objects, manifest, root) = fixture();
    let raw = root.encode().expect("root");
    let v1 = open_all(&objects, &manifest, &raw).expect("open");
    let held: HashSet<[u8; 32]> = v1.chunks().iter().map(|c| v1.held_id(c)).collect();
    let cache = |h: &[u8; 32]| objects.get(h).expect("read");
    let holding = Held {
        cached: &cache,
        chunks: &held,
    };
    // The same root: every chunk held, none read.
    let mut same = open(&objects, &manifest, &raw, &holding, &Limits::default()).expect("open");
    while let Some(g) = bundle::Frames::next_group(&mut same).expect("group") {
        assert!(matches!(g, bundle::Group::Held { .. }));
    }
    // A root whose page names a held chunk's bytes with another raw size
    // (or another key, or under another dictionary): read, and refused.
    let (mut chunks, _) = first_chunk(&objects, &root);
    chunks[0].obj.raw_size += 100;
    let count: u64 = chunks.iter().map(|c| c.obj.count).sum();
    let mut objects2 = objects.to_memory().expect("copy");
    let lying = with_first_page(&mut objects2, &root, &chunks, count);
    let mut frames =
        open(&objects2, &manifest, &lying, &holding, &Limits::default()).expect("open");
    let refused = loop {
        match bundle::Frames::next_group(&mut frames) {
            Err(e) => break e,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the lying reference was held, not read"),
        }
    };
    assert!(
        matches!(
            refused,
            bundle::BundleError::Object(TreeError::Decompress { .. })
        ),
        "{refused}"
    );
}

#[test]
fn an_empty_page_or_route_page_is_refused() {
    let (mut objects, manifest, root) = fixture();
    let empty = zstd(&[], true);
    let obj = ObjectRef::to(&empty, 0, 0);
    objects.insert(obj.sha256, empty).expect("insert");
    let mut with_page = root.clone();
    with_page.pages.push(strata_common::bundle::tree::Keyed {
        first: "zzzz".into(),
        obj,
    });
    let e = refusal(
        &objects,
        &manifest,
        &with_page.encode().expect("root"),
        &Limits::default(),
    );
    assert!(matches!(e, TreeError::BadRecord { .. }), "{e}");
    let mut with_routes = root.clone();
    with_routes
        .route_pages
        .push(strata_common::bundle::tree::Keyed {
            first: "+99999999999".into(),
            obj,
        });
    let raw = with_routes.encode().expect("root");
    let mut frames = open_all(&objects, &manifest, &raw).expect("open");
    while bundle::Frames::next_listed(&mut frames)
        .expect("chunks")
        .is_some()
    {}
    let e = loop {
        match bundle::Frames::next_route(&mut frames) {
            Err(e) => break e,
            Ok(Some(_)) => {}
            Ok(None) => panic!("an empty route page was accepted"),
        }
    };
    assert!(e.to_string().contains("holds no route"), "{e}");
}
