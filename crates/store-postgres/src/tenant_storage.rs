//! Tenant storage on PostgreSQL, through the admin connection `SAGAPLANE_TENANT_DATABASE_URL`.
//!
//! Design note. Every tenant gets a login role `tenant_<id>` (ids are validated, and every
//! identifier is still quoted) that can reach its own storage and nothing else:
//! - `schema`: schema `tenant_<id>` owned by the role; PUBLIC has no rights on it, so another
//!   tenant's role is denied.
//! - `database`: database `tenant_<id>` owned by the role, CONNECT revoked from PUBLIC.
//! - `pooled`: shared tables in schema `sagaplane_pooled` carrying `tenant_id`, under a
//!   row-level-security policy keyed on the session setting `sagaplane.tenant_id` (the tenant's
//!   sessions `SET` it; PostgreSQL 15 does not let a non-superuser pin a custom setting to a role)
//!   *and* bound to the role, so a tenant that sets another tenant's id still sees only its own
//!   rows.
//!
//! Migrations of `schema` and `database` tenants run on a session that *is* the tenant: a login
//! role `tmigr_<id>` that is a member of the tenant's role and nothing else, logged in with a
//! single-use password (set just before, cleared just after, valid for minutes). Each file runs
//! under `SET LOCAL ROLE` of the tenant's role, so its objects are the tenant's; a trigger or
//! function the tenant planted in its storage that runs during a migration — even one that
//! says `RESET ROLE` — has the tenant's rights, never the admin's. The record of what was applied
//! (service, version, name, checksum) is kept out of the tenant's reach, in a table of the
//! admin-owned schema `sagaplane_tenancy` that the migration role may read and append to but not
//! change, and on which the tenant can plant nothing; it is written in the same transaction as
//! the file and locked first, so two drivers of one tenant cannot interleave. Every operation is
//! idempotent: "already exists" / "does not exist" are success, so a step re-run after a crash
//! between its effect and its commit creates nothing twice.
//!
//! The admin is a member of a tenant's roles only inside the transaction that acts as them
//! (creating or dropping a schema they own, `DROP OWNED BY`): granted first, revoked last,
//! committed together, so no membership outlives it. PostgreSQL 15 recomputes a role's whole
//! membership list whenever any membership changes, in time that grows faster than the list: an
//! admin kept as a member of every tenant's two roles made each onboarding slower with every
//! tenant before it (107 ms more a tenant with 2,500 tenants behind, 287 ms with 5,000). A silo
//! tenant's are the exception: its database is reached, and its sessions ended, as its owner.
//! Memberships left by earlier releases are released at start.
//!
//! A tenant's migrations run one at a time within an instance (one per service, started
//! together by a provisioning or a rollout): the session one finishes with is handed to the
//! next one already waiting, so a provisioning logs in once, not once per service.

use async_trait::async_trait;
use saga_core::tenant::{tenant_object_name, StorageMode};
use saga_store::tenant_storage::{AppliedMigration, Migration, TenantStorage, TenantStorageError};
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool, Row};

use crate::connect::{self, Db};

/// `saga_core::tenant::tenant_object_name(tenant_id)` in SQL, for the pooled tables' policy: the
/// plain name when it fits in 63 bytes, else its first 50 characters, `_` and 12 hex digits of
/// the id's SHA-256 (a unit test checks the two agree).
pub const ROLE_OF_ROW_SQL: &str = "(CASE WHEN length('tenant_' || replace(tenant_id, '-', '_')) <= 63 \
     THEN 'tenant_' || replace(tenant_id, '-', '_') \
     ELSE left('tenant_' || replace(tenant_id, '-', '_'), 50) || '_' || \
          left(encode(sha256(convert_to(tenant_id, 'UTF8')), 'hex'), 12) END)";

/// Which catalog an owned object is in.
#[derive(Clone, Copy)]
enum OwnedObject {
    Schema,
    Database,
}

impl OwnedObject {
    fn noun(self) -> &'static str {
        match self {
            OwnedObject::Schema => "schema",
            OwnedObject::Database => "database",
        }
    }
}

/// The comment that marks a role as made by Sagaplane for this tenant.
fn role_marker_text(tenant_id: &str) -> String {
    format!("sagaplane tenant {tenant_id}")
}

/// The admin-owned schema holding tenants' migration records.
pub const BOOKKEEPING_SCHEMA: &str = "sagaplane_tenancy";

/// How long a migration role's single-use password is valid, at most.
const MIGRATOR_PASSWORD_VALID_S: i64 = 300;

/// The login role that runs `tenant_id`'s migrations: `tenant_object_name` with `tmigr_` in
/// place of `tenant_` (same length, so it fits; a different prefix, so it never names a tenant).
pub fn migrator_name(tenant_id: &str) -> String {
    let name = tenant_object_name(tenant_id);
    format!("tmigr_{}", name.strip_prefix("tenant_").unwrap_or(&name))
}

/// How often a forced `DROP DATABASE` is tried again while a closing session blocks it.
const DROP_RETRIES_MAX: u32 = 20;

/// Memberships revoked by one statement when earlier releases' are released at start.
const RELEASED_AT_ONCE: usize = 500;

/// The schema of pooled tenants' shared tables.
pub const POOLED_SCHEMA: &str = "sagaplane_pooled";
/// The session setting the pooled tables' policy is keyed on.
pub const TENANT_SETTING: &str = "sagaplane.tenant_id";
pub const TENANT_ADMIN_POOL_SIZE: u32 = 8;

/// Tenant storage on one PostgreSQL server.
pub struct PgTenantStorage {
    admin: Db,
    /// The database the admin pool is in: where pooled and schema tenants' storage lives.
    database: String,
    options: PgConnectOptions,
    /// Bounds sessions in tenants' own databases and as their migration roles.
    sessions: std::sync::Arc<tokio::sync::Semaphore>,
    /// Held while a tenant's migrations run (its migration role's password is set, used and
    /// cleared inside); holds the session a finished migration hands to the next one waiting.
    logins: TenantLocks<Option<ParkedSession>>,
}

