//! JSON shapes of docs/api.md (saga, definition, event, tenant, subscription, delivery) built from
//! store records.

use saga_store::DefinitionRecord;
use serde_json::{json, Value};

pub use saga_store::document::{event, optional_timestamp, saga, timestamp};

pub fn definition(record: &DefinitionRecord) -> Value {
    json!({
        "name": record.name,
        "version": record.version,
        "definition": record.document,
        "created_at": timestamp(record.created_at_ms),
    })
}

/// docs/api.md, "Tenants": `Tenant`.
pub fn tenant(record: &saga_store::TenantRecord) -> Value {
    let migrations: Vec<Value> = record
        .migrations
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            json!({
                "service": m["service"],
                "version": m["version"],
                "applied_at": m["applied_at_ms"].as_i64().map(timestamp).unwrap_or(Value::Null),
            })
        })
        .collect();
    json!({
        "id": record.id,
        "name": record.name,
        "tier": record.tier.as_str(),
        "storage_mode": record.storage_mode.as_str(),
        "sla_tier": record.sla_tier.as_str(),
        "status": record.status.as_str(),
        "domains": record.domains,
        "contacts": record.contacts,
        "metadata": record.metadata,
        "storage": record.storage,
        "migrations": migrations,
        "saga_id": record.saga_id,
        "error": record.error,
        "created_at": timestamp(record.created_at_ms),
        "updated_at": timestamp(record.updated_at_ms),
        "delete_at": record.delete_at_ms.map(timestamp),
    })
}

pub fn tenant_user(record: &saga_store::TenantUserRecord) -> Value {
    json!({
        "id": record.id,
        "tenant_id": record.tenant_id,
        "email": record.email,
        "name": record.name,
        "role": record.role,
        "created_at": timestamp(record.created_at_ms),
        "updated_at": timestamp(record.updated_at_ms),
    })
}

/// What a tenant key is shown of a view: the same, less what belongs to the operator's side —
/// the workers' host names (`lease_owner`, an event's `worker` and `previous_owner`) and where
/// its storage sits on the server (the `location` of a `{backend, location}` storage descriptor:
/// a path or a database name).
pub fn for_tenant(mut view: Value) -> Value {
    strip_operator_fields(&mut view);
    view
}

fn strip_operator_fields(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("lease_owner");
            map.remove("worker");
            map.remove("previous_owner");
            // A storage descriptor `{backend, location}`, wherever it appears (the tenant's
            // `storage`, the storage step's output).
            if map.contains_key("backend") {
                map.remove("location");
            }
            map.values_mut().for_each(strip_operator_fields);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_operator_fields),
        _ => {}
    }
}

/// A subscription as docs/api.md ("Events out") shows it: never its secret.
pub fn subscription(record: &saga_store::SubscriptionRecord) -> Value {
    let (url, nats) = match &record.destination {
        saga_store::Destination::Url(url) => (json!(url), Value::Null),
        saga_store::Destination::Nats { url, subject } => (Value::Null, json!({"url": url, "subject": subject})),
    };
    json!({
        "id": record.id,
        "url": url,
        "nats": nats,
        "events": record.events,
        "tenant_id": record.tenant_id,
        "managed": record.managed,
        "status": record.status.as_str(),
        "rate_limit_per_s": record.rate_limit_per_s,
        "failing_since": record.failing_since_ms.map(timestamp),
        "created_at": timestamp(record.created_at_ms),
        "updated_at": timestamp(record.updated_at_ms),
    })
}

pub fn delivery(record: &saga_store::DeliveryRecord) -> Value {
    json!({
        "id": record.id,
        "event_id": record.event_id,
        "subscription_id": record.subscription_id,
        "event_type": record.event_type,
        "tenant_id": record.tenant_id,
        "status": record.status.as_str(),
        "attempts": record.attempts,
        "next_attempt_at": if record.status == saga_store::DeliveryStatus::Pending {
            timestamp(record.next_attempt_at_ms)
        } else {
            Value::Null
        },
        "last_error": record.last_error,
        "created_at": timestamp(record.created_at_ms),
        "delivered_at": optional_timestamp(record.delivered_at_ms),
    })
}

pub fn delivery_attempt(record: &saga_store::DeliveryAttemptRecord) -> Value {
    json!({
        "n": record.n,
        "at": timestamp(record.at_ms),
        "status_code": record.status_code,
        "error": record.error,
        "duration_ms": record.duration_ms,
    })
}

