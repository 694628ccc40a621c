//! The checked direct path: which IPv4 peers' packets may leave by the inner route's own next
//! hop, decided and kept true by the tunnel itself.
//!
//! After the encap, `encap_xmit` either returns `BPF_OK` (the packet goes on with the inner
//! route: its device and gateway, about 0.3 µs per packet cheaper) or `BPF_LWT_REROUTE` (the
//! kernel looks the outer destination up and outputs the packet a second time). `BPF_OK` is
//! right only when the outer lookup would pick that same device and next hop. The
//! [`DirectChecker`] asks the kernel exactly that question for every IPv4 peer's remote: one
//! `ip route get REMOTE from LOCAL ipproto P [oif VRF]` per remote and device that carries the
//! tunnel's routes, compared with those routes' gateway, and writes the answer to
//! `direct_paths` (remote → the device it holds for). The program uses an entry only when
//!
//! - the packet leaves by that device (`skb->ifindex`), so a route the check did not see
//!   never goes direct by another device;
//! - the entry was checked at the current underlay *generation*, which the checker's netlink
//!   watch bumps the moment any link, address, route, rule, nexthop or forwarding setting of the
//!   namespace changes: from then on every packet is rerouted until the check has run again
//!   (milliseconds for a few thousand remotes);
//! - the checker's *lease* (`bpf_ktime_get_ns` deadline, renewed twice a second) has not run
//!   out: a process that stops or dies leaves every packet rerouted within
//!   [`LEASE`].
//!
//! Packet-dependent routing cannot be checked per remote: a policy rule on a firewall mark, a
//! user id range or a TOS/DSCP turns the check off (everything rerouted, the reason in
//! [`DirectStatus::reason`]), and so does a tunnel route over a nexthop group or with several
//! next hops (the kernel picks each flow's next hop). A tunnel route's device that is a bond or
//! bridge port stays rerouted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use libbpf_rs::{MapCore, MapFlags, MapHandle, Object};

use crate::abi::{self, Pod};
use crate::error::{Error, Result};
use crate::monitor::{FibChanges, FibNotice, ROUTING_GROUPS};
use crate::netlink::lookup::RTN_UNICAST;
use crate::netlink::route::Encap;
use crate::netlink::Netlink;
use crate::netns::NetNs;
use crate::peer::PeerTable;
use crate::program::map_handle;
use crate::skel::lwt_encap::types::{lwtun_direct_path, lwtun_peer};

// SAFETY: plain C structs of integers and byte arrays, no padding (LWTUN_ASSERT_SIZE).
unsafe impl Pod for lwtun_direct_path {}

/// How long the program trusts the checker's last word: a checker that stops renewing (its
/// process stopped or died) leaves every packet rerouted this long after its last renewal.
pub const LEASE: Duration = Duration::from_secs(2);
/// How often the checker renews its lease and looks for new remotes.
const TICK: Duration = Duration::from_millis(500);
/// How often the checker checks every remote again without a change it heard of (a safety net
/// for changes nobody announces, and for peers written by other processes)...
const FULL_CHECK_EVERY: Duration = Duration::from_secs(10);
/// ... but never more often than this many times the last check's length, so that a table of
/// many distinct remotes (one kernel lookup each) costs at most about 2% of a CPU.
const FULL_CHECK_SPACING: u32 = 50;

const GENERATION: u32 = 0;
const VALID_UNTIL: u32 = 1;
const EV_DIRECT: u32 = 0;
const EV_REROUTED: u32 = 1;

const PEER_OUTER_V6: u8 = 1;
const ENCAP_IPIP: u8 = 1;
const ENCAP_GRE: u8 = 2;
const ENCAP_UDP: u8 = 3;

