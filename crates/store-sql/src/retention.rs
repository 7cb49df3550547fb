//! Retention's statements that are the same in both dialects: the oldest finished saga, and the
//! named leases that keep a periodic job on one instance at a time. (The purge itself differs: one
//! locking statement on PostgreSQL, a transaction on SQLite's single writer.)

use async_trait::async_trait;
use saga_store::{Purged, StoreResult};
use sqlx::{Database, Executor};

use crate::{column, Dialect, Sql};

/// The smallest UUIDv7 of millisecond `ms`: every id made before it sorts below (events' and
/// deliveries' ids are UUIDv7, so their order is their creation's).
pub fn uuid_v7_floor(ms: i64) -> uuid::Uuid {
    let ms = u64::try_from(ms.max(0)).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(ms, &[0u8; 10]).into_uuid()
}

/// A finished saga whose retention has passed, as SQL over `sagas`: `$a` the default's cut-off
/// (now minus the default retention), `$b` now.
pub fn past_retention(a: u32, b: u32) -> String {
    format!(
        "status IN {FINISHED} AND ((retention_ms IS NULL AND completed_at <= ${a}) \
           OR (retention_ms IS NOT NULL AND completed_at + retention_ms <= ${b}))"
    )
}

/// The statuses a finished saga has, as SQL.
pub const FINISHED: &str = "('COMPLETED', 'COMPENSATED', 'FAILED')";

impl<D: Dialect> Sql<'_, D>
where
    for<'c> &'c D::Pool: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
    for<'q> &'q str: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> i64: sqlx::Encode<'q, D::Db> + sqlx::Decode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> String: sqlx::Decode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'s> &'s str: sqlx::ColumnIndex<<D::Db as Database>::Row>,
{
    pub async fn oldest_finished_ms(&self) -> StoreResult<Option<i64>> {
        // Through the partial index on finish time: the first entry (SQLite otherwise read every
        // finished saga through the status index, 2 s at 1,000,000 of them, every batch).
        let row = sqlx::query(&format!(
            "SELECT min(completed_at) AS oldest FROM sagas {} WHERE status IN {FINISHED} AND retention_ms IS NULL",
            D::indexed_by("sagas_finished")
        ))
        .fetch_one(self.read)
        .await
        .map_err(D::error)?;
        column::<D, Option<i64>>(&row, "oldest")
    }

    pub async fn sagas_overdue(&self, since_ms: i64, now_ms: i64, retention_ms: i64, cap: u32) -> StoreResult<u64> {
        // Each kind through its partial index's range: `completed_at` for the default,
        // `completed_at + retention_ms` for a definition's own.
        let row = sqlx::query(&format!(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM sagas {} WHERE status IN {FINISHED} AND retention_ms IS NULL \
                       AND completed_at > $4 AND completed_at <= $1 LIMIT $3) d) \
                  + (SELECT count(*) FROM (SELECT 1 FROM sagas {} WHERE status IN {FINISHED} AND retention_ms IS NOT NULL \
                       AND completed_at + retention_ms > $5 AND completed_at + retention_ms <= $2 LIMIT $3) o) AS overdue",
            D::indexed_by("sagas_finished"),
            D::indexed_by("sagas_finished_own"),
        ))
        .bind(now_ms.saturating_sub(retention_ms))
        .bind(now_ms)
        .bind(i64::from(cap))
        .bind(since_ms.saturating_sub(retention_ms))
        .bind(since_ms)
        .fetch_one(self.read)
        .await
        .map_err(D::error)?;
        Ok(u64::try_from(column::<D, i64>(&row, "overdue")?).unwrap_or(0))
    }

    pub async fn tenants_purge(&self, deleted_before_ms: i64, limit: u32, now_ms: i64) -> StoreResult<u64> {
        let rows = sqlx::query(
            "SELECT id FROM tenants WHERE status = 'DELETED' AND updated_at <= $1 ORDER BY updated_at LIMIT $2",
        )
        .bind(deleted_before_ms)
        .bind(i64::from(limit))
        .fetch_all(self.read)
        .await
        .map_err(D::error)?;
        let mut purged = 0;
        for row in &rows {
            let id: String = column::<D, _>(row, "id")?;
            let mut tx = D::begin(self.write).await.map_err(D::error)?;
            sqlx::query(
                "UPDATE deliveries SET status = 'dead', last_error = 'the tenant was deleted', lease_owner = NULL, \
                   next_attempt_at = $2 \
                 WHERE status = 'pending' AND subscription_id IN (SELECT id FROM subscriptions WHERE tenant_id = $1)",
            )
            .bind(id.as_str())
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(D::error)?;
            for statement in [
                "DELETE FROM subscriptions WHERE tenant_id = $1",
                "DELETE FROM tenant_api_keys WHERE tenant_id = $1",
                "DELETE FROM tenant_users WHERE tenant_id = $1",
                "DELETE FROM tenants WHERE id = $1 AND status = 'DELETED'",
            ] {
                sqlx::query(statement).bind(id.as_str()).execute(&mut *tx).await.map_err(D::error)?;
            }
            tx.commit().await.map_err(D::error)?;
            purged += 1;
        }
        Ok(purged)
    }

    pub async fn webhook_receipts_purge(&self, received_before_ms: i64, limit: u32) -> StoreResult<u64> {
        let done = sqlx::query(
            "DELETE FROM webhook_receipts WHERE (source, webhook_id) IN \
               (SELECT source, webhook_id FROM webhook_receipts WHERE received_at <= $1 LIMIT $2)",
        )
        .bind(received_before_ms)
        .bind(i64::from(limit))
        .execute(self.write)
        .await
        .map_err(D::error)?;
        Ok(D::rows_affected(&done))
    }

    pub async fn singleton_hold(&self, name: &str, owner: &str, now_ms: i64, ttl_ms: i64) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO sagaplane_singletons (name, owner, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at \
             WHERE sagaplane_singletons.owner = excluded.owner OR sagaplane_singletons.expires_at <= $4",
        )
        .bind(name)
        .bind(owner)
        .bind(now_ms.saturating_add(ttl_ms))
        .bind(now_ms)
        .execute(self.write)
        .await
        .map_err(D::error)?;
        Ok(D::rows_affected(&done) == 1)
    }

    pub async fn singleton_release(&self, name: &str, owner: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM sagaplane_singletons WHERE name = $1 AND owner = $2")
            .bind(name)
            .bind(owner)
            .execute(self.write)
            .await
            .map_err(D::error)?;
        Ok(())
    }
}

