//! Outbound delivery: subscriptions, the outbox fan-out (events and their deliveries in the
//! writer's statement, matched to subscriptions by `saga_store::Subscribers`), claims of due
//! deliveries (`SKIP LOCKED`, fencing token) and attempts.

use std::sync::Arc;

use async_trait::async_trait;
use saga_store::{
    ClaimedDelivery, DeliveryAttemptResult, DeliveryClaimParams, DispatchStore, OutboxEvent, StoreError, StoreResult,
    Subscribers, SubscriptionRecord,
};
use sqlx::Row;
use uuid::Uuid;

use store_sql::subscriptions::{delivery, subscription, OwnDeliveryStatements, SUBSCRIPTION_COLUMNS};

use super::PostgresStore;
use crate::dialect::Pg;
use crate::rows::{db, json_text};

/// [`DELIVERY_COLUMNS`](store_sql::subscriptions::DELIVERY_COLUMNS) of a `deliveries d`.
const DELIVERY_COLUMNS: &str = "d.id, d.event_id, d.subscription_id, d.event_type, d.tenant_id, d.status, d.attempts, \
     d.attempts_before_replay, d.next_attempt_at, d.last_error, d.created_at, d.delivered_at";

/// The outbox fan-out for events `ev(id, type, tenant_id, data, at, expires_at)` defined before
/// it and the `(event, subscription)` pairs [`Subscribers::of`] chose, in the two arrays from
/// `$first`: each event with a pair is stored once, with one pending delivery per pair whose
/// subscription is still active (ids keep the event's time prefix, so they sort by it).
pub(super) fn fan_out_ctes(first: u32) -> String {
    format!(
        "m AS ( \
           SELECT ev.id AS event_id, ev.type, ev.tenant_id, ev.at, p.subscription_id \
           FROM UNNEST(${}::uuid[], ${}::uuid[]) AS p(event_id, subscription_id) \
           JOIN ev ON ev.id = p.event_id \
           JOIN subscriptions s ON s.id = p.subscription_id AND s.status = 'active'), \
         ei AS ( \
           INSERT INTO events (id, type, tenant_id, data, created_at, expires_at) \
           SELECT ev.id, ev.type, ev.tenant_id, ev.data::json, ev.at, ev.expires_at FROM ev \
           WHERE EXISTS (SELECT 1 FROM m WHERE m.event_id = ev.id) RETURNING id), \
         di AS ( \
           INSERT INTO deliveries (id, event_id, subscription_id, event_type, tenant_id, status, next_attempt_at, created_at) \
           SELECT (substr(m.event_id::text, 1, 14) || substr(gen_random_uuid()::text, 15))::uuid, \
                  m.event_id, m.subscription_id, m.type, m.tenant_id, 'pending', m.at, m.at \
           FROM m JOIN ei ON ei.id = m.event_id RETURNING id) ",
        first,
        first + 1
    )
}

/// Outbox events as parallel arrays for `UNNEST`, with the subscriptions each goes to.
#[derive(Default)]
pub(super) struct OutboxColumns {
    pub ids: Vec<Uuid>,
    pub types: Vec<String>,
    pub tenant_ids: Vec<Option<String>>,
    pub data: Vec<String>,
    pub ats: Vec<i64>,
    pub to_subscriptions: Vec<Option<Uuid>>,
    pub expires: Vec<Option<i64>>,
    /// One per delivery to write: the event and the subscription.
    pub pair_events: Vec<Uuid>,
    pub pair_subscriptions: Vec<Uuid>,
}

impl OutboxColumns {
    pub fn push(&mut self, event: &OutboxEvent, subscribers: &Subscribers) -> StoreResult<()> {
        self.ids.push(event.id);
        self.types.push(event.event_type.clone());
        self.tenant_ids.push(event.tenant_id.clone());
        self.data.push(json_text(&event.data)?);
        self.ats.push(event.at_ms);
        self.to_subscriptions.push(event.to_subscription);
        self.expires.push(event.expires_at_ms);
        for subscription in subscribers.of(event) {
            self.pair_events.push(event.id);
            self.pair_subscriptions.push(subscription);
        }
        Ok(())
    }
}

