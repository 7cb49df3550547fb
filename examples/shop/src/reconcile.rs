//! The reconciliation: orders, stock and money must agree exactly with the sagas' outcomes.
//! Every difference is printed; any difference fails the command.

use std::collections::BTreeMap;

use anyhow::bail;
use sqlx::AnyPool;

use crate::service::Stock;

/// Reads the three services' databases (orders, inventory, payments, in that order) and checks
/// them against `sagas` (id → final status).
pub async fn reconcile(databases: &[String], stock: Stock, sagas: &BTreeMap<String, String>) -> anyhow::Result<()> {
    sqlx::any::install_default_drivers();
    let [orders_db, inventory_db, payments_db] = databases else { bail!("three databases expected") };
    let orders: BTreeMap<String, String> = rows(orders_db, "SELECT id, status FROM orders").await?;
    let reservations: BTreeMap<String, String> = rows(inventory_db, "SELECT id, status FROM reservations").await?;
    let charges: BTreeMap<String, String> = rows(payments_db, "SELECT id, status FROM charges").await?;
    let mut problems = Vec::new();
    for (id, status) in sagas {
        let order = orders.get(id).map(String::as_str);
        let reservation = reservations.get(id).map(String::as_str);
        let charge = charges.get(id).map(String::as_str);
        let consistent = match status.as_str() {
            "COMPLETED" => order == Some("confirmed") && reservation == Some("reserved") && charge == Some("charged"),
            "COMPENSATED" => {
                matches!(order, None | Some("cancelled"))
                    && matches!(reservation, None | Some("released"))
                    && matches!(charge, None | Some("refunded"))
            }
            _ => false,
        };
        if !consistent {
            problems.push(format!(
                "saga {id} is {status}, but order={order:?} reservation={reservation:?} charge={charge:?}"
            ));
        }
    }
    for (table, ids) in [("orders", &orders), ("reservations", &reservations), ("charges", &charges)] {
        for id in ids.keys().filter(|id| !sagas.contains_key(*id)) {
            problems.push(format!("{table} has {id}, which no saga of this run made"));
        }
    }
    // Stock: what is left plus what is reserved is what there was.
    let reserved: BTreeMap<String, i64> =
        sums(inventory_db, "SELECT sku, qty FROM reservations WHERE status = 'reserved'").await?;
    let available: BTreeMap<String, i64> = sums(inventory_db, "SELECT sku, available FROM stock").await?;
    for (sku, left) in &available {
        let held = reserved.get(sku).copied().unwrap_or(0);
        if left + held != stock.units {
            problems.push(format!("{sku}: {left} available + {held} reserved != {} stocked", stock.units));
        }
    }
    // Money: balances plus what was charged (and not refunded) is what there was.
    let charged: BTreeMap<String, i64> =
        sums(payments_db, "SELECT customer, amount_cents FROM charges WHERE status = 'charged'").await?;
    let balances: BTreeMap<String, i64> = sums(payments_db, "SELECT customer, balance_cents FROM accounts").await?;
    for (customer, balance) in &balances {
        let paid = charged.get(customer).copied().unwrap_or(0);
        if balance + paid != stock.balance_cents {
            problems.push(format!(
                "{customer}: balance {balance} + charged {paid} != {} at the start",
                stock.balance_cents
            ));
        }
    }
    let completed = sagas.values().filter(|s| *s == "COMPLETED").count();
    let confirmed = orders.values().filter(|s| *s == "confirmed").count();
    let held = reservations.values().filter(|s| *s == "reserved").count();
    let paid = charges.values().filter(|s| *s == "charged").count();
    println!(
        "reconciliation: {completed} completed sagas, {confirmed} confirmed orders, {held} reservations held, {paid} charges; \
         stock of {} products and balances of {} customers checked",
        available.len(),
        balances.len()
    );
    if problems.is_empty() && completed == confirmed && confirmed == held && held == paid {
        println!("reconciliation: everything agrees");
        return Ok(());
    }
    for problem in &problems {
        eprintln!("MISMATCH {problem}");
    }
    bail!("the reconciliation found {} mismatch(es) (counts: {completed} completed, {confirmed} confirmed, {held} held, {paid} charged)", problems.len())
}

async fn rows(url: &str, query: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let pool = AnyPool::connect(url).await?;
    let rows: Vec<(String, String)> = sqlx::query_as(query).fetch_all(&pool).await?;
    pool.close().await;
    Ok(rows.into_iter().collect())
}

async fn sums(url: &str, query: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    let pool = AnyPool::connect(url).await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(query).fetch_all(&pool).await?;
    pool.close().await;
    let mut sums = BTreeMap::new();
    for (key, value) in rows {
        *sums.entry(key).or_default() += value;
    }
    Ok(sums)
}
