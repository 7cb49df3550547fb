//! Tenant migrations across the fleet: `GET /v1/migrations`, `POST /v1/migrations/rollout` and
//! its progress. A rollout is a saga of its own (`tenant.rollout`, whose id is the rollout's):
//! the request only starts it and answers at once; its fan-out step starts one `tenant.migrate`
//! saga per tenant behind, under one concurrency key, durably — a crash midway resumes it.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use saga_core::SagaState;
use saga_store::{SagaCreate, SagaCreated};
use serde_json::{json, Value};
use uuid::Uuid;

use super::requests::*;
use super::*;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::routes::common::{definition, parse_body, parse_uuid};
use crate::state::AppState;

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
    let (version, definition) = definition(&state, tenancy::definitions::ROLLOUT, None).await?;
    let now_ms = state.clock.now_ms();
    let input = json!({"service": service, "concurrency": concurrency});
    let create = SagaCreate {
        id: rollout_id,
        ..SagaCreate::new(
            tenancy::definitions::ROLLOUT,
            version,
            input,
            SagaState::started(&definition, now_ms),
            now_ms,
        )
    };
    match state.intake.create(create).await? {
        SagaCreated::Created(_) => {}
        other => return Err(ApiError::Internal(format!("the rollout saga was not created: {other:?}"))),
    }
    // `sagas` stays for clients of the synchronous rollout: the tenant sagas start in the
    // background, so it is empty here; the progress route lists them.
    let body = json!({
        "rollout_id": rollout_id,
        "saga_id": rollout_id,
        "concurrency": concurrency,
        "sagas": [],
        "progress": format!("/v1/migrations/rollouts/{rollout_id}"),
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
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
    let fan_out = match state.store.saga_get(rollout_id).await {
        Ok(saga) if saga.definition == tenancy::definitions::ROLLOUT => saga,
        Ok(_) | Err(saga_store::StoreError::NotFound) => {
            return Err(ApiError::NotFound(format!("rollout {rollout_id} does not exist")))
        }
        Err(e) => return Err(e.into()),
    };
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
    let mut statuses: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for saga in &sagas {
        *statuses.entry(saga.status.as_str()).or_default() += 1;
    }
    let finished = sagas.iter().filter(|s| s.status.is_terminal()).count();
    let items: Vec<Value> =
        sagas.iter().map(|s| json!({"tenant_id": s.tenant_id, "saga_id": s.id, "status": s.status.as_str()})).collect();
    let fanned_out = fan_out.status.is_terminal();
    let fan_out_view = json!({
        "saga_id": fan_out.id,
        "status": fan_out.status.as_str(),
        "started": fan_out.state.steps.first().and_then(|s| s.output.as_ref()).and_then(|o| o.get("started").cloned()),
        "error": fan_out.state.error.as_ref().map(|e| e.message.clone()),
    });
    Ok(Json(json!({
        "rollout_id": rollout_id,
        "fan_out": fan_out_view,
        "total": sagas.len(),
        "finished": finished,
        "done": fanned_out && finished == sagas.len(),
        "statuses": statuses,
        "sagas": items,
    })))
}
