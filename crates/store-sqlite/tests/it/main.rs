//! The conformance suites against SQLite, one test per check: the store on a fresh database file
//! per check, and tenant storage (`database` mode: one file per tenant) in a fresh directory.

use std::path::PathBuf;
use std::sync::Arc;

use saga_store::tenant_storage::TenantStorage;
use saga_store::{SchemaStore, Store};
use store_sqlite::{SqliteStore, SqliteTenantStorage};

fn fresh_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

async fn fresh_store() -> Arc<dyn Store> {
    let url = format!("sqlite://{}", fresh_dir("sagaplane-conformance").join("test.db").display());
    let store = SqliteStore::connect(&url).await.expect("open sqlite");
    store.migrate(0).await.expect("migrate");
    Arc::new(store)
}

async fn fresh_tenant_storage() -> Arc<dyn TenantStorage> {
    Arc::new(SqliteTenantStorage::new(fresh_dir("sagaplane-tenant-conformance")))
}

saga_store::store_conformance!(fresh_store);

saga_store::tenant_storage_conformance!(fresh_tenant_storage, database: Database);
