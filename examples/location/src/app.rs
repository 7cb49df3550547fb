//! The tenant application: users log in (a session per login, revocable, listed per user),
//! start tracking sessions of a fixed length and post location updates. Its tables live in the
//! tenant's pooled storage: every query runs on a connection that logs in as the tenant's own
//! database role with the tenant's id set, so PostgreSQL's row-level security — which Sagaplane
//! put on the shared tables — shows and accepts only that tenant's rows. Each update is handed
//! to Sagaplane (`location.publish`, a `core.emit` that expires when the tracking session ends),
//! whose outbound delivery takes it to the tenant's third party.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// The schema Sagaplane keeps pooled tenants' shared tables in, and the setting its row-level
/// security reads the tenant from.
const POOLED_SCHEMA: &str = "sagaplane_pooled";
const TENANT_SETTING: &str = "sagaplane.tenant_id";

#[derive(clap::Args, Clone)]
pub struct Config {
    /// Sagaplane's base URL and admin token (to start `location.publish` sagas).
    #[arg(long, env = "SAGAPLANE_URL", default_value = "http://127.0.0.1:8080")]
    pub sagaplane: String,
    #[arg(long, env = "SAGAPLANE_TOKEN")]
    pub token: String,
    /// The PostgreSQL admin connection of the tenants' pooled storage
    /// (`SAGAPLANE_TENANT_DATABASE_URL`): used only to issue each tenant role a password.
    #[arg(long, env = "SAGAPLANE_TENANT_DATABASE_URL")]
    pub tenant_database: String,
    /// How long a tracking session lasts.
    #[arg(long, default_value = "10m")]
    pub tracking: humantime::Duration,
}

struct App {
    config: Config,
    client: reqwest::Client,
    admin: PgPool,
    /// Held while a tenant's pool is made, so two first requests do not both issue a password.
    tenants: tokio::sync::Mutex<BTreeMap<String, PgPool>>,
}

type Answer = (StatusCode, Json<Value>);
/// A handler's result: the answer, or the error answer.
type Handled = Result<Answer, Answer>;

fn error(status: StatusCode, message: impl Into<String>) -> Answer {
    (status, Json(json!({"error": message.into()})))
}

fn internal(e: impl std::fmt::Display) -> Answer {
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn valid_tenant(id: &str) -> bool {
    let bytes = id.as_bytes();
    (3..=40).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && !id.ends_with('-')
}

impl App {
    /// The tenant's pool: connections logged in as the tenant's role (`tenant_<id>`), with the
    /// tenant's id set for row-level security. Its password is issued here, out of band, as an
    /// operator would (Sagaplane makes tenant roles without one).
    async fn tenant(&self, tenant: &str) -> Result<PgPool, Answer> {
        if !valid_tenant(tenant) {
            return Err(error(StatusCode::NOT_FOUND, "no such tenant"));
        }
        let mut tenants = self.tenants.lock().await;
        if let Some(pool) = tenants.get(tenant) {
            return Ok(pool.clone());
        }
        let role = format!("tenant_{}", tenant.replace('-', "_"));
        let password = random_hex();
        // Both are [a-z0-9_] only: safe to write into the statement.
        let issued = sqlx::raw_sql(&format!("ALTER ROLE \"{role}\" PASSWORD '{password}'")).execute(&self.admin).await;
        if issued.is_err() {
            return Err(error(StatusCode::NOT_FOUND, "no such tenant (or not in pooled storage)"));
        }
        let options = PgConnectOptions::from_str(&self.config.tenant_database)
            .map_err(internal)?
            .username(&role)
            .password(&password)
            .options([("search_path", POOLED_SCHEMA), (TENANT_SETTING, tenant)]);
        let pool = PgPoolOptions::new().max_connections(4).connect_with(options).await.map_err(internal)?;
        tenants.insert(tenant.to_string(), pool.clone());
        Ok(pool)
    }

    /// The user a bearer token belongs to (a session not revoked), and the session's id.
    async fn user(&self, pool: &PgPool, headers: &HeaderMap) -> Result<(String, String), Answer> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "log in first"))?;
        sqlx::query_as("SELECT user_id, id FROM login_sessions WHERE token_hash = $1 AND revoked_at IS NULL")
            .bind(sha256(token))
            .fetch_optional(pool)
            .await
            .map_err(internal)?
            .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "the session is unknown or revoked"))
    }
}

