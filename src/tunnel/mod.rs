//! The LWT tunnel data plane: [`Tunnel`] owns the loaded encap programs, their [`PeerTable`], the
//! routes that steer into them and the fix-up on the underlay.
//!
//! ```text
//!  host A                                   underlay                            host B
//!  packet to 10.20.1.2
//!   └► route 10.20.0.0/16 encap bpf xmit encap_xmit (LwtRoute, headroom = encap length)
//!        └► PeerTable LPM: 10.20.0.0/16 → GRE to 192.0.2.2
//!             └► bpf_lwt_push_encap([IPv4 192.0.2.1→192.0.2.2][GRE][packet]), BPF_LWT_REROUTE
//!                  └► route to 192.0.2.2 ─► underlay device ──► B
//! ```
//!
//! The receiving side strips the header with the BPF decap at tc ingress (`crate::decap`), so no
//! kernel tunnel device (ipip/gre modules) is needed at either end.
//!
//! After the encap the packet either leaves by the inner route's own device and next hop
//! (`BPF_OK`, IPv4 in IPv4 only) or the kernel routes it again by its outer destination
//! (`BPF_LWT_REROUTE`, a second lookup and output pass). By default ([`DirectMode::Checked`])
//! the tunnel takes the first way for exactly the peers whose remote the outer lookup would
//! send through that same next hop: it asks the kernel for each remote, and any change to the
//! namespace's routing sends every packet the second way until it has asked again (see
//! [`TunnelBuilder::direct_mode`], [`Tunnel::direct_status`], [`Tunnel::path_counters`]).
//! [`TunnelBuilder::direct`] forces either way.
//!
//! # TCP over IP-in-IP on Linux 6.18
//!
//! `bpf_lwt_push_encap` hands a TCP GSO packet to segmentation by its outer next header
//! (`handle_gso_encap()` in `net/core/lwt_bpf.c`), and that switch lists `IPPROTO_IP` (0) where
//! `IPPROTO_IPIP` (4) belongs: an outer header announcing IPv4-in-IP is refused for every GSO
//! packet and TCP stalls. The same switch *does* accept next header 0, and then marks the packet
//! `SKB_GSO_IPXIP4`/`SKB_GSO_IPXIP6`, the right segmentation for IP-in-IP. So the encap program
//! pushes GSO packets with an inner IPv4 header with next header 0, and then writes 4 there
//! itself (fixing the IPv4 header checksum) once the push has chosen the segmentation: the
//! packet leaves the program with a true header, and every segment carries protocol 4.
//!
//! An `lwt_in` program may not write the packet, so `encap_in` (an input route,
//! [`Tunnel::input_program`]) leaves the placeholder to `ipip_gso_fixup`, a tc egress program
//! on the underlay device that writes the 4 before the device segments the packet (segmentation
//! runs after tc egress). [`Tunnel::steer`] attaches it for IPv4 input routes, and
//! [`Tunnel::attach_underlay`] where such traffic leaves by another device. Where a placeholder
//! packet leaves by a device without it, the device cannot segment a packet with next header 0
//! (there is no offload for protocol 0) and drops it, so TCP stalls as it would without the
//! work-around, but nothing malformed reaches the wire (`tests/tunnel_peers.rs` shows both).
//! Routes with the xmit program (the default, [`Tunnel::route`]) need no program on the underlay
//! at all: an egress program there would cost every packet the device sends, tunnelled or not
//! (about 40 ns each here). Non-GSO packets and inner IPv6 (next header 41, which the kernel
//! matches) need no fix-up.
//!
//! # What an encapsulated datagram costs
//!
//! On egress `bpf_lwt_push_encap` asks for `encap length + LL_RESERVED_SPACE(route device)` bytes
//! of headroom (`skb_cow_head`), while the kernel builds a UDP, ICMP or raw datagram
//! (`ip_append_data`) with exactly `LL_RESERVED_SPACE(route device)` in front of it. So every
//! locally sent datagram is copied into a larger buffer (`pskb_expand_head`) by the encap,
//! whatever the device, and a device with more `needed_headroom` does not help: both sides of
//! the comparison grow with it (measured: a VXLAN device as the route's device still reallocates
//! every datagram). TCP builds its packets with `MAX_TCP_HEADER` of headroom and forwarded packets
//! arrive with the receiving driver's headroom, so neither pays it. The kernel's own LWT encaps
//! (seg6, MPLS) pay the same. With the second route lookup this is most of what separates a
//! 64-byte UDP datagram through the tunnel from plain routing (`benches/tunnel.rs` prints the
//! sender's CPU time per datagram for every mode); the direct path removes the lookup.
//!
//! Measured on the 2-vCPU bench machine (Linux 6.18, `perf` over the sender's CPU, 64-byte
//! datagrams, GRE, both ends tunnelled): plain routing costs about 3.4 µs per datagram and the
//! tunnel about 1.0-1.1 µs more. Of that, the second lookup and output pass take about 0.3-0.5
//! µs (the route lookup with its xfrm check, then `ip_output` again), the reallocation about
//! 0.12 µs, the kernel's LWT hook itself (`lwtunnel_xmit`, `bpf_xmit`, the BH-disabled program
//! run) about 0.1 µs, `bpf_lwt_push_encap` 0.07 µs, the encap program 0.06 µs and the receiving
//! end's decap (program and `bpf_skb_adjust_room`) about 0.15 µs. The first three are the
//! kernel's: no program can make an LWT `BPF_LWT_REROUTE` cheaper (LWT programs have neither
//! `bpf_fib_lookup` nor a neighbour lookup, and the kernel keeps no dst cache for the reroute), so
//! the rerouted path stays at about 0.72-0.79 of plain routing for such datagrams, and the
//! direct one at about 0.83-0.84 (0.78 for GRE with checksum, whose checksum over the inner
//! packet costs the rest). TCP pays it per GSO packet of up to 64 KiB and runs at 0.95-1.0 of
//! plain.

use std::fmt;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use libbpf_rs::{MapCore, Object};

