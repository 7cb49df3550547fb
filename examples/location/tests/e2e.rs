//! The location app end to end on PostgreSQL, as its README runs it: `sagaplane server` with the
//! app's tenant migrations and the original delivery schedule scaled from minutes to seconds,
//! then `location demo`, which checks every outcome from the app's, the third party's and
//! Sagaplane's point of view and fails on any surprise.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn sagaplane() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_location")).with_file_name("sagaplane");
    assert!(path.exists(), "{} is missing: build the workspace (cargo build --workspace)", path.display());
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

#[test]
fn two_tenants_a_failing_third_party_and_its_recovery() {
    let admin =
        std::env::var("SAGAPLANE_TEST_DATABASE_URL").expect("SAGAPLANE_TEST_DATABASE_URL (scripts/test sets it)");
    let server = admin.rsplit_once('/').map(|(server, _)| server.to_string()).expect("a database URL");
    let database = format!("it_location_{}", std::process::id());
    let created = Command::new("psql")
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
    assert!(created.success(), "creating {database}");
    let url = format!("{server}/{database}");
    let dir = std::env::temp_dir().join(format!("location-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port();
    let token = format!("location-it-{}", std::process::id());
    let migrations = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let log = std::fs::File::create(dir.join("sagaplane.log")).expect("log");
    let mut sagaplane = Command::new(sagaplane())
        .arg("server")
        .env("SAGAPLANE_DATABASE_URL", &url)
        .env("SAGAPLANE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SAGAPLANE_ADMIN_TOKEN", &token)
        .env("SAGAPLANE_TENANT_MIGRATIONS_DIR", &migrations)
        .env("SAGAPLANE_DELIVERY_RETRY_SCHEDULE", "1s,2s,4s,8s,16s,32s,64s,128s")
        .env("SAGAPLANE_BREAKER_COOLDOWN", "3s")
        // The third party runs on this machine: the operator lets tenants' subscriptions reach it.
        .env("SAGAPLANE_HTTP_ALLOW", "127.0.0.1")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("sagaplane server starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sagaplane server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ports = format!("{},{}", free_port(), free_port());
    let output = Command::new(env!("CARGO_BIN_EXE_location"))
        .args([
            "demo",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--token",
            &token,
            "--tenant-database",
            &url,
            "--ports",
            &ports,
        ])
        .output()
        .expect("location demo runs");
    let _ = sagaplane.kill();
    let _ = sagaplane.wait();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let server_log = std::fs::read_to_string(dir.join("sagaplane.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "location demo failed:\n{text}\n--- sagaplane ---\n{}",
        &server_log[server_log.len().saturating_sub(3000)..]
    );
    println!("{text}");
    for expected in [
        "sessions: two logins listed for alice, one revoked",
        "south's 3 updates delivered",
        "north's 3 dead as expired, none sent",
        "row-level security: each tenant's role reads its own 3 locations",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
