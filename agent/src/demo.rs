//! `strata-agent demo`: the whole system on one machine with no servers.
//!
//! Generates a few hundred tenants, makes a publisher key, publishes to a
//! `file://` store, starts the agent on a socket beside it, prints real
//! lookups and the `curl` commands to try, and serves until Ctrl-C.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use strata_common::channel::{self, PublishOptions};
use strata_common::compile::{self, CompileOptions};
use strata_common::source::Source;
use strata_common::{generate, sign};

use crate::client;
use crate::config::Config;

/// Tenants the demo generates.
pub const DEMO_TENANTS: usize = 300;

/// Sets up `dir` (created fresh) and returns the agent config to run.
pub fn prepare(dir: &Path, tenants: usize) -> Result<(Config, PathBuf)> {
    if dir.exists() {
        bail!(
            "{} already exists; remove it or pass another --dir",
            dir.display()
        );
    }
    let dir = std::path::absolute(dir).context("resolving the demo directory")?;
    let source = dir.join("source");
    generate::generate(&source, tenants).context("generating tenants")?;
    let key = dir.join("keys/ci.key");
    std::fs::create_dir_all(dir.join("keys"))?;
    sign::generate_key(&key)?;
    let signing = sign::load_signing_key(&key)?;
    let src = Source::open(&source).map_err(|e| anyhow::anyhow!("{e}"))?;
    let compiled =
        compile::compile(&src, CompileOptions::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store_dir = dir.join("store");
    std::fs::create_dir_all(&store_dir)?;
    let store = strata_common::store::FileStore::new(&store_dir)?;
    channel::publish(
        &store,
        &compiled,
        &[signing],
        &PublishOptions::for_channel("stable"),
    )?;
    let config_path = dir.join("agent.toml");
    let text = format!(
        "source = \"file://{store}\"\nchannel = \"stable\"\nregion = \"demo\"\npoll_interval = \"5s\"\ndata_dir = \"{data}\"\nsocket = \"{sock}\"\n\n[[trusted_keys]]\nrole = \"publisher\"\npath = \"{pubkey}\"\n",
        store = store_dir.display(),
        data = dir.join("data").display(),
        sock = dir.join("agent.sock").display(),
        pubkey = sign::public_path(&key).display(),
    );
    std::fs::write(&config_path, text)?;
    Ok((Config::load(&config_path)?, config_path))
}

/// Runs the demo in `dir` until Ctrl-C or SIGTERM.
pub async fn run(dir: &Path) -> Result<()> {
    println!(
        "Strata demo: generating {DEMO_TENANTS} tenants, signing and publishing them to a local store…"
    );
    let (config, config_path) = prepare(dir, DEMO_TENANTS)?;
    let socket = config.socket.clone();
    let agent = {
        let config = config.clone();
        tokio::spawn(
            async move { crate::run(config, &config_path, crate::shutdown::signal()).await },
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(a) = client::get(&socket, "/readyz").await
            && a.status.is_success()
        {
            break;
        }
        if agent.is_finished() || Instant::now() > deadline {
            bail!("the agent did not become ready; see the log above");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sock = socket.display();
    let number = generate::phone_number(7, 0);
    let tenant = generate::tenant_id(7);
    let mut c = client::Client::connect(&socket).await?;
    let snap = c.get("/v1/snapshot").await?.json();
    println!(
        "\nThe agent serves snapshot {} ({} tenants) from {}\n",
        snap["version"], snap["tenant_count"], snap["source"]
    );
    let route = c.get(&format!("/v1/routes/{number}")).await?;
    println!(
        "GET /v1/routes/{number}\n  {} {}",
        route.status,
        route.text()
    );
    let cfg = c.get(&format!("/v1/tenants/{tenant}")).await?;
    let j = cfg.json();
    println!(
        "GET /v1/tenants/{tenant}\n  {} ETag {}  model {} → {}  temperature {}  top_k {}",
        cfg.status,
        cfg.header("etag").unwrap_or("-"),
        j["model"]["primary"],
        j["model"]["fallbacks"],
        j["generation"]["temperature"],
        j["retrieval"]["top_k"]
    );
    let prompt = c.get(&format!("/v1/tenants/{tenant}/prompt")).await?;
    let text = prompt.text();
    let tenant_part = text
        .split_once(strata_common::render::SEPARATOR)
        .map(|x| x.1)
        .unwrap_or("");
    println!(
        "GET /v1/tenants/{tenant}/prompt\n  {} {} chars; tenant part begins: {:.100}…",
        prompt.status,
        text.len(),
        tenant_part
    );
    let unknown = c.get("/v1/routes/+19999999999").await?;
    println!(
        "GET /v1/routes/+19999999999\n  {} {}",
        unknown.status,
        unknown.text()
    );
    println!("\nTry it yourself:");
    println!("  curl --unix-socket {sock} http://strata/v1/routes/{number}");
    println!("  curl --unix-socket {sock} http://strata/v1/tenants/{tenant}");
    println!("  curl --unix-socket {sock} http://strata/v1/tenants/{tenant}/prompt");
    println!("  curl --unix-socket {sock} http://strata/v1/snapshot");
    println!("  curl --unix-socket {sock} http://strata/metrics");
    // The installed binary when there is one (the .deb), cargo otherwise.
    let installed = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|p| p.join("strata-publisher").is_file())
    });
    let publisher = if installed {
        "strata-publisher"
    } else {
        "cargo run -q -p strata-publisher --"
    };
    println!(
        "Publish a new version and watch it arrive:\n  {publisher} publish --source {} --key {} --store file://{}",
        dir.join("source").display(),
        dir.join("keys/ci.key").display(),
        dir.join("store").display()
    );
    println!(
        "\nServing on {sock} until Ctrl-C. Everything lives in {}.",
        dir.display()
    );
    agent.await.context("agent task")??;
    Ok(())
}
