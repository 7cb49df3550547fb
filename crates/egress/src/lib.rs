//! How Sagaplane reaches the outside, in one place: which addresses a destination may connect
//! to ([`policy`]), the HTTP clients that enforce it on every connection ([`client`]), and the
//! capped reader every answer from outside is read through ([`body`]).
//!
//! Two kinds of destination, two policies. The operator's — saga steps (`http`, `grpc`) and
//! subscriptions that belong to no tenant — may reach anything but the networks
//! `SAGAPLANE_HTTP_DENY` lists. A tenant's — subscriptions that belong to a tenant, their
//! webhook URLs and NATS servers — may in addition reach no loopback, private, link-local,
//! CGNAT, multicast, unique-local or otherwise special-purpose address (the cloud metadata
//! address among them), unless `SAGAPLANE_HTTP_ALLOW` re-opens a network: a tenant must not be
//! able to probe or read the operator's internal network through Sagaplane.
//!
//! Every check is made on the address a connection is actually made to: a name is resolved
//! once, by the checking resolver the connection then uses, so a name re-pointed between the
//! check and the connection (DNS rebinding) reaches nothing new. Proxies from the environment
//! are ignored unless the operator opts in, and never for a tenant's destinations, since a
//! proxy would hide the real destination from the check.

pub mod body;
pub mod client;
pub mod policy;

pub use body::{read_capped, read_prefix, BodyError};
pub use client::{describe, http_client, redact_url, ClientSettings};
pub use policy::{denied_in, AddressDenied, AddressPolicy, CheckingResolver, Networks};
