//! `POST /v1/webhooks/crm`: Standard Webhooks signature and replay window checked, a repeated
//! `webhook-id` answered with its first result, `customer.created` onboarded like `POST /v1/tenants`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use saga_core::FieldError;
use saga_store::WebhookClaim;
use serde_json::{json, Value};

use super::*;
use crate::error::{body_rejection, ApiError};
use crate::state::AppState;

/// The `webhook-id` dedupe source of the CRM webhook.
pub(super) const CRM_SOURCE: &str = "crm";

pub async fn crm_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let secret = state.tenancy.as_ref().and_then(|t| t.crm_secret.clone());
    let Some(secret) = secret else {
        return Err(ApiError::NotFound("the CRM webhook is not configured (SAGAPLANE_CRM_WEBHOOK_SECRET)".into()));
    };
    let body = body.map_err(body_rejection)?;
    let verifier = standardwebhooks::Webhook::new(&secret)
        .map_err(|_| ApiError::Internal("SAGAPLANE_CRM_WEBHOOK_SECRET is not valid base64".into()))?;
    // Signature (constant-time) and the 5-minute timestamp window, by the Standard Webhooks crate.
    if let Err(e) = verifier.verify(&body, &headers) {
        tracing::info!(error = %e, "CRM webhook refused");
        return Err(ApiError::BadSignature(format!(
            "the webhook signature does not verify ({e}); Standard Webhooks headers with a timestamp within 5 minutes are required"
        )));
    }
    let webhook_id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 255)
        .ok_or_else(|| ApiError::BadSignature("webhook-id is missing or longer than 255 characters".into()))?
        .to_string();
    match state.store.webhook_claim(CRM_SOURCE, &webhook_id, state.clock.now_ms()).await? {
        WebhookClaim::Seen(Some(first)) => {
            let status = first["status"].as_u64().and_then(|s| StatusCode::from_u16(s as u16).ok());
            // A replay answers 200 with the first result and creates nothing.
            let status =
                if status == Some(StatusCode::ACCEPTED) { StatusCode::OK } else { status.unwrap_or(StatusCode::OK) };
            let mut response = (status, Json(first["body"].clone())).into_response();
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(response);
        }
        WebhookClaim::Seen(None) => {
            return Err(ApiError::Conflict(format!("webhook {webhook_id:?} is being processed")));
        }
        WebhookClaim::New => {}
    }
    let (status, value) = match handle_crm_event(&state, &body).await {
        Ok((status, value)) => (status, value),
        // A definite answer: replays get it too.
        Err(error @ (ApiError::Validation { .. } | ApiError::BadRequest(_) | ApiError::Conflict(_))) => {
            let response = error.into_response();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap_or_default();
            (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
        }
        // Not decided (the store failed): a redelivery is processed afresh.
        Err(error) => {
            state.store.webhook_release(CRM_SOURCE, &webhook_id).await?;
            return Err(error);
        }
    };
    state.store.webhook_complete(CRM_SOURCE, &webhook_id, &json!({"status": status.as_u16(), "body": value})).await?;
    let mut response = (status, Json(value)).into_response();
    if status.is_client_error() {
        response.headers_mut().insert("content-type", HeaderValue::from_static("application/problem+json"));
    }
    Ok(response)
}

pub(super) async fn handle_crm_event(state: &AppState, body: &[u8]) -> Result<(StatusCode, Value), ApiError> {
    let event: Value = crate::routes::common::json_body(body)?;
    match event["type"].as_str() {
        Some("customer.created") => {}
        Some(other) => {
            return Err(ApiError::field(
                "/type",
                format!("unsupported event type {other:?}; expected customer.created"),
            ))
        }
        None => return Err(ApiError::field("/type", "is required")),
    }
    let tenant = event.pointer("/data/tenant").ok_or_else(|| ApiError::field("/data/tenant", "is required"))?;
    onboard(state, tenant, Some(tenancy::hook::ORIGIN_CRM)).await.map_err(|e| match e {
        // Field paths point into the webhook body.
        ApiError::Validation { detail, errors } => ApiError::Validation {
            detail,
            errors: errors.into_iter().map(|f| FieldError { path: format!("/data/tenant{}", f.path), ..f }).collect(),
        },
        other => other,
    })
}
