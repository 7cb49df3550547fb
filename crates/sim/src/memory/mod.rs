//! The engine's store in memory: [`MemoryStore`] implements every trait of
//! [`saga_store::EngineStore`] the way the SQL stores do — claims with admission under
//! concurrency keys, leases, fenced group commits, signals, callbacks — and passes the same
//! conformance suite (`tests/it/conformance.rs`), so the simulator's model cannot drift from the
//! real stores.
//!
//! Design note. One mutex guards all the data and is never held across an `.await`, so every
//! method is one atomic step, like one transaction. Besides the tables the store keeps a
//! [`Journal`]: every history row, admission and lease hand-back in the order it was written,
//! numbered by the simulation's global [`Sequencer`] (shared with the participants), which is
//! what the checker reads. [`StoreBugs`] re-introduce known bugs for the checker's own tests.

mod leases;
mod outbox;
mod signals;

pub use outbox::{Delivery, OutboxView};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use saga_core::{HistoryEvent, SagaStatus};
use saga_store::{
    CallbackFacts, DefinitionPut, DefinitionRecord, DefinitionStore, EventRecord, JobMark, SagaCreate, SagaFilter,
    SagaOperatorUpdate, SagaQueueFacts, SagaRecord, SagaStore, StoreError, StoreResult, WorkSignal,
};
use serde_json::Value;
use uuid::Uuid;

/// The simulation's one clock of causality: store writes and participant effects draw their
/// numbers from it, so the checker can tell which came first.
#[derive(Clone, Debug, Default)]
pub struct Sequencer(Arc<AtomicU64>);

impl Sequencer {
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// Known bugs the store can be told to have (all off by default), for the checker's tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreBugs {
    /// Commits ignore the fencing token: a zombie's write lands.
    pub unfenced_commits: bool,
    /// Leases are never handed back (`lease_release` and parking commits keep them).
    pub leases_kept: bool,
    /// A fenced commit's events are written all the same (the change they report is not).
    pub events_of_fenced_commits: bool,
    /// Every event goes to every active subscription, whatever its filter.
    pub unfiltered_fan_out: bool,
    /// Claims take pending deliveries before they are due.
    pub early_delivery_claims: bool,
}

/// What the checker reads: one entry per write, in write order.
#[derive(Clone, Debug, PartialEq)]
pub struct JournalEntry {
    pub seq: u64,
    pub saga_id: Uuid,
    pub kind: JournalKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum JournalKind {
    /// A history row, written by the driver holding `fencing_token` (None: not by a driver).
    Event { event: EventRecord, fencing_token: Option<i64> },
    /// The claim admitted the saga under its concurrency key (`key`, `limit`); `to_settle`: over
    /// the limit, only to act on its cancel request or passed deadline (it runs no step).
    Admitted { key: String, limit: u32, to_settle: bool },
    /// An outbox event the saga's commit wrote.
    Outbox { event_type: String },
    /// A driver claimed the saga (holding `fencing_token` from now on).
    Claimed { fencing_token: i64, worker: String },
}

/// The store's data.
#[derive(Default)]
pub(crate) struct Tables {
    definitions: BTreeMap<String, Vec<DefinitionRecord>>,
    pub(crate) sagas: BTreeMap<Uuid, Row>,
    idempotency_keys: BTreeMap<String, Uuid>,
    pub(crate) events: BTreeMap<Uuid, Vec<EventRecord>>,
    pub(crate) signals: Vec<Signal>,
    pub(crate) callbacks: BTreeMap<String, Callback>,
    pub(crate) journal: Vec<JournalEntry>,
    pub(crate) outbox: outbox::Outbox,
}

/// A saga row: the record plus the columns only the store reads.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub record: SagaRecord,
    pub admitted: bool,
    pub concurrency_limit: Option<u32>,
    pub deadline_at_ms: Option<i64>,
    pub previous_owner: Option<String>,
    pub request_hash: Option<String>,
}

