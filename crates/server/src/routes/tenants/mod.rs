//! `/v1/tenants` (lifecycle, users, API keys), `/v1/migrations` and `/v1/webhooks/crm`
//! (docs/api.md, "Tenants", and the inbound half: "Webhooks in"). Every tenant write either starts
//! a built-in tenant saga (provision, deprovision, migrate) in the same transaction as the status
//! change, or is a status change the status machine in `saga_core::tenant` allows.

mod crm;
mod keys;
mod lifecycle;
mod requests;
pub(crate) use requests::{LIST_ITEMS_MAX, METADATA_MAX_BYTES};
mod rollout;
mod users;

pub use crm::crm_webhook;
pub use keys::{keys_create, keys_delete};
pub use lifecycle::{
    cancel_provisioning, create, delete, get, list, onboard, patch, provisioning_status, resume, retry_migration,
    suspend,
};
pub use rollout::{migrations, rollout, rollout_progress};
pub use users::{users_create, users_delete, users_list, users_update};

use saga_core::tenant::{is_valid_tenant_id, TenantStatus};
use saga_core::SagaState;
use saga_store::{SagaCreate, StoreError, TenantRecord, TenantTransition};
use serde_json::Value;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::routes::common::definition;
use crate::state::{AppState, Tenancy};

fn tenancy(state: &AppState) -> Result<&Tenancy, ApiError> {
    state.tenancy.as_ref().ok_or_else(|| ApiError::NotFound("tenants are not enabled on this server".into()))
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

/// A tenant whose users and keys may change: exists, visible, not deleted.
async fn live_tenant(state: &AppState, principal: &Principal, id: &str) -> Result<TenantRecord, ApiError> {
    let tenant = load_tenant(state, principal, id).await?;
    if matches!(tenant.status, TenantStatus::Deleted | TenantStatus::Deprovisioning) {
        return Err(ApiError::Conflict(format!("tenant is {}", tenant.status.as_str())));
    }
    Ok(tenant)
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
        tenant_id: Some(tenant_id.to_string()),
        concurrency,
        ..SagaCreate::new(name, version, input, SagaState::started(&definition, now_ms), now_ms)
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
    let transition = TenantTransition {
        id: id.to_string(),
        to,
        from,
        error: None,
        saga: Some(saga),
        event: None,
        now_ms: state.clock.now_ms(),
    };
    match state.store.tenant_transition(transition).await? {
        (tenant, Some(saga)) => Ok((tenant, saga)),
        (_, None) => Err(ApiError::Internal("the tenant moved but its saga was not started".into())),
    }
}
