//! Retention on SQLite: a batch of finished sagas picked through their finish-time index and
//! deleted with their history, signals and callbacks in one transaction on the single writer
//! (nothing else writes meanwhile, so the batch picked is the batch deleted).

use async_trait::async_trait;
use saga_store::{Purged, StoreResult};
use store_sql::retention::{OwnRetentionStatements, FINISHED};

use super::SqliteStore;
use crate::rows::{db, json_text};

#[async_trait]
impl OwnRetentionStatements for SqliteStore {
    async fn purge_finished(&self, now_ms: i64, retention_ms: i64, limit: u32) -> StoreResult<Purged> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        // INDEXED BY: without statistics the planner reads `status` first and sorts every
        // finished saga for each batch (2.9 s a batch at 1,000,000 of them; 0.4 ms this way).
        // The sagas on the default retention by finish time, those whose definition set its
        // own by when theirs ends, each through its partial index.
        let mut ids: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT id FROM sagas INDEXED BY sagas_finished WHERE status IN {FINISHED} AND retention_ms IS NULL \
               AND completed_at <= ?1 ORDER BY completed_at LIMIT ?2"
        ))
        .bind(now_ms.saturating_sub(retention_ms))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let own: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT id FROM sagas INDEXED BY sagas_finished_own WHERE status IN {FINISHED} \
               AND retention_ms IS NOT NULL AND completed_at + retention_ms <= ?1 \
             ORDER BY completed_at + retention_ms LIMIT ?2"
        ))
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        ids.extend(own);
        if ids.is_empty() {
            return Ok(Purged::default());
        }
        let ids = json_text(&ids)?;
        // What belongs to the sagas first: the history, signals and callbacks refer to them.
        let mut deleted = [0u64; 4];
        for (n, (table, column)) in
            [("saga_events", "saga_id"), ("saga_signals", "saga_id"), ("saga_callbacks", "saga_id"), ("sagas", "id")]
                .iter()
                .enumerate()
        {
            let done = sqlx::query(&format!("DELETE FROM {table} WHERE {column} IN (SELECT value FROM json_each(?1))"))
                .bind(&ids)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            deleted[n] = done.rows_affected();
        }
        tx.commit().await.map_err(db)?;
        Ok(Purged { history: deleted[0], signals: deleted[1], callbacks: deleted[2], sagas: deleted[3] })
    }
}

store_sql::retention_store!(SqliteStore);
store_sql::job_store!(SqliteStore);
