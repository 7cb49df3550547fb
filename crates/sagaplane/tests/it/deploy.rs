//! `deploy/`: the alert rules and the Grafana dashboard name only metrics Sagaplane exports, so
//! a renamed metric cannot leave a rule silently matching nothing. (`scripts/test` runs
//! `promtool check rules` and `promtool test rules` on them.)

use std::collections::BTreeSet;

/// Every metric name the binary exports.
fn exported() -> BTreeSet<&'static str> {
    use saga_runtime::metrics_names as engine;
    [
        engine::SAGA_TOTAL,
        engine::SAGA_DURATION_SECONDS,
        engine::SAGA_STEP_DURATION_SECONDS,
        engine::SAGA_RETRY_TOTAL,
        engine::SAGA_LEASE_TAKEOVER_TOTAL,
        engine::SAGA_IN_FLIGHT,
        engine::SAGA_COMMIT_BATCH_SIZE,
        engine::SAGA_CLAIMED_TOTAL,
        engine::SAGA_CIRCUIT_OPEN,
        engine::SAGA_CIRCUIT_DEFERRED_TOTAL,
        engine::SAGA_CLAIM_DURATION_SECONDS,
        engine::SAGA_QUEUE_DEPTH,
        engine::SAGA_OLDEST_DUE_AGE_SECONDS,
        engine::SAGA_DB_POOL_CONNECTIONS,
        delivery::metrics::ATTEMPTS_TOTAL,
        delivery::metrics::ATTEMPT_DURATION_SECONDS,
        delivery::metrics::PENDING,
        delivery::metrics::OLDEST_PENDING_AGE_SECONDS,
        delivery::metrics::BREAKER_OPEN,
        server::observe::HTTP_REQUEST_DURATION_SECONDS,
    ]
    .into_iter()
    .collect()
}

/// The metric names a text mentions (histogram series suffixes stripped).
fn mentioned(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .filter(|token| token.starts_with("saga_") || token.starts_with("http_request_"))
        .map(|token| {
            let base = ["_bucket", "_count", "_sum"].iter().find_map(|suffix| token.strip_suffix(suffix));
            base.unwrap_or(token).to_string()
        })
        .collect()
}

#[test]
fn alert_rules_and_the_dashboard_name_only_exported_metrics() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");
    let exported = exported();
    for file in ["prometheus/alerts.yml", "prometheus/alerts_test.yml", "grafana/sagaplane.json"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).expect("a deploy file");
        let names = mentioned(&text);
        assert!(!names.is_empty(), "{file} names no metric");
        let unknown: Vec<&String> = names.iter().filter(|n| !exported.contains(n.as_str())).collect();
        assert!(unknown.is_empty(), "{file} names metrics Sagaplane does not export: {unknown:?}");
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{root}/grafana/sagaplane.json")).expect("dashboard"))
            .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.iter().all(|p| p["targets"].as_array().is_some_and(|t| !t.is_empty())), "every panel queries");
}
