//! Tunnel peers at run time and the path MTU, in namespaces of the test's own:
//! - a steady flow moves from one endpoint to another when its peer is replaced, losing nothing,
//!   and removing the peer applies the miss policy;
//! - a DF packet bigger than the path MTU minus the encap gets ICMP fragmentation-needed (IPv4)
//!   or packet-too-big (IPv6) from the tunnel router, and one that fits is encapsulated;
//! - IP-in-IP TCP with an inner IPv4 header needs the underlay fix-up (without it the kernel's
//!   GSO path refuses the packets and the stream stalls), which is what `Tunnel` attaches.

mod common;

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use ipnetwork::IpNetwork;
use lwtun::decap::{Decap, DecapPeer};
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::peer::{Encap, EncapPeer};
use lwtun::tunnel::Tunnel;

/// Runs `f` with the calling thread inside `ns`, then returns the thread to its namespace.
fn inside<T>(ns: &NetNs, f: impl FnOnce() -> T) -> T {
    let home: OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")
        .unwrap()
        .into();
    let target = ns.fd().unwrap();
    // SAFETY: setns on this thread with namespace fds we hold open.
    assert_eq!(
        unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) },
        0
    );
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    // SAFETY: as above, back to where the thread was.
    assert_eq!(
        unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) },
        0
    );
    out.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

/// `ping -c 1 -M do -s SIZE dst` in `ns`, its whole output (not quiet: the ICMP errors are
/// printed per packet).
fn ping_df(ns: &NetNs, dst: &str, size: u32) -> String {
    let out = ns
        .command("ping")
        .args([
            "-n",
            "-c",
            "1",
            "-W",
            "1",
            "-M",
            "do",
            "-s",
            &size.to_string(),
            dst,
        ])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .to_lowercase()
}

/// One tunnel endpoint: a tunnel whose peer for `prefix` is `remote` (from `local`), a route for
/// `prefix` out of `dev` with source `src`, and a decap for `local` accepting `from`.
struct Endpoint {
    tunnel: Tunnel,
    decap: Option<Decap>,
    _nl: Netlink,
}

// One endpoint's whole configuration, each argument named by its position in the doc above.
#[allow(clippy::too_many_arguments)]
fn endpoint(
    ns: &NetNs,
    dev: u32,
    prefix: &str,
    src: &str,
    remote: &str,
    local: &str,
    encap: Encap,
    from: &[&str],
) -> Endpoint {
    let mut nl = Netlink::open_in(ns.fd().unwrap().as_fd()).unwrap();
    let mut tunnel = Tunnel::load().unwrap();
    tunnel
        .peers_mut()
        .insert(
            net(prefix),
            EncapPeer::new(addr(remote), addr(local), encap),
        )
        .unwrap();
    let route = tunnel.route(net(prefix)).device(dev).source(addr(src));
    tunnel.steer(&mut nl, route).unwrap();
    tunnel.attach_underlay(dev, Some(ns)).unwrap();
    let decap = if from.is_empty() {
        None
    } else {
        let mut d = Decap::load().unwrap();
        d.add_local(addr(local)).unwrap();
        for f in from {
            d.add_peer(DecapPeer::host(addr(f))).unwrap();
        }
        inside(ns, || d.attach(dev)).unwrap();
        Some(d)
    };
    Endpoint {
        tunnel,
        decap,
        _nl: nl,
    }
}

