//! Steering running sagas: cancel, signals, and the callbacks of async participants
//! (`/v1/callbacks/{token}`, where the single-use token is the capability).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use saga_core::FieldError;
use saga_store::StoreError;
use serde_json::{json, Map, Value};

use crate::auth::Principal;
use crate::error::{body_rejection, ApiError};
use crate::routes::common::{load, parse_id};
use crate::state::AppState;
use crate::views;

/// `POST /v1/sagas/{id}/cancel`: 202 with the saga; 409 when terminal or past a succeeded pivot.
pub async fn cancel(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let record = load(&state, parse_id(&id)?).await?;
    let updated = state.operator().cancel(&record, None).await?;
    Ok((StatusCode::ACCEPTED, Json(views::saga(&updated))).into_response())
}

/// `POST /v1/sagas/{id}/signals/{name}` with any JSON body (empty = null): 202, buffered until
/// the saga reaches the step that waits for `name`.
pub async fn signal(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, name)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let id = parse_id(&id)?;
    let body = body.map_err(body_rejection)?;
    let payload: Value =
        if body.iter().all(u8::is_ascii_whitespace) { Value::Null } else { crate::routes::common::json_body(&body)? };
    let record = load(&state, id).await?;
    let signal = state.operator().signal(&record, &name, &payload, None).await?;
    let answer = json!({
        "saga_id": id,
        "signal": signal.name,
        "signal_id": signal.id,
        "received_at": views::timestamp(signal.received_at_ms),
    });
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// The most characters a callback token may have (ours are 43).
const CALLBACK_TOKEN_MAX_CHARS: usize = 128;

fn token_hash(token: &str) -> Result<String, ApiError> {
    let plausible = !token.is_empty()
        && token.len() <= CALLBACK_TOKEN_MAX_CHARS
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !plausible {
        return Err(unknown_token());
    }
    Ok(saga_runtime::callback_token_hash(token))
}

fn unknown_token() -> ApiError {
    ApiError::NotFound("unknown or already used callback token".into())
}

/// Validates `{"status":"succeeded","output":…}` / `{"status":"failed","error":"…","retryable":b}`.
fn parse_callback(body: &Value) -> Result<Value, ApiError> {
    let Some(map) = body.as_object() else {
        return Err(ApiError::field("", "the callback body must be a JSON object"));
    };
    let mut errors = Vec::new();
    let mut error = |path: &str, message: &str| errors.push(FieldError { path: path.into(), message: message.into() });
    for key in map.keys() {
        if !["status", "output", "error", "retryable"].contains(&key.as_str()) {
            error(&format!("/{key}"), "unknown field; expected status, output, error, retryable");
        }
    }
    let mut result = Map::new();
    match map.get("status").and_then(Value::as_str) {
        Some("succeeded") => {
            result.insert("status".into(), json!("succeeded"));
            result.insert("output".into(), map.get("output").cloned().unwrap_or(Value::Null));
            if map.contains_key("error") || map.contains_key("retryable") {
                error("/status", "a succeeded callback carries output, not error or retryable");
            }
        }
        Some("failed") => {
            result.insert("status".into(), json!("failed"));
            match map.get("error") {
                None => {
                    result.insert("error".into(), json!("participant reported failure"));
                }
                Some(Value::String(text)) => {
                    result.insert("error".into(), json!(text));
                }
                Some(_) => error("/error", "must be a string"),
            }
            match map.get("retryable") {
                None => {
                    result.insert("retryable".into(), json!(false));
                }
                Some(Value::Bool(retryable)) => {
                    result.insert("retryable".into(), json!(retryable));
                }
                Some(_) => error("/retryable", "must be true or false"),
            }
        }
        _ => error("/status", "must be \"succeeded\" or \"failed\""),
    }
    if !errors.is_empty() {
        return Err(ApiError::validation("the callback is invalid", errors));
    }
    Ok(Value::Object(result))
}

/// `POST /v1/callbacks/{token}`: completes the async step once; 404 for an unknown or used token.
pub async fn callback(
    State(state): State<AppState>,
    Path(token): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let hash = token_hash(&token)?;
    let body = body.map_err(body_rejection)?;
    // A participant's answer: NUL is replaced (as in its HTTP answers), not refused.
    let value: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))?;
    let result = parse_callback(&saga_core::text::sanitize_value(value))?;
    match state.store.callback_complete(&hash, &result, state.clock.now_ms()).await {
        Ok(saga_id) => Ok((StatusCode::OK, Json(json!({"saga_id": saga_id, "accepted": true}))).into_response()),
        Err(StoreError::NotFound) => Err(unknown_token()),
        Err(e) => Err(e.into()),
    }
}

/// `POST /v1/callbacks/{token}/heartbeat`: extends the step's heartbeat timeout.
pub async fn heartbeat(State(state): State<AppState>, Path(token): Path<String>) -> Result<Response, ApiError> {
    let hash = token_hash(&token)?;
    match state.store.callback_heartbeat(&hash, state.clock.now_ms()).await {
        Ok(()) => Ok((StatusCode::OK, Json(json!({"accepted": true}))).into_response()),
        Err(StoreError::NotFound) => Err(unknown_token()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: Value, expect: Result<Value, &str>) {
        match (parse_callback(&body), expect) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{body}"),
            (Err(ApiError::Validation { errors, .. }), Err(path)) => {
                assert!(errors.iter().any(|e| e.path == path), "{body}: {errors:?}")
            }
            (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn callback_bodies() {
        check(json!({"status": "succeeded"}), Ok(json!({"status": "succeeded", "output": null})));
        check(
            json!({"status": "succeeded", "output": {"a": 1}}),
            Ok(json!({"status": "succeeded", "output": {"a": 1}})),
        );
        check(
            json!({"status": "failed", "error": "no", "retryable": true}),
            Ok(json!({"status": "failed", "error": "no", "retryable": true})),
        );
        check(
            json!({"status": "failed"}),
            Ok(json!({"status": "failed", "error": "participant reported failure", "retryable": false})),
        );
        check(json!({"status": "done"}), Err("/status"));
        check(json!({}), Err("/status"));
        check(json!({"status": "failed", "retryable": "yes"}), Err("/retryable"));
        check(json!({"status": "failed", "error": 5}), Err("/error"));
        check(json!({"status": "succeeded", "extra": 1}), Err("/extra"));
        check(json!([1]), Err(""));
    }
}
