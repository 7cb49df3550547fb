//! SQLite implementation of the store traits ([`saga_store::Store`]): the embedded default, one
//! process; each concern in its own file under `store/`.
//!
//! Writes go through a single-connection pool, so transactions never contend for SQLite's one
//! writer lock (no `SQLITE_BUSY` upgrades); reads use a separate pool over WAL. The same fencing
//! rules as PostgreSQL hold: every driver write is conditional on `(id, fencing_token)`. A batch
//! of creates is one transaction (see `store/creates.rs`), since each commit is an fsync.
//! [`tenant_storage`] gives each `database`-mode tenant its own SQLite file.

mod dialect;
mod migrate;
mod rows;
mod store;
pub mod tenant_storage;

pub use store::SqliteStore;
pub use tenant_storage::SqliteTenantStorage;
