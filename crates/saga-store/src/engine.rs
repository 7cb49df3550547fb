//! The engine's store interface: what `saga-runtime` persists — definitions, sagas and their
//! history, claims, commits, leases, signals, callbacks and concurrency admission — as four small
//! traits by concern, joined in [`EngineStore`].
//!
//! Design note. Time is always a parameter (`now_ms`), never read here. A driver's writes are
//! conditional on `(id, fencing_token)`: [`LeaseStore::saga_claim_due`] bumps the token, so a
//! paused or partitioned zombie's writes come back [`CommitOutcome::Fenced`]. While a saga is
//! leased its `run_at_ms` equals the lease expiry, so "due" (`run_at_ms <= now`) covers both
//! scheduled work and expired leases with one index.

use std::sync::Arc;

use async_trait::async_trait;
use saga_core::tenant::TenantStatus;
use saga_core::{HistoryEvent, SagaState, SagaStatus};
use serde_json::Value;
use uuid::Uuid;

use crate::StoreResult;

/// One stored version of a definition.
#[derive(Clone, Debug, PartialEq)]
pub struct DefinitionRecord {
    pub name: String,
    pub version: i32,
    /// The parsed document (JSON tree), as written.
    pub document: Value,
    pub created_at_ms: i64,
}

/// Result of [`DefinitionStore::definition_put`].
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
    /// Set by [`SagaStore::saga_cancel_request`]; a driver acts on it at its next commit.
    pub cancel_requested_at_ms: Option<i64>,
    /// Bumped by every delivery (signal, callback, cancel) so a driver parking the saga can
    /// tell that something arrived while it was deciding to wait.
    pub wake_seq: i64,
    /// The rendered `concurrency.key`, if the definition has one.
    pub concurrency_key: Option<String>,
}

/// One saga to create (see [`crate::SagaCreates`]).
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
    /// Its definition's `retention:`: kept this long once finished, whatever the deployment's
    /// default (None: the default).
    pub retention_ms: Option<i64>,
    pub now_ms: i64,
}

impl SagaCreate {
    /// A saga of `definition` at `version` with a new id, no tenant, priority 0, no idempotency
    /// key, not leased, no concurrency key: set the other fields with struct update syntax.
    pub fn new(definition: &str, version: i32, input: Value, state: SagaState, now_ms: i64) -> Self {
        SagaCreate {
            id: Uuid::now_v7(),
            definition: definition.to_string(),
            version,
            tenant_id: None,
            input,
            state,
            priority: 0,
            idempotency_key: None,
            request_hash: None,
            require_latest: false,
            lease: None,
            concurrency: None,
            retention_ms: None,
            now_ms,
        }
    }
}

/// A lease granted at creation.
#[derive(Clone, Debug)]
pub struct LeaseGrant {
    pub worker_id: String,
    pub lease_ttl_ms: i64,
}

/// Result of [`crate::SagaCreates::create`].
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

/// Parameters of [`LeaseStore::saga_claim_due`].
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
    /// Events this transition reports (a terminal status, `core.emit`), written with it and only
    /// if it is (docs/api.md, "Events out").
    pub outbox: Vec<crate::OutboxEvent>,
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
    /// The events reporting the change, written only if the change is applied.
    pub outbox: Vec<crate::OutboxEvent>,
}

impl TenantChange {
    /// The history row a commit writes for this change: `tenant_status_changed` when the tenant
    /// was in one of `from` (so it changed), `tenant_change_refused` when it was not (`found` is
    /// the status it was in, None when the tenant does not exist). Every store writes exactly this.
    pub fn recorded(&self, applied: bool, found: Option<&str>, now_ms: i64) -> HistoryEvent {
        let kind = if applied { TENANT_STATUS_CHANGED } else { TENANT_CHANGE_REFUSED };
        let from: Vec<&str> = self.from.iter().map(|s| s.as_str()).collect();
        let data =
            serde_json::json!({"tenant_id": self.tenant_id, "to": self.to.as_str(), "from": from, "found": found});
        HistoryEvent::new(kind, None, None, data, now_ms)
    }
}

/// History row: a transition moved its tenant (same transaction).
pub const TENANT_STATUS_CHANGED: &str = "tenant_status_changed";
/// History row: a transition's tenant change was not applied, the tenant being in another status.
pub const TENANT_CHANGE_REFUSED: &str = "tenant_change_refused";

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

