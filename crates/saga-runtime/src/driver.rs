//! Driving one claimed saga: run the next step, commit its transition, repeat — without
//! re-claiming between steps — until the saga is terminal, waits (for a retry, a signal, a
//! callback, an open circuit), loses its lease, or the instance shuts down.
//!
//! Design note. A waiting saga holds no lease and no worker slot: the driver commits the wait
//! with the lease released and `run_at` at the wait's deadline (capped by the saga deadline).
//! Deliveries (signals, callbacks, cancel requests) are written by the API and bump the saga's
//! `wake_seq`, making an unleased saga due at once; a delivery that lands while this driver still
//! holds the lease is caught by the commit itself, which compares `wake_seq` with the value seen
//! at the claim. A cancel request is caught the same way: a commit whose state has not acted on
//! it is refused, so the driver applies the cancel first. A long action attempt in flight does
//! not wait for that: the heartbeat reports cancel requests on held sagas, and the attempt is
//! interrupted (an ambiguous failure, compensated with the rest).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use saga_core::template::TemplateContext;
use saga_core::{Action, Attempt, FailureKind, HistoryEvent, Next, Outcome, Phase, SagaState, SagaStatus, WaitKind};
use saga_store::{CallbackRegister, Claimed, CommitOutcome, LeaseRef, SagaCommit, SagaRecord, RUN_AT_NEVER_MS};
use serde_json::json;
use tokio::sync::watch;
use tracing::Instrument;

use crate::executor::{AttemptContext, AttemptResult};
use crate::metrics_names::{
    SAGA_DURATION_SECONDS, SAGA_LEASE_TAKEOVER_TOTAL, SAGA_RETRY_TOTAL, SAGA_STEP_DURATION_SECONDS, SAGA_TOTAL,
};
use crate::shared::{LeaseState, Shared};

/// How long a saga waits before another try when its definition cannot be loaded.
const DEFINITION_RETRY_MS: i64 = 60_000;

pub(crate) async fn drive(
    shared: Arc<Shared>,
    claimed: Claimed,
    lease: Arc<LeaseState>,
    mut cancelled: watch::Receiver<Option<i64>>,
) {
    let record = &claimed.record;
    let span = tracing::info_span!(
        "saga",
        saga_id = %record.id,
        trace_id = %crate::trace::trace_id(record.id),
        tenant_id = record.tenant_id.as_deref().unwrap_or(""),
        definition = %record.definition,
        token = record.fencing_token,
    );
    let id = record.id;
    drive_inner(&shared, &claimed, &lease, &mut cancelled).instrument(span).await;
    shared.forget_lease(id, claimed.record.fencing_token);
}

