//! The Python client (`clients/python`) against a real agent: every
//! method and error, the 304 path, sessions (one across a publish), a
//! canary's arms, and the asyncio client under 100 concurrent sessions.
//! The checks are `clients/python/tests/test_client.py`; this starts the
//! agents, publishes, and runs it with the system's `python3` (the client
//! needs nothing outside the standard library), then the example call
//! worker.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use strata_tests::{Fixture, change_one_tenant, publish_with_canary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_against_a_real_agent() {
    let fx = Fixture::new();
    let (src, id) = publish_with_canary(&fx);
    let agent = fx.start_agent("a", "");
    agent.serves(1).await;
    let number = agent.get(&format!("/v1/tenants/{id}")).await.json()["phone_numbers"][0]
        .as_str()
        .expect("a number")
        .to_owned();
    let empty = Fixture::new();
    let not_ready = empty.start_agent("b", "");

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python");
    let mut child = Command::new("python3")
        .arg(root.join("tests/test_client.py"))
        .arg(&agent.socket)
        .arg(&id)
        .arg(&number)
        .arg(&not_ready.socket)
        .env("PYTHONPATH", &root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let stdout = child.stdout.take().expect("stdout");
    let ready = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok);
        (first, lines)
    })
    .await
    .expect("read");
    let (first, lines) = ready;
    if first.as_deref() != Some("READY") {
        let out = child.wait_with_output().expect("python exits");
        panic!(
            "the client's checks stopped before the publish: {first:?}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Another tenant changes while the session is open.
    change_one_tenant(&src, 0);
    fx.publish_source(&src, &[]);
    agent.serves(2).await;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"GO\n")
        .expect("go");
    let rest: Vec<String> =
        tokio::task::spawn_blocking(move || lines.map_while(Result::ok).collect())
            .await
            .expect("read");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("python exits");
    assert!(
        out.status.success() && rest.last().map(String::as_str) == Some("OK"),
        "{rest:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The example call worker: number → tenant → the model request.
    let worker = Command::new("python3")
        .arg(root.join("examples/call_worker.py"))
        .arg("--socket")
        .arg(&agent.socket)
        .args([number.as_str(), "call-example", "Ana"])
        .env("PYTHONPATH", &root)
        .output()
        .expect("python3");
    let request: serde_json::Value = serde_json::from_slice(&worker.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&worker.stderr)));
    assert_eq!(request["tenant"], id.as_str());
    assert_eq!(request["snapshot"], 2);
    assert!(request["system"].as_str().is_some_and(|p| !p.is_empty()));
    agent.stop().await;
    not_ready.stop().await;
}
