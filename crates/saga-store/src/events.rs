//! Every event Sagaplane reports, built in one place: its type and the shape of its data
//! (docs/api.md, "Events out"). The commit that makes a change writes the event built here with
//! it, so an event is never written for a change that did not happen.
//!
//! | type | data |
//! | --- | --- |
//! | `saga.completed`, `saga.compensated`, `saga.failed` | `{saga_id, definition, version, status, tenant_id, error}` |
//! | `tenant.provisioning`, `.activated`, `.migrated`, `.provision_failed`, `.migration_failed`, `.deleted`, `.suspended`, `.resumed` | `{tenant_id, status, saga_id, error}` |
//! | `subscription.disabled` | `{subscription_id, url, nats, tenant_id, failing_since, reason}` |
//! | a `core.emit` step's type | the step's `data` |

use saga_core::tenant::TenantStatus;
use saga_core::SagaState;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{Destination, OutboxEvent, SagaRecord, SubscriptionRecord};

/// The event of a saga reaching a terminal status, for the history row that records it
/// (`saga_completed`, `saga_compensated`, `saga_failed`); None for any other row.
pub fn saga_ended(record: &SagaRecord, state: &SagaState, history_kind: &str, at_ms: i64) -> Option<OutboxEvent> {
    let event_type = match history_kind {
        "saga_completed" => "saga.completed",
        "saga_compensated" => "saga.compensated",
        "saga_failed" => "saga.failed",
        _ => return None,
    };
    let data = json!({
        "saga_id": record.id,
        "definition": record.definition,
        "version": record.version,
        "status": state.status.as_str(),
        "tenant_id": record.tenant_id,
        "error": state.error,
    });
    Some(OutboxEvent::new(event_type, record.tenant_id.as_deref(), data, at_ms))
}

/// The custom event a succeeded `core.emit` step's output carries (`{type, data, expires_at_ms?}`);
/// None when the output names no type.
pub fn emitted(output: &Value, tenant_id: Option<&str>, at_ms: i64) -> Option<OutboxEvent> {
    let event_type = output.get("type").and_then(Value::as_str)?;
    let data = output.get("data").cloned().unwrap_or(Value::Null);
    let mut event = OutboxEvent::new(event_type, tenant_id, data, at_ms);
    event.expires_at_ms = output.get("expires_at_ms").and_then(Value::as_i64);
    Some(event)
}

/// What happened to a tenant, as its event says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantEvent {
    Provisioning,
    Activated,
    Migrated,
    ProvisionFailed,
    MigrationFailed,
    Deleted,
    Suspended,
    Resumed,
}

impl TenantEvent {
    pub fn event_type(self) -> &'static str {
        match self {
            TenantEvent::Provisioning => "tenant.provisioning",
            TenantEvent::Activated => "tenant.activated",
            TenantEvent::Migrated => "tenant.migrated",
            TenantEvent::ProvisionFailed => "tenant.provision_failed",
            TenantEvent::MigrationFailed => "tenant.migration_failed",
            TenantEvent::Deleted => "tenant.deleted",
            TenantEvent::Suspended => "tenant.suspended",
            TenantEvent::Resumed => "tenant.resumed",
        }
    }

    /// The status the tenant is in after it.
    pub fn status(self) -> TenantStatus {
        match self {
            TenantEvent::Provisioning => TenantStatus::Provisioning,
            TenantEvent::Activated | TenantEvent::Migrated | TenantEvent::Resumed => TenantStatus::Active,
            TenantEvent::ProvisionFailed => TenantStatus::ProvisionError,
            TenantEvent::MigrationFailed => TenantStatus::MigrationError,
            TenantEvent::Deleted => TenantStatus::Deleted,
            TenantEvent::Suspended => TenantStatus::Suspended,
        }
    }

    /// The event of a tenant saga's move to `to`, if that move is reported: a provisioning saga
    /// activates, any other tenant saga migrates.
    pub fn of_saga_move(to: TenantStatus, provisioning: bool) -> Option<Self> {
        match to {
            TenantStatus::Active if provisioning => Some(TenantEvent::Activated),
            TenantStatus::Active => Some(TenantEvent::Migrated),
            TenantStatus::ProvisionError => Some(TenantEvent::ProvisionFailed),
            TenantStatus::MigrationError => Some(TenantEvent::MigrationFailed),
            TenantStatus::Deleted => Some(TenantEvent::Deleted),
            _ => None,
        }
    }

    /// Whether a tenant the CRM onboarded reports it to the CRM (the outcome of onboarding).
    pub fn is_onboarding_outcome(self) -> bool {
        matches!(self, TenantEvent::Activated | TenantEvent::ProvisionFailed | TenantEvent::MigrationFailed)
    }
}

/// A tenant's event: `{tenant_id, status, saga_id, error}` (`saga_id` and `error` null when no
/// saga or no error goes with it).
pub fn tenant(
    kind: TenantEvent,
    tenant_id: &str,
    saga_id: Option<Uuid>,
    error: Option<&Value>,
    at_ms: i64,
) -> OutboxEvent {
    let data = json!({
        "tenant_id": tenant_id,
        "status": kind.status().as_str(),
        "saga_id": saga_id,
        "error": error,
    });
    OutboxEvent::new(kind.event_type(), Some(tenant_id), data, at_ms)
}

/// `subscription.disabled`: every attempt to `subscription` failed for `failed_for` (a duration
/// as text), so it was disabled; reported to the other subscriptions of its scope.
pub fn subscription_disabled(subscription: &SubscriptionRecord, failed_for: &str, at_ms: i64) -> OutboxEvent {
    let (url, nats) = match &subscription.destination {
        Destination::Url(url) => (json!(url), Value::Null),
        Destination::Nats { url, subject } => (Value::Null, json!({"url": url, "subject": subject})),
    };
    let data = json!({
        "subscription_id": subscription.id,
        "url": url,
        "nats": nats,
        "tenant_id": subscription.tenant_id,
        "failing_since": subscription.failing_since_ms.and_then(chrono::DateTime::from_timestamp_millis),
        "reason": format!("every delivery attempt failed for {failed_for}"),
    });
    OutboxEvent::new("subscription.disabled", subscription.tenant_id.as_deref(), data, at_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_event_names_the_status_it_leaves_the_tenant_in() {
        let event = tenant(TenantEvent::Suspended, "acme", None, None, 7);
        assert_eq!(event.event_type, "tenant.suspended");
        assert_eq!(event.tenant_id.as_deref(), Some("acme"));
        assert_eq!(event.data, json!({"tenant_id": "acme", "status": "SUSPENDED", "saga_id": null, "error": null}));
        assert_eq!(TenantEvent::of_saga_move(TenantStatus::Active, true), Some(TenantEvent::Activated));
        assert_eq!(TenantEvent::of_saga_move(TenantStatus::Active, false), Some(TenantEvent::Migrated));
        assert_eq!(TenantEvent::of_saga_move(TenantStatus::Migrating, true), None);
    }

    #[test]
    fn an_emit_output_without_a_type_is_no_event() {
        assert!(emitted(&json!({"data": 1}), None, 0).is_none());
        let event = emitted(&json!({"type": "order.shipped", "data": {"n": 1}, "expires_at_ms": 9}), Some("t"), 5)
            .expect("an event");
        assert_eq!((event.event_type.as_str(), event.expires_at_ms, event.at_ms), ("order.shipped", Some(9), 5));
    }
}
