//! OpenTelemetry traces of sagas (docs/api.md, "Traces"): a root span `saga <definition>` and
//! a child span per step attempt and compensation attempt, whose context participants receive
//! in `traceparent`.
//!
//! Design note. A saga outlives the process that starts it (a takeover continues it elsewhere),
//! so its trace context is not kept anywhere: it is derived from the saga id. The trace id *is*
//! the saga id (a UUIDv7, 128 bits, never zero) and the root span id is its low 64 bits, so any
//! instance names the same parent for the attempts it runs. The root span is exported once,
//! by the instance that commits the terminal status, with the saga's creation as its start; the
//! SDK draws span ids itself, so [`SagaIdGenerator`] hands it the root's ids for that one span.
//! With tracing off (no `SAGAPLANE_OTLP_ENDPOINT`) nothing here runs.

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use saga_core::Phase;
use uuid::Uuid;

/// The tracer name spans are created under.
pub const TRACER_NAME: &str = "sagaplane";

/// The trace id of a saga: its id.
pub fn trace_id(saga_id: Uuid) -> TraceId {
    TraceId::from_bytes(*saga_id.as_bytes())
}

/// The root span id of a saga: its id's low 64 bits (1 if those are zero).
pub fn root_span_id(saga_id: Uuid) -> SpanId {
    let low = saga_id.as_u64_pair().1;
    SpanId::from_bytes(low.max(1).to_be_bytes())
}

/// The root span's context, as the parent of every attempt.
fn root_context(saga_id: Uuid) -> Context {
    let root =
        SpanContext::new(trace_id(saga_id), root_span_id(saga_id), TraceFlags::SAMPLED, true, TraceState::default());
    Context::new().with_remote_span_context(root)
}

thread_local! {
    /// Ids the next span built on this thread takes (the root span's).
    static NEXT_IDS: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// The SDK's id generator: random ids, except for a saga's root span (see the module note).
#[derive(Debug, Default)]
pub struct SagaIdGenerator {
    random: RandomIdGenerator,
}

impl IdGenerator for SagaIdGenerator {
    fn new_trace_id(&self) -> TraceId {
        NEXT_IDS.with(|next| next.get()).map_or_else(|| self.random.new_trace_id(), |(trace, _)| trace)
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_IDS.with(|next| next.get()).map_or_else(|| self.random.new_span_id(), |(_, span)| span)
    }
}

fn system_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Who runs an attempt, for its span's attributes.
pub struct AttemptInfo<'a> {
    pub saga_id: Uuid,
    pub definition: &'a str,
    pub step: &'a str,
    pub phase: Phase,
    pub attempt: u32,
    pub tenant_id: Option<&'a str>,
    pub worker: &'a str,
}

/// An attempt's span, open while it runs.
pub struct AttemptSpan {
    span: opentelemetry::global::BoxedSpan,
    /// `00-<trace id>-<span id>-01`: what the participant receives.
    pub traceparent: String,
}

/// Starts the span of one attempt, a child of the saga's root span.
pub fn attempt_span(info: &AttemptInfo<'_>) -> AttemptSpan {
    let tracer = opentelemetry::global::tracer(TRACER_NAME);
    let name = match info.phase {
        Phase::Action => format!("step {}", info.step),
        Phase::Compensation => format!("compensate {}", info.step),
    };
    let mut attributes = vec![
        KeyValue::new("saga.id", info.saga_id.to_string()),
        KeyValue::new("saga.definition", info.definition.to_string()),
        KeyValue::new("saga.step", info.step.to_string()),
        KeyValue::new("saga.attempt", i64::from(info.attempt)),
        KeyValue::new("saga.phase", if info.phase == Phase::Action { "action" } else { "compensation" }),
        KeyValue::new("saga.worker", info.worker.to_string()),
    ];
    if let Some(tenant) = info.tenant_id {
        attributes.push(KeyValue::new("tenant.id", tenant.to_string()));
    }
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Client)
        .with_attributes(attributes)
        .start_with_context(&tracer, &root_context(info.saga_id));
    let context = span.span_context();
    let traceparent = format!("00-{}-{}-01", context.trace_id(), context.span_id());
    AttemptSpan { span, traceparent }
}

impl AttemptSpan {
    /// Ends the span; `error` marks it failed.
    pub fn end(mut self, error: Option<&str>) {
        if let Some(message) = error {
            self.span.set_status(Status::error(message.to_string()));
        }
        self.span.end();
    }
}

/// The finished saga's root span, from its creation to `ended_at_ms`.
pub struct RootInfo<'a> {
    pub saga_id: Uuid,
    pub definition: &'a str,
    pub tenant_id: Option<&'a str>,
    pub worker: &'a str,
    pub status: &'a str,
    pub created_at_ms: i64,
    pub ended_at_ms: i64,
}

/// Exports the saga's root span (once, by the instance that finished it).
pub fn root_span(info: &RootInfo<'_>) {
    let tracer = opentelemetry::global::tracer(TRACER_NAME);
    let mut attributes = vec![
        KeyValue::new("saga.id", info.saga_id.to_string()),
        KeyValue::new("saga.definition", info.definition.to_string()),
        KeyValue::new("saga.status", info.status.to_string()),
        KeyValue::new("saga.worker", info.worker.to_string()),
    ];
    if let Some(tenant) = info.tenant_id {
        attributes.push(KeyValue::new("tenant.id", tenant.to_string()));
    }
    let builder = tracer
        .span_builder(format!("saga {}", info.definition))
        .with_kind(SpanKind::Internal)
        .with_start_time(system_time(info.created_at_ms))
        .with_attributes(attributes);
    NEXT_IDS.with(|next| next.set(Some((trace_id(info.saga_id), root_span_id(info.saga_id)))));
    let mut span = tracer.build_with_context(builder, &Context::new());
    NEXT_IDS.with(|next| next.set(None));
    if info.status != "COMPLETED" {
        span.set_status(Status::error(format!("the saga ended {}", info.status)));
    }
    span.end_with_timestamp(system_time(info.ended_at_ms));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sagas_trace_ids_come_from_its_id() {
        let id = Uuid::parse_str("0190c0c0-1234-7abc-8def-0123456789ab").expect("uuid");
        assert_eq!(trace_id(id).to_string(), "0190c0c012347abc8def0123456789ab");
        assert_eq!(root_span_id(id).to_string(), "8def0123456789ab");
        assert_eq!(root_span_id(Uuid::from_u64_pair(5, 0)).to_string(), "0000000000000001");
    }
}
