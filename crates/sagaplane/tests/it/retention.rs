//! Retention: a finished saga is deleted with its history and its idempotency key once
//! `SAGAPLANE_RETENTION` has passed since it ended; a saga that is not finished never is.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::fast_definition;
use test_support::{eventually, App, Backend};

use crate::BIN;

async fn start_once(app: &App, key: &str) -> (u16, String) {
    let request = app
        .request(Method::POST, "/v1/sagas")
        .header("Idempotency-Key", key)
        .json(&json!({"definition": "quick", "input": {}}));
    let (status, _, body) = app.send(request).await;
    (status, body["id"].as_str().unwrap_or_default().to_string())
}

/// The value of a counter series in `/metrics` (0 when absent).
async fn counter(app: &App, series: &str) -> f64 {
    let (_, _, body) = app.send(app.request(Method::GET, "/metrics")).await;
    let text = body.as_str().unwrap_or_default().to_string();
    text.lines().find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

async fn finished_sagas_go_after_their_retention(backend: Backend) {
    let app = App::spawn(BIN, backend, &[("SAGAPLANE_RETENTION", "2s".to_string())]).await;
    let quick = fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}]));
    assert_eq!(app.put_definition("quick", &quick).await.0, 201);
    let waiting = fast_definition(json!([{"name": "approve", "action": {"signal": {"name": "approval"}}}]));
    assert_eq!(app.put_definition("waiting", &waiting).await.0, 201);
    let running = app.start("waiting", json!({})).await;

    let (status, finished) = start_once(&app, "once").await;
    assert_eq!(status, 201);
    app.wait_terminal(&finished, Duration::from_secs(30)).await;
    assert!(!app.events(&finished).await.is_empty(), "it has a history while it is kept");

    eventually("the finished saga deleted", Duration::from_secs(20), || async {
        let (status, _, _) = app.send(app.request(Method::GET, &format!("/v1/sagas/{finished}"))).await;
        (status == 404).then_some(())
    })
    .await;
    let (status, _, _) = app.send(app.request(Method::GET, &format!("/v1/sagas/{finished}/events"))).await;
    assert_eq!(status, 404, "its history went with it");
    let saga = app.saga(&running).await;
    assert_eq!(saga["status"], "EXECUTING", "a saga that is not finished is kept, whatever its age: {saga}");

    let (status, again) = start_once(&app, "once").await;
    assert_eq!(status, 201, "the idempotency key went with its saga");
    assert_ne!(again, finished);
    assert!(counter(&app, "saga_retention_deleted_total{kind=\"saga\"}").await >= 1.0);
    assert!(counter(&app, "saga_retention_deleted_total{kind=\"history\"}").await >= 1.0);
}
crate::on_both_backends!(finished_sagas_go_after_their_retention);

/// A definition's `retention:` decides for its sagas: kept 2 s here though the default is 20 s
/// (so the cleaner looks every 10 s; it looks at least every minute whatever the default).
async fn a_definitions_own_retention_goes_first(backend: Backend) {
    let app = App::spawn(BIN, backend, &[("SAGAPLANE_RETENTION", "20s".to_string())]).await;
    let mut brief = fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}]));
    brief["retention"] = json!("2s");
    assert_eq!(app.put_definition("brief", &brief).await.0, 201);
    let usual = fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}]));
    assert_eq!(app.put_definition("usual", &usual).await.0, 201);
    let gone = app.start("brief", json!({})).await;
    let stays = app.start("usual", json!({})).await;
    app.wait_terminal(&gone, Duration::from_secs(30)).await;
    app.wait_terminal(&stays, Duration::from_secs(30)).await;
    eventually("the brief saga deleted", Duration::from_secs(20), || async {
        let (status, _, _) = app.send(app.request(Method::GET, &format!("/v1/sagas/{gone}"))).await;
        (status == 404).then_some(())
    })
    .await;
    assert_eq!(app.saga(&stays).await["status"], "COMPLETED", "the default keeps it 20 s");
}
crate::on_both_backends!(a_definitions_own_retention_goes_first);

