//! HTTP contract: auth, problem+json, bad input never 5xx and never stored, lists, ops routes.

use serde_json::{json, Value};
use test_support::app::fast_definition;
use test_support::{App, Backend};

use crate::{on_both_backends, BIN};

fn assert_problem(status: u16, headers: &reqwest::header::HeaderMap, body: &Value, expected: u16) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json", "{body}");
    assert_eq!(body["status"], expected);
    assert!(body["title"].is_string() && body["detail"].is_string() && body["type"].is_string(), "{body}");
}

async fn bad_input_is_refused_and_nothing_is_stored(backend: Backend) {
    let app = App::spawn(BIN, backend, &[]).await;
    let put = |name: &str, content_type: &str, body: Vec<u8>| {
        app.request(reqwest::Method::PUT, &format!("/v1/definitions/{name}"))
            .header("content-type", content_type)
            .body(body)
    };
    // Malformed JSON and YAML.
    let (s, h, b) = app.send(put("d", "application/json", b"{\"steps\": [".to_vec())).await;
    assert_problem(s, &h, &b, 400);
    let (s, h, b) = app.send(put("d", "application/yaml", b"steps: [a\n  - : :".to_vec())).await;
    assert_problem(s, &h, &b, 400);
    // Invalid definition: every error with its path.
    let invalid = json!({"steps": [
        {"name": "a", "action": {"builtin": "core.echo"}, "retry": {"max_attempts": 0}},
        {"name": "a", "action": {"http": {"url": "{{ broken"}}},
    ]});
    let (s, h, b) = app.send(put("d", "application/json", invalid.to_string().into_bytes())).await;
    assert_problem(s, &h, &b, 422);
    let paths: Vec<&str> = b["errors"].as_array().into_iter().flatten().filter_map(|e| e["path"].as_str()).collect();
    assert_eq!(paths, vec!["/steps/0/retry/max_attempts", "/steps/1/action/http/url", "/steps/1/name"], "{b}");
    // Invalid name in the path.
    let valid = fast_definition(json!([{"name": "e", "action": {"builtin": "core.echo"}}]));
    let (s, h, b) = app.send(put("Bad%20Name", "application/json", valid.to_string().into_bytes())).await;
    assert_problem(s, &h, &b, 422);
    assert_eq!(b["errors"][0]["path"], "/name");
    // Unsupported media type.
    let (s, h, b) = app.send(put("d", "text/plain", valid.to_string().into_bytes())).await;
    assert_problem(s, &h, &b, 415);
    // Oversized body.
    let huge = format!("{{\"steps\": [], \"description\": \"{}\"}}", "x".repeat(1024 * 1024 + 10));
    let (s, h, b) = app.send(put("d", "application/json", huge.into_bytes())).await;
    assert_problem(s, &h, &b, 413);
    let (definitions_status, _, definitions) = app.send(app.request(reqwest::Method::GET, "/v1/definitions")).await;
    assert_eq!(definitions_status, 200);
    let stored: Vec<&str> =
        definitions["items"].as_array().into_iter().flatten().filter_map(|d| d["name"].as_str()).collect();
    assert_eq!(
        stored,
        vec!["tenant.deprovision", "tenant.migrate", "tenant.provision", "tenant.rollout"],
        "only the built-ins: nothing stored"
    );

    // Sagas: malformed, invalid, unknown definition, bad ids.
    let post = |body: String| {
        app.request(reqwest::Method::POST, "/v1/sagas").header("content-type", "application/json").body(body)
    };
    let (s, h, b) = app.send(post("{nope".into())).await;
    assert_problem(s, &h, &b, 400);
    let (s, h, b) = app.send(post(json!({"definition": "missing"}).to_string())).await;
    assert_problem(s, &h, &b, 422);
    assert_eq!(b["errors"][0]["path"], "/definition");
    let (s, h, b) =
        app.send(post(json!({"definition": 7, "tenant_id": "X!", "priority": "high", "colour": 1}).to_string())).await;
    assert_problem(s, &h, &b, 422);
    assert_eq!(b["errors"].as_array().map(Vec::len), Some(4), "{b}");
    let (s, h, b) =
        app.send(post(format!("{{\"definition\": \"x\", \"input\": \"{}\"}}", "y".repeat(1024 * 1024)))).await;
    assert_problem(s, &h, &b, 413);
    for path in ["/v1/sagas/not-a-uuid", "/v1/sagas/00000000-0000-7000-8000-000000000000", "/v1/sagas/nope/events"] {
        let (s, h, b) = app.send(app.request(reqwest::Method::GET, path)).await;
        assert_problem(s, &h, &b, 404);
    }
    let (s, h, b) = app.send(app.request(reqwest::Method::POST, "/v1/sagas/not-a-uuid/retry")).await;
    assert_problem(s, &h, &b, 404);
    let (s, h, b) = app.send(app.request(reqwest::Method::GET, "/v1/sagas?status=DANCING")).await;
    assert_problem(s, &h, &b, 400);
    let (s, h, b) = app.send(app.request(reqwest::Method::GET, "/v1/sagas?cursor=zzz")).await;
    assert_problem(s, &h, &b, 400);
    let (s, h, b) = app.send(app.request(reqwest::Method::GET, "/v1/definitions/nope")).await;
    assert_problem(s, &h, &b, 404);
    let (s, h, b) = app.send(app.request(reqwest::Method::GET, "/v1/definitions/nope/versions/zero")).await;
    assert_problem(s, &h, &b, 400);
    let (s, h, b) = app.send(app.request(reqwest::Method::GET, "/v2/nothing")).await;
    assert_problem(s, &h, &b, 404);
    let (s, h, b) = app.send(app.request(reqwest::Method::DELETE, "/v1/sagas")).await;
    assert_problem(s, &h, &b, 405);
    let (_, _, sagas) = app.send(app.request(reqwest::Method::GET, "/v1/sagas")).await;
    assert_eq!(sagas["items"], json!([]), "no saga stored");
}
on_both_backends!(bad_input_is_refused_and_nothing_is_stored);

