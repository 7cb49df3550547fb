//! Everything around the engine in a run: the simulated clock, each instance's link to the
//! store and the network (up, paused, dead), the store as an instance sees it (with commit
//! faults), and the participants — idempotent services with real undo that answer through the
//! runtime's [`HttpTransport`] and misbehave as the scenario says.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use saga_core::Phase;
use saga_runtime::{AttemptContext, Clock, HttpRequest, HttpTransport};
use saga_store::{
    CallbackRecord, CallbackRegister, ClaimParams, Claimed, ClaimedDelivery, CommitOutcome, DefinitionPut,
    DefinitionRecord, DefinitionStore, DeliveryAttemptResult, DeliveryBacklog, DeliveryClaimParams, DispatchStore,
    EventRecord, JobMark, LeaseRef, LeaseRenewal, LeaseStore, OutboxEvent, SagaCommit, SagaCreate, SagaFilter,
    SagaOperatorUpdate, SagaQueueFacts, SagaRecord, SagaStore, SignalRecord, SignalStore, StoreError, StoreResult,
    SubscriptionRecord, WorkSignal,
};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::budget::Budget;
use crate::memory::{MemoryStore, Sequencer};
use crate::scenario::{Dice, Misbehaviour};

/// Where simulated time starts (2026-01-01T00:00:00Z).
pub const EPOCH_MS: i64 = 1_767_225_600_000;

/// Milliseconds of Tokio's (paused) clock since the run began, from [`EPOCH_MS`].
pub struct SimClock {
    start: tokio::time::Instant,
}

impl SimClock {
    pub fn new() -> Self {
        // Outside a runtime this would read the wall clock, and no two runs would agree.
        debug_assert!(tokio::runtime::Handle::try_current().is_ok(), "a SimClock is made inside the paused runtime");
        SimClock { start: tokio::time::Instant::now() }
    }

    /// Milliseconds since the run began.
    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

impl Default for SimClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        EPOCH_MS + self.elapsed_ms() as i64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    Up,
    Paused,
    Dead,
}

/// An instance's connection to the world. Everything it sends waits while it is paused and
/// never arrives once it is dead; an answer coming back to it does the same. (A mutex and a
/// `Notify`, not a watch channel: a watch wakes its waiters in a random order.)
#[derive(Clone, Default)]
pub struct Link(Arc<LinkInner>);

#[derive(Default)]
struct LinkInner {
    state: Mutex<Option<LinkState>>,
    changed: tokio::sync::Notify,
}

impl Link {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&self, state: LinkState) {
        if let Ok(mut current) = self.0.state.lock() {
            *current = Some(state);
        }
        self.0.changed.notify_waiters();
    }

    pub fn state(&self) -> LinkState {
        self.0.state.lock().ok().and_then(|s| *s).unwrap_or(LinkState::Up)
    }

    /// Returns once the instance is up; never while it is dead.
    pub async fn pass(&self) {
        loop {
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.state() {
                LinkState::Up => return,
                LinkState::Dead => std::future::pending::<()>().await,
                LinkState::Paused => changed.await,
            }
        }
    }
}

/// Faults the store injects while the run is not calm.
pub struct CommitFaults {
    pub fail_before: f64,
    pub fail_after: f64,
    pub delay: f64,
    pub calm: Arc<AtomicBool>,
}

/// The store as one instance reaches it: through its [`Link`], with commit faults.
#[derive(Clone)]
pub struct SimStore {
    pub inner: Arc<MemoryStore>,
    pub link: Link,
    pub dice: Dice,
    pub faults: Arc<CommitFaults>,
    pub budget: Arc<Budget>,
}

impl SimStore {
    async fn call<T>(&self, request: impl std::future::Future<Output = StoreResult<T>>) -> StoreResult<T> {
        self.budget.spend().await;
        self.link.pass().await;
        let answer = request.await;
        self.link.pass().await;
        answer
    }

    fn unavailable(what: &str) -> StoreError {
        StoreError::unavailable(std::io::Error::new(std::io::ErrorKind::ConnectionReset, what.to_string()))
    }
}

