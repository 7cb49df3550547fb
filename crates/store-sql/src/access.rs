//! Tenant API keys (stored as SHA-256 of the token), tenant users, inbound webhook receipts: the
//! statements of `TenantAccessStore` and `WebhookStore`, the same in both dialects.

use saga_store::{
    StoreError, StoreResult, TenantKeyRecord, TenantUserRecord, WebhookClaim, TENANT_KEYS_MAX, WEBHOOK_CLAIM_TTL_MS,
};
use serde_json::Value;
use sqlx::{Database, Executor};
use uuid::Uuid;

use crate::{changed_one, column, is_unique_violation, Dialect, Sql};

const USER_COLUMNS: &str = "id, tenant_id, email, name, role, created_at, updated_at";

impl<D: Dialect> Sql<'_, D>
where
    for<'c> &'c D::Pool: Executor<'c, Database = D::Db>,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
    for<'q> &'q str: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> i64: sqlx::Encode<'q, D::Db> + sqlx::Decode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> String: sqlx::Decode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'s> &'s str: sqlx::ColumnIndex<<D::Db as Database>::Row>,
{
    pub async fn tenant_key_create(&self, key: &TenantKeyRecord, token_hash: &str) -> StoreResult<()> {
        let mut tx = D::begin(self.write).await.map_err(D::error)?;
        if let Some(lock) = D::LOCK_TENANT {
            // The tenant's row serialises concurrent creators, so the count below cannot go stale.
            sqlx::query(lock).bind(key.tenant_id.as_str()).execute(&mut *tx).await.map_err(D::error)?;
        }
        let row = sqlx::query("SELECT count(*) AS n FROM tenant_api_keys WHERE tenant_id = $1 AND revoked_at IS NULL")
            .bind(key.tenant_id.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(D::error)?;
        if column::<D, i64>(&row, "n")? >= i64::from(TENANT_KEYS_MAX) {
            return Err(StoreError::Conflict(format!(
                "the tenant has {TENANT_KEYS_MAX} active API keys, the most it may hold; revoke one first"
            )));
        }
        sqlx::query(
            "INSERT INTO tenant_api_keys (id, tenant_id, name, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(D::uuid(key.id))
        .bind(key.tenant_id.as_str())
        .bind(key.name.as_str())
        .bind(token_hash)
        .bind(key.created_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(D::error)?;
        tx.commit().await.map_err(D::error)
    }

    pub async fn tenant_key_by_hash(&self, token_hash: &str) -> StoreResult<Option<TenantKeyRecord>> {
        let row = sqlx::query(
            "SELECT id, tenant_id, name, created_at, revoked_at FROM tenant_api_keys \
             WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .bind(token_hash)
        .fetch_optional(self.read)
        .await
        .map_err(D::error)?;
        row.map(|row| {
            Ok(TenantKeyRecord {
                id: D::uuid_column(&row, "id")?,
                tenant_id: column::<D, _>(&row, "tenant_id")?,
                name: column::<D, _>(&row, "name")?,
                created_at_ms: column::<D, _>(&row, "created_at")?,
                revoked_at_ms: column::<D, _>(&row, "revoked_at")?,
            })
        })
        .transpose()
    }

    pub async fn tenant_key_revoke(&self, tenant_id: &str, key_id: Uuid, now_ms: i64) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE tenant_api_keys SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
        )
        .bind(tenant_id)
        .bind(D::uuid(key_id))
        .bind(now_ms)
        .execute(self.write)
        .await
        .map_err(D::error)?;
        changed_one(D::rows_affected(&done))
    }

    pub async fn tenant_keys_revoke_all(&self, tenant_id: &str, now_ms: i64) -> StoreResult<u64> {
        let done =
            sqlx::query("UPDATE tenant_api_keys SET revoked_at = $2 WHERE tenant_id = $1 AND revoked_at IS NULL")
                .bind(tenant_id)
                .bind(now_ms)
                .execute(self.write)
                .await
                .map_err(D::error)?;
        Ok(D::rows_affected(&done))
    }

    pub async fn tenant_user_create(&self, user: &TenantUserRecord) -> StoreResult<()> {
        let done = sqlx::query(
            "INSERT INTO tenant_users (id, tenant_id, email, name, role, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id, email) DO NOTHING",
        )
        .bind(D::uuid(user.id))
        .bind(user.tenant_id.as_str())
        .bind(user.email.as_str())
        .bind(user.name.as_str())
        .bind(user.role.as_str())
        .bind(user.created_at_ms)
        .bind(user.updated_at_ms)
        .execute(self.write)
        .await
        .map_err(D::error)?;
        if D::rows_affected(&done) == 0 {
            return Err(email_taken(user));
        }
        Ok(())
    }

    pub async fn tenant_user_list(&self, tenant_id: &str) -> StoreResult<Vec<TenantUserRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM tenant_users WHERE tenant_id = $1 ORDER BY email LIMIT 10000"
        ))
        .bind(tenant_id)
        .fetch_all(self.read)
        .await
        .map_err(D::error)?;
        rows.iter().map(tenant_user::<D>).collect()
    }

    pub async fn tenant_user_get(&self, tenant_id: &str, user_id: Uuid) -> StoreResult<Option<TenantUserRecord>> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM tenant_users WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant_id)
            .bind(D::uuid(user_id))
            .fetch_optional(self.read)
            .await
            .map_err(D::error)?;
        row.as_ref().map(tenant_user::<D>).transpose()
    }

    pub async fn tenant_user_update(&self, user: &TenantUserRecord) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE tenant_users SET email = $3, name = $4, role = $5, updated_at = $6 WHERE tenant_id = $1 AND id = $2",
        )
        .bind(user.tenant_id.as_str())
        .bind(D::uuid(user.id))
        .bind(user.email.as_str())
        .bind(user.name.as_str())
        .bind(user.role.as_str())
        .bind(user.updated_at_ms)
        .execute(self.write)
        .await;
        match done {
            Ok(done) => changed_one(D::rows_affected(&done)),
            Err(e) if is_unique_violation(&e) => Err(email_taken(user)),
            Err(e) => Err(D::error(e)),
        }
    }

    pub async fn tenant_user_delete(&self, tenant_id: &str, user_id: Uuid) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM tenant_users WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(D::uuid(user_id))
            .execute(self.write)
            .await
            .map_err(D::error)?;
        changed_one(D::rows_affected(&done))
    }

    pub async fn webhook_claim(&self, source: &str, webhook_id: &str, now_ms: i64) -> StoreResult<WebhookClaim> {
        let inserted = sqlx::query(
            "INSERT INTO webhook_receipts (source, webhook_id, received_at) VALUES ($1, $2, $3) \
             ON CONFLICT (source, webhook_id) DO UPDATE SET received_at = excluded.received_at \
             WHERE webhook_receipts.response IS NULL AND webhook_receipts.received_at <= $3 - $4",
        )
        .bind(source)
        .bind(webhook_id)
        .bind(now_ms)
        .bind(WEBHOOK_CLAIM_TTL_MS)
        .execute(self.write)
        .await
        .map_err(D::error)?;
        if D::rows_affected(&inserted) == 1 {
            return Ok(WebhookClaim::New);
        }
        // On the writer: what the claim above just found must be what is read.
        let row = sqlx::query("SELECT response FROM webhook_receipts WHERE source = $1 AND webhook_id = $2")
            .bind(source)
            .bind(webhook_id)
            .fetch_optional(self.write)
            .await
            .map_err(D::error)?;
        let response = row.map(|row| D::json_column::<Value>(&row, "response")).transpose()?;
        Ok(WebhookClaim::Seen(response.flatten()))
    }

    pub async fn webhook_complete(&self, source: &str, webhook_id: &str, response: &Value) -> StoreResult<()> {
        sqlx::query("UPDATE webhook_receipts SET response = $3 WHERE source = $1 AND webhook_id = $2")
            .bind(source)
            .bind(webhook_id)
            .bind(D::json(response)?)
            .execute(self.write)
            .await
            .map_err(D::error)?;
        Ok(())
    }

    pub async fn webhook_release(&self, source: &str, webhook_id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM webhook_receipts WHERE source = $1 AND webhook_id = $2 AND response IS NULL")
            .bind(source)
            .bind(webhook_id)
            .execute(self.write)
            .await
            .map_err(D::error)?;
        Ok(())
    }
}

