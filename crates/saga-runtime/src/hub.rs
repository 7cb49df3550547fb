//! In-process notifications of sagas reaching a terminal status, carrying the committed final
//! record so `?wait=` readers answer without reading the store again.

use std::sync::Arc;

use saga_store::SagaRecord;
use tokio::sync::broadcast;

/// How many terminal notifications a slow reader may fall behind before it re-reads the store.
pub const HUB_CAPACITY: usize = 4096;

/// Broadcasts the final records of sagas local drivers (or operators) finished.
#[derive(Clone)]
pub struct TerminalHub {
    sender: broadcast::Sender<Arc<SagaRecord>>,
}

impl Default for TerminalHub {
    fn default() -> Self {
        let (sender, _) = broadcast::channel(HUB_CAPACITY);
        TerminalHub { sender }
    }
}

impl TerminalHub {
    /// Publishes a record that is already committed.
    pub fn publish(&self, record: SagaRecord) {
        // No receivers is fine: nobody is waiting.
        let _ = self.sender.send(Arc::new(record));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<SagaRecord>> {
        self.sender.subscribe()
    }
}
