//! Tenant API keys (stored as SHA-256 of the token), tenant users, inbound webhook receipts.

use async_trait::async_trait;
use saga_store::{
    StoreError, StoreResult, TenantAccessStore, TenantKeyRecord, TenantUserRecord, WebhookClaim, WebhookStore,
    TENANT_KEYS_MAX, WEBHOOK_CLAIM_TTL_MS,
};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::Row;
use uuid::Uuid;

use super::PostgresStore;
use crate::rows::{self, changed_one, db, USER_COLUMNS};

#[async_trait]
impl TenantAccessStore for PostgresStore {
    async fn tenant_key_create(&self, key: &TenantKeyRecord, token_hash: &str) -> StoreResult<()> {
        let mut tx = self.db.begin().await.map_err(db)?;
        // The tenant's row serialises concurrent creators, so the count below cannot go stale.
        sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE")
            .bind(&key.tenant_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let active: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tenant_api_keys WHERE tenant_id = $1 AND revoked_at IS NULL")
                .bind(&key.tenant_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?;
        if active >= i64::from(TENANT_KEYS_MAX) {
            return Err(keys_at_limit());
        }
        sqlx::query(
            "INSERT INTO tenant_api_keys (id, tenant_id, name, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(key.id)
        .bind(&key.tenant_id)
        .bind(&key.name)
        .bind(token_hash)
        .bind(key.created_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn tenant_key_by_hash(&self, token_hash: &str) -> StoreResult<Option<TenantKeyRecord>> {
        let row = sqlx::query(
            "SELECT id, tenant_id, name, created_at, revoked_at FROM tenant_api_keys \
             WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .bind(token_hash)
        .fetch_optional(&self.db)
        .await
        .map_err(db)?;
        row.map(|row| {
            Ok(TenantKeyRecord {
                id: row.try_get("id").map_err(db)?,
                tenant_id: row.try_get("tenant_id").map_err(db)?,
                name: row.try_get("name").map_err(db)?,
                created_at_ms: row.try_get("created_at").map_err(db)?,
                revoked_at_ms: row.try_get("revoked_at").map_err(db)?,
            })
        })
        .transpose()
    }

    async fn tenant_key_revoke(&self, tenant_id: &str, key_id: Uuid, now_ms: i64) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE tenant_api_keys SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
        )
        .bind(tenant_id)
        .bind(key_id)
        .bind(now_ms)
        .execute(&self.db)
        .await
        .map_err(db)?;
        changed_one(done.rows_affected())
    }

    async fn tenant_keys_revoke_all(&self, tenant_id: &str, now_ms: i64) -> StoreResult<u64> {
        let done =
            sqlx::query("UPDATE tenant_api_keys SET revoked_at = $2 WHERE tenant_id = $1 AND revoked_at IS NULL")
                .bind(tenant_id)
                .bind(now_ms)
                .execute(&self.db)
                .await
                .map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn tenant_user_create(&self, user: &TenantUserRecord) -> StoreResult<()> {
        let done = sqlx::query(
            "INSERT INTO tenant_users (id, tenant_id, email, name, role, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id, email) DO NOTHING",
        )
        .bind(user.id)
        .bind(&user.tenant_id)
        .bind(&user.email)
        .bind(&user.name)
        .bind(&user.role)
        .bind(user.created_at_ms)
        .bind(user.updated_at_ms)
        .execute(&self.db)
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("the tenant has a user with email {:?}", user.email)));
        }
        Ok(())
    }

    async fn tenant_user_list(&self, tenant_id: &str) -> StoreResult<Vec<TenantUserRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM tenant_users WHERE tenant_id = $1 ORDER BY email LIMIT 10000"
        ))
        .bind(tenant_id)
        .fetch_all(&self.db)
        .await
        .map_err(db)?;
        rows.iter().map(rows::tenant_user).collect()
    }

    async fn tenant_user_get(&self, tenant_id: &str, user_id: Uuid) -> StoreResult<Option<TenantUserRecord>> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM tenant_users WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant_id)
            .bind(user_id)
            .fetch_optional(&self.db)
            .await
            .map_err(db)?;
        row.as_ref().map(rows::tenant_user).transpose()
    }

    async fn tenant_user_update(&self, user: &TenantUserRecord) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE tenant_users SET email = $3, name = $4, role = $5, updated_at = $6 WHERE tenant_id = $1 AND id = $2",
        )
        .bind(&user.tenant_id)
        .bind(user.id)
        .bind(&user.email)
        .bind(&user.name)
        .bind(&user.role)
        .bind(user.updated_at_ms)
        .execute(&self.db)
        .await;
        match done {
            Ok(done) if done.rows_affected() == 0 => Err(StoreError::NotFound),
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
                Err(StoreError::Conflict(format!("the tenant has a user with email {:?}", user.email)))
            }
            Err(e) => Err(db(e)),
        }
    }

    async fn tenant_user_delete(&self, tenant_id: &str, user_id: Uuid) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM tenant_users WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(user_id)
            .execute(&self.db)
            .await
            .map_err(db)?;
        changed_one(done.rows_affected())
    }
}

#[async_trait]
impl WebhookStore for PostgresStore {
    async fn webhook_claim(&self, source: &str, webhook_id: &str, now_ms: i64) -> StoreResult<WebhookClaim> {
        let inserted = sqlx::query(
            "INSERT INTO webhook_receipts (source, webhook_id, received_at) VALUES ($1, $2, $3) \
             ON CONFLICT (source, webhook_id) DO UPDATE SET received_at = excluded.received_at \
             WHERE webhook_receipts.response IS NULL AND webhook_receipts.received_at <= $3 - $4",
        )
        .bind(source)
        .bind(webhook_id)
        .bind(now_ms)
        .bind(WEBHOOK_CLAIM_TTL_MS)
        .execute(&self.db)
        .await
        .map_err(db)?;
        if inserted.rows_affected() == 1 {
            return Ok(WebhookClaim::New);
        }
        let response: Option<Option<Json<Value>>> =
            sqlx::query_scalar("SELECT response FROM webhook_receipts WHERE source = $1 AND webhook_id = $2")
                .bind(source)
                .bind(webhook_id)
                .fetch_optional(&self.db)
                .await
                .map_err(db)?;
        Ok(WebhookClaim::Seen(response.flatten().map(|r| r.0)))
    }

    async fn webhook_complete(&self, source: &str, webhook_id: &str, response: &Value) -> StoreResult<()> {
        sqlx::query("UPDATE webhook_receipts SET response = $3 WHERE source = $1 AND webhook_id = $2")
            .bind(source)
            .bind(webhook_id)
            .bind(Json(response))
            .execute(&self.db)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn webhook_release(&self, source: &str, webhook_id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM webhook_receipts WHERE source = $1 AND webhook_id = $2 AND response IS NULL")
            .bind(source)
            .bind(webhook_id)
            .execute(&self.db)
            .await
            .map_err(db)?;
        Ok(())
    }
}

fn keys_at_limit() -> StoreError {
    StoreError::Conflict(format!(
        "the tenant has {TENANT_KEYS_MAX} active API keys, the most it may hold; revoke one first"
    ))
}
