//! Tunnel peers: [`EncapPeer`] (where and how to encapsulate) and [`PeerTable`] (the LPM tables
//! the encap program reads).
//!
//! ```text
//!  inner destination ──► PeerTable (LPM, IPv4 and IPv6 tables) ──► EncapPeer
//!     10.20.3.4              10.20.0.0/16                        GRE key 7 to 192.0.2.2
//! ```
//!
//! A peer says what outer header a packet gets: outer source and destination (both IPv4 or both
//! IPv6), the encapsulation ([`Encap`]: IP-in-IP, GRE with an optional key, UDP/FOU to a port),
//! and the outer TTL and TOS, fixed or inherited from the inner packet. The inner family picks
//! the table: an IPv4 prefix lives in the IPv4 table, an IPv6 prefix in the IPv6 one; either may
//! point at an IPv4 or an IPv6 outer header (4in4, 6in4, 4in6, 6in6).
//!
//! Each peer has its own per-CPU counters ([`PeerStats`]); a packet whose destination matches no
//! peer follows the table's [`MissPolicy`] and is counted ([`MissCounters`]).
//!
//! The table lives in a loaded [`Tunnel`](crate::tunnel::Tunnel); get it with
//! [`Tunnel::peers_mut`](crate::tunnel::Tunnel::peers_mut).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::abi::{self, Pod};
use crate::error::{Error, ErrorKind, Result};
use crate::program::sum_percpu;
use crate::skel::lwt_encap::types::{
    lwtun_encap_config, lwtun_peer, lwtun_peer_key4, lwtun_peer_key6, lwtun_peer_stats,
};

// SAFETY: `struct lwtun_peer_key4` is u32 + [u8; 4] (8 bytes, asserted in lwtun.h).
unsafe impl Pod for lwtun_peer_key4 {}
// SAFETY: `struct lwtun_peer_key6` is u32 + [u8; 16] (20 bytes, asserted).
unsafe impl Pod for lwtun_peer_key6 {}
// SAFETY: `struct lwtun_peer` is integers and byte arrays with explicit padding (48, asserted).
unsafe impl Pod for lwtun_peer {}
// SAFETY: `struct lwtun_peer_stats` is three u64s (24 bytes, asserted).
unsafe impl Pod for lwtun_peer_stats {}
// SAFETY: `struct lwtun_encap_config` is four u32s (16 bytes, asserted).
unsafe impl Pod for lwtun_encap_config {}
// SAFETY: `struct lwtun_encap_preview` is two u32s and a byte array (72 bytes, asserted).
unsafe impl Pod for crate::skel::lwt_encap::types::lwtun_encap_preview {}

const KIND_IPIP: u8 = 1;
const KIND_GRE: u8 = 2;
const KIND_UDP: u8 = 3;
const FLAG_OUTER_V6: u8 = 1 << 0;
const FLAG_GRE_KEY: u8 = 1 << 1;
const FLAG_GRE_CSUM: u8 = 1 << 2;
const FLAG_TTL_INHERIT: u8 = 1 << 3;
const FLAG_TOS_INHERIT: u8 = 1 << 4;
const LWTUN_MAGIC: u32 = 0x4c57_544e;
const LWTUN_ABI_VERSION: u32 = 1;
const EV_MISS_DROP_V4: u32 = 0;
const EV_MISS_DROP_V6: u32 = 1;
const EV_MISS_PASS_V4: u32 = 2;
const EV_MISS_PASS_V6: u32 = 3;
const EV_NOT_IP: u32 = 4;

/// The header that follows the outer IP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

    /// Checks the peer: `remote` and `local` of one family, neither unspecified nor multicast,
    /// a UDP port other than 0.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] naming the problem.
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
            if a.is_unspecified() || a.is_multicast() {
                return Err(Error::invalid_input(
                    op,
                    format!("{what} {a} is not a unicast address"),
                ));
            }
        }
        if let Encap::Udp { port: 0 } = self.encap {
            return Err(Error::invalid_input(op, "UDP destination port 0"));
        }
        Ok(())
    }

    fn to_abi(self, slot: u32) -> lwtun_peer {
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
    fn from_abi(v: &lwtun_peer) -> Option<EncapPeer> {
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

/// What the encap does with a packet whose inner destination matches no peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MissPolicy {
    /// Drop it and count it (the default): nothing leaks unencapsulated.
    #[default]
    Drop,
    /// Send it on unencapsulated, by the route it matched, and count it.
    Pass,
}

/// The counters of one peer, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PeerStats {
    /// Packets encapsulated (wire packets: a GSO packet counts its segments).
    pub packets: u64,
    /// Inner bytes encapsulated.
    pub bytes: u64,
    /// Packets that matched the peer but were dropped: the encap was refused.
    pub errors: u64,
}

