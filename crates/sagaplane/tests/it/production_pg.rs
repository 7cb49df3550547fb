//! PostgreSQL as production runs it, each on a cluster the test makes for itself: PgBouncer in
//! transaction mode (Debian's 1.18, default settings), TLS with a CA the test makes, and the
//! `/ready` rules of a rolling upgrade.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::fast_definition;
use test_support::clusters::{free_port, Cluster, PgBouncer};
use test_support::{eventually, App, Participant};

use crate::BIN;

const WAIT: Duration = Duration::from_secs(90);

async fn get(app: &App, path: &str) -> (u16, Value) {
    let (status, _, body) = app.send(app.request(Method::GET, path)).await;
    (status, body)
}

async fn post(app: &App, path: &str, body: Value) -> (u16, Value) {
    let (status, _, body) = app.send(app.request(Method::POST, path).json(&body)).await;
    (status, body)
}

/// A cluster where loopback logins are trusted: PgBouncer checks passwords (`auth_query`).
fn trusting_cluster(name: &str) -> Cluster {
    let cluster = Cluster::create(name, free_port(), "max_connections = 200\n", "host all all 127.0.0.1/32 trust");
    cluster.psql("CREATE ROLE sagaplane LOGIN CREATEDB CREATEROLE PASSWORD 'sagaplane'");
    cluster.psql("CREATE DATABASE sagaplane OWNER sagaplane");
    cluster
}

