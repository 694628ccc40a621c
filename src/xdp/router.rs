//! IPv4 and IPv6 forwarding in XDP with the kernel's FIB (`bpf/xdp_router.bpf.c`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::attach::{XdpAttachment, XdpOptions};
use super::devmap::DevMap;
use super::pass::Receivers;
use super::program::{check_sizes, Loaded, XdpProgram};
use super::stats::StatsMap;
use crate::abi::{self, Pod};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::monitor::{FibChanges, FibNotice};
use crate::netns::{NetNs, NetNsId};
use crate::skel::xdp_router::types::lwtun_xdp_route_cache_cfg;

// SAFETY: u32 + u32 + u64, no padding (asserted in lwtun.h).
unsafe impl Pod for lwtun_xdp_route_cache_cfg {}

/// The longest [`XdpRouter::set_route_cache`] accepts.
pub const ROUTE_CACHE_MAX_AGE_LIMIT: Duration = Duration::from_secs(60);

/// The maximum age of the route cache that a router turns on by itself once it follows its
/// namespace's change notifications (see [Route cache](XdpRouter#route-cache)): a safety net
/// for changes the kernel announces to nobody.
///
/// # Examples
///
/// ```
/// assert_eq!(lwtun::xdp::ROUTE_CACHE_DEFAULT_AGE.as_secs(), 1);
/// ```
pub const ROUTE_CACHE_DEFAULT_AGE: Duration = Duration::from_secs(1);

/// Whether the route cache is on, and whether it follows the namespace's changes
/// ([`XdpRouter::route_cache_status`]).
///
/// # Examples
///
/// ```no_run
/// let router = lwtun::xdp::XdpRouter::load()?;
/// let status = router.route_cache_status()?;
/// if status.max_age.is_none() {
///     println!("route cache off: {}", status.reason.as_deref().unwrap_or("turned off"));
/// }
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteCacheStatus {
    /// The cached slots' maximum age; `None` while the cache is off.
    pub max_age: Option<Duration>,
    /// Whether a thread follows the namespace's route, rule, neighbour, address, link, nexthop
    /// and forwarding changes and drops the cache on each.
    pub follows_changes: bool,
    /// Why changes are not followed (no port or attachment yet, or the error that stopped the
    /// watch), when they are not.
    pub reason: Option<String>,
    /// How often a change notification dropped the cache so far.
    pub invalidations: u64,
}

/// How many frames got each outcome of the router's FIB lookup, summed over the CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FibStats {
    /// `BPF_FIB_LKUP_RET_SUCCESS`: forwarded (when the egress device is a port) .
    pub success: u64,
    /// `BLACKHOLE`: dropped.
    pub blackhole: u64,
    /// `UNREACHABLE`: passed to the stack, which sends the ICMP error.
    pub unreachable: u64,
    /// `PROHIBIT`: passed to the stack, which sends the ICMP error.
    pub prohibit: u64,
    /// `NOT_FWDED`: local or broadcast destinations, passed.
    pub not_forwarded: u64,
    /// `FWD_DISABLED`: forwarding off on the ingress device, passed.
    pub forwarding_disabled: u64,
    /// `UNSUPP_LWT`: the route has LWT state (encap), passed.
    pub unsupported_lwt: u64,
    /// `NO_NEIGH`: passed so the stack resolves the neighbour.
    pub no_neighbour: u64,
    /// `FRAG_NEEDED`: larger than the egress MTU, passed.
    pub frag_needed: u64,
    /// `NO_SRC_ADDR` and codes this program does not know, passed.
    pub other: u64,
    /// TTL or hop limit at most 1: passed (the stack sends time exceeded).
    pub ttl_expired: u64,
    /// Not IPv4/IPv6, VLAN-tagged or malformed: passed.
    pub not_ip: u64,
    /// Frames forwarded from the route cache without a lookup (also counted in `success`).
    pub cache_hits: u64,
}

