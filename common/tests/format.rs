//! docs/FORMAT.md's worked example, and key interoperability with openssl.

use std::path::Path;
use std::process::Command;

use strata_common::bundle::{self, Limits, SignatureCheck};
use strata_common::pointer::{Pointer, PointerKind};
use strata_common::sign::{self, KeyId, Role, SigningKey, TrustedKeys};

fn example_dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/worked-example"
    ))
}

#[test]
fn worked_example_pointer_verifies() {
    let key = SigningKey::from_bytes(&[1; 32]);
    let public =
        sign::load_verifying_key(&example_dir().join("publisher.pub")).expect("public key");
    assert_eq!(public, key.verifying_key());
    assert_eq!(
        KeyId::of(&public).0,
        "34750f98bd59fcfc946da45aaabe933be154a4b5094e1c4abf42866505f3c97e"
    );
    let bytes = std::fs::read(example_dir().join("stable.json")).expect("pointer");
    let mut trust = TrustedKeys::new(1, 1);
    trust.add(Role::Publisher, public);
    let (pointer, signed_by) =
        Pointer::verify(&bytes, PointerKind::Channel, "stable", &trust).expect("verifies");
    assert_eq!(pointer.version, 1);
    assert_eq!(signed_by.len(), 1);
    // Ed25519 is deterministic: signing again yields the same file, byte for byte.
    assert_eq!(pointer.sign(&[key]).expect("sign"), bytes);
    // As a pin, or for another channel, it is refused.
    assert!(Pointer::verify(&bytes, PointerKind::Pin, "stable", &trust).is_err());
    assert!(Pointer::verify(&bytes, PointerKind::Channel, "beta", &trust).is_err());
}

#[test]
fn worked_example_bundle_verifies_and_has_the_documented_layout() {
    let public =
        sign::load_verifying_key(&example_dir().join("publisher.pub")).expect("public key");
    let mut trust = TrustedKeys::new(1, 1);
    trust.add(Role::Publisher, public);
    let bytes = std::fs::read(example_dir().join("snapshot.bundle")).expect("bundle");
    let verified = bundle::verify(
        std::io::Cursor::new(bytes),
        SignatureCheck::Trusted(&trust),
        &Limits::default(),
    )
    .expect("verifies");
    assert_eq!(verified.header.manifest_bytes.len(), 466);
    let m = verified.manifest().clone();
    assert_eq!(
        (m.format, m.index_size, m.payload_size, m.payload_raw_size),
        (2, 921, 2894, 14222)
    );
    assert_eq!((m.record_count, m.tenant_count), (8, 1));
    let mut payload = verified.payload().expect("index");
    let frame = payload.next_frame().expect("frame").expect("one frame");
    assert_eq!(frame.tenants.len(), 1);
    assert_eq!(frame.tenants[0].tenant, "acme-hvac-000000");
    assert!(frame.tenants[0].config_hash.starts_with(b"cda90268"));
    let bodies = payload.read_frame(&frame).expect("body frame");
    assert!(
        bodies
            .prompt(0)
            .expect("prompt")
            .starts_with(b"You are a voice receptionist")
    );
    assert!(payload.next_frame().expect("end").is_none());
    let mut routes = Vec::new();
    while let Some((number, tenant)) = payload.next_route().expect("route") {
        routes.push((number.to_owned(), tenant.to_owned()));
    }
    assert_eq!(routes.len(), 3);
    assert_eq!(
        routes[0],
        ("+12000000000".into(), "acme-hvac-000000".into())
    );
}

#[test]
fn worked_example_pointer_names_the_shipped_bundle() {
    let pointer_bytes = std::fs::read(example_dir().join("stable.json")).expect("pointer");
    let bundle_bytes = std::fs::read(example_dir().join("snapshot.bundle")).expect("bundle");
    let mut trust = TrustedKeys::new(1, 1);
    trust.add(
        Role::Publisher,
        SigningKey::from_bytes(&[1; 32]).verifying_key(),
    );
    let (pointer, _) =
        Pointer::verify(&pointer_bytes, PointerKind::Channel, "stable", &trust).expect("pointer");
    assert_eq!(pointer.bundle_size, bundle_bytes.len() as u64);
    assert_eq!(
        pointer.bundle_sha256,
        strata_common::canonical::sha256_hex(&bundle_bytes)
    );
    let header = bundle::read_header(&mut bundle_bytes.as_slice()).expect("header");
    assert_eq!(header.manifest.version, pointer.version);
}

#[test]
fn keys_from_openssl_load_and_ours_load_in_openssl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("ossl.key");
    let status = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key)
        .status()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(status.success());
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let pem_pub = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .output()
        .expect("openssl pkey");
    std::fs::write(dir.path().join("ossl.pub"), &pem_pub.stdout).expect("write pub");
    let sk = sign::load_signing_key(&key).expect("openssl private key loads");
    let pk =
        sign::load_verifying_key(&dir.path().join("ossl.pub")).expect("openssl public key loads");
    assert_eq!(sk.verifying_key(), pk);

    let ours = dir.path().join("ours.key");
    sign::generate_key(&ours).expect("keygen");
    let out = Command::new("openssl")
        .args(["pkey", "-noout", "-in"])
        .arg(&ours)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl reads our private key");
    let out = Command::new("openssl")
        .args(["pkey", "-pubin", "-noout", "-in"])
        .arg(sign::public_path(&ours))
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl reads our public key");
}

#[test]
fn worked_example_3_verifies_object_by_object() {
    use strata_common::bundle::tree::read::ObjectSource;
    use strata_common::bundle::tree::{Held, TreeFrames};
    use strata_common::store::FileStore;

    let dir = example_dir().join("../worked-example-3/store");
    let mut trust = TrustedKeys::new(1, 1);
    trust.add(
        Role::Publisher,
        SigningKey::from_bytes(&[1; 32]).verifying_key(),
    );
    let pointer_bytes = std::fs::read(dir.join("channels/stable.json")).expect("pointer");
    let (pointer, _) =
        Pointer::verify(&pointer_bytes, PointerKind::Channel, "stable", &trust).expect("pointer");
    let root = std::fs::read(dir.join(&pointer.bundle)).expect("root");
    assert_eq!(pointer.bundle_size, 894);
    assert_eq!(
        pointer.bundle_sha256,
        strata_common::canonical::sha256_hex(&root)
    );
    let verified = bundle::verify(
        std::io::Cursor::new(root),
        SignatureCheck::Trusted(&trust),
        &Limits::default(),
    )
    .expect("root verifies");
    let m = verified.manifest().clone();
    assert_eq!(
        (
            m.format,
            m.index_size,
            m.payload_size,
            m.payload_raw_size,
            m.record_count
        ),
        (3, 199, 199, 229, 7)
    );
    let raw = verified.root().expect("root frame");
    let store = FileStore::new(dir).expect("store");
    let mut frames = TreeFrames::open(
        ObjectSource::Store(&store),
        &m,
        &raw,
        &Held::nothing(),
        &Limits::default(),
    )
    .expect("objects verify");
    assert!(frames.dictionary().is_none());
    assert_eq!(frames.root().pages.len(), 1);
    assert_eq!(
        hex::encode(frames.chunks()[0].obj.sha256),
        "23707bd3f6c67cc0bafe2d2415072ff519883504e104e98656b787f60af4d485"
    );
    let contents = bundle::Contents::from_frames(&mut frames).expect("records verify");
    assert_eq!(contents.configs.len(), 1);
    assert_eq!(contents.routes.len(), 3);
    assert!(contents.prompts["acme-hvac-000000"].starts_with("You are a voice receptionist"));
}
