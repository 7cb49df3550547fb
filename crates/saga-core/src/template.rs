//! Templates in definitions (minijinja): `input`, `tenant_id`, `saga.id`,
//! `steps.<name>.output` and `vars.<NAME>`.
//!
//! A string that is exactly one expression (`"{{ input.count }}"`) renders to the expression's
//! native JSON value, so numbers and objects pass through unchanged; any other string with
//! template syntax renders to a string. Undefined names are errors, never silent empty strings.

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
}

impl TemplateContext {
    fn to_value(&self) -> Value {
        let steps: Map<String, Value> = self
            .step_outputs
            .iter()
            .map(|(name, output)| (name.clone(), serde_json::json!({ "output": output })))
            .collect();
        serde_json::json!({
            "input": self.input,
            "tenant_id": self.tenant_id,
            "saga": { "id": self.saga_id },
            "steps": steps,
            "vars": self.vars,
        })
    }
}

/// A template that failed to compile or render.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(String);

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

fn has_syntax(text: &str) -> bool {
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
        env.compile_expression(expr).map(|_| ()).map_err(|e| TemplateError(e.to_string()))
    } else {
        env.template_from_str(text).map(|_| ()).map_err(|e| TemplateError(e.to_string()))
    }
}

/// Renders every string in `value` against `context`.
pub fn render_value(value: &Value, context: &TemplateContext) -> Result<Value, TemplateError> {
    if !contains_syntax(value) {
        return Ok(value.clone());
    }
    let env = environment();
    let ctx = minijinja::Value::from_serialize(context.to_value());
    render_tree(&env, value, &ctx)
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
        Value::Array(items) => {
            items.iter().map(|v| render_tree(env, v, ctx)).collect::<Result<_, _>>().map(Value::Array)
        }
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (k, v) in map {
                out.insert(k.clone(), render_tree(env, v, ctx)?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

fn render_text(env: &Environment<'_>, text: &str, ctx: &minijinja::Value) -> Result<Value, TemplateError> {
    if let Some(expr) = sole_expression(text) {
        let compiled = env.compile_expression(expr).map_err(|e| TemplateError(e.to_string()))?;
        let result = compiled.eval(ctx).map_err(|e| TemplateError(e.to_string()))?;
        if result.is_undefined() {
            return Err(TemplateError(format!("{expr} is undefined")));
        }
        return serde_json::to_value(&result).map_err(|e| TemplateError(e.to_string()));
    }
    env.render_str(text, ctx).map(Value::String).map_err(|e| TemplateError(e.to_string()))
}

#[cfg(test)]
mod tests;
