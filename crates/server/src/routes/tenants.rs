//! `/v1/tenants` (lifecycle, users, API keys), `/v1/migrations` and `/v1/webhooks/crm`
//! (API.md §6, the inbound half of §7). Every tenant write either starts a built-in tenant saga
//! (provision, deprovision, migrate) in the same transaction as the status change, or is a
//! status change the status machine in `saga_core::tenant` allows.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use saga_core::tenant::{is_valid_tenant_id, SlaTier, StorageMode, TenantStatus, Tier};
use saga_core::{FieldError, SagaState, SagaStatus};
use saga_store::{
    SagaCreate, StoreError, TenantFilter, TenantKeyRecord, TenantPatch, TenantRecord, TenantTransition,
    TenantUserRecord, WebhookClaim,
};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use uuid::Uuid;

use super::sagas::{definition, load};
use crate::auth::{token_hash, Principal, TENANT_TOKEN_PREFIX};
use crate::error::{body_rejection, ApiError};
use crate::state::{AppState, Tenancy};
use crate::views;

/// Limits on tenant fields.
const NAME_MAX_CHARS: usize = 200;
const LIST_ITEMS_MAX: usize = 100;
const METADATA_MAX_BYTES: usize = 64 * 1024;
const EMAIL_MAX_CHARS: usize = 254;
/// The tenants a rollout starts at most.
const ROLLOUT_TENANTS_MAX: u32 = 10_000;
const ROLLOUT_CONCURRENCY_DEFAULT: u32 = 4;

fn tenancy(state: &AppState) -> Result<&Tenancy, ApiError> {
    state.tenancy.as_ref().ok_or_else(|| ApiError::NotFound("tenants are not enabled on this server".into()))
}

fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let body = body.map_err(body_rejection)?;
    serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))
}

/// A validated `POST /v1/tenants` body.
struct TenantRequest {
    id: String,
    name: String,
    tier: Tier,
    storage_mode: StorageMode,
    sla_tier: SlaTier,
    domains: Value,
    contacts: Value,
    metadata: Value,
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(FieldError { path: path.into(), message: message.into() });
    }
}

fn string_field(map: &Map<String, Value>, key: &str, errors: &mut Errors) -> Option<String> {
    match map.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.add(&format!("/{key}"), "must be a string");
            None
        }
    }
}

fn enum_field<T>(
    map: &Map<String, Value>,
    key: &str,
    parse: fn(&str) -> Option<T>,
    expected: String,
    errors: &mut Errors,
) -> Option<T> {
    let text = string_field(map, key, errors)?;
    let parsed = parse(&text);
    if parsed.is_none() {
        errors.add(&format!("/{key}"), format!("unknown {key} {text:?}; expected one of {expected}"));
    }
    parsed
}

fn check_name(name: Option<String>, errors: &mut Errors, required: bool) -> Option<String> {
    match name {
        Some(name) if is_blank(&name) => {
            errors.add("/name", "must not be empty");
            None
        }
        Some(name) if name.chars().count() > NAME_MAX_CHARS => {
            errors.add("/name", format!("must be at most {NAME_MAX_CHARS} characters"));
            None
        }
        Some(name) => Some(name),
        None => {
            if required {
                errors.add("/name", "is required");
            }
            None
        }
    }
}

/// The items of a list field, with "not an array" and "too many" reported at `path`.
fn list_items<'a>(value: &'a Value, path: &str, shape: &str, errors: &mut Errors) -> Option<&'a Vec<Value>> {
    let Some(items) = value.as_array() else {
        errors.add(path, format!("must be an array of {shape}"));
        return None;
    };
    if items.len() > LIST_ITEMS_MAX {
        errors.add(path, format!("at most {LIST_ITEMS_MAX} items"));
    }
    Some(items)
}

fn check_domains(value: Option<&Value>, errors: &mut Errors) -> Option<Value> {
    let value = value?;
    let items = list_items(value, "/domains", "domain names", errors)?;
    for (i, item) in items.iter().enumerate() {
        let ok = item.as_str().is_some_and(|d| {
            !d.is_empty()
                && d.len() <= 253
                && d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                && !d.starts_with('.')
                && !d.ends_with('.')
        });
        if !ok {
            errors.add(&format!("/domains/{i}"), "must be a domain name like app.example.com");
        }
    }
    Some(value.clone())
}

