//! The database against real redb files.

use std::io::Cursor;

use strata_common::bundle::{
    self, Limits, Manifest, PayloadReader, PayloadWriter, Provenance, SignatureCheck,
};
use strata_common::canonical::sha256_hex;

use super::*;

fn meta(version: u64, tenants: u64) -> SnapshotMeta {
    SnapshotMeta {
        version,
        bundle_sha256: String::new(),
        bundle_size: 0,
        created_at: String::new(),
        expires_at: String::new(),
        layer1_version: String::new(),
        tenant_count: tenants,
        source: String::new(),
        fetched_at: String::new(),
        pinned: false,
        manifest: String::new(),
        signatures: Vec::new(),
    }
}

/// Layer 1 of the test payloads: what their prompts start with.
const LAYER1_JSON: &str = r#"{"base_prompt":"base"}"#;

/// A tenant's combined prompt under [`LAYER1_JSON`], ending in `text`.
fn prompt(text: &str) -> String {
    format!("base{}{text}", strata_common::render::SEPARATOR)
}

/// A canonical config with `member` (a `"key":value` sorting after
/// `config_hash`), sealed with its real hash: `(hash, config)`.
fn sealed(member: &str) -> (String, String) {
    let hash = sha256_hex(format!("{{{member}}}").as_bytes());
    let config = format!("{{\"config_hash\":\"{hash}\",{member}}}");
    (hash, config)
}

/// A real payload holding tenant `t1` at `version` (its config hash
/// changes with it, as the publisher makes it), whose manifest claims
/// `tenants` tenants; with `route` routed to it.
fn payload(version: u64, tenants: u64, route: Option<&str>) -> PayloadReader<Cursor<Vec<u8>>> {
    payload_of(version, &[("t1", version)], tenants, route)
}

/// A real payload of `version` holding each `(tenant, content version)`
/// of `tenants` (in id order), whose manifest claims `claimed` tenants;
/// with `route` routed to the first.
fn payload_of(
    version: u64,
    tenants: &[(&str, u64)],
    claimed: u64,
    route: Option<&str>,
) -> PayloadReader<Cursor<Vec<u8>>> {
    let mut w = PayloadWriter::new(1).expect("writer");
    w.layer1(LAYER1_JSON.as_bytes()).expect("layer1");
    for (tenant, content) in tenants {
        let (hash, config) = sealed(&format!("\"v\":{content}"));
        w.tenant(
            tenant,
            &hash,
            config.as_bytes(),
            prompt(&format!("prompt v{content}")).as_bytes(),
        )
        .expect("tenant");
    }
    if let Some(number) = route {
        w.route(number, tenants[0].0).expect("route");
    }
    verified(version, claimed, w)
}

/// The payload `w` wrote, in a bundle of `version` whose manifest claims
/// `claimed` tenants, verified and ready to ingest.
fn verified(version: u64, claimed: u64, w: PayloadWriter) -> PayloadReader<Cursor<Vec<u8>>> {
    let p = w.finish().expect("finish");
    let manifest = Manifest {
        kind: bundle::MANIFEST_TYPE.into(),
        format: bundle::FORMAT_VERSION,
        version,
        created_at: strata_common::time::format(strata_common::time::now()),
        expires_at: strata_common::time::format(strata_common::time::now()),
        layer1_version: String::new(),
        tenant_count: claimed,
        record_count: p.record_count,
        payload_size: p.compressed.len() as u64,
        index_size: p.index_size,
        routes_sha256: p.routes_sha256.clone(),
        payload_raw_size: p.raw_size,
        payload_sha256: p.sha256.clone(),
        provenance: Provenance::default(),
        held: Default::default(),
    };
    let bytes = bundle::write_bundle(&manifest, &p.compressed, &[]).expect("bundle");
    bundle::verify(
        Cursor::new(bytes),
        SignatureCheck::SkipForInspection,
        &Limits::default(),
    )
    .expect("verify")
    .payload()
    .expect("payload")
}

fn records(version: u64) -> PayloadReader<Cursor<Vec<u8>>> {
    payload(version, 1, Some("+15550000001"))
}

