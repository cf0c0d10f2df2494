//! The real binaries as processes: crash safety, signals, socket handling,
//! and the publisher's command line.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::{Command, Stdio};

use strata_agent::client;
use strata_common::{generate, sign};
use strata_tests::{Fixture, bin, spawn_agent, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_ingest_then_restart_without_the_store_serves_the_last_complete_snapshot() {
    let fx = Fixture::new();
    fx.publish("small", 20);
    let (config, path) = fx.agent_config("a", "");
    let socket = config.socket.clone();
    let agent = spawn_agent(&path);
    wait_for("v1 served", || async {
        client::get(&socket, "/v1/snapshot")
            .await
            .is_ok_and(|a| a.json()["version"] == 1)
    })
    .await;

    fx.publish("large", 10_000);
    wait_for("ingest of v2 under way", || async {
        client::get(&socket, "/v1/snapshot")
            .await
            .is_ok_and(|a| a.json()["applying"] == 2 || a.json()["version"] == 2)
    })
    .await;
    let mut agent = agent;
    agent.0.kill().expect("SIGKILL");
    println!("killed while applying; restarted agent reports the snapshot below");
    let _ = agent.0.wait();
    drop(agent);

    std::fs::rename(fx.store_dir(), fx.dir.path().join("store-gone")).expect("store gone");
    let _restarted = spawn_agent(&path);
    wait_for("socket back", || async {
        client::get(&socket, "/healthz").await.is_ok()
    })
    .await;
    let ready = client::get(&socket, "/readyz").await.expect("readyz");
    assert_eq!(ready.status, 200, "ready at once, from disk");
    let snap = client::get(&socket, "/v1/snapshot")
        .await
        .expect("snapshot")
        .json();
    println!("{snap}");
    let (version, tenants) = (snap["version"].as_u64(), snap["tenant_count"].as_u64());
    assert!(
        matches!(
            (version, tenants),
            (Some(1), Some(20)) | (Some(2), Some(10_000))
        ),
        "a complete snapshot, never a mix: {snap}"
    );
    let last = tenants.unwrap_or(0) as usize - 1;
    let cfg = client::get(
        &socket,
        &format!("/v1/tenants/{}", generate::tenant_id(last)),
    )
    .await
    .expect("get");
    assert_eq!(cfg.status, 200);
    let beyond = client::get(
        &socket,
        &format!("/v1/tenants/{}", generate::tenant_id(last + 1)),
    )
    .await
    .expect("get");
    assert_eq!(beyond.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_removes_the_socket_and_a_stale_socket_is_replaced() {
    let fx = Fixture::new();
    fx.publish("v1", 5);
    let (config, path) = fx.agent_config("a", "");
    let socket = config.socket.clone();
    // A stale socket file left by a crashed agent.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    assert!(socket.exists());

    let mut agent = spawn_agent(&path);
    wait_for("ready", || async {
        client::get(&socket, "/readyz")
            .await
            .is_ok_and(|a| a.status == 200)
    })
    .await;
    let meta = std::fs::metadata(&socket).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    let pid = agent.0.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = agent.0.wait().expect("wait");
    assert_eq!(exit.code(), Some(0), "graceful exit");
    assert!(!socket.exists(), "socket removed at exit");
}

fn publisher(args: &[&str]) -> std::process::Output {
    Command::new(bin("strata-publisher"))
        .args(args)
        .output()
        .expect("run publisher")
}

fn tree_bytes(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.display().to_string(), std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn publisher_cli_refuses_bad_sources_without_touching_the_store() {
    let fx = Fixture::new();
    let src = fx.dir.path().join("src");
    let s = |p: &std::path::Path| p.display().to_string();
    let store_url = format!("file://{}", fx.store_dir().display());
    assert!(
        publisher(&["generate", "--tenants", "20", "--out", &s(&src)])
            .status
            .success()
    );
    assert!(
        publisher(&["validate", "--source", &s(&src)])
            .status
            .success()
    );
    let key = s(&fx.key_path);
    let publish = || {
        publisher(&[
            "publish",
            "--init",
            "--source",
            &s(&src),
            "--key",
            &key,
            "--store",
            &store_url,
        ])
    };
    let ok = publish();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let before = tree_bytes(&fx.store_dir());

    // Two broken tenants: every problem reported, one line each, exit 1.
    let t0 = src.join(format!("tenants/{}.toml", generate::tenant_id(0)));
    let t1 = src.join(format!("tenants/{}.toml", generate::tenant_id(1)));
    let text = std::fs::read_to_string(&t0).expect("read");
    std::fs::write(
        &t0,
        text.replace(
            "[limits]\nmax_concurrent_calls",
            "[limits]\nmax_concurrent_calls = 5000\n#",
        ),
    )
    .expect("write");
    let text = std::fs::read_to_string(&t1).expect("read");
    std::fs::write(
        &t1,
        text.replace("vault:tenants/", "sk-proj-AbCdEfGhIjKlMnOpQrStUv12/"),
    )
    .expect("write");
    let out = publisher(&["validate", "--source", &s(&src)]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].contains(&generate::tenant_id(0))
            && lines[0].contains("limits.max_concurrent_calls"),
        "{stdout}"
    );
    assert!(
        lines[1].contains(&generate::tenant_id(1)) && lines[1].contains("model.key_ref"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("AbCdEfGhIjKlMnOpQrStUv12"),
        "the secret is never echoed"
    );

    let refused = publish();
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(
        tree_bytes(&fx.store_dir()),
        before,
        "a refused publish leaves the store byte for byte"
    );

    // A private key readable by others is refused.
    std::fs::set_permissions(&fx.key_path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::write(&t0, std::fs::read_to_string(&t1).expect("read")).expect("write");
    let open_key = publisher(&[
        "build",
        "--source",
        &s(&src),
        "--key",
        &key,
        "--out",
        &s(&fx.dir.path().join("b")),
    ]);
    assert_eq!(open_key.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&open_key.stderr).contains("chmod 600"));

    // Usage errors exit 2.
    assert_eq!(publisher(&["publish"]).status.code(), Some(2));
}

#[test]
fn publisher_build_inspect_and_list() {
    let fx = Fixture::new();
    let src = fx.dir.path().join("src");
    let s = |p: &std::path::Path| p.display().to_string();
    assert!(
        publisher(&["generate", "--tenants", "15", "--out", &s(&src)])
            .status
            .success()
    );
    let new_key = fx.dir.path().join("new.key");
    let kg = publisher(&["keygen", "--out", &s(&new_key)]);
    assert!(kg.status.success());
    assert_eq!(
        std::fs::metadata(&new_key)
            .expect("key")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let out = fx.dir.path().join("b.bundle");
    let build = publisher(&[
        "build",
        "--source",
        &s(&src),
        "--key",
        &s(&new_key),
        "--out",
        &s(&out),
        "--version",
        "9",
    ]);
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let pubkey = format!("{}.pub", s(&new_key));
    let inspect = publisher(&["inspect", &s(&out), "--pubkey", &pubkey]);
    assert!(inspect.status.success());
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        text.contains("\"version\": 9") && text.contains("15 tenant config(s)"),
        "{text}"
    );
    let wrong = publisher(&[
        "inspect",
        &s(&out),
        "--pubkey",
        &format!("{}.pub", s(&fx.key_path)),
    ]);
    assert_eq!(wrong.status.code(), Some(1));

    let url = format!("file://{}", fx.store_dir().display());
    for _ in 0..2 {
        assert!(
            publisher(&[
                "publish",
                "--init",
                "--source",
                &s(&src),
                "--key",
                &s(&new_key),
                "--store",
                &url
            ])
            .status
            .success()
        );
    }
    let list = publisher(&["list", "--store", &url]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("snapshots/00000000000000000002.bundle") && text.contains("version 2"),
        "{text}"
    );
    let from_store = publisher(&[
        "inspect",
        "--store",
        &url,
        "--version",
        "1",
        "--pubkey",
        &pubkey,
    ]);
    assert!(from_store.status.success());
}

#[test]
fn concurrent_publishers_get_consecutive_versions() {
    let fx = Fixture::new();
    let (_, compiled) = fx.compile("c", 5);
    let versions: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    fx.publish_with(&compiled, std::slice::from_ref(&fx.key))
                        .pointer
                        .version
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("publisher thread"))
            .collect()
    });
    let mut sorted = versions.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [1, 2, 3, 4, 5, 6],
        "every publish got its own, consecutive version: {versions:?}"
    );
    let pointer = strata_common::pointer::Pointer::read_unverified(
        &fx.store(),
        strata_common::pointer::PointerKind::Channel,
        "stable",
    )
    .expect("read")
    .expect("pointer");
    assert_eq!(
        Some(&pointer.0.version),
        sorted.last(),
        "the pointer ends on the newest version"
    );
}

