//! Claims: due sagas in one `FOR UPDATE SKIP LOCKED` statement that bumps the fencing token,
//! admission under concurrency keys, lease renewal and hand-back.

use async_trait::async_trait;
use saga_store::{
    ClaimParams, Claimed, CommitOutcome, LeaseRef, LeaseRenewal, LeaseStore, SagaCommit, StoreResult, WorkSignal,
    PRIORITY_STEP_MS,
};
use sqlx::Row;
use uuid::Uuid;

use super::PostgresStore;

/// `l`: the rows of this worker's leases (`$2` ids, `$3` tokens, `$4` worker), locked in id
/// order — the order every multi-row write of `sagas` takes — with an optional `SKIP LOCKED`.
macro_rules! leases_locked_in_id_order {
    ($skip:literal) => {
        concat!(
            "WITH l AS MATERIALIZED ( \
               SELECT s.id FROM sagas s JOIN UNNEST($2::uuid[], $3::bigint[]) AS u(id, token) \
                 ON s.id = u.id AND s.fencing_token = u.token \
               WHERE s.lease_owner = $4 ORDER BY s.id FOR NO KEY UPDATE OF s ",
            $skip,
            ") "
        )
    };
}
use crate::rows::{self, db, SAGA_COLUMNS};

#[async_trait]
impl LeaseStore for PostgresStore {
    async fn saga_claim_due(&self, params: &ClaimParams) -> StoreResult<Vec<Claimed>> {
        let limit = params.limit.min(saga_store::CLAIM_BATCH_MAX);
        let mut claimed = self.admit(params, limit).await?;
        let remaining = limit.saturating_sub(claimed.len() as u32);
        if remaining == 0 {
            return Ok(claimed);
        }
        let expires = params.now_ms + params.lease_ttl_ms;
        let rows = sqlx::query(&format!(
            "WITH due AS ( \
               SELECT id FROM sagas \
               WHERE status IN ('PENDING', 'EXECUTING', 'COMPENSATING') AND (concurrency_key IS NULL OR admitted) \
                 AND run_at <= $1 AND run_at - priority::bigint * {PRIORITY_STEP_MS} <= $5 \
               ORDER BY run_at - priority::bigint * {PRIORITY_STEP_MS} LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE sagas s SET fencing_token = s.fencing_token + 1, previous_owner = s.lease_owner, \
               lease_owner = $3, lease_expires_at = $4, run_at = $4, updated_at = $1 \
             FROM due WHERE s.id = due.id \
             RETURNING {SAGA_COLUMNS}"
        ))
        .bind(params.now_ms)
        .bind(i64::from(remaining))
        .bind(&params.worker_id)
        .bind(expires)
        .bind(saga_store::claim_horizon_ms(params.now_ms))
        .fetch_all(&self.db)
        .await
        .map_err(db)?;
        for row in &rows {
            claimed.push(claimed_row(row)?);
        }
        Ok(claimed)
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
        if leases.is_empty() {
            return Ok(LeaseRenewal::default());
        }
        let (ids, tokens) = by_id(leases);
        let expires = now_ms.saturating_add(lease_ttl_ms);
        // A heartbeat never waits for a row lock: a saga whose row a commit batch holds right
        // now is skipped this round (its driver is alive; the next heartbeat renews it), so a
        // heartbeat and a group commit can never deadlock over the same sagas.
        let renewed: Vec<(Uuid, Option<i64>)> = retry_deadlock(|| {
            sqlx::query_as(concat!(
                leases_locked_in_id_order!("SKIP LOCKED"),
                "UPDATE sagas s SET lease_expires_at = $1, run_at = $1 FROM l WHERE s.id = l.id \
                     RETURNING s.id, s.cancel_requested_at"
            ))
            .bind(expires)
            .bind(&ids)
            .bind(&tokens)
            .bind(worker_id)
            .fetch_all(&self.db)
        })
        .await?;
        let renewed_ids: std::collections::HashSet<Uuid> = renewed.iter().map(|(id, _)| *id).collect();
        let (missing, missing_tokens): (Vec<Uuid>, Vec<i64>) =
            ids.iter().zip(&tokens).filter(|(id, _)| !renewed_ids.contains(id)).map(|(id, t)| (*id, *t)).unzip();
        let lost = if missing.is_empty() {
            Vec::new()
        } else {
            // Not renewed: lost, unless the row was only skipped and is still this lease's.
            sqlx::query_scalar(
                "SELECT u.id FROM UNNEST($1::uuid[], $2::bigint[]) AS u(id, token) \
                 LEFT JOIN sagas s ON s.id = u.id AND s.fencing_token = u.token AND s.lease_owner = $3 \
                 WHERE s.id IS NULL",
            )
            .bind(&missing)
            .bind(&missing_tokens)
            .bind(worker_id)
            .fetch_all(&self.db)
            .await
            .map_err(db)?
        };
        let cancel_requested = renewed.into_iter().filter_map(|(id, at)| at.map(|at| (id, at))).collect();
        Ok(LeaseRenewal { lost, cancel_requested })
    }

