//! LWT nexthop objects end to end: routes sharing one nexthop whose xmit program counts their
//! traffic (ping), seen by `ip route show` (`nhid N`) and `ip nexthop show` (`encap bpf`), the
//! program replaced on the nexthop for every route at once, 10k routes over one nexthop
//! installed and removed in a batch, what the kernel does when a nexthop in use is deleted
//! (it deletes the routes), and the refusals, each of the right kind and leaving nothing
//! behind.
//!
//! Every test builds its own namespaces (`common::two_hosts`: ns 0 `to1` 10.77.0.1 — `to0`
//! 10.77.0.2 ns 1), removed when the test ends or panics.

mod common;

use std::net::IpAddr;

use lwtun::netlink::route::{Route, RouteBatch, RouteFilter};
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::nexthop::{self, InstalledNexthop, LwtNexthop};
use lwtun::program::LwtCounter;
use lwtun::route::{lwt_routes, program_of, Hook, LwtRoute};
use lwtun::ErrorKind;

fn ip(ns: &NetNs, args: &str) -> String {
    common::ip(ns, &args.split_whitespace().collect::<Vec<_>>())
}

/// Two hosts; ns 1 answers on 10.62.0.1 and 10.63.0.1 (its loopback), which ns 0 reaches only
/// through routes the test installs.
///
/// Each host knows the other's link-layer address (permanent neighbour entries, IPv4 and IPv6):
/// these tests count every packet the programs see, and neighbour discovery under load once
/// failed a ping (`+1 errors`: an unresolved IPv6 neighbour) while the route was right.
fn hosts() -> common::Line {
    let net = common::two_hosts();
    ip(net.ns(1), "addr add 10.62.0.1/32 dev lo");
    ip(net.ns(1), "addr add 10.63.0.1/32 dev lo");
    for (me, peer) in [(0, 1), (1, 0)] {
        let dev = net.dev(me, peer);
        let lladdr = common::mac(net.ns(peer), &net.dev(peer, me))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        for addr in [
            net.v4_towards(peer, me).to_string(),
            net.v6_towards(peer, me).to_string(),
        ] {
            ip(
                net.ns(me),
                &format!("neigh replace {addr} lladdr {lladdr} dev {dev} nud permanent"),
            );
        }
    }
    net
}

/// A nexthop in ns 0 via ns 1 on `to1`, counting at xmit with `counter`.
fn xmit_nexthop(net: &common::Line, nl: &mut Netlink, counter: &LwtCounter) -> InstalledNexthop {
    LwtNexthop::new(None)
        .device(&net.device(0, "to1"))
        .via(IpAddr::V4(net.v4(1)))
        .program(Hook::Xmit, counter.program(Hook::Xmit))
        .install(nl)
        .unwrap()
}

/// The two hosts of [`hosts`], a netlink socket in ns 0 and a counting program.
fn host() -> (common::Line, Netlink, LwtCounter) {
    let net = hosts();
    let nl = Netlink::open_in(net.ns(0)).unwrap();
    (net, nl, LwtCounter::load().unwrap())
}

/// A route to `dst` (in `table` when given) over `nh`, installed.
fn route_over(
    nl: &mut Netlink,
    nh: &InstalledNexthop,
    dst: &str,
    table: Option<u32>,
) -> lwtun::route::InstalledRoute {
    let r = LwtRoute::new(dst.parse().unwrap()).nexthop(nh);
    match table {
        Some(t) => r.table(t),
        None => r,
    }
    .install(nl)
    .unwrap()
}

fn pings(net: &common::Line, to: &str, n: u32) {
    let p = common::ping(net.ns(0), to.parse().unwrap(), n);
    assert_eq!(p.received, n, "ping {to}: {}", p.output);
}

