//! Trusted proxies: the networks (`--trusted-proxies`) whose connections may bring
//! `X-Forwarded-*` and `Forwarded` headers the activator keeps. From anyone else those
//! headers are replaced, so a caller cannot tell a Function it came from elsewhere. Also
//! the client address as the trusted hops report it, for per-client rules.

use std::net::IpAddr;
use std::str::FromStr;

use http::HeaderMap;
use http::header::HeaderName;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// A network in CIDR notation, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a `--trusted-proxies` entry cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address or CIDR network (such as 10.0.0.0/8 or fd00::/8)")]
pub struct InvalidCidr(pub String);

impl FromStr for Cidr {
    type Err = InvalidCidr;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidCidr(text.to_owned());
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let network: IpAddr = address.parse().map_err(|_| invalid())?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.parse::<u8>().map_err(|_| invalid())?,
            None => bits,
        };
        if prefix > bits {
            return Err(invalid());
        }
        Ok(Self { network, prefix })
    }
}

impl Cidr {
    /// Whether `address` lies in the network; an IPv4-mapped IPv6 address counts as its
    /// IPv4 address.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

/// The networks whose forwarding headers are believed; none by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<Cidr>,
}

impl TrustedProxies {
    pub fn new(networks: Vec<Cidr>) -> Self {
        Self { networks }
    }

    /// Whether a connection from `peer` comes from a trusted proxy.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.networks.iter().any(|network| network.contains(peer))
    }

    /// The client's address as the trusted hops report it: walking `X-Forwarded-For`
    /// from the right (the hop nearest the activator), the first address that is not a
    /// trusted proxy; `peer` itself when it is not trusted, and the leftmost address when
    /// every hop is trusted. An unparsable entry stops the walk at the hop that wrote it.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.trusts(client) {
            return client;
        }
        let hops = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.into_iter().rev() {
            let Ok(address) = hop.parse::<IpAddr>() else {
                return client;
            };
            client = address.to_canonical();
            if !self.trusts(client) {
                return client;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn networks_of_both_families_match_by_prefix() {
        let ten: Cidr = "10.0.0.0/8".parse().expect("cidr");
        assert!(ten.contains(ip("10.200.1.2")));
        assert!(ten.contains(ip("::ffff:10.1.1.1")));
        assert!(!ten.contains(ip("11.0.0.1")));
        let one: Cidr = "192.0.2.7".parse().expect("cidr");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = "fd00::/8".parse().expect("cidr");
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().expect("cidr");
        assert!(all.contains(ip("203.0.113.9")));
        for bad in ["10.0.0.0/33", "proxy", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().expect("cidr")]);
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            "198.51.100.1, 203.0.113.5".parse().expect("value"),
        );
        headers.append("x-forwarded-for", "10.1.1.1".parse().expect("value"));
        assert_eq!(
            trusted.client_ip(ip("10.0.0.2"), &headers),
            ip("203.0.113.5")
        );
        // An untrusted peer's own claims count for nothing.
        assert_eq!(
            trusted.client_ip(ip("192.0.2.1"), &headers),
            ip("192.0.2.1")
        );
        // A trusted peer that says nothing is the client.
        assert_eq!(
            trusted.client_ip(ip("10.0.0.2"), &HeaderMap::new()),
            ip("10.0.0.2")
        );
    }
}
