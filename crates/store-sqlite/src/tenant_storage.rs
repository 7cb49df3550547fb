//! Tenant storage on the embedded default: `database` mode is one SQLite file per tenant,
//! `<dir>/tenant_<id>.db`, with its migrations recorded inside it. SQLite has no schemas, roles
//! or row-level security, so `schema` and `pooled` are refused (they need PostgreSQL), and
//! access control is the file system's: suspend/resume has no database-side effect here.

use std::path::PathBuf;
use std::str::FromStr;

use async_trait::async_trait;
use saga_core::tenant::{tenant_object_name, StorageMode};
use saga_store::tenant_storage::{AppliedMigration, Migration, TenantStorage, TenantStorageError};
use serde_json::{json, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

/// One SQLite file per tenant under `dir`.
pub struct SqliteTenantStorage {
    dir: PathBuf,
}

fn backend(e: impl std::fmt::Display) -> TenantStorageError {
    TenantStorageError::Backend(e.to_string())
}

fn unsupported(mode: StorageMode) -> TenantStorageError {
    TenantStorageError::Unsupported(format!(
        "storage mode {} needs PostgreSQL (SAGAPLANE_TENANT_DATABASE_URL); the embedded SQLite default offers database",
        mode.as_str()
    ))
}

const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS sagaplane_migrations ( \
     service TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL, checksum TEXT NOT NULL, \
     applied_at INTEGER NOT NULL, PRIMARY KEY (service, version))";

impl SqliteTenantStorage {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SqliteTenantStorage { dir: dir.into() }
    }

    /// The tenant's database file.
    pub fn path(&self, tenant_id: &str) -> PathBuf {
        self.dir.join(format!("{}.db", tenant_object_name(tenant_id)))
    }

    /// A one-connection pool on the tenant's file (pools keep sqlx's executors `Send`).
    async fn open(&self, tenant_id: &str, create: bool) -> Result<SqlitePool, TenantStorageError> {
        let url = format!("sqlite://{}", self.path(tenant_id).display());
        let options = SqliteConnectOptions::from_str(&url).map_err(backend)?.create_if_missing(create);
        SqlitePoolOptions::new().max_connections(1).connect_with(options).await.map_err(backend)
    }
}

#[async_trait]
impl TenantStorage for SqliteTenantStorage {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    fn supports(&self, mode: StorageMode) -> bool {
        mode == StorageMode::Database
    }

    async fn storage_create(&self, tenant_id: &str, mode: StorageMode) -> Result<Value, TenantStorageError> {
        if mode != StorageMode::Database {
            return Err(unsupported(mode));
        }
        tokio::fs::create_dir_all(&self.dir).await.map_err(backend)?;
        let pool = self.open(tenant_id, true).await?;
        sqlx::query(MIGRATIONS_TABLE).execute(&pool).await.map_err(backend)?;
        pool.close().await;
        Ok(json!({"backend": "sqlite", "location": self.path(tenant_id).display().to_string()}))
    }

    async fn storage_drop(&self, tenant_id: &str, mode: StorageMode) -> Result<(), TenantStorageError> {
        if mode != StorageMode::Database {
            return Ok(());
        }
        let path = self.path(tenant_id);
        for file in [path.clone(), path.with_extension("db-wal"), path.with_extension("db-shm")] {
            match tokio::fs::remove_file(&file).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(backend(e)),
            }
        }
        Ok(())
    }

    async fn migrations_apply(
        &self,
        tenant_id: &str,
        mode: StorageMode,
        migrations: &[Migration],
        now_ms: i64,
    ) -> Result<Vec<AppliedMigration>, TenantStorageError> {
        if mode != StorageMode::Database {
            return Err(unsupported(mode));
        }
        let pool = self.open(tenant_id, false).await?;
        let mut sorted: Vec<&Migration> = migrations.iter().collect();
        sorted.sort_by(|a, b| (&a.service, a.version).cmp(&(&b.service, b.version)));
        for migration in sorted {
            let file = migration.file_name();
            // IMMEDIATE: the write lock first, so two writers of one tenant cannot interleave.
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(backend)?;
            let applied: Option<String> =
                sqlx::query_scalar("SELECT checksum FROM sagaplane_migrations WHERE service = ? AND version = ?")
                    .bind(&migration.service)
                    .bind(migration.version)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
            if migration.is_applied(applied.as_deref())? {
                continue;
            }
            if let Err(e) = sqlx::Executor::execute(&mut *tx, migration.sql.as_str()).await {
                return Err(TenantStorageError::MigrationFailed {
                    service: migration.service.clone(),
                    file,
                    message: e.as_database_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string()),
                });
            }
            sqlx::query(
                "INSERT INTO sagaplane_migrations (service, version, name, checksum, applied_at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&migration.service)
            .bind(migration.version)
            .bind(&migration.name)
            .bind(&migration.checksum)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
        }
        let rows = sqlx::query(
            "SELECT service, version, name, checksum, applied_at FROM sagaplane_migrations ORDER BY service, version",
        )
        .fetch_all(&pool)
        .await
        .map_err(backend)?;
        pool.close().await;
        rows.iter()
            .map(|row| {
                Ok(AppliedMigration {
                    service: row.try_get("service").map_err(backend)?,
                    version: row.try_get("version").map_err(backend)?,
                    name: row.try_get("name").map_err(backend)?,
                    checksum: row.try_get("checksum").map_err(backend)?,
                    applied_at_ms: row.try_get("applied_at").map_err(backend)?,
                })
            })
            .collect()
    }

    async fn access_set(&self, _tenant_id: &str, _mode: StorageMode, _enabled: bool) -> Result<(), TenantStorageError> {
        Ok(())
    }
}