fn email_taken(user: &TenantUserRecord) -> StoreError {
    StoreError::Conflict(format!("the tenant has a user with email {:?}", user.email))
}

fn tenant_user<D: Dialect>(row: &<D::Db as Database>::Row) -> StoreResult<TenantUserRecord>
where
    for<'q> i64: sqlx::Decode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> String: sqlx::Decode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'s> &'s str: sqlx::ColumnIndex<<D::Db as Database>::Row>,
{
    Ok(TenantUserRecord {
        id: D::uuid_column(row, "id")?,
        tenant_id: column::<D, _>(row, "tenant_id")?,
        email: column::<D, _>(row, "email")?,
        name: column::<D, _>(row, "name")?,
        role: column::<D, _>(row, "role")?,
        created_at_ms: column::<D, _>(row, "created_at")?,
        updated_at_ms: column::<D, _>(row, "updated_at")?,
    })
}

/// `TenantAccessStore` and `WebhookStore` for a store, over its shared statements.
#[macro_export]
macro_rules! access_stores {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl saga_store::TenantAccessStore for $store {
            async fn tenant_key_create(
                &self,
                key: &saga_store::TenantKeyRecord,
                token_hash: &str,
            ) -> saga_store::StoreResult<()> {
                $crate::SqlStore::sql(self).tenant_key_create(key, token_hash).await
            }
            async fn tenant_key_by_hash(
                &self,
                token_hash: &str,
            ) -> saga_store::StoreResult<Option<saga_store::TenantKeyRecord>> {
                $crate::SqlStore::sql(self).tenant_key_by_hash(token_hash).await
            }
            async fn tenant_key_revoke(
                &self,
                tenant_id: &str,
                key_id: uuid::Uuid,
                now_ms: i64,
            ) -> saga_store::StoreResult<()> {
                $crate::SqlStore::sql(self).tenant_key_revoke(tenant_id, key_id, now_ms).await
            }
            async fn tenant_keys_revoke_all(&self, tenant_id: &str, now_ms: i64) -> saga_store::StoreResult<u64> {
                $crate::SqlStore::sql(self).tenant_keys_revoke_all(tenant_id, now_ms).await
            }
            async fn tenant_user_create(&self, user: &saga_store::TenantUserRecord) -> saga_store::StoreResult<()> {
                $crate::SqlStore::sql(self).tenant_user_create(user).await
            }
            async fn tenant_user_list(
                &self,
                tenant_id: &str,
            ) -> saga_store::StoreResult<Vec<saga_store::TenantUserRecord>> {
                $crate::SqlStore::sql(self).tenant_user_list(tenant_id).await
            }
            async fn tenant_user_get(
                &self,
                tenant_id: &str,
                user_id: uuid::Uuid,
            ) -> saga_store::StoreResult<Option<saga_store::TenantUserRecord>> {
                $crate::SqlStore::sql(self).tenant_user_get(tenant_id, user_id).await
            }
            async fn tenant_user_update(&self, user: &saga_store::TenantUserRecord) -> saga_store::StoreResult<()> {
                $crate::SqlStore::sql(self).tenant_user_update(user).await
            }
            async fn tenant_user_delete(&self, tenant_id: &str, user_id: uuid::Uuid) -> saga_store::StoreResult<()> {
                $crate::SqlStore::sql(self).tenant_user_delete(tenant_id, user_id).await
            }
        }

        #[async_trait::async_trait]
        impl saga_store::WebhookStore for $store {
            async fn webhook_claim(
                &self,
                source: &str,
                webhook_id: &str,
                now_ms: i64,
            ) -> saga_store::StoreResult<saga_store::WebhookClaim> {
                $crate::SqlStore::sql(self).webhook_claim(source, webhook_id, now_ms).await
            }
            async fn webhook_complete(
                &self,
                source: &str,
                webhook_id: &str,
                response: &serde_json::Value,
            ) -> saga_store::StoreResult<()> {
                $crate::SqlStore::sql(self).webhook_complete(source, webhook_id, response).await
            }
            async fn webhook_release(&self, source: &str, webhook_id: &str) -> saga_store::StoreResult<()> {
                $crate::SqlStore::sql(self).webhook_release(source, webhook_id).await
            }
        }
    };
}