/// An XDP router: `bpf_fib_lookup` for IPv4 and IPv6, TTL / hop-limit decrement with an
/// incremental checksum update, MAC rewrite and redirect through a `BPF_MAP_TYPE_DEVMAP_HASH` of
/// ports; every lookup result the fast path cannot finish goes to the stack (see [`FibStats`]).
///
/// Kernel: Linux 5.5+ (`bpf_fib_lookup` 4.18, `BPF_MAP_TYPE_DEVMAP_HASH` 5.4, `bpf_jiffies64`
/// 5.5; the route cache keeps time with `bpf_ktime_get_coarse_ns` from 5.11 and
/// `bpf_ktime_get_ns` before, see [`Feature::CoarseClock`](crate::probe::Feature::CoarseClock)).
///
/// Attach it to every interface that receives traffic to forward, add every interface that
/// forwarded traffic may leave through as a port, and enable forwarding in the namespace
/// (`net.ipv4.ip_forward`, `net.ipv6.conf.all.forwarding`): `bpf_fib_lookup` honours it.
///
/// # Route cache
///
/// `bpf_fib_lookup` is most of the router's cost (BPF_PROG_TEST_RUN on a 2-vCPU VM: about 200 ns
/// a frame with the lookup, 90 from the cache, 26 for a program that does nothing). With
/// [`set_route_cache`](Self::set_route_cache) every CPU remembers successful lookups (1024
/// direct-mapped slots) keyed by every input of the lookup: ingress device, family, L4 protocol,
/// TOS or IPv6 flow info, L4 ports (see [Multipath routes](#multipath-routes-ecmp)), source and
/// destination. A frame that matches is forwarded from the slot if the slot is younger than the
/// chosen maximum age (counted in kernel ticks, rounded down, at least one: 4 ms at
/// `CONFIG_HZ=250`; in nanoseconds where neither `/boot/config-RELEASE` nor `/proc/config.gz`
/// tells the tick rate, as in many containers) and the frame fits the cached MTU.
///
/// The kernel does not tell XDP programs when routes, rules or neighbours change, but it tells
/// user space: once the router knows its namespace (its first port or attachment), it starts a
/// thread holding a `NETLINK_ROUTE` socket there, subscribed to every change a lookup depends
/// on (links, IPv4/IPv6 addresses, routes and policy rules, neighbours, nexthop objects where
/// the kernel has them, forwarding settings). Any message, or an overrun of the socket, drops
/// every CPU's cache at once (one generation bump per wake-up), typically well under a
/// millisecond after the change. The subscription is made before the cache is turned on, so no
/// change slips between. The thread stops when the router drops.
///
/// **On by default, where it is safe:** when that thread starts, the cache turns on with
/// [`ROUTE_CACHE_DEFAULT_AGE`] (1 s) as a safety net for changes nobody announces, unless the
/// caller chose with [`set_route_cache`](Self::set_route_cache) before (`None` keeps it off;
/// an age is kept, now also invalidated by changes). When the thread cannot start (no right to
/// enter the namespace, the socket refused) or its socket fails later, a cache the router
/// turned on itself goes off again; [`route_cache_status`](Self::route_cache_status) says why.
/// Without the thread a change reaches cached flows only when their slot ages out, or at once
/// after [`flush_route_cache`](Self::flush_route_cache). Taking a port away
/// ([`remove_port`](Self::remove_port)) applies at once, cached or not. Lookups that do not
/// succeed are never cached. Attachments may outlive the router; when it drops, its watch stops
/// and a cache it turned on itself goes off (an age chosen by the caller stays).
///
/// # Multipath routes (ECMP)
///
/// Every lookup carries the frame's L4 protocol and ports (TCP, UDP, UDP-Lite, SCTP and DCCP;
/// 0 for ICMP and other protocols, IPv4 fragments and IPv6 packets with extension headers), so a
/// route with several next hops (`ip route add PREFIX nexthop via A dev X nexthop via B dev Y`,
/// or a nexthop group) spreads flows over them the way the namespace's
/// `net.ipv4.fib_multipath_hash_policy` and `net.ipv6.fib_multipath_hash_policy` say, and each
/// flow takes the next hop the kernel itself routes it through (`ip route get DST from SRC
/// iif DEV ipproto udp sport S dport D`). **For spreading by L4 ports set the policy to 1**:
/// the default, 0, hashes the addresses only (and for IPv6 the flow label), so all flows
/// between two hosts take one next hop. The router reads these settings, it never changes them.
///
/// The route cache keys by the ports too: a flow's cached next hop is never reused for another
/// flow between the same addresses, so multipath routes spread with the cache on as with it
/// off. It costs a slot per flow instead of one per pair of addresses (1024 slots per CPU).
/// The kernel announces no change of the hash policy or of `fib_multipath_hash_seed`: cached
/// flows follow such a change within the cache's maximum age, or at once after
/// [`flush_route_cache`](Self::flush_route_cache).
///
/// ```no_run
/// let router = lwtun::xdp::XdpRouter::load()?;
/// let ns = lwtun::netns::NetNs::open("router")?;
/// ns.set_sysctl("net.ipv4.fib_multipath_hash_policy", "1")?; // spread by L4 ports
/// ns.set_sysctl("net.ipv6.fib_multipath_hash_policy", "1")?;
/// router.flush_route_cache()?; // flows cached under the old policy are looked up again
/// # Ok::<(), lwtun::Error>(())
/// ```
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use lwtun::xdp::{XdpOptions, XdpRouter};
///
/// let ns = lwtun::netns::NetNs::open("router")?;
/// let router = XdpRouter::load()?;
/// let mut atts = Vec::new();
/// for name in ["veth0", "veth1"] {
///     let dev = ns.device(name)?;
///     router.add_port(&dev)?;          // every port and attachment in one namespace
///     atts.push(router.attach(&dev, XdpOptions::default())?);
/// }
/// println!("{:?}", router.fib_stats()?);
/// // The route cache is on now, following the namespace's changes (see "Route cache").
/// println!("{:?}", router.route_cache_status()?);
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug)]
pub struct XdpRouter {
    program: XdpProgram,
    ports: DevMap,
    fib: MapHandle,
    fib_flags: MapHandle,
    cache: Arc<RouteCache>,
    /// The thread that drops the cache on every change in the router's namespace.
    fib_watch: Mutex<Option<FibChanges>>,
    stats: StatsMap,
    receivers: Receivers,
    /// The namespace of the first port or attachment: the FIB the program asks returns
    /// indexes of the namespace it runs in, so every port must be there.
    netns: std::sync::Mutex<Option<NetNsId>>,
}

