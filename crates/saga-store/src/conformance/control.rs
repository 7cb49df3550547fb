//! Checks of the control plane's store: tenants created with their saga, status changes that
//! commit with the saga's transition or not at all, keys, users and webhook receipts.

use std::sync::Arc;

use saga_core::{HistoryEvent, SagaStatus};
use serde_json::json;
use uuid::Uuid;

use super::fixtures::{claim_one, commit, create_params};
use super::{db, ensure, CheckResult};
use crate::{CommitOutcome, SagaCreate, SagaFilter, SagaOperatorUpdate, Store, StoreError};

pub(super) fn tenant(id: &str, now_ms: i64) -> crate::TenantRecord {
    use saga_core::tenant::{SlaTier, StorageMode, TenantStatus, Tier};
    crate::TenantRecord {
        id: id.into(),
        name: format!("Tenant {id}"),
        tier: Tier::Bridge,
        storage_mode: StorageMode::Schema,
        sla_tier: SlaTier::Standard,
        status: TenantStatus::Provisioning,
        domains: json!(["a.example.com"]),
        contacts: json!([]),
        metadata: json!({"plan": "x"}),
        storage: serde_json::Value::Null,
        migrations: json!([]),
        saga_id: None,
        error: None,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        delete_at_ms: None,
    }
}

pub(super) fn tenant_saga(id: &str, now_ms: i64) -> SagaCreate {
    SagaCreate { tenant_id: Some(id.into()), ..create_params(now_ms) }
}

pub async fn tenants_are_created_with_their_saga_and_change_status_conditionally(store: Arc<dyn Store>) -> CheckResult {
    use saga_core::tenant::TenantStatus;
    let saga = tenant_saga("acme", 1);
    let saga_id = saga.id;
    let (created, saga_record) = db(store.tenant_create(tenant("acme", 1), saga, None).await)?;
    ensure!(created.saga_id == Some(saga_id) && saga_record.id == saga_id, "saga linked: {created:?}");
    ensure!(saga_record.tenant_id.as_deref() == Some("acme"), "saga carries the tenant");
    let again = store.tenant_create(tenant("acme", 2), tenant_saga("acme", 2), None).await;
    ensure!(matches!(again, Err(StoreError::Conflict(_))), "duplicate id: {again:?}");
    let sagas = db(store.saga_list(&SagaFilter { limit: 10, ..Default::default() }).await)?;
    ensure!(sagas.len() == 1, "a refused tenant starts no saga ({} sagas)", sagas.len());
    ensure!(matches!(store.tenant_get("nope").await, Err(StoreError::NotFound)), "unknown tenant");
    db(store.tenant_create(tenant("beta", 3), tenant_saga("beta", 3), None).await)?;
    let page = db(store.tenant_list(&crate::TenantFilter { limit: 1, ..Default::default() }).await)?;
    ensure!(page.len() == 1 && page[0].id == "acme", "first page: {page:?}");
    let next = db(store
        .tenant_list(&crate::TenantFilter { limit: 10, after_id: Some("acme".into()), ..Default::default() })
        .await)?;
    ensure!(next.len() == 1 && next[0].id == "beta", "second page: {next:?}");
    // Illegal source: refused, nothing written, no saga started.
    let refused = store
        .tenant_transition(crate::TenantTransition {
            id: "acme".into(),
            to: TenantStatus::Suspended,
            from: vec![TenantStatus::Active],
            error: None,
            saga: Some(tenant_saga("acme", 4)),
            event: None,
            now_ms: 4,
            delete_at_ms: None,
        })
        .await;
    ensure!(matches!(refused, Err(StoreError::Conflict(_))), "from PROVISIONING to SUSPENDED: {refused:?}");
    let sagas = db(store.saga_list(&SagaFilter { limit: 10, ..Default::default() }).await)?;
    ensure!(sagas.len() == 2, "the refused transition started no saga");
    let saga = tenant_saga("acme", 5);
    let deprovision_id = saga.id;
    let (moved, started) = db(store
        .tenant_transition(crate::TenantTransition {
            id: "acme".into(),
            to: TenantStatus::Deprovisioning,
            from: TenantStatus::sources_of(TenantStatus::Deprovisioning),
            error: None,
            saga: Some(saga),
            event: None,
            now_ms: 5,
            delete_at_ms: Some(86_400_005),
        })
        .await)?;
    ensure!(moved.delete_at_ms == Some(86_400_005), "the grace's end is kept: {moved:?}");
    ensure!(db(store.tenant_get("acme").await)?.delete_at_ms == Some(86_400_005), "and read back");
    ensure!(moved.status == TenantStatus::Deprovisioning, "moved: {moved:?}");
    ensure!(moved.saga_id == Some(deprovision_id) && started.map(|s| s.id) == Some(deprovision_id), "saga linked");
    let patched = db(store
        .tenant_patch("beta", &crate::TenantPatch { name: Some("Beta".into()), ..Default::default() }, 6)
        .await)?;
    ensure!(patched.name == "Beta" && patched.domains == json!(["a.example.com"]), "patch: {patched:?}");
    // Migrations merge per service, the higher version staying, whatever order they come in.
    let migrations = |list: serde_json::Value| crate::TenantPatch { migrations: Some(list), ..Default::default() };
    let billing = |v: i64| json!({"service": "billing", "version": v, "applied_at_ms": v});
    db(store.tenant_patch("beta", &migrations(json!([billing(2)])), 7).await)?;
    db(store
        .tenant_patch("beta", &migrations(json!([{"service": "crm", "version": 1, "applied_at_ms": 1}])), 8)
        .await)?;
    let merged = db(store.tenant_patch("beta", &migrations(json!([billing(1)])), 9).await)?;
    let shown: Vec<(serde_json::Value, serde_json::Value)> = merged
        .migrations
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| (m["service"].clone(), m["version"].clone()))
        .collect();
    ensure!(shown == [(json!("billing"), json!(2)), (json!("crm"), json!(1))], "merged: {shown:?}");
    Ok(())
}

