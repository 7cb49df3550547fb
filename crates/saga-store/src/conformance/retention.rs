//! Retention: finished sagas go with everything that belongs to them, oldest first and in
//! bounded batches, and nothing unfinished is touched; a singleton lease has one owner at a time.

use std::sync::Arc;

use saga_core::{HistoryEvent, SagaStatus};
use serde_json::json;
use uuid::Uuid;

use super::fixtures::{claim, commit, create_params};
use super::{db, ensure, CheckResult};
use crate::creates::create_one;
use crate::{CallbackRegister, Purged, SagaCreated, Store, StoreError};

/// Creates a saga with an idempotency key, a signal and a callback, and finishes it at
/// `finished_ms` (or leaves it running when None). Its id.
async fn saga(store: &dyn Store, key: &str, finished_ms: Option<i64>) -> Result<Uuid, String> {
    kept(store, key, finished_ms, None).await
}

/// [`saga`] whose definition set its own retention (`retention_ms`).
async fn kept(
    store: &dyn Store,
    key: &str,
    finished_ms: Option<i64>,
    retention_ms: Option<i64>,
) -> Result<Uuid, String> {
    let mut params = create_params(0);
    params.idempotency_key = Some(key.to_string());
    params.retention_ms = retention_ms;
    let SagaCreated::Created(record) = db(create_one(store, params).await)? else {
        return Err(format!("{key}: not created"));
    };
    db(store.signal_send(record.id, "go", &json!({}), 1, None).await)?;
    let register = CallbackRegister {
        token_hash: format!("hash-{key}"),
        saga_id: record.id,
        tenant_id: None,
        step: "a".into(),
        attempt: 1,
        heartbeat_timeout_ms: None,
        now_ms: 1,
    };
    db(store.callback_register(register).await)?;
    let Some(at) = finished_ms else {
        return Ok(record.id);
    };
    let claimed = db(store.saga_claim_due(&claim("w1", 10, 2)).await)?;
    let Some(claimed) = claimed.into_iter().find(|c| c.record.id == record.id) else {
        return Err(format!("{key}: not claimed"));
    };
    let mut state = claimed.record.state.clone();
    state.status = SagaStatus::Completed;
    let ended = HistoryEvent::new("saga_completed", None, None, json!({}), at);
    let mut done = commit(record.id, claimed.record.fencing_token, state, at, vec![ended]);
    done.release_lease = true;
    db(store.saga_commit_batch(&[done]).await)?;
    Ok(record.id)
}

pub async fn finished_sagas_go_with_everything_that_belongs_to_them(store: Arc<dyn Store>) -> CheckResult {
    let running = saga(store.as_ref(), "running", None).await?;
    let early = saga(store.as_ref(), "early", Some(100)).await?;
    let late = saga(store.as_ref(), "late", Some(300)).await?;
    ensure!(db(store.oldest_finished_ms().await)? == Some(100), "the oldest finished saga ended at 100");

    let purged = db(store.sagas_purge(200, 0, 10).await)?;
    ensure!(purged.sagas == 1 && purged.signals == 1 && purged.callbacks == 1, "{purged:?}");
    ensure!(purged.history >= 1, "its history goes with it: {purged:?}");
    ensure!(matches!(store.saga_get(early).await, Err(StoreError::NotFound)), "the saga that ended at 100 is gone");
    ensure!(db(store.saga_events(early, 0, 100).await)?.is_empty(), "and its history");
    ensure!(db(store.saga_get(late).await).is_ok(), "one that ended after the cut-off is kept");
    ensure!(db(store.saga_get(running).await).is_ok(), "a running saga is kept");
    ensure!(db(store.oldest_finished_ms().await)? == Some(300), "the oldest is now the one that ended at 300");

    let mut again = create_params(400);
    again.idempotency_key = Some("early".into());
    let created = db(create_one(store.as_ref(), again).await)?;
    ensure!(
        matches!(&created, SagaCreated::Created(record) if record.id != early),
        "the idempotency key went with its saga: {created:?}"
    );

    let purged = db(store.sagas_purge(i64::MAX, 0, 10).await)?;
    ensure!(purged.sagas == 1, "only the finished one, whatever the others' age: {purged:?}");
    ensure!(db(store.saga_get(running).await).is_ok(), "a running saga is never touched");
    ensure!(db(store.oldest_finished_ms().await)?.is_none(), "nothing finished is left");
    ensure!(db(store.sagas_purge(i64::MAX, 0, 10).await)? == Purged::default(), "nothing more to delete");
    Ok(())
}

pub async fn purges_take_the_longest_finished_first_in_bounded_batches(store: Arc<dyn Store>) -> CheckResult {
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(saga(store.as_ref(), &format!("k{n}"), Some(1_000 - n * 100)).await?);
    }
    let purged = db(store.sagas_purge(i64::MAX, 0, 2).await)?;
    ensure!(purged.sagas == 2, "at most the batch: {purged:?}");
    // The two that ended first (at 600 and 700) are the ones gone.
    for (n, id) in ids.iter().enumerate() {
        let kept = db(store.saga_get(*id).await).is_ok();
        ensure!(kept == (n < 3), "saga {n} (ended at {}): kept {kept}", 1_000 - n as i64 * 100);
    }
    Ok(())
}