use crate::device::Device;
use crate::error::{Error, ErrorKind, Result};
use crate::family::lpm::{trie_capacity, trie_entries};
use crate::family::pins::PinLayout;
use crate::family::MissPolicy;
use crate::family::PinFolder;
use crate::keeper::RouteKeeper;
use crate::monitor::{Event, Stamped};
use crate::netlink::Netlink;
use crate::netns::NetNs;
use crate::peer::PeerTable;
use crate::program::{lwt_program, Hook, LwtProgram};
use crate::route::{InstalledRoute, LwtRoute};
use crate::tc::{TcAttach, TcAttachment, TcDirection};

mod direct;
mod pinned;
pub use direct::{DirectMode, DirectStatus, PathCounters, LEASE as DIRECT_LEASE};
pub use pinned::{PinnedTunnel, TunnelTables};

/// Peers per table (IPv4 and IPv6 each) unless the builder says otherwise.
pub const DEFAULT_CAPACITY: u32 = 4096;
/// The largest headroom an LWT route takes (`LWT_BPF_MAX_HEADROOM`).
pub const MAX_HEADROOM: u32 = 256;
/// The headroom of a route when the table has no peers yet: an IPv6 outer header (40 bytes)
/// with a GRE header carrying checksum and key (12), the longest header lwtun pushes.
///
/// (It was 48 before 0.2, four bytes short for GRE with checksum and key over IPv6: on Linux 6.1
/// full-size TCP segments of such a peer were then dropped after the encap.)
pub const WORST_CASE_ENCAP: u32 = 52;

/// The smallest forward MTU a tunnel takes ([`TunnelBuilder::forward_mtu`]): IPv4's minimum
/// datagram (68) plus [`WORST_CASE_ENCAP`].
pub const MIN_FORWARD_MTU: u32 = 68 + WORST_CASE_ENCAP;

/// Options of a [`Tunnel`]: capacity and miss policies.
///
/// Kernel: Linux 5.3+ (`bpf_lwt_push_encap` and `BPF_LWT_REROUTE`, LPM trie 4.11; before 5.17 the object variant without `bpf_loop`, whose byte-by-byte GRE checksum covers 2 KiB; see [`Tunnel`]).
#[derive(Debug, Clone)]
pub struct TunnelBuilder {
    capacity: u32,
    miss_v4: Option<MissPolicy>,
    miss_v6: Option<MissPolicy>,
    pin: Option<PathBuf>,
    direct: DirectMode,
    sources: Vec<IpAddr>,
    forward_only: bool,
    auto_fixup: bool,
    forward_mtu: Option<u32>,
    /// Load both `lwt_xmit` variants (a resize moves routes of either onto new tables).
    both_xmit: bool,
    drain_on_drop: bool,
}

impl Default for TunnelBuilder {
    fn default() -> Self {
        TunnelBuilder {
            capacity: DEFAULT_CAPACITY,
            miss_v4: None,
            miss_v6: None,
            pin: None,
            direct: DirectMode::Checked,
            sources: Vec::new(),
            forward_only: false,
            auto_fixup: true,
            forward_mtu: None,
            both_xmit: false,
            drain_on_drop: true,
        }
    }
}

impl TunnelBuilder {
    /// Peers each table (IPv4, IPv6) can hold. The tries allocate per entry, so a large
    /// capacity costs nothing until it is used.
    pub fn capacity(mut self, peers: u32) -> Self {
        self.capacity = peers;
        self
    }

    /// The miss policy of both tables (default [`MissPolicy::Drop`]; adopted tables keep theirs
    /// unless this is set).
    pub fn miss_policy(mut self, policy: MissPolicy) -> Self {
        self.miss_v4 = Some(policy);
        self.miss_v6 = Some(policy);
        self
    }

    /// Pins the tables (`peers_v4`, `peers_v6`, `peer_stats`, `events`, `config`) under `folder`
    /// on a bpffs mount, so `bpftool map dump pinned FOLDER/peers_v4` shows them and a later
    /// process can adopt them: when the folder holds pins already, the tunnel reuses those maps
    /// with their peers, counters, policies and capacity. The pins are removed when the tunnel
    /// drops unless [`Tunnel::keep_pinned`] was called.
    ///
    /// One process owns a pin folder at a time: the tunnel holds an exclusive `flock` on the
    /// folder while it lives (released by the kernel when the process dies, also on `SIGKILL`),
    /// and a second load with the same folder fails with [`ErrorKind::Exists`] naming the
    /// owner's pid. Two owners would each edit the maps from their own stale copy of the table.
    ///
    /// What a process killed at any point (`SIGKILL`) leaves, and what the next load does with
    /// it:
    ///
    /// | killed during | pins afterwards | next load |
    /// |---|---|---|
    /// | the load (pinning) | none, or part of the set | a part is removed; loads fresh |
    /// | [`PeerTable::insert_batch`] / [`PeerTable::remove_batch`] | the whole set | adopts: each peer written or not, none torn; the adopted table is exactly what the kernel holds |
    /// | [`PeerTable::insert`], `replace`, `remove` | the whole set | adopts: the peer is old or new |
    /// | the drop of a tunnel not kept | part of the set | a part is removed; loads fresh |
    ///
    /// The kernel writes each map element atomically, so a batch cut short holds part of its
    /// items, each whole, and the adopter can finish it with the peers it lacks.
    /// Routes and tc attachments of a killed process stay (each route keeps its program, so it
    /// encapsulates with the old program until replaced): take them over with
    /// [`Tunnel::steer_replace`] or delete them with [`crate::route::remove_leftovers`] and
    /// [`crate::tc::remove_leftovers`].
    pub fn pin(mut self, folder: impl Into<PathBuf>) -> Self {
        self.pin = Some(folder.into());
        self
    }

