//! State machine tests: worked examples, then property tests over random failure sequences.

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::definition::{Action, BuiltinAction, OnFailure, OnTimeout, RetryPolicy, StepDefinition};

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy { max_attempts, initial_interval_ms: 100, multiplier: 2.0, max_interval_ms: 1_000, jitter: 0.0 }
}

fn echo() -> Action {
    Action::Builtin(BuiltinAction { name: "core.echo".into(), input: None })
}

/// `(has_compensation, max_attempts, compensation_max_attempts, pivot)` per step.
fn definition(shape: &[(bool, u32, u32, bool)]) -> Definition {
    Definition {
        name: "t".into(),
        timeout_ms: None,
        on_timeout: OnTimeout::Compensate,
        retention_ms: None,
        concurrency: None,
        steps: shape
            .iter()
            .enumerate()
            .map(|(i, &(has_comp, attempts, comp_attempts, pivot))| StepDefinition {
                name: format!("s{i}"),
                action: echo(),
                compensation: has_comp.then(echo),
                timeout_ms: 1_000,
                retry: policy(attempts),
                compensation_retry: policy(comp_attempts),
                pivot,
                on_failure: OnFailure::Compensate,
                heartbeat_timeout_ms: None,
                when: None,
            })
            .collect(),
    }
}

fn ok() -> Outcome {
    Outcome::Succeeded(json!({"ok": true}))
}

fn fail(kind: FailureKind) -> Outcome {
    Outcome::Failed { kind, message: "boom".into() }
}

/// Drives the saga, taking outcomes from `outcomes` (then success forever). Returns the events.
fn drive(state: &mut SagaState, def: &Definition, outcomes: &mut impl Iterator<Item = Outcome>) -> Vec<HistoryEvent> {
    let mut events = Vec::new();
    let mut now = 0;
    for _ in 0..10_000 {
        let (phase, step, attempt) = match state.next() {
            Next::RunAction { step, attempt } => (Phase::Action, step, attempt),
            Next::RunCompensation { step, attempt } => (Phase::Compensation, step, attempt),
            Next::Terminal => return events,
        };
        let outcome = outcomes.next().unwrap_or_else(ok);
        let transition = state
            .apply(def, Attempt { phase, step, attempt, outcome, started_at_ms: now, finished_at_ms: now + 1 }, 0.5)
            .expect("legal");
        now += 2;
        events.extend(transition.events);
    }
    panic!("saga did not terminate");
}

fn kinds_for(events: &[HistoryEvent], kind: &str) -> Vec<String> {
    events.iter().filter(|e| e.kind == kind).filter_map(|e| e.step.clone()).collect()
}

#[test]
fn happy_path_completes_with_outputs() {
    let def = definition(&[(true, 3, 3, false), (true, 3, 3, false), (false, 3, 3, false)]);
    let mut state = SagaState::new(&def);
    let events = drive(&mut state, &def, &mut std::iter::empty());
    assert_eq!(state.status, SagaStatus::Completed);
    assert_eq!(state.output(), Some(json!({"s0": {"ok": true}, "s1": {"ok": true}, "s2": {"ok": true}})));
    assert_eq!(events.last().map(|e| e.kind.as_str()), Some("saga_completed"));
    assert_eq!(state.progress().percent, 100);
}

#[test]
fn definite_failure_compensates_earlier_steps_in_reverse_only() {
    let def = definition(&[(true, 3, 3, false), (true, 3, 3, false), (true, 3, 3, false), (true, 3, 3, false)]);
    let mut state = SagaState::new(&def);
    let mut outcomes = vec![ok(), ok(), fail(FailureKind::NonRetryable)].into_iter();
    let events = drive(&mut state, &def, &mut outcomes);
    assert_eq!(state.status, SagaStatus::Compensated);
    assert_eq!(kinds_for(&events, "step_compensated"), vec!["s1", "s0"]);
    let statuses: Vec<StepStatus> = state.steps.iter().map(|s| s.status).collect();
    assert_eq!(
        statuses,
        vec![StepStatus::Compensated, StepStatus::Compensated, StepStatus::Failed, StepStatus::Skipped]
    );
    assert_eq!(state.error.as_ref().map(|e| e.kind), Some(ErrorKind::NonRetryable));
}