pub async fn a_singleton_lease_has_one_owner_at_a_time(store: Arc<dyn Store>) -> CheckResult {
    ensure!(db(store.singleton_hold("cleaner", "a", 0, 1_000).await)?, "a free lease is taken");
    ensure!(!db(store.singleton_hold("cleaner", "b", 500, 1_000).await)?, "another owner waits while it runs");
    ensure!(db(store.singleton_hold("cleaner", "a", 900, 1_000).await)?, "its owner renews it");
    ensure!(!db(store.singleton_hold("cleaner", "b", 1_500, 1_000).await)?, "renewed until 1,900");
    ensure!(db(store.singleton_hold("other", "b", 1_500, 1_000).await)?, "leases are by name");
    ensure!(db(store.singleton_hold("cleaner", "b", 1_900, 1_000).await)?, "an expired lease is taken over");
    ensure!(!db(store.singleton_hold("cleaner", "a", 2_000, 1_000).await)?, "and is no longer the old owner's");
    db(store.singleton_release("cleaner", "a").await)?;
    ensure!(!db(store.singleton_hold("cleaner", "a", 2_100, 1_000).await)?, "only its owner releases it");
    db(store.singleton_release("cleaner", "b").await)?;
    ensure!(db(store.singleton_hold("cleaner", "a", 2_100, 1_000).await)?, "a released lease is taken at once");
    Ok(())
}

pub async fn a_definitions_own_retention_decides_for_its_sagas(store: Arc<dyn Store>) -> CheckResult {
    let default = saga(store.as_ref(), "default", Some(100)).await?;
    let longer = kept(store.as_ref(), "longer", Some(100), Some(1_000)).await?;
    let shorter = kept(store.as_ref(), "shorter", Some(100), Some(50)).await?;
    ensure!(db(store.oldest_finished_ms().await)? == Some(100), "the oldest on the default retention");

    ensure!(db(store.sagas_overdue(i64::MIN, 160, 300, 10).await)? == 1, "one overdue at 160 (its own 50)");
    ensure!(db(store.sagas_overdue(i64::MIN, 500, 300, 10).await)? == 2, "two at 500");
    ensure!(db(store.sagas_overdue(i64::MIN, 500, 300, 1).await)? <= 2, "counted up to the cap for each kind");
    // What came due within a window: the default's at 400, the shorter one's at 150.
    ensure!(db(store.sagas_overdue(160, 500, 300, 10).await)? == 1, "one came due after 160");
    ensure!(db(store.sagas_overdue(100, 160, 300, 10).await)? == 1, "its own came due in (100, 160]");
    ensure!(db(store.sagas_overdue(400, 500, 300, 10).await)? == 0, "none after 400 (that one was due at 400)");
    ensure!(db(store.sagas_overdue(399, 400, 300, 10).await)? == 1, "the default's came due at 400");
    // At 160 with a default of 300: only the saga whose own retention (50) has passed goes.
    let purged = db(store.sagas_purge(160, 300, 10).await)?;
    ensure!(purged.sagas == 1, "{purged:?}");
    ensure!(matches!(store.saga_get(shorter).await, Err(StoreError::NotFound)), "its own, shorter, retention");
    // At 500: the default (300) has passed, the longer one (1,000) has not.
    let purged = db(store.sagas_purge(500, 300, 10).await)?;
    ensure!(purged.sagas == 1, "{purged:?}");
    ensure!(matches!(store.saga_get(default).await, Err(StoreError::NotFound)), "the default retention");
    ensure!(db(store.saga_get(longer).await).is_ok(), "kept for its own, longer, retention");
    ensure!(db(store.oldest_finished_ms().await)?.is_none(), "none left on the default retention");
    // At 1,100 its own has passed too.
    ensure!(db(store.sagas_purge(1_099, 300, 10).await)?.sagas == 0, "not before its time");
    ensure!(db(store.sagas_purge(1_100, 300, 10).await)?.sagas == 1, "then it goes");
    Ok(())
}

pub async fn a_batch_named_for_the_archive_deletes_only_what_is_still_due(store: Arc<dyn Store>) -> CheckResult {
    let running = saga(store.as_ref(), "running", None).await?;
    let finished = saga(store.as_ref(), "finished", Some(100)).await?;
    let own = kept(store.as_ref(), "own", Some(100), Some(1_000)).await?;
    let due = db(store.sagas_due(500, 300, 10).await)?;
    ensure!(due == vec![finished], "only the finished saga past its retention: {due:?}");
    let purged = db(store.sagas_purge_ids(&[finished, running, own], 500, 300).await)?;
    ensure!(purged.sagas == 1 && purged.signals == 1 && purged.callbacks == 1, "{purged:?}");
    ensure!(matches!(store.saga_get(finished).await, Err(StoreError::NotFound)), "the due one went");
    ensure!(db(store.saga_get(running).await).is_ok(), "a running saga named is kept");
    ensure!(db(store.saga_get(own).await).is_ok(), "one within its own retention is kept");
    ensure!(db(store.sagas_due(1_100, 300, 10).await)? == vec![own], "its own retention, then");
    Ok(())
}
