//! The PostgreSQL store: queries live next to the method that runs them.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use saga_core::HistoryEvent;
use saga_store::{
    CallbackRecord, CallbackRegister, ClaimParams, Claimed, CommitOutcome, DefinitionPut, DefinitionRecord,
    EventRecord, LeaseRef, SagaCommit, SagaCreate, SagaCreated, SagaFilter, SagaOperatorUpdate, SagaRecord,
    SchemaStatus, SignalRecord, Store, StoreError, StoreResult, TenantChange, TenantFilter, TenantKeyRecord,
    TenantPatch, TenantRecord, TenantTransition, TenantUserRecord, WebhookClaim, WorkSignal, PRIORITY_STEP_MS,
};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use crate::creates::Creator;
use crate::migrate;
use crate::rows::{self, SAGA_COLUMNS, TENANT_COLUMNS};

/// The channel idle instances listen on.
pub const WORK_CHANNEL: &str = "sagaplane_work";
/// Default connection pool size.
pub const POOL_CONNECTIONS_MAX: u32 = 24;

/// PostgreSQL-backed store.
pub struct PostgresStore {
    pool: PgPool,
    work: WorkSignal,
    announce: Announcer,
    creator: Creator,
    listener: tokio::task::JoinHandle<()>,
    announcer: tokio::task::JoinHandle<()>,
    create_writer: tokio::task::JoinHandle<()>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener.abort();
        self.announcer.abort();
        self.create_writer.abort();
    }
}

/// The shortest gap between two `NOTIFY`s from one instance.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(10);

/// Coalesced `NOTIFY sagaplane_work`: PostgreSQL serialises commits that notify (a measured 25%
/// of saga3 throughput when every create notified), so after work is committed an instance asks
/// for an announcement, and one task sends at most one `NOTIFY` per [`ANNOUNCE_INTERVAL`]. Idle
/// instances elsewhere wake within that interval; this instance's own worker is woken in-process
/// at once.
#[derive(Clone)]
struct Announcer {
    wanted: Arc<std::sync::atomic::AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
}

impl Announcer {
    fn new() -> Self {
        Announcer {
            wanted: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            wake: Arc::new(tokio::sync::Notify::new()),
        }
    }

    fn request(&self) {
        self.wanted.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }

    async fn run(self, pool: PgPool) {
        loop {
            self.wake.notified().await;
            if !self.wanted.swap(false, std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            if let Err(e) = sqlx::query("SELECT pg_notify($1, '')").bind(WORK_CHANNEL).execute(&pool).await {
                tracing::warn!(error = %e, "NOTIFY failed; other instances fall back to polling");
            }
            tokio::time::sleep(ANNOUNCE_INTERVAL).await;
        }
    }
}

fn db(e: sqlx::Error) -> StoreError {
    StoreError::backend(e)
}

fn json_text(value: &impl serde::Serialize) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Columns of pending history rows, as parallel arrays for one `UNNEST` insert.
#[derive(Default)]
struct EventColumns {
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
    fn push_all(
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

    async fn insert(self, conn: &mut sqlx::PgConnection) -> StoreResult<()> {
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
    /// Per history row: its saga, the token it is fenced on, and its distance from the saga's
    /// new last `seq` (the last event of a commit is 0).
    event_saga_ids: Vec<Uuid>,
    event_tokens: Vec<i64>,
    event_from_end: Vec<i64>,
    events: EventColumns,
}

impl CommitColumns {
    fn build(commits: &[SagaCommit]) -> StoreResult<Self> {
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
            event_saga_ids: Vec::new(),
            event_tokens: Vec::new(),
            event_from_end: Vec::new(),
            events: EventColumns::default(),
        };
        for commit in commits {
            let terminal = commit.state.status.is_terminal();
            let count = commit.events.len() as i64;
            batch.ids.push(commit.id);
            batch.tokens.push(commit.fencing_token);
            batch.statuses.push(commit.state.status.as_str().to_string());
            batch.states.push(json_text(&commit.state)?);
            batch.event_counts.push(count);
            batch.releases.push(commit.release_lease || terminal);
            batch.run_ats.push(commit.run_at_ms);
            batch.terminals.push(terminal);
            batch.nows.push(commit.now_ms);
            batch.wake_seen.push(commit.wake_seq_seen);
            batch.cancel_seen.push(commit.state.cancel_requested_at_ms.is_some());
            if let Some(change) = &commit.tenant_change {
                batch.tenants.push(commit, change)?;
            }
            for offset in 0..count {
                batch.event_saga_ids.push(commit.id);
                batch.event_tokens.push(commit.fencing_token);
                batch.event_from_end.push(count - 1 - offset);
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

impl PostgresStore {
    /// Connects to a `postgres://` URL and starts listening for work notifications.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(url).map_err(db)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(db)?;
        let work: WorkSignal = Arc::new(tokio::sync::Notify::new());
        let listener = tokio::spawn(listen(pool.clone(), work.clone()));
        let announce = Announcer::new();
        let announcer = tokio::spawn(announce.clone().run(pool.clone()));
        let (creator, create_writer) = Creator::start(pool.clone());
        Ok(PostgresStore { pool, work, announce, creator, listener, announcer, create_writer })
    }

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
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        if keys.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
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

    /// Bumps `wake_seq` and makes the saga due now unless a driver holds it (that driver sees the
    /// bump when it next parks). Only sagas that are not terminal; returns whether one was woken.
    async fn wake(conn: &mut sqlx::PgConnection, id: Uuid, now_ms: i64) -> StoreResult<bool> {
        let woken = sqlx::query(
            "UPDATE sagas SET wake_seq = wake_seq + 1, updated_at = $2, \
               run_at = CASE WHEN lease_owner IS NULL THEN LEAST(run_at, $2) ELSE run_at END \
             WHERE id = $1 AND status IN ('PENDING', 'EXECUTING', 'COMPENSATING')",
        )
        .bind(id)
        .bind(now_ms)
        .execute(conn)
        .await
        .map_err(db)?;
        Ok(woken.rows_affected() == 1)
    }

    /// The underlying pool (for tests and tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn saga_by_key(&self, key: &str) -> StoreResult<Option<(SagaRecord, Option<String>)>> {
        let row =
            sqlx::query(&format!("SELECT {SAGA_COLUMNS}, s.request_hash FROM sagas s WHERE s.idempotency_key = $1"))
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        match row {
            None => Ok(None),
            Some(row) => {
                let hash: Option<String> = row.try_get("request_hash").map_err(db)?;
                Ok(Some((rows::saga(&row)?, hash)))
            }
        }
    }
}

/// Relays `NOTIFY sagaplane_work` to the local work signal; reconnects on failure.
async fn listen(pool: PgPool, work: WorkSignal) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; polling continues");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(WORK_CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; polling continues");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        loop {
            match listener.recv().await {
                Ok(_) => work.notify_one(),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                    // Work may have been announced while disconnected.
                    work.notify_one();
                    break;
                }
            }
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self, now_ms: i64) -> StoreResult<SchemaStatus> {
        migrate::run(&self.pool, now_ms).await
    }

    async fn schema_status(&self) -> StoreResult<SchemaStatus> {
        migrate::status(&self.pool).await
    }

