//! Checks of outbound delivery: subscriptions, the outbox fan-out (with a change or not at all),
//! claims of due deliveries (newest first, once, fenced), attempts, replay and recovery.

use std::sync::Arc;

use saga_core::tenant::TenantStatus;
use saga_core::SagaState;
use serde_json::json;
use uuid::Uuid;

use super::fixtures::{claim_one, commit, create, definition, subscription};
use super::{db, ensure, CheckResult};
use crate::{
    CommitOutcome, DeliveryAttemptRecord, DeliveryAttemptResult, DeliveryClaimParams, DeliveryFilter, DeliveryStatus,
    Destination, OutboxEvent, Store, StoreError, SubscriptionPatch, SubscriptionRecord, SubscriptionStatus,
};

fn claim(worker: &str, limit: u32, now_ms: i64) -> DeliveryClaimParams {
    DeliveryClaimParams {
        worker_id: worker.into(),
        limit,
        now_ms,
        lease_ttl_ms: 30_000,
        skip_subscriptions: Vec::new(),
    }
}

async fn deliveries_of(store: &dyn Store, subscription: Uuid) -> Result<Vec<crate::DeliveryRecord>, String> {
    let filter = DeliveryFilter { subscription_id: Some(subscription), limit: 100, ..Default::default() };
    db(store.delivery_list(&filter).await)
}

pub async fn subscriptions_are_stored_patched_rotated_and_deleted(store: Arc<dyn Store>) -> CheckResult {
    let mut nats = subscription("unused", &["tenant.activated"], Some("acme"), 1);
    nats.destination = Destination::Nats { url: "nats://127.0.0.1:4222".into(), subject: "events.acme".into() };
    let web = subscription("http://127.0.0.1:9/hook", &["*"], None, 2);
    db(store.subscription_create(&nats).await)?;
    db(store.subscription_create(&web).await)?;
    ensure!(db(store.subscription_get(nats.id).await)? == nats, "read back as written");
    let all = db(store.subscription_list(&crate::SubscriptionFilter { limit: 10, ..Default::default() }).await)?;
    ensure!(all.len() == 2 && all[0].id == web.id, "newest first: {all:?}");
    let filter = crate::SubscriptionFilter { tenant_id: Some("acme".into()), limit: 10, ..Default::default() };
    ensure!(db(store.subscription_list(&filter).await)?.len() == 1, "by tenant");
    let patch = SubscriptionPatch {
        events: Some(vec!["saga.failed".into()]),
        status: Some(SubscriptionStatus::Disabled),
        rate_limit_per_s: Some(Some(5)),
    };
    let patched = db(store.subscription_patch(web.id, &patch, 3).await)?;
    ensure!(patched.events == vec!["saga.failed"] && patched.status == SubscriptionStatus::Disabled, "{patched:?}");
    ensure!(patched.rate_limit_per_s == Some(5) && patched.updated_at_ms == 3, "{patched:?}");
    let cleared = SubscriptionPatch { rate_limit_per_s: Some(None), ..Default::default() };
    ensure!(db(store.subscription_patch(web.id, &cleared, 4).await)?.rate_limit_per_s.is_none(), "limit removed");
    let rotated = db(store.subscription_rotate_secret(web.id, "whsec_new", 86_400_004, 4).await)?;
    ensure!(
        rotated.secret == "whsec_new" && rotated.previous_secret.as_deref() == Some(web.secret.as_str()),
        "rotated"
    );
    ensure!(rotated.previous_secret_until_ms == Some(86_400_004), "{rotated:?}");
    db(store.subscription_delete(web.id, 5).await)?;
    ensure!(matches!(store.subscription_get(web.id).await, Err(StoreError::NotFound)), "deleted");
    ensure!(matches!(store.subscription_delete(web.id, 6).await, Err(StoreError::NotFound)), "deleted twice");
    Ok(())
}

