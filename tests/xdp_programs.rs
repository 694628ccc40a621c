//! BPF_PROG_TEST_RUN unit tests of lwtun's XDP programs: verdicts, rewritten bytes and checksums,
//! counters, and malformed frames. No interfaces are touched: test_run runs on a copy of the frame.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use lwtun::device::Device;
use lwtun::xdp::{
    DevMap, DevMapKind, IcmpEcho, RedirectRule, Stage, XdpAction, XdpAttachment, XdpPass,
    XdpRedirect, XdpRouter, ROUTE_CACHE_DEFAULT_AGE,
};

const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const R_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const V4_A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const V4_ECHO: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const V6_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const V6_ECHO: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

// ---- frame building -------------------------------------------------------------------------

use common::packets::{eth, fold, icmp, icmp6, ipv4, ipv6, sum16, udp, v6_pseudo, vlan};

fn ping4(dst: Ipv4Addr) -> Vec<u8> {
    eth(
        R_MAC,
        A_MAC,
        0x0800,
        &ipv4(V4_A, dst, 1, 63, 0, &icmp(8, b"lwtun ping payload")),
    )
}

fn ping6(dst: Ipv6Addr) -> Vec<u8> {
    eth(
        R_MAC,
        A_MAC,
        0x86dd,
        &ipv6(
            V6_A,
            dst,
            58,
            63,
            &icmp6(V6_A, dst, 128, b"lwtun ping6 payload"),
        ),
    )
}

// ---- echo -----------------------------------------------------------------------------------

fn echo() -> IcmpEcho {
    let echo = IcmpEcho::load().expect("load xdp_echo");
    echo.add_address(IpAddr::V4(V4_ECHO)).unwrap();
    echo.add_address(IpAddr::V6(V6_ECHO)).unwrap();
    echo
}

#[test]
fn echo_answers_ipv4_ping_with_valid_checksums() {
    require!();
    let echo = echo();
    let frame = ping4(V4_ECHO);
    let out = echo.program().test_run(&frame).unwrap();
    assert_eq!(out.verdict, XdpAction::Tx);
    let d = &out.packet;
    assert_eq!(d.len(), frame.len());
    assert_eq!(&d[0..6], &A_MAC, "destination MAC is the requester's");
    assert_eq!(&d[6..12], &R_MAC);
    let ip = &d[14..34];
    assert_eq!(&ip[12..16], &V4_ECHO.octets(), "source is the echo address");
    assert_eq!(&ip[16..20], &V4_A.octets());
    assert_eq!(ip[8], 64, "TTL reset to 64");
    assert_eq!(
        fold(sum16(ip, 0)),
        0,
        "IPv4 header checksum valid after the TTL change"
    );
    let icmp = &d[34..];
    assert_eq!(icmp[0], 0, "echo reply");
    assert_eq!(
        fold(sum16(icmp, 0)),
        0,
        "ICMP checksum valid after the type change"
    );
    assert_eq!(&icmp[4..], &frame[38..], "id, sequence and payload kept");

    let s = echo.stats().snapshot(Stage::Ingress).unwrap();
    assert_eq!(s.get(XdpAction::Tx).packets, 1);
    assert_eq!(s.get(XdpAction::Tx).bytes, frame.len() as u64);
}

#[test]
fn echo_answers_ipv6_ping_with_valid_checksum() {
    require!();
    let echo = echo();
    let frame = ping6(V6_ECHO);
    let out = echo.program().test_run(&frame).unwrap();
    assert_eq!(out.verdict, XdpAction::Tx);
    let d = &out.packet;
    assert_eq!(&d[0..6], &A_MAC);
    let ip6 = &d[14..54];
    assert_eq!(&ip6[8..24], &V6_ECHO.octets());
    assert_eq!(&ip6[24..40], &V6_A.octets());
    assert_eq!(ip6[7], 64);
    let icmp = &d[54..];
    assert_eq!(icmp[0], 129, "echo reply");
    assert_eq!(
        fold(sum16(icmp, v6_pseudo(V6_ECHO, V6_A, icmp.len(), 58))),
        0,
        "ICMPv6 checksum valid"
    );
}

#[test]
fn echo_keeps_vlan_tag_and_address_set_is_typed() {
    require!();
    let echo = echo();
    let inner = ipv4(V4_A, V4_ECHO, 1, 64, 0, &icmp(8, b"vlan"));
    let frame = eth(R_MAC, A_MAC, 0x8100, &vlan(42, 0x0800, &inner));
    let out = echo.program().test_run(&frame).unwrap();
    assert_eq!(out.verdict, XdpAction::Tx);
    assert_eq!(&out.packet[12..16], &[0x81, 0x00, 0, 42], "VLAN tag kept");
    assert_eq!(fold(sum16(&out.packet[38..], 0)), 0);

    let mut addrs = echo.addresses();
    addrs.sort();
    assert_eq!(addrs, vec![IpAddr::V4(V4_ECHO), IpAddr::V6(V6_ECHO)]);
    assert!(echo.remove_address(IpAddr::V4(V4_ECHO)).unwrap());
    assert!(!echo.remove_address(IpAddr::V4(V4_ECHO)).unwrap());
    assert_eq!(
        echo.program().test_run(&ping4(V4_ECHO)).unwrap().verdict,
        XdpAction::Pass
    );
    let err = echo.add_address("224.0.0.1".parse().unwrap()).unwrap_err();
    assert_eq!(err.kind(), lwtun::ErrorKind::InvalidInput);
}

