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
    /// Each item is written again on its own, so one item that cannot be written fails alone.
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
            Err(e) if items.len() == 1 || on_error == OnBatchError::FailAll => {
                tracing::error!(error = %e, batch = items.len(), "batched write failed");
                let message = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::backend(std::io::Error::other(message.clone()))));
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
