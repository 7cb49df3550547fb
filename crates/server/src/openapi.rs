//! The OpenAPI 3.1 document of every route, written out by hand (see ARCHITECTURE.md for why
//! not a derive crate); a test checks it against [`crate::ROUTES`], and the test suite runs a
//! schema-based fuzzer (schemathesis) against a real instance: every constraint the server checks
//! and every status a route can answer is stated here.

use serde_json::{json, Value};

use crate::routes::tenants::{LIST_ITEMS_MAX, METADATA_MAX_BYTES};

/// Patterns the server checks, stated once.
const TENANT_ID_PATTERN: &str = "^[a-z][a-z0-9-]{1,61}[a-z0-9]$";
const DEFINITION_NAME_PATTERN: &str = "^[a-z][a-z0-9_.-]{0,99}$";
/// A `?wait=`: digits and one unit.
/// A host name or IPv4 address with an optional port (1–65535), as subscription URLs give it.
const HOST_AND_PORT_PATTERN: &str =
    "[A-Za-z0-9.-]+(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?";
const WAIT_PATTERN: &str = "^[0-9]{1,9}(ms|s|m|h)$";
/// Non-blank text (names): at least one character that is not white space.
const NON_BLANK_PATTERN: &str = "^[^\\u0000]*[^\\s\\u0085\\u0000][^\\u0000]*$";
const DOMAIN_PATTERN: &str = "^[A-Za-z0-9-]([A-Za-z0-9.-]{0,251}[A-Za-z0-9-])?$";
const EMAIL_PATTERN: &str = "^[^@\\s\\u0085\\u0000]+@[^@\\s\\u0085\\u0000]*\\.[^@\\s\\u0085\\u0000]*$";
/// Text without the NUL character, which no store keeps: every string the server reads is
/// refused with 400 if it holds one (docs/api.md, Conventions).
const NO_NUL_PATTERN: &str = "^[^\\u0000]*$";
/// A humantime duration: numbers each followed by a unit (`250ms`, `5s`, `2m`, `1h 30m`, `30d`).
const DURATION_PATTERN: &str =
    "^\\s*([0-9]+(\\.[0-9]+)?\\s*(nanos|nsec|ns|usec|us|\\u00b5s|millis|msec|ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|months|month|M|years|year|yrs|yr|y)\\s*)+$";
/// A tenant migration service: its folder's name.
const SERVICE_PATTERN: &str = "^[a-z0-9_-]{1,64}$";

