//! The bulk job runner: each running job (`POST /v1/sagas/actions`, `POST
//! /v1/deliveries/actions`) has its action done on every item it selected, a batch at a time.
//!
//! Design note. Every instance with a worker runs a runner; a job is run by the instance that
//! holds its named lease (`job:<id>`, [`RetentionStore::singleton_hold`]), renewed before each
//! batch, so two instances never work on one job, and one that dies loses it after
//! [`JOB_LEASE_TTL_MS`]. Acting on an item and marking it done are one transaction (the store's
//! `JobMark`), so a job that another instance resumes after a crash acts only on the items still
//! pending: each at most once. An item the action no longer applies to (a saga that finished
//! meanwhile) is marked failed with the reason. Batches of [`BulkConfig::batch`] items, a few
//! at a time ([`BulkConfig::concurrency`]), with a pause between batches, keep a job of 100,000
//! from crowding out the engine's own writes. A cancelled job stops before its next batch.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use saga_store::{DeliveryAction, JobKind, JobMark, JobRecord, JobStatus, JobStore, RetentionStore, StoreError};
use tokio::sync::watch;
use uuid::Uuid;

use crate::clock::Clock;
use crate::metrics_names::SAGA_JOB_ITEMS_TOTAL;
use crate::operator::{BulkAction, Operator, OperatorError};

/// How long a job's lease lasts unless renewed.
pub const JOB_LEASE_TTL_MS: i64 = 30_000;
/// Running jobs one look considers.
const JOBS_PER_LOOK: u32 = 16;

/// How the runner runs.
#[derive(Clone, Debug)]
pub struct BulkConfig {
    /// This instance, as the owner of the jobs' leases.
    pub worker_id: String,
    /// Items per batch.
    pub batch: u32,
    /// Items of a batch acted on at once.
    pub concurrency: usize,
    /// The pause after each batch.
    pub pause: Duration,
    /// How often it looks for running jobs.
    pub poll: Duration,
}

impl BulkConfig {
    pub fn new(worker_id: impl Into<String>) -> Self {
        BulkConfig {
            worker_id: worker_id.into(),
            batch: 100,
            concurrency: 8,
            pause: Duration::from_millis(10),
            poll: Duration::from_millis(500),
        }
    }
}

/// What the runner works with.
pub struct BulkStores {
    pub jobs: Arc<dyn JobStore>,
    pub leases: Arc<dyn RetentionStore>,
}

/// The running runner; shut it down to stop it.
pub struct BulkHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl BulkHandle {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts the runner.
pub fn start(stores: BulkStores, operator: Operator, clock: Arc<dyn Clock>, config: BulkConfig) -> BulkHandle {
    let (stop, stopped) = watch::channel(false);
    let runner = Runner { stores, operator, clock, config, stopped };
    let task = tokio::spawn(runner.run());
    BulkHandle { stop, task }
}

struct Runner {
    stores: BulkStores,
    operator: Operator,
    clock: Arc<dyn Clock>,
    config: BulkConfig,
    stopped: watch::Receiver<bool>,
}

/// Why a job's run stopped before it finished.
enum Pause {
    /// Another instance holds it, it was cancelled, or this instance is stopping.
    Elsewhere,
    /// The database failed; the job is tried again at the next look.
    Store(StoreError),
}

impl Runner {
    async fn run(mut self) {
        loop {
            self.look().await;
            let mut stopped = self.stopped.clone();
            tokio::select! {
                _ = tokio::time::sleep(self.config.poll) => {}
                _ = stopped.changed() => {}
            }
            if self.stopping() {
                break;
            }
        }
    }

    fn stopping(&self) -> bool {
        *self.stopped.borrow()
    }

    /// One look: every running job this instance can lease, run until it finishes.
    async fn look(&mut self) {
        let running = match self.stores.jobs.jobs_running(JOBS_PER_LOOK).await {
            Ok(running) => running,
            Err(e) => {
                tracing::warn!(error = %e, "reading the running bulk jobs failed; trying again later");
                return;
            }
        };
        for id in running {
            if self.stopping() {
                return;
            }
            match self.run_job(id).await {
                Ok(job) => tracing::info!(
                    job_id = %id, status = job.status.as_str(), done = job.done, failed = job.failed,
                    "bulk job finished"
                ),
                Err(Pause::Elsewhere) => {}
                Err(Pause::Store(e)) => tracing::warn!(job_id = %id, error = %e, "a bulk job paused; it resumes"),
            }
            let lease = lease_name(id);
            if let Err(e) = self.stores.leases.singleton_release(&lease, &self.config.worker_id).await {
                tracing::debug!(error = %e, "giving a job's lease up failed; it expires");
            }
        }
    }

