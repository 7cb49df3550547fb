//! One step attempt's lifecycle, a type per stage, in the order a driver takes it:
//!
//! 1. [`StepAttempt`] — picked: the step, phase and attempt number the state machine asks for.
//! 2. [`Executed`] — run by an executor, or settled from the store (a signal step takes a
//!    buffered signal, a parked async step reads its callback); how it went is an [`Execution`].
//! 3. [`Settled`] — what the attempt means for the saga: its history rows and when the lease
//!    goes back.
//! 4. committed — by [`Drive::commit`](super::Drive), the one place commit records are made.

use std::ops::ControlFlow::{self, Break, Continue};

use saga_core::{
    Action, Attempt, FailureKind, HistoryEvent, Next, Outcome, Phase, SagaState, StepDefinition, WaitKind,
};
use saga_store::RUN_AT_NEVER_MS;
use serde_json::json;
use tokio::sync::watch;
use tracing::Instrument;

use super::{Condition, Drive};
use crate::executor::{AttemptContext, AttemptResult};
use crate::metrics_names::{SAGA_RETRY_TOTAL, SAGA_STEP_DURATION_SECONDS};

/// A step attempt picked to run.
#[derive(Clone, Copy)]
pub(super) struct StepAttempt {
    phase: Phase,
    /// The step's index in the definition.
    index: usize,
    attempt: u32,
    started_ms: i64,
}

/// How running an attempt went.
pub(super) enum Execution {
    Outcome(Outcome),
    /// Park the saga (lease released) until something arrives or `until_ms`.
    Wait {
        kind: WaitKind,
        until_ms: Option<i64>,
    },
    /// The step's `when:` rendered false (`rendered`): skipped, never run.
    Skipped {
        rendered: serde_json::Value,
    },
    /// The endpoint's circuit is open: not attempted.
    Deferred {
        endpoint: String,
        retry_after_ms: u64,
    },
    /// A child saga step's compensation waits for the child to finish compensating: parked
    /// (lease released) until the child wakes the saga, or `until_ms` at the latest.
    AwaitChild {
        saga_id: uuid::Uuid,
        until_ms: i64,
    },
    /// A cancel was requested while the action attempt ran; it was stopped.
    Interrupted {
        cancel_at_ms: i64,
    },
    /// The driver must stop (a store error); the lease will expire and the step run again.
    Stop,
}

/// An attempt that has run.
pub(super) struct Executed {
    attempt: StepAttempt,
    execution: Execution,
    finished_ms: i64,
}

/// What a settled attempt means for the saga: history rows (after those pending) and when the
/// lease goes back (None: kept).
pub(super) struct Settled {
    pub events: Vec<HistoryEvent>,
    pub release_until: Option<i64>,
}

impl StepAttempt {
    /// The attempt the state machine asks for next; None when nothing is left to run.
    pub fn next(state: &SagaState, now_ms: i64) -> Option<StepAttempt> {
        let (phase, index, attempt) = match state.next() {
            Next::RunAction { step, attempt } => (Phase::Action, step, attempt),
            Next::RunCompensation { step, attempt } => (Phase::Compensation, step, attempt),
            Next::Terminal => return None,
        };
        Some(StepAttempt { phase, index, attempt, started_ms: now_ms })
    }

    /// Runs the attempt, or settles it from the store: a signal step takes a buffered signal, an
    /// async step that is waiting reads its callback, anything else goes to an executor.
    pub async fn execute(self, drive: &mut Drive<'_>, cancelled: &mut watch::Receiver<Option<i64>>) -> Executed {
        let step = &drive.definition.steps[self.index];
        drive.templates.step_outputs = drive.step_outputs();
        let span = tracing::info_span!("step", step = %step.name, attempt = self.attempt, phase = ?self.phase);
        let execution = self.execution(drive, step, cancelled).instrument(span).await;
        Executed { attempt: self, execution, finished_ms: drive.shared.clock.now_ms() }
    }

