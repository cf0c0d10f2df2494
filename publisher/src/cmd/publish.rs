//! `publish --source DIR --key KEY --store URL`: the channel's next version.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use strata_common::channel::{self, PublishError, PublishOptions};
use strata_common::compile::CompileOptions;
use strata_common::pointer::Pointer;
use strata_common::sign::TrustedKeys;
use strata_common::store::{self, StoreUrl};
use strata_common::versions;

use crate::input::{SignedSource, load_public_keys, parse_duration, provenance_from_env};

/// Arguments of `publish`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    input: SignedSource,
    /// Store URL: file:///abs/path.
    #[arg(long)]
    store: StoreUrl,
    /// Channel to move.
    #[arg(long, default_value = "stable")]
    channel: String,
    /// A publisher public key (beside the signing keys' own) whose signature
    /// on the current pointer is trusted, as during a key rotation (repeat
    /// for several).
    #[arg(long = "trusted-key", value_name = "PUB")]
    trusted_keys: Vec<PathBuf>,
    /// Lifetime of the channel pointer's signature.
    #[arg(long, default_value = "14d", value_parser = parse_duration)]
    expires_in: Duration,
    /// Publish even if it removes more than 10 % of the channel's tenants
    /// (and more than one): without it such a publish is refused, as a
    /// wrong or empty --source far more often than a decision.
    #[arg(long)]
    allow_removals: bool,
    /// Publish even if it gives tenants back the content the channel's
    /// rollback took back: after `rollback`, the next publish from a source
    /// that still holds the bad content is refused without it, naming them.
    #[arg(long)]
    allow_rollforward: bool,
    /// Publish over the channel's snapshot although it is damaged (its
    /// bundle or an object missing or failing its hash), so this source's
    /// tenant versions cannot be checked against it: without it such a
    /// publish is refused. The removal guard still holds.
    #[arg(long)]
    allow_damaged: bool,
    /// Make the store if there is none yet (a first publish). Without it a
    /// store with no snapshot and no channel is refused: a wrong URL or an
    /// unmounted volume must not become a new store no agent follows. On a
    /// store that exists it changes nothing.
    #[arg(long)]
    init: bool,
    /// Publish although none of the signing keys signed the channel's
    /// current pointer: agents that do not trust these keys yet refuse
    /// the publish, so without it it is refused (a wrong --key, or a
    /// rotation that skipped signing with both keys).
    #[arg(long)]
    new_signer: bool,
    /// Snapshot format: 3 (the default) writes a signed root over
    /// content-addressed objects, so a publish uploads, and a node
    /// fetches, only what changed; 2 writes one bundle file, for a store
    /// whose agents are older than this release (they read only 2).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=3))]
    format: u32,
    /// Format 3: compile every tenant (keep no chunk of the channel's
    /// snapshot unread), read back every object the store holds, and write
    /// again any that is damaged or missing: the repair for agents that
    /// report `object_hash_mismatch` or `object_unavailable`.
    #[arg(long)]
    full: bool,
    /// Tell the agents at once over NATS (with --store-id).
    #[command(flatten)]
    notify: crate::push::NotifyArgs,
    /// Wait until this share of the answering agents of the channel
    /// (`--wait-region`: of that region) serves the new version (`99%`,
    /// `100%`), or exit 1 after `--wait-timeout` naming those that do not.
    /// Needs --notify.
    #[arg(long, value_name = "PERCENT", value_parser = crate::push::parse_share)]
    wait: Option<f64>,
    /// The region `--wait` counts (default: every region).
    #[arg(long, value_name = "REGION")]
    wait_region: Option<String>,
    /// How long `--wait` waits.
    #[arg(long, default_value = "5m", value_parser = crate::push::parse_short_duration)]
    wait_timeout: Duration,
}

