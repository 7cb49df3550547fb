//! Circuit breakers, one per participant endpoint (`scheme://host:port` or a gRPC endpoint),
//! per instance.
//!
//! Design note. Once retryable failures (5xx, timeouts, connection errors, the gRPC codes that
//! are retried) of `failures_to_open` *distinct sagas* have followed each other with no healthy
//! answer in between, an endpoint's circuit opens for `cool_down_ms`. One saga's own retries
//! count once: a single saga's retry policy is the user's word on how often to try, and a
//! breaker that tripped on it would replace a 100 ms backoff with the cool-down. An outage shows
//! as many sagas failing, and that is what opens the circuit. While it is open, attempts against it are not made at all: the driver
//! reschedules the saga for when the circuit may close, without spending one of the step's
//! attempts — so a participant outage does not burn every waiting saga through its retry budget
//! into compensation. After the cool-down one attempt goes through as a probe (half-open);
//! success closes the circuit, a retryable failure opens it again. Definite answers (4xx,
//! NOT_FOUND, …) prove the endpoint is up and count as success. State is in memory: each
//! instance learns about an endpoint on its own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

// Tokio's clock: the simulator's paused time moves it.
use tokio::time::Instant;

use uuid::Uuid;

use crate::metrics_names::{SAGA_CIRCUIT_DEFERRED_TOTAL, SAGA_CIRCUIT_OPEN};

/// When a circuit opens and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Distinct sagas whose retryable failures, with no healthy answer in between, open the
    /// circuit; 0 disables breakers.
    pub failures_to_open: u32,
    pub cool_down_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig { failures_to_open: 5, cool_down_ms: 30_000 }
    }
}

/// The most endpoints tracked; past it, closed circuits are forgotten.
const ENDPOINTS_MAX: usize = 10_000;

#[derive(Clone, Debug)]
enum Circuit {
    /// `failing`: the sagas that failed since the last healthy answer (at most
    /// `failures_to_open` of them, each once).
    Closed {
        failing: Vec<Uuid>,
    },
    Open {
        until: Instant,
    },
    /// A probe is in flight since `since`; everyone else waits.
    HalfOpen {
        since: Instant,
    },
}

/// Whether an attempt may go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Go,
    /// Not now: the circuit is open; ask again after this many milliseconds.
    Wait {
        retry_after_ms: u64,
    },
}

/// All breakers of an instance.
#[derive(Debug, Default)]
pub struct Breakers {
    config: BreakerConfig,
    circuits: Mutex<HashMap<String, Circuit>>,
}

impl Breakers {
    pub fn new(config: BreakerConfig) -> Self {
        Breakers { config, circuits: Mutex::new(HashMap::new()) }
    }

    /// Asks to attempt a call to `endpoint` at `now`.
    pub fn admit(&self, endpoint: &str, now: Instant) -> Admission {
        if self.config.failures_to_open == 0 {
            return Admission::Go;
        }
        let Ok(mut circuits) = self.circuits.lock() else {
            return Admission::Go;
        };
        let cool_down = Duration::from_millis(self.config.cool_down_ms);
        let circuit = circuits.get(endpoint).cloned().unwrap_or(Circuit::Closed { failing: Vec::new() });
        let (next, admission) = match circuit {
            Circuit::Closed { .. } => (circuit, Admission::Go),
            Circuit::Open { until } if now >= until => (Circuit::HalfOpen { since: now }, Admission::Go),
            Circuit::Open { until } => (circuit, wait(until - now)),
            // A probe that never reported (its driver stopped) frees the way after a cool-down.
            Circuit::HalfOpen { since } if now >= since + cool_down => {
                (Circuit::HalfOpen { since: now }, Admission::Go)
            }
            Circuit::HalfOpen { .. } => (circuit, wait(cool_down.min(Duration::from_secs(1)))),
        };
        circuits.insert(endpoint.to_string(), next);
        if let Admission::Wait { .. } = admission {
            metrics::counter!(SAGA_CIRCUIT_DEFERRED_TOTAL, "endpoint" => endpoint.to_string()).increment(1);
        }
        admission
    }

