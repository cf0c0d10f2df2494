//! Following the channel: watch the store (file://) and poll it as a safety
//! net; on every check run [`Syncer::check`], the one ordered verification
//! pipeline, and apply what passes.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use strata_common::bundle::{self, BundleError, Limits, SignatureCheck};
use strata_common::canonical::sha256_hex;
use strata_common::pointer::{Pointer, PointerError, PointerKind};
use strata_common::publish::MAX_POINTER_BYTES;
use strata_common::sign::{Role, TrustedKeys};
use strata_common::store::{self, ObjectStore, StoreError};
use strata_common::time;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, instrument, warn};

use crate::config::Config;
use crate::db::{Db, DbError, SnapshotMeta};
use crate::state::{Shared, State};

/// What one check found.
#[derive(Debug)]
pub enum Outcome {
    /// A new snapshot was verified and is now served.
    Applied(u64),
    /// The channel points at what is already served.
    UpToDate(u64),
    /// The store offered something that failed verification.
    Refused(Refusal),
    /// The store could not be read, or holds nothing yet.
    Unavailable(Refusal),
}

/// Why a check did not apply anything: a metrics label and a message.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Short reason, used as the metrics label.
    pub reason: &'static str,
    /// What happened, for logs and `/v1/snapshot`.
    pub message: String,
}

fn refusal(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        message: message.into(),
    }
}

/// The sync side of the agent: store, trust, database and what it has seen.
pub struct Syncer {
    store: Box<dyn ObjectStore>,
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
    refused_pointer: Option<(String, Refusal)>,
}

