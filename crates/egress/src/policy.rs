//! Which addresses a destination may connect to.
//!
//! The check happens where the connection is made, on the addresses a host name resolves to —
//! not on the URL's text — so a name that resolves into a denied network (or one re-pointed
//! there between attempts) is refused like a literal address. A host with some allowed and some
//! denied addresses is reached only through the allowed ones.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// The most networks one list holds.
pub const NETWORKS_MAX: usize = 256;

/// Networks no tenant destination may reach unless `SAGAPLANE_HTTP_ALLOW` re-opens them: every
/// special-purpose range of the IANA registries that is not the public internet.
const SPECIAL_PURPOSE: &[&str] = &[
    "0.0.0.0/8",       // "this network"
    "10.0.0.0/8",      // private
    "100.64.0.0/10",   // carrier-grade NAT
    "127.0.0.0/8",     // loopback
    "169.254.0.0/16",  // link-local, the cloud metadata address 169.254.169.254 among them
    "172.16.0.0/12",   // private
    "192.0.0.0/24",    // IETF protocol assignments
    "192.0.2.0/24",    // documentation
    "192.88.99.0/24",  // 6to4 relay
    "192.168.0.0/16",  // private
    "198.18.0.0/15",   // benchmarking
    "198.51.100.0/24", // documentation
    "203.0.113.0/24",  // documentation
    "224.0.0.0/4",     // multicast
    "240.0.0.0/4",     // reserved, and the broadcast address
    "::/128",          // unspecified
    "::1/128",         // loopback
    "64:ff9b::/96",    // NAT64: an IPv4 address behind it
    "64:ff9b:1::/48",  // local NAT64
    "100::/64",        // discard
    "2001::/23",       // IETF protocol assignments
    "2001:db8::/32",   // documentation
    "2002::/16",       // 6to4: an IPv4 address behind it
    "fc00::/7",        // unique-local (AWS's IPv6 metadata address fd00:ec2::254 among them)
    "fe80::/10",       // link-local
    "ff00::/8",        // multicast
];

/// A list of networks: comma-separated CIDR networks or single addresses.
#[derive(Clone, Debug, Default)]
pub struct Networks(Arc<[IpNet]>);

impl Networks {
    /// `169.254.169.254, 10.0.0.0/8, fd00::/8`; empty text is an empty list.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut networks = Vec::new();
        for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let network = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{item:?} is not an address or a CIDR network (e.g. 10.0.0.0/8 or fd00::/8)"))?;
            networks.push(network);
        }
        if networks.len() > NETWORKS_MAX {
            return Err(format!("{} networks given, at most {NETWORKS_MAX}", networks.len()));
        }
        Ok(Networks(networks.into()))
    }

    /// Loopback, IPv4 and IPv6: what `sagaplane dev` lets tenant destinations reach.
    pub fn loopback() -> Self {
        Networks::parse("127.0.0.0/8, ::1").unwrap_or_default()
    }

    fn special_purpose() -> Self {
        Networks::parse(&SPECIAL_PURPOSE.join(",")).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        self.0.iter().any(|network| network.contains(&address))
    }
}

/// Why an address was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// In a network `SAGAPLANE_HTTP_DENY` lists.
    Denied,
    /// Loopback, private, link-local, … — not for a tenant's destinations.
    Internal,
}

/// A connection refused by a policy. Found in an error's source chain, it makes the attempt a
/// definite failure: nothing was sent.
#[derive(Debug)]
pub struct AddressDenied {
    pub host: String,
    pub address: IpAddr,
    pub refusal: Refusal,
}

impl std::fmt::Display for AddressDenied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let literal = self.host.trim_start_matches('[').trim_end_matches(']') == self.address.to_string();
        if literal {
            write!(f, "{} is ", self.address)?;
        } else {
            write!(f, "{} resolves to {}, ", self.host, self.address)?;
        }
        let why = match self.refusal {
            Refusal::Denied => "in a network SAGAPLANE_HTTP_DENY denies",
            Refusal::Internal => {
                "an internal or special-purpose address, which a tenant's destination may not reach \
                 (SAGAPLANE_HTTP_ALLOW re-opens a network)"
            }
        };
        write!(f, "{why}; nothing was sent")
    }
}

impl std::error::Error for AddressDenied {}

/// Which addresses one kind of destination may connect to.
#[derive(Clone, Debug, Default)]
pub struct AddressPolicy {
    deny: Networks,
    /// Internal networks refused (a tenant's destinations), with `allow` re-opening some.
    internal: Option<(Networks, Networks)>,
}

impl AddressPolicy {
    /// The operator's destinations (steps, subscriptions of no tenant): everything but `deny`.
    pub fn operator(deny: Networks) -> Self {
        AddressPolicy { deny, internal: None }
    }

    /// A tenant's destinations: no address in `deny`, and no internal or special-purpose
    /// address unless it is in `allow`.
    pub fn tenant(deny: Networks, allow: Networks) -> Self {
        AddressPolicy { deny, internal: Some((Networks::special_purpose(), allow)) }
    }

    /// Whether the policy refuses nothing (no check is needed at all).
    pub fn is_open(&self) -> bool {
        self.deny.is_empty() && self.internal.is_none()
    }

    /// Why `address` is refused, if it is. An explicit deny wins over an allow.
    pub fn refuses(&self, address: IpAddr) -> Option<Refusal> {
        // `::ffff:10.0.0.1` is 10.0.0.1 on the wire.
        let address = address.to_canonical();
        if self.deny.contains(address) {
            return Some(Refusal::Denied);
        }
        match &self.internal {
            Some((internal, allow)) if internal.contains(address) && !allow.contains(address) => {
                Some(Refusal::Internal)
            }
            _ => None,
        }
    }

