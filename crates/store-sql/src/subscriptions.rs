//! Subscriptions and deliveries as operators see them: the statements of `SubscriptionStore` that
//! are the same in both dialects, and how a subscription and a delivery row are read (also for
//! each store's own claims and disabling).

use async_trait::async_trait;
use saga_store::{
    DeliveryAttemptRecord, DeliveryFilter, DeliveryRecord, DeliverySelection, DeliveryStatus, Destination, OutboxEvent,
    StoreError, StoreResult, SubscriptionFilter, SubscriptionPatch, SubscriptionRecord, SubscriptionStatus,
};
use sqlx::{Database, Executor};
use uuid::Uuid;

use crate::jobs::{bind, Arg, Clause};
use crate::{changed_one, column, Dialect, Sql};

/// The columns [`subscription`] reads.
pub const SUBSCRIPTION_COLUMNS: &str =
    "id, url, nats_url, nats_subject, events, tenant_id, managed, status, rate_limit_per_s, \
     secret, previous_secret, previous_secret_until, failing_since, created_at, updated_at";

/// The columns [`delivery`] reads.
pub const DELIVERY_COLUMNS: &str = "id, event_id, subscription_id, event_type, tenant_id, status, attempts, \
     attempts_before_replay, next_attempt_at, last_error, created_at, delivered_at";

/// The subscription's fields a `subscription_put` of an existing one replaces.
const SUBSCRIPTION_REPLACE: &str = " ON CONFLICT (id) DO UPDATE SET url = excluded.url, nats_url = excluded.nats_url, \
     nats_subject = excluded.nats_subject, events = excluded.events, tenant_id = excluded.tenant_id, \
     status = excluded.status, managed = excluded.managed, secret = excluded.secret, previous_secret = NULL, \
     previous_secret_until = NULL, failing_since = NULL, updated_at = excluded.updated_at";

/// What each store does its own way in `SubscriptionStore` (a list of ids, the fan-out, a
/// locking pick).
#[async_trait]
pub trait OwnDeliveryStatements {
    async fn existing_subscriptions(&self, ids: &[Uuid]) -> StoreResult<Vec<Uuid>>;
    async fn append_events(&self, events: &[OutboxEvent]) -> StoreResult<()>;
    async fn recover_deliveries(
        &self,
        subscription_id: Uuid,
        since_ms: i64,
        limit: u32,
        now_ms: i64,
    ) -> StoreResult<(u64, bool)>;
}

