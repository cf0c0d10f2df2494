//! The fault suite: what the agent does when its disk, its file
//! descriptors or its process fail under it. Each test makes the fault for
//! real (a full tmpfs, a read-only mount, an fd limit, SIGKILL) and checks
//! what a user sees: the last snapshot stays served, `/v1/snapshot` says
//! what is wrong, and the agent recovers without a restart once the fault
//! is gone.

use strata_agent::client;
use strata_common::generate;
use strata_tests::mount::Mount;
use strata_tests::{Agent, DEADLINE, Fixture, spawn_agent, spawn_agent_with, wait_for};

/// A full disk under `data_dir`: redb refuses every write after the failed
/// one until the database is opened again. The agent keeps serving the
/// last snapshot, reports the failure, and applies the new snapshot once
/// there is room, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_keeps_the_snapshot_served_and_updates_resume_once_there_is_room() {
    let fx = Fixture::new();
    fx.publish("small", 5);
    let (config, path) = fx.agent_config("a", "");
    let Some(disk) = Mount::tmpfs(&config.data_dir, "3m") else {
        return;
    };
    let agent = Agent::start(config.clone(), path);
    agent.serves(1).await;
    let tenant = generate::tenant_id(3);
    fx.publish("large", 3000);
    agent
        .wait_until("the failed apply is reported", "/v1/snapshot", |a| {
            a.json()["state"] == "stale"
                && a.json()["version"] == 1
                && a.json()["last_error_reason"] == "ingest"
        })
        .await;
    let snapshot = agent.get("/v1/snapshot").await.json();
    eprintln!("while full: {snapshot}");
    assert_eq!(
        agent.get(&format!("/v1/tenants/{tenant}")).await.status,
        200,
        "the last snapshot stays served"
    );
    disk.remount("size=256m");
    agent.serves(2).await;
    assert_eq!(agent.get("/v1/snapshot").await.json()["state"], "fresh");
    agent.stop().await;
}

/// A `data_dir` on a read-only filesystem: the agent starts anyway, serves
/// the snapshot the file holds and says why it cannot update; once the
/// directory is writable again it opens the file for writing and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_dir_serves_what_is_on_disk_and_reports_it() {
    let fx = Fixture::new();
    fx.publish("v1", 5);
    let (config, path) = fx.agent_config("a", "");
    let agent = Agent::start(config.clone(), path.clone());
    agent.serves(1).await;
    agent.stop().await;
    let Some(ro) = Mount::read_only(&config.data_dir) else {
        return;
    };
    fx.publish("v2", 6);
    let agent = Agent::start(config.clone(), path);
    agent.serves(1).await;
    agent
        .wait_until("the read-only data_dir is reported", "/v1/snapshot", |a| {
            a.json()["state"] == "stale"
                && a.json()["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("Read-only file system"))
        })
        .await;
    let tenant = generate::tenant_id(3);
    assert_eq!(
        agent.get(&format!("/v1/tenants/{tenant}")).await.status,
        200
    );
    ro.remount("bind,rw");
    agent.serves(2).await;
    agent.stop().await;
}

/// The agent's user and system CPU time so far, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

/// Out of file descriptors (a limit of 64, 100 clients holding
/// connections open), the accept loop backs off instead of spinning, says
/// so once, and answers again as soon as descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_agent_backs_off_and_answers_again() {
    let fx = Fixture::new();
    fx.publish("v1", 5);
    let (config, path) = fx.agent_config("a", "");
    let log_path = fx.dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let agent = spawn_agent_with(&path, &["prlimit", "--nofile=64:64", "--"], log.into());
    let socket = config.socket.clone();
    wait_for("ready", || async {
        client::get(&socket, "/readyz")
            .await
            .is_ok_and(|a| a.status == 200)
    })
    .await;
    let held: Vec<_> = (0..100)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).expect("connect"))
        .collect();
    wait_for("the agent runs out of descriptors", || async {
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("accept failed"))
    })
    .await;
    let before = cpu_seconds(agent.0.id());
    let window = std::time::Instant::now();
    while window.elapsed() < std::time::Duration::from_secs(2) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let spent = cpu_seconds(agent.0.id()) - before;
    assert!(spent < 0.5, "the accept loop spun: {spent:.2} CPU-s in 2 s");
    let log_text = std::fs::read_to_string(&log_path).expect("log");
    let failures = log_text.matches("accept failed").count();
    assert_eq!(failures, 1, "logged once per burst:\n{log_text}");
    drop(held);
    wait_for("answers again once descriptors are free", || async {
        client::get(&socket, "/v1/snapshot")
            .await
            .is_ok_and(|a| a.json()["version"] == 1)
    })
    .await;
}

