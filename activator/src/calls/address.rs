//! Which addresses callbacks may go to. Callers choose callback URLs, so without a
//! check a callback is a way into the cluster (its pods, services, the node's metadata
//! endpoint). Loopback, link-local, unspecified and multicast addresses are always
//! refused, and so are the ranges given by `--callback-deny-cidr` (the cluster's pod
//! and service ranges), unless `--callback-allow-cidr` names them.

use std::net::IpAddr;

pub use crate::proxies::Cidr;

/// Addresses callbacks may and may not go to.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

impl AddressPolicy {
    /// Why `address` is refused, or None when callbacks may go there.
    pub fn refusal(&self, address: IpAddr) -> Option<&'static str> {
        if self.allow.iter().any(|cidr| cidr.contains(address)) {
            return None;
        }
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        let always = match address {
            IpAddr::V4(v4) => {
                if v4.is_loopback() {
                    Some("a loopback address")
                } else if v4.is_link_local() {
                    Some("a link-local address")
                } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
                    Some("not a unicast address")
                } else {
                    None
                }
            }
            IpAddr::V6(v6) => {
                if v6.is_loopback() {
                    Some("a loopback address")
                } else if v6.is_unicast_link_local() {
                    Some("a link-local address")
                } else if v6.is_unspecified() || v6.is_multicast() {
                    Some("not a unicast address")
                } else {
                    None
                }
            }
        };
        always.or_else(|| {
            self.deny
                .iter()
                .any(|cidr| cidr.contains(address))
                .then_some("in a range refused by --callback-deny-cidr")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().expect("valid range")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("valid address")
    }

    #[test]
    fn ranges_contain_their_addresses_only() {
        assert!(cidr("10.96.0.0/12").contains(ip("10.100.1.2")));
        assert!(!cidr("10.96.0.0/12").contains(ip("10.112.0.1")));
        assert!(cidr("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(cidr("fd00::/8").contains(ip("fd12::1")));
        assert!(!cidr("fd00::/8").contains(ip("10.0.0.1")));
        assert!(cidr("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0.0/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn loopback_link_local_and_denied_ranges_are_refused_unless_allowed() {
        let policy = AddressPolicy {
            allow: vec![cidr("10.244.5.0/24")],
            deny: vec![cidr("10.244.0.0/16"), cidr("10.96.0.0/12")],
        };
        for refused in [
            "127.0.0.1",
            "::1",
            "169.254.169.254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "10.244.1.1",
            "10.96.0.10",
            "0.0.0.0",
        ] {
            assert!(policy.refusal(ip(refused)).is_some(), "{refused}");
        }
        for allowed in ["93.184.216.34", "10.244.5.7", "2606:4700::1"] {
            assert_eq!(policy.refusal(ip(allowed)), None, "{allowed}");
        }
    }
}