#[async_trait]
impl DefinitionStore for SimStore {
    async fn definition_put(&self, name: &str, document: &Value, now_ms: i64) -> StoreResult<DefinitionPut> {
        self.call(self.inner.definition_put(name, document, now_ms)).await
    }
    async fn definition_get(&self, name: &str, version: Option<i32>) -> StoreResult<DefinitionRecord> {
        self.call(self.inner.definition_get(name, version)).await
    }
    async fn definition_list(&self) -> StoreResult<Vec<DefinitionRecord>> {
        self.call(self.inner.definition_list()).await
    }
}

#[async_trait]
impl SagaStore for SimStore {
    async fn saga_insert_batch(&self, creates: &[SagaCreate]) -> StoreResult<Vec<Option<SagaRecord>>> {
        self.call(self.inner.saga_insert_batch(creates)).await
    }
    async fn saga_by_idempotency_key(&self, key: &str) -> StoreResult<Option<(SagaRecord, Option<String>)>> {
        self.call(self.inner.saga_by_idempotency_key(key)).await
    }
    async fn saga_get(&self, id: Uuid) -> StoreResult<SagaRecord> {
        self.call(self.inner.saga_get(id)).await
    }
    async fn saga_get_many(&self, ids: &[Uuid]) -> StoreResult<Vec<SagaRecord>> {
        self.call(self.inner.saga_get_many(ids)).await
    }
    async fn saga_list(&self, filter: &SagaFilter) -> StoreResult<Vec<SagaRecord>> {
        self.call(self.inner.saga_list(filter)).await
    }
    async fn saga_events(&self, id: Uuid, after_seq: i64, limit: u32) -> StoreResult<Vec<EventRecord>> {
        self.call(self.inner.saga_events(id, after_seq, limit)).await
    }
    async fn saga_operator_update(&self, update: SagaOperatorUpdate) -> StoreResult<SagaRecord> {
        self.call(self.inner.saga_operator_update(update)).await
    }
    async fn saga_wake(&self, id: Uuid, now_ms: i64) -> StoreResult<bool> {
        self.call(self.inner.saga_wake(id, now_ms)).await
    }
    async fn saga_cancel_request(&self, id: Uuid, now_ms: i64, job: Option<&JobMark>) -> StoreResult<SagaRecord> {
        self.call(self.inner.saga_cancel_request(id, now_ms, job)).await
    }
    async fn saga_queue_facts(&self, saga: &SagaRecord, now_ms: i64) -> StoreResult<SagaQueueFacts> {
        self.call(self.inner.saga_queue_facts(saga, now_ms)).await
    }
    async fn saga_due_summary(&self, now_ms: i64) -> StoreResult<(u64, Option<i64>)> {
        self.call(self.inner.saga_due_summary(now_ms)).await
    }
}

#[async_trait]
impl LeaseStore for SimStore {
    async fn saga_claim_due(&self, params: &ClaimParams) -> StoreResult<Vec<Claimed>> {
        self.call(self.inner.saga_claim_due(params)).await
    }

    async fn saga_commit_batch(&self, commits: &[SagaCommit]) -> StoreResult<Vec<CommitOutcome>> {
        self.budget.spend().await;
        self.link.pass().await;
        let faulty = !self.faults.calm.load(Ordering::SeqCst);
        if faulty && self.dice.chance(self.faults.delay) {
            tokio::time::sleep(Duration::from_millis(self.dice.between(10, 500))).await;
            self.link.pass().await;
        }
        if faulty && self.dice.chance(self.faults.fail_before) {
            return Err(Self::unavailable("the commit failed before it was written"));
        }
        let outcomes = self.inner.saga_commit_batch(commits).await;
        self.link.pass().await;
        if faulty && self.dice.chance(self.faults.fail_after) {
            return Err(Self::unavailable("the commit was written but its answer was lost"));
        }
        outcomes
    }

    async fn lease_renew(
        &self,
        worker_id: &str,
        leases: &[LeaseRef],
        now_ms: i64,
        lease_ttl_ms: i64,
    ) -> StoreResult<LeaseRenewal> {
        self.call(self.inner.lease_renew(worker_id, leases, now_ms, lease_ttl_ms)).await
    }
    async fn lease_release(&self, worker_id: &str, leases: &[LeaseRef], now_ms: i64) -> StoreResult<()> {
        self.call(self.inner.lease_release(worker_id, leases, now_ms)).await
    }
    fn work_signal(&self) -> WorkSignal {
        self.inner.work_signal()
    }
}

