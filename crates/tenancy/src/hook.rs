//! What the built-in tenant sagas' transitions mean for the tenant's status, committed in the
//! same transaction as the transition (see `saga_runtime::TransitionHook`). Every change is
//! conditional on the statuses [`TenantStatus::sources_of`] allows.
//!
//! | saga | transition | tenant |
//! | --- | --- | --- |
//! | provision | storage step succeeded | `MIGRATING` (storage recorded) |
//! | migrate | (the API sets `MIGRATING` when it starts the saga) | |
//! | provision, migrate | completed | `ACTIVE` (storage, migrations recorded) |
//! | provision | compensated / failed (once compensation is over: storage is gone when it says so)
//! | `PROVISION_ERROR` with the error |
//! | migrate (or provision past storage) | failed in the migrations step | `MIGRATION_ERROR` |
//! | provision, migrate | retried by an operator (forward, storage kept) | `MIGRATING` |
//! | deprovision | its `grace` timer ended (a deletion with a grace period) | `DEPROVISIONING`, from `SUSPENDED` only (a tenant restored meanwhile stays `ACTIVE`) |
//! | deprovision | completed | `DELETED` |

use saga_core::tenant::TenantStatus;
use saga_core::{Action, Definition, FanOut, HistoryEvent, SagaState, SagaStatus, StepStatus};
use saga_runtime::TransitionHook;
use saga_store::events::{self, TenantEvent};
use saga_store::{SagaRecord, TenantChange};
use serde_json::{json, Value};

use crate::definitions::{steps, DEPROVISION, GRACE_STEP, MIGRATE, PROVISION};

/// The tenant status hook.
#[derive(Clone, Copy, Debug, Default)]
pub struct TenantHook;

fn step_with_builtin(definition: &Definition, builtin: &str) -> Option<usize> {
    definition.steps.iter().position(|s| matches!(&s.action, Action::Builtin(b) if b.name == builtin))
}

/// The step that applies the migrations: the per-service group (a `for_each` whose step applies
/// them), or — in versions before it — the one builtin step.
fn migrations_step(definition: &Definition) -> Option<usize> {
    let applies =
        |s: &saga_core::StepDefinition| matches!(&s.action, Action::Builtin(b) if b.name == steps::MIGRATIONS_APPLY);
    definition.steps.iter().position(|s| match &s.action {
        Action::Group(group) => match &group.fan_out {
            FanOut::ForEach { steps, .. } => steps.iter().any(applies),
            FanOut::Parallel(_) => false,
        },
        _ => applies(s),
    })
}

/// `[{service, version, …}]` from the migrations step's output: the one step's `migrations`, or
/// — from the per-service group — every service's, each service's latest (a branch reads back
/// what its storage records, so they overlap).
fn migrations_of(output: &Value) -> Option<Value> {
    let Some(items) = output.get("items").and_then(Value::as_array) else {
        return output.get("migrations").cloned();
    };
    let mut latest: std::collections::BTreeMap<String, Value> = std::collections::BTreeMap::new();
    let recorded = items
        .iter()
        .filter_map(|item| item["output"].as_object())
        .flat_map(|steps| steps.values())
        .filter_map(|step| step["migrations"].as_array())
        .flatten();
    for migration in recorded {
        let Some(service) = migration["service"].as_str() else { continue };
        let newer = latest.get(service).is_none_or(|held| held["version"].as_i64() < migration["version"].as_i64());
        if newer {
            latest.insert(service.to_string(), migration.clone());
        }
    }
    Some(Value::Array(latest.into_values().collect()))
}

fn change(tenant_id: &str, to: TenantStatus, error: Option<Value>) -> TenantChange {
    TenantChange {
        tenant_id: tenant_id.to_string(),
        to,
        from: TenantStatus::sources_of(to),
        error,
        storage: None,
        migrations: None,
        outbox: Vec::new(),
    }
}

fn output_of(state: &SagaState, index: Option<usize>) -> Option<Value> {
    index.and_then(|i| state.steps.get(i)).and_then(|s| s.output.clone())
}

