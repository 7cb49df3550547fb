//! One orchestrator instance: the claim loop, the heartbeat, local retry timers, shutdown.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use saga_store::{ClaimParams, Claimed, EngineStore, LeaseRef, SagaCreates, StoreError, CLAIM_BATCH_MAX};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::committer::Committer;
pub use crate::config::InstanceConfig;
use crate::definitions::DefinitionCache;
use crate::executor::Executors;
use crate::hub::TerminalHub;
use crate::intake::{Intake, LocalSlots};
use crate::metrics_names::{SAGA_CLAIMED_TOTAL, SAGA_CLAIM_DURATION_SECONDS, SAGA_IN_FLIGHT};
use crate::shared::{HeldLease, LeaseState, Shared};

/// An orchestrator instance, ready to start.
pub struct Instance {
    shared: Arc<Shared>,
    committer_task: tokio::task::JoinHandle<()>,
    creates: SagaCreates,
}

/// A running instance.
pub struct InstanceHandle {
    shutdown: StopSignal,
    task: tokio::task::JoinHandle<()>,
    intake: Intake,
}

impl InstanceHandle {
    /// Where new sagas enter: created leased to this instance and started at once while it has
    /// a free slot.
    pub fn intake(&self) -> Intake {
        self.intake.clone()
    }

    /// Stops claiming, lets drivers finish their current step, hands back leases, and waits.
    pub async fn shutdown(self) {
        self.shutdown.ask();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "instance task failed");
        }
    }
}

impl Instance {
    /// `definitions` should be the cache the API uses too, so each version is validated once.
    pub fn new(
        store: Arc<dyn EngineStore>,
        clock: Arc<dyn Clock>,
        executors: Executors,
        definitions: Arc<DefinitionCache>,
        config: InstanceConfig,
        hub: TerminalHub,
    ) -> Self {
        let (committer, committer_task) = Committer::start(store.clone());
        let (creates, _create_writer) = SagaCreates::start(store.clone());
        let seed = config.seed.unwrap_or_else(os_seed);
        let shared = Arc::new(Shared {
            store,
            clock,
            executors,
            hub,
            committer,
            held: Mutex::new(BTreeMap::new()),
            definitions,
            timers: Mutex::new(BinaryHeap::new()),
            wake: Notify::new(),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            shutting_down: Arc::new(AtomicBool::new(false)),
            hook: None,
            abandoned: Mutex::new(Vec::new()),
            unsettled: Mutex::new(Vec::new()),
            config,
        });
        Instance { shared, committer_task, creates }
    }

    /// Commits what `hook` derives from each transition together with it.
    pub fn with_hook(mut self, hook: Arc<dyn crate::hook::TransitionHook>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.hook = Some(hook);
        }
        self
    }

    /// Starts the claim loop and the heartbeat.
    pub fn start(self) -> InstanceHandle {
        let shutdown = StopSignal::default();
        let shutdown_rx = shutdown.clone();
        let permits = Arc::new(Semaphore::new(self.shared.config.concurrency.max(1) as usize));
        let (sender, handed) = mpsc::unbounded_channel();
        let slots = LocalSlots {
            shutting_down: self.shared.shutting_down.clone(),
            worker_id: self.shared.config.worker_id.clone(),
            lease_ttl_ms: self.shared.config.lease_ttl_ms,
            store: self.shared.store.clone(),
            clock: self.shared.clock.clone(),
            permits: permits.clone(),
            sender,
        };
        let intake = Intake::with_instance(self.creates, slots);
        let task = tokio::spawn(run(self.shared, self.committer_task, permits, handed, shutdown_rx));
        InstanceHandle { shutdown, task, intake }
    }
}

/// A seed from the OS, or a fixed one where the OS has no randomness (jitter only).
fn os_seed() -> u64 {
    use rand::TryRngCore;
    rand::rngs::OsRng.try_next_u64().unwrap_or(0x5eed)
}

