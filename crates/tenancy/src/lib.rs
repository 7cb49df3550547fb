//! The tenant control plane on top of the saga engine (docs/api.md, "Tenants"): the built-in sagas
//! `tenant.provision`, `tenant.deprovision` and `tenant.migrate` ([`definitions`]), the tenant
//! builtins they are made of ([`steps`]), per-service tenant migrations ([`migrations`]), and the
//! hook that commits tenant status changes together with the saga transitions causing them
//! ([`hook`]), and the lifecycle the routes call — onboard, offboard, cancel, retry, suspend,
//! resume, and the storage mode a new tenant gets ([`lifecycle`]). Storage itself is a [`saga_store::tenant_storage::TenantStorage`], implemented by
//! the store crates. No HTTP and no SQL here.

pub mod definitions;
pub mod hook;
pub mod lifecycle;
pub mod migrations;
pub mod steps;

pub use hook::TenantHook;
pub use lifecycle::{Lifecycle, LifecycleError, NewTenant};
pub use migrations::{MigrationSource, ServiceMigrations};
pub use steps::TenantSteps;
