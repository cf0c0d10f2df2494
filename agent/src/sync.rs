//! Following the channel: watch the store (file://) and poll it as a safety
//! net; on every check run [`Syncer::check`], the one ordered verification
//! pipeline, and apply what passes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use strata_common::bundle::Limits;
use strata_common::canonical::sha256_hex;
use strata_common::sign::{Role, TrustedKeys};
use strata_common::store::ReadStore;
use strata_common::time;
use strata_common::verify::{self, Checked, Policy, Refusal, SeenPointer, Severity};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, instrument, warn};

use crate::config::Config;
use crate::db::{Db, DbError, SnapshotMeta};
use crate::priority::lowest_priority;
use crate::state::{Shared, State};

/// What one check found.
#[derive(Debug)]
pub enum Outcome {
    /// A new snapshot was verified and is now served.
    Applied(u64),
    /// The channel points at what is already served.
    UpToDate(u64),
    /// Nothing was applied: the store could not be read or offered
    /// something that failed verification ([`Refusal::severity`] says which).
    Refused(Arc<Refusal>),
}

/// The sync side of the agent: store, trust, database and what it has seen.
pub struct Syncer {
    store: Box<dyn ReadStore>,
    trust: TrustedKeys,
    db: Arc<Db>,
    shared: Arc<Shared>,
    channel: String,
    retain: usize,
    limits: Limits,
    /// Where a bundle is copied while it is verified and decoded.
    spool_dir: PathBuf,
    /// The pointer bytes' hash last refused, so a bad bundle is not fetched
    /// again on every poll; cleared when the pointer changes.
    refused_pointer: Option<(String, Arc<Refusal>)>,
    /// The pointer as last read, for the next conditional read.
    seen_pointer: Option<SeenPointer>,
}

