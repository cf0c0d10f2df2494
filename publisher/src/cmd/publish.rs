//! `publish --source DIR --key KEY --store URL`: the channel's next version.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use strata_common::channel::{self, PublishError, PublishOptions, Published};
use strata_common::compile::{CompileOptions, Compiled, LastPublished};
use strata_common::pointer::Pointer;
use strata_common::sign::{SigningKey, TrustedKeys};
use strata_common::source::Source;
use strata_common::store::{self, StoreUrl, WriteStore};
use strata_common::versions;

use crate::input::{load_public_keys, parse_duration, provenance_from_env};
use crate::source_arg::SignedSource;

/// Arguments of `publish`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    input: SignedSource,
    #[command(flatten)]
    to: Destination,
    /// A tenant whose overlay is invalid does not refuse the publish: it
    /// keeps its config of the channel's snapshot (a new tenant stays
    /// out), and its problems are printed (and, for a database source,
    /// written to strata_publish_problems).
    #[arg(long)]
    quarantine: bool,
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

/// Where and how a publish goes: what `publish` and `follow` share.
#[derive(clap::Args, Debug)]
pub struct Destination {
    /// Store URL: file:///abs/path.
    #[arg(long)]
    pub store: StoreUrl,
    /// Channel to move.
    #[arg(long, default_value = "stable")]
    pub channel: String,
    /// A publisher public key (beside the signing keys' own) whose signature
    /// on the current pointer is trusted, as during a key rotation (repeat
    /// for several).
    #[arg(long = "trusted-key", value_name = "PUB")]
    pub trusted_keys: Vec<PathBuf>,
    /// Lifetime of the channel pointer's signature.
    #[arg(long, default_value = "14d", value_parser = parse_duration)]
    pub expires_in: Duration,
    /// Publish even if it removes more than 10 % of the channel's tenants
    /// (and more than one): without it such a publish is refused, as a
    /// wrong or empty --source far more often than a decision.
    #[arg(long)]
    pub allow_removals: bool,
    /// Publish even if it gives tenants back the content the channel's
    /// rollback took back: after `rollback`, the next publish from a source
    /// that still holds the bad content is refused without it, naming them.
    #[arg(long)]
    pub allow_rollforward: bool,
    /// Publish over the channel's snapshot although it is damaged (its
    /// bundle or an object missing or failing its hash), so this source's
    /// tenant versions cannot be checked against it: without it such a
    /// publish is refused. The removal guard still holds.
    #[arg(long)]
    pub allow_damaged: bool,
    /// Make the store if there is none yet (a first publish). Without it a
    /// store with no snapshot and no channel is refused: a wrong URL or an
    /// unmounted volume must not become a new store no agent follows. On a
    /// store that exists it changes nothing.
    #[arg(long)]
    pub init: bool,
    /// Publish although none of the signing keys signed the channel's
    /// current pointer: agents that do not trust these keys yet refuse
    /// the publish, so without it it is refused (a wrong --key, or a
    /// rotation that skipped signing with both keys).
    #[arg(long)]
    pub new_signer: bool,
    /// Snapshot format: 3 (the default) writes a signed root over
    /// content-addressed objects, so a publish uploads, and a node
    /// fetches, only what changed; 2 writes one bundle file, for a store
    /// whose agents are older than this release (they read only 2).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=3))]
    pub format: u32,
    /// Format 3: compile every tenant (keep no chunk of the channel's
    /// snapshot unread), read back every object the store holds, and write
    /// again any that is damaged or missing: the repair for agents that
    /// report `object_hash_mismatch` or `object_unavailable`.
    #[arg(long)]
    pub full: bool,
    /// Tell the agents at once over NATS (with --store-id).
    #[command(flatten)]
    pub notify: crate::push::NotifyArgs,
}

