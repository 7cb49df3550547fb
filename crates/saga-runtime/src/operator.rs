//! Operator transitions: what an operator does to a saga from outside the engine — retry one
//! that failed forward, cancel one, deliver a signal, move one to a new version of its
//! definition. The HTTP routes (and so the CLI and the
//! dashboard) call these; each checks what the saga's state and definition allow, and commits
//! with the hook the worker commits with, so a tenant saga's retry moves its tenant in the same
//! transaction. Who may act is the caller's to check; what may be done is decided here. A bulk
//! job passes its item ([`JobMark`]) so the item is marked done in the transaction that acts.

use std::sync::Arc;

use saga_core::{Action, HistoryEvent, SagaStatus};
use saga_store::{EngineStore, JobMark, SagaOperatorUpdate, SagaRecord, SignalRecord, StoreError};
use serde_json::Value;
use uuid::Uuid;

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
    pub async fn retry(&self, record: &SagaRecord, job: Option<&JobMark>) -> Result<SagaRecord, OperatorError> {
        let definition = self.definitions.for_saga(record).await?;
        let mut state = record.state.clone();
        let now_ms = self.clock.now_ms();
        let transition =
            state.retry_by_operator(&definition, now_ms).map_err(|e| OperatorError::Conflict(e.to_string()))?;
        let tenant_change = self
            .hook
            .as_ref()
            .filter(|_| state.parent.is_none())
            .and_then(|hook| hook.tenant_change(record, &definition, &state, &transition.events));
        let update = SagaOperatorUpdate {
            id: record.id,
            tenant_id: record.tenant_id.clone(),
            expected_status: SagaStatus::Failed,
            state,
            events: transition.events,
            tenant_change,
            job: job.copied(),
            now_ms,
            moves_version: None,
        };
        let updated = self.store.saga_operator_update(update).await?;
        if updated.status.is_terminal() {
            self.hub.publish(updated.clone());
        }
        Ok(updated)
    }

    /// Asks a saga that has not finished to stop going forward and compensate what may have
    /// happened; refused once it is terminal or past a succeeded pivot step.
    pub async fn cancel(&self, record: &SagaRecord, job: Option<&JobMark>) -> Result<SagaRecord, OperatorError> {
        if record.status.is_terminal() {
            return Err(OperatorError::Conflict(format!(
                "saga is {}; only a saga that has not finished can be cancelled",
                record.status.as_str()
            )));
        }
        let definition = self.definitions.for_saga(record).await?;
        if record.state.pivot_passed(&definition) {
            return Err(OperatorError::Conflict(
                "saga is past a succeeded pivot step; it can only go forward (use retry if it fails)".into(),
            ));
        }
        match self.store.saga_cancel_request(record.id, self.clock.now_ms(), job).await {
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
        job: Option<&JobMark>,
    ) -> Result<SignalRecord, OperatorError> {
        let definition = self.definitions.for_saga(record).await?;
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
        match self.store.signal_send(record.id, name, payload, self.clock.now_ms(), job).await {
            Err(StoreError::Conflict(message)) => {
                Err(OperatorError::Conflict(format!("{message}; it takes no more signals")))
            }
            other => Ok(other?),
        }
    }

    /// Moves a saga going forward to version `to` of its definition, when what it has run so far
    /// starts that version the same way ([`saga_core::upgrade`]); refused, with every reason,
    /// otherwise. History: `saga_upgraded {from, to}`.
    pub async fn upgrade(
        &self,
        record: &SagaRecord,
        to: i32,
        job: Option<&JobMark>,
    ) -> Result<SagaRecord, OperatorError> {
        if record.version == to {
            return Err(OperatorError::Conflict(format!("saga is on version {to} already")));
        }
        if record.lease_owner.is_some() && record.lease_expires_at_ms.is_some_and(|until| until > self.clock.now_ms()) {
            return Err(OperatorError::Conflict(
                "a worker is running one of its steps; it moves while it waits (a signal, a timer, a callback, a retry)"
                    .into(),
            ));
        }
        let (_, from_definition) = self.definitions.get(&record.definition, Some(record.version)).await?;
        let (_, to_definition) = self.definitions.get(&record.definition, Some(to)).await?;
        let state =
            saga_core::upgrade::upgrade(&from_definition, &to_definition, &record.state).map_err(|reasons| {
                OperatorError::Conflict(format!(
                    "it cannot move from version {} to {to}: {}",
                    record.version,
                    reasons.join("; ")
                ))
            })?;
        let now_ms = self.clock.now_ms();
        let moved = HistoryEvent::new(
            "saga_upgraded",
            None,
            None,
            serde_json::json!({"from": record.version, "to": to}),
            now_ms,
        );
        let update = SagaOperatorUpdate {
            id: record.id,
            tenant_id: record.tenant_id.clone(),
            expected_status: record.status,
            state,
            events: vec![moved],
            tenant_change: None,
            job: job.copied(),
            now_ms,
            moves_version: Some((record.version, to)),
        };
        match self.store.saga_operator_update(update).await {
            Err(StoreError::Conflict(message)) => {
                Err(OperatorError::Conflict(format!("{message}; it moved meanwhile (or a worker took it)")))
            }
            other => Ok(other?),
        }
    }

    /// One bulk job's action on saga `id`, its item marked done in the same transaction.
    pub async fn act(&self, id: Uuid, action: &BulkAction, job: &JobMark) -> Result<(), OperatorError> {
        let record = match self.store.saga_get(id).await {
            Err(StoreError::NotFound) => return Err(OperatorError::Conflict("the saga no longer exists".into())),
            other => other?,
        };
        match action {
            BulkAction::Cancel => self.cancel(&record, Some(job)).await.map(drop),
            BulkAction::Retry => self.retry(&record, Some(job)).await.map(drop),
            BulkAction::Signal { name, data } => self.signal(&record, name, data, Some(job)).await.map(drop),
            BulkAction::Upgrade { version } => self.upgrade(&record, *version, Some(job)).await.map(drop),
        }
    }
}

