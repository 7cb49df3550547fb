//! Saga semantics through the API: outputs, retries, compensation, operator retry, versions.

use std::time::Duration;

use serde_json::{json, Value};
use test_support::app::fast_definition;
use test_support::{App, Backend, Participant};

use crate::{on_both_backends, BIN};

const TERMINAL_WAIT: Duration = Duration::from_secs(30);

async fn app_with(backend: Backend, participant: &Participant) -> App {
    App::spawn(BIN, backend, &[("SAGAPLANE_VAR_P", participant.url.clone())]).await
}

fn http_step(name: &str, path: &str, compensation: Option<&str>) -> Value {
    let mut step = json!({"name": name, "action": {"http": {"method": "POST", "url": format!("{{{{ vars.P }}}}{path}"), "body": {"saga": "{{ saga.id }}"}}}});
    if let Some(undo) = compensation {
        step["compensation"] = json!({"http": {"method": "POST", "url": format!("{{{{ vars.P }}}}{undo}")}});
    }
    step
}

fn step_statuses(saga: &Value) -> Vec<String> {
    saga["steps"].as_array().into_iter().flatten().map(|s| s["status"].as_str().unwrap_or("").to_string()).collect()
}

async fn happy_path_passes_outputs_forward(backend: Backend) {
    let participant = Participant::start().await;
    participant.script("/orders", vec![(201, json!({"id": "o-17", "total": 40}))]);
    let app = app_with(backend, &participant).await;
    let definition = fast_definition(json!([
        {"name": "create_order",
         "action": {"http": {"method": "POST", "url": "{{ vars.P }}/orders", "body": {"customer": "{{ input.customer_id }}", "count": "{{ input.count }}"}}},
         "compensation": {"http": {"url": "{{ vars.P }}/orders/{{ steps.create_order.output.id }}/cancel"}}},
        {"name": "confirm", "action": {"http": {"method": "PUT", "url": "{{ vars.P }}/orders/{{ steps.create_order.output.id }}/confirm", "headers": {"X-Tenant": "{{ tenant_id }}"}}}},
        {"name": "note", "action": {"builtin": "core.echo", "input": {"order": "{{ steps.create_order.output.id }}", "total": "{{ steps.create_order.output.total }}"}}},
    ]));
    assert_eq!(app.put_definition("order", &definition).await.0, 201);
    let id = app.start("order", json!({"customer_id": "c-9", "count": 2})).await;
    let saga = app.wait_terminal(&id, TERMINAL_WAIT).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert_eq!(saga["output"]["note"], json!({"order": "o-17", "total": 40}));
    assert_eq!(saga["progress"]["percent"], 100);
    assert!(saga["completed_at"].is_string());
    let create = participant.requests("/orders");
    assert_eq!(create.len(), 1);
    assert_eq!(create[0].body, json!({"customer": "c-9", "count": 2}), "templates keep JSON types");
    assert_eq!(create[0].headers["idempotency-key"], format!("{id}/create_order/action"));
    assert_eq!(create[0].headers["x-saga-id"], id);
    assert_eq!(create[0].headers["x-saga-step"], "create_order");
    assert_eq!(create[0].headers["x-saga-attempt"], "1");
    assert_eq!(create[0].headers["x-saga-fencing-token"], "1", "the first driver's token");
    assert!(create[0].headers["traceparent"].starts_with("00-"), "traceparent");
    let confirm = participant.requests("/orders/o-17/confirm");
    assert_eq!(confirm.len(), 1, "step output fed the next step's URL");
    assert_eq!(confirm[0].method, "PUT");
    assert!(participant.requests("/orders/o-17/cancel").is_empty(), "nothing compensated");
    let types = app.event_types(&id).await;
    assert_eq!(types.first().map(String::as_str), Some("saga_created"));
    assert_eq!(types.last().map(String::as_str), Some("saga_completed"));
    assert!(types.contains(&"lease_acquired".to_string()));
}
on_both_backends!(happy_path_passes_outputs_forward);

