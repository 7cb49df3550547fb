//! Outbound delivery (docs/api.md, "Events out"): subscriptions (the secret shown at creation and
//! rotation only) and their deliveries, replay of a dead one and recovery of a subscription's dead
//! ones. A tenant key creates and sees only its own tenant's subscriptions, and their deliveries.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use saga_core::FieldError;
use saga_store::{
    DeliveryFilter, DeliveryStatus, Destination, StoreError, SubscriptionFilter, SubscriptionPatch, SubscriptionRecord,
    SubscriptionStatus,
};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::routes::common::{page, page_of, parse_body, query_error, query_limit};
use crate::state::AppState;
use crate::views;

/// The event types Sagaplane itself emits; other types are custom (`core.emit`).
pub const EVENT_TYPES: &[&str] = &[
    "tenant.provisioning",
    "tenant.activated",
    "tenant.provision_failed",
    "tenant.migration_failed",
    "tenant.migrated",
    "tenant.suspended",
    "tenant.resumed",
    "tenant.deleted",
    "saga.completed",
    "saga.compensated",
    "saga.failed",
    "subscription.disabled",
];

/// Event filters a subscription may hold.
pub const SUBSCRIPTION_EVENTS_MAX: usize = 100;
/// The longest subscription URL.
pub const SUBSCRIPTION_URL_MAX: usize = 2_048;
/// How long a rotated-out secret keeps signing.
pub const SECRET_OVERLAP_MS: i64 = 24 * 3600 * 1000;

fn add(errors: &mut Vec<FieldError>, path: &str, message: impl Into<String>) {
    errors.push(FieldError { path: path.into(), message: message.into() });
}

/// Why `event` cannot be subscribed to, if it cannot.
fn event_filter_error(event: &str) -> Option<String> {
    if event == "*" || EVENT_TYPES.contains(&event) {
        return None;
    }
    if event.starts_with("tenant.") || event.starts_with("saga.") || event.starts_with("subscription.") {
        return Some(format!("unknown event type {event:?}; Sagaplane's own are {}", EVENT_TYPES.join(", ")));
    }
    saga_runtime::executor::builtin::custom_event_type_error(event)
}

fn events_field(value: Option<&Value>, errors: &mut Vec<FieldError>) -> Option<Vec<String>> {
    let Some(Value::Array(items)) = value else {
        add(errors, "/events", "must be a non-empty array of event types (\"*\" for every event)");
        return None;
    };
    if items.is_empty() || items.len() > SUBSCRIPTION_EVENTS_MAX {
        add(errors, "/events", format!("must hold 1 to {SUBSCRIPTION_EVENTS_MAX} event types"));
        return None;
    }
    let mut events = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(event) => match event_filter_error(event) {
                Some(message) => add(errors, &format!("/events/{i}"), message),
                None => events.push(event.to_string()),
            },
            None => add(errors, &format!("/events/{i}"), "must be a string"),
        }
    }
    Some(events)
}

fn url_field(value: &Value, errors: &mut Vec<FieldError>) -> Option<String> {
    let Some(text) = value.as_str() else {
        add(errors, "/url", "must be a string");
        return None;
    };
    let parsed = reqwest::Url::parse(text).ok().filter(|u| ["http", "https"].contains(&u.scheme()) && u.has_host());
    if parsed.is_none() || text.len() > SUBSCRIPTION_URL_MAX {
        add(errors, "/url", format!("must be an http(s) URL of at most {SUBSCRIPTION_URL_MAX} characters"));
        return None;
    }
    Some(text.to_string())
}

/// The longest NATS subject.
pub const NATS_SUBJECT_MAX: usize = 255;

/// `{url: "nats://host:port", subject}`: a JetStream stream must listen on the subject.
fn nats_field(value: &Value, errors: &mut Vec<FieldError>) -> Option<Destination> {
    let Some(map) = value.as_object() else {
        add(errors, "/nats", "must be an object {url, subject}");
        return None;
    };
    for key in map.keys().filter(|key| !["url", "subject"].contains(&key.as_str())) {
        add(errors, &format!("/nats/{key}"), "unknown field; expected url and subject");
    }
    let url = map.get("url").and_then(Value::as_str).filter(|url| url.len() <= SUBSCRIPTION_URL_MAX);
    let url = match url.filter(|url| delivery::nats::host_and_port(url).is_some()) {
        Some(url) => Some(url.to_string()),
        None => {
            add(errors, "/nats/url", "must be a NATS server URL: nats://host:port (or tls://host:port)");
            None
        }
    };
    let subject = map.get("subject").and_then(Value::as_str).filter(|subject| is_publish_subject(subject));
    let subject = match subject {
        Some(subject) => Some(subject.to_string()),
        None => {
            add(
                errors,
                "/nats/subject",
                format!(
                    "must be a NATS subject of at most {NATS_SUBJECT_MAX} characters: dot-separated tokens, \
                     no spaces, no wildcards (* or >)"
                ),
            );
            None
        }
    };
    Some(Destination::Nats { url: url?, subject: subject? })
}

