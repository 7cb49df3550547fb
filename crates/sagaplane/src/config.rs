//! Configuration: one typed struct built once from defaults, then `sagaplane.toml` (or `--config
//! FILE`), then environment variables (docs/operations.md, "Configuration"), then command-line
//! flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// A value that must never be printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// How the process reaches PostgreSQL beyond the URL (docs/operations.md, "Connections").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseSettings {
    /// `SAGAPLANE_LISTEN_URL`: a direct connection for `LISTEN` when the URL is a pooler's.
    pub listen_url: Option<String>,
    /// `SAGAPLANE_DATABASE_POOL_SIZE`: the engine's pool.
    pub pool_size: u32,
    /// `SAGAPLANE_TENANT_POOL_SIZE`: the tenant admin pool.
    pub tenant_pool_size: u32,
    /// `SAGAPLANE_TENANT_SESSIONS_MAX`: sessions open at once in tenants' own databases or as
    /// their migration roles.
    pub tenant_sessions_max: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            listen_url: None,
            pool_size: DATABASE_POOL_SIZE_DEFAULT,
            tenant_pool_size: TENANT_POOL_SIZE_DEFAULT,
            tenant_sessions_max: TENANT_SESSIONS_MAX_DEFAULT,
        }
    }
}

/// Every setting of the process.
#[derive(Clone, Debug)]
pub struct Config {
    pub database_url: Option<String>,
    pub database: DatabaseSettings,
    pub listen: String,
    pub admin_token: Option<Secret>,
    pub worker_id: String,
    pub lease_ttl_ms: i64,
    /// Fallback claim poll when no notification arrives (`SAGAPLANE_POLL_INTERVAL`).
    pub poll_interval_ms: u64,
    pub worker_concurrency: u32,
    pub tenant_database_url: Option<String>,
    pub tenant_migrations_dir: Option<PathBuf>,
    /// How many services' migrations a tenant saga applies at once (its `for_each` group).
    pub tenant_migration_concurrency: u32,
    pub crm_webhook_secret: Option<Secret>,
    /// Waits between a delivery's attempts (`SAGAPLANE_DELIVERY_RETRY_SCHEDULE`).
    pub delivery_retry_schedule_ms: Vec<u64>,
    /// One delivery attempt's time limit (`SAGAPLANE_DELIVERY_TIMEOUT`).
    pub delivery_timeout_ms: u64,
    /// A subscription failing for this long without a success is disabled
    /// (`SAGAPLANE_DELIVERY_DISABLE_AFTER`).
    pub delivery_disable_after_ms: u64,
    /// How long a finished saga is kept before it is deleted with its history
    /// (`SAGAPLANE_RETENTION`).
    pub retention_ms: u64,
    /// How long a dead delivery is kept, replayable, before it is deleted
    /// (`SAGAPLANE_DEAD_LETTER_RETENTION`).
    pub dead_letter_retention_ms: u64,
    /// How long a deleted tenant stays restorable before its storage is destroyed, unless the
    /// delete names its own `?grace=` (`SAGAPLANE_TENANT_DELETE_GRACE`, 0: at once).
    pub tenant_delete_grace_ms: u64,
    /// Where each saga is written, with its history, before retention deletes it
    /// (`SAGAPLANE_ARCHIVE_DIR`).
    pub archive_dir: Option<PathBuf>,
    /// Where tenants onboarded through the CRM webhook report their outcome
    /// (`SAGAPLANE_CRM_CALLBACK_URL`), signed with `crm_callback_secret`.
    pub crm_callback_url: Option<String>,
    pub crm_callback_secret: Option<Secret>,
    pub vars: BTreeMap<String, String>,
    pub log_format: LogFormat,
    pub otlp_endpoint: Option<String>,
    pub public_url: Option<String>,
    /// Consecutive retryable failures that open an endpoint's circuit
    /// (`SAGAPLANE_BREAKER_FAILURES`, 0 = off).
    pub breaker_failures: u32,
    /// How long an open circuit stays open (`SAGAPLANE_BREAKER_COOLDOWN`).
    pub breaker_cool_down_ms: u64,
    pub shutdown_grace_ms: u64,
    /// Networks `http` and `grpc` steps may not reach (`SAGAPLANE_HTTP_DENY`).
    pub http_deny: egress::Networks,
    /// Internal networks a tenant's destinations may reach all the same
    /// (`SAGAPLANE_HTTP_ALLOW`); unset, none (`sagaplane dev`: loopback).
    pub http_allow: Option<egress::Networks>,
    /// Whether the operator's destinations go through the proxy the environment names
    /// (`SAGAPLANE_HTTP_ENV_PROXY=true`); a tenant's never do.
    pub http_env_proxy: bool,
    /// The subject prefix of a tenant's own NATS subscriptions, `{tenant_id}` in it
    /// (`SAGAPLANE_NATS_TENANT_PREFIX`).
    pub nats_tenant_prefix: String,
    /// Subscriptions a tenant may make itself (`SAGAPLANE_TENANT_SUBSCRIPTIONS_MAX`).
    pub tenant_subscriptions_max: u32,
    pub data_dir: PathBuf,
}

