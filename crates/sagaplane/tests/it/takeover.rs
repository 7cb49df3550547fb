//! Crash tests on effects: a worker process is SIGKILLed after a participant has done a step's
//! work and before the worker could write anything about it. Whatever happens next — the saga's
//! deadline passes before another worker takes over, or the one that takes over is held back by
//! an open circuit first — every effect that happened is compensated (docs/design.md: "compensation
//! exactly covers what may have happened"), and a participant outage past a saga's deadline
//! does not make the engine claim the saga in a loop.

use std::time::Duration;

use serde_json::{json, Value};
use test_support::effects::Held;
use test_support::{App, Backend, EffectsParticipant};

use crate::BIN;

/// Three HTTP steps against `participant`, each undone by `/undo`, with the saga deadline
/// `timeout`.
fn three_steps(participant: &EffectsParticipant, timeout: &str) -> Value {
    let steps = ["s0", "s1", "s2"].map(|name| participant.step(name));
    let mut definition = test_support::app::fast_definition(json!(steps));
    definition["timeout"] = json!(timeout);
    definition["on_timeout"] = json!("compensate");
    definition
}

/// A worker with a 2 s lease; `extra` adds settings or overrides these (the last value wins).
async fn worker(database_url: &str, name: &str, extra: &[(&str, String)]) -> App {
    let mut env = vec![
        ("SAGAPLANE_WORKER_ID", name.to_string()),
        ("SAGAPLANE_LEASE_TTL", "2s".to_string()),
        ("SAGAPLANE_POLL_INTERVAL", "200ms".to_string()),
    ];
    env.extend(extra.iter().cloned());
    App::spawn_on(BIN, database_url, &["worker", "--listen", "127.0.0.1:0"], &env).await
}

/// Waits for the held action, SIGKILLs `victim` (and waits until it is gone), then lets the
/// participant answer — to nobody. Returns the saga whose action was held.
async fn kill_after_effect(held: &mut tokio::sync::mpsc::UnboundedReceiver<Held>, victim: &mut App) -> String {
    let held = tokio::time::timeout(Duration::from_secs(30), held.recv())
        .await
        .expect("an action of s1 within 30 s")
        .expect("the participant is up");
    victim.child_mut().start_kill().expect("SIGKILL the worker");
    let _ = victim.child_mut().wait().await;
    let _ = held.release.send(());
    held.saga_id
}

/// Every saga ended, and its effects agree with how: a COMPLETED saga's all stand, a
/// COMPENSATED saga's none does.
async fn assert_effects_agree(api: &App, participant: &EffectsParticipant, ids: &[String]) -> Vec<Value> {
    let mut sagas = Vec::new();
    for id in ids {
        let saga = api.wait_terminal(id, Duration::from_secs(60)).await;
        let effects = participant.effects_of(id);
        match saga["status"].as_str() {
            Some("COMPLETED") => assert!(effects.values().all(|e| e.standing()), "{saga}\n{effects:#?}"),
            Some("COMPENSATED") => assert!(
                effects.values().all(|e| !e.standing()),
                "a COMPENSATED saga left an effect in place: {effects:#?}\nhistory: {:#?}",
                api.events(id).await
            ),
            _ => panic!("unexpected end: {saga}"),
        }
        sagas.push(saga);
    }
    sagas
}

fn events_of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// The deadline (1.5 s) is shorter than the time a takeover takes (the 2 s lease): the worker
/// that takes over finds the deadline passed and compensates — the step the killed worker had
/// sent included, though nothing of it was ever written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_worker_was_killed_is_compensated_when_the_deadline_has_passed() {
    let database_url = test_support::db::fresh_postgres().await;
    let api = App::spawn_on(BIN, &database_url, &["server", "--no-worker"], &[]).await;
    let participant = EffectsParticipant::start().await;
    assert_eq!(api.put_definition("charge", &three_steps(&participant, "1500ms")).await.0, 201);
    let mut held = participant.hold_after_effect("s1");
    let mut doomed = worker(&database_url, "worker-a", &[]).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(api.start("charge", json!({"i": i})).await);
    }
    let victim = kill_after_effect(&mut held, &mut doomed).await;
    let _survivor = worker(&database_url, "worker-b", &[]).await;

    let sagas = assert_effects_agree(&api, &participant, &ids).await;
    let saga = sagas.iter().find(|s| s["id"] == victim.as_str()).expect("the victim");
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(saga["error"]["kind"], "timeout", "{saga}");
    let effects = participant.effects_of(&victim);
    assert!(effects["s1"].applied && effects["s1"].undone, "{effects:#?}");
    let events = api.events(&victim).await;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    let assumed = events_of_type(&events, "step_assumed_started");
    assert_eq!(assumed.len(), 1, "{types:?}");
    assert_eq!(assumed[0]["step"], "s1");
    assert_eq!(assumed[0]["worker"], "worker-b");
    let s1_compensated = events.iter().any(|e| e["type"] == "step_compensated" && e["step"] == "s1");
    assert!(s1_compensated, "{types:?}");
}

