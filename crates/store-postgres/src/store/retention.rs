//! Retention on PostgreSQL: a batch of finished sagas picked, locked (skipping any another
//! transaction holds) and deleted with their history, signals and callbacks in one statement.
//! Sagas on the default retention and those whose definition set its own are picked each
//! through its partial index (`sagas_finished`, `sagas_finished_own`).

use async_trait::async_trait;
use saga_store::{Purged, PurgedDeliveries, StoreResult};
use sqlx::Row;
use store_sql::retention::{past_retention, uuid_v7_floor, OwnRetentionStatements, FINISHED};
use uuid::Uuid;

use super::PostgresStore;
use crate::rows::db;

/// After a `picked(id)` of sagas to delete: each with its history, signals and callbacks, and
/// how many of each went.
const PURGE_TAIL: &str = "gone AS (DELETE FROM sagas s USING picked WHERE s.id = picked.id RETURNING s.id), \
       h AS (DELETE FROM saga_events e USING gone WHERE e.saga_id = gone.id RETURNING 1), \
       sg AS (DELETE FROM saga_signals x USING gone WHERE x.saga_id = gone.id RETURNING 1), \
       cb AS (DELETE FROM saga_callbacks c USING gone WHERE c.saga_id = gone.id RETURNING 1) \
     SELECT (SELECT count(*) FROM gone) AS sagas, (SELECT count(*) FROM h) AS history, \
            (SELECT count(*) FROM sg) AS signals, (SELECT count(*) FROM cb) AS callbacks";

fn purged(row: &sqlx::postgres::PgRow) -> StoreResult<Purged> {
    let count = |name: &str| row.try_get::<i64, _>(name).map(|n| n.max(0) as u64).map_err(db);
    Ok(Purged {
        sagas: count("sagas")?,
        history: count("history")?,
        signals: count("signals")?,
        callbacks: count("callbacks")?,
    })
}

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
                  picked AS (SELECT id FROM by_default UNION ALL SELECT id FROM by_own), {PURGE_TAIL}"
        ))
        .bind(now_ms.saturating_sub(retention_ms))
        .bind(i64::from(limit))
        .bind(now_ms)
        .fetch_one(&self.db)
        .await
        .map_err(db)?;
        purged(&row)
    }

    async fn due_finished(&self, now_ms: i64, retention_ms: i64, limit: u32) -> StoreResult<Vec<Uuid>> {
        sqlx::query_scalar(&format!(
            "(SELECT id FROM sagas WHERE status IN {FINISHED} AND retention_ms IS NULL AND completed_at <= $1 \
              ORDER BY completed_at LIMIT $2) \
             UNION ALL \
             (SELECT id FROM sagas WHERE status IN {FINISHED} AND retention_ms IS NOT NULL \
                AND completed_at + retention_ms <= $3 ORDER BY completed_at + retention_ms LIMIT $2)"
        ))
        .bind(now_ms.saturating_sub(retention_ms))
        .bind(i64::from(limit))
        .bind(now_ms)
        .fetch_all(&self.db)
        .await
        .map_err(db)
    }

    async fn purge_finished_ids(&self, ids: &[Uuid], now_ms: i64, retention_ms: i64) -> StoreResult<Purged> {
        let still = past_retention(2, 3);
        let row = sqlx::query(&format!(
            "WITH picked AS (SELECT id FROM sagas WHERE id = ANY($1) AND {still} FOR UPDATE SKIP LOCKED), {PURGE_TAIL}"
        ))
        .bind(ids)
        .bind(now_ms.saturating_sub(retention_ms))
        .bind(now_ms)
        .fetch_one(&self.db)
        .await
        .map_err(db)?;
        purged(&row)
    }

    async fn purge_deliveries(
        &self,
        succeeded_before_ms: i64,
        dead_before_ms: i64,
        now_ms: i64,
        limit: u32,
    ) -> StoreResult<PurgedDeliveries> {
        // Ids are UUIDv7 and a delivery's keeps its event's time prefix, so: succeeded ones by
        // the primary key from the oldest, dead ones through `deliveries_dead`, and an event's
        // remaining deliveries by the primary key within its millisecond (no index on event_id,
        // which every fan-out would pay for).
        let row = sqlx::query(
            "WITH by_succeeded AS (SELECT id, event_id FROM deliveries WHERE id < $1 AND status = 'succeeded' \
                                   ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED), \
                  by_dead AS (SELECT id, event_id FROM deliveries WHERE status = 'dead' AND id < $2 \
                                ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED), \
                  by_expired AS (SELECT d.id FROM deliveries d JOIN events x ON x.id = d.event_id \
                                 WHERE d.status = 'dead' AND d.id < $1 AND x.expires_at <= $4 \
                                 ORDER BY d.id LIMIT $3 FOR UPDATE OF d SKIP LOCKED), \
                  gone AS (DELETE FROM deliveries d \
                           USING (SELECT id FROM by_succeeded UNION SELECT id FROM by_dead \
                                  UNION SELECT id FROM by_expired) picked \
                           WHERE d.id = picked.id RETURNING d.id, d.event_id), \
                  a AS (DELETE FROM delivery_attempts x USING gone WHERE x.delivery_id = gone.id RETURNING 1), \
                  ev AS (DELETE FROM events e WHERE e.id IN (SELECT event_id FROM gone) AND NOT EXISTS ( \
                           SELECT 1 FROM deliveries d \
                           WHERE d.id >= (substr(e.id::text, 1, 14) || '0000-0000-000000000000')::uuid \
                             AND d.id <= (substr(e.id::text, 1, 14) || 'ffff-ffff-ffffffffffff')::uuid \
                             AND d.event_id = e.id AND d.id NOT IN (SELECT id FROM gone)) \
                         RETURNING 1) \
             SELECT (SELECT count(*) FROM gone) AS deliveries, (SELECT count(*) FROM a) AS attempts, \
                    (SELECT count(*) FROM ev) AS events",
        )
        .bind(uuid_v7_floor(succeeded_before_ms))
        .bind(uuid_v7_floor(dead_before_ms))
        .bind(i64::from(limit))
        .bind(now_ms)
        .fetch_one(&self.db)
        .await
        .map_err(db)?;
        let count = |name: &str| row.try_get::<i64, _>(name).map(|n| n.max(0) as u64).map_err(db);
        Ok(PurgedDeliveries {
            deliveries: count("deliveries")?,
            attempts: count("attempts")?,
            events: count("events")?,
        })
    }
}

store_sql::retention_store!(PostgresStore);
store_sql::job_store!(PostgresStore);
