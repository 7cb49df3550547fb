//! Drivers' transitions: a batch is one transaction, each saga's write fenced on its token,
//! with any tenant change it causes and its history rows.

use saga_store::{CommitOutcome, SagaCommit, StoreResult, TenantChange};
use sqlx::Row;

use super::history::insert_events;
use super::SqliteStore;
use crate::rows::{db, json_text};

impl SqliteStore {
    pub(super) async fn commit_batch(&self, commits: &[SagaCommit]) -> StoreResult<Vec<CommitOutcome>> {
        let mut outcomes = Vec::with_capacity(commits.len());
        let mut released = false;
        let mut tx = self.writer.begin().await.map_err(db)?;
        // The events of the commits written, fanned out once for the whole batch.
        let mut outbox = Vec::new();
        for commit in commits {
            let terminal = commit.state.status.is_terminal();
            let release = commit.release_lease || terminal;
            released |= commit.release_lease && !terminal;
            let id = commit.id.to_string();
            // A tenant change is recorded as one more history row, the commit's last.
            let count = commit.events.len() as i64 + i64::from(commit.tenant_change.is_some());
            let row = sqlx::query(
                "UPDATE sagas SET status = ?, state = ?, updated_at = ?, event_seq = event_seq + ?, \
                 completed_at = CASE WHEN ? THEN ? ELSE NULL END, \
                 run_at = CASE WHEN NOT ? THEN run_at WHEN wake_seq <> ? THEN MIN(?, ?) ELSE ? END, \
                 lease_owner = CASE WHEN ? THEN NULL ELSE lease_owner END, \
                 lease_expires_at = CASE WHEN ? THEN NULL ELSE lease_expires_at END \
                 WHERE id = ? AND fencing_token = ? AND (cancel_requested_at IS NULL OR ?) RETURNING event_seq",
            )
            .bind(commit.state.status.as_str())
            .bind(json_text(&commit.state)?)
            .bind(commit.now_ms)
            .bind(count)
            .bind(terminal)
            .bind(commit.now_ms)
            .bind(release)
            .bind(commit.wake_seq_seen)
            .bind(commit.run_at_ms)
            .bind(commit.now_ms)
            .bind(commit.run_at_ms)
            .bind(release)
            .bind(release)
            .bind(&id)
            .bind(commit.fencing_token)
            .bind(commit.state.cancel_requested_at_ms.is_some())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
            let Some(row) = row else {
                let cancel: Option<Option<i64>> =
                    sqlx::query_scalar("SELECT cancel_requested_at FROM sagas WHERE id = ? AND fencing_token = ?")
                        .bind(&id)
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
            let last_seq: i64 = row.try_get(0).map_err(db)?;
            let first_seq = last_seq - count + 1;
            insert_events(
                &mut tx,
                &id,
                commit.tenant_id.as_deref(),
                first_seq,
                Some(&commit.worker_id),
                &commit.events,
            )
            .await?;
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
                let event = change.recorded(applied, found.as_deref(), commit.now_ms);
                insert_events(&mut tx, &id, commit.tenant_id.as_deref(), last_seq, Some(&commit.worker_id), &[event])
                    .await?;
            }
            outcomes.push(CommitOutcome::Committed);
        }
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
