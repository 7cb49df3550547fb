//! The tenant lifecycle (docs/api.md, "Tenants"): create (onboarding), list, read, patch, delete
//! (offboarding), provisioning status, cancel-provisioning, retry-migration, suspend and resume.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use saga_core::tenant::{TenantStatus, Tier};
use saga_store::{TenantFilter, WebhookClaim};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

use super::requests::*;
use super::*;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::routes::common::{load, page, page_of, parse_body, seen_by};
use crate::state::AppState;
use crate::views;

/// Creates a tenant and starts its provisioning: the body of `POST /v1/tenants` (also used by
/// the CRM webhook and `sagaplane dev`'s demo tenant), `origin` (e.g. the CRM) going into the
/// provision saga's input. Returns `202 {tenant, saga_id}`.
pub async fn onboard(state: &AppState, body: &Value, origin: Option<&str>) -> Result<(StatusCode, Value), ApiError> {
    let lifecycle = lifecycle(state)?;
    let tenant = parse_tenant(body, &lifecycle)?;
    let (tenant, saga) = lifecycle.onboard(tenant, origin).await?;
    Ok((StatusCode::ACCEPTED, json!({"tenant": views::tenant(&tenant), "saga_id": saga.id})))
}

/// Idempotency-Key handling for `POST /v1/tenants`, stored with the inbound-webhook receipts.
pub(super) const IDEMPOTENCY_SOURCE: &str = "tenants:idempotency-key";

pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let key = crate::routes::common::idempotency_key(&headers)?;
    let body = parse_body(body)?;
    let hash = hex::encode(Sha256::digest(body.to_string().as_bytes()));
    let Some(key) = key else {
        let (status, value) = onboard(&state, &body, None).await?;
        return Ok((status, Json(value)).into_response());
    };
    match state.store.webhook_claim(IDEMPOTENCY_SOURCE, &key, state.clock.now_ms()).await? {
        WebhookClaim::Seen(Some(first)) if first["request_hash"] == json!(hash) => {
            let mut response = (StatusCode::OK, Json(first["response"].clone())).into_response();
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
        WebhookClaim::Seen(Some(_)) => {
            Err(ApiError::Conflict("this Idempotency-Key was used with a different request body".into()))
        }
        WebhookClaim::Seen(None) => {
            Err(ApiError::Conflict("a request with this Idempotency-Key is in progress".into()))
        }
        WebhookClaim::New => match onboard(&state, &body, None).await {
            Ok((status, value)) => {
                let first = json!({"request_hash": hash, "response": value});
                state.store.webhook_complete(IDEMPOTENCY_SOURCE, &key, &first).await?;
                Ok((status, Json(value)).into_response())
            }
            Err(e) => {
                state.store.webhook_release(IDEMPOTENCY_SOURCE, &key).await?;
                Err(e)
            }
        },
    }
}

pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    tenancy(&state)?;
    for key in query.keys() {
        if !["status", "tier", "limit", "cursor"].contains(&key.as_str()) {
            return Err(ApiError::BadRequest(format!("invalid query: unknown parameter {key:?}")));
        }
    }
    let status = match query.get("status") {
        None => None,
        Some(s) => Some(TenantStatus::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!("invalid query: unknown status {s:?}; expected {}", TenantStatus::expected()))
        })?),
    };
    let tier = match query.get("tier") {
        None => None,
        Some(t) => {
            Some(Tier::parse(t).ok_or_else(|| ApiError::BadRequest(format!("invalid query: unknown tier {t:?}")))?)
        }
    };
    let limit = crate::routes::common::query_limit(query.get("limit"))?;
    if let Some(scope) = principal.tenant_scope() {
        // A tenant key sees a list of one.
        let tenant = load_tenant(&state, &principal, scope).await?;
        let matches = status.is_none_or(|s| s == tenant.status) && tier.is_none_or(|t| t == tenant.tier);
        let items: Vec<Value> = if matches { vec![views::for_tenant(views::tenant(&tenant))] } else { Vec::new() };
        return Ok(page(items, None));
    }
    let filter =
        TenantFilter { status, tier, after_id: query.get("cursor").cloned(), limit: saga_store::clamp_limit(limit) };
    let records = state.store.tenant_list(&filter).await?;
    Ok(page_of(&records, filter.limit, views::tenant, |r| r.id.clone()))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(seen_by(&principal, views::tenant(&load_tenant(&state, &principal, &id).await?))))
}

