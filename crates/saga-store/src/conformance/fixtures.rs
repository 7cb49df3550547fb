//! What the checks build on: a two-step definition, create parameters, claims and commits, and
//! subscriptions.

use saga_core::{Definition, HistoryEvent, SagaState};
use serde_json::json;
use uuid::Uuid;

use super::db;
use crate::creates::create_one;
use crate::{
    ClaimParams, Destination, EngineStore, SagaCommit, SagaCreate, SagaCreated, SubscriptionRecord, SubscriptionStatus,
};

pub(super) fn definition() -> Definition {
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
    SagaCreate::new("conformance", 1, json!({"n": 1}), SagaState::new(&definition()), now_ms)
}

pub(super) async fn create(store: &dyn EngineStore, now_ms: i64) -> Result<Uuid, String> {
    match db(create_one(store, create_params(now_ms)).await)? {
        SagaCreated::Created(record) => Ok(record.id),
        other => Err(format!("expected Created, got {other:?}")),
    }
}

pub(super) fn claim(worker: &str, limit: u32, now_ms: i64) -> ClaimParams {
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
        outbox: Vec::new(),
        now_ms,
    }
}

pub(super) async fn claim_one(store: &dyn EngineStore, now_ms: i64) -> Result<crate::Claimed, String> {
    db(store.saga_claim_due(&claim("w1", 1, now_ms)).await)?.into_iter().next().ok_or_else(|| "nothing claimed".into())
}

/// An active subscription to `url` for `events`, of `tenant` (None: the operator's).
pub(super) fn subscription(url: &str, events: &[&str], tenant: Option<&str>, now_ms: i64) -> SubscriptionRecord {
    SubscriptionRecord {
        managed: false,
        id: Uuid::now_v7(),
        destination: Destination::Url(url.into()),
        events: events.iter().map(|e| e.to_string()).collect(),
        tenant_id: tenant.map(str::to_string),
        status: SubscriptionStatus::Active,
        rate_limit_per_s: None,
        secret: format!("whsec_{}", Uuid::now_v7().simple()),
        previous_secret: None,
        previous_secret_until_ms: None,
        failing_since_ms: None,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
    }
}

/// Creates a saga, claims it and commits it parked with no due time (lease released, `run_at`
/// never): nothing makes it due but a delivery. Returns its id and the claim.
pub(super) async fn parked(store: &dyn EngineStore) -> Result<(Uuid, crate::Claimed), String> {
    let id = create(store, 0).await?;
    let claimed = claim_one(store, 0).await?;
    let mut park = commit(id, claimed.record.fencing_token, claimed.record.state.clone(), 5, vec![]);
    park.release_lease = true;
    park.run_at_ms = crate::RUN_AT_NEVER_MS;
    let committed = store.saga_commit_batch(&[park]).await.map_err(|e| e.to_string())?;
    if committed != vec![crate::CommitOutcome::Committed] {
        return Err(format!("park: {committed:?}"));
    }
    Ok((id, claimed))
}
