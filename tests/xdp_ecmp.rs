//! The XDP router spreads flows over a multipath (ECMP) route by their L4 ports, as the kernel
//! does with `fib_multipath_hash_policy` 1, with its route cache on (the default) and off, for
//! IPv4 and IPv6: 64 UDP flows (one source port each) between the same two addresses, each
//! next hop carries 40-60% of them, every flow stays on one next hop, and that next hop is the
//! one the kernel itself names for the flow (`ip route get ... ipproto udp sport S dport D`).
//! With policy 0 (addresses only) the same 64 flows all take one next hop: what the router
//! would do everywhere if it did not give the lookup the ports, so the spread checks can fail.
//!
//! Topology: sender S ─ router R ─┬─ sink A (10.92.0.2, fd00:92::2)
//!                                └─ sink B (10.93.0.2, fd00:93::2)
//! Both sinks own 10.94.0.1 and fd00:94::1 (on lo); R routes them through both:
//! `ip route add 10.94.0.1/32 nexthop via 10.92.0.2 dev ra nexthop via 10.93.0.2 dev rb`.
//! The router runs in native XDP on rs (S's link); ra and rb are its ports.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{device, ip, netns};
use lwtun::netns::NetNs;
use lwtun::xdp::{XdpMode, XdpOptions, XdpRouter, ROUTE_CACHE_DEFAULT_AGE};

const FLOWS: u16 = 64;
/// Datagrams per flow: the first is looked up, the next ones can come from the cache.
const ROUNDS: u8 = 4;
/// The sinks' port; flow `i` is sent from port `FIRST_SPORT + i`.
const PORT: u16 = 7100;
const FIRST_SPORT: u16 = 42000;
/// The kernel's multipath hash is keyed by a seed, random per namespace unless
/// `net.ipv4.fib_multipath_hash_seed` (Linux 6.11+, IPv6 too) fixes it: with it fixed, which
/// next hop each of the 64 flows takes is the same in every run.
const SEED: &str = "1";

const S4: Ipv4Addr = Ipv4Addr::new(10, 91, 0, 1);
const DST4: Ipv4Addr = Ipv4Addr::new(10, 94, 0, 1);
const S6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x91, 0, 0, 0, 0, 0, 1);
const DST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x94, 0, 0, 0, 0, 0, 1);

/// A sink: every datagram (run, flow, sequence: 4 bytes) that reaches its socket.
struct Sink(common::UdpSink);

impl Sink {
    fn start(ns: &NetNs) -> Sink {
        Sink(common::UdpSink::start(
            ns,
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, PORT)),
            4,
        ))
    }

    /// The flows of `run` that reached this sink, with how many of their datagrams did.
    fn flows(&self, run: u8) -> BTreeMap<u16, usize> {
        let mut flows = BTreeMap::new();
        for d in self.0.received() {
            if d[0] == run {
                *flows.entry(u16::from_be_bytes([d[1], d[2]])).or_default() += 1;
            }
        }
        flows
    }
}

struct Lab {
    r: NetNs,
    s: NetNs,
    a: NetNs,
    b: NetNs,
}

/// `ip` in `ns` with the words of `command`.
fn ipw(ns: &NetNs, command: &str) -> String {
    ip(ns, &command.split_whitespace().collect::<Vec<_>>())
}

/// R's device `dev` (10.NET.0.254, fd00:NET::254) joined to `peer_dev` in `peer` (host `host`).
fn veth(r: &NetNs, dev: &str, peer: &NetNs, peer_dev: &str, net: u8, host: u8) {
    let peer_ns = peer.name();
    ipw(
        r,
        &format!("link add {dev} type veth peer name {peer_dev} netns {peer_ns}"),
    );
    ipw(r, &format!("addr add 10.{net}.0.254/24 dev {dev}"));
    ipw(r, &format!("addr add fd00:{net}::254/64 dev {dev}"));
    ipw(
        peer,
        &format!("addr add 10.{net}.0.{host}/24 dev {peer_dev}"),
    );
    ipw(
        peer,
        &format!("addr add fd00:{net}::{host}/64 dev {peer_dev}"),
    );
    ipw(r, &format!("link set {dev} up"));
    ipw(peer, &format!("link set {peer_dev} up"));
}

