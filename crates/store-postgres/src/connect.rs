//! Reaching PostgreSQL the way production runs it: TLS from the URL's libpq parameters
//! (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`), through a transaction pooler such as
//! PgBouncer with `pool_mode = transaction`, and never onto a server that is read-only.
//!
//! - **Startup parameters.** Only the ones every pooler passes on (`DateStyle`, `client_encoding`,
//!   `TimeZone`, `application_name`); `extra_float_digits` is not sent (PgBouncer refuses it).
//! - **Route.** [`detect_route`] tells a direct connection (or a session pooler, which behaves
//!   like one) from a transaction pooler. Behind a transaction pooler every statement runs in its
//!   own transaction, as an unnamed statement: a prepared statement outlives neither, and the
//!   protocol's Parse and Execute must reach the same server (see [`Db`]).
//! - **Writable primary.** A new connection to a server in recovery is refused; after a statement
//!   answers SQLSTATE 25006 (read-only transaction) every pooled connection is checked before its
//!   next use for a while and dropped if it is on a read-only server (see [`PrimaryGuard`]).

use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgQueryResult, PgRow, PgSslMode, PgStatement, PgTypeInfo};
use sqlx::{Connection, Either, Executor as _, PgConnection, PgPool, Postgres, Row};

/// How long a pool waits for a connection (and so how long startup waits for PostgreSQL).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A pooled connection idle this long is pinged before it is used; one in steady use is not.
pub const PING_WHEN_IDLE: Duration = Duration::from_secs(1);
/// After a read-only answer, how long every pooled connection is checked before use.
pub const READ_ONLY_SUSPECT_WINDOW: Duration = Duration::from_secs(60);
/// Rounds of the pooler probe in [`detect_route`].
const ROUTE_PROBE_ROUNDS: usize = 3;

/// How statements reach PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// One server session per client connection: PostgreSQL itself, HAProxy, a session pooler.
    Direct,
    /// Server sessions are shared between transactions (PgBouncer `pool_mode = transaction`).
    TransactionPooler,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::TransactionPooler => "transaction_pooler",
        }
    }
}

/// Why connecting failed, with the URL it was (password hidden); the cause is the source.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{url}: invalid connection URL")]
    Url { url: String, source: sqlx::Error },
    #[error("TLS to PostgreSQL at {url} failed ({hint})")]
    Tls { url: String, hint: String, source: sqlx::Error },
    #[error("cannot connect to PostgreSQL at {url}")]
    Unreachable { url: String, source: sqlx::Error },
}

/// The `application_name` of each kind of connection, as `pg_stat_activity` shows it.
pub mod application {
    pub const ENGINE: &str = "sagaplane";
    pub const LISTEN: &str = "sagaplane listen";
    pub const TENANT_ADMIN: &str = "sagaplane tenant admin";
    pub const TENANT_SESSION: &str = "sagaplane tenant session";
}

/// `url` with its password replaced by `***`, for messages and logs (any scheme).
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// The connect options a URL names, as Sagaplane uses them. libpq's rule that `sslmode=require`
/// with an `sslrootcert` verifies the server's certificate against it is kept.
pub fn options(url: &str) -> Result<PgConnectOptions, ConnectError> {
    let mut options = PgConnectOptions::from_str(url)
        .map_err(|source| ConnectError::Url { url: redacted(url), source })?
        .extra_float_digits(None)
        .application_name(application::ENGINE);
    if matches!(options.get_ssl_mode(), PgSslMode::Require) && url_names_param(url, "sslrootcert") {
        options = options.ssl_mode(PgSslMode::VerifyCa);
    }
    Ok(options)
}

fn url_names_param(url: &str, name: &str) -> bool {
    url_param(url, name).is_some()
}

/// The value of query parameter `name` in `url` (as written; certificate paths need no decoding).
fn url_param(url: &str, name: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| value.to_string())
    })
}