#[test]
fn exhausted_retries_compensate_the_ambiguous_step() {
    let def = definition(&[(true, 3, 3, false), (true, 2, 3, false)]);
    let mut state = SagaState::new(&def);
    let mut outcomes = vec![ok(), fail(FailureKind::Retryable), fail(FailureKind::Retryable)].into_iter();
    let events = drive(&mut state, &def, &mut outcomes);
    assert_eq!(state.status, SagaStatus::Compensated);
    assert_eq!(kinds_for(&events, "step_compensated"), vec!["s1", "s0"]);
    assert_eq!(kinds_for(&events, "step_retry_scheduled"), vec!["s1"]);
    assert_eq!(state.error.as_ref().map(|e| e.kind), Some(ErrorKind::RetriesExhausted));
}

#[test]
fn retry_schedules_a_due_time_with_backoff() {
    let def = definition(&[(false, 3, 3, false)]);
    let mut state = SagaState::new(&def);
    let t = state
        .apply(
            &def,
            Attempt {
                phase: Phase::Action,
                step: 0,
                attempt: 1,
                outcome: fail(FailureKind::Retryable),
                started_at_ms: 0,
                finished_at_ms: 10,
            },
            0.5,
        )
        .expect("legal");
    assert_eq!(t.retry_at_ms, Some(110));
    let t = state
        .apply(
            &def,
            Attempt {
                phase: Phase::Action,
                step: 0,
                attempt: 2,
                outcome: fail(FailureKind::Retryable),
                started_at_ms: 110,
                finished_at_ms: 120,
            },
            0.5,
        )
        .expect("legal");
    assert_eq!(t.retry_at_ms, Some(320));
}

#[test]
fn stale_or_out_of_order_outcomes_are_rejected() {
    let def = definition(&[(false, 3, 3, false), (false, 3, 3, false)]);
    let mut state = SagaState::new(&def);
    assert!(state
        .apply(
            &def,
            Attempt { phase: Phase::Action, step: 1, attempt: 1, outcome: ok(), started_at_ms: 0, finished_at_ms: 1 },
            0.5
        )
        .is_err());
    assert!(state
        .apply(
            &def,
            Attempt { phase: Phase::Action, step: 0, attempt: 2, outcome: ok(), started_at_ms: 0, finished_at_ms: 1 },
            0.5
        )
        .is_err());
    assert!(state
        .apply(
            &def,
            Attempt {
                phase: Phase::Compensation,
                step: 0,
                attempt: 1,
                outcome: ok(),
                started_at_ms: 0,
                finished_at_ms: 1
            },
            0.5
        )
        .is_err());
}

#[test]
fn failed_compensation_waits_for_operator_then_resumes() {
    let def = definition(&[(true, 1, 2, false), (true, 1, 1, false)]);
    let mut state = SagaState::new(&def);
    let mut outcomes =
        vec![ok(), fail(FailureKind::NonRetryable), fail(FailureKind::Retryable), fail(FailureKind::Retryable)]
            .into_iter();
    drive(&mut state, &def, &mut outcomes);
    assert_eq!(state.status, SagaStatus::Failed);
    assert_eq!(state.error.as_ref().map(|e| e.kind), Some(ErrorKind::CompensationFailed));
    assert_eq!(state.steps[0].status, StepStatus::CompensationFailed);
    state.retry_by_operator(&def, 100).expect("retryable");
    let events = drive(&mut state, &def, &mut std::iter::empty());
    assert_eq!(state.status, SagaStatus::Compensated);
    assert_eq!(kinds_for(&events, "step_compensated"), vec!["s0"]);
    assert_eq!(state.error.as_ref().map(|e| e.kind), Some(ErrorKind::NonRetryable));
}