/// The dispatcher's store, through the same link; a recorded attempt's answer is lost at times
/// while the run is not calm (the dispatcher then takes it for unrecorded).
#[async_trait]
impl DispatchStore for SimStore {
    async fn delivery_claim_due(&self, params: &DeliveryClaimParams) -> StoreResult<Vec<ClaimedDelivery>> {
        self.call(self.inner.delivery_claim_due(params)).await
    }
    async fn delivery_attempts_record(&self, results: &[DeliveryAttemptResult]) -> StoreResult<Vec<bool>> {
        let recorded = self.call(self.inner.delivery_attempts_record(results)).await;
        if !self.faults.calm.load(Ordering::SeqCst) && self.dice.chance(self.faults.fail_after) {
            return Err(Self::unavailable("the attempts were recorded but the answer was lost"));
        }
        recorded
    }
    async fn delivery_release(&self, released: &[(Uuid, i64)], due_at_ms: i64) -> StoreResult<()> {
        self.call(self.inner.delivery_release(released, due_at_ms)).await
    }
    async fn delivery_backlog(&self) -> StoreResult<Vec<DeliveryBacklog>> {
        self.call(self.inner.delivery_backlog()).await
    }
    async fn subscriptions_disable_failing(
        &self,
        failing_since_before_ms: i64,
        now_ms: i64,
        report: &(dyn for<'a> Fn(&'a SubscriptionRecord) -> OutboxEvent + Send + Sync),
    ) -> StoreResult<Vec<SubscriptionRecord>> {
        self.call(self.inner.subscriptions_disable_failing(failing_since_before_ms, now_ms, report)).await
    }
}

#[async_trait]
impl SignalStore for SimStore {
    async fn signal_send(
        &self,
        id: Uuid,
        name: &str,
        payload: &Value,
        now_ms: i64,
        job: Option<&JobMark>,
    ) -> StoreResult<SignalRecord> {
        self.call(self.inner.signal_send(id, name, payload, now_ms, job)).await
    }
    async fn signal_find(&self, id: Uuid, name: &str, consumed: &[i64]) -> StoreResult<Option<SignalRecord>> {
        self.call(self.inner.signal_find(id, name, consumed)).await
    }
    async fn callback_register(&self, params: CallbackRegister) -> StoreResult<()> {
        self.call(self.inner.callback_register(params)).await
    }
    async fn callback_complete(&self, token_hash: &str, result: &Value, now_ms: i64) -> StoreResult<Uuid> {
        self.call(self.inner.callback_complete(token_hash, result, now_ms)).await
    }
    async fn callback_heartbeat(&self, token_hash: &str, now_ms: i64) -> StoreResult<()> {
        self.call(self.inner.callback_heartbeat(token_hash, now_ms)).await
    }
    async fn callback_close(&self, id: Uuid, step: &str, attempt: u32, now_ms: i64) -> StoreResult<()> {
        self.call(self.inner.callback_close(id, step, attempt, now_ms)).await
    }
    async fn callback_get(&self, id: Uuid, step: &str, attempt: u32) -> StoreResult<Option<CallbackRecord>> {
        self.call(self.inner.callback_get(id, step, attempt)).await
    }
}

/// One effect at a participant: a step of a saga.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effect {
    /// When the action took effect (the first time; it is idempotent).
    pub applied_seq: Option<u64>,
    /// The first request for it was refused: the participant did nothing, and says so again
    /// to every duplicate.
    pub refused: bool,
    /// When the first compensation request was processed (undoing the effect, or recording
    /// that there was nothing to undo so a late action is refused).
    pub compensated_seq: Option<u64>,
    /// Whether that compensation undid something.
    pub undid: bool,
}

/// One request a participant processed.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub seq: u64,
    pub saga_id: Uuid,
    pub step: String,
    pub phase: Phase,
    pub attempt: u32,
    pub participant: String,
    pub idempotency_key: String,
    /// The sending driver's `X-Saga-Fencing-Token`.
    pub fencing_token: i64,
    pub answer: String,
}

