//! How SQLite runs the statements both stores share (`store_sql`): UUIDs and JSON as text, reads
//! on the reader pool and writes on the single writer (which also serialises what PostgreSQL
//! needs a row lock for).

use std::future::Future;

use saga_store::{StoreError, StoreResult};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::sqlite::{SqliteQueryResult, SqliteRow};
use sqlx::{Row, Sqlite, SqlitePool};
use uuid::Uuid;

use crate::rows::{db, json_text, uuid_column};

pub struct Lite;

impl store_sql::Dialect for Lite {
    type Db = Sqlite;
    type Pool = SqlitePool;
    type Uuid = String;
    type Json = String;
    type Int4 = i64;

    const LOCK_TENANT: Option<&'static str> = None;
    const NAMES_ITS_INDEX: bool = true;

    fn uuid(id: Uuid) -> String {
        id.to_string()
    }

    fn int4(value: u32) -> i64 {
        i64::from(value)
    }

    fn int4_column(row: &SqliteRow, column: &str) -> StoreResult<Option<i64>> {
        row.try_get(column).map_err(db)
    }

    fn json(value: &impl Serialize) -> StoreResult<String> {
        json_text(value)
    }

    fn uuid_column(row: &SqliteRow, column: &str) -> StoreResult<Uuid> {
        uuid_column(row, column)
    }

    fn opt_uuid_column(row: &SqliteRow, column: &str) -> StoreResult<Option<Uuid>> {
        let text: Option<String> = row.try_get(column).map_err(db)?;
        text.map(|text| Uuid::parse_str(&text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))).transpose()
    }

    fn json_column<T: DeserializeOwned>(row: &SqliteRow, column: &str) -> StoreResult<Option<T>> {
        let text: Option<String> = row.try_get(column).map_err(db)?;
        text.map(|text| serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}"))))
            .transpose()
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    fn error(e: sqlx::Error) -> StoreError {
        db(e)
    }

    fn begin(
        pool: &SqlitePool,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Sqlite>, sqlx::Error>> + Send {
        pool.begin()
    }
}
