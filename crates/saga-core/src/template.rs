//! Templates in definitions (minijinja): `input`, `tenant_id`, `saga.id`,
//! `steps.<name>.output` and `vars.<NAME>`.
//!
//! A string that is exactly one expression (`"{{ input.count }}"`) renders to the expression's
//! native JSON value, so numbers and objects pass through unchanged; any other string with
//! template syntax renders to a string. Undefined names are errors, never silent empty strings,
//! and the error names the template, where it sits in the value, and the undefined name with
//! what to do about it (`vars.PAYMENTS is not set; start the server with SAGAPLANE_VAR_PAYMENTS`).

use std::sync::LazyLock;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Map, Value};

/// Everything a template may see.
#[derive(Clone, Debug, Default)]
pub struct TemplateContext {
    pub input: Value,
    pub tenant_id: Option<String>,
    pub saga_id: String,
    /// Step name → that step's output (only steps that produced one).
    pub step_outputs: Map<String, Value>,
    /// `SAGAPLANE_VAR_<NAME>` values.
    pub vars: Map<String, Value>,
    /// Names a branch sees at the top level: a `for_each` item's `item` and `index`.
    pub locals: Map<String, Value>,
}

impl TemplateContext {
    fn to_value(&self) -> Value {
        let steps: Map<String, Value> = self
            .step_outputs
            .iter()
            .map(|(name, output)| (name.clone(), serde_json::json!({ "output": output })))
            .collect();
        let mut value = serde_json::json!({
            "input": self.input,
            "tenant_id": self.tenant_id,
            "saga": { "id": self.saga_id },
            "steps": steps,
            "vars": self.vars,
        });
        if let Value::Object(map) = &mut value {
            for (name, local) in &self.locals {
                map.insert(name.clone(), local.clone());
            }
        }
        value
    }
}

/// A template that failed to compile or render.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct TemplateError {
    /// Where the failing string sits inside the rendered value (`/customer/id`), or empty.
    pub path: String,
    /// The failing template text, when one string failed.
    pub template: Option<String>,
    pub message: String,
}

impl TemplateError {
    fn new(message: impl Into<String>) -> Self {
        TemplateError { path: String::new(), template: None, message: message.into() }
    }

    fn in_template(mut self, template: &str) -> Self {
        self.template = Some(template.to_string());
        self
    }

    /// Prepends one level of the value's structure to the path.
    fn under(mut self, segment: &str) -> Self {
        self.path = format!("/{}{}", segment.replace('~', "~0").replace('/', "~1"), self.path);
        self
    }

    fn describe(&self) -> String {
        match &self.template {
            Some(template) if self.path.is_empty() => format!("{template:?}: {}", self.message),
            Some(template) => format!("{} {template:?}: {}", self.path, self.message),
            None => self.message.clone(),
        }
    }
}

/// The most work one template may do (minijinja instructions per render): far beyond any
/// real template, and milliseconds of CPU at most — a loop over a loop runs out instead of
/// holding a worker thread for minutes, so rendering may stay on the async threads.
pub const TEMPLATE_FUEL_MAX: u64 = 200_000;
/// The largest text one template may render.
pub const TEMPLATE_OUTPUT_MAX_BYTES: usize = 1024 * 1024;

/// The one environment every template renders in, built once: building it (minijinja's
/// built-in filters and tests, each inserted into its maps) was most of what rendering a step's
/// input cost. Fuel is counted per render, so sharing it shares no budget.
fn environment() -> &'static Environment<'static> {
    static ENVIRONMENT: LazyLock<Environment<'static>> = LazyLock::new(build_environment);
    &ENVIRONMENT
}

fn build_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(TEMPLATE_FUEL_MAX));
    // Fuel counts steps, not bytes: `join` over a repeated list is one step that could build
    // gigabytes (found by the fuzzer). This one stops at the output cap.
    env.add_filter("join", bounded_join);
    env
}

/// `join`, stopping with an error once the text passes [`TEMPLATE_OUTPUT_MAX_BYTES`].
fn bounded_join(value: minijinja::Value, joiner: Option<String>) -> Result<String, minijinja::Error> {
    let joiner = joiner.unwrap_or_default();
    let too_large = || {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("join would make more than {TEMPLATE_OUTPUT_MAX_BYTES} bytes"),
        )
    };
    let mut out = String::new();
    for (i, item) in value.try_iter()?.enumerate() {
        if i > 0 {
            out.push_str(&joiner);
        }
        let text = item.to_string();
        if out.len() + text.len() > TEMPLATE_OUTPUT_MAX_BYTES {
            return Err(too_large());
        }
        out.push_str(&text);
        if out.len() > TEMPLATE_OUTPUT_MAX_BYTES {
            return Err(too_large());
        }
    }
    Ok(out)
}

