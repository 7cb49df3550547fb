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
//! loses it after [`RETENTION_LEASE_TTL_MS`]. It deletes in batches, one transaction each,
//! oldest finished first, paced two ways:
//! - *Keeping up* (the oldest saga still kept is within [`KEEP_UP_WINDOW_MS`] of its retention):
//!   batches of [`RetentionConfig::batch`] with a pause between full batches (measured on
//!   PostgreSQL: deleting 5,000 sagas a second beside saga3 at c=64 cost it 12%; the default
//!   pace allows 2,000 a second). A backlog that lasts — [`FULL_BATCHES_PER_HALVING`] full
//!   batches in a row — halves the pause, and each as many more halve it again, down to a
//!   sixteenth, so a cleaner under sustained load keeps up with what finishes instead of falling
//!   behind for good (measured: at the full pause it deleted about 1,000 sagas a second beside
//!   saga3 finishing 1,800); the first batch that is not full restores it.
//! - *Catching up* on an older backlog (retention just turned on or shortened, the cleaner
//!   stopped a while): batches of [`CATCH_UP_BATCH`], busy at most one part in [`CATCH_UP_DUTY`]
//!   of the time, so the engine's claims and commits keep their latency (at full pace a
//!   backlog's deletes lengthened saga3's p99 by a quarter on PostgreSQL and doubled it on
//!   SQLite). Unless sagas come due faster than that: the cleaner counts those each minute and
//!   then deletes a quarter faster than they come, so no backlog grows for good.
//!
//! While nothing is due it looks again every half retention, at most every minute. Metrics:
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
/// Once the oldest finished saga still kept is this far past its retention, the cleaner is
/// catching up on a backlog (retention newly turned on or shortened, the cleaner stopped for a
/// while) rather than keeping up with what finishes, and goes gently.
pub const KEEP_UP_WINDOW_MS: i64 = 5 * 60_000;
/// While catching up, the cleaner deletes for at most one part in this many of its time.
pub const CATCH_UP_DUTY: u32 = 20;
/// Sagas per batch while catching up, at most: short transactions, so a claim never waits long
/// behind one.
pub const CATCH_UP_BATCH: u32 = 100;
/// ... and at least.
pub const CATCH_UP_BATCH_MIN: u32 = 5;
/// How long a catching-up batch's delete should take at most: the batch halves while it takes
/// longer (on SQLite the one writer waits behind it; 100 sagas held it about 40 ms beside
/// saga3, longer than a tenth of the engine's p99).
pub const CATCH_UP_HOLD: Duration = Duration::from_millis(5);
/// The most the backlog is counted up to, for each kind of retention (counting a million took
/// a core for a third of a second, and lengthened the engine's slowest commits beside it).
const BACKLOG_COUNT_CAP: u32 = 100_000;
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
    let mut pacer = Pacer::new(&config);
    loop {
        let started = std::time::Instant::now();
        let looked = tick(store.as_ref(), clock.as_ref(), &config, &mut pacer).await;
        // The minute's count is not the batch's work: a long one must not stop the batches.
        let busy = started.elapsed().saturating_sub(std::mem::take(&mut pacer.occasional_took));
        let wait = pacer.wait(&config, looked, busy);
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

/// What one look found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Looked {
    /// Nothing more is due (or this instance does not hold the lease, or the store failed).
    Done,
    /// A full batch went, with the oldest due close to its retention: keeping up with what
    /// finishes.
    KeepingUp,
    /// A full batch went from a backlog older than [`KEEP_UP_WINDOW_MS`]: catching up.
    CatchingUp,
}

/// How fast the cleaner goes: the pause after each look.
#[derive(Debug, Default)]
struct Pacer {
    /// Full batches in a row while keeping up.
    full_in_a_row: u32,
    /// How many sagas came due a second over the last counted minute.
    coming_due_per_s: f64,
    /// When the backlog was last counted (and the other kinds purged).
    occasional_at_ms: Option<i64>,
    /// Sagas the last look deleted.
    deleted: u64,
    /// How long the last look's once-a-minute work took.
    occasional_took: Duration,
    /// Sagas the next catching-up batch deletes: halved while a batch takes longer than
    /// [`CATCH_UP_HOLD`], doubled back while one takes less than half of it, within
    /// `catch_up_least..=catch_up_most`.
    catch_up_batch: u32,
    catch_up_least: u32,
    /// [`CATCH_UP_BATCH`], or the configured batch when that is smaller.
    catch_up_most: u32,
}

