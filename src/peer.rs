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

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::abi::{self, Pod};
use crate::error::{Error, ErrorKind, Result};
use crate::family::lpm::{key as key_bytes, normalize};
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

pub use crate::family::MissPolicy;

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
/// Kernel: Linux 5.17+ (its maps come with the programs of [`Tunnel`](crate::tunnel::Tunnel); LPM trie 4.11, batch operations on it 5.13).
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
    /// The table's copy: each prefix's counter slot; the peer is in `slot_peers` at that slot.
    /// Kept apart so that the map's entries are small (22 bytes instead of 76 with the peer):
    /// the copy of a batch of a million peers is made in half the time (38 ms instead of 80
    /// here, most of it spent faulting in fresh memory), on a CPU the kernel's writers want.
    peers: BTreeMap<IpNetwork, u32>,
    /// The peer of every slot handed out; a free slot keeps its last peer until it is reused.
    slot_peers: Vec<EncapPeer>,
    free_slots: Vec<u32>,
    next_slot: u32,
    /// Whether counter slots never handed out by this table may hold counts (adopted tables:
    /// the process before may have used and freed slots above the highest one in use).
    fresh_slots_dirty: bool,
    count_v4: u32,
    count_v6: u32,
    batch_workers: usize,
}

impl fmt::Debug for PeerTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTable")
            .field("capacity", &self.capacity)
            .field("peers", &self.peers.len())
            .finish()
    }
}

/// Peers per `BPF_MAP_UPDATE_BATCH` / `BPF_MAP_DELETE_BATCH` call. The kernel's cost per peer
/// stops falling at about a thousand per call (benches/tunnel_peers.rs); 4096 IPv4 keys and
/// values (224 KiB) stay in the CPU cache between their encoding and the kernel's copy.
const BATCH_CHUNK: usize = 4096;

/// The smallest range of a batch worth a thread of its own.
const MIN_PER_WORKER: usize = 16_384;

fn default_batch_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Runs `f` on a thread of its own in `scope`, or gives `None` when no thread can be had (the
/// caller then does the work itself).
fn spawn_helper<'scope, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    f: impl FnOnce() -> T + Send + 'scope,
) -> Option<std::thread::ScopedJoinHandle<'scope, T>> {
    std::thread::Builder::new()
        .name("lwtun-peers".into())
        .spawn_scoped(scope, f)
        .ok()
}

