//! An SRv6 path across namespaces, end to end:
//!
//! ```text
//!  host A ── ingress ─────────────── transit ──────────────── egress ── host B
//!  ns 0      ns 1                    ns 2                     ns 3      ns 4
//!  fd77:0::1 Seg6Policies: kernel   End.BPF fc00:2::100      decap     fd77:3::2
//!            seg6 encap (typed):     Seg6EndX: tag 42,        SID (BPF or kernel End.DT6)
//!            segs [T, E(, S)]        nh6 fd77:2::2            into table 100
//! ```
//!
//! Ping and a TCP stream from A to B go through; tcpdump on the ingress→transit and
//! transit→egress links shows the SRH with segments left going down hop by hop, the list
//! unchanged and the tag written at the transit. The return path is plain IPv6 routing.
//!
//! Two egress variants: lwtun's End.DT6-style BPF decap (`Seg6EndDt6`: since End.BPF never sees
//! segments left 0, its SID is the second-to-last segment and the last, S, names the table), and
//! the kernel's own End.DT6 (a last-segment SID, 2-segment list) for interop.

mod common;

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use ipnetwork::IpNetwork;
use lwtun::netlink::route::{Encap, Route, Seg6Encap, Seg6Local, Seg6Mode};
use lwtun::netns::NetNs;
use lwtun::probe::Feature;
use lwtun::seg6::{CrossConnect, Seg6EndDt6, Seg6EndX, Seg6Policies};

use common::{Capture, Line};

const TAG: u16 = 42;
const TABLE: u32 = 100;

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Egress {
    /// lwtun's Seg6EndDt6 at fc00:3::d, list [T, fc00:3::d, fc00:3::100].
    Bpf,
    /// The kernel's End.DT6 at fc00:3::6, list [T, fc00:3::6].
    Kernel,
}

/// One packet of a `tcpdump -xx` capture: the summary line and the frame's bytes.
#[derive(Debug)]
struct Frame {
    summary: String,
    bytes: Vec<u8>,
}

fn frames(lines: &[String]) -> Vec<Frame> {
    let mut out: Vec<Frame> = Vec::new();
    for l in lines {
        let t = l.trim_start();
        if let Some(hex) = t.strip_prefix("0x") {
            let Some(f) = out.last_mut() else { continue };
            let data = hex.split_once(':').map(|(_, d)| d).unwrap_or("");
            for group in data.split_whitespace() {
                let mut g = group;
                while g.len() >= 2 {
                    f.bytes.push(u8::from_str_radix(&g[..2], 16).unwrap());
                    g = &g[2..];
                }
            }
        } else {
            out.push(Frame {
                summary: l.clone(),
                bytes: Vec::new(),
            });
        }
    }
    out
}

/// The SRH fields of an Ethernet + IPv6 + SRH frame.
#[derive(Debug, PartialEq, Eq)]
struct Srh {
    dst: Ipv6Addr,
    segments_left: u8,
    tag: u16,
    /// The list in path order (the SRH stores it last segment first).
    path: Vec<Ipv6Addr>,
    inner_nexthdr: u8,
}

fn srh_of(f: &Frame) -> Srh {
    let b = &f.bytes;
    assert!(b.len() >= 14 + 40 + 8, "short frame: {f:?}");
    assert_eq!(&b[12..14], &[0x86, 0xdd], "not IPv6: {}", f.summary);
    let ip = &b[14..];
    assert_eq!(ip[6], 43, "no routing header: {}", f.summary);
    let srh = &ip[40..];
    assert_eq!(srh[2], 4, "routing header type {} is not an SRH", srh[2]);
    let n = srh[4] as usize + 1;
    let mut path: Vec<Ipv6Addr> = (0..n)
        .map(|i| {
            let s: [u8; 16] = srh[8 + 16 * i..24 + 16 * i].try_into().unwrap();
            Ipv6Addr::from(s)
        })
        .collect();
    path.reverse();
    Srh {
        dst: Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap()),
        segments_left: srh[3],
        tag: u16::from_be_bytes([srh[6], srh[7]]),
        path,
        inner_nexthdr: srh[0],
    }
}

fn set_mtu(line: &Line, i: usize, dev: &str, mtu: u32) {
    common::ip(
        line.ns(i),
        &["link", "set", "dev", dev, "mtu", &mtu.to_string()],
    );
}

