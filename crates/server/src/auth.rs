//! Who is calling, for every `/v1/*` route except the callback and webhook routes (their
//! capability is the token in the path / the signature): the platform-admin token (compared in
//! constant time), or a tenant API key (looked up by the SHA-256 of the presented token, so the
//! token itself is never stored). Handlers then ask the [`Principal`] what it may do: admin-only
//! routes refuse tenant keys with 403; a tenant key reaching for another tenant's resources
//! gets 404, so existence does not leak across tenants.
//!
//! Anyone can present a `sptk_…` token, so looking them up is bounded: a token found unknown is
//! remembered for a minute (a repeated bad token costs no query), and at most
//! [`KEY_LOOKUPS_CONCURRENT_MAX`] lookups run at once, so a flood of random tokens can hold only
//! that many database connections while everything else goes on.

use std::collections::HashMap;
use std::sync::Mutex;

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

/// Unknown tenant tokens remembered at most (by hash); past it the expired ones go, then all.
pub const UNKNOWN_TOKENS_MAX: usize = 10_000;
/// How long a token found unknown is answered 401 without a lookup.
pub const UNKNOWN_TOKEN_TTL_MS: i64 = 60_000;
/// Tenant-key lookups running at once, per process.
pub const KEY_LOOKUPS_CONCURRENT_MAX: usize = 4;
/// `saga_auth_tenant_key_lookups_total{result="found|unknown|unknown_remembered"}`.
pub const TENANT_KEY_LOOKUPS_TOTAL: &str = "saga_auth_tenant_key_lookups_total";

/// Bounds what presented tenant tokens cost.
pub struct KeyLookups {
    /// Token hash → when the memory of it being unknown expires.
    unknown: Mutex<HashMap<String, i64>>,
    permits: tokio::sync::Semaphore,
}

impl KeyLookups {
    pub fn new() -> Self {
        metrics::describe_counter!(TENANT_KEY_LOOKUPS_TOTAL, "Tenant API tokens presented, by what their lookup found");
        for result in ["found", "unknown", "unknown_remembered"] {
            metrics::counter!(TENANT_KEY_LOOKUPS_TOTAL, "result" => result).increment(0);
        }
        KeyLookups { unknown: Mutex::default(), permits: tokio::sync::Semaphore::new(KEY_LOOKUPS_CONCURRENT_MAX) }
    }

    fn is_known_unknown(&self, hash: &str, now_ms: i64) -> bool {
        let Ok(unknown) = self.unknown.lock() else { return false };
        unknown.get(hash).is_some_and(|expires_ms| *expires_ms > now_ms)
    }

    fn remember_unknown(&self, hash: String, now_ms: i64) {
        let Ok(mut unknown) = self.unknown.lock() else { return };
        if unknown.len() >= UNKNOWN_TOKENS_MAX {
            unknown.retain(|_, expires_ms| *expires_ms > now_ms);
        }
        if unknown.len() >= UNKNOWN_TOKENS_MAX {
            unknown.clear();
        }
        unknown.insert(hash, now_ms.saturating_add(UNKNOWN_TOKEN_TTL_MS));
    }

    /// The key with this token hash, or None (remembered) when there is none.
    async fn find(&self, state: &AppState, hash: String) -> Result<Option<saga_store::TenantKeyRecord>, ApiError> {
        let now_ms = state.clock.now_ms();
        if self.is_known_unknown(&hash, now_ms) {
            metrics::counter!(TENANT_KEY_LOOKUPS_TOTAL, "result" => "unknown_remembered").increment(1);
            return Ok(None);
        }
        let found = {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| ApiError::Unavailable("authentication is shutting down".into()))?;
            state.store.tenant_key_by_hash(&hash).await?
        };
        let result = if found.is_some() { "found" } else { "unknown" };
        metrics::counter!(TENANT_KEY_LOOKUPS_TOTAL, "result" => result).increment(1);
        if found.is_none() {
            self.remember_unknown(hash, now_ms);
        }
        Ok(found)
    }
}

impl Default for KeyLookups {
    fn default() -> Self {
        Self::new()
    }
}

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
        let Some(key) = state.key_lookups.find(&state, token_hash(presented)).await? else {
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
