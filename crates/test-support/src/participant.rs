//! A scriptable participant: a real HTTP server on loopback that answers each path with a
//! scripted sequence of statuses (the last one repeats) and records every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// One request the participant saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The client's address: the same port on two requests means a reused connection.
    pub peer: std::net::SocketAddr,
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    scripts: HashMap<String, Vec<(u16, Value)>>,
    /// Per path, one raw answer (any bytes, not necessarily JSON or UTF-8), always.
    raw: HashMap<String, (u16, Vec<u8>)>,
    /// Per path, a redirect to this location, always.
    redirects: HashMap<String, (u16, String)>,
    /// Per path, delays for the next requests (consumed in turn).
    delays: HashMap<String, Vec<std::time::Duration>>,
    seen: Vec<Seen>,
}

/// The participant server.
#[derive(Clone)]
pub struct Participant {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl Participant {
    pub async fn start() -> Participant {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let router = axum::Router::new().fallback(handle).with_state(inner.clone());
        let router = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind participant");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Participant { url, inner }
    }

    /// Answers `path` with these `(status, body)` in turn; the last repeats. Unscripted paths
    /// answer 200 with `{"id": "<path>"}`.
    pub fn script(&self, path: &str, responses: Vec<(u16, Value)>) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.scripts.insert(path.to_string(), responses);
        }
    }

    /// Answers `path` with exactly these bytes (as `application/json`), every time.
    pub fn script_raw(&self, path: &str, status: u16, body: &[u8]) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.raw.insert(path.to_string(), (status, body.to_vec()));
        }
    }

    /// Answers `path` with a redirect (`status`, e.g. 302 or 307) to `location`, every time.
    pub fn redirect(&self, path: &str, status: u16, location: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.redirects.insert(path.to_string(), (status, location.to_string()));
        }
    }

    /// Delays the next answers on `path` by these durations, in turn.
    pub fn delay(&self, path: &str, delays: Vec<std::time::Duration>) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.delays.insert(path.to_string(), delays);
        }
    }

    /// Every request to `path`, in arrival order.
    pub fn requests(&self, path: &str) -> Vec<Seen> {
        self.inner.lock().map(|i| i.seen.iter().filter(|s| s.path == path).cloned().collect()).unwrap_or_default()
    }

    /// Every request, in arrival order.
    pub fn all_requests(&self) -> Vec<Seen> {
        self.inner.lock().map(|i| i.seen.clone()).unwrap_or_default()
    }
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let seen = Seen {
        peer,
        method: method.to_string(),
        path: path.clone(),
        headers: headers.iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        at: Instant::now(),
    };
    let (status, body, delay) = {
        let Ok(mut inner) = inner.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        if let Some((status, location)) = inner.redirects.get(&path).cloned() {
            inner.seen.push(seen);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
            return (status, [(axum::http::header::LOCATION, location)]).into_response();
        }
        if let Some((status, bytes)) = inner.raw.get(&path).cloned() {
            inner.seen.push(seen);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, [(axum::http::header::CONTENT_TYPE, "application/json")], bytes).into_response();
        }
        let answer = match inner.scripts.get_mut(&path) {
            Some(script) if script.len() > 1 => script.remove(0),
            Some(script) if script.len() == 1 => script[0].clone(),
            _ => (200, json!({"id": path.trim_start_matches('/').replace('/', "-")})),
        };
        let delay = inner.delays.get_mut(&path).and_then(|d| (!d.is_empty()).then(|| d.remove(0)));
        inner.seen.push(seen);
        (answer.0, answer.1, delay)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}
