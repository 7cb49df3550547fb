//! Driving one claimed saga: run the next step, commit its transition, repeat — without
//! re-claiming between steps — until the saga is terminal, waits (for a retry, a signal, a
//! callback, an open circuit), loses its lease, or the instance shuts down.
//!
//! Design note. A waiting saga holds no lease and no worker slot: the driver commits the wait
//! with the lease released and `run_at` at the wait's deadline (capped by the saga deadline).
//! Deliveries (signals, callbacks, cancel requests) are written by the API and bump the saga's
//! `wake_seq`, making an unleased saga due at once; a delivery that lands while this driver still
//! holds the lease is caught by the commit itself, which compares `wake_seq` with the value seen
//! at the claim. A cancel request is caught the same way: a commit whose state has not acted on
//! it is refused, so the driver applies the cancel first. A long action attempt in flight does
//! not wait for that: the heartbeat reports cancel requests on held sagas, and the attempt is
//! interrupted (an ambiguous failure, compensated with the rest).
//!
//! Reading order. [`drive`] loads the definition and takes the saga up ([`Drive::adopt`]); each
//! turn of [`Drive::turn`] then takes one step attempt through its lifecycle, a type per stage
//! ([`attempt`]): picked ([`attempt::StepAttempt`]) → executed ([`attempt::Executed`]) →
//! settled ([`attempt::Settled`]) → committed ([`commit::Committed`]). Waits on the store
//! (signals, callbacks) are in [`waits`]; every commit record is made in [`commit`].

mod attempt;
mod children;
mod commit;
mod groups;
mod waits;

use std::ops::ControlFlow::{self, Break, Continue};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use saga_core::template::TemplateContext;
use saga_core::{Definition, HistoryEvent, Next, SagaState, SagaStatus, StepDefinition};
use saga_store::{Claimed, RUN_AT_NEVER_MS};
use serde_json::json;
use tokio::sync::watch;
use tracing::Instrument;

use crate::metrics_names::SAGA_LEASE_TAKEOVER_TOTAL;
use crate::shared::{LeaseState, Shared};
use attempt::{Settled, StepAttempt};
use commit::Committed;

pub use children::{child_saga_id, CHILD_RECHECK_MS};
pub use waits::{callback_token_hash, random_256_bits};

pub(crate) async fn drive(
    shared: Arc<Shared>,
    claimed: Claimed,
    lease: Arc<LeaseState>,
    mut cancelled: watch::Receiver<Option<i64>>,
) {
    let record = &claimed.record;
    let span = tracing::info_span!(
        "saga",
        saga_id = %record.id,
        trace_id = %crate::trace::trace_id(record.id),
        tenant_id = record.tenant_id.as_deref().unwrap_or(""),
        definition = %record.definition,
        token = record.fencing_token,
    );
    let id = record.id;
    drive_claimed(&shared, &claimed, &lease, &mut cancelled).instrument(span).await;
    shared.forget_lease(id, claimed.record.fencing_token);
}

async fn drive_claimed(
    shared: &Shared,
    claimed: &Claimed,
    lease: &LeaseState,
    cancelled: &mut watch::Receiver<Option<i64>>,
) {
    let pending = vec![lease_acquired(shared, claimed)];
    let definition = match shared.definitions.for_saga(&claimed.record).await {
        Ok(definition) => definition,
        Err(e) => {
            tracing::error!(error = %e, "cannot load the saga's definition; retrying later");
            commit::without_definition(shared, claimed, pending).await;
            return;
        }
    };
    let mut drive = Drive::new(shared, claimed, &definition, pending);
    if drive.adopt().await.is_break() {
        return;
    }
    while drive.turn(lease, cancelled).await.is_continue() {}
}

/// The history row every claim starts with (and the takeover it may be, counted and logged).
fn lease_acquired(shared: &Shared, claimed: &Claimed) -> HistoryEvent {
    let takeover = claimed.previous_owner.is_some();
    if takeover {
        metrics::counter!(SAGA_LEASE_TAKEOVER_TOTAL).increment(1);
        tracing::info!(previous = claimed.previous_owner.as_deref().unwrap_or(""), "took over an expired lease");
    }
    HistoryEvent::new(
        "lease_acquired",
        None,
        None,
        json!({
            "fencing_token": claimed.record.fencing_token,
            "previous_owner": claimed.previous_owner,
            "takeover": takeover,
        }),
        shared.clock.now_ms(),
    )
}

/// What a branch's templates see at the top level: `index`, and a `for_each` item's `item`.
fn branch_locals(state: &SagaState) -> serde_json::Map<String, serde_json::Value> {
    let mut locals = serde_json::Map::new();
    if let Some(branch) = state.parent.as_ref().and_then(|p| p.branch.as_ref()) {
        locals.insert("index".into(), json!(branch.index));
        if let Some(item) = &branch.item {
            locals.insert("item".into(), item.clone());
        }
    }
    locals
}

