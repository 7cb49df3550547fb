//! `/v1/definitions`: versioned saga definitions, in JSON or YAML.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use saga_core::{Action, Definition, DocumentFormat, FieldError};
use serde_json::{json, Value};

use crate::error::{body_rejection, ApiError};
use crate::state::AppState;
use crate::views;

/// Features of the contract this build does not run yet; refused at PUT time rather than
/// accepted and failed later.
pub(crate) fn unsupported(definition: &Definition) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, step) in definition.steps.iter().enumerate() {
        let actions = [("action", Some(&step.action)), ("compensation", step.compensation.as_ref())];
        for (field, action) in actions {
            let message = match action {
                Some(Action::Grpc(_)) => "grpc actions are not supported by this build yet",
                Some(Action::Signal(_)) => "signal actions are not supported by this build yet",
                Some(Action::Http(http)) if http.is_async => "async http actions are not supported by this build yet",
                _ => continue,
            };
            errors.push(FieldError { path: format!("/steps/{i}/{field}"), message: message.into() });
        }
        if step.heartbeat_timeout_ms.is_some() {
            errors.push(FieldError {
                path: format!("/steps/{i}/heartbeat_timeout"),
                message: "heartbeat timeouts (async steps) are not supported by this build yet".into(),
            });
        }
    }
    if definition.timeout_ms.is_some() {
        errors.push(FieldError {
            path: "/timeout".into(),
            message: "saga deadlines are not supported by this build yet".into(),
        });
    }
    if definition.concurrency.is_some() {
        errors.push(FieldError {
            path: "/concurrency".into(),
            message: "concurrency keys are not supported by this build yet".into(),
        });
    }
    errors
}

pub async fn put(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_rejection)?;
    let format = match super::content_type(&headers).as_deref() {
        None | Some("application/json") => DocumentFormat::Json,
        Some(t) if t.ends_with("+json") => DocumentFormat::Json,
        Some("application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml") => DocumentFormat::Yaml,
        Some(other) => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "content type {other:?} is not supported; use application/json or application/yaml"
            )))
        }
    };
    let document = saga_core::parse_document(&body, format).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let definition = saga_core::validate_definition(&name, &document, &state.builtin_names())
        .map_err(|errors| ApiError::validation(format!("definition {name:?} is invalid"), errors))?;
    let unsupported = unsupported(&definition);
    if !unsupported.is_empty() {
        return Err(ApiError::validation(format!("definition {name:?} uses unsupported features"), unsupported));
    }
    let put = state.store.definition_put(&name, &document, state.clock.now_ms()).await?;
    state.definitions.note_latest(&name, put.record.version);
    let status = if put.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(views::definition(&put.record))).into_response())
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let items: Vec<Value> = state.store.definition_list().await?.iter().map(views::definition).collect();
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

pub async fn latest(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    match state.store.definition_get(&name, None).await {
        Ok(record) => Ok(Json(views::definition(&record))),
        Err(saga_store::StoreError::NotFound) => Err(ApiError::NotFound(format!("definition {name:?} does not exist"))),
        Err(e) => Err(e.into()),
    }
}

pub async fn version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let number: i32 = version
        .parse()
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| ApiError::BadRequest(format!("version {version:?} is not a positive integer")))?;
    match state.store.definition_get(&name, Some(number)).await {
        Ok(record) => Ok(Json(views::definition(&record))),
        Err(saga_store::StoreError::NotFound) => {
            Err(ApiError::NotFound(format!("definition {name:?} has no version {number}")))
        }
        Err(e) => Err(e.into()),
    }
}
