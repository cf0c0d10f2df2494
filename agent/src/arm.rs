//! Canary arms: which of a tenant's arms answers a lookup made for a
//! session (`?session=S`). A tenant with a canary has the record
//! `<id>.canary`, whose config carries `"canary":{"arm":…,"percent":…}`.
//! A session is drawn into one of 10,000 buckets by SHA-256 of (tenant,
//! the arm's hash, session); buckets below `percent × 100` get the canary.
//! So a session sees one arm for its whole call, raising the percent only
//! adds sessions, and a new canary (another arm hash) draws afresh.
//! Without a session the stable arm answers.

use sha2::{Digest, Sha256};
use strata_common::model::CANARY_SUFFIX;

/// The arm that answered, for `X-Strata-Arm` and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// The tenant's own config.
    Stable,
    /// Its canary.
    Canary,
}

impl Arm {
    /// The header value and metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Arm::Stable => "stable",
            Arm::Canary => "canary",
        }
    }
}

/// Buckets a session is drawn into: 0.01 % each.
pub const BUCKETS: u64 = 10_000;

/// The bucket of `session` for `tenant`'s canary whose arm hash is `arm`.
pub fn bucket(tenant: &str, arm: &[u8], session: &[u8]) -> u64 {
    let mut h = Sha256::new();
    h.update(tenant.as_bytes());
    h.update([0]);
    h.update(arm);
    h.update([0]);
    h.update(session);
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) % BUCKETS
}

/// The record key of `tenant`'s canary arm.
pub fn canary_key(tenant: &str) -> String {
    let mut key = String::with_capacity(tenant.len() + CANARY_SUFFIX.len());
    key.push_str(tenant);
    key.push_str(CANARY_SUFFIX);
    key
}

/// The arm hash and the share in buckets a canary config carries
/// (canonical JSON: `"canary":{"arm":"<64 hex>","percent":<number>}`,
/// keys sorted, so found by its bytes without parsing the config).
pub fn canary_of(config: &[u8]) -> Option<(&[u8], u64)> {
    const HEAD: &[u8] = b"\"canary\":{\"arm\":\"";
    const MID: &[u8] = b"\",\"percent\":";
    // Searched from the end: the section sorts after `agent` (the long
    // prompt template) and before a few short members. The bytes cannot
    // occur inside a JSON string, where every quote is escaped.
    let at = memchr::memmem::rfind(config, HEAD)? + HEAD.len();
    let arm = config.get(at..at + 64)?;
    let rest = config.get(at + 64..)?.strip_prefix(MID)?;
    let end = rest.iter().position(|b| *b == b'}')?;
    let percent: f64 = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
    let buckets = (percent * 100.0).round().clamp(0.0, BUCKETS as f64) as u64;
    Some((arm, buckets))
}

/// Whether `session` gets the canary whose config is `config`.
pub fn draws_canary(tenant: &str, config: &[u8], session: &[u8]) -> bool {
    canary_of(config).is_some_and(|(arm, share)| bucket(tenant, arm, session) < share)
}

/// The `session=` value of a query string, percent-decoded; an empty one
/// is no session (it would put every such call in one bucket).
pub fn session_of(query: Option<&str>) -> Option<Vec<u8>> {
    let value = query?.split('&').find_map(|p| p.strip_prefix("session="))?;
    // `%XX` decoded, `+` kept (a session id is taken as sent), as both
    // clients encode it.
    (!value.is_empty()).then(|| percent_encoding::percent_decode_str(value).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(percent: &str) -> Vec<u8> {
        format!(
            "{{\"agent\":{{}},\"canary\":{{\"arm\":\"{}\",\"percent\":{percent}}},\"config_hash\":\"x\"}}",
            "a".repeat(64)
        )
        .into_bytes()
    }

    #[test]
    fn a_session_keeps_its_arm_as_the_percent_rises_and_the_edges_hold() {
        let sessions: Vec<String> = (0..4000).map(|i| format!("call-{i}")).collect();
        let share = |p: &str| {
            sessions
                .iter()
                .filter(|s| draws_canary("acme", &config(p), s.as_bytes()))
                .count()
        };
        assert_eq!(share("0"), 0);
        assert_eq!(share("100"), sessions.len());
        let at10 = share("10");
        assert!((300..=500).contains(&at10), "{at10} of 4000 at 10 %");
        for s in &sessions {
            if draws_canary("acme", &config("10"), s.as_bytes()) {
                assert!(draws_canary("acme", &config("25.5"), s.as_bytes()), "{s}");
            }
        }
        assert_eq!(canary_of(&config("0.01")).map(|(_, b)| b), Some(1));
        assert_eq!(canary_of(b"{\"agent\":{}}"), None);
    }

    #[test]
    fn the_session_is_read_from_the_query_decoded() {
        assert_eq!(
            session_of(Some("snapshot=3&session=a%2Fb")),
            Some(b"a/b".to_vec())
        );
        assert_eq!(session_of(Some("snapshot=3")), None);
        assert_eq!(session_of(None), None);
        assert_eq!(session_of(Some("session=%zz")), Some(b"%zz".to_vec()));
        assert_eq!(session_of(Some("session=&snapshot=3")), None);
    }
}