pub async fn events_reach_exactly_the_subscriptions_that_want_them(store: Arc<dyn Store>) -> CheckResult {
    let every = subscription("http://a", &["*"], None, 1);
    let failures = subscription("http://b", &["saga.failed"], None, 1);
    let acme = subscription("http://c", &["*"], Some("acme"), 1);
    let mut off = subscription("http://d", &["*"], None, 1);
    off.status = SubscriptionStatus::Disabled;
    for s in [&every, &failures, &acme, &off] {
        db(store.subscription_create(s).await)?;
    }
    let acme_done = OutboxEvent::new("saga.completed", Some("acme"), json!({"n": 1}), 10);
    let beta_failed = OutboxEvent::new("saga.failed", Some("beta"), json!({"n": 2}), 11);
    let nobody = OutboxEvent::new("order.shipped", Some("beta"), json!({}), 12);
    db(store.events_append(&[acme_done.clone(), beta_failed.clone()]).await)?;
    db(store.subscription_delete(every.id, 13).await)?;
    db(store.events_append(&[nobody]).await)?;
    let event_ids = |ds: Vec<crate::DeliveryRecord>| ds.into_iter().map(|d| d.event_id).collect::<Vec<_>>();
    let to_failures = event_ids(deliveries_of(store.as_ref(), failures.id).await?);
    ensure!(to_failures == vec![beta_failed.id], "exact type: {to_failures:?}");
    let to_acme = event_ids(deliveries_of(store.as_ref(), acme.id).await?);
    ensure!(to_acme == vec![acme_done.id], "a tenant's subscription gets its tenant's events only: {to_acme:?}");
    ensure!(deliveries_of(store.as_ref(), off.id).await?.is_empty(), "a disabled subscription gets nothing");
    let every_ones = deliveries_of(store.as_ref(), every.id).await?;
    ensure!(every_ones.len() == 2, "{every_ones:?}");
    ensure!(every_ones.iter().all(|d| d.status == DeliveryStatus::Dead), "deleted subscription's deliveries end dead");
    let pending = DeliveryFilter { status: Some(DeliveryStatus::Pending), limit: 100, ..Default::default() };
    ensure!(db(store.delivery_list(&pending).await)?.len() == 2, "nobody wanted order.shipped after the delete");
    let backlog = db(store.delivery_backlog().await)?;
    let of = |id: Uuid| backlog.iter().find(|b| b.subscription_id == id).map(|b| (b.pending, b.oldest_created_at_ms));
    ensure!(of(failures.id) == Some((1, 11)) && of(acme.id) == Some((1, 10)), "backlog: {backlog:?}");
    ensure!(of(every.id).is_none() && of(off.id).is_none(), "only subscriptions with pending ones: {backlog:?}");
    let delivery = &deliveries_of(store.as_ref(), acme.id).await?[0];
    ensure!(delivery.event_type == "saga.completed" && delivery.tenant_id.as_deref() == Some("acme"), "{delivery:?}");
    ensure!(delivery.attempts == 0 && delivery.next_attempt_at_ms == 10, "due at the event's time: {delivery:?}");
    Ok(())
}

/// The store's fan-out matches events to subscriptions by the one rule,
/// [`OutboxEvent::is_for`], whatever the dialect writes it in: every combination of scope
/// (admin, a tenant, another tenant), filters (`*`, the type, another type, several) and
/// address (to all, to one subscription) gets exactly the deliveries the rule says.
pub async fn the_fan_out_follows_the_one_matching_rule(store: Arc<dyn Store>) -> CheckResult {
    let scopes = [None, Some("acme"), Some("beta")];
    let filters: [&[&str]; 4] = [&["*"], &["order.placed"], &["order.shipped"], &["order.shipped", "order.placed"]];
    let mut subscriptions = Vec::new();
    for (n, scope) in scopes.iter().enumerate() {
        for (m, events) in filters.iter().enumerate() {
            let s = subscription(&format!("http://s{n}{m}"), events, *scope, 1);
            db(store.subscription_create(&s).await)?;
            subscriptions.push(s);
        }
    }
    let addressed_to = subscriptions[5].id;
    let mut events = Vec::new();
    for (n, tenant) in [None, Some("acme"), Some("beta"), Some("gamma")].iter().enumerate() {
        for event_type in ["order.placed", "tenant.activated"] {
            events.push(OutboxEvent::new(event_type, *tenant, json!({"n": n}), 10 + n as i64));
        }
        events.push(OutboxEvent::new("order.placed", *tenant, json!({"to": n}), 20 + n as i64).to(addressed_to));
    }
    db(store.events_append(&events).await)?;
    for s in &subscriptions {
        let mut got: Vec<Uuid> = deliveries_of(store.as_ref(), s.id).await?.into_iter().map(|d| d.event_id).collect();
        let mut want: Vec<Uuid> =
            events.iter().filter(|e| e.is_for(s.id, s.tenant_id.as_deref(), &s.events)).map(|e| e.id).collect();
        got.sort();
        want.sort();
        ensure!(
            got == want,
            "subscription {:?} {:?}: the store delivered {got:?}, the rule says {want:?}",
            s.tenant_id,
            s.events
        );
    }
    Ok(())
}