pub async fn patch(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let tenant = load_tenant(&state, &principal, &id).await?;
    let body = parse_body(body)?;
    let patch = parse_patch(&body)?;
    if patch.sla_tier.is_some() && principal.tenant_scope().is_some() {
        return Err(ApiError::Forbidden(
            "sla_tier is set by the operator; a tenant API key may change name, domains, contacts and metadata".into(),
        ));
    }
    if tenant.status == TenantStatus::Deleted {
        return Err(ApiError::Conflict("tenant is DELETED".into()));
    }
    let updated = state.store.tenant_patch(&id, &patch, state.clock.now_ms()).await?;
    Ok(Json(seen_by(&principal, views::tenant(&updated))))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let grace_ms = match query.get("grace") {
        Some(text) => grace(text)?,
        None => tenancy(&state)?.delete_grace_ms,
    };
    let tenant = load_tenant(&state, &principal, &id).await?;
    let saga = lifecycle(&state)?.offboard(&tenant, grace_ms).await?;
    let tenant = state.store.tenant_get(&id).await?;
    let delete_at = tenant.delete_at_ms.map(views::timestamp);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"saga_id": saga.id, "status": tenant.status.as_str(), "delete_at": delete_at})),
    )
        .into_response())
}

/// `?grace=`, as OpenAPI states it ([`GRACE_PATTERN`]): a whole number of seconds (up to 8
/// digits), minutes (6), hours (4) or days (at most 3650) — `0s` deletes at once.
fn grace(text: &str) -> Result<u64, ApiError> {
    let refused = || {
        ApiError::BadRequest(format!(
            "invalid query: grace {text:?} must be a whole number of s, m, h or d, at most 3650d (e.g. 0s, 12h, 7d)"
        ))
    };
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let (most_digits, unit_ms) = match unit {
        "s" => (8, 1_000),
        "m" => (6, 60_000),
        "h" => (4, 3_600_000),
        "d" => (4, 86_400_000),
        _ => return Err(refused()),
    };
    let n: u64 = number.parse().map_err(|_| refused())?;
    if digits > most_digits || (unit == "d" && n > 3_650) {
        return Err(refused());
    }
    Ok(n * unit_ms)
}

/// The `?grace=` a tenant deletion takes, as a JSON Schema pattern.
pub const GRACE_PATTERN: &str =
    "^([0-9]{1,8}s|[0-9]{1,6}m|[0-9]{1,4}h|([0-9]{1,3}|[0-2][0-9]{3}|3[0-5][0-9]{2}|36[0-4][0-9]|3650)d)$";

/// Brings back a tenant deleted with a grace period, before the grace ends.
pub async fn restore(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let tenant = load_tenant(&state, &principal, &id).await?;
    let restored = lifecycle(&state)?.restore(&tenant).await?;
    Ok(Json(views::tenant(&restored)))
}

pub async fn provisioning_status(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = load_tenant(&state, &principal, &id).await?;
    let saga = match tenant.saga_id {
        Some(saga_id) => Some(load(&state, saga_id).await?),
        None => None,
    };
    let progress = saga.as_ref().map(|s| s.state.progress());
    Ok(Json(json!({
        "status": tenant.status.as_str(),
        "saga_id": tenant.saga_id,
        "saga_status": saga.as_ref().map(|s| s.status.as_str()),
        "progress": progress,
        "current_step": progress.as_ref().and_then(|p| p.current_step.clone()),
        "error": tenant.error,
    })))
}

pub async fn cancel_provisioning(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let tenant = load_tenant(&state, &principal, &id).await?;
    let saga = lifecycle(&state)?.cancel_provisioning(&tenant).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"saga_id": saga.id, "status": "cancel requested"}))).into_response())
}

pub async fn retry_migration(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let tenant = load_tenant(&state, &principal, &id).await?;
    let (tenant, saga_id) = lifecycle(&state)?.retry_migration(&tenant).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"tenant": views::tenant(&tenant), "saga_id": saga_id}))).into_response())
}

async fn set_access(
    state: &AppState,
    principal: &Principal,
    id: &str,
    to: TenantStatus,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let tenant = load_tenant(state, principal, id).await?;
    let updated = lifecycle(state)?.set_access(&tenant, to).await?;
    Ok(Json(views::tenant(&updated)))
}

pub async fn suspend(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_access(&state, &principal, &id, TenantStatus::Suspended).await
}

pub async fn resume(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_access(&state, &principal, &id, TenantStatus::Active).await
}
