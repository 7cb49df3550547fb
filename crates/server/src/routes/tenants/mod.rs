//! `/v1/tenants` (lifecycle, users, API keys), `/v1/migrations` and `/v1/webhooks/crm`
//! (docs/api.md, "Tenants", and the inbound half: "Webhooks in"). Every tenant write either starts
//! a built-in tenant saga (provision, deprovision, migrate) in the same transaction as the status
//! change, or is a status change the status machine in `saga_core::tenant` allows.

mod crm;
mod keys;
mod lifecycle;
pub(crate) mod requests;
pub(crate) use requests::{LIST_ITEMS_MAX, METADATA_MAX_BYTES};
mod rollout;
mod users;

pub use crm::crm_webhook;
pub use keys::{keys_create, keys_delete};
pub use lifecycle::{
    cancel_provisioning, create, delete, get, list, onboard, patch, provisioning_status, restore, resume,
    retry_migration, suspend, GRACE_PATTERN,
};
pub use rollout::{migrations, rollout, rollout_progress};
pub use users::{users_create, users_delete, users_list, users_update};

use saga_core::tenant::{is_valid_tenant_id, TenantStatus};
use saga_store::{StoreError, TenantRecord};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::{AppState, Tenancy};

fn tenancy(state: &AppState) -> Result<&Tenancy, ApiError> {
    state.tenancy.as_ref().ok_or_else(|| ApiError::NotFound("tenants are not enabled on this server".into()))
}

/// The tenant lifecycle on this server's store and tenant storage.
fn lifecycle(state: &AppState) -> Result<tenancy::Lifecycle, ApiError> {
    let storage = tenancy(state)?.storage.clone();
    Ok(tenancy::Lifecycle::new(
        state.store.clone(),
        state.store.clone(),
        state.definitions.clone(),
        storage,
        state.clock.clone(),
        state.operator(),
    ))
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
