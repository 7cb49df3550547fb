//! Outbound delivery: subscriptions, the outbox fan-out (events and their deliveries in the
//! writer's transaction), claims of due deliveries (the single writer serialises claimers; a
//! fencing token per claim) and attempts.

use async_trait::async_trait;
use saga_store::{
    ClaimedDelivery, DeliveryAttemptResult, DeliveryClaimParams, DeliveryStatus, DispatchStore, OutboxEvent,
    StoreError, StoreResult, Subscribers, SubscriptionRecord,
};
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use store_sql::subscriptions::{delivery, subscription, OwnDeliveryStatements, DELIVERY_COLUMNS, SUBSCRIPTION_COLUMNS};

use super::SqliteStore;
use crate::dialect::Lite;
use crate::rows::{db, json_text};

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
    // Every event wanted and every delivery, each kind one statement (a statement is a round
    // trip to SQLite's thread; one per row cost half of saga3's rate with a subscription).
    let mut rows = Vec::new();
    let mut deliveries = Vec::new();
    for event in events {
        let wanting = subscribers.of(event);
        if wanting.is_empty() {
            continue;
        }
        let event_id = event.id.to_string();
        for subscription_id in wanting {
            deliveries.push(DeliveryRow(
                Uuid::now_v7().to_string(),
                event_id.clone(),
                subscription_id.to_string(),
                &event.event_type,
                event.tenant_id.as_deref(),
                event.at_ms,
            ));
        }
        rows.push(EventRow(
            event_id,
            &event.event_type,
            event.tenant_id.as_deref(),
            json_text(&event.data)?,
            event.at_ms,
            event.expires_at_ms,
        ));
    }
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO events (id, type, tenant_id, data, created_at, expires_at) \
         SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5 FROM json_each(?)",
    )
    .bind(json_text(&rows)?)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    sqlx::query(
        "INSERT INTO deliveries (id, event_id, subscription_id, event_type, tenant_id, status, next_attempt_at, \
           created_at) \
         SELECT value->>0, value->>1, value->>2, value->>3, value->>4, 'pending', value->>5, value->>5 \
         FROM json_each(?)",
    )
    .bind(json_text(&deliveries)?)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// An event row as [`fan_out`]'s statement reads it: id, type, tenant, data's JSON text, created
/// and expiring times.
#[derive(serde::Serialize)]
struct EventRow<'a>(String, &'a str, Option<&'a str>, String, i64, Option<i64>);

/// A pending delivery as [`fan_out`]'s statement reads it: id, event, subscription, type, tenant,
/// its time (due and created).
#[derive(serde::Serialize)]
struct DeliveryRow<'a>(String, String, String, &'a str, Option<&'a str>, i64);

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

#[async_trait]
impl OwnDeliveryStatements for SqliteStore {
    async fn existing_subscriptions(&self, ids: &[Uuid]) -> StoreResult<Vec<Uuid>> {
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

    async fn append_events(&self, events: &[OutboxEvent]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.writer.begin().await.map_err(db)?;
        fan_out(&mut tx, events).await?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn recover_deliveries(
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

store_sql::subscription_store!(SqliteStore);

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
            let delivery = delivery::<Lite>(row)?;
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
                subscription: subscription::<Lite>(&found)?,
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
        let disabled = rows.iter().map(subscription::<Lite>).collect::<StoreResult<Vec<_>>>()?;
        let events: Vec<OutboxEvent> = disabled.iter().map(report).collect();
        fan_out(&mut tx, &events).await?;
        tx.commit().await.map_err(db)?;
        Ok(disabled)
    }
}
