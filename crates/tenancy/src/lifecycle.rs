//! The tenant lifecycle: onboarding, offboarding, cancelling a provisioning, retrying a failed
//! migration, suspending and resuming, and which storage mode a new tenant gets. Each is a
//! status transition of the tenant with, where it takes one, the built-in saga that carries it
//! out — written in one transaction, with the event that reports it. The HTTP routes (and the
//! CRM webhook, and `sagaplane dev`'s demo tenant) parse, authorize and call these.

use std::sync::Arc;

use saga_core::tenant::{SlaTier, StorageMode, TenantStatus, Tier};
use saga_core::{SagaState, SagaStatus};
use saga_runtime::{Clock, DefinitionCache, DefinitionError, Operator, OperatorError};
use saga_store::events::{self, TenantEvent};
use saga_store::tenant_storage::{TenantStorage, TenantStorageError};
use saga_store::{ControlStore, EngineStore, SagaCreate, SagaRecord, StoreError, TenantRecord, TenantTransition};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::definitions::{DEPROVISION, MIGRATE, PROVISION};

/// Why a lifecycle step was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The tenant (or its saga) is not in a state that allows it, or the id is taken.
    #[error("{0}")]
    Conflict(String),
    /// The tenant's storage could not be reached.
    #[error("tenant storage: {0}")]
    Storage(#[from] TenantStorageError),
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    #[error(transparent)]
    Operator(#[from] OperatorError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A tenant to onboard, its fields validated.
#[derive(Clone, Debug)]
pub struct NewTenant {
    pub id: String,
    pub name: String,
    pub tier: Tier,
    pub storage_mode: StorageMode,
    pub sla_tier: SlaTier,
    pub domains: Value,
    pub contacts: Value,
    pub metadata: Value,
}

/// The lifecycle of the tenants of one control plane.
pub struct Lifecycle {
    tenants: Arc<dyn ControlStore>,
    sagas: Arc<dyn EngineStore>,
    definitions: Arc<DefinitionCache>,
    storage: Arc<dyn TenantStorage>,
    clock: Arc<dyn Clock>,
    operator: Operator,
}

impl Lifecycle {
    pub fn new(
        tenants: Arc<dyn ControlStore>,
        sagas: Arc<dyn EngineStore>,
        definitions: Arc<DefinitionCache>,
        storage: Arc<dyn TenantStorage>,
        clock: Arc<dyn Clock>,
        operator: Operator,
    ) -> Self {
        Lifecycle { tenants, sagas, definitions, storage, clock, operator }
    }

    /// The storage modes this control plane's tenant storage offers.
    pub fn offered_modes(&self) -> Vec<StorageMode> {
        StorageMode::ALL.iter().copied().filter(|mode| self.storage.supports(*mode)).collect()
    }

    /// The storage mode a new tenant of `tier` gets when it asks for `asked`: what it asked for if
    /// the storage offers it, else its tier's among those offered. The error says why not.
    pub fn storage_mode(&self, tier: Tier, asked: Option<StorageMode>) -> Result<StorageMode, String> {
        let offered = self.offered_modes();
        let backend = self.storage.backend_name();
        match asked {
            Some(mode) if offered.contains(&mode) => Ok(mode),
            Some(mode) => {
                let list = offered.iter().map(|mode| mode.as_str()).collect::<Vec<_>>().join(", ");
                let hint = if offered.contains(&StorageMode::Schema) {
                    ""
                } else {
                    " (set SAGAPLANE_TENANT_DATABASE_URL to a PostgreSQL server for schema and pooled)"
                };
                Err(format!(
                    "storage mode {} is not offered by the {backend} tenant storage, which offers: {list}{hint}",
                    mode.as_str()
                ))
            }
            None => tier
                .storage_mode_among(&offered)
                .ok_or_else(|| format!("the {backend} tenant storage offers no storage mode")),
        }
    }

    /// Creates the tenant `PROVISIONING` with its `tenant.provision` saga and the
    /// `tenant.provisioning` event, in one transaction. `origin` (e.g. the CRM) goes into the
    /// saga's input, which the operator's own steps may render (`{{ input.tier }}`).
    pub async fn onboard(
        &self,
        tenant: NewTenant,
        origin: Option<&str>,
    ) -> Result<(TenantRecord, SagaRecord), LifecycleError> {
        let now_ms = self.clock.now_ms();
        let mut input = json!({
            "tenant_id": tenant.id,
            "tier": tenant.tier.as_str(),
            "storage_mode": tenant.storage_mode.as_str(),
            "sla_tier": tenant.sla_tier.as_str(),
        });
        if let Some(origin) = origin {
            input["origin"] = json!(origin);
        }
        let saga = self.saga(PROVISION, &tenant.id, input, None).await?;
        let event = events::tenant(TenantEvent::Provisioning, &tenant.id, Some(saga.id), None, now_ms);
        let id = tenant.id.clone();
        let record = TenantRecord {
            id: tenant.id,
            name: tenant.name,
            tier: tenant.tier,
            storage_mode: tenant.storage_mode,
            sla_tier: tenant.sla_tier,
            status: TenantStatus::Provisioning,
            domains: tenant.domains,
            contacts: tenant.contacts,
            metadata: tenant.metadata,
            storage: Value::Null,
            migrations: json!([]),
            saga_id: None,
            error: None,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            delete_at_ms: None,
        };
        match self.tenants.tenant_create(record, saga, Some(event)).await {
            Err(StoreError::Conflict(_)) => Err(LifecycleError::Conflict(format!("tenant {id:?} already exists"))),
            other => Ok(other?),
        }
    }

    /// Starts offboarding with its `tenant.deprovision` saga. With a grace period (`grace_ms` >
    /// 0) an `ACTIVE` or `SUSPENDED` tenant is `SUSPENDED` at once with `delete_at` set: the
    /// saga's durable timer destroys its storage when the grace ends, and [`Self::restore`]
    /// brings it back before then. Without one, or for a tenant in any other status,
    /// `DEPROVISIONING` at once. Refused while the tenant's provisioning or migration saga still
    /// runs, and while a deletion with a grace period is already under way.
    pub async fn offboard(&self, tenant: &TenantRecord, grace_ms: u64) -> Result<SagaRecord, LifecycleError> {
        if let Some(delete_at_ms) = tenant.delete_at_ms.filter(|_| tenant.status == TenantStatus::Suspended) {
            return Err(LifecycleError::Conflict(format!(
                "tenant is already being deleted: its storage goes at {}; restore it first (POST \
                 /v1/tenants/{}/restore) to delete it otherwise",
                saga_core::duration::format_instant_ms(delete_at_ms),
                tenant.id
            )));
        }
        if matches!(tenant.status, TenantStatus::Provisioning | TenantStatus::Migrating) {
            if let Some(saga) = self.saga_of(tenant).await? {
                if !saga.status.is_terminal() {
                    return Err(LifecycleError::Conflict(format!(
                        "tenant is {}; cancel its provisioning (or wait for it) before deleting",
                        tenant.status.as_str()
                    )));
                }
            }
        }
        let graced = grace_ms > 0 && matches!(tenant.status, TenantStatus::Active | TenantStatus::Suspended);
        if !graced {
            let to = (TenantStatus::Deprovisioning, TenantStatus::sources_of(TenantStatus::Deprovisioning));
            let input = json!({"tenant_id": tenant.id});
            let (_, saga) = self.start_saga(&tenant.id, to, DEPROVISION, input, None).await?;
            return Ok(saga);
        }
        let now_ms = self.clock.now_ms();
        let delete_at_ms = now_ms.saturating_add(saga_core::duration::signed_ms(grace_ms));
        let delete_at = saga_core::duration::format_instant_ms(delete_at_ms);
        let input = json!({"tenant_id": tenant.id, "delete_at": delete_at});
        let saga = self.saga(DEPROVISION, &tenant.id, input, None).await?;
        let suspended = (tenant.status == TenantStatus::Active)
            .then(|| events::tenant(TenantEvent::Suspended, &tenant.id, Some(saga.id), None, now_ms));
        let transition = TenantTransition {
            id: tenant.id.clone(),
            to: TenantStatus::Suspended,
            from: vec![TenantStatus::Active, TenantStatus::Suspended],
            error: None,
            saga: Some(saga),
            event: suspended,
            now_ms,
            delete_at_ms: Some(delete_at_ms),
        };
        Ok(self.move_with_saga(transition).await?.1)
    }

    /// Brings back a tenant deleted with a grace period, before the grace ends: `ACTIVE`, its
    /// access enabled, its deprovision saga cancelled (it compensates its suspension). Refused
    /// (a conflict) for any other tenant, and once the grace has ended (the saga's timer moved
    /// the tenant to `DEPROVISIONING` in the same transaction, so exactly one of the two wins).
    pub async fn restore(&self, tenant: &TenantRecord) -> Result<TenantRecord, LifecycleError> {
        if tenant.status != TenantStatus::Suspended || tenant.delete_at_ms.is_none() {
            return Err(LifecycleError::Conflict(format!(
                "tenant is {}{}; only a tenant deleted with a grace period can be restored, before the grace ends",
                tenant.status.as_str(),
                if tenant.status == TenantStatus::Suspended { " without a deletion under way" } else { "" }
            )));
        }
        let now_ms = self.clock.now_ms();
        let transition = TenantTransition {
            id: tenant.id.clone(),
            to: TenantStatus::Active,
            from: vec![TenantStatus::Suspended],
            error: None,
            saga: None,
            event: Some(events::tenant(TenantEvent::Resumed, &tenant.id, tenant.saga_id, None, now_ms)),
            now_ms,
            delete_at_ms: None,
        };
        let restored = match self.tenants.tenant_transition(transition).await {
            Ok((restored, _)) => restored,
            Err(StoreError::Conflict(_)) => {
                let now = self.tenants.tenant_get(&tenant.id).await?;
                return Err(LifecycleError::Conflict(format!(
                    "tenant is {}: the grace ended and its deletion has begun",
                    now.status.as_str()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(saga) = self.saga_of(tenant).await?.filter(|s| s.definition == DEPROVISION) {
            if !saga.status.is_terminal() {
                match self.sagas.saga_cancel_request(saga.id, now_ms, None).await {
                    Ok(_) | Err(StoreError::Conflict(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.storage.access_set(&restored.id, restored.storage_mode, true).await?;
        Ok(restored)
    }

    /// Asks the tenant's running provisioning saga to undo what it made.
    pub async fn cancel_provisioning(&self, tenant: &TenantRecord) -> Result<SagaRecord, LifecycleError> {
        let Some(saga) = self.saga_of(tenant).await? else {
            return Err(LifecycleError::Conflict("tenant has no provisioning saga".into()));
        };
        let provisioning = matches!(tenant.status, TenantStatus::Provisioning | TenantStatus::Migrating);
        if !provisioning || saga.definition != PROVISION || saga.status.is_terminal() {
            return Err(LifecycleError::Conflict(format!(
                "tenant is {}; it is not provisioning",
                tenant.status.as_str()
            )));
        }
        if saga.status == SagaStatus::Compensating {
            return Err(LifecycleError::Conflict("its provisioning is already being undone".into()));
        }
        Ok(self.sagas.saga_cancel_request(saga.id, self.clock.now_ms(), None).await?)
    }

    /// Retries a `MIGRATION_ERROR` tenant's migration. The saga that failed in its migrations step
    /// (onboarding or a rollout) failed forward and waits for an operator: retrying it resumes
    /// from the failed migration, so its history tells the whole story. A tenant whose failed saga
    /// cannot be resumed gets a new `tenant.migrate` saga. Returns the tenant and the saga's id.
    pub async fn retry_migration(&self, tenant: &TenantRecord) -> Result<(TenantRecord, Uuid), LifecycleError> {
        if tenant.status != TenantStatus::MigrationError {
            return Err(LifecycleError::Conflict(format!(
                "tenant is {}; only a tenant in MIGRATION_ERROR can retry its migration",
                tenant.status.as_str()
            )));
        }
        let failed = self.saga_of(tenant).await?.filter(|saga| saga.status == SagaStatus::Failed);
        match failed {
            Some(saga) => {
                let retried = self.operator.retry(&saga, None).await?;
                Ok((self.tenants.tenant_get(&tenant.id).await?, retried.id))
            }
            None => {
                let to = (TenantStatus::Migrating, vec![TenantStatus::MigrationError]);
                let input = json!({"tenant_id": tenant.id});
                let (tenant, saga) = self.start_saga(&tenant.id, to, MIGRATE, input, None).await?;
                Ok((tenant, saga.id))
            }
        }
    }

    /// Suspends (`to` = `SUSPENDED`) or resumes (`ACTIVE`) a tenant: the database side first — a
    /// suspended tenant's role cannot log in any more — then the status, with its event.
    pub async fn set_access(&self, tenant: &TenantRecord, to: TenantStatus) -> Result<TenantRecord, LifecycleError> {
        if let Some(delete_at_ms) = tenant.delete_at_ms.filter(|_| tenant.status == TenantStatus::Suspended) {
            return Err(LifecycleError::Conflict(format!(
                "tenant is being deleted (its storage goes at {}); restore it with POST /v1/tenants/{}/restore",
                saga_core::duration::format_instant_ms(delete_at_ms),
                tenant.id
            )));
        }
        if !tenant.status.may_become(to) {
            return Err(LifecycleError::Conflict(format!(
                "tenant is {}; it cannot become {}",
                tenant.status.as_str(),
                to.as_str()
            )));
        }
        let enabled = to == TenantStatus::Active;
        self.storage.access_set(&tenant.id, tenant.storage_mode, enabled).await?;
        let now_ms = self.clock.now_ms();
        let kind = if enabled { TenantEvent::Resumed } else { TenantEvent::Suspended };
        let transition = TenantTransition {
            id: tenant.id.clone(),
            to,
            from: vec![tenant.status],
            error: None,
            saga: None,
            event: Some(events::tenant(kind, &tenant.id, None, None, now_ms)),
            now_ms,
            delete_at_ms: None,
        };
        let (updated, _) = self.tenants.tenant_transition(transition).await?;
        Ok(updated)
    }

    /// Moves tenant `id` to `to` (only from `from`) and starts the built-in saga `definition` for
    /// it in the same transaction; a conflict when the tenant is in another status.
    pub async fn start_saga(
        &self,
        id: &str,
        (to, from): (TenantStatus, Vec<TenantStatus>),
        definition: &str,
        input: Value,
        concurrency: Option<(String, u32)>,
    ) -> Result<(TenantRecord, SagaRecord), LifecycleError> {
        let saga = self.saga(definition, id, input, concurrency).await?;
        let transition = TenantTransition {
            id: id.to_string(),
            to,
            from,
            error: None,
            saga: Some(saga),
            event: None,
            now_ms: self.clock.now_ms(),
            delete_at_ms: None,
        };
        self.move_with_saga(transition).await
    }

    /// A tenant transition that starts its saga in the same transaction.
    async fn move_with_saga(&self, transition: TenantTransition) -> Result<(TenantRecord, SagaRecord), LifecycleError> {
        match self.tenants.tenant_transition(transition).await? {
            (tenant, Some(saga)) => Ok((tenant, saga)),
            (_, None) => {
                Err(LifecycleError::Store(StoreError::Corrupt("the tenant moved but its saga was not started".into())))
            }
        }
    }

    /// A saga of the built-in tenant definition `name` (its latest version) for `tenant_id`.
    async fn saga(
        &self,
        name: &str,
        tenant_id: &str,
        input: Value,
        concurrency: Option<(String, u32)>,
    ) -> Result<SagaCreate, LifecycleError> {
        let (version, definition) = self.definitions.get(name, None).await?;
        let now_ms = self.clock.now_ms();
        Ok(SagaCreate {
            tenant_id: Some(tenant_id.to_string()),
            concurrency,
            ..SagaCreate::new(name, version, input, SagaState::started(&definition, now_ms), now_ms)
        })
    }

    /// The tenant's latest lifecycle saga, if it has one still kept (a finished one is deleted
    /// once `SAGAPLANE_RETENTION` has passed: then, as with none, a retry starts a new saga).
    async fn saga_of(&self, tenant: &TenantRecord) -> Result<Option<SagaRecord>, StoreError> {
        let Some(id) = tenant.saga_id else {
            return Ok(None);
        };
        match self.sagas.saga_get(id).await {
            Ok(saga) => Ok(Some(saga)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
