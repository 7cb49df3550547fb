//! The shop end to end, as its README runs it (its commands verbatim through
//! `test_support::readme`'s cargo shim, on free ports and fresh databases): real processes
//! (three services, Sagaplane instances), real databases, faults, and the reconciliation's
//! verdict.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use test_support::readme;

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

/// The README's block holding `needle`, its first command that does, addresses replaced.
fn readme_command(needle: &str, replace: &[(&str, &str)]) -> String {
    let blocks = readme::sh_blocks(include_str!("../README.md"));
    let mut command = blocks
        .iter()
        .flat_map(|block| readme::commands(block))
        .find(|command| command.contains(needle))
        .unwrap_or_else(|| panic!("the README runs {needle:?}"));
    for (from, to) in replace {
        assert!(command.contains(from), "{from:?} in {command:?}");
        command = command.replace(from, to);
    }
    command
}

fn shim(dir: &Path) -> PathBuf {
    readme::cargo_shim(dir, &[("", &sagaplane()), ("shop-example", Path::new(env!("CARGO_BIN_EXE_shop")))])
}

fn run(dir: &Path, command: &str) -> (bool, String) {
    let output = readme::shell(dir, &shim(dir), command).output().expect("the README command runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The README's PostgreSQL run, verbatim but for the databases (fresh ones of the suite's
/// cluster) and a smaller run: 400 orders, 10% declined, 40 units per product so stock runs out.
#[test]
fn orders_over_three_orchestrators_with_faults_reconcile_on_postgres() {
    let database = test_support::db::fresh_postgres_blocking();
    let admin = test_support::db::postgres_admin_url();
    let services_db = format!("{}/postgres", admin.rsplit_once('/').map(|(server, _)| server).expect("a database URL"));
    let dir = work_dir("faults");
    let shop = PathBuf::from(env!("CARGO_BIN_EXE_shop"));
    let command = readme_command(
        "target/release/shop run",
        &[
            ("target/release/shop", shop.to_str().unwrap_or_default()),
            ("postgres://sagaplane:sagaplane@127.0.0.1:5432/shop", &database),
            ("postgres://sagaplane:sagaplane@127.0.0.1:5432/postgres", &services_db),
            ("--orders 10000", "--orders 400 --decline-rate 0.1 --units 40"),
        ],
    );
    let (ok, built) = run(&dir, &readme_command("cargo build", &[]));
    assert!(ok, "{built}");
    let (ok, output) = run(&dir, &command);
    assert!(ok, "shop run failed:\n{output}");
    assert!(output.contains("fault: SIGKILL the inventory service"), "{output}");
    assert!(output.contains("fault: SIGKILL orchestrator 0"), "{output}");
    assert!(output.contains("reconciliation: everything agrees"), "{output}");
    // Some orders were refused (declines, stock of 40 per product runs out) and compensated.
    assert!(output.contains("\"COMPENSATED\""), "no order was compensated:\n{output}");
    assert!(output.contains("\"COMPLETED\""), "no order completed:\n{output}");
}

/// The README's two terminals verbatim, the server on a free port.
#[test]
fn the_readme_run_against_sagaplane_dev() {
    let dir = work_dir("dev");
    let port = test_support::clusters::free_port();
    let log = std::fs::File::create(dir.join("dev.log")).expect("log");
    let server = readme_command("-- dev", &[]);
    let dev = readme::shell(&dir, &shim(&dir), &format!("{server} --listen 127.0.0.1:{port}"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .map(readme::Group)
        .expect("terminal 1");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join(".sagaplane/admin-token").exists() || std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let text = std::fs::read_to_string(dir.join("dev.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "sagaplane dev did not come up:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let (ok, output) = run(&dir, &readme_command("shop-example -- run", &[("http://127.0.0.1:8080", &url)]));
    drop(dev);
    assert!(ok, "shop run failed:\n{output}");
    assert!(output.contains("reconciliation: everything agrees"), "{output}");
    println!("{output}\n(the README's run took {:.0} s)", started.elapsed().as_secs_f64());
}
