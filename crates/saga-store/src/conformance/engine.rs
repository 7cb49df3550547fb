//! Checks of the engine's store: definitions, creates, claims, commits, leases, cancel,
//! signals, callbacks, admission and priority.

use std::collections::HashSet;
use std::sync::Arc;

use saga_core::{Definition, HistoryEvent, SagaState, SagaStatus};
use serde_json::json;
use uuid::Uuid;

use super::{db, ensure, CheckResult};
use crate::creates::create_one;
use crate::{
    CallbackRegister, ClaimParams, CommitOutcome, LeaseRef, SagaCommit, SagaCreate, SagaCreated, SagaCreates,
    SagaFilter, SagaOperatorUpdate, Store, StoreError,
};

fn definition() -> Definition {
    let doc = json!({"steps": [
        {"name": "a", "action": {"builtin": "core.echo"}},
        {"name": "b", "action": {"builtin": "core.echo"}},
    ]});
    match saga_core::validate_definition("conformance", &doc, &["core.echo"]) {
        Ok(def) => def,
        Err(errors) => panic!("conformance definition is invalid: {errors:?}"),
    }
}

pub(super) fn create_params(now_ms: i64) -> SagaCreate {
    SagaCreate {
        id: Uuid::now_v7(),
        definition: "conformance".into(),
        version: 1,
        tenant_id: None,
        input: json!({"n": 1}),
        state: SagaState::new(&definition()),
        priority: 0,
        idempotency_key: None,
        request_hash: None,
        require_latest: false,
        lease: None,
        concurrency: None,
        now_ms,
    }
}

async fn create(store: &dyn Store, now_ms: i64) -> Result<Uuid, String> {
    match db(create_one(store, create_params(now_ms)).await)? {
        SagaCreated::Created(record) => Ok(record.id),
        other => Err(format!("expected Created, got {other:?}")),
    }
}

fn claim(worker: &str, limit: u32, now_ms: i64) -> ClaimParams {
    ClaimParams { worker_id: worker.into(), limit, now_ms, lease_ttl_ms: 30_000 }
}

pub(super) fn commit(id: Uuid, token: i64, state: SagaState, now_ms: i64, events: Vec<HistoryEvent>) -> SagaCommit {
    SagaCommit {
        id,
        tenant_id: None,
        fencing_token: token,
        state,
        run_at_ms: now_ms,
        release_lease: false,
        events,
        worker_id: "w1".into(),
        wake_seq_seen: 0,
        tenant_change: None,
        now_ms,
    }
}

pub async fn migrations_are_idempotent(store: Arc<dyn Store>) -> CheckResult {
    let first = db(store.migrate(0).await)?;
    let second = db(store.migrate(0).await)?;
    ensure!(first == second, "migrate twice changed status: {first:?} vs {second:?}");
    ensure!(db(store.schema_status().await)?.is_current(), "schema not current after migrate");
    Ok(())
}

pub async fn definitions_version_on_change_only(store: Arc<dyn Store>) -> CheckResult {
    let v1 = json!({"steps": [{"name": "a", "action": {"builtin": "core.echo"}}]});
    let v2 = json!({"steps": [{"name": "b", "action": {"builtin": "core.echo"}}]});
    let put = db(store.definition_put("d", &v1, 1).await)?;
    ensure!(put.created && put.record.version == 1, "first put: {put:?}");
    let again = db(store.definition_put("d", &v1, 2).await)?;
    ensure!(!again.created && again.record.version == 1, "identical put: {again:?}");
    let put2 = db(store.definition_put("d", &v2, 3).await)?;
    ensure!(put2.created && put2.record.version == 2, "changed put: {put2:?}");
    ensure!(db(store.definition_get("d", None).await)?.version == 2, "latest is not v2");
    ensure!(db(store.definition_get("d", Some(1)).await)?.document == v1, "v1 document changed");
    ensure!(matches!(store.definition_get("d", Some(9)).await, Err(StoreError::NotFound)), "v9 found");
    ensure!(matches!(store.definition_get("nope", None).await, Err(StoreError::NotFound)), "nope found");
    db(store.definition_put("c", &v1, 4).await)?;
    let names: Vec<(String, i32)> =
        db(store.definition_list().await)?.into_iter().map(|d| (d.name, d.version)).collect();
    ensure!(names == vec![("c".to_string(), 1), ("d".to_string(), 2)], "list: {names:?}");
    Ok(())
}

