//! Following the channel. [`Syncer::check`] orders the steps of one check,
//! each in its own room:
//!
//! - `reload`: the config file read again (trusted keys apply live; any
//!   other change is reported as a `config_problem`);
//! - `recover`: the snapshot file opened again after a latched I/O error,
//!   and what is stored checked against today's keys;
//! - `follow`: the deciding document read (local pin, region pin, channel)
//!   and the pin marks it moves;
//! - the verification pipeline itself ([`strata_common::verify`]);
//! - `apply`: a verified snapshot switched to or ingested, made durable,
//!   and served;
//! - `report`: the outcome in `/v1/snapshot` and the metrics.
//!
//! `schedule` runs checks on their own thread: at start, on every change
//! the watchers see, and every poll interval, backing off while the store
//! or the disk fails. [`CheckError`] says why a check applied nothing and
//! owns the retry policy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_common::bundle::Limits;
use strata_common::layout::Document;
use strata_common::sign::TrustedKeys;
use strata_common::store::ReadStore;
use tracing::instrument;

use crate::config::Config;
use crate::db::Db;
use crate::state::Shared;

mod apply;
mod error;
mod follow;
mod recover;
mod reload;
mod report;
mod schedule;

pub use error::CheckError;
pub use schedule::run;

/// How often the deciding documents are read whole instead of with a
/// conditional GET, so that a mirror or proxy answering 304 for ever
/// cannot hold a node on an old version while it reports fresh: a pointer
/// (~1 KB) every 5 minutes, about 12 KB an hour per node.
pub const WHOLE_READ_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// What one check found.
#[derive(Debug)]
pub enum Outcome {
    /// A new snapshot was verified and is now served (fetched, or switched
    /// to from the stored ones).
    Applied(u64),
    /// The document followed names what is already served.
    UpToDate(u64),
    /// Nothing was applied: the store could not be read or offered
    /// something that failed verification ([`CheckError::severity`] says
    /// which).
    Refused(Arc<CheckError>),
}

/// The sync side of the agent: store, trust, database and what it has seen.
pub struct Syncer {
    /// Where snapshots come from.
    store: Box<dyn ReadStore>,
    /// The trusted keys, as last read from the config file.
    trust: TrustedKeys,
    /// The snapshot file; it owns the rollback-protection marks.
    db: Db,
    /// What the HTTP side serves and reports.
    shared: Arc<Shared>,
    /// The channel followed.
    channel: String,
    /// This node's region: the only pin it reads.
    region: String,
    /// Snapshots kept for `?snapshot=N`.
    keep: crate::db::Keep,
    /// Size limits of what is fetched and decoded.
    limits: Limits,
    /// The agent's config file, read again at every check for key rotation.
    config_path: PathBuf,
    /// This node's local pin file, if configured.
    pin_file: Option<PathBuf>,
    /// Where a bundle is copied while it is verified and decoded.
    spool_dir: PathBuf,
    /// The documents last refused, so a bad bundle is not fetched again on
    /// every poll; cleared when they or the trusted keys change.
    refused: Option<(String, Arc<CheckError>)>,
    /// The channel pointer as last read, for the next conditional read.
    seen_pointer: Option<Document>,
    /// The region's pin as last read.
    seen_pin: Option<Document>,
    /// Whether the warning that the region's pin file is gone (and the
    /// last verified pin kept) was logged since it disappeared.
    pin_gone_said: bool,
    /// When the deciding documents were last read whole (no conditional
    /// GET): see [`WHOLE_READ_EVERY`].
    last_whole_read: Option<std::time::Instant>,
    /// How often they are ([`WHOLE_READ_EVERY`]; shorter in tests).
    whole_read_every: std::time::Duration,
    /// Whether the poll timer (not a push, a store event or an operator)
    /// woke this check: with push connected it reads one document.
    pub(crate) timer_poll: bool,
    /// A light poll's turn: the pin next (`true`) or the pointer.
    light_turn: bool,
    /// Whether the region's pin was read since the last whole read (a
    /// `seen_pin` of `None` is then "no pin", not "not read").
    pin_read: bool,
    /// Trusted key files the config names that were missing at the last
    /// reload, to log a change once.
    missing_keys: Vec<PathBuf>,
    /// What was last logged about the config file (it failed to load, or
    /// changed a setting only a restart applies), to say it once.
    config_said: Option<String>,
    /// The settings the agent started with that only a restart changes.
    started_with: reload::RestartSettings,
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
        shared.status().trusted_keys = reload::trusted_ids(&trust);
        shared.trust.store(Some(Arc::new(trust.clone())));
        Self {
            store,
            trust,
            db,
            shared,
            channel: config.channel.clone(),
            region: config.region.clone(),
            keep: crate::db::Keep {
                count: config.retain,
                served_within: config.retain_for,
            },
            spool_dir: config.data_dir.clone(),
            limits: config.limits(),
            config_path: config_path.to_path_buf(),
            pin_file: config.pin_file.clone(),
            refused: None,
            seen_pointer: None,
            seen_pin: None,
            pin_gone_said: false,
            last_whole_read: None,
            whole_read_every: WHOLE_READ_EVERY,
            timer_poll: false,
            light_turn: false,
            pin_read: false,
            missing_keys: Vec::new(),
            config_said: None,
            started_with: reload::RestartSettings::of(config),
            db_failed: false,
        }
    }

    /// Reads the deciding documents whole every `every` instead of
    /// [`WHOLE_READ_EVERY`] (for tests of a store that answers 304 for ever).
    pub fn read_whole_every(&mut self, every: std::time::Duration) {
        self.whole_read_every = every;
    }

    /// One check of the store, recorded in the status and metrics: the
    /// config read again, the snapshot file reopened if it must be, the
    /// deciding document read and (unless these very documents were refused
    /// before) verified and applied.
    #[instrument(skip(self), fields(channel = %self.channel, region = %self.region))]
    pub fn check(&mut self) -> Outcome {
        self.reload_trust();
        let outcome = match self.reopen_db().and_then(|()| self.check_documents()) {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Refused(Arc::new(e)),
        };
        if matches!(&outcome, Outcome::Refused(e) if matches!(**e, CheckError::Ingest { .. })) {
            self.db_write_failed();
        }
        self.record(&outcome);
        outcome
    }

    /// Reads the deciding document; runs the pipeline and the apply unless
    /// these very documents were refused before.
    fn check_documents(&mut self) -> Result<Outcome, CheckError> {
        let doc = self.read_doc()?;
        let cache_key = doc.cache_key();
        if let Some((key, refused)) = &self.refused
            && *key == cache_key
        {
            return Ok(Outcome::Refused(refused.clone()));
        }
        let outcome = match self.verify_and_apply(&doc) {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Refused(Arc::new(e)),
        };
        self.refused = match &outcome {
            Outcome::Refused(e) if e.is_final() => Some((cache_key, e.clone())),
            _ => None,
        };
        Ok(outcome)
    }
}
