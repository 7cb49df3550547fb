//! "Why isn't this saga moving?": `GET /v1/sagas/{id}/blockers` and `sagaplane sagas why` name
//! what holds a saga — each kind brought about for real against the binary.

use std::time::Duration;

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

/// Waits until the saga's first blocker is of `kind`, and returns the whole answer.
async fn until_blocked_by(app: &App, id: &str, kind: &str) -> Value {
    eventually(&format!("saga {id} held by {kind}"), WAIT, || async {
        let body = blockers(app, id).await;
        (body["blockers"][0]["kind"] == kind).then_some(body)
    })
    .await
}

fn seconds_from_now(text: &Value) -> i64 {
    let at = chrono::DateTime::parse_from_rfc3339(text.as_str().unwrap_or_default()).expect("a timestamp");
    (at.timestamp_millis() - chrono::Utc::now().timestamp_millis()) / 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_wait_is_named() {
    let participant = Participant::start().await;
    participant.script("/flaky", vec![(500, json!({"error": "try later"}))]);
    participant.script("/stacks", vec![(202, json!({}))]);
    participant.script("/ship", vec![(400, json!({"error": "no address"}))]);
    participant.delay("/slow", vec![Duration::from_secs(60)]);
    let app = App::spawn(BIN, Backend::Sqlite, &[("SAGAPLANE_VAR_P", participant.url.clone())]).await;

    // A signal with no timeout, in a saga with a deadline: the deadline is what wakes it.
    let mut waiting = fast_definition(json!([{"name": "approve", "action": {"signal": {"name": "approval"}}}]));
    waiting["timeout"] = json!("1h");
    let (status, body) = app.put_definition("waiting", &waiting).await;
    assert_eq!(status, 201, "{body}");
    let id = app.start("waiting", json!({})).await;
    let body = until_blocked_by(&app, &id, "signal").await;
    assert_eq!((&body["runnable"], &body["blockers"][0]["name"]), (&json!(false), &json!("approval")), "{body}");
    assert_eq!(body["blockers"][1]["kind"], "deadline", "{body}");
    assert!((3300..=3600).contains(&seconds_from_now(&body["blockers"][1]["until"])), "{body}");
    let why = std::process::Command::new(BIN)
        .args(["sagas", "why", &id])
        .env("SAGAPLANE_URL", &app.url)
        .env("SAGAPLANE_TOKEN", test_support::app::TOKEN)
        .output()
        .expect("sagas why");
    let printed = String::from_utf8_lossy(&why.stdout);
    assert!(why.status.success() && printed.contains("signal") && printed.contains("\"approval\""), "{printed}");

    // Only one saga of the key at a time: the second waits for the first.
    let mut keyed = fast_definition(json!([{"name": "approve", "action": {"signal": {"name": "go"}}}]));
    keyed["concurrency"] = json!({"key": "one-at-a-time", "limit": 1});
    let (status, body) = app.put_definition("keyed", &keyed).await;
    assert_eq!(status, 201, "{body}");
    let first = app.start("keyed", json!({})).await;
    until_blocked_by(&app, &first, "signal").await;
    let second = app.start("keyed", json!({})).await;
    let body = until_blocked_by(&app, &second, "concurrency").await;
    assert_eq!(body["blockers"][0]["holders"], json!([first]), "{body}");
    assert_eq!((&body["blockers"][0]["key"], &body["blockers"][0]["limit"]), (&json!("one-at-a-time"), &json!(1)));

    // A retry an hour away.
    let retrying = fast_definition(
        json!([{"name": "call", "action": {"http": {"method": "POST", "url": "{{ vars.P }}/flaky"}},
        "retry": {"max_attempts": 3, "initial_interval": "1h", "max_interval": "1h", "multiplier": 1.0, "jitter": 0.0}}]),
    );
    let (status, body) = app.put_definition("retrying", &retrying).await;
    assert_eq!(status, 201, "{body}");
    let id = app.start("retrying", json!({})).await;
    let body = until_blocked_by(&app, &id, "backoff").await;
    assert_eq!((&body["blockers"][0]["step"], &body["blockers"][0]["attempt"]), (&json!("call"), &json!(2)), "{body}");
    assert!((3300..=3600).contains(&seconds_from_now(&body["blockers"][0]["until"])), "{body}");

    // An async participant: no heartbeat yet, then one.
    let mut asynchronous = fast_definition(json!([{"name": "provision",
        "action": {"http": {"method": "POST", "url": "{{ vars.P }}/stacks", "async": true}}}]));
    asynchronous["steps"][0]["heartbeat_timeout"] = json!("1h");
    let (status, body) = app.put_definition("asynchronous", &asynchronous).await;
    assert_eq!(status, 201, "{body}");
    let id = app.start("asynchronous", json!({})).await;
    let body = until_blocked_by(&app, &id, "callback").await;
    assert!(body["blockers"][0]["last_heartbeat"].is_null(), "{body}");
    let callback = eventually("the callback URL", WAIT, || async {
        participant.requests("/stacks").first().and_then(|r| r.headers.get("x-saga-callback-url").cloned())
    })
    .await;
    let status = reqwest::Client::new().post(format!("{callback}/heartbeat")).send().await.expect("heartbeat").status();
    assert_eq!(status, 200);
    let body = blockers(&app, &id).await;
    assert!(body["blockers"][0]["last_heartbeat"].is_string(), "{body}");
    assert!(seconds_from_now(&body["blockers"][0]["until"]) >= 3300, "the heartbeat moved the deadline: {body}");

    // A step running right now: its worker's lease.
    let slow = fast_definition(json!([{"name": "call", "timeout": "2m",
        "action": {"http": {"method": "POST", "url": "{{ vars.P }}/slow"}}}]));
    let (status, body) = app.put_definition("slow", &slow).await;
    assert_eq!(status, 201, "{body}");
    let id = app.start("slow", json!({})).await;
    eventually("the slow call", WAIT, || async { (!participant.requests("/slow").is_empty()).then_some(()) }).await;
    let body = until_blocked_by(&app, &id, "lease").await;
    assert!(body["blockers"][0]["worker"].as_str().is_some_and(|w| !w.is_empty()), "{body}");

    // Past a pivot, a definite failure waits for an operator; a finished saga for nothing.
    let pivoting = fast_definition(json!([
        {"name": "charge", "pivot": true, "action": {"builtin": "core.echo"}},
        {"name": "ship", "action": {"http": {"method": "POST", "url": "{{ vars.P }}/ship"}}},
    ]));
    let (status, body) = app.put_definition("pivoting", &pivoting).await;
    assert_eq!(status, 201, "{body}");
    let id = app.start("pivoting", json!({})).await;
    assert_eq!(app.wait_terminal(&id, WAIT).await["status"], "FAILED");
    let body = blockers(&app, &id).await;
    assert_eq!(body["blockers"][0]["kind"], "operator", "{body}");
    app.put_definition("done", &fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}]))).await;
    let id = app.start("done", json!({})).await;
    app.wait_terminal(&id, WAIT).await;
    assert_eq!(
        blockers(&app, &id).await,
        json!({"saga_id": id, "status": "COMPLETED", "runnable": false, "blockers": []})
    );
    let (status, _, _) =
        app.send(app.request(Method::GET, &format!("/v1/sagas/{}/blockers", uuid::Uuid::now_v7()))).await;
    assert_eq!(status, 404);
}

