//! The client subcommands against a running server.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use test_support::{App, Backend};

use crate::BIN;

fn client(app: &App, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("SAGAPLANE_URL", &app.url)
        .env("SAGAPLANE_TOKEN", test_support::app::TOKEN)
        .output()
        .expect("run client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_apply_then_sagas_start_wait_show() {
    let app = App::spawn(BIN, Backend::Sqlite, &[]).await;
    let dir = std::env::temp_dir().join(format!("sagaplane-cli-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("greet.yaml");
    std::fs::write(
        &file,
        "name: greet\nsteps:\n  - name: hello\n    action: {builtin: core.echo, input: {who: \"{{ input.who }}\"}}\n",
    )
    .expect("write");
    let path = file.to_str().expect("utf-8 path");
    let out = tokio::task::block_in_place(|| client(&app, &["definitions", "apply", "-f", path]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "definition greet v1 created");
    let out = tokio::task::block_in_place(|| client(&app, &["definitions", "apply", "-f", path]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "definition greet v1 unchanged");
    let out = tokio::task::block_in_place(|| {
        client(&app, &["sagas", "start", "greet", "--input", "{\"who\":\"ops\"}", "--wait"])
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let saga: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(saga["status"], "COMPLETED");
    assert_eq!(saga["output"]["hello"]["who"], "ops");
    let id = saga["id"].as_str().expect("id");
    let out = tokio::task::block_in_place(|| client(&app, &["sagas", "show", id, "--events"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("saga_completed"));
    let out = tokio::task::block_in_place(|| client(&app, &["sagas", "list"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains(id));
    let out = tokio::task::block_in_place(|| client(&app, &["sagas", "retry", id]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("409"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tokio::task::block_in_place(|| {
        Command::new(BIN)
            .args(["sagas", "list"])
            .env("SAGAPLANE_URL", &app.url)
            .env_remove("SAGAPLANE_TOKEN")
            .output()
            .expect("run")
    });
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "clear message without a token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_comes_up_with_nothing_installed_and_prints_token_and_dashboard() {
    let dir = std::env::temp_dir().join(format!("sagaplane-dev-{}", uuid::Uuid::now_v7()));
    let data_dir = dir.join("data");
    let (mut child, mut lines) = spawn_dev(&data_dir, &[]);
    let (mut url, mut token, mut dashboard) = (None, None, None);
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split("listening on ").nth(1) {
                url = Some(rest.trim().to_string());
            }
            if let Some(rest) = line.strip_prefix("admin token: ") {
                token = Some(rest.trim().to_string());
            }
            if let Some(rest) = line.strip_prefix("dashboard: ") {
                dashboard = Some(rest.trim().to_string());
            }
            if url.is_some() && token.is_some() && dashboard.is_some() {
                break;
            }
        }
    })
    .await
    .expect("dev printed its banner");
    // Keep draining stdout so the child never blocks on a full pipe.
    let drain = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
        rest
    });
    let (url, token, dashboard) = (url.expect("url"), token.expect("token"), dashboard.expect("dashboard"));
    assert_eq!(dashboard, format!("{url}/ui/"));
    assert!(data_dir.join("sagaplane.db").exists(), "SQLite file under --data-dir");
    let http = reqwest::Client::new();
    let page = http.get(&dashboard).send().await.expect("dashboard");
    assert_eq!(page.status().as_u16(), 200);
    let definition =
        serde_json::json!({"steps": [{"name": "a", "action": {"builtin": "core.echo", "input": {"ok": true}}}]});
    let put = http
        .put(format!("{url}/v1/definitions/hello"))
        .bearer_auth(&token)
        .json(&definition)
        .send()
        .await
        .expect("put");
    assert_eq!(put.status().as_u16(), 201);
    let saga: serde_json::Value = http
        .post(format!("{url}/v1/sagas?wait=10s"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"definition": "hello"}))
        .send()
        .await
        .expect("start")
        .json()
        .await
        .expect("json");
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    let demo = test_support::eventually("the demo tenant ACTIVE", std::time::Duration::from_secs(30), || async {
        let tenant: serde_json::Value =
            http.get(format!("{url}/v1/tenants/demo")).bearer_auth(&token).send().await.ok()?.json().await.ok()?;
        (tenant["status"] == "ACTIVE").then_some(tenant)
    })
    .await;
    assert_eq!(demo["storage_mode"], "database");
    assert_eq!(demo["storage"]["backend"], "sqlite");
    let pid = child.id().expect("pid");
    let status = std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status().expect("kill");
    assert!(status.success());
    let exit =
        tokio::time::timeout(std::time::Duration::from_secs(10), child.wait()).await.expect("exits").expect("status");
    assert!(exit.success(), "SIGINT must exit 0: {exit:?}");
    let rest = drain.await.expect("drain");
    assert!(rest.iter().any(|l| l.starts_with("demo tenant: demo")), "dev onboards a demo tenant");
    // The demo tenant reached ACTIVE with its own SQLite file.
    assert!(data_dir.join("tenants").join("tenant_demo.db").exists(), "the demo tenant's database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_database_and_is_idempotent() {
    let url = test_support::db::fresh_sqlite();
    for _ in 0..2 {
        let out = tokio::task::block_in_place(|| {
            Command::new(BIN).arg("migrate").env("SAGAPLANE_DATABASE_URL", &url).output().expect("run migrate")
        });
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "schema at version 12 (sqlite)");
    }
    let pg = test_support::db::fresh_postgres().await;
    let out = tokio::task::block_in_place(|| {
        Command::new(BIN).arg("migrate").env("SAGAPLANE_DATABASE_URL", &pg).output().expect("run migrate")
    });
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "schema at version 15 (postgres)");
    let out = tokio::task::block_in_place(|| {
        Command::new(BIN).arg("migrate").env("SAGAPLANE_DATABASE_URL", "mysql://nope").output().expect("run migrate")
    });
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("postgres:// or sqlite://"));
    let out = tokio::task::block_in_place(|| {
        Command::new(BIN).arg("server").env_remove("SAGAPLANE_DATABASE_URL").output().expect("run")
    });
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SAGAPLANE_DATABASE_URL is required"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_signal_cancel_and_watch() {
    let app = App::spawn(BIN, Backend::Sqlite, &[]).await;
    let definition = serde_json::json!({"steps": [
        {"name": "wait", "action": {"signal": {"name": "go"}}},
        {"name": "after", "action": {"builtin": "core.echo", "input": {"got": "{{ steps.wait.output.n }}"}}},
    ]});
    assert_eq!(app.put_definition("gated", &definition).await.0, 201);
    let signalled = app.start("gated", serde_json::json!({})).await;
    let out =
        tokio::task::block_in_place(|| client(&app, &["sagas", "signal", &signalled, "go", "--data", "{\"n\": 7}"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("signal go delivered"));
    let out = tokio::task::block_in_place(|| client(&app, &["sagas", "watch", &signalled]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let saga: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(saga["output"]["after"]["got"], 7);
    // An unknown signal name is a clear error and changes nothing.
    let cancelled = app.start("gated", serde_json::json!({})).await;
    let out = tokio::task::block_in_place(|| client(&app, &["sagas", "signal", &cancelled, "stop"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("422"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tokio::task::block_in_place(|| client(&app, &["sagas", "cancel", &cancelled, "--wait"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json_start = stdout.find('{').expect("saga json");
    let saga: serde_json::Value = serde_json::from_str(&stdout[json_start..]).expect("json");
    assert_eq!(saga["status"], "COMPENSATED");
    assert_eq!(saga["error"]["kind"], "cancelled");
    let out = tokio::task::block_in_place(|| client(&app, &["sagas", "cancel", &cancelled]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("409"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_create_list_show_suspend_resume_delete() {
    let app = App::spawn(BIN, Backend::Sqlite, &[]).await;
    let out = tokio::task::block_in_place(|| {
        client(
            &app,
            &["tenants", "create", "cli-co", "--name", "CLI Co", "--tier", "silo", "--domain", "cli.example.com"],
        )
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("cli-co") && stdout.contains("ACTIVE"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cli-co: ACTIVE"), "progress lines while provisioning");
    let out = tokio::task::block_in_place(|| client(&app, &["tenants", "list"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cli-co"));
    let out = tokio::task::block_in_place(|| client(&app, &["tenants", "show", "cli-co"]));
    let tenant: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(tenant["domains"], serde_json::json!(["cli.example.com"]));
    let out = tokio::task::block_in_place(|| client(&app, &["tenants", "suspend", "cli-co"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUSPENDED"));
    let out = tokio::task::block_in_place(|| client(&app, &["tenants", "resume", "cli-co"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ACTIVE"));
    // A clear message for a bad id, and for schema mode asked for on the embedded default.
    let out = tokio::task::block_in_place(|| client(&app, &["tenants", "create", "Bad", "--name", "x"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("422"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tokio::task::block_in_place(|| {
        client(&app, &["tenants", "create", "sch-co", "--name", "x", "--storage-mode", "schema"])
    });
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("offers: database")
            && String::from_utf8_lossy(&out.stderr).contains("SAGAPLANE_TENANT_DATABASE_URL"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With a grace period: suspended at once, not followed; restored; then deleted at once.
    let out = tokio::task::block_in_place(|| client(&app, &["tenants", "delete", "cli-co", "--grace", "7d"]));
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(printed.contains("suspended") && printed.contains("sagaplane tenants restore cli-co"), "{printed}");
    let out = tokio::task::block_in_place(|| client(&app, &["tenants", "delete", "cli-co", "--grace", "soon"]));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("400"));
    let out = tokio::task::block_in_place(|| client(&app, &["tenants", "restore", "cli-co"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ACTIVE"), "{}", String::from_utf8_lossy(&out.stdout));
    let out = tokio::task::block_in_place(|| client(&app, &["tenants", "delete", "cli-co"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tokio::task::block_in_place(|| client(&app, &["tenants", "show", "cli-co"]));
    let tenant: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(tenant["status"], "DELETED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_migrate_rolls_out_and_follows_to_the_end() {
    let dir = std::env::temp_dir().join(format!("sagaplane-cli-migrations-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(dir.join("notes")).expect("dir");
    std::fs::write(dir.join("notes/0001_create_notes.sql"), "CREATE TABLE notes (id INTEGER);").expect("write");
    let app = App::spawn(BIN, Backend::Sqlite, &[("SAGAPLANE_TENANT_MIGRATIONS_DIR", dir.display().to_string())]).await;
    let out =
        tokio::task::block_in_place(|| client(&app, &["tenants", "create", "mig-co", "--name", "M", "--tier", "silo"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(dir.join("notes/0002_add_body.sql"), "ALTER TABLE notes ADD COLUMN body TEXT;").expect("write");
    let out = tokio::task::block_in_place(|| client(&app, &["tenants", "migrate", "--concurrency", "2"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("started: every tenant behind migrates, 2 at a time"), "{stdout}");
    assert!(stdout.contains("rollout done: 1 of 1 tenant(s) migrated"), "{stdout}");
    let out = tokio::task::block_in_place(|| client(&app, &["tenants", "show", "mig-co"]));
    let tenant: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(tenant["migrations"][0]["version"], 2, "{tenant}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's order saga written with a variable for the payments address, as a definition
/// meant for several environments is.
const ORDER_WITH_VARIABLE: &str = r#"name: order
steps:
  - name: reserve
    action: {builtin: core.echo, input: {sku: "{{ input.sku }}"}}
    compensation: {builtin: core.echo}
  - name: charge
    action:
      http: {method: POST, url: "{{ vars.PAYMENTS }}/charges", body: {amount: "{{ input.amount }}"}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variable_the_server_lacks_is_warned_about_and_fails_naming_the_cause() {
    let app = App::spawn(BIN, Backend::Sqlite, &[]).await;
    let dir = std::env::temp_dir().join(format!("sagaplane-cli-order-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("order.yaml");
    std::fs::write(&file, ORDER_WITH_VARIABLE).expect("write");
    let path = file.to_str().expect("utf-8 path");
    let out = tokio::task::block_in_place(|| client(&app, &["definitions", "apply", "-f", path]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: /steps/1/action/http/url: vars.PAYMENTS is not set on this server")
            && stderr.contains("SAGAPLANE_VAR_PAYMENTS"),
        "{stderr}"
    );
    let out = tokio::task::block_in_place(|| {
        client(&app, &["sagas", "start", "order", "--input", r#"{"sku":"A-1","amount":40}"#, "--wait"])
    });
    let saga: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(saga["error"]["step"], "charge", "{saga}");
    assert_eq!(
        saga["error"]["message"],
        "template error in step charge, action http.url \"{{ vars.PAYMENTS }}/charges\": vars.PAYMENTS is not set; \
         start the server with SAGAPLANE_VAR_PAYMENTS",
        "{saga}"
    );
    assert_eq!(saga["steps"][0]["status"], "COMPENSATED", "the reservation is undone: {saga}");
    // Exit 2, said in words.
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exit 2: saga") && stderr.contains("ended COMPENSATED, not COMPLETED: step charge"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_and_deliveries_from_the_command_line() {
    let receiver = test_support::Participant::start().await;
    receiver.script("/hook", vec![(500, serde_json::json!({}))]);
    let app = App::spawn(BIN, Backend::Sqlite, &[("SAGAPLANE_DELIVERY_RETRY_SCHEDULE", "100ms".to_string())]).await;
    let hook = format!("{}/hook", receiver.url);
    let run = |args: &[&str]| {
        let out = tokio::task::block_in_place(|| client(&app, args));
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let created: serde_json::Value =
        serde_json::from_str(&run(&["subscriptions", "create", &hook, "--events", "saga.completed"])).expect("json");
    assert!(created["secret"].as_str().is_some_and(|s| s.starts_with("whsec_")), "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let listed: serde_json::Value = serde_json::from_str(&run(&["subscriptions", "list"])).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert!(listed[0].get("secret").is_none(), "{listed}");

    // A saga's event to a receiver that fails: dead after two attempts, then replayed.
    let document =
        test_support::app::fast_definition(serde_json::json!([{"name": "a", "action": {"builtin": "core.echo"}}]));
    app.put_definition("one", &document).await;
    app.wait_terminal(&app.start("one", serde_json::json!({})).await, Duration::from_secs(30)).await;
    let dead = test_support::eventually("a dead delivery", Duration::from_secs(30), || async {
        let listed: serde_json::Value = serde_json::from_str(&run(&["deliveries", "list", "--status", "dead"])).ok()?;
        listed.as_array()?.first().cloned()
    })
    .await;
    let delivery_id = dead["id"].as_str().expect("id").to_string();
    let shown: serde_json::Value = serde_json::from_str(&run(&["deliveries", "show", &delivery_id])).expect("json");
    assert_eq!(shown["attempts"].as_array().map(Vec::len), Some(2), "{shown}");
    receiver.script("/hook", vec![(200, serde_json::json!({}))]);
    assert!(run(&["deliveries", "replay", &delivery_id]).contains("pending again"));
    test_support::eventually("the replay delivered", Duration::from_secs(30), || async {
        let listed: serde_json::Value =
            serde_json::from_str(&run(&["deliveries", "list", "--status", "succeeded"])).ok()?;
        (listed.as_array()?.len() == 1).then_some(())
    })
    .await;
    assert!(run(&["deliveries", "recover", &id, "--since", "2020-01-01T00:00:00Z"]).contains("0 dead deliveries"));
    let rotated: serde_json::Value = serde_json::from_str(&run(&["subscriptions", "rotate", &id])).expect("json");
    assert!(rotated["secret"].as_str().is_some_and(|s| s != created["secret"].as_str().unwrap_or("")), "{rotated}");
    assert!(run(&["subscriptions", "delete", &id]).contains("deleted"));
    let out = tokio::task::block_in_place(|| client(&app, &["subscriptions", "create", "ftp://nope", "--events", "*"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/url"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `sagaplane top --once`: one frame with the queue, breakers and the stalled sagas with what
/// holds them; `GET /v1/sagas?order=stalled` lists unfinished sagas, least recently moved first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_the_queue_and_the_sagas_stalled_longest() {
    let app = App::spawn(BIN, Backend::Sqlite, &[]).await;
    let waiting =
        test_support::app::fast_definition(json!([{"name": "approve", "action": {"signal": {"name": "approval"}}}]));
    app.put_definition("waiting", &waiting).await;
    app.put_definition(
        "done",
        &test_support::app::fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}])),
    )
    .await;
    let stalled = app.start("waiting", json!({})).await;
    let finished = app.start("done", json!({})).await;
    app.wait_terminal(&finished, std::time::Duration::from_secs(30)).await;
    test_support::eventually("the saga waits", std::time::Duration::from_secs(30), || async {
        let saga = app.saga(&stalled).await;
        (saga["steps"][0]["status"] == "EXECUTING").then_some(())
    })
    .await;
    let (status, _, page) = app.send(app.request(reqwest::Method::GET, "/v1/sagas?order=stalled")).await;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<&str> = page["items"].as_array().expect("items").iter().filter_map(|s| s["id"].as_str()).collect();
    assert_eq!(ids, vec![stalled.as_str()], "unfinished only: {page}");
    assert!(page["next_cursor"].is_null());
    let (status, _, body) = app.send(app.request(reqwest::Method::GET, "/v1/sagas?order=oldest")).await;
    assert_eq!(status, 400, "a bad query: {body}");
    let after = format!("/v1/sagas?order=stalled&cursor={stalled}");
    let (status, _, body) = app.send(app.request(reqwest::Method::GET, &after)).await;
    assert_eq!((status, &body["items"]), (200, &json!([])), "nothing after the only stalled saga: {body}");

    let out = client(&app, &["top", "--once"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for expected in ["throughput", "queue depth", "breakers     none open", &stalled, "signal", "\"approval\""] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    assert!(!text.contains(&finished), "a finished saga is not stalled:\n{text}");
}

type DevLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

/// `sagaplane dev` on `data_dir` (`extra` arguments), with nothing in its environment but PATH,
/// and the lines of its standard output.
fn spawn_dev(data_dir: &std::path::Path, extra: &[&str]) -> (tokio::process::Child, DevLines) {
    let mut child = tokio::process::Command::new(BIN)
        .args(["dev", "--data-dir", data_dir.to_str().expect("utf-8"), "--listen", "127.0.0.1:0"])
        .args(extra)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn dev");
    let stdout = child.stdout.take().expect("stdout");
    (child, tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout)))
}

/// Starts `sagaplane dev` on `data_dir` with `extra` arguments, returns the admin token it
/// prints, and stops it.
async fn dev_token(data_dir: &std::path::Path, extra: &[&str]) -> String {
    let (mut child, mut lines) = spawn_dev(data_dir, extra);
    let token = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("admin token: ") {
                return rest.trim().to_string();
            }
        }
        String::new()
    })
    .await
    .expect("dev printed its token");
    let _ = child.kill().await;
    let _ = child.wait().await;
    token
}

/// `sagaplane dev` keeps its admin token in the data directory (0600), so an exported
/// `SAGAPLANE_TOKEN` works after a restart; `--reset-token` makes a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_keeps_its_token_across_restarts_until_reset() {
    use std::os::unix::fs::PermissionsExt;
    let data_dir = std::env::temp_dir().join(format!("sagaplane-dev-token-{}", uuid::Uuid::now_v7()));
    let first = dev_token(&data_dir, &[]).await;
    assert!(first.starts_with("spdev_"), "{first}");
    let again = dev_token(&data_dir, &[]).await;
    assert_eq!(again, first, "the same token after a restart");
    let mode = std::fs::metadata(data_dir.join("admin-token")).expect("token file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only its owner reads the token file");
    let reset = dev_token(&data_dir, &["--reset-token"]).await;
    assert_ne!(reset, first, "--reset-token makes a new one");
    assert_eq!(dev_token(&data_dir, &[]).await, reset, "and keeps that one");
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// The CLI never follows a redirect (the request carries the token): it exits non-zero naming
/// the URL it was sent to and where it was sent on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_refuses_redirects_naming_the_url() {
    let elsewhere = test_support::Participant::start().await;
    elsewhere.redirect("/v1/sagas", 307, "https://evil.example.com/v1/sagas");
    let output = tokio::task::block_in_place(|| {
        Command::new(BIN)
            .args(["sagas", "list"])
            .env("SAGAPLANE_URL", &elsewhere.url)
            .env("SAGAPLANE_TOKEN", "secret-token")
            .output()
            .expect("run client")
    });
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&elsewhere.url) && stderr.contains("evil.example.com"), "{stderr}");
    assert!(stderr.contains("does not follow redirects"), "{stderr}");
    assert!(elsewhere.requests("/v1/sagas").len() == 1, "asked once, not followed");
}
