//! A tenant's users: `GET|POST /v1/tenants/{id}/users`, `PUT|DELETE …/users/{user_id}`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use saga_store::{StoreError, TenantUserRecord};
use serde_json::Value;
use uuid::Uuid;

use super::requests::*;
use super::*;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::routes::common::{page, parse_body, parse_uuid};
use crate::state::AppState;
use crate::views;

pub async fn users_list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    load_tenant(&state, &principal, &id).await?;
    let users = state.store.tenant_user_list(&id).await?;
    Ok(page(users.iter().map(views::tenant_user).collect(), None))
}

pub async fn users_create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    live_tenant(&state, &principal, &id).await?;
    let (email, name, role) = parse_user(&parse_body(body)?)?;
    may_grant(&principal, &role)?;
    let now_ms = state.clock.now_ms();
    let user = TenantUserRecord {
        id: Uuid::now_v7(),
        tenant_id: id,
        email,
        name,
        role,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
    };
    state.store.tenant_user_create(&user).await?;
    Ok((StatusCode::CREATED, Json(views::tenant_user(&user))).into_response())
}

pub async fn users_update(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, user_id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    live_tenant(&state, &principal, &id).await?;
    let user_id = parse_uuid(&user_id, "user")?;
    let (email, name, role) = parse_user(&parse_body(body)?)?;
    let existing = state
        .store
        .tenant_user_get(&id, user_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("user {user_id} does not exist")))?;
    may_grant(&principal, &existing.role)?;
    may_grant(&principal, &role)?;
    let user = TenantUserRecord { email, name, role, updated_at_ms: state.clock.now_ms(), ..existing };
    match state.store.tenant_user_update(&user).await {
        Ok(()) => Ok(Json(views::tenant_user(&user))),
        Err(StoreError::NotFound) => Err(ApiError::NotFound(format!("user {user_id} does not exist"))),
        Err(e) => Err(e.into()),
    }
}

pub async fn users_delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    live_tenant(&state, &principal, &id).await?;
    let user_id = parse_uuid(&user_id, "user")?;
    if let Some(existing) = state.store.tenant_user_get(&id, user_id).await? {
        may_grant(&principal, &existing.role)?;
    }
    match state.store.tenant_user_delete(&id, user_id).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(StoreError::NotFound) => Err(ApiError::NotFound(format!("user {user_id} does not exist"))),
        Err(e) => Err(e.into()),
    }
}

/// A tenant's `admin` users are the operator's to make, change and remove; a tenant key manages
/// `member` users only (403 otherwise).
fn may_grant(principal: &Principal, role: &str) -> Result<(), ApiError> {
    if role == "admin" && principal.tenant_scope().is_some() {
        return Err(ApiError::Forbidden(
            "a tenant API key manages member users only; admin users are created, changed and removed with the \
             platform-admin token"
                .into(),
        ));
    }
    Ok(())
}
