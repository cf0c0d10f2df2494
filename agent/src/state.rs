//! What the agent is serving and how healthy it is, shared between the sync
//! loop (the only writer) and the HTTP handlers (readers).
//!
//! The served snapshot is behind an `ArcSwap`: a lookup loads it without a
//! lock, and a new snapshot replaces it whole only after its redb commit.

use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::Serialize;

use crate::db::Reader;
use crate::metrics::{Gauges, Metrics, ServedGauges};

/// The agent's health, as `/v1/snapshot` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// No verified snapshot yet: lookups answer 503.
    Starting,
    /// Serving what the channel points to, confirmed by the last check.
    Fresh,
    /// Serving a verified snapshot, but the last check could not confirm it
    /// is current (store unreachable or empty, pointer expired).
    Stale,
    /// Serving a verified snapshot while refusing what the store offers
    /// (untrusted, tampered, older, oversized).
    Degraded,
}

impl State {
    /// Its name, as `/v1/snapshot` and the `strata_state` gauge say it.
    pub fn label(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Fresh => "fresh",
            State::Stale => "stale",
            State::Degraded => "degraded",
        }
    }
}

/// The outcome of the last check, for `/v1/snapshot`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Health.
    pub state: State,
    /// When the store was last checked (RFC 3339).
    pub last_check: Option<String>,
    /// Why the last check did not apply or confirm a snapshot, if it did not.
    pub last_error: Option<String>,
    /// The short reason of `last_error`, as in `strata_refusals_total{reason}`.
    pub last_error_reason: Option<&'static str>,
    /// The version being written to disk right now, if any.
    pub applying: Option<u64>,
    /// What is wrong with the config file on disk now (it no longer
    /// loads, or changes a setting that only a restart applies): the
    /// running agent goes on with what it started with, and its next
    /// restart would fail or behave differently.
    pub config_problem: Option<String>,
    /// The TCP address `/metrics` is served on (`metrics_listen`), if any.
    pub metrics_address: Option<String>,
    /// The document that named the version served, as last verified.
    pub followed: Option<Followed>,
    /// Key ids of the trusted publisher keys whose signatures on the served
    /// snapshot verify today (a key rotation is done when every node serves
    /// a snapshot the new key signed).
    pub signed_by: Vec<String>,
    /// The keys this agent trusts now, as `role:key id` (read again from
    /// its config at every check): step 1 of a key rotation is done on a
    /// node when the new key's id is here.
    pub trusted_keys: Vec<String>,
    /// Push over NATS: `connected`, `disconnected` (polling carries on,
    /// the client reconnects with backoff), or `None` without `notify`.
    pub notify: Option<&'static str>,
}

/// Which document decides the version served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowedBy {
    /// The channel pointer.
    Channel,
    /// The region's pin, signed by operators.
    Pin,
    /// This node's `pin_file`.
    LocalPin,
}

/// What decides the version served, for `/v1/snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Followed {
    /// The deciding document.
    pub by: FollowedBy,
    /// The version it names.
    pub version: u64,
    /// When the document was signed (none for a local pin).
    pub created_at: Option<String>,
    /// When it expires (none for a local pin): after this the node keeps
    /// serving, and its state is `stale`.
    pub expires_at: Option<String>,
    /// False for a region pin kept after its file disappeared from the
    /// store (only a signed unpin ends a pin): `list` shows no pin then.
    pub in_store: bool,
}

impl Status {
    /// Whether a pin (the region's or the local one) decides the version
    /// served; before the first check, what the stored snapshot recorded.
    pub fn pinned(&self, meta: Option<&crate::db::SnapshotMeta>) -> bool {
        match &self.followed {
            Some(f) => f.by != FollowedBy::Channel,
            None => meta.is_some_and(|m| m.pinned),
        }
    }
}

/// State shared by the sync loop and the HTTP handlers.
pub struct Shared {
    /// The snapshots being served; `None` until the first verified one.
    pub served: ArcSwapOption<Reader>,
    /// Retained versions no trusted publisher key vouches for any more (a
    /// key removed since they were stored): `?snapshot=N` answers 410
    /// `snapshot_untrusted` and `/v1/snapshots` leaves them out. Set by the
    /// sync side whenever what is served or the trusted keys change.
    pub untrusted: ArcSwap<std::collections::BTreeSet<u64>>,
    status: Mutex<Status>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// The store URL, for `/v1/snapshot`.
    pub source: String,
    /// This node's region.
    pub region: String,
    /// When the agent started.
    pub started: std::time::Instant,
    /// A lookup failed reading the snapshot file (an I/O error): the sync
    /// thread checks at its next check whether the file must be reopened.
    pub read_failed: std::sync::atomic::AtomicBool,
    /// Asks the sync loop for a check now (`POST /v1/check`, SIGHUP, a
    /// verified push).
    pub check_now: tokio::sync::Notify,
    /// The keys trusted now, as the sync side last read them: what a
    /// pushed document is verified with before it wakes a check.
    pub trust: ArcSwapOption<strata_common::sign::TrustedKeys>,
}

impl Shared {
    /// Nothing served yet.
    pub fn new(source: String, region: String) -> Arc<Self> {
        Arc::new(Self {
            served: ArcSwapOption::empty(),
            untrusted: ArcSwap::default(),
            read_failed: std::sync::atomic::AtomicBool::new(false),
            check_now: tokio::sync::Notify::new(),
            trust: ArcSwapOption::empty(),
            status: Mutex::new(Status {
                state: State::Starting,
                last_check: None,
                last_error: None,
                last_error_reason: None,
                applying: None,
                config_problem: None,
                metrics_address: None,
                followed: None,
                signed_by: Vec::new(),
                trusted_keys: Vec::new(),
                notify: None,
            }),
            metrics: Metrics::default(),
            source,
            region,
            started: std::time::Instant::now(),
        })
    }

    /// The current status (a poisoned lock still yields the last value).
    pub fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `/metrics`, with the gauges read from what is served and the status.
    pub fn render_metrics(&self) -> String {
        // Status first: the sync loop swaps the snapshot while holding it.
        let status = self.status().clone();
        let served = self.served.load();
        let meta = served.as_ref().and_then(|r| r.current_meta());
        let gauges = Gauges {
            served: meta.map(|m| ServedGauges {
                version: m.version,
                bundle_size: m.bundle_size,
                tenants: m.tenant_count,
                created_at: &m.created_at,
            }),
            pinned: status.pinned(meta),
            config_problem: status.config_problem.is_some(),
            state: status.state.label(),
            signers: &status.signed_by,
            notify: status.notify,
        };
        self.metrics.render(&gauges, self.started)
    }

    /// Whether a verified snapshot is served.
    pub fn is_ready(&self) -> bool {
        self.served.load().is_some()
    }
}