#[test]
fn the_body_points_into_the_redb_page_not_a_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&dir.path().join("s.redb"), 1 << 20).expect("open");
    db.ingest(&meta(1, 1), &mut records(1), Keep::newest(5))
        .expect("ingest");
    let reader = db.reader().expect("reader").expect("has snapshot");
    let guard = reader
        .prompt_bodies
        .tails
        .get_owned((1u64, "t1"))
        .expect("get")
        .expect("present");
    // A short body is all tail, behind the prefix naming (no) pieces.
    let page_ptr = guard.value()[12..].as_ptr();
    let entry = reader.prompt(1, "t1").expect("get").expect("present");
    let body = entry.body();
    assert_eq!(&body[..], prompt("prompt v1").as_bytes());
    assert_eq!(
        body.as_ptr(),
        page_ptr,
        "the served body is the bytes of redb's cached page"
    );
    let again = Entry::new(None, guard).body();
    assert_eq!(
        again.as_ptr(),
        page_ptr.wrapping_sub(12),
        "Entry wraps the guard, no copy"
    );
}

/// A payload of `version` whose tenants `t0000`… have configs padded to
/// `sizes[i].0` bytes and prompts of `sizes[i].1` bytes.
fn payload_sized(version: u64, sizes: &[(usize, usize)]) -> PayloadReader<Cursor<Vec<u8>>> {
    let mut w = PayloadWriter::new(1).expect("writer");
    w.layer1(LAYER1_JSON.as_bytes()).expect("layer1");
    for (i, (config_len, prompt_len)) in sizes.iter().enumerate() {
        let pad = "x".repeat(config_len.saturating_sub(90));
        let (hash, config) = sealed(&format!("\"v\":\"{version}{pad}\""));
        let text: String = (0..*prompt_len)
            .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
            .collect();
        w.tenant(
            &format!("t{i:04}"),
            &hash,
            config.as_bytes(),
            prompt(&text).as_bytes(),
        )
        .expect("tenant");
    }
    verified(version, sizes.len() as u64, w)
}

#[test]
fn bodies_of_every_length_come_back_whole_and_their_pieces_go_with_them() {
    use super::bodies::{CONFIG_PIECES, PIECE, PROMPT_PIECES};
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&dir.path().join("s.redb"), 1 << 20).expect("open");
    let lengths = [
        0,
        1,
        PIECE - 1,
        PIECE,
        PIECE + 1,
        2 * PIECE,
        3 * PIECE + 17,
        40_000,
    ];
    let sizes: Vec<(usize, usize)> = lengths.iter().map(|&n| (n + 100, n)).collect();
    db.ingest(&meta(1, 8), &mut payload_sized(1, &sizes), Keep::newest(1))
        .expect("ingest");
    let r = db.reader().expect("reader").expect("has snapshot");
    for (i, n) in lengths.iter().enumerate() {
        let tenant = format!("t{i:04}");
        let body = r.prompt(1, &tenant).expect("get").expect("present").body();
        let want: String = (0..*n)
            .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
            .collect();
        assert_eq!(&body[..], prompt(&want).as_bytes(), "{tenant}: {n} bytes");
        let config = r.config(1, &tenant).expect("get").expect("present").body();
        assert!(config.ends_with(b"\"}") && config.starts_with(b"{\"config_hash\""));
    }
    drop(r);
    assert!(count(&db, PROMPT_PIECES) > 0 && count(&db, CONFIG_PIECES) > 0);
    // Every tenant changes and only the new version is kept: the old
    // bodies' pieces are freed with them, the new ones read back.
    db.ingest(&meta(2, 8), &mut payload_sized(2, &sizes), Keep::newest(1))
        .expect("ingest v2");
    let pieces: u64 = sizes
        .iter()
        .map(|(c, p)| {
            let config = sealed(&format!("\"v\":\"2{}\"", "x".repeat(c.saturating_sub(90))));
            (config.1.len() / PIECE + prompt(&"a".repeat(*p)).len() / PIECE) as u64
        })
        .sum();
    assert_eq!(
        count(&db, PROMPT_PIECES) + count(&db, CONFIG_PIECES),
        pieces
    );
    let r = db.reader().expect("reader").expect("has snapshot");
    let body = r.config(2, "t0007").expect("get").expect("present").body();
    assert!(body.len() > 40_000 && body.starts_with(b"{\"config_hash\""));
}

#[test]
fn the_file_holds_bodies_of_a_few_kilobytes_in_little_more_than_their_size() {
    // Bodies of 2-8 KB, the sizes generated tenants have: stored whole,
    // redb gave each one or two pages of its own (1.5x).
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&dir.path().join("s.redb"), 1 << 20).expect("open");
    let sizes: Vec<(usize, usize)> = (0..2000)
        .map(|i| (2000 + (i * 7919) % 6000, 2000 + (i * 104_729) % 6000))
        .collect();
    let bodies: usize = sizes.iter().map(|(c, p)| c + p).sum();
    db.ingest(
        &meta(1, 2000),
        &mut payload_sized(1, &sizes),
        Keep::newest(1),
    )
    .expect("ingest");
    let txn = db.db.begin_write().expect("write");
    let stats = txn.stats().expect("stats");
    let used = stats.allocated_pages() * stats.page_size() as u64;
    assert!(
        used as f64 <= 1.2 * bodies as f64,
        "{used} bytes of pages for {bodies} bytes of bodies"
    );
}

