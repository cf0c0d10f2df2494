//! `refresh --store URL --key KEY [--channel C] [--state-dir DIR]`: the
//! channel pointer re-signed with a fresh expiry, no new snapshot.
//!
//! The highest version refreshed is remembered in a state directory of
//! the host's (`--state-dir`; by default systemd's `$STATE_DIRECTORY`,
//! else `$XDG_STATE_HOME/strata`, else `~/.local/state/strata`), outside
//! the store, where a writer without keys cannot lower it: an old signed
//! pointer put back with the newer bundles deleted is refused instead of
//! made fresh again (a publish after it would reuse version numbers with
//! other bytes, and nodes that held them would refuse them).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use strata_common::operator;
use strata_common::sign::TrustedKeys;
use strata_common::store::{self, StoreUrl};

use crate::input::{SigningKeys, load_public_keys, parse_duration};

/// Arguments of `refresh`.
#[derive(clap::Args)]
pub struct Args {
    /// Store URL.
    #[arg(long)]
    store: StoreUrl,
    #[command(flatten)]
    keys: SigningKeys,
    /// The channel whose pointer to re-sign.
    #[arg(long, default_value = "stable")]
    channel: String,
    /// A publisher public key (beside the signing keys' own) whose signature
    /// on the current pointer is trusted (repeat for several).
    #[arg(long = "trusted-key", value_name = "PUB")]
    trusted_keys: Vec<PathBuf>,
    /// Re-sign even though the store holds bundles newer than the pointer
    /// (left by a publish that died before moving it).
    #[arg(long)]
    force: bool,
    /// Lifetime of the new signature.
    #[arg(long, default_value = "14d", value_parser = parse_duration)]
    expires_in: Duration,
    /// Re-sign even though the pointer carries signatures of keys not
    /// given with --key (a retired key): without it, such a refresh is
    /// refused, naming them.
    #[arg(long)]
    drop_signers: bool,
    /// A directory of this host's own where the highest version refreshed
    /// per store and channel is kept; a pointer below it is refused.
    /// Default: `$STATE_DIRECTORY` (systemd's), else
    /// `$XDG_STATE_HOME/strata`, else `~/.local/state/strata`.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Keep no record (a throwaway host): an old pointer put back with the
    /// newer bundles deleted is then re-signed like any other.
    #[arg(long, conflicts_with = "state_dir")]
    no_state: bool,
    /// Tell the agents at once over NATS (with --store-id).
    #[command(flatten)]
    notify: crate::push::NotifyArgs,
}

/// The state directory a refresh uses without `--state-dir`: systemd's
/// `$STATE_DIRECTORY` (its first entry), else `$XDG_STATE_HOME/strata`,
/// else `$HOME/.local/state/strata`; none without any of them.
fn default_state_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dirs) = var("STATE_DIRECTORY") {
        let first = dirs.to_string_lossy().split(':').next()?.to_owned();
        return Some(PathBuf::from(first));
    }
    if let Some(xdg) = var("XDG_STATE_HOME") {
        return Some(PathBuf::from(xdg).join("strata"));
    }
    var("HOME").map(|home| PathBuf::from(home).join(".local/state/strata"))
}

/// What a refresh host remembers of a channel.
#[derive(serde::Serialize, serde::Deserialize)]
struct Seen {
    store: String,
    channel: String,
    version: u64,
    bundle_sha256: String,
}

/// The store as the record names it: a file store by its resolved
/// directory, so that `file:///a/store/`, `file:///a//store` and a link to
/// it are one store, not one record each.
fn store_identity(url: &StoreUrl) -> String {
    match url {
        StoreUrl::File(dir) => {
            let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            format!("file://{}", real.display())
        }
        other => other.to_string(),
    }
}

