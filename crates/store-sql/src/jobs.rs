//! Bulk jobs' statements, the same in both dialects: a selection turned into a `WHERE`, the job
//! written with the ids it matched, its items counted and marked, and the delivery actions that
//! mark their item in the transaction that acts. [`item_done`] is what the engine's operator
//! writes run inside their own transactions when they carry a [`JobMark`].

use saga_store::{
    DeliveryAction, DeliverySelection, JobCreate, JobItemError, JobKind, JobMark, JobRecord, JobStatus, SagaSelection,
    Selection, StoreError, StoreResult, JOB_ERRORS_SHOWN,
};
use sqlx::{Database, Executor};
use uuid::Uuid;

use crate::{column, Dialect, Sql};

/// One value bound to a selection's placeholder.
#[derive(Clone, Debug)]
pub(crate) enum Arg {
    Text(String),
    Int4(u32),
    Int8(i64),
    Uuid(Uuid),
}

/// A selection as a `WHERE` clause (placeholders from `$first`) over its table, and its values.
pub(crate) struct Clause {
    pub(crate) table: &'static str,
    pub(crate) sql: String,
    pub(crate) args: Vec<Arg>,
    next: usize,
}

impl Clause {
    fn new(table: &'static str, first: usize) -> Self {
        Clause { table, sql: "TRUE".into(), args: Vec::new(), next: first }
    }

    /// Adds `<left> <operator> $n` bound to `arg`.
    /// Ends the clause with a page: newest first, at most `limit` rows.
    pub(crate) fn newest_first(&mut self, limit: u32) {
        self.sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", self.next));
        self.next += 1;
        self.args.push(Arg::Int8(i64::from(limit)));
    }

    pub(crate) fn push(&mut self, left: &str, operator: &str, arg: Arg) {
        self.sql.push_str(&format!(" AND {left} {operator} ${}", self.next));
        self.next += 1;
        self.args.push(arg);
    }

    fn of(selection: &Selection, first: usize) -> Self {
        match selection {
            Selection::Sagas(sagas) => Self::sagas(sagas, first),
            Selection::Deliveries(deliveries) => Self::deliveries(deliveries, first),
        }
    }

    fn sagas(selection: &SagaSelection, first: usize) -> Self {
        let mut clause = Clause::new("sagas", first);
        if let Some(definition) = &selection.definition {
            clause.push("definition", "=", Arg::Text(definition.clone()));
        }
        if let Some(version) = selection.version {
            clause.push("version", "=", Arg::Int4(version));
        }
        if !selection.statuses.is_empty() {
            let mut placeholders = Vec::new();
            for status in &selection.statuses {
                placeholders.push(format!("${}", clause.next));
                clause.next += 1;
                clause.args.push(Arg::Text(status.as_str().to_string()));
            }
            clause.sql.push_str(&format!(" AND status IN ({})", placeholders.join(", ")));
        }
        if let Some(tenant) = &selection.tenant_id {
            clause.push("tenant_id", "=", Arg::Text(tenant.clone()));
        }
        clause.times("created_at", selection.created_after_ms, selection.created_before_ms);
        clause.times("updated_at", selection.updated_after_ms, selection.updated_before_ms);
        if let Some(needle) = &selection.error_contains {
            // `->` and `->>` read JSON alike in both dialects (SQLite since 3.38).
            clause.sql.push_str(&format!(" AND lower(state->'error'->>'message') LIKE ${} ESCAPE '\\'", clause.next));
            clause.next += 1;
            clause.args.push(Arg::Text(like_pattern(needle)));
        }
        clause
    }

    pub(crate) fn deliveries(selection: &DeliverySelection, first: usize) -> Self {
        let mut clause = Clause::new("deliveries", first);
        if let Some(subscription) = selection.subscription_id {
            clause.push("subscription_id", "=", Arg::Uuid(subscription));
        }
        if let Some(status) = selection.status {
            clause.push("status", "=", Arg::Text(status.as_str().to_string()));
        }
        if let Some(tenant) = &selection.subscription_tenant_id {
            clause.sql.push_str(&format!(
                " AND subscription_id IN (SELECT id FROM subscriptions WHERE tenant_id = ${})",
                clause.next
            ));
            clause.next += 1;
            clause.args.push(Arg::Text(tenant.clone()));
        }
        clause.times("created_at", selection.created_after_ms, selection.created_before_ms);
        clause
    }

