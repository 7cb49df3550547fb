//! Who is calling, for every `/v1/*` route except the callback and webhook routes (their
//! capability is the token in the path / the signature): the platform-admin token (compared in
//! constant time), or a tenant API key (looked up by the SHA-256 of the presented token, so the
//! token itself is never stored). Handlers then ask the [`Principal`] what it may do: admin-only
//! routes refuse tenant keys with 403; a tenant key reaching for another tenant's resources
//! gets 404, so existence does not leak across tenants.
//!
//! Anyone can present a `sptk_…` token, so looking them up is bounded: a token found unknown is
//! remembered for a minute (a repeated bad token costs no query), at most
//! [`KEY_LOOKUPS_CONCURRENT_MAX`] lookups run at once, so a flood of random tokens can hold only
//! that many database connections while everything else goes on, and a source address whose
//! lookups failed [`FAILED_LOOKUPS_PER_ADDRESS`] times within [`FAILED_LOOKUPS_WINDOW_MS`] is
//! answered 429 without a lookup until the window ends — so a flood from one address stops
//! taking the lookup slots that tenants calling from elsewhere need.

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
/// Failed tenant-key lookups one source address may cause in a window.
pub const FAILED_LOOKUPS_PER_ADDRESS: u32 = 20;
/// The window of [`FAILED_LOOKUPS_PER_ADDRESS`].
pub const FAILED_LOOKUPS_WINDOW_MS: i64 = 60_000;
/// Source addresses counted at most; past it the stale ones go, then all.
pub const FAILING_ADDRESSES_MAX: usize = 10_000;
/// `saga_auth_tenant_key_lookups_total{result="found|unknown|unknown_remembered|throttled"}`.
pub const TENANT_KEY_LOOKUPS_TOTAL: &str = "saga_auth_tenant_key_lookups_total";

/// Bounds what presented tenant tokens cost.
pub struct KeyLookups {
    /// Token hash → when the memory of it being unknown expires.
    unknown: Mutex<HashMap<String, i64>>,
    permits: tokio::sync::Semaphore,
    /// Source address → (its window's start, failed lookups in it).
    failing: Mutex<HashMap<std::net::IpAddr, (i64, u32)>>,
}

impl KeyLookups {
    pub fn new() -> Self {
        metrics::describe_counter!(TENANT_KEY_LOOKUPS_TOTAL, "Tenant API tokens presented, by what their lookup found");
        for result in ["found", "unknown", "unknown_remembered", "throttled"] {
            metrics::counter!(TENANT_KEY_LOOKUPS_TOTAL, "result" => result).increment(0);
        }
        KeyLookups {
            unknown: Mutex::default(),
            permits: tokio::sync::Semaphore::new(KEY_LOOKUPS_CONCURRENT_MAX),
            failing: Mutex::default(),
        }
    }

    /// When `address` may look up again (ms), if its failures used up its window.
    fn throttled_until(&self, address: std::net::IpAddr, now_ms: i64) -> Option<i64> {
        let failing = self.failing.lock().ok()?;
        let (start, count) = failing.get(&address)?;
        let until = start.saturating_add(FAILED_LOOKUPS_WINDOW_MS);
        (*count >= FAILED_LOOKUPS_PER_ADDRESS && until > now_ms).then_some(until)
    }

    fn count_failure(&self, address: std::net::IpAddr, now_ms: i64) {
        let Ok(mut failing) = self.failing.lock() else { return };
        if failing.len() >= FAILING_ADDRESSES_MAX && !failing.contains_key(&address) {
            failing.retain(|_, (start, _)| start.saturating_add(FAILED_LOOKUPS_WINDOW_MS) > now_ms);
            if failing.len() >= FAILING_ADDRESSES_MAX {
                failing.clear();
            }
        }
        let entry = failing.entry(address).or_insert((now_ms, 0));
        if entry.0.saturating_add(FAILED_LOOKUPS_WINDOW_MS) <= now_ms {
            *entry = (now_ms, 0);
        }
        entry.1 = entry.1.saturating_add(1);
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

    /// The key with this token hash, or None (remembered) when there is none; 429 for a source
    /// address whose lookups failed too often.
    async fn find(
        &self,
        state: &AppState,
        hash: String,
        from: Option<std::net::IpAddr>,
    ) -> Result<Option<saga_store::TenantKeyRecord>, ApiError> {
        let now_ms = state.clock.now_ms();
        if self.is_known_unknown(&hash, now_ms) {
            metrics::counter!(TENANT_KEY_LOOKUPS_TOTAL, "result" => "unknown_remembered").increment(1);
            return Ok(None);
        }
        if let Some(until) = from.and_then(|address| self.throttled_until(address, now_ms)) {
            metrics::counter!(TENANT_KEY_LOOKUPS_TOTAL, "result" => "throttled").increment(1);
            return Err(ApiError::TooManyRequests {
                detail: format!(
                    "too many unknown API keys from this address ({FAILED_LOOKUPS_PER_ADDRESS} in {} s); try again later",
                    FAILED_LOOKUPS_WINDOW_MS / 1000
                ),
                retry_after_s: u64::try_from((until - now_ms + 999) / 1000).unwrap_or(1).max(1),
            });
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
            if let Some(address) = from {
                self.count_failure(address, now_ms);
            }
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
        let from = request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0.ip().to_canonical());
        let Some(key) = state.key_lookups.find(&state, token_hash(presented), from).await? else {
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