/// The active subscriptions as `conn` sees them now, and the epoch they are of
/// (`subscription_epoch`, moved by every change to them): one statement, so one snapshot.
pub(super) async fn read_subscribers<'c, E>(conn: E) -> StoreResult<(i64, Subscribers)>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let rows = sqlx::query(
        "SELECT e.epoch, s.id, s.tenant_id, s.events FROM subscription_epoch e \
         LEFT JOIN subscriptions s ON s.status = 'active'",
    )
    .fetch_all(conn)
    .await
    .map_err(db)?;
    let epoch = match rows.first() {
        Some(row) => row.try_get("epoch").map_err(db)?,
        None => return Err(StoreError::Corrupt("subscription_epoch has no row".into())),
    };
    let mut active = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(id) = row.try_get::<Option<Uuid>, _>("id").map_err(db)? else {
            continue;
        };
        let events: Option<sqlx::types::Json<Vec<String>>> = row.try_get("events").map_err(db)?;
        active.push((id, row.try_get("tenant_id").map_err(db)?, events.map(|e| e.0).unwrap_or_default()));
    }
    Ok((epoch, Subscribers::new(active)))
}

impl PostgresStore {
    /// The active subscriptions as this instance last read them, with their epoch; read now if
    /// it has not (or let them go since).
    pub(super) async fn subscribers(&self) -> StoreResult<Arc<(i64, Subscribers)>> {
        if let Some(cached) = self.subscribers.read().ok().and_then(|cached| cached.clone()) {
            return Ok(cached);
        }
        let read = Arc::new(read_subscribers(&self.db).await?);
        if let Ok(mut cached) = self.subscribers.write() {
            *cached = Some(read.clone());
        }
        Ok(read)
    }

    /// Whether the subscriptions changed since `epoch`; if so the ones read are let go.
    pub(super) async fn subscribers_outdated(&self, epoch: i64) -> StoreResult<bool> {
        let now: i64 =
            sqlx::query_scalar("SELECT epoch FROM subscription_epoch").fetch_one(&self.db).await.map_err(db)?;
        if now == epoch {
            return Ok(false);
        }
        if let Ok(mut cached) = self.subscribers.write() {
            if cached.as_ref().is_some_and(|c| c.0 == epoch) {
                *cached = None;
            }
        }
        Ok(true)
    }
}

/// Writes each event an active subscription wants, with its deliveries, on `conn` (a writer's
/// transaction, so with the change it reports), matched over the subscriptions it sees.
pub(super) async fn fan_out(conn: &mut sqlx::PgConnection, events: &[OutboxEvent]) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let (_, subscribers) = read_subscribers(&mut *conn).await?;
    if subscribers.is_empty() {
        return Ok(());
    }
    let mut columns = OutboxColumns::default();
    for event in events {
        columns.push(event, &subscribers)?;
    }
    if columns.pair_events.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "WITH ev AS (SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::uuid[], \
                                          $7::bigint[]) \
                     AS e(id, type, tenant_id, data, at, to_subscription, expires_at)), {} \
         SELECT count(*) FROM di",
        fan_out_ctes(8)
    );
    sqlx::query(&sql)
        .bind(columns.ids)
        .bind(columns.types)
        .bind(columns.tenant_ids)
        .bind(columns.data)
        .bind(columns.ats)
        .bind(columns.to_subscriptions)
        .bind(columns.expires)
        .bind(columns.pair_events)
        .bind(columns.pair_subscriptions)
        .execute(conn)
        .await
        .map_err(db)?;
    Ok(())
}

#[async_trait]
impl OwnDeliveryStatements for PostgresStore {
    async fn existing_subscriptions(&self, ids: &[Uuid]) -> StoreResult<Vec<Uuid>> {
        sqlx::query_scalar("SELECT id FROM subscriptions WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&self.db)
            .await
            .map_err(db)
    }

    async fn append_events(&self, events: &[OutboxEvent]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin().await.map_err(db)?;
        fan_out(&mut tx, events).await?;
        tx.commit().await.map_err(db)
    }

    async fn recover_deliveries(
        &self,
        subscription_id: Uuid,
        since_ms: i64,
        limit: u32,
        now_ms: i64,
    ) -> StoreResult<(u64, bool)> {
        let recovered = sqlx::query(
            // The oldest `limit`, picked once (a locking CTE is evaluated once; a subquery in
            // `IN` may run again per row and pick more).
            "WITH picked AS (SELECT id FROM deliveries WHERE subscription_id = $1 AND status = 'dead' \
                               AND created_at >= $2 ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) \
             UPDATE deliveries d SET status = 'pending', next_attempt_at = $3, attempts_before_replay = d.attempts, \
               lease_owner = NULL FROM picked WHERE d.id = picked.id",
        )
        .bind(subscription_id)
        .bind(since_ms)
        .bind(now_ms)
        .bind(i64::from(limit))
        .execute(&self.db)
        .await
        .map_err(db)?;
        let more: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM deliveries WHERE subscription_id = $1 AND status = 'dead' AND created_at >= $2)",
        )
        .bind(subscription_id)
        .bind(since_ms)
        .fetch_one(&self.db)
        .await
        .map_err(db)?;
        Ok((recovered.rows_affected(), more))
    }
}

