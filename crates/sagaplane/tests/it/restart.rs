//! A database that restarts: the test runs its own PostgreSQL cluster (`initdb` into a temp
//! directory, a free port — the shared test cluster stays untouched), runs sagas and a tenant
//! provisioning through `sagaplane server`, and restarts PostgreSQL twice mid-run (a fast and an
//! immediate shutdown). Every saga still ends, and every participant request of a step carries
//! that step's one idempotency key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use test_support::app::fast_definition;
use test_support::{App, Participant};

use crate::BIN;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL cluster of the test's own, stopped (immediately) when dropped.
struct Cluster {
    dir: PathBuf,
    port: u16,
}

/// Runs a PostgreSQL tool as the `postgres` user when we are root (initdb refuses root).
fn pg(tool: &str, args: &[&str]) -> std::process::Output {
    let program = format!("{PG_BIN}/{tool}");
    let root = std::env::var("USER").map(|u| u == "root").unwrap_or(false) || unsafe_is_root();
    let mut command = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &program]);
        c
    } else {
        Command::new(&program)
    };
    command.args(args).output().unwrap_or_else(|e| panic!("running {tool}: {e}"))
}

fn unsafe_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

fn check(what: &str, output: std::process::Output) {
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Cluster {
    fn start() -> Cluster {
        let dir = std::env::temp_dir().join(format!("sagaplane-pg-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        if unsafe_is_root() {
            check(
                "chown",
                Command::new("chown").args(["postgres:postgres", &dir.display().to_string()]).output().expect("chown"),
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let data = dir.join("data");
        check(
            "initdb",
            pg("initdb", &["-D", &data.display().to_string(), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
        );
        let cluster = Cluster { dir, port };
        cluster.ctl(&["start", "-w", "-t", "60"]);
        cluster
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn ctl(&self, action: &[&str]) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.display());
        let log = self.dir.join("log").display().to_string();
        let mut args = vec!["-D".to_string(), self.data(), "-l".to_string(), log, "-o".to_string(), options];
        args.extend(action.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        check(&format!("pg_ctl {action:?}"), pg("pg_ctl", &args));
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn restart(&self, mode: &str) {
        self.ctl(&["stop", "-m", mode, "-w", "-t", "60"]);
        std::thread::sleep(Duration::from_millis(500));
        self.ctl(&["start", "-w", "-t", "60"]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = pg("pg_ctl", &["-D", &self.data(), "stop", "-m", "immediate"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn migrations_dir(base: &Path) -> PathBuf {
    let dir = base.join("migrations");
    std::fs::create_dir_all(dir.join("notes")).expect("migrations dir");
    std::fs::write(dir.join("notes/0001_create_notes.sql"), "CREATE TABLE notes (id BIGINT PRIMARY KEY);")
        .expect("write");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_saga_ends_across_restarts_of_the_database() {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.expect("cluster");
    let participant = Participant::start().await;
    for step in ["reserve", "charge", "ship"] {
        participant.delay(&format!("/{step}"), vec![Duration::from_millis(40); 200]);
    }
    let migrations = migrations_dir(&std::env::temp_dir().join(format!("sagaplane-restart-{}", uuid::Uuid::now_v7())));
    let env = [
        ("SAGAPLANE_VAR_P", participant.url.clone()),
        ("SAGAPLANE_LEASE_TTL", "3s".to_string()),
        ("SAGAPLANE_POLL_INTERVAL", "200ms".to_string()),
        ("SAGAPLANE_TENANT_MIGRATIONS_DIR", migrations.display().to_string()),
    ];
    let app = App::spawn_on(BIN, &cluster.url(), &["server"], &env).await;
    let step = |name: &str| {
        json!({"name": name, "action": {"http": {"method": "POST", "url": format!("{{{{ vars.P }}}}/{name}")}},
                                   "compensation": {"http": {"method": "POST", "url": format!("{{{{ vars.P }}}}/{name}/undo")}}})
    };
    let mut definition = fast_definition(json!([step("reserve"), step("charge"), step("ship")]));
    // Retries outlast a restart: the database is away for a second or two.
    definition["defaults"]["retry"] =
        json!({"max_attempts": 20, "initial_interval": "200ms", "max_interval": "1s", "jitter": 0.0});
    assert_eq!(app.put_definition("order", &definition).await.0, 201);

    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(app.start("order", json!({"i": i})).await);
    }
    let tenant = format!("restart-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let (status, _, body) = app
        .send(
            app.request(reqwest::Method::POST, "/v1/tenants")
                .json(&json!({"id": tenant, "name": "R", "tier": "bridge"})),
        )
        .await;
    assert_eq!(status, 202, "{body}");

    // Mid-run: some sagas have begun, not all have ended.
    let deadline = Instant::now() + Duration::from_secs(30);
    while participant.requests("/ship").len() < 3 {
        assert!(Instant::now() < deadline, "the sagas never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cluster = std::sync::Arc::new(cluster);
    let restarting = cluster.clone();
    let shipped_before = participant.requests("/ship").len();
    tokio::task::spawn_blocking(move || restarting.restart("fast")).await.expect("fast restart");
    assert!(shipped_before < ids.len(), "the restart came after every saga had ended");
    for i in 30..40 {
        // Accepted after the restart too (the API's pool reconnects).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _, body) = app
                .send(
                    app.request(reqwest::Method::POST, "/v1/sagas")
                        .json(&json!({"definition": "order", "input": {"i": i}})),
                )
                .await;
            if status == 201 {
                ids.push(body["id"].as_str().expect("id").to_string());
                break;
            }
            assert!(Instant::now() < deadline, "no saga accepted after the restart: {status} {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let restarting = cluster.clone();
    let shipped_before = participant.requests("/ship").len();
    tokio::task::spawn_blocking(move || restarting.restart("immediate")).await.expect("immediate restart");
    assert!(shipped_before < ids.len(), "the second restart came after every saga had ended");
    eprintln!("restarted with {shipped_before} of {} sagas shipped", ids.len());

    for id in &ids {
        let saga = app.wait_terminal(id, Duration::from_secs(90)).await;
        assert_eq!(saga["status"], "COMPLETED", "{saga}");
    }
    let tenant = crate::tenants::until_status(&app, &tenant, &["ACTIVE"]).await;
    assert_eq!(tenant["migrations"][0]["version"], 1, "{tenant}");

    // Each step of each saga reached the participant with exactly one idempotency key (a step
    // may be sent again after a restart — at least once — but always as the same effect).
    let mut keys: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for seen in participant.all_requests() {
        let saga = seen.headers.get("x-saga-id").cloned().unwrap_or_default();
        let key = seen.headers.get("idempotency-key").cloned().unwrap_or_default();
        keys.entry((saga, seen.path.clone())).or_default().insert(key);
    }
    for id in &ids {
        for step in ["reserve", "charge", "ship"] {
            let sent = keys.get(&(id.clone(), format!("/{step}"))).cloned().unwrap_or_default();
            assert_eq!(sent, BTreeSet::from([format!("{id}/{step}/action")]), "{id} {step}");
        }
    }
    assert!(participant.all_requests().iter().all(|seen| !seen.path.ends_with("/undo")), "nothing compensated");
}
