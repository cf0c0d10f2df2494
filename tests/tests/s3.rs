//! The publisher and the agent against a real S3 protocol server (`s3s` +
//! `s3s-fs`, in this process, on 127.0.0.1:0, SigV4 on), both as real
//! processes configured only through the standard AWS environment
//! variables: publish and pull, concurrent publishers, conditional idle
//! polls, an outage, limits, a cut body, throttling, wrong credentials.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use strata_agent::client;
use strata_common::sign;
use strata_tests::s3::{BUCKET, S3Server};
use strata_tests::{Fixture, Proc, bin, wait_for};

const PREFIX: &str = "prod";

fn url() -> String {
    format!("s3://{BUCKET}/{PREFIX}")
}

/// Runs the publisher with the server's environment, off the async threads.
async fn publisher(env: Vec<(&'static str, String)>, args: Vec<String>) -> Output {
    strata_tests::s3::run_publisher(env, args).await
}

/// Publishes `tenants` generated tenants (source `tag`) to the bucket.
async fn publish(server: &S3Server, fx: &Fixture, tag: &str, tenants: usize) -> Output {
    let (src, _) = fx.compile(tag, tenants);
    publisher(
        server.env(),
        strata_tests::s3::publish_args(fx, &src, &url()),
    )
    .await
}

/// An agent process following the bucket, with `env` (the server's, or a
/// changed copy) and `extra` config lines.
fn agent(
    fx: &Fixture,
    name: &str,
    env: Vec<(&'static str, String)>,
    extra: &str,
) -> (Proc, PathBuf) {
    strata_tests::s3::agent_process(
        fx,
        name,
        &url(),
        env,
        &format!("poll_interval = \"200ms\"\n{extra}"),
    )
}

async fn snapshot(socket: &Path) -> serde_json::Value {
    strata_tests::snapshot_at(socket).await
}

async fn serves(socket: &Path, version: u64) {
    wait_for(&format!("agent serving version {version}"), || async {
        let s = snapshot(socket).await;
        s["version"] == version && s["state"] == "fresh"
    })
    .await;
}

fn ok(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_pull_with_idle_polls_answered_304() {
    let server = S3Server::start().await;
    let fx = Fixture::new();
    let text = ok(&publish(&server, &fx, "v1", 20).await);
    assert!(text.contains("published version 1 to s3://"), "{text}");
    let (_agent, socket) = agent(&fx, "a", server.env(), "");
    serves(&socket, 1).await;
    let id = strata_common::generate::tenant_id(3);
    let cfg = client::get(&socket, &format!("/v1/tenants/{id}"))
        .await
        .expect("lookup");
    assert_eq!(cfg.status, 200);

    // Idle: every poll is one GET of the region's pin (none: 404) and one
    // conditional GET of the pointer, answered 304.
    server.control.reset();
    wait_for("five idle polls", || async {
        server.control.requests_to("channels/stable.json").len() >= 5
    })
    .await;
    let seen = server.control.seen.lock().expect("seen").clone();
    let polls = seen
        .iter()
        .filter(|r| r.path.ends_with("channels/stable.json"))
        .count() as u64;
    assert!(
        seen.iter().all(|r| r.method == "GET"
            && ((r.path.ends_with("channels/stable.json") && r.status == 304)
                || (r.path.ends_with("pins/default.json") && r.status == 404))),
        "{seen:?}"
    );
    let bytes_in = server
        .control
        .bytes_in
        .load(std::sync::atomic::Ordering::Relaxed);
    let bytes_out = server
        .control
        .bytes_out
        .load(std::sync::atomic::Ordering::Relaxed);
    let per_poll = (bytes_in + bytes_out) / polls;
    println!(
        "idle poll: {polls} polls, {} requests, {} bytes in, {} bytes out per poll",
        seen.len(),
        bytes_in / polls,
        bytes_out / polls
    );
    assert!(
        per_poll <= 2560,
        "{per_poll} bytes on the wire per idle poll"
    );

    // From CI: the signing key comes from an environment variable (a
    // secret), never a file.
    let (src, _) = fx.compile("v2", 21);
    let mut env = server.env();
    let pem = std::fs::read_to_string(&fx.key_path).expect("key");
    env.push(("STRATA_SIGNING_KEY", pem));
    let text = ok(&publisher(
        env,
        vec![
            "publish".into(),
            "--init".into(),
            "--source".into(),
            src.display().to_string(),
            "--key-env".into(),
            "STRATA_SIGNING_KEY".into(),
            "--store".into(),
            url(),
        ],
    )
    .await);
    assert!(text.contains("published version 2"), "{text}");
    serves(&socket, 2).await;
    let list = ok(&publisher(server.env(), vec!["list".into(), "--store".into(), url()]).await);
    assert!(
        list.contains("snapshots/00000000000000000002.bundle") && list.contains("version 2"),
        "{list}"
    );
    let inspect = ok(&publisher(
        server.env(),
        vec![
            "inspect".into(),
            "--store".into(),
            url(),
            "--pubkey".into(),
            sign::public_path(&fx.key_path).display().to_string(),
        ],
    )
    .await);
    assert!(
        inspect.contains("an agent would apply version 2"),
        "{inspect}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_concurrent_publishers_get_four_consecutive_versions() {
    let server = S3Server::start().await;
    let fx = Fixture::new();
    let mut runs = Vec::new();
    for i in 0..4 {
        let (src, _) = fx.compile(&format!("p{i}"), 5 + i);
        let env = server.env();
        let key = fx.key_path.clone();
        runs.push(tokio::task::spawn_blocking(move || {
            Command::new(bin("strata-publisher"))
                .envs(env)
                .arg("publish")
                .arg("--init")
                .arg("--source")
                .arg(src)
                .arg("--key")
                .arg(key)
                // Sources of 5 to 8 tenants in any order: a smaller one
                // after a larger one removes tenants, meant here.
                .arg("--allow-removals")
                .args(["--store", &url()])
                .output()
                .expect("publisher")
        }));
    }
    let mut versions = Vec::new();
    for run in runs {
        let text = ok(&run.await.expect("thread"));
        let v: u64 = text
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no version in {text}"));
        versions.push(v);
    }
    versions.sort_unstable();
    assert_eq!(versions, [1, 2, 3, 4]);
    let list = ok(&publisher(server.env(), vec!["list".into(), "--store".into(), url()]).await);
    assert!(list.contains("→ version 4"), "{list}");
    assert_eq!(list.matches(".bundle").count(), 4, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_keeps_the_snapshot_served_and_the_agent_catches_up() {
    let mut server = S3Server::start().await;
    let fx = Fixture::new();
    ok(&publish(&server, &fx, "v1", 10).await);
    let (_agent, socket) = agent(&fx, "a", server.env(), "");
    serves(&socket, 1).await;

    server.stop();
    wait_for("the outage reported", || async {
        let s = snapshot(&socket).await;
        s["state"] == "stale" && s["last_error_reason"] == "store_unreachable"
    })
    .await;
    let id = strata_common::generate::tenant_id(1);
    let cfg = client::get(&socket, &format!("/v1/tenants/{id}"))
        .await
        .expect("lookup");
    assert_eq!(cfg.status, 200, "serving never stops");

    server.restart().await;
    ok(&publish(&server, &fx, "v2", 11).await);
    serves(&socket, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_over_the_limit_is_refused() {
    let server = S3Server::start().await;
    let fx = Fixture::new();
    ok(&publish(&server, &fx, "big", 200).await);
    let (_agent, socket) = agent(&fx, "a", server.env(), "max_bundle_bytes = 20000");
    wait_for("the oversized bundle refused", || async {
        snapshot(&socket).await["last_error_reason"] == "bundle_too_large"
    })
    .await;
    assert_eq!(snapshot(&socket).await["state"], "starting");
    // Format 3: the root, Layer 1 and the pages are read (their chunk
    // sizes add up past the limit), the chunks never.
    let objects = server.control.requests_to("objects/");
    let count = |method: &str| objects.iter().filter(|r| r.method == method).count();
    assert!(
        count("GET") * 2 < count("PUT"),
        "refused before the chunks were downloaded: {} GETs of {} objects",
        count("GET"),
        count("PUT")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_is_fetched_again() {
    let server = S3Server::start().await;
    let fx = Fixture::new();
    ok(&publish(&server, &fx, "v1", 10).await);
    let (_agent, socket) = agent(&fx, "a", server.env(), "");
    serves(&socket, 1).await;
    server
        .control
        .truncate_next_bundle
        .store(true, std::sync::atomic::Ordering::SeqCst);
    ok(&publish(&server, &fx, "v2", 12).await);
    serves(&socket, 2).await;
    let gets = server
        .control
        .requests_to("snapshots/00000000000000000002.bundle")
        .len();
    assert!(gets >= 2, "the cut body was fetched again ({gets} GETs)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_down_is_retried_with_backoff() {
    let server = S3Server::start().await;
    let fx = Fixture::new();
    ok(&publish(&server, &fx, "v1", 10).await);
    server
        .control
        .slow_down
        .store(4, std::sync::atomic::Ordering::SeqCst);
    let (_agent, socket) = agent(&fx, "a", server.env(), "");
    serves(&socket, 1).await;
    let throttled = server
        .control
        .seen
        .lock()
        .expect("seen")
        .iter()
        .filter(|r| r.status == 503)
        .count();
    assert_eq!(throttled, 4, "every SlowDown was answered, then retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_reported_and_not_retried_hot() {
    let server = S3Server::start().await;
    let fx = Fixture::new();
    ok(&publish(&server, &fx, "v1", 10).await);
    let env: Vec<_> = server
        .env()
        .into_iter()
        .map(|(k, v)| {
            if k == "AWS_SECRET_ACCESS_KEY" {
                (k, "not-the-secret".to_owned())
            } else {
                (k, v)
            }
        })
        .collect();
    let (_agent, socket) = agent(&fx, "a", env, "");
    wait_for("the credentials refusal reported", || async {
        let s = snapshot(&socket).await;
        s["state"] == "starting" && s["last_error_reason"] == "store_unreachable"
    })
    .await;
    let s = snapshot(&socket).await;
    let error = s["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains("403") || error.contains("SignatureDoesNotMatch"),
        "{error}"
    );
    server.control.reset();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = server.control.seen.lock().expect("seen").len();
    // At a 200 ms poll a hot loop would send 15 or more in 3 s; backing off
    // from the first failure it sends a handful.
    assert!(
        requests <= 6,
        "{requests} requests in 3 s with wrong credentials"
    );
}

/// An S3-compatible server that ignores `If-None-Match` and `If-Match` on
/// PUT (as some gateways do, and proxies that strip them): an outside
/// attack saw 8 concurrent publishers all print `published version 2`
/// while 7 of the publishes were lost. Every publishing command now probes
/// the store first and refuses, naming it; nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_ignores_conditional_writes_is_refused_before_anything_is_written() {
    let server = S3Server::start().await;
    let fx = Fixture::new();
    ok(&publish(&server, &fx, "v1", 5).await);
    server
        .control
        .ignore_conditions
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let out = publish(&server, &fx, "v2", 5).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&url()) && stderr.contains("does not honour conditional writes"),
        "{stderr}"
    );
    assert!(
        !server
            .object_path(&format!("{PREFIX}/snapshots/00000000000000000002.bundle"))
            .exists(),
        "a bundle was written"
    );
    // Once the server honours them again, publishing goes on.
    server
        .control
        .ignore_conditions
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let text = ok(&publish(&server, &fx, "v2", 5).await);
    assert!(text.contains("published version 2"), "{text}");
    // The probe removes what it wrote.
    let probes = server.object_path(&format!("{PREFIX}/probes"));
    let left = std::fs::read_dir(&probes).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count()
    });
    assert_eq!(left, 0, "probe objects left in {}", probes.display());
}

/// Peak resident memory of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// An S3 error response with a body without end (an outside attack sent a
/// 403 with 800 MB: the SDK read it whole, taking the agent from 18 MB to
/// 1.4 GB). The body is now read at most 64 KiB: the agent's memory stays
/// flat, it keeps serving, says what it saw, and recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_body_without_end_is_not_read_into_memory() {
    let server = S3Server::start().await;
    let fx = Fixture::new();
    ok(&publish(&server, &fx, "v1", 5).await);
    let (agent, socket) = agent(&fx, "a", server.env(), "");
    serves(&socket, 1).await;
    let before = peak_rss(agent.0.id());
    server
        .control
        .huge_error_body
        .store(300 << 20, std::sync::atomic::Ordering::Relaxed);
    server.control.reset();
    wait_for("the refused read reported", || async {
        let s = snapshot(&socket).await;
        s["state"] == "stale"
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("could not be read") || e.contains("access denied"))
    })
    .await;
    wait_for("a second refused read", || async {
        server.control.requests_to("channels/stable.json").len() >= 2
    })
    .await;
    let after = peak_rss(agent.0.id());
    assert!(
        after < before + (64 << 20),
        "peak RSS went from {} MiB to {} MiB",
        before >> 20,
        after >> 20
    );
    let cfg = client::get(&socket, "/v1/layer1").await.expect("lookup");
    assert_eq!(cfg.status, 200, "the snapshot stays served");
    server
        .control
        .huge_error_body
        .store(0, std::sync::atomic::Ordering::Relaxed);
    ok(&publish(&server, &fx, "v2", 5).await);
    serves(&socket, 2).await;
}

/// The files of the bucket's objects under the prefix, by key.
fn object_keys(server: &S3Server) -> Vec<(String, u64)> {
    let root = server.object_path("");
    let mut keys = Vec::new();
    let mut dirs = vec![server.object_path(&format!("{PREFIX}/objects"))];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).expect("objects dir").flatten() {
            let path = e.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(key) = path.strip_prefix(&root) {
                let size = e.metadata().expect("object size").len();
                keys.push((key.display().to_string(), size));
            }
        }
    }
    keys
}

/// A new node reads a format 3 snapshot's chunks from S3 as tasks of the
/// store's runtime, far more than its window holds (2,000 tenants, ~180
/// chunks), in order: it serves every tenant. A chunk damaged in the
/// bucket, then missing, is refused under its own reason while the node
/// keeps serving the version it has; once the chunk is back, the new
/// version is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format3_chunks_from_s3_arrive_in_order_and_a_bad_one_is_refused() {
    let server = S3Server::start().await;
    let fx = Fixture::new();
    ok(&publish(&server, &fx, "v1", 2000).await);
    let before = object_keys(&server);
    assert!(before.len() > 150, "{} objects", before.len());
    let (agent_a, socket) = agent(&fx, "a", server.env(), "");
    serves(&socket, 1).await;
    assert_eq!(snapshot(&socket).await["tenant_count"], 2000);
    for i in [0, 999, 1999] {
        let id = strata_common::generate::tenant_id(i);
        let cfg = client::get(&socket, &format!("/v1/tenants/{id}"))
            .await
            .expect("lookup");
        assert_eq!(cfg.status, 200, "tenant {id}");
    }
    // Stopped while the next version is published and damaged, so that it
    // meets the damage (it restarts serving version 1 from its file).
    drop(agent_a);
    strata_tests::change_one_tenant(&fx.dir.path().join("source-v1"), 5);
    ok(&publish(&server, &fx, "v1", 2000).await);
    let (chunk, _) = object_keys(&server)
        .into_iter()
        .filter(|o| !before.contains(o))
        .max_by_key(|(_, size)| *size)
        .expect("a new chunk");
    let good = std::fs::read(server.object_path(&chunk)).expect("chunk");
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x55;
    server.put_raw(&chunk, &bad);
    let (_agent, socket) = agent(&fx, "a", server.env(), "");
    let refused = |reason: &'static str| {
        let socket = socket.clone();
        move || {
            let socket = socket.clone();
            async move {
                let s = snapshot(&socket).await;
                s["last_error_reason"] == reason && s["version"] == 1
            }
        }
    };
    wait_for(
        "the damaged chunk refused, version 1 served",
        refused("object_hash_mismatch"),
    )
    .await;
    server.delete_raw(&chunk);
    wait_for(
        "the missing chunk reported, version 1 served",
        refused("object_unavailable"),
    )
    .await;
    server.put_raw(&chunk, &good);
    serves(&socket, 2).await;
}
