//! The delivery guarantees (docs/api.md, "Events out"), read from the outbox the store kept and
//! every request the receivers took:
//!
//! - **events report what happened**: a saga's commits wrote exactly one event, the one of the
//!   status it ended in, and none before it ended (a child saga compensated by its parent after
//!   it completed: `saga.completed`, then the one of its end; a branch of a group, or a child's
//!   tombstone: none);
//! - **every event reaches exactly the subscriptions that want it**: one delivery per event and
//!   subscription whose filter matches;
//! - **no delivery of an event never committed**: every request a receiver took carries a
//!   committed event's id and type, signed by its subscription's secret;
//! - **every delivery ends** delivered or dead, **as the retry schedule says**: no attempt before
//!   the schedule (or a longer `Retry-After`) allows, no more attempts than it allows, dead only
//!   once they are spent, delivered only with a 2xx its receiver really gave;
//! - **one destination never delays another beyond its share**: once the run is calm, a healthy
//!   receiver's delivery is attempted within a poll of becoming due, whatever the others do.

use std::collections::BTreeMap;

use saga_core::SagaStatus;
use saga_store::{DeliveryStatus, OutboxEvent};
use serde_json::Value;
use uuid::Uuid;

use super::{Observation, Violation};
use crate::memory::JournalKind;
use crate::scenario::Temper;
use crate::world::EPOCH_MS;

/// How long after becoming due a healthy receiver's delivery may wait, beyond one poll of its
/// dispatcher: the commit that writes the event and the attempt's own scheduling.
const DUE_SLACK_MS: i64 = 500;

pub(super) fn check(observation: &Observation<'_>, violations: &mut Vec<Violation>) {
    check_events(observation, violations);
    check_fan_out(observation, violations);
    check_received(observation, violations);
    check_schedule(observation, violations);
    check_share(observation, violations);
}

/// The event type a saga ending in `status` reports.
fn event_of(status: SagaStatus) -> Option<&'static str> {
    match status {
        SagaStatus::Completed => Some("saga.completed"),
        SagaStatus::Compensated => Some("saga.compensated"),
        SagaStatus::Failed => Some("saga.failed"),
        _ => None,
    }
}

fn check_events(observation: &Observation<'_>, violations: &mut Vec<Violation>) {
    let mut written: BTreeMap<Uuid, Vec<&str>> = BTreeMap::new();
    for entry in &observation.journal {
        if let JournalKind::Outbox { event_type } = &entry.kind {
            written.entry(entry.saga_id).or_default().push(event_type);
        }
    }
    for saga in observation.sagas.values() {
        let wrote = written.remove(&saga.id).unwrap_or_default();
        // A child compensated by its parent after it completed reported both ends.
        let reopened = super::reopened_at(observation, saga.id).is_some();
        let expected: Vec<&str> = match super::reports_no_end(observation, saga) {
            true => Vec::new(),
            false => reopened.then_some("saga.completed").into_iter().chain(event_of(saga.status)).collect(),
        };
        if wrote != expected {
            let detail = format!("it ended {} and its commits wrote the events {wrote:?}", saga.status.as_str());
            violations.push(Violation::of(saga.id, "events report what happened", detail));
        }
    }
    for (saga_id, wrote) in written {
        violations.push(Violation::of(saga_id, "events report what happened", format!("events {wrote:?} of no saga")));
    }
}

fn check_fan_out(observation: &Observation<'_>, violations: &mut Vec<Violation>) {
    let outbox = observation.outbox;
    for (event, _) in &outbox.events {
        let mut wanted: Vec<Uuid> = outbox
            .subscriptions
            .iter()
            .filter(|s| event.is_for(s.id, s.tenant_id.as_deref(), &s.events))
            .map(|s| s.id)
            .collect();
        let mut got: Vec<Uuid> = outbox
            .deliveries
            .iter()
            .filter(|d| d.record.event_id == event.id)
            .map(|d| d.record.subscription_id)
            .collect();
        wanted.sort();
        got.sort();
        if wanted != got {
            violations.push(Violation::new(
                "every event reaches exactly the subscriptions that want it",
                format!("{} of {}: deliveries to {got:?}, wanted by {wanted:?}", event.event_type, saga_of(event)),
            ));
        }
    }
    // The other way round: every terminal saga whose event a subscription wants has it written.
    for saga in observation.sagas.values().filter(|s| !super::reports_no_end(observation, s)) {
        let Some(event_type) = event_of(saga.status) else { continue };
        let wanted = outbox.subscriptions.iter().any(|s| s.events.iter().any(|f| f == "*" || f == event_type));
        let written =
            outbox.events.iter().any(|(e, _)| e.event_type == event_type && saga_of(e) == saga.id.to_string());
        if wanted && !written {
            violations.push(Violation::of(
                saga.id,
                "every event reaches exactly the subscriptions that want it",
                format!("{event_type} is wanted but has no delivery"),
            ));
        }
    }
}

