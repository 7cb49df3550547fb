//! Running the process: open the store, migrate, start the API and/or the worker, and shut
//! down gracefully on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use process::{Bulk, Dispatch, Jobs, Process, Retention, Wiring, Worker};
use saga_runtime::{BreakerConfig, BuiltinRegistry, Executors, InstanceConfig, SystemClock};
use saga_store::tenant_storage::TenantStorage;
use saga_store::Store;
use serde_json::Value;
use store_postgres::{PgTenantStorage, PostgresStore};
use store_sqlite::{SqliteStore, SqliteTenantStorage};
use tenancy::{MigrationSource, TenantHook, TenantSteps};

use crate::config::{Config, DatabaseSettings};

/// Opens the store a URL names: the only place concrete stores are chosen.
pub async fn open_store(url: &str, database: &DatabaseSettings) -> anyhow::Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let settings = store_postgres::ConnectSettings {
            url: url.to_string(),
            listen_url: database.listen_url.clone(),
            max_connections: database.pool_size,
        };
        let store = match PostgresStore::open(settings).await {
            Ok(store) => store,
            // The connection error itself (it names the URL, and TLS when it is TLS).
            Err(saga_store::StoreError::Unavailable(cause)) => return Err(anyhow::Error::from_boxed(cause)),
            Err(e) => return Err(anyhow::Error::from(e).context("connecting to PostgreSQL")),
        };
        Ok(Arc::new(store))
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        if let Some(parent) = std::path::Path::new(path.split('?').next().unwrap_or(path)).parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
        }
        Ok(Arc::new(SqliteStore::connect(url).await.context("opening SQLite")?))
    } else {
        bail!("SAGAPLANE_DATABASE_URL must start with postgres:// or sqlite://")
    }
}

/// Opens and migrates the store.
async fn open_and_migrate(url: &str, database: &DatabaseSettings) -> anyhow::Result<Arc<dyn Store>> {
    let store = open_store(url, database).await?;
    let status = store.migrate(saga_runtime::Clock::now_ms(&SystemClock)).await.context("applying migrations")?;
    tracing::info!(backend = store.backend_name(), schema_version = status.applied, "store ready");
    Ok(store)
}

/// What to run in this process.
pub struct Plan {
    pub api: bool,
    pub worker: bool,
    /// Print the dev banner (token and URLs) once listening.
    pub dev_banner: bool,
}

/// The core builtins and, when tenant storage is available, the tenant steps.
pub fn builtins(tenant_steps: Option<Arc<TenantSteps>>) -> BuiltinRegistry {
    let mut registry = BuiltinRegistry::with_core();
    if let Some(steps) = tenant_steps {
        steps.register(&mut registry);
    }
    registry
}

/// Every builtin name definitions may use (validation does not depend on what this process runs).
pub fn builtin_names() -> Vec<String> {
    let mut names: Vec<String> = builtins(None).names().into_iter().map(str::to_string).collect();
    names.extend(tenancy::definitions::steps::ALL.iter().map(|s| s.to_string()));
    names
}

/// Where tenants' data lives: `SAGAPLANE_TENANT_DATABASE_URL`, else the control-plane database;
/// on SQLite, one file per tenant next to the control-plane file.
pub async fn open_tenant_storage(config: &Config, database_url: &str) -> anyhow::Result<Arc<dyn TenantStorage>> {
    let url = config.tenant_database_url.clone().unwrap_or_else(|| database_url.to_string());
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let storage =
            PgTenantStorage::connect(&url, config.database.tenant_pool_size, config.database.tenant_sessions_max)
                .await
                .context("connecting to the tenant PostgreSQL")?;
        return Ok(Arc::new(storage));
    }
    let Some(path) = url.strip_prefix("sqlite://") else {
        bail!("SAGAPLANE_TENANT_DATABASE_URL must start with postgres:// or sqlite://");
    };
    let file = std::path::Path::new(path.split('?').next().unwrap_or(path));
    let dir = file.parent().map(|p| p.join("tenants")).unwrap_or_else(|| "tenants".into());
    Ok(Arc::new(SqliteTenantStorage::new(dir)))
}