/// Classifies a failed connection: TLS problems are said to be TLS problems.
pub fn connect_error(url: &str, options: &PgConnectOptions, source: sqlx::Error) -> ConnectError {
    let missing_file = ["sslrootcert", "sslcert", "sslkey"].into_iter().find_map(|name| {
        url_param(url, name).filter(|path| !std::path::Path::new(path).exists()).map(|path| (name, path))
    });
    let url = redacted(url);
    if let (Some((name, path)), sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Configuration(_)) =
        (&missing_file, &source)
    {
        let hint = format!("the certificate file {name}={path} does not exist");
        return ConnectError::Tls { url, hint, source };
    }
    let hint = match &source {
        sqlx::Error::Tls(_) => Some("the server's certificate, the CA in sslrootcert, or the client certificate"),
        sqlx::Error::Configuration(e) if mentions_tls(&e.to_string()) => Some("a certificate or key file"),
        sqlx::Error::Io(e) if mentions_tls(&e.to_string()) => Some("the TLS handshake"),
        sqlx::Error::Database(e) if e.code().as_deref() == Some("28000") && e.message().contains("no encryption") => {
            Some("the server accepts TLS connections only; set sslmode=require or stronger")
        }
        _ if matches!(options.get_ssl_mode(), PgSslMode::VerifyCa | PgSslMode::VerifyFull)
            && mentions_tls(&source.to_string()) =>
        {
            Some("certificate verification")
        }
        _ => None,
    };
    match hint {
        Some(hint) => ConnectError::Tls { url, hint: hint.to_string(), source },
        None => ConnectError::Unreachable { url, source },
    }
}

fn mentions_tls(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    ["tls", "ssl", "certificate", "pem", "handshake"].iter().any(|word| text.contains(word))
}

/// Whether `url` reaches PostgreSQL through a transaction pooler.
///
/// Two client connections, `first` and `second`. `first` asks its server's process id; `second`
/// opens a transaction and asks; `first` asks again. On a direct connection `first` always has its
/// own server process and `second` another. Behind a transaction pooler the server `first` just
/// released is the one `second` gets (PgBouncer hands out the most recently used one), and
/// `first` then moves to another. Either sign means a pooler; neither can happen without one.
pub async fn detect_route(options: &PgConnectOptions) -> Result<Route, sqlx::Error> {
    let mut first = PgConnection::connect_with(options).await?;
    let mut second = PgConnection::connect_with(options).await?;
    let mut route = Route::Direct;
    for _ in 0..ROUTE_PROBE_ROUNDS {
        let before = backend_pid(&mut first).await?;
        sqlx::raw_sql("BEGIN").execute(&mut second).await?;
        let held = backend_pid(&mut second).await?;
        let after = backend_pid(&mut first).await?;
        sqlx::raw_sql("COMMIT").execute(&mut second).await?;
        tracing::debug!(before, held, after, "pooler probe");
        if held == before || after != before {
            route = Route::TransactionPooler;
            break;
        }
    }
    let _ = first.close().await;
    let _ = second.close().await;
    Ok(route)
}

async fn backend_pid(conn: &mut PgConnection) -> Result<i32, sqlx::Error> {
    let row = sqlx::raw_sql("SELECT pg_backend_pid()").fetch_one(conn).await?;
    row.try_get(0)
}

/// Keeps read-only servers out of a pool.
#[derive(Debug, Default)]
pub struct PrimaryGuard {
    /// Milliseconds since `epoch` of the last read-only answer, or -1.
    read_only_seen_ms: AtomicI64,
    /// Milliseconds since `epoch` when a new connection was last refused as read-only, or -1.
    refused_ms: AtomicI64,
    epoch: std::sync::OnceLock<Instant>,
}

impl PrimaryGuard {
    fn new() -> Arc<Self> {
        let guard = PrimaryGuard {
            read_only_seen_ms: AtomicI64::new(-1),
            refused_ms: AtomicI64::new(-1),
            epoch: std::sync::OnceLock::new(),
        };
        guard.epoch.get_or_init(Instant::now);
        Arc::new(guard)
    }

    fn elapsed_ms(&self) -> i64 {
        self.epoch.get_or_init(Instant::now).elapsed().as_millis() as i64
    }

    /// Notes an error; a read-only answer puts every pooled connection under suspicion.
    pub fn observe(&self, error: &sqlx::Error) {
        if is_read_only(error) {
            self.read_only_seen_ms.store(self.elapsed_ms(), Ordering::SeqCst);
            tracing::warn!("PostgreSQL answered read-only (SQLSTATE 25006); connections are checked before reuse");
        }
    }

    fn refuse(&self) {
        self.refused_ms.store(self.elapsed_ms(), Ordering::SeqCst);
    }

