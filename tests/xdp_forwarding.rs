//! XDP forwarding end to end, in namespaces these tests create: the L2 redirect (inner-to-inner
//! redirected, inner-to-outer passed), the FIB router (ping and TCP, IPv4 and IPv6), the echo
//! responder (ping v4 and v6 answered in XDP, the stack silent), and attachment management.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::{device, ip, line, mac, netns, ping, tcp_stream, two_hosts};
use lwtun::netns::NetNs;
use lwtun::xdp::{
    AttachVia, IcmpEcho, RedirectRule, Stage, XdpAction, XdpAttachment, XdpMode, XdpOptions,
    XdpPass, XdpRedirect, XdpRouter,
};

fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A counter from `/proc/net/snmp` (or snmp6) as seen inside `ns`, e.g. ("Ip", "ForwDatagrams").
fn snmp(ns: &NetNs, group: &str, field: &str) -> u64 {
    if group == "Icmp6" || group == "Ip6" {
        let out = common::run_in(ns, "cat", &["/proc/net/snmp6"]).unwrap();
        let key = format!("{group}{field}");
        return out
            .lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some(key.as_str())).then(|| it.next().unwrap().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no {key}"));
    }
    let out = common::run_in(ns, "cat", &["/proc/net/snmp"]).unwrap();
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(&format!("{group}:")))
        .collect();
    let names: Vec<&str> = lines[0].split_whitespace().collect();
    let values: Vec<&str> = lines[1].split_whitespace().collect();
    let i = names
        .iter()
        .position(|n| *n == field)
        .unwrap_or_else(|| panic!("no {group}:{field}"));
    values[i].parse().unwrap()
}

fn native() -> XdpOptions {
    XdpOptions {
        mode: XdpMode::Native,
        ..Default::default()
    }
}

/// A star around namespace R: inner hosts A and B on ports `pa` and `pb`, outer host C on `pc`.
/// A and B share 10.1.0.0/24 and reach each other's MACs through static neighbours, so their
/// frames cross R at L2 (the XDP redirect's job); traffic to C (10.9.0.0/24) goes through R's
/// IP stack. Returns (R, A, B, C).
fn star() -> (NetNs, NetNs, NetNs, NetNs) {
    let r = netns("xr");
    let hosts: Vec<NetNs> = ["xa", "xb", "xc"].iter().map(|p| netns(p)).collect();
    for (dev, h) in ["pa", "pb", "pc"].iter().zip(&hosts) {
        ip(
            &r,
            &[
                "link",
                "add",
                dev,
                "type",
                "veth",
                "peer",
                "name",
                "r",
                "netns",
                h.name(),
            ],
        );
        ip(&r, &["link", "set", dev, "up"]);
        ip(h, &["link", "set", "r", "up"]);
    }
    let (a, b, c) = (&hosts[0], &hosts[1], &hosts[2]);
    for h in [a, b] {
        common::tx_checksum_off(h, "r");
    }
    r.set_sysctl("net.ipv4.ip_forward", "1").unwrap();
    ip(&r, &["addr", "add", "10.1.0.254/24", "dev", "pa"]);
    ip(&r, &["route", "add", "10.1.0.2/32", "dev", "pb"]);
    ip(&r, &["addr", "add", "10.9.0.1/24", "dev", "pc"]);
    ip(a, &["addr", "add", "10.1.0.1/24", "dev", "r"]);
    ip(b, &["addr", "add", "10.1.0.2/24", "dev", "r"]);
    ip(c, &["addr", "add", "10.9.0.2/24", "dev", "r"]);
    for h in [a, b] {
        ip(h, &["route", "add", "10.9.0.0/24", "via", "10.1.0.254"]);
    }
    ip(c, &["route", "add", "10.1.0.0/24", "via", "10.9.0.1"]);
    let (a_mac, b_mac) = (mac(a, "r"), mac(b, "r"));
    ip(
        a,
        &[
            "neigh",
            "add",
            "10.1.0.2",
            "lladdr",
            &mac_str(&b_mac),
            "dev",
            "r",
        ],
    );
    ip(
        b,
        &[
            "neigh",
            "add",
            "10.1.0.1",
            "lladdr",
            &mac_str(&a_mac),
            "dev",
            "r",
        ],
    );
    let mut it = hosts.into_iter();
    (
        r,
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
    )
}

