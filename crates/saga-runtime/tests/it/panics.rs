//! A panic in a driver used to leave its lease held — and renewed by the heartbeat for as long as
//! the process lived — so the saga never moved again. Now a builtin's panic is a failed attempt,
//! and a driver that stops abnormally gives its lease up.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use saga_core::{Definition, HistoryEvent, Outcome, SagaState, SagaStatus};
use saga_runtime::instance::ABANDONED_RETRY_MS;
use saga_runtime::{
    BuiltinRegistry, Clock, DefinitionCache, Executors, Instance, InstanceConfig, InstanceHandle, SystemClock,
    TerminalHub, TransitionHook,
};
use saga_store::prelude::*;
use saga_store::{SagaCreate, SagaRecord, TenantChange};
use serde_json::json;
use uuid::Uuid;

struct Engine {
    definition: Definition,
    store: Arc<store_sqlite::SqliteStore>,
    handle: InstanceHandle,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn engine(
    builtins: BuiltinRegistry,
    hook: Option<Arc<dyn TransitionHook>>,
    document: serde_json::Value,
) -> Engine {
    let dir = std::env::temp_dir().join(format!("sagaplane-runtime-{}", Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}", dir.join("engine.db").display());
    let store = Arc::new(store_sqlite::SqliteStore::connect(&url).await.expect("open sqlite"));
    store.migrate(SystemClock.now_ms()).await.expect("migrate");
    store.definition_put("p", &document, SystemClock.now_ms()).await.expect("definition");
    let names: Vec<String> = builtins.names().iter().map(|name| name.to_string()).collect();
    let known: Vec<&str> = names.iter().map(String::as_str).collect();
    let definition = saga_core::validate::validate_definition("p", &document, &known).expect("valid definition");
    let definitions = Arc::new(DefinitionCache::new(store.clone(), names.clone()));
    let mut config = InstanceConfig::new("w1");
    config.lease_ttl_ms = 900;
    config.poll_interval_ms = 100;
    let instance = Instance::new(
        store.clone(),
        Arc::new(SystemClock),
        Executors::new(builtins),
        definitions,
        config,
        TerminalHub::default(),
    );
    let instance = match hook {
        Some(hook) => instance.with_hook(hook),
        None => instance,
    };
    Engine { definition, store, handle: instance.start(), _dir: TempDir(dir) }
}

fn definition(step: &str) -> serde_json::Value {
    json!({"steps": [{"name": "only", "action": {"builtin": step},
                      "retry": {"max_attempts": 3, "initial_interval": "10ms", "jitter": 0.0}}]})
}

impl Engine {
    async fn start(&self) -> Uuid {
        let state = SagaState::new(&self.definition);
        let params = SagaCreate::new("p", 1, json!({}), state, SystemClock.now_ms());
        let id = params.id;
        self.handle.intake().create(params).await.expect("created");
        id
    }

    async fn until(&self, id: Uuid, what: &str, done: impl Fn(&SagaRecord) -> bool) -> SagaRecord {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let saga = self.store.saga_get(id).await.expect("saga");
            if done(&saga) {
                return saga;
            }
            assert!(Instant::now() < deadline, "{what} never happened: {saga:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_builtin_is_a_failed_attempt() {
    let calls = Arc::new(AtomicU32::new(0));
    let mut builtins = BuiltinRegistry::with_core();
    let counted = calls.clone();
    builtins.register(
        "test.panic_once",
        Arc::new(move |input, _| {
            let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
            Box::pin(async move {
                assert!(!first, "a bug in a builtin");
                Outcome::Succeeded(input)
            })
        }),
    );
    let engine = engine(builtins, None, definition("test.panic_once")).await;
    let id = engine.start().await;
    let saga = engine.until(id, "completion", |s| s.status == SagaStatus::Completed).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "retried once after the panic");
    let events = engine.store.saga_events(id, 0, 1_000).await.expect("events");
    let failed = events.iter().find(|e| e.kind == "step_failed").expect("the panic is a failed attempt");
    assert!(failed.data.to_string().contains("panicked: a bug in a builtin"), "{failed:?}");
    assert_eq!(saga.lease_owner, None);
    engine.handle.shutdown().await;
}

/// A hook that panics: a bug in the engine's own code, outside any step.
struct PanickingHook;

impl TransitionHook for PanickingHook {
    fn tenant_change(&self, _: &SagaRecord, _: &Definition, _: &SagaState, _: &[HistoryEvent]) -> Option<TenantChange> {
        panic!("a bug in a transition hook");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_that_panics_gives_its_lease_up() {
    let engine = engine(BuiltinRegistry::with_core(), Some(Arc::new(PanickingHook)), definition("core.echo")).await;
    let before = SystemClock.now_ms();
    let id = engine.start().await;
    let saga = engine.until(id, "the lease given up", |s| s.fencing_token >= 1 && s.lease_owner.is_none()).await;
    assert!(saga.run_at_ms >= before + ABANDONED_RETRY_MS, "driven again later, not at once: {saga:?}");
    // Three lease lengths later nobody holds it: the heartbeat does not renew a dead driver's lease.
    tokio::time::sleep(Duration::from_millis(2_700)).await;
    let saga = engine.store.saga_get(id).await.expect("saga");
    assert_eq!(saga.lease_owner, None, "{saga:?}");
    assert!(!saga.status.is_terminal(), "{saga:?}");
    engine.handle.shutdown().await;
}