/// What each store does its own way in `RetentionStore`: the purge.
#[async_trait]
pub trait OwnRetentionStatements {
    async fn purge_finished(&self, now_ms: i64, retention_ms: i64, limit: u32) -> StoreResult<Purged>;
    async fn due_finished(&self, now_ms: i64, retention_ms: i64, limit: u32) -> StoreResult<Vec<uuid::Uuid>>;
    async fn purge_finished_ids(&self, ids: &[uuid::Uuid], now_ms: i64, retention_ms: i64) -> StoreResult<Purged>;
    async fn purge_deliveries(
        &self,
        succeeded_before_ms: i64,
        dead_before_ms: i64,
        now_ms: i64,
        limit: u32,
    ) -> StoreResult<saga_store::PurgedDeliveries>;
}

/// `RetentionStore` for a store, over its shared statements and its [`OwnRetentionStatements`].
#[macro_export]
macro_rules! retention_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl saga_store::RetentionStore for $store {
            async fn sagas_purge(
                &self,
                now_ms: i64,
                retention_ms: i64,
                limit: u32,
            ) -> saga_store::StoreResult<saga_store::Purged> {
                $crate::retention::OwnRetentionStatements::purge_finished(self, now_ms, retention_ms, limit).await
            }
            async fn sagas_due(
                &self,
                now_ms: i64,
                retention_ms: i64,
                limit: u32,
            ) -> saga_store::StoreResult<Vec<uuid::Uuid>> {
                $crate::retention::OwnRetentionStatements::due_finished(self, now_ms, retention_ms, limit).await
            }
            async fn sagas_purge_ids(
                &self,
                ids: &[uuid::Uuid],
                now_ms: i64,
                retention_ms: i64,
            ) -> saga_store::StoreResult<saga_store::Purged> {
                $crate::retention::OwnRetentionStatements::purge_finished_ids(self, ids, now_ms, retention_ms).await
            }
            async fn deliveries_purge(
                &self,
                succeeded_before_ms: i64,
                dead_before_ms: i64,
                now_ms: i64,
                limit: u32,
            ) -> saga_store::StoreResult<saga_store::PurgedDeliveries> {
                $crate::retention::OwnRetentionStatements::purge_deliveries(
                    self,
                    succeeded_before_ms,
                    dead_before_ms,
                    now_ms,
                    limit,
                )
                .await
            }
            async fn tenants_purge(
                &self,
                deleted_before_ms: i64,
                limit: u32,
                now_ms: i64,
            ) -> saga_store::StoreResult<u64> {
                $crate::SqlStore::sql(self).tenants_purge(deleted_before_ms, limit, now_ms).await
            }
            async fn webhook_receipts_purge(
                &self,
                received_before_ms: i64,
                limit: u32,
            ) -> saga_store::StoreResult<u64> {
                $crate::SqlStore::sql(self).webhook_receipts_purge(received_before_ms, limit).await
            }
            async fn jobs_purge(&self, finished_before_ms: i64, limit: u32) -> saga_store::StoreResult<u64> {
                $crate::SqlStore::sql(self).jobs_purge(finished_before_ms, limit).await
            }
            async fn sagas_overdue(
                &self,
                since_ms: i64,
                now_ms: i64,
                retention_ms: i64,
                cap: u32,
            ) -> saga_store::StoreResult<u64> {
                $crate::SqlStore::sql(self).sagas_overdue(since_ms, now_ms, retention_ms, cap).await
            }
            async fn oldest_finished_ms(&self) -> saga_store::StoreResult<Option<i64>> {
                $crate::SqlStore::sql(self).oldest_finished_ms().await
            }
            async fn singleton_hold(
                &self,
                name: &str,
                owner: &str,
                now_ms: i64,
                ttl_ms: i64,
            ) -> saga_store::StoreResult<bool> {
                $crate::SqlStore::sql(self).singleton_hold(name, owner, now_ms, ttl_ms).await
            }
            async fn singleton_release(&self, name: &str, owner: &str) -> saga_store::StoreResult<()> {
                $crate::SqlStore::sql(self).singleton_release(name, owner).await
            }
        }
    };
}
