//! Events out: real receivers on loopback get the outbox's events, signed, retried on the
//! schedule, dead after it, replayed and recovered; tenants see only their own.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_support::app::fast_definition;
use test_support::participant::Seen;
use test_support::{eventually, App, Backend, Participant};

use crate::{on_both_backends, BIN};

const WAIT: Duration = Duration::from_secs(30);

async fn app_with(backend: Backend) -> App {
    App::spawn(BIN, backend, &[("SAGAPLANE_DELIVERY_RETRY_SCHEDULE", "150ms,150ms".to_string())]).await
}

async fn subscribe(app: &App, body: Value) -> Value {
    let (status, _, created) = app.send(app.request(reqwest::Method::POST, "/v1/subscriptions").json(&body)).await;
    assert_eq!(status, 201, "{created}");
    created
}

/// The requests `path` got, once there are at least `n`.
async fn received(receiver: &Participant, path: &str, n: usize) -> Vec<Seen> {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = receiver.requests(path);
        if seen.len() >= n {
            return seen;
        }
        let types: Vec<&Value> = seen.iter().map(|s| &s.body["type"]).collect();
        assert!(Instant::now() < deadline, "{path} got {} of {n} deliveries: {types:?}", seen.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The signature a receiver checks: `v1,` HMAC of `id.timestamp.body` by `secret`, among the
/// space-separated ones sent.
fn signed_by(seen: &Seen, secret: &str) -> bool {
    let id = &seen.headers["webhook-id"];
    let timestamp: i64 = seen.headers["webhook-timestamp"].parse().expect("timestamp");
    let body = serde_json::to_vec(&seen.body).expect("body");
    let expected = standardwebhooks::Webhook::new(secret).expect("secret").sign(id, timestamp, &body).expect("sign");
    seen.headers["webhook-signature"].split(' ').any(|s| s == expected)
}

pub(crate) async fn delivery_of(app: &App, subscription: &str, status: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let path = format!("/v1/deliveries?subscription_id={subscription}&status={status}");
        let (_, _, page) = app.send(app.request(reqwest::Method::GET, &path)).await;
        if let Some(first) = page["items"].as_array().and_then(|items| items.first()) {
            return first.clone();
        }
        assert!(Instant::now() < deadline, "no {status} delivery for {subscription}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn events_reach_subscribers_signed(backend: Backend) {
    let receiver = Participant::start().await;
    let app = app_with(backend).await;
    let hook = format!("{}/hook", receiver.url);
    let created = subscribe(&app, json!({"url": hook, "events": ["saga.completed", "order.placed"]})).await;
    let secret = created["secret"].as_str().expect("secret shown at creation").to_string();
    assert!(secret.starts_with("whsec_"), "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let (_, _, shown) = app.send(app.request(reqwest::Method::GET, &format!("/v1/subscriptions/{id}"))).await;
    assert!(shown.get("secret").is_none() && !shown.to_string().contains(&secret), "never shown again: {shown}");

    let steps = json!([{"name": "emit", "action": {"builtin": "core.emit",
                                                   "input": {"type": "order.placed", "data": {"n": "{{ input.n }}"}}}}]);
    app.put_definition("placing", &fast_definition(steps)).await;
    let saga_id = app.start("placing", json!({"n": 7})).await;
    assert_eq!(app.wait_terminal(&saga_id, WAIT).await["status"], "COMPLETED");
    let seen = received(&receiver, "/hook", 2).await;
    let by_type = |t: &str| seen.iter().find(|s| s.body["type"] == t).unwrap_or_else(|| panic!("no {t}: {seen:?}"));
    assert_eq!(by_type("order.placed").body["data"], json!({"n": 7}));
    let completed = by_type("saga.completed");
    assert_eq!(completed.body["data"]["saga_id"], saga_id);
    assert_eq!(completed.body["data"]["status"], "COMPLETED");
    for s in &seen {
        assert!(signed_by(s, &secret), "signature does not verify: {:?}", s.headers);
        assert!(s.body["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{}", s.body);
    }
    let delivery = delivery_of(&app, &id, "succeeded").await;
    let event_id = delivery["event_id"].as_str().unwrap_or_default();
    assert!(seen.iter().any(|s| s.headers["webhook-id"] == event_id), "webhook-id is the event id: {delivery}");

    // Rotation: for the overlap, deliveries carry both signatures.
    let (status, _, rotated) =
        app.send(app.request(reqwest::Method::POST, &format!("/v1/subscriptions/{id}/rotate-secret"))).await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().expect("new secret").to_string();
    let again = app.start("placing", json!({"n": 8})).await;
    app.wait_terminal(&again, WAIT).await;
    let seen = received(&receiver, "/hook", 4).await;
    let latest = seen.iter().find(|s| s.body["data"]["n"] == 8).expect("the second order");
    assert!(signed_by(latest, &new_secret) && signed_by(latest, &secret), "both secrets sign during the overlap");

    // Bad input: a clear 422, nothing stored.
    for bad in [
        json!({"url": "ftp://example.com/x", "events": ["*"]}),
        json!({"url": hook, "events": ["tenant.nonsense"]}),
        json!({"url": hook, "events": ["nodot"]}),
        json!({"url": hook, "events": []}),
        json!({"url": hook, "nats": {"url": "nats://127.0.0.1:4222", "subject": "s"}, "events": ["*"]}),
        json!({"events": ["*"]}),
        json!({"url": hook, "events": ["*"], "secret": "whsec_mine"}),
    ] {
        let (status, _, body) = app.send(app.request(reqwest::Method::POST, "/v1/subscriptions").json(&bad)).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
    let (_, _, listed) = app.send(app.request(reqwest::Method::GET, "/v1/subscriptions")).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1), "{listed}");
}
on_both_backends!(events_reach_subscribers_signed);

async fn failing_receivers_are_retried_then_dead_then_replayed(backend: Backend) {
    let receiver = Participant::start().await;
    receiver.script("/flaky", vec![(503, json!({})), (503, json!({})), (200, json!({}))]);
    receiver.script("/down", vec![(500, json!({"error": "still down"}))]);
    let app = app_with(backend).await;
    let flaky = subscribe(&app, json!({"url": format!("{}/flaky", receiver.url), "events": ["saga.completed"]})).await;
    let down = subscribe(&app, json!({"url": format!("{}/down", receiver.url), "events": ["*"]})).await;
    app.put_definition("one", &fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}]))).await;
    let saga_id = app.start("one", json!({})).await;
    app.wait_terminal(&saga_id, WAIT).await;

    // Down for the first two attempts: the third gets it, with the same webhook-id each time.
    let seen = received(&receiver, "/flaky", 3).await;
    let ids: Vec<&str> = seen.iter().map(|s| s.headers["webhook-id"].as_str()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one webhook-id: {ids:?}");
    let flaky_id = flaky["id"].as_str().expect("id");
    let delivered = delivery_of(&app, flaky_id, "succeeded").await;
    let path = format!("/v1/deliveries/{}", delivered["id"].as_str().expect("id"));
    let (_, _, detail) = app.send(app.request(reqwest::Method::GET, &path)).await;
    let codes: Vec<Value> =
        detail["attempts"].as_array().expect("attempts").iter().map(|a| a["status_code"].clone()).collect();
    assert_eq!(codes, vec![json!(503), json!(503), json!(200)], "{detail}");

    // Never recovers: dead after exactly the schedule (2 retries = 3 attempts).
    let down_id = down["id"].as_str().expect("id");
    let dead = delivery_of(&app, down_id, "dead").await;
    assert_eq!(dead["attempts"], 3, "{dead}");
    assert!(dead["last_error"].as_str().unwrap_or("").contains("500"), "{dead}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(receiver.requests("/down").len(), 3, "nothing after dead");
    let metrics =
        app.http.get(format!("{}/metrics", app.url)).send().await.expect("metrics").text().await.expect("text");
    let counted = |outcome: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("saga_delivery_attempts_total{")
                    && l.contains(&format!("subscription=\"{down_id}\""))
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    assert_eq!((counted("retried"), counted("dead")), (Some(2), Some(1)), "per-destination attempt counts");
    // It recovers; the operator replays the dead delivery: delivered, same webhook-id.
    receiver.script("/down", vec![(204, json!(null))]);
    let replay = format!("/v1/deliveries/{}/replay", dead["id"].as_str().expect("id"));
    let (status, _, body) = app.send(app.request(reqwest::Method::POST, &replay)).await;
    assert_eq!(status, 202, "{body}");
    let seen = received(&receiver, "/down", 4).await;
    assert_eq!(seen[3].headers["webhook-id"], seen[0].headers["webhook-id"]);
    delivery_of(&app, down_id, "succeeded").await;
    let (status, _, _) = app.send(app.request(reqwest::Method::POST, &replay)).await;
    assert_eq!(status, 409, "only a dead delivery is replayed");

    // Recover: every dead delivery of a subscription since a time.
    receiver.script("/down", vec![(500, json!({}))]);
    let second = app.start("one", json!({})).await;
    app.wait_terminal(&second, WAIT).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, _, page) = app
            .send(app.request(reqwest::Method::GET, &format!("/v1/deliveries?subscription_id={down_id}&status=dead")))
            .await;
        if page["items"].as_array().map(Vec::len) == Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "the second delivery never died: {page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    receiver.script("/down", vec![(200, json!({}))]);
    let body = json!({"since": "2020-01-01T00:00:00Z"});
    let (status, _, recovered) =
        app.send(app.request(reqwest::Method::POST, &format!("/v1/subscriptions/{down_id}/recover")).json(&body)).await;
    assert_eq!((status, recovered["replayed"].clone()), (202, json!(1)), "{recovered}");
    received(&receiver, "/down", 8).await;
}
on_both_backends!(failing_receivers_are_retried_then_dead_then_replayed);

/// A tenant's subscription receives its tenant's events only, and tenants see only their own
/// subscriptions and deliveries; tenant status changes are events too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_get_only_their_own_events() {
    use reqwest::Method;
    let receiver = Participant::start().await;
    // The receiver is on loopback, which a tenant's subscription reaches only when the operator
    // allows it (docs/security.md, "Outbound").
    let env = [
        ("SAGAPLANE_DELIVERY_RETRY_SCHEDULE", "150ms,150ms".to_string()),
        ("SAGAPLANE_HTTP_ALLOW", "127.0.0.1".to_string()),
    ];
    let app = App::spawn(BIN, Backend::Sqlite, &env).await;
    let admin_all = subscribe(&app, json!({"url": format!("{}/admin", receiver.url), "events": ["*"]})).await;
    let mut tokens = Vec::new();
    for tenant in ["acme", "beta"] {
        let (status, _, body) =
            app.send(app.request(Method::POST, "/v1/tenants").json(&json!({"id": tenant, "name": tenant}))).await;
        assert_eq!(status, 202, "{body}");
        crate::tenants::until_status(&app, tenant, &["ACTIVE"]).await;
        let (_, _, key) =
            app.send(app.request(Method::POST, &format!("/v1/tenants/{tenant}/api-keys")).json(&json!({}))).await;
        tokens.push(key["token"].as_str().expect("token").to_string());
    }
    let as_tenant = |token: &str, method: Method, path: &str| {
        app.http.request(method, format!("{}{path}", app.url)).bearer_auth(token.to_string())
    };
    let (status, _, acme_sub) = app
        .send(
            as_tenant(&tokens[0], Method::POST, "/v1/subscriptions")
                .json(&json!({"url": format!("{}/acme", receiver.url), "events": ["*"]})),
        )
        .await;
    assert_eq!(status, 201, "{acme_sub}");
    assert_eq!(acme_sub["tenant_id"], "acme");
    let acme_sub_id = acme_sub["id"].as_str().expect("id").to_string();
    let (status, _, _) =
        app.send(as_tenant(&tokens[1], Method::GET, &format!("/v1/subscriptions/{acme_sub_id}"))).await;
    assert_eq!(status, 404, "another tenant's subscription does not exist for beta");
    let (_, _, beta_list) = app.send(as_tenant(&tokens[1], Method::GET, "/v1/subscriptions")).await;
    assert_eq!(beta_list["items"], json!([]));
    let (_, _, beta_deliveries) = app.send(as_tenant(&tokens[1], Method::GET, "/v1/deliveries")).await;
    assert_eq!(beta_deliveries["items"], json!([]), "the admin's deliveries of beta's events are not beta's");

    app.put_definition("one", &fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}]))).await;
    for tenant in ["acme", "beta"] {
        let body = json!({"definition": "one", "input": {}, "tenant_id": tenant});
        let (status, _, saga) = app.send(app.request(Method::POST, "/v1/sagas?wait=10s").json(&body)).await;
        assert!(status == 200 || status == 201, "{saga}");
    }
    let (status, _, _) = app.send(app.request(Method::POST, "/v1/tenants/beta/suspend")).await;
    assert_eq!(status, 200);
    // Refused transitions roll back and emit nothing: no tenant.resumed, no second suspension.
    for refused in ["/v1/tenants/acme/resume", "/v1/tenants/beta/suspend"] {
        assert_eq!(app.send(app.request(Method::POST, refused)).await.0, 409, "{refused}");
    }
    // The admin's `*` sees both tenants' sagas and beta's suspension; acme's sees acme's saga only.
    // Two onboardings (tenant.provisioning, tenant.activated, and their tenant.provision sagas'
    // saga.completed), two sagas, one suspension.
    let admin_seen = received(&receiver, "/admin", 9).await;
    let count = |t: &str| admin_seen.iter().filter(|s| s.body["type"] == t).count();
    let counts =
        (count("tenant.provisioning"), count("tenant.activated"), count("saga.completed"), count("tenant.suspended"));
    assert_eq!(counts, (2, 2, 4, 1), "{:?}", admin_seen.iter().map(|s| &s.body).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let admin_now = receiver.requests("/admin");
    assert_eq!(
        admin_now.len(),
        9,
        "nothing for the refused transitions: {:?}",
        admin_now.iter().map(|s| &s.body["type"]).collect::<Vec<_>>()
    );
    let acme_seen = received(&receiver, "/acme", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acme_seen_now = receiver.requests("/acme");
    assert_eq!(acme_seen_now.len(), acme_seen.len());
    assert!(
        acme_seen_now.iter().all(|s| s.body["data"]["tenant_id"] == "acme"),
        "{:?}",
        acme_seen_now.iter().map(|s| &s.body).collect::<Vec<_>>()
    );
    let (status, _, _) = app.send(as_tenant(&tokens[1], Method::GET, "/v1/deliveries")).await;
    assert_eq!(status, 403, "a suspended tenant's key opens nothing");
    let (_, _, acme_deliveries) = app.send(as_tenant(&tokens[0], Method::GET, "/v1/deliveries")).await;
    assert!(
        acme_deliveries["items"]
            .as_array()
            .is_some_and(|items| !items.is_empty() && items.iter().all(|d| d["subscription_id"] == acme_sub["id"])),
        "{acme_deliveries}"
    );
    let _ = admin_all;
}

/// `SAGAPLANE_HTTP_DENY` keeps webhooks off listed networks as it keeps steps: a subscription
/// pointed at a denied address (literal or by name) is never reached, and its delivery is dead
/// at once (retrying cannot help), ready for a replay once the address is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_addresses_are_never_delivered_to() {
    let receiver = Participant::start().await;
    let env = [
        ("SAGAPLANE_DELIVERY_RETRY_SCHEDULE", "100ms".to_string()),
        ("SAGAPLANE_HTTP_DENY", "127.0.0.0/8,::1".to_string()),
    ];
    let app = App::spawn(BIN, Backend::Sqlite, &env).await;
    let literal = subscribe(&app, json!({"url": format!("{}/hook", receiver.url), "events": ["*"]})).await;
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    let named = subscribe(&app, json!({"url": format!("{by_name}/hook"), "events": ["*"]})).await;
    app.put_definition("one", &fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}]))).await;
    app.wait_terminal(&app.start("one", json!({})).await, WAIT).await;
    for subscription in [&literal, &named] {
        let dead = delivery_of(&app, subscription["id"].as_str().expect("id"), "dead").await;
        assert_eq!(dead["attempts"], 1, "dead at once: {dead}");
        assert!(dead["last_error"].as_str().unwrap_or("").contains("SAGAPLANE_HTTP_DENY"), "{dead}");
    }
    assert!(receiver.all_requests().is_empty(), "a denied address was reached");
}

