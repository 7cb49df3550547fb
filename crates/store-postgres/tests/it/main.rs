//! The conformance suites against PostgreSQL, one test per check: the store on a fresh database
//! per check, and tenant storage in every mode (schema, database, pooled) on a fresh database
//! per check (tenant roles are cluster-wide; each check uses its own tenant id).
//!
//! Needs a PostgreSQL server: `SAGAPLANE_TEST_DATABASE_URL` (default
//! `postgres://sagaplane:sagaplane@127.0.0.1:5432/postgres`), a role that may create databases
//! and roles. `scripts/test` starts one.

use std::str::FromStr;
use std::sync::Arc;

use saga_store::tenant_storage::TenantStorage;
use saga_store::{SchemaStore, Store};
use sqlx::postgres::PgConnectOptions;
use sqlx::ConnectOptions;
use store_postgres::{PgTenantStorage, PostgresStore};

fn admin_url() -> String {
    std::env::var("SAGAPLANE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://sagaplane:sagaplane@127.0.0.1:5432/postgres".into())
}

/// A new, empty database; its URL.
async fn fresh_database(prefix: &str) -> String {
    let admin = PgConnectOptions::from_str(&admin_url()).expect("test database url");
    let mut conn = admin.connect().await.expect("connect to test PostgreSQL (is it running? see scripts/test)");
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create database");
    admin.database(&name).to_url_lossy().to_string()
}

async fn fresh_store() -> Arc<dyn Store> {
    let store = PostgresStore::connect(&fresh_database("conformance").await, 8).await.expect("connect store");
    store.migrate(0).await.expect("migrate");
    Arc::new(store)
}

async fn fresh_tenant_storage() -> Arc<dyn TenantStorage> {
    let url = fresh_database("conformance_tenants").await;
    Arc::new(PgTenantStorage::connect(&url, 8, 4).await.expect("connect tenant storage"))
}

saga_store::store_conformance!(fresh_store);

saga_store::tenant_storage_conformance!(
    fresh_tenant_storage,
    schema: Schema,
    database: Database,
    pooled: Pooled,
);

/// The pooled tables' row-level policy names a row's role in SQL; it must be the very name
/// `tenant_object_name` gives that tenant's role, long ids included.
#[tokio::test]
async fn the_policy_derives_the_same_role_names_as_the_provisioner() {
    let admin = PgConnectOptions::from_str(&admin_url()).expect("test database url");
    let mut conn = sqlx::ConnectOptions::connect(&admin).await.expect("connect");
    let ids = [
        "acme".to_string(),
        "acme-corp".to_string(),
        format!("a{}", "b".repeat(55)),
        format!("a{}x", "b".repeat(61)),
        format!("a{}y", "b".repeat(61)),
        format!("a-{}-z", "c-".repeat(29)),
    ];
    for id in ids {
        let sql = format!(
            "SELECT {} FROM (SELECT $1::text AS tenant_id) AS row",
            store_postgres::tenant_storage::ROLE_OF_ROW_SQL
        );
        let in_sql: String = sqlx::query_scalar(&sql).bind(&id).fetch_one(&mut conn).await.expect("query");
        assert_eq!(in_sql, saga_core::tenant::tenant_object_name(&id), "{id}");
    }
}
