//! Crash test: two `sagaplane worker` processes on one PostgreSQL database; one is SIGKILLed
//! mid-run. Every saga still completes, the survivor takes the dead worker's sagas over within
//! about one lease TTL, and the history shows it.

use std::time::{Duration, SystemTime};

use serde_json::json;
use test_support::app::fast_definition;
use test_support::{eventually, App};

use crate::BIN;

const LEASE_TTL: Duration = Duration::from_secs(2);

async fn worker(database_url: &str, name: &str) -> App {
    App::spawn_on(
        BIN,
        database_url,
        &["worker", "--listen", "127.0.0.1:0"],
        &[
            ("SAGAPLANE_WORKER_ID", name.to_string()),
            ("SAGAPLANE_LEASE_TTL", "2s".to_string()),
            ("SAGAPLANE_WORKER_CONCURRENCY", "4".to_string()),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_sagas_are_taken_over() {
    let database_url = test_support::db::fresh_postgres().await;
    let api = App::spawn_on(BIN, &database_url, &["server", "--no-worker"], &[]).await;
    let mut doomed = worker(&database_url, "worker-a").await;
    let survivor = worker(&database_url, "worker-b").await;
    let slow = |name: &str| json!({"name": name, "action": {"builtin": "core.sleep", "input": {"duration": "600ms"}}, "compensation": {"builtin": "core.echo"}});
    let definition = fast_definition(json!([slow("one"), slow("two"), slow("three")]));
    assert_eq!(api.put_definition("slow", &definition).await.0, 201);
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(api.start("slow", json!({"i": i})).await);
    }
    // Wait until worker-a is mid-run on at least one saga, then kill it without warning.
    let victims: Vec<String> = eventually("worker-a to hold a lease", Duration::from_secs(20), || async {
        let mut held = Vec::new();
        for id in &ids {
            let saga = api.saga(id).await;
            if saga["lease_owner"] == "worker-a" && saga["status"] == "EXECUTING" {
                held.push(id.clone());
            }
        }
        (!held.is_empty()).then_some(held)
    })
    .await;
    doomed.child_mut().start_kill().expect("SIGKILL worker-a");
    let killed_at = SystemTime::now();
    let _ = doomed.child_mut().wait().await;

    for id in &ids {
        let saga = api.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(saga["status"], "COMPLETED", "{saga}");
    }
    for id in &victims {
        let events = api.events(id).await;
        let takeover = events
            .iter()
            .find(|e| {
                e["type"] == "lease_acquired" && e["worker"] == "worker-b" && e["data"]["previous_owner"] == "worker-a"
            })
            .unwrap_or_else(|| panic!("no takeover by worker-b in the history of {id}: {events:#?}"));
        assert_eq!(takeover["data"]["takeover"], true);
        let at = chrono_ms(takeover["at"].as_str().expect("at"));
        let killed_ms = killed_at.duration_since(SystemTime::UNIX_EPOCH).expect("time").as_millis() as i64;
        let delay = Duration::from_millis((at - killed_ms).max(0) as u64);
        assert!(
            delay <= LEASE_TTL + Duration::from_millis(2_500),
            "takeover took {delay:?}, lease TTL is {LEASE_TTL:?}"
        );
    }
    let metrics = survivor
        .http
        .get(format!("{}/metrics", survivor.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("saga_lease_takeover_total"), "{metrics}");
}

/// Milliseconds since the epoch of an RFC 3339 UTC timestamp `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn chrono_ms(text: &str) -> i64 {
    let parse = |range: std::ops::Range<usize>| text.get(range).and_then(|s| s.parse::<i64>().ok()).expect("timestamp");
    let (year, month, day) = (parse(0..4), parse(5..7), parse(8..10));
    let (hour, minute, second, milli) = (parse(11..13), parse(14..16), parse(17..19), parse(20..23));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + milli
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_hands_back_leases() {
    let database_url = test_support::db::fresh_postgres().await;
    let api = App::spawn_on(BIN, &database_url, &["server", "--no-worker"], &[]).await;
    let mut first = worker(&database_url, "worker-a").await;
    let slow = |name: &str| json!({"name": name, "action": {"builtin": "core.sleep", "input": {"duration": "700ms"}}});
    api.put_definition("slow", &fast_definition(json!([slow("one"), slow("two"), slow("three")]))).await;
    let id = api.start("slow", json!({})).await;
    eventually("worker-a to hold the saga", Duration::from_secs(20), || async {
        let saga = api.saga(&id).await;
        (saga["lease_owner"] == "worker-a").then_some(())
    })
    .await;
    let pid = first.child_mut().id().expect("pid");
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), first.child_mut().wait())
        .await
        .expect("drained in time")
        .expect("exit");
    assert!(exit.success(), "SIGTERM must exit 0, got {exit:?}");
    let saga = api.saga(&id).await;
    assert_eq!(saga["lease_owner"], serde_json::Value::Null, "lease handed back: {saga}");
    assert_ne!(saga["status"], "COMPLETED", "the saga was mid-run");
    let _second = worker(&database_url, "worker-b").await;
    let saga = api.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    let events = api.events(&id).await;
    let resumed =
        events.iter().find(|e| e["type"] == "lease_acquired" && e["worker"] == "worker-b").expect("worker-b resumed");
    assert_eq!(resumed["data"]["takeover"], false, "a handed-back lease is not a takeover: {resumed}");
}

/// An idle worker elsewhere starts a new saga on NOTIFY, not on its (here: one-minute) poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_worker_is_woken_by_notify() {
    let database_url = test_support::db::fresh_postgres().await;
    let api = App::spawn_on(BIN, &database_url, &["server", "--no-worker"], &[]).await;
    let _idle = App::spawn_on(
        BIN,
        &database_url,
        &["worker", "--listen", "127.0.0.1:0"],
        &[("SAGAPLANE_WORKER_ID", "idle".to_string()), ("SAGAPLANE_POLL_INTERVAL", "60s".to_string())],
    )
    .await;
    api.put_definition("echo", &fast_definition(json!([{"name": "e", "action": {"builtin": "core.echo"}}]))).await;
    // Let the worker's first poll pass so it is idle, waiting for a notification.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let id = api.start("echo", json!({})).await;
        let saga = api.wait_terminal(&id, Duration::from_secs(20)).await;
        assert_eq!(saga["status"], "COMPLETED", "{saga}");
    }
}