/// The table-wide counters: misses by policy and family, and non-IP packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MissCounters {
    /// IPv4 packets without a peer, dropped.
    pub dropped_v4: u64,
    /// IPv6 packets without a peer, dropped.
    pub dropped_v6: u64,
    /// IPv4 packets without a peer, passed on unencapsulated.
    pub passed_v4: u64,
    /// IPv6 packets without a peer, passed on unencapsulated.
    pub passed_v6: u64,
    /// Packets that were not IP, or truncated: dropped.
    pub not_ip: u64,
}

/// The peer tables of a loaded tunnel: an IPv4 and an IPv6 LPM trie keyed by inner destination
/// prefix, per-peer counters, and the miss policy.
///
/// The table keeps a copy of what it wrote, so [`PeerTable::get`] and [`PeerTable::iter`] do not
/// read the kernel; writes go to the kernel first and are recorded only when they succeed.
///
/// # Examples
///
/// ```no_run
/// use lwtun::peer::{Encap, EncapPeer, MissPolicy};
/// use lwtun::tunnel::Tunnel;
///
/// let mut tunnel = Tunnel::load()?;
/// let peers = tunnel.peers_mut();
/// peers.insert(
///     "10.20.0.0/16".parse().unwrap(),
///     EncapPeer::new("192.0.2.2".parse().unwrap(), "192.0.2.1".parse().unwrap(), Encap::Ipip),
/// )?;
/// peers.set_miss_policy(false, MissPolicy::Pass)?;
/// println!("{:?}", peers.stats("10.20.0.0/16".parse().unwrap())?);
/// # Ok::<(), lwtun::Error>(())
/// ```
pub struct PeerTable {
    v4: MapHandle,
    v6: MapHandle,
    stats: MapHandle,
    events: MapHandle,
    config: MapHandle,
    capacity: u32,
    peers: HashMap<IpNetwork, (EncapPeer, u32)>,
    free_slots: Vec<u32>,
    next_slot: u32,
    count_v4: u32,
    count_v6: u32,
}

impl fmt::Debug for PeerTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTable")
            .field("capacity", &self.capacity)
            .field("peers", &self.peers.len())
            .finish()
    }
}

fn normalize(prefix: IpNetwork) -> IpNetwork {
    // Host bits are cleared so that 10.20.3.4/16 and 10.20.0.0/16 name the same entry.
    IpNetwork::new(prefix.network(), prefix.prefix()).unwrap_or(prefix)
}

fn key_bytes(prefix: &IpNetwork) -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    put_key(&mut v, prefix);
    v
}

/// Appends the LPM key of `prefix` (`struct lwtun_peer_key4`/`key6`) to `out`, without
/// allocating.
fn put_key(out: &mut Vec<u8>, prefix: &IpNetwork) {
    match prefix {
        IpNetwork::V4(n) => out.extend_from_slice(abi::as_bytes(&lwtun_peer_key4 {
            prefixlen: u32::from(n.prefix()),
            addr: n.network().octets(),
        })),
        IpNetwork::V6(n) => out.extend_from_slice(abi::as_bytes(&lwtun_peer_key6 {
            prefixlen: u32::from(n.prefix()),
            addr: n.network().octets(),
        })),
    }
}

