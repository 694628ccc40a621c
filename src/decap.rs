//! Decapsulation of lwtun's tunnels in BPF at tc ingress: [`Decap`].
//!
//! Kernels without the ipip, gre and fou modules (this project's CI among them) cannot terminate
//! IP-in-IP, GRE or FOU tunnels. [`Decap`] loads `bpf/tc_decap.bpf.c`, attaches it at tc ingress
//! of the underlay device(s) (tcx where present, clsact otherwise, through
//! [`crate::tc::TcAttach`]) and strips the outer header of every encapsulation lwtun sends:
//!
//! ```text
//!  underlay ──► Eth | outer IPv4/IPv6 | [GRE | UDP] | inner IP ──► tc_decap ──► Eth | inner IP ──► stack
//!                     to a local endpoint?  (else passed untouched)
//!                     from a known peer?    (else dropped, counted as unknown_peer)
//! ```
//!
//! - **Local endpoints** ([`Decap::add_local`]): the outer destinations decapsulated for; every
//!   other packet passes untouched (counted as `not_for_us`).
//! - **Known peers** ([`Decap::add_peer`]): outer source prefixes accepted; a tunnel packet from
//!   anyone else is dropped and counted. A peer may require a GRE key.
//! - **UDP ports** ([`Decap::add_udp_port`]): the destination ports carrying FOU (UDP directly
//!   followed by the inner IPv4 or IPv6 packet).
//!
//! What is refused, and why, is written at the top of `bpf/tc_decap.bpf.c` and counted per reason
//! in [`DecapCounters`]. In short: outer fragments are dropped (lwtun's encap sets DF and the
//! route headroom, so a fragment means a broken path MTU), GRE must be version 0 with at most the
//! checksum and key flags, a GRE checksum is verified (also for locally sent packets whose inner
//! checksum is still partial: see [`Decap::set_verify_gre_checksum`]), IPv6 extension headers on
//! tunnel packets are refused but for the Tunnel Encapsulation Limit the kernel's ip6tnl and
//! ip6gre send by default. `tests/interop.rs` runs it against the kernel's own ipip, sit, gre,
//! ip6gre, ip6tnl and fou senders. ECN follows RFC 6040 as the kernel's own tunnels do: an outer CE mark is copied
//! to an ECN-capable inner packet, and a not-ECN-capable inner packet under an outer CE is dropped.
//!
//! Decap shares its hook: a packet that is not a tunnel packet for this host, and a packet it
//! decapsulated, both get `TC_ACT_UNSPEC` (`TCX_NEXT`), so a capture, a counter or a user's program
//! attached after decap still runs (and sees the inner packet of a decapsulated one); only the
//! packets decap refuses end the hook (`TC_ACT_SHOT`).
//!
//! The inner packet continues up the stack from tc ingress: the kernel reads the
//! (rewritten) protocol after the tc hook, so the inner packet enters `ip_rcv`/`ipv6_rcv` on the
//! underlay device and is delivered locally or forwarded by the routing table, with the stack's own
//! checks. Outer IPv4 with inner IPv6 and the reverse work too (Linux 6.3's
//! `BPF_F_ADJ_ROOM_DECAP_L3_*` flags fix `skb->protocol`).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use libbpf_rs::{MapCore, MapFlags, Object};

use crate::abi::{self, Pod, ABI_VERSION, MAGIC};
use crate::device::Device;
use crate::error::{Error, ErrorKind, Result};
use crate::family::lpm::{normalize, table_key};
use crate::family::pins::PinLayout;
use crate::family::PinFolder;
use crate::netns::NetNs;
use crate::program::{load_object, sum_percpu, Counter};
use crate::skel::tc_decap::types::{
    lwtun_decap_config, lwtun_decap_peer, lwtun_ip_addr, lwtun_peer_key4, lwtun_peer_key6,
};
use crate::tc::{TcAttach, TcAttachment, TcDirection};

