//! The three participant services — orders, inventory, payments — each a gRPC `Participant`
//! (proto/participant.proto) over its own database.
//!
//! Every effect is idempotent per idempotency key: the effect and its reply are written in one
//! transaction with the key as primary key, so a duplicate (a retry after a lost answer, a
//! takeover by another orchestrator) gets the first reply and changes nothing. A compensation of
//! something that never happened records a tombstone for the action's key, so a late action
//! (from a driver that was paused past its lease) is refused instead of done after its undo.

use participant_proto::v1::participant_server::{Participant, ParticipantServer};
use participant_proto::v1::{StepReply, StepRequest};
use serde_json::{json, Value};
use sqlx::AnyPool;
use tonic::{Code, Request, Response, Status};

/// Which service this process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Orders,
    Inventory,
    Payments,
}

/// What the shop starts with (the load run and the reconciliation agree on it).
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct Stock {
    /// Products `sku-0` … `sku-N-1`.
    #[arg(long, default_value_t = 20)]
    pub skus: u32,
    /// Units of each product at the start.
    #[arg(long, default_value_t = 600)]
    pub units: i64,
    /// Customers `c-0` … `c-N-1`.
    #[arg(long, default_value_t = 100)]
    pub customers: u32,
    /// Each customer's balance at the start, in cents.
    #[arg(long, default_value_t = 2_000_000)]
    pub balance_cents: i64,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS effects (idempotency_key TEXT PRIMARY KEY, code INTEGER NOT NULL, reply TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer TEXT NOT NULL, sku TEXT NOT NULL, qty BIGINT NOT NULL, amount_cents BIGINT NOT NULL, status TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, available BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS reservations (id TEXT PRIMARY KEY, sku TEXT NOT NULL, qty BIGINT NOT NULL, status TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS accounts (customer TEXT PRIMARY KEY, balance_cents BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS charges (id TEXT PRIMARY KEY, customer TEXT NOT NULL, amount_cents BIGINT NOT NULL, status TEXT NOT NULL)",
];

/// Opens the service's database (a `sqlite://` file is created), creates its tables, and stocks
/// it on first use.
pub async fn open(url: &str, kind: Kind, stock: Stock) -> anyhow::Result<AnyPool> {
    sqlx::any::install_default_drivers();
    let url =
        if url.starts_with("sqlite:") && !url.contains('?') { format!("{url}?mode=rwc") } else { url.to_string() };
    // SQLite: one writer at a time, so one connection; PostgreSQL: a few.
    let connections = if url.starts_with("sqlite:") { 1 } else { 8 };
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(connections).connect(&url).await?;
    for statement in SCHEMA {
        sqlx::query(statement).execute(&pool).await?;
    }
    match kind {
        Kind::Inventory => {
            for n in 0..stock.skus {
                sqlx::query("INSERT INTO stock (sku, available) VALUES ($1, $2) ON CONFLICT (sku) DO NOTHING")
                    .bind(format!("sku-{n}"))
                    .bind(stock.units)
                    .execute(&pool)
                    .await?;
            }
        }
        Kind::Payments => {
            for n in 0..stock.customers {
                sqlx::query(
                    "INSERT INTO accounts (customer, balance_cents) VALUES ($1, $2) ON CONFLICT (customer) DO NOTHING",
                )
                .bind(format!("c-{n}"))
                .bind(stock.balance_cents)
                .execute(&pool)
                .await?;
            }
        }
        Kind::Orders => {}
    }
    Ok(pool)
}

/// One service.
pub struct Service {
    pub kind: Kind,
    pub db: AnyPool,
    /// Share of charges the payment provider declines (payments only).
    pub decline_rate: f64,
}

/// The order as the saga's `input` carries it.
struct Order {
    customer: String,
    sku: String,
    qty: i64,
    amount_cents: i64,
}

fn order_of(request: &StepRequest) -> Result<Order, Status> {
    let input: Value =
        serde_json::from_str(&request.input_json).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let text = |key: &str| input.get(key).and_then(Value::as_str).map(str::to_string);
    let number = |key: &str| input.get(key).and_then(Value::as_i64);
    match (text("customer"), text("sku"), number("qty"), number("amount_cents")) {
        (Some(customer), Some(sku), Some(qty), Some(amount_cents)) if qty > 0 && amount_cents >= 0 => {
            Ok(Order { customer, sku, qty, amount_cents })
        }
        _ => Err(Status::invalid_argument(format!("not an order: {input}"))),
    }
}

/// A reply as stored: the gRPC code (0 = OK) and the output or message.
type Reply = (i32, String);

fn to_result(reply: Reply) -> Result<Response<StepReply>, Status> {
    match reply {
        (0, output) => Ok(Response::new(StepReply { output_json: output })),
        (code, message) => Err(Status::new(Code::from_i32(code), message)),
    }
}

fn db(error: sqlx::Error) -> Status {
    // The database is unavailable or busy: retryable for the orchestrator.
    Status::unavailable(format!("database: {error}"))
}

impl Service {
    async fn stored(&self, key: &str) -> Result<Option<Reply>, Status> {
        let row: Option<(i32, String)> = sqlx::query_as("SELECT code, reply FROM effects WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(&self.db)
            .await
            .map_err(db)?;
        Ok(row)
    }

    /// Runs `phase` of the step once per idempotency key.
    async fn once(&self, request: StepRequest, compensation: bool) -> Result<Response<StepReply>, Status> {
        if let Some(reply) = self.stored(&request.idempotency_key).await? {
            return to_result(reply);
        }
        let mut tx = self.db.begin().await.map_err(db)?;
        let reply =
            if compensation { self.undo(&mut tx, &request).await? } else { self.act(&mut tx, &request).await? };
        let inserted = sqlx::query("INSERT INTO effects (idempotency_key, code, reply) VALUES ($1, $2, $3) ON CONFLICT (idempotency_key) DO NOTHING")
            .bind(&request.idempotency_key)
            .bind(reply.0)
            .bind(&reply.1)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if inserted.rows_affected() == 0 {
            // A duplicate got there first: its reply is the one.
            drop(tx);
            return to_result(self.stored(&request.idempotency_key).await?.unwrap_or(reply));
        }
        tx.commit().await.map_err(db)?;
        to_result(reply)
    }

    async fn act(&self, tx: &mut sqlx::Transaction<'_, sqlx::Any>, request: &StepRequest) -> Result<Reply, Status> {
        let order = order_of(request)?;
        let id = &request.saga_id;
        let ok = |output: Value| Ok((0, output.to_string()));
        let refuse = |message: &str| Ok((Code::FailedPrecondition as i32, message.to_string()));
        match (self.kind, request.step.as_str()) {
            (Kind::Orders, "create_order") => {
                sqlx::query("INSERT INTO orders (id, customer, sku, qty, amount_cents, status) VALUES ($1, $2, $3, $4, $5, 'created')")
                    .bind(id).bind(&order.customer).bind(&order.sku).bind(order.qty).bind(order.amount_cents)
                    .execute(&mut **tx).await.map_err(db)?;
                ok(json!({"order_id": id}))
            }
            (Kind::Orders, "confirm") => {
                let changed =
                    sqlx::query("UPDATE orders SET status = 'confirmed' WHERE id = $1 AND status = 'created'")
                        .bind(id)
                        .execute(&mut **tx)
                        .await
                        .map_err(db)?;
                if changed.rows_affected() == 0 {
                    refuse("no created order to confirm")
                } else {
                    ok(json!({"confirmed": id}))
                }
            }
            (Kind::Inventory, "reserve_stock") => {
                let taken =
                    sqlx::query("UPDATE stock SET available = available - $1 WHERE sku = $2 AND available >= $1")
                        .bind(order.qty)
                        .bind(&order.sku)
                        .execute(&mut **tx)
                        .await
                        .map_err(db)?;
                if taken.rows_affected() == 0 {
                    return refuse("out of stock");
                }
                sqlx::query("INSERT INTO reservations (id, sku, qty, status) VALUES ($1, $2, $3, 'reserved')")
                    .bind(id)
                    .bind(&order.sku)
                    .bind(order.qty)
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
                ok(json!({"reserved": order.qty}))
            }
            (Kind::Payments, "charge") => {
                if rand::random::<f64>() < self.decline_rate {
                    return refuse("card declined");
                }
                let debited = sqlx::query("UPDATE accounts SET balance_cents = balance_cents - $1 WHERE customer = $2 AND balance_cents >= $1")
                    .bind(order.amount_cents).bind(&order.customer).execute(&mut **tx).await.map_err(db)?;
                if debited.rows_affected() == 0 {
                    return refuse("insufficient funds");
                }
                sqlx::query("INSERT INTO charges (id, customer, amount_cents, status) VALUES ($1, $2, $3, 'charged')")
                    .bind(id)
                    .bind(&order.customer)
                    .bind(order.amount_cents)
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
                ok(json!({"charged_cents": order.amount_cents}))
            }
            (kind, step) => Err(Status::not_found(format!("{kind:?} has no step {step}"))),
        }
    }

    async fn undo(&self, tx: &mut sqlx::Transaction<'_, sqlx::Any>, request: &StepRequest) -> Result<Reply, Status> {
        let id = &request.saga_id;
        let (table, to, from) = match (self.kind, request.step.as_str()) {
            (Kind::Orders, "create_order") => ("orders", "cancelled", "created"),
            (Kind::Inventory, "reserve_stock") => ("reservations", "released", "reserved"),
            (Kind::Payments, "charge") => ("charges", "refunded", "charged"),
            (kind, step) => return Err(Status::not_found(format!("{kind:?} has no step {step}"))),
        };
        let undone = sqlx::query(&format!("UPDATE {table} SET status = '{to}' WHERE id = $1 AND status = '{from}'"))
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        if undone.rows_affected() == 1 {
            match table {
                "reservations" => {
                    sqlx::query("UPDATE stock SET available = available + (SELECT qty FROM reservations WHERE id = $1) WHERE sku = (SELECT sku FROM reservations WHERE id = $1)")
                        .bind(id).execute(&mut **tx).await.map_err(db)?;
                }
                "charges" => {
                    sqlx::query("UPDATE accounts SET balance_cents = balance_cents + (SELECT amount_cents FROM charges WHERE id = $1) WHERE customer = (SELECT customer FROM charges WHERE id = $1)")
                        .bind(id).execute(&mut **tx).await.map_err(db)?;
                }
                _ => {}
            }
            return Ok((0, json!({"undone": id}).to_string()));
        }
        // Nothing to undo: the action never took effect (or was refused). A tombstone for the
        // action's key makes a late action answer as refused, never act after its undo.
        let action_key = request.idempotency_key.replace("/compensation", "/action");
        sqlx::query("INSERT INTO effects (idempotency_key, code, reply) VALUES ($1, $2, $3) ON CONFLICT (idempotency_key) DO NOTHING")
            .bind(&action_key)
            .bind(Code::FailedPrecondition as i32)
            .bind("compensated before it was done")
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        Ok((Code::NotFound as i32, "nothing to undo".to_string()))
    }
}

#[tonic::async_trait]
impl Participant for Service {
    async fn execute(&self, request: Request<StepRequest>) -> Result<Response<StepReply>, Status> {
        self.once(request.into_inner(), false).await
    }

    async fn compensate(&self, request: Request<StepRequest>) -> Result<Response<StepReply>, Status> {
        self.once(request.into_inner(), true).await
    }
}

/// Serves `service` on `listener` until the process ends.
pub async fn serve(service: Service, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(ParticipantServer::new(service))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
