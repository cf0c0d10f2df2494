//! Region operators, end to end with real processes: pins forward and back
//! (to a retained and to a fetched-again version), unpin, a local pin,
//! rollback, refresh, diff, gc and key rotation without a restart; and each
//! attack on them (a replayed pointer or pin, a pin signed by a publisher
//! key, below the operator threshold or by an unknown key, a pin for
//! another region or to a missing version, an expired pointer). Every
//! scenario runs twice: on a `file://` store and on the in-process S3
//! server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use strata_agent::client;
use strata_common::model::SnapshotVersion;
use strata_common::pointer::{Pointer, PointerKind};
use strata_common::sign::{self, SigningKey};
use strata_common::time;
use strata_tests::s3::{BUCKET, S3Server};
use strata_tests::{DEADLINE, Fixture, bin, change_one_tenant, wait_for};

const PREFIX: &str = "prod";

/// A store (a directory, or the S3 server), a publisher key, two operator
/// keys, and the agents started on it.
struct World {
    fx: Fixture,
    s3: Option<S3Server>,
    ops: PathBuf,
    ops2: PathBuf,
    agents: Vec<Proc>,
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl World {
    async fn new(s3: bool) -> Self {
        let fx = Fixture::new();
        let ops = fx.dir.path().join("ops.key");
        let ops2 = fx.dir.path().join("ops2.key");
        sign::generate_key(&ops).expect("operator key");
        sign::generate_key(&ops2).expect("operator key 2");
        let s3 = if s3 {
            Some(S3Server::start().await)
        } else {
            None
        };
        Self {
            fx,
            s3,
            ops,
            ops2,
            agents: Vec::new(),
        }
    }

    fn url(&self) -> String {
        match &self.s3 {
            Some(_) => format!("s3://{BUCKET}/{PREFIX}"),
            None => format!("file://{}", self.fx.store_dir().display()),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.s3.as_ref().map(S3Server::env).unwrap_or_default();
        // `refresh` keeps its record here, not in the user's home.
        env.push((
            "STATE_DIRECTORY",
            self.fx
                .dir
                .path()
                .join("refresh-state")
                .display()
                .to_string(),
        ));
        env
    }

    /// Writes a store object directly, as anyone with write access could.
    fn put_raw(&self, key: &str, bytes: &[u8]) {
        match &self.s3 {
            Some(s3) => s3.put_raw(&format!("{PREFIX}/{key}"), bytes),
            None => {
                let path = self.fx.store_dir().join(key);
                std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
                let tmp = path.with_extension("tmp-hostile");
                std::fs::write(&tmp, bytes).expect("write");
                std::fs::rename(&tmp, &path).expect("rename");
            }
        }
    }

    fn read_raw(&self, key: &str) -> Vec<u8> {
        let path = match &self.s3 {
            Some(s3) => s3.object_path(&format!("{PREFIX}/{key}")),
            None => self.fx.store_dir().join(key),
        };
        std::fs::read(path).expect("read store object")
    }

    fn exists(&self, key: &str) -> bool {
        match &self.s3 {
            Some(s3) => s3.object_path(&format!("{PREFIX}/{key}")).exists(),
            None => self.fx.store_dir().join(key).exists(),
        }
    }

    fn delete_raw(&self, key: &str) {
        match &self.s3 {
            Some(s3) => s3.delete_raw(&format!("{PREFIX}/{key}")),
            None => std::fs::remove_file(self.fx.store_dir().join(key)).expect("delete"),
        }
    }

    /// Runs the publisher with `args` (`--store` added), off the async threads.
    async fn run(&self, args: &[&str]) -> Output {
        let env = self.env();
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.push("--store".into());
        args.push(self.url());
        strata_tests::s3::run_publisher(env, args).await
    }

    /// Runs the publisher and requires success; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// Publishes source `tag` (generated with `tenants` tenants) signed by
    /// the publisher key.
    async fn publish(&self, tag: &str, tenants: usize) -> String {
        let (src, _) = self.fx.compile(tag, tenants);
        let key = self.fx.key_path.display().to_string();
        self.ok(&[
            "publish",
            "--init",
            "--source",
            &src.display().to_string(),
            "--key",
            &key,
        ])
        .await
    }

    fn key(&self) -> String {
        self.fx.key_path.display().to_string()
    }

    fn pubkey(path: &Path) -> String {
        sign::public_path(path).display().to_string()
    }

    /// Starts an agent process in `region` with `extra` config lines and
    /// `keys` trusted-key TOML (default: the publisher key and `ops`).
    fn agent(&mut self, name: &str, region: &str, extra: &str) -> PathBuf {
        let keys = format!(
            "[[trusted_keys]]\nrole = \"publisher\"\npath = \"{}\"\n[[trusted_keys]]\nrole = \"operator\"\npath = \"{}\"\n",
            Self::pubkey(&self.fx.key_path),
            Self::pubkey(&self.ops),
        );
        self.agent_with_keys(name, region, extra, &keys)
    }

    fn config_path(&self, name: &str) -> PathBuf {
        self.fx.dir.path().join(format!("{name}.toml"))
    }

    fn write_config(&self, name: &str, region: &str, extra: &str, keys: &str) -> PathBuf {
        let socket = self.fx.dir.path().join(format!("{name}.sock"));
        let config = self.config_path(name);
        let text = format!(
            "source = \"{url}\"\nregion = \"{region}\"\npoll_interval = \"200ms\"\ndata_dir = \"{data}\"\nsocket = \"{sock}\"\n{extra}\n{keys}",
            url = self.url(),
            data = self.fx.dir.path().join(format!("{name}-data")).display(),
            sock = socket.display(),
        );
        let tmp = config.with_extension("toml.tmp");
        std::fs::write(&tmp, text).expect("config");
        std::fs::rename(&tmp, &config).expect("config rename");
        socket
    }

    fn agent_with_keys(&mut self, name: &str, region: &str, extra: &str, keys: &str) -> PathBuf {
        let socket = self.write_config(name, region, extra, keys);
        let child = Command::new(bin("strata-agent"))
            .envs(self.env())
            .args(["run", "--config"])
            .arg(self.config_path(name))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agent");
        self.agents.push(Proc(child));
        socket
    }

    /// Stops every agent started so far.
    fn stop_agents(&mut self) {
        self.agents.clear();
    }

    /// Writes a pin for eu-west-1 naming `version`, signed by `keys` now,
    /// straight into the store (as a holder of those keys could).
    fn plant_pin(&self, version: u64, keys: &[SigningKey]) {
        self.put_raw(
            "pins/eu-west-1.json",
            &self.craft_pin("eu-west-1", version, keys, 0),
        );
    }

    /// `strata-publisher pin` of eu-west-1 to `version` with the key file `ops`.
    async fn pin_eu(&self, ops: &str, version: u64) -> String {
        let version = version.to_string();
        self.ok(&[
            "pin",
            "--key",
            ops,
            "--region",
            "eu-west-1",
            "--version",
            &version,
        ])
        .await
    }

    /// A pin document for `region` naming `version` (whatever the store
    /// holds), signed by `keys`, signed `age` seconds ago.
    fn craft_pin(&self, region: &str, version: u64, keys: &[SigningKey], age: u64) -> Vec<u8> {
        let at = time::now() - std::time::Duration::from_secs(age);
        self.craft_pin_at(region, version, keys, at, |p| p)
    }

    /// A pin signed at `at`, edited by `edit` before it is signed.
    fn craft_pin_at(
        &self,
        region: &str,
        version: u64,
        keys: &[SigningKey],
        at: std::time::SystemTime,
        edit: impl FnOnce(Pointer) -> Pointer,
    ) -> Vec<u8> {
        let key = SnapshotVersion(version).bundle_key();
        let (sha, size) = if self.exists(&key) {
            let b = self.read_raw(&key);
            (strata_common::canonical::sha256_hex(&b), b.len() as u64)
        } else {
            ("0".repeat(64), 1000)
        };
        let now = at;
        edit(Pointer {
            kind: PointerKind::Pin,
            name: region.to_owned(),
            version,
            bundle: key,
            bundle_sha256: sha,
            bundle_size: size,
            created_at: time::format(now),
            expires_at: time::format(now + std::time::Duration::from_secs(3600)),
            tenants: None,
        })
        .sign(keys)
        .expect("sign pin")
    }
}

fn load(path: &Path) -> SigningKey {
    sign::load_signing_key(path).expect("key")
}

async fn snapshot(socket: &Path) -> serde_json::Value {
    strata_tests::snapshot_at(socket).await
}

/// Waits until `/v1/snapshot` satisfies `pred`, showing the last answer
/// on failure.
async fn until(socket: &Path, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    let start = std::time::Instant::now();
    loop {
        let s = snapshot(socket).await;
        if pred(&s) {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for: {what}; last /v1/snapshot: {s}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn serves(socket: &Path, version: u64, pinned: bool) {
    until(
        socket,
        &format!("serving version {version}, pinned {pinned}"),
        |s| s["version"] == version && s["pinned"] == pinned && s["state"] == "fresh",
    )
    .await;
}

/// Waits until the agent reports `reason` while still serving `version`.
async fn refuses(socket: &Path, version: u64, reason: &str) {
    until(
        socket,
        &format!("refusing with {reason} while serving {version}"),
        |s| s["version"] == version && s["last_error_reason"] == reason,
    )
    .await;
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::World::new(false).await).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::World::new(true).await).await;
                }
            )*
        }
    };
}

