//! What `/metrics` exposes, through `prometheus-client` (names, types,
//! `_total` suffixes, escaping and `# EOF` are the library's): what an SRE
//! alerts on. No per-tenant label anywhere: a label's values are a fixed,
//! small set (endpoints, statuses, outcomes, refusal reasons, states).

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::endpoint::LABELS as ENDPOINTS;

/// A lookup's endpoint and answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    endpoint: &'static str,
    status: u16,
}

/// One label, for the families keyed by a single fixed value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Who this agent is, for joining its series by region and channel.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    region: String,
    channel: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignerLabel {
    key_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ArmLabel {
    arm: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn lookup_histogram() -> Histogram {
    // 5 µs to ~80 ms: a lookup from redb's cache takes tens of µs.
    Histogram::new(exponential_buckets(5e-6, 2.0, 15))
}

/// The agent's states, as the `strata_state` gauge labels them.
pub const STATES: [&str; 4] = ["starting", "fresh", "stale", "degraded"];

/// What the gauges show at a scrape, read by the caller from what is
/// served and the agent's status (so that rendering needs neither).
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges<'a> {
    /// The served snapshot's version, bundle size, tenant count and when
    /// it was built; `None` while nothing is served.
    pub served: Option<ServedGauges<'a>>,
    /// Whether a pin names the version served.
    pub pinned: bool,
    /// Whether the config file on disk has a problem.
    pub config_problem: bool,
    /// The agent's state, one of [`STATES`].
    pub state: &'static str,
    /// Key ids of the trusted keys that signed the served snapshot.
    pub signers: &'a [String],
    /// Push over NATS: `connected`, `disconnected`, or `None` (off).
    pub notify: Option<&'static str>,
}

/// The served snapshot, as the gauges show it.
#[derive(Debug, Clone, Copy)]
pub struct ServedGauges<'a> {
    /// Its version.
    pub version: u64,
    /// Its bundle's size in bytes.
    pub bundle_size: u64,
    /// Its tenants.
    pub tenants: u64,
    /// When the publisher built it (RFC 3339).
    pub created_at: &'a str,
}

/// The statuses a lookup answers with, cached per endpoint (others go
/// through the family's map).
const STATUSES: [u16; 8] = [200, 304, 400, 404, 405, 410, 500, 503];

/// One endpoint's series, resolved once: a request then costs an atomic
/// increment and the histogram's short lock, not a label-map lookup.
#[derive(Default)]
struct EndpointSeries {
    by_status: [OnceLock<Counter>; STATUSES.len()],
    seconds: OnceLock<Histogram>,
}