    /// Whether a new connection was refused as read-only within the last connect timeout: a
    /// pool that timed out meanwhile found servers, but no writable primary.
    pub fn refused_recently(&self) -> bool {
        let refused = self.refused_ms.load(Ordering::SeqCst);
        refused >= 0 && self.elapsed_ms() - refused <= CONNECT_TIMEOUT.as_millis() as i64
    }

    fn suspicious(&self) -> bool {
        let seen = self.read_only_seen_ms.load(Ordering::SeqCst);
        seen >= 0 && self.elapsed_ms() - seen < READ_ONLY_SUSPECT_WINDOW.as_millis() as i64
    }
}

/// Why a new connection to a read-only server is refused (see [`pool_options`]).
const READ_ONLY_REFUSAL: &str = "the server is read-only (in recovery or default_transaction_read_only); \
     Sagaplane needs the writable primary";

/// A connection refused because its server is read-only: the pool found no writable primary.
pub fn is_read_only_refusal(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Protocol(message) if message == READ_ONLY_REFUSAL)
}

/// SQLSTATE 25006: the server would not write.
pub fn is_read_only(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.code().as_deref() == Some("25006"))
}

/// An error that says the server is not there to answer, rather than that the statement was
/// wrong: a protocol error (a proxy that closed the connection during its start, as HAProxy
/// does with no server up), SQLSTATE class 08 (connection exception), `57P01`–`57P03` (the
/// server is shutting down, crashed, or not yet accepting connections: starting up, in
/// recovery).
pub fn is_server_gone(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(e) => {
            let code = e.code();
            let code = code.as_deref().unwrap_or("");
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
        }
        _ => false,
    }
}

/// Whether the connection's server would refuse to write.
pub fn on_read_only_server(conn: &mut PgConnection) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    // A simple-protocol query: safe on any route, outside a transaction.
    let rows = conn.fetch_one("SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'");
    Box::pin(async move { rows.await?.try_get(0) })
}

/// A pool on `options` with `max_connections`, refusing connections to read-only servers.
pub fn pool_options(max_connections: u32, guard: &Arc<PrimaryGuard>) -> PgPoolOptions {
    let on_acquire = guard.clone();
    let on_connect = guard.clone();
    PgPoolOptions::new()
        .max_connections(max_connections)
        // Pinged only when idle a while (below): a ping on every use was a third of the round
        // trips a saga cost.
        .test_before_acquire(false)
        .acquire_timeout(CONNECT_TIMEOUT)
        .after_connect(move |conn, _| {
            let guard = on_connect.clone();
            Box::pin(async move {
                if on_read_only_server(conn).await? {
                    guard.refuse();
                    return Err(sqlx::Error::Protocol(READ_ONLY_REFUSAL.into()));
                }
                Ok(())
            })
        })
        .before_acquire(move |conn, meta| {
            let guard = on_acquire.clone();
            Box::pin(async move {
                if guard.suspicious() {
                    return Ok(!on_read_only_server(conn).await?);
                }
                // A connection idle a while may have been cut (a restart, a failover, a pooler's
                // timeout): an error here discards it and the pool hands out another.
                if meta.idle_for >= PING_WHEN_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// Opens a pool: the route, the guard and the pool itself; errors say TLS when it is TLS.
pub async fn open_pool(url: &str, max_connections: u32, application_name: &str) -> Result<Db, ConnectError> {
    let options = options(url)?.application_name(application_name);
    let route = tokio::time::timeout(CONNECT_TIMEOUT, detect_route(&options))
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
        .map_err(|e| connect_error(url, &options, e))?;
    let options = match route {
        Route::Direct => options,
        Route::TransactionPooler => options.statement_cache_capacity(0),
    };
    let guard = PrimaryGuard::new();
    let pool = pool_options(max_connections, &guard)
        .connect_with(options.clone())
        .await
        .map_err(|e| connect_error(url, &options, e))?;
    if route == Route::TransactionPooler {
        tracing::info!(url = %redacted(url), "PostgreSQL is reached through a transaction pooler: one transaction per statement, no prepared statements kept");
    }
    Ok(Db { pool, route, guard, options })
}

/// Where statements run: the pool, with the route and the guard. Used as an executor, each
/// statement runs on a pooled connection — behind a transaction pooler inside its own
/// transaction, so that its Parse, Bind and Execute reach one server.
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
    route: Route,
    guard: Arc<PrimaryGuard>,
    options: PgConnectOptions,
}

impl Db {
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn route(&self) -> Route {
        self.route
    }

    pub fn guard(&self) -> &Arc<PrimaryGuard> {
        &self.guard
    }

    /// The options the pool connects with (the route's statement cache setting included).
    pub fn connect_options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// A transaction on a pooled connection. Behind a transaction pooler it starts with
    /// `DEALLOCATE ALL`: statements inside a transaction are prepared under names counted per
    /// client connection, and the server this transaction borrowed may hold some of those names
    /// from another client's transaction (never to be used again: nobody's cache keeps them).
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
        let begun = async {
            let mut tx = self.pool.begin().await?;
            if self.route == Route::TransactionPooler {
                (&mut *tx).execute("DEALLOCATE ALL").await?;
            }
            Ok(tx)
        };
        begun.await.inspect_err(|e| self.guard.observe(e))
    }
}

/// A statement run as an unnamed prepared statement (it outlives nothing), whatever it asked.
struct Unnamed<E>(E);

impl<'q, E: sqlx::Execute<'q, Postgres>> sqlx::Execute<'q, Postgres> for Unnamed<E> {
    fn sql(&self) -> &'q str {
        self.0.sql()
    }

    fn statement(&self) -> Option<&PgStatement<'q>> {
        self.0.statement()
    }

    fn take_arguments(&mut self) -> Result<Option<sqlx::postgres::PgArguments>, sqlx::error::BoxDynError> {
        self.0.take_arguments()
    }

    fn persistent(&self) -> bool {
        false
    }
}

