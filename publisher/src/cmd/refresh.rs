//! `refresh --store URL --key KEY [--channel C]`: the channel pointer
//! re-signed with a fresh expiry, no new snapshot.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
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
}

/// Re-signs the verified pointer with a new expiry.
pub fn run(args: Args) -> Result<()> {
    let keys = args.keys.load()?;
    let trust = TrustedKeys::for_publisher(&keys, &load_public_keys(&args.trusted_keys)?);
    let store = store::open_write(&args.store)?;
    let p = operator::refresh(
        store.as_ref(),
        &args.channel,
        &keys,
        &trust,
        args.expires_in,
        args.force,
    )?;
    out!(
        "refreshed {} channel {} at version {}; pointer expires {}",
        store.url(),
        p.name,
        p.version,
        p.expires_at
    )?;
    Ok(())
}
