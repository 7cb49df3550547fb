//! One error type for every handler, rendered as RFC 9457 problem+json.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use saga_core::FieldError;
use saga_runtime::{DefinitionError, OperatorError};
use saga_store::StoreError;
use serde_json::json;

/// An API error: a status, a title, a detail, and for validation the field errors.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or unknown bearer token")]
    Unauthorized,
    /// A signed request (webhook) whose signature or timestamp does not verify.
    #[error("{0}")]
    BadSignature(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{detail}")]
    Validation { detail: String, errors: Vec<FieldError> },
    #[error("{0}")]
    Unavailable(String),
    /// Too many of something from this caller: try again after `retry_after_s`.
    #[error("{detail}")]
    TooManyRequests { detail: String, retry_after_s: u64 },
    /// Logged in full; the client sees only that something went wrong.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn validation(detail: impl Into<String>, errors: Vec<FieldError>) -> Self {
        ApiError::Validation { detail: detail.into(), errors }
    }

    /// One field error.
    pub fn field(path: &str, message: impl Into<String>) -> Self {
        ApiError::Validation {
            detail: "the request is invalid".into(),
            errors: vec![FieldError { path: path.into(), message: message.into() }],
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::BadSignature(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad-request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::BadSignature(_) => "bad-signature",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not-found",
            ApiError::MethodNotAllowed(_) => "method-not-allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge { .. } => "payload-too-large",
            ApiError::UnsupportedMediaType(_) => "unsupported-media-type",
            ApiError::Validation { .. } => "validation",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::TooManyRequests { .. } => "too-many-requests",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("not found".into()),
            StoreError::Conflict(detail) => ApiError::Conflict(detail),
            StoreError::Unavailable(_) => ApiError::Unavailable("the database is unavailable; try again".into()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// A definition that is missing is the request's fault (422, naming the field); one stored that no
/// longer validates is the server's.
impl From<DefinitionError> for ApiError {
    fn from(e: DefinitionError) -> Self {
        match e {
            DefinitionError::NotFound { name, version: Some(v) } => {
                ApiError::field("/version", format!("definition {name:?} has no version {v}"))
            }
            DefinitionError::NotFound { name, version: None } => {
                ApiError::field("/definition", format!("definition {name:?} does not exist"))
            }
            DefinitionError::Invalid { .. } => ApiError::Internal(e.to_string()),
            DefinitionError::Store(e) => e.into(),
        }
    }
}

impl From<tenancy::LifecycleError> for ApiError {
    fn from(e: tenancy::LifecycleError) -> Self {
        use tenancy::LifecycleError;
        match e {
            LifecycleError::Conflict(detail) => ApiError::Conflict(detail),
            LifecycleError::Storage(e) => ApiError::Unavailable(format!("tenant storage: {e}")),
            LifecycleError::Definition(e) => e.into(),
            LifecycleError::Operator(e) => e.into(),
            LifecycleError::Store(e) => e.into(),
        }
    }
}

impl From<OperatorError> for ApiError {
    fn from(e: OperatorError) -> Self {
        match e {
            OperatorError::Conflict(detail) => ApiError::Conflict(detail),
            OperatorError::UnknownSignal { ref waits_for, .. } => {
                let expected = if waits_for.is_empty() { "none".to_string() } else { waits_for.join(", ") };
                ApiError::validation(
                    e.to_string(),
                    vec![FieldError {
                        path: String::new(),
                        message: format!("unknown signal name; the saga waits for: {expected}"),
                    }],
                )
            }
            OperatorError::Definition(e) => e.into(),
            OperatorError::Store(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let self_kind = if matches!(self, ApiError::Unauthorized) { Kind::Bearer } else { Kind::Other };
        if let ApiError::Internal(cause) = &self {
            tracing::error!(%cause, "internal error");
        }
        let title = status.canonical_reason().unwrap_or("Error");
        let mut body = json!({
            "type": format!("https://sagaplane.dev/problems/{}", self.slug()),
            "title": title,
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        if let ApiError::Validation { errors, .. } = &self {
            body["errors"] = json!(errors);
        }
        let mut response = (status, body.to_string()).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/problem+json"));
        if matches!(self_kind, Kind::Bearer) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        if let ApiError::TooManyRequests { retry_after_s, .. } = &self {
            if let Ok(value) = header::HeaderValue::from_str(&retry_after_s.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// Whether a 401 asks for a bearer token (webhooks ask for a signature instead).
enum Kind {
    Bearer,
    Other,
}

/// Maps a body-read rejection (size limit included) to a problem.
pub fn body_rejection(rejection: axum::extract::rejection::BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit: crate::BODY_LIMIT_BYTES }
    } else {
        ApiError::BadRequest(format!("could not read the request body: {rejection}"))
    }
}
