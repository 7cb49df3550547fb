//! The invariant checker: reads everything a run left — the store's journal (every history row,
//! admission and outbox event in write order), the final saga rows, and every participant's
//! ledger — and asserts the engine's guarantees (docs/design.md):
//!
//! - every saga ends (COMPLETED, COMPENSATED, or FAILED for an operator);
//! - one driver per saga, no zombie commit: the fencing tokens of a saga's writes never go back;
//! - the history is legal: it starts with `saga_created`, has exactly one terminal event, last,
//!   matching the row, and no step compensated twice;
//! - compensation covers exactly what may have happened: a COMPLETED saga's effects all stand
//!   and none was undone; a COMPENSATED saga left no effect standing; a definitely refused step
//!   is never compensated; compensations run in reverse step order, never before the action,
//!   and never once a pivot has succeeded;
//! - durable before dependent: a step's request reaches its participant only after the previous
//!   step's success is written, and a compensation only after the later steps' compensations are;
//! - no participant call without a durable attempt start: every action request is recorded as
//!   a start of its step, by its sender or by the driver that took over from it;
//! - concurrency limits: a key never has more admitted, unfinished sagas than its limit;
//! - no durable timer fires before its time (a `sleep` step succeeds no sooner than its
//!   duration after it started), and none is lost across a crash (every saga ends);
//! - a step whose `when:` is false is skipped: never sent, never compensated; one whose `when:`
//!   is true is never skipped;
//! - and what [`delivery`] checks of the events the sagas' commits wrote and their deliveries.

use std::collections::BTreeMap;

use saga_core::{Phase, SagaStatus, StepStatus};
use saga_store::SagaRecord;
use uuid::Uuid;

mod delivery;

use crate::memory::{JournalEntry, JournalKind, OutboxView};
use crate::receivers::Received;
use crate::scenario::{DefinitionPlan, Scenario};
use crate::world::{Effect, Request};

/// One broken guarantee.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub guarantee: &'static str,
    pub detail: String,
    pub saga_id: Option<Uuid>,
}

impl Violation {
    pub fn new(guarantee: &'static str, detail: impl Into<String>) -> Self {
        Violation { guarantee, detail: detail.into(), saga_id: None }
    }

    pub fn of(saga_id: Uuid, guarantee: &'static str, detail: impl Into<String>) -> Self {
        Violation { guarantee, detail: format!("saga {saga_id}: {}", detail.into()), saga_id: Some(saga_id) }
    }
}

/// What a run left behind.
pub struct Observation<'a> {
    pub scenario: &'a Scenario,
    pub journal: Vec<JournalEntry>,
    pub sagas: BTreeMap<Uuid, SagaRecord>,
    pub effects: &'a BTreeMap<(Uuid, String), Effect>,
    pub requests: &'a [Request],
    pub outbox: &'a OutboxView,
    /// Every request the webhook receivers took.
    pub received: &'a [Received],
}

const TERMINAL_EVENTS: [&str; 3] = ["saga_completed", "saga_compensated", "saga_failed"];

/// Every guarantee, checked.
pub fn check(observation: &Observation<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for saga in observation.sagas.values() {
        if !saga.status.is_terminal() {
            violations.push(Violation::of(saga.id, "every saga ends", format!("still {}", saga.status.as_str())));
        }
        if !is_tombstone(observation, saga) {
            check_history(observation, saga, &mut violations);
        }
        check_fencing(observation, saga.id, &mut violations);
        check_effects(observation, saga, &mut violations);
        check_durability(observation, saga, &mut violations);
        check_attempts_recorded(observation, saga, &mut violations);
        check_constructs(observation, saga, &mut violations);
        check_children(observation, saga, &mut violations);
    }
    check_concurrency(observation, &mut violations);
    delivery::check(observation, &mut violations);
    violations
}