async fn drive_inner(
    shared: &Shared,
    claimed: &Claimed,
    lease: &LeaseState,
    cancelled: &mut watch::Receiver<Option<i64>>,
) {
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
            // No definition, so no cancel handling either: commit exactly what was claimed.
            let commit =
                commit_record(shared, claimed, None, &record.state, pending, Some(retry_at), shared.clock.now_ms());
            let _ = shared.committer.commit(commit).await;
            return;
        }
    };
    let mut state: SagaState = record.state.clone();
    // A step a driver before this one may have sent counts as started, in every state written
    // from now on (see `SagaState::adopt`).
    pending.extend(state.adopt(record.fencing_token, shared.clock.now_ms()).events);
    // A cancel requested while no driver held the saga (a pending retry, a wait, not started).
    if let Some(at_ms) = record.cancel_requested_at_ms {
        let wait_before = state.wait.clone();
        pending.extend(state.cancel(&definition, at_ms, shared.clock.now_ms(), false).events);
        if !retire_abandoned_callback(shared, record, &definition, wait_before.as_ref(), &state).await {
            shared.hand_back_unsettled(lease_of(claimed));
            return;
        }
    }
    // The status the store holds: a stop decided here is committed before it is acted on.
    let mut durable_status = record.state.status;
    let mut templates = TemplateContext {
        input: record.input.clone(),
        tenant_id: record.tenant_id.clone(),
        saga_id: record.id.to_string(),
        step_outputs: serde_json::Map::new(),
        vars: shared.config.vars.clone(),
    };
    loop {
        if !lease.usable(shared.clock.now_ms()) {
            tracing::warn!("lease lost or expired; another driver takes this saga over");
            // Expired here, maybe renewed in the store meanwhile: give it up (fenced on the
            // token, so this changes nothing once another driver has claimed the saga).
            shared.hand_back_unsettled(lease_of(claimed));
            return;
        }
        if shared.shutting_down.load(Ordering::SeqCst) {
            hand_back(shared, claimed, &definition, &mut state, &mut pending).await;
            return;
        }
        let wait_before = state.wait.clone();
        pending.extend(state.expire(&definition, shared.clock.now_ms()).events);
        if !retire_abandoned_callback(shared, record, &definition, wait_before.as_ref(), &state).await {
            shared.hand_back_unsettled(lease_of(claimed));
            return;
        }
        // Durable before dependent: a stop decided here (the deadline, a cancel found at the
        // claim) is committed before the first compensation goes out. Sent first, by a driver
        // that then stopped, the compensation of the last succeeded step was followed by the
        // next driver's — which, finding a state still going forward, counted the step after it
        // as possibly sent and compensated that one second: out of order (seed 381139409).
        // Only stops pay this commit; they are rare.
        if state.status != durable_status && matches!(state.next(), Next::RunCompensation { .. }) {
            let events = std::mem::take(&mut pending);
            if commit(shared, claimed, &definition, &mut state, events, None).await.is_none() {
                return;
            }
        }
        let (phase, index, attempt) = match state.next() {
            Next::RunAction { step, attempt } => (Phase::Action, step, attempt),
            Next::RunCompensation { step, attempt } => (Phase::Compensation, step, attempt),
            Next::Terminal => {
                // Settled without running anything (a cancel before the first step, a deadline
                // with on_timeout: fail), or claimed with nothing to run.
                if !state.status.is_terminal() {
                    tracing::error!(status = ?state.status, "claimed a saga with nothing to run");
                }
                let events = std::mem::take(&mut pending);
                if let Some((at, _)) = commit(shared, claimed, &definition, &mut state, events, None).await {
                    if state.status.is_terminal() {
                        finish(shared, claimed, state, at);
                    }
                }
                return;
            }
        };
        let step = &definition.steps[index];
        templates.step_outputs = state.step_outputs();
        let started_ms = shared.clock.now_ms();
        let span = tracing::info_span!("step", step = %step.name, attempt, phase = ?phase);
        let attempt_run = Run { phase, index, attempt };
        let settled =
            settle(shared, claimed, &definition, &mut state, &templates, attempt_run, &mut pending, cancelled)
                .instrument(span)
                .await;
        let now_ms = shared.clock.now_ms();
        // An attempt a cancel interrupted is a failed attempt — ambiguous, the participant may
        // have acted — and the cancel is applied with it, so the step is compensated too.
        let (settled, interrupted_by) = match settled {
            Settled::Interrupted { cancel_at_ms } => {
                let message = "interrupted by a cancel request; the participant may have acted".to_string();
                (Settled::Outcome(Outcome::Failed { kind: FailureKind::Retryable, message }), Some(cancel_at_ms))
            }
            settled => (settled, None),
        };
        let Some((mut events, mut release_until)) = transition_of(
            shared,
            claimed,
            &definition,
            &mut state,
            attempt_run,
            (started_ms, now_ms),
            settled,
            &mut pending,
        ) else {
            return;
        };
        if let Some(cancel_at_ms) = interrupted_by {
            insert_before_end(&mut events, state.cancel(&definition, cancel_at_ms, now_ms, false).events);
            release_until = None;
        }
        // The deadline may have passed while the attempt ran.
        let expired = state.expire(&definition, now_ms);
        if !expired.events.is_empty() {
            events.extend(expired.events);
            release_until = None;
        }
        // Whatever the saga waits for, it is due again at its deadline at the latest (while the
        // deadline still matters).
        let release_until = release_until.map(|at| state.due_at_ms(at));
        let Some((committed_at_ms, released)) =
            commit(shared, claimed, &definition, &mut state, events, release_until).await
        else {
            return;
        };
        durable_status = state.status;
        if let Some(at) = released {
            if at < RUN_AT_NEVER_MS {
                shared.schedule_wake(at);
            }
            return;
        }
        if state.status.is_terminal() {
            finish(shared, claimed, state, committed_at_ms);
            return;
        }
    }
}