async fn auth_and_ops_routes(backend: Backend) {
    let app = App::spawn(BIN, backend, &[]).await;
    let anonymous = |path: &str| app.http.get(format!("{}{path}", app.url));
    let (s, h, b) = app.send(anonymous("/v1/sagas")).await;
    assert_problem(s, &h, &b, 401);
    let (s, h, b) = app.send(anonymous("/v1/sagas").bearer_auth("wrong")).await;
    assert_problem(s, &h, &b, 401);
    let (s, _, b) = app.send(anonymous("/health")).await;
    assert_eq!((s, b), (200, json!({"status": "ok"})));
    let (s, _, b) = app.send(anonymous("/ready")).await;
    assert_eq!(s, 200, "{b}");
    let (s, _, openapi) = app.send(anonymous("/openapi.json")).await;
    assert_eq!(s, 200);
    assert_eq!(openapi["openapi"], "3.1.0");
    assert!(openapi["paths"]["/v1/sagas/{id}/retry"]["post"].is_object());
    let (s, _, ui) = app.send(anonymous("/ui/")).await;
    assert_eq!(s, 200);
    assert!(ui.as_str().is_some_and(|html| html.contains("Sagaplane")));
    // A saga, then its metrics.
    app.put_definition("echo", &fast_definition(json!([{"name": "e", "action": {"builtin": "core.echo"}}]))).await;
    let id = app.start("echo", json!({})).await;
    app.wait_terminal(&id, std::time::Duration::from_secs(30)).await;
    // The driver counts the saga just after its terminal commit, which a reader may see first.
    let text = test_support::eventually("saga_total to count the saga", std::time::Duration::from_secs(10), || async {
        let text = app.http.get(format!("{}/metrics", app.url)).send().await.ok()?.text().await.ok()?;
        text.contains("saga_total{definition=\"echo\",status=\"COMPLETED\"} 1").then_some(text)
    })
    .await;
    assert!(text.contains("saga_step_duration_seconds_bucket"), "{text}");
    assert!(text.contains("saga_in_flight"), "{text}");
}
on_both_backends!(auth_and_ops_routes);

