//! `chaos`: the real binary under process faults, measured by what participants were left with.
//!
//! Starts an API server and `--workers` worker processes on a fresh PostgreSQL database, and
//! one participant with effects (test-support's `EffectsParticipant`: idempotent effects, real
//! undo, tombstones). Starts `--sagas` four-step sagas with a deadline (`--deadline`, 3 s) a
//! few lease TTLs long (`--lease-ttl`, 1 s: a worker taking a saga over often writes a hand-back
//! or a deferral before the deadline passes; with `--lease-ttl 5s` the deadline passes before
//! any takeover), `--rate` a second, each action taking `--step-ms` to answer
//! (so many sagas are mid-step at any moment), and meanwhile SIGKILLs workers (restarted shortly
//! after), freezes them with SIGSTOP past their lease (then SIGCONT: a zombie wakes), restarts
//! them with SIGTERM (they hand their sagas back), makes the participant fail every action for a
//! few seconds (circuits open, attempts are deferred), and terminates database connections.
//! Then waits for every saga to end and reconciles each with the participant's ledger: a
//! COMPENSATED saga must leave no effect standing, a COMPLETED one must leave all four. Also
//! reports the longest history, which shows a claim loop if there is one.
//!
//! ```text
//! cargo build --release -p sagaplane -p test-support
//! target/release/chaos --sagas 1500 --workers 3 --runs 5
//! ```
//! Needs `SAGAPLANE_TEST_DATABASE_URL` (a role that may create databases; scripts/test makes
//! one) and `kill` on the PATH. Exits 1 when any run breaks a guarantee.

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use test_support::{App, EffectsParticipant};

struct Options {
    binary: String,
    sagas: usize,
    workers: usize,
    deadline: String,
    lease_ttl: String,
    runs: usize,
    /// Sagas started per second.
    rate: u64,
    /// How long each action takes to answer, in ms.
    step_ms: u64,
    seed: u64,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        binary: "target/release/sagaplane".into(),
        sagas: 1_500,
        workers: 3,
        deadline: "3s".into(),
        lease_ttl: "1s".into(),
        runs: 1,
        rate: 50,
        step_ms: 200,
        seed: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--binary" => options.binary = value()?,
            "--sagas" => options.sagas = value()?.parse().map_err(|_| "--sagas: a number")?,
            "--workers" => options.workers = value()?.parse().map_err(|_| "--workers: a number")?,
            "--deadline" => options.deadline = value()?,
            "--lease-ttl" => options.lease_ttl = value()?,
            "--runs" => options.runs = value()?.parse().map_err(|_| "--runs: a number")?,
            "--step-ms" => options.step_ms = value()?.parse().map_err(|_| "--step-ms: milliseconds")?,
            "--rate" => options.rate = value()?.parse().map_err(|_| "--rate: sagas a second")?,
            "--seed" => options.seed = value()?.parse().map_err(|_| "--seed: a number")?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if options.workers == 0 || options.sagas == 0 || options.rate == 0 {
        return Err("--workers, --sagas and --rate must be at least 1".into());
    }
    Ok(options)
}

/// What one run found.
#[derive(Default)]
struct Tally {
    completed: usize,
    compensated: usize,
    failed: usize,
    effect_left_standing: Vec<String>,
    effect_missing: Vec<String>,
    longest_history: usize,
    kills: usize,
    freezes: usize,
    connection_kills: usize,
    connection_kill_rounds: usize,
    outages: usize,
    graceful_restarts: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let options = match options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("chaos: {message}");
            std::process::exit(2);
        }
    };
    let mut broken = false;
    for run in 0..options.runs {
        let seed = options.seed.wrapping_add(run as u64);
        let started = Instant::now();
        let tally = one_run(&options, seed).await;
        broken |= !tally.effect_left_standing.is_empty() || !tally.effect_missing.is_empty();
        println!(
            "run {} (seed {seed}, {:.0} s): {} sagas: {} COMPLETED, {} COMPENSATED, {} FAILED; \
             {} COMPENSATED with an effect left standing {:?}; {} COMPLETED with an effect missing {:?}; \
             longest history {} rows; faults: {} SIGKILL, {} SIGSTOP, {} SIGTERM, {} outages, {} connections killed in {} rounds",
            run + 1,
            started.elapsed().as_secs_f64(),
            options.sagas,
            tally.completed,
            tally.compensated,
            tally.failed,
            tally.effect_left_standing.len(),
            tally.effect_left_standing.iter().take(3).collect::<Vec<_>>(),
            tally.effect_missing.len(),
            tally.effect_missing.iter().take(3).collect::<Vec<_>>(),
            tally.longest_history,
            tally.kills,
            tally.freezes,
            tally.graceful_restarts,
            tally.outages,
            tally.connection_kills,
            tally.connection_kill_rounds,
        );
    }
    if broken {
        std::process::exit(1);
    }
}

fn definition(participant: &EffectsParticipant, deadline: &str) -> Value {
    let steps = ["s0", "s1", "s2", "s3"].map(|name| participant.step(name));
    let mut definition = test_support::app::fast_definition(json!(steps));
    definition["timeout"] = json!(deadline);
    definition["defaults"]["compensation_retry"]["max_attempts"] = json!(30);
    definition
}

