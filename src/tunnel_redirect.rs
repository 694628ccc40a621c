//! Redirect packets into collect_md tunnel devices by inner destination: [`TunnelRedirect`].
//!
//! The kernel's `samples/bpf/tc_l2_redirect` in a typed API. A rule maps an inner destination
//! prefix to a collect_md ("external") tunnel device and the tunnel key a packet gets there:
//!
//! ```text
//!  packet to 10.9.0.7 ──► redirect_tc (tc on a veth) ─┐
//!                         redirect_lwt_xmit (a route) ─┤ LPM lookup: 10.9.0.0/16 → vx0, key
//!                                                      ▼
//!                bpf_skb_set_tunnel_key(remote 192.0.2.2, VNI 42, ttl, tos, flags)
//!                bpf_redirect(vx0)  ──►  vx0 encapsulates (VXLAN/UDP to 192.0.2.2)
//! ```
//!
//! The same rules serve both entry points: [`TunnelRedirect::tc_program`] for a tc hook (attach
//! it with [`crate::tc::TcAttach`]) and [`TunnelRedirect::lwt_program`] for an LWT route
//! ([`crate::route::LwtRoute`] with [`crate::program::Hook::Xmit`]).
//!
//! Rules are checked when they are set: the target must be a collect_md tunnel device
//! (`vxlan`/`geneve`/`gre`/`gretap`/`ip6gre`/`ipip`/`ip6tnl`/`erspan` with `external`), the remote's
//! address family must suit it, and a device that carries Ethernet frames (vxlan, geneve, gretap)
//! needs the inner destination MAC. Anything else is [`ErrorKind::InvalidInput`] before a packet
//! is touched.
//!
//! # MTU
//!
//! A redirected packet skips the stack's MTU checks and is encapsulated as it is. VXLAN adds 50
//! bytes over IPv4 and 70 over IPv6 (inner Ethernet 14, VXLAN 8, UDP 8, outer IP 20/40): an
//! IPv4 outer header without [`TunnelKeyFlags::DONT_FRAGMENT`] is fragmented when the result is
//! too big for the underlay, an IPv6 one is dropped (seen on Linux 6.18: TCP stalls while ping
//! works). Give the senders an MTU that leaves room for the encapsulation (for example 1430 on a
//! 1500-byte IPv6 underlay), or give the LWT route an `mtu` metric.
//!
//! The maps (`rules_v4`, `rules_v6`: LPM tries of `struct lwtun_redirect_rule`; `rule_stats`:
//! per-rule counters; `events`) carry BTF, so `bpftool map dump pinned FOLDER/rules_v4` shows
//! field names. [`TunnelRedirectBuilder::pin`] pins maps and programs under a caller-named bpffs
//! folder; a later process that pins at the same folder adopts the rules found there.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use libbpf_rs::{MapCore, MapFlags, Object};

use crate::abi::{self, Pod};
use crate::device::Device;
use crate::error::{Error, ErrorKind, Result};
use crate::family::lpm::{normalize, size_rule_maps, table_key, RULE_TABLES};
use crate::family::pins::PinLayout;
use crate::family::{zero_percpu, PinFolder, Slots};
use crate::netlink::link::Link;
use crate::netlink::{attr, Netlink};
use crate::netns::NetNsId;
use crate::program::{sum_percpu, Counter, LwtProgram};
use crate::skel::tc_redirect::types::{
    lwtun_redirect_key4, lwtun_redirect_key6, lwtun_redirect_rule, lwtun_redirect_stats,
};

// SAFETY: `struct lwtun_redirect_key4` is u32 + [u8; 4] (8 bytes, asserted in lwtun.h).
unsafe impl Pod for lwtun_redirect_key4 {}
// SAFETY: `struct lwtun_redirect_key6` is u32 + [u8; 16] (20 bytes, asserted).
unsafe impl Pod for lwtun_redirect_key6 {}
// SAFETY: `struct lwtun_redirect_rule` is integers and byte arrays with explicit padding (72).
unsafe impl Pod for lwtun_redirect_rule {}
// SAFETY: `struct lwtun_redirect_stats` is three u64s (24 bytes, asserted).
unsafe impl Pod for lwtun_redirect_stats {}

const RULE_INGRESS: u32 = 1 << 0;
const RULE_REMOTE_V6: u32 = 1 << 1;
const RULE_L2: u32 = 1 << 2;
const RULE_LOCAL: u32 = 1 << 3;
const EV_MISS: u32 = 0;
const EV_NOT_IP: u32 = 1;
const ARPHRD_ETHER: u16 = 1;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_DATA: u16 = 2;
/// Rules a family holds unless the builder says otherwise.
pub const DEFAULT_CAPACITY: u32 = 1024;
const PROGRAMS: [&str; 2] = ["redirect_tc", "redirect_lwt_xmit"];

