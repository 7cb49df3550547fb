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

/// POSTs the delivery to `url`.
pub async fn webhook(
    client: &reqwest::Client,
    claimed: &ClaimedDelivery,
    url: &str,
    now_ms: i64,
    timeout: Duration,
) -> Attempted {
    let started = Instant::now();
    let body = body(claimed);
    let timestamp_s = now_ms.div_euclid(1000);
    let signature = match signatures(claimed, timestamp_s, &body, now_ms) {
        Ok(signature) => signature,
        Err(error) => return failed(None, error, None, started),
    };
    let request = client
        .post(url)
        .timeout(timeout)
        .header("content-type", "application/json")
        .header(standardwebhooks::HEADER_WEBHOOK_ID, claimed.delivery.event_id.to_string())
        .header(standardwebhooks::HEADER_WEBHOOK_TIMESTAMP, timestamp_s.to_string())
        .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
        .body(body);
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) if e.is_timeout() => {
            return failed(None, format!("no answer within {}ms", timeout.as_millis()), None, started)
        }
        Err(e) => {
            if let Some(denied) = egress::denied_in(&e) {
                let mut attempted = failed(None, denied.to_string(), None, started);
                attempted.definite = true;
                return attempted;
            }
            return failed(None, format!("request failed: {}", egress::client::describe(e)), None, started);
        }
    };
    let status = response.status().as_u16();
    if response.status().is_success() {
        return Attempted {
            delivered: true,
            definite: false,
            status_code: Some(status),
            error: None,
            retry_after_ms: None,
            duration_ms: elapsed_ms(started),
        };
    }
    let retry_after_ms = match status {
        429 | 503 => response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after_ms(v, now_ms)),
        _ => None,
    };
    // The first bytes only: a receiver that streams an endless body is never read further.
    let (text, _) = egress::read_prefix(response, ERROR_BODY_MAX_BYTES).await;
    let snippet = String::from_utf8_lossy(&text).into_owned();
    let error = if snippet.is_empty() {
        format!("receiver answered {status}")
    } else {
        format!("receiver answered {status}: {snippet}")
    };
    failed(Some(status), error, retry_after_ms, started)
}

pub fn failed(status_code: Option<u16>, error: String, retry_after_ms: Option<u64>, started: Instant) -> Attempted {
    Attempted {
        delivered: false,
        definite: false,
        status_code,
        error: Some(error),
        retry_after_ms,
        duration_ms: elapsed_ms(started),
    }
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
