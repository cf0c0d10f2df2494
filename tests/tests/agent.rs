//! The agent end to end, in-process: real store, real redb file, real socket.

use strata_common::canonical::sha256_hex;
use strata_common::model::SnapshotVersion;
use strata_common::pointer::{Pointer, PointerKind};
use strata_common::sign::SigningKey;
use strata_common::store::WriteStore;
use strata_common::{bundle, channel, generate, time};
use strata_tests::{Agent, Fixture, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_every_endpoint_from_a_published_snapshot() {
    let fx = Fixture::new();
    let agent = fx.start_agent("a", "");
    // Before anything is published: alive, not ready, lookups 503.
    agent.wait_until("socket", "/healthz", |_| true).await;
    assert_eq!(agent.get("/readyz").await.status, 503);
    let early = agent.get("/v1/tenants/acme").await;
    assert_eq!(early.status, 503);
    assert_eq!(early.json()["error"]["code"], "not_ready");

    let published = fx.publish("v1", 30);
    agent.serves(1).await;
    assert_eq!(agent.get("/readyz").await.status, 200);
    assert_eq!(agent.get("/healthz").await.status, 200);

    let id = generate::tenant_id(4);
    let cfg = agent.get(&format!("/v1/tenants/{id}")).await;
    assert_eq!(cfg.status, 200);
    assert_eq!(cfg.header("content-type"), Some("application/json"));
    assert_eq!(cfg.header("x-strata-snapshot"), Some("1"));
    let j = cfg.json();
    assert_eq!(j["tenant_id"], id.as_str());
    let etag = cfg.header("etag").expect("etag").to_owned();
    // Served exactly as the publisher wrote it: no re-serialisation.
    let bundle_bytes =
        std::fs::read(fx.store_dir().join(&published.pointer.bundle)).expect("bundle");
    let verified = bundle::verify(
        std::io::Cursor::new(bundle_bytes),
        bundle::SignatureCheck::SkipForInspection,
        &bundle::Limits::default(),
    )
    .expect("bundle");
    let contents =
        bundle::Contents::collect(verified.records().expect("records")).expect("contents");
    assert_eq!(&cfg.body[..], &contents.configs[&id][..]);
    assert_eq!(
        etag,
        format!("\"{}\"", j["config_hash"].as_str().expect("hash"))
    );
    // Defaults merged: every section complete, nothing null.
    for section in [
        "agent",
        "model",
        "generation",
        "retrieval",
        "branding",
        "limits",
    ] {
        assert!(j[section].is_object(), "{section}");
    }
    assert!(j["generation"]["max_tokens"].is_u64());
    assert!(!cfg.text().contains("null"));

    let not_modified = strata_agent::client::Client::connect(&agent.socket)
        .await
        .expect("connect")
        .get_with(&format!("/v1/tenants/{id}"), &[("if-none-match", &etag)])
        .await
        .expect("get");
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());

    let prompt = agent.get(&format!("/v1/tenants/{id}/prompt")).await;
    assert_eq!(prompt.status, 200);
    assert_eq!(
        prompt.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(
        prompt.text().starts_with("You are a voice receptionist"),
        "Layer 1 first"
    );
    assert!(
        prompt.text().contains("\n\n---\n\nYou are "),
        "then the tenant's rendered prompt"
    );

    let number = generate::phone_number(4, 0);
    let route = agent.get(&format!("/v1/routes/{number}")).await;
    assert_eq!(route.status, 200);
    assert_eq!(route.json(), serde_json::json!({ "tenant_id": id }));
    let encoded = agent
        .get(&format!("/v1/routes/{}", number.replace('+', "%2B")))
        .await;
    assert_eq!(encoded.json(), route.json());

    let unknown = agent.get("/v1/routes/+19999999999").await;
    assert_eq!(unknown.status, 404, "there is no default tenant");
    assert_eq!(unknown.json()["error"]["code"], "unknown_number");
    assert_eq!(agent.get("/v1/tenants/no-such-tenant").await.status, 404);
    assert_eq!(agent.get("/v1/tenants/Bad_Id").await.status, 400);
    assert_eq!(agent.get("/v1/routes/12345").await.status, 400);

    let layer1 = agent.get("/v1/layer1").await;
    assert_eq!(layer1.status, 200);
    assert_eq!(layer1.json()["version"], "2026.11.1");

    let snap = agent.get("/v1/snapshot").await.json();
    assert_eq!(snap["version"], 1);
    assert_eq!(snap["state"], "fresh");
    assert_eq!(snap["tenant_count"], 30);
    assert_eq!(snap["pinned"], false);
    assert!(
        snap["bundle_sha256"]
            .as_str()
            .is_some_and(|s| s.len() == 64)
    );
    for field in [
        "created_at",
        "expires_at",
        "fetched_at",
        "last_check",
        "source",
        "region",
    ] {
        assert!(snap[field].is_string(), "{field} in {snap}");
    }
    assert_eq!(agent.get("/v1/snapshots").await.json()["current"], 1);
    assert_eq!(agent.get("/v1/tenants/x?snapshot=99").await.status, 410);
    let metrics = agent.get("/metrics").await.text();
    assert!(metrics.contains("strata_snapshot_version 1"), "{metrics}");
    assert!(
        metrics.contains("strata_lookups_total{endpoint=\"snapshots\",status=\"200\"} 1"),
        "{metrics}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_is_served_while_the_old_one_stays_addressable() {
    let fx = Fixture::new();
    fx.publish("v1", 20);
    let agent = fx.start_agent("a", "retain = 2\nretain_for = \"0s\"");
    agent.serves(1).await;
    let id = generate::tenant_id(1);
    let v1 = agent.get(&format!("/v1/tenants/{id}/prompt")).await.text();

    // v2 changes Layer 1's base prompt; the tenant's prompt changes with it.
    let (dir, _) = fx.compile("v2", 20);
    let layer1 = std::fs::read_to_string(dir.join("layer1.toml")).expect("layer1");
    std::fs::write(
        dir.join("layer1.toml"),
        layer1.replace(
            "You are a voice receptionist",
            "You are a phone receptionist",
        ),
    )
    .expect("edit");
    let (_, compiled) = fx.compile("v2", 20);
    fx.publish_with(&compiled, std::slice::from_ref(&fx.key));
    agent.serves(2).await;

    let v2 = agent.get(&format!("/v1/tenants/{id}/prompt")).await;
    assert_eq!(v2.header("x-strata-snapshot"), Some("2"));
    assert!(v2.text().starts_with("You are a phone receptionist"));
    let pinned = agent
        .get(&format!("/v1/tenants/{id}/prompt?snapshot=1"))
        .await;
    assert_eq!(pinned.header("x-strata-snapshot"), Some("1"));
    assert_eq!(pinned.text(), v1, "session-level version locking");

    fx.publish("v1", 20);
    agent.serves(3).await;
    assert_eq!(
        agent
            .get(&format!("/v1/tenants/{id}?snapshot=1"))
            .await
            .status,
        410,
        "retain = 2, retain_for = 0s"
    );
    assert_eq!(
        agent
            .get(&format!("/v1/tenants/{id}?snapshot=2"))
            .await
            .status,
        200
    );
    agent.stop().await;
}

/// The value of the counter `name` in `/metrics`.
async fn counter(agent: &Agent, name: &str) -> u64 {
    let text = agent.get("/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_watcher_applies_a_publish_and_an_idle_agent_stays_idle() {
    let fx = Fixture::new();
    fx.publish("v1", 10);
    // An hour between polls: only the watcher can pick up v2.
    let agent = fx.start_agent("a", "poll_interval = \"1h\"");
    agent.serves(1).await;
    fx.publish("v2", 10);
    agent.serves(2).await;

    // With nothing published, the agent must not keep checking: its own
    // reads of the pointer must not wake the watcher (a loop that once
    // burned most of a core on every idle node).
    let before = counter(&agent, "strata_checks_total").await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await; // a window to observe, not a wait
    let after = counter(&agent, "strata_checks_total").await;
    assert!(
        after <= before + 1,
        "{} checks in one idle second",
        after - before
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_tenant_change_decodes_only_the_frame_that_holds_it() {
    let fx = Fixture::new();
    let (source, compiled) = fx.compile("v1", 300);
    fx.publish_with(&compiled, std::slice::from_ref(&fx.key));
    let agent = fx.start_agent("a", "");
    agent.serves(1).await;
    let decoded = "strata_frames_total{result=\"decoded\"}";
    let skipped = "strata_frames_total{result=\"skipped\"}";
    let frames = counter(&agent, decoded).await;
    assert!(frames >= 3, "300 tenants fill several frames, not {frames}");
    assert_eq!(
        counter(&agent, skipped).await,
        0,
        "a first apply decodes all"
    );

    // An operator's edit: one tenant's version changes.
    let (changed, same) = (generate::tenant_id(150), generate::tenant_id(3));
    let file = source.join("tenants").join(format!("{changed}.toml"));
    let text = std::fs::read_to_string(&file).expect("tenant file");
    let edited: String = text
        .lines()
        .map(|l| {
            if l.starts_with("version = ") {
                "version = \"9.9.9\"\n".to_owned()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&file, edited).expect("edit");
    let (_, compiled) = fx.compile("v1", 300);
    fx.publish_with(&compiled, std::slice::from_ref(&fx.key));
    agent.serves(2).await;

    assert_eq!(counter(&agent, decoded).await, frames + 1);
    assert_eq!(counter(&agent, skipped).await, frames - 1);
    let now = agent.get(&format!("/v1/tenants/{changed}")).await;
    assert_eq!(now.json()["version"], "9.9.9");
    let before = agent
        .get(&format!("/v1/tenants/{changed}?snapshot=1"))
        .await;
    assert_ne!(before.json()["version"], "9.9.9");
    assert_ne!(now.header("etag"), before.header("etag"));
    // Tenants in skipped frames serve the bodies v1 stored, unchanged.
    for path in [
        format!("/v1/tenants/{same}"),
        format!("/v1/tenants/{same}/prompt"),
    ] {
        let v2 = agent.get(&path).await;
        let v1 = agent.get(&format!("{path}?snapshot=1")).await;
        assert_eq!(v2.status, 200, "{path}");
        assert_eq!(v2.header("x-strata-snapshot"), Some("2"));
        assert_eq!(v2.body, v1.body, "{path}");
        assert_eq!(v2.header("etag"), v1.header("etag"), "{path}");
    }
    let route = agent
        .get(&format!("/v1/routes/{}", generate::phone_number(3, 0)))
        .await;
    assert_eq!(route.json()["tenant_id"], same.as_str());
    agent.stop().await;
}

/// Asserts the agent still serves `version` and reports `reason` in its status.
async fn still_serves(agent: &Agent, version: u64, error_contains: &str) {
    wait_for(
        &format!("refusal mentioning {error_contains:?}"),
        || async {
            let s = agent.get("/v1/snapshot").await.json();
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(error_contains))
        },
    )
    .await;
    let s = agent.get("/v1/snapshot").await.json();
    assert_eq!(s["version"], version, "{s}");
    assert_eq!(s["state"], "degraded", "{s}");
    let id = generate::tenant_id(0);
    let cfg = agent.get(&format!("/v1/tenants/{id}")).await;
    assert_eq!(cfg.status, 200);
    assert_eq!(
        cfg.header("x-strata-snapshot"),
        Some(version.to_string().as_str())
    );
}

/// A bundle of `compiled` at `version` signed by the fixture's key, and the
/// signed channel pointer naming it, for tests that then put other bytes
/// (tampered, half-copied) in the store under the pointer.
fn signed_bundle_and_pointer(
    fx: &Fixture,
    compiled: &strata_common::compile::Compiled,
    version: u64,
) -> (Vec<u8>, Vec<u8>) {
    let manifest = channel::manifest(
        compiled,
        version,
        time::now(),
        channel::DEFAULT_BUNDLE_EXPIRY,
        &Default::default(),
    );
    let bytes = bundle::write_bundle(
        &manifest,
        &compiled.payload.compressed,
        std::slice::from_ref(&fx.key),
    )
    .expect("bundle");
    let pointer = Pointer {
        kind: PointerKind::Channel,
        name: "stable".into(),
        version,
        bundle: SnapshotVersion(version).bundle_key(),
        bundle_sha256: sha256_hex(&bytes),
        bundle_size: bytes.len() as u64,
        created_at: time::format(time::now()),
        expires_at: time::format(time::now() + std::time::Duration::from_secs(3600)),
        tenants: Some(compiled.tenant_count),
    };
    let signed = pointer.sign(std::slice::from_ref(&fx.key)).expect("sign");
    (bytes, signed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_tampered_and_replayed_snapshots_are_refused() {
    let fx = Fixture::new();
    let first = fx.publish("v1", 10);
    assert_eq!(first.pointer.version, 1);
    let agent = fx.start_agent("a", "");
    agent.serves(1).await;
    let store = fx.store_dir();

    // 1. Signed by a key the agent does not trust.
    let stranger = SigningKey::from_bytes(&[42; 32]);
    let (_, compiled) = fx.compile("v1", 10);
    // (The stranger's publisher follows the channel as written by the
    // trusted key, which it is told to trust for reading.)
    channel::publish(
        &fx.store(),
        &compiled,
        &[stranger],
        &channel::PublishOptions {
            trusted: vec![fx.key.verifying_key()],
            ..channel::PublishOptions::for_channel("stable")
        },
    )
    .expect("publish");
    still_serves(&agent, 1, "not trusted as publisher").await;
    assert_eq!(
        counter(
            &agent,
            "strata_refusals_total{reason=\"pointer_signature\"}"
        )
        .await,
        1
    );

    // 2. A trusted publish whose bundle was altered in the store before the
    //    pointer moved to it: the signed pointer names other bytes.
    let version = 3;
    let (bytes, signed) = signed_bundle_and_pointer(&fx, &compiled, version);
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let bundle_key = SnapshotVersion(version).bundle_key();
    fx.store().put_new(&bundle_key, &tampered).expect("upload");
    std::fs::write(store.join("channels/stable.json"), signed).expect("move pointer");
    still_serves(&agent, 1, "altered").await;

    // 3. A replayed older pointer (validly signed, version 1) after a good v4.
    let good = fx.publish("v1", 10);
    assert_eq!(good.pointer.version, 4);
    agent.serves(4).await;
    let served = 4;
    let old_pointer = first
        .pointer
        .sign(std::slice::from_ref(&fx.key))
        .expect("sign");
    std::fs::write(store.join("channels/stable.json"), old_pointer).expect("replay");
    still_serves(
        &agent,
        served,
        "the newest this node has accepted from a channel",
    )
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_snapshot_no_trusted_key_vouches_for_gives_way_to_the_store_s() {
    // A node keeps snapshot 2 from the old publisher key; its config now
    // trusts only a new key, whose store starts again at version 1.
    let (old, new) = (Fixture::new(), Fixture::new());
    old.publish("v1", 5);
    old.publish("v1", 5);
    let agent = old.start_agent("a", "");
    agent.serves(2).await;
    agent.stop().await;
    let published = new.publish("v1", 7);
    let (config, path) = new.agent_config("a", "");
    std::fs::create_dir_all(&config.data_dir).expect("data dir");
    std::fs::copy(old.dir.path().join("a-data/strata.redb"), config.db_path())
        .expect("copy the old snapshot file");

    let agent = Agent::start(config, path);
    agent.serves(1).await;
    let s = agent.get("/v1/snapshot").await.json();
    assert_eq!(s["tenant_count"], 7, "{s}");
    assert_eq!(s["bundle_sha256"], published.pointer.bundle_sha256, "{s}");
    assert_eq!(s["state"], "fresh", "{s}");
    let id = generate::tenant_id(6);
    assert_eq!(agent.get(&format!("/v1/tenants/{id}")).await.status, 200);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_on_two_sockets_do_not_interfere() {
    let (fa, fb) = (Fixture::new(), Fixture::new());
    fa.publish("v1", 5);
    fb.publish("v1", 12);
    fb.publish("v1", 12);
    let (ca, pa) = fa.agent_config("a", "region = \"us-east-1\"");
    let (cb, pb) = fb.agent_config("b", "region = \"eu-west-1\"");
    let (a, b) = (Agent::start(ca, pa), Agent::start(cb, pb));
    a.serves(1).await;
    b.serves(2).await;
    let (sa, sb) = (
        a.get("/v1/snapshot").await.json(),
        b.get("/v1/snapshot").await.json(),
    );
    assert_eq!(
        (sa["tenant_count"].clone(), sa["region"].clone()),
        (5.into(), "us-east-1".into())
    );
    assert_eq!(
        (sb["tenant_count"].clone(), sb["region"].clone()),
        (12.into(), "eu-west-1".into())
    );
    assert_eq!(
        a.get(&format!("/v1/tenants/{}", generate::tenant_id(10)))
            .await
            .status,
        404
    );
    assert_eq!(
        b.get(&format!("/v1/tenants/{}", generate::tenant_id(10)))
            .await
            .status,
        200
    );
    a.stop().await;
    assert_eq!(
        b.get("/readyz").await.status,
        200,
        "stopping one leaves the other serving"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_leaves_the_snapshot_served_and_stale() {
    let fx = Fixture::new();
    fx.publish("v1", 5);
    let agent = fx.start_agent("a", "");
    agent.serves(1).await;
    std::fs::rename(fx.store_dir(), fx.dir.path().join("store-gone")).expect("move store away");
    wait_for("stale state", || async {
        agent.get("/v1/snapshot").await.json()["state"] == "stale"
    })
    .await;
    assert_eq!(
        agent
            .get(&format!("/v1/tenants/{}", generate::tenant_id(2)))
            .await
            .status,
        200
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_store_then_an_expired_pointer_then_an_oversized_bundle() {
    let fx = Fixture::new();
    let agent = fx.start_agent("a", "max_bundle_bytes = 200000");
    agent
        .wait_until("empty store reported", "/v1/snapshot", |a| {
            a.json()["state"] == "starting"
                && a.json()["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("waiting for a publish"))
        })
        .await;
    assert_eq!(agent.get("/readyz").await.status, 503);

    let first = fx.publish("v1", 10);
    agent.serves(1).await;

    // The same pointer re-signed with an expiry in the past.
    let mut expired = first.pointer.clone();
    expired.expires_at = time::format(time::now() - std::time::Duration::from_secs(60));
    let signed = expired.sign(std::slice::from_ref(&fx.key)).expect("sign");
    std::fs::write(fx.store_dir().join("channels/stable.json"), signed).expect("write");
    wait_for("expired pointer reported", || async {
        let s = agent.get("/v1/snapshot").await.json();
        s["state"] == "stale"
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("expired"))
    })
    .await;
    assert_eq!(agent.get("/v1/snapshot").await.json()["version"], 1);

    // A valid publish whose bundle is over max_bundle_bytes.
    let big = fx.publish("big", 600);
    assert!(
        big.pointer.bundle_size > 200_000,
        "fixture must exceed the limit"
    );
    still_serves(&agent, 1, "max_bundle_bytes").await;
    assert_eq!(
        counter(&agent, "strata_refusals_total{reason=\"bundle_too_large\"}").await,
        1
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_bundle_that_breaks_a_payload_rule_is_refused_and_the_snapshot_stays() {
    let fx = Fixture::new();
    fx.publish("v1", 10);
    let agent = fx.start_agent("a", "");
    agent.serves(1).await;

    // Signed by the trusted key, but one number routes to a tenant the
    // bundle does not hold: a call to it would find no config.
    let (_, compiled) = fx.compile("v1", 10);
    let ghost = strata_tests::rewrite(&compiled, |c| {
        c.routes
            .insert("+19995550100".into(), "ghost-tenant".into());
    });
    fx.publish_with(&ghost, std::slice::from_ref(&fx.key));
    still_serves(&agent, 1, "ghost-tenant").await;
    let s = agent.get("/v1/snapshot").await.json();
    assert_eq!(s["last_error_reason"], "route_to_unknown_tenant", "{s}");
    assert_eq!(
        counter(
            &agent,
            "strata_refusals_total{reason=\"route_to_unknown_tenant\"}"
        )
        .await,
        1
    );
    let route = agent.get("/v1/routes/+19995550100").await;
    assert_eq!(route.status, 404, "the refused route is not served");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_mirror_is_followed_with_the_configured_ca_and_refused_without_it() {
    use strata_tests::mirror::{Mirror, TestCa};
    let fx = Fixture::new();
    fx.publish("v1", 10);
    let ca = TestCa::new();
    let mirror = Mirror::start(fx.store_dir(), &ca).await;
    let ca_file = fx.dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).expect("ca file");
    // The fixture's config, with the mirror as source (and the CA file).
    let https = |name: &str, ca: Option<&std::path::Path>| {
        let (_, path) = fx.agent_config(name, "");
        let text = std::fs::read_to_string(&path).expect("config");
        let source = format!("\"file://{}\"", fx.store_dir().display());
        let ca_line = ca
            .map(|c| format!("ca_file = \"{}\"\n", c.display()))
            .unwrap_or_default();
        let text = text
            .replace(&source, &format!("\"{}\"", mirror.url()))
            .replace("[[trusted_keys]]", &format!("{ca_line}[[trusted_keys]]"));
        std::fs::write(&path, text).expect("config");
        let config = strata_agent::config::Config::load(&path).expect("config");
        Agent::start(config, path)
    };
    let trusted = https("trusted", Some(&ca_file));
    trusted.serves(1).await;
    let before = mirror
        .not_modified
        .load(std::sync::atomic::Ordering::Relaxed);
    wait_for("idle polls answered 304", || async {
        mirror
            .not_modified
            .load(std::sync::atomic::Ordering::Relaxed)
            >= before + 3
    })
    .await;

    // Without the CA file, the platform's roots do not know the test CA.
    let untrusted = https("untrusted", None);
    untrusted
        .wait_until("the TLS failure reported", "/v1/snapshot", |a| {
            a.json()["last_error_reason"] == "store_unreachable" && a.json()["state"] == "starting"
        })
        .await;
    trusted.stop().await;
    untrusted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_does_not_take_over_a_live_agent_s_socket() {
    let fx = Fixture::new();
    fx.publish("v1", 5);
    let first = fx.start_agent("a", "");
    first.serves(1).await;
    // Another agent (its own data dir) configured with the same socket.
    let (_, path) = fx.agent_config("b", "");
    let text = std::fs::read_to_string(&path).expect("config");
    let text = text.replace("b.sock", "a.sock");
    std::fs::write(&path, text).expect("config");
    let config = strata_agent::config::Config::load(&path).expect("config");
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        strata_agent::run(config, &path, std::future::pending()),
    )
    .await
    .expect("the second agent gives up at once");
    let message = format!("{:#}", refused.expect_err("refused"));
    assert!(message.contains("socket of a running process"), "{message}");
    let s = first.get("/v1/snapshot").await;
    assert_eq!(s.status, 200, "the first agent still answers");
    first.stop().await;
}

/// Two agents started at the same instant on one socket: whichever takes
/// the socket's lock first binds it, the other is refused (here the lock is
/// held as the first agent would hold it, before its socket exists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_is_refused_while_another_holds_the_socket_lock() {
    let fx = Fixture::new();
    fx.publish("v1", 5);
    let (config, path) = fx.agent_config("a", "");
    let mut lock_path = config.socket.clone().into_os_string();
    lock_path.push(".lock");
    let lock = std::fs::File::create(lock_path).expect("lock file");
    lock.try_lock().expect("take the lock");
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        strata_agent::run(config.clone(), &path, std::future::pending()),
    )
    .await
    .expect("refused at once");
    let message = format!("{:#}", refused.expect_err("refused"));
    assert!(message.contains("another agent holds"), "{message}");
    assert!(!config.socket.exists(), "no socket placed");
    drop(lock);
    let agent = Agent::start(config, path);
    agent.serves(1).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_and_a_silent_client_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;
    let fx = Fixture::new();
    fx.publish("v1", 5);
    let agent = fx.start_agent("a", "max_connections = 2");
    agent.serves(1).await;
    // Two clients hold both slots without finishing a request.
    let mut idle = UnixStream::connect(&agent.socket).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .expect("half a request");
    let other = UnixStream::connect(&agent.socket).await.expect("connect");
    // A third waits in the backlog...
    let waiting = tokio::spawn({
        let socket = agent.socket.clone();
        async move { strata_agent::client::get(&socket, "/healthz").await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a third connection waits for a slot"
    );
    // ...and is served once a slot frees.
    drop(other);
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("served after a slot freed")
        .expect("task")
        .expect("answer");
    assert_eq!(answer.status, 200);
    // The silent client is closed after the header timeout (10 s): the
    // agent may answer 408 first, then the connection ends.
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a silent client's connection is closed");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_caught_mid_copy_is_fetched_again_until_it_is_whole() {
    let fx = Fixture::new();
    fx.publish("v1", 10);
    let agent = fx.start_agent("a", "");
    agent.serves(1).await;
    let (_, compiled) = fx.compile("v2", 11);
    let version = 2;
    let (bytes, signed) = signed_bundle_and_pointer(&fx, &compiled, version);
    // A mirror that has copied the pointer but only half the bundle.
    let bundle_path = fx.store_dir().join(SnapshotVersion(version).bundle_key());
    std::fs::write(&bundle_path, &bytes[..bytes.len() / 2]).expect("half");
    std::fs::write(fx.store_dir().join("channels/stable.json"), signed).expect("pointer");
    agent
        .wait_until("the half bundle refused", "/v1/snapshot", |a| {
            a.json()["last_error_reason"] == "bundle_hash"
        })
        .await;
    // The copy completes; the pointer does not change.
    std::fs::write(&bundle_path, &bytes).expect("whole");
    agent.serves(2).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_in_the_store_does_not_hang_the_agent() {
    let fx = Fixture::new();
    fx.publish("v1", 5);
    let agent = fx.start_agent("a", "");
    agent.serves(1).await;
    let pointer = fx.store_dir().join("channels/stable.json");
    let saved = fx.dir.path().join("stable.json");
    std::fs::rename(&pointer, &saved).expect("move pointer aside");
    let made = std::process::Command::new("mkfifo")
        .arg(&pointer)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    agent
        .wait_until("the FIFO reported", "/v1/snapshot", |a| {
            a.json()["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("not a regular file"))
        })
        .await;
    std::fs::remove_file(&pointer).expect("remove fifo");
    std::fs::rename(&saved, &pointer).expect("pointer back");
    agent
        .wait_until("fresh again", "/v1/snapshot", |a| {
            a.json()["state"] == "fresh"
        })
        .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_file_is_moved_aside_and_the_store_s_snapshot_served() {
    let fx = Fixture::new();
    fx.publish("v1", 5);
    let (config, path) = fx.agent_config("a", "");
    std::fs::create_dir_all(&config.data_dir).expect("data dir");
    let garbage = vec![0xAB; 64 * 1024];
    std::fs::write(config.db_path(), &garbage).expect("damaged file");
    let agent = Agent::start(config.clone(), path);
    agent.serves(1).await;
    let aside = config.db_path().with_extension("redb.damaged");
    assert_eq!(std::fs::read(&aside).expect("kept for forensics"), garbage);
    agent.stop().await;
}

/// A config file edited under a running agent into one it would not start
/// with, or with a setting only a restart applies, is said at once in
/// `/v1/snapshot` and `/metrics`, not found at the next reboot; the
/// snapshot stays served and the state is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_edit_the_running_agent_cannot_apply_is_reported() {
    let fx = Fixture::new();
    fx.publish("v1", 3);
    let (config, path) = fx.agent_config("a", "");
    let agent = Agent::start(config, path.clone());
    agent.serves(1).await;
    let original = std::fs::read_to_string(&path).expect("config");

    std::fs::write(&path, format!("bogus_key = 1\n{original}")).expect("edit");
    agent
        .wait_until("the broken config reported", "/v1/snapshot", |a| {
            a.json()["config_problem"]
                .as_str()
                .is_some_and(|p| p.contains("bogus_key") && p.contains("would not start"))
        })
        .await;
    let snapshot = agent.get("/v1/snapshot").await.json();
    assert_eq!(snapshot["state"], "fresh", "{snapshot}");
    assert!(
        agent
            .get("/metrics")
            .await
            .text()
            .contains("strata_config_problem 1"),
    );

    // The same data_dir written another way is no change.
    let data_dir = config_data_dir(&original);
    std::fs::write(
        &path,
        original
            .replace("[[trusted_keys]]", "channel = \"canary\"\n[[trusted_keys]]")
            .replace(&data_dir, &format!("{data_dir}/")),
    )
    .expect("edit");
    agent
        .wait_until("the channel change reported", "/v1/snapshot", |a| {
            a.json()["config_problem"]
                .as_str()
                .is_some_and(|p| p.contains(": channel changed"))
        })
        .await;

    std::fs::write(&path, &original).expect("restore");
    agent
        .wait_until("the problem cleared", "/v1/snapshot", |a| {
            a.json()["config_problem"].is_null()
        })
        .await;
    agent.stop().await;
}

/// agent.toml replaced by a FIFO or a link to /dev/zero (an outside attack
/// held the check thread on the FIFO for good, and read 4.6 GB from
/// /dev/zero in 10 s): the config is refused at once as not a regular
/// file, the node goes on applying publishes with the keys it has, and the
/// problem clears when the file is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_that_is_a_fifo_or_a_device_never_stalls_the_checks() {
    let fx = Fixture::new();
    fx.publish("v1", 3);
    let (config, path) = fx.agent_config("a", "");
    let agent = Agent::start(config, path.clone());
    agent.serves(1).await;
    let original = std::fs::read_to_string(&path).expect("config");
    for (n, special) in ["fifo", "device"].into_iter().enumerate() {
        std::fs::remove_file(&path).expect("rm config");
        if special == "fifo" {
            let made = std::process::Command::new("mkfifo")
                .arg(&path)
                .status()
                .expect("mkfifo");
            assert!(made.success());
        } else {
            std::os::unix::fs::symlink("/dev/zero", &path).expect("link");
        }
        agent
            .wait_until("the special file reported", "/v1/snapshot", |a| {
                a.json()["config_problem"]
                    .as_str()
                    .is_some_and(|p| p.contains("not a regular file"))
            })
            .await;
        // Checks go on: a publish is applied with the keys in use.
        let version = 2 + n as u64;
        fx.publish(&format!("v{version}"), 3);
        agent.serves(version).await;
        std::fs::remove_file(&path).expect("rm special");
        std::fs::write(&path, &original).expect("restore");
        agent
            .wait_until("the problem cleared", "/v1/snapshot", |a| {
                a.json()["config_problem"].is_null()
            })
            .await;
    }
    agent.stop().await;
}

/// A file store that vanishes (an unmounted volume) is reported as
/// unreachable, not as an empty store waiting for a publish; the snapshot
/// stays served, and the node is fresh again once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_store_directory_is_unreachable_not_empty() {
    let fx = Fixture::new();
    fx.publish("v1", 3);
    let agent = fx.start_agent("a", "poll_interval = \"200ms\"");
    agent.serves(1).await;
    let away = fx.dir.path().join("store-away");
    std::fs::rename(fx.store_dir(), &away).expect("unmount, as it were");
    agent
        .wait_until("the vanished store reported", "/v1/snapshot", |a| {
            let s = a.json();
            s["state"] == "stale"
                && s["last_error_reason"] == "store_unreachable"
                && s["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("does not exist"))
        })
        .await;
    let tenant = strata_common::generate::tenant_id(1);
    assert_eq!(
        agent.get(&format!("/v1/tenants/{tenant}")).await.status,
        200
    );
    std::fs::rename(&away, fx.store_dir()).expect("back");
    agent
        .wait_until("fresh again", "/v1/snapshot", |a| {
            a.json()["state"] == "fresh"
        })
        .await;
    agent.stop().await;
}

/// The socket file removed under a running agent (a cleanup script, a
/// tmpfiles rule): the agent places it again, with its mode, and answers
/// on it; a file of someone else's at the path is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_socket_file_is_placed_again() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let fx = Fixture::new();
    fx.publish("v1", 3);
    let agent = fx.start_agent("a", "");
    agent.serves(1).await;
    std::fs::remove_file(&agent.socket).expect("remove the socket");
    strata_tests::wait_for("the socket placed again and answering", || async {
        strata_agent::client::get(&agent.socket, "/readyz")
            .await
            .is_ok_and(|a| a.status == 200)
    })
    .await;
    let meta = std::fs::symlink_metadata(&agent.socket).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    std::fs::remove_file(&agent.socket).expect("remove the socket");
    std::fs::write(&agent.socket, "someone else's").expect("a file in its place");
    // Not a wait for a condition: a window (past the agent's 2 s check)
    // in which nothing may happen.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        std::fs::read_to_string(&agent.socket).expect("still the file"),
        "someone else's"
    );
    std::fs::remove_file(&agent.socket).expect("cleanup");
    agent.stop().await;

    // With every connection slot taken, too.
    let agent = fx.start_agent("b", "max_connections = 1");
    agent.serves(1).await;
    let held = std::os::unix::net::UnixStream::connect(&agent.socket).expect("hold the slot");
    std::fs::remove_file(&agent.socket).expect("remove the socket");
    strata_tests::wait_for("the socket placed again at the cap", || async {
        std::fs::symlink_metadata(&agent.socket).is_ok_and(|m| m.file_type().is_socket())
    })
    .await;
    drop(held);
    strata_tests::wait_for("answering once the slot frees", || async {
        strata_agent::client::get(&agent.socket, "/readyz")
            .await
            .is_ok_and(|a| a.status == 200)
    })
    .await;
    agent.stop().await;
}

/// The `data_dir` value of a config file's text.
fn config_data_dir(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("data_dir = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("data_dir in the config")
        .to_owned()
}

/// Sends `POST path` on the agent's socket; the status.
async fn post(socket: &std::path::Path, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect");
    stream
        .write_all(
            format!("POST {path} HTTP/1.1\r\nHost: strata\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The number of checks an agent has run, from its metrics.
async fn checks_run(agent: &Agent) -> u64 {
    agent
        .get("/metrics")
        .await
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("strata_checks_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// An operator can force a check (`POST /v1/check`, or SIGHUP) whatever the
/// poll interval or backoff; other methods are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_can_be_forced_on_the_socket() {
    let fx = Fixture::new();
    fx.publish("v1", 3);
    let agent = fx.start_agent("a", "poll_interval = \"1h\"");
    agent.serves(1).await;
    let before = checks_run(&agent).await;
    assert_eq!(post(&agent.socket, "/v1/check").await, 202);
    wait_for("the forced check ran", || async {
        checks_run(&agent).await > before
    })
    .await;
    assert_eq!(agent.get("/v1/check").await.status, 405);
    agent.stop().await;
}

/// A `file://` store that disappears and comes back (a volume unmounted and
/// mounted again: a new directory) is followed again at once: the agent
/// notices it come back, and watches the new directory for publishes, with
/// no wait for the poll interval or the backoff (an outside walk-through
/// saw 31–46 s after a 37 s outage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_store_that_comes_back_is_watched_again_at_once() {
    let fx = Fixture::new();
    fx.publish("v1", 3);
    let agent = fx.start_agent("a", "poll_interval = \"1h\"");
    agent.serves(1).await;
    let store = fx.store_dir();
    let aside = fx.dir.path().join("store-aside");
    std::fs::rename(&store, &aside).expect("unmount");
    agent
        .wait_until("the store reported gone", "/v1/snapshot", |a| {
            a.json()["state"] == "stale"
        })
        .await;
    // Mounted again: a new directory with the same content.
    let copied = std::process::Command::new("cp")
        .args(["-a"])
        .arg(&aside)
        .arg(&store)
        .status()
        .expect("cp");
    assert!(copied.success());
    agent
        .wait_until("fresh again", "/v1/snapshot", |a| {
            a.json()["state"] == "fresh"
        })
        .await;
    fx.publish("v2", 3);
    agent.serves(2).await;
    agent.stop().await;
}