    /// The addresses of `host` a destination may connect to; an error naming the first refused
    /// address when every address is refused.
    pub async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
        let allowed: Vec<SocketAddr> = addresses.iter().copied().filter(|a| self.refuses(a.ip()).is_none()).collect();
        match addresses.first() {
            Some(first) if allowed.is_empty() => {
                let refusal = self.refuses(first.ip()).unwrap_or(Refusal::Denied);
                Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    AddressDenied { host: host.to_string(), address: first.ip(), refusal },
                ))
            }
            _ => Ok(allowed),
        }
    }

    /// The refusal for a literal address as a URL's host, if it is refused.
    pub fn check_literal(&self, host: &str) -> Result<(), AddressDenied> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(address) => match self.refuses(address) {
                Some(refusal) => Err(AddressDenied { host: host.to_string(), address, refusal }),
                None => Ok(()),
            },
            Err(_) => Ok(()),
        }
    }

    /// Why `url` may not be requested, when its host is a literal address the policy refuses
    /// (a host name is checked by [`CheckingResolver`] at connect time).
    pub fn denied_url(&self, url: &str) -> Option<String> {
        if self.is_open() {
            return None;
        }
        let url = reqwest::Url::parse(url).ok()?;
        self.check_literal(url.host_str()?).err().map(|denied| denied.to_string())
    }
}

/// A policy's refusal somewhere in `error`'s source chain.
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

/// reqwest's resolver with a policy applied to every name it resolves: the client connects
/// only to the addresses this returns.
#[derive(Clone)]
pub struct CheckingResolver(pub AddressPolicy);

impl reqwest::dns::Resolve for CheckingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            // Port 0: the client puts the URL's port on the addresses it gets.
            let addresses = policy.resolve(name.as_str(), 0).await.map_err(|error| match error.into_inner() {
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

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn parses_networks_and_addresses() {
        let deny = AddressPolicy::operator(Networks::parse(" 10.0.0.0/8, 169.254.169.254 ,fd00::/8,").expect("valid"));
        for (address, refused) in [
            ("10.1.2.3", true),
            ("11.0.0.1", false),
            ("169.254.169.254", true),
            ("169.254.169.253", false),
            ("fd00::1", true),
            ("::ffff:10.0.0.1", true),
            ("2001:db8::1", false),
            ("127.0.0.1", false),
        ] {
            assert_eq!(deny.refuses(ip(address)).is_some(), refused, "{address}");
        }
        assert!(Networks::parse("").expect("empty").is_empty());
        let error = Networks::parse("10.0.0.0/8, internal").expect_err("not a network");
        assert!(error.contains("\"internal\""), "{error}");
        assert!(Networks::parse("10.0.0.0/33").is_err());
        assert!(AddressPolicy::operator(Networks::default()).is_open());
        assert!(!AddressPolicy::tenant(Networks::default(), Networks::default()).is_open());
    }

    #[test]
    fn a_tenants_destinations_reach_the_internet_only() {
        let tenant = AddressPolicy::tenant(Networks::default(), Networks::default());
        for internal in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert_eq!(tenant.refuses(ip(internal)), Some(Refusal::Internal), "{internal}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "1.1.1.1"] {
            assert_eq!(tenant.refuses(ip(public)), None, "{public}");
        }
        // The operator's allow-list re-opens a network; its deny-list still wins.
        let allowed = AddressPolicy::tenant(
            Networks::parse("10.9.0.0/16").expect("deny"),
            Networks::parse("10.0.0.0/8, 127.0.0.1").expect("allow"),
        );
        assert_eq!(allowed.refuses(ip("10.1.2.3")), None);
        assert_eq!(allowed.refuses(ip("127.0.0.1")), None);
        assert_eq!(allowed.refuses(ip("127.0.0.2")), Some(Refusal::Internal));
        assert_eq!(allowed.refuses(ip("10.9.0.1")), Some(Refusal::Denied));
    }

    #[test]
    fn literal_hosts_are_checked() {
        let deny = AddressPolicy::operator(Networks::parse("127.0.0.0/8,::1").expect("valid"));
        assert!(deny.check_literal("127.0.0.1").is_err());
        assert!(deny.check_literal("[::1]").is_err());
        assert!(deny.check_literal("example.com").is_ok());
        assert!(deny.check_literal("10.0.0.1").is_ok());
        let tenant = AddressPolicy::tenant(Networks::default(), Networks::default());
        let refused = tenant.denied_url("http://169.254.169.254/latest/meta-data/").expect("refused");
        assert!(refused.contains("SAGAPLANE_HTTP_ALLOW"), "{refused}");
        assert!(tenant.denied_url("http://[::ffff:7f00:1]:8080/").is_some());
    }

    #[tokio::test]
    async fn names_are_resolved_and_filtered() {
        let deny = AddressPolicy::operator(Networks::parse("127.0.0.0/8,::1").expect("valid"));
        let error = deny.resolve("localhost", 80).await.expect_err("loopback denied");
        assert!(denied_in(&error).is_some(), "{error}");
        let tenant = AddressPolicy::tenant(Networks::default(), Networks::default());
        let error = tenant.resolve("localhost", 80).await.expect_err("loopback is internal");
        assert_eq!(denied_in(&error).map(|d| d.refusal), Some(Refusal::Internal));
        let open = AddressPolicy::default();
        assert!(!open.resolve("localhost", 80).await.expect("resolves").is_empty());
    }
}
