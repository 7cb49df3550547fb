//! Writes that must commit together with a saga transition: the tenant status changes the tenant
//! sagas cause (docs/api.md, "Tenants"). The embedding crate (`tenancy`) decides what a transition
//! means for a tenant; the driver attaches it to the fenced commit, so the status changes in the
//! same transaction as the step that caused it, or not at all.

use saga_core::{Definition, HistoryEvent, SagaState};
use saga_store::{SagaRecord, TenantChange};

/// Derives side writes from a transition about to be committed.
pub trait TransitionHook: Send + Sync + 'static {
    /// `record` is the saga as claimed, `state` the state being committed and `events` its new
    /// history rows.
    fn tenant_change(
        &self,
        record: &SagaRecord,
        definition: &Definition,
        state: &SagaState,
        events: &[HistoryEvent],
    ) -> Option<TenantChange>;
}