/// What a settled attempt means for the saga: its transition's history rows (after `pending`)
/// and when the lease goes back (None: kept), or None when the driver stops here — handed back
/// for another driver, or an engine invariant broken (the lease lets another instance retry).
#[allow(clippy::too_many_arguments)]
fn transition_of(
    shared: &Shared,
    claimed: &Claimed,
    definition: &saga_core::Definition,
    state: &mut SagaState,
    Run { phase, index, attempt }: Run,
    (started_ms, now_ms): (i64, i64),
    settled: Settled,
    pending: &mut Vec<HistoryEvent>,
) -> Option<(Vec<HistoryEvent>, Option<i64>)> {
    let record = &claimed.record;
    let step = &definition.steps[index];
    match settled {
        Settled::Stop | Settled::Interrupted { .. } => {
            shared.hand_back_unsettled(lease_of(claimed));
            None
        }
        Settled::Wait { kind, until_ms } => {
            let transition = match state.begin_wait(definition, kind, started_ms, until_ms) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, "state machine refused a wait");
                    return None;
                }
            };
            let mut events = std::mem::take(pending);
            events.extend(transition.events);
            Some((events, Some(until_ms.unwrap_or(RUN_AT_NEVER_MS))))
        }
        Settled::Deferred { endpoint, retry_after_ms } => {
            let mut events = std::mem::take(pending);
            events.push(HistoryEvent::new(
                "step_deferred",
                Some(&step.name),
                Some(attempt),
                json!({
                    "endpoint": endpoint,
                    "retry_after_ms": retry_after_ms,
                    "until_ms": now_ms.saturating_add(saga_core::duration::signed_ms(retry_after_ms)),
                    "reason": "circuit open",
                }),
                now_ms,
            ));
            Some((events, Some(now_ms.saturating_add(saga_core::duration::signed_ms(retry_after_ms)))))
        }
        Settled::Outcome(outcome) => {
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
            let transition = match state.apply(definition, finished, shared.jitter_sample()) {
                Ok(t) => t,
                Err(e) => {
                    // A broken engine invariant: stop driving; the lease lets another instance retry.
                    tracing::error!(error = %e, "state machine rejected an outcome");
                    return None;
                }
            };
            let mut events = std::mem::take(pending);
            events.extend(transition.events);
            if transition.retry_at_ms.is_some() {
                metrics::counter!(SAGA_RETRY_TOTAL, "definition" => record.definition.clone(), "step" => step.name.clone())
                    .increment(1);
            }
            Some((events, transition.retry_at_ms))
        }
    }
}

/// A cancel or the deadline ended a wait for a callback: retire its token so a late callback
/// gets 404 rather than being accepted and ignored. False when the store failed.
async fn retire_abandoned_callback(
    shared: &Shared,
    record: &SagaRecord,
    definition: &saga_core::Definition,
    before: Option<&saga_core::Wait>,
    state: &SagaState,
) -> bool {
    let Some(wait) = before.filter(|w| w.kind == WaitKind::Callback) else {
        return true;
    };
    if state.wait.is_some() {
        return true;
    }
    let step = &definition.steps[wait.step].name;
    match shared.store.callback_close(record.id, step, wait.attempt, shared.clock.now_ms()).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "retiring an abandoned callback token failed");
            false
        }
    }
}

/// How one step attempt was settled.
enum Settled {
    Outcome(Outcome),
    /// Park the saga (lease released) until something arrives or `until_ms`.
    Wait {
        kind: WaitKind,
        until_ms: Option<i64>,
    },
    /// The endpoint's circuit is open: not attempted.
    Deferred {
        endpoint: String,
        retry_after_ms: u64,
    },
    /// A cancel was requested while the action attempt ran; it was stopped.
    Interrupted {
        cancel_at_ms: i64,
    },
    /// The driver must stop (a store error); the lease will expire and the step run again.
    Stop,
}

