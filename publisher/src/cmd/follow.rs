//! `follow --source postgres://… --layer1 FILE --key KEY --store URL`: a
//! long-running publisher that follows the platform's database.
//!
//! It `LISTEN`s for the schema's change notifications, lets changes settle
//! (`--debounce`, at most `--max-delay` after the first), then publishes
//! one batch: every active row read in one snapshot, compiled with
//! quarantine (a tenant whose row is invalid keeps its last published
//! config, its problems written to `strata_publish_problems`), published
//! incrementally (format 3: a batch costs what changed), and nothing at
//! all when the channel serves that content already. Of several followers
//! on one database, the one holding the advisory lock publishes; the
//! others wait and take over when its connection ends. A lost connection
//! is reconnected and followed by a full batch (what changed meanwhile).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use strata_common::compile::Compiled;
use strata_common::database::rows::RowHashes;
use strata_common::database::{Database, Event, follow as db_follow};
use strata_common::source::{Source, Tenants};

use crate::cmd::publish::{Destination, Leading, publish};
use crate::input::SigningKeys;
use crate::metrics::{FollowMetrics, Outcome};
use crate::push::parse_short_duration;
use crate::source_arg::SourceArgs;

/// Arguments of `follow`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    keys: SigningKeys,
    #[command(flatten)]
    to: Destination,
    /// Quiet time after a change before its batch is published: changes
    /// closer together go out in one publish.
    #[arg(long, default_value = "100ms", value_parser = parse_short_duration)]
    debounce: Duration,
    /// The longest a change waits for its batch, however busy the
    /// database is.
    #[arg(long, default_value = "1s", value_parser = parse_short_duration)]
    max_delay: Duration,
    /// A full batch at least this often, notified or not (a notification
    /// lost in a failover is caught up here).
    #[arg(long, default_value = "5m", value_parser = parse_short_duration)]
    resync: Duration,
    /// How often a follower that is not the leader tries to become it.
    #[arg(long, default_value = "2s", value_parser = parse_short_duration)]
    standby_retry: Duration,
    /// Serve Prometheus metrics on this TCP address (`127.0.0.1:9187`);
    /// no listener without it.
    #[arg(long, env = "STRATA_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

/// Follows the database until stopped; reconnects whenever the connection
/// is lost.
pub fn run(args: Args) -> Result<()> {
    if !args.source.is_database() {
        bail!(
            "follow reads a database: --source postgres://USER@HOST:PORT/DB (a directory is published with `publish`)"
        );
    }
    let keys = args.keys.load()?;
    args.source.layer1()?;
    let metrics = Arc::new(FollowMetrics::default());
    if let Some(addr) = args.metrics_addr {
        let bound = crate::metrics::serve(addr, metrics.clone())?;
        note!("note: metrics on http://{bound}/metrics");
    }
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        let e = match session(&args, &keys, &metrics) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        metrics.connected.set(0);
        metrics.leader.set(0);
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        tracing::warn!(error = %strata_common::report::chain(e.as_ref()), retry_in = ?backoff, "follow: lost the database; reconnecting, then a full batch");
        note!(
            "follow: {}; reconnecting in {} s",
            strata_common::report::chain(e.as_ref()),
            backoff.as_secs()
        );
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// One connection's life: lead (or wait to), then a full batch and one
/// batch per settled burst of changes. Returns when the connection is lost.
fn session(args: &Args, keys: &[strata_common::sign::SigningKey], m: &FollowMetrics) -> Result<()> {
    let db = args.source.connect()?;
    m.connected.set(1);
    let key = format!("{} {}", args.to.store, args.to.channel);
    let mut said = false;
    while !db_follow::try_lead(&db, &key)? {
        if !said {
            note!("follow: another follower publishes {key}; standing by");
            said = true;
        }
        wait(&db, args.standby_retry)?;
    }
    // Listening from here: a standby is not woken by every change.
    db_follow::listen(&db)?;
    m.leader.set(1);
    note!(
        "follow: leading; publishing {} from {}",
        args.to.channel,
        db.name()
    );
    // Row hashes from batch to batch: a batch hashes only rows written
    // since the last (a new connection, and each resync, hash them all).
    let mut hashes = RowHashes::default();
    loop {
        batch(args, keys, &db, m, &mut hashes)?;
        // The next change, then until it settles.
        if !wait(&db, args.resync)? {
            hashes.clear();
            continue;
        }
        let deadline = Instant::now() + args.max_delay;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !wait(&db, args.debounce.min(left))? {
                break;
            }
        }
    }
}

