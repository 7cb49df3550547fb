//! A saga and its history as JSON, the shape the API answers with (docs/api.md, "Sagas") and the
//! archive writes: one builder, so an exported or archived saga reads like a fetched one.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::{EventRecord, SagaRecord};

/// RFC 3339 UTC with milliseconds.
pub fn timestamp(ms: i64) -> Value {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => Value::String(t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        None => Value::Null,
    }
}

pub fn optional_timestamp(ms: Option<i64>) -> Value {
    ms.map(timestamp).unwrap_or(Value::Null)
}

/// A saga (`GET /v1/sagas/{id}`).
pub fn saga(record: &SagaRecord) -> Value {
    let state = &record.state;
    let steps: Vec<Value> = state
        .steps
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "status": s.status,
                "attempts": s.attempts,
                "compensation_attempts": s.compensation_attempts,
                "output": s.output,
                "error": s.error,
                "started_at": optional_timestamp(s.started_at_ms),
                "finished_at": optional_timestamp(s.finished_at_ms),
                "compensated_at": optional_timestamp(s.compensated_at_ms),
            })
        })
        .collect();
    json!({
        "id": record.id,
        "definition": record.definition,
        "version": record.version,
        "status": record.status.as_str(),
        "tenant_id": record.tenant_id,
        "priority": record.priority,
        "input": record.input,
        "output": state.output(),
        "error": state.error,
        "steps": steps,
        "progress": state.progress(),
        "parent": state.parent.as_ref().map(|p| json!({"saga_id": p.saga_id, "step": p.step})),
        "lease_owner": record.lease_owner,
        "created_at": timestamp(record.created_at_ms),
        "updated_at": timestamp(record.updated_at_ms),
        "completed_at": optional_timestamp(record.completed_at_ms),
    })
}

/// One history entry (`GET /v1/sagas/{id}/events`).
pub fn event(record: &EventRecord) -> Value {
    let mut data = record.data.clone();
    // A time the engine records in epoch ms is shown as RFC 3339 beside it.
    if let Some(until_ms) = data.get("until_ms").and_then(Value::as_i64) {
        data["until"] = timestamp(until_ms);
    }
    json!({
        "seq": record.seq,
        "type": record.kind,
        "step": record.step,
        "attempt": record.attempt,
        "worker": record.worker,
        "data": data,
        "at": timestamp(record.at_ms),
    })
}

/// A saga with its whole history, as one archive or export line: the saga's fields and
/// `history`.
pub fn archived(record: &SagaRecord, history: &[EventRecord]) -> Value {
    let mut line = saga(record);
    line["history"] = Value::Array(history.iter().map(event).collect());
    line
}
