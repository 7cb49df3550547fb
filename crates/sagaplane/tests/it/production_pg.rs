//! PostgreSQL as production runs it, each on a cluster the test makes for itself: PgBouncer in
//! transaction mode (Debian's 1.18, default settings), TLS with a CA the test makes, and the
//! `/ready` rules of a rolling upgrade.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::fast_definition;
use test_support::clusters::{as_root, free_port, Cluster, PgBouncer};
use test_support::{eventually, App, Participant};

use crate::BIN;

const WAIT: Duration = Duration::from_secs(90);

async fn get(app: &App, path: &str) -> (u16, Value) {
    let (status, _, body) = app.send(app.request(Method::GET, path)).await;
    (status, body)
}

async fn post(app: &App, path: &str, body: Value) -> (u16, Value) {
    let (status, _, body) = app.send(app.request(Method::POST, path).json(&body)).await;
    (status, body)
}

/// A cluster where loopback logins are trusted: PgBouncer checks passwords (`auth_query`, as
/// Sagaplane's admin role). The admin role may end other roles' sessions
/// (`pg_signal_backend`): dropping a silo tenant's database ends PgBouncer's idle sessions in it
/// (docs/operations.md, "PgBouncer").
fn trusting_cluster(name: &str) -> Cluster {
    let cluster = Cluster::create(name, free_port(), "max_connections = 200\n", "host all all 127.0.0.1/32 trust", &[]);
    cluster.psql("CREATE ROLE sagaplane LOGIN CREATEDB CREATEROLE PASSWORD 'sagaplane' IN ROLE pg_signal_backend");
    PgBouncer::prepare_cluster(&cluster, "sagaplane");
    cluster.psql("CREATE DATABASE sagaplane OWNER sagaplane");
    cluster
}

