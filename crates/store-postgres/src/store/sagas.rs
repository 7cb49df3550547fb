//! Sagas as records: batched inserts (see [`super::creates`]), reads, history, an operator's
//! retry and cancel requests.

use async_trait::async_trait;
use saga_store::{
    CallbackFacts, EventRecord, JobMark, SagaCreate, SagaFilter, SagaOperatorUpdate, SagaQueueFacts, SagaRecord,
    SagaStore, StoreError, StoreResult,
};
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::commit::EventColumns;
use super::{creates, PostgresStore};
use crate::rows::{self, db, json_text, SAGA_COLUMNS};

#[async_trait]
impl SagaStore for PostgresStore {
    async fn saga_insert_batch(&self, creates: &[SagaCreate]) -> StoreResult<Vec<Option<SagaRecord>>> {
        let all: Vec<&SagaCreate> = creates.iter().collect();
        let mut inserted = creates::insert(&self.db, &all).await?;
        let mut records = Vec::with_capacity(creates.len());
        let mut wake = false;
        for create in creates {
            let record = inserted.remove(&create.id).map(|row| rows::saga(&row)).transpose()?;
            wake |= record.is_some() && create.lease.is_none();
            records.push(record);
        }
        if wake {
            self.announce_work();
        }
        Ok(records)
    }

    async fn saga_by_idempotency_key(&self, key: &str) -> StoreResult<Option<(SagaRecord, Option<String>)>> {
        let row =
            sqlx::query(&format!("SELECT {SAGA_COLUMNS}, s.request_hash FROM sagas s WHERE s.idempotency_key = $1"))
                .bind(key)
                .fetch_optional(&self.db)
                .await
                .map_err(db)?;
        match row {
            None => Ok(None),
            Some(row) => {
                let hash: Option<String> = row.try_get("request_hash").map_err(db)?;
                Ok(Some((rows::saga(&row)?, hash)))
            }
        }
    }

    async fn saga_get(&self, id: Uuid) -> StoreResult<SagaRecord> {
        let row = sqlx::query(&format!("SELECT {SAGA_COLUMNS} FROM sagas s WHERE s.id = $1"))
            .bind(id)
            .fetch_optional(&self.db)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        rows::saga(&row)
    }

    async fn saga_get_many(&self, ids: &[Uuid]) -> StoreResult<Vec<SagaRecord>> {
        if ids.len() > saga_store::SAGA_GET_MANY_MAX {
            return Err(StoreError::Conflict(format!("at most {} sagas at once", saga_store::SAGA_GET_MANY_MAX)));
        }
        let rows = sqlx::query(&format!("SELECT {SAGA_COLUMNS} FROM sagas s WHERE s.id = ANY($1)"))
            .bind(ids)
            .fetch_all(&self.db)
            .await
            .map_err(db)?;
        rows.iter().map(rows::saga).collect()
    }

    async fn saga_list(&self, filter: &SagaFilter) -> StoreResult<Vec<SagaRecord>> {
        let mut query: QueryBuilder<'_, Postgres> =
            QueryBuilder::new(format!("SELECT {SAGA_COLUMNS} FROM sagas s WHERE TRUE"));
        if let Some(status) = filter.status {
            query.push(" AND s.status = ").push_bind(status.as_str());
        }
        if let Some(definition) = &filter.definition {
            query.push(" AND s.definition = ").push_bind(definition.clone());
        }
        if let Some(tenant) = &filter.tenant_id {
            query.push(" AND s.tenant_id = ").push_bind(tenant.clone());
        }
        if let Some(key) = &filter.concurrency_key {
            query.push(" AND s.concurrency_key = ").push_bind(key.clone());
        }
        if filter.stalest_first {
            query.push(" AND s.status IN ('PENDING', 'EXECUTING', 'COMPENSATING')");
            if let Some(after) = filter.before_id {
                query
                    .push(" AND (s.updated_at, s.id) > (SELECT a.updated_at, a.id FROM sagas a WHERE a.id = ")
                    .push_bind(after)
                    .push(")");
            }
            query.push(" ORDER BY s.updated_at, s.id LIMIT ");
        } else {
            if let Some(before) = filter.before_id {
                query.push(" AND s.id < ").push_bind(before);
            }
            query.push(" ORDER BY s.id DESC LIMIT ");
        }
        query.push_bind(i64::from(filter.limit));
        let rows = query.build().fetch_all(&self.db).await.map_err(db)?;
        rows.iter().map(rows::saga).collect()
    }