/// What a thread of [`spawn_helper`] returned; its panic, if it panicked, goes on here.
fn join_helper<T>(thread: std::thread::ScopedJoinHandle<'_, T>) -> T {
    thread
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// One of the two LPM tables: its key as one integer that orders prefixes as [`IpNetwork`]
/// does (address, then length), and the `struct lwtun_peer_key4`/`key6` bytes of that key.
trait Family {
    type Key: Ord + Copy + Send + Sync;
    const V6: bool;
    fn put(out: &mut Vec<u8>, key: Self::Key);
    fn prefix(key: Self::Key) -> IpNetwork;
}

/// The IPv4 table.
struct V4;
/// The IPv6 table.
struct V6;

impl V4 {
    fn key(n: &Ipv4Network) -> u64 {
        (u64::from(u32::from(n.network())) << 8) | u64::from(n.prefix())
    }
}

impl Family for V4 {
    type Key = u64;
    const V6: bool = false;
    fn put(out: &mut Vec<u8>, key: u64) {
        out.extend_from_slice(&((key & 0xff) as u32).to_ne_bytes());
        out.extend_from_slice(&((key >> 8) as u32).to_be_bytes());
    }
    fn prefix(key: u64) -> IpNetwork {
        let addr = Ipv4Addr::from((key >> 8) as u32);
        Ipv4Network::new(addr, (key & 0xff) as u8)
            .map_or_else(|_| IpNetwork::from(IpAddr::V4(addr)), IpNetwork::V4)
    }
}

impl V6 {
    /// The address as two halves (a 24-byte key where `(u128, u8)` would take 32).
    fn key(n: &Ipv6Network) -> (u64, u64, u8) {
        let a = u128::from(n.network());
        ((a >> 64) as u64, a as u64, n.prefix())
    }
}

impl Family for V6 {
    type Key = (u64, u64, u8);
    const V6: bool = true;
    fn put(out: &mut Vec<u8>, (hi, lo, len): (u64, u64, u8)) {
        out.extend_from_slice(&u32::from(len).to_ne_bytes());
        out.extend_from_slice(&hi.to_be_bytes());
        out.extend_from_slice(&lo.to_be_bytes());
    }
    fn prefix((hi, lo, len): (u64, u64, u8)) -> IpNetwork {
        let addr = Ipv6Addr::from((u128::from(hi) << 64) | u128::from(lo));
        Ipv6Network::new(addr, len)
            .map_or_else(|_| IpNetwork::from(IpAddr::V6(addr)), IpNetwork::V6)
    }
}

/// The IPv4 and the IPv6 keys of a batch, each with the entry's index in the caller's input.
type Keys = (Vec<(u64, u32)>, Vec<((u64, u64, u8), u32)>);

/// The keys of the `n` prefixes `prefix` gives (it may refuse one), each table's sorted.
/// A large batch is done in two halves on two threads, merged after; the error is the first
/// refused entry's, as one pass would find.
fn sorted_keys(
    n: usize,
    workers: usize,
    prefix: &(dyn Fn(usize) -> Result<IpNetwork> + Sync),
) -> Result<Keys> {
    let part = |range: std::ops::Range<usize>| -> Result<Keys> {
        // Room for all in the IPv4 table (pages not written to cost nothing).
        let (mut v4, mut v6) = (Vec::with_capacity(range.len()), Vec::new());
        for i in range {
            match prefix(i)? {
                IpNetwork::V4(p) => v4.push((V4::key(&p), i as u32)),
                IpNetwork::V6(p) => v6.push((V6::key(&p), i as u32)),
            }
        }
        v4.sort_unstable_by_key(|&(k, _)| k);
        v6.sort_unstable_by_key(|&(k, _)| k);
        Ok((v4, v6))
    };
    if workers < 2 || n < 2 * MIN_PER_WORKER {
        return part(0..n);
    }
    let (first, second) = std::thread::scope(|scope| {
        let other = spawn_helper(scope, || part(n / 2..n));
        let first = part(0..n / 2);
        let second = match other {
            Some(t) => join_helper(t),
            None => part(n / 2..n),
        };
        (first, second)
    });
    let ((a4, a6), (b4, b6)) = (first?, second?);
    Ok((merge(a4, b4), merge(a6, b6)))
}

/// Two sorted key lists as one.
fn merge<K: Ord + Copy>(mut a: Vec<(K, u32)>, b: Vec<(K, u32)>) -> Vec<(K, u32)> {
    match (a.last(), b.first()) {
        (Some(&(last, _)), Some(&(first, _))) if last >= first => {}
        // Input in order, or one side empty: one after the other.
        _ => {
            a.extend(b);
            return a;
        }
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while let (Some(&x), Some(&y)) = (a.get(i), b.get(j)) {
        if x.0 <= y.0 {
            out.push(x);
            i += 1;
        } else {
            out.push(y);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// The value of a batch entry: from its position in the sorted batch and its index in the
/// caller's input.
type ValueFn<'a> = dyn Fn(usize, u32) -> lwtun_peer + Sync + 'a;

/// What a worker did with a contiguous part of the batch: the entries `start..start + done`
/// were applied, and `error` stopped it.
struct Share {
    start: usize,
    done: usize,
    error: Option<io::Error>,
}

/// The chunks of one worker's range of a batch that nobody has taken yet: its owner takes them
/// from the front (in table order), a worker done with its own range takes them from the back.
struct Range {
    start: usize,
    len: usize,
    /// The next chunk from the front (high half) and one past the next from the back (low
    /// half).
    left: AtomicU64,
}

impl Range {
    fn new(start: usize, len: usize) -> Self {
        Range {
            start,
            len,
            left: AtomicU64::new(len.div_ceil(BATCH_CHUNK) as u64),
        }
    }

    /// Takes the first (`front`) or the last chunk not yet taken, as its entries of the batch.
    fn take(&self, front: bool) -> Option<std::ops::Range<usize>> {
        let mut now = self.left.load(Ordering::Relaxed);
        loop {
            let (first, end) = (now >> 32, now & 0xffff_ffff);
            if first >= end {
                return None;
            }
            let (chunk, next) = if front {
                (first, ((first + 1) << 32) | end)
            } else {
                (end - 1, (first << 32) | (end - 1))
            };
            match self
                .left
                .compare_exchange_weak(now, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    let from = chunk as usize * BATCH_CHUNK;
                    let to = (from + BATCH_CHUNK).min(self.len);
                    return Some(self.start + from..self.start + to);
                }
                Err(seen) => now = seen,
            }
        }
    }
}

/// Applies a sorted batch to the table `fd`: writes each entry with the value `value` gives,
/// or deletes it when `value` is `None`. Contiguous ranges go to up to `workers` threads (the
/// calling one included); each writes its range in chunks of [`BATCH_CHUNK`] entries, one
/// syscall per chunk, then takes chunks from the back of ranges others have not finished (so
/// that all finish together, whatever else the CPUs run); all stop at the first error.
fn run<F: Family>(
    fd: RawFd,
    batch: &[(F::Key, u32)],
    value: Option<&ValueFn<'_>>,
    workers: usize,
) -> Vec<Share> {
    let ways = workers.min(batch.len() / MIN_PER_WORKER).max(1);
    let stop = AtomicBool::new(false);
    if ways == 1 {
        return work::<F>(fd, batch, &[Range::new(0, batch.len())], 0, value, &stop);
    }
    let per = batch.len().div_ceil(ways);
    let ranges: Vec<Range> = (0..batch.len())
        .step_by(per)
        .map(|start| Range::new(start, per.min(batch.len() - start)))
        .collect();
    std::thread::scope(|scope| {
        let (stop, ranges) = (&stop, &ranges[..]);
        // A range whose thread cannot be had is taken over by the others.
        let threads: Vec<_> = (1..ranges.len())
            .filter_map(|me| {
                spawn_helper(scope, move || work::<F>(fd, batch, ranges, me, value, stop))
            })
            .collect();
        let mut shares = work::<F>(fd, batch, ranges, 0, value, stop);
        for t in threads {
            shares.extend(join_helper(t));
        }
        shares
    })
}

/// One worker of [`run`]: the chunks of range `me` from the front, then those of the others
/// from the back, until none is left or a worker fails. What it applied, as contiguous parts.
fn work<F: Family>(
    fd: RawFd,
    batch: &[(F::Key, u32)],
    ranges: &[Range],
    me: usize,
    value: Option<&ValueFn<'_>>,
    stop: &AtomicBool,
) -> Vec<Share> {
    let entries = ranges.iter().map(|r| r.len).sum();
    let mut buffers = Buffers::new(entries, value.is_some());
    let mut shares: Vec<Share> = Vec::new();
    let n = ranges.len();
    let order = std::iter::once((me, true)).chain((1..n).map(|d| ((me + d) % n, false)));
    for (range, front) in order {
        while let Some(chunk) = ranges[range].take(front) {
            if stop.load(Ordering::Relaxed) {
                return shares;
            }
            let (start, len) = (chunk.start, chunk.len());
            let (done, error) = match buffers.apply::<F>(fd, &batch[chunk], start, value) {
                Ok(()) => (len, None),
                Err((applied, e)) => {
                    stop.store(true, Ordering::Relaxed);
                    (applied, Some(e))
                }
            };
            let failed = error.is_some();
            match shares.last_mut() {
                Some(last) if last.error.is_none() && last.start + last.done == start => {
                    last.done += done;
                    last.error = error;
                }
                _ => shares.push(Share { start, done, error }),
            }
            if failed {
                return shares;
            }
        }
    }
    shares
}

/// A worker's key and value buffers, reused from chunk to chunk.
struct Buffers {
    keys: Vec<u8>,
    values: Vec<u8>,
}

impl Buffers {
    /// Buffers for chunks of up to `entries` entries, with `values` or keys only.
    fn new(entries: usize, values: bool) -> Self {
        let chunk = BATCH_CHUNK.min(entries);
        Buffers {
            keys: Vec::with_capacity(chunk * std::mem::size_of::<lwtun_peer_key6>()),
            values: Vec::with_capacity(if values {
                chunk * std::mem::size_of::<lwtun_peer>()
            } else {
                0
            }),
        }
    }

    /// Encodes `part` (at most [`BATCH_CHUNK`] entries, the first of them entry `first` of
    /// the batch) and applies it in one syscall; on error, how many entries the kernel applied
    /// and the error.
    fn apply<F: Family>(
        &mut self,
        fd: RawFd,
        part: &[(F::Key, u32)],
        first: usize,
        value: Option<&ValueFn<'_>>,
    ) -> std::result::Result<(), (usize, io::Error)> {
        self.keys.clear();
        self.values.clear();
        for (j, &(key, i)) in part.iter().enumerate() {
            F::put(&mut self.keys, key);
            if let Some(value) = value {
                self.values
                    .extend_from_slice(abi::as_bytes(&value(first + j, i)));
            }
        }
        batch_call(fd, &self.keys, value.map(|_| &self.values[..]), part.len())
    }
}

/// One `BPF_MAP_UPDATE_BATCH` (with `values`) or `BPF_MAP_DELETE_BATCH` of `count` keys. On
/// error, how many of them the kernel applied before it stopped, and the error.
fn batch_call(
    fd: RawFd,
    keys: &[u8],
    values: Option<&[u8]>,
    count: usize,
) -> std::result::Result<(), (usize, io::Error)> {
    let opts = libbpf_sys::bpf_map_batch_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
        ..Default::default()
    };
    let mut n = count as u32;
    // SAFETY: `keys` (and `values`) hold `count` keys (values) of the map's sizes, as the
    // callers encode them; the kernel reads them and writes only `n`.
    let ret = unsafe {
        match values {
            Some(v) => libbpf_sys::bpf_map_update_batch(
                fd,
                keys.as_ptr().cast(),
                v.as_ptr().cast(),
                &mut n,
                &opts,
            ),
            None => libbpf_sys::bpf_map_delete_batch(fd, keys.as_ptr().cast(), &mut n, &opts),
        }
    };
    if ret == 0 {
        return Ok(());
    }
    // The kernel reports how many elements it applied before the one it refused; an error
    // before its loop (bad flags, no memory for the copy) leaves `n` as it was: none applied.
    let applied = if (n as usize) < count { n as usize } else { 0 };
    Err((applied, io::Error::from_raw_os_error(ret.saturating_neg())))
}

/// The error of the first share that failed, naming the entry the kernel refused.
fn first_error<F: Family>(
    batch: &[(F::Key, u32)],
    shares: &mut [Share],
    op: &str,
) -> Option<Error> {
    let share = shares
        .iter_mut()
        .filter(|s| s.error.is_some())
        .min_by_key(|s| s.start)?;
    let e = share.error.take()?;
    let err = Error::bpf(op.to_string(), libbpf_rs::Error::from(e));
    Some(match batch.get(share.start + share.done) {
        Some(&(k, _)) => err.with_object(F::prefix(k).to_string()),
        None => err,
    })
}

/// Writes a sorted batch; when the kernel refuses an entry, deletes what was written and returns
/// the error.
fn write_all<F: Family>(
    fd: RawFd,
    batch: &[(F::Key, u32)],
    value: &ValueFn<'_>,
    workers: usize,
    op: &str,
) -> Result<()> {
    let mut shares = run::<F>(fd, batch, Some(value), workers);
    match first_error::<F>(batch, &mut shares, op) {
        None => Ok(()),
        Some(e) => {
            for s in &shares {
                delete_present::<F>(fd, &batch[s.start..s.start + s.done]);
            }
            Err(e)
        }
    }
}

/// Deletes the entries of `batch` from the table, skipping any it no longer holds (an undo:
/// it removes everything it can).
fn delete_present<F: Family>(fd: RawFd, batch: &[(F::Key, u32)]) {
    let mut keys = Vec::with_capacity(BATCH_CHUNK.min(batch.len()) * 20);
    let mut rest = batch;
    while !rest.is_empty() {
        let part = &rest[..rest.len().min(BATCH_CHUNK)];
        keys.clear();
        for &(k, _) in part {
            F::put(&mut keys, k);
        }
        rest = match batch_call(fd, &keys, None, part.len()) {
            Ok(()) => &rest[part.len()..],
            // Go on after the key it refused.
            Err((applied, _)) => &rest[(applied + 1).min(rest.len())..],
        };
    }
}

/// Writes back what each share of a refused batch removal had removed.
fn rewrite<F: Family>(fd: RawFd, batch: &[(F::Key, u32)], shares: &[Share], value: &ValueFn<'_>) {
    for s in shares {
        let part = [Range::new(s.start, s.done)];
        let _ = work::<F>(fd, batch, &part, 0, Some(value), &AtomicBool::new(false));
    }
}

/// Takes the entries of `gone` (in the table's order, every one in the table) out of the
/// table's copy and returns them in that order.
fn take_out(
    peers: &mut BTreeMap<IpNetwork, u32>,
    gone: impl Iterator<Item = IpNetwork>,
    count: usize,
) -> Vec<(IpNetwork, u32)> {
    let mut out = Vec::with_capacity(count);
    if count >= peers.len() / 8 {
        // One ordered pass: `gone` is in the map's order.
        let mut next = gone.peekable();
        peers.retain(|prefix, v| {
            while next.next_if(|g| g < prefix).is_some() {}
            if next.next_if(|g| g == prefix).is_some() {
                out.push((*prefix, *v));
                false
            } else {
                true
            }
        });
    } else {
        out.extend(gone.filter_map(|g| peers.remove(&g).map(|v| (g, v))));
    }
    out
}

/// Sets the peer of counter slot `slot` in `slot_peers`, which grows as slots are handed out.
fn put_peer(slot_peers: &mut Vec<EncapPeer>, slot: u32, peer: EncapPeer) {
    let slot = slot as usize;
    match slot_peers.get_mut(slot) {
        Some(p) => *p = peer,
        None => {
            // Slots are handed out in order, so this is a push; a gap (slots that failed and were
            // freed before their peers were placed) holds copies until the slots are used.
            slot_peers.resize(slot, peer);
            slot_peers.push(peer);
        }
    }
}

/// Zeroes the per-CPU counters of `slots`, one `BPF_MAP_UPDATE_BATCH` per chunk.
fn zero_stats_batch(stats: &MapHandle, slots: &[u32]) -> Result<()> {
    if slots.is_empty() {
        return Ok(());
    }
    let op = "reset peer counters";
    let cpus = libbpf_rs::num_possible_cpus().map_err(|e| Error::bpf("count CPUs", e))?;
    // A per-CPU value in a batch: each CPU's copy rounded up to 8 bytes.
    let per_slot = std::mem::size_of::<lwtun_peer_stats>().next_multiple_of(8) * cpus;
    let chunk = BATCH_CHUNK.min(slots.len());
    let zeros = vec![0u8; chunk * per_slot];
    let mut keys = Vec::with_capacity(chunk * 4);
    for part in slots.chunks(BATCH_CHUNK) {
        keys.clear();
        for slot in part {
            keys.extend_from_slice(&slot.to_ne_bytes());
        }
        batch_call(
            stats.as_fd().as_raw_fd(),
            &keys,
            Some(&zeros[..part.len() * per_slot]),
            part.len(),
        )
        .map_err(|(_, e)| Error::bpf(op, libbpf_rs::Error::from(e)))?;
    }
    Ok(())
}

impl PeerTable {
    /// Wraps the maps of a loaded encap object (crate-internal: [`crate::tunnel::Tunnel`] does).
    pub(crate) fn new(object: &libbpf_rs::Object, capacity: u32, adopt: bool) -> Result<Self> {
        Self::from_handles(
            |name| {
                let map = object
                    .maps()
                    .find(|m| m.name() == name)
                    .ok_or_else(|| Error::not_found("open peer table", format!("map {name}")))?;
                MapHandle::try_from(&map).map_err(|e| Error::bpf("open peer table", e))
            },
            capacity,
            adopt,
        )
    }

    /// Reads the tables pinned by a tunnel (crate-internal: [`crate::tunnel::PinnedTunnel`]
    /// gives shared access only). Nothing is written; the pins must hold lwtun's config.
    pub(crate) fn read_pinned(folder: &std::path::Path) -> Result<Self> {
        let op = "read pinned peer table";
        let open = |name: &str| -> Result<MapHandle> {
            let path = folder.join(name);
            MapHandle::from_pinned_path(&path)
                .map_err(|e| Error::bpf(op, e).with_object(path.display().to_string()))
        };
        let v4 = open("peers_v4")?;
        if v4.map_type() != libbpf_rs::MapType::LpmTrie || v4.key_size() != 8 {
            return Err(Error::invalid_input(
                op,
                format!(
                    "{}/peers_v4 is a {:?} map with {}-byte keys, not lwtun's IPv4 peer trie: the \
                     folder holds another program's pins",
                    folder.display(),
                    v4.map_type(),
                    v4.key_size()
                ),
            ));
        }
        let capacity = v4.max_entries();
        let mut v4 = Some(v4);
        let mut table = PeerTable::from_handles(
            |name| match (name, v4.take()) {
                ("peers_v4", Some(m)) => Ok(m),
                _ => open(name),
            },
            capacity,
            None,
        )?;
        if table.read_config()?.magic != LWTUN_MAGIC {
            return Err(Error::invalid_input(
                op,
                format!(
                    "{}/config holds no lwtun tunnel config: the folder is not a tunnel's",
                    folder.display()
                ),
            ));
        }
        table.adopt()?;
        Ok(table)
    }

    /// `adopt`: `Some(true)` reads the tables back when they hold lwtun's config (else writes a
    /// fresh config), `Some(false)` writes a fresh config, `None` touches nothing.
    fn from_handles(
        mut handle: impl FnMut(&str) -> Result<MapHandle>,
        capacity: u32,
        adopt: impl Into<Option<bool>>,
    ) -> Result<Self> {
        let mut table = PeerTable {
            v4: handle("peers_v4")?,
            v6: handle("peers_v6")?,
            stats: handle("peer_stats")?,
            events: handle("events")?,
            config: handle("config")?,
            capacity,
            peers: BTreeMap::new(),
            slot_peers: Vec::new(),
            free_slots: Vec::new(),
            next_slot: 0,
            fresh_slots_dirty: false,
            batch_workers: default_batch_workers(),
            count_v4: 0,
            count_v6: 0,
        };
        match adopt.into() {
            None => {}
            Some(true) if table.read_config()?.magic == LWTUN_MAGIC => table.adopt()?,
            Some(_) => table.write_config(MissPolicy::Drop, MissPolicy::Drop)?,
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
            self.peers.insert(prefix, slot);
            put_peer(&mut self.slot_peers, slot, peer);
            *self.count_of(&prefix) += 1;
        }
        self.next_slot = used.iter().max().map_or(0, |m| m + 1);
        self.free_slots = (0..self.next_slot).filter(|s| !used.contains(s)).collect();
        self.fresh_slots_dirty = true;
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
        self.peer_at(*self.peers.get(&normalize(prefix))?)
    }

    /// The peer a packet to `dst` would use: the longest matching prefix, as the data plane
    /// looks it up.
    pub fn lookup(&self, dst: IpAddr) -> Option<(IpNetwork, &EncapPeer)> {
        let longest = if dst.is_ipv4() { 32 } else { 128 };
        (0..=longest).rev().find_map(|len| {
            let prefix = normalize(IpNetwork::new(dst, len).ok()?);
            let (n, &slot) = self.peers.get_key_value(&prefix)?;
            Some((*n, self.peer_at(slot)?))
        })
    }

    /// Every peer, IPv4 prefixes first, in prefix order.
    pub fn iter(&self) -> impl Iterator<Item = (IpNetwork, &EncapPeer)> + '_ {
        self.peers
            .iter()
            .filter_map(|(n, &slot)| Some((*n, self.peer_at(slot)?)))
    }

    /// The largest [`EncapPeer::encap_len`] of the peers, or `None` for an empty table.
    pub fn max_encap_len(&self) -> Option<u32> {
        self.peers
            .values()
            .filter_map(|&slot| Some(self.peer_at(slot)?.encap_len()))
            .max()
    }

    /// The peer at counter slot `slot` (every slot of the table's copy has one).
    fn peer_at(&self, slot: u32) -> Option<&EncapPeer> {
        self.slot_peers.get(slot as usize)
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

    fn check_room(&self, v6: bool, more: usize, op: &str) -> Result<()> {
        let count = if v6 { self.count_v6 } else { self.count_v4 };
        if count as usize + more > self.capacity as usize {
            return Err(Error::other(
                ErrorKind::InvalidInput,
                op.to_string(),
                format!(
                    "the {} table is full ({} peers): load the tunnel with a larger capacity",
                    if v6 { "IPv6" } else { "IPv4" },
                    self.capacity
                ),
            ));
        }
        Ok(())
    }

    /// A counter slot for a new peer, and whether its counters must be zeroed first.
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
        Ok((self.next_slot - 1, self.fresh_slots_dirty))
    }

    /// `n` counter slots for new peers, their counters zeroed. Give them back with
    /// [`PeerTable::release_slots`] if the peers are not written after all.
    fn take_slots(&mut self, n: usize, op: &str) -> Result<Vec<u32>> {
        let reused = n.min(self.free_slots.len());
        let fresh = (n - reused) as u64;
        if u64::from(self.next_slot) + fresh > u64::from(self.capacity) * 2 {
            return Err(Error::other(
                ErrorKind::InvalidInput,
                op.to_string(),
                "no counter slot left: load the tunnel with a larger capacity",
            ));
        }
        let mut slots = self.free_slots.split_off(self.free_slots.len() - reused);
        let first_fresh = self.next_slot;
        self.next_slot += fresh as u32;
        slots.extend(first_fresh..self.next_slot);
        let dirty = if self.fresh_slots_dirty {
            &slots[..]
        } else {
            &slots[..reused]
        };
        if let Err(e) = zero_stats_batch(&self.stats, dirty) {
            self.release_slots(slots);
            return Err(e);
        }
        Ok(slots)
    }

    fn release_slots(&mut self, slots: Vec<u32>) {
        self.free_slots.extend(slots);
    }

    fn zero_stats(&self, slot: u32) -> Result<()> {
        zero_stats_batch(&self.stats, &[slot])
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
        self.check_room(prefix.is_ipv6(), 1, op)?;
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
        self.peers.insert(prefix, slot);
        put_peer(&mut self.slot_peers, slot, peer);
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
        let Some(&slot) = self.peers.get(&prefix) else {
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
        put_peer(&mut self.slot_peers, slot, peer);
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
        let Some((&slot, &peer)) = self
            .peers
            .get(&prefix)
            .and_then(|s| Some((s, self.peer_at(*s)?)))
        else {
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

    /// Adds many peers with `BPF_MAP_UPDATE_BATCH`. Prefixes must be new and distinct (host
    /// bits are ignored); the order of `peers` does not matter.
    ///
    /// The whole batch is checked before anything is written. The peers are then written in
    /// table order (by prefix: the kernel's LPM trie takes sorted keys about twice as fast as
    /// shuffled ones), in chunks encoded into reused buffers, and split into contiguous ranges
    /// written by up to [`PeerTable::batch_workers`] threads at once (the trie's inserts run
    /// in parallel on several CPUs); a thread done with its range takes chunks from the end of
    /// another's, so that all finish together. Counter slots are given in table order too, so
    /// the same peers inserted into an empty table in any order give the same table.
    ///
    /// # Errors
    ///
    /// Checked before anything is written: [`ErrorKind::InvalidInput`] for an invalid peer, a
    /// prefix twice in the batch, or too little room; [`ErrorKind::Exists`] for a prefix that
    /// has a peer already (use [`PeerTable::replace`]). The kernel's error otherwise (the error
    /// names the prefix it refused), in which case every peer of the batch that was written is
    /// removed again: the table is as before.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use ipnetwork::IpNetwork;
    /// use lwtun::peer::{Encap, EncapPeer};
    /// use lwtun::tunnel::Tunnel;
    ///
    /// let mut tunnel = Tunnel::builder().capacity(100_000).load()?;
    /// let local = "192.0.2.1".parse().unwrap();
    /// let batch: Vec<(IpNetwork, EncapPeer)> = (0..65_536u32)
    ///     .map(|i| {
    ///         let prefix = IpNetwork::new([10, 20, (i >> 8) as u8, i as u8].into(), 32).unwrap();
    ///         let remote = [192, 0, 2, (i % 250 + 2) as u8].into();
    ///         (prefix, EncapPeer::new(remote, local, Encap::Gre { key: Some(i), checksum: false }))
    ///     })
    ///     .collect();
    /// tunnel.peers_mut().insert_batch(&batch)?;
    /// assert_eq!(tunnel.peers().len(), 65_536);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn insert_batch(&mut self, peers: &[(IpNetwork, EncapPeer)]) -> Result<()> {
        let op = "insert tunnel peers (batch)";
        if peers.is_empty() {
            return Ok(());
        }
        if u32::try_from(peers.len()).is_err() {
            return Err(Error::invalid_input(
                op,
                "more than 2^32 peers in one batch",
            ));
        }
        let (v4, v6) = sorted_keys(peers.len(), self.batch_workers, &|i| {
            let (prefix, peer) = &peers[i];
            peer.validate()
                .map_err(|e| e.with_object(prefix.to_string()))?;
            Ok(*prefix)
        })?;
        self.check_new::<V4>(&v4, op)?;
        self.check_new::<V6>(&v6, op)?;

        let slots = self.take_slots(peers.len(), op)?;
        let (s4, s6) = slots.split_at(v4.len());
        let value4 = |k: usize, i: u32| peers[i as usize].1.to_abi(s4[k]);
        let value6 = |k: usize, i: u32| peers[i as usize].1.to_abi(s6[k]);
        let fd4 = self.v4.as_fd().as_raw_fd();
        let fd6 = self.v6.as_fd().as_raw_fd();
        let workers = self.batch_workers;
        // The table's copy: the prefixes with their slots, in table order, and the peer of each
        // slot.
        let entries = || {
            v4.iter()
                .map(|&(key, _)| V4::prefix(key))
                .chain(v6.iter().map(|&(key, _)| V6::prefix(key)))
                .zip(slots.iter().copied())
        };
        let top = self.next_slot as usize;
        let place = |slot_peers: &mut Vec<EncapPeer>| {
            slot_peers.reserve(top.saturating_sub(slot_peers.len()));
            let order = v4.iter().map(|&(_, i)| i).chain(v6.iter().map(|&(_, i)| i));
            for (i, &slot) in order.zip(&slots) {
                put_peer(slot_peers, slot, peers[i as usize].1);
            }
        };
        // The copy of a batch that is large next to the table is built on a thread of its own
        // while the kernel writes (for 1M peers about a twentieth of the kernel's time), then
        // moved or merged in; a small batch is inserted after. A failed batch leaves its peers
        // at slots that are free again, where nothing reads them.
        let aside = peers.len() >= self.peers.len() / 8;
        let slot_peers = &mut self.slot_peers;
        let (written, built) = std::thread::scope(|scope| {
            let builder = aside
                .then(|| {
                    spawn_helper(scope, move || {
                        place(slot_peers);
                        entries().collect::<BTreeMap<_, _>>()
                    })
                })
                .flatten();
            let written = write_all::<V4>(fd4, &v4, &value4, workers, op).and_then(|()| {
                write_all::<V6>(fd6, &v6, &value6, workers, op).inspect_err(|_| {
                    delete_present::<V4>(fd4, &v4);
                })
            });
            let built = builder.map(join_helper);
            (written, built)
        });
        if let Err(e) = written {
            self.release_slots(slots);
            return Err(e);
        }
        let new = match built {
            Some(new) => Some(new),
            // No thread to be had (or a small batch): the copy is made here.
            None => {
                place(&mut self.slot_peers);
                aside.then(|| entries().collect())
            }
        };
        match new {
            Some(new) if self.peers.is_empty() => self.peers = new,
            // Merging two sorted maps is linear; inserting one by one is not.
            Some(mut new) => self.peers.append(&mut new),
            None => self.peers.extend(entries()),
        }
        self.count_v4 += v4.len() as u32;
        self.count_v6 += v6.len() as u32;
        Ok(())
    }

    /// Checks the keys of a batch of new peers (in table order, as [`sorted_keys`] gives them):
    /// distinct, not in the table, room for them.
    fn check_new<F: Family>(&self, keys: &[(F::Key, u32)], op: &str) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        if let Some(w) = keys.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::invalid_input(
                op,
                format!("{} is twice in the batch", F::prefix(w[0].0)),
            ));
        }
        if let Some(k) = self.first_key::<F>(keys, true) {
            return Err(Error::other(
                ErrorKind::Exists,
                op,
                format!("{} has a peer already: replace it instead", F::prefix(k)),
            ));
        }
        self.check_room(F::V6, keys.len(), op)
    }

    /// The first of the sorted `keys` that is (`present`) or is not in the table.
    fn first_key<F: Family>(&self, keys: &[(F::Key, u32)], present: bool) -> Option<F::Key> {
        let &(first, _) = keys.first()?;
        if keys.len() >= self.peers.len() / 8 {
            // One ordered pass over the table instead of a search per key.
            let mut table = self
                .peers
                .range(F::prefix(first)..)
                .map(|(p, _)| p)
                .peekable();
            keys.iter()
                .find(|&&(k, _)| {
                    let p = F::prefix(k);
                    while table.next_if(|q| **q < p).is_some() {}
                    table.next_if(|q| **q == p).is_some() == present
                })
                .map(|&(k, _)| k)
        } else {
            keys.iter()
                .find(|&&(k, _)| self.peers.contains_key(&F::prefix(k)) == present)
                .map(|&(k, _)| k)
        }
    }

    /// Removes many peers with `BPF_MAP_DELETE_BATCH`, in table order, in chunks, by up to
    /// [`PeerTable::batch_workers`] threads (as [`PeerTable::insert_batch`] writes).
    ///
    /// # Errors
    ///
    /// Checked before anything is removed: [`ErrorKind::NotFound`] when a prefix has no peer,
    /// [`ErrorKind::InvalidInput`] for a prefix twice in the batch. The kernel's error
    /// otherwise, in which case the peers already removed are written back: the table is as
    /// before.
    pub fn remove_batch(&mut self, prefixes: &[IpNetwork]) -> Result<()> {
        let op = "remove tunnel peers (batch)";
        if prefixes.is_empty() {
            return Ok(());
        }
        if u32::try_from(prefixes.len()).is_err() {
            return Err(Error::invalid_input(
                op,
                "more than 2^32 peers in one batch",
            ));
        }
        let (v4, v6) = sorted_keys(prefixes.len(), self.batch_workers, &|i| Ok(prefixes[i]))?;
        self.check_present::<V4>(&v4, op)?;
        self.check_present::<V6>(&v6, op)?;

        let fd4 = self.v4.as_fd().as_raw_fd();
        let fd6 = self.v6.as_fd().as_raw_fd();
        let workers = self.batch_workers;
        let gone = || {
            v4.iter()
                .map(|&(k, _)| V4::prefix(k))
                .chain(v6.iter().map(|&(k, _)| V6::prefix(k)))
        };
        // The table's copy gives up the peers on a thread of its own while the kernel deletes
        // them (they come back if the kernel refuses part of the batch).
        let table = &mut self.peers;
        let (shares4, shares6, error, taken) = std::thread::scope(|scope| {
            let taker = spawn_helper(scope, || take_out(table, gone(), prefixes.len()));
            let mut shares4 = run::<V4>(fd4, &v4, None, workers);
            let mut error = first_error::<V4>(&v4, &mut shares4, op);
            let mut shares6 = Vec::new();
            if error.is_none() {
                shares6 = run::<V6>(fd6, &v6, None, workers);
                error = first_error::<V6>(&v6, &mut shares6, op);
            }
            let taken = taker.map(join_helper);
            (shares4, shares6, error, taken)
        });
        // No thread to be had: taken out here.
        let taken = taken.unwrap_or_else(|| take_out(&mut self.peers, gone(), prefixes.len()));
        if let Some(e) = error {
            let (t4, t6) = taken.split_at(v4.len());
            // Every slot of the table's copy has its peer.
            let value = |slot: u32| {
                self.peer_at(slot)
                    .map_or_else(lwtun_peer::default, |p| p.to_abi(slot))
            };
            let value4 = |k: usize, _: u32| value(t4[k].1);
            let value6 = |k: usize, _: u32| value(t6[k].1);
            rewrite::<V6>(fd6, &v6, &shares6, &value6);
            rewrite::<V4>(fd4, &v4, &shares4, &value4);
            self.peers.extend(taken);
            return Err(e);
        }
        self.free_slots.extend(taken.iter().map(|&(_, slot)| slot));
        self.count_v4 -= v4.len() as u32;
        self.count_v6 -= v6.len() as u32;
        Ok(())
    }

    /// Checks the keys of a batch of peers to remove (in table order, as [`sorted_keys`] gives
    /// them): distinct, each in the table.
    fn check_present<F: Family>(&self, keys: &[(F::Key, u32)], op: &str) -> Result<()> {
        if let Some(w) = keys.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::invalid_input(
                op,
                format!("{} is twice in the batch", F::prefix(w[0].0)),
            ));
        }
        if let Some(k) = self.first_key::<F>(keys, false) {
            return Err(Error::not_found(op, format!("peer for {}", F::prefix(k))));
        }
        Ok(())
    }

    /// How many threads [`PeerTable::insert_batch`] and [`PeerTable::remove_batch`] use at most:
    /// by default the CPUs this process may run on, up to 4. A batch is split only into ranges
    /// of at least 16384 peers.
    pub fn batch_workers(&self) -> usize {
        self.batch_workers
    }

    /// Sets how many threads batch inserts and removals use at most (1: the calling thread
    /// only; 0 counts as 1).
    pub fn set_batch_workers(&mut self, workers: usize) {
        self.batch_workers = workers.max(1);
    }

    /// The counters of the peer of `prefix`, summed over CPUs.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when `prefix` has no peer; the kernel's error reading the map.
    pub fn stats(&self, prefix: IpNetwork) -> Result<PeerStats> {
        let prefix = normalize(prefix);
        let op = "read peer counters";
        let &slot = self
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
    use crate::family::lpm::put_key;

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
    fn batch_keys_sort_alike_on_one_and_two_threads() {
        assert_eq!(
            merge(vec![(1u64, 0), (4, 1)], vec![(2, 2), (3, 3), (5, 4)]),
            { vec![(1, 0), (2, 2), (3, 3), (4, 1), (5, 4)] }
        );
        assert_eq!(merge(vec![(1u64, 0)], vec![(1, 1)]), vec![(1, 0), (1, 1)]);
        assert_eq!(merge(vec![], vec![(1u64, 0)]), vec![(1, 0)]);
        assert_eq!(merge(vec![(2u64, 0)], vec![]), vec![(2, 0)]);

        // Shuffled IPv4 and IPv6 prefixes, enough for two halves.
        let n = 5 * MIN_PER_WORKER;
        let prefixes: Vec<IpNetwork> = (0..n as u32)
            .map(|i| {
                // A permutation of 0..n (7919 is prime to n).
                let i = (u64::from(i) * 7919 % n as u64) as u32;
                if i % 3 == 0 {
                    IpNetwork::new(IpAddr::from((u128::from(i) << 64).to_be_bytes()), 64)
                } else {
                    IpNetwork::new(IpAddr::from(i.to_be_bytes()), 32)
                }
                .unwrap()
            })
            .collect();
        let get = |i: usize| Ok(prefixes[i]);
        let one = sorted_keys(n, 1, &get).unwrap();
        let two = sorted_keys(n, 2, &get).unwrap();
        assert!(one == two, "one and two threads differ");
        assert_eq!(one.0.len() + one.1.len(), n);
        assert!(one.0.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(one.1.windows(2).all(|w| w[0].0 < w[1].0));

        // A prefix in both halves: side by side, for the check that follows to find.
        let twice = |i: usize| Ok(prefixes[if i == n - 1 { 0 } else { i }]);
        let (v4, v6) = sorted_keys(n, 2, &twice).unwrap();
        assert!(v4.windows(2).any(|w| w[0].0 == w[1].0) || v6.windows(2).any(|w| w[0].0 == w[1].0));

        // Refused entries in both halves: the first one's error, as one pass gives.
        let refuse = |i: usize| match i {
            7 | 70_000 => Err(Error::invalid_input("test", format!("entry {i}"))),
            _ => Ok(prefixes[i]),
        };
        let err = sorted_keys(n, 2, &refuse).unwrap_err();
        assert!(err.to_string().contains("entry 7"), "{err}");
    }

    #[test]
    fn range_chunks_are_taken_once_from_either_end() {
        let len = 3 * BATCH_CHUNK + 5;
        let r = Range::new(100, len);
        assert_eq!(r.take(true), Some(100..100 + BATCH_CHUNK));
        assert_eq!(r.take(false), Some(100 + 3 * BATCH_CHUNK..100 + len));
        assert_eq!(
            r.take(false),
            Some(100 + 2 * BATCH_CHUNK..100 + 3 * BATCH_CHUNK)
        );
        assert_eq!(r.take(true), Some(100 + BATCH_CHUNK..100 + 2 * BATCH_CHUNK));
        assert_eq!(r.take(true), None);
        assert_eq!(r.take(false), None);
        assert_eq!(Range::new(0, 0).take(true), None);

        // An owner from the front and two others from the back, at once: every entry once.
        let len = 1000 * BATCH_CHUNK + 17;
        let r = Range::new(7, len);
        let mut taken: Vec<std::ops::Range<usize>> = std::thread::scope(|s| {
            let r = &r;
            let side =
                |front| s.spawn(move || std::iter::from_fn(|| r.take(front)).collect::<Vec<_>>());
            let all = [side(true), side(false), side(false)];
            all.into_iter()
                .flat_map(|t| t.join().unwrap_or_default())
                .collect()
        });
        taken.sort_by_key(|c| c.start);
        assert_eq!(taken.first().map(|c| c.start), Some(7));
        assert_eq!(taken.last().map(|c| c.end), Some(7 + len));
        assert!(taken.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn batch_keys_encode_and_order_as_prefixes_do() {
        let nets: Vec<IpNetwork> = [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.0.0.0/16",
            "10.0.0.1/32",
            "10.1.0.0/16",
            "192.0.2.128/25",
            "255.255.255.255/32",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let mut keys = Vec::new();
        for n in &nets {
            let IpNetwork::V4(v4) = n else { unreachable!() };
            let k = V4::key(v4);
            assert_eq!(V4::prefix(k), *n);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            V4::put(&mut a, k);
            put_key(&mut b, n);
            assert_eq!(a, b, "{n}: the same bytes as a single insert's key");
            keys.push(k);
        }
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "IpNetwork's order");

        let nets: Vec<IpNetwork> = ["::/0", "2001:db8::/32", "2001:db8::/64", "2001:db8::1/128"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let mut keys = Vec::new();
        for n in &nets {
            let IpNetwork::V6(v6) = n else { unreachable!() };
            let k = V6::key(v6);
            assert_eq!(V6::prefix(k), *n);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            V6::put(&mut a, k);
            put_key(&mut b, n);
            assert_eq!(a, b, "{n}");
            keys.push(k);
        }
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        // Host bits do not reach the key.
        let IpNetwork::V4(n) = "10.1.2.3/16".parse().unwrap() else {
            unreachable!()
        };
        assert_eq!(V4::prefix(V4::key(&n)), "10.1.0.0/16".parse().unwrap());
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