pub async fn an_operator_update_changes_its_tenant_with_it_or_not_at_all(store: Arc<dyn Store>) -> CheckResult {
    use saga_core::tenant::TenantStatus;
    let (_, saga) = db(store.tenant_create(tenant("acme", 0), tenant_saga("acme", 0), None).await)?;
    let mut state = saga.state.clone();
    state.status = SagaStatus::Executing;
    let update = |from: Vec<TenantStatus>| SagaOperatorUpdate {
        id: saga.id,
        tenant_id: Some("acme".into()),
        expected_status: SagaStatus::Pending,
        state: state.clone(),
        events: vec![HistoryEvent::new("saga_retried", None, None, json!(null), 5)],
        tenant_change: Some(crate::TenantChange {
            tenant_id: "acme".into(),
            to: TenantStatus::Migrating,
            from,
            error: None,
            storage: None,
            migrations: None,
            outbox: Vec::new(),
        }),
        job: None,
        now_ms: 5,
        moves_version: None,
    };
    let events_before = db(store.saga_events(saga.id, 0, 10).await)?.len();
    // The tenant is PROVISIONING, not SUSPENDED: neither the saga nor the tenant changes.
    let refused = store.saga_operator_update(update(vec![TenantStatus::Suspended])).await;
    ensure!(matches!(refused, Err(StoreError::Conflict(_))), "tenant in another status: {refused:?}");
    let unchanged = db(store.saga_get(saga.id).await)?;
    ensure!(unchanged.status == SagaStatus::Pending, "the saga was written: {unchanged:?}");
    ensure!(db(store.saga_events(saga.id, 0, 10).await)?.len() == events_before, "history was written");
    ensure!(db(store.tenant_get("acme").await)?.status == TenantStatus::Provisioning, "tenant moved");
    let updated = db(store.saga_operator_update(update(TenantStatus::sources_of(TenantStatus::Migrating))).await)?;
    ensure!(updated.status == SagaStatus::Executing, "saga updated: {updated:?}");
    let moved = db(store.tenant_get("acme").await)?;
    ensure!(moved.status == TenantStatus::Migrating && moved.updated_at_ms == 5, "tenant moved with it: {moved:?}");
    Ok(())
}

