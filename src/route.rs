//! LWT BPF routes: a prefix whose packets run BPF programs at the `lwt_in`, `lwt_out` and
//! `lwt_xmit` hooks (or a seg6local `End.BPF` function), installed as one RAII value.
//!
//! [`LwtRoute`] gathers the whole route (destination, device or gateway, table, metric, one
//! program per hook, xmit headroom) and installs it in one `RTM_NEWROUTE` carrying one
//! `RTA_ENCAP`. The [`InstalledRoute`] it returns removes the route when dropped, unless
//! [`InstalledRoute::persist`] is called; it also keeps the programs loaded.
//!
//! Every route lwtun installs carries the protocol [`RTPROT_LWTUN`] and program names made by
//! [`crate::program::route_name`], so [`lwt_routes`] finds them again, [`program_of`] maps a
//! dumped route back to its programs, and [`remove_leftovers`] cleans up after a crashed process.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use std::os::fd::AsFd;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::netlink::route::{BpfEncap, Encap, Route, RouteBatch, RouteFilter, RouteMtu};
use crate::netlink::Netlink;
use crate::program::LwtProgram;

pub use crate::program::Hook;

pub use crate::lwt_spec::RTPROT_LWTUN;
use crate::lwt_spec::{collect_programs, take_program};

/// A route to install, with its programs.
///
/// # Examples
///
/// ```no_run
/// use lwtun::{netlink::Netlink, program::LwtCounter, route::{Hook, LwtRoute}};
///
/// let counter = LwtCounter::load()?;
/// let mut nl = Netlink::open()?;
/// let dev = nl.device("veth0")?;
/// let installed = LwtRoute::new("10.20.0.0/16".parse().unwrap())
///     .device(&dev)
///     .program(Hook::In, counter.program(Hook::In))
///     .program(Hook::Xmit, counter.program(Hook::Xmit))
///     .headroom(24)
///     .install(&mut nl)?;
/// println!("installed {installed}");
/// // Dropping `installed` deletes the route; `installed.persist()` keeps it.
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug)]
pub struct LwtRoute {
    route: Route,
    device: Option<Device>,
    programs: Vec<(Hook, Result<LwtProgram>)>,
}

impl LwtRoute {
    /// A route to `dst` in the main table, tagged [`RTPROT_LWTUN`], with no device or programs yet.
    pub fn new(dst: IpNetwork) -> Self {
        let mut route = Route::new(dst);
        route.protocol = RTPROT_LWTUN;
        LwtRoute {
            route,
            device: None,
            programs: Vec::new(),
        }
    }

    /// The output device. The route must be installed through a [`Netlink`] socket in the
    /// device's namespace ([`Device::netlink`], [`Netlink::open_in`]); another fails at
    /// install instead of naming an unrelated device of the same index.
    pub fn device(mut self, device: &Device) -> Self {
        self.route.oif = Some(device.index());
        self.device = Some(device.clone());
        self
    }

    /// The output device as set with [`LwtRoute::device`].
    pub fn output_device(&self) -> Option<&Device> {
        self.device.as_ref()
    }

    /// A gateway, of the destination's family.
    pub fn via(mut self, gateway: IpAddr) -> Self {
        self.route.gateway = Some(gateway);
        self
    }

    /// The routing table (default main, 254).
    pub fn table(mut self, table: u32) -> Self {
        self.route.table = table;
        self
    }

    /// The metric.
    pub fn metric(mut self, metric: u32) -> Self {
        self.route.metric = Some(metric);
        self
    }

    /// The preferred source address.
    pub fn source(mut self, src: IpAddr) -> Self {
        self.route.prefsrc = Some(src);
        self
    }

    /// Runs `program` at `hook`: an [`LwtProgram`], a [`ProgChain`](crate::chain::ProgChain)'s
    /// or [`Dispatcher`](crate::chain::Dispatcher)'s entry, or any loaded LWT program fd. The
    /// route keeps its own reference to the program. The program's type must fit the hook
    /// (checked at install); [`Hook::Seg6Local`] makes a seg6local `End.BPF` route and excludes
    /// the three LWT hooks.
    pub fn program(mut self, hook: Hook, program: impl AsFd) -> Self {
        self.programs.retain(|(h, _)| *h != hook);
        self.programs.push((hook, take_program(hook, program)));
        self
    }

