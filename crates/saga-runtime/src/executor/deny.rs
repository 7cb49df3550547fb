//! `SAGAPLANE_HTTP_DENY`: networks that `http` and `grpc` steps may not reach (e.g. the cloud
//! metadata address, the cluster's internal ranges), so a URL templated from a saga's input
//! cannot be pointed at them.
//!
//! The check happens where the connection is made, on the addresses a host name resolves to —
//! not on the URL's text — so a name that resolves into a denied network (or one re-pointed
//! there between attempts) is refused like a literal address. A host with some allowed and some
//! denied addresses is reached only through the allowed ones.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// The most networks one deny-list holds.
pub const DENY_NETWORKS_MAX: usize = 256;

/// Networks steps may not connect to. Empty (the default) denies nothing.
#[derive(Clone, Debug, Default)]
pub struct AddressDenyList {
    networks: Arc<[IpNet]>,
}

/// A connection refused by the deny-list. Found in an error's source chain, it makes the
/// attempt a definite failure: nothing was sent.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to {address}, a network SAGAPLANE_HTTP_DENY denies; nothing was sent")]
pub struct AddressDenied {
    pub host: String,
    pub address: IpAddr,
}

impl AddressDenyList {
    /// Comma-separated CIDR networks or single addresses: `169.254.169.254, 10.0.0.0/8, fd00::/8`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut networks = Vec::new();
        for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let network = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{item:?} is not an address or a CIDR network (e.g. 10.0.0.0/8 or fd00::/8)"))?;
            networks.push(network);
        }
        if networks.len() > DENY_NETWORKS_MAX {
            return Err(format!("{} networks given, at most {DENY_NETWORKS_MAX}", networks.len()));
        }
        Ok(AddressDenyList { networks: networks.into() })
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    pub fn denies(&self, address: IpAddr) -> bool {
        // `::ffff:10.0.0.1` is 10.0.0.1 on the wire.
        let address = address.to_canonical();
        self.networks.iter().any(|network| network.contains(&address))
    }

    /// The addresses of `host` a step may connect to; an error naming the first denied address
    /// when every address is denied.
    pub async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
        let allowed: Vec<SocketAddr> = addresses.iter().copied().filter(|a| !self.denies(a.ip())).collect();
        match addresses.first() {
            Some(first) if allowed.is_empty() => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                AddressDenied { host: host.to_string(), address: first.ip() },
            )),
            _ => Ok(allowed),
        }
    }

    /// The refusal for a literal address in a URL, if it is denied.
    pub fn check_literal(&self, host: &str) -> Result<(), AddressDenied> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(address) if self.denies(address) => Err(AddressDenied { host: host.to_string(), address }),
            _ => Ok(()),
        }
    }
}

impl AddressDenyList {
    /// Why `url` may not be requested, when its host is a literal address in the list (a host
    /// name is checked by the resolver at connect time).
    pub fn denied_url(&self, url: &str) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let url = reqwest::Url::parse(url).ok()?;
        self.check_literal(url.host_str()?).err().map(|denied| denied.to_string())
    }
}

/// The deny-list's refusal somewhere in `error`'s source chain.
pub fn denied_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a AddressDenied> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(denied) = error.downcast_ref::<AddressDenied>() {
            return Some(denied);
        }
        if let Some(io) = error.downcast_ref::<io::Error>() {
            if let Some(denied) = io.get_ref().and_then(|inner| inner.downcast_ref::<AddressDenied>()) {
                return Some(denied);
            }
        }
        current = error.source();
    }
    None
}

/// reqwest's resolver with the deny-list applied to every name it resolves (steps, and the
/// delivery dispatcher's webhooks).
#[derive(Clone)]
pub struct DenyingResolver(pub AddressDenyList);

impl reqwest::dns::Resolve for DenyingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let deny = self.0.clone();
        Box::pin(async move {
            // Port 0: the client puts the URL's port on the addresses it gets.
            let addresses = deny.resolve(name.as_str(), 0).await.map_err(|error| match error.into_inner() {
                Some(inner) => inner,
                None => Box::new(io::Error::other("name resolution failed")),
            })?;
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_networks_and_addresses() {
        let deny = AddressDenyList::parse(" 10.0.0.0/8, 169.254.169.254 ,fd00::/8,").expect("valid");
        for (address, denied) in [
            ("10.1.2.3", true),
            ("11.0.0.1", false),
            ("169.254.169.254", true),
            ("169.254.169.253", false),
            ("fd00::1", true),
            ("::ffff:10.0.0.1", true),
            ("2001:db8::1", false),
        ] {
            assert_eq!(deny.denies(address.parse().expect("address")), denied, "{address}");
        }
        assert!(AddressDenyList::parse("").expect("empty").is_empty());
        let error = AddressDenyList::parse("10.0.0.0/8, internal").expect_err("not a network");
        assert!(error.contains("\"internal\""), "{error}");
        assert!(AddressDenyList::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn literal_hosts_are_checked() {
        let deny = AddressDenyList::parse("127.0.0.0/8,::1").expect("valid");
        assert!(deny.check_literal("127.0.0.1").is_err());
        assert!(deny.check_literal("[::1]").is_err());
        assert!(deny.check_literal("example.com").is_ok());
        assert!(deny.check_literal("10.0.0.1").is_ok());
    }

    #[tokio::test]
    async fn names_are_resolved_and_filtered() {
        let deny = AddressDenyList::parse("127.0.0.0/8,::1").expect("valid");
        let error = deny.resolve("localhost", 80).await.expect_err("loopback denied");
        assert!(denied_in(&error).is_some(), "{error}");
        let open = AddressDenyList::default();
        assert!(!open.resolve("localhost", 80).await.expect("resolves").is_empty());
    }
}