impl XdpRouter {
    /// Loads the program and maps.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Permission`](crate::ErrorKind::Permission) without CAP_BPF.
    pub fn load() -> Result<Self> {
        // The route cache's clock (see bpf/xdp_router.bpf.c): jiffies where the tick rate is
        // known, else coarse nanoseconds, and before 5.11 bpf_ktime_get_ns.
        let coarse = u8::from(crate::probe::Feature::CoarseClock.present());
        let hz = tick_rate().unwrap_or(0);
        let obj =
            Loaded::load_configured("xdp_router", crate::skel::xdp_router::OBJECT, |open, op| {
                use crate::skel::xdp_router::types::rodata;
                let offset = std::mem::offset_of!(rodata, has_coarse_clock);
                crate::program::set_rodata(open, op, offset, &[coarse])?;
                let offset = std::mem::offset_of!(rodata, tick_hz);
                crate::program::set_rodata(open, op, offset, &hz.to_ne_bytes())
            })?;
        let fib = obj.map("fib_results")?;
        check_sizes("open fib results", &fib, 4, 8)?;
        let fib_flags = obj.map("router_fib_flags")?;
        check_sizes("open fib flags", &fib_flags, 4, 4)?;
        let cache_cfg = obj.map("route_cache_cfg")?;
        check_sizes(
            "open route cache settings",
            &cache_cfg,
            4,
            std::mem::size_of::<lwtun_xdp_route_cache_cfg>() as u32,
        )?;
        Ok(XdpRouter {
            program: obj.program("xdp_router")?,
            ports: DevMap::from_handle(obj.map("ports")?)?,
            fib,
            fib_flags,
            cache: Arc::new(RouteCache {
                map: cache_cfg,
                state: Mutex::new(CacheState {
                    chosen: false,
                    watch: Err(
                        "the router has no port or attachment yet, so it does not know \
                                which namespace to watch"
                            .into(),
                    ),
                }),
                invalidations: AtomicU64::new(0),
            }),
            fib_watch: Mutex::new(None),
            stats: StatsMap::new(obj.map(super::stats::STATS_MAP)?)?,
            receivers: Receivers::default(),
            netns: std::sync::Mutex::new(None),
        })
    }

