//! Committing what a driver decided: the one builder of a saga's commit record, the commit with
//! its answer to a cancel request, the hand-back at shutdown, and the end of a finished saga.

use std::ops::ControlFlow::{self, Break, Continue};

use saga_core::{Definition, HistoryEvent, SagaState, SagaStatus};
use saga_store::{Claimed, CommitOutcome, LeaseRef, SagaCommit};

use super::attempt::Settled;
use super::Drive;
use crate::metrics_names::{SAGA_DURATION_SECONDS, SAGA_TOTAL};
use crate::shared::Shared;

/// How long a saga waits before another try when its definition cannot be loaded.
const DEFINITION_RETRY_MS: i64 = 60_000;

/// The events that end a saga's history.
const TERMINAL_EVENTS: [&str; 3] = ["saga_completed", "saga_compensated", "saga_failed"];

/// A transition the store took.
pub(super) struct Committed {
    pub at_ms: i64,
    /// Until when the lease went back with it; None: this driver keeps the saga.
    pub released_until: Option<i64>,
}

impl Drive<'_> {
    /// Commits a transition. `release_until` hands the lease back until then (a retry, a wait, a
    /// deferral); None keeps it. A cancel request the state has not acted on yet comes back as
    /// [`CommitOutcome::CancelRequested`]: the driver applies it and commits again (a step that
    /// was in flight has finished; it is compensated with the rest). Break when the driver must
    /// stop (fenced or the store failed).
    pub(super) async fn commit(&mut self, settled: Settled) -> ControlFlow<(), Committed> {
        let Settled { mut events, mut release_until } = settled;
        // A second CancelRequested cannot happen once the state carries the request.
        self.state.written_by_token = self.claimed.record.fencing_token;
        for _ in 0..2 {
            self.state.writer_kept_lease = release_until.is_none() && !self.state.status.is_terminal();
            let now_ms = self.shared.clock.now_ms();
            let commit = commit_record(
                self.shared,
                self.claimed,
                Some(self.definition),
                &self.state,
                events,
                release_until,
                now_ms,
            );
            match self.shared.committer.commit(commit).await {
                Ok((CommitOutcome::Committed, _)) => {
                    self.durable_status = self.state.status;
                    return Continue(Committed { at_ms: now_ms, released_until: release_until });
                }
                Ok((CommitOutcome::Fenced, _)) => {
                    tracing::warn!("commit fenced: another instance owns this saga");
                    return Break(());
                }
                Ok((CommitOutcome::CancelRequested { at_ms }, refused)) => {
                    events = refused.events;
                    let was_completed = self.state.status == SagaStatus::Completed;
                    let cancel = self.state.cancel(self.definition, at_ms, now_ms, true);
                    if was_completed && self.state.status != SagaStatus::Completed {
                        events.retain(|e| e.kind != "saga_completed");
                    }
                    insert_before_end(&mut events, cancel.events);
                    if self.state.status == SagaStatus::Compensating || self.state.status.is_terminal() {
                        // Compensation starts now, with this driver.
                        release_until = None;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "commit failed; the lease is handed back and the step run again");
                    return self.let_go();
                }
            }
        }
        tracing::error!("commit refused twice for a cancel request; the lease will expire");
        Break(())
    }

    /// At shutdown: keep what is already decided, hand the lease back so another instance
    /// resumes.
    pub(super) async fn hand_back(&mut self) {
        let shared = self.shared;
        let now_ms = shared.clock.now_ms();
        if self.pending.is_empty() {
            let lease = lease_of(self.claimed);
            if let Err(e) = shared.store.lease_release(&shared.config.worker_id, &[lease], now_ms).await {
                tracing::warn!(error = %e, "handing back the lease failed; it will expire");
            }
            return;
        }
        self.state.written_by_token = self.claimed.record.fencing_token;
        self.state.writer_kept_lease = false;
        // What the pending transition means for the tenant travels with it, as in every commit
        // (a cancel or deadline applied just before shutdown may end a tenant saga).
        let events = std::mem::take(&mut self.pending);
        let commit =
            commit_record(shared, self.claimed, Some(self.definition), &self.state, events, Some(now_ms), now_ms);
        // A refused commit (fenced, or a cancel to act on) is fine: the next driver redoes it.
        // A failed one still hands the lease back (found by the simulator, seed 2797).
        match shared.committer.commit(commit).await {
            Ok((CommitOutcome::CancelRequested { .. }, _)) | Err(_) => {
                let _: ControlFlow<()> = self.let_go();
            }
            Ok(_) => {}
        }
    }

    /// A terminal saga: counted, timed, its root trace span written, and its final row
    /// published to whoever waits for it.
    pub(super) fn finish(&self, committed_at_ms: i64) {
        let (shared, record, state) = (self.shared, &self.claimed.record, &self.state);
        metrics::counter!(SAGA_TOTAL, "definition" => record.definition.clone(), "status" => state.status.as_str())
            .increment(1);
        metrics::histogram!(SAGA_DURATION_SECONDS, "definition" => record.definition.clone())
            .record((committed_at_ms - record.created_at_ms).max(0) as f64 / 1000.0);
        tracing::info!(status = state.status.as_str(), "saga finished");
        if shared.config.tracing {
            crate::trace::root_span(&crate::trace::RootInfo {
                saga_id: record.id,
                definition: &record.definition,
                tenant_id: record.tenant_id.as_deref(),
                worker: &shared.config.worker_id,
                status: state.status.as_str(),
                created_at_ms: record.created_at_ms,
                ended_at_ms: committed_at_ms,
            });
        }
        // The row as the commit left it: terminal, lease released.
        let mut snapshot = record.clone();
        snapshot.status = state.status;
        snapshot.state = state.clone();
        snapshot.lease_owner = None;
        snapshot.lease_expires_at_ms = None;
        snapshot.updated_at_ms = committed_at_ms;
        snapshot.completed_at_ms = Some(committed_at_ms);
        shared.hub.publish(snapshot);
    }
}