async fn definite_failure_compensates_in_reverse(backend: Backend) {
    let participant = Participant::start().await;
    participant.script("/c", vec![(400, json!({"error": "card declined"}))]);
    let app = app_with(backend, &participant).await;
    let definition = fast_definition(json!([
        http_step("a", "/a", Some("/a/undo")),
        http_step("b", "/b", Some("/b/undo")),
        http_step("c", "/c", Some("/c/undo")),
        http_step("d", "/d", Some("/d/undo")),
    ]));
    app.put_definition("rollback", &definition).await;
    let id = app.start("rollback", json!({})).await;
    let saga = app.wait_terminal(&id, TERMINAL_WAIT).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(saga["error"]["kind"], "non_retryable");
    assert_eq!(saga["error"]["step"], "c");
    assert_eq!(step_statuses(&saga), vec!["COMPENSATED", "COMPENSATED", "FAILED", "SKIPPED"]);
    let order: Vec<String> = participant.all_requests().into_iter().map(|r| r.path).collect();
    assert_eq!(order, vec!["/a", "/b", "/c", "/b/undo", "/a/undo"], "reverse order, failing step not compensated");
    let undo = participant.requests("/b/undo");
    assert_eq!(undo[0].headers["idempotency-key"], format!("{id}/b/compensation"));
    assert_eq!(participant.requests("/c").len(), 1, "a definite failure is not retried");
}
on_both_backends!(definite_failure_compensates_in_reverse);

async fn transient_errors_retry_with_one_key_and_growing_gaps(backend: Backend) {
    let participant = Participant::start().await;
    participant.script("/flaky", vec![(503, json!({})), (503, json!({})), (200, json!({"ok": true}))]);
    let app = app_with(backend, &participant).await;
    app.put_definition("flaky", &fast_definition(json!([http_step("flaky", "/flaky", None)]))).await;
    let id = app.start("flaky", json!({})).await;
    let saga = app.wait_terminal(&id, TERMINAL_WAIT).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert_eq!(saga["steps"][0]["attempts"], 3);
    let seen = participant.requests("/flaky");
    assert_eq!(seen.len(), 3);
    let keys: Vec<&str> = seen.iter().map(|r| r.headers["idempotency-key"].as_str()).collect();
    assert!(keys.iter().all(|k| *k == keys[0]), "idempotency key changed: {keys:?}");
    let attempts: Vec<&str> = seen.iter().map(|r| r.headers["x-saga-attempt"].as_str()).collect();
    assert_eq!(attempts, vec!["1", "2", "3"]);
    let first_gap = seen[1].at - seen[0].at;
    let second_gap = seen[2].at - seen[1].at;
    assert!(first_gap >= Duration::from_millis(100), "first gap {first_gap:?}");
    assert!(second_gap >= Duration::from_millis(200), "second gap {second_gap:?}");
    assert!(second_gap > first_gap, "gaps must grow: {first_gap:?} then {second_gap:?}");
    let types = app.event_types(&id).await;
    assert_eq!(types.iter().filter(|t| *t == "step_retry_scheduled").count(), 2);
}
on_both_backends!(transient_errors_retry_with_one_key_and_growing_gaps);

async fn exhausted_retries_compensate_the_ambiguous_step(backend: Backend) {
    let participant = Participant::start().await;
    participant.script("/b", vec![(503, json!({}))]);
    let app = app_with(backend, &participant).await;
    let definition =
        fast_definition(json!([http_step("a", "/a", Some("/a/undo")), http_step("b", "/b", Some("/b/undo"))]));
    app.put_definition("ambiguous", &definition).await;
    let id = app.start("ambiguous", json!({})).await;
    let saga = app.wait_terminal(&id, TERMINAL_WAIT).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(saga["error"]["kind"], "retries_exhausted");
    assert_eq!(participant.requests("/b").len(), 3);
    assert_eq!(step_statuses(&saga), vec!["COMPENSATED", "COMPENSATED"]);
    let undo_order: Vec<String> =
        participant.all_requests().into_iter().map(|r| r.path).filter(|p| p.ends_with("/undo")).collect();
    assert_eq!(undo_order, vec!["/b/undo", "/a/undo"], "the ambiguous step is compensated first");
}
on_both_backends!(exhausted_retries_compensate_the_ambiguous_step);

