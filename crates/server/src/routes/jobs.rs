//! Bulk actions (`POST /v1/sagas/actions`, `POST /v1/deliveries/actions`) and the jobs they start
//! (`GET /v1/jobs/{id}`, `POST /v1/jobs/{id}/cancel`). A request names an action and a filter;
//! with `dry_run` it only counts what matches, otherwise the matching ids are written with a
//! durable job that the runner (`saga_runtime::bulk`) works through. A tenant key's filter is
//! confined to its tenant, and it sees only its own jobs.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use saga_core::{FieldError, SagaStatus};
use saga_runtime::BulkAction;
use saga_store::{
    DeliverySelection, DeliveryStatus, JobCreate, JobRecord, SagaSelection, Selection, StoreError, JOB_ITEMS_MAX,
    SIGNAL_NAME_MAX,
};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::routes::common::{json_integer, parse_body, parse_uuid};
use crate::state::AppState;
use crate::views;

/// The longest `error_contains` taken.
pub const ERROR_CONTAINS_MAX_CHARS: usize = 200;

/// A bulk request, read: what to do, to which items, and whether only to count them.
struct BulkRequest {
    action: String,
    arguments: Option<Value>,
    selection: Selection,
    filter: Value,
    dry_run: bool,
}

/// `POST /v1/sagas/actions`.
pub async fn sagas(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = parse_body(body)?;
    let mut request = Fields::new(&body, &["action", "filter", "signal", "version", "dry_run"])?.sagas(&principal)?;
    if request.action == "upgrade" {
        upgrade_target(&state, &principal, &mut request).await?;
    }
    answer(&state, &principal, request).await
}

/// An upgrade's target: the version asked for, else the definition's latest — which must exist
/// and differ from the version the filter selects. The operator's alone.
async fn upgrade_target(state: &AppState, principal: &Principal, request: &mut BulkRequest) -> Result<(), ApiError> {
    principal.require_admin()?;
    let Selection::Sagas(selection) = &request.selection else { return Ok(()) };
    let (Some(definition), Some(from)) = (selection.definition.clone(), selection.version) else {
        return Err(ApiError::field(
            "/filter",
            "the upgrade action moves the sagas of one version of one definition: name filter.definition and filter.version",
        ));
    };
    let asked = request.arguments.as_ref().and_then(|a| a.get("version")).and_then(Value::as_i64);
    let asked = asked.and_then(|v| i32::try_from(v).ok());
    let to = match state.definitions.get(&definition, asked).await {
        Ok((version, _)) => version,
        Err(saga_runtime::DefinitionError::NotFound { .. }) => {
            let which = asked.map_or_else(|| "any version".to_string(), |v| format!("version {v}"));
            return Err(ApiError::field("/version", format!("definition {definition:?} has no {which}")));
        }
        Err(e) => return Err(e.into()),
    };
    if i64::from(to) == i64::from(from) {
        return Err(ApiError::field("/version", format!("the sagas selected are on version {to} already")));
    }
    request.arguments = Some(json!({ "version": to }));
    Ok(())
}