/// The app's routes; puts the `location.publish` definition first.
pub async fn router(config: Config) -> anyhow::Result<Router> {
    let admin = PgPoolOptions::new().max_connections(2).connect(&config.tenant_database).await?;
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build()?;
    let definition = json!({"steps": [{"name": "publish", "action": {"builtin": "core.emit", "input": {
        "type": "location.updated",
        "data": {"tenant": "{{ tenant_id }}", "tracking_id": "{{ input.tracking_id }}", "location_id": "{{ input.location_id }}",
                 "lat": "{{ input.lat }}", "lon": "{{ input.lon }}", "at": "{{ input.at }}"},
        "expires_at": "{{ input.expires_at }}"}}}]});
    let put = client
        .put(format!("{}/v1/definitions/location.publish", config.sagaplane))
        .bearer_auth(&config.token)
        .json(&definition)
        .send()
        .await?;
    anyhow::ensure!(put.status().is_success(), "PUT location.publish answered {}", put.status());
    let app = Arc::new(App { config, client, admin, tenants: Default::default() });
    Ok(Router::new()
        .route("/tenants/{tenant}/users", post(create_user))
        .route("/tenants/{tenant}/login", post(login))
        .route("/tenants/{tenant}/sessions", get(sessions))
        .route("/tenants/{tenant}/sessions/{id}/revoke", post(revoke))
        .route("/tenants/{tenant}/tracking", post(start_tracking))
        .route("/tenants/{tenant}/tracking/{id}/locations", post(post_location))
        .route("/tenants/{tenant}/locations", get(locations))
        .with_state(app))
}

