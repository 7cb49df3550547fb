//! The engine's control surface through the real binary: signals, async callbacks, cancel,
//! deadlines, pivots, gRPC participants, fairness, circuit breakers.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::fast_definition;
use test_support::{eventually, App, Backend, GrpcParticipant, Participant};
use tonic::Code;

use crate::{on_both_backends, BIN};

const TERMINAL_WAIT: Duration = Duration::from_secs(30);

async fn app_with(backend: Backend, participant: &Participant) -> App {
    App::spawn(BIN, backend, &[("SAGAPLANE_VAR_P", participant.url.clone())]).await
}

fn step_statuses(saga: &Value) -> Vec<String> {
    saga["steps"].as_array().into_iter().flatten().map(|s| s["status"].as_str().unwrap_or("").to_string()).collect()
}

async fn post(app: &App, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = app.request(Method::POST, path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let (status, _, body) = app.send(request).await;
    (status, body)
}

/// Waits until the saga's history has an event of `kind`.
async fn until_event(app: &App, id: &str, kind: &str) {
    eventually(&format!("event {kind} on {id}"), TERMINAL_WAIT, || async {
        app.event_types(id).await.iter().any(|t| t == kind).then_some(())
    })
    .await
}

fn approval_definition(signal_timeout: Option<&str>) -> Value {
    let mut signal = json!({"name": "approval"});
    if let Some(timeout) = signal_timeout {
        signal["timeout"] = json!(timeout);
    }
    fast_definition(json!([
        {"name": "prepare", "action": {"builtin": "core.sleep", "input": {"duration": "{{ input.sleep }}"}},
         "compensation": {"http": {"method": "POST", "url": "{{ vars.P }}/undo-prepare"}}},
        {"name": "approve", "action": {"signal": signal}},
        {"name": "record", "action": {"builtin": "core.echo", "input": {"by": "{{ steps.approve.output.by }}"}}},
    ]))
}

async fn signals_early_and_late_are_delivered(backend: Backend) {
    let participant = Participant::start().await;
    let app = app_with(backend, &participant).await;
    assert_eq!(app.put_definition("approval", &approval_definition(None)).await.0, 201);

    // Early: sent while the first step still runs, buffered durably until the saga gets there.
    let early = app.start("approval", json!({"sleep": "600ms"})).await;
    let (status, body) = post(&app, &format!("/v1/sagas/{early}/signals/approval"), Some(json!({"by": "ann"}))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(app.saga(&early).await["steps"][1]["status"], "PENDING", "the signal came before the step");
    let saga = app.wait_terminal(&early, TERMINAL_WAIT).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert_eq!(saga["output"]["approve"], json!({"by": "ann"}), "the payload is the step's output");
    assert_eq!(saga["output"]["record"], json!({"by": "ann"}));
    assert!(app.event_types(&early).await.contains(&"signal_received".to_string()));

    // Late: the saga parks on the step holding no lease, then the signal wakes it.
    let late = app.start("approval", json!({"sleep": "1ms"})).await;
    until_event(&app, &late, "step_waiting").await;
    let waiting = app.saga(&late).await;
    assert_eq!(waiting["status"], "EXECUTING");
    assert_eq!(waiting["lease_owner"], Value::Null, "a waiting saga holds no lease: {waiting}");
    assert_eq!(waiting["progress"]["current_step"], "approve");

    // Bad input changes nothing.
    let (status, body) = post(&app, &format!("/v1/sagas/{late}/signals/approvl"), Some(json!({}))).await;
    assert_eq!(status, 422, "unknown signal name: {body}");
    assert!(body["detail"].as_str().unwrap_or("").contains("approvl"), "{body}");
    let (status, _, body) = app
        .send(
            app.request(Method::POST, &format!("/v1/sagas/{late}/signals/approval"))
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!(status, 400, "malformed body: {body}");
    let unknown = uuid::Uuid::now_v7();
    assert_eq!(post(&app, &format!("/v1/sagas/{unknown}/signals/approval"), None).await.0, 404);
    assert_eq!(app.saga(&late).await["status"], "EXECUTING", "nothing changed");

    let (status, _) = post(&app, &format!("/v1/sagas/{late}/signals/approval"), Some(json!({"by": "bob"}))).await;
    assert_eq!(status, 202);
    let saga = app.wait_terminal(&late, TERMINAL_WAIT).await;
    assert_eq!(saga["output"]["record"], json!({"by": "bob"}), "{saga}");
    // A finished saga takes no more signals.
    assert_eq!(post(&app, &format!("/v1/sagas/{late}/signals/approval"), None).await.0, 409);
}
on_both_backends!(signals_early_and_late_are_delivered);

async fn a_signal_that_never_comes_times_out_and_compensates(backend: Backend) {
    let participant = Participant::start().await;
    let app = app_with(backend, &participant).await;
    app.put_definition("approval", &approval_definition(Some("500ms"))).await;
    let id = app.start("approval", json!({"sleep": "1ms"})).await;
    let saga = app.wait_terminal(&id, TERMINAL_WAIT).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(saga["error"]["kind"], "timeout");
    assert_eq!(saga["error"]["step"], "approve");
    assert_eq!(step_statuses(&saga), vec!["COMPENSATED", "FAILED", "SKIPPED"]);
    assert_eq!(participant.requests("/undo-prepare").len(), 1);
}
on_both_backends!(a_signal_that_never_comes_times_out_and_compensates);

fn async_definition(heartbeat: Option<&str>) -> Value {
    let mut provision = json!({"name": "provision",
        "action": {"http": {"method": "POST", "url": "{{ vars.P }}/stacks", "async": true}},
        "compensation": {"http": {"method": "DELETE", "url": "{{ vars.P }}/stacks/{{ saga.id }}"}}});
    if let Some(heartbeat) = heartbeat {
        provision["heartbeat_timeout"] = json!(heartbeat);
    }
    fast_definition(json!([
        {"name": "reserve", "action": {"builtin": "core.echo", "input": {"ok": true}},
         "compensation": {"http": {"method": "POST", "url": "{{ vars.P }}/unreserve"}}},
        provision,
        {"name": "done", "action": {"builtin": "core.echo", "input": {"stack": "{{ steps.provision.output.stack }}"}}},
    ]))
}

/// The callback URL the participant received on its `n`th request to `path`.
async fn callback_url(participant: &Participant, path: &str, n: usize) -> String {
    eventually("the async request", TERMINAL_WAIT, || async {
        participant.requests(path).get(n).and_then(|r| r.headers.get("x-saga-callback-url").cloned())
    })
    .await
}

async fn async_steps_complete_by_callback_once(backend: Backend) {
    let participant = Participant::start().await;
    participant.script("/stacks", vec![(202, json!({"accepted": true}))]);
    let app = app_with(backend, &participant).await;
    app.put_definition("provision", &async_definition(None)).await;
    let id = app.start("provision", json!({})).await;
    let url = callback_url(&participant, "/stacks", 0).await;
    assert!(url.starts_with(&app.url), "callback URL on the API's own address: {url}");
    let token = url.rsplit('/').next().expect("token").to_string();
    assert!(token.len() >= 43, "an unguessable token: {token}");
    until_event(&app, &id, "step_waiting").await;
    assert_eq!(app.saga(&id).await["lease_owner"], Value::Null);

    let http = reqwest::Client::new();
    let send = |path: String, body: &'static str| {
        let http = http.clone();
        async move {
            let response = http
                .post(path)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("callback request");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Bad bodies change nothing; no bearer token is needed (the token is the capability).
    assert_eq!(send(url.clone(), "{oops").await.0, 400);
    let (status, body) = send(url.clone(), r#"{"status":"done"}"#).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(send(format!("{}/v1/callbacks/not-a-real-token", app.url), r#"{"status":"succeeded"}"#).await.0, 404);
    assert_eq!(app.saga(&id).await["status"], "EXECUTING");

    let (status, body) = send(url.clone(), r#"{"status":"succeeded","output":{"stack":"s-1"}}"#).await;
    assert_eq!(status, 200, "{body}");
    let saga = app.wait_terminal(&id, TERMINAL_WAIT).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert_eq!(saga["output"]["done"], json!({"stack": "s-1"}));
    // Single use: the same token again is unknown, and a heartbeat on it too.
    assert_eq!(send(url.clone(), r#"{"status":"succeeded","output":{}}"#).await.0, 404);
    assert_eq!(send(format!("{url}/heartbeat"), "").await.0, 404);
    assert_eq!(participant.requests("/stacks").len(), 1);
}
on_both_backends!(async_steps_complete_by_callback_once);

async fn a_missed_heartbeat_is_retried_and_heartbeats_extend(backend: Backend) {
    let participant = Participant::start().await;
    participant.script("/stacks", vec![(202, json!({}))]);
    let app = app_with(backend, &participant).await;
    // A 1.5 s heartbeat timeout against a heartbeat every 200 ms: a slow machine has 1.3 s of room.
    app.put_definition("provision", &async_definition(Some("1500ms"))).await;
    let id = app.start("provision", json!({})).await;
    let first = callback_url(&participant, "/stacks", 0).await;
    // Heartbeats keep attempt 1 alive well past one heartbeat timeout...
    let http = reqwest::Client::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(3_300) {
        let status = http.post(format!("{first}/heartbeat")).send().await.expect("heartbeat").status();
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(participant.requests("/stacks").len(), 1, "heartbeats kept the first attempt alive");
    // ...then they stop: the missed heartbeat is an ambiguous failure, retried with a new token.
    let second = callback_url(&participant, "/stacks", 1).await;
    assert_ne!(first, second, "each attempt has its own token");
    let late = http.post(&first).json(&json!({"status": "succeeded"})).send().await.expect("late callback");
    assert_eq!(late.status().as_u16(), 404, "the lapsed attempt's token is retired");
    let second_request = &participant.requests("/stacks")[1];
    assert_eq!(second_request.headers["x-saga-attempt"], "2");
    assert_eq!(second_request.headers["idempotency-key"], format!("{id}/provision/action"));
    let status = http
        .post(&second)
        .json(&json!({"status": "failed", "error": "quota", "retryable": false}))
        .send()
        .await
        .expect("callback")
        .status();
    assert_eq!(status, 200);
    let saga = app.wait_terminal(&id, TERMINAL_WAIT).await;
    // A definite failure from the callback: the failed step itself is not compensated.
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(saga["error"]["kind"], "non_retryable");
    assert!(participant.requests(&format!("/stacks/{id}")).is_empty(), "definite failure not compensated");
    assert_eq!(participant.requests("/unreserve").len(), 1);
}
on_both_backends!(a_missed_heartbeat_is_retried_and_heartbeats_extend);

async fn cancel_during_an_async_step_compensates_it(backend: Backend) {
    let participant = Participant::start().await;
    participant.script("/stacks", vec![(202, json!({}))]);
    let app = app_with(backend, &participant).await;
    app.put_definition("provision", &async_definition(None)).await;
    let id = app.start("provision", json!({})).await;
    until_event(&app, &id, "step_waiting").await;
    let (status, body) = post(&app, &format!("/v1/sagas/{id}/cancel"), None).await;
    assert_eq!(status, 202, "{body}");
    let saga = app.wait_terminal(&id, TERMINAL_WAIT).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(saga["error"]["kind"], "cancelled");
    assert_eq!(step_statuses(&saga), vec!["COMPENSATED", "COMPENSATED", "SKIPPED"]);
    assert_eq!(participant.requests(&format!("/stacks/{id}")).len(), 1, "the parked step may have acted: undone");
    assert_eq!(participant.requests("/unreserve").len(), 1);
    let types = app.event_types(&id).await;
    assert!(types.contains(&"cancel_requested".to_string()), "{types:?}");
    let url = callback_url(&participant, "/stacks", 0).await;
    let late = reqwest::Client::new().post(&url).json(&json!({"status": "succeeded"})).send().await.expect("late");
    assert_eq!(late.status().as_u16(), 404, "a cancelled wait's token is retired");
    // Terminal now: a second cancel is refused.
    assert_eq!(post(&app, &format!("/v1/sagas/{id}/cancel"), None).await.0, 409);
    assert_eq!(post(&app, &format!("/v1/sagas/{}/cancel", uuid::Uuid::now_v7()), None).await.0, 404);
    assert_eq!(post(&app, "/v1/sagas/not-a-uuid/cancel", None).await.0, 404);
}
on_both_backends!(cancel_during_an_async_step_compensates_it);

async fn cancel_during_a_pending_retry_never_runs_that_retry(backend: Backend) {
    let participant = Participant::start().await;
    participant.script("/flaky", vec![(503, json!({}))]);
    let app = app_with(backend, &participant).await;
    let mut definition = fast_definition(json!([
        {"name": "first", "action": {"builtin": "core.echo"},
         "compensation": {"http": {"method": "POST", "url": "{{ vars.P }}/undo-first"}}},
        {"name": "flaky", "action": {"http": {"method": "POST", "url": "{{ vars.P }}/flaky"}},
         "compensation": {"http": {"method": "POST", "url": "{{ vars.P }}/undo-flaky"}},
         "retry": {"max_attempts": 5, "initial_interval": "4s", "max_interval": "4s", "jitter": 0.0}},
    ]));
    definition["name"] = json!("flaky");
    let (status, body) = app.put_definition("flaky", &definition).await;
    assert_eq!(status, 201, "{body}");
    let id = app.start("flaky", json!({})).await;
    until_event(&app, &id, "step_retry_scheduled").await;
    // The retry is due 4 s after it was scheduled, which was before this instant.
    let scheduled_by = Instant::now();
    assert_eq!(post(&app, &format!("/v1/sagas/{id}/cancel"), None).await.0, 202);
    let saga = app.wait_terminal(&id, TERMINAL_WAIT).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(saga["error"]["kind"], "cancelled");
    // Past the retry's due time: it never ran.
    tokio::time::sleep_until((scheduled_by + Duration::from_millis(4_500)).into()).await;
    assert_eq!(participant.requests("/flaky").len(), 1, "the cancelled retry ran");
    assert_eq!(participant.requests("/undo-flaky").len(), 1, "the ambiguous step is compensated");
    assert_eq!(participant.requests("/undo-first").len(), 1);
}
on_both_backends!(cancel_during_a_pending_retry_never_runs_that_retry);

async fn a_pivot_makes_later_failures_wait_for_an_operator(backend: Backend) {
    let participant = Participant::start().await;
    participant.script("/ship", vec![(400, json!({"error": "no address"})), (200, json!({"shipped": true}))]);
    let app = app_with(backend, &participant).await;
    app.put_definition(
        "pivoting",
        &fast_definition(json!([
            {"name": "reserve", "action": {"builtin": "core.echo"},
             "compensation": {"http": {"method": "POST", "url": "{{ vars.P }}/unreserve"}}},
            {"name": "charge", "pivot": true, "action": {"builtin": "core.echo"},
             "compensation": {"http": {"method": "POST", "url": "{{ vars.P }}/refund"}}},
            {"name": "ship", "action": {"http": {"method": "POST", "url": "{{ vars.P }}/ship"}}},
        ])),
    )
    .await;
    let id = app.start("pivoting", json!({})).await;
    let saga = app.wait_terminal(&id, TERMINAL_WAIT).await;
    assert_eq!(saga["status"], "FAILED", "{saga}");
    assert_eq!(saga["error"]["kind"], "non_retryable");
    assert_eq!(step_statuses(&saga), vec!["SUCCEEDED", "SUCCEEDED", "FAILED"]);
    assert!(participant.requests("/refund").is_empty() && participant.requests("/unreserve").is_empty());
    // Past a succeeded pivot there is no cancelling, only going forward.
    assert_eq!(post(&app, &format!("/v1/sagas/{id}/cancel"), None).await.0, 409);
    assert_eq!(post(&app, &format!("/v1/sagas/{id}/retry"), None).await.0, 202);
    let saga = app.wait_terminal(&id, TERMINAL_WAIT).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert!(participant.requests("/refund").is_empty(), "nothing before the pivot is ever undone");
}
on_both_backends!(a_pivot_makes_later_failures_wait_for_an_operator);

async fn a_deadline_that_passes_while_no_instance_runs_is_enforced_at_restart(backend: Backend) {
    let participant = Participant::start().await;
    let env = [("SAGAPLANE_VAR_P", participant.url.clone())];
    let database_url = backend.fresh_url().await;
    let mut app = App::spawn_on(BIN, &database_url, &["server"], &env).await;
    for (name, on_timeout) in [("deadline-compensate", "compensate"), ("deadline-fail", "fail")] {
        let mut definition = approval_definition(None);
        // Long enough that a slow machine gets both sagas waiting before it passes.
        definition["timeout"] = json!("3s");
        definition["on_timeout"] = json!(on_timeout);
        assert_eq!(app.put_definition(name, &definition).await.0, 201);
    }
    // Both deadlines fall between `before` + 3 s and `after` + 3 s.
    let before = Instant::now();
    let compensate = app.start("deadline-compensate", json!({"sleep": "1ms"})).await;
    let fail = app.start("deadline-fail", json!({"sleep": "1ms"})).await;
    let after = Instant::now();
    until_event(&app, &compensate, "step_waiting").await;
    until_event(&app, &fail, "step_waiting").await;
    // Every instance goes down; the deadline passes while nothing runs.
    app.child_mut().kill().await.expect("kill");
    assert!(before.elapsed() < Duration::from_secs(3), "set-up outlasted the deadline; nothing was tested");
    tokio::time::sleep_until((after + Duration::from_millis(3_500)).into()).await;
    assert!(participant.requests("/undo-prepare").is_empty(), "nothing ran while down");
    let app = App::spawn_on(BIN, &database_url, &["server"], &env).await;
    let saga = app.wait_terminal(&compensate, TERMINAL_WAIT).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(saga["error"]["kind"], "timeout");
    assert_eq!(participant.requests("/undo-prepare").len(), 1);
    let saga = app.wait_terminal(&fail, TERMINAL_WAIT).await;
    assert_eq!(saga["status"], "FAILED", "on_timeout: fail: {saga}");
    assert_eq!(saga["error"]["kind"], "timeout");
    assert_eq!(saga["steps"][0]["status"], "SUCCEEDED", "nothing compensated");
    assert_eq!(participant.requests("/undo-prepare").len(), 1, "still only the compensating saga's undo");
}
on_both_backends!(a_deadline_that_passes_while_no_instance_runs_is_enforced_at_restart);

async fn grpc_participants_follow_the_status_table(backend: Backend) {
    let grpc = GrpcParticipant::start().await;
    grpc.script("execute", vec![Err(Code::Unavailable), Ok(json!({"payment": "p-1"})), Err(Code::InvalidArgument)]);
    grpc.script("compensate", vec![Err(Code::NotFound)]);
    let app = App::spawn(BIN, backend, &[("SAGAPLANE_VAR_PAY", grpc.endpoint.clone())]).await;
    app.put_definition(
        "paid",
        &fast_definition(json!([
            {"name": "charge",
             "action": {"grpc": {"endpoint": "{{ vars.PAY }}", "service": "payments", "input": {"amount": "{{ input.amount }}"}}},
             "compensation": {"grpc": {"endpoint": "{{ vars.PAY }}", "service": "payments"}}},
            {"name": "receipt", "action": {"grpc": {"endpoint": "{{ vars.PAY }}", "service": "receipts"}}},
        ])),
    )
    .await;
    let id = app.start("paid", json!({"amount": 40})).await;
    let saga = app.wait_terminal(&id, TERMINAL_WAIT).await;
    // charge: UNAVAILABLE then OK; receipt: INVALID_ARGUMENT (definite); charge compensated by NOT_FOUND.
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(saga["error"]["kind"], "non_retryable");
    assert_eq!(step_statuses(&saga), vec!["COMPENSATED", "FAILED"]);
    assert_eq!(saga["steps"][0]["output"], json!({"payment": "p-1"}));
    let executes = grpc.calls("execute");
    assert_eq!(executes.len(), 3);
    let (first, second) = (&executes[0].request, &executes[1].request);
    assert_eq!((first.attempt, second.attempt), (1, 2));
    assert_eq!(first.idempotency_key, format!("{id}/charge/action"));
    assert_eq!(first.idempotency_key, second.idempotency_key, "stable across attempts");
    assert_eq!(first.service, "payments");
    assert_eq!(serde_json::from_str::<Value>(&first.input_json).expect("json input"), json!({"amount": 40}));
    assert!(executes[0].metadata["traceparent"].starts_with("00-"), "{:?}", executes[0].metadata);
    assert_eq!(executes[0].metadata["x-saga-id"], id);
    assert!(executes[0].peer.is_some());
    assert!(executes.iter().all(|call| call.peer == executes[0].peer), "one connection per endpoint, reused");
    let compensations = grpc.calls("compensate");
    assert_eq!(compensations.len(), 1);
    assert_eq!(compensations[0].request.idempotency_key, format!("{id}/charge/compensation"));
}
on_both_backends!(grpc_participants_follow_the_status_table);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_backlog_does_not_delay_another_tenant() {
    // Two instances on one PostgreSQL: the per-key limit holds across both.
    let database_url = Backend::Postgres.fresh_url().await;
    let first = App::spawn_on(BIN, &database_url, &["server"], &[]).await;
    let second = App::spawn_on(BIN, &database_url, &["server"], &[]).await;
    let mut definition = fast_definition(json!([
        {"name": "work", "action": {"builtin": "core.sleep", "input": {"duration": "150ms"}}},
    ]));
    definition["concurrency"] = json!({"key": "{{ tenant_id }}", "limit": 2});
    assert_eq!(first.put_definition("onboard", &definition).await.0, 201);
    let start = |app: &App, tenant: &str| {
        app.request(Method::POST, "/v1/sagas").json(&json!({"definition": "onboard", "tenant_id": tenant, "input": {}}))
    };
    // Tenant A queues 500 sagas.
    let mut pending = futures::stream::FuturesUnordered::new();
    for n in 0..500 {
        let app = if n % 2 == 0 { &first } else { &second };
        pending.push(app.send(start(app, "tenant-a")));
    }
    use futures::StreamExt;
    while let Some((status, _, body)) = pending.next().await {
        assert_eq!(status, 201, "{body}");
    }
    // Tenant B's single saga finishes in about its own run time.
    let started = Instant::now();
    let (status, _, body) = second.send(start(&second, "tenant-b")).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().expect("id").to_string();
    let saga = second.wait_terminal(&id, TERMINAL_WAIT).await;
    let elapsed = started.elapsed();
    assert_eq!(saga["status"], "COMPLETED");
    println!("tenant B's saga finished in {elapsed:?} behind 500 queued sagas of tenant A (limit 2)");
    assert!(elapsed < Duration::from_millis(1_500), "tenant B waited {elapsed:?}");
    // Meanwhile tenant A never runs more than 2 at once, on both instances together.
    for _ in 0..10 {
        let (_, _, list) =
            first.send(first.request(Method::GET, "/v1/sagas?tenant_id=tenant-a&status=EXECUTING&limit=500")).await;
        let running = list["items"].as_array().map(Vec::len).unwrap_or(0);
        assert!(running <= 2, "tenant A runs {running} sagas at once");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, _, done) =
        first.send(first.request(Method::GET, "/v1/sagas?tenant_id=tenant-a&status=COMPLETED&limit=500")).await;
    let completed = done["items"].as_array().map(Vec::len).unwrap_or(0);
    assert!(completed < 500, "tenant A's backlog is still draining at its limit ({completed} done)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sagas_retries_keep_their_own_schedule_under_the_default_breaker() {
    let participant = Participant::start().await;
    let answers = [500, 429, 408, 425, 502, 200];
    participant.script("/flaky", answers.iter().map(|s| (*s, json!({"answer": s}))).collect());
    // Every breaker setting at its default (5 failures, 30 s cool-down).
    let app = App::spawn(BIN, Backend::Postgres, &[("SAGAPLANE_VAR_P", participant.url.clone())]).await;
    let mut definition = fast_definition(json!([
        {"name": "call", "action": {"http": {"method": "POST", "url": "{{ vars.P }}/flaky"}},
         "retry": {"max_attempts": 6, "initial_interval": "100ms", "multiplier": 1.0, "jitter": 0.0}},
    ]));
    definition["name"] = json!("flaky");
    assert_eq!(app.put_definition("flaky", &definition).await.0, 201);
    let id = app.start("flaky", json!({})).await;
    let saga = app.wait_terminal(&id, TERMINAL_WAIT).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert_eq!(saga["steps"][0]["attempts"], 6, "{saga}");
    let history = app.event_types(&id).await;
    assert!(!history.iter().any(|t| t == "step_deferred"), "one saga's retries never open the circuit: {history:?}");
    // The retry policy says 100 ms between attempts; a breaker cool-down would be 30 s.
    let requests = participant.requests("/flaky");
    assert_eq!(requests.len(), 6);
    for pair in requests.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(90), "retried before its backoff: {gap:?}");
        assert!(gap < Duration::from_secs(5), "a gap of {gap:?} is not the 100 ms the policy asks for");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_breaker_opens_on_distinct_sagas_defers_and_closes() {
    let participant = Participant::start().await;
    participant.script("/down", vec![(503, json!({}))]);
    let app = App::spawn(
        BIN,
        Backend::Postgres,
        &[
            ("SAGAPLANE_VAR_P", participant.url.clone()),
            ("SAGAPLANE_BREAKER_FAILURES", "3".into()),
            // Room for the checks below to finish before the half-open probe.
            ("SAGAPLANE_BREAKER_COOLDOWN", "3s".into()),
        ],
    )
    .await;
    let mut definition = fast_definition(json!([
        {"name": "call", "action": {"http": {"method": "POST", "url": "{{ vars.P }}/down"}},
         "retry": {"max_attempts": 20, "initial_interval": "200ms", "multiplier": 1.0, "jitter": 0.0}},
    ]));
    definition["name"] = json!("breaker");
    let (status, body) = app.put_definition("breaker", &definition).await;
    assert_eq!(status, 201, "{body}");
    let first = app.start("breaker", json!({})).await;
    // One saga alone retries on its own schedule: its failures count once.
    eventually("the first saga retried", TERMINAL_WAIT, || async {
        (app.saga(&first).await["steps"][0]["attempts"].as_u64() >= Some(4)).then_some(())
    })
    .await;
    assert!(!app.event_types(&first).await.iter().any(|t| t == "step_deferred"), "opened by one saga");
    // Two more sagas fail: three distinct sagas open the circuit.
    let ids = [first, app.start("breaker", json!({})).await, app.start("breaker", json!({})).await];
    let deferred = eventually("a deferred step", TERMINAL_WAIT, || async {
        for id in &ids {
            let events = app.events(id).await;
            if let Some(event) = events.into_iter().find(|e| e["type"] == "step_deferred") {
                return Some(event);
            }
        }
        None
    })
    .await;
    let endpoint = participant.url.clone();
    assert_eq!(deferred["data"]["endpoint"], json!(endpoint), "{deferred}");
    assert!(deferred["data"]["until"].is_string(), "says until when: {deferred}");
    // Open: no attempt is made, and no attempt is spent.
    let attempts_at_open: Vec<Value> = {
        let mut attempts = Vec::new();
        for id in &ids {
            attempts.push(app.saga(id).await["steps"][0]["attempts"].clone());
        }
        attempts
    };
    let requests_at_open = participant.requests("/down").len();
    let metrics = reqwest::get(format!("{}/metrics", app.url)).await.expect("metrics").text().await.expect("text");
    assert!(
        metrics.lines().any(|l| l.starts_with("saga_circuit_open") && l.contains(&endpoint) && l.ends_with(" 1")),
        "open circuit not in metrics"
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(participant.requests("/down").len(), requests_at_open, "no attempt while open");
    for (id, attempts) in ids.iter().zip(&attempts_at_open) {
        let saga = app.saga(id).await;
        assert_eq!(saga["status"], "EXECUTING", "{saga}");
        assert_eq!(&saga["steps"][0]["attempts"], attempts, "no attempt spent while open");
    }
    // The participant heals; after the cool-down a probe closes the circuit and all complete.
    participant.script("/down", vec![(200, json!({"ok": true}))]);
    for id in &ids {
        let saga = app.wait_terminal(id, TERMINAL_WAIT).await;
        assert_eq!(saga["status"], "COMPLETED", "{saga}");
    }
    let metrics = reqwest::get(format!("{}/metrics", app.url)).await.expect("metrics").text().await.expect("text");
    assert!(
        metrics.lines().any(|l| l.starts_with("saga_circuit_open") && l.contains(&endpoint) && l.ends_with(" 0")),
        "closed circuit not in metrics"
    );
}
