//! Redirect a route's packets to any device, by destination: [`LwtRedirect`].
//!
//! The kernel's `test_lwt_redirect` in a typed API. An `lwt_xmit` program on a route looks the
//! packet's destination up in a table of rules the control plane edits; a rule sends the packet
//! to a device's egress (transmitted there, as if the stack had routed it out of that device) or
//! its ingress (`BPF_F_INGRESS`: received there, as if it had arrived on the wire):
//!
//! ```text
//!  ping 10.88.0.7 ─► route 10.88.0.0/16 dev d0 encap bpf xmit (redirect_xmit)
//!                           │ LPM lookup: 10.88.0.0/24 → veth0 egress, Ethernet src/dst
//!                           ▼
//!           bpf_skb_change_head(14) + Ethernet header     (Ethernet targets only)
//!           bpf_redirect(veth0, 0 | BPF_F_INGRESS)  ──►  veth0 sends it / receives it
//! ```
//!
//! The target's link type decides the header, checked when a rule is set
//! ([`LwtRedirect::set_rule`]):
//!
//! - an Ethernet device (veth, dummy, bridge, macvlan, vxlan, tap, ...) gets a 14-byte Ethernet
//!   header in front of the IP packet, with the MACs of the rule's [`L2Header`]. The kernel frees
//!   a packet redirected to such a device without one (`__bpf_redirect_common` wants a
//!   link-layer header), so a rule without a header is refused for egress; for ingress it
//!   defaults to the device's own MAC as source and destination, which the device's stack
//!   accepts as addressed to it.
//! - an L3 device (tun, ipip, gre, sit, ip6tnl, wireguard: `ARPHRD_NONE` and the tunnel link
//!   types the kernel sends without a MAC header) gets the IP packet as it is; a rule with an
//!   [`L2Header`] for it is refused ([`ErrorKind::InvalidInput`]).
//! - other link types (loopback, InfiniBand, CAN, ...) are refused: their link-layer header is
//!   not Ethernet.
//!
//! # Namespaces
//!
//! `bpf_redirect` takes an interface index, which the kernel resolves in the namespace of the
//! route's device. So every rule's device and every route of one family must be in one
//! namespace: the family is bound to the namespace of [`LwtRedirectBuilder::netns`], or else of
//! the first rule's device or the first route's ([`LwtRedirect::install_route`]), and refuses
//! devices of any other ([`ErrorKind::InvalidInput`]), which would otherwise reach whatever
//! device has that index in the routes' namespace.
//!
//! # Counters and drops
//!
//! A rule counts the packets it redirected and the failures the program saw (pushing the
//! header or `bpf_redirect` refused: the packet is dropped). The kernel delivers the packet
//! after the program returned and discards the delivery's result, so what happens after the
//! redirect shows only in the target device's own counters: a target that is down, or an
//! egress target without carrier (a veth whose peer is down), counts the packets in its
//! `tx_dropped` (egress) or `rx_dropped` (ingress). [`LwtRedirect::rule_stats`] reads those
//! next to the rule's own ([`RuleStats::device`]).
//!
//! Packets without a rule follow the [`MissPolicy`] ([`MissPolicy::Drop`] by default;
//! [`MissPolicy::Pass`] lets the route's own device send them); packets that are not IP or
//! whose header is truncated are dropped. Both are counted ([`LwtRedirect::events`]).
//!
//! # MTU
//!
//! A redirected packet skips the stack's MTU checks for the target; the route's MTU (its
//! device's, or an `mtu` metric) is what bounds it. The pushed Ethernet header does not count
//! against an Ethernet device's MTU, so no xmit headroom is needed for it.
//!
//! The maps (`rules_v4`, `rules_v6`: LPM tries of `struct lwtun_lwt_redirect_rule`;
//! `rule_stats`; `config`; `events`) carry BTF, so `bpftool map dump pinned FOLDER/rules_v4`
//! shows field names. [`LwtRedirectBuilder::pin`] pins maps and the program under a bpffs
//! folder; a later process that pins at the same folder adopts the rules found there.
//!
//! # Examples
//!
//! ```no_run
//! use lwtun::lwt_redirect::{L2Header, LwtRedirect, RedirectTarget};
//! use lwtun::netns::NetNs;
//!
//! let ns = NetNs::open("lab")?;
//! let veth0 = ns.device("veth0")?;
//! let d0 = ns.device("d0")?;                    // any device for the route: the rules decide
//! let mut redirect = LwtRedirect::load()?;
//! let header = L2Header::new([0x02, 0, 0, 0, 0, 1], [0x02, 0, 0, 0, 0, 2]); // src, dst
//! redirect.set_rule("10.88.0.0/24".parse().unwrap(), RedirectTarget::egress(&veth0).l2_header(header))?;
//! let _route = redirect.install_route("10.88.0.0/16".parse().unwrap(), &d0)?;
//! println!("{:?}", redirect.rule_stats("10.88.0.0/24".parse().unwrap())?);
//! # Ok::<(), lwtun::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;
use libbpf_rs::{MapCore, MapFlags, Object};