    /// Reports how saga `saga_id`'s admitted attempt ended: `healthy` unless it failed retryably.
    pub fn record(&self, endpoint: &str, saga_id: Uuid, healthy: bool, now: Instant) {
        if self.config.failures_to_open == 0 {
            return;
        }
        let Ok(mut circuits) = self.circuits.lock() else {
            return;
        };
        let circuit = circuits.get(endpoint).cloned().unwrap_or(Circuit::Closed { failing: Vec::new() });
        let cool_down = Duration::from_millis(self.config.cool_down_ms);
        let was_open = !matches!(circuit, Circuit::Closed { .. });
        let next = match (circuit, healthy) {
            (_, true) => Circuit::Closed { failing: Vec::new() },
            (Circuit::Closed { mut failing }, false) => {
                if !failing.contains(&saga_id) {
                    failing.push(saga_id);
                }
                if failing.len() >= self.config.failures_to_open as usize {
                    Circuit::Open { until: now + cool_down }
                } else {
                    Circuit::Closed { failing }
                }
            }
            (Circuit::HalfOpen { .. }, false) => Circuit::Open { until: now + cool_down },
            (Circuit::Open { until }, false) => Circuit::Open { until },
        };
        let is_open = !matches!(next, Circuit::Closed { .. });
        if was_open != is_open {
            tracing::warn!(endpoint, open = is_open, "circuit breaker {}", if is_open { "opened" } else { "closed" });
            metrics::gauge!(SAGA_CIRCUIT_OPEN, "endpoint" => endpoint.to_string()).set(if is_open { 1.0 } else { 0.0 });
        }
        if circuits.len() >= ENDPOINTS_MAX {
            circuits.retain(|_, c| !matches!(c, Circuit::Closed { failing } if failing.is_empty()));
        }
        circuits.insert(endpoint.to_string(), next);
    }
}

fn wait(duration: Duration) -> Admission {
    Admission::Wait { retry_after_ms: (duration.as_millis() as u64).max(1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sagas(n: usize) -> Vec<Uuid> {
        (0..n).map(|_| Uuid::new_v4()).collect()
    }

    #[test]
    fn opens_after_failures_of_distinct_sagas_probes_and_closes() {
        let breakers = Breakers::new(BreakerConfig { failures_to_open: 3, cool_down_ms: 1_000 });
        let t0 = Instant::now();
        let ids = sagas(3);
        for id in &ids[..2] {
            assert_eq!(breakers.admit("e", t0), Admission::Go);
            breakers.record("e", *id, false, t0);
        }
        // A success in between resets the count.
        breakers.record("e", ids[2], true, t0);
        for id in &ids {
            assert_eq!(breakers.admit("e", t0), Admission::Go);
            breakers.record("e", *id, false, t0);
        }
        assert_eq!(breakers.admit("e", t0 + Duration::from_millis(400)), Admission::Wait { retry_after_ms: 600 });
        assert_eq!(breakers.admit("other", t0), Admission::Go, "circuits are per endpoint");
        // Cool-down over: one probe, the rest wait.
        let t1 = t0 + Duration::from_millis(1_000);
        assert_eq!(breakers.admit("e", t1), Admission::Go);
        assert!(matches!(breakers.admit("e", t1), Admission::Wait { .. }));
        // The probe fails: open again for a full cool-down.
        breakers.record("e", ids[0], false, t1);
        assert_eq!(breakers.admit("e", t1 + Duration::from_millis(999)), Admission::Wait { retry_after_ms: 1 });
        let t2 = t1 + Duration::from_millis(1_000);
        assert_eq!(breakers.admit("e", t2), Admission::Go);
        breakers.record("e", ids[0], true, t2);
        assert_eq!(breakers.admit("e", t2), Admission::Go);
        assert_eq!(breakers.admit("e", t2), Admission::Go, "closed again");
    }

    #[test]
    fn one_sagas_own_retries_count_once() {
        let breakers = Breakers::new(BreakerConfig { failures_to_open: 2, cool_down_ms: 1_000 });
        let now = Instant::now();
        let ids = sagas(2);
        for _ in 0..20 {
            assert_eq!(breakers.admit("e", now), Admission::Go, "one saga's retries never open it");
            breakers.record("e", ids[0], false, now);
        }
        breakers.record("e", ids[1], false, now);
        assert!(matches!(breakers.admit("e", now), Admission::Wait { .. }), "a second saga failing does");
    }

    #[test]
    fn zero_threshold_disables() {
        let breakers = Breakers::new(BreakerConfig { failures_to_open: 0, cool_down_ms: 1_000 });
        let now = Instant::now();
        for id in sagas(10) {
            breakers.record("e", id, false, now);
        }
        assert_eq!(breakers.admit("e", now), Admission::Go);
    }
}
