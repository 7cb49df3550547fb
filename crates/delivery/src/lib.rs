//! Outbound delivery (docs/api.md, "Events out"): the [`Dispatcher`] that takes the outbox's due
//! deliveries from the store and sends them — Standard Webhooks signed, `webhook-id` the event's id
//! on every attempt and replay — retrying on [`RetrySchedule`] and then leaving them `dead`.
//! Subscriptions, events and deliveries themselves are the store's (`saga_store::delivery`); events
//! are written by the engine's commits and the tenant lifecycle, never here.

pub mod breaker;
pub mod dispatcher;
pub mod metrics;
pub mod nats;
pub mod schedule;
pub mod secret;
pub mod send;

pub use dispatcher::{Dispatcher, DispatcherConfig, DispatcherHandle};
pub use schedule::RetrySchedule;
pub use secret::new_secret;
