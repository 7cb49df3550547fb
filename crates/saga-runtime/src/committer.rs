//! Group commit: drivers hand their transitions to one committer, which writes whatever is
//! queued as one store batch (one transaction) and answers each driver. Under load many sagas'
//! steps share one durable commit; when idle a lone transition commits at once (no waiting to
//! fill a batch). Built on the store's one batching primitive ([`saga_store::Batcher`]).

use std::sync::Arc;

use async_trait::async_trait;
use saga_store::{BatchWrite, Batcher, CommitOutcome, EngineStore, OnBatchError, SagaCommit, StoreResult};

use crate::metrics_names::SAGA_COMMIT_BATCH_SIZE;

/// A handle drivers use to commit transitions.
#[derive(Clone)]
pub struct Committer {
    batcher: Batcher<CommitWriter>,
}

struct CommitWriter(Arc<dyn EngineStore>);

#[async_trait]
impl BatchWrite for CommitWriter {
    type Item = SagaCommit;
    type Output = CommitOutcome;

    async fn write(&self, commits: &[SagaCommit]) -> StoreResult<Vec<CommitOutcome>> {
        metrics::histogram!(SAGA_COMMIT_BATCH_SIZE).record(commits.len() as f64);
        self.0.saga_commit_batch(commits).await
    }
}

impl Committer {
    /// Starts the committer task; it ends when every `Committer` handle is dropped. A batch that
    /// fails is written again one transition at a time, so one transition the database refuses
    /// fails only its own driver (which stops; its lease lets the saga be taken over); while the
    /// database is unreachable every driver of the batch gets that error at once.
    pub fn start(store: Arc<dyn EngineStore>) -> (Committer, tokio::task::JoinHandle<()>) {
        let (batcher, task) = Batcher::start(CommitWriter(store), OnBatchError::WriteEachAlone);
        (Committer { batcher }, task)
    }

    /// Commits one transition; resolves once it is durable (or fenced, or refused, or failed),
    /// handing the commit back (a driver whose commit was refused for a cancel request reuses
    /// its history rows instead of having cloned them up front).
    pub async fn commit(&self, commit: SagaCommit) -> Result<(CommitOutcome, SagaCommit), String> {
        self.batcher.submit(commit).await.map_err(|e| e.to_string())
    }
}
