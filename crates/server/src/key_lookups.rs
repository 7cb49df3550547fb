//! What presented tenant tokens may cost. Anyone can present a `sptk_…` token, so looking them
//! up is bounded: a token found unknown is remembered for a minute (a repeated bad token costs no
//! query), at most [`KEY_LOOKUPS_CONCURRENT_MAX`] lookups run at once, so a flood of random
//! tokens can hold only that many database connections while everything else goes on, and a
//! source address whose lookups failed [`FAILED_LOOKUPS_PER_ADDRESS`] times within
//! [`FAILED_LOOKUPS_WINDOW_MS`] is answered 429 without a lookup until the window ends — so a
//! flood from one address stops taking the lookup slots that tenants calling from elsewhere need.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::ApiError;

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
    pub(crate) async fn find(
        &self,
        store: &dyn saga_store::TenantAccessStore,
        now_ms: i64,
        hash: String,
        from: Option<std::net::IpAddr>,
    ) -> Result<Option<saga_store::TenantKeyRecord>, ApiError> {
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
            store.tenant_key_by_hash(&hash).await?
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
