//! The saga/step state machine, as pure functions over [`SagaState`].
//!
//! Design note. A driver asks [`SagaState::next`] what to run, runs it (outside this crate), and
//! feeds the result to [`SagaState::apply`], which mutates the state and returns the history
//! events and an optional wake-up time (a retry's due time). The driver commits the new state and
//! those events in one transaction before it runs anything that depends on them.
//!
//! Compensation covers exactly what may have happened: every `SUCCEEDED` step plus the failing
//! step when its failure was *ambiguous* (retryable errors that ran out, timeouts, crashes). A
//! *definite* failure (the participant says it did nothing) is not compensated; steps never
//! attempted become `SKIPPED`. Compensations run from the highest index down, and a step that is
//! `COMPENSATED` never becomes eligible again, so nothing is compensated twice. Once a `pivot`
//! step has succeeded, failures leave the saga `FAILED` for an operator instead of compensating;
//! so does the failure of a step marked `on_failure: fail` (a cancel or the deadline still
//! compensates it).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::backoff::retry_delay_ms;
use crate::definition::{Definition, OnFailure, OnTimeout};

/// Saga status (docs/api.md, "Sagas").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaStatus {
    Pending,
    Executing,
    Completed,
    Compensating,
    Compensated,
    Failed,
}

impl SagaStatus {
    /// Every status, going forward first.
    pub const ALL: &'static [SagaStatus] = &[
        SagaStatus::Pending,
        SagaStatus::Executing,
        SagaStatus::Compensating,
        SagaStatus::Completed,
        SagaStatus::Compensated,
        SagaStatus::Failed,
    ];

    /// Completed, compensated, or failed (awaiting an operator): no driver runs it.
    pub fn is_terminal(self) -> bool {
        matches!(self, SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Pending => "PENDING",
            SagaStatus::Executing => "EXECUTING",
            SagaStatus::Completed => "COMPLETED",
            SagaStatus::Compensating => "COMPENSATING",
            SagaStatus::Compensated => "COMPENSATED",
            SagaStatus::Failed => "FAILED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| s.as_str() == text)
    }
}

/// Step status (docs/api.md, "Sagas").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepStatus {
    Pending,
    Executing,
    Succeeded,
    Failed,
    Compensating,
    Compensated,
    CompensationFailed,
    Skipped,
}

/// One step's progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub name: String,
    pub status: StepStatus,
    pub attempts: u32,
    pub compensation_attempts: u32,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub compensated_at_ms: Option<i64>,
    /// The step failed in a way that may have left effects; it must be compensated.
    #[serde(default)]
    pub ambiguous: bool,
    /// `SKIPPED` because its `when:` rendered false: done, for going forward.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub condition_false: bool,
    /// How many times an operator's retry resumed the saga at this step: a child saga step or
    /// group then starts its failed children afresh, under ids of this generation.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub generation: u32,
}

fn is_zero_u32(value: &u32) -> bool {
    *value == 0
}

impl StepState {
    /// Nothing more to do going forward: it succeeded, or its `when:` skipped it.
    pub fn done_forward(&self) -> bool {
        self.status == StepStatus::Succeeded || (self.status == StepStatus::Skipped && self.condition_false)
    }

    fn needs_compensation(&self) -> bool {
        match self.status {
            StepStatus::Succeeded | StepStatus::Compensating => true,
            StepStatus::Failed => self.ambiguous && !crate::bugs::active(crate::bugs::Bug::SkipAmbiguousCompensation),
            _ => false,
        }
    }
}

/// Why a saga stopped going forward (docs/api.md, "Sagas": `error.kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NonRetryable,
    RetriesExhausted,
    Timeout,
    Cancelled,
    CompensationFailed,
}

/// `{step, kind, message}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaError {
    pub step: Option<String>,
    pub kind: ErrorKind,
    pub message: String,
}

/// The whole mutable state of one saga.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaState {
    pub status: SagaStatus,
    pub steps: Vec<StepState>,
    pub error: Option<SagaError>,
    /// The forward failure that started compensation, kept while a compensation failure shows.
    #[serde(default)]
    pub cause: Option<SagaError>,
    /// The step attempt the saga is parked on (a signal, or an async step's callback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Wait>,
    /// The saga's deadline (`timeout` in the definition), from its creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at_ms: Option<i64>,
    /// When a cancel was requested, once a driver has acted on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested_at_ms: Option<i64>,
    /// Buffered signals already used as a step's output (their store ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumed_signals: Vec<i64>,
    /// The fencing token of the driver whose commit wrote this state (0 before any). A driver
    /// holding a token more than one above it was preceded by one that stopped without writing
    /// anything, which may have sent the next action first (see
    /// [`Self::adopt`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub written_by_token: i64,
    /// The driver that wrote this state kept the saga to run its next step: that step may have
    /// been sent before the driver stopped, with no result written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub writer_kept_lease: bool,
    /// Set on a child saga: the parent saga and step that started it (woken when it ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentLink>,
}

