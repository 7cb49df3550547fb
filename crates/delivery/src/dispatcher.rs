//! The dispatcher: claims due deliveries and sends them, each attempt its own task.
//!
//! Design note. Safe to run in every instance at once: a claim leases deliveries (`SKIP
//! LOCKED`, a fencing token bumped per claim) and an attempt is recorded only under its token,
//! so two dispatchers never run the same attempt and a crashed one's deliveries are claimed
//! again when their lease ends (at least once, same `webhook-id`). One destination never holds
//! up the others: at most [`DispatcherConfig::per_subscription_max`] attempts per subscription
//! are in flight, and a claim leaves out the subscriptions at that cap, so a slow or failing
//! endpoint fills only its own slots.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_runtime::{Clock, SystemClock};
use saga_store::{
    ClaimedDelivery, DeliveryAttemptRecord, DeliveryAttemptResult, DeliveryClaimParams, DeliveryStatus, Destination,
    DispatchStore, SubscriptionRecord,
};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::schedule::RetrySchedule;
use crate::send::{self, Attempted, WebhookTransport};

/// Claimed deliveries held at most, waiting for a slot of their destination.
pub const WAITING_MAX: usize = 256;

/// Settings of one dispatcher.
#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    pub worker_id: String,
    pub schedule: RetrySchedule,
    /// One attempt's time limit.
    pub attempt_timeout_ms: u64,
    /// Attempts in flight at once.
    pub concurrency: u32,
    /// Attempts in flight at once for one subscription.
    pub per_subscription_max: u32,
    /// How long a claim holds a delivery; a dispatcher that dies lets it go after this.
    pub lease_ttl_ms: i64,
    /// How often due deliveries are looked for.
    pub poll_interval_ms: u64,
    /// Networks no destination may reach (`SAGAPLANE_HTTP_DENY`, as for steps).
    pub deny: egress::Networks,
    /// Internal networks a tenant's subscriptions may reach all the same
    /// (`SAGAPLANE_HTTP_ALLOW`); every other internal address is refused to them.
    pub tenant_allow: egress::Networks,
    /// Subscriptions of no tenant (the operator's) may go through the environment's proxy
    /// (`SAGAPLANE_HTTP_ENV_PROXY`); a tenant's never do.
    pub env_proxy: bool,
    /// The subject prefix of a tenant's own NATS subscriptions (`SAGAPLANE_NATS_TENANT_PREFIX`),
    /// checked again at every attempt.
    pub nats_tenant_prefix: String,
    /// A subscription whose attempts have all failed for this long is disabled
    /// (`SAGAPLANE_DELIVERY_DISABLE_AFTER`).
    pub disable_after_ms: u64,
    /// Consecutive failed attempts that open a destination's breaker (0: never).
    pub breaker_failures: u32,
    /// How long an open breaker keeps the destination's deliveries waiting.
    pub breaker_cool_down_ms: u64,
}

impl DispatcherConfig {
    pub fn new(worker_id: impl Into<String>, schedule: RetrySchedule) -> Self {
        DispatcherConfig {
            worker_id: worker_id.into(),
            schedule,
            attempt_timeout_ms: 10_000,
            concurrency: 64,
            per_subscription_max: 8,
            lease_ttl_ms: 60_000,
            poll_interval_ms: 250,
            deny: egress::Networks::default(),
            tenant_allow: egress::Networks::default(),
            env_proxy: false,
            nats_tenant_prefix: crate::nats::TENANT_PREFIX_DEFAULT.to_string(),
            disable_after_ms: 5 * 24 * 3_600_000,
            breaker_failures: 5,
            breaker_cool_down_ms: 30_000,
        }
    }
}

/// Delivers the outbox.
pub struct Dispatcher {
    store: Arc<dyn DispatchStore>,
    config: DispatcherConfig,
    egress: Egress,
    clock: Arc<dyn Clock>,
}