#[test]
fn failure_after_pivot_fails_forward_and_retry_resumes_forward() {
    let def = definition(&[(true, 1, 1, false), (false, 1, 1, true), (true, 1, 1, false)]);
    let mut state = SagaState::new(&def);
    let mut outcomes = vec![ok(), ok(), fail(FailureKind::NonRetryable)].into_iter();
    let events = drive(&mut state, &def, &mut outcomes);
    assert_eq!(state.status, SagaStatus::Failed);
    assert!(kinds_for(&events, "step_compensated").is_empty());
    state.retry_by_operator(&def, 100).expect("retryable");
    drive(&mut state, &def, &mut std::iter::empty());
    assert_eq!(state.status, SagaStatus::Completed);
}

#[test]
fn a_step_that_fails_forward_leaves_failed_and_retry_resumes_at_it() {
    let mut def = definition(&[(true, 1, 1, false), (true, 2, 1, false), (true, 1, 1, false)]);
    def.steps[1].on_failure = OnFailure::Fail;
    for failure in [FailureKind::NonRetryable, FailureKind::Retryable] {
        let mut state = SagaState::new(&def);
        let mut outcomes = vec![ok(), fail(failure), fail(failure)].into_iter();
        let events = drive(&mut state, &def, &mut outcomes);
        assert_eq!(state.status, SagaStatus::Failed, "{failure:?}");
        assert!(kinds_for(&events, "step_compensated").is_empty(), "nothing undone: {failure:?}");
        assert_eq!(state.steps[0].status, StepStatus::Succeeded);
        assert_eq!(state.steps[1].status, StepStatus::Failed);
        assert_eq!(state.steps[2].status, StepStatus::Skipped);
        let failed = events.iter().find(|e| e.kind == "saga_failed").expect("saga_failed");
        assert_eq!(failed.data["on_failure"], json!("fail"));
        assert_eq!(state.error.as_ref().and_then(|e| e.step.clone()), Some("s1".to_string()));
        let retried = state.retry_by_operator(&def, 100).expect("retryable");
        assert_eq!(retried.events[0].step.as_deref(), Some("s1"), "resumes at the failed step");
        assert_eq!(state.next(), Next::RunAction { step: 1, attempt: 1 });
        let events = drive(&mut state, &def, &mut std::iter::empty());
        assert_eq!(state.status, SagaStatus::Completed);
        assert_eq!(kinds_for(&events, "step_succeeded"), vec!["s1", "s2"], "s0 is not run again");
    }
}

#[test]
fn a_cancel_still_compensates_a_step_that_fails_forward() {
    let mut def = definition(&[(true, 1, 1, false), (true, 1, 1, false)]);
    def.steps[1].on_failure = OnFailure::Fail;
    let mut state = SagaState::new(&def);
    state.apply(&def, attempt_of(&state, ok(), 0), 0.5).expect("legal");
    state.cancel(&def, 5, 5, false);
    assert_eq!(state.status, SagaStatus::Compensating);
    let events = drive(&mut state, &def, &mut std::iter::empty());
    assert_eq!(state.status, SagaStatus::Compensated);
    assert_eq!(kinds_for(&events, "step_compensated"), vec!["s0"]);
}

#[test]
fn only_failed_sagas_can_be_retried() {
    let def = definition(&[(false, 1, 1, false)]);
    let mut state = SagaState::new(&def);
    assert_eq!(state.retry_by_operator(&def, 0), Err(MachineError::NotRetryable(SagaStatus::Pending)));
}

fn arb_shape() -> impl Strategy<Value = Vec<(bool, u32, u32, bool)>> {
    prop::collection::vec((any::<bool>(), 1u32..4, 1u32..4, prop::bool::weighted(0.15)), 1..7)
}

fn arb_outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => Just(ok()),
        2 => Just(fail(FailureKind::Retryable)),
        1 => Just(fail(FailureKind::NonRetryable)),
    ]
}

