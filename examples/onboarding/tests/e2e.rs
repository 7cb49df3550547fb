//! The onboarding example end to end, as its README runs it, on both stores: each pair of
//! terminals run verbatim through `test_support::readme`'s cargo shim, except that the four
//! services and the server listen on free ports (the CRM's callback URL follows) and the
//! PostgreSQL run uses a fresh database of the suite's cluster. The demo checks every outcome
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

/// `sagaplane ARGS` against the test's server, with `token`.
fn cli(url: &str, token: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(sagaplane())
        .args(args)
        .env("SAGAPLANE_URL", url)
        .env("SAGAPLANE_TOKEN", token)
        .output()
        .expect("sagaplane runs");
    (
        output.status.success(),
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
    )
}

/// The database URL the README's PostgreSQL terminal names.
const README_DATABASE: &str = "postgres://sagaplane:sagaplane@127.0.0.1:5432/onboarding";

#[test]
fn the_readme_on_sagaplane_dev() {
    the_readme("# terminal 1:", "# terminal 2:", None);
}

#[test]
fn the_readme_on_postgresql() {
    the_readme(
        "# terminal 1 on PostgreSQL",
        "# terminal 2 on PostgreSQL",
        Some(test_support::db::fresh_postgres_blocking()),
    );
}

/// The README's two terminals starting with `first` and `second`: onboarding per tier, the
/// drills, and afterwards the built-in sagas as they were.
fn the_readme(first: &str, second: &str, database: Option<String>) {
    let blocks = readme::sh_blocks(include_str!("../README.md"));
    let block = |start: &str| {
        readme::commands(blocks.iter().find(|b| b.starts_with(start)).expect("the README's terminal"))[0].clone()
    };
    let dir = std::env::temp_dir().join(format!("onboarding-it-{}-{}", std::process::id(), database.is_some()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let shim = readme::cargo_shim(
        &dir,
        &[("", &sagaplane()), ("onboarding-example", Path::new(env!("CARGO_BIN_EXE_onboarding")))],
    );
    let ports: Vec<u16> = (0..4).map(|_| test_support::clusters::free_port()).collect();
    let port = test_support::clusters::free_port();
    let url = format!("http://127.0.0.1:{port}");

    // Terminal 1.
    let mut server = block(first).replace("127.0.0.1:7104", &format!("127.0.0.1:{}", ports[3]));
    if let Some(database) = &database {
        server = server.replace(README_DATABASE, database);
    }
    let listen = if server.contains("-- dev") { format!(" --listen 127.0.0.1:{port}") } else { String::new() };
    let log = std::fs::File::create(dir.join("server.log")).expect("log");
    let running = readme::shell(&dir, &shim, &format!("{server}{listen}"))
        .env("SAGAPLANE_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .map(readme::Group)
        .expect("terminal 1");
    let token_file = dir.join(".sagaplane/admin-token");
    let deadline = Instant::now() + Duration::from_secs(30);
    while (database.is_none() && !token_file.exists()) || std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "Sagaplane did not come up: {}",
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let token = match &database {
        None => std::fs::read_to_string(&token_file).expect("the dev token file").trim().to_string(),
        Some(_) => "dev-admin".to_string(),
    };
    let (_, before) = cli(&url, &token, &["definitions", "show", "tenant.provision"]);

    // Terminal 2.
    let ports_arg = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let output = readme::shell(&dir, &shim, &format!("{} --ports {ports_arg}", block(second)))
        .env("SAGAPLANE_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("terminal 2");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let server_log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "onboarding demo failed:\n{text}\n--- sagaplane ---\n{}",
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
    let (_, after) = cli(&url, &token, &["definitions", "show", "tenant.provision"]);
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
    let (ok, created) = cli(&url, &token, &["tenants", "create", "after-demo", "--name", "After Demo"]);
    assert!(ok && created.contains("ACTIVE"), "a tenant created after the demo onboards:\n{created}");
    let (ok, deleted) = cli(&url, &token, &["tenants", "delete", "after-demo"]);
    assert!(ok && deleted.contains("DELETED"), "and offboards:\n{deleted}");
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
}
