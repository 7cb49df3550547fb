//! Bulk actions: one call acts on every saga (or delivery) a filter matches — counted first with
//! `dry_run`, then run as a durable job whose progress `GET /v1/jobs/{id}` shows — and a job
//! acts on each item exactly once, even when the instance running it is killed halfway.

use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::fast_definition;
use test_support::{eventually, App, Backend};

use crate::BIN;

/// POSTs a bulk request; its status and body.
async fn act(app: &App, path: &str, body: Value) -> (u16, Value) {
    let (status, _, answer) = app.send(app.request(Method::POST, path).json(&body)).await;
    (status, answer)
}

/// Waits until job `id` has finished; the job.
async fn finished(app: &App, id: &str, timeout: Duration) -> Value {
    eventually(&format!("job {id} finished"), timeout, || async {
        let (status, _, job) = app.send(app.request(Method::GET, &format!("/v1/jobs/{id}"))).await;
        (status == 200 && job["status"] != "running").then_some(job)
    })
    .await
}

/// Starts `n` sagas of `definition`, 32 at a time; their ids.
async fn start_many(app: &App, definition: &str, n: usize) -> Vec<String> {
    futures::stream::iter(0..n)
        .map(|i| async move { app.start(definition, json!({"i": i})).await })
        .buffer_unordered(32)
        .collect()
        .await
}

fn failing() -> Value {
    fast_definition(json!([
        {"name": "ok", "action": {"builtin": "core.echo"}},
        {"name": "broken", "action": {"builtin": "core.fail", "input": {"message": "ledger unreachable"}}, "on_failure": "fail"}
    ]))
}

async fn sagas_are_cancelled_retried_and_signalled_by_filter(backend: Backend) {
    let app = App::spawn(BIN, backend, &[]).await;
    assert_eq!(app.put_definition("broken", &failing()).await.0, 201);
    let waiting = fast_definition(json!([{"name": "approve", "action": {"signal": {"name": "approval"}}}]));
    assert_eq!(app.put_definition("waiting", &waiting).await.0, 201);
    assert_eq!(app.put_definition("held", &waiting).await.0, 201);
    let broken = start_many(&app, "broken", 4).await;
    for id in &broken {
        assert_eq!(app.wait_terminal(id, Duration::from_secs(30)).await["status"], "FAILED");
    }
    let waiting_ids = start_many(&app, "waiting", 5).await;
    let held = start_many(&app, "held", 3).await;

    // Bad requests change nothing and say what is wrong.
    let (status, problem) =
        act(&app, "/v1/sagas/actions", json!({"action": "retry", "filter": {"status": "COMPLETED"}})).await;
    assert_eq!(status, 422, "{problem}");
    assert!(problem.to_string().contains("retry applies only to sagas that are FAILED"), "{problem}");
    let (status, problem) = act(&app, "/v1/sagas/actions", json!({"action": "signal", "filter": {}})).await;
    assert_eq!(status, 422, "a signal action without its signal: {problem}");
    let (status, problem) =
        act(&app, "/v1/sagas/actions", json!({"action": "cancel", "filter": {"created_after": "yesterday"}})).await;
    assert_eq!(status, 422, "{problem}");
    let (status, problem) = act(&app, "/v1/sagas/actions", json!({"action": "explode"})).await;
    assert_eq!(status, 422, "{problem}");

    // Dry runs count what the action applies to, and change nothing.
    let (status, counted) =
        act(&app, "/v1/sagas/actions", json!({"action": "retry", "filter": {"definition": "broken"}, "dry_run": true}))
            .await;
    assert_eq!((status, counted["matched"].as_u64()), (200, Some(4)), "{counted}");
    let (_, counted) = act(
        &app,
        "/v1/sagas/actions",
        json!({"action": "retry", "filter": {"error_contains": "LEDGER"}, "dry_run": true}),
    )
    .await;
    assert_eq!(counted["matched"], 4, "error text matched ignoring case: {counted}");
    let (_, counted) = act(
        &app,
        "/v1/sagas/actions",
        json!({"action": "retry", "filter": {"error_contains": "100%_"}, "dry_run": true}),
    )
    .await;
    assert_eq!(counted["matched"], 0, "% and _ are taken literally: {counted}");
    let (_, counted) = act(&app, "/v1/sagas/actions", json!({"action": "cancel", "dry_run": true})).await;
    assert_eq!(counted["matched"], 8, "cancel counts only sagas that have not finished: {counted}");
    assert_eq!(app.saga(&broken[0]).await["status"], "FAILED", "a dry run changes nothing");

    // Retry: each FAILED saga retried once (it fails again, FAILED with one more retry).
    let (status, started) =
        act(&app, "/v1/sagas/actions", json!({"action": "retry", "filter": {"definition": "broken"}})).await;
    assert_eq!((status, started["matched"].as_u64()), (202, Some(4)), "{started}");
    let job = finished(&app, started["job_id"].as_str().expect("job id"), Duration::from_secs(60)).await;
    assert_eq!(
        (job["status"].as_str(), job["done"].as_u64(), job["failed"].as_u64()),
        (Some("succeeded"), Some(4), Some(0)),
        "{job}"
    );
    assert_eq!(job["kind"], "sagas");
    assert_eq!(job["action"], "retry");
    for id in &broken {
        let retried = app.event_types(id).await.iter().filter(|kind| kind.as_str() == "saga_retried").count();
        assert_eq!(retried, 1, "saga {id} retried once");
    }

    // Signal: every waiting saga of one definition gets it and completes.
    let (status, started) = act(
        &app,
        "/v1/sagas/actions",
        json!({"action": "signal", "filter": {"definition": "waiting"}, "signal": {"name": "approval", "data": {"by": "ops"}}}),
    )
    .await;
    assert_eq!((status, started["matched"].as_u64()), (202, Some(5)), "{started}");
    finished(&app, started["job_id"].as_str().expect("job id"), Duration::from_secs(60)).await;
    for id in &waiting_ids {
        let saga = app.wait_terminal(id, Duration::from_secs(30)).await;
        assert_eq!(saga["status"], "COMPLETED", "{saga}");
        assert_eq!(saga["output"]["approve"]["by"], "ops", "{saga}");
    }

    // A signal no step waits for fails each item, named in the job.
    let (_, started) = act(
        &app,
        "/v1/sagas/actions",
        json!({"action": "signal", "filter": {"definition": "held"}, "signal": {"name": "nobody-waits"}}),
    )
    .await;
    let job = finished(&app, started["job_id"].as_str().expect("job id"), Duration::from_secs(60)).await;
    assert_eq!((job["status"].as_str(), job["failed"].as_u64()), (Some("failed"), Some(3)), "{job}");
    assert!(job["errors"][0]["error"].as_str().unwrap_or_default().contains("nobody-waits"), "{job}");

    // Cancel: the held sagas compensate; the finished job cannot be cancelled.
    let (_, started) =
        act(&app, "/v1/sagas/actions", json!({"action": "cancel", "filter": {"definition": "held"}})).await;
    let job_id = started["job_id"].as_str().expect("job id").to_string();
    finished(&app, &job_id, Duration::from_secs(60)).await;
    for id in &held {
        assert_eq!(app.wait_terminal(id, Duration::from_secs(30)).await["status"], "COMPENSATED");
    }
    let (status, _, _) = app.send(app.request(Method::POST, &format!("/v1/jobs/{job_id}/cancel"))).await;
    assert_eq!(status, 409, "a finished job is not cancelled");
    let (status, _, _) = app.send(app.request(Method::GET, &format!("/v1/jobs/{}", uuid::Uuid::now_v7()))).await;
    assert_eq!(status, 404);
}
crate::on_both_backends!(sagas_are_cancelled_retried_and_signalled_by_filter);