use crate::abi::{self, Pod, ABI_VERSION as LWTUN_ABI_VERSION, MAGIC as LWTUN_MAGIC};
use crate::device::{Device, DeviceCounters};
use crate::error::{Error, ErrorKind, Result};
use crate::family::lpm::{
    decode as decode_prefix, normalize, size_rule_maps, table_key, RULE_TABLES,
};
use crate::family::pins::PinLayout;
use crate::family::{zero_percpu, PinFolder, Slots};
use crate::netlink::link::Link;
use crate::netns::NetNs;
use crate::program::{sum_percpu, Counter, Hook, LwtProgram};
use crate::route::{InstalledRoute, LwtRoute};
use crate::skel::lwt_redirect::types::{
    lwtun_lwt_redirect_config, lwtun_lwt_redirect_rule, lwtun_lwt_redirect_stats,
};

pub use crate::family::MissPolicy;

// SAFETY: `struct lwtun_lwt_redirect_rule` is three u32s and two [u8; 6] (24 bytes, asserted in
// lwtun.h, no padding).
unsafe impl Pod for lwtun_lwt_redirect_rule {}
// SAFETY: `struct lwtun_lwt_redirect_stats` is three u64s (24 bytes, asserted).
unsafe impl Pod for lwtun_lwt_redirect_stats {}
// SAFETY: `struct lwtun_lwt_redirect_config` is four u32s (16 bytes, asserted).
unsafe impl Pod for lwtun_lwt_redirect_config {}

const RULE_INGRESS: u32 = 1 << 0;
const RULE_L2: u32 = 1 << 1;
const EV_MISS_PASS: u32 = 0;
const EV_MISS_DROP: u32 = 1;
const EV_MALFORMED: u32 = 2;
const MISS_DROP: u32 = 0;
const MISS_PASS: u32 = 1;
const ARPHRD_ETHER: u16 = 1;
/// The link types the kernel sends without a MAC header (`dev_is_mac_header_xmit` is false):
/// PPP, RAWIP, TUNNEL, TUNNEL6, SIT, IPGRE, PIMREG, IP6GRE, VOID, NONE.
const ARPHRD_L3: [u16; 10] = [512, 519, 768, 769, 776, 778, 779, 823, 0xffff, 0xfffe];
/// Rules a family holds unless the builder says otherwise.
pub const DEFAULT_CAPACITY: u32 = 1024;
const PROGRAM: &str = "redirect_xmit";

/// What a pinned [`LwtRedirect`] leaves in its folder (see [`crate::pins`]): its rule tables,
/// their counters, its settings and miss counters, and its program.
pub const PIN_LAYOUT: PinLayout = crate::family::pins::LWT_REDIRECT;

/// Where a redirected packet enters its device.
///
/// # Examples
///
/// ```
/// use lwtun::lwt_redirect::Direction;
///
/// assert_eq!(Direction::default(), Direction::Egress);
/// assert_eq!(Direction::Ingress.to_string(), "ingress");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// The device transmits the packet (its qdisc and driver; for a veth, the peer receives it).
    #[default]
    Egress,
    /// The device receives the packet, as if it had arrived on the wire (`BPF_F_INGRESS`).
    Ingress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        })
    }
}

/// The Ethernet header pushed in front of a packet redirected to an Ethernet device (its
/// EtherType follows the packet: IPv4 or IPv6).
///
/// # Examples
///
/// ```
/// use lwtun::lwt_redirect::L2Header;
///
/// let h = L2Header::new([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
/// assert_eq!(h.dst, [2, 0, 0, 0, 0, 2]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct L2Header {
    /// The source MAC (usually the target device's own).
    pub src: [u8; 6],
    /// The destination MAC: for egress the next hop's (a veth's peer), for ingress the target
    /// device's own (anything else reaches its stack as "other host" and is not delivered).
    pub dst: [u8; 6],
}

impl L2Header {
    /// A header from `src` to `dst`.
    pub fn new(src: [u8; 6], dst: [u8; 6]) -> Self {
        L2Header { src, dst }
    }
}

/// Where a rule sends its packets: a device, a direction, and for Ethernet devices the header.
///
/// # Examples
///
/// ```no_run
/// use lwtun::lwt_redirect::{Direction, L2Header, RedirectTarget};
/// use lwtun::netns::NetNs;
///
/// let ns = NetNs::open("lab")?;
/// let tun0 = ns.device("tun0")?;
/// let veth0 = ns.device("veth0")?;
/// let to_tun = RedirectTarget::ingress(&tun0);                 // an L3 device: no header
/// let to_veth = RedirectTarget::egress(&veth0)
///     .l2_header(L2Header::new([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]));
/// assert_eq!(to_tun.direction(), Direction::Ingress);
/// assert!(to_veth.header().is_some());
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RedirectTarget {
    device: Device,
    direction: Direction,
    l2: Option<L2Header>,
}

impl RedirectTarget {
    /// Sends packets to `device` in `direction`, with no header yet.
    pub fn new(device: &Device, direction: Direction) -> Self {
        RedirectTarget {
            device: device.clone(),
            direction,
            l2: None,
        }
    }

    /// Sends packets out of `device` (its egress).
    pub fn egress(device: &Device) -> Self {
        Self::new(device, Direction::Egress)
    }

    /// Hands packets to `device`'s ingress, as if it had received them.
    pub fn ingress(device: &Device) -> Self {
        Self::new(device, Direction::Ingress)
    }