/// The file's shape: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database_url: Option<String>,
    listen_url: Option<String>,
    database_pool_size: Option<u32>,
    tenant_pool_size: Option<u32>,
    tenant_sessions_max: Option<u32>,
    listen: Option<String>,
    admin_token: Option<String>,
    worker_id: Option<String>,
    lease_ttl: Option<String>,
    poll_interval: Option<String>,
    worker_concurrency: Option<u32>,
    breaker_failures: Option<u32>,
    breaker_cooldown: Option<String>,
    shutdown_grace: Option<String>,
    http_deny: Option<String>,
    http_allow: Option<String>,
    http_env_proxy: Option<bool>,
    nats_tenant_prefix: Option<String>,
    tenant_subscriptions_max: Option<u32>,
    tenant_database_url: Option<String>,
    tenant_migrations_dir: Option<PathBuf>,
    tenant_migration_concurrency: Option<u32>,
    crm_webhook_secret: Option<String>,
    delivery_retry_schedule: Option<String>,
    delivery_timeout: Option<String>,
    delivery_disable_after: Option<String>,
    retention: Option<String>,
    dead_letter_retention: Option<String>,
    tenant_delete_grace: Option<String>,
    archive_dir: Option<PathBuf>,
    crm_callback_url: Option<String>,
    crm_callback_secret: Option<String>,
    log_format: Option<String>,
    otlp_endpoint: Option<String>,
    public_url: Option<String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    vars: BTreeMap<String, String>,
}

/// Flags that override config (only those a subcommand offers).
#[derive(Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
}

pub const LISTEN_DEFAULT: &str = "127.0.0.1:8080";
pub const DATABASE_POOL_SIZE_DEFAULT: u32 = 24;
pub const TENANT_POOL_SIZE_DEFAULT: u32 = 8;
pub const TENANT_SESSIONS_MAX_DEFAULT: u32 = 4;
/// The largest pool a setting may ask for.
pub const POOL_SIZE_MAX: u32 = 1_000;
pub const LEASE_TTL_DEFAULT_MS: i64 = 30_000;
pub const WORKER_CONCURRENCY_DEFAULT: u32 = 64;
pub const POLL_INTERVAL_DEFAULT_MS: u64 = 1_000;
pub const BREAKER_FAILURES_DEFAULT: u32 = 5;
pub const BREAKER_COOL_DOWN_DEFAULT_MS: u64 = 30_000;
pub const SHUTDOWN_GRACE_DEFAULT_MS: u64 = 30_000;
pub const WORKER_CONCURRENCY_MAX: u32 = 10_000;
pub const DELIVERY_RETRY_SCHEDULE_DEFAULT: &str = "1m,2m,4m,8m,16m,32m,64m,128m";
pub const DELIVERY_TIMEOUT_DEFAULT_MS: u64 = 10_000;
pub const DELIVERY_DISABLE_AFTER_DEFAULT_MS: u64 = 5 * 24 * 3_600_000;
pub const RETENTION_DEFAULT_MS: u64 = 30 * 24 * 3_600_000;
/// `SAGAPLANE_DEAD_LETTER_RETENTION`'s default: 90 days.
pub const DEAD_LETTER_RETENTION_DEFAULT_MS: u64 = 90 * 24 * 3_600_000;