    /// Bytes the xmit program may push in front of the packet (at most 256); subtracted from the
    /// path MTU so that encapsulated packets still fit. Set it to at least the encap length.
    pub fn headroom(mut self, bytes: u32) -> Self {
        let mut b = self.route.bpf_encap().cloned().unwrap_or_default();
        b.headroom = Some(bytes);
        self.route.encap = Some(Encap::Bpf(b));
        self
    }

    /// The route's MTU (`ip route add … mtu [lock] N`). An input route into a
    /// [`Tunnel`](crate::tunnel::Tunnel) gets a locked one from
    /// [`Tunnel::steer`](crate::tunnel::Tunnel::steer).
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::netlink::route::RouteMtu;
    /// use lwtun::route::LwtRoute;
    ///
    /// let r = LwtRoute::new("10.20.0.0/16".parse().unwrap())
    ///     .mtu(RouteMtu { bytes: 1448, locked: true });
    /// assert_eq!(r.spec().mtu.unwrap().bytes, 1448);
    /// ```
    pub fn mtu(mut self, mtu: RouteMtu) -> Self {
        self.route.mtu = Some(mtu);
        self
    }

    /// The route as it stands now (programs are added at install).
    pub fn spec(&self) -> &Route {
        &self.route
    }

    /// Whether a program was given for `hook` (with [`LwtRoute::program`]).
    pub(crate) fn has_program(&self, hook: Hook) -> bool {
        self.programs.iter().any(|(h, _)| *h == hook)
    }

    fn check_device(&self, nl: &Netlink) -> Result<()> {
        match &self.device {
            Some(d) => nl
                .check_device("install LWT route", d)
                .map_err(|e| e.with_object(self.route.dst.to_string())),
            None => Ok(()),
        }
    }

    /// Routes the route's packets over `nexthop`, an LWT nexthop object whose device, gateway
    /// and programs every route over it shares (`ip route add DST nhid N`). Excludes
    /// [`LwtRoute::device`], [`LwtRoute::via`], [`LwtRoute::program`] and
    /// [`LwtRoute::headroom`]: install refuses a route with both.
    ///
    /// Kernel: Linux 5.3+ (nexthop objects). See [`crate::nexthop`] for the trade-offs.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::{netlink::Netlink, nexthop::LwtNexthop, program::LwtCounter, route::{Hook, LwtRoute}};
    ///
    /// let counter = LwtCounter::load()?;
    /// let mut nl = Netlink::open()?;
    /// let dev = nl.device("veth0")?;
    /// let nh = LwtNexthop::new(None)
    ///     .device(&dev)
    ///     .program(Hook::Xmit, counter.program(Hook::Xmit))
    ///     .install(&mut nl)?;
    /// let a = LwtRoute::new("10.20.0.0/16".parse().unwrap()).nexthop(&nh).install(&mut nl)?;
    /// let b = LwtRoute::new("10.21.0.0/16".parse().unwrap()).nexthop(&nh).install(&mut nl)?;
    /// println!("{a}, {b}"); // 10.20.0.0/16 nhid 1 ..., both counted by one program
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    #[doc(alias = "nhid")]
    #[doc(alias = "RTA_NH_ID")]
    pub fn nexthop(mut self, nexthop: &crate::nexthop::InstalledNexthop) -> Self {
        self.route.nhid = Some(nexthop.id());
        self
    }

    /// Checks the programs against their hooks and builds the netlink route.
    fn build(self) -> Result<(Route, Vec<LwtProgram>)> {
        let op = "build LWT route";
        let LwtRoute {
            mut route,
            programs,
            ..
        } = self;
        let headroom = route.bpf_encap().and_then(|b| b.headroom);
        if let Some(id) = route.nhid {
            if !programs.is_empty() || headroom.is_some() {
                return Err(Error::invalid_input(
                    op,
                    format!(
                        "a route over nexthop {id} runs the nexthop's programs: give either \
                         .nexthop() or .program()/.headroom(), not both"
                    ),
                )
                .with_object(route.dst.to_string()));
            }
            route.encap = None;
            route.validate()?;
            return Ok((route, Vec::new()));
        }
        let (mut bpf, seg6, owned) = collect_programs(programs, op, &route.dst.to_string())?;
        bpf.headroom = headroom;
        let has_lwt = bpf.input.is_some() || bpf.output.is_some() || bpf.xmit.is_some();
        route.encap = match (seg6, has_lwt) {
            (Some(_), true) => {
                return Err(Error::invalid_input(
                    op,
                    "a route is either seg6local End.BPF or LWT BPF (in/out/xmit), not both",
                )
                .with_object(route.dst.to_string()))
            }
            (Some(p), false) if headroom.is_none() => Some(Encap::Seg6LocalBpf(p)),
            (Some(_), false) => {
                return Err(
                    Error::invalid_input(op, "headroom applies to xmit programs only")
                        .with_object(route.dst.to_string()),
                )
            }
            (None, _) => Some(Encap::Bpf(bpf)),
        };
        route.validate()?;
        Ok((route, owned))
    }