// SAFETY: `struct lwtun_ip_addr` is [u8; 16] (asserted in lwtun.h).
unsafe impl Pod for lwtun_ip_addr {}
// SAFETY: `struct lwtun_peer_key4` is u32 + [u8; 4] (8 bytes, asserted).
unsafe impl Pod for lwtun_peer_key4 {}
// SAFETY: `struct lwtun_peer_key6` is u32 + [u8; 16] (20 bytes, asserted).
unsafe impl Pod for lwtun_peer_key6 {}
// SAFETY: `struct lwtun_decap_peer` is two u32s (8 bytes, asserted).
unsafe impl Pod for lwtun_decap_peer {}
// SAFETY: `struct lwtun_decap_config` is four u32s (16 bytes, asserted).
unsafe impl Pod for lwtun_decap_config {}

const PEER_GRE_KEY: u32 = 1 << 0;
const KEY_TO_MARK: u32 = 1 << 0;
const NO_GRE_CSUM: u32 = 1 << 1;
const PROGRAM: &str = "decap_tc";
const BASELINE: &str = "pass_tc";

/// Counter slots, in the order of `LWTUN_DECAP_EV_*` in `bpf/lwtun.h`.
const EVENTS: usize = 12;

/// Packets (and their outer bytes, Ethernet header included) per decap verdict, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecapCounters {
    /// IP-in-IP (protocol 4 or 41) decapsulated.
    pub ipip: Counter,
    /// GRE decapsulated.
    pub gre: Counter,
    /// UDP (FOU) decapsulated.
    pub udp: Counter,
    /// Tunnel packets to a local endpoint from a source that is no known peer: dropped.
    pub unknown_peer: Counter,
    /// Truncated or inconsistent headers: dropped.
    pub malformed: Counter,
    /// Not a tunnel packet to a local endpoint: passed on untouched.
    pub not_for_us: Counter,
    /// Tunnel packets whose outer header is a fragment: dropped.
    pub fragment: Counter,
    /// Wrong outer IPv4 header checksum or GRE checksum: dropped.
    pub bad_checksum: Counter,
    /// GRE key missing or different from the one the peer must use: dropped.
    pub key_mismatch: Counter,
    /// What lwtun never sends (GRE version 1, routing, sequence numbers, other GRE protocol
    /// types; outer IPv6 extension headers, but for a Destination Options header holding only
    /// the Tunnel Encapsulation Limit, which the kernel's ip6tnl and ip6gre send by default
    /// and which is skipped): dropped.
    pub unsupported: Counter,
    /// The kernel refused to remove the header (`bpf_skb_adjust_room` failed): dropped.
    pub error: Counter,
    /// The outer header was marked CE (congestion experienced) but the inner packet is not
    /// ECN-capable: dropped, as RFC 6040 and the kernel's own tunnels do. (An ECN-capable inner
    /// packet is marked CE instead.)
    pub ecn: Counter,
}

impl DecapCounters {
    /// Packets decapsulated, all kinds.
    pub fn decapsulated(&self) -> u64 {
        self.ipip.packets + self.gre.packets + self.udp.packets
    }

    /// Packets dropped, all reasons.
    pub fn dropped(&self) -> u64 {
        self.unknown_peer.packets
            + self.malformed.packets
            + self.fragment.packets
            + self.bad_checksum.packets
            + self.key_mismatch.packets
            + self.unsupported.packets
            + self.error.packets
            + self.ecn.packets
    }
}

/// A known peer: the outer source prefix tunnel packets may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecapPeer {
    /// Outer source prefix (a single peer is a /32 or /128).
    pub prefix: IpNetwork,
    /// GRE packets from this peer must carry this key; `None` accepts any key or none.
    pub gre_key: Option<u32>,
}

impl DecapPeer {
    /// A peer with no key requirement.
    pub fn new(prefix: IpNetwork) -> Self {
        DecapPeer {
            prefix: normalize(prefix),
            gre_key: None,
        }
    }