/// A connection URL fit to print or log: the password (if any) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    store_postgres::connect::redacted(url)
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}-{}", std::process::id())
}

fn parse_duration_ms(what: &str, text: &str) -> anyhow::Result<u64> {
    saga_core::duration::parse_ms(text).map_err(|e| anyhow::anyhow!("{what}: invalid duration {text:?}: {e}"))
}

/// An absolute `http://` or `https://` URL with a host.
fn is_http_url(text: &str) -> bool {
    reqwest::Url::parse(text).is_ok_and(|u| ["http", "https"].contains(&u.scheme()) && u.has_host())
}

/// A duration setting (`value` from the environment or the file), else `default_ms`; refused
/// outside `min_ms..=max_ms` with a message naming the setting and its range.
fn duration_setting(
    name: &str,
    value: Option<String>,
    default_ms: u64,
    (min_ms, max_ms): (u64, u64),
) -> anyhow::Result<u64> {
    let ms = match value {
        Some(text) => parse_duration_ms(name, &text)?,
        None => default_ms,
    };
    if !(min_ms..=max_ms).contains(&ms) {
        let show = saga_core::duration::format_ms;
        if max_ms >= i64::MAX as u64 {
            bail!("{name} must be at least {}", show(min_ms));
        } else if min_ms == 0 {
            bail!("{name} must be at most {}", show(max_ms));
        }
        bail!("{name} must be from {} to {}", show(min_ms), show(max_ms));
    }
    Ok(ms)
}

fn parse_schedule(text: &str) -> anyhow::Result<Vec<u64>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| parse_duration_ms("SAGAPLANE_DELIVERY_RETRY_SCHEDULE", s))
        .collect()
}