/// Through PgBouncer in transaction mode with nothing else set: sagas (many at once), signals,
/// async callbacks, every tenant tier, outbound deliveries — no prepared-statement error
/// anywhere, and wakeups polled (said in /v1/status and the metric) since no LISTEN URL is set.
/// Then with `SAGAPLANE_LISTEN_URL`, LISTEN carries wakeups.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn everything_works_through_pgbouncer_in_transaction_mode() {
    let cluster = trusting_cluster("sagaplane_it_bouncer");
    let bouncer = PgBouncer::start(free_port(), cluster.port, "transaction", 10);
    let url = format!("postgres://sagaplane:sagaplane@127.0.0.1:{}/sagaplane", bouncer.port);
    let participant = Participant::start().await;
    participant.script("/stacks", vec![(202, json!({"accepted": true}))]);
    let receiver = Participant::start().await;
    let env = [("SAGAPLANE_VAR_P", participant.url.clone())];
    let app = App::spawn_on(BIN, &url, &["server"], &env).await;

    let (status, body) = get(&app, "/v1/status").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["database"]["route"], "transaction_pooler", "{body}");
    assert_eq!(body["database"]["wakeups"], "polling", "{body}");
    assert!(body["database"]["wakeups_reason"].as_str().unwrap_or("").contains("SAGAPLANE_LISTEN_URL"), "{body}");
    let metrics = reqwest::get(format!("{}/metrics", app.url)).await.expect("metrics").text().await.expect("text");
    assert!(metrics.lines().any(|l| l.starts_with("saga_db_wakeups_polling") && l.ends_with(" 1")), "{metrics}");
    let (status, ready) = get(&app, "/ready").await;
    assert_eq!(status, 200, "{ready}");

    // A subscription for every event: deliveries go out through the pooler too.
    let (status, sub) = post(&app, "/v1/subscriptions", json!({"url": format!("{}/hook", receiver.url), "events": ["*"]})).await;
    assert_eq!(status, 201, "{sub}");

    // 200 sagas of three steps at once.
    let three = fast_definition(json!([
        {"name": "a", "action": {"builtin": "core.echo", "input": {"n": 1}}},
        {"name": "b", "action": {"http": {"method": "POST", "url": "{{ vars.P }}/b"}}},
        {"name": "c", "action": {"builtin": "core.echo", "input": {"n": 3}}},
    ]));
    assert_eq!(app.put_definition("three", &three).await.0, 201);
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(app.start("three", json!({"i": i})).await);
    }
    // A signal and an async callback.
    let approval = fast_definition(json!([
        {"name": "approve", "action": {"signal": {"name": "approval"}}},
        {"name": "record", "action": {"builtin": "core.echo", "input": {"by": "{{ steps.approve.output.by }}"}}},
    ]));
    assert_eq!(app.put_definition("approval", &approval).await.0, 201);
    let waiting = app.start("approval", json!({})).await;
    let callback = fast_definition(json!([
        {"name": "provision", "action": {"http": {"method": "POST", "url": "{{ vars.P }}/stacks", "async": true}}},
    ]));
    assert_eq!(app.put_definition("callback", &callback).await.0, 201);
    let called = app.start("callback", json!({})).await;
    // Tenants in every tier.
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let tenants: Vec<String> = ["pooled", "bridge", "silo"].iter().map(|tier| format!("{tier}-{suffix}")).collect();
    for (id, tier) in tenants.iter().zip(["pooled", "bridge", "silo"]) {
        let (status, body) = post(&app, "/v1/tenants", json!({"id": id, "name": id, "tier": tier})).await;
        assert_eq!(status, 202, "{body}");
    }

    for id in &ids {
        let saga = app.wait_terminal(id, WAIT).await;
        assert_eq!(saga["status"], "COMPLETED", "{saga}");
    }
    let (status, body) = post(&app, &format!("/v1/sagas/{waiting}/signals/approval"), json!({"by": "ann"})).await;
    assert_eq!(status, 202, "{body}");
    let saga = app.wait_terminal(&waiting, WAIT).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    let callback_url = eventually("the async request", WAIT, || async {
        participant.requests("/stacks").first().and_then(|r| r.headers.get("x-saga-callback-url").cloned())
    })
    .await;
    let answered = reqwest::Client::new()
        .post(&callback_url)
        .json(&json!({"status": "succeeded", "output": {"stack": "s1"}}))
        .send()
        .await
        .expect("callback");
    assert!(answered.status().is_success(), "{}", answered.status());
    let saga = app.wait_terminal(&called, WAIT).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    for id in &tenants {
        let tenant = eventually(&format!("tenant {id} settled"), WAIT, || async {
            let (_, tenant) = get(&app, &format!("/v1/tenants/{id}")).await;
            matches!(tenant["status"].as_str(), Some("ACTIVE" | "PROVISION_ERROR")).then_some(tenant)
        })
        .await;
        assert_eq!(tenant["status"], "ACTIVE", "{tenant}");
    }
    // Deliveries: at least the tenants' events reached the receiver.
    eventually("deliveries through the pooler", WAIT, || async {
        (receiver.requests("/hook").len() >= tenants.len()).then_some(())
    })
    .await;
    // Offboarding every tier through the pooler too.
    for id in &tenants {
        let (status, _, body) = app.send(app.request(Method::DELETE, &format!("/v1/tenants/{id}"))).await;
        assert!(status == 202 || status == 200, "{status} {body}");
    }
    for id in &tenants {
        eventually(&format!("tenant {id} deleted"), WAIT, || async {
            let (status, tenant) = get(&app, &format!("/v1/tenants/{id}")).await;
            (status == 404 || tenant["status"] == "DELETED").then_some(())
        })
        .await;
    }
    let log = bouncer.log();
    assert!(!log.contains("prepared statement"), "PgBouncer saw prepared-statement errors:\n{log}");
    drop(app);

    // With a direct connection for LISTEN, wakeups are notifications again.
    let listen_url = format!("postgres://sagaplane:sagaplane@127.0.0.1:{}/sagaplane", cluster.port);
    let app = App::spawn_on(BIN, &url, &["server"], &[("SAGAPLANE_LISTEN_URL", listen_url)]).await;
    let body = eventually("LISTEN hears", Duration::from_secs(30), || async {
        let (_, body) = get(&app, "/v1/status").await;
        (body["database"]["wakeups"] == "listen").then_some(body)
    })
    .await;
    assert_eq!(body["database"]["route"], "transaction_pooler", "{body}");
    drop(app);

    // A LISTEN through the pooler lands on a borrowed server and stops hearing: the self-check
    // notices, and the instance polls (and says why) instead of waiting for wakeups forever.
    let deaf_listen = url.clone();
    let app = App::spawn_on(BIN, &url, &["server"], &[("SAGAPLANE_LISTEN_URL", deaf_listen)]).await;
    let body = eventually("the deaf listener noticed", Duration::from_secs(60), || async {
        let (_, body) = get(&app, "/v1/status").await;
        let reason = body["database"]["wakeups_reason"].as_str().unwrap_or("").to_string();
        (body["database"]["wakeups"] == "polling" && reason.contains("NOTIFY")).then_some(body)
    })
    .await;
    assert_eq!(body["database"]["route"], "transaction_pooler", "{body}");
    let id = app.start("three", json!({"i": "after"})).await;
    assert_eq!(app.wait_terminal(&id, WAIT).await["status"], "COMPLETED");
}

/// A database whose LISTEN connection stops hearing (its backend terminated behind its back) is
/// noticed by the self-check: wakeups fall back to polling, then LISTEN is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_stops_hearing_falls_back_to_polling() {
    let url = test_support::db::fresh_postgres().await;
    let app = App::spawn_on(BIN, &url, &["server"], &[]).await;
    eventually("LISTEN hears", Duration::from_secs(30), || async {
        let (_, body) = get(&app, "/v1/status").await;
        (body["database"]["wakeups"] == "listen").then_some(())
    })
    .await;
    // Kill the listener's backend: the listener must notice and come back.
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind("sagaplane listen")
    .fetch_one(&mut admin)
    .await
    .expect("terminate the listener");
    assert!(killed >= 1, "a LISTEN backend to terminate");
    eventually("LISTEN hears again", Duration::from_secs(30), || async {
        let (_, body) = get(&app, "/v1/status").await;
        (body["database"]["wakeups"] == "listen").then_some(())
    })
    .await;
}

use sqlx::Connection;
