//! Pure saga semantics: the definition model and its validation, templates, retry backoff,
//! the saga/step state machine, and which sagas under way may move to a new version.
//!
//! This crate owns *what a saga means*. It performs no I/O, reads no clock and draws no random
//! numbers: time arrives as `now_ms` parameters and randomness as a `jitter_sample` in `[0, 1)`,
//! so the runtime, the tests and a simulator all drive it the same way.

pub mod backoff;
pub mod bugs;
pub mod definition;
pub mod duration;
pub mod machine;
pub mod template;
pub mod tenant;
pub mod text;
pub mod upgrade;
pub mod validate;

pub use backoff::retry_delay_ms;
pub use definition::{
    Action, BuiltinAction, ChildSagaAction, Concurrency, Definition, FanOut, GroupAction, GrpcAction, HttpAction,
    OnFailure, OnTimeout, RetryPolicy, SignalAction, SleepAction, StepDefinition, BRANCHES_MAX, FOR_EACH_ITEMS_MAX,
    GROUP_CONCURRENCY_MAX,
};
pub use machine::{
    Attempt, BranchLink, FailureKind, HistoryEvent, Next, Outcome, ParentLink, Phase, SagaError, SagaState, SagaStatus,
    StepState, StepStatus, Transition, Wait, WaitKind,
};
pub use validate::{parse_document, validate_definition, DocumentFormat, FieldError, ParseError};

/// Names of definitions and of the path segment in `PUT /v1/definitions/{name}`.
pub const DEFINITION_NAME_PATTERN: &str = r"^[a-z][a-z0-9_.-]{0,99}$";
/// Step names: usable as `steps.<name>` in templates.
pub const STEP_NAME_PATTERN: &str = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$";
/// The most steps one definition may have.
pub const STEPS_MAX: usize = 100;
/// The most attempts a retry policy may ask for.
pub const RETRY_ATTEMPTS_MAX: u32 = 1000;

/// Definitions named so are the built-in tenant sagas: only the tenant lifecycle starts them
/// (never the API's `POST /v1/sagas`, never a child saga step).
pub const TENANT_SAGA_PREFIX: &str = "tenant.";
/// How deep child sagas may nest: a saga at this depth cannot start another (its saga step fails
/// definitely), so a definition that starts itself ends instead of running away.
pub const CHILD_DEPTH_MAX: u32 = 8;

/// The definition name a branch of group `group` of `definition` runs under (`order#setup`): not
/// a name a definition can have, so lists and bulk actions by definition never take a branch for
/// a saga of its parent's definition.
pub fn branch_definition_name(definition: &str, group: &str) -> String {
    format!("{definition}#{group}")
}

/// The definition a saga's definition name refers to: itself, or a branch's parent definition.
pub fn base_definition_name(name: &str) -> &str {
    name.split('#').next().unwrap_or(name)
}

/// True when `name` is a valid definition name.
pub fn is_valid_definition_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 100 || !bytes[0].is_ascii_lowercase() {
        return false;
    }
    bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
}

/// True when `name` is a valid step name.
pub fn is_valid_step_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 64 {
        return false;
    }
    (bytes[0].is_ascii_alphabetic() || bytes[0] == b'_')
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
}
