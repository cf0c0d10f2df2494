//! docs/FORMAT.md's worked example, and key interoperability with openssl.

use std::path::Path;
use std::process::Command;

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