/// `POST /v1/deliveries/actions`.
pub async fn deliveries(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = parse_body(body)?;
    let request = Fields::new(&body, &["action", "filter", "dry_run"])?.deliveries(&principal)?;
    if let (Some(scope), Selection::Deliveries(selection)) = (principal.tenant_scope(), &request.selection) {
        if let Some(subscription_id) = selection.subscription_id {
            match state.store.subscription_get(subscription_id).await {
                Ok(subscription) if subscription.tenant_id.as_deref() == Some(scope) => {}
                Ok(_) | Err(StoreError::NotFound) => {
                    return Err(ApiError::Forbidden("a tenant key acts only on its own subscriptions".into()))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    answer(&state, &principal, request).await
}

/// 200 `{matched}` for a dry run; otherwise the job written, 202 `{job_id, matched}`.
async fn answer(state: &AppState, principal: &Principal, request: BulkRequest) -> Result<Response, ApiError> {
    if request.dry_run {
        let matched = state.store.selection_count(&request.selection).await?;
        return Ok((StatusCode::OK, Json(json!({"matched": matched}))).into_response());
    }
    let create = JobCreate {
        id: Uuid::now_v7(),
        action: request.action,
        selection: request.selection,
        filter: request.filter,
        arguments: request.arguments,
        tenant_id: principal.tenant_scope().map(str::to_string),
        now_ms: state.clock.now_ms(),
    };
    let job = match state.store.job_create(&create, JOB_ITEMS_MAX).await {
        Err(StoreError::Conflict(message)) => return Err(ApiError::field("/filter", message)),
        other => other?,
    };
    let answer = json!({"job_id": job.id, "matched": job.matched, "status": job.status.as_str()});
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// `GET /v1/jobs/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = visible(&state, &principal, &id).await?;
    Ok(Json(views::job(&job)))
}

/// `POST /v1/jobs/{id}/cancel`: 202 with the job; 409 once it has finished.
pub async fn cancel(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = visible(&state, &principal, &id).await?;
    let cancelled = state.store.job_cancel(job.id, state.clock.now_ms()).await?;
    Ok((StatusCode::ACCEPTED, Json(views::job(&cancelled))).into_response())
}

/// A job `principal` may see: a tenant key only its own (others 404, as if absent).
async fn visible(state: &AppState, principal: &Principal, id: &str) -> Result<JobRecord, ApiError> {
    let missing = || ApiError::NotFound(format!("job {id:?} does not exist"));
    let id = parse_uuid(id, "job")?;
    let job = match state.store.job_get(id).await {
        Err(StoreError::NotFound) => return Err(missing()),
        other => other?,
    };
    match principal.tenant_scope() {
        Some(scope) if job.tenant_id.as_deref() != Some(scope) => Err(missing()),
        _ => Ok(job),
    }
}

/// A request body's fields, read one by one with every problem collected (422 with all of them).
struct Fields<'a> {
    body: &'a Map<String, Value>,
    filter: Map<String, Value>,
    errors: Vec<FieldError>,
}

impl<'a> Fields<'a> {
    fn new(body: &'a Value, known: &[&str]) -> Result<Self, ApiError> {
        let Some(map) = body.as_object() else {
            return Err(ApiError::field("", "the body must be a JSON object"));
        };
        let mut fields = Fields { body: map, filter: Map::new(), errors: Vec::new() };
        for key in map.keys().filter(|key| !known.contains(&key.as_str())) {
            fields.error(&format!("/{key}"), format!("unknown field; expected {}", known.join(", ")));
        }
        match map.get("filter") {
            None | Some(Value::Null) => {}
            Some(Value::Object(filter)) => fields.filter = filter.clone(),
            Some(_) => fields.error("/filter", "must be an object"),
        }
        Ok(fields)
    }

    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(FieldError { path: path.into(), message: message.into() });
    }

    fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            return Ok(());
        }
        Err(ApiError::validation("the bulk action is invalid", self.errors))
    }

    fn known_filter(&mut self, known: &[&str]) {
        let unknown: Vec<String> = self.filter.keys().filter(|key| !known.contains(&key.as_str())).cloned().collect();
        for key in unknown {
            self.error(&format!("/filter/{key}"), format!("unknown filter; expected {}", known.join(", ")));
        }
    }

    fn action(&mut self, allowed: &[&str]) -> String {
        match self.body.get("action").and_then(Value::as_str) {
            Some(action) if allowed.contains(&action) => action.to_string(),
            _ => {
                self.error("/action", format!("must be one of {}", allowed.join(", ")));
                String::new()
            }
        }
    }

    fn dry_run(&mut self) -> bool {
        match self.body.get("dry_run") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(dry_run)) => *dry_run,
            Some(_) => {
                self.error("/dry_run", "must be true or false");
                false
            }
        }
    }

    fn text(&mut self, name: &str, max_chars: usize) -> Option<String> {
        match self.filter.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(text))
                if !crate::routes::tenants::requests::is_blank(text) && text.chars().count() <= max_chars =>
            {
                Some(text.clone())
            }
            Some(_) => {
                self.error(
                    &format!("/filter/{name}"),
                    format!("must be a string of 1 to {max_chars} characters, not blank"),
                );
                None
            }
        }
    }

    fn time(&mut self, name: &str) -> Option<i64> {
        let value = self.filter.get(name)?;
        if value.is_null() {
            return None;
        }
        let parsed = value.as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if parsed.is_none() {
            self.error(&format!("/filter/{name}"), "must be an RFC 3339 time, e.g. 2026-12-01T00:00:00Z");
        }
        parsed.map(|t| t.timestamp_millis())
    }

    /// The tenant a filter names, checked against a tenant key's own.
    fn tenant(&mut self, principal: &Principal) -> Result<Option<String>, ApiError> {
        let named = self.text("tenant_id", 200);
        match (principal.tenant_scope(), named) {
            (Some(scope), Some(named)) if named != scope => {
                Err(ApiError::Forbidden("a tenant key acts only within its own tenant".into()))
            }
            (Some(scope), _) => Ok(Some(scope.to_string())),
            (None, named) => Ok(named),
        }
    }

    fn sagas(mut self, principal: &Principal) -> Result<BulkRequest, ApiError> {
        self.known_filter(&[
            "definition",
            "version",
            "status",
            "tenant_id",
            "created_after",
            "created_before",
            "updated_after",
            "updated_before",
            "error_contains",
        ]);
        let action = self.action(&["cancel", "retry", "signal", "upgrade"]);
        let arguments = match action.as_str() {
            "upgrade" => self.version(),
            _ => self.signal(&action),
        };
        if action != "upgrade" && self.body.get("version").is_some_and(|v| !v.is_null()) {
            self.error("/version", "only the upgrade action takes a version");
        }
        let bulk = BulkAction::parse(&action, arguments.as_ref());
        let tenant_id = self.tenant(principal)?;
        let version = match self.filter.get("version") {
            None | Some(Value::Null) => None,
            Some(value) => match json_integer(value)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (1..=i32::MAX as u32).contains(n))
            {
                Some(version) => Some(version),
                None => {
                    self.error("/filter/version", "must be a positive integer");
                    None
                }
            },
        };
        let statuses = self.statuses(bulk.as_ref());
        let selection = SagaSelection {
            definition: self.text("definition", 200),
            version,
            statuses,
            tenant_id,
            created_after_ms: self.time("created_after"),
            created_before_ms: self.time("created_before"),
            updated_after_ms: self.time("updated_after"),
            updated_before_ms: self.time("updated_before"),
            error_contains: self.text("error_contains", ERROR_CONTAINS_MAX_CHARS),
        };
        let dry_run = self.dry_run();
        let filter = Value::Object(self.filter.clone());
        self.finish()?;
        Ok(BulkRequest { action, arguments, selection: Selection::Sagas(selection), filter, dry_run })
    }

    /// The statuses a saga job selects: the filter's, which the action must apply to, or else
    /// every status the action applies to (`matched` counts only sagas it can act on).
    fn statuses(&mut self, action: Option<&BulkAction>) -> Vec<SagaStatus> {
        let applies_to = action.map(BulkAction::applies_to).unwrap_or_default();
        let named = match self.filter.get("status") {
            None | Some(Value::Null) => return applies_to.to_vec(),
            Some(value) => value.as_str().and_then(SagaStatus::parse),
        };
        match (named, action) {
            (None, _) => {
                self.error(
                    "/filter/status",
                    "must be one of PENDING, EXECUTING, COMPENSATING, COMPLETED, COMPENSATED, FAILED",
                );
                Vec::new()
            }
            (Some(status), Some(action)) if !applies_to.contains(&status) => {
                let statuses: Vec<&str> = applies_to.iter().map(|s| s.as_str()).collect();
                self.error(
                    "/filter/status",
                    format!("{} applies only to sagas that are {}", action.as_str(), statuses.join(", ")),
                );
                Vec::new()
            }
            (Some(status), _) => vec![status],
        }
    }

    /// A signal action's `{name, data}`; refused on other actions.
    /// An upgrade's `version`: a positive integer, or absent (the latest), as `{version}`.
    fn version(&mut self) -> Option<Value> {
        if self.body.get("signal").is_some_and(|v| !v.is_null()) {
            self.error("/signal", "only the signal action takes a signal");
        }
        match self.body.get("version") {
            None | Some(Value::Null) => Some(json!({})),
            Some(value) => match json_integer(value).filter(|n| (1..=i64::from(i32::MAX)).contains(n)) {
                Some(version) => Some(json!({ "version": version })),
                None => {
                    self.error("/version", "must be a positive integer");
                    None
                }
            },
        }
    }

    fn signal(&mut self, action: &str) -> Option<Value> {
        let signal = self.body.get("signal").filter(|value| !value.is_null());
        match (action, signal) {
            ("signal", None) => {
                self.error("/signal", "the signal action needs {name, data}");
                None
            }
            ("signal", Some(Value::Object(map))) => {
                if let Some(key) = map.keys().find(|key| !["name", "data"].contains(&key.as_str())) {
                    let path = format!("/signal/{key}");
                    self.error(&path, "unknown field; expected name and data");
                }
                match map.get("name").and_then(Value::as_str) {
                    Some(name) if !name.is_empty() && name.chars().count() <= SIGNAL_NAME_MAX => {
                        Some(json!({"name": name, "data": map.get("data").cloned().unwrap_or(Value::Null)}))
                    }
                    _ => {
                        self.error("/signal/name", format!("must be a string of 1 to {SIGNAL_NAME_MAX} characters"));
                        None
                    }
                }
            }
            ("signal", Some(_)) => {
                self.error("/signal", "must be an object {name, data}");
                None
            }
            (_, Some(_)) => {
                self.error("/signal", "only the signal action takes a signal");
                None
            }
            (_, None) => None,
        }
    }

    fn deliveries(mut self, principal: &Principal) -> Result<BulkRequest, ApiError> {
        self.known_filter(&["subscription_id", "status", "created_after", "created_before"]);
        let action = self.action(&["replay", "cancel"]);
        let subscription_id = match self.filter.get("subscription_id") {
            None | Some(Value::Null) => None,
            Some(value) => match value.as_str().and_then(|text| Uuid::parse_str(text).ok()) {
                Some(id) => Some(id),
                None => {
                    self.error("/filter/subscription_id", "must be a subscription's id");
                    None
                }
            },
        };
        // Replay takes dead deliveries, cancel pending ones: the status follows from the action.
        let needed = match action.as_str() {
            "replay" => Some(DeliveryStatus::Dead),
            "cancel" => Some(DeliveryStatus::Pending),
            _ => None,
        };
        let status = match self.filter.get("status") {
            None | Some(Value::Null) => needed,
            Some(value) => {
                let named = value.as_str().and_then(DeliveryStatus::parse);
                if named.is_none() || needed.is_some_and(|needed| named != Some(needed)) {
                    let expected = needed.map(DeliveryStatus::as_str).unwrap_or("pending, succeeded or dead");
                    self.error("/filter/status", format!("{action} applies only to deliveries that are {expected}"));
                }
                named
            }
        };
        let selection = DeliverySelection {
            subscription_id,
            status,
            subscription_tenant_id: principal.tenant_scope().map(str::to_string),
            created_after_ms: self.time("created_after"),
            created_before_ms: self.time("created_before"),
        };
        let dry_run = self.dry_run();
        let filter = Value::Object(self.filter.clone());
        self.finish()?;
        Ok(BulkRequest { action, arguments: None, selection: Selection::Deliveries(selection), filter, dry_run })
    }
}
