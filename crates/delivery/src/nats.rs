//! One NATS JetStream attempt: the same `{type, timestamp, data}` body as a webhook, published
//! to the subscription's subject with `Nats-Msg-Id` = the event id (JetStream drops a second
//! copy within the stream's duplicate window, so a redelivery after a lost ack is stored once)
//! and the Standard Webhooks headers, signed as for a webhook. It succeeds on the stream's ack;
//! no stream on the subject, no ack within the timeout, or no connection is a failed attempt.
//!
//! Connections are kept per server (at most [`NATS_CONNECTIONS_MAX`]) and reconnect on their
//! own. Before every publish the server's host is resolved and checked against the
//! subscription's address policy (a tenant's may reach no internal address); a `nats://` server
//! is then connected to at the checked address itself, so a name re-pointed afterwards reaches
//! nothing new, and the servers a NATS server advertises (`connect_urls`) are never used. A
//! `tls://` server keeps its name, which its certificate must match: a name re-pointed at an
//! internal service fails the TLS handshake. Connecting happens outside the cache's lock, with
//! the attempt's timeout, so one slow server holds up only its own deliveries.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use egress::AddressPolicy;
use saga_store::ClaimedDelivery;
use tokio::sync::Mutex;

use crate::send::{self, Attempted};

/// The subject prefix of a tenant's own NATS subscriptions unless `SAGAPLANE_NATS_TENANT_PREFIX`
/// says otherwise; `{tenant_id}` is replaced by the tenant's id.
pub const TENANT_PREFIX_DEFAULT: &str = "tenants.{tenant_id}.";

/// Why a subscription may not publish to `subject`, if it may not: no subject of the NATS
/// system's own (`$JS.API.>`, `$SYS.>`, … — e.g. deleting a stream) for anyone, and a tenant's
/// own subscription only under its prefix (`prefix_template` with its id), so that no tenant
/// publishes into another's subjects or the operator's.
pub fn subject_refusal(subject: &str, tenant: Option<&str>, prefix_template: &str) -> Option<String> {
    if subject.starts_with('$') {
        return Some(format!("{subject:?} is a subject of the NATS system itself; events may not go there"));
    }
    let tenant = tenant?;
    let prefix = prefix_template.replace("{tenant_id}", tenant);
    (!subject.starts_with(&prefix) || subject.len() == prefix.len()).then(|| {
        format!("a tenant's subscription publishes under {prefix:?} only (SAGAPLANE_NATS_TENANT_PREFIX), e.g. {prefix}events")
    })
}

/// NATS servers connected to at once; one more drops a connection (made again when needed).
pub const NATS_CONNECTIONS_MAX: usize = 64;

/// The connections to the NATS servers of the subscriptions.
#[derive(Default)]
pub struct NatsConnections {
    clients: Mutex<HashMap<String, async_nats::Client>>,
}

impl NatsConnections {
    /// The connection to `url` (the server as it is connected to), made if there is none.
    async fn client(&self, url: &str, timeout: Duration) -> Result<async_nats::Client, String> {
        if let Some(client) = self.clients.lock().await.get(url) {
            return Ok(client.clone());
        }
        let connecting = async_nats::ConnectOptions::new()
            .name(concat!("sagaplane/", env!("CARGO_PKG_VERSION")))
            .connection_timeout(timeout)
            .ignore_discovered_servers()
            .connect(url);
        let client = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| {
                format!("connecting to {} took longer than {}ms", egress::redact_url(url), timeout.as_millis())
            })?
            .map_err(|e| format!("connecting to {} failed: {e}", egress::redact_url(url)))?;
        let mut clients = self.clients.lock().await;
        if let Some(raced) = clients.get(url) {
            // Another attempt connected meanwhile: keep one connection per server.
            return Ok(raced.clone());
        }
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
    policy: &AddressPolicy,
    claimed: &ClaimedDelivery,
    (url, subject): (&str, &str),
    now_ms: i64,
    timeout: Duration,
) -> Attempted {
    let started = Instant::now();
    let server = match checked_server(policy, url).await {
        Ok(server) => server,
        Err(Refused::Denied(denied)) => {
            let mut attempted = send::failed(None, denied, None, send::elapsed_ms(started));
            attempted.definite = true;
            return attempted;
        }
        Err(Refused::Unresolved(error)) => return send::failed(None, error, None, send::elapsed_ms(started)),
    };
    let body = send::body(claimed);
    let timestamp_s = now_ms.div_euclid(1000);
    let signature = match send::signatures(claimed, timestamp_s, &body, now_ms) {
        Ok(signature) => signature,
        Err(error) => return send::failed(None, error, None, send::elapsed_ms(started)),
    };
    let event_id = claimed.delivery.event_id.to_string();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, event_id.as_str());
    headers.insert("content-type", "application/json");
    headers.insert(standardwebhooks::HEADER_WEBHOOK_ID, event_id.as_str());
    headers.insert(standardwebhooks::HEADER_WEBHOOK_TIMESTAMP, timestamp_s.to_string().as_str());
    headers.insert(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature.as_str());
    let attempt = async {
        let client = connections.client(&server, timeout).await?;
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
        Ok(Err(error)) => send::failed(None, error, None, send::elapsed_ms(started)),
        Err(_) => send::failed(
            None,
            format!("no JetStream ack within {}ms", timeout.as_millis()),
            None,
            send::elapsed_ms(started),
        ),
    }
}