/// Every metric docs/api.md ("Sagas") names, from the first scrape of a fresh instance (counters at
/// 0).
async fn every_named_metric_is_exported_from_the_first_scrape(backend: Backend) {
    let app = App::spawn(BIN, backend, &[]).await;
    let text = app.http.get(format!("{}/metrics", app.url)).send().await.expect("metrics").text().await.expect("text");
    let series = |prefix: &str| text.lines().filter(|l| !l.starts_with('#') && l.starts_with(prefix)).count();
    for name in [
        "saga_total{",
        "saga_duration_seconds_bucket{",
        "saga_step_duration_seconds_bucket{",
        "saga_retry_total{",
        "saga_lease_takeover_total ",
        "saga_in_flight ",
    ] {
        assert!(series(name) > 0, "{name} missing from the first scrape:\n{text}");
    }
    for line in [
        "saga_lease_takeover_total 0",
        "saga_in_flight 0",
        "saga_total{definition=\"tenant.provision\",status=\"FAILED\"} 0",
        "saga_retry_total{definition=\"tenant.provision\",step=\"migrations\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    // A definition applied later has its series from the moment it is loaded.
    app.put_definition("late", &fast_definition(json!([{"name": "e", "action": {"builtin": "core.echo"}}]))).await;
    let id = app.start("late", json!({})).await;
    app.wait_terminal(&id, std::time::Duration::from_secs(30)).await;
    // The driver counts a saga once its last commit is answered, so a read of the saga can come
    // first: scrape until it shows (a few milliseconds).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let text =
            app.http.get(format!("{}/metrics", app.url)).send().await.expect("metrics").text().await.expect("text");
        if text.contains("saga_total{definition=\"late\",status=\"COMPLETED\"} 1")
            || tokio::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(text.contains("saga_total{definition=\"late\",status=\"COMPLETED\"} 1"), "{text}");
    assert!(text.contains("saga_total{definition=\"late\",status=\"FAILED\"} 0"), "{text}");
}
on_both_backends!(every_named_metric_is_exported_from_the_first_scrape);

async fn lists_filter_and_page(backend: Backend) {
    let app = App::spawn(BIN, backend, &[]).await;
    app.put_definition("one", &fast_definition(json!([{"name": "e", "action": {"builtin": "core.echo"}}]))).await;
    app.put_definition(
        "two",
        &fast_definition(json!([{"name": "f", "action": {"builtin": "core.fail", "input": {"message": "no"}}}])),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.start(if i % 2 == 0 { "one" } else { "two" }, json!({"i": i})).await);
    }
    for id in &ids {
        app.wait_terminal(id, std::time::Duration::from_secs(30)).await;
    }
    let get = |path: &str| app.request(reqwest::Method::GET, path);
    let (_, _, page1) = app.send(get("/v1/sagas?limit=2")).await;
    assert_eq!(page1["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(page1["items"][0]["id"], ids[4], "newest first");
    let cursor = page1["next_cursor"].as_str().expect("cursor").to_string();
    let (_, _, page2) = app.send(get(&format!("/v1/sagas?limit=2&cursor={cursor}"))).await;
    assert_eq!(page2["items"][0]["id"], ids[2]);
    let (_, _, two) = app.send(get("/v1/sagas?definition=two")).await;
    assert_eq!(two["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(two["next_cursor"], Value::Null);
    let (_, _, compensated) = app.send(get("/v1/sagas?status=COMPENSATED")).await;
    assert_eq!(compensated["items"].as_array().map(Vec::len), Some(2));
    let (_, _, capped) = app.send(get("/v1/sagas?limit=100000")).await;
    assert_eq!(capped["items"].as_array().map(Vec::len), Some(5));
    let (_, _, definitions) = app.send(get("/v1/definitions")).await;
    assert_eq!(definitions["items"].as_array().map(Vec::len), Some(2 + 4), "two plus the built-in tenant sagas");
    let (s, _, v1) = app.send(get("/v1/definitions/one/versions/1")).await;
    assert_eq!((s, v1["version"].clone()), (200, json!(1)));
    // The same document in YAML is identical: 200, no new version.
    let yaml = "defaults:\n  timeout: 5s\n  retry: {max_attempts: 3, initial_interval: 100ms, multiplier: 2.0, max_interval: 1s, jitter: 0.0}\n  compensation_retry: {max_attempts: 3, initial_interval: 50ms, multiplier: 2.0, max_interval: 1s, jitter: 0.0}\nsteps:\n  - name: e\n    action: {builtin: core.echo}\n";
    let (s, _, same) = app
        .send(
            app.request(reqwest::Method::PUT, "/v1/definitions/one")
                .header("content-type", "application/yaml")
                .body(yaml),
        )
        .await;
    assert_eq!((s, same["version"].clone()), (200, json!(1)), "{same}");
}
on_both_backends!(lists_filter_and_page);
