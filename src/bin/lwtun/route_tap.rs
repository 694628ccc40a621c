//! `capture --hook route`: a capture hung on the route that carries a prefix's traffic, at that
//! route's free `lwt_out` hook, everything else about the route kept; the route is put back as it
//! was when the capture ends. `leftovers --remove` puts back the same way a route whose capture
//! was killed (SIGKILL leaves the program at `lwt_out`): [`RouteTap::adopt`].
//!
//! ```text
//!  before   10.20.0.0/16 dev to1 src 10.30.0.1 encap bpf xmit lwtun:encap_xmit:7 headroom 28
//!  during   10.20.0.0/16 dev to1 src 10.30.0.1 encap bpf out lwtun:chain_lwt_out:9
//!                                               xmit lwtun:encap_xmit:7 headroom 28
//!  after    as before (one RTM_NEWROUTE with NLM_F_REPLACE each way)
//! ```
//!
//! `lwt_out` runs for packets sent from this host and forwarded ones alike, before `lwt_xmit`:
//! the capture sees the packets the route carries as they enter it (the inner packets of a
//! tunnel route), and its verdict (`BPF_OK`) hands them on to the route's own programs.
//!
//! A route dump names its programs but does not report the xmit headroom, which the kernel
//! subtracts from the path MTU. The headroom is read back from that MTU: the path MTU of a UDP
//! socket connected into the prefix (`IP_MTU` / `IPV6_MTU`) is the route's MTU (or its device's)
//! minus the headroom. After each replace the path MTU is measured again, so the route's MTU is
//! proven unchanged, and the route is dumped again and compared with the original.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};

use ipnetwork::IpNetwork;
use lwtun::netlink::route::{
    BpfEncap, Encap, ProgRef, Route, RouteFilter, RTN_UNICAST, RT_TABLE_MAIN,
};
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::program::LwtProgram;
use lwtun::{Error, ErrorKind, Result};

const OP: &str = "capture on a route";
/// The kernel's limit on an LWT route's xmit headroom (`LWT_BPF_MAX_HEADROOM`).
const MAX_HEADROOM: u32 = 256;

/// The route a capture hangs on; dropping it (also while unwinding from a panic) puts the route
/// back as it was. [`RouteTap::restore`] does so and reports errors.
pub struct RouteTap<'a> {
    nl: Netlink,
    netns: &'a NetNs,
    /// The route as dumped before the capture.
    original: Route,
    /// The original route with its programs as file descriptors, to put back.
    restore: Route,
    /// The route's own programs (their fds are in `restore`).
    _programs: Vec<LwtProgram>,
    /// The path MTU into the prefix before the capture.
    path_mtu: Option<u32>,
    probe: IpAddr,
    armed: bool,
}

/// The main table's route the kernel uses for `prefix`: the one with exactly that prefix, else
/// the longest prefix containing it; among equals, the lowest metric. `None` when no unicast
/// route covers it.
pub fn carrying_route(routes: &[Route], prefix: IpNetwork) -> Option<&Route> {
    let prefix = IpNetwork::new(prefix.network(), prefix.prefix()).ok()?;
    routes
        .iter()
        .filter(|r| r.table == RT_TABLE_MAIN && r.kind == RTN_UNICAST)
        .filter(|r| r.dst.is_ipv4() == prefix.is_ipv4())
        .filter(|r| r.dst.prefix() <= prefix.prefix() && r.dst.contains(prefix.network()))
        .max_by_key(|r| (r.dst.prefix(), std::cmp::Reverse(r.metric.unwrap_or(0))))
}

/// An address inside `prefix` to probe the path MTU with (the network address is avoided:
/// 0.0.0.0 is this host, and a subnet's first address may be an anycast one).
fn probe_address(prefix: IpNetwork) -> IpAddr {
    match prefix {
        IpNetwork::V4(p) if p.prefix() < 31 => {
            IpAddr::V4((u32::from(p.network()).wrapping_add(1)).into())
        }
        IpNetwork::V6(p) if p.prefix() < 127 => {
            IpAddr::V6((u128::from(p.network()).wrapping_add(1)).into())
        }
        p => p.network(),
    }
}

