//! `strata-agent`: the sidecar. This file only wires the command line,
//! tracing and signals to [`strata_agent::run`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use strata_agent::config::Config;

#[derive(Parser)]
#[command(
    name = "strata-agent",
    version,
    about = "Serve verified Strata snapshots over a unix socket"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Run {
        /// Agent configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a configuration file (and the keys it names) and exit.
    CheckConfig {
        /// Agent configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Publish generated tenants to a local store and serve them: no servers needed.
    Demo {
        /// Directory for the demo's source, keys, store, database and socket
        /// (must not exist; default: a fresh directory under the temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => load(&config).and_then(|c| {
            init_tracing(&c.log_format, "info");
            runtime(c.worker_threads)?.block_on(strata_agent::run(
                c,
                &config,
                strata_agent::shutdown::signal(),
            ))
        }),
        Command::CheckConfig { config } => check_config(&config),
        Command::Demo { dir } => {
            init_tracing("text", "warn");
            let dir = dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("strata-demo-{}", std::process::id()))
            });
            runtime(2).and_then(|rt| rt.block_on(strata_agent::demo::run(&dir)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", strata_common::report::chain(e.as_ref()));
            ExitCode::from(1)
        }
    }
}

fn load(path: &Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

fn check_config(path: &Path) -> Result<()> {
    let config = load(path)?;
    let trust = config.trust(path)?;
    strata_common::store::open_read(&config.store, config.ca_file.as_deref())?;
    println!(
        "{}: ok. source {} channel {} region {}; {} publisher key(s) (threshold {}), {} operator key(s) (threshold {}); socket {} mode {}; data {}",
        path.display(),
        config.store,
        config.channel,
        config.region,
        trust.count(strata_common::sign::Role::Publisher),
        config.thresholds.publisher,
        trust.count(strata_common::sign::Role::Operator),
        config.thresholds.operator,
        config.socket.display(),
        config.socket_mode,
        config.db_path().display()
    );
    println!(
        "  pin_file: {}; metrics_listen: {}",
        config.pin_file.as_deref().map_or_else(
            || "none".to_owned(),
            |p| format!(
                "{} ({})",
                p.display(),
                if p.exists() {
                    "present: this node is pinned"
                } else {
                    "absent"
                }
            )
        ),
        config
            .metrics_listen
            .map_or_else(|| "none".to_owned(), |a| a.to_string())
    );
    // A file store is on this machine: say now what the agent would wait
    // for (a network store is met at the first check).
    if let strata_common::store::StoreUrl::File(dir) = &config.store {
        let pointer = dir.join(strata_common::layout::channel_key(&config.channel));
        if !dir.is_dir() {
            println!(
                "  warning: the store directory {} does not exist (an unmounted volume, or a wrong source?); the agent would wait for it",
                dir.display()
            );
        } else if !pointer.exists() {
            println!(
                "  warning: {} holds no channel {} yet ({} is missing; a wrong channel, or nothing published yet?); the agent would wait for it",
                dir.display(),
                config.channel,
                pointer.display()
            );
        }
    }
    Ok(())
}

/// The runtime serving the socket: `worker_threads` threads (the sync
/// thread is separate, at idle priority).
fn runtime(worker_threads: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn init_tracing(format: &str, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| default_level.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
