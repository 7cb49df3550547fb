//! `GET /debug/pprof/profile`: a real CPU profile of the running binary, parsed as pprof.

use std::time::Duration;

use prost::Message;
use reqwest::Method;
use serde_json::json;
use server::profile::proto::Profile;
use test_support::app::fast_definition;
use test_support::{App, Backend};

use crate::BIN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_profile_is_pprof_or_a_flame_graph() {
    let app = App::spawn(BIN, Backend::Sqlite, &[]).await;
    app.put_definition("busy", &fast_definition(json!([{"name": "a", "action": {"builtin": "core.echo"}}]))).await;
    // Work for the profiler to see while it samples.
    let load = {
        let (url, http) = (app.url.clone(), app.http.clone());
        tokio::spawn(async move {
            for _ in 0..2_000 {
                let _ = http
                    .post(format!("{url}/v1/sagas"))
                    .bearer_auth(test_support::app::TOKEN)
                    .json(&json!({"definition": "busy", "input": {}}))
                    .send()
                    .await;
            }
        })
    };
    let response = app.request(Method::GET, "/debug/pprof/profile?seconds=2").send().await.expect("profile");
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.expect("body");
    let profile = Profile::decode(bytes.as_ref()).expect("a pprof protobuf");
    assert!(!profile.sample.is_empty(), "samples taken");
    assert_eq!(profile.string_table.first().map(String::as_str), Some(""), "string 0 is empty");
    let name = |i: i64| profile.string_table.get(i as usize).map(String::as_str).unwrap_or("?");
    assert_eq!((name(profile.sample_type[1].r#type), name(profile.sample_type[1].unit)), ("cpu", "nanoseconds"));
    assert!(
        profile.period > 0 && profile.duration_nanos >= 1_900_000_000,
        "{} {}",
        profile.period,
        profile.duration_nanos
    );
    for sample in &profile.sample {
        assert!(sample.location_id.iter().all(|id| profile.location.iter().any(|l| l.id == *id)), "dangling location");
    }
    let functions: Vec<&str> = profile.function.iter().map(|f| name(f.name)).collect();
    assert!(
        functions.iter().any(|f| f.contains("tokio") || f.contains("sagaplane") || f.contains("sqlx")),
        "{functions:?}"
    );

    // Meanwhile a second profile is refused; bad parameters are a 422.
    let svg = {
        let request = app.request(Method::GET, "/debug/pprof/profile?seconds=1&format=svg");
        tokio::spawn(async move { request.send().await.expect("svg").text().await.expect("text") })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.send(app.request(Method::GET, "/debug/pprof/profile?seconds=1")).await.0, 409);
    let svg = svg.await.expect("svg task");
    assert!(svg.contains("<svg"), "a flame graph: {}", &svg[..svg.len().min(200)]);
    for bad in ["seconds=0", "seconds=61", "seconds=x", "format=png", "hz=100"] {
        let (status, _, body) = app.send(app.request(Method::GET, &format!("/debug/pprof/profile?{bad}"))).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
    // Every status it answers is documented (schemathesis does not call it: it samples for up
    // to a minute).
    let (_, _, openapi) = app.send(app.request(Method::GET, "/openapi.json")).await;
    let responses = &openapi["paths"]["/debug/pprof/profile"]["get"]["responses"];
    for status in ["200", "401", "403", "409", "422"] {
        assert!(responses[status].is_object(), "{status} is documented: {responses}");
    }
    load.abort();
}
