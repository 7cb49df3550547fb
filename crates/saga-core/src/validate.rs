//! Parsing definition documents (JSON or YAML) and validating them into a [`Definition`].
//!
//! Validation walks the parsed JSON tree and reports *every* problem with a JSON Pointer to the
//! offending field, so an operator fixes a definition in one round trip.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value};

use crate::definition::{
    Action, BuiltinAction, ChildSagaAction, Concurrency, Definition, FanOut, GroupAction, GrpcAction, HttpAction,
    OnFailure, OnTimeout, RetryPolicy, SignalAction, SleepAction, StepDefinition, BRANCHES_MAX,
    FOR_EACH_CONCURRENCY_DEFAULT, GROUP_CONCURRENCY_MAX, STEP_TIMEOUT_DEFAULT_MS,
};
use crate::{duration, is_valid_definition_name, is_valid_step_name, template, RETRY_ATTEMPTS_MAX, STEPS_MAX};

/// The wire format of a definition document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocumentFormat {
    Json,
    Yaml,
}

/// A document that is not well-formed JSON or YAML.
#[derive(Debug, thiserror::Error)]
#[error("malformed {format} document: {message}")]
pub struct ParseError {
    pub format: &'static str,
    pub message: String,
}

/// One validation problem: where (JSON Pointer) and what.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Parses a document into a JSON tree.
pub fn parse_document(bytes: &[u8], format: DocumentFormat) -> Result<Value, ParseError> {
    match format {
        DocumentFormat::Json => {
            serde_json::from_slice(bytes).map_err(|e| ParseError { format: "JSON", message: e.to_string() })
        }
        DocumentFormat::Yaml => {
            let value: Value =
                serde_norway::from_slice(bytes).map_err(|e| ParseError { format: "YAML", message: e.to_string() })?;
            Ok(value)
        }
    }
}

/// Validates `document` as the definition called `name`. `builtins` lists the names of the
/// native steps this instance knows.
/// The shortest `retention:` a definition may set.
pub const RETENTION_MIN_MS: u64 = 1_000;

pub fn validate_definition(name: &str, document: &Value, builtins: &[&str]) -> Result<Definition, Vec<FieldError>> {
    let mut checker = Checker { errors: Vec::new(), builtins, in_group: false };
    let definition = checker.definition(name, document);
    match definition {
        Some(definition) if checker.errors.is_empty() => Ok(definition),
        _ => {
            if checker.errors.is_empty() {
                checker.error("", "invalid definition");
            }
            Err(checker.errors)
        }
    }
}

struct Checker<'a> {
    errors: Vec<FieldError>,
    builtins: &'a [&'a str],
    /// Checking the steps of a group's branch (groups do not nest, pivots stay outside).
    in_group: bool,
}

fn pointer(base: &str, key: &str) -> String {
    let escaped = key.replace('~', "~0").replace('/', "~1");
    format!("{base}/{escaped}")
}

struct Defaults {
    timeout_ms: u64,
    retry: RetryPolicy,
    compensation_retry: RetryPolicy,
}

