//! Traces over OTLP/gRPC to a real collector on loopback: a root span per saga, a child per
//! attempt, the child's context in the participants' `traceparent` (HTTP and gRPC), and a
//! takeover continuing the same trace.

use std::time::Duration;

use serde_json::json;
use test_support::app::fast_definition;
use test_support::otlp::{Collector, ReceivedSpan};
use test_support::{eventually, App, Backend, GrpcParticipant, Participant};

use crate::BIN;

const WAIT: Duration = Duration::from_secs(30);

fn tracing_env(collector: &Collector) -> Vec<(&'static str, String)> {
    vec![("SAGAPLANE_OTLP_ENDPOINT", collector.endpoint.clone()), ("OTEL_BSP_SCHEDULE_DELAY", "200".to_string())]
}

/// The saga's spans once its root span and at least `children` others have arrived.
async fn spans_of(collector: &Collector, saga_id: &str, children: usize) -> (ReceivedSpan, Vec<ReceivedSpan>) {
    let trace_id = saga_id.replace('-', "");
    eventually(&format!("the spans of {saga_id}"), WAIT, || async {
        let spans: Vec<ReceivedSpan> = collector.spans().into_iter().filter(|s| s.trace_id == trace_id).collect();
        let root = spans.iter().find(|s| s.name.starts_with("saga "))?.clone();
        let others: Vec<ReceivedSpan> = spans.into_iter().filter(|s| s.span_id != root.span_id).collect();
        (others.len() >= children).then_some((root, others))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_are_children_of_the_saga_and_participants_get_their_context() {
    let collector = Collector::start().await;
    let participant = Participant::start().await;
    participant.script("/reserve", vec![(503, json!({})), (200, json!({"reserved": true}))]);
    let payments = GrpcParticipant::start().await;
    let mut env = tracing_env(&collector);
    env.push(("SAGAPLANE_VAR_P", participant.url.clone()));
    env.push(("SAGAPLANE_VAR_PAY", payments.endpoint.clone()));
    let app = App::spawn(BIN, Backend::Sqlite, &env).await;
    app.put_definition(
        "traced",
        &fast_definition(json!([
            {"name": "reserve", "action": {"http": {"method": "POST", "url": "{{ vars.P }}/reserve"}}},
            {"name": "charge", "action": {"grpc": {"endpoint": "{{ vars.PAY }}", "service": "payments"}}},
        ])),
    )
    .await;
    let id = app.start("traced", json!({})).await;
    assert_eq!(app.wait_terminal(&id, WAIT).await["status"], "COMPLETED");
    // reserve twice (a 503, then 200), charge once.
    let (root, children) = spans_of(&collector, &id, 3).await;
    assert_eq!(root.name, "saga traced");
    assert_eq!(root.parent_span_id, "", "the root has no parent");
    assert_eq!(root.attribute("saga.id"), Some(id.as_str()));
    assert_eq!(root.attribute("saga.status"), Some("COMPLETED"));
    for child in &children {
        assert_eq!(child.parent_span_id, root.span_id, "{child:?}");
        assert_eq!(child.attribute("saga.id"), Some(id.as_str()));
        assert!(child.attribute("saga.worker").is_some_and(|w| !w.is_empty()), "{child:?}");
        // Within the saga's span (whose ends are the store's millisecond timestamps).
        const MS: u64 = 1_000_000;
        assert!(child.start_unix_nano + MS >= root.start_unix_nano, "{child:?} starts before {root:?}");
        assert!(child.end_unix_nano <= root.end_unix_nano + MS, "{child:?} ends after {root:?}");
    }
    let reserve: Vec<&ReceivedSpan> = children.iter().filter(|s| s.name == "step reserve").collect();
    let attempts: Vec<Option<&str>> = reserve.iter().map(|s| s.attribute("saga.attempt")).collect();
    assert_eq!(reserve.len(), 2, "one span per attempt: {attempts:?}");
    let traceparent = |span: &ReceivedSpan| format!("00-{}-{}-01", span.trace_id, span.span_id);
    let sent: Vec<String> = participant.requests("/reserve").iter().map(|r| r.headers["traceparent"].clone()).collect();
    let mut expected: Vec<String> = reserve.iter().map(|s| traceparent(s)).collect();
    let mut got = sent.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "each HTTP attempt carried its own span's context");
    let charge = children.iter().find(|s| s.name == "step charge").expect("the charge span");
    let calls = payments.calls("execute");
    assert_eq!(calls[0].metadata.get("traceparent"), Some(&traceparent(charge)), "gRPC metadata too");
    assert_eq!(charge.attribute("saga.step"), Some("charge"));
}

/// A saga whose instance dies mid-step is finished by another, in the same trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_over_saga_continues_its_trace() {
    let collector = Collector::start().await;
    let participant = Participant::start().await;
    participant.delay("/slow", vec![Duration::from_secs(60)]);
    let database_url = Backend::Postgres.fresh_url().await;
    let mut env = tracing_env(&collector);
    env.push(("SAGAPLANE_VAR_P", participant.url.clone()));
    env.push(("SAGAPLANE_LEASE_TTL", "2s".to_string()));
    let first_env: Vec<(&str, String)> =
        env.iter().cloned().chain([("SAGAPLANE_WORKER_ID", "first".to_string())]).collect();
    let mut first = App::spawn_on(BIN, &database_url, &["server"], &first_env).await;
    first
        .put_definition(
            "slow",
            &fast_definition(json!([{"name": "call", "timeout": "2m",
                "action": {"http": {"method": "POST", "url": "{{ vars.P }}/slow"}}}])),
        )
        .await;
    let id = first.start("slow", json!({})).await;
    eventually("the first attempt", WAIT, || async { (!participant.requests("/slow").is_empty()).then_some(()) }).await;
    first.child_mut().start_kill().expect("SIGKILL");
    let _ = first.child_mut().wait().await;

    let second_env: Vec<(&str, String)> =
        env.iter().cloned().chain([("SAGAPLANE_WORKER_ID", "second".to_string())]).collect();
    let second = App::spawn_on(BIN, &database_url, &["server"], &second_env).await;
    assert_eq!(second.wait_terminal(&id, WAIT).await["status"], "COMPLETED");
    let (root, children) = spans_of(&collector, &id, 1).await;
    assert_eq!(root.attribute("saga.worker"), Some("second"), "the instance that finished it exports the root");
    let trace_id = id.replace('-', "");
    let sent: Vec<String> = participant.requests("/slow").iter().map(|r| r.headers["traceparent"].clone()).collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent.iter().all(|t| t.starts_with(&format!("00-{trace_id}-"))), "one trace across instances: {sent:?}");
    assert_ne!(sent[0], sent[1], "each attempt its own span");
    let retried = children.iter().find(|s| s.attribute("saga.worker") == Some("second")).expect("the second's span");
    assert_eq!(retried.parent_span_id, root.span_id);
    assert_eq!(sent[1], format!("00-{}-{}-01", retried.trace_id, retried.span_id));
}
