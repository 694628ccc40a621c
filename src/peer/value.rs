//! A peer's value: where and how to encapsulate ([`EncapPeer`], [`Encap`], [`OuterField`]),
//! and its byte layout in the peer tables (`struct lwtun_peer`, `bpf/lwtun.h`).

use std::fmt;
use std::net::IpAddr;

use crate::error::{Error, Result};
use crate::skel::lwt_encap::types::lwtun_peer;

const KIND_IPIP: u8 = 1;
const KIND_GRE: u8 = 2;
const KIND_UDP: u8 = 3;
const FLAG_OUTER_V6: u8 = 1 << 0;
const FLAG_GRE_KEY: u8 = 1 << 1;
const FLAG_GRE_CSUM: u8 = 1 << 2;
const FLAG_TTL_INHERIT: u8 = 1 << 3;
const FLAG_TOS_INHERIT: u8 = 1 << 4;

/// The header that follows the outer IP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Encap {
    /// IP-in-IP: the inner packet directly (protocol 4 for inner IPv4, 41 for inner IPv6).
    Ipip,
    /// GRE (protocol 47, RFC 2784), with the RFC 2890 key field when `key` is set and the
    /// checksum field when `checksum` is.
    ///
    /// The checksum covers the GRE header and the inner packet. lwtun fills it for every packet,
    /// locally sent ones included, whose transport checksum the device finishes only after the
    /// LWT hook: for TCP, UDP and ICMP it is computed for the finished packet from the headers,
    /// for anything else from every byte, and for GSO packets the segmentation writes it per
    /// segment (see `bpf/lwt_encap.bpf.c`). It costs a per-packet sum, so leave it off unless the
    /// path or the far end wants it.
    Gre {
        /// The GRE key, if any.
        key: Option<u32>,
        /// Whether packets carry a GRE checksum.
        checksum: bool,
    },
    /// UDP (FOU): a UDP header to `port`, source port from the flow hash (ECMP entropy), zero
    /// UDP checksum (RFC 6935).
    Udp {
        /// The destination port.
        port: u16,
    },
}

impl Encap {
    /// The kind's name, as `ip … encap` and the `lwtun` command write it: `ipip`, `gre`, `udp`.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::peer::Encap;
    ///
    /// assert_eq!(Encap::Udp { port: 4789 }.name(), "udp");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            Encap::Ipip => "ipip",
            Encap::Gre { .. } => "gre",
            Encap::Udp { .. } => "udp",
        }
    }

    /// Bytes this encapsulation adds after the outer IP header.
    pub fn header_len(&self) -> u32 {
        match self {
            Encap::Ipip => 0,
            Encap::Gre { key, checksum } => {
                4 + if key.is_some() { 4 } else { 0 } + if *checksum { 4 } else { 0 }
            }
            Encap::Udp { .. } => 8,
        }
    }
}

impl fmt::Display for Encap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Encap::Ipip => write!(f, "ipip"),
            Encap::Gre { key, checksum } => {
                write!(f, "gre")?;
                if *checksum {
                    write!(f, " csum")?;
                }
                if let Some(k) = key {
                    write!(f, " key {k}")?;
                }
                Ok(())
            }
            Encap::Udp { port } => write!(f, "udp {port}"),
        }
    }
}

/// An outer TTL / hop limit or TOS / traffic class: a fixed value or the inner packet's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OuterField {
    /// This value on every packet.
    Fixed(u8),
    /// Copied from the inner packet.
    Inherit,
}

/// Where and how to encapsulate packets for a prefix.
///
/// # Examples
///
/// ```
/// use lwtun::peer::{Encap, EncapPeer};
///
/// let peer = EncapPeer::new(
///     "192.0.2.2".parse().unwrap(),
///     "192.0.2.1".parse().unwrap(),
///     Encap::Gre { key: Some(7), checksum: false },
/// )
/// .inherit_tos()
/// .ttl(32);
/// assert_eq!(peer.encap_len(), 20 + 8);
/// assert!(peer.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EncapPeer {
    /// The outer destination: the far tunnel endpoint.
    pub remote: IpAddr,
    /// The outer source: a local address of this host (same family as `remote`).
    pub local: IpAddr,
    /// The encapsulation.
    pub encap: Encap,
    /// The outer TTL / hop limit (default: fixed 64).
    pub ttl: OuterField,
    /// The outer TOS / traffic class (default: fixed 0).
    pub tos: OuterField,
}

impl EncapPeer {
    /// A peer with TTL 64 and TOS 0.
    pub fn new(remote: IpAddr, local: IpAddr, encap: Encap) -> Self {
        EncapPeer {
            remote,
            local,
            encap,
            ttl: OuterField::Fixed(64),
            tos: OuterField::Fixed(0),
        }
    }