/// The agent's metrics. Lookups touch only atomics and one short lock.
pub struct Metrics {
    registry: Registry,
    lookups: Family<LookupLabels, Counter>,
    lookup_seconds: Family<EndpointLabel, Histogram, fn() -> Histogram>,
    per_endpoint: [EndpointSeries; ENDPOINTS.len()],
    fetches: Family<OutcomeLabel, Counter>,
    refusals: Family<ReasonLabel, Counter>,
    frames: Family<ResultLabel, Counter>,
    object_bytes: Counter,
    checks: Counter,
    applies: Counter,
    apply_seconds: Histogram,
    last_apply_seconds: FloatGauge,
    snapshot_version: Gauge,
    snapshot_age: FloatGauge,
    since_success: FloatGauge,
    bundle_bytes: Gauge,
    tenants: Gauge,
    config_problem: Gauge,
    pinned: Gauge,
    ready: Gauge,
    state: Family<StateLabel, Gauge>,
    info: Family<InfoLabels, Gauge>,
    signers: Family<SignerLabel, Gauge>,
    notify_connected: Gauge,
    pushes: Family<OutcomeLabel, Counter>,
    arms: Family<ArmLabel, Counter>,
    /// The two arms' series, resolved once.
    per_arm: [OnceLock<Counter>; 2],
    /// When a check last applied or confirmed a snapshot.
    last_success: Mutex<Option<Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered under the `strata_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("strata");
        let m = Self {
            lookups: Family::default(),
            lookup_seconds: Family::new_with_constructor(lookup_histogram),
            fetches: Family::default(),
            refusals: Family::default(),
            frames: Family::default(),
            object_bytes: Counter::default(),
            checks: Counter::default(),
            applies: Counter::default(),
            // 10 ms to ~160 s: a 1 % publish to a cold 100k-tenant apply.
            apply_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 15)),
            last_apply_seconds: FloatGauge::default(),
            snapshot_version: Gauge::default(),
            snapshot_age: FloatGauge::default(),
            since_success: FloatGauge::default(),
            bundle_bytes: Gauge::default(),
            tenants: Gauge::default(),
            config_problem: Gauge::default(),
            pinned: Gauge::default(),
            ready: Gauge::default(),
            state: Family::default(),
            info: Family::default(),
            signers: Family::default(),
            notify_connected: Gauge::default(),
            pushes: Family::default(),
            arms: Family::default(),
            per_arm: Default::default(),
            last_success: Mutex::new(None),
            registry: Registry::default(),
            per_endpoint: Default::default(),
        };
        registry.register(
            "lookups",
            "Requests answered on the socket, by endpoint and HTTP status",
            m.lookups.clone(),
        );
        registry.register_with_unit(
            "lookup_duration",
            "Time to answer a request on the socket (handler only), by endpoint",
            Unit::Seconds,
            m.lookup_seconds.clone(),
        );
        registry.register(
            "lookups_by_arm",
            "Tenant config and prompt lookups answered, by the arm that answered (stable, or a tenant's canary for a session drawn into it)",
            m.arms.clone(),
        );
        registry.register(
            "fetches",
            "Store checks by outcome: applied (a new snapshot served), up_to_date, refused (the store offers something refused) or unavailable (the store or disk could not be read)",
            m.fetches.clone(),
        );
        registry.register(
            "refusals",
            "Documents or bundles refused and store failures, by reason (as /v1/snapshot last_error_reason), counted once per new error",
            m.refusals.clone(),
        );
        registry.register(
            "frames",
            "Bundle body frames an apply decompressed, or skipped because it already held their tenants",
            m.frames.clone(),
        );
        registry.register(
            "fetched_object_bytes",
            "Bytes of format 3 objects (chunks, pages, route pages, Layer 1, dictionary) fetched from the store: what a publish cost this node",
            m.object_bytes.clone(),
        );
        registry.register("checks", "Store checks run", m.checks.clone());
        registry.register(
            "applies",
            "Snapshots applied (fetched, or switched to from the stored ones)",
            m.applies.clone(),
        );
        registry.register_with_unit(
            "apply_duration",
            "Time from the start of a check to the new snapshot served",
            Unit::Seconds,
            m.apply_seconds.clone(),
        );
        registry.register(
            "last_apply_seconds",
            "Duration of the last apply, in seconds",
            m.last_apply_seconds.clone(),
        );
        registry.register(
            "snapshot_version",
            "Snapshot version served (0 before the first)",
            m.snapshot_version.clone(),
        );
        registry.register(
            "served_version",
            "Snapshot version served (0 before the first): strata_snapshot_version under the name the fleet view uses",
            m.snapshot_version.clone(),
        );
        registry.register(
            "notify_connected",
            "1 while the agent is connected to NATS for push (notify), else 0: polling carries on either way",
            m.notify_connected.clone(),
        );
        registry.register(
            "pushes",
            "Documents received over NATS, by outcome: accepted (verified, newer: a check follows) or ignored (forged, replayed, not newer, malformed)",
            m.pushes.clone(),
        );
        registry.register_with_unit(
            "snapshot_age",
            "Seconds since the served snapshot was built by the publisher (NaN while nothing is served: a 0 would read as fresh)",
            Unit::Seconds,
            m.snapshot_age.clone(),
        );
        registry.register_with_unit(
            "since_last_success",
            "Seconds since a check last applied or confirmed the served snapshot (since start, before the first)",
            Unit::Seconds,
            m.since_success.clone(),
        );
        registry.register_with_unit(
            "bundle_size",
            "Size of the served snapshot's bundle",
            Unit::Bytes,
            m.bundle_bytes.clone(),
        );
        registry.register(
            "snapshot_tenants",
            "Tenants in the served snapshot (0 before the first): a publish that dropped many shows here",
            m.tenants.clone(),
        );
        registry.register(
            "config_problem",
            "1 while the config file on disk would not load, or changes a setting only a restart applies",
            m.config_problem.clone(),
        );
        registry.register(
            "pinned",
            "1 while a region pin or the local pin names the version served",
            m.pinned.clone(),
        );
        registry.register(
            "ready",
            "1 once a verified snapshot is served",
            m.ready.clone(),
        );
        registry.register(
            "state",
            "1 for the agent's state (starting, fresh, stale, degraded), 0 for the others",
            m.state.clone(),
        );
        registry.register(
            "node",
            "1, labelled with this agent's region, channel and node (its host name): join other series on it, for alerts per region",
            m.info.clone(),
        );
        registry.register(
            "snapshot_signer",
            "1 for each trusted publisher key (by key id) whose signature on the served snapshot verifies: a key rotation is done when every node shows the new key",
            m.signers.clone(),
        );
        Self { registry, ..m }
    }

    /// Labels `strata_node` with this agent's region, channel and
    /// node name (set once, at start).
    pub fn set_info(&self, region: &str, channel: &str, node: &str) {
        self.info
            .get_or_create(&InfoLabels {
                region: region.to_owned(),
                channel: channel.to_owned(),
                node: node.to_owned(),
            })
            .set(1);
    }

    /// Counts a request on the socket and its duration; `endpoint` is an
    /// index into [`ENDPOINTS`].
    pub fn observe_lookup(&self, endpoint: usize, status: u16, took: Duration) {
        let Some(series) = self.per_endpoint.get(endpoint) else {
            return;
        };
        let name = ENDPOINTS[endpoint];
        let labels = LookupLabels {
            endpoint: name,
            status,
        };
        match STATUSES.iter().position(|s| *s == status) {
            Some(i) => {
                series.by_status[i]
                    .get_or_init(|| self.lookups.get_or_create_owned(&labels))
                    .inc();
            }
            None => {
                self.lookups.get_or_create(&labels).inc();
            }
        }
        series
            .seconds
            .get_or_init(|| {
                self.lookup_seconds
                    .get_or_create_owned(&EndpointLabel { endpoint: name })
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a tenant lookup by the arm that answered (`stable` or
    /// `canary`): never by tenant, which would make 100k series.
    pub fn count_arm(&self, arm: &'static str) {
        let i = usize::from(arm == "canary");
        self.per_arm[i]
            .get_or_init(|| self.arms.get_or_create_owned(&ArmLabel { arm }))
            .inc();
    }

    /// Counts a refused document or bundle, or a store failure, by reason.
    pub fn count_refusal(&self, reason: &'static str) {
        self.refusals.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts a check and its outcome; `success` (applied or up to date)
    /// restarts the clock of `strata_since_last_success_seconds`.
    pub fn count_check(&self, outcome: &'static str, success: bool) {
        self.checks.inc();
        self.fetches.get_or_create(&OutcomeLabel { outcome }).inc();
        if success {
            *self.last_success.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
    }

    /// Records an apply: its duration, the frames (chunks) it decoded and
    /// skipped, and the object bytes it fetched.
    pub fn count_apply(&self, took: Duration, frames: (u64, u64), object_bytes: u64) {
        let (frames_decoded, frames_skipped) = frames;
        self.object_bytes.inc_by(object_bytes);
        self.applies.inc();
        self.apply_seconds.observe(took.as_secs_f64());
        self.last_apply_seconds.set(took.as_secs_f64());
        self.frames
            .get_or_create(&ResultLabel { result: "decoded" })
            .inc_by(frames_decoded);
        self.frames
            .get_or_create(&ResultLabel { result: "skipped" })
            .inc_by(frames_skipped);
    }

    /// Counts one document received over NATS: `accepted` or `ignored`.
    pub fn count_push(&self, outcome: &'static str) {
        self.pushes.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Renders the text format with `gauges`; `started` is when the agent
    /// started.
    pub fn render(&self, gauges: &Gauges<'_>, started: Instant) -> String {
        let now = std::time::SystemTime::now();
        let served = gauges.served.as_ref();
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.snapshot_version
            .set(served.map_or(0, |s| int(s.version)));
        self.bundle_bytes
            .set(served.map_or(0, |s| int(s.bundle_size)));
        self.tenants.set(served.map_or(0, |s| int(s.tenants)));
        // Built "in the future" (a publisher's clock ahead): 0.
        let age = served.map_or(f64::NAN, |s| {
            strata_common::time::parse_exact(s.created_at)
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .map_or(0.0, |d| d.as_secs_f64())
        });
        self.snapshot_age.set(age);
        let since = self
            .last_success
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(started)
            .elapsed();
        self.since_success.set(since.as_secs_f64());
        self.pinned.set(i64::from(gauges.pinned));
        self.notify_connected
            .set(i64::from(gauges.notify == Some("connected")));
        self.config_problem.set(i64::from(gauges.config_problem));
        self.ready.set(i64::from(served.is_some()));
        self.signers.clear();
        for id in gauges.signers {
            self.signers
                .get_or_create(&SignerLabel { key_id: id.clone() })
                .set(1);
        }
        for name in STATES {
            self.state
                .get_or_create(&StateLabel { state: name })
                .set(i64::from(gauges.state == name));
        }
        let mut text = String::with_capacity(4096);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!("encoding metrics: {e}");
        }
        text
    }
}
