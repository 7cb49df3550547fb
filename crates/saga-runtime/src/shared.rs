//! What the claim loop, the heartbeat and the drivers of one instance share: the store, the
//! clock, the executors, the committer, the leases held, the local retry timers.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use rand::rngs::SmallRng;
use rand::Rng;
use saga_store::EngineStore;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::clock::Clock;
use crate::committer::Committer;
use crate::config::InstanceConfig;
use crate::definitions::DefinitionCache;
use crate::executor::Executors;
use crate::hub::TerminalHub;

/// A lease this instance holds, shared with its driver.
pub(crate) struct HeldLease {
    pub fencing_token: i64,
    pub lost: Arc<AtomicBool>,
    /// When a cancel was requested, as the heartbeat found it: the driver interrupts a running
    /// action attempt.
    pub cancel: tokio::sync::watch::Sender<Option<i64>>,
}

/// State shared by the claim loop, the heartbeat and the drivers.
pub(crate) struct Shared {
    pub store: Arc<dyn EngineStore>,
    pub clock: Arc<dyn Clock>,
    pub executors: Executors,
    pub config: InstanceConfig,
    pub hub: TerminalHub,
    pub committer: Committer,
    /// By saga id: the heartbeat renews in id order, and an instance behaves the same on every
    /// run (the simulator replays a seed exactly).
    pub held: Mutex<BTreeMap<Uuid, HeldLease>>,
    pub definitions: Arc<DefinitionCache>,
    pub timers: Mutex<BinaryHeap<Reverse<i64>>>,
    pub wake: Notify,
    pub rng: Mutex<SmallRng>,
    pub shutting_down: Arc<AtomicBool>,
    pub hook: Option<Arc<dyn crate::hook::TransitionHook>>,
    /// Leases of drivers that stopped abnormally, for the claim loop to give up.
    pub abandoned: Mutex<Vec<saga_store::LeaseRef>>,
}

impl Shared {
    pub fn jitter_sample(&self) -> f64 {
        match self.rng.lock() {
            Ok(mut rng) => rng.random::<f64>(),
            Err(_) => 0.5,
        }
    }

    pub fn schedule_wake(&self, at_ms: i64) {
        if let Ok(mut timers) = self.timers.lock() {
            timers.push(Reverse(at_ms));
        }
        self.wake.notify_one();
    }

    pub fn forget_lease(&self, id: Uuid) {
        if let Ok(mut held) = self.held.lock() {
            held.remove(&id);
        }
    }
}
