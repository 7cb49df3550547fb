//! The `http` executor (the participant contract in docs/definitions.md): shared clients
//! (connection reuse), the idempotency key and saga headers, a W3C `traceparent`, and the
//! status-code table. Redirects are not followed unless the step says `follow_redirects: true`,
//! and then only to the same origin — the request carries the step's headers and, for async
//! steps, the callback capability, which must not reach another host. An answer is read as a
//! stream and refused past [`RESPONSE_BODY_MAX_BYTES`] ([`egress::read_capped`]), so a
//! participant cannot exhaust memory. Every connection's address is checked against the
//! operator's policy first ([`egress::AddressPolicy`], `SAGAPLANE_HTTP_DENY`); a refused one
//! fails the attempt definitely, nothing sent. No proxy from the environment is used unless
//! `SAGAPLANE_HTTP_ENV_PROXY` says so.
//!
//! The requests go over the network unless the executor is given an [`HttpTransport`]: the
//! simulator's participants live in its own process and answer through one, so a simulated run
//! goes through the same status table, async acceptance and timeouts as a real one.

use std::sync::Arc;

use async_trait::async_trait;
use saga_core::{FailureKind, Outcome, Phase};
use serde_json::Value;

use super::{AttemptContext, AttemptResult};
use egress::{denied_in, AddressPolicy, BodyError, ClientSettings};

/// The most response body kept as step output.
pub const RESPONSE_BODY_MAX_BYTES: usize = 1024 * 1024;

/// Redirects followed at most, within one origin.
pub const REDIRECTS_MAX: usize = 5;

/// Sends participant requests.
#[derive(Clone)]
pub struct HttpExecutor {
    /// Follows no redirect.
    client: reqwest::Client,
    /// Follows redirects within the request's origin, for steps that ask for it.
    same_origin: reqwest::Client,
    policy: AddressPolicy,
    /// Where requests go instead of the network, when set.
    transport: Option<Arc<dyn HttpTransport>>,
}

/// Delivers one rendered attempt and returns the participant's status and body; an `Err` is a
/// connection that failed (no answer: retryable, ambiguous). Implemented by the simulator.
#[async_trait]
pub trait HttpTransport: Send + Sync + 'static {
    async fn send(&self, request: &HttpRequest<'_>, ctx: &AttemptContext) -> Result<(u16, Vec<u8>), String>;
}

impl Default for HttpExecutor {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpExecutor {
    pub fn new() -> Self {
        Self::with_egress(AddressPolicy::default(), false)
    }

    /// Clients that connect only where `policy` allows, through the environment's proxy only
    /// if `env_proxy`.
    pub fn with_egress(policy: AddressPolicy, env_proxy: bool) -> Self {
        let build = |redirect: reqwest::redirect::Policy| {
            let mut settings = ClientSettings::new(policy.clone());
            settings.env_proxy = env_proxy;
            settings.redirect = redirect;
            settings.pool_max_idle_per_host = 64;
            egress::http_client(settings).unwrap_or_else(|_| reqwest::Client::new())
        };
        let same_origin = reqwest::redirect::Policy::custom(|attempt| {
            let origin = |url: &reqwest::Url| {
                (url.scheme().to_string(), url.host_str().map(str::to_string), url.port_or_known_default())
            };
            let first = attempt.previous().first().map(origin);
            if attempt.previous().len() > REDIRECTS_MAX || first != Some(origin(attempt.url())) {
                attempt.stop()
            } else {
                attempt.follow()
            }
        });
        HttpExecutor {
            client: build(reqwest::redirect::Policy::none()),
            same_origin: build(same_origin),
            policy,
            transport: None,
        }
    }

    /// An executor whose requests go to `transport` instead of the network.
    pub fn with_transport(transport: Arc<dyn HttpTransport>) -> Self {
        HttpExecutor { transport: Some(transport), ..Self::new() }
    }

    pub async fn call(&self, request: HttpRequest<'_>, ctx: &AttemptContext) -> AttemptResult {
        let answer = match &self.transport {
            Some(transport) => {
                transport.send(&request, ctx).await.map_err(|e| retryable(format!("request failed: {e}")))
            }
            None => self.send(request, ctx).await,
        };
        let (status, bytes) = match answer {
            Ok(answer) => answer,
            Err(outcome) => return AttemptResult::Finished(outcome),
        };
        if status == 202 && ctx.callback_url.is_some() {
            return AttemptResult::Accepted;
        }
        AttemptResult::Finished(classify(status, &bytes, ctx.phase))
    }

