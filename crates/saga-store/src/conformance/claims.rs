//! Checks of claims, fenced commits, leases, admission under concurrency keys and priority.

use std::collections::HashSet;
use std::sync::Arc;

use saga_core::{HistoryEvent, SagaState, SagaStatus};
use serde_json::json;
use uuid::Uuid;

use super::fixtures::*;
use super::{db, ensure, CheckResult};
use crate::creates::create_one;
use crate::{ClaimParams, CommitOutcome, EngineStore, LeaseRef, SagaCreated, SagaFilter};

pub async fn claim_sets_lease_and_bumps_token(store: Arc<dyn EngineStore>) -> CheckResult {
    let id = create(store.as_ref(), 100).await?;
    ensure!(db(store.saga_claim_due(&claim("w1", 10, 99)).await)?.is_empty(), "claimed before due");
    let claimed = db(store.saga_claim_due(&claim("w1", 10, 100)).await)?;
    ensure!(claimed.len() == 1 && claimed[0].record.id == id, "claim: {claimed:?}");
    let record = &claimed[0].record;
    ensure!(record.fencing_token == 1, "token not bumped: {}", record.fencing_token);
    ensure!(record.lease_owner.as_deref() == Some("w1"), "owner: {:?}", record.lease_owner);
    ensure!(record.lease_expires_at_ms == Some(30_100), "expiry: {:?}", record.lease_expires_at_ms);
    ensure!(db(store.saga_claim_due(&claim("w2", 10, 200)).await)?.is_empty(), "leased saga claimed again");
    Ok(())
}

pub async fn stale_token_write_is_rejected(store: Arc<dyn EngineStore>) -> CheckResult {
    let id = create(store.as_ref(), 0).await?;
    let first = db(store.saga_claim_due(&claim("w1", 1, 0)).await)?;
    let second = db(store.saga_claim_due(&claim("w2", 1, 40_000)).await)?;
    ensure!(first.len() == 1 && second.len() == 1, "claims: {first:?} {second:?}");
    let stale = first[0].record.clone();
    let fresh = second[0].record.clone();
    ensure!(fresh.fencing_token > stale.fencing_token, "token did not grow");
    let mut state = stale.state.clone();
    state.status = SagaStatus::Executing;
    let zombie = commit(
        id,
        stale.fencing_token,
        state.clone(),
        40_001,
        vec![HistoryEvent::new("zombie", None, None, json!(null), 40_001)],
    );
    let owner = commit(
        id,
        fresh.fencing_token,
        state,
        40_002,
        vec![HistoryEvent::new("owner", None, None, json!(null), 40_002)],
    );
    let outcomes = db(store.saga_commit_batch(&[zombie, owner]).await)?;
    ensure!(outcomes == vec![CommitOutcome::Fenced, CommitOutcome::Committed], "outcomes: {outcomes:?}");
    let kinds: Vec<String> = db(store.saga_events(id, 0, 100).await)?.into_iter().map(|e| e.kind).collect();
    ensure!(!kinds.contains(&"zombie".to_string()), "zombie event written: {kinds:?}");
    ensure!(kinds.contains(&"owner".to_string()), "owner event missing: {kinds:?}");
    Ok(())
}

pub async fn expired_lease_is_claimable(store: Arc<dyn EngineStore>) -> CheckResult {
    let id = create(store.as_ref(), 0).await?;
    db(store.saga_claim_due(&claim("w1", 1, 0)).await)?;
    ensure!(db(store.saga_claim_due(&claim("w2", 1, 29_999)).await)?.is_empty(), "claimed before expiry");
    let taken = db(store.saga_claim_due(&claim("w2", 1, 30_000)).await)?;
    ensure!(taken.len() == 1 && taken[0].record.id == id, "not taken over: {taken:?}");
    ensure!(taken[0].previous_owner.as_deref() == Some("w1"), "previous owner: {:?}", taken[0].previous_owner);
    ensure!(taken[0].record.fencing_token == 2, "token: {}", taken[0].record.fencing_token);
    Ok(())
}