    /// The program (`xdp_router`).
    pub fn program(&self) -> &XdpProgram {
        &self.program
    }

    /// The ports, keyed by ifindex.
    pub fn ports(&self) -> &DevMap {
        &self.ports
    }

    /// The per-action counters.
    pub fn stats(&self) -> &StatsMap {
        &self.stats
    }

    /// Binds the router to `device`'s namespace, or fails when it is bound to another one.
    fn check_netns(&self, op: &str, device: &Device) -> Result<()> {
        let mut bound = self.netns.lock().unwrap_or_else(|p| p.into_inner());
        match *bound {
            None => {
                *bound = Some(device.netns_id());
                self.follow_changes(device.netns());
                Ok(())
            }
            Some(id) if id == device.netns_id() => Ok(()),
            Some(id) => Err(Error::invalid_input(
                op,
                format!(
                    "the router's ports and attachments are in namespace {id}: the FIB lookup \
                     answers with interface indexes of the namespace the router runs in, so a \
                     port from another namespace would send frames to an unrelated device"
                ),
            )
            .with_object(device.to_string())),
        }
    }

    /// Starts the thread that drops the route cache on every change in `netns`, then turns the
    /// cache on with the default age unless the caller chose; on failure records why and
    /// leaves the cache as it is.
    fn follow_changes(&self, netns: &NetNs) {
        let cache = Arc::clone(&self.cache);
        let started = FibChanges::start_in(netns, move |notice| cache.notice(notice));
        let mut watch = self.fib_watch.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = self.cache.lock_state();
        match started {
            Ok(w) => {
                *watch = Some(w);
                state.watch = Ok(());
                if !state.chosen {
                    let age = ROUTE_CACHE_DEFAULT_AGE.as_nanos() as u64;
                    let on = self
                        .cache
                        .write(&state, "turn on the XDP router route cache", |c| {
                            c.max_age_ns = age
                        });
                    if let Err(e) = on {
                        state.watch = Err(format!("the cache could not be turned on: {e}"));
                    }
                }
            }
            Err(e) => {
                state.watch = Err(format!(
                    "the change notifications of namespace {} could not be followed: {e}",
                    netns.name()
                ))
            }
        }
    }

    /// Lets forwarded frames leave through `device` on the fast path (keyed by its index).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for a device in another
    /// namespace than the router's other ports and attachments; as [`DevMap::set`].
    pub fn add_port(&self, device: &Device) -> Result<()> {
        self.check_netns("add router port", device)?;
        self.ports.set(device.index(), device, None)
    }

    /// [`add_port`](Self::add_port) for a veth whose other end is `receiver`, after putting a
    /// pass program on `receiver` (kept while the router lives) so it accepts redirected
    /// frames, unless it runs an XDP program already.
    ///
    /// # Errors
    ///
    /// As [`add_port`](Self::add_port) and
    /// [`XdpPass::attach_receiver`](super::XdpPass::attach_receiver).
    pub fn add_port_with_receiver(&self, device: &Device, receiver: &Device) -> Result<()> {
        self.check_netns("add router port", device)?;
        self.receivers.ensure(receiver)?;
        self.add_port(device)
    }

    /// Takes `device` off the fast path; returns whether it was a port.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Kernel`](crate::ErrorKind::Kernel) when the map cannot be changed.
    pub fn remove_port(&self, device: &Device) -> Result<bool> {
        self.ports.remove(device.index())
    }

