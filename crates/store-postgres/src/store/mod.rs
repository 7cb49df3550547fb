//! The PostgreSQL store: the connection pool, work notifications, and the store traits, one
//! file per concern — [`definitions`], [`sagas`] (and their batched [`creates`]), [`claim`]
//! (claims, admission, leases), [`commit`] (drivers' fenced transitions), [`signals`] (signals
//! and callbacks), [`tenants`], [`access`] (tenant keys, users, webhook receipts). Queries live
//! next to the method that runs them.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use saga_store::{SchemaStatus, SchemaStore, StoreResult, WorkSignal};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

use crate::migrate;
use crate::rows::db;

mod access;
mod claim;
mod commit;
pub(crate) mod creates;
mod definitions;
mod delivery;
mod sagas;
mod signals;
mod tenants;

/// The channel idle instances listen on.
pub const WORK_CHANNEL: &str = "sagaplane_work";
/// Default connection pool size.
pub const POOL_CONNECTIONS_MAX: u32 = 24;

/// PostgreSQL-backed store.
pub struct PostgresStore {
    pool: PgPool,
    work: WorkSignal,
    announce: Announcer,
    listener: tokio::task::JoinHandle<()>,
    announcer: tokio::task::JoinHandle<()>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener.abort();
        self.announcer.abort();
    }
}

/// The shortest gap between two `NOTIFY`s from one instance.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(10);

/// Coalesced `NOTIFY sagaplane_work`: PostgreSQL serialises commits that notify (a measured 25%
/// of saga3 throughput when every create notified), so after work is committed an instance asks
/// for an announcement, and one task sends at most one `NOTIFY` per [`ANNOUNCE_INTERVAL`]. Idle
/// instances elsewhere wake within that interval; this instance's own worker is woken in-process
/// at once.
#[derive(Clone)]
struct Announcer {
    wanted: Arc<std::sync::atomic::AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
}

impl Announcer {
    fn new() -> Self {
        Announcer {
            wanted: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            wake: Arc::new(tokio::sync::Notify::new()),
        }
    }

    fn request(&self) {
        self.wanted.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }

    async fn run(self, pool: PgPool) {
        loop {
            self.wake.notified().await;
            if !self.wanted.swap(false, std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            if let Err(e) = sqlx::query("SELECT pg_notify($1, '')").bind(WORK_CHANNEL).execute(&pool).await {
                tracing::warn!(error = %e, "NOTIFY failed; other instances fall back to polling");
            }
            tokio::time::sleep(ANNOUNCE_INTERVAL).await;
        }
    }
}

impl PostgresStore {
    /// Connects to a `postgres://` URL and starts listening for work notifications.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(url).map_err(db)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(db)?;
        let work: WorkSignal = Arc::new(tokio::sync::Notify::new());
        let listener = tokio::spawn(listen(pool.clone(), work.clone()));
        let announce = Announcer::new();
        let announcer = tokio::spawn(announce.clone().run(pool.clone()));
        Ok(PostgresStore { pool, work, announce, listener, announcer })
    }

    /// Bumps `wake_seq` and makes the saga due now unless a driver holds it (that driver sees the
    /// bump when it next parks). Only sagas that are not terminal; returns whether one was woken.
    pub(crate) async fn wake(conn: &mut sqlx::PgConnection, id: Uuid, now_ms: i64) -> StoreResult<bool> {
        let woken = sqlx::query(
            "UPDATE sagas SET wake_seq = wake_seq + 1, updated_at = $2, \
               run_at = CASE WHEN lease_owner IS NULL THEN LEAST(run_at, $2) ELSE run_at END \
             WHERE id = $1 AND status IN ('PENDING', 'EXECUTING', 'COMPENSATING')",
        )
        .bind(id)
        .bind(now_ms)
        .execute(conn)
        .await
        .map_err(db)?;
        Ok(woken.rows_affected() == 1)
    }

    /// Wakes this instance's worker now and asks for a `NOTIFY` for the others.
    pub(crate) fn announce_work(&self) {
        self.work.notify_one();
        self.announce.request();
    }

    /// The underlying pool (for tests and tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Relays `NOTIFY sagaplane_work` to the local work signal; reconnects on failure.
async fn listen(pool: PgPool, work: WorkSignal) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; polling continues");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(WORK_CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; polling continues");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        loop {
            match listener.recv().await {
                Ok(_) => work.notify_one(),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                    // Work may have been announced while disconnected.
                    work.notify_one();
                    break;
                }
            }
        }
    }
}

#[async_trait]
impl SchemaStore for PostgresStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    fn pool_status(&self) -> saga_store::PoolStatus {
        let size = self.pool.size();
        let idle = self.pool.num_idle() as u32;
        saga_store::PoolStatus { in_use: size.saturating_sub(idle), idle }
    }

    async fn migrate(&self, now_ms: i64) -> StoreResult<SchemaStatus> {
        migrate::run(&self.pool, now_ms).await
    }

    async fn schema_status(&self) -> StoreResult<SchemaStatus> {
        migrate::status(&self.pool).await
    }
}
