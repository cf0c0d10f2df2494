//! Timestamps and durations as they appear in signed documents and config.
//!
//! Signed documents carry RFC 3339 UTC timestamps to the second
//! (`2026-11-23T19:29:17Z`); durations are humantime strings (`14d`, `5s`).

use std::time::{Duration, SystemTime};

/// Formats `t` as an RFC 3339 UTC timestamp with whole seconds.
pub fn format(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Parses an RFC 3339 UTC timestamp such as `2026-11-23T19:29:17Z`.
pub fn parse(s: &str) -> Result<SystemTime, humantime::TimestampError> {
    humantime::parse_rfc3339(s)
}

/// Parses a duration such as `14d`, `5s`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// The current time truncated to whole seconds, so a timestamp written and read
/// back compares equal.
pub fn now() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Why a timestamp in a signed document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an RFC 3339 UTC timestamp with whole seconds (2026-11-23T20:14:24Z)")]
pub struct NotExact(pub String);

/// Parses a timestamp of a signed document, which has exactly one form:
/// `YYYY-MM-DDTHH:MM:SSZ`, UTC, whole seconds (docs/FORMAT.md). Fractions,
/// offsets and lower-case letters are refused, so one instant has one
/// spelling.
pub fn parse_exact(s: &str) -> Result<SystemTime, NotExact> {
    let shape = s.len() == 20
        && s.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    if !shape {
        return Err(NotExact(s.to_owned()));
    }
    // humantime reads a leap second `:60` as `:59`: one spelling only.
    parse(s)
        .ok()
        .filter(|t| format(*t) == s)
        .ok_or_else(|| NotExact(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_timestamps_have_one_spelling() {
        let t = parse_exact("2026-11-23T20:14:24Z").expect("exact");
        assert_eq!(format(t), "2026-11-23T20:14:24Z");
        for bad in [
            "2026-11-23T20:14:24.5Z",
            "2026-11-23T20:14:24.000Z",
            "2026-11-23T20:14:24+00:00",
            "2026-11-23t20:14:24z",
            "2026-11-23 20:14:24Z",
            "2026-13-23T20:14:24Z",
            " 2026-11-23T20:14:24Z",
            "2016-12-31T23:59:60Z",
        ] {
            assert!(parse_exact(bad).is_err(), "{bad}");
        }
    }
}
