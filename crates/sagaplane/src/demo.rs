//! `sagaplane demo`: the participant the README's tour calls — a small payments and shipping
//! service over HTTP, kept in memory, that prints every call it answers. It follows the HTTP
//! participant contract of docs/definitions.md: the same `Idempotency-Key` gets the same answer,
//! a refund of an unknown charge is a 404 (nothing to undo), and it fails on purpose, definitely
//! (4xx), where the tour needs a failure:
//!
//! - `POST /charges {amount}` → 201 `{id, amount}`; an amount over 1000 is declined (402);
//! - `POST /charges/{id}/refund` → 200 `{id, refunded: true}`;
//! - `POST /shipments {sku, country}` → 201 `{id, sku, country}`; country `AQ` is refused (422).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Json;
use clap::Args;
use serde_json::{json, Value};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
}

/// The most charges or shipments the demo keeps before it refuses new ones (507), so a load
/// test pointed at it cannot grow it without bound.
const RECORDS_MAX: usize = 100_000;

/// The largest amount the demo's card accepts.
const AMOUNT_LIMIT: f64 = 1000.0;

#[derive(Default)]
struct Ledger {
    /// Charge id → amount, refunded.
    charges: HashMap<String, (f64, bool)>,
    shipments: usize,
    /// Idempotency-Key → the first answer given to it.
    answers: HashMap<String, (StatusCode, Value)>,
}

type Shared = Arc<Mutex<Ledger>>;
type Answer = (StatusCode, Json<Value>);

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (pass --listen ADDR)", args.listen))?;
    let address = listener.local_addr().context("reading the bound address")?;
    let app = axum::Router::new()
        .route("/charges", post(charge))
        .route("/charges/{id}/refund", post(refund))
        .route("/shipments", post(ship))
        .with_state(Shared::default());
    println!("sagaplane demo: payments and shipping on http://{address}");
    println!("  POST /charges {{amount}}          declines amounts over {AMOUNT_LIMIT} (402)");
    println!("  POST /charges/{{id}}/refund");
    println!("  POST /shipments {{sku, country}}  refuses country AQ (422)");
    axum::serve(listener, app).with_graceful_shutdown(crate::run::shutdown_signal()).await.context("serving")?;
    Ok(ExitCode::SUCCESS)
}

/// The answer already given to this request's `Idempotency-Key`, or `answer()`'s, remembered.
fn once(
    ledger: &Shared,
    headers: &HeaderMap,
    call: &str,
    answer: impl FnOnce(&mut Ledger) -> (StatusCode, Value),
) -> Answer {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let saga = headers.get("x-saga-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
    let attempt = headers.get("x-saga-attempt").and_then(|v| v.to_str().ok()).unwrap_or("-");
    let Ok(mut ledger) = ledger.lock() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": "demo state poisoned"})));
    };
    let (status, body, repeated) = match key.as_ref().and_then(|k| ledger.answers.get(k)) {
        Some((status, body)) => (*status, body.clone(), " (repeated key: same answer)"),
        None => {
            let (status, body) = if ledger.answers.len().max(ledger.charges.len()) >= RECORDS_MAX {
                (
                    StatusCode::INSUFFICIENT_STORAGE,
                    json!({"error": "the demo keeps at most 100000 records; restart it"}),
                )
            } else {
                answer(&mut ledger)
            };
            if let Some(key) = key {
                ledger.answers.insert(key, (status, body.clone()));
            }
            (status, body, "")
        }
    };
    let time = chrono::Utc::now().format("%H:%M:%S");
    println!("{time}  {call} → {} {body}{repeated}  (saga {saga}, attempt {attempt})", status.as_u16());
    (status, Json(body))
}

fn amount(body: &Value) -> Option<f64> {
    match &body["amount"] {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

async fn charge(State(ledger): State<Shared>, headers: HeaderMap, Json(body): Json<Value>) -> Answer {
    let call = format!("POST /charges {body}");
    once(&ledger, &headers, &call, |ledger| match amount(&body) {
        None => (StatusCode::BAD_REQUEST, json!({"error": "amount must be a number"})),
        Some(amount) if amount > AMOUNT_LIMIT => (
            StatusCode::PAYMENT_REQUIRED,
            json!({"error": format!("card declined: the demo declines amounts over {AMOUNT_LIMIT}")}),
        ),
        Some(amount) => {
            let id = format!("ch_{}", ledger.charges.len() + 1);
            ledger.charges.insert(id.clone(), (amount, false));
            (StatusCode::CREATED, json!({"id": id, "amount": amount}))
        }
    })
}

async fn refund(State(ledger): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Answer {
    let call = format!("POST /charges/{id}/refund");
    once(&ledger, &headers, &call, |ledger| match ledger.charges.get_mut(&id) {
        None => (StatusCode::NOT_FOUND, json!({"error": format!("no charge {id}: nothing to refund")})),
        Some((amount, refunded)) => {
            *refunded = true;
            (StatusCode::OK, json!({"id": id, "amount": amount, "refunded": true}))
        }
    })
}

async fn ship(State(ledger): State<Shared>, headers: HeaderMap, Json(body): Json<Value>) -> Answer {
    let call = format!("POST /shipments {body}");
    once(&ledger, &headers, &call, |ledger| {
        let sku = body["sku"].as_str().unwrap_or_default();
        let country = body["country"].as_str().unwrap_or_default();
        if sku.is_empty() || country.is_empty() {
            return (StatusCode::BAD_REQUEST, json!({"error": "sku and country are required"}));
        }
        if country.eq_ignore_ascii_case("AQ") {
            return (StatusCode::UNPROCESSABLE_ENTITY, json!({"error": "no carrier delivers to AQ (Antarctica)"}));
        }
        ledger.shipments += 1;
        (StatusCode::CREATED, json!({"id": format!("sh_{}", ledger.shipments), "sku": sku, "country": country}))
    })
}
