//! `rollback --store URL --key KEY --to N`: version N's content published
//! again as the channel's next version (a roll forward: history stays
//! linear and agents need no pin). With `--tenant X`, only X's record is
//! taken from N, and X is held there until its source rises above the
//! version rolled back from.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use strata_common::channel::PublishOptions;
use strata_common::operator;
use strata_common::store::{self, StoreUrl};

use crate::input::{SigningKeys, load_public_keys, parse_duration, provenance_from_env};

/// Arguments of `rollback`.
#[derive(clap::Args)]
pub struct Args {
    /// Store URL.
    #[arg(long)]
    store: StoreUrl,
    #[command(flatten)]
    keys: SigningKeys,
    /// The version whose content to publish again.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    to: u64,
    /// Channel to move.
    #[arg(long, default_value = "stable")]
    channel: String,
    /// A publisher public key (beside the signing keys' own) trusted on the
    /// current pointer and on version N's bundle (repeat for several).
    #[arg(long = "trusted-key", value_name = "PUB")]
    trusted_keys: Vec<PathBuf>,
    /// Lifetime of the channel pointer's signature.
    #[arg(long, default_value = "14d", value_parser = parse_duration)]
    expires_in: Duration,
    /// Roll back although none of the signing keys signed the channel's
    /// current pointer (see `publish --new-signer`).
    #[arg(long)]
    new_signer: bool,
    /// Roll back only this tenant: the channel's snapshot is published
    /// again with its record from version N, and it is held there until
    /// its source's version rises above the one rolled back from.
    #[arg(long, value_name = "ID")]
    tenant: Option<String>,
    /// Tell the agents at once over NATS (with --store-id).
    #[command(flatten)]
    notify: crate::push::NotifyArgs,
}

/// Verifies version N's bundle and publishes its payload as the next version.
pub fn run(args: Args) -> Result<()> {
    let keys = args.keys.load()?;
    let opts = PublishOptions {
        pointer_expires_in: args.expires_in,
        trusted: load_public_keys(&args.trusted_keys)?,
        provenance: provenance_from_env(),
        ..PublishOptions::for_channel(args.channel)
    };
    let store = store::open_write(&args.store)?;
    let trust = strata_common::sign::TrustedKeys::for_publisher(&keys, &opts.trusted);
    if !args.new_signer
        && let Some((head, _, signers)) = strata_common::pointer::Pointer::read_channel_signed(
            store.as_ref(),
            &opts.channel,
            &trust,
        )?
    {
        crate::input::check_signers(&keys, &head, &signers)?;
    }
    if let Some(tenant) = &args.tenant {
        strata_common::model::TenantId::check(tenant)
            .map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
        let done = strata_common::tenant_rollback::rollback_tenant(
            store.as_ref(),
            tenant,
            args.to,
            &keys,
            &opts,
        )?;
        let p = &done.published.pointer;
        out!(
            "rolled tenant {tenant} of {} channel {} back to {} (its record in version {}) as version {} ({}, sha256 {}); every other tenant is unchanged; pointer expires {}",
            store.url(),
            p.name,
            done.to_version,
            args.to,
            p.version,
            p.bundle,
            p.bundle_sha256,
            p.expires_at
        )?;
        let u = &done.published.uploaded;
        if u.objects + u.kept > 0 {
            note!(
                "format 3: uploaded {} new object(s), {} bytes; every other object it names was in the store already",
                u.objects,
                u.bytes
            );
        }
        note!(
            "note: tenant {tenant} is held at {} (was {}): publishes keep this record until its source's version is above {}",
            done.hold.version,
            done.from.as_deref().unwrap_or("not served"),
            done.hold.above
        );
        args.notify.send(
            store.as_ref(),
            strata_common::pointer::PointerKind::Channel,
            &p.name,
        );
        return Ok(());
    }
    let before = operator::served_tenants(store.as_ref(), &opts.channel, &trust);
    let from = before.map(|(version, _)| version);
    // A rollback of a rollback keeps what the first took back.
    let marker_before =
        strata_common::rollforward::Marker::read(store.as_ref(), &opts.channel, &trust)
            .ok()
            .flatten();
    // Read for the note only: the rollback verifies the bundle itself.
    let expired = strata_common::bundle::peek_manifest(
        store.as_ref(),
        &strata_common::layout::bundle_key(args.to),
    )
    .map(|m| m.expires_at)
    .filter(|at| {
        strata_common::time::parse_exact(at).is_ok_and(|t| t < strata_common::time::now())
    });
    let published = operator::rollback(store.as_ref(), args.to, &keys, &opts)?;
    let p = &published.pointer;
    // What the next publish checks: not to bring back what this took back.
    if let Some(from) = from {
        strata_common::rollforward::Marker::new(
            &opts.channel,
            p.version,
            args.to,
            from,
            marker_before.as_ref(),
        )
        .write(store.as_ref(), &keys)?;
    }
    out!(
        "rolled {} channel {} back to the content of version {} as version {} ({}, sha256 {}), {} tenant(s); pointer expires {}",
        store.url(),
        p.name,
        args.to,
        p.version,
        p.bundle,
        p.bundle_sha256,
        published.tenant_count,
        p.expires_at
    )?;
    // Agents refuse an expired bundle; the rollback's own is signed anew.
    if let Some(at) = expired {
        note!(
            "note: version {}'s bundle expired at {at}; its content is published as version {}, signed again with a fresh expiry (agents would refuse the old bundle itself, e.g. in a pin)",
            args.to,
            p.version
        );
    }
    // Old content may serve far fewer tenants than the channel did: said,
    // since a rollback is meant and not refused.
    if let Some((version, served)) = before
        && published.tenant_count < served
    {
        note!(
            "note: version {version} served {served} tenant(s), version {} serves {}: tenants added since version {} are no longer served ({} fewer); `strata-publisher diff` names them",
            p.version,
            published.tenant_count,
            args.to,
            served - published.tenant_count
        );
    }
    args.notify.send(
        store.as_ref(),
        strata_common::pointer::PointerKind::Channel,
        &p.name,
    );
    Ok(())
}
