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

/// The status of step `name` in a saga as the API shows it (null when it has no such step).
pub fn step_status(saga: &serde_json::Value, name: &str) -> serde_json::Value {
    let steps = saga["steps"].as_array().into_iter().flatten();
    steps.filter(|s| s["name"] == name).map(|s| s["status"].clone()).next().unwrap_or(serde_json::Value::Null)
}

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
