//! What an attempt waits for in the store: buffered signals, and callbacks with their
//! single-use tokens (registered before the participant is called, read back when the parked
//! saga is woken, retired when the attempt is given up).

use std::ops::ControlFlow::{self, Continue};

use saga_core::{FailureKind, HistoryEvent, Outcome, SignalAction, SleepAction, StepDefinition, Wait, WaitKind};
use saga_store::CallbackRegister;
use serde_json::json;

use super::attempt::Execution;
use super::Drive;

impl Drive<'_> {
    /// A signal step's attempt: the first buffered signal of its name not yet consumed succeeds
    /// it (recorded as `signal_received`); with none, it waits — until `waiting_until` of a wait
    /// already begun, else for the step's timeout — or fails as timed out once that has passed.
    pub(super) async fn take_signal(
        &mut self,
        (step, attempt): (&str, u32),
        signal: &SignalAction,
        waiting_until: Option<Option<i64>>,
    ) -> Execution {
        let now_ms = self.shared.clock.now_ms();
        let record = &self.claimed.record;
        let found = match self.shared.store.signal_find(record.id, &signal.name, &self.state.consumed_signals).await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "reading buffered signals failed");
                return Execution::Stop;
            }
        };
        if let Some(found) = found {
            self.state.consumed_signals.push(found.id);
            self.pending.push(HistoryEvent::new(
                "signal_received",
                Some(step),
                Some(attempt),
                json!({"signal": found.name, "signal_id": found.id, "received_at_ms": found.received_at_ms}),
                now_ms,
            ));
            return Execution::Outcome(Outcome::Succeeded(found.payload));
        }
        let until_ms = match waiting_until {
            Some(until_ms) => until_ms,
            None => signal.timeout_ms.map(|t| now_ms.saturating_add(saga_core::duration::signed_ms(t))),
        };
        if until_ms.is_some_and(|until| until <= now_ms) {
            let waited = signal.timeout_ms.map(saga_core::duration::format_ms).unwrap_or_default();
            return Execution::Outcome(Outcome::Failed {
                kind: FailureKind::TimedOut,
                message: format!("signal {:?} did not arrive within {waited}", signal.name),
            });
        }
        Execution::Wait { kind: WaitKind::Signal { name: signal.name.clone() }, until_ms }
    }

    /// A `sleep` step's attempt (started at `started_ms`): parked until its time — the wait's,
    /// once begun, else `duration` after the start or the rendered `until` — and succeeded once
    /// that has come (output `{slept_until}`). An `until` that does not render to an RFC 3339
    /// time within ten years fails the step definitely.
    pub(super) fn take_timer(
        &self,
        started_ms: i64,
        sleep: &SleepAction,
        waiting_until: Option<Option<i64>>,
    ) -> Execution {
        let now_ms = self.shared.clock.now_ms();
        let until_ms = match (waiting_until, sleep) {
            (Some(Some(until_ms)), _) => until_ms,
            (_, SleepAction::Duration(ms)) => started_ms.saturating_add(saga_core::duration::signed_ms(*ms)),
            (_, SleepAction::Until(text)) => match self.timer_until(text, now_ms) {
                Ok(until_ms) => until_ms,
                Err(message) => {
                    return Execution::Outcome(Outcome::Failed { kind: FailureKind::NonRetryable, message });
                }
            },
        };
        if until_ms <= now_ms {
            let slept_until = saga_core::duration::format_instant_ms(until_ms);
            return Execution::Outcome(Outcome::Succeeded(json!({ "slept_until": slept_until })));
        }
        Execution::Wait { kind: WaitKind::Timer, until_ms: Some(until_ms) }
    }

    /// A `sleep: {until}` rendered and read as a time.
    fn timer_until(&self, text: &str, now_ms: i64) -> Result<i64, String> {
        let rendered =
            saga_core::template::render_string(text, &self.templates).map_err(|e| format!("sleep until: {e}"))?;
        let until_ms = saga_core::duration::parse_instant_ms(&rendered).map_err(|e| format!("sleep until: {e}"))?;
        let latest_ms = now_ms.saturating_add(saga_core::duration::signed_ms(saga_core::duration::DURATION_MAX_MS));
        if until_ms > latest_ms {
            return Err(format!("sleep until: {rendered:?} is more than ten years away"));
        }
        Ok(until_ms)
    }

    /// Registers a fresh single-use callback token for an async attempt and returns the URL the
    /// participant calls back; None when it could not be stored. Durable before dependent: the
    /// token exists before the participant can call back.
    pub(super) async fn register_callback(&self, step: &StepDefinition, attempt: u32) -> Option<String> {
        let token = callback_token();
        let register = CallbackRegister {
            token_hash: callback_token_hash(&token),
            saga_id: self.claimed.record.id,
            tenant_id: self.claimed.record.tenant_id.clone(),
            step: step.name.clone(),
            attempt,
            heartbeat_timeout_ms: step.heartbeat_timeout_ms.map(saga_core::duration::signed_ms),
            now_ms: self.shared.clock.now_ms(),
        };
        if let Err(e) = self.shared.store.callback_register(register).await {
            tracing::error!(error = %e, "registering the callback token failed");
            return None;
        }
        Some(format!("{}/v1/callbacks/{token}", self.shared.config.public_url.trim_end_matches('/')))
    }

    /// A parked async step was woken: its callback arrived, its heartbeat lapsed, or neither yet.
    pub(super) async fn read_callback(&self, step: &str, attempt: u32) -> Execution {
        let now_ms = self.shared.clock.now_ms();
        let saga_id = self.claimed.record.id;
        let callback = match self.shared.store.callback_get(saga_id, step, attempt).await {
            Ok(callback) => callback,
            Err(e) => {
                tracing::error!(error = %e, "reading the callback failed");
                return Execution::Stop;
            }
        };
        let Some(callback) = callback else {
            return Execution::Outcome(Outcome::Failed {
                kind: FailureKind::Retryable,
                message: "the callback of this attempt is missing".into(),
            });
        };
        if let Some(result) = callback.result {
            return Execution::Outcome(callback_outcome(&result));
        }
        match callback.deadline_at_ms {
            Some(deadline) if deadline <= now_ms => {
                // The attempt is given up: its token must not complete a later attempt's wait.
                if let Err(e) = self.shared.store.callback_close(saga_id, step, attempt, now_ms).await {
                    tracing::error!(error = %e, "retiring the lapsed callback token failed");
                    return Execution::Stop;
                }
                Execution::Outcome(Outcome::Failed {
                    kind: FailureKind::Retryable,
                    message: "no callback or heartbeat before the heartbeat timeout".into(),
                })
            }
            deadline => Execution::Wait { kind: WaitKind::Callback, until_ms: deadline },
        }
    }

    /// A cancel or the deadline ended a wait for a callback (`before`, the wait until then):
    /// retire its token so a late callback gets 404 rather than being accepted and ignored.
    /// Break, with the lease handed back, when the store failed.
    pub(super) async fn retire_abandoned_callback(&self, before: Option<&Wait>) -> ControlFlow<()> {
        let Some(wait) = before.filter(|w| w.kind == WaitKind::Callback) else {
            return Continue(());
        };
        if self.state.wait.is_some() {
            return Continue(());
        }
        let step = &self.definition.steps[wait.step].name;
        let closed = self
            .shared
            .store
            .callback_close(self.claimed.record.id, step, wait.attempt, self.shared.clock.now_ms())
            .await;
        match closed {
            Ok(()) => Continue(()),
            Err(e) => {
                tracing::error!(error = %e, "retiring an abandoned callback token failed");
                self.let_go()
            }
        }
    }
}

