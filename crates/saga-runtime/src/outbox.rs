//! The events a saga transition reports (docs/api.md, "Events out"), written by the commit that
//! makes the transition: `saga.completed|compensated|failed` when the saga reaches that status, and
//! the custom event of a `core.emit` step when the step succeeds. Written only if the commit is.

use saga_core::{Action, Definition, HistoryEvent, SagaState};
use saga_store::{OutboxEvent, SagaRecord};
use serde_json::{json, Value};

use crate::executor::builtin::EMIT;

/// The outbox events of a transition about to be committed with `events`.
pub(crate) fn events_of(
    record: &SagaRecord,
    definition: &Definition,
    state: &SagaState,
    events: &[HistoryEvent],
) -> Vec<OutboxEvent> {
    let tenant = record.tenant_id.as_deref();
    let mut outbox = Vec::new();
    for event in events {
        let saga_type = match event.kind.as_str() {
            "saga_completed" => Some("saga.completed"),
            "saga_compensated" => Some("saga.compensated"),
            "saga_failed" => Some("saga.failed"),
            _ => None,
        };
        if let Some(event_type) = saga_type {
            let data = json!({
                "saga_id": record.id,
                "definition": record.definition,
                "version": record.version,
                "status": state.status.as_str(),
                "tenant_id": record.tenant_id,
                "error": state.error,
            });
            outbox.push(OutboxEvent::new(event_type, tenant, data, event.at_ms));
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
            if let Some(event_type) = output.get("type").and_then(Value::as_str) {
                let data = output.get("data").cloned().unwrap_or(Value::Null);
                let mut emitted = OutboxEvent::new(event_type, tenant, data, event.at_ms);
                emitted.expires_at_ms = output.get("expires_at_ms").and_then(Value::as_i64);
                outbox.push(emitted);
            }
        }
    }
    outbox
}