    /// Encapsulated packets leave by the inner route's own device and next hop
    /// ([`DirectMode::Always`]) or are always routed again by their outer destination
    /// ([`DirectMode::Never`]), instead of the default [`DirectMode::Checked`]: direct for the
    /// peers the tunnel has checked, see [`TunnelBuilder::direct_mode`].
    ///
    /// By default the `lwt_xmit` program returns `BPF_LWT_REROUTE` after the encap, and the
    /// kernel looks the outer destination up (`ip_route_output_key`) and sends the packet
    /// through `ip_output` a second time. Direct, it returns `BPF_OK` instead for
    /// IPv4 in IPv4 (IP-in-IP, GRE or UDP with an IPv4 outer header over an inner IPv4 packet),
    /// and the transmission goes on with the inner route: its gateway, or for a route without
    /// one the outer destination resolved on-link on the route's device. That saves the second
    /// lookup and output pass (about 0.3 µs of 5 per 64-byte UDP datagram on the bench machine,
    /// `benches/tunnel.rs`). Other combinations are routed again as before: the kernel drops a
    /// `BPF_OK` packet whose protocol changed (4in6, 6in4), and IPv6 output picks the neighbour
    /// from the destination it read before the program ran (the inner one).
    ///
    /// `direct(true)` is right only while every IPv4 peer is reached through the next hop of
    /// the routes that steer into the tunnel (for example a route `10.20.0.0/16 dev eth0` whose
    /// peers are on eth0's link, or `via` the underlay's gateway to them). The outer packet then
    /// does not see the routing table, policy rules or marks, and netfilter's POSTROUTING sees
    /// only the inner packet. Only the `lwt_xmit` program changes; `lwt_in` always reroutes.
    pub fn direct(mut self, direct: bool) -> Self {
        self.direct = if direct {
            DirectMode::Always
        } else {
            DirectMode::Never
        };
        self
    }

    /// Whether dropping the tunnel empties a big table step by step in the background before
    /// the kernel frees it (default: on).
    ///
    /// The kernel frees an LPM trie node by node without yielding, so the last reference to a
    /// big one holds a CPU: on Linux 6.18 about 0.5 s for a million peers and 1.9 s for four
    /// million (`benches/peer_table_drop.rs`). With this on, a tunnel whose tables die with it
    /// (not pinned, or pinned and not kept) and hold 100 000 peers or more deletes them 4 096
    /// at a time, 2 ms apart, on a thread of its own after the routes are gone, and the empty
    /// tables go after. The drop itself returns at once. A process that exits right after
    /// dropping such a tunnel leaves the rest to the kernel: use [`Tunnel::close`], which
    /// empties the tables before it returns.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// // A short-lived tool that does not care about the CPU it holds when it exits.
    /// let tunnel = lwtun::tunnel::Tunnel::builder().drain_on_drop(false).load()?;
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn drain_on_drop(mut self, on: bool) -> Self {
        self.drain_on_drop = on;
        self
    }