impl Syncer {
    /// A syncer for `config`.
    pub fn new(
        config: &Config,
        store: Box<dyn ObjectStore>,
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
            limits: Limits {
                max_bundle_bytes: config.max_bundle_bytes,
                max_decompressed_bytes: config.max_bundle_bytes,
                ..Limits::default()
            },
            refused_pointer: None,
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

    fn served_version(&self) -> Option<(u64, String)> {
        let served = self.shared.served.load();
        let meta = served.as_ref()?.current_meta()?;
        Some((meta.version, meta.bundle_sha256.clone()))
    }

    /// One check of the store, recorded in the status and metrics.
    #[instrument(skip(self), fields(channel = %self.channel))]
    pub fn check(&mut self) -> Outcome {
        let outcome = self.check_inner();
        self.record(&outcome);
        outcome
    }

    /// The verification pipeline. Each step must pass before the next runs,
    /// and nothing is written until every check passed:
    ///
    /// 1. read the channel pointer (bounded);
    /// 2. its signatures by a threshold of trusted publisher keys;
    /// 3. the target: the channel pointer, or a region pin (see [`Self::target`]);
    /// 4. the pointer's expiry;
    /// 5. its version is not lower than the one served;
    /// 6. the bundle size limit;
    /// 7. copy the bundle (bounded) into a private file, matching the
    ///    pointer's size and SHA-256 on the way ([`Self::fetch`]);
    /// 8. the manifest's signatures, payload size and payload hash (streamed);
    /// 9. the manifest's version and expiry;
    /// 10. decode with limits into one redb write transaction;
    /// 11. swap the served snapshot.
    fn check_inner(&mut self) -> Outcome {
        // 1.
        let key = PointerKind::Channel.store_key(&self.channel);
        let pointer_bytes = match self.store.get(&key, MAX_POINTER_BYTES) {
            Ok(obj) => obj.bytes,
            Err(StoreError::NotFound { .. }) => {
                return Outcome::Unavailable(refusal(
                    "store_empty",
                    format!("{}: no {key} yet; waiting for a publish", self.store.url()),
                ));
            }
            Err(e) => {
                return Outcome::Unavailable(refusal(
                    "store_unreachable",
                    format!("{}: {e}", self.store.url()),
                ));
            }
        };
        let pointer_hash = sha256_hex(&pointer_bytes);
        if let Some((hash, refused)) = &self.refused_pointer
            && *hash == pointer_hash
        {
            return Outcome::Refused(refused.clone());
        }
        let outcome = self.verify_and_apply(&key, &pointer_bytes);
        match &outcome {
            Outcome::Refused(r) => self.refused_pointer = Some((pointer_hash, r.clone())),
            _ => self.refused_pointer = None,
        }
        outcome
    }

    fn verify_and_apply(&mut self, key: &str, pointer_bytes: &[u8]) -> Outcome {
        let started = Instant::now();
        // 2.
        let pointer = match Pointer::verify(
            pointer_bytes,
            PointerKind::Channel,
            &self.channel,
            &self.trust,
        ) {
            Ok((p, _)) => p,
            Err(e) => return Outcome::Refused(refusal("pointer_signature", format!("{key}: {e}"))),
        };
        // 3.
        let (pointer, pinned) = self.target(pointer);
        // 4.
        // An expired pointer is the publisher not refreshing (stale); an
        // unreadable expiry is a bad document (refused).
        match pointer.check_expiry(time::now()) {
            Ok(()) => {}
            Err(e @ PointerError::Expired { .. }) => {
                return Outcome::Unavailable(refusal("pointer_expired", format!("{key}: {e}")));
            }
            Err(e) => return Outcome::Refused(refusal("pointer_malformed", format!("{key}: {e}"))),
        }
        // 5.
        if let Some((served, served_sha)) = self.served_version() {
            if pointer.version < served {
                return Outcome::Refused(refusal(
                    "older_version",
                    format!(
                        "{key} names version {}, older than the served version {served}; refusing a rollback that no operator pin asked for",
                        pointer.version
                    ),
                ));
            }
            if pointer.version == served {
                if pointer.bundle_sha256 == served_sha {
                    return Outcome::UpToDate(served);
                }
                return Outcome::Refused(refusal(
                    "version_conflict",
                    format!(
                        "{key} names version {served} with a different bundle than the one served"
                    ),
                ));
            }
        }
        // 6.
        if pointer.bundle_size > self.limits.max_bundle_bytes {
            return Outcome::Refused(refusal(
                "bundle_too_large",
                format!(
                    "{}: {} bytes, over max_bundle_bytes {}",
                    pointer.bundle, pointer.bundle_size, self.limits.max_bundle_bytes
                ),
            ));
        }
        // 7.
        let (spool, sha) = match self.fetch(&pointer) {
            Ok(fetched) => fetched,
            Err(outcome) => return outcome,
        };
        let fetched = started.elapsed();
        // 8.
        let verified = match bundle::verify(
            BufReader::new(spool),
            SignatureCheck::Trusted(&self.trust),
            &self.limits,
        ) {
            Ok(v) => v,
            Err(e) => {
                return Outcome::Refused(refusal(
                    bundle_reason(&e),
                    format!("{}: {e}", pointer.bundle),
                ));
            }
        };
        // 9.
        let manifest = verified.manifest().clone();
        if manifest.version != pointer.version {
            return Outcome::Refused(refusal(
                "version_conflict",
                format!(
                    "{}: manifest version {} but the pointer says {}",
                    pointer.bundle, manifest.version, pointer.version
                ),
            ));
        }
        match time::parse(&manifest.expires_at) {
            Ok(t) if t >= time::now() => {}
            _ => {
                return Outcome::Refused(refusal(
                    "bundle_expired",
                    format!(
                        "{}: bundle signature expired at {}",
                        pointer.bundle, manifest.expires_at
                    ),
                ));
            }
        }
        // 10.
        let meta = SnapshotMeta {
            version: manifest.version,
            bundle_sha256: sha,
            bundle_size: pointer.bundle_size,
            created_at: manifest.created_at.clone(),
            expires_at: pointer.expires_at.clone(),
            layer1_version: manifest.layer1_version.clone(),
            tenant_count: manifest.tenant_count,
            source: self.store.url().to_owned(),
            fetched_at: time::format(time::now()),
            pinned,
            manifest: String::from_utf8_lossy(&verified.header.manifest_bytes).into_owned(),
            signatures: verified.header.signatures.clone(),
        };
        let mut payload = match verified.payload() {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Refused(refusal(
                    bundle_reason(&e),
                    format!("{}: {e}", pointer.bundle),
                ));
            }
        };
        let verified_at = started.elapsed();
        self.shared.status().applying = Some(meta.version);
        let ingested = self.db.ingest(&meta, &mut payload, self.retain);
        self.shared.status().applying = None;
        let ingested = match ingested {
            Ok(done) => done,
            Err(e) => {
                let reason = match &e {
                    DbError::Bundle(e) => bundle_reason(e),
                    _ => "ingest",
                };
                return Outcome::Refused(refusal(
                    reason,
                    format!(
                        "{}: {e}; the previous snapshot stays served",
                        pointer.bundle
                    ),
                ));
            }
        };
        let m = &self.shared.metrics;
        m.frames_decoded
            .fetch_add(ingested.frames_decoded, Ordering::Relaxed);
        m.frames_skipped
            .fetch_add(ingested.frames_skipped, Ordering::Relaxed);
        // 11.
        match self.db.reader() {
            Ok(Some(reader)) => {
                // Swap under the status lock so `/v1/snapshot` never shows the
                // new version with the old state.
                let mut status = self.shared.status();
                self.shared.served.store(Some(Arc::new(reader)));
                status.state = State::Fresh;
                status.last_error = None;
            }
            Ok(None) => {
                return Outcome::Refused(refusal("ingest", "snapshot committed but not readable"));
            }
            Err(e) => {
                return Outcome::Refused(refusal("ingest", format!("reading back snapshot: {e}")));
            }
        }
        m.last_apply_micros
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        info!(
            version = manifest.version,
            tenants = ingested.tenants,
            bodies_written = ingested.bodies_written,
            bodies_shared = ingested.bodies_shared,
            rows_written = ingested.rows_written,
            frames_decoded = ingested.frames_decoded,
            frames_skipped = ingested.frames_skipped,
            durable = ingested.durable,
            fetch_seconds = fetched.as_secs_f64(),
            verify_seconds = (verified_at - fetched).as_secs_f64(),
            seconds = started.elapsed().as_secs_f64(),
            "snapshot applied"
        );
        if !ingested.durable {
            let served_at = started.elapsed();
            match self.db.persist() {
                Ok(()) => info!(
                    version = manifest.version,
                    persist_seconds = (started.elapsed() - served_at).as_secs_f64(),
                    "snapshot durable"
                ),
                Err(e) => warn!(
                    "snapshot {} is served but not yet durable: {e}",
                    manifest.version
                ),
            }
        }
        m.applies.fetch_add(1, Ordering::Relaxed);
        Outcome::Applied(manifest.version)
    }

