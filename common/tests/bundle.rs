//! The bundle format end to end: build from a source, verify, decode; merge,
//! rendering and determinism; and every kind of damage refused with its own
//! error variant.

use std::io::Cursor;
use std::path::Path;

use strata_common::bundle::{self, BundleError, Contents, Limits, Provenance, SignatureCheck};
use strata_common::channel;
use strata_common::compile::{self, CompileOptions, Compiled};
use strata_common::generate;
use strata_common::model::EffectiveConfig;
use strata_common::render::SEPARATOR;
use strata_common::sign::{Role, SignatureError, SigningKey, TrustedKeys};
use strata_common::source::Source;
use strata_common::time;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn trust(keys: &[&SigningKey]) -> TrustedKeys {
    let mut t = TrustedKeys::new(1, 1);
    for k in keys {
        t.add(Role::Publisher, k.verifying_key());
    }
    t
}

fn compile_dir(dir: &Path) -> Compiled {
    let source = Source::open(dir).expect("open");
    compile::compile(&source, CompileOptions::default()).expect("compile")
}

fn build(compiled: &Compiled, signer: &SigningKey) -> Vec<u8> {
    let m = channel::manifest(
        compiled,
        7,
        time::now(),
        channel::DEFAULT_BUNDLE_EXPIRY,
        &Provenance::default(),
    );
    bundle::write_bundle(
        &m,
        &compiled.payload.compressed,
        std::slice::from_ref(signer),
    )
    .expect("write")
}

fn open(bytes: &[u8], t: &TrustedKeys, limits: &Limits) -> Result<Contents, BundleError> {
    let v = bundle::verify(Cursor::new(bytes), SignatureCheck::Trusted(t), limits)?;
    Contents::collect(v.records()?)
}

fn generated(n: usize) -> (tempfile::TempDir, Compiled) {
    let dir = tempfile::tempdir().expect("tempdir");
    generate::generate(dir.path(), n).expect("generate");
    let c = compile_dir(dir.path());
    (dir, c)
}

#[test]
fn round_trip_merges_defaults_and_puts_layer1_first() {
    let (_dir, compiled) = generated(40);
    let k = key(1);
    let bytes = build(&compiled, &k);
    let contents = open(&bytes, &trust(&[&k]), &Limits::default()).expect("verify");
    assert_eq!(contents.configs.len(), 40);
    assert_eq!(contents.prompts.len(), 40);
    let id = generate::tenant_id(3);
    let cfg: EffectiveConfig = serde_json::from_slice(&contents.configs[&id]).expect("config json");
    assert_eq!(cfg.tenant_id, id);
    assert_eq!(cfg.layer1_version, "2026.11.1");
    // The config hash is the SHA-256 of the canonical config without it.
    let mut resealed = cfg.clone();
    resealed.seal().expect("seal");
    assert_eq!(resealed.config_hash, cfg.config_hash);
    let prompt = &contents.prompts[&id];
    assert!(
        prompt.starts_with("You are a voice receptionist"),
        "Layer 1 comes first"
    );
    let tenant_part = prompt.split_once(SEPARATOR).expect("separator").1;
    assert!(tenant_part.starts_with("You are "), "{tenant_part}");
    assert!(!tenant_part.contains('{'), "variables are rendered");
    for n in 0..1 {
        assert_eq!(contents.routes[&generate::phone_number(3, n)], id);
    }
}

#[test]
fn partial_overlay_takes_every_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    generate::generate(dir.path(), 0).expect("layer1");
    std::fs::write(
        dir.path().join("tenants/tiny.toml"),
        "tenant_id = \"tiny\"\nname = \"Tiny\"\nversion = \"0.1.0\"\nphone_numbers = [\"+442071838750\"]\n[agent]\nprompt = \"Hello.\"\n",
    )
    .expect("write");
    let compiled = compile_dir(dir.path());
    let k = key(1);
    let contents = open(&build(&compiled, &k), &trust(&[&k]), &Limits::default()).expect("verify");
    let cfg: serde_json::Value = serde_json::from_slice(&contents.configs["tiny"]).expect("json");
    assert_eq!(cfg["model"]["primary"], "gpt-4o-mini");
    assert_eq!(cfg["generation"]["temperature"], 0.7);
    assert_eq!(cfg["generation"]["max_tokens"], 1000);
    assert_eq!(cfg["retrieval"]["top_k"], 5);
    assert_eq!(cfg["retrieval"]["rerank"], false);
    assert_eq!(cfg["branding"]["primary_color"], "#007bff");
    assert_eq!(cfg["branding"]["logo_url"], "");
    assert_eq!(cfg["limits"]["max_concurrent_calls"], 5);
    assert!(
        !serde_json::to_string(&cfg).expect("str").contains("null"),
        "no field is null"
    );
}

