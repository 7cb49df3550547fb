//! Route handlers, one module per resource.

pub(crate) mod common;
pub mod control;
pub mod definitions;
pub mod deliveries;
pub mod jobs;
pub mod ops;
pub mod sagas;
pub mod tenants;