impl TransitionHook for TenantHook {
    fn tenant_change(
        &self,
        record: &SagaRecord,
        definition: &Definition,
        state: &SagaState,
        events: &[HistoryEvent],
    ) -> Option<TenantChange> {
        let tenant_id = record.tenant_id.as_deref()?;
        let name = definition.name.as_str();
        if ![PROVISION, MIGRATE, DEPROVISION].contains(&name) {
            return None;
        }
        let storage_step = step_with_builtin(definition, steps::STORAGE_CREATE);
        let migrations_step = migrations_step(definition);
        let storage = output_of(state, storage_step);
        let migrations = output_of(state, migrations_step).and_then(|o| migrations_of(&o));
        let error = state.error.as_ref().map(|e| json!({"step": e.step, "kind": e.kind, "message": e.message}));
        let at_ms = events.last().map_or(record.updated_at_ms, |e| e.at_ms);
        let change = match (name, state.status) {
            (DEPROVISION, SagaStatus::Completed) => Some(change(tenant_id, TenantStatus::Deleted, None)),
            (DEPROVISION, _)
                if events.iter().any(|e| e.kind == "step_succeeded" && e.step.as_deref() == Some(GRACE_STEP)) =>
            {
                Some(TenantChange {
                    from: vec![TenantStatus::Suspended],
                    ..change(tenant_id, TenantStatus::Deprovisioning, None)
                })
            }
            (DEPROVISION, _) => None,
            (_, SagaStatus::Completed) => {
                Some(TenantChange { storage, migrations, ..change(tenant_id, TenantStatus::Active, None) })
            }
            // While compensating, the tenant keeps its in-progress status (provisioning-status
            // shows `COMPENSATING`): an error status is only shown once the undo is over, so a
            // client that sees `PROVISION_ERROR` can rely on the storage being gone.
            (_, SagaStatus::Compensated | SagaStatus::Failed) => {
                let failed_in_migrations = migrations_step.and_then(|i| state.steps.get(i)).is_some_and(|s| {
                    s.status == StepStatus::Failed
                        && state.error.as_ref().is_some_and(|e| e.step.as_deref() == Some(s.name.as_str()))
                });
                let storage_kept = storage_step.is_none_or(|i| state.steps[i].status == StepStatus::Succeeded);
                let to = if name == MIGRATE
                    || (failed_in_migrations && storage_kept && state.status == SagaStatus::Failed)
                {
                    TenantStatus::MigrationError
                } else {
                    TenantStatus::ProvisionError
                };
                Some(TenantChange { storage, ..change(tenant_id, to, error) })
            }
            (_, SagaStatus::Executing) if events.iter().any(|e| e.kind == "saga_retried") => {
                // An operator's retry of a saga that failed forward (a migration fixed, e.g.):
                // the tenant is migrating again, from the step that failed.
                let storage_kept = storage_step.is_none_or(|i| state.steps[i].status == StepStatus::Succeeded);
                storage_kept.then(|| change(tenant_id, TenantStatus::Migrating, None))
            }
            (_, SagaStatus::Executing) => {
                // Storage is ready and committed: the tenant is migrating from here on (this is
                // committed before the migrations step runs, so the status shows it meanwhile).
                let storage_done = storage_step.is_some_and(|i| {
                    let step = &definition.steps[i].name;
                    events.iter().any(|e| e.kind == "step_succeeded" && e.step.as_deref() == Some(step.as_str()))
                });
                storage_done.then(|| TenantChange { storage, ..change(tenant_id, TenantStatus::Migrating, None) })
            }
            _ => None,
        };
        change.map(|change| reported(change, record, name, at_ms))
    }
}

/// The event a tenant change reports (docs/api.md, "Events out"), written only if the change is
/// applied.
fn reported(mut change: TenantChange, record: &SagaRecord, saga: &str, at_ms: i64) -> TenantChange {
    let Some(kind) = TenantEvent::of_saga_move(change.to, saga == PROVISION) else { return change };
    let event = events::tenant(kind, &change.tenant_id, Some(record.id), change.error.as_ref(), at_ms);
    // A tenant the CRM onboarded tells the CRM how it went (its own delivery, its own event id).
    let from_crm = record.input.get("origin").and_then(Value::as_str) == Some(ORIGIN_CRM);
    if kind.is_onboarding_outcome() && saga == PROVISION && from_crm {
        let mut callback = event.clone().to(CRM_CALLBACK_SUBSCRIPTION_ID);
        callback.id = uuid::Uuid::now_v7();
        change.outbox.push(callback);
    }
    change.outbox.push(event);
    change
}

/// The provision saga's `input.origin` for a tenant onboarded through `/v1/webhooks/crm`.
pub const ORIGIN_CRM: &str = "crm";

/// The subscription that carries CRM outcome callbacks (`SAGAPLANE_CRM_CALLBACK_URL`): made at
/// start, it has no event filters and receives only the events addressed to it.
pub const CRM_CALLBACK_SUBSCRIPTION_ID: uuid::Uuid = uuid::Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0c12);