async fn worker(options: &Options, database_url: &str, slot: usize, generation: usize) -> App {
    let env = [
        ("SAGAPLANE_WORKER_ID", format!("w{slot}.{generation}")),
        ("SAGAPLANE_LEASE_TTL", options.lease_ttl.clone()),
        ("SAGAPLANE_POLL_INTERVAL", "250ms".to_string()),
    ];
    App::spawn_on(&options.binary, database_url, &["worker", "--listen", "127.0.0.1:0"], &env).await
}

fn signal(app: &mut App, name: &str) {
    if let Some(pid) = app.child_mut().id() {
        let _ = std::process::Command::new("kill").args([format!("-{name}"), pid.to_string()]).status();
    }
}

async fn one_run(options: &Options, seed: u64) -> Tally {
    // The faults' choices come from `--seed` (printed, so a run's choices repeat; the timing of
    // real processes does not).
    let mut dice = SmallRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    let database_url = test_support::db::fresh_postgres().await;
    let api = App::spawn_on(&options.binary, &database_url, &["server", "--no-worker"], &[]).await;
    let participant = EffectsParticipant::start().await;
    participant.set_action_delay(Duration::from_millis(options.step_ms));
    let (status, body) = api.put_definition("chaos", &definition(&participant, &options.deadline)).await;
    assert!(status == 201 || status == 200, "definition: {status} {body}");
    let mut workers = Vec::new();
    for slot in 0..options.workers {
        workers.push((worker(options, &database_url, slot, 1).await, 1));
    }
    let admin = sqlx::PgPool::connect(&database_url).await.expect("connect for connection kills");

    // Sagas go in from a task of their own while the faults play here.
    let starter = {
        let api_url = api.url.clone();
        let count = options.sagas;
        let pause = Duration::from_millis(1_000 / options.rate.min(1_000));
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut ids = Vec::new();
            for i in 0..count {
                let response = http
                    .post(format!("{api_url}/v1/sagas"))
                    .bearer_auth(test_support::app::TOKEN)
                    .json(&json!({"definition": "chaos", "input": {"i": i}}))
                    .send()
                    .await;
                if let Ok(response) = response {
                    if let Ok(body) = response.json::<Value>().await {
                        if let Some(id) = body["id"].as_str() {
                            ids.push(id.to_string());
                        }
                    }
                }
                tokio::time::sleep(pause).await;
            }
            ids
        })
    };
    while !starter.is_finished() {
        tokio::time::sleep(Duration::from_millis(300 + dice.random_range(0..700))).await;
        let slot = dice.random_range(0..workers.len() as u64) as usize;
        match dice.random_range(0..5) {
            0 => {
                let (app, generation) = &mut workers[slot];
                signal(app, "KILL");
                let _ = app.child_mut().wait().await;
                tally.kills += 1;
                tokio::time::sleep(Duration::from_millis(200 + dice.random_range(0..1_500))).await;
                let next = *generation + 1;
                workers[slot] = (worker(options, &database_url, slot, next).await, next);
            }
            1 => {
                let (app, _) = &mut workers[slot];
                signal(app, "STOP");
                tally.freezes += 1;
                tokio::time::sleep(Duration::from_millis(1_000 + dice.random_range(0..7_000))).await;
                signal(app, "CONT");
            }
            2 => {
                // The participant fails every action for a while: circuits open, steps and
                // compensations are deferred.
                participant.set_outage(true);
                tally.outages += 1;
                tokio::time::sleep(Duration::from_millis(1_000 + dice.random_range(0..3_000))).await;
                participant.set_outage(false);
            }
            3 => {
                // SIGTERM: the worker hands its sagas back and exits; a new one takes its place.
                let (app, generation) = &mut workers[slot];
                signal(app, "TERM");
                let _ = tokio::time::timeout(Duration::from_secs(30), app.child_mut().wait()).await;
                tally.graceful_restarts += 1;
                let next = *generation + 1;
                workers[slot] = (worker(options, &database_url, slot, next).await, next);
            }
            _ => {
                tally.connection_kill_rounds += 1;
                let killed: Vec<bool> = sqlx::query_scalar(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid() AND random() < 0.5",
                )
                .fetch_all(&admin)
                .await
                .unwrap_or_else(|e| {
                    eprintln!("chaos: killing connections failed: {e}");
                    Vec::new()
                });
                tally.connection_kills += killed.into_iter().filter(|k| *k).count();
            }
        }
    }
    let ids = starter.await.unwrap_or_default();
    for id in &ids {
        let saga = api.wait_terminal(id, Duration::from_secs(600)).await;
        let effects = participant.effects_of(id);
        match saga["status"].as_str() {
            Some("COMPLETED") => {
                tally.completed += 1;
                if effects.len() < 4 || effects.values().any(|e| !e.standing()) {
                    tally.effect_missing.push(id.clone());
                }
            }
            Some("COMPENSATED") => {
                tally.compensated += 1;
                if effects.values().any(|e| e.standing()) {
                    tally.effect_left_standing.push(id.clone());
                }
            }
            _ => tally.failed += 1,
        }
        let (_, _, history) =
            api.send(api.request(reqwest::Method::GET, &format!("/v1/sagas/{id}/events?limit=500"))).await;
        let rows = history["items"].as_array().map_or(0, Vec::len);
        tally.longest_history = tally.longest_history.max(rows);
    }
    admin.close().await;
    tally
}
