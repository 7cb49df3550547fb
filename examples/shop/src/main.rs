//! The shop example: an `order` saga — create the order, reserve stock, charge (the pivot),
//! confirm — over three gRPC participant services, each its own process with its own database.
//!
//! `shop service orders|inventory|payments` runs one service; `shop run` starts the three, puts
//! the `order` definition, places orders through Sagaplane's API (an instance you run, or several
//! it starts on PostgreSQL), injects faults, waits for every saga to end, and reconciles orders,
//! stock and money against the sagas' outcomes — failing loudly on any difference.

mod reconcile;
mod run;
mod service;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "shop", about = "An order saga over gRPC participants, run on Sagaplane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one participant service.
    Service {
        kind: service::Kind,
        /// Where to listen (gRPC).
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: String,
        /// Its own database: `sqlite://FILE` or `postgres://…`.
        #[arg(long)]
        database: String,
        /// Share of charges declined (payments).
        #[arg(long, default_value_t = 0.05)]
        decline_rate: f64,
        #[command(flatten)]
        stock: service::Stock,
    },
    /// Places orders through Sagaplane and reconciles the outcome.
    Run(run::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Service { kind, listen, database, decline_rate, stock } => {
            let db = service::open(&database, kind, stock).await?;
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            println!("{kind:?} listening on {}", listener.local_addr()?);
            service::serve(service::Service { kind, db, decline_rate }, listener).await
        }
        Command::Run(args) => run::run(args).await,
    }
}