/// Malformed and foreign frames: every one gets the documented verdict, and none is changed.
#[test]
fn malformed_frames_get_the_right_action() {
    require!();
    let echo = echo();
    let router = XdpRouter::load().unwrap();
    let fwd = XdpRedirect::load().unwrap();
    let pass = XdpAction::Pass;

    let good4 = ipv4(V4_A, V4_ECHO, 1, 64, 0, &icmp(8, b"x"));
    let mut ihl4 = good4.clone();
    ihl4[0] = 0x44;
    let mut ihl15 = good4.clone();
    ihl15[0] = 0x4f;
    let mut short_totlen = good4.clone();
    short_totlen[2..4].copy_from_slice(&16u16.to_be_bytes());
    let mut ipver6_in_v4 = good4.clone();
    ipver6_in_v4[0] = 0x65;
    let mut code1 = icmp(8, b"x");
    code1[1] = 1;
    let hop_by_hop = ipv6(V6_A, V6_ECHO, 0, 64, &[58, 0, 1, 4, 0, 0, 0, 0]);

    let cases: Vec<(&str, &lwtun::xdp::XdpProgram, Vec<u8>, XdpAction)> = vec![
        (
            "echo: Ethernet header only",
            echo.program(),
            eth(R_MAC, A_MAC, 0x0800, &[]),
            pass,
        ),
        (
            "echo: IPv4 header cut at 10 bytes",
            echo.program(),
            eth(R_MAC, A_MAC, 0x0800, &good4[..10]),
            pass,
        ),
        (
            "echo: IPv4 IHL 4",
            echo.program(),
            eth(R_MAC, A_MAC, 0x0800, &ihl4),
            pass,
        ),
        (
            "echo: IPv4 IHL 15 beyond the frame",
            echo.program(),
            eth(R_MAC, A_MAC, 0x0800, &ihl15),
            pass,
        ),
        (
            "echo: IPv4 total length below the header",
            echo.program(),
            eth(R_MAC, A_MAC, 0x0800, &short_totlen),
            pass,
        ),
        (
            "echo: version 6 under EtherType IPv4",
            echo.program(),
            eth(R_MAC, A_MAC, 0x0800, &ipver6_in_v4),
            pass,
        ),
        (
            "echo: ICMP header cut at 4 bytes",
            echo.program(),
            eth(R_MAC, A_MAC, 0x0800, &good4[..24]),
            pass,
        ),
        (
            "echo: fragment (MF set)",
            echo.program(),
            eth(
                R_MAC,
                A_MAC,
                0x0800,
                &ipv4(V4_A, V4_ECHO, 1, 64, 0x2000, &icmp(8, b"x")),
            ),
            pass,
        ),
        (
            "echo: non-first fragment",
            echo.program(),
            eth(
                R_MAC,
                A_MAC,
                0x0800,
                &ipv4(V4_A, V4_ECHO, 1, 64, 0x0010, &icmp(8, b"x")),
            ),
            pass,
        ),
        (
            "echo: echo to a foreign address",
            echo.program(),
            ping4(Ipv4Addr::new(10, 1, 0, 99)),
            pass,
        ),
        (
            "echo: echo reply, not request",
            echo.program(),
            eth(
                R_MAC,
                A_MAC,
                0x0800,
                &ipv4(V4_A, V4_ECHO, 1, 64, 0, &icmp(0, b"x")),
            ),
            pass,
        ),
        (
            "echo: echo request with code 1",
            echo.program(),
            eth(R_MAC, A_MAC, 0x0800, &ipv4(V4_A, V4_ECHO, 1, 64, 0, &code1)),
            pass,
        ),
        (
            "echo: UDP to the echo address",
            echo.program(),
            eth(
                R_MAC,
                A_MAC,
                0x0800,
                &ipv4(V4_A, V4_ECHO, 17, 64, 0, &[0; 16]),
            ),
            pass,
        ),
        (
            "echo: IPv6 header cut at 30 bytes",
            echo.program(),
            eth(R_MAC, A_MAC, 0x86dd, &ping6(V6_ECHO)[14..44]),
            pass,
        ),
        (
            "echo: IPv6 hop-by-hop before ICMPv6",
            echo.program(),
            eth(R_MAC, A_MAC, 0x86dd, &hop_by_hop),
            pass,
        ),
        (
            "echo: ICMPv6 neighbour solicitation",
            echo.program(),
            eth(
                R_MAC,
                A_MAC,
                0x86dd,
                &ipv6(V6_A, V6_ECHO, 58, 255, &icmp6(V6_A, V6_ECHO, 135, &[0; 16])),
            ),
            pass,
        ),
        (
            "echo: three VLAN tags",
            echo.program(),
            eth(
                R_MAC,
                A_MAC,
                0x88a8,
                &vlan(1, 0x8100, &vlan(2, 0x8100, &vlan(3, 0x0800, &good4))),
            ),
            pass,
        ),
        (
            "echo: VLAN tag cut short",
            echo.program(),
            eth(R_MAC, A_MAC, 0x8100, &[0, 1]),
            pass,
        ),
        (
            "echo: ARP",
            echo.program(),
            eth([0xff; 6], A_MAC, 0x0806, &[0; 28]),
            pass,
        ),
        (
            "router: IPv4 TTL 1",
            router.program(),
            eth(
                R_MAC,
                A_MAC,
                0x0800,
                &ipv4(V4_A, V4_ECHO, 1, 1, 0, &icmp(8, b"x")),
            ),
            pass,
        ),
        (
            "router: IPv4 TTL 0",
            router.program(),
            eth(
                R_MAC,
                A_MAC,
                0x0800,
                &ipv4(V4_A, V4_ECHO, 1, 0, 0, &icmp(8, b"x")),
            ),
            pass,
        ),
        (
            "router: IPv6 hop limit 1",
            router.program(),
            eth(
                R_MAC,
                A_MAC,
                0x86dd,
                &ipv6(V6_A, V6_ECHO, 58, 1, &icmp6(V6_A, V6_ECHO, 128, b"x")),
            ),
            pass,
        ),
        (
            "router: IPv4 IHL 4",
            router.program(),
            eth(R_MAC, A_MAC, 0x0800, &ihl4),
            pass,
        ),
        (
            "router: VLAN-tagged IPv4",
            router.program(),
            eth(R_MAC, A_MAC, 0x8100, &vlan(5, 0x0800, &good4)),
            pass,
        ),
        (
            "router: ARP",
            router.program(),
            eth([0xff; 6], A_MAC, 0x0806, &[0; 28]),
            pass,
        ),
        (
            "redirect: no rule for the destination MAC",
            fwd.program(),
            eth(B_MAC, A_MAC, 0x0800, &good4),
            pass,
        ),
    ];
    assert!(cases.len() >= 15);
    for (what, prog, frame, want) in &cases {
        let out = prog
            .test_run(frame)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(out.verdict, *want, "{what}");
        assert_eq!(&out.packet, frame, "{what}: frame must be left untouched");
    }
    // Every echo case was counted as a pass; the router counted why it did not look up.
    let s = echo.stats().snapshot(Stage::Ingress).unwrap();
    let echo_cases = cases.iter().filter(|c| c.0.starts_with("echo")).count() as u64;
    assert_eq!(s.get(XdpAction::Pass).packets, echo_cases);
    assert_eq!(s.get(XdpAction::Tx).packets, 0);
    let fib = router.fib_stats().unwrap();
    assert_eq!(fib.ttl_expired, 3);
    assert_eq!(fib.not_ip, 3);
}

