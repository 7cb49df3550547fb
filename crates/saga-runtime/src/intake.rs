//! Where new sagas enter the engine: one call, [`Intake::create`], for the API and tools.
//!
//! Design note. When this process runs an instance with a free driver slot, a new saga is
//! inserted already leased to this worker (fencing token 1) and handed straight to a driver, so
//! no claim statement, no notification and no claim-loop wake-up stand between creation and the
//! first step. If the instance dies, the lease expires and another instance takes the saga over,
//! exactly as after a claim. A saga with a concurrency key is never created leased: it waits
//! for the claim to admit it. Without a free slot (or without an instance) the saga is created
//! due, for any instance to claim. Creates are batched ([`saga_store::SagaCreates`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use saga_store::{
    Claimed, EngineStore, LeaseGrant, LeaseRef, SagaCreate, SagaCreated, SagaCreates, SagaRecord, StoreResult,
};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::clock::Clock;

/// Creates sagas and, when it can, starts them on this instance.
#[derive(Clone)]
pub struct Intake {
    creates: SagaCreates,
    local: Option<LocalSlots>,
}

/// This instance's driver slots, as the intake sees them. Not the instance's shared state: an
/// intake held by the API must not keep the committer alive at shutdown.
#[derive(Clone)]
pub(crate) struct LocalSlots {
    pub shutting_down: Arc<AtomicBool>,
    pub worker_id: String,
    pub lease_ttl_ms: i64,
    pub store: Arc<dyn EngineStore>,
    pub clock: Arc<dyn Clock>,
    pub permits: Arc<Semaphore>,
    pub sender: mpsc::UnboundedSender<(Claimed, OwnedSemaphorePermit)>,
}

impl Intake {
    /// An intake for a process that runs no instance: every saga waits for some instance's claim.
    /// The create writer ends when the last clone is dropped.
    pub fn without_instance(store: Arc<dyn EngineStore>) -> Intake {
        let (creates, _writer) = SagaCreates::start(store);
        Intake { creates, local: None }
    }

    pub(crate) fn with_instance(creates: SagaCreates, local: LocalSlots) -> Intake {
        Intake { creates, local: Some(local) }
    }

    /// Creates the saga (`params.lease` is decided here), or finds the one made with the same
    /// idempotency key. A created saga this instance can drive now is started before this returns.
    pub async fn create(&self, mut params: SagaCreate) -> StoreResult<SagaCreated> {
        let reservation = match (&self.local, &params.concurrency) {
            (Some(local), None) => local.reserve(),
            _ => None,
        };
        params.lease = reservation.as_ref().map(Reservation::lease);
        let created = self.creates.create(params).await?;
        if let (SagaCreated::Created(record), Some(reservation)) = (&created, reservation) {
            reservation.start(record.clone()).await;
        }
        Ok(created)
    }
}

impl LocalSlots {
    /// A free driver slot, if any (none while shutting down).
    fn reserve(&self) -> Option<Reservation> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return None;
        }
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(Reservation { permit, slots: self.clone() })
    }
}

/// A reserved driver slot; dropping it frees the slot.
struct Reservation {
    permit: OwnedSemaphorePermit,
    slots: LocalSlots,
}

impl Reservation {
    fn lease(&self) -> LeaseGrant {
        LeaseGrant { worker_id: self.slots.worker_id.clone(), lease_ttl_ms: self.slots.lease_ttl_ms }
    }

    /// Hands a saga created with [`Reservation::lease`] to its driver.
    async fn start(self, record: SagaRecord) {
        let slots = self.slots;
        let lease = LeaseRef { id: record.id, fencing_token: record.fencing_token };
        let claim = Claimed { record, previous_owner: None };
        if slots.sender.send((claim, self.permit)).is_err() {
            // The instance has stopped: hand the lease back so another instance starts it now.
            if let Err(e) = slots.store.lease_release(&slots.worker_id, &[lease], slots.clock.now_ms()).await {
                tracing::warn!(error = %e, "handing back a new saga's lease failed; it will expire");
            }
        }
    }
}
