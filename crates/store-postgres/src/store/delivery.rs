//! Outbound delivery: subscriptions, the outbox fan-out (events and their deliveries in the
//! writer's statement, matched to subscriptions by `saga_store::Subscribers`), claims of due
//! deliveries (`SKIP LOCKED`, fencing token) and attempts.

use std::sync::Arc;

use async_trait::async_trait;
use saga_store::{
    ClaimedDelivery, DeliveryAttemptRecord, DeliveryAttemptResult, DeliveryClaimParams, DeliveryFilter, DeliveryRecord,
    DeliveryStatus, Destination, DispatchStore, OutboxEvent, StoreError, StoreResult, Subscribers, SubscriptionFilter,
    SubscriptionPatch, SubscriptionRecord, SubscriptionStatus, SubscriptionStore,
};
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use super::PostgresStore;
use crate::rows::{changed_one, db, json_text};

const SUBSCRIPTION_COLUMNS: &str =
    "id, url, nats_url, nats_subject, events, tenant_id, managed, status, rate_limit_per_s, \
     secret, previous_secret, previous_secret_until, failing_since, created_at, updated_at";

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

fn subscription(row: &PgRow) -> StoreResult<SubscriptionRecord> {
    let url: Option<String> = row.try_get("url").map_err(db)?;
    let nats_url: Option<String> = row.try_get("nats_url").map_err(db)?;
    let nats_subject: Option<String> = row.try_get("nats_subject").map_err(db)?;
    let destination = Destination::from_columns(url, nats_url, nats_subject)
        .ok_or_else(|| StoreError::Corrupt("a subscription without a destination".into()))?;
    let events: sqlx::types::Json<Vec<String>> = row.try_get("events").map_err(db)?;
    let status: String = row.try_get("status").map_err(db)?;
    let rate: Option<i32> = row.try_get("rate_limit_per_s").map_err(db)?;
    Ok(SubscriptionRecord {
        id: row.try_get("id").map_err(db)?,
        destination,
        events: events.0,
        tenant_id: row.try_get("tenant_id").map_err(db)?,
        managed: row.try_get("managed").map_err(db)?,
        status: SubscriptionStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("subscription status {status:?}")))?,
        rate_limit_per_s: rate.map(|r| r.max(0) as u32),
        secret: row.try_get("secret").map_err(db)?,
        previous_secret: row.try_get("previous_secret").map_err(db)?,
        previous_secret_until_ms: row.try_get("previous_secret_until").map_err(db)?,
        created_at_ms: row.try_get("created_at").map_err(db)?,
        failing_since_ms: row.try_get("failing_since").map_err(db)?,
        updated_at_ms: row.try_get("updated_at").map_err(db)?,
    })
}