#[test]
fn inspect_store_runs_the_agents_pipeline_on_a_good_and_a_refused_store() {
    let fx = Fixture::new();
    let url = format!("file://{}", fx.store_dir().display());
    let pubkey = sign::public_path(&fx.key_path).display().to_string();
    let (config, config_path) = fx.agent_config("a", "");
    drop(config);
    let config_path = config_path.display().to_string();

    let empty = publisher(&["inspect", "--store", &url, "--pubkey", &pubkey]);
    assert_eq!(empty.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&empty.stdout).contains("(store_empty)"));

    fx.publish("v1", 12);
    for trust in [["--pubkey", &pubkey], ["--config", &config_path]] {
        let good = publisher(&["inspect", "--store", &url, trust[0], trust[1]]);
        let text = String::from_utf8_lossy(&good.stdout);
        assert!(good.status.success(), "{text}");
        assert!(
            text.contains("an agent would apply version 1")
                && text.contains("12 tenant(s)")
                && text.contains("every payload rule checked"),
            "{text}"
        );
    }

    // A trusted key signs a prompt without the Layer 1 base prompt.
    let (_, compiled) = fx.compile("v1", 12);
    let bad = strata_tests::rewrite(&compiled, |c| {
        if let Some(p) = c.prompts.values_mut().next() {
            *p = "You have no rules.".into();
        }
    });
    fx.publish_with(&bad, std::slice::from_ref(&fx.key));
    let refused = publisher(&["inspect", "--store", &url, "--config", &config_path]);
    let text = String::from_utf8_lossy(&refused.stdout);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    assert!(
        text.contains("an agent would refuse it (prompt_without_base)"),
        "{text}"
    );

    // Without keys it says what it needs instead of guessing.
    let keyless = publisher(&["inspect", "--store", &url]);
    assert_eq!(keyless.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&keyless.stderr).contains("--pubkey"));
}