    async fn lease_release(&self, worker_id: &str, leases: &[LeaseRef], now_ms: i64) -> StoreResult<()> {
        if leases.is_empty() {
            return Ok(());
        }
        let (ids, tokens) = by_id(leases);
        retry_deadlock(|| {
            sqlx::query(concat!(
                leases_locked_in_id_order!(""),
                "UPDATE sagas s SET lease_owner = NULL, lease_expires_at = NULL, run_at = $1 FROM l WHERE s.id = l.id"
            ))
            .bind(now_ms)
            .bind(&ids)
            .bind(&tokens)
            .bind(worker_id)
            .execute(&self.db)
        })
        .await?;
        self.announce.request();
        Ok(())
    }

    fn work_signal(&self) -> WorkSignal {
        self.work.clone()
    }
}

impl PostgresStore {
    /// Admits waiting sagas of concurrency keys that have a free slot, leased to the claimer.
    ///
    /// Design note. A key's running count and the admission must not race across instances.
    /// The transaction first locks the keys' rows in `concurrency_keys` (`SKIP LOCKED`: another
    /// instance admitting for a key simply leaves it to that instance); every other admitter of
    /// those keys has committed before the lock was granted, so the next statement's snapshot
    /// counts their admissions. A cancelled or expired saga is admitted regardless of the limit,
    /// since all it will do is compensate nothing and end.
    async fn admit(&self, params: &ClaimParams, limit: u32) -> StoreResult<Vec<Claimed>> {
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT concurrency_key FROM sagas \
             WHERE concurrency_key IS NOT NULL AND NOT admitted AND status = 'PENDING' AND run_at <= $1 LIMIT 64",
        )
        .bind(params.now_ms)
        .fetch_all(&self.db)
        .await
        .map_err(db)?;
        if keys.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.db.begin().await.map_err(db)?;
        let locked: Vec<String> =
            sqlx::query_scalar("SELECT key FROM concurrency_keys WHERE key = ANY($1) FOR UPDATE SKIP LOCKED")
                .bind(&keys)
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?;
        if locked.is_empty() {
            return Ok(Vec::new());
        }
        let expires = params.now_ms + params.lease_ttl_ms;
        let rows = sqlx::query(&format!(
            "WITH running AS ( \
               SELECT concurrency_key AS key, count(*) AS n FROM sagas \
               WHERE concurrency_key = ANY($1) AND admitted AND status IN ('PENDING', 'EXECUTING', 'COMPENSATING') \
               GROUP BY concurrency_key), \
             waiting AS ( \
               SELECT id, concurrency_key AS key, concurrency_limit AS lim, cancel_requested_at, deadline_at, \
                      run_at - priority::bigint * {PRIORITY_STEP_MS} AS rank_at, \
                      row_number() OVER (PARTITION BY concurrency_key \
                                         ORDER BY run_at - priority::bigint * {PRIORITY_STEP_MS}) AS place \
               FROM sagas \
               WHERE concurrency_key = ANY($1) AND NOT admitted AND status = 'PENDING' AND run_at <= $2), \
             picked AS ( \
               SELECT w.id FROM waiting w LEFT JOIN running r ON r.key = w.key \
               WHERE w.place <= w.lim - COALESCE(r.n, 0) OR w.cancel_requested_at IS NOT NULL OR w.deadline_at <= $2 \
               ORDER BY w.rank_at LIMIT $3) \
             UPDATE sagas s SET admitted = TRUE, fencing_token = s.fencing_token + 1, previous_owner = s.lease_owner, \
               lease_owner = $4, lease_expires_at = $5, run_at = $5, updated_at = $2 \
             FROM picked WHERE s.id = picked.id \
             RETURNING {SAGA_COLUMNS}"
        ))
        .bind(&locked)
        .bind(params.now_ms)
        .bind(i64::from(limit))
        .bind(&params.worker_id)
        .bind(expires)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter().map(claimed_row).collect()
    }
}

fn claimed_row(row: &sqlx::postgres::PgRow) -> StoreResult<Claimed> {
    Ok(Claimed { record: rows::saga(row)?, previous_owner: row.try_get("previous_owner").map_err(db)? })
}

/// Leases as id and token columns, in id order (the order rows are locked in).
fn by_id(leases: &[LeaseRef]) -> (Vec<Uuid>, Vec<i64>) {
    let mut sorted = leases.to_vec();
    sorted.sort_unstable_by_key(|lease| lease.id);
    sorted.into_iter().map(|lease| (lease.id, lease.fencing_token)).unzip()
}

/// Deadlocks (`40P01`) and serialization failures (`40001`) retried at most this often.
const DEADLOCK_RETRIES_MAX: u32 = 3;

/// Runs a statement again when PostgreSQL aborted it to break a deadlock: the statement is
/// atomic, so nothing of the aborted run remains.
pub(crate) async fn retry_deadlock<T, F, Fut>(mut statement: F) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut tries = 0;
    loop {
        match statement().await {
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("40P01" | "40001")) && tries < DEADLOCK_RETRIES_MAX =>
            {
                tries += 1;
                tracing::info!(code = ?e.code(), tries, "statement aborted by a deadlock; running it again");
                tokio::time::sleep(std::time::Duration::from_millis(5 << tries)).await;
            }
            result => return result.map_err(db),
        }
    }
}