/// `GET /v1/sagas/{id}/blockers`: `{saga_id, status, runnable, blockers: [{kind, detail, until?,
/// …}]}`.
/// Who reads a blockers view: the operator sees everything; a tenant sees no worker's name, no
/// participant endpoint, and of the sagas holding a concurrency key only its own (the others
/// counted in `other_holders`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Viewer {
    Operator,
    Tenant { other_holders: usize },
}

pub fn blockers(
    record: &saga_store::SagaRecord,
    explained: &saga_runtime::blockers::Blockers,
    viewer: Viewer,
) -> Value {
    let at = |ms: i64| if ms >= saga_store::RUN_AT_NEVER_MS { Value::Null } else { timestamp(ms) };
    let maybe = |ms: Option<i64>| ms.map_or(Value::Null, at);
    let items: Vec<Value> = explained
        .blockers
        .iter()
        .map(|blocker| match viewer {
            Viewer::Operator => blocker_view(blocker, &at, &maybe),
            Viewer::Tenant { other_holders } => tenant_blocker_view(blocker, other_holders, &at, &maybe),
        })
        .collect();
    json!({
        "saga_id": record.id,
        "status": record.status.as_str(),
        "runnable": explained.runnable,
        "blockers": items,
    })
}

/// A blocker as a tenant sees it: what the operator's side names (workers, endpoints, other
/// tenants' sagas) said without the names.
fn tenant_blocker_view(
    blocker: &saga_runtime::blockers::Blocker,
    other_holders: usize,
    at: &dyn Fn(i64) -> Value,
    maybe: &dyn Fn(Option<i64>) -> Value,
) -> Value {
    use saga_runtime::blockers::Blocker;
    let when = |ms: i64| at(ms).as_str().map_or_else(|| "never".to_string(), str::to_string);
    match blocker {
        Blocker::Concurrency { key, limit, holders } => json!({
            "kind": "concurrency", "key": key, "limit": limit, "holders": holders, "other_holders": other_holders,
            "detail": format!("concurrency key {key:?} is at its limit{}: it starts when one of {} running saga(s) ends",
                limit.map_or_else(String::new, |l| format!(" of {l}")), holders.len() + other_holders),
        }),
        Blocker::Breaker { step, until_ms, .. } => json!({
            "kind": "breaker", "step": step, "until": at(*until_ms),
            "detail": format!("a participant's breaker is open: step {} is deferred until {}", step.as_deref().unwrap_or("?"), when(*until_ms)),
        }),
        Blocker::Lease { until_ms, .. } => json!({
            "kind": "lease", "until": at(*until_ms),
            "detail": format!("a worker is running it (lease until {}, renewed while it lives)", when(*until_ms)),
        }),
        Blocker::Queued { queue_depth, oldest_due_at_ms, expired_lease_of } => json!({
            "kind": "queued", "queue_depth": queue_depth, "oldest_due_at": maybe(*oldest_due_at_ms),
            "detail": format!("due now, waiting for a free worker: {queue_depth} saga(s) due{}{}",
                oldest_due_at_ms.map_or_else(String::new, |o| format!(", the oldest since {}", when(o))),
                if expired_lease_of.is_some() { "; a worker's lease on it expired" } else { "" }),
        }),
        other => blocker_view(other, at, maybe),
    }
}

