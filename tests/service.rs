//! Services end to end: a VIP served by weighted backends (glb-director's forwarding table,
//! Katran's ring). A client namespace sends UDP flows to the VIP through a [`Services`] route;
//! each backend namespace decapsulates (lwtun's [`Decap`]) and receives them on the VIP. The
//! tests check which backend got each flow, that the data plane's own pick (test_run) agrees,
//! that a swapped table keeps established flows, that a drained backend's flows move and no
//! others, and the consistency figures over 100 000 synthetic flows.
//!
//! ```text
//!                 ┌── b0 ═══ veth 10.78.0.0/24 ═══ c ── B0 (VIP 10.96.0.10 on lo, decap)
//!  C (10.30.0.1) ─┼── b1 ═══ veth 10.78.1.0/24 ═══ c ── B1
//!                 └── bN ...
//! ```

mod common;

use common::packets;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lwtun::decap::{Decap, DecapPeer};
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::peer::{Encap, EncapPeer};
use lwtun::route::InstalledRoute;
use lwtun::service::{Backend, HealthChange, HealthCheck, HealthConfig, Services};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 1);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const PORT: u16 = 7000;

/// Synthetic flows the consistency figures are measured over.
const FLOWS: u32 = 100_000;

fn vip_net() -> ipnetwork::IpNetwork {
    "10.96.0.10/32".parse().unwrap()
}

const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd30, 0, 0, 0, 0, 0, 0, 1);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd96, 0, 0, 0, 0, 0, 0, 0x10);

fn client_side6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd78, i as u16, 0, 0, 0, 0, 0, 1)
}

fn backend_side6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd78, i as u16, 0, 0, 0, 0, 0, 2)
}

fn client_side(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 78, i as u8, 1)
}

fn backend_side(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 78, i as u8, 2)
}

struct BackendHost {
    sink: common::UdpSink,
    decap: Option<Decap>,
    ns: NetNs,
}

/// Backend `i`'s decapsulation of the client's packets, on its device `c`.
fn decap(ns: &NetNs, i: usize) -> Decap {
    ns.enter(|| {
        let mut d = Decap::load()?;
        d.add_local(IpAddr::V4(backend_side(i)))?;
        d.add_local(IpAddr::V6(backend_side6(i)))?;
        d.add_peer(DecapPeer::host(IpAddr::V4(client_side(i))))?;
        d.add_peer(DecapPeer::host(IpAddr::V6(client_side6(i))))?;
        d.add_udp_port(5555)?;
        let mut nl = Netlink::open()?;
        d.attach(&nl.device("c")?)?;
        Ok(d)
    })
    .unwrap()
}

struct Star {
    // Field order is drop order: the route before the program, the hosts' sinks and decaps
    // before their namespaces.
    _route: InstalledRoute,
    services: Services,
    nl: Netlink,
    backends: Vec<BackendHost>,
    client: NetNs,
}

fn backend(i: usize, encap: Encap) -> Backend {
    Backend::new(EncapPeer::new(
        IpAddr::V4(backend_side(i)),
        IpAddr::V4(client_side(i)),
        encap,
    ))
}

/// A client and `n` backend hosts; the VIP's service has backends `0..serving`.
fn star(n: usize, serving: usize) -> Star {
    star_with(n, serving, Services::builder().rows(4_099))
}