/// A saga whose definition cannot be loaded: no definition, so no cancel handling either; it
/// commits exactly what it was claimed with, due again later.
pub(super) async fn without_definition(shared: &Shared, claimed: &Claimed, pending: Vec<HistoryEvent>) {
    let now_ms = shared.clock.now_ms();
    let commit = commit_record(
        shared,
        claimed,
        None,
        &claimed.record.state,
        pending,
        Some(now_ms + DEFINITION_RETRY_MS),
        now_ms,
    );
    let _ = shared.committer.commit(commit).await;
}

/// The one place a saga's commit record is made: fenced on the claim, the state with its new
/// history rows, what the transition means for the saga's tenant and the events it reports
/// (neither without a definition: a saga whose definition cannot be loaded commits only what it
/// was claimed with), and, with `release_until`, the lease handed back until then.
fn commit_record(
    shared: &Shared,
    claimed: &Claimed,
    definition: Option<&Definition>,
    state: &SagaState,
    events: Vec<HistoryEvent>,
    release_until: Option<i64>,
    now_ms: i64,
) -> SagaCommit {
    let record = &claimed.record;
    let (tenant_change, outbox) = match definition {
        Some(definition) => (
            // A child saga (a branch of a tenant saga's group too) never moves a tenant itself.
            shared
                .hook
                .as_ref()
                .filter(|_| state.parent.is_none())
                .and_then(|hook| hook.tenant_change(record, definition, state, &events)),
            crate::outbox::events_of(record, definition, state, &events),
        ),
        None => (None, Vec::new()),
    };
    SagaCommit {
        id: record.id,
        tenant_id: record.tenant_id.clone(),
        fencing_token: record.fencing_token,
        state: state.clone(),
        run_at_ms: release_until.unwrap_or(now_ms),
        release_lease: release_until.is_some(),
        events,
        worker_id: shared.config.worker_id.clone(),
        wake_seq_seen: record.wake_seq,
        tenant_change,
        outbox,
        now_ms,
    }
}

pub(super) fn lease_of(claimed: &Claimed) -> LeaseRef {
    LeaseRef { id: claimed.record.id, fencing_token: claimed.record.fencing_token }
}

/// Adds `more` to a transition's events, before its terminal event if it has one: a cancel
/// request acted on with the transition came before the end it records, and the terminal event
/// stays the history's last (found by the simulator, seeds 22 and 6656).
pub(super) fn insert_before_end(events: &mut Vec<HistoryEvent>, more: Vec<HistoryEvent>) {
    let end = events.iter().position(|e| TERMINAL_EVENTS.contains(&e.kind.as_str())).unwrap_or(events.len());
    events.splice(end..end, more);
}
