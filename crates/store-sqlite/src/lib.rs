//! SQLite implementation of [`saga_store::Store`]: the embedded default, one process.
//!
//! Writes go through a single-connection pool, so transactions never contend for SQLite's one
//! writer lock (no `SQLITE_BUSY` upgrades); reads use a separate pool over WAL. The same fencing
//! rules as PostgreSQL hold: every driver write is conditional on `(id, fencing_token)`. Creates
//! are group-committed like step transitions (see `create`), since each commit is an fsync.
//! [`tenant_storage`] gives each `database`-mode tenant its own SQLite file.

mod create;
mod migrate;
mod rows;
mod store;
pub mod tenant_storage;

pub use store::SqliteStore;
pub use tenant_storage::SqliteTenantStorage;