    /// Pushes `header` in front of each packet (Ethernet targets only).
    pub fn l2_header(mut self, header: L2Header) -> Self {
        self.l2 = Some(header);
        self
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The direction.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The Ethernet header pushed, if any (for a rule that is set: the one the program pushes,
    /// including the ingress default).
    pub fn header(&self) -> Option<L2Header> {
        self.l2
    }
}

impl fmt::Display for RedirectTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.device, self.direction)?;
        if let Some(h) = self.l2 {
            write!(f, " ether {} > {}", mac_str(h.src), mac_str(h.dst))?;
        }
        Ok(())
    }
}

/// The old name of [`DeviceCounters`], the one type for a device's counters.
#[deprecated(since = "0.2.0", note = "use lwtun::device::DeviceCounters")]
pub type DeviceStats = DeviceCounters;

/// A device's counters, read through netlink in its namespace (`ip -s link show DEV`).
///
/// # Errors
///
/// [`ErrorKind::NotFound`] when the device is gone; [`ErrorKind::Kernel`] when the kernel sent
/// no `IFLA_STATS64`.
///
/// # Examples
///
/// ```no_run
/// use lwtun::netns::NetNs;
///
/// let lo = NetNs::current()?.device("lo")?;
/// #[allow(deprecated)]
/// let s = lwtun::lwt_redirect::device_stats(&lo)?;
/// println!("lo: {} packets sent, {} dropped", s.tx_packets, s.tx_dropped);
/// # Ok::<(), lwtun::Error>(())
/// ```
#[deprecated(
    since = "0.2.0",
    note = "use Device::counters (the same link counters, and the driver's)"
)]
pub fn device_stats(device: &Device) -> Result<DeviceCounters> {
    link_counters(device)
}

/// A device's link counters (no driver counters: a rule's stats read them for every rule).
fn link_counters(device: &Device) -> Result<DeviceCounters> {
    stats_of_link(&device.link()?).map_err(|e| e.with_object(device.to_string()))
}

fn stats_of_link(link: &Link) -> Result<DeviceCounters> {
    crate::device::link_stats(link).ok_or_else(|| {
        Error::other(
            ErrorKind::Kernel,
            "read device counters",
            "the link message carries no IFLA_STATS64 of the expected size",
        )
    })
}

/// A rule's counters, summed over CPUs, with its target device's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RuleStats {
    /// Packets redirected (`bpf_redirect` accepted them; what became of them afterwards shows
    /// in [`RuleStats::device`]).
    pub packets: u64,
    /// Their IP bytes (before the pushed Ethernet header).
    pub bytes: u64,
    /// Packets that matched but were dropped by the program: pushing the Ethernet header or
    /// `bpf_redirect` failed. In practice only when memory for the header runs out: on 6.18
    /// `bpf_skb_change_head` does not hold a packet to the route device's MTU (tried: a
    /// 1500-byte packet routed through a tun device and pushed to a veth's egress passes).
    pub failed: u64,
    /// The target device's counters now (`None` when the device is gone). A target that is
    /// down or without carrier counts the packets it dropped in `tx_dropped` (egress) or
    /// `rx_dropped` (ingress).
    pub device: Option<DeviceCounters>,
}

/// Packets no rule redirected, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RedirectEvents {
    /// No rule matched, and the miss policy passed them to the route's own device.
    pub missed_passed: Counter,
    /// No rule matched, and the miss policy dropped them.
    pub missed_dropped: Counter,
    /// Not IPv4/IPv6, truncated or with an inconsistent header: dropped.
    pub malformed: Counter,
}

pub use crate::program::Verdict;

/// The result of [`LwtRedirect::test_run`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TestRun {
    /// What the program returned.
    pub verdict: Verdict,
    /// The packet as the program left it: from the IP header, or from the pushed Ethernet
    /// header when the rule has one.
    pub packet: Vec<u8>,
    /// The kernel's time for the run.
    pub duration: Duration,
}

/// Options for loading an [`LwtRedirect`].
///
/// Kernel: Linux 4.11+ (LPM trie; LWT BPF 4.10).
///
/// # Examples
///
/// ```no_run
/// use lwtun::lwt_redirect::{LwtRedirect, MissPolicy};
///
/// let redirect = LwtRedirect::builder()
///     .capacity(64)
///     .miss_policy(MissPolicy::Pass)
///     .pin("/sys/fs/bpf/lwtun-redirect")
///     .load()?;
/// assert_eq!(redirect.capacity(), 64);
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct LwtRedirectBuilder {
    capacity: Option<u32>,
    pin: Option<PathBuf>,
    miss: Option<MissPolicy>,
    netns: Option<Result<NetNs>>,
}

impl LwtRedirectBuilder {
    /// How many rules (IPv4 and IPv6 each, and counter slots in all) the maps hold; default
    /// [`DEFAULT_CAPACITY`].
    pub fn capacity(mut self, rules: u32) -> Self {
        self.capacity = Some(rules);
        self
    }

    /// What packets without a rule get (default [`MissPolicy::Drop`]; an adopted family keeps
    /// its policy unless this is called).
    pub fn miss_policy(mut self, policy: MissPolicy) -> Self {
        self.miss = Some(policy);
        self
    }