/// SIGKILL at a random point of each of 100 applies, alternating two
/// snapshots of different sizes: after every restart the agent serves one
/// complete snapshot (its tenant count is the published one and its last
/// tenant is there), and at the end it catches up with the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_of_100_applies_always_leaves_a_complete_snapshot() {
    let fx = Fixture::new();
    let (_, large) = fx.compile("large", 1500);
    let (_, small) = fx.compile("small", 700);
    let (config, path) = fx.agent_config("a", "");
    let socket = config.socket.clone();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    println!("seed {seed}");
    let mut tenants_of = std::collections::BTreeMap::new();
    let mut agent = spawn_agent(&path);
    for round in 0..100 {
        let compiled = if round % 2 == 0 { &large } else { &small };
        let published = fx.publish_with(compiled, std::slice::from_ref(&fx.key));
        tenants_of.insert(published.pointer.version, compiled.tenant_count);
        // xorshift: a kill anywhere from before the fetch to after the commit.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = std::time::Duration::from_millis(seed % 120);
        let started = std::time::Instant::now();
        while started.elapsed() < at {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        drop(agent);
        agent = spawn_agent(&path);
        let answered = std::time::Instant::now();
        let snapshot = loop {
            match client::get(&socket, "/v1/snapshot").await {
                Ok(a) if a.json()["version"].is_u64() => break a.json(),
                _ => {}
            }
            assert!(
                answered.elapsed() < DEADLINE,
                "round {round}: the restarted agent answers"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        let version = snapshot["version"].as_u64().expect("version");
        let count = snapshot["tenant_count"].as_u64().expect("tenant count");
        assert_eq!(
            tenants_of.get(&version),
            Some(&count),
            "round {round}: a complete snapshot, never a mix: {snapshot}"
        );
        let last = generate::tenant_id(count as usize - 1);
        let found = client::get(&socket, &format!("/v1/tenants/{last}?snapshot={version}"))
            .await
            .expect("lookup");
        assert_eq!(
            found.status, 200,
            "round {round}: {last} in snapshot {version}"
        );
    }
    let newest = *tenants_of.keys().last().expect("published");
    wait_for("the agent catches up after the last kill", || async {
        client::get(&socket, "/v1/snapshot")
            .await
            .is_ok_and(|a| a.json()["version"] == newest)
    })
    .await;
}

/// A store that accepts connections and never answers: the check hangs,
/// and past `check_timeout` the node says so, `degraded` with reason
/// `check_timeout`, still serving; at twice `check_timeout` the read is
/// given up (however slowly a store trickles, a check ends) and the node
/// is `stale`, the store unreachable, until it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_that_hangs_past_check_timeout_makes_the_node_degraded() {
    let fx = Fixture::new();
    fx.publish("v1", 5);
    let stalled = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = stalled.local_addr().expect("addr").port();
    let ca_file = fx.dir.path().join("ca.pem");
    std::fs::write(&ca_file, strata_tests::mirror::TestCa::new().ca_pem).expect("ca file");
    let (config, path) = fx.agent_config("a", "check_timeout = \"1s\"");
    let agent = Agent::start(config.clone(), path.clone());
    agent.serves(1).await;
    agent.stop().await;
    let text = std::fs::read_to_string(&path).expect("config").replace(
        &format!("file://{}", fx.store_dir().display()),
        &format!("https://127.0.0.1:{port}/store"),
    );
    std::fs::write(
        &path,
        format!("ca_file = \"{}\"\n{text}", ca_file.display()),
    )
    .expect("config");
    let config = strata_agent::config::Config::load(&path).expect("config");
    let agent = Agent::start(config, path);
    agent
        .wait_until("the hung check is reported", "/v1/snapshot", |a| {
            a.json()["state"] == "degraded" && a.json()["last_error_reason"] == "check_timeout"
        })
        .await;
    let tenant = generate::tenant_id(3);
    assert_eq!(
        agent.get(&format!("/v1/tenants/{tenant}")).await.status,
        200
    );
    agent
        .wait_until("the hung read given up", "/v1/snapshot", |a| {
            a.json()["state"] == "stale"
                && a.json()["last_error_reason"] == "store_unreachable"
                && a.json()["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("no complete answer within 2s"))
        })
        .await;
    assert_eq!(
        agent.get(&format!("/v1/tenants/{tenant}")).await.status,
        200
    );
    agent.stop().await;
    drop(stalled);
}

/// A FIFO as the local pin file: refused as not a regular file, never
/// waited on, and the snapshot stays served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_as_the_local_pin_file_is_refused_without_hanging() {
    let fx = Fixture::new();
    fx.publish("v1", 5);
    let pin = fx.dir.path().join("pin");
    let (config, path) = fx.agent_config("a", &format!("pin_file = \"{}\"", pin.display()));
    let agent = Agent::start(config, path);
    agent.serves(1).await;
    let made = std::process::Command::new("mkfifo")
        .arg(&pin)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    agent
        .wait_until("the FIFO is refused", "/v1/snapshot", |a| {
            a.json()["state"] == "degraded"
                && a.json()["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("not a regular file"))
        })
        .await;
    assert_eq!(
        agent
            .get(&format!("/v1/tenants/{}", generate::tenant_id(3)))
            .await
            .status,
        200
    );
    agent.stop().await;
}

/// A client that sends requests and never reads the answers holds its
/// connection slot only until `idle_timeout`: with one slot, the next
/// client is then served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_loses_its_slot_after_idle_timeout() {
    use std::io::Write;
    let fx = Fixture::new();
    fx.publish("v1", 5);
    let agent = fx.start_agent("a", "max_connections = 1\nidle_timeout = \"1s\"");
    agent.serves(1).await;
    let mut greedy = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connect");
    greedy
        .set_write_timeout(Some(std::time::Duration::from_millis(500)))
        .expect("timeout");
    // Pipelined lookups until the socket's buffers are full both ways.
    let request = format!(
        "GET /v1/tenants/{}/prompt HTTP/1.1\r\nhost: x\r\n\r\n",
        generate::tenant_id(1)
    )
    .repeat(100);
    while greedy.write_all(request.as_bytes()).is_ok() {}
    // A client waiting in the backlog blocks: bound the whole wait.
    let served = agent.wait_until("another client is served", "/v1/snapshot", |a| {
        a.json()["version"] == 1
    });
    tokio::time::timeout(DEADLINE, served)
        .await
        .expect("another client is served once the greedy one is closed");
    agent.stop().await;
}

/// A read-only `data_dir` whose snapshot file needs recovery (the agent was
/// killed before the directory turned read-only): the agent starts anyway,
/// serving nothing and saying why, and recovers once it can write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_dir_with_an_unclean_file_starts_and_recovers_once_writable() {
    let fx = Fixture::new();
    fx.publish("v1", 5);
    let (config, path) = fx.agent_config("a", "");
    let killed = spawn_agent(&path);
    wait_for("v1 served", || async {
        client::get(&config.socket, "/v1/snapshot")
            .await
            .is_ok_and(|a| a.json()["version"] == 1)
    })
    .await;
    drop(killed); // SIGKILL: the file is left for recovery
    let Some(ro) = Mount::read_only(&config.data_dir) else {
        return;
    };
    let agent = Agent::start(config.clone(), path);
    agent
        .wait_until("the agent answers, serving nothing", "/v1/snapshot", |a| {
            a.json()["state"] == "starting"
        })
        .await;
    assert_eq!(agent.get("/readyz").await.status, 503);
    ro.remount("bind,rw");
    agent.serves(1).await;
    agent.stop().await;
}