fn check_contacts(value: Option<&Value>, errors: &mut Errors) -> Option<Value> {
    let value = value?;
    let items = list_items(value, "/contacts", "{name, email, role}", errors)?;
    for (i, item) in items.iter().enumerate() {
        let Some(contact) = item.as_object() else {
            errors.add(&format!("/contacts/{i}"), "must be an object {name, email, role}");
            continue;
        };
        for key in contact.keys() {
            if !["name", "email", "role"].contains(&key.as_str()) {
                errors.add(&format!("/contacts/{i}/{key}"), "unknown field; expected name, email, role");
            }
        }
        for key in ["name", "email", "role"] {
            match contact.get(key) {
                Some(Value::String(s)) if !is_blank(s) && s.chars().count() <= EMAIL_MAX_CHARS => {
                    if key == "email" && !is_email(s) {
                        errors.add(&format!("/contacts/{i}/email"), "must be an email address");
                    }
                }
                _ => errors.add(&format!("/contacts/{i}/{key}"), "is required: a non-empty string"),
            }
        }
    }
    Some(value.clone())
}

fn is_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    !local.is_empty() && domain.contains('.') && !text.contains(is_space) && text.chars().count() <= EMAIL_MAX_CHARS
}

/// White space as both Rust and the OpenAPI document's patterns (ECMAScript `\s`) see it, so
/// the schema's `\S` and the server agree on what is blank.
fn is_space(c: char) -> bool {
    c.is_whitespace() || c == '\u{feff}'
}

fn is_blank(text: &str) -> bool {
    text.chars().all(is_space)
}

fn check_metadata(value: Option<&Value>, errors: &mut Errors) -> Option<Value> {
    let value = value?;
    if !value.is_object() {
        errors.add("/metadata", "must be an object");
        return None;
    }
    if value.to_string().len() > METADATA_MAX_BYTES {
        errors.add("/metadata", format!("must be at most {METADATA_MAX_BYTES} bytes of JSON"));
    }
    Some(value.clone())
}

fn parse_tenant(body: &Value, tenancy: &Tenancy) -> Result<TenantRequest, ApiError> {
    let Some(map) = body.as_object() else {
        return Err(ApiError::field("", "the tenant must be a JSON object"));
    };
    let mut errors = Errors(Vec::new());
    for key in map.keys() {
        let known = ["id", "name", "tier", "storage_mode", "sla_tier", "domains", "contacts", "metadata"];
        if !known.contains(&key.as_str()) {
            errors.add(&format!("/{key}"), format!("unknown field; expected {}", known.join(", ")));
        }
    }
    let id = string_field(map, "id", &mut errors);
    match &id {
        None if !map.contains_key("id") => errors.add("/id", "is required"),
        Some(id) if !is_valid_tenant_id(id) => {
            errors.add("/id", "must match ^[a-z][a-z0-9-]{1,61}[a-z0-9]$ (3 to 63 characters)")
        }
        _ => {}
    }
    let name = check_name(string_field(map, "name", &mut errors), &mut errors, true);
    let tier = enum_field(map, "tier", Tier::parse, Tier::expected(), &mut errors);
    let storage_mode = enum_field(map, "storage_mode", StorageMode::parse, StorageMode::expected(), &mut errors);
    let sla_tier = enum_field(map, "sla_tier", SlaTier::parse, SlaTier::expected(), &mut errors);
    let domains = check_domains(map.get("domains"), &mut errors);
    let contacts = check_contacts(map.get("contacts"), &mut errors);
    let metadata = check_metadata(map.get("metadata"), &mut errors);
    let tier = tier.unwrap_or(Tier::Pooled);
    let offered: Vec<StorageMode> =
        StorageMode::ALL.iter().copied().filter(|mode| tenancy.storage.supports(*mode)).collect();
    let offered_list = offered.iter().map(|mode| mode.as_str()).collect::<Vec<_>>().join(", ");
    let storage_mode = match storage_mode {
        Some(mode) if !offered.contains(&mode) => {
            errors.add(
                "/storage_mode",
                format!(
                    "storage mode {} is not offered by the {} tenant storage, which offers: {offered_list}{}",
                    mode.as_str(),
                    tenancy.storage.backend_name(),
                    if offered.contains(&StorageMode::Schema) {
                        ""
                    } else {
                        " (set SAGAPLANE_TENANT_DATABASE_URL to a PostgreSQL server for schema and pooled)"
                    }
                ),
            );
            mode
        }
        Some(mode) => mode,
        None => match tier.storage_mode_among(&offered) {
            Some(mode) => mode,
            None => {
                errors.add(
                    "/storage_mode",
                    format!("the {} tenant storage offers no storage mode", tenancy.storage.backend_name()),
                );
                tier.default_storage_mode()
            }
        },
    };
    let (Some(id), Some(name), true) = (id, name, errors.0.is_empty()) else {
        return Err(ApiError::validation("the tenant is invalid", errors.0));
    };
    Ok(TenantRequest {
        id,
        name,
        tier,
        storage_mode,
        sla_tier: sla_tier.unwrap_or(SlaTier::Standard),
        domains: domains.unwrap_or_else(|| json!([])),
        contacts: contacts.unwrap_or_else(|| json!([])),
        metadata: metadata.unwrap_or_else(|| json!({})),
    })
}

