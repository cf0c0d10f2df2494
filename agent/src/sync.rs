//! Following the channel: watch the store (file://) and poll it as a safety
//! net; on every check run [`Syncer::check`], the one ordered verification
//! pipeline, and apply what passes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use strata_common::bundle::Limits;
use strata_common::canonical::sha256_hex;
use strata_common::pointer::PointerKind;
use strata_common::sign::{Role, SignatureError, TrustedKeys};
use strata_common::store::ReadStore;
use strata_common::time;
use strata_common::verify::{
    self, Checked, Named, Policy, Refusal, SeenPointer, Severity, Source, Stored,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, instrument, warn};

use crate::config::Config;
use crate::db::{Db, DbError, Marks, SnapshotMeta};
use crate::priority::lowest_priority;
use crate::state::{Followed, FollowedBy, Shared, State};

/// What one check found.
#[derive(Debug)]
pub enum Outcome {
    /// A new snapshot was verified and is now served (fetched, or switched
    /// to from the stored ones).
    Applied(u64),
    /// The document followed names what is already served.
    UpToDate(u64),
    /// Nothing was applied: the store could not be read or offered
    /// something that failed verification ([`Refusal::severity`] says which).
    Refused(Arc<Refusal>),
}

/// The document a check follows, as read.
enum Doc {
    /// The node's local pin: a version.
    Local(u64),
    /// The region's pin file.
    Pin(Vec<u8>),
    /// The channel pointer file.
    Channel(Vec<u8>),
}

impl Doc {
    fn source(&self) -> Source<'_> {
        match self {
            Doc::Local(v) => Source::Local(*v),
            Doc::Pin(b) => Source::Pin(b),
            Doc::Channel(b) => Source::Channel(b),
        }
    }

    /// What the refusal cache keys on: every document the decision used
    /// (a pin decides alone; without one, the channel pointer does).
    fn cache_key(&self) -> String {
        match self {
            Doc::Local(v) => format!("local:{v}"),
            Doc::Pin(b) => format!("pin:{}", sha256_hex(b)),
            Doc::Channel(b) => format!("channel:{}", sha256_hex(b)),
        }
    }
}

/// The sync side of the agent: store, trust, database and what it has seen.
pub struct Syncer {
    store: Box<dyn ReadStore>,
    trust: TrustedKeys,
    db: Db,
    shared: Arc<Shared>,
    channel: String,
    region: String,
    retain: usize,
    limits: Limits,
    /// The agent's config file, read again at every check for key rotation.
    config_path: PathBuf,
    /// This node's local pin file, if configured.
    pin_file: Option<PathBuf>,
    /// Where a bundle is copied while it is verified and decoded.
    spool_dir: PathBuf,
    /// The documents last refused, so a bad bundle is not fetched again on
    /// every poll; cleared when they or the trusted keys change.
    refused: Option<(String, Arc<Refusal>)>,
    /// The channel pointer as last read, for the next conditional read.
    seen_pointer: Option<SeenPointer>,
    /// The region's pin as last read.
    seen_pin: Option<SeenPointer>,
    /// The rollback-protection marks, as committed.
    marks: Marks,
    /// Trusted key files the config names that were missing at the last
    /// reload, to log a change once.
    missing_keys: Vec<PathBuf>,
    /// What was last logged about the config file (it failed to load, or
    /// changed a setting only a restart applies), to say it once.
    config_said: Option<String>,
    /// The settings the agent started with that only a restart changes.
    started_with: RestartSettings,
    /// A write to the snapshot file failed and redb latched the failure:
    /// the file is opened again before the next check.
    db_failed: bool,
}