pub async fn tenant_changes_commit_with_the_transition_or_not_at_all(store: Arc<dyn Store>) -> CheckResult {
    use saga_core::tenant::TenantStatus;
    let (_, saga) = db(store.tenant_create(tenant("acme", 0), tenant_saga("acme", 0), None).await)?;
    let claimed = claim_one(store.as_ref(), 0).await?;
    ensure!(claimed.record.id == saga.id, "claimed the tenant's saga");
    let change = |to: TenantStatus| crate::TenantChange {
        tenant_id: "acme".into(),
        to,
        from: TenantStatus::sources_of(to),
        error: None,
        storage: Some(json!({"backend": "postgres", "location": "schema tenant_acme"})),
        migrations: None,
        outbox: Vec::new(),
    };
    // A fenced (stale) commit changes nothing, tenant included.
    let mut stale = commit(saga.id, claimed.record.fencing_token - 1, claimed.record.state.clone(), 1, vec![]);
    stale.tenant_change = Some(change(TenantStatus::Migrating));
    ensure!(db(store.saga_commit_batch(&[stale]).await)? == vec![CommitOutcome::Fenced], "stale commit");
    ensure!(db(store.tenant_get("acme").await)?.status == TenantStatus::Provisioning, "fenced commit moved the tenant");
    let mut good = commit(saga.id, claimed.record.fencing_token, claimed.record.state.clone(), 2, vec![]);
    good.tenant_change = Some(change(TenantStatus::Migrating));
    ensure!(db(store.saga_commit_batch(&[good]).await)? == vec![CommitOutcome::Committed], "commit");
    let tenant = db(store.tenant_get("acme").await)?;
    ensure!(tenant.status == TenantStatus::Migrating, "status: {:?}", tenant.status);
    ensure!(tenant.storage["location"] == "schema tenant_acme", "storage: {:?}", tenant.storage);
    // A change whose source does not match is skipped, while the saga transition commits.
    let mut illegal = commit(saga.id, claimed.record.fencing_token, claimed.record.state.clone(), 3, vec![]);
    illegal.tenant_change = Some(change(TenantStatus::Deleted));
    ensure!(db(store.saga_commit_batch(&[illegal]).await)? == vec![CommitOutcome::Committed], "commit");
    ensure!(db(store.tenant_get("acme").await)?.status == TenantStatus::Migrating, "MIGRATING may not become DELETED");
    // Neither is silent: each change is the last history row of its commit, applied or refused,
    // with the status the tenant was found in; the stale commit wrote none.
    let mut illegal_with_events = commit(
        saga.id,
        claimed.record.fencing_token,
        claimed.record.state.clone(),
        4,
        vec![HistoryEvent::new("step_succeeded", Some("record"), Some(1), json!({}), 4)],
    );
    illegal_with_events.tenant_change = Some(change(TenantStatus::Deleted));
    ensure!(db(store.saga_commit_batch(&[illegal_with_events]).await)? == vec![CommitOutcome::Committed], "commit");
    let events = db(store.saga_events(saga.id, 0, 100).await)?;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    ensure!(
        kinds
            == vec![
                "saga_created",
                "tenant_status_changed",
                "tenant_change_refused",
                "step_succeeded",
                "tenant_change_refused"
            ],
        "history: {kinds:?}"
    );
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    ensure!(seqs == vec![1, 2, 3, 4, 5], "seqs: {seqs:?}");
    let applied = &events[1].data;
    ensure!(
        applied["tenant_id"] == "acme" && applied["to"] == "MIGRATING" && applied["found"] == "PROVISIONING",
        "applied change: {applied}"
    );
    let refused = &events[2].data;
    ensure!(refused["to"] == "DELETED" && refused["found"] == "MIGRATING", "refused change: {refused}");
    ensure!(refused["from"].as_array().is_some_and(|from| !from.is_empty()), "refused change: {refused}");
    Ok(())
}

/// A tenant holds at most `TENANT_KEYS_MAX` unrevoked keys, even when creators race; a revoked
/// key frees its place.
pub async fn tenant_keys_are_capped_per_tenant(store: Arc<dyn Store>) -> CheckResult {
    db(store.tenant_create(tenant("acme", 0), tenant_saga("acme", 0), None).await)?;
    let key = |n: u32| crate::TenantKeyRecord {
        id: Uuid::now_v7(),
        tenant_id: "acme".into(),
        name: format!("k{n}"),
        created_at_ms: i64::from(n),
        revoked_at_ms: None,
    };
    let attempts = crate::TENANT_KEYS_MAX + 10;
    let tasks: Vec<_> = (0..attempts)
        .map(|n| {
            let (store, key) = (store.clone(), key(n));
            tokio::spawn(async move { store.tenant_key_create(&key, &format!("hash-{n}")).await.map(|()| key.id) })
        })
        .collect();
    let mut created = Vec::new();
    for task in tasks {
        match task.await.map_err(|e| format!("creator panicked: {e}"))? {
            Ok(id) => created.push(id),
            Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(format!("store error: {e}")),
        }
    }
    ensure!(created.len() == crate::TENANT_KEYS_MAX as usize, "{} keys created", created.len());
    db(store.tenant_key_revoke("acme", created[0], 1).await)?;
    db(store.tenant_key_create(&key(999), "hash-999").await)?;
    let refused = store.tenant_key_create(&key(1000), "hash-1000").await;
    ensure!(matches!(refused, Err(StoreError::Conflict(_))), "over the cap: {refused:?}");
    Ok(())
}