/// A tenant whose failed onboarding saga was deleted past its retention can still retry its
/// migration: a new `tenant.migrate` saga takes it from `MIGRATION_ERROR` to `ACTIVE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_retries_its_migration_after_its_failed_saga_is_gone() {
    use crate::tenants::{until_status, write};
    let dir = std::env::temp_dir().join(format!("sagaplane-retention-migrations-{}", uuid::Uuid::now_v7()));
    write(&dir, "billing/0001_create_invoices.sql", "CREATE TABLE invoices (id INTEGER PRIMARY KEY);");
    write(&dir, "billing/0002_add_currency.sql", "ALTER TABLE nowhere ADD COLUMN currency TEXT;");
    let settings =
        [("SAGAPLANE_TENANT_MIGRATIONS_DIR", dir.display().to_string()), ("SAGAPLANE_RETENTION", "1s".to_string())];
    let app = App::spawn(BIN, Backend::Sqlite, &settings).await;
    let (status, _, created) =
        app.send(app.request(Method::POST, "/v1/tenants").json(&json!({"id": "late", "name": "Late Co"}))).await;
    assert_eq!(status, 202, "{created}");
    let onboarding = created["saga_id"].as_str().expect("saga id").to_string();
    let failed = until_status(&app, "late", &["MIGRATION_ERROR", "PROVISION_ERROR", "ACTIVE"]).await;
    assert_eq!(failed["status"], "MIGRATION_ERROR", "{failed}");
    eventually("the failed onboarding saga deleted", Duration::from_secs(20), || async {
        let (status, _, _) = app.send(app.request(Method::GET, &format!("/v1/sagas/{onboarding}"))).await;
        (status == 404).then_some(())
    })
    .await;

    write(&dir, "billing/0002_add_currency.sql", "ALTER TABLE invoices ADD COLUMN currency TEXT;");
    let (status, _, body) = app.send(app.request(Method::POST, "/v1/tenants/late/retry-migration")).await;
    assert_eq!(status, 202, "{body}");
    assert_ne!(body["saga_id"].as_str(), Some(onboarding.as_str()), "a new saga: {body}");
    let active = until_status(&app, "late", &["ACTIVE", "MIGRATION_ERROR"]).await;
    assert_eq!(active["status"], "ACTIVE", "{active}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A delivered delivery goes after the retention, with its event; a dead letter is kept for
/// `SAGAPLANE_DEAD_LETTER_RETENTION`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_deliveries_go_after_the_retention_dead_letters_stay() {
    let participant = test_support::Participant::start().await;
    participant.script("/ok", vec![(200, json!({}))]);
    participant.script("/refused", vec![(400, json!({"error": "no"}))]);
    let env = [("SAGAPLANE_RETENTION", "2s".to_string()), ("SAGAPLANE_DELIVERY_RETRY_SCHEDULE", "100ms".to_string())];
    let app = App::spawn(BIN, Backend::Postgres, &env).await;
    let subscribe = |path: &str| {
        app.request(Method::POST, "/v1/subscriptions")
            .json(&json!({"url": format!("{}{path}", participant.url), "events": ["saga.completed"]}))
    };
    let (status, _, delivered_to) = app.send(subscribe("/ok")).await;
    assert_eq!(status, 201, "{delivered_to}");
    let (status, _, refused_by) = app.send(subscribe("/refused")).await;
    assert_eq!(status, 201, "{refused_by}");
    let quick = fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}]));
    assert_eq!(app.put_definition("quick", &quick).await.0, 201);
    let saga = app.start("quick", json!({})).await;
    app.wait_terminal(&saga, Duration::from_secs(30)).await;
    let delivery_of = |subscription: &Value| {
        let path = format!("/v1/deliveries?subscription_id={}", subscription["id"].as_str().unwrap_or_default());
        let app = &app;
        async move {
            let (_, _, page) = app.send(app.request(Method::GET, &path)).await;
            page["items"].as_array().and_then(|items| items.first().cloned())
        }
    };
    let delivered = eventually("a delivered delivery", Duration::from_secs(20), || async {
        delivery_of(&delivered_to).await.filter(|d| d["status"] == "succeeded")
    })
    .await;
    let dead = eventually("a dead letter", Duration::from_secs(20), || async {
        delivery_of(&refused_by).await.filter(|d| d["status"] == "dead")
    })
    .await;
    eventually("the delivered delivery deleted", Duration::from_secs(20), || async {
        let path = format!("/v1/deliveries/{}", delivered["id"].as_str().unwrap_or_default());
        let (status, _, _) = app.send(app.request(Method::GET, &path)).await;
        (status == 404).then_some(())
    })
    .await;
    let path = format!("/v1/deliveries/{}", dead["id"].as_str().unwrap_or_default());
    let (status, _, kept) = app.send(app.request(Method::GET, &path)).await;
    assert_eq!((status, kept["status"].as_str()), (200, Some("dead")), "the dead letter is kept: {kept}");
    assert!(counter(&app, "saga_retention_deleted_total{kind=\"delivery\"}").await >= 1.0);
}

