//! Outbound delivery's store interface (docs/api.md, "Events out"): subscriptions, the outbox of
//! events and the deliveries made of them, claimed by dispatchers like sagas are by drivers.
//!
//! Design note. An event is written in the same transaction as the change it reports — a saga
//! reaching a terminal status (it rides on the engine's commit as [`OutboxEvent`]s), a tenant
//! moving (only if the move is applied), a custom event of `core.emit` — and only when some active
//! subscription wants it: each such subscription gets a `pending` delivery in that transaction.
//! So a change that rolls back emits nothing, and nothing committed is without its deliveries. A
//! dispatcher claims due deliveries (`SKIP LOCKED`, a lease, a fencing token bumped per claim —
//! two dispatchers never run the same attempt), newest event first, leaving out subscriptions it
//! already has enough in flight for; it records each attempt fenced on its token.

use async_trait::async_trait;
use serde_json::Value;
use uuid::Uuid;

use crate::StoreResult;

/// Deliveries claimed at most in one round.
pub const DELIVERY_CLAIM_MAX: u32 = 256;

/// An event about to be written with the change it reports.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEvent {
    /// Also the `webhook-id` of every delivery of it, on every attempt and replay.
    pub id: Uuid,
    pub event_type: String,
    /// Whose event it is: tenant-scoped subscriptions see only their tenant's.
    pub tenant_id: Option<String>,
    pub data: Value,
    pub at_ms: i64,
    /// Addressed to this subscription alone (whatever its filters), e.g. the CRM's outcome
    /// callback; None: to every active subscription that wants it.
    pub to_subscription: Option<Uuid>,
    /// After this, a delivery still pending is dead instead of sent (`core.emit`'s `expires_at`).
    pub expires_at_ms: Option<i64>,
}

impl OutboxEvent {
    pub fn new(event_type: &str, tenant_id: Option<&str>, data: Value, at_ms: i64) -> Self {
        OutboxEvent {
            id: Uuid::now_v7(),
            event_type: event_type.to_string(),
            tenant_id: tenant_id.map(str::to_string),
            data,
            at_ms,
            to_subscription: None,
            expires_at_ms: None,
        }
    }

    /// The same event addressed to one subscription alone.
    pub fn to(mut self, subscription: Uuid) -> Self {
        self.to_subscription = Some(subscription);
        self
    }

    /// Whether `subscription` gets a delivery of it (the subscription being active).
    pub fn is_for(&self, subscription: Uuid, tenant_id: Option<&str>, events: &[String]) -> bool {
        match self.to_subscription {
            Some(to) => to == subscription,
            None => {
                (tenant_id.is_none() || tenant_id == self.tenant_id.as_deref())
                    && events.iter().any(|filter| filter == "*" || *filter == self.event_type)
            }
        }
    }
}

/// The active subscriptions, indexed by the event types they want: the one place an event is
/// matched to the subscriptions that get a delivery of it, for every store (the rule itself is
/// [`OutboxEvent::is_for`]). A store builds it from its active subscriptions and fans out with
/// [`Subscribers::of`].
#[derive(Clone, Debug, Default)]
pub struct Subscribers {
    /// Subscriptions wanting one type, by that type; those with `*` under [`ANY_TYPE`].
    by_type: std::collections::HashMap<String, Vec<Subscriber>>,
    /// Every active subscription, for events addressed to one of them.
    all: std::collections::HashSet<Uuid>,
}

#[derive(Clone, Debug)]
struct Subscriber {
    id: Uuid,
    tenant_id: Option<String>,
}

/// The filter that wants every event type.
pub const ANY_TYPE: &str = "*";