/// The path MTU the kernel gives a UDP socket connected to `addr` in `netns`.
fn path_mtu(netns: &NetNs, addr: IpAddr) -> Result<u32> {
    netns.run(|| {
        let any: SocketAddr = match addr {
            IpAddr::V4(_) => "0.0.0.0:0".parse().expect("address"),
            IpAddr::V6(_) => "[::]:0".parse().expect("address"),
        };
        let io = |e| Error::io("measure the path MTU", e).with_object(addr.to_string());
        let s = UdpSocket::bind(any).map_err(io)?;
        s.connect(SocketAddr::new(addr, 9)).map_err(io)?;
        let (level, name) = match addr {
            IpAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MTU),
            IpAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MTU),
        };
        let mut mtu: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: mtu and len are live and sized for the option's int.
        let rc = unsafe {
            libc::getsockopt(
                s.as_fd().as_raw_fd(),
                level,
                name,
                (&mut mtu as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        Ok(mtu as u32)
    })
}

/// Whether `a` and `b` are the same route as far as the kernel reports it, the programs at
/// `lwt_out` left aside.
fn same_route(a: &Route, b: &Route) -> bool {
    let strip = |r: &Route| {
        let mut r = r.clone();
        r.flags = 0;
        r.extra.clear();
        if let Some(Encap::Bpf(bpf)) = &mut r.encap {
            bpf.output = None;
            bpf.headroom = None;
            if bpf.input.is_none() && bpf.xmit.is_none() {
                r.encap = None;
            }
        }
        r
    };
    strip(a) == strip(b)
}

fn refuse(prefix: IpNetwork, reason: String) -> Error {
    Error::other(ErrorKind::InvalidInput, OP, reason)
        .with_object(prefix.to_string())
        .with_hint(
            "capture the route's packets on its device instead: \
             lwtun capture --hook tc-egress --dev DEV",
        )
}

/// Opens the program a route names at a hook, to give it back to the route.
fn reopen(
    hook: &str,
    p: &ProgRef,
    refuse: &dyn Fn(String) -> Error,
) -> Result<(ProgRef, LwtProgram)> {
    let prog = LwtProgram::from_route_name(&p.name).map_err(|e| {
        refuse(format!(
            "the route's {hook} program '{}' cannot be given back to it ({e})",
            p.name
        ))
    })?;
    Ok((ProgRef::new(prog.as_fd().as_raw_fd(), p.name.clone()), prog))
}

/// A route as it is without its `lwt_out` program: its other programs reopened to be given
/// back, its headroom read back from the path MTU.
struct Bare {
    /// The route without `lwt_out`, its programs as file descriptors.
    route: Route,
    /// The route's other programs (their fds are in `route`).
    programs: Vec<LwtProgram>,
    /// The path MTU into the route now, when it has LWT programs (the headroom is read from it).
    path_mtu: Option<u32>,
    probe: IpAddr,
}

/// `original` (one of `routes`) without its `lwt_out` program, everything else kept. `refuse`
/// makes the error for a route that cannot be put back exactly so.
fn bare(
    nl: &mut Netlink,
    netns: &NetNs,
    routes: &[Route],
    original: &Route,
    refuse: &dyn Fn(String) -> Error,
) -> Result<Bare> {
    let shown = original.dst;
    if let Some(id) = original.nhid {
        return Err(refuse(format!(
            "{shown} runs nexthop object {id}'s programs, not programs of its own"
        )));
    }
    let mut programs = Vec::new();
    let kept = match &original.encap {
        None => None,
        Some(Encap::Bpf(b)) => {
            let mut keep = |hook, p: &Option<ProgRef>| -> Result<Option<ProgRef>> {
                p.as_ref()
                    .map(|p| {
                        let (r, prog) = reopen(hook, p, refuse)?;
                        programs.push(prog);
                        Ok(r)
                    })
                    .transpose()
            };
            Some(BpfEncap {
                input: keep("lwt_in", &b.input)?,
                xmit: keep("lwt_xmit", &b.xmit)?,
                ..Default::default()
            })
        }
        Some(_) => {
            return Err(refuse(format!(
                "{shown} has an encap that is not LWT BPF, and a route has one encap only"
            )))
        }
    };
    let mut bare = Bare {
        route: original.clone(),
        programs,
        path_mtu: None,
        probe: probe_address(shown),
    };
    let Some(mut kept) = kept else {
        return Ok(bare);
    };
    // The headroom, from the path MTU (see the module's comment), measured with an address the
    // kernel sends through this very route.
    if original.table != RT_TABLE_MAIN {
        return Err(refuse(format!(
            "{shown} is in table {}, and its LWT headroom (which a route dump does not report) \
             can be read back from the main table's path MTU only",
            original.table
        )));
    }
    let host = IpNetwork::from(bare.probe);
    let through = carrying_route(routes, host);
    if through.map(|r| (r.dst, r.metric, r.tos)) != Some((shown, original.metric, original.tos)) {
        return Err(refuse(format!(
            "{} leaves through {} rather than {shown}, so {shown}'s LWT headroom (which a route \
             dump does not report) cannot be read back from its path MTU",
            bare.probe,
            through.map_or("no route".to_string(), |r| r.dst.to_string())
        )));
    }
    let mtu = path_mtu(netns, bare.probe)?;
    let base = match (original.mtu, original.oif) {
        (Some(m), _) => m.bytes,
        (None, Some(oif)) => nl.link_by_index(oif)?.mtu,
        (None, None) => mtu,
    };
    let headroom = base.saturating_sub(mtu);
    if headroom > MAX_HEADROOM {
        return Err(refuse(format!(
            "the path MTU into it ({mtu}) is not the route's ({base}) minus an LWT headroom (a \
             cached path MTU?), so the route could not be put back as it is"
        )));
    }
    bare.path_mtu = Some(mtu);
    if kept.input.is_none() && kept.xmit.is_none() {
        // Only lwt_out ran: the route had no encap of its own, and so no headroom.
        if headroom > 0 {
            return Err(refuse(format!(
                "{shown} runs a program at lwt_out only, yet {headroom} bytes of LWT headroom: \
                 without the program it has no encap to keep that headroom in"
            )));
        }
        bare.route.encap = None;
        return Ok(bare);
    }
    kept.headroom = (headroom > 0).then_some(headroom);
    bare.route.encap = Some(Encap::Bpf(kept));
    Ok(bare)
}

/// The route `dst` (with the key fields of `like`) in `routes`.
fn same_key<'r>(routes: &'r [Route], like: &Route) -> Option<&'r Route> {
    routes.iter().find(|r| {
        (r.dst, r.table, r.tos, r.metric) == (like.dst, like.table, like.tos, like.metric)
    })
}