/// Which attempt to run.
#[derive(Clone, Copy)]
struct Run {
    phase: Phase,
    index: usize,
    attempt: u32,
}

/// Runs, or settles from the store, one attempt: a signal step takes a buffered signal, an async
/// step that is waiting reads its callback, anything else goes to an executor.
#[allow(clippy::too_many_arguments)]
async fn settle(
    shared: &Shared,
    claimed: &Claimed,
    definition: &saga_core::Definition,
    state: &mut SagaState,
    templates: &TemplateContext,
    run: Run,
    pending: &mut Vec<HistoryEvent>,
    cancelled: &mut watch::Receiver<Option<i64>>,
) -> Settled {
    let Run { phase, index, attempt } = run;
    let record = &claimed.record;
    let step = &definition.steps[index];
    let now_ms = shared.clock.now_ms();
    let waiting = state.wait.as_ref().filter(|w| w.step == index && w.attempt == attempt).cloned();
    let action = match phase {
        Phase::Action => &step.action,
        Phase::Compensation => match &step.compensation {
            Some(action) => action,
            None => {
                tracing::error!(step = %step.name, "state machine asked for a compensation the step lacks");
                return Settled::Stop;
            }
        },
    };
    if let (Phase::Action, Action::Signal(signal)) = (phase, action) {
        let until_ms = waiting.as_ref().map(|wait| wait.until_ms);
        return settle_signal(shared, record, (&step.name, attempt), signal, until_ms, state, pending).await;
    }
    let is_async = matches!(action, Action::Http(http) if http.is_async) && phase == Phase::Action;
    if is_async && waiting.is_some() {
        return settle_callback(shared, record, &step.name, attempt, now_ms).await;
    }
    let mut timeout_ms = step.timeout_ms;
    if phase == Phase::Action {
        if let Some(deadline) = state.deadline_at_ms {
            timeout_ms = timeout_ms.min((deadline - now_ms).max(1) as u64);
        }
    }
    let mut ctx = AttemptContext {
        saga_id: record.id,
        tenant_id: record.tenant_id.clone(),
        step: step.name.clone(),
        phase,
        attempt,
        timeout_ms,
        callback_url: None,
        traceparent: None,
        fencing_token: record.fencing_token,
    };
    if is_async {
        match register_callback(shared, record, step, attempt, now_ms).await {
            Some(url) => ctx.callback_url = Some(url),
            None => return Settled::Stop,
        }
    }
    // Only a forward attempt a cancel would still stop is interrupted: a compensation always
    // runs to its end, and past a pivot (or once acted on) a cancel changes nothing.
    // (The pivot check was missing: a cancel past a pivot interrupted the attempt and left the
    // saga FAILED — found by the simulator, seed 22.)
    let interruptible =
        phase == Phase::Action && state.cancel_requested_at_ms.is_none() && !state.pivot_passed(definition);
    let span = shared.config.tracing.then(|| {
        crate::trace::attempt_span(&crate::trace::AttemptInfo {
            saga_id: record.id,
            definition: &record.definition,
            step: &step.name,
            phase,
            attempt,
            tenant_id: record.tenant_id.as_deref(),
            worker: &shared.config.worker_id,
        })
    });
    ctx.traceparent = span.as_ref().map(|s| s.traceparent.clone());
    let result = if interruptible {
        tokio::select! {
            biased;
            result = shared.executors.run(action, templates, &ctx) => result,
            cancel_at_ms = cancel_requested(cancelled) => {
                if let Some(span) = span {
                    span.end(Some("interrupted by a cancel request"));
                }
                return Settled::Interrupted { cancel_at_ms };
            }
        }
    } else {
        shared.executors.run(action, templates, &ctx).await
    };
    if let Some(span) = span {
        let error = match &result {
            AttemptResult::Finished(Outcome::Failed { message, .. }) => Some(message.as_str()),
            AttemptResult::Deferred { .. } => Some("deferred: the endpoint's circuit is open"),
            _ => None,
        };
        span.end(error);
    }
    match result {
        AttemptResult::Finished(outcome) => Settled::Outcome(outcome),
        AttemptResult::Accepted => Settled::Wait {
            kind: WaitKind::Callback,
            until_ms: step.heartbeat_timeout_ms.map(|t| now_ms.saturating_add(saga_core::duration::signed_ms(t))),
        },
        AttemptResult::Deferred { endpoint, retry_after_ms } => Settled::Deferred { endpoint, retry_after_ms },
    }
}