/// What a bulk job does to each saga it selected (`POST /v1/sagas/actions`).
#[derive(Clone, Debug, PartialEq)]
pub enum BulkAction {
    Cancel,
    Retry,
    Signal {
        name: String,
        data: Value,
    },
    /// Move to this version of the definition (the sagas that can).
    Upgrade {
        version: i32,
    },
}

impl BulkAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            BulkAction::Cancel => "cancel",
            BulkAction::Retry => "retry",
            BulkAction::Signal { .. } => "signal",
            BulkAction::Upgrade { .. } => "upgrade",
        }
    }

    /// The action a stored job names, with its arguments (a signal's `{name, data}`, an
    /// upgrade's `{version}`).
    pub fn parse(action: &str, arguments: Option<&Value>) -> Option<Self> {
        match action {
            "cancel" => Some(BulkAction::Cancel),
            "retry" => Some(BulkAction::Retry),
            "signal" => {
                let arguments = arguments?;
                let name = arguments.get("name")?.as_str()?.to_string();
                let data = arguments.get("data").cloned().unwrap_or(Value::Null);
                Some(BulkAction::Signal { name, data })
            }
            "upgrade" => {
                let version = arguments?.get("version")?.as_i64()?;
                Some(BulkAction::Upgrade { version: i32::try_from(version).ok()? })
            }
            _ => None,
        }
    }

    /// The statuses a saga must have for the action to apply: a job selects only those.
    pub fn applies_to(&self) -> &'static [SagaStatus] {
        match self {
            BulkAction::Retry => &[SagaStatus::Failed],
            BulkAction::Cancel | BulkAction::Signal { .. } => {
                &[SagaStatus::Pending, SagaStatus::Executing, SagaStatus::Compensating]
            }
            BulkAction::Upgrade { .. } => &[SagaStatus::Pending, SagaStatus::Executing],
        }
    }
}