    async fn saga_events(&self, id: Uuid, after_seq: i64, limit: u32) -> StoreResult<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT seq, kind, step, attempt, worker, data, at FROM saga_events \
             WHERE saga_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.db)
        .await
        .map_err(db)?;
        rows.iter().map(rows::event).collect()
    }

    async fn saga_operator_update(&self, update: SagaOperatorUpdate) -> StoreResult<SagaRecord> {
        let mut tx = self.db.begin().await.map_err(db)?;
        if let Some(mark) = &update.job {
            store_sql::jobs::item_done::<crate::dialect::Pg>(&mut tx, mark, update.now_ms).await?;
        }
        let row = sqlx::query(&format!(
            "UPDATE sagas s SET status = $1, state = $2::json, updated_at = $3, run_at = $3, completed_at = NULL, \
               lease_owner = NULL, lease_expires_at = NULL, event_seq = s.event_seq + $4, \
               version = COALESCE($8, s.version) \
             WHERE s.id = $5 AND s.status = $6 AND s.lease_owner IS NULL AND ($7::int IS NULL OR s.version = $7) \
             RETURNING {SAGA_COLUMNS}, s.event_seq"
        ))
        .bind(update.state.status.as_str())
        .bind(json_text(&update.state)?)
        .bind(update.now_ms)
        .bind(update.events.len() as i64)
        .bind(update.id)
        .bind(update.expected_status.as_str())
        .bind(update.moves_version.map(|(from, _)| from))
        .bind(update.moves_version.map(|(_, to)| to))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            return Err(StoreError::Conflict(format!("saga is no longer {}", update.expected_status.as_str())));
        };
        if let Some(change) = &update.tenant_change {
            let from: Vec<&str> = change.from.iter().map(|s| s.as_str()).collect();
            let changed = sqlx::query(
                "UPDATE tenants t SET status = $2, error = $3, updated_at = $4, storage = COALESCE($5, t.storage), \
                   migrations = COALESCE($6, t.migrations) \
                 WHERE t.id = $1 AND t.status = ANY($7)",
            )
            .bind(&change.tenant_id)
            .bind(change.to.as_str())
            .bind(change.error.as_ref().map(Json))
            .bind(update.now_ms)
            .bind(change.storage.as_ref().map(Json))
            .bind(change.migrations.as_ref().map(Json))
            .bind(&from)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            if changed.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!(
                    "tenant {:?} is not in a status that may become {}",
                    change.tenant_id,
                    change.to.as_str()
                )));
            }
        }
        let last_seq: i64 = row.try_get("event_seq").map_err(db)?;
        let mut events = EventColumns::default();
        events.push_all(
            update.id,
            update.tenant_id.as_deref(),
            last_seq - update.events.len() as i64 + 1,
            None,
            &update.events,
        )?;
        events.insert(&mut tx).await?;
        let record = rows::saga(&row)?;
        tx.commit().await.map_err(db)?;
        if !record.status.is_terminal() {
            self.announce_work();
        }
        Ok(record)
    }

    async fn saga_due_summary(&self, now_ms: i64) -> StoreResult<(u64, Option<i64>)> {
        let (count, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), min(run_at) FROM sagas \
             WHERE status IN ('PENDING', 'EXECUTING', 'COMPENSATING') AND (concurrency_key IS NULL OR admitted) \
               AND run_at <= $1",
        )
        .bind(now_ms)
        .fetch_one(&self.db)
        .await
        .map_err(db)?;
        Ok((u64::try_from(count).unwrap_or(0), oldest))
    }

    async fn saga_queue_facts(&self, saga: &SagaRecord, now_ms: i64) -> StoreResult<SagaQueueFacts> {
        let (due_count, oldest_due_at_ms) = self.saga_due_summary(now_ms).await?;
        let admitted: Option<bool> =
            sqlx::query_scalar("SELECT concurrency_key IS NULL OR admitted FROM sagas WHERE id = $1")
                .bind(saga.id)
                .fetch_optional(&self.db)
                .await
                .map_err(db)?;
        let key_holders = match &saga.concurrency_key {
            Some(key) => sqlx::query_scalar::<_, Uuid>(
                "SELECT id FROM sagas WHERE concurrency_key = $1 AND admitted \
                   AND status IN ('PENDING', 'EXECUTING', 'COMPENSATING') AND id <> $2 ORDER BY id LIMIT $3",
            )
            .bind(key)
            .bind(saga.id)
            .bind(i64::from(saga_store::KEY_HOLDERS_MAX))
            .fetch_all(&self.db)
            .await
            .map_err(db)?
            .into_iter()
            .map(Ok)
            .collect::<StoreResult<Vec<Uuid>>>()?,
            None => Vec::new(),
        };
        let latest_event = sqlx::query(
            "SELECT seq, kind, step, attempt, worker, data, at FROM saga_events WHERE saga_id = $1 \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(saga.id)
        .fetch_optional(&self.db)
        .await
        .map_err(db)?
        .as_ref()
        .map(rows::event)
        .transpose()?;
        let callback = match &saga.state.wait {
            Some(wait) if wait.kind == saga_core::WaitKind::Callback => {
                let step = saga.state.steps.get(wait.step).map(|s| s.name.clone()).unwrap_or_default();
                sqlx::query_as::<_, (Option<i64>, Option<i64>, i64)>(
                    "SELECT deadline_at, heartbeat_timeout_ms, created_at FROM saga_callbacks \
                     WHERE saga_id = $1 AND step = $2 AND attempt = $3 AND completed_at IS NULL \
                     ORDER BY created_at DESC LIMIT 1",
                )
                .bind(saga.id)
                .bind(step)
                .bind(i64::from(wait.attempt))
                .fetch_optional(&self.db)
                .await
                .map_err(db)?
                .map(|(deadline, timeout, created)| CallbackFacts::from_columns(deadline, timeout, created))
            }
            _ => None,
        };
        Ok(SagaQueueFacts {
            admitted: admitted.unwrap_or(false),
            key_holders,
            due_count,
            oldest_due_at_ms,
            latest_event,
            callback,
        })
    }

    async fn saga_wake(&self, id: Uuid, now_ms: i64) -> StoreResult<bool> {
        let mut tx = self.db.begin().await.map_err(db)?;
        let woken = Self::wake(&mut tx, id, now_ms).await?;
        tx.commit().await.map_err(db)?;
        if woken {
            self.announce_work();
        }
        Ok(woken)
    }

    async fn saga_cancel_request(&self, id: Uuid, now_ms: i64, job: Option<&JobMark>) -> StoreResult<SagaRecord> {
        let mut tx = self.db.begin().await.map_err(db)?;
        if let Some(mark) = job {
            store_sql::jobs::item_done::<crate::dialect::Pg>(&mut tx, mark, now_ms).await?;
        }
        let row = sqlx::query(&format!(
            "UPDATE sagas s SET cancel_requested_at = COALESCE(s.cancel_requested_at, $2), \
               wake_seq = s.wake_seq + 1, updated_at = $2, \
               run_at = CASE WHEN s.lease_owner IS NULL THEN LEAST(s.run_at, $2) ELSE s.run_at END \
             WHERE s.id = $1 AND s.status IN ('PENDING', 'EXECUTING', 'COMPENSATING') \
             RETURNING {SAGA_COLUMNS}"
        ))
        .bind(id)
        .bind(now_ms)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        match row {
            Some(row) => {
                tx.commit().await.map_err(db)?;
                self.announce_work();
                rows::saga(&row)
            }
            None => {
                drop(tx);
                let existing = self.saga_get(id).await?;
                Err(StoreError::Conflict(format!("saga is {}", existing.status.as_str())))
            }
        }
    }
}
