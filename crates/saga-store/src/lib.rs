//! The Store trait: everything the engine and the API persist, behind one interface that the
//! PostgreSQL and SQLite crates implement. Also the conformance suite ([`conformance`]) that
//! every backend must pass.
//!
//! Design note. Time is always a parameter (`now_ms`), never read here. A driver's writes are
//! conditional on `(id, fencing_token)`: [`Store::saga_claim_due`] bumps the token, so a paused
//! or partitioned zombie's writes come back [`CommitOutcome::Fenced`]. While a saga is leased its
//! `run_at_ms` equals the lease expiry, so "due" (`run_at_ms <= now`) covers both scheduled work
//! and expired leases with one index.

use std::sync::Arc;

use async_trait::async_trait;
use saga_core::tenant::{SlaTier, StorageMode, TenantStatus, Tier};
use saga_core::{HistoryEvent, SagaState, SagaStatus};
use serde_json::Value;
use uuid::Uuid;

pub mod conformance;
pub mod tenant_storage;

/// Limits named once.
pub const LIST_LIMIT_DEFAULT: u32 = 50;
pub const LIST_LIMIT_MAX: u32 = 500;
pub const CLAIM_BATCH_MAX: u32 = 256;
pub const COMMIT_BATCH_MAX: usize = 512;
/// A run_at for sagas parked with no deadline: far enough never to be due.
pub const RUN_AT_NEVER_MS: i64 = 253_402_300_799_000; // 9999-12-31
/// One priority point is worth this much waiting: a saga's place in the claim order is
/// `run_at - priority * PRIORITY_STEP_MS`, so higher priorities go first and old work of a
/// lower priority still gets its turn (no starvation).
pub const PRIORITY_STEP_MS: i64 = 1_000;
/// Priorities lie in `-PRIORITY_MAX..=PRIORITY_MAX` (the API refuses others). Stores rely on the
/// bound: a due saga's place is at most `now + PRIORITY_MAX * PRIORITY_STEP_MS`, so a claim can
/// bound its index scan there and never walk the sagas parked far in the future (waiting on a
/// signal or a callback with no deadline) — with a million of those, an unbounded idle claim
/// read the whole table (226 ms; 0.13 ms bounded).
pub const PRIORITY_MAX: i64 = 1_000;
/// The latest place in the claim order a due saga can have at `now_ms`.
pub fn claim_horizon_ms(now_ms: i64) -> i64 {
    now_ms.saturating_add(PRIORITY_MAX * PRIORITY_STEP_MS)
}
/// Signal names in `POST /v1/sagas/{id}/signals/{name}`.
pub const SIGNAL_NAME_MAX: usize = 100;

/// Errors at the store boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn backend(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Backend(Box::new(error))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One stored version of a definition.
#[derive(Clone, Debug, PartialEq)]
pub struct DefinitionRecord {
    pub name: String,
    pub version: i32,
    /// The parsed document (JSON tree), as written.
    pub document: Value,
    pub created_at_ms: i64,
}

/// Result of [`Store::definition_put`].
#[derive(Clone, Debug, PartialEq)]
pub struct DefinitionPut {
    pub record: DefinitionRecord,
    /// False when the document equals the latest version (nothing stored).
    pub created: bool,
}

/// A saga row.
#[derive(Clone, Debug, PartialEq)]
pub struct SagaRecord {
    pub id: Uuid,
    pub definition: String,
    pub version: i32,
    pub tenant_id: Option<String>,
    pub status: SagaStatus,
    pub input: Value,
    pub state: SagaState,
    pub priority: i32,
    pub run_at_ms: i64,
    pub lease_owner: Option<String>,
    pub lease_expires_at_ms: Option<i64>,
    pub fencing_token: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub completed_at_ms: Option<i64>,
    /// Set by [`Store::saga_cancel_request`]; a driver acts on it at its next commit.
    pub cancel_requested_at_ms: Option<i64>,
    /// Bumped by every delivery (signal, callback, cancel) so a driver parking the saga can
    /// tell that something arrived while it was deciding to wait.
    pub wake_seq: i64,
    /// The rendered `concurrency.key`, if the definition has one.
    pub concurrency_key: Option<String>,
}

