//! The outbox in memory: subscriptions, the events commits wrote, and one delivery per event
//! and subscription that wants it (fanned out by the stores' one matcher, [`Subscribers`]), with the dispatcher's store — claims leased and fenced newest event
//! first, attempts recorded under their token, hand-backs, the backlog, disabling. Every
//! recorded attempt is kept for the checker.

use std::collections::BTreeMap;

use async_trait::async_trait;
use saga_store::{
    ClaimedDelivery, DeliveryAttemptRecord, DeliveryAttemptResult, DeliveryBacklog, DeliveryClaimParams,
    DeliveryRecord, DeliveryStatus, DispatchStore, OutboxEvent, StoreResult, Subscribers, SubscriptionRecord,
    SubscriptionStatus,
};
use uuid::Uuid;

use super::{JournalKind, MemoryStore, Tables};

/// The outbox's tables.
#[derive(Default)]
pub(crate) struct Outbox {
    subscriptions: BTreeMap<Uuid, SubscriptionRecord>,
    /// Events in commit order, each with the journal number of its commit.
    events: Vec<(OutboxEvent, u64)>,
    /// Deliveries by their number (their order of creation).
    deliveries: BTreeMap<u64, Delivery>,
}

/// A delivery row and every attempt recorded for it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub record: DeliveryRecord,
    pub fencing_token: i64,
    pub lease_owner: Option<String>,
    /// The event's index in commit order.
    pub event: usize,
    pub attempts: Vec<DeliveryAttemptRecord>,
}

/// What the checker reads of the outbox at the end of a run.
#[derive(Clone, Debug, Default)]
pub struct OutboxView {
    pub subscriptions: Vec<SubscriptionRecord>,
    /// Committed events in order, with the saga whose commit wrote each and its journal number.
    pub events: Vec<(OutboxEvent, u64)>,
    pub deliveries: Vec<Delivery>,
}

impl MemoryStore {
    /// Adds a subscription (the simulation sets its receivers up before the run).
    pub fn subscribe(&self, subscription: SubscriptionRecord) {
        if let Ok(mut tables) = self.tables() {
            tables.outbox.subscriptions.insert(subscription.id, subscription);
        }
    }

    /// The outbox as it stands.
    pub fn outbox(&self) -> OutboxView {
        let Ok(tables) = self.tables() else { return OutboxView::default() };
        let outbox = &tables.outbox;
        OutboxView {
            subscriptions: outbox.subscriptions.values().cloned().collect(),
            events: outbox.events.clone(),
            deliveries: outbox.deliveries.values().cloned().collect(),
        }
    }

    /// Writes a commit's events with a delivery for each active subscription that wants one, in
    /// the commit's step.
    pub(crate) fn record_outbox(&self, tables: &mut Tables, saga_id: Uuid, outbox: &[OutboxEvent]) {
        for event in outbox {
            self.journal_push(tables, saga_id, JournalKind::Outbox { event_type: event.event_type.clone() });
            let seq = tables.journal.last().map_or(0, |entry| entry.seq);
            fan_out(&mut tables.outbox, event, seq, self.bugs().unfiltered_fan_out);
        }
    }
}

fn fan_out(outbox: &mut Outbox, event: &OutboxEvent, seq: u64, unfiltered: bool) {
    let active = outbox.subscriptions.values().filter(|s| s.status == SubscriptionStatus::Active);
    let wanting: Vec<Uuid> = if unfiltered {
        active.map(|s| s.id).collect()
    } else {
        Subscribers::new(active.map(|s| (s.id, s.tenant_id.clone(), s.events.clone()))).of(event)
    };
    if wanting.is_empty() {
        return;
    }
    let index = outbox.events.len();
    outbox.events.push((event.clone(), seq));
    for subscription_id in wanting {
        let number = outbox.deliveries.len() as u64 + 1;
        let record = DeliveryRecord {
            // Numbered, not random: claims order ties by id, and a seed must replay exactly.
            id: Uuid::from_u128(u128::from(number)),
            event_id: event.id,
            subscription_id,
            event_type: event.event_type.clone(),
            tenant_id: event.tenant_id.clone(),
            status: DeliveryStatus::Pending,
            attempts: 0,
            attempts_before_replay: 0,
            next_attempt_at_ms: event.at_ms,
            last_error: None,
            created_at_ms: event.at_ms,
            delivered_at_ms: None,
        };
        let delivery = Delivery { record, fencing_token: 0, lease_owner: None, event: index, attempts: Vec::new() };
        outbox.deliveries.insert(number, delivery);
    }
}

fn number_of(id: Uuid) -> u64 {
    id.as_u128() as u64
}

