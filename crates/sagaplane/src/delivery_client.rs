//! `sagaplane subscriptions …` and `sagaplane deliveries …`: the outbound-delivery routes of
//! docs/api.md ("Events out") from the command line.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::{print_json, Client, Connection};

#[derive(Subcommand, Debug)]
pub enum SubscriptionsCommand {
    /// Subscribe a URL to events; prints the secret (shown this once).
    Create {
        /// The http(s) URL events are POSTed to, or a NATS server (nats://host:port) with
        /// --subject.
        #[arg(value_name = "URL")]
        endpoint: String,
        /// With a nats:// URL: the JetStream subject events are published to.
        #[arg(long)]
        subject: Option<String>,
        /// Event types, comma-separated ("*" for every event).
        #[arg(long, default_value = "*")]
        events: String,
        /// At most this many deliveries a second.
        #[arg(long)]
        rate_limit: Option<u32>,
    },
    /// Every subscription (a tenant key: its tenant's).
    List,
    /// A new secret; the old one keeps signing for 24 h.
    Rotate { id: String },
    /// Delete it; its pending deliveries end dead.
    Delete { id: String },
}

#[derive(Subcommand, Debug)]
pub enum DeliveriesCommand {
    /// Deliveries, newest first.
    List {
        /// pending, succeeded or dead.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        subscription: Option<String>,
    },
    /// One delivery with its attempts.
    Show { id: String },
    /// Send a dead delivery again.
    Replay { id: String },
    /// Every dead delivery of a subscription since a time (RFC 3339) goes back to pending.
    Recover {
        subscription: String,
        #[arg(long)]
        since: String,
    },
}

pub async fn subscriptions(command: SubscriptionsCommand, connection: Connection) -> anyhow::Result<ExitCode> {
    let client = Client::new(&connection);
    match command {
        SubscriptionsCommand::Create { endpoint, subject, events, rate_limit } => {
            let events: Vec<&str> = events.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
            let is_nats = endpoint.starts_with("nats://") || endpoint.starts_with("tls://");
            let mut body = json!({"events": events, "rate_limit_per_s": rate_limit});
            match (is_nats, subject) {
                (true, Some(subject)) => body["nats"] = json!({"url": endpoint, "subject": subject}),
                (true, None) => {
                    anyhow::bail!("a NATS destination needs --subject (the JetStream subject to publish to)")
                }
                (false, Some(_)) => anyhow::bail!("--subject goes with a nats:// URL"),
                (false, None) => body["url"] = json!(endpoint),
            }
            let (_, created) =
                client.send(client.request(reqwest::Method::POST, "/v1/subscriptions").json(&body)).await?;
            print_json(&created);
            eprintln!("keep the secret: it is not shown again (rotate it with `sagaplane subscriptions rotate`)");
        }
        SubscriptionsCommand::List => {
            let items = all_pages(&client, "/v1/subscriptions", &[]).await?;
            print_json(&Value::Array(items));
        }
        SubscriptionsCommand::Rotate { id } => {
            let path = format!("/v1/subscriptions/{id}/rotate-secret");
            let (_, rotated) = client.send(client.request(reqwest::Method::POST, &path)).await?;
            print_json(&rotated);
        }
        SubscriptionsCommand::Delete { id } => {
            client.send(client.request(reqwest::Method::DELETE, &format!("/v1/subscriptions/{id}"))).await?;
            println!("subscription {id} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn deliveries(command: DeliveriesCommand, connection: Connection) -> anyhow::Result<ExitCode> {
    let client = Client::new(&connection);
    match command {
        DeliveriesCommand::List { status, subscription } => {
            let mut query = Vec::new();
            query.extend(status.map(|s| ("status", s)));
            query.extend(subscription.map(|s| ("subscription_id", s)));
            let items = all_pages(&client, "/v1/deliveries", &query).await?;
            print_json(&Value::Array(items));
        }
        DeliveriesCommand::Show { id } => {
            let (_, delivery) =
                client.send(client.request(reqwest::Method::GET, &format!("/v1/deliveries/{id}"))).await?;
            print_json(&delivery);
        }
        DeliveriesCommand::Replay { id } => {
            let path = format!("/v1/deliveries/{id}/replay");
            client.send(client.request(reqwest::Method::POST, &path)).await?;
            println!("delivery {id} pending again");
        }
        DeliveriesCommand::Recover { subscription, since } => {
            // One call puts back at most 1,000; call again while more remain (at most 1,000 calls).
            let path = format!("/v1/subscriptions/{subscription}/recover");
            let body = json!({"since": since});
            let mut replayed = 0u64;
            for _ in 0..1_000 {
                let (_, recovered) = client.send(client.request(reqwest::Method::POST, &path).json(&body)).await?;
                replayed += recovered["replayed"].as_u64().unwrap_or(0);
                if recovered["more"] != json!(true) || recovered["replayed"] == json!(0) {
                    break;
                }
            }
            println!("{replayed} dead deliveries pending again");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every item of a paged list (`{items, next_cursor}`), at most 100 pages.
pub(crate) async fn all_pages(client: &Client, path: &str, query: &[(&str, String)]) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut page: Vec<(&str, String)> = query.to_vec();
        page.extend(cursor.clone().map(|c| ("cursor", c)));
        page.push(("limit", "500".to_string()));
        let (_, body) = client.send(client.request(reqwest::Method::GET, path).query(&page)).await?;
        items.extend(body["items"].as_array().cloned().unwrap_or_default());
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    Ok(items)
}