#[test]
fn too_short_frames_are_refused_before_the_kernel() {
    require!();
    let pass = XdpPass::load().unwrap();
    let err = pass.program().test_run(&[0u8; 10]).unwrap_err();
    assert_eq!(err.kind(), lwtun::ErrorKind::InvalidInput);
}

/// A reader that did not load the program (the `lwtun xdp stats` command) finds its counters
/// by program id, and tells lwtun's XDP programs from others by them.
#[test]
fn counters_found_by_program_id() {
    require!();
    let pass = XdpPass::load().unwrap();
    let frame = [0u8; 64];
    for _ in 0..3 {
        pass.program().test_run(&frame).unwrap();
    }
    let found = lwtun::xdp::StatsMap::of_program(pass.program().id())
        .unwrap()
        .expect("an lwtun XDP program has an xdp_stats map");
    let seen = found.snapshot(Stage::Ingress).unwrap();
    let own = pass.stats().snapshot(Stage::Ingress).unwrap();
    assert_eq!(seen.total(), own.total());
    assert_eq!(seen.get(XdpAction::Pass).packets, 3);
    let counter = lwtun::program::LwtCounter::load().unwrap();
    let not_xdp = counter.program(lwtun::program::Hook::Xmit).id();
    assert!(lwtun::xdp::StatsMap::of_program(not_xdp).unwrap().is_none());
    let gone = lwtun::xdp::StatsMap::of_program(u32::MAX).unwrap_err();
    assert_eq!(gone.kind(), lwtun::ErrorKind::NotFound);
}

// ---- redirect and devmaps -------------------------------------------------------------------

#[test]
fn redirect_rewrites_macs_only_when_the_port_exists() {
    require!();
    let fwd = XdpRedirect::load().unwrap();
    let rule = RedirectRule {
        port: 3,
        rewrite_dst: B_MAC,
        rewrite_src: R_MAC,
    };
    fwd.set_rule(B_MAC, rule).unwrap();
    assert_eq!(fwd.rule(B_MAC).unwrap(), Some(rule));
    assert_eq!(fwd.rules().unwrap(), vec![(B_MAC, rule)]);
    let frame = eth(
        B_MAC,
        A_MAC,
        0x0800,
        &ipv4(V4_A, V4_ECHO, 17, 64, 0, &[0; 20]),
    );

    // Port 3 is empty: the miss action is XDP_PASS and the frame is not modified.
    let out = fwd.program().test_run(&frame).unwrap();
    assert_eq!(out.verdict, XdpAction::Pass);
    assert_eq!(out.packet, frame);

    let ns = common::netns("xrd");
    let (port, _receiver) = xdp_port(&ns);
    fwd.ports().set(3, &port, None).unwrap();
    let out = ns.run(|| fwd.program().test_run(&frame)).unwrap();
    assert_eq!(out.verdict, XdpAction::Redirect);
    assert_eq!(&out.packet[0..6], &B_MAC);
    assert_eq!(&out.packet[6..12], &R_MAC);
    assert_eq!(&out.packet[12..], &frame[12..]);
    let s = fwd.stats().snapshot(Stage::Ingress).unwrap();
    assert_eq!(
        (
            s.get(XdpAction::Pass).packets,
            s.get(XdpAction::Redirect).packets
        ),
        (1, 1)
    );
    assert_eq!(s.total().bytes, 2 * frame.len() as u64);

    assert!(fwd.remove_rule(B_MAC).unwrap());
    assert!(!fwd.remove_rule(B_MAC).unwrap());
    assert_eq!(
        fwd.program().test_run(&frame).unwrap().verdict,
        XdpAction::Pass
    );
    let err = fwd
        .set_rule(A_MAC, RedirectRule { port: 64, ..rule })
        .unwrap_err();
    assert_eq!(err.kind(), lwtun::ErrorKind::InvalidInput);
}