store_sql::subscription_store!(PostgresStore);

#[async_trait]
impl DispatchStore for PostgresStore {
    async fn delivery_claim_due(&self, params: &DeliveryClaimParams) -> StoreResult<Vec<ClaimedDelivery>> {
        let rows = sqlx::query(&format!(
            "WITH due AS ( \
               SELECT d.id FROM deliveries d \
               WHERE d.status = 'pending' AND d.next_attempt_at <= $1 AND d.subscription_id <> ALL($4::uuid[]) \
                 AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.id = d.subscription_id AND s.status = 'active') \
               ORDER BY d.created_at DESC LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE deliveries d SET lease_owner = $3, next_attempt_at = $1 + $5, fencing_token = d.fencing_token + 1 \
             FROM due WHERE d.id = due.id \
             RETURNING {DELIVERY_COLUMNS}, d.fencing_token"
        ))
        .bind(params.now_ms)
        .bind(i64::from(params.limit.min(saga_store::DELIVERY_CLAIM_MAX)))
        .bind(&params.worker_id)
        .bind(&params.skip_subscriptions)
        .bind(params.lease_ttl_ms)
        .fetch_all(&self.db)
        .await
        .map_err(db)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            claimed.push((delivery::<Pg>(row)?, row.try_get::<i64, _>("fencing_token").map_err(db)?));
        }
        // RETURNING keeps no order: newest event first, as claimed.
        claimed.sort_by_key(|(d, _)| std::cmp::Reverse((d.created_at_ms, d.id)));
        let event_ids: Vec<Uuid> = claimed.iter().map(|(d, _)| d.event_id).collect();
        let subscription_ids: Vec<Uuid> = claimed.iter().map(|(d, _)| d.subscription_id).collect();
        type EventFacts = (serde_json::Value, i64, Option<i64>);
        let events: std::collections::HashMap<Uuid, EventFacts> =
            sqlx::query("SELECT id, data, created_at, expires_at FROM events WHERE id = ANY($1)")
                .bind(&event_ids)
                .fetch_all(&self.db)
                .await
                .map_err(db)?
                .iter()
                .map(|row| {
                    let data: sqlx::types::Json<serde_json::Value> = row.try_get("data").map_err(db)?;
                    let facts =
                        (data.0, row.try_get("created_at").map_err(db)?, row.try_get("expires_at").map_err(db)?);
                    Ok((row.try_get("id").map_err(db)?, facts))
                })
                .collect::<StoreResult<_>>()?;
        let subscriptions: std::collections::HashMap<Uuid, SubscriptionRecord> =
            sqlx::query(&format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = ANY($1)"))
                .bind(&subscription_ids)
                .fetch_all(&self.db)
                .await
                .map_err(db)?
                .iter()
                .map(|row| subscription::<Pg>(row).map(|s| (s.id, s)))
                .collect::<StoreResult<_>>()?;
        Ok(claimed
            .into_iter()
            .filter_map(|(delivery, fencing_token)| {
                let (event_data, event_at_ms, event_expires_at_ms) = events.get(&delivery.event_id)?.clone();
                let subscription = subscriptions.get(&delivery.subscription_id)?.clone();
                Some(ClaimedDelivery {
                    delivery,
                    fencing_token,
                    event_data,
                    event_at_ms,
                    event_expires_at_ms,
                    subscription,
                })
            })
            .collect())
    }

