//! The PostgreSQL store: the connection pool, work notifications, and the store traits, one
//! file per concern — [`definitions`], [`sagas`] (and their batched [`creates`]), [`claim`]
//! (claims, admission, leases), [`commit`] (drivers' fenced transitions), [`signals`] (signals
//! and callbacks), [`tenants`], [`access`] (tenant keys, users, webhook receipts). Queries live
//! next to the method that runs them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use saga_store::{SchemaStatus, SchemaStore, StoreError, StoreResult, WorkSignal};
use sqlx::PgPool;
use uuid::Uuid;

use crate::connect::{self, Db, Route};
use crate::migrate;
use crate::rows::db;
use crate::wakeups::{self, Wakeups};

mod access;
mod claim;
mod commit;
pub(crate) mod creates;
mod definitions;
mod delivery;
mod retention;
mod sagas;
mod signals;
mod tenants;

/// The channel idle instances listen on.
pub const WORK_CHANNEL: &str = "sagaplane_work";

/// What [`PostgresStore::open`] connects to.
#[derive(Clone, Debug)]
pub struct ConnectSettings {
    /// `SAGAPLANE_DATABASE_URL`: PostgreSQL itself, HAProxy, or a pooler such as PgBouncer.
    pub url: String,
    /// `SAGAPLANE_LISTEN_URL`: a direct connection for `LISTEN`, when `url` is a pooler's.
    pub listen_url: Option<String>,
    /// The engine pool's size.
    pub max_connections: u32,
}

/// PostgreSQL-backed store.
pub struct PostgresStore {
    db: Db,
    work: WorkSignal,
    announce: Announcer,
    wakeups: Wakeups,
    listener: tokio::task::JoinHandle<()>,
    announcer: tokio::task::JoinHandle<()>,
    /// The active subscriptions last read, with their epoch: what commits match events against.
    subscribers: std::sync::RwLock<Option<Arc<(i64, saga_store::Subscribers)>>>,
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

    async fn run(self, db: Db) {
        loop {
            self.wake.notified().await;
            if !self.wanted.swap(false, std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            if let Err(e) = sqlx::query("SELECT pg_notify($1, '')").bind(WORK_CHANNEL).execute(&db).await {
                tracing::warn!(error = %e, "NOTIFY failed; other instances fall back to polling");
            }
            tokio::time::sleep(ANNOUNCE_INTERVAL).await;
        }
    }
}

impl PostgresStore {
    /// Connects to a `postgres://` URL (LISTEN on the same URL unless it is a transaction pooler's).
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        Self::open(ConnectSettings { url: url.to_string(), listen_url: None, max_connections }).await
    }

    /// Connects, works out the route (direct or through a transaction pooler), and starts
    /// listening for work notifications — or polling, when there is nothing to listen on.
    pub async fn open(settings: ConnectSettings) -> StoreResult<Self> {
        let db = connect::open_pool(&settings.url, settings.max_connections.max(2), connect::application::ENGINE)
            .await
            .map_err(StoreError::unavailable)?;
        let listen = match (&settings.listen_url, db.route()) {
            (Some(url), _) => {
                let options = connect::options(url)
                    .map_err(StoreError::unavailable)?
                    .application_name(connect::application::LISTEN);
                // A LISTEN through a transaction pooler is worse than deaf: the server session
                // keeps it after the pooler lends it to another client, whose next statement
                // then receives notifications it cannot parse.
                let route = connect::detect_route(&options)
                    .await
                    .map_err(|e| StoreError::unavailable(connect::connect_error(url, &options, e)))?;
                match route {
                    Route::Direct => Ok(options),
                    Route::TransactionPooler => Err("SAGAPLANE_LISTEN_URL goes through a transaction pooler too; \
                         it must be a direct connection"
                        .to_string()),
                }
            }
            (None, Route::Direct) => Ok(db.connect_options().clone().application_name(connect::application::LISTEN)),
            (None, Route::TransactionPooler) => Err("PostgreSQL is reached through a transaction pooler and \
                 SAGAPLANE_LISTEN_URL (a direct connection for LISTEN) is not set"
                .to_string()),
        };
        let work: WorkSignal = Arc::new(tokio::sync::Notify::new());
        let wakeups = Wakeups::new();
        let instance_token = Uuid::new_v4().simple().to_string();
        let listener = tokio::spawn(wakeups::run(listen, db.clone(), work.clone(), wakeups.clone(), instance_token));
        let announce = Announcer::new();
        let announcer = tokio::spawn(announce.clone().run(db.clone()));
        let subscribers = std::sync::RwLock::new(None);
        Ok(PostgresStore { db, work, announce, wakeups, listener, announcer, subscribers })
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
        self.db.pool()
    }

    /// How statements reach PostgreSQL.
    pub fn route(&self) -> Route {
        self.db.route()
    }
}

#[async_trait]
impl SchemaStore for PostgresStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    fn pool_status(&self) -> saga_store::PoolStatus {
        let size = self.db.pool().size();
        let idle = self.db.pool().num_idle() as u32;
        saga_store::PoolStatus { in_use: size.saturating_sub(idle), idle }
    }

    async fn migrate(&self, now_ms: i64) -> StoreResult<SchemaStatus> {
        migrate::run(&self.db, now_ms).await
    }

    async fn schema_status(&self) -> StoreResult<SchemaStatus> {
        migrate::status(&self.db).await
    }

    fn connection_status(&self) -> saga_store::ConnectionStatus {
        saga_store::ConnectionStatus { route: self.db.route().as_str(), wakeups: self.wakeups.status() }
    }

    async fn writable(&self) -> StoreResult<bool> {
        let answer: Result<bool, sqlx::Error> =
            sqlx::query_scalar("SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'")
                .fetch_one(&self.db)
                .await;
        match answer {
            Ok(read_only) => Ok(!read_only),
            // The pool reached a server and refused it as read-only, or a pooled connection's
            // server answered read-only: reachable, but no writable primary.
            Err(e) if crate::connect::is_read_only_refusal(&e) || crate::connect::is_read_only(&e) => Ok(false),
            Err(sqlx::Error::PoolTimedOut) if self.db.guard().refused_recently() => Ok(false),
            Err(e) => Err(db(e)),
        }
    }
}
