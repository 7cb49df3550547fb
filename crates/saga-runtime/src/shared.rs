//! What the claim loop, the heartbeat and the drivers of one instance share: the store, the
//! clock, the executors, the committer, the leases held, the local retry timers.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
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

/// What a driver knows of its lease: lost (the heartbeat found another owner), and until when
/// it holds by this instance's clock (the last renewal plus the TTL).
pub(crate) struct LeaseState {
    pub lost: AtomicBool,
    pub expires_at_ms: AtomicI64,
}

impl LeaseState {
    pub fn new(expires_at_ms: i64) -> Self {
        LeaseState { lost: AtomicBool::new(false), expires_at_ms: AtomicI64::new(expires_at_ms) }
    }

    /// Whether the driver may still act: not lost, and not expired. A driver paused past its
    /// lease (a long GC pause, a frozen VM) finds it expired when it wakes, and stops before
    /// sending anything more, even if no other instance has claimed the saga yet — one that
    /// will, at any moment (the simulator found such a driver and its successor, in the same
    /// instance, compensating out of order: seed 1110).
    pub fn usable(&self, now_ms: i64) -> bool {
        !self.lost.load(Ordering::SeqCst) && now_ms < self.expires_at_ms.load(Ordering::SeqCst)
    }
}

/// A lease this instance holds, shared with its driver.
pub(crate) struct HeldLease {
    pub fencing_token: i64,
    pub state: Arc<LeaseState>,
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
    /// Leases of drivers that stopped on a store error, for the claim loop to hand back (due
    /// shortly), so the saga resumes without waiting for its lease to expire.
    pub unsettled: Mutex<Vec<saga_store::LeaseRef>>,
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

    /// A driver stopped on a store error (its commit may or may not have been written): its
    /// lease is handed back by the claim loop, or at shutdown. Before, it was only forgotten,
    /// so the saga waited a whole lease TTL — and a graceful stop kept it (found by the
    /// simulator, seed 17).
    pub fn hand_back_unsettled(&self, lease: saga_store::LeaseRef) {
        if let Ok(mut unsettled) = self.unsettled.lock() {
            unsettled.push(lease);
        }
        self.wake.notify_one();
    }

    /// Forgets the lease of a driver that ended; only its own (with `fencing_token`): the saga
    /// may have been claimed again meanwhile, by this instance too.
    pub fn forget_lease(&self, id: Uuid, fencing_token: i64) {
        if let Ok(mut held) = self.held.lock() {
            if held.get(&id).is_some_and(|lease| lease.fencing_token == fencing_token) {
                held.remove(&id);
            }
        }
    }
}
