//! Tenant migration sets: `<dir>/<service>/<version>_<name>.sql` (`SAGAPLANE_TENANT_MIGRATIONS_DIR`),
//! or the built-in sample set when no directory is configured. The directory is read each time
//! a tenant migration runs, so a fixed file is picked up by `retry-migration` without a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use saga_store::tenant_storage::Migration;
use sha2::{Digest, Sha256};

/// The built-in sample set (portable SQL).
const SAMPLE: &[(&str, &str, &str)] = &[
    ("accounts", "0001_create_accounts.sql", include_str!("../sample-migrations/accounts/0001_create_accounts.sql")),
    (
        "accounts",
        "0002_add_account_email.sql",
        include_str!("../sample-migrations/accounts/0002_add_account_email.sql"),
    ),
    (
        "locations",
        "0001_create_locations.sql",
        include_str!("../sample-migrations/locations/0001_create_locations.sql"),
    ),
];

/// Limits on a migration set.
pub const SERVICES_MAX: usize = 100;
pub const MIGRATIONS_PER_SERVICE_MAX: usize = 10_000;
pub const MIGRATION_FILE_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// Why a migration set cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MigrationSetError {
    #[error("cannot read tenant migrations at {path}: {message}")]
    Unreadable { path: String, message: String },
    #[error("tenant migration {path}: {message}")]
    Invalid { path: String, message: String },
}

/// Where migrations come from.
#[derive(Clone, Debug, Default)]
pub struct MigrationSource {
    pub dir: Option<PathBuf>,
}

/// A service's migrations, for `GET /v1/migrations`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceMigrations {
    pub service: String,
    pub migrations: Vec<Migration>,
}

impl ServiceMigrations {
    pub fn latest_version(&self) -> i64 {
        self.migrations.iter().map(|m| m.version).max().unwrap_or(0)
    }
}

fn checksum(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `0002_add_users.sql` → `(2, "add_users")`.
pub fn parse_file_name(file: &str) -> Option<(i64, String)> {
    let stem = file.strip_suffix(".sql")?;
    let (version, name) = stem.split_once('_')?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
        return None;
    }
    let version: i64 = version.parse().ok().filter(|v| *v >= 1)?;
    Some((version, name.to_string()))
}

fn migration(service: &str, file: &str, bytes: &[u8], path: &str) -> Result<Migration, MigrationSetError> {
    let (version, name) = parse_file_name(file).ok_or_else(|| MigrationSetError::Invalid {
        path: path.to_string(),
        message: "file names must be <version>_<name>.sql, e.g. 0002_add_users.sql".into(),
    })?;
    let sql = String::from_utf8(bytes.to_vec())
        .map_err(|_| MigrationSetError::Invalid { path: path.to_string(), message: "not UTF-8".into() })?;
    Ok(Migration { service: service.to_string(), version, name, sql, checksum: checksum(bytes) })
}

impl MigrationSource {
    pub fn new(dir: Option<PathBuf>) -> Self {
        MigrationSource { dir }
    }

    /// Every service's migrations, ordered by service then version.
    pub fn load(&self) -> Result<Vec<ServiceMigrations>, MigrationSetError> {
        let mut services: BTreeMap<String, Vec<Migration>> = BTreeMap::new();
        match &self.dir {
            None => {
                for (service, file, sql) in SAMPLE {
                    let path = format!("(built-in)/{service}/{file}");
                    services.entry(service.to_string()).or_default().push(migration(
                        service,
                        file,
                        sql.as_bytes(),
                        &path,
                    )?);
                }
            }
            Some(dir) => load_dir(dir, &mut services)?,
        }
        let mut sets = Vec::with_capacity(services.len());
        for (service, mut migrations) in services {
            migrations.sort_by_key(|m| m.version);
            if let Some(pair) = migrations.windows(2).find(|w| w[0].version == w[1].version) {
                return Err(MigrationSetError::Invalid {
                    path: format!("{service}/"),
                    message: format!("version {} appears twice ({}, {})", pair[0].version, pair[0].name, pair[1].name),
                });
            }
            sets.push(ServiceMigrations { service, migrations });
        }
        Ok(sets)
    }

