//! The tenant control plane through the real binary on PostgreSQL: storage modes checked in the
//! catalog, cross-tenant isolation with real roles, delete, migrations (broken, fixed, edited),
//! bad input, and CRM webhooks. Tenant ids carry a random suffix: roles and databases are
//! cluster-wide, and tests run in parallel.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, Row};
use test_support::{eventually, App, Backend};

use crate::BIN;

const WAIT: Duration = Duration::from_secs(60);

pub fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

async fn create(app: &App, body: Value) -> (u16, Value) {
    let (status, _, body) = app.send(app.request(Method::POST, "/v1/tenants").json(&body)).await;
    (status, body)
}

/// Waits until the tenant has one of `statuses`, and returns it.
/// Tenant `id`, ACTIVE, and a new API key of it.
pub async fn active_with_key(app: &App, id: &str) -> String {
    let (status, _, body) =
        app.send(app.request(Method::POST, "/v1/tenants").json(&json!({"id": id, "name": id}))).await;
    assert_eq!(status, 202, "{body}");
    until_status(app, id, &["ACTIVE"]).await;
    let (_, _, key) = app.send(app.request(Method::POST, &format!("/v1/tenants/{id}/api-keys")).json(&json!({}))).await;
    key["token"].as_str().expect("token").to_string()
}

pub async fn until_status(app: &App, id: &str, statuses: &[&str]) -> Value {
    eventually(&format!("tenant {id} in {statuses:?}"), WAIT, || async {
        let (status, _, tenant) = app.send(app.request(Method::GET, &format!("/v1/tenants/{id}"))).await;
        (status == 200 && statuses.iter().any(|s| tenant["status"] == *s)).then_some(tenant)
    })
    .await
}

pub async fn admin_connection(app: &App) -> PgConnection {
    PgConnection::connect(&app.database_url).await.expect("admin connection")
}

async fn exists(conn: &mut PgConnection, sql: &str, name: &str) -> bool {
    sqlx::query_scalar::<_, bool>(sql).bind(name).fetch_one(conn).await.expect("catalog query")
}

const ROLE: &str = "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)";
const SCHEMA: &str = "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)";
const DATABASE: &str = "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)";

