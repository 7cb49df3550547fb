//! Child sagas, against the binary: a `saga` step starts its child (id derived from the parent's
//! id and the step), waits for it with no worker held, and takes its end as the step's outcome;
//! compensating the step compensates a COMPLETED child, cancelling the parent cancels a running
//! one, and a child that was compensated fails its step with nothing left to undo.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::fast_definition;
use test_support::{eventually, App, Backend, Participant};
use uuid::Uuid;

use crate::BIN;

const WAIT: Duration = Duration::from_secs(30);

/// `reserve` (undone by `/release`), then a signal `go` the tests use to hold the child open.
async fn apply_child(app: &App) {
    let child = fast_definition(json!([
        {"name": "reserve", "action": {"http": {"url": "{{ vars.P }}/reserve", "body": {"sku": "{{ input.sku }}"}}},
         "compensation": {"http": {"url": "{{ vars.P }}/release"}}},
        {"name": "go", "when": "{{ input.hold }}", "action": {"signal": {"name": "go"}}},
        {"name": "check", "action": {"builtin": "core.fail", "input": {"message": "out of stock"}},
         "when": "{{ input.sku == 'none' }}"}
    ]));
    assert_eq!(app.put_definition("stock", &child).await.0, 201);
}

/// `prepare`, the child `stock`, then `finish`, which fails when the input says so.
async fn apply_parent(app: &App) {
    let parent = fast_definition(json!([
        {"name": "prepare", "action": {"builtin": "core.echo"}},
        {"name": "stock", "action": {"saga": {"definition": "stock",
            "input": {"sku": "{{ input.sku }}", "hold": "{{ input.hold }}"}}}},
        {"name": "finish", "action": {"builtin": "core.fail", "input": {"message": "refused"}},
         "when": "{{ input.fail_after }}"}
    ]));
    assert_eq!(app.put_definition("order", &parent).await.0, 201);
}

async fn started(participant: &Participant, backend: Backend) -> App {
    let app = App::spawn(BIN, backend, &[("SAGAPLANE_VAR_P", participant.url.clone())]).await;
    apply_child(&app).await;
    apply_parent(&app).await;
    app
}

fn child_id_of(saga: &Value) -> String {
    let parent: Uuid = saga["id"].as_str().and_then(|id| id.parse().ok()).expect("a saga id");
    saga_runtime::child_saga_id(parent, "stock").to_string()
}

async fn a_child_saga_is_the_steps_outcome(backend: Backend) {
    let participant = Participant::start().await;
    let app = started(&participant, backend).await;
    let id = app.start("order", json!({"sku": "a-1", "hold": false, "fail_after": false})).await;
    let saga = app.wait_terminal(&id, WAIT).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    let child_id = child_id_of(&saga);
    assert_eq!(saga["output"]["stock"]["saga_id"], json!(child_id), "{saga}");
    assert!(saga["output"]["stock"]["output"]["reserve"].is_object(), "the child's output: {saga}");
    let child = app.saga(&child_id).await;
    assert_eq!(child["status"], "COMPLETED", "{child}");
    assert_eq!(child["parent"], json!({"saga_id": id, "step": "stock"}), "{child}");
    assert_eq!(child["input"], json!({"sku": "a-1", "hold": false}), "{child}");
    assert!(app.event_types(&id).await.contains(&"child_saga_started".to_string()));
    assert_eq!(participant.requests("/reserve").len(), 1);
    assert_eq!(participant.requests("/release").len(), 0);
}
crate::on_both_backends!(a_child_saga_is_the_steps_outcome);

/// A step after the child fails: the parent compensates, and compensating the `stock` step
/// compensates the COMPLETED child (its `reserve` released) before the parent ends.
async fn compensating_the_step_compensates_a_completed_child(backend: Backend) {
    let participant = Participant::start().await;
    let app = started(&participant, backend).await;
    let id = app.start("order", json!({"sku": "b-2", "hold": false, "fail_after": true})).await;
    let saga = app.wait_terminal(&id, WAIT).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(crate::step_status(&saga, "stock"), json!("COMPENSATED"), "{saga}");
    let child = app.saga(&child_id_of(&saga)).await;
    assert_eq!(child["status"], "COMPENSATED", "{child}");
    assert_eq!(crate::step_status(&child, "reserve"), json!("COMPENSATED"), "{child}");
    assert!(child["error"]["message"].as_str().unwrap_or_default().contains(&id), "{child}");
    assert_eq!(participant.requests("/release").len(), 1);
    let types = app.event_types(child["id"].as_str().unwrap_or_default()).await;
    assert!(types.contains(&"saga_compensation_requested".to_string()), "{types:?}");
}
crate::on_both_backends!(compensating_the_step_compensates_a_completed_child);

