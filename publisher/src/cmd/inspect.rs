//! `inspect`: verify what agents would be offered, and show it.
//!
//! - `inspect FILE` or `inspect --store URL --version N`: one bundle, its
//!   manifest, signers and contents, every payload rule checked (signatures
//!   only with `--pubkey` or `--config`);
//! - `inspect --store URL`: the channel as an agent sees it, through the
//!   agents' own pipeline (`strata_common::verify`) with the keys of
//!   `--pubkey` or exactly the trust, channel, region (its pin) and limits of an agent's
//!   `--config`: prints what an agent would do, and exits 1 if it would
//!   refuse.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use strata_common::agent_config::Config;
use strata_common::bundle::{self, Contents, Limits, SignatureCheck};
use strata_common::canonical::sha256_hex;
use strata_common::model::SnapshotVersion;
use strata_common::sign::{self, Role, TrustedKeys};
use strata_common::store::{self, StoreUrl};
use strata_common::time;
use strata_common::verify::{self, Checked, Policy};

/// Arguments of `inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// A bundle file.
    #[arg(conflicts_with = "store")]
    file: Option<PathBuf>,
    /// Store URL: its channel as an agent sees it, or (with --version) one bundle.
    #[arg(long)]
    store: Option<StoreUrl>,
    /// Version of the bundle to inspect in the store.
    #[arg(long, requires = "store")]
    version: Option<u64>,
    /// The channel an agent follows (default stable, or the --config's).
    #[arg(long, requires = "store", conflicts_with = "version")]
    channel: Option<String>,
    /// Publisher public key to verify with (repeat for several).
    #[arg(long = "pubkey", conflicts_with = "config")]
    pubkeys: Vec<PathBuf>,
    /// An agent's config: verify with its trusted keys, thresholds and limits.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The keys and limits to verify with, and where they came from.
struct Trust {
    keys: TrustedKeys,
    limits: Limits,
    channel: Option<String>,
    /// The agent's region, whose pin it would follow (`--config` only).
    region: Option<String>,
    /// The version the agent's `pin_file` holds, if it has one (`--config`
    /// only): it decides before any region pin or the channel.
    local_pin: Option<u64>,
    ca_file: Option<PathBuf>,
    checked: bool,
}

fn trust(args: &Args) -> Result<Trust> {
    if let Some(path) = &args.config {
        let config = Config::load(path)?;
        let local_pin = match &config.pin_file {
            Some(pin) => match strata_common::localfile::read_text(pin, 64) {
                Ok(text) => Some(
                    text.trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|v| *v >= 1)
                        .with_context(|| {
                            format!(
                                "{}: holds {:?}, not a snapshot version",
                                pin.display(),
                                text.trim()
                            )
                        })?,
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!("reading {}", pin.display())));
                }
            },
            None => None,
        };
        return Ok(Trust {
            keys: config.trust(path)?,
            limits: config.limits(),
            channel: Some(config.channel),
            region: Some(config.region),
            local_pin,
            ca_file: config.ca_file,
            checked: true,
        });
    }
    let mut keys = TrustedKeys::new(1, 1);
    for p in &args.pubkeys {
        keys.add(Role::Publisher, sign::load_verifying_key(p)?);
    }
    Ok(Trust {
        keys,
        limits: Limits::agents(),
        channel: None,
        region: None,
        local_pin: None,
        ca_file: None,
        checked: !args.pubkeys.is_empty(),
    })
}

/// Runs the inspection the arguments ask for.
pub fn run(args: Args) -> Result<()> {
    let trust = trust(&args)?;
    match (&args.file, &args.store, args.version) {
        (Some(file), None, None) => {
            let bytes =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            // A format 3 root's objects are in the file store it sits in.
            let store = file
                .canonicalize()
                .ok()
                .and_then(|f| {
                    f.parent()
                        .filter(|d| d.ends_with("snapshots"))?
                        .parent()
                        .map(|d| d.to_path_buf())
                })
                .and_then(|d| store::FileStore::new(d).ok());
            let objects = store.as_ref().map(|s| s as &dyn store::ReadStore);
            show_bundle(&file.display().to_string(), &bytes, objects, &trust)
        }
        (None, Some(url), Some(v)) => {
            let store = store::open_read(url, trust.ca_file.as_deref())?;
            let key = SnapshotVersion(v).bundle_key();
            let obj = store.get(&key, trust.limits.max_bundle_bytes)?;
            show_bundle(
                &format!("{url}/{key}"),
                &obj.bytes,
                Some(store.as_ref()),
                &trust,
            )
        }
        (None, Some(url), None) => {
            let channel = args
                .channel
                .clone()
                .or(trust.channel.clone())
                .unwrap_or_else(|| "stable".to_owned());
            as_an_agent(url, &channel, &trust)
        }
        _ => bail!("give a bundle FILE, or --store URL [--version N]"),
    }
}