/// A subject one can publish to: non-empty tokens, no whitespace or wildcards.
fn is_publish_subject(subject: &str) -> bool {
    subject.len() <= NATS_SUBJECT_MAX
        && subject.split('.').all(|token| {
            !token.is_empty() && !token.chars().any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>')
        })
}

fn rate_limit_field(value: Option<&Value>, errors: &mut Vec<FieldError>) -> Option<Option<u32>> {
    match value {
        None => None,
        Some(Value::Null) => Some(None),
        Some(v) => match crate::routes::common::json_integer(v).filter(|n| (1..=10_000).contains(n)) {
            Some(n) => Some(Some(n as u32)),
            None => {
                add(errors, "/rate_limit_per_s", "must be an integer from 1 to 10000, or null");
                None
            }
        },
    }
}

fn object(body: &Value, shape: &str) -> Result<Map<String, Value>, ApiError> {
    body.as_object().cloned().ok_or_else(|| ApiError::field("", format!("the body must be a JSON object {shape}")))
}

/// `POST /v1/subscriptions` → 201 with the secret, the only time it is shown.
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = parse_body(body)?;
    let map = object(&body, "{url | nats, events, rate_limit_per_s?}")?;
    let mut errors = Vec::new();
    for key in map.keys() {
        if !["url", "nats", "events", "rate_limit_per_s", "tenant_id", "secret"].contains(&key.as_str()) {
            add(&mut errors, &format!("/{key}"), "unknown field; expected url or nats, events, rate_limit_per_s");
        }
    }
    if map.contains_key("secret") {
        add(&mut errors, "/secret", "the secret is made by Sagaplane and shown in the answer; do not send one");
    }
    let destination = match (map.get("url"), map.get("nats")) {
        (Some(url), None) => url_field(url, &mut errors).map(Destination::Url),
        (None, Some(nats)) => nats_field(nats, &mut errors),
        (Some(_), Some(_)) => {
            add(&mut errors, "", "give exactly one destination: url or nats, not both");
            None
        }
        (None, None) => {
            add(&mut errors, "", "a destination is required: url (an http(s) URL) or nats");
            None
        }
    };
    let events = events_field(map.get("events"), &mut errors);
    let rate_limit = rate_limit_field(map.get("rate_limit_per_s"), &mut errors).flatten();
    let tenant_id = match (principal.tenant_scope(), map.get("tenant_id")) {
        (Some(scope), None) => Some(scope.to_string()),
        (Some(scope), Some(Value::String(t))) if t == scope => Some(scope.to_string()),
        (Some(_), Some(_)) => {
            add(&mut errors, "/tenant_id", "a tenant key creates subscriptions of its own tenant only");
            None
        }
        (None, None | Some(Value::Null)) => None,
        (None, Some(Value::String(t))) if saga_core::tenant::is_valid_tenant_id(t) => Some(t.clone()),
        (None, Some(_)) => {
            add(&mut errors, "/tenant_id", "must be a tenant id");
            None
        }
    };
    // The operator's subscription for a tenant is the operator's to change (`managed`).
    let managed = principal.tenant_scope().is_none() && tenant_id.is_some();
    if let (Some(Destination::Nats { subject, .. }), true) = (&destination, errors.is_empty()) {
        let tenant = tenant_id.as_deref().filter(|_| !managed);
        if let Some(refusal) =
            delivery::nats::subject_refusal(subject, tenant, &state.subscription_rules.nats_tenant_prefix)
        {
            add(&mut errors, "/nats/subject", refusal);
        }
    }
    let (Some(destination), Some(events), true) = (destination, events, errors.is_empty()) else {
        return Err(ApiError::validation("the subscription is invalid", errors));
    };
    let now_ms = state.clock.now_ms();
    let subscription = SubscriptionRecord {
        id: Uuid::now_v7(),
        destination,
        events,
        tenant_id,
        managed,
        status: SubscriptionStatus::Active,
        rate_limit_per_s: rate_limit,
        secret: delivery::new_secret(),
        previous_secret: None,
        previous_secret_until_ms: None,
        failing_since_ms: None,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
    };
    state.store.subscription_create_capped(&subscription, state.subscription_rules.tenant_max).await?;
    let mut view = views::subscription(&subscription);
    view["secret"] = json!(subscription.secret);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// A subscription `principal` may see, else 404.