#[test]
fn a_changed_config_whose_hash_is_not_the_index_s_is_refused_and_nothing_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&dir.path().join("s.redb"), 1 << 20).expect("open");
    db.ingest(&meta(1, 1), &mut records(1), Keep::newest(5))
        .expect("ingest");
    let mut w = PayloadWriter::new(1).expect("writer");
    w.layer1(LAYER1_JSON.as_bytes()).expect("layer1");
    let config = format!("{{\"config_hash\":\"{}\"}}", "a".repeat(64));
    w.tenant("t1", &"b".repeat(64), config.as_bytes(), b"prompt")
        .expect("tenant");
    let err = db
        .ingest(&meta(2, 1), &mut verified(2, 1, w), Keep::newest(5))
        .expect_err("a config that does not match its index entry");
    let err = err.to_string();
    assert!(
        err.contains("the config of t1 does not have the config_hash"),
        "{err}"
    );
    let r = db.reader().expect("reader").expect("v1 still stored");
    assert_eq!(r.current, 1);
    assert!(r.config(2, "t1").expect("get").is_none());
}

#[test]
fn a_snapshot_is_committed_durably_unless_its_bodies_outgrow_the_write_buffer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let roomy = Db::open(&dir.path().join("roomy.redb"), 1 << 20).expect("open");
    let small = roomy
        .ingest(&meta(1, 1), &mut records(1), Keep::newest(5))
        .expect("ingest");
    assert!(small.durable, "{small:?}");
    assert!(small.bytes_written > 0);

    // A write buffer smaller than one tenant's bodies: served first,
    // made durable by persist, and still whole after a reopen.
    let path = dir.path().join("tight.redb");
    let tight = Db::open(&path, 2 * small.bytes_written as usize - 2).expect("open");
    let large = tight
        .ingest(&meta(1, 1), &mut records(1), Keep::newest(5))
        .expect("ingest");
    assert!(!large.durable, "{large:?}");
    tight.persist().expect("persist");
    drop(tight);
    let reopened = Db::open(&path, 1 << 20).expect("reopen");
    let reader = reopened.reader().expect("reader").expect("has snapshot");
    let body = reader.prompt(1, "t1").expect("get").expect("present");
    assert_eq!(&body.body()[..], prompt("prompt v1").as_bytes());
}

/// Bytes this thread has passed to `write`-family system calls.
fn thread_bytes_written() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").expect("/proc/thread-self/io");
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|n| n.parse().ok())
        .expect("wchar")
}

