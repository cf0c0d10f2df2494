//! Push and the fleet view over a real nats-server (127.0.0.1, a free
//! port) and the in-process S3 server (a file store's watcher would wake
//! agents by itself): a publish reaches agents polling once a minute at
//! once; a forged or replayed message changes nothing and costs the store
//! nothing; an outage falls back to polling and shows; `status` and
//! `publish --wait` see every node.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use strata_agent::client;
use strata_common::notify::{self, NotifyConfig};
use strata_common::sign;
use strata_tests::nats::NatsServer;
use strata_tests::s3::{BUCKET, S3Server};
use strata_tests::{Fixture, Proc, wait_for};

const STORE_ID: &str = "test-store";

fn url() -> String {
    format!("s3://{BUCKET}/push")
}

fn nats(tmp: &Path) -> NatsServer {
    NatsServer::start(tmp)
}

fn tmp() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

/// Runs the publisher with the S3 server's environment and `args`.
async fn publisher(server: &S3Server, args: Vec<String>) -> Output {
    strata_tests::s3::run_publisher(server.env(), args).await
}

/// Publishes `tenants` generated tenants (source `tag`), telling NATS at
/// `nats_url` if given, with `extra` arguments.
async fn publish(
    server: &S3Server,
    fx: &Fixture,
    tag: &str,
    nats_url: Option<&str>,
    extra: &[&str],
) -> Output {
    let (src, _) = fx.compile(tag, 10);
    let mut args = strata_tests::s3::publish_args(fx, &src, &url());
    if let Some(u) = nats_url {
        args.extend([
            "--notify".into(),
            u.into(),
            "--store-id".into(),
            STORE_ID.into(),
        ]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    publisher(server, args).await
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An agent process following the bucket and listening on NATS, with no
/// poll_interval set (a minute, with notify) unless `extra` sets one.
fn agent(
    fx: &Fixture,
    server: &S3Server,
    nats_url: &str,
    name: &str,
    extra: &str,
) -> (Proc, PathBuf) {
    strata_tests::s3::agent_process(
        fx,
        name,
        &url(),
        server.env(),
        &format!(
            "notify = \"{nats_url}\"\nstore_id = \"{STORE_ID}\"\nnotify_spread = \"100ms\"\nnode_id = \"{name}\"\n{extra}"
        ),
    )
}

async fn snapshot(socket: &Path) -> serde_json::Value {
    strata_tests::snapshot_at(socket).await
}

async fn serves(socket: &Path, version: u64) {
    strata_tests::serving(socket, version).await
}

async fn connected(socket: &Path) {
    wait_for("agent connected to NATS", || async {
        snapshot(socket).await["notify"] == "connected"
    })
    .await;
}

async fn pushes(socket: &Path, outcome: &str) -> u64 {
    let metrics = client::get(socket, "/metrics").await.expect("metrics");
    let prefix = format!("strata_pushes_total{{outcome=\"{outcome}\"}} ");
    String::from_utf8_lossy(&metrics.body)
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn config(nats_url: &str) -> NotifyConfig {
    NotifyConfig {
        url: nats_url.to_owned(),
        store_id: STORE_ID.to_owned(),
        credentials: None,
        ca: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_reaches_an_agent_polling_once_a_minute_at_once() {
    let server = S3Server::start().await;
    let mut nats = nats(tmp());
    let fx = Fixture::new();
    let out = publish(&server, &fx, "v1", None, &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let (_agent, socket) = agent(&fx, &server, &nats.url(), "a", "");
    serves(&socket, 1).await;
    connected(&socket).await;
    let v1_pointer =
        std::fs::read(server.object_path("push/channels/stable.json")).expect("pointer");

    let started = Instant::now();
    let out = publish(&server, &fx, "v2", Some(&nats.url()), &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("told the agents"), "{}", text(&out));
    serves(&socket, 2).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "served {:?} after the publish began: the push, not the minute's poll",
        started.elapsed()
    );
    assert_eq!(pushes(&socket, "accepted").await, 1);

    // A forged pointer (another key), a replay of the served one and of
    // an older genuine one: counted, dropped, and not one more request to
    // the store.
    let before = server.control.requests_to("channels/").len();
    let stranger = fx.dir.path().join("stranger.key");
    sign::generate_key(&stranger).expect("keygen");
    let forged_key = sign::load_signing_key(&stranger).expect("key");
    let pointer_bytes =
        std::fs::read(server.object_path("push/channels/stable.json")).expect("pointer");
    let mut pointer =
        strata_common::pointer::Pointer::parse_unverified(&pointer_bytes).expect("pointer");
    pointer.version = 99;
    pointer.bundle = strata_common::layout::bundle_key(99);
    let forged = pointer
        .sign(std::slice::from_ref(&forged_key))
        .expect("sign");
    let subject = notify::channel_subject(STORE_ID, "stable").expect("subject");
    let cfg = config(&nats.url());
    for bytes in [forged, pointer_bytes, v1_pointer] {
        let (cfg, subject) = (cfg.clone(), subject.clone());
        tokio::task::spawn_blocking(move || {
            notify::send_blocking(&cfg, &subject, bytes, Duration::from_secs(5)).expect("send")
        })
        .await
        .expect("send thread");
    }
    wait_for("the three messages ignored", || async {
        pushes(&socket, "ignored").await == 3
    })
    .await;
    assert_eq!(snapshot(&socket).await["version"], 2);
    assert_eq!(
        server.control.requests_to("channels/").len(),
        before,
        "a forged or replayed push costs the store nothing"
    );

    // An outage: shown, and the publisher only warns.
    nats.stop();
    wait_for("agent sees the outage", || async {
        snapshot(&socket).await["notify"] == "disconnected"
    })
    .await;
    let out = publish(&server, &fx, "v3", Some(&nats.url()), &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("warning: agents were not told at once"),
        "{}",
        text(&out)
    );
    // Back: the agent reconnects by itself, and the next push arrives.
    nats.restart();
    connected(&socket).await;
    let out = publish(&server, &fx, "v4", Some(&nats.url()), &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    serves(&socket, 4).await;
}

/// `status` gathers every agent's answer; `publish --wait 100%` returns
/// once every answering node serves the new version, and times out naming
/// a node held back (here by its local pin) and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_sees_every_node_and_wait_gates_on_the_fleet() {
    let server = S3Server::start().await;
    let nats = nats(tmp());
    let fx = Fixture::new();
    let out = publish(&server, &fx, "v1", None, &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let pin_file = fx.dir.path().join("held.pin");
    let mut agents = Vec::new();
    for (name, extra) in [
        ("a", String::new()),
        ("b", "region = \"eu\"".to_owned()),
        ("held", format!("pin_file = \"{}\"", pin_file.display())),
    ] {
        let (proc, socket) = agent(&fx, &server, &nats.url(), name, &extra);
        serves(&socket, 1).await;
        connected(&socket).await;
        agents.push((proc, socket));
    }
    let notify_args = |extra: &[&str]| -> Vec<String> {
        ["status", "--notify", &nats.url(), "--store-id", STORE_ID]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let out = publisher(&server, notify_args(&["--json"])).await;
    assert!(out.status.success(), "{}", text(&out));
    let nodes: Vec<notify::NodeStatus> = serde_json::from_slice(&out.stdout).expect("status JSON");
    let names: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(names, ["a", "held", "b"], "sorted by region, then node");
    assert!(
        nodes
            .iter()
            .all(|n| n.version == Some(1) && n.retained == [1])
    );
    let out = publisher(&server, notify_args(&["--region", "eu"])).await;
    assert!(text(&out).contains("1 node(s) answered"), "{}", text(&out));
    assert!(
        text(&out).contains("region eu: 1 node(s)"),
        "{}",
        text(&out)
    );

    // Node "held" is held on version 1 by its local pin.
    std::fs::write(&pin_file, "1\n").expect("pin file");
    wait_for("the local pin taken", || async {
        snapshot(&agents[2].1).await["pin"]["local"] == true
    })
    .await;
    let out = publish(
        &server,
        &fx,
        "v2",
        Some(&nats.url()),
        &["--wait", "100%", "--wait-timeout", "10s"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("not on version 2: held (default): serves 1"),
        "{t}"
    );
    assert!(t.contains("pinned to 1"), "{t}");
    assert!(
        t.contains("2 of 3 answering node(s) serve version 2"),
        "{t}"
    );
    // The pin lifted, the fleet takes version 3 and --wait says so.
    std::fs::remove_file(&pin_file).expect("unpin");
    let out = publish(
        &server,
        &fx,
        "v3",
        Some(&nats.url()),
        &["--wait", "100%", "--wait-timeout", "30s"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("3 of 3 answering node(s) serve version 3 or newer"),
        "{}",
        text(&out)
    );
}

/// TLS: an agent with `notify = "tls://…"` and `notify_ca` (the test's own
/// CA) connects and hears a push; one without the CA cannot connect and
/// says so in `/v1/snapshot`, serving by polling all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_only_nats_server_is_reached_with_the_configured_ca() {
    let server = S3Server::start().await;
    let fx = Fixture::new();
    let ca = strata_tests::mirror::TestCa::new();
    let nats = NatsServer::start_tls(tmp(), fx.dir.path(), &ca);
    let ca_file = fx.dir.path().join("nats-ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).expect("ca");
    let out = publish(&server, &fx, "v1", None, &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let (_a, trusted) = agent(
        &fx,
        &server,
        &nats.tls_url(),
        "trusting",
        &format!("notify_ca = \"{}\"", ca_file.display()),
    );
    let (_b, untrusting) = agent(
        &fx,
        &server,
        &nats.tls_url(),
        "untrusting",
        "poll_interval = \"1s\"",
    );
    serves(&trusted, 1).await;
    connected(&trusted).await;
    serves(&untrusting, 1).await;
    assert_eq!(snapshot(&untrusting).await["notify"], "disconnected");

    // The publisher reaches it with the same CA (STRATA_NOTIFY_CA).
    let out = publish(
        &server,
        &fx,
        "v2",
        Some(&nats.tls_url()),
        &["--notify-ca", &ca_file.display().to_string()],
    )
    .await;
    assert!(text(&out).contains("told the agents"), "{}", text(&out));
    serves(&trusted, 2).await;
    assert_eq!(pushes(&trusted, "accepted").await, 1);
    // The agent without the CA never connected: it took version 2 by
    // polling, and heard nothing.
    serves(&untrusting, 2).await;
    assert_eq!(pushes(&untrusting, "accepted").await, 0);
    assert_eq!(snapshot(&untrusting).await["notify"], "disconnected");
}