impl PeerTable {
    /// Wraps the maps of a loaded encap object (crate-internal: [`crate::tunnel::Tunnel`] does).
    pub(crate) fn new(object: &libbpf_rs::Object, capacity: u32, adopt: bool) -> Result<Self> {
        let handle = |name: &str| -> Result<MapHandle> {
            let map = object
                .maps()
                .find(|m| m.name() == name)
                .ok_or_else(|| Error::not_found("open peer table", format!("map {name}")))?;
            MapHandle::try_from(&map).map_err(|e| Error::bpf("open peer table", e))
        };
        let mut table = PeerTable {
            v4: handle("peers_v4")?,
            v6: handle("peers_v6")?,
            stats: handle("peer_stats")?,
            events: handle("events")?,
            config: handle("config")?,
            capacity,
            peers: HashMap::new(),
            free_slots: Vec::new(),
            next_slot: 0,
            count_v4: 0,
            count_v6: 0,
        };
        if adopt && table.read_config()?.magic == LWTUN_MAGIC {
            table.adopt()?;
        } else {
            table.write_config(MissPolicy::Drop, MissPolicy::Drop)?;
        }
        Ok(table)
    }

    /// Reads back the peers of adopted (pinned) tables into the table's copy.
    fn adopt(&mut self) -> Result<()> {
        let op = "adopt pinned peer table";
        let cfg = self.read_config()?;
        if cfg.version != LWTUN_ABI_VERSION {
            return Err(Error::other(
                ErrorKind::InvalidInput,
                op,
                format!(
                    "pinned tables have ABI version {}, this lwtun speaks {LWTUN_ABI_VERSION}: remove the pins",
                    cfg.version
                ),
            ));
        }
        let mut used = std::collections::HashSet::new();
        let mut found = Vec::new();
        for v6 in [false, true] {
            let map = if v6 { &self.v6 } else { &self.v4 };
            for key in map.keys() {
                let Some(value) = map
                    .lookup(&key, MapFlags::ANY)
                    .map_err(|e| Error::bpf(op, e))?
                else {
                    continue; // removed meanwhile
                };
                let v: lwtun_peer = abi::from_bytes(&value).ok_or_else(|| {
                    Error::other(ErrorKind::Kernel, op, "peer value of the wrong size")
                })?;
                let prefix = if v6 {
                    let k: lwtun_peer_key6 = abi::from_bytes(&key).ok_or_else(|| {
                        Error::other(ErrorKind::Kernel, op, "IPv6 key of the wrong size")
                    })?;
                    IpNetwork::new(IpAddr::from(k.addr), k.prefixlen as u8)
                } else {
                    let k: lwtun_peer_key4 = abi::from_bytes(&key).ok_or_else(|| {
                        Error::other(ErrorKind::Kernel, op, "IPv4 key of the wrong size")
                    })?;
                    IpNetwork::new(IpAddr::from(k.addr), k.prefixlen as u8)
                }
                .map_err(|e| Error::other(ErrorKind::Kernel, op, e.to_string()))?;
                let peer = EncapPeer::from_abi(&v).ok_or_else(|| {
                    Error::other(
                        ErrorKind::Kernel,
                        op,
                        format!("{prefix}: unknown encap kind {}", v.kind),
                    )
                })?;
                used.insert(v.slot);
                found.push((prefix, peer, v.slot));
            }
        }
        for (prefix, peer, slot) in found {
            self.peers.insert(prefix, (peer, slot));
            *self.count_of(&prefix) += 1;
        }
        self.next_slot = used.iter().max().map_or(0, |m| m + 1);
        self.free_slots = (0..self.next_slot).filter(|s| !used.contains(s)).collect();
        Ok(())
    }

    fn write_config(&self, v4: MissPolicy, v6: MissPolicy) -> Result<()> {
        let code = |p| match p {
            MissPolicy::Drop => 0,
            MissPolicy::Pass => 1,
        };
        let cfg = lwtun_encap_config {
            magic: LWTUN_MAGIC,
            version: LWTUN_ABI_VERSION,
            miss_v4: code(v4),
            miss_v6: code(v6),
        };
        self.config
            .update(&0u32.to_ne_bytes(), abi::as_bytes(&cfg), MapFlags::ANY)
            .map_err(|e| Error::bpf("write tunnel config", e))
    }

