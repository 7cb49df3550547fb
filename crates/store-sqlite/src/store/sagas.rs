//! Sagas as records: batched inserts (see [`super::creates`]), reads, history, an operator's
//! retry and cancel requests.

use async_trait::async_trait;
use saga_store::{
    CallbackFacts, EventRecord, JobMark, SagaCreate, SagaFilter, SagaOperatorUpdate, SagaQueueFacts, SagaRecord,
    SagaStore, StoreError, StoreResult,
};
use sqlx::Row;
use uuid::Uuid;

use super::commit::tenant_change_apply;
use super::history::insert_events;
use super::{creates, SqliteStore};
use crate::rows::{self, db, json_text, SAGA_COLUMNS};

#[async_trait]
impl SagaStore for SqliteStore {
    async fn saga_insert_batch(&self, creates: &[SagaCreate]) -> StoreResult<Vec<Option<SagaRecord>>> {
        let records = creates::insert_batch(&self.writer, creates).await?;
        if records.iter().zip(creates).any(|(record, create)| record.is_some() && create.lease.is_none()) {
            self.work.notify_one();
        }
        Ok(records)
    }

    async fn saga_by_idempotency_key(&self, key: &str) -> StoreResult<Option<(SagaRecord, Option<String>)>> {
        let row = sqlx::query(&format!("SELECT {SAGA_COLUMNS}, request_hash FROM sagas WHERE idempotency_key = ?"))
            .bind(key)
            .fetch_optional(&self.reader)
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
        let row = sqlx::query(&format!("SELECT {SAGA_COLUMNS} FROM sagas WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        rows::saga(&row)
    }

    async fn saga_get_many(&self, ids: &[Uuid]) -> StoreResult<Vec<SagaRecord>> {
        if ids.len() > saga_store::SAGA_GET_MANY_MAX {
            return Err(StoreError::Conflict(format!("at most {} sagas at once", saga_store::SAGA_GET_MANY_MAX)));
        }
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let rows =
            sqlx::query(&format!("SELECT {SAGA_COLUMNS} FROM sagas WHERE id IN (SELECT value FROM json_each(?))"))
                .bind(json_text(&ids)?)
                .fetch_all(&self.reader)
                .await
                .map_err(db)?;
        rows.iter().map(rows::saga).collect()
    }

    async fn saga_list(&self, filter: &SagaFilter) -> StoreResult<Vec<SagaRecord>> {
        let mut sql = format!("SELECT {SAGA_COLUMNS} FROM sagas WHERE 1 = 1");
        if filter.status.is_some() {
            sql.push_str(" AND status = ?");
        }
        if filter.definition.is_some() {
            sql.push_str(" AND definition = ?");
        }
        if filter.tenant_id.is_some() {
            sql.push_str(" AND tenant_id = ?");
        }
        if filter.concurrency_key.is_some() {
            sql.push_str(" AND concurrency_key = ?");
        }
        let before_id = filter.before_id;
        if filter.stalest_first {
            sql.push_str(" AND status IN ('PENDING', 'EXECUTING', 'COMPENSATING')");
            if before_id.is_some() {
                sql.push_str(" AND (updated_at, id) > (SELECT a.updated_at, a.id FROM sagas a WHERE a.id = ?)");
            }
            sql.push_str(" ORDER BY updated_at, id LIMIT ?");
        } else {
            if before_id.is_some() {
                sql.push_str(" AND id < ?");
            }
            sql.push_str(" ORDER BY id DESC LIMIT ?");
        }
        let mut query = sqlx::query(&sql);
        if let Some(status) = filter.status {
            query = query.bind(status.as_str());
        }
        if let Some(definition) = &filter.definition {
            query = query.bind(definition);
        }
        if let Some(tenant) = &filter.tenant_id {
            query = query.bind(tenant);
        }
        if let Some(key) = &filter.concurrency_key {
            query = query.bind(key);
        }
        if let Some(before) = before_id {
            query = query.bind(before.to_string());
        }
        let rows = query.bind(i64::from(filter.limit)).fetch_all(&self.reader).await.map_err(db)?;
        rows.iter().map(rows::saga).collect()
    }

    async fn saga_events(&self, id: Uuid, after_seq: i64, limit: u32) -> StoreResult<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT seq, kind, step, attempt, worker, data, at FROM saga_events WHERE saga_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(id.to_string())
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        rows.iter().map(rows::event).collect()
    }

    async fn saga_operator_update(&self, update: SagaOperatorUpdate) -> StoreResult<SagaRecord> {
        let id = update.id.to_string();
        let mut tx = self.writer.begin().await.map_err(db)?;
        if let Some(mark) = &update.job {
            store_sql::jobs::item_done::<crate::dialect::Lite>(&mut tx, mark, update.now_ms).await?;
        }
        let row = sqlx::query(&format!(
            "UPDATE sagas SET status = ?1, state = ?2, updated_at = ?3, run_at = ?3, completed_at = NULL, \
             lease_owner = NULL, lease_expires_at = NULL, event_seq = event_seq + ?4, version = COALESCE(?8, version) \
             WHERE id = ?5 AND status = ?6 AND lease_owner IS NULL AND (?7 IS NULL OR version = ?7) \
             RETURNING {SAGA_COLUMNS}, event_seq"
        ))
        .bind(update.state.status.as_str())
        .bind(json_text(&update.state)?)
        .bind(update.now_ms)
        .bind(update.events.len() as i64)
        .bind(&id)
        .bind(update.expected_status.as_str())
        .bind(update.moves_version.map(|(from, _)| i64::from(from)))
        .bind(update.moves_version.map(|(_, to)| i64::from(to)))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            return Err(StoreError::Conflict(format!("saga is no longer {}", update.expected_status.as_str())));
        };
        if let Some(change) = &update.tenant_change {
            if tenant_change_apply(&mut tx, change, update.now_ms).await? == 0 {
                return Err(StoreError::Conflict(format!(
                    "tenant {:?} is not in a status that may become {}",
                    change.tenant_id,
                    change.to.as_str()
                )));
            }
        }
        let last_seq: i64 = row.try_get("event_seq").map_err(db)?;
        let first_seq = last_seq - update.events.len() as i64 + 1;
        insert_events(&mut tx, &id, update.tenant_id.as_deref(), first_seq, None, &update.events).await?;
        let record = rows::saga(&row)?;
        tx.commit().await.map_err(db)?;
        if !record.status.is_terminal() {
            self.work.notify_one();
        }
        Ok(record)
    }

