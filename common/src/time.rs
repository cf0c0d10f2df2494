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