/// Replays the events to check the compensation guarantees.
fn check_guarantees(def: &Definition, state: &SagaState, events: &[HistoryEvent]) {
    assert!(state.status.is_terminal(), "not terminal: {:?}", state.status);
    let succeeded: Vec<String> = kinds_for(events, "step_succeeded");
    let compensated = kinds_for(events, "step_compensated");
    // Nothing compensated twice.
    let mut unique = compensated.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), compensated.len(), "compensated twice: {compensated:?}");
    // Compensation order is reverse step order.
    let indexes: Vec<usize> = compensated.iter().filter_map(|n| def.step_index(n)).collect();
    assert!(indexes.windows(2).all(|w| w[0] > w[1]), "not reverse: {compensated:?}");
    // Never before its action: every compensated step was started.
    let started = kinds_for(events, "step_started");
    for name in &compensated {
        assert!(started.contains(name), "{name} compensated but never started");
    }
    for (i, step) in state.steps.iter().enumerate() {
        match step.status {
            StepStatus::Skipped | StepStatus::Pending => {
                assert!(!started.contains(&step.name), "{} attempted but {:?}", step.name, step.status)
            }
            StepStatus::Failed if !step.ambiguous => assert!(!compensated.contains(&step.name)),
            _ => {}
        }
        if state.status == SagaStatus::Compensated {
            // Exactly the succeeded steps plus an ambiguously failed one.
            let must = succeeded.contains(&step.name) || (step.status == StepStatus::Compensated && step.ambiguous);
            assert_eq!(compensated.contains(&step.name), must, "step {i} {:?}", step.status);
        }
    }
}

proptest! {
    #[test]
    fn every_saga_terminates_and_compensates_exactly_what_happened(
        shape in arb_shape(),
        fails_forward in prop::collection::vec(prop::bool::weighted(0.15), 7),
        outcomes in prop::collection::vec(arb_outcome(), 0..40),
    ) {
        let mut def = definition(&shape);
        for (step, fails_forward) in def.steps.iter_mut().zip(fails_forward) {
            step.on_failure = if fails_forward { OnFailure::Fail } else { OnFailure::Compensate };
        }
        let mut state = SagaState::new(&def);
        let mut iter = outcomes.into_iter();
        let mut events = drive(&mut state, &def, &mut iter);
        check_guarantees(&def, &state, &events);
        // An operator retry of a FAILED saga, with a healed participant, always ends terminal
        // without breaking the guarantees.
        if state.status == SagaStatus::Failed {
            let t = state.retry_by_operator(&def, 1_000_000).expect("failed sagas are retryable");
            events.extend(t.events);
            events.extend(drive(&mut state, &def, &mut std::iter::empty()));
            prop_assert!(state.status == SagaStatus::Completed || state.status == SagaStatus::Compensated);
            let compensated = kinds_for(&events, "step_compensated");
            let mut unique = compensated.clone();
            unique.sort();
            unique.dedup();
            prop_assert_eq!(unique.len(), compensated.len());
        }
    }
}

fn attempt_of(state: &SagaState, outcome: Outcome, now: i64) -> Attempt {
    let (phase, step, attempt) = match state.next() {
        Next::RunAction { step, attempt } => (Phase::Action, step, attempt),
        Next::RunCompensation { step, attempt } => (Phase::Compensation, step, attempt),
        Next::Terminal => panic!("nothing to run"),
    };
    Attempt { phase, step, attempt, outcome, started_at_ms: now, finished_at_ms: now + 1 }
}