/// With no worker running, a started saga is due and only a worker is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_saga_without_a_worker_is_queued_and_runnable() {
    let database_url = Backend::Sqlite.fresh_url().await;
    let app = App::spawn_on(BIN, &database_url, &["server", "--no-worker"], &[]).await;
    app.put_definition("one", &fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}]))).await;
    let ids = [app.start("one", json!({})).await, app.start("one", json!({})).await];
    let body = blockers(&app, &ids[1]).await;
    assert_eq!((&body["runnable"], &body["blockers"][0]["kind"]), (&json!(true), &json!("queued")), "{body}");
    assert_eq!(body["blockers"][0]["queue_depth"], 2, "{body}");
    assert!(body["blockers"][0]["oldest_due_at"].is_string(), "{body}");
}

/// An endpoint whose breaker opened: the step is deferred, and the blocker names the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_step_names_its_open_breaker() {
    let participant = Participant::start().await;
    participant.script("/down", vec![(503, json!({}))]);
    let env = [
        ("SAGAPLANE_VAR_P", participant.url.clone()),
        ("SAGAPLANE_BREAKER_FAILURES", "2".to_string()),
        ("SAGAPLANE_BREAKER_COOLDOWN", "1h".to_string()),
    ];
    let app = App::spawn(BIN, Backend::Sqlite, &env).await;
    let definition =
        fast_definition(json!([{"name": "call", "action": {"http": {"method": "POST", "url": "{{ vars.P }}/down"}},
        "retry": {"max_attempts": 20, "initial_interval": "100ms", "multiplier": 1.0, "jitter": 0.0}}]));
    app.put_definition("breaker", &definition).await;
    let ids = [
        app.start("breaker", json!({})).await,
        app.start("breaker", json!({})).await,
        app.start("breaker", json!({})).await,
    ];
    let body = eventually("a saga held by the breaker", WAIT, || async {
        for id in &ids {
            let body = blockers(&app, id).await;
            if body["blockers"][0]["kind"] == "breaker" {
                return Some(body);
            }
        }
        None
    })
    .await;
    assert_eq!(body["blockers"][0]["endpoint"], participant.url, "{body}");
    assert!(seconds_from_now(&body["blockers"][0]["until"]) > 3000, "deferred for the cool-down: {body}");
}