/// Deliveries of a disabled subscription wait; cancelling them by filter ends them dead, and a
/// replay by filter puts them back to pending.
async fn deliveries_are_cancelled_and_replayed_by_filter(backend: Backend) {
    let app = App::spawn(BIN, backend, &[]).await;
    assert_eq!(
        app.put_definition("quick", &fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}])))
            .await
            .0,
        201
    );
    let (status, _, subscription) = app
        .send(app.request(Method::POST, "/v1/subscriptions").json(&json!({
            "url": "https://receiver.example/hooks", "events": ["saga.completed"]
        })))
        .await;
    assert_eq!(status, 201, "{subscription}");
    let subscription_id = subscription["id"].as_str().expect("id").to_string();
    for id in start_many(&app, "quick", 3).await {
        app.wait_terminal(&id, Duration::from_secs(30)).await;
    }
    // Its receiver does not resolve: the deliveries stay pending, and wait while it is disabled.
    let (status, _, paused) = app
        .send(
            app.request(Method::PATCH, &format!("/v1/subscriptions/{subscription_id}"))
                .json(&json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(status, 200, "{paused}");
    let filter = json!({"subscription_id": subscription_id});
    let (_, counted) =
        act(&app, "/v1/deliveries/actions", json!({"action": "cancel", "filter": filter, "dry_run": true})).await;
    assert_eq!(counted["matched"], 3, "{counted}");
    let (status, problem) =
        act(&app, "/v1/deliveries/actions", json!({"action": "replay", "filter": {"status": "pending"}})).await;
    assert_eq!(status, 422, "replay takes dead deliveries: {problem}");

    let (status, started) = act(&app, "/v1/deliveries/actions", json!({"action": "cancel", "filter": filter})).await;
    assert_eq!((status, started["matched"].as_u64()), (202, Some(3)), "{started}");
    let job = finished(&app, started["job_id"].as_str().expect("job id"), Duration::from_secs(60)).await;
    assert_eq!(
        (job["status"].as_str(), job["done"].as_u64(), job["kind"].as_str()),
        (Some("succeeded"), Some(3), Some("deliveries")),
        "{job}"
    );
    let (_, _, listed) =
        app.send(app.request(Method::GET, &format!("/v1/deliveries?subscription_id={subscription_id}"))).await;
    let items = listed["items"].as_array().expect("items");
    assert!(items.iter().all(|d| d["status"] == "dead"), "cancelled deliveries are dead: {listed}");

    let (_, started) = act(&app, "/v1/deliveries/actions", json!({"action": "replay", "filter": filter})).await;
    assert_eq!(started["matched"], 3, "{started}");
    finished(&app, started["job_id"].as_str().expect("job id"), Duration::from_secs(60)).await;
    let (_, _, listed) =
        app.send(app.request(Method::GET, &format!("/v1/deliveries?subscription_id={subscription_id}"))).await;
    let items = listed["items"].as_array().expect("items");
    assert!(items.iter().all(|d| d["status"] == "pending"), "replayed deliveries are pending: {listed}");
}
crate::on_both_backends!(deliveries_are_cancelled_and_replayed_by_filter);

/// 10,000 FAILED sagas retried by one call; the instance running the job is killed halfway and
/// another takes the job over: every saga is retried exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_retries_survive_a_kill_each_exactly_once() {
    const SAGAS: usize = 10_000;
    let database_url = Backend::Postgres.fresh_url().await;
    let mut first = App::spawn_on(BIN, &database_url, &["server"], &[]).await;
    assert_eq!(first.put_definition("broken", &failing()).await.0, 201);
    start_many(&first, "broken", SAGAS).await;
    let pool = sqlx::PgPool::connect(&database_url).await.expect("connect");
    eventually("every saga FAILED", Duration::from_secs(300), || async {
        let failed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM sagas WHERE status = 'FAILED'").fetch_one(&pool).await.ok()?;
        (failed == SAGAS as i64).then_some(())
    })
    .await;

    let (status, started) =
        act(&first, "/v1/sagas/actions", json!({"action": "retry", "filter": {"definition": "broken"}})).await;
    assert_eq!((status, started["matched"].as_u64()), (202, Some(SAGAS as u64)), "{started}");
    let job_id = started["job_id"].as_str().expect("job id").to_string();
    eventually("the job a third done", Duration::from_secs(300), || async {
        let (_, _, job) = first.send(first.request(Method::GET, &format!("/v1/jobs/{job_id}"))).await;
        (job["done"].as_u64().unwrap_or(0) >= (SAGAS / 3) as u64).then_some(())
    })
    .await;
    first.child_mut().start_kill().expect("SIGKILL the instance running the job");
    let _ = first.child_mut().wait().await;
    let done_at_kill: i64 = sqlx::query_scalar("SELECT count(*) FROM sagaplane_job_items WHERE state = 'done'")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert!((1..SAGAS as i64).contains(&done_at_kill), "killed halfway: {done_at_kill} done");

    // The job's lease expires (30 s) and the new instance takes the job over.
    let second = App::spawn_on(BIN, &database_url, &["server"], &[]).await;
    let job = finished(&second, &job_id, Duration::from_secs(300)).await;
    assert_eq!(
        (job["status"].as_str(), job["done"].as_u64(), job["failed"].as_u64()),
        (Some("succeeded"), Some(SAGAS as u64), Some(0)),
        "{job}"
    );
    let retries: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT n, count(*) FROM (SELECT s.id, count(e.seq) AS n FROM sagas s \
           LEFT JOIN saga_events e ON e.saga_id = s.id AND e.kind = 'saga_retried' GROUP BY s.id) per_saga \
         GROUP BY n ORDER BY n",
    )
    .fetch_all(&pool)
    .await
    .expect("count retries");
    assert_eq!(retries, vec![(1, SAGAS as i64)], "sagas by how often they were retried");
}