impl<D: Dialect> Sql<'_, D>
where
    for<'c> &'c D::Pool: Executor<'c, Database = D::Db>,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
    for<'q> &'q str: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> i64: sqlx::Encode<'q, D::Db> + sqlx::Decode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> bool: sqlx::Encode<'q, D::Db> + sqlx::Decode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> String: sqlx::Encode<'q, D::Db> + sqlx::Decode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'s> &'s str: sqlx::ColumnIndex<<D::Db as Database>::Row>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, D::Db>,
    for<'q> Option<i64>: sqlx::Encode<'q, D::Db>,
    for<'q> Option<D::Uuid>: sqlx::Encode<'q, D::Db>,
    for<'q> Option<D::Int4>: sqlx::Encode<'q, D::Db>,
    for<'q> Option<D::Json>: sqlx::Encode<'q, D::Db>,
{
    pub async fn subscription_create(&self, s: &SubscriptionRecord) -> StoreResult<()> {
        self.subscription_insert(s, "", None).await.map(|_| ())
    }

    pub async fn subscription_create_capped(&self, s: &SubscriptionRecord, tenant_max: u32) -> StoreResult<()> {
        if s.tenant_id.is_none() || s.managed {
            return self.subscription_create(s).await;
        }
        if !self.subscription_insert(s, "", Some(tenant_max)).await? {
            return Err(StoreError::Conflict(format!(
                "the tenant has {tenant_max} subscriptions of its own, the most it may make \
                 (SAGAPLANE_TENANT_SUBSCRIPTIONS_MAX); delete one first"
            )));
        }
        Ok(())
    }

    pub async fn subscription_put(&self, s: &SubscriptionRecord) -> StoreResult<()> {
        self.subscription_insert(s, SUBSCRIPTION_REPLACE, None).await.map(|_| ())
    }

    /// Inserts `s`; with `tenant_max`, only while its tenant has fewer of its own (counted in the
    /// statement, after the tenant's row is locked where writers are concurrent). Whether it was
    /// written.
    async fn subscription_insert(
        &self,
        s: &SubscriptionRecord,
        on_conflict: &str,
        tenant_max: Option<u32>,
    ) -> StoreResult<bool> {
        let (url, nats_url, nats_subject) = s.destination.columns();
        let condition = match tenant_max {
            Some(_) => " WHERE (SELECT count(*) FROM subscriptions WHERE tenant_id = $6 AND NOT managed) < $16",
            // An upsert's SELECT needs a WHERE, or SQLite reads its ON as a join's.
            None => " WHERE true",
        };
        let mut tx = D::begin(self.write).await.map_err(D::error)?;
        if let (Some(lock), Some(_), Some(tenant)) = (D::LOCK_TENANT, tenant_max, s.tenant_id.as_deref()) {
            sqlx::query(lock).bind(tenant).execute(&mut *tx).await.map_err(D::error)?;
        }
        let inserted = sqlx::query(&format!(
            "INSERT INTO subscriptions (id, url, nats_url, nats_subject, events, tenant_id, status, rate_limit_per_s, \
               secret, previous_secret, previous_secret_until, failing_since, created_at, updated_at, managed) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $14, $12, $13, $15{condition}{on_conflict}"
        ))
        .bind(D::uuid(s.id))
        .bind(url)
        .bind(nats_url)
        .bind(nats_subject)
        .bind(D::json(&s.events)?)
        .bind(s.tenant_id.as_deref())
        .bind(s.status.as_str())
        .bind(s.rate_limit_per_s.map(D::int4))
        .bind(s.secret.as_str())
        .bind(s.previous_secret.as_deref())
        .bind(s.previous_secret_until_ms)
        .bind(s.created_at_ms)
        .bind(s.updated_at_ms)
        .bind(s.failing_since_ms)
        .bind(s.managed)
        .bind(tenant_max.map(i64::from))
        .execute(&mut *tx)
        .await
        .map_err(D::error)?;
        tx.commit().await.map_err(D::error)?;
        Ok(D::rows_affected(&inserted) > 0)
    }

    pub async fn subscription_get(&self, id: Uuid) -> StoreResult<SubscriptionRecord> {
        let row = sqlx::query(&format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = $1"))
            .bind(D::uuid(id))
            .fetch_optional(self.read)
            .await
            .map_err(D::error)?;
        row.as_ref().map(subscription::<D>).unwrap_or(Err(StoreError::NotFound))
    }

    pub async fn subscription_list(&self, filter: &SubscriptionFilter) -> StoreResult<Vec<SubscriptionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions \
             WHERE ($1 IS NULL OR tenant_id = $1) AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
        ))
        .bind(filter.tenant_id.as_deref())
        .bind(filter.before_id.map(D::uuid))
        .bind(i64::from(filter.limit))
        .fetch_all(self.read)
        .await
        .map_err(D::error)?;
        rows.iter().map(subscription::<D>).collect()
    }

    pub async fn subscription_patch(
        &self,
        id: Uuid,
        patch: &SubscriptionPatch,
        now_ms: i64,
    ) -> StoreResult<SubscriptionRecord> {
        let events = patch.events.as_ref().map(D::json).transpose()?;
        let row = sqlx::query(&format!(
            "UPDATE subscriptions SET events = COALESCE($2, events), status = COALESCE($3, status), \
               failing_since = CASE WHEN $3 = 'active' THEN NULL ELSE failing_since END, \
               rate_limit_per_s = CASE WHEN $4 THEN $5 ELSE rate_limit_per_s END, updated_at = $6 \
             WHERE id = $1 RETURNING {SUBSCRIPTION_COLUMNS}"
        ))
        .bind(D::uuid(id))
        .bind(events)
        .bind(patch.status.map(SubscriptionStatus::as_str))
        .bind(patch.rate_limit_per_s.is_some())
        .bind(patch.rate_limit_per_s.flatten().map(D::int4))
        .bind(now_ms)
        .fetch_optional(self.write)
        .await
        .map_err(D::error)?;
        row.as_ref().map(subscription::<D>).unwrap_or(Err(StoreError::NotFound))
    }

    pub async fn subscription_rotate_secret(
        &self,
        id: Uuid,
        secret: &str,
        previous_until_ms: i64,
        now_ms: i64,
    ) -> StoreResult<SubscriptionRecord> {
        let row = sqlx::query(&format!(
            "UPDATE subscriptions SET previous_secret = secret, previous_secret_until = $3, secret = $2, updated_at = $4 \
             WHERE id = $1 RETURNING {SUBSCRIPTION_COLUMNS}"
        ))
        .bind(D::uuid(id))
        .bind(secret)
        .bind(previous_until_ms)
        .bind(now_ms)
        .fetch_optional(self.write)
        .await
        .map_err(D::error)?;
        row.as_ref().map(subscription::<D>).unwrap_or(Err(StoreError::NotFound))
    }

    pub async fn subscription_delete(&self, id: Uuid, now_ms: i64) -> StoreResult<()> {
        let mut tx = D::begin(self.write).await.map_err(D::error)?;
        let deleted = sqlx::query("DELETE FROM subscriptions WHERE id = $1")
            .bind(D::uuid(id))
            .execute(&mut *tx)
            .await
            .map_err(D::error)?;
        changed_one(D::rows_affected(&deleted))?;
        sqlx::query(
            "UPDATE deliveries SET status = 'dead', last_error = 'the subscription was deleted', lease_owner = NULL, \
               next_attempt_at = $2 WHERE subscription_id = $1 AND status = 'pending'",
        )
        .bind(D::uuid(id))
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(D::error)?;
        tx.commit().await.map_err(D::error)
    }

    pub async fn delivery_get(&self, id: Uuid) -> StoreResult<(DeliveryRecord, Vec<DeliveryAttemptRecord>)> {
        let row = sqlx::query(&format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = $1"))
            .bind(D::uuid(id))
            .fetch_optional(self.read)
            .await
            .map_err(D::error)?;
        let record = row.as_ref().map(delivery::<D>).unwrap_or(Err(StoreError::NotFound))?;
        let rows = sqlx::query(
            "SELECT n, at, status_code, error, duration_ms FROM delivery_attempts WHERE delivery_id = $1 ORDER BY n",
        )
        .bind(D::uuid(id))
        .fetch_all(self.read)
        .await
        .map_err(D::error)?;
        let attempts = rows
            .iter()
            .map(|row| {
                Ok(DeliveryAttemptRecord {
                    n: count(D::int4_column(row, "n")?),
                    at_ms: column::<D, _>(row, "at")?,
                    status_code: D::int4_column(row, "status_code")?.and_then(|c| u16::try_from(c).ok()),
                    error: column::<D, _>(row, "error")?,
                    duration_ms: column::<D, _>(row, "duration_ms")?,
                })
            })
            .collect::<StoreResult<_>>()?;
        Ok((record, attempts))
    }

    pub async fn delivery_list(&self, filter: &DeliveryFilter) -> StoreResult<Vec<DeliveryRecord>> {
        // The WHERE a bulk job's selection makes: only the conditions given, so the plan is
        // chosen for them (a generic `($1 IS NULL OR …)` plan may walk every delivery for a rare
        // status at volume).
        let selection = DeliverySelection {
            subscription_id: filter.subscription_id,
            status: filter.status,
            subscription_tenant_id: filter.subscription_tenant_id.clone(),
            ..DeliverySelection::default()
        };
        let mut clause = Clause::deliveries(&selection, 1);
        if let Some(before) = filter.before_id {
            clause.push("id", "<", Arg::Uuid(before));
        }
        clause.newest_first(filter.limit);
        let sql = format!("SELECT {DELIVERY_COLUMNS} FROM {} WHERE {}", clause.table, clause.sql);
        let rows = bind::<D>(sqlx::query(&sql), &clause.args).fetch_all(self.read).await.map_err(D::error)?;
        rows.iter().map(delivery::<D>).collect()
    }

    pub async fn delivery_replay(&self, id: Uuid, now_ms: i64) -> StoreResult<DeliveryRecord> {
        let row = sqlx::query(&format!(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = $2, attempts_before_replay = attempts, \
               lease_owner = NULL WHERE id = $1 AND status = 'dead' RETURNING {DELIVERY_COLUMNS}"
        ))
        .bind(D::uuid(id))
        .bind(now_ms)
        .fetch_optional(self.write)
        .await
        .map_err(D::error)?;
        match row {
            Some(row) => delivery::<D>(&row),
            None => {
                let (existing, _) = self.delivery_get(id).await?;
                Err(StoreError::Conflict(format!(
                    "delivery is {}, only a dead one is replayed",
                    existing.status.as_str()
                )))
            }
        }
    }
}

