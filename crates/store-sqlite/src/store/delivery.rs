//! Outbound delivery: subscriptions, the outbox fan-out (events and their deliveries in the
//! writer's transaction), claims of due deliveries (the single writer serialises claimers; a
//! fencing token per claim) and attempts.

use async_trait::async_trait;
use saga_store::{
    ClaimedDelivery, DeliveryAttemptRecord, DeliveryAttemptResult, DeliveryClaimParams, DeliveryFilter, DeliveryRecord,
    DeliveryStatus, Destination, DispatchStore, OutboxEvent, StoreError, StoreResult, Subscribers, SubscriptionFilter,
    SubscriptionPatch, SubscriptionRecord, SubscriptionStatus, SubscriptionStore,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use super::SqliteStore;
use crate::rows::{changed_one, db, json_text, uuid_column};

const SUBSCRIPTION_COLUMNS: &str =
    "id, url, nats_url, nats_subject, events, tenant_id, managed, status, rate_limit_per_s, \
     secret, previous_secret, previous_secret_until, failing_since, created_at, updated_at";

const DELIVERY_COLUMNS: &str = "id, event_id, subscription_id, event_type, tenant_id, status, attempts, \
     attempts_before_replay, next_attempt_at, last_error, created_at, delivered_at";

/// Writes each event an active subscription wants, with one pending delivery per such
/// subscription, on the writer's transaction `conn` (so with the change it reports).
pub(super) async fn fan_out(conn: &mut SqliteConnection, events: &[OutboxEvent]) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    // The active subscriptions, read once: with none (the common case) that is all it costs.
    let active: Vec<(String, Option<String>, String)> =
        sqlx::query_as("SELECT id, tenant_id, events FROM subscriptions WHERE status = 'active'")
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
    if active.is_empty() {
        return Ok(());
    }
    let active = active
        .into_iter()
        .map(|(id, tenant, filters)| {
            let id = Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let filters: Vec<String> =
                serde_json::from_str(&filters).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok((id, tenant, filters))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let subscribers = Subscribers::new(active);
    for event in events {
        let wanting = subscribers.of(event);
        if wanting.is_empty() {
            continue;
        }
        sqlx::query(
            "INSERT INTO events (id, type, tenant_id, data, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(event.id.to_string())
        .bind(&event.event_type)
        .bind(&event.tenant_id)
        .bind(json_text(&event.data)?)
        .bind(event.at_ms)
        .bind(event.expires_at_ms)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
        for subscription_id in wanting {
            sqlx::query(
                "INSERT INTO deliveries (id, event_id, subscription_id, event_type, tenant_id, status, next_attempt_at, \
                   created_at) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6)",
            )
            .bind(Uuid::now_v7().to_string())
            .bind(event.id.to_string())
            .bind(subscription_id.to_string())
            .bind(&event.event_type)
            .bind(&event.tenant_id)
            .bind(event.at_ms)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        }
    }
    Ok(())
}

/// One attempt, fenced on its token, in the writer's transaction: false when fenced.
async fn record_attempt(conn: &mut SqliteConnection, result: &DeliveryAttemptResult) -> StoreResult<bool> {
    let attempt = &result.attempt;
    let updated: Option<(i64, String)> = sqlx::query_as(
        "UPDATE deliveries SET status = ?3, attempts = attempts + 1, next_attempt_at = ?4, last_error = ?5, \
           delivered_at = CASE WHEN ?3 = 'succeeded' THEN ?6 ELSE delivered_at END, lease_owner = NULL \
         WHERE id = ?1 AND fencing_token = ?2 RETURNING attempts, subscription_id",
    )
    .bind(result.id.to_string())
    .bind(result.fencing_token)
    .bind(result.status.as_str())
    .bind(result.next_attempt_at_ms)
    .bind(&attempt.error)
    .bind(attempt.at_ms)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    let Some((n, subscription_id)) = updated else { return Ok(false) };
    // Only a change of health writes the subscription.
    let health = if result.status == DeliveryStatus::Succeeded {
        "UPDATE subscriptions SET failing_since = NULL WHERE id = ?1 AND failing_since IS NOT NULL AND ?2 IS NOT NULL"
    } else {
        "UPDATE subscriptions SET failing_since = ?2 WHERE id = ?1 AND failing_since IS NULL"
    };
    sqlx::query(health).bind(&subscription_id).bind(attempt.at_ms).execute(&mut *conn).await.map_err(db)?;
    sqlx::query(
        "INSERT INTO delivery_attempts (delivery_id, n, at, status_code, error, duration_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(result.id.to_string())
    .bind(n)
    .bind(attempt.at_ms)
    .bind(attempt.status_code.map(i64::from))
    .bind(&attempt.error)
    .bind(attempt.duration_ms)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(true)
}

fn subscription(row: &SqliteRow) -> StoreResult<SubscriptionRecord> {
    let url: Option<String> = row.try_get("url").map_err(db)?;
    let nats_url: Option<String> = row.try_get("nats_url").map_err(db)?;
    let nats_subject: Option<String> = row.try_get("nats_subject").map_err(db)?;
    let destination = Destination::from_columns(url, nats_url, nats_subject)
        .ok_or_else(|| StoreError::Corrupt("a subscription without a destination".into()))?;
    let events: String = row.try_get("events").map_err(db)?;
    let status: String = row.try_get("status").map_err(db)?;
    let rate: Option<i64> = row.try_get("rate_limit_per_s").map_err(db)?;
    Ok(SubscriptionRecord {
        id: uuid_column(row, "id")?,
        destination,
        events: serde_json::from_str(&events).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        tenant_id: row.try_get("tenant_id").map_err(db)?,
        managed: row.try_get("managed").map_err(db)?,
        status: SubscriptionStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("subscription status {status:?}")))?,
        rate_limit_per_s: rate.and_then(|r| u32::try_from(r).ok()),
        secret: row.try_get("secret").map_err(db)?,
        previous_secret: row.try_get("previous_secret").map_err(db)?,
        previous_secret_until_ms: row.try_get("previous_secret_until").map_err(db)?,
        created_at_ms: row.try_get("created_at").map_err(db)?,
        failing_since_ms: row.try_get("failing_since").map_err(db)?,
        updated_at_ms: row.try_get("updated_at").map_err(db)?,
    })
}

fn delivery(row: &SqliteRow) -> StoreResult<DeliveryRecord> {
    let status: String = row.try_get("status").map_err(db)?;
    let attempts: i64 = row.try_get("attempts").map_err(db)?;
    let before: i64 = row.try_get("attempts_before_replay").map_err(db)?;
    Ok(DeliveryRecord {
        id: uuid_column(row, "id")?,
        event_id: uuid_column(row, "event_id")?,
        subscription_id: uuid_column(row, "subscription_id")?,
        event_type: row.try_get("event_type").map_err(db)?,
        tenant_id: row.try_get("tenant_id").map_err(db)?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery status {status:?}")))?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        attempts_before_replay: u32::try_from(before).unwrap_or(0),
        next_attempt_at_ms: row.try_get("next_attempt_at").map_err(db)?,
        last_error: row.try_get("last_error").map_err(db)?,
        created_at_ms: row.try_get("created_at").map_err(db)?,
        delivered_at_ms: row.try_get("delivered_at").map_err(db)?,
    })
}

/// The subscription's fields a [`SubscriptionStore::subscription_put`] of an existing one replaces.
const SUBSCRIPTION_REPLACE: &str = " ON CONFLICT (id) DO UPDATE SET url = excluded.url, nats_url = excluded.nats_url, \
     nats_subject = excluded.nats_subject, events = excluded.events, tenant_id = excluded.tenant_id, \
     status = excluded.status, managed = excluded.managed, secret = excluded.secret, previous_secret = NULL, previous_secret_until = NULL, \
     failing_since = NULL, updated_at = excluded.updated_at";

impl SqliteStore {
    async fn subscription_insert(&self, s: &SubscriptionRecord, on_conflict: &str) -> StoreResult<()> {
        self.subscription_insert_if(s, on_conflict, None).await.map(|_| ())
    }

    /// Inserts `s`; with `tenant_max`, only while its tenant has fewer of its own (one
    /// statement on the one writer: the count and the insert cannot be split). Whether it was
    /// written.
    async fn subscription_insert_if(
        &self,
        s: &SubscriptionRecord,
        on_conflict: &str,
        tenant_max: Option<u32>,
    ) -> StoreResult<bool> {
        let (url, nats_url, nats_subject) = s.destination.columns();
        let condition = if tenant_max.is_some() {
            " WHERE (SELECT count(*) FROM subscriptions WHERE tenant_id = ?6 AND NOT managed) < ?16"
        } else {
            // An upsert's SELECT needs a WHERE, or SQLite reads its ON as a join's.
            " WHERE true"
        };
        let inserted = sqlx::query(&format!(
            "INSERT INTO subscriptions (id, url, nats_url, nats_subject, events, tenant_id, status, rate_limit_per_s, \
               secret, previous_secret, previous_secret_until, failing_since, created_at, updated_at, managed) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?14, ?12, ?13, ?15{condition}{on_conflict}"
        ))
        .bind(s.id.to_string())
        .bind(url)
        .bind(nats_url)
        .bind(nats_subject)
        .bind(json_text(&s.events)?)
        .bind(&s.tenant_id)
        .bind(s.status.as_str())
        .bind(s.rate_limit_per_s.map(i64::from))
        .bind(&s.secret)
        .bind(&s.previous_secret)
        .bind(s.previous_secret_until_ms)
        .bind(s.created_at_ms)
        .bind(s.updated_at_ms)
        .bind(s.failing_since_ms)
        .bind(s.managed)
        .bind(tenant_max.map(i64::from))
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(inserted.rows_affected() > 0)
    }
}

#[async_trait]
impl SubscriptionStore for SqliteStore {
    async fn subscription_create(&self, s: &SubscriptionRecord) -> StoreResult<()> {
        self.subscription_insert(s, "").await
    }

    async fn subscriptions_existing(&self, ids: &[Uuid]) -> StoreResult<Vec<Uuid>> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let found: Vec<String> =
            sqlx::query_scalar("SELECT id FROM subscriptions WHERE id IN (SELECT value FROM json_each(?1))")
                .bind(json_text(&ids)?)
                .fetch_all(&self.reader)
                .await
                .map_err(db)?;
        found
            .iter()
            .map(|id| Uuid::parse_str(id).map_err(|e| StoreError::Corrupt(format!("subscription id {id:?}: {e}"))))
            .collect()
    }

    async fn subscription_create_capped(&self, s: &SubscriptionRecord, tenant_max: u32) -> StoreResult<()> {
        if s.tenant_id.is_none() || s.managed {
            return self.subscription_insert(s, "").await;
        }
        if !self.subscription_insert_if(s, "", Some(tenant_max)).await? {
            return Err(StoreError::Conflict(format!(
                "the tenant has {tenant_max} subscriptions of its own, the most it may make \
                 (SAGAPLANE_TENANT_SUBSCRIPTIONS_MAX); delete one first"
            )));
        }
        Ok(())
    }

    async fn subscription_put(&self, s: &SubscriptionRecord) -> StoreResult<()> {
        self.subscription_insert(s, SUBSCRIPTION_REPLACE).await
    }

    async fn subscription_get(&self, id: Uuid) -> StoreResult<SubscriptionRecord> {
        let row = sqlx::query(&format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = ?1"))
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(db)?;
        row.as_ref().map(subscription).unwrap_or(Err(StoreError::NotFound))
    }

    async fn subscription_list(&self, filter: &SubscriptionFilter) -> StoreResult<Vec<SubscriptionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions \
             WHERE (?1 IS NULL OR tenant_id = ?1) AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3"
        ))
        .bind(&filter.tenant_id)
        .bind(filter.before_id.map(|id| id.to_string()))
        .bind(i64::from(filter.limit))
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        rows.iter().map(subscription).collect()
    }

    async fn subscription_patch(
        &self,
        id: Uuid,
        patch: &SubscriptionPatch,
        now_ms: i64,
    ) -> StoreResult<SubscriptionRecord> {
        let events = patch.events.as_ref().map(json_text).transpose()?;
        let changed = sqlx::query(
            "UPDATE subscriptions SET events = COALESCE(?2, events), status = COALESCE(?3, status), \
               failing_since = CASE WHEN ?3 = 'active' THEN NULL ELSE failing_since END, \
               rate_limit_per_s = CASE WHEN ?4 THEN ?5 ELSE rate_limit_per_s END, updated_at = ?6 WHERE id = ?1",
        )
        .bind(id.to_string())
        .bind(events)
        .bind(patch.status.map(SubscriptionStatus::as_str))
        .bind(patch.rate_limit_per_s.is_some())
        .bind(patch.rate_limit_per_s.flatten().map(i64::from))
        .bind(now_ms)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        changed_one(changed.rows_affected())?;
        self.subscription_get(id).await
    }

    async fn subscription_rotate_secret(
        &self,
        id: Uuid,
        secret: &str,
        previous_until_ms: i64,
        now_ms: i64,
    ) -> StoreResult<SubscriptionRecord> {
        let changed = sqlx::query(
            "UPDATE subscriptions SET previous_secret = secret, previous_secret_until = ?3, secret = ?2, \
               updated_at = ?4 WHERE id = ?1",
        )
        .bind(id.to_string())
        .bind(secret)
        .bind(previous_until_ms)
        .bind(now_ms)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        changed_one(changed.rows_affected())?;
        self.subscription_get(id).await
    }

    async fn subscription_delete(&self, id: Uuid, now_ms: i64) -> StoreResult<()> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        let deleted = sqlx::query("DELETE FROM subscriptions WHERE id = ?1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        changed_one(deleted.rows_affected())?;
        sqlx::query(
            "UPDATE deliveries SET status = 'dead', last_error = 'the subscription was deleted', lease_owner = NULL, \
               next_attempt_at = ?2 WHERE subscription_id = ?1 AND status = 'pending'",
        )
        .bind(id.to_string())
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn events_append(&self, events: &[OutboxEvent]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.writer.begin().await.map_err(db)?;
        fan_out(&mut tx, events).await?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn delivery_get(&self, id: Uuid) -> StoreResult<(DeliveryRecord, Vec<DeliveryAttemptRecord>)> {
        let row = sqlx::query(&format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?1"))
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(db)?;
        let record = row.as_ref().map(delivery).unwrap_or(Err(StoreError::NotFound))?;
        let attempts = sqlx::query(
            "SELECT n, at, status_code, error, duration_ms FROM delivery_attempts WHERE delivery_id = ?1 ORDER BY n",
        )
        .bind(id.to_string())
        .fetch_all(&self.reader)
        .await
        .map_err(db)?
        .iter()
        .map(|row| {
            let n: i64 = row.try_get("n").map_err(db)?;
            let code: Option<i64> = row.try_get("status_code").map_err(db)?;
            Ok(DeliveryAttemptRecord {
                n: u32::try_from(n).unwrap_or(0),
                at_ms: row.try_get("at").map_err(db)?,
                status_code: code.and_then(|c| u16::try_from(c).ok()),
                error: row.try_get("error").map_err(db)?,
                duration_ms: row.try_get("duration_ms").map_err(db)?,
            })
        })
        .collect::<StoreResult<_>>()?;
        Ok((record, attempts))
    }

    async fn delivery_list(&self, filter: &DeliveryFilter) -> StoreResult<Vec<DeliveryRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries \
             WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR subscription_id = ?2) \
               AND (?3 IS NULL OR subscription_id IN (SELECT id FROM subscriptions WHERE tenant_id = ?3)) \
               AND (?4 IS NULL OR id < ?4) \
             ORDER BY id DESC LIMIT ?5"
        ))
        .bind(filter.status.map(DeliveryStatus::as_str))
        .bind(filter.subscription_id.map(|id| id.to_string()))
        .bind(&filter.subscription_tenant_id)
        .bind(filter.before_id.map(|id| id.to_string()))
        .bind(i64::from(filter.limit))
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        rows.iter().map(delivery).collect()
    }

    async fn delivery_replay(&self, id: Uuid, now_ms: i64) -> StoreResult<DeliveryRecord> {
        let changed = sqlx::query(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = ?2, attempts_before_replay = attempts, \
               lease_owner = NULL WHERE id = ?1 AND status = 'dead'",
        )
        .bind(id.to_string())
        .bind(now_ms)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        let (record, _) = self.delivery_get(id).await?;
        if changed.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "delivery is {}, only a dead one is replayed",
                record.status.as_str()
            )));
        }
        Ok(record)
    }

    async fn deliveries_recover(
        &self,
        subscription_id: Uuid,
        since_ms: i64,
        limit: u32,
        now_ms: i64,
    ) -> StoreResult<(u64, bool)> {
        let recovered = sqlx::query(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = ?3, attempts_before_replay = attempts, \
               lease_owner = NULL \
             WHERE id IN (SELECT id FROM deliveries WHERE subscription_id = ?1 AND status = 'dead' \
                          AND created_at >= ?2 ORDER BY id LIMIT ?4)",
        )
        .bind(subscription_id.to_string())
        .bind(since_ms)
        .bind(now_ms)
        .bind(i64::from(limit))
        .execute(&self.writer)
        .await
        .map_err(db)?;
        let more: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM deliveries WHERE subscription_id = ?1 AND status = 'dead' AND created_at >= ?2)",
        )
        .bind(subscription_id.to_string())
        .bind(since_ms)
        .fetch_one(&self.writer)
        .await
        .map_err(db)?;
        Ok((recovered.rows_affected(), more))
    }
}