impl Syncer {
    /// A syncer for `config`.
    pub fn new(
        config: &Config,
        store: Box<dyn ReadStore>,
        trust: TrustedKeys,
        db: Arc<Db>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            store,
            trust,
            db,
            shared,
            channel: config.channel.clone(),
            retain: config.retain,
            spool_dir: config.data_dir.clone(),
            limits: config.limits(),
            refused_pointer: None,
            seen_pointer: None,
        }
    }

    /// Serves what the database holds, after checking its stored manifest
    /// signatures against today's trusted keys. Used once at start, so a
    /// restart serves at once without the network. A stored snapshot those
    /// keys do not vouch for is dropped, so that the store's snapshot is
    /// fetched as on a new node, whatever its version.
    pub fn restore(&self) -> Result<Option<u64>, String> {
        let reader = self.db.reader().map_err(|e| e.to_string())?;
        let Some(reader) = reader else {
            return Ok(None);
        };
        let vouched = reader
            .current_meta()
            .ok_or_else(|| "the local snapshot file names no current snapshot".to_owned())
            .and_then(|meta| {
                self.trust
                    .verify(Role::Publisher, meta.manifest.as_bytes(), &meta.signatures)
                    .map_err(|e| {
                        format!("stored snapshot {} no longer verifies: {e}", meta.version)
                    })
            });
        let refused = match vouched {
            Ok(_signers) => {
                let version = reader.current;
                self.shared.served.store(Some(Arc::new(reader)));
                return Ok(Some(version));
            }
            Err(refused) => refused,
        };
        drop(reader);
        match self.db.clear() {
            Ok(()) => Err(format!(
                "{refused}; dropped it, fetching the channel's snapshot as a new node would"
            )),
            Err(e) => Err(format!(
                "{refused}; dropping it failed too ({e}), so the store's snapshot may be \
                 refused as already stored or older: remove strata.redb from data_dir and restart"
            )),
        }
    }

    /// One check of the store, recorded in the status and metrics.
    #[instrument(skip(self), fields(channel = %self.channel))]
    pub fn check(&mut self) -> Outcome {
        let outcome = match self.check_inner() {
            Ok(outcome) => outcome,
            Err(refusal) => Outcome::Refused(Arc::new(refusal)),
        };
        self.record(&outcome);
        outcome
    }

    /// Reads the pointer; runs the rest of the pipeline unless these very
    /// bytes were refused before.
    fn check_inner(&mut self) -> Result<Outcome, Refusal> {
        let seen = verify::read_pointer(
            self.store.as_ref(),
            &self.channel,
            self.seen_pointer.as_ref(),
        )?;
        let pointer_bytes = &self.seen_pointer.insert(seen).bytes.clone();
        let pointer_hash = sha256_hex(pointer_bytes);
        if let Some((hash, refused)) = &self.refused_pointer
            && *hash == pointer_hash
        {
            return Ok(Outcome::Refused(refused.clone()));
        }
        let outcome = match self.verify_and_apply(pointer_bytes) {
            Ok(outcome) => outcome,
            Err(refusal) => Outcome::Refused(Arc::new(refusal)),
        };
        self.refused_pointer = match &outcome {
            Outcome::Refused(r) if r.is_final() => Some((pointer_hash, r.clone())),
            _ => None,
        };
        Ok(outcome)
    }

    /// The rest of the pipeline ([`verify::verify`]), then the apply: the
    /// payload decoded into one redb write transaction, committed only if
    /// every record passed, then swapped in as the served snapshot.
    fn verify_and_apply(&mut self, pointer_bytes: &[u8]) -> Result<Outcome, Refusal> {
        let started = Instant::now();
        let served = self.shared.served.load();
        let served_meta = served.as_ref().and_then(|r| r.current_meta());
        let policy = Policy {
            trust: &self.trust,
            channel: &self.channel,
            limits: self.limits,
            now: time::now(),
            served: served_meta.map(|m| (m.version, m.bundle_sha256.as_str())),
        };
        let checked = verify::verify(self.store.as_ref(), pointer_bytes, &policy, &self.spool_dir)?;
        drop(served);
        let mut verified = match checked {
            Checked::UpToDate(v) => return Ok(Outcome::UpToDate(v)),
            Checked::New(v) => v,
        };
        let verified_at = started.elapsed();
        let pointer = &verified.pointer;
        let meta = SnapshotMeta {
            version: verified.manifest.version,
            bundle_sha256: pointer.bundle_sha256.clone(),
            bundle_size: pointer.bundle_size,
            created_at: verified.manifest.created_at.clone(),
            expires_at: pointer.expires_at.clone(),
            layer1_version: verified.manifest.layer1_version.clone(),
            tenant_count: verified.manifest.tenant_count,
            source: self.store.url().to_string(),
            fetched_at: time::format(time::now()),
            pinned: false,
            manifest: String::from_utf8_lossy(&verified.manifest_bytes).into_owned(),
            signatures: verified.signatures.clone(),
        };
        let bundle = pointer.bundle.clone();
        self.shared.status().applying = Some(meta.version);
        let ingested = self.db.ingest(&meta, &mut verified.payload, self.retain);
        self.shared.status().applying = None;
        let ingested = ingested.map_err(|e| match e {
            DbError::Bundle(source) => Refusal::Bundle {
                bundle: bundle.clone(),
                source,
            },
            other => Refusal::Ingest {
                bundle: bundle.clone(),
                permanent: matches!(
                    other,
                    DbError::AlreadyStored { .. } | DbError::OlderThanStored { .. }
                ),
                source: Box::new(other),
            },
        })?;
        let m = &self.shared.metrics;
        m.frames_decoded
            .fetch_add(ingested.frames_decoded, Ordering::Relaxed);
        m.frames_skipped
            .fetch_add(ingested.frames_skipped, Ordering::Relaxed);
        // Swap under the status lock so `/v1/snapshot` never shows the new
        // version with the old state.
        let reader = self
            .db
            .reader()
            .and_then(|r| r.ok_or(DbError::NoCurrent))
            .map_err(|e| Refusal::Ingest {
                bundle: bundle.clone(),
                source: Box::new(e),
                permanent: false,
            })?;
        {
            let mut status = self.shared.status();
            self.shared.served.store(Some(Arc::new(reader)));
            status.state = State::Fresh;
            status.last_error = None;
            status.last_error_reason = None;
        }
        let version = meta.version;
        m.last_apply_micros
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        info!(
            version,
            tenants = ingested.tenants,
            bodies_written = ingested.bodies_written,
            bodies_shared = ingested.bodies_shared,
            rows_written = ingested.rows_written,
            frames_decoded = ingested.frames_decoded,
            frames_skipped = ingested.frames_skipped,
            durable = ingested.durable,
            verify_seconds = verified_at.as_secs_f64(),
            seconds = started.elapsed().as_secs_f64(),
            "snapshot applied"
        );
        if !ingested.durable {
            let served_at = started.elapsed();
            match self.db.persist() {
                Ok(()) => info!(
                    version,
                    persist_seconds = (started.elapsed() - served_at).as_secs_f64(),
                    "snapshot durable"
                ),
                Err(e) => warn!("snapshot {version} is served but not yet durable: {e}"),
            }
        }
        m.applies.fetch_add(1, Ordering::Relaxed);
        Ok(Outcome::Applied(version))
    }

    /// Updates status and metrics, logging once per change of error.
    fn record(&self, outcome: &Outcome) {
        let m = &self.shared.metrics;
        m.checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ready = self.shared.is_ready();
        let mut status = self.shared.status();
        status.last_check = Some(time::format(time::now()));
        let (state, error) = match outcome {
            Outcome::Applied(_) | Outcome::UpToDate(_) => (State::Fresh, None),
            Outcome::Refused(r) => match r.severity() {
                Severity::Unavailable => (State::Stale, Some(r)),
                Severity::Refused => (State::Degraded, Some(r)),
            },
        };
        match error {
            Some(r) => {
                let message = r.to_string();
                if status.last_error.as_deref() != Some(message.as_str()) {
                    warn!(reason = r.reason(), "{message}");
                    m.count_refusal(r.reason());
                }
                status.last_error = Some(message);
                status.last_error_reason = Some(r.reason());
            }
            None => {
                status.last_error_reason = None;
                if status.last_error.take().is_some() {
                    info!("store check succeeded again");
                }
            }
        }
        status.state = if ready { state } else { State::Starting };
    }
}

