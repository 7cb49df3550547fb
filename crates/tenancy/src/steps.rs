//! The tenant builtins the built-in sagas are made of. Each works on the saga's `tenant_id`,
//! is idempotent (a re-run after a crash succeeds and creates nothing twice), and reports a
//! definite failure for what retrying cannot fix (an unsupported mode, a failing or edited
//! migration) and a retryable one when the database was unavailable. The rollout's fan-out
//! works on no tenant: it starts the `tenant.migrate` sagas of a fleet.

use std::sync::Arc;

use saga_core::tenant::{StorageMode, TenantStatus};
use saga_core::{Definition, FailureKind, Outcome, SagaState};
use saga_runtime::executor::AttemptContext;
use saga_runtime::{BuiltinRegistry, Clock};
use saga_store::tenant_storage::{AppliedMigration, TenantStorage, TenantStorageError};
use saga_store::{
    ControlStore, DefinitionStore, SagaCreate, StoreError, TenantFilter, TenantPatch, TenantRecord, TenantTransition,
};
use serde_json::{json, Value};

use crate::definitions::{steps, MIGRATE};
use crate::migrations::MigrationSource;

/// What the tenant steps work with: the tenant records and keys, and the stored definitions
/// (a rollout starts the latest `tenant.migrate`), not the whole store.
pub struct TenantSteps {
    pub tenants: Arc<dyn ControlStore>,
    pub definitions: Arc<dyn DefinitionStore>,
    pub storage: Arc<dyn TenantStorage>,
    pub migrations: MigrationSource,
    pub clock: Arc<dyn Clock>,
}

fn definite(message: impl Into<String>) -> Outcome {
    Outcome::Failed { kind: FailureKind::NonRetryable, message: message.into() }
}

fn retryable(message: impl Into<String>) -> Outcome {
    Outcome::Failed { kind: FailureKind::Retryable, message: message.into() }
}

fn storage_failure(e: TenantStorageError) -> Outcome {
    if e.is_retryable() {
        retryable(e.to_string())
    } else {
        definite(e.to_string())
    }
}

/// `[{service, version, applied_at}]`: the latest applied version per service.
pub fn latest_per_service(applied: &[AppliedMigration]) -> Value {
    let mut latest: std::collections::BTreeMap<&str, &AppliedMigration> = std::collections::BTreeMap::new();
    for migration in applied {
        let entry = latest.entry(migration.service.as_str()).or_insert(migration);
        if migration.version > entry.version {
            *entry = migration;
        }
    }
    Value::Array(
        latest
            .values()
            .map(|m| json!({"service": m.service, "version": m.version, "applied_at_ms": m.applied_at_ms}))
            .collect(),
    )
}

impl TenantSteps {
    async fn tenant(&self, ctx: &AttemptContext) -> Result<TenantRecord, Outcome> {
        let Some(id) = ctx.tenant_id.as_deref() else {
            return Err(definite("a tenant step needs a saga with a tenant_id"));
        };
        match self.tenants.tenant_get(id).await {
            Ok(tenant) => Ok(tenant),
            Err(StoreError::NotFound) => Err(definite(format!("tenant {id:?} does not exist"))),
            Err(e) => Err(retryable(format!("reading tenant {id:?}: {e}"))),
        }
    }

    async fn record(&self, ctx: AttemptContext) -> Outcome {
        match self.tenant(&ctx).await {
            Ok(tenant) => Outcome::Succeeded(json!({
                "tenant_id": tenant.id,
                "tier": tenant.tier.as_str(),
                "storage_mode": tenant.storage_mode.as_str(),
            })),
            Err(outcome) => outcome,
        }
    }

    async fn storage_create(&self, ctx: AttemptContext) -> Outcome {
        let tenant = match self.tenant(&ctx).await {
            Ok(tenant) => tenant,
            Err(outcome) => return outcome,
        };
        match self.storage.storage_create(&tenant.id, tenant.storage_mode).await {
            Ok(location) => Outcome::Succeeded(location),
            Err(e) => storage_failure(e),
        }
    }

    async fn storage_drop(&self, ctx: AttemptContext) -> Outcome {
        let tenant = match self.tenant(&ctx).await {
            Ok(tenant) => tenant,
            Err(outcome) => return outcome,
        };
        // Offboarding drops the storage only of a tenant being deleted: one restored as its grace
        // ended (the restore won the race with the timer) keeps it, and the saga compensates.
        // (Undoing a provisioning drops it whatever the status.)
        if ctx.phase == saga_core::Phase::Action && tenant.status != TenantStatus::Deprovisioning {
            return definite(format!("tenant is {}, not being deleted: its storage stays", tenant.status.as_str()));
        }
        match self.storage.storage_drop(&tenant.id, tenant.storage_mode).await {
            Ok(()) => Outcome::Succeeded(json!({"dropped": true})),
            Err(e) => storage_failure(e),
        }
    }