#[test]
fn redirect_forwards_inner_to_inner_and_passes_inner_to_outer() {
    require!();
    let (r, a, b, c) = star();
    let fwd = XdpRedirect::load().unwrap();
    let (ra, rb) = (device(&r, "pa"), device(&r, "pb"));
    let (a_mac, b_mac) = (mac(&a, "r"), mac(&b, "r"));
    let (ra_mac, rb_mac) = (mac(&r, "pa"), mac(&r, "pb"));

    // Ports 0 (a) and 1 (b), each with a pass program on the far end so the veth accepts
    // redirected frames; port b also counts what leaves through its per-port program.
    let atts = r
        .run(|| {
            fwd.set_port_with_receiver(0, &ra, &device(&a, "r"))?;
            fwd.set_port_with_receiver(1, &rb, &device(&b, "r"))?;
            fwd.ports().set(1, &rb, Some(fwd.egress_program()))?;
            fwd.set_rule(
                b_mac,
                RedirectRule {
                    port: 1,
                    rewrite_dst: b_mac,
                    rewrite_src: rb_mac,
                },
            )?;
            fwd.set_rule(
                a_mac,
                RedirectRule {
                    port: 0,
                    rewrite_dst: a_mac,
                    rewrite_src: ra_mac,
                },
            )?;
            Ok(vec![fwd.attach(&ra, native())?, fwd.attach(&rb, native())?])
        })
        .unwrap();
    assert!(
        ip(&a, &["link", "show", "dev", "r"]).contains("xdp"),
        "receiver attached on A"
    );

    let forw0 = snmp(&r, "Ip", "ForwDatagrams");
    let s0 = fwd.stats().snapshot(Stage::Ingress).unwrap();
    let p = ping(&a, IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2)), 5);
    assert_eq!(p.received, 5, "A -> B ping: {}", p.output);
    let t = tcp_stream(&b, &a, IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2)), 4 << 20);
    assert!(t.complete(), "A -> B TCP: {t:?}");
    let s1 = fwd.stats().snapshot(Stage::Ingress).unwrap();
    let d = s1.since(&s0);
    assert!(
        d.get(XdpAction::Redirect).packets >= 10,
        "requests and replies redirected: {d}"
    );
    assert_eq!(
        snmp(&r, "Ip", "ForwDatagrams"),
        forw0,
        "R's stack forwarded nothing between A and B"
    );
    let egress = fwd.stats().snapshot(Stage::Egress).unwrap();
    assert!(
        egress.get(XdpAction::Pass).packets >= 5,
        "port b's program saw the frames: {egress}"
    );

    // Inner to outer: no rule for R's MAC, so the frames pass to R's stack, which forwards.
    let p = ping(&a, IpAddr::V4(Ipv4Addr::new(10, 9, 0, 2)), 3);
    assert_eq!(p.received, 3, "A -> C ping: {}", p.output);
    let d = fwd.stats().snapshot(Stage::Ingress).unwrap().since(&s1);
    assert_eq!(d.get(XdpAction::Redirect).packets, 0, "{d}");
    assert!(d.get(XdpAction::Pass).packets >= 3, "{d}");
    assert!(
        snmp(&r, "Ip", "ForwDatagrams") >= forw0 + 6,
        "R forwarded A <-> C"
    );
    drop(atts);
    drop((a, b, c));
}