/// What a pinned [`TunnelRedirect`] leaves in its folder (see [`crate::pins`]): its rule
/// tables, their counters, its miss counters, and its two programs.
pub const PIN_LAYOUT: PinLayout = crate::family::pins::TUNNEL_REDIRECT;

bitflags::bitflags! {
    /// Flags of a tunnel key (`bpf_skb_set_tunnel_key`'s `BPF_F_*`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct TunnelKeyFlags: u32 {
        /// Send no outer checksum (`BPF_F_ZERO_CSUM_TX`): a zero UDP checksum for
        /// VXLAN/Geneve/FOU, and no GRE checksum field for GRE.
        ///
        /// Without it the kernel adds one, and for GRE that must match the far end: a kernel
        /// gre device configured without `csum` (the default of `ip link add ... type gre`)
        /// drops GRE packets that carry a checksum (counting them as `rx_crc_errors`), and
        /// one with `csum` drops those that do not. Set it towards such plain devices.
        const ZERO_CSUM_TX = 1 << 1;
        /// Set DF on the outer IPv4 header (`BPF_F_DONT_FRAGMENT`).
        const DONT_FRAGMENT = 1 << 2;
        /// GRE: add sequence numbers (`BPF_F_SEQ_NUMBER`).
        const SEQ_NUMBER = 1 << 3;
        /// GRE: send no key field (`BPF_F_NO_TUNNEL_KEY`).
        ///
        /// Kernel: Linux 6.2+.
        const NO_TUNNEL_KEY = 1 << 4;
    }
}

/// The tunnel metadata a packet gets: where the outer header goes and what it carries.
///
/// # Examples
///
/// ```
/// use lwtun::tunnel_redirect::{TunnelKey, TunnelKeyFlags};
///
/// let key = TunnelKey::new("192.0.2.2".parse().unwrap(), 42)
///     .ttl(64)
///     .flags(TunnelKeyFlags::DONT_FRAGMENT);
/// assert_eq!(key.id, 42);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TunnelKey {
    /// The outer destination (the far tunnel endpoint).
    pub remote: IpAddr,
    /// The outer source; `None` lets the route to `remote` choose it.
    pub local: Option<IpAddr>,
    /// The key: VNI for VXLAN/Geneve, GRE key for GRE.
    pub id: u32,
    /// The outer TTL / hop limit; 0 takes the device's default.
    pub ttl: u8,
    /// The outer TOS / traffic class.
    pub tos: u8,
    /// The outer IPv6 flow label (IPv6 remotes only).
    pub flow_label: u32,
    /// `BPF_F_*` flags.
    pub flags: TunnelKeyFlags,
}

impl TunnelKey {
    /// A key for `remote` with key/VNI `id`, default TTL and TOS, no flags.
    pub fn new(remote: IpAddr, id: u32) -> Self {
        TunnelKey {
            remote,
            local: None,
            id,
            ttl: 0,
            tos: 0,
            flow_label: 0,
            flags: TunnelKeyFlags::empty(),
        }
    }

    /// Sets the outer source address.
    ///
    /// Kernel: Linux 6.0+ (`local_ipv4`/`local_ipv6` of `struct bpf_tunnel_key`).
    pub fn local(mut self, local: IpAddr) -> Self {
        self.local = Some(local);
        self
    }

    /// Sets the outer TTL.
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the outer TOS.
    pub fn tos(mut self, tos: u8) -> Self {
        self.tos = tos;
        self
    }

    /// Sets the outer IPv6 flow label (20 bits).
    pub fn flow_label(mut self, label: u32) -> Self {
        self.flow_label = label;
        self
    }

    /// Sets the flags.
    pub fn flags(mut self, flags: TunnelKeyFlags) -> Self {
        self.flags = flags;
        self
    }
}

