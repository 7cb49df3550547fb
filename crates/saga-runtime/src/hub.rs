//! In-process notifications of sagas reaching a terminal status (for `?wait=` readers).

use saga_core::SagaStatus;
use tokio::sync::broadcast;
use uuid::Uuid;

/// How many terminal notifications a slow reader may fall behind before it re-reads the store.
pub const HUB_CAPACITY: usize = 4096;

/// Broadcasts `(saga id, terminal status)` from local drivers.
#[derive(Clone)]
pub struct TerminalHub {
    sender: broadcast::Sender<(Uuid, SagaStatus)>,
}

impl Default for TerminalHub {
    fn default() -> Self {
        let (sender, _) = broadcast::channel(HUB_CAPACITY);
        TerminalHub { sender }
    }
}

impl TerminalHub {
    pub fn publish(&self, id: Uuid, status: SagaStatus) {
        // No receivers is fine: nobody is waiting.
        let _ = self.sender.send((id, status));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<(Uuid, SagaStatus)> {
        self.sender.subscribe()
    }
}
