//! Outbound delivery: subscriptions, the outbox fan-out (events and their deliveries in the
//! writer's transaction), claims of due deliveries (the single writer serialises claimers; a
//! fencing token per claim) and attempts.

use async_trait::async_trait;
use saga_store::{
    ClaimedDelivery, DeliveryAttemptResult, DeliveryClaimParams, DeliveryStatus, DispatchStore, OutboxEvent,
    StoreError, StoreResult, Subscribers, SubscriptionRecord,
};
use std::collections::HashMap;

use sqlx::sqlite::SqliteRow;
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

/// A batch's attempts, each fenced on its token, in the writer's transaction: per attempt,
/// false when fenced. Three statements for the batch, and one per subscription whose health
/// changes: the deliveries, their attempt rows, the subscriptions' `failing_since`.
async fn record_attempts(conn: &mut SqliteConnection, results: &[DeliveryAttemptResult]) -> StoreResult<Vec<bool>> {
    let ids: Vec<String> = results.iter().map(|r| r.id.to_string()).collect();
    let mut distinct = std::collections::HashSet::new();
    if !ids.iter().all(|id| distinct.insert(id)) {
        // A delivery twice in a batch: rows come back by id, so each is written on its own.
        let mut recorded = Vec::with_capacity(results.len());
        for result in results {
            recorded.extend(Box::pin(record_attempts(conn, std::slice::from_ref(result))).await?);
        }
        return Ok(recorded);
    }
    let updates: Vec<AttemptUpdate> = results
        .iter()
        .zip(&ids)
        .map(|(r, id)| {
            AttemptUpdate(
                id,
                r.fencing_token,
                r.status.as_str(),
                r.next_attempt_at_ms,
                r.attempt.error.as_deref(),
                r.attempt.at_ms,
            )
        })
        .collect();
    let rows = sqlx::query(
        "UPDATE deliveries SET status = c.to_status, attempts = attempts + 1, next_attempt_at = c.due, \
           last_error = c.failure, delivered_at = CASE WHEN c.to_status = 'succeeded' THEN c.at ELSE delivered_at END, \
           lease_owner = NULL \
         FROM (SELECT value->>0 AS delivery, value->>1 AS token, value->>2 AS to_status, value->>3 AS due, \
           value->>4 AS failure, value->>5 AS at FROM json_each(?1)) AS c \
         WHERE deliveries.id = c.delivery AND deliveries.fencing_token = c.token \
         RETURNING id, attempts, subscription_id",
    )
    .bind(json_text(&updates)?)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let mut written: HashMap<String, (i64, String)> = HashMap::with_capacity(rows.len());
    for row in &rows {
        written.insert(
            row.try_get("id").map_err(db)?,
            (row.try_get("attempts").map_err(db)?, row.try_get("subscription_id").map_err(db)?),
        );
    }
    let mut attempts = Vec::with_capacity(written.len());
    // Each subscription's health after the batch's attempts, in order: a success clears
    // `failing_since`, a failure sets it unless it is set.
    let mut health: Vec<(&str, Health)> = Vec::new();
    for (result, id) in results.iter().zip(&ids) {
        let Some((n, subscription_id)) = written.get(id) else { continue };
        let attempt = &result.attempt;
        attempts.push(AttemptRow(
            id,
            *n,
            attempt.at_ms,
            attempt.status_code,
            attempt.error.as_deref(),
            attempt.duration_ms,
        ));
        let succeeded = result.status == DeliveryStatus::Succeeded;
        match health.iter_mut().find(|(s, _)| s == subscription_id) {
            Some((_, state)) => *state = state.then(succeeded, attempt.at_ms),
            None => health.push((subscription_id, Health::first(succeeded, attempt.at_ms))),
        }
    }
    if !attempts.is_empty() {
        sqlx::query(
            "INSERT INTO delivery_attempts (delivery_id, n, at, status_code, error, duration_ms) \
             SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5 FROM json_each(?1)",
        )
        .bind(json_text(&attempts)?)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    for (subscription_id, state) in health {
        let query = match state {
            Health::Clear => {
                sqlx::query("UPDATE subscriptions SET failing_since = NULL WHERE id = ?1 AND failing_since IS NOT NULL")
                    .bind(subscription_id)
            }
            Health::FailingSince(at) => {
                sqlx::query("UPDATE subscriptions SET failing_since = ?2 WHERE id = ?1").bind(subscription_id).bind(at)
            }
            Health::FailingUnlessSet(at) => {
                sqlx::query("UPDATE subscriptions SET failing_since = ?2 WHERE id = ?1 AND failing_since IS NULL")
                    .bind(subscription_id)
                    .bind(at)
            }
        };
        query.execute(&mut *conn).await.map_err(db)?;
    }
    Ok(results.iter().zip(&ids).map(|(_, id)| written.contains_key(id)).collect())
}

/// A delivery's attempt as [`record_attempts`]' update reads it: id, token, status, next due,
/// error, time.
#[derive(serde::Serialize)]
struct AttemptUpdate<'a>(&'a str, i64, &'a str, i64, Option<&'a str>, i64);