/// Where deliveries may go: one policy and one client for the operator's subscriptions, one
/// for tenants'. A tenant's own subscription (made with its key) is the tenant's; one the
/// operator made for a tenant (`managed`) has the operator's destination.
struct Egress {
    operator: (egress::AddressPolicy, reqwest::Client),
    tenant: (egress::AddressPolicy, reqwest::Client),
    /// Where webhooks go instead of the network, when set (the simulation's receivers); the
    /// address policies apply all the same.
    transport: Option<Arc<dyn WebhookTransport>>,
}

impl Egress {
    fn new(config: &DispatcherConfig) -> Self {
        let client = |policy: &egress::AddressPolicy, env_proxy: bool| {
            let mut settings = egress::ClientSettings::new(policy.clone());
            settings.env_proxy = env_proxy;
            settings.pool_max_idle_per_host = 16;
            egress::http_client(settings).unwrap_or_else(|_| reqwest::Client::new())
        };
        let operator = egress::AddressPolicy::operator(config.deny.clone());
        let tenant = egress::AddressPolicy::tenant(config.deny.clone(), config.tenant_allow.clone());
        Egress {
            operator: (operator.clone(), client(&operator, config.env_proxy)),
            tenant: (tenant.clone(), client(&tenant, false)),
            transport: None,
        }
    }

    fn of(&self, subscription: &SubscriptionRecord) -> &(egress::AddressPolicy, reqwest::Client) {
        if subscription.supplied_by_tenant().is_some() {
            &self.tenant
        } else {
            &self.operator
        }
    }
}

/// A running dispatcher; dropping the handle stops it like [`DispatcherHandle::shutdown`]
/// without waiting.
pub struct DispatcherHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl DispatcherHandle {
    /// Stops claiming, lets attempts in flight finish (at most one attempt timeout), and waits.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "the dispatcher ended abnormally");
        }
    }
}

/// Records attempts group-committed: whatever finished while the last batch was written.
struct AttemptWriter(Arc<dyn DispatchStore>);

#[async_trait::async_trait]
impl saga_store::BatchWrite for AttemptWriter {
    type Item = DeliveryAttemptResult;
    type Output = bool;

    async fn write(&self, batch: &[DeliveryAttemptResult]) -> saga_store::StoreResult<Vec<bool>> {
        self.0.delivery_attempts_record(batch).await
    }
}

struct Inner {
    store: Arc<dyn DispatchStore>,
    records: saga_store::Batcher<AttemptWriter>,
    config: DispatcherConfig,
    egress: Egress,
    nats: crate::nats::NatsConnections,
    /// Attempts in flight per subscription.
    in_flight: Mutex<BTreeMap<Uuid, u32>>,
    /// Destinations' breakers.
    breakers: Mutex<crate::breaker::Breakers>,
    /// Rate limits' token buckets, per subscription that has one.
    rate_buckets: Mutex<BTreeMap<Uuid, RateBucket>>,
    finished: Notify,
    /// The time every decision uses (due times, breakers, rate limits, attempt records): the
    /// wall clock, or the simulation's.
    clock: Arc<dyn Clock>,
}

impl Dispatcher {
    pub fn new(store: Arc<dyn DispatchStore>, config: DispatcherConfig) -> Self {
        let egress = Egress::new(&config);
        Dispatcher { store, config, egress, clock: Arc::new(SystemClock) }
    }

    /// Runs on `clock` instead of the wall clock (the runtime's, injected the same way).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Posts webhooks to `transport` instead of the network (the simulation's receivers).
    pub fn with_transport(mut self, transport: Arc<dyn WebhookTransport>) -> Self {
        self.egress.transport = Some(transport);
        self
    }

    pub fn start(self) -> DispatcherHandle {
        let (stop, stopped) = watch::channel(false);
        let (records, _writer) =
            saga_store::Batcher::start(AttemptWriter(self.store.clone()), saga_store::OnBatchError::WriteEachAlone);
        let inner = Arc::new(Inner {
            records,
            store: self.store,
            config: self.config,
            egress: self.egress,
            nats: crate::nats::NatsConnections::default(),
            in_flight: Mutex::new(BTreeMap::new()),
            breakers: Mutex::new(crate::breaker::Breakers::default()),
            rate_buckets: Mutex::new(BTreeMap::new()),
            finished: Notify::new(),
            clock: self.clock,
        });
        DispatcherHandle { stop, task: tokio::spawn(run(inner, stopped)) }
    }
}