/// What every participant saw and did.
#[derive(Default)]
pub struct Ledger {
    pub effects: BTreeMap<(Uuid, String), Effect>,
    pub requests: Vec<Request>,
    /// Async attempts a participant has accepted and will call back: `(saga, step, attempt)`.
    pub accepted: std::collections::BTreeSet<(Uuid, String, u32)>,
}

/// The participants `p0`, `p1`, … of a run.
pub struct Participants {
    pub ledger: Mutex<Ledger>,
    pub misbehaviour: Vec<Misbehaviour>,
    pub dice: Dice,
    pub calm: Arc<AtomicBool>,
    pub sequencer: Sequencer,
    pub store: Arc<MemoryStore>,
    pub clock: Arc<SimClock>,
}

/// How a participant answers one request.
enum Answer {
    Status(u16, Value),
    /// The connection failed; nothing arrived.
    Unreachable,
}

impl Participants {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        match self.ledger.lock() {
            Ok(ledger) => ledger,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn misbehaving(&self, participant: usize) -> Misbehaviour {
        if self.calm.load(Ordering::SeqCst) {
            return Misbehaviour::default();
        }
        self.misbehaviour.get(participant).copied().unwrap_or_default()
    }

    /// Processes one request atomically (and logs it); the answer and how long it takes to
    /// arrive.
    fn process(&self, participant: usize, ctx: &AttemptContext) -> (Answer, Duration) {
        let seq = self.sequencer.next();
        let (answer, delay) = self.answer(participant, ctx, seq);
        let described = match &answer {
            Answer::Status(status, _) => status.to_string(),
            Answer::Unreachable => "nothing (unreachable)".into(),
        };
        self.ledger().requests.push(Request {
            seq,
            saga_id: ctx.saga_id,
            step: ctx.step.clone(),
            phase: ctx.phase,
            attempt: ctx.attempt,
            participant: format!("p{participant}"),
            idempotency_key: ctx.idempotency_key(),
            fencing_token: ctx.fencing_token,
            answer: described,
        });
        (answer, delay)
    }

    fn answer(&self, participant: usize, ctx: &AttemptContext, seq: u64) -> (Answer, Duration) {
        let odds = self.misbehaving(participant);
        let dice = &self.dice;
        if dice.chance(odds.unreachable) {
            return (Answer::Unreachable, Duration::ZERO);
        }
        if dice.chance(odds.fail_before) {
            return (Answer::Status(503, json!("busy")), Duration::ZERO);
        }
        let mut ledger = self.ledger();
        let fresh = !ledger.effects.contains_key(&(ctx.saga_id, ctx.step.clone()));
        let effect = ledger.effects.entry((ctx.saga_id, ctx.step.clone())).or_default();
        let (status, body) = match ctx.phase {
            Phase::Action if effect.refused => (409, json!("refused")),
            Phase::Action if effect.applied_seq.is_none() && effect.compensated_seq.is_some() => {
                // Compensated before this (late) action arrived: never do it now.
                (409, json!("already compensated"))
            }
            Phase::Action if fresh && dice.chance(odds.refuse) => {
                effect.refused = true;
                (409, json!("refused"))
            }
            Phase::Action if ctx.callback_url.is_some() => {
                // Async: accepted now, settled by the callback later.
                (202, json!({"accepted": true}))
            }
            Phase::Action => {
                effect.applied_seq = effect.applied_seq.or(Some(seq));
                (200, json!({"done": format!("{}/{}", ctx.saga_id, ctx.step)}))
            }
            Phase::Compensation if effect.compensated_seq.is_none() && dice.chance(odds.refuse_compensation) => {
                (409, json!("cannot undo"))
            }
            Phase::Compensation => {
                if effect.compensated_seq.is_none() {
                    effect.compensated_seq = Some(seq);
                    effect.undid = effect.applied_seq.is_some();
                }
                (200, json!({"undone": true}))
            }
        };
        drop(ledger);
        let answer = match status {
            200 if dice.chance(odds.fail_after) => Answer::Status(503, json!("done, but the answer failed")),
            _ => Answer::Status(status, body),
        };
        let timeout = Duration::from_millis(ctx.timeout_ms);
        let delay = if dice.chance(odds.hang) {
            timeout + Duration::from_millis(dice.between(1, 2_000))
        } else if dice.chance(odds.slow) {
            Duration::from_millis(dice.between(1, ctx.timeout_ms.saturating_sub(1).max(1)))
        } else {
            Duration::ZERO
        };
        (answer, delay)
    }