impl Pacer {
    fn new(config: &RetentionConfig) -> Self {
        let most = config.batch.clamp(1, CATCH_UP_BATCH);
        Pacer {
            catch_up_batch: most,
            catch_up_least: CATCH_UP_BATCH_MIN.min(most),
            catch_up_most: most,
            ..Pacer::default()
        }
    }

    /// A catching-up batch's delete took `took`: the next is smaller or larger.
    fn held(&mut self, took: Duration) {
        if took > CATCH_UP_HOLD {
            self.catch_up_batch = (self.catch_up_batch / 2).max(self.catch_up_least);
        } else if took < CATCH_UP_HOLD / 2 {
            self.catch_up_batch = self.catch_up_batch.saturating_mul(2).min(self.catch_up_most);
        }
    }

    /// The wait after a look that took `busy`.
    ///
    /// Keeping up, a fixed pause that halves while the backlog lasts (see [`pace`]). Catching
    /// up, the cleaner deletes for at most one part in [`CATCH_UP_DUTY`] of its time, in batches
    /// of [`CATCH_UP_BATCH`], so the engine's own commits keep the database — unless sagas come
    /// due faster than that deletes them: then it deletes a quarter faster than they come, so
    /// the backlog still shrinks.
    fn wait(&mut self, config: &RetentionConfig, looked: Looked, busy: Duration) -> Duration {
        match looked {
            Looked::Done => {
                self.full_in_a_row = 0;
                config.idle()
            }
            Looked::KeepingUp => {
                self.full_in_a_row = self.full_in_a_row.saturating_add(1);
                pace(config.pause, self.full_in_a_row)
            }
            Looked::CatchingUp => {
                self.full_in_a_row = 0;
                catch_up_pause(busy, self.deleted, self.coming_due_per_s)
            }
        }
    }
}

/// The pause after a catching-up look that took `busy` and deleted `deleted` sagas, while
/// `coming_due_per_s` sagas come due a second.
fn catch_up_pause(busy: Duration, deleted: u64, coming_due_per_s: f64) -> Duration {
    let duty = busy.saturating_mul(CATCH_UP_DUTY.saturating_sub(1));
    let needed_per_s = coming_due_per_s * 1.25;
    let pause = if needed_per_s > 0.0 && deleted > 0 {
        // One look a `deleted / needed` seconds deletes them as fast as needed.
        let period = Duration::from_secs_f64((deleted as f64 / needed_per_s).min(RETENTION_IDLE_MAX.as_secs_f64()));
        duty.min(period.saturating_sub(busy))
    } else {
        duty
    };
    pause.min(RETENTION_IDLE_MAX)
}

/// The pause after the `full_in_a_row`th full batch in a row: halved every
/// [`FULL_BATCHES_PER_HALVING`] of them, to a sixteenth at most.
fn pace(pause: Duration, full_in_a_row: u32) -> Duration {
    let halvings = (full_in_a_row / FULL_BATCHES_PER_HALVING).min(4);
    pause / 2u32.pow(halvings)
}