impl Row {
    pub fn is_active(&self) -> bool {
        !self.record.status.is_terminal()
    }

    /// Its place in the claim order.
    pub fn rank_at(&self) -> i64 {
        self.record.run_at_ms - i64::from(self.record.priority) * saga_store::PRIORITY_STEP_MS
    }

    /// Claimable under admission: no key, or admitted.
    pub fn admitted_or_free(&self) -> bool {
        self.record.concurrency_key.is_none() || self.admitted
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Signal {
    pub id: i64,
    pub saga_id: Uuid,
    pub name: String,
    pub payload: Value,
    pub received_at_ms: i64,
}

#[derive(Clone, Debug)]
pub(crate) struct Callback {
    pub saga_id: Uuid,
    pub step: String,
    pub attempt: u32,
    pub heartbeat_timeout_ms: Option<i64>,
    pub deadline_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub result: Option<Value>,
    pub completed_at_ms: Option<i64>,
}

/// The engine's store, in memory.
pub struct MemoryStore {
    tables: Mutex<Tables>,
    work: WorkSignal,
    sequencer: Sequencer,
    bugs: StoreBugs,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(Sequencer::default(), StoreBugs::default())
    }
}

impl MemoryStore {
    pub fn new(sequencer: Sequencer, bugs: StoreBugs) -> Self {
        MemoryStore { tables: Mutex::new(Tables::default()), work: WorkSignal::default(), sequencer, bugs }
    }

    pub(crate) fn tables(&self) -> StoreResult<MutexGuard<'_, Tables>> {
        self.tables.lock().map_err(|_| StoreError::Corrupt("the memory store's lock is poisoned".into()))
    }

    pub(crate) fn bugs(&self) -> StoreBugs {
        self.bugs
    }

    pub(crate) fn notify_work(&self) {
        self.work.notify_one();
    }

    /// Every write so far, in order.
    pub fn journal(&self) -> Vec<JournalEntry> {
        self.tables.lock().map(|t| t.journal.clone()).unwrap_or_default()
    }

    /// Every saga, by id.
    pub fn sagas(&self) -> Vec<SagaRecord> {
        self.tables.lock().map(|t| t.sagas.values().map(|r| r.record.clone()).collect()).unwrap_or_default()
    }

    /// Appends history rows to a saga and to the journal.
    pub(crate) fn append(
        &self,
        tables: &mut Tables,
        saga_id: Uuid,
        worker: Option<&str>,
        fencing_token: Option<i64>,
        events: &[HistoryEvent],
    ) {
        let history = tables.events.entry(saga_id).or_default();
        for event in events {
            let record = EventRecord {
                seq: history.len() as i64 + 1,
                kind: event.kind.clone(),
                step: event.step.clone(),
                attempt: event.attempt,
                worker: worker.map(str::to_string),
                data: event.data.clone(),
                at_ms: event.at_ms,
            };
            history.push(record.clone());
            tables.journal.push(JournalEntry {
                seq: self.sequencer.next(),
                saga_id,
                kind: JournalKind::Event { event: record, fencing_token },
            });
        }
    }

    pub(crate) fn journal_push(&self, tables: &mut Tables, saga_id: Uuid, kind: JournalKind) {
        tables.journal.push(JournalEntry { seq: self.sequencer.next(), saga_id, kind });
    }

    pub(crate) fn sequencer_next(&self) -> u64 {
        self.sequencer.next()
    }