/// [`star`] with the services loaded by `builder`.
fn star_with(n: usize, serving: usize, builder: lwtun::service::ServicesBuilder) -> Star {
    let client = common::netns("svc-c");
    client
        .set_sysctl("net.ipv4.conf.all.rp_filter", "0")
        .unwrap();
    common::ip(
        &client,
        &["addr", "add", &format!("{CLIENT}/32"), "dev", "lo"],
    );
    common::ip(
        &client,
        &["-6", "addr", "add", &format!("{CLIENT6}/128"), "dev", "lo"],
    );
    let mut hosts = Vec::new();
    let mut devs = Vec::new();
    for i in 0..n {
        let ns = common::netns(&format!("svc-b{i}"));
        let dev = format!("b{i}");
        common::ip(
            &client,
            &[
                "link",
                "add",
                &dev,
                "type",
                "veth",
                "peer",
                "name",
                "c",
                "netns",
                ns.name(),
            ],
        );
        common::ip(
            &client,
            &[
                "addr",
                "add",
                &format!("{}/24", client_side(i)),
                "dev",
                &dev,
            ],
        );
        common::ip(
            &client,
            &[
                "-6",
                "addr",
                "add",
                &format!("{}/64", client_side6(i)),
                "dev",
                &dev,
                "nodad",
            ],
        );
        common::ip(&client, &["link", "set", &dev, "up"]);
        common::ip(
            &ns,
            &[
                "addr",
                "add",
                &format!("{}/24", backend_side(i)),
                "dev",
                "c",
            ],
        );
        common::ip(
            &ns,
            &[
                "-6",
                "addr",
                "add",
                &format!("{}/64", backend_side6(i)),
                "dev",
                "c",
                "nodad",
            ],
        );
        common::ip(
            &ns,
            &["-6", "addr", "add", &format!("{VIP6}/128"), "dev", "lo"],
        );
        common::ip(&ns, &["link", "set", "c", "up"]);
        common::ip(
            &ns,
            &[
                "-6",
                "route",
                "add",
                &format!("{CLIENT6}/128"),
                "via",
                &client_side6(i).to_string(),
            ],
        );
        common::ip(&ns, &["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
        common::ip(
            &ns,
            &[
                "route",
                "add",
                &format!("{CLIENT}/32"),
                "via",
                &client_side(i).to_string(),
            ],
        );
        common::wait_oper_up(&ns, &["c".to_string()]);
        devs.push(dev);
        let decap = decap(&ns, i);
        // The IPv6 wildcard: the IPv4 VIP's datagrams and the IPv6 one's.
        let sink = common::UdpSink::start(
            &ns,
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), PORT),
            5,
        );
        hosts.push(BackendHost {
            sink,
            decap: Some(decap),
            ns,
        });
    }
    common::wait_oper_up(&client, &devs);
    let mut services = builder.load().unwrap();
    let list: Vec<Backend> = (0..serving).map(|i| backend(i, Encap::Ipip)).collect();
    services.set(vip_net(), &list).unwrap();
    let mut nl = Netlink::open_in(&client).unwrap();
    let b0 = nl.device("b0").unwrap();
    let route = services
        .route(vip_net())
        .device(&b0)
        .source(IpAddr::V4(CLIENT))
        .install(&mut nl)
        .unwrap();
    Star {
        _route: route,
        services,
        nl,
        backends: hosts,
        client,
    }
}

/// UDP flows from the client: one socket (one source port) per flow, kept for later rounds.
struct Flows {
    sockets: Vec<UdpSocket>,
    to: SocketAddr,
}

impl Flows {
    /// `n` flows from the client's IPv4 address to the IPv4 VIP.
    fn open(ns: &NetNs, n: usize) -> Flows {
        Flows::between(ns, n, IpAddr::V4(CLIENT), IpAddr::V4(VIP))
    }

    fn between(ns: &NetNs, n: usize, from: IpAddr, to: IpAddr) -> Flows {
        let sockets = ns
            .enter(|| {
                (0..n)
                    .map(|_| {
                        UdpSocket::bind(SocketAddr::new(from, 0))
                            .map_err(|e| lwtun::Error::io("bind", e))
                    })
                    .collect::<lwtun::Result<Vec<_>>>()
            })
            .unwrap();
        Flows {
            sockets,
            to: SocketAddr::new(to, PORT),
        }
    }

    /// Sends one datagram per flow in `range`: the flow's number (4 bytes) and `round`.
    fn send(&self, range: std::ops::Range<usize>, round: u8) {
        for f in range {
            let mut msg = (f as u32).to_be_bytes().to_vec();
            msg.push(round);
            msg.extend_from_slice(&[0u8; 27]);
            // A packet the data plane drops fails its send with EPERM: loss shows at the
            // backends (where_they_went) and in the counters instead.
            if let Err(e) = self.sockets[f].send_to(&msg, self.to) {
                assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
            }
        }
    }

    fn port(&self, f: usize) -> u16 {
        self.sockets[f].local_addr().unwrap().port()
    }
}

