//! Operational endpoints: liveness, readiness, metrics, OpenAPI, the dashboard, fallbacks.

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Extension;
use axum::Json;
use saga_store::SchemaSupport;
use serde_json::{json, Value};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `/ready`: 200 while the store answers, takes writes, and holds a schema this binary supports
/// (its own, or newer by migrations that keep working for it — a rolling upgrade); else 503
/// with the reason.
pub async fn ready(State(state): State<AppState>) -> Response {
    let not_ready = |body: Value| (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    let unavailable = |e: saga_store::StoreError| {
        tracing::warn!(error = %e, "readiness check failed");
        not_ready(json!({"status": "store_unavailable", "reason": "the database does not answer"}))
    };
    // Writable first: a read-only server answers the schema question too.
    match state.store.writable().await {
        Ok(true) => {}
        Ok(false) => {
            return not_ready(json!({"status": "no_writable_primary",
                "reason": "the database answers read-only (a standby, or a primary being demoted)"}))
        }
        Err(e) => return unavailable(e),
    }
    let status = match state.store.schema_status().await {
        Ok(status) => status,
        Err(e) => return unavailable(e),
    };
    match status.support() {
        SchemaSupport::Supported => Json(json!({
            "status": "ready",
            "backend": state.store.backend_name(),
            "schema_version": status.applied,
            "binary_schema_version": status.latest,
        }))
        .into_response(),
        SchemaSupport::Outdated => not_ready(json!({
            "status": "schema_outdated",
            "applied": status.applied,
            "latest": status.latest,
            "reason": format!("the schema is at {} and this binary needs {}; run `sagaplane migrate` or start this binary with migrations", status.applied, status.latest),
        })),
        SchemaSupport::TooNew => not_ready(json!({
            "status": "schema_too_new",
            "applied": status.applied,
            "latest": status.latest,
            "requires": status.newer_requires,
            "reason": format!("the schema is at {}, migrated by a newer binary that keeps working only with binaries from schema {} on; this binary knows {}", status.applied, status.newer_requires, status.latest),
        })),
    }
}

/// `GET /v1/status` (admin): the store, its schema, and how the database is reached.
pub async fn status(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let schema = state.store.schema_status().await?;
    let connection = state.store.connection_status();
    let pool = state.store.pool_status();
    Ok(Json(json!({
        "backend": state.store.backend_name(),
        "schema": {"applied": schema.applied, "binary": schema.latest, "supported": schema.support() == SchemaSupport::Supported},
        "database": {
            "route": connection.route,
            "wakeups": connection.wakeups.mode.as_str(),
            "wakeups_reason": connection.wakeups.reason,
            "pool": {"in_use": pool.in_use, "idle": pool.idle},
        },
    })))
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    let body = without_deleted_subscriptions(&state, body).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// The metrics text without the series of subscriptions deleted since they were recorded (the
/// recorder cannot forget a series; a deleted subscription's must not linger on `/metrics`).
/// Series are labelled with subscription ids, never with text a tenant chose.
async fn without_deleted_subscriptions(state: &AppState, body: String) -> String {
    let labelled: std::collections::BTreeSet<uuid::Uuid> = body.lines().filter_map(subscription_label).collect();
    if labelled.is_empty() {
        return body;
    }
    let ids: Vec<uuid::Uuid> = labelled.into_iter().collect();
    let existing: std::collections::HashSet<uuid::Uuid> = match state.store.subscriptions_existing(&ids).await {
        Ok(existing) => existing.into_iter().collect(),
        // Unknown: show them rather than hide live ones.
        Err(_) => return body,
    };
    let mut kept = String::with_capacity(body.len());
    for line in body.lines().filter(|line| subscription_label(line).is_none_or(|id| existing.contains(&id))) {
        kept.push_str(line);
        kept.push('\n');
    }
    kept
}

/// The `subscription="<uuid>"` label of a metrics line.
fn subscription_label(line: &str) -> Option<uuid::Uuid> {
    let start = line.find("subscription=\"")? + "subscription=\"".len();
    uuid::Uuid::parse_str(line.get(start..start + 36)?).ok()
}

/// The document, with the storage modes this server's tenant storage offers (so a client, and
/// the fuzzer in the test suite, never sends a mode the server must refuse).
pub async fn openapi(State(state): State<AppState>) -> Json<Value> {
    let mut document = crate::openapi::document();
    if let Some(tenancy) = &state.tenancy {
        let offered: Vec<&str> = saga_core::tenant::StorageMode::ALL
            .iter()
            .filter(|mode| tenancy.storage.supports(**mode))
            .map(|mode| mode.as_str())
            .collect();
        document["components"]["schemas"]["StorageMode"]["enum"] = json!(offered);
    }
    Json(document)
}

pub async fn ui_redirect() -> Redirect {
    Redirect::permanent("/ui/")
}

/// The dashboard page.
const UI_PAGE: &str = include_str!("../ui.html");

/// `GET /ui/`: the dashboard, with a Content-Security-Policy that allows exactly its own inline
/// script (by hash) and requests to this origin, and forbids framing (clickjacking) and sniffing.
pub async fn ui() -> Response {
    let headers = [
        (header::CONTENT_SECURITY_POLICY, ui_content_security_policy()),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    (headers, Html(UI_PAGE)).into_response()
}

/// The page's policy: its one inline `<script>` by SHA-256, styles inline, everything else from
/// this origin only.
fn ui_content_security_policy() -> &'static str {
    static POLICY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| {
        use base64::Engine;
        use sha2::{Digest, Sha256};
        let script = UI_PAGE
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map(|(script, _)| script)
            .unwrap_or_default();
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script.as_bytes()));
        format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
    })
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

pub async fn method_not_allowed(uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("method not allowed on {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use crate::ROUTES;

    /// Every API path the dashboard calls (its `'/v1/…'` literals are route templates, filled
    /// by the script; a query string is dropped) is a route the server has.
    #[test]
    fn the_dashboard_only_calls_routes_that_exist() {
        let html = include_str!("../ui.html");
        let called: Vec<&str> = html
            .match_indices("'/v1/")
            .map(|(at, _)| {
                let literal = &html[at + 1..];
                let literal = &literal[..literal.find('\'').unwrap_or(literal.len())];
                literal.split('?').next().unwrap_or(literal)
            })
            .collect();
        assert!(called.len() >= 10, "found {called:?}");
        for path in called {
            assert!(ROUTES.iter().any(|(_, route)| *route == path), "the dashboard calls {path}, which is no route");
        }
    }
}
