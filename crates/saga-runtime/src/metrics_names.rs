//! Metric names (API.md §5), defined once.

pub const SAGA_TOTAL: &str = "saga_total";
pub const SAGA_DURATION_SECONDS: &str = "saga_duration_seconds";
pub const SAGA_STEP_DURATION_SECONDS: &str = "saga_step_duration_seconds";
pub const SAGA_RETRY_TOTAL: &str = "saga_retry_total";
pub const SAGA_LEASE_TAKEOVER_TOTAL: &str = "saga_lease_takeover_total";
pub const SAGA_IN_FLIGHT: &str = "saga_in_flight";
pub const SAGA_COMMIT_BATCH_SIZE: &str = "saga_commit_batch_size";
pub const SAGA_CLAIMED_TOTAL: &str = "saga_claimed_total";
pub const SAGA_CIRCUIT_OPEN: &str = "saga_circuit_open";
pub const SAGA_CIRCUIT_DEFERRED_TOTAL: &str = "saga_circuit_deferred_total";

/// Registers descriptions so `/metrics` shows HELP lines.
pub fn describe() {
    metrics::describe_counter!(SAGA_TOTAL, "Sagas that reached a terminal status");
    metrics::describe_histogram!(SAGA_DURATION_SECONDS, "Saga start-to-terminal time");
    metrics::describe_histogram!(SAGA_STEP_DURATION_SECONDS, "One step attempt's duration");
    metrics::describe_counter!(SAGA_RETRY_TOTAL, "Step attempts scheduled for retry");
    metrics::describe_counter!(SAGA_LEASE_TAKEOVER_TOTAL, "Sagas claimed from an instance whose lease expired");
    metrics::describe_gauge!(SAGA_IN_FLIGHT, "Sagas this instance is driving");
    metrics::describe_histogram!(SAGA_COMMIT_BATCH_SIZE, "Transitions per group commit");
    metrics::describe_counter!(SAGA_CLAIMED_TOTAL, "Sagas claimed by this instance");
    metrics::describe_gauge!(SAGA_CIRCUIT_OPEN, "1 while a participant endpoint's circuit breaker is open");
    metrics::describe_counter!(SAGA_CIRCUIT_DEFERRED_TOTAL, "Attempts put off because the endpoint's circuit was open");
}

/// Registers the series that carry no labels at 0, so the first scrape shows them (an alert on
/// `increase(saga_lease_takeover_total[5m])` sees 0, not "no data", until the first takeover).
pub fn register_engine() {
    metrics::counter!(SAGA_LEASE_TAKEOVER_TOTAL).increment(0);
    metrics::counter!(SAGA_CLAIMED_TOTAL).increment(0);
    metrics::gauge!(SAGA_IN_FLIGHT).increment(0.0);
    let _ = metrics::histogram!(SAGA_COMMIT_BATCH_SIZE);
}

/// The terminal statuses `saga_total` counts.
const TERMINAL_STATUSES: [&str; 3] = ["COMPLETED", "COMPENSATED", "FAILED"];

/// Registers a definition's series at 0: its terminal counts, its durations, and each step's
/// retries and attempt durations. Called when a definition version is first loaded.
pub fn register_definition(definition: &saga_core::Definition) {
    let name = definition.name.clone();
    for status in TERMINAL_STATUSES {
        metrics::counter!(SAGA_TOTAL, "definition" => name.clone(), "status" => status).increment(0);
    }
    let _ = metrics::histogram!(SAGA_DURATION_SECONDS, "definition" => name.clone());
    for step in &definition.steps {
        metrics::counter!(SAGA_RETRY_TOTAL, "definition" => name.clone(), "step" => step.name.clone()).increment(0);
        let outcomes: &[&str] = if step.compensation.is_some() {
            &["succeeded", "failed", "compensated", "compensation_failed"]
        } else {
            &["succeeded", "failed"]
        };
        for outcome in outcomes {
            let _ = metrics::histogram!(
                SAGA_STEP_DURATION_SECONDS,
                "definition" => name.clone(),
                "step" => step.name.clone(),
                "outcome" => *outcome
            );
        }
    }
}
