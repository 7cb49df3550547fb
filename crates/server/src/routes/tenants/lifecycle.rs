//! The tenant lifecycle (docs/api.md, "Tenants"): create (onboarding), list, read, patch, delete
//! (offboarding), provisioning status, cancel-provisioning, retry-migration, suspend and resume.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use saga_core::tenant::{TenantStatus, Tier};
use saga_core::SagaStatus;
use saga_store::events::{self, TenantEvent};
use saga_store::{StoreError, TenantFilter, TenantRecord, TenantTransition, WebhookClaim};
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
/// the CRM webhook and `sagaplane dev`'s demo tenant). Returns `202 {tenant, saga_id}`.
/// Creates the tenant and its provision saga; `origin` (e.g. the CRM) goes into the saga's input.
pub async fn onboard(state: &AppState, body: &Value, origin: Option<&str>) -> Result<(StatusCode, Value), ApiError> {
    let tenancy = tenancy(state)?;
    let request = parse_tenant(body, tenancy)?;
    let now_ms = state.clock.now_ms();
    // The provision saga's input: what the operator's own steps may render (`{{ input.tier }}`).
    let mut input = json!({
        "tenant_id": request.id,
        "tier": request.tier.as_str(),
        "storage_mode": request.storage_mode.as_str(),
        "sla_tier": request.sla_tier.as_str(),
    });
    let record = TenantRecord {
        id: request.id.clone(),
        name: request.name,
        tier: request.tier,
        storage_mode: request.storage_mode,
        sla_tier: request.sla_tier,
        status: TenantStatus::Provisioning,
        domains: request.domains,
        contacts: request.contacts,
        metadata: request.metadata,
        storage: Value::Null,
        migrations: json!([]),
        saga_id: None,
        error: None,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
    };
    if let Some(origin) = origin {
        input["origin"] = json!(origin);
    }
    let saga = tenant_saga(state, tenancy::definitions::PROVISION, &request.id, input, None).await?;
    let event = events::tenant(TenantEvent::Provisioning, &request.id, Some(saga.id), None, now_ms);
    match state.store.tenant_create(record, saga, Some(event)).await {
        Ok((tenant, saga)) => Ok((StatusCode::ACCEPTED, json!({"tenant": views::tenant(&tenant), "saga_id": saga.id}))),
        Err(StoreError::Conflict(_)) => Err(ApiError::Conflict(format!("tenant {:?} already exists", request.id))),
        Err(e) => Err(e.into()),
    }
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
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let tenant = load_tenant(&state, &principal, &id).await?;
    if tenant.status == TenantStatus::Provisioning || tenant.status == TenantStatus::Migrating {
        if let Some(saga_id) = tenant.saga_id {
            let saga = load(&state, saga_id).await?;
            if !saga.status.is_terminal() {
                return Err(ApiError::Conflict(format!(
                    "tenant is {}; cancel its provisioning (or wait for it) before deleting",
                    tenant.status.as_str()
                )));
            }
        }
    }
    let to = (TenantStatus::Deprovisioning, TenantStatus::sources_of(TenantStatus::Deprovisioning));
    let input = json!({"tenant_id": id});
    let (_, saga) = start_tenant_saga(&state, &id, to, tenancy::definitions::DEPROVISION, input, None).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"saga_id": saga.id}))).into_response())
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
    let saga = match tenant.saga_id {
        Some(saga_id) => load(&state, saga_id).await?,
        None => return Err(ApiError::Conflict("tenant has no provisioning saga".into())),
    };
    let provisioning = matches!(tenant.status, TenantStatus::Provisioning | TenantStatus::Migrating);
    if !provisioning || saga.definition != tenancy::definitions::PROVISION || saga.status.is_terminal() {
        return Err(ApiError::Conflict(format!("tenant is {}; it is not provisioning", tenant.status.as_str())));
    }
    if saga.status == SagaStatus::Compensating {
        return Err(ApiError::Conflict("its provisioning is already being undone".into()));
    }
    let updated = state.store.saga_cancel_request(saga.id, state.clock.now_ms()).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"saga_id": updated.id, "status": "cancel requested"}))).into_response())
}

pub async fn retry_migration(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let tenant = load_tenant(&state, &principal, &id).await?;
    if tenant.status != TenantStatus::MigrationError {
        return Err(ApiError::Conflict(format!(
            "tenant is {}; only a tenant in MIGRATION_ERROR can retry its migration",
            tenant.status.as_str()
        )));
    }
    // The saga that failed in its migrations step (onboarding or a rollout) failed forward and
    // waits for an operator: retrying it resumes from the failed migration, so its history tells
    // the whole story. A tenant whose failed saga cannot be resumed gets a new migration saga.
    let failed = match tenant.saga_id {
        Some(saga_id) => Some(load(&state, saga_id).await?).filter(|saga| saga.status == SagaStatus::Failed),
        None => None,
    };
    let (tenant, saga_id) = match failed {
        Some(saga) => {
            let retried = state.operator().retry(&saga).await?;
            (load_tenant(&state, &principal, &id).await?, retried.id)
        }
        None => {
            let to = (TenantStatus::Migrating, vec![TenantStatus::MigrationError]);
            let input = json!({"tenant_id": id});
            let (tenant, saga) = start_tenant_saga(&state, &id, to, tenancy::definitions::MIGRATE, input, None).await?;
            (tenant, saga.id)
        }
    };
    Ok((StatusCode::ACCEPTED, Json(json!({"tenant": views::tenant(&tenant), "saga_id": saga_id}))).into_response())
}

pub(super) async fn set_access(
    state: &AppState,
    principal: &Principal,
    id: &str,
    to: TenantStatus,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let tenant = load_tenant(state, principal, id).await?;
    if !tenant.status.may_become(to) {
        return Err(ApiError::Conflict(format!(
            "tenant is {}; it cannot become {}",
            tenant.status.as_str(),
            to.as_str()
        )));
    }
    let tenancy = tenancy(state)?;
    let enabled = to == TenantStatus::Active;
    // The database side first: a suspended tenant's role cannot log in any more.
    tenancy
        .storage
        .access_set(id, tenant.storage_mode, enabled)
        .await
        .map_err(|e| ApiError::Unavailable(format!("tenant storage: {e}")))?;
    let transition = TenantTransition {
        id: id.to_string(),
        to,
        from: vec![tenant.status],
        error: None,
        saga: None,
        event: Some(events::tenant(
            if enabled { TenantEvent::Resumed } else { TenantEvent::Suspended },
            id,
            None,
            None,
            state.clock.now_ms(),
        )),
        now_ms: state.clock.now_ms(),
    };
    let (updated, _) = state.store.tenant_transition(transition).await?;
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