/// Ingress: the transit's SIDs (fc00:2::/64) are reached through the transit.
fn route_sids_through_transit(ingress: &NetNs) {
    common::ip(
        ingress,
        &[
            "-6",
            "route",
            "add",
            "fc00:2::/64",
            "via",
            "fd77:1::2",
            "dev",
            "to2",
        ],
    );
}

/// Egress: table 100 (where End.DT6 looks up the inner packet) reaches host B's segment.
fn egress_table_to_host_b(eg: &NetNs) {
    common::ip(
        eg,
        &[
            "-6",
            "route",
            "add",
            "fd77:3::/64",
            "dev",
            "to4",
            "table",
            "100",
        ],
    );
}

/// The kernel's own End.DT6 at SID fc00:3::6 on `dev`, decapsulating into table 100.
fn kernel_end_dt6(dev: &lwtun::device::Device) {
    let mut r = Route::new("fc00:3::6/128".parse().unwrap());
    r.oif = Some(dev.index());
    r.encap = Some(Encap::Seg6Local(Seg6Local::EndDt6 { table: TABLE }));
    dev.netlink().unwrap().add_route(&r).unwrap();
}

fn srv6_path(egress: Egress) {
    let line = common::line(5);
    let (ingress, transit, eg) = (line.ns(1), line.ns(2), line.ns(3));
    let host_b: Ipv6Addr = line.v6(4); // fd77:3::2
    let t = a("fc00:2::100");
    let (e, path) = match egress {
        Egress::Bpf => (a("fc00:3::d"), vec![t, a("fc00:3::d"), a("fc00:3::100")]),
        Egress::Kernel => (a("fc00:3::6"), vec![t, a("fc00:3::6")]),
    };
    let n = path.len() as u8;
    // The SRv6 links carry 40 + 8 + 16 n more bytes than host A's 1500-byte packets.
    for (i, dev) in [(1, "to2"), (2, "to1"), (2, "to3"), (3, "to2")] {
        set_mtu(&line, i, dev, 1600);
    }
    for (i, devs) in [(2, ["to1", "to3"]), (3, ["to2", "to4"])] {
        let ns = line.ns(i);
        ns.set_sysctl("net.ipv6.conf.all.seg6_enabled", "1")
            .unwrap();
        for d in devs {
            ns.set_sysctl(&format!("net.ipv6.conf.{d}.seg6_enabled"), "1")
                .unwrap();
        }
    }
    common::tx_checksum_off(line.ns(0), "to1");

    // Ingress: the transit's SIDs are reached through it; host B's segment is pushed an SRH.
    route_sids_through_transit(ingress);
    let to_transit = line.device(1, "to2");
    let host_b_net: IpNetwork = line.segments[3].v6_net.parse().unwrap();
    common::ip(ingress, &["-6", "route", "del", "fd77:3::/64"]);
    let mut policies = Seg6Policies::new(&to_transit, Seg6Mode::Encap).unwrap();
    // First a list that goes nowhere, then the real one: set replaces.
    policies
        .set(host_b_net, vec![a("fc00:9::1"), a("fc00:9::2")])
        .unwrap();
    policies.set(host_b_net, path.clone()).unwrap();
    assert_eq!(policies.policies(), vec![(host_b_net, path.clone())]);
    let shown = common::ip(ingress, &["-6", "route", "show", "fd77:3::/64"]);
    let segs: Vec<String> = path.iter().map(Ipv6Addr::to_string).collect();
    assert!(
        shown.contains(&format!(
            "encap seg6 mode encap segs {} [ {} ]",
            path.len(),
            segs.join(" ")
        )),
        "{shown}"
    );

    // Transit: End.BPF, tag + End.X to the egress's link address.
    let mut end_x = Seg6EndX::load().unwrap();
    end_x
        .set_next_hop(
            "fc00:3::/64".parse().unwrap(),
            CrossConnect::to(line.v6_towards(3, 2)).tag(TAG),
        )
        .unwrap();
    let to_egress = line.device(2, "to3");
    let sid_route = end_x
        .install_route("fc00:2::100/128".parse().unwrap(), &to_egress)
        .unwrap();
    // iproute2 shows lwtun's End.BPF route as it prints its own.
    let shown = common::ip(transit, &["-6", "route", "show", "fc00:2::100"]);
    let expect = format!(
        "fc00:2::100 encap seg6local action End.BPF endpoint {} dev to3 proto 76 metric 1024 pref medium",
        end_x.program().route_name()
    );
    assert_eq!(
        shown.split_whitespace().collect::<Vec<_>>().join(" "),
        expect,
        "ip -6 route shows: {shown}"
    );

    // Egress: table 100 reaches host B; the decap SID.
    egress_table_to_host_b(eg);
    let to_transit_at_egress = line.device(3, "to2");
    let mut dt6 = None;
    let _decap_route = match egress {
        Egress::Bpf => {
            let mut f = Seg6EndDt6::load().unwrap();
            f.set_table("fc00:3::100/128".parse().unwrap(), TABLE)
                .unwrap();
            let r = f
                .install_route("fc00:3::d/128".parse().unwrap(), &to_transit_at_egress)
                .unwrap();
            dt6 = Some(f);
            Some(r)
        }
        Egress::Kernel => {
            kernel_end_dt6(&to_transit_at_egress);
            None
        }
    };

    // Ping, captured on both SRv6 links.
    let pings = 4;
    let extra = ["-xx", "-s", "256"];
    let cap1 = Capture::start_with(
        transit,
        "to1",
        &format!("ip6 and dst host {t}"),
        pings,
        &extra,
    );
    let cap2 = Capture::start_with(eg, "to2", &format!("ip6 and dst host {e}"), pings, &extra);
    let p = common::ping(line.ns(0), IpAddr::V6(host_b), pings);
    assert_eq!(p.received, pings, "ping over SRv6: {}", p.output);
    let f1 = frames(&cap1.finish(Duration::from_secs(3)));
    let f2 = frames(&cap2.finish(Duration::from_secs(3)));
    assert_eq!(f1.len(), pings as usize, "ingress→transit: {f1:?}");
    assert_eq!(f2.len(), pings as usize, "transit→egress: {f2:?}");
    for f in &f1 {
        let s = srh_of(f);
        assert_eq!(
            s,
            Srh {
                dst: t,
                segments_left: n - 1,
                tag: 0,
                path: path.clone(),
                inner_nexthdr: 41
            },
            "ingress→transit: {}",
            f.summary
        );
    }
    for f in &f2 {
        let s = srh_of(f);
        assert_eq!(
            s,
            Srh {
                dst: e,
                segments_left: n - 2,
                tag: TAG,
                path: path.clone(),
                inner_nexthdr: 41
            },
            "transit→egress: {}",
            f.summary
        );
    }
    // tcpdump's own decoding agrees on segments left.
    assert!(
        f1[0].summary.contains(&format!("segleft={}", n - 1)),
        "{}",
        f1[0].summary
    );
    assert!(
        f2[0].summary.contains(&format!("segleft={}", n - 2)),
        "{}",
        f2[0].summary
    );

    // A TCP stream from host A to host B.
    let bytes = 2_000_000;
    let tcp = common::tcp_stream(line.ns(4), line.ns(0), IpAddr::V6(host_b), bytes);
    assert!(tcp.complete(), "TCP over SRv6: {tcp:?}");

    let ev = end_x.events().unwrap();
    assert!(
        ev.done.packets >= u64::from(pings) + 100,
        "End.X counted {ev:?}"
    );
    assert_eq!(ev.dropped(), 0, "{ev:?}");
    if let Some(dt6) = &dt6 {
        let ev = dt6.events().unwrap();
        assert!(ev.done.packets >= u64::from(pings) + 100, "End.DT6 {ev:?}");
        assert_eq!(ev.dropped(), 0, "{ev:?}");
    }
    drop(sid_route);
    assert!(common::ip(transit, &["-6", "route", "show", "fc00:2::100"])
        .trim()
        .is_empty());
    drop(policies);
    assert!(common::ip(ingress, &["-6", "route", "show", "fd77:3::/64"])
        .trim()
        .is_empty());
}

