//! `sagaplane tenants …`: the tenant lifecycle over the HTTP API, with progress while a tenant
//! provisions, migrates or is deleted.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::{print_json, Client, Connection};

#[derive(Subcommand, Debug)]
pub enum TenantsCommand {
    /// Onboard a tenant and follow its provisioning.
    Create {
        id: String,
        #[arg(long)]
        name: String,
        /// pooled (default), bridge or silo.
        #[arg(long)]
        tier: Option<String>,
        /// pooled, schema or database (default: by tier).
        #[arg(long)]
        storage_mode: Option<String>,
        /// basic, standard (default) or premium.
        #[arg(long)]
        sla_tier: Option<String>,
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// Return at once instead of following the provisioning.
        #[arg(long)]
        no_wait: bool,
    },
    /// List tenants.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        tier: Option<String>,
    },
    /// Show one tenant.
    Show { id: String },
    /// Deprovision a tenant (its record stays, DELETED). With a grace period it is SUSPENDED
    /// until then, restorable, and its storage destroyed when the grace ends.
    Delete {
        id: String,
        /// How long it stays restorable: a whole number of s, m, h or d, e.g. 7d (default: the
        /// server's SAGAPLANE_TENANT_DELETE_GRACE; 0s deletes at once).
        #[arg(long)]
        grace: Option<String>,
        #[arg(long)]
        no_wait: bool,
    },
    /// Within a deletion's grace period: back to ACTIVE, the deletion cancelled.
    Restore { id: String },
    /// ACTIVE → SUSPENDED: the tenant's keys and database role stop working.
    Suspend { id: String },
    /// SUSPENDED → ACTIVE.
    Resume { id: String },
    /// Migrate: with an id, resume a tenant in MIGRATION_ERROR; without, roll migrations out to
    /// every ACTIVE tenant that is behind.
    Migrate {
        id: Option<String>,
        #[arg(long)]
        service: Option<String>,
        /// Tenants migrated at once by a rollout.
        #[arg(long)]
        concurrency: Option<u32>,
        #[arg(long)]
        no_wait: bool,
    },
}

const SETTLED: &[&str] = &["ACTIVE", "PROVISION_ERROR", "MIGRATION_ERROR", "SUSPENDED", "DELETED"];
const REFRESH: std::time::Duration = std::time::Duration::from_millis(250);

fn line(tenant: &Value) -> String {
    format!(
        "{:<30} {:<16} {:<8} {:<9} {}",
        tenant["id"].as_str().unwrap_or(""),
        tenant["status"].as_str().unwrap_or(""),
        tenant["tier"].as_str().unwrap_or(""),
        tenant["storage_mode"].as_str().unwrap_or(""),
        tenant["name"].as_str().unwrap_or("")
    )
}

/// Follows a tenant's latest saga until the tenant settles; a progress bar on a terminal, a
/// line per change otherwise. Exit 0 when it ends in `success`.
async fn follow(client: &Client, id: &str, success: &str) -> anyhow::Result<ExitCode> {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = terminal.then(|| {
        let bar = indicatif::ProgressBar::new(100);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix:>24} [{bar:30.cyan/blue}] {pos:>3}% {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(id.to_string());
        bar
    });
    let mut last = String::new();
    loop {
        let (_, status) =
            client.send(client.request(reqwest::Method::GET, &format!("/v1/tenants/{id}/provisioning-status"))).await?;
        let tenant_status = status["status"].as_str().unwrap_or("").to_string();
        let message = format!(
            "{tenant_status} {}",
            status["current_step"].as_str().map(|s| format!("(step {s})")).unwrap_or_default()
        );
        match &bar {
            Some(bar) => {
                bar.set_position(status["progress"]["percent"].as_u64().unwrap_or(0));
                bar.set_message(message.clone());
            }
            None if message != last => eprintln!("{id}: {message}"),
            None => {}
        }
        last = message;
        let saga_done = matches!(status["saga_status"].as_str(), Some("COMPLETED" | "COMPENSATED" | "FAILED") | None);
        if SETTLED.contains(&tenant_status.as_str()) && saga_done {
            if let Some(bar) = &bar {
                bar.finish();
            }
            if let Some(error) = status["error"].as_object() {
                eprintln!("error: {}", error.get("message").and_then(Value::as_str).unwrap_or(""));
            }
            return Ok(if tenant_status == success { ExitCode::SUCCESS } else { ExitCode::from(2) });
        }
        tokio::time::sleep(REFRESH).await;
    }
}