    /// Copies the bundle the pointer names into an unnamed file in the data
    /// directory, checking its size and SHA-256 against the pointer on the
    /// way. Verification then reads this private copy, never the store
    /// again: what was hashed is what gets decoded, and memory stays flat
    /// whatever the bundle's size.
    fn fetch(&self, pointer: &Pointer) -> Result<(File, String), Outcome> {
        let unavailable = |e: std::io::Error| {
            Outcome::Unavailable(refusal(
                "spool",
                format!(
                    "cannot spool {} into {}: {e}",
                    pointer.bundle,
                    self.spool_dir.display()
                ),
            ))
        };
        let mut spool = tempfile::tempfile_in(&self.spool_dir).map_err(unavailable)?;
        let copied = match store::copy_hashed(
            self.store.as_ref(),
            &pointer.bundle,
            self.limits.max_bundle_bytes,
            &mut spool,
        ) {
            Ok(c) => c,
            Err(StoreError::TooLarge { size, limit, .. }) => {
                return Err(Outcome::Refused(refusal(
                    "bundle_too_large",
                    format!("{}: {size} bytes, over {limit}", pointer.bundle),
                )));
            }
            Err(e) => {
                return Err(Outcome::Unavailable(refusal(
                    "store_unreachable",
                    e.to_string(),
                )));
            }
        };
        if copied.size != pointer.bundle_size || copied.sha256 != pointer.bundle_sha256 {
            return Err(Outcome::Refused(refusal(
                "bundle_hash",
                format!(
                    "{}: {} bytes with SHA-256 {}, the signed pointer says {} bytes with {}: the bundle was altered or replaced",
                    pointer.bundle,
                    copied.size,
                    copied.sha256,
                    pointer.bundle_size,
                    pointer.bundle_sha256
                ),
            )));
        }
        spool.seek(SeekFrom::Start(0)).map_err(unavailable)?;
        Ok((spool, copied.sha256))
    }