    /// How IPv4-in-IPv4 packets leave after the encap (default [`DirectMode::Checked`]).
    ///
    /// Checked, the tunnel asks the kernel, for every IPv4 peer's remote, where the outer route
    /// lookup would send it (`ip route get REMOTE from LOCAL ipproto P`, in the VRF of the
    /// route's device), and lets the peer's packets go direct by a device only when that is
    /// the device and next hop of the tunnel's routes there. A netlink watch of the namespace's
    /// links, addresses, routes, rules, nexthops and forwarding settings makes every packet
    /// rerouted the moment anything changes, until the check has run again; a check also runs
    /// every 10 s, and after the peers change. The answers hold for [`DIRECT_LEASE`]
    /// unless renewed, so a process that stops leaves everything rerouted. The check runs in
    /// the namespace of the first [`Tunnel::steer`] (or [`Tunnel::check_direct`]); see
    /// [`Tunnel::direct_status`] and [`Tunnel::path_counters`] for what it decided.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::tunnel::{DirectMode, Tunnel};
    ///
    /// let tunnel = Tunnel::builder().direct_mode(DirectMode::Never).load()?;
    /// assert!(!tunnel.direct_status().checking);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn direct_mode(mut self, mode: DirectMode) -> Self {
        self.direct = mode;
        self
    }

    /// This host's inner address of `source`'s family (call once for IPv4 and once for IPv6):
    /// [`Tunnel::route`] makes routes that use it as their preferred source, so locally sent
    /// packets, and the replies to them, carry the inner address and come back through the
    /// tunnel. Without it a locally sent packet takes the route device's (underlay) address,
    /// and the far side's answer does not come back through the tunnel.
    pub fn source(mut self, source: IpAddr) -> Self {
        self.sources.retain(|s| s.is_ipv4() != source.is_ipv4());
        self.sources.push(source);
        self
    }

    /// The largest outer packet the underlay carries for forwarded traffic (input routes, see
    /// [`Tunnel::forward_mtu`]). Default: the smallest MTU of the devices of the input routes
    /// [`Tunnel::steer`] installs. Set it when the underlay's path MTU is smaller than its
    /// devices'.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let tunnel = lwtun::tunnel::Tunnel::builder().forward_only(true).forward_mtu(1400).load()?;
    /// assert_eq!(tunnel.forward_mtu()?, Some(1400));
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn forward_mtu(mut self, bytes: u32) -> Self {
        self.forward_mtu = Some(bytes);
        self
    }

    /// The tunnel only carries forwarded traffic (a gateway encapsulating for hosts behind
    /// it): [`Tunnel::steer`] then takes routes without a preferred source. Default `false`:
    /// a route without a source of its family is refused, since locally sent packets would
    /// carry the underlay address.
    pub fn forward_only(mut self, forward_only: bool) -> Self {
        self.forward_only = forward_only;
        self
    }

    /// Whether [`Tunnel::steer`] attaches the IP-in-IP GSO fix-up to the device of each IPv4
    /// route that runs the input program (default `true`; routes with the xmit program fix
    /// their packets themselves, see the [module docs](self)). Turn it off only to manage the
    /// fix-up yourself with [`Tunnel::attach_underlay`] (or to watch TCP stall without it).
    pub fn auto_underlay_fixup(mut self, on: bool) -> Self {
        self.auto_fixup = on;
        self
    }

    /// Loads the programs (verifies them) and creates the tables.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for capacity 0 or above 2^30; Permission without
    /// CAP_BPF/CAP_NET_ADMIN; the verifier's error otherwise.
    pub fn load(self) -> Result<Tunnel> {
        // A pin folder this call creates is removed again when the load fails.
        let made = self.pin.clone().filter(|f| !f.exists());
        let result = self.load_inner();
        if let (Err(_), Some(folder)) = (&result, made) {
            let _ = std::fs::remove_dir(folder);
        }
        result
    }

    fn load_inner(self) -> Result<Tunnel> {
        let op = "load tunnel";
        if self.capacity == 0 || self.capacity > 1 << 30 {
            return Err(Error::invalid_input(
                op,
                format!("capacity {} (1..=2^30 peers)", self.capacity),
            ));
        }
        if let Some(mtu) = self
            .forward_mtu
            .filter(|m| !(MIN_FORWARD_MTU..=65_535).contains(m))
        {
            return Err(Error::invalid_input(
                op,
                format!("forward MTU {mtu} ({MIN_FORWARD_MTU}..=65535 bytes)"),
            ));
        }
        let mut open = crate::program::open_object(
            "lwt_encap",
            crate::family::bpf_loop_variant(
                crate::probe::Feature::BpfLoop.present(),
                crate::skel::lwt_encap::OBJECT,
                crate::skel::lwt_encap_compat::OBJECT,
            ),
            op,
        )?;
        let mut capacity = self.capacity;
        // The pin protocol (crate::pins): folder, owner lock, complete set or none.
        let mut pin = match &self.pin {
            Some(folder) => Some(PinFolder::open(folder.clone(), &PIN_LAYOUT, op)?),
            None => None,
        };
        let adopted = pin.as_ref().is_some_and(PinFolder::adopted);
        if let Some(pin) = pin.as_ref().filter(|p| p.adopted()) {
            let op = "adopt pinned peer table";
            let m = pin.adopted_map("peers_v4", op)?;
            // A folder of another program's pins: say so before libbpf refuses to reuse
            // them with an unrelated errno.
            if m.map_type() != libbpf_rs::MapType::LpmTrie || m.key_size() != 8 {
                return Err(Error::invalid_input(
                    op,
                    format!(
                        "{} is a {:?} map with {}-byte keys, not lwtun's IPv4 peer trie: the \
                         folder holds another program's pins; pin the tunnel elsewhere or \
                         remove them",
                        pin.path().join("peers_v4").display(),
                        m.map_type(),
                        m.key_size()
                    ),
                ));
            }
            capacity = trie_capacity(m.max_entries());
        }
        for mut map in open.maps_mut() {
            let Some(name) = map.name().to_str().map(str::to_string) else {
                continue;
            };
            let entries = match name.as_str() {
                "peers_v4" | "peers_v6" => Some(trie_entries(capacity)),
                "peer_stats" => Some(capacity * 2),
                _ => None,
            };
            if let Some(entries) = entries {
                map.set_max_entries(entries)
                    .map_err(|e| Error::bpf(op, e))?;
            }
        }
        if let Some(pin) = &pin {
            pin.reuse_maps(&mut open)?;
        }
        // One of the two lwt_xmit variants is loaded (each costs a verification).
        let always = self.direct == DirectMode::Always;
        let xmit_name = if always {
            "encap_xmit_direct"
        } else {
            "encap_xmit"
        };
        for mut p in open.progs_mut() {
            let other = if always {
                "encap_xmit"
            } else {
                "encap_xmit_direct"
            };
            if p.name() == other && !self.both_xmit {
                p.set_autoload(false);
            }
        }
        let mut object = crate::program::load_opened(open, op)?;
        let xmit = lwt_program(&object, xmit_name)?;
        let input = lwt_program(&object, "encap_in")?;
        let fixup = crate::program::program_fd(&object, "ipip_gso_fixup")?;
        let preview = crate::program::program_fd(&object, "encap_preview")?;
        let mut peers = PeerTable::new(&object, capacity, adopted).map_err(|e| match &pin {
            Some(pin) if e.object().is_none() => e.with_object(pin.path().display().to_string()),
            _ => e,
        })?;
        if let Some(p) = self.miss_v4 {
            peers.set_miss_policy(false, p)?;
        }
        if let Some(p) = self.miss_v6 {
            peers.set_miss_policy(true, p)?;
        }
        if let Some(mtu) = self.forward_mtu {
            peers.set_forward_mtu(mtu)?;
        }
        if let Some(pin) = &mut pin {
            peers.journal_into(pin.path());
            pin.pin_maps(&mut object, "pin tunnel map")?;
            // The programs too, so that a route can be added from the pins alone
            // (`TunnelTables::xmit_program`) without loading and verifying them again.
            pin.pin_program(xmit_name, xmit.as_fd(), "pin tunnel program")?;
            pin.pin_program("encap_in", input.as_fd(), "pin tunnel program")?;
            pin.commit();
        }
        Ok(Tunnel {
            direct_check: None,
            direct_mode: self.direct,
            direct_failure: None,
            pin,
            keepers: Vec::new(),
            keeping: false,
            adopted,
            sources: self.sources,
            forward_only: self.forward_only,
            auto_fixup: self.auto_fixup,
            routes: Vec::new(),
            fixups: Vec::new(),
            drain: DrainOnDrop {
                on: self.drain_on_drop,
                drain: None,
            },
            peers,
            xmit,
            input,
            fixup,
            preview,
            preview_result: std::sync::Mutex::new(()),
            object,
        })
    }
}