/// Which backend got each flow of `range` in `round`, once all arrived (panics after 5 s,
/// with `why` for the message).
fn where_they_went(
    backends: &[BackendHost],
    range: std::ops::Range<usize>,
    round: u8,
    why: &dyn Fn() -> String,
) -> BTreeMap<usize, usize> {
    let until = Instant::now() + common::patient(Duration::from_secs(5));
    loop {
        let mut got = BTreeMap::new();
        for (b, host) in backends.iter().enumerate() {
            for p in host.sink.received() {
                let f = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
                if p[4] == round && range.contains(&f) {
                    assert!(
                        got.insert(f, b).is_none(),
                        "flow {f} of round {round} reached two backends"
                    );
                }
            }
        }
        if got.len() == range.len() {
            return got;
        }
        assert!(
            Instant::now() < until,
            "round {round}: {} of {} flows arrived; {}",
            got.len(),
            range.len(),
            why()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Star {
    /// [`where_they_went`] with the data plane's counters for a failure's message.
    fn where_they_went(&self, range: std::ops::Range<usize>, round: u8) -> BTreeMap<usize, usize> {
        where_they_went(&self.backends, range, round, &|| {
            format!(
                "counters {:?}, backends {:?}",
                self.services.counters(),
                self.services.backend_stats(vip_net())
            )
        })
    }
}

/// An Ethernet frame carrying an IPv4 UDP packet (UDP checksum 0: the pick reads addresses
/// and ports only).
fn udp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let udp = packets::udp(sport, dport, &[1, 2, 3, 4]);
    packets::eth(
        [0; 6],
        [0; 6],
        0x0800,
        &packets::ipv4(src, dst, 17, 64, 0x4000, &udp),
    )
}

/// An ICMP "fragmentation needed" to `vip` about a UDP packet the VIP sent to `client`.
fn icmp_error_frame(vip: Ipv4Addr, client: Ipv4Addr, vport: u16, cport: u16) -> Vec<u8> {
    let quoted = udp_frame(vip, client, vport, cport)[14..14 + 28].to_vec();
    let mut err = vec![3, 4, 0, 0, 0, 0, 0x05, 0xdc];
    err.extend_from_slice(&quoted);
    let ip = packets::ipv4(Ipv4Addr::new(10, 99, 0, 1), vip, 1, 64, 0, &err);
    packets::eth([0; 6], [0; 6], 0x0800, &ip)
}

#[test]
fn flows_spread_over_the_backends_and_the_pick_agrees_with_the_wire() {
    require!();
    let s = star(3, 3);
    let flows = Flows::open(&s.client, 60);
    flows.send(0..60, 1);
    let went = s.where_they_went(0..60, 1);
    let mut per = [0usize; 3];
    for &b in went.values() {
        per[b] += 1;
    }
    assert!(
        per.iter().all(|&n| n >= 5),
        "60 flows over 3 backends: {per:?}"
    );
    // The counters of each backend count exactly its flows' datagrams.
    for (b, (backend, stats)) in s
        .services
        .backend_stats(vip_net())
        .unwrap()
        .into_iter()
        .enumerate()
    {
        assert_eq!(backend.peer.remote, IpAddr::V4(backend_side(b)));
        assert_eq!(stats.packets, per[b] as u64, "backend {b}: {stats:?}");
        assert_eq!(stats.errors, 0);
    }
    let c = s.services.counters().unwrap();
    assert_eq!((c.flow_picks, c.flow_hits, c.missed), (60, 0, 0), "{c:?}");
    // The data plane's own pick, under test_run, names the backend the wire saw.
    for (f, &b) in &went {
        let frame = udp_frame(CLIENT, VIP, flows.port(*f), PORT);
        let pick = s.services.pick(&frame).unwrap().expect("a backend");
        assert_eq!(pick.backend.remote, IpAddr::V4(backend_side(b)), "flow {f}");
        // An ICMP error about the flow (quoting the VIP's packet to the client) follows it.
        let err = icmp_error_frame(VIP, CLIENT, PORT, flows.port(*f));
        assert_eq!(
            s.services.pick(&err).unwrap().map(|p| p.backend),
            Some(pick.backend)
        );
    }
    // A destination no service has: no pick.
    let other = udp_frame(CLIENT, Ipv4Addr::new(10, 96, 0, 11), 1000, PORT);
    assert_eq!(s.services.pick(&other).unwrap(), None);
}

#[test]
fn a_swapped_table_keeps_flows_and_a_drained_backend_loses_only_its_own() {
    require!();
    let mut s = star(4, 3);
    let flows = Flows::open(&s.client, 120);
    flows.send(0..60, 1);
    let first = s.where_they_went(0..60, 1);
    assert!(first.values().all(|&b| b < 3));

    // A fourth backend: a new table swapped in; the 60 flows stay where they were (the flow
    // table), new flows reach the new backend too.
    let four: Vec<Backend> = (0..4).map(|i| backend(i, Encap::Ipip)).collect();
    s.services.set(vip_net(), &four).unwrap();
    flows.send(0..60, 2);
    assert_eq!(
        s.where_they_went(0..60, 2),
        first,
        "established flows kept their backend"
    );
    flows.send(60..120, 2);
    let fresh = s.where_they_went(60..120, 2);
    let to_new = fresh.values().filter(|&&b| b == 3).count();
    assert!(to_new >= 3, "60 new flows, {to_new} to the added backend");

    // Drain backend 0: its flows move, nobody else's.
    s.services
        .drain(vip_net(), IpAddr::V4(backend_side(0)))
        .unwrap();
    assert_eq!(s.services.backends(vip_net()).unwrap()[0], (four[0], false));
    flows.send(0..120, 3);
    let after = s.where_they_went(0..120, 3);
    let before: BTreeMap<usize, usize> = first.into_iter().chain(fresh).collect();
    for (f, b) in &after {
        assert_ne!(*b, 0, "flow {f} still reached the drained backend");
        if before[f] != 0 {
            assert_eq!(before[f], *b, "flow {f} of a surviving backend moved");
        }
    }
    assert!(
        before.values().any(|&b| b == 0),
        "some flows were on backend 0"
    );

    // Restored, it takes new flows again.
    s.services
        .restore(vip_net(), IpAddr::V4(backend_side(0)))
        .unwrap();
    let more = Flows::open(&s.client, 60);
    more.send(0..60, 4);
    // (these flows' numbers repeat 0..60 with round 4: a distinct round keeps them apart)
    let back = s.where_they_went(0..60, 4);
    assert!(
        back.values().any(|&b| b == 0),
        "the restored backend takes new flows"
    );

    // Removing the service: its packets are missed and counted.
    let missed = s.services.counters().unwrap().missed;
    let removed = s.services.remove(vip_net()).unwrap();
    assert_eq!(removed.len(), 4);
    flows.send(0..10, 5);
    let until = Instant::now() + common::patient(Duration::from_secs(2));
    while s.services.counters().unwrap().missed < missed + 10 {
        assert!(Instant::now() < until, "{:?}", s.services.counters());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn tables_swapped_under_tcp_udp_and_ping_lose_nothing() {
    require!();
    let mut s = star(5, 4);
    let flows = Flows::open(&s.client, 32);
    // Every backend listens for TCP on the VIP; four streams, each landing on one of them.
    let listeners: Vec<TcpListener> = s
        .backends
        .iter()
        .map(|b| {
            b.ns.run(|| {
                TcpListener::bind(SocketAddr::new(IpAddr::V4(VIP), TCP_PORT))
                    .map_err(|e| lwtun::Error::io("listen", e))
            })
            .unwrap()
        })
        .collect();
    let ping = {
        let ns = &s.client;
        let listeners = &listeners;
        let accepted = &std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            let servers: Vec<_> = listeners
                .iter()
                .map(|l| scope.spawn(move || tcp_server(l, accepted, Duration::from_secs(8))))
                .collect();
            let streams: Vec<_> = (0..STREAMS)
                .map(|_| scope.spawn(move || tcp_client(ns)))
                .collect();
            let pinger = scope.spawn(|| {
                common::ping_with(
                    ns,
                    IpAddr::V4(VIP),
                    300,
                    &[
                        "-I",
                        &CLIENT.to_string(),
                        "-i",
                        "0.01",
                        "-W",
                        "1",
                        "-w",
                        "10",
                    ],
                )
            });
            let mut members = vec![vec![], vec![0, 1, 2, 3]]; // serving in round r (from 1)
            for (round, swap) in (1u8..).zip(0..10) {
                // Weights change every time; a fifth backend comes and goes. The four that
                // stay keep every established flow, TCP included (a flow whose backend leaves
                // must move, and its TCP connection with it: tested with drain above).
                let count = 4 + swap as usize % 2;
                let list: Vec<Backend> = (0..count)
                    .map(|i| backend(i, Encap::Ipip).weight(1 + (i as u32 + swap) % 3))
                    .collect();
                flows.send(0..32, round);
                s.services.set(vip_net(), &list).unwrap();
                members.push(
                    list.iter()
                        .map(|b| {
                            (0..5)
                                .position(|i| b.peer.remote == IpAddr::V4(backend_side(i)))
                                .unwrap()
                        })
                        .collect(),
                );
                std::thread::sleep(Duration::from_millis(250));
            }
            for c in streams {
                c.join().unwrap();
            }
            let received: Vec<Vec<(usize, usize)>> =
                servers.into_iter().map(|t| t.join().unwrap()).collect();
            (pinger.join().unwrap(), members, received)
        })
    };
    let (ping, members, received) = ping;
    // Each stream arrived whole and intact at one backend (its flow stayed through 10 swaps).
    let all: Vec<(usize, usize)> = received.into_iter().flatten().collect();
    assert_eq!(all.len(), STREAMS, "streams accepted: {all:?}");
    for (got, intact) in &all {
        assert_eq!((*got, *intact), (STREAM_BYTES, STREAM_BYTES), "{all:?}");
    }
    assert_eq!(
        ping.received, 300,
        "pings lost while tables were swapped: {ping:?}"
    );
    // Every round of datagrams arrived, each flow at one backend per round, and a flow moved
    // only when its backend left the service.
    let mut last = s.where_they_went(0..32, 1);
    for round in 2..=10u8 {
        let now = s.where_they_went(0..32, round);
        for (f, b) in &now {
            if members[round as usize].contains(&last[f]) {
                assert_eq!(
                    last[f], *b,
                    "flow {f} moved in round {round} though its backend stayed"
                );
            }
        }
        last = now;
    }
}

const TCP_PORT: u16 = 7100;
const STREAMS: usize = 4;
const STREAM_BYTES: usize = 3 << 20;

/// Accepts streams on `listener` until all STREAMS were accepted by the backends (`accepted`
/// counts them) or `within` has passed, each read to its end: (bytes, bytes before the first
/// that differs from the pattern) per stream.
fn tcp_server(
    listener: &TcpListener,
    accepted: &std::sync::atomic::AtomicUsize,
    within: Duration,
) -> Vec<(usize, usize)> {
    use std::sync::atomic::Ordering;
    listener.set_nonblocking(true).unwrap();
    let until = Instant::now() + common::patient(within);
    let mut out = Vec::new();
    // Until every stream was accepted somewhere (or the time is up).
    while Instant::now() < until && accepted.load(Ordering::SeqCst) < STREAMS {
        match listener.accept() {
            Ok((mut c, _)) => {
                accepted.fetch_add(1, Ordering::SeqCst);
                c.set_nonblocking(false).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let (mut got, mut intact, mut buf) = (0usize, 0usize, vec![0u8; 64 << 10]);
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            for (k, &b) in buf[..n].iter().enumerate() {
                                if intact == got + k && b == common::pattern_byte(got + k) {
                                    intact += 1;
                                }
                            }
                            got += n;
                        }
                    }
                }
                out.push((got, intact));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    out
}

/// Streams STREAM_BYTES of the pattern from the client to the VIP over about 2.5 s.
fn tcp_client(ns: &NetNs) {
    let mut c = ns
        .run(|| {
            TcpStream::connect_timeout(
                &SocketAddr::new(IpAddr::V4(VIP), TCP_PORT),
                Duration::from_secs(3),
            )
            .map_err(|e| lwtun::Error::io("connect", e))
        })
        .unwrap();
    let data: Vec<u8> = (0..STREAM_BYTES).map(common::pattern_byte).collect();
    for chunk in data.chunks(STREAM_BYTES / 50) {
        c.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    c.shutdown(std::net::Shutdown::Write).unwrap();
}

#[test]
fn consistency_and_weights_over_100k_flows_through_test_run() {
    require!();
    let mut services = Services::load().unwrap();
    let ten: Vec<Backend> = (0..10).map(|i| backend(i, Encap::Ipip)).collect();
    services.set(vip_net(), &ten).unwrap();
    let frames: Vec<Vec<u8>> = (0..FLOWS)
        .map(|i| {
            let src = Ipv4Addr::from(0x0a00_0000 | (i.wrapping_mul(2_654_435_761) >> 8));
            udp_frame(src, VIP, 1024 + (i % 60_000) as u16, 80)
        })
        .collect();
    let picks = |services: &Services| -> Vec<IpAddr> {
        frames
            .iter()
            .map(|f| services.pick(f).unwrap().expect("a backend").backend.remote)
            .collect()
    };
    let before = picks(&services);
    // One of ten removed: only its flows move (Maglev's bound: 1/10 + 1%).
    let gone = ten[4].peer.remote;
    services
        .set(vip_net(), &[&ten[..4], &ten[5..]].concat())
        .unwrap();
    let after = picks(&services);
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count() as f64 / f64::from(FLOWS);
    let bystanders = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| **b != gone && b != a)
        .count() as f64
        / f64::from(FLOWS);
    eprintln!(
        "remove 1 of 10: {:.2}% of flows moved, {:.2}% of them not the removed backend's",
        moved * 100.0,
        bystanders * 100.0
    );
    assert!(moved <= 0.11, "{moved}");
    // Added back: again at most 1/10 + 1% move.
    services.set(vip_net(), &ten).unwrap();
    let back = picks(&services);
    let moved = after.iter().zip(&back).filter(|(b, a)| b != a).count() as f64 / f64::from(FLOWS);
    eprintln!("add 1 to 9: {:.2}% of flows moved", moved * 100.0);
    assert!(moved <= 0.11, "{moved}");
    // Weights 1..=4 (total 25 over 10 backends): each share within 2% of its weight's.
    let weighted: Vec<Backend> = ten
        .iter()
        .enumerate()
        .map(|(i, b)| b.weight(1 + i as u32 % 4))
        .collect();
    let total: u32 = weighted.iter().map(|b| b.weight).sum();
    services.set(vip_net(), &weighted).unwrap();
    let shares = picks(&services);
    for b in &weighted {
        let got = shares.iter().filter(|r| **r == b.peer.remote).count() as f64 / f64::from(FLOWS);
        let want = f64::from(b.weight) / f64::from(total);
        eprintln!("weight {}: share {:.4}, want {:.4}", b.weight, got, want);
        // 2% of the share, plus what sampling FLOWS flows adds (3 standard deviations).
        let sigma = (want * (1.0 - want) / f64::from(FLOWS)).sqrt();
        assert!(
            (got - want).abs() <= 0.02 * want + 3.0 * sigma,
            "{}: {got} vs {want}",
            b.peer.remote
        );
    }
}

#[test]
fn bad_service_input_is_refused_and_changes_nothing() {
    require!();
    let mut services = Services::builder().rows(251).backends(4).load().unwrap();
    let b = backend(0, Encap::Ipip);
    let err = services.set(vip_net(), &[b, b]).unwrap_err();
    assert_eq!(err.kind(), lwtun::ErrorKind::InvalidInput, "{err}");
    let err = Services::builder().rows(65_536).load().unwrap_err();
    assert!(err.to_string().contains("prime"), "{err}");
    services.set(vip_net(), &[b]).unwrap();
    // Five backends on a data plane of four: refused, the service as it was.
    let five: Vec<Backend> = (0..5).map(|i| backend(i, Encap::Ipip)).collect();
    let err = services.set(vip_net(), &five).unwrap_err();
    assert!(err.to_string().contains("backends"), "{err}");
    assert_eq!(services.backends(vip_net()).unwrap(), vec![(b, true)]);
    // ...and the backends it took are free again: four fit.
    services.set(vip_net(), &five[..4]).unwrap();
    let err = services
        .drain(vip_net(), "192.0.2.99".parse().unwrap())
        .unwrap_err();
    assert_eq!(err.kind(), lwtun::ErrorKind::NotFound, "{err}");
    let err = services
        .remove("10.96.0.99/32".parse().unwrap())
        .unwrap_err();
    assert_eq!(err.kind(), lwtun::ErrorKind::NotFound, "{err}");
}

/// An Ethernet frame carrying an ICMP echo request from `src` to `dst`.
fn echo_frame(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let ip = packets::ipv4(src, dst, 1, 64, 0x4000, &packets::icmp(8, &[]));
    packets::eth([0; 6], [0; 6], 0x0800, &ip)
}

#[test]
fn a_backend_that_stops_answering_probes_is_drained_and_comes_back() {
    require!();
    let Star {
        _route: route,
        services,
        nl,
        mut backends,
        client,
    } = star(3, 3);
    let services = Arc::new(Mutex::new(services));
    // The backend the client's pings go to (the echo flow has no ports: one backend).
    let victim = {
        let s = services.lock().unwrap();
        let remote = s
            .pick(&echo_frame(CLIENT, VIP))
            .unwrap()
            .expect("a backend")
            .backend
            .remote;
        (0..3)
            .find(|&i| remote == IpAddr::V4(backend_side(i)))
            .unwrap()
    };
    let flows = Flows::open(&client, 60);
    flows.send(0..60, 1);
    let first = where_they_went(&backends, 0..60, 1, &|| String::new());
    let config = HealthConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(80),
        fall: 2,
        rise: 2,
    };
    let watch = client
        .enter(|| HealthCheck::new(config))
        .unwrap()
        .spawn(services.clone());
    let state = |services: &Mutex<Services>| -> bool {
        services.lock().unwrap().backends(vip_net()).unwrap()[victim].1
    };
    let wait_for = |up: bool, what: &str| {
        let until = Instant::now() + common::patient(Duration::from_secs(3));
        while state(&services) != up {
            assert!(
                Instant::now() < until,
                "{what}: {:?}, rounds {}, error {:?}",
                services.lock().unwrap().counters(),
                watch.rounds(),
                watch.last_error()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let ping = std::thread::scope(|scope| {
        let pinger = scope.spawn(|| {
            common::ping_with(
                &client,
                IpAddr::V4(VIP),
                400,
                &[
                    "-I",
                    &CLIENT.to_string(),
                    "-i",
                    "0.01",
                    "-W",
                    "1",
                    "-w",
                    "15",
                ],
            )
        });
        std::thread::sleep(Duration::from_millis(800));
        assert!(state(&services), "all backends answer at first");
        // The backend's decap goes: the client's packets reach it still encapsulated, and
        // nothing answers, neither the pings nor the probes.
        drop(backends[victim].decap.take());
        wait_for(false, "the silent backend was not drained");
        // Meanwhile the flows of the other backends stay where they were; its own move.
        flows.send(0..60, 2);
        let second = where_they_went(&backends, 0..60, 2, &|| String::new());
        for (f, b) in &second {
            assert_ne!(*b, victim, "flow {f} reached the drained backend");
            if first[f] != victim {
                assert_eq!(first[f], *b, "flow {f} of a healthy backend moved");
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        backends[victim].decap = Some(decap(&backends[victim].ns, victim));
        wait_for(true, "the backend answering again was not restored");
        pinger.join().unwrap()
    });
    let lost = ping.transmitted - ping.received;
    assert!(
        lost <= 100,
        "{lost} pings lost while the backend failed over: {ping:?}"
    );
    eprintln!("{lost} of {} pings lost over the failure", ping.transmitted);
    let changes = watch.take_changes();
    let remote = IpAddr::V4(backend_side(victim));
    assert_eq!(
        changes,
        vec![
            HealthChange {
                service: vip_net(),
                remote,
                up: false
            },
            HealthChange {
                service: vip_net(),
                remote,
                up: true
            },
        ]
    );
    assert!(services.lock().unwrap().counters().unwrap().probes > 0);
    drop(watch);
    drop(route);
    drop(nl);
}

/// An Ethernet frame carrying an IPv6 UDP packet.
fn udp6_frame(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    let udp = packets::udp(sport, dport, &[1, 2, 3, 4]);
    packets::eth(
        [0; 6],
        [0; 6],
        0x86dd,
        &packets::ipv6(src, dst, 17, 64, &udp),
    )
}

/// An ICMPv6 "packet too big" to `vip` about a UDP packet the VIP sent to `client`.
fn icmp6_error_frame(vip: Ipv6Addr, client: Ipv6Addr, vport: u16, cport: u16) -> Vec<u8> {
    let quoted = udp6_frame(vip, client, vport, cport)[14..14 + 48].to_vec();
    let mut err = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00];
    err.extend_from_slice(&quoted);
    let ip = packets::ipv6("fd99::1".parse().unwrap(), vip, 58, 64, &err);
    packets::eth([0; 6], [0; 6], 0x86dd, &ip)
}

#[test]
fn an_ipv6_vip_over_ipv6_outer_headers() {
    require!();
    ipv6_vip(&[
        Backend::new(EncapPeer::new(
            IpAddr::V6(backend_side6(0)),
            IpAddr::V6(client_side6(0)),
            Encap::Ipip,
        )),
        Backend::new(EncapPeer::new(
            IpAddr::V6(backend_side6(1)),
            IpAddr::V6(client_side6(1)),
            Encap::Gre {
                key: Some(9),
                checksum: false,
            },
        )),
        Backend::new(EncapPeer::new(
            IpAddr::V6(backend_side6(2)),
            IpAddr::V6(client_side6(2)),
            Encap::Udp { port: 5555 },
        )),
    ]);
}

/// IPv6 inside IPv4 (6in4): the backends' decap needs `BPF_F_ADJ_ROOM_DECAP_L3_IPV6` (6.3;
/// on 6.1 and 5.10 every packet arrives and is refused there, counted by the decap).
#[test]
fn an_ipv6_vip_over_ipv4_outer_headers() {
    require!(lwtun::probe::Feature::DecapL3);
    ipv6_vip(&[
        Backend::new(EncapPeer::new(
            IpAddr::V4(backend_side(0)),
            IpAddr::V4(client_side(0)),
            Encap::Ipip,
        )),
        Backend::new(EncapPeer::new(
            IpAddr::V4(backend_side(1)),
            IpAddr::V4(client_side(1)),
            Encap::Gre {
                key: Some(9),
                checksum: false,
            },
        )),
        Backend::new(EncapPeer::new(
            IpAddr::V4(backend_side(2)),
            IpAddr::V4(client_side(2)),
            Encap::Gre {
                key: None,
                checksum: true,
            },
        )),
    ]);
}

/// An IPv6 VIP served by `list` (three backends, one per backend host): 60 flows spread, each
/// where test_run's pick says, an ICMPv6 error about a flow following it, exact counters.
fn ipv6_vip(list: &[Backend]) {
    let mut s = star(3, 3);
    let vip6: ipnetwork::IpNetwork = format!("{VIP6}/128").parse().unwrap();
    s.services.set(vip6, list).unwrap();
    let b0 = s.nl.device("b0").unwrap();
    let _route6 = s
        .services
        .route(vip6)
        .device(&b0)
        .source(IpAddr::V6(CLIENT6))
        .install(&mut s.nl)
        .unwrap();
    let flows = Flows::between(&s.client, 60, IpAddr::V6(CLIENT6), IpAddr::V6(VIP6));
    flows.send(0..60, 1);
    let went = where_they_went(&s.backends, 0..60, 1, &|| {
        format!(
            "counters {:?}, backends {:?}",
            s.services.counters(),
            s.services.backend_stats(vip6)
        )
    });
    let mut per = [0usize; 3];
    for &b in went.values() {
        per[b] += 1;
    }
    assert!(
        per.iter().all(|&n| n >= 5),
        "60 flows over 3 backends: {per:?}"
    );
    for (f, &b) in &went {
        let pick = s
            .services
            .pick(&udp6_frame(CLIENT6, VIP6, flows.port(*f), PORT))
            .unwrap()
            .expect("a backend");
        assert_eq!(pick.backend, list[b].peer, "flow {f}");
        let err = icmp6_error_frame(VIP6, CLIENT6, PORT, flows.port(*f));
        assert_eq!(
            s.services.pick(&err).unwrap().map(|p| p.backend),
            Some(pick.backend),
            "the ICMPv6 error about flow {f} follows it"
        );
    }
    let stats = s.services.backend_stats(vip6).unwrap();
    for (b, (_, st)) in stats.iter().enumerate() {
        assert_eq!((st.packets, st.errors), (per[b] as u64, 0), "backend {b}");
    }
}

#[test]
fn a_new_owner_adopts_the_services_and_keeps_every_established_flow() {
    require!();
    let dir = common::PinDir::new("svc");
    let Star {
        _route: route,
        mut services,
        nl,
        backends,
        client,
    } = star_with(4, 3, Services::builder().rows(4_099).pin(&dir.0));
    let three: Vec<Backend> = (0..3)
        .map(|i| backend(i, Encap::Ipip).weight(1 + i as u32))
        .collect();
    services.set(vip_net(), &three).unwrap();
    let went = |range: std::ops::Range<usize>, round: u8| {
        where_they_went(&backends, range, round, &|| String::new())
    };
    let flows = Flows::open(&client, 120);
    flows.send(0..60, 1);
    let first = went(0..60, 1);
    // A second owner while the first lives is refused: nothing changes under a live owner.
    let err = Services::builder().pin(&dir.0).load().unwrap_err();
    assert_eq!(err.kind(), lwtun::ErrorKind::Exists, "{err}");
    let before = services.backend_stats(vip_net()).unwrap();
    // The owner hands over: its pins stay, the route's program goes on with the same tables.
    services.keep_pinned();
    drop(services);
    flows.send(0..60, 2);
    assert_eq!(went(0..60, 2), first, "flows while nobody owned the tables");
    let mut adopted = Services::builder().pin(&dir.0).load().unwrap();
    assert!(adopted.adopted());
    assert_eq!(
        adopted.backends(vip_net()).unwrap(),
        three.iter().map(|b| (*b, true)).collect::<Vec<_>>(),
        "services, backends and weights adopted"
    );
    for ((b, old), (_, now)) in before.iter().zip(adopted.backend_stats(vip_net()).unwrap()) {
        assert!(
            now.packets >= old.packets,
            "{}: counters kept",
            b.peer.remote
        );
    }
    // The new owner changes the service: the flows remembered before the handover stay.
    let four: Vec<Backend> = (0..4).map(|i| backend(i, Encap::Ipip)).collect();
    adopted.set(vip_net(), &four).unwrap();
    flows.send(0..120, 3);
    let third = went(0..120, 3);
    for f in 0..60 {
        assert_eq!(third[&f], first[&f], "flow {f} moved after the handover");
    }
    assert!(
        (60..120).any(|f| third[&f] == 3),
        "new flows reach the backend the new owner added"
    );
    // Dropped without keeping: the pins go.
    drop(adopted);
    assert!(!dir.0.join("backends").exists(), "pins removed");
    drop(route);
    drop(nl);
}
