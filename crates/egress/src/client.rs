//! The HTTP clients that reach the outside, built one way: the policy's resolver on every
//! connection, no proxy from the environment unless the operator opted in (and never for a
//! tenant's destinations), and the caller's redirect rule.

use std::sync::Arc;

use crate::policy::{AddressPolicy, CheckingResolver};

/// How to build one client.
#[derive(Debug)]
pub struct ClientSettings {
    pub policy: AddressPolicy,
    /// Use `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` from the environment
    /// (`SAGAPLANE_HTTP_ENV_PROXY=true`). Through a proxy only the proxy's address is checked,
    /// so this is for the operator's destinations only.
    pub env_proxy: bool,
    pub redirect: reqwest::redirect::Policy,
    pub user_agent: &'static str,
    pub pool_max_idle_per_host: usize,
}

impl ClientSettings {
    /// No redirects followed, no proxy, idle connections kept per host as reqwest does.
    pub fn new(policy: AddressPolicy) -> Self {
        ClientSettings {
            policy,
            env_proxy: false,
            redirect: reqwest::redirect::Policy::none(),
            user_agent: concat!("sagaplane/", env!("CARGO_PKG_VERSION")),
            pool_max_idle_per_host: usize::MAX,
        }
    }
}

/// A client for `settings`.
pub fn http_client(settings: ClientSettings) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .user_agent(settings.user_agent)
        .redirect(settings.redirect)
        .pool_max_idle_per_host(settings.pool_max_idle_per_host);
    if !settings.env_proxy {
        builder = builder.no_proxy();
    }
    if !settings.policy.is_open() {
        builder = builder.dns_resolver(Arc::new(CheckingResolver(settings.policy)));
    }
    builder.build()
}

/// An error with its sources, `outer: inner: …` (reqwest's own message hides the cause).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
