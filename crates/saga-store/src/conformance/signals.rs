//! Checks of what arrives from outside while a saga runs or waits: cancel requests, signals,
//! callbacks and their heartbeats.

use std::sync::Arc;

use saga_core::SagaStatus;
use serde_json::json;
use uuid::Uuid;

use super::fixtures::*;
use super::{db, ensure, CheckResult};
use crate::{CallbackRegister, CommitOutcome, EngineStore, StoreError};

pub async fn cancel_request_stops_unacknowledged_commits(store: Arc<dyn EngineStore>) -> CheckResult {
    let id = create(store.as_ref(), 0).await?;
    let claimed = claim_one(store.as_ref(), 0).await?;
    let token = claimed.record.fencing_token;
    let requested = db(store.saga_cancel_request(id, 10, None).await)?;
    ensure!(requested.cancel_requested_at_ms == Some(10), "cancel not recorded: {requested:?}");
    ensure!(requested.lease_owner.as_deref() == Some("w1"), "the driver keeps its lease");
    let mut state = claimed.record.state.clone();
    state.status = SagaStatus::Completed;
    let outcome = db(store.saga_commit_batch(&[commit(id, token, state.clone(), 20, vec![])]).await)?;
    ensure!(outcome == vec![CommitOutcome::CancelRequested { at_ms: 10 }], "outcome: {outcome:?}");
    ensure!(db(store.saga_get(id).await)?.status == SagaStatus::Pending, "nothing written");
    // A second request keeps the first time.
    ensure!(db(store.saga_cancel_request(id, 15, None).await)?.cancel_requested_at_ms == Some(10), "time moved");
    state.status = SagaStatus::Compensated;
    state.cancel_requested_at_ms = Some(10);
    let outcome = db(store.saga_commit_batch(&[commit(id, token, state, 30, vec![])]).await)?;
    ensure!(outcome == vec![CommitOutcome::Committed], "acknowledged commit: {outcome:?}");
    Ok(())
}

pub async fn cancel_request_wakes_a_parked_saga_and_refuses_terminal(store: Arc<dyn EngineStore>) -> CheckResult {
    let (id, _) = parked(store.as_ref()).await?;
    ensure!(db(store.saga_claim_due(&claim("w1", 1, 100)).await)?.is_empty(), "parked saga claimed");
    db(store.saga_cancel_request(id, 100, None).await)?;
    let again = claim_one(store.as_ref(), 100).await?;
    ensure!(again.record.cancel_requested_at_ms == Some(100), "claim shows the request");
    let mut state = again.record.state.clone();
    state.status = SagaStatus::Compensated;
    state.cancel_requested_at_ms = Some(100);
    db(store.saga_commit_batch(&[commit(id, again.record.fencing_token, state, 110, vec![])]).await)?;
    match store.saga_cancel_request(id, 120, None).await {
        Err(StoreError::Conflict(_)) => {}
        other => return Err(format!("cancel of a terminal saga: {other:?}")),
    }
    match store.saga_cancel_request(Uuid::now_v7(), 120, None).await {
        Err(StoreError::NotFound) => Ok(()),
        other => Err(format!("cancel of an unknown saga: {other:?}")),
    }
}

/// A child saga that ended wakes its parked parent (`saga_wake`); a terminal saga is not woken;
/// a saga created already finished (a child's tombstone) is finished from its creation.
pub async fn wake_makes_a_parked_saga_due_and_a_finished_create_is_finished(
    store: Arc<dyn EngineStore>,
) -> CheckResult {
    let (id, claimed) = parked(store.as_ref()).await?;
    ensure!(db(store.saga_wake(id, 50).await)?, "a parked saga is woken");
    let woken = db(store.saga_get(id).await)?;
    ensure!(woken.run_at_ms == 50 && woken.wake_seq == claimed.record.wake_seq + 1, "due at once: {woken:?}");
    let again = claim_one(store.as_ref(), 60).await?;
    let mut state = again.record.state.clone();
    state.status = SagaStatus::Completed;
    db(store.saga_commit_batch(&[commit(id, again.record.fencing_token, state, 70, vec![])]).await)?;
    ensure!(!db(store.saga_wake(id, 80).await)?, "a terminal saga is not woken");

    let mut params = create_params(90);
    params.state.status = SagaStatus::Compensated;
    params.idempotency_key = Some("child:tombstone".into());
    let created = db(store.saga_insert_batch(&[params]).await)?;
    let tombstone = created.into_iter().flatten().next().ok_or("the tombstone was not created")?;
    ensure!(tombstone.status == SagaStatus::Compensated, "status: {tombstone:?}");
    ensure!(tombstone.completed_at_ms == Some(90), "finished at its creation: {tombstone:?}");
    // Read together, as a group reads its branches: those that exist, whatever the order.
    let mut many = db(store.saga_get_many(&[tombstone.id, Uuid::now_v7(), id]).await)?;
    many.sort_by_key(|saga| saga.id);
    let mut expected = vec![id, tombstone.id];
    expected.sort();
    ensure!(many.iter().map(|s| s.id).collect::<Vec<_>>() == expected, "read together: {many:?}");
    ensure!(db(store.saga_claim_due(&claim("w1", 10, 100)).await)?.is_empty(), "a finished saga is never claimed");
    Ok(())
}