#[test]
fn devmaps_set_get_remove_with_and_without_programs() {
    require!();
    // Devmap entries name devices of the namespace the update is made in: a fresh one here.
    let ns = common::netns("xdm");
    let (port, _receiver) = xdp_port(&ns);
    let lo = common::device(&ns, "lo");
    ns.run(|| {
        let fwd = XdpRedirect::load().unwrap();
        let ports = fwd.ports();
        // Loopback cannot take redirected frames: refused, not accepted and then dropped, by
        // kernels that check the device when the entry is written (6.18 does; 5.10 takes it,
        // and the entry then reads back as written).
        match ports.set(5, &lo, None) {
            Err(e) => {
                assert_eq!(e.kind(), lwtun::ErrorKind::InvalidInput, "{e}");
                assert!(e.to_string().contains("NDO_XMIT"), "{e}");
            }
            Ok(()) => {
                assert!(
                    ports.get(5).unwrap().is_some(),
                    "an accepted entry reads back"
                );
                ports.remove(5).unwrap();
            }
        }
        assert_eq!(ports.get(5).unwrap(), None);
        assert_eq!(ports.kind(), DevMapKind::Array);
        assert_eq!(ports.get(5).unwrap(), None);
        ports.set(5, &port, Some(fwd.egress_program())).unwrap();
        let p = ports.get(5).unwrap().unwrap();
        assert_eq!(p.ifindex, port.index());
        assert_eq!(p.program_id, Some(fwd.egress_program().id()));
        ports.set(6, &port, None).unwrap();
        assert_eq!(ports.get(6).unwrap().unwrap().program_id, None);
        let mut all = ports.ports().unwrap();
        all.sort_by_key(|p| p.0);
        assert_eq!(all.iter().map(|p| p.0).collect::<Vec<_>>(), vec![5, 6]);
        assert!(ports.remove(5).unwrap());
        assert!(!ports.remove(5).unwrap());
        assert_eq!(
            ports.get(64).unwrap_err().kind(),
            lwtun::ErrorKind::InvalidInput
        );
        // An ingress (non-devmap) program is refused as a per-port program.
        assert!(ports.set(7, &port, Some(fwd.program())).is_err());
        assert_eq!(ports.get(7).unwrap(), None);

        let hash = DevMap::create(DevMapKind::Hash, 8).unwrap();
        hash.set(100_000, &port, None).unwrap();
        assert_eq!(hash.get(100_000).unwrap().unwrap().ifindex, port.index());
        assert!(hash.remove(100_000).unwrap());
        assert_eq!(hash.get(100_000).unwrap(), None);
        assert_eq!(
            DevMap::create(DevMapKind::Array, 0).unwrap_err().kind(),
            lwtun::ErrorKind::InvalidInput
        );
        Ok(())
    })
    .unwrap();
}

#[test]
fn router_test_run_counts_fib_outcome() {
    require!();
    // test_run's ingress device is the loopback of the namespace the run happens in: a fresh one
    // here, with forwarding off, so the lookup answers FWD_DISABLED and the frame goes to the
    // stack unmodified.
    let ns = common::netns("xrt");
    let router = XdpRouter::load().unwrap();
    let frame = eth(
        R_MAC,
        A_MAC,
        0x0800,
        &ipv4(V4_A, Ipv4Addr::new(192, 0, 2, 1), 17, 64, 0, &[0; 20]),
    );
    let out = ns.run(|| router.program().test_run(&frame)).unwrap();
    assert_eq!(out.verdict, XdpAction::Pass);
    assert_eq!(out.packet, frame);
    let fib = router.fib_stats().unwrap();
    assert_eq!(fib.forwarding_disabled, 1, "{fib:?}");
    let looked_up = fib.success
        + fib.blackhole
        + fib.unreachable
        + fib.prohibit
        + fib.not_forwarded
        + fib.forwarding_disabled
        + fib.unsupported_lwt
        + fib.no_neighbour
        + fib.frag_needed
        + fib.other;
    assert_eq!(looked_up, 1, "{fib:?}");
}

