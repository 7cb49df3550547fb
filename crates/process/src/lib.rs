//! One process's running engine, wired in one place: the definition cache (validating against
//! the built-in step names the process has), the terminal hub, the orchestrator instance (its
//! executors, transition hook and clock) and the outbox's dispatcher (on the same clock, through
//! its webhook transport), the cleaner that deletes finished sagas past their retention, the
//! runner of bulk jobs, and the order they stop in.
//!
//! Design note. What differs between a server and the simulator is handed in — the stores, the
//! clock, the executors (real network or a simulated link), the dispatcher's transport and
//! configuration — and how the parts fit is written once here: `sagaplane`'s `App::build`
//! (serve, worker, dev, the in-process benchmarks, and so every black-box test of the binary)
//! and `sim`'s processes both start through [`Process::start`].

use std::sync::Arc;

use delivery::send::WebhookTransport;
use delivery::{Dispatcher, DispatcherConfig, DispatcherHandle};
use saga_runtime::{
    BulkConfig, BulkHandle, BulkStores, Clock, DefinitionCache, Executors, Instance, InstanceConfig, InstanceHandle,
    Operator, RetentionConfig, RetentionHandle, TerminalHub, TransitionHook,
};
use saga_store::{DispatchStore, EngineStore, RetentionStore};

/// What every process has: the engine's store, its clock, and the built-in step names its
/// definitions may use.
pub struct Wiring {
    pub store: Arc<dyn EngineStore>,
    pub clock: Arc<dyn Clock>,
    pub builtin_names: Vec<String>,
}

/// The orchestrator instance of a process that runs one.
pub struct Worker {
    pub config: InstanceConfig,
    pub executors: Executors,
    /// What each transition means beyond the saga (the tenant hook), committed with it.
    pub hook: Option<Arc<dyn TransitionHook>>,
}

/// The outbox's dispatcher of a process that runs one.
pub struct Dispatch {
    pub store: Arc<dyn DispatchStore>,
    pub config: DispatcherConfig,
    /// Where webhooks go; None: the network, through `egress`.
    pub transport: Option<Arc<dyn WebhookTransport>>,
}

/// The cleaner of a process that runs one (every process with a worker: a lease keeps the
/// deleting to one instance at a time).
pub struct Retention {
    pub store: Arc<dyn RetentionStore>,
    pub config: RetentionConfig,
}

/// The bulk job runner of a process that runs one (every process with a worker: a lease per
/// job keeps each on one instance at a time). It acts through the worker's transition hook.
pub struct Bulk {
    pub stores: BulkStores,
    pub config: BulkConfig,
}

/// What a process runs besides its definitions and hub.
#[derive(Default)]
pub struct Jobs {
    pub worker: Option<Worker>,
    pub dispatch: Option<Dispatch>,
    pub retention: Option<Retention>,
    pub bulk: Option<Bulk>,
}

/// A started process.
pub struct Process {
    /// The cache the API and the worker share, so each version is validated once.
    pub definitions: Arc<DefinitionCache>,
    /// Terminal sagas, for whoever waits on one (long-polls, the benchmarks).
    pub hub: TerminalHub,
    pub instance: Option<InstanceHandle>,
    pub dispatcher: Option<DispatcherHandle>,
    pub retention: Option<RetentionHandle>,
    pub bulk: Option<BulkHandle>,
}

impl Process {
    /// Starts the jobs it is given, over `wiring`.
    pub fn start(wiring: Wiring, jobs: Jobs) -> Process {
        let Jobs { worker, dispatch, retention, bulk } = jobs;
        let Wiring { store, clock, builtin_names } = wiring;
        let definitions = Arc::new(DefinitionCache::new(store.clone(), builtin_names));
        let hub = TerminalHub::default();
        let hook = worker.as_ref().and_then(|worker| worker.hook.clone());
        let bulk = bulk.map(|bulk| {
            let operator = Operator::new(store.clone(), definitions.clone(), clock.clone(), hub.clone(), hook);
            saga_runtime::bulk::start(bulk.stores, operator, clock.clone(), bulk.config)
        });
        let instance = worker.map(|worker| {
            let instance =
                Instance::new(store, clock.clone(), worker.executors, definitions.clone(), worker.config, hub.clone());
            match worker.hook {
                Some(hook) => instance.with_hook(hook),
                None => instance,
            }
            .start()
        });
        let dispatcher = dispatch.map(|dispatch| {
            let dispatcher = Dispatcher::new(dispatch.store, dispatch.config).with_clock(clock.clone());
            match dispatch.transport {
                Some(transport) => dispatcher.with_transport(transport),
                None => dispatcher,
            }
            .start()
        });
        let retention = retention.map(|r| saga_runtime::retention::start(r.store, clock, r.config));
        Process { definitions, hub, instance, dispatcher, retention, bulk }
    }

    /// Stops the bulk runner (between two items), drains the worker (its sagas handed back),
    /// then stops the dispatcher and the cleaner.
    pub async fn shutdown(self) {
        if let Some(bulk) = self.bulk {
            bulk.shutdown().await;
        }
        if let Some(instance) = self.instance {
            instance.shutdown().await;
        }
        if let Some(dispatcher) = self.dispatcher {
            dispatcher.shutdown().await;
        }
        if let Some(retention) = self.retention {
            retention.shutdown().await;
        }
    }
}
