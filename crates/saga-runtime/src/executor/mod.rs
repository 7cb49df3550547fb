//! Step executors: run one attempt of an action or compensation and classify the result into
//! [`Outcome`]: success, retryable (ambiguous) failure, or non-retryable (definite) failure.

pub mod builtin;
pub mod http;

use std::time::Duration;

use saga_core::template::{render_string, render_value, TemplateContext};
use saga_core::{Action, FailureKind, Outcome, Phase};
use serde_json::Value;
use uuid::Uuid;

use self::builtin::BuiltinRegistry;
use self::http::HttpExecutor;

/// Who is asking, for headers and logs.
#[derive(Clone, Debug)]
pub struct AttemptContext {
    pub saga_id: Uuid,
    pub tenant_id: Option<String>,
    pub step: String,
    pub phase: Phase,
    pub attempt: u32,
    pub timeout_ms: u64,
}

impl AttemptContext {
    /// `<saga_id>/<step>/action` or `/compensation`: stable across attempts (API.md §4).
    pub fn idempotency_key(&self) -> String {
        let phase = match self.phase {
            Phase::Action => "action",
            Phase::Compensation => "compensation",
        };
        format!("{}/{}/{}", self.saga_id, self.step, phase)
    }
}

/// All executors of an instance.
#[derive(Clone)]
pub struct Executors {
    pub builtins: BuiltinRegistry,
    pub http: HttpExecutor,
}

impl Executors {
    pub fn new(builtins: BuiltinRegistry) -> Self {
        Executors { builtins, http: HttpExecutor::new() }
    }

    /// Renders the action's templates and runs one attempt under its timeout.
    pub async fn run(&self, action: &Action, templates: &TemplateContext, ctx: &AttemptContext) -> Outcome {
        let timeout = Duration::from_millis(ctx.timeout_ms);
        let attempt = async {
            match action {
                Action::Builtin(builtin) => {
                    let input = match builtin.input.as_ref().map(|i| render_value(i, templates)).transpose() {
                        Ok(input) => input.unwrap_or(Value::Null),
                        Err(e) => return template_failure(e),
                    };
                    self.builtins.run(&builtin.name, input, ctx).await
                }
                Action::Http(http) => {
                    let url = match render_string(&http.url, templates) {
                        Ok(url) => url,
                        Err(e) => return template_failure(e),
                    };
                    let mut headers = Vec::with_capacity(http.headers.len());
                    for (name, value) in &http.headers {
                        match render_string(value, templates) {
                            Ok(v) => headers.push((name.clone(), v)),
                            Err(e) => return template_failure(e),
                        }
                    }
                    let body = match http.body.as_ref().map(|b| render_value(b, templates)).transpose() {
                        Ok(body) => body,
                        Err(e) => return template_failure(e),
                    };
                    self.http.call(&http.method, &url, &headers, body.as_ref(), ctx).await
                }
                Action::Grpc(_) | Action::Signal(_) => Outcome::Failed {
                    kind: FailureKind::NonRetryable,
                    message: format!("{} actions are not supported by this build", action.kind()),
                },
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Failed {
                kind: FailureKind::Retryable,
                message: format!("attempt timed out after {}", saga_core::duration::format_ms(ctx.timeout_ms)),
            },
        }
    }
}

/// A template that cannot render means nothing was sent: a definite failure.
fn template_failure(error: saga_core::template::TemplateError) -> Outcome {
    Outcome::Failed { kind: FailureKind::NonRetryable, message: format!("template error: {error}") }
}
