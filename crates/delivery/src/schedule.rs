//! When a failed delivery is tried again: once after each duration of the schedule
//! (`SAGAPLANE_DELIVERY_RETRY_SCHEDULE`, default 1m, 2m, … 128m), so N durations allow N + 1
//! attempts; then the delivery is `dead`. A `Retry-After` a receiver sends is honoured when it
//! asks for longer.

use saga_store::DeliveryStatus;

/// The default schedule: 8 retries, doubling from a minute.
pub const DEFAULT_SCHEDULE_MS: [u64; 8] = [60_000, 120_000, 240_000, 480_000, 960_000, 1_920_000, 3_840_000, 7_680_000];

/// The longest `Retry-After` honoured (a receiver cannot park a delivery for days).
pub const RETRY_AFTER_MAX_MS: u64 = 24 * 3600 * 1000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule {
    delays_ms: Vec<u64>,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule { delays_ms: DEFAULT_SCHEDULE_MS.to_vec() }
    }
}

impl RetrySchedule {
    pub fn new(delays_ms: Vec<u64>) -> Self {
        RetrySchedule { delays_ms }
    }

    /// Attempts allowed in one round (before a replay starts another).
    pub fn attempts_max(&self) -> u32 {
        self.delays_ms.len() as u32 + 1
    }

    /// After the `attempt`-th failed attempt of a round (1-based): retry when, or `Dead`.
    pub fn after_failure(&self, attempt: u32, now_ms: i64, retry_after_ms: Option<u64>) -> (DeliveryStatus, i64) {
        match self.delays_ms.get(attempt.saturating_sub(1) as usize) {
            Some(delay) => {
                let wait = retry_after_ms.map_or(*delay, |asked| asked.min(RETRY_AFTER_MAX_MS).max(*delay));
                (DeliveryStatus::Pending, now_ms.saturating_add(i64::try_from(wait).unwrap_or(i64::MAX)))
            }
            None => (DeliveryStatus::Dead, now_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_follow_the_schedule_then_die() {
        let schedule = RetrySchedule::new(vec![100, 200]);
        assert_eq!(schedule.attempts_max(), 3);
        assert_eq!(schedule.after_failure(1, 1_000, None), (DeliveryStatus::Pending, 1_100));
        assert_eq!(schedule.after_failure(2, 1_000, None), (DeliveryStatus::Pending, 1_200));
        assert_eq!(schedule.after_failure(3, 1_000, None), (DeliveryStatus::Dead, 1_000));
        assert_eq!(
            schedule.after_failure(1, 1_000, Some(5_000)),
            (DeliveryStatus::Pending, 6_000),
            "Retry-After longer"
        );
        assert_eq!(schedule.after_failure(1, 1_000, Some(10)), (DeliveryStatus::Pending, 1_100), "never sooner");
        assert_eq!(RetrySchedule::default().attempts_max(), 9);
    }
}