/// Why a server was not connected to.
enum Refused {
    /// The policy refuses every address of its host: nothing was sent, retrying cannot help.
    Denied(String),
    /// Its host did not resolve: maybe later.
    Unresolved(String),
}

/// The server URL to connect to: for `nats://`, the first address of its host the policy
/// allows; for `tls://` (whose certificate names the host), the URL itself once its host is
/// found to have an allowed address. Without a policy to apply, the URL as it is.
async fn checked_server(policy: &AddressPolicy, url: &str) -> Result<String, Refused> {
    if policy.is_open() {
        return Ok(url.to_string());
    }
    let (host, port) = host_and_port(url)
        .ok_or_else(|| Refused::Unresolved(format!("{} is not a NATS server URL", egress::redact_url(url))))?;
    let addresses = match policy.resolve(&host, port).await {
        Ok(addresses) => addresses,
        Err(e) => {
            return Err(match egress::denied_in(&e) {
                Some(denied) => Refused::Denied(denied.to_string()),
                None => Refused::Unresolved(format!("resolving {host} failed: {e}")),
            })
        }
    };
    match addresses.first() {
        None => Err(Refused::Unresolved(format!("{host} has no address"))),
        Some(_) if url.starts_with("tls://") => Ok(url.to_string()),
        Some(address) => {
            // The same URL (credentials included) with the checked address as its host.
            let redacted = egress::redact_url(url);
            let mut pinned = reqwest::Url::parse(url).map_err(|e| Refused::Unresolved(format!("{redacted}: {e}")))?;
            pinned
                .set_ip_host(address.ip())
                .map_err(|()| Refused::Unresolved(format!("{redacted} takes no address")))?;
            let _ = pinned.set_port(Some(address.port()));
            Ok(pinned.to_string())
        }
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
    use super::{checked_server, host_and_port, subject_refusal, Refused, TENANT_PREFIX_DEFAULT};

    #[test]
    fn tenants_publish_under_their_prefix_and_nobody_to_the_system() {
        let p = TENANT_PREFIX_DEFAULT;
        assert_eq!(subject_refusal("tenants.acme.events", Some("acme"), p), None);
        assert!(subject_refusal("tenants.acme.", Some("acme"), p).is_some());
        assert!(subject_refusal("tenants.acmex.events", Some("acme"), p).is_some());
        assert!(subject_refusal("tenants.beta.events", Some("acme"), p).is_some());
        assert!(subject_refusal("orders", Some("acme"), p).is_some());
        assert!(subject_refusal("$JS.API.STREAM.DELETE.events", Some("acme"), p).is_some());
        assert!(subject_refusal("$JS.API.STREAM.DELETE.events", None, p).is_some());
        assert_eq!(subject_refusal("orders.created", None, p), None);
    }
    use egress::{AddressPolicy, Networks};

    #[tokio::test]
    async fn servers_are_connected_to_at_the_checked_address() {
        let operator = AddressPolicy::operator(Networks::parse("10.0.0.0/8").expect("deny"));
        let pinned = checked_server(&operator, "nats://user:pw@localhost:4333").await.ok().expect("allowed");
        assert!(pinned == "nats://user:pw@127.0.0.1:4333" || pinned == "nats://user:pw@[::1]:4333", "{pinned}");
        let tenant = AddressPolicy::tenant(Networks::default(), Networks::default());
        assert!(matches!(checked_server(&tenant, "nats://localhost:4222").await, Err(Refused::Denied(_))));
        assert!(matches!(checked_server(&tenant, "tls://127.0.0.1:4222").await, Err(Refused::Denied(_))));
        let open = AddressPolicy::default();
        assert_eq!(checked_server(&open, "nats://localhost:4222").await.ok().as_deref(), Some("nats://localhost:4222"));
    }

    #[test]
    fn server_urls_name_a_host_and_port() {
        assert_eq!(host_and_port("nats://127.0.0.1:4333"), Some(("127.0.0.1".into(), 4333)));
        assert_eq!(host_and_port("tls://nats.example.com"), Some(("nats.example.com".into(), 4222)));
        assert_eq!(host_and_port("http://127.0.0.1:4222"), None);
        assert_eq!(host_and_port("127.0.0.1:4222"), None);
        assert_eq!(host_and_port("nats://"), None);
    }
}
