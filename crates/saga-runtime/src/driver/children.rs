//! Child sagas (`action: saga`): starting a step's child, taking its end as the step's outcome,
//! and undoing it when the step is compensated.
//!
//! Design note. A child's id is derived from its parent's id and the step's name
//! ([`child_saga_id`]), and it is created under an idempotency key made of the same, so a retry,
//! a driver taking over or a zombie driver never starts a second one. The parent parks
//! (`WaitKind::Child`) with no worker held; the child's driver wakes it when the child ends
//! (`saga_wake`, after the child's last commit), and the parent looks again every
//! [`CHILD_RECHECK_MS`] in case that wake was lost with a crash in between.
//!
//! Compensating the step undoes the child: a child still going forward is cancelled, a
//! `COMPLETED` one is compensated (a transition written on the child, conditional on its status,
//! as an operator's is), and the parent parks until the child is `COMPENSATED`. A child that was
//! never started is claimed with a tombstone — a saga created already `COMPENSATED` under the
//! same key — so that a driver before this one, sending its create late, finds the id taken and
//! starts nothing.

use saga_core::template::TemplateContext;
use saga_core::{
    ChildSagaAction, FailureKind, HistoryEvent, Outcome, ParentLink, SagaError, SagaState, SagaStatus, WaitKind,
    CHILD_DEPTH_MAX,
};
use saga_store::{SagaCreate, SagaCreated, SagaOperatorUpdate, SagaRecord, StoreError};
use serde_json::json;
use sha2::Digest;
use uuid::Uuid;

use super::attempt::Execution;
use super::Drive;
use crate::DefinitionError;

/// How often a parent waiting for a child looks at it again, should the child's wake be lost.
pub const CHILD_RECHECK_MS: i64 = 60_000;

/// The id of the child saga that step `step` of saga `parent` starts: a UUIDv7 with the parent's
/// timestamp (so lists show the child beside its parent) and 74 bits of SHA-256 of the pair.
pub fn child_saga_id(parent: Uuid, step: &str) -> Uuid {
    let digest = sha2::Sha256::new().chain_update(parent.as_bytes()).chain_update(step.as_bytes()).finalize();
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&parent.as_bytes()[..6]);
    bytes[6..].copy_from_slice(&digest[..10]);
    bytes[6] = (bytes[6] & 0x0f) | 0x70;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid::from_bytes(bytes)
}

/// The idempotency key a child is created under (no API key can take this namespace).
pub(super) fn child_idempotency_key(parent: Uuid, step: &str) -> String {
    format!("child:{parent}:{step}")
}

pub(super) fn definitely(message: String) -> Execution {
    Execution::Outcome(Outcome::Failed { kind: FailureKind::NonRetryable, message })
}

/// A definition that could not be loaded: a store failure stops the driver (Err, logged; the
/// attempt runs again), anything else (no such definition or version) is the caller's to answer.
fn unless_store_failed(error: DefinitionError) -> Result<DefinitionError, Execution> {
    match error {
        DefinitionError::Store(e) => {
            tracing::error!(error = %e, "loading a child saga's definition failed");
            Err(Execution::Stop)
        }
        other => Ok(other),
    }
}

/// The step's outcome once the child has ended; None while it has not.
fn ended(child: &SagaRecord) -> Option<Outcome> {
    let id = child.id;
    let name = &child.definition;
    let reason = |error: Option<&SagaError>| error.map(|e| format!(": {}", e.message)).unwrap_or_default();
    match child.status {
        SagaStatus::Completed => Some(Outcome::Succeeded(json!({"saga_id": id, "output": child.state.output()}))),
        SagaStatus::Compensated => Some(Outcome::Failed {
            kind: FailureKind::NonRetryable,
            message: format!("child saga {id} ({name}) was compensated{}", reason(child.state.error.as_ref())),
        }),
        SagaStatus::Failed => Some(Outcome::Failed {
            kind: FailureKind::Ambiguous,
            message: format!(
                "child saga {id} ({name}) FAILED and awaits an operator{}",
                reason(child.state.error.as_ref())
            ),
        }),
        SagaStatus::Pending | SagaStatus::Executing | SagaStatus::Compensating => None,
    }
}

