//! Drivers' transitions: a batch is one statement — a fenced `UPDATE … FROM UNNEST` of the
//! sagas and one multi-row history `INSERT` — plus, only in batches that carry them, the tenant
//! changes and their history rows.

use saga_core::HistoryEvent;
use std::collections::HashSet;

use saga_store::{CommitOutcome, OutboxEvent, SagaCommit, StoreError, StoreResult, Subscribers, TenantChange};
use sqlx::Row;
use uuid::Uuid;

use super::delivery::OutboxColumns;
use super::PostgresStore;
use crate::rows::{db, json_text};

/// Columns of pending history rows, as parallel arrays for one `UNNEST` insert.
#[derive(Default)]
pub(super) struct EventColumns {
    saga_id: Vec<Uuid>,
    seq: Vec<i64>,
    tenant_id: Vec<Option<String>>,
    kind: Vec<String>,
    step: Vec<Option<String>>,
    attempt: Vec<Option<i32>>,
    worker: Vec<Option<String>>,
    data: Vec<String>,
    at: Vec<i64>,
}

impl EventColumns {
    pub(super) fn push_all(
        &mut self,
        saga_id: Uuid,
        tenant_id: Option<&str>,
        first_seq: i64,
        worker: Option<&str>,
        events: &[HistoryEvent],
    ) -> StoreResult<()> {
        for (offset, event) in events.iter().enumerate() {
            self.saga_id.push(saga_id);
            self.seq.push(first_seq + offset as i64);
            self.tenant_id.push(tenant_id.map(str::to_string));
            self.kind.push(event.kind.clone());
            self.step.push(event.step.clone());
            self.attempt.push(event.attempt.map(|a| a as i32));
            self.worker.push(worker.map(str::to_string));
            self.data.push(json_text(&event.data)?);
            self.at.push(event.at_ms);
        }
        Ok(())
    }

    pub(super) async fn insert(self, conn: &mut sqlx::PgConnection) -> StoreResult<()> {
        if self.saga_id.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO saga_events (saga_id, seq, tenant_id, kind, step, attempt, worker, data, at) \
             SELECT saga_id, seq, tenant_id, kind, step, attempt, worker, data::jsonb, at \
             FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::text[], $8::text[], $9::bigint[]) \
                  AS u(saga_id, seq, tenant_id, kind, step, attempt, worker, data, at)",
        )
        .bind(self.saga_id)
        .bind(self.seq)
        .bind(self.tenant_id)
        .bind(self.kind)
        .bind(self.step)
        .bind(self.attempt)
        .bind(self.worker)
        .bind(self.data)
        .bind(self.at)
        .execute(conn)
        .await
        .map_err(db)?;
        Ok(())
    }
}

/// Tenant status changes riding on a commit batch, as parallel arrays.
#[derive(Default)]
struct TenantChangeColumns {
    saga_ids: Vec<Uuid>,
    tokens: Vec<i64>,
    tenant_ids: Vec<String>,
    to: Vec<String>,
    /// Comma-separated statuses the tenant may come from.
    from: Vec<String>,
    errors: Vec<Option<String>>,
    storages: Vec<Option<String>>,
    migrations: Vec<Option<String>>,
    nows: Vec<i64>,
    /// For the history row recording the change: the saga's tenant and the driver.
    saga_tenant_ids: Vec<Option<String>>,
    workers: Vec<String>,
}

impl TenantChangeColumns {
    fn push(&mut self, commit: &SagaCommit, change: &TenantChange) -> StoreResult<()> {
        self.saga_ids.push(commit.id);
        self.tokens.push(commit.fencing_token);
        self.tenant_ids.push(change.tenant_id.clone());
        self.to.push(change.to.as_str().to_string());
        self.from.push(change.from.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","));
        self.errors.push(change.error.as_ref().map(json_text).transpose()?);
        self.storages.push(change.storage.as_ref().map(json_text).transpose()?);
        self.migrations.push(change.migrations.as_ref().map(json_text).transpose()?);
        self.nows.push(commit.now_ms);
        self.saga_tenant_ids.push(commit.tenant_id.clone());
        self.workers.push(commit.worker_id.clone());
        Ok(())
    }
}