#[test]
fn cancel_during_a_pending_retry_compensates_the_ambiguous_step_and_never_retries_it() {
    let def = definition(&[(true, 3, 3, false), (true, 3, 3, false), (true, 3, 3, false)]);
    let mut state = SagaState::new(&def);
    state.apply(&def, attempt_of(&state, ok(), 0), 0.5).expect("legal");
    let t = state.apply(&def, attempt_of(&state, fail(FailureKind::Retryable), 10), 0.5).expect("legal");
    assert!(t.retry_at_ms.is_some());
    let t = state.cancel(&def, 20, 30, false);
    assert_eq!(t.retry_at_ms, None);
    assert_eq!(t.events[0].kind, "cancel_requested");
    assert_eq!(state.status, SagaStatus::Compensating);
    assert_eq!(state.next(), Next::RunCompensation { step: 1, attempt: 1 });
    let events = drive(&mut state, &def, &mut std::iter::empty());
    assert_eq!(kinds_for(&events, "step_compensated"), vec!["s1", "s0"]);
    assert!(kinds_for(&events, "step_started").is_empty(), "the cancelled retry never ran");
    assert_eq!(state.status, SagaStatus::Compensated);
    assert_eq!(state.error.as_ref().map(|e| e.kind), Some(ErrorKind::Cancelled));
    assert_eq!(state.steps[2].status, StepStatus::Skipped);
}

#[test]
fn cancel_of_a_pending_saga_compensates_nothing() {
    let def = definition(&[(true, 3, 3, false), (true, 3, 3, false)]);
    let mut state = SagaState::new(&def);
    let t = state.cancel(&def, 5, 5, false);
    assert_eq!(state.status, SagaStatus::Compensated);
    assert!(t.events.iter().any(|e| e.kind == "saga_compensated"));
    assert!(state.steps.iter().all(|s| s.status == StepStatus::Skipped));
    assert_eq!(state.error.as_ref().map(|e| (e.kind, e.step.clone())), Some((ErrorKind::Cancelled, None)));
}

#[test]
fn cancel_past_a_succeeded_pivot_is_recorded_and_ignored() {
    let def = definition(&[(true, 3, 3, true), (true, 3, 3, false)]);
    let mut state = SagaState::new(&def);
    state.apply(&def, attempt_of(&state, ok(), 0), 0.5).expect("legal");
    let t = state.cancel(&def, 5, 5, false);
    assert_eq!(state.status, SagaStatus::Executing);
    assert_eq!(t.events.len(), 1);
    assert_eq!(t.events[0].data["ignored"], json!("past a succeeded pivot"));
}

#[test]
fn cancel_while_parked_on_a_callback_compensates_that_step() {
    let def = definition(&[(true, 3, 3, false), (true, 3, 3, false)]);
    let mut state = SagaState::new(&def);
    state.apply(&def, attempt_of(&state, ok(), 0), 0.5).expect("legal");
    let t = state.begin_wait(&def, WaitKind::Callback, 10, Some(1_000)).expect("waitable");
    assert_eq!(t.events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), vec!["step_started", "step_waiting"]);
    // Woken early with nothing arrived: re-parking records nothing new.
    assert!(state.begin_wait(&def, WaitKind::Callback, 20, Some(2_000)).expect("waitable").events.is_empty());
    state.cancel(&def, 30, 30, false);
    assert!(state.wait.is_none());
    assert_eq!(state.next(), Next::RunCompensation { step: 1, attempt: 1 });
}

#[test]
fn a_signal_wait_resumes_into_the_same_attempt_and_its_timeout_is_definite() {
    let def = definition(&[(true, 3, 3, false), (true, 3, 3, false)]);
    let mut state = SagaState::new(&def);
    state.apply(&def, attempt_of(&state, ok(), 0), 0.5).expect("legal");
    state.begin_wait(&def, WaitKind::Signal { name: "go".into() }, 10, Some(100)).expect("waitable");
    assert_eq!(state.next(), Next::RunAction { step: 1, attempt: 1 });
    let t = state
        .apply(&def, attempt_of(&state, Outcome::Failed { kind: FailureKind::TimedOut, message: "t".into() }, 100), 0.5)
        .expect("legal");
    assert!(t.events.iter().all(|e| e.kind != "step_started"), "started once, when the wait began");
    assert_eq!(state.error.as_ref().map(|e| e.kind), Some(ErrorKind::Timeout));
    assert!(!state.steps[1].ambiguous);
    assert_eq!(state.next(), Next::RunCompensation { step: 0, attempt: 1 });
}