/// How [`encap_xmit`](super::Tunnel::xmit_program) sends IPv4-in-IPv4 packets on after the
/// encap: by the inner route's next hop, or routed again by the outer destination. Other
/// combinations (IPv6 inner or outer) are always routed again (see
/// [`TunnelBuilder::direct`](super::TunnelBuilder::direct)).
///
/// # Examples
///
/// ```no_run
/// use lwtun::tunnel::{DirectMode, Tunnel};
///
/// // The default: direct where the tunnel has checked it is right.
/// let tunnel = Tunnel::builder().direct_mode(DirectMode::Checked).load()?;
/// assert_eq!(tunnel.direct_status().mode, DirectMode::Checked);
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirectMode {
    /// Direct for the peers whose remote the outer route lookup sends through the same device
    /// and next hop as the tunnel's routes there, checked by the tunnel and kept true as the
    /// namespace's routing changes (the default; see
    /// [`TunnelBuilder::direct_mode`](super::TunnelBuilder::direct_mode)).
    #[default]
    Checked,
    /// Direct for every IPv4-in-IPv4 packet, unchecked (`TunnelBuilder::direct(true)`): right
    /// only while every peer is reached through the routes' own next hop.
    Always,
    /// Always routed again by the outer destination (`TunnelBuilder::direct(false)`).
    Never,
}

/// What the direct-path check is doing ([`Tunnel::direct_status`](super::Tunnel::direct_status)).
///
/// # Examples
///
/// ```no_run
/// let tunnel = lwtun::tunnel::Tunnel::load()?;
/// let status = tunnel.direct_status();
/// println!("{} remotes direct, {} rerouted", status.direct_remotes, status.rerouted_remotes);
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirectStatus {
    /// The tunnel's mode.
    pub mode: DirectMode,
    /// Whether the checker runs and holds a lease (only for [`DirectMode::Checked`], once the
    /// tunnel has steered a route or [`Tunnel::check_direct`](super::Tunnel::check_direct) was
    /// called).
    pub checking: bool,
    /// IPv4 remotes the last check let go direct.
    pub direct_remotes: usize,
    /// IPv4 remotes the last check left rerouted (another device or next hop, or no answer).
    pub rerouted_remotes: usize,
    /// Checks run.
    pub checks: u64,
    /// Underlay changes heard of (each made every packet rerouted until the next check).
    pub underlay_changes: u64,
    /// How long the last check took (one kernel route lookup per IPv4 remote and device).
    pub last_check: Option<Duration>,
    /// Why nothing goes direct, when something besides the routes decided it (a
    /// packet-dependent policy rule, the watch's socket failing, no check running yet).
    pub reason: Option<String>,
}

/// How `encap_xmit` sent its packets on, summed over CPUs
/// ([`Tunnel::path_counters`](super::Tunnel::path_counters)). Packets are wire packets (a GSO
/// packet counts its segments); bytes are inner bytes.
///
/// # Examples
///
/// ```no_run
/// let tunnel = lwtun::tunnel::Tunnel::load()?;
/// let c = tunnel.path_counters()?;
/// println!("{} direct, {} rerouted", c.direct_packets, c.rerouted_packets);
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathCounters {
    /// Packets that left by the inner route's device and next hop (`BPF_OK`).
    pub direct_packets: u64,
    /// Their inner bytes.
    pub direct_bytes: u64,
    /// Packets routed again by their outer destination (`BPF_LWT_REROUTE`).
    pub rerouted_packets: u64,
    /// Their inner bytes.
    pub rerouted_bytes: u64,
}

/// Reads the per-CPU path counters of a loaded encap object.
pub(crate) fn path_counters(object: &Object) -> Result<PathCounters> {
    let op = "read tunnel path counters";
    let map = map_handle(object, "direct_events", op)?;
    let get = |slot: u32| -> Result<(u64, u64)> {
        let c = crate::program::sum_percpu(&map, slot, op)?;
        Ok((c.packets, c.bytes))
    };
    let (direct_packets, direct_bytes) = get(EV_DIRECT)?;
    let (rerouted_packets, rerouted_bytes) = get(EV_REROUTED)?;
    Ok(PathCounters {
        direct_packets,
        direct_bytes,
        rerouted_packets,
        rerouted_bytes,
    })
}

/// What the checker thread and the watch share.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct State {
    stop: bool,
    /// An underlay change arrived since the last check.
    dirty: bool,
    /// The watch failed: no lease is renewed any more.
    lost: Option<String>,
    status: DirectStatus,
}

