//! `parallel` and `for_each` groups: each branch (or item) runs as a child saga of the same
//! definition and version, running that branch's steps.
//!
//! Design note. A group is one step of its saga. Its attempt reads its branches — child sagas
//! with ids derived from the parent, the group and the branch's index, created under
//! idempotency keys made of the same — and starts those not started yet, as far as its
//! `concurrency` allows, then parks (`WaitKind::Branches`); every branch that ends wakes it, and
//! it looks again. It succeeds once every branch has completed. Once a `parallel` branch has
//! failed for good (it compensated itself, or it is `FAILED` for an operator) the others are
//! cancelled — an attempt a cancel interrupts counts as ambiguous, and each cancelled branch
//! compensates what it did — and when none is left running the group fails as ambiguous,
//! naming the failed branches. A `for_each` runs every item to its end (each has its own
//! retries; one service's failed migration does not stop the others) and then fails the same
//! way, naming every item that failed. Compensating the group then undoes every branch that completed, newest first (by
//! when it completed), one at a time, before the steps before the group; a branch never started
//! gets a tombstone so that a late create from an earlier driver finds its id taken.

use saga_core::{BranchLink, FanOut, GroupAction, Outcome, SagaStatus, StepDefinition, WaitKind};
use saga_store::{SagaCreate, SagaCreated, SagaRecord};
use serde_json::{json, Value};
use uuid::Uuid;

use super::attempt::Execution;
use super::children::{child_idempotency_key, child_saga_id, definitely, generation_key, Latest, CHILD_RECHECK_MS};
use super::Drive;

/// What a group's branches are: one per `parallel` list (no item), or one per `for_each` item.
type Items = Vec<Option<Value>>;

/// The key of branch `index` of the group `step`.
fn branch_key(step: &str, index: usize) -> String {
    format!("{step}#{index}")
}

/// `#2 "billing" (saga …): <its error>` for each failed branch.
fn failures(children: &[Option<SagaRecord>], items: &Items) -> String {
    let named: Vec<String> = children
        .iter()
        .enumerate()
        .filter_map(|(index, child)| child.as_ref().map(|c| (index, c)))
        .filter(|(_, c)| matches!(c.status, SagaStatus::Compensated | SagaStatus::Failed))
        .map(|(index, child)| {
            let item = items.get(index).cloned().flatten().map(|i| format!(" {i}")).unwrap_or_default();
            let error = child.state.error.as_ref().map(|e| format!(": {}", e.message)).unwrap_or_default();
            format!("#{index}{item} (saga {}, {}){error}", child.id, child.status.as_str())
        })
        .collect();
    named.join("; ")
}