    /// Binds the family to `netns`: rules and routes must be in it. Adopted rules' interface
    /// indexes are looked up there (default: the calling thread's namespace).
    pub fn netns(mut self, netns: &NetNs) -> Self {
        self.netns = Some(netns.fd().and_then(NetNs::of_fd));
        self
    }

    /// Pins the maps and the program under `folder` (on bpffs, created if missing) as
    /// `rules_v4`, `rules_v6`, `rule_stats`, `config`, `events` and `redirect_xmit`. When the
    /// folder holds pinned maps already, they are reused with their rules (adopted). The pins
    /// are removed when the family drops unless [`LwtRedirect::keep_pinned`] was called.
    pub fn pin(mut self, folder: impl Into<PathBuf>) -> Self {
        self.pin = Some(folder.into());
        self
    }

    /// Loads (verifies) the program and creates or adopts the maps.
    ///
    /// # Errors
    ///
    /// Permission without CAP_BPF/CAP_NET_ADMIN; InvalidInput for capacity 0, a pin folder
    /// outside bpffs, or adopted maps of another ABI version; NotFound when an adopted rule's
    /// device is not in the namespace; the verifier's or kernel's error otherwise. On error the
    /// pins found are left as they were.
    pub fn load(self) -> Result<LwtRedirect> {
        let op = "load LWT redirect";
        let capacity = self.capacity.unwrap_or(DEFAULT_CAPACITY);
        if capacity == 0 {
            return Err(Error::invalid_input(op, "capacity 0 holds no rules"));
        }
        let netns = self.netns.transpose()?;
        let pin = self
            .pin
            .map(|folder| PinFolder::open(folder, &PIN_LAYOUT, op))
            .transpose()?;
        let adopted = pin.as_ref().is_some_and(PinFolder::adopted);
        let mut open =
            crate::program::open_object("lwt_redirect", crate::skel::lwt_redirect::OBJECT, op)?;
        size_rule_maps(&mut open, capacity, op)?;
        if let Some(pin) = &pin {
            pin.reuse_maps(&mut open)?;
        }
        let object = crate::program::load_opened(open, op)?;
        let program = crate::program::lwt_program(&object, PROGRAM)?;
        let mut family = LwtRedirect {
            object,
            program,
            rules: BTreeMap::new(),
            slots: Slots::new(capacity),
            netns,
            miss: self.miss.unwrap_or_default(),
            pin,
        };
        let setup = (|| {
            if adopted {
                let cfg = family.read_config()?;
                if cfg.magic == LWTUN_MAGIC {
                    if cfg.version != LWTUN_ABI_VERSION {
                        return Err(Error::invalid_input(
                            op,
                            format!(
                                "the pinned maps are of lwtun ABI version {}, this lwtun speaks \
                                 {LWTUN_ABI_VERSION}: remove the folder or pin elsewhere",
                                cfg.version
                            ),
                        ));
                    }
                    if self.miss.is_none() {
                        family.miss = if cfg.miss == MISS_PASS {
                            MissPolicy::Pass
                        } else {
                            MissPolicy::Drop
                        };
                    }
                }
                family.adopt_rules()?;
            }
            family.write_config(family.miss)?;
            if let Some(pin) = &mut family.pin {
                pin.pin_maps(&mut family.object, "pin LWT redirect")?;
                pin.pin_program(PROGRAM, family.program.as_fd(), "pin LWT redirect")?;
            }
            Ok(())
        })();
        // On error the folder is left as it was found (crate::pins): adopted pins stay.
        setup?;
        if let Some(pin) = &mut family.pin {
            pin.commit();
        }
        Ok(family)
    }
}

#[derive(Debug, Clone)]
struct Installed {
    target: RedirectTarget,
    slot: u32,
}

/// The LWT redirect program family: its `lwt_xmit` program, its rule maps and the rules set.
///
/// Kernel: Linux 4.11+ (LPM trie; LWT BPF and `bpf_redirect` from `lwt_xmit` 4.10).
///
/// # Examples
///
/// ```no_run
/// use lwtun::lwt_redirect::{LwtRedirect, RedirectTarget};
/// use lwtun::netns::NetNs;
///
/// let ns = NetNs::open("lab")?;
/// let (tun0, d0) = (ns.device("tun0")?, ns.device("d0")?);
/// let mut redirect = LwtRedirect::load()?;
/// // Packets to 10.90.0.0/24 are handed to tun0's ingress, without an L2 header.
/// redirect.set_rule("10.90.0.0/24".parse().unwrap(), RedirectTarget::ingress(&tun0))?;
/// let route = redirect.install_route("10.90.0.0/24".parse().unwrap(), &d0)?;
/// println!("{route}: {:?}", redirect.rule_stats("10.90.0.0/24".parse().unwrap())?);
/// # Ok::<(), lwtun::Error>(())
/// ```
///
/// # Lifetime
///
/// Routes keep the program loaded by themselves, and the program keeps its maps: a route that
/// outlives the family (persisted, or installed by iproute2 from the pinned program) goes on
/// redirecting by the last rules set, which nothing can edit any more unless they are pinned
/// ([`LwtRedirectBuilder::pin`], [`LwtRedirect::keep_pinned`]) for a later family to adopt.
///
/// # Dropped packets
///
/// An egress target
/// that is down or without carrier counts what it drops in `tx_dropped` only on kernels whose
/// noop qdisc counts its drops (a 2024 change; seen on 6.18); older ones drop such packets
/// uncounted. Ingress drops are counted in `rx_dropped` on every kernel.
#[doc(alias = "test_lwt_redirect")]
#[doc(alias = "bpf_redirect")]
pub struct LwtRedirect {
    object: Object,
    program: LwtProgram,
    rules: BTreeMap<IpNetwork, Installed>,
    slots: Slots,
    netns: Option<NetNs>,
    miss: MissPolicy,
    pin: Option<PinFolder>,
}

