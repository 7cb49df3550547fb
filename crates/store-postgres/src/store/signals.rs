//! Signals and async callbacks: buffered durably, each wakes its saga.

use async_trait::async_trait;
use saga_store::{
    CallbackRecord, CallbackRegister, JobMark, SagaStore, SignalRecord, SignalStore, StoreError, StoreResult,
};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::Row;
use uuid::Uuid;

use super::PostgresStore;
use crate::rows::{changed_one, db};

#[async_trait]
impl SignalStore for PostgresStore {
    async fn signal_send(
        &self,
        id: Uuid,
        name: &str,
        payload: &Value,
        now_ms: i64,
        job: Option<&JobMark>,
    ) -> StoreResult<SignalRecord> {
        let mut tx = self.db.begin().await.map_err(db)?;
        if let Some(mark) = job {
            store_sql::jobs::item_done::<crate::dialect::Pg>(&mut tx, mark, now_ms).await?;
        }
        // Wake first: it locks the saga row, so a terminal saga gets nothing buffered.
        if !Self::wake(&mut tx, id, now_ms).await? {
            drop(tx);
            let existing = self.saga_get(id).await?;
            return Err(StoreError::Conflict(format!("saga is {}", existing.status.as_str())));
        }
        let signal_id: i64 = sqlx::query_scalar(
            "INSERT INTO saga_signals (saga_id, tenant_id, name, payload, received_at) \
             SELECT id, tenant_id, $2, $3, $4 FROM sagas WHERE id = $1 RETURNING id",
        )
        .bind(id)
        .bind(name)
        .bind(Json(payload))
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        self.announce_work();
        Ok(SignalRecord { id: signal_id, name: name.to_string(), payload: payload.clone(), received_at_ms: now_ms })
    }

    async fn signal_find(&self, id: Uuid, name: &str, consumed: &[i64]) -> StoreResult<Option<SignalRecord>> {
        let row = sqlx::query(
            "SELECT id, name, payload, received_at FROM saga_signals \
             WHERE saga_id = $1 AND name = $2 AND NOT (id = ANY($3)) ORDER BY id LIMIT 1",
        )
        .bind(id)
        .bind(name)
        .bind(consumed)
        .fetch_optional(&self.db)
        .await
        .map_err(db)?;
        row.map(|row| {
            let payload: Json<Value> = row.try_get("payload").map_err(db)?;
            Ok(SignalRecord {
                id: row.try_get("id").map_err(db)?,
                name: row.try_get("name").map_err(db)?,
                payload: payload.0,
                received_at_ms: row.try_get("received_at").map_err(db)?,
            })
        })
        .transpose()
    }

    async fn callback_register(&self, params: CallbackRegister) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO saga_callbacks (token_hash, saga_id, tenant_id, step, attempt, heartbeat_timeout_ms, \
                                         deadline_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7 + $6, $7)",
        )
        .bind(&params.token_hash)
        .bind(params.saga_id)
        .bind(&params.tenant_id)
        .bind(&params.step)
        .bind(params.attempt as i32)
        .bind(params.heartbeat_timeout_ms)
        .bind(params.now_ms)
        .execute(&self.db)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn callback_complete(&self, token_hash: &str, result: &Value, now_ms: i64) -> StoreResult<Uuid> {
        let mut tx = self.db.begin().await.map_err(db)?;
        let saga_id: Option<Uuid> = sqlx::query_scalar(
            "UPDATE saga_callbacks SET result = $2, completed_at = $3 \
             WHERE token_hash = $1 AND completed_at IS NULL AND (deadline_at IS NULL OR deadline_at > $3) \
             RETURNING saga_id",
        )
        .bind(token_hash)
        .bind(Json(result))
        .bind(now_ms)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let saga_id = saga_id.ok_or(StoreError::NotFound)?;
        Self::wake(&mut tx, saga_id, now_ms).await?;
        tx.commit().await.map_err(db)?;
        self.announce_work();
        Ok(saga_id)
    }

    async fn callback_heartbeat(&self, token_hash: &str, now_ms: i64) -> StoreResult<()> {
        let updated = sqlx::query(
            "UPDATE saga_callbacks SET deadline_at = $2 + heartbeat_timeout_ms \
             WHERE token_hash = $1 AND completed_at IS NULL AND (deadline_at IS NULL OR deadline_at > $2)",
        )
        .bind(token_hash)
        .bind(now_ms)
        .execute(&self.db)
        .await
        .map_err(db)?;
        changed_one(updated.rows_affected())
    }

    async fn callback_close(&self, id: Uuid, step: &str, attempt: u32, now_ms: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE saga_callbacks SET completed_at = $4 \
             WHERE saga_id = $1 AND step = $2 AND attempt = $3 AND completed_at IS NULL",
        )
        .bind(id)
        .bind(step)
        .bind(attempt as i32)
        .bind(now_ms)
        .execute(&self.db)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn callback_get(&self, id: Uuid, step: &str, attempt: u32) -> StoreResult<Option<CallbackRecord>> {
        let row = sqlx::query(
            "SELECT result, deadline_at FROM saga_callbacks WHERE saga_id = $1 AND step = $2 AND attempt = $3 \
             ORDER BY (result IS NULL), deadline_at DESC, created_at DESC LIMIT 1",
        )
        .bind(id)
        .bind(step)
        .bind(attempt as i32)
        .fetch_optional(&self.db)
        .await
        .map_err(db)?;
        row.map(|row| {
            let result: Option<Json<Value>> = row.try_get("result").map_err(db)?;
            Ok(CallbackRecord { result: result.map(|r| r.0), deadline_at_ms: row.try_get("deadline_at").map_err(db)? })
        })
        .transpose()
    }
}