/// A migration role's session, kept by a tenant's finished migration for the next migration of
/// the same tenant already waiting (the services of one provisioning, one branch each): one
/// login, one backend, instead of one a service. `database` is where it is (`None`: the admin's).
struct ParkedSession {
    database: Option<String>,
    session: TenantSession,
}

/// One lock per tenant. Two migrations of one tenant at once (one branch per service) would
/// otherwise set its migration role's single-use password over each other, so one of them could
/// not log in, and update the role's catalog row together, which PostgreSQL refuses with "tuple
/// concurrently updated"; each was retried after half a second, most of an onboarding's time.
/// An entry is kept only while someone holds or awaits it.
/// Each lock guards a `T` its holders hand on to each other.
struct TenantLocks<T>(std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<T>>>>);

impl<T> Default for TenantLocks<T> {
    fn default() -> Self {
        TenantLocks(std::sync::Mutex::default())
    }
}

/// A tenant's lock held; dropping it lets the next waiter in, or forgets the tenant (and drops
/// what it guards).
struct TenantLock<'a, T> {
    locks: &'a TenantLocks<T>,
    tenant_id: String,
    entry: std::sync::Arc<tokio::sync::Mutex<T>>,
    held: Option<tokio::sync::OwnedMutexGuard<T>>,
}

impl<T: Default> TenantLocks<T> {
    async fn lock(&self, tenant_id: &str) -> TenantLock<'_, T> {
        let entry = {
            let mut map = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            map.entry(tenant_id.to_string()).or_default().clone()
        };
        let held = Some(entry.clone().lock_owned().await);
        TenantLock { locks: self, tenant_id: tenant_id.to_string(), entry, held }
    }
}

impl<T> TenantLock<'_, T> {
    /// Someone else holds the tenant's entry: waiting for this lock, or about to.
    fn awaited(&self) -> bool {
        let _map = self.locks.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // The map's, this lock's, and its guard's (an owned guard keeps one too).
        std::sync::Arc::strong_count(&self.entry) > 2 + usize::from(self.held.is_some())
    }

    fn guarded(&mut self) -> &mut T {
        // Provably safe: `held` is only taken in `drop`.
        self.held.as_mut().expect("held until dropped")
    }
}

impl<T> Drop for TenantLock<'_, T> {
    fn drop(&mut self) {
        self.held.take();
        let mut map = self.locks.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // The map's and this guard's: nobody else holds or awaits it (they clone under the map's lock).
        if std::sync::Arc::strong_count(&self.entry) == 2 {
            map.remove(&self.tenant_id);
        }
    }
}

/// A session in a tenant's database or as its migration role, counted against
/// `SAGAPLANE_TENANT_SESSIONS_MAX`.
struct TenantSession {
    conn: PgConnection,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl std::ops::Deref for TenantSession {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for TenantSession {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl TenantSession {
    async fn close(self) {
        let _ = self.conn.close().await;
    }
}

/// The SCRAM-SHA-256 secret of a migration role's single-use `password`, with one iteration.
/// PostgreSQL stores a secret it is given as it is; given the password it would derive one with
/// 4,096 iterations of HMAC-SHA-256, and the client would run as many again at the login — a
/// few milliseconds of CPU on each side, every login. Iterations slow the guessing of a weak
/// password from a stolen secret; this one is 244 random bits, valid for minutes, used once and
/// cleared right after.
fn scram_secret(password: &str, salt: &[u8]) -> String {
    use base64::Engine;
    use hmac::Mac;
    use sha2::Digest;
    let hmac = |key: &[u8], parts: &[&[u8]]| -> Vec<u8> {
        // Provably safe: HMAC takes a key of any length.
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    };
    // PBKDF2 with one iteration is its first block: HMAC(password, salt || INT(1)).
    let salted = hmac(password.as_bytes(), &[salt, &1u32.to_be_bytes()]);
    let stored_key = sha2::Sha256::digest(hmac(&salted, &[b"Client Key"]));
    let server_key = hmac(&salted, &[b"Server Key"]);
    let b64 = base64::engine::general_purpose::STANDARD;
    format!("SCRAM-SHA-256$1:{}${}:{}", b64.encode(salt), b64.encode(stored_key), b64.encode(server_key))
}

/// `"name"`, with embedded quotes doubled (names here are validated already; this is the
/// second line of defence).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'`, with embedded quotes doubled.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `statements` run as a member of `role`: the membership granted before them and revoked after
/// them, to be sent as one transaction, so it never outlives them (see the module's note).
fn as_member_of(role: &str, statements: &str) -> String {
    let role = quote_ident(role);
    format!("GRANT {role} TO CURRENT_USER; {statements} REVOKE {role} FROM CURRENT_USER;")
}

fn backend(e: sqlx::Error) -> TenantStorageError {
    TenantStorageError::Backend(e.to_string())
}

/// SQLSTATEs that mean "it is there already" / "it is gone already".
fn is_code(e: &sqlx::Error, codes: &[&str]) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| codes.contains(&c.as_ref())))
}

/// A failure inside a migration: definite, unless the connection itself broke.
fn migration_error(service: &str, file: &str, e: sqlx::Error) -> TenantStorageError {
    match e {
        sqlx::Error::Database(db) => TenantStorageError::MigrationFailed {
            service: service.into(),
            file: file.into(),
            message: db.message().to_string(),
        },
        other => TenantStorageError::Backend(other.to_string()),
    }
}

impl PgTenantStorage {
    /// Connects the admin pool (`pool_size` connections) to `url`, over TLS when the URL says
    /// so, through a transaction pooler when it is one. Tenant databases are reached with the
    /// same options (TLS settings included), only the database name changed.
    pub async fn connect(url: &str, pool_size: u32, sessions_max: u32) -> Result<Self, TenantStorageError> {
        let admin = connect::open_pool(url, pool_size.max(1), connect::application::TENANT_ADMIN)
            .await
            .map_err(|e| TenantStorageError::Backend(e.to_string()))?;
        let options = admin.connect_options().clone().application_name(connect::application::TENANT_SESSION);
        let sessions = std::sync::Arc::new(tokio::sync::Semaphore::new(sessions_max.max(1) as usize));
        let database: String =
            simple_scalar(&mut *admin.pool().acquire().await.map_err(backend)?, "SELECT current_database()").await?;
        let storage = PgTenantStorage { admin, database, options, sessions, logins: TenantLocks::default() };
        storage.admit_only_tenants_stored_here().await?;
        if let Err(e) = storage.release_memberships().await {
            // Only a cost (see the module's note), tried again at the next start.
            tracing::warn!(error = %e, "could not release the admin's memberships of tenants' roles");
        }
        Ok(storage)
    }

