//! `strata-publisher`: validates tenant overlays against Layer 1, builds signed
//! snapshot bundles and publishes them to a store. Run by CI and operators.
//!
//! Exit status: 0 success, 1 refused input (validation, verification), 2 usage.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use strata_common::bundle::{self, Limits, Provenance, RecordKind, SignatureCheck};
use strata_common::compile::{self, CompileOptions};
use strata_common::model::SnapshotVersion;
use strata_common::pointer::PointerKind;
use strata_common::publish::{self, DEFAULT_BUNDLE_EXPIRY, PublishOptions};
use strata_common::sign::{self, KeyId, Role, TrustedKeys};
use strata_common::source::{Source, SourceError};
use strata_common::{generate, store, time};

#[derive(Parser)]
#[command(
    name = "strata-publisher",
    version,
    about = "Validate, build and publish signed Strata snapshot bundles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new ed25519 key pair: KEY (mode 0600) and KEY.pub.
    Keygen {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check every overlay against Layer 1; one line per problem, exit 1 if any.
    Validate {
        /// Source directory (layer1.toml, tenants/*.toml).
        #[arg(long)]
        source: PathBuf,
    },
    /// Build a signed bundle file without publishing it.
    Build {
        /// Source directory.
        #[arg(long)]
        source: PathBuf,
        /// Private key to sign with (repeat for several).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Bundle file to write.
        #[arg(long)]
        out: PathBuf,
        /// Snapshot version recorded in the bundle.
        #[arg(long, default_value_t = 1)]
        version: u64,
        /// Lifetime of the bundle's signature.
        #[arg(long, default_value = "365d", value_parser = parse_duration)]
        expires_in: Duration,
    },
    /// Build and publish the source as the channel's next version.
    Publish {
        /// Source directory.
        #[arg(long)]
        source: PathBuf,
        /// Private key to sign with (repeat for several).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Store URL: file:///abs/path.
        #[arg(long)]
        store: String,
        /// Channel to move.
        #[arg(long, default_value = "stable")]
        channel: String,
        /// Lifetime of the channel pointer's signature.
        #[arg(long, default_value = "14d", value_parser = parse_duration)]
        expires_in: Duration,
    },
    /// List bundles, channels and pins in a store.
    List {
        /// Store URL.
        #[arg(long)]
        store: String,
    },
    /// Show a bundle's manifest, signers and contents, and check its hashes.
    Inspect {
        /// A bundle file.
        file: Option<PathBuf>,
        /// Store URL (with --version).
        #[arg(long, requires = "version")]
        store: Option<String>,
        /// Version to inspect in the store.
        #[arg(long)]
        version: Option<u64>,
        /// Public key to verify signatures with (repeat for several).
        #[arg(long = "pubkey")]
        pubkeys: Vec<PathBuf>,
    },
    /// Write a realistic synthetic source tree.
    Generate {
        /// Number of tenants.
        #[arg(long)]
        tenants: usize,
        /// Directory to write.
        #[arg(long)]
        out: PathBuf,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    time::parse_duration(s).map_err(|e| format!("{e}; write a duration such as 14d, 12h or 30m"))
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
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Keygen { out } => {
            let id = sign::generate_key(&out)?;
            println!(
                "wrote {} (0600) and {}",
                out.display(),
                sign::public_path(&out).display()
            );
            println!("key id {id}");
            Ok(())
        }
        Command::Validate { source } => {
            let src = open_source(&source)?;
            let warnings = compile::validate(&src, CompileOptions::default())
                .map_err(|e| report(&source, e))?;
            print_warnings(&warnings);
            println!(
                "{}: {} tenant(s) valid",
                source.display(),
                src.tenant_files.len()
            );
            Ok(())
        }
        Command::Build {
            source,
            keys,
            out,
            version,
            expires_in,
        } => {
            let keys = load_keys(&keys)?;
            let compiled = compile_source(&source)?;
            let manifest = publish::manifest(
                &compiled,
                version,
                time::now(),
                expires_in,
                &Provenance::from_env(),
            );
            let bytes = bundle::write_bundle(&manifest, &compiled.payload.compressed, &keys)?;
            write_new_file(&out, &bytes)?;
            println!(
                "wrote {}: version {version}, {} tenant(s), {} bytes (payload {} → {} bytes)",
                out.display(),
                compiled.tenant_count,
                bytes.len(),
                compiled.payload.raw_size,
                compiled.payload.compressed.len()
            );
            Ok(())
        }
        Command::Publish {
            source,
            keys,
            store,
            channel,
            expires_in,
        } => {
            let keys = load_keys(&keys)?;
            let compiled = compile_source(&source)?;
            let store = store::open(&store)?;
            let opts = PublishOptions {
                channel,
                bundle_expires_in: DEFAULT_BUNDLE_EXPIRY,
                pointer_expires_in: expires_in,
                provenance: Provenance::from_env(),
            };
            let published = publish::publish(store.as_ref(), &compiled, &keys, &opts)?;
            let p = &published.pointer;
            println!(
                "published version {} to {} channel {}: {} ({} bytes, sha256 {}), {} tenant(s); pointer expires {}",
                p.version,
                store.url(),
                p.name,
                p.bundle,
                p.bundle_size,
                p.bundle_sha256,
                compiled.tenant_count,
                p.expires_at
            );
            Ok(())
        }
        Command::List { store } => list(&store),
        Command::Inspect {
            file,
            store,
            version,
            pubkeys,
        } => inspect(file, store, version, &pubkeys),
        Command::Generate { tenants, out } => {
            generate::generate(&out, tenants)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote {tenants} tenant(s) and layer1.toml to {}",
                out.display()
            );
            Ok(())
        }
    }
}