pub async fn a_transitions_events_are_written_with_it_or_not_at_all(store: Arc<dyn Store>) -> CheckResult {
    let every = subscription("http://a", &["*"], None, 0);
    db(store.subscription_create(&every).await)?;
    create(store.as_ref(), 0).await?;
    let claimed = claim_one(store.as_ref(), 0).await?;
    let mut written = commit(claimed.record.id, claimed.record.fencing_token, SagaState::new(&definition()), 5, vec![]);
    written.outbox = vec![OutboxEvent::new("order.placed", None, json!({"n": 1}), 5)];
    let mut stale = written.clone();
    stale.fencing_token += 7;
    stale.outbox = vec![OutboxEvent::new("order.placed", None, json!({"n": 2}), 5)];
    let outcomes = db(store.saga_commit_batch(&[written.clone(), stale]).await)?;
    ensure!(outcomes == vec![CommitOutcome::Committed, CommitOutcome::Fenced], "{outcomes:?}");
    let delivered: Vec<Uuid> = deliveries_of(store.as_ref(), every.id).await?.into_iter().map(|d| d.event_id).collect();
    ensure!(delivered == vec![written.outbox[0].id], "only the written commit's event: {delivered:?}");
    Ok(())
}

/// A commit matches its events against the subscriptions as they are when it is written, not
/// as the store last saw them: one made, changed or deleted between two commits (here through
/// the same store, which a store caching them must notice too) counts for the second.
pub async fn a_commit_matches_the_subscriptions_of_its_moment(store: Arc<dyn Store>) -> CheckResult {
    create(store.as_ref(), 0).await?;
    let claimed = claim_one(store.as_ref(), 0).await?;
    let (id, token) = (claimed.record.id, claimed.record.fencing_token);
    let commit_event = |n: i64| {
        let mut written = commit(id, token, SagaState::new(&definition()), n, vec![]);
        let event = OutboxEvent::new("order.placed", None, json!({"n": n}), n);
        written.outbox = vec![event.clone()];
        (written, event)
    };
    let (first, _) = commit_event(1);
    ensure!(db(store.saga_commit_batch(&[first]).await)? == vec![CommitOutcome::Committed], "the first commit");
    let every = subscription("http://a", &["*"], None, 0);
    db(store.subscription_create(&every).await)?;
    let (second, wanted) = commit_event(2);
    ensure!(db(store.saga_commit_batch(&[second]).await)? == vec![CommitOutcome::Committed], "the second commit");
    let delivered: Vec<Uuid> = deliveries_of(store.as_ref(), every.id).await?.into_iter().map(|d| d.event_id).collect();
    ensure!(
        delivered == vec![wanted.id],
        "a subscription made after the first commit gets the second's event: {delivered:?}"
    );
    let patch = SubscriptionPatch { events: Some(vec!["order.shipped".into()]), status: None, rate_limit_per_s: None };
    db(store.subscription_patch(every.id, &patch, 3).await)?;
    let (third, _) = commit_event(3);
    ensure!(db(store.saga_commit_batch(&[third]).await)? == vec![CommitOutcome::Committed], "the third commit");
    let delivered = deliveries_of(store.as_ref(), every.id).await?;
    ensure!(delivered.len() == 1, "a subscription that stopped wanting the type gets no more: {delivered:?}");
    Ok(())
}