/// Waits up to `timeout` for a notification: `true` if one came, an error
/// if the connection ended.
fn wait(db: &Database, timeout: Duration) -> Result<bool> {
    match db.next_event(timeout) {
        None => Ok(false),
        Some(Event::Notified(_)) => Ok(true),
        Some(Event::Lost(reason)) => bail!("{}: {reason}", db.name()),
    }
}

/// One batch: the database's active rows now, published if they change
/// what the channel serves.
fn batch(
    args: &Args,
    keys: &[strata_common::sign::SigningKey],
    db: &Arc<Database>,
    m: &FollowMetrics,
    hashes: &mut RowHashes,
) -> Result<()> {
    let started = Instant::now();
    let opened = args.source.open(Some(db), hashes);
    let opened = match opened {
        Ok(o) => o,
        Err(e) if db.is_closed() => return Err(e),
        Err(e) => {
            m.batch(Outcome::Refused, started);
            tracing::error!(error = %strata_common::report::chain(e.as_ref()), "follow: the batch could not be read");
            note!(
                "follow: batch refused: {}",
                strata_common::report::chain(e.as_ref())
            );
            return Ok(());
        }
    };
    tracing::info!(
        ms = started.elapsed().as_millis() as u64,
        rows = opened.source.tenants.len(),
        "follow: rows listed"
    );
    let Some((_, snapshot)) = &opened.db else {
        bail!("follow reads a database source");
    };
    let leading = Leading { db, snapshot };
    let result = publish(&args.to, keys, &opened.source, true, Some(&leading));
    snapshot.close()?;
    let done = match result {
        Ok(done) => done,
        Err(e) if db.is_closed() => return Err(e),
        Err(e) => {
            m.batch(Outcome::Refused, started);
            note!(
                "follow: batch refused, nothing published: {}",
                strata_common::report::chain(e.as_ref())
            );
            return Ok(());
        }
    };
    report_held_back(db, &args.to.channel, &opened.source, &done.compiled)?;
    m.rows.set(opened.source.tenants.len() as i64);
    m.held_back.set(held_tenants(&done.compiled) as i64);
    let Some(published) = done.published else {
        m.batch(Outcome::Unchanged, started);
        return Ok(());
    };
    m.batch(Outcome::Published, started);
    let p = &published.pointer;
    m.version.set(p.version as i64);
    m.last_publish.set(
        strata_common::time::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    );
    note!(
        "follow: published version {} ({} tenant(s), {} held back, {} new object(s)) in {} ms",
        p.version,
        published.tenant_count,
        held_tenants(&done.compiled),
        published.uploaded.objects,
        started.elapsed().as_millis()
    );
    args.to.notify.announce(
        done.store.as_ref(),
        strata_common::pointer::PointerKind::Channel,
        &p.name,
        None,
        crate::push::Target {
            channel: Some(p.name.clone()),
            region: None,
            version: p.version,
            exact: false,
        },
    )
}

/// How many tenants a compile held back.
fn held_tenants(compiled: &Compiled) -> usize {
    let tenants: std::collections::BTreeSet<_> = compiled
        .held_back
        .iter()
        .map(|p| p.tenant.as_deref())
        .collect();
    tenants.len()
}

/// Writes the held-back problems of `compiled` (from the database
/// `source`) to `strata_publish_problems`, replacing what was there for
/// `channel`.
pub fn report_held_back(
    db: &Database,
    channel: &str,
    source: &Source,
    compiled: &Compiled,
) -> Result<()> {
    let Tenants::Rows { rows, .. } = &source.tenants else {
        return Ok(());
    };
    let held = db_follow::held_back(rows, &compiled.held_back);
    db_follow::report(db, channel, &held)?;
    Ok(())
}
