//! Numbered migrations for the SQLite dialect, recorded in `sagaplane_migrations`, each with
//! the oldest binary it keeps working for (`compatible_from`), as on PostgreSQL.

use saga_store::{SchemaStatus, StoreError, StoreResult};
use sqlx::SqlitePool;

/// `(version, name, sql, compatible_from)`, in order: `compatible_from` is the oldest binary
/// (by the newest migration it knows) that keeps working once the migration is applied.
pub const MIGRATIONS: &[(i64, &str, &str, i64)] = &[
    (1, "engine", include_str!("../migrations/0001_engine.sql"), 1),
    (2, "control", include_str!("../migrations/0002_control.sql"), 2),
    (3, "tenants", include_str!("../migrations/0003_tenants.sql"), 3),
    (4, "indexes", include_str!("../migrations/0004_indexes.sql"), 4),
    (5, "delivery", include_str!("../migrations/0005_delivery.sql"), 5),
    (6, "subscription_health", include_str!("../migrations/0006_subscription_health.sql"), 6),
    (7, "event_expiry", include_str!("../migrations/0007_event_expiry.sql"), 7),
    (8, "subscription_owner", include_str!("../migrations/0008_subscription_owner.sql"), 7),
    (9, "retention", include_str!("../migrations/0009_retention.sql"), 7),
    (10, "jobs", include_str!("../migrations/0010_jobs.sql"), 7),
    (11, "definition_retention", include_str!("../migrations/0011_definition_retention.sql"), 11),
    (12, "tenant_delete_grace", include_str!("../migrations/0012_tenant_delete_grace.sql"), 11),
];

fn latest() -> i64 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

async fn ensure_table(pool: &SqlitePool) -> StoreResult<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS sagaplane_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, \
         applied_at INTEGER NOT NULL, compatible_from INTEGER)",
    )
    .execute(pool)
    .await
    .map_err(StoreError::backend)?;
    let (has_column,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM pragma_table_info('sagaplane_migrations') WHERE name = 'compatible_from'")
            .fetch_one(pool)
            .await
            .map_err(StoreError::backend)?;
    if has_column == 0 {
        sqlx::query("ALTER TABLE sagaplane_migrations ADD COLUMN compatible_from INTEGER")
            .execute(pool)
            .await
            .map_err(StoreError::backend)?;
    }
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
    for &(version, name, sql, compatible_from) in MIGRATIONS {
        if version <= current {
            continue;
        }
        let mut tx = writer.begin().await.map_err(StoreError::backend)?;
        sqlx::Executor::execute(&mut *tx, sql).await.map_err(StoreError::backend)?;
        sqlx::query(
            "INSERT INTO sagaplane_migrations (version, name, applied_at, compatible_from) VALUES (?, ?, ?, ?)",
        )
        .bind(version)
        .bind(name)
        .bind(now_ms)
        .bind(compatible_from)
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
    let latest = latest();
    if exists.0 == 0 {
        return Ok(SchemaStatus { applied: 0, latest, newer_requires: 0 });
    }
    let applied = applied(pool).await?;
    // A record without a declaration (from a binary before them) works only for binaries that know it.
    let (newer_requires,): (Option<i64>,) =
        sqlx::query_as("SELECT MAX(COALESCE(compatible_from, version)) FROM sagaplane_migrations WHERE version > ?")
            .bind(latest)
            .fetch_one(pool)
            .await
            .map_err(StoreError::backend)?;
    Ok(SchemaStatus { applied, latest, newer_requires: newer_requires.unwrap_or(0) })
}