/// A (ns 0) — B (ns 1, forwards) — C (ns 2); B and C both own 10.20.0.2 behind their tunnel
/// endpoints 10.77.0.2 and 10.77.1.2. A's peer for 10.20.0.0/16 moves from B to C while A pings
/// 10.20.0.2 every 10 ms: every request is answered. Then the peer goes and the drop policy
/// applies.
#[test]
fn replaced_peer_moves_a_steady_flow_without_loss() {
    if !common::privileged("replaced_peer_moves_a_steady_flow_without_loss") {
        return;
    }
    let line = common::line(3);
    for (i, a) in [
        (0, "10.30.0.1/32"),
        (1, "10.20.0.2/32"),
        (2, "10.20.0.2/32"),
    ] {
        common::ip(line.ns(i), &["link", "set", "lo", "up"]);
        common::ip(line.ns(i), &["addr", "add", a, "dev", "lo"]);
    }
    let gre = Encap::Gre {
        key: Some(5),
        checksum: false,
    };
    let mut a = endpoint(
        line.ns(0),
        line.ifindex(0, "to1"),
        "10.20.0.0/16",
        "10.30.0.1",
        "10.77.0.2",
        "10.77.0.1",
        gre,
        &["10.77.0.2", "10.77.1.2"],
    );
    let b = endpoint(
        line.ns(1),
        line.ifindex(1, "to0"),
        "10.30.0.0/16",
        "10.20.0.2",
        "10.77.0.1",
        "10.77.0.2",
        gre,
        &["10.77.0.1"],
    );
    let c = endpoint(
        line.ns(2),
        line.ifindex(2, "to1"),
        "10.30.0.0/16",
        "10.20.0.2",
        "10.77.0.1",
        "10.77.1.2",
        gre,
        &["10.77.0.1"],
    );
    let warm = common::ping_with(line.ns(0), addr("10.20.0.2"), 2, &["-I", "10.30.0.1"]);
    assert_eq!(
        warm.received, 2,
        "A to B through the tunnel: {}",
        warm.output
    );

    let ns0 = line.ns(0);
    let flow = std::thread::scope(|s| {
        let h = s.spawn(|| {
            common::ping_with(
                ns0,
                addr("10.20.0.2"),
                300,
                &["-I", "10.30.0.1", "-i", "0.01", "-W", "2"],
            )
        });
        std::thread::sleep(Duration::from_millis(1500));
        a.tunnel
            .peers_mut()
            .replace(
                net("10.20.0.0/16"),
                EncapPeer::new(addr("10.77.1.2"), addr("10.77.0.1"), gre),
            )
            .unwrap();
        h.join().unwrap()
    });
    assert_eq!(flow.transmitted, 300, "{}", flow.output);
    assert_eq!(
        flow.received, 300,
        "lost packets while moving: {}",
        flow.output
    );
    let at_b = b.decap.as_ref().unwrap().counters().unwrap().decapsulated();
    let at_c = c.decap.as_ref().unwrap().counters().unwrap().decapsulated();
    assert!(at_b > 20 && at_c > 20, "B decapsulated {at_b}, C {at_c}");
    assert_eq!(
        at_b + at_c,
        302,
        "every request decapsulated once: B {at_b} C {at_c}"
    );
    let stats = a.tunnel.peers().stats(net("10.20.0.0/16")).unwrap();
    assert_eq!(
        stats.packets, 302,
        "the replaced peer keeps its counters: {stats:?}"
    );
    // The replies came back through B's and C's own tunnels.
    let back = b.tunnel.peers().stats(net("10.30.0.0/16")).unwrap().packets
        + c.tunnel.peers().stats(net("10.30.0.0/16")).unwrap().packets;
    assert_eq!(back, 302);

    a.tunnel.peers_mut().remove(net("10.20.0.0/16")).unwrap();
    let gone = common::ping_with(line.ns(0), addr("10.20.0.2"), 3, &["-I", "10.30.0.1"]);
    assert_eq!(gone.received, 0, "{}", gone.output);
    assert_eq!(a.tunnel.peers().miss_counters().unwrap().dropped_v4, 3);
}