#[test]
fn deadline_compensates_or_fails_per_on_timeout() {
    let mut def = definition(&[(true, 3, 3, false), (true, 3, 3, false)]);
    def.timeout_ms = Some(100);
    let mut state = SagaState::started(&def, 1_000);
    assert_eq!(state.deadline_at_ms, Some(1_100));
    state.apply(&def, attempt_of(&state, ok(), 1_000), 0.5).expect("legal");
    assert!(state.expire(&def, 1_099).events.is_empty(), "not yet due");
    let mut failing = state.clone();
    state.expire(&def, 1_100);
    assert_eq!(state.status, SagaStatus::Compensating);
    assert_eq!(state.next(), Next::RunCompensation { step: 0, attempt: 1 });
    def.on_timeout = OnTimeout::Fail;
    failing.expire(&def, 1_100);
    assert_eq!(failing.status, SagaStatus::Failed);
    assert_eq!(failing.error.as_ref().map(|e| e.kind), Some(ErrorKind::Timeout));
    assert_eq!(failing.steps[0].status, StepStatus::Succeeded, "nothing compensated");
    // The operator's retry lifts the deadline and finishes forward.
    failing.retry_by_operator(&def, 2_000).expect("retryable");
    assert_eq!(failing.deadline_at_ms, None);
    drive(&mut failing, &def, &mut std::iter::empty());
    assert_eq!(failing.status, SagaStatus::Completed);
}

#[test]
fn cancel_wins_over_an_uncommitted_completion() {
    let def = definition(&[(true, 3, 3, false), (true, 3, 3, false)]);
    let mut state = SagaState::new(&def);
    state.apply(&def, attempt_of(&state, ok(), 0), 0.5).expect("legal");
    state.apply(&def, attempt_of(&state, ok(), 2), 0.5).expect("legal");
    assert_eq!(state.status, SagaStatus::Completed);
    state.cancel(&def, 1, 5, true);
    assert_eq!(state.status, SagaStatus::Compensating);
    let events = drive(&mut state, &def, &mut std::iter::empty());
    assert_eq!(kinds_for(&events, "step_compensated"), vec!["s1", "s0"]);
    assert_eq!(state.error.as_ref().map(|e| (e.kind, e.step.clone())), Some((ErrorKind::Cancelled, None)));
}

/// A state as a driver with `token` wrote it, keeping the lease (`kept`) or not.
fn written_by(mut state: SagaState, token: i64, kept: bool) -> SagaState {
    state.written_by_token = token;
    state.writer_kept_lease = kept;
    state
}

#[test]
fn a_driver_taking_over_counts_the_step_its_predecessor_may_have_sent() {
    let def = definition(&[(true, 3, 3, false), (true, 3, 3, false), (true, 3, 3, false)]);
    let mut state = SagaState::new(&def);
    state.apply(&def, attempt_of(&state, ok(), 0), 0.5).expect("legal");
    // Driver 1 wrote s0's success and went on to s1; driver 2 takes over.
    let mut state = written_by(state, 1, true);
    let t = state.adopt(2, 50);
    assert_eq!(t.events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), vec!["step_assumed_started"]);
    assert_eq!(t.events[0].step.as_deref(), Some("s1"));
    assert_eq!(state.steps[1].status, StepStatus::Executing);
    assert_eq!(state.steps[1].started_at_ms, Some(50));
    // Running the same attempt itself resumes normally: attempt 1, with the same idempotency key.
    assert_eq!(state.next(), Next::RunAction { step: 1, attempt: 1 });
    // Written so (driver 2 hands the saga back, say), the mark survives without the evidence:
    // the deadline passing later compensates s1 as an ambiguous failure.
    let mut later = written_by(state.clone(), 2, false);
    assert!(later.adopt(3, 60).events.is_empty(), "driver 3 has no evidence of its own");
    later.cancel(&def, 70, 70, false);
    assert!(later.steps[1].ambiguous);
    let events = drive(&mut later, &def, &mut std::iter::empty());
    assert_eq!(kinds_for(&events, "step_compensated"), vec!["s1", "s0"]);
    assert_eq!(later.steps[2].status, StepStatus::Skipped);
}