#[async_trait]
impl DispatchStore for SqliteStore {
    async fn delivery_release(&self, released: &[(Uuid, i64)], due_at_ms: i64) -> StoreResult<()> {
        if released.is_empty() {
            return Ok(());
        }
        let mut tx = self.writer.begin().await.map_err(db)?;
        for (id, token) in released {
            sqlx::query(
                "UPDATE deliveries SET lease_owner = NULL, next_attempt_at = ?3 \
                 WHERE id = ?1 AND fencing_token = ?2 AND status = 'pending'",
            )
            .bind(id.to_string())
            .bind(token)
            .bind(due_at_ms)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn delivery_claim_due(&self, params: &DeliveryClaimParams) -> StoreResult<Vec<ClaimedDelivery>> {
        let skip = json_text(&params.skip_subscriptions.iter().map(Uuid::to_string).collect::<Vec<_>>())?;
        let mut tx = self.writer.begin().await.map_err(db)?;
        let rows = sqlx::query(&format!(
            "UPDATE deliveries SET lease_owner = ?3, next_attempt_at = ?1 + ?5, fencing_token = fencing_token + 1 \
             WHERE id IN ( \
               SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ?1 \
                 AND subscription_id NOT IN (SELECT value FROM json_each(?4)) \
                 AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.id = subscription_id AND s.status = 'active') \
               ORDER BY created_at DESC LIMIT ?2) \
             RETURNING {DELIVERY_COLUMNS}, fencing_token"
        ))
        .bind(params.now_ms)
        .bind(i64::from(params.limit.min(saga_store::DELIVERY_CLAIM_MAX)))
        .bind(&params.worker_id)
        .bind(skip)
        .bind(params.lease_ttl_ms)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let delivery = delivery(row)?;
            let fencing_token: i64 = row.try_get("fencing_token").map_err(db)?;
            let event = sqlx::query("SELECT data, created_at, expires_at FROM events WHERE id = ?1")
                .bind(delivery.event_id.to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
            let found = sqlx::query(&format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = ?1"))
                .bind(delivery.subscription_id.to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
            let (Some(event), Some(found)) = (event, found) else { continue };
            let data: String = event.try_get("data").map_err(db)?;
            claimed.push(ClaimedDelivery {
                delivery,
                fencing_token,
                event_data: serde_json::from_str(&data).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                event_at_ms: event.try_get("created_at").map_err(db)?,
                event_expires_at_ms: event.try_get("expires_at").map_err(db)?,
                subscription: subscription(&found)?,
            });
        }
        tx.commit().await.map_err(db)?;
        // RETURNING keeps no order: newest event first, as claimed.
        claimed.sort_by_key(|c| std::cmp::Reverse((c.delivery.created_at_ms, c.delivery.id)));
        Ok(claimed)
    }

    async fn delivery_attempts_record(&self, results: &[DeliveryAttemptResult]) -> StoreResult<Vec<bool>> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        let mut recorded = Vec::with_capacity(results.len());
        for result in results {
            recorded.push(record_attempt(&mut tx, result).await?);
        }
        tx.commit().await.map_err(db)?;
        Ok(recorded)
    }

    async fn delivery_backlog(&self) -> StoreResult<Vec<saga_store::DeliveryBacklog>> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT subscription_id, count(*), min(created_at) FROM deliveries WHERE status = 'pending' \
             GROUP BY subscription_id",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        rows.into_iter()
            .map(|(subscription_id, pending, oldest)| {
                Ok(saga_store::DeliveryBacklog {
                    subscription_id: Uuid::parse_str(&subscription_id)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    pending: u64::try_from(pending).unwrap_or(0),
                    oldest_created_at_ms: oldest,
                })
            })
            .collect()
    }

    async fn subscriptions_disable_failing(
        &self,
        failing_since_before_ms: i64,
        now_ms: i64,
        report: &(dyn for<'a> Fn(&'a SubscriptionRecord) -> OutboxEvent + Send + Sync),
    ) -> StoreResult<Vec<SubscriptionRecord>> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        let rows = sqlx::query(&format!(
            "UPDATE subscriptions SET status = 'disabled', updated_at = ?2 \
             WHERE status = 'active' AND failing_since <= ?1 RETURNING {SUBSCRIPTION_COLUMNS}"
        ))
        .bind(failing_since_before_ms)
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let disabled = rows.iter().map(subscription).collect::<StoreResult<Vec<_>>>()?;
        let events: Vec<OutboxEvent> = disabled.iter().map(report).collect();
        fan_out(&mut tx, &events).await?;
        tx.commit().await.map_err(db)?;
        Ok(disabled)
    }
}
