//! Humantime durations (`250ms`, `5s`, `2m`) as whole milliseconds.

use std::time::Duration;

/// Parses a humantime duration into milliseconds.
/// The longest duration a definition may name (timeouts, retry intervals, signal waits): ten
/// years. Anything longer is a typo, and millisecond arithmetic on time stamps must not overflow.
pub const DURATION_MAX_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// Milliseconds as a signed offset for time stamps, saturating rather than wrapping.
pub fn signed_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

pub fn parse_ms(text: &str) -> Result<u64, String> {
    let duration: Duration = humantime::parse_duration(text.trim()).map_err(|e| e.to_string())?;
    u64::try_from(duration.as_millis()).map_err(|_| "duration is too large".to_string())
}

/// Formats milliseconds as a humantime string.
pub fn format_ms(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

/// Parses an RFC 3339 time (`2027-01-31T09:00:00Z`, any offset) into Unix milliseconds.
pub fn parse_instant_ms(text: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{text:?} is not an RFC 3339 time ({e}; example: 2027-01-31T09:00:00Z)"))
}

/// Unix milliseconds as an RFC 3339 UTC time with milliseconds.
pub fn format_instant_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}