/// Which saga step started a child saga, and how deep it nests (a top-level saga's child is 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParentLink {
    pub saga_id: String,
    pub step: String,
    pub depth: u32,
    /// Set on a branch of a `parallel` or `for_each` group: the child runs that branch of its
    /// parent's definition (same name and version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<BranchLink>,
}

/// Which branch of which group a branch saga runs, and what its templates see of its parent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BranchLink {
    /// The group's index among its parent definition's steps.
    pub group: usize,
    /// The branch (`parallel`) or item (`for_each`) index.
    pub index: usize,
    /// A `for_each` item: `{{ item }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<Value>,
    /// The parent's step outputs when the branch started: `{{ steps.<name>.output }}`.
    #[serde(default)]
    pub outputs: Map<String, Value>,
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

/// A step attempt waiting for something outside the engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Wait {
    pub step: usize,
    pub attempt: u32,
    pub kind: WaitKind,
    pub since_ms: i64,
    /// When the wait gives up (signal timeout, first heartbeat deadline), if ever.
    pub until_ms: Option<i64>,
}

/// What a parked step waits for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum WaitKind {
    /// A named signal; its payload becomes the step's output.
    Signal { name: String },
    /// The callback of an async participant that answered 202.
    Callback,
    /// A durable timer (`sleep`): the step succeeds once the wait's `until_ms` has come.
    Timer,
    /// A child saga (`action: saga`): the step ends as the child ends. `until_ms` is only when
    /// the parent looks again (the child's end wakes it sooner).
    Child { saga_id: String },
    /// A `parallel` or `for_each` group: its `total` branches run as child sagas, and the step
    /// ends when they have (each branch's end wakes the saga; `until_ms` is only a look again).
    Branches { total: u32 },
}

/// Forward action or compensation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Action,
    Compensation,
}

/// How an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Try again with the same idempotency key; ambiguous once attempts run out.
    Retryable,
    /// A definite failure: the participant did nothing (for a compensation: it refused).
    NonRetryable,
    /// A wait that expired (a signal that never came): definite, error kind `timeout`.
    TimedOut,
    /// Final, but it may have left effects: not tried again, and compensated (a child saga that
    /// ended `FAILED`, awaiting an operator).
    Ambiguous,
}

/// The result of one attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Succeeded(Value),
    Failed { kind: FailureKind, message: String },
}

/// One finished attempt, as reported by a driver.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub phase: Phase,
    pub step: usize,
    pub attempt: u32,
    pub outcome: Outcome,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
}

/// What the driver should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    RunAction {
        step: usize,
        attempt: u32,
    },
    RunCompensation {
        step: usize,
        attempt: u32,
    },
    /// Nothing more to run: the saga is terminal.
    Terminal,
}

/// One history entry produced by a transition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub kind: String,
    pub step: Option<String>,
    pub attempt: Option<u32>,
    pub data: Value,
    pub at_ms: i64,
}

impl HistoryEvent {
    pub fn new(kind: &str, step: Option<&str>, attempt: Option<u32>, data: Value, at_ms: i64) -> Self {
        HistoryEvent { kind: kind.to_string(), step: step.map(str::to_string), attempt, data, at_ms }
    }
}

/// What one call to [`SagaState::apply`] produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transition {
    pub events: Vec<HistoryEvent>,
    /// Set when the next attempt must wait (a scheduled retry): the saga is due again then.
    pub retry_at_ms: Option<i64>,
}

/// An attempt result that does not fit the state: a driver bug or a stale driver.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MachineError {
    #[error("step {step} {phase:?} attempt {attempt} is not what the saga expects next ({expected:?})")]
    UnexpectedOutcome { step: usize, phase: Phase, attempt: u32, expected: Next },
    #[error("saga is {0:?}; only FAILED sagas can be retried")]
    NotRetryable(SagaStatus),
    #[error("saga state does not match its definition ({0} steps in state, {1} in definition)")]
    ShapeMismatch(usize, usize),
    #[error("saga is {0:?}; only a saga going forward can wait")]
    NotWaitable(SagaStatus),
    #[error("saga is {0:?}; only a COMPLETED saga that passed no pivot can be compensated afterwards")]
    NotCompensable(SagaStatus),
}

/// Progress shown to users.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub completed_steps: usize,
    pub total_steps: usize,
    pub current_step: Option<String>,
    pub percent: u32,
}

