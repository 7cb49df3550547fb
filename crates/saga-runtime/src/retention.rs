//! The cleaner: finished sagas (COMPLETED, COMPENSATED, FAILED) are deleted once they have been
//! finished for the retention (`SAGAPLANE_RETENTION`), each with its history, signals, callbacks
//! and idempotency key. A saga that is not finished is never touched. Succeeded deliveries and
//! finished bulk jobs go on the same clock, dead deliveries after `SAGAPLANE_DEAD_LETTER_RETENTION`
//! (each with its attempts, an event with its last delivery); a pending delivery never does. A
//! tenant `DELETED` for the retention goes with its keys, users and own subscriptions, and
//! inbound webhook receipts after the retention (at least a day).
//!
//! Design note. One instance at a time cleans: each tick it takes or renews the named lease
//! `retention` ([`RetentionStore::singleton_hold`]) and only its holder deletes, so instances
//! never contend for the same rows; a stopping instance gives the lease up, and one that dies
//! loses it after [`RETENTION_LEASE_TTL_MS`]. It deletes in batches of [`RetentionConfig::batch`] sagas,
//! one transaction each, oldest finished first, with a pause between full batches so the
//! engine's own writes keep the database (measured on PostgreSQL: deleting 5,000 sagas a second
//! beside saga3 at c=64 cost it 12%; the default pace allows 2,000 a second). A backlog that
//! lasts — [`FULL_BATCHES_PER_HALVING`] full batches in a row — halves the pause, and each as
//! many more halve it again, down to a sixteenth, so a cleaner
//! under sustained load keeps up with what finishes instead of falling behind for good (measured:
//! at the full pause it deleted about 1,000 sagas a second beside saga3 finishing 1,800); the
//! first batch that is not full restores it. While nothing is
//! due it looks again every half retention, at most every minute. Metrics:
//! `saga_retention_deleted_total{kind=saga|history|signal|callback|job|delivery|delivery_attempt|event|tenant|webhook_receipt}`, and
//! `saga_retention_oldest_finished_seconds` — how long the longest-finished saga still kept has
//! been finished (above the retention while the cleaner is behind), and
//! `saga_retention_backlog`, the finished sagas past their retention not yet deleted.

use std::sync::Arc;
use std::time::Duration;

use saga_store::{Purged, PurgedDeliveries, RetentionStore};
use tokio::sync::watch;

use crate::archive::Archive;
use crate::clock::Clock;
use crate::metrics_names::{
    SAGA_RETENTION_BACKLOG, SAGA_RETENTION_DELETED_TOTAL, SAGA_RETENTION_OLDEST_FINISHED_SECONDS,
};

/// The name of the cleaner's lease.
pub const RETENTION_LEASE: &str = "retention";
/// How long the lease lasts unless renewed: another instance takes over this long after its
/// holder stops.
pub const RETENTION_LEASE_TTL_MS: i64 = 30_000;
/// How long a dead delivery is kept unless configured: 90 days.
pub const DEAD_LETTER_RETENTION_DEFAULT_MS: i64 = 90 * 24 * 3_600_000;
/// Full batches in a row after which the pause between batches halves (at the default pace, 20
/// batches are about ten seconds of backlog).
pub const FULL_BATCHES_PER_HALVING: u32 = 20;
/// How often the backlog is counted and the slow-changing kinds are deleted.
const OCCASIONAL_EVERY_MS: i64 = 60_000;
/// The most the backlog is counted up to.
const BACKLOG_COUNT_CAP: u32 = 1_000_000;
/// Finished bulk jobs, or deleted tenants, deleted a minute (each in its own transaction).
const SMALL_PURGE_PER_LOOK: u32 = 200;
/// Inbound webhook receipts are kept at least this long, whatever the retention.
const RECEIPTS_KEPT_MIN_MS: i64 = 24 * 3_600_000;
/// The longest wait between two looks while nothing is due.
pub const RETENTION_IDLE_MAX: Duration = Duration::from_secs(60);