/// One rule: packets to `prefix` go into `device` with `key`.
///
/// # Examples
///
/// ```no_run
/// use lwtun::{netns::NetNs, tunnel_redirect::{RedirectRule, TunnelKey}};
///
/// let vx0 = NetNs::open("lab")?.device("vx0")?;     // a vxlan external device
/// let rule = RedirectRule::new(
///     "10.9.0.0/16".parse().unwrap(),
///     &vx0,
///     TunnelKey::new("192.0.2.2".parse().unwrap(), 42),
/// )
/// .inner_dst_mac([0x02, 0, 0, 0, 0, 0x42]);
/// assert!(!rule.ingress);
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct RedirectRule {
    /// The inner destination prefix (host bits are cleared when the rule is set).
    pub prefix: IpNetwork,
    /// The ifindex of the collect_md tunnel device (in the namespace of the [`Device`] the
    /// rule was made with).
    pub device: u32,
    /// The device's namespace, checked against the netlink socket of
    /// [`TunnelRedirect::set_rule`]; `None` for rules read back from the kernel.
    pub netns: Option<NetNsId>,
    /// The tunnel key.
    pub key: TunnelKey,
    /// Redirect to the device's ingress (as if received by it) instead of its egress.
    pub ingress: bool,
    /// For devices carrying Ethernet frames: the inner destination MAC (the far tunnel
    /// device's address, or whatever the far side accepts).
    pub inner_dst_mac: Option<[u8; 6]>,
    /// The inner source MAC; `None` takes the tunnel device's own address.
    pub inner_src_mac: Option<[u8; 6]>,
}

impl RedirectRule {
    /// A rule sending `prefix` into `device` (egress) with `key`.
    pub fn new(prefix: IpNetwork, device: &Device, key: TunnelKey) -> Self {
        let mut rule = RedirectRule::with_index(prefix, device.index(), key);
        rule.netns = Some(device.netns_id());
        rule
    }

    /// A rule by bare interface index, for rules read back from the kernel and unit tests.
    fn with_index(prefix: IpNetwork, device: u32, key: TunnelKey) -> Self {
        RedirectRule {
            prefix,
            device,
            netns: None,
            key,
            ingress: false,
            inner_dst_mac: None,
            inner_src_mac: None,
        }
    }

    /// Redirects to the device's ingress instead.
    pub fn to_ingress(mut self) -> Self {
        self.ingress = true;
        self
    }

    /// Sets the inner destination MAC (needed for vxlan, geneve, gretap targets).
    pub fn inner_dst_mac(mut self, mac: [u8; 6]) -> Self {
        self.inner_dst_mac = Some(mac);
        self
    }

    /// Sets the inner source MAC.
    pub fn inner_src_mac(mut self, mac: [u8; 6]) -> Self {
        self.inner_src_mac = Some(mac);
        self
    }
}

impl PartialEq for RedirectRule {
    /// Rules are equal when they send the same prefix the same way (the namespace a rule was
    /// made in is not part of what the kernel holds).
    fn eq(&self, other: &Self) -> bool {
        self.prefix == other.prefix
            && self.device == other.device
            && self.key == other.key
            && self.ingress == other.ingress
            && self.inner_dst_mac == other.inner_dst_mac
            && self.inner_src_mac == other.inner_src_mac
    }
}

impl Eq for RedirectRule {}

impl std::hash::Hash for RedirectRule {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.prefix.hash(state);
        self.device.hash(state);
        self.key.hash(state);
        self.ingress.hash(state);
        self.inner_dst_mac.hash(state);
        self.inner_src_mac.hash(state);
    }
}

/// A rule's counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RuleStats {
    /// Packets redirected.
    pub packets: u64,
    /// Their bytes (tc: from the Ethernet header; lwt_xmit: from the IP header, before the
    /// pushed Ethernet header).
    pub bytes: u64,
    /// Packets that matched but were dropped because the kernel refused the tunnel key or the
    /// MAC rewrite.
    pub errors: u64,
}

/// Packets the programs passed on without redirecting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RedirectEvents {
    /// IP packets no rule matched.
    pub missed: Counter,
    /// Packets that are not IPv4/IPv6 (ARP, ...) or too short to parse.
    pub not_ip: Counter,
}

/// What a collect_md device is, for checking rules against it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    kind: String,
    l2: bool,
    mac: Option<[u8; 6]>,
}

/// Options for loading a [`TunnelRedirect`].
///
/// Kernel: Linux 4.11+ (LPM trie; `bpf_skb_set_tunnel_key` 4.3; tcx: 6.6+).
#[derive(Debug, Clone, Default)]
pub struct TunnelRedirectBuilder {
    capacity: Option<u32>,
    pin: Option<PathBuf>,
}

impl TunnelRedirectBuilder {
    /// How many rules (IPv4 and IPv6 each, and counter slots in all) the maps hold; default
    /// [`DEFAULT_CAPACITY`].
    pub fn capacity(mut self, rules: u32) -> Self {
        self.capacity = Some(rules);
        self
    }