    fn times(&mut self, column: &str, after_ms: Option<i64>, before_ms: Option<i64>) {
        if let Some(after) = after_ms {
            self.push(column, ">", Arg::Int8(after));
        }
        if let Some(before) = before_ms {
            self.push(column, "<", Arg::Int8(before));
        }
    }
}

/// `%needle%` for `LIKE … ESCAPE '\'`, lowercased, its own `%`, `_` and `\` taken literally.
fn like_pattern(needle: &str) -> String {
    let mut pattern = String::from("%");
    for c in needle.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

pub(crate) type Query<'q, D> =
    sqlx::query::Query<'q, <D as Dialect>::Db, <<D as Dialect>::Db as Database>::Arguments<'q>>;

pub(crate) fn bind<'q, D: Dialect>(mut query: Query<'q, D>, args: &[Arg]) -> Query<'q, D>
where
    for<'a> String: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> i64: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
{
    for arg in args {
        query = match arg {
            Arg::Text(text) => query.bind(text.clone()),
            Arg::Int4(value) => query.bind(D::int4(*value)),
            Arg::Int8(value) => query.bind(*value),
            Arg::Uuid(id) => query.bind(D::uuid(*id)),
        };
    }
    query
}

/// Marks a job's pending item done, inside the transaction that acts on it;
/// [`StoreError::Conflict`] when it is no longer pending (the caller rolls back).
pub async fn item_done<D: Dialect>(
    connection: &mut <D::Db as Database>::Connection,
    mark: &JobMark,
    now_ms: i64,
) -> StoreResult<()>
where
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
    for<'q> i64: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
{
    let done = sqlx::query(
        "UPDATE sagaplane_job_items SET state = 'done', finished_at = $3 \
         WHERE job_id = $1 AND item_id = $2 AND state = 'pending'",
    )
    .bind(D::uuid(mark.job_id))
    .bind(D::uuid(mark.item_id))
    .bind(now_ms)
    .execute(&mut *connection)
    .await
    .map_err(D::error)?;
    if D::rows_affected(&done) == 0 {
        return Err(StoreError::Conflict(format!("job {} has no pending item {}", mark.job_id, mark.item_id)));
    }
    Ok(())
}

const JOB_COLUMNS: &str = "id, kind, action, status, filter, arguments, tenant_id, matched, created_at, finished_at";

