//! Creating sagas, for every backend: creates are batched ([`crate::Batcher`]) into one
//! [`SagaStore::saga_insert_batch`] per transaction, and what a create that was not inserted
//! means — the original saga replayed, a key conflict, a version that moved on — is decided here
//! once, the same for every dialect.

use std::sync::Arc;

use async_trait::async_trait;

use crate::batch::{BatchWrite, Batcher, OnBatchError};
use crate::{EngineStore, SagaCreate, SagaCreated, SagaRecord, SagaStore, StoreError, StoreResult};

/// A handle that creates sagas in batches.
#[derive(Clone)]
pub struct SagaCreates {
    store: Arc<dyn EngineStore>,
    batcher: Batcher<InsertWriter>,
}

struct InsertWriter(Arc<dyn EngineStore>);

#[async_trait]
impl BatchWrite for InsertWriter {
    type Item = SagaCreate;
    type Output = Option<SagaRecord>;

    async fn write(&self, batch: &[SagaCreate]) -> StoreResult<Vec<Option<SagaRecord>>> {
        self.0.saga_insert_batch(batch).await
    }
}

impl SagaCreates {
    /// Starts the batch writer; it ends when every handle is dropped. A batch that cannot be
    /// written is written again one create at a time, so one bad create fails alone.
    pub fn start(store: Arc<dyn EngineStore>) -> (SagaCreates, tokio::task::JoinHandle<()>) {
        let (batcher, task) = Batcher::start(InsertWriter(store.clone()), OnBatchError::WriteEachAlone);
        (SagaCreates { store, batcher }, task)
    }

    /// Creates the saga (and its `saga_created` event), or finds the one made with the same key.
    pub async fn create(&self, params: SagaCreate) -> StoreResult<SagaCreated> {
        check(&params)?;
        let (inserted, params) = self.batcher.submit(params).await?;
        outcome(self.store.as_ref(), &params, inserted).await
    }
}

/// What a create may not combine, refused before it is written.
pub fn check(params: &SagaCreate) -> StoreResult<()> {
    if params.concurrency.is_some() && params.lease.is_some() {
        return Err(StoreError::Conflict(
            "a saga with a concurrency key waits for admission; it cannot be created leased".into(),
        ));
    }
    Ok(())
}

/// The outcome of one create given what [`SagaStore::saga_insert_batch`] answered for it.
pub async fn outcome(
    store: &dyn SagaStore,
    params: &SagaCreate,
    inserted: Option<SagaRecord>,
) -> StoreResult<SagaCreated> {
    if let Some(record) = inserted {
        return Ok(SagaCreated::Created(record));
    }
    if let Some(key) = params.idempotency_key.as_deref() {
        match store.saga_by_idempotency_key(key).await? {
            Some((existing, hash)) if hash == params.request_hash => return Ok(SagaCreated::Replayed(existing)),
            Some(_) => return Ok(SagaCreated::KeyConflict),
            None => {}
        }
    }
    if params.require_latest {
        return Ok(SagaCreated::VersionMoved);
    }
    Err(StoreError::Conflict("the saga was neither created nor found by its key".into()))
}

/// One create written on its own (no batching): for tools and tests that create one saga at a
/// time and hold no [`SagaCreates`].
pub async fn create_one(store: &dyn EngineStore, params: SagaCreate) -> StoreResult<SagaCreated> {
    check(&params)?;
    let inserted = store.saga_insert_batch(std::slice::from_ref(&params)).await?.pop().flatten();
    outcome(store, &params, inserted).await
}