/// What a step's `when:` says.
enum Condition {
    /// True, or no condition: the step runs.
    Holds,
    /// False (what it rendered): the step is skipped.
    False(serde_json::Value),
    /// It cannot render: the step fails definitely.
    Broken(String),
}

/// The saga this driver holds, from its claim until the driver lets go of it.
pub(super) struct Drive<'a> {
    shared: &'a Shared,
    claimed: &'a Claimed,
    definition: &'a Definition,
    /// The state as this driver moved it: ahead of the store until the next commit.
    state: SagaState,
    /// History rows decided but not committed yet: they travel with the next commit.
    pending: Vec<HistoryEvent>,
    /// The status the store holds: a stop decided here is committed before it is acted on.
    durable_status: SagaStatus,
    templates: TemplateContext,
}

impl<'a> Drive<'a> {
    fn new(shared: &'a Shared, claimed: &'a Claimed, definition: &'a Definition, pending: Vec<HistoryEvent>) -> Self {
        let record = &claimed.record;
        Drive {
            shared,
            claimed,
            definition,
            state: record.state.clone(),
            pending,
            durable_status: record.state.status,
            templates: TemplateContext {
                input: record.input.clone(),
                tenant_id: record.tenant_id.clone(),
                saga_id: record.id.to_string(),
                step_outputs: serde_json::Map::new(),
                vars: shared.config.vars.clone(),
                locals: branch_locals(&record.state),
            },
        }
    }

    /// Takes the saga up as the store left it: a step a driver before this one may have sent
    /// counts as started, in every state written from now on (see `SagaState::adopt`), and a
    /// cancel requested while no driver held it (a pending retry, a wait, not started) is applied.
    async fn adopt(&mut self) -> ControlFlow<()> {
        let record = &self.claimed.record;
        let now_ms = self.shared.clock.now_ms();
        // A child its parent reopened for compensation may have nothing to undo with I/O.
        self.pending.extend(self.state.settle_compensation(self.definition, now_ms).events);
        self.skip_false_conditions(now_ms);
        self.pending.extend(self.state.adopt(record.fencing_token, now_ms).events);
        if let Some(at_ms) = record.cancel_requested_at_ms {
            let wait_before = self.state.wait.clone();
            // Skipping the last steps just completed the saga, uncommitted: the cancel,
            // requested before, still wins (seed 6907 wrote it after `saga_completed`).
            let completed_here = self.state.status == SagaStatus::Completed;
            let cancel = self.state.cancel(self.definition, at_ms, now_ms, completed_here);
            if completed_here && self.state.status != SagaStatus::Completed {
                self.pending.retain(|e| e.kind != "saga_completed");
            }
            commit::insert_before_end(&mut self.pending, cancel.events);
            self.retire_abandoned_callback(wait_before.as_ref()).await?;
        }
        Continue(())
    }

    /// Skips the steps next in line whose `when:` is false, before a takeover counts the next
    /// step as possibly sent: with its condition false, no driver before could have sent it.
    /// (Without this, a step skipped by its condition was compensated when a cancel followed a
    /// takeover — found by the simulator, seed 6264.)
    /// The skips go with the next commit, before the step after them is sent (see
    /// [`Self::turn`]).
    fn skip_false_conditions(&mut self, now_ms: i64) {
        while let Next::RunAction { step, attempt: 1 } = self.state.next() {
            if self.state.wait.is_some() || self.state.steps[step].attempts > 0 {
                break;
            }
            let Condition::False(rendered) = self.condition(&self.definition.steps[step]) else { break };
            match self.state.skip_by_condition(self.definition, rendered, now_ms) {
                Ok(skipped) => self.pending.extend(skipped.events),
                Err(_) => break,
            }
        }
    }

    /// The step outputs templates see: a branch's parent's (as they were when it started), the
    /// saga's own, and those of the steps inside each `parallel` group that has ended, by name.
    fn step_outputs(&self) -> serde_json::Map<String, serde_json::Value> {
        let branch = self.state.parent.as_ref().and_then(|p| p.branch.as_ref());
        let mut outputs = branch.map(|b| b.outputs.clone()).unwrap_or_default();
        for (step, state) in self.definition.steps.iter().zip(&self.state.steps) {
            let Some(output) = &state.output else { continue };
            if let (saga_core::Action::Group(_), Some(inner)) = (&step.action, output.get("steps")) {
                if let Some(inner) = inner.as_object() {
                    outputs.extend(inner.iter().map(|(name, output)| (name.clone(), output.clone())));
                }
            }
            outputs.insert(step.name.clone(), output.clone());
        }
        outputs
    }

