//! LWT BPF routes end to end: installed by lwtun in namespaces of the test's own, traffic sent
//! through every hook (counted by the lwt_count programs), read back by lwtun and by
//! `ip -d route show`, replaced, deleted, batched; and the refusals, each of the right kind and
//! leaving nothing behind.

mod common;

use lwtun::netlink::route::{BatchOp, BpfEncap, Encap, ProgRef, Route, RouteBatch, RouteFilter};
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::program::LwtCounter;
use lwtun::route::{lwt_routes, program_of, Hook, LwtRoute, RTPROT_LWTUN};
use lwtun::ErrorKind;

/// `ip` with its arguments as one string, through the harness.
fn ip(ns: &NetNs, args: &str) -> String {
    common::ip(ns, &args.split_whitespace().collect::<Vec<_>>())
}

/// A line of three hosts: A (10.61.1.1, fd61:1::1) — B (forwards) — C (10.61.2.2, fd61:2::2),
/// plus 10.62.0.1 and fd62::1 on C's loopback as destinations behind C.
struct Line {
    a: NetNs,
    b: NetNs,
    c: NetNs,
}

impl Line {
    fn new(tag: &str) -> Line {
        let a = NetNs::create_unique(&format!("rt{tag}a")).unwrap();
        let b = NetNs::create_unique(&format!("rt{tag}b")).unwrap();
        let c = NetNs::create_unique(&format!("rt{tag}c")).unwrap();
        let mut nl = Netlink::open_in(&a).unwrap();
        nl.add_veth("ab", "ba", Some(&b)).unwrap();
        let mut nlb = Netlink::open_in(&b).unwrap();
        nlb.add_veth("bc", "cb", Some(&c)).unwrap();
        for (ns, cmds) in [
            (
                &a,
                vec![
                    "link set lo up",
                    "link set ab up",
                    "addr add 10.61.1.1/24 dev ab",
                    "-6 addr add fd61:1::1/64 dev ab nodad",
                    "route add 10.61.2.0/24 via 10.61.1.2",
                    "-6 route add fd61:2::/64 via fd61:1::2",
                ],
            ),
            (
                &b,
                vec![
                    "link set lo up",
                    "link set ba up",
                    "link set bc up",
                    "addr add 10.61.1.2/24 dev ba",
                    "addr add 10.61.2.1/24 dev bc",
                    "-6 addr add fd61:1::2/64 dev ba nodad",
                    "-6 addr add fd61:2::1/64 dev bc nodad",
                ],
            ),
            (
                &c,
                vec![
                    "link set lo up",
                    "link set cb up",
                    "addr add 10.61.2.2/24 dev cb",
                    "-6 addr add fd61:2::2/64 dev cb nodad",
                    "addr add 10.62.0.1/32 dev lo",
                    "-6 addr add fd62::1/128 dev lo",
                    "route add default via 10.61.2.1",
                    "-6 route add default via fd61:2::1",
                ],
            ),
        ] {
            for cmd in cmds {
                ip(ns, cmd);
            }
        }
        b.set_sysctl("net.ipv4.ip_forward", "1").unwrap();
        b.set_sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
        Line { a, b, c }
    }

    fn nl(ns: &NetNs) -> Netlink {
        Netlink::open_in(ns).unwrap()
    }