    /// Where region pins plug in: given the verified channel pointer, return
    /// the pointer to follow and whether a pin chose it. Until pins exist the
    /// channel pointer is followed as is.
    fn target(&self, channel: Pointer) -> (Pointer, bool) {
        (channel, false)
    }

    /// Updates status and metrics, logging once per change of error.
    fn record(&self, outcome: &Outcome) {
        let m = &self.shared.metrics;
        m.checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ready = self.shared.is_ready();
        let mut status = self.shared.status();
        status.last_check = Some(time::format(time::now()));
        let (state, error) = match outcome {
            Outcome::Applied(_) => (State::Fresh, None),
            Outcome::UpToDate(_) => (State::Fresh, None),
            Outcome::Refused(r) => (State::Degraded, Some(r)),
            Outcome::Unavailable(r) => (State::Stale, Some(r)),
        };
        match error {
            Some(r) => {
                if status.last_error.as_deref() != Some(r.message.as_str()) {
                    warn!(reason = r.reason, "{}", r.message);
                    m.count_refusal(r.reason);
                }
                status.last_error = Some(r.message.clone());
            }
            None => {
                if status.last_error.take().is_some() {
                    info!("store check succeeded again");
                }
            }
        }
        status.state = if ready { state } else { State::Starting };
    }
}

fn bundle_reason(e: &BundleError) -> &'static str {
    match e {
        BundleError::Signature(_) => "bundle_signature",
        BundleError::TooLarge { .. }
        | BundleError::DecompressedTooLarge { .. }
        | BundleError::TooManyRecords { .. } => "bundle_too_large",
        BundleError::PayloadHashMismatch { .. } => "bundle_hash",
        _ => "bundle_malformed",
    }
}

/// Runs checks until shutdown: at start, on every change the watcher sees in
/// a `file://` store, and every `poll_interval` (±20% jitter). The checks
/// themselves run on the sync thread (see `spawn_sync_thread`).
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
    loop {
        if watcher.is_none()
            && let Some(dir) = &store_dir
        {
            watcher = watch(dir, tx.clone());
        }
        let (done_tx, done_rx) = oneshot::channel();
        if checks.send(done_tx).is_err() || done_rx.await.is_err() {
            warn!("sync check panicked; the sync loop stops, the last snapshot stays served");
            return;
        }
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        tokio::select! {
            _ = tokio::time::sleep(poll.mul_f64(jitter)) => {}
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
fn spawn_sync_thread(
    mut syncer: Syncer,
) -> std::io::Result<std::sync::mpsc::Sender<oneshot::Sender<()>>> {
    let (tx, rx) = std::sync::mpsc::channel::<oneshot::Sender<()>>();
    std::thread::Builder::new()
        .name("strata-sync".into())
        .spawn(move || {
            lowest_priority("the sync thread");
            for done in rx {
                syncer.check();
                let _ = done.send(());
            }
        })?;
    Ok(tx)
}

/// Puts the calling thread at `SCHED_IDLE` (see [`spawn_sync_thread`]).
pub(crate) fn lowest_priority(thread: &str) {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
        warn!("cannot run {thread} at SCHED_IDLE ({e:?}); an apply may slow lookups");
    }
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
    use super::names_a_pointer;
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