    /// A fixed outer TTL / hop limit (0 means 64).
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = OuterField::Fixed(ttl);
        self
    }

    /// The outer TTL / hop limit copied from the inner packet.
    pub fn inherit_ttl(mut self) -> Self {
        self.ttl = OuterField::Inherit;
        self
    }

    /// A fixed outer TOS / traffic class (its DSCP; the ECN bits are copied from the inner
    /// packet, RFC 6040 normal mode).
    pub fn tos(mut self, tos: u8) -> Self {
        self.tos = OuterField::Fixed(tos);
        self
    }

    /// The outer TOS / traffic class copied from the inner packet.
    pub fn inherit_tos(mut self) -> Self {
        self.tos = OuterField::Inherit;
        self
    }

    /// Whether the outer header is IPv6.
    pub fn outer_v6(&self) -> bool {
        self.remote.is_ipv6()
    }

    /// Bytes the encapsulation adds: outer IP header plus [`Encap::header_len`]. A route that
    /// steers into this peer needs at least this much headroom.
    pub fn encap_len(&self) -> u32 {
        (if self.outer_v6() { 40 } else { 20 }) + self.encap.header_len()
    }

    /// Checks the peer: `remote` and `local` of one family, each a host's unicast address (not
    /// unspecified, multicast, broadcast, loopback or in 0.0.0.0/8), a UDP port other than 0.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) naming the problem.
    pub fn validate(&self) -> Result<()> {
        let op = "check tunnel peer";
        if self.remote.is_ipv6() != self.local.is_ipv6() {
            return Err(Error::invalid_input(
                op,
                format!(
                    "remote {} and local {} are of different families: an outer header is IPv4 or IPv6",
                    self.remote, self.local
                ),
            ));
        }
        for (what, a) in [("remote", self.remote), ("local", self.local)] {
            crate::family::endpoint::check_endpoint(op, what, a)?;
        }
        if let Encap::Udp { port: 0 } = self.encap {
            return Err(Error::invalid_input(op, "UDP destination port 0"));
        }
        Ok(())
    }

    pub(crate) fn to_abi(self, slot: u32) -> lwtun_peer {
        let mut v = lwtun_peer {
            slot,
            ..Default::default()
        };
        put_addr(&mut v.remote, self.remote);
        put_addr(&mut v.local, self.local);
        if self.outer_v6() {
            v.flags |= FLAG_OUTER_V6;
        }
        match self.encap {
            Encap::Ipip => v.kind = KIND_IPIP,
            Encap::Gre { key, checksum } => {
                v.kind = KIND_GRE;
                if checksum {
                    v.flags |= FLAG_GRE_CSUM;
                }
                if let Some(k) = key {
                    v.flags |= FLAG_GRE_KEY;
                    v.gre_key = u32::from_ne_bytes(k.to_be_bytes());
                }
            }
            Encap::Udp { port } => {
                v.kind = KIND_UDP;
                v.udp_dport = u16::from_ne_bytes(port.to_be_bytes());
            }
        }
        match self.ttl {
            OuterField::Fixed(t) => v.ttl = t,
            OuterField::Inherit => v.flags |= FLAG_TTL_INHERIT,
        }
        match self.tos {
            OuterField::Fixed(t) => v.tos = t,
            OuterField::Inherit => v.flags |= FLAG_TOS_INHERIT,
        }
        v
    }
}

impl EncapPeer {
    /// Decodes a peer the data plane holds (an adopted table); `None` for an unknown kind.
    pub(crate) fn from_abi(v: &lwtun_peer) -> Option<EncapPeer> {
        let addr = |b: &[u8; 16]| -> IpAddr {
            if v.flags & FLAG_OUTER_V6 != 0 {
                IpAddr::from(*b)
            } else {
                IpAddr::from([b[0], b[1], b[2], b[3]])
            }
        };
        let encap = match v.kind {
            KIND_IPIP => Encap::Ipip,
            KIND_GRE => Encap::Gre {
                key: (v.flags & FLAG_GRE_KEY != 0)
                    .then(|| u32::from_be_bytes(v.gre_key.to_ne_bytes())),
                checksum: v.flags & FLAG_GRE_CSUM != 0,
            },
            KIND_UDP => Encap::Udp {
                port: u16::from_be_bytes(v.udp_dport.to_ne_bytes()),
            },
            _ => return None,
        };
        Some(EncapPeer {
            remote: addr(&v.remote),
            local: addr(&v.local),
            encap,
            ttl: if v.flags & FLAG_TTL_INHERIT != 0 {
                OuterField::Inherit
            } else {
                OuterField::Fixed(v.ttl)
            },
            tos: if v.flags & FLAG_TOS_INHERIT != 0 {
                OuterField::Inherit
            } else {
                OuterField::Fixed(v.tos)
            },
        })
    }
}

impl fmt::Display for EncapPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.encap, self.local, self.remote)
    }
}

fn put_addr(dst: &mut [u8; 16], a: IpAddr) {
    match a {
        IpAddr::V4(v4) => dst[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => *dst = v6.octets(),
    }
}