/// Records a failed attempt and, when the policy allows another, schedules it. Returns the
/// due time of the next attempt, or None when the failure is final.
#[allow(clippy::too_many_arguments)]
fn record_failure(
    events: &mut Vec<HistoryEvent>,
    policy: &crate::definition::RetryPolicy,
    step: &str,
    phase: &str,
    attempt: u32,
    kind: FailureKind,
    message: &str,
    now_ms: i64,
    jitter_sample: f64,
) -> Option<i64> {
    let retryable = kind == FailureKind::Retryable;
    events.push(HistoryEvent::new(
        "step_failed",
        Some(step),
        Some(attempt),
        json!({"phase": phase, "retryable": retryable, "message": message}),
        now_ms,
    ));
    if !retryable || attempt >= policy.max_attempts {
        return None;
    }
    let delay_ms = retry_delay_ms(policy, attempt, jitter_sample);
    let due_ms = now_ms.saturating_add(crate::duration::signed_ms(delay_ms));
    events.push(HistoryEvent::new(
        "step_retry_scheduled",
        Some(step),
        Some(attempt + 1),
        json!({"phase": phase, "delay_ms": delay_ms, "due_at_ms": due_ms}),
        now_ms,
    ));
    Some(due_ms)
}

impl SagaState {
    /// A new saga: `PENDING`, every step `PENDING`.
    pub fn new(definition: &Definition) -> Self {
        let steps = definition
            .steps
            .iter()
            .map(|s| StepState {
                name: s.name.clone(),
                status: StepStatus::Pending,
                attempts: 0,
                compensation_attempts: 0,
                output: None,
                error: None,
                started_at_ms: None,
                finished_at_ms: None,
                compensated_at_ms: None,
                ambiguous: false,
                condition_false: false,
                generation: 0,
            })
            .collect();
        SagaState {
            status: SagaStatus::Pending,
            steps,
            error: None,
            cause: None,
            wait: None,
            deadline_at_ms: None,
            cancel_requested_at_ms: None,
            consumed_signals: Vec::new(),
            written_by_token: 0,
            writer_kept_lease: false,
            parent: None,
        }
    }

    /// A new saga created at `now_ms`, with its deadline when the definition has a `timeout`.
    pub fn started(definition: &Definition, now_ms: i64) -> Self {
        let mut state = SagaState::new(definition);
        state.deadline_at_ms = definition.timeout_ms.map(|t| now_ms.saturating_add(crate::duration::signed_ms(t)));
        state
    }

    /// What to run next.
    pub fn next(&self) -> Next {
        match self.status {
            SagaStatus::Pending | SagaStatus::Executing => match self.steps.iter().position(|s| !s.done_forward()) {
                Some(i) => Next::RunAction { step: i, attempt: self.steps[i].attempts + 1 },
                None => Next::Terminal,
            },
            SagaStatus::Compensating => match self.steps.iter().rposition(StepState::needs_compensation) {
                Some(i) => Next::RunCompensation { step: i, attempt: self.steps[i].compensation_attempts + 1 },
                None => Next::Terminal,
            },
            _ => Next::Terminal,
        }
    }

    /// The output of a completed saga: `{step: output}`.
    pub fn output(&self) -> Option<Value> {
        if self.status != SagaStatus::Completed {
            return None;
        }
        let map: Map<String, Value> =
            self.steps.iter().map(|s| (s.name.clone(), s.output.clone().unwrap_or(Value::Null))).collect();
        Some(Value::Object(map))
    }

    /// Step outputs available to templates.
    pub fn step_outputs(&self) -> Map<String, Value> {
        self.steps.iter().filter_map(|s| s.output.clone().map(|o| (s.name.clone(), o))).collect()
    }

    /// Progress for users.
    pub fn progress(&self) -> Progress {
        let total_steps = self.steps.len();
        let completed_steps = self.steps.iter().filter(|s| s.done_forward()).count();
        let current_step = match self.next() {
            Next::RunAction { step, .. } | Next::RunCompensation { step, .. } => Some(self.steps[step].name.clone()),
            Next::Terminal => None,
        };
        let percent = match self.status {
            SagaStatus::Completed => 100,
            _ if total_steps == 0 => 0,
            _ => (completed_steps * 100 / total_steps) as u32,
        };
        Progress { completed_steps, total_steps, current_step, percent }
    }

    /// Applies the result of one attempt; `jitter_sample` is a uniform draw in `[0, 1)` for the
    /// retry backoff.
    pub fn apply(
        &mut self,
        definition: &Definition,
        attempt: Attempt,
        jitter_sample: f64,
    ) -> Result<Transition, MachineError> {
        let (phase, step, attempt_number) = (attempt.phase, attempt.step, attempt.attempt);
        if self.steps.len() != definition.steps.len() {
            return Err(MachineError::ShapeMismatch(self.steps.len(), definition.steps.len()));
        }
        let expected = self.next();
        let matches = match (phase, expected) {
            (Phase::Action, Next::RunAction { step: s, attempt: a }) => s == step && a == attempt_number,
            (Phase::Compensation, Next::RunCompensation { step: s, attempt: a }) => s == step && a == attempt_number,
            _ => false,
        };
        if !matches {
            return Err(MachineError::UnexpectedOutcome { step, phase, attempt: attempt_number, expected });
        }
        let now_ms = attempt.finished_at_ms;
        let mut transition = Transition::default();
        match phase {
            Phase::Action => self.apply_action(definition, attempt, jitter_sample, &mut transition),
            Phase::Compensation => self.apply_compensation(definition, attempt, jitter_sample, &mut transition),
        }
        self.advance(definition, now_ms, &mut transition.events);
        Ok(transition)
    }