async fn run(inner: Arc<Inner>, mut stopped: watch::Receiver<bool>) {
    crate::metrics::describe();
    let backlog = tokio::spawn(refresh_backlog(inner.clone(), stopped.clone()));
    let mut attempts = JoinSet::new();
    // Claimed for a subscription already at its cap: started as its attempts finish. A claim
    // leaves out subscriptions with `per_subscription_max` running or waiting, so few wait.
    let mut waiting: BTreeMap<Uuid, VecDeque<ClaimedDelivery>> = BTreeMap::new();
    let poll = Duration::from_millis(inner.config.poll_interval_ms.max(10));
    let mut failures = 0u32;
    // Subscriptions the last claim found work of or left out: when one of them has room again
    // and nothing waiting, it is worth claiming before the next poll. Otherwise a finished
    // attempt does not trigger a claim: claims come in batches, not one per delivery.
    let mut hot: Vec<Uuid> = Vec::new();
    let mut claim_now = true;
    // The next poll counts from the last claim, not from the last wake-up: attempts of a slow
    // destination finishing one after another would otherwise put it off again and again (the
    // simulation found it, seed 7000455).
    let mut last_claim = tokio::time::Instant::now();
    loop {
        // A dropped handle stops it too: `changed()` would return at once, every turn, forever
        // (the simulation found this as a dispatcher spinning after its process died).
        if *stopped.borrow() || stopped.has_changed().is_err() {
            break;
        }
        while attempts.try_join_next().is_some() {}
        start_waiting(&inner, &mut waiting, &mut attempts);
        // Deliveries waiting for their own destination's slot do not take the others' capacity
        // (a stuck destination's would, for as long as its attempts take); they are bounded by
        // WAITING_MAX instead.
        let queued: usize = waiting.values().map(VecDeque::len).sum();
        // Attempts waiting for an answer hold a slot; one answered and only being recorded (in
        // its batch) does not. Counting those too left a destination that answers at once waiting
        // for the next poll between its deliveries, while a stalled one held the other slots
        // (the simulation found it, seed 7000063).
        let in_flight = sending(&inner);
        let free = if queued >= WAITING_MAX {
            0
        } else {
            (inner.config.concurrency as usize).saturating_sub(in_flight).min(WAITING_MAX - queued)
        };
        let mut full = false;
        if claim_now {
            last_claim = tokio::time::Instant::now();
        }
        if claim_now && free > 0 {
            match claim(&inner, &waiting, free as u32).await {
                Ok((claimed, skipped)) => {
                    failures = 0;
                    full = claimed.len() == free;
                    hot = skipped;
                    for delivery in claimed {
                        hot.push(delivery.subscription.id);
                        waiting.entry(delivery.subscription.id).or_default().push_back(delivery);
                    }
                    start_waiting(&inner, &mut waiting, &mut attempts);
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "claiming deliveries failed; backing off");
                }
            }
        }
        if full && sending(&inner) < inner.config.concurrency as usize {
            claim_now = true;
            continue;
        }
        let wait = if failures > 0 { poll * 2u32.saturating_pow(failures.min(5)) } else { poll };
        claim_now = tokio::select! {
            _ = tokio::time::sleep_until(last_claim + wait) => true,
            _ = inner.finished.notified() => failures == 0 && has_room(&inner, &waiting, &hot),
            _ = stopped.changed() => false,
        };
    }
    // Claimed but not started: handed back for another dispatcher to take at once.
    let unstarted: Vec<(Uuid, i64)> =
        std::mem::take(&mut waiting).into_values().flatten().map(|c| (c.delivery.id, c.fencing_token)).collect();
    hand_back(inner.store.as_ref(), &unstarted, inner.clock.now_ms()).await;
    let drain = Duration::from_millis(inner.config.attempt_timeout_ms.saturating_add(1_000));
    if tokio::time::timeout(drain, async { while attempts.join_next().await.is_some() {} }).await.is_err() {
        // Their leases end and another dispatcher sends them again, same webhook-id.
        attempts.abort_all();
    }
    let _ = backlog.await;
}

