//! Claim latency against a growing backlog of parked sagas (docs/design.md: "claim latency flat
//! with 1,000,000 sagas waiting"). A benchmark, not a test: it prints numbers.
//!
//! ```sh
//! cargo run --release -p store-postgres --example claim_backlog -- \
//!     postgres://sagaplane:sagaplane@127.0.0.1:5432/sagaplane_backlog [MAX_PARKED]
//! ```
//!
//! With a third argument `cleaner`, it then adds 1,000,000 finished sagas (4 history rows each)
//! past a one-day retention and times claims of one due saga while the cleaner's batches delete
//! them (500 a batch, 250 ms apart, as `saga_runtime::retention` paces them; `CLEANER_BATCH=N`
//! for N a batch, N/2 ms apart: the same rate) and while nothing
//! deletes, alternating — claim latency beside the cleaner.
//!
//! Use an empty database: it is migrated, then filled with parked sagas in steps (0, 10k, 100k,
//! 1M by default) — `EXECUTING`, no lease, due at `RUN_AT_NEVER_MS`, as a saga waiting on a signal
//! or callback with no deadline is stored. At each size it times, through the `Store` trait,
//! 200 idle claims (nothing due: what every poll and wake-up costs) and 200 claims of one freshly
//! created due saga.

use std::time::{Duration, Instant};

use saga_store::prelude::*;
use saga_store::{ClaimParams, RetentionStore, SagaCreate, SagaCreated, RUN_AT_NEVER_MS};
use store_postgres::PostgresStore;

const ROUNDS: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().or_else(|| std::env::var("SAGAPLANE_DATABASE_URL").ok()).ok_or(
        "usage: claim_backlog POSTGRES_URL [MAX_PARKED] (or set SAGAPLANE_DATABASE_URL); use an empty database",
    )?;
    let max: i64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000_000);
    let cleaner = args.next().as_deref() == Some("cleaner");
    tokio::runtime::Runtime::new()?.block_on(async {
        run(&url, max).await?;
        if cleaner {
            beside_cleaner(&url).await?;
        }
        Ok(())
    })
}

async fn run(url: &str, max: i64) -> Result<(), Box<dyn std::error::Error>> {
    let store = PostgresStore::connect(url, 4).await?;
    store.migrate(now_ms()).await?;
    let seeder = sqlx::PgPool::connect(url).await?;
    let document = serde_json::json!({"steps": [
        {"name": "a", "action": {"builtin": "core.echo"}},
        {"name": "approval", "action": {"signal": {"name": "approved"}}},
        {"name": "c", "action": {"builtin": "core.echo"}},
    ]});
    store.definition_put("backlog", &document, now_ms()).await?;
    let definition = saga_core::validate_definition("backlog", &document, &["core.echo"])
        .map_err(|errors| format!("benchmark definition: {errors:?}"))?;
    let mut parked_state = saga_core::SagaState::new(&definition);
    parked_state.status = saga_core::SagaStatus::Executing;
    let parked_state = serde_json::to_string(&parked_state)?;

    println!("| parked sagas | idle claim p50 ms | p99 ms | claim of one due saga p50 ms | p99 ms |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    let mut parked = 0i64;
    for size in [0i64, 10_000, 100_000, 1_000_000].into_iter().filter(|s| *s <= max) {
        if size > parked {
            let started = Instant::now();
            sqlx::query(
                "INSERT INTO sagas (id, definition, version, status, input, state, priority, run_at, \
                                    fencing_token, event_seq, created_at, updated_at) \
                 SELECT gen_random_uuid(), 'backlog', 1, 'EXECUTING', '{}'::jsonb, $1::json, 0, $2, 1, 3, $3, $3 \
                 FROM generate_series($4::bigint, $5::bigint)",
            )
            .bind(&parked_state)
            .bind(RUN_AT_NEVER_MS)
            .bind(now_ms())
            .bind(parked + 1)
            .bind(size)
            .execute(&seeder)
            .await?;
            sqlx::query("ANALYZE sagas").execute(&seeder).await?;
            eprintln!("parked {} more sagas in {:.1?}", size - parked, started.elapsed());
            parked = size;
        }
        let claim =
            |limit: u32| ClaimParams { worker_id: "bench".into(), limit, now_ms: now_ms(), lease_ttl_ms: 600_000 };
        let mut idle = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let started = Instant::now();
            let claimed = store.saga_claim_due(&claim(64)).await?;
            idle.push(started.elapsed());
            if !claimed.is_empty() {
                return Err(format!("an idle claim found {} sagas", claimed.len()).into());
            }
        }
        let mut due = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let state = saga_core::SagaState::new(&definition);
            let params = SagaCreate::new("backlog", 1, serde_json::json!({}), state, now_ms());
            let SagaCreated::Created(created) = saga_store::creates::create_one(&store, params).await? else {
                return Err("the due saga was not created".into());
            };
            let started = Instant::now();
            let claimed = store.saga_claim_due(&claim(1)).await?;
            due.push(started.elapsed());
            if claimed.first().map(|c| c.record.id) != Some(created.id) {
                return Err("the claim did not return the due saga".into());
            }
        }
        idle.sort();
        due.sort();
        println!(
            "| {size} | {:.2} | {:.2} | {:.2} | {:.2} |",
            percentile(&idle, 0.5),
            percentile(&idle, 0.99),
            percentile(&due, 0.5),
            percentile(&due, 0.99)
        );
    }
    Ok(())
}