/// An instance SIGKILLed while a delivery is in flight loses nothing: when its claim ends,
/// another instance sends the delivery again, with the same webhook-id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_in_flight_survives_its_instance_being_killed() {
    let receiver = Participant::start().await;
    receiver.delay("/slow", vec![Duration::from_secs(60)]);
    let database_url = Backend::Postgres.fresh_url().await;
    let env = [("SAGAPLANE_LEASE_TTL", "2s".to_string())];
    let mut doomed = App::spawn_on(BIN, &database_url, &["server"], &env).await;
    let subscription =
        subscribe(&doomed, json!({"url": format!("{}/slow", receiver.url), "events": ["saga.completed"]})).await;
    doomed.put_definition("one", &fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}]))).await;
    doomed.wait_terminal(&doomed.start("one", json!({})).await, WAIT).await;
    let first = received(&receiver, "/slow", 1).await;
    doomed.child_mut().start_kill().expect("SIGKILL");
    let _ = doomed.child_mut().wait().await;

    let survivor = App::spawn_on(BIN, &database_url, &["server"], &env).await;
    let again = received(&receiver, "/slow", 2).await;
    assert_eq!(again[1].headers["webhook-id"], first[0].headers["webhook-id"], "the same event, the same id");
    // At least once: whoever answered last records it delivered (a retry may still be under way).
    delivery_of(&survivor, subscription["id"].as_str().expect("id"), "succeeded").await;
}

