use saga_core::{SagaStatus, Wait, WaitKind};
use saga_store::{CallbackFacts, EventRecord, SagaQueueFacts, SagaRecord};
use serde_json::json;
use uuid::Uuid;

use super::{explain, Blocker, Blockers};

const NOW: i64 = 1_000_000;

fn saga(change: impl FnOnce(&mut SagaRecord)) -> SagaRecord {
    let definition = saga_core::validate_definition(
        "t",
        &json!({"steps": [{"name": "a", "action": {"builtin": "core.echo"}}]}),
        &["core.echo"],
    )
    .expect("valid");
    let mut record = SagaRecord {
        id: Uuid::now_v7(),
        definition: "t".into(),
        version: 1,
        tenant_id: None,
        status: SagaStatus::Executing,
        input: json!({}),
        state: saga_core::SagaState::new(&definition),
        priority: 0,
        run_at_ms: NOW - 5,
        lease_owner: None,
        lease_expires_at_ms: None,
        fencing_token: 1,
        created_at_ms: 0,
        updated_at_ms: 0,
        completed_at_ms: None,
        cancel_requested_at_ms: None,
        wake_seq: 0,
        concurrency_key: None,
    };
    change(&mut record);
    record
}

fn facts(change: impl FnOnce(&mut SagaQueueFacts)) -> SagaQueueFacts {
    let mut facts =
        SagaQueueFacts { admitted: true, due_count: 3, oldest_due_at_ms: Some(NOW - 50), ..Default::default() };
    change(&mut facts);
    facts
}

fn event(kind: &str, data: serde_json::Value) -> EventRecord {
    EventRecord { seq: 7, kind: kind.into(), step: Some("a".into()), attempt: Some(2), worker: None, data, at_ms: NOW }
}

fn check(saga: SagaRecord, facts: SagaQueueFacts, expect: Blockers) {
    assert_eq!(explain(&saga, &facts, Some(2), NOW), expect);
}

fn held(blockers: Vec<Blocker>) -> Blockers {
    Blockers { runnable: false, blockers }
}

#[test]
fn terminal_sagas_are_held_by_nothing_and_failed_ones_by_an_operator() {
    check(saga(|s| s.status = SagaStatus::Completed), facts(|_| {}), held(vec![]));
    check(saga(|s| s.status = SagaStatus::Compensated), facts(|_| {}), held(vec![]));
    check(saga(|s| s.status = SagaStatus::Failed), facts(|_| {}), held(vec![Blocker::Operator { message: None }]));
}

#[test]
fn a_live_lease_holds_it_and_an_expired_one_leaves_it_queued() {
    let leased = |until| {
        saga(move |s| {
            s.lease_owner = Some("w1".into());
            s.lease_expires_at_ms = Some(until);
            s.run_at_ms = until;
        })
    };
    check(leased(NOW + 10), facts(|_| {}), held(vec![Blocker::Lease { worker: "w1".into(), until_ms: NOW + 10 }]));
    let mut expired = leased(NOW - 10);
    expired.run_at_ms = NOW - 10;
    let queued =
        Blocker::Queued { queue_depth: 3, oldest_due_at_ms: Some(NOW - 50), expired_lease_of: Some("w1".into()) };
    check(expired, facts(|_| {}), Blockers { runnable: true, blockers: vec![queued] });
}

#[test]
fn a_due_saga_is_queued_and_runnable() {
    let queued = Blocker::Queued { queue_depth: 3, oldest_due_at_ms: Some(NOW - 50), expired_lease_of: None };
    check(saga(|_| {}), facts(|_| {}), Blockers { runnable: true, blockers: vec![queued] });
}

#[test]
fn a_saga_not_admitted_waits_for_its_keys_holders() {
    let holder = Uuid::now_v7();
    let keyed = saga(|s| {
        s.status = SagaStatus::Pending;
        s.concurrency_key = Some("acme".into());
    });
    let not_admitted = facts(|f| {
        f.admitted = false;
        f.key_holders = vec![holder];
    });
    let expect = Blocker::Concurrency { key: "acme".into(), limit: Some(2), holders: vec![holder] };
    check(keyed.clone(), not_admitted, held(vec![expect]));
    assert!(explain(&keyed, &facts(|_| {}), Some(2), NOW).runnable, "admitted: its key holds it no more");
}

#[test]
fn a_parked_saga_names_its_wait_or_the_event_that_set_its_run_at() {
    let later = NOW + 30_000;
    let retrying = saga(|s| s.run_at_ms = later);
    let backoff = Blocker::Backoff { step: Some("a".into()), attempt: Some(2), until_ms: later };
    check(
        retrying.clone(),
        facts(|f| f.latest_event = Some(event("step_retry_scheduled", json!({})))),
        held(vec![backoff]),
    );
    let breaker = Blocker::Breaker { step: Some("a".into()), endpoint: "http://x:1".into(), until_ms: later };
    check(
        retrying.clone(),
        facts(|f| f.latest_event = Some(event("step_deferred", json!({"endpoint": "http://x:1"})))),
        held(vec![breaker]),
    );
    check(retrying, facts(|_| {}), held(vec![Blocker::Scheduled { until_ms: later }]));

    let waiting = |kind: WaitKind, until: Option<i64>| {
        saga(move |s| {
            s.run_at_ms = until.unwrap_or(saga_store::RUN_AT_NEVER_MS);
            s.state.wait = Some(Wait { step: 0, attempt: 1, kind, since_ms: NOW - 100, until_ms: until });
        })
    };
    let signal = Blocker::Signal { step: "a".into(), name: "approved".into(), since_ms: NOW - 100, until_ms: None };
    check(waiting(WaitKind::Signal { name: "approved".into() }, None), facts(|_| {}), held(vec![signal]));
    let callback = Blocker::Callback {
        step: "a".into(),
        attempt: 1,
        since_ms: NOW - 100,
        last_heartbeat_ms: Some(NOW - 20),
        until_ms: Some(NOW + 40),
    };
    let open = CallbackFacts { deadline_at_ms: Some(NOW + 40), last_heartbeat_at_ms: Some(NOW - 20), created_at_ms: 0 };
    check(waiting(WaitKind::Callback, Some(NOW + 40)), facts(|f| f.callback = Some(open)), held(vec![callback]));
}

#[test]
fn a_deadline_that_wakes_it_first_is_named_too() {
    let deadline = NOW + 5_000;
    let record = saga(|s| {
        s.run_at_ms = deadline;
        s.state.deadline_at_ms = Some(deadline);
        s.state.wait = Some(Wait {
            step: 0,
            attempt: 1,
            kind: WaitKind::Signal { name: "go".into() },
            since_ms: NOW - 1,
            until_ms: None,
        });
    });
    let signal = Blocker::Signal { step: "a".into(), name: "go".into(), since_ms: NOW - 1, until_ms: None };
    check(record, facts(|_| {}), held(vec![signal, Blocker::Deadline { until_ms: deadline }]));
}