/// The seed-1007979 shape, with real processes: the worker that takes over cannot run the step
/// (its circuit to the participant is open, an outage began) and writes a deferral before the
/// deadline; when the deadline passes, the step the killed worker had sent must still count as
/// started. The outage also goes on past the deadline with the compensations waiting on the
/// open circuit: the saga waits for it, it is not claimed again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_deferred_by_an_open_circuit_still_compensates_the_step_in_flight() {
    let database_url = test_support::db::fresh_postgres().await;
    let api = App::spawn_on(BIN, &database_url, &["server", "--no-worker"], &[]).await;
    let participant = EffectsParticipant::start().await;
    // The deadline comes after the takeover (worker-a's 4 s lease) and before worker-b's circuit
    // lets a call through again (12 s), so worker-b writes only a deferral before it passes.
    assert_eq!(api.put_definition("charge", &three_steps(&participant, "6s")).await.0, 201);
    let opener = json!({
        "steps": [{
            "name": "probe",
            "action": {"http": {"method": "POST", "url": format!("{}/act", participant.url)}},
            "retry": {"max_attempts": 1},
        }]
    });
    assert_eq!(api.put_definition("opener", &opener).await.0, 201);
    let mut held = participant.hold_after_effect("s1");
    // A longer lease for worker-a: worker-b's circuit opens well before the victim is its.
    let mut doomed = worker(&database_url, "worker-a", &[("SAGAPLANE_LEASE_TTL", "4s".to_string())]).await;
    let victim = api.start("charge", json!({})).await;
    assert_eq!(kill_after_effect(&mut held, &mut doomed).await, victim);
    participant.set_outage(true);
    let breaker = [("SAGAPLANE_BREAKER_FAILURES", "1".to_string()), ("SAGAPLANE_BREAKER_COOLDOWN", "12s".to_string())];
    let _survivor = worker(&database_url, "worker-b", &breaker).await;
    // One failed saga opens worker-b's circuit to the participant before the lease of the
    // victim expires.
    let opened = api.start("opener", json!({})).await;
    api.wait_terminal(&opened, Duration::from_secs(20)).await;
    assert_eq!(api.saga(&victim).await["lease_owner"], "worker-a", "the takeover came before the circuit opened");

    let saga = api.wait_terminal(&victim, Duration::from_secs(60)).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    let effects = participant.effects_of(&victim);
    assert!(effects.values().all(|e| !e.standing()), "{effects:#?}");
    assert!(effects["s1"].undone, "{effects:#?}");
    let events = api.events(&victim).await;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    let first_deferral = types.iter().position(|t| *t == "step_deferred").expect("worker-b deferred s1");
    let timed_out = types.iter().position(|t| *t == "saga_timed_out").expect("the deadline passed");
    assert!(first_deferral < timed_out, "{types:?}");
    let claims = events_of_type(&events, "lease_acquired").len();
    assert!(claims <= 10, "the saga was claimed {claims} times: {types:?}");
}

/// The report's SQLite case: five sagas with a 2 s deadline whose second step's participant
/// answers 503 (its circuit opens; the compensations go to the same host). Each is compensated
/// once the circuit lets a call through, with a short history — before, each wrote hundreds of
/// claim-and-defer rows a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_past_the_deadline_is_waited_out_not_spun_on() {
    let healthy = EffectsParticipant::start().await;
    let failing = EffectsParticipant::start().await;
    failing.set_outage(true);
    let env = [("SAGAPLANE_BREAKER_COOLDOWN", "3s".to_string())];
    let app = App::spawn(BIN, Backend::Sqlite, &env).await;
    let step = |name: &str, participant: &EffectsParticipant| {
        let mut step = participant.step(name);
        step["retry"] = json!({"max_attempts": 20, "initial_interval": "200ms", "multiplier": 1.0});
        step
    };
    let mut definition = test_support::app::fast_definition(json!([step("s0", &healthy), step("s1", &failing)]));
    definition["timeout"] = json!("2s");
    assert_eq!(app.put_definition("outage", &definition).await.0, 201);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.start("outage", json!({"i": i})).await);
    }
    for id in &ids {
        let saga = app.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(saga["status"], "COMPENSATED", "{saga}");
        assert!(healthy.effects_of(id).values().all(|e| !e.standing()));
        let types = app.event_types(id).await;
        assert!(types.len() <= 80, "{} history rows: {types:?}", types.len());
    }
}