#[test]
fn a_snapshot_larger_than_the_write_buffer_is_written_to_the_file_once() {
    // redb reads back every leaf page its write buffer evicted, to
    // checksum it at commit, and would write each out a second time.
    let payload = || {
        let mut w = PayloadWriter::new(1).expect("writer");
        w.layer1(LAYER1_JSON.as_bytes()).expect("layer1");
        for i in 0..400 {
            let pad = "c".repeat(1500);
            let (hash, config) = sealed(&format!("\"pad\":\"{pad}{i}\""));
            let prompt = prompt(&format!("prompt {i} {}", "p".repeat(2500)));
            w.tenant(
                &format!("t{i:04}"),
                &hash,
                config.as_bytes(),
                prompt.as_bytes(),
            )
            .expect("tenant");
        }
        verified(1, 400, w)
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // Bytes written to ingest the snapshot and make it durable, with a
    // redb cache (and so write buffer) of `cache` bytes.
    let written_with = |cache: usize| {
        let db = Db::open(&dir.path().join(format!("{cache}.redb")), cache).expect("open");
        let before = thread_bytes_written();
        let done = db
            .ingest(&meta(1, 400), &mut payload(), Keep::newest(2))
            .expect("ingest");
        if !done.durable {
            db.persist().expect("persist");
        }
        let reader = db.reader().expect("reader").expect("snapshot");
        let body = reader.prompt(1, "t0399").expect("get").expect("present");
        assert!(body.body().starts_with(prompt("prompt 399 ").as_bytes()));
        (thread_bytes_written() - before, done.durable)
    };
    let (roomy, durable) = written_with(64 << 20);
    assert!(durable, "fits the write buffer");
    let (tight, durable) = written_with(256 << 10);
    assert!(!durable, "outgrows the write buffer");
    assert!(
        tight < roomy * 3 / 2,
        "{tight} bytes written through a small write buffer, {roomy} through one it fits"
    );
}

fn count<K: redb::Key + 'static, V: redb::Value + 'static>(
    db: &Db,
    table: TableDefinition<K, V>,
) -> u64 {
    let txn = db.db.begin_read().expect("read");
    use redb::ReadableTableMetadata;
    txn.open_table(table).expect("table").len().expect("len")
}

#[test]
fn unchanged_bodies_are_shared_and_freed_with_the_last_version_using_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&dir.path().join("s.redb"), 1 << 20).expect("open");
    let same_as_v1 = |v: u64| db.ingest(&meta(v, 1), &mut payload(1, 1, None), Keep::newest(2));
    let first = db
        .ingest(&meta(1, 1), &mut records(1), Keep::newest(2))
        .expect("v1");
    assert_eq!((first.bodies_written, first.bodies_shared), (2, 0));
    let second = same_as_v1(2).expect("v2");
    assert_eq!(
        (second.bodies_written, second.bodies_shared),
        (0, 2),
        "an unchanged tenant writes no body"
    );
    let r = db.reader().expect("reader").expect("snapshot");
    assert_eq!(
        r.config(2, "t1").expect("get").expect("v2").body().as_ptr(),
        r.config(1, "t1").expect("get").expect("v1").body().as_ptr(),
        "both versions serve the one stored body"
    );
    drop(r);

    // v3 changes the tenant; v1 is pruned but v2 still uses its bodies.
    db.ingest(&meta(3, 1), &mut records(3), Keep::newest(2))
        .expect("v3");
    assert_eq!(count(&db, CONFIG_BODIES), 2);
    let r = db.reader().expect("reader").expect("snapshot");
    assert_eq!(
        &r.prompt(2, "t1").expect("get").expect("v2").body()[..],
        prompt("prompt v1").as_bytes()
    );
    drop(r);
    // v4 prunes v2, the last version using v1's bodies: they go too.
    db.ingest(&meta(4, 1), &mut records(4), Keep::newest(2))
        .expect("v4");
    assert_eq!(count(&db, CONFIG_BODIES), 2, "v3's and v4's configs");
    assert_eq!(count(&db, PROMPT_BODIES), 2);
    assert_eq!(count(&db, TENANTS), 2);
    assert!(
        db.ingest(&meta(4, 1), &mut records(4), Keep::newest(2))
            .is_err(),
        "v4 again"
    );
}

#[test]
fn a_tenant_that_leaves_is_gone_from_the_next_version_and_freed_with_the_last_that_had_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&dir.path().join("s.redb"), 1 << 20).expect("open");
    let both = [("t1", 1), ("t2", 1)];
    db.ingest(
        &meta(1, 2),
        &mut payload_of(1, &both, 2, None),
        Keep::newest(2),
    )
    .expect("v1");
    let v2 = db
        .ingest(
            &meta(2, 1),
            &mut payload_of(2, &[("t1", 1)], 1, None),
            Keep::newest(2),
        )
        .expect("v2");
    assert_eq!(v2.rows_written, 0, "t1 is unchanged, t2 only closes");
    let r = db.reader().expect("reader").expect("snapshot");
    assert!(r.config(2, "t2").expect("get").is_none(), "gone from v2");
    assert!(r.config(1, "t2").expect("get").is_some(), "still in v1");
    assert!(r.config(2, "t1").expect("get").is_some());
    drop(r);
    // t2 comes back in v3, changed; v1 is pruned, and with it t2's first row.
    db.ingest(
        &meta(3, 2),
        &mut payload_of(3, &[("t1", 1), ("t2", 3)], 2, None),
        Keep::newest(2),
    )
    .expect("v3");
    let r = db.reader().expect("reader").expect("snapshot");
    assert!(r.config(2, "t2").expect("get").is_none());
    assert_eq!(
        &r.prompt(3, "t2").expect("get").expect("back in v3").body()[..],
        prompt("prompt v3").as_bytes()
    );
    assert_eq!(
        &r.prompt(3, "t1").expect("get").expect("v3").body()[..],
        prompt("prompt v1").as_bytes(),
        "t1 still serves the body v1 wrote"
    );
    drop(r);
    assert_eq!(count(&db, TENANTS), 2, "t1's one row, t2's new row");
    assert_eq!(count(&db, CONFIG_BODIES), 2, "t2's v1 body was freed");
    assert_eq!(count(&db, CLOSED), 0);
}

