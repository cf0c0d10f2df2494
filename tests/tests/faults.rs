//! The fault suite: what the agent does when its disk, its file
//! descriptors or its process fail under it. Each test makes the fault for
//! real (a full tmpfs, a read-only mount, an fd limit, SIGKILL) and checks
//! what a user sees: the last snapshot stays served, `/v1/snapshot` says
//! what is wrong, and the agent recovers without a restart once the fault
//! is gone.

use strata_common::generate;
use strata_tests::mount::Mount;
use strata_tests::{Agent, Fixture};

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
            a.json()["state"] == "stale" && a.json()["version"] == 1
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