async fn failing_compensation_waits_for_operator_retry(backend: Backend) {
    let participant = Participant::start().await;
    participant.script("/a/undo", vec![(500, json!({"error": "down"}))]);
    participant.script("/b", vec![(422, json!({"error": "rejected"}))]);
    let app = app_with(backend, &participant).await;
    let definition =
        fast_definition(json!([http_step("a", "/a", Some("/a/undo")), http_step("b", "/b", Some("/b/undo"))]));
    app.put_definition("stuck", &definition).await;
    let id = app.start("stuck", json!({})).await;
    let saga = app.wait_terminal(&id, TERMINAL_WAIT).await;
    assert_eq!(saga["status"], "FAILED", "{saga}");
    assert_eq!(saga["error"]["kind"], "compensation_failed");
    assert_eq!(saga["error"]["step"], "a");
    assert_eq!(saga["steps"][0]["status"], "COMPENSATION_FAILED");
    assert_eq!(participant.requests("/a/undo").len(), 3);
    // The participant heals; the operator retries.
    participant.script("/a/undo", vec![(200, json!({}))]);
    let (status, _, body) = app.send(app.request(reqwest::Method::POST, &format!("/v1/sagas/{id}/retry"))).await;
    assert_eq!(status, 202, "{body}");
    let saga = app.wait_terminal(&id, TERMINAL_WAIT).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(saga["error"]["kind"], "non_retryable", "the original cause shows again");
    assert_eq!(participant.requests("/a/undo").len(), 4);
    let (status, _, _) = app.send(app.request(reqwest::Method::POST, &format!("/v1/sagas/{id}/retry"))).await;
    assert_eq!(status, 409, "only FAILED sagas can be retried");
    assert!(app.event_types(&id).await.contains(&"saga_retried".to_string()));
}
on_both_backends!(failing_compensation_waits_for_operator_retry);

async fn compensation_404_counts_as_compensated(backend: Backend) {
    let participant = Participant::start().await;
    participant.script("/a/undo", vec![(404, json!({}))]);
    participant.script("/b", vec![(400, json!({}))]);
    let app = app_with(backend, &participant).await;
    let definition = fast_definition(json!([http_step("a", "/a", Some("/a/undo")), http_step("b", "/b", None)]));
    app.put_definition("gone", &definition).await;
    let id = app.start("gone", json!({})).await;
    let saga = app.wait_terminal(&id, TERMINAL_WAIT).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(step_statuses(&saga), vec!["COMPENSATED", "FAILED"]);
    assert_eq!(participant.requests("/a/undo").len(), 1, "404 is final, not retried");
}
on_both_backends!(compensation_404_counts_as_compensated);

async fn a_saga_finishes_on_the_version_it_started_with(backend: Backend) {
    let participant = Participant::start().await;
    let app = app_with(backend, &participant).await;
    let v1 = fast_definition(json!([
        {"name": "wait", "action": {"builtin": "core.sleep", "input": {"duration": "1500ms"}}},
        {"name": "v1_only", "action": {"builtin": "core.echo", "input": {"version": 1}}},
    ]));
    assert_eq!(app.put_definition("evolving", &v1).await.0, 201);
    let old = app.start("evolving", json!({})).await;
    let v2 = fast_definition(json!([{"name": "v2_only", "action": {"builtin": "core.echo", "input": {"version": 2}}}]));
    let (status, body) = app.put_definition("evolving", &v2).await;
    assert_eq!((status, body["version"].clone()), (201, json!(2)));
    let new = app.start("evolving", json!({})).await;
    let old = app.wait_terminal(&old, TERMINAL_WAIT).await;
    let new = app.wait_terminal(&new, TERMINAL_WAIT).await;
    assert_eq!(old["version"], 1);
    assert_eq!(old["output"]["v1_only"], json!({"version": 1}), "{old}");
    assert_eq!(new["version"], 2);
    assert_eq!(new["output"], json!({"v2_only": {"version": 2}}));
}
on_both_backends!(a_saga_finishes_on_the_version_it_started_with);

