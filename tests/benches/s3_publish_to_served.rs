//! Publish → served on S3, fleet-sized: 20 agent processes poll the
//! in-process S3 protocol server every second (±20 % jitter, as configured
//! in production: `poll_interval = "1s"`); the publisher process moves the
//! pointer; each agent's latency is from the server answering the pointer's
//! PUT to that agent's "snapshot applied" log line. Then the idle polls:
//! requests per agent and second, bytes on the wire per request.
//!
//! Run: `cargo bench -p strata-tests --bench s3_publish_to_served`
//! (`RUNS=N` publishes, default 10; `AGENTS=N`, default 20).
//!
//! With `NOTIFY=1` a real nats-server runs too: agents listen on it
//! (`notify`, no `poll_interval`: the one-minute safety poll, and
//! `notify_spread` = `SPREAD`, default `100ms`), each publish tells them
//! (`--notify`), and the bench also times a status request until every
//! agent has answered.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use strata_common::sign;
use strata_tests::s3::{BUCKET, S3Server};
use strata_tests::{Fixture, bin, change_one_tenant};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let notify = std::env::var("NOTIFY").is_ok_and(|v| v == "1");
    rt.block_on(run(env_usize("AGENTS", 20), env_usize("RUNS", 10), notify));
}

/// The wall-clock time of the first log line of `log` at or after `from`
/// that contains `needle` (tracing's text format starts with an RFC 3339
/// timestamp).
fn logged_at(log: &Path, needle: &str) -> Option<SystemTime> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains(needle))?;
    let stamp = line.split_whitespace().next()?;
    humantime::parse_rfc3339(stamp).ok()
}

async fn run(agents: usize, runs: usize, notify: bool) {
    let server = S3Server::start().await;
    let nats = notify
        .then(|| strata_tests::nats::NatsServer::start(Path::new(env!("CARGO_TARGET_TMPDIR"))));
    let nats_url = nats.as_ref().map(|n| n.url());
    let spread = std::env::var("SPREAD").unwrap_or_else(|_| "100ms".to_owned());
    let agent_lines = match &nats_url {
        Some(u) => {
            format!("notify = \"{u}\"\nstore_id = \"bench\"\nnotify_spread = \"{spread}\"\n")
        }
        None => "poll_interval = \"1s\"\n".to_owned(),
    };
    let notify_args: Vec<String> = match &nats_url {
        Some(u) => vec![
            "--notify".into(),
            u.clone(),
            "--store-id".into(),
            "bench".into(),
        ],
        None => Vec::new(),
    };
    let fx = Fixture::new();
    let url = format!("s3://{BUCKET}/bench");
    let (source, _) = fx.compile("bench", 1000);
    let publish = |env: Vec<(&'static str, String)>, source: PathBuf| {
        let (key, url) = (fx.key_path.clone(), url.clone());
        let notify_args = notify_args.clone();
        tokio::task::spawn_blocking(move || {
            let out = Command::new(bin("strata-publisher"))
                .envs(env)
                .arg("publish")
                .arg("--init")
                .arg("--source")
                .arg(source)
                .arg("--key")
                .arg(key)
                .args(["--store", &url])
                .args(notify_args)
                .output()
                .expect("publisher");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        })
    };
    publish(server.env(), source.clone())
        .await
        .expect("publish");

    let mut procs = Vec::new();
    let mut logs = Vec::new();
    for i in 0..agents {
        let name = format!("a{i}");
        let config = fx.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "source = \"{url}\"\n{agent_lines}data_dir = \"{data}\"\nsocket = \"{sock}\"\nnode_id = \"{name}\"\n[[trusted_keys]]\nrole = \"publisher\"\npath = \"{key}\"\n",
                data = fx.dir.path().join(format!("{name}-data")).display(),
                sock = fx.dir.path().join(format!("{name}.sock")).display(),
                key = sign::public_path(&fx.key_path).display(),
            ),
        )
        .expect("config");
        let log = fx.dir.path().join(format!("{name}.log"));
        let child = Command::new(bin("strata-agent"))
            .envs(server.env())
            .env("STRATA_LOG", "info")
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("agent");
        procs.push(Proc(child));
        logs.push(log);
    }
    let wait_all = |version: u64| {
        let logs = logs.clone();
        async move {
            let needle = format!("snapshot applied version={version} ");
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let times: Vec<_> = logs.iter().map(|l| logged_at(l, &needle)).collect();
                if times.iter().all(Option::is_some) {
                    return times.into_iter().flatten().collect::<Vec<_>>();
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "agents did not all apply version {version}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_all(1).await;

    let mut latencies = Vec::new();
    for run in 0..runs {
        let version = run as u64 + 2;
        change_one_tenant(&source, run);
        server.control.reset();
        publish(server.env(), source.clone())
            .await
            .expect("publish");
        let moved = server
            .control
            .requests_to("channels/stable.json")
            .into_iter()
            .find(|r| r.method == "PUT" && r.status == 200)
            .map(|r| r.at)
            .expect("the pointer's PUT");
        for served in wait_all(version).await {
            let latency = served.duration_since(moved).unwrap_or_default();
            latencies.push(latency.as_secs_f64());
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize] * 1e3;
    let how = if notify {
        format!("told over NATS (notify_spread {spread}, safety poll 60 s)")
    } else {
        "polling every 1 s".to_owned()
    };
    println!(
        "publish -> served on S3, {agents} agents {how}, 1,000 tenants, one changed per publish, {runs} publishes ({} samples): p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        latencies.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );

    if let Some(u) = &nats_url {
        status_round_trip(u, agents).await;
    }

    // Idle: nothing published; every poll should be one conditional GET.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.control.reset();
    let idle = Duration::from_secs(env_usize("IDLE_SECS", 10) as u64);
    tokio::time::sleep(idle).await;
    let seen = server.control.seen.lock().expect("seen").clone();
    let polls = seen.len().max(1) as u64;
    let not_modified = seen.iter().filter(|r| r.status == 304).count();
    let bytes_in = server.control.bytes_in.load(Ordering::Relaxed);
    let bytes_out = server.control.bytes_out.load(Ordering::Relaxed);
    println!(
        "idle: {} requests in {} s from {agents} agents ({:.2} per agent per second), {not_modified} answered 304; per request {} bytes in, {} bytes out, {} in all",
        seen.len(),
        idle.as_secs(),
        seen.len() as f64 / idle.as_secs_f64() / agents as f64,
        bytes_in / polls,
        bytes_out / polls,
        (bytes_in + bytes_out) / polls
    );
    drop(procs);
}

/// Times a status request on `url` until all `agents` have answered.
async fn status_round_trip(url: &str, agents: usize) {
    use futures_util::StreamExt as _;
    let client = async_nats::connect(url).await.expect("nats");
    let subject = strata_common::notify::status_subject("bench").expect("subject");
    for round in 0..3 {
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await.expect("subscribe");
        let started = std::time::Instant::now();
        client
            .publish_with_reply(subject.clone(), inbox, Vec::new().into())
            .await
            .expect("request");
        let mut got = 0;
        while got < agents {
            match tokio::time::timeout(Duration::from_secs(5), replies.next()).await {
                Ok(Some(_)) => got += 1,
                _ => break,
            }
        }
        println!(
            "status round {round}: {got} of {agents} agents answered in {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
    }
}