pub async fn concurrent_claimers_never_share_a_saga(store: Arc<dyn EngineStore>) -> CheckResult {
    let total = 200;
    for _ in 0..total {
        create(store.as_ref(), 0).await?;
    }
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claimed = db(store.saga_claim_due(&claim(&format!("w{worker}"), 7, 1)).await)?;
                if claimed.is_empty() {
                    return Ok::<_, String>(mine);
                }
                mine.extend(claimed.into_iter().map(|c| c.record.id));
            }
        }));
    }
    let mut seen = HashSet::new();
    for task in tasks {
        let ids = task.await.map_err(|e| format!("claimer panicked: {e}"))??;
        for id in ids {
            ensure!(seen.insert(id), "saga {id} claimed twice");
        }
    }
    ensure!(seen.len() == total, "claimed {} of {total}", seen.len());
    Ok(())
}

pub async fn commits_append_history_and_schedule(store: Arc<dyn EngineStore>) -> CheckResult {
    let id = create(store.as_ref(), 0).await?;
    let claimed = db(store.saga_claim_due(&claim("w1", 1, 0)).await)?;
    let token = claimed.first().map(|c| c.record.fencing_token).ok_or("not claimed")?;
    let mut state = claimed[0].record.state.clone();
    state.status = SagaStatus::Executing;
    let events = vec![
        HistoryEvent::new("step_started", Some("a"), Some(1), json!(null), 5),
        HistoryEvent::new("step_failed", Some("a"), Some(1), json!({"retryable": true}), 6),
    ];
    let mut retry = commit(id, token, state.clone(), 6, events);
    retry.release_lease = true;
    retry.run_at_ms = 500;
    ensure!(db(store.saga_commit_batch(&[retry]).await)? == vec![CommitOutcome::Committed], "retry commit");
    let record = db(store.saga_get(id).await)?;
    ensure!(record.lease_owner.is_none() && record.run_at_ms == 500, "not released/scheduled: {record:?}");
    ensure!(record.status == SagaStatus::Executing, "status: {:?}", record.status);
    ensure!(db(store.saga_claim_due(&claim("w1", 1, 499)).await)?.is_empty(), "claimed before retry due");
    let again = db(store.saga_claim_due(&claim("w1", 1, 500)).await)?;
    let token = again.first().map(|c| c.record.fencing_token).ok_or("retry not claimable")?;
    state.status = SagaStatus::Completed;
    let done = commit(id, token, state, 600, vec![HistoryEvent::new("saga_completed", None, None, json!(null), 600)]);
    ensure!(db(store.saga_commit_batch(&[done]).await)? == vec![CommitOutcome::Committed], "final commit");
    let record = db(store.saga_get(id).await)?;
    ensure!(record.completed_at_ms == Some(600), "completed_at: {:?}", record.completed_at_ms);
    ensure!(record.lease_owner.is_none(), "terminal saga still leased");
    let events = db(store.saga_events(id, 0, 100).await)?;
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    ensure!(seqs == vec![1, 2, 3, 4], "seqs: {seqs:?}");
    ensure!(events[1].worker.as_deref() == Some("w1") && events[1].attempt == Some(1), "event: {:?}", events[1]);
    let after = db(store.saga_events(id, 2, 100).await)?;
    ensure!(after.len() == 2 && after[0].seq == 3, "after cursor: {after:?}");
    ensure!(db(store.saga_claim_due(&claim("w1", 1, 1_000_000)).await)?.is_empty(), "terminal saga claimed");
    Ok(())
}