/// A subscription row ([`SUBSCRIPTION_COLUMNS`]).
pub fn subscription<D: Dialect>(row: &<D::Db as Database>::Row) -> StoreResult<SubscriptionRecord>
where
    for<'q> i64: sqlx::Decode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> bool: sqlx::Decode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> String: sqlx::Decode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'s> &'s str: sqlx::ColumnIndex<<D::Db as Database>::Row>,
{
    let destination = Destination::from_columns(
        column::<D, _>(row, "url")?,
        column::<D, _>(row, "nats_url")?,
        column::<D, _>(row, "nats_subject")?,
    )
    .ok_or_else(|| StoreError::Corrupt("a subscription without a destination".into()))?;
    let status: String = column::<D, _>(row, "status")?;
    Ok(SubscriptionRecord {
        id: D::uuid_column(row, "id")?,
        destination,
        events: D::json_column(row, "events")?.unwrap_or_default(),
        tenant_id: column::<D, _>(row, "tenant_id")?,
        managed: column::<D, _>(row, "managed")?,
        status: SubscriptionStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("subscription status {status:?}")))?,
        rate_limit_per_s: D::int4_column(row, "rate_limit_per_s")?.and_then(|r| u32::try_from(r).ok()),
        secret: column::<D, _>(row, "secret")?,
        previous_secret: column::<D, _>(row, "previous_secret")?,
        previous_secret_until_ms: column::<D, _>(row, "previous_secret_until")?,
        created_at_ms: column::<D, _>(row, "created_at")?,
        failing_since_ms: column::<D, _>(row, "failing_since")?,
        updated_at_ms: column::<D, _>(row, "updated_at")?,
    })
}

