//! What Sagaplane reaches on the network, seen from outside: a tenant's subscriptions reach no
//! internal address (by literal, by name, IPv4-mapped, NATS) unless the operator's allow-list
//! re-opens one; proxies from the environment are ignored unless the operator opts in, and
//! never carry a tenant's deliveries; an answer streamed without end is read no further than
//! its cap (docs/security.md, "Outbound").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::fast_definition;
use test_support::{eventually, App, Backend, Participant};

use crate::delivery::delivery_of;
use crate::BIN;

const WAIT: Duration = Duration::from_secs(30);

async fn subscribe_as(app: &App, token: &str, body: Value) -> String {
    let request = app.http.post(format!("{}/v1/subscriptions", app.url)).bearer_auth(token).json(&body);
    let (status, _, created) = app.send(request).await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().expect("id").to_string()
}

/// Starts a saga of `acme` and waits for its end: its `saga.completed` goes to acme's
/// subscriptions and the operator's.
async fn an_acme_event(app: &App) {
    app.put_definition("one", &fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}]))).await;
    let body = json!({"definition": "one", "input": {}, "tenant_id": "acme"});
    let (status, _, saga) = app.send(app.request(Method::POST, "/v1/sagas?wait=10s").json(&body)).await;
    assert!(status == 200 || status == 201, "{saga}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_subscriptions_reach_no_internal_address() {
    let receiver = Participant::start().await;
    let proxy = Participant::start().await;
    let env = [
        ("SAGAPLANE_DELIVERY_RETRY_SCHEDULE", "100ms".to_string()),
        // A proxy in the environment is not used: it would hide where a request really goes.
        ("HTTP_PROXY", proxy.url.clone()),
        ("http_proxy", proxy.url.clone()),
    ];
    let app = App::spawn(BIN, Backend::Sqlite, &env).await;
    let token = crate::tenants::active_with_key(&app, "acme").await;
    let port = receiver.url.rsplit(':').next().expect("port").to_string();
    let nats_port = test_support::clusters::free_port();
    let destinations = [
        json!({"url": format!("{}/literal", receiver.url)}),
        json!({"url": format!("http://localhost:{port}/by-name")}),
        json!({"url": format!("http://[::ffff:127.0.0.1]:{port}/mapped")}),
        json!({"url": "http://169.254.169.254/latest/meta-data/"}),
        json!({"url": "http://10.1.2.3/internal"}),
        json!({"nats": {"url": format!("nats://localhost:{nats_port}"), "subject": "tenants.acme.events"}}),
    ];
    let mut refused = Vec::new();
    for destination in destinations {
        let mut body = destination.clone();
        body["events"] = json!(["saga.completed"]);
        refused.push((destination, subscribe_as(&app, &token, body).await));
    }
    let (status, _, operator) = app
        .send(app.request(Method::POST, "/v1/subscriptions").json(&json!({
            "url": format!("{}/operator", receiver.url), "events": ["saga.completed"]
        })))
        .await;
    assert_eq!(status, 201, "{operator}");
    an_acme_event(&app).await;

    for (destination, id) in &refused {
        let dead = delivery_of(&app, id, "dead").await;
        assert_eq!(dead["attempts"], 1, "dead at once: {destination} {dead}");
        let error = dead["last_error"].as_str().unwrap_or("");
        assert!(error.contains("SAGAPLANE_HTTP_ALLOW"), "{destination}: {error}");
    }
    // The operator's own subscription reaches its loopback receiver, directly.
    delivery_of(&app, operator["id"].as_str().expect("id"), "succeeded").await;
    let paths: Vec<String> = receiver.all_requests().iter().map(|seen| seen.path.clone()).collect();
    assert_eq!(paths, vec!["/operator".to_string()], "only the operator's destination was reached");
    assert!(proxy.all_requests().is_empty(), "the environment's proxy was used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_reopens_a_network_and_opts_into_the_proxy() {
    let receiver = Participant::start().await;
    let proxy = Participant::start().await;
    let env = [
        ("SAGAPLANE_DELIVERY_RETRY_SCHEDULE", "100ms".to_string()),
        ("SAGAPLANE_HTTP_ALLOW", "127.0.0.1/32".to_string()),
        ("SAGAPLANE_HTTP_ENV_PROXY", "true".to_string()),
        ("HTTP_PROXY", proxy.url.clone()),
        ("http_proxy", proxy.url.clone()),
    ];
    let app = App::spawn(BIN, Backend::Sqlite, &env).await;
    let token = crate::tenants::active_with_key(&app, "acme").await;
    let tenants =
        subscribe_as(&app, &token, json!({"url": format!("{}/tenant", receiver.url), "events": ["saga.completed"]}))
            .await;
    let operator = "http://operator.invalid/hook";
    let (status, _, _) = app
        .send(
            app.request(Method::POST, "/v1/subscriptions")
                .json(&json!({"url": operator, "events": ["saga.completed"]})),
        )
        .await;
    assert_eq!(status, 201);
    an_acme_event(&app).await;
    // The tenant's delivery went straight to the re-opened address, never through the proxy.
    delivery_of(&app, &tenants, "succeeded").await;
    assert_eq!(receiver.requests("/tenant").len(), 1);
    // The operator's went through the proxy it opted into (the proxy answers it).
    let through = eventually("the operator's delivery at the proxy", WAIT, || async {
        let seen = proxy.all_requests();
        (!seen.is_empty()).then_some(seen)
    })
    .await;
    assert!(
        through.iter().all(|seen| seen.path == "/hook"),
        "{:?}",
        through.iter().map(|s| &s.path).collect::<Vec<_>>()
    );
    assert!(proxy.requests("/tenant").is_empty(), "a tenant's delivery went through the proxy");
}

/// A receiver (and a participant) that answers with a body of 1 GiB, streamed.
struct Firehose {
    url: String,
    sent: Arc<AtomicU64>,
}

const GIB: u64 = 1 << 30;

async fn firehose() -> Firehose {
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let handler = move |axum::extract::Path(status): axum::extract::Path<u16>| {
        let counter = counter.clone();
        async move {
            let chunk = axum::body::Bytes::from(vec![b'x'; 64 * 1024]);
            let body = futures::stream::unfold(0u64, move |written| {
                let (chunk, counter) = (chunk.clone(), counter.clone());
                async move {
                    if written >= GIB {
                        return None;
                    }
                    counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    Some((Ok::<_, std::io::Error>(chunk.clone()), written + chunk.len() as u64))
                }
            });
            let status =
                axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
            (status, axum::body::Body::from_stream(body))
        }
    };
    let router = axum::Router::new().route("/{status}", axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Firehose { url, sent }
}

/// The resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    kib / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_streamed_without_end_is_read_no_further_than_its_cap() {
    let hose = firehose().await;
    let env = [("SAGAPLANE_DELIVERY_RETRY_SCHEDULE", "100ms".to_string())];
    let mut app = App::spawn(BIN, Backend::Sqlite, &env).await;
    let pid = app.child_mut().id().expect("pid");
    let (status, _, subscription) = app
        .send(app.request(Method::POST, "/v1/subscriptions").json(&json!({
            "url": format!("{}/500", hose.url), "events": ["saga.completed"]
        })))
        .await;
    assert_eq!(status, 201, "{subscription}");
    // A step whose participant answers 200 with the same endless body.
    let step = json!([{"name": "big", "action": {"http": {"method": "POST", "url": format!("{}/200", hose.url)}}}]);
    app.put_definition("big", &fast_definition(step)).await;
    app.put_definition("one", &fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}]))).await;
    let before_mib = rss_mib(pid);
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (sampling, peak) = (sampling.clone(), peak.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::SeqCst) {
                peak.fetch_max(rss_mib(pid), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let big = app.start("big", json!({})).await;
    let saga = app.wait_terminal(&big, WAIT).await;
    assert_ne!(saga["status"], "COMPLETED", "{saga}");
    let events = app.events(&big).await;
    assert!(
        events.iter().any(|e| e["data"]["message"].as_str().unwrap_or("").contains("larger than")),
        "the participant's answer refused past its cap: {events:#?}"
    );
    app.wait_terminal(&app.start("one", json!({})).await, WAIT).await;
    let id = subscription["id"].as_str().expect("id");
    let failed = eventually("a failed delivery attempt", WAIT, || async {
        let (_, _, page) = app.send(app.request(Method::GET, &format!("/v1/deliveries?subscription_id={id}"))).await;
        page["items"].as_array().and_then(|items| items.first()).filter(|d| d["attempts"].as_u64() >= Some(2)).cloned()
    })
    .await;
    sampling.store(false, Ordering::SeqCst);
    let _ = sampler.await;
    let error = failed["last_error"].as_str().unwrap_or("");
    assert!(error.starts_with("receiver answered 500: xxx"), "{error}");
    assert!(error.len() < 300, "only the first bytes are kept: {} bytes", error.len());
    let sent_mib = hose.sent.load(Ordering::SeqCst) >> 20;
    let peak_mib = peak.load(Ordering::SeqCst);
    println!("firehose: {sent_mib} MiB handed to the sockets; RSS {before_mib} MiB before, {peak_mib} MiB at most");
    assert!(sent_mib < 256, "{sent_mib} MiB were read of answers refused past a cap");
    assert!(peak_mib > 0 && peak_mib < 100, "peak RSS {peak_mib} MiB");
}

/// A failed request's error — stored with the delivery or the saga, shown to tenants — names
/// neither the user info nor the query of the URL it was sent to: they may hold credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_keep_no_credentials_of_the_url() {
    let closed = test_support::clusters::free_port();
    let url = format!("http://user:pw-s3cret@127.0.0.1:{closed}/hook?token=q-s3cret");
    let env = [("SAGAPLANE_DELIVERY_RETRY_SCHEDULE", "100ms".to_string())];
    let app = App::spawn(BIN, Backend::Sqlite, &env).await;
    let (status, _, subscription) =
        app.send(app.request(Method::POST, "/v1/subscriptions").json(&json!({"url": url, "events": ["*"]}))).await;
    assert_eq!(status, 201, "{subscription}");
    let step = json!([{"name": "call", "action": {"http": {"method": "POST", "url": url}}}]);
    app.put_definition("call", &fast_definition(step)).await;
    let saga = app.wait_terminal(&app.start("call", json!({})).await, WAIT).await;
    let dead = delivery_of(&app, subscription["id"].as_str().expect("id"), "dead").await;
    let history = app.events(saga["id"].as_str().expect("id")).await;
    let shown = format!("{saga}\n{dead}\n{}", Value::Array(history));
    assert!(dead["last_error"].as_str().unwrap_or("").contains("request failed"), "{dead}");
    assert!(!shown.contains("s3cret"), "a credential of the URL is shown: {shown}");
}