/// With `SAGAPLANE_ARCHIVE_DIR`, a saga is written with its history before it is deleted, one
/// JSON line in the day's file; `sagaplane sagas export` writes the same lines on demand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_are_archived_before_they_go_and_exported_alike() {
    let dir = std::env::temp_dir().join(format!("sagaplane-archive-{}", uuid::Uuid::now_v7()));
    let env = [("SAGAPLANE_RETENTION", "2s".to_string()), ("SAGAPLANE_ARCHIVE_DIR", dir.display().to_string())];
    let app = App::spawn(BIN, Backend::Sqlite, &env).await;
    let quick = fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo", "input": {"n": 7}}}]));
    assert_eq!(app.put_definition("quick", &quick).await.0, 201);
    let since = chrono_now();
    let saga = app.start("quick", json!({"order": 1})).await;
    app.wait_terminal(&saga, Duration::from_secs(30)).await;

    // Exported while it is kept: one line, the saga with its history.
    let exported = std::process::Command::new(BIN)
        .args(["sagas", "export", "--since", &since])
        .env("SAGAPLANE_URL", &app.url)
        .env("SAGAPLANE_TOKEN", test_support::app::TOKEN)
        .output()
        .expect("run export");
    assert!(exported.status.success(), "{}", String::from_utf8_lossy(&exported.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&exported.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["id"], saga.as_str());

    eventually("the saga deleted", Duration::from_secs(20), || async {
        let (status, _, _) = app.send(app.request(Method::GET, &format!("/v1/sagas/{saga}"))).await;
        (status == 404).then_some(())
    })
    .await;
    let files: Vec<_> = std::fs::read_dir(&dir).expect("the archive").flatten().map(|e| e.path()).collect();
    assert_eq!(files.len(), 1, "one day's file: {files:?}");
    let name = files[0].file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    assert!(name.starts_with("sagas-") && name.ends_with(".jsonl"), "{name}");
    let text = std::fs::read_to_string(&files[0]).expect("read the archive");
    let archived: Value = serde_json::from_str(text.lines().next().expect("a line")).expect("JSON");
    assert_eq!(archived["id"], saga.as_str());
    assert_eq!(archived["status"], "COMPLETED");
    assert_eq!(archived["input"]["order"], 1);
    let kinds: Vec<&str> =
        archived["history"].as_array().expect("history").iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(kinds.contains(&"saga_created") && kinds.contains(&"saga_completed"), "{kinds:?}");
    let keys = |value: &Value| value.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
    assert_eq!(keys(&archived), keys(&lines[0]), "export and archive write the same format");
    assert_eq!(archived["history"], lines[0]["history"], "the same history");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files[0]).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o077, 0, "only its owner reads the archive: {mode:o}");
    }
}

/// Now as RFC 3339, a second early (so a saga started after it is created after it).
fn chrono_now() -> String {
    (chrono::Utc::now() - chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