    /// Installs the route; fails with Exists if one with the same destination, table, tos and
    /// metric is there.
    ///
    /// # Errors
    ///
    /// InvalidInput (nothing sent) for a program whose type does not fit its hook, a missing
    /// program, headroom above 256, mixed families; then the kernel's error (NotFound for an
    /// unknown device, Exists, ...). Nothing is left installed on error.
    pub fn install(self, nl: &mut Netlink) -> Result<InstalledRoute> {
        self.check_device(nl)?;
        let (route, programs) = self.build()?;
        let owner = nl.try_clone()?;
        nl.add_route(&route)?;
        Ok(InstalledRoute::new(owner, route, programs))
    }

    /// Installs the route, replacing one with the same destination, table, tos and metric
    /// (the replaced route is not restored when the handle drops: the route is deleted).
    ///
    /// # Errors
    ///
    /// As [`LwtRoute::install`], but never Exists.
    pub fn replace(self, nl: &mut Netlink) -> Result<InstalledRoute> {
        self.check_device(nl)?;
        let (route, programs) = self.build()?;
        let owner = nl.try_clone()?;
        nl.replace_route(&route)?;
        Ok(InstalledRoute::new(owner, route, programs))
    }
}

/// A route lwtun installed. Dropping it deletes the route (best effort, errors ignored; use
/// [`InstalledRoute::remove`] to see them) unless [`InstalledRoute::persist`] was called.
///
/// It owns a netlink socket in the namespace the route was installed in, and references to its
/// programs, which stay loaded while the handle lives. A persisted route keeps its programs
/// loaded in the kernel by itself.
#[must_use = "dropping an InstalledRoute deletes the route; call persist() to keep it"]
pub struct InstalledRoute {
    nl: Netlink,
    route: Route,
    programs: Vec<LwtProgram>,
    armed: bool,
}

impl InstalledRoute {
    fn new(nl: Netlink, route: Route, programs: Vec<LwtProgram>) -> Self {
        InstalledRoute {
            nl,
            route,
            programs,
            armed: true,
        }
    }

    /// The route as installed.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// The network namespace the route lives in (that of the netlink socket it was installed
    /// with), as a namespace fd (`NetNs::of_fd` takes it).
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::Io`] when the kernel cannot give the socket's namespace (before
    /// Linux 4.9, `SIOCGSKNS`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::netns::NetNs;
    /// # fn f(route: &lwtun::route::InstalledRoute) -> lwtun::Result<()> {
    /// let ns = NetNs::of_fd(route.netns()?)?;
    /// println!("{} lives in {}", route, ns.name());
    /// # Ok(()) }
    /// ```
    pub fn netns(&self) -> Result<std::os::fd::OwnedFd> {
        self.nl.netns()
    }

    /// The programs the route runs.
    pub fn programs(&self) -> &[LwtProgram] {
        &self.programs
    }

    /// Swaps the program at `hook` for `program` atomically (one replace): packets see either
    /// the old program or the new one, never neither. A route over a nexthop object runs the
    /// nexthop's programs: change them with
    /// [`InstalledNexthop::set_program`](crate::nexthop::InstalledNexthop::set_program).
    ///
    /// # Errors
    ///
    /// As [`LwtRoute::install`] (InvalidInput for a route over a nexthop); on error the old
    /// program stays in place.
    pub fn set_program(&mut self, hook: Hook, program: impl AsFd) -> Result<()> {
        let mut next = LwtRoute {
            route: self.route.clone(),
            device: None,
            programs: self
                .programs
                .iter()
                .map(|p| (p.hook(), p.try_clone()))
                .collect(),
        };
        next.route.encap = self.route.bpf_encap().map(|b| {
            Encap::Bpf(BpfEncap {
                headroom: b.headroom,
                ..Default::default()
            })
        });
        next = next.program(hook, program);
        let (route, programs) = next.build()?;
        self.nl.replace_route(&route)?;
        self.route = route;
        self.programs = programs;
        Ok(())
    }

