//! The client subcommands against a running server.

use std::process::Command;

use test_support::{App, Backend};

use crate::BIN;

fn client(app: &App, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("SAGAPLANE_URL", &app.url)
        .env("SAGAPLANE_TOKEN", test_support::app::TOKEN)
        .output()
        .expect("run client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_apply_then_sagas_start_wait_show() {
    let app = App::spawn(BIN, Backend::Sqlite, &[]).await;
    let dir = std::env::temp_dir().join(format!("sagaplane-cli-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("greet.yaml");
    std::fs::write(
        &file,
        "name: greet\nsteps:\n  - name: hello\n    action: {builtin: core.echo, input: {who: \"{{ input.who }}\"}}\n",
    )
    .expect("write");
    let path = file.to_str().expect("utf-8 path");
    let out = tokio::task::block_in_place(|| client(&app, &["definitions", "apply", "-f", path]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "definition greet v1 created");
    let out = tokio::task::block_in_place(|| client(&app, &["definitions", "apply", "-f", path]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "definition greet v1 unchanged");
    let out = tokio::task::block_in_place(|| {
        client(&app, &["sagas", "start", "greet", "--input", "{\"who\":\"ops\"}", "--wait"])
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let saga: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(saga["status"], "COMPLETED");
    assert_eq!(saga["output"]["hello"]["who"], "ops");
    let id = saga["id"].as_str().expect("id");
    let out = tokio::task::block_in_place(|| client(&app, &["sagas", "show", id, "--events"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("saga_completed"));
    let out = tokio::task::block_in_place(|| client(&app, &["sagas", "list"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains(id));
    let out = tokio::task::block_in_place(|| client(&app, &["sagas", "retry", id]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("409"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tokio::task::block_in_place(|| {
        Command::new(BIN)
            .args(["sagas", "list"])
            .env("SAGAPLANE_URL", &app.url)
            .env_remove("SAGAPLANE_TOKEN")
            .output()
            .expect("run")
    });
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "clear message without a token");
}
