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
    let mut document = json!({
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
    });
    if let (Some(paths), Value::Object(tenants)) = (document["paths"].as_object_mut(), tenant_paths()) {
        paths.extend(tenants);
    }
    document
}

fn schemas() -> Value {
    json!({
        "CreateTenant": {"type": "object", "required": ["id", "name"], "properties": {
            "id": {"type": "string", "pattern": "^[a-z][a-z0-9-]{1,61}[a-z0-9]$"}, "name": {"type": "string"},
            "tier": {"enum": ["pooled", "bridge", "silo"]}, "storage_mode": {"enum": ["pooled", "schema", "database"]},
            "sla_tier": {"enum": ["basic", "standard", "premium"]}, "domains": {"type": "array", "items": {"type": "string"}},
            "contacts": {"type": "array", "items": {"type": "object"}}, "metadata": {"type": "object"}
        }},
        "Tenant": {"type": "object", "properties": {
            "id": {"type": "string"}, "name": {"type": "string"}, "tier": {"type": "string"}, "storage_mode": {"type": "string"},
            "sla_tier": {"type": "string"}, "status": {"enum": ["PROVISIONING", "MIGRATING", "ACTIVE", "PROVISION_ERROR", "MIGRATION_ERROR", "SUSPENDED", "DEPROVISIONING", "DELETED"]},
            "domains": {"type": "array"}, "contacts": {"type": "array"}, "metadata": {"type": "object"}, "storage": {},
            "migrations": {"type": "array"}, "saga_id": {"type": ["string", "null"]}, "error": {}, "created_at": {"type": "string"}, "updated_at": {"type": "string"}
        }},
        "TenantList": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Tenant"}}, "next_cursor": {"type": ["string", "null"]}}},
        "TenantAccepted": {"type": "object", "properties": {"tenant": {"$ref": "#/components/schemas/Tenant"}, "saga_id": {"type": "string"}}},
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

/// The tenant control-plane paths (API.md §6, §7), merged into the document.
fn tenant_paths() -> Value {
    json!({
            "/v1/tenants": {
                "parameters": [query_param("status", "filter by status"), query_param("tier", "filter by tier"), query_param("limit", "page size"), query_param("cursor", "next_cursor of the previous page")],
                "get": secured(json!({"summary": "Tenants (a tenant key sees a list of one)", "responses": {"200": ok("tenants", "TenantList")}})),
                "post": secured(json!({"summary": "Onboard a tenant: record it and start tenant.provision (admin)",
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string", "maxLength": 255}}],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateTenant"}}}},
                    "responses": {"202": ok("provisioning started", "TenantAccepted"), "200": ok("idempotent replay", "TenantAccepted"), "409": problem("id exists"), "422": problem("invalid tenant")}})),
            },
            "/v1/tenants/{id}": {
                "parameters": [path_param("id", "tenant id")],
                "get": secured(json!({"summary": "One tenant", "responses": {"200": ok("tenant", "Tenant"), "404": problem("unknown tenant")}})),
                "patch": secured(json!({"summary": "Change name, sla_tier, domains, contacts, metadata", "responses": {"200": ok("tenant", "Tenant"), "422": problem("invalid patch")}})),
                "delete": secured(json!({"summary": "Deprovision: drop storage, revoke keys; the record stays DELETED (admin)", "responses": {"202": {"description": "deprovisioning started"}, "409": problem("not in a state that can be deleted")}})),
            },
            "/v1/tenants/{id}/provisioning-status": {
                "parameters": [path_param("id", "tenant id")],
                "get": secured(json!({"summary": "Status of the tenant and its latest saga", "responses": {"200": {"description": "{status, saga_id, saga_status, progress, current_step}"}}})),
            },
            "/v1/tenants/{id}/cancel-provisioning": {
                "parameters": [path_param("id", "tenant id")],
                "post": secured(json!({"summary": "Cancel provisioning: compensate what was created (admin)", "responses": {"202": {"description": "cancel requested"}, "409": problem("not provisioning")}})),
            },
            "/v1/tenants/{id}/retry-migration": {
                "parameters": [path_param("id", "tenant id")],
                "post": secured(json!({"summary": "Resume migrations of a tenant in MIGRATION_ERROR (admin)", "responses": {"202": {"description": "tenant.migrate started"}, "409": problem("not MIGRATION_ERROR")}})),
            },
            "/v1/tenants/{id}/suspend": {
                "parameters": [path_param("id", "tenant id")],
                "post": secured(json!({"summary": "ACTIVE -> SUSPENDED; the tenant's database role can no longer log in (admin)", "responses": {"200": ok("tenant", "Tenant"), "409": problem("not ACTIVE")}})),
            },
            "/v1/tenants/{id}/resume": {
                "parameters": [path_param("id", "tenant id")],
                "post": secured(json!({"summary": "SUSPENDED -> ACTIVE (admin)", "responses": {"200": ok("tenant", "Tenant"), "409": problem("not SUSPENDED")}})),
            },
            "/v1/tenants/{id}/users": {
                "parameters": [path_param("id", "tenant id")],
                "get": secured(json!({"summary": "The tenant's users", "responses": {"200": {"description": "{items}"}}})),
                "post": secured(json!({"summary": "Add a user {email, name, role: admin|member}", "responses": {"201": {"description": "user"}, "409": problem("email taken"), "422": problem("invalid user")}})),
            },
            "/v1/tenants/{id}/users/{user_id}": {
                "parameters": [path_param("id", "tenant id"), path_param("user_id", "user id")],
                "put": secured(json!({"summary": "Replace a user", "responses": {"200": {"description": "user"}, "404": problem("unknown user")}})),
                "delete": secured(json!({"summary": "Remove a user", "responses": {"204": {"description": "removed"}, "404": problem("unknown user")}})),
            },
            "/v1/tenants/{id}/api-keys": {
                "parameters": [path_param("id", "tenant id")],
                "post": secured(json!({"summary": "Create a tenant API key; the token is shown once", "responses": {"201": {"description": "{id, name, token}"}}})),
            },
            "/v1/tenants/{id}/api-keys/{key_id}": {
                "parameters": [path_param("id", "tenant id"), path_param("key_id", "key id")],
                "delete": secured(json!({"summary": "Revoke a key", "responses": {"204": {"description": "revoked"}, "404": problem("unknown key")}})),
            },
            "/v1/migrations": {
                "get": secured(json!({"summary": "Tenant migration sets per service (admin)", "responses": {"200": {"description": "{services}"}}})),
            },
            "/v1/migrations/rollout": {
                "post": secured(json!({"summary": "Start tenant.migrate for every ACTIVE tenant behind, at most `concurrency` at once (admin)", "responses": {"202": {"description": "{rollout_id, sagas}"}, "422": problem("invalid rollout")}})),
            },
            "/v1/migrations/rollouts/{rollout_id}": {
                "parameters": [path_param("rollout_id", "rollout_id from POST /v1/migrations/rollout")],
                "get": secured(json!({"summary": "A rollout's progress: sagas by status (admin)", "responses": {"200": {"description": "{rollout_id, total, finished, done, statuses, sagas}"}, "404": problem("unknown rollout")}})),
            },
            "/v1/webhooks/crm": {
                "post": {"summary": "CRM ingress (Standard Webhooks signature, 5-minute window, dedupe by webhook-id)",
                    "responses": {"202": ok("provisioning started", "TenantAccepted"), "200": {"description": "replay: the first result"}, "401": problem("bad signature or stale timestamp"), "404": problem("not configured")}},
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
}