    async fn definition_put(&self, name: &str, document: &Value, now_ms: i64) -> StoreResult<DefinitionPut> {
        // Two writers racing on the same name collide on the primary key; the loser re-reads.
        for _ in 0..5 {
            let latest = self.definition_get(name, None).await;
            let next_version = match latest {
                Ok(record) if &record.document == document => return Ok(DefinitionPut { record, created: false }),
                Ok(record) => record.version + 1,
                Err(StoreError::NotFound) => 1,
                Err(e) => return Err(e),
            };
            let inserted =
                sqlx::query("INSERT INTO definitions (name, version, document, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(name)
                    .bind(next_version)
                    .bind(Json(document))
                    .bind(now_ms)
                    .execute(&self.pool)
                    .await;
            match inserted {
                Ok(_) => {
                    return Ok(DefinitionPut {
                        record: DefinitionRecord {
                            name: name.into(),
                            version: next_version,
                            document: document.clone(),
                            created_at_ms: now_ms,
                        },
                        created: true,
                    })
                }
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => continue,
                Err(e) => return Err(db(e)),
            }
        }
        Err(StoreError::Conflict(format!("definition {name} is being changed concurrently")))
    }

    async fn definition_get(&self, name: &str, version: Option<i32>) -> StoreResult<DefinitionRecord> {
        let row = sqlx::query(
            "SELECT name, version, document, created_at FROM definitions \
             WHERE name = $1 AND ($2::int IS NULL OR version = $2) ORDER BY version DESC LIMIT 1",
        )
        .bind(name)
        .bind(version)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .ok_or(StoreError::NotFound)?;
        definition_row(&row)
    }

    async fn definition_list(&self) -> StoreResult<Vec<DefinitionRecord>> {
        let rows = sqlx::query(
            "SELECT DISTINCT ON (name) name, version, document, created_at FROM definitions ORDER BY name, version DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(definition_row).collect()
    }

    async fn saga_create(&self, params: SagaCreate) -> StoreResult<SagaCreated> {
        let (key, hash, require_latest) =
            (params.idempotency_key.clone(), params.request_hash.clone(), params.require_latest);
        let leased = params.lease.is_some();
        let row = self.creator.create(params).await?;
        if let Some(row) = row {
            let record = rows::saga(&row)?;
            if !leased {
                self.work.notify_one();
                self.announce.request();
            }
            return Ok(SagaCreated::Created(record));
        }
        if let Some(key) = key.as_deref() {
            match self.saga_by_key(key).await? {
                Some((existing, stored)) if stored == hash => return Ok(SagaCreated::Replayed(existing)),
                Some(_) => return Ok(SagaCreated::KeyConflict),
                None => {}
            }
        }
        if require_latest {
            return Ok(SagaCreated::VersionMoved);
        }
        Err(StoreError::Conflict("the saga was neither created nor found by its key".into()))
    }

    async fn saga_get(&self, id: Uuid) -> StoreResult<SagaRecord> {
        let row = sqlx::query(&format!("SELECT {SAGA_COLUMNS} FROM sagas s WHERE s.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        rows::saga(&row)
    }

    async fn saga_list(&self, filter: &SagaFilter) -> StoreResult<Vec<SagaRecord>> {
        let mut query: QueryBuilder<'_, Postgres> =
            QueryBuilder::new(format!("SELECT {SAGA_COLUMNS} FROM sagas s WHERE TRUE"));
        if let Some(status) = filter.status {
            query.push(" AND s.status = ").push_bind(status.as_str());
        }
        if let Some(definition) = &filter.definition {
            query.push(" AND s.definition = ").push_bind(definition.clone());
        }
        if let Some(tenant) = &filter.tenant_id {
            query.push(" AND s.tenant_id = ").push_bind(tenant.clone());
        }
        if let Some(key) = &filter.concurrency_key {
            query.push(" AND s.concurrency_key = ").push_bind(key.clone());
        }
        if let Some(before) = filter.before_id {
            query.push(" AND s.id < ").push_bind(before);
        }
        query.push(" ORDER BY s.id DESC LIMIT ").push_bind(i64::from(filter.limit));
        let rows = query.build().fetch_all(&self.pool).await.map_err(db)?;
        rows.iter().map(rows::saga).collect()
    }

    async fn saga_events(&self, id: Uuid, after_seq: i64, limit: u32) -> StoreResult<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT seq, kind, step, attempt, worker, data, at FROM saga_events \
             WHERE saga_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(rows::event).collect()
    }

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
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        for row in &rows {
            claimed.push(claimed_row(row)?);
        }
        Ok(claimed)
    }

    async fn saga_commit_batch(&self, commits: &[SagaCommit]) -> StoreResult<Vec<CommitOutcome>> {
        if commits.is_empty() {
            return Ok(Vec::new());
        }
        let batch = CommitColumns::build(commits)?;
        // One statement, so one round trip and one commit for the whole batch: the fenced update,
        // and the history rows of exactly the commits whose token still matched.
        let rows = sqlx::query(
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
               WHERE s.id = c.id AND s.fencing_token = c.token AND (s.cancel_requested_at IS NULL OR c.cancel_seen) \
               RETURNING s.id, s.fencing_token, s.event_seq), \
             e AS ( \
               INSERT INTO saga_events (saga_id, seq, tenant_id, kind, step, attempt, worker, data, at) \
               SELECT ev.saga_id, u.event_seq - ev.from_end, ev.tenant_id, ev.kind, ev.step, ev.attempt, ev.worker, ev.data::jsonb, ev.at \
               FROM UNNEST($10::uuid[], $11::bigint[], $12::bigint[], $13::text[], $14::text[], $15::text[], $16::int4[], $17::text[], $18::text[], $19::bigint[]) \
                    AS ev(saga_id, token, from_end, tenant_id, kind, step, attempt, worker, data, at) \
               JOIN u ON u.id = ev.saga_id AND u.fencing_token = ev.token), \
             t AS ( \
               UPDATE tenants tn SET status = tc.to_status, error = tc.error::jsonb, updated_at = tc.now, \
                 storage = COALESCE(tc.storage::jsonb, tn.storage), \
                 migrations = COALESCE(tc.migrations::jsonb, tn.migrations) \
               FROM UNNEST($22::uuid[], $23::bigint[], $24::text[], $25::text[], $26::text[], $27::text[], $28::text[], $29::text[], $30::bigint[]) \
                    AS tc(saga_id, token, tenant_id, to_status, allowed, error, storage, migrations, now) \
               JOIN u ON u.id = tc.saga_id AND u.fencing_token = tc.token \
               WHERE tn.id = tc.tenant_id AND tn.status = ANY(string_to_array(tc.allowed, ','))) \
             SELECT id, fencing_token FROM u",
        )
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
        .bind(batch.cancel_seen)
        .bind(batch.tenants.saga_ids)
        .bind(batch.tenants.tokens)
        .bind(batch.tenants.tenant_ids)
        .bind(batch.tenants.to)
        .bind(batch.tenants.from)
        .bind(batch.tenants.errors)
        .bind(batch.tenants.storages)
        .bind(batch.tenants.migrations)
        .bind(batch.tenants.nows)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut committed = std::collections::HashSet::with_capacity(rows.len());
        for row in &rows {
            let id: Uuid = row.try_get(0).map_err(db)?;
            let token: i64 = row.try_get(1).map_err(db)?;
            committed.insert((id, token));
        }
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
            .fetch_all(&self.pool)
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

    async fn lease_renew(
        &self,
        worker_id: &str,
        leases: &[LeaseRef],
        now_ms: i64,
        lease_ttl_ms: i64,
    ) -> StoreResult<Vec<Uuid>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = leases.iter().map(|l| l.id).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| l.fencing_token).collect();
        let expires = now_ms + lease_ttl_ms;
        let renewed: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE sagas s SET lease_expires_at = $1, run_at = $1 \
             FROM UNNEST($2::uuid[], $3::bigint[]) AS u(id, token) \
             WHERE s.id = u.id AND s.fencing_token = u.token AND s.lease_owner = $4 RETURNING s.id",
        )
        .bind(expires)
        .bind(ids)
        .bind(tokens)
        .bind(worker_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let renewed: std::collections::HashSet<Uuid> = renewed.into_iter().collect();
        Ok(leases.iter().map(|l| l.id).filter(|id| !renewed.contains(id)).collect())
    }