on_both_stores!(
    pins_move_a_region_back_and_forth_and_unpin_returns_it,
    a_pin_to_a_version_no_longer_retained_is_fetched_again_and_marks_survive_restarts,
    the_high_water_mark_survives_a_restart_after_an_unpin,
    forged_misdirected_and_dangling_pins_are_refused_and_serving_goes_on,
    a_local_pin_holds_one_node,
    rollback_rolls_forward_and_diff_names_what_changed,
    an_expired_pointer_is_refused_until_refreshed_and_refresh_moves_the_expiry,
    gc_never_deletes_what_a_pointer_or_pin_names,
    keys_rotate_without_a_restart,
    a_retained_snapshot_no_trusted_key_vouches_for_is_not_served,
    a_pin_ends_only_with_a_signed_unpin,
);

async fn pins_move_a_region_back_and_forth_and_unpin_returns_it(mut w: World) {
    for tag in ["v1", "v2", "v3"] {
        w.publish(tag, 4).await;
    }
    let eu = w.agent("eu", "eu-west-1", "");
    let us = w.agent("us", "us-east-1", "");
    serves(&eu, 3, false).await;
    serves(&us, 3, false).await;
    let ops = w.ops.display().to_string();

    // Backwards to a retained version: only this region moves.
    let out = w
        .ok(&[
            "pin",
            "--key",
            &ops,
            "--region",
            "eu-west-1",
            "--version",
            "1",
        ])
        .await;
    assert!(out.contains("pinned region eu-west-1"), "{out}");
    serves(&eu, 1, true).await;
    let s = snapshot(&eu).await;
    assert_eq!(s["pin"]["version"], 1, "{s}");
    assert_eq!(s["pin"]["local"], false, "{s}");
    assert!(s["pin"]["expires_at"].is_string(), "{s}");
    let tenant = strata_common::generate::tenant_id(0);
    let answer = client::get(&eu, &format!("/v1/tenants/{tenant}"))
        .await
        .expect("lookup");
    assert_eq!(answer.header("x-strata-snapshot"), Some("1"));
    let old_pin = w.read_raw("pins/eu-west-1.json");
    // `inspect --config` follows the agent's region too.
    let config = w.config_path("eu").display().to_string();
    let out = w.ok(&["inspect", "--config", &config]).await;
    assert!(
        out.contains("would apply version 1 (region eu-west-1's pin)"),
        "{out}"
    );

    // A publish moves the other region only.
    w.publish("v4", 4).await;
    serves(&us, 4, false).await;
    serves(&eu, 1, true).await;

    // Forward, past the channel's head... to its head.
    w.pin_eu(&ops, 4).await;
    serves(&eu, 4, true).await;
    w.pin_eu(&ops, 2).await;
    serves(&eu, 2, true).await;

    // Unpin: back to the channel's head (still stored: no fetch needed).
    let out = w
        .ok(&["unpin", "--key", &ops, "--region", "eu-west-1"])
        .await;
    assert!(out.contains("unpinned region eu-west-1"), "{out}");
    serves(&eu, 4, false).await;
    assert_eq!(snapshot(&eu).await["pin"], serde_json::Value::Null);

    // A replayed older pin after the unpin moves nothing.
    w.put_raw("pins/eu-west-1.json", &old_pin);
    refuses(&eu, 4, "pin_replayed").await;
    until(&eu, "degraded", |s| s["state"] == "degraded").await;
    // Nor does a restart forget it.
    w.stop_agents();
    let eu = w.agent("eu", "eu-west-1", "");
    refuses(&eu, 4, "pin_replayed").await;
    // A new pin right after an unpin is taken.
    w.pin_eu(&ops, 3).await;
    serves(&eu, 3, true).await;
    w.ok(&["unpin", "--key", &ops, "--region", "eu-west-1"])
        .await;
    w.pin_eu(&ops, 1).await;
    serves(&eu, 1, true).await;
}