/// Validates and compiles the source, uploads the bundle, moves the pointer.
pub fn run(args: Args) -> Result<()> {
    if args.wait.is_some() {
        args.notify.wait_config()?;
    }
    strata_common::layout::check_name("channel", &args.channel)?;
    let keys = args.input.keys()?;
    let trusted = load_public_keys(&args.trusted_keys)?;
    let trust = TrustedKeys::for_publisher(&keys, &trusted);
    // Of two tenants claiming one number, the one the channel's snapshot
    // gives it to keeps it: who that is, if the channel can be read.
    let current = store::open_write(&args.store).ok().and_then(|s| {
        let (head, _, signers) =
            Pointer::read_channel_signed(s.as_ref(), &args.channel, &trust).ok()??;
        Some((s, head, signers))
    });
    if let Some((_, head, signers)) = &current
        && !args.new_signer
    {
        crate::input::check_signers(&keys, head, signers)?;
    }
    // Format 3 keeps the channel's dictionary (so unchanged tenants keep
    // their chunks) and uploads only the objects its snapshot lacks.
    let present = match (&current, args.format) {
        (Some((s, head, _)), 3) => match versions::served_objects(s.as_ref(), head.version, &trust)
        {
            Ok(p) => p.unwrap_or_default(),
            Err(e) => {
                note!(
                    "warning: the channel's snapshot {} could not be read ({e}); every object is uploaded and a new dictionary trained",
                    head.version
                );
                versions::Present::default()
            }
        },
        _ => versions::Present::default(),
    };
    let served_owners = current
        .and_then(|(s, head, _)| versions::served_owners(s.as_ref(), &head, &trust).ok())
        .map(std::sync::Arc::new);
    let compiled = args.input.compile(CompileOptions {
        served_owners,
        format: args.format,
        dictionary: present.dictionary,
        reuse: (!args.full).then(|| std::sync::Arc::new(present.reuse)),
        ..CompileOptions::default()
    })?;
    // Only a first publish makes a store, and only when asked: a mistyped
    // URL or an unmounted volume must not become a new store no agent
    // follows while every node goes on with the old one.
    let missing_dir = matches!(&args.store, StoreUrl::File(dir) if !dir.exists());
    let fresh = missing_dir || {
        let s = store::open_write(&args.store)?;
        let empty = |prefix| store::list(s.as_ref(), prefix).map(|keys| keys.is_empty());
        empty(strata_common::layout::SNAPSHOTS)? && empty(strata_common::layout::CHANNELS)?
    };
    if fresh && !args.init {
        bail!(
            "{}: there is no store here yet ({}); nothing was published. If this is the first publish, pass --init to make it; if a store was expected, check the URL (and that its volume is mounted or its bucket and prefix are right)",
            args.store,
            if missing_dir {
                "the directory does not exist"
            } else {
                "no snapshot and no channel"
            }
        );
    }
    if let StoreUrl::File(dir) = &args.store
        && missing_dir
    {
        strata_common::store::make_dir(dir)
            .with_context(|| format!("creating the store directory {}", dir.display()))?;
    }
    if fresh {
        note!("note: {} is a new, empty store (--init)", args.store);
    }
    let store = store::open_write(&args.store)?;
    let opts = PublishOptions {
        pointer_expires_in: args.expires_in,
        trusted,
        provenance: provenance_from_env(),
        present: if args.full {
            Default::default()
        } else {
            present.objects
        },
        repair: args.full,
        ..PublishOptions::for_channel(args.channel)
    };
    // Each tenant against the snapshot the channel serves: content changed
    // means a higher version; nothing goes back (rollback does that). Asked
    // again if another publisher moves the channel first.
    let dir = args.input.dir();
    let allow = crate::guard::Allow {
        removals: args.allow_removals,
        rollforward: args.allow_rollforward,
        damaged: args.allow_damaged,
    };
    let mut gate = |head: Option<&Pointer>| -> Result<(), PublishError> {
        let Some(head) = head else { return Ok(()) };
        crate::guard::check_against_head(store.as_ref(), head, &trust, &compiled, dir, allow)
    };
    let published = channel::publish_gated(store.as_ref(), &compiled, &keys, &opts, &mut gate)?;
    let p = &published.pointer;
    out!(
        "published version {} to {} channel {}: {} ({} bytes, sha256 {}), {} tenant(s); pointer expires {}",
        p.version,
        store.url(),
        p.name,
        p.bundle,
        p.bundle_size,
        p.bundle_sha256,
        compiled.tenant_count,
        p.expires_at
    )?;
    let u = &published.uploaded;
    if compiled.payload.format == strata_common::bundle::FORMAT_TREE {
        out!(
            "format 3: uploaded {} new object(s), {} bytes; every other object it names was in the store already",
            u.objects,
            u.bytes,
        )?;
        if args.full {
            out!(
                "--full: every object read back; {} damaged one(s) written again",
                u.repaired
            )?;
        }
    }
    args.notify.announce(
        store.as_ref(),
        strata_common::pointer::PointerKind::Channel,
        &p.name,
        args.wait.map(|share| (share, args.wait_timeout)),
        crate::push::Target {
            channel: Some(p.name.clone()),
            region: args.wait_region.clone(),
            version: p.version,
            exact: false,
        },
    )
}
