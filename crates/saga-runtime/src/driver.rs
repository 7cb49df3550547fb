//! Driving one claimed saga: run the next step, commit its transition, repeat — without
//! re-claiming between steps — until the saga is terminal, waits for a retry, loses its lease,
//! or the instance shuts down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use saga_core::template::TemplateContext;
use saga_core::{Attempt, HistoryEvent, Next, Outcome, Phase, SagaState};
use saga_store::{Claimed, CommitOutcome, LeaseRef, SagaCommit};
use serde_json::json;
use tracing::Instrument;

use crate::executor::AttemptContext;
use crate::instance::Shared;
use crate::metrics_names::{
    SAGA_DURATION_SECONDS, SAGA_LEASE_TAKEOVER_TOTAL, SAGA_RETRY_TOTAL, SAGA_STEP_DURATION_SECONDS, SAGA_TOTAL,
};

/// How long a saga waits before another try when its definition cannot be loaded.
const DEFINITION_RETRY_MS: i64 = 60_000;

pub(crate) async fn drive(shared: Arc<Shared>, claimed: Claimed, lost: Arc<AtomicBool>) {
    let record = &claimed.record;
    let span = tracing::info_span!(
        "saga",
        saga_id = %record.id,
        tenant_id = record.tenant_id.as_deref().unwrap_or(""),
        definition = %record.definition,
        token = record.fencing_token,
    );
    let id = record.id;
    drive_inner(&shared, &claimed, &lost).instrument(span).await;
    shared.forget_lease(id);
}

async fn drive_inner(shared: &Shared, claimed: &Claimed, lost: &AtomicBool) {
    let record = &claimed.record;
    let takeover = claimed.previous_owner.is_some();
    if takeover {
        metrics::counter!(SAGA_LEASE_TAKEOVER_TOTAL).increment(1);
        tracing::info!(previous = claimed.previous_owner.as_deref().unwrap_or(""), "took over an expired lease");
    }
    let mut pending = vec![HistoryEvent::new(
        "lease_acquired",
        None,
        None,
        json!({"fencing_token": record.fencing_token, "previous_owner": claimed.previous_owner, "takeover": takeover}),
        shared.clock.now_ms(),
    )];
    let definition = match shared.definitions.get(&record.definition, Some(record.version)).await {
        Ok((_, d)) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot load the saga's definition; retrying later");
            let retry_at = shared.clock.now_ms() + DEFINITION_RETRY_MS;
            let state = record.state.clone();
            let _ = commit(shared, claimed, state, std::mem::take(&mut pending), Some(retry_at)).await;
            return;
        }
    };
    let mut state: SagaState = record.state.clone();
    let mut templates = TemplateContext {
        input: record.input.clone(),
        tenant_id: record.tenant_id.clone(),
        saga_id: record.id.to_string(),
        step_outputs: serde_json::Map::new(),
        vars: shared.config.vars.clone(),
    };
    loop {
        if lost.load(Ordering::SeqCst) {
            tracing::warn!("lease lost; another instance drives this saga now");
            return;
        }
        if shared.shutting_down.load(Ordering::SeqCst) {
            hand_back(shared, claimed, &mut state, &mut pending).await;
            return;
        }
        let (phase, index, attempt) = match state.next() {
            Next::RunAction { step, attempt } => (Phase::Action, step, attempt),
            Next::RunCompensation { step, attempt } => (Phase::Compensation, step, attempt),
            Next::Terminal => {
                tracing::error!(status = ?state.status, "claimed a saga with nothing to run");
                let _ = commit(shared, claimed, state.clone(), std::mem::take(&mut pending), None).await;
                return;
            }
        };
        let step = &definition.steps[index];
        let action = match phase {
            Phase::Action => &step.action,
            Phase::Compensation => match &step.compensation {
                Some(action) => action,
                None => {
                    tracing::error!(step = %step.name, "state machine asked for a compensation the step lacks");
                    return;
                }
            },
        };
        templates.step_outputs = state.step_outputs();
        let ctx = AttemptContext {
            saga_id: record.id,
            tenant_id: record.tenant_id.clone(),
            step: step.name.clone(),
            phase,
            attempt,
            timeout_ms: step.timeout_ms,
        };
        let started_ms = shared.clock.now_ms();
        let outcome = shared
            .executors
            .run(action, &templates, &ctx)
            .instrument(tracing::info_span!("step", step = %step.name, attempt, phase = ?phase))
            .await;
        let now_ms = shared.clock.now_ms();
        let outcome_label = match (&outcome, phase) {
            (Outcome::Succeeded(_), Phase::Action) => "succeeded",
            (Outcome::Succeeded(_), Phase::Compensation) => "compensated",
            (Outcome::Failed { .. }, Phase::Action) => "failed",
            (Outcome::Failed { .. }, Phase::Compensation) => "compensation_failed",
        };
        metrics::histogram!(SAGA_STEP_DURATION_SECONDS, "definition" => record.definition.clone(), "step" => step.name.clone(), "outcome" => outcome_label)
            .record((now_ms - started_ms).max(0) as f64 / 1000.0);
        if let Outcome::Failed { message, kind } = &outcome {
            tracing::info!(step = %step.name, attempt, ?kind, %message, "attempt failed");
        }
        let finished =
            Attempt { phase, step: index, attempt, outcome, started_at_ms: started_ms, finished_at_ms: now_ms };
        let transition = match state.apply(&definition, finished, shared.jitter_sample()) {
            Ok(t) => t,
            Err(e) => {
                // A broken engine invariant: stop driving; the lease lets another instance retry.
                tracing::error!(error = %e, "state machine rejected an outcome");
                return;
            }
        };
        let mut events = std::mem::take(&mut pending);
        events.extend(transition.events);
        if transition.retry_at_ms.is_some() {
            metrics::counter!(SAGA_RETRY_TOTAL, "definition" => record.definition.clone(), "step" => step.name.clone())
                .increment(1);
        }
        let Some(committed_at_ms) = commit(shared, claimed, state.clone(), events, transition.retry_at_ms).await else {
            return;
        };
        if let Some(at) = transition.retry_at_ms {
            shared.schedule_wake(at);
            return;
        }
        if state.status.is_terminal() {
            finish(shared, claimed, state, committed_at_ms);
            return;
        }
    }
}

