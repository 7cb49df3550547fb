//! The third party that receives each tenant's location updates at `/hooks/{tenant}`. It checks
//! every delivery's Standard Webhooks signature with that tenant's subscription secret, keeps
//! each event once (by `webhook-id`), and can be told to fail (503) and to recover.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Default)]
struct ThirdParty {
    secrets: Mutex<BTreeMap<String, String>>,
    failing: AtomicBool,
    received: Mutex<Vec<Value>>,
    refused: Mutex<u32>,
}

pub fn router() -> Router {
    Router::new()
        .route("/hooks/{tenant}", post(hook))
        .route("/secrets/{tenant}", post(secret))
        .route(
            "/control/fail",
            post(|State(t): State<Arc<ThirdParty>>| async move { t.failing.store(true, Ordering::SeqCst) }),
        )
        .route(
            "/control/recover",
            post(|State(t): State<Arc<ThirdParty>>| async move { t.failing.store(false, Ordering::SeqCst) }),
        )
        .route("/received", get(received))
        .with_state(Arc::new(ThirdParty::default()))
}

async fn secret(
    State(third): State<Arc<ThirdParty>>,
    Path(tenant): Path<String>,
    Json(body): Json<Value>,
) -> StatusCode {
    match body["secret"].as_str() {
        Some(secret) => {
            third.secrets.lock().unwrap_or_else(|p| p.into_inner()).insert(tenant, secret.to_string());
            StatusCode::NO_CONTENT
        }
        None => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

async fn hook(
    State(third): State<Arc<ThirdParty>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if third.failing.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let secret = third.secrets.lock().unwrap_or_else(|p| p.into_inner()).get(&tenant).cloned();
    let verified =
        secret.and_then(|s| standardwebhooks::Webhook::new(&s).ok()).is_some_and(|w| w.verify(&body, &headers).is_ok());
    if !verified {
        *third.refused.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let webhook_id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let mut received = third.received.lock().unwrap_or_else(|p| p.into_inner());
    if !received.iter().any(|r| r["webhook_id"] == webhook_id) {
        received.push(
            json!({"path_tenant": tenant, "webhook_id": webhook_id, "type": event["type"], "data": event["data"]}),
        );
    }
    StatusCode::OK
}

async fn received(State(third): State<Arc<ThirdParty>>) -> Json<Value> {
    let received = third.received.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let refused = *third.refused.lock().unwrap_or_else(|p| p.into_inner());
    Json(json!({"items": received, "refused": refused}))
}