    async fn lease_release(&self, worker_id: &str, leases: &[LeaseRef], now_ms: i64) -> StoreResult<()> {
        if leases.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = leases.iter().map(|l| l.id).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| l.fencing_token).collect();
        sqlx::query(
            "UPDATE sagas s SET lease_owner = NULL, lease_expires_at = NULL, run_at = $1 \
             FROM UNNEST($2::uuid[], $3::bigint[]) AS u(id, token) \
             WHERE s.id = u.id AND s.fencing_token = u.token AND s.lease_owner = $4",
        )
        .bind(now_ms)
        .bind(ids)
        .bind(tokens)
        .bind(worker_id)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        self.announce.request();
        Ok(())
    }

    async fn saga_operator_update(&self, update: SagaOperatorUpdate) -> StoreResult<SagaRecord> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let row = sqlx::query(&format!(
            "UPDATE sagas s SET status = $1, state = $2::json, updated_at = $3, run_at = $3, completed_at = NULL, \
               lease_owner = NULL, lease_expires_at = NULL, event_seq = s.event_seq + $4 \
             WHERE s.id = $5 AND s.status = $6 AND s.lease_owner IS NULL \
             RETURNING {SAGA_COLUMNS}, s.event_seq"
        ))
        .bind(update.state.status.as_str())
        .bind(json_text(&update.state)?)
        .bind(update.now_ms)
        .bind(update.events.len() as i64)
        .bind(update.id)
        .bind(update.expected_status.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            return Err(StoreError::Conflict(format!("saga is no longer {}", update.expected_status.as_str())));
        };
        if let Some(change) = &update.tenant_change {
            let from: Vec<&str> = change.from.iter().map(|s| s.as_str()).collect();
            let changed = sqlx::query(
                "UPDATE tenants t SET status = $2, error = $3, updated_at = $4, storage = COALESCE($5, t.storage), \
                   migrations = COALESCE($6, t.migrations) \
                 WHERE t.id = $1 AND t.status = ANY($7)",
            )
            .bind(&change.tenant_id)
            .bind(change.to.as_str())
            .bind(change.error.as_ref().map(Json))
            .bind(update.now_ms)
            .bind(change.storage.as_ref().map(Json))
            .bind(change.migrations.as_ref().map(Json))
            .bind(&from)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            if changed.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!(
                    "tenant {:?} is not in a status that may become {}",
                    change.tenant_id,
                    change.to.as_str()
                )));
            }
        }
        let last_seq: i64 = row.try_get("event_seq").map_err(db)?;
        let mut events = EventColumns::default();
        events.push_all(
            update.id,
            update.tenant_id.as_deref(),
            last_seq - update.events.len() as i64 + 1,
            None,
            &update.events,
        )?;
        events.insert(&mut tx).await?;
        let record = rows::saga(&row)?;
        tx.commit().await.map_err(db)?;
        if !record.status.is_terminal() {
            self.work.notify_one();
            self.announce.request();
        }
        Ok(record)
    }

    async fn saga_cancel_request(&self, id: Uuid, now_ms: i64) -> StoreResult<SagaRecord> {
        let row = sqlx::query(&format!(
            "UPDATE sagas s SET cancel_requested_at = COALESCE(s.cancel_requested_at, $2), \
               wake_seq = s.wake_seq + 1, updated_at = $2, \
               run_at = CASE WHEN s.lease_owner IS NULL THEN LEAST(s.run_at, $2) ELSE s.run_at END \
             WHERE s.id = $1 AND s.status IN ('PENDING', 'EXECUTING', 'COMPENSATING') \
             RETURNING {SAGA_COLUMNS}"
        ))
        .bind(id)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        match row {
            Some(row) => {
                self.work.notify_one();
                self.announce.request();
                rows::saga(&row)
            }
            None => {
                let existing = self.saga_get(id).await?;
                Err(StoreError::Conflict(format!("saga is {}", existing.status.as_str())))
            }
        }
    }

    async fn signal_send(&self, id: Uuid, name: &str, payload: &Value, now_ms: i64) -> StoreResult<SignalRecord> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // Wake first: it locks the saga row, so a terminal saga gets nothing buffered.
        if !Self::wake(&mut tx, id, now_ms).await? {
            drop(tx);
            let existing = self.saga_get(id).await?;
            return Err(StoreError::Conflict(format!("saga is {}", existing.status.as_str())));
        }
        let signal_id: i64 = sqlx::query_scalar(
            "INSERT INTO saga_signals (saga_id, tenant_id, name, payload, received_at) \
             SELECT id, tenant_id, $2, $3, $4 FROM sagas WHERE id = $1 RETURNING id",
        )
        .bind(id)
        .bind(name)
        .bind(Json(payload))
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        self.work.notify_one();
        self.announce.request();
        Ok(SignalRecord { id: signal_id, name: name.to_string(), payload: payload.clone(), received_at_ms: now_ms })
    }

    async fn signal_find(&self, id: Uuid, name: &str, consumed: &[i64]) -> StoreResult<Option<SignalRecord>> {
        let row = sqlx::query(
            "SELECT id, name, payload, received_at FROM saga_signals \
             WHERE saga_id = $1 AND name = $2 AND NOT (id = ANY($3)) ORDER BY id LIMIT 1",
        )
        .bind(id)
        .bind(name)
        .bind(consumed)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.map(|row| {
            let payload: Json<Value> = row.try_get("payload").map_err(db)?;
            Ok(SignalRecord {
                id: row.try_get("id").map_err(db)?,
                name: row.try_get("name").map_err(db)?,
                payload: payload.0,
                received_at_ms: row.try_get("received_at").map_err(db)?,
            })
        })
        .transpose()
    }

    async fn callback_register(&self, params: CallbackRegister) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO saga_callbacks (token_hash, saga_id, tenant_id, step, attempt, heartbeat_timeout_ms, \
                                         deadline_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7 + $6, $7)",
        )
        .bind(&params.token_hash)
        .bind(params.saga_id)
        .bind(&params.tenant_id)
        .bind(&params.step)
        .bind(params.attempt as i32)
        .bind(params.heartbeat_timeout_ms)
        .bind(params.now_ms)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn callback_complete(&self, token_hash: &str, result: &Value, now_ms: i64) -> StoreResult<Uuid> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let saga_id: Option<Uuid> = sqlx::query_scalar(
            "UPDATE saga_callbacks SET result = $2, completed_at = $3 \
             WHERE token_hash = $1 AND completed_at IS NULL RETURNING saga_id",
        )
        .bind(token_hash)
        .bind(Json(result))
        .bind(now_ms)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let saga_id = saga_id.ok_or(StoreError::NotFound)?;
        Self::wake(&mut tx, saga_id, now_ms).await?;
        tx.commit().await.map_err(db)?;
        self.work.notify_one();
        self.announce.request();
        Ok(saga_id)
    }

    async fn callback_heartbeat(&self, token_hash: &str, now_ms: i64) -> StoreResult<()> {
        let updated = sqlx::query(
            "UPDATE saga_callbacks SET deadline_at = $2 + heartbeat_timeout_ms \
             WHERE token_hash = $1 AND completed_at IS NULL",
        )
        .bind(token_hash)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn callback_close(&self, id: Uuid, step: &str, attempt: u32, now_ms: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE saga_callbacks SET completed_at = $4 \
             WHERE saga_id = $1 AND step = $2 AND attempt = $3 AND completed_at IS NULL",
        )
        .bind(id)
        .bind(step)
        .bind(attempt as i32)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn callback_get(&self, id: Uuid, step: &str, attempt: u32) -> StoreResult<Option<CallbackRecord>> {
        let row = sqlx::query(
            "SELECT result, deadline_at FROM saga_callbacks WHERE saga_id = $1 AND step = $2 AND attempt = $3 \
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(id)
        .bind(step)
        .bind(attempt as i32)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.map(|row| {
            let result: Option<Json<Value>> = row.try_get("result").map_err(db)?;
            Ok(CallbackRecord { result: result.map(|r| r.0), deadline_at_ms: row.try_get("deadline_at").map_err(db)? })
        })
        .transpose()
    }

    async fn tenant_create(&self, tenant: TenantRecord, saga: SagaCreate) -> StoreResult<(TenantRecord, SagaRecord)> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let row = sqlx::query(&format!(
            "INSERT INTO tenants AS t (id, name, tier, storage_mode, sla_tier, status, domains, contacts, metadata, \
                                       storage, migrations, saga_id, error, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14) \
             ON CONFLICT (id) DO NOTHING RETURNING {TENANT_COLUMNS}"
        ))
        .bind(&tenant.id)
        .bind(&tenant.name)
        .bind(tenant.tier.as_str())
        .bind(tenant.storage_mode.as_str())
        .bind(tenant.sla_tier.as_str())
        .bind(tenant.status.as_str())
        .bind(Json(&tenant.domains))
        .bind(Json(&tenant.contacts))
        .bind(Json(&tenant.metadata))
        .bind(Json(&tenant.storage))
        .bind(Json(&tenant.migrations))
        .bind(saga.id)
        .bind(tenant.error.as_ref().map(Json))
        .bind(tenant.created_at_ms)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            return Err(StoreError::Conflict(format!("tenant {:?} exists", tenant.id)));
        };
        let record = rows::tenant(&row)?;
        let saga_row = insert_saga(&mut *tx, &saga)
            .await?
            .ok_or_else(|| StoreError::Conflict("the provisioning saga's idempotency key is taken".into()))?;
        let saga_record = rows::saga(&saga_row)?;
        tx.commit().await.map_err(db)?;
        self.work.notify_one();
        self.announce.request();
        Ok((record, saga_record))
    }

    async fn tenant_get(&self, id: &str) -> StoreResult<TenantRecord> {
        let row = sqlx::query(&format!("SELECT {TENANT_COLUMNS} FROM tenants t WHERE t.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        rows::tenant(&row)
    }

    async fn tenant_list(&self, filter: &TenantFilter) -> StoreResult<Vec<TenantRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants t \
             WHERE ($1::text IS NULL OR t.status = $1) AND ($2::text IS NULL OR t.tier = $2) \
               AND ($3::text IS NULL OR t.id > $3) \
             ORDER BY t.id LIMIT $4"
        ))
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.tier.map(|t| t.as_str()))
        .bind(&filter.after_id)
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(rows::tenant).collect()
    }

    async fn tenant_transition(&self, transition: TenantTransition) -> StoreResult<(TenantRecord, Option<SagaRecord>)> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let from: Vec<&str> = transition.from.iter().map(|s| s.as_str()).collect();
        let row = sqlx::query(&format!(
            "UPDATE tenants t SET status = $2, error = $3, updated_at = $4, saga_id = COALESCE($5, t.saga_id) \
             WHERE t.id = $1 AND t.status = ANY($6) RETURNING {TENANT_COLUMNS}"
        ))
        .bind(&transition.id)
        .bind(transition.to.as_str())
        .bind(transition.error.as_ref().map(Json))
        .bind(transition.now_ms)
        .bind(transition.saga.as_ref().map(|s| s.id))
        .bind(&from)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            drop(tx);
            let existing = self.tenant_get(&transition.id).await?;
            return Err(StoreError::Conflict(format!(
                "tenant is {}; it cannot become {}",
                existing.status.as_str(),
                transition.to.as_str()
            )));
        };
        let record = rows::tenant(&row)?;
        let saga = match &transition.saga {
            Some(saga) => {
                let saga_row = insert_saga(&mut *tx, saga)
                    .await?
                    .ok_or_else(|| StoreError::Conflict("the saga's idempotency key is taken".into()))?;
                Some(rows::saga(&saga_row)?)
            }
            None => None,
        };
        tx.commit().await.map_err(db)?;
        if saga.is_some() {
            self.work.notify_one();
            self.announce.request();
        }
        Ok((record, saga))
    }

    async fn tenant_patch(&self, id: &str, patch: &TenantPatch, now_ms: i64) -> StoreResult<TenantRecord> {
        let row = sqlx::query(&format!(
            "UPDATE tenants t SET name = COALESCE($2, t.name), sla_tier = COALESCE($3, t.sla_tier), \
               domains = COALESCE($4, t.domains), contacts = COALESCE($5, t.contacts), \
               metadata = COALESCE($6, t.metadata), updated_at = $7 \
             WHERE t.id = $1 RETURNING {TENANT_COLUMNS}"
        ))
        .bind(id)
        .bind(&patch.name)
        .bind(patch.sla_tier.map(|s| s.as_str()))
        .bind(patch.domains.as_ref().map(Json))
        .bind(patch.contacts.as_ref().map(Json))
        .bind(patch.metadata.as_ref().map(Json))
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .ok_or(StoreError::NotFound)?;
        rows::tenant(&row)
    }

    async fn tenant_key_create(&self, key: &TenantKeyRecord, token_hash: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO tenant_api_keys (id, tenant_id, name, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(key.id)
        .bind(&key.tenant_id)
        .bind(&key.name)
        .bind(token_hash)
        .bind(key.created_at_ms)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn tenant_key_by_hash(&self, token_hash: &str) -> StoreResult<Option<TenantKeyRecord>> {
        let row = sqlx::query(
            "SELECT id, tenant_id, name, created_at, revoked_at FROM tenant_api_keys \
             WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.map(|row| {
            Ok(TenantKeyRecord {
                id: row.try_get("id").map_err(db)?,
                tenant_id: row.try_get("tenant_id").map_err(db)?,
                name: row.try_get("name").map_err(db)?,
                created_at_ms: row.try_get("created_at").map_err(db)?,
                revoked_at_ms: row.try_get("revoked_at").map_err(db)?,
            })
        })
        .transpose()
    }

    async fn tenant_key_revoke(&self, tenant_id: &str, key_id: Uuid, now_ms: i64) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE tenant_api_keys SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
        )
        .bind(tenant_id)
        .bind(key_id)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn tenant_keys_revoke_all(&self, tenant_id: &str, now_ms: i64) -> StoreResult<u64> {
        let done =
            sqlx::query("UPDATE tenant_api_keys SET revoked_at = $2 WHERE tenant_id = $1 AND revoked_at IS NULL")
                .bind(tenant_id)
                .bind(now_ms)
                .execute(&self.pool)
                .await
                .map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn tenant_user_create(&self, user: &TenantUserRecord) -> StoreResult<()> {
        let done = sqlx::query(
            "INSERT INTO tenant_users (id, tenant_id, email, name, role, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id, email) DO NOTHING",
        )
        .bind(user.id)
        .bind(&user.tenant_id)
        .bind(&user.email)
        .bind(&user.name)
        .bind(&user.role)
        .bind(user.created_at_ms)
        .bind(user.updated_at_ms)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("the tenant has a user with email {:?}", user.email)));
        }
        Ok(())
    }

    async fn tenant_user_list(&self, tenant_id: &str) -> StoreResult<Vec<TenantUserRecord>> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, email, name, role, created_at, updated_at FROM tenant_users \
             WHERE tenant_id = $1 ORDER BY email LIMIT 10000",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|row| {
                Ok(TenantUserRecord {
                    id: row.try_get("id").map_err(db)?,
                    tenant_id: row.try_get("tenant_id").map_err(db)?,
                    email: row.try_get("email").map_err(db)?,
                    name: row.try_get("name").map_err(db)?,
                    role: row.try_get("role").map_err(db)?,
                    created_at_ms: row.try_get("created_at").map_err(db)?,
                    updated_at_ms: row.try_get("updated_at").map_err(db)?,
                })
            })
            .collect()
    }

    async fn tenant_user_update(&self, user: &TenantUserRecord) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE tenant_users SET email = $3, name = $4, role = $5, updated_at = $6 WHERE tenant_id = $1 AND id = $2",
        )
        .bind(&user.tenant_id)
        .bind(user.id)
        .bind(&user.email)
        .bind(&user.name)
        .bind(&user.role)
        .bind(user.updated_at_ms)
        .execute(&self.pool)
        .await;
        match done {
            Ok(done) if done.rows_affected() == 0 => Err(StoreError::NotFound),
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
                Err(StoreError::Conflict(format!("the tenant has a user with email {:?}", user.email)))
            }
            Err(e) => Err(db(e)),
        }
    }

    async fn tenant_user_delete(&self, tenant_id: &str, user_id: Uuid) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM tenant_users WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(user_id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn webhook_claim(&self, source: &str, webhook_id: &str, now_ms: i64) -> StoreResult<WebhookClaim> {
        let inserted = sqlx::query(
            "INSERT INTO webhook_receipts (source, webhook_id, received_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(source)
        .bind(webhook_id)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        if inserted.rows_affected() == 1 {
            return Ok(WebhookClaim::New);
        }
        let response: Option<Option<Json<Value>>> =
            sqlx::query_scalar("SELECT response FROM webhook_receipts WHERE source = $1 AND webhook_id = $2")
                .bind(source)
                .bind(webhook_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        Ok(WebhookClaim::Seen(response.flatten().map(|r| r.0)))
    }

    async fn webhook_complete(&self, source: &str, webhook_id: &str, response: &Value) -> StoreResult<()> {
        sqlx::query("UPDATE webhook_receipts SET response = $3 WHERE source = $1 AND webhook_id = $2")
            .bind(source)
            .bind(webhook_id)
            .bind(Json(response))
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn webhook_release(&self, source: &str, webhook_id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM webhook_receipts WHERE source = $1 AND webhook_id = $2 AND response IS NULL")
            .bind(source)
            .bind(webhook_id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    fn work_signal(&self) -> WorkSignal {
        self.work.clone()
    }
}

/// The saga, its first history row and its concurrency key, in one statement; None when the
/// idempotency key exists or `require_latest` failed.
async fn insert_saga<'e>(
    executor: impl sqlx::Executor<'e, Database = Postgres>,
    params: &SagaCreate,
) -> StoreResult<Option<sqlx::postgres::PgRow>> {
    Ok(crate::creates::insert(executor, &[params]).await?.remove(&params.id))
}

fn claimed_row(row: &sqlx::postgres::PgRow) -> StoreResult<Claimed> {
    Ok(Claimed { record: rows::saga(row)?, previous_owner: row.try_get("previous_owner").map_err(db)? })
}

fn definition_row(row: &sqlx::postgres::PgRow) -> StoreResult<DefinitionRecord> {
    let document: Json<Value> = row.try_get("document").map_err(db)?;
    Ok(DefinitionRecord {
        name: row.try_get("name").map_err(db)?,
        version: row.try_get("version").map_err(db)?,
        document: document.0,
        created_at_ms: row.try_get("created_at").map_err(db)?,
    })
}