impl<D: Dialect> Sql<'_, D>
where
    for<'c> &'c D::Pool: Executor<'c, Database = D::Db>,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
    for<'q> &'q str: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> String: sqlx::Encode<'q, D::Db> + sqlx::Decode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> Option<String>: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> Option<D::Json>: sqlx::Encode<'q, D::Db>,
    for<'q> i64: sqlx::Encode<'q, D::Db> + sqlx::Decode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'s> &'s str: sqlx::ColumnIndex<<D::Db as Database>::Row>,
{
    pub async fn selection_count(&self, selection: &Selection) -> StoreResult<u64> {
        let clause = Clause::of(selection, 1);
        let sql = format!("SELECT count(*) AS n FROM {} WHERE {}", clause.table, clause.sql);
        let row = bind::<D>(sqlx::query(&sql), &clause.args).fetch_one(self.read).await.map_err(D::error)?;
        Ok(u64::try_from(column::<D, i64>(&row, "n")?).unwrap_or(0))
    }

    pub async fn job_create(&self, create: &JobCreate, items_max: u64) -> StoreResult<JobRecord> {
        let mut tx = D::begin(self.write).await.map_err(D::error)?;
        sqlx::query(
            "INSERT INTO sagaplane_jobs (id, kind, action, status, filter, arguments, tenant_id, matched, created_at) \
             VALUES ($1, $2, $3, 'running', $4, $5, $6, 0, $7)",
        )
        .bind(D::uuid(create.id))
        .bind(create.selection.kind().as_str())
        .bind(create.action.as_str())
        .bind(D::json(&create.filter)?)
        .bind(create.arguments.as_ref().map(D::json).transpose()?)
        .bind(create.tenant_id.clone())
        .bind(create.now_ms)
        .execute(&mut *tx)
        .await
        .map_err(D::error)?;
        let clause = Clause::of(&create.selection, 3);
        let sql = format!(
            "INSERT INTO sagaplane_job_items (job_id, item_id) SELECT $1, id FROM {} WHERE {} LIMIT $2",
            clause.table, clause.sql
        );
        let limit = i64::try_from(items_max).unwrap_or(i64::MAX - 1) + 1;
        let query = sqlx::query(&sql).bind(D::uuid(create.id)).bind(limit);
        let inserted = bind::<D>(query, &clause.args).execute(&mut *tx).await.map_err(D::error)?;
        let matched = D::rows_affected(&inserted);
        if matched > items_max {
            return Err(StoreError::Conflict(format!(
                "the filter matches more than {items_max}; narrow it (for example with created_before)"
            )));
        }
        sqlx::query("UPDATE sagaplane_jobs SET matched = $2 WHERE id = $1")
            .bind(D::uuid(create.id))
            .bind(i64::try_from(matched).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(D::error)?;
        tx.commit().await.map_err(D::error)?;
        self.job_get(create.id).await
    }

    pub async fn job_get(&self, id: Uuid) -> StoreResult<JobRecord> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM sagaplane_jobs WHERE id = $1"))
            .bind(D::uuid(id))
            .fetch_optional(self.read)
            .await
            .map_err(D::error)?
            .ok_or(StoreError::NotFound)?;
        let mut job = job::<D>(&row)?;
        let counts = sqlx::query(
            "SELECT state, count(*) AS n FROM sagaplane_job_items WHERE job_id = $1 AND state <> 'pending' \
             GROUP BY state",
        )
        .bind(D::uuid(id))
        .fetch_all(self.read)
        .await
        .map_err(D::error)?;
        for count in &counts {
            let n = u64::try_from(column::<D, i64>(count, "n")?).unwrap_or(0);
            match column::<D, String>(count, "state")?.as_str() {
                "done" => job.done = n,
                "failed" => job.failed = n,
                other => return Err(StoreError::Corrupt(format!("a job item in state {other:?}"))),
            }
        }
        if job.failed > 0 {
            let failed = sqlx::query(
                "SELECT item_id, error FROM sagaplane_job_items WHERE job_id = $1 AND state = 'failed' \
                 ORDER BY item_id LIMIT $2",
            )
            .bind(D::uuid(id))
            .bind(i64::from(JOB_ERRORS_SHOWN))
            .fetch_all(self.read)
            .await
            .map_err(D::error)?;
            for item in &failed {
                job.errors.push(JobItemError {
                    id: D::uuid_column(item, "item_id")?,
                    error: column::<D, Option<String>>(item, "error")?.unwrap_or_default(),
                });
            }
        }
        Ok(job)
    }

    pub async fn job_status(&self, id: Uuid) -> StoreResult<JobStatus> {
        let row = sqlx::query("SELECT status FROM sagaplane_jobs WHERE id = $1")
            .bind(D::uuid(id))
            .fetch_optional(self.read)
            .await
            .map_err(D::error)?
            .ok_or(StoreError::NotFound)?;
        let status: String = column::<D, _>(&row, "status")?;
        JobStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("a job {status:?}")))
    }

    pub async fn jobs_running(&self, limit: u32) -> StoreResult<Vec<Uuid>> {
        let rows = sqlx::query("SELECT id FROM sagaplane_jobs WHERE status = 'running' ORDER BY created_at LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(self.read)
            .await
            .map_err(D::error)?;
        rows.iter().map(|row| D::uuid_column(row, "id")).collect()
    }

    pub async fn job_cancel(&self, id: Uuid, now_ms: i64) -> StoreResult<JobRecord> {
        let done = sqlx::query(
            "UPDATE sagaplane_jobs SET status = 'cancelled', finished_at = $2 WHERE id = $1 AND status = 'running'",
        )
        .bind(D::uuid(id))
        .bind(now_ms)
        .execute(self.write)
        .await
        .map_err(D::error)?;
        let job = self.job_get(id).await?;
        if D::rows_affected(&done) == 0 {
            return Err(StoreError::Conflict(format!(
                "job is {}; only a running job can be cancelled",
                job.status.as_str()
            )));
        }
        Ok(job)
    }

    pub async fn job_items_pending(&self, job_id: Uuid, after: Option<Uuid>, limit: u32) -> StoreResult<Vec<Uuid>> {
        let rows = match after {
            Some(after) => sqlx::query(
                "SELECT item_id FROM sagaplane_job_items WHERE job_id = $1 AND state = 'pending' AND item_id > $2 \
                 ORDER BY item_id LIMIT $3",
            )
            .bind(D::uuid(job_id))
            .bind(D::uuid(after))
            .bind(i64::from(limit)),
            None => sqlx::query(
                "SELECT item_id FROM sagaplane_job_items WHERE job_id = $1 AND state = 'pending' \
                 ORDER BY item_id LIMIT $2",
            )
            .bind(D::uuid(job_id))
            .bind(i64::from(limit)),
        }
        .fetch_all(self.read)
        .await
        .map_err(D::error)?;
        rows.iter().map(|row| D::uuid_column(row, "item_id")).collect()
    }

    pub async fn job_item_fail(&self, mark: &JobMark, error: &str, now_ms: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE sagaplane_job_items SET state = 'failed', error = $3, finished_at = $4 \
             WHERE job_id = $1 AND item_id = $2 AND state = 'pending'",
        )
        .bind(D::uuid(mark.job_id))
        .bind(D::uuid(mark.item_id))
        .bind(error)
        .bind(now_ms)
        .execute(self.write)
        .await
        .map_err(D::error)?;
        Ok(())
    }

    pub async fn job_delivery_act(&self, mark: &JobMark, action: DeliveryAction, now_ms: i64) -> StoreResult<()> {
        let mut tx = D::begin(self.write).await.map_err(D::error)?;
        item_done::<D>(&mut tx, mark, now_ms).await?;
        let (query, needs) = match action {
            DeliveryAction::Replay => (
                sqlx::query(
                    "UPDATE deliveries SET status = 'pending', next_attempt_at = $2, \
                       attempts_before_replay = attempts, lease_owner = NULL WHERE id = $1 AND status = 'dead'",
                )
                .bind(D::uuid(mark.item_id))
                .bind(now_ms),
                "dead",
            ),
            // The token moves, so an attempt in flight records nothing over the cancel.
            DeliveryAction::Cancel => (
                sqlx::query(
                    "UPDATE deliveries SET status = 'dead', last_error = 'cancelled by an operator', \
                       lease_owner = NULL, fencing_token = fencing_token + 1 WHERE id = $1 AND status = 'pending'",
                )
                .bind(D::uuid(mark.item_id)),
                "pending",
            ),
        };
        let changed = query.execute(&mut *tx).await.map_err(D::error)?;
        if D::rows_affected(&changed) == 0 {
            return Err(StoreError::Conflict(format!("the delivery is no longer {needs} (or no longer exists)")));
        }
        tx.commit().await.map_err(D::error)?;
        Ok(())
    }

    pub async fn job_finish(&self, id: Uuid, now_ms: i64) -> StoreResult<JobRecord> {
        sqlx::query(
            "UPDATE sagaplane_jobs SET finished_at = $2, status = CASE WHEN EXISTS \
               (SELECT 1 FROM sagaplane_job_items WHERE job_id = $1 AND state = 'failed') \
               THEN 'failed' ELSE 'succeeded' END \
             WHERE id = $1 AND status = 'running' \
               AND NOT EXISTS (SELECT 1 FROM sagaplane_job_items WHERE job_id = $1 AND state = 'pending')",
        )
        .bind(D::uuid(id))
        .bind(now_ms)
        .execute(self.write)
        .await
        .map_err(D::error)?;
        self.job_get(id).await
    }

    /// Deletes up to `limit` jobs finished at or before `finished_before_ms`, each with its items.
    pub async fn jobs_purge(&self, finished_before_ms: i64, limit: u32) -> StoreResult<u64> {
        let rows = sqlx::query(
            "SELECT id FROM sagaplane_jobs WHERE status <> 'running' AND finished_at <= $1 \
             ORDER BY finished_at LIMIT $2",
        )
        .bind(finished_before_ms)
        .bind(i64::from(limit))
        .fetch_all(self.read)
        .await
        .map_err(D::error)?;
        let mut purged = 0;
        for row in &rows {
            let id = D::uuid_column(row, "id")?;
            let mut tx = D::begin(self.write).await.map_err(D::error)?;
            for statement in
                ["DELETE FROM sagaplane_job_items WHERE job_id = $1", "DELETE FROM sagaplane_jobs WHERE id = $1"]
            {
                sqlx::query(statement).bind(D::uuid(id)).execute(&mut *tx).await.map_err(D::error)?;
            }
            tx.commit().await.map_err(D::error)?;
            purged += 1;
        }
        Ok(purged)
    }
}