/// The running check of one tunnel in one namespace: the watch (a netlink socket of the
/// routing groups, bumping the generation) and the checker thread. Dropping it ends the lease
/// (every packet rerouted at once) and joins the thread.
#[derive(Debug)]
pub(crate) struct DirectChecker {
    shared: Arc<Shared>,
    /// In a mutex, as `watch`: it keeps the tunnel `UnwindSafe` (a join handle is not).
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Stopped (and joined) before the thread, so no bump races the final lease write.
    watch: Mutex<Option<FibChanges>>,
    state_map: MapHandle,
}

/// The maps and facts the checker works from.
struct Inputs {
    paths: MapHandle,
    state: MapHandle,
    peers_v4: MapHandle,
    revision: Arc<AtomicU64>,
    /// The route name of the tunnel's `encap_xmit` (`lwtun:encap_xmit:ID`): the routes to check.
    xmit_name: String,
}

impl DirectChecker {
    /// Starts checking the tunnel whose object and peers are given, for the routes of the
    /// namespace `netns`; returns once the watch is subscribed (a change made afterwards is
    /// always heard) and the first check has run.
    pub(crate) fn start(
        netns: &NetNs,
        object: &Object,
        peers: &PeerTable,
        xmit_name: String,
    ) -> Result<DirectChecker> {
        let op = "start the tunnel's direct-path check";
        let inputs = Inputs {
            paths: map_handle(object, "direct_paths", op)?,
            state: map_handle(object, "direct_state", op)?,
            peers_v4: peers.v4_handle(op)?,
            revision: peers.revision(),
            xmit_name,
        };
        let state_map = map_handle(object, "direct_state", op)?;
        let shared = Arc::new(Shared::default());
        shared.state.lock().map_err(|_| poisoned(op))?.status.mode = DirectMode::Checked;
        let bump_map = map_handle(object, "direct_state", op)?;
        let seen = Arc::clone(&shared);
        let watch = FibChanges::start_groups_in(netns, &ROUTING_GROUPS, move |notice| {
            let mut state = match seen.state.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            match notice {
                FibNotice::Changed => {
                    // Before anyone is told: from here on no packet uses an older check.
                    let ok = bump(&bump_map).is_ok();
                    state.dirty = true;
                    state.status.underlay_changes += 1;
                    if !ok {
                        state.lost = Some("the underlay generation could not be written".into());
                        let _ = write_slot(&bump_map, VALID_UNTIL, 0);
                    }
                }
                FibNotice::Lost(e) => {
                    let _ = write_slot(&bump_map, VALID_UNTIL, 0);
                    state.lost = Some(format!("the routing watch stopped: {e}"));
                }
            }
            seen.wake.notify_all();
        })?;
        let nl = Netlink::open_in(netns)?;
        let ns_fd: OwnedFd = netns.fd()?;
        let mut checker = Checker {
            nl,
            inputs,
            direct: BTreeMap::new(),
            remotes: None,
            last_revision: u64::MAX,
            last_full: None,
            leased: false,
        };
        // The first check here, so the caller sees its result at once.
        checker.tick(&shared, true);
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("lwtun-direct".into())
            .spawn(move || {
                let _ns = ns_fd; // keeps the namespace alive while its routes are checked
                checker.run(&thread_shared);
            })
            .map_err(|e| Error::io("start the direct-path checker thread", e))?;
        Ok(DirectChecker {
            shared,
            thread: Mutex::new(Some(thread)),
            watch: Mutex::new(Some(watch)),
            state_map,
        })
    }

    /// The checker's status.
    pub(crate) fn status(&self) -> DirectStatus {
        match self.shared.state.lock() {
            Ok(s) => s.status.clone(),
            Err(p) => p.into_inner().status.clone(),
        }
    }
}

impl Drop for DirectChecker {
    fn drop(&mut self) {
        drop(
            self.watch
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        if let Ok(mut s) = self.shared.state.lock() {
            s.stop = true;
        }
        self.shared.wake.notify_all();
        if let Some(t) = self
            .thread
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = t.join();
        }
        // The program may outlive this process's tunnel (routes of a kept tunnel): no lease.
        let _ = write_slot(&self.state_map, VALID_UNTIL, 0);
    }
}

fn poisoned(op: &str) -> Error {
    Error::invalid_input(op, "the direct-path checker's state lock is poisoned")
}