    async fn execution(
        self,
        drive: &mut Drive<'_>,
        step: &StepDefinition,
        cancelled: &mut watch::Receiver<Option<i64>>,
    ) -> Execution {
        let Some(action) = self.action(step) else {
            tracing::error!(step = %step.name, "state machine asked for a compensation the step lacks");
            return Execution::Stop;
        };
        let waiting = drive.state.wait.as_ref().filter(|w| w.step == self.index && w.attempt == self.attempt);
        let waiting_until = waiting.map(|wait| wait.until_ms);
        let forward = self.phase == Phase::Action;
        // A condition is looked at before the step's first attempt (also when only assumed
        // started: false, no driver before could have sent it).
        if forward && self.attempt == 1 && waiting_until.is_none() {
            match drive.condition(step) {
                Condition::Holds => {}
                Condition::False(rendered) => return Execution::Skipped { rendered },
                Condition::Broken(message) => {
                    return Execution::Outcome(Outcome::Failed { kind: FailureKind::NonRetryable, message });
                }
            }
        }
        if let Action::Group(group) = action {
            return match forward {
                true => drive.take_branches(self.index, step, group).await,
                false => drive.compensate_branches(self.index, step, group).await,
            };
        }
        if let Action::Saga(child) = action {
            return match forward {
                true => drive.take_child(self.index, &step.name, child).await,
                false => drive.compensate_child(self.index, &step.name, child).await,
            };
        }
        if let (true, Action::Sleep(sleep)) = (forward, action) {
            return drive.take_timer(self.started_ms, sleep, waiting_until);
        }
        if let (true, Action::Signal(signal)) = (forward, action) {
            return drive.take_signal((&step.name, self.attempt), signal, waiting_until).await;
        }
        let is_async = forward && matches!(action, Action::Http(http) if http.is_async);
        if is_async && waiting_until.is_some() {
            return drive.read_callback(&step.name, self.attempt).await;
        }
        let mut context = self.context(drive, step);
        if is_async {
            match drive.register_callback(step, self.attempt).await {
                Some(url) => context.callback_url = Some(url),
                None => return Execution::Stop,
            }
        }
        // Only a forward attempt a cancel would still stop is interrupted: a compensation always
        // runs to its end, and past a pivot (or once acted on) a cancel changes nothing.
        // (The pivot check was missing: a cancel past a pivot interrupted the attempt and left
        // the saga FAILED — found by the simulator, seed 22.)
        let interruptible =
            forward && drive.state.cancel_requested_at_ms.is_none() && !drive.state.pivot_passed(drive.definition);
        self.call(drive, step, action, context, interruptible.then_some(cancelled)).await
    }

    fn action(self, step: &StepDefinition) -> Option<&Action> {
        match self.phase {
            Phase::Action => Some(&step.action),
            Phase::Compensation => step.compensation_action(),
        }
    }

    /// What the executor is told: the attempt, and its timeout capped by the saga's deadline.
    fn context(self, drive: &Drive<'_>, step: &StepDefinition) -> AttemptContext {
        let record = &drive.claimed.record;
        let mut timeout_ms = step.timeout_ms;
        if let (Phase::Action, Some(deadline)) = (self.phase, drive.state.deadline_at_ms) {
            timeout_ms = timeout_ms.min((deadline - self.started_ms).max(1) as u64);
        }
        AttemptContext {
            saga_id: record.id,
            tenant_id: record.tenant_id.clone(),
            step: step.name.clone(),
            phase: self.phase,
            attempt: self.attempt,
            timeout_ms,
            callback_url: None,
            traceparent: None,
            fencing_token: record.fencing_token,
        }
    }