pub async fn signals_are_buffered_in_order_and_wake(store: Arc<dyn EngineStore>) -> CheckResult {
    let id = create(store.as_ref(), 0).await?;
    let first = db(store.signal_send(id, "approval", &json!({"ok": 1}), 10, None).await)?;
    let second = db(store.signal_send(id, "approval", &json!({"ok": 2}), 11, None).await)?;
    db(store.signal_send(id, "other", &json!(null), 12, None).await)?;
    let found = db(store.signal_find(id, "approval", &[]).await)?.ok_or("first signal missing")?;
    ensure!(found.id == first.id && found.payload == json!({"ok": 1}), "found: {found:?}");
    let next = db(store.signal_find(id, "approval", &[first.id]).await)?.ok_or("second signal missing")?;
    ensure!(next.id == second.id, "next: {next:?}");
    ensure!(db(store.signal_find(id, "approval", &[first.id, second.id]).await)?.is_none(), "all consumed");
    ensure!(db(store.saga_get(id).await)?.wake_seq == 3, "wake_seq not bumped per signal");
    match store.signal_send(Uuid::now_v7(), "approval", &json!(null), 13, None).await {
        Err(StoreError::NotFound) => Ok(()),
        other => Err(format!("signal to an unknown saga: {other:?}")),
    }
}

pub async fn a_delivery_during_a_lease_makes_the_parked_saga_due(store: Arc<dyn EngineStore>) -> CheckResult {
    let id = create(store.as_ref(), 0).await?;
    let claimed = claim_one(store.as_ref(), 0).await?;
    // The driver decided to wait (having seen wake_seq 0); a signal lands before its commit.
    db(store.signal_send(id, "go", &json!(1), 5, None).await)?;
    let mut park = commit(id, claimed.record.fencing_token, claimed.record.state.clone(), 6, vec![]);
    park.release_lease = true;
    park.run_at_ms = crate::RUN_AT_NEVER_MS;
    park.wake_seq_seen = claimed.record.wake_seq;
    ensure!(db(store.saga_commit_batch(&[park]).await)? == vec![CommitOutcome::Committed], "park");
    let record = db(store.saga_get(id).await)?;
    ensure!(record.run_at_ms == 6, "the late delivery must make the saga due now, run_at {}", record.run_at_ms);
    Ok(())
}