fn open_source(dir: &Path) -> Result<Source> {
    Source::open(dir).map_err(|e| report(dir, e))
}

fn compile_source(dir: &Path) -> Result<compile::Compiled> {
    let src = open_source(dir)?;
    let compiled = compile::compile(&src, CompileOptions::default()).map_err(|e| report(dir, e))?;
    print_warnings(&compiled.warnings);
    Ok(compiled)
}

/// Prints every problem of an invalid source, one per line, and turns the
/// error into a one-line summary.
fn report(dir: &Path, e: SourceError) -> anyhow::Error {
    match e {
        SourceError::Invalid { problems, warnings } => {
            print_warnings(&warnings);
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for p in &problems {
                let _ = writeln!(out, "{p}");
            }
            anyhow!(
                "{}: {} problem(s); nothing was written. Fix them and run again",
                dir.display(),
                problems.len()
            )
        }
        other => anyhow::Error::new(other),
    }
}

fn print_warnings(warnings: &[strata_common::validate::Problem]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

fn load_keys(paths: &[PathBuf]) -> Result<Vec<sign::SigningKey>> {
    paths
        .iter()
        .map(|p| sign::load_signing_key(p).map_err(anyhow::Error::new))
        .collect()
}

fn write_new_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| {
            format!(
                "creating {} (an existing bundle is never overwritten)",
                path.display()
            )
        })?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("writing {}", path.display()))
}

fn list(url: &str) -> Result<()> {
    let store = store::open(url)?;
    println!("store {}", store.url());
    for v in publish::list_versions(store.as_ref())? {
        println!("snapshot {v:>8}  {}", v.bundle_key());
    }
    for (kind, prefix) in [
        (PointerKind::Channel, "channels/"),
        (PointerKind::Pin, "pins/"),
    ] {
        for key in store.list(prefix)? {
            let Some(name) = key
                .strip_prefix(prefix)
                .and_then(|k| k.strip_suffix(".json"))
            else {
                continue;
            };
            match publish::read_pointer(store.as_ref(), kind, name) {
                Ok(Some((p, _))) => println!(
                    "{:<8} {name:<12} → version {} (expires {})",
                    if kind == PointerKind::Channel {
                        "channel"
                    } else {
                        "pin"
                    },
                    p.version,
                    p.expires_at
                ),
                Ok(None) => {}
                Err(e) => println!("{key}: unreadable: {e}"),
            }
        }
    }
    Ok(())
}

fn inspect(
    file: Option<PathBuf>,
    url: Option<String>,
    version: Option<u64>,
    pubkeys: &[PathBuf],
) -> Result<()> {
    let (name, bytes) = match (file, url, version) {
        (Some(f), None, None) => {
            let b = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
            (f.display().to_string(), b)
        }
        (None, Some(url), Some(v)) => {
            let store = store::open(&url)?;
            let key = SnapshotVersion(v).bundle_key();
            let obj = store.get(&key, Limits::default().max_bundle_bytes)?;
            (format!("{url}/{key}"), obj.bytes)
        }
        _ => bail!("give either a bundle FILE or --store URL --version N"),
    };
    let mut trust = TrustedKeys::new(1, 1);
    for p in pubkeys {
        trust.add(Role::Publisher, sign::load_verifying_key(p)?);
    }
    let check = if pubkeys.is_empty() {
        SignatureCheck::SkipForInspection
    } else {
        SignatureCheck::Trusted(&trust)
    };
    let verified = bundle::verify(Cursor::new(&bytes), check, &Limits::default())
        .with_context(|| format!("{name} refused"))?;
    let header = verified.header.clone();
    let signed_by: Vec<KeyId> = verified.signed_by.clone();
    let mut counts = [0u64; 7];
    for record in verified.records()? {
        let record = record?;
        counts[record.kind as usize] += 1;
    }
    println!("bundle {name}");
    println!("sha256 {}", strata_common::canonical::sha256_hex(&bytes));
    println!("size {} bytes", bytes.len());
    println!(
        "manifest {}",
        serde_json::to_string_pretty(&header.manifest)?
    );
    for s in &header.signatures {
        println!("signature by key {}", s.key_id);
    }
    if pubkeys.is_empty() {
        println!(
            "signatures NOT checked (pass --pubkey KEY.pub to verify); payload hash and records checked"
        );
    } else {
        println!("signatures verified: {} trusted key(s)", signed_by.len());
    }
    println!(
        "records: {} tenant config(s), {} prompt(s), {} route(s), {} layer1",
        counts[RecordKind::Config as usize],
        counts[RecordKind::Prompt as usize],
        counts[RecordKind::Route as usize],
        counts[RecordKind::Layer1 as usize]
    );
    Ok(())
}
