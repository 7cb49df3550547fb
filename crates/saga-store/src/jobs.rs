//! Bulk jobs' store interface: one action (cancel, retry, signal; replay, cancel) on every saga or
//! delivery a filter selected when the job was asked for, durable across restarts.
//!
//! Design note. A job's items are chosen once, when it is created: the ids its selection matched
//! are written with it, each `pending`. Acting on an item and marking it `done` happen in one
//! transaction ([`JobMark`], carried by the engine's operator writes and by
//! [`JobStore::job_delivery_act`]), so an item is acted on at most once whatever crashes, and a
//! job resumed after a crash goes on with exactly the items still pending. An item the action
//! does not apply to any more (a saga that finished meanwhile) is marked `failed` with the reason.

use async_trait::async_trait;
use saga_core::SagaStatus;
use serde_json::Value;
use uuid::Uuid;

use crate::{DeliveryStatus, StoreResult};

/// The most items one job takes; a selection matching more is refused (narrow it, e.g. by time).
pub const JOB_ITEMS_MAX: u64 = 100_000;
/// The most failed items a job's record names.
pub const JOB_ERRORS_SHOWN: u32 = 20;

/// What a job acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Sagas,
    Deliveries,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Sagas => "sagas",
            JobKind::Deliveries => "deliveries",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "sagas" => Some(JobKind::Sagas),
            "deliveries" => Some(JobKind::Deliveries),
            _ => None,
        }
    }
}

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus {
    Running,
    /// Every item acted on.
    Succeeded,
    /// Every item tried, and the action did not apply to at least one.
    Failed,
    /// Cancelled before every item was tried; the items left were not acted on.
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "running" => Some(JobStatus::Running),
            "succeeded" => Some(JobStatus::Succeeded),
            "failed" => Some(JobStatus::Failed),
            "cancelled" => Some(JobStatus::Cancelled),
            _ => None,
        }
    }
}

/// Which sagas a job acts on: every condition given must hold. Times are milliseconds since
/// the epoch, `after` exclusive and `before` exclusive.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SagaSelection {
    pub definition: Option<String>,
    pub version: Option<u32>,
    /// Any of these statuses (empty: any).
    pub statuses: Vec<SagaStatus>,
    pub tenant_id: Option<String>,
    pub created_after_ms: Option<i64>,
    pub created_before_ms: Option<i64>,
    pub updated_after_ms: Option<i64>,
    pub updated_before_ms: Option<i64>,
    /// Its error's message contains this, ignoring case.
    pub error_contains: Option<String>,
}

/// Which deliveries a job acts on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeliverySelection {
    pub subscription_id: Option<Uuid>,
    pub status: Option<DeliveryStatus>,
    /// Only deliveries to this tenant's own subscriptions (a tenant key's job: what it sees).
    pub subscription_tenant_id: Option<String>,
    pub created_after_ms: Option<i64>,
    pub created_before_ms: Option<i64>,
}

/// What a job's items are chosen by.
#[derive(Clone, Debug, PartialEq)]
pub enum Selection {
    Sagas(SagaSelection),
    Deliveries(DeliverySelection),
}

impl Selection {
    pub fn kind(&self) -> JobKind {
        match self {
            Selection::Sagas(_) => JobKind::Sagas,
            Selection::Deliveries(_) => JobKind::Deliveries,
        }
    }
}

/// A job to write with its items.
#[derive(Clone, Debug)]
pub struct JobCreate {
    pub id: Uuid,
    /// `cancel`, `retry`, `signal` (sagas); `replay`, `cancel` (deliveries).
    pub action: String,
    pub selection: Selection,
    /// The request's filter as given, shown back on the job.
    pub filter: Value,
    /// What the action needs besides the item (a signal's name and data).
    pub arguments: Option<Value>,
    /// The tenant a tenant key's job is confined to; None for an operator's.
    pub tenant_id: Option<String>,
    pub now_ms: i64,
}

/// One item whose action failed, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct JobItemError {
    pub id: Uuid,
    pub error: String,
}

/// A job as stored, with its items counted.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRecord {
    pub id: Uuid,
    pub kind: JobKind,
    pub action: String,
    pub status: JobStatus,
    pub filter: Value,
    pub arguments: Option<Value>,
    pub tenant_id: Option<String>,
    /// Items chosen when it was created.
    pub matched: u64,
    /// Items acted on.
    pub done: u64,
    /// Items the action did not apply to.
    pub failed: u64,
    /// The first failed items (at most [`JOB_ERRORS_SHOWN`]).
    pub errors: Vec<JobItemError>,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

/// One item of one job, carried by the write that acts on it: the write applies only while the
/// item is pending, and marks it done in the same transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobMark {
    pub job_id: Uuid,
    pub item_id: Uuid,
}

/// What a deliveries job does to one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryAction {
    /// A dead delivery back to pending, due now, with a fresh attempt budget.
    Replay,
    /// A pending delivery stops: dead, "cancelled by an operator", replayable.
    Cancel,
}

#[async_trait]
pub trait JobStore: Send + Sync {
    /// How many items `selection` matches now.
    async fn selection_count(&self, selection: &Selection) -> StoreResult<u64>;
    /// Writes the job and the ids its selection matches, in one transaction, status running;
    /// [`crate::StoreError::Conflict`] (nothing written) when more than `items_max` match.
    async fn job_create(&self, create: &JobCreate, items_max: u64) -> StoreResult<JobRecord>;
    /// [`crate::StoreError::NotFound`] when there is none.
    async fn job_get(&self, id: Uuid) -> StoreResult<JobRecord>;
    /// Its status alone (read between batches, without counting its items).
    async fn job_status(&self, id: Uuid) -> StoreResult<JobStatus>;
    /// Running jobs, oldest first, at most `limit`.
    async fn jobs_running(&self, limit: u32) -> StoreResult<Vec<Uuid>>;
    /// Stops a running job (its pending items stay untouched);
    /// [`crate::StoreError::Conflict`] once it has finished.
    async fn job_cancel(&self, id: Uuid, now_ms: i64) -> StoreResult<JobRecord>;
    /// Pending items after `after` in id order, at most `limit`.
    async fn job_items_pending(&self, job_id: Uuid, after: Option<Uuid>, limit: u32) -> StoreResult<Vec<Uuid>>;
    /// Marks a pending item failed with `error` (nothing when it is no longer pending).
    async fn job_item_fail(&self, mark: &JobMark, error: &str, now_ms: i64) -> StoreResult<()>;
    /// Acts on one delivery and marks its item done, in one transaction;
    /// [`crate::StoreError::Conflict`] (nothing written) when the delivery is not in the status
    /// the action needs or the item is no longer pending.
    async fn job_delivery_act(&self, mark: &JobMark, action: DeliveryAction, now_ms: i64) -> StoreResult<()>;
    /// Ends a running job with nothing pending: succeeded, or failed when an item failed.
    /// Returns it as it is after (unchanged when it was not running).
    async fn job_finish(&self, id: Uuid, now_ms: i64) -> StoreResult<JobRecord>;
}
