//! The tenant control plane on top of the saga engine (docs/api.md, "Tenants"): the built-in sagas
//! `tenant.provision`, `tenant.deprovision` and `tenant.migrate` ([`definitions`]), the tenant
//! builtins they are made of ([`steps`]), per-service tenant migrations ([`migrations`]), and the
//! hook that commits tenant status changes together with the saga transitions causing them
//! ([`hook`]). Storage itself is a [`saga_store::tenant_storage::TenantStorage`], implemented by
//! the store crates. No HTTP and no SQL here.

pub mod definitions;
pub mod hook;
pub mod migrations;
pub mod steps;

pub use hook::TenantHook;
pub use migrations::{MigrationSource, ServiceMigrations};
pub use steps::TenantSteps;
