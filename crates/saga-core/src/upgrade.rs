//! Moving a saga that is under way to a new version of its definition.
//!
//! A saga keeps the version it started with unless an operator moves it. It may move when the
//! new version starts the same way: every step it has started so far — each done one and the
//! one under way — is at the same position in the new version, with the same name, the same
//! kind of action and the same kind of compensation. What comes after may differ in anything
//! (steps added, removed, changed): the saga meets it when it gets there. Only a saga going
//! forward moves: one compensating finishes on the version whose steps it undoes.

use crate::definition::{Action, Definition};
use crate::machine::{SagaState, SagaStatus, StepState, StepStatus};

/// Why a saga could not go on under the new version, step by step (empty: it could).
pub fn refusals(from: &Definition, to: &Definition, state: &SagaState) -> Vec<String> {
    let mut reasons = Vec::new();
    if state.parent.as_ref().is_some_and(|p| p.branch.is_some()) {
        reasons.push("it is a branch of a parallel or for_each group: it runs its parent's version".to_string());
        return reasons;
    }
    for (index, step) in state.steps.iter().enumerate().take(started_steps(state)) {
        let Some(old) = from.steps.get(index) else { break };
        match to.steps.iter().position(|s| s.name == step.name) {
            None => reasons.push(format!("step {}: it has run, and the new version has no such step", step.name)),
            Some(at) if at != index => reasons.push(format!(
                "step {}: at position {} in the new version, {} in the old",
                step.name,
                at + 1,
                index + 1
            )),
            Some(at) => {
                let new = &to.steps[at];
                if old.action.kind() != new.action.kind() {
                    reasons.push(format!(
                        "step {}: a {} action in the old version, {} in the new",
                        step.name,
                        old.action.kind(),
                        new.action.kind()
                    ));
                }
                if let (Action::Group(old_group), Action::Group(new_group)) = (&old.action, &new.action) {
                    if old_group != new_group {
                        reasons.push(format!("step {}: its branches differ between the versions", step.name));
                    }
                }
                let undo = |action: Option<&Action>| action.map_or("none", Action::kind);
                if undo(old.compensation.as_ref()) != undo(new.compensation.as_ref()) {
                    reasons.push(format!(
                        "step {}: its compensation is {} in the old version, {} in the new",
                        step.name,
                        undo(old.compensation.as_ref()),
                        undo(new.compensation.as_ref())
                    ));
                }
            }
        }
    }
    reasons
}

/// The saga's state under the new version: the steps it has started as they are, the rest the
/// new version's, not started. Refused (with every reason) unless the saga goes forward and
/// [`refusals`] finds nothing.
pub fn upgrade(from: &Definition, to: &Definition, state: &SagaState) -> Result<SagaState, Vec<String>> {
    if !matches!(state.status, SagaStatus::Pending | SagaStatus::Executing) {
        return Err(vec![format!(
            "it is {}: only a saga going forward moves (one compensating finishes on its version)",
            state.status.as_str()
        )]);
    }
    let reasons = refusals(from, to, state);
    if !reasons.is_empty() {
        return Err(reasons);
    }
    let kept = started_steps(state);
    let mut moved = state.clone();
    moved.steps = state.steps.iter().take(kept).cloned().collect();
    moved.steps.extend(SagaState::new(to).steps.into_iter().skip(kept));
    Ok(moved)
}

/// How many steps, from the first, the saga has started (done, skipped, failed or under way):
/// the part of its history the new version must match.
fn started_steps(state: &SagaState) -> usize {
    state.steps.iter().rposition(|s: &StepState| s.status != StepStatus::Pending).map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::machine::{Attempt, Outcome, Phase, WaitKind};

    fn definition(steps: serde_json::Value) -> Definition {
        crate::validate_definition("order", &json!({ "steps": steps }), &["core.echo"]).expect("valid")
    }

    fn echo(name: &str) -> serde_json::Value {
        json!({"name": name, "action": {"builtin": "core.echo"}, "compensation": {"builtin": "core.echo"}})
    }

    fn signal(name: &str) -> serde_json::Value {
        json!({"name": name, "action": {"signal": {"name": "go"}}})
    }

    /// A saga of `v1` whose first step succeeded and which waits on its second (a signal).
    fn parked(v1: &Definition) -> SagaState {
        let mut state = SagaState::new(v1);
        let attempt = Attempt {
            phase: Phase::Action,
            step: 0,
            attempt: 1,
            outcome: Outcome::Succeeded(json!({})),
            started_at_ms: 0,
            finished_at_ms: 1,
        };
        state.apply(v1, attempt, 0.5).expect("legal");
        state.begin_wait(v1, WaitKind::Signal { name: "go".into() }, 2, None).expect("waitable");
        state
    }

    #[test]
    fn a_saga_moves_when_what_it_has_run_starts_the_new_version() {
        let v1 = definition(json!([echo("reserve"), signal("approve"), echo("charge")]));
        let v2 = definition(json!([echo("reserve"), signal("approve"), echo("notify"), echo("charge")]));
        let state = parked(&v1);
        let moved = upgrade(&v1, &v2, &state).expect("compatible");
        let names: Vec<&str> = moved.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["reserve", "approve", "notify", "charge"]);
        assert_eq!(moved.steps[..2], state.steps[..2], "what ran is kept as it was");
        assert_eq!(moved.wait, state.wait, "still parked on the same step");
        assert!(moved.steps[2..].iter().all(|s| s.status == StepStatus::Pending));
    }

    #[test]
    fn each_difference_in_what_has_run_is_named() {
        let v1 = definition(json!([echo("reserve"), signal("approve"), echo("charge")]));
        let state = parked(&v1);
        let missing = definition(json!([echo("hold"), signal("approve")]));
        assert_eq!(
            upgrade(&v1, &missing, &state).expect_err("refused"),
            ["step reserve: it has run, and the new version has no such step"]
        );
        let moved = definition(json!([signal("approve"), echo("reserve")]));
        let reasons = upgrade(&v1, &moved, &state).expect_err("refused");
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].starts_with("step reserve: at position 2 in the new version, 1 in the old"), "{reasons:?}");
        let other_kind = definition(json!([echo("reserve"), {"name": "approve", "action": {"builtin": "core.echo"}}]));
        assert_eq!(
            upgrade(&v1, &other_kind, &state).expect_err("refused"),
            ["step approve: a signal action in the old version, builtin in the new"]
        );
        let no_undo = definition(json!([{"name": "reserve", "action": {"builtin": "core.echo"}}, signal("approve")]));
        assert_eq!(
            upgrade(&v1, &no_undo, &state).expect_err("refused"),
            ["step reserve: its compensation is builtin in the old version, none in the new"]
        );
        // What it has not reached may change freely.
        let later = definition(json!([echo("reserve"), signal("approve")]));
        assert!(upgrade(&v1, &later, &state).is_ok());
        // A saga not started yet moves to anything.
        assert!(upgrade(&v1, &missing, &SagaState::new(&v1)).is_ok());
    }

    #[test]
    fn only_a_saga_going_forward_moves() {
        let v1 = definition(json!([echo("reserve"), signal("approve")]));
        let mut state = parked(&v1);
        state.cancel(&v1, 3, 3, false);
        assert_eq!(state.status, SagaStatus::Compensating);
        let reasons = upgrade(&v1, &v1, &state).expect_err("refused");
        assert!(reasons[0].contains("COMPENSATING"), "{reasons:?}");
    }
}