/// `{"status":"succeeded","output":…}` or `{"status":"failed","error":…,"retryable":…}`
/// (validated by the API before it was stored).
fn callback_outcome(result: &serde_json::Value) -> Outcome {
    if result.get("status").and_then(|s| s.as_str()) == Some("succeeded") {
        return Outcome::Succeeded(result.get("output").cloned().unwrap_or(serde_json::Value::Null));
    }
    let message = result.get("error").and_then(|e| e.as_str()).unwrap_or("participant reported failure");
    let retryable = result.get("retryable").and_then(|r| r.as_bool()).unwrap_or(false);
    Outcome::Failed {
        kind: if retryable { FailureKind::Retryable } else { FailureKind::NonRetryable },
        message: format!("callback: {message}"),
    }
}

/// A single-use callback token: 256 random bits, URL-safe.
fn callback_token() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_256_bits())
}

/// 256 bits from the OS: callback tokens, tenant API tokens, subscription secrets. Without OS
/// randomness, two v4 UUIDs (also OS-random where available).
pub fn random_256_bits() -> [u8; 32] {
    use rand::TryRngCore;
    let mut bytes = [0u8; 32];
    if rand::rngs::OsRng.try_fill_bytes(&mut bytes).is_err() {
        bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    bytes
}

/// How a callback token is stored (the token itself never is).
pub fn callback_token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}