fn lab() -> Lab {
    let (r, s, a, b) = (netns("ecr"), netns("ecs"), netns("eca"), netns("ecb"));
    veth(&r, "rs", &s, "s0", 91, 1);
    veth(&r, "ra", &a, "a0", 92, 2);
    veth(&r, "rb", &b, "b0", 93, 2);
    r.set_sysctl("net.ipv4.ip_forward", "1").unwrap();
    r.set_sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    // The sender's UDP checksums are finished in software (XDP redirects raw frames), and its
    // IPv6 packets carry no automatic flow label, which policy 0 would hash (so the policy-0
    // contrast below holds for IPv6 too).
    common::tx_checksum_off(&s, "s0");
    s.set_sysctl("net.ipv6.auto_flowlabels", "0").unwrap();
    ipw(&s, "route add default via 10.91.0.254");
    ipw(&s, "-6 route add default via fd00:91::254");
    for (h, net) in [(&a, 92), (&b, 93)] {
        common::add_loopback_addresses(h, &DST4.to_string(), &DST6.to_string());
        ipw(h, &format!("route add default via 10.{net}.0.254"));
        ipw(h, &format!("-6 route add default via fd00:{net}::254"));
    }
    ipw(
        &r,
        "route add 10.94.0.1/32 nexthop via 10.92.0.2 dev ra nexthop via 10.93.0.2 dev rb",
    );
    ipw(
        &r,
        "-6 route add fd00:94::1/128 nexthop via fd00:92::2 dev ra nexthop via fd00:93::2 dev rb",
    );
    // Every neighbour resolved, so the first datagram of every flow takes the fast path.
    for (ns, addr) in [
        (&r, "10.92.0.2"),
        (&r, "10.93.0.2"),
        (&r, "fd00:92::2"),
        (&r, "fd00:93::2"),
        (&s, "10.91.0.254"),
        (&s, "fd00:91::254"),
    ] {
        let p = common::ping(ns, addr.parse().unwrap(), 1);
        assert_eq!(p.received, 1, "{}", p.output);
    }
    Lab { r, s, a, b }
}

/// Sets the multipath hash policy of both families in R; the router is told to forget what it
/// cached, since the kernel announces no sysctl change.
fn set_policy(lab: &Lab, router: &XdpRouter, policy: &str) {
    lab.r
        .set_sysctl("net.ipv4.fib_multipath_hash_policy", policy)
        .unwrap();
    lab.r
        .set_sysctl("net.ipv6.fib_multipath_hash_policy", policy)
        .unwrap();
    router.flush_route_cache().unwrap();
}

/// The device R's kernel forwards `flow` through: `ip route get` with the flow's protocol and
/// ports, as received on rs.
fn kernel_choice(lab: &Lab, src: IpAddr, dst: IpAddr, flow: u16) -> String {
    let sport = FIRST_SPORT + flow;
    let out = ipw(
        &lab.r,
        &format!("route get {dst} from {src} iif rs ipproto udp sport {sport} dport {PORT}"),
    );
    let dev = out
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .unwrap_or_else(|| panic!("no device in `ip route get`: {out}"));
    dev.to_string()
}

/// Where the 64 flows of one run went.
struct Spread {
    /// Flows that reached A, and B.
    at_a: usize,
    at_b: usize,
    /// Frames the router forwarded (looked up or from its cache) and took from its cache.
    forwarded: u64,
    cache_hits: u64,
    /// Each flow's next hop ("ra" or "rb").
    hops: Vec<String>,
}