/// An attempt row: delivery, its number, time, status code, error, duration.
#[derive(serde::Serialize)]
struct AttemptRow<'a>(&'a str, i64, i64, Option<u16>, Option<&'a str>, i64);

/// What a batch's attempts leave of a subscription's `failing_since`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Health {
    /// The last attempt succeeded: cleared.
    Clear,
    /// Cleared, then failed from this time on: set.
    FailingSince(i64),
    /// Failed from this time on, with no success before in the batch: set unless already set.
    FailingUnlessSet(i64),
}

impl Health {
    fn first(succeeded: bool, at_ms: i64) -> Health {
        if succeeded {
            Health::Clear
        } else {
            Health::FailingUnlessSet(at_ms)
        }
    }

    /// This state followed by one more attempt.
    fn then(self, succeeded: bool, at_ms: i64) -> Health {
        match (self, succeeded) {
            (_, true) => Health::Clear,
            (Health::Clear, false) => Health::FailingSince(at_ms),
            (failing, false) => failing,
        }
    }
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
        // The events and subscriptions of every delivery claimed, one statement each.
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in &rows {
            let fencing_token: i64 = row.try_get("fencing_token").map_err(db)?;
            deliveries.push((delivery::<Lite>(row)?, fencing_token));
        }
        let event_ids: Vec<String> = deliveries.iter().map(|(d, _)| d.event_id.to_string()).collect();
        let events: HashMap<String, SqliteRow> = sqlx::query(
            "SELECT id, data, created_at, expires_at FROM events WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_text(&event_ids)?)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?
        .into_iter()
        .map(|row| Ok((row.try_get::<String, _>("id").map_err(db)?, row)))
        .collect::<StoreResult<_>>()?;
        let subscription_ids: Vec<String> = deliveries.iter().map(|(d, _)| d.subscription_id.to_string()).collect();
        let subscriptions: HashMap<Uuid, SubscriptionRecord> = sqlx::query(&format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id IN (SELECT value FROM json_each(?1))"
        ))
        .bind(json_text(&subscription_ids)?)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?
        .iter()
        .map(|row| subscription::<Lite>(row).map(|found| (found.id, found)))
        .collect::<StoreResult<_>>()?;
        let mut claimed = Vec::with_capacity(deliveries.len());
        for (delivery, fencing_token) in deliveries {
            let event = events.get(&delivery.event_id.to_string());
            let found = subscriptions.get(&delivery.subscription_id);
            let (Some(event), Some(found)) = (event, found) else { continue };
            let data: String = event.try_get("data").map_err(db)?;
            claimed.push(ClaimedDelivery {
                delivery,
                fencing_token,
                event_data: serde_json::from_str(&data).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                event_at_ms: event.try_get("created_at").map_err(db)?,
                event_expires_at_ms: event.try_get("expires_at").map_err(db)?,
                subscription: found.clone(),
            });
        }
        tx.commit().await.map_err(db)?;
        // RETURNING keeps no order: newest event first, as claimed.
        claimed.sort_by_key(|c| std::cmp::Reverse((c.delivery.created_at_ms, c.delivery.id)));
        Ok(claimed)
    }

    async fn delivery_attempts_record(&self, results: &[DeliveryAttemptResult]) -> StoreResult<Vec<bool>> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        let recorded = record_attempts(&mut tx, results).await?;
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

#[cfg(test)]
mod tests {
    use super::Health;

    /// Folds attempts (succeeded?, time) as the batch does.
    fn after(attempts: &[(bool, i64)]) -> Health {
        let (first, rest) = attempts.split_first().expect("an attempt");
        rest.iter().fold(Health::first(first.0, first.1), |h, (ok, at)| h.then(*ok, *at))
    }

    #[test]
    fn a_batch_leaves_a_subscriptions_health_as_its_attempts_one_by_one_would() {
        assert_eq!(after(&[(true, 1)]), Health::Clear);
        assert_eq!(after(&[(false, 1), (false, 2)]), Health::FailingUnlessSet(1));
        assert_eq!(after(&[(false, 1), (true, 2)]), Health::Clear);
        assert_eq!(after(&[(true, 1), (false, 2), (false, 3)]), Health::FailingSince(2));
        assert_eq!(after(&[(false, 1), (true, 2), (false, 3)]), Health::FailingSince(3));
    }
}
