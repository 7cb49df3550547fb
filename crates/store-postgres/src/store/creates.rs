//! Saga inserts as one multi-row statement (one round trip, one transaction, one WAL flush) for
//! a whole batch of creates ([`saga_store::SagaCreates`] gathers them). Measured on saga3,
//! creates were one transaction per saga while the steps of ~28 sagas shared one; see
//! docs/benchmarks.md.
//!
//! Semantics are exactly those of one `INSERT` per saga: a saga whose idempotency key is taken
//! (by an earlier saga or by another one in the same batch) or whose definition version is no
//! longer the latest is not inserted (no row comes back for it).

use std::collections::HashMap;

use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use saga_store::creates::check;
use saga_store::{SagaCreate, StoreError, StoreResult};

use crate::rows::SAGA_COLUMNS;

/// Columns of the creates, as parallel arrays for one `UNNEST`.
#[derive(Default)]
struct Columns {
    id: Vec<Uuid>,
    tenant_id: Vec<Option<String>>,
    definition: Vec<String>,
    version: Vec<i32>,
    status: Vec<&'static str>,
    input: Vec<String>,
    state: Vec<String>,
    priority: Vec<i32>,
    now: Vec<i64>,
    idempotency_key: Vec<Option<String>>,
    request_hash: Vec<Option<String>>,
    created_data: Vec<String>,
    require_latest: Vec<bool>,
    lease_owner: Vec<Option<String>>,
    lease_expires_at: Vec<Option<i64>>,
    fencing_token: Vec<i64>,
    deadline_at: Vec<Option<i64>>,
    concurrency_key: Vec<Option<String>>,
    concurrency_limit: Vec<Option<i32>>,
    retention_ms: Vec<Option<i64>>,
}

fn text(value: &impl serde::Serialize) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Columns {
    fn push(&mut self, p: &SagaCreate) -> StoreResult<()> {
        self.id.push(p.id);
        self.tenant_id.push(p.tenant_id.clone());
        self.definition.push(p.definition.clone());
        self.version.push(p.version);
        self.status.push(p.state.status.as_str());
        self.input.push(text(&p.input)?);
        self.state.push(text(&p.state)?);
        self.priority.push(p.priority);
        self.now.push(p.now_ms);
        self.idempotency_key.push(p.idempotency_key.clone());
        self.request_hash.push(p.request_hash.clone());
        self.created_data.push(text(&serde_json::json!({"definition": p.definition, "version": p.version}))?);
        self.require_latest.push(p.require_latest);
        self.lease_owner.push(p.lease.as_ref().map(|l| l.worker_id.clone()));
        self.lease_expires_at.push(p.lease.as_ref().map(|l| p.now_ms + l.lease_ttl_ms));
        self.fencing_token.push(if p.lease.is_some() { 1 } else { 0 });
        self.deadline_at.push(p.state.deadline_at_ms);
        self.concurrency_key.push(p.concurrency.as_ref().map(|c| c.0.clone()));
        self.concurrency_limit.push(p.concurrency.as_ref().map(|c| c.1 as i32));
        self.retention_ms.push(p.retention_ms);
        Ok(())
    }
}

/// Inserts the sagas (one statement: the rows, their first history rows and their concurrency
/// keys) and returns the inserted rows by id. Also used alone inside the transactions that
/// create a tenant's saga with the tenant's change.
pub async fn insert<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Postgres>,
    creates: &[&SagaCreate],
) -> StoreResult<HashMap<Uuid, PgRow>> {
    // Rows go in idempotency-key order, so two instances' batches that share keys take their
    // unique-index waits in the same order (no deadlock between them).
    let mut order: Vec<&SagaCreate> = creates.to_vec();
    order.sort_by(|a, b| a.idempotency_key.cmp(&b.idempotency_key));
    let mut c = Columns::default();
    for create in order {
        check(create)?;
        c.push(create)?;
    }
    let rows = sqlx::query(&format!(
        "WITH c AS ( \
           SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::text[], $6::text[], $7::text[], \
                                $8::int4[], $9::bigint[], $10::text[], $11::text[], $12::text[], $13::bool[], \
                                $14::text[], $15::bigint[], $16::bigint[], $17::bigint[], $18::text[], $19::int4[], $20::bigint[]) \
             WITH ORDINALITY AS c(id, tenant_id, definition, version, status, input, state, priority, now, \
                                  idempotency_key, request_hash, created_data, require_latest, lease_owner, \
                                  lease_expires_at, fencing_token, deadline_at, concurrency_key, concurrency_limit, \
                                  retention_ms, n)), \
         s AS ( \
           INSERT INTO sagas (id, tenant_id, definition, version, status, input, state, priority, run_at, \
                              fencing_token, event_seq, idempotency_key, request_hash, created_at, updated_at, \
                              lease_owner, lease_expires_at, deadline_at, concurrency_key, concurrency_limit, \
                              retention_ms, completed_at) \
           SELECT c.id, c.tenant_id, c.definition, c.version, c.status, c.input::jsonb, c.state::json, c.priority, \
                  COALESCE(c.lease_expires_at, c.now), c.fencing_token, 1, c.idempotency_key, c.request_hash, \
                  c.now, c.now, c.lease_owner, c.lease_expires_at, c.deadline_at, c.concurrency_key, \
                  c.concurrency_limit, c.retention_ms, \
                  CASE WHEN c.status IN ('COMPLETED', 'COMPENSATED', 'FAILED') THEN c.now END \
           FROM c \
           WHERE NOT c.require_latest \
              OR c.version = (SELECT MAX(d.version) FROM definitions d WHERE d.name = c.definition) \
           ORDER BY c.n \
           ON CONFLICT (idempotency_key) DO NOTHING RETURNING *), \
         e AS (INSERT INTO saga_events (saga_id, seq, tenant_id, kind, data, at) \
               SELECT s.id, 1, s.tenant_id, 'saga_created', c.created_data::jsonb, s.created_at \
               FROM s JOIN c ON c.id = s.id), \
         k AS (INSERT INTO concurrency_keys (key) \
               SELECT DISTINCT concurrency_key FROM s WHERE concurrency_key IS NOT NULL ORDER BY 1 \
               ON CONFLICT DO NOTHING) \
         SELECT {SAGA_COLUMNS} FROM s"
    ))
    .bind(&c.id)
    .bind(&c.tenant_id)
    .bind(&c.definition)
    .bind(&c.version)
    .bind(&c.status)
    .bind(&c.input)
    .bind(&c.state)
    .bind(&c.priority)
    .bind(&c.now)
    .bind(&c.idempotency_key)
    .bind(&c.request_hash)
    .bind(&c.created_data)
    .bind(&c.require_latest)
    .bind(&c.lease_owner)
    .bind(&c.lease_expires_at)
    .bind(&c.fencing_token)
    .bind(&c.deadline_at)
    .bind(&c.concurrency_key)
    .bind(&c.concurrency_limit)
    .bind(&c.retention_ms)
    .fetch_all(executor)
    .await
    .map_err(crate::rows::db)?;
    let mut by_id = HashMap::with_capacity(rows.len());
    for row in rows {
        let id: Uuid = row.try_get("id").map_err(crate::rows::db)?;
        by_id.insert(id, row);
    }
    Ok(by_id)
}
