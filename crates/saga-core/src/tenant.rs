//! The tenant model of docs/api.md ("Tenants"): tiers, storage modes, SLA tiers, and the status
//! machine — the one place that says which status may follow which. Every writer of a tenant's
//! status (the API for suspend/resume, the saga hook for provisioning steps) asks
//! [`TenantStatus::may_become`], and stores make the write conditional on the allowed sources, so
//! an illegal transition is refused rather than written.

use serde::{Deserialize, Serialize};

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            pub fn parse(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == text)
            }

            /// The accepted values, for error messages.
            pub fn expected() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }
    };
}

text_enum!(
    /// Isolation tier.
    Tier { Pooled = "pooled", Bridge = "bridge", Silo = "silo" }
);

text_enum!(
    /// Where a tenant's data lives.
    StorageMode { Pooled = "pooled", Schema = "schema", Database = "database" }
);

text_enum!(
    /// Service level.
    SlaTier { Basic = "basic", Standard = "standard", Premium = "premium" }
);

text_enum!(
    /// Lifecycle status.
    TenantStatus {
        Provisioning = "PROVISIONING",
        Migrating = "MIGRATING",
        Active = "ACTIVE",
        ProvisionError = "PROVISION_ERROR",
        MigrationError = "MIGRATION_ERROR",
        Suspended = "SUSPENDED",
        Deprovisioning = "DEPROVISIONING",
        Deleted = "DELETED",
    }
);

impl Tier {
    /// The storage mode a tier gets unless the request says otherwise.
    pub fn default_storage_mode(self) -> StorageMode {
        match self {
            Tier::Pooled => StorageMode::Pooled,
            Tier::Bridge => StorageMode::Schema,
            Tier::Silo => StorageMode::Database,
        }
    }

    /// The storage mode a tier gets on a storage that offers only `offered`: the tier's own
    /// default where offered, else the most isolated mode offered (database, schema, pooled).
    /// `None` only when nothing is offered. A default must work on the default store, so on the
    /// embedded SQLite storage (database only) every tier gets `database`.
    pub fn storage_mode_among(self, offered: &[StorageMode]) -> Option<StorageMode> {
        let preferred = self.default_storage_mode();
        if offered.contains(&preferred) {
            return Some(preferred);
        }
        [StorageMode::Database, StorageMode::Schema, StorageMode::Pooled]
            .into_iter()
            .find(|mode| offered.contains(mode))
    }
}

impl TenantStatus {
    /// The legal transitions (docs/api.md, "Tenants"):
    /// `PROVISIONING → MIGRATING → ACTIVE`; failures `PROVISION_ERROR`, `MIGRATION_ERROR`;
    /// `ACTIVE ⇄ SUSPENDED`; a migration (`tenant.migrate`) takes `ACTIVE` or `MIGRATION_ERROR`
    /// through `MIGRATING`; anything but `DELETED` may start `DEPROVISIONING → DELETED`.
    pub fn may_become(self, next: TenantStatus) -> bool {
        use TenantStatus::*;
        matches!(
            (self, next),
            (Provisioning, Migrating | ProvisionError | Active)
                | (Migrating, Active | MigrationError | ProvisionError)
                | (Active, Suspended | Migrating)
                | (Suspended, Active)
                | (MigrationError, Migrating)
                | (Provisioning | Migrating | Active | Suspended | ProvisionError | MigrationError, Deprovisioning)
                | (Deprovisioning, Deleted)
                // A deletion whose saga stopped short is started again.
                | (Deprovisioning, Deprovisioning)
        )
    }

    /// Every status that may become `next`: the condition of a store write.
    pub fn sources_of(next: TenantStatus) -> Vec<TenantStatus> {
        Self::ALL.iter().copied().filter(|from| from.may_become(next)).collect()
    }
}

/// Tenant ids: `^[a-z][a-z0-9-]{1,61}[a-z0-9]$` (3 to 63 characters), except the shape
/// [`tenant_object_name`] reserves for longer ids (see [`is_reserved_tenant_id`]).
pub fn is_valid_tenant_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    if !(3..=63).contains(&bytes.len()) || !bytes[0].is_ascii_lowercase() {
        return false;
    }
    let last = bytes[bytes.len() - 1];
    (last.is_ascii_lowercase() || last.is_ascii_digit())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && !is_reserved_tenant_id(id)
}

/// Why a well-formed id is refused: its plain object name would have the shape of a longer
/// id's hashed one (`tenant_` + 43 characters + `_` + 12 hex digits), so it could take over that
/// tenant's role, schema, database or file. Ids of exactly 56 characters ending in `-` and 12
/// lowercase hex digits are therefore not ids; every other id maps to a name no other id has.
pub fn is_reserved_tenant_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.len() == OBJECT_NAME_MAX - "tenant_".len()
        && bytes[HASHED_PREFIX_CHARS - "tenant_".len()] == b'-'
        && bytes[bytes.len() - HASH_HEX_DIGITS..].iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// The plain part of a hashed object name: `tenant_` and the id's first 43 characters.
const HASHED_PREFIX_CHARS: usize = 50;
/// The hash in a hashed object name: 6 bytes of SHA-256, as hex.
const HASH_HEX_DIGITS: usize = 12;