    /// A single address.
    pub fn host(addr: IpAddr) -> Self {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Self::new(IpNetwork::new(addr, len).expect("full-length prefix is valid"))
    }

    /// Requires GRE packets from this peer to carry `key`.
    pub fn gre_key(mut self, key: u32) -> Self {
        self.gre_key = Some(key);
        self
    }
}

pub use crate::tc::{test_run, TestRun, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC};

/// The decap program family: the program, its tables (local endpoints, known peers, UDP ports)
/// and its attachments. Dropping it detaches the program from every device it was attached to.
///
/// Kernel: Linux 5.8+ (`bpf_csum_level`; tcx: 6.6+). IPv4 in IPv6 and IPv6 in IPv4 need 6.3 (`BPF_F_ADJ_ROOM_DECAP_L3_*`, [`crate::probe::decap_l3`]): before, such packets are dropped and counted as errors. Before 5.17 (no `bpf_loop`) a variant whose byte-by-byte GRE checksum check covers up to 2 KiB is loaded. Its tests ran on 5.10 (test runs only), 6.1, 6.12 and 6.18 (`scripts/kernel-matrix.sh`).
///
/// # Examples
///
/// ```no_run
/// use lwtun::decap::{Decap, DecapPeer};
///
/// let mut decap = Decap::load()?;
/// decap.add_local("192.0.2.1".parse().unwrap())?;                 // our underlay address
/// decap.add_peer(DecapPeer::host("192.0.2.2".parse().unwrap()))?;  // the other end
/// decap.add_udp_port(5555)?;                                       // FOU
/// let eth0 = lwtun::netns::NetNs::current()?.device("eth0")?;
/// decap.attach(&eth0)?;                                            // tc ingress of eth0
/// println!("{:?}", decap.counters()?);
/// # Ok::<(), lwtun::Error>(())
/// ```
pub struct Decap {
    attachments: Vec<TcAttachment>,
    prog: OwnedFd,
    baseline: OwnedFd,
    object: Object,
    flags: u32,
    pin: Option<PinFolder>,
}

/// What a pinned [`Decap`] leaves in its folder (see [`crate::pins`]): its tables, settings
/// and counters (the per-CPU checksum scratch space is not state), and its program.
pub const PIN_LAYOUT: PinLayout = crate::family::pins::DECAP;

impl Drop for Decap {
    fn drop(&mut self) {
        // Detach first (the attachments drop with the struct anyway; this keeps the order
        // explicit); the pins go after, with the folder's lock (the last field).
        self.attachments.clear();
    }
}

impl fmt::Debug for Decap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decap")
            .field("attached", &self.attached())
            .finish()
    }
}

fn addr_key(addr: IpAddr) -> lwtun_ip_addr {
    let v6 = match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    lwtun_ip_addr { addr: v6.octets() }
}

/// The decap object for this kernel: with a bpf_loop checksum loop, or (before 5.17) the
/// variant with a bounded one.
fn decap_object() -> &'static [u8] {
    crate::family::bpf_loop_variant(
        crate::probe::Feature::BpfLoop.present(),
        crate::skel::tc_decap::OBJECT,
        crate::skel::tc_decap_compat::OBJECT,
    )
}

impl Decap {
    /// Loads the program and its maps (empty tables: nothing is decapsulated yet).
    ///
    /// Kernel: Linux 5.8+; see [`Decap`] for what 6.3 and 5.17 add.
    ///
    /// # Errors
    ///
    /// Permission without CAP_BPF and CAP_NET_ADMIN; the verifier's error otherwise.
    pub fn load() -> Result<Self> {
        let decap = Decap::of_object(load_object("tc_decap", decap_object())?)?;
        decap.write_config()?;
        Ok(decap)
    }