#[test]
fn a_file_with_another_layout_is_emptied_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    {
        let db = redb::Database::create(&path).expect("create");
        let txn = db.begin_write().expect("write");
        txn.open_table(META)
            .expect("meta")
            .insert("current", 7)
            .expect("insert");
        let old: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("configs");
        txn.open_table(old)
            .expect("old")
            .insert((7, "t1"), b"x".as_slice())
            .expect("insert");
        txn.commit().expect("commit");
    }
    let db = Db::open(&path, 1 << 20).expect("open");
    assert!(
        db.reader().expect("reader").is_none(),
        "nothing served from the old layout"
    );
    db.ingest(&meta(8, 1), &mut records(8), Keep::newest(2))
        .expect("ingest");
    assert_eq!(db.reader().expect("reader").expect("snapshot").current, 8);
}

#[test]
fn retains_the_newest_versions_and_rolls_back_bad_ingests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&dir.path().join("s.redb"), 1 << 20).expect("open");
    for v in 1..=4 {
        db.ingest(&meta(v, 1), &mut records(v), Keep::newest(2))
            .expect("ingest");
    }
    let r = db.reader().expect("reader").expect("snapshot");
    assert_eq!(r.current, 4);
    assert_eq!(r.metas.keys().copied().collect::<Vec<_>>(), vec![3, 4]);
    assert!(r.prompt(2, "t1").expect("get").is_none());
    assert_eq!(
        &r.prompt(3, "t1").expect("get").expect("v3").body()[..],
        prompt("prompt v3").as_bytes()
    );
    assert_eq!(
        &r.route(4, "+15550000001")
            .expect("get")
            .expect("route")
            .body()[..],
        br#"{"tenant_id":"t1"}"#
    );
    drop(r);

    assert_eq!(
        count(&db, ROUTES),
        1,
        "versions with the same routes share one stored set"
    );
    db.ingest(
        &meta(5, 1),
        &mut payload(5, 1, Some("+15550000002")),
        Keep::newest(2),
    )
    .expect("v5");
    let r = db.reader().expect("reader").expect("snapshot");
    assert!(r.route(5, "+15550000001").expect("get").is_none());
    assert!(r.route(5, "+15550000002").expect("get").is_some());
    assert!(
        r.route(4, "+15550000001").expect("get").is_some(),
        "v4 still serves the set it shares with pruned versions"
    );
    drop(r);
    assert_eq!(count(&db, ROUTES), 2);
    db.ingest(
        &meta(6, 1),
        &mut payload(6, 1, Some("+15550000002")),
        Keep::newest(2),
    )
    .expect("v6");
    assert_eq!(count(&db, ROUTES), 1, "v4's set went with v4");

    // The manifest claims two tenants; the payload holds one.
    assert!(
        db.ingest(
            &meta(7, 1),
            &mut payload(7, 2, Some("+15550000001")),
            Keep::newest(2)
        )
        .is_err()
    );
    let r = db.reader().expect("reader").expect("snapshot");
    assert_eq!(
        r.current, 6,
        "a failed ingest leaves the previous snapshot current"
    );
    assert!(r.prompt(7, "t1").expect("get").is_none());
}

#[test]
/// Through the early-writeback backend, redb still locks its file.
fn a_second_agent_cannot_open_a_data_file_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("strata.redb");
    let first = Db::open(&path, 1 << 20).expect("open");
    let Err(e) = Db::open(&path, 1 << 20) else {
        panic!("redb's file lock must still be taken through this backend");
    };
    assert!(e.to_string().contains("in use by another process"), "{e}");
    drop(first);
    Db::open(&path, 1 << 20).expect("open once the first is closed");
}

/// The prompt `db` serves for `tenant` in `version`, if any.
fn served_prompt(db: &Db, version: u64, tenant: &str) -> Option<String> {
    let r = db.reader().expect("reader").expect("snapshot");
    let entry = r.prompt(version, tenant).expect("get")?;
    Some(String::from_utf8_lossy(&entry.body()[..]).into_owned())
}

#[test]
fn snapshots_served_within_retain_for_stay_beyond_retain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&dir.path().join("s.redb"), 1 << 20).expect("open");
    let keep = Keep {
        count: 2,
        served_within: std::time::Duration::from_secs(3600),
    };
    for v in 1..=6 {
        db.ingest(
            &meta(v, 2),
            &mut payload_of(v, &[("t1", v), ("t2", 1)], 2, None),
            keep,
        )
        .expect("ingest");
    }
    let r = db.reader().expect("reader").expect("snapshot");
    assert_eq!(
        r.metas.keys().copied().collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    drop(r);
    assert_eq!(
        served_prompt(&db, 1, "t1"),
        Some(prompt("prompt v1")),
        "a call locked to v1"
    );
    assert_eq!(served_prompt(&db, 4, "t2"), Some(prompt("prompt v1")));
    // Without the window, the next snapshot prunes to `retain`.
    db.ingest(
        &meta(7, 2),
        &mut payload_of(7, &[("t1", 7), ("t2", 1)], 2, None),
        Keep::newest(2),
    )
    .expect("v7");
    let r = db.reader().expect("reader").expect("snapshot");
    assert_eq!(r.metas.keys().copied().collect::<Vec<_>>(), vec![6, 7]);
}

