//! `/v1/definitions`: versioned saga definitions, in JSON or YAML.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use saga_core::DocumentFormat;
use serde_json::{json, Value};

use crate::auth::Principal;
use crate::error::{body_rejection, ApiError};
use crate::routes::common::page;
use crate::state::AppState;
use crate::views;

pub async fn put(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let body = body.map_err(body_rejection)?;
    let format = match crate::routes::common::content_type(&headers).as_deref() {
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
    crate::routes::common::refuse_nul(&document)?;
    let definition = saga_core::validate_definition(&name, &document, &state.builtin_names())
        .map_err(|errors| ApiError::validation(format!("definition {name:?} is invalid"), errors))?;
    let errors = tenancy::definitions::check_extension(&name, &definition);
    if !errors.is_empty() {
        return Err(ApiError::validation(format!("definition {name:?} is invalid"), errors));
    }
    let put = state.store.definition_put(&name, &document, state.clock.now_ms()).await?;
    state.definitions.note_latest(&name, put.record.version);
    let status = if put.created { StatusCode::CREATED } else { StatusCode::OK };
    let mut answer = views::definition(&put.record);
    answer["warnings"] = Value::Array(unset_var_warnings(&document, &state.vars));
    Ok((status, Json(answer)).into_response())
}

/// `{path, message}` for every `vars.NAME` the document uses that this server does not have: the
/// definition is stored (a worker elsewhere may have the variable), but a saga rendering it here
/// would fail.
fn unset_var_warnings(document: &Value, vars: &serde_json::Map<String, Value>) -> Vec<Value> {
    saga_core::template::var_references(document)
        .into_iter()
        .filter(|(_, name)| !vars.contains_key(name))
        .map(|(path, name)| {
            json!({
                "path": path,
                "message": format!(
                    "vars.{name} is not set on this server; start it with SAGAPLANE_VAR_{name}, or sagas fail at this step"
                ),
            })
        })
        .collect()
}

pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    Ok(page(state.store.definition_list().await?.iter().map(views::definition).collect(), None))
}

pub async fn latest(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    match state.store.definition_get(&name, None).await {
        Ok(record) => Ok(Json(views::definition(&record))),
        Err(saga_store::StoreError::NotFound) => Err(ApiError::NotFound(format!("definition {name:?} does not exist"))),
        Err(e) => Err(e.into()),
    }
}

pub async fn version(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
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