    fn apply_action(
        &mut self,
        definition: &Definition,
        finished: Attempt,
        jitter_sample: f64,
        transition: &mut Transition,
    ) {
        let Attempt { step: index, attempt, outcome, started_at_ms, finished_at_ms: now_ms, .. } = finished;
        let name = self.steps[index].name.clone();
        let events = &mut transition.events;
        if self.status == SagaStatus::Pending {
            self.status = SagaStatus::Executing;
        }
        let resumed = self.wait.take().is_some_and(|w| w.step == index && w.attempt == attempt);
        let step = &mut self.steps[index];
        if step.status == StepStatus::Pending {
            step.started_at_ms = Some(started_at_ms);
        }
        step.status = StepStatus::Executing;
        step.attempts = attempt;
        if !resumed {
            events.push(HistoryEvent::new(
                "step_started",
                Some(&name),
                Some(attempt),
                json!({"phase": "action"}),
                started_at_ms,
            ));
        }
        match outcome {
            Outcome::Succeeded(output) => {
                step.status = StepStatus::Succeeded;
                step.output = Some(output);
                step.error = None;
                step.finished_at_ms = Some(now_ms);
                events.push(HistoryEvent::new(
                    "step_succeeded",
                    Some(&name),
                    Some(attempt),
                    json!({"duration_ms": now_ms - started_at_ms}),
                    now_ms,
                ));
            }
            Outcome::Failed { kind, message } => {
                step.error = Some(message.clone());
                let ambiguous = matches!(kind, FailureKind::Retryable | FailureKind::Ambiguous);
                let policy = &definition.steps[index].retry;
                let retry =
                    record_failure(events, policy, &name, "action", attempt, kind, &message, now_ms, jitter_sample);
                if let Some(due_ms) = retry {
                    transition.retry_at_ms = Some(due_ms);
                } else {
                    let error_kind = match kind {
                        FailureKind::Retryable => ErrorKind::RetriesExhausted,
                        FailureKind::NonRetryable | FailureKind::Ambiguous => ErrorKind::NonRetryable,
                        FailureKind::TimedOut => ErrorKind::Timeout,
                    };
                    self.fail_forward(definition, index, error_kind, message, ambiguous, now_ms, events);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fail_forward(
        &mut self,
        definition: &Definition,
        index: usize,
        kind: ErrorKind,
        message: String,
        ambiguous: bool,
        now_ms: i64,
        events: &mut Vec<HistoryEvent>,
    ) {
        let step = &mut self.steps[index];
        step.status = StepStatus::Failed;
        step.ambiguous = ambiguous;
        step.finished_at_ms = Some(now_ms);
        for later in &mut self.steps[index + 1..] {
            if later.status == StepStatus::Pending {
                later.status = StepStatus::Skipped;
            }
        }
        let error = SagaError { step: Some(self.steps[index].name.clone()), kind, message };
        let pivot_passed = self.pivot_passed(definition);
        let fails_forward = definition.steps[index].on_failure == OnFailure::Fail;
        if pivot_passed || fails_forward {
            self.status = SagaStatus::Failed;
            let data = if pivot_passed {
                json!({"error": error, "pivot_passed": true})
            } else {
                json!({"error": error, "on_failure": "fail"})
            };
            events.push(HistoryEvent::new("saga_failed", error.step.as_deref(), None, data, now_ms));
            self.error = Some(error);
        } else {
            self.status = SagaStatus::Compensating;
            self.cause = Some(error.clone());
            self.error = Some(error);
        }
    }

    fn apply_compensation(
        &mut self,
        definition: &Definition,
        finished: Attempt,
        jitter_sample: f64,
        transition: &mut Transition,
    ) {
        let Attempt { step: index, attempt, outcome, started_at_ms, finished_at_ms: now_ms, .. } = finished;
        let name = self.steps[index].name.clone();
        let events = &mut transition.events;
        let step = &mut self.steps[index];
        if step.status != StepStatus::Compensating {
            step.status = StepStatus::Compensating;
            events.push(HistoryEvent::new(
                "compensation_started",
                Some(&name),
                Some(attempt),
                Value::Null,
                started_at_ms,
            ));
        }
        step.compensation_attempts = attempt;
        match outcome {
            Outcome::Succeeded(_) => {
                step.status = StepStatus::Compensated;
                step.compensated_at_ms = Some(now_ms);
                events.push(HistoryEvent::new(
                    "step_compensated",
                    Some(&name),
                    Some(attempt),
                    json!({"duration_ms": now_ms - started_at_ms}),
                    now_ms,
                ));
            }
            Outcome::Failed { kind, message } => {
                let policy = &definition.steps[index].compensation_retry;
                let retry = record_failure(
                    events,
                    policy,
                    &name,
                    "compensation",
                    attempt,
                    kind,
                    &message,
                    now_ms,
                    jitter_sample,
                );
                if let Some(due_ms) = retry {
                    transition.retry_at_ms = Some(due_ms);
                } else {
                    step.status = StepStatus::CompensationFailed;
                    step.error = Some(message.clone());
                    let error = SagaError { step: Some(name.clone()), kind: ErrorKind::CompensationFailed, message };
                    events.push(HistoryEvent::new(
                        "compensation_failed",
                        Some(&name),
                        Some(attempt),
                        json!({"error": error}),
                        now_ms,
                    ));
                    events.push(HistoryEvent::new("saga_failed", Some(&name), None, json!({"error": error}), now_ms));
                    self.status = SagaStatus::Failed;
                    self.error = Some(error);
                }
            }
        }
    }

    /// Settles everything that needs no I/O: completion, compensations without an action, and
    /// the end of compensation.
    fn advance(&mut self, definition: &Definition, now_ms: i64, events: &mut Vec<HistoryEvent>) {
        loop {
            match self.next() {
                Next::Terminal if self.status == SagaStatus::Executing || self.status == SagaStatus::Pending => {
                    self.status = SagaStatus::Completed;
                    self.error = None;
                    events.push(HistoryEvent::new("saga_completed", None, None, Value::Null, now_ms));
                    return;
                }
                Next::Terminal if self.status == SagaStatus::Compensating => {
                    self.status = SagaStatus::Compensated;
                    self.error = self.cause.clone();
                    events.push(HistoryEvent::new(
                        "saga_compensated",
                        None,
                        None,
                        json!({"error": self.error}),
                        now_ms,
                    ));
                    return;
                }
                Next::RunCompensation { step, attempt } if !definition.steps[step].compensates() => {
                    let name = self.steps[step].name.clone();
                    let state = &mut self.steps[step];
                    state.status = StepStatus::Compensated;
                    state.compensated_at_ms = Some(now_ms);
                    events.push(HistoryEvent::new(
                        "step_compensated",
                        Some(&name),
                        Some(attempt),
                        json!({"noop": true}),
                        now_ms,
                    ));
                }
                _ => return,
            }
        }
    }

    /// True once a `pivot: true` step has succeeded: nothing is compensated any more.
    pub fn pivot_passed(&self, definition: &Definition) -> bool {
        definition.steps.iter().zip(&self.steps).any(|(def, state)| def.pivot && state.status == StepStatus::Succeeded)
    }

    /// Skips the next action, never attempted, because its `when:` rendered `rendered` (false,
    /// empty or `0`): `SKIPPED` with `step_skipped`, nothing to compensate; the saga goes on. A
    /// step only assumed started (`adopt`) is skipped too: with its condition false, no driver
    /// before could have sent it.
    pub fn skip_by_condition(
        &mut self,
        definition: &Definition,
        rendered: Value,
        now_ms: i64,
    ) -> Result<Transition, MachineError> {
        if self.steps.len() != definition.steps.len() {
            return Err(MachineError::ShapeMismatch(self.steps.len(), definition.steps.len()));
        }
        let index = match self.next() {
            Next::RunAction { step, attempt: 1 }
                if matches!(self.status, SagaStatus::Pending | SagaStatus::Executing)
                    && self.steps[step].attempts == 0
                    && self.wait.is_none() =>
            {
                step
            }
            _ => return Err(MachineError::NotWaitable(self.status)),
        };
        self.status = SagaStatus::Executing;
        let step = &mut self.steps[index];
        step.status = StepStatus::Skipped;
        step.condition_false = true;
        step.finished_at_ms = Some(now_ms);
        let mut transition = Transition::default();
        transition.events.push(HistoryEvent::new(
            "step_skipped",
            Some(&step.name),
            None,
            json!({"when": definition.steps[index].when, "rendered": rendered}),
            now_ms,
        ));
        self.advance(definition, now_ms, &mut transition.events);
        Ok(transition)
    }

    /// Parks the next action attempt: it started (a 202 from an async participant, or a signal
    /// step with no buffered signal) and now waits. The eventual [`SagaState::apply`] of the same
    /// attempt finishes it.
    pub fn begin_wait(
        &mut self,
        definition: &Definition,
        kind: WaitKind,
        started_at_ms: i64,
        until_ms: Option<i64>,
    ) -> Result<Transition, MachineError> {
        if self.steps.len() != definition.steps.len() {
            return Err(MachineError::ShapeMismatch(self.steps.len(), definition.steps.len()));
        }
        let (index, attempt) = match self.next() {
            Next::RunAction { step, attempt } if matches!(self.status, SagaStatus::Pending | SagaStatus::Executing) => {
                (step, attempt)
            }
            _ => return Err(MachineError::NotWaitable(self.status)),
        };
        let mut transition = Transition::default();
        if self.wait.as_ref().is_some_and(|w| w.step == index && w.attempt == attempt) {
            // Parked again (woken early, nothing arrived yet): nothing new to record.
            if let Some(wait) = self.wait.as_mut() {
                wait.until_ms = until_ms;
            }
            return Ok(transition);
        }
        self.status = SagaStatus::Executing;
        let step = &mut self.steps[index];
        if step.status == StepStatus::Pending {
            step.started_at_ms = Some(started_at_ms);
        }
        step.status = StepStatus::Executing;
        let name = step.name.clone();
        transition.events.push(HistoryEvent::new(
            "step_started",
            Some(&name),
            Some(attempt),
            json!({"phase": "action"}),
            started_at_ms,
        ));
        let waiting_for = match &kind {
            WaitKind::Signal { name } => json!({"signal": name, "until_ms": until_ms}),
            WaitKind::Callback => json!({"callback": true, "until_ms": until_ms}),
            WaitKind::Timer => json!({"timer": true, "until_ms": until_ms}),
            WaitKind::Child { saga_id } => json!({"child_saga_id": saga_id}),
            WaitKind::Branches { total } => json!({"branches": total}),
        };
        transition.events.push(HistoryEvent::new(
            "step_waiting",
            Some(&name),
            Some(attempt),
            waiting_for,
            started_at_ms,
        ));
        self.wait = Some(Wait { step: index, attempt, kind, since_ms: started_at_ms, until_ms });
        Ok(transition)
    }

    /// Acts on a cancel request made at `requested_at_ms`: a saga going forward stops and
    /// compensates what may have happened (error kind `cancelled`). Past a succeeded pivot, or
    /// once compensating or terminal, the request is recorded and changes nothing else.
    ///
    /// `completion_uncommitted`: the state just became `COMPLETED` by a last step that was in
    /// flight when the cancel arrived, and that completion was never committed. The cancel then
    /// still wins: every step is compensated (the caller drops the `saga_completed` event).
    pub fn cancel(
        &mut self,
        definition: &Definition,
        requested_at_ms: i64,
        now_ms: i64,
        completion_uncommitted: bool,
    ) -> Transition {
        let mut transition = Transition::default();
        if self.cancel_requested_at_ms.is_some() {
            return transition;
        }
        self.cancel_requested_at_ms = Some(requested_at_ms);
        if completion_uncommitted && self.status == SagaStatus::Completed && !self.pivot_passed(definition) {
            self.status = SagaStatus::Executing;
            self.error = None;
        }
        let forward = matches!(self.status, SagaStatus::Pending | SagaStatus::Executing);
        let effective = forward && !self.pivot_passed(definition);
        let ignored = match () {
            _ if effective => None,
            _ if forward => Some("past a succeeded pivot"),
            _ => Some("saga is no longer going forward"),
        };
        transition.events.push(HistoryEvent::new(
            "cancel_requested",
            None,
            None,
            json!({"requested_at_ms": requested_at_ms, "ignored": ignored}),
            now_ms,
        ));
        if effective {
            self.stop_forward(definition, ErrorKind::Cancelled, "cancelled by request".into(), now_ms, &mut transition);
        }
        transition
    }

    /// Its parent's compensation reaches a `COMPLETED` child saga: every step that succeeded is
    /// compensated, newest first, as after a failure (error kind `cancelled`). Refused past a
    /// succeeded pivot, or in any other status. The saga is left `COMPENSATING` for a driver,
    /// even when nothing needs undoing: the driver that takes it up settles it
    /// ([`Self::settle_compensation`]) and commits its end with the end's events.
    pub fn compensate_completed(
        &mut self,
        definition: &Definition,
        parent: &str,
        now_ms: i64,
    ) -> Result<Transition, MachineError> {
        if self.steps.len() != definition.steps.len() {
            return Err(MachineError::ShapeMismatch(self.steps.len(), definition.steps.len()));
        }
        if self.status != SagaStatus::Completed || self.pivot_passed(definition) {
            return Err(MachineError::NotCompensable(self.status));
        }
        let error = SagaError {
            step: None,
            kind: ErrorKind::Cancelled,
            message: format!("compensated by its parent saga {parent}"),
        };
        self.status = SagaStatus::Compensating;
        self.cause = Some(error.clone());
        self.error = Some(error);
        let mut transition = Transition::default();
        transition.events.push(HistoryEvent::new(
            "saga_compensation_requested",
            None,
            None,
            json!({"by_parent": parent}),
            now_ms,
        ));
        Ok(transition)
    }

    /// A compensating saga taken up by a driver: the compensations that need no I/O are marked
    /// done, and the saga ends `COMPENSATED` if nothing else is left.
    pub fn settle_compensation(&mut self, definition: &Definition, now_ms: i64) -> Transition {
        let mut transition = Transition::default();
        if self.status == SagaStatus::Compensating && self.steps.len() == definition.steps.len() {
            self.advance(definition, now_ms, &mut transition.events);
        }
        transition
    }

    /// Whether a driver now holding `fencing_token` may have been preceded by one that sent the
    /// next action and stopped before writing its result: the last writer kept the saga to go
    /// on, or some driver held it after the last write and wrote nothing.
    pub fn next_step_may_be_running(&self, fencing_token: i64) -> bool {
        self.writer_kept_lease || fencing_token > self.written_by_token + 1
    }

    /// Called by a driver that has just claimed the saga with `fencing_token`: when a driver before
    /// it may have sent the next action and stopped before writing anything
    /// ([`Self::next_step_may_be_running`]), that step counts as started from now on — status
    /// `EXECUTING` and a `step_assumed_started` event — so whatever stops the saga later (a cancel,
    /// the deadline, a failure) compensates it as an ambiguous failure (docs/api.md, "Sagas": a
    /// crash mid-step is ambiguous). The mark is part of the state, so every later commit carries
    /// it; the evidence it comes from does not survive a commit.
    ///
    /// Found by the simulator twice: seed 32 (the step was only assumed started when the driver
    /// stopped the saga at once) and seed 1007979 (a driver that took over and handed the saga
    /// back at shutdown, before its deadline, wrote a state without the evidence; the next one
    /// compensated only the steps before, and the effect of the one in flight stayed).
    pub fn adopt(&mut self, fencing_token: i64, now_ms: i64) -> Transition {
        let mut transition = Transition::default();
        if !self.next_step_may_be_running(fencing_token) || crate::bugs::active(crate::bugs::Bug::SkipAdoption) {
            return transition;
        }
        if self.wait.is_some() || !matches!(self.status, SagaStatus::Pending | SagaStatus::Executing) {
            return transition;
        }
        let Next::RunAction { step, attempt } = self.next() else { return transition };
        let state = &mut self.steps[step];
        if state.status != StepStatus::Pending {
            // Attempted before (a written attempt, or an earlier adoption): already counted.
            return transition;
        }
        state.status = StepStatus::Executing;
        state.started_at_ms = Some(now_ms);
        self.status = SagaStatus::Executing;
        transition.events.push(HistoryEvent::new(
            "step_assumed_started",
            Some(&state.name),
            Some(attempt),
            json!({
                "phase": "action",
                "reason": "a driver before this one may have sent this attempt and stopped before writing its result",
                "written_by_token": self.written_by_token,
                "fencing_token": fencing_token,
            }),
            now_ms,
        ));
        transition
    }

    /// When a saga that waits until `at_ms` (a retry, a signal, a callback, an open circuit)
    /// must be due again: at the deadline, if that comes first and the saga still goes forward.
    /// A deadline that has passed changes nothing once the saga compensates or has ended;
    /// capping by it then made a compensation deferred by an open circuit due at once, claimed
    /// and deferred again in a loop (thousands of history rows a second; in the simulator a run
    /// that never ended, seeds 504339, 2017925 and 3008223).
    pub fn due_at_ms(&self, at_ms: i64) -> i64 {
        let forward = matches!(self.status, SagaStatus::Pending | SagaStatus::Executing)
            || crate::bugs::active(crate::bugs::Bug::CapByPassedDeadline);
        match self.deadline_at_ms {
            Some(deadline) if forward => at_ms.min(deadline),
            _ => at_ms,
        }
    }

    /// Acts on the saga deadline once `now_ms` has reached it. `on_timeout: compensate` stops
    /// and compensates (kind `timeout`); `fail`, or a passed pivot, leaves the saga `FAILED`
    /// with nothing compensated. A saga already compensating carries on.
    pub fn expire(&mut self, definition: &Definition, now_ms: i64) -> Transition {
        let mut transition = Transition::default();
        let due = self.deadline_at_ms.is_some_and(|d| d <= now_ms);
        if !due || !matches!(self.status, SagaStatus::Pending | SagaStatus::Executing) {
            return transition;
        }
        let message = "the saga deadline passed".to_string();
        if definition.on_timeout == OnTimeout::Compensate && !self.pivot_passed(definition) {
            transition.events.push(HistoryEvent::new(
                "saga_timed_out",
                None,
                None,
                json!({"on_timeout": "compensate"}),
                now_ms,
            ));
            self.stop_forward(definition, ErrorKind::Timeout, message, now_ms, &mut transition);
            return transition;
        }
        let step = self.close_current_step(now_ms);
        let error = SagaError { step, kind: ErrorKind::Timeout, message };
        transition.events.push(HistoryEvent::new(
            "saga_failed",
            error.step.as_deref(),
            None,
            json!({"error": error, "on_timeout": "fail"}),
            now_ms,
        ));
        self.status = SagaStatus::Failed;
        self.error = Some(error);
        transition
    }

    /// Ends forward progress at the current step: a step parked on a signal failed definitely;
    /// one that was attempted (in flight, awaiting a retry or a callback) failed ambiguously;
    /// one never attempted is skipped, like every later step. Returns the step's name unless it
    /// was never attempted.
    fn close_current_step(&mut self, now_ms: i64) -> Option<String> {
        let wait = self.wait.take();
        let current = self.steps.iter().position(|s| !s.done_forward());
        let mut named = None;
        if let Some(index) = current {
            // A signal or a timer has no effect outside: ending its wait is a definite failure.
            let waiting_signal = wait
                .as_ref()
                .is_some_and(|w| w.step == index && matches!(w.kind, WaitKind::Signal { .. } | WaitKind::Timer));
            let waiting_callback =
                wait.as_ref().is_some_and(|w| w.step == index && matches!(w.kind, WaitKind::Callback));
            let step = &mut self.steps[index];
            if waiting_signal {
                step.status = StepStatus::Failed;
                step.ambiguous = false;
                step.finished_at_ms = Some(now_ms);
                named = Some(step.name.clone());
            } else if step.attempts > 0 || waiting_callback || step.status == StepStatus::Executing {
                step.status = StepStatus::Failed;
                step.ambiguous = true;
                step.finished_at_ms = Some(now_ms);
                named = Some(step.name.clone());
            } else {
                step.status = StepStatus::Skipped;
            }
            for later in &mut self.steps[index + 1..] {
                if later.status == StepStatus::Pending {
                    later.status = StepStatus::Skipped;
                }
            }
        }
        named
    }

    fn stop_forward(
        &mut self,
        definition: &Definition,
        kind: ErrorKind,
        message: String,
        now_ms: i64,
        transition: &mut Transition,
    ) {
        let step = self.close_current_step(now_ms);
        let error = SagaError { step, kind, message };
        self.status = SagaStatus::Compensating;
        self.cause = Some(error.clone());
        self.error = Some(error);
        transition.retry_at_ms = None;
        self.advance(definition, now_ms, &mut transition.events);
    }

    /// An operator's `retry` of a `FAILED` saga: a failed compensation gets a fresh budget and
    /// compensation resumes; a forward failure (past a pivot, or `on_timeout: fail`) resumes
    /// forward from the failed step.
    pub fn retry_by_operator(&mut self, definition: &Definition, now_ms: i64) -> Result<Transition, MachineError> {
        if self.status != SagaStatus::Failed {
            return Err(MachineError::NotRetryable(self.status));
        }
        let mut transition = Transition::default();
        if let Some(index) = self.steps.iter().position(|s| s.status == StepStatus::CompensationFailed) {
            let step = &mut self.steps[index];
            step.status = StepStatus::Compensating;
            step.compensation_attempts = 0;
            step.error = None;
            let name = step.name.clone();
            self.status = SagaStatus::Compensating;
            self.error = self.cause.clone();
            transition.events.push(HistoryEvent::new(
                "saga_retried",
                Some(&name),
                None,
                json!({"phase": "compensation"}),
                now_ms,
            ));
        } else {
            let first_open = self.steps.iter().position(|s| !s.done_forward());
            let skip = first_open.unwrap_or(self.steps.len());
            if let Some(step) = first_open.map(|i| &mut self.steps[i]) {
                step.generation += 1;
            }
            for step in self.steps.iter_mut().skip(skip) {
                step.status = StepStatus::Pending;
                step.attempts = 0;
                step.error = None;
                step.ambiguous = false;
                step.finished_at_ms = None;
                step.condition_false = false;
            }
            if self.error.as_ref().is_some_and(|e| e.kind == ErrorKind::Timeout) {
                // The deadline was the reason it stopped; the operator's retry lifts it.
                self.deadline_at_ms = None;
            }
            self.wait = None;
            self.status = SagaStatus::Executing;
            self.error = None;
            self.cause = None;
            let name = first_open.map(|i| self.steps[i].name.clone());
            transition.events.push(HistoryEvent::new(
                "saga_retried",
                name.as_deref(),
                None,
                json!({"phase": "action"}),
                now_ms,
            ));
        }
        self.advance(definition, now_ms, &mut transition.events);
        Ok(transition)
    }
}

#[cfg(test)]
mod tests;