/// A commit batch as parallel arrays for `UNNEST`.
struct CommitColumns {
    ids: Vec<Uuid>,
    tokens: Vec<i64>,
    statuses: Vec<String>,
    states: Vec<String>,
    event_counts: Vec<i64>,
    releases: Vec<bool>,
    run_ats: Vec<i64>,
    terminals: Vec<bool>,
    nows: Vec<i64>,
    wake_seen: Vec<i64>,
    cancel_seen: Vec<bool>,
    tenants: TenantChangeColumns,
    /// Outbox events, with the commit each belongs to and whether it reports a tenant change.
    outbox: OutboxColumns,
    outbox_saga_ids: Vec<Uuid>,
    outbox_tokens: Vec<i64>,
    outbox_on_change: Vec<bool>,
    /// Per history row: its saga, the token it is fenced on, and its distance from the saga's
    /// new last `seq` (the last event of a commit is 0).
    event_saga_ids: Vec<Uuid>,
    event_tokens: Vec<i64>,
    event_from_end: Vec<i64>,
    events: EventColumns,
}

impl CommitColumns {
    fn push_outbox(
        &mut self,
        commit: &SagaCommit,
        event: &OutboxEvent,
        on_change: bool,
        subscribers: &Subscribers,
    ) -> StoreResult<()> {
        self.outbox.push(event, subscribers)?;
        self.outbox_saga_ids.push(commit.id);
        self.outbox_tokens.push(commit.fencing_token);
        self.outbox_on_change.push(on_change);
        Ok(())
    }

    fn build(commits: &[SagaCommit], subscribers: &Subscribers) -> StoreResult<Self> {
        let n = commits.len();
        let mut batch = CommitColumns {
            ids: Vec::with_capacity(n),
            tokens: Vec::with_capacity(n),
            statuses: Vec::with_capacity(n),
            states: Vec::with_capacity(n),
            event_counts: Vec::with_capacity(n),
            releases: Vec::with_capacity(n),
            run_ats: Vec::with_capacity(n),
            terminals: Vec::with_capacity(n),
            nows: Vec::with_capacity(n),
            wake_seen: Vec::with_capacity(n),
            cancel_seen: Vec::with_capacity(n),
            tenants: TenantChangeColumns::default(),
            outbox: OutboxColumns::default(),
            outbox_saga_ids: Vec::new(),
            outbox_tokens: Vec::new(),
            outbox_on_change: Vec::new(),
            event_saga_ids: Vec::new(),
            event_tokens: Vec::new(),
            event_from_end: Vec::new(),
            events: EventColumns::default(),
        };
        // In id order, the order the statement then tends to lock rows in (as the heartbeat
        // does): a batch that still deadlocks fails whole and the committer writes each alone.
        let mut sorted: Vec<&SagaCommit> = commits.iter().collect();
        sorted.sort_unstable_by_key(|commit| commit.id);
        for commit in sorted {
            let terminal = commit.state.status.is_terminal();
            let count = commit.events.len() as i64;
            // A tenant change is recorded as one more history row, the commit's last.
            let extra = i64::from(commit.tenant_change.is_some());
            batch.ids.push(commit.id);
            batch.tokens.push(commit.fencing_token);
            batch.statuses.push(commit.state.status.as_str().to_string());
            batch.states.push(json_text(&commit.state)?);
            batch.event_counts.push(count + extra);
            batch.releases.push(commit.release_lease || terminal);
            batch.run_ats.push(commit.run_at_ms);
            batch.terminals.push(terminal);
            batch.nows.push(commit.now_ms);
            batch.wake_seen.push(commit.wake_seq_seen);
            batch.cancel_seen.push(commit.state.cancel_requested_at_ms.is_some());
            if let Some(change) = &commit.tenant_change {
                batch.tenants.push(commit, change)?;
                for event in &change.outbox {
                    batch.push_outbox(commit, event, true, subscribers)?;
                }
            }
            for event in &commit.outbox {
                batch.push_outbox(commit, event, false, subscribers)?;
            }
            for offset in 0..count {
                batch.event_saga_ids.push(commit.id);
                batch.event_tokens.push(commit.fencing_token);
                batch.event_from_end.push(count - 1 - offset + extra);
            }
            // `seq` is computed in SQL; the placeholder here is unused.
            batch.events.push_all(
                commit.id,
                commit.tenant_id.as_deref(),
                0,
                Some(&commit.worker_id),
                &commit.events,
            )?;
        }
        Ok(batch)
    }
}