pub async fn sagas_create_idempotently(store: Arc<dyn Store>) -> CheckResult {
    let mut params = create_params(10);
    params.idempotency_key = Some("admin:k1".into());
    params.request_hash = Some("h1".into());
    let SagaCreated::Created(first) = db(create_one(&*store, params.clone()).await)? else {
        return Err("first create not Created".into());
    };
    ensure!(first.status == SagaStatus::Pending && first.fencing_token == 0, "new saga: {first:?}");
    let mut replay = params.clone();
    replay.id = Uuid::now_v7();
    match db(create_one(&*store, replay.clone()).await)? {
        SagaCreated::Replayed(record) => ensure!(record.id == first.id, "replayed another saga"),
        other => return Err(format!("replay: {other:?}")),
    }
    replay.request_hash = Some("h2".into());
    let conflict = db(create_one(&*store, replay).await)?;
    ensure!(conflict == SagaCreated::KeyConflict, "different body: {conflict:?}");
    let events = db(store.saga_events(first.id, 0, 100).await)?;
    ensure!(events.len() == 1 && events[0].kind == "saga_created", "events: {events:?}");
    ensure!(db(store.saga_get(first.id).await)? == first, "get differs from create");
    ensure!(matches!(store.saga_get(Uuid::now_v7()).await, Err(StoreError::NotFound)), "unknown id found");
    Ok(())
}

pub async fn create_for_latest_refuses_a_moved_version(store: Arc<dyn Store>) -> CheckResult {
    let doc = json!({"steps": [{"name": "a", "action": {"builtin": "core.echo"}}]});
    db(store.definition_put("conformance", &doc, 1).await)?;
    let mut params = create_params(2);
    params.require_latest = true;
    let first = db(create_one(&*store, params.clone()).await)?;
    ensure!(matches!(first, SagaCreated::Created(_)), "v1 is latest: {first:?}");
    db(store.definition_put("conformance", &json!({"steps": []}), 3).await)?;
    params.id = Uuid::now_v7();
    let moved = db(create_one(&*store, params.clone()).await)?;
    ensure!(moved == SagaCreated::VersionMoved, "v2 exists: {moved:?}");
    params.require_latest = false;
    let pinned = db(create_one(&*store, params).await)?;
    ensure!(matches!(pinned, SagaCreated::Created(_)), "explicit v1: {pinned:?}");
    Ok(())
}

pub async fn create_with_a_lease_is_claimed_already(store: Arc<dyn Store>) -> CheckResult {
    let mut params = create_params(100);
    params.lease = Some(crate::LeaseGrant { worker_id: "w1".into(), lease_ttl_ms: 30_000 });
    let SagaCreated::Created(record) = db(create_one(&*store, params).await)? else {
        return Err("not created".into());
    };
    ensure!(record.fencing_token == 1, "token: {}", record.fencing_token);
    ensure!(record.lease_owner.as_deref() == Some("w1"), "owner: {:?}", record.lease_owner);
    ensure!(record.lease_expires_at_ms == Some(30_100), "expiry: {:?}", record.lease_expires_at_ms);
    ensure!(db(store.saga_claim_due(&claim("w2", 10, 30_099)).await)?.is_empty(), "leased saga claimed");
    let mut state = record.state.clone();
    state.status = SagaStatus::Executing;
    let write =
        commit(record.id, 1, state, 200, vec![HistoryEvent::new("lease_acquired", None, None, json!(null), 200)]);
    ensure!(db(store.saga_commit_batch(&[write]).await)? == vec![CommitOutcome::Committed], "owner's write");
    let taken = db(store.saga_claim_due(&claim("w2", 10, 30_100)).await)?;
    ensure!(taken.len() == 1 && taken[0].previous_owner.as_deref() == Some("w1"), "after expiry: {taken:?}");
    ensure!(taken[0].record.fencing_token == 2, "token: {}", taken[0].record.fencing_token);
    Ok(())
}