/// Validates and compiles the source, uploads the bundle, moves the pointer.
pub fn run(args: Args) -> Result<()> {
    if args.wait.is_some() {
        args.to.notify.wait_config()?;
    }
    let keys = args.input.keys()?;
    let opened = args.input.source.open(None, &mut Default::default())?;
    let done = publish(&args.to, &keys, &opened.source, args.quarantine, None)?;
    let compiled = &done.compiled;
    for p in &compiled.held_back {
        note!("held back: {p}");
    }
    if let Some((db, snapshot)) = &opened.db {
        // The rows were read in a read-only transaction: ended first.
        snapshot.close()?;
        if args.quarantine {
            crate::cmd::follow::report_held_back(db, &args.to.channel, &opened.source, compiled)?;
        }
    }
    let Some(published) = done.published else {
        return Ok(());
    };
    let p = &published.pointer;
    out!(
        "published version {} to {} channel {}: {} ({} bytes, sha256 {}), {} tenant(s); pointer expires {}",
        p.version,
        args.to.store,
        p.name,
        p.bundle,
        p.bundle_size,
        p.bundle_sha256,
        compiled.tenant_count,
        p.expires_at
    )?;
    if !compiled.held_back.is_empty() {
        out!(
            "--quarantine: {} problem(s) held their tenants back (listed above)",
            compiled.held_back.len()
        )?;
    }
    let u = &published.uploaded;
    if compiled.payload.format == strata_common::bundle::FORMAT_TREE {
        out!(
            "format 3: uploaded {} new object(s), {} bytes; every other object it names was in the store already",
            u.objects,
            u.bytes,
        )?;
        if args.to.full {
            out!(
                "--full: every object read back; {} damaged one(s) written again",
                u.repaired
            )?;
        }
    }
    args.to.notify.announce(
        done.store.as_ref(),
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

/// What [`publish`] did.
pub struct Done {
    /// The compiled source (its tenant count, its held-back problems).
    pub compiled: Compiled,
    /// The new version; `None` if `skip_unchanged` found the channel
    /// serving exactly this content already.
    pub published: Option<Published>,
    /// The store it went to (for the push that follows: no second
    /// client to make).
    pub store: Box<dyn WriteStore>,
}

/// A follower's publish: the snapshot its rows were read in (ended once
/// compiled, before the upload) and the connection holding its lock.
pub struct Leading<'a> {
    /// The connection holding the followers' advisory lock.
    pub db: &'a strata_common::database::Database,
    /// The transaction the rows were read in.
    pub snapshot: &'a strata_common::database::rows::Snapshot,
}

/// Compiles `source` and publishes it to `to` (signed with `keys`): the
/// guards, the upload and the pointer's move. With `quarantine`, invalid
/// tenants keep their config of the channel's snapshot. With `leading` (a
/// follower), a build whose content the channel serves already (format 3)
/// is not published, and the pointer moves only while the follower still
/// holds its lock and the channel is still where the compile found it.
pub fn publish(
    to: &Destination,
    keys: &[SigningKey],
    source: &Source,
    quarantine: bool,
    leading: Option<&Leading>,
) -> Result<Done> {
    let skip_unchanged = leading.is_some();
    strata_common::layout::check_name("channel", &to.channel)?;
    let clock = std::time::Instant::now();
    let phase =
        |what: &str| tracing::info!(ms = clock.elapsed().as_millis() as u64, "publish: {what}");
    let trusted = load_public_keys(&to.trusted_keys)?;
    let trust = TrustedKeys::for_publisher(keys, &trusted);
    // Of two tenants claiming one number, the one the channel's snapshot
    // gives it to keeps it: who that is, if the channel can be read.
    let current = store::open_write(&to.store).ok().and_then(|s| {
        let (head, _, signers) =
            Pointer::read_channel_signed(s.as_ref(), &to.channel, &trust).ok()??;
        Some((s, head, signers))
    });
    if let Some((_, head, signers)) = &current
        && !to.new_signer
    {
        crate::input::check_signers(keys, head, signers)?;
    }
    // Format 3 keeps the channel's dictionary (so unchanged tenants keep
    // their chunks) and uploads only the objects its snapshot lacks.
    let present = match (&current, to.format) {
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
    phase("read the channel's snapshot");
    let served_owners = current
        .as_ref()
        .and_then(|(s, head, _)| versions::served_owners(s.as_ref(), head, &trust).ok())
        .map(Arc::new);
    // Tenants a rollback holds back keep the record it put back until
    // their source rises above the version rolled back from. Unreadable
    // here, the gate below refuses (after the guards name a damaged
    // snapshot), unless --allow-damaged.
    let (holds, holds_read) = match &current {
        Some((s, head, _)) => {
            match strata_common::bundle::signed_manifest(
                s.as_ref(),
                &head.bundle,
                head.version,
                &trust,
            ) {
                Ok(m) => (m.held, Some(head.version)),
                Err(e) => {
                    if to.allow_damaged {
                        note!(
                            "warning: the tenants a rollback holds back in snapshot {} could not be read ({e}); --allow-damaged: none are held",
                            head.version
                        );
                    }
                    (Default::default(), None)
                }
            }
        }
        None => (Default::default(), None),
    };
    let compiled_holds = holds.clone();
    let rollback_holds = match (&current, holds.is_empty()) {
        (Some((_, head, _)), false) => Some((
            Arc::new(holds),
            last_published(&to.store, head, &trust, source)?,
        )),
        _ => None,
    };
    let last_published = match (&current, quarantine) {
        (Some((_, head, _)), true) => Some(last_published(&to.store, head, &trust, source)?),
        _ => None,
    };
    let opts = CompileOptions {
        served_owners,
        format: to.format,
        dictionary: present.dictionary.clone(),
        reuse: (!to.full).then(|| Arc::new(present.reuse.clone())),
        quarantine: quarantine
            .then(|| last_published.unwrap_or_else(|| LastPublished(Arc::new(|_: &str| None)))),
        rollback_holds,
        ..CompileOptions::default()
    };
    phase("read its routes");
    let mut compiled = crate::input::compile_source(source, opts.clone())?;
    phase("compiled");
    // Quarantine: a tenant whose new version the channel's snapshot
    // refuses is held back too (compiled again, held).
    if let (true, Some((s, head, _))) = (quarantine, &current) {
        let lower_ok = matches!(source.tenants, strata_common::source::Tenants::Rows { .. });
        let c = versions::check_against(s.as_ref(), head, &trust, &compiled, &source.dir, lower_ok);
        if let Ok(c) = c
            && !c.problems.is_empty()
        {
            let mut hold: std::collections::BTreeMap<String, Vec<_>> = Default::default();
            for p in c.problems {
                hold.entry(p.tenant.clone().unwrap_or_default())
                    .or_default()
                    .push(p);
            }
            compiled = crate::input::compile_source(
                source,
                CompileOptions {
                    hold: Arc::new(hold),
                    ..opts
                },
            )?;
        }
    }
    phase("checked versions");
    if let Some(l) = leading {
        l.snapshot.close()?;
    }
    let compiled_over = current.as_ref().map(|(_, head, _)| head.version);
    if skip_unchanged
        && !present.payload_sha256.is_empty()
        && present.payload_sha256 == compiled.payload.sha256
    {
        let store = store::open_write(&to.store)?;
        return Ok(Done {
            compiled,
            published: None,
            store,
        });
    }
    // Only a first publish makes a store, and only when asked: a mistyped
    // URL or an unmounted volume must not become a new store no agent
    // follows while every node goes on with the old one.
    let missing_dir = matches!(&to.store, StoreUrl::File(dir) if !dir.exists());
    let fresh = missing_dir || {
        let s = store::open_write(&to.store)?;
        let empty = |prefix| store::list(s.as_ref(), prefix).map(|keys| keys.is_empty());
        empty(strata_common::layout::SNAPSHOTS)? && empty(strata_common::layout::CHANNELS)?
    };
    if fresh && !to.init {
        bail!(
            "{}: there is no store here yet ({}); nothing was published. If this is the first publish, pass --init to make it; if a store was expected, check the URL (and that its volume is mounted or its bucket and prefix are right)",
            to.store,
            if missing_dir {
                "the directory does not exist"
            } else {
                "no snapshot and no channel"
            }
        );
    }
    if let StoreUrl::File(dir) = &to.store
        && missing_dir
    {
        strata_common::store::make_dir(dir)
            .with_context(|| format!("creating the store directory {}", dir.display()))?;
    }
    if fresh {
        note!("note: {} is a new, empty store (--init)", to.store);
    }
    let store = store::open_write(&to.store)?;
    let opts = PublishOptions {
        pointer_expires_in: to.expires_in,
        trusted,
        provenance: provenance_from_env(),
        present: if to.full {
            Default::default()
        } else {
            present.objects
        },
        repair: to.full,
        ..PublishOptions::for_channel(to.channel.clone())
    };
    // Each tenant against the snapshot the channel serves: content changed
    // means a higher version; nothing goes back (rollback does that). Asked
    // again if another publisher moves the channel first.
    let allow = crate::guard::Allow {
        removals: to.allow_removals,
        rollforward: to.allow_rollforward,
        damaged: to.allow_damaged,
        lower_versions: matches!(source.tenants, strata_common::source::Tenants::Rows { .. }),
    };
    let mut gate = |head: Option<&Pointer>| -> Result<(), PublishError> {
        if let Some(l) = leading {
            still_leading(l, head, compiled_over)?;
        }
        let Some(head) = head else { return Ok(()) };
        crate::guard::check_against_head(
            store.as_ref(),
            head,
            &trust,
            &compiled,
            &source.dir,
            allow,
        )?;
        // A snapshot's bundle never changes: the head read at compile time
        // needs no second read.
        if holds_read == Some(head.version) {
            return Ok(());
        }
        crate::guard::same_holds(store.as_ref(), head, &trust, &compiled_holds, allow.damaged)
    };
    let published = channel::publish_gated(store.as_ref(), &compiled, keys, &opts, &mut gate)?;
    phase("published");
    Ok(Done {
        compiled,
        published: Some(published),
        store,
    })
}

/// Refuses a follower's publish when it no longer holds the lock (its
/// session ended: another follower may publish newer rows) or the channel
/// moved since its compile (another publisher): the next batch compiles
/// again, over what is there then.
fn still_leading(
    l: &Leading,
    head: Option<&Pointer>,
    compiled_over: Option<u64>,
) -> Result<(), PublishError> {
    if head.map(|h| h.version) != compiled_over {
        return Err(PublishError::Refused(
            "the channel moved while this batch compiled (another publisher); the next batch compiles again".into(),
        ));
    }
    match strata_common::database::follow::holds_lock(l.db) {
        Ok(true) => Ok(()),
        Ok(false) => Err(PublishError::Refused(
            "this follower no longer holds the followers' lock; nothing was published".into(),
        )),
        Err(e) => Err(PublishError::Refused(format!(
            "cannot confirm this follower still holds the followers' lock ({e}); nothing was published"
        ))),
    }
}

/// Where a quarantining compile finds a tenant's record in the channel's
/// snapshot `head`: read when a tenant is held back, only the chunk that
/// holds it (format 3), and only under the same Layer 1.
fn last_published(
    url: &StoreUrl,
    head: &Pointer,
    trust: &TrustedKeys,
    source: &Source,
) -> Result<LastPublished> {
    let store: Arc<dyn WriteStore> = Arc::from(store::open_write(url)?);
    let (head, trust) = (head.clone(), trust.clone());
    let layer1 = serde_json::to_vec(&source.layer1)?;
    Ok(LastPublished(Arc::new(move |tenant: &str| {
        let wanted = std::iter::once(tenant.to_owned()).collect();
        match versions::served_records(store.as_ref(), &head, &trust, &layer1, &wanted) {
            Ok(mut found) => found.remove(tenant),
            Err(e) => {
                tracing::warn!(tenant, error = %e, "cannot read the channel's snapshot for a held-back tenant");
                None
            }
        }
    })))
}