#[test]
fn an_older_snapshot_is_written_between_the_stored_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&dir.path().join("s.redb"), 1 << 20).expect("open");
    let keep = Keep::newest(2);
    db.ingest(
        &meta(3, 3),
        &mut payload_of(3, &[("t1", 3), ("t2", 3), ("t3", 3)], 3, None),
        keep,
    )
    .expect("v3");
    db.ingest(
        &meta(6, 3),
        &mut payload_of(6, &[("t1", 6), ("t2", 3), ("t3", 3)], 3, None),
        keep,
    )
    .expect("v6");
    // A pin back to 4, never stored here: t2 changed in it, t3 absent.
    let mut pinned = meta(4, 2);
    pinned.pinned = true;
    db.ingest(
        &pinned,
        &mut payload_of(4, &[("t1", 4), ("t2", 4)], 2, Some("+15550000004")),
        keep,
    )
    .expect("v4");
    let r = db.reader().expect("reader").expect("snapshot");
    assert_eq!(r.current, 4);
    assert_eq!(
        r.metas.keys().copied().collect::<Vec<_>>(),
        vec![4, 6],
        "6 stays"
    );
    assert!(r.route(4, "+15550000004").expect("get").is_some());
    drop(r);
    for (v, tenant, want) in [
        (4, "t1", Some(4)),
        (4, "t2", Some(4)),
        (4, "t3", None),
        (6, "t1", Some(6)),
        (6, "t2", Some(3)),
        (6, "t3", Some(3)),
    ] {
        assert_eq!(
            served_prompt(&db, v, tenant),
            want.map(|c| prompt(&format!("prompt v{c}"))),
            "{tenant} in {v}"
        );
    }
    // The channel moves on: 4 goes, 6's bodies (split around 4) stay.
    db.ingest(
        &meta(7, 3),
        &mut payload_of(7, &[("t1", 6), ("t2", 3), ("t3", 3)], 3, None),
        keep,
    )
    .expect("v7");
    let r = db.reader().expect("reader").expect("snapshot");
    assert_eq!(r.metas.keys().copied().collect::<Vec<_>>(), vec![6, 7]);
    drop(r);
    for v in [6, 7] {
        assert_eq!(
            served_prompt(&db, v, "t2"),
            Some(prompt("prompt v3")),
            "t2 in {v}"
        );
        assert_eq!(
            served_prompt(&db, v, "t3"),
            Some(prompt("prompt v3")),
            "t3 in {v}"
        );
    }
    assert_eq!(served_prompt(&db, 7, "t1"), Some(prompt("prompt v6")));
}

#[test]
fn pins_back_to_three_versions_never_stored_each_split_the_rows_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&dir.path().join("s.redb"), 1 << 20).expect("open");
    let keep = Keep::newest(10);
    let pinned = |v: u64, n: u64| {
        let mut m = meta(v, n);
        m.pinned = true;
        m
    };
    db.ingest(
        &meta(3, 2),
        &mut payload_of(3, &[("t1", 3), ("t2", 3)], 2, None),
        keep,
    )
    .expect("v3");
    db.ingest(
        &meta(10, 2),
        &mut payload_of(10, &[("t1", 10), ("t2", 3)], 2, None),
        keep,
    )
    .expect("v10");
    // 5 splits t2's open row around it; 6 meets the far part starting at
    // 6; 4 takes t2 out of the part before 5.
    db.ingest(
        &pinned(5, 2),
        &mut payload_of(5, &[("t1", 5), ("t2", 5)], 2, None),
        keep,
    )
    .expect("v5");
    db.ingest(
        &pinned(6, 2),
        &mut payload_of(6, &[("t1", 6), ("t2", 6)], 2, None),
        keep,
    )
    .expect("v6");
    db.ingest(
        &pinned(4, 1),
        &mut payload_of(4, &[("t1", 4)], 1, None),
        keep,
    )
    .expect("v4");
    for (v, t2) in [
        (3, Some(3)),
        (4, None),
        (5, Some(5)),
        (6, Some(6)),
        (10, Some(3)),
    ] {
        let want = |c: u64| Some(prompt(&format!("prompt v{c}")));
        assert_eq!(served_prompt(&db, v, "t2"), t2.and_then(want), "t2 in {v}");
        assert_eq!(served_prompt(&db, v, "t1"), want(v), "t1 in {v}");
    }
}