/// How the cleaner runs.
#[derive(Clone, Debug)]
pub struct RetentionConfig {
    /// How long a finished saga, and a succeeded delivery, is kept.
    pub retention_ms: i64,
    /// How long a dead delivery is kept, replayable.
    pub dead_letter_retention_ms: i64,
    /// This instance, as the lease's owner.
    pub worker_id: String,
    /// Sagas per batch (one transaction).
    pub batch: u32,
    /// The pause after a full batch.
    pub pause: Duration,
    /// Where each saga is written before it is deleted (`SAGAPLANE_ARCHIVE_DIR`), if anywhere.
    pub archive: Option<Archive>,
}

impl RetentionConfig {
    pub fn new(retention_ms: i64, worker_id: impl Into<String>) -> Self {
        RetentionConfig {
            retention_ms,
            dead_letter_retention_ms: DEAD_LETTER_RETENTION_DEFAULT_MS,
            worker_id: worker_id.into(),
            batch: 500,
            pause: Duration::from_millis(250),
            archive: None,
        }
    }

    /// The wait before the next look when the last found nothing more to delete.
    fn idle(&self) -> Duration {
        let half = u64::try_from(self.retention_ms / 2).unwrap_or(0).max(100);
        Duration::from_millis(half).min(RETENTION_IDLE_MAX)
    }
}

/// The running cleaner; dropping it stops it.
pub struct RetentionHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RetentionHandle {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts the cleaner.
pub fn start(store: Arc<dyn RetentionStore>, clock: Arc<dyn Clock>, config: RetentionConfig) -> RetentionHandle {
    let (stop, stopped) = watch::channel(false);
    for kind in [
        "saga",
        "history",
        "signal",
        "callback",
        "job",
        "delivery",
        "delivery_attempt",
        "event",
        "tenant",
        "webhook_receipt",
    ] {
        metrics::counter!(SAGA_RETENTION_DELETED_TOTAL, "kind" => kind).increment(0);
    }
    let task = tokio::spawn(run(store, clock, config, stopped));
    RetentionHandle { stop, task }
}

async fn run(
    store: Arc<dyn RetentionStore>,
    clock: Arc<dyn Clock>,
    config: RetentionConfig,
    mut stopped: watch::Receiver<bool>,
) {
    let mut occasional_at_ms = None;
    let mut full_in_a_row = 0u32;
    loop {
        let more = tick(store.as_ref(), clock.as_ref(), &config, &mut occasional_at_ms).await;
        full_in_a_row = if more { full_in_a_row.saturating_add(1) } else { 0 };
        let wait = if more { pace(config.pause, full_in_a_row) } else { config.idle() };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped.changed() => break,
        }
        if *stopped.borrow() {
            break;
        }
    }
    // Stopping: the lease goes at once, not when it expires, so another instance cleans on.
    if let Err(e) = store.singleton_release(RETENTION_LEASE, &config.worker_id).await {
        tracing::debug!(error = %e, "giving the retention lease up failed; it expires");
    }
}

/// The pause after the `full_in_a_row`th full batch in a row: halved every
/// [`FULL_BATCHES_PER_HALVING`] of them, to a sixteenth at most.
fn pace(pause: Duration, full_in_a_row: u32) -> Duration {
    let halvings = (full_in_a_row / FULL_BATCHES_PER_HALVING).min(4);
    pause / 2u32.pow(halvings)
}

