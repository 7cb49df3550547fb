//! The HTTP API: routes, admin-token auth, problem+json errors, the 1 MiB body limit,
//! health/readiness, Prometheus metrics, OpenAPI, and the dashboard page.
//!
//! Only this crate knows HTTP. Handlers validate everything before touching the store, so bad
//! input gets a 4xx and changes nothing; a 500 says nothing internal and the cause is logged once.
#![recursion_limit = "256"]

mod auth;
pub mod error;
mod key_lookups;
pub mod observe;
pub mod openapi;
pub mod profile;
mod routes;
mod state;
mod views;

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::Router;
use tower_http::trace::TraceLayer;

pub use error::ApiError;
pub use routes::tenants::onboard;
pub use state::{AppState, SubscriptionRules, Tenancy, TENANT_SUBSCRIPTIONS_MAX_DEFAULT};

/// Request bodies over this size get 413.
pub const BODY_LIMIT_BYTES: usize = 1024 * 1024;
/// The longest `?wait=` a reader may ask for.
pub const WAIT_MAX: Duration = Duration::from_secs(60);

/// Every route as `(method, path)`, the source of truth the OpenAPI test checks against.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/debug/pprof/profile"),
    ("get", "/ui/"),
    ("get", "/v1/status"),
    ("get", "/v1/definitions"),
    ("get", "/v1/definitions/{name}"),
    ("put", "/v1/definitions/{name}"),
    ("get", "/v1/definitions/{name}/versions/{version}"),
    ("post", "/v1/definitions/{name}/check"),
    ("get", "/v1/sagas"),
    ("post", "/v1/sagas"),
    ("get", "/v1/sagas/{id}"),
    ("get", "/v1/sagas/{id}/events"),
    ("get", "/v1/sagas/{id}/blockers"),
    ("post", "/v1/sagas/{id}/retry"),
    ("post", "/v1/sagas/{id}/cancel"),
    ("post", "/v1/sagas/{id}/signals/{name}"),
    ("post", "/v1/callbacks/{token}"),
    ("post", "/v1/callbacks/{token}/heartbeat"),
    ("get", "/v1/tenants"),
    ("post", "/v1/tenants"),
    ("get", "/v1/tenants/{id}"),
    ("patch", "/v1/tenants/{id}"),
    ("delete", "/v1/tenants/{id}"),
    ("get", "/v1/tenants/{id}/provisioning-status"),
    ("post", "/v1/tenants/{id}/cancel-provisioning"),
    ("post", "/v1/tenants/{id}/retry-migration"),
    ("post", "/v1/tenants/{id}/suspend"),
    ("post", "/v1/tenants/{id}/resume"),
    ("post", "/v1/tenants/{id}/restore"),
    ("get", "/v1/tenants/{id}/users"),
    ("post", "/v1/tenants/{id}/users"),
    ("put", "/v1/tenants/{id}/users/{user_id}"),
    ("delete", "/v1/tenants/{id}/users/{user_id}"),
    ("post", "/v1/tenants/{id}/api-keys"),
    ("delete", "/v1/tenants/{id}/api-keys/{key_id}"),
    ("get", "/v1/migrations"),
    ("post", "/v1/migrations/rollout"),
    ("get", "/v1/migrations/rollouts/{rollout_id}"),
    ("get", "/v1/subscriptions"),
    ("post", "/v1/subscriptions"),
    ("get", "/v1/subscriptions/{id}"),
    ("patch", "/v1/subscriptions/{id}"),
    ("delete", "/v1/subscriptions/{id}"),
    ("post", "/v1/subscriptions/{id}/rotate-secret"),
    ("post", "/v1/subscriptions/{id}/recover"),
    ("get", "/v1/deliveries"),
    ("get", "/v1/deliveries/{id}"),
    ("post", "/v1/deliveries/{id}/replay"),
    ("post", "/v1/sagas/actions"),
    ("post", "/v1/deliveries/actions"),
    ("get", "/v1/jobs/{id}"),
    ("post", "/v1/jobs/{id}/cancel"),
    ("post", "/v1/webhooks/crm"),
];

