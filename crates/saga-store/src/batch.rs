//! Group commit's one batching primitive. Callers hand items to a [`Batcher`] one at a time; a
//! writer task takes whatever queued while the previous batch was being written and writes it as
//! one batch (one transaction, one durable flush), then answers each caller. Nothing waits to
//! fill a batch: when idle a lone item is written at once. The runtime's committer (step
//! transitions) and [`crate::SagaCreates`] (new sagas) are both built on it.

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::{StoreError, StoreResult};

/// The most items one batch carries (one transaction).
pub const WRITE_BATCH_MAX: usize = 512;
/// How many items may wait for the writer before callers block.
pub const WRITE_QUEUE_MAX: usize = 4096;

/// Writes one batch.
#[async_trait]
pub trait BatchWrite: Send + Sync + 'static {
    type Item: Send + 'static;
    type Output: Send + 'static;
    /// Writes the batch as one unit: one output per item, in order; an error means nothing of
    /// the batch was written.
    async fn write(&self, batch: &[Self::Item]) -> StoreResult<Vec<Self::Output>>;
}

/// What a failed batch of several items means for its callers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnBatchError {
    /// Every caller gets the batch's error.
    FailAll,
    /// Each item is written again on its own, so one item that cannot be written fails alone
    /// (unless the database is unavailable: then every caller gets that error at once).
    WriteEachAlone,
}

type Reply<W> = oneshot::Sender<StoreResult<(<W as BatchWrite>::Output, <W as BatchWrite>::Item)>>;

/// A handle that queues items for the writer task.
pub struct Batcher<W: BatchWrite> {
    sender: mpsc::Sender<(W::Item, Reply<W>)>,
}

impl<W: BatchWrite> Clone for Batcher<W> {
    fn clone(&self) -> Self {
        Batcher { sender: self.sender.clone() }
    }
}

impl<W: BatchWrite> Batcher<W> {
    /// Starts the writer task; it ends when every handle is dropped.
    pub fn start(writer: W, on_error: OnBatchError) -> (Self, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(WRITE_QUEUE_MAX);
        (Batcher { sender }, tokio::spawn(run(writer, on_error, receiver)))
    }

    /// Writes the item with whatever else is queued; resolves once its batch is written, with
    /// the item handed back (callers that need it afterwards need not clone it up front).
    pub async fn submit(&self, item: W::Item) -> StoreResult<(W::Output, W::Item)> {
        let (reply, answer) = oneshot::channel();
        self.sender.send((item, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::backend(std::io::Error::other("the batch writer stopped"))
}

async fn run<W: BatchWrite>(writer: W, on_error: OnBatchError, mut receiver: mpsc::Receiver<(W::Item, Reply<W>)>) {
    while let Some(batch) = next_batch(&mut receiver, WRITE_BATCH_MAX).await {
        let (items, replies): (Vec<W::Item>, Vec<Reply<W>>) = batch.into_iter().unzip();
        match writer.write(&items).await {
            Ok(outputs) if outputs.len() == items.len() => {
                for ((reply, output), item) in replies.into_iter().zip(outputs).zip(items) {
                    let _ = reply.send(Ok((output, item)));
                }
            }
            Ok(outputs) => {
                let message = format!("a batch of {} wrote {} outcomes", items.len(), outputs.len());
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Corrupt(message.clone())));
                }
            }
            // Unreachable: each alone would wait out the same outage, one after another.
            Err(e)
                if items.len() == 1 || on_error == OnBatchError::FailAll || matches!(e, StoreError::Unavailable(_)) =>
            {
                tracing::error!(error = %e, batch = items.len(), "batched write failed");
                let unavailable = matches!(e, StoreError::Unavailable(_));
                // The cause alone: each reply is wrapped again as unavailable or backend.
                let message = match &e {
                    StoreError::Unavailable(cause) | StoreError::Backend(cause) => cause.to_string(),
                    other => other.to_string(),
                };
                for reply in replies {
                    let error = std::io::Error::other(message.clone());
                    let _ = reply.send(Err(if unavailable {
                        StoreError::unavailable(error)
                    } else {
                        StoreError::backend(error)
                    }));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, batch = items.len(), "batched write failed; writing each on its own");
                for (item, reply) in items.into_iter().zip(replies) {
                    let alone = writer.write(std::slice::from_ref(&item)).await.and_then(|mut outputs| {
                        outputs.pop().ok_or_else(|| StoreError::Corrupt("a write of one item wrote no outcome".into()))
                    });
                    let _ = reply.send(alone.map(|output| (output, item)));
                }
            }
        }
    }
}

/// Waits for one queued item, then takes whatever else is already queued, up to `max` (no
/// waiting to fill a batch, so a lone item goes at once). None when every sender is gone.
pub async fn next_batch<T>(receiver: &mut mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let first = receiver.recv().await?;
    let mut batch = vec![first];
    while batch.len() < max {
        match receiver.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Doubles each number; a batch holding a negative one fails whole, like a transaction with
    /// one row the database refuses. `down` makes every write fail as unreachable.
    struct Doubler {
        writes: Arc<AtomicUsize>,
        down: bool,
    }

    #[async_trait]
    impl BatchWrite for Doubler {
        type Item = i64;
        type Output = i64;

        async fn write(&self, batch: &[i64]) -> StoreResult<Vec<i64>> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            if self.down {
                return Err(StoreError::unavailable(std::io::Error::other("connection refused")));
            }
            if batch.iter().any(|n| *n < 0) {
                return Err(StoreError::backend(std::io::Error::other("refused row")));
            }
            Ok(batch.iter().map(|n| n * 2).collect())
        }
    }

    /// Submits `items` at once (so they share batches) and collects each caller's answer.
    async fn submit_all(on_error: OnBatchError, down: bool, items: Vec<i64>) -> (Vec<StoreResult<i64>>, usize) {
        let writes = Arc::new(AtomicUsize::new(0));
        let (batcher, task) = Batcher::start(Doubler { writes: writes.clone(), down }, on_error);
        let calls: Vec<_> = items
            .into_iter()
            .map(|n| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.submit(n).await.map(|(output, item)| output + item - item) })
            })
            .collect();
        let mut answers = Vec::new();
        for call in calls {
            answers.push(call.await.expect("caller"));
        }
        drop(batcher);
        task.await.expect("writer");
        (answers, writes.load(Ordering::SeqCst))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_refused_item_fails_alone_when_written_each_alone() {
        let (answers, _) = submit_all(OnBatchError::WriteEachAlone, false, vec![1, 2, -3, 4]).await;
        let doubled: Vec<Option<i64>> = answers.iter().map(|a| a.as_ref().ok().copied()).collect();
        assert_eq!(doubled, vec![Some(2), Some(4), None, Some(8)]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_batch_fails_every_caller_with_fail_all() {
        let (answers, _) = submit_all(OnBatchError::FailAll, false, vec![1, -2, 3]).await;
        assert!(answers.iter().all(|a| a.is_err()), "{answers:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_unreachable_database_is_not_retried_item_by_item() {
        let (answers, writes) = submit_all(OnBatchError::WriteEachAlone, true, (1..=50).collect()).await;
        assert!(answers.iter().all(|a| matches!(a, Err(StoreError::Unavailable(_)))), "{answers:?}");
        assert!(writes < 50, "{writes} writes for 50 items: the outage was retried item by item");
    }
}