/// An event's expiry is stored with it, written by a transition or appended alone, and comes
/// back with each claim of its deliveries (the dispatcher sends nothing once it has passed).
pub async fn an_events_expiry_comes_back_with_its_claim(store: Arc<dyn Store>) -> CheckResult {
    let every = subscription("http://a", &["*"], None, 0);
    db(store.subscription_create(&every).await)?;
    create(store.as_ref(), 0).await?;
    let claimed = claim_one(store.as_ref(), 0).await?;
    let mut written = commit(claimed.record.id, claimed.record.fencing_token, SagaState::new(&definition()), 5, vec![]);
    let mut expiring = OutboxEvent::new("location.updated", None, json!({"n": 1}), 5);
    expiring.expires_at_ms = Some(600_005);
    written.outbox = vec![expiring.clone()];
    db(store.saga_commit_batch(&[written]).await)?;
    let mut appended = OutboxEvent::new("location.updated", None, json!({"n": 2}), 6);
    appended.expires_at_ms = Some(600_006);
    let lasting = OutboxEvent::new("order.placed", None, json!({"n": 3}), 7);
    db(store.events_append(&[appended.clone(), lasting.clone()]).await)?;
    let deliveries = db(store.delivery_claim_due(&claim("w1", 10, 100)).await)?;
    let expiry = |event: &OutboxEvent| {
        deliveries.iter().find(|c| c.delivery.event_id == event.id).map(|c| c.event_expires_at_ms)
    };
    ensure!(expiry(&expiring) == Some(Some(600_005)), "a transition's event: {:?}", expiry(&expiring));
    ensure!(expiry(&appended) == Some(Some(600_006)), "an appended event: {:?}", expiry(&appended));
    ensure!(expiry(&lasting) == Some(None), "an event without expiry: {:?}", expiry(&lasting));
    Ok(())
}

pub async fn a_refused_tenant_change_emits_nothing(store: Arc<dyn Store>) -> CheckResult {
    let every = subscription("http://a", &["*"], None, 0);
    db(store.subscription_create(&every).await)?;
    let tenant = super::control::tenant("acme", 0);
    let (_, saga) = db(store.tenant_create(tenant, super::control::tenant_saga("acme", 0), None).await)?;
    let claimed = claim_one(store.as_ref(), 1).await?;
    ensure!(claimed.record.id == saga.id, "claimed the tenant's saga");
    let change = |to: TenantStatus, event_type: &str| crate::TenantChange {
        tenant_id: "acme".into(),
        to,
        from: vec![TenantStatus::Provisioning],
        error: None,
        storage: None,
        migrations: None,
        outbox: vec![OutboxEvent::new(event_type, Some("acme"), json!({}), 2)],
    };
    let mut refused = commit(claimed.record.id, claimed.record.fencing_token, claimed.record.state.clone(), 2, vec![]);
    // The tenant is PROVISIONING: a change allowed only from ACTIVE is refused, and so is its event.
    refused.tenant_change = Some(crate::TenantChange {
        from: vec![TenantStatus::Active],
        ..change(TenantStatus::Suspended, "tenant.suspended")
    });
    db(store.saga_commit_batch(&[refused]).await)?;
    ensure!(deliveries_of(store.as_ref(), every.id).await?.is_empty(), "a refused change emitted an event");
    let mut applied = commit(claimed.record.id, claimed.record.fencing_token, claimed.record.state.clone(), 3, vec![]);
    applied.tenant_change = Some(change(TenantStatus::Migrating, "tenant.migrating"));
    db(store.saga_commit_batch(&[applied]).await)?;
    let delivered = deliveries_of(store.as_ref(), every.id).await?;
    ensure!(delivered.len() == 1 && delivered[0].event_type == "tenant.migrating", "{delivered:?}");
    Ok(())
}

