//! How PostgreSQL runs the statements both stores share (`store_sql`): native `uuid` and `jsonb`,
//! one pool (through [`Db`], so a transaction pooler is handled), and the tenant's row locked
//! before a count that concurrent writers could make stale.

use std::future::Future;

use saga_store::{StoreError, StoreResult};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::{PgQueryResult, PgRow};
use sqlx::types::Json;
use sqlx::{Postgres, Row};
use uuid::Uuid;

use crate::connect::Db;
use crate::rows::db;

pub struct Pg;

impl store_sql::Dialect for Pg {
    type Db = Postgres;
    type Pool = Db;
    type Uuid = Uuid;
    type Json = Json<Value>;
    type Int4 = i32;

    const LOCK_TENANT: Option<&'static str> = Some("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE");
    const NAMES_ITS_INDEX: bool = false;

    fn uuid(id: Uuid) -> Uuid {
        id
    }

    fn int4(value: u32) -> i32 {
        i32::try_from(value).unwrap_or(i32::MAX)
    }

    fn int4_column(row: &PgRow, column: &str) -> StoreResult<Option<i64>> {
        let value: Option<i32> = row.try_get(column).map_err(db)?;
        Ok(value.map(i64::from))
    }

    fn json(value: &impl Serialize) -> StoreResult<Json<Value>> {
        serde_json::to_value(value).map(Json).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    fn uuid_column(row: &PgRow, column: &str) -> StoreResult<Uuid> {
        row.try_get(column).map_err(db)
    }

    fn opt_uuid_column(row: &PgRow, column: &str) -> StoreResult<Option<Uuid>> {
        row.try_get(column).map_err(db)
    }

    fn json_column<T: DeserializeOwned>(row: &PgRow, column: &str) -> StoreResult<Option<T>> {
        let value: Option<Json<T>> = row.try_get(column).map_err(db)?;
        Ok(value.map(|json| json.0))
    }

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }

    fn error(e: sqlx::Error) -> StoreError {
        db(e)
    }

    fn begin(pool: &Db) -> impl Future<Output = Result<sqlx::Transaction<'static, Postgres>, sqlx::Error>> + Send {
        pool.begin()
    }
}
