//! Tenant records: created with their provisioning saga, changed conditionally by operators.

use async_trait::async_trait;
use saga_store::{
    SagaCreate, SagaRecord, StoreError, StoreResult, TenantFilter, TenantPatch, TenantRecord, TenantStore,
    TenantTransition,
};

use super::{creates, SqliteStore};
use crate::rows::{self, db, json_text, TENANT_COLUMNS};

#[async_trait]
impl TenantStore for SqliteStore {
    async fn tenant_create(
        &self,
        tenant: TenantRecord,
        saga: SagaCreate,
        event: Option<saga_store::OutboxEvent>,
    ) -> StoreResult<(TenantRecord, SagaRecord)> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        let row = sqlx::query(&format!(
            "INSERT INTO tenants (id, name, tier, storage_mode, sla_tier, status, domains, contacts, metadata, \
                                  storage, migrations, saga_id, error, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14) \
             ON CONFLICT (id) DO NOTHING RETURNING {TENANT_COLUMNS}"
        ))
        .bind(&tenant.id)
        .bind(&tenant.name)
        .bind(tenant.tier.as_str())
        .bind(tenant.storage_mode.as_str())
        .bind(tenant.sla_tier.as_str())
        .bind(tenant.status.as_str())
        .bind(json_text(&tenant.domains)?)
        .bind(json_text(&tenant.contacts)?)
        .bind(json_text(&tenant.metadata)?)
        .bind(json_text(&tenant.storage)?)
        .bind(json_text(&tenant.migrations)?)
        .bind(saga.id.to_string())
        .bind(tenant.error.as_ref().map(json_text).transpose()?)
        .bind(tenant.created_at_ms)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            return Err(StoreError::Conflict(format!("tenant {:?} exists", tenant.id)));
        };
        let record = rows::tenant(&row)?;
        let saga_record = creates::insert_one(&mut tx, &saga)
            .await?
            .ok_or_else(|| StoreError::Conflict("the provisioning saga's idempotency key is taken".into()))?;
        if let Some(event) = &event {
            super::delivery::fan_out(&mut tx, std::slice::from_ref(event)).await?;
        }
        tx.commit().await.map_err(db)?;
        self.work.notify_one();
        Ok((record, saga_record))
    }

    async fn tenant_get(&self, id: &str) -> StoreResult<TenantRecord> {
        let row = sqlx::query(&format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        rows::tenant(&row)
    }

    async fn tenant_list(&self, filter: &TenantFilter) -> StoreResult<Vec<TenantRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants \
             WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR tier = ?2) AND (?3 IS NULL OR id > ?3) \
             ORDER BY id LIMIT ?4"
        ))
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.tier.map(|t| t.as_str()))
        .bind(&filter.after_id)
        .bind(i64::from(filter.limit))
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        rows.iter().map(rows::tenant).collect()
    }

    async fn tenant_transition(&self, transition: TenantTransition) -> StoreResult<(TenantRecord, Option<SagaRecord>)> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        let from: Vec<&str> = transition.from.iter().map(|s| s.as_str()).collect();
        let row = sqlx::query(&format!(
            "UPDATE tenants SET status = ?2, error = ?3, updated_at = ?4, saga_id = COALESCE(?5, saga_id), \
               delete_at = ?7 \
             WHERE id = ?1 AND status IN (SELECT value FROM json_each(?6)) RETURNING {TENANT_COLUMNS}"
        ))
        .bind(&transition.id)
        .bind(transition.to.as_str())
        .bind(transition.error.as_ref().map(json_text).transpose()?)
        .bind(transition.now_ms)
        .bind(transition.saga.as_ref().map(|s| s.id.to_string()))
        .bind(json_text(&from)?)
        .bind(transition.delete_at_ms)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            drop(tx);
            let existing = self.tenant_get(&transition.id).await?;
            return Err(StoreError::Conflict(format!(
                "tenant is {}; it cannot become {}",
                existing.status.as_str(),
                transition.to.as_str()
            )));
        };
        let record = rows::tenant(&row)?;
        let saga = match &transition.saga {
            Some(saga) => Some(
                creates::insert_one(&mut tx, saga)
                    .await?
                    .ok_or_else(|| StoreError::Conflict("the saga's idempotency key is taken".into()))?,
            ),
            None => None,
        };
        if let Some(event) = &transition.event {
            super::delivery::fan_out(&mut tx, std::slice::from_ref(event)).await?;
        }
        tx.commit().await.map_err(db)?;
        if saga.is_some() {
            self.work.notify_one();
        }
        Ok((record, saga))
    }

    async fn tenant_patch(&self, id: &str, patch: &TenantPatch, now_ms: i64) -> StoreResult<TenantRecord> {
        let row = sqlx::query(&format!(
            "UPDATE tenants SET name = COALESCE(?2, name), sla_tier = COALESCE(?3, sla_tier), \
               domains = COALESCE(?4, domains), contacts = COALESCE(?5, contacts), \
               metadata = COALESCE(?6, metadata), updated_at = ?7, \
               migrations = CASE WHEN ?8 IS NULL THEN migrations ELSE ( \
                 SELECT json_group_array(json(value)) FROM ( \
                   SELECT value, ROW_NUMBER() OVER ( \
                     PARTITION BY json_extract(value, '$.service') ORDER BY json_extract(value, '$.version') DESC) AS n \
                   FROM (SELECT value FROM json_each(tenants.migrations) UNION ALL SELECT value FROM json_each(?8)) \
                   ORDER BY json_extract(value, '$.service')) WHERE n = 1) END \
             WHERE id = ?1 RETURNING {TENANT_COLUMNS}"
        ))
        .bind(id)
        .bind(&patch.name)
        .bind(patch.sla_tier.map(|s| s.as_str()))
        .bind(patch.domains.as_ref().map(json_text).transpose()?)
        .bind(patch.contacts.as_ref().map(json_text).transpose()?)
        .bind(patch.metadata.as_ref().map(json_text).transpose()?)
        .bind(now_ms)
        .bind(patch.migrations.as_ref().map(json_text).transpose()?)
        .fetch_optional(&self.writer)
        .await
        .map_err(db)?
        .ok_or(StoreError::NotFound)?;
        rows::tenant(&row)
    }
}
