//! `sagaplane bench-tenants`: the provisioning benchmark. Starts an in-process server (API +
//! worker) on `SAGAPLANE_DATABASE_URL` with its tenant storage, onboards `-n` tenants through
//! `POST /v1/tenants`, `-c` at a time, follows each provisioning saga to its end, and prints
//! tenants/s, start-to-ACTIVE latency and, from the sagas' step timings, where the time went
//! (the slowest step). With `--rollout`, the tenants get a migrations folder of the benchmark's
//! own; once they are onboarded a second file is added and rolled out to all of them, and the
//! time to the rollout's answer and to its end is printed.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

use crate::bench::percentile;
use crate::config::Config;

#[derive(Args, Debug)]
pub struct TenantBenchArgs {
    /// Tenants to provision.
    #[arg(short = 'n', long, default_value_t = 100)]
    count: usize,
    /// Provisionings kept outstanding.
    #[arg(short = 'c', long, default_value_t = 16)]
    concurrency: usize,
    /// Tier of every tenant: bridge (schema mode), silo (database), pooled.
    #[arg(long, default_value = "bridge")]
    tier: String,
    /// Then roll a new migration out to every tenant, this many at a time.
    #[arg(long)]
    rollout: Option<u32>,
}

struct Run {
    client: reqwest::Client,
    base: String,
    token: String,
    prefix: String,
    tier: String,
    next: AtomicUsize,
    count: usize,
}

impl Run {
    async fn one(&self, n: usize) -> anyhow::Result<(String, String, Duration)> {
        let started = Instant::now();
        let id = format!("{}-{n}", self.prefix);
        let body = json!({"id": id, "name": format!("Bench tenant {n}"), "tier": self.tier});
        let response =
            self.client.post(format!("{}/v1/tenants", self.base)).bearer_auth(&self.token).json(&body).send().await?;
        if response.status().as_u16() != 202 {
            let status = response.status();
            bail!("onboarding {id}: {status} {}", response.text().await.unwrap_or_default());
        }
        let created: Value = response.json().await?;
        let saga_id = created["saga_id"].as_str().context("no saga id")?.to_string();
        loop {
            let saga: Value = self
                .client
                .get(format!("{}/v1/sagas/{saga_id}?wait=30s", self.base))
                .bearer_auth(&self.token)
                .send()
                .await?
                .json()
                .await?;
            if let Some(status @ ("COMPLETED" | "COMPENSATED" | "FAILED")) = saga["status"].as_str() {
                return Ok((saga_id, status.to_string(), started.elapsed()));
            }
        }
    }
}

fn ms(text: &Value) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text.as_str()?).ok().map(|t| t.timestamp_millis())
}

