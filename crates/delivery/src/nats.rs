//! One NATS JetStream attempt: the same `{type, timestamp, data}` body as a webhook, published
//! to the subscription's subject with `Nats-Msg-Id` = the event id (JetStream drops a second
//! copy within the stream's duplicate window, so a redelivery after a lost ack is stored once)
//! and the Standard Webhooks headers, signed as for a webhook. It succeeds on the stream's ack;
//! no stream on the subject, no ack within the timeout, or no connection is a failed attempt.
//!
//! Connections are kept per server URL (at most [`NATS_CONNECTIONS_MAX`]) and reconnect on their
//! own; with `SAGAPLANE_HTTP_DENY` set, the server's host is resolved and checked before every
//! publish, as for gRPC steps.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use saga_runtime::executor::deny::AddressDenyList;
use saga_store::ClaimedDelivery;
use tokio::sync::Mutex;

use crate::send::{self, Attempted};

/// NATS servers connected to at once; one more drops a connection (made again when needed).
pub const NATS_CONNECTIONS_MAX: usize = 64;

/// The connections to the NATS servers of the subscriptions.
#[derive(Default)]
pub struct NatsConnections {
    clients: Mutex<HashMap<String, async_nats::Client>>,
}

impl NatsConnections {
    /// The connection to `url`, made if there is none.
    async fn client(&self, url: &str, timeout: Duration) -> Result<async_nats::Client, String> {
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(url) {
            return Ok(client.clone());
        }
        let client = async_nats::ConnectOptions::new()
            .name(concat!("sagaplane/", env!("CARGO_PKG_VERSION")))
            .connection_timeout(timeout)
            .connect(url)
            .await
            .map_err(|e| format!("connecting to {url} failed: {e}"))?;
        if clients.len() >= NATS_CONNECTIONS_MAX {
            clients.clear();
        }
        clients.insert(url.to_string(), client.clone());
        Ok(client)
    }
}

/// Publishes the delivery to `subject` on the server at `url` and waits for the stream's ack.
pub async fn publish(
    connections: &NatsConnections,
    deny: &AddressDenyList,
    claimed: &ClaimedDelivery,
    (url, subject): (&str, &str),
    now_ms: i64,
    timeout: Duration,
) -> Attempted {
    let started = Instant::now();
    if let Err(denied) = check_denied(deny, url).await {
        let mut attempted = send::failed(None, denied, None, started);
        attempted.definite = true;
        return attempted;
    }
    let body = send::body(claimed);
    let timestamp_s = now_ms.div_euclid(1000);
    let signature = match send::signatures(claimed, timestamp_s, &body, now_ms) {
        Ok(signature) => signature,
        Err(error) => return send::failed(None, error, None, started),
    };
    let event_id = claimed.delivery.event_id.to_string();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, event_id.as_str());
    headers.insert("content-type", "application/json");
    headers.insert(standardwebhooks::HEADER_WEBHOOK_ID, event_id.as_str());
    headers.insert(standardwebhooks::HEADER_WEBHOOK_TIMESTAMP, timestamp_s.to_string().as_str());
    headers.insert(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature.as_str());
    let attempt = async {
        let client = connections.client(url, timeout).await?;
        let mut jetstream = async_nats::jetstream::new(client);
        jetstream.set_timeout(timeout);
        let ack = jetstream
            .publish_with_headers(subject.to_string(), headers, body.into())
            .await
            .map_err(|e| format!("publishing to {subject:?} failed: {e}"))?;
        ack.await.map_err(|e| format!("no JetStream ack for {subject:?}: {e}"))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(_ack)) => Attempted {
            delivered: true,
            definite: false,
            status_code: None,
            error: None,
            retry_after_ms: None,
            duration_ms: send::elapsed_ms(started),
        },
        Ok(Err(error)) => send::failed(None, error, None, started),
        Err(_) => send::failed(None, format!("no JetStream ack within {}ms", timeout.as_millis()), None, started),
    }
}

/// With a deny-list, the server's host must resolve to an address it allows.
async fn check_denied(deny: &AddressDenyList, url: &str) -> Result<(), String> {
    if deny.is_empty() {
        return Ok(());
    }
    let (host, port) = host_and_port(url).ok_or_else(|| format!("{url:?} is not a NATS server URL"))?;
    match deny.resolve(&host, port).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(e.to_string()),
        // Resolution failing is the connection's to report.
        Err(_) => Ok(()),
    }
}

/// `nats://host:port` (or `tls://`); the port defaults to 4222.
pub fn host_and_port(url: &str) -> Option<(String, u16)> {
    let parsed = reqwest::Url::parse(url).ok()?;
    if !matches!(parsed.scheme(), "nats" | "tls") {
        return None;
    }
    let host = parsed.host_str()?.to_string();
    Some((host, parsed.port().unwrap_or(4222)))
}

#[cfg(test)]
mod tests {
    use super::host_and_port;

    #[test]
    fn server_urls_name_a_host_and_port() {
        assert_eq!(host_and_port("nats://127.0.0.1:4333"), Some(("127.0.0.1".into(), 4333)));
        assert_eq!(host_and_port("tls://nats.example.com"), Some(("nats.example.com".into(), 4222)));
        assert_eq!(host_and_port("http://127.0.0.1:4222"), None);
        assert_eq!(host_and_port("127.0.0.1:4222"), None);
        assert_eq!(host_and_port("nats://"), None);
    }
}