    async fn saga_due_summary(&self, now_ms: i64) -> StoreResult<(u64, Option<i64>)> {
        let (count, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), min(run_at) FROM sagas \
             WHERE status IN ('PENDING', 'EXECUTING', 'COMPENSATING') AND (concurrency_key IS NULL OR admitted) \
               AND run_at <= ?1",
        )
        .bind(now_ms)
        .fetch_one(&self.reader)
        .await
        .map_err(db)?;
        Ok((u64::try_from(count).unwrap_or(0), oldest))
    }

    async fn saga_queue_facts(&self, saga: &SagaRecord, now_ms: i64) -> StoreResult<SagaQueueFacts> {
        let (due_count, oldest_due_at_ms) = self.saga_due_summary(now_ms).await?;
        let admitted: Option<bool> =
            sqlx::query_scalar("SELECT concurrency_key IS NULL OR admitted FROM sagas WHERE id = ?1")
                .bind(saga.id.to_string())
                .fetch_optional(&self.reader)
                .await
                .map_err(db)?;
        let key_holders = match &saga.concurrency_key {
            Some(key) => sqlx::query_scalar::<_, String>(
                "SELECT id FROM sagas WHERE concurrency_key = ?1 AND admitted \
                   AND status IN ('PENDING', 'EXECUTING', 'COMPENSATING') AND id <> ?2 ORDER BY id LIMIT ?3",
            )
            .bind(key)
            .bind(saga.id.to_string())
            .bind(i64::from(saga_store::KEY_HOLDERS_MAX))
            .fetch_all(&self.reader)
            .await
            .map_err(db)?
            .into_iter()
            .map(|id: String| Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect::<StoreResult<Vec<Uuid>>>()?,
            None => Vec::new(),
        };
        let latest_event = sqlx::query(
            "SELECT seq, kind, step, attempt, worker, data, at FROM saga_events WHERE saga_id = ?1 \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(saga.id.to_string())
        .fetch_optional(&self.reader)
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
                     WHERE saga_id = ?1 AND step = ?2 AND attempt = ?3 AND completed_at IS NULL \
                     ORDER BY created_at DESC LIMIT 1",
                )
                .bind(saga.id.to_string())
                .bind(step)
                .bind(i64::from(wait.attempt))
                .fetch_optional(&self.reader)
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
        let mut conn = self.writer.acquire().await.map_err(db)?;
        let woken = super::signals::wake(&mut conn, id, now_ms).await?;
        if woken {
            self.work.notify_one();
        }
        Ok(woken)
    }

    async fn saga_cancel_request(&self, id: Uuid, now_ms: i64, job: Option<&JobMark>) -> StoreResult<SagaRecord> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        if let Some(mark) = job {
            store_sql::jobs::item_done::<crate::dialect::Lite>(&mut tx, mark, now_ms).await?;
        }
        let row = sqlx::query(&format!(
            "UPDATE sagas SET cancel_requested_at = COALESCE(cancel_requested_at, ?1), wake_seq = wake_seq + 1, \
               updated_at = ?1, run_at = CASE WHEN lease_owner IS NULL THEN MIN(run_at, ?1) ELSE run_at END \
             WHERE id = ?2 AND status IN ('PENDING', 'EXECUTING', 'COMPENSATING') RETURNING {SAGA_COLUMNS}"
        ))
        .bind(now_ms)
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        match row {
            Some(row) => {
                tx.commit().await.map_err(db)?;
                self.work.notify_one();
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