pub async fn callbacks_complete_once_and_heartbeats_extend(store: Arc<dyn EngineStore>) -> CheckResult {
    let id = create(store.as_ref(), 0).await?;
    let register = CallbackRegister {
        token_hash: "h1".into(),
        saga_id: id,
        tenant_id: None,
        step: "a".into(),
        attempt: 1,
        heartbeat_timeout_ms: Some(1_000),
        now_ms: 10,
    };
    db(store.callback_register(register).await)?;
    let open = db(store.callback_get(id, "a", 1).await)?.ok_or("callback missing")?;
    ensure!(open.result.is_none() && open.deadline_at_ms == Some(1_010), "open: {open:?}");
    db(store.callback_heartbeat("h1", 500).await)?;
    let beat = db(store.callback_get(id, "a", 1).await)?.ok_or("callback missing")?;
    ensure!(beat.deadline_at_ms == Some(1_500), "heartbeat did not extend: {beat:?}");
    let result = json!({"status": "succeeded", "output": {"x": 1}});
    ensure!(db(store.callback_complete("h1", &result, 600).await)? == id, "wrong saga");
    ensure!(matches!(store.callback_complete("h1", &result, 601).await, Err(StoreError::NotFound)), "reused");
    ensure!(matches!(store.callback_heartbeat("h1", 602).await, Err(StoreError::NotFound)), "heartbeat after use");
    ensure!(matches!(store.callback_complete("nope", &result, 603).await, Err(StoreError::NotFound)), "unknown");
    let done = db(store.callback_get(id, "a", 1).await)?.ok_or("callback missing")?;
    ensure!(done.result.as_ref() == Some(&result), "result: {done:?}");
    ensure!(db(store.callback_get(id, "a", 2).await)?.is_none(), "other attempt");
    // A retired token (heartbeat lapsed) no longer completes anything.
    let mut second = CallbackRegister {
        token_hash: "h2".into(),
        saga_id: id,
        tenant_id: None,
        step: "a".into(),
        attempt: 2,
        heartbeat_timeout_ms: None,
        now_ms: 700,
    };
    db(store.callback_register(second.clone()).await)?;
    db(store.callback_close(id, "a", 2, 800).await)?;
    ensure!(matches!(store.callback_complete("h2", &result, 900).await, Err(StoreError::NotFound)), "retired");
    second.token_hash = "h3".into();
    second.attempt = 3;
    db(store.callback_register(second).await)?;
    ensure!(db(store.callback_complete("h3", &result, 950).await)? == id, "closing attempt 2 left attempt 3 open");
    // Past its heartbeat deadline a callback is lost even before the driver retires it: neither
    // a heartbeat revives it nor a late completion beats the deadline.
    let lapsing = CallbackRegister {
        token_hash: "h4".into(),
        saga_id: id,
        tenant_id: None,
        step: "a".into(),
        attempt: 4,
        heartbeat_timeout_ms: Some(100),
        now_ms: 1_000,
    };
    db(store.callback_register(lapsing).await)?;
    ensure!(
        matches!(store.callback_heartbeat("h4", 1_100).await, Err(StoreError::NotFound)),
        "heartbeat at the deadline"
    );
    ensure!(
        matches!(store.callback_complete("h4", &result, 1_200).await, Err(StoreError::NotFound)),
        "late completion"
    );
    let lapsed = db(store.callback_get(id, "a", 4).await)?.ok_or("callback missing")?;
    ensure!(lapsed.result.is_none() && lapsed.deadline_at_ms == Some(1_100), "a lapsed callback changed: {lapsed:?}");
    Ok(())
}

/// A driver that took a saga over sends the attempt its predecessor may have sent again, with a
/// token of its own; a participant that calls back only the first token it was given still
/// settles the attempt, and its heartbeats keep the attempt alive (before, the driver waited on
/// its own token until the heartbeat timeout, or forever without one).
pub async fn a_callback_to_any_token_of_an_attempt_settles_it(store: Arc<dyn EngineStore>) -> CheckResult {
    let id = create(store.as_ref(), 0).await?;
    let register = |token: &str, now_ms: i64| CallbackRegister {
        token_hash: token.into(),
        saga_id: id,
        tenant_id: None,
        step: "a".into(),
        attempt: 1,
        heartbeat_timeout_ms: Some(1_000),
        now_ms,
    };
    db(store.callback_register(register("first", 10)).await)?;
    db(store.callback_register(register("again", 20)).await)?;
    let open = db(store.callback_get(id, "a", 1).await)?.ok_or("callback missing")?;
    ensure!(open.result.is_none() && open.deadline_at_ms == Some(1_020), "the newest token's deadline: {open:?}");
    db(store.callback_heartbeat("first", 500).await)?;
    let beat = db(store.callback_get(id, "a", 1).await)?.ok_or("callback missing")?;
    ensure!(beat.deadline_at_ms == Some(1_500), "a heartbeat to the first token keeps the attempt alive: {beat:?}");
    let result = json!({"status": "succeeded", "output": {"x": 1}});
    ensure!(db(store.callback_complete("first", &result, 600).await)? == id, "the first token still completes");
    let settled = db(store.callback_get(id, "a", 1).await)?.ok_or("callback missing")?;
    ensure!(settled.result.as_ref() == Some(&result), "the first token's result settles the attempt: {settled:?}");
    Ok(())
}