impl Subscribers {
    /// From `(id, tenant scope, event-type filters)` of each active subscription.
    pub fn new(active: impl IntoIterator<Item = (Uuid, Option<String>, Vec<String>)>) -> Self {
        let mut subscribers = Subscribers::default();
        for (id, tenant_id, filters) in active {
            subscribers.all.insert(id);
            let mut filters = filters;
            filters.sort_unstable();
            filters.dedup();
            for filter in filters {
                let wanting = subscribers.by_type.entry(filter).or_default();
                wanting.push(Subscriber { id, tenant_id: tenant_id.clone() });
            }
        }
        subscribers
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The subscriptions that get a delivery of `event`, each once, in a stable order.
    pub fn of(&self, event: &OutboxEvent) -> Vec<Uuid> {
        // The common case, on every commit that reports an event: nobody subscribed.
        if self.all.is_empty() {
            return Vec::new();
        }
        if let Some(to) = event.to_subscription {
            return if self.all.contains(&to) { vec![to] } else { Vec::new() };
        }
        let candidates =
            [ANY_TYPE, event.event_type.as_str()].into_iter().filter_map(|key| self.by_type.get(key)).flatten();
        let mut ids: Vec<Uuid> =
            candidates.filter(|s| s.tenant_id.is_none() || s.tenant_id == event.tenant_id).map(|s| s.id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// Where a subscription's events go: exactly one of an HTTP(S) URL or a NATS JetStream subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Url(String),
    Nats { url: String, subject: String },
}

impl Destination {
    /// As the stores keep it: `(url, nats_url, nats_subject)`, exactly one destination set.
    pub fn columns(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
        match self {
            Destination::Url(url) => (Some(url), None, None),
            Destination::Nats { url, subject } => (None, Some(url), Some(subject)),
        }
    }

    /// Back from [`Self::columns`]; None when no destination is set (a corrupt row).
    pub fn from_columns(url: Option<String>, nats_url: Option<String>, nats_subject: Option<String>) -> Option<Self> {
        match (url, nats_url, nats_subject) {
            (Some(url), _, _) => Some(Destination::Url(url)),
            (None, Some(url), Some(subject)) => Some(Destination::Nats { url, subject }),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriptionStatus {
    Active,
    Disabled,
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::Disabled => "disabled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(SubscriptionStatus::Active),
            "disabled" => Some(SubscriptionStatus::Disabled),
            _ => None,
        }
    }
}

/// A subscription row. `secret` is what deliveries are signed with; `previous_secret` signs too
/// until `previous_secret_until_ms` (a rotation's overlap).
#[derive(Clone, Debug, PartialEq)]
pub struct SubscriptionRecord {
    pub id: Uuid,
    pub destination: Destination,
    /// `["*"]` or exact event types.
    pub events: Vec<String>,
    /// None: the admin's, sees every event.
    pub tenant_id: Option<String>,
    /// Made by the operator for its tenant: the tenant sees it, only the operator changes it,
    /// and its destination is checked as the operator's. False for a tenant's own (and for one
    /// of no tenant).
    pub managed: bool,
    pub status: SubscriptionStatus,
    pub rate_limit_per_s: Option<u32>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_until_ms: Option<i64>,
    /// When its attempts began failing with no success since (None: the last one succeeded).
    pub failing_since_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl SubscriptionRecord {
    /// The tenant that gave this subscription its destination: its own subscription's tenant,
    /// None for the operator's (including one `managed` for a tenant).
    pub fn supplied_by_tenant(&self) -> Option<&str> {
        self.tenant_id.as_deref().filter(|_| !self.managed)
    }
}

/// Fields a PATCH may change (None: unchanged).
#[derive(Clone, Debug, Default)]
pub struct SubscriptionPatch {
    pub events: Option<Vec<String>>,
    pub status: Option<SubscriptionStatus>,
    /// `Some(None)` removes the limit.
    pub rate_limit_per_s: Option<Option<u32>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(DeliveryStatus::Pending),
            "succeeded" => Some(DeliveryStatus::Succeeded),
            "dead" => Some(DeliveryStatus::Dead),
            _ => None,
        }
    }
}

/// A delivery row: one event to one subscription.
#[derive(Clone, Debug, PartialEq)]
pub struct DeliveryRecord {
    pub id: Uuid,
    pub event_id: Uuid,
    pub subscription_id: Uuid,
    pub event_type: String,
    pub tenant_id: Option<String>,
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// Attempts made before the last replay or recovery: the schedule starts again after them.
    pub attempts_before_replay: u32,
    pub next_attempt_at_ms: i64,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub delivered_at_ms: Option<i64>,
}

/// One attempt, as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct DeliveryAttemptRecord {
    pub n: u32,
    pub at_ms: i64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// `GET /v1/deliveries` filters.
#[derive(Clone, Debug, Default)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryStatus>,
    pub subscription_id: Option<Uuid>,
    /// Deliveries to this tenant's subscriptions only (what a tenant key sees; a tenant's
    /// event delivered to an operator's subscription is not the tenant's). Filtered in the
    /// query, before the page's limit.
    pub subscription_tenant_id: Option<String>,
    /// Page backwards from this id (newest first).
    pub before_id: Option<Uuid>,
    pub limit: u32,
}

/// `GET /v1/subscriptions` filters.
#[derive(Clone, Debug, Default)]
pub struct SubscriptionFilter {
    pub tenant_id: Option<String>,
    pub before_id: Option<Uuid>,
    pub limit: u32,
}

/// A claim of due deliveries.
#[derive(Clone, Debug)]
pub struct DeliveryClaimParams {
    pub worker_id: String,
    pub limit: u32,
    pub now_ms: i64,
    pub lease_ttl_ms: i64,
    /// Subscriptions this dispatcher has enough in flight for: none of theirs is claimed.
    pub skip_subscriptions: Vec<Uuid>,
}

/// A claimed delivery with what sending it needs.
#[derive(Clone, Debug)]
pub struct ClaimedDelivery {
    pub delivery: DeliveryRecord,
    pub fencing_token: i64,
    pub event_data: Value,
    pub event_at_ms: i64,
    /// When the event expires, if it does: due after that, the delivery is dead, not sent.
    pub event_expires_at_ms: Option<i64>,
    pub subscription: SubscriptionRecord,
}

/// Pending deliveries of one subscription, for the backlog gauges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryBacklog {
    pub subscription_id: Uuid,
    pub pending: u64,
    /// When the oldest pending delivery's event happened.
    pub oldest_created_at_ms: i64,
}

/// What came of an attempt, to record.
#[derive(Clone, Debug)]
pub struct DeliveryAttemptResult {
    pub id: Uuid,
    pub fencing_token: i64,
    /// `Succeeded`, `Dead`, or `Pending` with `next_attempt_at_ms`.
    pub status: DeliveryStatus,
    pub next_attempt_at_ms: i64,
    pub attempt: DeliveryAttemptRecord,
}

/// Subscriptions, events written outside a saga commit, and deliveries as operators see them:
/// what the API's routes use.
#[async_trait]
pub trait SubscriptionStore: Send + Sync + 'static {
    async fn subscription_create(&self, s: &SubscriptionRecord) -> StoreResult<()>;
    /// [`SubscriptionStore::subscription_create`] for a tenant's own subscription (not
    /// `managed`): [`crate::StoreError::Conflict`] when the tenant already has `tenant_max`
    /// of its own (checked and written atomically).
    async fn subscription_create_capped(&self, s: &SubscriptionRecord, tenant_max: u32) -> StoreResult<()>;
    /// Which of `ids` are subscriptions that exist (the metrics of the others are not shown).
    async fn subscriptions_existing(&self, ids: &[Uuid]) -> StoreResult<Vec<Uuid>>;
    /// Creates it, or — when one with its id exists — replaces its destination, filters, scope,
    /// status and secret (a subscription that configuration owns, like the CRM callback's).
    async fn subscription_put(&self, subscription: &SubscriptionRecord) -> StoreResult<()>;
    async fn subscription_get(&self, id: Uuid) -> StoreResult<SubscriptionRecord>;
    async fn subscription_list(&self, filter: &SubscriptionFilter) -> StoreResult<Vec<SubscriptionRecord>>;
    /// Setting `status: active` forgets its failures (`failing_since_ms` back to None).
    async fn subscription_patch(
        &self,
        id: Uuid,
        patch: &SubscriptionPatch,
        now_ms: i64,
    ) -> StoreResult<SubscriptionRecord>;
    /// Replaces the secret; the old one keeps signing until `previous_until_ms`.
    async fn subscription_rotate_secret(
        &self,
        id: Uuid,
        secret: &str,
        previous_until_ms: i64,
        now_ms: i64,
    ) -> StoreResult<SubscriptionRecord>;
    /// Deletes it; its pending deliveries end `dead` ("the subscription was deleted").
    async fn subscription_delete(&self, id: Uuid, now_ms: i64) -> StoreResult<()>;
    /// Writes events outside a saga commit (an operator's tenant change rides on its own
    /// transaction instead), each with a delivery per active subscription that wants it.
    async fn events_append(&self, events: &[OutboxEvent]) -> StoreResult<()>;
    async fn delivery_get(&self, id: Uuid) -> StoreResult<(DeliveryRecord, Vec<DeliveryAttemptRecord>)>;
    async fn delivery_list(&self, filter: &DeliveryFilter) -> StoreResult<Vec<DeliveryRecord>>;
    /// A `dead` delivery back to `pending`, due now, with a fresh attempt budget; Conflict
    /// unless it is dead.
    async fn delivery_replay(&self, id: Uuid, now_ms: i64) -> StoreResult<DeliveryRecord>;
    /// Puts back to pending at most `limit` of the subscription's dead deliveries created at
    /// `since_ms` or later, oldest first; returns how many, and whether dead ones remain.
    async fn deliveries_recover(
        &self,
        subscription_id: Uuid,
        since_ms: i64,
        limit: u32,
        now_ms: i64,
    ) -> StoreResult<(u64, bool)>;
}

