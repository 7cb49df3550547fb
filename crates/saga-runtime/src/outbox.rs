//! Which events a saga transition reports, written by the commit that makes the transition:
//! `saga.completed|compensated|failed` when the saga reaches that status, and the custom event of
//! a `core.emit` step when the step succeeds. Written only if the commit is; the events themselves
//! are built by `saga_store::events`. A branch of a `parallel` or `for_each` group is a part of
//! its parent, not a saga anyone started: its end is reported by its parent's, not by a
//! `saga.*` event of its own (its `core.emit` events still go out).

use saga_core::{Action, Definition, HistoryEvent, SagaState};
use saga_store::{OutboxEvent, SagaRecord};

use crate::executor::builtin::EMIT;

/// The outbox events of a transition about to be committed with `events`.
pub(crate) fn events_of(
    record: &SagaRecord,
    definition: &Definition,
    state: &SagaState,
    events: &[HistoryEvent],
) -> Vec<OutboxEvent> {
    let tenant = record.tenant_id.as_deref();
    let branch = state.parent.as_ref().is_some_and(|p| p.branch.is_some());
    let mut outbox = Vec::new();
    for event in events {
        if let Some(ended) = saga_store::events::saga_ended(record, state, &event.kind, event.at_ms) {
            if !branch {
                outbox.push(ended);
            }
            continue;
        }
        if event.kind != "step_succeeded" {
            continue;
        }
        let Some(index) = definition.steps.iter().position(|s| Some(s.name.as_str()) == event.step.as_deref()) else {
            continue;
        };
        let emits = matches!(&definition.steps[index].action, Action::Builtin(b) if b.name == EMIT);
        let output = state.steps.get(index).and_then(|s| s.output.as_ref());
        if let (true, Some(output)) = (emits, output) {
            outbox.extend(saga_store::events::emitted(output, tenant, event.at_ms));
        }
    }
    outbox
}
