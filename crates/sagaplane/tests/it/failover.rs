//! Failover: Sagaplane on a Patroni pair with synchronous replication behind HAProxy (the
//! topology docs/operations.md "High availability" describes), while sagas run. The leader's
//! postmaster is SIGKILLed, then a planned switchover moves the leader back. After each, sagas
//! resume within 30 s of the new leader; at the end nothing accepted is lost, stuck, committed
//! twice or compensated, and no connection is left on the member in recovery.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use reqwest::Method;
use serde_json::{json, Value};
use sqlx::Connection;
use test_support::ha::{HaPair, Member};
use test_support::{eventually, App, EffectsParticipant};

use crate::BIN;

const SAGAS: usize = 500;
const RESUME_WITHIN_MS: i64 = 30_000;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Starts sagas one after another (a new one every 40 ms) up to `limit`, each with its own
/// idempotency key and retried until accepted, as a client should through a failover.
struct Starter {
    limit: Arc<AtomicUsize>,
    accepted: Arc<Mutex<Vec<String>>>,
    refused: Arc<Mutex<BTreeMap<u16, u32>>>,
}

impl Starter {
    fn start(app: &App) -> Starter {
        let starter = Starter {
            limit: Arc::new(AtomicUsize::new(0)),
            accepted: Arc::new(Mutex::new(Vec::new())),
            refused: Arc::new(Mutex::new(BTreeMap::new())),
        };
        let (limit, accepted, refused) = (starter.limit.clone(), starter.accepted.clone(), starter.refused.clone());
        let (url, http) = (app.url.clone(), app.http.clone());
        tokio::spawn(async move {
            for i in 0..SAGAS {
                while i >= limit.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                loop {
                    let sent = http
                        .post(format!("{url}/v1/sagas"))
                        .bearer_auth(test_support::app::TOKEN)
                        .header("Idempotency-Key", format!("failover-{i}"))
                        .timeout(Duration::from_secs(10))
                        .json(&json!({"definition": "three", "input": {"i": i}}))
                        .send()
                        .await;
                    let status = sent.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
                    if status == 200 || status == 201 {
                        let body: Value = sent.expect("answered").json().await.unwrap_or(Value::Null);
                        if let Some(id) = body["id"].as_str() {
                            lock(&accepted).push(id.to_string());
                            break;
                        }
                    }
                    *lock(&refused).entry(status).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        });
        starter
    }

    fn allow(&self, count: usize) {
        self.limit.store(count, Ordering::SeqCst);
    }

    fn accepted(&self) -> usize {
        lock(&self.accepted).len()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the test watches every 100 ms: who leads (Patroni) and what `/ready` says.
#[derive(Default)]
struct Watch {
    leaders: Vec<(i64, Option<String>)>,
    ready: Vec<(i64, u16, String)>,
}

/// The watcher's thread, stopped and joined when this is dropped: the thread holds a clone of
/// the pair, and the pair's own drop (which stops its processes and removes its directory) only
/// runs once the last clone is gone, so the thread must end before the test does, pass or panic.
struct Watcher {
    seen: Arc<Mutex<Watch>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn watch(pair: Arc<HaPair>, app_url: String) -> Watcher {
    let seen = Arc::new(Mutex::new(Watch::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let record = seen.clone();
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || {
        let port: u16 = app_url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("app port");
        while !stopped.load(Ordering::SeqCst) {
            let leader = pair.leader().map(|m| m.name);
            lock(&record).leaders.push((now_ms(), leader));
            if let Some((status, body)) = test_support::ha::http(port, "GET", "/ready", None) {
                let state =
                    serde_json::from_str::<Value>(&body).ok().and_then(|b| b["status"].as_str().map(str::to_string));
                lock(&record).ready.push((now_ms(), status, state.unwrap_or_default()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    Watcher { seen, stop, thread: Some(thread) }
}

/// When `leader` was first seen leading after `since_ms`.
fn led_from(seen: &Mutex<Watch>, leader: &Member, since_ms: i64) -> Option<i64> {
    lock(seen)
        .leaders
        .iter()
        .find(|(at, name)| *at >= since_ms && name.as_deref() == Some(&leader.name))
        .map(|(at, _)| *at)
}

async fn wait_for_new_leader(pair: &Arc<HaPair>, seen: &Mutex<Watch>, not: &Member, since_ms: i64) -> (Member, i64) {
    let leader =
        eventually("a new leader", Duration::from_secs(90), || async { pair.leader().filter(|leader| leader != not) })
            .await;
    let at = eventually("the watch to see it", Duration::from_secs(10), || async { led_from(seen, &leader, since_ms) })
        .await;
    (leader, at)
}

/// One history event: (saga, kind, step, at).
type Event = (String, String, Option<String>, i64);

/// For one fault: the first step that succeeded after the new leader appeared (the pause a
/// user sees), and the longest any saga in flight waited past the new leader's start.
fn resume_after(events: &[Event], fault_ms: i64, leader_ms: i64) -> (i64, i64) {
    let first = events
        .iter()
        .filter(|(_, kind, _, at)| kind == "step_succeeded" && *at >= leader_ms)
        .map(|(_, _, _, at)| *at)
        .min()
        .expect("a step succeeded after the new leader");
    let mut longest = 0;
    for pair in events.windows(2) {
        let ((saga, _, _, before), (next_saga, _, _, after)) = (&pair[0], &pair[1]);
        if saga == next_saga && *before < leader_ms && *after >= leader_ms {
            longest = longest.max(after - leader_ms);
        }
    }
    (first - fault_ms, longest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sagas_run_through_a_failover_and_a_switchover() {
    let pair = Arc::new(tokio::task::spawn_blocking(|| HaPair::start("sagaplane_it_ha")).await.expect("the pair"));
    pair.psql("CREATE ROLE sagaplane LOGIN CREATEDB CREATEROLE PASSWORD 'sagaplane'");
    pair.psql("CREATE DATABASE sagaplane OWNER sagaplane");
    let url = format!("postgres://sagaplane:sagaplane@127.0.0.1:{}/sagaplane", pair.port);
    let participant = EffectsParticipant::start().await;
    participant.set_action_delay(Duration::from_millis(100));
    let app = App::spawn_on(BIN, &url, &["server"], &[]).await;
    let three = json!({
        "defaults": {
            "timeout": "10s",
            "retry": {"max_attempts": 20, "initial_interval": "100ms", "multiplier": 2.0, "max_interval": "1s", "jitter": 0.0},
        },
        "steps": [participant.step("a"), participant.step("b"), participant.step("c")],
    });
    assert_eq!(app.put_definition("three", &three).await.0, 201);
    let mut watcher = watch(pair.clone(), app.url.clone());
    let seen = watcher.seen.clone();
    let starter = Starter::start(&app);

    // The leader's postmaster dies while sagas run.
    starter.allow(200);
    eventually("150 sagas started", Duration::from_secs(60), || async { (starter.accepted() >= 150).then_some(()) })
        .await;
    let first_leader = pair.leader().expect("a leader");
    let killed_ms = now_ms();
    pair.kill_postmaster(&first_leader);
    let (second_leader, second_ms) = wait_for_new_leader(&pair, &seen, &first_leader, killed_ms).await;
    println!("failover: {} killed, {} leads {} ms later", first_leader.name, second_leader.name, second_ms - killed_ms);

    // The old leader rejoins as the synchronous standby; then a planned switchover back to it.
    starter.allow(350);
    tokio::task::spawn_blocking({
        let pair = pair.clone();
        move || pair.wait_healthy(Duration::from_secs(120))
    })
    .await
    .expect("healthy again");
    eventually("250 sagas started", Duration::from_secs(90), || async { (starter.accepted() >= 250).then_some(()) })
        .await;
    let switched_ms = now_ms();
    let (status, body) = pair.switchover(&second_leader, &first_leader);
    assert_eq!(status, 200, "switchover: {body}");
    let (third_leader, third_ms) = wait_for_new_leader(&pair, &seen, &second_leader, switched_ms).await;
    assert_eq!(third_leader, first_leader);
    println!("switchover: {} leads {} ms after it was asked", third_leader.name, third_ms - switched_ms);

    starter.allow(SAGAS);
    eventually("every saga started", Duration::from_secs(120), || async {
        (starter.accepted() == SAGAS).then_some(())
    })
    .await;
    let ids = lock(&starter.accepted).clone();
    for id in &ids {
        let saga = app.wait_terminal(id, Duration::from_secs(120)).await;
        assert_eq!(saga["status"], "COMPLETED", "{saga}");
    }
    watcher.stop();

    // Nothing lost or started twice: one saga per idempotency key, each accepted id there.
    let mut db = sqlx::PgConnection::connect(&url).await.expect("connect");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas").fetch_one(&mut db).await.expect("count");
    assert_eq!(stored as usize, SAGAS, "one saga per idempotency key");
    // Nothing committed twice past fencing: each step succeeded once in each history.
    let rows: Vec<(uuid::Uuid, String, Option<String>, i64)> =
        sqlx::query_as("SELECT saga_id, kind, step, at FROM saga_events ORDER BY saga_id, seq")
            .fetch_all(&mut db)
            .await
            .expect("history");
    let events: Vec<Event> = rows.into_iter().map(|(id, kind, step, at)| (id.to_string(), kind, step, at)).collect();
    let mut succeeded: BTreeMap<(String, String), u32> = BTreeMap::new();
    for (saga, kind, step, _) in &events {
        if kind == "step_succeeded" {
            *succeeded.entry((saga.clone(), step.clone().unwrap_or_default())).or_default() += 1;
        }
    }
    assert_eq!(succeeded.len(), SAGAS * 3, "every step of every saga succeeded");
    assert!(succeeded.values().all(|n| *n == 1), "a step committed twice: {succeeded:?}");
    // No compensation, every effect standing once.
    let effects = participant.effects();
    for id in &ids {
        for step in ["a", "b", "c"] {
            let effect = effects.get(&(id.clone(), step.to_string())).cloned().unwrap_or_default();
            assert!(effect.standing() && effect.compensations == 0, "{id}/{step}: {effect:?}");
        }
    }
    let resent = events.iter().filter(|(_, kind, _, _)| kind == "step_assumed_started").count();
    let actions: u32 = effects.values().map(|e| e.actions).sum();

    // Sagas resumed within 30 s of each new leader.
    for (what, fault_ms, leader_ms) in [("failover", killed_ms, second_ms), ("switchover", switched_ms, third_ms)] {
        let (pause, longest) = resume_after(&events, fault_ms, leader_ms);
        println!("{what}: the first step succeeded {pause} ms after the fault; the longest wait past the new leader was {longest} ms");
        assert!(longest <= RESUME_WITHIN_MS, "{what}: a saga waited {longest} ms past the new leader");
    }
    println!("{resent} attempts were sent again after an unknown outcome; {actions} actions for {} steps", SAGAS * 3);
    println!("refused starts, by status (0 = no answer): {:?}", lock(&starter.refused));

    // /ready said so while no primary could be written, and is back.
    let ready = std::mem::take(&mut lock(&seen).ready);
    let not_ready: Vec<_> = ready.iter().filter(|(_, status, _)| *status == 503).collect();
    assert!(!not_ready.is_empty(), "/ready never answered 503 during the failover");
    assert!(
        not_ready.iter().all(|(_, _, state)| state == "store_unavailable" || state == "no_writable_primary"),
        "{not_ready:?}"
    );
    let (status, _, body) = app.send(app.request(Method::GET, "/ready")).await;
    assert_eq!(status, 200, "{body}");
    // No Sagaplane connection stays on the member now in recovery.
    let standby = pair.members.iter().find(|m| **m != third_leader).expect("the standby");
    let on_standby = pair
        .psql_at(standby.pg_port, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE usename = 'sagaplane'")
        .expect("ask the standby");
    assert_eq!(on_standby.trim(), "0", "connections left on the standby");
}