/// Parameters of [`Store::saga_create`].
#[derive(Clone, Debug)]
pub struct SagaCreate {
    pub id: Uuid,
    pub definition: String,
    pub version: i32,
    pub tenant_id: Option<String>,
    pub input: Value,
    pub state: SagaState,
    pub priority: i32,
    /// `Idempotency-Key`, namespaced by the caller.
    pub idempotency_key: Option<String>,
    /// Hash of the request body, compared on replay.
    pub request_hash: Option<String>,
    /// Create only while `version` is still the definition's latest (the caller meant "latest"
    /// and picked the version from a cache); otherwise [`SagaCreated::VersionMoved`].
    pub require_latest: bool,
    /// Create the saga already leased to this worker (fencing token 1), for an instance that
    /// will drive it at once; None leaves it due for any instance to claim.
    pub lease: Option<LeaseGrant>,
    /// `(rendered key, limit)`: the saga waits `PENDING` until fewer than `limit` sagas with the
    /// same key are running. Such a saga is never created leased.
    pub concurrency: Option<(String, u32)>,
    pub now_ms: i64,
}

/// A lease granted at creation.
#[derive(Clone, Debug)]
pub struct LeaseGrant {
    pub worker_id: String,
    pub lease_ttl_ms: i64,
}

/// Result of [`Store::saga_create`].
#[derive(Clone, Debug, PartialEq)]
pub enum SagaCreated {
    Created(SagaRecord),
    /// Same key, same body: the original saga.
    Replayed(SagaRecord),
    /// Same key, different body.
    KeyConflict,
    /// `require_latest` was set and a newer version exists; nothing was created.
    VersionMoved,
}

/// Parameters of [`Store::saga_claim_due`].
#[derive(Clone, Debug)]
pub struct ClaimParams {
    pub worker_id: String,
    pub limit: u32,
    pub now_ms: i64,
    pub lease_ttl_ms: i64,
}

/// A saga this worker now drives.
#[derive(Clone, Debug, PartialEq)]
pub struct Claimed {
    pub record: SagaRecord,
    /// Who held the lease before (None if it was released or never held).
    pub previous_owner: Option<String>,
}

/// A driver's transition: new state and its history, conditional on the fencing token.
#[derive(Clone, Debug)]
pub struct SagaCommit {
    pub id: Uuid,
    pub tenant_id: Option<String>,
    pub fencing_token: i64,
    pub state: SagaState,
    /// When the saga is next due. With `release_lease` the lease ends and the saga waits until
    /// then; without it the lease is kept (and this is ignored).
    pub run_at_ms: i64,
    pub release_lease: bool,
    pub events: Vec<HistoryEvent>,
    pub worker_id: String,
    /// The saga's `wake_seq` as the driver last saw it: when a release finds it moved (a
    /// signal or callback arrived meanwhile), the saga is due at once instead of at `run_at_ms`.
    pub wake_seq_seen: i64,
    /// A tenant status change this transition causes, written in the same transaction (and only
    /// if the transition itself is).
    pub tenant_change: Option<TenantChange>,
    pub now_ms: i64,
}

/// A tenant status change, conditional on the tenant being in one of `from`.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantChange {
    pub tenant_id: String,
    pub to: TenantStatus,
    pub from: Vec<TenantStatus>,
    /// Replaces the tenant's `error` (None clears it).
    pub error: Option<Value>,
    /// When set, replaces the tenant's `storage`.
    pub storage: Option<Value>,
    /// When set, replaces the tenant's `migrations`.
    pub migrations: Option<Value>,
}

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
    pub now_ms: i64,
}