/// The full API router.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/status", get(routes::ops::status))
        .route("/definitions", get(routes::definitions::list))
        .route("/definitions/{name}", get(routes::definitions::latest).put(routes::definitions::put))
        .route("/definitions/{name}/versions/{version}", get(routes::definitions::version))
        .route("/definitions/{name}/check", post(routes::definitions::check))
        .route("/sagas", get(routes::sagas::list).post(routes::sagas::create))
        .route("/sagas/{id}", get(routes::sagas::get))
        .route("/sagas/{id}/events", get(routes::sagas::events))
        .route("/sagas/{id}/blockers", get(routes::sagas::blockers))
        .route("/sagas/{id}/retry", post(routes::sagas::retry))
        .route("/sagas/{id}/cancel", post(routes::control::cancel))
        .route("/sagas/{id}/signals/{name}", post(routes::control::signal))
        .route("/tenants", get(routes::tenants::list).post(routes::tenants::create))
        .route("/tenants/{id}", get(routes::tenants::get).patch(routes::tenants::patch).delete(routes::tenants::delete))
        .route("/tenants/{id}/provisioning-status", get(routes::tenants::provisioning_status))
        .route("/tenants/{id}/cancel-provisioning", post(routes::tenants::cancel_provisioning))
        .route("/tenants/{id}/retry-migration", post(routes::tenants::retry_migration))
        .route("/tenants/{id}/suspend", post(routes::tenants::suspend))
        .route("/tenants/{id}/resume", post(routes::tenants::resume))
        .route("/tenants/{id}/restore", post(routes::tenants::restore))
        .route("/tenants/{id}/users", get(routes::tenants::users_list).post(routes::tenants::users_create))
        .route(
            "/tenants/{id}/users/{user_id}",
            put(routes::tenants::users_update).delete(routes::tenants::users_delete),
        )
        .route("/tenants/{id}/api-keys", post(routes::tenants::keys_create))
        .route("/tenants/{id}/api-keys/{key_id}", delete(routes::tenants::keys_delete))
        .route("/migrations", get(routes::tenants::migrations))
        .route("/migrations/rollout", post(routes::tenants::rollout))
        .route("/migrations/rollouts/{rollout_id}", get(routes::tenants::rollout_progress))
        .route("/subscriptions", get(routes::deliveries::list).post(routes::deliveries::create))
        .route(
            "/subscriptions/{id}",
            get(routes::deliveries::get).patch(routes::deliveries::patch).delete(routes::deliveries::delete),
        )
        .route("/subscriptions/{id}/rotate-secret", post(routes::deliveries::rotate_secret))
        .route("/subscriptions/{id}/recover", post(routes::deliveries::recover))
        .route("/deliveries", get(routes::deliveries::deliveries))
        .route("/deliveries/{id}", get(routes::deliveries::delivery))
        .route("/deliveries/{id}/replay", post(routes::deliveries::replay))
        .route("/sagas/actions", post(routes::jobs::sagas))
        .route("/deliveries/actions", post(routes::jobs::deliveries))
        .route("/jobs/{id}", get(routes::jobs::get))
        .route("/jobs/{id}/cancel", post(routes::jobs::cancel))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate))
        // Added after the auth layer: the callback token is the capability (docs/api.md,
        // "Conventions").
        .route("/callbacks/{token}", post(routes::control::callback))
        .route("/callbacks/{token}/heartbeat", post(routes::control::heartbeat))
        // Verified by its signature instead of a bearer token.
        .route("/webhooks/crm", post(routes::tenants::crm_webhook));
    Router::new()
        .route("/health", get(routes::ops::health))
        .route("/ready", get(routes::ops::ready))
        .route("/metrics", get(routes::ops::metrics))
        .route("/openapi.json", get(routes::ops::openapi))
        .route("/ui", get(routes::ops::ui_redirect))
        .route("/ui/", get(routes::ops::ui))
        .nest("/v1", v1)
        .route(
            "/debug/pprof/profile",
            get(profile::profile).route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate)),
        )
        .route_layer(axum::middleware::from_fn(routes::common::refuse_nul_in_query))
        // After routing, so the route template is known (not the path: ids would explode it).
        .route_layer(axum::middleware::from_fn(observe::http_request))
        .fallback(routes::ops::not_found)
        .method_not_allowed_fallback(routes::ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// An ops-only router for `sagaplane worker --listen`: health, readiness, metrics.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(routes::ops::health))
        .route("/ready", get(routes::ops::ready))
        .route("/metrics", get(routes::ops::metrics))
        .fallback(routes::ops::not_found)
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The peer's address reaches handlers (`ConnectInfo`): failed tenant-key lookups are
    // counted per source address.
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, service).with_graceful_shutdown(shutdown).await
}
