//! Black-box tests: the real `sagaplane` binary on PostgreSQL and on SQLite, with real
//! participant HTTP servers on loopback.

mod api;
mod blockers;
mod browser;
mod bulk;
mod children;
mod cli;
mod control;
mod crash;
mod delivery;
mod deploy;
mod docs;
mod egress;
mod failover;
mod fuzz;
mod grace;
mod groups;
mod hardening;
mod production_pg;
mod profile;
mod restart;
mod retention;
mod sagas;
mod subscriptions;
mod takeover;
mod tenants;
mod timers;
mod tour;
mod traces;
mod upgrade;

pub const BIN: &str = env!("CARGO_BIN_EXE_sagaplane");

/// Runs an async scenario once per backend, as separate tests (`<name>::postgres`, `::sqlite`).
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(test_support::Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(test_support::Backend::Sqlite).await
            }
        }
    };
}