    /// Attaches the router to `device`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for a device in another
    /// namespace than the router's ports; as [`XdpAttachment::attach`].
    pub fn attach(&self, device: &Device, options: XdpOptions) -> Result<XdpAttachment> {
        self.check_netns("attach XDP router", device)?;
        XdpAttachment::attach(&self.program, device, options)
    }

    /// Chooses how the FIB is asked: `false` (the default) goes through the policy rules
    /// (`ip rule`) exactly like the stack; `true` looks up the main table directly
    /// (`BPF_FIB_LOOKUP_DIRECT`), which is faster but ignores every rule, so use it only where
    /// the namespace has the default rules.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Kernel`](crate::ErrorKind::Kernel) when the setting cannot be written.
    pub fn set_direct_lookup(&self, direct: bool) -> Result<()> {
        let flags: u32 = if direct {
            libbpf_sys::BPF_FIB_LOOKUP_DIRECT
        } else {
            0
        };
        let op = "set XDP router lookup mode";
        self.fib_flags
            .update(&0u32.to_ne_bytes(), &flags.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::bpf(op, e))?;
        // Cached routes were looked up the other way.
        self.cache.write(&self.cache.lock_state(), op, |_| {})
    }

    /// Turns the route cache on with slots valid for `max_age` after their lookup, or off with
    /// `None`. This choice wins over the default (on with [`ROUTE_CACHE_DEFAULT_AGE`] once the
    /// router follows its namespace's changes); see [Route cache](Self#route-cache). Every
    /// change of the setting also drops what was cached.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for a zero `max_age` or one
    /// above [`ROUTE_CACHE_MAX_AGE_LIMIT`]; [`ErrorKind::Kernel`](crate::ErrorKind::Kernel) when
    /// the setting cannot be written.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use lwtun::xdp::XdpRouter;
    ///
    /// let router = XdpRouter::load()?;
    /// router.set_route_cache(Some(Duration::from_millis(50)))?;
    /// // ... after changing routes or neighbours yourself:
    /// router.flush_route_cache()?;
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn set_route_cache(&self, max_age: Option<Duration>) -> Result<()> {
        let op = "set XDP router route cache";
        let max_age_ns = match max_age {
            None => 0,
            Some(age) if age.is_zero() || age > ROUTE_CACHE_MAX_AGE_LIMIT => {
                return Err(Error::invalid_input(
                    op,
                    format!(
                        "the maximum age is above zero and at most {ROUTE_CACHE_MAX_AGE_LIMIT:?}, got {age:?} (None turns the cache off)"
                    ),
                ))
            }
            Some(age) => age.as_nanos() as u64,
        };
        let mut state = self.cache.lock_state();
        self.cache
            .write(&state, op, |cfg| cfg.max_age_ns = max_age_ns)?;
        state.chosen = true;
        Ok(())
    }

    /// The route cache's maximum age, `None` while it is off.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Kernel`](crate::ErrorKind::Kernel) when the setting cannot be read.
    pub fn route_cache(&self) -> Result<Option<Duration>> {
        let cfg = self.cache.read("read XDP router route cache")?;
        Ok((cfg.max_age_ns != 0).then(|| Duration::from_nanos(cfg.max_age_ns)))
    }

    /// Whether the route cache is on and follows the namespace's changes, and if not, why
    /// (see [Route cache](Self#route-cache)).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Kernel`](crate::ErrorKind::Kernel) when the setting cannot be read.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::xdp::{XdpOptions, XdpRouter};
    ///
    /// let ns = lwtun::netns::NetNs::open("router")?;
    /// let router = XdpRouter::load()?;
    /// assert!(router.route_cache_status()?.max_age.is_none()); // no namespace yet
    /// let _att = router.attach(&ns.device("veth0")?, XdpOptions::default())?;
    /// let status = router.route_cache_status()?;
    /// println!(
    ///     "cache {:?}, following changes: {} ({:?}), {} invalidations",
    ///     status.max_age, status.follows_changes, status.reason, status.invalidations
    /// );
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn route_cache_status(&self) -> Result<RouteCacheStatus> {
        let state = self.cache.lock_state();
        let max_age = self.route_cache()?;
        Ok(RouteCacheStatus {
            max_age,
            follows_changes: state.watch.is_ok(),
            reason: state.watch.clone().err(),
            invalidations: self.cache.invalidations.load(Ordering::Relaxed),
        })
    }

