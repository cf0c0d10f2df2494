//! Publish → served latency on the file store: the time from the moment the
//! publisher has moved the channel pointer until the agent (watching the
//! store) answers with the new version. Each publish changes one tenant, as
//! an operator's edit does. Run: `cargo bench -p strata-tests`.

use std::time::{Duration, Instant};

use strata_tests::{Agent, Fixture, change_one_tenant};

fn main() {
    if std::env::var_os("STRATA_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("STRATA_LOG"))
            .init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for (tenants, runs) in [(300, 20), (1000, 20), (10_000, 20)] {
        rt.block_on(run(tenants, runs));
    }
}

async fn run(tenants: usize, runs: usize) {
    {
        let fx = Fixture::new();
        let (source, compiled) = fx.compile("bench", tenants);
        fx.publish_with(&compiled, std::slice::from_ref(&fx.key));
        // A long poll interval: only the watcher can make this fast.
        let (config, path) = fx.agent_config("a", "poll_interval = \"30s\"");
        let agent = Agent::start(config, path);
        agent.serves(1).await;
        let mut client = strata_agent::client::Client::connect(&agent.socket)
            .await
            .expect("connect");
        let mut publish = Vec::new();
        let mut served = Vec::new();
        for i in 0..runs {
            change_one_tenant(&source, i);
            let (_, compiled) = fx.compile("bench", tenants);
            let t0 = Instant::now();
            let published = fx.publish_with(&compiled, std::slice::from_ref(&fx.key));
            let moved = Instant::now();
            let want = published.pointer.version;
            loop {
                let s = client.get("/v1/snapshot").await.expect("snapshot").json();
                if s["version"] == want {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            served.push(moved.elapsed());
            publish.push(moved - t0);
        }
        served.sort();
        publish.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "publish -> served, {tenants} tenants, {runs} runs: pointer moved -> served p50 {:.1} ms, max {:.1} ms; publish call p50 {:.1} ms",
            ms(served[served.len() / 2]),
            ms(served[served.len() - 1]),
            ms(publish[publish.len() / 2])
        );
        let metrics = agent.get("/metrics").await.text();
        for line in metrics
            .lines()
            .filter(|l| l.starts_with("strata_last_apply_seconds"))
        {
            println!("last {line} (verify + ingest of the last run)");
        }
        agent.stop().await;
    }
}
