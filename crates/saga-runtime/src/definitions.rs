//! Validated definitions, cached by `(name, version)`: stored versions never change, so an entry
//! never goes stale. Shared by the drivers and the API. It also remembers the latest version seen
//! per name, as a hint only: creates that use it are guarded by the store (`require_latest`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use saga_core::Definition;
use saga_store::{EngineStore, StoreError};

/// Why a definition could not be had.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("definition {name:?} has no version {version:?}")]
    NotFound { name: String, version: Option<i32> },
    /// A stored version that no longer validates (e.g. a builtin it names was removed).
    #[error("stored definition {name} v{version} is invalid: {detail}")]
    Invalid { name: String, version: i32, detail: String },
    #[error(transparent)]
    Store(StoreError),
}

/// The cache.
pub struct DefinitionCache {
    store: Arc<dyn EngineStore>,
    builtins: Vec<String>,
    versions: Mutex<HashMap<(String, i32), Arc<Definition>>>,
    latest: Mutex<HashMap<String, i32>>,
}

impl DefinitionCache {
    pub fn new(store: Arc<dyn EngineStore>, builtins: Vec<String>) -> Self {
        DefinitionCache { store, builtins, versions: Mutex::new(HashMap::new()), latest: Mutex::new(HashMap::new()) }
    }

    /// The builtin names definitions are validated against.
    pub fn builtin_names(&self) -> Vec<&str> {
        self.builtins.iter().map(String::as_str).collect()
    }

    fn cached(&self, name: &str, version: i32) -> Option<Arc<Definition>> {
        self.versions.lock().ok().and_then(|c| c.get(&(name.to_string(), version)).cloned())
    }

    /// `(version, definition)` for `version`, or for the latest stored version when None.
    pub async fn get(&self, name: &str, version: Option<i32>) -> Result<(i32, Arc<Definition>), DefinitionError> {
        if let Some(found) = version.and_then(|v| self.cached(name, v).map(|d| (v, d))) {
            return Ok(found);
        }
        let record = self.store.definition_get(name, version).await.map_err(|e| match e {
            StoreError::NotFound => DefinitionError::NotFound { name: name.to_string(), version },
            other => DefinitionError::Store(other),
        })?;
        if version.is_none() {
            self.note_latest(name, record.version);
        }
        if let Some(found) = self.cached(name, record.version) {
            return Ok((record.version, found));
        }
        let parsed =
            saga_core::validate_definition(name, &record.document, &self.builtin_names()).map_err(|errors| {
                DefinitionError::Invalid {
                    name: name.to_string(),
                    version: record.version,
                    detail: format!("{errors:?}"),
                }
            })?;
        let parsed = Arc::new(parsed);
        crate::metrics_names::register_definition(&parsed);
        if let Ok(mut versions) = self.versions.lock() {
            versions.insert((name.to_string(), record.version), parsed.clone());
        }
        Ok((record.version, parsed))
    }

    /// The definition a saga runs: its definition's version, or — for a branch of a `parallel`
    /// or `for_each` group — that branch's steps as a definition of their own.
    pub async fn for_saga(&self, record: &saga_store::SagaRecord) -> Result<Arc<Definition>, DefinitionError> {
        let name = saga_core::base_definition_name(&record.definition);
        let (_, definition) = self.get(name, Some(record.version)).await?;
        let Some(branch) = record.state.parent.as_ref().and_then(|p| p.branch.as_ref()) else {
            return Ok(definition);
        };
        definition.branch(branch.group, branch.index).map(Arc::new).ok_or_else(|| DefinitionError::Invalid {
            name: record.definition.clone(),
            version: record.version,
            detail: format!("it has no branch {} of a group at step {}", branch.index, branch.group),
        })
    }

    /// Loads the latest version of every stored definition (so their metrics exist from the
    /// first scrape). A definition that no longer validates is skipped: it fails where it is used.
    pub async fn warm(&self) -> Result<usize, StoreError> {
        let mut loaded = 0;
        for record in self.store.definition_list().await? {
            if self.get(&record.name, Some(record.version)).await.is_ok() {
                self.note_latest(&record.name, record.version);
                loaded += 1;
            }
        }
        Ok(loaded)
    }

    /// The latest version seen for `name`, when it is cached (a hint; see the module doc).
    pub fn latest_hint(&self, name: &str) -> Option<(i32, Arc<Definition>)> {
        let version = self.latest.lock().ok().and_then(|l| l.get(name).copied())?;
        self.cached(name, version).map(|d| (version, d))
    }

    /// Records that `version` is the latest of `name` (after a PUT or a read of the latest).
    pub fn note_latest(&self, name: &str, version: i32) {
        if let Ok(mut latest) = self.latest.lock() {
            latest.insert(name.to_string(), version);
        }
    }
}
