//! Tenant migrations across the fleet: `GET /v1/migrations`, `POST /v1/migrations/rollout`
//! (one `tenant.migrate` saga per tenant behind, under one concurrency key) and its progress.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use saga_core::tenant::TenantStatus;
use saga_store::{TenantFilter, TenantRecord};
use serde_json::{json, Value};
use uuid::Uuid;

use super::requests::*;
use super::*;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::routes::common::{parse_body, parse_uuid};
use crate::state::AppState;

/// The tenants a rollout starts at most.
pub(super) const ROLLOUT_TENANTS_MAX: u32 = 10_000;

pub(super) const ROLLOUT_CONCURRENCY_DEFAULT: u32 = 4;

pub async fn migrations(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let tenancy = tenancy(&state)?;
    let sets = tenancy.migrations.load().map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let services: Vec<Value> = sets
        .iter()
        .map(|set| {
            json!({
                "service": set.service,
                "latest_version": set.latest_version(),
                "migrations": set.migrations.iter()
                    .map(|m| json!({"version": m.version, "name": m.name, "checksum": m.checksum}))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({"services": services})))
}

/// True when the tenant's recorded versions are behind the set's latest for any of `sets`.
pub(super) fn is_behind(tenant: &TenantRecord, sets: &[tenancy::ServiceMigrations]) -> bool {
    sets.iter().any(|set| {
        let recorded = tenant
            .migrations
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["service"] == json!(set.service))
            .and_then(|m| m["version"].as_i64())
            .unwrap_or(0);
        recorded < set.latest_version()
    })
}

pub async fn rollout(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let tenancy = tenancy(&state)?;
    // No body is the same as `{}`: every service, the default concurrency.
    let body = match body {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => json!({}),
        body => parse_body(body)?,
    };
    let Some(map) = body.as_object() else {
        return Err(ApiError::field("", "the body must be a JSON object {service?, concurrency?}"));
    };
    let mut errors = Errors(Vec::new());
    for key in map.keys() {
        if !["service", "concurrency"].contains(&key.as_str()) {
            errors.add(&format!("/{key}"), "unknown field; expected service, concurrency");
        }
    }
    let service = string_field(map, "service", &mut errors);
    let concurrency = match map.get("concurrency") {
        None | Some(Value::Null) => ROLLOUT_CONCURRENCY_DEFAULT,
        Some(v) => match crate::routes::common::json_integer(v).filter(|c| (1..=1_000).contains(c)) {
            Some(c) => c as u32,
            None => {
                errors.add("/concurrency", "must be an integer from 1 to 1000");
                0
            }
        },
    };
    let sets = tenancy.migrations.load().map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let sets: Vec<_> = sets.into_iter().filter(|s| service.as_deref().is_none_or(|name| name == s.service)).collect();
    if let Some(service) = &service {
        if sets.is_empty() {
            errors.add("/service", format!("there is no tenant migration service {service:?}"));
        }
    }
    if !errors.0.is_empty() {
        return Err(ApiError::validation("the rollout is invalid", errors.0));
    }
    let rollout_id = Uuid::now_v7();
    let mut started = Vec::new();
    let mut after_id = None;
    loop {
        let filter = TenantFilter {
            status: Some(TenantStatus::Active),
            tier: None,
            after_id: after_id.clone(),
            limit: saga_store::LIST_LIMIT_MAX,
        };
        let page = state.store.tenant_list(&filter).await?;
        let Some(last) = page.last() else { break };
        after_id = Some(last.id.clone());
        for tenant in page.iter().filter(|t| is_behind(t, &sets)) {
            if started.len() as u32 >= ROLLOUT_TENANTS_MAX {
                break;
            }
            // The limit is a concurrency key shared by this rollout's sagas, enforced by the claim.
            let started_saga = start_tenant_saga(
                &state,
                &tenant.id,
                (TenantStatus::Migrating, vec![TenantStatus::Active]),
                tenancy::definitions::MIGRATE,
                json!({"tenant_id": tenant.id, "service": service, "rollout_id": rollout_id}),
                Some((format!("rollout:{rollout_id}"), concurrency)),
            )
            .await;
            match started_saga {
                Ok((_, saga)) => started.push(json!({"tenant_id": tenant.id, "saga_id": saga.id})),
                // It stopped being ACTIVE meanwhile: not part of this rollout.
                Err(ApiError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if page.len() < saga_store::LIST_LIMIT_MAX as usize {
            break;
        }
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"rollout_id": rollout_id, "concurrency": concurrency, "sagas": started})))
        .into_response())
}

/// The most sagas a rollout's progress lists.
pub(super) const ROLLOUT_PROGRESS_MAX: usize = 10_000;

/// `GET /v1/migrations/rollouts/{rollout_id}`: how far a rollout is, from its sagas.
pub async fn rollout_progress(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(rollout_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    tenancy(&state)?;
    let rollout_id = parse_uuid(&rollout_id, "rollout")?;
    let mut sagas = Vec::new();
    let mut before_id = None;
    loop {
        let filter = saga_store::SagaFilter {
            concurrency_key: Some(format!("rollout:{rollout_id}")),
            before_id,
            limit: saga_store::LIST_LIMIT_MAX,
            ..Default::default()
        };
        let page = state.store.saga_list(&filter).await?;
        before_id = page.last().map(|s| s.id);
        let full = page.len() == saga_store::LIST_LIMIT_MAX as usize;
        sagas.extend(page);
        if !full || sagas.len() >= ROLLOUT_PROGRESS_MAX {
            break;
        }
    }
    if sagas.is_empty() {
        return Err(ApiError::NotFound(format!("rollout {rollout_id} does not exist")));
    }
    let mut statuses: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for saga in &sagas {
        *statuses.entry(saga.status.as_str()).or_default() += 1;
    }
    let finished = sagas.iter().filter(|s| s.status.is_terminal()).count();
    let items: Vec<Value> =
        sagas.iter().map(|s| json!({"tenant_id": s.tenant_id, "saga_id": s.id, "status": s.status.as_str()})).collect();
    Ok(Json(json!({
        "rollout_id": rollout_id,
        "total": sagas.len(),
        "finished": finished,
        "done": finished == sagas.len(),
        "statuses": statuses,
        "sagas": items,
    })))
}