/// A saga of a built-in tenant definition (latest version) for `tenant_id`.
async fn tenant_saga(
    state: &AppState,
    name: &str,
    tenant_id: &str,
    input: Value,
    concurrency: Option<(String, u32)>,
) -> Result<SagaCreate, ApiError> {
    let (version, definition) = definition(state, name, None).await?;
    let now_ms = state.clock.now_ms();
    Ok(SagaCreate {
        id: Uuid::now_v7(),
        definition: name.to_string(),
        version,
        tenant_id: Some(tenant_id.to_string()),
        input,
        state: SagaState::started(&definition, now_ms),
        priority: 0,
        idempotency_key: None,
        request_hash: None,
        require_latest: false,
        lease: None,
        concurrency,
        now_ms,
    })
}

/// Moves tenant `id` to `to` (only from `from`) and starts the built-in saga `definition` for it
/// in the same transaction; 409 when the tenant is in another status.
async fn start_tenant_saga(
    state: &AppState,
    id: &str,
    (to, from): (TenantStatus, Vec<TenantStatus>),
    definition: &str,
    input: Value,
    concurrency: Option<(String, u32)>,
) -> Result<(TenantRecord, saga_store::SagaRecord), ApiError> {
    let saga = tenant_saga(state, definition, id, input, concurrency).await?;
    let transition =
        TenantTransition { id: id.to_string(), to, from, error: None, saga: Some(saga), now_ms: state.clock.now_ms() };
    match state.store.tenant_transition(transition).await? {
        (tenant, Some(saga)) => Ok((tenant, saga)),
        (_, None) => Err(ApiError::Internal("the tenant moved but its saga was not started".into())),
    }
}

/// Creates a tenant and starts its provisioning: the body of `POST /v1/tenants` (also used by
/// the CRM webhook and `sagaplane dev`'s demo tenant). Returns `202 {tenant, saga_id}`.
pub async fn onboard(state: &AppState, body: &Value) -> Result<(StatusCode, Value), ApiError> {
    let tenancy = tenancy(state)?;
    let request = parse_tenant(body, tenancy)?;
    let now_ms = state.clock.now_ms();
    let record = TenantRecord {
        id: request.id.clone(),
        name: request.name,
        tier: request.tier,
        storage_mode: request.storage_mode,
        sla_tier: request.sla_tier,
        status: TenantStatus::Provisioning,
        domains: request.domains,
        contacts: request.contacts,
        metadata: request.metadata,
        storage: Value::Null,
        migrations: json!([]),
        saga_id: None,
        error: None,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
    };
    let saga = tenant_saga(state, tenancy::definitions::PROVISION, &request.id, json!({"tenant_id": request.id}), None)
        .await?;
    match state.store.tenant_create(record, saga).await {
        Ok((tenant, saga)) => Ok((StatusCode::ACCEPTED, json!({"tenant": views::tenant(&tenant), "saga_id": saga.id}))),
        Err(StoreError::Conflict(_)) => Err(ApiError::Conflict(format!("tenant {:?} already exists", request.id))),
        Err(e) => Err(e.into()),
    }
}

