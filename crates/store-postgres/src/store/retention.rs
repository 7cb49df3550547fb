//! Retention on PostgreSQL: a batch of finished sagas picked, locked (skipping any another
//! transaction holds) and deleted with their history, signals and callbacks in one statement.

use async_trait::async_trait;
use saga_store::{Purged, StoreResult};
use sqlx::Row;
use store_sql::retention::{OwnRetentionStatements, FINISHED};

use super::PostgresStore;
use crate::rows::db;

#[async_trait]
impl OwnRetentionStatements for PostgresStore {
    async fn purge_finished(&self, finished_before_ms: i64, limit: u32) -> StoreResult<Purged> {
        let row = sqlx::query(&format!(
            "WITH picked AS (SELECT id FROM sagas WHERE status IN {FINISHED} AND completed_at <= $1 \
                             ORDER BY completed_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
                  gone AS (DELETE FROM sagas s USING picked WHERE s.id = picked.id RETURNING s.id), \
                  h AS (DELETE FROM saga_events e USING gone WHERE e.saga_id = gone.id RETURNING 1), \
                  sg AS (DELETE FROM saga_signals x USING gone WHERE x.saga_id = gone.id RETURNING 1), \
                  cb AS (DELETE FROM saga_callbacks c USING gone WHERE c.saga_id = gone.id RETURNING 1) \
             SELECT (SELECT count(*) FROM gone) AS sagas, (SELECT count(*) FROM h) AS history, \
                    (SELECT count(*) FROM sg) AS signals, (SELECT count(*) FROM cb) AS callbacks"
        ))
        .bind(finished_before_ms)
        .bind(i64::from(limit))
        .fetch_one(&self.db)
        .await
        .map_err(db)?;
        let count = |name: &str| row.try_get::<i64, _>(name).map(|n| n.max(0) as u64).map_err(db);
        Ok(Purged {
            sagas: count("sagas")?,
            history: count("history")?,
            signals: count("signals")?,
            callbacks: count("callbacks")?,
        })
    }
}

store_sql::retention_store!(PostgresStore);
store_sql::job_store!(PostgresStore);
