//! Claims (admission under concurrency keys first, then due sagas by their place in the claim
//! order), fenced group commits, lease renewal and hand-back — the SQL stores' statements as
//! one locked step each.

use std::collections::BTreeMap;

use async_trait::async_trait;
use saga_store::{
    ClaimParams, Claimed, CommitOutcome, LeaseRef, LeaseRenewal, LeaseStore, SagaCommit, StoreResult, WorkSignal,
};
use uuid::Uuid;

use super::{JournalKind, MemoryStore, Row, Tables};

impl MemoryStore {
    /// Sagas waiting for admission that may take a slot now, in claim order, each with whether
    /// it is let in over the limit only to settle (a cancel request, a passed deadline).
    fn admissible(tables: &Tables, now_ms: i64) -> Vec<(Uuid, bool)> {
        let mut running: BTreeMap<&str, u32> = BTreeMap::new();
        for row in tables.sagas.values().filter(|r| r.admitted && r.is_active()) {
            if let Some(key) = &row.record.concurrency_key {
                *running.entry(key.as_str()).or_default() += 1;
            }
        }
        let mut waiting: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
        for row in tables.sagas.values() {
            let record = &row.record;
            if let Some(key) = &record.concurrency_key {
                if !row.admitted && record.status == saga_core::SagaStatus::Pending && record.run_at_ms <= now_ms {
                    waiting.entry(key.as_str()).or_default().push(row);
                }
            }
        }
        let mut eligible: Vec<(&Row, bool)> = Vec::new();
        for (key, mut rows) in waiting {
            rows.sort_by_key(|r| (r.rank_at(), r.record.id));
            let held = running.get(key).copied().unwrap_or(0);
            for (place, row) in rows.into_iter().enumerate() {
                let limit = row.concurrency_limit.unwrap_or(0);
                let fits = (place as u32) < limit.saturating_sub(held);
                let must_settle = row.record.cancel_requested_at_ms.is_some()
                    || row.deadline_at_ms.is_some_and(|deadline| deadline <= now_ms);
                if fits || must_settle {
                    eligible.push((row, !fits));
                }
            }
        }
        eligible.sort_by_key(|(r, _)| (r.rank_at(), r.record.id));
        eligible.into_iter().map(|(r, to_settle)| (r.record.id, to_settle)).collect()
    }

    fn take_lease(&self, tables: &mut Tables, id: Uuid, params: &ClaimParams) -> Option<Claimed> {
        let expires = params.now_ms + params.lease_ttl_ms;
        let row = tables.sagas.get_mut(&id)?;
        row.previous_owner = row.record.lease_owner.take();
        let record = &mut row.record;
        record.fencing_token += 1;
        record.lease_owner = Some(params.worker_id.clone());
        record.lease_expires_at_ms = Some(expires);
        record.run_at_ms = expires;
        record.updated_at_ms = params.now_ms;
        let claimed = Claimed { record: record.clone(), previous_owner: row.previous_owner.clone() };
        let kind = JournalKind::Claimed { fencing_token: record.fencing_token, worker: params.worker_id.clone() };
        self.journal_push(tables, id, kind);
        Some(claimed)
    }
}

#[async_trait]
impl LeaseStore for MemoryStore {
    async fn saga_claim_due(&self, params: &ClaimParams) -> StoreResult<Vec<Claimed>> {
        let limit = params.limit.min(saga_store::CLAIM_BATCH_MAX) as usize;
        let mut tables = self.tables()?;
        let mut claimed = Vec::new();
        for (id, to_settle) in Self::admissible(&tables, params.now_ms).into_iter().take(limit) {
            let Some(row) = tables.sagas.get_mut(&id) else { continue };
            row.admitted = true;
            let admission = JournalKind::Admitted {
                key: row.record.concurrency_key.clone().unwrap_or_default(),
                limit: row.concurrency_limit.unwrap_or(0),
                to_settle,
            };
            self.journal_push(&mut tables, id, admission);
            claimed.extend(self.take_lease(&mut tables, id, params));
        }
        let horizon = saga_store::claim_horizon_ms(params.now_ms);
        let mut due: Vec<&Row> = tables
            .sagas
            .values()
            .filter(|r| r.is_active() && r.admitted_or_free() && r.record.run_at_ms <= params.now_ms)
            .filter(|r| r.rank_at() <= horizon)
            .collect();
        due.sort_by_key(|r| (r.rank_at(), r.record.id));
        let due: Vec<Uuid> = due.into_iter().take(limit - claimed.len()).map(|r| r.record.id).collect();
        for id in due {
            claimed.extend(self.take_lease(&mut tables, id, params));
        }
        Ok(claimed)
    }