pub async fn tenant_keys_users_and_webhook_receipts(store: Arc<dyn Store>) -> CheckResult {
    let key = crate::TenantKeyRecord {
        id: Uuid::now_v7(),
        tenant_id: "acme".into(),
        name: "ci".into(),
        created_at_ms: 1,
        revoked_at_ms: None,
    };
    db(store.tenant_key_create(&key, "hash-1").await)?;
    let found = db(store.tenant_key_by_hash("hash-1").await)?.ok_or("key not found by hash")?;
    ensure!(found.tenant_id == "acme" && found.id == key.id, "found: {found:?}");
    ensure!(db(store.tenant_key_by_hash("hash-2").await)?.is_none(), "unknown hash");
    ensure!(matches!(store.tenant_key_revoke("other", key.id, 2).await, Err(StoreError::NotFound)), "other tenant");
    db(store.tenant_key_revoke("acme", key.id, 2).await)?;
    ensure!(db(store.tenant_key_by_hash("hash-1").await)?.is_none(), "revoked key still found");
    let second = crate::TenantKeyRecord { id: Uuid::now_v7(), ..key.clone() };
    db(store.tenant_key_create(&second, "hash-3").await)?;
    ensure!(db(store.tenant_keys_revoke_all("acme", 3).await)? == 1, "revoke all");
    let user = crate::TenantUserRecord {
        id: Uuid::now_v7(),
        tenant_id: "acme".into(),
        email: "a@acme.io".into(),
        name: "A".into(),
        role: "admin".into(),
        created_at_ms: 1,
        updated_at_ms: 1,
    };
    db(store.tenant_user_create(&user).await)?;
    let twin = crate::TenantUserRecord { id: Uuid::now_v7(), ..user.clone() };
    ensure!(matches!(store.tenant_user_create(&twin).await, Err(StoreError::Conflict(_))), "same email");
    let renamed = crate::TenantUserRecord { name: "Ann".into(), ..user.clone() };
    db(store.tenant_user_update(&renamed).await)?;
    let users = db(store.tenant_user_list("acme").await)?;
    ensure!(users.len() == 1 && users[0].name == "Ann", "users: {users:?}");
    ensure!(db(store.tenant_user_get("acme", user.id).await)? == Some(renamed.clone()), "get: the renamed user");
    ensure!(db(store.tenant_user_get("other", user.id).await)?.is_none(), "get: another tenant's user");
    db(store.tenant_user_delete("acme", user.id).await)?;
    ensure!(db(store.tenant_user_get("acme", user.id).await)?.is_none(), "get: a deleted user");
    ensure!(matches!(store.tenant_user_delete("acme", user.id).await, Err(StoreError::NotFound)), "deleted twice");
    ensure!(db(store.webhook_claim("crm", "m1", 1).await)? == crate::WebhookClaim::New, "first claim");
    ensure!(db(store.webhook_claim("crm", "m1", 2).await)? == crate::WebhookClaim::Seen(None), "in progress");
    db(store.webhook_complete("crm", "m1", &json!({"ok": 1})).await)?;
    ensure!(
        db(store.webhook_claim("crm", "m1", 3).await)? == crate::WebhookClaim::Seen(Some(json!({"ok": 1}))),
        "seen"
    );
    ensure!(db(store.webhook_claim("crm", "m2", 4).await)? == crate::WebhookClaim::New, "another id");
    db(store.webhook_release("crm", "m2").await)?;
    ensure!(db(store.webhook_claim("crm", "m2", 5).await)? == crate::WebhookClaim::New, "released, claimable again");
    ensure!(db(store.webhook_claim("other", "m1", 6).await)? == crate::WebhookClaim::New, "ids are per source");
    // A claim whose request never answered blocks redeliveries for the claim TTL only; an
    // answered one is never taken over.
    let ttl = crate::WEBHOOK_CLAIM_TTL_MS;
    ensure!(db(store.webhook_claim("crm", "crashed", 100).await)? == crate::WebhookClaim::New, "first claim");
    ensure!(
        db(store.webhook_claim("crm", "crashed", 100 + ttl - 1).await)? == crate::WebhookClaim::Seen(None),
        "within the TTL"
    );
    ensure!(db(store.webhook_claim("crm", "crashed", 100 + ttl).await)? == crate::WebhookClaim::New, "taken over");
    ensure!(
        db(store.webhook_claim("crm", "crashed", 100 + ttl + 1).await)? == crate::WebhookClaim::Seen(None),
        "the new claim holds"
    );
    ensure!(
        db(store.webhook_claim("crm", "m1", 10 * ttl).await)? == crate::WebhookClaim::Seen(Some(json!({"ok": 1}))),
        "an answered claim is never taken over"
    );
    Ok(())
}