impl Syncer {
    /// A syncer for `config`, read from `config_path`.
    pub fn new(
        config: &Config,
        config_path: &Path,
        store: Box<dyn ReadStore>,
        trust: TrustedKeys,
        db: Db,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            store,
            trust,
            db,
            shared,
            channel: config.channel.clone(),
            region: config.region.clone(),
            retain: config.retain,
            spool_dir: config.data_dir.clone(),
            limits: config.limits(),
            config_path: config_path.to_path_buf(),
            pin_file: config.pin_file.clone(),
            refused: None,
            seen_pointer: None,
            seen_pin: None,
            marks: Marks::default(),
            missing_keys: Vec::new(),
            config_said: None,
            started_with: RestartSettings::of(config),
            db_failed: false,
        }
    }

    /// Serves what the database holds, after checking its stored manifest
    /// signatures against today's trusted keys. Used once at start, so a
    /// restart serves at once without the network. A stored snapshot those
    /// keys do not vouch for is dropped, so that the store's snapshot is
    /// fetched as on a new node, whatever its version.
    pub fn restore(&mut self) -> Result<Option<u64>, String> {
        self.marks = self.db.marks().map_err(|e| e.to_string())?;
        let reader = self.db.reader().map_err(|e| e.to_string())?;
        let Some(reader) = reader else {
            return Ok(None);
        };
        let vouched = reader
            .current_meta()
            .ok_or_else(|| "the local snapshot file names no current snapshot".to_owned())
            .and_then(|meta| {
                self.vouches(meta).map_err(|e| {
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
        self.drop_stored(&refused)
    }

    /// Whether today's trusted publisher keys still vouch for a stored
    /// snapshot: its manifest's signatures, checked again.
    fn vouches(&self, meta: &SnapshotMeta) -> Result<(), SignatureError> {
        self.trust
            .verify(Role::Publisher, meta.manifest.as_bytes(), &meta.signatures)
            .map(drop)
    }

    /// Stops serving the stored snapshots and empties the file (marks too,
    /// as on a new node): today's keys no longer vouch for them.
    fn drop_stored(&mut self, why: &str) -> Result<Option<u64>, String> {
        self.shared.served.store(None);
        self.marks = Marks::default();
        match self.db.clear() {
            Ok(()) => Err(format!(
                "{why}; dropped it, fetching the channel's snapshot as a new node would"
            )),
            Err(e) => Err(format!(
                "{why}; dropping it failed too ({e}), so the store's snapshot may be \
                 refused as already stored: remove strata.redb from data_dir and restart"
            )),
        }
    }

    /// Reads the config's trusted keys again: a key added is trusted from
    /// this check on, a key removed (its entry, or its file) stops vouching
    /// at once, for the store and for what is stored. A config that no
    /// longer loads keeps the keys in use, and says so once.
    fn reload_trust(&mut self) {
        let loaded = Config::load(&self.config_path)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                let trust = c.trust_live(&self.config_path).map_err(|e| e.to_string())?;
                Ok((c, trust))
            });
        let (trust, missing) = match loaded {
            Ok((c, (trust, missing))) => {
                let changed = self.started_with.changed_in(&c);
                let mut problems = Vec::new();
                if !changed.is_empty() {
                    problems.push(format!(
                        "{} changed; the agent goes on with the values it started with until it is restarted",
                        changed.join(", ")
                    ));
                }
                // Revoked now, and fatal at the next start.
                if !missing.is_empty() {
                    let files: Vec<String> =
                        missing.iter().map(|p| p.display().to_string()).collect();
                    problems.push(format!(
                        "trusted key file(s) {} gone: no longer trusted, and the agent would not start with this file (remove their [[trusted_keys]] entries, or put the files back)",
                        files.join(", ")
                    ));
                }
                self.shared.status().config_problem = (!problems.is_empty())
                    .then(|| format!("{}: {}", self.config_path.display(), problems.join("; ")));
                if changed.is_empty() {
                    self.config_said = None;
                } else {
                    let message = format!(
                        "{} changed in {}: a restart applies it",
                        changed.join(", "),
                        self.config_path.display()
                    );
                    if self.config_said.as_deref() != Some(message.as_str()) {
                        warn!("{message}");
                        self.config_said = Some(message);
                    }
                }
                (trust, missing)
            }
            Err(e) => {
                let message = format!(
                    "{e}; the trusted keys in use are kept, and the agent would not start with this file"
                );
                if self.config_said.as_deref() != Some(message.as_str()) {
                    warn!("{message}");
                    self.config_said = Some(message.clone());
                }
                self.shared.status().config_problem = Some(message);
                return;
            }
        };
        if missing != self.missing_keys {
            for path in missing.iter().filter(|p| !self.missing_keys.contains(p)) {
                warn!(key = %path.display(), "trusted key file is gone; it no longer vouches for anything");
            }
            self.missing_keys = missing;
        }
        if trust.summary() == self.trust.summary() {
            return;
        }
        info!(
            publisher_keys = trust.count(Role::Publisher),
            operator_keys = trust.count(Role::Operator),
            "trusted keys changed; checking what is served against them"
        );
        self.trust = trust;
        self.refused = None;
        let served = self.shared.served.load_full();
        let unvouched = served.as_ref().and_then(|r| {
            let meta = r.current_meta()?;
            self.vouches(meta)
                .err()
                .map(|e| format!("served snapshot {} no longer verifies: {e}", meta.version))
        });
        drop(served);
        if let Some(why) = unvouched
            && let Err(e) = self.drop_stored(&why)
        {
            warn!("{e}");
        }
    }

    /// One check of the store, recorded in the status and metrics.
    #[instrument(skip(self), fields(channel = %self.channel, region = %self.region))]
    pub fn check(&mut self) -> Outcome {
        self.reload_trust();
        let outcome = match self.reopen_db().and_then(|()| self.check_inner()) {
            Ok(outcome) => outcome,
            Err(refusal) => Outcome::Refused(Arc::new(refusal)),
        };
        if matches!(&outcome, Outcome::Refused(r) if matches!(**r, Refusal::Ingest { .. })) {
            self.db_write_failed();
        }
        self.record(&outcome);
        outcome
    }

    /// After a failed write to the snapshot file: notes whether redb
    /// latched the failure (it then refuses every write until the file is
    /// opened again, as after a full disk), so the next check reopens it.
    fn db_write_failed(&mut self) {
        if !self.db_failed && self.db.is_writable() && self.db.needs_reopen() {
            warn!(
                "the snapshot file refuses writes after an I/O error; opening it again at the next check"
            );
            self.db_failed = true;
        }
    }

    /// Opens the snapshot file again when it is due: after a latched I/O
    /// error (a full disk, once `data_dir` has [`REOPEN_ROOM`] free again),
    /// or once a read-only `data_dir` can be written. Closing the old
    /// handle ends what it served, so the snapshot on disk is then served
    /// through the new one (or nothing, if it cannot be opened: lookups
    /// answer 503 and the check is refused, stale, backing off).
    fn reopen_db(&mut self) -> Result<(), Refusal> {
        if self.shared.read_failed.swap(false, Ordering::Relaxed) {
            self.db_write_failed();
        }
        let due = self.db_failed || (!self.db.is_writable() && self.db.needs_reopen());
        if !due {
            return Ok(());
        }
        let refused = |db: &Db, reason: String| Refusal::LocalStore {
            path: db.path().display().to_string(),
            reason,
        };
        if self.db_failed && !self.db.has_room(REOPEN_ROOM) {
            return Err(refused(
                &self.db,
                format!(
                    "the snapshot file refuses writes after an I/O error and data_dir has less than {} MiB free; \
                     free space and the agent opens it again",
                    REOPEN_ROOM >> 20
                ),
            ));
        }
        let reopened = self.db.reopen();
        self.shared.served.store(None);
        if let Err(e) = reopened {
            return Err(refused(
                &self.db,
                format!(
                    "opening the snapshot file again: {e}; nothing is served until it opens (lookups answer 503)"
                ),
            ));
        }
        self.db_failed = false;
        match self.restore() {
            Ok(version) => info!(
                version,
                "opened the snapshot file again; updates can be applied"
            ),
            Err(e) => warn!("opened the snapshot file again, but {e}"),
        }
        Ok(())
    }

    /// The version `pin_file` names, if the file exists.
    fn local_pin(&self) -> Result<Option<u64>, Refusal> {
        let Some(path) = &self.pin_file else {
            return Ok(None);
        };
        let refused = |reason: String| Refusal::LocalPin {
            path: path.display().to_string(),
            reason,
        };
        let mut text = String::new();
        // Non-blocking and regular files only: a FIFO must not hang the check.
        match strata_common::store::open_regular(path) {
            Ok(f) => {
                use std::io::Read;
                f.take(64)
                    .read_to_string(&mut text)
                    .map_err(|e| refused(e.to_string()))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(refused(e.to_string())),
        }
        match text.trim().parse::<u64>() {
            Ok(v) if v >= 1 => Ok(Some(v)),
            _ => Err(refused(format!(
                "holds {:?}, not a snapshot version",
                text.trim()
            ))),
        }
    }

    /// Reads the deciding document: the local pin, else the region's pin,
    /// else the channel pointer. A region pin that disappeared was unpinned:
    /// the replay floor moves past it, so the same pin cannot come back.
    fn read_doc(&mut self) -> Result<Doc, Refusal> {
        if let Some(v) = self.local_pin()? {
            return Ok(Doc::Local(v));
        }
        let pin = verify::read_document(
            self.store.as_ref(),
            PointerKind::Pin,
            &self.region,
            self.seen_pin.as_ref(),
        )?;
        self.seen_pin = pin.clone();
        if let Some(pin) = pin {
            return Ok(Doc::Pin(pin.bytes));
        }
        if let Some(seen) = self.marks.pin_seen {
            self.set_pin_marks(seen.saturating_add(1), None);
            info!(region = %self.region, "region unpinned; following the channel again");
        }
        let seen = verify::read_pointer(
            self.store.as_ref(),
            &self.channel,
            self.seen_pointer.as_ref(),
        )?;
        let bytes = seen.bytes.clone();
        self.seen_pointer = Some(seen);
        Ok(Doc::Channel(bytes))
    }

    /// Commits new pin marks (logging a failure: they are protection, not
    /// what is served).
    fn set_pin_marks(&mut self, floor: u64, seen: Option<u64>) {
        let floor = floor.max(self.marks.pin_floor);
        match self.db.set_pin_marks(floor, seen) {
            Ok(()) => {
                self.marks.pin_floor = floor;
                self.marks.pin_seen = seen;
            }
            Err(e) => {
                warn!("cannot record the region pin in the snapshot file: {e}");
                self.db_write_failed();
            }
        }
    }

    /// Reads the documents; runs the rest of the pipeline unless these very
    /// documents were refused before.
    fn check_inner(&mut self) -> Result<Outcome, Refusal> {
        let doc = self.read_doc()?;
        let cache_key = doc.cache_key();
        if let Some((key, refused)) = &self.refused
            && *key == cache_key
        {
            return Ok(Outcome::Refused(refused.clone()));
        }
        let outcome = match self.verify_and_apply(doc.source()) {
            Ok(outcome) => outcome,
            Err(refusal) => Outcome::Refused(Arc::new(refusal)),
        };
        self.refused = match &outcome {
            Outcome::Refused(r) if r.is_final() => Some((cache_key, r.clone())),
            _ => None,
        };
        Ok(outcome)
    }

    /// Records the document now followed: for `/v1/snapshot`, and a region
    /// pin's signing time as the replay floor.
    fn follow(&mut self, named: &Named) {
        if let Named::Pin(pin) = named {
            let at = verify::signed_at(pin);
            if self.marks.pin_seen != Some(at) {
                self.set_pin_marks(at, Some(at));
            }
        }
        if let Named::Channel(p) = named
            && p.version > self.marks.high_water
        {
            // Committed before it counts: a restart must not forget it.
            match self.db.raise_high_water(p.version) {
                Ok(()) => self.marks.high_water = p.version,
                Err(e) => {
                    warn!("cannot record the high-water mark in the snapshot file: {e}");
                    self.db_write_failed();
                }
            }
        }
        let followed = Followed {
            by: match named {
                Named::Channel(_) => FollowedBy::Channel,
                Named::Pin(_) => FollowedBy::Pin,
                Named::Local(_) => FollowedBy::LocalPin,
            },
            version: named.version(),
            created_at: named.pointer().map(|p| p.created_at.clone()),
            expires_at: named.pointer().map(|p| p.expires_at.clone()),
        };
        self.shared.status().followed = Some(followed);
    }

    /// The rest of the pipeline ([`verify::verify`]), then the apply: the
    /// payload decoded into one redb write transaction, committed only if
    /// every record passed, then swapped in as the served snapshot; or, for
    /// a version still stored, a switch to it.
    fn verify_and_apply(&mut self, source: Source<'_>) -> Result<Outcome, Refusal> {
        let started = Instant::now();
        let served = self.shared.served.load_full();
        let served_meta = served.as_ref().and_then(|r| r.current_meta());
        // Stored versions today's keys still vouch for.
        let retained: Vec<Stored> = served
            .as_ref()
            .map(|r| {
                r.metas
                    .values()
                    .filter(|m| self.vouches(m).is_ok())
                    .map(|m| Stored {
                        version: m.version,
                        bundle_sha256: m.bundle_sha256.clone(),
                        bundle_expires_at: bundle_expiry(&m.manifest),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let policy = Policy {
            trust: &self.trust,
            channel: &self.channel,
            region: &self.region,
            limits: self.limits,
            now: time::now(),
            served: served_meta.map(|m| (m.version, m.bundle_sha256.as_str())),
            retained: &retained,
            high_water: self.marks.high_water,
            pin_floor: self.marks.pin_floor,
        };
        let checked = verify::verify(self.store.as_ref(), source, &policy, &self.spool_dir)?;
        drop(served);
        let mut verified = match checked {
            Checked::UpToDate(named) => {
                self.follow(&named);
                return Ok(Outcome::UpToDate(named.version()));
            }
            Checked::Retained(named) => {
                let version = named.version();
                let switched = self
                    .db
                    .switch(version, !named.is_pin())
                    .and_then(|()| self.db.reader())
                    .and_then(|r| r.ok_or(DbError::NoCurrent));
                let reader = switched.map_err(|e| Refusal::Ingest {
                    bundle: named.bundle_key(),
                    source: Box::new(e),
                    permanent: false,
                })?;
                if !named.is_pin() {
                    // `switch` raised the mark in its commit.
                    self.marks.high_water = self.marks.high_water.max(version);
                }
                self.serve(reader);
                self.follow(&named);
                info!(
                    version,
                    pinned = named.is_pin(),
                    "switched to a stored snapshot"
                );
                self.shared.metrics.count_apply(started.elapsed(), 0, 0);
                return Ok(Outcome::Applied(version));
            }
            Checked::New(v) => v,
        };
        let verified_at = started.elapsed();
        let meta = SnapshotMeta {
            version: verified.manifest.version,
            bundle_sha256: verified.bundle_sha256.clone(),
            bundle_size: verified.bundle_size,
            created_at: verified.manifest.created_at.clone(),
            expires_at: verified.named.pointer().map_or_else(
                || verified.manifest.expires_at.clone(),
                |p| p.expires_at.clone(),
            ),
            layer1_version: verified.manifest.layer1_version.clone(),
            tenant_count: verified.manifest.tenant_count,
            source: self.store.url().to_string(),
            fetched_at: time::format(time::now()),
            pinned: verified.named.is_pin(),
            manifest: String::from_utf8_lossy(&verified.manifest_bytes).into_owned(),
            signatures: verified.signatures.clone(),
        };
        let bundle = verified.bundle.clone();
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
                permanent: matches!(other, DbError::AlreadyStored { .. }),
                source: Box::new(other),
            },
        })?;
        if !meta.pinned {
            // The ingest raised the mark in its own commit: `follow` must
            // not commit (and fsync) it again.
            self.marks.high_water = self.marks.high_water.max(meta.version);
        }
        let reader = self
            .db
            .reader()
            .and_then(|r| r.ok_or(DbError::NoCurrent))
            .map_err(|e| Refusal::Ingest {
                bundle: bundle.clone(),
                source: Box::new(e),
                permanent: false,
            })?;
        self.serve(reader);
        self.follow(&verified.named);
        let version = meta.version;
        self.shared.metrics.count_apply(
            started.elapsed(),
            ingested.frames_decoded,
            ingested.frames_skipped,
        );
        info!(
            version,
            pinned = meta.pinned,
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
                Err(e) => {
                    warn!("snapshot {version} is served but not yet durable: {e}");
                    self.db_write_failed();
                }
            }
        }
        Ok(Outcome::Applied(version))
    }

    /// Swaps in `reader` as the served snapshots, under the status lock so
    /// `/v1/snapshot` never shows the new version with the old state.
    fn serve(&self, reader: crate::db::Reader) {
        let mut status = self.shared.status();
        self.shared.served.store(Some(Arc::new(reader)));
        status.state = State::Fresh;
        status.last_error = None;
        status.last_error_reason = None;
    }

    /// Updates status and metrics, logging once per change of error.
    fn record(&self, outcome: &Outcome) {
        let m = &self.shared.metrics;
        let (outcome_label, success) = match outcome {
            Outcome::Applied(_) => ("applied", true),
            Outcome::UpToDate(_) => ("up_to_date", true),
            Outcome::Refused(r) => match r.severity() {
                Severity::Unavailable => ("unavailable", false),
                Severity::Refused => ("refused", false),
            },
        };
        m.count_check(outcome_label, success);
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
                let mut message = r.to_string();
                if r.reason().ends_with("_signature") && !self.missing_keys.is_empty() {
                    let files: Vec<String> = self
                        .missing_keys
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect();
                    message.push_str(&format!(
                        "; trusted key file(s) gone: {} (a key file that disappears counts as revoked: \
                         put it back, or remove its entry from the config)",
                        files.join(", ")
                    ));
                }
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

/// The settings read once at start: a change on disk is reported (a
/// `config_problem` in `/v1/snapshot`) rather than ignored in silence.
struct RestartSettings(Vec<(&'static str, String)>);

impl RestartSettings {
    /// Every setting but the trusted keys and thresholds, which each
    /// check reads again.
    fn of(c: &Config) -> Self {
        Self(vec![
            ("source", c.source.to_string()),
            ("channel", c.channel.clone()),
            ("region", c.region.clone()),
            ("poll_interval", format!("{:?}", c.poll_interval)),
            ("check_timeout", format!("{:?}", c.check_timeout)),
            ("data_dir", same_path(Some(&c.data_dir))),
            ("socket", same_path(Some(&c.socket))),
            ("socket_mode", c.socket_mode.clone()),
            ("retain", c.retain.to_string()),
            ("cache_bytes", c.cache_bytes.to_string()),
            ("max_connections", c.max_connections.to_string()),
            ("idle_timeout", format!("{:?}", c.idle_timeout)),
            ("worker_threads", c.worker_threads.to_string()),
            ("max_frame_bytes", c.max_frame_bytes.to_string()),
            ("max_bundle_bytes", c.max_bundle_bytes.to_string()),
            ("shutdown_grace", format!("{:?}", c.shutdown_grace)),
            ("log_format", c.log_format.clone()),
            ("ca_file", same_path(c.ca_file.as_deref())),
            ("metrics_listen", format!("{:?}", c.metrics_listen)),
            ("pin_file", same_path(c.pin_file.as_deref())),
        ])
    }

    /// The names of the settings `now` holds other values for.
    fn changed_in(&self, now: &Config) -> Vec<&'static str> {
        self.0
            .iter()
            .zip(Self::of(now).0)
            .filter(|((_, was), (_, is))| *was != *is)
            .map(|((name, _), _)| *name)
            .collect()
    }
}

/// A path as compared: `data/` and `data`, `a/./b` and `a/b` are one.
fn same_path(p: Option<&Path>) -> String {
    format!("{:?}", p.map(|p| p.components().collect::<Vec<_>>()))
}

/// The `expires_at` of a stored manifest (empty if it does not parse,
/// which its verification at ingest ruled out).
fn bundle_expiry(manifest: &str) -> String {
    serde_json::from_str::<strata_common::bundle::Manifest>(manifest)
        .map(|m| m.expires_at)
        .unwrap_or_default()
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
    shared: Arc<Shared>,
    store_dir: Option<PathBuf>,
    local_files: Vec<PathBuf>,
    poll: Duration,
    check_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let (checks, exited) = match spawn_sync_thread(syncer) {
        Ok(c) => c,
        Err(e) => {
            warn!("cannot start the sync thread: {e}; the last snapshot stays served");
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = None;
    let _local = watch_files(&local_files, tx.clone());
    let mut failures = 0;
    'run: loop {
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
        let mut done_rx = done_rx;
        let started = Instant::now();
        let mut overran = false;
        let done = loop {
            tokio::select! {
                done = &mut done_rx => break done,
                _ = tokio::time::sleep(check_timeout), if !overran => {
                    overran = true;
                    check_overran(&shared, started.elapsed());
                }
                _ = shutdown.changed() => break 'run,
            }
        };
        let Ok(unreachable) = done else {
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
            _ = shutdown.changed() => break 'run,
        }
    }
    // The sync thread ends after the check under way, closing the snapshot
    // file (an agent started again in this process can then open it); a
    // check that hangs is not waited for long.
    drop(checks);
    let _ = tokio::time::timeout(THREAD_EXIT_WAIT, exited).await;
}

/// How long a stopping agent waits for the check under way to end.
const THREAD_EXIT_WAIT: Duration = Duration::from_secs(5);

/// A check has run past `check_timeout`: the store or the disk hangs
/// under it. The node says so (`degraded`, reason `check_timeout`) until
/// the check ends and reports its own outcome.
fn check_overran(shared: &Shared, after: Duration) {
    let message = format!(
        "a check of the store has run for {}s, past check_timeout: the store or the local disk \
         is not answering (a stalled mirror or mount?); the last snapshot stays served",
        after.as_secs()
    );
    warn!(reason = CHECK_TIMEOUT, "{message}");
    shared.metrics.count_refusal(CHECK_TIMEOUT);
    let ready = shared.is_ready();
    let mut status = shared.status();
    if ready {
        status.state = State::Degraded;
    }
    status.last_error = Some(message);
    status.last_error_reason = Some(CHECK_TIMEOUT);
}

/// Free space in `data_dir` before the snapshot file is opened again after
/// an I/O error: enough for a publish of a few thousand changed tenants.
const REOPEN_ROOM: u64 = 64 << 20;

/// The reason a check that overran is reported with.
const CHECK_TIMEOUT: &str = "check_timeout";

/// Starts the thread that runs one check per request, at `SCHED_IDLE`: the
/// kernel runs it only on a CPU nothing else wants, so applying a large
/// snapshot never delays a lookup (or the call worker beside us). Measured
/// in BENCHMARKS.md; nice 10 was not enough. A stopping agent waits a few
/// seconds for the check under way, not longer: an exit in the middle of
/// an ingest is as safe as a crash.
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
) -> std::io::Result<(
    std::sync::mpsc::Sender<oneshot::Sender<bool>>,
    oneshot::Receiver<()>,
)> {
    let (tx, rx) = std::sync::mpsc::channel::<oneshot::Sender<bool>>();
    let (exit_tx, exited) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("strata-sync".into())
        .spawn(move || {
            lowest_priority("the sync thread");
            for done in rx {
                let outcome = syncer.check();
                let back_off = matches!(&outcome, Outcome::Refused(r) if r.backs_off());
                let _ = done.send(back_off);
            }
            drop(syncer);
            let _ = exit_tx.send(());
        })?;
    Ok((tx, exited))
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

/// Watches the node's own files (the config, the trusted keys, the local
/// pin file): a change to one asks for a check, which reads them again. Each
/// file's directory is watched, so a file created, replaced by a rename or
/// deleted is seen too.
fn watch_files(files: &[PathBuf], tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let files: Vec<PathBuf> = files.to_vec();
    let wanted = files.clone();
    let mut w = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event.need_rescan() || event.paths.iter().any(|p| wanted.contains(p)) {
            let _ = tx.try_send(());
        }
    })
    .ok()?;
    let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
            warn!(dir = %dir.display(), "cannot watch for key or pin changes ({e}); they are read at every poll");
        }
    }
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
