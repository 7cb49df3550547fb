//! Drivers' transitions: a batch is one transaction, each saga's write fenced on its token,
//! with any tenant change it causes and its history rows. The batch's updates are one statement
//! and its history rows another, whatever the batch's size: each statement is a round trip to
//! SQLite's worker thread, which is what a transition cost before.

use std::collections::{HashMap, HashSet};

use saga_core::HistoryEvent;
use saga_store::{CommitOutcome, SagaCommit, StoreResult, TenantChange};
use serde::Serialize;
use sqlx::Row;

use super::history::HistoryRows;
use super::SqliteStore;
use crate::rows::{db, json_text};

/// One transition as [`UPDATE_BATCH`] reads it: a JSON array in its columns' order.
#[derive(Serialize)]
struct Transition<'a>(&'a str, &'a str, String, i64, i64, bool, bool, i64, i64, i64, bool);

/// Every transition of `?` (an array of [`Transition`]s, at most one per saga): written where
/// the fencing token still holds and no cancel request is unanswered. While the lease is kept
/// `run_at` stays the lease's expiry; a release whose `wake_seq` moved is due at once.
const UPDATE_BATCH: &str = "UPDATE sagas SET status = c.to_status, state = c.to_state, updated_at = c.at, \
     event_seq = event_seq + c.added, completed_at = CASE WHEN c.terminal THEN c.at ELSE NULL END, \
     run_at = CASE WHEN NOT c.release THEN run_at WHEN wake_seq <> c.seen_wake THEN MIN(c.next_run, c.at) \
     ELSE c.next_run END, \
     lease_owner = CASE WHEN c.release THEN NULL ELSE lease_owner END, \
     lease_expires_at = CASE WHEN c.release THEN NULL ELSE lease_expires_at END \
     FROM (SELECT value->>0 AS saga, value->>1 AS to_status, value->>2 AS to_state, value->>3 AS at, \
     value->>4 AS added, value->>5 AS terminal, value->>6 AS release, value->>7 AS seen_wake, \
     value->>8 AS next_run, value->>9 AS token, value->>10 AS cancel_seen FROM json_each(?)) AS c \
     WHERE sagas.id = c.saga AND sagas.fencing_token = c.token \
     AND (sagas.cancel_requested_at IS NULL OR c.cancel_seen) \
     RETURNING id, event_seq";