    /// An async participant's later work: it settles the effect and calls back (maybe twice,
    /// maybe never), as the API's callback route would record it.
    pub async fn settle_async(self: Arc<Self>, participant: usize, saga_id: Uuid, step: String, token: String) {
        let odds = self.misbehaving(participant);
        let dice = self.dice.clone();
        tokio::time::sleep(Duration::from_millis(dice.between(10, 3_000))).await;
        let hash = saga_runtime::callback_token_hash(&token);
        if dice.chance(0.3) {
            // A heartbeat first, then the rest of the work.
            let _ = self.store.callback_heartbeat(&hash, self.clock.now_ms()).await;
            tokio::time::sleep(Duration::from_millis(dice.between(10, 2_000))).await;
        }
        let result = {
            let seq = self.sequencer.next();
            let mut ledger = self.ledger();
            let effect = ledger.effects.entry((saga_id, step.clone())).or_default();
            if effect.refused || (effect.applied_seq.is_none() && effect.compensated_seq.is_some()) {
                Some(json!({"status": "failed", "error": "refused", "retryable": false}))
            } else if dice.chance(odds.callback_fails) && effect.applied_seq.is_none() {
                effect.refused = true;
                Some(json!({"status": "failed", "error": "could not do it", "retryable": false}))
            } else {
                let silent = dice.chance(odds.callback_never);
                let retryable = dice.chance(odds.callback_retryable);
                if !(silent || retryable) || dice.chance(0.5) {
                    effect.applied_seq = effect.applied_seq.or(Some(seq));
                }
                match (silent, retryable) {
                    (true, _) => None,
                    (false, true) => Some(json!({"status": "failed", "error": "try again", "retryable": true})),
                    (false, false) => {
                        Some(json!({"status": "succeeded", "output": {"done": format!("{saga_id}/{step}")}}))
                    }
                }
            }
        };
        let Some(result) = result else { return };
        let _ = self.store.callback_complete(&hash, &result, self.clock.now_ms()).await;
        if dice.chance(odds.callback_twice) {
            tokio::time::sleep(Duration::from_millis(dice.between(1, 2_000))).await;
            // A second callback for a used token must be refused (404); its result is ignored.
            let _ = self.store.callback_complete(&hash, &result, self.clock.now_ms()).await;
        }
    }
}

/// The network as one instance sees it.
pub struct Network {
    pub participants: Arc<Participants>,
    pub link: Link,
    pub budget: Arc<Budget>,
}

#[async_trait]
impl HttpTransport for Network {
    async fn send(&self, request: &HttpRequest<'_>, ctx: &AttemptContext) -> Result<(u16, Vec<u8>), String> {
        self.budget.spend().await;
        self.link.pass().await;
        let Some(participant) = participant_of(request.url) else {
            return Ok((404, b"no such participant".to_vec()));
        };
        let (answer, delay) = self.participants.process(participant, ctx);
        if let (Answer::Status(202, _), Some(url)) = (&answer, &ctx.callback_url) {
            // The same attempt again (sent by a driver that took over from one that had sent
            // it): some participants call back every URL they were given, some only the first.
            let first = self.participants.ledger().accepted.insert((ctx.saga_id, ctx.step.clone(), ctx.attempt));
            if first || self.participants.dice.chance(0.5) {
                let token = url.rsplit('/').next().unwrap_or_default().to_string();
                let participants = self.participants.clone();
                tokio::spawn(participants.settle_async(participant, ctx.saga_id, ctx.step.clone(), token));
            }
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.link.pass().await;
        match answer {
            Answer::Status(status, body) => Ok((status, body.to_string().into_bytes())),
            Answer::Unreachable => Err("connection refused".into()),
        }
    }
}

/// `http://p2/act` → 2.
fn participant_of(url: &str) -> Option<usize> {
    let host = url.strip_prefix("http://p")?;
    host.split('/').next()?.parse().ok()
}
