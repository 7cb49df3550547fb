//! Moving running sagas to a new version of their definition: `POST /v1/definitions/{name}/check`
//! (and `sagaplane definitions check`) says which could move and why not; an `upgrade` bulk
//! action moves those that can, and they finish under the new version.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use test_support::app::fast_definition;
use test_support::{eventually, App, Backend};

use crate::BIN;

const WAIT: Duration = Duration::from_secs(60);

fn step(name: &str) -> Value {
    json!({"name": name, "action": {"builtin": "core.echo", "input": {"step": name}},
           "compensation": {"builtin": "core.echo"}})
}

fn wait_for(name: &str) -> Value {
    json!({"name": name, "action": {"signal": {"name": name}}})
}

async fn signal(app: &App, id: &str, name: &str) {
    let (status, _, body) = app.send(app.request(Method::POST, &format!("/v1/sagas/{id}/signals/{name}"))).await;
    assert_eq!(status, 202, "{body}");
}

/// Waits until saga `id` is parked on the signal `name`.
async fn parked_on(app: &App, id: &str, name: &str) {
    eventually(&format!("saga {id} waiting for {name}"), WAIT, || async {
        let (_, _, body) = app.send(app.request(Method::GET, &format!("/v1/sagas/{id}/blockers"))).await;
        (body["blockers"][0]["kind"] == "signal" && body["blockers"][0]["name"] == name).then_some(())
    })
    .await;
}

async fn a_fleet_parked_on_a_signal_moves_to_a_new_version_and_finishes_under_it(backend: Backend) {
    let app = App::spawn(BIN, backend, &[]).await;
    let v1 = fast_definition(json!([step("reserve"), wait_for("approve"), step("charge"), wait_for("confirm")]));
    assert_eq!(app.put_definition("order", &v1).await.0, 201);
    // Six wait for approval; three got it and wait for confirmation (they have run `charge`).
    let mut waiting = Vec::new();
    for _ in 0..6 {
        waiting.push(app.start("order", json!({})).await);
    }
    let mut further = Vec::new();
    for _ in 0..3 {
        further.push(app.start("order", json!({})).await);
    }
    for id in &waiting {
        parked_on(&app, id, "approve").await;
    }
    for id in &further {
        parked_on(&app, id, "approve").await;
        signal(&app, id, "approve").await;
        parked_on(&app, id, "confirm").await;
    }

    // v2 adds a step after the approval: before charge, so charge moves one place down.
    let v2 = fast_definition(json!([
        step("reserve"),
        wait_for("approve"),
        step("notify"),
        step("charge"),
        wait_for("confirm")
    ]));
    let check = app.request(Method::POST, "/v1/definitions/order/check").json(&v2);
    let (status, _, checked) = app.send(check).await;
    assert_eq!(status, 200, "{checked}");
    assert_eq!((&checked["movable"], &checked["refused"]), (&json!(6), &json!(3)), "{checked}");
    for saga in checked["sagas"].as_array().into_iter().flatten() {
        let id = saga["id"].as_str().unwrap_or_default().to_string();
        let reasons = saga["reasons"].to_string();
        if further.contains(&id) {
            assert_eq!(saga["movable"], false, "{saga}");
            assert!(reasons.contains("step charge: at position 4 in the new version, 3 in the old"), "{saga}");
        } else {
            assert_eq!((&saga["movable"], &saga["reasons"]), (&json!(true), &json!([])), "{saga}");
        }
    }
    // The same from the command line, before anything is applied.
    let file = std::env::temp_dir().join(format!("order-v2-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, serde_json::to_vec(&v2).expect("json")).expect("write");
    let out = std::process::Command::new(BIN)
        .args(["definitions", "check", file.to_str().unwrap_or_default(), "--name", "order"])
        .env("SAGAPLANE_URL", &app.url)
        .env("SAGAPLANE_TOKEN", test_support::app::TOKEN)
        .output()
        .expect("definitions check");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}{}", String::from_utf8_lossy(&out.stderr));
    assert!(printed.contains("6 running saga(s) of order can move to this version, 3 cannot"), "{printed}");
    assert!(printed.contains(&format!("{} v1   EXECUTING     cannot move: step charge", further[0])), "{printed}");
    let _ = std::fs::remove_file(&file);

    // Applied, then the upgrade: a dry run counts, the job moves the six and names the three.
    assert_eq!(app.put_definition("order", &v2).await.0, 201);
    let upgrade = |dry_run: bool| {
        app.request(Method::POST, "/v1/sagas/actions").json(&json!({
            "action": "upgrade", "filter": {"definition": "order", "version": 1}, "dry_run": dry_run
        }))
    };
    let (status, _, body) = app.send(upgrade(true)).await;
    assert_eq!((status, &body["matched"]), (200, &json!(9)), "{body}");
    let (status, _, body) = app.send(upgrade(false)).await;
    assert_eq!(status, 202, "{body}");
    let job_id = body["job_id"].as_str().unwrap_or_default().to_string();
    let job = eventually("the upgrade job to finish", WAIT, || async {
        let (_, _, job) = app.send(app.request(Method::GET, &format!("/v1/jobs/{job_id}"))).await;
        (job["status"] != "running").then_some(job)
    })
    .await;
    assert_eq!((&job["status"], &job["done"], &job["failed"]), (&json!("failed"), &json!(6), &json!(3)), "{job}");
    for error in job["errors"].as_array().into_iter().flatten() {
        assert!(further.iter().any(|id| error["id"] == json!(id)), "only the three are refused: {job}");
        assert!(error["error"].as_str().unwrap_or_default().contains("step charge"), "{job}");
    }

    // The moved ones run the new step; the others finish on the version they started with.
    for id in &waiting {
        assert_eq!(app.saga(id).await["version"], 2);
        signal(&app, id, "approve").await;
        parked_on(&app, id, "confirm").await;
        signal(&app, id, "confirm").await;
        let saga = app.wait_terminal(id, WAIT).await;
        assert_eq!(saga["status"], "COMPLETED", "{saga}");
        assert_eq!(saga["output"]["notify"], json!({"step": "notify"}), "{saga}");
        let upgraded: Vec<Value> = app.events(id).await.into_iter().filter(|e| e["type"] == "saga_upgraded").collect();
        assert_eq!(upgraded.len(), 1, "{upgraded:?}");
        assert_eq!((&upgraded[0]["data"]["from"], &upgraded[0]["data"]["to"]), (&json!(1), &json!(2)));
    }
    for id in &further {
        signal(&app, id, "confirm").await;
        let saga = app.wait_terminal(id, WAIT).await;
        assert_eq!((&saga["status"], &saga["version"]), (&json!("COMPLETED"), &json!(1)), "{saga}");
        assert!(saga["output"].get("notify").is_none(), "{saga}");
    }

    // Bad requests change nothing: no version named, the version they are on, an unknown one.
    for (body, path) in [
        (json!({"action": "upgrade", "filter": {"definition": "order"}}), "/filter"),
        (json!({"action": "upgrade", "filter": {"definition": "order", "version": 2}}), "/version"),
        (json!({"action": "upgrade", "filter": {"definition": "order", "version": 1}, "version": 9}), "/version"),
        (json!({"action": "cancel", "filter": {"definition": "order"}, "version": 2}), "/version"),
    ] {
        let (status, _, answer) = app.send(app.request(Method::POST, "/v1/sagas/actions").json(&body)).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["errors"][0]["path"], path, "{body}: {answer}");
    }
}
crate::on_both_backends!(a_fleet_parked_on_a_signal_moves_to_a_new_version_and_finishes_under_it);