#[test]
fn srv6_path_with_bpf_end_x_and_bpf_end_dt6() {
    require!(Feature::Seg6Local);
    srv6_path(Egress::Bpf);
}

#[test]
fn srv6_path_with_bpf_end_x_and_kernel_end_dt6() {
    require!(Feature::Seg6Local);
    srv6_path(Egress::Kernel);
}

/// The End.BPF function's own drops on the real path, by reason: no rule (miss policy drop),
/// and the kernel refusing the action (End.X to a next hop without a route); then the fixed rule
/// delivers.
#[test]
fn end_x_drops_on_the_path_are_counted_by_reason() {
    require!(Feature::Seg6Local);
    let line = common::line(5);
    let (ingress, eg) = (line.ns(1), line.ns(3));
    let host_b = IpAddr::V6(line.v6(4));
    let path = vec![a("fc00:2::100"), a("fc00:3::6")];
    route_sids_through_transit(ingress);
    let to_transit = line.device(1, "to2");
    let mut encap = Route::new("fd77:3::/64".parse().unwrap());
    encap.oif = Some(to_transit.index());
    encap.encap = Some(Encap::Seg6(Seg6Encap {
        mode: Seg6Mode::Encap,
        segments: path,
    }));
    to_transit.netlink().unwrap().replace_route(&encap).unwrap();
    egress_table_to_host_b(eg);
    let at_egress = line.device(3, "to2");
    kernel_end_dt6(&at_egress);

    let mut end_x = Seg6EndX::load().unwrap();
    end_x
        .set_next_hop(
            "fc00:4::/64".parse().unwrap(),
            CrossConnect::to(line.v6_towards(3, 2)),
        )
        .unwrap();
    let _sid = end_x
        .install_route("fc00:2::100/128".parse().unwrap(), &line.device(2, "to3"))
        .unwrap();
    // No rule for the active segment fc00:3::6: dropped by the miss policy.
    let p = common::ping(line.ns(0), host_b, 2);
    assert_eq!(p.received, 0, "{}", p.output);
    let ev = end_x.events().unwrap();
    assert_eq!(ev.missed_dropped.packets, 2, "{ev:?}");
    // A next hop the transit has no route to: the kernel refuses End.X.
    end_x
        .set_next_hop(
            "fc00:3::/64".parse().unwrap(),
            CrossConnect::to(a("fd99::1")),
        )
        .unwrap();
    let p = common::ping(line.ns(0), host_b, 2);
    assert_eq!(p.received, 0, "{}", p.output);
    let ev = end_x.events().unwrap();
    assert_eq!(ev.helper_failed.packets, 2, "{ev:?}");
    // The right next hop delivers.
    end_x
        .set_next_hop(
            "fc00:3::/64".parse().unwrap(),
            CrossConnect::to(line.v6_towards(3, 2)),
        )
        .unwrap();
    let p = common::ping(line.ns(0), host_b, 2);
    assert_eq!(p.received, 2, "{}", p.output);
    let ev = end_x.events().unwrap();
    assert_eq!(ev.done.packets, 2, "{ev:?}");
    assert_eq!(ev.dropped(), 4, "{ev:?}");
}