/// Commits a transition; `retry_at` hands the lease back until then. Returns the commit time, or
/// None when the driver must stop (fenced or the store failed).
async fn commit(
    shared: &Shared,
    claimed: &Claimed,
    state: SagaState,
    events: Vec<HistoryEvent>,
    retry_at: Option<i64>,
) -> Option<i64> {
    let now_ms = shared.clock.now_ms();
    let commit = SagaCommit {
        id: claimed.record.id,
        tenant_id: claimed.record.tenant_id.clone(),
        fencing_token: claimed.record.fencing_token,
        state,
        run_at_ms: retry_at.unwrap_or(now_ms),
        release_lease: retry_at.is_some(),
        events,
        worker_id: shared.config.worker_id.clone(),
        now_ms,
    };
    match shared.committer.commit(commit).await {
        Ok(CommitOutcome::Committed) => Some(now_ms),
        Ok(CommitOutcome::Fenced) => {
            tracing::warn!("commit fenced: another instance owns this saga");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "commit failed; the lease will expire and the step run again");
            None
        }
    }
}

/// At shutdown: keep what is already decided, hand the lease back so another instance resumes.
async fn hand_back(shared: &Shared, claimed: &Claimed, state: &mut SagaState, pending: &mut Vec<HistoryEvent>) {
    let now_ms = shared.clock.now_ms();
    if !pending.is_empty() {
        let _ = commit(shared, claimed, state.clone(), std::mem::take(pending), Some(now_ms)).await;
        return;
    }
    let lease = LeaseRef { id: claimed.record.id, fencing_token: claimed.record.fencing_token };
    if let Err(e) = shared.store.lease_release(&shared.config.worker_id, &[lease], now_ms).await {
        tracing::warn!(error = %e, "handing back the lease failed; it will expire");
    }
}

fn finish(shared: &Shared, claimed: &Claimed, state: SagaState, committed_at_ms: i64) {
    let record = &claimed.record;
    metrics::counter!(SAGA_TOTAL, "definition" => record.definition.clone(), "status" => state.status.as_str())
        .increment(1);
    metrics::histogram!(SAGA_DURATION_SECONDS, "definition" => record.definition.clone())
        .record((committed_at_ms - record.created_at_ms).max(0) as f64 / 1000.0);
    tracing::info!(status = state.status.as_str(), "saga finished");
    // The row as the commit left it: terminal, lease released.
    let mut snapshot = record.clone();
    snapshot.status = state.status;
    snapshot.state = state;
    snapshot.lease_owner = None;
    snapshot.lease_expires_at_ms = None;
    snapshot.updated_at_ms = committed_at_ms;
    snapshot.completed_at_ms = Some(committed_at_ms);
    shared.hub.publish(snapshot);
}
