//! The onboarding example end to end, as its README runs it: `sagaplane dev` with the CRM's
//! secrets and callback URL, then `onboarding demo`, which checks every outcome from the CRM's,
//! each service's and the saga history's point of view and fails on any surprise.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn sagaplane() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_onboarding")).with_file_name("sagaplane");
    assert!(path.exists(), "{} is missing: build the workspace (cargo build --workspace)", path.display());
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

#[test]
fn onboarding_per_tier_and_the_drills_against_sagaplane_dev() {
    let dir = std::env::temp_dir().join(format!("onboarding-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let port = free_port();
    let log = std::fs::File::create(dir.join("dev.log")).expect("log");
    let mut dev = Command::new(sagaplane())
        .args([
            "dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            dir.join("data").to_str().unwrap_or_default(),
        ])
        .env("SAGAPLANE_CRM_WEBHOOK_SECRET", "whsec_c2FnYXBsYW5lLWV4YW1wbGUtY3JtLXdlYmhvb2stc2VjcmV0")
        .env("SAGAPLANE_CRM_CALLBACK_URL", format!("http://127.0.0.1:{}/callbacks", ports[3]))
        .env("SAGAPLANE_CRM_CALLBACK_SECRET", "whsec_c2FnYXBsYW5lLWV4YW1wbGUtY3JtLWNhbGxiYWNrLXNlY3JldA==")
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
    let ports = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let output = Command::new(env!("CARGO_BIN_EXE_onboarding"))
        .args(["demo", "--url", &format!("http://127.0.0.1:{port}"), "--token", &token, "--ports", &ports])
        .args(["--state-dir", dir.join("services").to_str().unwrap_or_default()])
        .output()
        .expect("onboarding demo runs");
    let _ = dev.kill();
    let _ = dev.wait();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let server_log = std::fs::read_to_string(dir.join("dev.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "onboarding demo failed:\n{text}\n--- sagaplane dev ---\n{}",
        &server_log[server_log.len().saturating_sub(4000)..]
    );
    println!("{text}");
    for expected in [
        "silo: acme-silo ACTIVE",
        "bridge: acme-bridge ACTIVE",
        "pooled: acme-pooled ACTIVE",
        "drill, identity provider slow",
        "drill, DR down: compensated in reverse",
        "drill, offboarding: acme-silo DELETED",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