/// Fields `PATCH /v1/tenants/{id}` may change (None: unchanged).
#[derive(Clone, Debug, Default)]
pub struct TenantPatch {
    pub name: Option<String>,
    pub sla_tier: Option<SlaTier>,
    pub domains: Option<Value>,
    pub contacts: Option<Value>,
    pub metadata: Option<Value>,
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

/// Result of [`Store::webhook_claim`].
#[derive(Clone, Debug, PartialEq)]
pub enum WebhookClaim {
    /// First time: process it, then [`Store::webhook_complete`].
    New,
    /// Seen before: the first answer (None while the first delivery is still being processed).
    Seen(Option<Value>),
}

/// Filters of [`Store::tenant_list`].
#[derive(Clone, Debug, Default)]
pub struct TenantFilter {
    pub status: Option<TenantStatus>,
    pub tier: Option<Tier>,
    /// Page after this id (ascending ids).
    pub after_id: Option<String>,
    pub limit: u32,
}

/// Outcome of one commit in a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    /// The token moved on: another driver owns the saga. Nothing was written.
    Fenced,
    /// A cancel was requested that the committed state has not acted on yet (its
    /// `cancel_requested_at_ms` is None). Nothing was written; the driver still holds the lease.
    CancelRequested {
        at_ms: i64,
    },
}

/// A buffered signal.
#[derive(Clone, Debug, PartialEq)]
pub struct SignalRecord {
    pub id: i64,
    pub name: String,
    pub payload: Value,
    pub received_at_ms: i64,
}

/// Parameters of [`Store::callback_register`].
#[derive(Clone, Debug)]
pub struct CallbackRegister {
    /// SHA-256 (hex) of the token; the token itself is never stored.
    pub token_hash: String,
    pub saga_id: Uuid,
    pub tenant_id: Option<String>,
    pub step: String,
    pub attempt: u32,
    pub heartbeat_timeout_ms: Option<i64>,
    pub now_ms: i64,
}

/// A callback as the driver sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct CallbackRecord {
    /// The participant's `{status, output | error, retryable}` once it called back.
    pub result: Option<Value>,
    /// When the step counts as lost unless a heartbeat moves it (None: no heartbeat timeout).
    pub deadline_at_ms: Option<i64>,
}

/// An operator's change to a saga no driver holds (retry).
#[derive(Clone, Debug)]
pub struct SagaOperatorUpdate {
    pub id: Uuid,
    pub tenant_id: Option<String>,
    /// The write applies only while the saga still has this status.
    pub expected_status: SagaStatus,
    pub state: SagaState,
    pub events: Vec<HistoryEvent>,
    /// A tenant status change the update causes (an operator retry of a tenant saga), written in
    /// the same transaction; when the tenant is not in one of its `from` statuses, nothing is
    /// written and the update fails with [`StoreError::Conflict`].
    pub tenant_change: Option<TenantChange>,
    pub now_ms: i64,
}

/// Filters of [`Store::saga_list`].
#[derive(Clone, Debug, Default)]
pub struct SagaFilter {
    pub status: Option<SagaStatus>,
    pub definition: Option<String>,
    pub tenant_id: Option<String>,
    /// Sagas sharing this concurrency key (e.g. one migration rollout).
    pub concurrency_key: Option<String>,
    /// Page after this id (ids are UUIDv7, listed newest first).
    pub before_id: Option<Uuid>,
    pub limit: u32,
}

/// One stored history entry.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRecord {
    pub seq: i64,
    pub kind: String,
    pub step: Option<String>,
    pub attempt: Option<u32>,
    pub worker: Option<String>,
    pub data: Value,
    pub at_ms: i64,
}

/// A lease this worker holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseRef {
    pub id: Uuid,
    pub fencing_token: i64,
}

/// Where the schema stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchemaStatus {
    pub applied: i64,
    pub latest: i64,
}

impl SchemaStatus {
    pub fn is_current(&self) -> bool {
        self.applied == self.latest
    }
}