#[test]
fn same_source_same_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    generate::generate(dir.path(), 300).expect("generate");
    let a = compile_dir(dir.path());
    let b = compile::compile(
        &Source::open(dir.path()).expect("open"),
        CompileOptions {
            threads: 1,
            level: 3,
            ..CompileOptions::default()
        },
    )
    .expect("compile single-threaded");
    let k = key(1);
    let ca = open(&build(&a, &k), &trust(&[&k]), &Limits::default()).expect("a");
    let cb = open(&build(&b, &k), &trust(&[&k]), &Limits::default()).expect("b");
    assert_eq!(
        a.payload.sha256,
        compile_dir(dir.path()).payload.sha256,
        "same threads, same payload bytes"
    );
    assert_eq!(ca, cb, "thread count does not change the content");
}

fn assert_refused(bytes: &[u8], t: &TrustedKeys) -> BundleError {
    match open(bytes, t, &Limits::default()) {
        Ok(_) => panic!("damaged bundle was accepted"),
        Err(e) => e,
    }
}

#[test]
fn a_flipped_byte_anywhere_is_refused() {
    let (_dir, compiled) = generated(5);
    let k = key(1);
    let t = trust(&[&k]);
    let good = build(&compiled, &k);
    let mut kinds = std::collections::HashSet::new();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        let e = assert_refused(&bad, &t);
        kinds.insert(std::mem::discriminant(&e));
        if i >= good.len() - compiled.payload.compressed.len() {
            assert!(
                matches!(e, BundleError::PayloadHashMismatch { .. }),
                "byte {i}: {e}"
            );
        }
    }
    assert!(
        kinds.len() >= 3,
        "header, signature and payload damage are told apart"
    );
}

#[test]
fn wrong_key_truncation_and_limits_each_have_their_variant() {
    let (_dir, compiled) = generated(20);
    let (k, stranger) = (key(1), key(2));
    let t = trust(&[&k]);
    let good = build(&compiled, &k);

    let by_stranger = build(&compiled, &stranger);
    assert!(matches!(
        assert_refused(&by_stranger, &t),
        BundleError::Signature(SignatureError::ThresholdNotMet {
            valid: 0,
            untrusted: 1,
            ..
        })
    ));

    for cut in [4, 20, good.len() - 1] {
        assert!(
            matches!(assert_refused(&good[..cut], &t), BundleError::Truncated(_)),
            "cut at {cut}"
        );
    }
    let mut longer = good.clone();
    longer.push(0);
    assert!(matches!(
        assert_refused(&longer, &t),
        BundleError::TrailingBytes(1)
    ));

    let small = Limits {
        max_bundle_bytes: 100,
        ..Limits::default()
    };
    assert!(matches!(
        open(&good, &t, &small),
        Err(BundleError::TooLarge { .. })
    ));
    let tight = Limits {
        max_decompressed_bytes: 1000,
        ..Limits::default()
    };
    assert!(matches!(
        open(&good, &t, &tight),
        Err(BundleError::DecompressedTooLarge { .. })
    ));
    let few = Limits {
        max_records: 3,
        ..Limits::default()
    };
    assert!(matches!(
        open(&good, &t, &few),
        Err(BundleError::TooManyRecords { .. })
    ));
}

#[test]
fn a_zstd_bomb_with_a_lying_manifest_is_stopped_at_the_limit() {
    // 256 MiB of zeros compresses to a few KiB; the signed manifest claims 1 KiB.
    let zeros = vec![0u8; 256 << 20];
    let compressed = zstd_with_checksum(&zeros);
    drop(zeros);
    let payload = bundle::Payload {
        format: bundle::FORMAT_VERSION,
        sha256: strata_common::canonical::sha256_hex(&compressed),
        index_size: compressed.len() as u64,
        compressed,
        routes_sha256: String::new(),
        raw_size: 1024,
        record_count: 1,
    };
    let k = key(1);
    let bytes = bundle_around(&payload, 0, &k);
    let e = open(&bytes, &trust(&[&k]), &Limits::default()).expect_err("bomb refused");
    assert!(
        matches!(
            e,
            BundleError::DecompressedTooLarge { .. } | BundleError::BadRecord { .. }
        ),
        "{e}"
    );
}

/// A signed bundle around `payload` whose manifest claims `tenants` tenants.
fn bundle_around(payload: &bundle::Payload, tenants: u64, k: &SigningKey) -> Vec<u8> {
    let manifest = bundle::Manifest {
        kind: bundle::MANIFEST_TYPE.into(),
        format: bundle::FORMAT_VERSION,
        version: 1,
        created_at: time::format(time::now()),
        expires_at: time::format(time::now()),
        layer1_version: "x".into(),
        tenant_count: tenants,
        record_count: payload.record_count,
        payload_size: payload.compressed.len() as u64,
        index_size: payload.index_size,
        routes_sha256: payload.routes_sha256.clone(),
        payload_raw_size: payload.raw_size,
        payload_sha256: payload.sha256.clone(),
        provenance: Provenance::default(),
        held: Default::default(),
    };
    bundle::write_bundle(&manifest, &payload.compressed, std::slice::from_ref(k)).expect("write")
}