/// client (ns 0) — router R (ns 1, tunnel to ns 2 with GRE over IPv4) — ns 2. The client's DF
/// packets that do not fit 1500 - 24 get ICMP back from R; those that fit are encapsulated.
#[test]
fn path_mtu_counts_the_encap() {
    if !common::privileged("path_mtu_counts_the_encap") {
        return;
    }
    let line = common::line(3);
    common::ip(
        line.ns(0),
        &["route", "add", "10.20.0.0/16", "via", "10.77.0.2"],
    );
    common::ip(
        line.ns(0),
        &["-6", "route", "add", "fd20::/16", "via", "fd77:0::2"],
    );
    let mut r = endpoint(
        line.ns(1),
        line.ifindex(1, "to2"),
        "10.20.0.0/16",
        "10.77.0.2",
        "10.77.1.2",
        "10.77.1.1",
        Encap::Gre {
            key: None,
            checksum: false,
        },
        &[],
    );
    r.tunnel
        .peers_mut()
        .insert(
            net("fd20::/16"),
            EncapPeer::new(
                addr("10.77.1.2"),
                addr("10.77.1.1"),
                Encap::Gre {
                    key: None,
                    checksum: false,
                },
            ),
        )
        .unwrap();
    let mut nl = Netlink::open_in(line.ns(1).fd().unwrap().as_fd()).unwrap();
    let route6 = r
        .tunnel
        .route(net("fd20::/16"))
        .device(line.ifindex(1, "to2"));
    r.tunnel.steer(&mut nl, route6).unwrap();
    assert_eq!(r.tunnel.headroom(), 24);

    // IPv4: 1449 + 28 = 1477 > 1476.
    let big = ping_df(line.ns(0), "10.20.0.9", 1449);
    assert!(
        big.contains("frag needed") && big.contains("mtu = 1476"),
        "expected fragmentation-needed with mtu 1476:\n{big}"
    );
    let fits = ping_df(line.ns(0), "10.20.0.9", 1448);
    assert!(!fits.contains("mtu"), "{fits}");
    let s4 = r.tunnel.peers().stats(net("10.20.0.0/16")).unwrap();
    assert_eq!((s4.packets, s4.bytes), (1, 1476), "{s4:?}");

    // IPv6: 1429 + 48 = 1477 > 1476.
    let big6 = ping_df(line.ns(0), "fd20::9", 1429);
    assert!(
        big6.contains("packet too big") && big6.contains("mtu=1476"),
        "expected packet-too-big with mtu 1476:\n{big6}"
    );
    let fits6 = ping_df(line.ns(0), "fd20::9", 1428);
    assert!(!fits6.contains("mtu"), "{fits6}");
    let s6 = r.tunnel.peers().stats(net("fd20::/16")).unwrap();
    assert_eq!((s6.packets, s6.bytes), (1, 1476), "{s6:?}");
}

/// IP-in-IP, inner IPv4: with the fix-up (what `Tunnel::attach_underlay` does) a TCP stream
/// runs; without it the kernel refuses every GSO packet and the stream stalls.
#[test]
fn ipip_tcp_needs_the_underlay_fixup() {
    if !common::privileged("ipip_tcp_needs_the_underlay_fixup") {
        return;
    }
    let line = common::two_hosts();
    for (i, a) in [(0, "10.30.0.1/32"), (1, "10.20.0.2/32")] {
        common::ip(line.ns(i), &["link", "set", "lo", "up"]);
        common::ip(line.ns(i), &["addr", "add", a, "dev", "lo"]);
    }
    let mk =
        |ns: &NetNs, dev: u32, prefix: &str, src: &str, remote: &str, local: &str, fix: bool| {
            let mut nl = Netlink::open_in(ns.fd().unwrap().as_fd()).unwrap();
            let mut t = Tunnel::load().unwrap();
            t.peers_mut()
                .insert(
                    net(prefix),
                    EncapPeer::new(addr(remote), addr(local), Encap::Ipip),
                )
                .unwrap();
            let route = t.route(net(prefix)).device(dev).source(addr(src));
            t.steer(&mut nl, route).unwrap();
            if fix {
                t.attach_underlay(dev, Some(ns)).unwrap();
            }
            let mut d = Decap::load().unwrap();
            d.add_local(addr(local)).unwrap();
            d.add_peer(DecapPeer::host(addr(remote))).unwrap();
            inside(ns, || d.attach(dev)).unwrap();
            (t, d, nl)
        };
    let a_dev = line.ifindex(0, "to1");
    let b_dev = line.ifindex(1, "to0");
    // A sends without the fix-up, B (the receiver's ACKs are small, not GSO) with it.
    let mut a = mk(
        line.ns(0),
        a_dev,
        "10.20.0.0/16",
        "10.30.0.1",
        "10.77.0.2",
        "10.77.0.1",
        false,
    );
    let _b = mk(
        line.ns(1),
        b_dev,
        "10.30.0.0/16",
        "10.20.0.2",
        "10.77.0.1",
        "10.77.0.2",
        true,
    );
    let ping = common::ping_with(line.ns(0), addr("10.20.0.2"), 2, &["-I", "10.30.0.1"]);
    assert_eq!(ping.received, 2, "ping needs no GSO: {}", ping.output);
    let stalled = common::tcp_stream(line.ns(1), line.ns(0), addr("10.20.0.2"), 4 << 20);
    assert!(
        !stalled.complete(),
        "without the fix-up the kernel should refuse GSO: {stalled:?}"
    );
    // Without the fix-up the device cannot segment a packet with the placeholder next header 0
    // (no offload for protocol 0) and drops it: nothing malformed reaches the wire.
    let cap = common::Capture::start(line.ns(1), "to0", "ip proto 0", 1);
    let _ = common::tcp_stream(line.ns(1), line.ns(0), addr("10.20.0.2"), 1 << 20);
    assert!(
        cap.finish(Duration::from_secs(1)).is_empty(),
        "placeholder packets leaked"
    );
    a.0.attach_underlay(a_dev, Some(line.ns(0))).unwrap();
    let t = common::tcp_stream(line.ns(1), line.ns(0), addr("10.20.0.2"), 4 << 20);
    assert!(t.complete(), "with the fix-up: {t:?}");
}

