//! The independent Python verifier (written from docs/FORMAT.md) accepts what
//! the publisher writes and refuses damaged copies. Needs python3 with
//! `cryptography` and `zstandard` (`.ci/run` installs them).

use std::path::Path;
use std::process::Command;

use strata_common::sign;
use strata_tests::Fixture;

fn verify(args: &[&Path]) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("verify_bundle.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script);
    for pair in args.chunks(2) {
        cmd.arg(pair[0]).arg(pair[1]);
    }
    let out = cmd.output().expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("ModuleNotFoundError"),
        "install the verifier's packages: pip install cryptography zstandard\n{text}"
    );
    (out.status.success(), text)
}

#[test]
fn python_verifier_accepts_published_bundles_and_refuses_damaged_ones() {
    let fx = Fixture::new();
    let published = fx.publish("v1", 25);
    let store = fx.store_dir();
    let bundle = store.join(&published.pointer.bundle);
    let pointer = store.join("channels/stable.json");
    let pubkey = sign::public_path(&fx.key_path);
    let (flag_k, flag_b, flag_p) = (
        Path::new("--pubkey"),
        Path::new("--bundle"),
        Path::new("--pointer"),
    );

    let (ok, text) = verify(&[flag_k, &pubkey, flag_b, &bundle, flag_p, &pointer]);
    assert!(ok, "{text}");
    assert!(text.contains("OK: version 1, 25 tenants"), "{text}");

    let bytes = std::fs::read(&bundle).expect("bundle");
    for (name, at) in [("manifest", 20), ("payload", bytes.len() - 10)] {
        let damaged = fx.dir.path().join(format!("damaged-{name}.bundle"));
        let mut copy = bytes.clone();
        copy[at] ^= 0x01;
        std::fs::write(&damaged, copy).expect("write");
        let (ok, text) = verify(&[flag_k, &pubkey, flag_b, &damaged]);
        assert!(!ok && text.contains("REFUSED"), "{name}: {text}");
    }

    let stranger = fx.dir.path().join("stranger.key");
    sign::generate_key(&stranger).expect("keygen");
    let (ok, text) = verify(&[flag_k, &sign::public_path(&stranger), flag_b, &bundle]);
    assert!(!ok && text.contains("required"), "{text}");
}