    /// Revokes the admin's memberships that earlier releases kept of the roles (the tenant's
    /// and its migration role) of every tenant stored in this database: a schema tenant's, a
    /// pooled tenant's. A silo tenant's stay (see the module's note), and so does any tenant's
    /// whose storage is not here yet, so a provisioning under way elsewhere is never disturbed.
    async fn release_memberships(&self) -> Result<(), TenantStorageError> {
        let roles: Vec<String> = sqlx::query_scalar(&format!(
            "WITH marked AS ( \
               SELECT r.oid, r.rolname, (SELECT o.oid FROM pg_roles o WHERE o.rolname = {tenant_role}) AS tenant_role \
               FROM pg_roles r CROSS JOIN LATERAL (SELECT substr(shobj_description(r.oid, 'pg_authid'), {skip}) AS tenant_id) t \
               WHERE shobj_description(r.oid, 'pg_authid') LIKE {marker}) \
             SELECT k.rolname::text FROM marked k JOIN pg_auth_members m ON m.roleid = k.oid \
             WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = current_user) \
               AND (EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspowner = k.tenant_role) \
                    OR (to_regnamespace($1) IS NOT NULL AND has_schema_privilege(k.tenant_role, $1, 'USAGE')))",
            tenant_role = ROLE_OF_ROW_SQL,
            skip = role_marker_text("").len() + 1,
            marker = quote_literal(&format!("{}%", role_marker_text(""))),
        ))
        .bind(POOLED_SCHEMA)
        .fetch_all(&self.admin)
        .await
        .map_err(backend)?;
        for chunk in roles.chunks(RELEASED_AT_ONCE) {
            let names: Vec<String> = chunk.iter().map(|role| quote_ident(role)).collect();
            let revoke = format!("REVOKE {} FROM CURRENT_USER", names.join(", "));
            sqlx::raw_sql(&revoke).execute(self.admin.pool()).await.map_err(backend)?;
        }
        if !roles.is_empty() {
            tracing::info!(roles = roles.len(), "released the admin's memberships of tenants' roles");
        }
        Ok(())
    }

    /// Only the roles whose storage is in this database may connect to it: not `PUBLIC` (a
    /// silo tenant's role, or any other login, has no business in the control database), but
    /// every pooled and schema tenant's role (made before this rule: granted here, at start).
    /// Needs the database's ownership; without it the rule is logged and left to the operator.
    async fn admit_only_tenants_stored_here(&self) -> Result<(), TenantStorageError> {
        let database = quote_ident(&self.database);
        if let Err(e) = sqlx::raw_sql(&format!("REVOKE CONNECT ON DATABASE {database} FROM PUBLIC"))
            .execute(self.admin.pool())
            .await
        {
            tracing::warn!(database = %self.database, error = %e,
                "could not revoke CONNECT from PUBLIC (the role does not own the database); tenants' roles may connect to it");
            return Ok(());
        }
        let roles: Vec<String> = sqlx::query_scalar(
            "SELECT r.rolname::text FROM pg_roles r \
             WHERE shobj_description(r.oid, 'pg_authid') LIKE 'sagaplane tenant %' \
               AND (EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspowner = r.oid) \
                    OR (to_regnamespace($1) IS NOT NULL AND has_schema_privilege(r.oid, $1, 'USAGE')))",
        )
        .bind(POOLED_SCHEMA)
        .fetch_all(&self.admin)
        .await
        .map_err(backend)?;
        for role in roles {
            self.admit(&role).await?;
        }
        Ok(())
    }

    /// Lets `role` (a pooled or schema tenant's) connect to the database its storage is in.
    async fn admit(&self, role: &str) -> Result<(), TenantStorageError> {
        let grant = format!("GRANT CONNECT ON DATABASE {} TO {}", quote_ident(&self.database), quote_ident(role));
        sqlx::raw_sql(&grant).execute(self.admin.pool()).await.map_err(backend)?;
        Ok(())
    }

    /// Waits for a session slot, then opens a session with `options`.
    async fn session(&self, options: &PgConnectOptions) -> Result<TenantSession, sqlx::Error> {
        let permit = self.sessions.clone().acquire_owned().await.map_err(|_| sqlx::Error::PoolClosed)?;
        let conn = PgConnection::connect_with(options).await?;
        Ok(TenantSession { conn, _permit: permit })
    }

    /// The admin pool (tests use it to inspect the catalog).
    pub fn admin(&self) -> &PgPool {
        self.admin.pool()
    }

    /// The role's comment when it exists: `Some(Some(marker))` for a role Sagaplane made.
    async fn role_marker(&self, role: &str) -> Result<Option<Option<String>>, TenantStorageError> {
        sqlx::query_scalar("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1")
            .bind(role)
            .fetch_optional(&self.admin)
            .await
            .map_err(backend)
    }

    /// The owner of a schema or database named `name`, when it exists.
    async fn owner_of(&self, catalog: OwnedObject, name: &str) -> Result<Option<String>, TenantStorageError> {
        let sql = match catalog {
            OwnedObject::Schema => "SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = $1",
            OwnedObject::Database => "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
        };
        sqlx::query_scalar(sql).bind(name).fetch_optional(&self.admin).await.map_err(backend)
    }