#[test]
fn router_rewrites_ttl_checksum_and_macs_on_success() {
    require!(lwtun::probe::Feature::XdpTestRunContext);
    // A namespace with two veths, forwarding on, and permanent neighbours behind `out0`: the
    // lookup succeeds and the router must decrement TTL / hop limit (IPv4 checksum still valid)
    // and write the neighbour's and the egress device's MACs.
    let nb_mac = "02:00:00:00:00:99";
    let (ns, peer, in0, out0) = router_namespace("xrs", nb_mac);
    let out_mac = common::mac(&ns, "out0");
    let router = XdpRouter::load().unwrap();
    router
        .add_port_with_receiver(&out0, &common::device(&peer, "p1"))
        .unwrap();

    let v4 = eth(
        R_MAC,
        A_MAC,
        0x0800,
        &ipv4(V4_A, Ipv4Addr::new(10, 2, 0, 2), 17, 64, 0, &[7; 20]),
    );
    let out = ns
        .run(|| router.program().test_run_repeat(&v4, 1, Some(&in0)))
        .unwrap();
    assert_eq!(
        out.verdict,
        XdpAction::Redirect,
        "{:?}",
        router.fib_stats().unwrap()
    );
    assert_eq!(&out.packet[0..6], &[2, 0, 0, 0, 0, 0x99]);
    assert_eq!(&out.packet[6..12], &out_mac);
    assert_eq!(out.packet[22], 63, "TTL decremented");
    assert_eq!(
        fold(sum16(&out.packet[14..34], 0)),
        0,
        "IPv4 checksum still valid"
    );
    assert_eq!(&out.packet[34..], &v4[34..]);

    let dst6: Ipv6Addr = "fd02::2".parse().unwrap();
    let v6 = eth(
        R_MAC,
        A_MAC,
        0x86dd,
        &ipv6(V6_A, dst6, 58, 64, &icmp6(V6_A, dst6, 128, b"x")),
    );
    let out = ns
        .run(|| router.program().test_run_repeat(&v6, 1, Some(&in0)))
        .unwrap();
    assert_eq!(
        out.verdict,
        XdpAction::Redirect,
        "{:?}",
        router.fib_stats().unwrap()
    );
    assert_eq!(&out.packet[0..6], &[2, 0, 0, 0, 0, 0x99]);
    assert_eq!(out.packet[21], 63, "hop limit decremented");

    // No neighbour: passed to the stack untouched, counted as NO_NEIGH.
    let v4_nn = eth(
        R_MAC,
        A_MAC,
        0x0800,
        &ipv4(V4_A, Ipv4Addr::new(10, 2, 0, 3), 17, 64, 0, &[7; 20]),
    );
    let out = ns
        .run(|| router.program().test_run_repeat(&v4_nn, 1, Some(&in0)))
        .unwrap();
    assert_eq!(out.verdict, XdpAction::Pass);
    assert_eq!(out.packet, v4_nn);
    // Blackhole route: dropped.
    common::ip(&ns, &["route", "add", "blackhole", "10.3.0.0/24"]);
    let v4_bh = eth(
        R_MAC,
        A_MAC,
        0x0800,
        &ipv4(V4_A, Ipv4Addr::new(10, 3, 0, 1), 17, 64, 0, &[7; 20]),
    );
    let out = ns
        .run(|| router.program().test_run_repeat(&v4_bh, 1, Some(&in0)))
        .unwrap();
    assert_eq!(out.verdict, XdpAction::Drop);
    // Unreachable route: passed so the stack answers with the ICMP error.
    common::ip(&ns, &["route", "add", "unreachable", "10.4.0.0/24"]);
    let v4_un = eth(
        R_MAC,
        A_MAC,
        0x0800,
        &ipv4(V4_A, Ipv4Addr::new(10, 4, 0, 1), 17, 64, 0, &[7; 20]),
    );
    let out = ns
        .run(|| router.program().test_run_repeat(&v4_un, 1, Some(&in0)))
        .unwrap();
    assert_eq!(out.verdict, XdpAction::Pass);
    // Egress not a port: passed untouched.
    router.remove_port(&out0).unwrap();
    let out = ns
        .run(|| router.program().test_run_repeat(&v4, 1, Some(&in0)))
        .unwrap();
    assert_eq!(out.verdict, XdpAction::Pass);
    assert_eq!(out.packet, v4);
    // Forwarding off on the ingress device: FWD_DISABLED, passed.
    ns.set_sysctl("net.ipv4.conf.in0.forwarding", "0").unwrap();
    let out = ns
        .run(|| router.program().test_run_repeat(&v4, 1, Some(&in0)))
        .unwrap();
    assert_eq!(out.verdict, XdpAction::Pass);

    let fib = router.fib_stats().unwrap();
    assert_eq!(fib.success, 3, "{fib:?}");
    assert_eq!(fib.no_neighbour, 1, "{fib:?}");
    assert_eq!(fib.blackhole, 1, "{fib:?}");
    assert_eq!(fib.unreachable, 1, "{fib:?}");
    assert_eq!(fib.forwarding_disabled, 1, "{fib:?}");
    drop(peer);
}

// ---- caches -----------------------------------------------------------------------------------

