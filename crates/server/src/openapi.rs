//! The OpenAPI 3.1 document of every route, written out by hand (see ARCHITECTURE.md for why
//! not a derive crate); a test checks it against [`crate::ROUTES`].

use serde_json::{json, Value};

fn problem(description: &str) -> Value {
    json!({"description": description, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

fn ok(description: &str, schema: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

fn query_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": "string"}})
}

fn secured(mut operation: Value) -> Value {
    operation["security"] = json!([{"bearer": []}]);
    let responses = &mut operation["responses"];
    responses["401"] = problem("missing or unknown bearer token");
    operation
}

/// The document served at `/openapi.json`.
pub fn document() -> Value {
    let list_params = vec![
        query_param("limit", "page size (default 50, at most 500)"),
        query_param("cursor", "next_cursor of the previous page"),
    ];
    let mut saga_list_params = vec![
        query_param("status", "PENDING, EXECUTING, COMPLETED, COMPENSATING, COMPENSATED or FAILED"),
        query_param("definition", "definition name"),
        query_param("tenant_id", "tenant id"),
    ];
    saga_list_params.extend(list_params.clone());
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Sagaplane", "version": env!("CARGO_PKG_VERSION"), "description": "Durable saga orchestrator and tenant control plane"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        },
        "paths": {
            "/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
            "/ready": {"get": {"summary": "Readiness: the store answers and its schema is current", "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition format", "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/ui/": {"get": {"summary": "Dashboard", "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}},
            "/v1/definitions": {"get": secured(json!({
                "summary": "Latest version of every definition",
                "responses": {"200": ok("definitions", "DefinitionList")}
            }))},
            "/v1/definitions/{name}": {
                "parameters": [path_param("name", "definition name, ^[a-z][a-z0-9_.-]{0,99}$")],
                "get": secured(json!({"summary": "Latest version", "responses": {"200": ok("definition", "Definition"), "404": problem("unknown definition")}})),
                "put": secured(json!({
                    "summary": "Create a new version (201) unless identical to the latest (200)",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DefinitionDocument"}}, "application/yaml": {"schema": {"$ref": "#/components/schemas/DefinitionDocument"}}}},
                    "responses": {
                        "200": ok("identical to the latest version", "Definition"),
                        "201": ok("new version", "Definition"),
                        "400": problem("malformed JSON or YAML"),
                        "413": problem("body over 1 MiB"),
                        "415": problem("unsupported content type"),
                        "422": problem("invalid definition; errors[] has every problem with its JSON Pointer"),
                    }
                })),
            },
            "/v1/definitions/{name}/versions/{version}": {
                "parameters": [path_param("name", "definition name"), path_param("version", "version number")],
                "get": secured(json!({"summary": "One version", "responses": {"200": ok("definition", "Definition"), "400": problem("bad version"), "404": problem("unknown version")}})),
            },
            "/v1/sagas": {
                "get": secured(json!({"summary": "List sagas, newest first", "parameters": saga_list_params, "responses": {"200": ok("a page", "SagaList"), "400": problem("bad filter")}})),
                "post": secured(json!({
                    "summary": "Start a saga",
                    "parameters": [
                        {"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string", "maxLength": 255}},
                        query_param("wait", "answer once the saga is terminal, waiting at most this long (at most 60s)")
                    ],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/StartSaga"}}}},
                    "responses": {
                        "201": ok("started", "Saga"),
                        "200": ok("replayed (header Idempotent-Replayed: true)", "Saga"),
                        "400": problem("malformed body or Idempotency-Key"),
                        "409": problem("Idempotency-Key reused with a different body"),
                        "413": problem("body over 1 MiB"),
                        "422": problem("invalid request or unknown definition"),
                    }
                })),
            },
            "/v1/sagas/{id}": {
                "parameters": [path_param("id", "saga id (UUID)"), query_param("wait", "long-poll up to this duration (at most 60s) until the saga is terminal")],
                "get": secured(json!({"summary": "One saga", "responses": {"200": ok("saga", "Saga"), "404": problem("unknown saga")}})),
            },
            "/v1/sagas/{id}/events": {
                "parameters": [path_param("id", "saga id (UUID)"), query_param("limit", "page size"), query_param("cursor", "next_cursor of the previous page")],
                "get": secured(json!({"summary": "History, oldest first", "responses": {"200": ok("events", "EventList"), "404": problem("unknown saga")}})),
            },
            "/v1/sagas/{id}/retry": {
                "parameters": [path_param("id", "saga id (UUID)")],
                "post": secured(json!({"summary": "Resume a FAILED saga", "responses": {"202": ok("resumed", "Saga"), "404": problem("unknown saga"), "409": problem("not FAILED")}})),
            },
            "/v1/sagas/{id}/cancel": {
                "parameters": [path_param("id", "saga id (UUID)")],
                "post": secured(json!({"summary": "Cancel: stop going forward and compensate what may have happened (error kind cancelled)", "responses": {"202": ok("cancel requested", "Saga"), "404": problem("unknown saga"), "409": problem("terminal, or past a succeeded pivot")}})),
            },
            "/v1/sagas/{id}/signals/{name}": {
                "parameters": [path_param("id", "saga id (UUID)"), path_param("name", "signal name a step of the saga waits for")],
                "post": secured(json!({"summary": "Deliver a signal; buffered until the saga reaches the step, whose output it becomes",
                    "requestBody": {"required": false, "content": {"application/json": {"schema": {}}}},
                    "responses": {"202": {"description": "buffered"}, "400": problem("malformed JSON"), "404": problem("unknown saga"), "409": problem("saga is terminal"), "422": problem("no step waits for this signal")}})),
            },
            "/v1/callbacks/{token}": {
                "parameters": [path_param("token", "the single-use token from X-Saga-Callback-Url")],
                "post": {"summary": "Complete an async step (no bearer token: the callback token is the capability)",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Callback"}}}},
                    "responses": {"200": {"description": "recorded"}, "400": problem("malformed JSON"), "404": problem("unknown or already used token"), "422": problem("invalid callback")}},
            },
            "/v1/callbacks/{token}/heartbeat": {
                "parameters": [path_param("token", "the single-use token from X-Saga-Callback-Url")],
                "post": {"summary": "Extend the async step's heartbeat timeout", "responses": {"200": {"description": "extended"}, "404": problem("unknown or already used token")}},
            },
        }
    })
}

fn schemas() -> Value {
    json!({
        "Callback": {"type": "object", "required": ["status"], "properties": {
            "status": {"enum": ["succeeded", "failed"]}, "output": {}, "error": {"type": "string"}, "retryable": {"type": "boolean"}
        }},
        "Problem": {"type": "object", "required": ["type", "title", "status", "detail"], "properties": {
            "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "object", "properties": {"path": {"type": "string"}, "message": {"type": "string"}}}}
        }},
        "DefinitionDocument": {"type": "object", "required": ["steps"], "properties": {
            "name": {"type": "string"}, "timeout": {"type": "string"}, "on_timeout": {"enum": ["compensate", "fail"]},
            "defaults": {"type": "object"}, "concurrency": {"type": "object"},
            "steps": {"type": "array", "items": {"type": "object", "required": ["name", "action"]}}
        }},
        "Definition": {"type": "object", "properties": {
            "name": {"type": "string"}, "version": {"type": "integer"}, "definition": {"$ref": "#/components/schemas/DefinitionDocument"},
            "created_at": {"type": "string", "format": "date-time"}
        }},
        "DefinitionList": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Definition"}}, "next_cursor": {"type": ["string", "null"]}}},
        "StartSaga": {"type": "object", "required": ["definition"], "properties": {
            "definition": {"type": "string"}, "version": {"type": "integer"}, "input": {}, "tenant_id": {"type": ["string", "null"]}, "priority": {"type": "integer"}
        }},
        "Step": {"type": "object", "properties": {
            "name": {"type": "string"}, "status": {"enum": ["PENDING", "EXECUTING", "SUCCEEDED", "FAILED", "COMPENSATING", "COMPENSATED", "COMPENSATION_FAILED", "SKIPPED"]},
            "attempts": {"type": "integer"}, "compensation_attempts": {"type": "integer"}, "output": {}, "error": {"type": ["string", "null"]},
            "started_at": {"type": ["string", "null"]}, "finished_at": {"type": ["string", "null"]}, "compensated_at": {"type": ["string", "null"]}
        }},
        "Saga": {"type": "object", "properties": {
            "id": {"type": "string", "format": "uuid"}, "definition": {"type": "string"}, "version": {"type": "integer"},
            "status": {"enum": ["PENDING", "EXECUTING", "COMPLETED", "COMPENSATING", "COMPENSATED", "FAILED"]},
            "tenant_id": {"type": ["string", "null"]}, "input": {}, "output": {},
            "error": {"type": ["object", "null"], "properties": {"step": {"type": ["string", "null"]}, "kind": {"type": "string"}, "message": {"type": "string"}}},
            "steps": {"type": "array", "items": {"$ref": "#/components/schemas/Step"}},
            "progress": {"type": "object", "properties": {"completed_steps": {"type": "integer"}, "total_steps": {"type": "integer"}, "current_step": {"type": ["string", "null"]}, "percent": {"type": "integer"}}},
            "created_at": {"type": "string"}, "updated_at": {"type": "string"}, "completed_at": {"type": ["string", "null"]}
        }},
        "SagaList": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Saga"}}, "next_cursor": {"type": ["string", "null"]}}},
        "Event": {"type": "object", "properties": {
            "seq": {"type": "integer"}, "type": {"type": "string"}, "step": {"type": ["string", "null"]}, "attempt": {"type": ["integer", "null"]},
            "worker": {"type": ["string", "null"]}, "data": {}, "at": {"type": "string"}
        }},
        "EventList": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}, "next_cursor": {"type": ["string", "null"]}}},
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
}