    fn ping(&self, from: &NetNs, to: &str, count: u32) -> u32 {
        let out = from
            .command("ping")
            .args(["-c", &count.to_string(), "-i", "0.2", "-W", "2", to])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| {
                let (_, rest) = l.split_once("transmitted, ")?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or(0)
    }
}

/// Gives `ns` an up device `d0` (a veth whose peer `d1` stays in `ns`; this kernel has no
/// dummy driver).
fn with_device(ns: &NetNs) {
    let mut nl = Line::nl(ns);
    nl.add_veth("d0", "d1", None).unwrap();
    for name in ["d0", "d1"] {
        let i = nl.link_by_name(name).unwrap().index;
        nl.set_link_up(i, true).unwrap();
    }
}

#[test]
fn programs_run_at_each_hook_v4_and_v6_and_show_in_iproute2() {
    require!();
    let line = Line::new("h");
    let at_a = LwtCounter::load().unwrap(); // A's out + xmit
    let at_b = LwtCounter::load().unwrap(); // B's in + xmit
    let mut nla = Line::nl(&line.a);
    let mut nlb = Line::nl(&line.b);
    let ab = nla.device("ab").unwrap();
    let bc = nlb.device("bc").unwrap();

    let mut installed = Vec::new();
    for (dst, gw_a, gw_b) in [
        ("10.62.0.0/24", "10.61.1.2", "10.61.2.2"),
        ("fd62::/64", "fd61:1::2", "fd61:2::2"),
    ] {
        installed.push(
            LwtRoute::new(dst.parse().unwrap())
                .device(&ab)
                .via(gw_a.parse().unwrap())
                .program(Hook::Out, at_a.program(Hook::Out))
                .program(Hook::Xmit, at_a.program(Hook::Xmit))
                .headroom(32)
                .install(&mut nla)
                .unwrap(),
        );
        installed.push(
            LwtRoute::new(dst.parse().unwrap())
                .device(&bc)
                .via(gw_b.parse().unwrap())
                .program(Hook::In, at_b.program(Hook::In))
                .program(Hook::Xmit, at_b.program(Hook::Xmit))
                .install(&mut nlb)
                .unwrap(),
        );
    }

    assert_eq!(
        line.ping(&line.a, "10.62.0.1", 3),
        3,
        "IPv4 ping through the LWT routes"
    );
    assert_eq!(
        line.ping(&line.a, "fd62::1", 3),
        3,
        "IPv6 ping through the LWT routes"
    );
    // Six echo requests crossed A's out and xmit hooks and B's in and xmit hooks; the
    // replies take plain routes.
    for (family, hook) in [
        (&at_a, Hook::Out),
        (&at_a, Hook::Xmit),
        (&at_b, Hook::In),
        (&at_b, Hook::Xmit),
    ] {
        let c = family.counter(hook).unwrap();
        assert_eq!(c.packets, 6, "{hook} packets");
        // 3 x (20 + 64) + 3 x (40 + 64) bytes from the network header on.
        assert_eq!(c.bytes, 3 * 84 + 3 * 104, "{hook} bytes");
    }
    assert_eq!(at_a.counter(Hook::In).unwrap().packets, 0);
    assert_eq!(at_b.counter(Hook::Out).unwrap().packets, 0);

    // lwtun reads its routes back, and the names lead back to the programs.
    let routes = lwt_routes(&mut nla).unwrap();
    assert_eq!(routes.len(), 2, "{routes:?}");
    for r in &routes {
        assert_eq!(r.protocol, RTPROT_LWTUN);
        assert_eq!(r.oif, Some(ab.index()));
        let out = program_of(r, Hook::Out).unwrap().unwrap();
        assert_eq!(out.id(), at_a.program(Hook::Out).id());
        let xmit = program_of(r, Hook::Xmit).unwrap().unwrap();
        assert_eq!(xmit.id(), at_a.program(Hook::Xmit).id());
        assert!(program_of(r, Hook::In).is_none());
    }

    // iproute2 sees the same routes.
    let shown = ip(&line.a, "-d route show 10.62.0.0/24");
    let expect = format!(
        "encap bpf out {} xmit {}",
        at_a.program(Hook::Out).route_name(),
        at_a.program(Hook::Xmit).route_name()
    );
    assert!(
        shown.contains(&expect),
        "ip shows: {shown}\nexpected: {expect}"
    );
    assert!(shown.contains("proto 76"), "{shown}");
    let shown6 = ip(&line.a, "-6 -d route show fd62::/64");
    assert!(shown6.contains(&expect), "{shown6}");
    let shown_b = ip(&line.b, "-d route show 10.62.0.0/24");
    assert!(
        shown_b.contains(&format!(
            "encap bpf in {}",
            at_b.program(Hook::In).route_name()
        )),
        "{shown_b}"
    );

    // Dropping the handles deletes the routes.
    drop(installed);
    assert!(lwt_routes(&mut nla).unwrap().is_empty());
    assert!(lwt_routes(&mut nlb).unwrap().is_empty());
    assert!(
        !ip(&line.a, "route show").contains("encap"),
        "route left behind"
    );
    drop(line.c);
}

#[test]
fn iproute2_made_route_is_decoded() {
    require!();
    let ns = NetNs::create_unique("rtip").unwrap();
    with_device(&ns);
    let dir = std::env::temp_dir().join(format!("lwtun-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let obj = dir.join("lwt_count.bpf.o");
    std::fs::write(&obj, lwtun::skel::lwt_count::OBJECT).unwrap();
    // Loading an object makes iproute2 create its bpffs folders (tc/globals, ip and xdp links);
    // remove them afterwards when they were not there before.
    let _iproute2_state = common::Iproute2Bpffs::new();
    ip(
        &ns,
        &format!(
            "route add 10.70.0.0/16 encap bpf in obj {} sec lwt_in xmit obj {} sec lwt_xmit headroom 24 dev d0 table 77 metric 9",
            obj.display(),
            obj.display()
        ),
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let mut nl = Line::nl(&ns);
    let d0 = nl.device("d0").unwrap();
    let routes = nl
        .routes(&RouteFilter {
            table: Some(77),
            ..RouteFilter::all()
        })
        .unwrap();
    assert_eq!(routes.len(), 1, "{routes:?}");
    let r = &routes[0];
    assert_eq!(r.dst, "10.70.0.0/16".parse().unwrap());
    assert_eq!((r.table, r.metric, r.oif), (77, Some(9), Some(d0.index())));
    let b = r.bpf_encap().expect("bpf encap");
    assert_eq!(b.input.as_ref().unwrap().name, "lwt_count.bpf.o:[lwt_in]");
    assert_eq!(b.xmit.as_ref().unwrap().name, "lwt_count.bpf.o:[lwt_xmit]");
    assert!(b.output.is_none());
    // iproute2's names do not lead to a program: said so, not guessed.
    let e = program_of(r, Hook::Xmit).unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    // ...and lwtun can delete what iproute2 made.
    nl.delete_route(r).unwrap();
    assert!(lwt_routes(&mut nl).unwrap().is_empty());
}

#[test]
fn replace_swaps_the_program_and_delete_removes() {
    require!();
    let ns = NetNs::create_unique("rtrep").unwrap();
    with_device(&ns);
    let mut nl = Line::nl(&ns);
    let d0 = nl.device("d0").unwrap();
    let first = LwtCounter::load().unwrap();
    let second = LwtCounter::load().unwrap();
    let mut route = LwtRoute::new("10.71.0.0/24".parse().unwrap())
        .device(&d0)
        .program(Hook::Xmit, first.program(Hook::Xmit))
        .install(&mut nl)
        .unwrap();
    let show = || ip(&ns, "-d route show 10.71.0.0/24");
    assert!(show().contains(first.program(Hook::Xmit).route_name()));

    route
        .set_program(Hook::Xmit, second.program(Hook::Xmit))
        .unwrap();
    let now = show();
    assert!(
        now.contains(second.program(Hook::Xmit).route_name()),
        "{now}"
    );
    assert!(
        !now.contains(first.program(Hook::Xmit).route_name()),
        "{now}"
    );
    assert_eq!(now.lines().count(), 1, "replaced, not added: {now}");

    // Replacing a whole route through LwtRoute::replace takes the same slot.
    let again = LwtRoute::new("10.71.0.0/24".parse().unwrap())
        .device(&d0)
        .program(Hook::Xmit, first.program(Hook::Xmit))
        .replace(&mut nl)
        .unwrap();
    assert!(show().contains(first.program(Hook::Xmit).route_name()));
    let persisted = route.persist(); // the same route: keep the first handle from deleting it
    again.remove().unwrap();
    assert!(show().trim().is_empty(), "deleted: {}", show());
    assert_eq!(
        nl.delete_route(&persisted).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn seg6local_end_bpf_route_installs_and_reads_back() {
    require!(lwtun::probe::Feature::Seg6Local);
    let ns = NetNs::create_unique("rtseg").unwrap();
    with_device(&ns);
    let mut nl = Line::nl(&ns);
    let d0 = nl.device("d0").unwrap();
    let progs = LwtCounter::load().unwrap();
    let end = progs.program(Hook::Seg6Local);
    let route = LwtRoute::new("fc00:1::1/128".parse().unwrap())
        .device(&d0)
        .program(Hook::Seg6Local, end)
        .install(&mut nl)
        .unwrap();
    let shown = ip(&ns, "-6 -d route show fc00:1::1");
    assert!(
        shown.contains(&format!(
            "seg6local action End.BPF endpoint {}",
            end.route_name()
        )),
        "{shown}"
    );
    let routes = lwt_routes(&mut nl).unwrap();
    assert_eq!(routes.len(), 1);
    assert_eq!(
        program_of(&routes[0], Hook::Seg6Local)
            .unwrap()
            .unwrap()
            .id(),
        end.id()
    );
    // An LWT program cannot be an End.BPF function, nor mixed with one.
    let e = LwtRoute::new("fc00:1::2/128".parse().unwrap())
        .device(&d0)
        .program(Hook::Seg6Local, progs.program(Hook::Xmit))
        .install(&mut nl)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    drop(route);
    assert!(lwt_routes(&mut nl).unwrap().is_empty());
}

#[test]
fn batch_of_10k_routes_installs_dumps_and_deletes() {
    require!();
    let ns = NetNs::create_unique("rtbat").unwrap();
    with_device(&ns);
    let mut nl = Line::nl(&ns);
    let d0 = nl.device("d0").unwrap();
    let progs = LwtCounter::load().unwrap();
    let xmit = progs.program(Hook::Xmit);
    let route = |i: u32| {
        let mut r = Route::new(
            format!("10.{}.{}.0/24", 100 + i / 256, i % 256)
                .parse()
                .unwrap(),
        );
        r.oif = Some(d0.index());
        r.table = 300;
        r.encap = Some(Encap::Bpf(BpfEncap {
            xmit: Some(xmit.prog_ref()),
            ..Default::default()
        }));
        r
    };
    let mut batch = RouteBatch::new();
    for i in 0..10_000 {
        batch.add(route(i));
    }
    // Two items fail: a duplicate of item 0, and a route on a device that does not exist.
    batch.add(route(0));
    let mut bad = route(10_001);
    bad.oif = Some(999_999);
    batch.add(bad);
    let report = nl.apply_batch(&batch).unwrap();
    assert_eq!(report.applied, 10_000, "{report}");
    let failed: Vec<(usize, ErrorKind)> = report
        .failures
        .iter()
        .map(|(i, e)| (*i, e.kind()))
        .collect();
    assert_eq!(
        failed,
        vec![(10_000, ErrorKind::Exists), (10_001, ErrorKind::NotFound)]
    );
    let table = RouteFilter {
        table: Some(300),
        ..RouteFilter::all()
    };
    assert_eq!(nl.routes(&table).unwrap().len(), 10_000);
    let listed = ip(&ns, "route show table 300");
    assert_eq!(listed.lines().count(), 10_000);

    // All or nothing: one bad item undoes the rest.
    let mut atomic = RouteBatch::new();
    for i in 20_000..20_100 {
        atomic.add(route(i));
    }
    atomic.add(route(5)); // exists
    let e = nl.apply_batch_atomic(&atomic).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
    assert!(e.to_string().contains("item 100"), "{e}");
    assert_eq!(
        nl.routes(&table).unwrap().len(),
        10_000,
        "the 100 applied were undone"
    );

    let mut delete = RouteBatch::new();
    for i in 0..10_000 {
        delete.delete(route(i));
    }
    let report = nl.apply_batch(&delete).unwrap();
    assert!(report.is_complete(), "{report}");
    assert!(nl.routes(&table).unwrap().is_empty());
    assert_eq!(delete.items()[0].0, BatchOp::Delete);
}

/// Routes of about 870 bytes each (three hooks, names of 250 characters): 256 of them are more
/// than a netlink socket's default send buffer, so a window of 256 requests in one `sendmsg`
/// would fail with EMSGSIZE; the pipeline closes windows by size as well as by count.
#[test]
fn batch_of_large_requests_is_split_by_size() {
    require!();
    let ns = NetNs::create_unique("rtbig").unwrap();
    with_device(&ns);
    let mut nl = Line::nl(&ns);
    let d0 = nl.device("d0").unwrap();
    let progs = LwtCounter::load().unwrap();
    let long = |hook: &str, p: &lwtun::program::LwtProgram| {
        let mut r = p.prog_ref();
        r.name = format!("{hook}-{}", "n".repeat(250 - hook.len() - 1));
        Some(r)
    };
    let route = |i: u32| {
        let mut r = Route::new(
            format!("10.{}.{}.0/24", 50 + i / 256, i % 256)
                .parse()
                .unwrap(),
        );
        r.oif = Some(d0.index());
        r.table = 301;
        r.encap = Some(Encap::Bpf(BpfEncap {
            input: long("in", progs.program(Hook::In)),
            output: long("out", progs.program(Hook::Out)),
            xmit: long("xmit", progs.program(Hook::Xmit)),
            headroom: None,
        }));
        r
    };
    let one = route(0).to_request(BatchOp::Add, 1).unwrap().len();
    assert!(
        one * 256 > 212_992,
        "{one} bytes a request: not large enough to need a split"
    );
    let mut batch = RouteBatch::new();
    for i in 0..600 {
        batch.add(route(i));
    }
    batch.add(route(7)); // a duplicate: its failure is still reported by index
    let report = nl.apply_batch(&batch).unwrap();
    assert_eq!(report.applied, 600, "{report}");
    assert_eq!(report.failures.len(), 1, "{report}");
    assert_eq!(report.failures[0].0, 600);
    assert_eq!(report.failures[0].1.kind(), ErrorKind::Exists);
    // The failure names the device (not `dev#N`) and the ip command that shows the route.
    let failure = report.failures[0].1.to_string();
    assert!(
        failure.contains(" dev d0 ") && !failure.contains("dev#"),
        "{failure}"
    );
    assert!(
        failure.contains("`ip route show 10.50.7.0/24 table 301`"),
        "{failure}"
    );
    let table = RouteFilter {
        table: Some(301),
        ..RouteFilter::all()
    };
    let routes = nl.routes(&table).unwrap();
    assert_eq!(routes.len(), 600);
    let names = routes[0].bpf_encap().unwrap();
    assert_eq!(names.xmit.as_ref().unwrap().name.len(), 250);
    let mut delete = RouteBatch::new();
    for i in 0..600 {
        delete.delete(route(i));
    }
    let report = nl.apply_batch(&delete).unwrap();
    assert!(report.is_complete(), "{report}");
    assert!(nl.routes(&table).unwrap().is_empty());
}

#[test]
fn refusals_have_the_right_kind_and_leave_nothing() {
    require!();
    let ns = NetNs::create_unique("rtneg").unwrap();
    with_device(&ns);
    ip(&ns, "addr add 10.72.0.1/24 dev d0");
    let mut nl = Line::nl(&ns);
    let d0 = nl.device("d0").unwrap();
    let progs = LwtCounter::load().unwrap();
    let xmit = progs.program(Hook::Xmit);
    let before = nl.routes(&RouteFilter::all()).unwrap();

    let lwt = || LwtRoute::new("10.73.0.0/24".parse().unwrap()).device(&d0);
    let raw = || {
        let mut r = Route::new("10.73.0.0/24".parse().unwrap());
        r.oif = Some(d0.index());
        r.encap = Some(Encap::Bpf(BpfEncap {
            xmit: Some(xmit.prog_ref()),
            ..Default::default()
        }));
        r
    };
    let mut cases: Vec<(&str, ErrorKind, lwtun::Error)> = Vec::new();

    // Headroom above the kernel's 256.
    let e = lwt()
        .program(Hook::Xmit, xmit)
        .headroom(300)
        .install(&mut nl)
        .unwrap_err();
    cases.push(("headroom 300", ErrorKind::InvalidInput, e));
    // The kernel refuses it too, when asked directly (lwtun's check bypassed by hand).
    let mut r = raw();
    if let Some(Encap::Bpf(b)) = &mut r.encap {
        b.headroom = Some(256);
    }
    nl.add_route(&r).unwrap(); // 256 is the limit itself: accepted
    nl.delete_route(&r).unwrap();

    // A program of the wrong type for the hook: refused by lwtun...
    let e = lwt()
        .program(Hook::Xmit, progs.program(Hook::In))
        .install(&mut nl)
        .unwrap_err();
    cases.push(("lwt_in program at xmit", ErrorKind::InvalidInput, e));
    // ...and by the kernel, when the check is bypassed.
    let mut r = raw();
    if let Some(Encap::Bpf(b)) = &mut r.encap {
        b.xmit = Some(progs.program(Hook::In).prog_ref());
    }
    let e = nl.add_route(&r).unwrap_err();
    cases.push(("kernel: lwt_in program at xmit", ErrorKind::InvalidInput, e));

    // A device that is gone since it was looked up.
    nl.add_veth("gone0", "gone1", None).unwrap();
    let gone = nl.device("gone0").unwrap();
    nl.delete_link(gone.index()).unwrap();
    let e = LwtRoute::new("10.73.0.0/24".parse().unwrap())
        .device(&gone)
        .program(Hook::Xmit, xmit)
        .install(&mut nl)
        .unwrap_err();
    cases.push(("deleted device", ErrorKind::NotFound, e));

    // A device of another namespace (the host's loopback has index 1 here too): refused
    // before anything is sent, instead of routing through this namespace's device 1.
    let host_lo = lwtun::netns::NetNs::current()
        .unwrap()
        .device("lo")
        .unwrap();
    let e = LwtRoute::new("10.73.0.0/24".parse().unwrap())
        .device(&host_lo)
        .program(Hook::Xmit, xmit)
        .install(&mut nl)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("not in this netlink socket's network namespace"),
        "{e}"
    );
    cases.push(("device of another namespace", ErrorKind::InvalidInput, e));

    // Family mismatch: an IPv6 gateway for an IPv4 route.
    let e = lwt()
        .via("fd00::1".parse().unwrap())
        .program(Hook::Xmit, xmit)
        .install(&mut nl)
        .unwrap_err();
    cases.push(("IPv6 gateway on IPv4 route", ErrorKind::InvalidInput, e));

    // Missing program name.
    let mut r = raw();
    if let Some(Encap::Bpf(b)) = &mut r.encap {
        b.xmit = Some(ProgRef::new(b.xmit.as_ref().unwrap().fd.unwrap(), ""));
    }
    let e = nl.add_route(&r).unwrap_err();
    cases.push(("missing program name", ErrorKind::InvalidInput, e));

    // No program at all.
    let e = lwt().install(&mut nl).unwrap_err();
    cases.push(("no program", ErrorKind::InvalidInput, e));

    // The kernel's own words arrive with its errors (extended ACK).
    let e = lwt()
        .via("10.99.99.99".parse().unwrap())
        .program(Hook::Xmit, xmit)
        .install(&mut nl)
        .unwrap_err();
    assert_eq!(e.ext_ack(), Some("Nexthop has invalid gateway"), "{e}");
    assert!(
        e.to_string()
            .contains("kernel: \"Nexthop has invalid gateway\""),
        "{e}"
    );
    cases.push(("unreachable gateway", ErrorKind::NotFound, e));

    // Duplicate add.
    let kept = lwt().program(Hook::Xmit, xmit).install(&mut nl).unwrap();
    let e = lwt()
        .program(Hook::Xmit, xmit)
        .install(&mut nl)
        .unwrap_err();
    cases.push(("duplicate add", ErrorKind::Exists, e));

    for (what, kind, e) in &cases {
        assert_eq!(e.kind(), *kind, "{what}: {e}");
        assert!(!e.to_string().is_empty());
        eprintln!("{what}: {e}");
    }
    drop(kept);
    let after = nl.routes(&RouteFilter::all()).unwrap();
    assert_eq!(before, after, "no state left behind");
}