fn problem(description: &str) -> Value {
    json!({"description": description, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

fn ok(description: &str, schema: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn body(schema: &str, required: bool) -> Value {
    json!({"required": required, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn path_param(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": schema})
}

fn query_param(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

/// `schema`, or null (the server reads a null optional field as absent).
fn nullable(schema: Value) -> Value {
    json!({"anyOf": [{"type": "null"}, schema]})
}

fn string() -> Value {
    json!({"type": "string"})
}

fn uuid() -> Value {
    json!({"type": "string", "format": "uuid"})
}

fn tenant_id() -> Value {
    json!({"type": "string", "pattern": TENANT_ID_PATTERN})
}

fn limit_param() -> Value {
    query_param(
        "limit",
        "page size (default 50; values above 500 are capped at 500)",
        json!({"type": "integer", "minimum": 1, "maximum": super::routes::common::QUERY_LIMIT_MAX}),
    )
}

fn idempotency_key_header() -> Value {
    json!({"name": "Idempotency-Key", "in": "header", "required": false,
           "description": "the same key with the same body returns the original resource (200)",
           "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"}})
}

fn secured(mut operation: Value) -> Value {
    operation["security"] = json!([{"bearer": []}]);
    let responses = &mut operation["responses"];
    responses["401"] = problem("missing or unknown bearer token");
    responses["403"] = problem("a tenant key on a route or tenant it has no right to");
    operation
}

/// Adds the statuses every operation of a kind can answer: 400 and 413 where there is a request
/// body, 400 where there are query parameters (unknown or invalid ones are refused), 404 where a
/// path parameter names a resource.
fn complete_responses(paths: &mut serde_json::Map<String, Value>) {
    for (path, item) in paths.iter_mut() {
        let has_path_params = path.contains('{');
        let shared_query = item["parameters"].as_array().is_some_and(|p| p.iter().any(|p| p["in"] == "query"));
        let Some(item) = item.as_object_mut() else { continue };
        for (method, operation) in item.iter_mut() {
            if method == "parameters" || !path.starts_with("/v1/") {
                continue;
            }
            let has_query = shared_query
                || operation["parameters"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p["in"] == "query" || p["in"] == "header"));
            let has_body = operation.get("requestBody").is_some();
            let responses = &mut operation["responses"];
            if (has_body || has_query) && responses.get("400").is_none() {
                responses["400"] = problem("malformed request: invalid JSON body, query parameter or header");
            }
            if has_body && responses.get("413").is_none() {
                responses["413"] = problem("body over 1 MiB");
            }
            if has_path_params && responses.get("404").is_none() {
                responses["404"] = problem("no such resource (or not visible to this token)");
            }
        }
    }
}

/// The document served at `/openapi.json`.
pub fn document() -> Value {
    let saga_id = || path_param("id", "saga id", uuid());
    let mut paths = json!({
        "/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
        "/ready": {"get": {"summary": "Readiness: the store answers, takes writes, and its schema is one this binary supports", "responses": {"200": {"description": "ready"}, "503": {"description": "not ready; `status` and `reason` say why"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition format", "content": {"text/plain": {}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        "/debug/pprof/profile": {"get": secured(json!({
            "summary": "A CPU profile of this process (admin): pprof protobuf, or a flame graph SVG",
            "parameters": [
                query_param("seconds", "how long to sample (default 30)", json!({"type": "integer", "minimum": 1, "maximum": 60})),
                query_param("format", "pprof (default) or svg", json!({"enum": ["pprof", "svg"]}))
            ],
            "responses": {"200": {"description": "application/octet-stream (pprof) or image/svg+xml"},
                          "409": problem("a profile is being taken"),
                          "422": problem("seconds or format out of range, or another query parameter")}}))},
        "/ui/": {"get": {"summary": "Dashboard", "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}},
        "/v1/status": {"get": secured(json!({
            "summary": "The store, its schema, and how the database is reached (admin)",
            "responses": {"200": {"description": "status", "content": {"application/json": {"schema": {"type": "object"}}}},
                          "403": problem("a tenant key")}
        }))},
        "/v1/definitions": {"get": secured(json!({
            "summary": "Latest version of every definition",
            "responses": {"200": ok("definitions", "DefinitionList")}
        }))},
        "/v1/definitions/{name}": {
            "parameters": [path_param("name", "definition name", json!({"type": "string", "pattern": DEFINITION_NAME_PATTERN}))],
            "get": secured(json!({"summary": "Latest version", "responses": {"200": ok("definition", "Definition")}})),
            "put": secured(json!({
                "summary": "Create a new version (201) unless identical to the latest (200); `warnings` names vars.* this server lacks",
                "requestBody": {"required": true, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/DefinitionDocument"}},
                    "application/yaml": {"schema": {"$ref": "#/components/schemas/DefinitionDocument"}}}},
                "responses": {
                    "200": ok("identical to the latest version", "Definition"),
                    "201": ok("new version", "Definition"),
                    "400": problem("malformed JSON or YAML"),
                    "415": problem("unsupported content type"),
                    "422": problem("invalid definition (unknown builtin, template that does not compile, duplicate step, …); errors[] has each problem with its JSON Pointer"),
                }
            })),
        },
        "/v1/definitions/{name}/check": {
            "parameters": [path_param("name", "definition name", json!({"type": "string", "pattern": DEFINITION_NAME_PATTERN}))],
            "post": secured(json!({
                "summary": "Check a new version, before applying it, against the sagas of the versions before: which running ones could move to it (an upgrade bulk action moves them), which recently finished ones would have, and every reason why not. Nothing is stored",
                "requestBody": {"required": true, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/DefinitionDocument"}},
                    "application/yaml": {"schema": {"$ref": "#/components/schemas/DefinitionDocument"}}}},
                "responses": {
                    "200": {"description": "{definition, movable, refused, sagas: [{id, version, status, finished, movable, reasons}]}"},
                    "400": problem("malformed JSON or YAML"),
                    "415": problem("unsupported content type"),
                    "422": problem("invalid definition; errors[] has each problem with its JSON Pointer"),
                }
            })),
        },
        "/v1/definitions/{name}/versions/{version}": {
            "parameters": [
                path_param("name", "definition name", json!({"type": "string", "pattern": DEFINITION_NAME_PATTERN})),
                path_param("version", "version number", json!({"type": "integer", "minimum": 1, "maximum": i32::MAX})),
            ],
            "get": secured(json!({"summary": "One version", "responses": {"200": ok("definition", "Definition"), "400": problem("the version is not a positive integer")}})),
        },
        "/v1/sagas": {
            "get": secured(json!({"summary": "List sagas, newest first",
                "parameters": [
                    query_param("status", "saga status", json!({"$ref": "#/components/schemas/SagaStatus"})),
                    query_param("definition", "definition name", string()),
                    query_param("tenant_id", "tenant id", string()),
                    limit_param(),
                    query_param("cursor", "next_cursor of the previous page", uuid()),
                    query_param("order", "newest (default), or stalled: unfinished sagas, the longest without a transition first", json!({"enum": ["newest", "stalled"]})),
                ],
                "responses": {"200": ok("a page", "SagaList")}})),
            "post": secured(json!({
                "summary": "Start a saga",
                "parameters": [idempotency_key_header(), query_param("wait", "answer once the saga is terminal, waiting at most this long (at most 60s)", json!({"type": "string", "pattern": WAIT_PATTERN}))],
                "requestBody": body("StartSaga", true),
                "responses": {
                    "201": ok("started", "Saga"),
                    "200": ok("replayed (header Idempotent-Replayed: true)", "Saga"),
                    "409": problem("Idempotency-Key reused with a different body"),
                    "422": problem("invalid request, unknown definition or version, or a concurrency key that does not render"),
                }
            })),
        },
        "/v1/sagas/{id}": {
            "parameters": [saga_id()],
            "get": secured(json!({"summary": "One saga",
                "parameters": [query_param("wait", "long-poll up to this long (at most 60s) until the saga is terminal", json!({"type": "string", "pattern": WAIT_PATTERN}))],
                "responses": {"200": ok("saga", "Saga")}})),
        },
        "/v1/sagas/{id}/events": {
            "parameters": [saga_id()],
            "get": secured(json!({"summary": "History, oldest first",
                "parameters": [limit_param(), query_param("cursor", "next_cursor of the previous page", json!({"type": "integer", "minimum": 0, "maximum": i64::MAX}))],
                "responses": {"200": ok("events", "EventList")}})),
        },
        "/v1/sagas/{id}/blockers": {
            "parameters": [saga_id()],
            "get": secured(json!({"summary": "Everything that holds the saga now: backoff, signal, timer, child, branches, callback, concurrency, breaker, lease, deadline, queued, operator",
                "responses": {"200": ok("blockers", "Blockers")}})),
        },
        "/v1/sagas/{id}/retry": {
            "parameters": [saga_id()],
            "post": secured(json!({"summary": "Resume a FAILED saga (a tenant saga's retry moves its tenant back to MIGRATING)", "responses": {"202": ok("resumed", "Saga"), "409": problem("not FAILED")}})),
        },
        "/v1/sagas/{id}/cancel": {
            "parameters": [saga_id()],
            "post": secured(json!({"summary": "Cancel: stop going forward and compensate what may have happened (error kind cancelled)", "responses": {"202": ok("cancel requested", "Saga"), "409": problem("terminal, or past a succeeded pivot")}})),
        },
        "/v1/sagas/{id}/signals/{name}": {
            "parameters": [saga_id(), path_param("name", "signal name a step of the saga waits for", string())],
            "post": secured(json!({"summary": "Deliver a signal; buffered until the saga reaches the step, whose output it becomes",
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JsonValue"}}}},
                "responses": {"202": {"description": "buffered"}, "409": problem("saga is terminal"), "422": problem("no step of the saga waits for this signal")}})),
        },
        "/v1/callbacks/{token}": {
            "parameters": [path_param("token", "the single-use token from X-Saga-Callback-Url", string())],
            "post": {"summary": "Complete an async step (no bearer token: the callback token is the capability)",
                "requestBody": body("Callback", true),
                "responses": {"200": {"description": "recorded"}, "404": problem("unknown or already used token"), "422": problem("invalid callback")}},
        },
        "/v1/callbacks/{token}/heartbeat": {
            "parameters": [path_param("token", "the single-use token from X-Saga-Callback-Url", string())],
            "post": {"summary": "Extend the async step's heartbeat timeout", "responses": {"200": {"description": "extended"}, "404": problem("unknown or already used token")}},
        },
    });
    if let (Some(paths), Value::Object(tenants)) = (paths.as_object_mut(), tenant_paths()) {
        paths.extend(tenants);
        complete_responses(paths);
    }
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {"title": "Sagaplane", "version": env!("CARGO_PKG_VERSION"), "description": "Durable saga orchestrator and tenant control plane"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        },
        "paths": paths,
    });
    refuse_nul_everywhere(&mut document);
    document
}

/// States, on every schema of `value`, that no string holds NUL (the server refuses one with
/// 400 wherever it reads JSON): free text gets [`NO_NUL_PATTERN`], and an object's keys and the
/// values of properties it does not name are NUL-free too. A string with a pattern, an enum, a
/// const or a format says already which characters it takes (the patterns here exclude NUL).
fn refuse_nul_everywhere(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let types: Vec<&str> = match map.get("type") {
                Some(Value::String(t)) => vec![t.as_str()],
                Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            let (is_string, is_object) = (types.contains(&"string"), types.contains(&"object"));
            if is_string && !["pattern", "enum", "const", "format"].iter().any(|k| map.contains_key(*k)) {
                map.insert("pattern".into(), json!(NO_NUL_PATTERN));
            }
            if is_object && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), json!({"$ref": "#/components/schemas/JsonValue"}));
            }
            if is_object && !map.contains_key("propertyNames") {
                map.insert("propertyNames".into(), json!({"pattern": NO_NUL_PATTERN}));
            }
            for child in map.values_mut() {
                refuse_nul_everywhere(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(refuse_nul_everywhere),
        _ => {}
    }
}

/// A time bound of a bulk filter.
fn filter_time() -> Value {
    nullable(json!({"type": "string", "format": "date-time"}))
}

/// One saga action's body: its filter's status limited to what the action applies to.
fn saga_action(action: &str, statuses: Value, signal: bool) -> Value {
    let text = nullable(json!({"type": "string", "minLength": 1, "maxLength": 200, "pattern": NON_BLANK_PATTERN}));
    let filter = json!({"type": "object", "additionalProperties": false, "properties": {
        "definition": text, "version": nullable(json!({"type": "integer", "minimum": 1, "maximum": i32::MAX})),
        "status": nullable(json!({"enum": statuses})), "tenant_id": text,
        "created_after": filter_time(), "created_before": filter_time(),
        "updated_after": filter_time(), "updated_before": filter_time(),
        "error_contains": nullable(json!({"type": "string", "maxLength": super::routes::jobs::ERROR_CONTAINS_MAX_CHARS, "pattern": NON_BLANK_PATTERN})),
    }});
    let mut properties = json!({"action": {"const": action}, "filter": nullable(filter), "dry_run": nullable(json!({"type": "boolean"}))});
    let mut required = vec!["action"];
    if signal {
        properties["signal"] = json!({"type": "object", "additionalProperties": false, "required": ["name"], "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": saga_store::SIGNAL_NAME_MAX},
            "data": {"$ref": "#/components/schemas/JsonValue"}}});
        required.push("signal");
    }
    json!({"type": "object", "additionalProperties": false, "required": required, "properties": properties})
}

/// The upgrade action's body: the sagas of one version of one definition, moved to `version`
/// (default: the latest).
fn upgrade_action() -> Value {
    let mut action = saga_action("upgrade", json!(["PENDING", "EXECUTING"]), false);
    action["required"] = json!(["action", "filter"]);
    action["properties"]["filter"] = action["properties"]["filter"]["anyOf"]
        .as_array()
        .and_then(|choices| choices.iter().find(|c| c["type"] == "object"))
        .cloned()
        .unwrap_or(Value::Null);
    action["properties"]["filter"]["required"] = json!(["definition", "version"]);
    action["properties"]["version"] = nullable(json!({"type": "integer", "minimum": 1, "maximum": i32::MAX,
        "description": "the version to move to; default the latest"}));
    action
}

/// One delivery action's body: replay takes dead deliveries, cancel pending ones.
fn delivery_action(action: &str, status: &str) -> Value {
    let filter = json!({"type": "object", "additionalProperties": false, "properties": {
        "subscription_id": nullable(uuid()), "status": nullable(json!({"const": status})),
        "created_after": filter_time(), "created_before": filter_time()}});
    json!({"type": "object", "additionalProperties": false, "required": ["action"], "properties": {
        "action": {"const": action}, "filter": nullable(filter), "dry_run": nullable(json!({"type": "boolean"}))}})
}

fn schemas() -> Value {
    let name = json!({"type": "string", "maxLength": 200, "pattern": NON_BLANK_PATTERN});
    let contact = json!({"type": "object", "additionalProperties": false, "required": ["name", "email", "role"], "properties": {
        "name": {"type": "string", "maxLength": 254, "pattern": NON_BLANK_PATTERN},
        "email": {"type": "string", "maxLength": 254, "pattern": EMAIL_PATTERN},
        "role": {"type": "string", "maxLength": 254, "pattern": NON_BLANK_PATTERN},
    }});
    let domains = json!({"type": "array", "maxItems": LIST_ITEMS_MAX, "items": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": DOMAIN_PATTERN}});
    let contacts = json!({"type": "array", "maxItems": LIST_ITEMS_MAX, "items": contact});
    let metadata = json!({"$ref": "#/components/schemas/JsonObject", "description": format!("at most {} KiB of JSON", METADATA_MAX_BYTES / 1024)});
    let duration =
        json!({"type": "string", "pattern": DURATION_PATTERN, "description": "a duration: 250ms, 5s, 2m, 1h, 30d"});
    let retry = json!({"type": "object", "additionalProperties": false, "properties": {
        "max_attempts": {"type": "integer", "minimum": 1}, "initial_interval": duration, "multiplier": {"type": "number", "minimum": 1},
        "max_interval": duration, "jitter": {"type": "number", "minimum": 0, "maximum": 1}}});
    json!({
        "SagaStatus": {"enum": ["PENDING", "EXECUTING", "COMPLETED", "COMPENSATING", "COMPENSATED", "FAILED"]},
        "TenantStatus": {"enum": ["PROVISIONING", "MIGRATING", "ACTIVE", "PROVISION_ERROR", "MIGRATION_ERROR", "SUSPENDED", "DEPROVISIONING", "DELETED"]},
        "Tier": {"enum": ["pooled", "bridge", "silo"]},
        "StorageMode": {"enum": ["pooled", "schema", "database"]},
        "SlaTier": {"enum": ["basic", "standard", "premium"]},
        "CreateTenant": {"type": "object", "additionalProperties": false, "required": ["id", "name"], "properties": {
            "id": tenant_id(), "name": name,
            "tier": nullable(json!({"$ref": "#/components/schemas/Tier"})),
            "storage_mode": nullable(json!({"$ref": "#/components/schemas/StorageMode", "description": "defaults by tier where the tenant storage offers it; the embedded SQLite storage offers only database"})),
            "sla_tier": nullable(json!({"$ref": "#/components/schemas/SlaTier"})),
            "domains": domains, "contacts": contacts, "metadata": metadata
        }},
        "PatchTenant": {"type": "object", "additionalProperties": false, "properties": {
            "name": nullable(name.clone()), "sla_tier": nullable(json!({"$ref": "#/components/schemas/SlaTier"})),
            "domains": domains, "contacts": contacts, "metadata": metadata
        }},
        "TenantUser": {"type": "object", "additionalProperties": false, "required": ["email", "name"], "properties": {
            "email": {"type": "string", "maxLength": 254, "pattern": EMAIL_PATTERN}, "name": name, "role": nullable(json!({"enum": ["admin", "member"]}))
        }},
        "CreateApiKey": {"type": "object", "additionalProperties": false, "properties": {"name": nullable(name.clone())}},
        "CreateSubscription": {"type": "object", "additionalProperties": false, "required": ["events"],
                               "oneOf": [{"required": ["url"]}, {"required": ["nats"]}], "properties": {
            "url": {"type": "string", "maxLength": 2048, "pattern": format!("^https?://{HOST_AND_PORT_PATTERN}(/[^\\s]*)?$"),
                    "description": "http(s) URL the events are POSTed to; give this or nats"},
            "nats": {"type": "object", "additionalProperties": false, "required": ["url", "subject"],
                     "description": "a NATS JetStream subject the events are published to; give this or url", "properties": {
                "url": {"type": "string", "maxLength": 2048, "pattern": format!("^(nats|tls)://{HOST_AND_PORT_PATTERN}$")},
                "subject": {"type": "string", "maxLength": 255, "pattern": "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$",
                            "description": "a subject a JetStream stream listens on (no wildcards)"}
            }},
            "events": {"type": "array", "minItems": 1, "maxItems": 100, "items": {"$ref": "#/components/schemas/EventFilter"}},
            "rate_limit_per_s": {"type": ["integer", "null"], "minimum": 1, "maximum": 10000},
            "tenant_id": {"anyOf": [{"type": "null"}, {"type": "string", "pattern": TENANT_ID_PATTERN}],
                          "description": "admin only: a subscription of one tenant's events, made for it by the operator (managed: the tenant sees it, only the operator changes it)"}
        }},
        "EventFilter": {"type": "string", "maxLength": 100, "pattern": "^(\\*|[a-z0-9_-]+(\\.[a-z0-9_-]+)+)$",
                        "description": "\"*\", one of Sagaplane's event types, or a custom type (a dot; not tenant./saga./subscription.)"},
        "PatchSubscription": {"type": "object", "additionalProperties": false, "properties": {
            "events": {"type": "array", "minItems": 1, "maxItems": 100, "items": {"$ref": "#/components/schemas/EventFilter"}},
            "status": {"type": "string", "enum": ["active", "disabled"]},
            "rate_limit_per_s": {"type": ["integer", "null"], "minimum": 1, "maximum": 10000}
        }},
        "Recover": {"type": "object", "additionalProperties": false, "required": ["since"], "properties": {
            "since": {"type": "string", "format": "date-time", "description": "dead deliveries of events since then go back to pending"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "description": "at most this many (and at most 1000) in one call, oldest first"}
        }},
        "Rollout": {"type": "object", "additionalProperties": false, "properties": {
            "service": {"type": ["string", "null"], "pattern": SERVICE_PATTERN, "description": "one service's migrations; all when absent or null"},
            "concurrency": {"type": ["integer", "null"], "minimum": 1, "maximum": 1000}
        }},
        "Tenant": {"type": "object", "properties": {
            "id": {"type": "string"}, "name": {"type": "string"}, "tier": {"type": "string"}, "storage_mode": {"type": "string"},
            "sla_tier": {"type": "string"}, "status": {"$ref": "#/components/schemas/TenantStatus"},
            "domains": {"type": "array"}, "contacts": {"type": "array"}, "metadata": {"type": "object"}, "storage": {},
            "migrations": {"type": "array"}, "saga_id": {"type": ["string", "null"]}, "error": {}, "created_at": {"type": "string"}, "updated_at": {"type": "string"},
            "delete_at": {"type": ["string", "null"], "description": "deleted with a grace period: when its storage is destroyed (restorable until then)"}
        }},
        "Blockers": {"type": "object", "properties": {
            "saga_id": {"type": "string"}, "status": {"type": "string"}, "runnable": {"type": "boolean"},
            "blockers": {"type": "array", "items": {"type": "object", "properties": {
                "kind": {"enum": ["backoff", "signal", "timer", "child", "branches", "callback", "concurrency", "breaker", "lease", "deadline", "scheduled", "queued", "operator"]},
                "detail": {"type": "string"}, "until": {"type": ["string", "null"]}}}}
        }},
        "TenantList": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Tenant"}}, "next_cursor": {"type": ["string", "null"]}}},
        "TenantAccepted": {"type": "object", "properties": {"tenant": {"$ref": "#/components/schemas/Tenant"}, "saga_id": {"type": "string"}}},
        "Callback": {"oneOf": [
            {"type": "object", "additionalProperties": false, "required": ["status"], "properties": {
                "status": {"const": "succeeded"}, "output": {"$ref": "#/components/schemas/JsonValue", "description": "the step's output (any JSON)"}}},
            {"type": "object", "additionalProperties": false, "required": ["status"], "properties": {
                "status": {"const": "failed"}, "error": {"type": "string"},
                "retryable": {"type": "boolean", "description": "false (default): a definite failure; true: retried like a 5xx"}}},
        ]},
        "SagaActions": {"oneOf": [
            saga_action("cancel", json!(["PENDING", "EXECUTING", "COMPENSATING"]), false),
            saga_action("retry", json!(["FAILED"]), false),
            saga_action("signal", json!(["PENDING", "EXECUTING", "COMPENSATING"]), true),
            upgrade_action(),
        ]},
        "DeliveryActions": {"oneOf": [delivery_action("replay", "dead"), delivery_action("cancel", "pending")]},
        "Matched": {"type": "object", "required": ["matched"], "properties": {"matched": {"type": "integer", "minimum": 0}}},
        "JobStarted": {"type": "object", "required": ["job_id", "matched"], "properties": {
            "job_id": uuid(), "matched": {"type": "integer", "minimum": 0}, "status": {"type": "string"}}},
        "Job": {"type": "object", "required": ["id", "kind", "action", "status", "matched", "done", "failed", "created_at"], "properties": {
            "id": uuid(), "kind": {"enum": ["sagas", "deliveries"]}, "action": string(),
            "status": {"enum": ["running", "succeeded", "failed", "cancelled"]},
            "matched": {"type": "integer"}, "done": {"type": "integer"}, "failed": {"type": "integer"},
            "errors": {"type": "array", "description": "the first failed items, each with why the action did not apply"},
            "created_at": {"type": "string", "format": "date-time"}, "finished_at": {"type": ["string", "null"], "format": "date-time"}}},
        "Problem": {"type": "object", "required": ["type", "title", "status", "detail"], "properties": {
            "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "object", "properties": {"path": {"type": "string"}, "message": {"type": "string"}}}}
        }},
        "DefinitionDocument": {"type": "object", "additionalProperties": false, "required": ["steps"], "properties": {
            "name": {"type": "string", "pattern": DEFINITION_NAME_PATTERN}, "description": {"type": "string"},
            "timeout": duration, "on_timeout": {"enum": ["compensate", "fail"]},
            "retention": {"type": "string", "pattern": DURATION_PATTERN, "description": "how long a finished saga of this definition is kept (at least 1s); default SAGAPLANE_RETENTION"},
            "defaults": {"type": "object", "additionalProperties": false, "properties": {"timeout": duration, "retry": retry, "compensation_retry": retry}},
            "concurrency": {"type": "object", "additionalProperties": false, "required": ["key", "limit"], "properties": {"key": {"type": "string"}, "limit": {"type": "integer", "minimum": 1}}},
            "steps": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/DefinitionStep"}}
        }},
        "DefinitionStep": {"type": "object", "additionalProperties": false, "required": ["name"],
            "description": "a step (name, action, …), or a group in its place: parallel (lists of steps; the API also takes one without a name, called parallel_<position>) or for_each (a template rendering a list, with step or steps); see docs/definitions.md",
            "properties": {
            "name": {"type": "string", "pattern": saga_core::STEP_NAME_PATTERN}, "description": {"type": "string"},
            "action": {"$ref": "#/components/schemas/JsonObject", "description": "exactly one of http, grpc, builtin, signal, sleep ({duration} or {until}), saga ({definition, version?, input?})"},
            "compensation": {"anyOf": [{"type": "null"}, {"$ref": "#/components/schemas/JsonObject"}]}, "timeout": duration, "heartbeat_timeout": duration,
            "retry": retry, "compensation_retry": retry, "pivot": {"type": "boolean"},
            "on_failure": {"enum": ["compensate", "fail"], "description": "fail: the saga fails forward to FAILED for an operator's retry instead of compensating"},
            "when": {"type": "string", "description": "template: the step is skipped when it renders false, empty or 0"},
            "parallel": {"type": "array", "description": "a group: 2 to 20 branches, each a list of steps, run at once", "items": {"type": "array"}},
            "for_each": {"type": "string", "description": "a group: a template rendering a list; {{ item }} and {{ index }} in its steps"},
            "concurrency": {"type": "integer", "description": "a group's branches or items at once (1 to 100)"},
            "step": {"type": "object", "description": "for_each: the step run per item"},
            "steps": {"type": "array", "description": "for_each: the steps run per item, in order"}
        }},
        "Definition": {"type": "object", "properties": {
            "name": {"type": "string"}, "version": {"type": "integer"}, "definition": {"$ref": "#/components/schemas/DefinitionDocument"},
            "created_at": {"type": "string", "format": "date-time"},
            "warnings": {"type": "array", "items": {"type": "object", "properties": {"path": {"type": "string"}, "message": {"type": "string"}}}}
        }},
        "DefinitionList": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Definition"}}, "next_cursor": {"type": ["string", "null"]}}},
        "StartSaga": {"type": "object", "additionalProperties": false, "required": ["definition"], "properties": {
            "definition": {"type": "string", "pattern": DEFINITION_NAME_PATTERN},
            "version": {"type": ["integer", "null"], "minimum": 1, "maximum": i32::MAX},
            "input": {"$ref": "#/components/schemas/JsonValue", "description": "any JSON; {} when absent"},
            "tenant_id": {"oneOf": [{"type": "null"}, tenant_id()]},
            "priority": {"type": ["integer", "null"], "minimum": -1000, "maximum": 1000}
        }},
        "Step": {"type": "object", "properties": {
            "name": {"type": "string"}, "status": {"enum": ["PENDING", "EXECUTING", "SUCCEEDED", "FAILED", "COMPENSATING", "COMPENSATED", "COMPENSATION_FAILED", "SKIPPED"]},
            "attempts": {"type": "integer"}, "compensation_attempts": {"type": "integer"}, "output": {}, "error": {"type": ["string", "null"]},
            "started_at": {"type": ["string", "null"]}, "finished_at": {"type": ["string", "null"]}, "compensated_at": {"type": ["string", "null"]}
        }},
        "Saga": {"type": "object", "properties": {
            "id": {"type": "string", "format": "uuid"}, "definition": {"type": "string"}, "version": {"type": "integer"},
            "status": {"$ref": "#/components/schemas/SagaStatus"},
            "tenant_id": {"type": ["string", "null"]}, "input": {}, "output": {},
            "error": {"type": ["object", "null"], "properties": {"step": {"type": ["string", "null"]}, "kind": {"type": "string"}, "message": {"type": "string"}}},
            "steps": {"type": "array", "items": {"$ref": "#/components/schemas/Step"}},
            "progress": {"type": "object", "properties": {"completed_steps": {"type": "integer"}, "total_steps": {"type": "integer"}, "current_step": {"type": ["string", "null"]}, "percent": {"type": "integer"}}},
            "parent": {"type": ["object", "null"], "description": "a child saga: the saga and step that started it", "properties": {"saga_id": {"type": "string"}, "step": {"type": "string"}}},
            "created_at": {"type": "string"}, "updated_at": {"type": "string"}, "completed_at": {"type": ["string", "null"]}
        }},
        "SagaList": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Saga"}}, "next_cursor": {"type": ["string", "null"]}}},
        "Event": {"type": "object", "properties": {
            "seq": {"type": "integer"}, "type": {"type": "string"}, "step": {"type": ["string", "null"]}, "attempt": {"type": ["integer", "null"]},
            "worker": {"type": ["string", "null"]}, "data": {}, "at": {"type": "string"}
        }},
        "EventList": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}, "next_cursor": {"type": ["string", "null"]}}},
        "JsonValue": {"description": "any JSON; no string or key holds the NUL character", "anyOf": [
            {"type": ["null", "boolean", "number"]},
            {"type": "string", "pattern": NO_NUL_PATTERN},
            {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
            {"$ref": "#/components/schemas/JsonObject"},
        ]},
        "JsonObject": {"type": "object", "propertyNames": {"pattern": NO_NUL_PATTERN},
                       "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}},
    })
}

/// The tenant control-plane paths (docs/api.md, "Tenants" and "Events out"), merged into the
/// document.
fn tenant_paths() -> Value {
    let id = || path_param("id", "tenant id", tenant_id());
    json!({
        "/v1/tenants": {
            "get": secured(json!({"summary": "Tenants (a tenant key sees a list of one)",
                "parameters": [
                    query_param("status", "filter by status", json!({"$ref": "#/components/schemas/TenantStatus"})),
                    query_param("tier", "filter by tier", json!({"$ref": "#/components/schemas/Tier"})),
                    limit_param(),
                    query_param("cursor", "next_cursor of the previous page", string()),
                ],
                "responses": {"200": ok("tenants", "TenantList")}})),
            "post": secured(json!({"summary": "Onboard a tenant: record it and start tenant.provision (admin)",
                "parameters": [idempotency_key_header()],
                "requestBody": body("CreateTenant", true),
                "responses": {"202": ok("provisioning started", "TenantAccepted"), "200": ok("idempotent replay", "TenantAccepted"),
                    "409": problem("the id exists, or the Idempotency-Key was used with another body"),
                    "422": problem("invalid tenant, or a storage mode the tenant storage does not offer (the message lists those it does)")}})),
        },
        "/v1/tenants/{id}": {
            "parameters": [id()],
            "get": secured(json!({"summary": "One tenant", "responses": {"200": ok("tenant", "Tenant")}})),
            "patch": secured(json!({"summary": "Change name, sla_tier, domains, contacts, metadata",
                "requestBody": body("PatchTenant", true),
                "responses": {"200": ok("tenant", "Tenant"), "409": problem("tenant is DELETED"), "422": problem("invalid patch")}})),
            "delete": secured(json!({"summary": "Deprovision: drop storage, revoke keys; the record stays DELETED (admin). With a grace period an ACTIVE or SUSPENDED tenant is SUSPENDED until delete_at, restorable until then",
                "parameters": [query_param("grace", "how long the tenant stays restorable before its storage is destroyed (default SAGAPLANE_TENANT_DELETE_GRACE, 0s: at once)", json!({"type": "string", "pattern": super::routes::tenants::GRACE_PATTERN, "examples": ["7d"]}))],
                "responses": {"202": {"description": "{saga_id, status, delete_at}"}, "400": problem("grace is not a duration"), "409": problem("provisioning still running, already being deleted, or already deleted")}})),
        },
        "/v1/tenants/{id}/provisioning-status": {
            "parameters": [id()],
            "get": secured(json!({"summary": "Status of the tenant and its latest saga", "responses": {"200": {"description": "{status, saga_id, saga_status, progress, current_step}"}}})),
        },
        "/v1/tenants/{id}/cancel-provisioning": {
            "parameters": [id()],
            "post": secured(json!({"summary": "Cancel provisioning: compensate what was created (admin)", "responses": {"202": {"description": "cancel requested"}, "409": problem("not provisioning")}})),
        },
        "/v1/tenants/{id}/retry-migration": {
            "parameters": [id()],
            "post": secured(json!({"summary": "Resume the failed migration of a tenant in MIGRATION_ERROR: an operator retry of the saga that failed (admin)", "responses": {"202": {"description": "{tenant, saga_id}"}, "409": problem("not MIGRATION_ERROR")}})),
        },
        "/v1/tenants/{id}/suspend": {
            "parameters": [id()],
            "post": secured(json!({"summary": "ACTIVE -> SUSPENDED; the tenant's database role can no longer log in (admin)", "responses": {"200": ok("tenant", "Tenant"), "409": problem("not ACTIVE")}})),
        },
        "/v1/tenants/{id}/resume": {
            "parameters": [id()],
            "post": secured(json!({"summary": "SUSPENDED -> ACTIVE (admin)", "responses": {"200": ok("tenant", "Tenant"), "409": problem("not SUSPENDED")}})),
        },
        "/v1/tenants/{id}/restore": {
            "parameters": [id()],
            "post": secured(json!({"summary": "Within a deletion's grace period: back to ACTIVE, the deletion cancelled (admin)", "responses": {"200": ok("tenant", "Tenant"), "409": problem("not deleted with a grace period, or the grace has ended")}})),
        },
        "/v1/tenants/{id}/users": {
            "parameters": [id()],
            "get": secured(json!({"summary": "The tenant's users", "responses": {"200": {"description": "{items}"}}})),
            "post": secured(json!({"summary": "Add a user {email, name, role: admin|member}", "requestBody": body("TenantUser", true),
                "responses": {"201": {"description": "user"}, "409": problem("email taken, or tenant DELETED"), "422": problem("invalid user")}})),
        },
        "/v1/tenants/{id}/users/{user_id}": {
            "parameters": [id(), path_param("user_id", "user id", uuid())],
            "put": secured(json!({"summary": "Replace a user", "requestBody": body("TenantUser", true),
                "responses": {"200": {"description": "user"}, "409": problem("email taken, or tenant DELETED"), "422": problem("invalid user")}})),
            "delete": secured(json!({"summary": "Remove a user", "responses": {"204": {"description": "removed"}, "409": problem("tenant DELETED")}})),
        },
        "/v1/tenants/{id}/api-keys": {
            "parameters": [id()],
            "post": secured(json!({"summary": "Create a tenant API key; the token is shown once", "requestBody": body("CreateApiKey", false),
                "responses": {"201": {"description": "{id, name, token}"}, "409": problem("tenant DELETED"), "422": problem("invalid key request")}})),
        },
        "/v1/tenants/{id}/api-keys/{key_id}": {
            "parameters": [id(), path_param("key_id", "key id", uuid())],
            "delete": secured(json!({"summary": "Revoke a key", "responses": {"204": {"description": "revoked"}, "409": problem("tenant DELETED")}})),
        },
        "/v1/migrations": {
            "get": secured(json!({"summary": "Tenant migration sets per service (admin)", "responses": {"200": {"description": "{services}"}, "503": problem("the migrations folder cannot be read")}})),
        },
        "/v1/migrations/rollout": {
            "post": secured(json!({"summary": "Start tenant.migrate for every ACTIVE tenant behind, at most `concurrency` at once (admin); no body = every service",
                "requestBody": body("Rollout", false),
                "responses": {"202": {"description": "{rollout_id, saga_id, concurrency, sagas: [], progress}: the rollout saga started; tenant sagas start in the background"}, "422": problem("invalid rollout, or no such service"), "503": problem("the migrations folder cannot be read")}})),
        },
        "/v1/migrations/rollouts/{rollout_id}": {
            "parameters": [path_param("rollout_id", "rollout_id from POST /v1/migrations/rollout", uuid())],
            "get": secured(json!({"summary": "A rollout's progress: sagas by status (admin)", "responses": {"200": {"description": "{rollout_id, fan_out, total, finished, done, statuses, sagas}"}, "404": problem("unknown rollout")}})),
        },
        "/v1/subscriptions": {
            "get": secured(json!({"summary": "Subscriptions (a tenant key sees its tenant's)", "parameters": [limit_param(), query_param("cursor", "next_cursor of the previous page", uuid())],
                "responses": {"200": {"description": "{items, next_cursor}"}}})),
            "post": secured(json!({"summary": "Subscribe a URL to events; the secret is in this answer only", "requestBody": body("CreateSubscription", true),
                "responses": {"201": {"description": "{id, url, nats, events, tenant_id, managed, status, rate_limit_per_s, created_at, updated_at, secret}"}, "409": problem("the tenant has made as many subscriptions as it may"), "422": problem("invalid subscription")}})),
        },
        "/v1/subscriptions/{id}": {
            "parameters": [path_param("id", "subscription id", uuid())],
            "get": secured(json!({"summary": "A subscription (never its secret)", "responses": {"200": {"description": "subscription"}}})),
            "patch": secured(json!({"summary": "Change events, status or rate limit", "requestBody": body("PatchSubscription", true),
                "responses": {"200": {"description": "subscription"}, "422": problem("invalid change")}})),
            "delete": secured(json!({"summary": "Delete; its pending deliveries end dead", "responses": {"204": {"description": "deleted"}}})),
        },
        "/v1/subscriptions/{id}/rotate-secret": {
            "parameters": [path_param("id", "subscription id", uuid())],
            "post": secured(json!({"summary": "A new secret; for 24 h deliveries are signed by the old one too", "responses": {"200": {"description": "{secret, previous_secret_valid_until}"}}})),
        },
        "/v1/subscriptions/{id}/recover": {
            "parameters": [path_param("id", "subscription id", uuid())],
            "post": secured(json!({"summary": "Dead deliveries of it since a time go back to pending, at most 1000 a call", "requestBody": body("Recover", true),
                "responses": {"202": {"description": "{replayed, more}"}, "422": problem("since is not a time")}})),
        },
        "/v1/deliveries": {
            "get": secured(json!({"summary": "Deliveries, newest first (a tenant key sees its subscriptions')",
                "parameters": [query_param("status", "pending | succeeded | dead", json!({"type": "string", "enum": ["pending", "succeeded", "dead"]})),
                               query_param("subscription_id", "one subscription's", uuid()), limit_param(), query_param("cursor", "next_cursor of the previous page", uuid())],
                "responses": {"200": {"description": "{items, next_cursor}"}}})),
        },
        "/v1/deliveries/{id}": {
            "parameters": [path_param("id", "delivery id", uuid())],
            "get": secured(json!({"summary": "A delivery with each attempt's status code, error and duration", "responses": {"200": {"description": "delivery with attempts"}}})),
        },
        "/v1/sagas/actions": {
            "post": secured(json!({"summary": "One action (cancel, retry, signal) on every saga a filter matches: counted with dry_run, otherwise a durable job",
                "requestBody": body("SagaActions", true),
                "responses": {"200": ok("dry run: how many sagas the action would apply to", "Matched"), "202": ok("the job, started", "JobStarted"),
                    "422": problem("invalid action or filter, or more than 100,000 sagas match")}})),
        },
        "/v1/deliveries/actions": {
            "post": secured(json!({"summary": "One action (replay, cancel) on every delivery a filter matches: counted with dry_run, otherwise a durable job",
                "requestBody": body("DeliveryActions", true),
                "responses": {"200": ok("dry run: how many deliveries the action would apply to", "Matched"), "202": ok("the job, started", "JobStarted"),
                    "422": problem("invalid action or filter, or more than 100,000 deliveries match")}})),
        },
        "/v1/jobs/{id}": {
            "parameters": [path_param("id", "job id", uuid())],
            "get": secured(json!({"summary": "A bulk job's progress", "responses": {"200": ok("the job", "Job")}})),
        },
        "/v1/jobs/{id}/cancel": {
            "parameters": [path_param("id", "job id", uuid())],
            "post": secured(json!({"summary": "Stop a running job; the items it has not reached are left alone",
                "responses": {"202": ok("the job, cancelled", "Job"), "409": problem("the job has finished")}})),
        },
        "/v1/deliveries/{id}/replay": {
            "parameters": [path_param("id", "delivery id", uuid())],
            "post": secured(json!({"summary": "A dead delivery goes out again (same webhook-id)", "responses": {"202": {"description": "delivery"}, "409": problem("the delivery is not dead")}})),
        },
        "/v1/webhooks/crm": {
            "post": {"summary": "CRM ingress (Standard Webhooks signature, 5-minute window, dedupe by webhook-id)",
                "parameters": [
                    {"name": "webhook-id", "in": "header", "required": true, "schema": string()},
                    {"name": "webhook-timestamp", "in": "header", "required": true, "schema": string()},
                    {"name": "webhook-signature", "in": "header", "required": true, "schema": string()},
                ],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {"type": {"const": "customer.created"}, "data": {"type": "object", "properties": {"tenant": {"$ref": "#/components/schemas/CreateTenant"}}, "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}}}}}}},
                "responses": {"202": ok("provisioning started", "TenantAccepted"), "200": {"description": "replay: the first result"},
                    "401": problem("bad or missing signature, or stale timestamp"), "404": problem("not configured (SAGAPLANE_CRM_WEBHOOK_SECRET unset)"),
                    "409": problem("the tenant id exists"), "422": problem("unsupported event type or invalid tenant")}},
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_documented() {
        let doc = super::document();
        for (method, path) in crate::ROUTES {
            assert!(doc["paths"][path][method].is_object(), "{method} {path} missing from OpenAPI");
        }
        let documented: usize = doc["paths"]
            .as_object()
            .map(|paths| {
                paths
                    .values()
                    .map(|p| p.as_object().map(|o| o.keys().filter(|k| *k != "parameters").count()).unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
        assert_eq!(documented, crate::ROUTES.len(), "OpenAPI documents routes that do not exist");
    }

    /// The operations `docs/api.md` describes: its `### `METHOD /path`` headings.
    fn reference_headings(reference: &str) -> Vec<(String, String)> {
        reference
            .lines()
            .filter_map(|line| line.strip_prefix("### `")?.strip_suffix('`'))
            .filter_map(|heading| heading.split_once(' '))
            .map(|(method, path)| (method.to_ascii_lowercase(), path.to_string()))
            .collect()
    }

    /// The user's API reference covers every operation of `/openapi.json`, and names none that
    /// does not exist: adding a route without documenting it fails here.
    #[test]
    fn the_api_reference_documents_every_operation() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.md");
        let reference = std::fs::read_to_string(path).expect("docs/api.md");
        let headings = reference_headings(&reference);
        let doc = super::document();
        let mut operations = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys().filter(|k| *k != "parameters") {
                operations.push((method.clone(), path.clone()));
            }
        }
        let undocumented: Vec<_> = operations.iter().filter(|op| !headings.contains(op)).collect();
        assert!(undocumented.is_empty(), "docs/api.md has no `### `METHOD /path`` section for {undocumented:?}");
        let stale: Vec<_> = headings.iter().filter(|h| !operations.contains(h)).collect();
        assert!(stale.is_empty(), "docs/api.md documents operations /openapi.json lacks: {stale:?}");
    }

    #[test]
    fn an_undocumented_operation_is_reported() {
        let headings = reference_headings("# API\n\n### `GET /v1/sagas`\nList.\n### `POST /v1/sagas`\n");
        assert_eq!(headings, vec![("get".into(), "/v1/sagas".into()), ("post".into(), "/v1/sagas".into())]);
        assert!(!headings.contains(&("get".to_string(), "/v1/sagas/{id}".to_string())));
    }
}