    /// Refuses a schema or database of the tenant's name that its role does not own: it was not
    /// made for this tenant, and adopting it would hand the tenant someone else's data.
    async fn refuse_foreign(
        &self,
        catalog: OwnedObject,
        name: &str,
        tenant_id: &str,
    ) -> Result<(), TenantStorageError> {
        match self.owner_of(catalog, name).await? {
            Some(owner) if owner != name => Err(TenantStorageError::Foreign(format!(
                "a {} named {name} exists, owned by {owner}, that Sagaplane did not make for tenant {tenant_id}; \
                 it is left untouched",
                catalog.noun()
            ))),
            _ => Ok(()),
        }
    }

    /// Creates the tenant's login role, marked as made for `tenant_id` in the same transaction;
    /// an existing role is adopted only when it carries that mark.
    async fn ensure_role(&self, role: &str, tenant_id: &str, mode: StorageMode) -> Result<(), TenantStorageError> {
        let marker = role_marker_text(tenant_id);
        if self.role_marker(role).await?.is_none() {
            // No password: credentials are issued out of band. It is granted no memberships, so it
            // has exactly the rights on its own storage (plus, as a database's owner, PG15's
            // implicit pg_database_owner, which needs INHERIT).
            let sql = format!(
                "CREATE ROLE {role_q} LOGIN; COMMENT ON ROLE {role_q} IS {marker_q}",
                role_q = quote_ident(role),
                marker_q = quote_literal(&marker)
            );
            let mut tx = self.admin.begin().await.map_err(backend)?;
            match sqlx::Executor::execute(&mut *tx, sql.as_str()).await {
                Ok(_) => tx.commit().await.map_err(backend)?,
                // Made concurrently (by another attempt of this tenant's saga, or by someone else).
                Err(e) if is_code(&e, &["42710", "23505"]) => {}
                Err(e) => return Err(backend(e)),
            }
        }
        match self.role_marker(role).await? {
            Some(Some(found)) if found == marker => {}
            _ => {
                return Err(TenantStorageError::Foreign(format!(
                "a role named {role} exists that Sagaplane did not make for tenant {tenant_id}; it is left untouched"
            )))
            }
        }
        // A silo tenant's database is reached as its owner (see the module's note).
        if mode == StorageMode::Database {
            sqlx::raw_sql(&format!("GRANT {} TO CURRENT_USER", quote_ident(role)))
                .execute(self.admin.pool())
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    /// The tenant's migration role: a login role whose only membership is the tenant's role,
    /// marked like it. No password until a migration logs in.
    async fn ensure_migrator(
        &self,
        role: &str,
        tenant_id: &str,
        mode: StorageMode,
    ) -> Result<String, TenantStorageError> {
        let migrator = migrator_name(tenant_id);
        let marker = role_marker_text(tenant_id);
        if self.role_marker(&migrator).await?.is_none() {
            let sql = format!(
                "CREATE ROLE {m} LOGIN; COMMENT ON ROLE {m} IS {marker_q}; GRANT {role_q} TO {m}",
                m = quote_ident(&migrator),
                marker_q = quote_literal(&marker),
                role_q = quote_ident(role)
            );
            let mut tx = self.admin.begin().await.map_err(backend)?;
            match sqlx::Executor::execute(&mut *tx, sql.as_str()).await {
                Ok(_) => tx.commit().await.map_err(backend)?,
                Err(e) if is_code(&e, &["42710", "23505"]) => {}
                Err(e) => return Err(backend(e)),
            }
        }
        match self.role_marker(&migrator).await? {
            Some(Some(found)) if found == marker => {}
            _ => {
                return Err(TenantStorageError::Foreign(format!(
                "a role named {migrator} exists that Sagaplane did not make for tenant {tenant_id}; it is left untouched"
            )))
            }
        }
        // The admin may end the migration role's sessions in a silo tenant's database: `DROP
        // DATABASE … WITH (FORCE)` must, and a transaction pooler keeps them open on its side
        // long after a migration.
        if mode == StorageMode::Database {
            sqlx::raw_sql(&format!("GRANT {} TO CURRENT_USER", quote_ident(&migrator)))
                .execute(self.admin.pool())
                .await
                .map_err(backend)?;
        }
        Ok(migrator)
    }

    /// Applies `migrations` in `schema` of `database` (`None`: the admin's) on a session logged
    /// in as the tenant's migration role `migrator` (made by [`Self::ensure_migrator`]), one
    /// migration of a tenant at a time: on the session the tenant's previous migration handed
    /// on, else a new login. The session is handed on in turn when the tenant's next migration
    /// is already waiting, else closed; after a failure it is always closed.
    #[allow(clippy::too_many_arguments)]
    async fn migrate_as_tenant(
        &self,
        tenant_id: &str,
        migrator: &str,
        database: Option<&str>,
        schema: &str,
        table: &str,
        migrations: &[Migration],
        now_ms: i64,
    ) -> Result<Vec<AppliedMigration>, TenantStorageError> {
        let mut slot = self.logins.lock(tenant_id).await;
        let mut session = match slot.guarded().take() {
            Some(parked) if parked.database.as_deref() == database => parked.session,
            other => {
                if let Some(parked) = other {
                    parked.session.close().await;
                }
                self.login(migrator, database).await?
            }
        };
        let role = tenant_object_name(tenant_id);
        let applied = async {
            adopt_old_records(&mut session, schema, table).await?;
            apply_in(&mut session, schema, Some(&role), table, migrations, now_ms).await
        }
        .await;
        if applied.is_ok() && slot.awaited() {
            *slot.guarded() = Some(ParkedSession { database: database.map(str::to_string), session });
        } else {
            session.close().await;
        }
        applied
    }

    /// A new session logged in as `migrator` in `database`: its password is set for this login
    /// only and cleared once the session is open (the caller holds the tenant's lock).
    async fn login(&self, migrator: &str, database: Option<&str>) -> Result<TenantSession, TenantStorageError> {
        let password = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let secret = scram_secret(&password, uuid::Uuid::new_v4().as_bytes());
        // VALID UNTIL takes a literal, so the statement is built in SQL, where the clock is.
        let set = format!(
            "DO $sp$ BEGIN EXECUTE format('ALTER ROLE %I LOGIN PASSWORD %L VALID UNTIL %L', {m}, {p}, \
             now() + make_interval(secs => {MIGRATOR_PASSWORD_VALID_S})); END $sp$",
            m = quote_literal(migrator),
            p = quote_literal(&secret),
        );
        sqlx::raw_sql(&set).execute(self.admin.pool()).await.map_err(backend)?;
        let mut options = self.options.clone().username(migrator).password(&password);
        if let Some(database) = database {
            options = options.database(database);
        }
        let session = self.session(&options).await;
        let clear = format!("ALTER ROLE {} PASSWORD NULL", quote_ident(migrator));
        sqlx::raw_sql(&clear).execute(self.admin.pool()).await.map_err(backend)?;
        let session = session.map_err(|e| {
            TenantStorageError::Backend(format!(
                "cannot log in as the tenant's migration role {migrator} ({e}); tenant migrations run as the tenant, \
                 so PostgreSQL must accept password logins for it on the host and port of SAGAPLANE_TENANT_DATABASE_URL"
            ))
        })?;
        Ok(session)
    }

    /// The admin-owned table recording a tenant's migrations (in the admin's connection's
    /// database), readable and appendable by the migration role only. The schema is made once;
    /// `USAGE` on it is everyone's (it only resolves names — every table in it has its own
    /// grants), so provisionings never queue on one catalog row to grant it.
    async fn ensure_bookkeeping(
        conn: &mut PgConnection,
        table_name: &str,
        migrator: &str,
    ) -> Result<String, TenantStorageError> {
        let schema = quote_ident(BOOKKEEPING_SCHEMA);
        let table = format!("{schema}.{}", quote_ident(table_name));
        let m = quote_ident(migrator);
        // Made and granted already (every migration after the storage's creation): read, not
        // written again — a repeated GRANT still rewrites the table's catalog row, and every
        // session then drops its cached copy.
        let ready: bool = simple_scalar(
            &mut *conn,
            &format!(
                "SELECT to_regclass({t}) IS NOT NULL AND has_table_privilege({ml}, to_regclass({t}), 'SELECT') \
                 AND has_table_privilege({ml}, to_regclass({t}), 'INSERT')",
                t = quote_literal(&table),
                ml = quote_literal(migrator),
            ),
        )
        .await?;
        if ready {
            return Ok(table);
        }
        let exists: bool = simple_scalar(
            &mut *conn,
            &format!("SELECT to_regnamespace({}) IS NOT NULL", quote_literal(BOOKKEEPING_SCHEMA)),
        )
        .await?;
        if !exists {
            let sql = format!(
                "{SAFE_SEARCH_PATH} CREATE SCHEMA IF NOT EXISTS {schema}; REVOKE ALL ON SCHEMA {schema} FROM PUBLIC; \
                 GRANT USAGE ON SCHEMA {schema} TO PUBLIC;"
            );
            match sqlx::Executor::execute(&mut *conn, sql.as_str()).await {
                Ok(_) => {}
                // Two tenants' first provisionings race on it; the loser's work exists.
                Err(e) if is_code(&e, &["42P06", "23505", "XX000"]) => {}
                Err(e) => return Err(backend(e)),
            }
        }
        let sql = format!(
            "{SAFE_SEARCH_PATH} CREATE TABLE IF NOT EXISTS {table} ( \
               service TEXT NOT NULL, version BIGINT NOT NULL, name TEXT NOT NULL, checksum TEXT NOT NULL, \
               applied_at BIGINT NOT NULL, PRIMARY KEY (service, version)); \
             GRANT SELECT, INSERT ON {table} TO {m};"
        );
        match sqlx::Executor::execute(&mut *conn, sql.as_str()).await {
            Ok(_) => Ok(table),
            Err(e) if is_code(&e, &["42P07", "23505"]) => {
                let grant = format!("{SAFE_SEARCH_PATH} GRANT SELECT, INSERT ON {table} TO {m};");
                sqlx::Executor::execute(&mut *conn, grant.as_str()).await.map_err(backend)?;
                Ok(table)
            }
            Err(e) => Err(backend(e)),
        }
    }

    async fn drop_role(&self, role: &str, tenant_id: &str) -> Result<(), TenantStorageError> {
        match self.role_marker(role).await? {
            None => return Ok(()),
            Some(Some(found)) if found == role_marker_text(tenant_id) => {}
            // Unmarked, or marked for another tenant: someone else's role of this name (a
            // provisioning of this tenant refused it). Never ours to drop, nor what it owns.
            Some(_) => {
                tracing::warn!(role, tenant_id, "not dropping a role Sagaplane did not make for this tenant");
                return Ok(());
            }
        }
        // The migration role first (it holds grants on the bookkeeping), then the tenant's.
        let migrator = migrator_name(tenant_id);
        if let Some(Some(found)) = self.role_marker(&migrator).await? {
            if found == role_marker_text(tenant_id) {
                // It owns nothing; its one grant outside the tenant's storage was on its record
                // table, dropped with the storage (PostgreSQL 15 gives its creator no membership
                // for DROP OWNED).
                let drop = format!("DROP ROLE IF EXISTS {}", quote_ident(&migrator));
                sqlx::raw_sql(&drop).execute(self.admin.pool()).await.map_err(backend)?;
            }
        }
        // Privileges it was granted on shared objects go with it; the membership `DROP OWNED`
        // needs goes with the role, in the same transaction.
        let drop = format!(
            "GRANT {role_q} TO CURRENT_USER; DROP OWNED BY {role_q}; DROP ROLE {role_q};",
            role_q = quote_ident(role)
        );
        match sqlx::raw_sql(&drop).execute(self.admin.pool()).await {
            Ok(_) => Ok(()),
            Err(e) if is_code(&e, &["42704"]) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    async fn database_connection(&self, database: &str) -> Result<TenantSession, TenantStorageError> {
        self.session(&self.options.clone().database(database)).await.map_err(backend)
    }

    async fn create_pooled_schema(&self) -> Result<(), TenantStorageError> {
        let sql = format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; \
             REVOKE ALL ON SCHEMA {schema} FROM PUBLIC; \
             CREATE TABLE IF NOT EXISTS {schema}.sagaplane_migrations ( \
               service TEXT NOT NULL, version BIGINT NOT NULL, name TEXT NOT NULL, checksum TEXT NOT NULL, \
               applied_at BIGINT NOT NULL, PRIMARY KEY (service, version));",
            schema = quote_ident(POOLED_SCHEMA)
        );
        match sqlx::raw_sql(&sql).execute(self.admin.pool()).await {
            Ok(_) => Ok(()),
            // Two tenants provisioning at once race on the catalog; the loser's work exists.
            Err(e) if is_code(&e, &["42P06", "42P07", "23505"]) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    /// Row-level security on every shared table with a `tenant_id` column, and the tenant
    /// role's rights on them. Re-run after each pooled migration (new tables).
    async fn secure_pooled_tables(&self, role: &str) -> Result<(), TenantStorageError> {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname <> 'sagaplane_migrations' \
               AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' \
                           AND NOT a.attisdropped)",
        )
        .bind(POOLED_SCHEMA)
        .fetch_all(&self.admin)
        .await
        .map_err(backend)?;
        let schema = quote_ident(POOLED_SCHEMA);
        let role_q = quote_ident(role);
        for table in &tables {
            let qualified = format!("{schema}.{}", quote_ident(table));
            let has_policy: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = $1 AND tablename = $2 \
                                AND policyname = 'tenant_isolation')",
            )
            .bind(POOLED_SCHEMA)
            .bind(table)
            .fetch_one(&self.admin)
            .await
            .map_err(backend)?;
            if has_policy {
                continue;
            }
            // The setting picks the tenant; the role must be that tenant's. Its own statement: a
            // concurrent provisioning may create the same policy first (42710), which is fine.
            let condition = format!(
                "tenant_id = current_setting({setting}, true) AND current_user = {role_of_row}",
                setting = quote_literal(TENANT_SETTING),
                role_of_row = ROLE_OF_ROW_SQL
            );
            let sql = format!(
                "ALTER TABLE {qualified} ENABLE ROW LEVEL SECURITY; \
                 CREATE POLICY tenant_isolation ON {qualified} USING ({condition}) WITH CHECK ({condition});"
            );
            match sqlx::raw_sql(&sql).execute(self.admin.pool()).await {
                Ok(_) => {}
                Err(e) if is_code(&e, &["42710"]) => {}
                Err(e) => return Err(backend(e)),
            }
        }
        // The grants always run (never skipped with a policy that already existed).
        self.admit(role).await?;
        let mut grants = format!("GRANT USAGE ON SCHEMA {schema} TO {role_q};");
        for table in &tables {
            grants.push_str(&format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.{} TO {role_q};",
                quote_ident(table)
            ));
        }
        sqlx::raw_sql(&grants).execute(self.admin.pool()).await.map_err(backend)?;
        Ok(())
    }
}

/// Applies what is not yet recorded in `table`, one transaction per file (as `role` when given),
/// in `search_path` = `schema`. The record is inserted first: a second driver of the same tenant
/// inserting the same one waits on it, then finds it applied.
async fn apply_in(
    conn: &mut PgConnection,
    schema: &str,
    role: Option<&str>,
    table: &str,
    migrations: &[Migration],
    now_ms: i64,
) -> Result<Vec<AppliedMigration>, TenantStorageError> {
    let mut sorted: Vec<&Migration> = migrations.iter().collect();
    sorted.sort_by(|a, b| (&a.service, a.version).cmp(&(&b.service, b.version)));
    for migration in sorted {
        let file = migration.file_name();
        let mut tx = conn.begin().await.map_err(backend)?;
        let applied = recorded_checksum(&mut tx, table, migration).await?;
        if migration.is_applied(applied.as_deref())? {
            continue;
        }
        let recorded = sqlx::query(&format!(
            "INSERT INTO {table} (service, version, name, checksum, applied_at) VALUES ($1, $2, $3, $4, $5)"
        ))
        .bind(&migration.service)
        .bind(migration.version)
        .bind(&migration.name)
        .bind(&migration.checksum)
        .bind(now_ms)
        // Unnamed: this session may be a transaction pooler's, whose servers are shared.
        .persistent(false)
        .execute(&mut *tx)
        .await;
        match recorded {
            Ok(_) => {}
            // Applied meanwhile by another driver of this tenant: check it is this very file.
            Err(e) if is_code(&e, &["23505"]) => {
                drop(tx);
                let applied = recorded_checksum(&mut *conn, table, migration).await?;
                migration.is_applied(applied.as_deref())?;
                continue;
            }
            Err(e) => return Err(backend(e)),
        }
        let mut prepare = format!("SET LOCAL search_path = {}, pg_catalog, pg_temp;", quote_ident(schema));
        if let Some(role) = role {
            prepare.push_str(&format!("SET LOCAL ROLE {};", quote_ident(role)));
        }
        sqlx::Executor::execute(&mut *tx, prepare.as_str()).await.map_err(backend)?;
        sqlx::Executor::execute(&mut *tx, migration.sql.as_str())
            .await
            .map_err(|e| migration_error(&migration.service, &file, e))?;
        tx.commit().await.map_err(|e| migration_error(&migration.service, &file, e))?;
    }
    let select = format!("SELECT service, version, name, checksum, applied_at FROM {table} ORDER BY service, version");
    let rows = simple_rows(&mut *conn, &select).await.map_err(backend)?;
    rows.iter()
        .map(|row| {
            Ok(AppliedMigration {
                service: row.try_get("service").map_err(backend)?,
                version: row.try_get("version").map_err(backend)?,
                name: row.try_get("name").map_err(backend)?,
                checksum: row.try_get("checksum").map_err(backend)?,
                applied_at_ms: row.try_get("applied_at").map_err(backend)?,
            })
        })
        .collect()
}

/// The checksum recorded for `migration` in `table`, if it was applied.
async fn recorded_checksum(
    conn: &mut PgConnection,
    table: &str,
    migration: &Migration,
) -> Result<Option<String>, TenantStorageError> {
    let sql = format!(
        "SELECT checksum FROM {table} WHERE service = {} AND version = {}",
        quote_literal(&migration.service),
        migration.version
    );
    let rows = simple_rows(&mut *conn, &sql).await.map_err(backend)?;
    rows.first().map(|row| row.try_get(0)).transpose().map_err(backend)
}

/// Prefixed to the statements the admin and migration sessions send outside a migration: names
/// resolve in `pg_catalog` only, for the one implicit transaction of that simple query — never a
/// session-level `SET`, which behind a transaction pooler would reach other clients' statements.
const SAFE_SEARCH_PATH: &str = "SET LOCAL search_path = pg_catalog, pg_temp;";

/// The rows of a simple-protocol query (run with [`SAFE_SEARCH_PATH`]): no parameters, so no
/// prepared statement — safe on a session that a transaction pooler may move between servers.
fn simple_rows<'c>(
    conn: &'c mut PgConnection,
    sql: &'c str,
) -> futures::future::BoxFuture<'c, Result<Vec<sqlx::postgres::PgRow>, sqlx::Error>> {
    let sql = format!("{SAFE_SEARCH_PATH} {sql}");
    Box::pin(async move { sqlx::Executor::fetch_all(conn, sql.as_str()).await })
}

