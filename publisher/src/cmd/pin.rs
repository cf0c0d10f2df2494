//! `pin --store URL --key KEY --region R --version N` and `unpin`: a region
//! held at one version, signed by operator keys.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use strata_common::operator;
use strata_common::sign::TrustedKeys;
use strata_common::store::{self, StoreUrl};

use crate::input::{SigningKeys, load_public_keys, parse_duration};

/// Arguments of `pin`.
#[derive(clap::Args)]
pub struct Args {
    /// Store URL.
    #[arg(long)]
    store: StoreUrl,
    #[command(flatten)]
    keys: SigningKeys,
    /// The region whose agents are pinned (their agent.toml `region`).
    #[arg(long)]
    region: String,
    /// The snapshot version they must serve, older or newer than the channel's.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    version: u64,
    /// A publisher public key: the bundle must carry its signature (repeat
    /// for several; without one, only the bundle's integrity is checked,
    /// and agents still check its signatures).
    #[arg(long = "trusted-key", value_name = "PUB")]
    trusted_keys: Vec<PathBuf>,
    /// Lifetime of the pin's signature.
    #[arg(long, default_value = "14d", value_parser = parse_duration)]
    expires_in: Duration,
    /// Tell the agents at once over NATS (with --store-id).
    #[command(flatten)]
    notify: crate::push::NotifyArgs,
    /// Wait until this share of the region's answering agents serves the
    /// pinned version, or exit 1 after `--wait-timeout` naming the others.
    #[arg(long, value_name = "PERCENT", value_parser = crate::push::parse_share)]
    wait: Option<f64>,
    /// How long `--wait` waits.
    #[arg(long, default_value = "5m", value_parser = crate::push::parse_short_duration)]
    wait_timeout: Duration,
}

/// Checks the bundle is in the store and whole, then writes the signed pin.
pub fn run(args: Args) -> Result<()> {
    if args.wait.is_some() {
        args.notify.wait_config()?;
    }
    let keys = args.keys.load()?;
    let trusted = load_public_keys(&args.trusted_keys)?;
    let publishers = (!trusted.is_empty()).then(|| TrustedKeys::for_publisher(&[], &trusted));
    let store = store::open_write(&args.store)?;
    let pin = operator::pin(
        store.as_ref(),
        &args.region,
        args.version,
        &keys,
        publishers.as_ref(),
        args.expires_in,
    )?;
    out!(
        "pinned region {} of {} to version {} ({}, sha256 {}); pin expires {}",
        pin.name,
        store.url(),
        pin.version,
        pin.bundle,
        pin.bundle_sha256,
        pin.expires_at
    )?;
    // A pin counts the nodes serving exactly its version.
    args.notify.announce(
        store.as_ref(),
        strata_common::pointer::PointerKind::Pin,
        &pin.name,
        args.wait.map(|share| (share, args.wait_timeout)),
        crate::push::Target {
            channel: None,
            region: Some(pin.name.clone()),
            version: pin.version,
            exact: true,
        },
    )
}

/// Arguments of `unpin`.
#[derive(clap::Args)]
pub struct UnpinArgs {
    /// Store URL.
    #[arg(long)]
    store: StoreUrl,
    /// An operator key: unpinning is an operator's act, like pinning.
    #[command(flatten)]
    keys: SigningKeys,
    /// The region to return to the channel's head.
    #[arg(long)]
    region: String,
    /// Tell the agents at once over NATS (with --store-id).
    #[command(flatten)]
    notify: crate::push::NotifyArgs,
}

/// Writes the region's unpin.
pub fn unpin(args: UnpinArgs) -> Result<()> {
    let keys = args.keys.load()?;
    let store = store::open_write(&args.store)?;
    match operator::unpin(store.as_ref(), &args.region, &keys)? {
        operator::Unpinned::Was(pin) => out!(
            "unpinned region {} of {} (was version {}); its agents follow the channel again",
            args.region,
            store.url(),
            pin.version
        )?,
        operator::Unpinned::NoPin => out!(
            "region {} of {} had no pin; unpin written all the same (agents that held a pin which disappeared let go of it)",
            args.region,
            store.url()
        )?,
        operator::Unpinned::Replaced => out!(
            "region {} of {} unpinned (a fresh unpin replaced the one there, or a file that was no pin)",
            args.region,
            store.url()
        )?,
    }
    args.notify.send(
        store.as_ref(),
        strata_common::pointer::PointerKind::Unpin,
        &args.region,
    );
    Ok(())
}
