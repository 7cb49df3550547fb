//! Checks of definitions, saga creation (idempotency keys, versions, leases, concurrent and
//! batched creates), listing and an operator's update.

use std::collections::HashSet;
use std::sync::Arc;

use saga_core::{HistoryEvent, SagaStatus};
use serde_json::json;
use uuid::Uuid;

use super::fixtures::*;
use super::{db, ensure, CheckResult};
use crate::creates::create_one;
use crate::{CommitOutcome, EngineStore, SagaCreated, SagaCreates, SagaFilter, SagaOperatorUpdate, StoreError};

pub async fn migrations_are_idempotent(store: Arc<dyn crate::Store>) -> CheckResult {
    let first = db(store.migrate(0).await)?;
    let second = db(store.migrate(0).await)?;
    ensure!(first == second, "migrate twice changed status: {first:?} vs {second:?}");
    ensure!(db(store.schema_status().await)?.is_current(), "schema not current after migrate");
    Ok(())
}

pub async fn definitions_version_on_change_only(store: Arc<dyn EngineStore>) -> CheckResult {
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

pub async fn sagas_create_idempotently(store: Arc<dyn EngineStore>) -> CheckResult {
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

pub async fn create_for_latest_refuses_a_moved_version(store: Arc<dyn EngineStore>) -> CheckResult {
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

pub async fn create_with_a_lease_is_claimed_already(store: Arc<dyn EngineStore>) -> CheckResult {
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

pub async fn concurrent_creates_with_one_key_make_one_saga(store: Arc<dyn EngineStore>) -> CheckResult {
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
pub async fn concurrent_mixed_creates_each_get_their_own_outcome(store: Arc<dyn EngineStore>) -> CheckResult {
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

pub async fn list_filters_and_pages(store: Arc<dyn EngineStore>) -> CheckResult {
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

pub async fn operator_update_is_conditional(store: Arc<dyn EngineStore>) -> CheckResult {
    let id = create(store.as_ref(), 0).await?;
    let record = db(store.saga_get(id).await)?;
    let update = SagaOperatorUpdate {
        id,
        tenant_id: None,
        expected_status: SagaStatus::Failed,
        state: record.state.clone(),
        events: vec![HistoryEvent::new("saga_retried", None, None, json!(null), 5)],
        tenant_change: None,
        job: None,
        now_ms: 5,
        moves_version: None,
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
    // An upgrade from a version it is not on: nothing written.
    let mut elsewhere = ok.clone();
    elsewhere.moves_version = Some((record.version + 1, record.version + 2));
    ensure!(
        matches!(store.saga_operator_update(elsewhere).await, Err(StoreError::Conflict(_))),
        "moved from a version it is not on"
    );
    ok.moves_version = Some((record.version, record.version + 1));
    let updated = db(store.saga_operator_update(ok).await)?;
    ensure!(updated.status == SagaStatus::Executing && updated.run_at_ms == 5, "updated: {updated:?}");
    ensure!(updated.version == record.version + 1, "moved to the next version: {updated:?}");
    ensure!(db(store.saga_get(id).await)?.version == record.version + 1, "and read back");
    Ok(())
}

pub async fn stalled_sagas_list_least_recently_moved_first_and_page(store: Arc<dyn EngineStore>) -> CheckResult {
    // updated_at is each one's creation time: 10, 20, 30.
    let longest = create(store.as_ref(), 10).await?;
    let middle = create(store.as_ref(), 20).await?;
    let latest = create(store.as_ref(), 30).await?;
    // One finishes: it is stalled no more, however old.
    let finished = create(store.as_ref(), 5).await?;
    let claimed = db(store.saga_claim_due(&claim("w1", 10, 6)).await)?;
    let done = claimed.iter().find(|c| c.record.id == finished).ok_or("the finished one was claimed")?;
    let mut state = done.record.state.clone();
    state.status = SagaStatus::Completed;
    db(store.saga_commit_batch(&[commit(finished, done.record.fencing_token, state, 7, vec![])]).await)?;
    let filter = SagaFilter { limit: 2, stalest_first: true, ..Default::default() };
    let first: Vec<Uuid> = db(store.saga_list(&filter).await)?.into_iter().map(|r| r.id).collect();
    ensure!(first == vec![longest, middle], "least recently moved first: {first:?}");
    let next = SagaFilter { before_id: first.last().copied(), ..filter };
    let second: Vec<Uuid> = db(store.saga_list(&next).await)?.into_iter().map(|r| r.id).collect();
    ensure!(second == vec![latest], "the page after: {second:?}");
    Ok(())
}
