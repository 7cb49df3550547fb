//! The settings of one orchestrator instance.

use serde_json::{Map, Value};

/// Settings of one instance.
#[derive(Clone, Debug)]
pub struct InstanceConfig {
    pub worker_id: String,
    /// Sagas driven at once.
    pub concurrency: u32,
    pub lease_ttl_ms: i64,
    /// Fallback poll when no notification arrives.
    pub poll_interval_ms: u64,
    /// `SAGAPLANE_VAR_*` values for templates.
    pub vars: Map<String, Value>,
    /// Seed for retry jitter; None draws one from the OS.
    pub seed: Option<u64>,
    /// Base URL participants use for callbacks (`SAGAPLANE_PUBLIC_URL`).
    pub public_url: String,
    /// How long a shutdown waits for running steps to finish before it stops their drivers and
    /// hands their sagas back (`SAGAPLANE_SHUTDOWN_GRACE`).
    pub shutdown_grace_ms: u64,
    /// Export a span per saga and per attempt (`SAGAPLANE_OTLP_ENDPOINT` set; the binary
    /// installs the exporter).
    pub tracing: bool,
}

impl InstanceConfig {
    pub fn new(worker_id: impl Into<String>) -> Self {
        InstanceConfig {
            worker_id: worker_id.into(),
            concurrency: 64,
            lease_ttl_ms: 30_000,
            poll_interval_ms: 1_000,
            vars: Map::new(),
            seed: None,
            public_url: "http://127.0.0.1:8080".into(),
            shutdown_grace_ms: 30_000,
            tracing: false,
        }
    }
}