    /// One create of a batch already checked: None when its idempotency key is taken or the
    /// version it requires is no longer the latest.
    fn insert_one(&self, tables: &mut Tables, params: &SagaCreate) -> Option<SagaRecord> {
        if let Some(key) = &params.idempotency_key {
            if tables.idempotency_keys.contains_key(key) {
                return None;
            }
        }
        if params.require_latest {
            let latest = tables.definitions.get(&params.definition).and_then(|v| v.last()).map(|d| d.version);
            if latest != Some(params.version) {
                return None;
            }
        }
        let lease_expires_at_ms = params.lease.as_ref().map(|l| params.now_ms + l.lease_ttl_ms);
        let record = SagaRecord {
            id: params.id,
            definition: params.definition.clone(),
            version: params.version,
            tenant_id: params.tenant_id.clone(),
            status: params.state.status,
            input: params.input.clone(),
            state: params.state.clone(),
            priority: params.priority,
            run_at_ms: lease_expires_at_ms.unwrap_or(params.now_ms),
            lease_owner: params.lease.as_ref().map(|l| l.worker_id.clone()),
            lease_expires_at_ms,
            fencing_token: i64::from(params.lease.is_some()),
            created_at_ms: params.now_ms,
            updated_at_ms: params.now_ms,
            completed_at_ms: params.state.status.is_terminal().then_some(params.now_ms),
            cancel_requested_at_ms: None,
            wake_seq: 0,
            concurrency_key: params.concurrency.as_ref().map(|c| c.0.clone()),
        };
        if let Some(key) = &params.idempotency_key {
            tables.idempotency_keys.insert(key.clone(), params.id);
        }
        tables.sagas.insert(
            params.id,
            Row {
                record: record.clone(),
                admitted: false,
                concurrency_limit: params.concurrency.as_ref().map(|c| c.1),
                deadline_at_ms: params.state.deadline_at_ms,
                previous_owner: None,
                request_hash: params.request_hash.clone(),
            },
        );
        let created = HistoryEvent::new(
            "saga_created",
            None,
            None,
            serde_json::json!({"definition": params.definition, "version": params.version}),
            params.now_ms,
        );
        self.append(tables, params.id, None, None, &[created]);
        Some(record)
    }
}

fn row_mut(tables: &mut Tables, id: Uuid) -> StoreResult<&mut Row> {
    tables.sagas.get_mut(&id).ok_or(StoreError::NotFound)
}

fn conflict_status(status: SagaStatus) -> StoreError {
    StoreError::Conflict(format!("saga is {}", status.as_str()))
}

#[async_trait]
impl DefinitionStore for MemoryStore {
    async fn definition_put(&self, name: &str, document: &Value, now_ms: i64) -> StoreResult<DefinitionPut> {
        let mut tables = self.tables()?;
        let versions = tables.definitions.entry(name.to_string()).or_default();
        if let Some(latest) = versions.last() {
            if &latest.document == document {
                return Ok(DefinitionPut { record: latest.clone(), created: false });
            }
        }
        let record = DefinitionRecord {
            name: name.to_string(),
            version: versions.last().map_or(1, |d| d.version + 1),
            document: document.clone(),
            created_at_ms: now_ms,
        };
        versions.push(record.clone());
        Ok(DefinitionPut { record, created: true })
    }

    async fn definition_get(&self, name: &str, version: Option<i32>) -> StoreResult<DefinitionRecord> {
        let tables = self.tables()?;
        let versions = tables.definitions.get(name).ok_or(StoreError::NotFound)?;
        let found = match version {
            Some(v) => versions.iter().find(|d| d.version == v),
            None => versions.last(),
        };
        found.cloned().ok_or(StoreError::NotFound)
    }

    async fn definition_list(&self) -> StoreResult<Vec<DefinitionRecord>> {
        Ok(self.tables()?.definitions.values().filter_map(|v| v.last().cloned()).collect())
    }
}

#[async_trait]
impl SagaStore for MemoryStore {
    async fn saga_insert_batch(&self, creates: &[SagaCreate]) -> StoreResult<Vec<Option<SagaRecord>>> {
        let mut tables = self.tables()?;
        // One transaction: whatever would fail the batch is found before anything is written.
        let mut ids = std::collections::BTreeSet::new();
        for params in creates {
            saga_store::creates::check(params)?;
            if tables.sagas.contains_key(&params.id) || !ids.insert(params.id) {
                return Err(StoreError::Conflict(format!("saga {} exists", params.id)));
            }
        }
        let records = creates.iter().map(|params| self.insert_one(&mut tables, params)).collect::<Vec<_>>();
        drop(tables);
        if records.iter().zip(creates).any(|(record, create)| record.is_some() && create.lease.is_none()) {
            self.notify_work();
        }
        Ok(records)
    }