/// lwt_in: a router encapsulates forwarded traffic as it arrives (an input route running
/// `encap_in`, as the kernel selftests' "in" route does), and the far end decapsulates it.
/// client (ns 0) — router R (ns 1, input route 10.20.0.0/16 → encap_in, GRE to ns 2) — B (ns 2).
#[test]
fn input_route_encapsulates_forwarded_traffic() {
    if !common::privileged("input_route_encapsulates_forwarded_traffic") {
        return;
    }
    let line = common::line(3);
    common::ip(line.ns(2), &["link", "set", "lo", "up"]);
    common::ip(line.ns(2), &["addr", "add", "10.20.0.2/32", "dev", "lo"]);
    common::ip(
        line.ns(0),
        &["route", "add", "10.20.0.0/16", "via", "10.77.0.2"],
    );
    // B answers the client directly over the underlay (its line routes know 10.77.0.0/24).
    let mut t = Tunnel::load().unwrap();
    t.peers_mut()
        .insert(
            net("10.20.0.0/16"),
            EncapPeer::new(
                addr("10.77.1.2"),
                addr("10.77.1.1"),
                Encap::Gre {
                    key: None,
                    checksum: false,
                },
            ),
        )
        .unwrap();
    // After an encap at lwt_in the kernel routes the packet again as *input* (BPF_LWT_REROUTE):
    // its outer source is R's own address, which input routing rejects as martian unless the
    // receiving device accepts local sources.
    line.ns(1)
        .set_sysctl("net.ipv4.conf.all.accept_local", "1")
        .unwrap();
    let mut nl = Netlink::open_in(line.ns(1).fd().unwrap().as_fd()).unwrap();
    let route = lwtun::route::LwtRoute::new(net("10.20.0.0/16"))
        .device(line.ifindex(1, "to2"))
        .program(lwtun::route::Hook::In, t.input_program());
    t.steer(&mut nl, route).unwrap();
    let mut d = Decap::load().unwrap();
    d.add_local(addr("10.77.1.2")).unwrap();
    d.add_peer(DecapPeer::host(addr("10.77.1.1"))).unwrap();
    let b_dev = line.ifindex(2, "to1");
    inside(line.ns(2), || d.attach(b_dev)).unwrap();
    let cap = common::Capture::start(line.ns(2), "to1", "ip proto 47", 3);
    let p = common::ping(line.ns(0), addr("10.20.0.2"), 3);
    assert_eq!(p.received, 3, "{}", p.output);
    assert_eq!(
        cap.finish(Duration::from_secs(2)).len(),
        3,
        "GRE on B's underlay"
    );
    assert_eq!(t.peers().stats(net("10.20.0.0/16")).unwrap().packets, 3);
    assert_eq!(d.counters().unwrap().decapsulated(), 3);
}