/// One bundle: verified (signatures if keys were given), decoded whole.
/// A format 3 root's objects are read from `objects`.
fn show_bundle(
    name: &str,
    bytes: &[u8],
    objects: Option<&dyn store::ReadStore>,
    trust: &Trust,
) -> Result<()> {
    let check = if trust.checked {
        SignatureCheck::Trusted(&trust.keys)
    } else {
        SignatureCheck::SkipForInspection
    };
    let verified = bundle::verify(std::io::Cursor::new(bytes), check, &trust.limits)
        .with_context(|| format!("{name} refused"))?;
    let header = verified.header.clone();
    let signed_by = verified.signed_by.clone();
    let contents = if header.manifest.format == bundle::FORMAT_TREE {
        let Some(objects) = objects else {
            bail!(
                "{name} is a format 3 root: the objects it names are in its store; inspect it with --store URL --version {}",
                header.manifest.version
            );
        };
        let source = bundle::tree::read::ObjectSource::Store(objects);
        let mut frames = bundle::tree::frames_of(verified, source, &trust.limits)
            .with_context(|| format!("{name} refused"))?;
        Contents::from_frames(frames.as_mut()).with_context(|| format!("{name} refused"))?
    } else {
        Contents::collect(verified.records()?).with_context(|| format!("{name} refused"))?
    };
    out!("bundle {name}")?;
    out!("sha256 {}", sha256_hex(bytes))?;
    out!("size {} bytes", bytes.len())?;
    out_block!(
        "manifest {}",
        serde_json::to_string_pretty(&header.manifest)?
    )?;
    for (tenant, h) in &header.manifest.held {
        out!(
            "held: tenant {tenant} serves {} (snapshot {}'s record, rolled back in {}) until its source is above {}",
            h.version,
            h.snapshot,
            h.since,
            h.above
        )?;
    }
    for s in &header.signatures {
        out!("signature by key {}", s.key_id)?;
    }
    if trust.checked {
        out!("signatures verified: {} trusted key(s)", signed_by.len())?;
    } else {
        out!(
            "signatures NOT checked (pass --pubkey KEY.pub to verify); payload hash and records checked"
        )?;
    }
    out!(
        "records: {} tenant config(s), {} prompt(s), {} route(s), 1 layer1",
        contents.configs.len(),
        contents.prompts.len(),
        contents.routes.len(),
    )?;
    // Canary arms are records `<id>.canary`: named, with their share.
    for (key, config) in &contents.configs {
        if !strata_common::model::is_canary_key(key) {
            continue;
        }
        let percent = serde_json::from_slice::<serde_json::Value>(config)
            .ok()
            .and_then(|c| c["canary"]["percent"].as_f64());
        match percent {
            Some(p) => out!("canary: {key} answers {p} % of its tenant's sessions")?,
            None => out!("canary: {key} (no canary section: agents never draw it)")?,
        }
    }
    Ok(())
}

/// The channel through the agents' pipeline, as a new node would take it.
fn as_an_agent(url: &StoreUrl, channel: &str, trust: &Trust) -> Result<()> {
    if !trust.checked {
        bail!(
            "inspect --store runs the agents' pipeline, which needs their keys: pass --pubkey KEY.pub or --config AGENT_TOML (or --version N to look at one bundle)"
        );
    }
    let store = store::open_read(url, trust.ca_file.as_deref())?;
    let policy = Policy {
        trust: &trust.keys,
        channel,
        region: trust.region.as_deref().unwrap_or(""),
        limits: trust.limits,
        now: time::now(),
        served: None,
        retained: &[],
        high_water: 0,
        pin_floor: 0,
    };
    let spool = std::env::temp_dir();
    match &trust.region {
        Some(region) => out!("store {url} channel {channel} region {region}")?,
        None => out!("store {url} channel {channel}")?,
    }
    let checked = match trust.local_pin {
        Some(version) => {
            out!("this node's pin_file holds version {version}: it decides")?;
            verify::verify(
                store.as_ref(),
                verify::VersionDoc::Local(version),
                &policy,
                &spool,
            )
        }
        None => verify::check(store.as_ref(), &policy, &spool),
    };
    let refusal = match checked {
        Ok(Checked::New(verified)) => {
            let named = verified.named.clone();
            let (bundle, size, sha) = (
                verified.bundle.clone(),
                verified.bundle_size,
                verified.bundle_sha256.clone(),
            );
            let manifest = verified.manifest.clone();
            let signers = verified.signed_by.len();
            match verified.check_payload(store.as_ref()) {
                Ok(counts) => {
                    let by = match &named {
                        verify::Named::Pin(p) => format!(" (region {}'s pin)", p.name),
                        verify::Named::Local(_) => " (this node's pin_file)".to_owned(),
                        _ => String::new(),
                    };
                    out!(
                        "an agent would apply version {}{by}: {bundle} ({size} bytes, sha256 {sha})",
                        named.version()
                    )?;
                    let what = match &named {
                        verify::Named::Pin(_) => "pin",
                        _ => "pointer",
                    };
                    out!(
                        "{what} expires {}; bundle created {}, expires {}; layer1 {}",
                        named.pointer().map_or("never", |p| p.expires_at.as_str()),
                        manifest.created_at,
                        manifest.expires_at,
                        manifest.layer1_version
                    )?;
                    out!(
                        "verified: {signers} trusted publisher signature(s); {} tenant(s) in {} frame(s), {} route(s), every payload rule checked",
                        counts.tenants,
                        counts.frames,
                        counts.routes
                    )?;
                    return Ok(());
                }
                Err(refusal) => refusal,
            }
        }
        Ok(Checked::UpToDate(named) | Checked::Retained(named)) => {
            out!(
                "an agent serving version {} would keep serving it",
                named.version()
            )?;
            return Ok(());
        }
        Err(refusal) => refusal,
    };
    out!("an agent would refuse it ({}): {refusal}", refusal.reason())?;
    bail!(
        "{url}: agents would refuse channel {channel} ({})",
        refusal.reason()
    )
}
