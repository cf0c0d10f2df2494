//! What an SRE relies on: systemd's notify protocol spoken by the real
//! binary (READY=1 only once a snapshot is served, STATUS= lines, WATCHDOG=1
//! pings), and `/metrics` read by a real Prometheus (OpenMetrics) parser.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_agent::client;
use strata_common::generate;
use strata_tests::{DEADLINE, Fixture, bin};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads notify datagrams until `done` holds for what was read so far (or
/// the deadline passes); returns every message.
fn read_until(sock: &UnixDatagram, seen: &mut Vec<String>, done: impl Fn(&[String]) -> bool) {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while !done(seen) {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out; notify messages so far: {seen:?}"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                seen.push(line.to_owned());
            }
        }
    }
}

#[test]
fn the_agent_speaks_systemd_notify_ready_status_and_watchdog() {
    let fx = Fixture::new();
    let notify = fx.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let (_, config) = fx.agent_config("a", "");
    let _agent = Proc(
        Command::new(bin("strata-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify)
            .env("WATCHDOG_USEC", "400000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agent"),
    );
    // An empty store: a status saying so, pings (the socket answers), and
    // no READY=1.
    let mut seen = Vec::new();
    read_until(&sock, &mut seen, |s| {
        s.iter().any(|l| l == "WATCHDOG=1") && s.iter().any(|l| l.starts_with("STATUS=starting"))
    });
    assert!(!seen.iter().any(|l| l == "READY=1"), "{seen:?}");

    fx.publish("v1", 3);
    read_until(&sock, &mut seen, |s| s.iter().any(|l| l == "READY=1"));
    read_until(&sock, &mut seen, |s| {
        s.iter().any(|l| l == "STATUS=serving version 1 (fresh)")
    });
    fx.publish("v1", 3);
    read_until(&sock, &mut seen, |s| {
        s.iter().any(|l| l == "STATUS=serving version 2 (fresh)")
    });
    assert_eq!(
        seen.iter().filter(|l| *l == "READY=1").count(),
        1,
        "{seen:?}"
    );
}

#[test]
fn ready_comes_from_the_local_snapshot_with_the_store_gone() {
    let fx = Fixture::new();
    fx.publish("v1", 3);
    let (_, config) = fx.agent_config("a", "");
    let notify = fx.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let start = || {
        Proc(
            Command::new(bin("strata-agent"))
                .args(["run", "--config"])
                .arg(&config)
                .env("NOTIFY_SOCKET", &notify)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn agent"),
        )
    };
    let agent = start();
    let mut seen = Vec::new();
    read_until(&sock, &mut seen, |s| s.iter().any(|l| l == "READY=1"));
    drop(agent);
    std::fs::remove_dir_all(fx.store_dir()).expect("the store goes away");
    let _agent = start();
    let mut seen = Vec::new();
    read_until(&sock, &mut seen, |s| s.iter().any(|l| l == "READY=1"));
    read_until(&sock, &mut seen, |s| {
        s.iter().any(|l| l == "STATUS=serving version 1 (stale)")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_with_a_real_prometheus_parser() {
    let fx = Fixture::new();
    fx.publish("v1", 5);
    let agent = fx.start_agent("a", "");
    agent.serves(1).await;
    let id = strata_common::generate::tenant_id(1);
    for path in [
        format!("/v1/tenants/{id}"),
        format!("/v1/tenants/{id}/prompt"),
        "/v1/tenants/nobody-here".to_owned(),
        "/v1/routes/+19999999999".to_owned(),
    ] {
        client::get(&agent.socket, &path).await.expect("lookup");
    }
    let metrics = client::get(&agent.socket, "/metrics")
        .await
        .expect("metrics");
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    agent.stop().await;
    // No tenant id in any label.
    assert!(!text.contains(&id), "{text}");

    let python = strata_tests::python(Path::new(env!("CARGO_TARGET_TMPDIR")));
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write metrics");
    }
    let out = child.wait_with_output().expect("python runs");
    assert!(
        out.status.success(),
        "the parser refused the text:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    for (name, kind) in [
        ("strata_lookups", "counter"),
        ("strata_lookup_duration_seconds", "histogram"),
        ("strata_fetches", "counter"),
        ("strata_checks", "counter"),
        ("strata_applies", "counter"),
        ("strata_apply_duration_seconds", "histogram"),
        ("strata_snapshot_version", "gauge"),
        ("strata_snapshot_age_seconds", "gauge"),
        ("strata_since_last_success_seconds", "gauge"),
        ("strata_bundle_size_bytes", "gauge"),
        ("strata_snapshot_tenants", "gauge"),
        ("strata_pinned", "gauge"),
        ("strata_ready", "gauge"),
        ("strata_state", "gauge"),
        ("strata_node", "gauge"),
    ] {
        assert_eq!(families[name]["type"], kind, "{name}: {families}");
    }
    let sample = |family: &str, labels: serde_json::Value| {
        families[family]["samples"]
            .as_array()
            .and_then(|s| {
                s.iter().find(|s| {
                    s[1] == labels && !s[0].as_str().is_some_and(|n| n.ends_with("_created"))
                })
            })
            .and_then(|s| s[2].as_f64())
    };
    assert_eq!(
        sample(
            "strata_lookups",
            serde_json::json!({"endpoint": "tenant", "status": "200"})
        ),
        Some(1.0),
        "{families}"
    );
    assert_eq!(
        sample(
            "strata_lookups",
            serde_json::json!({"endpoint": "tenant", "status": "404"})
        ),
        Some(1.0),
        "{families}"
    );
    assert_eq!(
        sample("strata_snapshot_version", serde_json::json!({})),
        Some(1.0)
    );
    assert_eq!(
        sample("strata_snapshot_tenants", serde_json::json!({})),
        Some(5.0),
        "{families}"
    );
    assert_eq!(
        sample("strata_state", serde_json::json!({"state": "fresh"})),
        Some(1.0)
    );
    assert_eq!(
        sample("strata_fetches", serde_json::json!({"outcome": "applied"})),
        Some(1.0),
        "{families}"
    );
}

/// GETs `path` over plain HTTP/1.1 at `addr`; the status and the body.
fn tcp_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: strata\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer}"));
    (status, answer)
}

/// `metrics_listen` gives a Prometheus server `/metrics` (and the health
/// checks) over TCP; a tenant's config never leaves the unix socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_over_tcp_only_when_configured_and_nothing_else_is() {
    let fx = Fixture::new();
    fx.publish("v1", 3);
    let plain = fx.start_agent("plain", "");
    plain.serves(1).await;
    assert!(
        plain.get("/v1/snapshot").await.json()["metrics_address"].is_null(),
        "no TCP listener unless configured"
    );
    plain.stop().await;

    let agent = fx.start_agent("scraped", "metrics_listen = \"127.0.0.1:0\"");
    agent.serves(1).await;
    let snapshot = agent.get("/v1/snapshot").await.json();
    let addr = snapshot["metrics_address"]
        .as_str()
        .unwrap_or_else(|| panic!("no metrics_address: {snapshot}"))
        .to_owned();
    let (status, body) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || tcp_get(&addr, "/metrics")
    })
    .await
    .expect("thread");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("strata_ready 1"), "{body}");
    // Joinable by region and channel: alerts per region.
    assert!(
        body.contains("strata_node{region=\"default\",channel=\"stable\",node="),
        "{body}"
    );
    let tenant = generate::tenant_id(0);
    for (path, want) in [
        ("/readyz".to_owned(), 200),
        (format!("/v1/tenants/{tenant}"), 404),
        ("/v1/snapshot".to_owned(), 200),
        (format!("/v1/tenants/{tenant}/prompt"), 404),
    ] {
        let addr = addr.clone();
        let (status, body) = tokio::task::spawn_blocking(move || tcp_get(&addr, &path))
            .await
            .expect("thread");
        assert_eq!(status, want, "{body}");
        if want == 404 {
            assert!(!body.contains("tenant_id"), "{body}");
        }
    }
    agent.stop().await;
}

