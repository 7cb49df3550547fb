//! `http_request_duration_seconds{method, route, status}`: every request that matched a route,
//! labelled by the route's template (`/v1/sagas/{id}`), never by its path, so ids do not make
//! new series.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";

pub fn describe() {
    metrics::describe_histogram!(HTTP_REQUEST_DURATION_SECONDS, "API request duration, by method, route and status");
}

/// Times one request and records it under its route.
pub async fn http_request(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
    let method = request.method().as_str().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    metrics::histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        "method" => method,
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .record(started.elapsed().as_secs_f64());
    response
}
