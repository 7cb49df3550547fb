//! The onboarding example end to end, as its README runs it: its two terminals' commands, run
//! verbatim through `test_support::readme`'s cargo shim, except that the four services and the
//! server listen on free ports (the CRM's callback URL follows). The demo checks every outcome
//! from the CRM's, each service's and the saga history's point of view and fails on any
//! surprise; afterwards, the built-in tenant sagas are as before and onboard a tenant with the
//! demo's services gone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_support::readme;

fn sagaplane() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_onboarding")).with_file_name("sagaplane");
    assert!(path.exists(), "{} is missing: build the workspace (cargo build --workspace)", path.display());
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

/// `sagaplane ARGS` against the test's server.
fn cli(url: &str, dir: &Path, args: &[&str]) -> (bool, String) {
    let token = std::fs::read_to_string(dir.join(".sagaplane/admin-token")).expect("the dev token file");
    let output = Command::new(sagaplane())
        .args(args)
        .env("SAGAPLANE_URL", url)
        .env("SAGAPLANE_TOKEN", token.trim())
        .output()
        .expect("sagaplane runs");
    (
        output.status.success(),
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
    )
}

#[test]
fn the_readme_onboards_per_tier_runs_the_drills_and_leaves_the_built_ins_as_they_were() {
    let blocks = readme::sh_blocks(include_str!("../README.md"));
    let dir = std::env::temp_dir().join(format!("onboarding-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let shim = readme::cargo_shim(
        &dir,
        &[("", &sagaplane()), ("onboarding-example", Path::new(env!("CARGO_BIN_EXE_onboarding")))],
    );
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");

    // Terminal 1.
    let server = &readme::commands(&blocks[0])[0];
    let server = server.replace("127.0.0.1:7104", &format!("127.0.0.1:{}", ports[3]));
    let log = std::fs::File::create(dir.join("dev.log")).expect("log");
    let dev = readme::shell(&dir, &shim, &format!("{server} --listen 127.0.0.1:{port}"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .map(readme::Group)
        .expect("terminal 1");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join(".sagaplane/admin-token").exists() || std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "sagaplane dev did not come up: {}",
            std::fs::read_to_string(dir.join("dev.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, before) = cli(&url, &dir, &["definitions", "show", "tenant.provision"]);

    // Terminal 2.
    let demo = &readme::commands(&blocks[1])[0];
    let ports_arg = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let output = readme::shell(&dir, &shim, &format!("{demo} --ports {ports_arg}"))
        .env("SAGAPLANE_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("terminal 2");
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
        "tenant.provision and tenant.deprovision restored",
        "every onboarding outcome and drill as expected, in ",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }

    // The built-ins are as they were, and onboard with the demo's services gone.
    let (_, after) = cli(&url, &dir, &["definitions", "show", "tenant.provision"]);
    let steps = |shown: &str| -> Vec<String> {
        let value: serde_json::Value = serde_json::from_str(shown).unwrap_or_default();
        let definition = if value["definition"].is_object() { &value["definition"] } else { &value };
        definition["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str().map(str::to_string))
            .collect()
    };
    assert!(!steps(&after).is_empty(), "{after}");
    assert_eq!(steps(&after), steps(&before), "tenant.provision restored:\n{after}");
    let (ok, created) = cli(&url, &dir, &["tenants", "create", "after-demo", "--name", "After Demo"]);
    assert!(ok && created.contains("ACTIVE"), "a tenant created after the demo onboards:\n{created}");
    let (ok, deleted) = cli(&url, &dir, &["tenants", "delete", "after-demo"]);
    assert!(ok && deleted.contains("DELETED"), "and offboards:\n{deleted}");
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}