/// Parameters of [`SignalStore::callback_register`].
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
    /// The bulk job item this update acts on: marked done with it, and nothing is written when
    /// the item is no longer pending ([`crate::StoreError::Conflict`]).
    pub job: Option<crate::JobMark>,
    pub now_ms: i64,
    /// `(from, to)`: the saga moves from version `from` of its definition to `to` (an upgrade),
    /// and the write applies only while it is still on `from`.
    pub moves_version: Option<(i32, i32)>,
}

/// Filters of [`SagaStore::saga_list`].
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
    /// Unfinished sagas only, the longest without a transition first (`before_id` then pages
    /// after that saga in this order).
    pub stalest_first: bool,
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

/// What a heartbeat learned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRenewal {
    /// Leases this worker no longer holds (fenced or taken over).
    pub lost: Vec<Uuid>,
    /// Renewed leases whose saga has a cancel request, with when it was made.
    pub cancel_requested: Vec<(Uuid, i64)>,
}

/// A lease this worker holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseRef {
    pub id: Uuid,
    pub fencing_token: i64,
}

/// Where the schema stands, next to what this binary needs and tolerates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchemaStatus {
    /// The newest migration applied.
    pub applied: i64,
    /// The newest migration this binary knows (it needs at least this).
    pub latest: i64,
    /// Of the applied migrations newer than `latest`, the oldest binary (named by its `latest`)
    /// the most demanding of them keeps working for; `0` when none is newer.
    pub newer_requires: i64,
}

/// Whether this binary can serve on the schema (see [`SchemaStatus::support`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaSupport {
    /// Exactly what this binary migrates to, or newer by migrations that keep working for it.
    Supported,
    /// Older than this binary needs (its migrations have not run).
    Outdated,
    /// A newer binary's migration this one does not keep working with.
    TooNew,
}

impl SchemaStatus {
    pub fn is_current(&self) -> bool {
        self.applied == self.latest
    }

    pub fn support(&self) -> SchemaSupport {
        if self.applied < self.latest {
            SchemaSupport::Outdated
        } else if self.newer_requires > self.latest {
            SchemaSupport::TooNew
        } else {
            SchemaSupport::Supported
        }
    }
}

/// How an instance hears that other instances committed work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeupMode {
    /// One process holds the database (SQLite): the worker is woken in-process.
    InProcess,
    /// `LISTEN` on a connection that is checked to hear.
    Listen,
    /// No working listener: idle instances look for work at least every second.
    Polling,
}

impl WakeupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WakeupMode::InProcess => "in_process",
            WakeupMode::Listen => "listen",
            WakeupMode::Polling => "polling",
        }
    }
}

/// The wakeup mode and, when polling, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WakeupStatus {
    pub mode: WakeupMode,
    pub reason: Option<String>,
}

/// How a store reaches its database, for `/v1/status` and the gauges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionStatus {
    /// `embedded`, `direct` or `transaction_pooler`.
    pub route: &'static str,
    pub wakeups: WakeupStatus,
}

impl ConnectionStatus {
    pub fn embedded() -> Self {
        ConnectionStatus { route: "embedded", wakeups: WakeupStatus { mode: WakeupMode::InProcess, reason: None } }
    }
}

/// Wakes idle workers when new work may be due.
pub type WorkSignal = Arc<tokio::sync::Notify>;

/// Definitions, versioned by content.
#[async_trait]
pub trait DefinitionStore: Send + Sync + 'static {
    /// Stores a new version unless the document equals the latest one.
    async fn definition_put(&self, name: &str, document: &Value, now_ms: i64) -> StoreResult<DefinitionPut>;
    /// The given version, or the latest when `version` is None.
    async fn definition_get(&self, name: &str, version: Option<i32>) -> StoreResult<DefinitionRecord>;
    /// The latest version of every definition, by name.
    async fn definition_list(&self) -> StoreResult<Vec<DefinitionRecord>>;
}