async fn idempotent_start(backend: Backend) {
    let participant = Participant::start().await;
    let app = app_with(backend, &participant).await;
    app.put_definition("echo", &fast_definition(json!([{"name": "e", "action": {"builtin": "core.echo"}}]))).await;
    let body = json!({"definition": "echo", "input": {"order": 1}});
    let post = |key: &str, body: &Value| {
        app.request(reqwest::Method::POST, "/v1/sagas").header("Idempotency-Key", key).json(body)
    };
    let (first_status, first_headers, first) = app.send(post("k-1", &body)).await;
    assert_eq!(first_status, 201, "{first}");
    assert!(first_headers.get("idempotent-replayed").is_none());
    let (status, headers, replay) = app.send(post("k-1", &body)).await;
    assert_eq!(status, 200, "{replay}");
    assert_eq!(headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    assert_eq!(replay["id"], first["id"]);
    let (status, headers, conflict) =
        app.send(post("k-1", &json!({"definition": "echo", "input": {"order": 2}}))).await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(headers["content-type"], "application/problem+json");
    let (status, _, _) = app.send(post(&"k".repeat(256), &body)).await;
    assert_eq!(status, 400);
    let (status, _, _) = app.send(post(&"k".repeat(255), &body)).await;
    assert_eq!(status, 201, "255 characters is allowed");
    let (_, _, list) = app.send(app.request(reqwest::Method::GET, "/v1/sagas")).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2), "exactly two sagas exist");
}
on_both_backends!(idempotent_start);

async fn attempt_timeouts_retry_and_connections_are_reused(backend: Backend) {
    let participant = Participant::start().await;
    participant.delay("/slow", vec![Duration::from_millis(1500)]);
    let app = app_with(backend, &participant).await;
    let definition = fast_definition(json!([
        http_step("first", "/first", None),
        {"name": "slow", "timeout": "300ms", "action": {"http": {"url": "{{ vars.P }}/slow"}}},
        http_step("last", "/last", None),
    ]));
    app.put_definition("timeouts", &definition).await;
    let id = app.start("timeouts", json!({})).await;
    let saga = app.wait_terminal(&id, TERMINAL_WAIT).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert_eq!(saga["steps"][1]["attempts"], 2, "the timed-out attempt was retried");
    let events = app.events(&id).await;
    let timed_out = events.iter().find(|e| e["type"] == "step_failed").expect("a failed attempt");
    assert!(timed_out["data"]["message"].as_str().is_some_and(|m| m.contains("timed out")), "{timed_out}");
    assert_eq!(timed_out["data"]["retryable"], true);
    // Pooled connections: /first's connection carried the first /slow attempt (dropped when it
    // timed out); the second /slow attempt's connection then carried /last.
    let first = participant.requests("/first");
    let slow = participant.requests("/slow");
    let last = participant.requests("/last");
    assert_eq!(slow.len(), 2);
    assert_eq!(first[0].peer, slow[0].peer, "connection not reused");
    assert_eq!(slow[1].peer, last[0].peer, "connection not reused");
    assert_ne!(slow[0].peer, slow[1].peer, "a timed-out connection must not be reused");
}
on_both_backends!(attempt_timeouts_retry_and_connections_are_reused);

async fn start_and_wait_in_one_request(backend: Backend) {
    let participant = Participant::start().await;
    let app = app_with(backend, &participant).await;
    app.put_definition("quick", &fast_definition(json!([http_step("a", "/a", None), http_step("b", "/b", None)])))
        .await;
    let request =
        app.request(reqwest::Method::POST, "/v1/sagas?wait=10s").json(&json!({"definition": "quick", "input": {}}));
    let (status, _, saga) = app.send(request).await;
    assert_eq!(status, 201, "{saga}");
    assert_eq!(saga["status"], "COMPLETED", "answered only once terminal: {saga}");
    assert_eq!(saga["output"]["a"], json!({"id": "a"}));
    let bad = app.request(reqwest::Method::POST, "/v1/sagas?wait=soon").json(&json!({"definition": "quick"}));
    assert_eq!(app.send(bad).await.0, 400);
}
on_both_backends!(start_and_wait_in_one_request);