async fn visible(state: &AppState, principal: &Principal, id: &str) -> Result<SubscriptionRecord, ApiError> {
    let missing = || ApiError::NotFound(format!("subscription {id:?} does not exist"));
    let id = Uuid::parse_str(id).map_err(|_| missing())?;
    let subscription = match state.store.subscription_get(id).await {
        Ok(subscription) => subscription,
        Err(StoreError::NotFound) => return Err(missing()),
        Err(e) => return Err(e.into()),
    };
    match principal.tenant_scope() {
        Some(scope) if subscription.tenant_id.as_deref() != Some(scope) => Err(missing()),
        _ => Ok(subscription),
    }
}

/// A subscription `principal` may change: a tenant may not change one the operator made for it
/// (its secret rotated by the tenant would let the tenant sign as the operator).
async fn changeable(state: &AppState, principal: &Principal, id: &str) -> Result<SubscriptionRecord, ApiError> {
    let subscription = visible(state, principal, id).await?;
    if principal.tenant_scope().is_some() && subscription.managed {
        return Err(ApiError::Forbidden(
            "the operator made this subscription for your tenant; only the operator changes it".into(),
        ));
    }
    Ok(subscription)
}

fn cursor(query: &HashMap<String, String>) -> Result<Option<Uuid>, ApiError> {
    match query.get("cursor") {
        None => Ok(None),
        Some(c) => Uuid::parse_str(c).map(Some).map_err(|_| query_error("cursor is not one this API returned")),
    }
}

fn known_parameters(query: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match query.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(query_error(format!("unknown parameter {key:?}"))),
        None => Ok(()),
    }
}

pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    known_parameters(&query, &["limit", "cursor"])?;
    let limit = saga_store::clamp_limit(query_limit(query.get("limit"))?);
    let filter = SubscriptionFilter {
        tenant_id: principal.tenant_scope().map(str::to_string),
        before_id: cursor(&query)?,
        limit,
    };
    let found = state.store.subscription_list(&filter).await?;
    Ok(page_of(&found, limit, views::subscription, |s| s.id.to_string()))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(views::subscription(&visible(&state, &principal, &id).await?)))
}

pub async fn patch(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let subscription = changeable(&state, &principal, &id).await?;
    let body = parse_body(body)?;
    let map = object(&body, "{events?, status?, rate_limit_per_s?}")?;
    let mut errors = Vec::new();
    for key in map.keys() {
        if !["events", "status", "rate_limit_per_s"].contains(&key.as_str()) {
            add(&mut errors, &format!("/{key}"), "unknown field; expected events, status, rate_limit_per_s");
        }
    }
    let events = map.contains_key("events").then(|| events_field(map.get("events"), &mut errors)).flatten();
    let status = match map.get("status") {
        None => None,
        Some(v) => match v.as_str().and_then(SubscriptionStatus::parse) {
            Some(status) => Some(status),
            None => {
                add(&mut errors, "/status", "must be active or disabled");
                None
            }
        },
    };
    let rate_limit_per_s = rate_limit_field(map.get("rate_limit_per_s"), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation("the change is invalid", errors));
    }
    let patch = SubscriptionPatch { events, status, rate_limit_per_s };
    let updated = state.store.subscription_patch(subscription.id, &patch, state.clock.now_ms()).await?;
    Ok(Json(views::subscription(&updated)))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let subscription = changeable(&state, &principal, &id).await?;
    match state.store.subscription_delete(subscription.id, state.clock.now_ms()).await {
        Ok(()) | Err(StoreError::NotFound) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) => Err(e.into()),
    }
}

/// `POST /v1/subscriptions/{id}/rotate-secret` → the new secret; the old one signs too for 24 h.
pub async fn rotate_secret(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let subscription = changeable(&state, &principal, &id).await?;
    let now_ms = state.clock.now_ms();
    let secret = delivery::new_secret();
    let rotated = state
        .store
        .subscription_rotate_secret(subscription.id, &secret, now_ms.saturating_add(SECRET_OVERLAP_MS), now_ms)
        .await?;
    let previous_until = views::timestamp(rotated.previous_secret_until_ms.unwrap_or(now_ms));
    Ok(Json(json!({"secret": secret, "previous_secret_valid_until": previous_until})))
}

