//! Signals and async callbacks: buffered durably, each wakes its saga.

use async_trait::async_trait;
use saga_store::{
    CallbackRecord, CallbackRegister, JobMark, SagaStore, SignalRecord, SignalStore, StoreError, StoreResult,
};
use serde_json::Value;
use sqlx::Row;
use uuid::Uuid;

use super::SqliteStore;
use crate::rows::{changed_one, db, json_text};

#[async_trait]
impl SignalStore for SqliteStore {
    async fn signal_send(
        &self,
        id: Uuid,
        name: &str,
        payload: &Value,
        now_ms: i64,
        job: Option<&JobMark>,
    ) -> StoreResult<SignalRecord> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        if let Some(mark) = job {
            store_sql::jobs::item_done::<crate::dialect::Lite>(&mut tx, mark, now_ms).await?;
        }
        if !wake(&mut tx, id, now_ms).await? {
            drop(tx);
            let existing = self.saga_get(id).await?;
            return Err(StoreError::Conflict(format!("saga is {}", existing.status.as_str())));
        }
        let signal_id: i64 = sqlx::query_scalar(
            "INSERT INTO saga_signals (saga_id, tenant_id, name, payload, received_at) \
             SELECT id, tenant_id, ?, ?, ? FROM sagas WHERE id = ? RETURNING id",
        )
        .bind(name)
        .bind(json_text(payload)?)
        .bind(now_ms)
        .bind(id.to_string())
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        self.work.notify_one();
        Ok(SignalRecord { id: signal_id, name: name.to_string(), payload: payload.clone(), received_at_ms: now_ms })
    }

    async fn signal_find(&self, id: Uuid, name: &str, consumed: &[i64]) -> StoreResult<Option<SignalRecord>> {
        let consumed = json_text(&consumed)?;
        let row = sqlx::query(
            "SELECT id, name, payload, received_at FROM saga_signals \
             WHERE saga_id = ? AND name = ? AND id NOT IN (SELECT value FROM json_each(?)) ORDER BY id LIMIT 1",
        )
        .bind(id.to_string())
        .bind(name)
        .bind(consumed)
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?;
        row.map(|row| {
            let payload: String = row.try_get("payload").map_err(db)?;
            Ok(SignalRecord {
                id: row.try_get("id").map_err(db)?,
                name: row.try_get("name").map_err(db)?,
                payload: serde_json::from_str(&payload).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                received_at_ms: row.try_get("received_at").map_err(db)?,
            })
        })
        .transpose()
    }

    async fn callback_register(&self, params: CallbackRegister) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO saga_callbacks (token_hash, saga_id, tenant_id, step, attempt, heartbeat_timeout_ms, \
                                         deadline_at, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7 + ?6, ?7)",
        )
        .bind(&params.token_hash)
        .bind(params.saga_id.to_string())
        .bind(&params.tenant_id)
        .bind(&params.step)
        .bind(i64::from(params.attempt))
        .bind(params.heartbeat_timeout_ms)
        .bind(params.now_ms)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn callback_complete(&self, token_hash: &str, result: &Value, now_ms: i64) -> StoreResult<Uuid> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        let saga_id: Option<String> = sqlx::query_scalar(
            "UPDATE saga_callbacks SET result = ?1, completed_at = ?2 \
             WHERE token_hash = ?3 AND completed_at IS NULL AND (deadline_at IS NULL OR deadline_at > ?2) \
             RETURNING saga_id",
        )
        .bind(json_text(result)?)
        .bind(now_ms)
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let saga_id = saga_id.ok_or(StoreError::NotFound)?;
        let saga_id = Uuid::parse_str(&saga_id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        wake(&mut tx, saga_id, now_ms).await?;
        tx.commit().await.map_err(db)?;
        self.work.notify_one();
        Ok(saga_id)
    }

    async fn callback_heartbeat(&self, token_hash: &str, now_ms: i64) -> StoreResult<()> {
        let updated = sqlx::query(
            "UPDATE saga_callbacks SET deadline_at = ?1 + heartbeat_timeout_ms \
             WHERE token_hash = ?2 AND completed_at IS NULL AND (deadline_at IS NULL OR deadline_at > ?1)",
        )
        .bind(now_ms)
        .bind(token_hash)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        changed_one(updated.rows_affected())
    }

    async fn callback_close(&self, id: Uuid, step: &str, attempt: u32, now_ms: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE saga_callbacks SET completed_at = ? \
             WHERE saga_id = ? AND step = ? AND attempt = ? AND completed_at IS NULL",
        )
        .bind(now_ms)
        .bind(id.to_string())
        .bind(step)
        .bind(i64::from(attempt))
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn callback_get(&self, id: Uuid, step: &str, attempt: u32) -> StoreResult<Option<CallbackRecord>> {
        let row = sqlx::query(
            "SELECT result, deadline_at FROM saga_callbacks WHERE saga_id = ? AND step = ? AND attempt = ? \
             ORDER BY (result IS NULL), deadline_at DESC, created_at DESC LIMIT 1",
        )
        .bind(id.to_string())
        .bind(step)
        .bind(i64::from(attempt))
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?;
        row.map(|row| {
            let result: Option<String> = row.try_get("result").map_err(db)?;
            let result =
                result.map(|r| serde_json::from_str(&r)).transpose().map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok(CallbackRecord { result, deadline_at_ms: row.try_get("deadline_at").map_err(db)? })
        })
        .transpose()
    }
}

/// See the PostgreSQL store's `wake`.
pub(super) async fn wake(conn: &mut sqlx::SqliteConnection, id: Uuid, now_ms: i64) -> StoreResult<bool> {
    let woken = sqlx::query(
        "UPDATE sagas SET wake_seq = wake_seq + 1, updated_at = ?1, \
           run_at = CASE WHEN lease_owner IS NULL THEN MIN(run_at, ?1) ELSE run_at END \
         WHERE id = ?2 AND status IN ('PENDING', 'EXECUTING', 'COMPENSATING')",
    )
    .bind(now_ms)
    .bind(id.to_string())
    .execute(conn)
    .await
    .map_err(db)?;
    Ok(woken.rows_affected() == 1)
}
