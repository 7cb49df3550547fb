//! Durable timers and conditions, against the binary: a `sleep` step parks the saga without a
//! worker until its time, across a restart of the process, shows as a `timer` blocker and ends at
//! once on a cancel; `until` takes a time from the input; a `when:` that renders false skips its
//! step (never sent, never compensated).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::fast_definition;
use test_support::{eventually, App, Backend, Participant};

use crate::BIN;

const WAIT: Duration = Duration::from_secs(30);

async fn blockers(app: &App, id: &str) -> Value {
    let (status, _, body) = app.send(app.request(Method::GET, &format!("/v1/sagas/{id}/blockers"))).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn millis(text: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text.as_str().unwrap_or_default()).expect("a time").timestamp_millis()
}

async fn a_sleep_parks_the_saga_until_its_time(backend: Backend) {
    let app = App::spawn(BIN, backend, &[]).await;
    let nap = fast_definition(json!([
        {"name": "before", "action": {"builtin": "core.echo", "input": {"n": 1}}},
        {"name": "nap", "action": {"sleep": {"duration": "2s"}}},
        {"name": "after", "action": {"builtin": "core.echo", "input": {"slept": "{{ steps.nap.output.slept_until }}"}}}
    ]));
    assert_eq!(app.put_definition("nap", &nap).await.0, 201);
    let started = Instant::now();
    let id = app.start("nap", json!({})).await;
    let body = eventually("the timer blocker", WAIT, || async {
        let body = blockers(&app, &id).await;
        (body["blockers"][0]["kind"] == "timer").then_some(body)
    })
    .await;
    let timer = &body["blockers"][0];
    assert_eq!((&timer["step"], &body["runnable"]), (&json!("nap"), &json!(false)), "{body}");
    assert_eq!(millis(&timer["until"]) - millis(&timer["since"]), 2_000, "{body}");
    assert!(timer["detail"].as_str().unwrap_or_default().contains("sleeping until"), "{body}");

    let saga = app.wait_terminal(&id, WAIT).await;
    assert!(started.elapsed() >= Duration::from_secs(2), "woke after {:?}", started.elapsed());
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert_eq!(saga["output"]["after"]["slept"], saga["output"]["nap"]["slept_until"], "{saga}");
    let waiting: Vec<Value> = app.events(&id).await.into_iter().filter(|e| e["type"] == "step_waiting").collect();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0]["data"]["timer"], true, "{waiting:?}");
}
crate::on_both_backends!(a_sleep_parks_the_saga_until_its_time);

/// A month-long sleep: the process is killed and another started on the same database; the
/// timer is still there, with the same time, and a cancel ends it at once.
async fn a_long_sleep_survives_a_restart_and_a_cancel_ends_it(backend: Backend) {
    let participant = Participant::start().await;
    let env = [("SAGAPLANE_VAR_P", participant.url.clone())];
    let mut app = App::spawn(BIN, backend, &env).await;
    let month = fast_definition(json!([
        {"name": "reserve", "action": {"http": {"url": "{{ vars.P }}/reserve"}},
         "compensation": {"http": {"url": "{{ vars.P }}/release"}}},
        {"name": "cooling_off", "action": {"sleep": {"duration": "30d"}}},
        {"name": "charge", "action": {"http": {"url": "{{ vars.P }}/charge"}}}
    ]));
    assert_eq!(app.put_definition("month", &month).await.0, 201);
    let id = app.start("month", json!({})).await;
    let until = eventually("the timer blocker", WAIT, || async {
        let body = blockers(&app, &id).await;
        (body["blockers"][0]["kind"] == "timer").then(|| body["blockers"][0]["until"].clone())
    })
    .await;
    let days = (millis(&until) - chrono::Utc::now().timestamp_millis()) / 86_400_000;
    assert_eq!(days, 29, "about thirty days from now: {until}");

    app.child_mut().kill().await.expect("kill");
    let database_url = app.database_url.clone();
    let app = App::spawn_on(BIN, &database_url, &["server"], &env).await;
    let body = blockers(&app, &id).await;
    assert_eq!(body["blockers"][0]["until"], until, "the same timer after the restart: {body}");

    let cancelled = Instant::now();
    let (status, _, body) = app.send(app.request(Method::POST, &format!("/v1/sagas/{id}/cancel"))).await;
    assert_eq!(status, 202, "{body}");
    let saga = app.wait_terminal(&id, WAIT).await;
    assert!(cancelled.elapsed() < Duration::from_secs(10), "the cancel took {:?}", cancelled.elapsed());
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(saga["error"]["kind"], "cancelled", "{saga}");
    let steps = saga["steps"].as_array().cloned().unwrap_or_default();
    let status_of = |name: &str| steps.iter().find(|s| s["name"] == name).map(|s| s["status"].clone());
    assert_eq!(status_of("reserve"), Some(json!("COMPENSATED")), "{saga}");
    assert_eq!(status_of("cooling_off"), Some(json!("FAILED")), "{saga}");
    assert_eq!((participant.requests("/release").len(), participant.requests("/charge").len()), (1, 0));
}
crate::on_both_backends!(a_long_sleep_survives_a_restart_and_a_cancel_ends_it);