/// Follows a migration rollout until every saga of it has ended.
async fn follow_rollout(client: &Client, rollout_id: &str) -> anyhow::Result<ExitCode> {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = terminal.then(indicatif::ProgressBar::no_length);
    if let Some(bar) = &bar {
        bar.set_style(
            indicatif::ProgressStyle::with_template("rollout [{bar:30.cyan/blue}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
    }
    let mut last = String::new();
    loop {
        let (_, progress) =
            client.send(client.request(reqwest::Method::GET, &format!("/v1/migrations/rollouts/{rollout_id}"))).await?;
        let statuses = progress["statuses"].to_string();
        match &bar {
            Some(bar) => {
                bar.set_length(progress["total"].as_u64().unwrap_or(0));
                bar.set_position(progress["finished"].as_u64().unwrap_or(0));
                bar.set_message(statuses.clone());
            }
            None if statuses != last => eprintln!("rollout {rollout_id}: {statuses}"),
            None => {}
        }
        last = statuses;
        if progress["done"] == json!(true) {
            if let Some(bar) = &bar {
                bar.finish();
            }
            let completed = progress["statuses"]["COMPLETED"].as_u64().unwrap_or(0);
            let total = progress["total"].as_u64().unwrap_or(0);
            if progress["fan_out"]["status"] != json!("COMPLETED") {
                let error = progress["fan_out"]["error"].as_str().unwrap_or("no error recorded");
                println!("rollout stopped before every tenant was started ({total} were): {error}");
                return Ok(ExitCode::from(2));
            }
            if total == 0 {
                println!("rollout done: no tenant was behind");
                return Ok(ExitCode::SUCCESS);
            }
            println!("rollout done: {completed} of {total} tenant(s) migrated");
            return Ok(if completed == total { ExitCode::SUCCESS } else { ExitCode::from(2) });
        }
        tokio::time::sleep(REFRESH).await;
    }
}

pub async fn tenants(command: TenantsCommand, connection: Connection) -> anyhow::Result<ExitCode> {
    let client = Client::new(&connection);
    match command {
        TenantsCommand::Create { id, name, tier, storage_mode, sla_tier, domains, no_wait } => {
            let mut body = json!({"id": id, "name": name});
            for (key, value) in [("tier", tier), ("storage_mode", storage_mode), ("sla_tier", sla_tier)] {
                if let Some(value) = value {
                    body[key] = json!(value);
                }
            }
            if !domains.is_empty() {
                body["domains"] = json!(domains);
            }
            let (_, created) = client.send(client.request(reqwest::Method::POST, "/v1/tenants").json(&body)).await?;
            println!("tenant {id} provisioning (saga {})", created["saga_id"].as_str().unwrap_or(""));
            if !no_wait {
                let code = follow(&client, &id, "ACTIVE").await?;
                let (_, tenant) =
                    client.send(client.request(reqwest::Method::GET, &format!("/v1/tenants/{id}"))).await?;
                println!("{}", line(&tenant));
                return Ok(code);
            }
        }
        TenantsCommand::List { status, tier } => {
            let mut query = Vec::new();
            query.extend(status.map(|s| ("status", s.to_ascii_uppercase())));
            query.extend(tier.map(|t| ("tier", t)));
            let mut cursor: Option<String> = None;
            loop {
                let mut page = query.clone();
                page.extend(cursor.clone().map(|c| ("cursor", c)));
                page.push(("limit", "500".to_string()));
                let (_, body) = client.send(client.request(reqwest::Method::GET, "/v1/tenants").query(&page)).await?;
                for tenant in body["items"].as_array().into_iter().flatten() {
                    println!("{}", line(tenant));
                }
                match body["next_cursor"].as_str() {
                    Some(next) => cursor = Some(next.to_string()),
                    None => break,
                }
            }
        }
        TenantsCommand::Show { id } => {
            let (_, tenant) = client.send(client.request(reqwest::Method::GET, &format!("/v1/tenants/{id}"))).await?;
            print_json(&tenant);
        }
        TenantsCommand::Delete { id, grace, no_wait } => {
            let mut request = client.request(reqwest::Method::DELETE, &format!("/v1/tenants/{id}"));
            if let Some(grace) = &grace {
                request = request.query(&[("grace", grace)]);
            }
            let (_, body) = client.send(request).await?;
            let saga = body["saga_id"].as_str().unwrap_or("");
            if let Some(delete_at) = body["delete_at"].as_str() {
                println!(
                    "tenant {id} suspended; its storage is destroyed at {delete_at} (saga {saga}); until then \
                     `sagaplane tenants restore {id}` brings it back"
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!("tenant {id} deprovisioning (saga {saga})");
            if !no_wait {
                return follow(&client, &id, "DELETED").await;
            }
        }
        TenantsCommand::Restore { id } => {
            let (_, tenant) =
                client.send(client.request(reqwest::Method::POST, &format!("/v1/tenants/{id}/restore"))).await?;
            println!("{}", line(&tenant));
        }
        TenantsCommand::Suspend { id } => {
            let (_, tenant) =
                client.send(client.request(reqwest::Method::POST, &format!("/v1/tenants/{id}/suspend"))).await?;
            println!("{}", line(&tenant));
        }
        TenantsCommand::Resume { id } => {
            let (_, tenant) =
                client.send(client.request(reqwest::Method::POST, &format!("/v1/tenants/{id}/resume"))).await?;
            println!("{}", line(&tenant));
        }
        TenantsCommand::Migrate { id: Some(id), no_wait, .. } => {
            client.send(client.request(reqwest::Method::POST, &format!("/v1/tenants/{id}/retry-migration"))).await?;
            println!("tenant {id} migrating");
            if !no_wait {
                return follow(&client, &id, "ACTIVE").await;
            }
        }
        TenantsCommand::Migrate { id: None, service, concurrency, no_wait } => {
            let body = json!({"service": service, "concurrency": concurrency});
            let (_, rollout) =
                client.send(client.request(reqwest::Method::POST, "/v1/migrations/rollout").json(&body)).await?;
            let rollout_id = rollout["rollout_id"].as_str().context("rollout_id")?.to_string();
            println!(
                "rollout {rollout_id} started: every tenant behind migrates, {} at a time \
                 (progress: GET /v1/migrations/rollouts/{rollout_id})",
                rollout["concurrency"]
            );
            if !no_wait {
                return follow_rollout(&client, &rollout_id).await;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