fn read_slot(map: &MapHandle, slot: u32) -> Result<u64> {
    let op = "read the direct-path state";
    let v = map
        .lookup(&slot.to_ne_bytes(), MapFlags::ANY)
        .map_err(|e| Error::bpf(op, e))?
        .unwrap_or_default();
    Ok(v.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_ne_bytes))
}

fn write_slot(map: &MapHandle, slot: u32, value: u64) -> Result<()> {
    map.update(&slot.to_ne_bytes(), &value.to_ne_bytes(), MapFlags::ANY)
        .map_err(|e| Error::bpf("write the direct-path state", e))
}

fn bump(map: &MapHandle) -> Result<()> {
    let g = read_slot(map, GENERATION)?;
    write_slot(map, GENERATION, g.wrapping_add(1) & u64::from(u32::MAX))
}

/// `CLOCK_MONOTONIC` in nanoseconds: `bpf_ktime_get_ns`'s clock.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// How an outer packet to one remote is sent: from which source, with which IP protocol.
type Flow = (Option<Ipv4Addr>, u8);

/// The tunnel routes of one device: the gateways they use (`None`: on-link), and whether one
/// of them cannot be judged (multipath, a nexthop group).
#[derive(Debug, Default)]
struct DeviceRoutes {
    gateways: BTreeSet<Option<IpAddr>>,
    unknown: bool,
    /// The VRF the device is enslaved to: the outer lookup happens in its table.
    vrf: Option<u32>,
}

/// The checker thread's own state.
struct Checker {
    nl: Netlink,
    inputs: Inputs,
    /// The remotes written to `direct_paths` by the last check, with their device.
    direct: BTreeMap<u32, u32>,
    /// The remotes (network-order IPv4 as stored) and their flows, as last read.
    remotes: Option<BTreeMap<u32, BTreeSet<Flow>>>,
    last_revision: u64,
    /// When the last full check ended, and how long it took.
    last_full: Option<(Instant, Duration)>,
    /// Whether the last tick granted a lease (a long check renews it as it goes).
    leased: bool,
}

impl Checker {
    fn run(&mut self, shared: &Shared) {
        let mut next = Instant::now() + TICK;
        loop {
            let dirty = {
                let mut s = match shared.state.lock() {
                    Ok(s) => s,
                    Err(_) => return,
                };
                while !s.stop && !s.dirty && Instant::now() < next {
                    let wait = next.saturating_duration_since(Instant::now());
                    s = match shared.wake.wait_timeout(s, wait) {
                        Ok((s, _)) => s,
                        Err(_) => return,
                    };
                }
                if s.stop {
                    return;
                }
                std::mem::take(&mut s.dirty)
            };
            if Instant::now() >= next {
                next = Instant::now() + TICK;
            }
            let due = self.last_full.is_none_or(|(ended, took)| {
                ended.elapsed() >= FULL_CHECK_EVERY.max(took * FULL_CHECK_SPACING)
            });
            self.tick(shared, dirty || due);
        }
    }

    /// Renews the lease and checks again when `full`, the peers changed, or never yet.
    fn tick(&mut self, shared: &Shared, full: bool) {
        let revision = self.inputs.revision.load(Ordering::Acquire);
        let peers_changed = revision != self.last_revision;
        let mut result = None;
        if full || peers_changed || self.remotes.is_none() {
            if full || peers_changed {
                // Read again (a full check too: other processes may write pinned tables).
                self.remotes = None;
            }
            self.last_revision = revision;
            let started = Instant::now();
            result = Some(self.check(shared));
            let took = started.elapsed();
            if full {
                self.last_full = Some((Instant::now(), took));
            }
            if let Ok(mut s) = shared.state.lock() {
                s.status.last_check = Some(took);
            }
        }
        let mut s = match shared.state.lock() {
            Ok(s) => s,
            Err(_) => return,
        };
        if let Some(result) = result {
            s.status.checks += 1;
            match result {
                Ok((direct, rerouted)) => {
                    s.status.direct_remotes = direct;
                    s.status.rerouted_remotes = rerouted;
                    s.status.reason = None;
                }
                Err(reason) => {
                    s.status.direct_remotes = 0;
                    s.status.rerouted_remotes = self.remotes.as_ref().map_or(0, BTreeMap::len);
                    s.status.reason = Some(reason);
                }
            }
        }
        if let Some(lost) = s.lost.clone() {
            s.status.checking = false;
            s.status.reason = Some(lost);
            let _ = write_slot(&self.inputs.state, VALID_UNTIL, 0);
            return;
        }
        let until = if s.status.reason.is_some() {
            0
        } else {
            monotonic_ns() + LEASE.as_nanos() as u64
        };
        s.status.checking = write_slot(&self.inputs.state, VALID_UNTIL, until).is_ok();
        self.leased = s.status.checking && until != 0;
    }

