//! The typed saga definition, as produced by [`crate::validate_definition`].
//!
//! Durations are whole milliseconds. Values that hold templates (`url`, `body`, `input`, …) are
//! kept as JSON and rendered per attempt by [`crate::template`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A validated saga definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub name: String,
    /// Deadline for the whole saga.
    pub timeout_ms: Option<u64>,
    pub on_timeout: OnTimeout,
    pub concurrency: Option<Concurrency>,
    /// How long a finished saga of this definition is kept (`retention:`); None: the
    /// deployment's `SAGAPLANE_RETENTION`.
    pub retention_ms: Option<u64>,
    pub steps: Vec<StepDefinition>,
}

/// The most branches a `parallel` group has.
pub const BRANCHES_MAX: usize = 20;
/// The most items a `for_each` runs (a longer list fails the step definitely).
pub const FOR_EACH_ITEMS_MAX: usize = 256;
/// The most branches or items of one group running at once (`concurrency:`).
pub const GROUP_CONCURRENCY_MAX: u32 = 100;
/// A `for_each` without `concurrency:` runs this many items at once.
pub const FOR_EACH_CONCURRENCY_DEFAULT: u32 = 10;

/// The longest rendered concurrency key.
pub const CONCURRENCY_KEY_MAX_CHARS: usize = 255;

impl Definition {
    /// The index of the step called `name`.
    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    /// `concurrency.key` rendered for one saga (`context`: its input, tenant and id), with the
    /// limit: None without a key; Err names what is wrong, as `concurrency.key: …`.
    pub fn concurrency_key(&self, context: &crate::template::TemplateContext) -> Result<Option<(String, u32)>, String> {
        let Some(concurrency) = &self.concurrency else {
            return Ok(None);
        };
        let key =
            crate::template::render_string(&concurrency.key, context).map_err(|e| format!("concurrency.key: {e}"))?;
        if key.chars().count() > CONCURRENCY_KEY_MAX_CHARS {
            return Err(format!("concurrency.key renders to more than {CONCURRENCY_KEY_MAX_CHARS} characters"));
        }
        Ok(Some((key, concurrency.limit)))
    }

    /// What branch `branch` of the group at step `step` runs, as a definition of its own: the
    /// branch's steps (a `for_each`'s steps for every item), with no deadline or concurrency key
    /// of its own (its parent's hold). None when there is no such group or branch.
    pub fn branch(&self, step: usize, branch: usize) -> Option<Definition> {
        let Action::Group(group) = &self.steps.get(step)?.action else { return None };
        let steps = match &group.fan_out {
            FanOut::Parallel(branches) => branches.get(branch)?.clone(),
            FanOut::ForEach { steps, .. } => steps.clone(),
        };
        Some(Definition {
            name: self.name.clone(),
            timeout_ms: None,
            on_timeout: OnTimeout::Compensate,
            concurrency: None,
            retention_ms: self.retention_ms,
            steps,
        })
    }
}

/// What happens when the saga deadline passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    Compensate,
    Fail,
}

/// What happens when a step fails for good (a definite failure, or its retries ran out).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Compensate what may have happened, in reverse order (the default).
    #[default]
    Compensate,
    /// Fail forward: the saga ends `FAILED` with nothing compensated, for an operator to fix the
    /// cause and `retry` from this step. A cancel or the saga deadline still compensates.
    Fail,
}

/// At most `limit` running sagas per rendered `key`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Concurrency {
    pub key: String,
    pub limit: u32,
}

/// One step: an action, an optional compensation, and their policies (defaults applied).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepDefinition {
    pub name: String,
    pub action: Action,
    pub compensation: Option<Action>,
    /// One attempt's limit.
    pub timeout_ms: u64,
    pub retry: RetryPolicy,
    pub compensation_retry: RetryPolicy,
    pub pivot: bool,
    /// What this step's own failure does to the saga.
    #[serde(default)]
    pub on_failure: OnFailure,
    pub heartbeat_timeout_ms: Option<u64>,
    /// A template: the step runs only when it renders truthy, and is skipped (`step_skipped`,
    /// nothing to compensate) when it renders `false`, empty or `0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

/// A retry policy with every field resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_interval_ms: u64,
    pub multiplier: f64,
    pub max_interval_ms: u64,
    /// Fraction in `[0, 1]`: each delay is scaled by a uniform factor in `[1 - jitter, 1 +
    /// jitter]`.
    pub jitter: f64,
}