/// Claims of one due saga while the cleaner deletes a backlog of 1,000,000 finished sagas, and
/// while nothing deletes, alternating.
async fn beside_cleaner(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let store = std::sync::Arc::new(PostgresStore::connect(url, 4).await?);
    let seeder = sqlx::PgPool::connect(url).await?;
    let document = serde_json::json!({"steps": [{"name": "a", "action": {"builtin": "core.echo"}}]});
    let definition = saga_core::validate_definition("backlog", &document, &["core.echo"])
        .map_err(|errors| format!("benchmark definition: {errors:?}"))?;
    // The cleaner's batch (500 unless CLEANER_BATCH says otherwise), to compare sizes.
    let batch: u32 = std::env::var("CLEANER_BATCH").ok().and_then(|b| b.parse().ok()).unwrap_or(500);
    let finished_at = now_ms() - 40 * 24 * 3_600_000;
    let started = Instant::now();
    sqlx::query(
        "WITH s AS (INSERT INTO sagas (id, definition, version, status, input, state, priority, run_at, fencing_token, \
                                      event_seq, created_at, updated_at, completed_at) \
                    SELECT gen_random_uuid(), 'backlog', 1, 'COMPLETED', '{}'::jsonb, '{}'::json, 0, $1, 1, 4, $1, $1, $1 \
                    FROM generate_series(1, 1000000) RETURNING id) \
         INSERT INTO saga_events (saga_id, seq, kind, data, at) \
         SELECT s.id, n, 'step_succeeded', '{}'::jsonb, $1 FROM s, generate_series(1, 4) n",
    )
    .bind(finished_at)
    .execute(&seeder)
    .await?;
    sqlx::query("ANALYZE sagas").execute(&seeder).await?;
    eprintln!("1,000,000 finished sagas in {:.1?}", started.elapsed());
    println!();
    println!("| round | cleaner | claim of one due saga p50 ms | p99 ms | deleted meanwhile |");
    println!("| ---: | --- | ---: | ---: | ---: |");
    for round in 1..=3 {
        for deleting in [true, false] {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let cleaner = deleting.then(|| {
                let (store, stop) = (store.clone(), stop.clone());
                let pause = Duration::from_millis(u64::from(batch) / 2);
                tokio::spawn(async move {
                    let mut deleted = 0;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        match store.sagas_purge(now_ms(), 24 * 3_600_000, batch).await {
                            Ok(purged) => deleted += purged.sagas,
                            Err(e) => eprintln!("purge: {e}"),
                        }
                        tokio::time::sleep(pause).await;
                    }
                    deleted
                })
            });
            let mut due = Vec::with_capacity(ROUNDS * 2);
            for _ in 0..ROUNDS * 2 {
                let params = SagaCreate::new(
                    "backlog",
                    1,
                    serde_json::json!({}),
                    saga_core::SagaState::new(&definition),
                    now_ms(),
                );
                let SagaCreated::Created(created) = saga_store::creates::create_one(store.as_ref(), params).await?
                else {
                    return Err("the due saga was not created".into());
                };
                let claim =
                    ClaimParams { worker_id: "bench".into(), limit: 1, now_ms: now_ms(), lease_ttl_ms: 600_000 };
                let started = Instant::now();
                let claimed = store.saga_claim_due(&claim).await?;
                due.push(started.elapsed());
                if claimed.first().map(|c| c.record.id) != Some(created.id) {
                    return Err("the claim did not return the due saga".into());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let deleted = match cleaner {
                Some(task) => task.await?,
                None => 0,
            };
            due.sort();
            println!(
                "| {round} | {} | {:.2} | {:.2} | {deleted} |",
                if deleting { "deleting" } else { "idle" },
                percentile(&due, 0.5),
                percentile(&due, 0.99)
            );
        }
    }
    Ok(())
}
