//! The shop end to end, as its README runs it: real processes (three services, Sagaplane
//! instances), real databases, faults, and the reconciliation's verdict.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// `sagaplane`, built by the same `cargo` run as `shop` (scripts/test builds the workspace).
fn sagaplane() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_shop")).with_file_name("sagaplane");
    assert!(path.exists(), "{} is missing: build the workspace (cargo build --workspace)", path.display());
    path
}

fn work_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shop-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("work dir");
    dir
}

fn shop(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_shop")).args(args).output().expect("shop runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The PostgreSQL the suite uses (scripts/test starts it), and a fresh database on it.
fn fresh_postgres(name: &str) -> Option<(String, String)> {
    let admin = std::env::var("SAGAPLANE_TEST_DATABASE_URL").ok()?;
    let server = admin.rsplit_once('/').map(|(server, _)| server.to_string())?;
    let database = format!("it_shop_{name}_{}", std::process::id());
    let status = Command::new("psql")
        .arg(&admin)
        .args([
            "-q",
            "-c",
            &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
            "-c",
            &format!("CREATE DATABASE {database}"),
        ])
        .status()
        .expect("psql runs");
    assert!(status.success(), "creating {database}");
    Some((format!("{server}/{database}"), format!("{server}/postgres")))
}

#[test]
fn orders_over_three_orchestrators_with_faults_reconcile_on_postgres() {
    let Some((database, services_db)) = fresh_postgres("faults") else {
        panic!("SAGAPLANE_TEST_DATABASE_URL is not set: scripts/test sets it");
    };
    let dir = work_dir("faults");
    let sagaplane = sagaplane();
    let (ok, output) = shop(&[
        "run",
        "--database",
        &database,
        "--orchestrators",
        "3",
        "--orders",
        "400",
        "--faults",
        "--services-db",
        &services_db,
        "--sagaplane",
        sagaplane.to_str().unwrap_or_default(),
        "--work-dir",
        dir.to_str().unwrap_or_default(),
        "--decline-rate",
        "0.1",
        "--units",
        "40",
    ]);
    assert!(ok, "shop run failed:\n{output}");
    assert!(output.contains("fault: SIGKILL the inventory service"), "{output}");
    assert!(output.contains("fault: SIGKILL orchestrator 0"), "{output}");
    assert!(output.contains("reconciliation: everything agrees"), "{output}");
    // Some orders were refused (declines, stock of 40 per product runs out) and compensated.
    assert!(output.contains("\"COMPENSATED\""), "no order was compensated:\n{output}");
    assert!(output.contains("\"COMPLETED\""), "no order completed:\n{output}");
}

#[test]
fn the_readme_run_against_sagaplane_dev() {
    let dir = work_dir("dev");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port");
    let log = std::fs::File::create(dir.join("dev.log")).expect("log");
    let mut dev = Command::new(sagaplane())
        .args([
            "dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            dir.join("data").to_str().unwrap_or_default(),
        ])
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("sagaplane dev starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let token = loop {
        let text = std::fs::read_to_string(dir.join("dev.log")).unwrap_or_default();
        if let Some(token) = text.lines().find_map(|l| l.split("admin token: ").nth(1)) {
            break token.trim().to_string();
        }
        assert!(Instant::now() < deadline, "sagaplane dev printed no admin token:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (ok, output) = shop(&[
        "run",
        "--url",
        &format!("http://127.0.0.1:{port}"),
        "--token",
        &token,
        "--orders",
        "150",
        "--work-dir",
        dir.join("shop").to_str().unwrap_or_default(),
    ]);
    let _ = dev.kill();
    let _ = dev.wait();
    assert!(ok, "shop run failed:\n{output}");
    assert!(output.contains("reconciliation: everything agrees"), "{output}");
}
