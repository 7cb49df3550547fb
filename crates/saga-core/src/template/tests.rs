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
        locals: Map::new(),
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

fn check_error(template: Value, expected: &str) {
    let error = render_value(&template, &context()).expect_err("must not render");
    assert_eq!(error.to_string(), expected);
}

#[test]
fn an_undefined_name_is_named_with_where_it_sits_and_what_to_do() {
    check_error(
        json!("{{ vars.PAYMENTS }}/charges"),
        r#""{{ vars.PAYMENTS }}/charges": vars.PAYMENTS is not set; start the server with SAGAPLANE_VAR_PAYMENTS"#,
    );
    check_error(
        json!({"customer": {"id": "{{ input.customer.id }}"}}),
        r#"/customer/id "{{ input.customer.id }}": input.customer.id is undefined: the saga's input has no customer"#,
    );
    check_error(
        json!(["ok", "{{ steps.charge.output.id }}"]),
        r#"/1 "{{ steps.charge.output.id }}": steps.charge.output.id is undefined: step charge has no output here (a template sees only the steps that succeeded before it)"#,
    );
    check_error(
        json!("{{ steps.create_order.output.missing }}"),
        r#""{{ steps.create_order.output.missing }}": steps.create_order.output.missing is undefined: step create_order's output has no missing"#,
    );
    check_error(
        json!("x-{{ nope }}"),
        r#""x-{{ nope }}": nope is undefined; templates see input, tenant_id, saga.id, steps.<name>.output and vars.<NAME>"#,
    );
}

#[test]
fn var_references_are_found_with_their_pointer() {
    let document = json!({"steps": [
        {"name": "a", "action": {"http": {"url": "{{ vars.ORDERS }}/x", "body": {"k": "{{ vars.KEY | upper }}-{{ input.x }}"}}}},
        {"name": "b", "action": {"builtin": "core.echo", "input": "{{ input.y }}"}},
    ]});
    assert_eq!(
        var_references(&document),
        vec![
            ("/steps/0/action/http/body/k".to_string(), "KEY".to_string()),
            ("/steps/0/action/http/url".to_string(), "ORDERS".to_string()),
        ]
    );
}

#[test]
fn check_rejects_broken_syntax() {
    assert!(check("{{ input. }}").is_err());
    assert!(check("{% if %}").is_err());
    assert!(check("no template").is_ok());
}

#[test]
fn runaway_templates_stop_with_a_clear_error() {
    let nested = "{% for i in range(1000) %}{% for j in range(1000) %}x{% endfor %}{% endfor %}";
    let started = std::time::Instant::now();
    let error = render_string(nested, &context()).expect_err("a million iterations");
    assert!(error.message.contains("too much work"), "{}", error.message);
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "took {:?}", started.elapsed());
    let wide = "{{ 'x' * 2000000 }}";
    let error = render_value(&json!({"big": wide}), &context()).expect_err("two million bytes");
    assert!(error.message.contains("more than"), "{}", error.message);
    // Real templates stay far below both limits.
    let loop_of_steps = "{% for k in range(200) %}{{ k }},{% endfor %}";
    assert!(render_string(loop_of_steps, &context()).is_ok());
}

/// Found by the fuzzer: one step can build far more than the output cap — `join` over a list
/// repeated a hundred million times made 1.2 GB — since fuel counts steps, not bytes. `join`,
/// printed text and a template's value now stop at the cap while they are built. (Sizes here are
/// small enough to run fast; the memory itself is watched by the fuzzer's runs under a 4 GB
/// limit, crates/fuzz.)
#[test]
fn one_step_cannot_build_past_the_output_cap() {
    let joined = "{{ (['aaaa'] * 1000000) | join('bbbbbbbb') }}";
    let error = render_string(joined, &context()).expect_err("a join of 12 MB");
    assert!(error.message.contains("more than"), "{}", error.message);
    let printed = "list: {{ [1] * 1000000 }}";
    let error = render_string(printed, &context()).expect_err("a printed list of 3 MB");
    assert!(error.message.contains("more than"), "{}", error.message);
    let value = "{{ [1] * 1000000 }}";
    let error = render_value(&json!({"v": value}), &context()).expect_err("a list value of 2 MB");
    assert!(error.message.contains("more than"), "{}", error.message);
    assert_eq!(render_string("{{ ['a', 'b'] | join('-') }}", &context()).expect("a small join"), "a-b");
}

#[test]
fn locals_are_names_at_the_top_level() {
    let mut context = context();
    context.locals.insert("item".into(), json!({"service": "billing"}));
    context.locals.insert("index".into(), json!(2));
    check_render_with(&context, json!("{{ item.service }}-{{ index }}"), json!("billing-2"));
    assert_eq!(
        render_value(&json!("{{ index }}"), &context).expect("renders"),
        json!(2),
        "a sole expression keeps its type"
    );
}

fn check_render_with(context: &TemplateContext, template: Value, expected: Value) {
    assert_eq!(render_value(&template, context).expect("renders"), expected);
}
