//! Shared handler state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use metrics_exporter_prometheus::PrometheusHandle;
use saga_core::Definition;
use saga_runtime::{Clock, TerminalHub};
use saga_store::Store;
use sha2::{Digest, Sha256};

/// Validated definitions by `(name, version)`; versions never change, so entries never go stale.
pub(crate) type DefinitionCache = Arc<Mutex<HashMap<(String, i32), Arc<Definition>>>>;

/// What every handler may use.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub hub: TerminalHub,
    pub builtins: Arc<Vec<String>>,
    pub metrics: Option<PrometheusHandle>,
    pub(crate) admin_token_sha256: [u8; 32],
    pub(crate) definitions: DefinitionCache,
    /// The latest version seen per definition name: a hint only; creates that use it are
    /// guarded by the store (`require_latest`), so it can never start a saga on a stale version.
    pub(crate) latest_versions: Arc<Mutex<HashMap<String, i32>>>,
    /// The in-process worker, when this process runs one: new sagas go straight to it.
    pub(crate) intake: Option<saga_runtime::Intake>,
    /// Becomes true at shutdown, so long-polls answer at once instead of holding up the drain.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        hub: TerminalHub,
        builtins: Vec<String>,
        metrics: Option<PrometheusHandle>,
        admin_token: &str,
    ) -> Self {
        AppState {
            store,
            clock,
            hub,
            builtins: Arc::new(builtins),
            metrics,
            admin_token_sha256: Sha256::digest(admin_token.as_bytes()).into(),
            definitions: Arc::new(Mutex::new(HashMap::new())),
            latest_versions: Arc::new(Mutex::new(HashMap::new())),
            intake: None,
            stopping: tokio::sync::watch::channel(false).1,
        }
    }

    /// Long-polls end when `stopping` becomes true (graceful shutdown).
    pub fn with_shutdown(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }

    /// Hands sagas this API creates straight to the local worker (claim on create).
    pub fn with_intake(mut self, intake: saga_runtime::Intake) -> Self {
        self.intake = Some(intake);
        self
    }

    pub fn builtin_names(&self) -> Vec<&str> {
        self.builtins.iter().map(String::as_str).collect()
    }
}
