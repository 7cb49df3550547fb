//! The onboarding example: a B2B platform onboards a customer when its CRM marks a deal won.
//! The CRM posts a signed webhook; Sagaplane's `tenant.provision`, extended with an identity
//! provider, a cloud and a disaster-recovery step (each a small HTTP service here, with its own
//! state and a real undo), provisions the tenant; the CRM receives the signed outcome. `demo`
//! runs it for each tier and then the failure drills.

mod crm;
mod demo;
mod service;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "onboarding", about = "Customer onboarding from a CRM deal, on Sagaplane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one provisioning service (identity provider, cloud, or disaster recovery).
    Service {
        kind: service::Kind,
        #[arg(long)]
        listen: String,
        /// Where it keeps its state (JSON); a restart with the same file remembers.
        #[arg(long)]
        state_file: std::path::PathBuf,
        /// The first N creates do their work but answer only after `--slow-ms`.
        #[arg(long, default_value_t = 0)]
        slow_first: u32,
        #[arg(long, default_value_t = 3_000)]
        slow_ms: u64,
    },
    /// Runs the CRM.
    Crm {
        #[arg(long)]
        listen: String,
        /// Sagaplane's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        sagaplane: String,
        #[arg(long, default_value = demo::WEBHOOK_SECRET)]
        webhook_secret: String,
        #[arg(long, default_value = demo::CALLBACK_SECRET)]
        callback_secret: String,
    },
    /// Starts the services and the CRM, extends the tenant sagas, onboards a customer per tier,
    /// then runs the drills; fails on any unexpected outcome.
    Demo(demo::Args),
}

async fn serve(listen: &str, router: axum::Router) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, router).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Service { kind, listen, state_file, slow_first, slow_ms } => {
            serve(&listen, service::router(kind, state_file, slow_first, slow_ms)).await
        }
        Command::Crm { listen, sagaplane, webhook_secret, callback_secret } => {
            serve(&listen, crm::router(&sagaplane, &webhook_secret, &callback_secret)?).await
        }
        Command::Demo(args) => demo::run(args).await,
    }
}
