//! What a tenant's subscriptions may be (docs/security.md, "Outbound"): NATS subjects under the
//! tenant's prefix and never the NATS system's own, a cap on how many it makes, and the rule for
//! a subscription the operator makes for a tenant — the tenant sees it, only the operator
//! changes it, and its destination is the operator's.

use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::fast_definition;
use test_support::{App, Backend, Participant};

use crate::delivery::delivery_of;
use crate::BIN;

fn as_key(app: &App, token: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
    app.http.request(method, format!("{}{path}", app.url)).bearer_auth(token.to_string())
}

fn nats(subject: &str) -> Value {
    json!({"nats": {"url": "nats://nats.example.com:4222", "subject": subject}, "events": ["*"]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_nats_subjects_stay_under_its_prefix() {
    let app = App::spawn(BIN, Backend::Sqlite, &[]).await;
    let token = crate::tenants::active_with_key(&app, "acme").await;
    for (subject, why) in [
        ("$JS.API.STREAM.DELETE.events", "NATS system"),
        ("orders.created", "tenants.acme."),
        ("tenants.beta.events", "tenants.acme."),
        ("tenants.acme", "tenants.acme."),
    ] {
        let (status, _, body) =
            app.send(as_key(&app, &token, Method::POST, "/v1/subscriptions").json(&nats(subject))).await;
        assert_eq!(status, 422, "{subject}: {body}");
        assert_eq!(body["errors"][0]["path"], "/nats/subject", "{body}");
        assert!(body["errors"][0]["message"].as_str().unwrap_or("").contains(why), "{subject}: {body}");
    }
    let (status, _, body) =
        app.send(as_key(&app, &token, Method::POST, "/v1/subscriptions").json(&nats("tenants.acme.events"))).await;
    assert_eq!(status, 201, "{body}");
    // The operator publishes where it likes, except into the NATS system's own subjects.
    let (status, _, body) = app.send(app.request(Method::POST, "/v1/subscriptions").json(&nats("$JS.API.>"))).await;
    assert_eq!(status, 422, "{body}");
    let (status, _, body) = app.send(app.request(Method::POST, "/v1/subscriptions").json(&nats("audit.events"))).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_makes_at_most_its_cap_of_subscriptions() {
    let app = App::spawn(BIN, Backend::Sqlite, &[("SAGAPLANE_TENANT_SUBSCRIPTIONS_MAX", "3".to_string())]).await;
    let token = crate::tenants::active_with_key(&app, "acme").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = json!({"url": format!("https://hooks.example.com/{i}"), "events": ["*"]});
        let (status, _, created) = app.send(as_key(&app, &token, Method::POST, "/v1/subscriptions").json(&body)).await;
        assert_eq!(status, 201, "{created}");
        ids.push(created["id"].as_str().expect("id").to_string());
    }
    let body = json!({"url": "https://hooks.example.com/4", "events": ["*"]});
    let (status, _, refused) = app.send(as_key(&app, &token, Method::POST, "/v1/subscriptions").json(&body)).await;
    assert_eq!(status, 409, "{refused}");
    assert!(refused["detail"].as_str().unwrap_or("").contains("SAGAPLANE_TENANT_SUBSCRIPTIONS_MAX"), "{refused}");
    // The operator's subscriptions for the tenant do not count against it.
    let body = json!({"url": "https://ops.example.com/acme", "events": ["*"], "tenant_id": "acme"});
    let (status, _, created) = app.send(app.request(Method::POST, "/v1/subscriptions").json(&body)).await;
    assert_eq!(status, 201, "{created}");
    // One deleted, one more fits.
    let (status, _, _) = app.send(as_key(&app, &token, Method::DELETE, &format!("/v1/subscriptions/{}", ids[0]))).await;
    assert_eq!(status, 204);
    let body = json!({"url": "https://hooks.example.com/5", "events": ["*"]});
    let (status, _, created) = app.send(as_key(&app, &token, Method::POST, "/v1/subscriptions").json(&body)).await;
    assert_eq!(status, 201, "{created}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_subscription_for_a_tenant_stays_the_operators() {
    let receiver = Participant::start().await;
    let app = App::spawn(BIN, Backend::Sqlite, &[]).await;
    let token = crate::tenants::active_with_key(&app, "acme").await;
    // Made by the operator for acme, to an address only the operator's destinations reach.
    let body = json!({"url": format!("{}/ops", receiver.url), "events": ["saga.completed"], "tenant_id": "acme"});
    let (status, _, managed) = app.send(app.request(Method::POST, "/v1/subscriptions").json(&body)).await;
    assert_eq!(status, 201, "{managed}");
    assert_eq!(managed["managed"], true, "{managed}");
    let id = managed["id"].as_str().expect("id").to_string();
    // acme sees it...
    let (status, _, seen) = app.send(as_key(&app, &token, Method::GET, &format!("/v1/subscriptions/{id}"))).await;
    assert_eq!((status, seen["managed"].clone()), (200, json!(true)), "{seen}");
    // ...but changes nothing about it: above all not its secret, which would let it sign as the
    // operator.
    let path = format!("/v1/subscriptions/{id}");
    let changes = [
        (Method::PATCH, path.clone(), json!({"status": "disabled"})),
        (Method::POST, format!("{path}/rotate-secret"), json!({})),
        (Method::POST, format!("{path}/recover"), json!({"since": "2020-01-01T00:00:00Z"})),
        (Method::DELETE, path.clone(), json!({})),
    ];
    for (method, path, body) in changes {
        let (status, _, answer) = app.send(as_key(&app, &token, method.clone(), &path).json(&body)).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
    }
    // Its own subscription, acme changes at will.
    let own = json!({"url": "https://hooks.example.com/acme", "events": ["*"]});
    let (status, _, created) = app.send(as_key(&app, &token, Method::POST, "/v1/subscriptions").json(&own)).await;
    assert_eq!((status, created["managed"].clone()), (201, json!(false)), "{created}");
    let rotate = format!("/v1/subscriptions/{}/rotate-secret", created["id"].as_str().expect("id"));
    assert_eq!(app.send(as_key(&app, &token, Method::POST, &rotate)).await.0, 200);
    // The operator's destination is checked as the operator's: its loopback receiver is reached.
    app.put_definition("one", &fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}]))).await;
    let start = json!({"definition": "one", "input": {}, "tenant_id": "acme"});
    let (status, _, saga) = app.send(app.request(Method::POST, "/v1/sagas?wait=10s").json(&start)).await;
    assert!(status == 200 || status == 201, "{saga}");
    delivery_of(&app, &id, "succeeded").await;
    assert_eq!(receiver.requests("/ops").len(), 1);
}