    /// Renews a lease the last tick granted, unless the watch was lost since (a check of many
    /// remotes outlasts the lease).
    fn renew(&self, shared: &Shared) {
        if !self.leased {
            return;
        }
        if let Ok(s) = shared.state.lock() {
            if s.lost.is_none() {
                let until = monotonic_ns() + LEASE.as_nanos() as u64;
                let _ = write_slot(&self.inputs.state, VALID_UNTIL, until);
            }
        }
    }

    /// One check: which remotes may go direct by which device, written to `direct_paths` at the
    /// generation read before the routes were. `Err` names why nothing may.
    fn check(&mut self, shared: &Shared) -> std::result::Result<(usize, usize), String> {
        let generation = read_slot(&self.inputs.state, GENERATION).map_err(|e| e.to_string())?;
        let rules = self
            .nl
            .packet_dependent_rules_v4()
            .map_err(|e| e.to_string())?;
        if let Some((priority, what)) = rules.first() {
            return Err(format!(
                "policy rule {priority} matches on {what}: the outer route depends on each \
                 packet, so every packet is routed again"
            ));
        }
        let devices = self.device_routes().map_err(|e| e.to_string())?;
        if self.remotes.is_none() {
            self.remotes = Some(self.read_remotes().map_err(|e| e.to_string())?);
        }
        let remotes = self.remotes.clone().unwrap_or_default();
        let mut wanted: BTreeMap<u32, u32> = BTreeMap::new();
        let mut renewed = Instant::now();
        for (&remote, flows) in &remotes {
            if renewed.elapsed() >= TICK {
                self.renew(shared);
                renewed = Instant::now();
            }
            let dst = Ipv4Addr::from(remote.to_ne_bytes());
            if let Some(dev) = self.direct_device(dst, flows, &devices) {
                wanted.insert(remote, dev);
            }
        }
        for (&remote, &dev) in &wanted {
            let path = lwtun_direct_path {
                ifindex: dev,
                generation: generation as u32,
            };
            let _ = self.inputs.paths.update(
                &remote.to_ne_bytes(),
                abi::as_bytes(&path),
                MapFlags::ANY,
            );
        }
        for remote in self.direct.keys().filter(|r| !wanted.contains_key(r)) {
            let _ = self.inputs.paths.delete(&remote.to_ne_bytes());
        }
        let direct = wanted.len();
        self.direct = wanted;
        Ok((direct, remotes.len() - direct))
    }