#[test]
fn a_driver_after_one_that_wrote_and_let_go_adopts_nothing() {
    let def = definition(&[(true, 3, 3, false), (true, 3, 3, false)]);
    let mut state = SagaState::new(&def);
    state.apply(&def, attempt_of(&state, ok(), 0), 0.5).expect("legal");
    // Written by driver 4 with the lease released: driver 5 is the next to hold it.
    let mut fresh = written_by(state.clone(), 4, false);
    assert!(fresh.adopt(5, 10).events.is_empty());
    assert_eq!(fresh.steps[1].status, StepStatus::Pending);
    // Driver 5 held it and wrote nothing: driver 6 cannot know whether 5 sent s1.
    assert_eq!(fresh.adopt(6, 10).events.len(), 1);
    // A new saga claimed for the first time, and one parked on a wait, adopt nothing.
    assert!(SagaState::new(&def).adopt(1, 0).events.is_empty());
    let mut parked = written_by(state, 4, true);
    parked.begin_wait(&def, WaitKind::Signal { name: "go".into() }, 10, None).expect("waitable");
    assert!(parked.adopt(6, 20).events.is_empty());
}

#[test]
fn a_passed_deadline_caps_wake_ups_only_while_going_forward() {
    let mut def = definition(&[(true, 3, 3, false), (true, 3, 3, false)]);
    def.timeout_ms = Some(100);
    let mut state = SagaState::started(&def, 1_000);
    assert_eq!(state.due_at_ms(5_000), 1_100, "a wait ends at the deadline at the latest");
    assert_eq!(state.due_at_ms(1_050), 1_050);
    state.apply(&def, attempt_of(&state, ok(), 1_000), 0.5).expect("legal");
    state.expire(&def, 1_100);
    assert_eq!(state.status, SagaStatus::Compensating);
    // A compensation deferred past the deadline waits its whole time: not due at once, in a loop.
    assert_eq!(state.due_at_ms(5_000), 5_000);
}

#[test]
fn a_cancel_ends_a_timer_at_once_and_the_sleeping_step_needs_no_compensation() {
    let def = definition(&[(true, 3, 3, false), (true, 3, 3, false)]);
    let mut state = SagaState::new(&def);
    state.apply(&def, attempt_of(&state, ok(), 0), 0.5).expect("legal");
    let t = state.begin_wait(&def, WaitKind::Timer, 10, Some(86_400_000)).expect("waitable");
    assert_eq!(t.events[1].data, json!({"timer": true, "until_ms": 86_400_000}));
    state.cancel(&def, 30, 30, false);
    assert!(state.wait.is_none());
    assert_eq!(state.steps[1].status, StepStatus::Failed);
    assert!(!state.steps[1].ambiguous, "a timer has no effect outside");
    assert_eq!(state.next(), Next::RunCompensation { step: 0, attempt: 1 });
}