#[async_trait]
impl DispatchStore for MemoryStore {
    async fn delivery_claim_due(&self, params: &DeliveryClaimParams) -> StoreResult<Vec<ClaimedDelivery>> {
        let early = self.bugs().early_delivery_claims;
        let mut tables = self.tables()?;
        let outbox = &mut tables.outbox;
        let active = |id: &Uuid| outbox.subscriptions.get(id).is_some_and(|s| s.status == SubscriptionStatus::Active);
        let mut due: Vec<(i64, u64)> = outbox
            .deliveries
            .iter()
            .filter(|(_, d)| d.record.status == DeliveryStatus::Pending)
            .filter(|(_, d)| early || d.record.next_attempt_at_ms <= params.now_ms)
            .filter(|(_, d)| !params.skip_subscriptions.contains(&d.record.subscription_id))
            .filter(|(_, d)| active(&d.record.subscription_id))
            .map(|(number, d)| (d.record.created_at_ms, *number))
            .collect();
        // Newest event first.
        due.sort_by_key(|key| std::cmp::Reverse(*key));
        due.truncate(params.limit.min(saga_store::DELIVERY_CLAIM_MAX) as usize);
        let mut claimed = Vec::with_capacity(due.len());
        for (_, number) in due {
            let Some(delivery) = outbox.deliveries.get_mut(&number) else { continue };
            delivery.fencing_token += 1;
            delivery.lease_owner = Some(params.worker_id.clone());
            delivery.record.next_attempt_at_ms = params.now_ms + params.lease_ttl_ms;
            let (event, _) = &outbox.events[delivery.event];
            let Some(subscription) = outbox.subscriptions.get(&delivery.record.subscription_id) else { continue };
            claimed.push(ClaimedDelivery {
                delivery: delivery.record.clone(),
                fencing_token: delivery.fencing_token,
                event_data: event.data.clone(),
                event_at_ms: event.at_ms,
                event_expires_at_ms: event.expires_at_ms,
                subscription: subscription.clone(),
            });
        }
        Ok(claimed)
    }

    async fn delivery_attempts_record(&self, results: &[DeliveryAttemptResult]) -> StoreResult<Vec<bool>> {
        let mut tables = self.tables()?;
        let outbox = &mut tables.outbox;
        let mut recorded = Vec::with_capacity(results.len());
        for result in results {
            let number = number_of(result.id);
            let Some(delivery) = outbox.deliveries.get_mut(&number).filter(|d| d.fencing_token == result.fencing_token)
            else {
                recorded.push(false);
                continue;
            };
            let record = &mut delivery.record;
            record.status = result.status;
            record.attempts += 1;
            record.next_attempt_at_ms = result.next_attempt_at_ms;
            record.last_error = result.attempt.error.clone();
            if result.status == DeliveryStatus::Succeeded {
                record.delivered_at_ms = Some(result.attempt.at_ms);
            }
            delivery.lease_owner = None;
            delivery.attempts.push(DeliveryAttemptRecord { n: record.attempts, ..result.attempt.clone() });
            if let Some(subscription) = outbox.subscriptions.get_mut(&record.subscription_id) {
                if result.status == DeliveryStatus::Succeeded {
                    subscription.failing_since_ms = None;
                } else if subscription.failing_since_ms.is_none() {
                    subscription.failing_since_ms = Some(result.attempt.at_ms);
                }
            }
            recorded.push(true);
        }
        Ok(recorded)
    }

    async fn delivery_release(&self, released: &[(Uuid, i64)], due_at_ms: i64) -> StoreResult<()> {
        let mut tables = self.tables()?;
        for (id, token) in released {
            if let Some(delivery) = tables.outbox.deliveries.get_mut(&number_of(*id)) {
                if delivery.fencing_token == *token && delivery.record.status == DeliveryStatus::Pending {
                    delivery.lease_owner = None;
                    delivery.record.next_attempt_at_ms = due_at_ms;
                }
            }
        }
        Ok(())
    }

    async fn delivery_backlog(&self) -> StoreResult<Vec<DeliveryBacklog>> {
        let tables = self.tables()?;
        let mut backlog: BTreeMap<Uuid, DeliveryBacklog> = BTreeMap::new();
        for delivery in tables.outbox.deliveries.values().filter(|d| d.record.status == DeliveryStatus::Pending) {
            let record = &delivery.record;
            let entry = backlog.entry(record.subscription_id).or_insert(DeliveryBacklog {
                subscription_id: record.subscription_id,
                pending: 0,
                oldest_created_at_ms: record.created_at_ms,
            });
            entry.pending += 1;
            entry.oldest_created_at_ms = entry.oldest_created_at_ms.min(record.created_at_ms);
        }
        Ok(backlog.into_values().collect())
    }

    async fn subscriptions_disable_failing(
        &self,
        failing_since_before_ms: i64,
        now_ms: i64,
        report: &(dyn for<'a> Fn(&'a SubscriptionRecord) -> OutboxEvent + Send + Sync),
    ) -> StoreResult<Vec<SubscriptionRecord>> {
        let mut tables = self.tables()?;
        let mut disabled = Vec::new();
        for subscription in tables.outbox.subscriptions.values_mut() {
            let failing = subscription.failing_since_ms.is_some_and(|since| since <= failing_since_before_ms);
            if subscription.status == SubscriptionStatus::Active && failing {
                subscription.status = SubscriptionStatus::Disabled;
                subscription.updated_at_ms = now_ms;
                disabled.push(subscription.clone());
            }
        }
        for subscription in &disabled {
            let event = report(subscription);
            let seq = self.sequencer_next();
            fan_out(&mut tables.outbox, &event, seq, false);
        }
        Ok(disabled)
    }
}
