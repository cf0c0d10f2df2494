//! `validate --source DIR [--store URL --trusted-key PUB [--channel C]]`:
//! every overlay against Layer 1; with a store, also each tenant's version
//! against what the channel serves, as `publish` will check it, so that a
//! pull request fails, not the merge.

use std::path::PathBuf;

use anyhow::{Result, bail};
use strata_common::compile::{self, CompileOptions};
use strata_common::pointer::Pointer;
use strata_common::sign::TrustedKeys;
use strata_common::store::{self, StoreUrl};
use strata_common::versions;

use crate::input::{load_public_keys, print_warnings, report};

/// Arguments of `validate`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: crate::source_arg::SourceArgs,
    /// Also check the source against what this store's channel serves:
    /// each tenant's version discipline, removals, and who owns each number.
    #[arg(long)]
    store: Option<StoreUrl>,
    /// The channel to check against (with --store).
    #[arg(long, default_value = "stable")]
    channel: String,
    /// The publisher public key the channel is read with (with --store;
    /// repeat for several).
    #[arg(long = "trusted-key", value_name = "PUB")]
    trusted_keys: Vec<PathBuf>,
    /// Accept removing more than 10 % of the channel's tenants (with --store).
    #[arg(long)]
    allow_removals: bool,
    /// Accept giving tenants back what the channel's rollback took back
    /// (with --store).
    #[arg(long)]
    allow_rollforward: bool,
    /// Accept a channel snapshot too damaged to check tenant versions
    /// against (with --store).
    #[arg(long)]
    allow_damaged: bool,
}

/// One line per problem; an error (exit 1) if there is any.
pub fn run(args: Args) -> Result<()> {
    let opened = args.source.open(None, &mut Default::default())?;
    let src = &opened.source;
    let Some(url) = &args.store else {
        let warnings =
            compile::validate(src, CompileOptions::default()).map_err(|e| report(&src.dir, e))?;
        print_warnings(&warnings);
        out!(
            "{}: {} tenant(s) valid",
            src.dir.display(),
            src.tenants.len()
        )?;
        return Ok(());
    };
    strata_common::layout::check_name("channel", &args.channel)?;
    if args.trusted_keys.is_empty() {
        bail!(
            "validate --store reads the channel as agents do: pass the publisher's public key with --trusted-key PUB"
        );
    }
    let trust = TrustedKeys::for_publisher(&[], &load_public_keys(&args.trusted_keys)?);
    let store = store::open_write(url)?;
    // A store not made yet (before the first `publish --init`) has no
    // channel to check against; said below.
    let missing_dir = matches!(url, store::StoreUrl::File(dir) if !dir.exists());
    let head = if missing_dir {
        None
    } else {
        Pointer::read_channel(store.as_ref(), &args.channel, &trust)?.map(|(p, _)| p)
    };
    let served_owners = head
        .as_ref()
        .and_then(|p| versions::served_owners(store.as_ref(), p, &trust).ok())
        .map(std::sync::Arc::new);
    let compiled = compile::compile(
        src,
        CompileOptions {
            served_owners,
            ..CompileOptions::default()
        },
    )
    .map_err(|e| report(&src.dir, e))?;
    print_warnings(&compiled.warnings);
    match &head {
        Some(head) => {
            crate::guard::check_against_head(
                store.as_ref(),
                head,
                &trust,
                &compiled,
                &src.dir,
                crate::guard::Allow {
                    removals: args.allow_removals,
                    rollforward: args.allow_rollforward,
                    damaged: args.allow_damaged,
                    lower_versions: args.source.is_database(),
                },
            )?;
            out!(
                "{}: {} tenant(s) valid, and publishable over {} channel {} (version {})",
                src.dir.display(),
                compiled.tenant_count,
                store.url(),
                head.name,
                head.version
            )?;
        }
        None if missing_dir => out!(
            "{}: {} tenant(s) valid; {} does not exist yet, so there is no channel to check against (a first `publish --init` makes it; if a store was expected there, check the URL)",
            src.dir.display(),
            compiled.tenant_count,
            store.url()
        )?,
        None => out!(
            "{}: {} tenant(s) valid; {} has no channel {} yet (its first publish needs --init if the store is new)",
            src.dir.display(),
            compiled.tenant_count,
            store.url(),
            args.channel
        )?,
    }
    Ok(())
}
