//! `cargo run -p sim -- --seeds N [--seed S]`: runs seeds S, S+1, … S+N-1 (S defaults to a
//! random one, printed), stops at the first violation and prints its seed and a readable trace;
//! `--seed S` alone replays one seed and prints its whole trace.

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use sim::{run_seed_with, Bugs, RunOptions, StoreBugs};

#[derive(Parser)]
#[command(about = "Deterministic simulation of the Sagaplane engine")]
struct Args {
    /// How many seeds to run.
    #[arg(long)]
    seeds: Option<u64>,
    /// The first seed (alone: replay this one seed and print its trace).
    #[arg(long)]
    seed: Option<u64>,
    /// Runs in parallel (each seed is single-threaded and deterministic on its own).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Re-introduce a known bug, to see the checker find it: unfenced-commits, leases-kept,
    /// skip-ambiguous-compensation, skip-adoption, cap-by-passed-deadline (the last three need
    /// `--features bugs`).
    #[arg(long)]
    bug: Vec<String>,
    /// Store calls and participant requests one run may make before it counts as spinning
    /// (a liveness violation).
    #[arg(long, default_value_t = sim::budget::WORK_MAX)]
    work_max: u64,
    /// Definitions without durable timers and `when:` conditions: the scenario a seed made before
    /// those were simulated (how the older regression seeds replay).
    #[arg(long)]
    no_constructs: bool,
    /// Print the trace of every run, not only of a failing one.
    #[arg(long)]
    verbose: bool,
}

fn bugs(names: &[String]) -> anyhow::Result<Bugs> {
    let mut bugs = Bugs::default();
    for name in names {
        match name.as_str() {
            "unfenced-commits" => bugs.store = StoreBugs { unfenced_commits: true, ..bugs.store },
            "leases-kept" => bugs.store = StoreBugs { leases_kept: true, ..bugs.store },
            "events-of-fenced-commits" => bugs.store = StoreBugs { events_of_fenced_commits: true, ..bugs.store },
            "unfiltered-fan-out" => bugs.store = StoreBugs { unfiltered_fan_out: true, ..bugs.store },
            "early-delivery-claims" => bugs.store = StoreBugs { early_delivery_claims: true, ..bugs.store },
            "skip-ambiguous-compensation" => bugs.skip_ambiguous_compensation = true,
            "skip-adoption" => bugs.skip_adoption = true,
            "cap-by-passed-deadline" => bugs.cap_by_passed_deadline = true,
            other => anyhow::bail!(
                "unknown bug {other:?}: unfenced-commits, leases-kept, events-of-fenced-commits, unfiltered-fan-out, \
                 early-delivery-claims, skip-ambiguous-compensation, skip-adoption, cap-by-passed-deadline"
            ),
        }
    }
    Ok(bugs)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let options = RunOptions { bugs: bugs(&args.bug)?, work_max: args.work_max, constructs: !args.no_constructs };
    if let (Some(seed), None) = (args.seed, args.seeds) {
        let report = run_seed_with(seed, options)?;
        println!("{}", report.explain());
        return finish(&[report]);
    }
    let count = args.seeds.unwrap_or(100);
    let first = args.seed.unwrap_or_else(|| rand::random::<u32>() as u64);
    println!("running {count} seeds from {first} on {} thread(s)", args.threads.max(1));
    let started = Instant::now();
    let next = std::sync::atomic::AtomicU64::new(first);
    let end = first.saturating_add(count);
    // Only totals and failing reports are kept: a passing run's trace is dropped at once (200,000
    // of them once filled 8 GB).
    let totals = std::sync::Mutex::new(Totals::default());
    std::thread::scope(|scope| {
        for _ in 0..args.threads.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if seed >= end {
                    return;
                }
                let report = run_seed_with(seed, options);
                let failed = report.as_ref().map_or(true, |r| !r.passed());
                if let Ok(mut totals) = totals.lock() {
                    totals.add(report, args.verbose);
                }
                if failed {
                    // Stop handing out seeds: the first failure is what matters.
                    next.store(end, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    let totals = totals.into_inner().map_err(|_| anyhow::anyhow!("a run panicked"))?;
    if let Some(error) = totals.error {
        return Err(error).context("a run could not start");
    }
    let elapsed = started.elapsed();
    println!(
        "{} seeds in {:.1} s ({:.0} seeds/s): {} sagas, {} participant requests, {} deliveries ({} delivered, \
         {} webhook requests), {} s simulated; most work in one run: {} (seed {}, budget {})",
        totals.seeds,
        elapsed.as_secs_f64(),
        totals.seeds as f64 / elapsed.as_secs_f64().max(1e-9),
        totals.sagas,
        totals.requests,
        totals.deliveries,
        totals.delivered,
        totals.webhook_requests,
        totals.simulated_ms / 1000,
        totals.busiest.0,
        totals.busiest.1,
        args.work_max,
    );
    finish(&totals.failed)
}

/// What the runs of a many-seed search add up to.
#[derive(Default)]
struct Totals {
    seeds: u64,
    sagas: usize,
    requests: usize,
    deliveries: usize,
    delivered: usize,
    webhook_requests: usize,
    simulated_ms: u64,
    /// The most work one run did, and its seed.
    busiest: (u64, u64),
    failed: Vec<sim::RunReport>,
    error: Option<anyhow::Error>,
}

impl Totals {
    fn add(&mut self, report: anyhow::Result<sim::RunReport>, verbose: bool) {
        let report = match report {
            Ok(report) => report,
            Err(error) => {
                self.error.get_or_insert(error);
                return;
            }
        };
        self.seeds += 1;
        self.sagas += report.sagas;
        self.requests += report.participant_requests;
        self.deliveries += report.deliveries;
        self.delivered += report.delivered;
        self.webhook_requests += report.webhook_requests;
        self.simulated_ms += report.simulated_ms;
        if report.work > self.busiest.0 {
            self.busiest = (report.work, report.seed);
        }
        if verbose {
            println!("{}", report.trace);
        }
        if !report.passed() {
            self.failed.push(report);
        }
    }
}

fn finish(reports: &[sim::RunReport]) -> anyhow::Result<()> {
    let failed: Vec<_> = reports.iter().filter(|r| !r.passed()).collect();
    let Some(first) = failed.iter().min_by_key(|r| r.seed) else {
        println!("no violations");
        return Ok(());
    };
    println!("{}", first.explain());
    eprintln!(
        "seed {} violates {} guarantee(s); replay it with `cargo run -p sim -- --seed {}`",
        first.seed,
        first.violations.len(),
        first.seed
    );
    std::process::exit(1)
}
