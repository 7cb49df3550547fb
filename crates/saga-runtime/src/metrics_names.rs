//! Metric names (docs/api.md, "Sagas"), defined once.

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
pub const SAGA_CLAIM_DURATION_SECONDS: &str = "saga_claim_duration_seconds";
/// Sagas due now (any instance may claim them), refreshed every few seconds.
pub const SAGA_QUEUE_DEPTH: &str = "saga_queue_depth";
pub const SAGA_OLDEST_DUE_AGE_SECONDS: &str = "saga_oldest_due_age_seconds";
/// `{state="in_use|idle"}`: the store's connection pool(s) in this process.
/// 1 while this instance polls for work because its `LISTEN` cannot hear (or there is none:
/// a transaction pooler without `SAGAPLANE_LISTEN_URL`); 0 while notifications arrive.
pub const SAGA_DB_WAKEUPS_POLLING: &str = "saga_db_wakeups_polling";
pub const SAGA_DB_POOL_CONNECTIONS: &str = "saga_db_pool_connections";
/// `{kind=saga|history|signal|callback}`: rows the cleaner deleted (`SAGAPLANE_RETENTION`).
pub const SAGA_RETENTION_DELETED_TOTAL: &str = "saga_retention_deleted_total";
/// How long the longest-finished saga still kept has been finished.
pub const SAGA_RETENTION_OLDEST_FINISHED_SECONDS: &str = "saga_retention_oldest_finished_seconds";
/// Finished sagas past their retention not yet deleted (counted at most once a minute, up to
/// 1,000,000).
pub const SAGA_RETENTION_BACKLOG: &str = "saga_retention_backlog";
/// `{kind=sagas|deliveries, outcome=done|failed}`: items bulk jobs acted on, or found the action
/// no longer applied to.
pub const SAGA_JOB_ITEMS_TOTAL: &str = "saga_job_items_total";

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
    metrics::describe_histogram!(SAGA_CLAIM_DURATION_SECONDS, "One claim statement's duration (this instance)");
    metrics::describe_gauge!(SAGA_QUEUE_DEPTH, "Sagas due now, waiting for a worker (all instances)");
    metrics::describe_gauge!(SAGA_OLDEST_DUE_AGE_SECONDS, "How long the oldest due saga has been due (0: none)");
    metrics::describe_gauge!(SAGA_DB_POOL_CONNECTIONS, "The store's pooled connections in this process, by state");
    metrics::describe_counter!(SAGA_RETENTION_DELETED_TOTAL, "Rows deleted past their retention, by kind");
    metrics::describe_gauge!(SAGA_RETENTION_BACKLOG, "Finished sagas past their retention not yet deleted");
    metrics::describe_counter!(SAGA_JOB_ITEMS_TOTAL, "Items bulk jobs acted on (done) or could not (failed)");
    metrics::describe_gauge!(
        SAGA_RETENTION_OLDEST_FINISHED_SECONDS,
        "How long the longest-finished saga still kept has been finished (the instance that cleans)"
    );
    metrics::describe_gauge!(
        SAGA_DB_WAKEUPS_POLLING,
        "1 while this instance polls for work because LISTEN cannot hear"
    );
}

/// Registers the series that carry no labels at 0, so the first scrape shows them (an alert on
/// `increase(saga_lease_takeover_total[5m])` sees 0, not "no data", until the first takeover).
pub fn register_engine() {
    metrics::counter!(SAGA_LEASE_TAKEOVER_TOTAL).increment(0);
    metrics::counter!(SAGA_CLAIMED_TOTAL).increment(0);
    metrics::gauge!(SAGA_IN_FLIGHT).increment(0.0);
    let _ = metrics::histogram!(SAGA_COMMIT_BATCH_SIZE);
    let _ = metrics::histogram!(SAGA_CLAIM_DURATION_SECONDS);
    metrics::gauge!(SAGA_QUEUE_DEPTH).increment(0.0);
    metrics::gauge!(SAGA_OLDEST_DUE_AGE_SECONDS).increment(0.0);
    for state in ["in_use", "idle"] {
        metrics::gauge!(SAGA_DB_POOL_CONNECTIONS, "state" => state).increment(0.0);
    }
    metrics::gauge!(SAGA_DB_WAKEUPS_POLLING).increment(0.0);
}

/// How often the store-wide gauges (queue depth, oldest due age, pool) are refreshed.
pub const STORE_GAUGES_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// Sets the store-wide gauges from one reading.
pub fn store_gauges(
    due: (u64, Option<i64>),
    pool: saga_store::PoolStatus,
    connection: &saga_store::ConnectionStatus,
    now_ms: i64,
) {
    let polling = connection.wakeups.mode == saga_store::WakeupMode::Polling;
    metrics::gauge!(SAGA_DB_WAKEUPS_POLLING).set(if polling { 1.0 } else { 0.0 });
    let (count, oldest_due_at_ms) = due;
    metrics::gauge!(SAGA_QUEUE_DEPTH).set(count as f64);
    let age_ms = oldest_due_at_ms.map_or(0, |at| now_ms.saturating_sub(at).max(0));
    metrics::gauge!(SAGA_OLDEST_DUE_AGE_SECONDS).set(age_ms as f64 / 1000.0);
    metrics::gauge!(SAGA_DB_POOL_CONNECTIONS, "state" => "in_use").set(f64::from(pool.in_use));
    metrics::gauge!(SAGA_DB_POOL_CONNECTIONS, "state" => "idle").set(f64::from(pool.idle));
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