impl Checker<'_> {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(FieldError { path: path.to_string(), message: message.into() });
    }

    fn object<'v>(&mut self, path: &str, value: &'v Value) -> Option<&'v Map<String, Value>> {
        match value {
            Value::Object(map) => Some(map),
            _ => {
                self.error(path, "must be an object");
                None
            }
        }
    }

    fn unknown_keys(&mut self, path: &str, map: &Map<String, Value>, known: &[&str]) {
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                self.error(&pointer(path, key), format!("unknown field; expected one of: {}", known.join(", ")));
            }
        }
    }

    fn string<'v>(&mut self, path: &str, value: &'v Value) -> Option<&'v str> {
        match value {
            Value::String(s) => Some(s),
            _ => {
                self.error(path, "must be a string");
                None
            }
        }
    }

    fn duration(&mut self, path: &str, value: &Value) -> Option<u64> {
        let text = self.string(path, value)?;
        match duration::parse_ms(text) {
            Ok(0) => {
                self.error(path, "must be longer than zero");
                None
            }
            Ok(ms) if ms > duration::DURATION_MAX_MS => {
                self.error(path, format!("must be at most {}", duration::format_ms(duration::DURATION_MAX_MS)));
                None
            }
            Ok(ms) => Some(ms),
            Err(e) => {
                self.error(path, format!("invalid duration {text:?}: {e} (examples: 250ms, 5s, 2m)"));
                None
            }
        }
    }

    fn template_tree(&mut self, path: &str, value: &Value) {
        match value {
            Value::String(s) => {
                if let Err(e) = template::check(s) {
                    self.error(path, format!("template does not compile: {e}"));
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.template_tree(&format!("{path}/{i}"), item);
                }
            }
            Value::Object(map) => {
                for (k, v) in map {
                    self.template_tree(&pointer(path, k), v);
                }
            }
            _ => {}
        }
    }

    fn definition(&mut self, name: &str, document: &Value) -> Option<Definition> {
        let root = self.object("", document)?;
        self.unknown_keys(
            "",
            root,
            &["name", "description", "timeout", "on_timeout", "defaults", "concurrency", "retention", "steps"],
        );
        if !is_valid_definition_name(name) {
            self.error("/name", format!("definition name {name:?} must match {}", crate::DEFINITION_NAME_PATTERN));
        }
        if let Some(body_name) = root.get("name") {
            if let Some(body_name) = self.string("/name", body_name) {
                if body_name != name {
                    self.error("/name", format!("{body_name:?} does not match the name in the path ({name:?})"));
                }
            }
        }
        if let Some(description) = root.get("description") {
            self.string("/description", description);
        }
        let timeout_ms = root.get("timeout").and_then(|v| self.duration("/timeout", v));
        let on_timeout = match root.get("on_timeout") {
            None => OnTimeout::Compensate,
            Some(v) => match self.string("/on_timeout", v) {
                Some("compensate") => OnTimeout::Compensate,
                Some("fail") => OnTimeout::Fail,
                Some(other) => {
                    self.error("/on_timeout", format!("{other:?} is not one of: compensate, fail"));
                    OnTimeout::Compensate
                }
                None => OnTimeout::Compensate,
            },
        };
        let defaults = self.defaults(root.get("defaults"));
        let concurrency = root.get("concurrency").and_then(|v| self.concurrency(v));
        let retention_ms = root.get("retention").and_then(|v| self.duration("/retention", v)).filter(|ms| {
            let long_enough = *ms >= RETENTION_MIN_MS;
            if !long_enough {
                self.error("/retention", "must be at least 1s");
            }
            long_enough
        });
        let steps = self.steps(root.get("steps"), &defaults);
        Some(Definition { name: name.to_string(), timeout_ms, on_timeout, concurrency, retention_ms, steps: steps? })
    }

    fn defaults(&mut self, value: Option<&Value>) -> Defaults {
        let mut defaults = Defaults {
            timeout_ms: STEP_TIMEOUT_DEFAULT_MS,
            retry: RetryPolicy::action_default(),
            compensation_retry: RetryPolicy::compensation_default(),
        };
        let Some(value) = value else { return defaults };
        let Some(map) = self.object("/defaults", value) else {
            return defaults;
        };
        self.unknown_keys("/defaults", map, &["timeout", "retry", "compensation_retry"]);
        if let Some(ms) = map.get("timeout").and_then(|v| self.duration("/defaults/timeout", v)) {
            defaults.timeout_ms = ms;
        }
        if let Some(v) = map.get("retry") {
            defaults.retry = self.retry("/defaults/retry", v, &defaults.retry);
        }
        if let Some(v) = map.get("compensation_retry") {
            defaults.compensation_retry = self.retry("/defaults/compensation_retry", v, &defaults.compensation_retry);
        }
        defaults
    }

    fn retry(&mut self, path: &str, value: &Value, base: &RetryPolicy) -> RetryPolicy {
        let mut policy = base.clone();
        let Some(map) = self.object(path, value) else {
            return policy;
        };
        self.unknown_keys(path, map, &["max_attempts", "initial_interval", "multiplier", "max_interval", "jitter"]);
        if let Some(v) = map.get("max_attempts") {
            let p = pointer(path, "max_attempts");
            match v.as_u64() {
                Some(n) if (1..=u64::from(RETRY_ATTEMPTS_MAX)).contains(&n) => policy.max_attempts = n as u32,
                _ => self.error(&p, format!("must be an integer from 1 to {RETRY_ATTEMPTS_MAX}")),
            }
        }
        if let Some(ms) = map.get("initial_interval").and_then(|v| self.duration(&pointer(path, "initial_interval"), v))
        {
            policy.initial_interval_ms = ms;
        }
        if let Some(ms) = map.get("max_interval").and_then(|v| self.duration(&pointer(path, "max_interval"), v)) {
            policy.max_interval_ms = ms;
        }
        if let Some(v) = map.get("multiplier") {
            match v.as_f64() {
                Some(m) if (1.0..=10.0).contains(&m) => policy.multiplier = m,
                _ => self.error(&pointer(path, "multiplier"), "must be a number from 1.0 to 10.0"),
            }
        }
        if let Some(v) = map.get("jitter") {
            match v.as_f64() {
                Some(j) if (0.0..=1.0).contains(&j) => policy.jitter = j,
                _ => self.error(&pointer(path, "jitter"), "must be a number from 0.0 to 1.0"),
            }
        }
        if policy.max_interval_ms < policy.initial_interval_ms {
            self.error(&pointer(path, "max_interval"), "must not be shorter than initial_interval");
        }
        policy
    }

    fn concurrency(&mut self, value: &Value) -> Option<Concurrency> {
        let map = self.object("/concurrency", value)?;
        self.unknown_keys("/concurrency", map, &["key", "limit"]);
        let key = match map.get("key") {
            Some(v) => self.string("/concurrency/key", v).map(str::to_string),
            None => {
                self.error("/concurrency/key", "is required");
                None
            }
        };
        if let Some(key) = &key {
            self.template_tree("/concurrency/key", &Value::String(key.clone()));
        }
        let limit = match map.get("limit").map(Value::as_u64) {
            Some(Some(n)) if (1..=10_000).contains(&n) => Some(n as u32),
            _ => {
                self.error("/concurrency/limit", "must be an integer from 1 to 10000");
                None
            }
        };
        Some(Concurrency { key: key?, limit: limit? })
    }

    fn steps(&mut self, value: Option<&Value>, defaults: &Defaults) -> Option<Vec<StepDefinition>> {
        let Some(value) = value else {
            self.error("/steps", "is required");
            return None;
        };
        let Value::Array(items) = value else {
            self.error("/steps", "must be an array of steps");
            return None;
        };
        if items.is_empty() {
            self.error("/steps", "must contain at least one step");
        }
        if items.len() > STEPS_MAX {
            self.error("/steps", format!("must contain at most {STEPS_MAX} steps"));
        }
        let mut seen = HashSet::new();
        let mut steps = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("/steps/{i}");
            let step = self.step_or_group(&path, item, defaults, i);
            if let Some(step) = step {
                // Names are unique across the whole definition, branches included: outputs are
                // addressed by step name.
                for name in std::iter::once(&step.name).chain(branch_step_names(&step)) {
                    if !seen.insert(name.clone()) {
                        self.error(&format!("{path}/name"), format!("duplicate step name {name:?}"));
                    }
                }
                steps.push(step);
            }
        }
        (steps.len() == items.len()).then_some(steps)
    }

    /// A step's `name`: required, and a valid step name.
    fn step_name(&mut self, path: &str, value: Option<&Value>) -> Option<String> {
        let name_path = pointer(path, "name");
        let Some(value) = value else {
            self.error(&name_path, "is required");
            return None;
        };
        match self.string(&name_path, value) {
            Some(n) if is_valid_step_name(n) => Some(n.to_string()),
            Some(n) => {
                self.error(&name_path, format!("step name {n:?} must match {}", crate::STEP_NAME_PATTERN));
                None
            }
            None => None,
        }
    }

    /// A step, or a `parallel` / `for_each` group in its place.
    fn step_or_group(
        &mut self,
        path: &str,
        value: &Value,
        defaults: &Defaults,
        index: usize,
    ) -> Option<StepDefinition> {
        let is_group = value.get("parallel").is_some() || value.get("for_each").is_some();
        if !is_group {
            return self.step(path, value, defaults);
        }
        if self.in_group {
            self.error(path, "groups do not nest: start a child saga (action: saga) in the branch instead");
            return None;
        }
        self.group(path, value, defaults, index)
    }

    /// `{parallel: [[step, …], …]}` or `{name, for_each: "<template>", step | steps}`, with
    /// optional `concurrency` and `when`.
    fn group(&mut self, path: &str, value: &Value, defaults: &Defaults, index: usize) -> Option<StepDefinition> {
        let map = self.object(path, value)?;
        self.unknown_keys(
            path,
            map,
            &["name", "description", "when", "concurrency", "on_failure", "parallel", "for_each", "step", "steps"],
        );
        let parallel = map.contains_key("parallel");
        if parallel && map.contains_key("for_each") {
            self.error(path, "must be either parallel or for_each, not both");
            return None;
        }
        let name = match map.get("name") {
            None if parallel => Some(format!("parallel_{index}")),
            name => self.step_name(path, name),
        };
        let when = map.get("when").and_then(|v| {
            self.template_tree(&pointer(path, "when"), v);
            self.string(&pointer(path, "when"), v).map(str::to_string)
        });
        self.in_group = true;
        let fan_out = match parallel {
            true => self.branches(&pointer(path, "parallel"), &map["parallel"], defaults),
            false => self.for_each(path, map, defaults),
        };
        self.in_group = false;
        let fan_out = fan_out?;
        let concurrency = match map.get("concurrency") {
            None => match &fan_out {
                FanOut::Parallel(branches) => branches.len() as u32,
                FanOut::ForEach { .. } => FOR_EACH_CONCURRENCY_DEFAULT,
            },
            Some(v) => match v.as_u64() {
                Some(n) if (1..=u64::from(GROUP_CONCURRENCY_MAX)).contains(&n) => n as u32,
                _ => {
                    self.error(
                        &pointer(path, "concurrency"),
                        format!("must be an integer from 1 to {GROUP_CONCURRENCY_MAX}"),
                    );
                    return None;
                }
            },
        };
        let on_failure = match map.get("on_failure").map(|v| (v, v.as_str())) {
            None => OnFailure::Compensate,
            Some((_, Some("compensate"))) => OnFailure::Compensate,
            Some((_, Some("fail"))) => OnFailure::Fail,
            Some((v, _)) => {
                self.error(&pointer(path, "on_failure"), format!("{v} is not one of: compensate, fail"));
                return None;
            }
        };
        Some(StepDefinition {
            name: name?,
            action: Action::Group(GroupAction { fan_out, concurrency }),
            compensation: None,
            timeout_ms: defaults.timeout_ms,
            retry: defaults.retry.clone(),
            compensation_retry: defaults.compensation_retry.clone(),
            pivot: false,
            on_failure,
            heartbeat_timeout_ms: None,
            when,
        })
    }

    /// `parallel: [[step, …], …]`: 2 to `BRANCHES_MAX` branches, none empty.
    fn branches(&mut self, path: &str, value: &Value, defaults: &Defaults) -> Option<FanOut> {
        let Value::Array(lists) = value else {
            self.error(path, "must be a list of branches, each a list of steps");
            return None;
        };
        if lists.len() < 2 || lists.len() > BRANCHES_MAX {
            self.error(path, format!("must have from 2 to {BRANCHES_MAX} branches"));
            return None;
        }
        let mut branches = Vec::with_capacity(lists.len());
        for (i, list) in lists.iter().enumerate() {
            branches.push(self.branch_steps(&format!("{path}/{i}"), list, defaults));
        }
        branches.into_iter().collect::<Option<Vec<_>>>().map(FanOut::Parallel)
    }

    /// `for_each: "<template>"` with `step: {…}` or `steps: […]`.
    fn for_each(&mut self, path: &str, map: &Map<String, Value>, defaults: &Defaults) -> Option<FanOut> {
        let items_path = pointer(path, "for_each");
        let items = self.string(&items_path, &map["for_each"]).map(str::to_string);
        if let Some(text) = &items {
            if !template::has_syntax(text) {
                self.error(&items_path, "must be a template that renders a list, e.g. \"{{ input.services }}\"");
            }
            self.template_tree(&items_path, &map["for_each"]);
        }
        let steps = match (map.get("step"), map.get("steps")) {
            (Some(step), None) => {
                self.branch_steps(&pointer(path, "step"), &Value::Array(vec![step.clone()]), defaults)
            }
            (None, Some(steps)) => self.branch_steps(&pointer(path, "steps"), steps, defaults),
            _ => {
                self.error(path, "must set exactly one of: step (one step), steps (a list run in order) for each item");
                None
            }
        };
        Some(FanOut::ForEach { items: items?, steps: steps? })
    }

    /// The steps of one branch: plain steps, no pivot.
    fn branch_steps(&mut self, path: &str, value: &Value, defaults: &Defaults) -> Option<Vec<StepDefinition>> {
        let Value::Array(items) = value else {
            self.error(path, "must be a list of steps");
            return None;
        };
        if items.is_empty() || items.len() > STEPS_MAX {
            self.error(path, format!("must contain from 1 to {STEPS_MAX} steps"));
            return None;
        }
        let mut steps = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            // A single `step:` is checked at its own path.
            let step_path = if path.ends_with("/step") { path.to_string() } else { format!("{path}/{i}") };
            let step = self.step_or_group(&step_path, item, defaults, i)?;
            if step.pivot {
                self.error(
                    &pointer(&step_path, "pivot"),
                    "a step in a group cannot be a pivot: its branch is undone whole",
                );
            }
            steps.push(step);
        }
        Some(steps)
    }

    fn step(&mut self, path: &str, value: &Value, defaults: &Defaults) -> Option<StepDefinition> {
        let map = self.object(path, value)?;
        self.unknown_keys(
            path,
            map,
            &[
                "name",
                "description",
                "action",
                "compensation",
                "timeout",
                "retry",
                "compensation_retry",
                "pivot",
                "on_failure",
                "heartbeat_timeout",
                "when",
            ],
        );
        let name = self.step_name(path, map.get("name"));
        let action = match map.get("action") {
            None => {
                self.error(&pointer(path, "action"), "is required");
                None
            }
            Some(v) => self.action(&pointer(path, "action"), v, false),
        };
        let compensation = map
            .get("compensation")
            .filter(|v| !v.is_null())
            .map(|v| self.action(&pointer(path, "compensation"), v, true));
        let timeout_ms =
            map.get("timeout").and_then(|v| self.duration(&pointer(path, "timeout"), v)).unwrap_or(defaults.timeout_ms);
        let heartbeat_timeout_ms =
            map.get("heartbeat_timeout").and_then(|v| self.duration(&pointer(path, "heartbeat_timeout"), v));
        let retry = match map.get("retry") {
            Some(v) => self.retry(&pointer(path, "retry"), v, &defaults.retry),
            None => defaults.retry.clone(),
        };
        let compensation_retry = match map.get("compensation_retry") {
            Some(v) => self.retry(&pointer(path, "compensation_retry"), v, &defaults.compensation_retry),
            None => defaults.compensation_retry.clone(),
        };
        let pivot = match map.get("pivot") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.error(&pointer(path, "pivot"), "must be true or false");
                false
            }
        };
        let on_failure = match map.get("on_failure") {
            None => OnFailure::Compensate,
            Some(v) => match self.string(&pointer(path, "on_failure"), v) {
                Some("compensate") => OnFailure::Compensate,
                Some("fail") => OnFailure::Fail,
                Some(other) => {
                    self.error(&pointer(path, "on_failure"), format!("{other:?} is not one of: compensate, fail"));
                    OnFailure::Compensate
                }
                None => OnFailure::Compensate,
            },
        };
        let when = match map.get("when") {
            None => None,
            Some(v) => {
                let text = self.string(&pointer(path, "when"), v).map(str::to_string);
                self.template_tree(&pointer(path, "when"), v);
                text
            }
        };
        let compensation = match compensation {
            Some(Some(action)) => Some(action),
            Some(None) => return None,
            None => None,
        };
        Some(StepDefinition {
            name: name?,
            action: action?,
            compensation,
            timeout_ms,
            retry,
            compensation_retry,
            pivot,
            on_failure,
            heartbeat_timeout_ms,
            when,
        })
    }

    fn action(&mut self, path: &str, value: &Value, is_compensation: bool) -> Option<Action> {
        let map = self.object(path, value)?;
        let kinds: Vec<&str> = ["http", "grpc", "builtin", "signal", "sleep", "saga"]
            .into_iter()
            .filter(|k| map.contains_key(*k))
            .collect();
        if kinds.len() != 1 {
            self.error(path, "must name exactly one action kind: http, grpc, builtin, signal, sleep or saga");
            return None;
        }
        match kinds[0] {
            "http" => {
                self.unknown_keys(path, map, &["http"]);
                self.http(&pointer(path, "http"), &map["http"]).map(Action::Http)
            }
            "grpc" => {
                self.unknown_keys(path, map, &["grpc"]);
                self.grpc(&pointer(path, "grpc"), &map["grpc"]).map(Action::Grpc)
            }
            "builtin" => {
                self.unknown_keys(path, map, &["builtin", "input"]);
                self.builtin(path, map).map(Action::Builtin)
            }
            "sleep" => {
                self.unknown_keys(path, map, &["sleep"]);
                if is_compensation {
                    self.error(&pointer(path, "sleep"), "a compensation cannot sleep: it runs as soon as it can");
                    return None;
                }
                self.sleep(&pointer(path, "sleep"), &map["sleep"]).map(Action::Sleep)
            }
            "saga" => {
                self.unknown_keys(path, map, &["saga"]);
                if is_compensation {
                    self.error(
                        &pointer(path, "saga"),
                        "a compensation cannot start a child saga (a step with action saga compensates its child itself)",
                    );
                    return None;
                }
                self.child_saga(&pointer(path, "saga"), &map["saga"]).map(Action::Saga)
            }
            _ => {
                self.unknown_keys(path, map, &["signal"]);
                if is_compensation {
                    self.error(&pointer(path, "signal"), "a compensation cannot wait for a signal");
                    return None;
                }
                self.signal(&pointer(path, "signal"), &map["signal"]).map(Action::Signal)
            }
        }
    }

    fn http(&mut self, path: &str, value: &Value) -> Option<HttpAction> {
        let map = self.object(path, value)?;
        self.unknown_keys(path, map, &["method", "url", "headers", "body", "async", "follow_redirects"]);
        let method = match map.get("method") {
            None => Some("POST".to_string()),
            Some(v) => match self.string(&pointer(path, "method"), v) {
                Some(m) => {
                    let upper = m.to_ascii_uppercase();
                    if ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&upper.as_str()) {
                        Some(upper)
                    } else {
                        self.error(
                            &pointer(path, "method"),
                            format!("{m:?} is not one of: GET, POST, PUT, PATCH, DELETE"),
                        );
                        None
                    }
                }
                None => None,
            },
        };
        let url = match map.get("url") {
            None => {
                self.error(&pointer(path, "url"), "is required");
                None
            }
            Some(v) => self.string(&pointer(path, "url"), v).map(str::to_string),
        };
        if let Some(url) = &url {
            self.template_tree(&pointer(path, "url"), &Value::String(url.clone()));
        }
        let mut headers = BTreeMap::new();
        if let Some(v) = map.get("headers") {
            let headers_path = pointer(path, "headers");
            if let Some(header_map) = self.object(&headers_path, v) {
                for (k, v) in header_map {
                    let p = pointer(&headers_path, k);
                    if let Some(text) = self.string(&p, v) {
                        self.template_tree(&p, v);
                        headers.insert(k.clone(), text.to_string());
                    }
                }
            }
        }
        let body = map.get("body").cloned();
        if let Some(body) = &body {
            self.template_tree(&pointer(path, "body"), body);
        }
        let is_async = self.flag(path, map, "async");
        let follow_redirects = self.flag(path, map, "follow_redirects");
        Some(HttpAction { method: method?, url: url?, headers, body, is_async, follow_redirects })
    }

    /// An optional boolean field, false when absent.
    fn flag(&mut self, path: &str, map: &serde_json::Map<String, Value>, key: &str) -> bool {
        match map.get(key) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.error(&pointer(path, key), "must be true or false");
                false
            }
        }
    }

    fn grpc(&mut self, path: &str, value: &Value) -> Option<GrpcAction> {
        let map = self.object(path, value)?;
        self.unknown_keys(path, map, &["endpoint", "service", "input"]);
        let required = |checker: &mut Self, key: &str| match map.get(key) {
            None => {
                checker.error(&pointer(path, key), "is required");
                None
            }
            Some(v) => {
                let text = checker.string(&pointer(path, key), v).map(str::to_string);
                checker.template_tree(&pointer(path, key), v);
                text
            }
        };
        let endpoint = required(self, "endpoint");
        let service = required(self, "service");
        let input = map.get("input").cloned();
        if let Some(input) = &input {
            self.template_tree(&pointer(path, "input"), input);
        }
        Some(GrpcAction { endpoint: endpoint?, service: service?, input })
    }

    fn builtin(&mut self, path: &str, map: &Map<String, Value>) -> Option<BuiltinAction> {
        let name_path = pointer(path, "builtin");
        let name = self.string(&name_path, &map["builtin"])?.to_string();
        if !self.builtins.contains(&name.as_str()) {
            self.error(&name_path, format!("unknown builtin {name:?}; known: {}", self.builtins.join(", ")));
        }
        let input = map.get("input").cloned();
        if let Some(input) = &input {
            self.template_tree(&pointer(path, "input"), input);
        }
        Some(BuiltinAction { name, input })
    }

    /// `{duration: 30d}` or `{until: "<RFC 3339 or template>"}`, exactly one.
    fn sleep(&mut self, path: &str, value: &Value) -> Option<SleepAction> {
        let map = self.object(path, value)?;
        self.unknown_keys(path, map, &["duration", "until"]);
        match (map.get("duration"), map.get("until")) {
            (Some(v), None) => self.duration(&pointer(path, "duration"), v).map(SleepAction::Duration),
            (None, Some(v)) => {
                let until_path = pointer(path, "until");
                let text = self.string(&until_path, v)?.to_string();
                if template::has_syntax(&text) {
                    self.template_tree(&until_path, v);
                } else if let Err(e) = duration::parse_instant_ms(&text) {
                    self.error(&until_path, e);
                }
                Some(SleepAction::Until(text))
            }
            _ => {
                self.error(
                    path,
                    "must set exactly one of: duration (e.g. 30d), until (an RFC 3339 time or a template)",
                );
                None
            }
        }
    }

    /// `{definition, version?, input?}`.
    fn child_saga(&mut self, path: &str, value: &Value) -> Option<ChildSagaAction> {
        let map = self.object(path, value)?;
        self.unknown_keys(path, map, &["definition", "version", "input"]);
        let definition_path = pointer(path, "definition");
        let definition = match map.get("definition") {
            None => {
                self.error(&definition_path, "is required");
                None
            }
            Some(v) => match self.string(&definition_path, v) {
                Some(n) if n.starts_with(crate::TENANT_SAGA_PREFIX) => {
                    self.error(
                        &definition_path,
                        format!("{n:?} is a tenant saga: only the tenant lifecycle starts those, never a step"),
                    );
                    None
                }
                Some(n) if is_valid_definition_name(n) => Some(n.to_string()),
                Some(n) => {
                    self.error(
                        &definition_path,
                        format!("definition name {n:?} must match {}", crate::DEFINITION_NAME_PATTERN),
                    );
                    None
                }
                None => None,
            },
        };
        let version = match map.get("version") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(n) if (1..=i64::from(i32::MAX)).contains(&n) => Some(n as i32),
                _ => {
                    self.error(&pointer(path, "version"), "must be a positive integer (or left out: the latest)");
                    None
                }
            },
        };
        let input = map.get("input").cloned();
        if let Some(input) = &input {
            self.template_tree(&pointer(path, "input"), input);
        }
        Some(ChildSagaAction { definition: definition?, version, input })
    }

    fn signal(&mut self, path: &str, value: &Value) -> Option<SignalAction> {
        let map = self.object(path, value)?;
        self.unknown_keys(path, map, &["name", "timeout"]);
        let name = match map.get("name") {
            None => {
                self.error(&pointer(path, "name"), "is required");
                None
            }
            Some(v) => match self.string(&pointer(path, "name"), v) {
                Some(n) if is_valid_definition_name(n) => Some(n.to_string()),
                Some(n) => {
                    self.error(
                        &pointer(path, "name"),
                        format!("signal name {n:?} must match {}", crate::DEFINITION_NAME_PATTERN),
                    );
                    None
                }
                None => None,
            },
        };
        let timeout_ms = map.get("timeout").and_then(|v| self.duration(&pointer(path, "timeout"), v));
        Some(SignalAction { name: name?, timeout_ms })
    }
}

/// The names of the steps inside a group's branches (none for a plain step).
fn branch_step_names(step: &StepDefinition) -> Vec<&String> {
    match &step.action {
        Action::Group(group) => match &group.fan_out {
            FanOut::Parallel(branches) => branches.iter().flatten().map(|s| &s.name).collect(),
            FanOut::ForEach { steps, .. } => steps.iter().map(|s| &s.name).collect(),
        },
        _ => Vec::new(),
    }
}
