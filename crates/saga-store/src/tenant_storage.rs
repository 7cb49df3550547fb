//! Tenant storage: what a backend must do to give a tenant its own place for data (docs/api.md,
//! "Tenants"), and to run per-service tenant migrations there. PostgreSQL implements every mode
//! (schema, database, pooled tables under row-level security); the embedded SQLite default
//! implements `database` as one SQLite file per tenant.
//!
//! Every operation is idempotent: re-running it after a crash between its effect and the saga's
//! commit succeeds and creates nothing twice.

use async_trait::async_trait;
pub use saga_core::tenant::StorageMode;
use serde_json::Value;

/// One tenant migration file: `<service>/<version>_<name>.sql`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    pub service: String,
    pub version: i64,
    pub name: String,
    pub sql: String,
    /// SHA-256 (hex) of the file's bytes.
    pub checksum: String,
}

/// A migration recorded as applied in a tenant's storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedMigration {
    pub service: String,
    pub version: i64,
    pub name: String,
    pub checksum: String,
    pub applied_at_ms: i64,
}

impl Migration {
    /// `0002_add_users.sql`, for messages.
    pub fn file_name(&self) -> String {
        format!("{:04}_{}.sql", self.version, self.name)
    }

    /// Given the checksum recorded for this migration in a tenant's storage (if any): `Ok(true)`
    /// when it is applied already, `Ok(false)` when it is still to apply, and an error when the
    /// file was edited after it was applied.
    pub fn is_applied(&self, recorded: Option<&str>) -> Result<bool, TenantStorageError> {
        match recorded {
            None => Ok(false),
            Some(checksum) if checksum == self.checksum => Ok(true),
            Some(checksum) => Err(TenantStorageError::ChecksumMismatch {
                service: self.service.clone(),
                file: self.file_name(),
                applied: checksum.to_string(),
                found: self.checksum.clone(),
            }),
        }
    }
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TenantStorageError {
    /// This backend cannot host this mode (e.g. `schema` on SQLite).
    #[error("{0}")]
    Unsupported(String),
    /// A migration failed inside the tenant's storage: nothing of it was kept.
    #[error("migration {service}/{file} failed: {message}")]
    MigrationFailed { service: String, file: String, message: String },
    /// An already-applied migration's file was edited afterwards.
    #[error("migration {service}/{file} was edited after it was applied (checksum {applied} recorded, {found} found)")]
    ChecksumMismatch { service: String, file: String, applied: String, found: String },
    /// A role, schema or database of the tenant's name exists that was not made for this tenant:
    /// it is never adopted (nor dropped).
    #[error("{0}")]
    Foreign(String),
    /// The database could not be reached or failed for a reason worth retrying.
    #[error("tenant storage error: {0}")]
    Backend(String),
}

impl TenantStorageError {
    /// Worth another attempt (the database was unavailable), as opposed to a definite refusal.
    pub fn is_retryable(&self) -> bool {
        matches!(self, TenantStorageError::Backend(_))
    }
}

/// A backend that hosts tenant data.
#[async_trait]
pub trait TenantStorage: Send + Sync + 'static {
    fn backend_name(&self) -> &'static str;
    /// Whether `mode` can be hosted here.
    fn supports(&self, mode: StorageMode) -> bool;
    /// Creates the tenant's storage and its login role (idempotent). Returns `{backend, location}`.
    async fn storage_create(&self, tenant_id: &str, mode: StorageMode) -> Result<Value, TenantStorageError>;
    /// Removes exactly what [`TenantStorage::storage_create`] made (idempotent).
    async fn storage_drop(&self, tenant_id: &str, mode: StorageMode) -> Result<(), TenantStorageError>;
    /// Applies the migrations not yet recorded for the tenant, each in its own transaction with
    /// its record; refuses an applied migration whose checksum changed. Returns every migration
    /// now recorded. For `pooled`, the shared tables are migrated once for all pooled tenants.
    async fn migrations_apply(
        &self,
        tenant_id: &str,
        mode: StorageMode,
        migrations: &[Migration],
        now_ms: i64,
    ) -> Result<Vec<AppliedMigration>, TenantStorageError>;
    /// Allows or stops the tenant role's logins (resume / suspend, and the first step of
    /// deprovisioning). Idempotent; a tenant without storage is a no-op.
    async fn access_set(&self, tenant_id: &str, mode: StorageMode, enabled: bool) -> Result<(), TenantStorageError>;
}