/// Runs `sql` as `role` in a transaction that is rolled back; returns rows or the SQLSTATE.
/// (The admin is no member of tenants' roles: it is made one in the same transaction.)
async fn as_role(conn: &mut PgConnection, role: &str, setting: Option<&str>, sql: &str) -> Result<Vec<String>, String> {
    let mut tx = conn.begin().await.expect("begin");
    let become_role = format!("GRANT \"{role}\" TO CURRENT_USER; SET LOCAL ROLE \"{role}\"");
    sqlx::Executor::execute(&mut *tx, become_role.as_str()).await.expect("set role");
    if let Some(tenant) = setting {
        sqlx::Executor::execute(&mut *tx, format!("SET LOCAL sagaplane.tenant_id = '{tenant}'").as_str())
            .await
            .expect("set tenant");
    }
    let result = sqlx::query(sql).fetch_all(&mut *tx).await;
    let _ = tx.rollback().await;
    match result {
        Ok(rows) => Ok(rows.iter().map(|r| r.try_get::<String, _>(0).unwrap_or_default()).collect()),
        Err(sqlx::Error::Database(e)) => Err(e.code().map(|c| c.to_string()).unwrap_or_default()),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_modes_create_exactly_their_objects_isolate_tenants_and_delete_cleanly() {
    let app = App::spawn(BIN, Backend::Postgres, &[]).await;
    let s = suffix();
    let tenants = [
        (format!("sch-a-{s}"), "bridge", "schema"),
        (format!("sch-b-{s}"), "bridge", "schema"),
        (format!("db-a-{s}"), "silo", "database"),
        (format!("pool-a-{s}"), "pooled", "pooled"),
        (format!("pool-b-{s}"), "pooled", "pooled"),
    ];
    for (id, tier, mode) in &tenants {
        let (status, body) = create(&app, json!({"id": id, "name": format!("Tenant {id}"), "tier": tier})).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["tenant"]["storage_mode"], *mode, "{tier} defaults to {mode}");
        assert_eq!(body["tenant"]["status"], "PROVISIONING");
        assert!(body["saga_id"].is_string());
    }
    for (id, _, _) in &tenants {
        let tenant = until_status(&app, id, &["ACTIVE", "PROVISION_ERROR"]).await;
        assert_eq!(tenant["status"], "ACTIVE", "{tenant}");
        let versions: Vec<(String, i64)> = tenant["migrations"]
            .as_array()
            .expect("migrations")
            .iter()
            .map(|m| (m["service"].as_str().unwrap_or("").to_string(), m["version"].as_i64().unwrap_or(0)))
            .collect();
        assert_eq!(versions, vec![("accounts".to_string(), 2), ("locations".to_string(), 1)], "{tenant}");
        let (_, _, status) = app.send(app.request(Method::GET, &format!("/v1/tenants/{id}/provisioning-status"))).await;
        assert_eq!(status["saga_status"], "COMPLETED", "{status}");
        assert_eq!(status["progress"]["percent"], 100);
    }
    let role = |id: &str| format!("tenant_{}", id.replace('-', "_"));
    let (sch_a, sch_b, db_a, pool_a, pool_b) =
        (role(&tenants[0].0), role(&tenants[1].0), role(&tenants[2].0), role(&tenants[3].0), role(&tenants[4].0));
    let mut conn = admin_connection(&app).await;

    // schema: a schema owned by the tenant's role, holding the migrated tables.
    for name in [&sch_a, &sch_b] {
        assert!(exists(&mut conn, ROLE, name).await, "role {name}");
        let owner: String =
            sqlx::query_scalar("SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = $1")
                .bind(name)
                .fetch_one(&mut conn)
                .await
                .expect("schema owner");
        assert_eq!(&owner, name, "schema {name} owned by its role");
        let mut tables: Vec<String> =
            sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY tablename")
                .bind(name)
                .fetch_all(&mut conn)
                .await
                .expect("tables");
        tables.sort();
        assert_eq!(tables, vec!["accounts", "locations"], "the records are kept out of the tenant's schema");
        let recorded: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM sagaplane_tenancy.{name}"))
            .fetch_one(&mut conn)
            .await
            .expect("records");
        assert_eq!(recorded, 3, "migrations recorded where the tenant cannot write");
    }
    assert!(!exists(&mut conn, SCHEMA, &db_a).await, "database mode makes no schema in the control database");
    // The tenant uses its own storage...
    let own = as_role(
        &mut conn,
        &sch_a,
        None,
        &format!(
            "INSERT INTO {sch_a}.accounts (id, tenant_id, name, email) VALUES (1, 'a', 'x', 'x@a.io') RETURNING name"
        ),
    )
    .await;
    assert_eq!(own, Ok(vec!["x".to_string()]));
    // ...and is denied another tenant's.
    let other = as_role(&mut conn, &sch_a, None, &format!("SELECT name FROM {sch_b}.accounts")).await;
    assert_eq!(other, Err("42501".to_string()), "cross-tenant SELECT on schema mode must be denied");

    // database: its own database owned by its role; other tenants cannot connect.
    assert!(exists(&mut conn, DATABASE, &db_a).await, "database {db_a}");
    let owner: String = sqlx::query_scalar("SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1")
        .bind(&db_a)
        .fetch_one(&mut conn)
        .await
        .expect("db owner");
    assert_eq!(owner, db_a);
    let can_connect = |who: &str| format!("SELECT has_database_privilege('{who}', '{db_a}', 'CONNECT')::text");
    let (mine, theirs) = (
        sqlx::query_scalar::<_, String>(&can_connect(&db_a)).fetch_one(&mut conn).await.expect("priv"),
        sqlx::query_scalar::<_, String>(&can_connect(&sch_a)).fetch_one(&mut conn).await.expect("priv"),
    );
    assert_eq!((mine.as_str(), theirs.as_str()), ("true", "false"), "only the owner may connect");
    let tenant_db_url = {
        let mut url = reqwest::Url::parse(&app.database_url).expect("url");
        url.set_path(&format!("/{db_a}"));
        url.to_string()
    };
    let mut tenant_db = PgConnection::connect(&tenant_db_url).await.expect("tenant database");
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT version::text FROM sagaplane_tenancy.migrations ORDER BY service, version")
            .fetch_all(&mut tenant_db)
            .await
            .expect("records");
    assert_eq!(rows, vec!["1".to_string(), "2".to_string(), "1".to_string()], "migrations recorded in its database");
    let tampered =
        as_role(&mut tenant_db, &db_a, None, "UPDATE sagaplane_tenancy.migrations SET checksum = 'x' RETURNING 'x'")
            .await;
    assert!(tampered.is_err(), "the tenant cannot rewrite its records: {tampered:?}");

    // pooled: shared tables under row-level security, one role per tenant.
    assert!(exists(&mut conn, ROLE, &pool_a).await && exists(&mut conn, ROLE, &pool_b).await);
    let policies: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_policies WHERE schemaname = 'sagaplane_pooled' AND policyname = 'tenant_isolation'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("policies");
    assert_eq!(policies, 2, "accounts and locations are guarded");
    for (role, id) in [(&pool_a, &tenants[3].0), (&pool_b, &tenants[4].0)] {
        let inserted = as_role(
            &mut conn,
            role,
            Some(id),
            &format!("INSERT INTO sagaplane_pooled.accounts (id, tenant_id, name) VALUES ({}, '{id}', '{id}') RETURNING name", if role == &pool_a { 1 } else { 2 }),
        )
        .await;
        assert_eq!(inserted, Ok(vec![id.clone()]), "{role} writes its own rows");
    }
    // Commit one row per tenant for the cross-tenant reads.
    for (role, id, n) in [(&pool_a, &tenants[3].0, 10), (&pool_b, &tenants[4].0, 20)] {
        let mut tx = conn.begin().await.expect("begin");
        sqlx::Executor::execute(
            &mut *tx,
            format!(
                "GRANT \"{role}\" TO CURRENT_USER; SET LOCAL ROLE \"{role}\"; SET LOCAL sagaplane.tenant_id = '{id}'"
            )
            .as_str(),
        )
        .await
        .expect("set");
        sqlx::query(&format!(
            "INSERT INTO sagaplane_pooled.accounts (id, tenant_id, name) VALUES ({n}, '{id}', 'kept')"
        ))
        .execute(&mut *tx)
        .await
        .expect("insert");
        let leave = format!("RESET ROLE; REVOKE \"{role}\" FROM CURRENT_USER");
        sqlx::Executor::execute(&mut *tx, leave.as_str()).await.expect("leave the role");
        tx.commit().await.expect("commit");
    }
    let mine =
        as_role(&mut conn, &pool_a, Some(&tenants[3].0), "SELECT tenant_id FROM sagaplane_pooled.accounts").await;
    assert_eq!(mine, Ok(vec![tenants[3].0.clone()]), "RLS shows only its own rows");
    let spoofed = as_role(
        &mut conn,
        &pool_a,
        Some(&tenants[4].0),
        &format!("SELECT tenant_id FROM sagaplane_pooled.accounts WHERE tenant_id = '{}'", tenants[4].0),
    )
    .await;
    assert_eq!(spoofed, Ok(vec![]), "setting another tenant's id reveals nothing");
    let forged = as_role(
        &mut conn,
        &pool_a,
        Some(&tenants[3].0),
        &format!(
            "INSERT INTO sagaplane_pooled.accounts (id, tenant_id, name) VALUES (99, '{}', 'x') RETURNING name",
            tenants[4].0
        ),
    )
    .await;
    assert_eq!(forged, Err("42501".to_string()), "writing another tenant's rows is refused");

    // Delete: storage gone, roles gone, records kept as DELETED.
    for (id, _, _) in &tenants {
        let (status, _, body) = app.send(app.request(Method::DELETE, &format!("/v1/tenants/{id}"))).await;
        assert_eq!(status, 202, "{body}");
        assert!(body["saga_id"].is_string());
    }
    for (id, _, _) in &tenants {
        let tenant = until_status(&app, id, &["DELETED"]).await;
        assert_eq!(tenant["name"], format!("Tenant {id}"), "the record stays");
    }
    for name in [&sch_a, &sch_b, &db_a, &pool_a, &pool_b] {
        assert!(!exists(&mut conn, ROLE, name).await, "role {name} dropped");
        assert!(!exists(&mut conn, SCHEMA, name).await, "schema {name} dropped");
        assert!(!exists(&mut conn, DATABASE, name).await, "database {name} dropped");
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM sagaplane_pooled.accounts")
        .fetch_one(&mut conn)
        .await
        .expect("pooled rows");
    assert_eq!(left, 0, "the pooled tenants' rows are gone");
    // A deleted tenant cannot be deleted again, suspended or resumed.
    let (status, _, _) = app.send(app.request(Method::DELETE, &format!("/v1/tenants/{}", tenants[0].0))).await;
    assert_eq!(status, 409);
    let (status, _, _) = app.send(app.request(Method::POST, &format!("/v1/tenants/{}/suspend", tenants[0].0))).await;
    assert_eq!(status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tenant_input_creates_nothing_anywhere() {
    let app = App::spawn(BIN, Backend::Postgres, &[]).await;
    let long = "a".repeat(70);
    let cases = [
        json!({"id": "Bad", "name": "x"}),
        json!({"id": "a", "name": "x"}),
        json!({"id": "x;drop table t", "name": "x"}),
        json!({"id": long, "name": "x"}),
        json!({"id": "ok-id", "name": "x", "tier": "gold"}),
        json!({"id": "ok-id", "name": "x", "storage_mode": "files"}),
        json!({"id": "ok-id", "name": ""}),
        json!({"id": "ok-id"}),
        json!({"id": "ok-id", "name": "x", "contacts": [{"name": "a", "email": "not-an-email", "role": "ops"}]}),
        json!({"id": "ok-id", "name": "x", "domains": ["bad domain"]}),
        json!({"id": "ok-id", "name": "x", "extra": 1}),
        json!(["not", "an", "object"]),
    ];
    for case in &cases {
        let (status, body) = create(&app, case.clone()).await;
        assert_eq!(status, 422, "{case}: {body}");
        assert!(body["errors"].as_array().is_some_and(|e| !e.is_empty()), "{body}");
    }
    let (status, _, body) = app
        .send(app.request(Method::POST, "/v1/tenants").header("content-type", "application/json").body("{nope"))
        .await;
    assert_eq!(status, 400, "{body}");
    let (_, _, list) = app.send(app.request(Method::GET, "/v1/tenants")).await;
    assert_eq!(list["items"], json!([]), "no tenant recorded");
    let (_, _, sagas) = app.send(app.request(Method::GET, "/v1/sagas")).await;
    assert_eq!(sagas["items"], json!([]), "no saga started");
    let mut conn = admin_connection(&app).await;
    for name in ["tenant_bad", "tenant_a", "tenant_x;drop table t", &format!("tenant_{long}"), "tenant_ok_id"] {
        assert!(!exists(&mut conn, ROLE, name).await, "no role {name}");
        assert!(!exists(&mut conn, SCHEMA, name).await, "no schema {name}");
        assert!(!exists(&mut conn, DATABASE, name).await, "no database {name}");
    }
    // A valid tenant, then the same id again: 409, and still one tenant.
    let id = format!("dup-{}", suffix());
    assert_eq!(create(&app, json!({"id": id, "name": "x", "tier": "bridge"})).await.0, 202);
    assert_eq!(create(&app, json!({"id": id, "name": "y", "tier": "bridge"})).await.0, 409);
    let (_, _, list) = app.send(app.request(Method::GET, "/v1/tenants")).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    until_status(&app, &id, &["ACTIVE"]).await;
}

/// The progress of the rollout `accepted` answered for, once its fan-out and every tenant saga
/// it started have ended.
pub async fn until_rollout_done(app: &App, accepted: &Value) -> Value {
    let rollout_id = accepted["rollout_id"].as_str().expect("rollout id");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, progress) =
            app.send(app.request(Method::GET, &format!("/v1/migrations/rollouts/{rollout_id}"))).await;
        assert_eq!(status, 200, "{progress}");
        if progress["done"] == json!(true) {
            assert_eq!(progress["fan_out"]["status"], "COMPLETED", "{progress}");
            return progress;
        }
        assert!(std::time::Instant::now() < deadline, "the rollout never finished: {progress}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn write(dir: &std::path::Path, file: &str, sql: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    std::fs::write(path, sql).expect("write migration");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_migration_is_fixed_and_retried_and_an_edited_one_is_refused() {
    let dir = std::env::temp_dir().join(format!("sagaplane-tenant-migrations-{}", uuid::Uuid::now_v7()));
    write(&dir, "billing/0001_create_invoices.sql", "CREATE TABLE invoices (id INTEGER PRIMARY KEY, total INTEGER);");
    let app =
        App::spawn(BIN, Backend::Postgres, &[("SAGAPLANE_TENANT_MIGRATIONS_DIR", dir.display().to_string())]).await;
    let id = format!("mig-{}", suffix());
    assert_eq!(create(&app, json!({"id": id, "name": "Migrating Co", "tier": "bridge"})).await.0, 202);
    let tenant = until_status(&app, &id, &["ACTIVE"]).await;
    assert_eq!(tenant["migrations"][0]["version"], 1);

    // A broken second migration, rolled out: MIGRATION_ERROR naming the file and the database's message.
    write(
        &dir,
        "billing/0002_add_currency.sql",
        "ALTER TABLE invoices ADD COLUMN currency TEXT REFERENCES nowhere (code);",
    );
    let (_, _, listing) = app.send(app.request(Method::GET, "/v1/migrations")).await;
    assert_eq!(listing["services"][0]["latest_version"], 2, "{listing}");
    let (status, _, rollout) =
        app.send(app.request(Method::POST, "/v1/migrations/rollout").json(&json!({"concurrency": 2}))).await;
    assert_eq!(status, 202, "{rollout}");
    let progress = until_rollout_done(&app, &rollout).await;
    assert_eq!(progress["total"], 1, "{progress}");
    let failed = until_status(&app, &id, &["MIGRATION_ERROR"]).await;
    let message = failed["error"]["message"].as_str().unwrap_or("").to_string();
    assert!(message.contains("0002_add_currency.sql"), "names the file: {message}");
    assert!(message.contains("nowhere"), "carries the database's message: {message}");
    let mut conn = admin_connection(&app).await;
    let schema = format!("tenant_{}", id.replace('-', "_"));
    let columns: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'invoices' AND column_name = 'currency'",
    )
    .bind(&schema)
    .fetch_one(&mut conn)
    .await
    .expect("columns");
    assert_eq!(columns, 0, "the failed migration left nothing behind");
    // Retry before fixing: fails the same way; fix the file; retry: ACTIVE at version 2.
    write(
        &dir,
        "billing/0002_add_currency.sql",
        "ALTER TABLE invoices ADD COLUMN currency TEXT NOT NULL DEFAULT 'EUR';",
    );
    let (status, _, body) = app.send(app.request(Method::POST, &format!("/v1/tenants/{id}/retry-migration"))).await;
    assert_eq!(status, 202, "{body}");
    let fixed = until_status(&app, &id, &["ACTIVE", "MIGRATION_ERROR"]).await;
    assert_eq!(fixed["status"], "ACTIVE", "{fixed}");
    assert_eq!(fixed["migrations"][0]["version"], 2, "{fixed}");
    assert_eq!(fixed["error"], Value::Null);
    let (status, _, _) = app.send(app.request(Method::POST, &format!("/v1/tenants/{id}/retry-migration"))).await;
    assert_eq!(status, 409, "only from MIGRATION_ERROR");

    // An applied migration edited afterwards is refused, clearly.
    write(&dir, "billing/0001_create_invoices.sql", "CREATE TABLE invoices (id BIGINT PRIMARY KEY);");
    write(&dir, "billing/0003_add_due_date.sql", "ALTER TABLE invoices ADD COLUMN due_date TEXT;");
    let (status, _, _) = app.send(app.request(Method::POST, "/v1/migrations/rollout").json(&json!({}))).await;
    assert_eq!(status, 202);
    let refused = until_status(&app, &id, &["MIGRATION_ERROR"]).await;
    let message = refused["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("0001_create_invoices.sql") && message.contains("edited"), "{message}");
    let recorded: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM sagaplane_tenancy.{schema}"))
        .fetch_one(&mut conn)
        .await
        .expect("recorded");
    assert_eq!(recorded, 2, "nothing past the edited file was applied");
    let _ = std::fs::remove_dir_all(&dir);
}

fn webhook_secret() -> String {
    use base64::Engine;
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::new_v4().as_bytes()))
}

async fn crm(app: &App, secret: &str, id: &str, timestamp: i64, body: &Value, tamper: bool) -> (u16, Value) {
    let payload = body.to_string();
    let mut signature =
        standardwebhooks::Webhook::new(secret).expect("secret").sign(id, timestamp, payload.as_bytes()).expect("sign");
    if tamper {
        signature = format!("{}x", &signature[..signature.len() - 1]);
    }
    let response = reqwest::Client::new()
        .post(format!("{}/v1/webhooks/crm", app.url))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(payload)
        .send()
        .await
        .expect("webhook");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_webhooks_are_verified_and_deduplicated() {
    let secret = webhook_secret();
    let app = App::spawn(BIN, Backend::Postgres, &[("SAGAPLANE_CRM_WEBHOOK_SECRET", secret.clone())]).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let id = format!("crm-{}", suffix());
    let event =
        json!({"type": "customer.created", "data": {"tenant": {"id": id, "name": "From CRM", "tier": "bridge"}}});
    assert_eq!(crm(&app, &secret, "msg_bad", now, &event, true).await.0, 401, "bad signature");
    assert_eq!(crm(&app, &secret, "msg_old", now - 400, &event, false).await.0, 401, "stale timestamp");
    assert_eq!(crm(&app, &webhook_secret(), "msg_other", now, &event, false).await.0, 401, "another secret");
    let (_, _, list) = app.send(app.request(Method::GET, "/v1/tenants")).await;
    assert_eq!(list["items"], json!([]), "refused webhooks create nothing");
    let (status, first) = crm(&app, &secret, "msg_1", now, &event, false).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["tenant"]["id"], id);
    let (status, replay) = crm(&app, &secret, "msg_1", now, &event, false).await;
    assert_eq!(status, 200, "a replay answers 200");
    assert_eq!(replay, first, "with the first result");
    let (_, _, list) = app.send(app.request(Method::GET, "/v1/tenants")).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "and no second tenant");
    // Valid signature, unsupported event: a clear 422, and its replay the same.
    let other = json!({"type": "customer.deleted", "data": {}});
    assert_eq!(crm(&app, &secret, "msg_2", now, &other, false).await.0, 422);
    assert_eq!(crm(&app, &secret, "msg_2", now, &other, false).await.0, 422);
    until_status(&app, &id, &["ACTIVE"]).await;
    // Without a secret the endpoint does not exist.
    let plain = App::spawn(BIN, Backend::Sqlite, &[]).await;
    assert_eq!(crm(&plain, &secret, "msg_1", now, &event, false).await.0, 404);
}

/// A tenant onboarded through the CRM webhook reports its outcome to `SAGAPLANE_CRM_CALLBACK_URL`,
/// signed with `SAGAPLANE_CRM_CALLBACK_SECRET`, through the outbox (retried while the CRM is
/// down, same `webhook-id`); tenants created otherwise report nothing there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_onboarded_tenants_report_their_outcome_to_the_crm() {
    let crm_side = test_support::Participant::start().await;
    crm_side.script("/callback", vec![(503, json!({})), (200, json!({}))]);
    let idp = test_support::Participant::start().await;
    let (inbound, outbound) = (webhook_secret(), webhook_secret());
    let env = [
        ("SAGAPLANE_CRM_WEBHOOK_SECRET", inbound.clone()),
        ("SAGAPLANE_CRM_CALLBACK_URL", format!("{}/callback", crm_side.url)),
        ("SAGAPLANE_CRM_CALLBACK_SECRET", outbound.clone()),
        ("SAGAPLANE_DELIVERY_RETRY_SCHEDULE", "200ms,200ms".to_string()),
        ("SAGAPLANE_VAR_IDP", idp.url.clone()),
    ];
    let app = App::spawn(BIN, Backend::Sqlite, &env).await;
    // Provisioning calls an identity provider that refuses one of the tenants.
    let (_, _, builtin) = app.send(app.request(Method::GET, "/v1/definitions/tenant.provision")).await;
    let mut extended = builtin["definition"].clone();
    extended["steps"].as_array_mut().expect("steps").insert(
        3,
        json!({"name": "idp_realm", "action": {"http": {"method": "POST", "url": "{{ vars.IDP }}/realms/{{ tenant_id }}"}}}),
    );
    assert_eq!(app.put_definition("tenant.provision", &extended).await.0, 201);
    let (good, bad, plain) = (format!("won-{}", suffix()), format!("lost-{}", suffix()), format!("own-{}", suffix()));
    idp.script(&format!("/realms/{bad}"), vec![(400, json!({"error": "realm refused"}))]);
    let (_, _, everything) = app
        .send(
            app.request(Method::POST, "/v1/subscriptions")
                .json(&json!({"url": format!("{}/all", crm_side.url), "events": ["*"]})),
        )
        .await;

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    for (n, id) in [&good, &bad].into_iter().enumerate() {
        let event = json!({"type": "customer.created", "data": {"tenant": {"id": id, "name": "From CRM"}}});
        assert_eq!(crm(&app, &inbound, &format!("msg_{n}"), now, &event, false).await.0, 202);
    }
    assert_eq!(create(&app, json!({"id": plain, "name": "Not from the CRM"})).await.0, 202);
    until_status(&app, &good, &["ACTIVE"]).await;
    until_status(&app, &bad, &["PROVISION_ERROR"]).await;
    until_status(&app, &plain, &["ACTIVE"]).await;

    let callbacks = eventually("both outcomes delivered", WAIT, || async {
        let seen = crm_side.requests("/callback");
        (seen.len() >= 3).then_some(seen)
    })
    .await;
    let outcome = |tenant: &str| {
        let mut of: Vec<_> = callbacks.iter().filter(|s| s.body["data"]["tenant_id"] == tenant).collect();
        of.dedup_by(|a, b| a.headers["webhook-id"] == b.headers["webhook-id"]);
        of
    };
    let won = outcome(&good);
    assert_eq!(won.len(), 1, "one event, however many attempts: {callbacks:?}");
    let lost = outcome(&bad);
    assert_eq!(lost.len(), 1, "{callbacks:?}");
    let types: std::collections::BTreeSet<_> =
        [&won[0].body["type"], &lost[0].body["type"]].into_iter().map(|t| t.as_str().unwrap_or_default()).collect();
    assert_eq!(types, ["tenant.activated", "tenant.provision_failed"].into_iter().collect(), "{callbacks:?}");
    assert_eq!(callbacks.len(), 3, "the first attempt was refused and retried, same id: {callbacks:?}");
    for seen in &callbacks {
        let id = &seen.headers["webhook-id"];
        let timestamp: i64 = seen.headers["webhook-timestamp"].parse().expect("timestamp");
        let body = serde_json::to_vec(&seen.body).expect("body");
        let signed =
            standardwebhooks::Webhook::new(&outbound).expect("secret").sign(id, timestamp, &body).expect("sign");
        assert_eq!(seen.headers["webhook-signature"], signed, "signed with the callback secret");
    }
    assert!(outcome(&plain).is_empty(), "a tenant created through the API is not the CRM's");

    // The admin's own subscription still gets every tenant event once, not the CRM's copies.
    let subscription = everything["id"].as_str().expect("id");
    let all = eventually("the admin subscription's activations", WAIT, || async {
        let path = format!("/v1/deliveries?subscription_id={subscription}&status=succeeded&limit=100");
        let (_, _, page) = app.send(app.request(Method::GET, &path)).await;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        let activated = items.iter().filter(|d| d["event_type"] == "tenant.activated").count();
        (activated >= 2).then_some(items)
    })
    .await;
    let activated = all.iter().filter(|d| d["event_type"] == "tenant.activated").count();
    assert_eq!(activated, 2, "good and plain, once each: {all:?}");
    let (_, _, listed) = app.send(app.request(Method::GET, "/v1/subscriptions")).await;
    assert!(listed.to_string().contains("/callback"), "the CRM callback is a subscription the admin can see: {listed}");
}

