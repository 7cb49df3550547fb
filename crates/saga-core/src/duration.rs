//! Humantime durations (`250ms`, `5s`, `2m`) as whole milliseconds.

use std::time::Duration;

/// Parses a humantime duration into milliseconds.
pub fn parse_ms(text: &str) -> Result<u64, String> {
    let duration: Duration = humantime::parse_duration(text.trim()).map_err(|e| e.to_string())?;
    u64::try_from(duration.as_millis()).map_err(|_| "duration is too large".to_string())
}

/// Formats milliseconds as a humantime string.
pub fn format_ms(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}