#[test]
fn a_step_whose_condition_is_false_is_skipped_and_never_compensated() {
    let def = definition(&[(true, 3, 3, false), (true, 3, 3, false), (true, 3, 3, false)]);
    let mut state = SagaState::new(&def);
    state.apply(&def, attempt_of(&state, ok(), 0), 0.5).expect("legal");
    let t = state.skip_by_condition(&def, json!(false), 5).expect("skippable");
    assert_eq!(t.events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), vec!["step_skipped"]);
    assert_eq!(state.steps[1].status, StepStatus::Skipped);
    assert_eq!(state.progress().completed_steps, 2, "a skipped step counts as done");
    assert_eq!(state.next(), Next::RunAction { step: 2, attempt: 1 });
    // Only a step never attempted is skipped.
    assert!(state.clone().skip_by_condition(&def, json!(false), 6).is_ok());
    state.apply(&def, attempt_of(&state, fail(FailureKind::Retryable), 6), 0.5).expect("legal");
    assert!(state.skip_by_condition(&def, json!(false), 7).is_err(), "attempted already");
    state.apply(&def, attempt_of(&state, fail(FailureKind::NonRetryable), 8), 0.5).expect("legal");
    // Compensation goes from the failed step's predecessor, past the skipped one.
    assert_eq!(state.next(), Next::RunCompensation { step: 0, attempt: 1 });
    // A skip that leaves nothing to run completes the saga.
    let mut last = SagaState::new(&def);
    for at in 0..2 {
        last.apply(&def, attempt_of(&last, ok(), at), 0.5).expect("legal");
    }
    let t = last.skip_by_condition(&def, json!(0), 9).expect("skippable");
    assert_eq!(last.status, SagaStatus::Completed);
    assert_eq!(t.events.last().map(|e| e.kind.as_str()), Some("saga_completed"));
    assert_eq!(last.output().expect("completed")["s2"], json!(null));
}

#[test]
fn an_ambiguous_failure_is_final_and_compensated() {
    let def = definition(&[(true, 3, 3, false), (true, 5, 3, false)]);
    let mut state = SagaState::new(&def);
    let mut outcomes = vec![ok(), fail(FailureKind::Ambiguous)].into_iter();
    let events = drive(&mut state, &def, &mut outcomes);
    assert_eq!(state.status, SagaStatus::Compensated);
    assert_eq!(state.steps[1].attempts, 1, "not tried again");
    assert_eq!(kinds_for(&events, "step_compensated"), vec!["s1", "s0"], "the step itself is compensated");
}

#[test]
fn a_completed_saga_reopened_for_compensation_undoes_every_step_newest_first() {
    let def = definition(&[(true, 3, 3, false), (false, 3, 3, false), (true, 3, 3, false)]);
    let mut state = SagaState::new(&def);
    drive(&mut state, &def, &mut std::iter::empty());
    assert_eq!(state.status, SagaStatus::Completed);
    let reopened = state.compensate_completed(&def, "parent-1", 100).expect("a completed saga may be reopened");
    assert_eq!(reopened.events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["saga_compensation_requested"]);
    assert_eq!(state.status, SagaStatus::Compensating, "left for a driver to settle");
    assert_eq!(state.error.as_ref().map(|e| e.kind), Some(ErrorKind::Cancelled));
    let events = drive(&mut state, &def, &mut std::iter::empty());
    assert_eq!(state.status, SagaStatus::Compensated);
    assert_eq!(kinds_for(&events, "step_compensated"), vec!["s2", "s1", "s0"]);
    assert!(matches!(state.compensate_completed(&def, "parent-1", 200), Err(MachineError::NotCompensable(_))));

    // Nothing to undo with I/O: the driver that takes it up settles it at once.
    let def = definition(&[(false, 3, 3, false)]);
    let mut state = SagaState::new(&def);
    drive(&mut state, &def, &mut std::iter::empty());
    state.compensate_completed(&def, "parent-2", 100).expect("reopened");
    let settled = state.settle_compensation(&def, 101);
    assert_eq!(state.status, SagaStatus::Compensated);
    assert_eq!(settled.events.last().map(|e| e.kind.as_str()), Some("saga_compensated"));

    // Past a pivot it cannot be undone.
    let def = definition(&[(true, 3, 3, true)]);
    let mut state = SagaState::new(&def);
    drive(&mut state, &def, &mut std::iter::empty());
    assert!(matches!(state.compensate_completed(&def, "parent-3", 100), Err(MachineError::NotCompensable(_))));
}