/// Opens a bundle around `payload` signed by a trusted key, expecting a
/// malformed frame: returns the frame number and the reason.
fn bad_record(payload: &bundle::Payload, tenants: u64) -> (u64, String) {
    let k = key(1);
    match open(
        &bundle_around(payload, tenants, &k),
        &trust(&[&k]),
        &Limits::default(),
    ) {
        Err(BundleError::BadRecord { frame, reason, .. }) => (frame, reason),
        Err(e) => panic!("expected a malformed frame, got: {e}"),
        Ok(_) => panic!("expected a malformed frame, the bundle opened"),
    }
}

/// One zstd frame with its content checksum, as docs/FORMAT.md requires.
fn zstd_with_checksum(data: &[u8]) -> Vec<u8> {
    let mut c = zstd::bulk::Compressor::new(3).expect("compressor");
    c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
        .expect("checksum flag");
    c.compress(data).expect("compress")
}

/// Appends one record, encoded as docs/FORMAT.md says.
fn record(out: &mut Vec<u8>, kind: u8, key: &str, value: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

#[test]
fn a_body_frame_that_decompresses_past_its_declared_size_is_stopped_there() {
    // 256 MiB of zeros in a body frame whose index record claims 1 KiB.
    let zeros = vec![0u8; 256 << 20];
    let bomb = zstd_with_checksum(&zeros);
    drop(zeros);
    let mut index = Vec::new();
    record(&mut index, 1, "layer1", b"{}");
    let mut sizes = (bomb.len() as u64).to_le_bytes().to_vec();
    sizes.extend_from_slice(&1024u64.to_le_bytes());
    record(&mut index, 5, "", &sizes);
    record(&mut index, 6, "t1", "a".repeat(64).as_bytes());
    let mut compressed = zstd_with_checksum(&index);
    let index_size = compressed.len() as u64;
    compressed.extend_from_slice(&bomb);
    let payload = bundle::Payload {
        format: bundle::FORMAT_VERSION,
        sha256: strata_common::canonical::sha256_hex(&compressed),
        compressed,
        index_size,
        routes_sha256: strata_common::canonical::sha256_hex(b""),
        raw_size: index.len() as u64 + 1024,
        record_count: 5,
    };
    assert_eq!(bad_record(&payload, 1).0, 1, "the bomb is body frame 1");
}

#[test]
fn a_config_whose_hash_differs_from_the_index_is_refused() {
    let mut w = bundle::PayloadWriter::new(1).expect("writer");
    w.layer1(b"{}").expect("layer1");
    let config = format!("{{\"config_hash\":\"{}\"}}", "a".repeat(64));
    w.tenant("t1", &"b".repeat(64), config.as_bytes(), b"prompt")
        .expect("tenant");
    let payload = w.finish().expect("finish");
    let (frame, reason) = bad_record(&payload, 1);
    assert_eq!(frame, 1);
    assert!(reason.contains("t1"), "{reason}");
}

#[test]
fn a_payload_is_an_index_then_frames_of_about_512_kib() {
    let (_dir, compiled) = generated(400);
    let p = &compiled.payload;
    assert!(p.index_size > 0 && p.index_size < p.compressed.len() as u64);
    let k = key(1);
    let v = bundle::verify(
        Cursor::new(build(&compiled, &k)),
        SignatureCheck::Trusted(&trust(&[&k])),
        &Limits::default(),
    )
    .expect("verify");
    let mut payload = v.payload().expect("payload");
    let mut frames = 0;
    let mut tenants = Vec::new();
    while let Some(frame) = payload.next_frame().expect("frame") {
        frames += 1;
        tenants.extend(frame.tenants.iter().map(|t| t.tenant.clone()));
    }
    let raw = p.raw_size as usize;
    assert!(
        frames >= raw / bundle::FRAME_TARGET_BYTES
            && frames <= raw / bundle::FRAME_TARGET_BYTES + 2,
        "{frames} frames for {raw} bytes"
    );
    let mut sorted = tenants.clone();
    sorted.sort();
    assert_eq!(tenants, sorted, "tenants in id order across frames");
    assert_eq!(tenants.len(), 400);
    assert_eq!(payload.routes_sha256(), p.routes_sha256);
    let mut routes = 0;
    while payload.next_route().expect("route").is_some() {
        routes += 1;
    }
    assert!(routes >= 400, "every tenant has a number");
}

#[test]
fn routes_that_do_not_hash_to_the_signed_digest_are_refused() {
    let (_dir, compiled) = generated(3);
    let mut payload = compiled.payload.clone();
    payload.routes_sha256 = strata_common::canonical::sha256_hex(b"other routes");
    let (frame, reason) = bad_record(&payload, 3);
    assert_eq!(frame, 0, "routes are in the index");
    assert!(reason.contains("routes_sha256"), "{reason}");
}

#[test]
fn a_frame_over_max_frame_bytes_is_refused_before_it_is_decompressed() {
    let (_dir, compiled) = generated(40);
    let k = key(1);
    let bytes = build(&compiled, &k);
    let small = Limits {
        max_frame_bytes: 1024,
        ..Limits::default()
    };
    assert!(matches!(
        open(&bytes, &trust(&[&k]), &small),
        Err(BundleError::DecompressedTooLarge { limit: 1024 })
    ));
    open(&bytes, &trust(&[&k]), &Limits::default()).expect("within the default");
}
