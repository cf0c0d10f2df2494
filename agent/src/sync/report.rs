//! What a check tells the operator: the state and last error in
//! `/v1/snapshot`, the metrics, and a log line once per change of error.

use std::sync::Arc;
use std::time::Duration;

use strata_common::time;
use strata_common::verify::Severity;
use tracing::{info, warn};

use super::{Outcome, Syncer};
use crate::db::Reader;
use crate::state::{Shared, State};

/// The reason a check that overran is reported with.
pub(super) const CHECK_TIMEOUT: &str = "check_timeout";

impl Syncer {
    /// Swaps in `reader` as the served snapshots, under the status lock so
    /// `/v1/snapshot` never shows the new version with the old state.
    pub(super) fn serve(&self, reader: Reader) {
        self.mark_untrusted(Some(&reader));
        let mut status = self.shared.status();
        self.shared.served.store(Some(Arc::new(reader)));
        status.state = State::Fresh;
        status.last_error = None;
        status.last_error_reason = None;
    }

    /// Records which of `reader`'s retained versions today's trusted keys
    /// no longer vouch for: they are not served by `?snapshot=N`.
    pub(super) fn mark_untrusted(&self, reader: Option<&Reader>) {
        let untrusted: std::collections::BTreeSet<u64> = reader
            .map(|r| {
                r.metas
                    .values()
                    .filter(|m| self.vouches(m).is_err())
                    .map(|m| m.version)
                    .collect()
            })
            .unwrap_or_default();
        // Who vouches for what is served now: a rotation is done when every
        // node shows the new key here.
        let signed_by: Vec<String> = reader
            .and_then(|r| r.current_meta())
            .and_then(|m| {
                self.trust
                    .verify(
                        strata_common::sign::Role::Publisher,
                        m.manifest.as_bytes(),
                        &m.signatures,
                    )
                    .ok()
            })
            .map(|ids| ids.into_iter().map(|id| id.0).collect())
            .unwrap_or_default();
        self.shared.status().signed_by = signed_by;
        if **self.shared.untrusted.load() != untrusted {
            if !untrusted.is_empty() {
                info!(versions = ?untrusted, "retained snapshots no trusted key vouches for are no longer served by ?snapshot=");
            }
            self.shared.untrusted.store(Arc::new(untrusted));
        }
    }

    /// Updates status and metrics, logging once per change of error.
    pub(super) fn record(&self, outcome: &Outcome) {
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
                    // One log line, whatever the store put in a key.
                    warn!(
                        reason = r.reason(),
                        "{}",
                        strata_common::validate::Escaped(&message)
                    );
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

/// A check has run past `check_timeout`: the store or the disk hangs
/// under it. The node says so (`degraded`, reason `check_timeout`) until
/// the check ends and reports its own outcome.
pub(super) fn check_overran(shared: &Shared, after: Duration) {
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