    /// Every migration of every service, or those of `service` only.
    pub fn migrations(&self, service: Option<&str>) -> Result<Vec<Migration>, MigrationSetError> {
        Ok(self
            .load()?
            .into_iter()
            .filter(|set| service.is_none_or(|s| s == set.service))
            .flat_map(|set| set.migrations)
            .collect())
    }
}

fn unreadable(path: &Path, e: std::io::Error) -> MigrationSetError {
    MigrationSetError::Unreadable { path: path.display().to_string(), message: e.to_string() }
}

fn load_dir(dir: &Path, services: &mut BTreeMap<String, Vec<Migration>>) -> Result<(), MigrationSetError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| unreadable(dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| unreadable(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let service = entry.file_name().to_string_lossy().into_owned();
        if service.starts_with('.') {
            continue;
        }
        if !is_service_name(&service) {
            return Err(MigrationSetError::Invalid {
                path: path.display().to_string(),
                message: "service folder names are [a-z0-9_-], at most 64 characters".into(),
            });
        }
        if services.len() >= SERVICES_MAX {
            return Err(MigrationSetError::Invalid {
                path: dir.display().to_string(),
                message: format!("more than {SERVICES_MAX} services"),
            });
        }
        let mut files: Vec<_> = std::fs::read_dir(&path)
            .map_err(|e| unreadable(&path, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| unreadable(&path, e))?;
        files.sort_by_key(|f| f.file_name());
        let list = services.entry(service.clone()).or_default();
        for file in files {
            let file_path = file.path();
            let name = file.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".sql") {
                continue;
            }
            let size = file.metadata().map_err(|e| unreadable(&file_path, e))?.len();
            if size > MIGRATION_FILE_MAX_BYTES || list.len() >= MIGRATIONS_PER_SERVICE_MAX {
                return Err(MigrationSetError::Invalid {
                    path: file_path.display().to_string(),
                    message: format!(
                        "files are at most {MIGRATION_FILE_MAX_BYTES} bytes, {MIGRATIONS_PER_SERVICE_MAX} per service"
                    ),
                });
            }
            let bytes = std::fs::read(&file_path).map_err(|e| unreadable(&file_path, e))?;
            list.push(migration(&service, &name, &bytes, &file_path.display().to_string())?);
        }
    }
    Ok(())
}

/// True when the tenant's recorded versions (`[{service, version}]`) are behind the latest of
/// any of `sets`.
pub fn is_behind(recorded: &serde_json::Value, sets: &[ServiceMigrations]) -> bool {
    sets.iter().any(|set| {
        let version = recorded
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["service"] == serde_json::json!(set.service))
            .and_then(|m| m["version"].as_i64())
            .unwrap_or(0);
        version < set.latest_version()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(parse_file_name("0002_add_users.sql"), Some((2, "add_users".into())));
        assert_eq!(parse_file_name("10_x.sql"), Some((10, "x".into())));
        for bad in ["add_users.sql", "0002.sql", "0002_.sql", "0000_zero.sql", "v1_x.sql", "0001_x.txt"] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn sample_set_loads() {
        let sets = MigrationSource::default().load().expect("sample");
        let names: Vec<(&str, i64)> = sets.iter().map(|s| (s.service.as_str(), s.latest_version())).collect();
        assert_eq!(names, vec![("accounts", 2), ("locations", 1)]);
        assert!(sets[0].migrations.iter().all(|m| m.checksum.len() == 64));
    }

    #[test]
    fn a_directory_is_read_each_time_and_checked() {
        let dir = std::env::temp_dir().join(format!("sagaplane-migrations-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("billing")).expect("dir");
        std::fs::write(dir.join("billing/0001_init.sql"), "CREATE TABLE invoices (id INTEGER);").expect("write");
        let source = MigrationSource::new(Some(dir.clone()));
        let first = source.migrations(None).expect("load");
        assert_eq!(first.len(), 1);
        std::fs::write(dir.join("billing/0002_more.sql"), "SELECT 1;").expect("write");
        assert_eq!(source.migrations(Some("billing")).expect("load").len(), 2, "read again");
        assert!(source.migrations(Some("other")).expect("load").is_empty());
        std::fs::write(dir.join("billing/0002_dup.sql"), "SELECT 2;").expect("write");
        assert!(matches!(source.load(), Err(MigrationSetError::Invalid { .. })), "duplicate version");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