/// Idempotency-Key handling for `POST /v1/tenants`, stored with the inbound-webhook receipts.
const IDEMPOTENCY_SOURCE: &str = "tenants:idempotency-key";

pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let key = super::sagas::idempotency_key(&headers)?;
    let body = parse_body(body)?;
    let hash = hex::encode(Sha256::digest(body.to_string().as_bytes()));
    let Some(key) = key else {
        let (status, value) = onboard(&state, &body).await?;
        return Ok((status, Json(value)).into_response());
    };
    match state.store.webhook_claim(IDEMPOTENCY_SOURCE, &key, state.clock.now_ms()).await? {
        WebhookClaim::Seen(Some(first)) if first["request_hash"] == json!(hash) => {
            let mut response = (StatusCode::OK, Json(first["response"].clone())).into_response();
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
        WebhookClaim::Seen(Some(_)) => {
            Err(ApiError::Conflict("this Idempotency-Key was used with a different request body".into()))
        }
        WebhookClaim::Seen(None) => {
            Err(ApiError::Conflict("a request with this Idempotency-Key is in progress".into()))
        }
        WebhookClaim::New => match onboard(&state, &body).await {
            Ok((status, value)) => {
                let first = json!({"request_hash": hash, "response": value});
                state.store.webhook_complete(IDEMPOTENCY_SOURCE, &key, &first).await?;
                Ok((status, Json(value)).into_response())
            }
            Err(e) => {
                state.store.webhook_release(IDEMPOTENCY_SOURCE, &key).await?;
                Err(e)
            }
        },
    }
}

async fn load_tenant(state: &AppState, principal: &Principal, id: &str) -> Result<TenantRecord, ApiError> {
    principal.require_tenant(id)?;
    tenancy(state)?;
    if !is_valid_tenant_id(id) {
        return Err(ApiError::NotFound(format!("tenant {id:?} does not exist")));
    }
    match state.store.tenant_get(id).await {
        Ok(tenant) => Ok(tenant),
        Err(StoreError::NotFound) => Err(ApiError::NotFound(format!("tenant {id:?} does not exist"))),
        Err(e) => Err(e.into()),
    }
}

pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    tenancy(&state)?;
    for key in query.keys() {
        if !["status", "tier", "limit", "cursor"].contains(&key.as_str()) {
            return Err(ApiError::BadRequest(format!("invalid query: unknown parameter {key:?}")));
        }
    }
    let status = match query.get("status") {
        None => None,
        Some(s) => Some(TenantStatus::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!("invalid query: unknown status {s:?}; expected {}", TenantStatus::expected()))
        })?),
    };
    let tier = match query.get("tier") {
        None => None,
        Some(t) => {
            Some(Tier::parse(t).ok_or_else(|| ApiError::BadRequest(format!("invalid query: unknown tier {t:?}")))?)
        }
    };
    let limit = super::query_limit(query.get("limit"))?;
    if let Some(scope) = principal.tenant_scope() {
        // A tenant key sees a list of one.
        let tenant = load_tenant(&state, &principal, scope).await?;
        let matches = status.is_none_or(|s| s == tenant.status) && tier.is_none_or(|t| t == tenant.tier);
        let items: Vec<Value> = if matches { vec![views::tenant(&tenant)] } else { Vec::new() };
        return Ok(Json(json!({"items": items, "next_cursor": null})));
    }
    let filter =
        TenantFilter { status, tier, after_id: query.get("cursor").cloned(), limit: saga_store::clamp_limit(limit) };
    let records = state.store.tenant_list(&filter).await?;
    let next_cursor = (records.len() == filter.limit as usize).then(|| records.last().map(|r| r.id.clone())).flatten();
    let items: Vec<Value> = records.iter().map(views::tenant).collect();
    Ok(Json(json!({"items": items, "next_cursor": next_cursor})))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(views::tenant(&load_tenant(&state, &principal, &id).await?)))
}