/// A loaded LWT tunnel data plane: the encap programs (`lwt_xmit` and `lwt_in`), the peer
/// tables, the routes installed through [`Tunnel::steer`] and the underlay fix-ups attached with
/// [`Tunnel::attach_underlay`]. Dropping it removes the routes, detaches the fix-ups and
/// unloads the programs, in that order.
///
/// A `Tunnel` is `Send + Sync`: what reads (peer lookups, counters, [`Tunnel::preview`]) takes
/// `&self` and what edits takes `&mut self`, so threads or tasks can share one behind an
/// `Arc<RwLock<Tunnel>>`, reading at once while one edits.
///
/// Kernel: Linux 5.3+ (`bpf_lwt_push_encap` and `BPF_LWT_REROUTE`, LPM trie 4.11; underlay fix-up through tcx: 6.6+, else cls_bpf). Before 5.17 (no `bpf_loop`) it loads a variant whose byte-by-byte GRE checksum, needed only for packets that are not plain TCP, UDP or ICMP, covers up to 2 KiB ([`crate::probe::bpf_loop`]). Its tests ran on 5.10 (test runs only), 6.1, 6.12 and 6.18 (`scripts/kernel-matrix.sh`).
///
/// # Examples
///
/// ```no_run
/// use lwtun::netlink::Netlink;
/// use lwtun::peer::{Encap, EncapPeer};
/// use lwtun::tunnel::Tunnel;
///
/// let mut nl = Netlink::open()?;
/// let underlay = nl.device("eth0")?;
/// // Routes into the tunnel take this host's inner address as their source.
/// let mut tunnel = Tunnel::builder().source("10.30.0.1".parse().unwrap()).load()?;
/// tunnel.peers_mut().insert(
///     "10.20.0.0/16".parse().unwrap(),
///     EncapPeer::new("192.0.2.2".parse().unwrap(), "192.0.2.1".parse().unwrap(), Encap::Gre { key: None, checksum: false }),
/// )?;
/// let route = tunnel.route("10.20.0.0/16".parse().unwrap()).device(&underlay);
/// tunnel.steer(&mut nl, route)?;          // also attaches the IP-in-IP fix-up on eth0
/// // packets to 10.20.0.0/16 now leave GRE-encapsulated to 192.0.2.2
/// # Ok::<(), lwtun::Error>(())
/// ```
pub struct Tunnel {
    // Field order is drop order: routes first, then the fix-ups, then maps and programs, then
    // the pins and the folder's owner lock. The direct-path check ends (its lease with it)
    // and the route keepers stop before the routes go.
    direct_check: Option<direct::DirectChecker>,
    direct_mode: DirectMode,
    /// Why the check could not start, for [`Tunnel::direct_status`].
    direct_failure: Option<String>,
    keepers: Vec<RouteKeeper>,
    keeping: bool,
    adopted: bool,
    sources: Vec<IpAddr>,
    forward_only: bool,
    auto_fixup: bool,
    routes: Vec<InstalledRoute>,
    fixups: Vec<TcAttachment>,
    /// Filled by `Drop for Tunnel`; its own drop (after the routes are gone, before the
    /// tables' handles close) starts emptying a big table paced, in the background.
    drain: DrainOnDrop,
    peers: PeerTable,
    xmit: LwtProgram,
    input: LwtProgram,
    fixup: OwnedFd,
    preview: OwnedFd,
    /// Held from a preview's test run to its read of the `preview` map (one slot), so that
    /// threads sharing the tunnel (`&self`) each read their own result.
    preview_result: std::sync::Mutex<()>,
    object: Object,
    pin: Option<PinFolder>,
}

/// What a pinned tunnel leaves in its folder (see [`crate::pins`]): the peer tables, their
/// counters, the miss counters and the settings, and its encap programs (the `lwt_xmit` variant
/// it loaded and `encap_in`), which [`TunnelTables`] hands to new routes.
pub const PIN_LAYOUT: PinLayout = crate::family::pins::TUNNEL;

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel")
            .field("peers", &self.peers)
            .field("routes", &self.routes)
            .field("fixups", &self.fixups)
            .field("xmit", &self.xmit)
            .finish()
    }
}

/// The background drain of a dropped tunnel's tables (see [`TunnelBuilder::drain_on_drop`]).
#[derive(Debug)]
struct DrainOnDrop {
    on: bool,
    drain: Option<crate::peer::Drain>,
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        if let Some(drain) = self.drain.take() {
            drain.spawn();
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        // The fields drop after this, in their order: the routes go before `drain` starts.
        if self.drain.on && !self.pin.as_ref().is_some_and(PinFolder::kept) {
            self.drain.drain = self.peers.drain();
        }
    }
}

impl Tunnel {
    /// Options: capacity, miss policy.
    pub fn builder() -> TunnelBuilder {
        TunnelBuilder::default()
    }

    /// Loads a tunnel with default options ([`DEFAULT_CAPACITY`] peers per table, misses
    /// dropped).
    ///
    /// # Errors
    ///
    /// As [`TunnelBuilder::load`].
    pub fn load() -> Result<Self> {
        Self::builder().load()
    }

    /// Leaves the pins in place when the tunnel drops, for a later process to adopt (its routes
    /// and fix-ups are still removed: the later process installs its own).
    pub fn keep_pinned(&mut self) {
        if let Some(p) = &mut self.pin {
            p.keep();
        }
    }

    /// Ends this process's ownership of a pinned tunnel without stopping its traffic: the pins
    /// stay, and so do the routes installed with [`Tunnel::steer`] (each keeps the program it
    /// runs, so packets are encapsulated from the pinned tables all along). The next owner
    /// adopts the pins and takes the routes over with [`Tunnel::steer_replace`]. The underlay
    /// fix-ups are detached: until the next owner attaches its own, IP-in-IP TCP over them
    /// stalls (see the [module docs](self)); other encaps do not need them.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::tunnel::Tunnel;
    ///
    /// let tunnel = Tunnel::builder().pin("/sys/fs/bpf/lwtun-demo").load()?;
    /// // ... serve, then on SIGTERM before the new version starts:
    /// tunnel.hand_over()?;
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// InvalidInput for a tunnel without a pin folder (there would be nothing to take over).
    pub fn hand_over(mut self) -> Result<()> {
        self.try_hand_over()
    }

    /// [`hand_over`](Self::hand_over) without giving the tunnel up: when it fails (the tunnel
    /// is not pinned) the tunnel is still the caller's, its routes and tables as before; when it
    /// succeeds, dropping the value leaves the pins and routes for the next owner (which can
    /// adopt them once this value has dropped and its lock is gone).
    ///
    /// # Errors
    ///
    /// InvalidInput for a tunnel without a pin folder.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::tunnel::Tunnel;
    ///
    /// let mut tunnel = Tunnel::builder().load()?;
    /// if let Err(e) = tunnel.try_hand_over() {
    ///     eprintln!("{e}: serving on"); // the tunnel still runs
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn try_hand_over(&mut self) -> Result<()> {
        if self.pin.is_none() {
            return Err(Error::invalid_input(
                "hand over tunnel",
                "the tunnel is not pinned, so no later process could adopt its tables: load it \
                 with TunnelBuilder::pin",
            ));
        }
        self.keep_pinned();
        self.stop_keeping();
        for route in self.routes.drain(..) {
            let _ = route.persist();
        }
        Ok(())
    }

