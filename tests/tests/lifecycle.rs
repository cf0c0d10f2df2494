//! One tenant, one call at a time: sessions that keep their snapshot
//! (`retain_for`), and a pin back to a version the node does not hold
//! that leaves the retained ones in place.

use strata_common::generate;
use strata_tests::{Agent, Fixture};

/// The versions `/v1/snapshots` lists.
async fn retained(agent: &Agent) -> Vec<u64> {
    agent.get("/v1/snapshots").await.json()["snapshots"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["version"].as_u64()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_its_snapshot_through_20_publishes_and_a_pin_back() {
    let fx = Fixture::new();
    fx.publish("v1", 12);
    let id = generate::tenant_id(3);
    let agent = fx.start_agent("a", "retain = 2");
    agent.serves(1).await;
    let call = format!("/v1/tenants/{id}/prompt?snapshot=1");
    let first = agent.get(&call).await;
    assert_eq!(first.status, 200);

    // 20 publishes while the call runs, each served in turn: `retain = 2`
    // alone would have dropped version 1 after the second.
    for v in 2..=21u64 {
        fx.publish(if v % 2 == 0 { "v2" } else { "v1" }, 12);
        agent.serves(v).await;
    }
    let later = agent.get(&call).await;
    assert_eq!(later.status, 200, "{}", later.text());
    assert_eq!(later.header("x-strata-snapshot"), Some("1"));
    assert_eq!(later.text(), first.text(), "the call's prompt did not move");
    assert_eq!(retained(&agent).await, (1..=21).collect::<Vec<_>>());
    agent.stop().await;

    // A node that holds only 21 is pinned back to 5: it fetches 5 and keeps
    // 21 for the calls locked to it.
    let pin = fx.dir.path().join("pin");
    let b = fx.start_agent(
        "b",
        &format!("retain = 2\npin_file = \"{}\"", pin.display()),
    );
    b.serves(21).await;
    let on_21 = b.get(&format!("/v1/tenants/{id}?snapshot=21")).await;
    assert_eq!(on_21.status, 200);
    std::fs::write(&pin, "5\n").expect("pin");
    b.serves(5).await;
    assert_eq!(retained(&b).await, vec![5, 21]);
    let still = b.get(&format!("/v1/tenants/{id}?snapshot=21")).await;
    assert_eq!(still.status, 200, "{}", still.text());
    assert_eq!(still.text(), on_21.text());
    assert_eq!(
        b.get(&format!("/v1/tenants/{id}"))
            .await
            .header("x-strata-snapshot"),
        Some("5")
    );
    // Let go of the pin: back on 21, and 5 stays for the calls it served.
    std::fs::remove_file(&pin).expect("unpin");
    b.serves(21).await;
    assert_eq!(
        b.get(&format!("/v1/tenants/{id}?snapshot=5")).await.status,
        200
    );
    b.stop().await;
}