/// The steps a saga runs, as the scenario made them: its definition's, or — for a branch of a
/// `parallel` group — that branch's.
fn plan_of<'a>(observation: &'a Observation<'_>, saga: &SagaRecord) -> Option<std::borrow::Cow<'a, DefinitionPlan>> {
    let name = saga_core::base_definition_name(&saga.definition);
    let plan = observation.scenario.definitions.iter().find(|d| d.name == name)?;
    let Some(branch) = saga.state.parent.as_ref().and_then(|p| p.branch.as_ref()) else {
        return Some(std::borrow::Cow::Borrowed(plan));
    };
    let n = saga.input.get("n").and_then(serde_json::Value::as_u64);
    let steps = plan.steps.get(branch.group)?.branches_for(n).get(branch.index)?.to_vec();
    Some(std::borrow::Cow::Owned(DefinitionPlan {
        name: plan.name.clone(),
        document: serde_json::Value::Null,
        steps,
        concurrency_limit: None,
    }))
}

/// The journal's history rows of one saga, with their journal numbers.
fn events_of<'a>(
    observation: &'a Observation<'_>,
    saga_id: Uuid,
) -> impl Iterator<Item = (u64, &'a saga_store::EventRecord, Option<i64>)> + 'a {
    observation.journal.iter().filter(move |e| e.saga_id == saga_id).filter_map(|entry| match &entry.kind {
        JournalKind::Event { event, fencing_token } => Some((entry.seq, event, *fencing_token)),
        _ => None,
    })
}

/// A child's tombstone: created already COMPENSATED, every step skipped, by a parent compensating
/// a child step whose child was never started (so a late create finds the id taken). Its history
/// is `saga_created` alone and it reports no event: nothing happened.
pub(crate) fn is_tombstone(observation: &Observation<'_>, saga: &SagaRecord) -> bool {
    saga.state.parent.is_some()
        && saga.status == SagaStatus::Compensated
        && saga.state.steps.iter().all(|s| s.status == StepStatus::Skipped)
        && events_of(observation, saga.id).count() == 1
}

/// A saga whose end no `saga.*` event reports: a child's tombstone (nothing happened) or a
/// branch of a group (its parent's end reports it).
pub(crate) fn reports_no_end(observation: &Observation<'_>, saga: &SagaRecord) -> bool {
    is_tombstone(observation, saga) || saga.state.parent.as_ref().is_some_and(|p| p.branch.is_some())
}

/// The position in its history where a COMPLETED child saga was reopened by its parent's
/// compensation (`saga_compensation_requested`), if it was.
pub(crate) fn reopened_at(observation: &Observation<'_>, saga_id: Uuid) -> Option<usize> {
    events_of(observation, saga_id).position(|(_, e, _)| e.kind == "saga_compensation_requested")
}

fn check_history(observation: &Observation<'_>, saga: &SagaRecord, violations: &mut Vec<Violation>) {
    let mut events: Vec<_> = events_of(observation, saga.id).map(|(_, e, _)| e).collect();
    if events.first().map(|e| e.kind.as_str()) != Some("saga_created") {
        violations.push(Violation::of(saga.id, "legal history", "the history does not start with saga_created"));
    }
    // A child saga completed, then compensated by its parent: the history up to the request
    // ends with `saga_completed`, and what follows is checked as the rest of a history.
    if let Some(at) = reopened_at(observation, saga.id) {
        if at == 0 || events[at - 1].kind != "saga_completed" || saga.state.parent.is_none() {
            violations.push(Violation::of(
                saga.id,
                "legal history",
                "saga_compensation_requested other than right after a child saga's saga_completed",
            ));
        }
        events.drain(..at);
    }
    let terminal: Vec<usize> =
        events.iter().enumerate().filter(|(_, e)| TERMINAL_EVENTS.contains(&e.kind.as_str())).map(|(i, _)| i).collect();
    if saga.status.is_terminal() {
        let expected = match saga.status {
            SagaStatus::Completed => "saga_completed",
            SagaStatus::Compensated => "saga_compensated",
            _ => "saga_failed",
        };
        if terminal.len() != 1 || terminal[0] + 1 != events.len() || events[terminal[0]].kind != expected {
            let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
            violations.push(Violation::of(
                saga.id,
                "legal history",
                format!(
                    "a {} saga needs exactly one terminal event, {expected}, last: {kinds:?}",
                    saga.status.as_str()
                ),
            ));
        }
    }
    let mut compensated: BTreeMap<&str, usize> = BTreeMap::new();
    for event in events.iter().filter(|e| e.kind == "step_compensated") {
        *compensated.entry(event.step.as_deref().unwrap_or("")).or_default() += 1;
    }
    for (step, count) in compensated.into_iter().filter(|(_, n)| *n > 1) {
        violations.push(Violation::of(
            saga.id,
            "never compensated twice",
            format!("step {step} compensated {count} times"),
        ));
    }
}

fn check_fencing(observation: &Observation<'_>, saga_id: Uuid, violations: &mut Vec<Violation>) {
    let mut highest: Option<(i64, &str)> = None;
    for (seq, event, token) in events_of(observation, saga_id) {
        let Some(token) = token else { continue };
        let worker = event.worker.as_deref().unwrap_or("?");
        if let Some((seen, by)) = highest {
            if token < seen {
                violations.push(Violation::of(
                    saga_id,
                    "no zombie commit",
                    format!(
                        "#{seq} {} written by {worker} with fencing token {token} after {by} wrote with {seen}",
                        event.kind
                    ),
                ));
                continue;
            }
        }
        if highest.is_none_or(|(seen, _)| token > seen) {
            highest = Some((token, worker));
        }
    }
}

/// A request from a driver that had been superseded when it arrived: a claim with a higher
/// token came before it. Such a zombie's request cannot be prevented (it was on its way, or
/// the driver was paused between deciding and sending); the engine's guarantees about the order
/// of its decisions are judged on the live drivers' requests, while every effect, a zombie's
/// included, must still be covered.
fn stale(observation: &Observation<'_>, request: &Request) -> bool {
    observation.journal.iter().take_while(|e| e.seq < request.seq).any(|e| {
        e.saga_id == request.saga_id
            && matches!(e.kind, JournalKind::Claimed { fencing_token, .. } if fencing_token > request.fencing_token)
    })
}

/// The first live request of each (step, phase) for a saga, by journal number.
fn first_requests(observation: &Observation<'_>, saga_id: Uuid) -> BTreeMap<(String, bool), u64> {
    let mut first = BTreeMap::new();
    for request in observation.requests.iter().filter(|r| r.saga_id == saga_id && !stale(observation, r)) {
        first.entry((request.step.clone(), request.phase == Phase::Compensation)).or_insert(request.seq);
    }
    first
}

fn check_effects(observation: &Observation<'_>, saga: &SagaRecord, violations: &mut Vec<Violation>) {
    let Some(plan) = plan_of(observation, saga) else { return };
    let first = first_requests(observation, saga.id);
    let pivot_passed = events_of(observation, saga.id).any(|(_, e, _)| {
        e.kind == "step_succeeded" && plan.steps.iter().any(|s| s.pivot && Some(&s.name) == e.step.as_ref())
    });
    let mut undo_order: Vec<(u64, usize)> = Vec::new();
    for (index, step) in plan.steps.iter().enumerate() {
        if step.participant.is_none() || (step.when_even && !input_even(saga)) {
            continue;
        }
        let effect = observation.effects.get(&(saga.id, step.name.clone())).cloned().unwrap_or_default();
        let standing = effect.applied_seq.is_some() && !effect.undid;
        let compensation_sent = first.get(&(step.name.clone(), true)).copied();
        let action_sent = first.get(&(step.name.clone(), false)).copied();
        match saga.status {
            SagaStatus::Completed if !standing => violations.push(Violation::of(
                saga.id,
                "compensation covers exactly what happened",
                format!("COMPLETED but the effect of step {} does not stand: {effect:?}", step.name),
            )),
            SagaStatus::Compensated if standing && step.compensated => violations.push(Violation::of(
                saga.id,
                "compensation covers exactly what happened",
                format!("COMPENSATED but the effect of step {} was never undone: {effect:?}", step.name),
            )),
            _ => {}
        }
        if let Some(sent) = compensation_sent {
            if last_failure_definite(observation, saga.id, &step.name) {
                violations.push(Violation::of(
                    saga.id,
                    "compensation covers exactly what happened",
                    format!("step {} failed definitely, yet it was compensated", step.name),
                ));
            }
            // Before any action request only for the step a stopped driver may have been running
            // (the engine assumes it did, and compensates it).
            if action_sent.is_none_or(|action| action > sent) && !assumed_in_flight(observation, saga.id, &plan, index)
            {
                violations.push(Violation::of(
                    saga.id,
                    "never compensated before its action",
                    format!("step {}: compensation #{sent} before any action request", step.name),
                ));
            }
            if pivot_passed {
                violations.push(Violation::of(
                    saga.id,
                    "nothing compensated past a pivot",
                    format!("step {} compensated after a pivot succeeded", step.name),
                ));
            }
            undo_order.push((sent, index));
        }
    }
    undo_order.sort();
    if undo_order.windows(2).any(|pair| pair[0].1 < pair[1].1) {
        violations.push(Violation::of(
            saga.id,
            "compensation in reverse order",
            format!("compensations began in step order {:?}", undo_order.iter().map(|(_, i)| i).collect::<Vec<_>>()),
        ));
    }
}

/// The saga's `input.n` is even (a `when_even` step runs for it).
fn input_even(saga: &SagaRecord) -> bool {
    saga.input.get("n").and_then(serde_json::Value::as_u64).is_some_and(|n| n % 2 == 0)
}

/// Timers and conditions: no `sleep` step succeeds before its duration has passed since it
/// started; a `when:` step is skipped exactly when its condition is false, and a skipped step is
/// never sent.
fn check_constructs(observation: &Observation<'_>, saga: &SagaRecord, violations: &mut Vec<Violation>) {
    let Some(plan) = plan_of(observation, saga) else { return };
    let first = first_requests(observation, saga.id);
    for step in &plan.steps {
        let of_step = || events_of(observation, saga.id).filter(move |(_, e, _)| e.step.as_ref() == Some(&step.name));
        if let Some(sleep_ms) = step.sleep_ms {
            let started = of_step().find(|(_, e, _)| e.kind == "step_started").map(|(_, e, _)| e.at_ms);
            let woke = of_step().find(|(_, e, _)| e.kind == "step_succeeded").map(|(_, e, _)| e.at_ms);
            if let (Some(started), Some(woke)) = (started, woke) {
                if woke < started.saturating_add(sleep_ms as i64) {
                    violations.push(Violation::of(
                        saga.id,
                        "no timer fires before its time",
                        format!("step {} slept {} ms of {sleep_ms}", step.name, woke - started),
                    ));
                }
            }
        }
        if step.when_even {
            let skipped = of_step().any(|(_, e, _)| e.kind == "step_skipped");
            let sent = first.contains_key(&(step.name.clone(), false));
            let runs = input_even(saga);
            let status = saga.state.steps.iter().find(|s| s.name == step.name).map(|s| s.status);
            // False: never sent, and skipped unless the saga stopped before it (still PENDING,
            // or SKIPPED with the rest).
            let wrong =
                if runs { skipped } else { sent || !matches!(status, Some(StepStatus::Pending | StepStatus::Skipped)) };
            if wrong {
                violations.push(Violation::of(
                    saga.id,
                    "a step runs exactly when its condition holds",
                    format!("step {}: condition {runs}, skipped {skipped}, sent {sent}, now {status:?}", step.name),
                ));
            }
        }
    }
}

/// Child sagas: a parent that ended COMPLETED has its child COMPLETED, one that ended COMPENSATED
/// has it COMPENSATED (or never started), and no child ends after its parent did — no child is
/// left running. A child's id is the one derived from its parent and step, so no retry or
/// takeover started a second.
fn check_children(observation: &Observation<'_>, saga: &SagaRecord, violations: &mut Vec<Violation>) {
    let Some(plan) = plan_of(observation, saga) else { return };
    // A tombstone ended when it was made.
    let ended_at = |id: Uuid| {
        let tombstone = observation.sagas.get(&id).is_some_and(|s| is_tombstone(observation, s));
        events_of(observation, id)
            .find(|(_, e, _)| tombstone || TERMINAL_EVENTS.contains(&e.kind.as_str()))
            .map(|(seq, _, _)| seq)
    };
    let n = saga.input.get("n").and_then(serde_json::Value::as_u64);
    let children_of = |step: &crate::scenario::StepPlan| -> Vec<String> {
        match &step.branches {
            Some(_) => (0..step.branches_for(n).len()).map(|index| format!("{}#{index}", step.name)).collect(),
            None if step.child.is_some() => vec![step.name.clone()],
            None => Vec::new(),
        }
    };
    for (step, key) in plan.steps.iter().flat_map(|step| children_of(step).into_iter().map(move |key| (step, key))) {
        let child_id = saga_runtime::child_saga_id(saga.id, &key);
        let child = observation.sagas.get(&child_id);
        let parent_link = child.and_then(|c| c.state.parent.as_ref());
        if child.is_some() && parent_link.is_none_or(|p| p.saga_id != saga.id.to_string() || p.step != step.name) {
            violations.push(Violation::of(
                saga.id,
                "one child per step",
                format!("child {child_id} names another parent"),
            ));
        }
        let expected = match saga.status {
            SagaStatus::Completed => Some(SagaStatus::Completed),
            SagaStatus::Compensated => Some(SagaStatus::Compensated),
            _ => None,
        };
        let child_status = child.map(|c| c.status);
        let wrong = match (expected, child_status) {
            (Some(SagaStatus::Completed), status) => status != Some(SagaStatus::Completed),
            (Some(SagaStatus::Compensated), Some(status)) => status != SagaStatus::Compensated,
            _ => false,
        };
        if wrong {
            violations.push(Violation::of(
                saga.id,
                "a child ends as its parent",
                format!("parent {} but the child of step {} is {child_status:?}", saga.status.as_str(), step.name),
            ));
        }
        if let (Some(_), Some(child)) = (expected, child) {
            if ended_at(child.id).is_none_or(|child_end| ended_at(saga.id).is_some_and(|end| child_end > end)) {
                violations.push(Violation::of(
                    saga.id,
                    "no child left running after its parent ended",
                    format!("child {} of step {} ended after its parent", child.id, step.name),
                ));
            }
        }
    }
    let children = observation
        .sagas
        .values()
        .filter(|c| c.state.parent.as_ref().is_some_and(|p| p.saga_id == saga.id.to_string()))
        .count();
    let planned = plan.steps.iter().map(|s| children_of(s).len()).sum::<usize>();
    check_branches_undone_first(observation, saga, &plan, violations);
    if children > planned {
        violations.push(Violation::of(
            saga.id,
            "one child per step",
            format!("{children} child sagas for {planned} child steps"),
        ));
    }
}

/// A group's branches are undone before the steps before the group: every compensation request
/// of its branch sagas comes before the first of any step before it.
fn check_branches_undone_first(
    observation: &Observation<'_>,
    saga: &SagaRecord,
    plan: &DefinitionPlan,
    violations: &mut Vec<Violation>,
) {
    let undone = |saga_id: Uuid| {
        observation.requests.iter().filter(move |r| r.saga_id == saga_id && r.phase == Phase::Compensation)
    };
    let n = saga.input.get("n").and_then(serde_json::Value::as_u64);
    for (at, step) in plan.steps.iter().enumerate() {
        if step.branches.is_none() {
            continue;
        }
        let last_branch_undo = (0..step.branches_for(n).len())
            .map(|index| saga_runtime::child_saga_id(saga.id, &format!("{}#{index}", step.name)))
            .flat_map(undone)
            .map(|r| r.seq)
            .max();
        let before: Vec<&str> = plan.steps[..at].iter().map(|s| s.name.as_str()).collect();
        let first_before_undo = undone(saga.id).filter(|r| before.contains(&r.step.as_str())).map(|r| r.seq).min();
        if let (Some(last), Some(first)) = (last_branch_undo, first_before_undo) {
            if first < last {
                violations.push(Violation::of(
                    saga.id,
                    "compensation in reverse order",
                    format!(
                        "a step before group {} was undone (#{first}) before its branches were (#{last})",
                        step.name
                    ),
                ));
            }
        }
    }
}

/// The step's last recorded action failure was definite (the participant said it did nothing).
fn last_failure_definite(observation: &Observation<'_>, saga_id: Uuid, step: &str) -> bool {
    events_of(observation, saga_id)
        .filter(|(_, e, _)| e.kind == "step_failed" && e.step.as_deref() == Some(step))
        .filter(|(_, e, _)| e.data.get("phase").and_then(|p| p.as_str()) == Some("action"))
        .last()
        .is_some_and(|(_, e, _)| e.data.get("retryable").and_then(|r| r.as_bool()) == Some(false))
}

/// Step `index` was counted as started by a driver that took the saga over from one that may
/// have sent it (`step_assumed_started`, the engine's `SagaState::adopt`): it may be compensated
/// although no action request of it reached the participant.
fn assumed_in_flight(observation: &Observation<'_>, saga_id: Uuid, plan: &DefinitionPlan, index: usize) -> bool {
    let name = &plan.steps[index].name;
    events_of(observation, saga_id).any(|(_, e, _)| e.kind == "step_assumed_started" && e.step.as_ref() == Some(name))
}

/// No participant call without a durable attempt start: every action request a participant
/// received — from a live driver or a zombie — is accounted for in the history by a
/// `step_started` of its step (written by its sender) or a `step_assumed_started` (written by
/// the driver that took over from a sender that stopped first), and the step does not end
/// `PENDING` or `SKIPPED` ("never attempted"). Without it, whatever stops the saga treats the
/// step as never run and leaves its effect in place (seed 1007979).
fn check_attempts_recorded(observation: &Observation<'_>, saga: &SagaRecord, violations: &mut Vec<Violation>) {
    let mut reported: Vec<&str> = Vec::new();
    for request in observation.requests.iter().filter(|r| r.saga_id == saga.id && r.phase == Phase::Action) {
        if reported.contains(&request.step.as_str()) {
            continue;
        }
        let recorded = events_of(observation, saga.id).any(|(_, e, _)| {
            matches!(e.kind.as_str(), "step_started" | "step_assumed_started") && e.step.as_ref() == Some(&request.step)
        });
        let final_status = saga.state.steps.iter().find(|s| s.name == request.step).map(|s| s.status);
        let never_attempted = matches!(final_status, Some(StepStatus::Pending | StepStatus::Skipped));
        if recorded && !never_attempted {
            continue;
        }
        reported.push(&request.step);
        let why = if recorded {
            format!("yet the step ended {final_status:?}")
        } else {
            "and no start of the step was ever written".to_string()
        };
        violations.push(Violation::of(
            saga.id,
            "no participant call without a durable attempt start",
            format!(
                "#{} action of {} attempt {} (token {}) reached its participant, {why}",
                request.seq, request.step, request.attempt, request.fencing_token
            ),
        ));
    }
}

fn check_durability(observation: &Observation<'_>, saga: &SagaRecord, violations: &mut Vec<Violation>) {
    let Some(plan) = plan_of(observation, saga) else { return };
    let written = |kind: &str, step: &str, before: u64| {
        events_of(observation, saga.id)
            .any(|(seq, e, _)| seq < before && e.kind == kind && e.step.as_deref() == Some(step))
    };
    for request in observation.requests.iter().filter(|r| r.saga_id == saga.id) {
        let Some(index) = plan.steps.iter().position(|s| s.name == request.step) else { continue };
        match request.phase {
            Phase::Action if index > 0 => {
                // Done going forward: succeeded, or skipped by its condition.
                let previous = &plan.steps[index - 1].name;
                if !written("step_succeeded", previous, request.seq) && !written("step_skipped", previous, request.seq)
                {
                    violations.push(Violation::of(
                        saga.id,
                        "durable before dependent",
                        format!(
                            "#{} action of {} sent before {previous}'s success was written",
                            request.seq, request.step
                        ),
                    ));
                }
            }
            Phase::Compensation => {
                for later in &plan.steps[index + 1..] {
                    let later_sent = observation.requests.iter().any(|r| {
                        r.saga_id == saga.id
                            && r.step == later.name
                            && r.phase == Phase::Compensation
                            && r.seq < request.seq
                    });
                    if later_sent && !written("step_compensated", &later.name, request.seq) {
                        violations.push(Violation::of(
                            saga.id,
                            "durable before dependent",
                            format!(
                                "#{} compensation of {} sent before {}'s compensation was written",
                                request.seq, request.step, later.name
                            ),
                        ));
                    }
                }
            }
            Phase::Action => {}
        }
    }
}

fn check_concurrency(observation: &Observation<'_>, violations: &mut Vec<Violation>) {
    // Per key: the sagas admitted and not yet ended, as the journal goes.
    let mut holding: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    for entry in &observation.journal {
        match &entry.kind {
            JournalKind::Admitted { to_settle: true, .. } => {}
            JournalKind::Admitted { key, limit, .. } => {
                let holders = holding.entry(key.clone()).or_default();
                holders.push(entry.saga_id);
                if holders.len() > *limit as usize {
                    violations.push(Violation::of(
                        entry.saga_id,
                        "concurrency limit",
                        format!(
                            "#{} key {key} (limit {limit}) now has {} running: {holders:?}",
                            entry.seq,
                            holders.len()
                        ),
                    ));
                }
            }
            JournalKind::Event { event, .. } if TERMINAL_EVENTS.contains(&event.kind.as_str()) => {
                for holders in holding.values_mut() {
                    holders.retain(|id| *id != entry.saga_id);
                }
            }
            _ => {}
        }
    }
}

/// How many lines of a saga's timeline are shown at its start and at its end, at most.
const TIMELINE_EDGE_LINES: usize = 200;

/// The run as text: the scenario, the violations, then per saga (those a violation names, or
/// all when none does) every write and participant request in order.
pub fn timeline(observation: &Observation<'_>, violations: &[Violation]) -> String {
    let mut text = observation.scenario.describe();
    let named: Vec<Uuid> = violations.iter().filter_map(|v| v.saga_id).collect();
    for saga in observation.sagas.values() {
        let shown = named.is_empty() || named.contains(&saga.id);
        let plan = observation.scenario.definitions.iter().find(|d| d.name == saga.definition);
        text.push_str(&format!(
            "saga {} ({}) {}{}\n",
            saga.id,
            saga.definition,
            saga.status.as_str(),
            if shown { "" } else { " (timeline omitted)" }
        ));
        if !shown {
            continue;
        }
        let mut lines: Vec<(u64, String)> = Vec::new();
        for entry in observation.journal.iter().filter(|e| e.saga_id == saga.id) {
            let line = match &entry.kind {
                JournalKind::Event { event, fencing_token } => format!(
                    "store   {:>8} ms  {:<24} step={:<4} attempt={:<2} by {} token {}  {}",
                    event.at_ms - crate::world::EPOCH_MS,
                    event.kind,
                    event.step.as_deref().unwrap_or("-"),
                    event.attempt.map_or("-".to_string(), |a| a.to_string()),
                    event.worker.as_deref().unwrap_or("-"),
                    fencing_token.map_or("-".to_string(), |t| t.to_string()),
                    event.data
                ),
                JournalKind::Admitted { key, limit, to_settle } => {
                    let why = if *to_settle { ", over it only to settle" } else { "" };
                    format!("store   admitted under key {key} (limit {limit}{why})")
                }
                JournalKind::Outbox { event_type } => format!("store   outbox event {event_type}"),
                JournalKind::Claimed { fencing_token, worker } => {
                    format!("store   claimed by {worker} with token {fencing_token}")
                }
            };
            lines.push((entry.seq, line));
        }
        for request in observation.requests.iter().filter(|r| r.saga_id == saga.id) {
            lines.push((
                request.seq,
                format!(
                    "{:<7} {:?} of {} attempt {} (key {}) answered {}",
                    request.participant,
                    request.phase,
                    request.step,
                    request.attempt,
                    request.idempotency_key,
                    request.answer
                ),
            ));
        }
        if let Some(plan) = plan {
            for step in &plan.steps {
                if let Some(effect) = observation.effects.get(&(saga.id, step.name.clone())) {
                    lines.push((u64::MAX, format!("effect  {}: {effect:?}", step.name)));
                }
            }
        }
        lines.sort_by_key(|(seq, _)| *seq);
        // A saga that spun wrote without end: its beginning and its end tell the story.
        let omitted = lines.len().saturating_sub(2 * TIMELINE_EDGE_LINES);
        for (n, (seq, line)) in lines.into_iter().enumerate() {
            if omitted > 0 && (TIMELINE_EDGE_LINES..TIMELINE_EDGE_LINES + omitted).contains(&n) {
                if n == TIMELINE_EDGE_LINES {
                    text.push_str(&format!("  … {omitted} lines omitted …\n"));
                }
                continue;
            }
            let seq = if seq == u64::MAX { "end".to_string() } else { format!("#{seq}") };
            text.push_str(&format!("  {seq:>6} {line}\n"));
        }
    }
    text.push_str(&delivery::timeline(observation));
    text
}