fn saga_of(event: &OutboxEvent) -> String {
    event.data.get("saga_id").and_then(Value::as_str).unwrap_or("-").to_string()
}

fn check_received(observation: &Observation<'_>, violations: &mut Vec<Violation>) {
    let outbox = observation.outbox;
    for received in observation.received {
        let event = received.event_id.and_then(|id| outbox.events.iter().find(|(e, _)| e.id == id));
        let problem = match event {
            None => Some(format!("an event never committed ({:?})", received.event_id)),
            Some((event, _)) if received.event_type.as_deref() != Some(event.event_type.as_str()) => {
                Some(format!("event {} as type {:?}, committed as {}", event.id, received.event_type, event.event_type))
            }
            Some(_) if !received.verified => Some("a request its subscription's secret did not sign".to_string()),
            Some(_) => None,
        };
        if let Some(problem) = problem {
            violations.push(Violation::new(
                "no delivery of an event never committed",
                format!("r{} took {problem} at {} ms", received.receiver, received.at_ms - EPOCH_MS),
            ));
        }
    }
}

fn check_schedule(observation: &Observation<'_>, violations: &mut Vec<Violation>) {
    let plan = &observation.scenario.delivery;
    let attempts_max = plan.schedule_ms.len() + 1;
    let receiver_of = |subscription: Uuid| observation.outbox.subscriptions.iter().position(|s| s.id == subscription);
    for delivery in &observation.outbox.deliveries {
        let record = &delivery.record;
        let attempts = &delivery.attempts;
        let receiver = receiver_of(record.subscription_id).unwrap_or(usize::MAX);
        let name = format!("delivery {} of {} to r{receiver}", record.id.as_u128(), record.event_type);
        let mut problems = Vec::new();
        if record.status == DeliveryStatus::Pending {
            problems.push("still pending at the end of the run".to_string());
        }
        if attempts.len() > attempts_max {
            problems.push(format!("{} attempts recorded, the schedule allows {attempts_max}", attempts.len()));
        }
        let delivered = |status: Option<u16>| status.is_some_and(|s| (200..300).contains(&s));
        for (n, pair) in attempts.windows(2).enumerate() {
            let (before, after) = (&pair[0], &pair[1]);
            let asked_ms = match plan.receivers.get(receiver).map(|r| r.temper) {
                Some(Temper::Flaky { retry_after_s, .. }) if before.status_code == Some(503) => retry_after_s * 1000,
                _ => 0,
            };
            let delay = plan.schedule_ms.get(n).copied().unwrap_or(0).max(asked_ms) as i64;
            let earliest = before.at_ms + before.duration_ms + delay;
            if delivered(before.status_code) {
                problems.push(format!("attempt {} came after a delivered one", n + 2));
            } else if after.at_ms < earliest {
                problems.push(format!(
                    "attempt {} at {} ms, the schedule allows it from {} ms",
                    n + 2,
                    after.at_ms - EPOCH_MS,
                    earliest - EPOCH_MS
                ));
            }
        }
        let last = attempts.last();
        match record.status {
            DeliveryStatus::Dead if attempts.len() < attempts_max => {
                problems.push(format!("dead after {} of {attempts_max} attempts", attempts.len()))
            }
            DeliveryStatus::Succeeded if !last.is_some_and(|a| delivered(a.status_code)) => {
                problems.push("delivered without a 2xx as its last attempt".to_string())
            }
            DeliveryStatus::Succeeded => {
                let answered = observation
                    .received
                    .iter()
                    .any(|r| r.receiver == receiver && r.event_id == Some(record.event_id) && delivered(r.answer));
                if !answered {
                    problems.push("delivered, but its receiver never answered it with a 2xx".to_string());
                }
            }
            _ => {}
        }
        for problem in problems {
            violations
                .push(Violation::new("every delivery ends as the retry schedule says", format!("{name}: {problem}")));
        }
    }
}