/// Wakes idle workers when new work may be due.
pub type WorkSignal = Arc<tokio::sync::Notify>;

/// Everything Sagaplane persists.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which backend this is (`postgres`, `sqlite`).
    fn backend_name(&self) -> &'static str;

    /// Applies pending migrations, recording `now_ms` as their time.
    async fn migrate(&self, now_ms: i64) -> StoreResult<SchemaStatus>;
    /// Reports the schema version without changing anything.
    async fn schema_status(&self) -> StoreResult<SchemaStatus>;

    /// Stores a new version unless the document equals the latest one.
    async fn definition_put(&self, name: &str, document: &Value, now_ms: i64) -> StoreResult<DefinitionPut>;
    /// The given version, or the latest when `version` is None.
    async fn definition_get(&self, name: &str, version: Option<i32>) -> StoreResult<DefinitionRecord>;
    /// The latest version of every definition, by name.
    async fn definition_list(&self) -> StoreResult<Vec<DefinitionRecord>>;

    /// Creates a saga (and its `saga_created` event), or replays the one made with the same key.
    async fn saga_create(&self, params: SagaCreate) -> StoreResult<SagaCreated>;
    async fn saga_get(&self, id: Uuid) -> StoreResult<SagaRecord>;
    async fn saga_list(&self, filter: &SagaFilter) -> StoreResult<Vec<SagaRecord>>;
    async fn saga_events(&self, id: Uuid, after_seq: i64, limit: u32) -> StoreResult<Vec<EventRecord>>;

    /// Claims up to `limit` due sagas in one statement: sets the lease, bumps the fencing token.
    async fn saga_claim_due(&self, params: &ClaimParams) -> StoreResult<Vec<Claimed>>;
    /// Commits many drivers' transitions in one transaction; each is fenced on its own.
    async fn saga_commit_batch(&self, commits: &[SagaCommit]) -> StoreResult<Vec<CommitOutcome>>;
    /// Renews every lease in one statement; returns the ones this worker no longer holds.
    async fn lease_renew(
        &self,
        worker_id: &str,
        leases: &[LeaseRef],
        now_ms: i64,
        lease_ttl_ms: i64,
    ) -> StoreResult<Vec<Uuid>>;
    /// Hands leases back so another instance can claim the sagas at once.
    async fn lease_release(&self, worker_id: &str, leases: &[LeaseRef], now_ms: i64) -> StoreResult<()>;
    /// An operator's change to an unleased saga, applied only while its status is as expected.
    async fn saga_operator_update(&self, update: SagaOperatorUpdate) -> StoreResult<SagaRecord>;

    /// Records a cancel request on a saga that is not terminal and makes it due if no driver
    /// holds it. [`StoreError::NotFound`]; [`StoreError::Conflict`] when terminal.
    async fn saga_cancel_request(&self, id: Uuid, now_ms: i64) -> StoreResult<SagaRecord>;

    /// Buffers a signal durably and wakes the saga. [`StoreError::Conflict`] when terminal.
    async fn signal_send(&self, id: Uuid, name: &str, payload: &Value, now_ms: i64) -> StoreResult<SignalRecord>;
    /// The oldest signal called `name` for the saga whose id is not in `consumed`.
    async fn signal_find(&self, id: Uuid, name: &str, consumed: &[i64]) -> StoreResult<Option<SignalRecord>>;

    /// Records a callback token before its request is sent.
    async fn callback_register(&self, params: CallbackRegister) -> StoreResult<()>;
    /// Stores the participant's result once and wakes the saga; [`StoreError::NotFound`] when
    /// the token is unknown or already used. Returns the saga id.
    async fn callback_complete(&self, token_hash: &str, result: &Value, now_ms: i64) -> StoreResult<Uuid>;
    /// Moves an open callback's deadline to `now + heartbeat_timeout`; NotFound when unknown or used.
    async fn callback_heartbeat(&self, token_hash: &str, now_ms: i64) -> StoreResult<()>;
    /// Retires the open callback tokens of a step attempt the saga no longer waits for (its
    /// heartbeat lapsed, or the saga was cancelled or timed out): a late callback gets 404.
    async fn callback_close(&self, id: Uuid, step: &str, attempt: u32, now_ms: i64) -> StoreResult<()>;
    /// The callback of one step attempt.
    async fn callback_get(&self, id: Uuid, step: &str, attempt: u32) -> StoreResult<Option<CallbackRecord>>;

    /// Creates a tenant (status `PROVISIONING`) and its provisioning saga in one transaction;
    /// [`StoreError::Conflict`] when the id exists.
    async fn tenant_create(&self, tenant: TenantRecord, saga: SagaCreate) -> StoreResult<(TenantRecord, SagaRecord)>;
    async fn tenant_get(&self, id: &str) -> StoreResult<TenantRecord>;
    async fn tenant_list(&self, filter: &TenantFilter) -> StoreResult<Vec<TenantRecord>>;
    /// A conditional status change (and maybe a saga) by an operator.
    async fn tenant_transition(&self, transition: TenantTransition) -> StoreResult<(TenantRecord, Option<SagaRecord>)>;
    async fn tenant_patch(&self, id: &str, patch: &TenantPatch, now_ms: i64) -> StoreResult<TenantRecord>;

    /// Stores a key under the SHA-256 of its token.
    async fn tenant_key_create(&self, key: &TenantKeyRecord, token_hash: &str) -> StoreResult<()>;
    /// The unrevoked key with this token hash.
    async fn tenant_key_by_hash(&self, token_hash: &str) -> StoreResult<Option<TenantKeyRecord>>;
    /// [`StoreError::NotFound`] unless the tenant has this key unrevoked.
    async fn tenant_key_revoke(&self, tenant_id: &str, key_id: Uuid, now_ms: i64) -> StoreResult<()>;
    /// Revokes every key of the tenant; returns how many.
    async fn tenant_keys_revoke_all(&self, tenant_id: &str, now_ms: i64) -> StoreResult<u64>;

    /// [`StoreError::Conflict`] when the tenant has a user with this email.
    async fn tenant_user_create(&self, user: &TenantUserRecord) -> StoreResult<()>;
    async fn tenant_user_list(&self, tenant_id: &str) -> StoreResult<Vec<TenantUserRecord>>;
    /// Replaces email, name and role; NotFound / Conflict (email taken).
    async fn tenant_user_update(&self, user: &TenantUserRecord) -> StoreResult<()>;
    async fn tenant_user_delete(&self, tenant_id: &str, user_id: Uuid) -> StoreResult<()>;

    /// Records an inbound webhook id, or reports it seen with its first answer.
    async fn webhook_claim(&self, source: &str, webhook_id: &str, now_ms: i64) -> StoreResult<WebhookClaim>;
    /// The answer replays of this webhook id get.
    async fn webhook_complete(&self, source: &str, webhook_id: &str, response: &Value) -> StoreResult<()>;
    /// Forgets a claim whose processing failed, so a redelivery is processed afresh.
    async fn webhook_release(&self, source: &str, webhook_id: &str) -> StoreResult<()>;

    /// Notified when new work may be due (a saga was created or handed back).
    fn work_signal(&self) -> WorkSignal;
}

/// Clamps a user's `?limit=`.
pub fn clamp_limit(limit: Option<u32>) -> u32 {
    limit.unwrap_or(LIST_LIMIT_DEFAULT).clamp(1, LIST_LIMIT_MAX)
}

/// Group commit's batching: waits for one queued item, then takes whatever else is already
/// queued, up to `max` (no waiting to fill a batch, so a lone item goes at once). None when
/// every sender is gone. Used by the runtime's committer and the stores' create writers.
pub async fn next_batch<T>(receiver: &mut tokio::sync::mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let first = receiver.recv().await?;
    let mut batch = vec![first];
    while batch.len() < max {
        match receiver.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}
