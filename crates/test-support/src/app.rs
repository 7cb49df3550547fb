//! `App`: the real binary, started on port 0 against a fresh database, plus a typed client.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Which store a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Postgres, Backend::Sqlite];

    pub async fn fresh_url(self) -> String {
        match self {
            Backend::Postgres => crate::db::fresh_postgres().await,
            Backend::Sqlite => crate::db::fresh_sqlite(),
        }
    }
}

pub const TOKEN: &str = "test-admin-token";

/// A running `sagaplane` process and a client for its API.
pub struct App {
    pub url: String,
    pub database_url: String,
    pub http: reqwest::Client,
    child: Child,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts `binary args…` with `env` and waits for its "listening on http://…" line.
pub async fn spawn_process(binary: &str, args: &[&str], env: &[(&str, String)]) -> (Child, String) {
    let mut command = Command::new(binary);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SAGAPLANE_LOG_FORMAT", "json")
        .env("RUST_LOG", std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn sagaplane");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split("listening on ").nth(1) {
                return rest.trim().to_string();
            }
        }
        panic!("sagaplane exited before listening");
    })
    .await
    .expect("sagaplane did not start listening within 30s");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

impl App {
    /// `sagaplane server` (API + worker) on a fresh database.
    pub async fn spawn(binary: &str, backend: Backend, extra_env: &[(&str, String)]) -> App {
        let database_url = backend.fresh_url().await;
        Self::spawn_on(binary, &database_url, &["server"], extra_env).await
    }

    /// A process with `args` on an existing database.
    pub async fn spawn_on(binary: &str, database_url: &str, args: &[&str], extra_env: &[(&str, String)]) -> App {
        let mut env = vec![
            ("SAGAPLANE_DATABASE_URL", database_url.to_string()),
            ("SAGAPLANE_ADMIN_TOKEN", TOKEN.to_string()),
            ("SAGAPLANE_LISTEN", "127.0.0.1:0".to_string()),
        ];
        env.extend(extra_env.iter().cloned());
        let (child, url) = spawn_process(binary, args, &env).await;
        App { url, database_url: database_url.to_string(), http: reqwest::Client::new(), child }
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{}", self.url, path)).bearer_auth(TOKEN)
    }

    /// Sends and returns `(status, headers, json body)`.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, body)
    }

    pub async fn put_definition(&self, name: &str, document: &Value) -> (u16, Value) {
        let (status, _, body) =
            self.send(self.request(reqwest::Method::PUT, &format!("/v1/definitions/{name}")).json(document)).await;
        (status, body)
    }

    /// Starts a saga, asserting 201, and returns its id.
    pub async fn start(&self, definition: &str, input: Value) -> String {
        let (status, _, body) = self
            .send(
                self.request(reqwest::Method::POST, "/v1/sagas")
                    .json(&json!({"definition": definition, "input": input})),
            )
            .await;
        assert_eq!(status, 201, "start failed: {body}");
        body["id"].as_str().expect("id").to_string()
    }

    pub async fn saga(&self, id: &str) -> Value {
        let (status, _, body) = self.send(self.request(reqwest::Method::GET, &format!("/v1/sagas/{id}"))).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits (long-poll) until the saga is terminal.
    pub async fn wait_terminal(&self, id: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (_, _, saga) = self.send(self.request(reqwest::Method::GET, &format!("/v1/sagas/{id}?wait=2s"))).await;
            if matches!(saga["status"].as_str(), Some("COMPLETED" | "COMPENSATED" | "FAILED")) {
                return saga;
            }
            assert!(tokio::time::Instant::now() < deadline, "saga {id} not terminal after {timeout:?}: {saga}");
        }
    }

    pub async fn events(&self, id: &str) -> Vec<Value> {
        let (status, _, body) = self.send(self.request(reqwest::Method::GET, &format!("/v1/sagas/{id}/events"))).await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().cloned().unwrap_or_default()
    }

    /// Event types of a saga, in order.
    pub async fn event_types(&self, id: &str) -> Vec<String> {
        self.events(id).await.iter().filter_map(|e| e["type"].as_str().map(str::to_string)).collect()
    }
}

/// A definition document with `steps` and fast retries (tests must not wait for defaults).
pub fn fast_definition(steps: Value) -> Value {
    json!({
        "defaults": {
            "timeout": "5s",
            "retry": {"max_attempts": 3, "initial_interval": "100ms", "multiplier": 2.0, "max_interval": "1s", "jitter": 0.0},
            "compensation_retry": {"max_attempts": 3, "initial_interval": "50ms", "multiplier": 2.0, "max_interval": "1s", "jitter": 0.0}
        },
        "steps": steps
    })
}
