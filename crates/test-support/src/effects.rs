//! A participant with effects: a real HTTP server on loopback whose actions take effect and
//! whose compensations undo them, keyed by saga and step, so a test can check what was left
//! standing. It behaves like a well-made downstream service: an action is idempotent (a
//! duplicate changes nothing), a compensation of an action never seen leaves a tombstone so
//! that action, arriving late, is refused (409) instead of done.
//!
//! `POST /act` and `POST /undo` read the saga and step from `X-Saga-Id` and `X-Saga-Step`. A
//! test can hold the first action of a step after its effect has taken place and before the
//! answer leaves ([`EffectsParticipant::hold_after_effect`]) — the moment to kill the worker
//! that sent it — and can start an outage in which actions answer 503 and do nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

/// What happened to one step of one saga at the participant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effect {
    pub applied: bool,
    pub undone: bool,
    pub actions: u32,
    pub compensations: u32,
}

impl Effect {
    /// The action took effect and no compensation undid it.
    pub fn standing(&self) -> bool {
        self.applied && !self.undone
    }
}

/// An action held after its effect: the saga it belongs to, and the way to let its answer go.
pub struct Held {
    pub saga_id: String,
    pub step: String,
    pub release: oneshot::Sender<()>,
}

#[derive(Default)]
struct Inner {
    effects: BTreeMap<(String, String), Effect>,
    outage: bool,
    /// How long each action takes before it answers (after its effect).
    action_delay: std::time::Duration,
    /// The step whose first action is held, and where to report it.
    hold: Option<(String, mpsc::UnboundedSender<Held>)>,
}

#[derive(Clone)]
pub struct EffectsParticipant {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl EffectsParticipant {
    pub async fn start() -> EffectsParticipant {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let router = axum::Router::new().route("/act", post(act)).route("/undo", post(undo)).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind participant");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        EffectsParticipant { url, inner }
    }

    /// A definition step named `name` whose action is `POST /act` here and whose compensation
    /// is `POST /undo` here.
    pub fn step(&self, name: &str) -> serde_json::Value {
        json!({
            "name": name,
            "action": {"http": {"method": "POST", "url": format!("{}/act", self.url)}},
            "compensation": {"http": {"method": "POST", "url": format!("{}/undo", self.url)}},
        })
    }

    /// The next action of `step` (of any saga) takes effect, then waits for the test to release
    /// it before answering; the receiver gets it. Only the first one is held.
    pub fn hold_after_effect(&self, step: &str) -> mpsc::UnboundedReceiver<Held> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.lock().hold = Some((step.to_string(), sender));
        receiver
    }

    /// While on, every action answers 503 and does nothing; compensations still work.
    pub fn set_outage(&self, on: bool) {
        self.lock().outage = on;
    }

    /// Every action takes this long to answer, its effect done first (a slow service: more
    /// sagas are in the middle of a step at any moment).
    pub fn set_action_delay(&self, delay: std::time::Duration) {
        self.lock().action_delay = delay;
    }

    /// Every step's effect, by `(saga id, step)`.
    pub fn effects(&self) -> BTreeMap<(String, String), Effect> {
        self.lock().effects.clone()
    }

    /// The effects of one saga, by step.
    pub fn effects_of(&self, saga_id: &str) -> BTreeMap<String, Effect> {
        self.lock()
            .effects
            .iter()
            .filter(|((id, _), _)| id == saga_id)
            .map(|((_, s), e)| (s.clone(), e.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn saga_and_step(headers: &HeaderMap) -> Option<(String, String)> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    Some((get("x-saga-id")?, get("x-saga-step")?))
}

async fn act(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap) -> Response {
    let Some(key) = saga_and_step(&headers) else {
        return (StatusCode::BAD_REQUEST, "X-Saga-Id and X-Saga-Step required").into_response();
    };
    let (held, delay) = {
        let mut inner = inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if inner.outage {
            return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"error": "outage"}))).into_response();
        }
        let effect = inner.effects.entry(key.clone()).or_default();
        effect.actions += 1;
        if effect.undone && !effect.applied {
            return (StatusCode::CONFLICT, axum::Json(json!({"error": "compensated before it arrived"})))
                .into_response();
        }
        effect.applied = true;
        let hold_this = inner.hold.as_ref().is_some_and(|(step, _)| *step == key.1);
        let held = if hold_this { inner.hold.take().map(|(_, report)| report) } else { None };
        (held, inner.action_delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(report) = held {
        let (release, released) = oneshot::channel();
        if report.send(Held { saga_id: key.0.clone(), step: key.1.clone(), release }).is_ok() {
            let _ = released.await;
        }
    }
    axum::Json(json!({"done": format!("{}/{}", key.0, key.1)})).into_response()
}

async fn undo(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap) -> Response {
    let Some(key) = saga_and_step(&headers) else {
        return (StatusCode::BAD_REQUEST, "X-Saga-Id and X-Saga-Step required").into_response();
    };
    let mut inner = inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let effect = inner.effects.entry(key).or_default();
    effect.compensations += 1;
    effect.undone = true;
    axum::Json(json!({"undone": true})).into_response()
}
