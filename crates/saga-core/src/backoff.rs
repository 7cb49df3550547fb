//! Retry backoff: exponential with a cap and symmetric jitter.

use crate::definition::RetryPolicy;

/// Delay before attempt `attempt + 1`, after `attempt` (1-based) failed.
///
/// `jitter_sample` is a uniform draw in `[0, 1)` supplied by the caller; the delay is
/// `min(initial * multiplier^(attempt-1), max) * (1 + jitter * (2 * sample - 1))`.
pub fn retry_delay_ms(policy: &RetryPolicy, attempt: u32, jitter_sample: f64) -> u64 {
    let exponent = attempt.saturating_sub(1).min(64) as i32;
    let base = policy.initial_interval_ms as f64 * policy.multiplier.powi(exponent);
    let capped = base.min(policy.max_interval_ms as f64);
    let sample = jitter_sample.clamp(0.0, 1.0);
    let factor = 1.0 + policy.jitter * (2.0 * sample - 1.0);
    let delay = (capped * factor).max(0.0);
    if delay.is_finite() {
        delay.round() as u64
    } else {
        policy.max_interval_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy { max_attempts: 10, initial_interval_ms: 100, multiplier: 2.0, max_interval_ms: 1000, jitter }
    }

    #[test]
    fn grows_and_caps() {
        let p = policy(0.0);
        let delays: Vec<u64> = (1..=6).map(|a| retry_delay_ms(&p, a, 0.5)).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_in_band() {
        let p = policy(0.1);
        assert_eq!(retry_delay_ms(&p, 1, 0.0), 90);
        assert_eq!(retry_delay_ms(&p, 1, 0.5), 100);
        assert!(retry_delay_ms(&p, 1, 0.999) <= 110);
    }
}
