//! History rows, appended by every write that changes a saga: gathered for a whole batch and
//! written by one statement, since each statement is a round trip to SQLite's worker thread.

use saga_core::HistoryEvent;
use saga_store::StoreResult;
use serde::Serialize;

use crate::rows::{db, json_text};

/// One history row as a JSON array, in the column order of [`INSERT_ROWS`]; `data` is the event
/// data's JSON text, carried as a string so it is stored byte for byte.
#[derive(Serialize)]
struct Row<'a>(&'a str, i64, Option<&'a str>, &'a str, Option<&'a str>, Option<u32>, Option<&'a str>, String, i64);

/// The rows of one batch's history, written together by [`HistoryRows::insert`].
#[derive(Default)]
pub(crate) struct HistoryRows<'a> {
    rows: Vec<Row<'a>>,
}

const INSERT_ROWS: &str = "INSERT INTO saga_events (saga_id, seq, tenant_id, kind, step, attempt, worker, data, at) \
     SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, value->>7, value->>8 \
     FROM json_each(?)";

impl<'a> HistoryRows<'a> {
    /// Adds `events` of one saga, numbered from `first_seq` on.
    pub(crate) fn push(
        &mut self,
        saga_id: &'a str,
        tenant_id: Option<&'a str>,
        first_seq: i64,
        worker: Option<&'a str>,
        events: &'a [HistoryEvent],
    ) -> StoreResult<()> {
        for (offset, event) in events.iter().enumerate() {
            self.rows.push(Row(
                saga_id,
                first_seq + offset as i64,
                tenant_id,
                &event.kind,
                event.step.as_deref(),
                event.attempt,
                worker,
                json_text(&event.data)?,
                event.at_ms,
            ));
        }
        Ok(())
    }

    /// Writes every row added, in one statement (none when there are none).
    pub(crate) async fn insert(&self, conn: &mut sqlx::SqliteConnection) -> StoreResult<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        sqlx::query(INSERT_ROWS).bind(json_text(&self.rows)?).execute(conn).await.map_err(db)?;
        Ok(())
    }
}

/// Appends history rows of one saga from `first_seq` on.
pub(crate) async fn insert_events(
    conn: &mut sqlx::SqliteConnection,
    saga_id: &str,
    tenant_id: Option<&str>,
    first_seq: i64,
    worker: Option<&str>,
    events: &[HistoryEvent],
) -> StoreResult<()> {
    let mut rows = HistoryRows::default();
    rows.push(saga_id, tenant_id, first_seq, worker, events)?;
    rows.insert(conn).await
}
