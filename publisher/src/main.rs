//! `strata-publisher`: validates tenant overlays against Layer 1, builds signed
//! snapshot bundles and publishes them to a store. Run by CI and operators.
//!
//! This file only parses the command line and wires: each subcommand is a
//! module of `cmd/` with its arguments and a `run`; what a command does to a
//! store is a library function of `strata_common::channel`.
//!
//! Exit status: 0 success, 1 refused input (validation, verification), 2 usage.

/// `println!` that returns the write's error instead of panicking. Once
/// whoever reads the output has gone (`| head`), the rest is dropped and
/// the command runs on: its exit status stays its own (a refusal is still
/// 1), which a panic or an early stop would hide.
macro_rules! out {
    ($($arg:tt)*) => {
        crate::write_out(format_args!($($arg)*), false)
    };
}

/// A block of lines to standard output (pretty JSON): as [`out!`], but
/// its line breaks are kept.
macro_rules! out_block {
    ($($arg:tt)*) => {
        crate::write_out(format_args!($($arg)*), true)
    };
}

/// A line to standard error (a note or a warning), escaped as [`out!`]
/// lines are: what the store or a source holds never starts a line of its
/// own in a CI log.
macro_rules! note {
    ($($arg:tt)*) => {
        eprintln!("{}", strata_common::validate::Escaped(&format!($($arg)*)))
    };
}

/// Set once standard output's reader has gone.
static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One line of a command's output (see [`out!`]): control characters,
/// line breaks (unless `block`) and text-direction controls are written as
/// `\u{…}` escapes, whatever the store or a source put in a name.
fn write_out(line: std::fmt::Arguments<'_>, block: bool) -> Result<(), StdoutError> {
    use std::io::Write as _;
    use std::sync::atomic::Ordering;
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let text = line.to_string();
    let written = if block {
        let lines: Vec<String> = text
            .split('\n')
            .map(|l| strata_common::validate::Escaped(l).to_string())
            .collect();
        writeln!(std::io::stdout().lock(), "{}", lines.join("\n"))
    } else {
        writeln!(
            std::io::stdout().lock(),
            "{}",
            strata_common::validate::Escaped(&text)
        )
    };
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => Err(StdoutError(e)),
    }
}

/// Writing a command's output failed (a store's errors are never this).
#[derive(Debug)]
struct StdoutError(std::io::Error);

impl std::fmt::Display for StdoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "writing to standard output: {}", self.0)
    }
}

impl std::error::Error for StdoutError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

mod cmd;
mod guard;
mod input;
mod metrics;
mod push;
mod source_arg;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "strata-publisher",
    version,
    about = "Validate, build and publish signed Strata snapshot bundles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The `max_bundle_bytes` the channel's agents run with (agent.toml),
    /// when raised above the default 1 GiB: a snapshot over what agents
    /// accept is refused before it is signed, and the store's snapshots
    /// are read within it. A channel of a million tenants (about 8 GB of
    /// records) needs it raised on every node first, then said here.
    #[arg(long, global = true, value_name = "BYTES")]
    agent_max_bundle_bytes: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new ed25519 key pair: KEY (mode 0600) and KEY.pub.
    Keygen(cmd::keygen::Args),
    /// Check every overlay against Layer 1; one line per problem, exit 1 if any.
    Validate(cmd::validate::Args),
    /// Build a signed bundle file without publishing it.
    Build(cmd::build::Args),
    /// Build and publish the source as the channel's next version.
    Publish(cmd::publish::Args),
    /// Follow a PostgreSQL source: publish each settled batch of changes.
    Follow(cmd::follow::Args),
    /// Load a directory source into a PostgreSQL database (a new row per
    /// changed tenant, made active).
    Import(cmd::import::Args),
    /// List bundles, channels and pins in a store.
    List(cmd::list::Args),
    /// Verify a bundle file, a bundle in a store, or a store's channel as an
    /// agent would, and show what it holds.
    Inspect(cmd::inspect::Args),
    /// Tenants added, removed and changed between two snapshots.
    Diff(cmd::diff::Args),
    /// One tenant's versions across the store's snapshots.
    History(cmd::history::Args),
    /// Pin a region to a snapshot version (signed by operator keys).
    Pin(cmd::pin::Args),
    /// Remove a region's pin: its agents follow the channel again.
    Unpin(cmd::pin::UnpinArgs),
    /// Publish version N's content again as the channel's next version
    /// (with --tenant: only that tenant's record, held there).
    Rollback(cmd::rollback::Args),
    /// Re-sign the channel pointer with a fresh expiry, no new snapshot.
    Refresh(cmd::refresh::Args),
    /// Delete old bundles, never one a channel pointer or pin references.
    Gc(cmd::gc::Args),
    /// Ask every agent (over NATS) what it serves: versions by region and
    /// state, and the nodes behind.
    Status(cmd::status::Args),
    /// Write a realistic synthetic source tree.
    Generate(cmd::generate::Args),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Some(max) = cli.agent_max_bundle_bytes {
        strata_common::bundle::Limits::raise_for_agents(max);
    }
    let result = match cli.command {
        Command::Keygen(args) => cmd::keygen::run(args),
        Command::Validate(args) => cmd::validate::run(args),
        Command::Build(args) => cmd::build::run(args),
        Command::Publish(args) => cmd::publish::run(args),
        Command::Follow(args) => cmd::follow::run(args),
        Command::Import(args) => cmd::import::run(args),
        Command::List(args) => cmd::list::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Diff(args) => cmd::diff::run(args),
        Command::History(args) => cmd::history::run(args),
        Command::Pin(args) => cmd::pin::run(args),
        Command::Unpin(args) => cmd::pin::unpin(args),
        Command::Rollback(args) => cmd::rollback::run(args),
        Command::Refresh(args) => cmd::refresh::run(args),
        Command::Gc(args) => cmd::gc::run(args),
        Command::Status(args) => cmd::status::run(args),
        Command::Generate(args) => cmd::generate::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            note!("error: {}", strata_common::report::chain(e.as_ref()));
            ExitCode::from(1)
        }
    }
}