#[test]
fn routes_share_one_nexthop_its_program_counts_and_replaces_for_all() {
    require!();
    let (net, mut nl, first) = host();
    let second = LwtCounter::load().unwrap();
    let mut nh = xmit_nexthop(&net, &mut nl, &first);
    assert_ne!(nh.id(), 0, "the kernel picked an id");
    let routes: Vec<_> = ["10.62.0.0/24", "10.63.0.0/24"]
        .iter()
        .map(|dst| route_over(&mut nl, &nh, dst, None))
        .collect();

    pings(&net, "10.62.0.1", 3);
    pings(&net, "10.63.0.1", 3);
    // Six echo requests left through the two routes, one program; replies take plain routes.
    let c = first.counter(Hook::Xmit).unwrap();
    assert_eq!(c.packets, 6);
    assert_eq!(c.bytes, 6 * 84, "20 + 64 bytes each from the IP header on");

    // iproute2: the routes name the nexthop, the nexthop holds the encap.
    let id = nh.id();
    let shown = ip(net.ns(0), "route show");
    for dst in ["10.62.0.0/24", "10.63.0.0/24"] {
        assert!(
            shown.contains(&format!("{dst} nhid {id} ")),
            "{dst} nhid {id} in:\n{shown}"
        );
    }
    let nexthops = ip(net.ns(0), "-d nexthop show");
    let want = format!(
        "id {id}  encap bpf xmit {} via {} dev to1",
        first.program(Hook::Xmit).route_name(),
        net.v4(1)
    );
    assert!(nexthops.contains(&want), "{want:?} in:\n{nexthops}");

    // lwtun's listing reports the nexthop's program for both routes, with the kernel's
    // compat copy in the route dump and without it (one nexthop dump then).
    for compat in ["1", "0"] {
        net.ns(0)
            .set_sysctl("net.ipv4.nexthop_compat_mode", compat)
            .unwrap();
        let listed = lwt_routes(&mut nl).unwrap();
        assert_eq!(listed.len(), 2, "compat {compat}: {listed:?}");
        for r in &listed {
            assert_eq!(r.nhid, Some(id));
            assert_eq!((r.oif, r.encap.as_ref()), (None, None), "{r:?}");
            let p = program_of(r, Hook::Xmit).unwrap().unwrap();
            assert_eq!(p.id(), first.program(Hook::Xmit).id(), "compat {compat}");
        }
    }
    net.ns(0)
        .set_sysctl("net.ipv4.nexthop_compat_mode", "1")
        .unwrap();

    // One replace on the nexthop moves every route to the second program.
    nh.set_program(Hook::Xmit, second.program(Hook::Xmit))
        .unwrap();
    pings(&net, "10.62.0.1", 2);
    pings(&net, "10.63.0.1", 2);
    assert_eq!(
        first.counter(Hook::Xmit).unwrap().packets,
        6,
        "old program idle"
    );
    assert_eq!(second.counter(Hook::Xmit).unwrap().packets, 4);
    let nexthops = ip(net.ns(0), "-d nexthop show");
    assert!(
        nexthops.contains(second.program(Hook::Xmit).route_name()),
        "{nexthops}"
    );
    for r in lwt_routes(&mut nl).unwrap() {
        let p = program_of(&r, Hook::Xmit).unwrap().unwrap();
        assert_eq!(p.id(), second.program(Hook::Xmit).id());
    }

    // Nothing left after drop: routes first, then the nexthop.
    drop(routes);
    assert!(!ip(net.ns(0), "route show").contains("nhid"));
    drop(nh);
    assert_eq!(ip(net.ns(0), "nexthop show"), "");
    assert!(lwt_routes(&mut nl).unwrap().is_empty());
}

#[test]
fn an_ipv6_nexthop_serves_ipv6_and_ipv4_routes() {
    require!();
    let (net, mut nl, counter) = host();
    ip(net.ns(1), "-6 addr add fd62::1/128 dev lo");
    ip(net.ns(1), "-6 addr add fd63::1/128 dev lo");
    let nh = LwtNexthop::new(Some(60))
        .device(&net.device(0, "to1"))
        .via(IpAddr::V6(net.v6(1)))
        .program(Hook::Out, counter.program(Hook::Out))
        .program(Hook::Xmit, counter.program(Hook::Xmit))
        .install(&mut nl)
        .unwrap();
    assert!(nh.nexthop().ipv6);
    let _routes: Vec<_> = ["fd62::/64", "fd63::/64", "10.62.0.0/24"]
        .iter()
        .map(|dst| route_over(&mut nl, &nh, dst, None))
        .collect();
    pings(&net, "fd62::1", 2);
    pings(&net, "fd63::1", 2);
    pings(&net, "10.62.0.1", 2); // IPv4 over an IPv6 gateway
    for hook in [Hook::Out, Hook::Xmit] {
        let c = counter.counter(hook).unwrap();
        assert_eq!(c.packets, 6, "{hook}");
        assert_eq!(c.bytes, 4 * 104 + 2 * 84, "{hook}");
    }
    let shown = ip(net.ns(0), "-6 route show");
    assert!(shown.contains("fd62::/64 nhid 60 "), "{shown}");
    assert_eq!(lwt_routes(&mut nl).unwrap().len(), 3);
}

#[test]
fn ten_thousand_routes_over_one_nexthop_in_a_batch() {
    require!();
    let (net, mut nl, counter) = host();
    let nh = xmit_nexthop(&net, &mut nl, &counter);
    const N: usize = 10_000;
    let route = |i: usize| {
        let mut r = Route::new(
            format!("10.{}.{}.0/24", 100 + i / 256, i % 256)
                .parse()
                .unwrap(),
        );
        r.table = 200;
        r.nhid = Some(nh.id());
        r
    };
    let mut adds = RouteBatch::new();
    let mut dels = RouteBatch::new();
    for i in 0..N {
        adds.add(route(i));
        dels.delete(route(i));
    }
    let report = nl.apply_batch(&adds).unwrap();
    assert!(report.is_complete(), "{report}");
    let lines = |ns: &NetNs| ip(ns, "route show table 200").lines().count();
    assert_eq!(lines(net.ns(0)), N);
    let listed = nl
        .routes(&RouteFilter {
            table: Some(200),
            bpf_only: true,
            ..RouteFilter::all()
        })
        .unwrap();
    assert_eq!(
        listed.len(),
        N,
        "every route is an LWT route by its nexthop"
    );
    let report = nl.apply_batch(&dels).unwrap();
    assert!(report.is_complete(), "{report}");
    assert_eq!(lines(net.ns(0)), 0);
    drop(nh);
    assert_eq!(ip(net.ns(0), "nexthop show"), "");
}