pub async fn run(args: TenantBenchArgs, config: Config) -> anyhow::Result<ExitCode> {
    if args.count == 0 || args.concurrency == 0 {
        bail!("-n and -c must be positive");
    }
    let database_url =
        config.database_url.clone().context("SAGAPLANE_DATABASE_URL is required (postgres:// for schema mode)")?;
    let mut config = config;
    let rollout_dir = match args.rollout {
        Some(_) => {
            let dir = std::env::temp_dir().join(format!("sagaplane-bench-rollout-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(dir.join("bench"))?;
            std::fs::write(dir.join("bench/0001_create_items.sql"), "CREATE TABLE items (id BIGINT PRIMARY KEY);")?;
            config.tenant_migrations_dir = Some(dir.clone());
            Some(dir)
        }
        None => None,
    };
    let parts = crate::run::Parts { tenancy: true, worker: true, dispatcher: false };
    let app = crate::run::App::build(&config, &database_url, parts, None).await?;
    let token = crate::run::generate_token();
    let state = app.state(&config, &token, None);
    let tenants = app.tenants.clone().context("the tenant parts")?;
    let store = app.store.clone();
    let migrations = tenants.migrations.migrations(None)?.len();
    let (base, stop, server) = crate::bench::serve_on_loopback(state).await?;
    let run = Arc::new(Run {
        client: reqwest::Client::builder().pool_max_idle_per_host(args.concurrency * 2).build()?,
        base,
        token,
        prefix: format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]),
        tier: args.tier.clone(),
        next: AtomicUsize::new(0),
        count: args.count,
    });
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let run = run.clone();
        tasks.spawn(async move {
            let mut done = Vec::new();
            loop {
                let n = run.next.fetch_add(1, Ordering::SeqCst);
                if n >= run.count {
                    return Ok::<_, anyhow::Error>(done);
                }
                done.push(run.one(n).await?);
            }
        });
    }
    let mut results = Vec::with_capacity(args.count);
    while let Some(joined) = tasks.join_next().await {
        results.extend(joined.context("bench task panicked")??);
    }
    let elapsed = started.elapsed();
    // Where the time went: each step's duration, from the provisioning sagas' step timings.
    let mut steps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (saga_id, _, _) in &results {
        let saga: Value = run
            .client
            .get(format!("{}/v1/sagas/{saga_id}", run.base))
            .bearer_auth(&run.token)
            .send()
            .await?
            .json()
            .await?;
        for step in saga["steps"].as_array().into_iter().flatten() {
            if let (Some(start), Some(end)) = (ms(&step["started_at"]), ms(&step["finished_at"])) {
                steps.entry(step["name"].as_str().unwrap_or("").to_string()).or_default().push((end - start) as f64);
            }
        }
    }
    let rolled = match (&rollout_dir, args.rollout) {
        (Some(dir), Some(concurrency)) => Some(roll_out(&run, dir, concurrency).await?),
        _ => None,
    };
    let _ = stop.send(true);
    app.shutdown().await;
    let _ = server.await;
    if let Some(dir) = &rollout_dir {
        let _ = std::fs::remove_dir_all(dir);
    }

    let mut latencies: Vec<f64> = results.iter().map(|(_, _, d)| d.as_secs_f64() * 1000.0).collect();
    latencies.sort_by(f64::total_cmp);
    let completed = results.iter().filter(|(_, s, _)| s == "COMPLETED").count();
    let rate = results.len() as f64 / elapsed.as_secs_f64();
    println!(
        "provisioned {} {} tenants ({} migrations each) on {} in {:.2}s, c={}",
        results.len(),
        args.tier,
        migrations,
        store.backend_name(),
        elapsed.as_secs_f64(),
        args.concurrency
    );
    println!("  tenants/s    {rate:.1}");
    println!(
        "  latency ms   p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}",
        percentile(&latencies, 50.0),
        percentile(&latencies, 95.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(0.0)
    );
    println!("  completed    {completed} of {}", results.len());
    println!("  step         mean ms   p50 ms   p99 ms   max ms");
    let mut slowest = (String::new(), 0.0);
    for (name, durations) in &mut steps {
        durations.sort_by(f64::total_cmp);
        let mean = durations.iter().sum::<f64>() / durations.len().max(1) as f64;
        if mean > slowest.1 {
            slowest = (name.clone(), mean);
        }
        println!(
            "  {name:<12} {mean:>7.1} {:>8.1} {:>8.1} {:>8.1}",
            percentile(durations, 50.0),
            percentile(durations, 99.0),
            durations.last().copied().unwrap_or(0.0)
        );
    }
    println!("  slowest step {} (mean {:.1} ms)", slowest.0, slowest.1);
    println!(
        "RESULT workload=provision tier={} backend={} n={} c={} tenants_per_s={rate:.1} p50_ms={:.1} p99_ms={:.1} slowest_step={}",
        args.tier,
        store.backend_name(),
        results.len(),
        args.concurrency,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        slowest.0
    );
    let mut rolled_out_all = true;
    if let Some(rolled) = rolled {
        println!(
            "rolled a migration out to {} of {} tenants in {:.2}s ({:.1} tenants/s): answered in {:.0} ms, \
             every tenant saga started after {:.2}s",
            rolled.completed,
            rolled.total,
            rolled.done.as_secs_f64(),
            rolled.total as f64 / rolled.done.as_secs_f64(),
            rolled.answered.as_secs_f64() * 1000.0,
            rolled.fanned_out.as_secs_f64()
        );
        println!(
            "RESULT workload=rollout backend={} n={} c={} answer_ms={:.0} fan_out_s={:.2} done_s={:.2}",
            store.backend_name(),
            rolled.total,
            args.rollout.unwrap_or_default(),
            rolled.answered.as_secs_f64() * 1000.0,
            rolled.fanned_out.as_secs_f64(),
            rolled.done.as_secs_f64()
        );
        rolled_out_all = rolled.completed == results.len() as u64;
    }
    Ok(if completed == results.len() && rolled_out_all { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What a rollout over the benchmark's tenants took.
struct Rolled {
    answered: Duration,
    fanned_out: Duration,
    done: Duration,
    total: u64,
    completed: u64,
}

/// Adds a migration, rolls it out and follows the rollout to its end.
async fn roll_out(run: &Run, dir: &std::path::Path, concurrency: u32) -> anyhow::Result<Rolled> {
    std::fs::write(dir.join("bench/0002_add_label.sql"), "ALTER TABLE items ADD COLUMN label TEXT;")?;
    let started = Instant::now();
    let response = run
        .client
        .post(format!("{}/v1/migrations/rollout", run.base))
        .bearer_auth(&run.token)
        .json(&json!({"concurrency": concurrency}))
        .send()
        .await?;
    let answered = started.elapsed();
    if response.status().as_u16() != 202 {
        let status = response.status();
        bail!("rollout: {status} {}", response.text().await.unwrap_or_default());
    }
    let accepted: Value = response.json().await?;
    let rollout_id = accepted["rollout_id"].as_str().context("no rollout id")?.to_string();
    let mut fanned_out = None;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let progress: Value = run
            .client
            .get(format!("{}/v1/migrations/rollouts/{rollout_id}", run.base))
            .bearer_auth(&run.token)
            .send()
            .await?
            .json()
            .await?;
        if fanned_out.is_none() && progress["fan_out"]["status"] == json!("COMPLETED") {
            fanned_out = Some(started.elapsed());
        }
        if progress["done"] == json!(true) {
            return Ok(Rolled {
                answered,
                fanned_out: fanned_out.unwrap_or_else(|| started.elapsed()),
                done: started.elapsed(),
                total: progress["total"].as_u64().unwrap_or(0),
                completed: progress["statuses"]["COMPLETED"].as_u64().unwrap_or(0),
            });
        }
    }
}
