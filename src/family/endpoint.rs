//! Which addresses can be a tunnel's endpoint: the checks every family that takes an underlay
//! address (a peer's remote and local, a decap's local endpoints and peer prefixes, a redirect's
//! tunnel key) makes before it writes one into a table.

use crate::error::{Error, Result};

/// Refuses an outer (underlay) address a tunnel endpoint cannot have: unspecified, multicast,
/// the IPv4 limited broadcast, loopback (a packet to or from it never leaves the host), the IPv4
/// "this network" block 0.0.0.0/8, and IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`). `what`
/// names the address's role ("remote", "local").
pub(crate) fn check_endpoint(op: &str, what: &str, addr: std::net::IpAddr) -> Result<()> {
    use std::net::IpAddr;
    let why = match addr {
        a if a.is_unspecified() => Some("unspecified"),
        a if a.is_multicast() => Some("multicast"),
        a if a.is_loopback() => Some("loopback: packets to or from it never leave this host"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the limited broadcast address"),
        IpAddr::V4(a) if a.octets()[0] == 0 => Some("in 0.0.0.0/8 (\"this network\")"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            Some("an IPv4-mapped IPv6 address, which no packet carries: give the IPv4 address")
        }
        _ => None,
    };
    match why {
        Some(why) => Err(Error::invalid_input(
            op,
            format!(
                "{what} {addr} is not a unicast address of a host ({why}): give the underlay \
                 address of a tunnel endpoint"
            ),
        )),
        None => Ok(()),
    }
}

/// Refuses a prefix of outer sources that holds no host a tunnel packet can come from: only
/// multicast, loopback or broadcast addresses, or the unspecified address alone.
pub(crate) fn check_source_prefix(op: &str, prefix: &ipnetwork::IpNetwork) -> Result<()> {
    use ipnetwork::IpNetwork;
    let why = match prefix {
        IpNetwork::V4(p) => {
            let first = p.network().octets()[0];
            if p.prefix() >= 4 && first & 0xf0 == 0xe0 {
                Some("multicast addresses")
            } else if p.prefix() >= 8 && first == 127 {
                Some("loopback addresses")
            } else if p.prefix() == 32 && p.network().is_broadcast() {
                Some("the limited broadcast address")
            } else if p.prefix() == 32 && p.network().is_unspecified() {
                Some("the unspecified address")
            } else {
                None
            }
        }
        IpNetwork::V6(p) => {
            if p.prefix() >= 8 && p.network().is_multicast() {
                Some("multicast addresses")
            } else if p.prefix() == 128 && p.network().is_loopback() {
                Some("the loopback address")
            } else if p.prefix() == 128 && p.network().is_unspecified() {
                Some("the unspecified address")
            } else {
                None
            }
        }
    };
    match why {
        Some(why) => Err(Error::invalid_input(
            op,
            format!(
                "{prefix} holds only {why}, which no tunnel packet comes from: give \
                 the underlay prefix of the peers"
            ),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_a_hosts_unicast_address() {
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "ff02::1",
            "::ffff:10.0.0.1",
        ] {
            let e = check_endpoint("t", "remote", bad.parse().unwrap()).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
        for good in ["10.0.0.1", "192.0.2.255", "fd00::1", "2001:db8::1"] {
            check_endpoint("t", "remote", good.parse().unwrap()).unwrap();
        }
    }

    #[test]
    fn source_prefixes_must_hold_a_host() {
        for bad in [
            "224.0.0.0/4",
            "239.1.0.0/16",
            "127.0.0.0/8",
            "255.255.255.255/32",
            "0.0.0.0/32",
            "ff00::/8",
            "::1/128",
            "::/128",
        ] {
            let e = check_source_prefix("t", &bad.parse().unwrap()).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
        for good in [
            "0.0.0.0/0",
            "192.0.0.0/3",
            "::/0",
            "10.1.0.0/16",
            "fd00::/8",
        ] {
            check_source_prefix("t", &good.parse().unwrap()).unwrap();
        }
    }
}