pub async fn heartbeat_renews_and_reports_lost_leases(store: Arc<dyn EngineStore>) -> CheckResult {
    let a = create(store.as_ref(), 0).await?;
    let b = create(store.as_ref(), 0).await?;
    let claimed = db(store.saga_claim_due(&claim("w1", 2, 0)).await)?;
    let leases: Vec<LeaseRef> =
        claimed.iter().map(|c| LeaseRef { id: c.record.id, fencing_token: c.record.fencing_token }).collect();
    ensure!(leases.len() == 2, "claimed {}", leases.len());
    let renewal = db(store.lease_renew("w1", &leases, 20_000, 30_000).await)?;
    ensure!(renewal.lost.is_empty(), "lost on renew: {renewal:?}");
    ensure!(renewal.cancel_requested.is_empty(), "no cancel yet: {renewal:?}");
    ensure!(db(store.saga_claim_due(&claim("w2", 2, 40_000)).await)?.is_empty(), "renewed lease expired early");
    // A cancel request on a held saga is reported, so its driver can interrupt a long attempt.
    db(store.saga_cancel_request(a, 45_000, None).await)?;
    let renewal = db(store.lease_renew("w1", &leases, 45_001, 30_000).await)?;
    ensure!(renewal.cancel_requested == vec![(a, 45_000)], "cancel: {renewal:?}");
    let taken = db(store.saga_claim_due(&claim("w2", 1, 80_000)).await)?;
    let taken_id = taken.first().map(|c| c.record.id).ok_or("nothing expired")?;
    ensure!(taken_id == a || taken_id == b, "unknown saga");
    let renewal = db(store.lease_renew("w1", &leases, 80_001, 30_000).await)?;
    ensure!(renewal.lost == vec![taken_id], "lost: {renewal:?}");
    ensure!(
        !renewal.cancel_requested.iter().any(|(id, _)| *id == taken_id),
        "a lost lease reports nothing: {renewal:?}"
    );
    Ok(())
}

pub async fn released_lease_is_claimable_at_once(store: Arc<dyn EngineStore>) -> CheckResult {
    let id = create(store.as_ref(), 0).await?;
    let claimed = db(store.saga_claim_due(&claim("w1", 1, 0)).await)?;
    let lease = LeaseRef { id, fencing_token: claimed.first().map(|c| c.record.fencing_token).ok_or("not claimed")? };
    db(store.lease_release("w1", &[lease], 10).await)?;
    let again = db(store.saga_claim_due(&claim("w2", 1, 10)).await)?;
    ensure!(again.len() == 1 && again[0].previous_owner.is_none(), "after release: {again:?}");
    Ok(())
}

pub async fn admission_never_exceeds_the_key_limit(store: Arc<dyn EngineStore>) -> CheckResult {
    let mut keyed = Vec::new();
    for _ in 0..6 {
        let mut params = create_params(0);
        params.concurrency = Some(("tenant-a".into(), 2));
        match db(create_one(&*store, params).await)? {
            SagaCreated::Created(record) => keyed.push(record.id),
            other => return Err(format!("create: {other:?}")),
        }
    }
    let free = create(store.as_ref(), 1).await?;
    let filter = SagaFilter { limit: 100, concurrency_key: Some("tenant-a".into()), ..Default::default() };
    ensure!(db(store.saga_list(&filter).await)?.len() == 6, "listing by concurrency key");
    // Several claimers at once: the key's two slots are shared among them, never exceeded.
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .saga_claim_due(&ClaimParams {
                    worker_id: format!("w{worker}"),
                    limit: 10,
                    now_ms: 10,
                    lease_ttl_ms: 30_000,
                })
                .await
        }));
    }
    let mut claimed = Vec::new();
    for task in tasks {
        let batch = task.await.map_err(|e| e.to_string())?;
        claimed.extend(db(batch)?.into_iter().map(|c| c.record));
    }
    let keyed_claimed: Vec<_> = claimed.iter().filter(|r| r.concurrency_key.is_some()).collect();
    ensure!(keyed_claimed.len() == 2, "admitted {} of key limit 2", keyed_claimed.len());
    ensure!(claimed.iter().any(|r| r.id == free), "the unkeyed saga was held back");
    // One finishes: exactly one more is admitted.
    let done = keyed_claimed[0];
    let mut state = done.state.clone();
    state.status = SagaStatus::Completed;
    db(store.saga_commit_batch(&[commit(done.id, done.fencing_token, state, 20, vec![])]).await)?;
    let next = db(store.saga_claim_due(&claim("w9", 10, 30)).await)?;
    ensure!(next.len() == 1, "after one finished, admitted {}", next.len());
    // A cancelled saga waiting for admission is handed out regardless of the limit.
    let waiting = keyed.iter().find(|id| !claimed.iter().chain(next.iter().map(|c| &c.record)).any(|r| r.id == **id));
    let waiting = *waiting.ok_or("no waiting saga left")?;
    db(store.saga_cancel_request(waiting, 40, None).await)?;
    let cancelled = db(store.saga_claim_due(&claim("w9", 10, 40)).await)?;
    ensure!(cancelled.len() == 1 && cancelled[0].record.id == waiting, "cancelled saga: {cancelled:?}");
    Ok(())
}