    /// A decap of a loaded object: no attachment, no pins, flags 0.
    fn of_object(object: Object) -> Result<Decap> {
        Ok(Decap {
            attachments: Vec::new(),
            prog: crate::program::program_fd(&object, PROGRAM)?,
            baseline: crate::program::program_fd(&object, BASELINE)?,
            object,
            flags: 0,
            pin: None,
        })
    }

    /// Loads the family with its tables pinned under `folder` (on bpffs), or, when a previous
    /// [`Decap`] left its pins there ([`Decap::keep_pinned`]), adopts them: the local endpoints,
    /// peers, UDP ports, settings and counters found there are this value's from then on, and
    /// the program pin is replaced by this process's program. Without `keep_pinned` the pins
    /// are removed when this value drops.
    ///
    /// Attachments are not adopted: attach again (a tcx attachment ends with its process; a
    /// clsact filter stays until removed).
    ///
    /// # Errors
    ///
    /// As [`Decap::load`]; InvalidInput when the folder's pins come from an object of another
    /// ABI version; the kernel's error when the folder is not on bpffs.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::decap::Decap;
    ///
    /// let mut decap = Decap::load_pinned("/sys/fs/bpf/lwtun-decap")?;
    /// decap.add_local("192.0.2.1".parse().unwrap())?;
    /// decap.keep_pinned();                    // a later process adopts the tables
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn load_pinned(folder: impl Into<PathBuf>) -> Result<Self> {
        let op = "load pinned decap";
        let mut pin = PinFolder::open(folder.into(), &PIN_LAYOUT, op)?;
        let adopted = pin.adopted();
        let mut open = crate::program::open_object("tc_decap", decap_object(), op)?;
        pin.reuse_maps(&mut open)?;
        let mut decap = Decap::of_object(crate::program::load_opened(open, op)?)?;
        if adopted {
            let cfg = decap
                .map("config")?
                .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
                .map_err(|e| Error::bpf(op, e))?
                .and_then(|v| abi::from_bytes::<lwtun_decap_config>(&v))
                .unwrap_or_default();
            if cfg.magic != MAGIC || cfg.version != ABI_VERSION {
                // Not ours: the folder stays as it was (nothing was pinned yet).
                return Err(Error::invalid_input(
                    op,
                    format!(
                        "the pinned config has magic {:#x} version {}, this lwtun writes \
                         {MAGIC:#x} version {ABI_VERSION}; remove the folder or use another",
                        cfg.magic, cfg.version
                    ),
                )
                .with_object(pin.path().display().to_string()));
            }
            decap.flags = cfg.flags;
        }
        pin.pin_maps(&mut decap.object, "pin decap")?;
        pin.pin_program(PROGRAM, decap.prog.as_fd(), "pin decap")?;
        if !adopted {
            decap.write_config()?;
        }
        pin.commit();
        decap.pin = Some(pin);
        Ok(decap)
    }

    /// Leaves the pins in place when this value drops, for a later [`Decap::load_pinned`] (or
    /// `bpftool map dump pinned FOLDER/counters`). No effect without a pin folder.
    pub fn keep_pinned(&mut self) {
        if let Some(p) = &mut self.pin {
            p.keep();
        }
    }

    /// The pin folder, if any.
    pub fn pin_folder(&self) -> Option<&Path> {
        self.pin.as_ref().map(PinFolder::path)
    }

