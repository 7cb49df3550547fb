//! The store conformance suite against PostgreSQL: a fresh database per check.
//!
//! Needs a PostgreSQL server: `SAGAPLANE_TEST_DATABASE_URL` (default
//! `postgres://sagaplane:sagaplane@127.0.0.1:5432/postgres`), a role that may create databases.
//! `scripts/test` starts one.

use std::str::FromStr;
use std::sync::Arc;

use saga_store::Store;
use sqlx::postgres::PgConnectOptions;
use sqlx::ConnectOptions;
use store_postgres::PostgresStore;

fn admin_url() -> String {
    std::env::var("SAGAPLANE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://sagaplane:sagaplane@127.0.0.1:5432/postgres".into())
}

async fn fresh() -> Arc<dyn Store> {
    let admin = PgConnectOptions::from_str(&admin_url()).expect("test database url");
    let mut conn = admin.connect().await.expect("connect to test PostgreSQL (is it running? see scripts/test)");
    let name = format!("conformance_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create database");
    let url = admin.database(&name).to_url_lossy().to_string();
    let store = PostgresStore::connect(&url, 8).await.expect("connect store");
    store.migrate(0).await.expect("migrate");
    Arc::new(store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    let failures = saga_store::conformance::run_all(fresh).await;
    assert!(failures.is_empty(), "conformance failures:\n{}", failures.join("\n"));
}
