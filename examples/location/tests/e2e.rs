//! The location app end to end on PostgreSQL, as its README runs it: the README's two terminals
//! verbatim through `test_support::readme`'s cargo shim, on a fresh database of the suite's
//! cluster and free ports, with the delivery schedule scaled from minutes to seconds. The demo
//! checks every outcome from the app's, the third party's and Sagaplane's point of view and
//! fails on any surprise.

use std::path::{Path, PathBuf};

use test_support::readme;

/// The database URL the README names; the test uses a fresh database of the suite's cluster.
const README_DATABASE: &str = "postgres://sagaplane:sagaplane@127.0.0.1:5432/location";
use std::time::{Duration, Instant};

fn sagaplane() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_location")).with_file_name("sagaplane");
    assert!(path.exists(), "{} is missing: build the workspace (cargo build --workspace)", path.display());
    path
}

#[test]
fn two_tenants_a_failing_third_party_and_its_recovery() {
    let url = test_support::db::fresh_postgres_blocking();
    let dir = std::env::temp_dir().join(format!("location-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shim = readme::cargo_shim(
        &dir,
        &[("", &sagaplane()), ("location-example", Path::new(env!("CARGO_BIN_EXE_location")))],
    );
    let blocks = readme::sh_blocks(include_str!("../README.md"));
    let terminal = |n: usize| {
        let block = blocks.iter().find(|b| b.starts_with(&format!("# terminal {n}"))).expect("a terminal block");
        readme::commands(block)[0].replace(README_DATABASE, &url)
    };
    let port = test_support::clusters::free_port();

    // Terminal 1, from the repository's root, with the delivery schedule in seconds.
    let log = std::fs::File::create(dir.join("sagaplane.log")).expect("log");
    let sagaplane = readme::shell(&root, &shim, &terminal(1))
        .env("SAGAPLANE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SAGAPLANE_DELIVERY_RETRY_SCHEDULE", "1s,2s,4s,8s,16s,32s,64s,128s")
        .env("SAGAPLANE_BREAKER_COOLDOWN", "3s")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .map(readme::Group)
        .expect("terminal 1");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sagaplane server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Terminal 2.
    let ports = format!("{},{}", test_support::clusters::free_port(), test_support::clusters::free_port());
    let output = readme::shell(&root, &shim, &format!("{} --url http://127.0.0.1:{port} --ports {ports}", terminal(2)))
        .output()
        .expect("terminal 2");
    drop(sagaplane);
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
