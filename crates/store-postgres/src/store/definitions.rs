//! Definitions: a new version only when the document changed.

use async_trait::async_trait;
use saga_store::{DefinitionPut, DefinitionRecord, DefinitionStore, StoreError, StoreResult};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::Row;

use super::PostgresStore;
use crate::rows::db;

#[async_trait]
impl DefinitionStore for PostgresStore {
    async fn definition_put(&self, name: &str, document: &Value, now_ms: i64) -> StoreResult<DefinitionPut> {
        // Two writers racing on the same name collide on the primary key; the loser re-reads.
        for _ in 0..5 {
            let latest = self.definition_get(name, None).await;
            let next_version = match latest {
                Ok(record) if &record.document == document => return Ok(DefinitionPut { record, created: false }),
                Ok(record) => record.version + 1,
                Err(StoreError::NotFound) => 1,
                Err(e) => return Err(e),
            };
            let inserted =
                sqlx::query("INSERT INTO definitions (name, version, document, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(name)
                    .bind(next_version)
                    .bind(Json(document))
                    .bind(now_ms)
                    .execute(&self.db)
                    .await;
            match inserted {
                Ok(_) => {
                    return Ok(DefinitionPut {
                        record: DefinitionRecord {
                            name: name.into(),
                            version: next_version,
                            document: document.clone(),
                            created_at_ms: now_ms,
                        },
                        created: true,
                    })
                }
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => continue,
                Err(e) => return Err(db(e)),
            }
        }
        Err(StoreError::Conflict(format!("definition {name} is being changed concurrently")))
    }

    async fn definition_get(&self, name: &str, version: Option<i32>) -> StoreResult<DefinitionRecord> {
        let row = sqlx::query(
            "SELECT name, version, document, created_at FROM definitions \
             WHERE name = $1 AND ($2::int IS NULL OR version = $2) ORDER BY version DESC LIMIT 1",
        )
        .bind(name)
        .bind(version)
        .fetch_optional(&self.db)
        .await
        .map_err(db)?
        .ok_or(StoreError::NotFound)?;
        definition_row(&row)
    }

    async fn definition_list(&self) -> StoreResult<Vec<DefinitionRecord>> {
        let rows = sqlx::query(
            "SELECT DISTINCT ON (name) name, version, document, created_at FROM definitions ORDER BY name, version DESC",
        )
        .fetch_all(&self.db)
        .await
        .map_err(db)?;
        rows.iter().map(definition_row).collect()
    }
}

fn definition_row(row: &sqlx::postgres::PgRow) -> StoreResult<DefinitionRecord> {
    let document: Json<Value> = row.try_get("document").map_err(db)?;
    Ok(DefinitionRecord {
        name: row.try_get("name").map_err(db)?,
        version: row.try_get("version").map_err(db)?,
        document: document.0,
        created_at_ms: row.try_get("created_at").map_err(db)?,
    })
}
