//! The services' XDP director end to end, in glb-director's shape: a router R sends a VIP's
//! packets to the director D; D's XDP program encapsulates each to the backend its flow picks
//! (the tables the LWT route's program reads) and sends it back out to R (XDP_TX), which
//! forwards it to the backend; the backend decapsulates and answers the client directly.
//!
//! ```text
//!  C (10.30.0.1) ── c ═ 10.81.0.0/24 ═ rc ── R ── rd ═ 10.80.0.0/24 ═ uplink ── D (XDP director)
//!                                            │
//!                                            ├── rb0 ═ 10.79.0.0/24 ═ r ── B0 (VIP on lo, decap)
//!                                            └── rbN ...
//! ```
//! The underlay (R–D, R–Bi) carries 1600-byte frames, so a full 1500-byte packet fits once
//! encapsulated.

mod common;

use common::packets;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use lwtun::decap::{Decap, DecapPeer};
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::peer::{Encap, EncapPeer};
use lwtun::service::{Backend, Services};
use lwtun::xdp::{XdpAttachment, XdpOptions, XdpPass};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 1);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const DIRECTOR: Ipv4Addr = Ipv4Addr::new(10, 80, 0, 2);
const PORT: u16 = 7000;

fn vip_net() -> ipnetwork::IpNetwork {
    "10.96.0.10/32".parse().unwrap()
}

fn backend_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 79, i as u8, 2)
}

fn backend(i: usize, encap: Encap) -> Backend {
    Backend::new(EncapPeer::new(
        IpAddr::V4(backend_addr(i)),
        IpAddr::V4(DIRECTOR),
        encap,
    ))
}

struct BackendHost {
    sink: common::UdpSink,
    _decap: Decap,
    ns: NetNs,
}

struct Glb {
    // Drop order: the XDP attachments and the route before the programs and namespaces.
    _director: XdpAttachment,
    _route: lwtun::route::InstalledRoute,
    _receiver: Option<XdpAttachment>,
    _pass: XdpPass,
    services: Services,
    backends: Vec<BackendHost>,
    client: NetNs,
    director_ns: NetNs,
    _router: NetNs,
}

/// Links `a`'s `a_dev` (address `a_ip`/24) with `b`'s `b_dev` (`b_ip`/24), MTU `mtu`, both up.
fn link(a: &NetNs, a_dev: &str, a_ip: Ipv4Addr, b: &NetNs, b_dev: &str, b_ip: Ipv4Addr, mtu: u32) {
    common::ip(
        a,
        &[
            "link",
            "add",
            a_dev,
            "mtu",
            &mtu.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            b_dev,
            "mtu",
            &mtu.to_string(),
            "netns",
            b.name(),
        ],
    );
    for (ns, dev, ip) in [(a, a_dev, a_ip), (b, b_dev, b_ip)] {
        common::ip(ns, &["addr", "add", &format!("{ip}/24"), "dev", dev]);
        common::ip(ns, &["link", "set", dev, "up"]);
    }
}