    /// Runs job `id` to its end while this instance holds its lease.
    async fn run_job(&mut self, id: Uuid) -> Result<JobRecord, Pause> {
        let lease = lease_name(id);
        // The lease first: an instance that does not get it reads nothing more of the job.
        let mut act = None;
        let mut after = None;
        loop {
            let held = self
                .stores
                .leases
                .singleton_hold(&lease, &self.config.worker_id, self.clock.now_ms(), JOB_LEASE_TTL_MS)
                .await
                .map_err(Pause::Store)?;
            if !held || self.stopping() {
                return Err(Pause::Elsewhere);
            }
            if self.stores.jobs.job_status(id).await.map_err(Pause::Store)? != JobStatus::Running {
                return Err(Pause::Elsewhere);
            }
            let act = match &act {
                Some(act) => act,
                None => act.insert(Act::of(&self.stores.jobs.job_get(id).await.map_err(Pause::Store)?)),
            };
            let items = self.stores.jobs.job_items_pending(id, after, self.config.batch).await.map_err(Pause::Store)?;
            let Some(last) = items.last().copied() else {
                return self.stores.jobs.job_finish(id, self.clock.now_ms()).await.map_err(Pause::Store);
            };
            self.batch(id, act, items).await?;
            after = Some(last);
            tokio::time::sleep(self.config.pause).await;
        }
    }

    /// Acts on one batch of items, a few at a time.
    async fn batch(&self, job_id: Uuid, act: &Act, items: Vec<Uuid>) -> Result<(), Pause> {
        let results: Vec<Result<(), StoreError>> = futures::stream::iter(items)
            .map(|item_id| self.item(act, JobMark { job_id, item_id }))
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await;
        results.into_iter().collect::<Result<(), StoreError>>().map_err(Pause::Store)
    }

    /// Acts on one item: done, or failed with why the action did not apply. An error of the
    /// database leaves it pending.
    async fn item(&self, act: &Act, mark: JobMark) -> Result<(), StoreError> {
        let refused = match act {
            Act::Sagas(action) => match self.operator.act(mark.item_id, action, &mark).await {
                Ok(()) => None,
                Err(OperatorError::Store(e)) if !matches!(e, StoreError::Conflict(_) | StoreError::NotFound) => {
                    return Err(e)
                }
                Err(e) => Some(e.to_string()),
            },
            Act::Deliveries(action) => {
                match self.stores.jobs.job_delivery_act(&mark, *action, self.clock.now_ms()).await {
                    Ok(()) => None,
                    Err(StoreError::Conflict(message)) => Some(message),
                    Err(e) => return Err(e),
                }
            }
            Act::Unknown(_, reason) => Some(reason.clone()),
        };
        let kind = act.kind().as_str();
        match refused {
            None => metrics::counter!(SAGA_JOB_ITEMS_TOTAL, "kind" => kind, "outcome" => "done").increment(1),
            Some(error) => {
                self.stores.jobs.job_item_fail(&mark, &error, self.clock.now_ms()).await?;
                metrics::counter!(SAGA_JOB_ITEMS_TOTAL, "kind" => kind, "outcome" => "failed").increment(1);
            }
        }
        Ok(())
    }
}

/// A job's action, read once from its record.
enum Act {
    Sagas(BulkAction),
    Deliveries(DeliveryAction),
    /// A stored action this binary does not know (written by a newer one): every item fails with it.
    Unknown(JobKind, String),
}

impl Act {
    fn of(job: &JobRecord) -> Self {
        let unknown = || Act::Unknown(job.kind, format!("this binary does not know the action {:?}", job.action));
        match job.kind {
            JobKind::Sagas => {
                BulkAction::parse(&job.action, job.arguments.as_ref()).map(Act::Sagas).unwrap_or_else(unknown)
            }
            JobKind::Deliveries => match job.action.as_str() {
                "replay" => Act::Deliveries(DeliveryAction::Replay),
                "cancel" => Act::Deliveries(DeliveryAction::Cancel),
                _ => unknown(),
            },
        }
    }

    fn kind(&self) -> JobKind {
        match self {
            Act::Sagas(_) => JobKind::Sagas,
            Act::Deliveries(_) => JobKind::Deliveries,
            Act::Unknown(kind, _) => *kind,
        }
    }
}

/// The lease that keeps job `id` on one instance.
fn lease_name(id: Uuid) -> String {
    format!("job:{id}")
}