/// Pins the calling thread to one CPU: the programs' caches are per CPU, so only runs on one CPU
/// show whether a cached entry is reused after a change.
fn pin_to_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes inside it; sched_getcpu and
    // sched_setaffinity have no other preconditions.
    unsafe {
        let cpu = libc::sched_getcpu().max(0) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

#[test]
fn redirect_rule_changes_apply_to_the_next_frame_despite_the_rule_cache() {
    require!();
    // 02:00:00:00:01:0a falls into the same cache slot as B_MAC (02:00:00:00:00:0b).
    const C_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x0a];
    const R2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    let ns = common::netns("xrc");
    let fwd = XdpRedirect::load().unwrap();
    let payload = ipv4(V4_A, V4_ECHO, 17, 64, 0, &[0; 20]);
    let to_b = eth(B_MAC, A_MAC, 0x0800, &payload);
    let to_c = eth(C_MAC, A_MAC, 0x0800, &payload);
    let (port, _receiver) = xdp_port(&ns);
    fwd.ports().set(3, &port, None).unwrap();
    ns.run(|| {
        pin_to_one_cpu();
        let macs = |frame: &[u8]| -> lwtun::Result<(XdpAction, Vec<u8>)> {
            let out = fwd.program().test_run(frame)?;
            Ok((out.verdict, out.packet[0..12].to_vec()))
        };
        let want = |dst: [u8; 6], src: [u8; 6]| [dst, src].concat();
        fwd.set_rule(
            B_MAC,
            RedirectRule {
                port: 3,
                rewrite_dst: B_MAC,
                rewrite_src: R_MAC,
            },
        )?;
        for _ in 0..3 {
            // The first run fills the CPU's slot, the next ones take the rule from it.
            assert_eq!(macs(&to_b)?, (XdpAction::Redirect, want(B_MAC, R_MAC)));
        }
        // A changed rule applies to the very next frame.
        fwd.set_rule(
            B_MAC,
            RedirectRule {
                port: 3,
                rewrite_dst: A_MAC,
                rewrite_src: R2_MAC,
            },
        )?;
        assert_eq!(macs(&to_b)?, (XdpAction::Redirect, want(A_MAC, R2_MAC)));
        // So does a removed one, and "no rule" cached is dropped when a rule appears.
        assert!(fwd.remove_rule(B_MAC)?);
        assert_eq!(fwd.program().test_run(&to_b)?.verdict, XdpAction::Pass);
        assert_eq!(fwd.program().test_run(&to_b)?.packet, to_b);
        fwd.set_rule(
            B_MAC,
            RedirectRule {
                port: 3,
                rewrite_dst: B_MAC,
                rewrite_src: R_MAC,
            },
        )?;
        assert_eq!(macs(&to_b)?, (XdpAction::Redirect, want(B_MAC, R_MAC)));
        // Two MACs sharing a slot each get their own rule, alternately.
        fwd.set_rule(
            C_MAC,
            RedirectRule {
                port: 3,
                rewrite_dst: C_MAC,
                rewrite_src: R2_MAC,
            },
        )?;
        for _ in 0..2 {
            assert_eq!(macs(&to_c)?, (XdpAction::Redirect, want(C_MAC, R2_MAC)));
            assert_eq!(macs(&to_b)?, (XdpAction::Redirect, want(B_MAC, R_MAC)));
        }
        Ok(())
    })
    .unwrap();
    let s = fwd.stats().snapshot(Stage::Ingress).unwrap();
    assert_eq!(
        (
            s.get(XdpAction::Redirect).packets,
            s.get(XdpAction::Pass).packets
        ),
        (9, 2)
    );
}

/// A veth `xp0` in `ns` whose peer `xp1` runs `xdp_pass`, so `xp0` takes redirected frames
/// (a devmap refuses a port that cannot): the port and the receiver's attachment.
fn xdp_port(ns: &lwtun::netns::NetNs) -> (Device, XdpAttachment) {
    common::ip(
        ns,
        &["link", "add", "xp0", "type", "veth", "peer", "name", "xp1"],
    );
    let pass = XdpPass::load().unwrap();
    let receiver = pass
        .attach_receiver(&common::device(ns, "xp1"))
        .unwrap()
        .expect("xp1 had no XDP program");
    (common::device(ns, "xp0"), receiver)
}

/// A router namespace: `in0` (10.1.0.254/24, fd00::fe/64) and `out0` (10.2.0.1/24, fd02::1/64)
/// with a permanent neighbour 10.2.0.2 / fd02::2 at `nb_mac`, forwarding on. Returns the
/// namespace, the veth peers' namespace and the devices in0 and out0.
fn router_namespace(
    prefix: &str,
    nb_mac: &str,
) -> (lwtun::netns::NetNs, lwtun::netns::NetNs, Device, Device) {
    let ns = common::netns(prefix);
    let peer = common::netns(&format!("{prefix}p"));
    for (dev, p) in [("in0", "p0"), ("out0", "p1")] {
        common::ip(
            &ns,
            &[
                "link",
                "add",
                dev,
                "type",
                "veth",
                "peer",
                "name",
                p,
                "netns",
                peer.name(),
            ],
        );
        common::ip(&ns, &["link", "set", dev, "up"]);
    }
    common::ip(&ns, &["addr", "add", "10.1.0.254/24", "dev", "in0"]);
    common::ip(&ns, &["addr", "add", "10.2.0.1/24", "dev", "out0"]);
    common::ip(
        &ns,
        &[
            "neigh",
            "add",
            "10.2.0.2",
            "lladdr",
            nb_mac,
            "dev",
            "out0",
            "nud",
            "permanent",
        ],
    );
    common::ip(
        &ns,
        &["-6", "addr", "add", "fd00::fe/64", "dev", "in0", "nodad"],
    );
    common::ip(
        &ns,
        &["-6", "addr", "add", "fd02::1/64", "dev", "out0", "nodad"],
    );
    common::ip(
        &ns,
        &[
            "-6",
            "neigh",
            "add",
            "fd02::2",
            "lladdr",
            nb_mac,
            "dev",
            "out0",
            "nud",
            "permanent",
        ],
    );
    ns.set_sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    ns.set_sysctl("net.ipv4.ip_forward", "1").unwrap();
    let (in0, out0) = (common::device(&ns, "in0"), common::device(&ns, "out0"));
    (ns, peer, in0, out0)
}