    /// Drops the tunnel (its routes, fix-ups and programs go as on drop) and, for tables that
    /// die with it and hold 100 000 peers or more, deletes their peers step by step before it
    /// returns, so that the kernel frees empty tables and no CPU is held (see
    /// [`TunnelBuilder::drain_on_drop`]; about 4.4 s for four million peers here). For a process
    /// about to exit, where a background drain would be cut short.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let tunnel = lwtun::tunnel::Tunnel::builder().capacity(4_000_000).load()?;
    /// // ... millions of peers, then at exit:
    /// tunnel.close();
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn close(mut self) {
        let drain = if self.pin.as_ref().is_some_and(PinFolder::kept) {
            None
        } else {
            self.peers.drain()
        };
        self.drain.on = false;
        drop(self);
        if let Some(drain) = drain {
            drain.run();
        }
    }

    /// The pin folder, when pinned.
    pub fn pin_folder(&self) -> Option<&Path> {
        self.pin.as_ref().map(PinFolder::path)
    }

    /// Whether the tables were adopted from pins (see [`TunnelBuilder::pin`]).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The peer tables.
    pub fn peers(&self) -> &PeerTable {
        &self.peers
    }

    /// The peer tables, to change peers (at any time: packets see each change at once).
    pub fn peers_mut(&mut self) -> &mut PeerTable {
        &mut self.peers
    }

    /// The `lwt_xmit` encap program (for routes of locally sent and forwarded packets):
    /// `encap_xmit`, or `encap_xmit_direct` for a tunnel loaded with
    /// [`TunnelBuilder::direct`].
    pub fn xmit_program(&self) -> &LwtProgram {
        &self.xmit
    }

    /// The `lwt_in` encap program (for input routes: packets encapsulated as they arrive, before
    /// forwarding). After the encap the kernel routes the packet again as input, with this
    /// host's address as its outer source: IPv4 input routing drops that as a martian unless
    /// `net.ipv4.conf.<ingress device or all>.accept_local` is 1.
    pub fn input_program(&self) -> &LwtProgram {
        &self.input
    }