/// Dead deliveries one recover call puts back at most.
pub const RECOVER_MAX: u32 = 1_000;

/// `POST /v1/subscriptions/{id}/recover` `{since, limit?}` → 202 `{replayed, more}`: at most
/// `limit` (≤ [`RECOVER_MAX`]) dead deliveries, oldest first; `more` says to call again.
pub async fn recover(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let subscription = changeable(&state, &principal, &id).await?;
    let body = parse_body(body)?;
    let map = object(&body, "{since, limit?}")?;
    if let Some(key) = map.keys().find(|key| !["since", "limit"].contains(&key.as_str())) {
        return Err(ApiError::field(&format!("/{key}"), "unknown field; expected since and limit"));
    }
    let limit = match map.get("limit") {
        None => RECOVER_MAX,
        Some(v) => match crate::routes::common::json_integer(v).filter(|n| (1..=i64::from(RECOVER_MAX)).contains(n)) {
            Some(n) => n as u32,
            None => return Err(ApiError::field("/limit", format!("must be an integer from 1 to {RECOVER_MAX}"))),
        },
    };
    let since = map
        .get("since")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis());
    let Some(since) = since else {
        return Err(ApiError::field("/since", "must be an RFC 3339 time, e.g. 2026-12-01T00:00:00Z"));
    };
    let (replayed, more) = state.store.deliveries_recover(subscription.id, since, limit, state.clock.now_ms()).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"replayed": replayed, "more": more}))).into_response())
}

pub async fn deliveries(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    known_parameters(&query, &["status", "subscription_id", "limit", "cursor"])?;
    let status = match query.get("status") {
        None => None,
        Some(s) => Some(
            DeliveryStatus::parse(s)
                .ok_or_else(|| query_error(format!("unknown status {s:?}; expected pending, succeeded or dead")))?,
        ),
    };
    let limit = saga_store::clamp_limit(query_limit(query.get("limit"))?);
    let before_id = cursor(&query)?;
    let subscription_id = match query.get("subscription_id") {
        None => None,
        Some(id) if Uuid::parse_str(id).is_err() => return Err(query_error("subscription_id is not a UUID")),
        Some(id) => match visible(&state, &principal, id).await {
            Ok(subscription) => Some(subscription.id),
            // No such subscription (or not this tenant's): it has no deliveries.
            Err(ApiError::NotFound(_)) => return Ok(page(Vec::new(), None)),
            Err(e) => return Err(e),
        },
    };
    let filter = DeliveryFilter {
        status,
        subscription_id,
        subscription_tenant_id: principal.tenant_scope().map(str::to_string),
        before_id,
        limit,
    };
    let found = state.store.delivery_list(&filter).await?;
    Ok(page_of(&found, limit, views::delivery, |d| d.id.to_string()))
}

/// A delivery `principal` may see (its subscription is visible), else 404.
async fn visible_delivery(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<(saga_store::DeliveryRecord, Vec<saga_store::DeliveryAttemptRecord>), ApiError> {
    let missing = || ApiError::NotFound(format!("delivery {id:?} does not exist"));
    let parsed = Uuid::parse_str(id).map_err(|_| missing())?;
    let (delivery, attempts) = match state.store.delivery_get(parsed).await {
        Ok(found) => found,
        Err(StoreError::NotFound) => return Err(missing()),
        Err(e) => return Err(e.into()),
    };
    if principal.tenant_scope().is_some() {
        visible(state, principal, &delivery.subscription_id.to_string()).await.map_err(|_| missing())?;
    }
    Ok((delivery, attempts))
}

pub async fn delivery(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (delivery, attempts) = visible_delivery(&state, &principal, &id).await?;
    let mut view = views::delivery(&delivery);
    view["attempts"] = json!(attempts.iter().map(views::delivery_attempt).collect::<Vec<_>>());
    view["attempts_made"] = json!(delivery.attempts);
    Ok(Json(view))
}

/// `POST /v1/deliveries/{id}/replay` → 202: a dead delivery goes out again (same webhook-id).
pub async fn replay(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (delivery, _) = visible_delivery(&state, &principal, &id).await?;
    let replayed = state.store.delivery_replay(delivery.id, state.clock.now_ms()).await?;
    Ok((StatusCode::ACCEPTED, Json(views::delivery(&replayed))).into_response())
}