/// Through PgBouncer in transaction mode with nothing else set: sagas (many at once), signals,
/// async callbacks, every tenant tier, outbound deliveries — no prepared-statement error
/// anywhere, and wakeups polled (said in /v1/status and the metric) since no LISTEN URL is set.
/// Then with `SAGAPLANE_LISTEN_URL`, LISTEN carries wakeups.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn everything_works_through_pgbouncer_in_transaction_mode() {
    let cluster = trusting_cluster("sagaplane_it_bouncer");
    let bouncer = PgBouncer::start(free_port(), cluster.port, "transaction", 10, ("sagaplane", "sagaplane"));
    let url = format!("postgres://sagaplane:sagaplane@127.0.0.1:{}/sagaplane", bouncer.port);
    let participant = Participant::start().await;
    participant.script("/stacks", vec![(202, json!({"accepted": true}))]);
    let receiver = Participant::start().await;
    let env = [("SAGAPLANE_VAR_P", participant.url.clone())];
    let app = App::spawn_on(BIN, &url, &["server"], &env).await;

    let (status, body) = get(&app, "/v1/status").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["database"]["route"], "transaction_pooler", "{body}");
    assert_eq!(body["database"]["wakeups"], "polling", "{body}");
    assert!(body["database"]["wakeups_reason"].as_str().unwrap_or("").contains("SAGAPLANE_LISTEN_URL"), "{body}");
    // The store gauges refresh every few seconds.
    eventually("saga_db_wakeups_polling 1", Duration::from_secs(20), || async {
        let metrics = reqwest::get(format!("{}/metrics", app.url)).await.ok()?.text().await.ok()?;
        metrics.lines().any(|l| l.starts_with("saga_db_wakeups_polling") && l.ends_with(" 1")).then_some(())
    })
    .await;
    let (status, ready) = get(&app, "/ready").await;
    assert_eq!(status, 200, "{ready}");

    // A subscription for every event: deliveries go out through the pooler too.
    let (status, sub) =
        post(&app, "/v1/subscriptions", json!({"url": format!("{}/hook", receiver.url), "events": ["*"]})).await;
    assert_eq!(status, 201, "{sub}");

    // 200 sagas of three steps at once.
    let three = fast_definition(json!([
        {"name": "a", "action": {"builtin": "core.echo", "input": {"n": 1}}},
        {"name": "b", "action": {"http": {"method": "POST", "url": "{{ vars.P }}/b"}}},
        {"name": "c", "action": {"builtin": "core.echo", "input": {"n": 3}}},
    ]));
    assert_eq!(app.put_definition("three", &three).await.0, 201);
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(app.start("three", json!({"i": i})).await);
    }
    // A signal and an async callback.
    let approval = fast_definition(json!([
        {"name": "approve", "action": {"signal": {"name": "approval"}}},
        {"name": "record", "action": {"builtin": "core.echo", "input": {"by": "{{ steps.approve.output.by }}"}}},
    ]));
    assert_eq!(app.put_definition("approval", &approval).await.0, 201);
    let waiting = app.start("approval", json!({})).await;
    let callback = fast_definition(json!([
        {"name": "provision", "action": {"http": {"method": "POST", "url": "{{ vars.P }}/stacks", "async": true}}},
    ]));
    assert_eq!(app.put_definition("callback", &callback).await.0, 201);
    let called = app.start("callback", json!({})).await;
    // Tenants of every tier, the silo tier's own database reached through PgBouncer too.
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let tiers = ["pooled", "bridge", "silo"];
    let tenants: Vec<String> = tiers.iter().map(|tier| format!("{tier}-{suffix}")).collect();
    for (id, tier) in tenants.iter().zip(tiers) {
        let (status, body) = post(&app, "/v1/tenants", json!({"id": id, "name": id, "tier": tier})).await;
        assert_eq!(status, 202, "{body}");
    }

    for id in &ids {
        let saga = app.wait_terminal(id, WAIT).await;
        assert_eq!(saga["status"], "COMPLETED", "{saga}");
    }
    let (status, body) = post(&app, &format!("/v1/sagas/{waiting}/signals/approval"), json!({"by": "ann"})).await;
    assert_eq!(status, 202, "{body}");
    let saga = app.wait_terminal(&waiting, WAIT).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    let callback_url = eventually("the async request", WAIT, || async {
        participant.requests("/stacks").first().and_then(|r| r.headers.get("x-saga-callback-url").cloned())
    })
    .await;
    let answered = reqwest::Client::new()
        .post(&callback_url)
        .json(&json!({"status": "succeeded", "output": {"stack": "s1"}}))
        .send()
        .await
        .expect("callback");
    assert!(answered.status().is_success(), "{}", answered.status());
    let saga = app.wait_terminal(&called, WAIT).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    for id in &tenants {
        let tenant = eventually(&format!("tenant {id} settled"), WAIT, || async {
            let (_, tenant) = get(&app, &format!("/v1/tenants/{id}")).await;
            matches!(tenant["status"].as_str(), Some("ACTIVE" | "PROVISION_ERROR")).then_some(tenant)
        })
        .await;
        assert_eq!(tenant["status"], "ACTIVE", "{tenant}");
    }
    // Deliveries: at least the tenants' events reached the receiver.
    eventually("deliveries through the pooler", WAIT, || async {
        (receiver.requests("/hook").len() >= tenants.len()).then_some(())
    })
    .await;
    // Offboarding every tier through the pooler too.
    for id in &tenants {
        let (status, _, body) = app.send(app.request(Method::DELETE, &format!("/v1/tenants/{id}"))).await;
        assert!(status == 202 || status == 200, "{status} {body}");
    }
    for id in &tenants {
        let last = std::sync::Mutex::new(Value::Null);
        let deleted = tokio::time::timeout(WAIT, async {
            loop {
                let (status, tenant) = get(&app, &format!("/v1/tenants/{id}")).await;
                if status == 404 || tenant["status"] == "DELETED" {
                    return;
                }
                *last.lock().expect("last") = tenant;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        if deleted.is_err() {
            let tenant = last.lock().expect("last").clone();
            let sagas = get(&app, &format!("/v1/sagas?tenant_id={id}")).await.1;
            panic!(
                "tenant {id} not deleted after {WAIT:?}: {tenant}\nits sagas: {sagas}\nPgBouncer:\n{}",
                bouncer.log()
            );
        }
    }
    let log = bouncer.log();
    assert!(!log.contains("prepared statement"), "PgBouncer saw prepared-statement errors:\n{log}");
    drop(app);

    // With a direct connection for LISTEN, wakeups are notifications again.
    let listen_url = format!("postgres://sagaplane:sagaplane@127.0.0.1:{}/sagaplane", cluster.port);
    let app = App::spawn_on(BIN, &url, &["server"], &[("SAGAPLANE_LISTEN_URL", listen_url)]).await;
    let body = eventually("LISTEN hears", Duration::from_secs(30), || async {
        let (_, body) = get(&app, "/v1/status").await;
        (body["database"]["wakeups"] == "listen").then_some(body)
    })
    .await;
    assert_eq!(body["database"]["route"], "transaction_pooler", "{body}");
    drop(app);

    // A LISTEN URL that is the pooler's too is refused (its LISTEN would outlive the borrowed
    // server session and reach other clients' statements): the instance polls and says why.
    let deaf_listen = url.clone();
    let env = [("SAGAPLANE_LISTEN_URL", deaf_listen), ("SAGAPLANE_VAR_P", participant.url.clone())];
    let app = App::spawn_on(BIN, &url, &["server"], &env).await;
    let body = eventually("the pooled LISTEN URL refused", Duration::from_secs(60), || async {
        let (_, body) = get(&app, "/v1/status").await;
        let reason = body["database"]["wakeups_reason"].as_str().unwrap_or("").to_string();
        (body["database"]["wakeups"] == "polling" && reason.contains("SAGAPLANE_LISTEN_URL")).then_some(body)
    })
    .await;
    assert_eq!(body["database"]["route"], "transaction_pooler", "{body}");
    let id = app.start("three", json!({"i": "after"})).await;
    assert_eq!(app.wait_terminal(&id, WAIT).await["status"], "COMPLETED");
}

/// A database whose LISTEN connection stops hearing (its backend terminated behind its back) is
/// noticed by the self-check: wakeups fall back to polling, then LISTEN is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_stops_hearing_falls_back_to_polling() {
    let url = test_support::db::fresh_postgres().await;
    let app = App::spawn_on(BIN, &url, &["server"], &[]).await;
    eventually("LISTEN hears", Duration::from_secs(30), || async {
        let (_, body) = get(&app, "/v1/status").await;
        (body["database"]["wakeups"] == "listen").then_some(())
    })
    .await;
    // Kill the listener's backend: the listener must notice and come back.
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind("sagaplane listen")
    .fetch_one(&mut admin)
    .await
    .expect("terminate the listener");
    assert!(killed >= 1, "a LISTEN backend to terminate");
    eventually("LISTEN hears again", Duration::from_secs(30), || async {
        let (_, body) = get(&app, "/v1/status").await;
        (body["database"]["wakeups"] == "listen").then_some(())
    })
    .await;
}

use sqlx::Connection;

/// Runs `openssl args` in `dir`; panics on failure.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let output = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// A self-signed CA certificate `name.crt` (key `name.key`) in `dir`.
fn certificate_authority(dir: &std::path::Path, name: &str, common_name: &str) {
    let (subject, key, crt) = (format!("/CN={common_name}"), format!("{name}.key"), format!("{name}.crt"));
    let args = [
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subject, "-keyout", &key, "-out", &crt,
    ];
    openssl(dir, &args);
}

/// A CA and a server certificate for `127.0.0.1` signed by it, and a second CA that signed
/// nothing, in `dir`.
fn certificates(dir: &std::path::Path) {
    certificate_authority(dir, "ca", "sagaplane test CA");
    certificate_authority(dir, "other", "another CA");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName = IP:127.0.0.1\n").expect("write san.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ],
    );
}

