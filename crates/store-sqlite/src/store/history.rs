//! History rows, appended by every write that changes a saga.

use saga_core::HistoryEvent;
use saga_store::StoreResult;

use crate::rows::{db, json_text};

/// Appends history rows from `first_seq` on.
pub(crate) async fn insert_events(
    conn: &mut sqlx::SqliteConnection,
    saga_id: &str,
    tenant_id: Option<&str>,
    first_seq: i64,
    worker: Option<&str>,
    events: &[HistoryEvent],
) -> StoreResult<()> {
    for (offset, event) in events.iter().enumerate() {
        sqlx::query(
            "INSERT INTO saga_events (saga_id, seq, tenant_id, kind, step, attempt, worker, data, at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(saga_id)
        .bind(first_seq + offset as i64)
        .bind(tenant_id)
        .bind(&event.kind)
        .bind(&event.step)
        .bind(event.attempt.map(i64::from))
        .bind(worker)
        .bind(json_text(&event.data)?)
        .bind(event.at_ms)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    Ok(())
}