async fn until_takes_its_time_from_a_template(backend: Backend) {
    let app = App::spawn(BIN, backend, &[]).await;
    let appointment = fast_definition(json!([
        {"name": "wait", "action": {"sleep": {"until": "{{ input.at }}"}}},
        {"name": "done", "action": {"builtin": "core.echo"}}
    ]));
    assert_eq!(app.put_definition("appointment", &appointment).await.0, 201);
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(1_500);
    let text = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let id = app.start("appointment", json!({ "at": text })).await;
    let saga = app.wait_terminal(&id, WAIT).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert!(chrono::Utc::now() >= at, "woke before its time");
    assert_eq!(saga["output"]["wait"]["slept_until"], json!(text), "{saga}");

    // A time already past: at once. Not a time: the step fails definitely, naming what it got.
    let id = app.start("appointment", json!({"at": "2020-01-01T00:00:00Z"})).await;
    assert_eq!(app.wait_terminal(&id, WAIT).await["status"], "COMPLETED");
    let id = app.start("appointment", json!({"at": "next tuesday"})).await;
    let saga = app.wait_terminal(&id, WAIT).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    let message = saga["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("next tuesday") && message.contains("RFC 3339"), "{saga}");

    // Checked when the definition is applied: a literal time that is not one, a compensation.
    let bad = fast_definition(json!([{"name": "wait", "action": {"sleep": {"until": "soon"}},
        "compensation": {"sleep": {"duration": "1s"}}}]));
    let (status, body) = app.put_definition("bad", &bad).await;
    assert_eq!(status, 422, "{body}");
    let paths: Vec<&str> = body["errors"].as_array().into_iter().flatten().filter_map(|e| e["path"].as_str()).collect();
    assert_eq!(paths, ["/steps/0/action/sleep/until", "/steps/0/compensation/sleep"], "{body}");
}
crate::on_both_backends!(until_takes_its_time_from_a_template);

async fn a_false_condition_skips_its_step(backend: Backend) {
    let participant = Participant::start().await;
    let app = App::spawn(BIN, backend, &[("SAGAPLANE_VAR_P", participant.url.clone())]).await;
    let onboarding = fast_definition(json!([
        {"name": "account", "action": {"http": {"url": "{{ vars.P }}/account"}},
         "compensation": {"http": {"url": "{{ vars.P }}/account-undo"}}},
        {"name": "dedicated", "when": "{{ input.plan == 'silo' }}",
         "action": {"http": {"url": "{{ vars.P }}/dedicated"}},
         "compensation": {"http": {"url": "{{ vars.P }}/dedicated-undo"}}},
        {"name": "welcome", "action": {"builtin": "core.fail", "input": {"message": "{{ input.fail }}"}},
         "when": "{{ input.fail }}"}
    ]));
    assert_eq!(app.put_definition("onboarding", &onboarding).await.0, 201);

    let pooled = app.start("onboarding", json!({"plan": "pooled", "fail": ""})).await;
    let saga = app.wait_terminal(&pooled, WAIT).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    let status_of = |saga: &Value, name: &str| {
        saga["steps"].as_array().into_iter().flatten().find(|s| s["name"] == name).map(|s| s["status"].clone())
    };
    assert_eq!(status_of(&saga, "dedicated"), Some(json!("SKIPPED")), "{saga}");
    let skipped: Vec<Value> = app.events(&pooled).await.into_iter().filter(|e| e["type"] == "step_skipped").collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert_eq!(skipped[0]["data"]["rendered"], false, "{skipped:?}");
    assert_eq!(participant.requests("/dedicated").len(), 0);

    // A silo tenant's saga runs it; a failure after it compensates it, the skipped one never.
    let silo = app.start("onboarding", json!({"plan": "silo", "fail": "welcome refused"})).await;
    let saga = app.wait_terminal(&silo, WAIT).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(status_of(&saga, "dedicated"), Some(json!("COMPENSATED")), "{saga}");
    assert_eq!(participant.requests("/dedicated").len(), 1);
    assert_eq!(participant.requests("/dedicated-undo").len(), 1);
    assert_eq!(participant.requests("/account-undo").len(), 1);

    let pooled_failing = app.start("onboarding", json!({"plan": "pooled", "fail": "no"})).await;
    let saga = app.wait_terminal(&pooled_failing, WAIT).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(status_of(&saga, "dedicated"), Some(json!("SKIPPED")), "{saga}");
    assert_eq!(participant.requests("/dedicated-undo").len(), 1, "the skipped step is not compensated");
}
crate::on_both_backends!(a_false_condition_skips_its_step);
