//! The archive (`SAGAPLANE_ARCHIVE_DIR`): each saga the cleaner is about to delete is written
//! first, with its whole history, as one JSON line (the API's saga with `history`) appended to
//! the day's file `sagas-YYYY-MM-DD.jsonl` (UTC, the day it was archived), and the file synced;
//! only the sagas written are then deleted, so nothing is deleted that was not written. A write
//! that fails deletes nothing, and the cleaner tries again at its next look.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use saga_store::{EventRecord, SagaStore, StoreError};
use uuid::Uuid;

/// The most history entries read in one page while archiving a saga.
const HISTORY_PAGE: u32 = 1_000;

/// Where archived sagas go, and the store they are read from.
#[derive(Clone)]
pub struct Archive {
    pub dir: PathBuf,
    pub sagas: Arc<dyn SagaStore>,
}

/// Why a batch could not be archived.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("reading a saga to archive: {0}")]
    Store(#[from] StoreError),
    #[error("writing the archive {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Archive {
    /// Writes the sagas `ids` that still exist to the day's file of `now_ms`, synced; the ids
    /// written.
    pub async fn write(&self, ids: &[Uuid], now_ms: i64) -> Result<Vec<Uuid>, ArchiveError> {
        let mut text = String::new();
        let mut written = Vec::with_capacity(ids.len());
        for id in ids {
            let record = match self.sagas.saga_get(*id).await {
                Ok(record) => record,
                Err(StoreError::NotFound) => continue,
                Err(e) => return Err(e.into()),
            };
            let history = self.history(*id).await?;
            text.push_str(&saga_store::document::archived(&record, &history).to_string());
            text.push('\n');
            written.push(*id);
        }
        if written.is_empty() {
            return Ok(written);
        }
        let path = self.dir.join(day_file(now_ms));
        append(&path, text.as_bytes()).await.map_err(|source| ArchiveError::Write { path, source })?;
        Ok(written)
    }

    async fn history(&self, id: Uuid) -> Result<Vec<EventRecord>, StoreError> {
        let mut history: Vec<EventRecord> = Vec::new();
        loop {
            let after = history.last().map(|event| event.seq).unwrap_or(0);
            let page = self.sagas.saga_events(id, after, HISTORY_PAGE).await?;
            let full = page.len() == HISTORY_PAGE as usize;
            history.extend(page);
            if !full {
                return Ok(history);
            }
        }
    }
}

/// `sagas-YYYY-MM-DD.jsonl` of the UTC day of `now_ms`.
pub fn day_file(now_ms: i64) -> String {
    let day = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(now_ms).unwrap_or_default();
    format!("sagas-{}.jsonl", day.format("%Y-%m-%d"))
}

/// Appends `bytes` to `path` (made, readable by its owner only, when new) and syncs it, off the
/// async threads.
async fn append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let (path, bytes) = (path.to_path_buf(), bytes.to_vec());
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path)?;
        file.write_all(&bytes)?;
        file.sync_all()
    })
    .await
    .map_err(std::io::Error::other)?
}