    /// Pins the maps and programs under `folder` (on bpffs, created if missing) as
    /// `rules_v4`, `rules_v6`, `rule_stats`, `events`, `redirect_tc`, `redirect_lwt_xmit`.
    /// When the folder holds pinned maps already, they are reused with their rules (adopted).
    /// The pins are removed when the family drops unless [`TunnelRedirect::keep_pinned`] was called.
    pub fn pin(mut self, folder: impl Into<PathBuf>) -> Self {
        self.pin = Some(folder.into());
        self
    }

    /// Loads (verifies) the programs and creates or adopts the maps.
    ///
    /// # Errors
    ///
    /// Permission without CAP_BPF/CAP_NET_ADMIN; InvalidInput for capacity 0 or a pin folder
    /// outside bpffs; the verifier's or kernel's error otherwise.
    pub fn load(self) -> Result<TunnelRedirect> {
        let op = "load tunnel redirect";
        let capacity = self.capacity.unwrap_or(DEFAULT_CAPACITY);
        if capacity == 0 {
            return Err(Error::invalid_input(op, "capacity 0 holds no rules"));
        }
        let pin = self
            .pin
            .map(|folder| PinFolder::open(folder, &PIN_LAYOUT, op))
            .transpose()?;
        let adopted = pin.as_ref().is_some_and(PinFolder::adopted);
        let mut open =
            crate::program::open_object("tc_redirect", crate::skel::tc_redirect::OBJECT, op)?;
        size_rule_maps(&mut open, capacity, op)?;
        if let Some(pin) = &pin {
            pin.reuse_maps(&mut open)?;
        }
        let object = crate::program::load_opened(open, op)?;
        let tc_fd = crate::program::program_fd(&object, PROGRAMS[0])?;
        let lwt = LwtProgram::from_fd(crate::program::program_fd(&object, PROGRAMS[1])?)?;
        let mut family = TunnelRedirect {
            object,
            tc_fd,
            lwt,
            rules: BTreeMap::new(),
            slots: Slots::new(capacity),
            pin,
        };
        // Adopted rules first, then the pins: on error the folder is left as it was found
        // (crate::pins).
        if adopted {
            family.adopt_rules()?;
        }
        if let Some(pin) = &mut family.pin {
            let op = "pin tunnel redirect";
            pin.pin_maps(&mut family.object, op)?;
            pin.pin_program(PROGRAMS[0], family.tc_fd.as_fd(), op)?;
            pin.pin_program(PROGRAMS[1], family.lwt.as_fd(), op)?;
            pin.commit();
        }
        Ok(family)
    }
}

#[derive(Debug, Clone, Copy)]
struct Installed {
    rule: RedirectRule,
    slot: u32,
}

/// The tunnel redirect program family: its programs, its rule maps and the rules set in them.
///
/// Kernel: Linux 4.11+ (LPM tries, `bpf_skb_set_tunnel_key` and `bpf_redirect` from tc and
/// `lwt_xmit`; an outer source address, [`TunnelKey::local`]: 6.0+;
/// [`TunnelKeyFlags::NO_TUNNEL_KEY`]: 6.2+; tcx: 6.6+).
///
/// # Examples
///
/// ```no_run
/// use lwtun::netlink::Netlink;
/// use lwtun::tc::{TcAttach, TcDirection};
/// use lwtun::tunnel_redirect::{RedirectRule, TunnelKey, TunnelRedirect};
///
/// let mut nl = Netlink::open()?;
/// let vx = nl.device("vx0")?;                     // ip link add vx0 type vxlan external
/// let veth = nl.device("veth0")?;
/// let mut redirect = TunnelRedirect::builder().pin("/sys/fs/bpf/lwtun-demo").load()?;
/// redirect.set_rule(&mut nl, RedirectRule::new(
///     "10.9.0.0/16".parse().unwrap(),
///     &vx,
///     TunnelKey::new("192.0.2.2".parse().unwrap(), 42),
/// ).inner_dst_mac([0x02, 0, 0, 0, 0, 0x42]))?;
/// let _tc = TcAttach::new(&veth, TcDirection::Ingress).attach(redirect.tc_program())?;
/// println!("{:?}", redirect.rule_stats("10.9.0.0/16".parse().unwrap())?);
/// # Ok::<(), lwtun::Error>(())
/// ```
#[doc(alias = "bpf_skb_set_tunnel_key")]
#[doc(alias = "tc_l2_redirect")]
pub struct TunnelRedirect {
    object: Object,
    tc_fd: OwnedFd,
    lwt: LwtProgram,
    rules: BTreeMap<IpNetwork, Installed>,
    slots: Slots,
    pin: Option<PinFolder>,
}