/// `rate_limit_per_s` paces a subscription's deliveries (per process): a second's worth at once,
/// then one every 1/rate seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_paces_a_subscriptions_deliveries() {
    let receiver = Participant::start().await;
    let app = app_with(Backend::Sqlite).await;
    let body = json!({"url": format!("{}/paced", receiver.url), "events": ["saga.completed"], "rate_limit_per_s": 2});
    subscribe(&app, body).await;
    app.put_definition("one", &fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}]))).await;
    for _ in 0..6 {
        app.wait_terminal(&app.start("one", json!({})).await, WAIT).await;
    }
    let seen = received(&receiver, "/paced", 6).await;
    let span = seen[5].at.duration_since(seen[0].at);
    // 2 at once, then 4 more at 2/s: about 2 s.
    assert!(span >= Duration::from_millis(1_500), "six deliveries at 2/s took {span:?}");
}

/// The deliveries of a subscription in `status`, once there are `n`.
async fn deliveries_of(app: &App, subscription: &str, status: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let path = format!("/v1/deliveries?subscription_id={subscription}&status={status}");
        let (_, _, page) = app.send(app.request(reqwest::Method::GET, &path)).await;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= n {
            return items;
        }
        assert!(Instant::now() < deadline, "{} of {n} {status} deliveries for {subscription}", items.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// NATS JetStream: each event is published with `Nats-Msg-Id` = its id and the webhook
/// signature headers, and succeeds on the stream's ack. When the ack is lost (the connection is
/// cut after the server stored the message), the retry carries the same id and JetStream keeps
/// one copy. A subject no stream listens on fails like an unreachable URL and ends dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_streams_get_each_event_once() {
    let mut stream = test_support::nats::TestStream::create().await;
    let proxy = test_support::nats::CuttingProxy::start(&stream.url).await;
    let env = [
        ("SAGAPLANE_DELIVERY_RETRY_SCHEDULE", "150ms,150ms".to_string()),
        ("SAGAPLANE_DELIVERY_TIMEOUT", "2s".to_string()),
        // The subject without a stream fails every attempt: no breaker holding it up here.
        ("SAGAPLANE_BREAKER_FAILURES", "0".to_string()),
    ];
    let app = App::spawn(BIN, Backend::Postgres, &env).await;
    let destination = json!({"url": proxy.url, "subject": stream.subject});
    let created = subscribe(&app, json!({"nats": destination, "events": ["order.placed"]})).await;
    assert_eq!(created["nats"], destination, "{created}");
    assert!(created["url"].is_null(), "{created}");
    let subscription = created["id"].as_str().expect("id").to_string();
    let secret = created["secret"].as_str().expect("secret").to_string();
    let nowhere = json!({"url": stream.url, "subject": format!("{}.nobody", stream.subject)});
    let unheard = subscribe(&app, json!({"nats": nowhere, "events": ["order.placed"]})).await;

    let steps = json!([{"name": "emit", "action": {"builtin": "core.emit",
                                                   "input": {"type": "order.placed", "data": {"n": "{{ input.n }}"}}}}]);
    app.put_definition("placing", &fast_definition(steps)).await;
    app.wait_terminal(&app.start("placing", json!({"n": 1})).await, WAIT).await;
    let first = deliveries_of(&app, &subscription, "succeeded", 1).await;
    let messages = stream.messages().await;
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_string()).unwrap_or_default();
    assert_eq!(header("Nats-Msg-Id"), first[0]["event_id"].as_str().unwrap_or_default());
    assert_eq!(header("webhook-id"), header("Nats-Msg-Id"));
    let body: Value = serde_json::from_slice(&message.payload).expect("a JSON body");
    assert_eq!((&body["type"], &body["data"]), (&json!("order.placed"), &json!({"n": 1})), "{body}");
    let timestamp: i64 = header("webhook-timestamp").parse().expect("timestamp");
    let signed = standardwebhooks::Webhook::new(&secret)
        .expect("secret")
        .sign(&header("webhook-id"), timestamp, &message.payload)
        .expect("sign");
    assert_eq!(header("webhook-signature"), signed, "signed as a webhook is");

    // The ack of the next publish is lost: the attempt fails, the retry is a duplicate.
    proxy.cut_next_publish();
    app.wait_terminal(&app.start("placing", json!({"n": 2})).await, WAIT).await;
    let delivered = deliveries_of(&app, &subscription, "succeeded", 2).await;
    let second = delivered.iter().find(|d| d["id"] != first[0]["id"]).expect("the second delivery");
    let path = format!("/v1/deliveries/{}", second["id"].as_str().unwrap_or_default());
    let (_, _, shown) = app.send(app.request(reqwest::Method::GET, &path)).await;
    assert_eq!(shown["attempts_made"], 2, "one lost ack, one retry: {shown}");
    assert!(shown["attempts"][0]["error"].as_str().is_some_and(|e| !e.is_empty()), "{shown}");
    let messages = stream.messages().await;
    let ids: Vec<String> =
        messages.iter().filter_map(|m| m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_string())).collect();
    assert_eq!(ids.len(), 2, "each event stored once, whatever the retries: {ids:?}");
    assert_eq!(ids[1], second["event_id"].as_str().unwrap_or_default());

    // No stream on the subject: every attempt fails, then dead.
    let dead = deliveries_of(&app, unheard["id"].as_str().expect("id"), "dead", 2).await;
    assert!(dead.iter().all(|d| d["attempts"] == 3 && d["last_error"].as_str().is_some()), "{dead:?}");

    for bad in [
        json!({"nats": {"url": "http://127.0.0.1:4222", "subject": "a.b"}, "events": ["*"]}),
        json!({"nats": {"url": stream.url, "subject": "a.*"}, "events": ["*"]}),
        json!({"nats": {"url": stream.url, "subject": "a..b"}, "events": ["*"]}),
        json!({"nats": {"url": stream.url}, "events": ["*"]}),
        json!({"nats": {"url": stream.url, "subject": "a", "stream": "x"}, "events": ["*"]}),
        json!({"nats": "nats://127.0.0.1:4222", "events": ["*"]}),
    ] {
        let (status, _, body) = app.send(app.request(reqwest::Method::POST, "/v1/subscriptions").json(&bad)).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
    let (_, _, listed) = app.send(app.request(reqwest::Method::GET, "/v1/subscriptions")).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(2), "nothing stored: {listed}");
}

