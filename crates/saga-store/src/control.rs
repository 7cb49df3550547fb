//! The control plane's store interface: tenants and their lifecycle, tenant users and API keys,
//! and inbound webhook receipts — three small traits by concern, joined in [`ControlStore`].
//! A tenant change that a saga's transition causes travels with the engine's commit instead
//! ([`crate::TenantChange`]), so it is written in the same transaction.

use async_trait::async_trait;
use saga_core::tenant::{SlaTier, StorageMode, TenantStatus, Tier};
use serde_json::Value;
use uuid::Uuid;

use crate::{SagaCreate, SagaRecord, StoreResult};

/// A tenant row.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantRecord {
    pub id: String,
    pub name: String,
    pub tier: Tier,
    pub storage_mode: StorageMode,
    pub sla_tier: SlaTier,
    pub status: TenantStatus,
    pub domains: Value,
    pub contacts: Value,
    pub metadata: Value,
    /// `{backend, location}` once storage exists, else null.
    pub storage: Value,
    /// `[{service, version, applied_at}]`.
    pub migrations: Value,
    /// The saga that last changed it (provision, migrate, deprovision).
    pub saga_id: Option<Uuid>,
    pub error: Option<Value>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Deleted with a grace period: when its storage is destroyed (it is `SUSPENDED` until then,
    /// and may be restored).
    pub delete_at_ms: Option<i64>,
}

/// A tenant status change requested by an operator, optionally starting a saga in the same
/// transaction (delete, migrate); [`StoreError::Conflict`] unless the tenant is in `from`.
#[derive(Clone, Debug)]
pub struct TenantTransition {
    pub id: String,
    pub to: TenantStatus,
    pub from: Vec<TenantStatus>,
    pub error: Option<Value>,
    pub saga: Option<SagaCreate>,
    /// The event reporting the change, written in the same transaction.
    pub event: Option<crate::OutboxEvent>,
    pub now_ms: i64,
    /// The tenant's `delete_at` after the change: set by a deletion with a grace period,
    /// cleared (None) by every other change.
    pub delete_at_ms: Option<i64>,
}

/// Fields a tenant patch changes (None: unchanged): `PATCH /v1/tenants/{id}`'s, and the migrations.
#[derive(Clone, Debug, Default)]
pub struct TenantPatch {
    pub name: Option<String>,
    pub sla_tier: Option<SlaTier>,
    pub domains: Option<Value>,
    pub contacts: Option<Value>,
    pub metadata: Option<Value>,
    /// Migrations applied to the tenant's storage, `[{service, version, applied_at_ms}]`, merged
    /// into what the tenant shows: per service, the higher version stays (not a client field:
    /// each service's migrations step records what stands, whichever finishes first).
    pub migrations: Option<Value>,
}

/// A tenant API key; the token itself is never stored, only its SHA-256.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantKeyRecord {
    pub id: Uuid,
    pub tenant_id: String,
    pub name: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// A tenant's user.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantUserRecord {
    pub id: Uuid,
    pub tenant_id: String,
    pub email: String,
    pub name: String,
    pub role: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Result of [`WebhookStore::webhook_claim`].
#[derive(Clone, Debug, PartialEq)]
pub enum WebhookClaim {
    /// First time: process it, then [`WebhookStore::webhook_complete`].
    New,
    /// Seen before: the first answer (None while the first delivery is still being processed).
    Seen(Option<Value>),
}

/// Filters of [`TenantStore::tenant_list`].
#[derive(Clone, Debug, Default)]
pub struct TenantFilter {
    pub status: Option<TenantStatus>,
    pub tier: Option<Tier>,
    /// Page after this id (ascending ids).
    pub after_id: Option<String>,
    pub limit: u32,
}

/// The most unrevoked API keys one tenant may hold.
pub const TENANT_KEYS_MAX: u32 = 20;

/// How long a webhook (or `Idempotency-Key`) claim whose request never answered — it crashed, or
/// its process died — blocks a redelivery: after this a redelivery takes the claim over.
pub const WEBHOOK_CLAIM_TTL_MS: i64 = 60_000;