/// Keeps the backlog gauges current, and disables subscriptions failing for too long, until the
/// dispatcher stops.
async fn refresh_backlog(inner: Arc<Inner>, mut stopped: watch::Receiver<bool>) {
    let mut reported = Vec::new();
    loop {
        match inner.store.delivery_backlog().await {
            Ok(backlog) => reported = crate::metrics::backlog(&backlog, &reported, inner.clock.now_ms()),
            Err(e) => tracing::debug!(error = %e, "reading the delivery backlog failed"),
        }
        disable_failing(&inner).await;
        tokio::select! {
            _ = tokio::time::sleep(crate::metrics::BACKLOG_REFRESH) => {}
            _ = stopped.changed() => return,
        }
        if *stopped.borrow() {
            return;
        }
    }
}

/// Disables the subscriptions whose attempts have all failed for `disable_after_ms`, each
/// reported as `subscription.disabled` to the other subscriptions of its scope.
async fn disable_failing(inner: &Inner) {
    let now = inner.clock.now_ms();
    let after_ms = inner.config.disable_after_ms;
    let before = now.saturating_sub(i64::try_from(after_ms).unwrap_or(i64::MAX));
    let failed_for = humantime_ms(after_ms);
    let report = move |subscription: &SubscriptionRecord| {
        saga_store::events::subscription_disabled(subscription, &failed_for, now)
    };
    match inner.store.subscriptions_disable_failing(before, now, &report).await {
        Ok(disabled) => {
            for subscription in disabled {
                tracing::warn!(subscription_id = %subscription.id, failing_since_ms = subscription.failing_since_ms,
                    "subscription disabled: every delivery attempt failed for SAGAPLANE_DELIVERY_DISABLE_AFTER");
            }
        }
        Err(e) => tracing::debug!(error = %e, "disabling failing subscriptions failed"),
    }
}

/// `432000000` → `5d`, for messages.
fn humantime_ms(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s")];
    UNITS
        .iter()
        .find(|(unit, _)| ms >= *unit && ms.is_multiple_of(*unit))
        .map(|(unit, suffix)| format!("{}{suffix}", ms / unit))
        .unwrap_or_else(|| format!("{ms}ms"))
}

/// Hands claimed deliveries back unattempted: due now, claimable by any dispatcher once their
/// destination lets attempts through. A hand-back that fails leaves them to their lease.
async fn hand_back(store: &dyn DispatchStore, released: &[(Uuid, i64)], due_at_ms: i64) {
    if released.is_empty() {
        return;
    }
    if let Err(e) = store.delivery_release(released, due_at_ms).await {
        tracing::warn!(error = %e, deliveries = released.len(), "handing claimed deliveries back failed; their leases end instead");
    }
}

