//! Group commit for saga creation. With `synchronous=FULL` every SQLite commit is an fsync, and
//! creates arrive one per HTTP request; a writer task takes every create queued while the
//! previous transaction committed and writes them in one transaction. Each create is still
//! answered only after its transaction is durable.

use saga_core::HistoryEvent;
use saga_store::{SagaCreate, SagaCreated, StoreError, StoreResult, WorkSignal};
use sqlx::{Row, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use crate::rows::{self, SAGA_COLUMNS};
use crate::store::{db, json_text, SqliteStore};

/// Creates waiting for the writer before callers block.
pub const CREATE_QUEUE_MAX: usize = 4096;
/// The most creates in one transaction.
pub const CREATE_BATCH_MAX: usize = 512;

type Request = (SagaCreate, oneshot::Sender<StoreResult<SagaCreated>>);

/// Hands creates to the writer task.
pub(crate) struct CreateBatcher {
    sender: mpsc::Sender<Request>,
}

impl CreateBatcher {
    pub fn start(writer: SqlitePool, work: WorkSignal) -> (CreateBatcher, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(CREATE_QUEUE_MAX);
        (CreateBatcher { sender }, tokio::spawn(run(writer, work, receiver)))
    }

    pub async fn create(&self, params: SagaCreate) -> StoreResult<SagaCreated> {
        let (reply, answer) = oneshot::channel();
        self.sender.send((params, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::backend(std::io::Error::other("the sqlite create writer stopped"))
}

async fn run(writer: SqlitePool, work: WorkSignal, mut receiver: mpsc::Receiver<Request>) {
    while let Some(batch) = saga_store::next_batch(&mut receiver, CREATE_BATCH_MAX).await {
        let (params, replies): (Vec<SagaCreate>, Vec<_>) = batch.into_iter().unzip();
        let outcomes: Vec<StoreResult<SagaCreated>> = match write_batch(&writer, &params).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(e) if params.len() == 1 => vec![Err(e)],
            Err(e) => {
                // The transaction rolled back whole: write each create in its own, so one that
                // cannot be written fails alone.
                tracing::warn!(error = %e, batch = params.len(), "batched create failed; writing each on its own");
                let mut each = Vec::with_capacity(params.len());
                for one in &params {
                    each.push(write_batch(&writer, std::slice::from_ref(one)).await.and_then(|mut o| {
                        o.pop().ok_or_else(|| StoreError::Corrupt("a create wrote no outcome".into()))
                    }));
                }
                each
            }
        };
        let wake =
            outcomes.iter().zip(&params).any(|(o, p)| matches!(o, Ok(SagaCreated::Created(_))) && p.lease.is_none());
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            if let Err(e) = &outcome {
                tracing::error!(error = %e, "creating a saga failed");
            }
            let _ = reply.send(outcome);
        }
        if wake {
            work.notify_one();
        }
    }
}

async fn write_batch(writer: &SqlitePool, batch: &[SagaCreate]) -> StoreResult<Vec<SagaCreated>> {
    let mut tx = writer.begin().await.map_err(db)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for params in batch {
        outcomes.push(create_one(&mut tx, params).await?);
    }
    tx.commit().await.map_err(db)?;
    Ok(outcomes)
}

/// One create inside the batch's transaction (so a key reused within one batch replays).
pub(crate) async fn create_one(conn: &mut SqliteConnection, params: &SagaCreate) -> StoreResult<SagaCreated> {
    if let Some(key) = &params.idempotency_key {
        let existing =
            sqlx::query(&format!("SELECT {SAGA_COLUMNS}, request_hash FROM sagas WHERE idempotency_key = ?"))
                .bind(key)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db)?;
        if let Some(row) = existing {
            let hash: Option<String> = row.try_get("request_hash").map_err(db)?;
            let record = rows::saga(&row)?;
            return Ok(if hash == params.request_hash {
                SagaCreated::Replayed(record)
            } else {
                SagaCreated::KeyConflict
            });
        }
    }
    if params.require_latest {
        let latest: (Option<i64>,) = sqlx::query_as("SELECT MAX(version) FROM definitions WHERE name = ?")
            .bind(&params.definition)
            .fetch_one(&mut *conn)
            .await
            .map_err(db)?;
        if latest.0 != Some(i64::from(params.version)) {
            return Ok(SagaCreated::VersionMoved);
        }
    }
    if params.concurrency.is_some() && params.lease.is_some() {
        return Err(StoreError::Conflict(
            "a saga with a concurrency key waits for admission; it cannot be created leased".into(),
        ));
    }
    let id = params.id.to_string();
    let lease_expires_at = params.lease.as_ref().map(|l| params.now_ms + l.lease_ttl_ms);
    let row = sqlx::query(&format!(
        "INSERT INTO sagas (id, tenant_id, definition, version, status, input, state, priority, run_at, \
         fencing_token, event_seq, idempotency_key, request_hash, created_at, updated_at, lease_owner, lease_expires_at, \
         deadline_at, concurrency_key, concurrency_limit) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {SAGA_COLUMNS}"
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
    SqliteStore::insert_events(conn, &id, params.tenant_id.as_deref(), 1, None, &[created]).await?;
    Ok(SagaCreated::Created(record))
}
