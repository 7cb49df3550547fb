//! The OpenAPI document tells the truth: schemathesis runs every check it has (`--checks all`)
//! on requests generated from `/openapi.json` of a real server (positive and negative data,
//! missing headers, stateful sequences) and fails on any server error, undocumented status,
//! schema-valid request refused or schema-violating request accepted. The answers that depend on
//! data a schema cannot know are allowed, with the contract rule for each, in
//! `tests/fuzz/schemathesis.toml`. `scripts/test` installs schemathesis from PyPI and
//! says where with `SAGAPLANE_SCHEMATHESIS`.

use std::path::PathBuf;
use std::process::Command;

use test_support::{App, Backend};

use crate::BIN;

fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("SAGAPLANE_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("st")).find(|st| st.is_file()))
        .unwrap_or_default();
    on_path.unwrap_or_else(|| {
        panic!("schemathesis is not installed: run scripts/test, which installs it (or set SAGAPLANE_SCHEMATHESIS)")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_contract_mismatch() {
    let st = schemathesis();
    use base64::Engine;
    let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::new_v4().as_bytes()));
    let app = App::spawn(BIN, Backend::Sqlite, &[("SAGAPLANE_CRM_WEBHOOK_SECRET", secret)]).await;
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz/schemathesis.toml");
    let mut command = Command::new(&st);
    command.args(["--config-file", config, "run", &format!("{}/openapi.json", app.url), "--checks", "all"]);
    command.args(["--header", &format!("Authorization: Bearer {}", test_support::app::TOKEN), "--workers", "1"]);
    // One worker: as fast on two cores, and schemathesis once failed inside its own generator with
    // two worker threads (every case passing).
    command.args(["--no-color"]);
    if let Ok(seed) = std::env::var("SAGAPLANE_FUZZ_SEED") {
        command.args(["--seed", &seed]);
    }
    command.current_dir(std::env::temp_dir());
    let output = tokio::task::block_in_place(|| command.output()).expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: Vec<&str> = stdout.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect();
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(" passed"), "schemathesis ran no test cases:\n{}", summary.join("\n"));
    println!("{}", summary.join("\n"));
}
