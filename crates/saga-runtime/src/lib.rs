//! The orchestrator instance: claim loop, leases and heartbeats, fencing, step executors
//! (builtin and HTTP), group commit, and graceful shutdown.
//!
//! Design note. An [`Instance`] claims due sagas up to its concurrency limit and spawns one
//! driver per saga. A driver keeps its saga across consecutive steps (no re-claim between
//! steps): it asks the pure state machine what to run, runs it, and hands the resulting
//! transition to the [`committer`], which folds the transitions of many drivers into one
//! transaction (group commit) and answers each driver with `Committed` or `Fenced`. A driver
//! runs the next step only after its transition is committed. A retry that must wait is
//! committed with its due time and the lease handed back, freeing the worker; a local timer
//! (and, across instances, the due index) brings it back. One heartbeat renews every lease the
//! instance holds; a lease it lost stops that driver, and its writes would be fenced anyway.

pub mod archive;
pub mod blockers;
pub mod bulk;
pub mod clock;
pub mod committer;
mod config;
pub mod definitions;
mod driver;
pub mod executor;
pub mod hook;
pub mod hub;
pub mod instance;
pub mod intake;
pub mod metrics_names;
pub mod operator;
mod outbox;
pub mod retention;
mod shared;
pub mod trace;

pub use archive::Archive;
pub use bulk::{BulkConfig, BulkHandle, BulkStores};
pub use clock::{Clock, SystemClock};
pub use definitions::{DefinitionCache, DefinitionError};
pub use driver::{callback_token_hash, child_saga_id, random_256_bits, CHILD_RECHECK_MS};
pub use executor::breaker::BreakerConfig;
pub use executor::http::{HttpRequest, HttpTransport};
pub use executor::{builtin::BuiltinRegistry, AttemptContext, Executors};
pub use hook::TransitionHook;
pub use hub::{TerminalHub, TerminalWatch};
pub use instance::{Instance, InstanceConfig, InstanceHandle};
pub use intake::Intake;
pub use operator::{BulkAction, Operator, OperatorError};
pub use retention::{RetentionConfig, RetentionHandle};

/// Names of the built-in steps that always exist.
pub const CORE_BUILTINS: &[&str] = &["core.echo", "core.fail", "core.sleep"];