#[test]
fn router_forwards_ping_and_tcp_v4_and_v6() {
    require!();
    let l = line(3);
    let (left, mid, right) = (l.ns(0), l.ns(1), l.ns(2));
    common::tx_checksum_off(left, "to1");
    common::tx_checksum_off(right, "to1");
    let router = XdpRouter::load().unwrap();
    let (to0, to2) = (l.device(1, "to0"), l.device(1, "to2"));
    // Called from the test's own thread, in the host's namespace: the devices carry theirs,
    // so the ports name the router's to0/to2 and not whatever the host has at those indexes.
    router
        .add_port_with_receiver(&to0, &device(left, "to1"))
        .unwrap();
    router
        .add_port_with_receiver(&to2, &device(right, "to1"))
        .unwrap();
    let atts = vec![
        router.attach(&to0, native()).unwrap(),
        router.attach(&to2, native()).unwrap(),
    ];
    // A port from another namespace would send frames to an unrelated device: refused.
    let e = router.add_port(&device(right, "to1")).unwrap_err();
    assert_eq!(e.kind(), lwtun::ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("FIB lookup"), "{e}");

    let forw0 = snmp(mid, "Ip", "ForwDatagrams");
    let forw6_0 = snmp(mid, "Ip6", "OutForwDatagrams");
    let out_before = to2.counters().unwrap();
    for dst in [IpAddr::V4(l.v4(2)), IpAddr::V6(l.v6(2))] {
        let p = ping(left, dst, 5);
        assert_eq!(p.received, 5, "ping {dst}: {}", p.output);
        let t = tcp_stream(right, left, dst, 8 << 20);
        assert!(t.complete(), "TCP to {dst}: {t:?}");
    }
    let fib = router.fib_stats().unwrap();
    let s = router.stats().snapshot(Stage::Ingress).unwrap();
    assert!(fib.success >= 100, "{fib:?}");
    assert!(s.get(XdpAction::Redirect).packets >= 100, "{s}");
    // The verdicts counted redirects; the egress device's own counters show the deliveries:
    // veth's driver counters hold what it transmitted for XDP, and none of it was dropped.
    let out = to2.counters().unwrap().since(&out_before);
    assert!(!out.driver.is_empty(), "veth has driver counters: {out:?}");
    let xmit: u64 = out
        .driver
        .iter()
        .filter(|(n, _)| n.contains("xdp"))
        .map(|(_, v)| *v)
        .sum();
    assert!(xmit >= 100, "XDP frames through to2: {out:?}");
    assert_eq!(out.xdp_drops(), 0, "{out:?}");
    // The first packet of each direction may wait for the neighbour in the stack; the rest
    // take the fast path, so the stack forwarded at most a handful.
    let stack4 = snmp(mid, "Ip", "ForwDatagrams") - forw0;
    let stack6 = snmp(mid, "Ip6", "OutForwDatagrams") - forw6_0;
    assert!(
        stack4 + stack6 <= fib.no_neighbour + 4,
        "stack forwarded {stack4}+{stack6}; {fib:?}"
    );

    // TTL 1 goes to the stack, which answers time exceeded: traceroute-like ping.
    let excd0 = snmp(mid, "Icmp", "OutTimeExcds");
    let p = common::ping_with(left, IpAddr::V4(l.v4(2)), 1, &["-t", "1"]);
    assert_eq!(p.received, 0, "{}", p.output);
    assert_eq!(
        snmp(mid, "Icmp", "OutTimeExcds"),
        excd0 + 1,
        "the router's stack sent time exceeded"
    );
    assert!(router.fib_stats().unwrap().ttl_expired >= 1);

    // Direct lookups (main table, no ip rules) forward the same way.
    router.set_direct_lookup(true).unwrap();
    assert!(router.direct_lookup().unwrap());
    let before = router.fib_stats().unwrap().success;
    let p = ping(left, IpAddr::V6(l.v6(2)), 3);
    assert_eq!(p.received, 3, "{}", p.output);
    assert!(router.fib_stats().unwrap().success >= before + 6);
    router.set_direct_lookup(false).unwrap();

    // With the route cache on, flows after their first packet (per CPU) skip the lookup, and
    // ping and TCP work as before.
    router
        .set_route_cache(Some(std::time::Duration::from_secs(1)))
        .unwrap();
    let before = router.fib_stats().unwrap();
    for dst in [IpAddr::V4(l.v4(2)), IpAddr::V6(l.v6(2))] {
        let p = ping(left, dst, 3);
        assert_eq!(
            p.received, 3,
            "ping {dst} with the route cache: {}",
            p.output
        );
        let t = tcp_stream(right, left, dst, 4 << 20);
        assert!(t.complete(), "TCP to {dst} with the route cache: {t:?}");
    }
    let fib = router.fib_stats().unwrap();
    let (hits, success) = (
        fib.cache_hits - before.cache_hits,
        fib.success - before.success,
    );
    assert!(
        hits >= 100 && hits * 10 >= success * 9,
        "{hits} hits of {success}: {fib:?}"
    );
    router.set_route_cache(None).unwrap();

    // Taking a port away sends that direction through the stack again; traffic still flows.
    mid.run(|| router.remove_port(&to2).map(|_| ())).unwrap();
    let r0 = router.stats().snapshot(Stage::Ingress).unwrap();
    let p = ping(left, IpAddr::V4(l.v4(2)), 3);
    assert_eq!(p.received, 3, "{}", p.output);
    let d = router.stats().snapshot(Stage::Ingress).unwrap().since(&r0);
    assert!(
        d.get(XdpAction::Pass).packets >= 3,
        "requests to the removed port pass: {d}"
    );
    drop(atts);
}