pub async fn priority_goes_first_but_old_work_is_not_starved(store: Arc<dyn EngineStore>) -> CheckResult {
    let old = create(store.as_ref(), 0).await?;
    let mut low = create_params(50_000);
    low.priority = 0;
    let low_id = low.id;
    db(create_one(&*store, low).await)?;
    let mut high = create_params(50_000);
    high.priority = 10;
    let high_id = high.id;
    db(create_one(&*store, high).await)?;
    let order: Vec<Uuid> = {
        let mut order = Vec::new();
        for _ in 0..3 {
            order.push(claim_one(store.as_ref(), 60_000).await?.record.id);
        }
        order
    };
    // priority 10 is worth 10 s: ahead of its peers, behind work 50 s older.
    ensure!(order == vec![old, high_id, low_id], "claim order: {order:?}");
    // The claim bounds its scan at `claim_horizon_ms`: the lowest priority is still claimed the
    // moment it is due, and a saga parked for good never is.
    let mut lowest = create_params(70_000);
    lowest.priority = -(crate::PRIORITY_MAX as i32);
    let lowest_id = lowest.id;
    db(create_one(&*store, lowest).await)?;
    let mut parked = claim_one(store.as_ref(), 70_000).await?;
    ensure!(parked.record.id == lowest_id, "the lowest priority, due, was not claimed");
    parked.record.state.status = SagaStatus::Executing;
    let mut park = commit(lowest_id, parked.record.fencing_token, parked.record.state.clone(), 70_001, vec![]);
    park.run_at_ms = crate::RUN_AT_NEVER_MS;
    park.release_lease = true;
    ensure!(db(store.saga_commit_batch(&[park]).await)? == vec![CommitOutcome::Committed], "park");
    let later = db(store.saga_claim_due(&claim("w9", 10, 10_000_000_000)).await)?;
    // (The sagas claimed above come back: their leases have long expired.)
    ensure!(later.iter().all(|c| c.record.id != lowest_id), "a parked saga was claimed");
    Ok(())
}