/// A tenant `DELETED` for the retention goes with its keys, users and own subscriptions (a
/// pending delivery to one ends dead); one that is not deleted stays; old webhook receipts go.
pub async fn deleted_tenants_go_with_their_records_after_the_retention(store: Arc<dyn Store>) -> CheckResult {
    use saga_core::tenant::TenantStatus;
    for id in ["gone", "kept"] {
        db(store.tenant_create(tenant(id, 0), tenant_saga(id, 0), None).await)?;
        let key = crate::TenantKeyRecord {
            id: Uuid::now_v7(),
            tenant_id: id.into(),
            name: "ci".into(),
            created_at_ms: 1,
            revoked_at_ms: None,
        };
        db(store.tenant_key_create(&key, &format!("hash-{id}")).await)?;
    }
    let deleted = crate::TenantTransition {
        id: "gone".into(),
        to: TenantStatus::Deleted,
        from: vec![TenantStatus::Provisioning],
        error: None,
        saga: None,
        event: None,
        now_ms: 100,
        delete_at_ms: None,
    };
    db(store.tenant_transition(deleted).await)?;
    let own = super::fixtures::subscription("http://gone", &["*"], Some("gone"), 0);
    db(store.subscription_create(&own).await)?;
    db(store.events_append(&[crate::OutboxEvent::new("tenant.note", Some("gone"), json!({}), 50)]).await)?;

    ensure!(db(store.tenants_purge(99, 10, 200).await)? == 0, "not before its retention");
    ensure!(db(store.tenants_purge(100, 10, 200).await)? == 1, "the deleted tenant");
    ensure!(matches!(store.tenant_get("gone").await, Err(StoreError::NotFound)), "its record is gone");
    ensure!(db(store.tenant_key_by_hash("hash-gone").await)?.is_none(), "with its keys");
    ensure!(matches!(store.subscription_get(own.id).await, Err(StoreError::NotFound)), "and its subscriptions");
    let filter = crate::DeliveryFilter { subscription_id: Some(own.id), limit: 10, ..Default::default() };
    let left = db(store.delivery_list(&filter).await)?;
    ensure!(
        !left.is_empty() && left.iter().all(|d| d.status == crate::DeliveryStatus::Dead),
        "its pending deliveries end dead: {left:?}"
    );
    ensure!(db(store.tenant_get("kept").await).is_ok(), "a tenant that is not deleted stays");
    ensure!(db(store.tenant_key_by_hash("hash-kept").await)?.is_some(), "with its keys");

    ensure!(db(store.webhook_claim("crm", "old", 10).await)? == crate::WebhookClaim::New, "a receipt");
    ensure!(db(store.webhook_claim("crm", "new", 500).await)? == crate::WebhookClaim::New, "another");
    ensure!(db(store.webhook_receipts_purge(100, 10).await)? == 1, "the old receipt");
    ensure!(db(store.webhook_claim("crm", "old", 600).await)? == crate::WebhookClaim::New, "taken as new after");
    ensure!(db(store.webhook_claim("crm", "new", 600).await)? != crate::WebhookClaim::New, "the recent one is kept");
    Ok(())
}
