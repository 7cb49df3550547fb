//! The targets: each takes bytes as they would arrive from outside and checks what must hold
//! whatever they are (no panic, and the target's invariants).

use saga_core::template::{render_string, TemplateContext, TEMPLATE_OUTPUT_MAX_BYTES};
use saga_core::tenant::{is_valid_tenant_id, tenant_object_name, OBJECT_NAME_MAX};
use saga_core::validate::{parse_document, validate_definition, DocumentFormat};
use saga_core::Phase;

use crate::Target;

const BUILTINS: &[&str] = &["core.echo", "core.fail", "core.sleep", "core.emit"];

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    Target { name: "definition_json", run: definition_json, dictionary: DEFINITION_WORDS },
    Target { name: "definition_yaml", run: definition_yaml, dictionary: DEFINITION_WORDS },
    Target { name: "template", run: template, dictionary: TEMPLATE_WORDS },
    Target { name: "template_context", run: template_context, dictionary: CONTEXT_WORDS },
    Target { name: "webhook_verify", run: webhook_verify, dictionary: WEBHOOK_WORDS },
    Target { name: "participant_answer", run: participant_answer, dictionary: ANSWER_WORDS },
    Target { name: "tenant_id", run: tenant_id, dictionary: &["-", "--", "a", "z", "0", "9", "_"] },
];

const DEFINITION_WORDS: &[&str] = &[
    "{\"steps\":[",
    "{\"name\":\"a\",\"action\":",
    "{\"builtin\":\"core.echo\"}",
    "{\"http\":{\"method\":\"POST\",\"url\":\"",
    "\"compensation\":",
    "\"retry\":{\"max_attempts\":",
    "\"timeout\":\"",
    "30d",
    "1h",
    "\"{{ input.x }}\"",
    "\"signal\":",
    "\"concurrency\":{\"key\":",
    "\"deadline\":",
    "\"on_failure\":\"fail\"",
    "\"pivot\":true",
    "- name: a\n",
    "  action:\n",
    "&a [*a]",
    "!!binary",
    "<<: *a",
    "1e999",
    "-0",
    "\"\\u0000\"",
    "[[[[[[[[",
    "]]]]]]]]",
];

const TEMPLATE_WORDS: &[&str] = &[
    "{{",
    "}}",
    "{%",
    "%}",
    "{% for x in range(1000000) %}",
    "{% endfor %}",
    "input.",
    "steps.a.output",
    "vars.",
    "|tojson",
    "|upper",
    "|join",
    "range(",
    "loop.",
    "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    "~",
    "*",
    "\x00",
];

const CONTEXT_WORDS: &[&str] = &[
    "{\"items\":[",
    "\"n\":",
    "\"text\":\"",
    "1e308",
    "-1",
    "99999999999",
    "[[[[",
    "]]]]",
    "{\"a\":{\"b\":",
    "null",
    "true",
    "\"{{ 1 }}\"",
    "\\u0000",
];

/// Templates as an operator writes them, for the context a client controls: the saga's input.
const OPERATOR_TEMPLATES: &[&str] = &[
    "{{ input.items | join(\",\") }}",
    "{{ input.text | replace(\"a\", \"bb\") | upper }}",
    "{% for item in input.items %}{{ item }}-{{ loop.index }};{% endfor %}",
    "{{ input.n * 2 }}",
    "{{ input | tojson }}",
    "{{ input.a.b }}",
    "https://example.com/{{ input.text | urlencode }}?n={{ input.n | int }}",
    "{{ input.items | length }} {{ input.items | first }} {{ input.items | sort | last }}",
    "{{ input.text | indent(4) }}",
    "{{ input.items | map(\"upper\") | list }}",
];

const WEBHOOK_WORDS: &[&str] = &["v1,", "v1a,", " ", "msg_", "==", "\n", "1700000000", "-1", "99999999999999999999"];

const ANSWER_WORDS: &[&str] = &[
    "{\"type\":",
    "\"retryable\":true",
    "\"retryable\":false",
    "{\"title\":",
    "\"detail\":",
    "\"status\":",
    "\"errors\":[",
    "\"output\":",
    "application/problem+json",
    "\u{FFFD}",
    "\x00",
];

