//! Every validation error is reported with its JSON Pointer.

use saga_core::{parse_document, validate_definition, Action, DocumentFormat, FieldError};
use serde_json::{json, Value};

const BUILTINS: &[&str] = &["core.echo", "core.fail", "core.sleep"];

fn errors(name: &str, document: Value) -> Vec<(String, String)> {
    match validate_definition(name, &document, BUILTINS) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.into_iter().map(|FieldError { path, message }| (path, message)).collect(),
    }
}

/// Asserts exactly these paths are reported, each message containing its fragment.
fn check(name: &str, document: Value, expected: &[(&str, &str)]) {
    let got = errors(name, document);
    let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    let want: Vec<&str> = expected.iter().map(|(p, _)| *p).collect();
    assert_eq!(paths, want, "errors: {got:#?}");
    for ((_, message), (_, fragment)) in got.iter().zip(expected) {
        assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
    }
}

fn echo_step(name: &str) -> Value {
    json!({"name": name, "action": {"builtin": "core.echo", "input": {"x": 1}}})
}

#[test]
fn valid_definition_resolves_defaults() {
    let doc = json!({
        "defaults": {"timeout": "10s", "retry": {"max_attempts": 3, "initial_interval": "100ms"}},
        "steps": [
            {"name": "a", "action": {"http": {"method": "post", "url": "{{ vars.X }}/a", "body": {"c": "{{ input.c }}"}}},
             "compensation": {"http": {"url": "{{ vars.X }}/a/{{ steps.a.output.id }}/cancel"}},
             "retry": {"max_attempts": 5}},
            echo_step("b"),
        ]
    });
    let def = validate_definition("order", &doc, BUILTINS).expect("valid");
    assert_eq!(def.steps[0].retry.max_attempts, 5);
    assert_eq!(def.steps[0].retry.initial_interval_ms, 100);
    assert_eq!(def.steps[0].timeout_ms, 10_000);
    assert_eq!(def.steps[1].retry.max_attempts, 3);
    match &def.steps[0].action {
        Action::Http(http) => assert_eq!(http.method, "POST"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn reports_every_error_with_its_path() {
    check(
        "order",
        json!({
            "name": "other",
            "timeout": "soon",
            "steps": [
                echo_step("a"),
                {"name": "a", "action": {"builtin": "core.nope"}, "retry": {"max_attempts": 0, "jitter": 2}},
                {"name": "bad name", "action": {"http": {"url": "{{ input. }}"}}},
                {"name": "c", "action": {"frobnicate": {}}, "pivot": "yes"},
                {"name": "d", "action": {"builtin": "core.echo"}, "on_failure": "retry"},
            ]
        }),
        &[
            ("/name", "does not match"),
            ("/timeout", "invalid duration"),
            ("/steps/1/action/builtin", "unknown builtin"),
            ("/steps/1/retry/max_attempts", "from 1"),
            ("/steps/1/retry/jitter", "0.0 to 1.0"),
            ("/steps/1/name", "duplicate"),
            ("/steps/2/name", "must match"),
            ("/steps/2/action/http/url", "does not compile"),
            ("/steps/3/action", "exactly one action kind"),
            ("/steps/3/pivot", "true or false"),
            ("/steps/4/on_failure", "not one of: compensate, fail"),
        ],
    );
}

#[test]
fn shape_errors() {
    check("order", json!([]), &[("", "must be an object")]);
    check("order", json!({}), &[("/steps", "is required")]);
    check("order", json!({"steps": []}), &[("/steps", "at least one")]);
    check("Bad", json!({"steps": [echo_step("a")]}), &[("/name", "must match")]);
    check("order", json!({"steps": [echo_step("a")], "colour": 1}), &[("/colour", "unknown field")]);
    check(
        "order",
        json!({"steps": [{"name": "a", "action": {"builtin": "core.echo"}, "compensation": {"signal": {"name": "x"}}}]}),
        &[("/steps/0/compensation/signal", "cannot wait")],
    );
    check(
        "order",
        json!({"steps": [echo_step("a")], "defaults": {"retry": {"initial_interval": "10s", "max_interval": "1s"}}}),
        &[("/defaults/retry/max_interval", "not be shorter")],
    );
    check(
        "order",
        json!({"steps": [echo_step("a")], "concurrency": {"key": "{{ tenant_id }}", "limit": 0}}),
        &[("/concurrency/limit", "from 1")],
    );
}

#[test]
fn json_and_yaml_parse_to_the_same_tree() {
    let yaml = b"name: order\nsteps:\n  - name: a\n    action: {builtin: core.echo, input: {n: 1}}\n";
    let json = br#"{"name":"order","steps":[{"name":"a","action":{"builtin":"core.echo","input":{"n":1}}}]}"#;
    let from_yaml = parse_document(yaml, DocumentFormat::Yaml).expect("yaml");
    let from_json = parse_document(json, DocumentFormat::Json).expect("json");
    assert_eq!(from_yaml, from_json);
    assert!(parse_document(b"{not json", DocumentFormat::Json).is_err());
    assert!(parse_document(b"a: [b\n", DocumentFormat::Yaml).is_err());
}

#[test]
fn a_definition_may_set_its_own_retention() {
    let def =
        validate_definition("order", &json!({"steps": [echo_step("a")], "retention": "7d"}), BUILTINS).expect("valid");
    assert_eq!(def.retention_ms, Some(7 * 24 * 3600 * 1000));
    let def = validate_definition("order", &json!({"steps": [echo_step("a")]}), BUILTINS).expect("valid");
    assert_eq!(def.retention_ms, None, "the deployment's default");
    check("order", json!({"steps": [echo_step("a")], "retention": "500ms"}), &[("/retention", "at least 1s")]);
    check("order", json!({"steps": [echo_step("a")], "retention": "forever"}), &[("/retention", "invalid duration")]);
    check("order", json!({"steps": [echo_step("a")], "retention": "0s"}), &[("/retention", "longer than zero")]);
}

#[test]
fn a_sleep_is_a_duration_or_a_time_and_never_a_compensation() {
    let sleep = |action: Value| json!({"steps": [echo_step("a"), {"name": "wait", "action": {"sleep": action}}]});
    let def = validate_definition("order", &sleep(json!({"duration": "30d"})), BUILTINS).expect("valid");
    assert_eq!(def.steps[1].action, Action::Sleep(saga_core::SleepAction::Duration(30 * 24 * 3600 * 1000)));
    for until in ["2027-01-31T09:00:00Z", "2027-01-31T10:00:00+01:00", "{{ input.ends_at }}"] {
        validate_definition("order", &sleep(json!({ "until": until })), BUILTINS).expect(until);
    }
    check("order", sleep(json!({"duration": "11000d"})), &[("/steps/1/action/sleep/duration", "at most")]);
    check("order", sleep(json!({"until": "tomorrow"})), &[("/steps/1/action/sleep/until", "not an RFC 3339 time")]);
    check("order", sleep(json!({"until": "{{ input.x "})), &[("/steps/1/action/sleep/until", "does not compile")]);
    check("order", sleep(json!({})), &[("/steps/1/action/sleep", "exactly one of: duration")]);
    check(
        "order",
        sleep(json!({"duration": "1s", "until": "2027-01-31T09:00:00Z"})),
        &[("/steps/1/action/sleep", "exactly one of")],
    );
    check("order", sleep(json!({"duration": "1s", "for": 2})), &[("/steps/1/action/sleep/for", "unknown field")]);
    check(
        "order",
        json!({"steps": [{"name": "a", "action": {"builtin": "core.echo"}, "compensation": {"sleep": {"duration": "1s"}}}]}),
        &[("/steps/0/compensation/sleep", "cannot sleep")],
    );
}

#[test]
fn when_is_a_template_on_a_step() {
    let step = |when: Value| json!({"steps": [{"name": "a", "action": {"builtin": "core.echo"}, "when": when}]});
    let def = validate_definition("order", &step(json!("{{ input.plan == 'silo' }}")), BUILTINS).expect("valid");
    assert_eq!(def.steps[0].when.as_deref(), Some("{{ input.plan == 'silo' }}"));
    check("order", step(json!(true)), &[("/steps/0/when", "must be a string")]);
    check("order", step(json!("{{ input.plan ==")), &[("/steps/0/when", "does not compile")]);
}