fn delivery(row: &PgRow) -> StoreResult<DeliveryRecord> {
    let status: String = row.try_get("status").map_err(db)?;
    let attempts: i32 = row.try_get("attempts").map_err(db)?;
    let before: i32 = row.try_get("attempts_before_replay").map_err(db)?;
    Ok(DeliveryRecord {
        id: row.try_get("id").map_err(db)?,
        event_id: row.try_get("event_id").map_err(db)?,
        subscription_id: row.try_get("subscription_id").map_err(db)?,
        event_type: row.try_get("event_type").map_err(db)?,
        tenant_id: row.try_get("tenant_id").map_err(db)?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery status {status:?}")))?,
        attempts: attempts.max(0) as u32,
        attempts_before_replay: before.max(0) as u32,
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

impl PostgresStore {
    async fn subscription_insert(&self, s: &SubscriptionRecord, on_conflict: &str) -> StoreResult<()> {
        insert_subscription(&self.db, s, on_conflict).await
    }
}

/// When a tenant has made as many subscriptions as it may.
fn subscriptions_at_limit(tenant_max: u32) -> StoreError {
    StoreError::Conflict(format!(
        "the tenant has {tenant_max} subscriptions of its own, the most it may make \
         (SAGAPLANE_TENANT_SUBSCRIPTIONS_MAX); delete one first"
    ))
}

async fn insert_subscription<'e, E: sqlx::Executor<'e, Database = sqlx::Postgres>>(
    executor: E,
    s: &SubscriptionRecord,
    on_conflict: &str,
) -> StoreResult<()> {
    {
        let (url, nats_url, nats_subject) = s.destination.columns();
        sqlx::query(&format!(
            "INSERT INTO subscriptions (id, url, nats_url, nats_subject, events, tenant_id, status, rate_limit_per_s, \
               secret, previous_secret, previous_secret_until, failing_since, created_at, updated_at, managed) \
             VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11, $14, $12, $13, $15){on_conflict}"
        ))
        .bind(s.id)
        .bind(url)
        .bind(nats_url)
        .bind(nats_subject)
        .bind(json_text(&s.events)?)
        .bind(&s.tenant_id)
        .bind(s.status.as_str())
        .bind(s.rate_limit_per_s.map(|r| r as i32))
        .bind(&s.secret)
        .bind(&s.previous_secret)
        .bind(s.previous_secret_until_ms)
        .bind(s.created_at_ms)
        .bind(s.updated_at_ms)
        .bind(s.failing_since_ms)
        .bind(s.managed)
        .execute(executor)
        .await
        .map_err(db)?;
        Ok(())
    }
}

#[async_trait]
impl SubscriptionStore for PostgresStore {
    async fn subscription_create(&self, s: &SubscriptionRecord) -> StoreResult<()> {
        self.subscription_insert(s, "").await
    }

    async fn subscriptions_existing(&self, ids: &[Uuid]) -> StoreResult<Vec<Uuid>> {
        sqlx::query_scalar("SELECT id FROM subscriptions WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&self.db)
            .await
            .map_err(db)
    }

    async fn subscription_create_capped(&self, s: &SubscriptionRecord, tenant_max: u32) -> StoreResult<()> {
        let Some(tenant) = s.tenant_id.as_deref().filter(|_| !s.managed) else {
            return self.subscription_insert(s, "").await;
        };
        let mut tx = self.db.begin().await.map_err(db)?;
        // The tenant's row serialises concurrent creators, so the count below cannot go stale.
        sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE")
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let own: i64 = sqlx::query_scalar("SELECT count(*) FROM subscriptions WHERE tenant_id = $1 AND NOT managed")
            .bind(tenant)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        if own >= i64::from(tenant_max) {
            return Err(subscriptions_at_limit(tenant_max));
        }
        insert_subscription(&mut *tx, s, "").await?;
        tx.commit().await.map_err(db)
    }

    async fn subscription_put(&self, s: &SubscriptionRecord) -> StoreResult<()> {
        self.subscription_insert(s, SUBSCRIPTION_REPLACE).await
    }

    async fn subscription_get(&self, id: Uuid) -> StoreResult<SubscriptionRecord> {
        let row = sqlx::query(&format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.db)
            .await
            .map_err(db)?;
        row.as_ref().map(subscription).unwrap_or(Err(StoreError::NotFound))
    }

    async fn subscription_list(&self, filter: &SubscriptionFilter) -> StoreResult<Vec<SubscriptionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions \
             WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::uuid IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
        ))
        .bind(&filter.tenant_id)
        .bind(filter.before_id)
        .bind(i64::from(filter.limit))
        .fetch_all(&self.db)
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
        let row = sqlx::query(&format!(
            "UPDATE subscriptions SET events = COALESCE($2::jsonb, events), status = COALESCE($3, status), \
               failing_since = CASE WHEN $3 = 'active' THEN NULL ELSE failing_since END, \
               rate_limit_per_s = CASE WHEN $4 THEN $5 ELSE rate_limit_per_s END, updated_at = $6 \
             WHERE id = $1 RETURNING {SUBSCRIPTION_COLUMNS}"
        ))
        .bind(id)
        .bind(events)
        .bind(patch.status.map(SubscriptionStatus::as_str))
        .bind(patch.rate_limit_per_s.is_some())
        .bind(patch.rate_limit_per_s.flatten().map(|r| r as i32))
        .bind(now_ms)
        .fetch_optional(&self.db)
        .await
        .map_err(db)?;
        row.as_ref().map(subscription).unwrap_or(Err(StoreError::NotFound))
    }

    async fn subscription_rotate_secret(
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
        .bind(id)
        .bind(secret)
        .bind(previous_until_ms)
        .bind(now_ms)
        .fetch_optional(&self.db)
        .await
        .map_err(db)?;
        row.as_ref().map(subscription).unwrap_or(Err(StoreError::NotFound))
    }

    async fn subscription_delete(&self, id: Uuid, now_ms: i64) -> StoreResult<()> {
        let mut tx = self.db.begin().await.map_err(db)?;
        let deleted =
            sqlx::query("DELETE FROM subscriptions WHERE id = $1").bind(id).execute(&mut *tx).await.map_err(db)?;
        changed_one(deleted.rows_affected())?;
        sqlx::query(
            "UPDATE deliveries SET status = 'dead', last_error = 'the subscription was deleted', lease_owner = NULL, \
               next_attempt_at = $2 WHERE subscription_id = $1 AND status = 'pending'",
        )
        .bind(id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn events_append(&self, events: &[OutboxEvent]) -> StoreResult<()> {
        let mut tx = self.db.begin().await.map_err(db)?;
        fan_out(&mut tx, events).await?;
        tx.commit().await.map_err(db)
    }

    async fn delivery_get(&self, id: Uuid) -> StoreResult<(DeliveryRecord, Vec<DeliveryAttemptRecord>)> {
        let row = sqlx::query(&format!("SELECT {DELIVERY_COLUMNS} FROM deliveries d WHERE d.id = $1"))
            .bind(id)
            .fetch_optional(&self.db)
            .await
            .map_err(db)?;
        let record = row.as_ref().map(delivery).unwrap_or(Err(StoreError::NotFound))?;
        let attempts = sqlx::query(
            "SELECT n, at, status_code, error, duration_ms FROM delivery_attempts WHERE delivery_id = $1 ORDER BY n",
        )
        .bind(id)
        .fetch_all(&self.db)
        .await
        .map_err(db)?
        .iter()
        .map(|row| {
            let n: i32 = row.try_get("n").map_err(db)?;
            let code: Option<i32> = row.try_get("status_code").map_err(db)?;
            Ok(DeliveryAttemptRecord {
                n: n.max(0) as u32,
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
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d \
             WHERE ($1::text IS NULL OR d.status = $1) AND ($2::uuid IS NULL OR d.subscription_id = $2) \
               AND ($3::text IS NULL OR d.subscription_id IN (SELECT s.id FROM subscriptions s WHERE s.tenant_id = $3)) \
               AND ($4::uuid IS NULL OR d.id < $4) \
             ORDER BY d.id DESC LIMIT $5"
        ))
        .bind(filter.status.map(DeliveryStatus::as_str))
        .bind(filter.subscription_id)
        .bind(&filter.subscription_tenant_id)
        .bind(filter.before_id)
        .bind(i64::from(filter.limit))
        .fetch_all(&self.db)
        .await
        .map_err(db)?;
        rows.iter().map(delivery).collect()
    }

    async fn delivery_replay(&self, id: Uuid, now_ms: i64) -> StoreResult<DeliveryRecord> {
        let row = sqlx::query(&format!(
            "UPDATE deliveries d SET status = 'pending', next_attempt_at = $2, attempts_before_replay = d.attempts, \
               lease_owner = NULL WHERE d.id = $1 AND d.status = 'dead' RETURNING {DELIVERY_COLUMNS}"
        ))
        .bind(id)
        .bind(now_ms)
        .fetch_optional(&self.db)
        .await
        .map_err(db)?;
        match row {
            Some(row) => delivery(&row),
            None => {
                let (existing, _) = self.delivery_get(id).await?;
                Err(StoreError::Conflict(format!(
                    "delivery is {}, only a dead one is replayed",
                    existing.status.as_str()
                )))
            }
        }
    }

    async fn deliveries_recover(
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
            claimed.push((delivery(row)?, row.try_get::<i64, _>("fencing_token").map_err(db)?));
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
                .map(|row| subscription(row).map(|s| (s.id, s)))
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
        let disabled = rows.iter().map(subscription).collect::<StoreResult<Vec<_>>>()?;
        let events: Vec<OutboxEvent> = disabled.iter().map(report).collect();
        fan_out(&mut tx, &events).await?;
        tx.commit().await.map_err(db)?;
        Ok(disabled)
    }
}
