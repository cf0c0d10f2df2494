//! Format 3 on the in-process S3 server, bytes counted at the server: a
//! new agent's cold start on a 100k-tenant format 3 snapshot, then a
//! one-tenant and a 1 % publish, each with the bytes the server sent the
//! agent (everything it sent while the agent applied) and the agent's
//! pointer → served seconds (its "snapshot applied" line).
//!
//! Run: `cargo bench -p strata-tests --bench s3_format3` (`TENANTS=N`,
//! default 100,000; `LATENCY_MS=N` answers each object GET of the agent's
//! N ms late, as a remote store's time to first byte; `AGENT_BIN=PATH`
//! runs that agent).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

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

fn main() {
    let tenants = std::env::var("TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(tenants));
}

/// The `key=value` of the agent's "snapshot applied version=V" line.
fn applied(log: &Path, version: u64, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .find(|l| l.contains(&format!("snapshot applied version={version} ")))?;
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    Some(line[at..].split_whitespace().next()?.to_owned())
}

async fn run(tenants: usize) {
    let server = S3Server::start().await;
    let fx = Fixture::new();
    let url = format!("s3://{BUCKET}/bench");
    let source = fx.dir.path().join("source");
    strata_common::generate::generate(&source, tenants).expect("generate");
    // Built (if need be) before anything is timed.
    // `AGENT_BIN` runs another agent build (an A/B of the cold start).
    let (publisher, agent) = (
        bin("strata-publisher"),
        std::env::var_os("AGENT_BIN").map_or_else(|| bin("strata-agent"), Into::into),
    );
    let publish = |source: &Path| {
        let started = std::time::Instant::now();
        let out = Command::new(&publisher)
            .envs(server.env())
            .args(["publish", "--init", "--format", "3", "--source"])
            .arg(source)
            .arg("--key")
            .arg(&fx.key_path)
            .args(["--store", &url])
            .output()
            .expect("publisher");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        started.elapsed().as_secs_f64()
    };
    let secs = publish(&source);
    let sent = server.control.bytes_in.load(Ordering::Relaxed);
    println!(
        "{tenants} tenants: format 3 publish to S3 {secs:.2} s, {sent} bytes received by the server"
    );
    let config = fx.dir.path().join("a.toml");
    std::fs::write(
        &config,
        format!(
            "source = \"{url}\"\npoll_interval = \"200ms\"\ndata_dir = \"{data}\"\nsocket = \"{sock}\"\n[[trusted_keys]]\nrole = \"publisher\"\npath = \"{key}\"\n",
            data = fx.dir.path().join("a-data").display(),
            sock = fx.dir.path().join("a.sock").display(),
            key = sign::public_path(&fx.key_path).display(),
        ),
    )
    .expect("config");
    let log = fx.dir.path().join("a.log");
    server.control.reset();
    let latency = std::env::var("LATENCY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0u64);
    server
        .control
        .object_latency_ms
        .store(latency, Ordering::Relaxed);
    if latency > 0 {
        println!("object GETs answered {latency} ms late");
    }
    let _agent = Proc(
        Command::new(&agent)
            .envs(server.env())
            .env("STRATA_LOG", "info")
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("agent"),
    );
    let wait = |version: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        while applied(&log, version, "seconds").is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "version {version} not applied"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait(1);
    let report = |what: &str, version: u64| {
        println!(
            "{what}: agent served {} s after reading the pointer, fetched {} object bytes; the server sent {} bytes in all (pointer polls included)",
            applied(&log, version, "seconds").unwrap_or_default(),
            applied(&log, version, "bytes_fetched").unwrap_or_default(),
            server.control.bytes_out.load(Ordering::Relaxed),
        );
    };
    report("cold start", 1);
    let mut version = 1;
    for (what, changed) in [("1 tenant changed", 1), ("1 % changed", tenants / 100)] {
        for i in 0..changed {
            change_one_tenant(&source, i * (tenants / changed.max(1)) + version as usize);
        }
        version += 1;
        server.control.reset();
        let secs = publish(&source);
        wait(version);
        println!(
            "{what}: publish {secs:.2} s, {} bytes received by the server",
            server.control.bytes_in.load(Ordering::Relaxed)
        );
        report(what, version);
    }
}