impl fmt::Debug for LwtRedirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LwtRedirect")
            .field("rules", &self.rules.len())
            .field("capacity", &self.slots.capacity())
            .field("netns", &self.netns.as_ref().map(NetNs::name))
            .field("miss", &self.miss)
            .field("pin", &self.pin.as_ref().map(PinFolder::path))
            .finish()
    }
}

impl LwtRedirect {
    /// Options: capacity, miss policy, namespace, pin folder.
    pub fn builder() -> LwtRedirectBuilder {
        LwtRedirectBuilder::default()
    }

    /// Loads the family with default options (no pins, misses dropped).
    ///
    /// # Errors
    ///
    /// As [`LwtRedirectBuilder::load`].
    pub fn load() -> Result<Self> {
        Self::builder().load()
    }

    /// The lwt_xmit program (`redirect_xmit`) for routes ([`crate::route::LwtRoute`] with
    /// [`Hook::Xmit`]); [`LwtRedirect::install_route`] does that with the namespace check.
    pub fn program(&self) -> &LwtProgram {
        &self.program
    }

    /// The namespace the family is bound to, once it is.
    pub fn netns(&self) -> Option<&NetNs> {
        self.netns.as_ref()
    }

    /// The pin folder, when pinned.
    pub fn pin_folder(&self) -> Option<&Path> {
        self.pin.as_ref().map(PinFolder::path)
    }

    /// Leaves the pins in place when the family drops, so a later process (or bpftool, or
    /// `ip route ... encap bpf xmit pinned FOLDER/redirect_xmit`) finds them.
    pub fn keep_pinned(&mut self) {
        if let Some(p) = &mut self.pin {
            p.keep();
        }
    }

    /// How many rules the maps hold (IPv4 and IPv6 together share the counter slots).
    pub fn capacity(&self) -> u32 {
        self.slots.capacity()
    }

    /// The rules set, by prefix.
    pub fn rules(&self) -> Vec<(IpNetwork, RedirectTarget)> {
        self.rules
            .iter()
            .map(|(p, i)| (*p, i.target.clone()))
            .collect()
    }

    /// The target of the rule for exactly `prefix`.
    pub fn rule(&self, prefix: IpNetwork) -> Option<&RedirectTarget> {
        self.rules.get(&normalize(prefix)).map(|i| &i.target)
    }

    /// The miss policy in force.
    pub fn miss_policy(&self) -> MissPolicy {
        self.miss
    }

    /// Changes the miss policy; packets in flight see the old policy or the new one.
    ///
    /// # Errors
    ///
    /// The kernel's error writing the config map (the old policy stays).
    pub fn set_miss_policy(&mut self, policy: MissPolicy) -> Result<()> {
        self.write_config(policy)?;
        self.miss = policy;
        Ok(())
    }