async fn the_high_water_mark_survives_a_restart_after_an_unpin(mut w: World) {
    let mut pointers = Vec::new();
    for tag in ["v1", "v2", "v3"] {
        w.publish(tag, 4).await;
        pointers.push(w.read_raw("channels/stable.json"));
    }
    // A new node that first sees version 1's pointer.
    w.put_raw("channels/stable.json", &pointers[0]);
    let eu = w.agent("eu", "eu-west-1", "");
    serves(&eu, 1, false).await;
    let ops = w.ops.display().to_string();
    w.pin_eu(&ops, 3).await;
    serves(&eu, 3, true).await;
    // The channel catches up with the pin, and the region is unpinned: the
    // node accepts 3 from the channel without a fetch.
    w.put_raw("channels/stable.json", &pointers[2]);
    w.ok(&["unpin", "--key", &ops, "--region", "eu-west-1"])
        .await;
    serves(&eu, 3, false).await;
    // A restart, and an older pointer put back: refused from the file's mark.
    w.stop_agents();
    w.put_raw("channels/stable.json", &pointers[1]);
    let eu = w.agent("eu", "eu-west-1", "");
    refuses(&eu, 3, "older_version").await;
}

async fn a_pin_to_a_version_no_longer_retained_is_fetched_again_and_marks_survive_restarts(
    mut w: World,
) {
    for tag in ["v1", "v2", "v3"] {
        w.publish(tag, 4).await;
    }
    let eu = w.agent("eu", "eu-west-1", "retain = 1");
    serves(&eu, 3, false).await;
    let ops = w.ops.display().to_string();
    w.pin_eu(&ops, 1).await;
    serves(&eu, 1, true).await;
    let retained = client::get(&eu, "/v1/snapshots").await.expect("snapshots");
    assert!(retained.text().contains('1'), "{}", retained.text());

    // Restart with the store's channel pointer replaced by an older one
    // (validly signed, version 2) and the region unpinned: the node
    // accepted 3 from the channel, so 2 is refused, from the file's marks
    // alone.
    w.stop_agents();
    let head = Pointer::parse_unverified(&w.read_raw("channels/stable.json")).expect("pointer");
    let v2 = w.read_raw(&SnapshotVersion(2).bundle_key());
    let older = Pointer {
        version: 2,
        bundle: SnapshotVersion(2).bundle_key(),
        bundle_sha256: strata_common::canonical::sha256_hex(&v2),
        bundle_size: v2.len() as u64,
        ..head
    }
    .sign(&[load(&w.fx.key_path)])
    .expect("sign");
    w.ok(&["unpin", "--key", &ops, "--region", "eu-west-1"])
        .await;
    w.put_raw("channels/stable.json", &older);
    let eu = w.agent("eu", "eu-west-1", "retain = 1");
    refuses(&eu, 1, "older_version").await;
}