#[test]
fn echo_answers_ping_in_xdp_and_the_stack_stays_silent() {
    require!();
    let l = two_hosts();
    let (client, server) = (l.ns(0), l.ns(1));
    let echo = IcmpEcho::load().unwrap();
    echo.add_address(IpAddr::V4(l.v4(1))).unwrap();
    echo.add_address(IpAddr::V6(l.v6(1))).unwrap();
    let ifx = l.device(1, "to0");
    // Replies with XDP_TX leave through to0 into its peer, which needs an XDP program too.
    let pass = XdpPass::load().unwrap();
    let receiver = pass.attach_receiver(&device(client, "to1")).unwrap();
    let att = server.run(|| echo.attach(&ifx, native())).unwrap();

    let in4 = snmp(server, "Icmp", "InEchos");
    let in6 = snmp(server, "Icmp6", "InEchos");
    for dst in [IpAddr::V4(l.v4(1)), IpAddr::V6(l.v6(1))] {
        let p = ping(client, dst, 5);
        assert_eq!(p.received, 5, "ping {dst}: {}", p.output);
    }
    let s = echo.stats().snapshot(Stage::Ingress).unwrap();
    assert_eq!(s.get(XdpAction::Tx).packets, 10, "{s}");
    assert_eq!(
        snmp(server, "Icmp", "InEchos"),
        in4,
        "the server's stack saw no IPv4 echo"
    );
    assert_eq!(
        snmp(server, "Icmp6", "InEchos"),
        in6,
        "the server's stack saw no IPv6 echo"
    );

    // Without the responder the stack answers again (and counts it).
    att.detach().unwrap();
    let p = ping(client, IpAddr::V4(l.v4(1)), 2);
    assert_eq!(p.received, 2);
    assert_eq!(snmp(server, "Icmp", "InEchos"), in4 + 2);
    drop(receiver);
}

