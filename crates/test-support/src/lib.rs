//! Test helpers: fresh databases, the real `sagaplane` binary as a child process, and
//! scriptable participant HTTP servers on loopback (the only doubles: they stand in for
//! systems outside the project).

pub mod app;
pub mod clusters;
pub mod db;
pub mod effects;
pub mod grpc_participant;
pub mod ha;
pub mod nats;
pub mod otlp;
pub mod participant;
pub mod readme;

pub use app::{App, Backend};
pub use effects::EffectsParticipant;
pub use grpc_participant::GrpcParticipant;
pub use participant::Participant;

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