    /// Sends the attempt over the network: the answer's status and body, or the failed attempt.
    async fn send(&self, request: HttpRequest<'_>, ctx: &AttemptContext) -> Result<(u16, Vec<u8>), Outcome> {
        let HttpRequest { method, url, headers, body, follow_redirects } = request;
        let client = if follow_redirects { &self.same_origin } else { &self.client };
        let method = match reqwest::Method::from_bytes(method.as_bytes()) {
            Ok(m) => m,
            Err(_) => return Err(definite(format!("invalid method {method:?}"))),
        };
        // A literal address never reaches the resolver; a redirect stays on this origin.
        if let Some(denied) = self.policy.denied_url(url) {
            return Err(definite(denied));
        }
        let mut request = client
            .request(method, url)
            .timeout(std::time::Duration::from_millis(ctx.timeout_ms))
            .header("Idempotency-Key", ctx.idempotency_key())
            .header("X-Saga-Id", ctx.saga_id.to_string())
            .header("X-Saga-Step", &ctx.step)
            .header("X-Saga-Attempt", ctx.attempt.to_string())
            .header("X-Saga-Fencing-Token", ctx.fencing_token.to_string())
            .header("traceparent", traceparent(ctx));
        if let Some(callback_url) = &ctx.callback_url {
            request = request.header("X-Saga-Callback-Url", callback_url);
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_builder() => {
                return Err(definite(format!("invalid request: {}", egress::client::describe(e))))
            }
            Err(e) if denied_in(&e).is_some() => {
                return Err(definite(denied_in(&e).map(ToString::to_string).unwrap_or_default()));
            }
            Err(e) => return Err(retryable(format!("request failed: {}", egress::client::describe(e)))),
        };
        let status = response.status().as_u16();
        Ok((status, read_capped(response).await?))
    }
}

/// One HTTP attempt, rendered.
pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    pub body: Option<&'a Value>,
    pub follow_redirects: bool,
}

/// The answer's body, up to [`RESPONSE_BODY_MAX_BYTES`]; a longer one is a failed attempt
/// (ambiguous: the participant may have acted) without reading the rest.
async fn read_capped(response: reqwest::Response) -> Result<Vec<u8>, Outcome> {
    egress::read_capped(response, RESPONSE_BODY_MAX_BYTES).await.map_err(|e| match e {
        BodyError::TooLarge { max } => {
            retryable(format!("the participant's answer is larger than {max} bytes; it was not read"))
        }
        BodyError::Read(cause) => retryable(format!("reading response failed: {cause}")),
    })
}

/// Trace id from the saga id (one trace per saga), a fresh-enough span id per attempt.
/// The attempt span's context when traces are exported; otherwise one derived from the saga
/// (trace id = saga id, as exported traces have it) and the attempt.
pub(crate) fn traceparent(ctx: &AttemptContext) -> String {
    if let Some(exported) = &ctx.traceparent {
        return exported.clone();
    }
    let span = (u64::from(ctx.attempt) << 32) ^ (ctx.saga_id.as_u128() as u64) ^ step_hash(&ctx.step);
    format!("00-{}-{:016x}-01", ctx.saga_id.simple(), span.max(1))
}

fn step_hash(step: &str) -> u64 {
    step.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

fn definite(message: String) -> Outcome {
    Outcome::Failed { kind: FailureKind::NonRetryable, message }
}

fn retryable(message: String) -> Outcome {
    Outcome::Failed { kind: FailureKind::Retryable, message }
}

fn body_value(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    let bytes = &bytes[..bytes.len().min(RESPONSE_BODY_MAX_BYTES)];
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// The status-code table of docs/definitions.md, "The participant contract (HTTP)".
pub fn classify(status: u16, body: &[u8], phase: Phase) -> Outcome {
    match (status, phase) {
        (200..=299, _) => Outcome::Succeeded(body_value(body)),
        (404, Phase::Compensation) => Outcome::Succeeded(Value::Null),
        (404, Phase::Action) => definite(format!("participant answered 404{}", snippet(body))),
        (408 | 425 | 429 | 500..=599, _) => retryable(format!("participant answered {status}{}", snippet(body))),
        (400..=499, _) => definite(format!("participant answered {status}{}", snippet(body))),
        (300..=399, _) => definite(format!(
            "participant answered {status}, a redirect this step does not follow (only `follow_redirects: true` \
             follows, within the same origin){}",
            snippet(body)
        )),
        _ => retryable(format!("participant answered unexpected {status}{}", snippet(body))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(outcome: &Outcome) -> &'static str {
        match outcome {
            Outcome::Succeeded(_) => "ok",
            Outcome::Failed { kind: FailureKind::Retryable, .. } => "retry",
            Outcome::Failed { .. } => "definite",
        }
    }

    #[test]
    fn status_table() {
        let cases = [
            (200, Phase::Action, "ok"),
            (201, Phase::Compensation, "ok"),
            (404, Phase::Action, "definite"),
            (404, Phase::Compensation, "ok"),
            (408, Phase::Action, "retry"),
            (425, Phase::Action, "retry"),
            (429, Phase::Compensation, "retry"),
            (503, Phase::Action, "retry"),
            (400, Phase::Action, "definite"),
            (409, Phase::Compensation, "definite"),
            (302, Phase::Action, "definite"),
        ];
        for (status, phase, expected) in cases {
            assert_eq!(kind(&classify(status, b"", phase)), expected, "{status} {phase:?}");
        }
    }

    #[test]
    fn body_becomes_output() {
        assert_eq!(
            classify(200, br#"{"id":"o-1"}"#, Phase::Action),
            Outcome::Succeeded(serde_json::json!({"id": "o-1"}))
        );
        assert_eq!(classify(204, b"", Phase::Action), Outcome::Succeeded(Value::Null));
    }
}
