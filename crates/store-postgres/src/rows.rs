//! Decoding PostgreSQL rows into store records.

use saga_core::tenant::{SlaTier, StorageMode, TenantStatus, Tier};
use saga_core::{SagaState, SagaStatus};
use saga_store::{EventRecord, SagaRecord, StoreError, StoreResult, TenantRecord};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::Row;

pub const SAGA_COLUMNS: &str = "s.id, s.tenant_id, s.definition, s.version, s.status, s.input, s.state, s.priority, \
     s.run_at, s.lease_owner, s.lease_expires_at, s.fencing_token, s.created_at, s.updated_at, s.completed_at, s.previous_owner, \
     s.cancel_requested_at, s.wake_seq, s.concurrency_key";

/// A database error at the store boundary: unreachable or a statement that failed.
pub(crate) fn db(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::unavailable(e),
        // A read-only server (a demoted primary, a standby): the write goes nowhere; the
        // connection is checked and dropped before reuse (crate::connect::PrimaryGuard).
        e if crate::connect::is_read_only(&e) => StoreError::unavailable(e),
        // The server went away mid-conversation or will not take connections now: a failover,
        // a restart, a proxy with no server behind it.
        e if crate::connect::is_server_gone(&e) => StoreError::unavailable(e),
        e => StoreError::backend(e),
    }
}

/// [`StoreError::NotFound`] unless the statement changed a row.
pub(crate) fn changed_one(rows_affected: u64) -> StoreResult<()> {
    if rows_affected == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

pub(crate) fn json_text(value: &impl serde::Serialize) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub fn saga(row: &PgRow) -> StoreResult<SagaRecord> {
    let status: String = row.try_get("status").map_err(db)?;
    let input: Json<Value> = row.try_get("input").map_err(db)?;
    let state: Json<SagaState> = row.try_get("state").map_err(db)?;
    Ok(SagaRecord {
        id: row.try_get("id").map_err(db)?,
        tenant_id: row.try_get("tenant_id").map_err(db)?,
        definition: row.try_get("definition").map_err(db)?,
        version: row.try_get("version").map_err(db)?,
        status: SagaStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("saga status {status:?}")))?,
        input: input.0,
        state: state.0,
        priority: row.try_get("priority").map_err(db)?,
        run_at_ms: row.try_get("run_at").map_err(db)?,
        lease_owner: row.try_get("lease_owner").map_err(db)?,
        lease_expires_at_ms: row.try_get("lease_expires_at").map_err(db)?,
        fencing_token: row.try_get("fencing_token").map_err(db)?,
        created_at_ms: row.try_get("created_at").map_err(db)?,
        updated_at_ms: row.try_get("updated_at").map_err(db)?,
        completed_at_ms: row.try_get("completed_at").map_err(db)?,
        cancel_requested_at_ms: row.try_get("cancel_requested_at").map_err(db)?,
        wake_seq: row.try_get("wake_seq").map_err(db)?,
        concurrency_key: row.try_get("concurrency_key").map_err(db)?,
    })
}

pub fn event(row: &PgRow) -> StoreResult<EventRecord> {
    let data: Json<Value> = row.try_get("data").map_err(db)?;
    let attempt: Option<i32> = row.try_get("attempt").map_err(db)?;
    Ok(EventRecord {
        seq: row.try_get("seq").map_err(db)?,
        kind: row.try_get("kind").map_err(db)?,
        step: row.try_get("step").map_err(db)?,
        attempt: attempt.map(|a| a as u32),
        worker: row.try_get("worker").map_err(db)?,
        data: data.0,
        at_ms: row.try_get("at").map_err(db)?,
    })
}

pub const TENANT_COLUMNS: &str = "t.id, t.name, t.tier, t.storage_mode, t.sla_tier, t.status, t.domains, t.contacts, \
     t.metadata, t.storage, t.migrations, t.saga_id, t.error, t.created_at, t.updated_at, t.delete_at";

fn parsed<T>(row: &PgRow, column: &str, parse: fn(&str) -> Option<T>) -> StoreResult<T> {
    let text: String = row.try_get(column).map_err(db)?;
    parse(&text).ok_or_else(|| StoreError::Corrupt(format!("tenant {column} {text:?}")))
}

pub fn tenant(row: &PgRow) -> StoreResult<TenantRecord> {
    let json = |column: &str| -> StoreResult<Value> {
        let value: Json<Value> = row.try_get(column).map_err(db)?;
        Ok(value.0)
    };
    let error: Option<Json<Value>> = row.try_get("error").map_err(db)?;
    Ok(TenantRecord {
        id: row.try_get("id").map_err(db)?,
        name: row.try_get("name").map_err(db)?,
        tier: parsed(row, "tier", Tier::parse)?,
        storage_mode: parsed(row, "storage_mode", StorageMode::parse)?,
        sla_tier: parsed(row, "sla_tier", SlaTier::parse)?,
        status: parsed(row, "status", TenantStatus::parse)?,
        domains: json("domains")?,
        contacts: json("contacts")?,
        metadata: json("metadata")?,
        storage: json("storage")?,
        migrations: json("migrations")?,
        saga_id: row.try_get("saga_id").map_err(db)?,
        error: error.map(|e| e.0),
        created_at_ms: row.try_get("created_at").map_err(db)?,
        updated_at_ms: row.try_get("updated_at").map_err(db)?,
        delete_at_ms: row.try_get("delete_at").map_err(db)?,
    })
}