    /// The tc program that finishes IP-in-IP GSO packets (see the module docs).
    pub fn fixup_program(&self) -> BorrowedFd<'_> {
        self.fixup.as_fd()
    }

    /// The test_run-safe twin of the encap program (`sched_cls`, frames start at the Ethernet
    /// header): it builds the outer header the encap would push and stores it instead of pushing
    /// it. [`Tunnel::preview`] runs it; benchmarks time it with BPF_PROG_TEST_RUN.
    pub fn preview_program(&self) -> BorrowedFd<'_> {
        self.preview.as_fd()
    }

    /// The outer header the encap would push for `frame` (an Ethernet frame carrying the inner
    /// IPv4 or IPv6 packet), computed by the data plane's own code under BPF_PROG_TEST_RUN;
    /// `None` when the frame matches no peer or is not IP. The encap program itself never runs
    /// under test_run (`bpf_lwt_push_encap` needs a routed packet).
    ///
    /// # Errors
    ///
    /// InvalidInput for a frame shorter than an Ethernet header; the kernel's error otherwise.
    pub fn preview(&self, frame: &[u8]) -> Result<Option<Vec<u8>>> {
        let op = "preview encap";
        let _one_at_a_time = self
            .preview_result
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let run = crate::tc::test_run(self.preview.as_fd(), frame, 1)?;
        if run.verdict != 0 {
            return Ok(None);
        }
        let map = self
            .object
            .maps()
            .find(|m| m.name() == "preview")
            .ok_or_else(|| Error::not_found(op, "map preview"))?;
        let bytes = map
            .lookup(&0u32.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
            .map_err(|e| Error::bpf(op, e))?
            .unwrap_or_default();
        let v: crate::skel::lwt_encap::types::lwtun_encap_preview = crate::abi::from_bytes(&bytes)
            .ok_or_else(|| {
                Error::other(ErrorKind::Kernel, op, "preview entry of the wrong size")
            })?;
        let len = (v.len as usize).min(v.hdr.len());
        Ok(Some(v.hdr[..len].to_vec()))
    }

    /// The headroom a route into this tunnel needs: the longest encap of the current peers, or
    /// [`WORST_CASE_ENCAP`] while there are none.
    pub fn headroom(&self) -> u32 {
        self.peers.max_encap_len().unwrap_or(WORST_CASE_ENCAP)
    }

    /// A route for `prefix` whose packets the `lwt_xmit` encap program handles, with
    /// [`Tunnel::headroom`] set. Add the device (and gateway) and pass it to [`Tunnel::steer`],
    /// or install it yourself.
    ///
    /// The headroom is fixed when the route is installed, and the kernel subtracts it from the
    /// path MTU. Peers added later with a longer encapsulation (an IPv6 outer header after IPv4
    /// ones, a GRE key) need the route installed again, or a route made with
    /// `.headroom(WORST_CASE_ENCAP)` from the start.
    ///
    /// The route takes the [source](TunnelBuilder::source) of its family as its preferred
    /// source, unless `.source(..)` is set on it afterwards.
    pub fn route(&self, prefix: IpNetwork) -> LwtRoute {
        let route = LwtRoute::new(prefix)
            .program(Hook::Xmit, &self.xmit)
            .headroom(self.headroom());
        match self
            .sources
            .iter()
            .find(|s| s.is_ipv4() == prefix.is_ipv4())
        {
            Some(src) => route.source(*src),
            None => route,
        }
    }

    /// Installs `route` (from [`Tunnel::route`]) through `nl` and keeps it: it is removed when
    /// the tunnel drops, or with [`Tunnel::remove_routes`].
    ///
    /// For an IPv4 route that runs the input program ([`Tunnel::input_program`] at
    /// [`Hook::In`]) it also attaches the IP-in-IP GSO fix-up (see the [module docs](self)) to
    /// the route's device, where encapsulated packets leave when the underlay is reached through
    /// that device. Where the underlay leaves by another device, add it with
    /// [`Tunnel::attach_underlay`]. Routes with the xmit program need none.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a route without a preferred source on a tunnel that has
    /// no [source](TunnelBuilder::source) of its family and is not
    /// [forward-only](TunnelBuilder::forward_only); the kernel's error attaching the fix-up or
    /// installing the route. On error nothing is left attached or installed.
    pub fn steer(&mut self, nl: &mut Netlink, route: LwtRoute) -> Result<()> {
        self.steer_with(nl, route, false)
    }

    /// Like [`Tunnel::steer`], but replaces a route to the same destination (same table and
    /// metric) in one netlink request (`NLM_F_REPLACE`): packets see the old route's program or
    /// this tunnel's, never no route. This is how a new process takes over the routes of the
    /// process it follows (an upgrade, or a restart after a crash): it adopts the pinned tables
    /// and steers its routes with this. Without such a route it installs one, as `steer` does.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::netlink::Netlink;
    /// use lwtun::tunnel::Tunnel;
    ///
    /// // The new version of a daemon: the tables are the old process's, the routes become ours.
    /// let mut tunnel = Tunnel::builder().pin("/sys/fs/bpf/lwtun-demo").load()?;
    /// let mut nl = Netlink::open()?;
    /// let eth0 = nl.device("eth0")?;
    /// let route = tunnel.route("10.20.0.0/16".parse().unwrap()).device(&eth0);
    /// tunnel.steer_replace(&mut nl, route.source("10.30.0.1".parse().unwrap()))?;
    /// tunnel.keep_pinned();
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Tunnel::steer`]; on error the old route is as it was.
    pub fn steer_replace(&mut self, nl: &mut Netlink, route: LwtRoute) -> Result<()> {
        self.steer_with(nl, route, true)
    }

    fn steer_with(&mut self, nl: &mut Netlink, route: LwtRoute, replace: bool) -> Result<()> {
        let op = "steer route into tunnel";
        let dst = route.spec().dst;
        if route.spec().prefsrc.is_none() && !self.forward_only {
            let family = if dst.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(Error::invalid_input(
                op,
                format!(
                    "the route has no preferred source, so packets this host sends to {dst} \
                     would carry its underlay address and the answers would not come back \
                     through the tunnel; give the tunnel this host's inner {family} address \
                     with TunnelBuilder::source, set .source(..) on the route, or build the \
                     tunnel with TunnelBuilder::forward_only(true) if it only forwards"
                ),
            )
            .with_object(dst.to_string()));
        }
        if route.has_program(Hook::In) {
            self.fit_forward_mtu(&route)
                .map_err(|e| e.with_object(dst.to_string()))?;
        }
        let fixed = self.fixups.len();
        if dst.is_ipv4() && route.has_program(Hook::In) && self.auto_fixup {
            if let Some(device) = route.output_device().cloned() {
                self.attach_underlay(&device)
                    .map_err(|e| e.with_object(format!("GSO fix-up for {dst} on {device}")))?;
            }
        }
        let installed = if replace {
            route.replace(nl)
        } else {
            route.install(nl)
        };
        match installed {
            Ok(installed) => {
                if self.direct_mode == DirectMode::Checked && self.direct_check.is_none() {
                    // A check that cannot start leaves every packet rerouted: correct, and
                    // direct_status says why.
                    if let Err(e) = self.check_direct(nl) {
                        self.direct_failure = Some(e.to_string());
                    }
                }
                let kept = if self.keeping {
                    self.keep(&installed)
                } else {
                    Ok(())
                };
                self.routes.push(installed);
                kept
            }
            Err(e) => {
                self.fixups.truncate(fixed);
                Err(e)
            }
        }
    }

    /// The largest outer packet the underlay carries for forwarded traffic, which the input
    /// program checks packets against (`None` until set with [`TunnelBuilder::forward_mtu`] or
    /// by [`Tunnel::steer`], which lowers it to the MTU of each input route's device).
    ///
    /// A forwarded packet that would not fit once encapsulated and may not be fragmented (IPv4
    /// with DF, or IPv6) is dropped and counted in
    /// [`MissCounters::too_big`](crate::peer::MissCounters::too_big). Encapsulated, the underlay
    /// would refuse it with an ICMP error addressed to the outer source, this router, so it
    /// would be lost without a trace. The sender is not told either way: an `lwt_in` program
    /// cannot answer with an ICMP error, and handing the packet back to the kernel's forwarding
    /// is not reliable (see `bpf/lwt_encap.bpf.c`). So hosts that send through an input route
    /// need the tunnel's MTU on their route to it (forward MTU less the encap, for example
    /// `ip route add … mtu 1480` for IP-in-IP over 1500 bytes); TCP from such hosts segments
    /// to fit. GSO packets are segmented to fit by the router and are never too big.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let tunnel = lwtun::tunnel::Tunnel::builder().forward_only(true).load()?;
    /// assert_eq!(tunnel.forward_mtu()?, None);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The kernel's error reading the config map.
    pub fn forward_mtu(&self) -> Result<Option<u32>> {
        Ok(Some(self.peers.forward_mtu()?).filter(|m| *m != 0))
    }

    /// Lowers the forward MTU to the MTU of the device of input route `route` (see
    /// [`Tunnel::forward_mtu`]).
    fn fit_forward_mtu(&mut self, route: &LwtRoute) -> Result<()> {
        let Some(device) = route.output_device() else {
            return Ok(()); // over a nexthop object or a gateway alone: nothing to measure
        };
        let device_mtu = device.link()?.mtu;
        match self.forward_mtu()? {
            Some(m) if m <= device_mtu => Ok(()),
            _ => self.peers.set_forward_mtu(device_mtu),
        }
    }

    /// Starts (or moves) the direct-path check into `nl`'s namespace, for a
    /// [`DirectMode::Checked`] tunnel whose routes were installed there without
    /// [`Tunnel::steer`] (which starts it by itself). Returns once the first check has run.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::netlink::Netlink;
    /// use lwtun::tunnel::Tunnel;
    ///
    /// let mut tunnel = Tunnel::load()?;
    /// let nl = Netlink::open()?;
    /// // ... routes installed with tunnel.route(..).install(..) ...
    /// tunnel.check_direct(&nl)?;
    /// println!("{:?}", tunnel.direct_status());
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// InvalidInput for a tunnel of another [`DirectMode`]; the kernel's error opening the
    /// namespace's netlink sockets or reading the maps. On error no check runs and every
    /// packet is rerouted.
    pub fn check_direct(&mut self, nl: &Netlink) -> Result<()> {
        let op = "check the tunnel's direct path";
        if self.direct_mode != DirectMode::Checked {
            return Err(Error::invalid_input(
                op,
                format!(
                    "the tunnel was loaded with DirectMode::{:?}; only a Checked tunnel checks                      its peers (TunnelBuilder::direct_mode)",
                    self.direct_mode
                ),
            ));
        }
        self.direct_check = None; // ends the old lease first
        let netns = NetNs::of_fd(nl.netns()?)?;
        let checker = direct::DirectChecker::start(
            &netns,
            &self.object,
            &self.peers,
            self.xmit.route_name().to_string(),
        )?;
        self.direct_check = Some(checker);
        self.direct_failure = None;
        Ok(())
    }

    /// What the direct-path check decided (see [`TunnelBuilder::direct_mode`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let tunnel = lwtun::tunnel::Tunnel::load()?;
    /// assert!(!tunnel.direct_status().checking); // until a route is steered
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn direct_status(&self) -> DirectStatus {
        match &self.direct_check {
            Some(c) => c.status(),
            None => DirectStatus {
                mode: self.direct_mode,
                reason: match self.direct_mode {
                    DirectMode::Checked => Some(self.direct_failure.clone().unwrap_or_else(|| {
                        "no check runs yet: steer a route (Tunnel::steer) or call \
                         Tunnel::check_direct"
                            .to_string()
                    })),
                    _ => None,
                },
                ..Default::default()
            },
        }
    }

    /// How the `lwt_xmit` program sent packets on: direct or routed again, summed over CPUs.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let tunnel = lwtun::tunnel::Tunnel::load()?;
    /// let c = tunnel.path_counters()?;
    /// assert_eq!(c.direct_packets + c.rerouted_packets, 0);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The kernel's error reading the counters.
    pub fn path_counters(&self) -> Result<PathCounters> {
        direct::path_counters(&self.object)
    }

    /// The routes installed with [`Tunnel::steer`].
    pub fn routes(&self) -> &[InstalledRoute] {
        &self.routes
    }

    /// Removes the routes installed with [`Tunnel::steer`].
    ///
    /// # Errors
    ///
    /// The first error removing one; the others are still removed.
    pub fn remove_routes(&mut self) -> Result<()> {
        for k in &self.keepers {
            for r in &self.routes {
                k.release(r.route());
            }
        }
        let mut first = Ok(());
        for r in self.routes.drain(..) {
            if let Err(e) = r.remove() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Keeps the tunnel's routes in place from now on: a route installed with
    /// [`Tunnel::steer`] (before or after this call) that someone else deletes is added again
    /// at once, with the tunnel's programs, by a [`RouteKeeper`] per namespace the routes live
    /// in. What the keepers did is in [`Tunnel::route_events`]. Routes the tunnel removes
    /// itself ([`Tunnel::remove_routes`], drop) are not put back; a route replaced by someone
    /// else (a new owner's [`Tunnel::steer_replace`]) is theirs. Calling it again is a no-op.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::netlink::Netlink;
    /// use lwtun::tunnel::Tunnel;
    ///
    /// let mut tunnel = Tunnel::builder().forward_only(true).load()?;
    /// let mut nl = Netlink::open()?;
    /// let eth0 = nl.device("eth0")?;
    /// tunnel.steer(&mut nl, tunnel.route("10.20.0.0/16".parse().unwrap()).device(&eth0))?;
    /// tunnel.keep_routes()?;
    /// // `ip route del 10.20.0.0/16` elsewhere: the route is back within a millisecond.
    /// for event in tunnel.route_events() {
    ///     println!("{event}"); // route restore 10.20.0.0/16 ... after 0.2 ms
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`RouteKeeper::start_in`]; on error the tunnel keeps no route (as before the call).
    pub fn keep_routes(&mut self) -> Result<()> {
        if self.keeping {
            return Ok(());
        }
        self.keeping = true;
        let routes = std::mem::take(&mut self.routes);
        let kept = routes.iter().try_for_each(|r| self.keep(r));
        self.routes = routes;
        if kept.is_err() {
            self.stop_keeping();
        }
        kept
    }

    /// What the route keepers did since last asked ([`Event::RouteRestored`] and
    /// [`Event::RouteNotRestored`]); empty unless [`Tunnel::keep_routes`] was called.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let mut tunnel = lwtun::tunnel::Tunnel::builder().forward_only(true).load()?;
    /// tunnel.keep_routes()?;
    /// assert!(tunnel.route_events().is_empty());
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn route_events(&self) -> Vec<Stamped<Event>> {
        let mut events: Vec<_> = self.keepers.iter().flat_map(RouteKeeper::events).collect();
        events.sort_by_key(|e| e.time);
        events
    }

    /// Keeps `route` with the keeper of its namespace, started on first use.
    fn keep(&mut self, route: &InstalledRoute) -> Result<()> {
        let netns = NetNs::of_fd(route.netns()?)?;
        let id = netns.id()?;
        let at = match self.keepers.iter().position(|k| k.netns_id() == id) {
            Some(at) => at,
            None => {
                self.keepers.push(RouteKeeper::start_in(&netns)?);
                self.keepers.len() - 1
            }
        };
        self.keepers[at].keep(route)
    }

    fn stop_keeping(&mut self) {
        self.keeping = false;
        self.keepers.clear();
    }

    /// Attaches the IP-in-IP GSO fix-up at tc egress of the underlay device `device` (in the
    /// device's namespace). Kept until the tunnel drops. Attaching it again to a device that
    /// has it is a no-op. [`Tunnel::steer`] does this for the device of an IPv4 input route;
    /// call it for an underlay device such routes do not name. Routes with the xmit program do
    /// not need it.
    ///
    /// # Errors
    ///
    /// The kernel's error attaching the program.
    pub fn attach_underlay(&mut self, device: &Device) -> Result<()> {
        if self.fixups.iter().any(|f| f.device() == device) {
            return Ok(());
        }
        let attachment = TcAttach::new(device, TcDirection::Egress).attach(self.fixup.as_fd())?;
        self.fixups.push(attachment);
        Ok(())
    }

    /// The fix-ups attached with [`Tunnel::attach_underlay`].
    pub fn underlay_fixups(&self) -> &[TcAttachment] {
        &self.fixups
    }

    /// Map names and ids of the tables (for `bpftool map dump id N`).
    pub fn map_ids(&self) -> Vec<(String, u32)> {
        self.object
            .maps()
            .filter_map(|m| {
                let name = m.name().to_str()?.to_string();
                let info = m.info().ok()?;
                Some((name, info.info.id))
            })
            .collect()
    }
}