/// Sagas as records: creation, reads, history, and the changes made by someone other than their
/// driver (an operator's retry, a cancel request).
#[async_trait]
pub trait SagaStore: Send + Sync + 'static {
    /// Inserts the sagas (each with its `saga_created` event and its concurrency key) in one
    /// transaction. Per create, in order: the inserted row, or None when it was not inserted
    /// because its idempotency key is taken (by an earlier saga or an earlier create of the same
    /// batch) or `require_latest` is set and a newer version exists. Any other failure fails the
    /// whole batch and writes nothing. [`crate::SagaCreates`] decides what None means.
    async fn saga_insert_batch(&self, creates: &[SagaCreate]) -> StoreResult<Vec<Option<SagaRecord>>>;
    /// The saga created with this idempotency key, and the request hash stored with it.
    async fn saga_by_idempotency_key(&self, key: &str) -> StoreResult<Option<(SagaRecord, Option<String>)>>;
    async fn saga_get(&self, id: Uuid) -> StoreResult<SagaRecord>;
    /// The sagas of `ids` that exist, in no particular order (a group reads its branches in one
    /// round trip). At most [`SAGA_GET_MANY_MAX`] ids.
    async fn saga_get_many(&self, ids: &[Uuid]) -> StoreResult<Vec<SagaRecord>>;
    async fn saga_list(&self, filter: &SagaFilter) -> StoreResult<Vec<SagaRecord>>;
    async fn saga_events(&self, id: Uuid, after_seq: i64, limit: u32) -> StoreResult<Vec<EventRecord>>;
    /// An operator's change to an unleased saga, applied only while its status is as expected.
    async fn saga_operator_update(&self, update: SagaOperatorUpdate) -> StoreResult<SagaRecord>;
    /// Records a cancel request on a saga that is not terminal and makes it due if no driver
    /// holds it. [`crate::StoreError::NotFound`]; [`crate::StoreError::Conflict`] when terminal.
    /// With `job`, the bulk job's item is marked done in the same transaction (Conflict, nothing
    /// written, when it is no longer pending).
    async fn saga_cancel_request(&self, id: Uuid, now_ms: i64, job: Option<&crate::JobMark>)
        -> StoreResult<SagaRecord>;
    /// Bumps the saga's `wake_seq` and makes it due now unless a driver holds it (that driver
    /// sees the bump when it next parks): a child saga that ended wakes its parent. Only sagas
    /// that are not terminal; returns whether one was woken.
    async fn saga_wake(&self, id: Uuid, now_ms: i64) -> StoreResult<bool>;
    /// What the claim sees around one saga (`GET /v1/sagas/{id}/blockers`): its admission, its
    /// key's holders, the queue of due sagas, its newest history event, its open callback.
    async fn saga_queue_facts(&self, saga: &SagaRecord, now_ms: i64) -> StoreResult<SagaQueueFacts>;
    /// Sagas a claim would take at `now_ms` (admitted, unfinished, `run_at` passed): how many,
    /// and the oldest one's `run_at` (the queue-depth metrics).
    async fn saga_due_summary(&self, now_ms: i64) -> StoreResult<(u64, Option<i64>)>;
}

/// The most ids one [`SagaStore::saga_get_many`] reads.
pub const SAGA_GET_MANY_MAX: usize = 1_000;

/// The most concurrency-key holders [`SagaQueueFacts`] lists.
pub const KEY_HOLDERS_MAX: u32 = 100;

/// [`SagaStore::saga_queue_facts`]: read with the conditions the claim uses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SagaQueueFacts {
    /// It holds a slot of its concurrency key (true when it has no key).
    pub admitted: bool,
    /// Admitted, unfinished sagas of its key other than itself (at most [`KEY_HOLDERS_MAX`]).
    pub key_holders: Vec<Uuid>,
    /// Sagas a claim would take now (admitted, unfinished, `run_at` passed), and the oldest's
    /// `run_at`.
    pub due_count: u64,
    pub oldest_due_at_ms: Option<i64>,
    /// The saga's newest history event.
    pub latest_event: Option<EventRecord>,
    /// The open callback of the attempt it waits on, if it waits on one.
    pub callback: Option<CallbackFacts>,
}

/// An open callback as the blockers show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallbackFacts {
    /// When the attempt counts as lost unless a heartbeat moves it.
    pub deadline_at_ms: Option<i64>,
    /// The last heartbeat, if one arrived.
    pub last_heartbeat_at_ms: Option<i64>,
    pub created_at_ms: i64,
}