#[test]
fn router_route_cache_hits_ages_out_and_flushes() {
    require!(lwtun::probe::Feature::XdpTestRunContext);
    let (ns, peer, in0, out0) = router_namespace("xrq", "02:00:00:00:00:99");
    let router = XdpRouter::load().unwrap();
    assert_eq!(router.route_cache().unwrap(), None);
    for bad in [Duration::ZERO, Duration::from_secs(61)] {
        assert_eq!(
            router.set_route_cache(Some(bad)).unwrap_err().kind(),
            lwtun::ErrorKind::InvalidInput
        );
    }
    router
        .add_port_with_receiver(&out0, &common::device(&peer, "p1"))
        .unwrap();
    let dst = Ipv4Addr::new(10, 2, 0, 2);
    let v4 = eth(R_MAC, A_MAC, 0x0800, &ipv4(V4_A, dst, 17, 64, 0, &[7; 20]));
    let nb = |last: u8| [2, 0, 0, 0, 0, last];
    let set_nb = |mac: &str| {
        common::ip(
            &ns,
            &[
                "neigh",
                "replace",
                "10.2.0.2",
                "lladdr",
                mac,
                "dev",
                "out0",
                "nud",
                "permanent",
            ],
        )
    };
    ns.run(|| {
        pin_to_one_cpu();
        let run = |frame: &[u8]| -> lwtun::Result<(XdpAction, [u8; 6], u64)> {
            let out = router.program().test_run_repeat(frame, 1, Some(&in0))?;
            let hits = router.fib_stats()?.cache_hits;
            Ok((out.verdict, out.packet[0..6].try_into().unwrap(), hits))
        };
        // On by default once the router has a port (it follows the namespace's changes): the
        // first frame fills the slot, the next one hits it.
        assert_eq!(router.route_cache()?, Some(ROUTE_CACHE_DEFAULT_AGE));
        assert!(router.route_cache_status()?.follows_changes);
        assert_eq!(run(&v4)?, (XdpAction::Redirect, nb(0x99), 0));
        assert_eq!(run(&v4)?, (XdpAction::Redirect, nb(0x99), 1));
        // Off: every frame is looked up.
        router.set_route_cache(None)?;
        assert_eq!(run(&v4)?, (XdpAction::Redirect, nb(0x99), 1));
        assert_eq!(run(&v4)?, (XdpAction::Redirect, nb(0x99), 1));

        // On, with a long age: the first frame fills the slot, the next ones hit it.
        router.set_route_cache(Some(Duration::from_secs(30)))?;
        assert_eq!(router.route_cache()?, Some(Duration::from_secs(30)));
        assert_eq!(run(&v4)?, (XdpAction::Redirect, nb(0x99), 1));
        assert_eq!(run(&v4)?, (XdpAction::Redirect, nb(0x99), 2));
        let out = router.program().test_run_repeat(&v4, 1, Some(&in0))?;
        assert_eq!(out.packet[22], 63, "TTL decremented on a hit too");
        assert_eq!(
            fold(sum16(&out.packet[14..34], 0)),
            0,
            "IPv4 checksum valid"
        );
        // A neighbour change reaches the cached flow without a flush, long before the age:
        // the router's watch of the namespace's changes drops the cache.
        let invalidations = router.route_cache_status()?.invalidations;
        set_nb("02:00:00:00:00:98");
        let deadline = std::time::Instant::now() + common::patient(Duration::from_secs(5));
        while router.route_cache_status()?.invalidations == invalidations {
            assert!(std::time::Instant::now() < deadline, "no invalidation");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(run(&v4)?, (XdpAction::Redirect, nb(0x98), 3));
        assert_eq!(run(&v4)?, (XdpAction::Redirect, nb(0x98), 4));
        // A flush drops it as well.
        router.flush_route_cache()?;
        assert_eq!(run(&v4)?, (XdpAction::Redirect, nb(0x98), 4));
        assert_eq!(run(&v4)?, (XdpAction::Redirect, nb(0x98), 5));

        // A frame longer than the cached MTU is looked up (FRAG_NEEDED, passed), not forwarded.
        let mut big = v4.clone();
        big[16..18].copy_from_slice(&3000u16.to_be_bytes());
        let before = router.fib_stats()?;
        assert_eq!(run(&big)?.0, XdpAction::Pass);
        let after = router.fib_stats()?;
        assert_eq!(after.frag_needed, before.frag_needed + 1);
        assert_eq!(after.cache_hits, before.cache_hits);
        // TTL 1 still goes to the stack, whatever is cached for the flow.
        let ttl1 = eth(R_MAC, A_MAC, 0x0800, &ipv4(V4_A, dst, 17, 1, 0, &[7; 20]));
        assert_eq!(run(&ttl1)?.0, XdpAction::Pass);
        // Another source is another flow: its first frame is looked up.
        let other = eth(
            R_MAC,
            A_MAC,
            0x0800,
            &ipv4(Ipv4Addr::new(10, 1, 0, 7), dst, 17, 64, 0, &[7; 20]),
        );
        let hits = router.fib_stats()?.cache_hits;
        assert_eq!(run(&other)?, (XdpAction::Redirect, nb(0x98), hits));

        // Changing the lookup mode drops the cache.
        router.set_direct_lookup(true)?;
        assert_eq!(run(&v4)?, (XdpAction::Redirect, nb(0x98), hits));
        router.set_direct_lookup(false)?;

        // The ports are part of the flow (a multipath route hashes them, see tests/xdp_ecmp.rs):
        // another source port is looked up before it hits. The fragments of a datagram are one
        // flow whatever their first bytes: only the first one holds the ports.
        let flow = |sport: u16, frag: u16| {
            let datagram = udp(sport, 9, &[7; 12]);
            eth(
                R_MAC,
                A_MAC,
                0x0800,
                &ipv4(V4_A, dst, 17, 64, frag, &datagram),
            )
        };
        let hits = router.fib_stats()?.cache_hits;
        let redirected = |hits| (XdpAction::Redirect, nb(0x98), hits);
        assert_eq!(run(&flow(1000, 0))?, redirected(hits));
        assert_eq!(run(&flow(1000, 0))?, redirected(hits + 1));
        assert_eq!(run(&flow(1001, 0))?, redirected(hits + 1));
        assert_eq!(run(&flow(1001, 0))?, redirected(hits + 2));
        const MORE_FRAGMENTS: u16 = 0x2000;
        assert_eq!(run(&flow(1002, MORE_FRAGMENTS))?, redirected(hits + 2));
        assert_eq!(run(&flow(1003, MORE_FRAGMENTS))?, redirected(hits + 3));

        // A short age: a change reaches the flow once its slot is older than the age.
        router.set_route_cache(Some(Duration::from_millis(40)))?;
        assert_eq!(run(&v4)?.1, nb(0x98));
        set_nb("02:00:00:00:00:97");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(run(&v4)?.1, nb(0x97));

        // IPv6 flows are cached the same way (hop limit decremented on a hit too).
        let dst6: Ipv6Addr = "fd02::2".parse().unwrap();
        let v6 = eth(
            R_MAC,
            A_MAC,
            0x86dd,
            &ipv6(V6_A, dst6, 58, 64, &icmp6(V6_A, dst6, 128, b"x")),
        );
        let hits = router.fib_stats()?.cache_hits;
        let first = run(&v6)?;
        assert_eq!(
            first,
            (XdpAction::Redirect, nb(0x99), hits),
            "{:?}",
            router.fib_stats()?
        );
        let out = router.program().test_run_repeat(&v6, 1, Some(&in0))?;
        assert_eq!(out.verdict, XdpAction::Redirect);
        assert_eq!(out.packet[21], 63, "hop limit decremented on a hit");
        assert_eq!(router.fib_stats()?.cache_hits, hits + 1);
        // The MTU check counts the IPv6 header, as the stack does: a packet of exactly the
        // MTU is forwarded (from the cache), one byte more is passed for the stack's "packet too
        // big".
        let sized = |payload_len: u16| {
            let mut f = v6.clone();
            f[18..20].copy_from_slice(&payload_len.to_be_bytes());
            f
        };
        assert_eq!(
            run(&sized(1460))?,
            (XdpAction::Redirect, nb(0x99), hits + 2)
        );
        let before = router.fib_stats()?;
        assert_eq!(run(&sized(1461))?.0, XdpAction::Pass);
        assert_eq!(router.fib_stats()?.frag_needed, before.frag_needed + 1);
        let hits = hits + 1;
        // Another UDP source port is another IPv6 flow.
        let flow6 = |sport: u16| {
            let datagram = udp(sport, 9, b"x");
            eth(R_MAC, A_MAC, 0x86dd, &ipv6(V6_A, dst6, 17, 64, &datagram))
        };
        let redirected = |hits| (XdpAction::Redirect, nb(0x99), hits);
        assert_eq!(run(&flow6(1000))?, redirected(hits + 1));
        assert_eq!(run(&flow6(1000))?, redirected(hits + 2));
        assert_eq!(run(&flow6(1001))?, redirected(hits + 2));
        assert_eq!(run(&flow6(1001))?, redirected(hits + 3));

        // Off again: a change applies to the next frame.
        router.set_route_cache(None)?;
        assert_eq!(router.route_cache()?, None);
        set_nb("02:00:00:00:00:96");
        assert_eq!(run(&v4)?.1, nb(0x96));
        Ok(())
    })
    .unwrap();
    let fib = router.fib_stats().unwrap();
    assert!(fib.success >= fib.cache_hits, "{fib:?}");
    drop(peer);
}