/// What a dispatcher needs, and nothing else: claim due deliveries, record attempts, watch the
/// backlog, disable subscriptions that keep failing.
#[async_trait]
pub trait DispatchStore: Send + Sync + 'static {
    /// Claims due deliveries of active subscriptions, newest event first: leased to
    /// `worker_id`, token bumped. A disabled subscription's deliveries wait until it is active.
    async fn delivery_claim_due(&self, params: &DeliveryClaimParams) -> StoreResult<Vec<ClaimedDelivery>>;
    /// Records attempts in one transaction, each fenced on its token: false for one that
    /// another dispatcher has claimed since. A success clears its subscription's
    /// `failing_since_ms`; a failure sets it unless it is set.
    async fn delivery_attempts_record(&self, results: &[DeliveryAttemptResult]) -> StoreResult<Vec<bool>>;
    /// [`Self::delivery_attempts_record`] of one.
    async fn delivery_attempt_record(&self, result: &DeliveryAttemptResult) -> StoreResult<bool> {
        let recorded = self.delivery_attempts_record(std::slice::from_ref(result)).await?;
        Ok(recorded.first().copied().unwrap_or(false))
    }
    /// Hands claimed deliveries back unattempted, due at `due_at_ms` and claimable by any
    /// dispatcher at once (no attempt spent): each `(id, fencing_token)` only while it is still
    /// pending under that claim. For deliveries whose destination's breaker opened after they
    /// were claimed, and those still waiting when a dispatcher stops — instead of waiting out
    /// their lease.
    async fn delivery_release(&self, released: &[(Uuid, i64)], due_at_ms: i64) -> StoreResult<()>;
    /// Pending deliveries per subscription (those with any).
    async fn delivery_backlog(&self) -> StoreResult<Vec<DeliveryBacklog>>;
    /// Disables every active subscription failing since `failing_since_before_ms` or earlier and,
    /// in the same transaction, writes the event `report` makes of each (fanned out like any
    /// other). Returns the subscriptions it disabled: two sweeps at once disable each only once.
    async fn subscriptions_disable_failing(
        &self,
        failing_since_before_ms: i64,
        now_ms: i64,
        report: &(dyn for<'a> Fn(&'a SubscriptionRecord) -> OutboxEvent + Send + Sync),
    ) -> StoreResult<Vec<SubscriptionRecord>>;
}