impl RetryPolicy {
    /// The default for actions.
    pub fn action_default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_interval_ms: 1_000,
            multiplier: 2.0,
            max_interval_ms: 60_000,
            jitter: 0.1,
        }
    }

    /// The default for compensations: more patient, since they must eventually succeed.
    pub fn compensation_default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            initial_interval_ms: 1_000,
            multiplier: 2.0,
            max_interval_ms: 60_000,
            jitter: 0.1,
        }
    }
}

/// Default for one attempt's limit.
pub const STEP_TIMEOUT_DEFAULT_MS: u64 = 30_000;

/// What a step does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Http(HttpAction),
    Grpc(GrpcAction),
    Builtin(BuiltinAction),
    Signal(SignalAction),
    Sleep(SleepAction),
    Saga(ChildSagaAction),
    /// `parallel` or `for_each` in place of a step: branches run at once, each as a child saga.
    Group(GroupAction),
}

impl Action {
    /// The action kind as written in definitions.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Http(_) => "http",
            Action::Grpc(_) => "grpc",
            Action::Builtin(_) => "builtin",
            Action::Signal(_) => "signal",
            Action::Sleep(_) => "sleep",
            Action::Saga(_) => "saga",
            Action::Group(group) => match group.fan_out {
                FanOut::Parallel(_) => "parallel",
                FanOut::ForEach { .. } => "for_each",
            },
        }
    }
}

impl StepDefinition {
    /// Whether the step has something to undo: a compensation, or a child saga (compensating
    /// the step compensates the child). A step without is marked compensated with no I/O.
    pub fn compensates(&self) -> bool {
        self.compensation.is_some() || matches!(self.action, Action::Saga(_) | Action::Group(_))
    }

    /// What compensating the step runs: its compensation, or, for a child saga, the child again.
    pub fn compensation_action(&self) -> Option<&Action> {
        match (&self.compensation, &self.action) {
            (Some(action), _) => Some(action),
            (None, action @ (Action::Saga(_) | Action::Group(_))) => Some(action),
            (None, _) => None,
        }
    }
}

/// An HTTP request to a participant (docs/definitions.md, "The participant contract (HTTP)").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpAction {
    pub method: String,
    /// Template.
    pub url: String,
    /// Header values are templates.
    pub headers: BTreeMap<String, String>,
    /// Template tree.
    pub body: Option<Value>,
    pub is_async: bool,
    /// Follow redirects to the same origin (scheme, host, port); never to another.
    #[serde(default)]
    pub follow_redirects: bool,
}

/// A call to a gRPC participant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrpcAction {
    pub endpoint: String,
    pub service: String,
    pub input: Option<Value>,
}

/// A native step registered by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuiltinAction {
    pub name: String,
    /// Template tree.
    pub input: Option<Value>,
}

/// Wait for a named signal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalAction {
    pub name: String,
    pub timeout_ms: Option<u64>,
}

/// A durable timer: the saga is parked, with no worker held, until a moment — `duration` after
/// the step started, or `until` (an RFC 3339 time, or a template rendering one). It survives
/// restarts and takeovers; a cancel ends it at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SleepAction {
    Duration(u64),
    Until(String),
}

/// A child saga: started by the step's first attempt, with an id derived from the parent's id
/// and the step's name (so a retry, or a driver taking over, never starts a second); the saga
/// waits for it with no worker held, and its end is the step's outcome. Compensating the step
/// compensates the child; cancelling the parent cancels it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildSagaAction {
    pub definition: String,
    /// None: the latest version when the child is started.
    pub version: Option<i32>,
    /// Template tree: the child's input (None: `{}`).
    pub input: Option<Value>,
}

/// A group of steps in place of one (docs/definitions.md, "Parallel branches and for_each"): its
/// branches run at once, at most `concurrency` at a time, each as a child saga of the same
/// definition that runs the branch's steps in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupAction {
    pub fan_out: FanOut,
    pub concurrency: u32,
}

/// What a group runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FanOut {
    /// `parallel: [[step, …], …]`: one branch per list.
    Parallel(Vec<Vec<StepDefinition>>),
    /// `for_each: "<template>"`: one branch per item of the list it renders, each running
    /// `steps` with `{{ item }}` and `{{ index }}`.
    ForEach { items: String, steps: Vec<StepDefinition> },
}