impl Config {
    /// Loads the configuration; `env` is the process environment (a parameter for tests).
    pub fn load(
        config_file: Option<&Path>,
        env: &BTreeMap<String, String>,
        overrides: Overrides,
    ) -> anyhow::Result<Config> {
        let file = match config_file {
            Some(path) => read_file(path)?,
            None if Path::new("sagaplane.toml").exists() => read_file(Path::new("sagaplane.toml"))?,
            None => FileConfig::default(),
        };
        let get = |name: &str| env.get(name).filter(|v| !v.is_empty()).cloned();
        let lease_ttl = get("SAGAPLANE_LEASE_TTL").or(file.lease_ttl);
        let lease_ttl_ms =
            duration_setting("SAGAPLANE_LEASE_TTL", lease_ttl, LEASE_TTL_DEFAULT_MS as u64, (300, i64::MAX as u64))?
                as i64;
        let poll_interval = get("SAGAPLANE_POLL_INTERVAL").or(file.poll_interval);
        let poll_interval_ms =
            duration_setting("SAGAPLANE_POLL_INTERVAL", poll_interval, POLL_INTERVAL_DEFAULT_MS, (10, 3_600_000))?;
        let worker_concurrency = match get("SAGAPLANE_WORKER_CONCURRENCY") {
            Some(text) => text
                .parse::<u32>()
                .with_context(|| format!("SAGAPLANE_WORKER_CONCURRENCY: {text:?} is not a number"))?,
            None => file.worker_concurrency.unwrap_or(WORKER_CONCURRENCY_DEFAULT),
        };
        if !(1..=WORKER_CONCURRENCY_MAX).contains(&worker_concurrency) {
            bail!("SAGAPLANE_WORKER_CONCURRENCY must be from 1 to {WORKER_CONCURRENCY_MAX}");
        }
        let tenant_migration_concurrency = match get("SAGAPLANE_TENANT_MIGRATION_CONCURRENCY") {
            Some(text) => text
                .parse::<u32>()
                .with_context(|| format!("SAGAPLANE_TENANT_MIGRATION_CONCURRENCY: {text:?} is not a number"))?,
            None => file.tenant_migration_concurrency.unwrap_or(tenancy::definitions::MIGRATION_CONCURRENCY_DEFAULT),
        };
        if !(1..=saga_core::GROUP_CONCURRENCY_MAX).contains(&tenant_migration_concurrency) {
            bail!("SAGAPLANE_TENANT_MIGRATION_CONCURRENCY must be from 1 to {}", saga_core::GROUP_CONCURRENCY_MAX);
        }
        let breaker_failures = match get("SAGAPLANE_BREAKER_FAILURES") {
            Some(text) => {
                text.parse::<u32>().with_context(|| format!("SAGAPLANE_BREAKER_FAILURES: {text:?} is not a number"))?
            }
            None => file.breaker_failures.unwrap_or(BREAKER_FAILURES_DEFAULT),
        };
        let cool_down = get("SAGAPLANE_BREAKER_COOLDOWN").or(file.breaker_cooldown);
        let breaker_cool_down_ms =
            duration_setting("SAGAPLANE_BREAKER_COOLDOWN", cool_down, BREAKER_COOL_DOWN_DEFAULT_MS, (10, 86_400_000))?;
        let grace = get("SAGAPLANE_SHUTDOWN_GRACE").or(file.shutdown_grace);
        let shutdown_grace_ms =
            duration_setting("SAGAPLANE_SHUTDOWN_GRACE", grace, SHUTDOWN_GRACE_DEFAULT_MS, (0, 3_600_000))?;
        let http_deny = get("SAGAPLANE_HTTP_DENY").or(file.http_deny).unwrap_or_default();
        let http_deny = egress::Networks::parse(&http_deny).map_err(|e| anyhow::anyhow!("SAGAPLANE_HTTP_DENY: {e}"))?;
        let http_allow = match get("SAGAPLANE_HTTP_ALLOW").or(file.http_allow) {
            Some(text) => {
                Some(egress::Networks::parse(&text).map_err(|e| anyhow::anyhow!("SAGAPLANE_HTTP_ALLOW: {e}"))?)
            }
            None => None,
        };
        let http_env_proxy = match get("SAGAPLANE_HTTP_ENV_PROXY") {
            Some(text) => match text.trim() {
                "true" | "1" => true,
                "false" | "0" | "" => false,
                other => anyhow::bail!("SAGAPLANE_HTTP_ENV_PROXY: {other:?} is not true or false"),
            },
            None => file.http_env_proxy.unwrap_or(false),
        };
        let nats_tenant_prefix = get("SAGAPLANE_NATS_TENANT_PREFIX")
            .or(file.nats_tenant_prefix)
            .unwrap_or_else(|| delivery::nats::TENANT_PREFIX_DEFAULT.to_string());
        // Without the tenant's id in it, tenants would share one prefix: each other's subjects.
        if !nats_tenant_prefix.contains("{tenant_id}")
            || nats_tenant_prefix.starts_with('$')
            || nats_tenant_prefix.contains(['*', '>', ' '])
        {
            anyhow::bail!(
                "SAGAPLANE_NATS_TENANT_PREFIX: {nats_tenant_prefix:?} must contain {{tenant_id}}, start with no $ and \
                 hold no wildcard or space (e.g. tenants.{{tenant_id}}.)"
            );
        }
        let tenant_subscriptions_max = match get("SAGAPLANE_TENANT_SUBSCRIPTIONS_MAX") {
            Some(text) => text.trim().parse::<u32>().ok().filter(|n| (1..=10_000).contains(n)).with_context(|| {
                format!("SAGAPLANE_TENANT_SUBSCRIPTIONS_MAX: {text:?} is not a number from 1 to 10000")
            })?,
            None => file.tenant_subscriptions_max.unwrap_or(server::TENANT_SUBSCRIPTIONS_MAX_DEFAULT),
        };
        let schedule = get("SAGAPLANE_DELIVERY_RETRY_SCHEDULE")
            .or(file.delivery_retry_schedule)
            .unwrap_or_else(|| DELIVERY_RETRY_SCHEDULE_DEFAULT.into());
        let timeout = get("SAGAPLANE_DELIVERY_TIMEOUT").or(file.delivery_timeout);
        let delivery_timeout_ms =
            duration_setting("SAGAPLANE_DELIVERY_TIMEOUT", timeout, DELIVERY_TIMEOUT_DEFAULT_MS, (100, 300_000))?;
        let disable_after = get("SAGAPLANE_DELIVERY_DISABLE_AFTER").or(file.delivery_disable_after);
        let delivery_disable_after_ms = duration_setting(
            "SAGAPLANE_DELIVERY_DISABLE_AFTER",
            disable_after,
            DELIVERY_DISABLE_AFTER_DEFAULT_MS,
            (1_000, u64::MAX),
        )?;
        let retention = get("SAGAPLANE_RETENTION").or(file.retention);
        let retention_ms = duration_setting("SAGAPLANE_RETENTION", retention, RETENTION_DEFAULT_MS, (1_000, u64::MAX))?;
        let dead_letter_retention = get("SAGAPLANE_DEAD_LETTER_RETENTION").or(file.dead_letter_retention);
        let dead_letter_retention_ms = duration_setting(
            "SAGAPLANE_DEAD_LETTER_RETENTION",
            dead_letter_retention,
            DEAD_LETTER_RETENTION_DEFAULT_MS,
            (1_000, u64::MAX),
        )?;
        let tenant_delete_grace = get("SAGAPLANE_TENANT_DELETE_GRACE").or(file.tenant_delete_grace);
        let tenant_delete_grace_ms = duration_setting(
            "SAGAPLANE_TENANT_DELETE_GRACE",
            tenant_delete_grace,
            0,
            (0, saga_core::duration::DURATION_MAX_MS),
        )?;
        let crm_callback_url = get("SAGAPLANE_CRM_CALLBACK_URL").or(file.crm_callback_url);
        let crm_callback_secret = get("SAGAPLANE_CRM_CALLBACK_SECRET").or(file.crm_callback_secret);
        if let Some(url) = &crm_callback_url {
            if !is_http_url(url) {
                bail!("SAGAPLANE_CRM_CALLBACK_URL must be an http(s) URL, not {url:?}");
            }
            match crm_callback_secret.as_deref().map(delivery::secret::secret_error) {
                Some(None) => {}
                Some(Some(error)) => bail!("SAGAPLANE_CRM_CALLBACK_SECRET {error}"),
                None => bail!(
                    "SAGAPLANE_CRM_CALLBACK_URL needs SAGAPLANE_CRM_CALLBACK_SECRET (whsec_<base64>) to sign with"
                ),
            }
        }
        let otlp_endpoint = get("SAGAPLANE_OTLP_ENDPOINT").or(file.otlp_endpoint);
        if let Some(endpoint) = otlp_endpoint.as_deref().filter(|e| !is_http_url(e)) {
            bail!("SAGAPLANE_OTLP_ENDPOINT must be the http(s) URL of an OTLP/gRPC collector, not {endpoint:?}");
        }
        let crm_webhook_secret = get("SAGAPLANE_CRM_WEBHOOK_SECRET").or(file.crm_webhook_secret);
        if let Some(secret) = &crm_webhook_secret {
            if !secret.starts_with("whsec_") {
                bail!("SAGAPLANE_CRM_WEBHOOK_SECRET must look like whsec_<base64>");
            }
        }
        let log_format = match get("SAGAPLANE_LOG_FORMAT").or(file.log_format).as_deref() {
            Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(other) => bail!("SAGAPLANE_LOG_FORMAT must be json or pretty, not {other:?}"),
            None if std::io::IsTerminal::is_terminal(&std::io::stderr()) => LogFormat::Pretty,
            None => LogFormat::Json,
        };
        let mut vars = file.vars;
        for (name, value) in env {
            if let Some(var) = name.strip_prefix("SAGAPLANE_VAR_") {
                if !var.is_empty() {
                    vars.insert(var.to_string(), value.clone());
                }
            }
        }
        let listen = overrides
            .listen
            .or_else(|| get("SAGAPLANE_LISTEN"))
            .or(file.listen)
            .unwrap_or_else(|| LISTEN_DEFAULT.into());
        let count = |name: &str, file_value: Option<u32>, default: u32| -> anyhow::Result<u32> {
            let value = match get(name) {
                Some(text) => text.parse::<u32>().with_context(|| format!("{name}: {text:?} is not a number"))?,
                None => file_value.unwrap_or(default),
            };
            if !(1..=POOL_SIZE_MAX).contains(&value) {
                bail!("{name} must be from 1 to {POOL_SIZE_MAX}");
            }
            Ok(value)
        };
        let database = DatabaseSettings {
            listen_url: get("SAGAPLANE_LISTEN_URL").or(file.listen_url),
            pool_size: count("SAGAPLANE_DATABASE_POOL_SIZE", file.database_pool_size, DATABASE_POOL_SIZE_DEFAULT)?,
            tenant_pool_size: count("SAGAPLANE_TENANT_POOL_SIZE", file.tenant_pool_size, TENANT_POOL_SIZE_DEFAULT)?,
            tenant_sessions_max: count(
                "SAGAPLANE_TENANT_SESSIONS_MAX",
                file.tenant_sessions_max,
                TENANT_SESSIONS_MAX_DEFAULT,
            )?,
        };
        if let Some(url) = &database.listen_url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                bail!("SAGAPLANE_LISTEN_URL must start with postgres://");
            }
        }
        Ok(Config {
            database_url: get("SAGAPLANE_DATABASE_URL").or(file.database_url),
            database,
            listen,
            admin_token: get("SAGAPLANE_ADMIN_TOKEN").or(file.admin_token).map(Secret::new),
            worker_id: get("SAGAPLANE_WORKER_ID").or(file.worker_id).unwrap_or_else(default_worker_id),
            lease_ttl_ms,
            poll_interval_ms,
            worker_concurrency,
            tenant_database_url: get("SAGAPLANE_TENANT_DATABASE_URL").or(file.tenant_database_url),
            tenant_migrations_dir: get("SAGAPLANE_TENANT_MIGRATIONS_DIR")
                .map(PathBuf::from)
                .or(file.tenant_migrations_dir),
            tenant_migration_concurrency,
            crm_webhook_secret: crm_webhook_secret.map(Secret::new),
            delivery_retry_schedule_ms: parse_schedule(&schedule)?,
            delivery_timeout_ms,
            delivery_disable_after_ms,
            retention_ms,
            dead_letter_retention_ms,
            tenant_delete_grace_ms,
            archive_dir: get("SAGAPLANE_ARCHIVE_DIR")
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from)
                .or(file.archive_dir),
            crm_callback_url,
            crm_callback_secret: crm_callback_secret.map(Secret::new),
            vars,
            log_format,
            otlp_endpoint,
            public_url: get("SAGAPLANE_PUBLIC_URL").or(file.public_url),
            breaker_failures,
            breaker_cool_down_ms,
            shutdown_grace_ms,
            http_deny,
            http_allow,
            http_env_proxy,
            nats_tenant_prefix,
            tenant_subscriptions_max,
            data_dir: overrides.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(".sagaplane")),
        })
    }

    /// `SAGAPLANE_PUBLIC_URL`, or `http://<the address actually bound>`.
    pub fn public_url(&self, bound: Option<SocketAddr>) -> String {
        match (&self.public_url, bound) {
            (Some(url), _) => url.trim_end_matches('/').to_string(),
            (None, Some(address)) => format!("http://{address}"),
            (None, None) => format!("http://{}", self.listen),
        }
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_printed_urls() {
        for (url, shown) in [
            ("postgres://app:s3cr%40t@db:5432/sagaplane", "postgres://app:***@db:5432/sagaplane"),
            ("postgres://app:p@ss@db/x?sslmode=require", "postgres://app:***@db/x?sslmode=require"),
            ("postgres://app@db/x", "postgres://app@db/x"),
            ("postgres://db/x", "postgres://db/x"),
            ("sqlite://.sagaplane/sagaplane.db", "sqlite://.sagaplane/sagaplane.db"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    /// Every `SAGAPLANE_*` variable the binary reads is in the operations guide's table.
    #[test]
    fn every_environment_variable_is_documented() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let guide = std::fs::read_to_string(root.join("../../docs/operations.md")).expect("docs/operations.md");
        let mut missing = Vec::new();
        for file in ["src/config.rs", "src/client.rs", "src/main.rs"] {
            let source = std::fs::read_to_string(root.join(file)).expect("source");
            for (at, _) in source.match_indices("\"SAGAPLANE_") {
                let name: String =
                    source[at + 1..].chars().take_while(|c| c.is_ascii_uppercase() || *c == '_').collect();
                if name == "SAGAPLANE_" {
                    continue; // a prefix being matched, not a variable
                }
                let documented = if name.starts_with("SAGAPLANE_VAR_") {
                    guide.contains("`SAGAPLANE_VAR_<NAME>`")
                } else {
                    guide.contains(&format!("`{name}`"))
                };
                if !documented && !missing.contains(&name) {
                    missing.push(name);
                }
            }
        }
        assert!(missing.is_empty(), "docs/operations.md does not document {missing:?}");
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn env_overrides_file_and_defaults() {
        let dir = std::env::temp_dir().join(format!("sagaplane-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("sagaplane.toml");
        std::fs::write(&file, "listen = \"0.0.0.0:9000\"\nworker_concurrency = 8\n[vars]\nORDERS = \"http://file\"\n")
            .expect("write");
        let config = Config::load(
            Some(&file),
            &env(&[
                ("SAGAPLANE_WORKER_CONCURRENCY", "16"),
                ("SAGAPLANE_VAR_PAYMENTS", "http://env"),
                ("SAGAPLANE_LEASE_TTL", "5s"),
            ]),
            Overrides::default(),
        )
        .expect("loads");
        assert_eq!(config.listen, "0.0.0.0:9000");
        assert_eq!(config.worker_concurrency, 16);
        assert_eq!(config.lease_ttl_ms, 5_000);
        assert_eq!(config.vars.get("ORDERS").map(String::as_str), Some("http://file"));
        assert_eq!(config.vars.get("PAYMENTS").map(String::as_str), Some("http://env"));
        assert_eq!(config.delivery_retry_schedule_ms.len(), 8);
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        for (name, value) in [
            ("SAGAPLANE_LEASE_TTL", "soon"),
            ("SAGAPLANE_WORKER_CONCURRENCY", "0"),
            ("SAGAPLANE_LOG_FORMAT", "xml"),
            ("SAGAPLANE_CRM_WEBHOOK_SECRET", "plain"),
            ("SAGAPLANE_DELIVERY_RETRY_SCHEDULE", "1m,x"),
            ("SAGAPLANE_DELIVERY_TIMEOUT", "50ms"),
            ("SAGAPLANE_DELIVERY_DISABLE_AFTER", "10ms"),
            ("SAGAPLANE_CRM_CALLBACK_URL", "ftp://crm"),
            ("SAGAPLANE_OTLP_ENDPOINT", "localhost:4317"),
        ] {
            let error = Config::load(None, &env(&[(name, value)]), Overrides::default()).expect_err(name);
            assert!(format!("{error:#}").contains(name), "{error:#}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }
}
