//! Fresh test databases: a new PostgreSQL database or SQLite file per test.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::ConnectOptions;

/// `SAGAPLANE_TEST_DATABASE_URL`, a role that may create databases (scripts/test makes one).
pub fn postgres_admin_url() -> String {
    std::env::var("SAGAPLANE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://sagaplane:sagaplane@127.0.0.1:5432/postgres".into())
}

/// Creates an empty PostgreSQL database and returns its URL.
pub async fn fresh_postgres() -> String {
    let admin = PgConnectOptions::from_str(&postgres_admin_url()).expect("SAGAPLANE_TEST_DATABASE_URL is not a URL");
    let mut conn = admin
        .connect()
        .await
        .expect("cannot reach the test PostgreSQL; run scripts/test, or set SAGAPLANE_TEST_DATABASE_URL");
    let name = format!("it_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create database");
    admin.database(&name).to_url_lossy().to_string()
}

/// [`fresh_postgres`] for a test without an async runtime (the examples' end-to-end tests), as
/// `postgres://…/name` with no query string, so it can stand in a shell command as it is.
pub fn fresh_postgres_blocking() -> String {
    let url = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the database's creation")
        .block_on(fresh_postgres());
    let options = PgConnectOptions::from_str(&url).expect("the new database's URL");
    let name = options.get_database().expect("the new database's name");
    let admin = postgres_admin_url();
    let server = admin.split('?').next().and_then(|u| u.rsplit_once('/')).map(|(server, _)| server).expect("a URL");
    format!("{server}/{name}")
}

/// A URL for a new SQLite file in a fresh temp directory.
pub fn fresh_sqlite() -> String {
    let dir = std::env::temp_dir().join(format!("sagaplane-it-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    format!("sqlite://{}", dir.join("sagaplane.db").display())
}
