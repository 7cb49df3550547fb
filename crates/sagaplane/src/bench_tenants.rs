//! `sagaplane bench-tenants`: the provisioning benchmark. Starts an in-process server (API +
//! worker) on `SAGAPLANE_DATABASE_URL` with its tenant storage, onboards `-n` tenants through
//! `POST /v1/tenants`, `-c` at a time, follows each provisioning saga to its end, and prints
//! tenants/s, start-to-ACTIVE latency and, from the sagas' step timings, where the time went
//! (the slowest step).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub async fn run(args: TenantBenchArgs, config: Config) -> anyhow::Result<ExitCode> {
    if args.count == 0 || args.concurrency == 0 {
        bail!("-n and -c must be positive");
    }
    let database_url =
        config.database_url.clone().context("SAGAPLANE_DATABASE_URL is required (postgres:// for schema mode)")?;
    let store = crate::run::open_and_migrate(&database_url).await?;
    let tenants = crate::run::prepare_tenancy(&config, &database_url, store.as_ref()).await?;
    let hub = saga_runtime::TerminalHub::default();
    let definitions = crate::run::definition_cache(store.clone());
    let instance =
        crate::run::start_instance(&config, store.clone(), definitions.clone(), hub.clone(), None, Some(&tenants));
    let token = crate::run::generate_token();
    let state =
        server::AppState::new(store.clone(), Arc::new(saga_runtime::SystemClock), hub, definitions, None, &token)
            .with_intake(instance.intake())
            .with_tenancy(server::Tenancy {
                storage: tenants.storage.clone(),
                migrations: tenants.migrations.clone(),
                crm_secret: None,
            });
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
    let _ = stop.send(true);
    instance.shutdown().await;
    let _ = server.await;

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
    Ok(if completed == results.len() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
