//! "Why isn't this saga moving?" (`GET /v1/sagas/{id}/blockers`): everything that holds a
//! saga now, read from the same state the claim reads — its status, lease, `run_at`, admission
//! under its concurrency key, the wait it is parked on — and the history event that set its
//! `run_at` (a retry's backoff, a breaker's deferral). Nothing is guessed: a saga whose
//! `run_at` has passed, that no live lease holds and that is admitted is due, and only a free
//! worker is missing (`runnable`).

use saga_core::{SagaStatus, WaitKind};
use saga_store::{SagaQueueFacts, SagaRecord};
use uuid::Uuid;

/// One thing holding a saga.
#[derive(Clone, Debug, PartialEq)]
pub enum Blocker {
    /// A step's retry is due at `until_ms`.
    Backoff { step: Option<String>, attempt: Option<u32>, until_ms: i64 },
    /// A `signal` step waits for the signal `name` (until `until_ms`, if it times out).
    Signal { step: String, name: String, since_ms: i64, until_ms: Option<i64> },
    /// A `sleep` step's durable timer runs until `until_ms`.
    Timer { step: String, since_ms: i64, until_ms: i64 },
    /// A `saga` step waits for its child saga `saga_id` to end (`compensating`: to finish
    /// compensating, for the step's compensation).
    Child { step: String, saga_id: String, compensating: bool },
    /// A `parallel` or `for_each` group waits for its branches (child sagas) to end.
    Branches { step: String, total: u32 },
    /// An async participant answered 202 and has not called back yet.
    Callback { step: String, attempt: u32, since_ms: i64, last_heartbeat_ms: Option<i64>, until_ms: Option<i64> },
    /// Its concurrency key is at its limit: it waits `PENDING` for one of `holders` to finish.
    Concurrency { key: String, limit: Option<u32>, holders: Vec<Uuid> },
    /// A step's endpoint has an open breaker: the step was deferred until `until_ms`.
    Breaker { step: Option<String>, endpoint: String, until_ms: i64 },
    /// A worker holds it (running a step now) until `until_ms` unless it renews.
    Lease { worker: String, until_ms: i64 },
    /// Nothing wakes it before its deadline.
    Deadline { until_ms: i64 },
    /// Due at `until_ms` for another reason (e.g. a `core.sleep`).
    Scheduled { until_ms: i64 },
    /// Due now, waiting for a free worker behind `queue_depth` due sagas.
    Queued { queue_depth: u64, oldest_due_at_ms: Option<i64>, expired_lease_of: Option<String> },
    /// `FAILED`: only an operator's retry moves it.
    Operator { message: Option<String> },
}

/// The answer for one saga.
#[derive(Clone, Debug, PartialEq)]
pub struct Blockers {
    /// True when nothing but a free worker is missing.
    pub runnable: bool,
    pub blockers: Vec<Blocker>,
}

/// Explains `saga` at `now_ms`; `key_limit` is its definition's concurrency limit.
pub fn explain(saga: &SagaRecord, facts: &SagaQueueFacts, key_limit: Option<u32>, now_ms: i64) -> Blockers {
    let held = |blockers| Blockers { runnable: false, blockers };
    match saga.status {
        SagaStatus::Completed | SagaStatus::Compensated => return held(Vec::new()),
        SagaStatus::Failed => {
            let message = saga.state.error.as_ref().map(|e| e.message.clone());
            return held(vec![Blocker::Operator { message }]);
        }
        SagaStatus::Pending | SagaStatus::Executing | SagaStatus::Compensating => {}
    }
    if let (Some(worker), Some(until_ms)) = (&saga.lease_owner, saga.lease_expires_at_ms) {
        if until_ms > now_ms {
            return held(vec![Blocker::Lease { worker: worker.clone(), until_ms }]);
        }
    }
    if let (Some(key), false) = (&saga.concurrency_key, facts.admitted) {
        let holders = facts.key_holders.clone();
        return held(vec![Blocker::Concurrency { key: key.clone(), limit: key_limit, holders }]);
    }
    if saga.run_at_ms <= now_ms {
        let expired_lease_of = saga.lease_owner.clone();
        let queued = Blocker::Queued {
            queue_depth: facts.due_count,
            oldest_due_at_ms: facts.oldest_due_at_ms,
            expired_lease_of,
        };
        return Blockers { runnable: true, blockers: vec![queued] };
    }
    let mut blockers = vec![parked(saga, facts)];
    let deadline_wakes_it = saga.state.deadline_at_ms.is_some_and(|deadline| deadline == saga.run_at_ms);
    if let (true, Some(until_ms)) = (deadline_wakes_it, saga.state.deadline_at_ms) {
        blockers.push(Blocker::Deadline { until_ms });
    }
    held(blockers)
}

/// Why a saga that is not due now waits: its wait, else the event that set its `run_at`.
fn parked(saga: &SagaRecord, facts: &SagaQueueFacts) -> Blocker {
    let until_ms = saga.run_at_ms;
    let latest = facts.latest_event.as_ref();
    if let Some(wait) = &saga.state.wait {
        let step = saga.state.steps.get(wait.step).map(|s| s.name.clone()).unwrap_or_default();
        return match &wait.kind {
            WaitKind::Signal { name } => {
                Blocker::Signal { step, name: name.clone(), since_ms: wait.since_ms, until_ms: wait.until_ms }
            }
            WaitKind::Timer => {
                Blocker::Timer { step, since_ms: wait.since_ms, until_ms: wait.until_ms.unwrap_or(until_ms) }
            }
            WaitKind::Child { saga_id } => Blocker::Child { step, saga_id: saga_id.clone(), compensating: false },
            WaitKind::Branches { total } => Blocker::Branches { step, total: *total },
            WaitKind::Callback => Blocker::Callback {
                step,
                attempt: wait.attempt,
                since_ms: wait.since_ms,
                last_heartbeat_ms: facts.callback.as_ref().and_then(|c| c.last_heartbeat_at_ms),
                until_ms: facts.callback.as_ref().and_then(|c| c.deadline_at_ms).or(wait.until_ms),
            },
        };
    }
    match latest.map(|e| e.kind.as_str()) {
        Some("step_retry_scheduled") => Blocker::Backoff {
            step: latest.and_then(|e| e.step.clone()),
            attempt: latest.and_then(|e| e.attempt),
            until_ms,
        },
        Some("step_waiting") if latest.is_some_and(|e| e.data["child_saga_id"].is_string()) => Blocker::Child {
            step: latest.and_then(|e| e.step.clone()).unwrap_or_default(),
            saga_id: latest.and_then(|e| e.data["child_saga_id"].as_str()).unwrap_or_default().to_string(),
            compensating: true,
        },
        Some("step_deferred") => Blocker::Breaker {
            step: latest.and_then(|e| e.step.clone()),
            endpoint: latest.and_then(|e| e.data["endpoint"].as_str()).unwrap_or_default().to_string(),
            until_ms,
        },
        _ => Blocker::Scheduled { until_ms },
    }
}

#[cfg(test)]
mod tests;