/// The key of the child `base` names in generation `generation` (0: the first run; an
/// operator's retry of the saga at that step makes the next).
pub(super) fn generation_key(base: &str, generation: u32) -> String {
    match generation {
        0 => base.to_string(),
        n => format!("{base}@{n}"),
    }
}

/// What the children of a key are now.
pub(super) enum Latest {
    /// None in any generation up to this one.
    None,
    /// The one to go on with: of this generation, or of an earlier one that did not undo itself
    /// (it still runs, completed, or awaits an operator).
    Current(Box<SagaRecord>),
    /// The latest one, of an earlier generation, compensated itself: the retry starts afresh.
    Undone,
}

impl Drive<'_> {
    /// The child `base` names, as [`Latest`] says, looking from `generation` down.
    pub(super) async fn latest_child(&self, base: &str, generation: u32) -> Result<Latest, Execution> {
        let parent = self.claimed.record.id;
        for n in (0..=generation).rev() {
            let id = child_saga_id(parent, &generation_key(base, n));
            match self.shared.store.saga_get(id).await {
                Ok(child) if n < generation && child.status == SagaStatus::Compensated => return Ok(Latest::Undone),
                Ok(child) => return Ok(Latest::Current(Box::new(child))),
                Err(StoreError::NotFound) => continue,
                Err(e) => {
                    tracing::error!(error = %e, child = %id, "reading a child saga failed");
                    return Err(Execution::Stop);
                }
            }
        }
        Ok(Latest::None)
    }

    /// A child saga step's forward attempt: the child is started if it does not exist yet (or
    /// the last one undid itself before an operator's retry), and the step ends as the child
    /// has ended; until then the saga parks.
    pub(super) async fn take_child(&mut self, at: usize, step: &str, action: &ChildSagaAction) -> Execution {
        let generation = self.state.steps[at].generation;
        let child = match self.latest_child(step, generation).await {
            Ok(Latest::Current(child)) => *child,
            Ok(Latest::None | Latest::Undone) => {
                let key = generation_key(step, generation);
                match self.start_child(step, &key, action).await {
                    Ok(child) => child,
                    Err(execution) => return execution,
                }
            }
            Err(execution) => return execution,
        };
        let id = child.id;
        match ended(&child) {
            Some(outcome) => Execution::Outcome(outcome),
            None => Execution::Wait {
                kind: WaitKind::Child { saga_id: id.to_string() },
                until_ms: Some(self.shared.clock.now_ms().saturating_add(CHILD_RECHECK_MS)),
            },
        }
    }

    /// Creates the child (`child_saga_started` goes with the next commit). Err: how the attempt
    /// ends instead — definitely, for what no retry would change (no such definition, an input
    /// that does not render, nesting too deep), or stopped on a store error.
    async fn start_child(&mut self, step: &str, key: &str, action: &ChildSagaAction) -> Result<SagaRecord, Execution> {
        let record = &self.claimed.record;
        let id = child_saga_id(record.id, key);
        let link = self.child_link(step, None);
        if link.depth > CHILD_DEPTH_MAX {
            return Err(definitely(format!(
                "child sagas nest at most {CHILD_DEPTH_MAX} deep; this one would be at depth {}",
                link.depth
            )));
        }
        let (version, definition) = match self.shared.definitions.get(&action.definition, action.version).await {
            Ok(found) => found,
            Err(e) => return Err(definitely(format!("child saga: {}", unless_store_failed(e)?))),
        };
        let input = match &action.input {
            Some(tree) => saga_core::template::render_value(tree, &self.templates)
                .map_err(|e| definitely(format!("child saga input: {e}")))?,
            None => json!({}),
        };
        let context = TemplateContext {
            input: input.clone(),
            tenant_id: record.tenant_id.clone(),
            saga_id: id.to_string(),
            step_outputs: serde_json::Map::new(),
            vars: self.shared.config.vars.clone(),
            locals: serde_json::Map::new(),
        };
        let concurrency = definition.concurrency_key(&context).map_err(|e| definitely(format!("child saga: {e}")))?;
        let now_ms = self.shared.clock.now_ms();
        let mut state = SagaState::started(&definition, now_ms);
        state.parent = Some(link);
        let params = SagaCreate {
            id,
            tenant_id: record.tenant_id.clone(),
            priority: record.priority,
            idempotency_key: Some(child_idempotency_key(record.id, key)),
            concurrency,
            retention_ms: definition.retention_ms.and_then(|ms| i64::try_from(ms).ok()),
            ..SagaCreate::new(&action.definition, version, input, state, now_ms)
        };
        let created = saga_store::creates::create_one(self.shared.store.as_ref(), params).await;
        if let Ok(SagaCreated::Created(child)) = &created {
            self.pending.push(HistoryEvent::new(
                "child_saga_started",
                Some(step),
                None,
                json!({"child_saga_id": id, "definition": action.definition, "version": version}),
                now_ms,
            ));
            return Ok(child.clone());
        }
        // Created meanwhile by another driver (or its tombstone): the one that exists is it.
        self.shared.store.saga_get(id).await.map_err(|e| {
            tracing::error!(error = %e, child = %id, "creating the child saga failed");
            Execution::Stop
        })
    }

    /// A child saga step's compensation: done once the child is `COMPENSATED` (or was never
    /// started); a child going forward is cancelled, a `COMPLETED` one compensated, and the
    /// saga parks until the child has finished. A `FAILED` child, or one past its pivot, cannot
    /// be undone from here: the compensation fails for an operator.
    pub(super) async fn compensate_child(&mut self, at: usize, step: &str, action: &ChildSagaAction) -> Execution {
        let generation = self.state.steps[at].generation;
        let child = match self.latest_child(step, generation).await {
            Ok(Latest::Current(child)) => *child,
            // None of this generation: its id is taken for good, so a late create finds it.
            Ok(Latest::None | Latest::Undone) => {
                let id = child_saga_id(self.claimed.record.id, &generation_key(step, generation));
                match self.tombstone_child(step, action, id, generation).await {
                    Ok(Some(child)) => child,
                    Ok(None) => {
                        return Execution::Outcome(Outcome::Succeeded(json!({"saga_id": id, "started": false})))
                    }
                    Err(execution) => return execution,
                }
            }
            Err(execution) => return execution,
        };
        let id = child.id;
        let waiting = Execution::AwaitChild { saga_id: id, until_ms: self.shared.clock.now_ms() + CHILD_RECHECK_MS };
        match child.status {
            SagaStatus::Compensated => Execution::Outcome(Outcome::Succeeded(json!({"saga_id": id}))),
            SagaStatus::Failed => definitely(format!(
                "child saga {id} is FAILED: an operator must retry it before its parent can be compensated"
            )),
            SagaStatus::Completed => match self.compensate_completed_child(&child).await {
                Ok(()) => waiting,
                Err(execution) => execution,
            },
            SagaStatus::Pending | SagaStatus::Executing | SagaStatus::Compensating => {
                match self.cancel_child(&child).await {
                    Ok(()) => waiting,
                    Err(execution) => execution,
                }
            }
        }
    }

    /// Asks a child still going forward to stop (once): it compensates what it did. A child
    /// compensating, or asked already, is left to go on.
    pub(super) async fn cancel_child(&self, child: &SagaRecord) -> Result<(), Execution> {
        let forward = matches!(child.status, SagaStatus::Pending | SagaStatus::Executing);
        if !forward || child.cancel_requested_at_ms.is_some() {
            return Ok(());
        }
        match self.shared.store.saga_cancel_request(child.id, self.shared.clock.now_ms(), None).await {
            // Conflict: it has just ended; the next look finds how.
            Ok(_) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, child = %child.id, "cancelling a child saga failed");
                Err(Execution::Stop)
            }
        }
    }

    /// Moves a `COMPLETED` child to `COMPENSATING`, written only while it is still `COMPLETED`.
    pub(super) async fn compensate_completed_child(&self, child: &SagaRecord) -> Result<(), Execution> {
        let definition = match self.shared.definitions.for_saga(child).await {
            Ok(definition) => definition,
            Err(e) => return Err(definitely(format!("child saga {}: {}", child.id, unless_store_failed(e)?))),
        };
        let now_ms = self.shared.clock.now_ms();
        let mut state = child.state.clone();
        let parent = self.claimed.record.id.to_string();
        let transition = state
            .compensate_completed(&definition, &parent, now_ms)
            .map_err(|e| definitely(format!("child saga {}: {e}", child.id)))?;
        let update = SagaOperatorUpdate {
            id: child.id,
            tenant_id: child.tenant_id.clone(),
            expected_status: SagaStatus::Completed,
            state,
            events: transition.events,
            tenant_change: None,
            job: None,
            now_ms,
            moves_version: None,
        };
        match self.shared.store.saga_operator_update(update).await {
            // Conflict: no longer COMPLETED (another driver of this parent got there first).
            Ok(_) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, child = %child.id, "compensating the child saga failed");
                Err(Execution::Stop)
            }
        }
    }

    /// Takes the child's id for good with a saga created already `COMPENSATED`, so a create sent
    /// late by a driver before this one finds it taken. Ok(None): nothing was ever started and
    /// nothing can be now (its definition does not exist); Ok(Some): the child as it stands —
    /// the tombstone, or a child created meanwhile.
    async fn tombstone_child(
        &mut self,
        step: &str,
        action: &ChildSagaAction,
        id: Uuid,
        generation: u32,
    ) -> Result<Option<SagaRecord>, Execution> {
        let (version, definition) = match self.shared.definitions.get(&action.definition, action.version).await {
            Ok(found) => found,
            Err(e) => {
                unless_store_failed(e)?;
                return Ok(None);
            }
        };
        let link = self.child_link(step, None);
        let place = (action.definition.as_str(), version);
        let key = child_idempotency_key(self.claimed.record.id, &generation_key(step, generation));
        self.place_tombstone(id, &key, place, &definition, link).await.map(Some)
    }

    /// How a child of step `step` points back at this saga (`branch` for a group's branch).
    pub(super) fn child_link(&self, step: &str, branch: Option<saga_core::BranchLink>) -> ParentLink {
        let depth = self.state.parent.as_ref().map_or(0, |p| p.depth) + 1;
        ParentLink { saga_id: self.claimed.record.id.to_string(), step: step.to_string(), depth, branch }
    }

    /// Creates the tombstone of a child never started — `COMPENSATED`, every step `SKIPPED` —
    /// under its key, and answers the child as it stands then: the tombstone, or a child a
    /// driver before this one created meanwhile.
    pub(super) async fn place_tombstone(
        &self,
        id: Uuid,
        key: &str,
        (definition_name, version): (&str, i32),
        definition: &saga_core::Definition,
        link: ParentLink,
    ) -> Result<SagaRecord, Execution> {
        let record = &self.claimed.record;
        let now_ms = self.shared.clock.now_ms();
        let mut state = SagaState::started(definition, now_ms);
        state.parent = Some(link);
        state.status = SagaStatus::Compensated;
        for step in &mut state.steps {
            step.status = saga_core::StepStatus::Skipped;
        }
        state.error = Some(SagaError {
            step: None,
            kind: saga_core::machine::ErrorKind::Cancelled,
            message: format!("never started: its parent saga {} was compensated first", record.id),
        });
        let params = SagaCreate {
            id,
            tenant_id: record.tenant_id.clone(),
            idempotency_key: Some(key.to_string()),
            ..SagaCreate::new(definition_name, version, json!({}), state, now_ms)
        };
        let _ = saga_store::creates::create_one(self.shared.store.as_ref(), params).await;
        self.shared.store.saga_get(id).await.map_err(|e| {
            tracing::error!(error = %e, child = %id, "claiming the child saga's id failed");
            Execution::Stop
        })
    }

    /// After this saga's last commit: a child wakes the parent waiting for it.
    pub(super) async fn wake_parent(&self) {
        let Some(parent) = &self.state.parent else { return };
        let Ok(parent_id) = Uuid::parse_str(&parent.saga_id) else { return };
        if let Err(e) = self.shared.store.saga_wake(parent_id, self.shared.clock.now_ms()).await {
            tracing::warn!(error = %e, parent = %parent_id, "waking the parent saga failed; it looks again within a minute");
        }
    }
}