    /// Hands the attempt to its executor, in a trace span of its own when tracing is on; with
    /// `cancelled`, a cancel request stops it.
    async fn call(
        self,
        drive: &Drive<'_>,
        step: &StepDefinition,
        action: &Action,
        mut context: AttemptContext,
        cancelled: Option<&mut watch::Receiver<Option<i64>>>,
    ) -> Execution {
        let shared = drive.shared;
        let record = &drive.claimed.record;
        let span = shared.config.tracing.then(|| {
            crate::trace::attempt_span(&crate::trace::AttemptInfo {
                saga_id: record.id,
                definition: &record.definition,
                step: &step.name,
                phase: self.phase,
                attempt: self.attempt,
                tenant_id: record.tenant_id.as_deref(),
                worker: &shared.config.worker_id,
            })
        });
        context.traceparent = span.as_ref().map(|s| s.traceparent.clone());
        let run = shared.executors.run(action, &drive.templates, &context);
        let result = match cancelled {
            Some(cancelled) => tokio::select! {
                biased;
                result = run => result,
                cancel_at_ms = cancel_requested(cancelled) => {
                    if let Some(span) = span {
                        span.end(Some("interrupted by a cancel request"));
                    }
                    return Execution::Interrupted { cancel_at_ms };
                }
            },
            None => run.await,
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
            AttemptResult::Finished(outcome) => Execution::Outcome(outcome),
            AttemptResult::Accepted => Execution::Wait {
                kind: WaitKind::Callback,
                until_ms: step
                    .heartbeat_timeout_ms
                    .map(|t| self.started_ms.saturating_add(saga_core::duration::signed_ms(t))),
            },
            AttemptResult::Deferred { endpoint, retry_after_ms } => Execution::Deferred { endpoint, retry_after_ms },
        }
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

impl Executed {
    /// What the attempt means for the saga, with what happened meanwhile: a cancel that
    /// interrupted it (applied with it, so the step is compensated too) and a deadline that
    /// passed while it ran. Break when the driver stops here — handed back for another driver,
    /// or an engine invariant broken (the lease lets another instance retry).
    pub fn settle(self, drive: &mut Drive<'_>) -> ControlFlow<(), Settled> {
        let now_ms = self.finished_ms;
        // An attempt a cancel interrupted is a failed attempt — ambiguous, the participant may
        // have acted.
        let (execution, interrupted_by) = match self.execution {
            Execution::Interrupted { cancel_at_ms } => {
                let message = "interrupted by a cancel request; the participant may have acted".to_string();
                (Execution::Outcome(Outcome::Failed { kind: FailureKind::Retryable, message }), Some(cancel_at_ms))
            }
            execution => (execution, None),
        };
        let Settled { mut events, mut release_until } = self.attempt.transition(drive, execution, now_ms)?;
        if let Some(cancel_at_ms) = interrupted_by {
            let cancel = drive.state.cancel(drive.definition, cancel_at_ms, now_ms, false);
            super::commit::insert_before_end(&mut events, cancel.events);
            release_until = None;
        }
        let expired = drive.state.expire(drive.definition, now_ms);
        if !expired.events.is_empty() {
            events.extend(expired.events);
            release_until = None;
        }
        // Whatever the saga waits for, it is due again at its deadline at the latest (while the
        // deadline still matters).
        let release_until = release_until.map(|at| drive.state.due_at_ms(at));
        Continue(Settled { events, release_until })
    }
}

impl StepAttempt {
    /// The state machine's transition for how the attempt went, after the pending rows.
    fn transition(self, drive: &mut Drive<'_>, execution: Execution, now_ms: i64) -> ControlFlow<(), Settled> {
        let StepAttempt { phase, index, attempt, started_ms } = self;
        let step = &drive.definition.steps[index];
        let (transition, release_until) = match execution {
            Execution::Stop | Execution::Interrupted { .. } => return drive.let_go(),
            Execution::Wait { kind, until_ms } => {
                match drive.state.begin_wait(drive.definition, kind, started_ms, until_ms) {
                    Ok(t) => (t.events, Some(until_ms.unwrap_or(RUN_AT_NEVER_MS))),
                    Err(e) => {
                        tracing::error!(error = %e, "state machine refused a wait");
                        return Break(());
                    }
                }
            }
            Execution::Skipped { rendered } => {
                match drive.state.skip_by_condition(drive.definition, rendered, now_ms) {
                    Ok(t) => (t.events, None),
                    Err(e) => {
                        tracing::error!(error = %e, "state machine refused a skip");
                        return Break(());
                    }
                }
            }
            Execution::Deferred { endpoint, retry_after_ms } => {
                let until_ms = now_ms.saturating_add(saga_core::duration::signed_ms(retry_after_ms));
                let deferred = HistoryEvent::new(
                    "step_deferred",
                    Some(&step.name),
                    Some(attempt),
                    json!({"endpoint": endpoint, "retry_after_ms": retry_after_ms, "until_ms": until_ms, "reason": "circuit open"}),
                    now_ms,
                );
                (vec![deferred], Some(until_ms))
            }
            Execution::AwaitChild { saga_id, until_ms } => {
                let waiting = HistoryEvent::new(
                    "step_waiting",
                    Some(&step.name),
                    Some(attempt),
                    json!({"phase": "compensation", "child_saga_id": saga_id, "until_ms": until_ms}),
                    now_ms,
                );
                (vec![waiting], Some(until_ms))
            }
            Execution::Outcome(outcome) => {
                self.record_outcome(drive, step, &outcome, now_ms);
                let finished =
                    Attempt { phase, step: index, attempt, outcome, started_at_ms: started_ms, finished_at_ms: now_ms };
                match drive.state.apply(drive.definition, finished, drive.shared.jitter_sample()) {
                    Ok(t) => {
                        if t.retry_at_ms.is_some() {
                            let definition = drive.claimed.record.definition.clone();
                            metrics::counter!(SAGA_RETRY_TOTAL, "definition" => definition, "step" => step.name.clone())
                                .increment(1);
                        }
                        (t.events, t.retry_at_ms)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "state machine rejected an outcome");
                        return Break(());
                    }
                }
            }
        };
        let mut events = std::mem::take(&mut drive.pending);
        events.extend(transition);
        Continue(Settled { events, release_until })
    }

    /// The attempt's duration histogram, and its failure in the log.
    fn record_outcome(self, drive: &Drive<'_>, step: &StepDefinition, outcome: &Outcome, now_ms: i64) {
        let outcome_label = match (outcome, self.phase) {
            (Outcome::Succeeded(_), Phase::Action) => "succeeded",
            (Outcome::Succeeded(_), Phase::Compensation) => "compensated",
            (Outcome::Failed { .. }, Phase::Action) => "failed",
            (Outcome::Failed { .. }, Phase::Compensation) => "compensation_failed",
        };
        let definition = drive.claimed.record.definition.clone();
        metrics::histogram!(SAGA_STEP_DURATION_SECONDS, "definition" => definition, "step" => step.name.clone(), "outcome" => outcome_label)
            .record((now_ms - self.started_ms).max(0) as f64 / 1000.0);
        if let Outcome::Failed { message, kind } = outcome {
            tracing::info!(step = %step.name, attempt = self.attempt, ?kind, %message, "attempt failed");
        }
    }
}
