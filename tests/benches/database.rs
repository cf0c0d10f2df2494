//! The platform's PostgreSQL as the source, measured on a real server the
//! bench starts (tests/src/postgres.rs). Run:
//!
//! ```text
//! TENANTS=100000 cargo bench -p strata-tests --bench database
//! TENANTS=100000 ROWS_1M=1 cargo bench -p strata-tests --bench database   # also 1M rows
//! ```
//!
//! 1. `import` of TENANTS generated tenants, then `validate` and a first
//!    `publish` reading every active row (wall time, peak RSS, from
//!    /usr/bin/time); with ROWS_1M, the same reads over 1M rows (the
//!    tenants copied under new ids, without their phone numbers).
//! 2. `follow` with an agent on the file store: 20 changes committed one
//!    after another (the seed's update: a new row, `is_active` moved), each
//!    timed from its commit to the agent serving it (p50/p99).
//! 3. A burst of 1,000 changes in 10 s: how many publishes carry them, and
//!    when the last is served.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strata_common::generate;
use strata_tests::postgres::Postgres;
use strata_tests::{Agent, Fixture, Proc, bin};

fn main() {
    let tenants: usize = std::env::var("TENANTS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let Some(pg) = Postgres::start() else {
        return;
    };
    pg.load_schema();
    let fx = Fixture::new();
    let src = fx.dir.path().join("source");
    generate::generate(&src, tenants).expect("generate");
    let l1 = src.join("layer1.toml").display().to_string();
    let store = format!("file://{}", fx.store_dir().display());
    let key = fx.key_path.display().to_string();
    let url = pg.url();
    let s = src.display().to_string();
    timed(
        &format!("import {tenants}"),
        &["import", "--source", &s, "--to", &url],
    );
    timed(
        &format!("validate {tenants} rows"),
        &["validate", "--source", &url, "--layer1", &l1],
    );
    timed(
        &format!("publish {tenants} rows (format 3, first)"),
        &[
            "publish", "--source", &url, "--layer1", &l1, "--key", &key, "--store", &store,
            "--init",
        ],
    );
    rt.block_on(follow(&fx, &pg, &l1, &store, tenants));
    if std::env::var_os("ROWS_1M").is_some() {
        one_million(&pg, &l1, tenants);
    }
}

/// Runs the publisher under /usr/bin/time: its wall time and peak RSS.
fn timed(what: &str, args: &[&str]) {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%e s, peak RSS %M KiB"])
        .arg(bin("strata-publisher"))
        .args(args)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what}: {err}{}",
        String::from_utf8_lossy(&out.stdout)
    );
    println!("{what}: {}", err.lines().last().unwrap_or_default());
}

async fn follow(fx: &Fixture, pg: &Postgres, l1: &str, store: &str, tenants: usize) {
    let log = fx.dir.path().join("follow.log");
    let file = std::fs::File::create(&log).expect("log");
    let _follow = Proc(
        Command::new(bin("strata-publisher"))
            .args([
                "follow",
                "--source",
                &pg.url(),
                "--layer1",
                l1,
                "--store",
                store,
            ])
            .args(["--key", &fx.key_path.display().to_string()])
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("follow"),
    );
    // The first batch finds the channel serving this content already.
    let (config, path) = fx.agent_config("a", "poll_interval = \"30s\"");
    let agent = Agent::start(config, path);
    agent.serves(1).await;
    let slugs: Vec<String> = pg
        .sql("SELECT slug FROM tenants ORDER BY slug COLLATE \"C\"")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(slugs.len(), tenants);
    let mut served = Vec::new();
    for i in 0..20 {
        let tenant = &slugs[i * (tenants / 20)];
        pg.new_version(
            tenant,
            "9.0.0",
            " Offer a callback when the queue is long.",
            "{}",
        );
        let t0 = Instant::now();
        wait_version(&agent, tenant, "9.0.0").await;
        served.push(t0.elapsed());
    }
    served.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "follow, {tenants} tenants, commit → served by the agent (20 changes): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        ms(served[served.len() / 2]),
        ms(served[served.len() * 99 / 100]),
        ms(served[served.len() - 1])
    );
    // A burst: 1,000 changes, one transaction each, over 10 s.
    let published = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("published version")
            .count()
    };
    let before = published(&log);
    let start = Instant::now();
    pg.sql(
        "DO $$ DECLARE t uuid; BEGIN \
           FOR t IN SELECT id FROM tenants ORDER BY slug COLLATE \"C\" DESC LIMIT 1000 LOOP \
             INSERT INTO tenant_configurations (tenant_id, version, version_hash, layer2_system_prompt, config, is_active, parent_version_id) \
               SELECT tenant_id, '9.1.0', md5(random()::text), layer2_system_prompt || ' Ask for the best callback time.', config, false, id \
               FROM tenant_configurations WHERE is_active AND tenant_id = t; \
             UPDATE tenant_configurations SET is_active = (version = '9.1.0') WHERE tenant_id = t; \
             COMMIT; \
             PERFORM pg_sleep(0.01); \
           END LOOP; END $$",
    );
    let burst = start.elapsed();
    let last = &slugs[tenants - 1000];
    wait_version(&agent, last, "9.1.0").await;
    let first = &slugs[tenants - 1];
    assert_eq!(version_of(&agent, first).await, "9.1.0");
    println!(
        "follow, burst of 1,000 changes over {:.1} s: {} publish(es); the last served {:.0} ms after the burst ended",
        burst.as_secs_f64(),
        published(&log) - before,
        ms(start.elapsed() - burst)
    );
    if std::env::var_os("STRATA_LOG").is_some() {
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = said.lines().rev().take(40).collect();
        println!(
            "follow's log, last lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    agent.stop().await;
}

async fn version_of(agent: &Agent, tenant: &str) -> String {
    let a = agent.get(&format!("/v1/tenants/{tenant}")).await;
    a.json()["version"].as_str().unwrap_or_default().to_owned()
}

async fn wait_version(agent: &Agent, tenant: &str, version: &str) {
    let start = Instant::now();
    while version_of(agent, tenant).await != version {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{tenant} never reached {version}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// 1M active rows: the tenants copied under new ids (without phone
/// numbers, which belong to one tenant each) until there are 1M.
fn one_million(pg: &Postgres, l1: &str, tenants: usize) {
    let copies = 1_000_000usize.div_ceil(tenants) - 1;
    pg.sql("CREATE TABLE bench_originals AS SELECT id, slug, name FROM tenants");
    for k in 1..=copies {
        pg.sql(&format!(
            "INSERT INTO tenants (id, name, slug) SELECT gen_random_uuid(), name, left(slug, 56) || '-c{k}' FROM bench_originals; \
             INSERT INTO tenant_configurations (tenant_id, version, version_hash, layer2_system_prompt, config, is_active) \
               SELECT n.id, c.version, c.version_hash, c.layer2_system_prompt, c.config - 'phone_numbers' #- '{{model,key_ref}}', true \
               FROM bench_originals o JOIN tenants n ON n.slug = left(o.slug, 56) || '-c{k}' \
               JOIN tenant_configurations c ON c.tenant_id = o.id AND c.is_active"
        ));
    }
    let rows = pg.sql("SELECT count(*) FROM tenant_configurations WHERE is_active");
    timed(
        &format!("validate {rows} rows"),
        &["validate", "--source", &pg.url(), "--layer1", l1],
    );
}