fn blocker_view(
    blocker: &saga_runtime::blockers::Blocker,
    at: &dyn Fn(i64) -> Value,
    maybe: &dyn Fn(Option<i64>) -> Value,
) -> Value {
    use saga_runtime::blockers::Blocker;
    let when = |ms: i64| at(ms).as_str().map_or_else(|| "never".to_string(), str::to_string);
    match blocker {
        Blocker::Backoff { step, attempt, until_ms } => json!({
            "kind": "backoff", "step": step, "attempt": attempt, "until": at(*until_ms),
            "detail": format!("step {} retries (attempt {}) at {}", step.as_deref().unwrap_or("?"),
                attempt.map_or_else(|| "?".to_string(), |a| a.to_string()), when(*until_ms)),
        }),
        Blocker::Signal { step, name, since_ms, until_ms } => json!({
            "kind": "signal", "step": step, "name": name, "since": at(*since_ms), "until": maybe(*until_ms),
            "detail": match until_ms {
                Some(until) => format!("step {step} waits for the signal {name:?} until {}", when(*until)),
                None => format!("step {step} waits for the signal {name:?} (POST /v1/sagas/{{id}}/signals/{name})"),
            },
        }),
        Blocker::Timer { step, since_ms, until_ms } => json!({
            "kind": "timer", "step": step, "since": at(*since_ms), "until": at(*until_ms),
            "detail": format!("step {step} is sleeping until {}", when(*until_ms)),
        }),
        Blocker::Child { step, saga_id, compensating } => json!({
            "kind": "child", "step": step, "saga_id": saga_id,
            "detail": match compensating {
                true => format!("step {step} is being compensated: it waits for its child saga {saga_id} to finish compensating"),
                false => format!("step {step} waits for its child saga {saga_id} to end"),
            },
        }),
        Blocker::Branches { step, total } => json!({
            "kind": "branches", "step": step, "total": total,
            "detail": format!("group {step} waits for its {total} branches (child sagas, each in its history as branch_started) to end"),
        }),
        Blocker::Callback { step, attempt, since_ms, last_heartbeat_ms, until_ms } => json!({
            "kind": "callback", "step": step, "attempt": attempt, "since": at(*since_ms),
            "last_heartbeat": maybe(*last_heartbeat_ms), "until": maybe(*until_ms),
            "detail": format!("step {step} (attempt {attempt}) waits for its participant's callback{}{}",
                last_heartbeat_ms.map_or_else(|| "; no heartbeat yet".to_string(), |h| format!("; last heartbeat {}", when(h))),
                until_ms.map_or_else(String::new, |u| format!("; lost at {}", when(u)))),
        }),
        Blocker::Concurrency { key, limit, holders } => json!({
            "kind": "concurrency", "key": key, "limit": limit, "holders": holders,
            "detail": format!("concurrency key {key:?} is at its limit{}: it starts when one of {} running saga(s) ends",
                limit.map_or_else(String::new, |l| format!(" of {l}")), holders.len()),
        }),
        Blocker::Breaker { step, endpoint, until_ms } => json!({
            "kind": "breaker", "step": step, "endpoint": endpoint, "until": at(*until_ms),
            "detail": format!("the breaker of {endpoint} is open: step {} is deferred until {}", step.as_deref().unwrap_or("?"), when(*until_ms)),
        }),
        Blocker::Lease { worker, until_ms } => json!({
            "kind": "lease", "worker": worker, "until": at(*until_ms),
            "detail": format!("worker {worker} is running it (lease until {}, renewed while it lives)", when(*until_ms)),
        }),
        Blocker::Deadline { until_ms } => json!({
            "kind": "deadline", "until": at(*until_ms),
            "detail": format!("nothing else wakes it before its deadline at {}", when(*until_ms)),
        }),
        Blocker::Scheduled { until_ms } => json!({
            "kind": "scheduled", "until": at(*until_ms),
            "detail": format!("due at {}", when(*until_ms)),
        }),
        Blocker::Queued { queue_depth, oldest_due_at_ms, expired_lease_of } => json!({
            "kind": "queued", "queue_depth": queue_depth, "oldest_due_at": maybe(*oldest_due_at_ms),
            "expired_lease_of": expired_lease_of,
            "detail": format!("due now, waiting for a free worker: {queue_depth} saga(s) due{}{}",
                oldest_due_at_ms.map_or_else(String::new, |o| format!(", the oldest since {}", when(o))),
                expired_lease_of.as_ref().map_or_else(String::new, |w| format!("; the lease of {w} expired"))),
        }),
        Blocker::Operator { message } => json!({
            "kind": "operator",
            "detail": format!("FAILED{}: only POST /v1/sagas/{{id}}/retry moves it", message.as_ref().map_or_else(String::new, |m| format!(" ({m})"))),
        }),
    }
}

/// A bulk job (`GET /v1/jobs/{id}`).
pub fn job(record: &saga_store::JobRecord) -> Value {
    let errors: Vec<Value> = record.errors.iter().map(|e| json!({"id": e.id, "error": e.error})).collect();
    json!({
        "id": record.id,
        "kind": record.kind.as_str(),
        "action": record.action,
        "status": record.status.as_str(),
        "filter": record.filter,
        "arguments": record.arguments,
        "tenant_id": record.tenant_id,
        "matched": record.matched,
        "done": record.done,
        "failed": record.failed,
        "errors": errors,
        "created_at": timestamp(record.created_at_ms),
        "finished_at": optional_timestamp(record.finished_at_ms),
    })
}