    fn map(&self, name: &str) -> Result<libbpf_rs::Map<'_>> {
        self.object
            .maps()
            .find(|m| m.name() == name)
            .ok_or_else(|| Error::not_found("find map", format!("map {name} in lwt_redirect")))
    }

    /// The namespace binding `device` needs: `Ok(None)` when the family is bound to its
    /// namespace already, `Ok(Some(ns))` to bind it, InvalidInput for another namespace.
    fn binding_for(&self, device: &Device, op: &str) -> Result<Option<NetNs>> {
        match &self.netns {
            Some(ns) if ns.id()? == device.netns_id() => Ok(None),
            Some(ns) => Err(Error::invalid_input(
                op,
                format!(
                    "{device} is not in network namespace {}, where this family's rules and \
                     routes are: bpf_redirect resolves an ifindex in the route's namespace, so \
                     it would reach whatever device has index {} there. Load another \
                     LwtRedirect for that namespace",
                    ns.name(),
                    device.index()
                ),
            )),
            None => Ok(Some(NetNs::of_fd(device.netns().fd()?)?)),
        }
    }

    /// Sets (adds or replaces) the rule for `prefix`. The target device is read in its
    /// namespace and checked: an Ethernet device needs an [`L2Header`] for egress (ingress
    /// defaults to the device's own MAC both ways), an L3 device refuses one, other link types
    /// are refused; the device must be in the family's namespace (see the module docs).
    /// Replacing a rule keeps its counters; the kernel swaps the map entry atomically, so
    /// packets in flight see the old rule or the new one.
    ///
    /// # Errors
    ///
    /// InvalidInput for a refused target or header, a device in another namespace, or a full
    /// family; NotFound when the device is gone. Nothing changes on error.
    pub fn set_rule(&mut self, prefix: IpNetwork, target: RedirectTarget) -> Result<()> {
        let op = "set LWT redirect rule";
        let prefix = normalize(prefix);
        let object = format!("{prefix} → {target}");
        let bind = self
            .binding_for(&target.device, op)
            .map_err(|e| e.with_object(object.clone()))?;
        let link = target
            .device
            .link()
            .map_err(|e| e.with_object(object.clone()))?;
        let l2 = header_for(&link, target.direction, target.l2)
            .map_err(|e| e.with_object(object.clone()))?;
        let target = RedirectTarget { l2, ..target };
        let existing = self.rules.get(&prefix).map(|i| i.slot);
        let slot = match existing {
            Some(s) => s,
            None => self
                .slots
                .take(op)
                .map_err(|e| e.with_object(object.clone()))?,
        };
        let value = encode_rule(&target, slot);
        let result = (|| {
            if existing.is_none() {
                zero_percpu::<lwtun_lwt_redirect_stats>(&self.map("rule_stats")?, slot)?;
            }
            // The key layouts (and map names) are the tunnel redirect's.
            let (name, key) = table_key(&prefix, RULE_TABLES);
            let map = self.map(name)?;
            map.update(&key, abi::as_bytes(&value), MapFlags::ANY)
                .map_err(|e| {
                    crate::family::table_write_error(
                        "write redirect rule",
                        e,
                        "LWT redirect rules",
                        &map,
                    )
                    .with_object(prefix.to_string())
                })
        })();
        match result {
            Ok(()) => {
                if let Some(ns) = bind {
                    self.netns = Some(ns);
                }
                self.rules.insert(prefix, Installed { target, slot });
                Ok(())
            }
            Err(e) => {
                if existing.is_none() {
                    self.slots.release(slot);
                }
                Err(e.with_object(object))
            }
        }
    }

    /// Removes the rule for `prefix`; its packets follow the miss policy (or a shorter
    /// prefix's rule).
    ///
    /// # Errors
    ///
    /// NotFound when no rule has that prefix.
    pub fn remove_rule(&mut self, prefix: IpNetwork) -> Result<()> {
        let op = "remove LWT redirect rule";
        let prefix = normalize(prefix);
        let slot = self
            .rules
            .get(&prefix)
            .map(|i| i.slot)
            .ok_or_else(|| Error::not_found(op, format!("rule {prefix}")))?;
        let (name, key) = table_key(&prefix, RULE_TABLES);
        self.map(name)?
            .delete(&key)
            .map_err(|e| Error::bpf(op, e).with_object(prefix.to_string()))?;
        self.rules.remove(&prefix);
        self.slots.release(slot);
        Ok(())
    }

    /// The counters of the rule for `prefix`, summed over CPUs, and its target device's.
    ///
    /// # Errors
    ///
    /// NotFound when no rule has that prefix; the kernel's error reading the maps or the
    /// device.
    pub fn rule_stats(&self, prefix: IpNetwork) -> Result<RuleStats> {
        let op = "read LWT redirect rule stats";
        let prefix = normalize(prefix);
        let installed = self
            .rules
            .get(&prefix)
            .ok_or_else(|| Error::not_found(op, format!("rule {prefix}")))?;
        let values = self
            .map("rule_stats")?
            .lookup_percpu(&installed.slot.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::bpf(op, e))?
            .unwrap_or_default();
        let mut total = RuleStats::default();
        for v in values {
            let s: lwtun_lwt_redirect_stats = abi::from_bytes(&v).ok_or_else(|| {
                Error::other(ErrorKind::Kernel, op, "rule_stats value of the wrong size")
            })?;
            total.packets += s.packets;
            total.bytes += s.bytes;
            total.failed += s.failed;
        }
        total.device = match link_counters(&installed.target.device) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(total)
    }

    /// Packets no rule redirected: misses (by policy) and malformed packets.
    ///
    /// # Errors
    ///
    /// The kernel's error reading the map.
    pub fn events(&self) -> Result<RedirectEvents> {
        let map = self.map("events")?;
        let op = "read LWT redirect events";
        Ok(RedirectEvents {
            missed_passed: sum_percpu(&map, EV_MISS_PASS, op)?,
            missed_dropped: sum_percpu(&map, EV_MISS_DROP, op)?,
            malformed: sum_percpu(&map, EV_MALFORMED, op)?,
        })
    }

    /// A route to `dst` through `device` whose packets run the redirect program, for the
    /// caller to add options to and install. Binds the family to `device`'s namespace.
    ///
    /// # Errors
    ///
    /// InvalidInput when `device` is in another namespace than the family's.
    pub fn route(&mut self, dst: IpNetwork, device: &Device) -> Result<LwtRoute> {
        if let Some(ns) = self
            .binding_for(device, "build LWT redirect route")
            .map_err(|e| e.with_object(dst.to_string()))?
        {
            self.netns = Some(ns);
        }
        Ok(LwtRoute::new(dst)
            .device(device)
            .program(Hook::Xmit, &self.program))
    }

    /// Installs a route to `dst` through `device` (any device that is up will do: the program
    /// decides where packets go) in `device`'s namespace, running the redirect program at
    /// `lwt_xmit`. The route is removed when the returned value drops.
    ///
    /// # Errors
    ///
    /// As [`LwtRedirect::route`], then as [`LwtRoute::install`]. Nothing is installed on
    /// error (the namespace binding stays).
    pub fn install_route(&mut self, dst: IpNetwork, device: &Device) -> Result<InstalledRoute> {
        let route = self.route(dst, device)?;
        route.install(&mut device.netlink()?)
    }

    /// Runs the program once on `packet` (an IP packet; `protocol` is the EtherType the
    /// kernel gives `skb->protocol`, 0x0800 or 0x86dd for real packets) with
    /// BPF_PROG_TEST_RUN. Counters count it like a real packet. A redirect is only recorded:
    /// test_run sends nothing. Safe for every path: the program never calls
    /// `bpf_lwt_push_encap`.
    ///
    /// # Errors
    ///
    /// InvalidInput for an empty packet, and (from the kernel, EINVAL) for an IPv4 or IPv6
    /// `protocol` with a packet shorter than its fixed header on kernels that check it
    /// (`net/bpf/test_run.c`, 2026 stable fix; a route's packets always have one); the
    /// kernel's error otherwise (for example for a packet larger than a page).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::lwt_redirect::{LwtRedirect, Verdict};
    ///
    /// let redirect = LwtRedirect::load()?;
    /// let run = redirect.test_run(0x0800, &[0x45, 0, 0, 10])?;   // a truncated IPv4 header
    /// assert_eq!(run.verdict, Verdict::Drop);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn test_run(&self, protocol: u16, packet: &[u8]) -> Result<TestRun> {
        let run = crate::program::test_run_l3(
            self.program.as_fd(),
            "run LWT redirect program (BPF_PROG_TEST_RUN)",
            protocol,
            packet,
            Some(64),
            1,
        )?;
        Ok(TestRun {
            verdict: Verdict::of(run.retval),
            packet: run.data,
            duration: run.duration,
        })
    }

    fn read_config(&self) -> Result<lwtun_lwt_redirect_config> {
        let op = "read LWT redirect config";
        let raw = self
            .map("config")?
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::bpf(op, e))?
            .unwrap_or_default();
        abi::from_bytes(&raw)
            .ok_or_else(|| Error::other(ErrorKind::Kernel, op, "config value of the wrong size"))
    }

    fn write_config(&self, miss: MissPolicy) -> Result<()> {
        let cfg = lwtun_lwt_redirect_config {
            magic: LWTUN_MAGIC,
            version: LWTUN_ABI_VERSION,
            miss: match miss {
                MissPolicy::Drop => MISS_DROP,
                MissPolicy::Pass => MISS_PASS,
            },
            pad: 0,
        };
        self.map("config")?
            .update(&0u32.to_ne_bytes(), abi::as_bytes(&cfg), MapFlags::ANY)
            .map_err(|e| Error::bpf("write LWT redirect config", e))
    }

    /// Reads the rules found in adopted maps back into this family's bookkeeping, resolving
    /// their devices in the family's namespace (the calling thread's when none was given).
    fn adopt_rules(&mut self) -> Result<()> {
        let op = "adopt LWT redirect rules";
        let netns = match self.netns.take() {
            Some(ns) => ns,
            None => NetNs::current()?,
        };
        let mut found = Vec::new();
        for name in ["rules_v4", "rules_v6"] {
            let map = self.map(name)?;
            for key in map.keys() {
                let Some(value) = map
                    .lookup(&key, MapFlags::ANY)
                    .map_err(|e| Error::bpf(op, e))?
                else {
                    continue;
                };
                let rule: lwtun_lwt_redirect_rule = abi::from_bytes(&value)
                    .ok_or_else(|| Error::other(ErrorKind::Kernel, op, "rule of the wrong size"))?;
                let Some(prefix) = decode_prefix(&key) else {
                    continue;
                };
                let device = netns
                    .device_by_index(rule.ifindex)
                    .map_err(|e| e.with_object(format!("adopted rule {prefix}")))?;
                found.push((prefix, decode_target(&device, &rule), rule.slot));
            }
        }
        for (prefix, target, slot) in found {
            self.rules.insert(prefix, Installed { target, slot });
        }
        // Adopted maps keep the size their creator gave them.
        let used: Vec<u32> = self.rules.values().map(|i| i.slot).collect();
        self.slots = Slots::adopted(self.map("rule_stats")?.max_entries(), &used);
        self.netns = Some(netns);
        Ok(())
    }
}