/// A connection to `addr` from the loopback address `from`.
async fn connect_from(from: [u8; 4], addr: &str) -> tokio::net::TcpStream {
    let target: std::net::SocketAddr = addr.parse().expect("address");
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind(std::net::SocketAddr::from((from, 0)))
        .expect("bind a loopback address");
    s.connect(target).await.expect("connect")
}

/// `GET /metrics` on `metrics_listen` from the loopback address `from`.
async fn scrape_from(from: [u8; 4], addr: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = connect_from(from, addr).await;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("read");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0);
    (status, text)
}

/// 64 half-open connections to `metrics_listen` (an outside attack's) used
/// to delay a scrape by the 10 s header timeout; one address now holds at
/// most 4 connections, and a silent one is closed after 2 s: a scraper from
/// another address is answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_from_one_address_cannot_starve_a_scrape() {
    let fx = Fixture::new();
    fx.publish("v1", 3);
    let agent = fx.start_agent("scraped", "metrics_listen = \"127.0.0.1:0\"");
    agent.serves(1).await;
    let addr = metrics_address(&agent).await;
    let held: Vec<std::net::TcpStream> = (0..64)
        .filter_map(|_| std::net::TcpStream::connect(&addr).ok())
        .collect();
    assert_eq!(held.len(), 64);
    let started = Instant::now();
    let (status, body) = scrape_from([127, 0, 0, 2], &addr).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the scrape took {:?}",
        started.elapsed()
    );
    drop(held);
    agent.stop().await;
}