/// The names of the tables the file holds.
fn tables(db: &Db) -> Vec<String> {
    use redb::TableHandle;
    let txn = db.db.begin_read().expect("read");
    txn.list_tables()
        .expect("tables")
        .map(|t| t.name().to_owned())
        .collect()
}

/// Tenants whose bodies fill three payload frames: a first apply with a
/// part budget of one byte takes one transaction per frame.
fn three_frames() -> Vec<(usize, usize)> {
    let frames = 3 * strata_common::bundle::FRAME_TARGET_BYTES / 8000 - 10;
    (0..frames).map(|_| (4000, 4000)).collect()
}

#[test]
fn a_first_apply_is_written_in_parts_and_served_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = Db::open(&dir.path().join("s.redb"), 1 << 20).expect("open");
    db.part_bytes = 1;
    let sizes = three_frames();
    let n = sizes.len() as u64;
    let done = db
        .ingest(&meta(1, n), &mut payload_sized(1, &sizes), Keep::newest(2))
        .expect("ingest");
    assert_eq!(done.tenants, n);
    assert_eq!(done.frames_decoded, 3);
    assert_eq!(
        done.transactions, 4,
        "a part per frame, then the last: {done:?}"
    );
    let r = db.reader().expect("reader").expect("served");
    assert_eq!(r.current, 1);
    for i in [0, n / 2, n - 1] {
        let body = r
            .prompt(1, &format!("t{i:04}"))
            .expect("get")
            .expect("present");
        assert_eq!(body.body().len(), prompt("").len() + 4000);
    }
    drop(r);
    assert_eq!(count(&db, TENANTS), n);
    // The next snapshot is written over it in one transaction, as always.
    let next = db
        .ingest(&meta(2, n), &mut payload_sized(2, &sizes), Keep::newest(2))
        .expect("v2");
    assert_eq!(next.transactions, 1);
}

#[test]
fn a_first_apply_refused_after_some_parts_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    let mut db = Db::open(&path, 1 << 20).expect("open");
    db.part_bytes = 1;
    let sizes = three_frames();
    let n = sizes.len() as u64;
    // The manifest claims one tenant more than the payload holds: refused
    // in the last transaction, after three parts were committed.
    let err = db
        .ingest(
            &meta(1, n + 1),
            &mut payload_sized(1, &sizes),
            Keep::newest(2),
        )
        .expect_err("a tenant short");
    assert!(matches!(err, DbError::TenantCount { .. }), "{err}");
    assert!(db.reader().expect("reader").is_none(), "nothing served");
    assert_eq!(
        tables(&db),
        ["meta", "snapshots"],
        "the committed parts were deleted"
    );
    db.ingest(&meta(1, n), &mut payload_sized(1, &sizes), Keep::newest(2))
        .expect("the same version, whole, applies afterwards");
    assert_eq!(count(&db, TENANTS), n);
}

#[test]
fn parts_a_crash_left_behind_are_deleted_at_open_and_the_marks_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    {
        let db = Db::open(&path, 1 << 20).expect("open");
        db.raise_high_water(7).expect("mark");
        // What a crash between two parts leaves: rows and bodies of a
        // version no stored snapshot names.
        let txn = db.db.begin_write().expect("write");
        {
            let mut t = super::ingest::Tables::open(&txn).expect("tables");
            t.tenants
                .insert(("t0000", 8), b"partial".as_slice())
                .expect("row");
            t.config_bodies.insert((8, "t0000"), b"{}").expect("body");
        }
        txn.commit().expect("commit");
    }
    let db = Db::open(&path, 1 << 20).expect("reopen");
    let txn = db.db.begin_read().expect("read");
    assert!(matches!(
        txn.open_table(TENANTS),
        Err(redb::TableError::TableDoesNotExist(_))
    ));
    assert!(matches!(
        txn.open_table(CONFIG_BODIES),
        Err(redb::TableError::TableDoesNotExist(_))
    ));
    drop(txn);
    assert_eq!(
        db.marks().expect("marks").high_water,
        7,
        "the node's marks stay"
    );
    let sizes = three_frames();
    let n = sizes.len() as u64;
    db.ingest(&meta(8, n), &mut payload_sized(8, &sizes), Keep::newest(2))
        .expect("the first apply, again");
    let r = db.reader().expect("reader").expect("served");
    assert!(r.prompt(8, "t0000").expect("get").is_some());
}