    async fn migrations_apply(&self, input: Value, ctx: AttemptContext) -> Outcome {
        let tenant = match self.tenant(&ctx).await {
            Ok(tenant) => tenant,
            Err(outcome) => return outcome,
        };
        let service = input.get("service").and_then(Value::as_str);
        // Read each time: a fixed file is picked up by retry-migration without a restart.
        let migrations = match self.migrations.migrations(service) {
            Ok(migrations) => migrations,
            Err(e) => return definite(e.to_string()),
        };
        if let Some(service) = service {
            if migrations.is_empty() {
                return definite(format!("there is no tenant migration service {service:?}"));
            }
        }
        let now_ms = self.clock.now_ms();
        match self.storage.migrations_apply(&tenant.id, tenant.storage_mode, &migrations, now_ms).await {
            Ok(applied) => {
                // Shown at once, while other services' branches still run (merged, per service).
                let latest = latest_per_service(&applied);
                let patch = TenantPatch { migrations: Some(latest.clone()), ..TenantPatch::default() };
                if let Err(e) = self.tenants.tenant_patch(&tenant.id, &patch, now_ms).await {
                    tracing::warn!(tenant_id = %tenant.id, error = %e, "recording the applied migrations");
                }
                Outcome::Succeeded(json!({ "migrations": latest }))
            }
            Err(e) => {
                if matches!(e, TenantStorageError::MigrationFailed { .. }) {
                    self.record_what_stands(&tenant.id, tenant.storage_mode, now_ms).await;
                }
                storage_failure(e)
            }
        }
    }

    /// The services a tenant saga migrates, one branch each: `input.service` alone (it must
    /// exist), or every service of the migrations directory (none without one).
    fn migration_services(&self, input: Value) -> Outcome {
        let sets = match self.migrations.load() {
            Ok(sets) => sets,
            Err(e) => return definite(e.to_string()),
        };
        let mut services: Vec<String> = sets.into_iter().map(|set| set.service).collect();
        if let Some(service) = input.get("service").and_then(Value::as_str) {
            if !services.iter().any(|s| s == service) {
                return definite(format!("there is no tenant migration service {service:?}"));
            }
            services = vec![service.to_string()];
        }
        Outcome::Succeeded(json!({ "services": services }))
    }

    /// After a failed migration, the tenant record shows the migrations that stand in its
    /// storage (those before the failed one), read back from the storage itself: applying no
    /// migration returns every one recorded. Best effort: the failure is reported either way.
    async fn record_what_stands(&self, tenant_id: &str, mode: StorageMode, now_ms: i64) {
        let applied = match self.storage.migrations_apply(tenant_id, mode, &[], now_ms).await {
            Ok(applied) => applied,
            Err(e) => {
                tracing::warn!(tenant_id, error = %e, "reading back the applied migrations after a failure");
                return;
            }
        };
        let patch = TenantPatch { migrations: Some(latest_per_service(&applied)), ..TenantPatch::default() };
        if let Err(e) = self.tenants.tenant_patch(tenant_id, &patch, now_ms).await {
            tracing::warn!(tenant_id, error = %e, "recording the applied migrations after a failure");
        }
    }

    async fn access_set(&self, ctx: AttemptContext, enabled: bool) -> Outcome {
        let tenant = match self.tenant(&ctx).await {
            Ok(tenant) => tenant,
            Err(outcome) => return outcome,
        };
        match self.storage.access_set(&tenant.id, tenant.storage_mode, enabled).await {
            Ok(()) => Outcome::Succeeded(json!({"access": if enabled { "enabled" } else { "disabled" }})),
            Err(e) => storage_failure(e),
        }
    }

    /// Registers every tenant builtin.
    pub fn register(self: Arc<Self>, registry: &mut BuiltinRegistry) {
        add(registry, steps::RECORD, &self, |this, _, ctx| async move { this.record(ctx).await });
        add(registry, steps::STORAGE_CREATE, &self, |this, _, ctx| async move { this.storage_create(ctx).await });
        add(registry, steps::STORAGE_DROP, &self, |this, _, ctx| async move { this.storage_drop(ctx).await });
        add(registry, steps::MIGRATIONS_APPLY, &self, |this, input, ctx| async move {
            this.migrations_apply(input, ctx).await
        });
        add(registry, steps::MIGRATION_SERVICES, &self, |this, input, _| async move { this.migration_services(input) });
        add(registry, steps::ACCESS_SUSPEND, &self, |this, _, ctx| async move { this.access_set(ctx, false).await });
        add(registry, steps::ACCESS_RESUME, &self, |this, _, ctx| async move { this.access_set(ctx, true).await });
        add(registry, steps::KEYS_REVOKE, &self, |this, _, ctx| async move { this.keys_revoke(ctx).await });
        add(registry, steps::ROLLOUT_FAN_OUT, &self, |this, input, ctx| async move {
            this.rollout_fan_out(input, ctx).await
        });
        // The status changes of these two are the hook's (committed with the step).
        add(registry, steps::ACTIVATE, &self, |_, _, _| async move { Outcome::Succeeded(json!({"status": "ACTIVE"})) });
        add(registry, steps::FINALIZE_DELETE, &self, |_, _, _| async move {
            Outcome::Succeeded(json!({"status": "DELETED"}))
        });
    }