pub async fn deliveries_are_claimed_newest_first_once_and_fenced(store: Arc<dyn Store>) -> CheckResult {
    let fast = subscription("http://fast", &["*"], None, 0);
    let slow = subscription("http://slow", &["*"], None, 0);
    db(store.subscription_create(&fast).await)?;
    db(store.subscription_create(&slow).await)?;
    let events: Vec<OutboxEvent> =
        (0..3).map(|n| OutboxEvent::new("order.placed", None, json!({"n": n}), 100 + n)).collect();
    db(store.events_append(&events).await)?;
    ensure!(db(store.delivery_claim_due(&claim("w1", 10, 99)).await)?.is_empty(), "claimed before due");
    let disable = SubscriptionPatch { status: Some(SubscriptionStatus::Disabled), ..Default::default() };
    db(store.subscription_patch(slow.id, &disable, 150).await)?;
    let only_fast = db(store.delivery_claim_due(&claim("w0", 10, 200)).await)?;
    ensure!(only_fast.iter().all(|c| c.subscription.id == fast.id), "a disabled subscription's are held");
    for c in &only_fast {
        let back = DeliveryAttemptResult {
            id: c.delivery.id,
            fencing_token: c.fencing_token,
            status: DeliveryStatus::Pending,
            next_attempt_at_ms: 200,
            attempt: DeliveryAttemptRecord { n: 0, at_ms: 200, status_code: None, error: None, duration_ms: 0 },
        };
        db(store.delivery_attempt_record(&back).await)?;
    }
    let enable = SubscriptionPatch { status: Some(SubscriptionStatus::Active), ..Default::default() };
    db(store.subscription_patch(slow.id, &enable, 150).await)?;
    let mut skip_slow = claim("w1", 2, 200);
    skip_slow.skip_subscriptions = vec![slow.id];
    let first = db(store.delivery_claim_due(&skip_slow).await)?;
    let numbers: Vec<i64> = first.iter().filter_map(|c| c.event_data["n"].as_i64()).collect();
    ensure!(numbers == vec![2, 1], "newest first, skipped subscription left out: {numbers:?}");
    ensure!(first.iter().all(|c| c.subscription.id == fast.id && c.event_at_ms >= 101), "{first:?}");
    let rest = db(store.delivery_claim_due(&claim("w2", 10, 200)).await)?;
    ensure!(rest.len() == 4, "the others, once each: {}", rest.len());
    ensure!(db(store.delivery_claim_due(&claim("w3", 10, 200)).await)?.is_empty(), "nothing claimed twice");
    // The lease ends: claimed again with a new token; the old claimant's attempt is refused.
    let stale = &first[0];
    let again = db(store.delivery_claim_due(&claim("w2", 10, 200 + 30_000)).await)?;
    let taken = again.iter().find(|c| c.delivery.id == stale.delivery.id).ok_or("lease did not end")?;
    ensure!(taken.fencing_token > stale.fencing_token, "token bumped");
    let attempt = |c: &crate::ClaimedDelivery, status: DeliveryStatus, at_ms: i64| DeliveryAttemptResult {
        id: c.delivery.id,
        fencing_token: c.fencing_token,
        status,
        next_attempt_at_ms: at_ms + 60_000,
        attempt: DeliveryAttemptRecord { n: 0, at_ms, status_code: Some(200), error: None, duration_ms: 3 },
    };
    ensure!(!db(store.delivery_attempt_record(&attempt(stale, DeliveryStatus::Succeeded, 30_300)).await)?, "fenced");
    ensure!(db(store.delivery_attempt_record(&attempt(taken, DeliveryStatus::Succeeded, 30_300)).await)?, "recorded");
    let (record, attempts) = db(store.delivery_get(taken.delivery.id).await)?;
    ensure!(record.status == DeliveryStatus::Succeeded && record.delivered_at_ms == Some(30_300), "{record:?}");
    // The first attempt is the hand-back above; this one is the second.
    let last = attempts.last().ok_or("no attempt")?;
    ensure!(attempts.len() == 2 && last.n == 2 && last.status_code == Some(200), "{attempts:?}");
    Ok(())
}

/// A claim handed back is claimable again at once, by anyone, with no attempt spent; a hand-back
/// under an older claim changes nothing.
pub async fn released_deliveries_are_claimable_at_once_unattempted(store: Arc<dyn Store>) -> CheckResult {
    let hook = subscription("http://hook", &["*"], None, 0);
    db(store.subscription_create(&hook).await)?;
    db(store.events_append(&[OutboxEvent::new("order.placed", None, json!({}), 100)]).await)?;
    let first = db(store.delivery_claim_due(&claim("w1", 10, 100)).await)?;
    let claimed = first.first().ok_or("claimed")?;
    ensure!(db(store.delivery_claim_due(&claim("w2", 10, 200)).await)?.is_empty(), "leased to w1");
    db(store.delivery_release(&[(claimed.delivery.id, claimed.fencing_token)], 200).await)?;
    let again = db(store.delivery_claim_due(&claim("w2", 10, 200)).await)?;
    let taken = again.first().ok_or("claimable at once after the hand-back")?;
    ensure!(taken.delivery.attempts == 0, "no attempt spent: {:?}", taken.delivery);
    ensure!(taken.fencing_token > claimed.fencing_token, "a new claim");
    // w1's hand-back of its old claim does not take the delivery from w2.
    db(store.delivery_release(&[(claimed.delivery.id, claimed.fencing_token)], 200).await)?;
    ensure!(db(store.delivery_claim_due(&claim("w3", 10, 300)).await)?.is_empty(), "still w2's");
    db(store.delivery_release(&[], 300).await)?;
    Ok(())
}