    /// What a step's `when:` says now, rendered with the outputs of the steps before it.
    fn condition(&mut self, step: &StepDefinition) -> Condition {
        let Some(when) = &step.when else { return Condition::Holds };
        self.templates.step_outputs = self.step_outputs();
        match saga_core::template::render_value(&serde_json::Value::String(when.clone()), &self.templates) {
            Ok(rendered) if saga_core::template::is_falsy(&rendered) => Condition::False(rendered),
            Ok(_) => Condition::Holds,
            Err(e) => Condition::Broken(format!("when: {e}")),
        }
    }

    /// One turn: may this driver go on; then the next step attempt, from picked to committed.
    /// Break when the driver lets go of the saga.
    async fn turn(&mut self, lease: &LeaseState, cancelled: &mut watch::Receiver<Option<i64>>) -> ControlFlow<()> {
        self.may_go_on(lease).await?;
        let Some(attempt) = StepAttempt::next(&self.state, self.shared.clock.now_ms()) else {
            return self.end_with_nothing_to_run().await;
        };
        // Durable before dependent: steps skipped when the saga was taken up are written before
        // the step after them goes out. That commit may find a cancel request and apply it, so
        // the next turn picks its attempt afresh. (Going on with the attempt picked before it,
        // the driver sent the next step of a saga the commit had just ended COMPENSATED — found
        // by the simulator, seed 3767345830.)
        if self.pending.iter().any(|e| e.kind == "step_skipped") {
            let events = std::mem::take(&mut self.pending);
            let committed = self.commit(Settled { events, release_until: None }).await?;
            return self.after(committed).await;
        }
        let executed = attempt.execute(self, cancelled).await;
        let settled = executed.settle(self)?;
        let committed = self.commit(settled).await?;
        self.after(committed).await
    }

    /// Whether this driver may run another attempt: its lease still holds, the instance is not
    /// shutting down; the deadline is applied, and a stop is made durable before it is acted on.
    async fn may_go_on(&mut self, lease: &LeaseState) -> ControlFlow<()> {
        if !lease.usable(self.shared.clock.now_ms()) {
            tracing::warn!("lease lost or expired; another driver takes this saga over");
            // Expired here, maybe renewed in the store meanwhile: give it up (fenced on the
            // token, so this changes nothing once another driver has claimed the saga).
            return self.let_go();
        }
        if self.shared.shutting_down.load(Ordering::SeqCst) {
            self.hand_back().await;
            return Break(());
        }
        let wait_before = self.state.wait.clone();
        self.pending.extend(self.state.expire(self.definition, self.shared.clock.now_ms()).events);
        self.retire_abandoned_callback(wait_before.as_ref()).await?;
        // Durable before dependent: a stop decided here (the deadline, a cancel found at the
        // claim) is committed before the first compensation goes out. Sent first, by a driver
        // that then stopped, the compensation of the last succeeded step was followed by the
        // next driver's — which, finding a state still going forward, counted the step after it
        // as possibly sent and compensated that one second: out of order (seed 381139409).
        // Only stops pay this commit; they are rare.
        if self.state.status != self.durable_status && matches!(self.state.next(), Next::RunCompensation { .. }) {
            let events = std::mem::take(&mut self.pending);
            self.commit(Settled { events, release_until: None }).await?;
        }
        Continue(())
    }

    /// Nothing to run: settled without running anything (a cancel before the first step, a
    /// deadline with on_timeout: fail), or claimed with nothing to run. Commits what is pending.
    async fn end_with_nothing_to_run(&mut self) -> ControlFlow<()> {
        if !self.state.status.is_terminal() {
            tracing::error!(status = ?self.state.status, "claimed a saga with nothing to run");
        }
        let events = std::mem::take(&mut self.pending);
        let committed = self.commit(Settled { events, release_until: None }).await?;
        if self.state.status.is_terminal() {
            self.finish(committed.at_ms);
            self.wake_parent().await;
        }
        Break(())
    }

    /// After a commit: a released lease means the saga waits (woken here at its due time, or by
    /// another instance); a terminal saga is finished (a child wakes its parent); otherwise the
    /// driver runs the next step.
    async fn after(&self, committed: Committed) -> ControlFlow<()> {
        if let Some(at) = committed.released_until {
            if at < RUN_AT_NEVER_MS {
                self.shared.schedule_wake(at);
            }
            return Break(());
        }
        if self.state.status.is_terminal() {
            self.finish(committed.at_ms);
            self.wake_parent().await;
            return Break(());
        }
        Continue(())
    }

    /// Gives the lease up without a commit: the next driver runs from what the store holds.
    fn let_go<T>(&self) -> ControlFlow<(), T> {
        self.shared.hand_back_unsettled(commit::lease_of(self.claimed));
        Break(())
    }
}