fn spawn_driver(shared: &Arc<Shared>, permit: OwnedSemaphorePermit, drivers: &mut JoinSet<()>, claim: Claimed) {
    let expires_at_ms = claim.record.lease_expires_at_ms.unwrap_or_else(|| shared.clock.now_ms());
    let lease_state = Arc::new(LeaseState::new(expires_at_ms));
    let (cancel, cancelled) = watch::channel(None);
    if let Ok(mut held) = shared.held.lock() {
        held.insert(
            claim.record.id,
            HeldLease { fencing_token: claim.record.fencing_token, state: lease_state.clone(), cancel },
        );
    }
    metrics::gauge!(SAGA_IN_FLIGHT).increment(1.0);
    let shared = shared.clone();
    drivers.spawn(async move {
        let lease = LeaseRef { id: claim.record.id, fencing_token: claim.record.fencing_token };
        let guard = DriverGuard { shared: shared.clone(), lease, finished: false };
        crate::driver::drive(shared.clone(), claim, lease_state, cancelled).await;
        guard.finish();
        drop(permit);
        shared.wake.notify_one();
    });
}

/// How long a saga whose driver stopped abnormally (a panic in the engine) waits before it is
/// driven again, so a saga that trips a bug does not spin.
pub const ABANDONED_RETRY_MS: i64 = 60_000;

/// Makes sure a driver that ends without finishing — it panicked — gives its lease up: the
/// heartbeat would otherwise renew it for as long as the process lives, and the saga would never
/// move again. (At shutdown an aborted driver's lease stays held: `release_all` hands it back.)
struct DriverGuard {
    shared: Arc<Shared>,
    lease: LeaseRef,
    finished: bool,
}

impl DriverGuard {
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for DriverGuard {
    fn drop(&mut self) {
        metrics::gauge!(SAGA_IN_FLIGHT).decrement(1.0);
        if self.finished || self.shared.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        tracing::error!(
            saga_id = %self.lease.id,
            retry_in_ms = ABANDONED_RETRY_MS,
            "the saga's driver stopped abnormally; its lease is given up and the saga driven again later"
        );
        self.shared.forget_lease(self.lease.id, self.lease.fencing_token);
        if let Ok(mut abandoned) = self.shared.abandoned.lock() {
            abandoned.push(self.lease);
        }
        self.shared.wake.notify_one();
    }
}

/// Gives up the leases of drivers that stopped abnormally (see [`DriverGuard`]).
/// Also hands back the leases of drivers that stopped on a store error, due after
/// [`STORE_ERROR_RETRY_MS`].
async fn release_abandoned(shared: &Shared) {
    for (list, delay_ms) in [(&shared.abandoned, ABANDONED_RETRY_MS), (&shared.unsettled, STORE_ERROR_RETRY_MS)] {
        let leases: Vec<LeaseRef> = match list.lock() {
            Ok(mut leases) => leases.drain(..).collect(),
            Err(_) => continue,
        };
        if leases.is_empty() {
            continue;
        }
        let run_at_ms = shared.clock.now_ms().saturating_add(delay_ms);
        if let Err(e) = shared.store.lease_release(&shared.config.worker_id, &leases, run_at_ms).await {
            keep_for_later(shared, list, leases, &e);
        }
    }
}

/// A hand-back that failed because the database is unreachable (a failover, a restart) is
/// tried again on the next turn of the claim loop, which backs off while claims fail too: the
/// sagas then resume as soon as a writable primary answers, not a lease TTL later. A late
/// hand-back changes nothing if the saga was claimed meanwhile (the lease's fencing token no
/// longer matches). Any other error leaves the leases to expire.
fn keep_for_later(shared: &Shared, list: &Mutex<Vec<LeaseRef>>, leases: Vec<LeaseRef>, error: &StoreError) {
    if !matches!(error, StoreError::Unavailable(_)) || shared.shutting_down.load(Ordering::SeqCst) {
        tracing::warn!(error = %error, sagas = leases.len(), "handing back leases failed; they will expire");
        return;
    }
    tracing::warn!(error = %error, sagas = leases.len(), "handing back leases failed; trying again when the database answers");
    if let Ok(mut pending) = list.lock() {
        pending.extend(leases);
    }
}

/// How long a saga whose driver stopped on a store error waits before it is driven again.
pub const STORE_ERROR_RETRY_MS: i64 = 1_000;

async fn run(
    shared: Arc<Shared>,
    committer_task: tokio::task::JoinHandle<()>,
    permits: Arc<Semaphore>,
    mut handed: mpsc::UnboundedReceiver<(Claimed, OwnedSemaphorePermit)>,
    shutdown: StopSignal,
) {
    let heartbeat = tokio::spawn(heartbeat(shared.clone(), shutdown.clone()));
    let work = shared.store.work_signal();
    let mut claims = ClaimLoop::new(shared.clone(), permits);
    tracing::info!(worker = %shared.config.worker_id, concurrency = shared.config.concurrency, "instance started");
    while !shutdown.is_asked() {
        while claims.drivers.try_join_next().is_some() {}
        release_abandoned(&shared).await;
        if claims.claim().await {
            continue;
        }
        claims.wait(&work, &mut handed, &shutdown).await;
    }
    drain(claims, handed).await;
    let _ = heartbeat.await;
    // The committer ends once every handle to it (in `Shared`) is gone.
    drop(shared);
    if let Err(e) = committer_task.await {
        tracing::warn!(error = %e, "committer ended abnormally");
    }
    tracing::info!("instance stopped");
}

/// The claim loop between its rounds: the drivers it started and what decides the next claim.
struct ClaimLoop {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    drivers: JoinSet<()>,
    /// Claims that failed in a row (backing off while there are).
    failures: u32,
    /// Whether the last claim filled every free permit (so a finished driver may find backlog).
    saturated: bool,
    claim_now: bool,
    /// When the last claim ran: the poll interval counts from it, so that sagas handed over at
    /// creation (which wake the loop without a claim) never put the next poll off. Before, a
    /// steady stream of new sagas kept a released or retried saga waiting for as long as the
    /// stream lasted (seen through a failover: 18 s for a lease handed back on reconnect).
    last_claim_ms: i64,
}

impl ClaimLoop {
    fn new(shared: Arc<Shared>, permits: Arc<Semaphore>) -> Self {
        let last_claim_ms = shared.clock.now_ms();
        ClaimLoop {
            shared,
            permits,
            drivers: JoinSet::new(),
            failures: 0,
            saturated: false,
            claim_now: true,
            last_claim_ms,
        }
    }

