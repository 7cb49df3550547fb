//! `/v1/sagas`: start (idempotently), read, list, history, operator retry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use saga_core::{Definition, FieldError, SagaState, SagaStatus};
use saga_store::{SagaCreate, SagaCreated, SagaFilter, SagaRecord};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{body_rejection, ApiError};
use crate::routes::common::{
    definition, idempotency_key, load, load_visible, page, page_of, parse_id, query_error, seen_by,
};
use crate::state::AppState;
use crate::views;

/// How often a long-poll re-reads the store (for sagas other instances drive).
pub const WAIT_RECHECK: Duration = Duration::from_millis(250);
/// Saga priorities lie in `-PRIORITY_MAX..=PRIORITY_MAX`.
pub use saga_store::PRIORITY_MAX;

/// The definition a new saga should run: the requested version, or the latest (from the hint
/// when possible; the store re-checks it is still the latest). The bool says "must be latest".
async fn definition_for_start(
    state: &AppState,
    name: &str,
    version: Option<i32>,
    use_hint: bool,
) -> Result<(i32, Arc<Definition>, bool), ApiError> {
    if let Some(v) = version {
        let (v, definition) = definition(state, name, Some(v)).await?;
        return Ok((v, definition, false));
    }
    if let Some((v, found)) = use_hint.then(|| state.definitions.latest_hint(name)).flatten() {
        return Ok((v, found, true));
    }
    let (v, definition) = definition(state, name, None).await?;
    Ok((v, definition, true))
}

struct StartRequest {
    definition: String,
    version: Option<i32>,
    input: Value,
    tenant_id: Option<String>,
    priority: i32,
}

fn parse_start(body: &Value) -> Result<StartRequest, ApiError> {
    let Value::Object(map) = body else {
        return Err(ApiError::field("", "must be a JSON object"));
    };
    let mut errors = Vec::new();
    let mut error =
        |path: &str, message: &str| errors.push(saga_core::FieldError { path: path.into(), message: message.into() });
    for key in map.keys() {
        if !["definition", "version", "input", "tenant_id", "priority"].contains(&key.as_str()) {
            error(&format!("/{key}"), "unknown field; expected definition, version, input, tenant_id, priority");
        }
    }
    let definition = match map.get("definition") {
        Some(Value::String(s)) if tenancy::definitions::is_tenant_saga(s) => {
            error(
                "/definition",
                &format!(
                    "{s} is a tenant saga: the tenant lifecycle starts it (POST /v1/tenants, DELETE /v1/tenants/{{id}}, \
                     POST /v1/migrations/rollout, retry-migration), with the tenant's status changed in the same \
                     transaction; it cannot be started here"
                ),
            );
            String::new()
        }
        Some(Value::String(s)) if saga_core::is_valid_definition_name(s) => s.clone(),
        Some(Value::String(_)) => {
            error("/definition", "is not a valid definition name");
            String::new()
        }
        Some(_) => {
            error("/definition", "must be a string");
            String::new()
        }
        None => {
            error("/definition", "is required");
            String::new()
        }
    };
    let version = match map.get("version") {
        None | Some(Value::Null) => None,
        Some(v) => match crate::routes::common::json_integer(v) {
            Some(n) if (1..=i64::from(i32::MAX)).contains(&n) => Some(n as i32),
            _ => {
                error("/version", "must be a positive integer");
                None
            }
        },
    };
    let tenant_id = match map.get("tenant_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if saga_core::tenant::is_valid_tenant_id(s) => Some(s.clone()),
        Some(_) => {
            error("/tenant_id", saga_core::tenant::TENANT_ID_RULE);
            None
        }
    };
    let priority = match map.get("priority") {
        None | Some(Value::Null) => 0,
        Some(v) => match crate::routes::common::json_integer(v) {
            Some(n) if (-PRIORITY_MAX..=PRIORITY_MAX).contains(&n) => n as i32,
            _ => {
                error("/priority", "must be an integer from -1000 to 1000");
                0
            }
        },
    };
    let input = map.get("input").cloned().unwrap_or_else(|| Value::Object(Map::new()));
    if !errors.is_empty() {
        return Err(ApiError::validation("the saga request is invalid", errors));
    }
    Ok(StartRequest { definition, version, input, tenant_id, priority })
}

pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let key = idempotency_key(&headers)?;
    // `?wait=`: answer once the saga is terminal (or the wait is over), like `sagas start --wait`.
    let wait = parse_wait(&query)?;
    let body = body.map_err(body_rejection)?;
    let value: Value = crate::routes::common::json_body(&body)?;
    let request = parse_start(&value)?;
    // serde_json maps keep keys sorted, so this hash is canonical for equal JSON.
    let request_hash = hex::encode(Sha256::digest(value.to_string().as_bytes()));
    let mut use_hint = true;
    let id = Uuid::now_v7();
    // Registered before the saga exists, so its end cannot slip past the wait.
    let terminal = wait.map(|_| state.hub.watch(id));
    let created = loop {
        let (version, definition, require_latest) =
            definition_for_start(&state, &request.definition, request.version, use_hint).await?;
        let concurrency = concurrency_key(&state, &definition, &request, id)?;
        let now_ms = state.clock.now_ms();
        let saga_state = SagaState::started(&definition, now_ms);
        let params = SagaCreate {
            id,
            tenant_id: request.tenant_id.clone(),
            priority: request.priority,
            idempotency_key: key.as_ref().map(|k| format!("admin:{k}")),
            request_hash: Some(request_hash.clone()),
            require_latest,
            concurrency,
            retention_ms: definition.retention_ms.and_then(|ms| i64::try_from(ms).ok()),
            ..SagaCreate::new(&request.definition, version, request.input.clone(), saga_state, now_ms)
        };
        match state.intake.create(params).await? {
            SagaCreated::VersionMoved if use_hint => use_hint = false,
            SagaCreated::VersionMoved => {
                return Err(ApiError::Conflict(format!("definition {:?} is changing; try again", request.definition)))
            }
            other => break other,
        }
    };
    let (status, record, replayed) = match created {
        SagaCreated::Created(record) => (StatusCode::CREATED, record, false),
        SagaCreated::Replayed(record) => (StatusCode::OK, record, true),
        SagaCreated::KeyConflict => {
            return Err(ApiError::Conflict("this Idempotency-Key was used with a different request body".into()))
        }
        SagaCreated::VersionMoved => {
            return Err(ApiError::Conflict(format!("definition {:?} is changing; try again", request.definition)))
        }
    };
    let record = match (wait, terminal) {
        (Some(wait), Some(terminal)) => wait_terminal(&state, record, terminal, wait).await?,
        _ => record,
    };
    let mut response = (status, Json(views::saga(&record))).into_response();
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Renders the definition's `concurrency.key` for this saga.
fn concurrency_key(
    state: &AppState,
    definition: &saga_core::Definition,
    request: &StartRequest,
    id: Uuid,
) -> Result<Option<(String, u32)>, ApiError> {
    let context = saga_core::template::TemplateContext {
        input: request.input.clone(),
        tenant_id: request.tenant_id.clone(),
        saga_id: id.to_string(),
        step_outputs: Map::new(),
        vars: state.vars.clone(),
        locals: serde_json::Map::new(),
    };
    definition.concurrency_key(&context).map_err(|message| {
        ApiError::validation(
            "the concurrency key cannot be used for this saga",
            vec![FieldError { path: "/input".into(), message }],
        )
    })
}

/// `?wait=`: digits and one unit (`250ms`, `10s`, `1m`), as the OpenAPI document's pattern says;
/// anything over 60 s waits 60 s.
fn parse_wait(query: &HashMap<String, String>) -> Result<Option<Duration>, ApiError> {
    if let Some(key) = query.keys().find(|key| *key != "wait") {
        return Err(query_error(format!("unknown parameter {key:?}; expected wait")));
    }
    let Some(text) = query.get("wait") else {
        return Ok(None);
    };
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let unit_ms: u64 = match &text[digits..] {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => 0,
    };
    match text[..digits].parse::<u64>() {
        Ok(n) if unit_ms > 0 && digits <= 9 => Ok(Some(Duration::from_millis(n * unit_ms).min(crate::WAIT_MAX))),
        _ => Err(query_error(format!("wait {text:?} must be digits and a unit: ms, s, m or h (e.g. 10s)"))),
    }
}

/// Long poll: returns as soon as the saga is terminal, or `record` (re-read) when the wait is
/// over. Local drivers publish the committed final record on `terminal` (registered before the
/// caller's first read, so nothing is missed); sagas finished by other instances are caught by
/// the periodic re-read.
async fn wait_terminal(
    state: &AppState,
    mut record: SagaRecord,
    mut terminal: saga_runtime::TerminalWatch,
    wait: Duration,
) -> Result<SagaRecord, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut stopping = state.stopping.clone();
    loop {
        if record.status.is_terminal() || tokio::time::Instant::now() >= deadline {
            return Ok(record);
        }
        if *stopping.borrow() {
            return Ok(record);
        }
        let until = (tokio::time::Instant::now() + WAIT_RECHECK).min(deadline);
        tokio::select! {
            received = tokio::time::timeout_at(until, terminal.done()) => {
                if let Ok(done) = received {
                    return Ok(done.as_ref().clone());
                }
            }
            // Shutting down: answer with what we have; the client may ask again elsewhere.
            // A closed channel means nobody will ever stop this process: wait on.
            _ = async {
                if stopping.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => {}
        }
        record = load(state, record.id).await?;
    }
}

pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let Some(wait) = parse_wait(&query)? else {
        return Ok(Json(seen_by(&principal, views::saga(&load_visible(&state, &principal, id).await?))));
    };
    let terminal = state.hub.watch(id);
    let record = load_visible(&state, &principal, id).await?;
    Ok(Json(seen_by(&principal, views::saga(&wait_terminal(&state, record, terminal, wait).await?))))
}

pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    for key in query.keys() {
        if !["status", "definition", "tenant_id", "limit", "cursor", "order"].contains(&key.as_str()) {
            return Err(query_error(format!("unknown parameter {key:?}")));
        }
    }
    let status = match query.get("status") {
        None => None,
        Some(s) => Some(SagaStatus::parse(s).ok_or_else(|| {
            query_error(format!(
                "unknown status {s:?}; expected PENDING, EXECUTING, COMPLETED, COMPENSATING, COMPENSATED or FAILED"
            ))
        })?),
    };
    let limit = crate::routes::common::query_limit(query.get("limit"))?;
    let before_id = match query.get("cursor") {
        None => None,
        Some(c) => Some(Uuid::parse_str(c).map_err(|_| query_error("cursor is not one this API returned"))?),
    };
    let mut tenant_id = query.get("tenant_id").cloned();
    if let Some(scope) = principal.tenant_scope() {
        // A tenant key lists its own tenant's sagas only.
        if tenant_id.as_deref().is_some_and(|t| t != scope) {
            return Ok(page(Vec::new(), None));
        }
        tenant_id = Some(scope.to_string());
    }
    let stalest_first = match query.get("order").map(String::as_str) {
        None | Some("newest") => false,
        Some("stalled") => true,
        Some(other) => return Err(query_error(format!("unknown order {other:?}; expected newest or stalled"))),
    };
    let filter = SagaFilter {
        status,
        definition: query.get("definition").cloned(),
        tenant_id,
        concurrency_key: None,
        before_id,
        limit: saga_store::clamp_limit(limit),
        stalest_first,
    };
    let records = state.store.saga_list(&filter).await?;
    Ok(page_of(&records, filter.limit, |r| seen_by(&principal, views::saga(r)), |r| r.id.to_string()))
}

pub async fn events(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    load_visible(&state, &principal, id).await?;
    for key in query.keys() {
        if !["limit", "cursor"].contains(&key.as_str()) {
            return Err(query_error(format!("unknown parameter {key:?}")));
        }
    }
    let after = match query.get("cursor") {
        None => 0,
        Some(c) => c
            .parse::<u64>()
            .ok()
            .and_then(|c| i64::try_from(c).ok())
            .ok_or_else(|| query_error("cursor is not one this API returned"))?,
    };
    let limit = crate::routes::common::query_limit(query.get("limit"))?;
    let limit = saga_store::clamp_limit(limit.or(Some(saga_store::LIST_LIMIT_MAX)));
    let records = state.store.saga_events(id, after, limit).await?;
    Ok(page_of(&records, limit, |r| seen_by(&principal, views::event(r)), |r| r.seq.to_string()))
}

pub async fn retry(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let id = parse_id(&id)?;
    let record = load(&state, id).await?;
    if record.status != SagaStatus::Failed {
        return Err(ApiError::Conflict(format!(
            "only FAILED sagas can be retried; this one is {}",
            record.status.as_str()
        )));
    }
    let updated = state.operator().retry(&record, None).await?;
    Ok((StatusCode::ACCEPTED, Json(views::saga(&updated))).into_response())
}

/// `GET /v1/sagas/{id}/blockers`: everything that holds the saga now (docs/api.md).
pub async fn blockers(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let record = load_visible(&state, &principal, id).await?;
    let now_ms = state.clock.now_ms();
    let facts = state.store.saga_queue_facts(&record, now_ms).await?;
    // The limit as the definition version the saga runs says it (a missing one: unknown).
    let limit = match state.definitions.get(&record.definition, Some(record.version)).await {
        Ok((_, definition)) => definition.concurrency.as_ref().map(|c| c.limit),
        Err(_) => None,
    };
    let mut explained = saga_runtime::blockers::explain(&record, &facts, limit, now_ms);
    let viewer = match principal.tenant_scope() {
        None => views::Viewer::Operator,
        // Of the sagas holding its concurrency key, a tenant is shown its own only.
        Some(tenant) => {
            let mut other_holders = 0;
            for blocker in &mut explained.blockers {
                if let saga_runtime::blockers::Blocker::Concurrency { holders, .. } = blocker {
                    let mut own = Vec::with_capacity(holders.len());
                    for holder in holders.iter() {
                        match state.store.saga_get(*holder).await {
                            Ok(held) if held.tenant_id.as_deref() == Some(tenant) => own.push(*holder),
                            _ => other_holders += 1,
                        }
                    }
                    *holders = own;
                }
            }
            views::Viewer::Tenant { other_holders }
        }
    };
    Ok(Json(views::blockers(&record, &explained, viewer)))
}