/// Creates a user (the platform's admin token).
async fn create_user(
    State(app): State<Arc<App>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Handled {
    let admin =
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {}", app.config.token));
    if !admin {
        return Err(error(StatusCode::UNAUTHORIZED, "creating users takes the admin token"));
    }
    let (Some(email), Some(password)) = (body["email"].as_str(), body["password"].as_str()) else {
        return Err(error(StatusCode::UNPROCESSABLE_ENTITY, "email and password are required"));
    };
    let pool = app.tenant(&tenant).await?;
    // Salted SHA-256 keeps the example small; a real app stores passwords with a slow KDF
    // (argon2, scrypt) instead.
    let (id, salt) = (random_hex(), random_hex());
    sqlx::query(
        "INSERT INTO app_users (tenant_id, id, email, password_salt, password_hash) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&tenant)
    .bind(&id)
    .bind(email)
    .bind(&salt)
    .bind(sha256(&format!("{salt}:{password}")))
    .execute(&pool)
    .await
    .map_err(|e| match e.to_string().contains("duplicate") {
        true => error(StatusCode::CONFLICT, "that email exists"),
        false => internal(e),
    })?;
    Ok((StatusCode::CREATED, Json(json!({"id": id, "email": email}))))
}

async fn login(State(app): State<Arc<App>>, Path(tenant): Path<String>, Json(body): Json<Value>) -> Handled {
    let pool = app.tenant(&tenant).await?;
    let (email, password) = (body["email"].as_str().unwrap_or_default(), body["password"].as_str().unwrap_or_default());
    let user: Option<(String, String, String)> =
        sqlx::query_as("SELECT id, password_salt, password_hash FROM app_users WHERE email = $1")
            .bind(email)
            .fetch_optional(&pool)
            .await
            .map_err(internal)?;
    let Some((user_id, _, _)) = user.filter(|(_, salt, hash)| sha256(&format!("{salt}:{password}")) == *hash) else {
        return Err(error(StatusCode::UNAUTHORIZED, "wrong email or password"));
    };
    let (session_id, token) = (random_hex(), random_hex());
    sqlx::query(
        "INSERT INTO login_sessions (tenant_id, id, token_hash, user_id, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&tenant)
    .bind(&session_id)
    .bind(sha256(&token))
    .bind(&user_id)
    .bind(now_ms())
    .execute(&pool)
    .await
    .map_err(internal)?;
    Ok((StatusCode::CREATED, Json(json!({"session_id": session_id, "token": token}))))
}

/// The user's sessions, newest first.
async fn sessions(State(app): State<Arc<App>>, Path(tenant): Path<String>, headers: HeaderMap) -> Handled {
    let pool = app.tenant(&tenant).await?;
    let (user_id, current) = app.user(&pool, &headers).await?;
    let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT id, created_at, revoked_at FROM login_sessions WHERE user_id = $1 ORDER BY created_at DESC",
    )
    .bind(&user_id)
    .fetch_all(&pool)
    .await
    .map_err(internal)?;
    let items: Vec<Value> = rows
        .into_iter()
        .map(|(id, created_at, revoked_at)| json!({"id": id, "created_at": created_at, "revoked": revoked_at.is_some(), "current": id == current}))
        .collect();
    Ok((StatusCode::OK, Json(json!({"items": items}))))
}

/// Revokes one of the user's own sessions.
async fn revoke(
    State(app): State<Arc<App>>,
    Path((tenant, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Handled {
    let pool = app.tenant(&tenant).await?;
    let (user_id, _) = app.user(&pool, &headers).await?;
    let done =
        sqlx::query("UPDATE login_sessions SET revoked_at = $1 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(&id)
            .bind(&user_id)
            .execute(&pool)
            .await
            .map_err(internal)?;
    if done.rows_affected() == 0 {
        return Err(error(StatusCode::NOT_FOUND, "no such session of yours"));
    }
    Ok((StatusCode::OK, Json(json!({"revoked": id}))))
}

/// Starts a tracking session of the configured length (10 minutes), or shorter with
/// `{"duration": "30s"}`.
async fn start_tracking(
    State(app): State<Arc<App>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Handled {
    let pool = app.tenant(&tenant).await?;
    let (user_id, _) = app.user(&pool, &headers).await?;
    let longest = app.config.tracking.as_millis() as i64;
    let length_ms = match body.as_ref().and_then(|b| b["duration"].as_str()) {
        None => longest,
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if (d.as_millis() as i64) <= longest => d.as_millis() as i64,
            _ => {
                return Err(error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("duration must be at most {}", app.config.tracking),
                ))
            }
        },
    };
    let (id, started_at) = (random_hex(), now_ms());
    let ends_at = started_at + length_ms;
    sqlx::query(
        "INSERT INTO tracking_sessions (tenant_id, id, user_id, started_at, ends_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&tenant)
    .bind(&id)
    .bind(&user_id)
    .bind(started_at)
    .bind(ends_at)
    .execute(&pool)
    .await
    .map_err(internal)?;
    Ok((StatusCode::CREATED, Json(json!({"id": id, "ends_at": ends_at}))))
}

/// Stores an update and hands it to Sagaplane; 409 once the tracking session has ended.
async fn post_location(
    State(app): State<Arc<App>>,
    Path((tenant, tracking_id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Handled {
    let pool = app.tenant(&tenant).await?;
    let (user_id, _) = app.user(&pool, &headers).await?;
    let (Some(lat), Some(lon)) = (body["lat"].as_f64(), body["lon"].as_f64()) else {
        return Err(error(StatusCode::UNPROCESSABLE_ENTITY, "lat and lon are required numbers"));
    };
    let ends_at: i64 = sqlx::query_scalar("SELECT ends_at FROM tracking_sessions WHERE id = $1 AND user_id = $2")
        .bind(&tracking_id)
        .bind(&user_id)
        .fetch_optional(&pool)
        .await
        .map_err(internal)?
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "no such tracking session of yours"))?;
    let at = now_ms();
    if at >= ends_at {
        return Err(error(StatusCode::CONFLICT, "the tracking session has ended"));
    }
    let id = random_hex();
    sqlx::query("INSERT INTO locations (tenant_id, id, tracking_id, lat, lon, at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&tenant)
        .bind(&id)
        .bind(&tracking_id)
        .bind(lat)
        .bind(lon)
        .bind(at)
        .execute(&pool)
        .await
        .map_err(internal)?;
    let expires_at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ends_at as u64);
    let saga = json!({"definition": "location.publish", "tenant_id": tenant, "input": {
        "tracking_id": tracking_id, "location_id": id, "lat": lat, "lon": lon, "at": at,
        "expires_at": humantime::format_rfc3339_millis(expires_at).to_string()}});
    let response = app
        .client
        .post(format!("{}/v1/sagas", app.config.sagaplane))
        .bearer_auth(&app.config.token)
        .header("Idempotency-Key", format!("location-{tenant}-{id}"))
        .json(&saga)
        .send()
        .await
        .map_err(|e| error(StatusCode::BAD_GATEWAY, e.to_string()))?;
    if !response.status().is_success() {
        return Err(error(StatusCode::BAD_GATEWAY, format!("Sagaplane answered {}", response.status())));
    }
    Ok((StatusCode::CREATED, Json(json!({"id": id}))))
}

/// Every location the tenant's role can read (row-level security decides which).
async fn locations(State(app): State<Arc<App>>, Path(tenant): Path<String>, headers: HeaderMap) -> Handled {
    let pool = app.tenant(&tenant).await?;
    app.user(&pool, &headers).await?;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT id, tenant_id FROM locations").fetch_all(&pool).await.map_err(internal)?;
    let items: Vec<Value> = rows.into_iter().map(|(id, tenant_id)| json!({"id": id, "tenant_id": tenant_id})).collect();
    Ok((StatusCode::OK, Json(json!({"items": items}))))
}
