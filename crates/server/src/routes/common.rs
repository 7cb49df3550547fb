//! What every route file shares: ids and bodies parsed the same way, load-or-404, the query
//! rules (`?limit=`), the `{items, next_cursor}` page envelope, the Idempotency-Key header, a
//! saga's definition, and an operator's retry of a saga (used by the saga and tenant routes).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::Json;
use saga_core::Definition;
use saga_store::{SagaRecord, StoreError};
use serde_json::{json, Value};
use std::sync::Arc;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{body_rejection, ApiError};
use crate::state::AppState;

/// The request's content type, lowercased, without parameters.
pub(crate) fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

/// The largest `?limit=` accepted (anything above `LIST_LIMIT_MAX` is capped to it).
pub(crate) const QUERY_LIMIT_MAX: u64 = i32::MAX as u64;

/// `?limit=`: an integer from 1 to [`QUERY_LIMIT_MAX`] (values above 500 are capped at 500), as
/// the OpenAPI document says.
pub(crate) fn query_limit(text: Option<&String>) -> Result<Option<u32>, crate::error::ApiError> {
    let Some(text) = text else {
        return Ok(None);
    };
    match text.parse::<u64>() {
        Ok(n) if (1..=QUERY_LIMIT_MAX).contains(&n) => Ok(Some(n.min(u64::from(saga_store::LIST_LIMIT_MAX)) as u32)),
        _ => Err(crate::error::ApiError::BadRequest(format!(
            "invalid query: limit must be an integer from 1 to {QUERY_LIMIT_MAX} (values above {} are capped)",
            saga_store::LIST_LIMIT_MAX
        ))),
    }
}

/// A JSON number that is an integer, written `3` or `3.0` (JSON Schema's `integer` admits both).
pub(crate) fn json_integer(value: &serde_json::Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        value.as_f64().filter(|f| f.fract() == 0.0 && (i64::MIN as f64..=i64::MAX as f64).contains(f)).map(|f| f as i64)
    })
}

/// `view` as `principal` may see it: whole for the operator, [`crate::views::for_tenant`] for a
/// tenant key.
pub(crate) fn seen_by(principal: &Principal, view: Value) -> Value {
    if principal.tenant_scope().is_some() {
        crate::views::for_tenant(view)
    } else {
        view
    }
}

/// One page of a list: `{items, next_cursor}` (docs/api.md, "Conventions"); `next_cursor` is null
/// on the last page.
pub(crate) fn page(items: Vec<Value>, next_cursor: Option<String>) -> Json<Value> {
    Json(json!({"items": items, "next_cursor": next_cursor}))
}

/// A page of `records` fetched with `limit`: a full page may have a successor, whose cursor is
/// the last record's.
pub(crate) fn page_of<T>(
    records: &[T],
    limit: u32,
    view: impl Fn(&T) -> Value,
    cursor: impl Fn(&T) -> String,
) -> Json<Value> {
    let next_cursor = if records.len() == limit as usize { records.last().map(cursor) } else { None };
    page(records.iter().map(view).collect(), next_cursor)
}

pub(crate) fn query_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("invalid query: {e}"))
}

pub(crate) fn parse_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::NotFound(format!("saga {text:?} does not exist (not a UUID)")))
}

pub(crate) async fn load(state: &AppState, id: Uuid) -> Result<SagaRecord, ApiError> {
    match state.store.saga_get(id).await {
        Ok(record) => Ok(record),
        Err(StoreError::NotFound) => Err(ApiError::NotFound(format!("saga {id} does not exist"))),
        Err(e) => Err(e.into()),
    }
}

/// [`load`], as 404 when a tenant key asks for another tenant's saga.
pub(crate) async fn load_visible(state: &AppState, principal: &Principal, id: Uuid) -> Result<SagaRecord, ApiError> {
    let record = load(state, id).await?;
    if !principal.sees_saga(record.tenant_id.as_deref()) {
        return Err(ApiError::NotFound(format!("saga {id} does not exist")));
    }
    Ok(record)
}

/// The validated definition of `(name, version)` (latest when `version` is None).
pub(crate) async fn definition(
    state: &AppState,
    name: &str,
    version: Option<i32>,
) -> Result<(i32, Arc<Definition>), ApiError> {
    Ok(state.definitions.get(name, version).await?)
}

/// The longest `Idempotency-Key` accepted.
pub const IDEMPOTENCY_KEY_MAX_CHARS: usize = 255;

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|key| key.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| ApiError::BadRequest("Idempotency-Key must be visible ASCII, without spaces".into()))?;
    if key.is_empty() || key.chars().count() > IDEMPOTENCY_KEY_MAX_CHARS {
        return Err(ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX_CHARS} characters"
        )));
    }
    Ok(Some(key.to_string()))
}

pub(crate) fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    json_body(&body.map_err(body_rejection)?)
}

/// A JSON request body. A string holding NUL (`\u0000`) is refused (400): no store keeps it, and
/// a value the server would store differently from what was sent must not be accepted.
pub(crate) fn json_body(bytes: &[u8]) -> Result<Value, ApiError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))?;
    refuse_nul(&value)?;
    Ok(value)
}

/// 400 for a query string holding NUL (`%00`, the only way a URI carries it), on every route:
/// like a body's, a query's text never holds NUL (PostgreSQL refuses it in text parameters).
pub(crate) async fn refuse_nul_in_query(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if request.uri().query().is_some_and(|query| query.contains("%00")) {
        return ApiError::BadRequest("query parameters may not contain the NUL character (%00)".into()).into_response();
    }
    next.run(request).await
}

/// 400 when a string or key of `value` holds NUL.
pub(crate) fn refuse_nul(value: &Value) -> Result<(), ApiError> {
    if saga_core::text::contains_nul(value) {
        return Err(ApiError::BadRequest("JSON strings may not contain the NUL character (\\u0000)".into()));
    }
    Ok(())
}

pub(crate) fn parse_uuid(text: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::NotFound(format!("{what} {text:?} does not exist")))
}
