//! Version discipline per tenant, through the real publisher: against the
//! snapshot the channel serves, a tenant's version may not go down, and
//! content that changed needs a higher version; a Layer 1 default that
//! changed under tenants needs none; `rollback` is how old content returns.

use std::path::Path;
use std::process::{Command, Output};

use strata_tests::{Fixture, bin};

fn publish(fx: &Fixture, src: &Path) -> Output {
    Command::new(bin("strata-publisher"))
        .args(["publish", "--source"])
        .arg(src)
        .arg("--key")
        .arg(&fx.key_path)
        .arg("--store")
        .arg(format!("file://{}", fx.store_dir().display()))
        .output()
        .expect("run publisher")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn bundles(fx: &Fixture) -> usize {
    std::fs::read_dir(fx.store_dir().join("snapshots"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Rewrites the line of `file` starting with `prefix`.
fn set_line(file: &Path, prefix: &str, line: &str) {
    let old = std::fs::read_to_string(file).expect("read");
    let new: String = old
        .lines()
        .map(|l| {
            if l.starts_with(prefix) {
                format!("{line}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_ne!(old, new, "{prefix} not in {}", file.display());
    std::fs::write(file, new).expect("write");
}

#[test]
fn a_tenant_s_version_goes_up_with_its_content_and_never_down() {
    let fx = Fixture::new();
    let (src, _) = fx.compile("v1", 5);
    assert!(publish(&fx, &src).status.success());
    let mut files: Vec<_> = std::fs::read_dir(src.join("tenants"))
        .expect("tenants")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let file = &files[1];
    let tenant = file
        .file_stem()
        .expect("stem")
        .to_string_lossy()
        .into_owned();
    let original = std::fs::read_to_string(file).expect("read");
    let version = original
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("version")
        .to_owned();

    // Lowered.
    set_line(file, "version = ", "version = \"0.0.1\"");
    let out = publish(&fx, &src);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!(
            "tenant {tenant}: version: 0.0.1 is lower than {version}, the version snapshot 1 serves"
        )),
        "{t}"
    );
    assert!(t.contains("config_hash "), "{t}");
    assert!(t.contains("nothing was written"), "{t}");
    assert_eq!(
        bundles(&fx),
        1,
        "a refused publish leaves the store untouched"
    );

    // Content changed, version kept.
    std::fs::write(file, &original).expect("restore");
    set_line(file, "name = ", "name = \"Renamed Without A Bump\"");
    let out = publish(&fx, &src);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "tenant {tenant}: version: the content changed but the version stays {version}"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(bundles(&fx), 1);

    // Content changed with a higher version: published.
    set_line(file, "version = ", "version = \"99.0.0\"");
    let out = publish(&fx, &src);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(bundles(&fx), 2);

    // A Layer 1 default changed under every tenant: no tenant changed.
    set_line(
        &src.join("layer1.toml"),
        "temperature = 0.7",
        "temperature = 0.6",
    );
    let out = publish(&fx, &src);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(bundles(&fx), 3);

    // Old content returns through rollback only.
    let out = Command::new(bin("strata-publisher"))
        .args(["rollback", "--to", "1", "--key"])
        .arg(&fx.key_path)
        .arg("--store")
        .arg(format!("file://{}", fx.store_dir().display()))
        .output()
        .expect("rollback");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(bundles(&fx), 4);
}

#[test]
fn a_damaged_served_bundle_does_not_lock_the_channel() {
    let fx = Fixture::new();
    let (src, _) = fx.compile("v1", 3);
    assert!(publish(&fx, &src).status.success());
    let bundle = fx.store_dir().join("snapshots/00000000000000000001.bundle");
    let mut bytes = std::fs::read(&bundle).expect("bundle");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&bundle, bytes).expect("damage");
    let out = publish(&fx, &src);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("warning: tenant versions not checked against the channel's snapshot"),
        "{}",
        text(&out)
    );
    assert_eq!(bundles(&fx), 2);
}