/// The fenced update of a batch (`u`) and its history rows (`e`), the part both variants share.
macro_rules! commit_head {
    () => {
        "WITH u AS ( \
               UPDATE sagas s SET status = c.status, state = c.state::json, updated_at = c.now, \
                 event_seq = s.event_seq + c.event_count, \
                 completed_at = CASE WHEN c.terminal THEN c.now ELSE NULL END, \
                 lease_owner = CASE WHEN c.release THEN NULL ELSE s.lease_owner END, \
                 lease_expires_at = CASE WHEN c.release THEN NULL ELSE s.lease_expires_at END, \
                 run_at = CASE WHEN NOT c.release THEN s.run_at \
                               WHEN s.wake_seq <> c.wake_seen THEN LEAST(c.run_at, c.now) ELSE c.run_at END \
               FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::bool[], $7::bigint[], $8::bool[], $9::bigint[], $20::bigint[], $21::bool[]) \
                    AS c(id, token, status, state, event_count, release, run_at, terminal, now, wake_seen, cancel_seen) \
               WHERE s.id = c.id AND s.fencing_token = c.token AND (s.cancel_requested_at IS NULL OR c.cancel_seen) {guard} \
               RETURNING s.id, s.fencing_token, s.event_seq), \
             e AS ( \
               INSERT INTO saga_events (saga_id, seq, tenant_id, kind, step, attempt, worker, data, at) \
               SELECT ev.saga_id, u.event_seq - ev.from_end, ev.tenant_id, ev.kind, ev.step, ev.attempt, ev.worker, ev.data::jsonb, ev.at \
               FROM UNNEST($10::uuid[], $11::bigint[], $12::bigint[], $13::text[], $14::text[], $15::text[], $16::int4[], $17::text[], $18::text[], $19::bigint[]) \
                    AS ev(saga_id, token, from_end, tenant_id, kind, step, attempt, worker, data, at) \
               JOIN u ON u.id = ev.saga_id AND u.fencing_token = ev.token) "
    };
}

/// The tenant changes riding on a batch (`$22`–`$32`): each applied only when the tenant is in
/// one of its allowed statuses, and recorded either way.
const TENANT_CTES: &str = ", \
             tc AS ( \
               SELECT c.*, tn.status AS found FROM UNNEST($22::uuid[], $23::bigint[], $24::text[], $25::text[], $26::text[], \
                                      $27::text[], $28::text[], $29::text[], $30::bigint[], $31::text[], $32::text[]) \
                    AS c(saga_id, token, tenant_id, to_status, allowed, error, storage, migrations, now, saga_tenant, worker) \
               JOIN u ON u.id = c.saga_id AND u.fencing_token = c.token \
               LEFT JOIN tenants tn ON tn.id = c.tenant_id), \
             t AS ( \
               UPDATE tenants tn SET status = tc.to_status, error = tc.error::jsonb, updated_at = tc.now, \
                 storage = COALESCE(tc.storage::jsonb, tn.storage), \
                 migrations = COALESCE(tc.migrations::jsonb, tn.migrations) \
               FROM tc \
               WHERE tn.id = tc.tenant_id AND tn.status = ANY(string_to_array(tc.allowed, ',')) \
               RETURNING tc.saga_id), \
             r AS ( \
               INSERT INTO saga_events (saga_id, seq, tenant_id, kind, step, attempt, worker, data, at) \
               SELECT tc.saga_id, u.event_seq, tc.saga_tenant, \
                      CASE WHEN t.saga_id IS NULL THEN 'tenant_change_refused' ELSE 'tenant_status_changed' END, \
                      NULL, NULL, tc.worker, \
                      jsonb_build_object('tenant_id', tc.tenant_id, 'to', tc.to_status, \
                                         'from', to_jsonb(string_to_array(tc.allowed, ',')), 'found', tc.found), \
                      tc.now \
               FROM tc JOIN u ON u.id = tc.saga_id LEFT JOIN t ON t.saga_id = tc.saga_id \
               RETURNING saga_id, kind)";

const PLAIN_RESULT: &str = " SELECT id, fencing_token, FALSE AS refused FROM u";

const TENANT_RESULT: &str = " SELECT u.id, u.fencing_token, \
                    EXISTS (SELECT 1 FROM r WHERE r.saga_id = u.id AND r.kind = 'tenant_change_refused') AS refused \
             FROM u";