    /// As [`Decap::attach`], for the device with index `ifindex` in `netns`.
    ///
    /// # Errors
    ///
    /// As [`Decap::attach`]; NotFound when `netns` has no such device.
    #[deprecated(
        since = "0.2.0",
        note = "use Decap::attach(&netns.device(NAME)?): a Device carries its namespace"
    )]
    pub fn attach_in(&mut self, netns: &NetNs, ifindex: u32) -> Result<()> {
        self.attach(&netns.device_by_index(ifindex)?)
    }

    fn map(&self, name: &str) -> Result<libbpf_rs::Map<'_>> {
        self.object
            .maps()
            .find(|m| m.name() == name)
            .ok_or_else(|| Error::not_found("find map", format!("map {name} in tc_decap")))
    }

    fn write_config(&self) -> Result<()> {
        let cfg = lwtun_decap_config {
            magic: MAGIC,
            version: ABI_VERSION,
            flags: self.flags,
            pad: 0,
        };
        self.map("config")?
            .update(&0u32.to_ne_bytes(), abi::as_bytes(&cfg), MapFlags::ANY)
            .map_err(|e| Error::bpf("write decap config", e))
    }

    /// The decap program, for [`TcAttach`] with options of your own.
    pub fn program(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }

    /// A tc program of the same object that passes every packet and does nothing else: the
    /// baseline `benches/decap.rs` measures the decap cost against.
    pub fn baseline_program(&self) -> BorrowedFd<'_> {
        self.baseline.as_fd()
    }

    /// Decapsulates packets addressed to `addr` (a local underlay address).
    ///
    /// # Errors
    ///
    /// InvalidInput for an address that is not a host's unicast address (unspecified,
    /// multicast, broadcast, loopback) or when the endpoint table is full (256); the kernel's
    /// error otherwise.
    pub fn add_local(&mut self, addr: IpAddr) -> Result<()> {
        let op = "add local tunnel endpoint";
        crate::family::endpoint::check_endpoint(op, "local endpoint", addr)?;
        let map = self.map("locals")?;
        map.update(
            abi::as_bytes(&addr_key(addr)),
            &0u32.to_ne_bytes(),
            MapFlags::ANY,
        )
        .map_err(|e| {
            crate::family::table_write_error(op, e, "decap local endpoints", &map)
                .with_object(addr.to_string())
        })
    }

    /// Stops decapsulating for `addr`.
    ///
    /// # Errors
    ///
    /// NotFound when `addr` is not a local endpoint.
    pub fn remove_local(&mut self, addr: IpAddr) -> Result<()> {
        self.map("locals")?
            .delete(abi::as_bytes(&addr_key(addr)))
            .map_err(|e| {
                Error::other(
                    ErrorKind::NotFound,
                    "remove local tunnel endpoint",
                    e.to_string(),
                )
                .with_object(addr.to_string())
            })
    }

    /// The local endpoints, as the kernel's map holds them.
    ///
    /// # Errors
    ///
    /// The kernel's error reading the map.
    pub fn locals(&self) -> Result<Vec<IpAddr>> {
        let mut out: Vec<IpAddr> = self
            .map("locals")?
            .keys()
            .filter_map(|k| abi::from_bytes::<lwtun_ip_addr>(&k))
            .map(|k| {
                let a = Ipv6Addr::from(k.addr);
                match a.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => IpAddr::V6(a),
                }
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Accepts tunnel packets whose outer source is in `peer.prefix` (replacing an entry for the
    /// same prefix).
    ///
    /// # Errors
    ///
    /// InvalidInput for a prefix that holds only multicast or broadcast addresses (no tunnel
    /// packet comes from one), or when the table is full (65536 prefixes per family); the
    /// kernel's error otherwise.
    pub fn add_peer(&mut self, peer: DecapPeer) -> Result<()> {
        let op = "add decap peer";
        let prefix = normalize(peer.prefix);
        crate::family::endpoint::check_source_prefix(op, &prefix)?;
        let (map, key) = table_key(&prefix, ["peers_v4", "peers_v6"]);
        let value = lwtun_decap_peer {
            flags: if peer.gre_key.is_some() {
                PEER_GRE_KEY
            } else {
                0
            },
            gre_key: peer.gre_key.unwrap_or(0).to_be(),
        };
        let map = self.map(map)?;
        map.update(&key, abi::as_bytes(&value), MapFlags::ANY)
            .map_err(|e| {
                crate::family::table_write_error(op, e, "decap peers", &map)
                    .with_object(prefix.to_string())
            })
    }

    /// Stops accepting tunnel packets from `prefix`.
    ///
    /// # Errors
    ///
    /// NotFound when the prefix is not a known peer.
    pub fn remove_peer(&mut self, prefix: IpNetwork) -> Result<()> {
        let prefix = normalize(prefix);
        let (map, key) = table_key(&prefix, ["peers_v4", "peers_v6"]);
        self.map(map)?.delete(&key).map_err(|e| {
            Error::other(ErrorKind::NotFound, "remove decap peer", e.to_string())
                .with_object(prefix.to_string())
        })
    }

    /// The known peers.
    ///
    /// # Errors
    ///
    /// The kernel's error reading the maps.
    pub fn peers(&self) -> Result<Vec<DecapPeer>> {
        let mut out = Vec::new();
        for name in ["peers_v4", "peers_v6"] {
            let map = self.map(name)?;
            for key in map.keys() {
                let Some(v) = map
                    .lookup(&key, MapFlags::ANY)
                    .map_err(|e| Error::bpf("read decap peers", e))?
                    .and_then(|v| abi::from_bytes::<lwtun_decap_peer>(&v))
                else {
                    continue;
                };
                let prefix = if let Some(k) = abi::from_bytes::<lwtun_peer_key4>(&key) {
                    IpNetwork::new(IpAddr::from(k.addr), k.prefixlen as u8)
                } else if let Some(k) = abi::from_bytes::<lwtun_peer_key6>(&key) {
                    IpNetwork::new(IpAddr::from(k.addr), k.prefixlen as u8)
                } else {
                    continue;
                };
                let Ok(prefix) = prefix else { continue };
                out.push(DecapPeer {
                    prefix,
                    gre_key: (v.flags & PEER_GRE_KEY != 0).then(|| u32::from_be(v.gre_key)),
                });
            }
        }
        Ok(out)
    }

    /// Decapsulates UDP packets to `port` as FOU (the inner IPv4/IPv6 packet right after the UDP
    /// header; the family is read from its version nibble).
    ///
    /// # Errors
    ///
    /// InvalidInput for port 0; the kernel's error otherwise.
    pub fn add_udp_port(&mut self, port: u16) -> Result<()> {
        if port == 0 {
            return Err(Error::invalid_input(
                "add decap UDP port",
                "port 0 is not a destination port",
            ));
        }
        // An array indexed by the port number (host order): 1 = FOU; it has a slot for every
        // port, so a write cannot find it full.
        self.map("udp_ports")?
            .update(
                &u32::from(port).to_ne_bytes(),
                &1u32.to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(|e| Error::bpf("add decap UDP port", e).with_object(port.to_string()))
    }

    /// Stops decapsulating UDP to `port`.
    ///
    /// # Errors
    ///
    /// NotFound when the port was not added.
    pub fn remove_udp_port(&mut self, port: u16) -> Result<()> {
        let op = "remove decap UDP port";
        let map = self.map("udp_ports")?;
        let key = u32::from(port).to_ne_bytes();
        let set = map
            .lookup(&key, MapFlags::ANY)
            .map_err(|e| Error::bpf(op, e).with_object(port.to_string()))?
            .is_some_and(|v| v.iter().any(|&b| b != 0));
        if !set {
            return Err(Error::not_found(op, format!("UDP port {port}")));
        }
        map.update(&key, &0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::bpf(op, e).with_object(port.to_string()))
    }

    /// Writes a decapsulated GRE packet's key to `skb->mark` (for policy routing or firewall
    /// rules per key). Off by default.
    ///
    /// # Errors
    ///
    /// The kernel's error writing the config map.
    pub fn set_key_to_mark(&mut self, on: bool) -> Result<()> {
        self.flags = if on {
            self.flags | KEY_TO_MARK
        } else {
            self.flags & !KEY_TO_MARK
        };
        self.write_config()
    }

    /// Whether GRE checksums are verified (the default; a packet with a wrong one is dropped
    /// and counted as `bad_checksum`). A packet sent on the same machine with checksum offload
    /// through a veth arrives with its inner checksum still partial; for TCP, UDP and ICMP the
    /// decap then checks the GRE checksum against the finished inner packet and has the stack
    /// verify the inner checksum itself (`bpf/csum.h`), so such senders need no exception.
    /// A GRE checksum field of 0 is one the sender left for its device to finish (the kernel's
    /// own gre devices with `csum` do, and through a veth it arrives so): it is accepted, the
    /// inner checksums left to the stack, as the kernel's own receiver does.
    /// Turning verification off saves the per-packet sum; the inner packet's own checksums are
    /// verified by the stack either way.
    ///
    /// # Errors
    ///
    /// The kernel's error writing the config map.
    pub fn set_verify_gre_checksum(&mut self, on: bool) -> Result<()> {
        self.flags = if on {
            self.flags & !NO_GRE_CSUM
        } else {
            self.flags | NO_GRE_CSUM
        };
        self.write_config()
    }

    /// Attaches the program at tc ingress of `ifindex` (in the calling thread's network
    /// namespace; tcx where present, clsact otherwise). It stays attached until
    /// [`detach`](Self::detach) or until this value drops.
    ///
    /// # Errors
    ///
    /// Exists when this family is already attached to `ifindex`; the errors of
    /// [`TcAttach::attach`] otherwise.
    pub fn attach(&mut self, device: &Device) -> Result<()> {
        if self.attachments.iter().any(|a| a.device() == device) {
            return Err(Error::other(
                ErrorKind::Exists,
                "attach decap",
                format!("already attached to {device}"),
            ));
        }
        let a = TcAttach::new(device, TcDirection::Ingress).attach(self.prog.as_fd())?;
        self.attachments.push(a);
        Ok(())
    }

    /// Detaches the program from `device`.
    ///
    /// # Errors
    ///
    /// NotFound when it is not attached there; the kernel's error detaching.
    pub fn detach(&mut self, device: &Device) -> Result<()> {
        match self.attachments.iter().position(|a| a.device() == device) {
            Some(i) => self.attachments.remove(i).detach(),
            None => Err(Error::not_found(
                "detach decap",
                format!("an attachment to {device}"),
            )),
        }
    }

    /// The devices the program is attached to.
    pub fn attached(&self) -> Vec<Device> {
        self.attachments
            .iter()
            .map(|a| a.device().clone())
            .collect()
    }

    /// The per-verdict counters, summed over CPUs.
    ///
    /// # Errors
    ///
    /// The kernel's error reading the map.
    pub fn counters(&self) -> Result<DecapCounters> {
        let map = self.map("counters")?;
        let mut c = [Counter::default(); EVENTS];
        for (i, slot) in c.iter_mut().enumerate() {
            *slot = sum_percpu(&map, i as u32, "read decap counters")?;
        }
        Ok(DecapCounters {
            ipip: c[0],
            gre: c[1],
            udp: c[2],
            unknown_peer: c[3],
            malformed: c[4],
            not_for_us: c[5],
            fragment: c[6],
            bad_checksum: c[7],
            key_mismatch: c[8],
            unsupported: c[9],
            error: c[10],
            ecn: c[11],
        })
    }

    /// Runs the decap program on `frame` with BPF_PROG_TEST_RUN (see [`test_run`]); counters
    /// count it like a real packet. The verdict is [`TC_ACT_UNSPEC`] for a packet decap
    /// handed on (decapsulated, or not a tunnel packet for this host) and [`TC_ACT_SHOT`] for
    /// one it refused.
    ///
    /// # Errors
    ///
    /// As [`test_run`].
    pub fn test_run(&self, frame: &[u8]) -> Result<TestRun> {
        test_run(self.prog.as_fd(), frame, 1)
    }
}
