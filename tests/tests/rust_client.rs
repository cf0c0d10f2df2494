//! The Rust client (`clients/rust`, crate `strata-client`) against real
//! agents: every method and error, the 304 path (across snapshots and
//! sessions), sessions (one across a publish, one whose snapshot leaves
//! retention), a canary's arms, 100 concurrent sessions on one client, and
//! the example call worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_client::{At, Client, Error};
use strata_tests::{Fixture, change_one_tenant, publish_with_canary};

/// Asserts `result` is the error `want` names, with the agent's `code`.
fn refused<T: std::fmt::Debug>(result: Result<T, Error>, want: fn(&Error) -> bool, code: &str) {
    match result {
        Err(e) if want(&e) => {
            assert_eq!(e.code(), Some(code), "{e}");
            assert!(
                e.answer().is_some_and(|a| !a.message.is_empty()),
                "errors carry the agent's message: {e}"
            );
        }
        other => panic!("expected {code}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_against_a_real_agent() {
    let fx = Fixture::new();
    let (src, id) = publish_with_canary(&fx);
    let agent = fx.start_agent("a", "");
    // Keeps one snapshot only: a call's snapshot leaves it at the next.
    let forgetful = fx.start_agent("f", "retain = 1\nretain_for = \"0s\"");
    agent.serves(1).await;
    forgetful.serves(1).await;
    let empty = Fixture::new();
    let not_ready = empty.start_agent("b", "");
    let waiting = Client::new(&not_ready.socket);
    strata_tests::wait_for("agent b listens", || async {
        !matches!(waiting.snapshot().await, Err(Error::Unavailable { .. }))
    })
    .await;
    let c = Client::new(&agent.socket);

    // Every method.
    let first = c.snapshot().await.expect("snapshot")["version"]
        .as_u64()
        .expect("a version");
    assert_eq!(first, 1);
    let config = c.tenant(&id).await.expect("tenant");
    assert_eq!(config["tenant_id"], id.as_str());
    assert_ne!(config["version"], "9.0.0", "no session: the stable arm");
    let number = config["phone_numbers"][0].as_str().expect("a number");
    assert_eq!(&*c.route(number).await.expect("route"), id.as_str());
    let layer1 = c.layer1().await.expect("layer1");
    let base = layer1["base_prompt"].as_str().expect("base prompt");
    assert!(c.prompt(&id).await.expect("prompt").starts_with(base));
    let at_first = At {
        snapshot: Some(first),
        session: None,
    };
    let pinned = c.tenant_at(&id, at_first).await.expect("tenant at 1");
    // The 304 path: the same answer revalidated, not parsed again, for
    // a plain lookup and one naming a snapshot alike.
    assert!(Arc::ptr_eq(&pinned, &config));
    assert!(Arc::ptr_eq(&c.tenant(&id).await.expect("again"), &config));

    // Every error.
    refused(
        c.tenant("no-such-tenant").await,
        |e| matches!(e, Error::NotFound(_)),
        "unknown_tenant",
    );
    refused(
        c.route("+19999999999").await,
        |e| matches!(e, Error::NotFound(_)),
        "unknown_number",
    );
    refused(
        c.prompt("Not A Tenant").await,
        |e| matches!(e, Error::BadRequest(_)),
        "bad_tenant_id",
    );
    let gone = At {
        snapshot: Some(first + 1000),
        session: None,
    };
    refused(
        c.tenant_at(&id, gone).await,
        |e| matches!(e, Error::SnapshotGone(_)),
        "snapshot_gone",
    );
    refused(
        waiting.tenant(&id).await,
        |e| matches!(e, Error::NotReady(_)),
        "not_ready",
    );
    let missing = Client::new(agent.socket.with_extension("missing"));
    assert!(matches!(
        missing.tenant(&id).await,
        Err(Error::Unavailable { .. })
    ));
    // A socket that accepts and never answers: the timeout, not a hang.
    let silent_path = fx.store_dir().with_file_name("silent.sock");
    let silent = tokio::net::UnixListener::bind(&silent_path).expect("bind");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let slow = Client::builder()
        .socket(&silent_path)
        .timeout(Duration::from_millis(300))
        .build();
    let asked = Instant::now();
    match slow.tenant(&id).await {
        Err(Error::Unavailable { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::TimedOut)
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(asked.elapsed() < Duration::from_secs(5));
    hold.abort();

    // A session keeps its arm and its snapshot.
    let mut arms = Vec::new();
    for i in 0..200 {
        let mut s = c.session(format!("call-{i}"));
        let version = s.tenant(&id).await.expect("tenant")["version"].clone();
        assert_eq!(s.tenant(&id).await.expect("again")["version"], version);
        assert_eq!(s.snapshot(), Some(first));
        arms.push(version);
    }
    let on_canary = arms.iter().filter(|v| *v == "9.0.0").count();
    assert!(
        (60..=140).contains(&on_canary),
        "{on_canary} of 200 sessions on the 50 % canary"
    );
    // Answers are kept by content: a session on the stable arm is
    // revalidated against the plain lookup's answer (a 304, no parse).
    let stable = arms
        .iter()
        .position(|v| *v != "9.0.0")
        .expect("a stable arm");
    let mut s = c.session(format!("call-{stable}"));
    assert!(Arc::ptr_eq(&s.tenant(&id).await.expect("tenant"), &config));

    // Sessions that span a publish: one keeps its snapshot; one on the
    // agent that keeps a single snapshot moves to the new one.
    let mut spanning = c.session("call-span");
    let before = spanning.tenant(&id).await.expect("tenant");
    let mut moved = Client::new(&forgetful.socket).session("call-moved");
    moved.tenant(&id).await.expect("tenant");
    assert_eq!(moved.snapshot(), Some(first));
    change_one_tenant(&src, 0);
    fx.publish_source(&src, &[]);
    agent.serves(2).await;
    forgetful.serves(2).await;
    assert_eq!(spanning.tenant(&id).await.expect("tenant"), before);
    assert_eq!(spanning.snapshot(), Some(first));
    assert_eq!(moved.relocked(), 0);
    moved
        .prompt(&id)
        .await
        .expect("prompt after its snapshot left");
    assert_eq!((moved.snapshot(), moved.relocked()), (Some(2), 1));
    let mut after = c.session("call-after");
    after.route(number).await.expect("route");
    assert_eq!(after.snapshot(), Some(2));

    // 100 calls at once on one client, from tasks on two threads.
    let calls: Vec<_> = (0..100)
        .map(|i| {
            let c = c.clone();
            let number = number.to_owned();
            tokio::spawn(async move {
                let mut s = c.session(format!("call-{i}"));
                let owner = s.route(&number).await.expect("route");
                let version = s.tenant(&owner).await.expect("tenant")["version"].clone();
                s.prompt(&owner).await.expect("prompt");
                assert_eq!(s.tenant(&owner).await.expect("again")["version"], version);
                (s.snapshot(), version)
            })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let (snapshot, version) = call.await.expect("call");
        assert_eq!(snapshot, Some(2));
        assert_eq!(version, arms[i], "call-{i} changed arm");
    }

    // The example call worker: number → tenant → the model request.
    let worker = strata_tests::example("strata-client", "call_worker");
    let mut run = std::process::Command::new(worker);
    run.arg("--socket")
        .arg(&agent.socket)
        .args([number, "call-example", "Ana"]);
    let out = tokio::task::spawn_blocking(move || run.output())
        .await
        .expect("join")
        .expect("call_worker");
    let request: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(request["tenant"], id.as_str());
    assert_eq!(request["snapshot"], 2);
    assert!(
        request["system"]
            .as_str()
            .is_some_and(|p| p.starts_with(base))
    );
    agent.stop().await;
    forgetful.stop().await;
    not_ready.stop().await;
}