    fn read_config(&self) -> Result<lwtun_encap_config> {
        let bytes = self
            .config
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::bpf("read tunnel config", e))?
            .unwrap_or_default();
        abi::from_bytes(&bytes).ok_or_else(|| {
            Error::other(
                ErrorKind::Kernel,
                "read tunnel config",
                "config entry of the wrong size",
            )
        })
    }

    /// Sets the miss policy of the IPv4 (`v6 == false`) or IPv6 table. Takes effect for the next
    /// packet.
    ///
    /// # Errors
    ///
    /// The kernel's error writing the config map.
    pub fn set_miss_policy(&mut self, v6: bool, policy: MissPolicy) -> Result<()> {
        let (mut p4, mut p6) = (self.miss_policy(false)?, self.miss_policy(true)?);
        if v6 {
            p6 = policy;
        } else {
            p4 = policy;
        }
        self.write_config(p4, p6)
    }

    /// The miss policy of the IPv4 (`v6 == false`) or IPv6 table.
    ///
    /// # Errors
    ///
    /// The kernel's error reading the config map.
    pub fn miss_policy(&self, v6: bool) -> Result<MissPolicy> {
        let cfg = self.read_config()?;
        let code = if v6 { cfg.miss_v6 } else { cfg.miss_v4 };
        Ok(if code == 1 {
            MissPolicy::Pass
        } else {
            MissPolicy::Drop
        })
    }

    /// How many peers each table holds at most.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Peers in both tables.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether both tables are empty.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The peer for exactly `prefix` (not a longest-prefix lookup).
    pub fn get(&self, prefix: IpNetwork) -> Option<&EncapPeer> {
        self.peers.get(&normalize(prefix)).map(|(p, _)| p)
    }

    /// The peer a packet to `dst` would use: the longest matching prefix, as the data plane
    /// looks it up.
    pub fn lookup(&self, dst: IpAddr) -> Option<(IpNetwork, &EncapPeer)> {
        self.peers
            .iter()
            .filter(|(n, _)| n.contains(dst))
            .max_by_key(|(n, _)| n.prefix())
            .map(|(n, (p, _))| (*n, p))
    }

    /// Every peer, IPv4 prefixes first, in prefix order.
    pub fn iter(&self) -> impl Iterator<Item = (IpNetwork, &EncapPeer)> + '_ {
        let mut all: Vec<(IpNetwork, &EncapPeer)> =
            self.peers.iter().map(|(n, (p, _))| (*n, p)).collect();
        all.sort_unstable_by_key(|(n, _)| *n);
        all.into_iter()
    }

    /// The largest [`EncapPeer::encap_len`] of the peers, or `None` for an empty table.
    pub fn max_encap_len(&self) -> Option<u32> {
        self.peers.values().map(|(p, _)| p.encap_len()).max()
    }

    fn map_of(&self, prefix: &IpNetwork) -> &MapHandle {
        if prefix.is_ipv4() {
            &self.v4
        } else {
            &self.v6
        }
    }

    fn count_of(&mut self, prefix: &IpNetwork) -> &mut u32 {
        if prefix.is_ipv4() {
            &mut self.count_v4
        } else {
            &mut self.count_v6
        }
    }

    fn check_room(&self, prefix: &IpNetwork, more: u32, op: &str) -> Result<()> {
        let count = if prefix.is_ipv4() {
            self.count_v4
        } else {
            self.count_v6
        };
        if count + more > self.capacity {
            return Err(Error::other(
                ErrorKind::InvalidInput,
                op.to_string(),
                format!(
                    "the {} table is full ({} peers): load the tunnel with a larger capacity",
                    if prefix.is_ipv4() { "IPv4" } else { "IPv6" },
                    self.capacity
                ),
            ));
        }
        Ok(())
    }

    fn take_slot(&mut self) -> Result<(u32, bool)> {
        if let Some(s) = self.free_slots.pop() {
            return Ok((s, true));
        }
        if self.next_slot >= self.capacity.saturating_mul(2) {
            return Err(Error::other(
                ErrorKind::InvalidInput,
                "allocate peer counters",
                "no counter slot left",
            ));
        }
        self.next_slot += 1;
        Ok((self.next_slot - 1, false))
    }

    fn zero_stats(&self, slot: u32) -> Result<()> {
        let cpus = libbpf_rs::num_possible_cpus().map_err(|e| Error::bpf("count CPUs", e))?;
        let zero = vec![vec![0u8; std::mem::size_of::<lwtun_peer_stats>()]; cpus];
        self.stats
            .update_percpu(&slot.to_ne_bytes(), &zero, MapFlags::ANY)
            .map_err(|e| Error::bpf("reset peer counters", e))
    }

    /// Adds a peer for `prefix` (host bits are ignored).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Exists`] when `prefix` has a peer already (use [`PeerTable::replace`]);
    /// [`ErrorKind::InvalidInput`] for an invalid peer or a full table; the kernel's error
    /// otherwise. Nothing changes on error.
    pub fn insert(&mut self, prefix: IpNetwork, peer: EncapPeer) -> Result<()> {
        let prefix = normalize(prefix);
        let op = "insert tunnel peer";
        peer.validate()?;
        if self.peers.contains_key(&prefix) {
            return Err(Error::other(
                ErrorKind::Exists,
                op,
                format!("{prefix} has a peer already: replace it instead"),
            ));
        }
        self.check_room(&prefix, 1, op)?;
        let (slot, reused) = self.take_slot()?;
        let write = (|| {
            if reused {
                self.zero_stats(slot)?;
            }
            self.map_of(&prefix)
                .update(
                    &key_bytes(&prefix),
                    abi::as_bytes(&peer.to_abi(slot)),
                    MapFlags::NO_EXIST,
                )
                .map_err(|e| Error::bpf(op, e).with_object(prefix.to_string()))
        })();
        if let Err(e) = write {
            self.free_slots.push(slot);
            return Err(e);
        }
        self.peers.insert(prefix, (peer, slot));
        *self.count_of(&prefix) += 1;
        Ok(())
    }

    /// Sets the peer for `prefix`, adding it or replacing the one there. A replaced peer keeps its
    /// counters, and the change is atomic for packets: each one sees the old or the new peer.
    ///
    /// # Errors
    ///
    /// As [`PeerTable::insert`], without `Exists`.
    pub fn replace(&mut self, prefix: IpNetwork, peer: EncapPeer) -> Result<()> {
        let prefix = normalize(prefix);
        let Some(&(_, slot)) = self.peers.get(&prefix) else {
            return self.insert(prefix, peer);
        };
        peer.validate()?;
        self.map_of(&prefix)
            .update(
                &key_bytes(&prefix),
                abi::as_bytes(&peer.to_abi(slot)),
                MapFlags::EXIST,
            )
            .map_err(|e| Error::bpf("replace tunnel peer", e).with_object(prefix.to_string()))?;
        self.peers.insert(prefix, (peer, slot));
        Ok(())
    }

    /// Removes the peer of `prefix` and returns it; packets to it then follow the longest
    /// remaining prefix, or the miss policy.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when `prefix` has no peer.
    pub fn remove(&mut self, prefix: IpNetwork) -> Result<EncapPeer> {
        let prefix = normalize(prefix);
        let Some(&(peer, slot)) = self.peers.get(&prefix) else {
            return Err(Error::not_found(
                "remove tunnel peer",
                format!("peer for {prefix}"),
            ));
        };
        self.map_of(&prefix)
            .delete(&key_bytes(&prefix))
            .map_err(|e| Error::bpf("remove tunnel peer", e).with_object(prefix.to_string()))?;
        self.peers.remove(&prefix);
        self.free_slots.push(slot);
        *self.count_of(&prefix) -= 1;
        Ok(peer)
    }

    /// Adds many peers with one `BPF_MAP_UPDATE_BATCH` per table (IPv4 and IPv6). Prefixes must
    /// be new and distinct.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] (checked before anything is written) for an invalid peer, a
    /// duplicate or existing prefix, or too little room; the kernel's error otherwise, in which
    /// case the peers of the batch that were written are removed again.
    pub fn insert_batch(&mut self, peers: &[(IpNetwork, EncapPeer)]) -> Result<()> {
        let op = "insert tunnel peers (batch)";
        let (mut n4, mut n6) = (0u32, 0u32);
        let mut sorted: Vec<IpNetwork> = Vec::with_capacity(peers.len());
        for (prefix, peer) in peers {
            let prefix = normalize(*prefix);
            peer.validate()?;
            if self.peers.contains_key(&prefix) {
                return Err(Error::invalid_input(
                    op,
                    format!("{prefix} has a peer already"),
                ));
            }
            sorted.push(prefix);
            if prefix.is_ipv4() {
                n4 += 1;
            } else {
                n6 += 1;
            }
        }
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::invalid_input(
                op,
                format!("{} is twice in the batch", w[0]),
            ));
        }
        drop(sorted);
        self.check_room(&"0.0.0.0/0".parse().unwrap(), n4, op)?;
        self.check_room(&"::/0".parse().unwrap(), n6, op)?;

        let mut assigned = Vec::with_capacity(peers.len());
        for (prefix, peer) in peers {
            let (slot, reused) = match self.take_slot() {
                Ok(s) => s,
                Err(e) => {
                    self.free_slots.extend(assigned.iter().map(|(_, _, s)| *s));
                    return Err(e);
                }
            };
            if reused {
                if let Err(e) = self.zero_stats(slot) {
                    self.free_slots.push(slot);
                    self.free_slots.extend(assigned.iter().map(|(_, _, s)| *s));
                    return Err(e);
                }
            }
            assigned.push((normalize(*prefix), *peer, slot));
        }
        let mut written: Vec<IpNetwork> = Vec::new();
        for v6 in [false, true] {
            let n = if v6 { n6 } else { n4 } as usize;
            let key_len = if v6 { 20 } else { 8 };
            let mut keys = Vec::with_capacity(n * key_len);
            let mut values = Vec::with_capacity(n * std::mem::size_of::<lwtun_peer>());
            let mut count = 0u32;
            for (prefix, peer, slot) in assigned.iter().filter(|(p, _, _)| p.is_ipv6() == v6) {
                put_key(&mut keys, prefix);
                values.extend_from_slice(abi::as_bytes(&peer.to_abi(*slot)));
                count += 1;
            }
            if count == 0 {
                continue;
            }
            let map = if v6 { &self.v6 } else { &self.v4 };
            if let Err(e) = map.update_batch(&keys, &values, count, MapFlags::ANY, MapFlags::ANY) {
                // Undo: the other table's part, and whatever of this one landed.
                for prefix in written.iter().chain(
                    assigned
                        .iter()
                        .filter(|(p, _, _)| p.is_ipv6() == v6)
                        .map(|(p, _, _)| p),
                ) {
                    let _ = self.map_of(prefix).delete(&key_bytes(prefix));
                }
                self.free_slots.extend(assigned.iter().map(|(_, _, s)| *s));
                return Err(Error::bpf(op, e));
            }
            written.extend(
                assigned
                    .iter()
                    .filter(|(p, _, _)| p.is_ipv6() == v6)
                    .map(|(p, _, _)| *p),
            );
        }
        self.peers.reserve(assigned.len());
        for (prefix, peer, slot) in assigned {
            self.peers.insert(prefix, (peer, slot));
        }
        self.count_v4 += n4;
        self.count_v6 += n6;
        Ok(())
    }

    /// Removes many peers with one `BPF_MAP_DELETE_BATCH` per table.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] (checked before anything is removed) when a prefix has no peer;
    /// the kernel's error otherwise.
    pub fn remove_batch(&mut self, prefixes: &[IpNetwork]) -> Result<()> {
        let op = "remove tunnel peers (batch)";
        let prefixes: Vec<IpNetwork> = prefixes.iter().map(|p| normalize(*p)).collect();
        if let Some(p) = prefixes.iter().find(|p| !self.peers.contains_key(p)) {
            return Err(Error::not_found(op, format!("peer for {p}")));
        }
        for v6 in [false, true] {
            let (mut keys, mut count) = (Vec::new(), 0u32);
            for p in prefixes.iter().filter(|p| p.is_ipv6() == v6) {
                keys.extend_from_slice(&key_bytes(p));
                count += 1;
            }
            if count == 0 {
                continue;
            }
            let map = if v6 { &self.v6 } else { &self.v4 };
            map.delete_batch(&keys, count, MapFlags::ANY, MapFlags::ANY)
                .map_err(|e| Error::bpf(op, e))?;
            for p in prefixes.iter().filter(|p| p.is_ipv6() == v6) {
                if let Some((_, slot)) = self.peers.remove(p) {
                    self.free_slots.push(slot);
                    *self.count_of(p) -= 1;
                }
            }
        }
        Ok(())
    }

    /// The counters of the peer of `prefix`, summed over CPUs.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when `prefix` has no peer; the kernel's error reading the map.
    pub fn stats(&self, prefix: IpNetwork) -> Result<PeerStats> {
        let prefix = normalize(prefix);
        let op = "read peer counters";
        let &(_, slot) = self
            .peers
            .get(&prefix)
            .ok_or_else(|| Error::not_found(op, format!("peer for {prefix}")))?;
        let values = self
            .stats
            .lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::bpf(op, e))?
            .unwrap_or_default();
        let mut total = PeerStats::default();
        for v in values {
            let s: lwtun_peer_stats = abi::from_bytes(&v).ok_or_else(|| {
                Error::other(ErrorKind::Kernel, op, "counter value of the wrong size")
            })?;
            total.packets += s.packets;
            total.bytes += s.bytes;
            total.errors += s.errors;
        }
        Ok(total)
    }

    /// The miss and non-IP counters.
    ///
    /// # Errors
    ///
    /// The kernel's error reading the map.
    pub fn miss_counters(&self) -> Result<MissCounters> {
        let op = "read tunnel miss counters";
        let get = |i| sum_percpu(&self.events, i, op).map(|c| c.packets);
        Ok(MissCounters {
            dropped_v4: get(EV_MISS_DROP_V4)?,
            dropped_v6: get(EV_MISS_DROP_V6)?,
            passed_v4: get(EV_MISS_PASS_V4)?,
            passed_v6: get(EV_MISS_PASS_V6)?,
            not_ip: get(EV_NOT_IP)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_round_trip_through_the_abi() {
        let v4 = |s: &str| -> IpAddr { s.parse().unwrap() };
        let peers = [
            EncapPeer::new(v4("192.0.2.2"), v4("192.0.2.1"), Encap::Ipip),
            EncapPeer::new(
                v4("192.0.2.2"),
                v4("192.0.2.1"),
                Encap::Gre {
                    key: None,
                    checksum: false,
                },
            )
            .ttl(3),
            EncapPeer::new(
                v4("2001:db8::2"),
                v4("2001:db8::1"),
                Encap::Gre {
                    key: Some(0x0102_0304),
                    checksum: true,
                },
            )
            .inherit_ttl()
            .tos(0x28),
            EncapPeer::new(
                v4("2001:db8::2"),
                v4("2001:db8::1"),
                Encap::Udp { port: 0x1234 },
            )
            .inherit_tos(),
        ];
        for (slot, p) in peers.iter().enumerate() {
            let abi = p.to_abi(slot as u32);
            assert_eq!(abi.slot, slot as u32);
            assert_eq!(EncapPeer::from_abi(&abi), Some(*p), "{p}");
        }
        // Network byte order on the wire side.
        let gre = peers[2].to_abi(0);
        assert_eq!(gre.gre_key.to_ne_bytes(), [1, 2, 3, 4]);
        let udp = peers[3].to_abi(0);
        assert_eq!(udp.udp_dport.to_ne_bytes(), [0x12, 0x34]);
        assert_eq!(
            abi::as_bytes(&gre).len(),
            48,
            "struct lwtun_peer is 48 bytes"
        );
    }

    #[test]
    fn validation_and_lengths() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let six: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(EncapPeer::new(b, a, Encap::Ipip).encap_len(), 20);
        assert_eq!(
            EncapPeer::new(
                six,
                six,
                Encap::Gre {
                    key: Some(1),
                    checksum: false
                }
            )
            .encap_len(),
            48
        );
        assert_eq!(
            EncapPeer::new(b, six, Encap::Ipip)
                .validate()
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidInput
        );
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        assert!(EncapPeer::new(any, a, Encap::Ipip).validate().is_err());
        let mcast: IpAddr = "224.0.0.1".parse().unwrap();
        assert!(EncapPeer::new(mcast, a, Encap::Ipip).validate().is_err());
        assert!(EncapPeer::new(b, a, Encap::Udp { port: 0 })
            .validate()
            .is_err());
        assert_eq!(
            normalize("10.1.2.3/16".parse().unwrap()),
            "10.1.0.0/16".parse().unwrap()
        );
    }
}