/// Where a template renders to: refuses to grow past [`TEMPLATE_OUTPUT_MAX_BYTES`], so a huge
/// output is stopped while it is written, not measured after.
#[derive(Default)]
struct CappedText(Vec<u8>, bool);

impl std::io::Write for CappedText {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + bytes.len() > TEMPLATE_OUTPUT_MAX_BYTES {
            self.1 = true;
            return Err(std::io::Error::other(format!(
                "the template renders more than the {TEMPLATE_OUTPUT_MAX_BYTES} bytes allowed"
            )));
        }
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Refuses a rendered value larger than [`TEMPLATE_OUTPUT_MAX_BYTES`].
fn bounded(text: &str, rendered: Value) -> Result<Value, TemplateError> {
    let size = match &rendered {
        Value::String(s) => s.len(),
        other => other.to_string().len(),
    };
    if size > TEMPLATE_OUTPUT_MAX_BYTES {
        return Err(TemplateError::new(format!(
            "the template renders {size} bytes, more than the {TEMPLATE_OUTPUT_MAX_BYTES} allowed"
        ))
        .in_template(text));
    }
    Ok(rendered)
}

/// Whether `text` holds template syntax at all (else it is used as written).
pub fn has_syntax(text: &str) -> bool {
    text.contains("{{") || text.contains("{%") || text.contains("{#")
}

/// The expression inside `{{ … }}` when `text` is exactly one expression.
fn sole_expression(text: &str) -> Option<&str> {
    let inner = text.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%")).then(|| inner.trim())
}

/// Checks that `text` compiles.
pub fn check(text: &str) -> Result<(), TemplateError> {
    if !has_syntax(text) {
        return Ok(());
    }
    let env = environment();
    if let Some(expr) = sole_expression(text) {
        env.compile_expression(expr).map(|_| ()).map_err(|e| TemplateError::new(e.to_string()))
    } else {
        env.template_from_str(text).map(|_| ()).map_err(|e| TemplateError::new(e.to_string()))
    }
}

/// Every dotted name `text` looks up (`vars.PAYMENTS`, `steps.a.output.id`, `input.x`), sorted;
/// empty when it has no template syntax or does not compile.
pub fn references(text: &str) -> Vec<String> {
    if !has_syntax(text) {
        return Vec::new();
    }
    let env = environment();
    let found = match sole_expression(text) {
        Some(expr) => env.compile_expression(expr).map(|e| e.undeclared_variables(true)),
        None => env.template_from_str(text).map(|t| t.undeclared_variables(true)),
    };
    let mut names: Vec<String> = found.map(|set| set.into_iter().collect()).unwrap_or_default();
    names.sort();
    names
}

/// Every `vars.NAME` the strings of `document` refer to, as `(JSON Pointer, NAME)`.
pub fn var_references(document: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    collect_var_references(document, String::new(), &mut found);
    found
}

fn collect_var_references(value: &Value, path: String, found: &mut Vec<(String, String)>) {
    match value {
        Value::String(text) => {
            for name in references(text) {
                if let Some(var) = name.strip_prefix("vars.") {
                    let var = var.split('.').next().unwrap_or(var).to_string();
                    if !found.iter().any(|(p, v)| *p == path && *v == var) {
                        found.push((path.clone(), var));
                    }
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_var_references(item, format!("{path}/{i}"), found);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let segment = key.replace('~', "~0").replace('/', "~1");
                collect_var_references(item, format!("{path}/{segment}"), found);
            }
        }
        _ => {}
    }
}

/// Why `name` (a dotted reference) is undefined in `context`, or None when it resolves.
fn undefined_reason(name: &str, context: &Value) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let mut current = context;
    for (depth, part) in parts.iter().enumerate() {
        match current.get(part) {
            Some(next) => current = next,
            None => return Some(explain(&parts, depth)),
        }
    }
    None
}

/// The message for `parts` failing to resolve at `parts[depth]`.
fn explain(parts: &[&str], depth: usize) -> String {
    let name = parts.join(".");
    let missing = |from: usize| parts[from.min(depth)..=depth].join(".");
    match parts {
        ["vars", var, ..] if depth == 1 => format!("vars.{var} is not set; start the server with SAGAPLANE_VAR_{var}"),
        ["steps", step, ..] if depth <= 2 => format!(
            "{name} is undefined: step {step} has no output here (a template sees only the steps that succeeded before it)"
        ),
        ["steps", step, ..] => format!("{name} is undefined: step {step}'s output has no {}", missing(3)),
        ["input", ..] => format!("{name} is undefined: the saga's input has no {}", missing(1)),
        [first, ..] if depth == 0 => format!(
            "{first} is undefined; templates see input, tenant_id, saga.id, steps.<name>.output and vars.<NAME>"
        ),
        _ => format!("{name} is undefined: {} does not exist", parts[..=depth].join(".")),
    }
}

/// Replaces minijinja's "undefined value" with the name that is undefined and why.
fn name_the_undefined(error: minijinja::Error, text: &str, ctx: &minijinja::Value) -> TemplateError {
    if error.kind() == minijinja::ErrorKind::OutOfFuel {
        return TemplateError::new(format!(
            "the template does too much work (more than {TEMPLATE_FUEL_MAX} steps; a loop too large?)"
        ))
        .in_template(text);
    }
    if error.kind() == minijinja::ErrorKind::UndefinedError {
        let context = serde_json::to_value(ctx).unwrap_or(Value::Null);
        if let Some(reason) = references(text).iter().find_map(|name| undefined_reason(name, &context)) {
            return TemplateError::new(reason).in_template(text);
        }
    }
    TemplateError::new(error.to_string()).in_template(text)
}

/// Renders every string in `value` against `context`.
pub fn render_value(value: &Value, context: &TemplateContext) -> Result<Value, TemplateError> {
    if !contains_syntax(value) {
        return Ok(value.clone());
    }
    let env = environment();
    let ctx = minijinja::Value::from_serialize(context.to_value());
    render_tree(env, value, &ctx)
}

/// Renders one string template to a string.
pub fn render_string(text: &str, context: &TemplateContext) -> Result<String, TemplateError> {
    match render_value(&Value::String(text.to_string()), context)? {
        Value::String(s) => Ok(s),
        other => Ok(other.to_string()),
    }
}

fn contains_syntax(value: &Value) -> bool {
    match value {
        Value::String(s) => has_syntax(s),
        Value::Array(items) => items.iter().any(contains_syntax),
        Value::Object(map) => map.values().any(contains_syntax),
        _ => false,
    }
}

fn render_tree(env: &Environment<'_>, value: &Value, ctx: &minijinja::Value) -> Result<Value, TemplateError> {
    match value {
        Value::String(s) if has_syntax(s) => render_text(env, s, ctx),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| render_tree(env, v, ctx).map_err(|e| e.under(&i.to_string())))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (k, v) in map {
                out.insert(k.clone(), render_tree(env, v, ctx).map_err(|e| e.under(k))?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

fn render_text(env: &Environment<'_>, text: &str, ctx: &minijinja::Value) -> Result<Value, TemplateError> {
    if let Some(expr) = sole_expression(text) {
        let compiled = env.compile_expression(expr).map_err(|e| TemplateError::new(e.to_string()).in_template(text))?;
        let result = compiled.eval(ctx).map_err(|e| name_the_undefined(e, text, ctx))?;
        if result.is_undefined() {
            let context = serde_json::to_value(ctx).unwrap_or(Value::Null);
            let reason = references(text).iter().find_map(|name| undefined_reason(name, &context));
            return Err(TemplateError::new(reason.unwrap_or_else(|| format!("{expr} is undefined"))).in_template(text));
        }
        // Serialised into a capped buffer: a value that is large (a repeated list is lazy until
        // it is read) stops at the cap instead of being built whole.
        let mut json = CappedText::default();
        serde_json::to_writer(&mut json, &result).map_err(|e| TemplateError::new(e.to_string()).in_template(text))?;
        let value: Value =
            serde_json::from_slice(&json.0).map_err(|e| TemplateError::new(e.to_string()).in_template(text))?;
        return bounded(text, value);
    }
    let template = env.template_from_str(text).map_err(|e| name_the_undefined(e, text, ctx))?;
    let mut out = CappedText::default();
    if let Err(e) = template.render_captured_to(ctx, &mut out) {
        if out.1 {
            return Err(TemplateError::new(format!(
                "the template renders more than the {TEMPLATE_OUTPUT_MAX_BYTES} bytes allowed"
            ))
            .in_template(text));
        }
        return Err(name_the_undefined(e, text, ctx));
    }
    let rendered = String::from_utf8(out.0).map_err(|e| TemplateError::new(e.to_string()).in_template(text))?;
    bounded(text, Value::String(rendered))
}

#[cfg(test)]
mod tests;

/// Whether a rendered `when:` is false: `false`, null, empty (text, list or map), `0`, or the
/// text `false` or `0`.
pub fn is_falsy(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => {
            let s = s.trim();
            s.is_empty() || s == "0" || s.eq_ignore_ascii_case("false")
        }
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
    }
}
