//! The SQLite store (the embedded default): one writer connection and a few readers over a
//! WAL database, and the store traits one file per concern — [`definitions`], [`sagas`] (and
//! their batched [`creates`]), [`claim`] (claims, admission, leases), [`commit`] (drivers'
//! fenced transitions), [`signals`] (signals and callbacks), [`tenants`], [`access`] (tenant
//! keys, users, webhook receipts). SQLite is its own dialect here, not "PostgreSQL minus
//! features": one writer serialises writes, so claims and admission need no row locks.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use saga_store::{SchemaStatus, SchemaStore, StoreResult, WorkSignal};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use crate::migrate;
use crate::rows::db;

mod access;
mod claim;
mod commit;
pub(crate) mod creates;
mod definitions;
mod delivery;
mod history;
mod retention;
mod sagas;
mod signals;
mod tenants;

const READERS_MAX: u32 = 4;

/// SQLite-backed store.
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    work: WorkSignal,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at a `sqlite://` URL.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(db)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // No ping before each use: the connections are in this process and a file cannot go
        // away under them, while a ping is one more round trip to the connection's thread.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .map_err(db)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS_MAX)
            .test_before_acquire(false)
            .connect_with(options.read_only(true))
            .await
            .map_err(db)?;
        let work: WorkSignal = Arc::new(tokio::sync::Notify::new());
        Ok(SqliteStore { writer, reader, work })
    }
}

#[async_trait]
impl SchemaStore for SqliteStore {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    fn pool_status(&self) -> saga_store::PoolStatus {
        let size = self.writer.size() + self.reader.size();
        let idle = self.writer.num_idle() as u32 + self.reader.num_idle() as u32;
        saga_store::PoolStatus { in_use: size.saturating_sub(idle), idle }
    }

    async fn migrate(&self, now_ms: i64) -> StoreResult<SchemaStatus> {
        migrate::run(&self.writer, now_ms).await
    }

    async fn schema_status(&self) -> StoreResult<SchemaStatus> {
        migrate::status(&self.reader).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn saga_status_strings_round_trip() {
        for status in ["PENDING", "EXECUTING", "COMPLETED", "COMPENSATING", "COMPENSATED", "FAILED"] {
            assert_eq!(saga_core::SagaStatus::parse(status).map(|s| s.as_str()), Some(status));
        }
    }
}
