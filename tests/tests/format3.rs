//! Format 3 end to end, through the real publisher and an agent: a publish
//! uploads, and a node fetches, what changed; a node that skips versions
//! or holds nothing gets the whole snapshot; a damaged or missing object is
//! refused with the served snapshot untouched, and retried.

use std::path::{Path, PathBuf};
use std::process::Command;

use strata_tests::{Agent, Fixture, bin, change_one_tenant};

fn publish(fx: &Fixture, src: &Path) {
    publish_with(fx, src, &[]);
}

fn publish_with(fx: &Fixture, src: &Path, extra: &[&str]) -> String {
    let mut args = vec!["--format", "3"];
    args.extend_from_slice(extra);
    fx.publish_source(src, &args)
}

fn source(fx: &Fixture, tenants: usize) -> PathBuf {
    let dir = fx.dir.path().join("source");
    strata_common::generate::generate(&dir, tenants).expect("generate");
    dir
}

/// Every object file of the store, by path.
fn objects(fx: &Fixture) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let root = fx.store_dir().join("objects");
    for prefix in std::fs::read_dir(&root).expect("objects").flatten() {
        for f in std::fs::read_dir(prefix.path()).expect("prefix").flatten() {
            out.push((f.path(), f.metadata().expect("meta").len()));
        }
    }
    out.sort();
    out
}