fn definition_json(input: &[u8]) {
    if let Ok(document) = parse_document(input, DocumentFormat::Json) {
        let _ = validate_definition("fuzz", &document, BUILTINS);
    }
}

fn definition_yaml(input: &[u8]) {
    if let Ok(document) = parse_document(input, DocumentFormat::Yaml) {
        let _ = validate_definition("fuzz", &document, BUILTINS);
    }
}

/// The template, a NUL, then a JSON value as the saga's input.
///
/// Template text is the operator's (definitions need the admin token). Fuel bounds its steps
/// and its output is capped, but text written to do so can still allocate without bound with
/// string concatenation (`~`) or repetition (`*`) in a loop (`namespace`), one step each — the
/// fuzzer found it; docs/security.md says so. Such text is skipped here; what a client
/// controls, the context, is fuzzed against operators' templates by `template_context`.
fn template(input: &[u8]) {
    let (text, context) = match input.iter().position(|b| *b == 0) {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => (input, &b"{}"[..]),
    };
    let Ok(text) = std::str::from_utf8(text) else { return };
    if text.contains('~') || text.contains('*') || text.contains("namespace") {
        return;
    }
    render(text, context);
}

/// A byte choosing one of [`OPERATOR_TEMPLATES`], then the saga's input as JSON.
fn template_context(input: &[u8]) {
    let Some((choice, context)) = input.split_first() else { return };
    render(OPERATOR_TEMPLATES[usize::from(*choice) % OPERATOR_TEMPLATES.len()], context);
}

fn render(text: &str, context: &[u8]) {
    let input = serde_json::from_slice(context).unwrap_or(serde_json::Value::Null);
    let mut step_outputs = serde_json::Map::new();
    step_outputs.insert("a".into(), serde_json::json!({"list": [1, 2, 3], "text": "x"}));
    let context = TemplateContext {
        input,
        tenant_id: Some("acme".into()),
        saga_id: "s".into(),
        step_outputs,
        ..Default::default()
    };
    if let Ok(rendered) = render_string(text, &context) {
        assert!(rendered.len() <= TEMPLATE_OUTPUT_MAX_BYTES, "a template rendered {} bytes", rendered.len());
    }
}

/// Three header lines (`webhook-id`, `webhook-timestamp`, `webhook-signature`), then the body.
fn webhook_verify(input: &[u8]) {
    let webhook = match standardwebhooks::Webhook::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") {
        Ok(webhook) => webhook,
        Err(e) => panic!("the fixed secret: {e}"),
    };
    let mut parts = input.splitn(4, |b| *b == b'\n');
    let mut headers = http::HeaderMap::new();
    for name in [
        standardwebhooks::HEADER_WEBHOOK_ID,
        standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
        standardwebhooks::HEADER_WEBHOOK_SIGNATURE,
    ] {
        if let Some(value) = parts.next().and_then(|v| http::HeaderValue::from_bytes(v).ok()) {
            headers.insert(name, value);
        }
    }
    let body = parts.next().unwrap_or_default();
    let _ = webhook.verify(body, &headers);
}

/// Two bytes of status (100–599), then the participant's body, read as an action's and a
/// compensation's answer.
fn participant_answer(input: &[u8]) {
    let (status, body) = match input {
        [high, low, rest @ ..] => (100 + (u16::from(*high) << 8 | u16::from(*low)) % 500, rest),
        _ => (200, input),
    };
    for phase in [Phase::Action, Phase::Compensation] {
        let _ = saga_runtime::executor::http::classify(status, body, phase);
    }
}

/// Two candidate ids separated by a newline: a valid id's storage name is a safe identifier of
/// at most 63 bytes, and two different valid ids never share one.
fn tenant_id(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let mut ids = text.splitn(2, '\n');
    let first = ids.next().unwrap_or_default();
    let second = ids.next().unwrap_or_default();
    for id in [first, second] {
        if is_valid_tenant_id(id) {
            let name = tenant_object_name(id);
            assert!(name.len() <= OBJECT_NAME_MAX && name.starts_with("tenant_"), "{id} -> {name}");
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{id} -> {name}");
        }
    }
    if first != second && is_valid_tenant_id(first) && is_valid_tenant_id(second) {
        assert_ne!(tenant_object_name(first), tenant_object_name(second), "{first} and {second} share a name");
    }
}