#[test]
fn attach_modes_query_replace_detach_and_pin() {
    require!();
    let l = two_hosts();
    let ns = l.ns(0);
    let pass = XdpPass::load().unwrap();
    let ifx = l.device(0, "to1");
    let (pid, did) = (pass.program().id(), pass.drop_program().id());
    ns.run(|| {
        assert!(XdpAttachment::query(&ifx)?.is_empty());
        // Refusals: loopback has no native XDP; a device deleted since it was looked up is not
        // found; a program that is not an XDP program is refused before the kernel is asked.
        let lo = device(ns, "lo");
        let err = XdpAttachment::attach(pass.program(), &lo, native()).unwrap_err();
        assert_eq!(err.kind(), lwtun::ErrorKind::Unsupported, "{err}");
        ip(
            ns,
            &[
                "link", "add", "gone0", "type", "veth", "peer", "name", "gone1",
            ],
        );
        let gone = device(ns, "gone0");
        ip(ns, &["link", "del", "gone0"]);
        let err = XdpAttachment::attach(pass.program(), &gone, native()).unwrap_err();
        assert_eq!(err.kind(), lwtun::ErrorKind::NotFound, "{err}");
        let tc = lwtun::tc::TcCounter::load()?;
        let err = XdpAttachment::attach(tc.program(), &ifx, native()).unwrap_err();
        assert_eq!(err.kind(), lwtun::ErrorKind::InvalidInput, "{err}");
        // Native through a bpf_link, then replaced atomically, then a second attach refused.
        let mut att = XdpAttachment::attach(pass.program(), &ifx, native())?;
        assert_eq!(att.via(), AttachVia::Link);
        assert_eq!(XdpAttachment::query(&ifx)?.native, Some(pid));
        att.replace(pass.drop_program())?;
        assert_eq!(XdpAttachment::query(&ifx)?.native, Some(did));
        assert_eq!(att.program_id(), did);
        let err = XdpAttachment::attach(pass.program(), &ifx, native()).unwrap_err();
        assert_eq!(err.kind(), lwtun::ErrorKind::Exists, "{err}");
        drop(att);
        assert!(XdpAttachment::query(&ifx)?.is_empty(), "dropping detaches");

        // Generic mode through a bpf_link.
        let generic = XdpOptions {
            mode: XdpMode::Generic,
            ..Default::default()
        };
        let att = XdpAttachment::attach(pass.program(), &ifx, generic)?;
        assert_eq!(att.via(), AttachVia::Link);
        let q = XdpAttachment::query(&ifx)?;
        assert_eq!((q.generic, q.native), (Some(pid), None));
        att.detach()?;
        assert!(XdpAttachment::query(&ifx)?.is_empty());

        // Generic mode through netlink, replaced with XDP_FLAGS_REPLACE, detached explicitly.
        let opts = XdpOptions {
            mode: XdpMode::Generic,
            via: AttachVia::Netlink,
        };
        let mut att = XdpAttachment::attach(pass.program(), &ifx, opts)?;
        assert_eq!(att.via(), AttachVia::Netlink);
        let q = XdpAttachment::query(&ifx)?;
        assert_eq!((q.generic, q.native), (Some(pid), None));
        att.replace(pass.tx_program())?;
        assert_eq!(
            XdpAttachment::query(&ifx)?.generic,
            Some(pass.tx_program().id())
        );
        att.detach()?;
        assert!(XdpAttachment::query(&ifx)?.is_empty());

        // A persisted netlink attachment outlives its handle until detach_interface.
        let att = XdpAttachment::attach(
            pass.program(),
            &ifx,
            XdpOptions {
                via: AttachVia::Netlink,
                ..native()
            },
        )?;
        att.persist()?;
        assert_eq!(XdpAttachment::query(&ifx)?.native, Some(pid));
        XdpAttachment::detach_interface(&ifx, XdpMode::Auto)?;
        assert!(XdpAttachment::query(&ifx)?.is_empty());
        Ok(())
    })
    .unwrap();

    // A pinned link stays attached after the handle is gone, until detach_pinned.
    let pin =
        std::path::PathBuf::from(format!("/sys/fs/bpf/lwtun-test-xdp-{}", std::process::id()));
    let _ = std::fs::remove_file(&pin);
    ns.run(|| XdpAttachment::attach(pass.program(), &ifx, native())?.pin(&pin))
        .unwrap();
    assert!(
        ip(ns, &["link", "show", "dev", "to1"]).contains("xdp"),
        "still attached after pin"
    );
    XdpAttachment::detach_pinned(&pin).unwrap();
    assert!(!pin.exists());
    assert!(ns.run(|| XdpAttachment::query(&ifx)).unwrap().is_empty());
}

#[test]
fn live_frames_through_tx_reach_the_peer() {
    require!(lwtun::probe::Feature::XdpLiveFrames);
    // The traffic generator the benchmarks use: xdp_tx run with live frames on to1 sends every
    // frame to the peer, where xdp_drop counts them.
    let l = two_hosts();
    let gen = XdpPass::load().unwrap();
    let sink = XdpPass::load().unwrap();
    let (g, s) = (l.device(0, "to1"), l.device(1, "to0"));
    let sink_att = l
        .ns(1)
        .run(|| XdpAttachment::attach(sink.drop_program(), &s, native()))
        .unwrap();
    // The generating side needs an XDP program on its own device to transmit from it.
    let gen_att = l.ns(0).run(|| gen.attach(&g, native())).unwrap();
    let frame = {
        let mut f = vec![0u8; 64];
        f[0..6].copy_from_slice(&mac(l.ns(1), "to0"));
        f[6..12].copy_from_slice(&mac(l.ns(0), "to1"));
        f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes()); // local experimental EtherType
        f
    };
    let live = lwtun::xdp::LiveFrames {
        device: g.clone(),
        repeat: 10_000,
        batch_size: 0,
    };
    l.ns(0)
        .run(|| gen.tx_program().run_live(&frame, &live))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    // The sink also drops what ns 0's own stack sends meanwhile (IPv6 ND/MLD): a few frames.
    let got = sink
        .stats()
        .snapshot(Stage::Ingress)
        .unwrap()
        .get(XdpAction::Drop);
    assert!((10_000..10_020).contains(&got.packets), "{got:?}");
    assert!(got.bytes >= 640_000, "{got:?}");
    let sent = gen
        .stats()
        .snapshot(Stage::Ingress)
        .unwrap()
        .get(XdpAction::Tx);
    assert_eq!(sent.packets, 10_000);
    drop((sink_att, gen_att));
}

