//! Native steps registered by name: `core.echo`, `core.fail`, `core.sleep`, and any the
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

/// The longest `core.sleep` accepts.
pub const SLEEP_MAX_MS: u64 = 24 * 3600 * 1000;

impl BuiltinRegistry {
    /// The registry with the core steps.
    pub fn with_core() -> Self {
        let mut registry = BuiltinRegistry::default();
        registry.register("core.echo", Arc::new(|input, _| Box::pin(async move { Outcome::Succeeded(input) })));
        registry.register("core.fail", Arc::new(|input, _| Box::pin(async move { core_fail(&input) })));
        registry.register("core.sleep", Arc::new(|input, _| Box::pin(core_sleep(input))));
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
