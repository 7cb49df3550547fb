//! The CRM: when a deal is won it posts Sagaplane a `customer.created` webhook signed the
//! Standard Webhooks way (`SAGAPLANE_CRM_WEBHOOK_SECRET`), and it receives the signed outcome
//! callbacks (`SAGAPLANE_CRM_CALLBACK_URL`, `SAGAPLANE_CRM_CALLBACK_SECRET`), refusing any whose
//! signature does not verify. `GET /state` lists the outcomes it accepted.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Clone)]
struct Crm {
    sagaplane: String,
    webhook_secret: String,
    callbacks: Arc<standardwebhooks::Webhook>,
    outcomes: Arc<Mutex<Vec<Value>>>,
    refused: Arc<Mutex<u32>>,
    client: reqwest::Client,
}

/// The CRM's routes: `POST /deals/{tenant}/won` (body: the tenant, as `POST /v1/tenants` takes
/// it), `POST /callbacks`, `GET /state`.
pub fn router(sagaplane: &str, webhook_secret: &str, callback_secret: &str) -> anyhow::Result<Router> {
    let crm = Crm {
        sagaplane: sagaplane.trim_end_matches('/').to_string(),
        webhook_secret: webhook_secret.to_string(),
        callbacks: Arc::new(standardwebhooks::Webhook::new(callback_secret)?),
        outcomes: Arc::default(),
        refused: Arc::default(),
        client: reqwest::Client::new(),
    };
    Ok(Router::new()
        .route("/deals/{tenant}/won", post(deal_won))
        .route("/callbacks", post(callback))
        .route("/state", get(state))
        .with_state(crm))
}

async fn deal_won(
    State(crm): State<Crm>,
    Path(tenant): Path<String>,
    Json(mut body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    body["id"] = json!(tenant);
    let payload = json!({"type": "customer.created", "data": {"tenant": body}}).to_string();
    let id = format!("deal-{tenant}");
    let timestamp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let signature = match standardwebhooks::Webhook::new(&crm.webhook_secret)
        .and_then(|w| w.sign(&id, timestamp, payload.as_bytes()))
    {
        Ok(signature) => signature,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": e.to_string()}))),
    };
    let sent = crm
        .client
        .post(format!("{}/v1/webhooks/crm", crm.sagaplane))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(payload)
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, Json(response.json().await.unwrap_or(Value::Null)))
        }
        Err(e) => (StatusCode::BAD_GATEWAY, Json(json!({"error": e.to_string()}))),
    }
}

async fn callback(State(crm): State<Crm>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if crm.callbacks.verify(&body, &headers).is_err() {
        *crm.refused.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let webhook_id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut outcomes = crm.outcomes.lock().unwrap_or_else(|p| p.into_inner());
    // A redelivery (same webhook-id) is acknowledged and not counted twice.
    if !outcomes.iter().any(|o| o["webhook_id"] == webhook_id) {
        outcomes.push(json!({"webhook_id": webhook_id, "type": event["type"], "tenant_id": event["data"]["tenant_id"], "data": event["data"]}));
    }
    StatusCode::OK
}

async fn state(State(crm): State<Crm>) -> Json<Value> {
    let outcomes = crm.outcomes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let refused = *crm.refused.lock().unwrap_or_else(|p| p.into_inner());
    Json(json!({"outcomes": outcomes, "refused": refused}))
}
