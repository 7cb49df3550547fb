//! The conformance suites against PostgreSQL, one test per check: the store on a fresh database
//! per check, and tenant storage in every mode (schema, database, pooled) on a fresh database
//! per check (tenant roles are cluster-wide; each check uses its own tenant id).
//!
//! Needs a PostgreSQL server: `SAGAPLANE_TEST_DATABASE_URL` (default
//! `postgres://sagaplane:sagaplane@127.0.0.1:5432/postgres`), a role that may create databases
//! and roles. `scripts/test` starts one.

use std::str::FromStr;
use std::sync::Arc;

use saga_store::tenant_storage::TenantStorage;
use saga_store::{SchemaStore, Store};
use sqlx::postgres::PgConnectOptions;
use sqlx::ConnectOptions;
use store_postgres::{PgTenantStorage, PostgresStore};

fn admin_url() -> String {
    std::env::var("SAGAPLANE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://sagaplane:sagaplane@127.0.0.1:5432/postgres".into())
}

/// A new, empty database; its URL.
async fn fresh_database(prefix: &str) -> String {
    let admin = PgConnectOptions::from_str(&admin_url()).expect("test database url");
    let mut conn = admin.connect().await.expect("connect to test PostgreSQL (is it running? see scripts/test)");
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create database");
    admin.database(&name).to_url_lossy().to_string()
}

async fn fresh_store() -> Arc<dyn Store> {
    let store = PostgresStore::connect(&fresh_database("conformance").await, 8).await.expect("connect store");
    store.migrate(0).await.expect("migrate");
    Arc::new(store)
}

async fn fresh_tenant_storage() -> Arc<dyn TenantStorage> {
    let url = fresh_database("conformance_tenants").await;
    Arc::new(PgTenantStorage::connect(&url, 8, 4).await.expect("connect tenant storage"))
}

saga_store::store_conformance!(fresh_store);

saga_store::tenant_storage_conformance!(
    fresh_tenant_storage,
    schema: Schema,
    database: Database,
    pooled: Pooled,
);

/// The pooled tables' row-level policy names a row's role in SQL; it must be the very name
/// `tenant_object_name` gives that tenant's role, long ids included.
#[tokio::test]
async fn the_policy_derives_the_same_role_names_as_the_provisioner() {
    let admin = PgConnectOptions::from_str(&admin_url()).expect("test database url");
    let mut conn = sqlx::ConnectOptions::connect(&admin).await.expect("connect");
    let ids = [
        "acme".to_string(),
        "acme-corp".to_string(),
        format!("a{}", "b".repeat(55)),
        format!("a{}x", "b".repeat(61)),
        format!("a{}y", "b".repeat(61)),
        format!("a-{}-z", "c-".repeat(29)),
    ];
    for id in ids {
        let sql = format!(
            "SELECT {} FROM (SELECT $1::text AS tenant_id) AS row",
            store_postgres::tenant_storage::ROLE_OF_ROW_SQL
        );
        let in_sql: String = sqlx::query_scalar(&sql).bind(&id).fetch_one(&mut conn).await.expect("query");
        assert_eq!(in_sql, saga_core::tenant::tenant_object_name(&id), "{id}");
    }
}

/// The admin holds no membership of a schema tenant's roles once its storage is made and
/// migrated (each one kept made every later onboarding slower); one an earlier release kept is
/// released at the next start. A silo tenant's stay: its database is reached as its owner.
#[tokio::test]
async fn the_admin_keeps_no_membership_of_a_schema_tenants_roles() {
    use saga_core::tenant::{tenant_object_name, StorageMode};
    use saga_store::tenant_storage::Migration;
    use store_postgres::tenant_storage::migrator_name;

    let url = fresh_database("conformance_tenants").await;
    let storage = PgTenantStorage::connect(&url, 4, 2).await.expect("connect");
    let short = || uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let (schema_tenant, silo_tenant) = (format!("memb-{}", short()), format!("memb-{}", short()));
    let notes = Migration {
        service: "notes".into(),
        version: 1,
        name: "notes".into(),
        sql: "CREATE TABLE notes (id INT)".into(),
        checksum: "c1".into(),
    };
    for (tenant, mode) in [(&schema_tenant, StorageMode::Schema), (&silo_tenant, StorageMode::Database)] {
        storage.storage_create(tenant, mode).await.expect("storage");
        let applied = storage.migrations_apply(tenant, mode, std::slice::from_ref(&notes), 0).await.expect("migrate");
        assert_eq!(applied.len(), 1, "{tenant}");
    }
    let admin = storage.admin().clone();
    let memberships = |tenant: String| {
        let admin = admin.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid \
                 WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = current_user) AND r.rolname IN ($1, $2)",
            )
            .bind(tenant_object_name(&tenant))
            .bind(migrator_name(&tenant))
            .fetch_one(&admin)
            .await
            .expect("memberships")
        }
    };
    assert_eq!(memberships(schema_tenant.clone()).await, 0);
    assert_eq!(memberships(silo_tenant.clone()).await, 2);

    // What an earlier release kept, released when the storage is next opened.
    for role in [tenant_object_name(&schema_tenant), migrator_name(&schema_tenant)] {
        sqlx::raw_sql(&format!("GRANT \"{role}\" TO CURRENT_USER")).execute(&admin).await.expect("grant");
    }
    assert_eq!(memberships(schema_tenant.clone()).await, 2);
    let _reopened = PgTenantStorage::connect(&url, 4, 2).await.expect("connect again");
    assert_eq!(memberships(schema_tenant.clone()).await, 0);
    assert_eq!(memberships(silo_tenant.clone()).await, 2);

    // Both are still dropped whole, roles included.
    for (tenant, mode) in [(&schema_tenant, StorageMode::Schema), (&silo_tenant, StorageMode::Database)] {
        storage.storage_drop(tenant, mode).await.expect("drop");
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname IN ($1, $2)")
            .bind(tenant_object_name(tenant))
            .bind(migrator_name(tenant))
            .fetch_one(&admin)
            .await
            .expect("roles");
        assert_eq!(left, 0, "{tenant}");
    }
}