/// A destination that fails every attempt: after `SAGAPLANE_BREAKER_FAILURES` in a row its
/// breaker holds its deliveries for the cool-down (no attempt spent), and once it has failed for
/// `SAGAPLANE_DELIVERY_DISABLE_AFTER` the subscription is disabled and `subscription.disabled`
/// reaches the other subscriptions. Set active again, it starts afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_destination_is_held_by_its_breaker_then_disabled() {
    let receiver = Participant::start().await;
    receiver.script("/down", vec![(500, json!({"error": "down"}))]);
    let env = [
        ("SAGAPLANE_DELIVERY_RETRY_SCHEDULE", "100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms".to_string()),
        ("SAGAPLANE_BREAKER_FAILURES", "3".to_string()),
        ("SAGAPLANE_BREAKER_COOLDOWN", "1500ms".to_string()),
        ("SAGAPLANE_DELIVERY_DISABLE_AFTER", "2s".to_string()),
    ];
    let app = App::spawn(BIN, Backend::Sqlite, &env).await;
    let down = subscribe(&app, json!({"url": format!("{}/down", receiver.url), "events": ["saga.completed"]})).await;
    let down_id = down["id"].as_str().expect("id").to_string();
    subscribe(&app, json!({"url": format!("{}/watch", receiver.url), "events": ["subscription.disabled"]})).await;
    app.put_definition("one", &fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}]))).await;
    app.wait_terminal(&app.start("one", json!({})).await, WAIT).await;

    let notice = received(&receiver, "/watch", 1).await;
    assert_eq!(notice[0].body["type"], "subscription.disabled");
    assert_eq!(notice[0].body["data"]["subscription_id"], down_id.as_str(), "{}", notice[0].body);
    let (_, _, shown) = app.send(app.request(reqwest::Method::GET, &format!("/v1/subscriptions/{down_id}"))).await;
    assert_eq!(shown["status"], "disabled", "{shown}");
    assert!(shown["failing_since"].is_string(), "{shown}");

    let delivery = delivery_of(&app, &down_id, "pending").await;
    let path = format!("/v1/deliveries/{}", delivery["id"].as_str().unwrap_or_default());
    let (_, _, detail) = app.send(app.request(reqwest::Method::GET, &path)).await;
    let at: Vec<i64> = detail["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| {
            chrono::DateTime::parse_from_rfc3339(a["at"].as_str().unwrap_or_default()).expect("at").timestamp_millis()
        })
        .collect();
    assert!(at.len() >= 4, "{detail}");
    assert!(at[3] - at[2] >= 1_400, "the breaker held the fourth attempt for its cool-down: {at:?}");
    assert!(at[1] - at[0] < 1_400, "the first ones kept the schedule: {at:?}");
    let attempts_when_disabled = at.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, _, again) = app.send(app.request(reqwest::Method::GET, &path)).await;
    assert_eq!(again["attempts"].as_array().map(Vec::len), Some(attempts_when_disabled), "a disabled one waits");

    let patch = json!({"status": "active"});
    let (status, _, revived) =
        app.send(app.request(reqwest::Method::PATCH, &format!("/v1/subscriptions/{down_id}")).json(&patch)).await;
    assert_eq!((status, &revived["status"], &revived["failing_since"]), (200, &json!("active"), &Value::Null));
}