    /// The device `dst` may go direct by: the one whose tunnel routes' next hop is where the
    /// outer lookup sends every flow to it.
    fn direct_device(
        &mut self,
        dst: Ipv4Addr,
        flows: &BTreeSet<Flow>,
        devices: &BTreeMap<u32, DeviceRoutes>,
    ) -> Option<u32> {
        'device: for (&dev, routes) in devices {
            if routes.unknown || routes.gateways.len() != 1 {
                continue;
            }
            let gateway = *routes.gateways.iter().next()?;
            for &(src, proto) in flows {
                let Ok(out) = self.nl.output_route_v4(dst, src, proto, routes.vrf) else {
                    continue 'device;
                };
                if out.kind != RTN_UNICAST || out.oif != Some(dev) || out.gateway != gateway {
                    continue 'device;
                }
            }
            return Some(dev);
        }
        None
    }

    /// The tunnel's IPv4 routes (those running its `encap_xmit`), by device.
    fn device_routes(&mut self) -> Result<BTreeMap<u32, DeviceRoutes>> {
        let routes = crate::route::lwt_routes(&mut self.nl)?;
        let mut devices: BTreeMap<u32, DeviceRoutes> = BTreeMap::new();
        let mut nexthops = None;
        for r in routes.iter().filter(|r| r.dst.is_ipv4()) {
            let ours = match r.effective_encap() {
                Some(Encap::Bpf(b)) => b
                    .xmit
                    .as_ref()
                    .is_some_and(|x| x.name == self.inputs.xmit_name),
                _ => false,
            };
            if !ours {
                continue;
            }
            match (r.oif, r.nhid) {
                (Some(oif), None) => {
                    devices.entry(oif).or_default().gateways.insert(r.gateway);
                }
                (None, Some(id)) => {
                    if nexthops.is_none() {
                        let all: HashMap<u32, crate::netlink::nexthop::Nexthop> = self
                            .nl
                            .nexthops()?
                            .into_iter()
                            .map(|nh| (nh.id, nh))
                            .collect();
                        nexthops = Some(all);
                    }
                    match nexthops.as_ref().and_then(|n| n.get(&id)) {
                        Some(nh) if nh.oif.is_some() => {
                            let d = devices.entry(nh.oif.unwrap_or(0)).or_default();
                            d.gateways.insert(nh.gateway);
                        }
                        // A group: each flow's member decides the device and next hop.
                        _ => {
                            return Err(Error::invalid_input(
                                "check the tunnel's direct path",
                                format!(
                                    "tunnel route {} is over nexthop group {id}: the kernel \
                                     picks each flow's next hop, so every packet is routed again",
                                    r.dst
                                ),
                            ))
                        }
                    }
                }
                // Multipath (RTA_MULTIPATH): no single device and next hop.
                _ => {
                    return Err(Error::invalid_input(
                        "check the tunnel's direct path",
                        format!(
                            "tunnel route {} has several next hops: the kernel picks each \
                             flow's, so every packet is routed again",
                            r.dst
                        ),
                    ))
                }
            }
        }
        if !devices.is_empty() {
            let links = self.nl.links()?;
            let vrfs: BTreeSet<u32> = links
                .iter()
                .filter(|l| l.kind.as_deref() == Some("vrf"))
                .map(|l| l.index)
                .collect();
            for l in &links {
                if let Some(d) = devices.get_mut(&l.index) {
                    d.vrf = l.master.filter(|m| vrfs.contains(m));
                    if l.master.is_some() && d.vrf.is_none() {
                        d.unknown = true; // a bond or bridge port: the route's device is the master
                    }
                }
            }
        }
        Ok(devices)
    }

    /// Every IPv4-outer peer's remote, with the sources and protocols its packets use.
    fn read_remotes(&self) -> Result<BTreeMap<u32, BTreeSet<Flow>>> {
        let op = "read the tunnel's remotes";
        let size = std::mem::size_of::<lwtun_peer>();
        let mut values: Vec<u8> = Vec::new();
        match crate::peer::read_entries(&self.inputs.peers_v4) {
            Ok(Some(entries)) => values = entries.values,
            Ok(None) => {
                for key in self.inputs.peers_v4.keys() {
                    if let Some(v) = self
                        .inputs
                        .peers_v4
                        .lookup(&key, MapFlags::ANY)
                        .map_err(|e| Error::bpf(op, e))?
                    {
                        values.extend_from_slice(&v);
                    }
                }
            }
            Err(e) => return Err(Error::io(op, e)),
        }
        let mut remotes: BTreeMap<u32, BTreeSet<Flow>> = BTreeMap::new();
        for chunk in values.chunks_exact(size) {
            let Some(p) = abi::from_bytes::<lwtun_peer>(chunk) else {
                continue;
            };
            if p.flags & PEER_OUTER_V6 != 0 {
                continue;
            }
            let proto = match p.kind {
                ENCAP_IPIP => 4,
                ENCAP_GRE => 47,
                ENCAP_UDP => 17,
                _ => continue,
            };
            let remote = u32::from_ne_bytes([p.remote[0], p.remote[1], p.remote[2], p.remote[3]]);
            let local = Ipv4Addr::new(p.local[0], p.local[1], p.local[2], p.local[3]);
            let src = (!local.is_unspecified()).then_some(local);
            remotes.entry(remote).or_default().insert((src, proto));
        }
        Ok(remotes)
    }
}
