//! Deterministic simulation of the engine (TigerBeetle's VOPR idea): several real `saga-runtime`
//! instances, each with its outbox dispatcher (started as a server starts them, through
//! `process::Process`), in one process on a single-threaded Tokio runtime with paused time, over
//! an in-memory store ([`memory`]), in-process participants ([`world`]) and webhook receivers
//! ([`receivers`]), with every choice — the
//! workload, the faults, their timing — drawn from one seed. After a run the [`checker`] reads the
//! whole history and asserts the engine's guarantees (docs/design.md); a failing seed replays bit
//! for bit (`cargo run -p sim -- --seed S`).
//!
//! Layout: [`memory`] the store model; [`scenario`] what a seed asks for (definitions, sagas,
//! faults); [`world`] the participants, the instances' links to the store and the network, and
//! the faults they inject; [`receivers`] where webhooks land, and how each receiver behaves;
//! [`run`] one seeded run; [`budget`] the work a run may do before it
//! counts as spinning; [`checker`] the invariants.

pub mod budget;
pub mod checker;
pub mod memory;
pub mod receivers;
pub mod run;
pub mod scenario;
pub mod world;

pub use memory::{MemoryStore, Sequencer, StoreBugs};
pub use run::{run_seed, run_seed_with, Bugs, RunOptions, RunReport};