/// When a cancel request reaches this driver (through the heartbeat); never, if none does.
async fn cancel_requested(cancelled: &mut watch::Receiver<Option<i64>>) -> i64 {
    let requested = cancelled.wait_for(Option::is_some).await.ok().and_then(|at_ms| *at_ms);
    match requested {
        Some(at_ms) => at_ms,
        None => std::future::pending().await,
    }
}

/// A signal step's attempt: the first buffered signal of its name not yet consumed succeeds it
/// (recorded as `signal_received`); with none, it waits — until `until_ms` of a wait already
/// begun, else for the step's timeout — or fails as timed out once that has passed.
async fn settle_signal(
    shared: &Shared,
    record: &SagaRecord,
    (step, attempt): (&str, u32),
    signal: &saga_core::SignalAction,
    waiting_until_ms: Option<Option<i64>>,
    state: &mut SagaState,
    pending: &mut Vec<HistoryEvent>,
) -> Settled {
    let now_ms = shared.clock.now_ms();
    let found = match shared.store.signal_find(record.id, &signal.name, &state.consumed_signals).await {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(error = %e, "reading buffered signals failed");
            return Settled::Stop;
        }
    };
    if let Some(found) = found {
        state.consumed_signals.push(found.id);
        pending.push(HistoryEvent::new(
            "signal_received",
            Some(step),
            Some(attempt),
            json!({"signal": found.name, "signal_id": found.id, "received_at_ms": found.received_at_ms}),
            now_ms,
        ));
        return Settled::Outcome(Outcome::Succeeded(found.payload));
    }
    let until_ms = match waiting_until_ms {
        Some(until_ms) => until_ms,
        None => signal.timeout_ms.map(|t| now_ms.saturating_add(saga_core::duration::signed_ms(t))),
    };
    if until_ms.is_some_and(|until| until <= now_ms) {
        let waited = signal.timeout_ms.map(saga_core::duration::format_ms).unwrap_or_default();
        return Settled::Outcome(Outcome::Failed {
            kind: FailureKind::TimedOut,
            message: format!("signal {:?} did not arrive within {waited}", signal.name),
        });
    }
    Settled::Wait { kind: WaitKind::Signal { name: signal.name.clone() }, until_ms }
}

/// Registers a fresh single-use callback token for an async attempt and returns the URL the
/// participant calls back; None when it could not be stored. Durable before dependent: the token
/// exists before the participant can call back.
async fn register_callback(
    shared: &Shared,
    record: &SagaRecord,
    step: &saga_core::StepDefinition,
    attempt: u32,
    now_ms: i64,
) -> Option<String> {
    let token = callback_token();
    let register = CallbackRegister {
        token_hash: callback_token_hash(&token),
        saga_id: record.id,
        tenant_id: record.tenant_id.clone(),
        step: step.name.clone(),
        attempt,
        heartbeat_timeout_ms: step.heartbeat_timeout_ms.map(saga_core::duration::signed_ms),
        now_ms,
    };
    if let Err(e) = shared.store.callback_register(register).await {
        tracing::error!(error = %e, "registering the callback token failed");
        return None;
    }
    Some(format!("{}/v1/callbacks/{token}", shared.config.public_url.trim_end_matches('/')))
}

