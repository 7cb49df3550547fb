//! Delivery metrics, per destination (labelled by subscription id — a URL can carry a token):
//! attempts by outcome, attempt latency, and the backlog (pending deliveries, age of the oldest),
//! refreshed from the store every few seconds. Named series exist from the first scrape.

use std::time::Duration;

use saga_store::DeliveryBacklog;

/// `saga_delivery_attempts_total{subscription, outcome="delivered|retried|dead"}`.
pub const ATTEMPTS_TOTAL: &str = "saga_delivery_attempts_total";
/// `saga_delivery_attempt_duration_seconds{subscription}`.
pub const ATTEMPT_DURATION_SECONDS: &str = "saga_delivery_attempt_duration_seconds";
/// `saga_delivery_pending{subscription}`.
pub const PENDING: &str = "saga_delivery_pending";
/// `saga_delivery_oldest_pending_age_seconds{subscription}`.
pub const OLDEST_PENDING_AGE_SECONDS: &str = "saga_delivery_oldest_pending_age_seconds";

/// `saga_delivery_breaker_open{subscription}`: 1 while its breaker is open (this process's).
pub const BREAKER_OPEN: &str = "saga_delivery_breaker_open";

/// How often the backlog gauges are refreshed.
pub const BACKLOG_REFRESH: Duration = Duration::from_secs(5);

pub fn describe() {
    metrics::describe_counter!(ATTEMPTS_TOTAL, "Delivery attempts, by destination and outcome");
    metrics::describe_histogram!(ATTEMPT_DURATION_SECONDS, "One delivery attempt's duration");
    metrics::describe_gauge!(PENDING, "Deliveries waiting to be sent, by destination");
    metrics::describe_gauge!(OLDEST_PENDING_AGE_SECONDS, "Age of the oldest pending delivery's event");
    metrics::describe_gauge!(BREAKER_OPEN, "1 while a destination's breaker is open in this process");
}

pub fn breaker(subscription: &str, open: bool) {
    metrics::gauge!(BREAKER_OPEN, "subscription" => subscription.to_string()).set(if open { 1.0 } else { 0.0 });
}

pub fn attempt(subscription: &str, outcome: &'static str, duration_ms: i64) {
    metrics::counter!(ATTEMPTS_TOTAL, "subscription" => subscription.to_string(), "outcome" => outcome).increment(1);
    metrics::histogram!(ATTEMPT_DURATION_SECONDS, "subscription" => subscription.to_string())
        .record(duration_ms.max(0) as f64 / 1000.0);
}

/// Sets the gauges from `backlog`; subscriptions in `previous` but not in it go to 0.
pub fn backlog(backlog: &[DeliveryBacklog], previous: &[String], now_ms: i64) -> Vec<String> {
    let mut current = Vec::with_capacity(backlog.len());
    for entry in backlog {
        let id = entry.subscription_id.to_string();
        metrics::gauge!(PENDING, "subscription" => id.clone()).set(entry.pending as f64);
        let age = (now_ms - entry.oldest_created_at_ms).max(0) as f64 / 1000.0;
        metrics::gauge!(OLDEST_PENDING_AGE_SECONDS, "subscription" => id.clone()).set(age);
        current.push(id);
    }
    for gone in previous.iter().filter(|id| !current.contains(id)) {
        metrics::gauge!(PENDING, "subscription" => gone.clone()).set(0.0);
        metrics::gauge!(OLDEST_PENDING_AGE_SECONDS, "subscription" => gone.clone()).set(0.0);
    }
    current
}