fn check_share(observation: &Observation<'_>, violations: &mut Vec<Violation>) {
    let scenario = observation.scenario;
    let plan = &scenario.delivery;
    let settled_ms = EPOCH_MS + (scenario.calm_at_ms + plan.settled_ms()) as i64;
    let bound_ms = plan.poll_interval_ms as i64 + DUE_SLACK_MS;
    let healthy: Vec<Uuid> = observation
        .outbox
        .subscriptions
        .iter()
        .zip(&plan.receivers)
        .filter(|(_, r)| r.temper == Temper::Healthy)
        .map(|(s, _)| s.id)
        .collect();
    for delivery in observation.outbox.deliveries.iter().filter(|d| healthy.contains(&d.record.subscription_id)) {
        let record = &delivery.record;
        if record.created_at_ms < settled_ms {
            continue;
        }
        // Waiting behind its own destination's attempts is not another destination's doing (a
        // burst of events — a group's branches ending together — fills a destination's
        // slots): the time its destination's other attempts ran meanwhile, shared among its
        // slots, is added to the bound. Idle waits still count (a destination left waiting a
        // poll between deliveries, seed 7000063, is still caught).
        let first_at = delivery.attempts.first().map_or(i64::MAX, |a| a.at_ms);
        let own_busy_ms: i64 = observation
            .outbox
            .deliveries
            .iter()
            .filter(|other| other.record.subscription_id == record.subscription_id && other.record.id != record.id)
            .flat_map(|other| &other.attempts)
            .filter(|attempt| attempt.at_ms >= record.created_at_ms && attempt.at_ms < first_at)
            .map(|attempt| attempt.duration_ms)
            .sum();
        let bound_ms = bound_ms + own_busy_ms / i64::from(plan.per_subscription_max.max(1));
        let waited = delivery.attempts.first().map(|a| a.at_ms - record.created_at_ms);
        if waited.is_none_or(|waited| waited > bound_ms) {
            violations.push(Violation::new(
                "one destination never delays another beyond its share",
                format!(
                    "delivery {} of {} to a healthy receiver, due at {} ms once the dispatchers polled undisturbed, first attempted after {waited:?} ms (at most {bound_ms})",
                    record.id.as_u128(),
                    record.event_type,
                    record.created_at_ms - EPOCH_MS
                ),
            ));
        }
    }
}

/// Every delivery of the run with its attempts, and every request each receiver took, in order.
pub(super) fn timeline(observation: &Observation<'_>) -> String {
    let outbox = observation.outbox;
    let mut text = String::new();
    let receiver_of = |subscription: Uuid| outbox.subscriptions.iter().position(|s| s.id == subscription);
    for delivery in &outbox.deliveries {
        let record = &delivery.record;
        let saga = outbox.events.get(delivery.event).map(|(e, _)| saga_of(e)).unwrap_or_default();
        text.push_str(&format!(
            "delivery {} of {} (saga {saga}, at {} ms) to r{}: {}\n",
            record.id.as_u128(),
            record.event_type,
            record.created_at_ms - EPOCH_MS,
            receiver_of(record.subscription_id).unwrap_or(usize::MAX),
            record.status.as_str()
        ));
        for attempt in &delivery.attempts {
            text.push_str(&format!(
                "  attempt {} at {} ms for {} ms: {}\n",
                attempt.n,
                attempt.at_ms - EPOCH_MS,
                attempt.duration_ms,
                attempt.status_code.map_or_else(|| attempt.error.clone().unwrap_or_default(), |s| s.to_string())
            ));
        }
    }
    for received in observation.received {
        let saga = received
            .event_id
            .and_then(|id| outbox.events.iter().find(|(e, _)| e.id == id))
            .map(|(e, _)| saga_of(e))
            .unwrap_or_default();
        text.push_str(&format!(
            "  #{:<6} r{} took {} of saga {saga} at {} ms{}, answered {}\n",
            received.seq,
            received.receiver,
            received.event_type.as_deref().unwrap_or("?"),
            received.at_ms - EPOCH_MS,
            if received.verified { "" } else { " (unsigned)" },
            received.answer.map_or("nothing".to_string(), |a| a.to_string())
        ));
    }
    text
}