    async fn saga_commit_batch(&self, commits: &[SagaCommit]) -> StoreResult<Vec<CommitOutcome>> {
        let bugs = self.bugs();
        let mut tables = self.tables()?;
        let mut outcomes = Vec::with_capacity(commits.len());
        let mut released = false;
        for commit in commits {
            let Some(row) = tables.sagas.get_mut(&commit.id) else {
                outcomes.push(CommitOutcome::Fenced);
                continue;
            };
            let record = &mut row.record;
            let fenced = record.fencing_token != commit.fencing_token && !bugs.unfenced_commits;
            if fenced {
                if bugs.events_of_fenced_commits {
                    self.record_outbox(&mut tables, commit.id, &commit.outbox);
                }
                outcomes.push(CommitOutcome::Fenced);
                continue;
            }
            if let (Some(at_ms), None) = (record.cancel_requested_at_ms, commit.state.cancel_requested_at_ms) {
                outcomes.push(CommitOutcome::CancelRequested { at_ms });
                continue;
            }
            let terminal = commit.state.status.is_terminal();
            let release = (commit.release_lease && !bugs.leases_kept) || terminal;
            released |= release && !terminal;
            record.status = commit.state.status;
            record.state = commit.state.clone();
            record.updated_at_ms = commit.now_ms;
            record.completed_at_ms = terminal.then_some(commit.now_ms);
            if release {
                record.run_at_ms = if record.wake_seq != commit.wake_seq_seen {
                    commit.run_at_ms.min(commit.now_ms)
                } else {
                    commit.run_at_ms
                };
                record.lease_owner = None;
                record.lease_expires_at_ms = None;
            }
            let mut events = commit.events.clone();
            if let Some(change) = &commit.tenant_change {
                // No tenants live here: the change is refused, as a SQL store refuses one for a
                // tenant that does not exist.
                events.push(change.recorded(false, None, commit.now_ms));
            }
            self.append(&mut tables, commit.id, Some(&commit.worker_id), Some(commit.fencing_token), &events);
            self.record_outbox(&mut tables, commit.id, &commit.outbox);
            outcomes.push(CommitOutcome::Committed);
        }
        drop(tables);
        if released {
            self.notify_work();
        }
        Ok(outcomes)
    }

    async fn lease_renew(
        &self,
        worker_id: &str,
        leases: &[LeaseRef],
        now_ms: i64,
        lease_ttl_ms: i64,
    ) -> StoreResult<LeaseRenewal> {
        let expires = now_ms.saturating_add(lease_ttl_ms);
        let mut tables = self.tables()?;
        let mut renewal = LeaseRenewal::default();
        for lease in leases {
            let held = tables.sagas.get_mut(&lease.id).filter(|row| {
                row.record.fencing_token == lease.fencing_token && row.record.lease_owner.as_deref() == Some(worker_id)
            });
            match held {
                None => renewal.lost.push(lease.id),
                Some(row) => {
                    row.record.lease_expires_at_ms = Some(expires);
                    row.record.run_at_ms = expires;
                    if let Some(at_ms) = row.record.cancel_requested_at_ms {
                        renewal.cancel_requested.push((lease.id, at_ms));
                    }
                }
            }
        }
        Ok(renewal)
    }

    async fn lease_release(&self, worker_id: &str, leases: &[LeaseRef], now_ms: i64) -> StoreResult<()> {
        if self.bugs().leases_kept {
            return Ok(());
        }
        let mut tables = self.tables()?;
        for lease in leases {
            let Some(row) = tables.sagas.get_mut(&lease.id) else { continue };
            let record = &mut row.record;
            if record.fencing_token == lease.fencing_token && record.lease_owner.as_deref() == Some(worker_id) {
                record.lease_owner = None;
                record.lease_expires_at_ms = None;
                record.run_at_ms = now_ms;
            }
        }
        drop(tables);
        self.notify_work();
        Ok(())
    }

    fn work_signal(&self) -> WorkSignal {
        self.work.clone()
    }
}