impl SqliteStore {
    pub(super) async fn commit_batch(&self, commits: &[SagaCommit]) -> StoreResult<Vec<CommitOutcome>> {
        let ids: Vec<String> = commits.iter().map(|c| c.id.to_string()).collect();
        // A tenant change is recorded as one more history row, the commit's last.
        let added = |commit: &SagaCommit| commit.events.len() as i64 + i64::from(commit.tenant_change.is_some());
        let mut tx = self.writer.begin().await.map_err(db)?;
        // Each commit's new event_seq, or None when it was not written.
        let mut written: Vec<Option<i64>> = vec![None; commits.len()];
        let mut pending: Vec<usize> = (0..commits.len()).collect();
        // One statement a round; a saga twice in one batch (a zombie's commit beside its
        // successor's) waits for the next round, so each row has one transition to read.
        while !pending.is_empty() {
            let mut seen = HashSet::new();
            let (round, later): (Vec<usize>, Vec<usize>) = pending.iter().partition(|&&i| seen.insert(&ids[i]));
            let transitions = round
                .iter()
                .map(|&i| {
                    let commit = &commits[i];
                    let terminal = commit.state.status.is_terminal();
                    Ok(Transition(
                        &ids[i],
                        commit.state.status.as_str(),
                        json_text(&commit.state)?,
                        commit.now_ms,
                        added(commit),
                        terminal,
                        commit.release_lease || terminal,
                        commit.wake_seq_seen,
                        commit.run_at_ms,
                        commit.fencing_token,
                        commit.state.cancel_requested_at_ms.is_some(),
                    ))
                })
                .collect::<StoreResult<Vec<_>>>()?;
            let rows =
                sqlx::query(UPDATE_BATCH).bind(json_text(&transitions)?).fetch_all(&mut *tx).await.map_err(db)?;
            let mut seqs = HashMap::with_capacity(rows.len());
            for row in &rows {
                let id: String = row.try_get(0).map_err(db)?;
                let seq: i64 = row.try_get(1).map_err(db)?;
                seqs.insert(id, seq);
            }
            for &i in &round {
                written[i] = seqs.get(&ids[i]).copied();
            }
            pending = later;
        }

        let mut outcomes = Vec::with_capacity(commits.len());
        let mut released = false;
        // The events of the commits written, fanned out once for the whole batch.
        let mut outbox = Vec::new();
        // Each written tenant change's history row: (commit, its sequence number, the row).
        let mut recorded: Vec<(usize, i64, HistoryEvent)> = Vec::new();
        for (i, commit) in commits.iter().enumerate() {
            let Some(last_seq) = written[i] else {
                let cancel: Option<Option<i64>> =
                    sqlx::query_scalar("SELECT cancel_requested_at FROM sagas WHERE id = ? AND fencing_token = ?")
                        .bind(&ids[i])
                        .bind(commit.fencing_token)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db)?;
                outcomes.push(match cancel.flatten() {
                    Some(at_ms) => CommitOutcome::CancelRequested { at_ms },
                    None => CommitOutcome::Fenced,
                });
                continue;
            };
            released |= commit.release_lease && !commit.state.status.is_terminal();
            outbox.extend(commit.outbox.iter().cloned());
            if let Some(change) = &commit.tenant_change {
                let found: Option<String> = sqlx::query_scalar("SELECT status FROM tenants WHERE id = ?")
                    .bind(&change.tenant_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db)?;
                let applied = tenant_change_apply(&mut tx, change, commit.now_ms).await? > 0;
                if !applied {
                    tracing::warn!(saga_id = %commit.id, "the tenant status change of this transition was refused: the tenant is in another status (recorded as tenant_change_refused)");
                }
                if applied {
                    outbox.extend(change.outbox.iter().cloned());
                }
                recorded.push((i, last_seq, change.recorded(applied, found.as_deref(), commit.now_ms)));
            }
            outcomes.push(CommitOutcome::Committed);
        }
        let mut history = HistoryRows::default();
        for (i, commit) in commits.iter().enumerate() {
            if let Some(last_seq) = written[i] {
                let first_seq = last_seq - added(commit) + 1;
                let worker = Some(commit.worker_id.as_str());
                history.push(&ids[i], commit.tenant_id.as_deref(), first_seq, worker, &commit.events)?;
            }
        }
        for (i, last_seq, event) in &recorded {
            let commit = &commits[*i];
            let worker = Some(commit.worker_id.as_str());
            history.push(&ids[*i], commit.tenant_id.as_deref(), *last_seq, worker, std::slice::from_ref(event))?;
        }
        history.insert(&mut tx).await?;
        super::delivery::fan_out(&mut tx, &outbox).await?;
        tx.commit().await.map_err(db)?;
        if released {
            self.work.notify_one();
        }
        Ok(outcomes)
    }
}

/// Writes `change` if the tenant is in one of its `from` statuses; returns the rows changed.
pub(super) async fn tenant_change_apply(
    conn: &mut sqlx::SqliteConnection,
    change: &TenantChange,
    now_ms: i64,
) -> StoreResult<u64> {
    let from: Vec<&str> = change.from.iter().map(|s| s.as_str()).collect();
    let changed = sqlx::query(
        "UPDATE tenants SET status = ?, error = ?, updated_at = ?, storage = COALESCE(?, storage), \
         migrations = COALESCE(?, migrations) \
         WHERE id = ? AND status IN (SELECT value FROM json_each(?))",
    )
    .bind(change.to.as_str())
    .bind(change.error.as_ref().map(json_text).transpose()?)
    .bind(now_ms)
    .bind(change.storage.as_ref().map(json_text).transpose()?)
    .bind(change.migrations.as_ref().map(json_text).transpose()?)
    .bind(&change.tenant_id)
    .bind(json_text(&from)?)
    .execute(conn)
    .await
    .map_err(db)?;
    Ok(changed.rows_affected())
}