pub async fn failed_attempts_retry_then_die_and_are_replayed_and_recovered(store: Arc<dyn Store>) -> CheckResult {
    let hook = subscription("http://down", &["*"], None, 0);
    db(store.subscription_create(&hook).await)?;
    let events: Vec<OutboxEvent> =
        (0..2).map(|n| OutboxEvent::new("order.placed", None, json!({"n": n}), 10 + n)).collect();
    db(store.events_append(&events).await)?;
    let fail = |c: &crate::ClaimedDelivery, status: DeliveryStatus, at_ms: i64| DeliveryAttemptResult {
        id: c.delivery.id,
        fencing_token: c.fencing_token,
        status,
        next_attempt_at_ms: at_ms + 1_000,
        attempt: DeliveryAttemptRecord {
            n: 0,
            at_ms,
            status_code: Some(503),
            error: Some("participant answered 503".into()),
            duration_ms: 4,
        },
    };
    let claimed = db(store.delivery_claim_due(&claim("w1", 10, 100)).await)?;
    ensure!(claimed.len() == 2, "both due");
    for c in &claimed {
        ensure!(db(store.delivery_attempt_record(&fail(c, DeliveryStatus::Pending, 100)).await)?, "retry recorded");
    }
    ensure!(db(store.delivery_claim_due(&claim("w1", 10, 1_099)).await)?.is_empty(), "not due before the retry");
    let again = db(store.delivery_claim_due(&claim("w1", 10, 1_100)).await)?;
    for c in &again {
        ensure!(db(store.delivery_attempt_record(&fail(c, DeliveryStatus::Dead, 1_100)).await)?, "dead recorded");
    }
    let (dead, attempts) = db(store.delivery_get(again[0].delivery.id).await)?;
    ensure!(dead.status == DeliveryStatus::Dead && dead.attempts == 2, "{dead:?}");
    ensure!(dead.last_error.as_deref() == Some("participant answered 503"), "{dead:?}");
    ensure!(attempts.iter().map(|a| a.n).collect::<Vec<_>>() == vec![1, 2], "{attempts:?}");
    ensure!(
        db(store.delivery_claim_due(&claim("w1", 10, 999_999)).await)?.is_empty(),
        "a dead delivery is not claimed"
    );
    let replayed = db(store.delivery_replay(dead.id, 2_000).await)?;
    ensure!(replayed.status == DeliveryStatus::Pending && replayed.attempts_before_replay == 2, "{replayed:?}");
    ensure!(matches!(store.delivery_replay(dead.id, 2_001).await, Err(StoreError::Conflict(_))), "only dead ones");
    let (recovered, _) = db(store.deliveries_recover(hook.id, 11, 1_000, 2_100).await)?;
    let other = again.iter().find(|c| c.delivery.id != dead.id).ok_or("the other delivery")?;
    ensure!(recovered == u64::from(other.delivery.created_at_ms >= 11), "recovered since: {recovered}");
    let (recovered, more) = db(store.deliveries_recover(hook.id, 0, 1_000, 2_200).await)?;
    ensure!(recovered <= 1 && !more, "only dead ones recover: {recovered} {more}");
    let due = db(store.delivery_claim_due(&claim("w1", 10, 2_200)).await)?;
    ensure!(due.len() == 2, "both due again: {}", due.len());
    // Both dead again: one call puts back at most its limit, oldest first, and says more remain.
    for c in &due {
        ensure!(db(store.delivery_attempt_record(&fail(c, DeliveryStatus::Dead, 2_200)).await)?, "dead again");
    }
    let (recovered, more) = db(store.deliveries_recover(hook.id, 0, 1, 2_300).await)?;
    ensure!(recovered == 1 && more, "a limit of one: {recovered} {more}");
    let (recovered, more) = db(store.deliveries_recover(hook.id, 0, 1, 2_400).await)?;
    ensure!(recovered == 1 && !more, "the rest: {recovered} {more}");
    Ok(())
}