#[test]
fn deleting_a_nexthop_in_use_deletes_its_routes() {
    require!();
    let (net, mut nl, counter) = host();
    let nh = xmit_nexthop(&net, &mut nl, &counter);
    let a = route_over(&mut nl, &nh, "10.62.0.0/24", None);
    let b = route_over(&mut nl, &nh, "10.63.0.0/24", Some(100));
    assert_eq!(
        ip(net.ns(0), "route show table all")
            .matches("nhid")
            .count(),
        2
    );
    // The kernel does not refuse: the nexthop goes, and every route over it with it.
    nh.remove().unwrap();
    assert_eq!(ip(net.ns(0), "nexthop show"), "");
    let left = ip(net.ns(0), "route show table all");
    assert!(
        !left.contains("nhid"),
        "routes outlived their nexthop:\n{left}"
    );
    assert!(lwt_routes(&mut nl).unwrap().is_empty());
    // The route handles find nothing to delete.
    assert_eq!(a.remove().unwrap_err().kind(), ErrorKind::NotFound);
    drop(b); // best effort, silent
}

#[test]
fn refusals_are_typed_and_leave_nothing() {
    require!();
    let (net, mut nl, counter) = host();
    let to1 = net.device(0, "to1");
    let nh = LwtNexthop::new(Some(4242))
        .device(&to1)
        .program(Hook::Xmit, counter.program(Hook::Xmit))
        .headroom(16)
        .install(&mut nl)
        .unwrap();
    assert_eq!(nh.id(), 4242);
    let before = ip(net.ns(0), "route show table all");

    // Both an encap and a nexthop: refused before anything is sent.
    let e = LwtRoute::new("10.62.0.0/24".parse().unwrap())
        .nexthop(&nh)
        .program(Hook::Xmit, counter.program(Hook::Xmit))
        .install(&mut nl)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("not both"), "{e}");
    // A device of its own and a nexthop: refused too.
    let e = LwtRoute::new("10.62.0.0/24".parse().unwrap())
        .device(&to1)
        .nexthop(&nh)
        .install(&mut nl)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("a device"), "{e}");

    // An unknown nexthop id: the kernel's ext-ack text.
    let mut r = Route::new("10.62.0.0/24".parse().unwrap());
    r.nhid = Some(999);
    let e = nl.add_route(&r).unwrap_err();
    assert_eq!(e.ext_ack(), Some("Nexthop id does not exist"), "{e}");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    // An IPv6 route over an IPv4 nexthop: the kernel's words again.
    let e = LwtRoute::new("fd62::/64".parse().unwrap())
        .nexthop(&nh)
        .install(&mut nl)
        .unwrap_err();
    assert_eq!(
        e.ext_ack(),
        Some("IPv6 routes can not use an IPv4 nexthop"),
        "{e}"
    );

    // Nexthops: no program, a taken id, an unknown id to delete.
    let e = LwtNexthop::new(None)
        .device(&to1)
        .install(&mut nl)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let e = LwtNexthop::new(Some(4242))
        .device(&to1)
        .program(Hook::Xmit, counter.program(Hook::Xmit))
        .install(&mut nl)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
    let e = nl.delete_nexthop(31337).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // A program of the wrong type for its hook.
    let e = LwtNexthop::new(None)
        .device(&to1)
        .program(Hook::Xmit, counter.program(Hook::In))
        .install(&mut nl)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");

    assert_eq!(ip(net.ns(0), "route show table all"), before);
    let shown = ip(net.ns(0), "-d nexthop show");
    assert_eq!(shown.lines().count(), 1, "{shown}");
    assert!(shown.starts_with("id 4242 "), "{shown}");
}

#[test]
fn persisted_nexthops_and_their_routes_are_leftovers() {
    require!();
    let (net, mut nl, counter) = host();
    let nh = xmit_nexthop(&net, &mut nl, &counter);
    let r = route_over(&mut nl, &nh, "10.62.0.0/24", None);
    let kept = r.persist();
    assert_eq!(kept.nhid, Some(nh.id()));
    let kept_nh = nh.persist();
    drop(counter); // the kernel keeps the program loaded for the nexthop
    pings(&net, "10.62.0.1", 1);
    assert_eq!(nexthop::remove_leftovers(&mut nl).unwrap(), 1);
    assert_eq!(ip(net.ns(0), "nexthop show"), "");
    assert!(!ip(net.ns(0), "route show").contains("nhid"));
    assert_eq!(
        nl.nexthop(kept_nh.id).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}
