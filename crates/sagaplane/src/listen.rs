//! `sagaplane listen`: see outbound events arrive on this machine. It serves a local port,
//! subscribes it to the given event types (reusing a subscription it left for the same URL),
//! verifies each delivery's Standard Webhooks signature with the subscription's secret, prints
//! each event, optionally forwards it, and deletes the subscription on SIGINT or SIGTERM.
//!
//! A delivery whose signature does not verify is answered 401 and not printed or forwarded. With
//! `--forward-to`, the delivery (body and `webhook-*` headers unchanged) is POSTed there and its
//! status is the answer Sagaplane gets, so the retry schedule applies to the forwarded endpoint.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use clap::Args;
use serde_json::{json, Value};

use crate::client::{Client, Connection};

#[derive(Args, Debug)]
pub struct ListenArgs {
    /// Event types to receive, comma-separated (`*` for every event).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    events: Vec<String>,
    /// Local port to serve deliveries on (0: a free one). Deliveries come to
    /// http://127.0.0.1:PORT/, so the server must run on this machine.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Also POST every verified delivery (body and webhook-* headers) to this URL.
    #[arg(long)]
    forward_to: Option<String>,
    /// Print one JSON object a line (the event with its `id`) instead of a summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: Connection,
}

/// What the delivery handler needs.
struct Receiver {
    verifier: standardwebhooks::Webhook,
    forward: Option<(reqwest::Client, String)>,
    json: bool,
}

/// The most characters of an event's data a summary line shows.
const SUMMARY_CHARS: usize = 160;

pub async fn run(args: ListenArgs) -> anyhow::Result<ExitCode> {
    let events: Vec<String> = args.events.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
    anyhow::ensure!(!events.is_empty(), "--events needs at least one event type (or *)");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
    let port = listener.local_addr().context("reading the bound address")?.port();
    let url = format!("http://127.0.0.1:{port}/");
    let client = Client::new(&args.connection);
    let (id, secret) = subscribe(&client, &url, &events).await?;
    let verifier = standardwebhooks::Webhook::new(&secret)
        .map_err(|e| anyhow::anyhow!("the server gave a secret that cannot verify signatures: {e}"))?;
    let forward = match args.forward_to {
        Some(to) => {
            let http = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .context("building the forwarding client")?;
            Some((http, to))
        }
        None => None,
    };
    let forwarding = forward.as_ref().map(|(_, to)| format!(", forwarding to {to}")).unwrap_or_default();
    eprintln!(
        "listening on {url} for {} (subscription {id}{forwarding}); Ctrl-C stops and deletes the subscription",
        events.join(", ")
    );
    let receiver = Arc::new(Receiver { verifier, forward, json: args.json });
    let app = axum::Router::new().fallback(axum::routing::post(deliver)).with_state(receiver);
    let served = axum::serve(listener, app).with_graceful_shutdown(crate::run::shutdown_signal()).await;
    let deleted = client.send(client.request(reqwest::Method::DELETE, &format!("/v1/subscriptions/{id}"))).await;
    served.context("serving deliveries")?;
    deleted.with_context(|| format!("deleting subscription {id}"))?;
    eprintln!("subscription {id} deleted");
    Ok(ExitCode::SUCCESS)
}

/// The subscription for `url`: the one a previous `listen` left (its events set, its secret
/// rotated, since a secret is shown only once) or a new one. Returns its id and secret.
async fn subscribe(client: &Client, url: &str, events: &[String]) -> anyhow::Result<(String, String)> {
    let subscriptions = crate::delivery_client::all_pages(client, "/v1/subscriptions", &[]).await?;
    let existing = subscriptions.iter().find(|s| s["url"].as_str() == Some(url));
    if let Some(id) = existing.and_then(|s| s["id"].as_str()) {
        let path = format!("/v1/subscriptions/{id}");
        let change = json!({"events": events, "status": "active"});
        client.send(client.request(reqwest::Method::PATCH, &path).json(&change)).await?;
        let (_, rotated) = client.send(client.request(reqwest::Method::POST, &format!("{path}/rotate-secret"))).await?;
        let secret = rotated["secret"].as_str().context("rotate-secret answered no secret")?;
        return Ok((id.to_string(), secret.to_string()));
    }
    let body = json!({"url": url, "events": events});
    let (_, created) = client.send(client.request(reqwest::Method::POST, "/v1/subscriptions").json(&body)).await?;
    let id = created["id"].as_str().context("the new subscription has no id")?;
    let secret = created["secret"].as_str().context("the new subscription has no secret")?;
    Ok((id.to_string(), secret.to_string()))
}

async fn deliver(State(receiver): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
    if let Err(e) = receiver.verifier.verify(&body, &headers) {
        eprintln!("rejected delivery {id}: its signature does not verify ({e}); answered 401");
        return StatusCode::UNAUTHORIZED;
    }
    let event: Value =
        serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
    if receiver.json {
        let mut line = json!({"id": id});
        if let (Some(line), Some(fields)) = (line.as_object_mut(), event.as_object()) {
            line.extend(fields.clone());
        }
        println!("{line}");
    } else {
        println!("{}", summary(&id, &event));
    }
    let Some((http, to)) = &receiver.forward else {
        return StatusCode::NO_CONTENT;
    };
    let mut request = http.post(to).header("content-type", "application/json").body(body);
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(response) => {
            eprintln!("  → {to}: {}", response.status());
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY)
        }
        Err(e) => {
            eprintln!("  → {to}: not delivered ({}); answered 502", egress::client::error_chain(&e));
            StatusCode::BAD_GATEWAY
        }
    }
}

/// `04:21:07  saga.completed  <event id>  verified  {"saga_id":…}`, the data cut at SUMMARY_CHARS.
fn summary(id: &str, event: &Value) -> String {
    let data = event["data"].to_string();
    let data = match data.char_indices().nth(SUMMARY_CHARS) {
        Some((cut, _)) => format!("{}…", &data[..cut]),
        None => data,
    };
    let time = chrono::Utc::now().format("%H:%M:%S");
    format!("{time}  {}  {id}  verified  {data}", event["type"].as_str().unwrap_or("?"))
}
