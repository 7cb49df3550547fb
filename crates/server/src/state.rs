//! Shared handler state.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use saga_runtime::{Clock, DefinitionCache, TerminalHub, TransitionHook};
use saga_store::Store;
use sha2::{Digest, Sha256};

/// What every handler may use.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub hub: TerminalHub,
    /// Validated definitions, shared with the in-process worker.
    pub definitions: Arc<DefinitionCache>,
    pub metrics: Option<PrometheusHandle>,
    pub(crate) admin_token_sha256: [u8; 32],
    /// Where new sagas enter the engine (straight to the in-process worker when there is one).
    pub(crate) intake: saga_runtime::Intake,
    /// Becomes true at shutdown, so long-polls answer at once instead of holding up the drain.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
    /// `SAGAPLANE_VAR_*`, for templates rendered at start (the concurrency key).
    pub(crate) vars: serde_json::Map<String, serde_json::Value>,
    /// Tenant storage and migrations, for request validation and `/v1/migrations`.
    pub(crate) tenancy: Option<Tenancy>,
    /// What an operator's change to a saga means beyond it (a tenant saga's retry moves its
    /// tenant): the same hook the worker commits transitions with.
    pub(crate) hook: Option<Arc<dyn TransitionHook>>,
    /// What authentication remembers about tenant tokens.
    pub(crate) key_lookups: Arc<crate::key_lookups::KeyLookups>,
    /// What a tenant's own subscriptions may be.
    pub(crate) subscription_rules: SubscriptionRules,
}

/// Limits on the subscriptions a tenant makes itself.
#[derive(Clone, Debug)]
pub struct SubscriptionRules {
    /// The subject prefix of a tenant's NATS subscriptions, `{tenant_id}` replaced by its id
    /// (`SAGAPLANE_NATS_TENANT_PREFIX`).
    pub nats_tenant_prefix: String,
    /// Subscriptions a tenant may make (`SAGAPLANE_TENANT_SUBSCRIPTIONS_MAX`).
    pub tenant_max: u32,
}

impl Default for SubscriptionRules {
    fn default() -> Self {
        SubscriptionRules {
            nats_tenant_prefix: delivery::nats::TENANT_PREFIX_DEFAULT.to_string(),
            tenant_max: TENANT_SUBSCRIPTIONS_MAX_DEFAULT,
        }
    }
}

/// Subscriptions a tenant may make unless `SAGAPLANE_TENANT_SUBSCRIPTIONS_MAX` says otherwise.
pub const TENANT_SUBSCRIPTIONS_MAX_DEFAULT: u32 = 20;

/// What the tenant routes need beyond the store.
#[derive(Clone)]
pub struct Tenancy {
    pub storage: Arc<dyn saga_store::tenant_storage::TenantStorage>,
    pub migrations: tenancy::MigrationSource,
    /// `SAGAPLANE_CRM_WEBHOOK_SECRET`; None disables `/v1/webhooks/crm` (404).
    pub crm_secret: Option<String>,
    /// A deletion's grace period unless it names one (`SAGAPLANE_TENANT_DELETE_GRACE`; 0: none).
    pub delete_grace_ms: u64,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        hub: TerminalHub,
        definitions: Arc<DefinitionCache>,
        metrics: Option<PrometheusHandle>,
        admin_token: &str,
    ) -> Self {
        AppState {
            intake: saga_runtime::Intake::without_instance(store.clone()),
            store,
            clock,
            hub,
            definitions,
            metrics,
            admin_token_sha256: Sha256::digest(admin_token.as_bytes()).into(),
            stopping: tokio::sync::watch::channel(false).1,
            vars: serde_json::Map::new(),
            tenancy: None,
            hook: None,
            key_lookups: Arc::new(crate::key_lookups::KeyLookups::new()),
            subscription_rules: SubscriptionRules::default(),
        }
    }

    /// Limits on tenants' own subscriptions.
    pub fn with_subscription_rules(mut self, rules: SubscriptionRules) -> Self {
        self.subscription_rules = rules;
        self
    }

    /// Commits what `hook` derives from an operator's change together with it.
    /// The operator transitions (retry, cancel, signal) on this state's store and hook.
    pub(crate) fn operator(&self) -> saga_runtime::Operator {
        saga_runtime::Operator::new(
            self.store.clone(),
            self.definitions.clone(),
            self.clock.clone(),
            self.hub.clone(),
            self.hook.clone(),
        )
    }

    pub fn with_hook(mut self, hook: Arc<dyn TransitionHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Long-polls end when `stopping` becomes true (graceful shutdown).
    pub fn with_shutdown(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }

    /// Template variables (`vars.NAME`) for what the API renders itself.
    pub fn with_vars(mut self, vars: serde_json::Map<String, serde_json::Value>) -> Self {
        self.vars = vars;
        self
    }

    /// Enables the tenant routes.
    pub fn with_tenancy(mut self, tenancy: Tenancy) -> Self {
        self.tenancy = Some(tenancy);
        self
    }

    /// Hands sagas this API creates straight to the local worker (claim on create). Must be
    /// called inside a Tokio runtime (it starts the create writer).
    pub fn with_intake(mut self, intake: saga_runtime::Intake) -> Self {
        self.intake = intake;
        self
    }

    pub fn builtin_names(&self) -> Vec<&str> {
        self.definitions.builtin_names()
    }
}
