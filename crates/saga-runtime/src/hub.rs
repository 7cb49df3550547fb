//! In-process notifications of sagas reaching a terminal status, carrying the committed final
//! record so `?wait=` readers answer without reading the store again.
//!
//! Waiters register for one saga id, so a finishing saga wakes only its own waiters (a
//! broadcast woke every waiting request for every finished saga: 64 waiters × thousands of
//! sagas per second, measured as a visible share of the API's CPU under the saga3 benchmark).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use saga_store::SagaRecord;
use tokio::sync::oneshot;
use uuid::Uuid;

type Waiters = HashMap<Uuid, Vec<(u64, oneshot::Sender<Arc<SagaRecord>>)>>;

/// Hands the final records of sagas local drivers (or operators) finished to whoever waits.
#[derive(Clone, Default)]
pub struct TerminalHub {
    waiters: Arc<Mutex<Waiters>>,
    next_key: Arc<AtomicU64>,
}

impl TerminalHub {
    /// Publishes a record that is already committed, to the waiters of its saga.
    pub fn publish(&self, record: SagaRecord) {
        let waiting = match self.waiters.lock() {
            Ok(mut waiters) => waiters.remove(&record.id),
            Err(_) => None,
        };
        // No waiters is fine: nobody is waiting.
        if let Some(waiting) = waiting {
            let record = Arc::new(record);
            for (_, sender) in waiting {
                let _ = sender.send(record.clone());
            }
        }
    }

    /// Waits for saga `id`; register before reading its status, so nothing is missed between
    /// the read and the wait.
    pub fn watch(&self, id: Uuid) -> TerminalWatch {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.entry(id).or_default().push((key, sender));
        }
        TerminalWatch { hub: self.clone(), id, key, receiver }
    }

    /// How many sagas have waiters.
    pub fn watched(&self) -> usize {
        self.waiters.lock().map(|w| w.len()).unwrap_or(0)
    }
}

/// One waiter's registration; dropping it unregisters.
pub struct TerminalWatch {
    hub: TerminalHub,
    id: Uuid,
    key: u64,
    receiver: oneshot::Receiver<Arc<SagaRecord>>,
}

impl TerminalWatch {
    /// The final record, once the saga is terminal (pending forever if it never is here:
    /// callers bound it with a timeout and re-read the store for other instances' sagas).
    pub async fn done(&mut self) -> Arc<SagaRecord> {
        match (&mut self.receiver).await {
            Ok(record) => record,
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for TerminalWatch {
    fn drop(&mut self) {
        if let Ok(mut waiters) = self.hub.waiters.lock() {
            if let Some(list) = waiters.get_mut(&self.id) {
                list.retain(|(key, _)| *key != self.key);
                if list.is_empty() {
                    waiters.remove(&self.id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: Uuid) -> SagaRecord {
        let definition = saga_core::validate_definition(
            "t",
            &serde_json::json!({"steps": [{"name": "a", "action": {"builtin": "core.echo"}}]}),
            &["core.echo"],
        )
        .expect("valid");
        SagaRecord {
            id,
            definition: "t".into(),
            version: 1,
            tenant_id: None,
            status: saga_core::SagaStatus::Completed,
            input: serde_json::json!({}),
            state: saga_core::SagaState::new(&definition),
            priority: 0,
            run_at_ms: 0,
            lease_owner: None,
            lease_expires_at_ms: None,
            fencing_token: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
            completed_at_ms: Some(0),
            cancel_requested_at_ms: None,
            wake_seq: 0,
            concurrency_key: None,
        }
    }

    #[tokio::test]
    async fn only_the_sagas_own_waiters_are_woken_and_dropped_waiters_leave() {
        let hub = TerminalHub::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut first = hub.watch(a);
        let mut second = hub.watch(a);
        let mut other = hub.watch(b);
        let gone = hub.watch(b);
        drop(gone);
        assert_eq!(hub.watched(), 2);
        hub.publish(record(a));
        assert_eq!(first.done().await.id, a);
        assert_eq!(second.done().await.id, a);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), other.done()).await;
        assert!(waited.is_err(), "b's waiter was not woken by a");
        drop((first, second));
        assert_eq!(hub.watched(), 1, "a's entry left with its publish");
        drop(other);
        assert_eq!(hub.watched(), 0, "a dropped waiter unregisters");
        hub.publish(record(b)); // nobody waits: fine
    }
}