/// Deliveries claimed while their destination's breaker opens are handed back, not held for their
/// lease: with a 40 s lease and a 1 s cool-down, a burst to a destination that fails at first is
/// delivered in a few seconds. (Held, those claimed with the failing ones waited out the lease.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_a_breaker_holds_go_out_after_its_cool_down_not_their_lease() {
    let receiver = Participant::start().await;
    let mut answers = vec![(500, json!({"error": "starting"})); 4];
    answers.push((200, json!({})));
    receiver.script("/burst", answers);
    let env = [
        ("SAGAPLANE_DELIVERY_RETRY_SCHEDULE", "100ms,100ms,100ms,100ms,100ms,100ms".to_string()),
        ("SAGAPLANE_BREAKER_FAILURES", "2".to_string()),
        ("SAGAPLANE_BREAKER_COOLDOWN", "1s".to_string()),
        ("SAGAPLANE_LEASE_TTL", "40s".to_string()),
    ];
    let app = App::spawn(BIN, Backend::Sqlite, &env).await;
    subscribe(&app, json!({"url": format!("{}/burst", receiver.url), "events": ["saga.completed"]})).await;
    app.put_definition("one", &fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}]))).await;
    let started = Instant::now();
    let ids = futures::future::join_all((0..30).map(|_| app.start("one", json!({})))).await;
    for id in &ids {
        app.wait_terminal(id, WAIT).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let delivered: std::collections::HashSet<String> = receiver
            .requests("/burst")
            .iter()
            .skip(4) // the four answered 500
            .filter_map(|seen| seen.body["data"]["saga_id"].as_str().map(str::to_string))
            .collect();
        if ids.iter().all(|id| delivered.contains(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 30 delivered {:?} after the burst; the rest wait for their lease",
            delivered.len(),
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two instances on one database share the outbox: every event is delivered once, and no two
/// attempts of one delivery are ever in flight at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_send_one_delivery_at_once() {
    const EVENTS: usize = 40;
    const HOLD: Duration = Duration::from_millis(150);
    let receiver = Participant::start().await;
    receiver.delay("/both", vec![HOLD; EVENTS * 2]);
    let database_url = Backend::Postgres.fresh_url().await;
    let first = App::spawn_on(BIN, &database_url, &["server"], &[]).await;
    let second = App::spawn_on(BIN, &database_url, &["server"], &[]).await;
    let subscription =
        subscribe(&first, json!({"url": format!("{}/both", receiver.url), "events": ["order.placed"]})).await;
    let steps = json!([{"name": "emit", "action": {"builtin": "core.emit",
                                                   "input": {"type": "order.placed", "data": {"n": "{{ input.n }}"}}}}]);
    first.put_definition("placing", &fast_definition(steps)).await;
    let mut sagas = Vec::new();
    for n in 0..EVENTS {
        let app = if n % 2 == 0 { &first } else { &second };
        sagas.push(app.start("placing", json!({"n": n})).await);
    }
    for saga in &sagas {
        first.wait_terminal(saga, WAIT).await;
    }
    deliveries_of(&first, subscription["id"].as_str().expect("id"), "succeeded", EVENTS).await;
    let seen = receiver.requests("/both");
    let mut by_id: std::collections::HashMap<&str, Vec<Instant>> = std::collections::HashMap::new();
    for s in &seen {
        by_id.entry(s.headers["webhook-id"].as_str()).or_default().push(s.at);
    }
    assert_eq!(by_id.len(), EVENTS, "every event arrived");
    for (id, mut starts) in by_id {
        starts.sort();
        for pair in starts.windows(2) {
            assert!(pair[1].duration_since(pair[0]) >= HOLD, "{id} was sent again while in flight");
        }
    }
    assert_eq!(seen.len(), EVENTS, "with a healthy receiver and live leases, each exactly once");
}

/// `core.emit` with `expires_at`: an expired event is never sent (its delivery is dead, saying
/// so), one still valid is delivered, and one that fails when its next attempt would come after
/// it expires is dead at once instead of retried — the location app's rule for the updates of
/// a tracking session that has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_event_is_not_sent_and_is_not_retried_past_its_expiry() {
    let receiver = Participant::start().await;
    receiver.script("/down", vec![(503, json!({"error": "down"}))]);
    // Retries 10 s apart: longer than the third event lives.
    let env = [("SAGAPLANE_DELIVERY_RETRY_SCHEDULE", "10s,10s".to_string())];
    let app = App::spawn(BIN, Backend::Sqlite, &env).await;
    let up = subscribe(&app, json!({"url": format!("{}/up", receiver.url), "events": ["location.updated"]})).await;
    let down = subscribe(&app, json!({"url": format!("{}/down", receiver.url), "events": ["location.updated"]})).await;
    let steps = json!([{"name": "emit", "action": {"builtin": "core.emit",
        "input": {"type": "location.updated", "data": {"n": "{{ input.n }}"}, "expires_at": "{{ input.expires_at }}"}}}]);
    app.put_definition("tracking", &fast_definition(steps)).await;
    let stamp = |offset_s: i64| {
        let at = std::time::SystemTime::now() + std::time::Duration::from_secs(offset_s.max(0) as u64)
            - std::time::Duration::from_secs((-offset_s).max(0) as u64);
        humantime::format_rfc3339_millis(at).to_string()
    };
    for (n, offset_s) in [(1, -3600), (2, 3600), (3, 5)] {
        let id = app.start("tracking", json!({"n": n, "expires_at": stamp(offset_s)})).await;
        assert_eq!(app.wait_terminal(&id, WAIT).await["status"], "COMPLETED");
    }
    // The two valid ones arrive (in either order; waiting for one of them raced the other, and
    // the test failed once with only the third seen); the expired one never does.
    let seen = received(&receiver, "/up", 2).await;
    let numbers: Vec<Value> = seen.iter().map(|s| s.body["data"]["n"].clone()).collect();
    assert!(numbers.contains(&json!(2)) && numbers.contains(&json!(3)), "{numbers:?}");
    assert!(!numbers.contains(&json!(1)), "an expired event was sent: {numbers:?}");
    let up_id = up["id"].as_str().expect("id");
    let dead = delivery_of(&app, up_id, "dead").await;
    assert!(dead["last_error"].as_str().is_some_and(|e| e.contains("expired")), "{dead}");
    assert_eq!(dead["attempts"], 1, "recorded once, nothing sent: {dead}");
    // At the failing destination: the one that expires in 5 s failed once and is dead now (its
    // retry would come after it expires); the one valid for an hour waits for its retry.
    let down_id = down["id"].as_str().expect("id");
    let dead = deliveries_of(&app, down_id, "dead", 2).await;
    assert!(dead.iter().all(|d| d["attempts"] == 1), "{dead:?}");
    // A claimed delivery reads as pending with no attempt until its attempt is recorded (it
    // was read in between once): wait for the recorded failure.
    let pending = eventually("the valid event's failed attempt", WAIT, || async {
        Some(delivery_of(&app, down_id, "pending").await).filter(|d| d["attempts"] != 0)
    })
    .await;
    assert_eq!(pending["attempts"], 1, "{pending}");
    let hits = receiver.requests("/down").len();
    assert_eq!(hits, 2, "the failing destination was tried for the two unexpired events only");
}

/// A tenant's `GET /v1/deliveries` pages through its own subscriptions' deliveries with full
/// pages and a cursor, however many of its events went to the operator's subscriptions in
/// between (they used to be filtered out after the limit: short or empty pages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_pages_through_its_deliveries() {
    use reqwest::Method;
    let receiver = Participant::start().await;
    let env = [("SAGAPLANE_HTTP_ALLOW", "127.0.0.1".to_string())];
    let app = App::spawn(BIN, Backend::Sqlite, &env).await;
    let token = crate::tenants::active_with_key(&app, "acme").await;
    let as_tenant =
        |method: Method, path: &str| app.http.request(method, format!("{}{path}", app.url)).bearer_auth(&token);
    let (status, _, own) = app
        .send(as_tenant(Method::POST, "/v1/subscriptions").json(&json!({
            "url": format!("{}/acme", receiver.url), "events": ["saga.completed"]
        })))
        .await;
    assert_eq!(status, 201, "{own}");
    // The operator's subscriptions get every one of acme's events too, three times over.
    for path in ["/one", "/two", "/three"] {
        subscribe(&app, json!({"url": format!("{}{path}", receiver.url), "events": ["*"]})).await;
    }
    app.put_definition("one", &fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}]))).await;
    for _ in 0..5 {
        let body = json!({"definition": "one", "input": {}, "tenant_id": "acme"});
        let (status, _, saga) = app.send(app.request(Method::POST, "/v1/sagas?wait=10s").json(&body)).await;
        assert!(status == 200 || status == 201, "{saga}");
    }
    received(&receiver, "/acme", 5).await;
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut path = "/v1/deliveries?limit=2".to_string();
    loop {
        let (status, _, page) = app.send(as_tenant(Method::GET, &path)).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().cloned().unwrap_or_default();
        assert!(items.iter().all(|d| d["subscription_id"] == own["id"]), "{page}");
        sizes.push(items.len());
        seen.extend(items.iter().map(|d| d["id"].clone()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/deliveries?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5, "every one of acme's deliveries, once: {sizes:?}");
    assert_eq!(sizes[..2], [2, 2], "full pages: {sizes:?}");
}

/// A NATS server that accepts connections and never speaks holds up only its own deliveries:
/// connecting happens outside the shared connection cache, with the attempt's timeout, so
/// another subscription's stream gets its events at once meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_nats_server_holds_up_only_its_own_deliveries() {
    let mut stream = test_support::nats::TestStream::create().await;
    // Accepts and says nothing: the NATS handshake never completes.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_url = format!("nats://{}", silent.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let env = [("SAGAPLANE_DELIVERY_TIMEOUT", "20s".to_string()), ("SAGAPLANE_BREAKER_FAILURES", "0".to_string())];
    let app = App::spawn(BIN, Backend::Sqlite, &env).await;
    let stuck =
        subscribe(&app, json!({"nats": {"url": silent_url, "subject": "held.events"}, "events": ["order.placed"]}))
            .await;
    let flowing =
        subscribe(&app, json!({"nats": {"url": stream.url, "subject": stream.subject}, "events": ["order.placed"]}))
            .await;
    let steps =
        json!([{"name": "emit", "action": {"builtin": "core.emit", "input": {"type": "order.placed", "data": {}}}}]);
    app.put_definition("placing", &fast_definition(steps)).await;
    // The silent server's first attempt is under way (it waits up to 20 s) ...
    app.wait_terminal(&app.start("placing", json!({})).await, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ... while the other stream gets this event and the next at once.
    let started = Instant::now();
    app.wait_terminal(&app.start("placing", json!({})).await, WAIT).await;
    deliveries_of(&app, flowing["id"].as_str().expect("id"), "succeeded", 2).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "the healthy stream waited {took:?} behind the silent server");
    assert_eq!(stream.messages().await.len(), 2);
    let pending = deliveries_of(&app, stuck["id"].as_str().expect("id"), "pending", 1).await;
    assert!(pending.iter().all(|d| d["delivered_at"].is_null()), "{pending:?}");
}