/// Only a signed unpin ends a pin: a pin file deleted by a writer without
/// keys (or a mirror's passing 404) leaves the region on its pin, also
/// across a restart; an unpin signed by a key not trusted as operator is
/// refused, as is an old unpin put back over a newer pin.
async fn a_pin_ends_only_with_a_signed_unpin(mut w: World) {
    for tag in ["v1", "v2"] {
        w.publish(tag, 4).await;
    }
    let eu = w.agent("eu", "eu-west-1", "");
    serves(&eu, 2, false).await;
    let ops = w.ops.display().to_string();
    w.pin_eu(&ops, 1).await;
    serves(&eu, 1, true).await;

    // Deleted without a key: still pinned, check after check.
    w.delete_raw("pins/eu-west-1.json");
    let checked = snapshot(&eu).await["last_check"].clone();
    until(&eu, "two more checks", |s| s["last_check"] != checked).await;
    let checked = snapshot(&eu).await["last_check"].clone();
    until(&eu, "a check after that", |s| s["last_check"] != checked).await;
    serves(&eu, 1, true).await;
    assert_eq!(snapshot(&eu).await["pin"]["in_store"], false);
    w.stop_agents();
    let eu = w.agent("eu", "eu-west-1", "");
    serves(&eu, 1, true).await;

    // An unpin signed by the publisher key: refused, still pinned.
    let forged = Pointer::unpin("eu-west-1", strata_common::time::now())
        .sign(&[load(&w.fx.key_path)])
        .expect("sign");
    w.put_raw("pins/eu-west-1.json", &forged);
    refuses(&eu, 1, "pointer_signature").await;

    // The operator's unpin: back to the channel.
    let out = w
        .ok(&["unpin", "--key", &ops, "--region", "eu-west-1"])
        .await;
    assert!(out.contains("a fresh unpin replaced"), "{out}");
    serves(&eu, 2, false).await;
    let unpin = w.read_raw("pins/eu-west-1.json");

    // A newer pin, then the old unpin put back over it: a replay.
    w.pin_eu(&ops, 1).await;
    serves(&eu, 1, true).await;
    w.put_raw("pins/eu-west-1.json", &unpin);
    refuses(&eu, 1, "pin_replayed").await;
    // `unpin` writes a fresh one over the replay: back to the channel.
    w.ok(&["unpin", "--key", &ops, "--region", "eu-west-1"])
        .await;
    serves(&eu, 2, false).await;
}