/// The tenant parts of one process.
#[derive(Clone)]
pub struct TenantParts {
    pub storage: Arc<dyn TenantStorage>,
    pub migrations: MigrationSource,
}

impl TenantParts {
    pub fn steps(&self, store: Arc<dyn Store>) -> Arc<TenantSteps> {
        Arc::new(TenantSteps {
            tenants: store.clone(),
            definitions: store,
            storage: self.storage.clone(),
            migrations: self.migrations.clone(),
            clock: Arc::new(SystemClock),
        })
    }
}

/// Tenant storage, migrations and the built-in tenant sagas, ready.
async fn prepare_tenancy(config: &Config, database_url: &str, store: &dyn Store) -> anyhow::Result<TenantParts> {
    let now_ms = saga_runtime::Clock::now_ms(&SystemClock);
    tenancy::definitions::install(store, now_ms, config.tenant_migration_concurrency)
        .await
        .context("installing the built-in tenant sagas")?;
    let storage = open_tenant_storage(config, database_url).await?;
    let migrations = MigrationSource::new(config.tenant_migrations_dir.clone());
    Ok(TenantParts { storage, migrations })
}

/// The worker of a serving process: its configuration from `config`, the built-in steps (with
/// the tenant steps when it has the tenant parts), breakers and the operator's address policy,
/// and the tenant hook.
fn worker(config: &Config, store: &Arc<dyn Store>, bound: Option<SocketAddr>, tenants: Option<&TenantParts>) -> Worker {
    let mut instance_config = InstanceConfig::new(config.worker_id.clone());
    instance_config.public_url = config.public_url(bound);
    instance_config.concurrency = config.worker_concurrency;
    instance_config.lease_ttl_ms = config.lease_ttl_ms;
    instance_config.shutdown_grace_ms = config.shutdown_grace_ms;
    instance_config.poll_interval_ms = config.poll_interval_ms;
    instance_config.tracing = config.otlp_endpoint.is_some();
    instance_config.vars = config.vars.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let breakers =
        BreakerConfig { failures_to_open: config.breaker_failures, cool_down_ms: config.breaker_cool_down_ms };
    let steps = tenants.map(|t| t.steps(store.clone()));
    let executors = Executors::with_breakers(builtins(steps), breakers)
        .with_egress(egress::AddressPolicy::operator(config.http_deny.clone()), config.http_env_proxy);
    Worker { config: instance_config, executors, hook: Some(Arc::new(TenantHook)) }
}

/// The outbox's dispatcher (every process that runs a worker runs one; claims keep them apart).
fn dispatch(config: &Config, store: &Arc<dyn Store>) -> Dispatch {
    let schedule = delivery::RetrySchedule::new(config.delivery_retry_schedule_ms.clone());
    let mut dispatcher_config = delivery::DispatcherConfig::new(config.worker_id.clone(), schedule);
    dispatcher_config.deny = config.http_deny.clone();
    dispatcher_config.tenant_allow = config.http_allow.clone().unwrap_or_default();
    dispatcher_config.env_proxy = config.http_env_proxy;
    dispatcher_config.nats_tenant_prefix = config.nats_tenant_prefix.clone();
    dispatcher_config.attempt_timeout_ms = config.delivery_timeout_ms;
    dispatcher_config.disable_after_ms = config.delivery_disable_after_ms;
    // Destinations' breakers open and cool down like steps' endpoints do.
    dispatcher_config.breaker_failures = config.breaker_failures;
    dispatcher_config.breaker_cool_down_ms = config.breaker_cool_down_ms;
    // One knob for how soon a dead process's work is taken over: sagas and deliveries alike.
    dispatcher_config.lease_ttl_ms = config.lease_ttl_ms;
    Dispatch { store: store.clone(), config: dispatcher_config, transport: None }
}