    async fn saga_by_idempotency_key(&self, key: &str) -> StoreResult<Option<(SagaRecord, Option<String>)>> {
        let tables = self.tables()?;
        Ok(tables
            .idempotency_keys
            .get(key)
            .and_then(|id| tables.sagas.get(id))
            .map(|row| (row.record.clone(), row.request_hash.clone())))
    }

    async fn saga_get(&self, id: Uuid) -> StoreResult<SagaRecord> {
        self.tables()?.sagas.get(&id).map(|row| row.record.clone()).ok_or(StoreError::NotFound)
    }

    async fn saga_get_many(&self, ids: &[Uuid]) -> StoreResult<Vec<SagaRecord>> {
        let tables = self.tables()?;
        Ok(ids.iter().filter_map(|id| tables.sagas.get(id)).map(|row| row.record.clone()).collect())
    }

    async fn saga_list(&self, filter: &SagaFilter) -> StoreResult<Vec<SagaRecord>> {
        let tables = self.tables()?;
        let matches = |row: &&Row| {
            let record = &row.record;
            filter.status.is_none_or(|s| record.status == s)
                && filter.definition.as_ref().is_none_or(|d| &record.definition == d)
                && filter.tenant_id.as_ref().is_none_or(|t| record.tenant_id.as_ref() == Some(t))
                && filter.concurrency_key.as_ref().is_none_or(|k| record.concurrency_key.as_ref() == Some(k))
        };
        let limit = filter.limit as usize;
        if filter.stalest_first {
            let after = filter.before_id.map(|id| tables.sagas.get(&id).map(|r| (r.record.updated_at_ms, id)));
            let mut rows: Vec<&Row> = tables
                .sagas
                .values()
                .filter(matches)
                .filter(|row| row.is_active())
                .filter(|row| match after {
                    None => true,
                    Some(None) => false,
                    Some(Some(after)) => (row.record.updated_at_ms, row.record.id) > after,
                })
                .collect();
            rows.sort_by_key(|row| (row.record.updated_at_ms, row.record.id));
            return Ok(rows.into_iter().take(limit).map(|row| row.record.clone()).collect());
        }
        Ok(tables
            .sagas
            .values()
            .rev()
            .filter(matches)
            .filter(|row| filter.before_id.is_none_or(|before| row.record.id < before))
            .take(limit)
            .map(|row| row.record.clone())
            .collect())
    }

    async fn saga_events(&self, id: Uuid, after_seq: i64, limit: u32) -> StoreResult<Vec<EventRecord>> {
        let tables = self.tables()?;
        let events = tables.events.get(&id).map(Vec::as_slice).unwrap_or_default();
        Ok(events.iter().filter(|e| e.seq > after_seq).take(limit as usize).cloned().collect())
    }

    async fn saga_operator_update(&self, update: SagaOperatorUpdate) -> StoreResult<SagaRecord> {
        let mut tables = self.tables()?;
        let row = row_mut(&mut tables, update.id)?;
        let on_version = update.moves_version.is_none_or(|(from, _)| row.record.version == from);
        if row.record.status != update.expected_status || row.record.lease_owner.is_some() || !on_version {
            return Err(StoreError::Conflict(format!("saga is no longer {}", update.expected_status.as_str())));
        }
        refuse_job(update.job.as_ref())?;
        if let Some(change) = &update.tenant_change {
            // No tenants live here: a change conditional on one is never applied.
            return Err(StoreError::Conflict(format!(
                "tenant {:?} is not in a status that may become {}",
                change.tenant_id,
                change.to.as_str()
            )));
        }
        let record = &mut row.record;
        record.status = update.state.status;
        record.state = update.state.clone();
        record.updated_at_ms = update.now_ms;
        record.run_at_ms = update.now_ms;
        record.completed_at_ms = None;
        record.lease_owner = None;
        record.lease_expires_at_ms = None;
        if let Some((_, to)) = update.moves_version {
            record.version = to;
        }
        let record = record.clone();
        self.append(&mut tables, update.id, None, None, &update.events);
        drop(tables);
        if !record.status.is_terminal() {
            self.notify_work();
        }
        Ok(record)
    }