    /// Claims due sagas when a claim is due and slots are free, and starts a driver for each.
    /// True when the claim filled every slot and one is free again: claim again at once.
    async fn claim(&mut self) -> bool {
        let available = self.permits.available_permits().min(CLAIM_BATCH_MAX as usize);
        if self.claim_now && available == 0 {
            // Work may be waiting and every slot is busy: claim as soon as a driver finishes
            // (without this, a notification that arrived now was spent, and the work waited
            // for the next poll). This counts as the poll: the next one is a poll interval
            // away, not due at once in a loop.
            self.saturated = true;
            self.last_claim_ms = self.shared.clock.now_ms();
        }
        if !self.claim_now || available == 0 {
            return false;
        }
        let shared = &self.shared;
        let params = ClaimParams {
            worker_id: shared.config.worker_id.clone(),
            limit: available as u32,
            now_ms: shared.clock.now_ms(),
            lease_ttl_ms: shared.config.lease_ttl_ms,
        };
        self.last_claim_ms = params.now_ms;
        // Metrics only: how long the claim statement took, on the monotonic clock.
        let claim_started = std::time::Instant::now();
        let result = shared.store.saga_claim_due(&params).await;
        metrics::histogram!(SAGA_CLAIM_DURATION_SECONDS).record(claim_started.elapsed().as_secs_f64());
        match result {
            Ok(claimed) => {
                self.failures = 0;
                self.saturated = claimed.len() == available;
                metrics::counter!(SAGA_CLAIMED_TOTAL).increment(claimed.len() as u64);
                self.start_drivers(claimed).await;
                self.saturated && self.permits.available_permits() > 0
            }
            Err(e) => {
                self.failures += 1;
                tracing::warn!(error = %e, failures = self.failures, "claim failed; backing off");
                false
            }
        }
    }

    /// A driver for each claimed saga that still finds a slot.
    async fn start_drivers(&mut self, claimed: Vec<Claimed>) {
        let shared = &self.shared;
        let mut no_slot = Vec::new();
        for claim in claimed {
            // The API's reservations draw on the same slots while the claim runs
            // (the claim does not hold them, so new sagas keep starting at once).
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => spawn_driver(shared, permit, &mut self.drivers, claim),
                Err(_) => no_slot.push(LeaseRef { id: claim.record.id, fencing_token: claim.record.fencing_token }),
            }
        }
        if !no_slot.is_empty() {
            // Claimed, but a reservation took its slot meanwhile: hand the lease
            // straight back (due now) rather than leave the saga to wait for its
            // lease to expire, and claim again when a slot frees.
            self.saturated = true;
            let now = shared.clock.now_ms();
            if let Err(e) = shared.store.lease_release(&shared.config.worker_id, &no_slot, now).await {
                keep_for_later(shared, &shared.unsettled, no_slot, &e);
            }
        }
    }