impl<'a> RouteTap<'a> {
    /// Finds the route that carries `prefix` in `netns` (on `device` when given) and gives it
    /// `capture` (an `lwt_out` program) at its `lwt_out` hook.
    #[cfg_attr(not(feature = "capture"), allow(dead_code))]
    pub fn hang(
        netns: &'a NetNs,
        prefix: IpNetwork,
        device: Option<&lwtun::device::Device>,
        capture: &LwtProgram,
    ) -> Result<RouteTap<'a>> {
        let mut nl = Netlink::open_in(netns)?;
        let routes = nl.routes(&RouteFilter {
            ipv4: prefix.is_ipv4(),
            ipv6: prefix.is_ipv6(),
            ..RouteFilter::all()
        })?;
        let original = carrying_route(&routes, prefix)
            .ok_or_else(|| {
                Error::other(
                    ErrorKind::NotFound,
                    OP,
                    format!("no route of the main table carries {prefix}"),
                )
                .with_object(prefix.to_string())
                .with_hint(format!(
                    "add the route first (lwtun route add --pin DIR {prefix} --dev DEV), \
                         or capture on a device: lwtun capture --hook tc-egress --dev DEV"
                ))
            })?
            .clone();
        let shown = original.dst;
        if let (Some(dev), Some(oif)) = (device, original.oif) {
            if dev.index() != oif {
                return Err(refuse(
                    prefix,
                    format!(
                        "the route carrying it ({shown}) leaves through another device than {}",
                        dev.name()
                    ),
                ));
            }
        }
        if let Some(Encap::Bpf(BpfEncap {
            output: Some(out), ..
        })) = &original.encap
        {
            return Err(refuse(
                prefix,
                format!("{shown} runs '{}' at lwt_out already", out.name),
            ));
        }
        let bare = bare(&mut nl, netns, &routes, &original, &|reason| {
            refuse(prefix, reason)
        })?;
        let mut tap = RouteTap::of(nl, netns, original, bare);
        let mut bpf = match &tap.restore.encap {
            Some(Encap::Bpf(b)) => b.clone(),
            _ => BpfEncap::default(),
        };
        let mut during = tap.restore.clone();
        bpf.output = Some(ProgRef::new(
            capture.as_fd().as_raw_fd(),
            capture.route_name().to_string(),
        ));
        during.encap = Some(Encap::Bpf(bpf));
        tap.nl
            .replace_route(&during)
            .map_err(|e| e.with_object(shown.to_string()))?;
        tap.armed = true;
        tap.check("with the capture")?;
        Ok(tap)
    }

    /// Takes over `route` in `netns`, which runs a program at `lwt_out` that nobody will take off
    /// (a capture whose process was killed): [`restore`](Self::restore) then puts the route back
    /// without it, everything else kept. Nothing changes until then; dropping the tap changes
    /// nothing either.
    ///
    /// Refuses (InvalidInput, saying why) a route that cannot be put back exactly: one over a
    /// nexthop object, in another table than main (its headroom cannot be read back), whose other
    /// programs lwtun did not name, or whose path MTU does not tell its headroom.
    pub fn adopt(netns: &'a NetNs, route: &Route) -> Result<RouteTap<'a>> {
        let (dst, table) = (route.dst, route.table);
        let cannot = |reason: String| {
            Error::other(
                ErrorKind::InvalidInput,
                "put a route back without its lwt_out program",
                format!("{reason}; lwtun does not guess the rest of the route"),
            )
            .with_object(dst.to_string())
            .with_hint(format!(
                "see the route with `ip route show {dst} table {table}` and put it back without \
                 its `encap bpf out` program with `ip route replace`, or delete it with \
                 `ip route del {dst} table {table}`"
            ))
        };
        let mut nl = Netlink::open_in(netns)?;
        let routes = nl.routes(&RouteFilter {
            ipv4: dst.is_ipv4(),
            ipv6: dst.is_ipv6(),
            ..RouteFilter::all()
        })?;
        let original = same_key(&routes, route)
            .ok_or_else(|| Error::not_found(OP, "the route is gone").with_object(dst.to_string()))?
            .clone();
        if !matches!(
            &original.encap,
            Some(Encap::Bpf(BpfEncap {
                output: Some(_),
                ..
            }))
        ) {
            return Err(cannot("it runs no program at lwt_out".to_string()));
        }
        let bare = bare(&mut nl, netns, &routes, &original, &cannot)?;
        Ok(RouteTap::of(nl, netns, original, bare))
    }

    /// The tap of `original`, which is put back as `bare` is (nothing changed yet).
    fn of(nl: Netlink, netns: &'a NetNs, original: Route, bare: Bare) -> RouteTap<'a> {
        RouteTap {
            nl,
            netns,
            restore: bare.route,
            original,
            _programs: bare.programs,
            path_mtu: bare.path_mtu,
            probe: bare.probe,
            armed: false,
        }
    }

    /// The route the capture is on, as it was before.
    #[cfg_attr(not(feature = "capture"), allow(dead_code))]
    pub fn route(&self) -> &Route {
        &self.original
    }

    /// Checks that the route is the original one but for its `lwt_out` program, and that the
    /// path MTU into it did not change; puts the route back when not.
    fn check(&mut self, when: &str) -> Result<()> {
        let routes = self.nl.routes(&RouteFilter {
            ipv4: self.original.dst.is_ipv4(),
            ipv6: self.original.dst.is_ipv6(),
            ..RouteFilter::all()
        })?;
        let now = same_key(&routes, &self.original);
        let mtu = match self.path_mtu {
            Some(_) => Some(path_mtu(self.netns, self.probe)?),
            None => None,
        };
        let problem = match now {
            None => Some("the route is gone".to_string()),
            Some(r) if !same_route(r, &self.original) => Some(format!("it became '{r}'")),
            Some(_) if mtu != self.path_mtu => Some(format!(
                "its path MTU became {} (was {})",
                mtu.unwrap_or(0),
                self.path_mtu.unwrap_or(0)
            )),
            Some(_) => None,
        };
        match problem {
            None => Ok(()),
            Some(p) => {
                let restored = self.put_back();
                Err(Error::other(
                    ErrorKind::Kernel,
                    OP,
                    format!(
                        "{when}, the route was not the one it was ({p}); {}",
                        match restored {
                            Ok(()) => "it was put back".to_string(),
                            Err(e) => format!("putting it back failed: {e}"),
                        }
                    ),
                )
                .with_object(self.original.dst.to_string()))
            }
        }
    }

    fn put_back(&mut self) -> Result<()> {
        self.armed = false;
        self.nl
            .replace_route(&self.restore)
            .map_err(|e| e.with_object(self.original.dst.to_string()))
    }

    /// Puts the route back as it was (without the program at `lwt_out`), and checks that it is.
    pub fn restore(mut self) -> Result<()> {
        self.put_back()?;
        self.check("put back")
    }
}

impl Drop for RouteTap<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.put_back() {
                eprintln!("lwtun: could not put route {} back: {e}", self.original.dst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, table: u32, metric: Option<u32>) -> Route {
        let mut r = Route::new(dst.parse().unwrap());
        r.table = table;
        r.metric = metric;
        r
    }

    #[test]
    fn the_carrying_route_is_the_exact_then_the_longest_prefix() {
        let routes = vec![
            route("0.0.0.0/0", RT_TABLE_MAIN, None),
            route("10.20.0.0/16", RT_TABLE_MAIN, None),
            route("10.20.1.0/24", 100, None),
            route("10.20.0.0/24", RT_TABLE_MAIN, Some(20)),
            route("10.20.0.0/24", RT_TABLE_MAIN, Some(10)),
            route("fd00::/8", RT_TABLE_MAIN, Some(1024)),
        ];
        let find = |p: &str| carrying_route(&routes, p.parse().unwrap()).map(|r| (r.dst, r.metric));
        assert_eq!(
            find("10.20.0.0/16"),
            Some(("10.20.0.0/16".parse().unwrap(), None))
        );
        assert_eq!(
            find("10.20.0.9/32"),
            Some(("10.20.0.0/24".parse().unwrap(), Some(10))),
            "longest prefix, lowest metric"
        );
        assert_eq!(
            find("10.20.1.9/32"),
            Some(("10.20.0.0/16".parse().unwrap(), None)),
            "other tables are not the main table's lookup"
        );
        assert_eq!(find("192.0.2.1/32").map(|r| r.0.prefix()), Some(0));
        assert_eq!(find("fd00::1/128").map(|r| r.0.prefix()), Some(8));
        assert!(find("fe80::1/128").is_none());
        assert!(carrying_route(&routes[1..], "192.0.2.1/32".parse().unwrap()).is_none());
    }

    #[test]
    fn probe_addresses_lie_inside_the_prefix() {
        for (p, a) in [
            ("10.20.0.0/16", "10.20.0.1"),
            ("10.20.0.2/32", "10.20.0.2"),
            ("10.20.0.2/31", "10.20.0.2"),
            ("fd20::/64", "fd20::1"),
            ("fd20::5/128", "fd20::5"),
        ] {
            let p: IpNetwork = p.parse().unwrap();
            assert_eq!(probe_address(p), a.parse::<IpAddr>().unwrap());
            assert!(p.contains(probe_address(p)));
        }
    }
}