impl Spread {
    /// Whether each next hop carries 40-60% of the flows.
    fn even(&self) -> bool {
        let (low, high) = (FLOWS as usize * 2 / 5, FLOWS as usize * 3 / 5);
        (low..=high).contains(&self.at_a) && (low..=high).contains(&self.at_b)
    }
}

/// Sends `ROUNDS` datagrams on each of the 64 flows from S to `dst`, and checks that every
/// datagram arrived, each flow at one sink only, the one R's kernel names for it.
fn run(lab: &Lab, router: &XdpRouter, sinks: (&Sink, &Sink), id: u8, dst: IpAddr) -> Spread {
    let src: IpAddr = match dst {
        IpAddr::V4(_) => S4.into(),
        IpAddr::V6(_) => S6.into(),
    };
    let sockets: Vec<UdpSocket> = (0..FLOWS)
        .map(|i| {
            lab.s
                .enter(|| {
                    UdpSocket::bind(SocketAddr::new(src, FIRST_SPORT + i))
                        .map_err(|e| lwtun::Error::io("bind", e))
                })
                .unwrap()
        })
        .collect();
    let before = router.fib_stats().unwrap();
    for round in 0..ROUNDS {
        for (i, socket) in sockets.iter().enumerate() {
            let flow = (i as u16).to_be_bytes();
            socket
                .send_to(&[id, flow[0], flow[1], round], SocketAddr::new(dst, PORT))
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (a, b) = sinks;
    let deadline = Instant::now() + common::patient(Duration::from_secs(2));
    let total = |f: &BTreeMap<u16, usize>| f.values().sum::<usize>();
    while total(&a.flows(id)) + total(&b.flows(id)) < FLOWS as usize * ROUNDS as usize
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let after = router.fib_stats().unwrap();
    let (at_a, at_b) = (a.flows(id), b.flows(id));
    let mut hops = Vec::new();
    for flow in 0..FLOWS {
        let (na, nb) = (
            at_a.get(&flow).copied().unwrap_or(0),
            at_b.get(&flow).copied().unwrap_or(0),
        );
        let hop = match (na, nb) {
            (n, 0) if n == ROUNDS as usize => "ra",
            (0, n) if n == ROUNDS as usize => "rb",
            _ => panic!(
                "run {id}: flow {flow} (source port {}) is not on one next hop with all its \
                 {ROUNDS} datagrams: {na} at A, {nb} at B",
                FIRST_SPORT + flow
            ),
        };
        let kernel = kernel_choice(lab, src, dst, flow);
        assert_eq!(
            hop,
            kernel,
            "run {id}: flow {flow} (source port {}) went through {hop}, the kernel routes it \
             through {kernel}",
            FIRST_SPORT + flow
        );
        hops.push(hop.to_string());
    }
    Spread {
        at_a: at_a.len(),
        at_b: at_b.len(),
        forwarded: after.success - before.success,
        cache_hits: after.cache_hits - before.cache_hits,
        hops,
    }
}

/// Checks a policy-1 run: every frame forwarded in XDP, each next hop with 40-60% of the flows
/// (where the hash seed is fixed, see [`SEED`]).
fn check_even(what: &str, spread: &Spread, seeded: bool) {
    println!(
        "{what}: {} flows through A, {} through B; {} frames forwarded, {} from the cache",
        spread.at_a, spread.at_b, spread.forwarded, spread.cache_hits
    );
    assert_eq!(
        spread.forwarded,
        FLOWS as u64 * ROUNDS as u64,
        "{what}: every frame forwarded in XDP"
    );
    if seeded {
        assert!(
            spread.even(),
            "{what}: each next hop carries 40-60% of {FLOWS} flows; A has {}, B {}",
            spread.at_a,
            spread.at_b
        );
    } else if !spread.even() {
        // Every flow went where the kernel routes it (checked in `run`), so the kernel's own
        // keyed hash gave this skew; without the seed sysctl the seed cannot be fixed.
        println!(
            "NOTE {what}: this kernel has no net.ipv4.fib_multipath_hash_seed (Linux 6.11+) and \
             its random seed routes {} of {FLOWS} flows through A: the 40-60% bound is not \
             asserted, the per-flow agreement with the kernel is",
            spread.at_a
        );
    }
}

#[test]
fn flows_spread_over_a_multipath_route_by_their_ports() {
    require!();
    let lab = lab();
    let seeded = lab
        .r
        .set_sysctl("net.ipv4.fib_multipath_hash_seed", SEED)
        .is_ok();
    if !seeded {
        println!("net.ipv4.fib_multipath_hash_seed is not there (before Linux 6.11): random seed");
    }
    let router = XdpRouter::load().unwrap();
    router
        .add_port_with_receiver(&device(&lab.r, "ra"), &device(&lab.a, "a0"))
        .unwrap();
    router
        .add_port_with_receiver(&device(&lab.r, "rb"), &device(&lab.b, "b0"))
        .unwrap();
    let opts = XdpOptions {
        mode: XdpMode::Native,
        ..Default::default()
    };
    let _att = router.attach(&device(&lab.r, "rs"), opts).unwrap();
    let status = router.route_cache_status().unwrap();
    assert!(
        status.max_age.is_some() && status.follows_changes,
        "the cache is on by default: {status:?}"
    );
    let sinks = (&Sink::start(&lab.a), &Sink::start(&lab.b));
    let families: [(IpAddr, u8); 2] = [(DST4.into(), 10), (DST6.into(), 20)];
    let frames = FLOWS as u64 * ROUNDS as u64;

    // Policy 1, the router as it comes (its cache on).
    set_policy(&lab, &router, "1");
    let mut cached = Vec::new();
    for (dst, id) in families {
        let spread = run(&lab, &router, sinks, id, dst);
        let what = format!("{dst}, policy 1, route cache on");
        check_even(&what, &spread, seeded);
        // The first frame of a flow on each CPU it is received on is looked up, the others
        // come from the cache (half of them where the sender ran on both CPUs of a 2-CPU
        // machine); a quarter leaves room for a change notification that drops the cache.
        assert!(
            spread.cache_hits >= frames / 4,
            "{dst}: the cache served the flows: {} of {frames} frames",
            spread.cache_hits
        );
        cached.push(spread);
    }

    // Policy 1, every frame looked up: the same next hop for every flow.
    router.set_route_cache(None).unwrap();
    for ((dst, id), cached) in families.into_iter().zip(&cached) {
        let spread = run(&lab, &router, sinks, id + 1, dst);
        let what = format!("{dst}, policy 1, route cache off");
        check_even(&what, &spread, seeded);
        assert_eq!(spread.cache_hits, 0, "the cache is off");
        assert_eq!(
            cached.hops, spread.hops,
            "{dst}: every flow takes the same next hop with the cache on and off"
        );
    }

    // Policy 0 (addresses only): the 64 flows share one next hop. So the spread above is the
    // ports' doing, and the 40-60% bound catches a router that leaves them out.
    router
        .set_route_cache(Some(ROUTE_CACHE_DEFAULT_AGE))
        .unwrap();
    set_policy(&lab, &router, "0");
    for (dst, id) in families {
        let spread = run(&lab, &router, sinks, id + 2, dst);
        println!(
            "{dst}, policy 0, route cache on: {} flows through A, {} through B",
            spread.at_a, spread.at_b
        );
        assert_eq!(spread.forwarded, frames, "every frame forwarded in XDP");
        assert!(
            spread.at_a == FLOWS as usize || spread.at_b == FLOWS as usize,
            "{dst}, policy 0: all flows on one next hop; A has {}, B {}",
            spread.at_a,
            spread.at_b
        );
        assert!(!spread.even());
    }
    println!("{:?}", router.fib_stats().unwrap());
}