async fn forged_misdirected_and_dangling_pins_are_refused_and_serving_goes_on(mut w: World) {
    w.publish("v1", 4).await;
    w.publish("v2", 4).await;
    let eu = w.agent("eu", "eu-west-1", "");
    serves(&eu, 2, false).await;
    let publisher = load(&w.fx.key_path);
    let ops = load(&w.ops);
    let stranger = SigningKey::from_bytes(&[7u8; 32]);

    // Signed by the publisher (CI) key: a stolen CI key cannot pin.
    w.plant_pin(1, std::slice::from_ref(&publisher));
    refuses(&eu, 2, "pointer_signature").await;
    // Signed by a key nobody trusts.
    w.plant_pin(1, std::slice::from_ref(&stranger));
    until(&eu, "unknown key refused", |s| {
        s["version"] == 2
            && s["last_error_reason"] == "pointer_signature"
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("0 valid"))
    })
    .await;
    // Pinned by the other region's operators: a pin for us-east-1 copied
    // over eu-west-1's.
    w.put_raw(
        "pins/eu-west-1.json",
        &w.craft_pin("us-east-1", 1, std::slice::from_ref(&ops), 0),
    );
    refuses(&eu, 2, "pointer_wrong_target").await;
    // A version the store does not have.
    w.plant_pin(99, std::slice::from_ref(&ops));
    refuses(&eu, 2, "bundle_missing").await;
    // Signed far in the future (it would outrank every later pin).
    let future = time::now() + std::time::Duration::from_secs(3600 * 24 * 365);
    w.put_raw(
        "pins/eu-west-1.json",
        &w.craft_pin_at("eu-west-1", 1, std::slice::from_ref(&ops), future, |p| p),
    );
    refuses(&eu, 2, "signed_in_future").await;
    // Naming a file outside the store.
    w.put_raw(
        "pins/eu-west-1.json",
        &w.craft_pin_at(
            "eu-west-1",
            1,
            std::slice::from_ref(&ops),
            time::now(),
            |p| Pointer {
                bundle: "../../etc/passwd".into(),
                ..p
            },
        ),
    );
    refuses(&eu, 2, "pointer_malformed").await;
    // A bundle that does not verify (altered after upload).
    let mut altered = w.read_raw(&SnapshotVersion(1).bundle_key());
    let last = altered.len() - 1;
    altered[last] ^= 1;
    w.put_raw(&SnapshotVersion(3).bundle_key(), &altered);
    w.plant_pin(3, std::slice::from_ref(&ops));
    until(&eu, "an altered pinned bundle refused", |s| {
        s["version"] == 2
            && s["state"] == "degraded"
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("00000000000000000003.bundle"))
    })
    .await;
    w.delete_raw(&SnapshotVersion(3).bundle_key());
    // A good pin still works after all that.
    w.plant_pin(1, std::slice::from_ref(&ops));
    serves(&eu, 1, true).await;

    // The pin command refuses a key that signs channel pointers.
    let ci = w.key();
    let out = w
        .run(&[
            "pin",
            "--key",
            &ci,
            "--region",
            "eu-west-1",
            "--version",
            "1",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("it is a publisher key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Below the operator threshold: a node that needs two operators.
    let keys = format!(
        "[[trusted_keys]]\nrole = \"publisher\"\npath = \"{}\"\n[[trusted_keys]]\nrole = \"operator\"\npath = \"{}\"\n[[trusted_keys]]\nrole = \"operator\"\npath = \"{}\"\n[thresholds]\noperator = 2\n",
        World::pubkey(&w.fx.key_path),
        World::pubkey(&w.ops),
        World::pubkey(&w.ops2),
    );
    let two = w.agent_with_keys("two", "eu-west-1", "", &keys);
    until(&two, "one operator is not enough", |s| {
        s["last_error_reason"] == "pointer_signature" && s["state"] == "starting"
    })
    .await;
    let ops2 = load(&w.ops2);
    w.put_raw(
        "pins/eu-west-1.json",
        &w.craft_pin("eu-west-1", 1, &[ops, ops2], 0),
    );
    serves(&two, 1, true).await;
    // The pin command signs with every --key.
    let (a, b) = (w.ops.display().to_string(), w.ops2.display().to_string());
    w.ok(&[
        "pin",
        "--key",
        &a,
        "--key",
        &b,
        "--region",
        "eu-west-1",
        "--version",
        "2",
    ])
    .await;
    serves(&two, 2, true).await;
}

async fn a_local_pin_holds_one_node(mut w: World) {
    for tag in ["v1", "v2"] {
        w.publish(tag, 4).await;
    }
    let pin_file = w.fx.dir.path().join("hold");
    let eu = w.agent(
        "eu",
        "eu-west-1",
        &format!("pin_file = \"{}\"", pin_file.display()),
    );
    let other = w.agent("other", "eu-west-1", "");
    serves(&eu, 2, false).await;
    std::fs::write(&pin_file, "1\n").expect("pin file");
    serves(&eu, 1, true).await;
    let s = snapshot(&eu).await;
    assert_eq!(s["pin"]["local"], true, "{s}");
    assert_eq!(s["pin"]["version"], 1, "{s}");
    // `inspect --config` follows the node's local pin too.
    let config = w.config_path("eu").display().to_string();
    let out = w.ok(&["inspect", "--config", &config]).await;
    assert!(
        out.contains("would apply version 1 (this node's pin_file)"),
        "{out}"
    );
    // The next publish passes this node by, not the other.
    w.publish("v3", 4).await;
    serves(&other, 3, false).await;
    serves(&eu, 1, true).await;
    // Nonsense in the file is reported, and the node holds.
    std::fs::write(&pin_file, "latest\n").expect("pin file");
    refuses(&eu, 1, "local_pin").await;
    std::fs::remove_file(&pin_file).expect("remove pin file");
    serves(&eu, 3, false).await;
}

async fn rollback_rolls_forward_and_diff_names_what_changed(mut w: World) {
    w.publish("v1", 4).await;
    let (src, _) = w.fx.compile("v1", 4);
    change_one_tenant(&src, 2);
    w.publish("v1", 4).await;
    let eu = w.agent("eu", "eu-west-1", "");
    serves(&eu, 2, false).await;

    let text = w.ok(&["diff", "1", "2"]).await;
    let mut files: Vec<_> = std::fs::read_dir(src.join("tenants"))
        .expect("tenants")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let changed = files[2]
        .file_stem()
        .expect("stem")
        .to_string_lossy()
        .into_owned();
    assert!(text.contains("0 added, 0 removed, 1 changed"), "{text}");
    assert!(text.contains(&format!("~ {changed}: version")), "{text}");
    // With the old and the new value (change_one_tenant sets 9.9.2).
    assert!(
        text.contains("    version: \"") && text.contains("→ \"9.9.2\""),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&w.ok(&["diff", "1", "2", "--json"]).await).expect("json");
    assert_eq!(json["changed"][0]["tenant_id"], changed.as_str(), "{json}");
    assert_eq!(
        json["changed"][0]["fields"],
        serde_json::json!(["version"]),
        "{json}"
    );
    assert_eq!(
        json["changed"][0]["values"][0]["new"], "\"9.9.2\"",
        "{json}"
    );

    let key = w.key();
    let out = w.ok(&["rollback", "--key", &key, "--to", "1"]).await;
    assert!(out.contains("as version 3"), "{out}");
    serves(&eu, 3, false).await;
    let same = w.ok(&["diff", "1", "3", "--json"]).await;
    let same: serde_json::Value = serde_json::from_str(&same).expect("json");
    assert_eq!(same["changed"], serde_json::json!([]), "{same}");
    assert_eq!(same["added"], serde_json::json!([]), "{same}");

    // The source still holds what was rolled back: the next routine
    // publish would undo the rollback, so it is refused, naming the tenant
    // (validate --store says so first).
    let src_arg = src.display().to_string();
    let pubkey = World::pubkey(&w.fx.key_path);
    for command in [
        vec!["validate", "--source", &src_arg, "--trusted-key", &pubkey],
        vec!["publish", "--source", &src_arg, "--key", &key],
    ] {
        let out = w.run(&command).await;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(
            text.contains(&format!("tenant {changed}: as in version 2")),
            "{text}"
        );
        assert!(text.contains("--allow-rollforward"), "{text}");
    }
    serves(&eu, 3, false).await;
    // Meant: allowed, and the next publish is routine again.
    let out = w
        .ok(&[
            "publish",
            "--source",
            &src_arg,
            "--key",
            &key,
            "--allow-rollforward",
        ])
        .await;
    assert!(out.contains("published version 4"), "{out}");
    serves(&eu, 4, false).await;
    change_one_tenant(&src, 3);
    w.ok(&["publish", "--source", &src_arg, "--key", &key])
        .await;
    serves(&eu, 5, false).await;
    // Versions start at 1.
    let out = w.run(&["rollback", "--key", &key, "--to", "0"]).await;
    assert_eq!(out.status.code(), Some(2));
    // A version that is not there.
    let out = w.run(&["rollback", "--key", &key, "--to", "42"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("00000000000000000042.bundle is not in the store"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn an_expired_pointer_is_refused_until_refreshed_and_refresh_moves_the_expiry(mut w: World) {
    w.publish("v1", 4).await;
    // The pointer as it would be after its 14 days: re-signed with an
    // expiry in the past.
    let pointer = Pointer::parse_unverified(&w.read_raw("channels/stable.json")).expect("ptr");
    let past = time::now() - std::time::Duration::from_secs(60);
    let expired = Pointer {
        created_at: time::format(past - std::time::Duration::from_secs(60)),
        expires_at: time::format(past),
        ..pointer
    }
    .sign(&[load(&w.fx.key_path)])
    .expect("sign");
    w.put_raw("channels/stable.json", &expired);
    let fresh = w.agent("fresh", "eu-west-1", "");
    until(&fresh, "a fresh agent refuses an expired pointer", |s| {
        s["last_error_reason"] == "pointer_expired" && s["state"] == "starting"
    })
    .await;
    let ready = client::get(&fresh, "/readyz").await.expect("readyz");
    assert_eq!(ready.status, 503);

    let key = w.key();
    let out = w
        .ok(&["refresh", "--key", &key, "--expires-in", "2h"])
        .await;
    assert!(out.contains("refreshed"), "{out}");
    serves(&fresh, 1, false).await;
    let first = snapshot(&fresh).await["expires_at"].clone();
    // A refresh while serving: the same version, a new expiry.
    w.ok(&["refresh", "--key", &key, "--expires-in", "3h"])
        .await;
    until(&fresh, "the new expiry", |s| {
        s["version"] == 1 && s["expires_at"] != first && s["state"] == "fresh"
    })
    .await;

    // An older pointer put back is not made fresh again.
    let v1_pointer = w.read_raw("channels/stable.json");
    w.publish("v2", 4).await;
    serves(&fresh, 2, false).await;
    w.put_raw("channels/stable.json", &v1_pointer);
    let out = w.run(&["refresh", "--key", &key]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("may be an old one put back"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.ok(&["refresh", "--key", &key, "--force"]).await;
    refuses(&fresh, 2, "older_version").await;
    let expired = Pointer {
        created_at: time::format(past - std::time::Duration::from_secs(60)),
        expires_at: time::format(past),
        ..Pointer::parse_unverified(&w.read_raw("channels/stable.json")).expect("ptr")
    };
    let expired = Pointer {
        version: 2,
        bundle: SnapshotVersion(2).bundle_key(),
        bundle_sha256: strata_common::canonical::sha256_hex(
            &w.read_raw(&SnapshotVersion(2).bundle_key()),
        ),
        bundle_size: w.read_raw(&SnapshotVersion(2).bundle_key()).len() as u64,
        ..expired
    }
    .sign(&[load(&w.fx.key_path)])
    .expect("sign");

    // Expired while serving: keeps serving, stale.
    w.put_raw("channels/stable.json", &expired);
    until(&fresh, "stale but serving", |s| {
        s["version"] == 2 && s["state"] == "stale" && s["last_error_reason"] == "pointer_expired"
    })
    .await;
    let metrics = client::get(&fresh, "/metrics").await.expect("metrics");
    assert!(
        metrics.text().contains("reason=\"pointer_expired\""),
        "{}",
        metrics.text()
    );
}

async fn gc_never_deletes_what_a_pointer_or_pin_names(w: World) {
    for tag in ["v1", "v2", "v3", "v4", "v5"] {
        w.publish(tag, 3).await;
    }
    let ops = w.ops.display().to_string();
    w.pin_eu(&ops, 1).await;
    let dry = w.ok(&["gc", "--keep", "2", "--dry-run"]).await;
    assert!(dry.contains("would delete        2"), "{dry}");
    assert!(dry.contains("would delete        3"), "{dry}");
    assert!(dry.contains("named by pins/eu-west-1.json"), "{dry}");
    assert!(
        w.exists(&SnapshotVersion(2).bundle_key()),
        "dry run deleted"
    );
    let out = w.ok(&["gc", "--keep", "2"]).await;
    assert!(out.contains("2 bundle(s) deleted"), "{out}");
    for (v, kept) in [(1, true), (2, false), (3, false), (4, true), (5, true)] {
        assert_eq!(
            w.exists(&SnapshotVersion(v).bundle_key()),
            kept,
            "version {v}: {out}"
        );
    }
    // keep 0 still keeps what is named.
    w.ok(&["gc", "--keep", "0"]).await;
    assert!(w.exists(&SnapshotVersion(1).bundle_key()));
    assert!(w.exists(&SnapshotVersion(5).bundle_key()));
    assert!(!w.exists(&SnapshotVersion(4).bundle_key()));
}

async fn keys_rotate_without_a_restart(mut w: World) {
    w.publish("v1", 4).await;
    let eu = w.agent("eu", "eu-west-1", "");
    serves(&eu, 1, false).await;
    let old = w.fx.key_path.clone();
    let new = w.fx.dir.path().join("ci2.key");
    sign::generate_key(&new).expect("new key");
    let both = format!(
        "[[trusted_keys]]\nrole = \"publisher\"\npath = \"{}\"\n[[trusted_keys]]\nrole = \"publisher\"\npath = \"{}\"\n[[trusted_keys]]\nrole = \"operator\"\npath = \"{}\"\n",
        World::pubkey(&old),
        World::pubkey(&new),
        World::pubkey(&w.ops),
    );
    let only_new = format!(
        "[[trusted_keys]]\nrole = \"publisher\"\npath = \"{}\"\n[[trusted_keys]]\nrole = \"operator\"\npath = \"{}\"\n",
        World::pubkey(&new),
        World::pubkey(&w.ops),
    );
    // 1. Agents learn the new key, and say so (the step's checkpoint).
    w.write_config("eu", "eu-west-1", "", &both);
    let new_id = format!(
        "publisher:{}",
        sign::KeyId::of(&sign::load_signing_key(&new).expect("key").verifying_key())
    );
    until(&eu, "the new key listed as trusted", |s| {
        s["trusted_keys"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|id| id.as_str() == Some(new_id.as_str())))
    })
    .await;
    // 2. Publish signed by both.
    let (src, _) = w.fx.compile("v2", 4);
    let (o, n) = (old.display().to_string(), new.display().to_string());
    let src = src.display().to_string();
    w.ok(&[
        "publish", "--init", "--source", &src, "--key", &o, "--key", &n,
    ])
    .await;
    serves(&eu, 2, false).await;
    // Every node can say it serves what both keys signed: the rotation's
    // checkpoint.
    until(&eu, "both signers shown", |s| {
        s["signed_by"].as_array().is_some_and(|ids| ids.len() == 2)
    })
    .await;
    // A refresh holding one key would drop the other's signature: refused.
    let dropped = w.run(&["refresh", "--key", &n]).await;
    assert_eq!(dropped.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&dropped.stderr).contains("--drop-signers"),
        "{}",
        String::from_utf8_lossy(&dropped.stderr)
    );
    w.ok(&["refresh", "--key", &o, "--key", &n]).await;
    // 3. Retire the old key: what is served was signed by both, so it stays.
    w.write_config("eu", "eu-west-1", "", &only_new);
    // Signed by the old key alone: refused now.
    w.publish("v3", 4).await;
    refuses(&eu, 2, "pointer_signature").await;
    let old_pub = World::pubkey(&old);
    w.ok(&[
        "publish",
        "--init",
        "--source",
        &src,
        "--key",
        &n,
        "--new-signer",
        "--trusted-key",
        &old_pub,
    ])
    .await;
    serves(&eu, 4, false).await;

    // Revocation: a node serving what only the old key signed stops
    // serving it at once when the key is removed.
    let r = w.agent_with_keys("r", "eu-west-1", "", &both);
    serves(&r, 4, false).await;
    let new_pub = World::pubkey(&new);
    w.ok(&[
        "publish",
        "--init",
        "--source",
        &src,
        "--key",
        &o,
        "--new-signer",
        "--trusted-key",
        &new_pub,
    ])
    .await;
    serves(&r, 5, false).await;
    w.write_config("r", "eu-west-1", "", &only_new);
    wait_for("the revoked snapshot is no longer served", || async {
        client::get(&r, "/readyz")
            .await
            .is_ok_and(|a| a.status == 503)
    })
    .await;
    w.ok(&[
        "publish",
        "--init",
        "--source",
        &src,
        "--key",
        &n,
        "--new-signer",
        "--trusted-key",
        &old_pub,
    ])
    .await;
    serves(&r, 6, false).await;

    // Deleting the only operator key's file revokes it: its pins are refused.
    std::fs::remove_file(sign::public_path(&w.ops)).expect("delete operator key");
    let ops = w.ops.display().to_string();
    w.pin_eu(&ops, 2).await;
    refuses(&eu, 6, "pointer_signature").await;
    until(&eu, "the gone key file named", |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("trusted key file(s) gone") && e.contains(".pub"))
            && s["config_problem"]
                .as_str()
                .is_some_and(|p| p.contains("would not start with this file"))
    })
    .await;
}

/// A key's entry removed stops it vouching for what the node stores too:
/// a retained snapshot only that key signed answers `?snapshot=N` with
/// 410 `snapshot_untrusted` and leaves `/v1/snapshots`, also after a
/// restart (an outside attack found it served on every endpoint).
async fn a_retained_snapshot_no_trusted_key_vouches_for_is_not_served(mut w: World) {
    let old = w.fx.key_path.clone();
    let new = w.fx.dir.path().join("ci2.key");
    sign::generate_key(&new).expect("new key");
    let keys = |publishers: &[&Path]| {
        let mut text = String::new();
        for p in publishers {
            text.push_str(&format!(
                "[[trusted_keys]]\nrole = \"publisher\"\npath = \"{}\"\n",
                World::pubkey(p)
            ));
        }
        text + &format!(
            "[[trusted_keys]]\nrole = \"operator\"\npath = \"{}\"\n",
            World::pubkey(&w.ops)
        )
    };
    let both = keys(&[&old, &new]);
    let only_new = keys(&[&new]);
    w.publish("v1", 4).await;
    let a = w.agent_with_keys("a", "eu-west-1", "", &both);
    serves(&a, 1, false).await;
    let (src, _) = w.fx.compile("v2", 4);
    let src = src.display().to_string();
    let old_pub = World::pubkey(&old);
    w.ok(&[
        "publish",
        "--init",
        "--source",
        &src,
        "--key",
        &new.display().to_string(),
        "--new-signer",
        "--trusted-key",
        &old_pub,
    ])
    .await;
    serves(&a, 2, false).await;
    let status = |socket: PathBuf, path: &'static str| async move {
        client::get(&socket, path).await.expect("answer")
    };
    assert_eq!(status(a.clone(), "/v1/layer1?snapshot=1").await.status, 200);

    w.write_config("a", "eu-west-1", "", &only_new);
    for round in ["live", "after a restart"] {
        wait_for("snapshot 1 no longer served", || async {
            client::get(&a, "/v1/layer1?snapshot=1")
                .await
                .is_ok_and(|r| r.status == 410 && r.json()["error"]["code"] == "snapshot_untrusted")
        })
        .await;
        let list = status(a.clone(), "/v1/snapshots").await.json();
        let versions: Vec<u64> = list["snapshots"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|s| s["version"].as_u64())
            .collect();
        assert_eq!(versions, [2], "{round}: {list}");
        assert_eq!(status(a.clone(), "/v1/layer1").await.status, 200, "{round}");
        if round == "live" {
            w.stop_agents();
            let a2 = w.agent_with_keys("a", "eu-west-1", "", &only_new);
            serves(&a2, 2, false).await;
        }
    }
}
