//! The independent Python verifier (written from docs/FORMAT.md) accepts what
//! the publisher writes and refuses damaged copies. It runs in a virtual
//! environment under `target/` that the test creates on first use from the
//! pinned `tests/requirements.txt`, so a fresh machine needs only `python3`
//! (with `venv`, Debian's `python3-venv`) and nothing installed by hand.

use std::path::Path;
use std::process::Command;

use strata_common::sign;
use strata_tests::Fixture;

fn verify(args: &[&Path]) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("verify_bundle.py");
    let mut cmd = Command::new(strata_tests::python(Path::new(env!("CARGO_TARGET_TMPDIR"))));
    cmd.arg(script);
    for pair in args.chunks(2) {
        cmd.arg(pair[0]).arg(pair[1]);
    }
    let out = cmd.output().expect("python runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
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

    // docs/FORMAT.md's worked example: the pointer and the bundle it names.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/worked-example");
    let (ok, text) = verify(&[
        flag_k,
        &example.join("publisher.pub"),
        flag_b,
        &example.join("snapshot.bundle"),
        flag_p,
        &example.join("stable.json"),
    ]);
    assert!(ok && text.contains("OK: version 1, 1 tenants"), "{text}");

    let stranger = fx.dir.path().join("stranger.key");
    sign::generate_key(&stranger).expect("keygen");
    let (ok, text) = verify(&[flag_k, &sign::public_path(&stranger), flag_b, &bundle]);
    assert!(!ok && text.contains("required"), "{text}");

    // A pretty-printed copy of the signed pointer: same signature, another spelling.
    let value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&pointer).expect("pointer")).expect("json");
    let pretty = fx.dir.path().join("pretty.json");
    std::fs::write(&pretty, serde_json::to_vec_pretty(&value).expect("json")).expect("write");
    let (ok, text) = verify(&[flag_k, &pubkey, flag_b, &bundle, flag_p, &pretty]);
    assert!(!ok && text.contains("not canonical"), "{text}");

    // The identity point as a "trusted" key, with R = identity and s = 0:
    // `cryptography` alone accepts that signature for any message.
    let identity = {
        let mut raw = [0u8; 32];
        raw[0] = 1;
        raw
    };
    let weak = sign::VerifyingKey::from_bytes(&identity).expect("the identity decodes");
    let pem = sign::public_pem(&weak).expect("pem");
    let weak_pub = fx.dir.path().join("identity.pub");
    std::fs::write(&weak_pub, pem).expect("write");
    let mut forged = value.clone();
    forged["signatures"] = serde_json::json!([{
        "key_id": strata_common::canonical::sha256_hex(&identity),
        "sig": format!("{}{}", hex::encode(identity), "00".repeat(32)),
    }]);
    let forged_path = fx.dir.path().join("forged.json");
    std::fs::write(
        &forged_path,
        strata_common::canonical::to_vec(&forged).expect("json"),
    )
    .expect("write");
    let (ok, text) = verify(&[flag_k, &weak_pub, flag_b, &bundle, flag_p, &forged_path]);
    assert!(!ok && text.contains("does not verify"), "{text}");
}

#[test]
fn python_verifier_walks_a_format_3_store_object_by_object() {
    use strata_common::channel::{self, PublishOptions};
    use strata_common::compile::{self, CompileOptions};
    use strata_common::source::Source;

    let fx = Fixture::new();
    let src = fx.dir.path().join("source");
    strata_common::generate::generate(&src, 300).expect("generate");
    let compiled = compile::compile(
        &Source::open(&src).expect("source"),
        CompileOptions {
            format: 3,
            ..CompileOptions::default()
        },
    )
    .expect("compile");
    let published = channel::publish(
        &fx.store(),
        &compiled,
        std::slice::from_ref(&fx.key),
        &PublishOptions::for_channel("stable"),
    )
    .expect("publish");
    let store = fx.store_dir();
    let bundle = store.join(&published.pointer.bundle);
    let pointer = store.join("channels/stable.json");
    let pubkey = sign::public_path(&fx.key_path);
    let (k, b, p) = (
        Path::new("--pubkey"),
        Path::new("--bundle"),
        Path::new("--pointer"),
    );
    let (ok, text) = verify(&[k, &pubkey, b, &bundle, p, &pointer]);
    assert!(ok, "{text}");
    assert!(text.contains("OK: version 1, 300 tenants"), "{text}");

    // Every object is checked against the hash its parent names: one
    // flipped byte in any of them, or one missing, is refused.
    let mut objects: Vec<_> = walk(&store.join("objects"));
    objects.sort();
    for (i, object) in objects.iter().enumerate().step_by(7) {
        let good = std::fs::read(object).expect("object");
        let mut bad = good.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x10;
        std::fs::write(object, &bad).expect("damage");
        let (ok, text) = verify(&[k, &pubkey, b, &bundle]);
        assert!(!ok && text.contains("REFUSED"), "object {i}: {text}");
        std::fs::remove_file(object).expect("remove");
        let (ok, text) = verify(&[k, &pubkey, b, &bundle]);
        assert!(!ok && text.contains("cannot be read"), "object {i}: {text}");
        std::fs::write(object, &good).expect("restore");
    }
    let (ok, text) = verify(&[k, &pubkey, b, &bundle]);
    assert!(ok, "{text}");

    // docs/FORMAT.md's format 3 worked example.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/worked-example-3");
    let (ok, text) = verify(&[
        k,
        &example.join("publisher.pub"),
        b,
        &example.join("store/snapshots/00000000000000000001.bundle"),
        p,
        &example.join("store/channels/stable.json"),
    ]);
    assert!(
        ok && text.contains("OK: version 1, 1 tenants, 3 routes"),
        "{text}"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