/// A delivery row ([`DELIVERY_COLUMNS`]).
pub fn delivery<D: Dialect>(row: &<D::Db as Database>::Row) -> StoreResult<DeliveryRecord>
where
    for<'q> i64: sqlx::Decode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> String: sqlx::Decode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'s> &'s str: sqlx::ColumnIndex<<D::Db as Database>::Row>,
{
    let status: String = column::<D, _>(row, "status")?;
    Ok(DeliveryRecord {
        id: D::uuid_column(row, "id")?,
        event_id: D::uuid_column(row, "event_id")?,
        subscription_id: D::uuid_column(row, "subscription_id")?,
        event_type: column::<D, _>(row, "event_type")?,
        tenant_id: column::<D, _>(row, "tenant_id")?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery status {status:?}")))?,
        attempts: count(D::int4_column(row, "attempts")?),
        attempts_before_replay: count(D::int4_column(row, "attempts_before_replay")?),
        next_attempt_at_ms: column::<D, _>(row, "next_attempt_at")?,
        last_error: column::<D, _>(row, "last_error")?,
        created_at_ms: column::<D, _>(row, "created_at")?,
        delivered_at_ms: column::<D, _>(row, "delivered_at")?,
    })
}

fn count(n: Option<i64>) -> u32 {
    n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
}