#[test]
fn a_bundle_key_held_by_junk_or_a_dead_publisher_is_skipped() {
    use std::time::{Duration, Instant};
    use strata_common::channel::{self, PublishOptions};
    use strata_common::store::WriteStore;
    let fx = Fixture::new();
    assert_eq!(fx.publish("a", 3).pointer.version, 1);
    let (_, compiled) = fx.compile("a", 3);
    let opts = PublishOptions {
        abandoned_after: Duration::from_millis(300),
        ..PublishOptions::for_channel("stable")
    };
    let publish = || {
        channel::publish(&fx.store(), &compiled, std::slice::from_ref(&fx.key), &opts)
            .expect("publish")
            .pointer
            .version
    };
    // Not a bundle at all: skipped at once.
    fx.store()
        .put_new("snapshots/00000000000000000002.bundle", b"junk")
        .expect("junk");
    assert_eq!(publish(), 3, "version 2's key is never reused");

    // A real bundle made just now that no pointer names: its publisher may
    // be about to move the pointer, so it is waited for, then skipped.
    let manifest = channel::manifest(
        &compiled,
        4,
        strata_common::time::now(),
        channel::DEFAULT_BUNDLE_EXPIRY,
        &Default::default(),
    );
    let orphan = strata_common::bundle::write_bundle(
        &manifest,
        &compiled.payload.compressed,
        std::slice::from_ref(&fx.key),
    )
    .expect("bundle");
    fx.store()
        .put_new("snapshots/00000000000000000004.bundle", &orphan)
        .expect("orphan");
    let started = Instant::now();
    assert_eq!(publish(), 5);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn an_unsigned_pointer_or_a_junk_bundle_name_never_decides_the_next_version() {
    use strata_common::pointer::Pointer;
    use strata_common::store::WriteStore;
    let fx = Fixture::new();
    let first = fx.publish("a", 3);
    assert_eq!(first.pointer.version, 1);
    // Someone with write access but no key: a junk bundle at the largest
    // version, then an unsigned pointer claiming a huge one.
    fx.store()
        .put_new("snapshots/18446744073709551615.bundle", b"junk")
        .expect("junk");
    assert_eq!(
        fx.publish("a", 3).pointer.version,
        2,
        "a file name decides nothing"
    );
    let forged = Pointer {
        version: u64::MAX - 1,
        ..first.pointer.clone()
    };
    let stranger = strata_common::sign::SigningKey::from_bytes(&[9; 32]);
    let bytes = forged.sign(&[stranger]).expect("sign");
    std::fs::write(fx.store_dir().join("channels/stable.json"), &bytes).expect("forge");
    let before = tree_bytes(&fx.store_dir());
    let src = fx.dir.path().join("source-a");
    let out = publisher(&[
        "publish",
        "--init",
        "--source",
        &src.display().to_string(),
        "--key",
        &fx.key_path.display().to_string(),
        "--store",
        &format!("file://{}", fx.store_dir().display()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("channels/stable.json does not verify") && err.contains("--trusted-key"),
        "{err}"
    );
    assert_eq!(tree_bytes(&fx.store_dir()), before, "nothing written");
}

/// A publish by keys none of which signed the channel's pointer (an
/// operator's key passed as --key, with the publisher's public key as
/// --trusted-key as the old hint said) is refused, the store untouched:
/// every agent would refuse it. `--new-signer` is the deliberate way.
#[test]
fn a_publish_by_keys_that_never_signed_the_channel_is_refused() {
    let fx = Fixture::new();
    fx.publish("a", 3);
    let other = fx.dir.path().join("ops.key");
    strata_common::sign::generate_key(&other).expect("keygen");
    let src = fx.dir.path().join("source-a");
    let pubkey = strata_common::sign::public_path(&fx.key_path);
    let publish = |extra: &[&str]| {
        let mut args = vec![
            "publish".to_owned(),
            "--source".to_owned(),
            src.display().to_string(),
            "--key".to_owned(),
            other.display().to_string(),
            "--trusted-key".to_owned(),
            pubkey.display().to_string(),
            "--store".to_owned(),
            format!("file://{}", fx.store_dir().display()),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        publisher(&args)
    };
    let before = tree_bytes(&fx.store_dir());
    let out = publish(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("none of the signing keys") && err.contains("--new-signer"),
        "{err}"
    );
    assert_eq!(tree_bytes(&fx.store_dir()), before, "nothing written");
    // Nor may a rollback.
    let out = publisher(&[
        "rollback",
        "--to",
        "1",
        "--key",
        &other.display().to_string(),
        "--trusted-key",
        &pubkey.display().to_string(),
        "--store",
        &format!("file://{}", fx.store_dir().display()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("none of the signing keys"),
        "{out:?}"
    );
    assert_eq!(tree_bytes(&fx.store_dir()), before, "nothing written");
    let out = publish(&["--new-signer"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn signature_lifetimes_outside_a_minute_to_ten_years_are_usage_errors() {
    let fx = Fixture::new();
    fx.publish("a", 2);
    let before = tree_bytes(&fx.store_dir());
    let src = fx.dir.path().join("source-a");
    for lifetime in ["0s", "30s", "300000y"] {
        let out = publisher(&[
            "publish",
            "--init",
            "--source",
            &src.display().to_string(),
            "--key",
            &fx.key_path.display().to_string(),
            "--store",
            &format!("file://{}", fx.store_dir().display()),
            "--expires-in",
            lifetime,
        ]);
        assert_eq!(out.status.code(), Some(2), "{lifetime}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("outside 1m to 10y"),
            "{lifetime}"
        );
    }
    assert_eq!(tree_bytes(&fx.store_dir()), before, "nothing written");
}

/// Output piped into `head`: the reader goes away, the rest of the output
/// is dropped, and the exit status is still the command's own (0, or 1
/// for a refusal a `| grep -q` must not hide), never a panic.
#[test]
fn publisher_output_cut_short_by_its_reader_is_not_a_crash() {
    let fx = Fixture::new();
    fx.publish("v1", 3);
    fx.publish("v2", 3);
    let store = format!("file://{}", fx.store_dir().display());
    let other = fx.dir.path().join("other.key");
    sign::generate_key(&other).expect("keygen");
    let other_pub = sign::public_path(&other).display().to_string();
    for (args, code) in [
        (vec!["list", "--store", &store], 0),
        (vec!["diff", "--store", &store, "1", "2"], 0),
        (vec!["inspect", "--store", &store, "--version", "2"], 0),
        (
            vec!["inspect", "--store", &store, "--pubkey", &other_pub],
            1,
        ),
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(bin("strata-publisher"))
            .args(&args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run publisher");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    }
}

/// A publish to a store that is not there (an unmounted volume, a
/// mistyped path: every node would go `older_version` against a new store)
/// is refused unless `--init`; `--init` on a store that exists changes
/// nothing, so a script may always pass it on a first publish.
#[test]
fn a_publish_to_a_missing_store_is_refused_unless_init() {
    let fx = Fixture::new();
    let (src, _) = fx.compile("v1", 3);
    let store = fx.dir.path().join("new-store");
    let url = format!("file://{}", store.display());
    for args in [
        vec!["list", "--store", &url],
        vec!["gc", "--store", &url, "--keep", "1"],
    ] {
        let out = publisher(&args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: a missing store is not an empty one"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("does not exist"),
            "{args:?}"
        );
    }
    let publish = |extra: &[&str], store: &std::path::Path| {
        Command::new(bin("strata-publisher"))
            .args(["publish", "--source"])
            .arg(&src)
            .arg("--key")
            .arg(&fx.key_path)
            .arg("--store")
            .arg(format!("file://{}", store.display()))
            .args(extra)
            .output()
            .expect("run publisher")
    };
    // An unmounted volume, a mistyped path: refused, nothing made.
    let out = publish(&[], &store);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("there is no store here yet") && stderr.contains("--init"),
        "{stderr}"
    );
    assert!(!store.exists(), "nothing is created without --init");
    // An empty directory is no store either.
    std::fs::create_dir_all(&store).expect("mkdir");
    assert_eq!(publish(&[], &store).status.code(), Some(1));
    // A first publish, asked for.
    let out = publish(&["--init"], &store);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("is a new, empty store (--init)"),
        "{stderr}"
    );
    assert!(store.join("channels/stable.json").exists());
    // --init on a store that exists changes nothing: a routine publish.
    let (src2, _) = fx.compile("v2", 3);
    let out = Command::new(bin("strata-publisher"))
        .args(["publish", "--init", "--source"])
        .arg(&src2)
        .arg("--key")
        .arg(&fx.key_path)
        .arg("--store")
        .arg(format!("file://{}", store.display()))
        .output()
        .expect("run publisher");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("new, empty store"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("published version 2"));
}

/// A source's mistakes are placed as an editor would: a TOML syntax error
/// by line and column, a wrong type or unknown key in Layer 1 by its field.
#[test]
fn source_errors_name_the_line_or_the_field() {
    let fx = Fixture::new();
    let src = fx.dir.path().join("src");
    let s = src.display().to_string();
    assert!(
        publisher(&["generate", "--tenants", "2", "--out", &s])
            .status
            .success()
    );
    let validate = || {
        let out = publisher(&["validate", "--source", &s]);
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tenant = src.join(format!("tenants/{}.toml", generate::tenant_id(0)));
    let text = std::fs::read_to_string(&tenant).expect("tenant");
    std::fs::write(&tenant, text.replacen("name = ", "name == ", 1)).expect("write");
    let out = validate();
    assert!(
        out.contains("not valid TOML") && out.contains("(line 2, column 7)"),
        "{out}"
    );
    std::fs::write(&tenant, &text).expect("restore");

    let layer1 = src.join("layer1.toml");
    let original = std::fs::read_to_string(&layer1).expect("layer1");
    std::fs::write(
        &layer1,
        original.replace("max_prompt_chars = 8000", "max_prompt_chars = \"lots\""),
    )
    .expect("write");
    let out = validate();
    assert!(
        out.contains("layer1.toml: policy.max_prompt_chars: expected a whole number, found the string \"lots\""),
        "{out}"
    );
    std::fs::write(
        &layer1,
        original.replace(
            "max_prompt_chars = 8000",
            "max_prompt_chars = 8000\nmax_prompt_charz = 1",
        ),
    )
    .expect("write");
    let out = validate();
    assert!(
        out.contains("policy.max_prompt_charz: unknown field `max_prompt_charz`"),
        "{out}"
    );
}

/// `list` says which documents agents refuse as expired, and which expire
/// within a day, with what to do.
#[test]
fn list_flags_expired_and_soon_expiring_documents() {
    let fx = Fixture::new();
    let published = fx.publish("v1", 3);
    let store = format!("file://{}", fx.store_dir().display());
    let list = || {
        let out = publisher(&["list", "--store", &store]);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(!list().contains("refresh"), "{}", list());

    let mut pointer = published.pointer.clone();
    let soon = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    pointer.expires_at = strata_common::time::format(soon);
    let signed = pointer.sign(std::slice::from_ref(&fx.key)).expect("sign");
    std::fs::write(fx.store_dir().join("channels/stable.json"), signed).expect("write");
    assert!(
        list().contains("expires within a day: `strata-publisher refresh` it"),
        "{}",
        list()
    );

    pointer.expires_at = "2020-01-01T00:00:00Z".into();
    let signed = pointer.sign(std::slice::from_ref(&fx.key)).expect("sign");
    std::fs::write(fx.store_dir().join("channels/stable.json"), signed).expect("write");
    assert!(list().contains("EXPIRED: agents refuse it"), "{}", list());
}

/// `rollback --to N` of a bundle whose own signature expired publishes its
/// content signed again (agents accept it) and says so.
#[test]
fn rollback_to_an_expired_bundle_says_so_and_publishes_it_signed_anew() {
    use strata_common::store::WriteStore;
    let fx = Fixture::new();
    fx.publish("v1", 3);
    let (_, compiled) = fx.compile("old", 3);
    let month_ago = strata_common::time::now() - std::time::Duration::from_secs(30 * 24 * 3600);
    let manifest = strata_common::channel::manifest(
        &compiled,
        9,
        month_ago,
        std::time::Duration::from_secs(24 * 3600),
        &strata_common::bundle::Provenance::default(),
    );
    let bytes = strata_common::bundle::write_bundle(
        &manifest,
        &compiled.payload.compressed,
        std::slice::from_ref(&fx.key),
    )
    .expect("bundle");
    fx.store()
        .put_new(&strata_common::layout::bundle_key(9), &bytes)
        .expect("plant an expired bundle");
    let store = format!("file://{}", fx.store_dir().display());
    let key = fx.key_path.display().to_string();
    let out = publisher(&["rollback", "--store", &store, "--key", &key, "--to", "9"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("version 9's bundle expired") && stderr.contains("signed again"),
        "{stderr}"
    );
    let head = strata_common::pointer::Pointer::read_unverified(
        &fx.store(),
        strata_common::pointer::PointerKind::Channel,
        "stable",
    )
    .expect("read")
    .expect("pointer");
    let fresh =
        strata_common::bundle::peek_manifest(&fx.store(), &head.0.bundle).expect("manifest");
    assert!(
        strata_common::time::parse_exact(&fresh.expires_at)
            .is_ok_and(|t| t > strata_common::time::now())
    );
}

/// An old signed pointer put back with the newer bundles deleted (a writer
/// without keys can do both): `refresh` remembers the highest version it
/// refreshed in the host's state directory (here the default under
/// `$XDG_STATE_HOME`), outside the store, and refuses to make the old
/// pointer fresh again; without the record (`--no-state`) it would, and
/// the next publish would reuse version 2 with other bytes.
#[test]
fn refresh_refuses_an_old_pointer_put_back_after_the_bundles_were_deleted() {
    let fx = Fixture::new();
    fx.publish("v1", 3);
    let old_pointer =
        std::fs::read(fx.store_dir().join("channels/stable.json")).expect("pointer v1");
    fx.publish("v2", 3);
    let store = format!("file://{}", fx.store_dir().display());
    let key = fx.key_path.display().to_string();
    let state = fx.dir.path().join("xdg-state");
    let refresh = |extra: &[&str]| {
        Command::new(bin("strata-publisher"))
            .args(["refresh", "--store", &store, "--key", &key])
            .args(extra)
            .env("XDG_STATE_HOME", &state)
            .env_remove("STATE_DIRECTORY")
            .output()
            .expect("run publisher")
    };
    let out = refresh(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(state.join("strata").is_dir(), "the default state directory");
    // The attack: v2's bundle deleted, v1's pointer put back.
    std::fs::remove_file(fx.store_dir().join(strata_common::layout::bundle_key(2))).expect("rm");
    std::fs::write(fx.store_dir().join("channels/stable.json"), &old_pointer).expect("put back");
    let out = refresh(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("names version 1") && stderr.contains("refreshed version 2"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(fx.store_dir().join("channels/stable.json")).expect("pointer"),
        old_pointer,
        "nothing was written"
    );
    // Another spelling of the same store is the same store.
    for spelling in [
        format!("file://{}/", fx.store_dir().display()),
        format!("file://{}/./", fx.store_dir().display()),
    ] {
        let out = Command::new(bin("strata-publisher"))
            .args(["refresh", "--store", &spelling, "--key", &key])
            .env("XDG_STATE_HOME", &state)
            .env_remove("STATE_DIRECTORY")
            .output()
            .expect("run publisher");
        assert_eq!(out.status.code(), Some(1), "{spelling}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("refreshed version 2"),
            "{spelling}: {out:?}"
        );
    }
    // No state directory at all: refused, not re-signed with a warning.
    let out = Command::new(bin("strata-publisher"))
        .args(["refresh", "--store", &store, "--key", &key])
        .env_remove("HOME")
        .env_remove("XDG_STATE_HOME")
        .env_remove("STATE_DIRECTORY")
        .output()
        .expect("run publisher");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no state directory"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read(fx.store_dir().join("channels/stable.json")).expect("pointer"),
        old_pointer,
        "nothing was written"
    );
    // Without a record, as before: re-signed.
    let out = refresh(&["--no-state"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Names in the store come from whoever can write to it: `list` (and every
/// other output line) escapes what would start a line of its own in a CI
/// log or reorder what a reader sees.
#[test]
fn output_lines_escape_what_the_store_names_hold() {
    let fx = Fixture::new();
    fx.publish("v1", 3);
    let channels = fx.store_dir().join("channels");
    std::fs::copy(
        channels.join("stable.json"),
        channels.join("c\n::error::owned\u{202e}.json"),
    )
    .expect("plant");
    let out = publisher(&[
        "list",
        "--store",
        &format!("file://{}", fx.store_dir().display()),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.lines().any(|l| l.starts_with("::")), "{stdout}");
    assert!(!stdout.contains('\u{202e}'), "{stdout}");
    assert!(stdout.contains("\\u{a}::error::owned"), "{stdout}");
}

/// A `--source` that does not exist, or is not a config repository, is
/// named as such with what it should hold (it was a bare "No such file or
/// directory").
#[test]
fn a_wrong_source_directory_says_what_source_should_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, says) in [
        (dir.path().join("nosuch"), "no such directory"),
        (
            dir.path().to_owned(),
            "holds neither layer1.toml nor tenants/",
        ),
    ] {
        let out = publisher(&["validate", "--source", &path.display().to_string()]);
        assert_eq!(out.status.code(), Some(1));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(says) && text.contains("layer1.toml"),
            "{text}"
        );
    }
}

/// A publisher running under a strict umask (the refresh unit's is 0077)
/// still writes store objects agents running as another user can read:
/// with 0600 pointers every node went stale after the first refresh.
#[test]
fn store_objects_are_readable_whatever_the_writer_s_umask() {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fixture::new();
    let (src, _) = fx.compile("a", 2);
    let store = fx.dir.path().join("strict-store");
    let script = format!(
        "umask 077 && {bin} publish --init --source {src} --key {key} --store file://{store} && {bin} refresh --no-state --key {key} --store file://{store}",
        bin = bin("strata-publisher").display(),
        src = src.display(),
        key = fx.key_path.display(),
        store = store.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("run sh");
    assert!(out.status.success(), "{out:?}");
    for (path, want) in [
        (store.join("snapshots"), 0o755),
        (store.join("channels"), 0o755),
        (store.join("channels/stable.json"), 0o644),
        (store.join("snapshots/00000000000000000001.bundle"), 0o644),
    ] {
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, want, "{}: {mode:o}", path.display());
    }
}

/// `validate --store` before the first publish (CI set up first, as the
/// README orders it) passes on a valid source and says there is nothing to
/// check against yet, without making the store.
#[test]
fn validate_against_a_store_not_made_yet_passes_and_says_so() {
    let fx = Fixture::new();
    let (src, _) = fx.compile("a", 2);
    let store = fx.dir.path().join("not-yet");
    let out = publisher(&[
        "validate",
        "--source",
        &src.display().to_string(),
        "--store",
        &format!("file://{}", store.display()),
        "--trusted-key",
        &strata_common::sign::public_path(&fx.key_path)
            .display()
            .to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("does not exist yet"),
        "{out:?}"
    );
    assert!(!store.exists());
}