pub async fn patch(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let tenant = load_tenant(&state, &principal, &id).await?;
    let body = parse_body(body)?;
    let Some(map) = body.as_object() else {
        return Err(ApiError::field("", "the patch must be a JSON object"));
    };
    let mut errors = Errors(Vec::new());
    for key in map.keys() {
        if !["name", "sla_tier", "domains", "contacts", "metadata"].contains(&key.as_str()) {
            errors
                .add(&format!("/{key}"), "cannot be changed; PATCH takes name, sla_tier, domains, contacts, metadata");
        }
    }
    let patch = TenantPatch {
        name: check_name(string_field(map, "name", &mut errors), &mut errors, false),
        sla_tier: enum_field(map, "sla_tier", SlaTier::parse, SlaTier::expected(), &mut errors),
        domains: check_domains(map.get("domains"), &mut errors),
        contacts: check_contacts(map.get("contacts"), &mut errors),
        metadata: check_metadata(map.get("metadata"), &mut errors),
    };
    if !errors.0.is_empty() {
        return Err(ApiError::validation("the patch is invalid", errors.0));
    }
    if tenant.status == TenantStatus::Deleted {
        return Err(ApiError::Conflict("tenant is DELETED".into()));
    }
    let updated = state.store.tenant_patch(&id, &patch, state.clock.now_ms()).await?;
    Ok(Json(views::tenant(&updated)))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let tenant = load_tenant(&state, &principal, &id).await?;
    if tenant.status == TenantStatus::Provisioning || tenant.status == TenantStatus::Migrating {
        if let Some(saga_id) = tenant.saga_id {
            let saga = load(&state, saga_id).await?;
            if !saga.status.is_terminal() {
                return Err(ApiError::Conflict(format!(
                    "tenant is {}; cancel its provisioning (or wait for it) before deleting",
                    tenant.status.as_str()
                )));
            }
        }
    }
    let to = (TenantStatus::Deprovisioning, TenantStatus::sources_of(TenantStatus::Deprovisioning));
    let input = json!({"tenant_id": id});
    let (_, saga) = start_tenant_saga(&state, &id, to, tenancy::definitions::DEPROVISION, input, None).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"saga_id": saga.id}))).into_response())
}

pub async fn provisioning_status(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = load_tenant(&state, &principal, &id).await?;
    let saga = match tenant.saga_id {
        Some(saga_id) => Some(load(&state, saga_id).await?),
        None => None,
    };
    let progress = saga.as_ref().map(|s| s.state.progress());
    Ok(Json(json!({
        "status": tenant.status.as_str(),
        "saga_id": tenant.saga_id,
        "saga_status": saga.as_ref().map(|s| s.status.as_str()),
        "progress": progress,
        "current_step": progress.as_ref().and_then(|p| p.current_step.clone()),
        "error": tenant.error,
    })))
}

pub async fn cancel_provisioning(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let tenant = load_tenant(&state, &principal, &id).await?;
    let saga = match tenant.saga_id {
        Some(saga_id) => load(&state, saga_id).await?,
        None => return Err(ApiError::Conflict("tenant has no provisioning saga".into())),
    };
    let provisioning = matches!(tenant.status, TenantStatus::Provisioning | TenantStatus::Migrating);
    if !provisioning || saga.definition != tenancy::definitions::PROVISION || saga.status.is_terminal() {
        return Err(ApiError::Conflict(format!("tenant is {}; it is not provisioning", tenant.status.as_str())));
    }
    if saga.status == SagaStatus::Compensating {
        return Err(ApiError::Conflict("its provisioning is already being undone".into()));
    }
    let updated = state.store.saga_cancel_request(saga.id, state.clock.now_ms()).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"saga_id": updated.id, "status": "cancel requested"}))).into_response())
}

