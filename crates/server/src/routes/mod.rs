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

/// The largest `?limit=` accepted (anything above `LIST_LIMIT_MAX` is capped to it).
pub(crate) const QUERY_LIMIT_MAX: u64 = i32::MAX as u64;

/// `?limit=`: an integer from 1 to [`QUERY_LIMIT_MAX`] (values above 500 are capped at 500), as
/// the OpenAPI document says.
pub(crate) fn query_limit(text: Option<&String>) -> Result<Option<u32>, crate::error::ApiError> {
    let Some(text) = text else {
        return Ok(None);
    };
    match text.parse::<u64>() {
        Ok(n) if (1..=QUERY_LIMIT_MAX).contains(&n) => Ok(Some(n.min(u64::from(saga_store::LIST_LIMIT_MAX)) as u32)),
        _ => Err(crate::error::ApiError::BadRequest(format!(
            "invalid query: limit must be an integer from 1 to {QUERY_LIMIT_MAX} (values above {} are capped)",
            saga_store::LIST_LIMIT_MAX
        ))),
    }
}

/// A JSON number that is an integer, written `3` or `3.0` (JSON Schema's `integer` admits both).
pub(crate) fn json_integer(value: &serde_json::Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        value.as_f64().filter(|f| f.fract() == 0.0 && (i64::MIN as f64..=i64::MAX as f64).contains(f)).map(|f| f as i64)
    })
}
