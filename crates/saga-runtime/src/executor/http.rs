//! The `http` executor (API.md §4): one shared client (connection reuse), the idempotency key
//! and saga headers, a W3C `traceparent`, and the status-code table.

use saga_core::{FailureKind, Outcome, Phase};
use serde_json::Value;

use super::{AttemptContext, AttemptResult};

/// The most response body kept as step output.
pub const RESPONSE_BODY_MAX_BYTES: usize = 1024 * 1024;

/// Sends participant requests.
#[derive(Clone)]
pub struct HttpExecutor {
    client: reqwest::Client,
}

impl Default for HttpExecutor {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpExecutor {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .user_agent(concat!("sagaplane/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        HttpExecutor { client }
    }

    pub async fn call(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Option<&Value>,
        ctx: &AttemptContext,
    ) -> AttemptResult {
        let method = match reqwest::Method::from_bytes(method.as_bytes()) {
            Ok(m) => m,
            Err(_) => return AttemptResult::Finished(definite(format!("invalid method {method:?}"))),
        };
        let mut request = self
            .client
            .request(method, url)
            .timeout(std::time::Duration::from_millis(ctx.timeout_ms))
            .header("Idempotency-Key", ctx.idempotency_key())
            .header("X-Saga-Id", ctx.saga_id.to_string())
            .header("X-Saga-Step", &ctx.step)
            .header("X-Saga-Attempt", ctx.attempt.to_string())
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
            Err(e) if e.is_builder() => return AttemptResult::Finished(definite(format!("invalid request: {e}"))),
            Err(e) => return AttemptResult::Finished(retryable(format!("request failed: {}", error_chain(&e)))),
        };
        let status = response.status();
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return AttemptResult::Finished(retryable(format!("reading response failed: {}", error_chain(&e))))
            }
        };
        if status.as_u16() == 202 && ctx.callback_url.is_some() {
            return AttemptResult::Accepted;
        }
        AttemptResult::Finished(classify(status.as_u16(), &bytes, ctx.phase))
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Trace id from the saga id (one trace per saga), a fresh-enough span id per attempt.
pub(crate) fn traceparent(ctx: &AttemptContext) -> String {
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

/// The status-code table of API.md §4.
pub fn classify(status: u16, body: &[u8], phase: Phase) -> Outcome {
    match (status, phase) {
        (200..=299, _) => Outcome::Succeeded(body_value(body)),
        (404, Phase::Compensation) => Outcome::Succeeded(Value::Null),
        (404, Phase::Action) => definite(format!("participant answered 404{}", snippet(body))),
        (408 | 425 | 429 | 500..=599, _) => retryable(format!("participant answered {status}{}", snippet(body))),
        (400..=499, _) => definite(format!("participant answered {status}{}", snippet(body))),
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
            (302, Phase::Action, "retry"),
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