/// Runs the binary's `migrate` against `url` and returns (exit code, stderr, seconds taken).
fn migrate_with(url: &str) -> (Option<i32>, String, f64) {
    let start = std::time::Instant::now();
    let output = std::process::Command::new(BIN)
        .arg("migrate")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SAGAPLANE_DATABASE_URL", url)
        .output()
        .expect("run sagaplane migrate");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned(), start.elapsed().as_secs_f64())
}

/// TLS to a cluster that accepts only `hostssl` logins, with a CA the test made: sagas run, a
/// database-tier tenant (its own database, reached with the same TLS settings) becomes ACTIVE,
/// and every Sagaplane backend is on TLS. A wrong CA, a missing certificate file, and
/// `sslmode=disable` each end startup quickly with exit 1, naming TLS and the URL, never the
/// password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_postgresql_with_verified_certificates() {
    let dir = std::env::temp_dir().join(format!("sagaplane-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("tls dir");
    certificates(&dir);
    let port = free_port();
    let cluster = Cluster::create(
        "sagaplane_it_tls",
        port,
        "ssl = on\nssl_cert_file = '/etc/postgresql/15/sagaplane_it_tls/server.crt'\n\
         ssl_key_file = '/etc/postgresql/15/sagaplane_it_tls/server.key'\n",
        "hostssl all all 127.0.0.1/32 scram-sha-256",
        &[
            ("server.crt", std::fs::read_to_string(dir.join("server.crt")).expect("crt")),
            ("server.key", std::fs::read_to_string(dir.join("server.key")).expect("key")),
        ],
    );
    cluster.psql("CREATE ROLE sagaplane LOGIN CREATEDB CREATEROLE PASSWORD 'tls-secret'");
    cluster.psql("CREATE DATABASE sagaplane OWNER sagaplane");
    let ca = dir.join("ca.crt");
    let base = format!("postgres://sagaplane:tls-secret@127.0.0.1:{port}/sagaplane");
    let url = format!("{base}?sslmode=verify-full&sslrootcert={}", ca.display());

    let app = App::spawn_on(BIN, &url, &["server"], &[]).await;
    let echo = fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo", "input": {"ok": true}}}]));
    assert_eq!(app.put_definition("echo", &echo).await.0, 201);
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(app.start("echo", json!({"i": i})).await);
    }
    for id in &ids {
        assert_eq!(app.wait_terminal(id, WAIT).await["status"], "COMPLETED");
    }
    let id = format!("silo-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (status, body) = post(&app, "/v1/tenants", json!({"id": id, "name": id, "tier": "silo"})).await;
    assert_eq!(status, 202, "{body}");
    let tenant = eventually("the silo tenant settled", WAIT, || async {
        let (_, tenant) = get(&app, &format!("/v1/tenants/{id}")).await;
        matches!(tenant["status"].as_str(), Some("ACTIVE" | "PROVISION_ERROR")).then_some(tenant)
    })
    .await;
    assert_eq!(tenant["status"], "ACTIVE", "{tenant}");
    let by_tls = cluster.psql(
        "SELECT count(*) FILTER (WHERE NOT s.ssl) || ' ' || count(*) FILTER (WHERE s.ssl) \
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.usename = 'sagaplane' AND a.backend_type = 'client backend'",
    );
    let (unencrypted, encrypted) = by_tls.trim().split_once(' ').expect("two counts");
    assert_eq!(unencrypted, "0", "every Sagaplane backend on TLS");
    assert!(encrypted.parse::<u32>().unwrap_or(0) >= 2, "Sagaplane's backends: {encrypted}");
    drop(app);

    let cases = [
        (format!("{base}?sslmode=verify-full&sslrootcert={}", dir.join("other.crt").display()), "wrong CA"),
        (format!("{base}?sslmode=verify-ca&sslrootcert={}", dir.join("missing.crt").display()), "missing certificate"),
        (format!("{base}?sslmode=disable"), "TLS required"),
    ];
    for (url, case) in cases {
        let (code, stderr, seconds) = migrate_with(&url);
        assert_eq!(code, Some(1), "{case}: {stderr}");
        assert!(seconds < 10.0, "{case}: took {seconds:.1}s");
        assert!(stderr.contains("TLS"), "{case}: names TLS: {stderr}");
        assert!(stderr.contains(&format!("127.0.0.1:{port}/sagaplane")), "{case}: names the URL: {stderr}");
        assert!(!stderr.contains("tls-secret"), "{case}: never the password: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A rolling upgrade as the old binary sees it: a newer binary's migration that declares it
/// keeps working for this one leaves `/ready` at 200; one that does not (or declares nothing,
/// as binaries before the declaration wrote) makes it 503 with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_compatibility_migrations_declare() {
    let url = test_support::db::fresh_postgres().await;
    let app = App::spawn_on(BIN, &url, &["server"], &[]).await;
    let (status, ready) = get(&app, "/ready").await;
    assert_eq!(status, 200, "{ready}");
    let binary = ready["binary_schema_version"].as_i64().expect("binary_schema_version");
    let mut db = sqlx::PgConnection::connect(&url).await.expect("connect");
    let record = |version: i64, compatible_from: Option<i64>| {
        sqlx::query(
            "INSERT INTO sagaplane_migrations (version, name, applied_at, compatible_from) VALUES ($1, 'newer', 0, $2)",
        )
        .bind(version)
        .bind(compatible_from)
    };
    // A compatible migration from a newer binary: still ready, on the newer schema.
    record(binary + 1, Some(binary)).execute(&mut db).await.expect("compatible migration");
    let (status, ready) = get(&app, "/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["schema_version"], binary + 1, "{ready}");
    let (_, status_body) = get(&app, "/v1/status").await;
    assert_eq!(status_body["schema"]["supported"], true, "{status_body}");
    // One it does not keep working with: out of the load balancer, saying why.
    record(binary + 2, Some(binary + 2)).execute(&mut db).await.expect("incompatible migration");
    let (status, ready) = get(&app, "/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["status"], "schema_too_new", "{ready}");
    assert_eq!(ready["requires"], binary + 2, "{ready}");
    assert!(ready["reason"].as_str().unwrap_or("").contains("newer binary"), "{ready}");
    // Rolled back (the newer binary's migration reverted): ready again.
    sqlx::query("DELETE FROM sagaplane_migrations WHERE version = $1")
        .bind(binary + 2)
        .execute(&mut db)
        .await
        .expect("revert");
    assert_eq!(get(&app, "/ready").await.0, 200);
    // A record without a declaration counts as incompatible.
    record(binary + 3, None).execute(&mut db).await.expect("undeclared migration");
    let (status, ready) = get(&app, "/ready").await;
    assert_eq!((status, ready["status"].as_str()), (503, Some("schema_too_new")), "{ready}");
}

/// The server behind the URL turns read-only under a running instance, as a demoted primary
/// does behind an endpoint that has not moved yet: `/ready` says `no_writable_primary`, new
/// sagas are refused with 503 (not lost, not a 500), and every connection that answered
/// read-only (SQLSTATE 25006) is dropped, never used again. Writable again, sagas run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_server_is_kept_out_of_the_pools() {
    let cluster = Cluster::create(
        "sagaplane_it_readonly",
        free_port(),
        "log_line_prefix = 'pid=%p '\n",
        "host all all 127.0.0.1/32 trust",
        &[],
    );
    cluster.psql("CREATE ROLE sagaplane LOGIN CREATEDB CREATEROLE PASSWORD 'sagaplane'");
    cluster.psql("CREATE DATABASE sagaplane OWNER sagaplane");
    let url = format!("postgres://sagaplane:sagaplane@127.0.0.1:{}/sagaplane", cluster.port);
    let app = App::spawn_on(BIN, &url, &["server"], &[]).await;
    let echo = fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo", "input": {"ok": true}}}]));
    assert_eq!(app.put_definition("echo", &echo).await.0, 201);
    for i in 0..20 {
        let id = app.start("echo", json!({"i": i})).await;
        assert_eq!(app.wait_terminal(&id, WAIT).await["status"], "COMPLETED");
    }

    cluster.psql("ALTER SYSTEM SET default_transaction_read_only = on");
    cluster.psql("SELECT pg_reload_conf()");
    // Writes, many at once: the pooled connections are tried and found read-only, and new
    // ones are refused (each start waits for a writable primary up to the connect timeout).
    let starts = (0..30).map(|i| post(&app, "/v1/sagas", json!({"definition": "echo", "input": {"ro": i}})));
    let mut refused = std::collections::BTreeMap::<u16, u32>::new();
    for (status, _) in futures::future::join_all(starts).await {
        *refused.entry(status).or_default() += 1;
    }
    assert_eq!(refused.keys().copied().collect::<Vec<_>>(), vec![503], "starts while read-only: {refused:?}");
    let (status, ready) = get(&app, "/ready").await;
    assert_eq!((status, ready["status"].as_str()), (503, Some("no_writable_primary")), "{ready}");

    cluster.psql("ALTER SYSTEM RESET default_transaction_read_only");
    cluster.psql("SELECT pg_reload_conf()");
    eventually("ready again", Duration::from_secs(30), || async { (get(&app, "/ready").await.0 == 200).then_some(()) })
        .await;
    for i in 0..20 {
        let id = app.start("echo", json!({"after": i})).await;
        assert_eq!(app.wait_terminal(&id, WAIT).await["status"], "COMPLETED");
    }
    // The server's log names each backend that refused a write; none of them is still open.
    let log = as_root("cat", &[&format!("/var/log/postgresql/postgresql-15-{}.log", cluster.name)]);
    let refusing: std::collections::BTreeSet<String> = log
        .lines()
        .filter(|line| line.contains("read-only transaction"))
        .filter_map(|line| {
            line.strip_prefix("pid=").and_then(|rest| rest.split_whitespace().next()).map(str::to_string)
        })
        .collect();
    assert!(!refusing.is_empty(), "no backend refused a write:\n{log}");
    let open = cluster.psql("SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE usename = 'sagaplane'");
    let open: std::collections::BTreeSet<String> = open.trim().split(',').map(str::to_string).collect();
    let reused: Vec<_> = refusing.intersection(&open).collect();
    assert!(reused.is_empty(), "connections that answered read-only are still in use: {reused:?}");
}

/// The connection table in docs/operations.md holds under load: two instances with their pools
/// set small, sagas and tenants of every tier at once, and `pg_stat_activity` sampled all the
/// while never shows more than each pool's size per instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_stay_within_the_configured_pools() {
    let cluster = trusting_cluster("sagaplane_it_connections");
    let url = format!("postgres://sagaplane:sagaplane@127.0.0.1:{}/sagaplane", cluster.port);
    let (engine, admin, sessions) = (6, 3, 2);
    let env = [
        ("SAGAPLANE_DATABASE_POOL_SIZE", engine.to_string()),
        ("SAGAPLANE_TENANT_POOL_SIZE", admin.to_string()),
        ("SAGAPLANE_TENANT_SESSIONS_MAX", sessions.to_string()),
    ];
    let first = App::spawn_on(BIN, &url, &["server"], &env).await;
    let second = App::spawn_on(BIN, &url, &["server"], &env).await;
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = tokio::task::spawn_blocking({
        let sampling = sampling.clone();
        let port = cluster.port;
        move || {
            let mut most = std::collections::BTreeMap::<String, u32>::new();
            while sampling.load(std::sync::atomic::Ordering::SeqCst) {
                let output = test_support::clusters::as_postgres(
                    "psql",
                    &[
                        "-p",
                        &port.to_string(),
                        "-At",
                        "-c",
                        "SELECT application_name || '|' || count(*) FROM pg_stat_activity \
                         WHERE application_name LIKE 'sagaplane%' GROUP BY application_name",
                    ],
                )
                .output()
                .expect("psql");
                assert!(output.status.success(), "psql: {}", String::from_utf8_lossy(&output.stderr));
                for line in String::from_utf8_lossy(&output.stdout).lines() {
                    if let Some((name, count)) = line.rsplit_once('|') {
                        let count = count.parse().unwrap_or(0);
                        let entry = most.entry(name.to_string()).or_default();
                        *entry = (*entry).max(count);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            most
        }
    });

    let three = fast_definition(json!([
        {"name": "a", "action": {"builtin": "core.echo", "input": {"n": 1}}},
        {"name": "b", "action": {"builtin": "core.echo", "input": {"n": 2}}},
        {"name": "c", "action": {"builtin": "core.echo", "input": {"n": 3}}},
    ]));
    assert_eq!(first.put_definition("three", &three).await.0, 201);
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let tenants: Vec<(String, &str)> = ["pooled", "bridge", "silo"]
        .iter()
        .flat_map(|tier| (0..2).map(move |i| (format!("{tier}-{i}-{suffix}"), *tier)))
        .collect();
    for (i, (id, tier)) in tenants.iter().enumerate() {
        let app = if i % 2 == 0 { &first } else { &second };
        let (status, body) = post(app, "/v1/tenants", json!({"id": id, "name": id, "tier": tier})).await;
        assert_eq!(status, 202, "{body}");
    }
    let starts = (0..300).map(|i| {
        let app = if i % 2 == 0 { &first } else { &second };
        post(app, "/v1/sagas", json!({"definition": "three", "input": {"i": i}}))
    });
    let started = futures::future::join_all(starts).await;
    for (status, body) in &started {
        assert_eq!(*status, 201, "{body}");
        let id = body["id"].as_str().expect("id");
        assert_eq!(first.wait_terminal(id, WAIT).await["status"], "COMPLETED");
    }
    for (id, _) in &tenants {
        let tenant = eventually(&format!("tenant {id} settled"), WAIT, || async {
            let (_, tenant) = get(&first, &format!("/v1/tenants/{id}")).await;
            matches!(tenant["status"].as_str(), Some("ACTIVE" | "PROVISION_ERROR")).then_some(tenant)
        })
        .await;
        assert_eq!(tenant["status"], "ACTIVE", "{tenant}");
    }
    sampling.store(false, std::sync::atomic::Ordering::SeqCst);
    let most = sampler.await.expect("sampler");
    println!("most connections seen at once, two instances: {most:?}");
    let limits = [
        ("sagaplane", 2 * engine),
        ("sagaplane listen", 2),
        ("sagaplane tenant admin", 2 * admin),
        ("sagaplane tenant session", 2 * sessions),
    ];
    for (name, limit) in limits {
        let seen = most.get(name).copied().unwrap_or(0);
        assert!(seen <= limit, "{name}: {seen} connections at once, the pools allow {limit}: {most:?}");
    }
    assert!(most.keys().all(|name| limits.iter().any(|(known, _)| known == name)), "an unknown pool: {most:?}");
    // The load was enough to fill the engine pools: the bound was tested, not idle.
    assert!(most.get("sagaplane").copied().unwrap_or(0) > engine, "{most:?}");
    let total: u32 = most.values().sum();
    assert!(total <= 2 * (engine + 1 + admin + sessions), "{total} connections: {most:?}");
}
