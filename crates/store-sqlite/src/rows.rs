//! Decoding SQLite rows into store records.

use saga_core::tenant::{SlaTier, StorageMode, TenantStatus, Tier};
use saga_core::{SagaState, SagaStatus};
use saga_store::{EventRecord, SagaRecord, StoreError, StoreResult, TenantRecord};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

pub const SAGA_COLUMNS: &str = "id, tenant_id, definition, version, status, input, state, priority, run_at, \
     lease_owner, lease_expires_at, fencing_token, created_at, updated_at, completed_at, previous_owner, \
     cancel_requested_at, wake_seq, concurrency_key";

/// A database error at the store boundary: unreachable or a statement that failed.
pub(crate) fn db(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::unavailable(e),
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

pub(crate) fn uuid_column(row: &SqliteRow, column: &str) -> StoreResult<Uuid> {
    let text: String = row.try_get(column).map_err(db)?;
    Uuid::parse_str(&text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub fn saga(row: &SqliteRow) -> StoreResult<SagaRecord> {
    let id: String = row.try_get("id").map_err(StoreError::backend)?;
    let status: String = row.try_get("status").map_err(StoreError::backend)?;
    let input: String = row.try_get("input").map_err(StoreError::backend)?;
    let state: String = row.try_get("state").map_err(StoreError::backend)?;
    let state: SagaState = serde_json::from_str(&state).map_err(|e| corrupt("saga state", e))?;
    Ok(SagaRecord {
        id: Uuid::parse_str(&id).map_err(|e| corrupt("saga id", e))?,
        tenant_id: row.try_get("tenant_id").map_err(StoreError::backend)?,
        definition: row.try_get("definition").map_err(StoreError::backend)?,
        version: row.try_get("version").map_err(StoreError::backend)?,
        status: SagaStatus::parse(&status).ok_or_else(|| corrupt("saga status", &status))?,
        input: serde_json::from_str(&input).map_err(|e| corrupt("saga input", e))?,
        state,
        priority: row.try_get("priority").map_err(StoreError::backend)?,
        run_at_ms: row.try_get("run_at").map_err(StoreError::backend)?,
        lease_owner: row.try_get("lease_owner").map_err(StoreError::backend)?,
        lease_expires_at_ms: row.try_get("lease_expires_at").map_err(StoreError::backend)?,
        fencing_token: row.try_get("fencing_token").map_err(StoreError::backend)?,
        created_at_ms: row.try_get("created_at").map_err(StoreError::backend)?,
        updated_at_ms: row.try_get("updated_at").map_err(StoreError::backend)?,
        completed_at_ms: row.try_get("completed_at").map_err(StoreError::backend)?,
        cancel_requested_at_ms: row.try_get("cancel_requested_at").map_err(StoreError::backend)?,
        wake_seq: row.try_get("wake_seq").map_err(StoreError::backend)?,
        concurrency_key: row.try_get("concurrency_key").map_err(StoreError::backend)?,
    })
}

pub fn event(row: &SqliteRow) -> StoreResult<EventRecord> {
    let data: String = row.try_get("data").map_err(StoreError::backend)?;
    let attempt: Option<i64> = row.try_get("attempt").map_err(StoreError::backend)?;
    Ok(EventRecord {
        seq: row.try_get("seq").map_err(StoreError::backend)?,
        kind: row.try_get("kind").map_err(StoreError::backend)?,
        step: row.try_get("step").map_err(StoreError::backend)?,
        attempt: attempt.map(|a| a as u32),
        worker: row.try_get("worker").map_err(StoreError::backend)?,
        data: serde_json::from_str(&data).map_err(|e| corrupt("event data", e))?,
        at_ms: row.try_get("at").map_err(StoreError::backend)?,
    })
}

pub const TENANT_COLUMNS: &str = "id, name, tier, storage_mode, sla_tier, status, domains, contacts, metadata, \
     storage, migrations, saga_id, error, created_at, updated_at, delete_at";

fn parsed<T>(row: &SqliteRow, column: &str, parse: fn(&str) -> Option<T>) -> StoreResult<T> {
    let text: String = row.try_get(column).map_err(StoreError::backend)?;
    parse(&text).ok_or_else(|| corrupt(&format!("tenant {column}"), &text))
}

pub fn tenant(row: &SqliteRow) -> StoreResult<TenantRecord> {
    let json = |column: &str| -> StoreResult<serde_json::Value> {
        let text: String = row.try_get(column).map_err(StoreError::backend)?;
        serde_json::from_str(&text).map_err(|e| corrupt(&format!("tenant {column}"), e))
    };
    let saga_id: Option<String> = row.try_get("saga_id").map_err(StoreError::backend)?;
    let error: Option<String> = row.try_get("error").map_err(StoreError::backend)?;
    Ok(TenantRecord {
        id: row.try_get("id").map_err(StoreError::backend)?,
        name: row.try_get("name").map_err(StoreError::backend)?,
        tier: parsed(row, "tier", Tier::parse)?,
        storage_mode: parsed(row, "storage_mode", StorageMode::parse)?,
        sla_tier: parsed(row, "sla_tier", SlaTier::parse)?,
        status: parsed(row, "status", TenantStatus::parse)?,
        domains: json("domains")?,
        contacts: json("contacts")?,
        metadata: json("metadata")?,
        storage: json("storage")?,
        migrations: json("migrations")?,
        saga_id: saga_id.map(|id| Uuid::parse_str(&id)).transpose().map_err(|e| corrupt("tenant saga_id", e))?,
        error: error.map(|e| serde_json::from_str(&e)).transpose().map_err(|e| corrupt("tenant error", e))?,
        created_at_ms: row.try_get("created_at").map_err(StoreError::backend)?,
        updated_at_ms: row.try_get("updated_at").map_err(StoreError::backend)?,
        delete_at_ms: row.try_get("delete_at").map_err(StoreError::backend)?,
    })
}
