//! Webhook receivers of a run: one per subscription, at `http://r<N>.sim/hook`, reached by each
//! instance's dispatcher through its [`Link`] like the participants, and behaving as the
//! scenario's [`Temper`] says — healthy, flaky (500, or 503 with `Retry-After`), slow, stalled
//! (takes the request, never answers), or down (refuses connections until the run is calm).
//! Every request that arrives is checked (its signature, by the subscription's secret) and
//! logged with its answer, numbered on the run's [`Sequencer`], for the checker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use delivery::send::{WebhookAnswer, WebhookRequest, WebhookTransport};
use saga_runtime::Clock;
use saga_store::{Destination, SubscriptionRecord, SubscriptionStatus};
use uuid::Uuid;

use crate::budget::Budget;
use crate::memory::Sequencer;
use crate::scenario::{DeliveryPlan, Dice, Temper};
use crate::world::{Link, SimClock};

/// One request a receiver took.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    pub seq: u64,
    pub at_ms: i64,
    pub receiver: usize,
    /// Its `webhook-id`.
    pub event_id: Option<Uuid>,
    /// Its body's `type`.
    pub event_type: Option<String>,
    /// One of its signatures is the subscription's secret's over its id, timestamp and body.
    pub verified: bool,
    /// The status it answered, None for no answer.
    pub answer: Option<u16>,
}

/// The receivers `r0`, `r1`, … of a run.
pub struct Receivers {
    pub plan: DeliveryPlan,
    /// Each receiver's subscription.
    pub subscriptions: Vec<SubscriptionRecord>,
    pub received: Mutex<Vec<Received>>,
    pub dice: Dice,
    pub calm: Arc<AtomicBool>,
    pub sequencer: Sequencer,
    pub clock: Arc<SimClock>,
}

impl Receivers {
    pub fn new(
        plan: DeliveryPlan,
        seed: u64,
        calm: Arc<AtomicBool>,
        sequencer: Sequencer,
        clock: Arc<SimClock>,
    ) -> Self {
        let dice = Dice::new(seed.rotate_left(41) ^ 0x7EC3_1BE2);
        let subscriptions = plan
            .receivers
            .iter()
            .enumerate()
            .map(|(n, receiver)| SubscriptionRecord {
                id: Uuid::from_u128(0x5_0000 + n as u128),
                destination: Destination::Url(format!("http://r{n}.sim/hook")),
                events: receiver.events.clone(),
                tenant_id: None,
                managed: false,
                status: SubscriptionStatus::Active,
                rate_limit_per_s: None,
                secret: format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(dice.bytes::<24>())),
                previous_secret: None,
                previous_secret_until_ms: None,
                failing_since_ms: None,
                created_at_ms: clock.now_ms(),
                updated_at_ms: clock.now_ms(),
            })
            .collect();
        Receivers { plan, subscriptions, received: Mutex::default(), dice, calm, sequencer, clock }
    }

    /// Every request taken so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The receiver `request` is for, if it is one of ours.
    fn receiver_of(url: &str) -> Option<usize> {
        url.strip_prefix("http://r")?.strip_suffix(".sim/hook")?.parse().ok()
    }

    /// Takes one request (or refuses the connection) and logs it: the answer, and how long it
    /// takes to come back (None: it never does).
    fn take(&self, receiver: usize, request: &WebhookRequest) -> Result<(u16, Option<Duration>), String> {
        let calm = self.calm.load(Ordering::SeqCst);
        let temper = self.plan.receivers.get(receiver).map(|r| r.temper).ok_or("no such receiver")?;
        let healthy = || (Some(204), self.dice.between(1, 50));
        let (answer, delay_ms) = match temper {
            Temper::Down if !calm => return Err("connection refused".into()),
            Temper::Healthy | Temper::Down => healthy(),
            Temper::Stalled { recovers } if calm && recovers => healthy(),
            Temper::Stalled { .. } => (None, 0),
            Temper::Flaky { fail, retry_after_s } => {
                let failure = if retry_after_s > 0 { 503 } else { 500 };
                (Some(if self.dice.chance(fail) { failure } else { 204 }), self.dice.between(1, 50))
            }
            Temper::Slow { min_ms, max_ms } => (Some(204), self.dice.between(min_ms, max_ms)),
        };
        let body: Option<serde_json::Value> = serde_json::from_slice(&request.body).ok();
        let event_type = body.as_ref().and_then(|b| b.get("type")).and_then(|t| t.as_str()).map(str::to_string);
        let received = Received {
            seq: self.sequencer.next(),
            at_ms: self.clock.now_ms(),
            receiver,
            event_id: request.header("webhook-id").and_then(|id| Uuid::parse_str(id).ok()),
            event_type,
            verified: self.subscriptions.get(receiver).is_some_and(|s| verified(&s.secret, request)),
            answer,
        };
        if let Ok(mut log) = self.received.lock() {
            log.push(received);
        }
        Ok((answer.unwrap_or(0), answer.map(|_| Duration::from_millis(delay_ms))))
    }
}

/// Whether one of the request's signatures is `secret`'s.
fn verified(secret: &str, request: &WebhookRequest) -> bool {
    let (Some(id), Some(timestamp), Some(signatures)) =
        (request.header("webhook-id"), request.header("webhook-timestamp"), request.header("webhook-signature"))
    else {
        return false;
    };
    let (Ok(webhook), Ok(timestamp)) = (standardwebhooks::Webhook::new(secret), timestamp.parse::<i64>()) else {
        return false;
    };
    webhook.sign(id, timestamp, &request.body).is_ok_and(|expected| signatures.split(' ').any(|s| s == expected))
}

/// The receivers as one instance's dispatcher reaches them: through its link.
pub struct ReceiverNetwork {
    pub receivers: Arc<Receivers>,
    pub link: Link,
    pub budget: Arc<Budget>,
}

#[async_trait]
impl WebhookTransport for ReceiverNetwork {
    async fn post(&self, request: &WebhookRequest) -> Result<WebhookAnswer, String> {
        self.budget.spend().await;
        self.link.pass().await;
        let receiver = Receivers::receiver_of(&request.url).ok_or_else(|| format!("no route to {}", request.url))?;
        let (status, delay) = self.receivers.take(receiver, request)?;
        match delay {
            Some(delay) => tokio::time::sleep(delay).await,
            None => std::future::pending::<()>().await,
        }
        self.link.pass().await;
        let retry_after = match self.receivers.plan.receivers[receiver].temper {
            Temper::Flaky { retry_after_s, .. } if status == 503 => Some(retry_after_s.to_string()),
            _ => None,
        };
        Ok(WebhookAnswer { status, retry_after, body: Vec::new() })
    }
}
