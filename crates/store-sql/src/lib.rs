//! What the PostgreSQL and SQLite stores share, written once over a [`Dialect`]: the statements
//! whose SQL is the same in both (placeholders `$N`, which SQLite reads too), how their arguments
//! are bound and how their rows are read back.
//!
//! Design note. A dialect says only what differs: its sqlx database and pools (which reads,
//! which writes), how a UUID and a JSON value are stored (native types on PostgreSQL, text on
//! SQLite), how a transaction begins and how an error maps, and the few clauses one of them needs
//! ([`Dialect::LOCK_TENANT`]). What differs in substance — claims, the batched commit, the
//! fan-out, migrations — stays in each store. A store implements [`SqlStore`] and takes the
//! shared store traits with one macro call each ([`access_stores!`], [`subscription_store!`], [`retention_store!`], [`job_store!`]).

use std::future::Future;

use saga_store::{StoreError, StoreResult};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::Database;
use uuid::Uuid;

pub mod access;
pub mod jobs;
pub mod retention;
pub mod subscriptions;

/// What one SQL dialect does its own way.
pub trait Dialect: Send + Sync + 'static {
    type Db: Database;
    type Pool: Send + Sync;
    /// How a UUID is bound (a native `uuid`, or its text).
    type Uuid: for<'q> sqlx::Encode<'q, Self::Db> + sqlx::Type<Self::Db> + Send + Sync + 'static;
    /// How a JSON value is bound (`jsonb`, or its text).
    type Json: for<'q> sqlx::Encode<'q, Self::Db> + sqlx::Type<Self::Db> + Send + Sync + 'static;
    /// How a small integer column (`INTEGER` on PostgreSQL: 32 bits) is bound.
    type Int4: for<'q> sqlx::Encode<'q, Self::Db> + sqlx::Type<Self::Db> + Send + Sync + 'static;

    /// A statement, run in a transaction before a count that must not go stale, that locks the
    /// tenant's row (`$1`) where writers run concurrently; None where one writer serialises them.
    const LOCK_TENANT: Option<&'static str>;
    /// Whether a statement must name the index it reads (`INDEXED BY`): SQLite keeps no
    /// statistics, and its planner reads the status index instead of a partial one.
    const NAMES_ITS_INDEX: bool;

    /// `INDEXED BY index` where the dialect needs it, else nothing.
    fn indexed_by(index: &str) -> String {
        if Self::NAMES_ITS_INDEX {
            format!("INDEXED BY {index}")
        } else {
            String::new()
        }
    }

    fn uuid(id: Uuid) -> Self::Uuid;
    fn int4(value: u32) -> Self::Int4;
    fn int4_column(row: &<Self::Db as Database>::Row, column: &str) -> StoreResult<Option<i64>>;
    fn json(value: &impl Serialize) -> StoreResult<Self::Json>;
    fn uuid_column(row: &<Self::Db as Database>::Row, column: &str) -> StoreResult<Uuid>;
    fn opt_uuid_column(row: &<Self::Db as Database>::Row, column: &str) -> StoreResult<Option<Uuid>>;
    fn json_column<T: DeserializeOwned>(row: &<Self::Db as Database>::Row, column: &str) -> StoreResult<Option<T>>;
    fn rows_affected(done: &<Self::Db as Database>::QueryResult) -> u64;
    /// A database error at the store boundary: unreachable, or a statement that failed.
    fn error(e: sqlx::Error) -> StoreError;
    fn begin(
        pool: &Self::Pool,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>> + Send;
}

/// A store's pools, as the shared statements use them.
pub struct Sql<'p, D: Dialect> {
    pub read: &'p D::Pool,
    pub write: &'p D::Pool,
}

/// A store whose shared statements run over [`Sql`].
pub trait SqlStore {
    type Dialect: Dialect;
    fn sql(&self) -> Sql<'_, Self::Dialect>;
}

/// A column read as `T` (text, integers, booleans and their `Option`s).
pub fn column<'r, D, T>(row: &'r <D::Db as Database>::Row, name: &str) -> StoreResult<T>
where
    D: Dialect,
    T: sqlx::Decode<'r, D::Db> + sqlx::Type<D::Db>,
    for<'s> &'s str: sqlx::ColumnIndex<<D::Db as Database>::Row>,
{
    sqlx::Row::try_get(row, name).map_err(D::error)
}

/// [`StoreError::NotFound`] unless the statement changed a row.
pub fn changed_one(rows_affected: u64) -> StoreResult<()> {
    if rows_affected == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Whether an error is a unique constraint refusing a row.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(e) if e.is_unique_violation())
}
