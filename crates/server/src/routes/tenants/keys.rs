//! Tenant API keys: created with a token shown once (only its SHA-256 is stored), revoked.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use saga_store::{StoreError, TenantKeyRecord};
use serde_json::{json, Value};
use uuid::Uuid;

use super::requests::*;
use super::*;
use crate::auth::{token_hash, Principal, TENANT_TOKEN_PREFIX};
use crate::error::ApiError;
use crate::routes::common::parse_uuid;
use crate::state::AppState;
use crate::views;

/// A tenant API token: a recognisable prefix and 256 random bits.
pub(super) fn new_tenant_token() -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(saga_runtime::random_256_bits());
    format!("{TENANT_TOKEN_PREFIX}{encoded}")
}

pub async fn keys_create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    live_tenant(&state, &principal, &id).await?;
    let body: Value =
        if body.iter().all(u8::is_ascii_whitespace) { json!({}) } else { crate::routes::common::json_body(&body)? };
    let Some(map) = body.as_object() else {
        return Err(ApiError::field("", "the body must be a JSON object {name?}"));
    };
    let mut errors = Errors(Vec::new());
    for key in map.keys() {
        if key != "name" {
            errors.add(&format!("/{key}"), "unknown field; expected name");
        }
    }
    let name =
        check_name(string_field(map, "name", &mut errors), &mut errors, false).unwrap_or_else(|| "default".into());
    if !errors.0.is_empty() {
        return Err(ApiError::validation("the key request is invalid", errors.0));
    }
    let token = new_tenant_token();
    let key = TenantKeyRecord {
        id: Uuid::now_v7(),
        tenant_id: id,
        name,
        created_at_ms: state.clock.now_ms(),
        revoked_at_ms: None,
    };
    state.store.tenant_key_create(&key, &token_hash(&token)).await?;
    // The token is shown this once; only its hash is kept.
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": key.id, "tenant_id": key.tenant_id, "name": key.name, "token": token,
                    "created_at": views::timestamp(key.created_at_ms)})),
    )
        .into_response())
}

pub async fn keys_delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    load_tenant(&state, &principal, &id).await?;
    let key_id = parse_uuid(&key_id, "API key")?;
    match state.store.tenant_key_revoke(&id, key_id, state.clock.now_ms()).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(StoreError::NotFound) => Err(ApiError::NotFound(format!("API key {key_id} does not exist"))),
        Err(e) => Err(e.into()),
    }
}