/// One value from a simple-protocol query (see [`simple_rows`]).
async fn simple_scalar<T>(conn: &mut PgConnection, sql: &str) -> Result<T, TenantStorageError>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    let rows = simple_rows(conn, sql).await.map_err(backend)?;
    let row = rows.first().ok_or_else(|| TenantStorageError::Backend(format!("no row from {sql}")))?;
    row.try_get(0).map_err(backend)
}

/// Records kept by earlier releases in the tenant's own `sagaplane_migrations` (in `schema`)
/// are carried over once, read with the migration role's (the tenant's) rights.
async fn adopt_old_records(conn: &mut PgConnection, schema: &str, table: &str) -> Result<(), TenantStorageError> {
    let old = format!("{}.sagaplane_migrations", quote_ident(schema));
    let exists: bool =
        simple_scalar(&mut *conn, &format!("SELECT to_regclass({}) IS NOT NULL", quote_literal(&old))).await?;
    if !exists {
        return Ok(());
    }
    let empty: bool = simple_scalar(&mut *conn, &format!("SELECT NOT EXISTS (SELECT 1 FROM {table})")).await?;
    if empty {
        let copy = format!(
            "INSERT INTO {table} (service, version, name, checksum, applied_at) \
             SELECT service, version, name, checksum, applied_at FROM {old} ON CONFLICT DO NOTHING"
        );
        sqlx::Executor::execute(&mut *conn, copy.as_str()).await.map_err(backend)?;
    }
    Ok(())
}