/// The cleaner: finished sagas deleted once `SAGAPLANE_RETENTION` has passed.
fn retention(config: &Config, store: &Arc<dyn Store>) -> Retention {
    let retention_ms = i64::try_from(config.retention_ms).unwrap_or(i64::MAX);
    let sagas: Arc<dyn saga_store::SagaStore> = store.clone();
    let store: Arc<dyn saga_store::RetentionStore> = store.clone();
    let mut retention = saga_runtime::RetentionConfig::new(retention_ms, config.worker_id.clone());
    retention.dead_letter_retention_ms = i64::try_from(config.dead_letter_retention_ms).unwrap_or(i64::MAX);
    retention.archive = config.archive_dir.as_ref().map(|dir| saga_runtime::Archive { dir: dir.clone(), sagas });
    Retention { store, config: retention }
}

/// `SAGAPLANE_ARCHIVE_DIR` exists (made when missing) and takes files: found out at start rather
/// than when the first finished saga is due.
fn check_archive_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("SAGAPLANE_ARCHIVE_DIR: creating {}", dir.display()))?;
    let probe = dir.join(".sagaplane-write-check");
    std::fs::write(&probe, b"").with_context(|| format!("SAGAPLANE_ARCHIVE_DIR: {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The bulk job runner (`POST /v1/sagas/actions`, `POST /v1/deliveries/actions`).
fn bulk(config: &Config, store: &Arc<dyn Store>) -> Bulk {
    let jobs: Arc<dyn saga_store::JobStore> = store.clone();
    let leases: Arc<dyn saga_store::RetentionStore> = store.clone();
    Bulk {
        stores: saga_runtime::BulkStores { jobs, leases },
        config: saga_runtime::BulkConfig::new(config.worker_id.clone()),
    }
}

/// What one process runs besides the store.
#[derive(Clone, Copy, Debug, Default)]
pub struct Parts {
    /// Tenant storage, migrations and the built-in tenant sagas (and their steps in the worker).
    pub tenancy: bool,
    /// An orchestrator instance.
    pub worker: bool,
    /// The outbox's dispatcher.
    pub dispatcher: bool,
}

/// The concrete parts of one process: the store (opened and migrated), the tenant parts, and
/// the running engine ([`Process`]: definitions, terminal hub, worker and dispatcher when it runs
/// them). `serve`, `worker` and the in-process benchmarks build it alike; the API's state over
/// it is [`App::state`].
pub struct App {
    pub store: Arc<dyn Store>,
    pub tenants: Option<TenantParts>,
    pub process: Process,
}

impl App {
    /// Opens and migrates the store at `database_url` and starts `parts`. `bound` is the API's
    /// address, for the callback URLs the worker hands out.
    pub async fn build(
        config: &Config,
        database_url: &str,
        parts: Parts,
        bound: Option<SocketAddr>,
    ) -> anyhow::Result<App> {
        let store = open_and_migrate(database_url, &config.database).await?;
        let tenants = match parts.tenancy {
            true => Some(prepare_tenancy(config, database_url, store.as_ref()).await?),
            false => None,
        };
        if parts.tenancy {
            // Before the worker starts: an onboarding's outcome is addressed to it.
            configure_crm_callback(config, store.as_ref()).await?;
        }
        if let (true, Some(dir)) = (parts.worker, &config.archive_dir) {
            check_archive_dir(dir)?;
        }
        let wiring = Wiring { store: store.clone(), clock: Arc::new(SystemClock), builtin_names: builtin_names() };
        let jobs = Jobs {
            worker: parts.worker.then(|| worker(config, &store, bound, tenants.as_ref())),
            dispatch: parts.dispatcher.then(|| dispatch(config, &store)),
            // Every process with a worker cleans; the lease keeps it to one at a time.
            retention: parts.worker.then(|| retention(config, &store)),
            // Every process with a worker runs bulk jobs; a lease per job keeps each on one.
            bulk: parts.worker.then(|| bulk(config, &store)),
        };
        let process = Process::start(wiring, jobs);
        Ok(App { store, tenants, process })
    }

    /// The API's state over these parts: `config`'s variables and subscription rules, the tenant
    /// hook, the tenant parts (with `config`'s CRM secret) and the worker's intake when there are.
    pub fn state(
        &self,
        config: &Config,
        admin_token: &str,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> server::AppState {
        let vars = config.vars.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        let mut state = server::AppState::new(
            self.store.clone(),
            Arc::new(SystemClock),
            self.process.hub.clone(),
            self.process.definitions.clone(),
            metrics,
            admin_token,
        )
        .with_vars(vars)
        .with_subscription_rules(server::SubscriptionRules {
            nats_tenant_prefix: config.nats_tenant_prefix.clone(),
            tenant_max: config.tenant_subscriptions_max,
        })
        .with_hook(Arc::new(TenantHook));
        if let Some(tenants) = &self.tenants {
            state = state.with_tenancy(server::Tenancy {
                storage: tenants.storage.clone(),
                migrations: tenants.migrations.clone(),
                crm_secret: config.crm_webhook_secret.as_ref().map(|s| s.expose().to_string()),
                delete_grace_ms: config.tenant_delete_grace_ms,
            });
        }
        if let Some(instance) = &self.process.instance {
            state = state.with_intake(instance.intake());
        }
        state
    }

    /// Drains the worker, then stops the dispatcher.
    pub async fn shutdown(self) {
        self.process.shutdown().await;
    }
}

/// The CRM callback's subscription (`SAGAPLANE_CRM_CALLBACK_URL`): made or brought up to date
/// at start; disabled (its pending callbacks kept) when the URL is no longer set.
async fn configure_crm_callback(config: &Config, store: &dyn Store) -> anyhow::Result<()> {
    use saga_store::{StoreError, SubscriptionPatch, SubscriptionRecord, SubscriptionStatus};
    let id = tenancy::hook::CRM_CALLBACK_SUBSCRIPTION_ID;
    let (Some(url), Some(secret)) = (&config.crm_callback_url, &config.crm_callback_secret) else {
        match store.subscription_get(id).await {
            Ok(existing) if existing.status == SubscriptionStatus::Active => {
                let patch = SubscriptionPatch { status: Some(SubscriptionStatus::Disabled), ..Default::default() };
                let now_ms = chrono::Utc::now().timestamp_millis();
                store.subscription_patch(id, &patch, now_ms).await.context("disabling the CRM callback")?;
                tracing::info!("SAGAPLANE_CRM_CALLBACK_URL is not set: the CRM callback subscription is disabled");
            }
            Ok(_) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(e).context("reading the CRM callback subscription"),
        }
        return Ok(());
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let subscription = SubscriptionRecord {
        id,
        destination: saga_store::Destination::Url(url.clone()),
        // No filters: it receives only the outcome events addressed to it.
        events: Vec::new(),
        tenant_id: None,
        managed: false,
        status: SubscriptionStatus::Active,
        rate_limit_per_s: None,
        secret: secret.expose().to_string(),
        previous_secret: None,
        previous_secret_until_ms: None,
        failing_since_ms: None,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
    };
    store.subscription_put(&subscription).await.context("storing the CRM callback subscription")?;
    Ok(())
}

/// Runs until SIGTERM/SIGINT, then drains.
pub async fn serve(config: Config, database_url: &str, plan: Plan) -> anyhow::Result<()> {
    let metrics = crate::telemetry::init_metrics()?;
    let traces = config.otlp_endpoint.as_deref().map(crate::telemetry::init_traces).transpose()?;
    let admin_token = match &config.admin_token {
        Some(token) => token.clone(),
        None if plan.api => bail!("SAGAPLANE_ADMIN_TOKEN is required"),
        None => crate::config::Secret::new(""),
    };
    // Bound before the worker starts, so callback URLs carry the real port (`--listen` may say 0).
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let local: SocketAddr = listener.local_addr()?;
    let parts = Parts { tenancy: true, worker: plan.worker, dispatcher: plan.worker };
    let app = App::build(&config, database_url, parts, Some(local)).await?;
    let store = app.store.clone();
    // Every stored definition's series exist (at 0) from the first scrape.
    if let Err(e) = app.process.definitions.warm().await {
        tracing::warn!(error = %e, "could not load the stored definitions at start");
    }
    let mut state = app.state(&config, admin_token.expose(), Some(metrics));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    state = state.with_shutdown(stop_rx.clone());
    let _gauges = crate::telemetry::spawn_store_gauges(store.clone(), stop_rx.clone());
    let router = if plan.api { Some(server::router(state.clone())) } else { None };
    let ops_only = if !plan.api { Some(server::ops_router(state.clone())) } else { None };
    let mut http = None;
    if let Some(router) = router.or(ops_only) {
        tracing::info!(address = %local, "listening");
        if plan.dev_banner {
            println!("sagaplane dev: listening on http://{local}");
            println!("admin token: {}", admin_token.expose());
            println!("dashboard: http://{local}/ui/");
            println!("database: {}", crate::config::redact_url(database_url));
            onboard_demo_tenant(&state).await;
        } else {
            println!("listening on http://{local}");
        }
        let mut stop = stop_rx.clone();
        http = Some(tokio::spawn(async move {
            server::serve(listener, router, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
        }));
    }
    shutdown_signal().await;
    tracing::info!("shutting down: no new claims, draining in-flight steps");
    // The API keeps serving while the worker drains (bounded by the shutdown grace): an async
    // participant's callback or heartbeat during the drain is accepted, not refused.
    app.shutdown().await;
    let _ = stop_tx.send(true);
    if let Some(http) = http {
        http.await.context("HTTP task")?.context("HTTP server")?;
    }
    crate::telemetry::shutdown_traces(traces);
    tracing::info!("bye");
    Ok(())
}

/// SIGINT (Ctrl-C) or SIGTERM, whichever comes first.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

/// `sagaplane dev` onboards a demo tenant (its own SQLite database) on a fresh data directory.
async fn onboard_demo_tenant(state: &server::AppState) {
    let demo = serde_json::json!({"id": "demo", "name": "Demo tenant", "tier": "silo", "sla_tier": "basic"});
    match server::onboard(state, &demo, None).await {
        Ok((_, body)) => println!("demo tenant: demo (provisioning; saga {})", body["saga_id"].as_str().unwrap_or("")),
        Err(server::ApiError::Conflict(_)) => println!("demo tenant: demo (exists)"),
        Err(e) => tracing::warn!(error = %e, "could not onboard the demo tenant"),
    }
}

/// A worker with no HTTP listener at all.
pub async fn serve_worker_only(config: Config, database_url: &str) -> anyhow::Result<()> {
    let _metrics = crate::telemetry::init_metrics()?;
    let traces = config.otlp_endpoint.as_deref().map(crate::telemetry::init_traces).transpose()?;
    let parts = Parts { tenancy: true, worker: true, dispatcher: true };
    let app = App::build(&config, database_url, parts, None).await?;
    let (_stop_gauges, gauges_stopped) = tokio::sync::watch::channel(false);
    let _gauges = crate::telemetry::spawn_store_gauges(app.store.clone(), gauges_stopped);
    println!("worker {} running", config.worker_id);
    shutdown_signal().await;
    tracing::info!("shutting down: no new claims, draining in-flight steps");
    app.shutdown().await;
    crate::telemetry::shutdown_traces(traces);
    tracing::info!("bye");
    Ok(())
}

/// A random admin token for `sagaplane dev`.
/// `sagaplane dev`'s admin token: the one kept in `<data_dir>/admin-token` (mode 0600), so an
/// exported `SAGAPLANE_TOKEN` keeps working across restarts; a new one when there is none or
/// `reset` asks for it.
pub fn dev_token(data_dir: &std::path::Path, reset: bool) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("admin-token");
    if !reset {
        if let Ok(kept) = std::fs::read_to_string(&path) {
            let kept = kept.trim();
            if !kept.is_empty() {
                return Ok(kept.to_string());
            }
        }
    }
    let token = generate_token();
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing the admin token to {}", path.display()))?;
    file.write_all(token.as_bytes()).with_context(|| format!("writing the admin token to {}", path.display()))?;
    Ok(token)
}

pub fn generate_token() -> String {
    use rand::TryRngCore;
    let mut bytes = [0u8; 24];
    if rand::rngs::OsRng.try_fill_bytes(&mut bytes).is_err() {
        // No OS randomness: fall back to a time-and-pid derived token (dev only, local).
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        bytes[..16].copy_from_slice(&(seed ^ u128::from(std::process::id())).to_le_bytes());
    }
    format!("spdev_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}
