//! The `sagaplane` binary: the CLI (dev, server, worker, migrate, bench and client commands),
//! configuration and telemetry. The only crate that names concrete stores.

mod bench;
mod bench_tenants;
mod client;
mod config;
mod delivery_client;
mod demo;
mod listen;
mod run;
mod telemetry;
mod tenant_client;
mod top;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, Overrides};

/// glibc malloc's arena locks and consolidation showed up as ~20% of CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "sagaplane", version, about = "Durable saga orchestrator and tenant control plane")]
struct Cli {
    /// Config file (default: ./sagaplane.toml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embedded mode: SQLite under --data-dir, API + worker, no other service needed.
    Dev {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        listen: Option<String>,
        /// Make a new admin token instead of the one kept in the data directory.
        #[arg(long)]
        reset_token: bool,
    },
    /// API (and a worker unless --no-worker) against SAGAPLANE_DATABASE_URL.
    Server {
        #[arg(long)]
        listen: Option<String>,
        #[arg(long)]
        no_worker: bool,
    },
    /// An orchestrator instance only (health, readiness and metrics on --listen if given).
    Worker {
        #[arg(long)]
        listen: Option<String>,
    },
    /// Apply the control-plane schema and exit.
    Migrate,
    /// Load generator: saga3 or saga3-fail against --url, or an in-process instance.
    Bench(bench::BenchArgs),
    /// Provisioning benchmark: onboard -n tenants through an in-process server on SAGAPLANE_DATABASE_URL.
    BenchTenants(bench_tenants::TenantBenchArgs),
    /// Manage saga definitions.
    Definitions {
        #[command(subcommand)]
        command: client::DefinitionsCommand,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Subscribe URLs to events; rotate secrets.
    Subscriptions {
        #[command(subcommand)]
        command: delivery_client::SubscriptionsCommand,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Outbound deliveries: list, show, replay a dead one, recover a subscription's.
    Deliveries {
        #[command(subcommand)]
        command: delivery_client::DeliveriesCommand,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Start, inspect, watch, cancel, signal and retry sagas.
    Sagas {
        #[command(subcommand)]
        command: client::SagasCommand,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// A live view: throughput, in flight, queue depth, breakers, the sagas stalled longest.
    Top(top::TopArgs),
    /// See events arrive: subscribe a local port, verify each delivery's signature, print it.
    Listen(listen::ListenArgs),
    /// The payments and shipping participant the README's tour calls (in memory, on 127.0.0.1:8090).
    Demo(demo::DemoArgs),
    /// Onboard, inspect, suspend, migrate and offboard tenants.
    Tenants {
        #[command(subcommand)]
        command: tenant_client::TenantsCommand,
        #[command(flatten)]
        connection: client::Connection,
    },
}

fn environment() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let env = environment();
    let load = |overrides: Overrides| Config::load(cli.config.as_deref(), &env, overrides);
    match cli.command {
        Command::Dev { data_dir, listen, reset_token } => {
            let mut config = load(Overrides { listen, data_dir })?;
            telemetry::init_logs(config.log_format);
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("creating {}", config.data_dir.display()))?;
            let url = config
                .database_url
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", config.data_dir.join("sagaplane.db").display()));
            if config.admin_token.is_none() {
                let token = run::dev_token(&config.data_dir, reset_token)?;
                config.admin_token = Some(config::Secret::new(token));
            }
            // A developer's receivers run on this machine: tenants' subscriptions may reach
            // loopback here unless SAGAPLANE_HTTP_ALLOW says otherwise.
            config.http_allow.get_or_insert_with(egress::Networks::loopback);
            run::serve(config, &url, run::Plan { api: true, worker: true, dev_banner: true }).await?;
        }
        Command::Server { listen, no_worker } => {
            let config = load(Overrides { listen, data_dir: None })?;
            telemetry::init_logs(config.log_format);
            let url = config.database_url.clone().context("SAGAPLANE_DATABASE_URL is required")?;
            run::serve(config, &url, run::Plan { api: true, worker: !no_worker, dev_banner: false }).await?;
        }
        Command::Worker { listen } => {
            let has_listen = listen.is_some();
            let config = load(Overrides { listen, data_dir: None })?;
            telemetry::init_logs(config.log_format);
            let url = config.database_url.clone().context("SAGAPLANE_DATABASE_URL is required")?;
            if has_listen {
                run::serve(config, &url, run::Plan { api: false, worker: true, dev_banner: false }).await?;
            } else {
                run::serve_worker_only(config, &url).await?;
            }
        }
        Command::Migrate => {
            let config = load(Overrides::default())?;
            telemetry::init_logs(config.log_format);
            let url = config.database_url.clone().context("SAGAPLANE_DATABASE_URL is required")?;
            let store = run::open_store(&url, &config.database).await?;
            let status = store
                .migrate(saga_runtime::Clock::now_ms(&saga_runtime::SystemClock))
                .await
                .context("applying migrations")?;
            println!("schema at version {} ({})", status.applied, store.backend_name());
        }
        Command::Bench(args) => {
            let config = load(Overrides::default())?;
            telemetry::init_logs_at(config.log_format, "warn");
            return bench::run(args, config).await;
        }
        Command::BenchTenants(args) => {
            let config = load(Overrides::default())?;
            telemetry::init_logs(config.log_format);
            return bench_tenants::run(args, config).await;
        }
        Command::Definitions { command, connection } => return client::definitions(command, connection).await,
        Command::Sagas { command, connection } => return client::sagas(command, connection).await,
        Command::Subscriptions { command, connection } => {
            return delivery_client::subscriptions(command, connection).await
        }
        Command::Deliveries { command, connection } => return delivery_client::deliveries(command, connection).await,
        Command::Tenants { command, connection } => return tenant_client::tenants(command, connection).await,
        Command::Top(args) => return top::run(args).await,
        Command::Listen(args) => return listen::run(args).await,
        Command::Demo(args) => return demo::run(args).await,
    }
    Ok(ExitCode::SUCCESS)
}