/// The agent's count of object bytes it fetched.
async fn fetched_bytes(agent: &Agent) -> u64 {
    let metrics = agent.get("/metrics").await;
    String::from_utf8_lossy(&metrics.body)
        .lines()
        .find_map(|l| l.strip_prefix("strata_fetched_object_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("strata_fetched_object_bytes_total")
}

async fn tenant_version(agent: &Agent, id: &str) -> String {
    let a = agent.get(&format!("/v1/tenants/{id}")).await;
    a.json()["version"].as_str().unwrap_or_default().to_owned()
}

/// The source's tenant ids, sorted.
fn tenant_ids(src: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(src.join("tenants"))
        .expect("tenants")
        .flatten()
        .filter_map(|e| {
            e.path()
                .file_stem()
                .and_then(|s| s.to_str())
                .map(str::to_owned)
        })
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_tenant_publish_costs_a_node_one_chunk_and_one_page() {
    let fx = Fixture::new();
    let src = source(&fx, 3000);
    publish(&fx, &src);
    let agent = fx.start_agent("a", "");
    agent.serves(1).await;
    let cold = fetched_bytes(&agent).await;
    let total: u64 = objects(&fx).iter().map(|(_, n)| n).sum();
    assert_eq!(cold, total, "a new node fetches every object once");

    let before = objects(&fx);
    change_one_tenant(&src, 0);
    publish(&fx, &src);
    let after = objects(&fx);
    let new: Vec<_> = after.iter().filter(|o| !before.contains(o)).collect();
    assert_eq!(
        new.len(),
        2,
        "the publish uploaded one chunk and one page: {new:?}"
    );
    agent.serves(2).await;
    let id = tenant_ids(&src).remove(0);
    assert_eq!(tenant_version(&agent, &id).await, "9.9.0");
    let warm = fetched_bytes(&agent).await - cold;
    let new_bytes: u64 = new.iter().map(|(_, n)| n).sum();
    assert_eq!(warm, new_bytes, "the node fetched exactly the new objects");
    assert!(warm * 100 < total, "{warm} of {total} bytes");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_skips_versions_applies_the_newest_and_a_new_node_gets_it_whole() {
    let fx = Fixture::new();
    let src = source(&fx, 1500);
    publish(&fx, &src);
    let a = fx.start_agent("a", "");
    a.serves(1).await;
    a.stop().await;
    for i in 1..=4 {
        change_one_tenant(&src, i * 300);
        publish(&fx, &src);
    }
    // Back after four publishes: 1 → 5 in one apply.
    let a = fx.start_agent("a", "");
    a.serves(5).await;
    let fresh = fx.start_agent("b", "");
    fresh.serves(5).await;
    for agent in [&a, &fresh] {
        let s = agent.get("/v1/snapshot").await.json();
        assert_eq!(s["tenant_count"], 1500, "{s}");
    }
    // Both serve the same bytes.
    let mut ids: Vec<_> = std::fs::read_dir(src.join("tenants"))
        .expect("tenants")
        .flatten()
        .filter_map(|e| {
            e.path()
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .collect();
    ids.sort();
    for id in ids.iter().step_by(150) {
        let x = a.get(&format!("/v1/tenants/{id}")).await;
        let y = fresh.get(&format!("/v1/tenants/{id}")).await;
        assert_eq!(x.body, y.body, "{id}");
    }
    a.stop().await;
    fresh.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_or_missing_chunk_is_refused_and_the_served_snapshot_stays_until_it_is_repaired()
{
    let fx = Fixture::new();
    let src = source(&fx, 1000);
    publish(&fx, &src);
    let agent = fx.start_agent("a", "");
    agent.serves(1).await;
    // Stopped while the next version is published and damaged, so that
    // it meets the damage (it restarts serving version 1 from its file).
    agent.stop().await;
    let before = objects(&fx);
    change_one_tenant(&src, 0);
    publish(&fx, &src);
    let new: Vec<_> = objects(&fx)
        .into_iter()
        .filter(|o| !before.contains(o))
        .collect();
    // The bigger new object is the chunk; damage it.
    let (chunk, _) = new
        .iter()
        .max_by_key(|(_, n)| *n)
        .expect("a new chunk")
        .clone();
    let good = std::fs::read(&chunk).expect("read chunk");
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    std::fs::write(&chunk, &bad).expect("damage");
    let agent = fx.start_agent("a", "");
    agent
        .wait_until("the damaged chunk is refused", "/v1/snapshot", |a| {
            a.json()["last_error_reason"] == "object_hash_mismatch"
        })
        .await;
    assert_eq!(agent.get("/v1/snapshot").await.json()["version"], 1);
    // Missing: a transient failure, retried.
    std::fs::remove_file(&chunk).expect("remove");
    agent
        .wait_until("the missing chunk is reported", "/v1/snapshot", |a| {
            a.json()["last_error_reason"] == "object_unavailable"
        })
        .await;
    assert_eq!(agent.get("/v1/snapshot").await.json()["version"], 1);
    std::fs::write(&chunk, &bad).expect("damage again");
    // The repair: a full publish of the same source reads every object
    // back and writes the damaged one again (a plain publish keeps it:
    // its name says it is there).
    let out = publish_with(&fx, &src, &["--full"]);
    assert!(out.contains("1 damaged"), "{out}");
    assert_eq!(std::fs::read(&chunk).expect("chunk"), good);
    agent.serves(3).await;
    agent.stop().await;
}

fn gc(fx: &Fixture, args: &[&str]) -> String {
    let out = Command::new(bin("strata-publisher"))
        .args(["gc", "--store"])
        .arg(format!("file://{}", fx.store_dir().display()))
        .args(args)
        .output()
        .expect("run gc");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "gc: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_keeps_a_publish_in_flight_and_deletes_only_what_no_snapshot_reaches() {
    use strata_common::bundle::tree;
    use strata_common::channel::{self, PublishOptions};
    use strata_common::compile::{self, CompileOptions};
    use strata_common::sign::TrustedKeys;
    use strata_common::source::Source;

    let fx = Fixture::new();
    let src = source(&fx, 1000);
    publish(&fx, &src);
    let v1 = objects(&fx);
    // A publish in flight: its objects are uploaded, its root not yet.
    change_one_tenant(&src, 0);
    let trust = TrustedKeys::for_publisher(std::slice::from_ref(&fx.key), &[]);
    let present = strata_common::versions::served_objects(&fx.store(), 1, &trust)
        .expect("served objects")
        .expect("format 3");
    let compiled = compile::compile(
        &Source::open(&src).expect("source"),
        CompileOptions {
            format: 3,
            dictionary: present.dictionary.clone(),
            ..CompileOptions::default()
        },
    )
    .expect("compile");
    let up = tree::upload(&fx.store(), &compiled.objects, &present.objects, false).expect("upload");
    assert_eq!(up.objects, 2);
    let out = gc(&fx, &["--keep", "1"]);
    assert!(out.contains("0 unreferenced deleted"), "{out}");
    assert!(
        out.contains("2 unreferenced kept for the grace period"),
        "{out}"
    );
    // The publish completes: nothing it uploaded is gone.
    let opts = PublishOptions {
        present: present.objects,
        ..PublishOptions::for_channel("stable")
    };
    channel::publish(&fx.store(), &compiled, std::slice::from_ref(&fx.key), &opts)
        .expect("publish");
    // Version 1's bundle goes, and then the two objects only it reached.
    let out = gc(&fx, &["--keep", "1", "--grace", "0s"]);
    assert!(out.contains("2 unreferenced deleted"), "{out}");
    let now = objects(&fx);
    assert_eq!(v1.iter().filter(|o| !now.contains(o)).count(), 2);
    let agent = fx.start_agent("fresh", "");
    agent.serves(2).await;
    assert_eq!(agent.get("/v1/snapshot").await.json()["tenant_count"], 1000);
    agent.stop().await;
}

/// Publishes `src` (format 3) with the publisher's log on; returns what it
/// printed.
fn publish_logged(fx: &Fixture, src: &Path) -> String {
    fx.publish_source_with(src, &["--format", "3"], &[("STRATA_LOG", "info")])
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incremental_publish_reads_only_changed_files_and_misses_no_edit() {
    let fx = Fixture::new();
    let src = source(&fx, 300);
    // The source hash cache keeps a file only once its times are
    // hash_cache::SETTLED old (a write after the hash must change them):
    // wait for the generated files to be, as a checkout's are by the time
    // anyone publishes from it.
    let settled = std::time::SystemTime::now()
        + strata_common::source::hash_cache::SETTLED
        + std::time::Duration::from_millis(200);
    while std::time::SystemTime::now() < settled {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    publish_logged(&fx, &src);
    let agent = fx.start_agent("a", "");
    agent.serves(1).await;
    let ids = tenant_ids(&src);
    // An edit made right after the cache was written: its status changed,
    // so it is read. The second time, the file edited the first time is
    // read too: it was written too shortly before that publish to be kept.
    for (version, i, unchanged) in [(2, 7, 299), (3, 8, 298)] {
        change_one_tenant(&src, i);
        let out = publish_logged(&fx, &src);
        let line =
            format!("{unchanged} of 300 tenant files unchanged since it was written (not read)");
        assert!(out.contains(&line), "{out}");
        agent.serves(version).await;
        assert_eq!(
            tenant_version(&agent, &ids[i]).await,
            format!("9.9.{i}"),
            "tenant {}",
            ids[i]
        );
    }
    // A cache that cannot be written (a full disk, a file in the way of
    // its directory) costs the next publish its reads, not the publish.
    let blocked = fx.dir.path().join("not-a-dir");
    std::fs::write(&blocked, b"x").expect("write");
    change_one_tenant(&src, 10);
    let out = fx.publish_source_with(
        &src,
        &["--format", "3"],
        &[
            ("STRATA_CACHE_DIR", blocked.to_str().expect("utf-8")),
            ("STRATA_LOG", "info"),
        ],
    );
    assert!(
        out.contains("the source hash cache could not be written"),
        "{out}"
    );
    agent.serves(4).await;
    assert_eq!(tenant_version(&agent, &ids[10]).await, "9.9.10");
    // With the cache off, every file is read, and the result is the same.
    change_one_tenant(&src, 9);
    let out = fx.publish_source(&src, &["--format", "3", "--cache-dir", "off"]);
    assert!(!out.contains("source hash cache"), "{out}");
    agent.serves(5).await;
    assert_eq!(tenant_version(&agent, &ids[9]).await, "9.9.9");
    agent.stop().await;
}