/// The child waits on a signal; cancelling the parent cancels the child, which compensates its
/// `reserve`; then the parent ends COMPENSATED.
async fn cancelling_the_parent_cancels_its_child(backend: Backend) {
    let participant = Participant::start().await;
    let app = started(&participant, backend).await;
    let id = app.start("order", json!({"sku": "c-3", "hold": true, "fail_after": false})).await;
    let blockers = eventually("the child blocker", WAIT, || async {
        let (_, _, body) = app.send(app.request(Method::GET, &format!("/v1/sagas/{id}/blockers"))).await;
        (body["blockers"][0]["kind"] == "child").then_some(body)
    })
    .await;
    let saga = app.saga(&id).await;
    let child_id = child_id_of(&saga);
    assert_eq!(blockers["blockers"][0]["saga_id"], json!(child_id), "{blockers}");
    assert_eq!(blockers["runnable"], false, "no worker held while it waits: {blockers}");
    eventually("the child waiting for its signal", WAIT, || async {
        (crate::step_status(&app.saga(&child_id).await, "go") == "EXECUTING").then_some(())
    })
    .await;

    let (status, _, body) = app.send(app.request(Method::POST, &format!("/v1/sagas/{id}/cancel"))).await;
    assert_eq!(status, 202, "{body}");
    let saga = app.wait_terminal(&id, WAIT).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(saga["error"]["kind"], "cancelled", "{saga}");
    let child = app.saga(&child_id).await;
    assert_eq!(child["status"], "COMPENSATED", "the child ended before its parent: {child}");
    assert_eq!(child["error"]["kind"], "cancelled", "{child}");
    assert_eq!(participant.requests("/release").len(), 1);
}
crate::on_both_backends!(cancelling_the_parent_cancels_its_child);

/// The child fails and compensates itself: the step fails with it, definitely (nothing left to
/// undo), and the parent compensates the steps before it.
async fn a_compensated_child_fails_its_step(backend: Backend) {
    let participant = Participant::start().await;
    let app = started(&participant, backend).await;
    let id = app.start("order", json!({"sku": "none", "hold": false, "fail_after": false})).await;
    let saga = app.wait_terminal(&id, WAIT).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(crate::step_status(&saga, "stock"), json!("FAILED"), "{saga}");
    let message = saga["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("was compensated") && message.contains("out of stock"), "{saga}");
    assert_eq!(participant.requests("/release").len(), 1, "released once, by the child itself");

    // A definition that does not exist fails the step definitely, naming it.
    let orphan = fast_definition(json!([{"name": "child", "action": {"saga": {"definition": "nowhere"}}}]));
    assert_eq!(app.put_definition("orphan", &orphan).await.0, 201);
    let id = app.start("orphan", json!({})).await;
    let saga = app.wait_terminal(&id, WAIT).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert!(saga["error"]["message"].as_str().unwrap_or_default().contains("nowhere"), "{saga}");
}
crate::on_both_backends!(a_compensated_child_fails_its_step);

/// Checked when the definition is applied: a tenant saga, a compensation that starts a child,
/// a version that is not one.
async fn child_saga_steps_are_validated(backend: Backend) {
    let app = App::spawn(BIN, backend, &[]).await;
    let bad = fast_definition(json!([
        {"name": "a", "action": {"saga": {"definition": "tenant.provision"}}},
        {"name": "b", "action": {"builtin": "core.echo"}, "compensation": {"saga": {"definition": "undo"}}},
        {"name": "c", "action": {"saga": {"definition": "x", "version": 0, "extra": 1}}}
    ]));
    let (status, body) = app.put_definition("bad", &bad).await;
    assert_eq!(status, 422, "{body}");
    let paths: Vec<&str> = body["errors"].as_array().into_iter().flatten().filter_map(|e| e["path"].as_str()).collect();
    assert_eq!(
        paths,
        [
            "/steps/0/action/saga/definition",
            "/steps/1/compensation/saga",
            "/steps/2/action/saga/extra",
            "/steps/2/action/saga/version"
        ],
        "{body}"
    );
}
crate::on_both_backends!(child_saga_steps_are_validated);

/// Past a pivot a child that compensated itself leaves its parent FAILED; the operator's retry
/// starts a new child (the next generation, its own id) instead of taking the old one's end.
async fn a_retry_past_a_pivot_starts_a_new_child(backend: Backend) {
    let participant = Participant::start().await;
    participant.script("/reserve", vec![(422, json!({"error": "out of stock"}))]);
    let app = started(&participant, backend).await;
    let pivoted = fast_definition(json!([
        {"name": "charge", "pivot": true, "action": {"builtin": "core.echo"}},
        {"name": "stock", "action": {"saga": {"definition": "stock", "input": {"sku": "d-4", "hold": false}}}}
    ]));
    assert_eq!(app.put_definition("pivoted", &pivoted).await.0, 201);
    let id = app.start("pivoted", json!({})).await;
    let saga = app.wait_terminal(&id, WAIT).await;
    assert_eq!(saga["status"], "FAILED", "{saga}");
    let first = child_id_of(&saga);
    assert_eq!(app.saga(&first).await["status"], "COMPENSATED");

    participant.script("/reserve", vec![(200, json!({"ok": true}))]);
    let (status, _, body) = app.send(app.request(Method::POST, &format!("/v1/sagas/{id}/retry"))).await;
    assert_eq!(status, 202, "{body}");
    let saga = app.wait_terminal(&id, WAIT).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    let second = saga["output"]["stock"]["saga_id"].as_str().unwrap_or_default().to_string();
    assert_ne!(second, first, "a new child");
    let parent: Uuid = id.parse().expect("an id");
    assert_eq!(second, saga_runtime::child_saga_id(parent, "stock@1").to_string(), "its generation's id");
    assert_eq!(app.saga(&second).await["status"], "COMPLETED");
}
crate::on_both_backends!(a_retry_past_a_pivot_starts_a_new_child);