/// One look: when this instance holds the lease, one batch deleted. True when the batch was
/// full (more may be due at once).
async fn tick(
    store: &dyn RetentionStore,
    clock: &dyn Clock,
    config: &RetentionConfig,
    occasional_at_ms: &mut Option<i64>,
) -> bool {
    let now_ms = clock.now_ms();
    match store.singleton_hold(RETENTION_LEASE, &config.worker_id, now_ms, RETENTION_LEASE_TTL_MS).await {
        Ok(true) => {}
        Ok(false) => return false,
        Err(e) => {
            tracing::warn!(error = %e, "the retention lease could not be taken; trying again later");
            return false;
        }
    }
    let purged = match purge_sagas(store, config, now_ms).await {
        Ok(purged) => purged,
        Err(e) => {
            tracing::warn!(error = %e, "deleting finished sagas failed; trying again later");
            return false;
        }
    };
    count(&purged);
    let succeeded_before_ms = now_ms.saturating_sub(config.retention_ms);
    let dead_before_ms = now_ms.saturating_sub(config.dead_letter_retention_ms);
    let deliveries = match store.deliveries_purge(succeeded_before_ms, dead_before_ms, now_ms, config.batch).await {
        Ok(deliveries) => deliveries,
        Err(e) => {
            tracing::warn!(error = %e, "deleting finished deliveries failed; trying again later");
            PurgedDeliveries::default()
        }
    };
    for (kind, n) in
        [("delivery", deliveries.deliveries), ("delivery_attempt", deliveries.attempts), ("event", deliveries.events)]
    {
        metrics::counter!(SAGA_RETENTION_DELETED_TOTAL, "kind" => kind).increment(n);
    }
    if purged.sagas > 0 {
        tracing::debug!(sagas = purged.sagas, history = purged.history, "deleted finished sagas past their retention");
    }
    match store.oldest_finished_ms().await {
        Ok(oldest) => {
            let age_ms = oldest.map(|at| now_ms.saturating_sub(at).max(0)).unwrap_or(0);
            metrics::gauge!(SAGA_RETENTION_OLDEST_FINISHED_SECONDS).set(age_ms as f64 / 1000.0);
        }
        Err(e) => tracing::debug!(error = %e, "reading the oldest finished saga failed"),
    }
    // What changes slowly, once a minute rather than every batch: the backlog's count, and the
    // few rows of other kinds (receipts have no index on their time: a look reads them all).
    if occasional_at_ms.is_none_or(|at| now_ms.saturating_sub(at) >= OCCASIONAL_EVERY_MS) {
        *occasional_at_ms = Some(now_ms);
        occasional(store, config, now_ms).await;
    }
    purged.sagas >= u64::from(config.batch) || deliveries.deliveries >= u64::from(config.batch)
}

/// One batch of finished sagas deleted — written to the archive first when there is one.
async fn purge_sagas(store: &dyn RetentionStore, config: &RetentionConfig, now_ms: i64) -> Result<Purged, String> {
    let Some(archive) = &config.archive else {
        return store.sagas_purge(now_ms, config.retention_ms, config.batch).await.map_err(|e| e.to_string());
    };
    let due = store.sagas_due(now_ms, config.retention_ms, config.batch).await.map_err(|e| e.to_string())?;
    if due.is_empty() {
        return Ok(Purged::default());
    }
    let written = archive.write(&due, now_ms).await.map_err(|e| e.to_string())?;
    store.sagas_purge_ids(&written, now_ms, config.retention_ms).await.map_err(|e| e.to_string())
}

/// The backlog counted, and finished bulk jobs, deleted tenants and inbound webhook receipts
/// deleted on the same clock (receipts never sooner than a day: a CRM may replay a webhook for
/// hours).
async fn occasional(store: &dyn RetentionStore, config: &RetentionConfig, now_ms: i64) {
    match store.sagas_overdue(now_ms, config.retention_ms, BACKLOG_COUNT_CAP).await {
        Ok(overdue) => metrics::gauge!(SAGA_RETENTION_BACKLOG).set(overdue as f64),
        Err(e) => tracing::debug!(error = %e, "counting the sagas past their retention failed"),
    }
    let cut_ms = now_ms.saturating_sub(config.retention_ms);
    let receipts_cut_ms = cut_ms.min(now_ms.saturating_sub(RECEIPTS_KEPT_MIN_MS));
    for (kind, purged) in [
        ("job", store.jobs_purge(cut_ms, SMALL_PURGE_PER_LOOK).await),
        ("tenant", store.tenants_purge(cut_ms, SMALL_PURGE_PER_LOOK, now_ms).await),
        ("webhook_receipt", store.webhook_receipts_purge(receipts_cut_ms, config.batch).await),
    ] {
        match purged {
            Ok(n) => metrics::counter!(SAGA_RETENTION_DELETED_TOTAL, "kind" => kind).increment(n),
            Err(e) => tracing::warn!(error = %e, kind, "deleting past their retention failed; trying again later"),
        }
    }
}

fn count(purged: &Purged) {
    for (kind, n) in [
        ("saga", purged.sagas),
        ("history", purged.history),
        ("signal", purged.signals),
        ("callback", purged.callbacks),
    ] {
        metrics::counter!(SAGA_RETENTION_DELETED_TOTAL, "kind" => kind).increment(n);
    }
}

#[cfg(test)]
mod tests;
