//! Template rendering tests: every source a template can see, strict undefined, syntax checks.

use serde_json::json;

use super::*;

fn context() -> TemplateContext {
    let mut step_outputs = Map::new();
    step_outputs.insert("create_order".into(), json!({"id": "o-1", "total": 42}));
    let mut vars = Map::new();
    vars.insert("ORDERS".into(), json!("http://orders"));
    TemplateContext {
        input: json!({"customer_id": "c-9", "count": 3}),
        tenant_id: Some("acme".into()),
        saga_id: "s-1".into(),
        step_outputs,
        vars,
    }
}

fn check_render(template: Value, expected: Value) {
    assert_eq!(render_value(&template, &context()).expect("renders"), expected);
}

#[test]
fn renders_every_source() {
    check_render(json!("{{ vars.ORDERS }}/orders"), json!("http://orders/orders"));
    check_render(json!("{{ input.count }}"), json!(3));
    check_render(json!("{{ steps.create_order.output }}"), json!({"id": "o-1", "total": 42}));
    check_render(json!({"t": "{{ tenant_id }}", "s": "saga-{{ saga.id }}"}), json!({"t": "acme", "s": "saga-s-1"}));
    check_render(json!(["plain", 1, null]), json!(["plain", 1, null]));
}

#[test]
fn undefined_is_an_error() {
    assert!(render_value(&json!("{{ input.missing }}"), &context()).is_err());
    assert!(render_value(&json!("x{{ steps.nope.output.id }}"), &context()).is_err());
}

#[test]
fn check_rejects_broken_syntax() {
    assert!(check("{{ input. }}").is_err());
    assert!(check("{% if %}").is_err());
    assert!(check("no template").is_ok());
}