/// A new node whose disk fills during its first apply (written in durable
/// parts and, within each, steps committed without durability): nothing
/// is served or half served, the failure is reported, and once there is
/// room the snapshot is applied whole, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_during_the_first_apply_serves_nothing_then_the_whole_snapshot() {
    let fx = Fixture::new();
    fx.publish("large", 3000);
    let (config, path) = fx.agent_config("a", "");
    let Some(disk) = Mount::tmpfs(&config.data_dir, "3m") else {
        return;
    };
    let agent = Agent::start(config.clone(), path);
    agent
        .wait_until("the failed first apply is reported", "/v1/snapshot", |a| {
            a.json()["last_error_reason"] == "ingest"
        })
        .await;
    let tenant = generate::tenant_id(3);
    assert_ne!(
        agent.get(&format!("/v1/tenants/{tenant}")).await.status,
        200,
        "nothing is served from a first apply that did not finish"
    );
    disk.remount("size=256m");
    agent.serves(1).await;
    assert_eq!(
        agent.get(&format!("/v1/tenants/{tenant}")).await.status,
        200
    );
    assert_eq!(
        agent.get("/v1/snapshot").await.json()["tenant_count"],
        3000,
        "{}",
        agent.get("/v1/snapshot").await.json()
    );
    agent.stop().await;
}