/// The kernel fact `Seg6EndDt6`'s design rests on: a packet arriving at an End.BPF SID with
/// segments left 0 is dropped before the program runs, so a BPF decap SID cannot be the last
/// segment (the 2-segment list [T, E] does not reach host B, and the function sees nothing).
#[test]
fn end_bpf_never_sees_segments_left_zero() {
    require!(Feature::Seg6Local);
    let line = common::line(5);
    let (ingress, eg) = (line.ns(1), line.ns(3));
    route_sids_through_transit(ingress);
    common::ip(ingress, &["-6", "route", "del", "fd77:3::/64"]);
    let mut policies = Seg6Policies::new(&line.device(1, "to2"), Seg6Mode::Encap).unwrap();
    policies
        .set(
            "fd77:3::/64".parse().unwrap(),
            vec![a("fc00:2::100"), a("fc00:3::d")],
        )
        .unwrap();
    let mut end_x = Seg6EndX::load().unwrap();
    end_x
        .set_next_hop(
            "fc00:3::/64".parse().unwrap(),
            CrossConnect::to(line.v6_towards(3, 2)),
        )
        .unwrap();
    let _sid = end_x
        .install_route("fc00:2::100/128".parse().unwrap(), &line.device(2, "to3"))
        .unwrap();
    egress_table_to_host_b(eg);
    let mut dt6 = Seg6EndDt6::builder()
        .miss_policy(lwtun::seg6::MissPolicy::Pass)
        .load()
        .unwrap();
    // A rule for every active segment: whatever the program saw, it would decap.
    dt6.set_table("::/0".parse().unwrap(), TABLE).unwrap();
    let _decap = dt6
        .install_route("fc00:3::d/128".parse().unwrap(), &line.device(3, "to2"))
        .unwrap();
    let p = common::ping(line.ns(0), IpAddr::V6(line.v6(4)), 2);
    assert_eq!(p.received, 0, "{}", p.output);
    assert_eq!(end_x.events().unwrap().done.packets, 2, "the transit ran");
    assert_eq!(
        dt6.events().unwrap(),
        lwtun::seg6::Seg6Events::default(),
        "the End.BPF program at the last segment never ran"
    );
}