pub async fn concurrent_creates_with_one_key_make_one_saga(store: Arc<dyn Store>) -> CheckResult {
    let mut tasks = Vec::new();
    for _ in 0..16 {
        // Each its own writer, as if on its own instance: the key is unique across transactions.
        let (creates, _writer) = SagaCreates::start(store.clone());
        tasks.push(tokio::spawn(async move {
            let mut params = create_params(1);
            params.idempotency_key = Some("admin:same".into());
            params.request_hash = Some("h".into());
            db(creates.create(params).await)
        }));
    }
    let mut ids = HashSet::new();
    let mut created = 0;
    for task in tasks {
        match task.await.map_err(|e| format!("creator panicked: {e}"))?? {
            SagaCreated::Created(record) => {
                created += 1;
                ids.insert(record.id);
            }
            SagaCreated::Replayed(record) => {
                ids.insert(record.id);
            }
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    ensure!(created == 1 && ids.len() == 1, "created {created}, distinct ids {}", ids.len());
    Ok(())
}

/// Many different creates at once (a store may write concurrent creates together): each gets
/// the outcome it would get alone, and one that cannot be written (a duplicate id) fails alone.
pub async fn concurrent_mixed_creates_each_get_their_own_outcome(store: Arc<dyn Store>) -> CheckResult {
    let doc = json!({"steps": [{"name": "a", "action": {"builtin": "core.echo"}}]});
    db(store.definition_put("conformance", &doc, 1).await)?;
    db(store.definition_put("conformance", &json!({"steps": []}), 2).await)?;
    let mut taken = create_params(1);
    taken.idempotency_key = Some("admin:taken".into());
    taken.request_hash = Some("h".into());
    let SagaCreated::Created(existing) = db(create_one(&*store, taken.clone()).await)? else {
        return Err("setup create not Created".into());
    };
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Expect {
        Created,
        Leased,
        Keyed,
        Replayed,
        KeyConflict,
        VersionMoved,
        Error,
    }
    let mut cases = Vec::new();
    for n in 0..60 {
        let mut params = create_params(10 + n);
        let expect = match n % 7 {
            0 => Expect::Created,
            1 => {
                params.lease = Some(crate::LeaseGrant { worker_id: "w1".into(), lease_ttl_ms: 30_000 });
                Expect::Leased
            }
            2 => {
                params.concurrency = Some((format!("key-{}", n % 2), 1));
                Expect::Keyed
            }
            3 => {
                params.idempotency_key = taken.idempotency_key.clone();
                params.request_hash = taken.request_hash.clone();
                Expect::Replayed
            }
            4 => {
                params.idempotency_key = taken.idempotency_key.clone();
                params.request_hash = Some("other".into());
                Expect::KeyConflict
            }
            5 => {
                params.require_latest = true;
                Expect::VersionMoved
            }
            _ => {
                params.id = existing.id;
                Expect::Error
            }
        };
        cases.push((params, expect));
    }
    // One writer for all: concurrent creates share its batches.
    let (creates, _writer) = SagaCreates::start(store.clone());
    let tasks: Vec<_> = cases
        .iter()
        .map(|(params, _)| {
            let (creates, params) = (creates.clone(), params.clone());
            tokio::spawn(async move { creates.create(params).await })
        })
        .collect();
    let mut created = Vec::new();
    for (task, (params, expect)) in tasks.into_iter().zip(&cases) {
        let outcome = task.await.map_err(|e| format!("creator panicked: {e}"))?;
        let fine = match (expect, &outcome) {
            (Expect::Created, Ok(SagaCreated::Created(r))) => r.id == params.id && r.lease_owner.is_none(),
            (Expect::Leased, Ok(SagaCreated::Created(r))) => {
                r.fencing_token == 1 && r.lease_owner.as_deref() == Some("w1")
            }
            (Expect::Keyed, Ok(SagaCreated::Created(r))) => {
                r.concurrency_key == params.concurrency.as_ref().map(|c| c.0.clone())
            }
            (Expect::Replayed, Ok(SagaCreated::Replayed(r))) => r.id == existing.id,
            (Expect::KeyConflict, Ok(SagaCreated::KeyConflict)) => true,
            (Expect::VersionMoved, Ok(SagaCreated::VersionMoved)) => true,
            (Expect::Error, Err(_)) => true,
            _ => false,
        };
        ensure!(fine, "{expect:?} got {outcome:?}");
        if let Ok(SagaCreated::Created(r)) = outcome {
            created.push(r.id);
        }
    }
    ensure!(created.len() == 9 * 3, "created {}", created.len());
    for id in created {
        let events = db(store.saga_events(id, 0, 10).await)?;
        ensure!(events.len() == 1 && events[0].kind == "saga_created", "{id}: {events:?}");
    }
    ensure!(db(store.saga_get(existing.id).await)? == existing, "the duplicate id changed the existing saga");
    Ok(())
}

pub async fn claim_sets_lease_and_bumps_token(store: Arc<dyn Store>) -> CheckResult {
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

pub async fn stale_token_write_is_rejected(store: Arc<dyn Store>) -> CheckResult {
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

pub async fn expired_lease_is_claimable(store: Arc<dyn Store>) -> CheckResult {
    let id = create(store.as_ref(), 0).await?;
    db(store.saga_claim_due(&claim("w1", 1, 0)).await)?;
    ensure!(db(store.saga_claim_due(&claim("w2", 1, 29_999)).await)?.is_empty(), "claimed before expiry");
    let taken = db(store.saga_claim_due(&claim("w2", 1, 30_000)).await)?;
    ensure!(taken.len() == 1 && taken[0].record.id == id, "not taken over: {taken:?}");
    ensure!(taken[0].previous_owner.as_deref() == Some("w1"), "previous owner: {:?}", taken[0].previous_owner);
    ensure!(taken[0].record.fencing_token == 2, "token: {}", taken[0].record.fencing_token);
    Ok(())
}

pub async fn concurrent_claimers_never_share_a_saga(store: Arc<dyn Store>) -> CheckResult {
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

pub async fn commits_append_history_and_schedule(store: Arc<dyn Store>) -> CheckResult {
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

pub async fn heartbeat_renews_and_reports_lost_leases(store: Arc<dyn Store>) -> CheckResult {
    let a = create(store.as_ref(), 0).await?;
    let b = create(store.as_ref(), 0).await?;
    let claimed = db(store.saga_claim_due(&claim("w1", 2, 0)).await)?;
    let leases: Vec<LeaseRef> =
        claimed.iter().map(|c| LeaseRef { id: c.record.id, fencing_token: c.record.fencing_token }).collect();
    ensure!(leases.len() == 2, "claimed {}", leases.len());
    let lost = db(store.lease_renew("w1", &leases, 20_000, 30_000).await)?;
    ensure!(lost.is_empty(), "lost on renew: {lost:?}");
    ensure!(db(store.saga_claim_due(&claim("w2", 2, 40_000)).await)?.is_empty(), "renewed lease expired early");
    let taken = db(store.saga_claim_due(&claim("w2", 1, 50_000)).await)?;
    let taken_id = taken.first().map(|c| c.record.id).ok_or("nothing expired")?;
    ensure!(taken_id == a || taken_id == b, "unknown saga");
    let lost = db(store.lease_renew("w1", &leases, 50_001, 30_000).await)?;
    ensure!(lost == vec![taken_id], "lost: {lost:?}");
    Ok(())
}

pub async fn released_lease_is_claimable_at_once(store: Arc<dyn Store>) -> CheckResult {
    let id = create(store.as_ref(), 0).await?;
    let claimed = db(store.saga_claim_due(&claim("w1", 1, 0)).await)?;
    let lease = LeaseRef { id, fencing_token: claimed.first().map(|c| c.record.fencing_token).ok_or("not claimed")? };
    db(store.lease_release("w1", &[lease], 10).await)?;
    let again = db(store.saga_claim_due(&claim("w2", 1, 10)).await)?;
    ensure!(again.len() == 1 && again[0].previous_owner.is_none(), "after release: {again:?}");
    Ok(())
}

pub async fn list_filters_and_pages(store: Arc<dyn Store>) -> CheckResult {
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut params = create_params(i);
        params.tenant_id = (i % 2 == 0).then(|| "acme".to_string());
        if i == 4 {
            params.definition = "other".into();
        }
        ids.push(params.id);
        db(create_one(&*store, params).await)?;
    }
    let page1 = db(store.saga_list(&SagaFilter { limit: 2, ..Default::default() }).await)?;
    let page1_ids: Vec<Uuid> = page1.iter().map(|r| r.id).collect();
    ensure!(page1_ids == vec![ids[4], ids[3]], "page 1 not newest first");
    let page2 = db(store.saga_list(&SagaFilter { limit: 2, before_id: Some(ids[3]), ..Default::default() }).await)?;
    ensure!(page2.iter().map(|r| r.id).collect::<Vec<_>>() == vec![ids[2], ids[1]], "page 2");
    let acme =
        db(store.saga_list(&SagaFilter { limit: 10, tenant_id: Some("acme".into()), ..Default::default() }).await)?;
    ensure!(acme.len() == 3, "tenant filter: {}", acme.len());
    let other =
        db(store.saga_list(&SagaFilter { limit: 10, definition: Some("other".into()), ..Default::default() }).await)?;
    ensure!(other.len() == 1, "definition filter: {}", other.len());
    let pending =
        db(store.saga_list(&SagaFilter { limit: 10, status: Some(SagaStatus::Pending), ..Default::default() }).await)?;
    let done = db(store
        .saga_list(&SagaFilter { limit: 10, status: Some(SagaStatus::Completed), ..Default::default() })
        .await)?;
    ensure!(pending.len() == 5 && done.is_empty(), "status filter");
    Ok(())
}

pub async fn operator_update_is_conditional(store: Arc<dyn Store>) -> CheckResult {
    let id = create(store.as_ref(), 0).await?;
    let record = db(store.saga_get(id).await)?;
    let update = SagaOperatorUpdate {
        id,
        tenant_id: None,
        expected_status: SagaStatus::Failed,
        state: record.state.clone(),
        events: vec![HistoryEvent::new("saga_retried", None, None, json!(null), 5)],
        tenant_change: None,
        now_ms: 5,
    };
    ensure!(
        matches!(store.saga_operator_update(update.clone()).await, Err(StoreError::Conflict(_))),
        "applied to PENDING"
    );
    let mut ok = update;
    ok.expected_status = SagaStatus::Pending;
    let mut state = record.state;
    state.status = SagaStatus::Executing;
    ok.state = state;
    let updated = db(store.saga_operator_update(ok).await)?;
    ensure!(updated.status == SagaStatus::Executing && updated.run_at_ms == 5, "updated: {updated:?}");
    Ok(())
}

pub(super) async fn claim_one(store: &dyn Store, now_ms: i64) -> Result<crate::Claimed, String> {
    db(store.saga_claim_due(&claim("w1", 1, now_ms)).await)?.into_iter().next().ok_or_else(|| "nothing claimed".into())
}

pub async fn cancel_request_stops_unacknowledged_commits(store: Arc<dyn Store>) -> CheckResult {
    let id = create(store.as_ref(), 0).await?;
    let claimed = claim_one(store.as_ref(), 0).await?;
    let token = claimed.record.fencing_token;
    let requested = db(store.saga_cancel_request(id, 10).await)?;
    ensure!(requested.cancel_requested_at_ms == Some(10), "cancel not recorded: {requested:?}");
    ensure!(requested.lease_owner.as_deref() == Some("w1"), "the driver keeps its lease");
    let mut state = claimed.record.state.clone();
    state.status = SagaStatus::Completed;
    let outcome = db(store.saga_commit_batch(&[commit(id, token, state.clone(), 20, vec![])]).await)?;
    ensure!(outcome == vec![CommitOutcome::CancelRequested { at_ms: 10 }], "outcome: {outcome:?}");
    ensure!(db(store.saga_get(id).await)?.status == SagaStatus::Pending, "nothing written");
    // A second request keeps the first time.
    ensure!(db(store.saga_cancel_request(id, 15).await)?.cancel_requested_at_ms == Some(10), "time moved");
    state.status = SagaStatus::Compensated;
    state.cancel_requested_at_ms = Some(10);
    let outcome = db(store.saga_commit_batch(&[commit(id, token, state, 30, vec![])]).await)?;
    ensure!(outcome == vec![CommitOutcome::Committed], "acknowledged commit: {outcome:?}");
    Ok(())
}

pub async fn cancel_request_wakes_a_parked_saga_and_refuses_terminal(store: Arc<dyn Store>) -> CheckResult {
    let id = create(store.as_ref(), 0).await?;
    let claimed = claim_one(store.as_ref(), 0).await?;
    let mut park = commit(id, claimed.record.fencing_token, claimed.record.state.clone(), 5, vec![]);
    park.release_lease = true;
    park.run_at_ms = crate::RUN_AT_NEVER_MS;
    ensure!(db(store.saga_commit_batch(&[park]).await)? == vec![CommitOutcome::Committed], "park");
    ensure!(db(store.saga_claim_due(&claim("w1", 1, 100)).await)?.is_empty(), "parked saga claimed");
    db(store.saga_cancel_request(id, 100).await)?;
    let again = claim_one(store.as_ref(), 100).await?;
    ensure!(again.record.cancel_requested_at_ms == Some(100), "claim shows the request");
    let mut state = again.record.state.clone();
    state.status = SagaStatus::Compensated;
    state.cancel_requested_at_ms = Some(100);
    db(store.saga_commit_batch(&[commit(id, again.record.fencing_token, state, 110, vec![])]).await)?;
    match store.saga_cancel_request(id, 120).await {
        Err(StoreError::Conflict(_)) => {}
        other => return Err(format!("cancel of a terminal saga: {other:?}")),
    }
    match store.saga_cancel_request(Uuid::now_v7(), 120).await {
        Err(StoreError::NotFound) => Ok(()),
        other => Err(format!("cancel of an unknown saga: {other:?}")),
    }
}

pub async fn signals_are_buffered_in_order_and_wake(store: Arc<dyn Store>) -> CheckResult {
    let id = create(store.as_ref(), 0).await?;
    let first = db(store.signal_send(id, "approval", &json!({"ok": 1}), 10).await)?;
    let second = db(store.signal_send(id, "approval", &json!({"ok": 2}), 11).await)?;
    db(store.signal_send(id, "other", &json!(null), 12).await)?;
    let found = db(store.signal_find(id, "approval", &[]).await)?.ok_or("first signal missing")?;
    ensure!(found.id == first.id && found.payload == json!({"ok": 1}), "found: {found:?}");
    let next = db(store.signal_find(id, "approval", &[first.id]).await)?.ok_or("second signal missing")?;
    ensure!(next.id == second.id, "next: {next:?}");
    ensure!(db(store.signal_find(id, "approval", &[first.id, second.id]).await)?.is_none(), "all consumed");
    ensure!(db(store.saga_get(id).await)?.wake_seq == 3, "wake_seq not bumped per signal");
    match store.signal_send(Uuid::now_v7(), "approval", &json!(null), 13).await {
        Err(StoreError::NotFound) => Ok(()),
        other => Err(format!("signal to an unknown saga: {other:?}")),
    }
}

pub async fn a_delivery_during_a_lease_makes_the_parked_saga_due(store: Arc<dyn Store>) -> CheckResult {
    let id = create(store.as_ref(), 0).await?;
    let claimed = claim_one(store.as_ref(), 0).await?;
    // The driver decided to wait (having seen wake_seq 0); a signal lands before its commit.
    db(store.signal_send(id, "go", &json!(1), 5).await)?;
    let mut park = commit(id, claimed.record.fencing_token, claimed.record.state.clone(), 6, vec![]);
    park.release_lease = true;
    park.run_at_ms = crate::RUN_AT_NEVER_MS;
    park.wake_seq_seen = claimed.record.wake_seq;
    ensure!(db(store.saga_commit_batch(&[park]).await)? == vec![CommitOutcome::Committed], "park");
    let record = db(store.saga_get(id).await)?;
    ensure!(record.run_at_ms == 6, "the late delivery must make the saga due now, run_at {}", record.run_at_ms);
    Ok(())
}

pub async fn callbacks_complete_once_and_heartbeats_extend(store: Arc<dyn Store>) -> CheckResult {
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
    Ok(())
}

pub async fn admission_never_exceeds_the_key_limit(store: Arc<dyn Store>) -> CheckResult {
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
    db(store.saga_cancel_request(waiting, 40).await)?;
    let cancelled = db(store.saga_claim_due(&claim("w9", 10, 40)).await)?;
    ensure!(cancelled.len() == 1 && cancelled[0].record.id == waiting, "cancelled saga: {cancelled:?}");
    Ok(())
}

pub async fn priority_goes_first_but_old_work_is_not_starved(store: Arc<dyn Store>) -> CheckResult {
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