fn mac_str(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// The header the program pushes for a target of `link`'s type, or why the target is refused.
fn header_for(link: &Link, direction: Direction, l2: Option<L2Header>) -> Result<Option<L2Header>> {
    let op = "check redirect target";
    let ty = link.link_type;
    if ty == ARPHRD_ETHER {
        return match (l2, direction, link.mac) {
            (Some(h), _, _) => Ok(Some(h)),
            (None, Direction::Ingress, Some(mac)) => Ok(Some(L2Header::new(mac, mac))),
            (None, Direction::Egress, _) | (None, Direction::Ingress, None) => {
                Err(Error::invalid_input(
                    op,
                    format!(
                        "{} is an Ethernet device: a packet redirected to its {direction} needs \
                         an Ethernet header (the kernel frees it otherwise); give the target an \
                         L2Header with the MAC of the next hop (for a veth, its peer's)",
                        link.name
                    ),
                ))
            }
        };
    }
    if ARPHRD_L3.contains(&ty) {
        return match l2 {
            None => Ok(None),
            Some(_) => Err(Error::invalid_input(
                op,
                format!(
                    "{} is an L3 device (link type {ty}) that carries no MAC header: drop the \
                     L2Header from the target",
                    link.name
                ),
            )),
        };
    }
    Err(Error::invalid_input(
        op,
        format!(
            "{} has link type {ty}, whose link-layer header is not Ethernet; lwtun redirects to \
             Ethernet devices and to L3 devices (tun, ip tunnels) only",
            link.name
        ),
    ))
}

fn encode_rule(target: &RedirectTarget, slot: u32) -> lwtun_lwt_redirect_rule {
    let mut flags = 0;
    if target.direction == Direction::Ingress {
        flags |= RULE_INGRESS;
    }
    let (dst, src) = match target.l2 {
        Some(h) => {
            flags |= RULE_L2;
            (h.dst, h.src)
        }
        None => ([0; 6], [0; 6]),
    };
    lwtun_lwt_redirect_rule {
        ifindex: target.device.index(),
        flags,
        slot,
        dst,
        src,
    }
}

fn decode_target(device: &Device, rule: &lwtun_lwt_redirect_rule) -> RedirectTarget {
    let direction = if rule.flags & RULE_INGRESS != 0 {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    RedirectTarget {
        device: device.clone(),
        direction,
        l2: (rule.flags & RULE_L2 != 0).then(|| L2Header::new(rule.src, rule.dst)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(link_type: u16, mac: Option<[u8; 6]>) -> Link {
        Link::for_tests(link_type, mac)
    }

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 5];

    #[test]
    fn ethernet_targets_need_a_header_for_egress_and_default_to_their_mac_for_ingress() {
        let eth = link(ARPHRD_ETHER, Some(MAC));
        let e = header_for(&eth, Direction::Egress, None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("L2Header"), "{e}");
        assert_eq!(
            header_for(&eth, Direction::Ingress, None).unwrap(),
            Some(L2Header::new(MAC, MAC))
        );
        let h = L2Header::new([2; 6], [3; 6]);
        assert_eq!(
            header_for(&eth, Direction::Egress, Some(h)).unwrap(),
            Some(h)
        );
    }

    #[test]
    fn l3_targets_refuse_a_mac_and_other_link_types_are_refused() {
        for ty in [0xfffe, 0xffff, 768, 776, 778, 519] {
            let l3 = link(ty, None);
            assert_eq!(header_for(&l3, Direction::Egress, None).unwrap(), None);
            let e = header_for(&l3, Direction::Ingress, Some(L2Header::new(MAC, MAC))).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{ty}");
            assert!(e.to_string().contains("L3 device"), "{e}");
        }
        // Loopback (772) and InfiniBand (32) have other link-layer headers.
        for ty in [772, 32] {
            let e = header_for(&link(ty, Some(MAC)), Direction::Egress, None).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            assert!(e.to_string().contains("not Ethernet"), "{e}");
        }
    }

    #[test]
    fn rule_layout_and_prefix_keys_round_trip() {
        assert_eq!(std::mem::size_of::<lwtun_lwt_redirect_rule>(), 24);
        assert_eq!(std::mem::size_of::<lwtun_lwt_redirect_stats>(), 24);
        assert_eq!(std::mem::size_of::<lwtun_lwt_redirect_config>(), 16);
        for p in ["10.88.0.0/24", "fd88:1::/64", "0.0.0.0/0"] {
            let prefix: IpNetwork = p.parse().unwrap();
            let (_, key) = table_key(&prefix, RULE_TABLES);
            assert_eq!(decode_prefix(&key), Some(prefix), "{p}");
        }
        assert_eq!(decode_prefix(&[1, 2, 3]), None);
        assert_eq!(
            normalize("10.88.3.4/16".parse().unwrap()).to_string(),
            "10.88.0.0/16"
        );
    }

    #[test]
    fn rule_targets_read_the_link_counters() {
        let mut raw = Vec::new();
        for i in 0..24u64 {
            raw.extend_from_slice(&(i + 100).to_ne_bytes());
        }
        let mut l = link(ARPHRD_ETHER, None);
        l.attributes.push(crate::netlink::attr::RawAttribute {
            kind: 23, // IFLA_STATS64
            value: raw,
        });
        assert_eq!(stats_of_link(&l).unwrap().tx_carrier_errors, 117);
        let l = link(ARPHRD_ETHER, None);
        assert_eq!(stats_of_link(&l).unwrap_err().kind(), ErrorKind::Kernel);
    }

    #[test]
    fn verdicts() {
        assert_eq!(Verdict::of(0), Verdict::Ok);
        assert_eq!(Verdict::of(2), Verdict::Drop);
        assert_eq!(Verdict::of(7), Verdict::Redirect);
        assert_eq!(Verdict::of(128), Verdict::Other(128));
    }
}