/// Tenant routes a tenant key may use on its own tenant; every other `/v1` route is admin-only.
const TENANT_ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/tenants"),
    ("get", "/v1/tenants/{id}"),
    ("patch", "/v1/tenants/{id}"),
    ("get", "/v1/tenants/{id}/provisioning-status"),
    ("get", "/v1/tenants/{id}/users"),
    ("post", "/v1/tenants/{id}/users"),
    ("put", "/v1/tenants/{id}/users/{user_id}"),
    ("delete", "/v1/tenants/{id}/users/{user_id}"),
    ("post", "/v1/tenants/{id}/api-keys"),
    ("delete", "/v1/tenants/{id}/api-keys/{key_id}"),
    ("get", "/v1/sagas"),
    ("get", "/v1/sagas/{id}"),
    ("get", "/v1/sagas/{id}/events"),
    ("get", "/v1/sagas/{id}/blockers"),
    ("get", "/v1/subscriptions"),
    ("post", "/v1/subscriptions"),
    ("get", "/v1/subscriptions/{id}"),
    ("patch", "/v1/subscriptions/{id}"),
    ("delete", "/v1/subscriptions/{id}"),
    ("post", "/v1/subscriptions/{id}/rotate-secret"),
    ("post", "/v1/subscriptions/{id}/recover"),
    ("get", "/v1/deliveries"),
    ("get", "/v1/deliveries/{id}"),
    ("post", "/v1/deliveries/{id}/replay"),
    ("post", "/v1/sagas/actions"),
    ("post", "/v1/deliveries/actions"),
    ("get", "/v1/jobs/{id}"),
    ("post", "/v1/jobs/{id}/cancel"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_authorizes_admin_own_tenant_and_other_tenant_keys() {
    let app = App::spawn(BIN, Backend::Sqlite, &[("SAGAPLANE_CRM_WEBHOOK_SECRET", webhook_secret())]).await;
    let (a, b) = (format!("own-{}", suffix()), format!("other-{}", suffix()));
    let mut sagas = std::collections::HashMap::new();
    for id in [&a, &b] {
        let (status, body) = create(&app, json!({"id": id, "name": id, "tier": "silo"})).await;
        assert_eq!(status, 202, "{body}");
        sagas.insert(id.clone(), body["saga_id"].as_str().expect("saga").to_string());
        until_status(&app, id, &["ACTIVE"]).await;
    }
    let key = |id: &str| {
        let app = &app;
        let id = id.to_string();
        async move {
            let (status, _, body) = app
                .send(app.request(Method::POST, &format!("/v1/tenants/{id}/api-keys")).json(&json!({"name": "ci"})))
                .await;
            assert_eq!(status, 201, "{body}");
            assert!(body["token"].as_str().is_some_and(|t| t.starts_with("sptk_")), "{body}");
            body
        }
    };
    let (key_a, key_b, spare_a) = (key(&a).await, key(&b).await, key(&a).await);
    let (token_a, token_b) = (key_a["token"].as_str().expect("token"), key_b["token"].as_str().expect("token"));
    let (status, _, user) = app
        .send(
            app.request(Method::POST, &format!("/v1/tenants/{a}/users")).json(&json!({"email": "u@a.io", "name": "U"})),
        )
        .await;
    assert_eq!(status, 201, "{user}");
    // Tenant A's subscription, and a delivery of one of its sagas' events to it.
    let (status, _, subscription) = app
        .send(
            app.http
                .post(format!("{}/v1/subscriptions", app.url))
                .bearer_auth(key_a["token"].as_str().unwrap_or(""))
                .json(&json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]})),
        )
        .await;
    assert_eq!(status, 201, "{subscription}");
    app.put_definition(
        "one",
        &test_support::app::fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}])),
    )
    .await;
    let body = json!({"definition": "one", "input": {}, "tenant_id": a});
    let (status, _, _) = app.send(app.request(Method::POST, "/v1/sagas?wait=10s").json(&body)).await;
    assert!(status == 200 || status == 201);
    let (_, _, deliveries) = app.send(app.request(Method::GET, "/v1/deliveries")).await;
    let delivery_id = deliveries["items"][0]["id"].as_str().expect("a delivery").to_string();
    let subscription_id = subscription["id"].as_str().expect("id").to_string();
    // A bulk job of tenant A's, confined to its tenant.
    let (status, _, job) = app
        .send(
            app.http
                .post(format!("{}/v1/sagas/actions", app.url))
                .bearer_auth(token_a)
                .json(&json!({"action": "cancel", "filter": {"definition": "one"}})),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let job_id = job["job_id"].as_str().expect("job id").to_string();
    let (status, _, refused) = app
        .send(
            app.http
                .post(format!("{}/v1/sagas/actions", app.url))
                .bearer_auth(token_a)
                .json(&json!({"action": "cancel", "filter": {"tenant_id": b}})),
        )
        .await;
    assert_eq!(status, 403, "a filter naming another tenant: {refused}");

    let (_, _, spec) = app.send(app.request(Method::GET, "/openapi.json")).await;
    let mut routes: Vec<(String, String)> = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                routes.push((method.to_string(), path.clone()));
            }
        }
    }
    assert_eq!(routes.len(), 57, "every route is documented (server::ROUTES has the same count)");
    // Deletes last, so the routes after them still find what they name.
    routes.sort_by_key(|(method, _)| method == "delete");
    let concrete = |path: &str| {
        let id = match path {
            _ if path.starts_with("/v1/sagas/") => sagas[&a].clone(),
            _ if path.starts_with("/v1/subscriptions/") => subscription_id.clone(),
            _ if path.starts_with("/v1/deliveries/") => delivery_id.clone(),
            _ if path.starts_with("/v1/jobs/") => job_id.clone(),
            _ => a.clone(),
        };
        path.replace("{id}", &id)
            .replace("{name}", "tenant.provision")
            .replace("{version}", "1")
            .replace("{token}", "not-a-token")
            .replace("{user_id}", user["id"].as_str().unwrap_or(""))
            .replace("{key_id}", spare_a["id"].as_str().unwrap_or(""))
            .replace("{rollout_id}", &uuid::Uuid::now_v7().to_string())
            .replace("/debug/pprof/profile", "/debug/pprof/profile?seconds=1")
    };
    let public = |path: &str| {
        !(path.starts_with("/v1/") || path.starts_with("/debug/"))
            || path.starts_with("/v1/callbacks/")
            || path.starts_with("/v1/webhooks/")
    };
    let http = reqwest::Client::new();
    let call = |method: &str, path: &str, token: Option<&str>| {
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("method");
        let mut request = http.request(method.clone(), format!("{}{}", app.url, concrete(path)));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if [Method::POST, Method::PUT, Method::PATCH].contains(&method) {
            request = request.json(&json!({}));
        }
        async move {
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Every non-public route refuses a missing or unknown token.
    for (method, path) in &routes {
        if public(path) {
            continue;
        }
        assert_eq!(call(method, path, None).await.0, 401, "{method} {path} without a token");
        assert_eq!(call(method, path, Some("sptk_unknown")).await.0, 401, "{method} {path} with an unknown key");
    }
    // The other tenant's key: admin-only routes 403; tenant A's resources 404; lists hold only B.
    for (method, path) in &routes {
        if public(path) {
            continue;
        }
        let (status, body) = call(method, path, Some(token_b)).await;
        let tenant_route = TENANT_ROUTES.contains(&(method.as_str(), path.as_str()));
        match (tenant_route, path.contains("{id}")) {
            (false, _) => assert_eq!(status, 403, "{method} {path} with another tenant's key: {body}"),
            (true, true) => assert_eq!(status, 404, "{method} {path} with another tenant's key: {body}"),
            (true, false) => {
                // A create with an empty body is refused as invalid, not as forbidden.
                let expected = if method == "post" { 422 } else { 200 };
                assert_eq!(status, expected, "{method} {path}: {body}");
                let text = body.to_string();
                assert!(!text.contains(&a), "{path} leaks tenant {a} to {b}: {text}");
            }
        }
    }
    // The tenant's own key: its own resources yes, admin-only routes 403.
    for (method, path) in &routes {
        if public(path) {
            continue;
        }
        let (status, body) = call(method, path, Some(token_a)).await;
        if TENANT_ROUTES.contains(&(method.as_str(), path.as_str())) {
            assert!(![401, 403, 404].contains(&status), "{method} {path} with its own key: {status} {body}");
        } else {
            assert_eq!(status, 403, "{method} {path} is admin-only: {body}");
        }
    }
    // The admin: everything is reachable (destructive routes last, on tenant A).
    for (method, path) in routes.iter().filter(|(_, path)| !public(path)) {
        let (status, body) = call(method, path, Some(test_support::app::TOKEN)).await;
        assert!(![401, 403].contains(&status), "{method} {path} as admin: {status} {body}");
    }
    // A revoked key stops working.
    let (status, _, _) = app
        .send(app.request(Method::DELETE, &format!("/v1/tenants/{b}/api-keys/{}", key_b["id"].as_str().unwrap_or(""))))
        .await;
    assert_eq!(status, 204);
    assert_eq!(call("get", "/v1/tenants", Some(token_b)).await.0, 401, "revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_resume_and_cancel_provisioning() {
    let dir = std::env::temp_dir().join(format!("sagaplane-slow-migrations-{}", uuid::Uuid::now_v7()));
    // A slow migration keeps provisioning in flight long enough to cancel it, even under load.
    write(&dir, "slow/0001_wait.sql", "SELECT pg_sleep(4); CREATE TABLE waited (id INTEGER);");
    let app =
        App::spawn(BIN, Backend::Postgres, &[("SAGAPLANE_TENANT_MIGRATIONS_DIR", dir.display().to_string())]).await;
    let mut conn = admin_connection(&app).await;

    // Suspend: the role cannot log in; resume: it can again. Wrong states: 409.
    let id = format!("sus-{}", suffix());
    let role = format!("tenant_{}", id.replace('-', "_"));
    assert_eq!(create(&app, json!({"id": id, "name": "Suspendable", "tier": "bridge"})).await.0, 202);
    until_status(&app, &id, &["ACTIVE"]).await;
    assert!(can_login(&mut conn, &role).await);
    let (status, _, body) = app.send(app.request(Method::POST, &format!("/v1/tenants/{id}/suspend"))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("SUSPENDED")), "{body}");
    assert!(!can_login(&mut conn, &role).await, "a suspended tenant's role cannot log in");
    assert_eq!(app.send(app.request(Method::POST, &format!("/v1/tenants/{id}/suspend"))).await.0, 409);
    let (status, _, body) = app.send(app.request(Method::POST, &format!("/v1/tenants/{id}/resume"))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ACTIVE")), "{body}");
    assert!(can_login(&mut conn, &role).await);
    assert_eq!(app.send(app.request(Method::POST, &format!("/v1/tenants/{id}/resume"))).await.0, 409);

    // Cancel while provisioning: what was created is removed; PROVISION_ERROR with the reason.
    let id = format!("cancel-{}", suffix());
    let schema = format!("tenant_{}", id.replace('-', "_"));
    assert_eq!(create(&app, json!({"id": id, "name": "Cancelled", "tier": "bridge"})).await.0, 202);
    until_status(&app, &id, &["MIGRATING"]).await;
    assert!(exists(&mut conn, SCHEMA, &schema).await, "storage exists before the cancel");
    let (status, _, body) = app.send(app.request(Method::POST, &format!("/v1/tenants/{id}/cancel-provisioning"))).await;
    assert_eq!(status, 202, "{body}");
    let tenant = until_status(&app, &id, &["PROVISION_ERROR"]).await;
    assert_eq!(tenant["error"]["kind"], "cancelled", "{tenant}");
    assert!(!exists(&mut conn, SCHEMA, &schema).await, "the schema it created is gone");
    assert!(!exists(&mut conn, ROLE, &schema).await, "the role it created is gone");
    let (status, _, _) = app.send(app.request(Method::POST, &format!("/v1/tenants/{id}/cancel-provisioning"))).await;
    assert_eq!(status, 409, "nothing left to cancel");
    // A failed tenant can still be deleted (its record ends DELETED).
    assert_eq!(app.send(app.request(Method::DELETE, &format!("/v1/tenants/{id}"))).await.0, 202);
    until_status(&app, &id, &["DELETED"]).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_extend_provisioning_but_cannot_drop_builtin_steps() {
    let participant = test_support::Participant::start().await;
    let app = App::spawn(BIN, Backend::Sqlite, &[("SAGAPLANE_VAR_IDP", participant.url.clone())]).await;
    let (status, _, builtin) = app.send(app.request(Method::GET, "/v1/definitions/tenant.provision")).await;
    assert_eq!(status, 200, "the built-in saga is an ordinary, readable definition");
    let mut extended = builtin["definition"].clone();
    let steps = extended["steps"].as_array_mut().expect("steps");
    steps.insert(
        3,
        json!({"name": "idp_realm",
               "action": {"http": {"method": "POST", "url": "{{ vars.IDP }}/realms", "body": {"realm": "{{ tenant_id }}"}}},
               "compensation": {"http": {"method": "DELETE", "url": "{{ vars.IDP }}/realms/{{ tenant_id }}"}}}),
    );
    let (status, body) = app.put_definition("tenant.provision", &extended).await;
    assert_eq!(status, 201, "{body}");
    let mut dropped = extended.clone();
    dropped["steps"].as_array_mut().expect("steps").retain(|s| s["name"] != "migrations");
    let (status, body) = app.put_definition("tenant.provision", &dropped).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["path"], "/steps");
    let sneaky = json!({"steps": [{"name": "drop", "action": {"builtin": "tenant.storage.drop"}}]});
    assert_eq!(app.put_definition("sneaky", &sneaky).await.0, 422, "tenant builtins stay in tenant sagas");
    let id = format!("ext-{}", suffix());
    assert_eq!(create(&app, json!({"id": id, "name": "Extended", "tier": "silo"})).await.0, 202);
    until_status(&app, &id, &["ACTIVE"]).await;
    let realm = participant.requests("/realms");
    assert_eq!(realm.len(), 1, "the operator's step ran");
    assert_eq!(realm[0].body, json!({"realm": id}));
}

async fn can_login(conn: &mut PgConnection, role: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
        .bind(role)
        .fetch_one(conn)
        .await
        .expect("role")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_provisioning_is_taken_over_without_duplicates() {
    let dir = std::env::temp_dir().join(format!("sagaplane-crash-migrations-{}", uuid::Uuid::now_v7()));
    write(&dir, "app/0001_first.sql", "CREATE TABLE first_table (id INTEGER);");
    // Long enough that the kill lands inside it even on a loaded machine.
    write(&dir, "app/0002_slow.sql", "SELECT pg_sleep(5); CREATE TABLE slow_table (id INTEGER);");
    write(&dir, "app/0003_last.sql", "CREATE TABLE last_table (id INTEGER);");
    let database_url = Backend::Postgres.fresh_url().await;
    let env = [
        ("SAGAPLANE_TENANT_MIGRATIONS_DIR", dir.display().to_string()),
        ("SAGAPLANE_LEASE_TTL", "1s".to_string()),
        ("SAGAPLANE_POLL_INTERVAL", "100ms".to_string()),
    ];
    let with_name = |name: &str| {
        let mut env = env.to_vec();
        env.push(("SAGAPLANE_WORKER_ID", name.to_string()));
        env
    };
    let mut first = Some(App::spawn_on(BIN, &database_url, &["server"], &with_name("first")).await);
    let mut second = Some(App::spawn_on(BIN, &database_url, &["server"], &with_name("second")).await);
    let id = format!("crash-{}", suffix());
    let schema = format!("tenant_{}", id.replace('-', "_"));
    let api = first.as_ref().expect("first");
    let (status, created) = create(api, json!({"id": id, "name": "Crashy", "tier": "bridge"})).await;
    assert_eq!(status, 202, "{created}");
    let saga_id = created["saga_id"].as_str().expect("saga").to_string();
    until_status(api, &id, &["MIGRATING"]).await;
    // The service's migrations run in a branch of the saga's `migrations` group.
    let branch_id = eventually("the migration's branch", Duration::from_secs(30), || async {
        let events = api.events(&saga_id).await;
        events.into_iter().find(|e| e["type"] == "branch_started").map(|e| e["data"]["child_saga_id"].clone())
    })
    .await;
    let branch_id = branch_id.as_str().expect("a branch id").to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Kill whichever instance drives the branch, in the middle of the 5 s migration.
    let (_, _, saga) = api.send(api.request(Method::GET, &format!("/v1/sagas/{branch_id}"))).await;
    let owner = saga["lease_owner"].as_str().expect("a driver holds the branch").to_string();
    let (mut doomed, survivor) = if owner == "first" {
        (first.take().expect("first"), second.take().expect("second"))
    } else {
        (second.take().expect("second"), first.take().expect("first"))
    };
    doomed.child_mut().kill().await.expect("SIGKILL mid-migration");
    let (_, _, during) = survivor.send(survivor.request(Method::GET, &format!("/v1/tenants/{id}"))).await;
    assert_eq!(during["status"], "MIGRATING", "killed while migrating: {during}");
    let tenant = until_status(&survivor, &id, &["ACTIVE", "PROVISION_ERROR", "MIGRATION_ERROR"]).await;
    assert_eq!(tenant["status"], "ACTIVE", "{tenant}");
    assert_eq!(tenant["migrations"][0]["version"], 3, "{tenant}");
    let mut conn = PgConnection::connect(&database_url).await.expect("admin");
    let recorded: Vec<i64> =
        sqlx::query_scalar(&format!("SELECT version FROM sagaplane_tenancy.{schema} ORDER BY version"))
            .fetch_all(&mut conn)
            .await
            .expect("recorded");
    assert_eq!(recorded, vec![1, 2, 3], "each migration recorded once");
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY tablename")
            .bind(&schema)
            .fetch_all(&mut conn)
            .await
            .expect("tables");
    assert_eq!(tables, vec!["first_table", "last_table", "slow_table"]);
    let schemas: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
        .bind(&schema)
        .fetch_one(&mut conn)
        .await
        .expect("schemas");
    assert_eq!(schemas, 1);
    let (_, _, events) = survivor.send(survivor.request(Method::GET, &format!("/v1/sagas/{branch_id}/events"))).await;
    let takeover = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["type"] == "lease_acquired" && e["data"]["takeover"] == json!(true));
    assert!(takeover, "the survivor took the saga over: {events}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_migrates_the_tenants_behind_within_its_concurrency_limit() {
    let dir = std::env::temp_dir().join(format!("sagaplane-rollout-migrations-{}", uuid::Uuid::now_v7()));
    write(&dir, "app/0001_init.sql", "CREATE TABLE things (id INTEGER);");
    let app =
        App::spawn(BIN, Backend::Postgres, &[("SAGAPLANE_TENANT_MIGRATIONS_DIR", dir.display().to_string())]).await;
    let s = suffix();
    let ids: Vec<String> = (0..3).map(|n| format!("roll-{n}-{s}")).collect();
    for id in &ids {
        assert_eq!(create(&app, json!({"id": id, "name": id, "tier": "bridge"})).await.0, 202);
    }
    for id in &ids {
        until_status(&app, id, &["ACTIVE"]).await;
    }
    write(&dir, "app/0002_slow.sql", "SELECT pg_sleep(0.4); ALTER TABLE things ADD COLUMN label TEXT;");
    let (status, _, rollout) = app
        .send(app.request(Method::POST, "/v1/migrations/rollout").json(&json!({"service": "app", "concurrency": 1})))
        .await;
    assert_eq!(status, 202, "{rollout}");
    // The answer comes at once: the rollout is a saga of its own that starts the tenants' sagas.
    assert_eq!(rollout["saga_id"], rollout["rollout_id"], "{rollout}");
    assert_eq!(rollout["sagas"], json!([]), "{rollout}");
    // At most one tenant.migrate saga runs at a time; all end ACTIVE at version 2.
    let mut most = 0;
    loop {
        // Running = started (EXECUTING: a saga parked while its per-service branches migrate holds
        // no lease, but keeps its slot), or holding a lease to start (a saga waiting for its slot
        // is PENDING and holds none).
        let (_, _, listed) = app.send(app.request(Method::GET, "/v1/sagas?definition=tenant.migrate")).await;
        let running = listed["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|saga| {
                saga["status"] == "EXECUTING" || (!saga["lease_owner"].is_null() && saga["status"] == "PENDING")
            })
            .count();
        most = most.max(running);
        let (_, _, done) =
            app.send(app.request(Method::GET, "/v1/sagas?definition=tenant.migrate&status=COMPLETED")).await;
        if done["items"].as_array().map(Vec::len) == Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(most, 1, "the rollout's concurrency limit held");
    let rollout_id = rollout["rollout_id"].as_str().expect("rollout id");
    let (status, _, progress) =
        app.send(app.request(Method::GET, &format!("/v1/migrations/rollouts/{rollout_id}"))).await;
    assert_eq!(status, 200, "{progress}");
    assert_eq!((progress["total"].as_u64(), progress["done"].as_bool()), (Some(3), Some(true)), "{progress}");
    assert_eq!(progress["statuses"]["COMPLETED"], 3);
    let unknown = uuid::Uuid::now_v7();
    assert_eq!(app.send(app.request(Method::GET, &format!("/v1/migrations/rollouts/{unknown}"))).await.0, 404);
    for id in &ids {
        let tenant = until_status(&app, id, &["ACTIVE"]).await;
        assert_eq!(tenant["migrations"][0]["version"], 2, "{tenant}");
    }
    // Nobody is behind any more: a second rollout starts nothing.
    let (_, _, again) = app.send(app.request(Method::POST, "/v1/migrations/rollout").json(&json!({}))).await;
    let progress = until_rollout_done(&app, &again).await;
    assert_eq!((progress["total"].as_u64(), progress["fan_out"]["started"].as_u64()), (Some(0), Some(0)), "{progress}");
    let (status, _, body) =
        app.send(app.request(Method::POST, "/v1/migrations/rollout").json(&json!({"service": "nope"}))).await;
    assert_eq!(status, 422, "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_store_every_default_tenant_works() {
    let secret = webhook_secret();
    let app = App::spawn(BIN, Backend::Sqlite, &[("SAGAPLANE_CRM_WEBHOOK_SECRET", secret.clone())]).await;
    // No tier, no storage mode: pooled tier, and the storage mode the embedded store offers.
    let (status, body) = create(&app, json!({"id": "acme", "name": "Acme"})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["tenant"]["tier"].as_str(), body["tenant"]["storage_mode"].as_str()),
        (Some("pooled"), Some("database"))
    );
    for tier in ["bridge", "silo"] {
        let (status, body) = create(&app, json!({"id": format!("{tier}-co"), "name": tier, "tier": tier})).await;
        assert_eq!((status, body["tenant"]["storage_mode"].as_str()), (202, Some("database")), "{body}");
    }
    // A mode asked for explicitly that this storage lacks: 422 naming what it offers; nothing made.
    for mode in ["schema", "pooled"] {
        let (status, body) = create(&app, json!({"id": "explicit", "name": "x", "storage_mode": mode})).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["errors"][0]["path"], "/storage_mode", "{body}");
        let message = body["errors"][0]["message"].as_str().unwrap_or("");
        assert!(message.contains(mode) && message.contains("offers: database"), "{message}");
    }
    assert_eq!(app.send(app.request(Method::GET, "/v1/tenants/explicit")).await.0, 404);
    // A CRM webhook whose tenant names no tier.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let event = json!({"type": "customer.created", "data": {"tenant": {"id": "from-crm", "name": "From CRM"}}});
    let (status, body) = crm(&app, &secret, "msg_default", now, &event, false).await;
    assert_eq!((status, body["tenant"]["storage_mode"].as_str()), (202, Some("database")), "{body}");
    for id in ["acme", "bridge-co", "silo-co", "from-crm"] {
        let tenant = until_status(&app, id, &["ACTIVE", "PROVISION_ERROR", "MIGRATION_ERROR"]).await;
        assert_eq!(tenant["status"], "ACTIVE", "{tenant}");
        assert_eq!(tenant["storage"]["backend"], "sqlite", "{tenant}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_that_fails_during_onboarding_keeps_the_storage_for_a_retry() {
    let dir = std::env::temp_dir().join(format!("sagaplane-onboarding-migrations-{}", uuid::Uuid::now_v7()));
    write(&dir, "billing/0001_create_invoices.sql", "CREATE TABLE invoices (id INTEGER PRIMARY KEY);");
    write(
        &dir,
        "billing/0002_add_currency.sql",
        "ALTER TABLE invoices ADD COLUMN currency TEXT REFERENCES nowhere (code);",
    );
    let app =
        App::spawn(BIN, Backend::Postgres, &[("SAGAPLANE_TENANT_MIGRATIONS_DIR", dir.display().to_string())]).await;
    let mut conn = admin_connection(&app).await;
    let id = format!("onb-{}", suffix());
    let schema = format!("tenant_{}", id.replace('-', "_"));
    let (status, created) = create(&app, json!({"id": id, "name": "Onboarding Co", "tier": "bridge"})).await;
    assert_eq!(status, 202, "{created}");
    let provision_saga = created["saga_id"].as_str().expect("saga id").to_string();

    // MIGRATION_ERROR, not PROVISION_ERROR: storage kept, the first migration still there.
    let failed = until_status(&app, &id, &["MIGRATION_ERROR", "PROVISION_ERROR", "ACTIVE"]).await;
    assert_eq!(failed["status"], "MIGRATION_ERROR", "{failed}");
    let message = failed["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("0002_add_currency.sql") && message.contains("nowhere"), "file and db message: {message}");
    assert_eq!(failed["error"]["step"], "migrations", "{failed}");
    assert!(exists(&mut conn, SCHEMA, &schema).await, "the schema is kept");
    assert!(exists(&mut conn, ROLE, &schema).await, "the role is kept");
    assert_eq!(recorded_versions(&mut conn, &schema).await, vec![1], "the first migration stays applied");
    // The onboarding saga itself failed forward: nothing compensated, an operator's to retry.
    let saga = app.saga(&provision_saga).await;
    assert_eq!(saga["status"], "FAILED", "{saga}");
    let history = app.event_types(&provision_saga).await;
    assert!(!history.iter().any(|t| t == "step_compensated"), "nothing undone: {history:?}");

    // Fix the file; retry-migration resumes the same saga at the failed migration.
    write(
        &dir,
        "billing/0002_add_currency.sql",
        "ALTER TABLE invoices ADD COLUMN currency TEXT NOT NULL DEFAULT 'EUR';",
    );
    let (status, _, body) = app.send(app.request(Method::POST, &format!("/v1/tenants/{id}/retry-migration"))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["saga_id"].as_str(), Some(provision_saga.as_str()), "the onboarding saga is retried: {body}");
    let active = until_status(&app, &id, &["ACTIVE", "MIGRATION_ERROR"]).await;
    assert_eq!(active["status"], "ACTIVE", "{active}");
    assert_eq!(active["migrations"][0]["version"], 2, "{active}");
    assert_eq!(active["error"], Value::Null);
    assert_eq!(recorded_versions(&mut conn, &schema).await, vec![1, 2], "each migration recorded once");
    let history = app.event_types(&provision_saga).await;
    let retried = history.iter().position(|t| t == "saga_retried").expect("saga_retried in history");
    assert!(history[retried..].iter().any(|t| t == "saga_completed"), "{history:?}");
    assert_eq!(
        history.iter().filter(|t| *t == "step_succeeded").count(),
        5,
        "record, storage, services, migrations, activate once: {history:?}"
    );
    // The migrations ran per service: the failed service's branch ran again on the retry, in
    // a new generation.
    assert_eq!(history.iter().filter(|t| *t == "branch_started").count(), 2, "{history:?}");

    // DELETE of a MIGRATION_ERROR tenant drops what was made.
    write(&dir, "billing/0003_broken.sql", "ALTER TABLE nowhere ADD COLUMN x INTEGER;");
    let other = format!("onb-del-{}", suffix());
    let other_schema = format!("tenant_{}", other.replace('-', "_"));
    assert_eq!(create(&app, json!({"id": other, "name": "Deleted Co", "tier": "bridge"})).await.0, 202);
    let failed = until_status(&app, &other, &["MIGRATION_ERROR", "PROVISION_ERROR", "ACTIVE"]).await;
    assert_eq!(failed["status"], "MIGRATION_ERROR", "{failed}");
    assert!(exists(&mut conn, SCHEMA, &other_schema).await);
    assert_eq!(app.send(app.request(Method::DELETE, &format!("/v1/tenants/{other}"))).await.0, 202);
    until_status(&app, &other, &["DELETED"]).await;
    assert!(!exists(&mut conn, SCHEMA, &other_schema).await, "the schema is dropped");
    assert!(!exists(&mut conn, ROLE, &other_schema).await, "the role is dropped");
    let _ = std::fs::remove_dir_all(&dir);
}

async fn recorded_versions(conn: &mut PgConnection, schema: &str) -> Vec<i64> {
    let sql = format!("SELECT version::bigint FROM sagaplane_tenancy.{schema} ORDER BY version");
    sqlx::query_scalar::<_, i64>(&sql).fetch_all(conn).await.expect("recorded migrations")
}

/// A tenant id crafted so that its storage name equals a long id's hashed one (on SQLite: the
/// other tenant's database file) is refused; the long id's tenant keeps its storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_crafted_to_share_a_long_ids_storage_name_is_refused() {
    let app = App::spawn(BIN, Backend::Sqlite, &[]).await;
    let long = format!("a{}z", "b".repeat(61));
    let (status, _, body) =
        app.send(app.request(Method::POST, "/v1/tenants").json(&json!({"id": long, "name": "long"}))).await;
    assert_eq!(status, 202, "{body}");
    until_status(&app, &long, &["ACTIVE"]).await;
    let name = saga_core::tenant::tenant_object_name(&long);
    let crafted = name["tenant_".len()..].replace('_', "-");
    let (status, _, body) =
        app.send(app.request(Method::POST, "/v1/tenants").json(&json!({"id": crafted, "name": "crafted"}))).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["path"], "/id", "{body}");
    let (status, _, _) = app.send(app.request(Method::GET, &format!("/v1/tenants/{crafted}"))).await;
    assert_eq!(status, 404, "nothing of the crafted tenant exists");
}

/// A tenant's role logs in only where its storage is: a silo tenant's role into its own
/// database, not the control database (whose CONNECT is revoked from PUBLIC); a pooled tenant's
/// role into the control database, where its rows are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_role_connects_only_where_its_storage_is() {
    let app = App::spawn(BIN, Backend::Postgres, &[]).await;
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (silo, pooled) = (format!("silo-{suffix}"), format!("pooled-{suffix}"));
    for (id, tier) in [(&silo, "silo"), (&pooled, "pooled")] {
        let body = json!({"id": id, "name": id, "tier": tier});
        let (status, _, answer) = app.send(app.request(Method::POST, "/v1/tenants").json(&body)).await;
        assert_eq!(status, 202, "{answer}");
        let tenant = until_status(&app, id, &["ACTIVE", "PROVISION_ERROR"]).await;
        assert_eq!(tenant["status"], "ACTIVE", "{tenant}");
    }
    let mut admin = PgConnection::connect(&app.database_url).await.expect("admin");
    let (silo_role, pooled_role) =
        (saga_core::tenant::tenant_object_name(&silo), saga_core::tenant::tenant_object_name(&pooled));
    for role in [&silo_role, &pooled_role] {
        sqlx::raw_sql(&format!("ALTER ROLE \"{role}\" PASSWORD 'role-pw'"))
            .execute(&mut admin)
            .await
            .expect("password");
    }
    let (control, server) = {
        let parsed = reqwest::Url::parse(&app.database_url).expect("database URL");
        let server = format!("{}:{}", parsed.host_str().expect("host"), parsed.port().unwrap_or(5432));
        (parsed.path().trim_start_matches('/').to_string(), server)
    };
    let url = |role: &str, database: &str| format!("postgres://{role}:role-pw@{server}/{database}");
    let refused =
        PgConnection::connect(&url(&silo_role, &control)).await.expect_err("a silo role in the control database");
    let code = refused.as_database_error().and_then(|e| e.code()).map(|c| c.to_string());
    assert_eq!(code.as_deref(), Some("42501"), "{refused}");
    PgConnection::connect(&url(&silo_role, &silo_role)).await.expect("a silo role in its own database");
    PgConnection::connect(&url(&pooled_role, &control)).await.expect("a pooled role where its rows are");
}

/// Whatever fails after it, a tenant shows the migrations that stand in its storage: the same
/// on both stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_second_migration_leaves_the_first_shown_on_both_stores() {
    let dir = std::env::temp_dir().join(format!("sagaplane-second-migration-{}", uuid::Uuid::now_v7()));
    write(&dir, "billing/0001_create_invoices.sql", "CREATE TABLE invoices (id INTEGER PRIMARY KEY);");
    write(&dir, "billing/0002_add_currency.sql", "ALTER TABLE no_such_table ADD COLUMN currency TEXT;");
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = App::spawn(BIN, backend, &[("SAGAPLANE_TENANT_MIGRATIONS_DIR", dir.display().to_string())]).await;
        let id = format!("second-{}", suffix());
        let (status, created) = create(&app, json!({"id": id, "name": "Second Co"})).await;
        assert_eq!(status, 202, "{backend:?}: {created}");
        let failed = until_status(&app, &id, &["MIGRATION_ERROR", "PROVISION_ERROR", "ACTIVE"]).await;
        assert_eq!(failed["status"], "MIGRATION_ERROR", "{backend:?}: {failed}");
        assert!(
            failed["error"]["message"].as_str().is_some_and(|m| m.contains("0002_add_currency.sql")),
            "{backend:?}: {failed}"
        );
        let shown: Vec<(Value, Value)> = failed["migrations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| (m["service"].clone(), m["version"].clone()))
            .collect();
        assert_eq!(shown, vec![(json!("billing"), json!(1))], "{backend:?}: the first stands: {failed}");
        assert!(failed["migrations"][0]["applied_at"].is_string(), "{backend:?}: {failed}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Onboarding migrates each service in a branch of its own, at once: a service whose migration
/// fails leaves the others applied and shown; the retry runs only that service again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_migrates_in_its_own_branch_and_a_retry_runs_only_the_failed_one() {
    let dir = std::env::temp_dir().join(format!("sagaplane-per-service-{}", uuid::Uuid::now_v7()));
    write(&dir, "billing/0001_create_invoices.sql", "CREATE TABLE invoices (id INTEGER PRIMARY KEY);");
    write(&dir, "crm/0001_create_contacts.sql", "ALTER TABLE no_such_table ADD COLUMN x TEXT;");
    write(&dir, "mail/0001_create_outbox.sql", "CREATE TABLE outbox (id INTEGER PRIMARY KEY);");
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = App::spawn(BIN, backend, &[("SAGAPLANE_TENANT_MIGRATIONS_DIR", dir.display().to_string())]).await;
        let id = format!("services-{}", suffix());
        let (status, created) = create(&app, json!({"id": id, "name": "Services Co"})).await;
        assert_eq!(status, 202, "{backend:?}: {created}");
        let saga_id = created["saga_id"].as_str().unwrap_or_default().to_string();
        let failed = until_status(&app, &id, &["MIGRATION_ERROR", "PROVISION_ERROR", "ACTIVE"]).await;
        assert_eq!(failed["status"], "MIGRATION_ERROR", "{backend:?}: {failed}");
        let message = failed["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("\"crm\"") && message.contains("0001_create_contacts.sql"), "{backend:?}: {message}");
        let shown = |tenant: &Value| -> Vec<Value> {
            tenant["migrations"].as_array().into_iter().flatten().map(|m| m["service"].clone()).collect()
        };
        assert_eq!(shown(&failed), [json!("billing"), json!("mail")], "{backend:?}: the others stand: {failed}");

        write(&dir, "crm/0001_create_contacts.sql", "CREATE TABLE contacts (id INTEGER PRIMARY KEY);");
        let (status, _, body) = app.send(app.request(Method::POST, &format!("/v1/tenants/{id}/retry-migration"))).await;
        assert_eq!(status, 202, "{backend:?}: {body}");
        let active = until_status(&app, &id, &["ACTIVE", "MIGRATION_ERROR"]).await;
        assert_eq!(active["status"], "ACTIVE", "{backend:?}: {active}");
        assert_eq!(shown(&active), [json!("billing"), json!("crm"), json!("mail")], "{backend:?}: {active}");
        let history = app.event_types(&saga_id).await;
        assert_eq!(history.iter().filter(|t| *t == "branch_started").count(), 4, "three, then crm again: {history:?}");
        // The crm file is fixed in place: reset it for the next store.
        write(&dir, "crm/0001_create_contacts.sql", "ALTER TABLE no_such_table ADD COLUMN x TEXT;");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
