//! Deleting a tenant with a grace period: `SUSPENDED` at once with `delete_at`, its storage
//! destroyed only when the grace ends (the deprovision saga's durable timer), and
//! `POST /v1/tenants/{id}/restore` within the grace brings it back `ACTIVE` with its storage.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use test_support::{eventually, App, Backend};

use crate::tenants::{suffix, until_status};
use crate::BIN;

const WAIT: Duration = Duration::from_secs(60);

async fn call(app: &App, method: Method, path: &str) -> (u16, Value) {
    let (status, _, body) = app.send(app.request(method, path)).await;
    (status, body)
}

async fn onboard(app: &App, id: &str) -> Value {
    let request = app.request(Method::POST, "/v1/tenants").json(&json!({"id": id, "name": id}));
    let (status, _, body) = app.send(request).await;
    assert_eq!(status, 202, "{body}");
    let tenant = until_status(app, id, &["ACTIVE", "PROVISION_ERROR", "MIGRATION_ERROR"]).await;
    assert_eq!(tenant["status"], "ACTIVE", "{tenant}");
    tenant
}

fn millis_from_now(text: &Value) -> i64 {
    let at = chrono::DateTime::parse_from_rfc3339(text.as_str().unwrap_or_default()).expect("a time");
    at.timestamp_millis() - chrono::Utc::now().timestamp_millis()
}

async fn a_tenant_deleted_with_a_grace_period_is_restored_or_deleted_when_it_ends(backend: Backend) {
    let app = App::spawn(BIN, backend, &[]).await;
    // Role names are the cluster's: an id of its own.
    let id = format!("grace-{}", suffix());
    let storage = onboard(&app, &id).await["storage"].clone();
    let path = format!("/v1/tenants/{id}");

    let (status, body) = call(&app, Method::DELETE, &format!("{path}?grace=7d")).await;
    assert_eq!((status, &body["status"]), (202, &json!("SUSPENDED")), "{body}");
    let days = millis_from_now(&body["delete_at"]) / 86_400_000;
    assert_eq!(days, 6, "seven days from now, less the moments since: {body}");
    let saga_id = body["saga_id"].as_str().unwrap_or_default().to_string();
    let (_, tenant) = call(&app, Method::GET, &path).await;
    assert_eq!((&tenant["status"], &tenant["delete_at"]), (&json!("SUSPENDED"), &body["delete_at"]), "{tenant}");
    let blocker = eventually("the grace timer", WAIT, || async {
        let (_, body) = call(&app, Method::GET, &format!("/v1/sagas/{saga_id}/blockers")).await;
        (body["blockers"][0]["kind"] == "timer").then(|| body["blockers"][0].clone())
    })
    .await;
    assert_eq!((&blocker["step"], &blocker["until"]), (&json!("grace"), &tenant["delete_at"]), "{blocker}");

    // While it runs: no plain resume, no second delete; bad input changes nothing.
    let (status, body) = call(&app, Method::POST, &format!("{path}/resume")).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["detail"].as_str().unwrap_or_default().contains("/restore"), "{body}");
    assert_eq!(call(&app, Method::DELETE, &path).await.0, 409);
    let (status, body) = call(&app, Method::DELETE, &format!("{path}?grace=soon")).await;
    assert_eq!(status, 400, "{body}");

    let (status, restored) = call(&app, Method::POST, &format!("{path}/restore")).await;
    assert_eq!(status, 200, "{restored}");
    assert_eq!((&restored["status"], &restored["delete_at"]), (&json!("ACTIVE"), &Value::Null), "{restored}");
    assert_eq!(restored["storage"], storage, "its storage is still there");
    let saga = app.wait_terminal(&saga_id, WAIT).await;
    assert_eq!(saga["status"], "COMPENSATED", "the deletion was cancelled and undone: {saga}");
    let (status, body) = call(&app, Method::POST, &format!("{path}/restore")).await;
    assert_eq!(status, 409, "nothing to restore any more: {body}");
    let (_, tenant) = call(&app, Method::GET, &path).await;
    assert_eq!(tenant["status"], "ACTIVE", "the cancelled saga left it ACTIVE: {tenant}");

    // A short grace that ends: DEPROVISIONING, then DELETED; too late to restore.
    let (status, body) = call(&app, Method::DELETE, &format!("{path}?grace=2s")).await;
    assert_eq!((status, &body["status"]), (202, &json!("SUSPENDED")), "{body}");
    let deleted = until_status(&app, &id, &["DELETED"]).await;
    assert_eq!(deleted["status"], "DELETED", "{deleted}");
    let (status, body) = call(&app, Method::POST, &format!("{path}/restore")).await;
    assert_eq!(status, 409, "{body}");
    let saga = app.wait_terminal(body_saga(&app, &id).await.as_str(), WAIT).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    let grace_step = saga["steps"].as_array().into_iter().flatten().find(|s| s["name"] == "grace").cloned();
    assert_eq!(grace_step.map(|s| s["status"].clone()), Some(json!("SUCCEEDED")), "{saga}");
}
crate::on_both_backends!(a_tenant_deleted_with_a_grace_period_is_restored_or_deleted_when_it_ends);

async fn body_saga(app: &App, tenant: &str) -> String {
    let (_, tenant) = call(app, Method::GET, &format!("/v1/tenants/{tenant}")).await;
    tenant["saga_id"].as_str().unwrap_or_default().to_string()
}

/// `SAGAPLANE_TENANT_DELETE_GRACE` is the default; `?grace=0s` still deletes at once, and the
/// grace step is skipped then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployments_grace_is_the_default_and_zero_deletes_at_once() {
    let app = App::spawn(BIN, Backend::Sqlite, &[("SAGAPLANE_TENANT_DELETE_GRACE", "1h".to_string())]).await;
    onboard(&app, "acme").await;
    onboard(&app, "beta").await;
    let (status, body) = call(&app, Method::DELETE, "/v1/tenants/acme").await;
    assert_eq!((status, &body["status"]), (202, &json!("SUSPENDED")), "{body}");
    let minutes = millis_from_now(&body["delete_at"]) / 60_000;
    assert_eq!(minutes, 59, "an hour from now: {body}");

    let (status, body) = call(&app, Method::DELETE, "/v1/tenants/beta?grace=0s").await;
    assert_eq!((status, &body["status"], &body["delete_at"]), (202, &json!("DEPROVISIONING"), &Value::Null), "{body}");
    until_status(&app, "beta", &["DELETED"]).await;
    let saga = app.wait_terminal(body["saga_id"].as_str().unwrap_or_default(), WAIT).await;
    let grace_step = saga["steps"].as_array().into_iter().flatten().find(|s| s["name"] == "grace").cloned();
    assert_eq!(grace_step.map(|s| s["status"].clone()), Some(json!("SKIPPED")), "{saga}");
}
