//! Interop with independent implementations: the kernel's own tunnel devices. Host A runs
//! lwtun (a [`Tunnel`] encapsulating at `lwt_xmit`, a [`Decap`] at tc ingress of the underlay);
//! host B runs a point-to-point kernel device (ipip, sit, gre with and without key and
//! checksum, ip6gre, ip6tnl, ipip over fou) configured the way its manual page says. For every
//! inner family the device carries: ping both ways, a content-checked TCP stream both ways, the
//! encapsulated packets seen on the underlay by tcpdump, and the counters of both ends (lwtun's
//! peer and decap counters, the kernel device's rx/tx packets) agree that the traffic crossed.
//!
//! The kernel must have the device's module (`CONFIG_NET_IPIP`, `CONFIG_NET_IPGRE`, ...): where
//! it does not (this project's development machine has none of them), the test says so and is
//! skipped; the kernel matrix runs it on Debian's 5.10, 6.1 and 6.12, which have them all.
//!
//! ```text
//!  A: lwtun (10.30.0.1, fd30::1 on lo) ── to1 ═══ 10.77.0.0/24, fd77::/64 ═══ to0 ── B: kernel device kt
//!                                                                              (10.20.0.2, fd20::2 on lo)
//! ```

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::Capture;
use lwtun::decap::{Decap, DecapCounters, DecapPeer};
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::peer::{Encap, EncapPeer};
use lwtun::probe::Feature;
use lwtun::tunnel::Tunnel;

const INNER4: [&str; 2] = ["10.30.0.1", "10.20.0.2"];
const INNER6: [&str; 2] = ["fd30::1", "fd20::2"];
const PREFIX4: [&str; 2] = ["10.30.0.0/16", "10.20.0.0/16"];
const PREFIX6: [&str; 2] = ["fd30::/16", "fd20::/16"];
const OUTER4: [&str; 2] = ["10.77.0.1", "10.77.0.2"];
const OUTER6: [&str; 2] = ["fd77::1", "fd77::2"];
const FOU_PORT: u16 = 5555;
const TCP_BYTES: usize = 4 << 20;
/// The kernel device in B.
const DEV: &str = "kt";

/// One kernel tunnel device and the lwtun encapsulation that speaks its protocol.
struct Case {
    /// The test's name (for SKIPPED lines).
    test: &'static str,
    /// `ip link add kt type ...` arguments after `type`, with `{A}`/`{B}` for the outer
    /// addresses of A and B.
    link: &'static str,
    /// The kernel option that provides the device, named when the kernel lacks it.
    config: &'static str,
    /// Whether the outer header is IPv6.
    outer_v6: bool,
    /// The inner families the device carries (false: IPv4, true: IPv6).
    inner: &'static [bool],
    /// A fou receive port to open in B first (`ip fou add port P ipproto N`).
    fou_ipproto: Option<u8>,
    /// lwtun's side.
    encap: Encap,
    /// The tcpdump filter for the encapsulated packets on the underlay.
    wire: &'static str,
}

fn ip(table: [&str; 2], side: usize) -> IpAddr {
    table[side].parse().unwrap()
}

/// Whether `ip` failed because the kernel has no such device kind or no fou.
fn kernel_lacks(err: &str) -> bool {
    [
        "Unknown device type",
        "Operation not supported",
        "Protocol not supported",
        "No such file or directory",
        "genl: ",
        "Object \"fou\" is unknown",
    ]
    .iter()
    .any(|m| err.contains(m))
}