/// `sagaplane sagas retry --status FAILED --definition … [--dry-run]`: the count, then the job
/// followed to its end; a filter with an id, or a status retry does not apply to, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_counts_then_retries_by_filter() {
    let app = App::spawn(BIN, Backend::Sqlite, &[]).await;
    assert_eq!(app.put_definition("broken", &failing()).await.0, 201);
    for id in start_many(&app, "broken", 3).await {
        app.wait_terminal(&id, Duration::from_secs(30)).await;
    }
    let cli = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .env("SAGAPLANE_URL", &app.url)
            .env("SAGAPLANE_TOKEN", test_support::app::TOKEN)
            .output()
            .expect("run the CLI")
    };
    let text = |out: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    let counted = cli(&["sagas", "retry", "--status", "failed", "--definition", "broken", "--dry-run"]);
    assert!(counted.status.success(), "{}", text(&counted));
    assert!(text(&counted).contains("3 sagas match"), "{}", text(&counted));

    let retried = cli(&["sagas", "retry", "--status", "FAILED", "--definition", "broken"]);
    assert!(retried.status.success(), "{}", text(&retried));
    assert!(text(&retried).contains("succeeded: 3 done, 0 failed"), "{}", text(&retried));

    let refused = cli(&["sagas", "retry", "--status", "COMPLETED"]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("retry applies only to sagas that are FAILED"), "{}", text(&refused));
    let both = cli(&["sagas", "cancel", "0190a0a0-0000-7000-8000-000000000000", "--definition", "broken"]);
    assert!(!both.status.success(), "an id and a filter together: {}", text(&both));
}