    /// Waits for a reason to claim: work announced, a driver finished or a timer added, a saga
    /// handed over at creation (driven at once), the poll interval or a back-off, or shutdown.
    async fn wait(
        &mut self,
        work: &tokio::sync::Notify,
        handed: &mut mpsc::UnboundedReceiver<(Claimed, OwnedSemaphorePermit)>,
        shutdown: &StopSignal,
    ) {
        self.claim_now = true;
        let failures = self.failures;
        let backoff_ms = if failures > 0 { (100u64 << failures.min(6)).min(5_000) } else { 0 };
        let sleep_ms = next_sleep_ms(&self.shared, backoff_ms, self.last_claim_ms);
        let shared = &self.shared;
        // `biased`: branches are polled in this order, not at random, so a run replays exactly.
        tokio::select! {
            biased;
            _ = work.notified(), if failures == 0 => {}
            _ = shared.wake.notified(), if failures == 0 => {
                // A driver finished or a retry timer was added: a claim is only worth it when
                // the last one was cut short by the permit limit, or a timer is due.
                self.claim_now = self.saturated || timer_due(shared) || poll_due(shared, self.last_claim_ms);
            }
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
            Some((claim, permit)) = handed.recv() => {
                // A saga created already leased to us: drive it, no claim needed.
                spawn_driver(shared, permit, &mut self.drivers, claim);
                self.claim_now = poll_due(shared, self.last_claim_ms);
            }
            _ = shutdown.asked() => {}
        }
    }
}

/// At shutdown: new sagas handed over meanwhile go back, the drivers get the grace to finish
/// (then are stopped), and every lease still held is handed back.
async fn drain(claims: ClaimLoop, mut handed: mpsc::UnboundedReceiver<(Claimed, OwnedSemaphorePermit)>) {
    let ClaimLoop { shared, mut drivers, .. } = claims;
    shared.shutting_down.store(true, Ordering::SeqCst);
    // Sagas handed over while we stopped: give their leases back for another instance.
    handed.close();
    while let Ok((claim, permit)) = handed.try_recv() {
        let lease = LeaseRef { id: claim.record.id, fencing_token: claim.record.fencing_token };
        if let Err(e) = shared.store.lease_release(&shared.config.worker_id, &[lease], shared.clock.now_ms()).await {
            tracing::warn!(error = %e, "handing back a new saga's lease failed; it will expire");
        }
        drop(permit);
    }
    tracing::info!(in_flight = drivers.len(), "instance draining");
    let grace = Duration::from_millis(shared.config.shutdown_grace_ms);
    let drained = tokio::time::timeout(grace, async { while drivers.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        // A step that outlasts the grace (a long sleep, a hung participant) is stopped; its saga
        // is handed back below and the next owner runs the attempt again with the same key.
        tracing::warn!(in_flight = drivers.len(), "shutdown grace is over: stopping the remaining drivers");
        drivers.abort_all();
        while drivers.join_next().await.is_some() {}
    }
    // Leases of stopped drivers first: the heartbeat ends once no lease is held.
    release_abandoned(&shared).await;
    release_all(&shared).await;
}

fn timer_due(shared: &Shared) -> bool {
    let now = shared.clock.now_ms();
    shared.timers.lock().map(|t| t.peek().is_some_and(|Reverse(at)| *at <= now)).unwrap_or(false)
}

/// Whether a poll interval has passed since the last claim.
fn poll_due(shared: &Shared, last_claim_ms: i64) -> bool {
    shared.clock.now_ms().saturating_sub(last_claim_ms) >= shared.config.poll_interval_ms as i64
}

/// How long the claim loop may sleep: until the earliest local retry, at most until one poll
/// interval (or the backoff after a failed claim) has passed since the last claim.
fn next_sleep_ms(shared: &Shared, backoff_ms: u64, last_claim_ms: i64) -> u64 {
    let now = shared.clock.now_ms();
    let since_claim = now.saturating_sub(last_claim_ms).max(0) as u64;
    let backoff_ms = backoff_ms.saturating_sub(since_claim);
    let mut sleep_ms = shared.config.poll_interval_ms.saturating_sub(since_claim).max(backoff_ms);
    if let Ok(mut timers) = shared.timers.lock() {
        while timers.peek().is_some_and(|Reverse(at)| *at <= now) {
            timers.pop();
        }
        if let Some(Reverse(at)) = timers.peek() {
            sleep_ms = sleep_ms.min((*at - now).max(0) as u64);
        }
    }
    sleep_ms.max(backoff_ms)
}

/// A shutdown request: a flag and a notification. Not a watch channel: a watch wakes its
/// receivers in a random order, and the simulator must replay a run exactly. A dropped
/// [`InstanceHandle`] never asks (a closed watch channel used to resolve at once, in a loop: the
/// claim loop claimed and the heartbeat spun without pause — found by the simulator).
#[derive(Clone, Default)]
struct StopSignal(Arc<StopState>);

#[derive(Default)]
struct StopState {
    asked: AtomicBool,
    notify: Notify,
}

impl StopSignal {
    fn ask(&self) {
        self.0.asked.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    fn is_asked(&self) -> bool {
        self.0.asked.load(Ordering::SeqCst)
    }

    /// Resolves once a shutdown is asked for.
    async fn asked(&self) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_asked() {
                return;
            }
            notified.await;
        }
    }
}

