//! Route handlers, one module per resource.

pub mod control;
pub mod definitions;
pub mod ops;
pub mod sagas;
pub mod tenants;

use axum::http::HeaderMap;

/// The request's content type, lowercased, without parameters.
pub(crate) fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}
