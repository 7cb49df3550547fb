//! PostgreSQL implementation of the store traits ([`saga_store::Store`]), for many orchestrator
//! instances; each concern in its own file under `store/`.
//!
//! Claims are one `FOR UPDATE SKIP LOCKED` statement that bumps the fencing token; a batch of
//! drivers' transitions is one transaction of two statements (a fenced `UPDATE … FROM UNNEST`
//! and one multi-row history `INSERT`); heartbeats renew every lease an instance holds in one
//! statement. A batch of creates is likewise one multi-row statement.
//! `LISTEN/NOTIFY` on `sagaplane_work` wakes idle instances; polling remains the
//! fallback, so the store keeps to what distributed PostgreSQL-compatible engines offer
//! ([`wakeups`]). [`connect`] reaches PostgreSQL over TLS, through PgBouncer's transaction
//! pooling, and only ever onto the writable primary.
//! [`tenant_storage`] provisions tenants' schemas, databases and pooled tables.

pub mod connect;
mod dialect;
mod migrate;
mod rows;
mod store;
pub mod tenant_storage;
mod wakeups;

pub use connect::{ConnectError, Route};
pub use store::{ConnectSettings, PostgresStore, WORK_CHANNEL};
pub use tenant_storage::PgTenantStorage;