/// Heartbeats, hand-backs and commit batches over the same sagas, with their leases listed in
/// opposite orders, all at once: every multi-row write locks in id order, so none deadlocks (a
/// failed heartbeat can cost a healthy driver its saga).
pub async fn concurrent_lease_writes_never_deadlock(store: Arc<dyn EngineStore>) -> CheckResult {
    const SAGAS: usize = 64;
    const ROUNDS: usize = 25;
    for _ in 0..SAGAS {
        create(store.as_ref(), 0).await?;
    }
    let claimed = db(store.saga_claim_due(&claim("w1", SAGAS as u32, 0)).await)?;
    ensure!(claimed.len() == SAGAS, "claimed {}", claimed.len());
    let ascending: Vec<LeaseRef> = {
        let mut leases: Vec<LeaseRef> =
            claimed.iter().map(|c| LeaseRef { id: c.record.id, fencing_token: c.record.fencing_token }).collect();
        leases.sort_by_key(|lease| lease.id);
        leases
    };
    let descending: Vec<LeaseRef> = ascending.iter().rev().copied().collect();
    let commits: Vec<_> = descending
        .iter()
        .map(|lease| commit(lease.id, lease.fencing_token, SagaState::new(&definition()), 10, Vec::new()))
        .collect();
    let renew = |leases: Vec<LeaseRef>| {
        let store = store.clone();
        tokio::spawn(async move {
            for round in 0..ROUNDS {
                let renewal = store.lease_renew("w1", &leases, 10 + round as i64, 30_000).await;
                let renewal = renewal.map_err(|e| format!("heartbeat failed: {e}"))?;
                if !renewal.lost.is_empty() {
                    return Err(format!("leases lost: {:?}", renewal.lost));
                }
            }
            Ok::<(), String>(())
        })
    };
    let committing = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let outcomes = store.saga_commit_batch(&commits).await.map_err(|e| format!("commit failed: {e}"))?;
                if outcomes.iter().any(|o| *o != CommitOutcome::Committed) {
                    return Err(format!("not committed: {outcomes:?}"));
                }
            }
            Ok::<(), String>(())
        })
    };
    let tasks = [renew(ascending.clone()), renew(descending), committing];
    for task in tasks {
        task.await.map_err(|e| format!("task: {e}"))??;
    }
    db(store.lease_release("w1", &ascending, 100).await)?;
    let again = db(store.saga_claim_due(&claim("w2", SAGAS as u32, 100)).await)?;
    ensure!(again.len() == SAGAS, "released and claimable: {}", again.len());
    Ok(())
}

pub async fn queue_facts_read_what_the_claim_reads(store: Arc<dyn EngineStore>) -> CheckResult {
    let mut keyed = Vec::new();
    for _ in 0..3 {
        let mut params = create_params(0);
        params.concurrency = Some(("k".into(), 1));
        match db(create_one(&*store, params).await)? {
            SagaCreated::Created(record) => keyed.push(record),
            other => return Err(format!("create: {other:?}")),
        }
    }
    let free = create(store.as_ref(), 1).await?;
    let facts = db(store.saga_queue_facts(&keyed[2], 5).await)?;
    ensure!(!facts.admitted && facts.key_holders.is_empty(), "nobody admitted yet: {facts:?}");
    ensure!(facts.due_count == 1 && facts.oldest_due_at_ms == Some(1), "only the unkeyed one is due: {facts:?}");
    ensure!(facts.latest_event.as_ref().is_some_and(|e| e.kind == "saga_created"), "{facts:?}");
    ensure!(facts.callback.is_none(), "no callback: {facts:?}");

    let claimed = db(store.saga_claim_due(&claim("w1", 10, 10)).await)?;
    ensure!(claimed.len() == 2, "one keyed saga admitted and the free one: {}", claimed.len());
    let admitted: Vec<Uuid> =
        claimed.iter().map(|c| c.record.id).filter(|id| keyed.iter().any(|k| k.id == *id)).collect();
    ensure!(admitted.len() == 1, "{admitted:?}");
    let waiting = keyed.iter().find(|k| k.id != admitted[0]).ok_or("a keyed saga waits")?;
    let facts = db(store.saga_queue_facts(waiting, 10).await)?;
    ensure!(!facts.admitted && facts.key_holders == admitted, "the admitted one holds the key: {facts:?}");
    ensure!(facts.due_count == 0, "leased sagas are not due: {facts:?}");
    let holder = db(store.saga_get(admitted[0]).await)?;
    let facts = db(store.saga_queue_facts(&holder, 10).await)?;
    ensure!(facts.admitted && facts.key_holders.is_empty(), "a holder is admitted, holders exclude it: {facts:?}");
    let _ = free;
    Ok(())
}