#[test]
fn persist_after_a_non_durable_apply_writes_no_page_twice() {
    // A non-durable commit leaves the pages it rewrote (to checksum them)
    // in redb's write buffer; persist writes them, and the backend must
    // still know the file holds them (found in review).
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&dir.path().join("s.redb"), 256 << 10).expect("open");
    let done = first_of_400(&db);
    assert!(!done.durable, "{done:?}");
    let before = thread_bytes_written();
    db.persist().expect("persist");
    let persisted = thread_bytes_written() - before;
    // At most what the write buffer (half the 256 KiB cache) holds: pages
    // of the apply's non-durable steps not yet written, each written once;
    // not the 1.6 MB of bodies again.
    assert!(persisted <= 128 << 10, "persist wrote {persisted} bytes");
}

/// Frames that fail reading the bodies of their `fail_at`-th frame: a bad
/// chunk in the middle of a first apply.
struct FailAt<F> {
    inner: F,
    calls: usize,
    fail_at: usize,
}

impl<F: strata_common::bundle::Frames> strata_common::bundle::Frames for FailAt<F> {
    fn layer1(&self) -> &[u8] {
        self.inner.layer1()
    }
    fn next_group(
        &mut self,
    ) -> Result<Option<strata_common::bundle::Group>, strata_common::bundle::BundleError> {
        self.inner.next_group()
    }
    fn bodies<'a>(
        &'a mut self,
        frame: &'a strata_common::bundle::Frame,
    ) -> Result<strata_common::bundle::FrameBodies<'a>, strata_common::bundle::BundleError> {
        self.calls += 1;
        if self.calls == self.fail_at {
            return Err(strata_common::bundle::BundleError::BadRecord {
                frame: 0,
                offset: 0,
                reason: "a bad chunk".into(),
            });
        }
        self.inner.bodies(frame)
    }
    fn routes_sha256(&self) -> &str {
        self.inner.routes_sha256()
    }
    fn next_route(&mut self) -> Result<Option<(&str, &str)>, strata_common::bundle::BundleError> {
        self.inner.next_route()
    }
    fn routes_checked(&self) -> bool {
        self.inner.routes_checked()
    }
}

#[test]
fn a_bad_chunk_in_the_middle_part_of_a_first_apply_leaves_nothing_and_the_next_apply_is_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = Db::open(&dir.path().join("s.redb"), 1 << 20).expect("open");
    db.part_bytes = 1;
    let sizes = three_frames();
    let n = sizes.len() as u64;
    let mut bad = FailAt {
        inner: payload_sized(1, &sizes),
        calls: 0,
        fail_at: 3,
    };
    db.ingest(&meta(1, n), &mut bad, Keep::newest(2))
        .expect_err("bad third frame");
    assert!(db.reader().expect("reader").is_none());
    assert_eq!(tables(&db), ["meta", "snapshots"]);
    let done = db
        .ingest(&meta(1, n), &mut payload_sized(1, &sizes), Keep::newest(2))
        .expect("again");
    assert_eq!(done.tenants, n);
    let r = db.reader().expect("reader").expect("served");
    for i in 0..n {
        let t = format!("t{i:04}");
        assert!(r.prompt(1, &t).expect("get").is_some(), "{t}");
        assert!(r.config(1, &t).expect("get").is_some(), "{t}");
    }
}

#[test]
fn a_first_apply_in_steps_of_half_the_write_buffer_is_served_whole_and_survives_a_reopen() {
    // 1.6 MB of bodies through a 128 KiB write buffer: non-durable steps of
    // 64 KiB, one part, then `persist`.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    {
        let db = Db::open(&path, 256 << 10).expect("open");
        let done = first_of_400(&db);
        assert_eq!(done.transactions, 1, "one part: {done:?}");
        assert_eq!(count(&db, TENANTS), 400);
        db.persist().expect("persist");
    }
    let db = Db::open(&path, 256 << 10).expect("reopen");
    assert_eq!(count(&db, TENANTS), 400, "every step's rows kept");
    let r = db.reader().expect("reader").expect("served");
    assert_eq!(r.current, 1);
    for i in [0, 199, 399] {
        let body = r
            .prompt(1, &format!("t{i:04}"))
            .expect("get")
            .expect("present");
        assert_eq!(body.body().len(), prompt("").len() + 2500);
    }
}

/// A first apply of 400 tenants with 4,000 bytes of bodies each (1.6 MB).
fn first_of_400(db: &Db) -> Ingested {
    let sizes: Vec<(usize, usize)> = (0..400).map(|_| (1500, 2500)).collect();
    db.ingest(
        &meta(1, 400),
        &mut payload_sized(1, &sizes),
        Keep::newest(2),
    )
    .expect("ingest")
}