/// The kernel device's rx and tx packet counts (`ip -s -j link show`).
fn device_packets(ns: &NetNs) -> (u64, u64) {
    let json = common::ip(ns, &["-s", "-j", "link", "show", "dev", DEV]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let stats = &v[0]["stats64"];
    let n = |dir: &str| {
        stats[dir]["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("{json}"))
    };
    (n("rx"), n("tx"))
}

/// Whether a tcpdump line of the underlay shows an encapsulated echo request or reply (tcpdump
/// does not decode what fou carries: there, a UDP datagram of the echo's size).
fn is_echo(line: &str, case: &Case) -> bool {
    if case.fou_ipproto.is_some() {
        line.contains("UDP, length 84") || line.contains("UDP, length 104")
    } else {
        line.contains("echo request") || line.contains("echo reply")
    }
}

/// The outer source address (with `.port` for UDP) of a tcpdump line: the word after the
/// first `IP ` or `IP6 `.
fn outer_source(line: &str) -> Option<&str> {
    let v4 = line.find("IP ").map(|i| i + 3);
    let v6 = line.find("IP6 ").map(|i| i + 4);
    let at = match (v4, v6) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    line[at..].split_whitespace().next()
}

fn decapsulated(c: &DecapCounters, encap: Encap) -> u64 {
    match encap {
        Encap::Ipip => c.ipip.packets,
        Encap::Gre { .. } => c.gre.packets,
        Encap::Udp { .. } => c.udp.packets,
        other => panic!("no decap counter for {other:?}"),
    }
}

fn run(case: &Case) {
    if !common::privileged(case.test) {
        return;
    }
    let net = common::two_hosts();
    let (a, b) = (net.ns(0), net.ns(1));
    for (side, ns) in [a, b].into_iter().enumerate() {
        common::add_loopback_addresses(ns, INNER4[side], INNER6[side]);
    }
    let outer = if case.outer_v6 { OUTER6 } else { OUTER4 };

    // B: the kernel's device, as its manual page configures it.
    if let Some(proto) = case.fou_ipproto {
        let port = FOU_PORT.to_string();
        let proto = proto.to_string();
        let mut args = vec!["fou", "add", "port", &port, "ipproto", &proto];
        if case.outer_v6 {
            args.insert(0, "-6");
        }
        if let Err(e) = common::try_ip(b, &args) {
            assert!(kernel_lacks(&e), "{e}");
            common::skipped_for_kernel(case.test, "fou receive ports (CONFIG_NET_FOU)");
            return;
        }
    }
    let link = case.link.replace("{A}", outer[0]).replace("{B}", outer[1]);
    let mut args = vec!["link", "add", DEV, "type"];
    args.extend(link.split_whitespace());
    if let Err(e) = common::try_ip(b, &args) {
        assert!(kernel_lacks(&e), "{e}");
        common::skipped_for_kernel(case.test, &format!("{} devices ({})", args[4], case.config));
        return;
    }
    common::ip(b, &["link", "set", DEV, "up"]);

    // A: lwtun's tunnel towards B and its decap of what B's device sends.
    let underlay = net.device(0, "to1");
    let mut nl = Netlink::open_in(a).unwrap();
    let mut tunnel = Tunnel::load().unwrap();
    let mut decap = Decap::load().unwrap();
    decap.add_local(ip(outer, 0)).unwrap();
    let mut peer = DecapPeer::host(ip(outer, 1));
    if let Encap::Gre { key: Some(k), .. } = case.encap {
        peer = peer.gre_key(k);
    }
    decap.add_peer(peer).unwrap();
    if let Encap::Udp { port } = case.encap {
        decap.add_udp_port(port).unwrap();
    }
    decap.attach(&underlay).unwrap();

    let mut ran = 0;
    for &inner_v6 in case.inner {
        let (inner, prefix) = if inner_v6 {
            (INNER6, PREFIX6)
        } else {
            (INNER4, PREFIX4)
        };
        let what = format!(
            "{} inner {}",
            case.test,
            if inner_v6 { "IPv6" } else { "IPv4" }
        );
        // lwtun's decap of B's packets needs a change of family (Linux 6.3).
        if inner_v6 != case.outer_v6 && !common::kernel_has(&what, Feature::DecapL3) {
            continue;
        }
        ran += 1;
        // Both ways into the tunnel.
        let route = tunnel
            .route(prefix[1].parse().unwrap())
            .device(&underlay)
            .source(ip(inner, 0))
            .headroom(lwtun::tunnel::WORST_CASE_ENCAP);
        tunnel.steer(&mut nl, route).unwrap();
        tunnel
            .peers_mut()
            .replace(
                prefix[1].parse().unwrap(),
                EncapPeer::new(ip(outer, 1), ip(outer, 0), case.encap),
            )
            .unwrap();
        let fam = if inner_v6 { "-6" } else { "-4" };
        common::ip(
            b,
            &[fam, "route", "add", prefix[0], "dev", DEV, "src", inner[1]],
        );

        let peer_packets = || {
            tunnel
                .peers()
                .stats(prefix[1].parse().unwrap())
                .unwrap()
                .packets
        };
        let (sent0, decap0, dev0) = (
            peer_packets(),
            decapsulated(&decap.counters().unwrap(), case.encap),
            device_packets(b),
        );

        // Ping A -> B and B -> A: requests and replies, each way encapsulated on the wire.
        let cap = Capture::start(b, "to0", case.wire, 100);
        for (from, to) in [(0, 1), (1, 0)] {
            let p = common::ping_with(
                net.ns(from),
                ip(inner, to),
                3,
                &["-I", inner[from], "-i", "0.1"],
            );
            assert_eq!(
                p.received,
                3,
                "{what}: ping {from}->{to}\n{}\nB's device: {}\nA's decap: {:?}\nA's peer: {:?}",
                p.output,
                common::ip(b, &["-s", "-s", "link", "show", "dev", DEV]),
                decap.counters().unwrap(),
                tunnel.peers().stats(prefix[1].parse().unwrap()).unwrap(),
            );
        }
        let lines = cap.finish(Duration::from_millis(500));
        let echoes_from = |side: usize| {
            lines
                .iter()
                .filter(|l| is_echo(l, case))
                .filter(|l| outer_source(l).is_some_and(|s| s.starts_with(outer[side])))
                .count()
        };
        assert!(
            echoes_from(0) >= 6 && echoes_from(1) >= 6,
            "{what}: 6 encapsulated echoes each way matching `{}` on the underlay: {lines:#?}",
            case.wire
        );

        // Content-checked TCP both ways.
        for (client, server) in [(0, 1), (1, 0)] {
            let t =
                common::tcp_stream(net.ns(server), net.ns(client), ip(inner, server), TCP_BYTES);
            assert!(t.complete(), "{what}: TCP {client}->{server}: {t:?}");
            println!(
                "{what}: TCP {client}->{server}: {TCP_BYTES} bytes in {:?}",
                t.elapsed
            );
        }

        // Both ends counted it: lwtun's peer (A -> B) and decap (B -> A), B's device both ways.
        let sent = peer_packets() - sent0;
        let decapped = decapsulated(&decap.counters().unwrap(), case.encap) - decap0;
        let dev = device_packets(b);
        let (rx, tx) = (dev.0 - dev0.0, dev.1 - dev0.1);
        assert!(sent >= 6, "{what}: lwtun's peer counted {sent} packets");
        assert!(
            decapped >= 6,
            "{what}: lwtun's decap counted {decapped} packets"
        );
        assert!(
            rx >= 6 && tx >= 6,
            "{what}: B's {DEV} received {rx} packets (lwtun sent {sent}) and sent {tx} (lwtun \
             decapsulated {decapped})"
        );
        common::ip(b, &[fam, "route", "del", prefix[0], "dev", DEV]);
    }
    // Before Linux 6.3 what the kernel's device sends of the other family (its IPv6 link-local
    // chatter inside IPv4, for one) cannot be decapsulated: dropped and counted as errors.
    let c = decap.counters().unwrap();
    let expected = if Feature::DecapL3.check().is_err() {
        c.error.packets
    } else {
        0
    };
    assert_eq!(
        c.dropped() - expected,
        0,
        "{}: lwtun's decap dropped packets: {c:?}",
        case.test
    );
    if ran == 0 {
        common::skipped_for_kernel(case.test, Feature::DecapL3.name());
    }
}

#[test]
fn kernel_ipip_4in4() {
    run(&Case {
        test: "kernel_ipip_4in4",
        link: "ipip remote {A} local {B}",
        config: "CONFIG_NET_IPIP",
        outer_v6: false,
        inner: &[false],
        fou_ipproto: None,
        encap: Encap::Ipip,
        wire: "ip proto 4",
    });
}

#[test]
fn kernel_sit_6in4() {
    run(&Case {
        test: "kernel_sit_6in4",
        link: "sit remote {A} local {B}",
        config: "CONFIG_IPV6_SIT",
        outer_v6: false,
        inner: &[true],
        fou_ipproto: None,
        encap: Encap::Ipip,
        wire: "ip proto 41",
    });
}

#[test]
fn kernel_gre_4in4_and_6in4() {
    run(&Case {
        test: "kernel_gre_4in4_and_6in4",
        link: "gre remote {A} local {B}",
        config: "CONFIG_NET_IPGRE",
        outer_v6: false,
        inner: &[false, true],
        fou_ipproto: None,
        encap: Encap::Gre {
            key: None,
            checksum: false,
        },
        wire: "ip proto 47",
    });
}

#[test]
fn kernel_gre_key_and_checksum() {
    run(&Case {
        test: "kernel_gre_key_and_checksum",
        link: "gre remote {A} local {B} key 42 csum",
        config: "CONFIG_NET_IPGRE",
        outer_v6: false,
        inner: &[false, true],
        fou_ipproto: None,
        encap: Encap::Gre {
            key: Some(42),
            checksum: true,
        },
        wire: "ip proto 47",
    });
}

#[test]
fn kernel_ip6gre_4in6_and_6in6() {
    run(&Case {
        test: "kernel_ip6gre_4in6_and_6in6",
        link: "ip6gre remote {A} local {B} key 7",
        config: "CONFIG_IPV6_GRE",
        outer_v6: true,
        inner: &[true, false],
        fou_ipproto: None,
        encap: Encap::Gre {
            key: Some(7),
            checksum: false,
        },
        wire: "ip6 and not icmp6",
    });
}

#[test]
fn kernel_ip6tnl_4in6_and_6in6() {
    run(&Case {
        test: "kernel_ip6tnl_4in6_and_6in6",
        link: "ip6tnl mode any remote {A} local {B}",
        config: "CONFIG_IPV6_TUNNEL",
        outer_v6: true,
        inner: &[true, false],
        fou_ipproto: None,
        encap: Encap::Ipip,
        wire: "ip6 and not icmp6",
    });
}

#[test]
fn kernel_fou_ipip_4in4() {
    run(&Case {
        test: "kernel_fou_ipip_4in4",
        link: "ipip remote {A} local {B} encap fou encap-sport auto encap-dport 5555",
        config: "CONFIG_NET_IPIP and CONFIG_NET_FOU",
        outer_v6: false,
        inner: &[false],
        fou_ipproto: Some(4),
        encap: Encap::Udp { port: FOU_PORT },
        wire: "udp port 5555",
    });
}
