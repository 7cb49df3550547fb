//! Native steps registered by name: `core.echo`, `core.fail`, `core.sleep`, `core.emit` (a
//! custom outbound event, written by the step's commit — see `crate::outbox` — that may expire),
//! and any the
//! embedding crate adds (the tenant steps).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use saga_core::{FailureKind, Outcome};
use serde_json::{json, Value};

use super::AttemptContext;

/// A boxed future returned by a builtin.
pub type BuiltinFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// A native step: rendered input in, outcome out.
pub type BuiltinFn = Arc<dyn Fn(Value, AttemptContext) -> BuiltinFuture + Send + Sync>;

/// Builtins by name.
#[derive(Clone, Default)]
pub struct BuiltinRegistry {
    steps: BTreeMap<String, BuiltinFn>,
}

/// The builtin that emits a custom event: `input: {type, data}`.
pub const EMIT: &str = "core.emit";

/// The longest type name `core.emit` accepts.
pub const EVENT_TYPE_MAX: usize = 100;

/// Why `event_type` cannot be a custom event's type, if it cannot: it contains a dot and does
/// not start with `tenant.` or `saga.` (those are Sagaplane's own), at most 100 characters of
/// `[a-z0-9_.-]`.
pub fn custom_event_type_error(event_type: &str) -> Option<String> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c);
    if event_type.len() > EVENT_TYPE_MAX || !event_type.chars().all(allowed) || !event_type.contains('.') {
        return Some(format!(
            "event type {event_type:?} must be at most {EVENT_TYPE_MAX} characters of a-z, 0-9, _ . - and contain a dot"
        ));
    }
    if event_type.starts_with("tenant.") || event_type.starts_with("saga.") || event_type.starts_with("subscription.") {
        return Some(format!("event type {event_type:?} is Sagaplane's own (tenant., saga., subscription.)"));
    }
    None
}

/// The longest `core.sleep` accepts.
pub const SLEEP_MAX_MS: u64 = 24 * 3600 * 1000;

impl BuiltinRegistry {
    /// The registry with the core steps.
    pub fn with_core() -> Self {
        let mut registry = BuiltinRegistry::default();
        registry.register("core.echo", Arc::new(|input, _| Box::pin(async move { Outcome::Succeeded(input) })));
        registry.register("core.fail", Arc::new(|input, _| Box::pin(async move { core_fail(&input) })));
        registry.register("core.sleep", Arc::new(|input, _| Box::pin(core_sleep(input))));
        registry.register(EMIT, Arc::new(|input, _| Box::pin(async move { core_emit(input) })));
        registry
    }

    pub fn register(&mut self, name: &str, step: BuiltinFn) {
        self.steps.insert(name.to_string(), step);
    }

    pub fn names(&self) -> Vec<&str> {
        self.steps.keys().map(String::as_str).collect()
    }

    pub async fn run(&self, name: &str, input: Value, ctx: &AttemptContext) -> Outcome {
        match self.steps.get(name) {
            Some(step) => step(input, ctx.clone()).await,
            None => Outcome::Failed { kind: FailureKind::NonRetryable, message: format!("unknown builtin {name:?}") },
        }
    }
}

fn core_fail(input: &Value) -> Outcome {
    let message = input.get("message").and_then(Value::as_str).unwrap_or("core.fail").to_string();
    Outcome::Failed { kind: FailureKind::NonRetryable, message }
}

/// Checks the event and hands it to the commit as the step's output.
fn core_emit(input: Value) -> Outcome {
    let event_type = input.get("type").and_then(Value::as_str).unwrap_or_default();
    if let Some(message) = custom_event_type_error(event_type) {
        return Outcome::Failed { kind: FailureKind::NonRetryable, message: format!("core.emit: {message}") };
    }
    let data = input.get("data").cloned().unwrap_or(Value::Null);
    let mut output = json!({"type": event_type, "data": data});
    // `expires_at` (RFC 3339): a delivery still pending then is dead instead of sent.
    match input.get("expires_at") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => match humantime::parse_rfc3339_weak(text) {
            Ok(at) => {
                let ms = at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
                output["expires_at_ms"] = json!(ms);
            }
            Err(e) => {
                let message = format!("core.emit: expires_at {text:?} is not an RFC 3339 time: {e}");
                return Outcome::Failed { kind: FailureKind::NonRetryable, message };
            }
        },
        Some(other) => {
            let message = format!("core.emit: expires_at must be an RFC 3339 time, not {other}");
            return Outcome::Failed { kind: FailureKind::NonRetryable, message };
        }
    }
    Outcome::Succeeded(output)
}

async fn core_sleep(input: Value) -> Outcome {
    let text = input.get("duration").and_then(Value::as_str).unwrap_or("1s");
    let ms = match saga_core::duration::parse_ms(text) {
        Ok(ms) if ms <= SLEEP_MAX_MS => ms,
        Ok(_) => {
            return Outcome::Failed {
                kind: FailureKind::NonRetryable,
                message: format!("core.sleep duration {text:?} is longer than 24h"),
            }
        }
        Err(e) => {
            return Outcome::Failed {
                kind: FailureKind::NonRetryable,
                message: format!("core.sleep: invalid duration {text:?}: {e}"),
            }
        }
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Outcome::Succeeded(json!({"slept": text}))
}
