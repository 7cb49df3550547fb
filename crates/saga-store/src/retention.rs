//! Retention's store interface: finished sagas deleted with everything that belongs to them, in
//! bounded batches, and the named leases that keep a periodic job (the cleaner) on one instance
//! at a time.

use async_trait::async_trait;

use crate::StoreResult;

/// What one purge deleted, by kind of row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub sagas: u64,
    pub history: u64,
    pub signals: u64,
    pub callbacks: u64,
}

/// What one purge of deliveries deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgedDeliveries {
    pub deliveries: u64,
    pub attempts: u64,
    /// Events left without a delivery.
    pub events: u64,
}

#[async_trait]
pub trait RetentionStore: Send + Sync {
    /// Deletes finished sagas (COMPLETED, COMPENSATED or FAILED) whose retention has passed at
    /// `now_ms` — their definition's `retention:` when it set one, else `retention_ms` — each
    /// with its history, signals and callbacks, in one transaction: at most `limit` of each
    /// kind of retention, the longest overdue first. A saga that is not finished is never
    /// touched, whatever its age; its idempotency key goes with it.
    async fn sagas_purge(&self, now_ms: i64, retention_ms: i64, limit: u32) -> StoreResult<Purged>;
    /// The ids [`RetentionStore::sagas_purge`] would delete now (at most `limit` of each kind
    /// of retention), for an archive to write before they go.
    async fn sagas_due(&self, now_ms: i64, retention_ms: i64, limit: u32) -> StoreResult<Vec<uuid::Uuid>>;
    /// Deletes those of `ids` that are still finished and past their retention at `now_ms`, as
    /// [`RetentionStore::sagas_purge`] does (one retried meanwhile is kept).
    async fn sagas_purge_ids(&self, ids: &[uuid::Uuid], now_ms: i64, retention_ms: i64) -> StoreResult<Purged>;
    /// Deletes succeeded deliveries created before `succeeded_before_ms`, dead ones whose event
    /// has expired by `now_ms` on that same clock (a replay could never send them), and other
    /// dead ones created before `dead_before_ms` (at most `limit` of each kind, oldest first),
    /// with their attempts and the events of theirs that have no delivery left, in one
    /// transaction. A pending delivery is never touched.
    async fn deliveries_purge(
        &self,
        succeeded_before_ms: i64,
        dead_before_ms: i64,
        now_ms: i64,
        limit: u32,
    ) -> StoreResult<PurgedDeliveries>;
    /// Deletes up to `limit` tenants `DELETED` at or before `deleted_before_ms` with their keys,
    /// users and own subscriptions (a pending delivery to one ends dead), one tenant per
    /// transaction; how many tenants.
    async fn tenants_purge(&self, deleted_before_ms: i64, limit: u32, now_ms: i64) -> StoreResult<u64>;
    /// Deletes up to `limit` inbound webhook receipts received at or before `received_before_ms`
    /// (a replay of one after that is taken as new); how many.
    async fn webhook_receipts_purge(&self, received_before_ms: i64, limit: u32) -> StoreResult<u64>;
    /// Deletes up to `limit` bulk jobs that finished at or before `finished_before_ms`, each
    /// with its items; how many.
    async fn jobs_purge(&self, finished_before_ms: i64, limit: u32) -> StoreResult<u64>;
    /// How many finished sagas not yet deleted are past their retention at `now_ms` but were not
    /// yet at `since_ms`, counted up to `cap` for each kind of retention: with `i64::MIN`, the
    /// cleaner's backlog; with a minute ago, how many came due in the last minute.
    async fn sagas_overdue(&self, since_ms: i64, now_ms: i64, retention_ms: i64, cap: u32) -> StoreResult<u64>;
    /// When the longest-finished saga on the default retention still kept finished; None when
    /// none is.
    async fn oldest_finished_ms(&self) -> StoreResult<Option<i64>>;
    /// Takes or renews the lease `name` for `owner` until `now_ms + ttl_ms`: true when `owner`
    /// holds it now (it was free, had expired, or was already its own).
    async fn singleton_hold(&self, name: &str, owner: &str, now_ms: i64, ttl_ms: i64) -> StoreResult<bool>;
    /// Gives the lease `name` up if `owner` holds it, so another owner takes it at once.
    async fn singleton_release(&self, name: &str, owner: &str) -> StoreResult<()>;
}