#[async_trait]
impl TenantStorage for PgTenantStorage {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    fn supports(&self, _mode: StorageMode) -> bool {
        true
    }

    async fn storage_create(&self, tenant_id: &str, mode: StorageMode) -> Result<Value, TenantStorageError> {
        let name = tenant_object_name(tenant_id);
        self.ensure_role(&name, tenant_id, mode).await?;
        match mode {
            StorageMode::Schema => {
                self.refuse_foreign(OwnedObject::Schema, &name, tenant_id).await?;
                let sql = as_member_of(
                    &name,
                    &format!(
                        "CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {role}; \
                         REVOKE ALL ON SCHEMA {schema} FROM PUBLIC;",
                        schema = quote_ident(&name),
                        role = quote_ident(&name),
                    ),
                );
                let mut tx = self.admin.begin().await.map_err(backend)?;
                match sqlx::Executor::execute(&mut *tx, sql.as_str()).await {
                    Ok(_) => tx.commit().await.map_err(backend)?,
                    Err(e) if is_code(&e, &["42P06", "42P07", "23505"]) => {}
                    Err(e) => return Err(backend(e)),
                }
                self.admit(&name).await?;
                let migrator = self.ensure_migrator(&name, tenant_id, mode).await?;
                let mut conn = self.admin.pool().acquire().await.map_err(backend)?;
                Self::ensure_bookkeeping(&mut conn, &name, &migrator).await?;
                Ok(json!({"backend": "postgres", "location": format!("schema {name}")}))
            }
            StorageMode::Database => {
                self.refuse_foreign(OwnedObject::Database, &name, tenant_id).await?;
                let exists = self.owner_of(OwnedObject::Database, &name).await?.is_some();
                if !exists {
                    let created = sqlx::raw_sql(&format!(
                        "CREATE DATABASE {db} OWNER {role}",
                        db = quote_ident(&name),
                        role = quote_ident(&name)
                    ))
                    .execute(self.admin.pool())
                    .await;
                    match created {
                        Ok(_) => {}
                        Err(e) if is_code(&e, &["42P04", "23505"]) => {}
                        Err(e) => return Err(backend(e)),
                    }
                }
                sqlx::raw_sql(&format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", quote_ident(&name)))
                    .execute(self.admin.pool())
                    .await
                    .map_err(backend)?;
                let migrator = self.ensure_migrator(&name, tenant_id, mode).await?;
                let mut conn = self.database_connection(&name).await?;
                let made = Self::ensure_bookkeeping(&mut conn, "migrations", &migrator).await;
                // Closed, not dropped: a session left to linger in the tenant's database would
                // stand in the way of dropping it.
                conn.close().await;
                made?;
                Ok(json!({"backend": "postgres", "location": format!("database {name}")}))
            }
            StorageMode::Pooled => {
                self.create_pooled_schema().await?;
                self.secure_pooled_tables(&name).await?;
                Ok(
                    json!({"backend": "postgres", "location": format!("pooled schema {POOLED_SCHEMA}, tenant_id {tenant_id}")}),
                )
            }
        }
    }

    async fn storage_drop(&self, tenant_id: &str, mode: StorageMode) -> Result<(), TenantStorageError> {
        let name = tenant_object_name(tenant_id);
        // A schema or database is the tenant's only when its owner is the role Sagaplane made
        // and marked for this tenant: an unmarked role of the name (and what it owns) is not.
        let ours = self.role_marker(&name).await? == Some(Some(role_marker_text(tenant_id)));
        match mode {
            StorageMode::Schema | StorageMode::Database if !ours => {
                tracing::warn!(role = %name, tenant_id, "not dropping storage whose owner Sagaplane did not make for this tenant");
            }
            StorageMode::Schema if self.refuse_foreign(OwnedObject::Schema, &name, tenant_id).await.is_err() => {
                tracing::warn!(schema = %name, tenant_id, "not dropping a schema this tenant's role does not own");
            }
            StorageMode::Database if self.refuse_foreign(OwnedObject::Database, &name, tenant_id).await.is_err() => {
                tracing::warn!(database = %name, tenant_id, "not dropping a database this tenant's role does not own");
            }
            StorageMode::Schema => {
                let drop = as_member_of(
                    &name,
                    &format!(
                        "DROP SCHEMA IF EXISTS {schema} CASCADE; DROP TABLE IF EXISTS {records}.{schema};",
                        schema = quote_ident(&name),
                        records = quote_ident(BOOKKEEPING_SCHEMA)
                    ),
                );
                sqlx::raw_sql(&drop).execute(self.admin.pool()).await.map_err(backend)?;
            }
            StorageMode::Database => {
                // A session that is still closing can make the forced drop fail for a moment
                // (42501: not allowed to terminate it); it is gone within milliseconds.
                let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&name));
                let mut tries = 0;
                loop {
                    match sqlx::raw_sql(&drop).execute(self.admin.pool()).await {
                        Ok(_) => break,
                        Err(e) if is_code(&e, &["42501"]) && tries < DROP_RETRIES_MAX => {
                            tries += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        Err(e) => return Err(backend(e)),
                    }
                }
            }
            StorageMode::Pooled => {
                // The tenant's rows in every shared table, then its rights.
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relkind = 'r' \
                       AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' \
                                   AND NOT a.attisdropped)",
                )
                .bind(POOLED_SCHEMA)
                .fetch_all(&self.admin)
                .await
                .map_err(backend)?;
                for table in tables {
                    sqlx::query(&format!(
                        "DELETE FROM {}.{} WHERE tenant_id = $1",
                        quote_ident(POOLED_SCHEMA),
                        quote_ident(&table)
                    ))
                    .bind(tenant_id)
                    .execute(&self.admin)
                    .await
                    .map_err(backend)?;
                }
            }
        }
        self.drop_role(&name, tenant_id).await
    }

    async fn migrations_apply(
        &self,
        tenant_id: &str,
        mode: StorageMode,
        migrations: &[Migration],
        now_ms: i64,
    ) -> Result<Vec<AppliedMigration>, TenantStorageError> {
        let name = tenant_object_name(tenant_id);
        match mode {
            StorageMode::Schema => {
                let migrator = self.ensure_migrator(&name, tenant_id, mode).await?;
                let table = {
                    let mut admin = self.admin.pool().acquire().await.map_err(backend)?;
                    Self::ensure_bookkeeping(&mut admin, &name, &migrator).await?
                };
                self.migrate_as_tenant(tenant_id, &migrator, None, &name, &table, migrations, now_ms).await
            }
            StorageMode::Database => {
                let migrator = self.ensure_migrator(&name, tenant_id, mode).await?;
                let table = {
                    let mut admin = self.database_connection(&name).await?;
                    let table = Self::ensure_bookkeeping(&mut admin, "migrations", &migrator).await;
                    admin.close().await;
                    table?
                };
                self.migrate_as_tenant(tenant_id, &migrator, Some(&name), "public", &table, migrations, now_ms).await
            }
            StorageMode::Pooled => {
                // Shared tables: migrated once for every pooled tenant, by the admin (owner).
                let mut conn = self.admin.pool().acquire().await.map_err(backend)?;
                let table = format!("{}.sagaplane_migrations", quote_ident(POOLED_SCHEMA));
                let applied = apply_in(&mut conn, POOLED_SCHEMA, None, &table, migrations, now_ms).await?;
                drop(conn);
                self.secure_pooled_tables(&name).await?;
                Ok(applied)
            }
        }
    }

    async fn access_set(&self, tenant_id: &str, _mode: StorageMode, enabled: bool) -> Result<(), TenantStorageError> {
        let name = tenant_object_name(tenant_id);
        let login = if enabled { "LOGIN" } else { "NOLOGIN" };
        match sqlx::raw_sql(&format!("ALTER ROLE {} {login}", quote_ident(&name))).execute(self.admin.pool()).await {
            Ok(_) => Ok(()),
            // No role (storage never created or already dropped): nothing to allow or stop.
            Err(e) if is_code(&e, &["42704"]) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::TenantLocks;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_login_of_a_tenant_at_a_time_and_nothing_kept_after() {
        let locks = Arc::new(TenantLocks::<()>::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (locks, inside, most) = (locks.clone(), inside.clone(), most.clone());
                tokio::spawn(async move {
                    let _held = locks.lock("acme").await;
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        // Another tenant is not held up behind them.
        drop(locks.lock("globex").await);
        for task in tasks {
            task.await.expect("task");
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "two logins of one tenant overlapped");
        assert!(locks.0.lock().expect("map").is_empty(), "a tenant's lock outlived its holders");
    }

    /// What a holder leaves for a waiter reaches it; with nobody waiting, it is gone with the
    /// lock (a migration session is handed on only to a migration already queued behind).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_holder_hands_on_only_to_a_waiter() {
        let locks = Arc::new(TenantLocks::<Option<u32>>::default());
        let mut first = locks.lock("acme").await;
        assert!(!first.awaited(), "nobody waits yet");
        let waiter = tokio::spawn({
            let locks = locks.clone();
            async move { locks.lock("acme").await.guarded().take() }
        });
        while !first.awaited() {
            tokio::task::yield_now().await;
        }
        *first.guarded() = Some(7);
        drop(first);
        assert_eq!(waiter.await.expect("waiter"), Some(7), "the waiter got what was handed on");
        assert!(locks.0.lock().expect("map").is_empty(), "kept after its last holder");
        let mut alone = locks.lock("acme").await;
        assert_eq!(alone.guarded().take(), None, "nothing outlives the lock");
    }
}