    /// Drops every CPU's cached routes: the next frame of every flow is looked up again. Call it
    /// after changing routes, rules, neighbours, addresses or forwarding settings that forwarded
    /// flows depend on, when they must not wait for the cache's maximum age.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Kernel`](crate::ErrorKind::Kernel) when the generation cannot be written.
    pub fn flush_route_cache(&self) -> Result<()> {
        let state = self.cache.lock_state();
        self.cache
            .write(&state, "flush XDP router route cache", |_| {})
    }

    /// Whether lookups skip the policy rules ([`set_direct_lookup`](Self::set_direct_lookup)).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Kernel`](crate::ErrorKind::Kernel) when the setting cannot be read.
    pub fn direct_lookup(&self) -> Result<bool> {
        let v = self
            .fib_flags
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::bpf("read XDP router lookup mode", e))?
            .unwrap_or_default();
        Ok(v.get(..4)
            .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
            .unwrap_or(0)
            != 0)
    }

    /// Outcomes of the FIB lookups so far.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Kernel`](crate::ErrorKind::Kernel) when the map cannot be read.
    pub fn fib_stats(&self) -> Result<FibStats> {
        let op = "read XDP router FIB results";
        let mut slots = [0u64; 13];
        for (i, slot) in slots.iter_mut().enumerate() {
            let per_cpu = self
                .fib
                .lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY)
                .map_err(|e| Error::bpf(op, e))?
                .unwrap_or_default();
            *slot = per_cpu
                .iter()
                .filter_map(|b| b.get(..8).and_then(|b| b.try_into().ok()))
                .map(u64::from_ne_bytes)
                .sum();
        }
        Ok(FibStats {
            success: slots[0] + slots[12],
            blackhole: slots[1],
            unreachable: slots[2],
            prohibit: slots[3],
            not_forwarded: slots[4],
            forwarding_disabled: slots[5],
            unsupported_lwt: slots[6],
            no_neighbour: slots[7],
            frag_needed: slots[8],
            other: slots[9],
            ttl_expired: slots[10],
            not_ip: slots[11],
            cache_hits: slots[12],
        })
    }
}

/// The route cache's settings map and what decides them.
#[derive(Debug)]
struct RouteCache {
    map: MapHandle,
    /// Held across every read-modify-write of `map` (a flush must not undo a new age).
    state: Mutex<CacheState>,
    invalidations: AtomicU64,
}

#[derive(Debug)]
struct CacheState {
    /// The caller chose with `set_route_cache`: the router does not turn the cache on or off.
    chosen: bool,
    /// Whether the change watch runs, or why not.
    watch: std::result::Result<(), String>,
}