/// One look: when this instance holds the lease, one batch deleted.
async fn tick(store: &dyn RetentionStore, clock: &dyn Clock, config: &RetentionConfig, pacer: &mut Pacer) -> Looked {
    let now_ms = clock.now_ms();
    pacer.deleted = 0;
    match store.singleton_hold(RETENTION_LEASE, &config.worker_id, now_ms, RETENTION_LEASE_TTL_MS).await {
        Ok(true) => {}
        Ok(false) => return Looked::Done,
        Err(e) => {
            tracing::warn!(error = %e, "the retention lease could not be taken; trying again later");
            return Looked::Done;
        }
    }
    // How far behind: the oldest saga on the default retention, past it by more than the
    // window, is a backlog to catch up on in short batches.
    let catching_up = match store.oldest_finished_ms().await {
        Ok(oldest) => {
            let age_ms = oldest.map(|at| now_ms.saturating_sub(at).max(0)).unwrap_or(0);
            metrics::gauge!(SAGA_RETENTION_OLDEST_FINISHED_SECONDS).set(age_ms as f64 / 1000.0);
            age_ms.saturating_sub(config.retention_ms) > KEEP_UP_WINDOW_MS
        }
        Err(e) => {
            tracing::debug!(error = %e, "reading the oldest finished saga failed");
            false
        }
    };
    let batch = if catching_up { pacer.catch_up_batch } else { config.batch };
    let purge_started = std::time::Instant::now();
    let purged = match purge_sagas(store, config, now_ms, batch).await {
        Ok(purged) => purged,
        Err(e) => {
            tracing::warn!(error = %e, "deleting finished sagas failed; trying again later");
            return Looked::Done;
        }
    };
    count(&purged);
    pacer.deleted = purged.sagas;
    if catching_up {
        let took = purge_started.elapsed();
        tracing::debug!(batch, deleted = purged.sagas, took_ms = took.as_secs_f64() * 1000.0, "caught up a batch");
        pacer.held(took);
    }
    let succeeded_before_ms = now_ms.saturating_sub(config.retention_ms);
    let dead_before_ms = now_ms.saturating_sub(config.dead_letter_retention_ms);
    let deliveries = match store.deliveries_purge(succeeded_before_ms, dead_before_ms, now_ms, batch).await {
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
    // What changes slowly, once a minute rather than every batch: the backlog's count, how
    // many came due, and the few rows of other kinds (receipts have no index on their time: a
    // look reads them all).
    let since_ms = pacer.occasional_at_ms;
    if since_ms.is_none_or(|at| now_ms.saturating_sub(at) >= OCCASIONAL_EVERY_MS) {
        pacer.occasional_at_ms = Some(now_ms);
        let started = std::time::Instant::now();
        occasional(store, config, now_ms, since_ms, pacer).await;
        pacer.occasional_took = started.elapsed();
    }
    let full = purged.sagas >= u64::from(batch) || deliveries.deliveries >= u64::from(batch);
    match (full, catching_up) {
        (false, _) => Looked::Done,
        (true, false) => Looked::KeepingUp,
        (true, true) => Looked::CatchingUp,
    }
}

/// One batch of finished sagas deleted — written to the archive first when there is one.
async fn purge_sagas(
    store: &dyn RetentionStore,
    config: &RetentionConfig,
    now_ms: i64,
    batch: u32,
) -> Result<Purged, String> {
    let Some(archive) = &config.archive else {
        return store.sagas_purge(now_ms, config.retention_ms, batch).await.map_err(|e| e.to_string());
    };
    let due = store.sagas_due(now_ms, config.retention_ms, batch).await.map_err(|e| e.to_string())?;
    if due.is_empty() {
        return Ok(Purged::default());
    }
    let written = archive.write(&due, now_ms).await.map_err(|e| e.to_string())?;
    store.sagas_purge_ids(&written, now_ms, config.retention_ms).await.map_err(|e| e.to_string())
}

/// The backlog counted, and finished bulk jobs, deleted tenants and inbound webhook receipts
/// deleted on the same clock (receipts never sooner than a day: a CRM may replay a webhook for
/// hours).
async fn occasional(
    store: &dyn RetentionStore,
    config: &RetentionConfig,
    now_ms: i64,
    since_ms: Option<i64>,
    pacer: &mut Pacer,
) {
    match store.sagas_overdue(i64::MIN, now_ms, config.retention_ms, BACKLOG_COUNT_CAP).await {
        Ok(overdue) => metrics::gauge!(SAGA_RETENTION_BACKLOG).set(overdue as f64),
        Err(e) => tracing::debug!(error = %e, "counting the sagas past their retention failed"),
    }
    // How fast sagas come due, over the time since the last count (the first: the last minute).
    let since_ms = since_ms.unwrap_or(now_ms.saturating_sub(OCCASIONAL_EVERY_MS));
    let span_ms = now_ms.saturating_sub(since_ms);
    if span_ms > 0 {
        match store.sagas_overdue(since_ms, now_ms, config.retention_ms, BACKLOG_COUNT_CAP).await {
            Ok(came) => pacer.coming_due_per_s = came as f64 * 1000.0 / span_ms as f64,
            Err(e) => tracing::debug!(error = %e, "counting the sagas that came due failed"),
        }
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
