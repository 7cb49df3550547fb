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
    let (document, _) = validated(&state, &name, &headers, body)?;
    let put = state.store.definition_put(&name, &document, state.clock.now_ms()).await?;
    state.definitions.note_latest(&name, put.record.version);
    let status = if put.created { StatusCode::CREATED } else { StatusCode::OK };
    let mut answer = views::definition(&put.record);
    answer["warnings"] = Value::Array(unset_var_warnings(&document, &state.vars));
    Ok((status, Json(answer)).into_response())
}

/// The request's document (JSON or YAML by its content type), parsed and validated as definition
/// `name`.
fn validated(
    state: &AppState,
    name: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Value, saga_core::Definition), ApiError> {
    let body = body.map_err(body_rejection)?;
    let format = match crate::routes::common::content_type(headers).as_deref() {
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
    let definition = saga_core::validate_definition(name, &document, &state.builtin_names())
        .map_err(|errors| ApiError::validation(format!("definition {name:?} is invalid"), errors))?;
    let errors = tenancy::definitions::check_extension(name, &definition);
    if !errors.is_empty() {
        return Err(ApiError::validation(format!("definition {name:?} is invalid"), errors));
    }
    Ok((document, definition))
}

/// Running sagas a check looks at, at most, of each status going forward.
const CHECK_RUNNING_MAX: u32 = 1_000;
/// Finished sagas a check looks at, of each finished status: the most recent.
const CHECK_FINISHED_MAX: u32 = 50;

/// `POST /v1/definitions/{name}/check`: a new version, before it is applied, against the sagas
/// of the versions before — whether each running one could move to it (an `upgrade` bulk action
/// moves those), and whether each recently finished one would have, with every reason why not.
/// Nothing is stored.
pub async fn check(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let (_, new) = validated(&state, &name, &headers, body)?;
    let mut olds: std::collections::BTreeMap<i32, std::sync::Arc<saga_core::Definition>> =
        std::collections::BTreeMap::new();
    let mut sagas = Vec::new();
    let (mut movable, mut refused) = (0u64, 0u64);
    for status in saga_core::SagaStatus::ALL {
        let limit = if status.is_terminal() { CHECK_FINISHED_MAX } else { CHECK_RUNNING_MAX };
        let filter = saga_store::SagaFilter {
            status: Some(*status),
            definition: Some(name.clone()),
            limit,
            ..Default::default()
        };
        for record in state.store.saga_list(&filter).await? {
            let old = match olds.get(&record.version) {
                Some(old) => old,
                None => {
                    let (_, old) = state.definitions.get(&name, Some(record.version)).await?;
                    olds.entry(record.version).or_insert(old)
                }
            };
            let reasons = if record.status.is_terminal() {
                saga_core::upgrade::refusals(old, &new, &record.state)
            } else {
                saga_core::upgrade::upgrade(old, &new, &record.state).err().unwrap_or_default()
            };
            let can = reasons.is_empty();
            if !record.status.is_terminal() {
                if can {
                    movable += 1;
                } else {
                    refused += 1;
                }
            }
            sagas.push(json!({
                "id": record.id, "version": record.version, "status": record.status.as_str(),
                "finished": record.status.is_terminal(), "movable": can, "reasons": reasons,
            }));
        }
    }
    Ok(Json(json!({"definition": name, "movable": movable, "refused": refused, "sagas": sagas})))
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