/// A tenant reading why its saga waits learns what holds it, not the operator's side: no
/// worker's name, and of the sagas holding a shared concurrency key only its own ids — another
/// tenant's saga holding the key is counted, not named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_its_blockers_without_the_operators_side() {
    let app = App::spawn(BIN, Backend::Sqlite, &[]).await;
    let mut tokens = Vec::new();
    for tenant in ["acme", "beta"] {
        tokens.push(crate::tenants::active_with_key(&app, tenant).await);
    }
    let mut keyed = fast_definition(json!([{"name": "approve", "action": {"signal": {"name": "go"}}}]));
    keyed["concurrency"] = json!({"key": "shared", "limit": 1});
    assert_eq!(app.put_definition("keyed", &keyed).await.0, 201);
    let start = |tenant: &str| {
        app.request(Method::POST, "/v1/sagas").json(&json!({"definition": "keyed", "input": {}, "tenant_id": tenant}))
    };
    let (_, _, betas) = app.send(start("beta")).await;
    let betas = betas["id"].as_str().expect("id").to_string();
    until_blocked_by(&app, &betas, "signal").await;
    let (_, _, acmes) = app.send(start("acme")).await;
    let acmes = acmes["id"].as_str().expect("id").to_string();
    let operator = until_blocked_by(&app, &acmes, "concurrency").await;
    assert_eq!(operator["blockers"][0]["holders"], json!([betas]), "the operator sees every holder: {operator}");
    let as_acme = app.http.get(format!("{}/v1/sagas/{acmes}/blockers", app.url)).bearer_auth(&tokens[0]);
    let (status, _, seen) = app.send(as_acme).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["blockers"][0]["holders"], json!([]), "{seen}");
    assert_eq!(seen["blockers"][0]["other_holders"], 1, "{seen}");
    assert!(!seen.to_string().contains(&betas), "another tenant's saga id is shown: {seen}");
    // A running step's lease: the worker is not named to the tenant.
    let (_, _, running) = app.send(app.request(Method::GET, &format!("/v1/sagas/{betas}"))).await;
    let worker = running["lease_owner"].as_str().unwrap_or("").to_string();
    let as_beta = app.http.get(format!("{}/v1/sagas/{betas}/blockers", app.url)).bearer_auth(&tokens[1]);
    let (_, _, beta_view) = app.send(as_beta).await;
    assert!(worker.is_empty() || !beta_view.to_string().contains(&worker), "{beta_view}");
    let as_beta = app.http.get(format!("{}/v1/sagas/{betas}", app.url)).bearer_auth(&tokens[1]);
    let (_, _, beta_saga) = app.send(as_beta).await;
    assert!(beta_saga.get("lease_owner").is_none(), "{beta_saga}");
}
