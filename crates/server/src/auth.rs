//! Who is calling, for every `/v1/*` route except the callback and webhook routes (their
//! capability is the token in the path / the signature): the platform-admin token (compared in
//! constant time), or a tenant API key (looked up by the SHA-256 of the presented token, so the
//! token itself is never stored). Handlers then ask the [`Principal`] what it may do: admin-only
//! routes refuse tenant keys with 403; a tenant key reaching for another tenant's resources
//! gets 404, so existence does not leak across tenants. Looking tenant tokens up is bounded
//! ([`crate::key_lookups`]).

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use saga_core::tenant::TenantStatus;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// Tenant API tokens start with this, so a leaked one is recognisable.
pub const TENANT_TOKEN_PREFIX: &str = "sptk_";

/// The caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Tenant { tenant_id: String },
}

impl Principal {
    /// Platform-admin routes.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Tenant { .. } => Err(ApiError::Forbidden("this route needs the platform-admin token".into())),
        }
    }

    /// A route about tenant `id`: a tenant key reaches only its own (else 404, as if absent).
    pub fn require_tenant(&self, id: &str) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Tenant { tenant_id } if tenant_id == id => Ok(()),
            Principal::Tenant { .. } => Err(ApiError::NotFound(format!("tenant {id:?} does not exist"))),
        }
    }

    /// The tenant a tenant key is confined to (None for the admin).
    pub fn tenant_scope(&self) -> Option<&str> {
        match self {
            Principal::Admin => None,
            Principal::Tenant { tenant_id } => Some(tenant_id),
        }
    }

    /// Whether a saga with this `tenant_id` is visible.
    pub fn sees_saga(&self, saga_tenant: Option<&str>) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Tenant { tenant_id } => saga_tenant == Some(tenant_id.as_str()),
        }
    }
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized)?;
    let principal = if constant_time_eq(&Sha256::digest(presented.as_bytes()), &state.admin_token_sha256) {
        Principal::Admin
    } else if presented.starts_with(TENANT_TOKEN_PREFIX) && presented.len() <= 128 {
        let from = request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0.ip().to_canonical());
        let Some(key) =
            state.key_lookups.find(state.store.as_ref(), state.clock.now_ms(), token_hash(presented), from).await?
        else {
            return Err(ApiError::Unauthorized);
        };
        // A suspended or deleted tenant's keys open nothing.
        let tenant = state.store.tenant_get(&key.tenant_id).await?;
        if matches!(tenant.status, TenantStatus::Suspended | TenantStatus::Deprovisioning | TenantStatus::Deleted) {
            return Err(ApiError::Forbidden(format!("tenant {} is {}", tenant.id, tenant.status.as_str())));
        }
        Principal::Tenant { tenant_id: key.tenant_id }
    } else {
        return Err(ApiError::Unauthorized);
    };
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
