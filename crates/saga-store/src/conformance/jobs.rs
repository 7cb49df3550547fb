//! Bulk jobs: a job's items are the ids its selection matched when it was written; each is acted
//! on at most once (the write that acts marks it done, or writes nothing); a finished job counts
//! and names what failed, and goes with its items once past its retention.

use std::sync::Arc;

use saga_core::SagaStatus;
use serde_json::json;
use uuid::Uuid;

use super::fixtures::create;
use super::{db, ensure, CheckResult};
use crate::{JobCreate, JobMark, JobStatus, SagaSelection, Selection, Store, StoreError};

fn job(selection: SagaSelection, now_ms: i64) -> JobCreate {
    JobCreate {
        id: Uuid::now_v7(),
        action: "signal".into(),
        selection: Selection::Sagas(selection),
        filter: json!({"definition": "conformance"}),
        arguments: Some(json!({"name": "go", "data": null})),
        tenant_id: None,
        now_ms,
    }
}

fn running() -> SagaSelection {
    SagaSelection {
        definition: Some("conformance".into()),
        statuses: vec![SagaStatus::Pending, SagaStatus::Executing],
        ..SagaSelection::default()
    }
}

pub async fn a_jobs_items_are_chosen_once_and_each_acted_on_once(store: Arc<dyn Store>) -> CheckResult {
    let mut sagas = Vec::new();
    for n in 0..3 {
        sagas.push(create(store.as_ref(), 10 + n).await?);
    }
    sagas.sort();
    let selection = Selection::Sagas(running());
    ensure!(db(store.selection_count(&selection).await)? == 3, "three sagas match");
    let other = Selection::Sagas(SagaSelection { definition: Some("other".into()), ..running() });
    ensure!(db(store.selection_count(&other).await)? == 0, "the definition filters");
    let early = Selection::Sagas(SagaSelection { created_before_ms: Some(11), ..running() });
    ensure!(db(store.selection_count(&early).await)? == 1, "created_before is exclusive");

    let refused = store.job_create(&job(running(), 20), 2).await;
    ensure!(matches!(refused, Err(StoreError::Conflict(_))), "more than items_max: {refused:?}");
    let created = db(store.job_create(&job(running(), 20), 100).await)?;
    ensure!(created.matched == 3 && created.status == JobStatus::Running, "{created:?}");
    ensure!(db(store.jobs_running(10).await)? == vec![created.id], "the refused job left nothing behind");
    let late = create(store.as_ref(), 30).await?;

    let pending = db(store.job_items_pending(created.id, None, 2).await)?;
    ensure!(pending == sagas[..2], "pending items in id order, at most the limit: {pending:?}");
    let after = db(store.job_items_pending(created.id, Some(sagas[1]), 10).await)?;
    ensure!(after == sagas[2..], "a saga created after the job is not its item: {after:?} (late {late})");

    let mark = JobMark { job_id: created.id, item_id: sagas[0] };
    db(store.signal_send(sagas[0], "go", &json!(1), 40, Some(&mark)).await)?;
    let twice = store.signal_send(sagas[0], "go", &json!(2), 41, Some(&mark)).await;
    ensure!(matches!(twice, Err(StoreError::Conflict(_))), "an item is acted on once: {twice:?}");
    ensure!(
        db(store.signal_find(sagas[0], "go", &[]).await)?.map(|s| s.payload) == Some(json!(1)),
        "the refused second act wrote nothing"
    );
    let cancel_mark = JobMark { job_id: created.id, item_id: sagas[1] };
    db(store.saga_cancel_request(sagas[1], 42, Some(&cancel_mark)).await)?;
    let cancelled_again = store.saga_cancel_request(sagas[1], 43, Some(&cancel_mark)).await;
    ensure!(matches!(cancelled_again, Err(StoreError::Conflict(_))), "{cancelled_again:?}");
    let failed_mark = JobMark { job_id: created.id, item_id: sagas[2] };
    db(store.job_item_fail(&failed_mark, "no step waits for go", 44).await)?;
    db(store.job_item_fail(&mark, "too late", 45).await)?;

    let finished = db(store.job_finish(created.id, 50).await)?;
    ensure!(finished.status == JobStatus::Failed, "an item failed: {finished:?}");
    ensure!((finished.done, finished.failed) == (2, 1), "a done item is not failed later: {finished:?}");
    ensure!(
        finished.errors.len() == 1 && finished.errors[0].id == sagas[2] && finished.errors[0].error.contains("go"),
        "{finished:?}"
    );
    ensure!(finished.finished_at_ms == Some(50), "{finished:?}");
    ensure!(db(store.jobs_running(10).await)?.is_empty(), "no job runs");
    Ok(())
}

pub async fn a_cancelled_job_stops_and_finished_jobs_are_purged(store: Arc<dyn Store>) -> CheckResult {
    create(store.as_ref(), 10).await?;
    let first = db(store.job_create(&job(running(), 20), 100).await)?;
    let unfinished = db(store.job_finish(first.id, 25).await)?;
    ensure!(unfinished.status == JobStatus::Running, "a job with pending items does not finish: {unfinished:?}");
    let cancelled = db(store.job_cancel(first.id, 30).await)?;
    ensure!(cancelled.status == JobStatus::Cancelled && cancelled.finished_at_ms == Some(30), "{cancelled:?}");
    ensure!(db(store.job_status(first.id).await)? == JobStatus::Cancelled, "its status alone");
    ensure!(db(store.job_items_pending(first.id, None, 10).await)?.len() == 1, "its pending items stay untouched");
    let again = store.job_cancel(first.id, 31).await;
    ensure!(matches!(again, Err(StoreError::Conflict(_))), "a finished job is not cancelled: {again:?}");
    ensure!(matches!(store.job_get(Uuid::now_v7()).await, Err(StoreError::NotFound)), "an unknown job");

    let empty =
        db(store.job_create(&job(SagaSelection { definition: Some("none".into()), ..running() }, 40), 100).await)?;
    let second = db(store.job_finish(empty.id, 60).await)?;
    ensure!(second.status == JobStatus::Succeeded && second.matched == 0, "{second:?}");
    ensure!(db(store.jobs_purge(30, 10).await)? == 1, "the job that finished at 30");
    ensure!(matches!(store.job_get(first.id).await, Err(StoreError::NotFound)), "is gone");
    ensure!(db(store.job_get(empty.id).await).is_ok(), "one finished later is kept");
    ensure!(db(store.jobs_purge(i64::MAX, 10).await)? == 1, "then it goes too");
    Ok(())
}
