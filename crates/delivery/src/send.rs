//! One webhook attempt: the event as `{type, timestamp, data}`, Standard Webhooks headers
//! (`webhook-id` = the event id, so a receiver can de-duplicate across retries and replays), a
//! signature by the current secret and — during a rotation's overlap — by the previous one too.
//! 2xx is success; anything else, or no answer within the timeout, is a failed attempt, and a
//! 429/503 `Retry-After` says how long to wait at least.

use std::time::{Duration, Instant};

use saga_store::ClaimedDelivery;
use serde_json::json;

/// The most of a failed answer's body kept as its error.
pub const ERROR_BODY_MAX_BYTES: usize = 200;

/// What came of an attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempted {
    pub delivered: bool,
    /// A failure retrying cannot fix (the address is denied): the delivery is dead at once.
    pub definite: bool,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub retry_after_ms: Option<u64>,
    pub duration_ms: i64,
}

/// The request body of a delivery.
pub fn body(claimed: &ClaimedDelivery) -> Vec<u8> {
    let timestamp = chrono::DateTime::from_timestamp_millis(claimed.event_at_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    json!({"type": claimed.delivery.event_type, "timestamp": timestamp, "data": claimed.event_data})
        .to_string()
        .into_bytes()
}

/// `v1,<sig>` by every secret that signs at `now_ms`, space-separated.
pub fn signatures(claimed: &ClaimedDelivery, timestamp_s: i64, body: &[u8], now_ms: i64) -> Result<String, String> {
    let subscription = &claimed.subscription;
    let mut secrets = vec![subscription.secret.as_str()];
    if let (Some(previous), Some(until)) = (&subscription.previous_secret, subscription.previous_secret_until_ms) {
        if until > now_ms {
            secrets.push(previous);
        }
    }
    let id = claimed.delivery.event_id.to_string();
    let mut signed = Vec::with_capacity(secrets.len());
    for secret in secrets {
        let webhook = standardwebhooks::Webhook::new(secret).map_err(|e| format!("subscription secret: {e}"))?;
        signed.push(webhook.sign(&id, timestamp_s, body).map_err(|e| format!("signing: {e}"))?);
    }
    Ok(signed.join(" "))
}

/// A delivery as it goes out: where, the Standard Webhooks headers and the body.
#[derive(Clone, Debug)]
pub struct WebhookRequest {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl WebhookRequest {
    /// The delivery signed at `now_ms` for `url`.
    pub fn signed(claimed: &ClaimedDelivery, url: &str, now_ms: i64) -> Result<Self, String> {
        let body = body(claimed);
        let timestamp_s = now_ms.div_euclid(1000);
        let signature = signatures(claimed, timestamp_s, &body, now_ms)?;
        let headers = vec![
            ("content-type", "application/json".to_string()),
            (standardwebhooks::HEADER_WEBHOOK_ID, claimed.delivery.event_id.to_string()),
            (standardwebhooks::HEADER_WEBHOOK_TIMESTAMP, timestamp_s.to_string()),
            (standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature),
        ];
        Ok(WebhookRequest { url: url.to_string(), headers, body })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What a receiver answered: its status, its `Retry-After`, the first bytes of its body.
#[derive(Clone, Debug, Default)]
pub struct WebhookAnswer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

/// Carries deliveries somewhere other than the network: the simulation's receivers. `Err` is a
/// connection that failed; the dispatcher applies the attempt timeout around it, on its clock.
#[async_trait::async_trait]
pub trait WebhookTransport: Send + Sync + 'static {
    async fn post(&self, request: &WebhookRequest) -> Result<WebhookAnswer, String>;
}

/// POSTs the delivery to `url`.
pub async fn webhook(
    client: &reqwest::Client,
    claimed: &ClaimedDelivery,
    url: &str,
    now_ms: i64,
    timeout: Duration,
) -> Attempted {
    let started = Instant::now();
    let signed = match WebhookRequest::signed(claimed, url, now_ms) {
        Ok(signed) => signed,
        Err(error) => return failed(None, error, None, elapsed_ms(started)),
    };
    let mut request = client.post(url).timeout(timeout);
    for (name, value) in &signed.headers {
        request = request.header(*name, value);
    }
    let response = match request.body(signed.body).send().await {
        Ok(response) => response,
        Err(e) if e.is_timeout() => {
            return failed(None, no_answer(timeout), None, elapsed_ms(started));
        }
        Err(e) => {
            if let Some(denied) = egress::denied_in(&e) {
                let mut attempted = failed(None, denied.to_string(), None, elapsed_ms(started));
                attempted.definite = true;
                return attempted;
            }
            let error = format!("request failed: {}", egress::client::describe(e));
            return failed(None, error, None, elapsed_ms(started));
        }
    };
    let status = response.status().as_u16();
    let retry_after = response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok());
    let retry_after = retry_after.map(str::to_string);
    // The first bytes only: a receiver that streams an endless body is never read further.
    let body = if response.status().is_success() {
        Vec::new()
    } else {
        egress::read_prefix(response, ERROR_BODY_MAX_BYTES).await.0
    };
    answered(&WebhookAnswer { status, retry_after, body }, now_ms, elapsed_ms(started))
}

/// Sends the delivery through `transport` within `timeout`, timed on `clock`.
pub async fn through(
    transport: &dyn WebhookTransport,
    claimed: &ClaimedDelivery,
    url: &str,
    clock: &dyn saga_runtime::Clock,
    timeout: Duration,
) -> Attempted {
    let now_ms = clock.now_ms();
    let took = || clock.now_ms().saturating_sub(now_ms);
    let request = match WebhookRequest::signed(claimed, url, now_ms) {
        Ok(request) => request,
        Err(error) => return failed(None, error, None, took()),
    };
    match tokio::time::timeout(timeout, transport.post(&request)).await {
        Ok(Ok(answer)) => answered(&answer, now_ms, took()),
        Ok(Err(error)) => failed(None, format!("request failed: {error}"), None, took()),
        Err(_) => failed(None, no_answer(timeout), None, took()),
    }
}

fn no_answer(timeout: Duration) -> String {
    format!("no answer within {}ms", timeout.as_millis())
}

/// What an answer means: 2xx delivered; anything else failed, with the wait a 429/503 asks for.
pub fn answered(answer: &WebhookAnswer, now_ms: i64, duration_ms: i64) -> Attempted {
    let status = answer.status;
    if (200..300).contains(&status) {
        return Attempted {
            delivered: true,
            definite: false,
            status_code: Some(status),
            error: None,
            retry_after_ms: None,
            duration_ms,
        };
    }
    let retry_after_ms = match status {
        429 | 503 => answer.retry_after.as_deref().and_then(|v| retry_after_ms(v, now_ms)),
        _ => None,
    };
    let prefix = &answer.body[..answer.body.len().min(ERROR_BODY_MAX_BYTES)];
    let snippet = String::from_utf8_lossy(prefix);
    let error = if snippet.is_empty() {
        format!("receiver answered {status}")
    } else {
        format!("receiver answered {status}: {snippet}")
    };
    failed(Some(status), error, retry_after_ms, duration_ms)
}

pub fn failed(status_code: Option<u16>, error: String, retry_after_ms: Option<u64>, duration_ms: i64) -> Attempted {
    Attempted { delivered: false, definite: false, status_code, error: Some(error), retry_after_ms, duration_ms }
}

pub fn elapsed_ms(started: Instant) -> i64 {
    i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX)
}

/// `Retry-After` as seconds or an HTTP date, in milliseconds from `now_ms`.
pub fn retry_after_ms(value: &str, now_ms: i64) -> Option<u64> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(seconds.saturating_mul(1000));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    u64::try_from(at.timestamp_millis() - now_ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after_ms("120", 0), Some(120_000));
        assert_eq!(retry_after_ms("Thu, 01 Jan 1970 00:00:10 GMT", 4_000), Some(6_000));
        assert_eq!(retry_after_ms("Thu, 01 Jan 1970 00:00:01 GMT", 4_000), None, "in the past");
        assert_eq!(retry_after_ms("soon", 0), None);
    }
}