pub async fn addressed_events_reach_their_subscription_alone(store: Arc<dyn Store>) -> CheckResult {
    let every = subscription("http://every", &["*"], None, 0);
    db(store.subscription_create(&every).await)?;
    let mut owned = subscription("http://crm/old", &[], None, 0);
    db(store.subscription_put(&owned).await)?;
    owned.destination = Destination::Url("http://crm/new".into());
    owned.secret = "whsec_replaced".into();
    owned.updated_at_ms = 5;
    db(store.subscription_put(&owned).await)?;
    let read = db(store.subscription_get(owned.id).await)?;
    ensure!(read == owned, "a put replaces the destination and secret, keeps the id: {read:?}");

    let broadcast = OutboxEvent::new("order.placed", None, json!({"n": 1}), 10);
    let addressed = OutboxEvent::new("tenant.activated", Some("acme"), json!({"n": 2}), 11).to(owned.id);
    db(store.events_append(&[broadcast.clone(), addressed.clone()]).await)?;
    // And through a saga's commit, as the tenant lifecycle writes them.
    create(store.as_ref(), 0).await?;
    let claimed = claim_one(store.as_ref(), 0).await?;
    let mut written =
        commit(claimed.record.id, claimed.record.fencing_token, SagaState::new(&definition()), 12, vec![]);
    let committed = OutboxEvent::new("order.placed", None, json!({"n": 3}), 12).to(owned.id);
    written.outbox = vec![committed.clone()];
    db(store.saga_commit_batch(&[written]).await)?;

    let events_of = |ds: Vec<crate::DeliveryRecord>| {
        let mut ids: Vec<Uuid> = ds.into_iter().map(|d| d.event_id).collect();
        ids.sort();
        ids
    };
    let to_owned = events_of(deliveries_of(store.as_ref(), owned.id).await?);
    ensure!(to_owned == vec![addressed.id, committed.id], "the addressed events only, filters or not: {to_owned:?}");
    let to_every = events_of(deliveries_of(store.as_ref(), every.id).await?);
    ensure!(to_every == vec![broadcast.id], "nobody else gets an addressed event: {to_every:?}");

    let patch = SubscriptionPatch { status: Some(SubscriptionStatus::Disabled), ..Default::default() };
    db(store.subscription_patch(owned.id, &patch, 13).await)?;
    let late = OutboxEvent::new("tenant.activated", Some("acme"), json!({}), 14).to(owned.id);
    db(store.events_append(&[late]).await)?;
    ensure!(deliveries_of(store.as_ref(), owned.id).await?.len() == 2, "a disabled subscription gets nothing");
    Ok(())
}

pub async fn a_tenants_own_subscriptions_are_capped(store: Arc<dyn Store>) -> CheckResult {
    let (tenant, saga) = (super::control::tenant("acme", 1), super::control::tenant_saga("acme", 1));
    db(store.tenant_create(tenant, saga, None).await)?;
    let own = |n: i64| subscription("http://acme", &["*"], Some("acme"), n);
    for n in 0..2 {
        db(store.subscription_create_capped(&own(n), 2).await)?;
    }
    let third = store.subscription_create_capped(&own(3), 2).await;
    ensure!(matches!(third, Err(StoreError::Conflict(_))), "a third of two: {third:?}");
    // The operator's for the tenant do not count; neither do other tenants' or the operator's own.
    let managed = SubscriptionRecord { managed: true, ..own(4) };
    db(store.subscription_create_capped(&managed, 2).await)?;
    db(store.subscription_create_capped(&subscription("http://ops", &["*"], None, 5), 2).await)?;
    let stored = db(store.subscription_get(managed.id).await)?;
    ensure!(stored.managed && stored.tenant_id.as_deref() == Some("acme"), "{stored:?}");
    let existing = db(store.subscriptions_existing(&[managed.id, Uuid::now_v7()]).await)?;
    ensure!(existing == vec![managed.id], "only those that exist: {existing:?}");
    // Two at once when one more fits: exactly one is written.
    let (six, seven) = (own(6), own(7));
    let (first, second) =
        tokio::join!(store.subscription_create_capped(&six, 3), store.subscription_create_capped(&seven, 3));
    ensure!(first.is_ok() != second.is_ok(), "one of two racing creates: {first:?} {second:?}");
    Ok(())
}