/// The state directory to use, or why there is none: it must be
/// absolute (a relative one would follow the working directory).
fn state_dir(args: &Args) -> Result<Option<PathBuf>> {
    if args.no_state {
        return Ok(None);
    }
    let Some(dir) = args.state_dir.clone().or_else(default_state_dir) else {
        bail!(
            "no state directory: pass --state-dir DIR (or set $STATE_DIRECTORY, $XDG_STATE_HOME or $HOME). Without one an old pointer put back with the newer bundles deleted cannot be told from the real one; --no-state refreshes without a record (a throwaway host)"
        );
    };
    if !dir.is_absolute() {
        bail!(
            "the state directory {} is not an absolute path (from --state-dir, $STATE_DIRECTORY, $XDG_STATE_HOME or $HOME); give an absolute one",
            dir.display()
        );
    }
    Ok(Some(dir))
}

/// Where the record of `channel` at `store` lives in `dir`.
fn record_path(dir: &Path, store: &str, channel: &str) -> PathBuf {
    let id = strata_common::canonical::sha256_hex(format!("{store}\n{channel}").as_bytes());
    dir.join(format!("{channel}-{}.json", &id[..16]))
}

/// The record at `path`, if any.
fn read_seen(path: &Path) -> Result<Option<Seen>> {
    match strata_common::localfile::read(path, 64 << 10) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{}: not a refresh record; remove it", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    }
}

/// Writes the record at `path` (a temporary file renamed over it).
fn write_seen(path: &Path, seen: &Seen) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(seen)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Re-signs the verified pointer with a new expiry.
pub fn run(args: Args) -> Result<()> {
    strata_common::layout::check_name("channel", &args.channel)?;
    let keys = args.keys.load()?;
    let trust = TrustedKeys::for_publisher(&keys, &load_public_keys(&args.trusted_keys)?);
    let store = store::open_write(&args.store)?;
    let identity = store_identity(&args.store);
    let record = match state_dir(&args)? {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating the state directory {}", dir.display()))?;
            // Writable before anything is signed: a record that cannot be
            // kept must not follow a refresh that went ahead.
            let probe = dir.join(format!(".probe-{}", std::process::id()));
            std::fs::write(&probe, b"")
                .and_then(|()| std::fs::remove_file(&probe))
                .with_context(|| {
                    format!(
                        "the state directory {} is not writable; nothing was refreshed",
                        dir.display()
                    )
                })?;
            Some(record_path(&dir, &identity, &args.channel))
        }
        None => None,
    };
    let seen = match &record {
        Some(path) => read_seen(path)?,
        None => None,
    };
    if let (Some(seen), Some(path)) = (&seen, &record)
        && let Some((current, _)) =
            strata_common::pointer::Pointer::read_channel(store.as_ref(), &args.channel, &trust)?
        && (current.version < seen.version
            || (current.version == seen.version && current.bundle_sha256 != seen.bundle_sha256))
    {
        bail!(
            "channel {} at {} names version {} (bundle {}), but this host refreshed version {} (bundle {}) before, as {} records: an old pointer may have been put back with the newer bundles deleted, and a publish after it would reuse their version numbers. Nothing was written. Publish (or rollback) to move the channel past {}; remove the record only if the store was rebuilt on purpose",
            args.channel,
            store.url(),
            current.version,
            current.bundle_sha256,
            seen.version,
            seen.bundle_sha256,
            path.display(),
            seen.version
        );
    }
    let p = operator::refresh(
        store.as_ref(),
        &args.channel,
        &keys,
        &trust,
        args.expires_in,
        args.force,
        if args.drop_signers {
            operator::Signers::DropMissing
        } else {
            operator::Signers::KeepAll
        },
    )?;
    if let Some(path) = &record {
        write_seen(
            path,
            &Seen {
                store: identity.clone(),
                channel: args.channel.clone(),
                version: p.version,
                bundle_sha256: p.bundle_sha256.clone(),
            },
        )?;
    }
    out!(
        "refreshed {} channel {} at version {}; pointer expires {}",
        store.url(),
        p.name,
        p.version,
        p.expires_at
    )?;
    args.notify.send(
        store.as_ref(),
        strata_common::pointer::PointerKind::Channel,
        &p.name,
    );
    Ok(())
}