/// Silent connections from many loopback addresses (4 each, 256 in all)
/// used to fill every slot of `metrics_listen`, so a scrape waited for the
/// header timeout of one of them; a full house now closes the connection
/// that asked least recently, and the scrape is answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_from_many_addresses_cannot_starve_a_scrape() {
    let fx = Fixture::new();
    fx.publish("v1", 3);
    let agent = fx.start_agent("scraped", "metrics_listen = \"127.0.0.1:0\"");
    agent.serves(1).await;
    let addr = metrics_address(&agent).await;
    let mut held = Vec::new();
    for host in 0..64u8 {
        for _ in 0..4 {
            held.push(connect_from([127, 0, 1, host + 1], &addr).await);
        }
    }
    for attempt in 0..3 {
        let started = Instant::now();
        let (status, body) = scrape_from([127, 0, 0, 2], &addr).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "scrape {attempt} took {:?}",
            started.elapsed()
        );
    }
    drop(held);
    agent.stop().await;
}

/// Four silent connections from the scraper's own address (127.0.0.1,
/// where a local Prometheus scrapes from), opened again whenever closed,
/// used to take that address's whole share: every scrape failed. A new
/// connection now closes its address's oldest silent one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_from_the_scraper_s_own_address_cannot_keep_it_out() {
    let fx = Fixture::new();
    fx.publish("v1", 3);
    let agent = fx.start_agent("scraped", "metrics_listen = \"127.0.0.1:0\"");
    agent.serves(1).await;
    let addr = metrics_address(&agent).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let holders: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop) = (addr.clone(), stop.clone());
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut held = connect_from([127, 0, 0, 1], &addr).await;
                    let mut buf = [0u8; 16];
                    // Until the agent closes it (or a deadline): then again.
                    let _ = tokio::time::timeout(Duration::from_secs(5), held.read(&mut buf)).await;
                }
            })
        })
        .collect();
    for attempt in 0..5 {
        let started = Instant::now();
        let (status, body) = scrape_from([127, 0, 0, 1], &addr).await;
        assert_eq!(status, 200, "scrape {attempt}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "scrape {attempt} took {:?}",
            started.elapsed()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in holders {
        h.abort();
    }
    agent.stop().await;
}

/// Where `agent` serves `metrics_listen`, from its `/v1/snapshot`.
async fn metrics_address(agent: &strata_tests::Agent) -> String {
    agent.get("/v1/snapshot").await.json()["metrics_address"]
        .as_str()
        .expect("metrics_address")
        .to_owned()
}

/// The packaged agent.toml lists every key the agent reads, each with its
/// default (a commented line where it is the default), and sets
/// `pin_file`, so `echo 41 > /etc/strata/pin` works on a packaged node.
#[test]
fn the_packaged_config_lists_every_key_and_sets_pin_file() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent.toml");
    let text = std::fs::read_to_string(&path).expect("packaged config");
    assert!(
        text.contains("\npin_file = \"/etc/strata/pin\"\n"),
        "{text}"
    );
    // Every commented default, uncommented, still makes a valid config.
    let mut uncommented = String::new();
    let mut in_tables = false;
    for line in text.lines() {
        in_tables |= line.starts_with('[') || line.starts_with("# [");
        let setting = line
            .strip_prefix("# ")
            // ca_file's line is an example (it has no default, and only an
            // https:// source takes it).
            .filter(|l| {
                !in_tables && l.split_whitespace().nth(1) == Some("=") && !l.starts_with("ca_file")
            })
            .map(|l| l.split(" #").next().unwrap_or(l).trim_end());
        uncommented.push_str(setting.unwrap_or(line));
        uncommented.push('\n');
    }
    let config = strata_agent::config::Config::parse(&uncommented, &path)
        .unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    let fields = serde_json::to_value(&config).expect("serialise");
    for key in fields.as_object().expect("object").keys() {
        assert!(
            text.contains(&format!("\n{key} ="))
                || text.contains(&format!("\n# {key} ="))
                || text.contains(&format!("[[{key}]]"))
                || text.contains(&format!("[{key}]")),
            "agent.toml does not list {key}"
        );
    }
}

/// `check-config` on a config whose file store is missing (a wrong path,
/// an unmounted volume) or holds no such channel says so: the agent would
/// start and wait, which a new SRE took for "ok".
#[test]
fn check_config_names_a_missing_file_store_and_a_missing_channel() {
    let fx = Fixture::new();
    let check = |path: &Path| {
        let out = Command::new(bin("strata-agent"))
            .args(["check-config", "--config"])
            .arg(path)
            .output()
            .expect("run check-config");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (_, path) = fx.agent_config("checked", "");
    let out = check(&path);
    assert!(out.contains("holds no channel stable yet"), "{out}");
    fx.publish("v1", 2);
    let out = check(&path);
    assert!(!out.contains("warning"), "{out}");
    let text = std::fs::read_to_string(&path).expect("config");
    let store = fx.store_dir().display().to_string();
    std::fs::write(&path, text.replace(&store, &format!("{store}-typo"))).expect("write");
    let out = check(&path);
    assert!(out.contains("does not exist (an unmounted volume"), "{out}");
}