/// Starts the waiting deliveries of every subscription with a free slot; those of a destination
/// whose breaker opened after their claim are handed back (in the background).
fn start_waiting(
    inner: &Arc<Inner>,
    waiting: &mut BTreeMap<Uuid, VecDeque<ClaimedDelivery>>,
    attempts: &mut JoinSet<()>,
) {
    let mut released = Vec::new();
    let Ok(mut in_flight) = inner.in_flight.lock() else { return };
    let Ok(mut buckets) = inner.rate_buckets.lock() else { return };
    let Ok(mut breakers) = inner.breakers.lock() else { return };
    let now = inner.clock.now_ms();
    for (subscription, queue) in waiting.iter_mut() {
        let running = in_flight.entry(*subscription).or_insert(0);
        while *running < inner.config.per_subscription_max {
            let Some(front) = queue.front() else { break };
            if !breakers.allows(*subscription, now) {
                // Its breaker opened after the claim: these go back unattempted, and claims leave
                // the destination out until its breaker lets an attempt through.
                released.extend(queue.drain(..).map(|c| (c.delivery.id, c.fencing_token)));
                break;
            }
            if let Some(per_s) = front.subscription.rate_limit_per_s {
                if !buckets.entry(*subscription).or_insert_with(|| RateBucket::new(per_s, now)).take(per_s, now) {
                    // Over its rate: it waits here (within its lease) for the next round.
                    break;
                }
            }
            let Some(delivery) = queue.pop_front() else { break };
            *running += 1;
            let inner = inner.clone();
            attempts.spawn(async move { attempt(&inner, delivery).await });
        }
    }
    waiting.retain(|_, queue| !queue.is_empty());
    in_flight.retain(|_, running| *running > 0);
    if !released.is_empty() {
        let (store, due_at_ms) = (inner.store.clone(), inner.clock.now_ms());
        tokio::spawn(async move { hand_back(store.as_ref(), &released, due_at_ms).await });
    }
}

/// A subscription's `rate_limit_per_s`, per process: a token bucket holding at most one second's
/// worth of attempts.
struct RateBucket {
    tokens: f64,
    /// When it was last refilled (ms, on the dispatcher's clock).
    refilled: i64,
}

impl RateBucket {
    fn new(per_s: u32, now: i64) -> Self {
        RateBucket { tokens: f64::from(per_s.max(1)), refilled: now }
    }