    async fn saga_wake(&self, id: Uuid, now_ms: i64) -> StoreResult<bool> {
        let mut tables = self.tables()?;
        let woken = signals::wake(&mut tables, id, now_ms)?;
        drop(tables);
        if woken {
            self.notify_work();
        }
        Ok(woken)
    }

    async fn saga_cancel_request(&self, id: Uuid, now_ms: i64, job: Option<&JobMark>) -> StoreResult<SagaRecord> {
        refuse_job(job)?;
        let mut tables = self.tables()?;
        let row = row_mut(&mut tables, id)?;
        if !row.is_active() {
            return Err(conflict_status(row.record.status));
        }
        let record = &mut row.record;
        record.cancel_requested_at_ms = record.cancel_requested_at_ms.or(Some(now_ms));
        record.wake_seq += 1;
        record.updated_at_ms = now_ms;
        if record.lease_owner.is_none() {
            record.run_at_ms = record.run_at_ms.min(now_ms);
        }
        let record = record.clone();
        drop(tables);
        self.notify_work();
        Ok(record)
    }

    async fn saga_queue_facts(&self, saga: &SagaRecord, now_ms: i64) -> StoreResult<SagaQueueFacts> {
        let (due_count, oldest_due_at_ms) = self.saga_due_summary(now_ms).await?;
        let tables = self.tables()?;
        let admitted = tables.sagas.get(&saga.id).is_some_and(Row::admitted_or_free);
        let key_holders = match &saga.concurrency_key {
            Some(key) => tables
                .sagas
                .values()
                .filter(|r| r.record.concurrency_key.as_ref() == Some(key) && r.admitted && r.is_active())
                .map(|r| r.record.id)
                .filter(|id| *id != saga.id)
                .take(saga_store::KEY_HOLDERS_MAX as usize)
                .collect(),
            None => Vec::new(),
        };
        let latest_event = tables.events.get(&saga.id).and_then(|e| e.last().cloned());
        let callback = match &saga.state.wait {
            Some(wait) if wait.kind == saga_core::WaitKind::Callback => {
                let step = saga.state.steps.get(wait.step).map(|s| s.name.clone()).unwrap_or_default();
                tables
                    .callbacks
                    .values()
                    .filter(|c| {
                        c.saga_id == saga.id
                            && c.step == step
                            && c.attempt == wait.attempt
                            && c.completed_at_ms.is_none()
                    })
                    .max_by_key(|c| c.created_at_ms)
                    .map(|c| CallbackFacts::from_columns(c.deadline_at_ms, c.heartbeat_timeout_ms, c.created_at_ms))
            }
            _ => None,
        };
        Ok(SagaQueueFacts { admitted, key_holders, due_count, oldest_due_at_ms, latest_event, callback })
    }

    async fn saga_due_summary(&self, now_ms: i64) -> StoreResult<(u64, Option<i64>)> {
        let tables = self.tables()?;
        let due: Vec<i64> = tables
            .sagas
            .values()
            .filter(|r| r.is_active() && r.admitted_or_free() && r.record.run_at_ms <= now_ms)
            .map(|r| r.record.run_at_ms)
            .collect();
        Ok((due.len() as u64, due.into_iter().min()))
    }
}

/// No bulk jobs live here: a write conditional on a job's item is never applied.
pub(crate) fn refuse_job(job: Option<&JobMark>) -> StoreResult<()> {
    match job {
        Some(mark) => Err(StoreError::Conflict(format!("job {} has no pending item {}", mark.job_id, mark.item_id))),
        None => Ok(()),
    }
}
