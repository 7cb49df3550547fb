//! The store interfaces: everything Sagaplane persists, sized by concern — the engine's
//! ([`engine`], what `saga-runtime` needs and nothing more), the control plane's ([`control`]),
//! tenant storage ([`tenant_storage`]), outbound delivery's ([`delivery`]), retention's ([`retention`]), bulk jobs' ([`jobs`]) — plus the one batching primitive ([`batch`]), saga
//! creation shared by every backend ([`creates`]), and the conformance suites every backend
//! runs ([`conformance`]). The PostgreSQL and SQLite crates implement these traits; only the
//! binary names them.

use async_trait::async_trait;

pub mod batch;
pub mod conformance;
pub mod control;
pub mod creates;
pub mod delivery;
pub mod document;
pub mod engine;
pub mod events;
pub mod jobs;
pub mod retention;
pub mod tenant_storage;

pub use batch::{next_batch, BatchWrite, Batcher, OnBatchError, WRITE_BATCH_MAX, WRITE_QUEUE_MAX};
pub use control::*;
pub use creates::SagaCreates;
pub use delivery::*;
pub use engine::*;
pub use jobs::{
    DeliveryAction, DeliverySelection, JobCreate, JobItemError, JobKind, JobMark, JobRecord, JobStatus, JobStore,
    SagaSelection, Selection, JOB_ERRORS_SHOWN, JOB_ITEMS_MAX,
};
pub use retention::{Purged, PurgedDeliveries, RetentionStore};

/// Limits named once.
pub const LIST_LIMIT_DEFAULT: u32 = 50;
pub const LIST_LIMIT_MAX: u32 = 500;
pub const CLAIM_BATCH_MAX: u32 = 256;
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
    /// The database could not be reached (connection refused or lost, pool exhausted): nothing
    /// about the request itself is wrong, and trying again alone would fail the same way.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn backend(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Backend(Box::new(error))
    }

    pub fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Unavailable(Box::new(error))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Where a store's schema stands, and its migrations.
#[async_trait]
pub trait SchemaStore: Send + Sync + 'static {
    /// Which backend this is (`postgres`, `sqlite`).
    fn backend_name(&self) -> &'static str;
    /// Applies pending migrations, recording `now_ms` as their time.
    async fn migrate(&self, now_ms: i64) -> StoreResult<SchemaStatus>;
    /// Reports the schema version without changing anything.
    async fn schema_status(&self) -> StoreResult<SchemaStatus>;
    /// The connection pool(s) now, for the `saga_db_pool_connections` gauges.
    fn pool_status(&self) -> PoolStatus;
    /// How the database is reached and how wakeups arrive.
    fn connection_status(&self) -> ConnectionStatus {
        ConnectionStatus::embedded()
    }
    /// Whether the database takes writes now (`false`: a read-only server, e.g. a standby).
    async fn writable(&self) -> StoreResult<bool> {
        Ok(true)
    }
}

/// Connections of a store's pool(s).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStatus {
    pub in_use: u32,
    pub idle: u32,
}

/// Everything Sagaplane persists: what the binary opens and the server holds.
pub trait Store: SchemaStore + EngineStore + ControlStore + DeliveryStore + RetentionStore + JobStore {}

impl<T: SchemaStore + EngineStore + ControlStore + DeliveryStore + RetentionStore + JobStore + ?Sized> Store for T {}

/// Clamps a user's `?limit=`.
pub fn clamp_limit(limit: Option<u32>) -> u32 {
    limit.unwrap_or(LIST_LIMIT_DEFAULT).clamp(1, LIST_LIMIT_MAX)
}

/// The store traits, for `use saga_store::prelude::*` where their methods are called.
pub mod prelude {
    pub use crate::{
        ControlStore, DefinitionStore, DeliveryStore, DispatchStore, EngineStore, LeaseStore, SagaStore, SchemaStore,
        SignalStore, Store, SubscriptionStore, TenantAccessStore, TenantStore, WebhookStore,
    };
}
