//! The platform's PostgreSQL as the source, against a real server the
//! tests start themselves (tests/src/postgres.rs): import the seed's way,
//! validate and publish from rows, and `follow` (an `is_active` flip and
//! the seed's rollback reaching a running agent, a bad row held back and
//! reported while other tenants' changes go out, a lost connection, two
//! followers, the mass-removal guard).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use strata_common::compile::{self, CompileOptions};
use strata_common::database::{Database, rows};
use strata_common::generate;
use strata_common::pointer::Pointer;
use strata_common::sign::TrustedKeys;
use strata_common::source::{self, Source};
use strata_common::versions;
use strata_tests::postgres::Postgres;
use strata_tests::{DEADLINE, Fixture, Proc, bin};

/// Runs the publisher; its output, whatever its exit.
fn publisher(args: &[&str]) -> std::process::Output {
    Command::new(bin("strata-publisher"))
        .args(args)
        .env_remove("STRATA_SOURCE")
        .output()
        .expect("run publisher")
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `import --source src --to <pg>`: its output.
fn import(pg: &Postgres, src: &Path) -> std::process::Output {
    let src = src.display().to_string();
    publisher(&["import", "--source", &src, "--to", &pg.url()])
}

/// A database holding the schema and `tenants` generated tenants imported
/// from `<fx>/source`.
fn seeded(fx: &Fixture, tenants: usize) -> Option<(Postgres, PathBuf)> {
    let pg = Postgres::start()?;
    pg.load_schema();
    let src = fx.dir.path().join("source");
    generate::generate(&src, tenants).expect("generate");
    let out = import(&pg, &src);
    assert!(out.status.success(), "import: {}", text(&out));
    Some((pg, src))
}

fn layer1(src: &Path) -> String {
    src.join("layer1.toml").display().to_string()
}

/// The slugs of the first `n` tenants.
fn first_tenants(pg: &Postgres, n: usize) -> Vec<String> {
    pg.sql(&format!(
        "SELECT slug FROM tenants ORDER BY slug COLLATE \"C\" LIMIT {n}"
    ))
    .lines()
    .map(str::to_owned)
    .collect()
}

#[test]
fn import_is_the_seeds_way_and_rows_compile_to_what_the_files_hold() {
    let fx = Fixture::new();
    let Some((pg, src)) = seeded(&fx, 300) else {
        return;
    };
    assert_eq!(
        pg.sql("SELECT count(*) FROM tenant_configurations WHERE is_active"),
        "300"
    );
    // Importing again changes nothing.
    let again = import(&pg, &src);
    assert!(
        text(&again).contains("0 new active row(s), 300 unchanged"),
        "{}",
        text(&again)
    );

    // The same snapshot from the rows as from the files (format 2: the
    // payload holds no source hashes).
    let opts = || CompileOptions {
        format: 2,
        ..CompileOptions::default()
    };
    let from_files = compile::compile(&Source::open(&src).expect("source"), opts()).expect("files");
    let db = Database::connect(&pg.url(), None).expect("connect");
    let l1 = source::read_layer1(&src.join("layer1.toml"), &src.canonicalize().expect("dir"))
        .expect("layer1");
    let (rows_source, snapshot) =
        rows::open_snapshot(&db, l1, &mut Default::default()).expect("rows");
    assert_eq!(rows_source.tenants.len(), 300);
    let from_rows = compile::compile(&rows_source, opts()).expect("rows compile");
    snapshot.close().expect("close");
    assert_eq!(from_rows.tenant_count, 300);
    assert_eq!(
        from_rows.payload.sha256, from_files.payload.sha256,
        "same configs, prompts and routes"
    );

    // A changed file: a new row beside the old one, is_active moved to it.
    strata_tests::change_one_tenant(&src, 5);
    let changed = import(&pg, &src);
    assert!(
        text(&changed).contains("1 new active row(s), 299 unchanged"),
        "{}",
        text(&changed)
    );
    let tenant = &first_tenants(&pg, 6)[5];
    let rows = pg.sql(&format!(
        "SELECT c.is_active, c.parent_version_id IS NOT NULL FROM tenant_configurations c JOIN tenants t ON t.id = c.tenant_id \
         WHERE t.slug = '{tenant}' ORDER BY c.created_at, c.is_active"
    ));
    assert_eq!(
        rows, "f|f\nt|t",
        "old row kept inactive, new row active with its parent"
    );

    // validate reads the same rows.
    let out = publisher(&["validate", "--source", &pg.url(), "--layer1", &layer1(&src)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("300 tenant(s) valid"), "{}", text(&out));
}

#[test]
fn bad_rows_are_named_and_quarantine_publishes_the_others() {
    let fx = Fixture::new();
    let Some((pg, src)) = seeded(&fx, 30) else {
        return;
    };
    let t = first_tenants(&pg, 3);
    let store = format!("file://{}", fx.store_dir().display());
    let key = fx.key_path.display().to_string();
    let (url, l1) = (pg.url(), layer1(&src));
    let publish = |extra: &[&str]| {
        let mut args = vec!["publish", "--source", &url, "--layer1", &l1];
        args.extend_from_slice(&["--key", &key, "--store", &store]);
        args.extend_from_slice(extra);
        publisher(&args)
    };
    let first = publish(&["--init"]);
    assert!(first.status.success(), "{}", text(&first));

    // A wrong type, and two active rows for one tenant (neither a canary).
    pg.new_version(
        &t[0],
        "9.0.0",
        "",
        r#"{"generation": {"temperature": "hot"}}"#,
    );
    let bad_row = pg.sql(&format!(
        "SELECT c.id FROM tenant_configurations c JOIN tenants t ON t.id = c.tenant_id WHERE t.slug = '{}' AND c.is_active",
        t[0]
    ));
    pg.sql(&format!(
        "INSERT INTO tenant_configurations (tenant_id, version, version_hash, layer2_system_prompt, config, is_active) \
         SELECT tenant_id, '9.1.0', 'twin', layer2_system_prompt, config, true FROM tenant_configurations \
         WHERE is_active AND tenant_id = (SELECT id FROM tenants WHERE slug = '{}')",
        t[1]
    ));
    let canary_rows = pg.sql(&format!(
        "SELECT c.id FROM tenant_configurations c JOIN tenants t ON t.id = c.tenant_id WHERE t.slug = '{}' AND c.is_active ORDER BY c.id",
        t[1]
    ));
    pg.new_version(
        &t[2],
        "9.0.0",
        " Offer a callback when the queue is long.",
        "{}",
    );

    let out = publisher(&["validate", "--source", &pg.url(), "--layer1", &layer1(&src)]);
    let said = text(&out);
    assert!(!out.status.success());
    assert!(
        said.contains(&format!(
            "tenant_configurations row {bad_row}: tenant {}: generation.temperature",
            t[0]
        )),
        "{said}"
    );
    for row in canary_rows.lines() {
        assert!(said.contains(row), "both active rows are named: {said}");
    }
    assert!(said.contains("2 active rows"), "{said}");

    // A publish refuses the whole source, the channel untouched.
    let refused = publish(&[]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("nothing was written"),
        "{}",
        text(&refused)
    );

    // --quarantine: the valid change goes out, the two held back.
    let out = publish(&["--quarantine"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("published version 2"), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("held back: tenant_configurations row {bad_row}")),
        "{}",
        text(&out)
    );
    let problems = pg.sql(
        "SELECT tenant || '|' || field FROM strata_publish_problems ORDER BY tenant COLLATE \"C\"",
    );
    assert_eq!(
        problems,
        format!("{}|generation.temperature\n{}|", t[0], t[1]),
        "the held-back tenants' problems are where the dashboard reads them"
    );

    // A tenant that takes a later tenant's number is held back; the
    // number stays with the tenant the channel gives it to.
    let t = first_tenants(&pg, 5);
    let (earlier, later) = (&t[3], &t[4]);
    let number = pg.sql(&format!(
        "SELECT c.config->'phone_numbers'->>0 FROM tenant_configurations c JOIN tenants t ON t.id = c.tenant_id \
         WHERE t.slug = '{later}' AND c.is_active"
    ));
    let numbers = pg.sql(&format!(
        "SELECT (c.config->'phone_numbers') || '[\"{number}\"]'::jsonb FROM tenant_configurations c \
         JOIN tenants t ON t.id = c.tenant_id WHERE t.slug = '{earlier}' AND c.is_active"
    ));
    pg.new_version(
        earlier,
        "9.0.0",
        "",
        &format!(r#"{{"phone_numbers": {numbers}}}"#),
    );
    let out = publish(&["--quarantine"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("published version 3"), "{}", text(&out));
    let held = pg.sql(&format!(
        "SELECT field FROM strata_publish_problems WHERE tenant = '{earlier}'"
    ));
    assert!(held.starts_with("phone_numbers"), "{held}");
    let trust = TrustedKeys::for_publisher(std::slice::from_ref(&fx.key), &[]);
    let store = fx.store();
    let (head, _) = Pointer::read_channel(&store, "stable", &trust)
        .expect("channel")
        .expect("a head");
    let owners = versions::served_owners(&store, &head, &trust).expect("routes");
    assert_eq!(
        owners.get(&number),
        Some(later),
        "the number stays with {later}"
    );
}

#[test]
fn tls_to_the_database_is_verified() {
    let ca = strata_tests::mirror::TestCa::new();
    let Some(pg) = Postgres::start_tls(&ca) else {
        return;
    };
    pg.load_schema();
    let fx = Fixture::new();
    let src = fx.dir.path().join("source");
    generate::generate(&src, 5).expect("generate");
    let ca_file = fx.dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).expect("ca");
    let url = format!(
        "postgres://postgres@localhost:{}/strata?sslmode=require",
        pg.port
    );
    let l1 = layer1(&src);
    let ca_path = ca_file.display().to_string();
    // Trusted through --database-ca: TLS, verified.
    let src_s = src.display().to_string();
    let out = publisher(&[
        "import",
        "--source",
        &src_s,
        "--to",
        &url,
        "--database-ca",
        &ca_path,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = publisher(&[
        "validate",
        "--source",
        &url,
        "--layer1",
        &l1,
        "--database-ca",
        &ca_path,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // The server refuses plain connections: the one above was TLS.
    let plain = url.replace("sslmode=require", "sslmode=disable");
    let out = publisher(&["validate", "--source", &plain, "--layer1", &l1]);
    assert!(!out.status.success(), "{}", text(&out));
    // The system's roots do not know the test CA: refused, and said so.
    let out = publisher(&["validate", "--source", &url, "--layer1", &l1]);
    assert!(!out.status.success());
    assert!(text(&out).contains("cannot connect"), "{}", text(&out));
    assert!(
        text(&out).to_lowercase().contains("certificate"),
        "{}",
        text(&out)
    );
}

/// A `follow` process; its log in `<dir>/<name>.log`.
struct Follower {
    _proc: Proc,
    log: PathBuf,
}

impl Follower {
    fn start(fx: &Fixture, pg: &Postgres, src: &Path, name: &str) -> Self {
        let log = fx.dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log");
        let child = Command::new(bin("strata-publisher"))
            .args(["follow", "--source", &pg.url(), "--layer1", &layer1(src)])
            .args(["--key", &fx.key_path.display().to_string()])
            .args(["--store", &format!("file://{}", fx.store_dir().display())])
            .args([
                "--init",
                "--metrics-addr",
                "127.0.0.1:0",
                "--debounce",
                "50ms",
            ])
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn follow");
        Self {
            _proc: Proc(child),
            log,
        }
    }

    fn said(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its log holds `what`.
    fn wait_for(&self, what: &str) {
        let start = Instant::now();
        while !self.said().contains(what) {
            assert!(
                start.elapsed() < DEADLINE,
                "follow never said {what:?}:\n{}",
                self.said()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// `GET /metrics` of its metrics listener.
    fn metrics(&self) -> String {
        self.wait_for("metrics on http://");
        let said = self.said();
        let addr = said
            .split("metrics on http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .expect("address");
        let mut s = std::net::TcpStream::connect(addr).expect("metrics connect");
        use std::io::{Read, Write};
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("read");
        body
    }
}

/// The version the agent serves tenant `id` at (`""` while it does not).
/// The seed's canary: a second active row of `tenant`, version `version`,
/// with `canary_percent` set.
fn start_canary(pg: &Postgres, tenant: &str, version: &str, percent: u32, config: &str) {
    pg.sql(&format!(
        "INSERT INTO tenant_configurations (tenant_id, version, version_hash, layer2_system_prompt, config, is_active, canary_percent) \
         SELECT tenant_id, '{version}', 'canary', layer2_system_prompt, config || '{config}'::jsonb, true, {percent} \
         FROM tenant_configurations WHERE is_active AND tenant_id = (SELECT id FROM tenants WHERE slug = '{tenant}')"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_row_answers_its_share_of_sessions() {
    let fx = Fixture::new();
    let Some((pg, src)) = seeded(&fx, 20) else {
        return;
    };
    let t = first_tenants(&pg, 2);
    let store = format!("file://{}", fx.store_dir().display());
    let key = fx.key_path.display().to_string();
    let (url, l1) = (pg.url(), layer1(&src));
    let publish = || {
        publisher(&[
            "publish", "--init", "--source", &url, "--layer1", &l1, "--key", &key, "--store",
            &store,
        ])
    };
    start_canary(&pg, &t[0], "9.0.0", 10, "{}");
    let out = publish();
    assert!(out.status.success(), "{}", text(&out));
    let agent = fx.start_agent("a", "");
    agent.serves(1).await;
    let arms = |percent: u32| {
        let agent = &agent;
        let id = t[0].clone();
        async move {
            let mut canary = 0;
            for i in 0..400 {
                let a = agent
                    .get(&format!("/v1/tenants/{id}?session=call-{i}"))
                    .await;
                let arm = a.header("x-strata-arm").unwrap_or_default().to_owned();
                assert_eq!(
                    arm == "canary",
                    a.json()["version"] == "9.0.0",
                    "at {percent} %"
                );
                canary += usize::from(arm == "canary");
            }
            canary
        }
    };
    let at10 = arms(10).await;
    assert!((10..=70).contains(&at10), "{at10} of 400 at 10 %");
    assert_ne!(
        tenant_version(&agent, &t[0]).await,
        "9.0.0",
        "no session: stable"
    );
    // The seed's promotion: canary_percent to 100.
    pg.sql(&format!(
        "UPDATE tenant_configurations SET canary_percent = 100 WHERE canary_percent IS NOT NULL \
         AND tenant_id = (SELECT id FROM tenants WHERE slug = '{}')",
        t[0]
    ));
    let out = publish();
    assert!(out.status.success(), "{}", text(&out));
    agent.serves(2).await;
    assert_eq!(arms(100).await, 400);
    // A canary row that fails validation is named by its row.
    start_canary(
        &pg,
        &t[1],
        "9.0.0",
        5,
        r#"{"generation": {"temperature": 9}}"#,
    );
    let out = publisher(&["validate", "--source", &url, "--layer1", &l1]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("tenant_configurations row")
            && said.contains(&format!("tenant {}: generation.temperature", t[1])),
        "{said}"
    );
    agent.stop().await;
}

async fn tenant_version(agent: &strata_tests::Agent, id: &str) -> String {
    let a = agent.get(&format!("/v1/tenants/{id}")).await;
    a.json()["version"].as_str().unwrap_or_default().to_owned()
}

async fn serves_tenant(agent: &strata_tests::Agent, id: &str, version: &str) {
    strata_tests::wait_for(&format!("tenant {id} at {version}"), || async {
        tenant_version(agent, id).await == version
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_publishes_flips_rollbacks_and_holds_back_bad_rows() {
    let fx = Fixture::new();
    let Some((pg, src)) = seeded(&fx, 200) else {
        return;
    };
    let t = first_tenants(&pg, 5);
    let follower = Follower::start(&fx, &pg, &src, "follow");
    follower.wait_for("published version 1");
    let agent = fx.start_agent("a", "");
    agent.serves(1).await;
    let was = tenant_version(&agent, &t[0]).await;

    // The seed's update: a new row, is_active moved to it.
    pg.new_version(
        &t[0],
        "9.0.0",
        " Offer a callback when the queue is long.",
        "{}",
    );
    serves_tenant(&agent, &t[0], "9.0.0").await;
    // The seed's rollback: is_active back on the old row.
    pg.sql(&format!(
        "UPDATE tenant_configurations SET is_active = (version = '{was}') WHERE tenant_id = (SELECT id FROM tenants WHERE slug = '{}')",
        t[0]
    ));
    serves_tenant(&agent, &t[0], &was).await;

    // A bad row for t[1] and a good one for t[2] in one burst: t[2] goes
    // out, t[1] stays on its config and its problem is reported.
    let t1_was = tenant_version(&agent, &t[1]).await;
    pg.new_version(
        &t[1],
        "9.0.0",
        "",
        r#"{"generation": {"temperature": "hot"}}"#,
    );
    pg.new_version(
        &t[2],
        "9.0.0",
        " Offer a callback when the queue is long.",
        "{}",
    );
    serves_tenant(&agent, &t[2], "9.0.0").await;
    assert_eq!(
        tenant_version(&agent, &t[1]).await,
        t1_was,
        "the bad row is held back"
    );
    let problem = pg.sql("SELECT tenant, version, field FROM strata_publish_problems");
    assert_eq!(problem, format!("{}|9.0.0|generation.temperature", t[1]));
    // Its next valid row clears it.
    pg.new_version(
        &t[1],
        "9.1.0",
        "",
        r#"{"generation": {"temperature": 0.5}}"#,
    );
    serves_tenant(&agent, &t[1], "9.1.0").await;
    strata_tests::wait_for("the problem cleared", || async {
        pg.sql("SELECT count(*) FROM strata_publish_problems") == "0"
    })
    .await;

    // A lost connection: the change made meanwhile goes out after it.
    assert_eq!(pg.drop_publisher_connections(), "1");
    pg.new_version(
        &t[3],
        "9.0.0",
        " Offer a callback when the queue is long.",
        "{}",
    );
    serves_tenant(&agent, &t[3], "9.0.0").await;
    assert!(
        follower.said().contains("reconnecting"),
        "{}",
        follower.said()
    );

    // Deactivating every row of many tenants is held by the removal guard.
    let served = agent.get("/v1/snapshot").await.json()["version"].clone();
    pg.sql("UPDATE tenant_configurations SET is_active = false WHERE tenant_id IN (SELECT id FROM tenants ORDER BY slug LIMIT 100)");
    follower.wait_for("batch refused");
    assert_eq!(agent.get("/v1/snapshot").await.json()["version"], served);

    let metrics = follower.metrics();
    assert!(
        metrics.contains("strata_follow_batches_total{outcome=\"published\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("strata_follow_batches_total{outcome=\"refused\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("strata_follow_leader 1"), "{metrics}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_followers_never_both_publish() {
    let fx = Fixture::new();
    let Some((pg, src)) = seeded(&fx, 50) else {
        return;
    };
    let t = first_tenants(&pg, 3);
    let a = Follower::start(&fx, &pg, &src, "a");
    a.wait_for("published version 1");
    let b = Follower::start(&fx, &pg, &src, "b");
    b.wait_for("standing by");
    let agent = fx.start_agent("agent", "");
    agent.serves(1).await;
    pg.new_version(
        &t[0],
        "9.0.0",
        " Offer a callback when the queue is long.",
        "{}",
    );
    serves_tenant(&agent, &t[0], "9.0.0").await;
    assert!(
        !b.said().contains("published"),
        "the standby published: {}",
        b.said()
    );
    // The leader goes; the other takes over and publishes the next change.
    drop(a);
    b.wait_for("leading");
    pg.new_version(
        &t[1],
        "9.0.0",
        " Offer a callback when the queue is long.",
        "{}",
    );
    serves_tenant(&agent, &t[1], "9.0.0").await;
    agent.stop().await;
}