impl fmt::Debug for TunnelRedirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelRedirect")
            .field("rules", &self.rules.len())
            .field("capacity", &self.slots.capacity())
            .field("pin", &self.pin.as_ref().map(PinFolder::path))
            .finish()
    }
}

impl TunnelRedirect {
    /// Options: capacity, pin folder.
    pub fn builder() -> TunnelRedirectBuilder {
        TunnelRedirectBuilder::default()
    }

    /// Loads the family with default options (no pins).
    ///
    /// # Errors
    ///
    /// As [`TunnelRedirectBuilder::load`].
    pub fn load() -> Result<Self> {
        Self::builder().load()
    }

    /// The tc program (`sched_cls`, `redirect_tc`): attach it to a device's ingress or egress
    /// with [`crate::tc::TcAttach`].
    pub fn tc_program(&self) -> BorrowedFd<'_> {
        self.tc_fd.as_fd()
    }

    /// The lwt_xmit program (`redirect_lwt_xmit`) for an LWT route.
    pub fn lwt_program(&self) -> &LwtProgram {
        &self.lwt
    }

    /// The pin folder, when pinned.
    pub fn pin_folder(&self) -> Option<&Path> {
        self.pin.as_ref().map(PinFolder::path)
    }

    /// Leaves the pins in place when the family drops, so a later process (or bpftool, or
    /// `ip route ... encap bpf xmit pinned FOLDER/redirect_lwt_xmit`) finds them.
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
    pub fn rules(&self) -> Vec<RedirectRule> {
        self.rules.values().map(|i| i.rule).collect()
    }

    fn map(&self, name: &str) -> Result<libbpf_rs::Map<'_>> {
        self.object
            .maps()
            .find(|m| m.name() == name)
            .ok_or_else(|| Error::not_found("find map", format!("map {name} in tc_redirect")))
    }

    /// Sets (adds or replaces) a rule. The target device is looked up through `nl`, which must
    /// be in the device's namespace, and checked: it must be a collect_md tunnel device whose
    /// family suits the remote, and Ethernet-carrying devices need
    /// [`RedirectRule::inner_dst_mac`]. Replacing a rule keeps its counters; the kernel swaps
    /// the map entry atomically, so packets in flight see the old rule or the new one.
    ///
    /// # Errors
    ///
    /// InvalidInput for a target that is not a collect_md tunnel device (or is a tunnel of the
    /// other address family), a missing inner MAC, a TTL/label out of range, or a full family;
    /// NotFound for an unknown device; Unsupported for a key with an outer source
    /// ([`TunnelKey::local`]) on a kernel before 6.0 ([`Feature::TunnelKeyLocal`]).
    ///
    /// [`Feature::TunnelKeyLocal`]: crate::probe::Feature::TunnelKeyLocal
    pub fn set_rule(&mut self, nl: &mut Netlink, rule: RedirectRule) -> Result<()> {
        let mut rule = rule;
        rule.prefix = normalize(rule.prefix);
        let object = rule.prefix.to_string();
        if let Some(id) = rule.netns {
            if nl.netns_id()? != id {
                return Err(Error::invalid_input(
                    "set redirect rule",
                    format!(
                        "the rule's device (ifindex {}) is in namespace {id}, the netlink socket in \
                         {}; open it with Netlink::open_in(device.netns())",
                        rule.device,
                        nl.netns_id()?
                    ),
                )
                .with_object(object));
            }
        }
        if rule.key.local.is_some() {
            crate::probe::Feature::TunnelKeyLocal
                .require("set a redirect rule with an outer source")
                .map_err(|e| e.with_object(object.clone()))?;
        }
        let link = nl
            .link_by_index(rule.device)
            .map_err(|e| e.with_object(format!("{object} → ifindex {}", rule.device)))?;
        let target = collect_md_target(&link).map_err(|e| e.with_object(object.clone()))?;
        check_rule(&rule, &target).map_err(|e| e.with_object(object.clone()))?;
        if target.l2 && rule.inner_src_mac.is_none() {
            rule.inner_src_mac = target.mac;
        }
        let existing = self.rules.get(&rule.prefix).map(|i| i.slot);
        let slot = match existing {
            Some(s) => s,
            None => self
                .slots
                .take("set redirect rule")
                .map_err(|e| e.with_object(object.clone()))?,
        };
        let value = encode_rule(&rule, target.l2, slot);
        let result = (|| {
            if existing.is_none() {
                zero_percpu::<lwtun_redirect_stats>(&self.map("rule_stats")?, slot)?;
            }
            self.update_rule_map(&rule.prefix, &value)
        })();
        match result {
            Ok(()) => {
                self.rules.insert(rule.prefix, Installed { rule, slot });
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

    /// Removes the rule for `prefix`; its packets go back to the stack.
    ///
    /// # Errors
    ///
    /// NotFound when no rule has that prefix.
    pub fn remove_rule(&mut self, prefix: IpNetwork) -> Result<()> {
        let prefix = normalize(prefix);
        let installed =
            self.rules.get(&prefix).copied().ok_or_else(|| {
                Error::not_found("remove redirect rule", format!("rule {prefix}"))
            })?;
        let (name, key) = table_key(&prefix, RULE_TABLES);
        self.map(name)?
            .delete(&key)
            .map_err(|e| Error::bpf("remove redirect rule", e).with_object(prefix.to_string()))?;
        self.rules.remove(&prefix);
        self.slots.release(installed.slot);
        Ok(())
    }

    /// The counters of the rule for `prefix`, summed over CPUs.
    ///
    /// # Errors
    ///
    /// NotFound when no rule has that prefix.
    pub fn rule_stats(&self, prefix: IpNetwork) -> Result<RuleStats> {
        let prefix = normalize(prefix);
        let slot = self
            .rules
            .get(&prefix)
            .ok_or_else(|| Error::not_found("read rule stats", format!("rule {prefix}")))?
            .slot;
        let op = "read rule stats";
        let values = self
            .map("rule_stats")?
            .lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::bpf(op, e))?
            .unwrap_or_default();
        let mut total = RuleStats::default();
        for v in values {
            let s: lwtun_redirect_stats = abi::from_bytes(&v).ok_or_else(|| {
                Error::other(ErrorKind::Kernel, op, "rule_stats value of the wrong size")
            })?;
            total.packets += s.packets;
            total.bytes += s.bytes;
            total.errors += s.errors;
        }
        Ok(total)
    }

    /// Packets passed on without a redirect.
    ///
    /// # Errors
    ///
    /// The kernel's error reading the map.
    pub fn events(&self) -> Result<RedirectEvents> {
        let map = self.map("events")?;
        Ok(RedirectEvents {
            missed: sum_percpu(&map, EV_MISS, "read redirect events")?,
            not_ip: sum_percpu(&map, EV_NOT_IP, "read redirect events")?,
        })
    }

    fn update_rule_map(&self, prefix: &IpNetwork, value: &lwtun_redirect_rule) -> Result<()> {
        let (name, key) = table_key(prefix, RULE_TABLES);
        let map = self.map(name)?;
        map.update(&key, abi::as_bytes(value), MapFlags::ANY)
            .map_err(|e| {
                crate::family::table_write_error("write redirect rule", e, "redirect rules", &map)
                    .with_object(prefix.to_string())
            })
    }

    /// Reads the rules found in adopted maps back into this family's bookkeeping.
    fn adopt_rules(&mut self) -> Result<()> {
        let op = "adopt redirect rules";
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
                let rule: lwtun_redirect_rule = abi::from_bytes(&value)
                    .ok_or_else(|| Error::other(ErrorKind::Kernel, op, "rule of the wrong size"))?;
                if let Some(r) = decode_rule(&key, &rule) {
                    found.push((r, rule.slot));
                }
            }
        }
        for (rule, slot) in found {
            self.rules.insert(rule.prefix, Installed { rule, slot });
        }
        // Adopted maps keep the size their creator gave them.
        let used: Vec<u32> = self.rules.values().map(|i| i.slot).collect();
        self.slots = Slots::adopted(self.map("rule_stats")?.max_entries(), &used);
        Ok(())
    }
}

