//! Saga inserts for a batch of creates ([`saga_store::SagaCreates`] gathers them). With
//! `synchronous=FULL` every SQLite commit is an fsync, and creates arrive one per HTTP request;
//! one transaction for the whole batch makes one fsync serve them all, and one statement for its
//! sagas (and one for their first history rows) keeps the round trips to SQLite's worker thread
//! from growing with it.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use saga_core::HistoryEvent;
use saga_store::{SagaCreate, SagaRecord, StoreResult};
use serde::Serialize;
use sqlx::{SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::history::HistoryRows;
use crate::rows::{self, db, json_text, SAGA_COLUMNS};

/// Inserts the batch in one transaction; per create, its row or None (key taken, version moved).
pub async fn insert_batch(writer: &SqlitePool, batch: &[SagaCreate]) -> StoreResult<Vec<Option<SagaRecord>>> {
    let mut tx = writer.begin().await.map_err(db)?;
    let records = insert_many(&mut tx, batch).await?;
    tx.commit().await.map_err(db)?;
    Ok(records)
}

/// One create inside the caller's transaction: None when its idempotency key is taken (within
/// this transaction too) or `require_latest` is set and a newer version exists.
pub(crate) async fn insert_one(conn: &mut SqliteConnection, params: &SagaCreate) -> StoreResult<Option<SagaRecord>> {
    Ok(insert_many(conn, std::slice::from_ref(params)).await?.pop().flatten())
}

/// One create as [`INSERT_MANY`] reads it: a JSON array in its columns' order.
#[derive(Serialize)]
struct Insert<'a>(
    String,
    Option<&'a str>,
    &'a str,
    i64,
    &'a str,
    String,
    String,
    i32,
    i64,
    i64,
    Option<&'a str>,
    Option<&'a str>,
    i64,
    Option<&'a str>,
    Option<i64>,
    Option<i64>,
    Option<&'a str>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    bool,
);

/// Inserts every create of `?` in array order, each skipped when its idempotency key is taken (by a
/// saga inserted earlier in the same statement too) or, with `require_latest`, when its version
/// is not the definition's latest.
static INSERT_MANY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO sagas (id, tenant_id, definition, version, status, input, state, priority, run_at, \
         fencing_token, event_seq, idempotency_key, request_hash, created_at, updated_at, lease_owner, lease_expires_at, \
         deadline_at, concurrency_key, concurrency_limit, retention_ms, completed_at) \
         SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, value->>7, value->>8, \
         value->>9, 1, value->>10, value->>11, value->>12, value->>12, value->>13, value->>14, value->>15, \
         value->>16, value->>17, value->>18, value->>19 \
         FROM json_each(?) \
         WHERE NOT (value->>20) OR value->>3 = (SELECT MAX(version) FROM definitions WHERE name = value->>2) \
         ON CONFLICT (idempotency_key) DO NOTHING \
         RETURNING {SAGA_COLUMNS}"
    )
});

/// The creates in one statement inside the caller's transaction: per create, its row or None.
pub(crate) async fn insert_many(
    conn: &mut SqliteConnection,
    batch: &[SagaCreate],
) -> StoreResult<Vec<Option<SagaRecord>>> {
    // Rows come back by id: a batch naming one id twice (a child's create from a zombie beside
    // its successor's) is written create by create, so each row has one create to answer.
    let mut ids = HashSet::new();
    if batch.len() > 1 && !batch.iter().all(|params| ids.insert(params.id)) {
        let mut records = Vec::with_capacity(batch.len());
        for params in batch {
            records.push(Box::pin(insert_one(conn, params)).await?);
        }
        return Ok(records);
    }
    let mut inserts = Vec::with_capacity(batch.len());
    for params in batch {
        saga_store::creates::check(params)?;
        let lease_expires_at = params.lease.as_ref().map(|l| params.now_ms + l.lease_ttl_ms);
        inserts.push(Insert(
            params.id.to_string(),
            params.tenant_id.as_deref(),
            &params.definition,
            i64::from(params.version),
            params.state.status.as_str(),
            json_text(&params.input)?,
            json_text(&params.state)?,
            params.priority,
            lease_expires_at.unwrap_or(params.now_ms),
            i64::from(params.lease.is_some()),
            params.idempotency_key.as_deref(),
            params.request_hash.as_deref(),
            params.now_ms,
            params.lease.as_ref().map(|l| l.worker_id.as_str()),
            lease_expires_at,
            params.state.deadline_at_ms,
            params.concurrency.as_ref().map(|c| c.0.as_str()),
            params.concurrency.as_ref().map(|c| i64::from(c.1)),
            params.retention_ms,
            // A saga created already finished (a child saga's tombstone) ages out like any other.
            params.state.status.is_terminal().then_some(params.now_ms),
            params.require_latest,
        ));
    }
    let rows = sqlx::query(&INSERT_MANY).bind(json_text(&inserts)?).fetch_all(&mut *conn).await.map_err(db)?;
    let mut inserted: HashMap<Uuid, SagaRecord> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let record = rows::saga(row)?;
        inserted.insert(record.id, record);
    }
    let records: Vec<Option<SagaRecord>> = batch.iter().map(|params| inserted.remove(&params.id)).collect();
    let created: Vec<(usize, HistoryEvent)> = batch
        .iter()
        .enumerate()
        .filter(|(i, _)| records[*i].is_some())
        .map(|(i, params)| {
            let data = serde_json::json!({"definition": params.definition, "version": params.version});
            (i, HistoryEvent::new("saga_created", None, None, data, params.now_ms))
        })
        .collect();
    let mut history = HistoryRows::default();
    for (i, event) in &created {
        history.push(&inserts[*i].0, batch[*i].tenant_id.as_deref(), 1, None, std::slice::from_ref(event))?;
    }
    history.insert(conn).await?;
    Ok(records)
}
