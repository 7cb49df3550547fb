//! Retention on PostgreSQL: a batch of finished sagas picked, locked (skipping any another
//! transaction holds) and deleted with their history, signals and callbacks in one statement.
//! Sagas on the default retention and those whose definition set its own are picked each
//! through its partial index (`sagas_finished`, `sagas_finished_own`).

use async_trait::async_trait;
use saga_store::{Purged, StoreResult};
use sqlx::Row;
use store_sql::retention::{OwnRetentionStatements, FINISHED};

use super::PostgresStore;
use crate::rows::db;

#[async_trait]
impl OwnRetentionStatements for PostgresStore {
    async fn purge_finished(&self, now_ms: i64, retention_ms: i64, limit: u32) -> StoreResult<Purged> {
        // Two picks, each through its own partial index: the sagas on the default retention by
        // finish time, those whose definition set `retention:` by when theirs ends.
        let row = sqlx::query(&format!(
            "WITH by_default AS (SELECT id FROM sagas WHERE status IN {FINISHED} AND retention_ms IS NULL \
                                   AND completed_at <= $1 ORDER BY completed_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
                  by_own AS (SELECT id FROM sagas WHERE status IN {FINISHED} AND retention_ms IS NOT NULL \
                               AND completed_at + retention_ms <= $3 ORDER BY completed_at + retention_ms LIMIT $2 \
                               FOR UPDATE SKIP LOCKED), \
                  picked AS (SELECT id FROM by_default UNION ALL SELECT id FROM by_own), \
                  gone AS (DELETE FROM sagas s USING picked WHERE s.id = picked.id RETURNING s.id), \
                  h AS (DELETE FROM saga_events e USING gone WHERE e.saga_id = gone.id RETURNING 1), \
                  sg AS (DELETE FROM saga_signals x USING gone WHERE x.saga_id = gone.id RETURNING 1), \
                  cb AS (DELETE FROM saga_callbacks c USING gone WHERE c.saga_id = gone.id RETURNING 1) \
             SELECT (SELECT count(*) FROM gone) AS sagas, (SELECT count(*) FROM h) AS history, \
                    (SELECT count(*) FROM sg) AS signals, (SELECT count(*) FROM cb) AS callbacks"
        ))
        .bind(now_ms.saturating_sub(retention_ms))
        .bind(i64::from(limit))
        .bind(now_ms)
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