/// A parked async step was woken: its callback arrived, its heartbeat lapsed, or neither yet.
async fn settle_callback(shared: &Shared, record: &SagaRecord, step: &str, attempt: u32, now_ms: i64) -> Settled {
    let callback = match shared.store.callback_get(record.id, step, attempt).await {
        Ok(callback) => callback,
        Err(e) => {
            tracing::error!(error = %e, "reading the callback failed");
            return Settled::Stop;
        }
    };
    let Some(callback) = callback else {
        return Settled::Outcome(Outcome::Failed {
            kind: FailureKind::Retryable,
            message: "the callback of this attempt is missing".into(),
        });
    };
    if let Some(result) = callback.result {
        return Settled::Outcome(callback_outcome(&result));
    }
    match callback.deadline_at_ms {
        Some(deadline) if deadline <= now_ms => {
            // The attempt is given up: its token must not complete a later attempt's wait.
            if let Err(e) = shared.store.callback_close(record.id, step, attempt, now_ms).await {
                tracing::error!(error = %e, "retiring the lapsed callback token failed");
                return Settled::Stop;
            }
            Settled::Outcome(Outcome::Failed {
                kind: FailureKind::Retryable,
                message: "no callback or heartbeat before the heartbeat timeout".into(),
            })
        }
        deadline => Settled::Wait { kind: WaitKind::Callback, until_ms: deadline },
    }
}

/// `{"status":"succeeded","output":…}` or `{"status":"failed","error":…,"retryable":…}`
/// (validated by the API before it was stored).
fn callback_outcome(result: &serde_json::Value) -> Outcome {
    if result.get("status").and_then(|s| s.as_str()) == Some("succeeded") {
        return Outcome::Succeeded(result.get("output").cloned().unwrap_or(serde_json::Value::Null));
    }
    let message = result.get("error").and_then(|e| e.as_str()).unwrap_or("participant reported failure");
    let retryable = result.get("retryable").and_then(|r| r.as_bool()).unwrap_or(false);
    Outcome::Failed {
        kind: if retryable { FailureKind::Retryable } else { FailureKind::NonRetryable },
        message: format!("callback: {message}"),
    }
}

/// A single-use callback token: 256 random bits, URL-safe.
fn callback_token() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_256_bits())
}