impl<'d> sqlx::Executor<'d> for &'_ Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        E: 'q + sqlx::Execute<'q, Postgres>,
    {
        let guard = self.guard.clone();
        match self.route {
            Route::Direct => Box::pin(self.pool.fetch_many(query).inspect_err(move |e| guard.observe(e))),
            Route::TransactionPooler => {
                let pool = self.pool.clone();
                let all = async move {
                    let mut tx = pool.begin().await?;
                    let items: Vec<_> = (&mut *tx).fetch_many(Unnamed(query)).try_collect().await?;
                    tx.commit().await?;
                    Ok::<_, sqlx::Error>(futures::stream::iter(items.into_iter().map(Ok)))
                };
                Box::pin(futures::stream::once(all).try_flatten().inspect_err(move |e| guard.observe(e)))
            }
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        E: 'q + sqlx::Execute<'q, Postgres>,
    {
        let guard = self.guard.clone();
        match self.route {
            Route::Direct => {
                let pool = self.pool.clone();
                Box::pin(async move { pool.fetch_optional(query).await.inspect_err(|e| guard.observe(e)) })
            }
            Route::TransactionPooler => {
                let pool = self.pool.clone();
                Box::pin(async move {
                    let run = async {
                        let mut tx = pool.begin().await?;
                        let row = (&mut *tx).fetch_optional(Unnamed(query)).await?;
                        tx.commit().await?;
                        Ok(row)
                    };
                    run.await.inspect_err(|e| guard.observe(e))
                })
            }
        }
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>> {
        self.pool.prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(self, sql: &'q str) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>> {
        self.pool.describe(sql)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_hides_only_the_password() {
        assert_eq!(
            redacted("postgres://u:secret@h:5432/db?sslmode=require"),
            "postgres://u:***@h:5432/db?sslmode=require"
        );
        assert_eq!(redacted("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redacted("postgres://h/db"), "postgres://h/db");
        assert_eq!(redacted("postgresql://u:p%40ss@h/db"), "postgresql://u:***@h/db");
    }

    #[test]
    fn require_with_a_root_certificate_verifies_it() {
        let with_ca = options("postgres://u@h/db?sslmode=require&sslrootcert=/tmp/ca.pem").expect("options");
        assert!(matches!(with_ca.get_ssl_mode(), PgSslMode::VerifyCa));
        let without = options("postgres://u@h/db?sslmode=require").expect("options");
        assert!(matches!(without.get_ssl_mode(), PgSslMode::Require));
        let full = options("postgres://u@h/db?sslmode=verify-full&sslrootcert=/tmp/ca.pem").expect("options");
        assert!(matches!(full.get_ssl_mode(), PgSslMode::VerifyFull));
    }
}
