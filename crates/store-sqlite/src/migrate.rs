//! Numbered migrations for the SQLite dialect, recorded in `sagaplane_migrations`.

use saga_store::{SchemaStatus, StoreError, StoreResult};
use sqlx::SqlitePool;

/// `(version, name, sql)`, in order.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "engine", include_str!("../migrations/0001_engine.sql")),
    (2, "control", include_str!("../migrations/0002_control.sql")),
    (3, "tenants", include_str!("../migrations/0003_tenants.sql")),
    (4, "indexes", include_str!("../migrations/0004_indexes.sql")),
    (5, "delivery", include_str!("../migrations/0005_delivery.sql")),
    (6, "subscription_health", include_str!("../migrations/0006_subscription_health.sql")),
    (7, "event_expiry", include_str!("../migrations/0007_event_expiry.sql")),
];

fn latest() -> i64 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

async fn ensure_table(pool: &SqlitePool) -> StoreResult<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS sagaplane_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )
    .execute(pool)
    .await
    .map_err(StoreError::backend)?;
    Ok(())
}

async fn applied(pool: &SqlitePool) -> StoreResult<i64> {
    let row: (Option<i64>,) = sqlx::query_as("SELECT MAX(version) FROM sagaplane_migrations")
        .fetch_one(pool)
        .await
        .map_err(StoreError::backend)?;
    Ok(row.0.unwrap_or(0))
}

pub async fn run(writer: &SqlitePool, now_ms: i64) -> StoreResult<SchemaStatus> {
    ensure_table(writer).await?;
    let current = applied(writer).await?;
    for &(version, name, sql) in MIGRATIONS {
        if version <= current {
            continue;
        }
        let mut tx = writer.begin().await.map_err(StoreError::backend)?;
        sqlx::Executor::execute(&mut *tx, sql).await.map_err(StoreError::backend)?;
        sqlx::query("INSERT INTO sagaplane_migrations (version, name, applied_at) VALUES (?, ?, ?)")
            .bind(version)
            .bind(name)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::backend)?;
        tx.commit().await.map_err(StoreError::backend)?;
        tracing::info!(version, name, "applied sqlite migration");
    }
    status(writer).await
}

pub async fn status(pool: &SqlitePool) -> StoreResult<SchemaStatus> {
    let exists: (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'sagaplane_migrations'")
            .fetch_one(pool)
            .await
            .map_err(StoreError::backend)?;
    let applied = if exists.0 == 0 { 0 } else { applied(pool).await? };
    Ok(SchemaStatus { applied, latest: latest() })
}