/// Tenant records and their operator-driven transitions.
#[async_trait]
pub trait TenantStore: Send + Sync + 'static {
    /// Creates a tenant (status `PROVISIONING`) and its provisioning saga in one transaction;
    /// [`crate::StoreError::Conflict`] when the id exists.
    /// Creates the tenant with its provisioning saga and the event reporting it, in one transaction.
    async fn tenant_create(
        &self,
        tenant: TenantRecord,
        saga: SagaCreate,
        event: Option<crate::OutboxEvent>,
    ) -> StoreResult<(TenantRecord, SagaRecord)>;
    async fn tenant_get(&self, id: &str) -> StoreResult<TenantRecord>;
    async fn tenant_list(&self, filter: &TenantFilter) -> StoreResult<Vec<TenantRecord>>;
    /// A conditional status change (and maybe a saga) by an operator.
    async fn tenant_transition(&self, transition: TenantTransition) -> StoreResult<(TenantRecord, Option<SagaRecord>)>;
    async fn tenant_patch(&self, id: &str, patch: &TenantPatch, now_ms: i64) -> StoreResult<TenantRecord>;
}

/// Who may act for a tenant: its API keys and its users.
#[async_trait]
pub trait TenantAccessStore: Send + Sync + 'static {
    /// Stores a key under the SHA-256 of its token; [`crate::StoreError::Conflict`] when the
    /// tenant already has [`TENANT_KEYS_MAX`] unrevoked keys (checked and written atomically).
    async fn tenant_key_create(&self, key: &TenantKeyRecord, token_hash: &str) -> StoreResult<()>;
    /// The unrevoked key with this token hash.
    async fn tenant_key_by_hash(&self, token_hash: &str) -> StoreResult<Option<TenantKeyRecord>>;
    /// [`crate::StoreError::NotFound`] unless the tenant has this key unrevoked.
    async fn tenant_key_revoke(&self, tenant_id: &str, key_id: Uuid, now_ms: i64) -> StoreResult<()>;
    /// Revokes every key of the tenant; returns how many.
    async fn tenant_keys_revoke_all(&self, tenant_id: &str, now_ms: i64) -> StoreResult<u64>;

    /// [`crate::StoreError::Conflict`] when the tenant has a user with this email.
    async fn tenant_user_create(&self, user: &TenantUserRecord) -> StoreResult<()>;
    async fn tenant_user_list(&self, tenant_id: &str) -> StoreResult<Vec<TenantUserRecord>>;
    /// One user of the tenant.
    async fn tenant_user_get(&self, tenant_id: &str, user_id: Uuid) -> StoreResult<Option<TenantUserRecord>>;
    /// Replaces email, name and role; NotFound / Conflict (email taken).
    async fn tenant_user_update(&self, user: &TenantUserRecord) -> StoreResult<()>;
    async fn tenant_user_delete(&self, tenant_id: &str, user_id: Uuid) -> StoreResult<()>;
}

/// Inbound webhook ids, remembered so a redelivery gets the first answer.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Records an inbound webhook id, or reports it seen with its first answer. A claim with no
    /// answer older than [`WEBHOOK_CLAIM_TTL_MS`] is taken over (New again).
    async fn webhook_claim(&self, source: &str, webhook_id: &str, now_ms: i64) -> StoreResult<WebhookClaim>;
    /// The answer replays of this webhook id get.
    async fn webhook_complete(&self, source: &str, webhook_id: &str, response: &Value) -> StoreResult<()>;
    /// Forgets a claim whose processing failed, so a redelivery is processed afresh.
    async fn webhook_release(&self, source: &str, webhook_id: &str) -> StoreResult<()>;
}

/// Everything the tenant control plane persists beside the engine.
pub trait ControlStore: TenantStore + TenantAccessStore + WebhookStore {}

impl<T: TenantStore + TenantAccessStore + WebhookStore + ?Sized> ControlStore for T {}