/// The outbox of a batch (10 arrays from `$first`, then the 2 of the fan-out's pairs): events
/// of the commits that were written, a tenant change's events only if the change was applied,
/// fanned out to the subscriptions they were matched to.
fn outbox_ctes(first: u32, with_tenants: bool) -> String {
    let p: Vec<u32> = (first..first + 10).collect();
    let applied = if with_tenants { " OR EXISTS (SELECT 1 FROM t WHERE t.saga_id = e.saga_id)" } else { "" };
    format!(
        ", ev AS ( \
           SELECT e.id, e.type, e.tenant_id, e.data, e.at, e.to_subscription, e.expires_at \
           FROM UNNEST(${}::uuid[], ${}::text[], ${}::text[], ${}::text[], ${}::bigint[], ${}::uuid[], ${}::uuid[], \
                       ${}::bigint[], ${}::bool[], ${}::bigint[]) \
                AS e(id, type, tenant_id, data, at, to_subscription, saga_id, token, on_change, expires_at) \
           JOIN u ON u.id = e.saga_id AND u.fencing_token = e.token \
           WHERE NOT e.on_change{applied}), {}",
        p[0],
        p[1],
        p[2],
        p[3],
        p[4],
        p[5],
        p[6],
        p[7],
        p[8],
        p[9],
        super::delivery::fan_out_ctes(first + 10)
    )
}

/// The statement for a batch: the fenced update and history (`$1`–`$21`), plus the tenant
/// changes and the outbox only in batches that carry them (measured: the tenant CTEs cost saga3
/// about 7% when always present).
fn commit_sql(with_tenants: bool, with_outbox: bool) -> &'static str {
    static VARIANTS: [std::sync::OnceLock<String>; 4] = [
        std::sync::OnceLock::new(),
        std::sync::OnceLock::new(),
        std::sync::OnceLock::new(),
        std::sync::OnceLock::new(),
    ];
    let index = usize::from(with_tenants) * 2 + usize::from(with_outbox);
    VARIANTS[index].get_or_init(|| {
        let outbox_first = if with_tenants { 33 } else { 22 };
        // A batch with events writes only while the subscriptions it was matched against are
        // still the ones the table holds (the epoch after the outbox's 12 parameters).
        let guard = if with_outbox {
            format!("AND ${} = (SELECT epoch FROM subscription_epoch)", outbox_first + 12)
        } else {
            String::new()
        };
        let mut sql = commit_head!().replace("{guard}", &guard);
        if with_tenants {
            sql.push_str(TENANT_CTES);
        }
        if with_outbox {
            sql.push_str(&outbox_ctes(outbox_first, with_tenants));
        }
        sql.push_str(if with_tenants { TENANT_RESULT } else { PLAIN_RESULT });
        sql
    })
}

impl PostgresStore {
    pub(super) async fn commit_batch(&self, commits: &[SagaCommit]) -> StoreResult<Vec<CommitOutcome>> {
        if commits.is_empty() {
            return Ok(Vec::new());
        }
        let with_events = commits
            .iter()
            .any(|c| !c.outbox.is_empty() || c.tenant_change.as_ref().is_some_and(|change| !change.outbox.is_empty()));
        // A batch with events is matched against the subscriptions as last read; the statement
        // refuses it whole when they changed since, and it is matched again against a fresh read.
        for _ in 0..3 {
            let subscribers = match with_events {
                true => Some(self.subscribers().await?),
                false => None,
            };
            let matched = subscribers.as_deref().map(|(epoch, subscribers)| (*epoch, subscribers));
            if let Some(written) = self.commit_matched(commits, matched).await? {
                return self.outcomes(commits, &written).await;
            }
        }
        Err(StoreError::Conflict("the subscriptions kept changing while a commit batch was written".into()))
    }

