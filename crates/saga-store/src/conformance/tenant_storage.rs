//! Checks of tenant storage, run per storage mode a backend offers: storage made once and
//! dropped idempotently, migrations applied in order and recorded once, an edited migration
//! refused, a failed migration leaving nothing of itself, access stopped and restored.
//!
//! Each check uses its own tenant id and drops what it made, so checks may share a server
//! (PostgreSQL roles are cluster-wide).

use std::sync::Arc;

use saga_core::tenant::StorageMode;
use sha2::{Digest, Sha256};

use super::{db, ensure, CheckResult};
use crate::tenant_storage::{Migration, TenantStorage, TenantStorageError};

fn tenant_id() -> String {
    format!("conf-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

fn migration(version: i64, name: &str, sql: &str) -> Migration {
    Migration {
        service: "notes".into(),
        version,
        name: name.into(),
        sql: sql.into(),
        checksum: hex::encode(Sha256::digest(sql.as_bytes())),
    }
}

/// Table names unique per tenant, so pooled tenants' shared schema never sees two checks' tables.
fn table(tenant: &str, name: &str) -> String {
    format!("{name}_{}", tenant.replace('-', "_"))
}

pub async fn modes_it_does_not_offer_are_refused(
    storage: Arc<dyn TenantStorage>,
    offered: &[StorageMode],
) -> CheckResult {
    for mode in [StorageMode::Pooled, StorageMode::Schema, StorageMode::Database] {
        ensure!(storage.supports(mode) == offered.contains(&mode), "supports({mode:?}) disagrees with {offered:?}");
        if !storage.supports(mode) {
            let refused = storage.storage_create(&tenant_id(), mode).await;
            ensure!(matches!(refused, Err(TenantStorageError::Unsupported(_))), "{mode:?}: {refused:?}");
        }
    }
    Ok(())
}

pub async fn storage_is_made_once_and_dropped_idempotently(
    storage: Arc<dyn TenantStorage>,
    mode: StorageMode,
) -> CheckResult {
    let tenant = tenant_id();
    let first = db(storage.storage_create(&tenant, mode).await)?;
    ensure!(first.get("backend").and_then(|b| b.as_str()) == Some(storage.backend_name()), "storage: {first}");
    ensure!(first.get("location").and_then(|l| l.as_str()).is_some(), "no location: {first}");
    let again = db(storage.storage_create(&tenant, mode).await)?;
    ensure!(again == first, "made twice differently: {first} then {again}");
    db(storage.storage_drop(&tenant, mode).await)?;
    db(storage.storage_drop(&tenant, mode).await)?;
    // What was dropped can be made again from nothing.
    let remade = db(storage.storage_create(&tenant, mode).await)?;
    ensure!(remade == first, "remade differently: {remade}");
    db(storage.storage_drop(&tenant, mode).await)
}

pub async fn migrations_apply_in_order_and_are_recorded_once(
    storage: Arc<dyn TenantStorage>,
    mode: StorageMode,
) -> CheckResult {
    let tenant = tenant_id();
    let notes = table(&tenant, "notes");
    db(storage.storage_create(&tenant, mode).await)?;
    let one = migration(1, "notes", &format!("CREATE TABLE {notes} (tenant_id TEXT NOT NULL, body TEXT)"));
    let two = migration(2, "index", &format!("CREATE INDEX {notes}_body ON {notes} (body)"));
    let applied = db(storage.migrations_apply(&tenant, mode, &[one.clone(), two.clone()], 100).await)?;
    let versions: Vec<i64> = applied.iter().map(|m| m.version).collect();
    ensure!(versions == vec![1, 2], "applied {versions:?}");
    ensure!(applied.iter().all(|m| m.applied_at_ms == 100 && m.service == "notes"), "records: {applied:?}");
    // Again: nothing runs twice (a second CREATE TABLE would fail), the records keep their time.
    let again = db(storage.migrations_apply(&tenant, mode, &[one.clone(), two.clone()], 200).await)?;
    ensure!(again == applied, "re-apply changed the records: {again:?}");
    let three = migration(3, "column", &format!("ALTER TABLE {notes} ADD COLUMN pinned INTEGER"));
    let after = db(storage.migrations_apply(&tenant, mode, &[one, two, three], 300).await)?;
    let times: Vec<(i64, i64)> = after.iter().map(|m| (m.version, m.applied_at_ms)).collect();
    ensure!(times == vec![(1, 100), (2, 100), (3, 300)], "after a new file: {times:?}");
    db(storage.storage_drop(&tenant, mode).await)
}

pub async fn an_edited_migration_is_refused(storage: Arc<dyn TenantStorage>, mode: StorageMode) -> CheckResult {
    let tenant = tenant_id();
    let notes = table(&tenant, "notes");
    db(storage.storage_create(&tenant, mode).await)?;
    let one = migration(1, "notes", &format!("CREATE TABLE {notes} (tenant_id TEXT NOT NULL)"));
    db(storage.migrations_apply(&tenant, mode, &[one], 1).await)?;
    let edited = migration(1, "notes", &format!("CREATE TABLE {notes} (tenant_id TEXT NOT NULL, extra TEXT)"));
    let refused = storage.migrations_apply(&tenant, mode, &[edited], 2).await;
    ensure!(matches!(refused, Err(TenantStorageError::ChecksumMismatch { .. })), "edited file: {refused:?}");
    db(storage.storage_drop(&tenant, mode).await)
}

pub async fn a_failed_migration_keeps_nothing_and_can_be_retried(
    storage: Arc<dyn TenantStorage>,
    mode: StorageMode,
) -> CheckResult {
    let tenant = tenant_id();
    let (notes, half) = (table(&tenant, "notes"), table(&tenant, "half"));
    db(storage.storage_create(&tenant, mode).await)?;
    let one = migration(1, "notes", &format!("CREATE TABLE {notes} (tenant_id TEXT NOT NULL)"));
    let broken = migration(
        2,
        "half",
        &format!("CREATE TABLE {half} (tenant_id TEXT NOT NULL); INSERT INTO no_such_table_anywhere VALUES (1)"),
    );
    let failed = storage.migrations_apply(&tenant, mode, &[one.clone(), broken], 10).await;
    match &failed {
        Err(TenantStorageError::MigrationFailed { service, file, .. }) => {
            ensure!(service == "notes" && file == "0002_half.sql", "names {service}/{file}");
        }
        other => return Err(format!("a broken file: {other:?}")),
    }
    // The fixed file creates the same table: had the failed one kept its first statement, the
    // table would exist and this would fail.
    let fixed = migration(2, "half", &format!("CREATE TABLE {half} (tenant_id TEXT NOT NULL)"));
    let applied = db(storage.migrations_apply(&tenant, mode, &[one, fixed], 20).await)?;
    let times: Vec<(i64, i64)> = applied.iter().map(|m| (m.version, m.applied_at_ms)).collect();
    ensure!(times == vec![(1, 10), (2, 20)], "after the fix: {times:?}");
    db(storage.storage_drop(&tenant, mode).await)
}

pub async fn access_can_be_stopped_and_restored(storage: Arc<dyn TenantStorage>, mode: StorageMode) -> CheckResult {
    let tenant = tenant_id();
    // A tenant without storage: a no-op.
    db(storage.access_set(&tenant, mode, false).await)?;
    db(storage.storage_create(&tenant, mode).await)?;
    for enabled in [false, false, true, true] {
        db(storage.access_set(&tenant, mode, enabled).await)?;
    }
    db(storage.storage_drop(&tenant, mode).await)
}
