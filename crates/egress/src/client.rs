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

/// A request's failure for a message that is stored and shown (to tenants too): its causes, but
/// not the URL, whose user info or query may carry a credential.
pub fn describe(error: reqwest::Error) -> String {
    error_chain(&error.without_url())
}

/// `url` for a message: its user info, query and fragment replaced by `***` where present.
/// Text that is not a URL is shown as `***` whole.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return "***".to_string();
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        let _ = parsed.set_username("***");
        let _ = parsed.set_password(None);
    }
    if parsed.query().is_some() {
        parsed.set_query(Some("***"));
    }
    if parsed.fragment().is_some() {
        parsed.set_fragment(None);
    }
    parsed.to_string()
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

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn urls_in_messages_lose_their_credentials() {
        assert_eq!(
            redact_url("https://user:pw@hooks.example.com/in?token=s3cret#x"),
            "https://***@hooks.example.com/in?***"
        );
        assert_eq!(redact_url("nats://svc:pw@10.0.0.1:4222"), "nats://***@10.0.0.1:4222");
        assert_eq!(redact_url("http://example.com/plain"), "http://example.com/plain");
        assert_eq!(redact_url("not a url with a secret"), "***");
    }
}