    async fn keys_revoke(&self, ctx: AttemptContext) -> Outcome {
        let Some(id) = ctx.tenant_id.as_deref() else {
            return definite("a tenant step needs a saga with a tenant_id");
        };
        match self.tenants.tenant_keys_revoke_all(id, self.clock.now_ms()).await {
            Ok(revoked) => Outcome::Succeeded(json!({"revoked": revoked})),
            Err(e) => retryable(format!("revoking keys: {e}")),
        }
    }
}

/// Registers one step that runs `step` with the shared [`TenantSteps`].
fn add<F, Fut>(registry: &mut BuiltinRegistry, name: &str, this: &Arc<TenantSteps>, step: F)
where
    F: Fn(Arc<TenantSteps>, Value, AttemptContext) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let this = this.clone();
    registry.register(name, Arc::new(move |input, ctx| Box::pin(step(this.clone(), input, ctx))));
}

/// The tenants one rollout starts sagas for, at most.
pub const ROLLOUT_TENANTS_MAX: u64 = 100_000;

impl TenantSteps {
    /// A rollout's fan-out: one `tenant.migrate` saga per ACTIVE tenant behind, each started
    /// with its move to `MIGRATING` in one transaction, all under the rollout's concurrency key
    /// (`rollout:<rollout saga id>`). Idempotent: a tenant already moved is no longer ACTIVE.
    async fn rollout_fan_out(&self, input: Value, ctx: AttemptContext) -> Outcome {
        let service = input.get("service").and_then(Value::as_str);
        let Some(concurrency) = input.get("concurrency").and_then(Value::as_u64).and_then(|c| u32::try_from(c).ok())
        else {
            return definite("a rollout needs a concurrency from 1 to 1000");
        };
        let sets = match self.migrations.load() {
            Ok(sets) => {
                sets.into_iter().filter(|set| service.is_none_or(|name| name == set.service)).collect::<Vec<_>>()
            }
            Err(e) => return definite(e.to_string()),
        };
        let (version, definition) = match self.migrate_definition().await {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        let key = format!("rollout:{}", ctx.saga_id);
        let (mut started, mut moved_meanwhile) = (0u64, 0u64);
        let mut after_id = None;
        loop {
            let filter = TenantFilter {
                status: Some(TenantStatus::Active),
                tier: None,
                after_id: after_id.clone(),
                limit: saga_store::LIST_LIMIT_MAX,
            };
            let page = match self.tenants.tenant_list(&filter).await {
                Ok(page) => page,
                Err(e) => return retryable(format!("listing tenants: {e}")),
            };
            let Some(last) = page.last() else { break };
            after_id = Some(last.id.clone());
            for tenant in page.iter().filter(|t| crate::migrations::is_behind(&t.migrations, &sets)) {
                if started >= ROLLOUT_TENANTS_MAX {
                    break;
                }
                let now_ms = self.clock.now_ms();
                let saga = SagaCreate {
                    tenant_id: Some(tenant.id.clone()),
                    concurrency: Some((key.clone(), concurrency)),
                    ..SagaCreate::new(
                        MIGRATE,
                        version,
                        json!({"tenant_id": tenant.id, "service": service, "rollout_id": ctx.saga_id}),
                        SagaState::started(&definition, now_ms),
                        now_ms,
                    )
                };
                let transition = TenantTransition {
                    id: tenant.id.clone(),
                    to: TenantStatus::Migrating,
                    from: vec![TenantStatus::Active],
                    error: None,
                    saga: Some(saga),
                    event: None,
                    now_ms,
                    delete_at_ms: None,
                };
                match self.tenants.tenant_transition(transition).await {
                    Ok(_) => started += 1,
                    // It stopped being ACTIVE meanwhile: not part of this rollout.
                    Err(StoreError::Conflict(_)) => moved_meanwhile += 1,
                    Err(e) => return retryable(format!("starting the migration of tenant {}: {e}", tenant.id)),
                }
            }
            if page.len() < saga_store::LIST_LIMIT_MAX as usize || started >= ROLLOUT_TENANTS_MAX {
                break;
            }
        }
        Outcome::Succeeded(json!({"started": started, "moved_meanwhile": moved_meanwhile}))
    }

    /// The latest `tenant.migrate`, validated.
    async fn migrate_definition(&self) -> Result<(i32, Definition), Outcome> {
        let record = match self.definitions.definition_get(MIGRATE, None).await {
            Ok(record) => record,
            Err(e) => return Err(retryable(format!("reading {MIGRATE}: {e}"))),
        };
        let mut builtins: Vec<&str> = steps::ALL.to_vec();
        let core = BuiltinRegistry::with_core();
        builtins.extend(core.names());
        match saga_core::validate_definition(MIGRATE, &record.document, &builtins) {
            Ok(definition) => Ok((record.version, definition)),
            Err(errors) => Err(definite(format!("the stored {MIGRATE} is invalid: {errors:?}"))),
        }
    }
}