    /// One try of a batch, its events matched against `matched` (the subscriptions of an epoch):
    /// the commits written, or None when the epoch had passed and nothing was written.
    async fn commit_matched(
        &self,
        commits: &[SagaCommit],
        matched: Option<(i64, &Subscribers)>,
    ) -> StoreResult<Option<HashSet<(Uuid, i64)>>> {
        let none = Subscribers::default();
        let batch = CommitColumns::build(commits, matched.map_or(&none, |(_, subscribers)| subscribers))?;
        let with_tenants = !batch.tenants.saga_ids.is_empty();
        let with_outbox = !batch.outbox.ids.is_empty();
        let sql = commit_sql(with_tenants, with_outbox);
        // One statement, so one round trip and one commit for the whole batch: the fenced update,
        // and the history rows of exactly the commits whose token still matched.
        let mut query = sqlx::query(sql)
            .bind(batch.ids)
            .bind(batch.tokens)
            .bind(batch.statuses)
            .bind(batch.states)
            .bind(batch.event_counts)
            .bind(batch.releases)
            .bind(batch.run_ats)
            .bind(batch.terminals)
            .bind(batch.nows)
            .bind(batch.event_saga_ids)
            .bind(batch.event_tokens)
            .bind(batch.event_from_end)
            .bind(batch.events.tenant_id)
            .bind(batch.events.kind)
            .bind(batch.events.step)
            .bind(batch.events.attempt)
            .bind(batch.events.worker)
            .bind(batch.events.data)
            .bind(batch.events.at)
            .bind(batch.wake_seen)
            .bind(batch.cancel_seen);
        if with_tenants {
            query = query
                .bind(batch.tenants.saga_ids)
                .bind(batch.tenants.tokens)
                .bind(batch.tenants.tenant_ids)
                .bind(batch.tenants.to)
                .bind(batch.tenants.from)
                .bind(batch.tenants.errors)
                .bind(batch.tenants.storages)
                .bind(batch.tenants.migrations)
                .bind(batch.tenants.nows)
                .bind(batch.tenants.saga_tenant_ids)
                .bind(batch.tenants.workers);
        }
        if with_outbox {
            query = query
                .bind(batch.outbox.ids)
                .bind(batch.outbox.types)
                .bind(batch.outbox.tenant_ids)
                .bind(batch.outbox.data)
                .bind(batch.outbox.ats)
                .bind(batch.outbox.to_subscriptions)
                .bind(batch.outbox_saga_ids)
                .bind(batch.outbox_tokens)
                .bind(batch.outbox_on_change)
                .bind(batch.outbox.expires)
                .bind(batch.outbox.pair_events)
                .bind(batch.outbox.pair_subscriptions)
                .bind(matched.map_or(0, |(epoch, _)| epoch));
        }
        let rows = query.fetch_all(&self.db).await.map_err(db)?;
        if rows.is_empty() && with_outbox {
            // Nothing written: every commit fenced, or the epoch moved on (then none was).
            if let Some((epoch, _)) = matched {
                if self.subscribers_outdated(epoch).await? {
                    return Ok(None);
                }
            }
        }
        let mut committed = HashSet::with_capacity(rows.len());
        for row in &rows {
            let id: Uuid = row.try_get(0).map_err(db)?;
            let token: i64 = row.try_get(1).map_err(db)?;
            if row.try_get::<bool, _>(2).map_err(db)? {
                tracing::warn!(saga_id = %id, "the tenant status change of this transition was refused: the tenant is in another status (recorded as tenant_change_refused)");
            }
            committed.insert((id, token));
        }
        Ok(Some(committed))
    }

    /// What each commit of a batch came to, given those written.
    async fn outcomes(
        &self,
        commits: &[SagaCommit],
        committed: &HashSet<(Uuid, i64)>,
    ) -> StoreResult<Vec<CommitOutcome>> {
        // The rare rows not written: fenced, or a cancel request the driver has yet to act on.
        let missing: Vec<Uuid> =
            commits.iter().filter(|c| !committed.contains(&(c.id, c.fencing_token))).map(|c| c.id).collect();
        let mut cancels = std::collections::HashMap::new();
        if !missing.is_empty() {
            let rows = sqlx::query(
                "SELECT id, fencing_token, cancel_requested_at FROM sagas \
                 WHERE id = ANY($1) AND cancel_requested_at IS NOT NULL",
            )
            .bind(&missing)
            .fetch_all(&self.db)
            .await
            .map_err(db)?;
            for row in &rows {
                let id: Uuid = row.try_get(0).map_err(db)?;
                let token: i64 = row.try_get(1).map_err(db)?;
                let at: i64 = row.try_get(2).map_err(db)?;
                cancels.insert((id, token), at);
            }
        }
        Ok(commits
            .iter()
            .map(|c| {
                if committed.contains(&(c.id, c.fencing_token)) {
                    CommitOutcome::Committed
                } else if let Some(&at_ms) = cancels.get(&(c.id, c.fencing_token)) {
                    CommitOutcome::CancelRequested { at_ms }
                } else {
                    CommitOutcome::Fenced
                }
            })
            .collect())
    }
}