/// Work that arrives while every driver slot is busy starts when a slot frees, not at the next
/// poll: with one slot and a one-minute poll, the second saga follows the first at once.
async fn work_waiting_for_a_slot_starts_when_one_frees(backend: Backend) {
    let env = [("SAGAPLANE_WORKER_CONCURRENCY", "1".to_string()), ("SAGAPLANE_POLL_INTERVAL", "60s".to_string())];
    let app = App::spawn(BIN, backend, &env).await;
    let sleep =
        |duration: &str| json!([{"name": "nap", "action": {"builtin": "core.sleep", "input": {"duration": duration}}}]);
    app.put_definition("nap", &fast_definition(sleep("700ms"))).await;
    let first = app.start("nap", json!({})).await;
    let second = app.start("nap", json!({})).await;
    let started = std::time::Instant::now();
    let saga = app.wait_terminal(&second, Duration::from_secs(30)).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert_eq!(app.saga(&first).await["status"], "COMPLETED");
    // Without the fix this waits for the 60 s poll; 30 s leaves any slow machine room.
    assert!(started.elapsed() < Duration::from_secs(30), "the second saga waited {:?}", started.elapsed());
}
on_both_backends!(work_waiting_for_a_slot_starts_when_one_frees);

async fn a_scheduled_retry_survives_a_restart(backend: Backend) {
    let participant = Participant::start().await;
    participant.script("/flaky", vec![(503, json!({})), (200, json!({"ok": true}))]);
    let env = [("SAGAPLANE_VAR_P", participant.url.clone())];
    let mut first = App::spawn(BIN, backend, &env).await;
    let mut definition = fast_definition(json!([http_step("flaky", "/flaky", None)]));
    definition["defaults"]["retry"]["initial_interval"] = json!("2s");
    definition["defaults"]["retry"]["max_interval"] = json!("2s");
    first.put_definition("patient", &definition).await;
    let id = first.start("patient", json!({})).await;
    test_support::eventually("the retry to be scheduled", TERMINAL_WAIT, || async {
        first.event_types(&id).await.contains(&"step_retry_scheduled".to_string()).then_some(())
    })
    .await;
    // The process dies while the retry waits; a new one on the same database picks it up.
    first.child_mut().start_kill().expect("kill");
    let _ = first.child_mut().wait().await;
    let database_url = first.database_url.clone();
    let second = App::spawn_on(BIN, &database_url, &["server"], &env).await;
    let saga = second.wait_terminal(&id, TERMINAL_WAIT).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    let seen = participant.requests("/flaky");
    assert_eq!(seen.len(), 2);
    assert!(seen[1].at - seen[0].at >= Duration::from_secs(2), "the due time was kept");
    assert_eq!(seen[0].headers["idempotency-key"], seen[1].headers["idempotency-key"]);
}
on_both_backends!(a_scheduled_retry_survives_a_restart);

/// A long-poll in flight does not hold up a graceful shutdown: it answers with the current state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_long_polls_at_once() {
    let participant = Participant::start().await;
    participant.script("/down", vec![(503, json!({}))]);
    let mut app = app_with(Backend::Sqlite, &participant).await;
    let mut definition = fast_definition(json!([http_step("down", "/down", None)]));
    definition["defaults"]["retry"]["initial_interval"] = json!("1m");
    definition["defaults"]["retry"]["max_interval"] = json!("1m");
    app.put_definition("waiting", &definition).await;
    let id = app.start("waiting", json!({})).await;
    let poll = app.request(reqwest::Method::GET, &format!("/v1/sagas/{id}?wait=60s")).send();
    let poll = tokio::spawn(poll);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let pid = app.child_mut().id().expect("pid");
    assert!(std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill").success());
    let exit =
        tokio::time::timeout(Duration::from_secs(20), app.child_mut().wait()).await.expect("exited").expect("status");
    assert!(exit.success(), "{exit:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    let response = poll.await.expect("poll task").expect("long-poll answered before the server closed");
    assert_eq!(response.status().as_u16(), 200);
    let saga: Value = response.json().await.expect("json");
    assert_eq!(saga["status"], "EXECUTING", "{saga}");
}