pub async fn retry_migration(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let tenant = load_tenant(&state, &principal, &id).await?;
    if tenant.status != TenantStatus::MigrationError {
        return Err(ApiError::Conflict(format!(
            "tenant is {}; only a tenant in MIGRATION_ERROR can retry its migration",
            tenant.status.as_str()
        )));
    }
    // The saga that failed in its migrations step (onboarding or a rollout) failed forward and
    // waits for an operator: retrying it resumes from the failed migration, so its history tells
    // the whole story. A tenant whose failed saga cannot be resumed gets a new migration saga.
    let failed = match tenant.saga_id {
        Some(saga_id) => Some(load(&state, saga_id).await?).filter(|saga| saga.status == SagaStatus::Failed),
        None => None,
    };
    let (tenant, saga_id) = match failed {
        Some(saga) => {
            let retried = super::sagas::operator_retry(&state, &saga).await?;
            (load_tenant(&state, &principal, &id).await?, retried.id)
        }
        None => {
            let to = (TenantStatus::Migrating, vec![TenantStatus::MigrationError]);
            let input = json!({"tenant_id": id});
            let (tenant, saga) = start_tenant_saga(&state, &id, to, tenancy::definitions::MIGRATE, input, None).await?;
            (tenant, saga.id)
        }
    };
    Ok((StatusCode::ACCEPTED, Json(json!({"tenant": views::tenant(&tenant), "saga_id": saga_id}))).into_response())
}

async fn set_access(
    state: &AppState,
    principal: &Principal,
    id: &str,
    to: TenantStatus,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let tenant = load_tenant(state, principal, id).await?;
    if !tenant.status.may_become(to) {
        return Err(ApiError::Conflict(format!(
            "tenant is {}; it cannot become {}",
            tenant.status.as_str(),
            to.as_str()
        )));
    }
    let tenancy = tenancy(state)?;
    let enabled = to == TenantStatus::Active;
    // The database side first: a suspended tenant's role cannot log in any more.
    tenancy
        .storage
        .access_set(id, tenant.storage_mode, enabled)
        .await
        .map_err(|e| ApiError::Unavailable(format!("tenant storage: {e}")))?;
    let transition = TenantTransition {
        id: id.to_string(),
        to,
        from: vec![tenant.status],
        error: None,
        saga: None,
        now_ms: state.clock.now_ms(),
    };
    let (updated, _) = state.store.tenant_transition(transition).await?;
    Ok(Json(views::tenant(&updated)))
}

pub async fn suspend(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_access(&state, &principal, &id, TenantStatus::Suspended).await
}

pub async fn resume(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_access(&state, &principal, &id, TenantStatus::Active).await
}

/// A tenant whose users and keys may change: exists, visible, not deleted.
async fn live_tenant(state: &AppState, principal: &Principal, id: &str) -> Result<TenantRecord, ApiError> {
    let tenant = load_tenant(state, principal, id).await?;
    if matches!(tenant.status, TenantStatus::Deleted | TenantStatus::Deprovisioning) {
        return Err(ApiError::Conflict(format!("tenant is {}", tenant.status.as_str())));
    }
    Ok(tenant)
}

const USER_ROLES: &[&str] = &["admin", "member"];

fn parse_user(body: &Value) -> Result<(String, String, String), ApiError> {
    let Some(map) = body.as_object() else {
        return Err(ApiError::field("", "the user must be a JSON object {email, name, role}"));
    };
    let mut errors = Errors(Vec::new());
    for key in map.keys() {
        if !["email", "name", "role"].contains(&key.as_str()) {
            errors.add(&format!("/{key}"), "unknown field; expected email, name, role");
        }
    }
    let email = string_field(map, "email", &mut errors);
    if !email.as_deref().is_some_and(is_email) {
        errors.add("/email", "is required: an email address");
    }
    let name = check_name(string_field(map, "name", &mut errors), &mut errors, true);
    let role = string_field(map, "role", &mut errors).unwrap_or_else(|| "member".into());
    if !USER_ROLES.contains(&role.as_str()) {
        errors.add("/role", "must be admin or member");
    }
    match (email, name, errors.0.is_empty()) {
        (Some(email), Some(name), true) => Ok((email.to_ascii_lowercase(), name, role)),
        _ => Err(ApiError::validation("the user is invalid", errors.0)),
    }
}

