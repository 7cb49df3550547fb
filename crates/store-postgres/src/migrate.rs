//! Numbered migrations for the PostgreSQL dialect, recorded in `sagaplane_migrations`.
//! Concurrent instances serialise on a table lock (no advisory locks).

use saga_store::{SchemaStatus, StoreError, StoreResult};
use sqlx::PgPool;

/// `(version, name, sql)`, in order.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "engine", include_str!("../migrations/0001_engine.sql")),
    (2, "control", include_str!("../migrations/0002_control.sql")),
    (3, "tenants", include_str!("../migrations/0003_tenants.sql")),
    (4, "indexes", include_str!("../migrations/0004_indexes.sql")),
    (5, "delivery", include_str!("../migrations/0005_delivery.sql")),
    (6, "subscription_health", include_str!("../migrations/0006_subscription_health.sql")),
    (7, "delivery_write_cost", include_str!("../migrations/0007_delivery_write_cost.sql")),
    (8, "event_expiry", include_str!("../migrations/0008_event_expiry.sql")),
];

fn latest() -> i64 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

fn db(e: sqlx::Error) -> StoreError {
    StoreError::backend(e)
}

async fn ensure_table(pool: &PgPool) -> StoreResult<()> {
    let create = "CREATE TABLE IF NOT EXISTS sagaplane_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)";
    // Two instances racing on CREATE TABLE IF NOT EXISTS can collide on the catalog; the loser
    // just retries once the winner's table exists.
    for _ in 0..3 {
        match sqlx::query(create).execute(pool).await {
            Ok(_) => return Ok(()),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => continue,
            Err(e) => return Err(db(e)),
        }
    }
    Ok(())
}

pub async fn run(pool: &PgPool, now_ms: i64) -> StoreResult<SchemaStatus> {
    ensure_table(pool).await?;
    let mut tx = pool.begin().await.map_err(db)?;
    sqlx::query("LOCK TABLE sagaplane_migrations IN EXCLUSIVE MODE").execute(&mut *tx).await.map_err(db)?;
    let current: Option<i64> =
        sqlx::query_scalar("SELECT MAX(version) FROM sagaplane_migrations").fetch_one(&mut *tx).await.map_err(db)?;
    let current = current.unwrap_or(0);
    for &(version, name, sql) in MIGRATIONS {
        if version <= current {
            continue;
        }
        sqlx::Executor::execute(&mut *tx, sql).await.map_err(db)?;
        sqlx::query("INSERT INTO sagaplane_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
            .bind(version)
            .bind(name)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tracing::info!(version, name, "applied postgres migration");
    }
    tx.commit().await.map_err(db)?;
    status(pool).await
}

pub async fn status(pool: &PgPool) -> StoreResult<SchemaStatus> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('sagaplane_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(db)?;
    let applied = if exists {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM sagaplane_migrations").fetch_one(pool).await.map_err(db)?;
        v.unwrap_or(0)
    } else {
        0
    };
    Ok(SchemaStatus { applied, latest: latest() })
}
