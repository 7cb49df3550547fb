//! The store conformance suite against SQLite (a fresh database file per check).

use std::sync::Arc;

use saga_store::Store;
use store_sqlite::SqliteStore;

async fn fresh() -> Arc<dyn Store> {
    let dir = std::env::temp_dir().join(format!("sagaplane-conformance-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}", dir.join("test.db").display());
    let store = SqliteStore::connect(&url).await.expect("open sqlite");
    store.migrate(0).await.expect("migrate");
    Arc::new(store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    let failures = saga_store::conformance::run_all(fresh).await;
    assert!(failures.is_empty(), "conformance failures:\n{}", failures.join("\n"));
}