impl CallbackFacts {
    /// From the callback row: a heartbeat sets `deadline = now + heartbeat_timeout`, so the last
    /// one was at `deadline - heartbeat_timeout` if that is after the token was made.
    pub fn from_columns(deadline_at_ms: Option<i64>, heartbeat_timeout_ms: Option<i64>, created_at_ms: i64) -> Self {
        let last_heartbeat_at_ms = deadline_at_ms
            .zip(heartbeat_timeout_ms)
            .map(|(deadline, timeout)| deadline - timeout)
            .filter(|at| *at > created_at_ms);
        CallbackFacts { deadline_at_ms, last_heartbeat_at_ms, created_at_ms }
    }
}

/// What drivers do: claim due sagas (admission under concurrency keys included), commit their
/// transitions fenced by token, renew and hand back leases.
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Claims up to `limit` due sagas in one statement: sets the lease, bumps the fencing token.
    async fn saga_claim_due(&self, params: &ClaimParams) -> StoreResult<Vec<Claimed>>;
    /// Commits many drivers' transitions in one transaction; each is fenced on its own.
    async fn saga_commit_batch(&self, commits: &[SagaCommit]) -> StoreResult<Vec<CommitOutcome>>;
    /// Renews every lease in one statement (rows locked in id order, so it cannot deadlock with
    /// a commit batch); reports the leases this worker no longer holds and the held sagas with a
    /// cancel request, so a driver can interrupt a long attempt.
    async fn lease_renew(
        &self,
        worker_id: &str,
        leases: &[LeaseRef],
        now_ms: i64,
        lease_ttl_ms: i64,
    ) -> StoreResult<LeaseRenewal>;
    /// Hands leases back so another instance can claim the sagas at once.
    async fn lease_release(&self, worker_id: &str, leases: &[LeaseRef], now_ms: i64) -> StoreResult<()>;
    /// Notified when new work may be due (a saga was created or handed back).
    fn work_signal(&self) -> WorkSignal;
}

/// What arrives from outside while a saga waits: signals and async callbacks.
#[async_trait]
pub trait SignalStore: Send + Sync + 'static {
    /// Buffers a signal durably and wakes the saga. [`crate::StoreError::Conflict`] when terminal.
    /// With `job`, the bulk job's item is marked done in the same transaction (Conflict, nothing
    /// written, when it is no longer pending).
    async fn signal_send(
        &self,
        id: Uuid,
        name: &str,
        payload: &Value,
        now_ms: i64,
        job: Option<&crate::JobMark>,
    ) -> StoreResult<SignalRecord>;
    /// The oldest signal called `name` for the saga whose id is not in `consumed`.
    async fn signal_find(&self, id: Uuid, name: &str, consumed: &[i64]) -> StoreResult<Option<SignalRecord>>;
    /// Records a callback token before its request is sent.
    async fn callback_register(&self, params: CallbackRegister) -> StoreResult<()>;
    /// Stores the participant's result once and wakes the saga; [`crate::StoreError::NotFound`]
    /// when the token is unknown or already used. Returns the saga id.
    async fn callback_complete(&self, token_hash: &str, result: &Value, now_ms: i64) -> StoreResult<Uuid>;
    /// Moves an open callback's deadline to `now + heartbeat_timeout`; NotFound when unknown or
    /// used.
    async fn callback_heartbeat(&self, token_hash: &str, now_ms: i64) -> StoreResult<()>;
    /// Retires the open callback tokens of a step attempt the saga no longer waits for (its
    /// heartbeat lapsed, or the saga was cancelled or timed out): a late callback gets 404.
    async fn callback_close(&self, id: Uuid, step: &str, attempt: u32, now_ms: i64) -> StoreResult<()>;
    /// The callback of one step attempt. An attempt sent again by a driver that took over from
    /// one that stopped after sending it has several tokens, each for the same work (one
    /// idempotency key): the result of any of them settles the attempt; with none, the latest
    /// heartbeat deadline among them holds (a heartbeat to any token keeps the attempt alive).
    async fn callback_get(&self, id: Uuid, step: &str, attempt: u32) -> StoreResult<Option<CallbackRecord>>;
}

/// Everything the engine persists; `saga-runtime` depends on this and nothing wider.
pub trait EngineStore: DefinitionStore + SagaStore + LeaseStore + SignalStore {}

impl<T: DefinitionStore + SagaStore + LeaseStore + SignalStore + ?Sized> EngineStore for T {}