/// `SubscriptionStore` for a store, over its shared statements and its [`OwnDeliveryStatements`].
#[macro_export]
macro_rules! subscription_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl saga_store::SubscriptionStore for $store {
            async fn subscription_create(&self, s: &saga_store::SubscriptionRecord) -> saga_store::StoreResult<()> {
                $crate::SqlStore::sql(self).subscription_create(s).await
            }
            async fn subscription_create_capped(
                &self,
                s: &saga_store::SubscriptionRecord,
                tenant_max: u32,
            ) -> saga_store::StoreResult<()> {
                $crate::SqlStore::sql(self).subscription_create_capped(s, tenant_max).await
            }
            async fn subscriptions_existing(&self, ids: &[uuid::Uuid]) -> saga_store::StoreResult<Vec<uuid::Uuid>> {
                $crate::subscriptions::OwnDeliveryStatements::existing_subscriptions(self, ids).await
            }
            async fn subscription_put(&self, s: &saga_store::SubscriptionRecord) -> saga_store::StoreResult<()> {
                $crate::SqlStore::sql(self).subscription_put(s).await
            }
            async fn subscription_get(
                &self,
                id: uuid::Uuid,
            ) -> saga_store::StoreResult<saga_store::SubscriptionRecord> {
                $crate::SqlStore::sql(self).subscription_get(id).await
            }
            async fn subscription_list(
                &self,
                filter: &saga_store::SubscriptionFilter,
            ) -> saga_store::StoreResult<Vec<saga_store::SubscriptionRecord>> {
                $crate::SqlStore::sql(self).subscription_list(filter).await
            }
            async fn subscription_patch(
                &self,
                id: uuid::Uuid,
                patch: &saga_store::SubscriptionPatch,
                now_ms: i64,
            ) -> saga_store::StoreResult<saga_store::SubscriptionRecord> {
                $crate::SqlStore::sql(self).subscription_patch(id, patch, now_ms).await
            }
            async fn subscription_rotate_secret(
                &self,
                id: uuid::Uuid,
                secret: &str,
                previous_until_ms: i64,
                now_ms: i64,
            ) -> saga_store::StoreResult<saga_store::SubscriptionRecord> {
                $crate::SqlStore::sql(self).subscription_rotate_secret(id, secret, previous_until_ms, now_ms).await
            }
            async fn subscription_delete(&self, id: uuid::Uuid, now_ms: i64) -> saga_store::StoreResult<()> {
                $crate::SqlStore::sql(self).subscription_delete(id, now_ms).await
            }
            async fn events_append(&self, events: &[saga_store::OutboxEvent]) -> saga_store::StoreResult<()> {
                $crate::subscriptions::OwnDeliveryStatements::append_events(self, events).await
            }
            async fn delivery_get(
                &self,
                id: uuid::Uuid,
            ) -> saga_store::StoreResult<(saga_store::DeliveryRecord, Vec<saga_store::DeliveryAttemptRecord>)> {
                $crate::SqlStore::sql(self).delivery_get(id).await
            }
            async fn delivery_list(
                &self,
                filter: &saga_store::DeliveryFilter,
            ) -> saga_store::StoreResult<Vec<saga_store::DeliveryRecord>> {
                $crate::SqlStore::sql(self).delivery_list(filter).await
            }
            async fn delivery_replay(
                &self,
                id: uuid::Uuid,
                now_ms: i64,
            ) -> saga_store::StoreResult<saga_store::DeliveryRecord> {
                $crate::SqlStore::sql(self).delivery_replay(id, now_ms).await
            }
            async fn deliveries_recover(
                &self,
                subscription_id: uuid::Uuid,
                since_ms: i64,
                limit: u32,
                now_ms: i64,
            ) -> saga_store::StoreResult<(u64, bool)> {
                $crate::subscriptions::OwnDeliveryStatements::recover_deliveries(
                    self,
                    subscription_id,
                    since_ms,
                    limit,
                    now_ms,
                )
                .await
            }
        }
    };
}