/// The longest wait between checks while the store keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How long to wait after `failures` checks in a row found the store (or the
/// local disk) failing: `poll` doubled per failure, up to [`MAX_BACKOFF`] (or
/// `poll`, if that is longer). Wrong credentials or an outage are then
/// retried a few times a minute, not hot.
fn backoff(poll: Duration, failures: u32) -> Duration {
    let cap = MAX_BACKOFF.max(poll);
    poll.checked_mul(1u32 << failures.min(16))
        .map_or(cap, |d| d.min(cap))
}

/// Runs checks until shutdown: at start, on every change the watcher sees in
/// a `file://` store, and every `poll_interval` (±20% jitter), backing off
/// while the store is unreachable. The checks themselves run on the sync
/// thread (see `spawn_sync_thread`).
pub async fn run(
    syncer: Syncer,
    store_dir: Option<PathBuf>,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let checks = match spawn_sync_thread(syncer) {
        Ok(c) => c,
        Err(e) => {
            warn!("cannot start the sync thread: {e}; the last snapshot stays served");
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = None;
    let mut failures = 0;
    loop {
        if watcher.is_none()
            && let Some(dir) = &store_dir
        {
            watcher = watch(dir, tx.clone());
        }
        let (done_tx, done_rx) = oneshot::channel();
        if checks.send(done_tx).is_err() {
            warn!("sync check panicked; the sync loop stops, the last snapshot stays served");
            return;
        }
        let Ok(unreachable) = done_rx.await else {
            warn!("sync check panicked; the sync loop stops, the last snapshot stays served");
            return;
        };
        failures = if unreachable { failures + 1 } else { 0 };
        let wait = if unreachable {
            backoff(poll, failures)
        } else {
            poll
        };
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        tokio::select! {
            _ = tokio::time::sleep(wait.mul_f64(jitter)) => {}
            _ = rx.recv() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Starts the thread that runs one check per request, at `SCHED_IDLE`: the
/// kernel runs it only on a CPU nothing else wants, so applying a large
/// snapshot never delays a lookup (or the call worker beside us). Measured
/// in BENCHMARKS.md; nice 10 was not enough. The thread is not joined: an
/// exit in the middle of an ingest is as safe as a crash.
///
/// One thread, not a decode/write pipeline: decompressing on a second
/// `SCHED_IDLE` thread made a 10k-tenant apply ~20 % faster, but took the
/// lookup p99 during a 1 % publish at 2,000 req/s from 1.1–1.4× idle to
/// 3.5–9× (BENCHMARKS.md): with both cores busy, every lookup has to
/// preempt a sync thread, which a `PREEMPT_NONE` kernel does only when that
/// thread leaves the kernel.
///
/// Each request is answered with whether the loop should back off: the
/// store or the local disk failed ([`Refusal::backs_off`]).
fn spawn_sync_thread(
    mut syncer: Syncer,
) -> std::io::Result<std::sync::mpsc::Sender<oneshot::Sender<bool>>> {
    let (tx, rx) = std::sync::mpsc::channel::<oneshot::Sender<bool>>();
    std::thread::Builder::new()
        .name("strata-sync".into())
        .spawn(move || {
            lowest_priority("the sync thread");
            for done in rx {
                let outcome = syncer.check();
                let back_off = matches!(&outcome, Outcome::Refused(r) if r.backs_off());
                let _ = done.send(back_off);
            }
        })?;
    Ok(tx)
}

/// Watches a store directory; a change to a channel pointer or a pin asks
/// for a check (coalesced). Reads and bundle uploads are ignored: a bundle is served
/// only once a pointer names it, and the writes of a large upload would
/// otherwise each start a check that re-verifies the unchanged pointer.
fn watch(dir: &std::path::Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let root = dir.to_path_buf();
    let mut w = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Our own reads of the pointer are `Access` events: waking on them
        // would make every check start the next one.
        if event.kind.is_access() {
            return;
        }
        if event.need_rescan() || event.paths.iter().any(|p| names_a_pointer(&root, p)) {
            let _ = tx.try_send(());
        }
    })
    .ok()?;
    w.watch(dir, notify::RecursiveMode::Recursive).ok()?;
    Some(w)
}

/// Whether `path` (from a watcher event) is under the store's `channels/` or
/// `pins/`, or is one of those directories itself.
fn names_a_pointer(root: &std::path::Path, path: &std::path::Path) -> bool {
    path.strip_prefix(root)
        .ok()
        .and_then(|rel| rel.components().next())
        .is_some_and(|first| first.as_os_str() == "channels" || first.as_os_str() == "pins")
}

#[cfg(test)]
mod tests {
    use super::{backoff, names_a_pointer};
    use std::time::Duration;

    #[test]
    fn an_unreachable_store_is_retried_less_and_less_often_up_to_a_minute() {
        let poll = Duration::from_secs(5);
        let waits: Vec<u64> = (1..=6).map(|n| backoff(poll, n).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 60, 60, 60]);
        assert_eq!(backoff(poll, 1000), Duration::from_secs(60));
        // A poll interval above the cap is kept.
        assert_eq!(
            backoff(Duration::from_secs(300), 3),
            Duration::from_secs(300)
        );
    }
    use std::path::Path;

    #[test]
    fn only_pointer_and_pin_changes_wake_the_sync_thread() {
        let root = Path::new("/srv/store");
        assert!(names_a_pointer(
            root,
            Path::new("/srv/store/channels/stable.json")
        ));
        assert!(names_a_pointer(
            root,
            Path::new("/srv/store/channels/.stable.json.tmp")
        ));
        assert!(names_a_pointer(
            root,
            Path::new("/srv/store/pins/eu-west-1.json")
        ));
        assert!(names_a_pointer(root, Path::new("/srv/store/channels")));
        assert!(!names_a_pointer(
            root,
            Path::new("/srv/store/snapshots/00000000000000000002.bundle")
        ));
        assert!(!names_a_pointer(root, Path::new("/srv/store")));
        assert!(!names_a_pointer(
            root,
            Path::new("/elsewhere/channels/stable.json")
        ));
    }
}