fn glb(n: usize, encap: Encap) -> Glb {
    let client = common::netns("glb-c");
    let router = common::netns("glb-r");
    let director = common::netns("glb-d");
    for ns in [&client, &router, &director] {
        ns.set_sysctl("net.ipv4.conf.all.rp_filter", "0").unwrap();
    }
    router.set_sysctl("net.ipv4.ip_forward", "1").unwrap();
    // The director hands frames whose next hop it has not resolved yet to its stack.
    director.set_sysctl("net.ipv4.ip_forward", "1").unwrap();
    director
        .set_sysctl("net.ipv4.conf.all.send_redirects", "0")
        .unwrap();
    common::ip(
        &client,
        &["addr", "add", &format!("{CLIENT}/32"), "dev", "lo"],
    );
    link(
        &client,
        "c",
        Ipv4Addr::new(10, 81, 0, 2),
        &router,
        "rc",
        Ipv4Addr::new(10, 81, 0, 1),
        1500,
    );
    common::ip(
        &client,
        &[
            "route",
            "add",
            "default",
            "via",
            "10.81.0.1",
            "src",
            &CLIENT.to_string(),
        ],
    );
    // A frame from a wire carries finished checksums; one from a veth may leave the transport
    // checksum to the device (CHECKSUM_PARTIAL), which XDP cannot see finished. The client
    // finishes its own, as a host behind a NIC would have.
    common::tx_checksum_off(&client, "c");
    link(
        &router,
        "rd",
        Ipv4Addr::new(10, 80, 0, 1),
        &director,
        "uplink",
        DIRECTOR,
        1600,
    );
    common::ip(&director, &["route", "add", "default", "via", "10.80.0.1"]);
    common::ip(
        &router,
        &["route", "add", &format!("{CLIENT}/32"), "via", "10.81.0.2"],
    );
    common::ip(
        &router,
        &[
            "route",
            "add",
            &format!("{VIP}/32"),
            "via",
            &DIRECTOR.to_string(),
        ],
    );
    let mut backends = Vec::new();
    for i in 0..n {
        let ns = common::netns(&format!("glb-b{i}"));
        link(
            &router,
            &format!("rb{i}"),
            Ipv4Addr::new(10, 79, i as u8, 1),
            &ns,
            "r",
            backend_addr(i),
            1600,
        );
        common::ip(&ns, &["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
        common::ip(
            &ns,
            &["route", "add", "default", "via", &format!("10.79.{i}.1")],
        );
        common::wait_oper_up(&ns, &["r".to_string()]);
        let decap = ns
            .enter(|| {
                let mut d = Decap::load()?;
                d.add_local(IpAddr::V4(backend_addr(i)))?;
                d.add_peer(DecapPeer::host(IpAddr::V4(DIRECTOR)))?;
                d.add_udp_port(5555)?;
                let mut nl = Netlink::open()?;
                d.attach(&nl.device("r")?)?;
                Ok(d)
            })
            .unwrap();
        let sink = common::UdpSink::start(&ns, SocketAddr::new(IpAddr::V4(VIP), PORT), 5);
        backends.push(BackendHost {
            sink,
            _decap: decap,
            ns,
        });
    }
    common::wait_oper_up(&client, &["c".to_string()]);
    common::wait_oper_up(&director, &["uplink".to_string()]);
    let mut services = Services::builder().rows(4_099).load().unwrap();
    let list: Vec<Backend> = (0..n).map(|i| backend(i, encap)).collect();
    services.set(vip_net(), &list).unwrap();
    let d = common::device(&director, "uplink");
    // The stack's path for frames the director hands it (next hop not resolved yet): the
    // service's LWT route, the same tables.
    let mut nl = Netlink::open_in(&director).unwrap();
    let route = services
        .route(vip_net())
        .device(&d)
        .install(&mut nl)
        .unwrap();
    let attached =
        XdpAttachment::attach(services.director_program(), &d, XdpOptions::default()).unwrap();
    // XDP_TX out of the director's veth lands in the router's end: it needs a receiver.
    let pass = XdpPass::load().unwrap();
    let receiver = pass
        .attach_receiver(&common::device(&router, "rd"))
        .unwrap();
    Glb {
        _director: attached,
        _route: route,
        _receiver: receiver,
        _pass: pass,
        services,
        backends,
        client,
        director_ns: director,
        _router: router,
    }
}

impl Glb {
    /// Which backend got each of `n` flows' datagrams (round `round`), once all arrived.
    fn where_they_went(&self, n: usize, round: u8) -> BTreeMap<usize, usize> {
        let until = Instant::now() + common::patient(Duration::from_secs(5));
        loop {
            let mut got = BTreeMap::new();
            for (b, host) in self.backends.iter().enumerate() {
                for p in host.sink.received() {
                    let f = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
                    if p[4] == round && f < n {
                        assert!(got.insert(f, b).is_none(), "flow {f} reached two backends");
                    }
                }
            }
            if got.len() == n {
                return got;
            }
            assert!(
                Instant::now() < until,
                "round {round}: {} of {n} flows arrived; {:?}, {:?}",
                got.len(),
                self.services.counters(),
                self.services.backend_stats(vip_net())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An Ethernet frame carrying an IPv4 UDP packet (for the pick: addresses and ports).
fn udp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let udp = packets::udp(sport, dport, &[1, 2, 3, 4]);
    packets::eth(
        [0; 6],
        [0; 6],
        0x0800,
        &packets::ipv4(src, dst, 17, 64, 0x4000, &udp),
    )
}

fn flows_through_the_director(encap: Encap) {
    let g = glb(3, encap);
    let sockets: Vec<UdpSocket> = g
        .client
        .enter(|| {
            (0..60)
                .map(|_| {
                    UdpSocket::bind(SocketAddr::new(IpAddr::V4(CLIENT), 0))
                        .map_err(|e| lwtun::Error::io("bind", e))
                })
                .collect::<lwtun::Result<Vec<_>>>()
        })
        .unwrap();
    for round in 1..=2u8 {
        if round == 2 {
            // The director forgets its next hop: the first frames go through its stack (XDP_PASS),
            // whose route to the service encapsulates them while it resolves the next hop
            // again; none is lost.
            common::ip(&g.director_ns, &["neigh", "flush", "dev", "uplink"]);
        }
        let passed = g.services.counters().unwrap().director_passed;
        for (f, s) in sockets.iter().enumerate() {
            let mut msg = (f as u32).to_be_bytes().to_vec();
            msg.push(round);
            msg.extend_from_slice(&[0u8; 59]);
            s.send_to(&msg, SocketAddr::new(IpAddr::V4(VIP), PORT))
                .unwrap();
        }
        let went = g.where_they_went(60, round);
        let mut per = [0usize; 3];
        for &b in went.values() {
            per[b] += 1;
        }
        assert!(
            per.iter().all(|&n| n >= 5),
            "60 flows over 3 backends: {per:?}"
        );
        if round == 2 {
            let c = g.services.counters().unwrap();
            assert!(
                c.director_passed > passed,
                "no frame went through the stack: {c:?}"
            );
        }
        // The same tables as the route's program: the pick under test_run names the backend.
        for (f, &b) in &went {
            let port = sockets[*f].local_addr().unwrap().port();
            let pick = g
                .services
                .pick(&udp_frame(CLIENT, VIP, port, PORT))
                .unwrap()
                .expect("a backend");
            assert_eq!(pick.backend.remote, IpAddr::V4(backend_addr(b)), "flow {f}");
        }
    }
    let c = g.services.counters().unwrap();
    assert_eq!(c.director_tx + c.director_passed, 120, "{c:?}");
    assert!(c.director_tx > 0, "after the first frames, XDP_TX: {c:?}");
    // A frame the director passed met the flow table twice (XDP, then the route).
    assert_eq!(
        (c.flow_picks, c.flow_hits, c.director_dropped),
        (60, 60 + c.director_passed, 0),
        "{c:?}"
    );
    let sent: u64 = g
        .services
        .backend_stats(vip_net())
        .unwrap()
        .iter()
        .map(|(_, s)| s.packets)
        .sum();
    assert_eq!(sent, 120);
}

#[test]
fn udp_flows_through_the_xdp_director_ipip() {
    require!();
    flows_through_the_director(Encap::Ipip);
}

#[test]
fn udp_flows_through_the_xdp_director_gre_and_fou() {
    require!();
    flows_through_the_director(Encap::Gre {
        key: Some(7),
        checksum: false,
    });
    flows_through_the_director(Encap::Udp { port: 5555 });
}

#[test]
fn tcp_through_the_xdp_director_arrives_intact() {
    require!();
    let mut g = glb(2, Encap::Ipip);
    g.services
        .set(vip_net(), &[backend(1, Encap::Ipip)])
        .unwrap();
    let t = common::tcp_stream(&g.backends[1].ns, &g.client, IpAddr::V4(VIP), 4 << 20);
    assert!(t.complete(), "{t:?}; {:?}", g.services.counters());
    let c = g.services.counters().unwrap();
    assert!(c.director_tx > 100, "{c:?}");
    assert_eq!(c.director_dropped, 0, "{c:?}");
}