/// A job row ([`JOB_COLUMNS`]), its items not yet counted.
fn job<D: Dialect>(row: &<D::Db as Database>::Row) -> StoreResult<JobRecord>
where
    for<'q> i64: sqlx::Decode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> String: sqlx::Decode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'s> &'s str: sqlx::ColumnIndex<<D::Db as Database>::Row>,
{
    let kind: String = column::<D, _>(row, "kind")?;
    let status: String = column::<D, _>(row, "status")?;
    Ok(JobRecord {
        id: D::uuid_column(row, "id")?,
        kind: JobKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("a job of kind {kind:?}")))?,
        action: column::<D, _>(row, "action")?,
        status: JobStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("a job {status:?}")))?,
        filter: D::json_column(row, "filter")?.unwrap_or_default(),
        arguments: D::json_column(row, "arguments")?,
        tenant_id: column::<D, _>(row, "tenant_id")?,
        matched: u64::try_from(column::<D, i64>(row, "matched")?).unwrap_or(0),
        done: 0,
        failed: 0,
        errors: Vec::new(),
        created_at_ms: column::<D, _>(row, "created_at")?,
        finished_at_ms: column::<D, _>(row, "finished_at")?,
    })
}

/// `JobStore` for a store, over the shared statements.
#[macro_export]
macro_rules! job_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl saga_store::JobStore for $store {
            async fn selection_count(&self, selection: &saga_store::Selection) -> saga_store::StoreResult<u64> {
                $crate::SqlStore::sql(self).selection_count(selection).await
            }
            async fn job_create(
                &self,
                create: &saga_store::JobCreate,
                items_max: u64,
            ) -> saga_store::StoreResult<saga_store::JobRecord> {
                $crate::SqlStore::sql(self).job_create(create, items_max).await
            }
            async fn job_get(&self, id: uuid::Uuid) -> saga_store::StoreResult<saga_store::JobRecord> {
                $crate::SqlStore::sql(self).job_get(id).await
            }
            async fn job_status(&self, id: uuid::Uuid) -> saga_store::StoreResult<saga_store::JobStatus> {
                $crate::SqlStore::sql(self).job_status(id).await
            }
            async fn jobs_running(&self, limit: u32) -> saga_store::StoreResult<Vec<uuid::Uuid>> {
                $crate::SqlStore::sql(self).jobs_running(limit).await
            }
            async fn job_cancel(&self, id: uuid::Uuid, now_ms: i64) -> saga_store::StoreResult<saga_store::JobRecord> {
                $crate::SqlStore::sql(self).job_cancel(id, now_ms).await
            }
            async fn job_items_pending(
                &self,
                job_id: uuid::Uuid,
                after: Option<uuid::Uuid>,
                limit: u32,
            ) -> saga_store::StoreResult<Vec<uuid::Uuid>> {
                $crate::SqlStore::sql(self).job_items_pending(job_id, after, limit).await
            }
            async fn job_item_fail(
                &self,
                mark: &saga_store::JobMark,
                error: &str,
                now_ms: i64,
            ) -> saga_store::StoreResult<()> {
                $crate::SqlStore::sql(self).job_item_fail(mark, error, now_ms).await
            }
            async fn job_delivery_act(
                &self,
                mark: &saga_store::JobMark,
                action: saga_store::DeliveryAction,
                now_ms: i64,
            ) -> saga_store::StoreResult<()> {
                $crate::SqlStore::sql(self).job_delivery_act(mark, action, now_ms).await
            }
            async fn job_finish(&self, id: uuid::Uuid, now_ms: i64) -> saga_store::StoreResult<saga_store::JobRecord> {
                $crate::SqlStore::sql(self).job_finish(id, now_ms).await
            }
        }
    };
}
