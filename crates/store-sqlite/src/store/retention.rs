//! Retention on SQLite: a batch of finished sagas deleted with their history, signals and
//! callbacks in one transaction on the single writer (nothing else writes meanwhile, so the
//! batch the statements pick is the same for each).

use async_trait::async_trait;
use saga_store::{Purged, RetentionStore, StoreResult};
use store_sql::retention::FINISHED;
use store_sql::SqlStore;

use super::SqliteStore;
use crate::rows::db;

#[async_trait]
impl RetentionStore for SqliteStore {
    async fn sagas_purge(&self, finished_before_ms: i64, limit: u32) -> StoreResult<Purged> {
        let picked = format!(
            "SELECT id FROM sagas WHERE status IN {FINISHED} AND completed_at <= ?1 ORDER BY completed_at LIMIT ?2"
        );
        let mut tx = self.writer.begin().await.map_err(db)?;
        let mut deleted = [0u64; 4];
        for (n, table) in ["saga_events", "saga_signals", "saga_callbacks"].iter().enumerate() {
            let done = sqlx::query(&format!("DELETE FROM {table} WHERE saga_id IN ({picked})"))
                .bind(finished_before_ms)
                .bind(i64::from(limit))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            deleted[n + 1] = done.rows_affected();
        }
        let done = sqlx::query(&format!("DELETE FROM sagas WHERE id IN ({picked})"))
            .bind(finished_before_ms)
            .bind(i64::from(limit))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        deleted[0] = done.rows_affected();
        tx.commit().await.map_err(db)?;
        Ok(Purged { sagas: deleted[0], history: deleted[1], signals: deleted[2], callbacks: deleted[3] })
    }

    async fn oldest_finished_ms(&self) -> StoreResult<Option<i64>> {
        self.sql().oldest_finished_ms().await
    }

    async fn singleton_hold(&self, name: &str, owner: &str, now_ms: i64, ttl_ms: i64) -> StoreResult<bool> {
        self.sql().singleton_hold(name, owner, now_ms, ttl_ms).await
    }
}