/// Every delivery operation: the routes' and the dispatcher's.
pub trait DeliveryStore: SubscriptionStore + DispatchStore {}

impl<T: SubscriptionStore + DispatchStore + ?Sized> DeliveryStore for T {}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Subscribers::of` picks exactly the subscriptions `is_for` says, over every combination of
    /// scope, filters and address.
    #[test]
    fn the_index_matches_as_the_rule_says() {
        let tenants = [None, Some("t1".to_string()), Some("t2".to_string())];
        let filters: [&[&str]; 5] = [&["*"], &["saga.completed"], &["saga.failed", "*"], &["tenant.created"], &[]];
        let mut active = Vec::new();
        for tenant in &tenants {
            for wants in filters {
                let wants: Vec<String> = wants.iter().map(|s| s.to_string()).collect();
                active.push((Uuid::now_v7(), tenant.clone(), wants));
            }
        }
        let inactive = Uuid::now_v7();
        let subscribers = Subscribers::new(active.clone());
        let mut events = Vec::new();
        for tenant in &tenants {
            for kind in ["saga.completed", "saga.failed", "tenant.created", "custom.thing"] {
                events.push(OutboxEvent::new(kind, tenant.as_deref(), Value::Null, 1));
            }
        }
        events.push(OutboxEvent::new("custom.thing", Some("t1"), Value::Null, 1).to(active[3].0));
        events.push(OutboxEvent::new("custom.thing", None, Value::Null, 1).to(inactive));
        for event in &events {
            let mut expected: Vec<Uuid> = active
                .iter()
                .filter(|(id, tenant, wants)| event.is_for(*id, tenant.as_deref(), wants))
                .map(|a| a.0)
                .collect();
            expected.sort_unstable();
            assert_eq!(subscribers.of(event), expected, "{event:?}");
        }
        assert!(Subscribers::new(Vec::new()).of(&events[0]).is_empty());
    }
}
