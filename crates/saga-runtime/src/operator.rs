//! Operator transitions: what an operator does to a saga from outside the engine — retry one
//! that failed forward, cancel one, deliver a signal. The HTTP routes (and so the CLI and the
//! dashboard) call these; each checks what the saga's state and definition allow, and commits
//! with the hook the worker commits with, so a tenant saga's retry moves its tenant in the same
//! transaction. Who may act is the caller's to check; what may be done is decided here.

use std::sync::Arc;

use saga_core::{Action, SagaStatus};
use saga_store::{EngineStore, SagaOperatorUpdate, SagaRecord, SignalRecord, StoreError};
use serde_json::Value;

use crate::{Clock, DefinitionCache, DefinitionError, TerminalHub, TransitionHook};

/// Why an operator transition was refused.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The saga is not in a state that allows it (terminal, past its pivot, not FAILED).
    #[error("{0}")]
    Conflict(String),
    /// No step of the saga's definition waits for this signal.
    #[error("definition {definition:?} has no step waiting for a signal named {name:?}")]
    UnknownSignal { definition: String, name: String, waits_for: Vec<String> },
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The operator transitions of one engine.
#[derive(Clone)]
pub struct Operator {
    store: Arc<dyn EngineStore>,
    definitions: Arc<DefinitionCache>,
    clock: Arc<dyn Clock>,
    hub: TerminalHub,
    hook: Option<Arc<dyn TransitionHook>>,
}

impl Operator {
    pub fn new(
        store: Arc<dyn EngineStore>,
        definitions: Arc<DefinitionCache>,
        clock: Arc<dyn Clock>,
        hub: TerminalHub,
        hook: Option<Arc<dyn TransitionHook>>,
    ) -> Self {
        Operator { store, definitions, clock, hub, hook }
    }

    /// Resumes a `FAILED` saga from the step that failed, with the tenant change it causes (a
    /// tenant saga's retry moves its tenant back to `MIGRATING`) in the same transaction.
    pub async fn retry(&self, record: &SagaRecord) -> Result<SagaRecord, OperatorError> {
        let (_, definition) = self.definitions.get(&record.definition, Some(record.version)).await?;
        let mut state = record.state.clone();
        let now_ms = self.clock.now_ms();
        let transition =
            state.retry_by_operator(&definition, now_ms).map_err(|e| OperatorError::Conflict(e.to_string()))?;
        let tenant_change =
            self.hook.as_ref().and_then(|hook| hook.tenant_change(record, &definition, &state, &transition.events));
        let update = SagaOperatorUpdate {
            id: record.id,
            tenant_id: record.tenant_id.clone(),
            expected_status: SagaStatus::Failed,
            state,
            events: transition.events,
            tenant_change,
            now_ms,
        };
        let updated = self.store.saga_operator_update(update).await?;
        if updated.status.is_terminal() {
            self.hub.publish(updated.clone());
        }
        Ok(updated)
    }

    /// Asks a saga that has not finished to stop going forward and compensate what may have
    /// happened; refused once it is terminal or past a succeeded pivot step.
    pub async fn cancel(&self, record: &SagaRecord) -> Result<SagaRecord, OperatorError> {
        if record.status.is_terminal() {
            return Err(OperatorError::Conflict(format!(
                "saga is {}; only a saga that has not finished can be cancelled",
                record.status.as_str()
            )));
        }
        let (_, definition) = self.definitions.get(&record.definition, Some(record.version)).await?;
        if record.state.pivot_passed(&definition) {
            return Err(OperatorError::Conflict(
                "saga is past a succeeded pivot step; it can only go forward (use retry if it fails)".into(),
            ));
        }
        match self.store.saga_cancel_request(record.id, self.clock.now_ms()).await {
            Err(StoreError::Conflict(message)) => {
                Err(OperatorError::Conflict(format!("{message}; it can no longer be cancelled")))
            }
            other => Ok(other?),
        }
    }

    /// Delivers signal `name` with `payload`, buffered until the saga reaches the step waiting for
    /// it. Refused for a name no step of its definition waits for, and once it is terminal.
    pub async fn signal(
        &self,
        record: &SagaRecord,
        name: &str,
        payload: &Value,
    ) -> Result<SignalRecord, OperatorError> {
        let (_, definition) = self.definitions.get(&record.definition, Some(record.version)).await?;
        let waits_for: Vec<String> = definition
            .steps
            .iter()
            .filter_map(|step| match &step.action {
                Action::Signal(signal) => Some(signal.name.clone()),
                _ => None,
            })
            .collect();
        if !waits_for.iter().any(|waiting| waiting == name) {
            return Err(OperatorError::UnknownSignal {
                definition: record.definition.clone(),
                name: name.to_string(),
                waits_for,
            });
        }
        if record.status.is_terminal() {
            return Err(OperatorError::Conflict(format!(
                "saga is {}; it takes no more signals",
                record.status.as_str()
            )));
        }
        match self.store.signal_send(record.id, name, payload, self.clock.now_ms()).await {
            Err(StoreError::Conflict(message)) => {
                Err(OperatorError::Conflict(format!("{message}; it takes no more signals")))
            }
            other => Ok(other?),
        }
    }
}
