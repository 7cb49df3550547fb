//! The README's five-minute tour, run as written, and `sagaplane listen` end to end.
//!
//! The tour's four terminals are the README's four `sh` blocks, run verbatim through the cargo
//! shim of `test_support::readme`. Only the addresses differ: the server and the demo listen on free ports
//! (so the test never collides with a developer's own 8080 or 8090), and the definition is
//! pointed at the demo's port.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

use test_support::readme::{self, commands};

use crate::BIN;

type StdoutLines = Lines<BufReader<ChildStdout>>;
type StderrLines = Lines<BufReader<ChildStderr>>;

/// The `sh` blocks of the README's "Five-minute tour" that are its terminals, in order.
fn tour_blocks() -> Vec<String> {
    let readme = include_str!("../../../../README.md");
    readme::sh_blocks(readme).into_iter().filter(|block| block.starts_with("# terminal ")).collect()
}

/// `sh -c script` in `dir` through the cargo shim, with `env`, its output piped.
fn shell(dir: &Path, shim: &Path, script: &str, env: &[(&str, &str)]) -> Command {
    let mut command = Command::from(readme::shell(dir, shim, script));
    command.envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    command
}

/// Reads `lines` until one contains `marker`; returns that line.
async fn line_with<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut Lines<R>, marker: &str) -> String {
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(marker) {
                return line;
            }
        }
        panic!("the process ended before printing {marker:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("nothing printed {marker:?} within 60 s"))
}

fn after<'a>(line: &'a str, prefix: &str) -> &'a str {
    let at = line.find(prefix).unwrap_or_else(|| panic!("{prefix:?} in {line:?}"));
    line[at + prefix.len()..].split_whitespace().next().unwrap_or_default()
}

