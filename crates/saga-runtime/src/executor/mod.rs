//! Step executors: run one attempt of an action or compensation and classify the result into
//! [`Outcome`]: success, retryable (ambiguous) failure, or non-retryable (definite) failure.

pub mod breaker;
pub mod builtin;
pub mod grpc;
pub mod http;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use saga_core::template::{render_string, render_value, TemplateContext, TemplateError};
use saga_core::{Action, FailureKind, Outcome, Phase};
use serde_json::Value;
use uuid::Uuid;

use self::breaker::{Admission, BreakerConfig, Breakers};
use self::builtin::BuiltinRegistry;
use self::grpc::GrpcExecutor;
use self::http::HttpExecutor;
use egress::AddressPolicy;

/// What came of asking an executor to run one attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptResult {
    Finished(Outcome),
    /// An `async: true` participant answered 202: the step waits for its callback.
    Accepted,
    /// Not attempted: the endpoint's circuit is open. Try again after this long; the step's
    /// attempt was not spent.
    Deferred {
        endpoint: String,
        retry_after_ms: u64,
    },
}

/// Who is asking, for headers and logs.
#[derive(Clone, Debug)]
pub struct AttemptContext {
    pub saga_id: Uuid,
    pub tenant_id: Option<String>,
    pub step: String,
    pub phase: Phase,
    pub attempt: u32,
    pub timeout_ms: u64,
    /// `X-Saga-Callback-Url` for an async step's action.
    pub callback_url: Option<String>,
    /// W3C `traceparent` of this attempt's span, when traces are exported.
    pub traceparent: Option<String>,
    /// The sending driver's fencing token (`X-Saga-Fencing-Token`): it grows with every new
    /// driver of the saga, so a participant can tell a stale driver's late request.
    pub fencing_token: i64,
}

impl AttemptContext {
    /// `<saga_id>/<step>/action` or `/compensation`: stable across attempts (docs/definitions.md,
    /// "The participant contract (HTTP)").
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
    pub grpc: GrpcExecutor,
    pub breakers: Arc<Breakers>,
}

impl Executors {
    pub fn new(builtins: BuiltinRegistry) -> Self {
        Self::with_breakers(builtins, BreakerConfig::default())
    }

    pub fn with_breakers(builtins: BuiltinRegistry, breakers: BreakerConfig) -> Self {
        Executors {
            builtins,
            http: HttpExecutor::new(),
            grpc: GrpcExecutor::new(),
            breakers: Arc::new(Breakers::new(breakers)),
        }
    }

    /// Sends `http` steps' requests to `transport` instead of the network (the simulator's
    /// participants).
    pub fn with_http_transport(mut self, transport: Arc<dyn http::HttpTransport>) -> Self {
        self.http = HttpExecutor::with_transport(transport);
        self
    }

    /// Keeps `http` and `grpc` steps to the addresses `policy` allows (the operator's:
    /// everything but `SAGAPLANE_HTTP_DENY`); `env_proxy` lets `http` steps use the proxy the
    /// environment names (`SAGAPLANE_HTTP_ENV_PROXY`).
    pub fn with_egress(mut self, policy: AddressPolicy, env_proxy: bool) -> Self {
        self.http = HttpExecutor::with_egress(policy.clone(), env_proxy);
        self.grpc = GrpcExecutor::with_policy(policy);
        self
    }

    /// Renders the action's templates and runs one attempt under its timeout, unless the
    /// participant endpoint's circuit is open.
    pub async fn run(&self, action: &Action, templates: &TemplateContext, ctx: &AttemptContext) -> AttemptResult {
        // Rendering stays on this thread: templates run on fuel (saga_core::template), so even a
        // runaway one stops within milliseconds. (On the blocking pool every templated step paid
        // a thread hop: saga3 lost 14%.)
        let prepared = match prepare(action, templates, ctx) {
            Ok(prepared) => prepared,
            Err(outcome) => return AttemptResult::Finished(outcome),
        };
        let endpoint = prepared.endpoint();
        if let Some(endpoint) = &endpoint {
            if let Admission::Wait { retry_after_ms } = self.breakers.admit(endpoint, Instant::now()) {
                return AttemptResult::Deferred { endpoint: endpoint.clone(), retry_after_ms };
            }
        }
        let timeout = Duration::from_millis(ctx.timeout_ms);
        let attempt = async {
            match &prepared {
                Prepared::Builtin { name, input } => {
                    // A builtin is code in this process: its panic is a failed attempt (ambiguous,
                    // it may have acted), not the end of the driver.
                    let run = std::panic::AssertUnwindSafe(self.builtins.run(name, input.clone(), ctx));
                    match futures::FutureExt::catch_unwind(run).await {
                        Ok(outcome) => AttemptResult::Finished(outcome),
                        Err(payload) => AttemptResult::Finished(Outcome::Failed {
                            kind: FailureKind::Retryable,
                            message: format!("builtin {name} panicked: {}", panic_message(payload.as_ref())),
                        }),
                    }
                }
                Prepared::Http { method, url, headers, body, follow_redirects } => {
                    let request = http::HttpRequest {
                        method,
                        url,
                        headers,
                        body: body.as_ref(),
                        follow_redirects: *follow_redirects,
                    };
                    self.http.call(request, ctx).await
                }
                Prepared::Grpc { endpoint, service, input } => {
                    AttemptResult::Finished(self.grpc.call(endpoint, service, input, ctx).await)
                }
            }
        };
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => AttemptResult::Finished(Outcome::Failed {
                kind: FailureKind::Retryable,
                message: format!("attempt timed out after {}", saga_core::duration::format_ms(ctx.timeout_ms)),
            }),
        };
        if let Some(endpoint) = &endpoint {
            let healthy =
                !matches!(result, AttemptResult::Finished(Outcome::Failed { kind: FailureKind::Retryable, .. }));
            self.breakers.record(endpoint, ctx.saga_id, healthy, Instant::now());
        }
        // What a participant answered is stored as it is, except NUL (no store keeps it).
        match result {
            AttemptResult::Finished(outcome) => AttemptResult::Finished(outcome.sanitized()),
            other => other,
        }
    }
}