    /// Keeps the route after this value is gone, and returns it.
    pub fn persist(mut self) -> Route {
        self.armed = false;
        self.route.clone()
    }

    /// Deletes the route now.
    ///
    /// # Errors
    ///
    /// The kernel's error (NotFound if someone else deleted it).
    pub fn remove(mut self) -> Result<()> {
        self.armed = false;
        self.nl.delete_route(&self.route)
    }
}

impl Drop for InstalledRoute {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.nl.delete_route(&self.route);
        }
    }
}

impl fmt::Display for InstalledRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.route.fmt(f)
    }
}

impl fmt::Debug for InstalledRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstalledRoute")
            .field("route", &self.route)
            .field("programs", &self.programs)
            .field("armed", &self.armed)
            .finish()
    }
}

/// Every route with an LWT BPF or seg6local End.BPF encap, IPv4 and IPv6, in every table but
/// the local one, whoever made it (lwtun or iproute2).
///
/// A route over an LWT nexthop object ([`Route::nhid`]) is one of them, with the nexthop's
/// encap in [`Route::nexthop_encap`]: the kernel copies it into route dumps by default
/// (`net.ipv4.nexthop_compat_mode=1`); where it does not, one `RTM_GETNEXTHOP` dump per
/// listing (not one per route) fills it in.
///
/// # Errors
///
/// The kernel's error for the dumps.
pub fn lwt_routes(nl: &mut Netlink) -> Result<Vec<Route>> {
    let filter = RouteFilter {
        bpf_only: true,
        ..RouteFilter::all()
    };
    let mut routes = nl.routes(&RouteFilter {
        bpf_only: false,
        ..filter.clone()
    })?;
    if routes
        .iter()
        .any(|r| r.nhid.is_some() && r.nexthop_encap.is_none())
    {
        let nexthops: std::collections::HashMap<u32, crate::netlink::nexthop::Nexthop> =
            nl.nexthops()?.into_iter().map(|nh| (nh.id, nh)).collect();
        for r in routes.iter_mut().filter(|r| r.nexthop_encap.is_none()) {
            if let Some(nh) = r.nhid.and_then(|id| nexthops.get(&id)) {
                r.nexthop_encap = nh.encap.clone().map(Box::new);
            }
        }
    }
    routes.retain(|r| filter.keeps(r));
    Ok(routes)
}

/// The program a dumped route runs at `hook`, when lwtun named it: `None` when the route has
/// no program there; an error when the name is not lwtun's (iproute2's `file.o:[sec]` names
/// do not lead to a program) or the program is gone. For a route over a nexthop object, the
/// nexthop's program ([`Route::nexthop_encap`], as [`lwt_routes`] reports it).
pub fn program_of(route: &Route, hook: Hook) -> Option<Result<LwtProgram>> {
    let name = match (route.effective_encap(), hook) {
        (Some(Encap::Bpf(b)), Hook::In) => b.input.as_ref(),
        (Some(Encap::Bpf(b)), Hook::Out) => b.output.as_ref(),
        (Some(Encap::Bpf(b)), Hook::Xmit) => b.xmit.as_ref(),
        (Some(Encap::Seg6LocalBpf(p)), Hook::Seg6Local) => Some(p),
        _ => None,
    }?;
    Some(LwtProgram::from_route_name(&name.name))
}

/// Deletes every route tagged [`RTPROT_LWTUN`] (leftovers of a process that persisted routes or
/// crashed), in one batch, and returns how many were deleted.
///
/// # Errors
///
/// The dump's error, or the batch's first failure.
pub fn remove_leftovers(nl: &mut Netlink) -> Result<usize> {
    let routes = nl.routes(&RouteFilter {
        protocol: Some(RTPROT_LWTUN),
        ..RouteFilter::all()
    })?;
    let mut batch = RouteBatch::new();
    for r in routes {
        batch.delete(r);
    }
    nl.apply_batch(&batch)?.into_result()
}