pub async fn users_list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    load_tenant(&state, &principal, &id).await?;
    let users = state.store.tenant_user_list(&id).await?;
    let items: Vec<Value> = users.iter().map(views::tenant_user).collect();
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

pub async fn users_create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    live_tenant(&state, &principal, &id).await?;
    let (email, name, role) = parse_user(&parse_body(body)?)?;
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

fn parse_uuid(text: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::NotFound(format!("{what} {text:?} does not exist")))
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
        .tenant_user_list(&id)
        .await?
        .into_iter()
        .find(|u| u.id == user_id)
        .ok_or_else(|| ApiError::NotFound(format!("user {user_id} does not exist")))?;
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
    match state.store.tenant_user_delete(&id, user_id).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(StoreError::NotFound) => Err(ApiError::NotFound(format!("user {user_id} does not exist"))),
        Err(e) => Err(e.into()),
    }
}

/// A tenant API token: a recognisable prefix and 256 random bits.
fn new_tenant_token() -> String {
    use base64::Engine;
    use rand::TryRngCore;
    let mut bytes = [0u8; 32];
    if rand::rngs::OsRng.try_fill_bytes(&mut bytes).is_err() {
        bytes[..16].copy_from_slice(Uuid::new_v4().as_bytes());
        bytes[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    }
    format!("{TENANT_TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

pub async fn keys_create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    live_tenant(&state, &principal, &id).await?;
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))?
    };
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

/// True when the tenant's recorded versions are behind the set's latest for any of `sets`.
fn is_behind(tenant: &TenantRecord, sets: &[tenancy::ServiceMigrations]) -> bool {
    sets.iter().any(|set| {
        let recorded = tenant
            .migrations
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["service"] == json!(set.service))
            .and_then(|m| m["version"].as_i64())
            .unwrap_or(0);
        recorded < set.latest_version()
    })
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
        Some(v) => match super::json_integer(v).filter(|c| (1..=1_000).contains(c)) {
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
    let mut started = Vec::new();
    let mut after_id = None;
    loop {
        let filter = TenantFilter {
            status: Some(TenantStatus::Active),
            tier: None,
            after_id: after_id.clone(),
            limit: saga_store::LIST_LIMIT_MAX,
        };
        let page = state.store.tenant_list(&filter).await?;
        let Some(last) = page.last() else { break };
        after_id = Some(last.id.clone());
        for tenant in page.iter().filter(|t| is_behind(t, &sets)) {
            if started.len() as u32 >= ROLLOUT_TENANTS_MAX {
                break;
            }
            // The limit is a concurrency key shared by this rollout's sagas, enforced by the claim.
            let started_saga = start_tenant_saga(
                &state,
                &tenant.id,
                (TenantStatus::Migrating, vec![TenantStatus::Active]),
                tenancy::definitions::MIGRATE,
                json!({"tenant_id": tenant.id, "service": service, "rollout_id": rollout_id}),
                Some((format!("rollout:{rollout_id}"), concurrency)),
            )
            .await;
            match started_saga {
                Ok((_, saga)) => started.push(json!({"tenant_id": tenant.id, "saga_id": saga.id})),
                // It stopped being ACTIVE meanwhile: not part of this rollout.
                Err(ApiError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if page.len() < saga_store::LIST_LIMIT_MAX as usize {
            break;
        }
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"rollout_id": rollout_id, "concurrency": concurrency, "sagas": started})))
        .into_response())
}

/// The most sagas a rollout's progress lists.
const ROLLOUT_PROGRESS_MAX: usize = 10_000;

