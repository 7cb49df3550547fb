//! The SQLite store: queries live next to the method that runs them.

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
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

use crate::create::CreateBatcher;
use crate::migrate;
use crate::rows::{self, SAGA_COLUMNS, TENANT_COLUMNS};

const READERS_MAX: u32 = 4;

/// SQLite-backed store.
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    work: WorkSignal,
    creates: CreateBatcher,
    create_task: tokio::task::JoinHandle<()>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.create_task.abort();
    }
}

pub(crate) fn db(e: sqlx::Error) -> StoreError {
    StoreError::backend(e)
}

pub(crate) fn json_text(value: &impl serde::Serialize) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl SqliteStore {
    /// Opens (creating if missing) the database at a `sqlite://` URL.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(db)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await.map_err(db)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS_MAX)
            .connect_with(options.read_only(true))
            .await
            .map_err(db)?;
        let work: WorkSignal = Arc::new(tokio::sync::Notify::new());
        let (creates, create_task) = CreateBatcher::start(writer.clone(), work.clone());
        Ok(SqliteStore { writer, reader, work, creates, create_task })
    }

    /// See the PostgreSQL store's `wake`.
    async fn wake(conn: &mut sqlx::SqliteConnection, id: Uuid, now_ms: i64) -> StoreResult<bool> {
        let woken = sqlx::query(
            "UPDATE sagas SET wake_seq = wake_seq + 1, updated_at = ?1, \
               run_at = CASE WHEN lease_owner IS NULL THEN MIN(run_at, ?1) ELSE run_at END \
             WHERE id = ?2 AND status IN ('PENDING', 'EXECUTING', 'COMPENSATING')",
        )
        .bind(now_ms)
        .bind(id.to_string())
        .execute(conn)
        .await
        .map_err(db)?;
        Ok(woken.rows_affected() == 1)
    }

    /// Writes `change` if the tenant is in one of its `from` statuses; returns the rows changed.
    async fn tenant_change_apply(
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

    pub(crate) async fn insert_events(
        conn: &mut sqlx::SqliteConnection,
        saga_id: &str,
        tenant_id: Option<&str>,
        first_seq: i64,
        worker: Option<&str>,
        events: &[HistoryEvent],
    ) -> StoreResult<()> {
        for (offset, event) in events.iter().enumerate() {
            sqlx::query(
                "INSERT INTO saga_events (saga_id, seq, tenant_id, kind, step, attempt, worker, data, at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(saga_id)
            .bind(first_seq + offset as i64)
            .bind(tenant_id)
            .bind(&event.kind)
            .bind(&event.step)
            .bind(event.attempt.map(i64::from))
            .bind(worker)
            .bind(json_text(&event.data)?)
            .bind(event.at_ms)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        }
        Ok(())
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self, now_ms: i64) -> StoreResult<SchemaStatus> {
        migrate::run(&self.writer, now_ms).await
    }

    async fn schema_status(&self) -> StoreResult<SchemaStatus> {
        migrate::status(&self.reader).await
    }

    async fn definition_put(&self, name: &str, document: &Value, now_ms: i64) -> StoreResult<DefinitionPut> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        let latest = sqlx::query(
            "SELECT version, document, created_at FROM definitions WHERE name = ? ORDER BY version DESC LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let mut next_version = 1;
        if let Some(row) = latest {
            let version: i32 = row.try_get("version").map_err(db)?;
            let text: String = row.try_get("document").map_err(db)?;
            let existing: Value = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if &existing == document {
                let created_at_ms = row.try_get("created_at").map_err(db)?;
                return Ok(DefinitionPut {
                    record: DefinitionRecord { name: name.into(), version, document: existing, created_at_ms },
                    created: false,
                });
            }
            next_version = version + 1;
        }
        sqlx::query("INSERT INTO definitions (name, version, document, created_at) VALUES (?, ?, ?, ?)")
            .bind(name)
            .bind(next_version)
            .bind(json_text(document)?)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(DefinitionPut {
            record: DefinitionRecord {
                name: name.into(),
                version: next_version,
                document: document.clone(),
                created_at_ms: now_ms,
            },
            created: true,
        })
    }

    async fn definition_get(&self, name: &str, version: Option<i32>) -> StoreResult<DefinitionRecord> {
        let row = match version {
            Some(v) => sqlx::query("SELECT name, version, document, created_at FROM definitions WHERE name = ? AND version = ?")
                .bind(name)
                .bind(v)
                .fetch_optional(&self.reader)
                .await,
            None => sqlx::query("SELECT name, version, document, created_at FROM definitions WHERE name = ? ORDER BY version DESC LIMIT 1")
                .bind(name)
                .fetch_optional(&self.reader)
                .await,
        }
        .map_err(db)?
        .ok_or(StoreError::NotFound)?;
        definition_row(&row)
    }

    async fn definition_list(&self) -> StoreResult<Vec<DefinitionRecord>> {
        let rows = sqlx::query(
            "SELECT d.name, d.version, d.document, d.created_at FROM definitions d \
             WHERE d.version = (SELECT MAX(version) FROM definitions x WHERE x.name = d.name) ORDER BY d.name",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        rows.iter().map(definition_row).collect()
    }

    async fn saga_create(&self, params: SagaCreate) -> StoreResult<SagaCreated> {
        self.creates.create(params).await
    }

    async fn saga_get(&self, id: Uuid) -> StoreResult<SagaRecord> {
        let row = sqlx::query(&format!("SELECT {SAGA_COLUMNS} FROM sagas WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        rows::saga(&row)
    }

    async fn saga_list(&self, filter: &SagaFilter) -> StoreResult<Vec<SagaRecord>> {
        let mut sql = format!("SELECT {SAGA_COLUMNS} FROM sagas WHERE 1 = 1");
        if filter.status.is_some() {
            sql.push_str(" AND status = ?");
        }
        if filter.definition.is_some() {
            sql.push_str(" AND definition = ?");
        }
        if filter.tenant_id.is_some() {
            sql.push_str(" AND tenant_id = ?");
        }
        if filter.concurrency_key.is_some() {
            sql.push_str(" AND concurrency_key = ?");
        }
        if filter.before_id.is_some() {
            sql.push_str(" AND id < ?");
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        let mut query = sqlx::query(&sql);
        if let Some(status) = filter.status {
            query = query.bind(status.as_str());
        }
        if let Some(definition) = &filter.definition {
            query = query.bind(definition);
        }
        if let Some(tenant) = &filter.tenant_id {
            query = query.bind(tenant);
        }
        if let Some(key) = &filter.concurrency_key {
            query = query.bind(key);
        }
        if let Some(before) = filter.before_id {
            query = query.bind(before.to_string());
        }
        let rows = query.bind(i64::from(filter.limit)).fetch_all(&self.reader).await.map_err(db)?;
        rows.iter().map(rows::saga).collect()
    }

    async fn saga_events(&self, id: Uuid, after_seq: i64, limit: u32) -> StoreResult<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT seq, kind, step, attempt, worker, data, at FROM saga_events WHERE saga_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(id.to_string())
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        rows.iter().map(rows::event).collect()
    }

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
        let mut outcomes = Vec::with_capacity(commits.len());
        let mut released = false;
        let mut tx = self.writer.begin().await.map_err(db)?;
        for commit in commits {
            let terminal = commit.state.status.is_terminal();
            let release = commit.release_lease || terminal;
            released |= commit.release_lease && !terminal;
            let id = commit.id.to_string();
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
            .bind(commit.events.len() as i64)
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
            let first_seq = last_seq - commit.events.len() as i64 + 1;
            if let Some(change) = &commit.tenant_change {
                Self::tenant_change_apply(&mut tx, change, commit.now_ms).await?;
            }
            Self::insert_events(
                &mut tx,
                &id,
                commit.tenant_id.as_deref(),
                first_seq,
                Some(&commit.worker_id),
                &commit.events,
            )
            .await?;
            outcomes.push(CommitOutcome::Committed);
        }
        tx.commit().await.map_err(db)?;
        if released {
            self.work.notify_one();
        }
        Ok(outcomes)
    }

    async fn lease_renew(
        &self,
        worker_id: &str,
        leases: &[LeaseRef],
        now_ms: i64,
        lease_ttl_ms: i64,
    ) -> StoreResult<Vec<Uuid>> {
        let expires = now_ms + lease_ttl_ms;
        let mut lost = Vec::new();
        let mut tx = self.writer.begin().await.map_err(db)?;
        for lease in leases {
            let result = sqlx::query(
                "UPDATE sagas SET lease_expires_at = ?, run_at = ? WHERE id = ? AND fencing_token = ? AND lease_owner = ?",
            )
            .bind(expires)
            .bind(expires)
            .bind(lease.id.to_string())
            .bind(lease.fencing_token)
            .bind(worker_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            if result.rows_affected() == 0 {
                lost.push(lease.id);
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(lost)
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

    async fn saga_operator_update(&self, update: SagaOperatorUpdate) -> StoreResult<SagaRecord> {
        let id = update.id.to_string();
        let mut tx = self.writer.begin().await.map_err(db)?;
        let row = sqlx::query(&format!(
            "UPDATE sagas SET status = ?, state = ?, updated_at = ?, run_at = ?, completed_at = NULL, \
             lease_owner = NULL, lease_expires_at = NULL, event_seq = event_seq + ? \
             WHERE id = ? AND status = ? AND lease_owner IS NULL RETURNING {SAGA_COLUMNS}, event_seq"
        ))
        .bind(update.state.status.as_str())
        .bind(json_text(&update.state)?)
        .bind(update.now_ms)
        .bind(update.now_ms)
        .bind(update.events.len() as i64)
        .bind(&id)
        .bind(update.expected_status.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            return Err(StoreError::Conflict(format!("saga is no longer {}", update.expected_status.as_str())));
        };
        if let Some(change) = &update.tenant_change {
            if Self::tenant_change_apply(&mut tx, change, update.now_ms).await? == 0 {
                return Err(StoreError::Conflict(format!(
                    "tenant {:?} is not in a status that may become {}",
                    change.tenant_id,
                    change.to.as_str()
                )));
            }
        }
        let last_seq: i64 = row.try_get("event_seq").map_err(db)?;
        let first_seq = last_seq - update.events.len() as i64 + 1;
        Self::insert_events(&mut tx, &id, update.tenant_id.as_deref(), first_seq, None, &update.events).await?;
        let record = rows::saga(&row)?;
        tx.commit().await.map_err(db)?;
        if !record.status.is_terminal() {
            self.work.notify_one();
        }
        Ok(record)
    }

    async fn saga_cancel_request(&self, id: Uuid, now_ms: i64) -> StoreResult<SagaRecord> {
        let row = sqlx::query(&format!(
            "UPDATE sagas SET cancel_requested_at = COALESCE(cancel_requested_at, ?1), wake_seq = wake_seq + 1, \
               updated_at = ?1, run_at = CASE WHEN lease_owner IS NULL THEN MIN(run_at, ?1) ELSE run_at END \
             WHERE id = ?2 AND status IN ('PENDING', 'EXECUTING', 'COMPENSATING') RETURNING {SAGA_COLUMNS}"
        ))
        .bind(now_ms)
        .bind(id.to_string())
        .fetch_optional(&self.writer)
        .await
        .map_err(db)?;
        match row {
            Some(row) => {
                self.work.notify_one();
                rows::saga(&row)
            }
            None => {
                let existing = self.saga_get(id).await?;
                Err(StoreError::Conflict(format!("saga is {}", existing.status.as_str())))
            }
        }
    }

    async fn signal_send(&self, id: Uuid, name: &str, payload: &Value, now_ms: i64) -> StoreResult<SignalRecord> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        if !Self::wake(&mut tx, id, now_ms).await? {
            drop(tx);
            let existing = self.saga_get(id).await?;
            return Err(StoreError::Conflict(format!("saga is {}", existing.status.as_str())));
        }
        let signal_id: i64 = sqlx::query_scalar(
            "INSERT INTO saga_signals (saga_id, tenant_id, name, payload, received_at) \
             SELECT id, tenant_id, ?, ?, ? FROM sagas WHERE id = ? RETURNING id",
        )
        .bind(name)
        .bind(json_text(payload)?)
        .bind(now_ms)
        .bind(id.to_string())
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        self.work.notify_one();
        Ok(SignalRecord { id: signal_id, name: name.to_string(), payload: payload.clone(), received_at_ms: now_ms })
    }

    async fn signal_find(&self, id: Uuid, name: &str, consumed: &[i64]) -> StoreResult<Option<SignalRecord>> {
        let consumed = json_text(&consumed)?;
        let row = sqlx::query(
            "SELECT id, name, payload, received_at FROM saga_signals \
             WHERE saga_id = ? AND name = ? AND id NOT IN (SELECT value FROM json_each(?)) ORDER BY id LIMIT 1",
        )
        .bind(id.to_string())
        .bind(name)
        .bind(consumed)
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?;
        row.map(|row| {
            let payload: String = row.try_get("payload").map_err(db)?;
            Ok(SignalRecord {
                id: row.try_get("id").map_err(db)?,
                name: row.try_get("name").map_err(db)?,
                payload: serde_json::from_str(&payload).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                received_at_ms: row.try_get("received_at").map_err(db)?,
            })
        })
        .transpose()
    }

    async fn callback_register(&self, params: CallbackRegister) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO saga_callbacks (token_hash, saga_id, tenant_id, step, attempt, heartbeat_timeout_ms, \
                                         deadline_at, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7 + ?6, ?7)",
        )
        .bind(&params.token_hash)
        .bind(params.saga_id.to_string())
        .bind(&params.tenant_id)
        .bind(&params.step)
        .bind(i64::from(params.attempt))
        .bind(params.heartbeat_timeout_ms)
        .bind(params.now_ms)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn callback_complete(&self, token_hash: &str, result: &Value, now_ms: i64) -> StoreResult<Uuid> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        let saga_id: Option<String> = sqlx::query_scalar(
            "UPDATE saga_callbacks SET result = ?, completed_at = ? \
             WHERE token_hash = ? AND completed_at IS NULL RETURNING saga_id",
        )
        .bind(json_text(result)?)
        .bind(now_ms)
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let saga_id = saga_id.ok_or(StoreError::NotFound)?;
        let saga_id = Uuid::parse_str(&saga_id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Self::wake(&mut tx, saga_id, now_ms).await?;
        tx.commit().await.map_err(db)?;
        self.work.notify_one();
        Ok(saga_id)
    }

    async fn callback_heartbeat(&self, token_hash: &str, now_ms: i64) -> StoreResult<()> {
        let updated = sqlx::query(
            "UPDATE saga_callbacks SET deadline_at = ? + heartbeat_timeout_ms \
             WHERE token_hash = ? AND completed_at IS NULL",
        )
        .bind(now_ms)
        .bind(token_hash)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn callback_close(&self, id: Uuid, step: &str, attempt: u32, now_ms: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE saga_callbacks SET completed_at = ? \
             WHERE saga_id = ? AND step = ? AND attempt = ? AND completed_at IS NULL",
        )
        .bind(now_ms)
        .bind(id.to_string())
        .bind(step)
        .bind(i64::from(attempt))
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn callback_get(&self, id: Uuid, step: &str, attempt: u32) -> StoreResult<Option<CallbackRecord>> {
        let row = sqlx::query(
            "SELECT result, deadline_at FROM saga_callbacks WHERE saga_id = ? AND step = ? AND attempt = ? \
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(id.to_string())
        .bind(step)
        .bind(i64::from(attempt))
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?;
        row.map(|row| {
            let result: Option<String> = row.try_get("result").map_err(db)?;
            let result =
                result.map(|r| serde_json::from_str(&r)).transpose().map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok(CallbackRecord { result, deadline_at_ms: row.try_get("deadline_at").map_err(db)? })
        })
        .transpose()
    }

    async fn tenant_create(&self, tenant: TenantRecord, saga: SagaCreate) -> StoreResult<(TenantRecord, SagaRecord)> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        let row = sqlx::query(&format!(
            "INSERT INTO tenants (id, name, tier, storage_mode, sla_tier, status, domains, contacts, metadata, \
                                  storage, migrations, saga_id, error, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14) \
             ON CONFLICT (id) DO NOTHING RETURNING {TENANT_COLUMNS}"
        ))
        .bind(&tenant.id)
        .bind(&tenant.name)
        .bind(tenant.tier.as_str())
        .bind(tenant.storage_mode.as_str())
        .bind(tenant.sla_tier.as_str())
        .bind(tenant.status.as_str())
        .bind(json_text(&tenant.domains)?)
        .bind(json_text(&tenant.contacts)?)
        .bind(json_text(&tenant.metadata)?)
        .bind(json_text(&tenant.storage)?)
        .bind(json_text(&tenant.migrations)?)
        .bind(saga.id.to_string())
        .bind(tenant.error.as_ref().map(json_text).transpose()?)
        .bind(tenant.created_at_ms)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            return Err(StoreError::Conflict(format!("tenant {:?} exists", tenant.id)));
        };
        let record = rows::tenant(&row)?;
        let saga_record = match crate::create::create_one(&mut tx, &saga).await? {
            SagaCreated::Created(record) => record,
            _ => return Err(StoreError::Conflict("the provisioning saga's idempotency key is taken".into())),
        };
        tx.commit().await.map_err(db)?;
        self.work.notify_one();
        Ok((record, saga_record))
    }

    async fn tenant_get(&self, id: &str) -> StoreResult<TenantRecord> {
        let row = sqlx::query(&format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        rows::tenant(&row)
    }

    async fn tenant_list(&self, filter: &TenantFilter) -> StoreResult<Vec<TenantRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants \
             WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR tier = ?2) AND (?3 IS NULL OR id > ?3) \
             ORDER BY id LIMIT ?4"
        ))
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.tier.map(|t| t.as_str()))
        .bind(&filter.after_id)
        .bind(i64::from(filter.limit))
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        rows.iter().map(rows::tenant).collect()
    }

    async fn tenant_transition(&self, transition: TenantTransition) -> StoreResult<(TenantRecord, Option<SagaRecord>)> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        let from: Vec<&str> = transition.from.iter().map(|s| s.as_str()).collect();
        let row = sqlx::query(&format!(
            "UPDATE tenants SET status = ?2, error = ?3, updated_at = ?4, saga_id = COALESCE(?5, saga_id) \
             WHERE id = ?1 AND status IN (SELECT value FROM json_each(?6)) RETURNING {TENANT_COLUMNS}"
        ))
        .bind(&transition.id)
        .bind(transition.to.as_str())
        .bind(transition.error.as_ref().map(json_text).transpose()?)
        .bind(transition.now_ms)
        .bind(transition.saga.as_ref().map(|s| s.id.to_string()))
        .bind(json_text(&from)?)
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
            Some(saga) => match crate::create::create_one(&mut tx, saga).await? {
                SagaCreated::Created(record) => Some(record),
                _ => return Err(StoreError::Conflict("the saga's idempotency key is taken".into())),
            },
            None => None,
        };
        tx.commit().await.map_err(db)?;
        if saga.is_some() {
            self.work.notify_one();
        }
        Ok((record, saga))
    }

    async fn tenant_patch(&self, id: &str, patch: &TenantPatch, now_ms: i64) -> StoreResult<TenantRecord> {
        let row = sqlx::query(&format!(
            "UPDATE tenants SET name = COALESCE(?2, name), sla_tier = COALESCE(?3, sla_tier), \
               domains = COALESCE(?4, domains), contacts = COALESCE(?5, contacts), \
               metadata = COALESCE(?6, metadata), updated_at = ?7 \
             WHERE id = ?1 RETURNING {TENANT_COLUMNS}"
        ))
        .bind(id)
        .bind(&patch.name)
        .bind(patch.sla_tier.map(|s| s.as_str()))
        .bind(patch.domains.as_ref().map(json_text).transpose()?)
        .bind(patch.contacts.as_ref().map(json_text).transpose()?)
        .bind(patch.metadata.as_ref().map(json_text).transpose()?)
        .bind(now_ms)
        .fetch_optional(&self.writer)
        .await
        .map_err(db)?
        .ok_or(StoreError::NotFound)?;
        rows::tenant(&row)
    }

    async fn tenant_key_create(&self, key: &TenantKeyRecord, token_hash: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO tenant_api_keys (id, tenant_id, name, token_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(key.id.to_string())
        .bind(&key.tenant_id)
        .bind(&key.name)
        .bind(token_hash)
        .bind(key.created_at_ms)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn tenant_key_by_hash(&self, token_hash: &str) -> StoreResult<Option<TenantKeyRecord>> {
        let row = sqlx::query(
            "SELECT id, tenant_id, name, created_at, revoked_at FROM tenant_api_keys \
             WHERE token_hash = ?1 AND revoked_at IS NULL",
        )
        .bind(token_hash)
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?;
        row.map(|row| {
            Ok(TenantKeyRecord {
                id: uuid_column(&row, "id")?,
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
            "UPDATE tenant_api_keys SET revoked_at = ?3 WHERE tenant_id = ?1 AND id = ?2 AND revoked_at IS NULL",
        )
        .bind(tenant_id)
        .bind(key_id.to_string())
        .bind(now_ms)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn tenant_keys_revoke_all(&self, tenant_id: &str, now_ms: i64) -> StoreResult<u64> {
        let done =
            sqlx::query("UPDATE tenant_api_keys SET revoked_at = ?2 WHERE tenant_id = ?1 AND revoked_at IS NULL")
                .bind(tenant_id)
                .bind(now_ms)
                .execute(&self.writer)
                .await
                .map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn tenant_user_create(&self, user: &TenantUserRecord) -> StoreResult<()> {
        let done = sqlx::query(
            "INSERT INTO tenant_users (id, tenant_id, email, name, role, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (tenant_id, email) DO NOTHING",
        )
        .bind(user.id.to_string())
        .bind(&user.tenant_id)
        .bind(&user.email)
        .bind(&user.name)
        .bind(&user.role)
        .bind(user.created_at_ms)
        .bind(user.updated_at_ms)
        .execute(&self.writer)
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
             WHERE tenant_id = ?1 ORDER BY email LIMIT 10000",
        )
        .bind(tenant_id)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|row| {
                Ok(TenantUserRecord {
                    id: uuid_column(row, "id")?,
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
            "UPDATE tenant_users SET email = ?3, name = ?4, role = ?5, updated_at = ?6 WHERE tenant_id = ?1 AND id = ?2",
        )
        .bind(&user.tenant_id)
        .bind(user.id.to_string())
        .bind(&user.email)
        .bind(&user.name)
        .bind(&user.role)
        .bind(user.updated_at_ms)
        .execute(&self.writer)
        .await;
        match done {
            Ok(done) if done.rows_affected() == 0 => Err(StoreError::NotFound),
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::Conflict(format!("the tenant has a user with email {:?}", user.email)))
            }
            Err(e) => Err(db(e)),
        }
    }

    async fn tenant_user_delete(&self, tenant_id: &str, user_id: Uuid) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM tenant_users WHERE tenant_id = ?1 AND id = ?2")
            .bind(tenant_id)
            .bind(user_id.to_string())
            .execute(&self.writer)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn webhook_claim(&self, source: &str, webhook_id: &str, now_ms: i64) -> StoreResult<WebhookClaim> {
        let inserted = sqlx::query(
            "INSERT INTO webhook_receipts (source, webhook_id, received_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(source)
        .bind(webhook_id)
        .bind(now_ms)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        if inserted.rows_affected() == 1 {
            return Ok(WebhookClaim::New);
        }
        let response: Option<Option<String>> =
            sqlx::query_scalar("SELECT response FROM webhook_receipts WHERE source = ?1 AND webhook_id = ?2")
                .bind(source)
                .bind(webhook_id)
                .fetch_optional(&self.writer)
                .await
                .map_err(db)?;
        let response = response.flatten().map(|r| serde_json::from_str(&r)).transpose();
        Ok(WebhookClaim::Seen(response.map_err(|e| StoreError::Corrupt(e.to_string()))?))
    }

    async fn webhook_complete(&self, source: &str, webhook_id: &str, response: &Value) -> StoreResult<()> {
        sqlx::query("UPDATE webhook_receipts SET response = ?3 WHERE source = ?1 AND webhook_id = ?2")
            .bind(source)
            .bind(webhook_id)
            .bind(json_text(response)?)
            .execute(&self.writer)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn webhook_release(&self, source: &str, webhook_id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM webhook_receipts WHERE source = ?1 AND webhook_id = ?2 AND response IS NULL")
            .bind(source)
            .bind(webhook_id)
            .execute(&self.writer)
            .await
            .map_err(db)?;
        Ok(())
    }

    fn work_signal(&self) -> WorkSignal {
        self.work.clone()
    }
}

fn definition_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<DefinitionRecord> {
    let text: String = row.try_get("document").map_err(db)?;
    Ok(DefinitionRecord {
        name: row.try_get("name").map_err(db)?,
        version: row.try_get("version").map_err(db)?,
        document: serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        created_at_ms: row.try_get("created_at").map_err(db)?,
    })
}

fn uuid_column(row: &sqlx::sqlite::SqliteRow, column: &str) -> StoreResult<Uuid> {
    let text: String = row.try_get(column).map_err(db)?;
    Uuid::parse_str(&text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn saga_status_strings_round_trip() {
        for status in ["PENDING", "EXECUTING", "COMPLETED", "COMPENSATING", "COMPENSATED", "FAILED"] {
            assert_eq!(saga_core::SagaStatus::parse(status).map(|s| s.as_str()), Some(status));
        }
    }
}