/// 256 bits from the OS: callback tokens, tenant API tokens, subscription secrets. Without OS
/// randomness, two v4 UUIDs (also OS-random where available).
pub fn random_256_bits() -> [u8; 32] {
    use rand::TryRngCore;
    let mut bytes = [0u8; 32];
    if rand::rngs::OsRng.try_fill_bytes(&mut bytes).is_err() {
        bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    bytes
}

/// How a callback token is stored (the token itself never is).
pub fn callback_token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Commits a transition. `release_until` hands the lease back until then (a retry, a wait, a
/// deferral); None keeps it. A cancel request the state has not acted on yet comes back as
/// [`CommitOutcome::CancelRequested`]: the driver applies it and commits again (a step that was
/// in flight has finished; it is compensated with the rest). Returns the commit time and the
/// release actually committed, or None when the driver must stop (fenced or the store failed).
async fn commit(
    shared: &Shared,
    claimed: &Claimed,
    definition: &saga_core::Definition,
    state: &mut SagaState,
    mut events: Vec<HistoryEvent>,
    mut release_until: Option<i64>,
) -> Option<(i64, Option<i64>)> {
    // A second CancelRequested cannot happen once the state carries the request.
    state.written_by_token = claimed.record.fencing_token;
    for _ in 0..2 {
        state.writer_kept_lease = release_until.is_none() && !state.status.is_terminal();
        let now_ms = shared.clock.now_ms();
        let commit = commit_record(shared, claimed, Some(definition), state, events, release_until, now_ms);
        match shared.committer.commit(commit).await {
            Ok((CommitOutcome::Committed, _)) => return Some((now_ms, release_until)),
            Ok((CommitOutcome::Fenced, _)) => {
                tracing::warn!("commit fenced: another instance owns this saga");
                return None;
            }
            Ok((CommitOutcome::CancelRequested { at_ms }, refused)) => {
                events = refused.events;
                let was_completed = state.status == SagaStatus::Completed;
                let cancel = state.cancel(definition, at_ms, now_ms, true);
                if was_completed && state.status != SagaStatus::Completed {
                    events.retain(|e| e.kind != "saga_completed");
                }
                insert_before_end(&mut events, cancel.events);
                if state.status == SagaStatus::Compensating || state.status.is_terminal() {
                    // Compensation starts now, with this driver.
                    release_until = None;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed; the lease is handed back and the step run again");
                shared.hand_back_unsettled(lease_of(claimed));
                return None;
            }
        }
    }
    tracing::error!("commit refused twice for a cancel request; the lease will expire");
    None
}

/// The one place a saga's commit record is made: fenced on the claim, the state with its new
/// history rows, what the transition means for the saga's tenant and the events it reports
/// (neither without a definition: a saga whose definition cannot be loaded commits only what it
/// was claimed with), and, with `release_until`, the lease handed back until then.
fn commit_record(
    shared: &Shared,
    claimed: &Claimed,
    definition: Option<&saga_core::Definition>,
    state: &SagaState,
    events: Vec<HistoryEvent>,
    release_until: Option<i64>,
    now_ms: i64,
) -> SagaCommit {
    let record = &claimed.record;
    let (tenant_change, outbox) = match definition {
        Some(definition) => (
            shared.hook.as_ref().and_then(|hook| hook.tenant_change(record, definition, state, &events)),
            crate::outbox::events_of(record, definition, state, &events),
        ),
        None => (None, Vec::new()),
    };
    SagaCommit {
        id: record.id,
        tenant_id: record.tenant_id.clone(),
        fencing_token: record.fencing_token,
        state: state.clone(),
        run_at_ms: release_until.unwrap_or(now_ms),
        release_lease: release_until.is_some(),
        events,
        worker_id: shared.config.worker_id.clone(),
        wake_seq_seen: record.wake_seq,
        tenant_change,
        outbox,
        now_ms,
    }
}

fn lease_of(claimed: &Claimed) -> saga_store::LeaseRef {
    saga_store::LeaseRef { id: claimed.record.id, fencing_token: claimed.record.fencing_token }
}

/// Adds `more` to a transition's events, before its terminal event if it has one: a cancel
/// request acted on with the transition came before the end it records, and the terminal event
/// stays the history's last (found by the simulator, seeds 22 and 6656).
fn insert_before_end(events: &mut Vec<HistoryEvent>, more: Vec<HistoryEvent>) {
    let end = events.iter().position(|e| TERMINAL_EVENTS.contains(&e.kind.as_str())).unwrap_or(events.len());
    events.splice(end..end, more);
}

/// The events that end a saga's history.
const TERMINAL_EVENTS: [&str; 3] = ["saga_completed", "saga_compensated", "saga_failed"];

/// At shutdown: keep what is already decided, hand the lease back so another instance resumes.
async fn hand_back(
    shared: &Shared,
    claimed: &Claimed,
    definition: &saga_core::Definition,
    state: &mut SagaState,
    pending: &mut Vec<HistoryEvent>,
) {
    let now_ms = shared.clock.now_ms();
    if !pending.is_empty() {
        state.written_by_token = claimed.record.fencing_token;
        state.writer_kept_lease = false;
        // What the pending transition means for the tenant travels with it, as in every commit
        // (a cancel or deadline applied just before shutdown may end a tenant saga).
        let events = std::mem::take(pending);
        let commit = commit_record(shared, claimed, Some(definition), state, events, Some(now_ms), now_ms);
        // A refused commit (fenced, or a cancel to act on) is fine: the next driver redoes it.
        // A failed one still hands the lease back (found by the simulator, seed 2797).
        match shared.committer.commit(commit).await {
            Ok((CommitOutcome::CancelRequested { .. }, _)) | Err(_) => shared.hand_back_unsettled(lease_of(claimed)),
            Ok(_) => {}
        }
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
    if shared.config.tracing {
        crate::trace::root_span(&crate::trace::RootInfo {
            saga_id: record.id,
            definition: &record.definition,
            tenant_id: record.tenant_id.as_deref(),
            worker: &shared.config.worker_id,
            status: state.status.as_str(),
            created_at_ms: record.created_at_ms,
            ended_at_ms: committed_at_ms,
        });
    }
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