/// `GET /v1/migrations/rollouts/{rollout_id}`: how far a rollout is, from its sagas.
pub async fn rollout_progress(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(rollout_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    tenancy(&state)?;
    let rollout_id = parse_uuid(&rollout_id, "rollout")?;
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
    if sagas.is_empty() {
        return Err(ApiError::NotFound(format!("rollout {rollout_id} does not exist")));
    }
    let mut statuses: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for saga in &sagas {
        *statuses.entry(saga.status.as_str()).or_default() += 1;
    }
    let finished = sagas.iter().filter(|s| s.status.is_terminal()).count();
    let items: Vec<Value> =
        sagas.iter().map(|s| json!({"tenant_id": s.tenant_id, "saga_id": s.id, "status": s.status.as_str()})).collect();
    Ok(Json(json!({
        "rollout_id": rollout_id,
        "total": sagas.len(),
        "finished": finished,
        "done": finished == sagas.len(),
        "statuses": statuses,
        "sagas": items,
    })))
}

/// The `webhook-id` dedupe source of the CRM webhook.
const CRM_SOURCE: &str = "crm";

pub async fn crm_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let secret = state.tenancy.as_ref().and_then(|t| t.crm_secret.clone());
    let Some(secret) = secret else {
        return Err(ApiError::NotFound("the CRM webhook is not configured (SAGAPLANE_CRM_WEBHOOK_SECRET)".into()));
    };
    let body = body.map_err(body_rejection)?;
    let verifier = standardwebhooks::Webhook::new(&secret)
        .map_err(|_| ApiError::Internal("SAGAPLANE_CRM_WEBHOOK_SECRET is not valid base64".into()))?;
    // Signature (constant-time) and the 5-minute timestamp window, by the Standard Webhooks crate.
    if let Err(e) = verifier.verify(&body, &headers) {
        tracing::info!(error = %e, "CRM webhook refused");
        return Err(ApiError::BadSignature(format!(
            "the webhook signature does not verify ({e}); Standard Webhooks headers with a timestamp within 5 minutes are required"
        )));
    }
    let webhook_id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 255)
        .ok_or_else(|| ApiError::BadSignature("webhook-id is missing or longer than 255 characters".into()))?
        .to_string();
    match state.store.webhook_claim(CRM_SOURCE, &webhook_id, state.clock.now_ms()).await? {
        WebhookClaim::Seen(Some(first)) => {
            let status = first["status"].as_u64().and_then(|s| StatusCode::from_u16(s as u16).ok());
            // A replay answers 200 with the first result and creates nothing.
            let status =
                if status == Some(StatusCode::ACCEPTED) { StatusCode::OK } else { status.unwrap_or(StatusCode::OK) };
            let mut response = (status, Json(first["body"].clone())).into_response();
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(response);
        }
        WebhookClaim::Seen(None) => {
            return Err(ApiError::Conflict(format!("webhook {webhook_id:?} is being processed")));
        }
        WebhookClaim::New => {}
    }
    let (status, value) = match handle_crm_event(&state, &body).await {
        Ok((status, value)) => (status, value),
        // A definite answer: replays get it too.
        Err(error @ (ApiError::Validation { .. } | ApiError::BadRequest(_) | ApiError::Conflict(_))) => {
            let response = error.into_response();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap_or_default();
            (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
        }
        // Not decided (the store failed): a redelivery is processed afresh.
        Err(error) => {
            state.store.webhook_release(CRM_SOURCE, &webhook_id).await?;
            return Err(error);
        }
    };
    state.store.webhook_complete(CRM_SOURCE, &webhook_id, &json!({"status": status.as_u16(), "body": value})).await?;
    let mut response = (status, Json(value)).into_response();
    if status.is_client_error() {
        response.headers_mut().insert("content-type", HeaderValue::from_static("application/problem+json"));
    }
    Ok(response)
}

async fn handle_crm_event(state: &AppState, body: &[u8]) -> Result<(StatusCode, Value), ApiError> {
    let event: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))?;
    match event["type"].as_str() {
        Some("customer.created") => {}
        Some(other) => {
            return Err(ApiError::field(
                "/type",
                format!("unsupported event type {other:?}; expected customer.created"),
            ))
        }
        None => return Err(ApiError::field("/type", "is required")),
    }
    let tenant = event.pointer("/data/tenant").ok_or_else(|| ApiError::field("/data/tenant", "is required"))?;
    onboard(state, tenant).await.map_err(|e| match e {
        // Field paths point into the webhook body.
        ApiError::Validation { detail, errors } => ApiError::Validation {
            detail,
            errors: errors.into_iter().map(|f| FieldError { path: format!("/data/tenant{}", f.path), ..f }).collect(),
        },
        other => other,
    })
}
