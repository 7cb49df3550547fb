//! Definitions: a new version only when the document changed.

use async_trait::async_trait;
use saga_store::{DefinitionPut, DefinitionRecord, DefinitionStore, StoreError, StoreResult};
use serde_json::Value;
use sqlx::Row;

use super::SqliteStore;
use crate::rows::{db, json_text};

#[async_trait]
impl DefinitionStore for SqliteStore {
    async fn definition_put(&self, name: &str, document: &Value, now_ms: i64) -> StoreResult<DefinitionPut> {
        let mut tx = self.writer.begin().await.map_err(db)?;
        let latest = sqlx::query(
            "SELECT version, document, created_at FROM definitions WHERE name = ? ORDER BY version DESC LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let mut next_version = 1;
        if let Some(row) = latest {
            let version: i32 = row.try_get("version").map_err(db)?;
            let text: String = row.try_get("document").map_err(db)?;
            let existing: Value = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if &existing == document {
                let created_at_ms = row.try_get("created_at").map_err(db)?;
                return Ok(DefinitionPut {
                    record: DefinitionRecord { name: name.into(), version, document: existing, created_at_ms },
                    created: false,
                });
            }
            next_version = version + 1;
        }
        sqlx::query("INSERT INTO definitions (name, version, document, created_at) VALUES (?, ?, ?, ?)")
            .bind(name)
            .bind(next_version)
            .bind(json_text(document)?)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(DefinitionPut {
            record: DefinitionRecord {
                name: name.into(),
                version: next_version,
                document: document.clone(),
                created_at_ms: now_ms,
            },
            created: true,
        })
    }

    async fn definition_get(&self, name: &str, version: Option<i32>) -> StoreResult<DefinitionRecord> {
        let row = match version {
            Some(v) => sqlx::query("SELECT name, version, document, created_at FROM definitions WHERE name = ? AND version = ?")
                .bind(name)
                .bind(v)
                .fetch_optional(&self.reader)
                .await,
            None => sqlx::query("SELECT name, version, document, created_at FROM definitions WHERE name = ? ORDER BY version DESC LIMIT 1")
                .bind(name)
                .fetch_optional(&self.reader)
                .await,
        }
        .map_err(db)?
        .ok_or(StoreError::NotFound)?;
        definition_row(&row)
    }

    async fn definition_list(&self) -> StoreResult<Vec<DefinitionRecord>> {
        let rows = sqlx::query(
            "SELECT d.name, d.version, d.document, d.created_at FROM definitions d \
             WHERE d.version = (SELECT MAX(version) FROM definitions x WHERE x.name = d.name) ORDER BY d.name",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        rows.iter().map(definition_row).collect()
    }
}

fn definition_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<DefinitionRecord> {
    let text: String = row.try_get("document").map_err(db)?;
    Ok(DefinitionRecord {
        name: row.try_get("name").map_err(db)?,
        version: row.try_get("version").map_err(db)?,
        document: serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        created_at_ms: row.try_get("created_at").map_err(db)?,
    })
}
