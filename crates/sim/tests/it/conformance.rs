//! The in-memory store runs the same conformance suite as PostgreSQL and SQLite.

use std::sync::Arc;

use saga_store::EngineStore;
use sim::MemoryStore;

async fn fresh_store() -> Arc<dyn EngineStore> {
    Arc::new(MemoryStore::default())
}

saga_store::engine_store_conformance!(fresh_store);
