//! Tenant records: created with their provisioning saga, changed conditionally by operators.

use async_trait::async_trait;
use saga_store::{
    SagaCreate, SagaRecord, StoreError, StoreResult, TenantFilter, TenantPatch, TenantRecord, TenantStore,
    TenantTransition,
};
use sqlx::types::Json;
use sqlx::Postgres;

use super::PostgresStore;
use crate::rows::{self, db, TENANT_COLUMNS};

#[async_trait]
impl TenantStore for PostgresStore {
    async fn tenant_create(
        &self,
        tenant: TenantRecord,
        saga: SagaCreate,
        event: Option<saga_store::OutboxEvent>,
    ) -> StoreResult<(TenantRecord, SagaRecord)> {
        let mut tx = self.db.begin().await.map_err(db)?;
        let row = sqlx::query(&format!(
            "INSERT INTO tenants AS t (id, name, tier, storage_mode, sla_tier, status, domains, contacts, metadata, \
                                       storage, migrations, saga_id, error, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14) \
             ON CONFLICT (id) DO NOTHING RETURNING {TENANT_COLUMNS}"
        ))
        .bind(&tenant.id)
        .bind(&tenant.name)
        .bind(tenant.tier.as_str())
        .bind(tenant.storage_mode.as_str())
        .bind(tenant.sla_tier.as_str())
        .bind(tenant.status.as_str())
        .bind(Json(&tenant.domains))
        .bind(Json(&tenant.contacts))
        .bind(Json(&tenant.metadata))
        .bind(Json(&tenant.storage))
        .bind(Json(&tenant.migrations))
        .bind(saga.id)
        .bind(tenant.error.as_ref().map(Json))
        .bind(tenant.created_at_ms)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            return Err(StoreError::Conflict(format!("tenant {:?} exists", tenant.id)));
        };
        let record = rows::tenant(&row)?;
        let saga_row = insert_saga(&mut *tx, &saga)
            .await?
            .ok_or_else(|| StoreError::Conflict("the provisioning saga's idempotency key is taken".into()))?;
        let saga_record = rows::saga(&saga_row)?;
        if let Some(event) = &event {
            super::delivery::fan_out(&mut tx, std::slice::from_ref(event)).await?;
        }
        tx.commit().await.map_err(db)?;
        self.announce_work();
        Ok((record, saga_record))
    }

    async fn tenant_get(&self, id: &str) -> StoreResult<TenantRecord> {
        let row = sqlx::query(&format!("SELECT {TENANT_COLUMNS} FROM tenants t WHERE t.id = $1"))
            .bind(id)
            .fetch_optional(&self.db)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        rows::tenant(&row)
    }

    async fn tenant_list(&self, filter: &TenantFilter) -> StoreResult<Vec<TenantRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants t \
             WHERE ($1::text IS NULL OR t.status = $1) AND ($2::text IS NULL OR t.tier = $2) \
               AND ($3::text IS NULL OR t.id > $3) \
             ORDER BY t.id LIMIT $4"
        ))
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.tier.map(|t| t.as_str()))
        .bind(&filter.after_id)
        .bind(i64::from(filter.limit))
        .fetch_all(&self.db)
        .await
        .map_err(db)?;
        rows.iter().map(rows::tenant).collect()
    }

    async fn tenant_transition(&self, transition: TenantTransition) -> StoreResult<(TenantRecord, Option<SagaRecord>)> {
        let mut tx = self.db.begin().await.map_err(db)?;
        let from: Vec<&str> = transition.from.iter().map(|s| s.as_str()).collect();
        let row = sqlx::query(&format!(
            "UPDATE tenants t SET status = $2, error = $3, updated_at = $4, saga_id = COALESCE($5, t.saga_id), \
               delete_at = $7 \
             WHERE t.id = $1 AND t.status = ANY($6) RETURNING {TENANT_COLUMNS}"
        ))
        .bind(&transition.id)
        .bind(transition.to.as_str())
        .bind(transition.error.as_ref().map(Json))
        .bind(transition.now_ms)
        .bind(transition.saga.as_ref().map(|s| s.id))
        .bind(&from)
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
            Some(saga) => {
                let saga_row = insert_saga(&mut *tx, saga)
                    .await?
                    .ok_or_else(|| StoreError::Conflict("the saga's idempotency key is taken".into()))?;
                Some(rows::saga(&saga_row)?)
            }
            None => None,
        };
        if let Some(event) = &transition.event {
            super::delivery::fan_out(&mut tx, std::slice::from_ref(event)).await?;
        }
        tx.commit().await.map_err(db)?;
        if saga.is_some() {
            self.announce_work();
        }
        Ok((record, saga))
    }

    async fn tenant_patch(&self, id: &str, patch: &TenantPatch, now_ms: i64) -> StoreResult<TenantRecord> {
        let row = sqlx::query(&format!(
            "UPDATE tenants t SET name = COALESCE($2, t.name), sla_tier = COALESCE($3, t.sla_tier), \
               domains = COALESCE($4, t.domains), contacts = COALESCE($5, t.contacts), \
               metadata = COALESCE($6, t.metadata), updated_at = $7, \
               migrations = CASE WHEN $8::jsonb IS NULL THEN t.migrations ELSE ( \
                 SELECT COALESCE(jsonb_agg(m ORDER BY m->>'service'), '[]'::jsonb) FROM ( \
                   SELECT DISTINCT ON (m->>'service') m FROM jsonb_array_elements(t.migrations || $8::jsonb) AS e(m) \
                   ORDER BY m->>'service', (m->>'version')::bigint DESC) AS latest) END \
             WHERE t.id = $1 RETURNING {TENANT_COLUMNS}"
        ))
        .bind(id)
        .bind(&patch.name)
        .bind(patch.sla_tier.map(|s| s.as_str()))
        .bind(patch.domains.as_ref().map(Json))
        .bind(patch.contacts.as_ref().map(Json))
        .bind(patch.metadata.as_ref().map(Json))
        .bind(now_ms)
        .bind(patch.migrations.as_ref().map(Json))
        .fetch_optional(&self.db)
        .await
        .map_err(db)?
        .ok_or(StoreError::NotFound)?;
        rows::tenant(&row)
    }
}

/// The saga, its first history row and its concurrency key, in one statement; None when the
/// idempotency key exists or `require_latest` failed.
async fn insert_saga<'e>(
    executor: impl sqlx::Executor<'e, Database = Postgres>,
    params: &SagaCreate,
) -> StoreResult<Option<sqlx::postgres::PgRow>> {
    Ok(super::creates::insert(executor, &[params]).await?.remove(&params.id))
}