struct Ran {
    command: String,
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `block`'s commands in one shell (so `export` carries on), each one's output apart.
async fn run_block(dir: &Path, shim: &Path, block: &str, env: &[(&str, &str)]) -> Vec<Ran> {
    let commands = commands(block);
    let mut script = String::new();
    for (i, command) in commands.iter().enumerate() {
        script.push_str(&format!("{{\n{command}\n}} >out.{i} 2>err.{i}\necho $? >rc.{i}\n"));
    }
    let status = shell(dir, shim, &script, env).status().await.expect("run the block");
    assert!(status.success(), "the block's shell failed: {status}");
    let read = |name: String| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    commands
        .into_iter()
        .enumerate()
        .map(|(i, command)| Ran {
            command,
            code: read(format!("rc.{i}")).trim().parse().unwrap_or(-1),
            stdout: read(format!("out.{i}")),
            stderr: read(format!("err.{i}")),
        })
        .collect()
}

fn ran<'a>(ran: &'a [Ran], needle: &str) -> &'a Ran {
    ran.iter().find(|r| r.command.contains(needle)).unwrap_or_else(|| panic!("the tour runs {needle:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_tour_completes_compensates_onboards_and_shows_signed_events() {
    let blocks = tour_blocks();
    assert_eq!(blocks.len(), 4, "four terminals: {blocks:?}");
    let dir = std::env::temp_dir().join(format!("sagaplane-tour-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("tour dir");
    let shim = readme::cargo_shim(&dir, &[("", Path::new(BIN))]);

    // Terminal 1: the server, with every default but its port.
    let mut dev = shell(&dir, &shim, &format!("exec {} --listen 127.0.0.1:0", commands(&blocks[0])[0]), &[])
        .spawn()
        .expect("terminal 1");
    let mut dev_out = BufReader::new(dev.stdout.take().expect("stdout")).lines();
    let url = after(&line_with(&mut dev_out, "listening on ").await, "listening on ").to_string();
    let token = after(&line_with(&mut dev_out, "admin token: ").await, "admin token: ").to_string();
    tokio::spawn(async move { while let Ok(Some(_)) = dev_out.next_line().await {} });

    // Terminal 2: the demo participant.
    let mut demo = shell(&dir, &shim, &format!("exec {} --listen 127.0.0.1:0", commands(&blocks[1])[0]), &[])
        .spawn()
        .expect("terminal 2");
    let mut demo_out = BufReader::new(demo.stdout.take().expect("stdout")).lines();
    let demo_url = after(&line_with(&mut demo_out, "shipping on ").await, "shipping on ").to_string();
    let demo_calls = Arc::new(Mutex::new(Vec::new()));
    let calls = demo_calls.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = demo_out.next_line().await {
            calls.lock().expect("calls").push(line);
        }
    });

    // Terminal 3: listen.
    let env = [("SAGAPLANE_URL", url.as_str())];
    let listen_commands = commands(&blocks[2]);
    let listen_script = format!(
        "{}\nexec {}",
        listen_commands[..listen_commands.len() - 1].join("\n"),
        listen_commands.last().expect("listen")
    );
    let mut listen = shell(&dir, &shim, &listen_script, &env).spawn().expect("terminal 3");
    let mut listen_out = BufReader::new(listen.stdout.take().expect("stdout")).lines();
    let mut listen_err = BufReader::new(listen.stderr.take().expect("stderr")).lines();
    let listening = line_with(&mut listen_err, "listening on ").await;
    let listen_url = after(&listening, "listening on ").to_string();

    // Terminal 4, with the definition pointed at the demo's port.
    let block = blocks[3].replace("http://127.0.0.1:8090", &demo_url);
    assert_ne!(block, blocks[3], "the tour's definition calls the demo on 127.0.0.1:8090");
    let results = run_block(&dir, &shim, &block, &env).await;
    for r in &results {
        let expected = if r.command.contains(r#""country":"AQ""#) { 2 } else { 0 };
        assert_eq!(r.code, expected, "{}\nstdout: {}\nstderr: {}", r.command, r.stdout, r.stderr);
    }
    let completed: Value = serde_json::from_str(&ran(&results, r#""country":"NO""#).stdout).expect("saga json");
    assert_eq!(completed["status"], "COMPLETED", "{completed}");
    let failed = ran(&results, r#""country":"AQ""#);
    let compensated: Value = serde_json::from_str(&failed.stdout).expect("saga json");
    assert_eq!(compensated["status"], "COMPENSATED", "{compensated}");
    assert!(
        failed.stderr.contains("exit 2: saga") && failed.stderr.contains("ended COMPENSATED, not COMPLETED: step ship"),
        "{}",
        failed.stderr
    );
    // The history the dashboard's timeline draws: ship failed, then charge and reserve undone.
    let http = reqwest::Client::new();
    let events: Value = http
        .get(format!("{url}/v1/sagas/{}/events", compensated["id"].as_str().expect("id")))
        .bearer_auth(&token)
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("events json");
    let undone: Vec<&str> = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["type"] == "step_compensated")
        .filter_map(|e| e["step"].as_str())
        .collect();
    assert_eq!(undone, ["charge", "reserve"], "{events}");
    assert!(
        demo_calls.lock().expect("calls").iter().any(|call| call.contains("/refund → 200")),
        "the demo refunded the charge: {:?}",
        demo_calls.lock().expect("calls")
    );
    let tenant: Value = serde_json::from_str(&ran(&results, "tenants show acme").stdout).expect("tenant json");
    assert_eq!(tenant["status"], "ACTIVE", "{tenant}");
    assert!(tenant["storage"]["location"].as_str().is_some_and(|l| l.ends_with("tenant_acme.db")), "{tenant}");

    // Terminal 3 printed the events, each verified, in whatever order they were delivered.
    let printed = Arc::new(Mutex::new(Vec::<String>::new()));
    let keep = printed.clone();
    let collector = tokio::spawn(async move {
        while let Ok(Some(line)) = listen_out.next_line().await {
            keep.lock().expect("printed").push(line);
        }
    });
    let saga_id = completed["id"].as_str().expect("id").to_string();
    let expected: [(&str, &str); 3] = [
        ("saga.completed", saga_id.as_str()),
        ("saga.compensated", "no carrier delivers to AQ"),
        ("tenant.activated", r#""tenant_id":"acme""#),
    ];
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let seen = printed.lock().expect("printed").clone();
            let all = expected.iter().all(|(kind, about)| {
                seen.iter().any(|l| l.contains(kind) && l.contains(about) && l.contains("verified"))
            });
            if all {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("listen printed {expected:?}: {:?}", printed.lock().expect("printed")));

    // A delivery not signed with the subscription's secret is refused, and not printed.
    let forged = http
        .post(&listen_url)
        .header("webhook-id", "msg_forged")
        .header("webhook-timestamp", unix_seconds())
        .header("webhook-signature", "v1,bm90IGEgc2lnbmF0dXJl")
        .body(r#"{"type":"forged.event","timestamp":"2026-01-01T00:00:00Z","data":{}}"#)
        .send()
        .await
        .expect("forged post");
    assert_eq!(forged.status(), 401);
    line_with(&mut listen_err, "rejected delivery msg_forged").await;

    // Ctrl-C: listen deletes its subscription and exits 0.
    stop(&listen, "INT");
    let status =
        tokio::time::timeout(Duration::from_secs(30), listen.wait()).await.expect("listen stops").expect("wait");
    assert!(status.success(), "{status}");
    collector.await.expect("collector");
    let forged_printed = printed.lock().expect("printed").iter().any(|l| l.contains("forged.event"));
    assert!(!forged_printed, "a forged event was printed");
    let subscriptions: Value = http
        .get(format!("{url}/v1/subscriptions"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(subscriptions["items"], json!([]), "{subscriptions}");
    stop(&demo, "TERM");
    stop(&dev, "TERM");
    let _ = demo.wait().await;
    let _ = dev.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Now, in seconds since the Unix epoch (a `webhook-timestamp`).
fn unix_seconds() -> String {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0).to_string()
}

fn stop(child: &Child, signal: &str) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status();
    }
}

/// A receiver `listen --forward-to` posts to: keeps what came, answers 200.
async fn forward_target() -> (String, Arc<Mutex<Vec<(axum::http::HeaderMap, String)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let keep = keep.clone();
            async move {
                keep.lock().expect("seen").push((headers, body));
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/hook"), seen)
}

fn spawn_listen(app: &test_support::App, args: &[&str]) -> (Child, StdoutLines, StderrLines) {
    let mut child = Command::new(BIN)
        .arg("listen")
        .args(args)
        .env_clear()
        .env("SAGAPLANE_URL", &app.url)
        .env("SAGAPLANE_TOKEN", test_support::app::TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn listen");
    let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    (child, stdout, stderr)
}

/// `listen` left behind by a SIGKILL is reused by the next `listen` on the same port; `--json`
/// prints one event a line; `--forward-to` passes each verified delivery on unchanged; SIGTERM
/// deletes the subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_reuses_its_subscription_prints_json_and_forwards() {
    let app = test_support::App::spawn(BIN, test_support::Backend::Sqlite, &[]).await;
    let port = test_support::clusters::free_port().to_string();
    let (target, seen) = forward_target().await;
    let args = ["--events", "saga.completed", "--port", &port, "--json", "--forward-to", &target];

    let (mut first, _, mut first_err) = spawn_listen(&app, &args);
    let id = after(&line_with(&mut first_err, "(subscription ").await, "(subscription ")
        .trim_end_matches([',', ')', ';'])
        .to_string();
    first.kill().await.expect("SIGKILL listen");
    let (mut second, mut out, mut err) = spawn_listen(&app, &args);
    let line = line_with(&mut err, "(subscription ").await;
    assert!(line.contains(&id), "the subscription {id} left behind is reused: {line}");
    let listed = app.send(app.request(reqwest::Method::GET, "/v1/subscriptions")).await.2;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1), "{listed}");

    app.put_definition("listen-echo", &json!({"steps": [{"name": "a", "action": {"builtin": "core.echo"}}]})).await;
    let saga_id = app.start("listen-echo", json!({})).await;
    let saga_id = saga_id.as_str();
    let printed = line_with(&mut out, saga_id).await;
    let event: Value = serde_json::from_str(&printed).expect("--json prints JSON lines");
    assert_eq!(event["type"], "saga.completed", "{event}");
    assert_eq!(event["data"]["saga_id"], saga_id, "{event}");
    let event_id = event["id"].as_str().expect("event id").to_string();
    line_with(&mut err, &format!("→ {target}: 200")).await;
    {
        let seen = seen.lock().expect("seen");
        let (headers, body) = seen.iter().find(|(_, body)| body.contains(saga_id)).expect("forwarded");
        assert_eq!(headers.get("webhook-id").and_then(|v| v.to_str().ok()), Some(event_id.as_str()));
        assert!(headers.get("webhook-signature").is_some_and(|v| v.to_str().is_ok_and(|v| v.starts_with("v1,"))));
        let forwarded: Value = serde_json::from_str(body).expect("forwarded JSON");
        assert_eq!(forwarded["data"], event["data"]);
    }

    stop(&second, "TERM");
    let status =
        tokio::time::timeout(Duration::from_secs(30), second.wait()).await.expect("listen stops").expect("wait");
    assert!(status.success(), "{status}");
    line_with(&mut err, &format!("subscription {id} deleted")).await;
    let listed = app.send(app.request(reqwest::Method::GET, "/v1/subscriptions")).await.2;
    assert_eq!(listed["items"], json!([]), "{listed}");
}
