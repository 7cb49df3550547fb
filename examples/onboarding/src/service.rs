//! The three provisioning services — identity provider, cloud, disaster recovery — as one small
//! HTTP service with its own state, run three times. `POST /<things>` with an `Idempotency-Key`
//! creates the tenant's resource (shaped by its tier) or, for a key seen before, answers what it
//! answered the first time; `POST /<things>/<tenant>/delete` removes it (200 either way, saying
//! whether there was something). `GET /state` shows what exists, what was deleted, and every
//! request with its idempotency key. The state is kept in a JSON file, written after every
//! change, so a restarted service remembers. With `--slow-first N` the first N creates do their
//! work but answer late (`--slow-ms`), as an overloaded identity provider does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// Which service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Idp,
    Cloud,
    Dr,
}

impl Kind {
    /// The collection in its paths.
    pub fn things(self) -> &'static str {
        match self {
            Kind::Idp => "realms",
            Kind::Cloud => "stacks",
            Kind::Dr => "replications",
        }
    }

    /// What it makes for a tenant of `tier`.
    fn resource(self, tenant: &str, tier: &str) -> Value {
        let dedicated = tier == "silo";
        match self {
            Kind::Idp => json!({
                "realm": if dedicated { format!("tenant-{tenant}") } else { "shared".to_string() },
                "organization": tenant,
                "sso_client_id": format!("{tenant}-sso"),
            }),
            Kind::Cloud => match tier {
                "silo" => {
                    json!({"vpc": format!("vpc-{tenant}"), "database_cluster": format!("db-{tenant}"), "dedicated": true})
                }
                "bridge" => {
                    json!({"database_cluster": "shared-1", "schema": format!("tenant_{tenant}"), "dedicated": false})
                }
                _ => json!({"database_cluster": "shared-1", "dedicated": false}),
            },
            Kind::Dr => json!({
                "replica_region": "eu-west-2",
                "replica": if dedicated { format!("replica-{tenant}") } else { "shared-replica".to_string() },
                "rpo_seconds": if dedicated { 60 } else { 900 },
            }),
        }
    }
}

#[derive(Default)]
struct Inner {
    resources: BTreeMap<String, Value>,
    deleted: Vec<String>,
    /// Idempotency key → the first answer.
    answers: BTreeMap<String, Value>,
    requests: Vec<Value>,
    slow_left: u32,
}

impl Inner {
    fn to_json(&self) -> Value {
        json!({"resources": self.resources, "deleted": self.deleted, "answers": self.answers, "requests": self.requests})
    }

    fn from_json(value: &Value) -> Inner {
        let map = |key: &str| -> BTreeMap<String, Value> {
            value[key].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
        };
        let list = |key: &str| value[key].as_array().cloned().unwrap_or_default();
        Inner {
            resources: map("resources"),
            deleted: list("deleted").iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
            answers: map("answers"),
            requests: list("requests"),
            slow_left: 0,
        }
    }
}

#[derive(Clone)]
struct App {
    kind: Kind,
    inner: Arc<Mutex<Inner>>,
    slow_ms: u64,
    state_file: std::path::PathBuf,
}

impl App {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes the state (a temporary file renamed over the old one).
    fn save(&self, inner: &Inner) {
        let temporary = self.state_file.with_extension("tmp");
        if std::fs::write(&temporary, inner.to_json().to_string()).is_ok() {
            let _ = std::fs::rename(&temporary, &self.state_file);
        }
    }
}

/// The service's routes, its state kept in `state_file`.
pub fn router(kind: Kind, state_file: std::path::PathBuf, slow_first: u32, slow_ms: u64) -> Router {
    let saved = std::fs::read_to_string(&state_file).ok().and_then(|text| serde_json::from_str::<Value>(&text).ok());
    let mut inner = saved.as_ref().map(Inner::from_json).unwrap_or_default();
    inner.slow_left = slow_first;
    let app = App { kind, inner: Arc::new(Mutex::new(inner)), slow_ms, state_file };
    Router::new()
        .route(&format!("/{}", kind.things()), post(create))
        .route(&format!("/{}/{{tenant}}/delete", kind.things()), post(delete))
        .route("/state", get(state))
        .with_state(app)
}

async fn create(State(app): State<App>, headers: HeaderMap, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let attempt = headers.get("x-saga-attempt").and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
    let (Some(tenant), tier) = (body["tenant_id"].as_str(), body["tier"].as_str().unwrap_or("pooled")) else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "tenant_id is required"})));
    };
    let (answer, slow) = {
        let mut inner = app.inner();
        inner.requests.push(json!({"create": tenant, "idempotency_key": key, "attempt": attempt}));
        let answer = match inner.answers.get(&key) {
            Some(first) => first.clone(),
            None => {
                let resource = app.kind.resource(tenant, tier);
                inner.resources.insert(tenant.to_string(), resource.clone());
                inner.answers.insert(key, resource.clone());
                resource
            }
        };
        let slow = inner.slow_left > 0;
        inner.slow_left = inner.slow_left.saturating_sub(1);
        app.save(&inner);
        (answer, slow)
    };
    if slow {
        tokio::time::sleep(Duration::from_millis(app.slow_ms)).await;
    }
    (StatusCode::CREATED, Json(answer))
}

async fn delete(State(app): State<App>, Path(tenant): Path<String>) -> Json<Value> {
    let mut inner = app.inner();
    inner.requests.push(json!({"delete": tenant}));
    let existed = inner.resources.remove(&tenant).is_some();
    if existed {
        inner.deleted.push(tenant.clone());
    }
    app.save(&inner);
    Json(json!({"deleted": existed}))
}

async fn state(State(app): State<App>) -> Json<Value> {
    let inner = app.inner();
    Json(json!({"resources": inner.resources, "deleted": inner.deleted, "requests": inner.requests}))
}