fn addr_bytes(a: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

fn encode_rule(rule: &RedirectRule, l2: bool, slot: u32) -> lwtun_redirect_rule {
    let mut flags = 0;
    if rule.ingress {
        flags |= RULE_INGRESS;
    }
    if rule.key.remote.is_ipv6() {
        flags |= RULE_REMOTE_V6;
    }
    if l2 {
        flags |= RULE_L2;
    }
    if rule.key.local.is_some() {
        flags |= RULE_LOCAL;
    }
    lwtun_redirect_rule {
        ifindex: rule.device,
        flags,
        key_flags: rule.key.flags.bits(),
        tunnel_id: rule.key.id,
        remote: addr_bytes(rule.key.remote),
        local: rule.key.local.map(addr_bytes).unwrap_or_default(),
        label: rule.key.flow_label,
        tos: rule.key.tos,
        ttl: rule.key.ttl,
        inner_dst: rule.inner_dst_mac.unwrap_or_default(),
        inner_src: rule.inner_src_mac.unwrap_or_default(),
        pad: [0; 2],
        slot,
    }
}

fn decode_rule(key: &[u8], r: &lwtun_redirect_rule) -> Option<RedirectRule> {
    let prefix = crate::family::lpm::decode(key)?;
    let v6 = r.flags & RULE_REMOTE_V6 != 0;
    let addr = |b: [u8; 16]| -> IpAddr {
        if v6 {
            IpAddr::from(b)
        } else {
            IpAddr::from([b[0], b[1], b[2], b[3]])
        }
    };
    let l2 = r.flags & RULE_L2 != 0;
    Some(RedirectRule {
        prefix,
        device: r.ifindex,
        netns: None,
        key: TunnelKey {
            remote: addr(r.remote),
            local: (r.flags & RULE_LOCAL != 0).then(|| addr(r.local)),
            id: r.tunnel_id,
            ttl: r.ttl,
            tos: r.tos,
            flow_label: r.label,
            flags: TunnelKeyFlags::from_bits_truncate(r.key_flags),
        },
        ingress: r.flags & RULE_INGRESS != 0,
        inner_dst_mac: l2.then_some(r.inner_dst),
        inner_src_mac: l2.then_some(r.inner_src),
    })
}

/// Reads a link's collect_md status: `Ok(Target)` for a collect_md tunnel device, InvalidInput
/// otherwise.
fn collect_md_target(link: &Link) -> Result<Target> {
    let op = "check redirect target";
    let refuse = |why: String| {
        Err(Error::invalid_input(
            op,
            format!(
                "{} (ifindex {}) {why}; bpf_skb_set_tunnel_key needs a collect_md tunnel device \
                 (for example `ip link add vx0 type vxlan external dstport 4789`)",
                link.name, link.index
            ),
        ))
    };
    let Some(kind) = link.kind.clone() else {
        return refuse("is not a tunnel device".into());
    };
    let data = link
        .attribute(IFLA_LINKINFO)
        .and_then(|info| attr::find(info, IFLA_INFO_DATA))
        .unwrap_or(&[]);
    let collect_md = match kind.as_str() {
        // IFLA_VXLAN_COLLECT_METADATA is a u8.
        "vxlan" => matches!(attr::find(data, 25), Some([v, ..]) if *v != 0),
        // IFLA_GENEVE_COLLECT_METADATA, a flag.
        "geneve" => attr::find(data, 10).is_some(),
        // IFLA_GRE_COLLECT_METADATA, a flag.
        "gre" | "gretap" | "ip6gre" | "ip6gretap" | "erspan" | "ip6erspan" => {
            attr::find(data, 18).is_some()
        }
        // IFLA_IPTUN_COLLECT_METADATA, a flag.
        "ipip" | "ip6tnl" | "sit" => attr::find(data, 19).is_some(),
        other => return refuse(format!("is a {other} device, not a tunnel device")),
    };
    if !collect_md {
        return refuse(format!(
            "is a {kind} device without collect_md (created without `external`)"
        ));
    }
    Ok(Target {
        l2: link.link_type == ARPHRD_ETHER,
        mac: link.mac,
        kind,
    })
}

fn check_rule(rule: &RedirectRule, target: &Target) -> Result<()> {
    let op = "check redirect rule";
    let v6_only = matches!(
        target.kind.as_str(),
        "ip6gre" | "ip6gretap" | "ip6erspan" | "ip6tnl"
    );
    let v4_only = matches!(
        target.kind.as_str(),
        "gre" | "gretap" | "erspan" | "ipip" | "sit"
    );
    // A VXLAN or GENEVE remote may be a multicast group; no other tunnel sends to one.
    let remote = rule.key.remote;
    if !(remote.is_multicast() && matches!(target.kind.as_str(), "vxlan" | "geneve")) {
        crate::family::endpoint::check_endpoint(op, "remote", remote)?;
    }
    if let Some(local) = rule.key.local {
        crate::family::endpoint::check_endpoint(op, "local", local)?;
    }
    if v6_only && rule.key.remote.is_ipv4() {
        return Err(Error::invalid_input(
            op,
            format!(
                "a {} device needs an IPv6 remote, not {}",
                target.kind, rule.key.remote
            ),
        ));
    }
    if v4_only && rule.key.remote.is_ipv6() {
        return Err(Error::invalid_input(
            op,
            format!(
                "a {} device needs an IPv4 remote, not {}",
                target.kind, rule.key.remote
            ),
        ));
    }
    if let Some(local) = rule.key.local {
        if local.is_ipv4() != rule.key.remote.is_ipv4() {
            return Err(Error::invalid_input(
                op,
                format!(
                    "local {local} and remote {} are of different families",
                    rule.key.remote
                ),
            ));
        }
    }
    if rule.key.flow_label > 0xF_FFFF {
        return Err(Error::invalid_input(
            op,
            format!(
                "flow label {:#x} has more than 20 bits",
                rule.key.flow_label
            ),
        ));
    }
    if target.l2 && rule.inner_dst_mac.is_none() {
        return Err(Error::invalid_input(
            op,
            format!(
                "a {} device carries Ethernet frames: set inner_dst_mac to the MAC the far side \
                 accepts (its tunnel device's address)",
                target.kind
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(kind: Option<&str>, data: &[u8], link_type: u16) -> Link {
        let mut info = attr::Nest::new();
        if let Some(k) = kind {
            info.str(1, k);
        }
        info.put(IFLA_INFO_DATA, data);
        Link {
            index: 5,
            name: "t0".into(),
            kind: kind.map(str::to_string),
            mtu: 1500,
            up: true,
            flags: 0,
            link_type,
            mac: Some([2, 0, 0, 0, 0, 5]),
            link: None,
            link_netnsid: None,
            master: None,
            xdp_prog_id: None,
            xdp_attach_mode: None,
            attributes: vec![crate::netlink::attr::RawAttribute {
                kind: IFLA_LINKINFO,
                value: info.into_bytes(),
            }],
        }
    }

    fn vxlan_data(collect_md: u8) -> Vec<u8> {
        let mut d = attr::Nest::new();
        d.u8(25, collect_md);
        d.into_bytes()
    }

    #[test]
    fn refuses_targets_that_are_not_collect_md_tunnels() {
        let e = collect_md_target(&link(Some("veth"), &[], 1)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("not a tunnel device"), "{e}");
        let e = collect_md_target(&link(Some("vxlan"), &vxlan_data(0), 1)).unwrap_err();
        assert!(e.to_string().contains("without collect_md"), "{e}");
        let e = collect_md_target(&link(None, &[], 772)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let t = collect_md_target(&link(Some("vxlan"), &vxlan_data(1), 1)).unwrap();
        assert!(t.l2);
        let mut gre = attr::Nest::new();
        gre.put(18, &[]);
        let t = collect_md_target(&link(Some("gre"), gre.bytes(), 778)).unwrap();
        assert!(!t.l2);
    }

    #[test]
    fn l2_targets_need_an_inner_mac_and_families_must_fit() {
        let key = TunnelKey::new("192.0.2.2".parse().unwrap(), 7);
        let rule = RedirectRule::with_index("10.0.0.0/8".parse().unwrap(), 5, key);
        let vx = Target {
            kind: "vxlan".into(),
            l2: true,
            mac: None,
        };
        assert!(check_rule(&rule, &vx)
            .unwrap_err()
            .to_string()
            .contains("inner_dst_mac"));
        assert!(check_rule(&rule.inner_dst_mac([2; 6]), &vx).is_ok());
        let ip6 = Target {
            kind: "ip6tnl".into(),
            l2: false,
            mac: None,
        };
        assert_eq!(
            check_rule(&rule, &ip6).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn rules_round_trip_through_the_map_layout() {
        let key = TunnelKey::new("2001:db8::2".parse().unwrap(), 42)
            .local("2001:db8::1".parse().unwrap())
            .ttl(9)
            .tos(0x10)
            .flow_label(0x12345)
            .flags(TunnelKeyFlags::ZERO_CSUM_TX);
        let rule = RedirectRule::with_index("fd00:1::/64".parse().unwrap(), 9, key)
            .inner_dst_mac([2, 0, 0, 0, 0, 1])
            .inner_src_mac([2, 0, 0, 0, 0, 2]);
        let value = encode_rule(&rule, true, 3);
        assert_eq!(value.slot, 3);
        assert_eq!(std::mem::size_of::<lwtun_redirect_rule>(), 72);
        let (map, k) = table_key(&rule.prefix, RULE_TABLES);
        assert_eq!(map, "rules_v6");
        assert_eq!(decode_rule(&k, &value), Some(rule));

        let v4 = RedirectRule::with_index(
            normalize("10.1.2.3/16".parse().unwrap()),
            4,
            TunnelKey::new("192.0.2.2".parse().unwrap(), 1),
        );
        assert_eq!(v4.prefix.to_string(), "10.1.0.0/16");
        let (map, k) = table_key(&v4.prefix, RULE_TABLES);
        assert_eq!(map, "rules_v4");
        assert_eq!(k, [16, 0, 0, 0, 10, 1, 0, 0]);
        assert_eq!(decode_rule(&k, &encode_rule(&v4, false, 0)), Some(v4));
    }
}