/// A 64-byte Ethernet + IPv4 + UDP frame with a valid header checksum and TTL 64.
fn udp_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut iph = vec![0x45, 0, 0, 50, 0, 1, 0x40, 0, 64, 17, 0, 0];
    iph.extend_from_slice(&src.octets());
    iph.extend_from_slice(&dst.octets());
    let mut acc: u32 = iph
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    iph[10..12].copy_from_slice(&(!(acc as u16)).to_be_bytes());
    f.extend_from_slice(&iph);
    f.extend_from_slice(&[0x30, 0x39, 0x30, 0x3a, 0, 30, 0, 0]);
    f.resize(64, 0xab);
    f
}

#[test]
fn traffic_gen_through_the_router_arrives_whole() {
    require!(lwtun::probe::Feature::XdpLiveFrames);
    // Live frames through the XDP router: the router decrements the TTL in the very page the
    // generator recycles, so without the generator's template rewrite the TTL would run down
    // and frames would fall to the stack as expired. Every frame must arrive, none expire.
    let l = line(3);
    let (gen_ns, mid) = (l.ns(0), l.ns(1));
    let p = ping(mid, IpAddr::V4(l.v4(2)), 1); // resolve the router's neighbour first
    assert_eq!(p.received, 1, "{}", p.output);
    let router = XdpRouter::load().unwrap();
    let (to0, to2) = (l.device(1, "to0"), l.device(1, "to2"));
    // The sink's XDP program goes on first: a veth takes redirected frames only while its peer
    // runs one, and the router refuses a port that would drop them all.
    let sink = XdpPass::load().unwrap();
    let sink_att =
        XdpAttachment::attach(sink.drop_program(), &l.device(2, "to1"), native()).unwrap();
    let r_att = mid
        .run(|| {
            router.add_port(&to2)?;
            router.attach(&to0, native())
        })
        .unwrap();
    let own = XdpPass::load().unwrap();
    let g = l.device(0, "to1");
    let own_att = gen_ns.run(|| own.attach(&g, native())).unwrap();

    let gen = lwtun::xdp::TrafficGen::load().unwrap();
    let frame = udp_frame(mac(mid, "to0"), mac(gen_ns, "to1"), l.v4(0), l.v4(2));
    let short = gen_ns.run(|| {
        gen.send(
            &frame[..60],
            &lwtun::xdp::LiveFrames {
                device: g.clone(),
                repeat: 1,
                batch_size: 0,
            },
        )
    });
    assert_eq!(short.unwrap_err().kind(), lwtun::ErrorKind::InvalidInput);
    let live = lwtun::xdp::LiveFrames {
        device: g.clone(),
        repeat: 50_000,
        batch_size: 64,
    };
    gen_ns.run(|| gen.send(&frame, &live)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));

    let sent = gen
        .stats()
        .snapshot(Stage::Ingress)
        .unwrap()
        .get(XdpAction::Tx);
    assert_eq!(sent.packets, 50_000);
    let fib = router.fib_stats().unwrap();
    // ns 0's own stack may send an IPv6 MLD report (hop limit 1) meanwhile; a run-down TTL
    // would show as thousands.
    assert!(fib.ttl_expired <= 5, "{fib:?}");
    assert!(fib.success >= 50_000, "{fib:?}");
    let got = sink
        .stats()
        .snapshot(Stage::Ingress)
        .unwrap()
        .get(XdpAction::Drop);
    assert!((50_000..50_050).contains(&got.packets), "{got:?}");

    // The same burst through the route cache: one lookup per CPU, then hits; all arrive.
    router
        .set_route_cache(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let before = router.fib_stats().unwrap();
    gen_ns.run(|| gen.send(&frame, &live)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let fib = router.fib_stats().unwrap();
    let cpus = std::thread::available_parallelism().map_or(64, |n| n.get() as u64);
    assert!(
        fib.cache_hits - before.cache_hits >= 50_000 - cpus,
        "{before:?} -> {fib:?}"
    );
    let got2 = sink
        .stats()
        .snapshot(Stage::Ingress)
        .unwrap()
        .get(XdpAction::Drop);
    assert!(
        (50_000..50_050).contains(&(got2.packets - got.packets)),
        "{got:?} -> {got2:?}"
    );
    drop((r_att, sink_att, own_att));
}