impl RouteCache {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // A poisoned lock only means another thread panicked between read and write: the map
        // holds a complete value either way.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self, op: &str) -> Result<lwtun_xdp_route_cache_cfg> {
        Ok(self
            .map
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::bpf(op.to_string(), e))?
            .and_then(|b| abi::from_bytes::<lwtun_xdp_route_cache_cfg>(&b))
            .unwrap_or_default())
    }

    /// Rewrites the settings with `change` applied and the generation moved on (never to 0),
    /// so nothing cached before applies after. `_state` proves the caller holds the lock.
    fn write(
        &self,
        _state: &CacheState,
        op: &str,
        change: impl FnOnce(&mut lwtun_xdp_route_cache_cfg),
    ) -> Result<()> {
        let mut cfg = self.read(op)?;
        change(&mut cfg);
        cfg.max_age_ticks = 0; // the program converts the age to ticks again
        cfg.r#gen = match cfg.r#gen.wrapping_add(1) {
            0 => 1,
            n => n,
        };
        self.map
            .update(&0u32.to_ne_bytes(), abi::as_bytes(&cfg), MapFlags::ANY)
            .map_err(|e| Error::bpf(op.to_string(), e))
    }

    /// The change watch's callback: a change drops the cache; a lost watch turns off a cache
    /// the router turned on itself.
    fn notice(&self, notice: FibNotice) {
        let mut state = self.lock_state();
        match notice {
            FibNotice::Changed => {
                if self
                    .write(
                        &state,
                        "drop the XDP router route cache after a change",
                        |_| {},
                    )
                    .is_ok()
                {
                    self.invalidations.fetch_add(1, Ordering::Relaxed);
                }
            }
            FibNotice::Lost(e) => {
                let off = if state.chosen {
                    Ok(())
                } else {
                    self.write(&state, "turn off the XDP router route cache", |c| {
                        c.max_age_ns = 0
                    })
                };
                state.watch = Err(match off {
                    Ok(()) => format!("the change watch stopped: {e}"),
                    Err(w) => {
                        format!("the change watch stopped: {e}; turning the cache off failed: {w}")
                    }
                });
            }
        }
    }
}

impl Drop for XdpRouter {
    /// Stops the change watch; a cache the router turned on itself goes off with it, so
    /// attachments that outlive the router look every frame up instead of trusting slots that
    /// nobody keeps right any more.
    fn drop(&mut self) {
        let watch = self
            .fib_watch
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if watch.is_none() {
            return;
        }
        drop(watch); // joins the thread
        let state = self.cache.lock_state();
        if !state.chosen {
            let _ = self
                .cache
                .write(&state, "turn off the XDP router route cache", |c| {
                    c.max_age_ns = 0
                });
        }
    }
}

/// The kernel's tick rate (`CONFIG_HZ`) from its configuration, where libbpf looks for it:
/// `/boot/config-RELEASE` (where distributions install it), then `/proc/config.gz` (kernels
/// built with `CONFIG_IKCONFIG_PROC`); `None` where neither tells (many containers).
fn tick_rate() -> Option<u32> {
    use std::io::Read;
    let boot = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .and_then(|release| {
            std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()
        });
    let config = boot.or_else(|| {
        let file = std::fs::File::open("/proc/config.gz").ok()?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .ok()?;
        Some(text)
    })?;
    config_hz(&config)
}

/// `CONFIG_HZ` in a kernel configuration's text.
fn config_hz(config: &str) -> Option<u32> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
        .filter(|&hz| hz > 0)
}

#[cfg(test)]
mod tests {
    use super::{config_hz, tick_rate};

    #[test]
    fn the_tick_rate_is_read_where_the_kernel_shows_its_configuration() {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let shown = std::path::Path::new("/proc/config.gz").exists()
            || std::path::Path::new(&format!("/boot/config-{}", release.trim())).exists();
        match tick_rate() {
            Some(hz) => assert!([100, 250, 300, 1000].contains(&hz), "CONFIG_HZ={hz}"),
            None => assert!(!shown, "the configuration is there but gave no CONFIG_HZ"),
        }
        if !shown {
            println!("SKIPPED (this kernel shows no configuration: the router counts nanoseconds)");
        }
    }

    #[test]
    fn the_tick_rate_is_config_hz_and_nothing_else() {
        let config =
            "# CONFIG_HZ_100 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\nCONFIG_HZ_PERIODIC=n\n";
        assert_eq!(config_hz(config), Some(250));
        assert_eq!(config_hz("CONFIG_HZ_1000=y\nCONFIG_HZ=1000"), Some(1000));
        assert_eq!(config_hz("CONFIG_HZ_250=y\n"), None);
        assert_eq!(config_hz("CONFIG_HZ=\n"), None);
        assert_eq!(config_hz("CONFIG_HZ=0\n"), None);
        assert_eq!(config_hz(""), None);
    }
}