/// `/metrics` (served to anyone) labels destinations by subscription id only — never by text a
/// tenant chose — and a deleted subscription's series are gone from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_subscriptions_series_leave_the_metrics() {
    let receiver = Participant::start().await;
    let app = App::spawn(BIN, Backend::Sqlite, &[("SAGAPLANE_HTTP_ALLOW", "127.0.0.1".to_string())]).await;
    let token = crate::tenants::active_with_key(&app, "acme").await;
    let body =
        json!({"url": format!("{}/chosen-by-acme?label=tenant-text", receiver.url), "events": ["saga.completed"]});
    let (status, _, created) = app.send(as_key(&app, &token, Method::POST, "/v1/subscriptions").json(&body)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    app.put_definition("one", &fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}]))).await;
    let start = json!({"definition": "one", "input": {}, "tenant_id": "acme"});
    let (status, _, saga) = app.send(app.request(Method::POST, "/v1/sagas?wait=10s").json(&start)).await;
    assert!(status == 200 || status == 201, "{saga}");
    delivery_of(&app, &id, "succeeded").await;
    let metrics =
        || async { reqwest::get(format!("{}/metrics", app.url)).await.expect("metrics").text().await.expect("text") };
    let before = metrics().await;
    assert!(before.contains(&format!("subscription=\"{id}\"")), "{before}");
    assert!(!before.contains("chosen-by-acme") && !before.contains("tenant-text"), "tenant text in a label");
    let (status, _, _) = app.send(as_key(&app, &token, Method::DELETE, &format!("/v1/subscriptions/{id}"))).await;
    assert_eq!(status, 204);
    let after = metrics().await;
    assert!(!after.contains(&id), "a deleted subscription's series are still shown");
    assert!(
        after.contains("saga_delivery_attempts_total") || !before.contains("saga_delivery_attempts_total{"),
        "{after}"
    );
}