    async fn delivery_attempts_record(&self, results: &[DeliveryAttemptResult]) -> StoreResult<Vec<bool>> {
        if results.is_empty() {
            return Ok(Vec::new());
        }
        // In id order, like every multi-row write.
        let mut sorted: Vec<&DeliveryAttemptResult> = results.iter().collect();
        sorted.sort_unstable_by_key(|r| r.id);
        let ids: Vec<Uuid> = sorted.iter().map(|r| r.id).collect();
        let tokens: Vec<i64> = sorted.iter().map(|r| r.fencing_token).collect();
        let statuses: Vec<&str> = sorted.iter().map(|r| r.status.as_str()).collect();
        let next: Vec<i64> = sorted.iter().map(|r| r.next_attempt_at_ms).collect();
        let errors: Vec<Option<String>> = sorted.iter().map(|r| r.attempt.error.clone()).collect();
        let ats: Vec<i64> = sorted.iter().map(|r| r.attempt.at_ms).collect();
        let codes: Vec<Option<i32>> = sorted.iter().map(|r| r.attempt.status_code.map(i32::from)).collect();
        let durations: Vec<i64> = sorted.iter().map(|r| r.attempt.duration_ms).collect();
        let recorded: Vec<Uuid> = sqlx::query_scalar(
            "WITH r AS (SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], \
                                             $6::bigint[], $7::int4[], $8::bigint[]) \
                        AS r(id, token, status, next_at, error, at, code, duration)), \
               d AS ( \
                 UPDATE deliveries d SET status = r.status, attempts = d.attempts + 1, next_attempt_at = r.next_at, \
                   last_error = r.error, lease_owner = NULL, \
                   delivered_at = CASE WHEN r.status = 'succeeded' THEN r.at ELSE d.delivered_at END \
                 FROM r WHERE d.id = r.id AND d.fencing_token = r.token RETURNING d.id, d.attempts, d.subscription_id), \
               i AS ( \
                 INSERT INTO delivery_attempts (delivery_id, n, at, status_code, error, duration_ms) \
                 SELECT d.id, d.attempts, r.at, r.code, r.error, r.duration FROM d JOIN r ON r.id = d.id), \
               h AS ( \
                 SELECT d.subscription_id, bool_or(r.status = 'succeeded') AS ok, min(r.at) AS first_at \
                 FROM d JOIN r ON r.id = d.id GROUP BY d.subscription_id), \
               s AS ( \
                 UPDATE subscriptions s SET failing_since = CASE WHEN h.ok THEN NULL ELSE h.first_at END FROM h \
                 WHERE s.id = h.subscription_id \
                   AND CASE WHEN h.ok THEN s.failing_since IS NOT NULL ELSE s.failing_since IS NULL END) \
             SELECT id FROM d",
        )
        .bind(ids)
        .bind(tokens)
        .bind(statuses)
        .bind(next)
        .bind(errors)
        .bind(ats)
        .bind(codes)
        .bind(durations)
        .fetch_all(&self.db)
        .await
        .map_err(db)?;
        Ok(results.iter().map(|r| recorded.contains(&r.id)).collect())
    }

    async fn delivery_release(&self, released: &[(Uuid, i64)], due_at_ms: i64) -> StoreResult<()> {
        if released.is_empty() {
            return Ok(());
        }
        let (ids, tokens): (Vec<Uuid>, Vec<i64>) = released.iter().copied().unzip();
        sqlx::query(
            "UPDATE deliveries d SET lease_owner = NULL, next_attempt_at = $3 \
             FROM UNNEST($1::uuid[], $2::bigint[]) AS r(id, token) \
             WHERE d.id = r.id AND d.fencing_token = r.token AND d.status = 'pending'",
        )
        .bind(ids)
        .bind(tokens)
        .bind(due_at_ms)
        .execute(&self.db)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn delivery_backlog(&self) -> StoreResult<Vec<saga_store::DeliveryBacklog>> {
        let rows: Vec<(Uuid, i64, i64)> = sqlx::query_as(
            "SELECT subscription_id, count(*), min(created_at) FROM deliveries WHERE status = 'pending' \
             GROUP BY subscription_id",
        )
        .fetch_all(&self.db)
        .await
        .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|(subscription_id, pending, oldest)| saga_store::DeliveryBacklog {
                subscription_id,
                pending: u64::try_from(pending).unwrap_or(0),
                oldest_created_at_ms: oldest,
            })
            .collect())
    }

    async fn subscriptions_disable_failing(
        &self,
        failing_since_before_ms: i64,
        now_ms: i64,
        report: &(dyn for<'a> Fn(&'a SubscriptionRecord) -> OutboxEvent + Send + Sync),
    ) -> StoreResult<Vec<SubscriptionRecord>> {
        let mut tx = self.db.begin().await.map_err(db)?;
        let rows = sqlx::query(&format!(
            "UPDATE subscriptions SET status = 'disabled', updated_at = $2 \
             WHERE status = 'active' AND failing_since <= $1 RETURNING {SUBSCRIPTION_COLUMNS}"
        ))
        .bind(failing_since_before_ms)
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let disabled = rows.iter().map(subscription::<Pg>).collect::<StoreResult<Vec<_>>>()?;
        let events: Vec<OutboxEvent> = disabled.iter().map(report).collect();
        fan_out(&mut tx, &events).await?;
        tx.commit().await.map_err(db)?;
        Ok(disabled)
    }
}