    /// Takes one token if there is one.
    fn take(&mut self, per_s: u32, now: i64) -> bool {
        let rate = f64::from(per_s.max(1));
        let elapsed = now.saturating_sub(self.refilled).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Attempts sent and not answered yet.
fn sending(inner: &Inner) -> usize {
    inner.in_flight.lock().map(|in_flight| in_flight.values().map(|n| *n as usize).sum()).unwrap_or(0)
}

/// Whether one of `hot` has a free slot and nothing waiting for it.
fn has_room(inner: &Inner, waiting: &BTreeMap<Uuid, VecDeque<ClaimedDelivery>>, hot: &[Uuid]) -> bool {
    let Ok(in_flight) = inner.in_flight.lock() else { return true };
    hot.iter().any(|id| {
        waiting.get(id).is_none_or(VecDeque::is_empty)
            && in_flight.get(id).copied().unwrap_or(0) < inner.config.per_subscription_max
    })
}

/// Claims up to `limit`, leaving out subscriptions with a full slot count (running and waiting)
/// or a breaker holding them; returns what it claimed and whom it left out.
async fn claim(
    inner: &Inner,
    waiting: &BTreeMap<Uuid, VecDeque<ClaimedDelivery>>,
    limit: u32,
) -> saga_store::StoreResult<(Vec<ClaimedDelivery>, Vec<Uuid>)> {
    let mut skip_subscriptions: Vec<Uuid> = match inner.in_flight.lock() {
        Ok(in_flight) => {
            let mut busy: BTreeMap<Uuid, usize> = in_flight.iter().map(|(id, n)| (*id, *n as usize)).collect();
            for (id, queue) in waiting {
                *busy.entry(*id).or_insert(0) += queue.len();
            }
            busy.into_iter()
                .filter(|(_, n)| *n >= inner.config.per_subscription_max as usize)
                .map(|(id, _)| id)
                .collect()
        }
        Err(_) => Vec::new(),
    };
    if let Ok(breakers) = inner.breakers.lock() {
        skip_subscriptions.extend(breakers.holding(inner.clock.now_ms()));
    }
    let params = DeliveryClaimParams {
        worker_id: inner.config.worker_id.clone(),
        limit,
        now_ms: inner.clock.now_ms(),
        lease_ttl_ms: inner.config.lease_ttl_ms,
        skip_subscriptions,
    };
    let claimed = inner.store.delivery_claim_due(&params).await?;
    Ok((claimed, params.skip_subscriptions))
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Sends one delivery and records what came of it.
async fn attempt(inner: &Inner, claimed: ClaimedDelivery) {
    let started_ms = inner.clock.now_ms();
    let expired = claimed.event_expires_at_ms.is_some_and(|at| at <= started_ms);
    let attempted = match expired {
        // An expired event is not sent (its moment has passed, e.g. a tracking session ended):
        // the delivery is dead, and the destination is not blamed for it.
        true => not_sent(format!(
            "the event expired at {}; not sent",
            rfc3339(claimed.event_expires_at_ms.unwrap_or_default())
        )),
        false => send_to_destination(inner, &claimed, started_ms).await,
    };
    if expired || attempted.definite {
        if let Ok(mut breakers) = inner.breakers.lock() {
            breakers.probe_undecided(claimed.subscription.id);
        }
    } else {
        breaker_record(inner, &claimed, &attempted);
    }
    // The destination's slot frees as soon as it has answered; recording waits for its batch.
    release_slot(inner, claimed.subscription.id);
    let result = attempt_result(inner, &claimed, &attempted, started_ms);
    let outcome = match result.status {
        DeliveryStatus::Succeeded => "delivered",
        DeliveryStatus::Pending => "retried",
        DeliveryStatus::Dead => "dead",
    };
    crate::metrics::attempt(&claimed.subscription.id.to_string(), outcome, attempted.duration_ms);
    record(inner, &claimed, result, attempted.error.as_deref()).await;
}

/// A delivery refused before anything was sent (a denied address, a subject outside the
/// tenant's prefix, an expired event): definite, retrying cannot help.
fn not_sent(error: String) -> Attempted {
    Attempted {
        delivered: false,
        definite: true,
        status_code: None,
        error: Some(error),
        retry_after_ms: None,
        duration_ms: 0,
    }
}

/// Sends the delivery to its subscription's destination, as the address policy of whose
/// destination it is allows: a signed webhook (through the transport when one is set) or a NATS
/// publish.
async fn send_to_destination(inner: &Inner, claimed: &ClaimedDelivery, started_ms: i64) -> Attempted {
    let timeout = Duration::from_millis(inner.config.attempt_timeout_ms);
    let (policy, client) = inner.egress.of(&claimed.subscription);
    match &claimed.subscription.destination {
        Destination::Url(url) => match (policy.denied_url(url), &inner.egress.transport) {
            (Some(error), _) => not_sent(error),
            (None, Some(transport)) => {
                send::through(transport.as_ref(), claimed, url, inner.clock.as_ref(), timeout).await
            }
            (None, None) => send::webhook(client, claimed, url, started_ms, timeout).await,
        },
        Destination::Nats { url, subject } => {
            let tenant = claimed.subscription.supplied_by_tenant();
            match crate::nats::subject_refusal(subject, tenant, &inner.config.nats_tenant_prefix) {
                Some(refusal) => not_sent(refusal),
                None => {
                    let destination = (url.as_str(), subject.as_str());
                    crate::nats::publish(&inner.nats, policy, claimed, destination, started_ms, timeout).await
                }
            }
        }
    }
}

/// What the attempt leaves the delivery as: succeeded, dead (a definite failure, or a retry that
/// would come after the event expires) or pending at the retry schedule's next time.
fn attempt_result(
    inner: &Inner,
    claimed: &ClaimedDelivery,
    attempted: &Attempted,
    started_ms: i64,
) -> DeliveryAttemptResult {
    let expires_at_ms = claimed.event_expires_at_ms;
    let round_attempt = claimed.delivery.attempts.saturating_sub(claimed.delivery.attempts_before_replay) + 1;
    let finished_ms = inner.clock.now_ms();
    let mut error = attempted.error.clone();
    let (status, next_attempt_at_ms) = if attempted.delivered {
        (DeliveryStatus::Succeeded, finished_ms)
    } else if attempted.definite {
        // Retrying cannot help (a denied address): dead now, for a replay once it is fixed.
        (DeliveryStatus::Dead, finished_ms)
    } else {
        match inner.config.schedule.after_failure(round_attempt, finished_ms, attempted.retry_after_ms) {
            // The next attempt would come after the event expires: dead now, not retried.
            (DeliveryStatus::Pending, next) if expires_at_ms.is_some_and(|at| next >= at) => {
                let expiry = rfc3339(expires_at_ms.unwrap_or_default());
                error = Some(format!("{}; not retried: the event expires at {expiry}", error.unwrap_or_default()));
                (DeliveryStatus::Dead, finished_ms)
            }
            scheduled => scheduled,
        }
    };
    DeliveryAttemptResult {
        id: claimed.delivery.id,
        fencing_token: claimed.fencing_token,
        status,
        next_attempt_at_ms,
        attempt: DeliveryAttemptRecord {
            n: round_attempt,
            at_ms: started_ms,
            status_code: attempted.status_code,
            error,
            duration_ms: attempted.duration_ms,
        },
    }
}

/// Records the attempt, fenced on the claim, in the next batch of records.
async fn record(inner: &Inner, claimed: &ClaimedDelivery, result: DeliveryAttemptResult, error: Option<&str>) {
    let dead = result.status == DeliveryStatus::Dead;
    match inner.records.submit(result).await.map(|(recorded, _)| recorded) {
        Ok(true) => {
            if dead {
                tracing::warn!(delivery_id = %claimed.delivery.id, subscription_id = %claimed.subscription.id,
                    error = error.unwrap_or(""), "delivery is dead after its last attempt");
            }
        }
        Ok(false) => {
            tracing::info!(delivery_id = %claimed.delivery.id, "attempt not recorded: the delivery was claimed again")
        }
        Err(e) => {
            tracing::warn!(delivery_id = %claimed.delivery.id, error = %e, "recording an attempt failed; the delivery will be sent again")
        }
    }
}

/// Feeds the attempt to its destination's breaker (a denied address is not the destination's
/// failure: nothing was sent).
fn breaker_record(inner: &Inner, claimed: &ClaimedDelivery, attempted: &Attempted) {
    if attempted.definite {
        return;
    }
    let cool_down_ms = i64::try_from(inner.config.breaker_cool_down_ms).unwrap_or(i64::MAX);
    let settings = (inner.config.breaker_failures, cool_down_ms);
    let subscription = claimed.subscription.id;
    let change = match inner.breakers.lock() {
        Ok(mut breakers) => breakers.record(subscription, attempted.delivered, settings, inner.clock.now_ms()),
        Err(_) => return,
    };
    match change {
        crate::breaker::BreakerChange::Opened => {
            tracing::warn!(subscription_id = %subscription, cool_down_ms = inner.config.breaker_cool_down_ms,
                error = attempted.error.as_deref().unwrap_or(""), "destination failing: its breaker opened");
            crate::metrics::breaker(&subscription.to_string(), true);
        }
        crate::breaker::BreakerChange::Closed => crate::metrics::breaker(&subscription.to_string(), false),
        crate::breaker::BreakerChange::None => {}
    }
}

fn release_slot(inner: &Inner, subscription: Uuid) {
    if let Ok(mut in_flight) = inner.in_flight.lock() {
        if let Some(n) = in_flight.get_mut(&subscription) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                in_flight.remove(&subscription);
            }
        }
    }
    inner.finished.notify_one();
}

#[cfg(test)]
mod tests {
    use super::RateBucket;

    #[test]
    fn a_rate_limit_allows_a_seconds_burst_then_paces() {
        let start = 1_000_000;
        let mut bucket = RateBucket::new(2, start);
        assert!(bucket.take(2, start) && bucket.take(2, start), "one second's worth at once");
        assert!(!bucket.take(2, start), "then none");
        assert!(!bucket.take(2, start + 400));
        assert!(bucket.take(2, start + 500), "one every half second at 2/s");
        assert!(bucket.take(2, start + 10_000) && bucket.take(2, start + 10_000));
        assert!(!bucket.take(2, start + 10_000), "idle time saves at most a second's worth");
    }
}
