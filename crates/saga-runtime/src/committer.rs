//! Group commit: drivers hand their transitions to one committer, which writes whatever is
//! queued as one store batch (one transaction) and answers each driver. Under load many sagas'
//! steps share one durable commit; when idle a lone transition commits at once (no waiting to
//! fill a batch).

use std::sync::Arc;

use saga_store::{CommitOutcome, SagaCommit, Store, COMMIT_BATCH_MAX};
use tokio::sync::{mpsc, oneshot};

use crate::metrics_names::SAGA_COMMIT_BATCH_SIZE;

/// How many transitions may wait for the committer before drivers block.
pub const COMMIT_QUEUE_MAX: usize = 4096;

/// The outcome, with the commit handed back (a driver whose commit was refused for a cancel
/// request reuses its history rows instead of having cloned them up front).
type Reply = oneshot::Sender<Result<(CommitOutcome, SagaCommit), String>>;

/// A handle drivers use to commit transitions.
#[derive(Clone)]
pub struct Committer {
    sender: mpsc::Sender<(SagaCommit, Reply)>,
}

impl Committer {
    /// Starts the committer task; it ends when every `Committer` handle is dropped.
    pub fn start(store: Arc<dyn Store>) -> (Committer, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(COMMIT_QUEUE_MAX);
        let task = tokio::spawn(run(store, receiver));
        (Committer { sender }, task)
    }

    /// Commits one transition; resolves once it is durable (or fenced, or refused, or failed),
    /// handing the commit back.
    pub async fn commit(&self, commit: SagaCommit) -> Result<(CommitOutcome, SagaCommit), String> {
        let (reply, answer) = oneshot::channel();
        self.sender.send((commit, reply)).await.map_err(|_| "committer stopped".to_string())?;
        answer.await.map_err(|_| "committer dropped the commit".to_string())?
    }
}

async fn run(store: Arc<dyn Store>, mut receiver: mpsc::Receiver<(SagaCommit, Reply)>) {
    // Everything that queued while the previous batch committed joins the next one.
    while let Some(batch) = saga_store::next_batch(&mut receiver, COMMIT_BATCH_MAX).await {
        let (commits, replies): (Vec<SagaCommit>, Vec<Reply>) = batch.into_iter().unzip();
        metrics::histogram!(SAGA_COMMIT_BATCH_SIZE).record(commits.len() as f64);
        match store.saga_commit_batch(&commits).await {
            Ok(outcomes) => {
                for ((reply, outcome), commit) in replies.into_iter().zip(outcomes).zip(commits) {
                    let _ = reply.send(Ok((outcome, commit)));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = commits.len(), "group commit failed");
                for reply in replies {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }
}
