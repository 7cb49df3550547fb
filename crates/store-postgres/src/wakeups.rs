//! Hearing about new work from other instances: `LISTEN sagaplane_work` on a connection of its
//! own, checked by a `NOTIFY` to itself, with polling (at most [`POLL_FALLBACK`] apart) whenever
//! it cannot hear.
//!
//! The listening connection is `SAGAPLANE_LISTEN_URL` when set, else the database URL — unless
//! that goes through a transaction pooler, where a `LISTEN` lands on whichever server the pooler
//! lends and stops hearing silently: then there is no listener and wakeups are polled. Every
//! [`PROBE_INTERVAL`] the listener sends a `NOTIFY` (through the main pool, as work is announced)
//! and must hear it back within [`PROBE_DEADLINE`]; a listener that does not is replaced, and
//! until one hears again the instance polls. The mode is in the log, `/v1/status` and the
//! `saga_db_wakeups_polling` gauge.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_store::{WakeupMode, WakeupStatus, WorkSignal};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use crate::connect::Db;
use crate::store::WORK_CHANNEL;

/// The longest gap between two looks for work while the listener cannot hear.
pub const POLL_FALLBACK: Duration = Duration::from_secs(1);
/// How often the listener checks that it hears.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a probe may take to come back before the listener counts as deaf.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(3);
/// Payloads of probes start with this; they are not work.
const PROBE_PREFIX: &str = "probe:";

/// The wakeup mode, shared with whoever reports it.
#[derive(Clone)]
pub(crate) struct Wakeups {
    status: Arc<Mutex<WakeupStatus>>,
}

impl Wakeups {
    pub(crate) fn new() -> Self {
        Wakeups {
            status: Arc::new(Mutex::new(WakeupStatus {
                mode: WakeupMode::Polling,
                reason: Some("the listener has not heard yet".into()),
            })),
        }
    }

    pub(crate) fn status(&self) -> WakeupStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or(WakeupStatus { mode: WakeupMode::Polling, reason: None })
    }

    fn is_polling(&self) -> bool {
        self.status().mode == WakeupMode::Polling
    }

    fn set(&self, mode: WakeupMode, reason: Option<String>) {
        let Ok(mut status) = self.status.lock() else { return };
        if status.mode != mode {
            match (&mode, &reason) {
                (WakeupMode::Polling, Some(reason)) => {
                    tracing::warn!(%reason, "wakeups fall back to polling every {}s", POLL_FALLBACK.as_secs())
                }
                (WakeupMode::Listen, _) => tracing::info!("LISTEN hears notifications; wakeups are immediate"),
                _ => {}
            }
        }
        *status = WakeupStatus { mode, reason };
    }
}

/// Runs until aborted: listens on `listen` (or, without one, polls for `why_not`), and wakes
/// `work` on each notification and, while deaf, every [`POLL_FALLBACK`].
pub(crate) async fn run(
    listen: Result<PgConnectOptions, String>,
    db: Db,
    work: WorkSignal,
    wakeups: Wakeups,
    instance_token: String,
) {
    let options = match listen {
        Ok(options) => options,
        Err(why_not) => {
            wakeups.set(WakeupMode::Polling, Some(why_not));
            loop {
                tokio::time::sleep(POLL_FALLBACK).await;
                work.notify_one();
            }
        }
    };
    let listen_pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(crate::connect::CONNECT_TIMEOUT)
        .connect_lazy_with(options);
    let mut probe_number: u64 = 0;
    loop {
        let mut listener = match PgListener::connect_with(&listen_pool).await {
            Ok(listener) => listener,
            Err(e) => {
                wakeups.set(WakeupMode::Polling, Some(format!("the LISTEN connection failed: {e}")));
                poll_for(&work, Duration::from_secs(2)).await;
                continue;
            }
        };
        // No reconnecting inside the listener: a lost connection is a deaf listener, replaced here.
        listener.ignore_pool_close_event(true);
        if let Err(e) = listener.listen(WORK_CHANNEL).await {
            wakeups.set(WakeupMode::Polling, Some(format!("LISTEN failed: {e}")));
            poll_for(&work, Duration::from_secs(2)).await;
            continue;
        }
        // Work may have been announced while nobody listened.
        work.notify_one();
        let reason = hear(&mut listener, &db, &work, &wakeups, &instance_token, &mut probe_number).await;
        wakeups.set(WakeupMode::Polling, Some(reason));
        work.notify_one();
    }
}

/// Relays notifications until the listener proves deaf or breaks; returns why.
async fn hear(
    listener: &mut PgListener,
    db: &Db,
    work: &WorkSignal,
    wakeups: &Wakeups,
    instance_token: &str,
    probe_number: &mut u64,
) -> String {
    let mut outstanding: Option<(String, tokio::time::Instant)> = None;
    let mut next_probe = tokio::time::Instant::now();
    let mut next_poll = tokio::time::Instant::now() + POLL_FALLBACK;
    loop {
        let deadline = outstanding.as_ref().map(|(_, sent)| *sent + PROBE_DEADLINE);
        let wake_at = [Some(next_probe), deadline, wakeups.is_polling().then_some(next_poll)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_probe);
        tokio::select! {
            received = listener.try_recv() => match received {
                Ok(Some(notification)) => {
                    let payload = notification.payload();
                    if let Some((expected, _)) = &outstanding {
                        if payload == expected {
                            outstanding = None;
                            wakeups.set(WakeupMode::Listen, None);
                        }
                    }
                    if !payload.starts_with(PROBE_PREFIX) {
                        work.notify_one();
                    }
                }
                Ok(None) => return "the LISTEN connection was lost".into(),
                Err(e) => return format!("the LISTEN connection failed: {e}"),
            },
            _ = tokio::time::sleep_until(wake_at) => {
                let now = tokio::time::Instant::now();
                if deadline.is_some_and(|d| d <= now) {
                    return format!(
                        "the LISTEN connection did not hear its own NOTIFY within {}s",
                        PROBE_DEADLINE.as_secs()
                    );
                }
                if wakeups.is_polling() && next_poll <= now {
                    work.notify_one();
                    next_poll = now + POLL_FALLBACK;
                }
                if next_probe <= now {
                    next_probe = now + PROBE_INTERVAL;
                    if outstanding.is_none() {
                        *probe_number += 1;
                        let payload = format!("{PROBE_PREFIX}{instance_token}:{probe_number}");
                        match sqlx::query("SELECT pg_notify($1, $2)").bind(WORK_CHANNEL).bind(&payload).execute(db).await {
                            Ok(_) => outstanding = Some((payload, now)),
                            // The database itself is unreachable: nothing to hear; try again later.
                            Err(e) => tracing::debug!(error = %e, "the listener's probe could not be sent"),
                        }
                    }
                }
            }
        }
    }
}

/// Wakes `work` every [`POLL_FALLBACK`] for `duration`.
async fn poll_for(work: &WorkSignal, duration: Duration) {
    let end = tokio::time::Instant::now() + duration;
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(POLL_FALLBACK.min(end - tokio::time::Instant::now())).await;
        work.notify_one();
    }
}
