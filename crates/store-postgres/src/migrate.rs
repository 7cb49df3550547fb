//! Numbered migrations for the PostgreSQL dialect, recorded in `sagaplane_migrations`.
//! Concurrent instances serialise on a table lock (no advisory locks).
//!
//! Each migration declares the oldest binary it keeps working for (binaries are named by the
//! newest migration they know) and the record keeps it in `compatible_from`, so an older binary
//! can tell whether a newer one's migrations leave it able to serve: the rule behind `/ready`
//! in a rolling upgrade (docs/operations.md, "Upgrades and rollbacks").

use saga_store::{SchemaStatus, StoreResult};

use crate::connect::Db;

/// One schema change.
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
    /// The oldest binary (by the newest migration it knows) that keeps working once this is
    /// applied: `version` itself for a change older binaries cannot live with; lower for an
    /// additive one (a new nullable column, a new table or index they never touch).
    pub compatible_from: i64,
}

const fn migration(version: i64, name: &'static str, sql: &'static str, compatible_from: i64) -> Migration {
    Migration { version, name, sql, compatible_from }
}

/// In order. The first eight predate the declaration and claim nothing older.
pub const MIGRATIONS: &[Migration] = &[
    migration(1, "engine", include_str!("../migrations/0001_engine.sql"), 1),
    migration(2, "control", include_str!("../migrations/0002_control.sql"), 2),
    migration(3, "tenants", include_str!("../migrations/0003_tenants.sql"), 3),
    migration(4, "indexes", include_str!("../migrations/0004_indexes.sql"), 4),
    migration(5, "delivery", include_str!("../migrations/0005_delivery.sql"), 5),
    migration(6, "subscription_health", include_str!("../migrations/0006_subscription_health.sql"), 6),
    migration(7, "delivery_write_cost", include_str!("../migrations/0007_delivery_write_cost.sql"), 7),
    migration(8, "event_expiry", include_str!("../migrations/0008_event_expiry.sql"), 8),
    migration(9, "subscription_owner", include_str!("../migrations/0009_subscription_owner.sql"), 8),
    migration(10, "subscription_epoch", include_str!("../migrations/0010_subscription_epoch.sql"), 8),
    migration(11, "retention", include_str!("../migrations/0011_retention.sql"), 8),
    migration(12, "jobs", include_str!("../migrations/0012_jobs.sql"), 8),
    migration(13, "definition_retention", include_str!("../migrations/0013_definition_retention.sql"), 8),
    migration(14, "list_indexes", include_str!("../migrations/0014_list_indexes.sql"), 8),
    migration(15, "tenant_delete_grace", include_str!("../migrations/0015_tenant_delete_grace.sql"), 8),
];

fn latest() -> i64 {
    MIGRATIONS.last().map(|m| m.version).unwrap_or(0)
}

use crate::rows::db;

async fn ensure_table(pool: &Db) -> StoreResult<()> {
    let create = "CREATE TABLE IF NOT EXISTS sagaplane_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, \
                  applied_at BIGINT NOT NULL, compatible_from BIGINT); \
                  ALTER TABLE sagaplane_migrations ADD COLUMN IF NOT EXISTS compatible_from BIGINT";
    // Two instances racing on CREATE TABLE IF NOT EXISTS can collide on the catalog; the loser
    // just retries once the winner's table exists.
    for _ in 0..3 {
        match sqlx::raw_sql(create).execute(pool).await {
            Ok(_) => return Ok(()),
            Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("23505" | "42701")) => continue,
            Err(e) => return Err(db(e)),
        }
    }
    Ok(())
}

pub async fn run(pool: &Db, now_ms: i64) -> StoreResult<SchemaStatus> {
    ensure_table(pool).await?;
    let mut tx = pool.begin().await.map_err(db)?;
    sqlx::query("LOCK TABLE sagaplane_migrations IN EXCLUSIVE MODE").execute(&mut *tx).await.map_err(db)?;
    let current: Option<i64> =
        sqlx::query_scalar("SELECT MAX(version) FROM sagaplane_migrations").fetch_one(&mut *tx).await.map_err(db)?;
    let current = current.unwrap_or(0);
    for migration in MIGRATIONS {
        let Migration { version, name, sql, compatible_from } = *migration;
        if version <= current {
            continue;
        }
        sqlx::Executor::execute(&mut *tx, sql).await.map_err(db)?;
        sqlx::query(
            "INSERT INTO sagaplane_migrations (version, name, applied_at, compatible_from) VALUES ($1, $2, $3, $4)",
        )
        .bind(version)
        .bind(name)
        .bind(now_ms)
        .bind(compatible_from)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tracing::info!(version, name, "applied postgres migration");
    }
    tx.commit().await.map_err(db)?;
    status(pool).await
}

pub async fn status(pool: &Db) -> StoreResult<SchemaStatus> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('sagaplane_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(db)?;
    let latest = latest();
    if !exists {
        return Ok(SchemaStatus { applied: 0, latest, newer_requires: 0 });
    }
    // A record without a declaration (written by a binary before them) keeps working only for
    // binaries that know it.
    let (applied, newer_requires): (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT MAX(version), MAX(COALESCE(compatible_from, version)) FILTER (WHERE version > $1) \
         FROM sagaplane_migrations",
    )
    .bind(latest)
    .fetch_one(pool)
    .await
    .map_err(db)?;
    Ok(SchemaStatus { applied: applied.unwrap_or(0), latest, newer_requires: newer_requires.unwrap_or(0) })
}