/// What [`is_valid_tenant_id`] says of an id it refuses, for an error message.
pub const TENANT_ID_RULE: &str = "must match ^[a-z][a-z0-9-]{1,61}[a-z0-9]$ (3 to 63 characters), and an id of 56 \
     characters may not end in - and 12 hex digits (the shape of a longer id's storage name)";

/// PostgreSQL's identifier limit: longer names are silently cut to this many bytes.
pub const OBJECT_NAME_MAX: usize = 63;

/// The SQL-safe name derived from a valid tenant id: `tenant_<id with - as _>` when that fits in
/// [`OBJECT_NAME_MAX`] bytes (ids up to 56 characters); otherwise its first 50 characters, `_`,
/// and 12 hex digits of the SHA-256 of the id — so two long ids sharing a prefix never share a
/// role, schema or database (PostgreSQL would have cut both to the same 63 bytes). Always
/// `[a-z0-9_]`, a valid unquoted identifier (still quoted). The pooled tables' row-level policy
/// derives the same name in SQL (store-postgres `tenant_storage`).
pub fn tenant_object_name(id: &str) -> String {
    use sha2::{Digest, Sha256};
    let plain = format!("tenant_{}", id.replace('-', "_"));
    if plain.len() <= OBJECT_NAME_MAX {
        return plain;
    }
    let digest: String =
        Sha256::digest(id.as_bytes()).iter().take(HASH_HEX_DIGITS / 2).map(|b| format!("{b:02x}")).collect();
    format!("{}_{digest}", &plain[..HASHED_PREFIX_CHARS])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for good in ["abc", "acme-corp", "a1b", "t-1-2", &format!("a{}", "b".repeat(62))] {
            assert!(is_valid_tenant_id(good), "{good}");
        }
        for bad in ["Bad", "a", "ab-", "1ab", "x;drop table t", &"a".repeat(70), "", "a_b", "ab c", "-ab"] {
            assert!(!is_valid_tenant_id(bad), "{bad}");
        }
        assert_eq!(tenant_object_name("acme-corp"), "tenant_acme_corp");
        let fits = format!("a{}", "b".repeat(55));
        assert_eq!(tenant_object_name(&fits), format!("tenant_{fits}"), "56 characters still fit");
        let long_a = format!("a{}x", "b".repeat(61));
        let long_b = format!("a{}y", "b".repeat(61));
        let (name_a, name_b) = (tenant_object_name(&long_a), tenant_object_name(&long_b));
        assert!(name_a.len() <= OBJECT_NAME_MAX && name_b.len() <= OBJECT_NAME_MAX, "{name_a} {name_b}");
        assert_ne!(name_a, name_b, "long ids sharing a prefix must not share a name");
        // The exact collision: a 56-character id crafted from a long id's hashed name would
        // have that very name as its plain one. It is not an id.
        let crafted = name_a["tenant_".len()..].replace('_', "-");
        assert_eq!(crafted.len(), 56);
        assert_eq!(format!("tenant_{}", crafted.replace('-', "_")), name_a, "the crafted id's plain name");
        assert!(is_reserved_tenant_id(&crafted) && !is_valid_tenant_id(&crafted), "{crafted}");
        // Other 56-character ids stay valid.
        assert!(is_valid_tenant_id(&format!("a{}", "b".repeat(55))));
        assert!(is_valid_tenant_id(&format!("{}-{}", "a".repeat(43), "g".repeat(12))), "not hex");
        assert!(
            name_a.starts_with("tenant_abbb")
                && name_a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
    }

    #[test]
    fn status_machine() {
        use TenantStatus::*;
        assert!(Provisioning.may_become(Migrating));
        assert!(Migrating.may_become(Active));
        assert!(Active.may_become(Suspended) && Suspended.may_become(Active));
        assert!(!Suspended.may_become(Migrating), "a suspended tenant is not migrated");
        assert!(!Deleted.may_become(Active), "deleted is final");
        assert!(!Provisioning.may_become(Suspended));
        assert!(!Deprovisioning.may_become(Active));
        assert!(ALL_NEVER_SELF.iter().filter(|s| **s != Deprovisioning).all(|s| !s.may_become(*s)));
        assert_eq!(TenantStatus::sources_of(Deleted), vec![Deprovisioning]);
        assert_eq!(Tier::Bridge.default_storage_mode(), StorageMode::Schema);
        assert_eq!(TenantStatus::parse("ACTIVE"), Some(Active));
    }

    #[test]
    fn storage_mode_among_what_is_offered() {
        use StorageMode::*;
        let check = |tier: Tier, offered: &[StorageMode], expect: Option<StorageMode>| {
            assert_eq!(tier.storage_mode_among(offered), expect, "{tier:?} among {offered:?}");
        };
        check(Tier::Pooled, &[Pooled, Schema, Database], Some(Pooled));
        check(Tier::Bridge, &[Pooled, Schema, Database], Some(Schema));
        check(Tier::Silo, &[Pooled, Schema, Database], Some(Database));
        check(Tier::Pooled, &[Database], Some(Database));
        check(Tier::Bridge, &[Database], Some(Database));
        check(Tier::Silo, &[Database], Some(Database));
        check(Tier::Silo, &[Pooled, Schema], Some(Schema));
        check(Tier::Pooled, &[], None);
    }

    const ALL_NEVER_SELF: &[TenantStatus] = TenantStatus::ALL;
}
