//! Saga inserts for a batch of creates ([`saga_store::SagaCreates`] gathers them). With
//! `synchronous=FULL` every SQLite commit is an fsync, and creates arrive one per HTTP request;
//! one transaction for the whole batch makes one fsync serve them all.

use saga_core::HistoryEvent;
use saga_store::{SagaCreate, SagaRecord, StoreResult};
use sqlx::{SqliteConnection, SqlitePool};

use super::history::insert_events;
use crate::rows::{self, db, json_text, SAGA_COLUMNS};

/// Inserts the batch in one transaction; per create, its row or None (key taken, version moved).
pub async fn insert_batch(writer: &SqlitePool, batch: &[SagaCreate]) -> StoreResult<Vec<Option<SagaRecord>>> {
    let mut tx = writer.begin().await.map_err(db)?;
    let mut records = Vec::with_capacity(batch.len());
    for params in batch {
        records.push(insert_one(&mut tx, params).await?);
    }
    tx.commit().await.map_err(db)?;
    Ok(records)
}

/// One create inside the caller's transaction: None when its idempotency key is taken (within
/// this transaction too) or `require_latest` is set and a newer version exists.
pub(crate) async fn insert_one(conn: &mut SqliteConnection, params: &SagaCreate) -> StoreResult<Option<SagaRecord>> {
    if let Some(key) = &params.idempotency_key {
        let taken: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM sagas WHERE idempotency_key = ?")
            .bind(key)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
        if taken.is_some() {
            return Ok(None);
        }
    }
    if params.require_latest {
        let latest: (Option<i64>,) = sqlx::query_as("SELECT MAX(version) FROM definitions WHERE name = ?")
            .bind(&params.definition)
            .fetch_one(&mut *conn)
            .await
            .map_err(db)?;
        if latest.0 != Some(i64::from(params.version)) {
            return Ok(None);
        }
    }
    saga_store::creates::check(params)?;
    let id = params.id.to_string();
    let lease_expires_at = params.lease.as_ref().map(|l| params.now_ms + l.lease_ttl_ms);
    let row = sqlx::query(&format!(
        "INSERT INTO sagas (id, tenant_id, definition, version, status, input, state, priority, run_at, \
         fencing_token, event_seq, idempotency_key, request_hash, created_at, updated_at, lease_owner, lease_expires_at, \
         deadline_at, concurrency_key, concurrency_limit, retention_ms, completed_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {SAGA_COLUMNS}"
    ))
    .bind(&id)
    .bind(&params.tenant_id)
    .bind(&params.definition)
    .bind(params.version)
    .bind(params.state.status.as_str())
    .bind(json_text(&params.input)?)
    .bind(json_text(&params.state)?)
    .bind(params.priority)
    .bind(lease_expires_at.unwrap_or(params.now_ms))
    .bind(if params.lease.is_some() { 1i64 } else { 0i64 })
    .bind(&params.idempotency_key)
    .bind(&params.request_hash)
    .bind(params.now_ms)
    .bind(params.now_ms)
    .bind(params.lease.as_ref().map(|l| l.worker_id.clone()))
    .bind(lease_expires_at)
    .bind(params.state.deadline_at_ms)
    .bind(params.concurrency.as_ref().map(|c| c.0.clone()))
    .bind(params.concurrency.as_ref().map(|c| i64::from(c.1)))
    .bind(params.retention_ms)
    // A saga created already finished (a child saga's tombstone) ages out like any other.
    .bind(params.state.status.is_terminal().then_some(params.now_ms))
    .fetch_one(&mut *conn)
    .await
    .map_err(db)?;
    let record = rows::saga(&row)?;
    let created = HistoryEvent::new(
        "saga_created",
        None,
        None,
        serde_json::json!({"definition": params.definition, "version": params.version}),
        params.now_ms,
    );
    insert_events(conn, &id, params.tenant_id.as_deref(), 1, None, &[created]).await?;
    Ok(Some(record))
}
