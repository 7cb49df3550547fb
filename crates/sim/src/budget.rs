//! A run's budget of work: every call an instance makes to the store and every request it
//! sends to a participant spends one unit. A run whose engine spins — claims and commits in a
//! loop without simulated time moving, which on a paused clock never ends and grows the
//! journal until the process dies — runs out of it; the run then stops and reports a liveness
//! violation with its seed instead of taking the runner down (TigerBeetle VOPR's liveness mode).
//!
//! The budget is counted, not timed, so a seed that runs out of it does so at the same call on
//! every replay. Memory follows from it: the journal and the ledgers only grow by store calls
//! and participant requests, each of bounded size.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// The default number of store calls and participant requests a run may make. The busiest of
/// 20,000 passing seeds used about a hundredth of it (docs/simulation.md); a run that spends
/// all of it holds a few hundred MB.
pub const WORK_MAX: u64 = 100_000;

pub struct Budget {
    limit: u64,
    spent: AtomicU64,
    exhausted: Notify,
}

impl Budget {
    pub fn new(limit: u64) -> Self {
        Budget { limit, spent: AtomicU64::new(0), exhausted: Notify::new() }
    }

    /// Spends one unit. Past the limit it never returns: the spinning task stops where it is,
    /// and the run, woken by [`Self::exhausted`], reports.
    pub async fn spend(&self) {
        let spent = self.spent.fetch_add(1, Ordering::SeqCst) + 1;
        if spent < self.limit {
            return;
        }
        if spent == self.limit {
            // Stores a permit if the run is not waiting yet.
            self.exhausted.notify_one();
        }
        std::future::pending::<()>().await;
    }

    /// Units spent so far.
    pub fn spent(&self) -> u64 {
        self.spent.load(Ordering::SeqCst).min(self.limit)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Returns once the budget is spent.
    pub async fn exhausted(&self) {
        self.exhausted.notified().await;
    }
}
