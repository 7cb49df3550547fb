//! The location example: a tenant application on Sagaplane's control plane. Tenant users log in,
//! start tracking sessions and post location updates; the data lives in the tenant's pooled
//! storage under row-level security; every update reaches a third party through Sagaplane's
//! outbound delivery, and updates of a session that has ended are never sent.

mod app;
mod demo;
mod third_party;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "location", about = "A tenant location-tracking app on Sagaplane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the tenant application.
    App {
        #[arg(long, default_value = "127.0.0.1:7201")]
        listen: String,
        #[command(flatten)]
        config: app::Config,
    },
    /// Runs the third party that receives the updates.
    ThirdParty {
        #[arg(long, default_value = "127.0.0.1:7202")]
        listen: String,
    },
    /// Two tenants, their users and tracking, a failing third party and its recovery — every
    /// outcome checked.
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
        Command::App { listen, config } => serve(&listen, app::router(config).await?).await,
        Command::ThirdParty { listen } => serve(&listen, third_party::router()).await,
        Command::Demo(args) => demo::run(args).await,
    }
}
