//! Counters exposed at `/metrics` in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The agent's counters. Lookups touch only atomics.
#[derive(Default)]
pub struct Metrics {
    /// Requests answered, by status class.
    pub requests_2xx: AtomicU64,
    /// 304 answers.
    pub requests_304: AtomicU64,
    /// 4xx answers.
    pub requests_4xx: AtomicU64,
    /// 5xx answers.
    pub requests_5xx: AtomicU64,
    /// Store checks run.
    pub checks: AtomicU64,
    /// Snapshots applied.
    pub applies: AtomicU64,
    /// Duration of the last apply, in microseconds.
    pub last_apply_micros: AtomicU64,
    /// Body frames decompressed by applies (they held a changed tenant).
    pub frames_decoded: AtomicU64,
    /// Body frames skipped by applies (every tenant in them unchanged).
    pub frames_skipped: AtomicU64,
    /// Refusals and failures by reason.
    refusals: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// Counts a response by status.
    pub fn count_status(&self, status: u16) {
        let c = match status {
            304 => &self.requests_304,
            200..=299 => &self.requests_2xx,
            400..=499 => &self.requests_4xx,
            _ => &self.requests_5xx,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused bundle or pointer, or a store failure, by reason.
    pub fn count_refusal(&self, reason: &'static str) {
        let mut m = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(reason).or_default() += 1;
    }

    /// Renders the text format; `version` is the served snapshot (0: none).
    pub fn render(&self, version: u64, ready: bool) -> String {
        let mut s = String::with_capacity(1024);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "# HELP strata_snapshot_version Snapshot version served (0 before the first)."
        );
        let _ = writeln!(
            s,
            "# TYPE strata_snapshot_version gauge\nstrata_snapshot_version {version}"
        );
        let _ = writeln!(
            s,
            "# TYPE strata_ready gauge\nstrata_ready {}",
            u8::from(ready)
        );
        let _ = writeln!(
            s,
            "# HELP strata_requests_total Requests answered on the socket, by status class."
        );
        let _ = writeln!(s, "# TYPE strata_requests_total counter");
        for (class, c) in [
            ("2xx", &self.requests_2xx),
            ("304", &self.requests_304),
            ("4xx", &self.requests_4xx),
            ("5xx", &self.requests_5xx),
        ] {
            let _ = writeln!(s, "strata_requests_total{{status=\"{class}\"}} {}", get(c));
        }
        let _ = writeln!(
            s,
            "# TYPE strata_checks_total counter\nstrata_checks_total {}",
            get(&self.checks)
        );
        let _ = writeln!(
            s,
            "# TYPE strata_applies_total counter\nstrata_applies_total {}",
            get(&self.applies)
        );
        let _ = writeln!(
            s,
            "# TYPE strata_last_apply_seconds gauge\nstrata_last_apply_seconds {:.6}",
            get(&self.last_apply_micros) as f64 / 1e6
        );
        let _ = writeln!(
            s,
            "# HELP strata_frames_total Bundle body frames an apply decompressed, or skipped because it already held their tenants."
        );
        let _ = writeln!(s, "# TYPE strata_frames_total counter");
        for (result, c) in [
            ("decoded", &self.frames_decoded),
            ("skipped", &self.frames_skipped),
        ] {
            let _ = writeln!(s, "strata_frames_total{{result=\"{result}\"}} {}", get(c));
        }
        let _ = writeln!(
            s,
            "# HELP strata_refusals_total Bundles or pointers refused and store failures, by reason."
        );
        let _ = writeln!(s, "# TYPE strata_refusals_total counter");
        let m = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        for (reason, n) in m.iter() {
            let _ = writeln!(s, "strata_refusals_total{{reason=\"{reason}\"}} {n}");
        }
        s
    }
}
