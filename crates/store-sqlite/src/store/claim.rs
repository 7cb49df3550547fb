//! Claims: due sagas and admission under concurrency keys in one write transaction (the single
//! writer serialises claimers), lease renewal and hand-back.

use async_trait::async_trait;
use saga_store::{
    ClaimParams, Claimed, CommitOutcome, LeaseRef, LeaseRenewal, LeaseStore, SagaCommit, StoreResult, WorkSignal,
    PRIORITY_STEP_MS,
};
use sqlx::Row;

use super::SqliteStore;
use crate::rows::{self, db, SAGA_COLUMNS};

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn saga_claim_due(&self, params: &ClaimParams) -> StoreResult<Vec<Claimed>> {
        let expires = params.now_ms + params.lease_ttl_ms;
        let limit = i64::from(params.limit.min(saga_store::CLAIM_BATCH_MAX));
        // One writer connection: admission and claim in one transaction cannot race.
        let mut tx = self.writer.begin().await.map_err(db)?;
        let admitted = sqlx::query(&format!(
            "WITH running AS ( \
               SELECT concurrency_key AS key, count(*) AS n FROM sagas \
               WHERE admitted AND status IN ('PENDING', 'EXECUTING', 'COMPENSATING') AND concurrency_key IS NOT NULL \
               GROUP BY concurrency_key), \
             waiting AS ( \
               SELECT id, concurrency_key AS key, concurrency_limit AS lim, cancel_requested_at, deadline_at, \
                      run_at - priority * {PRIORITY_STEP_MS} AS rank_at, \
                      row_number() OVER (PARTITION BY concurrency_key \
                                         ORDER BY run_at - priority * {PRIORITY_STEP_MS}) AS place \
               FROM sagas \
               WHERE concurrency_key IS NOT NULL AND NOT admitted AND status = 'PENDING' AND run_at <= ?1) \
             UPDATE sagas SET admitted = 1, fencing_token = fencing_token + 1, previous_owner = lease_owner, \
               lease_owner = ?2, lease_expires_at = ?3, run_at = ?3, updated_at = ?1 \
             WHERE id IN (SELECT w.id FROM waiting w LEFT JOIN running r ON r.key = w.key \
                          WHERE w.place <= w.lim - COALESCE(r.n, 0) OR w.cancel_requested_at IS NOT NULL \
                                OR w.deadline_at <= ?1 \
                          ORDER BY w.rank_at LIMIT ?4) \
             RETURNING {SAGA_COLUMNS}"
        ))
        .bind(params.now_ms)
        .bind(&params.worker_id)
        .bind(expires)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let remaining = limit - admitted.len() as i64;
        let rows = if remaining > 0 {
            sqlx::query(&format!(
                "UPDATE sagas SET fencing_token = fencing_token + 1, previous_owner = lease_owner, lease_owner = ?, \
                 lease_expires_at = ?, run_at = ?, updated_at = ? \
                 WHERE id IN (SELECT id FROM sagas WHERE status IN ('PENDING', 'EXECUTING', 'COMPENSATING') \
                              AND (concurrency_key IS NULL OR admitted) AND run_at <= ? \
                              AND run_at - priority * {PRIORITY_STEP_MS} <= ? \
                              ORDER BY run_at - priority * {PRIORITY_STEP_MS} LIMIT ?) \
                 RETURNING {SAGA_COLUMNS}"
            ))
            .bind(&params.worker_id)
            .bind(expires)
            .bind(expires)
            .bind(params.now_ms)
            .bind(params.now_ms)
            .bind(saga_store::claim_horizon_ms(params.now_ms))
            .bind(remaining)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?
        } else {
            Vec::new()
        };
        tx.commit().await.map_err(db)?;
        admitted
            .iter()
            .chain(rows.iter())
            .map(|row| {
                Ok(Claimed { record: rows::saga(row)?, previous_owner: row.try_get("previous_owner").map_err(db)? })
            })
            .collect()
    }

    async fn saga_commit_batch(&self, commits: &[SagaCommit]) -> StoreResult<Vec<CommitOutcome>> {
        self.commit_batch(commits).await
    }

    async fn lease_renew(
        &self,
        worker_id: &str,
        leases: &[LeaseRef],
        now_ms: i64,
        lease_ttl_ms: i64,
    ) -> StoreResult<LeaseRenewal> {
        let expires = now_ms.saturating_add(lease_ttl_ms);
        let mut renewal = LeaseRenewal::default();
        let mut tx = self.writer.begin().await.map_err(db)?;
        for lease in leases {
            let renewed: Option<Option<i64>> = sqlx::query_scalar(
                "UPDATE sagas SET lease_expires_at = ?, run_at = ? WHERE id = ? AND fencing_token = ? AND lease_owner = ? \
                 RETURNING cancel_requested_at",
            )
            .bind(expires)
            .bind(expires)
            .bind(lease.id.to_string())
            .bind(lease.fencing_token)
            .bind(worker_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
            match renewed {
                None => renewal.lost.push(lease.id),
                Some(Some(at_ms)) => renewal.cancel_requested.push((lease.id, at_ms)),
                Some(None) => {}
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(renewal)
    }

    async fn lease_release(&self, worker_id: &str, leases: &[LeaseRef], now_ms: i64) -> StoreResult<()> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        for lease in leases {
            sqlx::query(
                "UPDATE sagas SET lease_owner = NULL, lease_expires_at = NULL, run_at = ? \
                 WHERE id = ? AND fencing_token = ? AND lease_owner = ?",
            )
            .bind(now_ms)
            .bind(lease.id.to_string())
            .bind(lease.fencing_token)
            .bind(worker_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        self.work.notify_one();
        Ok(())
    }

    fn work_signal(&self) -> WorkSignal {
        self.work.clone()
    }
}