impl Drive<'_> {
    /// The group's branches now: a `parallel`'s lists, or the items its `for_each` renders (the
    /// same each time it is looked at: the input and the outputs before it do not change). Err:
    /// how the attempt ends instead (not a list, too long, a template that cannot render).
    fn items(&mut self, group: &GroupAction) -> Result<Items, Execution> {
        match &group.fan_out {
            FanOut::Parallel(branches) => Ok(vec![None; branches.len()]),
            FanOut::ForEach { items, .. } => {
                self.templates.step_outputs = self.step_outputs();
                let rendered = saga_core::template::render_value(&Value::String(items.clone()), &self.templates)
                    .map_err(|e| definitely(format!("for_each: {e}")))?;
                let Value::Array(list) = rendered else {
                    return Err(definitely(format!("for_each must render a list; {items:?} rendered {rendered}")));
                };
                if list.len() > saga_core::FOR_EACH_ITEMS_MAX {
                    return Err(definitely(format!(
                        "for_each rendered {} items; at most {} run in one step (start a child saga per batch)",
                        list.len(),
                        saga_core::FOR_EACH_ITEMS_MAX
                    )));
                }
                Ok(list.into_iter().map(Some).collect())
            }
        }
    }

    /// Each branch's saga to go on with (None: not started in this generation, and no earlier
    /// one that did not undo itself — see `Latest`).
    async fn branches(&self, step: &str, count: usize, generation: u32) -> Result<Vec<Option<SagaRecord>>, Execution> {
        if generation == 0 {
            // The first run (no retry yet): every branch in one read.
            let parent = self.claimed.record.id;
            let ids: Vec<Uuid> = (0..count).map(|index| child_saga_id(parent, &branch_key(step, index))).collect();
            let mut found: std::collections::HashMap<Uuid, SagaRecord> =
                match self.shared.store.saga_get_many(&ids).await {
                    Ok(records) => records.into_iter().map(|r| (r.id, r)).collect(),
                    Err(e) => {
                        tracing::error!(error = %e, "reading the branches failed");
                        return Err(Execution::Stop);
                    }
                };
            return Ok(ids.iter().map(|id| found.remove(id)).collect());
        }
        let mut children = Vec::with_capacity(count);
        for index in 0..count {
            match self.latest_child(&branch_key(step, index), generation).await? {
                Latest::Current(child) => children.push(Some(*child)),
                Latest::None | Latest::Undone => children.push(None),
            }
        }
        Ok(children)
    }

    /// A group's forward attempt: starts what may start, and ends with its branches.
    pub(super) async fn take_branches(&mut self, at: usize, step: &StepDefinition, group: &GroupAction) -> Execution {
        let items = match self.items(group) {
            Ok(items) => items,
            Err(execution) => return execution,
        };
        let generation = self.state.steps[at].generation;
        let children = match self.branches(&step.name, items.len(), generation).await {
            Ok(children) => children,
            Err(execution) => return execution,
        };
        let failed =
            children.iter().flatten().any(|c| matches!(c.status, SagaStatus::Compensated | SagaStatus::Failed));
        let running: Vec<&SagaRecord> = children.iter().flatten().filter(|c| !c.status.is_terminal()).collect();
        let wait = Execution::Wait {
            kind: WaitKind::Branches { total: items.len() as u32 },
            until_ms: Some(self.shared.clock.now_ms().saturating_add(CHILD_RECHECK_MS)),
        };
        // A parallel group stops at its first failure; a for_each runs every item (each with its
        // own retries) and names all that failed.
        let fail_fast = matches!(group.fan_out, FanOut::Parallel(_));
        let all_started = children.iter().all(Option::is_some);
        if failed && !fail_fast && running.is_empty() && all_started {
            return Execution::Outcome(Outcome::Failed {
                kind: saga_core::FailureKind::Ambiguous,
                message: format!("for_each {}: items failed: {}", step.name, failures(&children, &items)),
            });
        }
        if failed && fail_fast {
            // Stop the others; the group fails once none runs (each undoes itself).
            for child in &running {
                if let Err(execution) = self.cancel_child(child).await {
                    return execution;
                }
            }
            if !running.is_empty() {
                return wait;
            }
            return Execution::Outcome(Outcome::Failed {
                kind: saga_core::FailureKind::Ambiguous,
                message: format!("group {}: branches failed: {}", step.name, failures(&children, &items)),
            });
        }
        if children.iter().all(|c| c.as_ref().is_some_and(|c| c.status == SagaStatus::Completed)) {
            return Execution::Outcome(Outcome::Succeeded(group_output(group, &children, &items)));
        }
        let room = (group.concurrency as usize).saturating_sub(running.len());
        let not_started: Vec<usize> =
            children.iter().enumerate().filter(|(_, c)| c.is_none()).map(|(index, _)| index).take(room).collect();
        for index in not_started {
            let key = generation_key(&branch_key(&step.name, index), generation);
            if let Err(execution) = self.start_branch(at, step, (index, &key), items[index].clone()).await {
                return execution;
            }
        }
        wait
    }

    /// Creates branch `index` (`branch_started` goes with the next commit).
    async fn start_branch(
        &mut self,
        at: usize,
        step: &StepDefinition,
        (index, key): (usize, &str),
        item: Option<Value>,
    ) -> Result<(), Execution> {
        let record = &self.claimed.record;
        let Some(definition) = self.definition.branch(at, index) else {
            return Err(definitely(format!("group {} has no branch {index}", step.name)));
        };
        let link = self.child_link(
            &step.name,
            Some(BranchLink { group: at, index, item: item.clone(), outputs: self.step_outputs() }),
        );
        if link.depth > saga_core::CHILD_DEPTH_MAX {
            return Err(definitely(format!(
                "child sagas nest at most {} deep; this branch would be at depth {}",
                saga_core::CHILD_DEPTH_MAX,
                link.depth
            )));
        }
        let id = child_saga_id(record.id, key);
        let now_ms = self.shared.clock.now_ms();
        let mut state = saga_core::SagaState::started(&definition, now_ms);
        state.parent = Some(link);
        let params = SagaCreate {
            id,
            tenant_id: record.tenant_id.clone(),
            priority: record.priority,
            idempotency_key: Some(child_idempotency_key(record.id, key)),
            retention_ms: definition.retention_ms.and_then(|ms| i64::try_from(ms).ok()),
            ..SagaCreate::new(
                &saga_core::branch_definition_name(&record.definition, &step.name),
                record.version,
                record.input.clone(),
                state,
                now_ms,
            )
        };
        match saga_store::creates::create_one(self.shared.store.as_ref(), params).await {
            Ok(SagaCreated::Created(_)) => {
                self.pending.push(saga_core::HistoryEvent::new(
                    "branch_started",
                    Some(&step.name),
                    None,
                    json!({"index": index, "item": item, "child_saga_id": id}),
                    now_ms,
                ));
                Ok(())
            }
            // Started meanwhile by another driver: it is there.
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, child = %id, "starting a branch failed");
                Err(Execution::Stop)
            }
        }
    }

    /// A group's compensation: branches never started get tombstones, running ones are
    /// cancelled and waited for, then every completed one is compensated, newest first, one at a
    /// time. A `FAILED` branch (or one past a pivot) cannot be undone from here.
    pub(super) async fn compensate_branches(
        &mut self,
        at: usize,
        step: &StepDefinition,
        group: &GroupAction,
    ) -> Execution {
        // A for_each whose items no longer render never rendered: nothing was started.
        let count = self.items(group).map_or(0, |items| items.len());
        let generation = self.state.steps[at].generation;
        let mut children = match self.branches(&step.name, count, generation).await {
            Ok(children) => children,
            Err(execution) => return execution,
        };
        for (index, slot) in children.iter_mut().enumerate().filter(|(_, c)| c.is_none()) {
            let Some(definition) = self.definition.branch(at, index) else { continue };
            let link = self.child_link(
                &step.name,
                Some(BranchLink { group: at, index, item: None, outputs: serde_json::Map::new() }),
            );
            let record = &self.claimed.record;
            let key = generation_key(&branch_key(&step.name, index), generation);
            let id = child_saga_id(record.id, &key);
            let branch_name = saga_core::branch_definition_name(&record.definition, &step.name);
            let place = (branch_name.as_str(), record.version);
            let key = child_idempotency_key(record.id, &key);
            match self.place_tombstone(id, &key, place, &definition, link).await {
                Ok(child) => *slot = Some(child),
                Err(execution) => return execution,
            }
        }
        let now_ms = self.shared.clock.now_ms();
        let mut waiting_for = None;
        for child in children.iter().flatten().filter(|c| !c.status.is_terminal()) {
            waiting_for.get_or_insert(child.id);
            if let Err(execution) = self.cancel_child(child).await {
                return execution;
            }
        }
        let until_ms = now_ms.saturating_add(CHILD_RECHECK_MS);
        if let Some(saga_id) = waiting_for {
            return Execution::AwaitChild { saga_id, until_ms };
        }
        if let Some(failed) = children.iter().flatten().find(|c| c.status == SagaStatus::Failed) {
            return definitely(format!(
                "branch saga {} is FAILED: an operator must retry it before group {} can be compensated",
                failed.id, step.name
            ));
        }
        let newest = children
            .iter()
            .flatten()
            .filter(|c| c.status == SagaStatus::Completed)
            .max_by_key(|c| (c.completed_at_ms, c.id));
        match newest {
            Some(child) => match self.compensate_completed_child(child).await {
                Ok(()) => Execution::AwaitChild { saga_id: child.id, until_ms },
                Err(execution) => execution,
            },
            None => {
                let ids: Vec<Uuid> = children.iter().flatten().map(|c| c.id).collect();
                Execution::Outcome(Outcome::Succeeded(json!({"compensated": ids})))
            }
        }
    }
}

/// A group's output once every branch completed: a `parallel`'s `{steps: {<step>: <output>},
/// saga_ids}` (its steps' outputs by name, as templates see them), a `for_each`'s
/// `{items: [{index, item, saga_id, output}]}`.
fn group_output(group: &GroupAction, children: &[Option<SagaRecord>], items: &Items) -> Value {
    let done = children.iter().flatten();
    match group.fan_out {
        FanOut::Parallel(_) => {
            let mut steps = serde_json::Map::new();
            for child in done.clone() {
                if let Some(Value::Object(outputs)) = child.state.output() {
                    steps.extend(outputs);
                }
            }
            json!({"steps": steps, "saga_ids": done.map(|c| c.id).collect::<Vec<_>>()})
        }
        FanOut::ForEach { .. } => {
            let items: Vec<Value> = done
                .enumerate()
                .map(|(index, child)| {
                    json!({"index": index, "item": items.get(index).cloned().flatten(), "saga_id": child.id,
                           "output": child.state.output()})
                })
                .collect();
            json!({ "items": items })
        }
    }
}