/// Succeeded deliveries go after the retention and dead ones after the dead-letter retention,
/// each with its attempts; an event goes with its last delivery; a pending one is never touched.
/// (Ids are UUIDv7: "created before" is read from them, on the wall clock.)
pub async fn finished_deliveries_go_and_their_events_with_the_last(store: Arc<dyn Store>) -> CheckResult {
    let first = subscription("http://a", &["*"], None, 0);
    let second = subscription("http://b", &["order.shipped"], None, 0);
    db(store.subscription_create(&first).await)?;
    db(store.subscription_create(&second).await)?;
    let placed = OutboxEvent::new("order.placed", None, json!({"n": 1}), 10);
    let paid = OutboxEvent::new("order.paid", None, json!({"n": 2}), 10);
    let shipped = OutboxEvent::new("order.shipped", None, json!({"n": 3}), 10);
    let ping = OutboxEvent { expires_at_ms: Some(50), ..OutboxEvent::new("session.ping", None, json!({"n": 4}), 10) };
    db(store.events_append(&[placed.clone(), paid.clone(), shipped.clone(), ping.clone()]).await)?;
    let claimed = db(store.delivery_claim_due(&claim("w1", 10, 100)).await)?;
    ensure!(claimed.len() == 5, "five deliveries: {}", claimed.len());
    let outcome = |event: Uuid, subscription: Uuid| {
        if event == paid.id {
            None // stays pending
        } else if event == ping.id || (event == shipped.id && subscription == second.id) {
            Some(DeliveryStatus::Dead)
        } else {
            Some(DeliveryStatus::Succeeded)
        }
    };
    for c in &claimed {
        let status = outcome(c.delivery.event_id, c.subscription.id).unwrap_or(DeliveryStatus::Pending);
        let result = DeliveryAttemptResult {
            id: c.delivery.id,
            fencing_token: c.fencing_token,
            status,
            next_attempt_at_ms: 10_000,
            attempt: DeliveryAttemptRecord { n: 0, at_ms: 100, status_code: Some(200), error: None, duration_ms: 1 },
        };
        ensure!(db(store.delivery_attempt_record(&result).await)?, "recorded");
    }
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let (past, future) = (now - 3_600_000, now + 3_600_000);
    let nothing = crate::PurgedDeliveries::default();
    ensure!(db(store.deliveries_purge(past, past, now, 10).await)? == nothing, "none is old yet");

    let purged = db(store.deliveries_purge(future, past, now, 10).await)?;
    // placed → a and shipped → a succeeded, and ping → a is dead with its event expired (a replay
    // could never send it): gone, with placed and ping; shipped → b is a dead letter, so shipped
    // stays.
    ensure!((purged.deliveries, purged.attempts, purged.events) == (3, 3, 2), "{purged:?}");
    for c in &claimed {
        let finished = outcome(c.delivery.event_id, c.subscription.id) == Some(DeliveryStatus::Succeeded)
            || c.delivery.event_id == ping.id;
        let expect_kept = !finished;
        let kept = store.delivery_get(c.delivery.id).await.is_ok();
        ensure!(kept == expect_kept, "{:?} kept {kept}", c.delivery.event_type);
    }
    let purged = db(store.deliveries_purge(future, future, now, 10).await)?;
    ensure!((purged.deliveries, purged.events) == (1, 1), "the dead letter, then its event: {purged:?}");
    let left = deliveries_of(store.as_ref(), first.id).await?;
    ensure!(left.len() == 1 && left[0].event_id == paid.id, "the pending delivery is never touched: {left:?}");
    ensure!(db(store.deliveries_purge(future, future, now, 10).await)?.deliveries == 0, "nothing more");
    Ok(())
}