/// The text a panic was raised with.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(text), _) => text,
        (_, Some(text)) => text,
        _ => "a panic without a message",
    }
}

/// An action with its templates rendered.
enum Prepared {
    Builtin { name: String, input: Value },
    Http { method: String, url: String, headers: Vec<(String, String)>, body: Option<Value>, follow_redirects: bool },
    Grpc { endpoint: String, service: String, input: Value },
}

impl Prepared {
    /// The breaker key: `scheme://host:port` of an HTTP URL, or the gRPC endpoint.
    fn endpoint(&self) -> Option<String> {
        match self {
            Prepared::Builtin { .. } => None,
            Prepared::Http { url, .. } => {
                let url = reqwest::Url::parse(url).ok()?;
                Some(format!("{}://{}:{}", url.scheme(), url.host_str()?, url.port_or_known_default()?))
            }
            Prepared::Grpc { endpoint, .. } => Some(endpoint.clone()),
        }
    }
}

fn prepare(action: &Action, templates: &TemplateContext, ctx: &AttemptContext) -> Result<Prepared, Outcome> {
    let failed = |field: String| move |e| template_failure(ctx, action.kind(), &field, e);
    match action {
        Action::Builtin(builtin) => {
            let input = builtin
                .input
                .as_ref()
                .map(|i| render_value(i, templates))
                .transpose()
                .map_err(failed("input".into()))?;
            Ok(Prepared::Builtin { name: builtin.name.clone(), input: input.unwrap_or(Value::Null) })
        }
        Action::Http(http) => {
            let url = render_string(&http.url, templates).map_err(failed("url".into()))?;
            let mut headers = Vec::with_capacity(http.headers.len());
            for (name, value) in &http.headers {
                headers
                    .push((name.clone(), render_string(value, templates).map_err(failed(format!("headers.{name}")))?));
            }
            let body =
                http.body.as_ref().map(|b| render_value(b, templates)).transpose().map_err(failed("body".into()))?;
            Ok(Prepared::Http {
                method: http.method.clone(),
                url,
                headers,
                body,
                follow_redirects: http.follow_redirects,
            })
        }
        Action::Grpc(grpc) => {
            let endpoint = render_string(&grpc.endpoint, templates).map_err(failed("endpoint".into()))?;
            let input =
                grpc.input.as_ref().map(|i| render_value(i, templates)).transpose().map_err(failed("input".into()))?;
            Ok(Prepared::Grpc { endpoint, service: grpc.service.clone(), input: input.unwrap_or(Value::Null) })
        }
        // Signal, sleep and child saga steps are settled by the driver from the store and the
        // clock; they never reach an executor.
        Action::Signal(_) | Action::Sleep(_) | Action::Saga(_) | Action::Group(_) => Err(Outcome::Failed {
            kind: FailureKind::NonRetryable,
            message: format!("a {} step has no executor", action.kind()),
        }),
    }
}

/// A template that cannot render means nothing was sent: a definite failure. The message names
/// the step, the field, the template and the undefined name:
/// `template error in step charge, action http.url "{{ vars.PAYMENTS }}/charges": vars.PAYMENTS
/// is not set; start the server with SAGAPLANE_VAR_PAYMENTS`.
fn template_failure(ctx: &AttemptContext, kind: &str, field: &str, error: TemplateError) -> Outcome {
    let phase = match ctx.phase {
        Phase::Action => "action",
        Phase::Compensation => "compensation",
    };
    let field = format!("{kind}.{field}{}", error.path.replace('/', "."));
    let message = match &error.template {
        Some(template) => {
            format!("template error in step {}, {phase} {field} {template:?}: {}", ctx.step, error.message)
        }
        None => format!("template error in step {}, {phase} {field}: {}", ctx.step, error.message),
    };
    Outcome::Failed { kind: FailureKind::NonRetryable, message }
}