/// Renews every held lease in one statement, every third of the TTL — sooner again after a
/// failed renewal, so one failure (a deadlock the store could not retry away, a slow moment)
/// never costs a healthy driver its saga. Also passes cancel requests on to their drivers.
async fn heartbeat(shared: Arc<Shared>, shutdown: StopSignal) {
    let interval = Duration::from_millis((shared.config.lease_ttl_ms / 3).max(10) as u64);
    let mut wait = interval;
    loop {
        // Once asked, the heartbeat goes on at its pace until the drivers have drained.
        let asked = shutdown.is_asked();
        tokio::select! {
            biased;
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.asked(), if !asked => {}
        }
        if shutdown.is_asked() && shared.held.lock().map(|h| h.is_empty()).unwrap_or(true) {
            return;
        }
        let leases: Vec<LeaseRef> = match shared.held.lock() {
            Ok(held) => held.iter().map(|(id, l)| LeaseRef { id: *id, fencing_token: l.fencing_token }).collect(),
            Err(_) => return,
        };
        if leases.is_empty() {
            if shutdown.is_asked() {
                return;
            }
            continue;
        }
        let now = shared.clock.now_ms();
        match shared.store.lease_renew(&shared.config.worker_id, &leases, now, shared.config.lease_ttl_ms).await {
            Ok(renewal) => {
                wait = interval;
                let Ok(held) = shared.held.lock() else { return };
                for lease in &leases {
                    match held.get(&lease.id) {
                        Some(held)
                            if held.fencing_token == lease.fencing_token && !renewal.lost.contains(&lease.id) =>
                        {
                            held.state.expires_at_ms.store(now + shared.config.lease_ttl_ms, Ordering::SeqCst);
                        }
                        _ => {}
                    }
                }
                for id in renewal.lost {
                    if let Some(lease) = held.get(&id) {
                        tracing::warn!(saga_id = %id, "lease lost; stopping its driver");
                        lease.state.lost.store(true, Ordering::SeqCst);
                    }
                }
                for (id, at_ms) in renewal.cancel_requested {
                    if let Some(lease) = held.get(&id) {
                        lease.cancel.send_if_modified(|seen| seen.replace(at_ms).is_none());
                    }
                }
            }
            Err(e) => {
                wait = (interval / 4).max(Duration::from_millis(10));
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "heartbeat failed; trying again soon");
            }
        }
    }
}

async fn release_all(shared: &Shared) {
    let leases: Vec<LeaseRef> = match shared.held.lock() {
        Ok(mut held) => std::mem::take(&mut *held)
            .into_iter()
            .map(|(id, l)| LeaseRef { id, fencing_token: l.fencing_token })
            .collect(),
        Err(_) => return,
    };
    if leases.is_empty() {
        return;
    }
    if let Err(e) = shared.store.lease_release(&shared.config.worker_id, &leases, shared.clock.now_ms()).await {
        tracing::warn!(error = %e, "releasing leases at shutdown failed; they will expire");
    }
}
