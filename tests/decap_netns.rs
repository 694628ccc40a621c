//! Decap end to end in namespaces: a peer namespace sends encapsulated packets (IP-in-IP, GRE and
//! FOU, outer IPv4 and IPv6, inner IPv4 and IPv6) over a veth to the decap namespace, where
//! `Decap` at tc ingress strips them and applications receive the inner packets: UDP payloads
//! on an overlay address, and a ping whose reply comes back. Packets from an unknown peer are
//! dropped and counted. The senders are raw sockets (the kernel writes the outer IP header) and
//! a UDP socket (FOU), so no tunnel module is needed on either side.
//!
//! ```text
//!  ns 0 "peer"  10.77.0.1 / fd77:0::1  [to1] ──veth── [to0]  10.77.0.2 / fd77:0::2  ns 1 "decap"
//!  overlay 10.99.0.1, fd99:0::1 (lo)                          overlay 10.99.1.1, fd99:1::1 (lo)
//!                                                             tc ingress: Decap
//! ```
mod common;
mod decap_common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use decap_common::*;
use lwtun::decap::{Decap, DecapPeer};
use lwtun::netns::NetNs;

const PORT: u16 = 5555;
const APP_PORT: u16 = 9000;
const KEY: u32 = 77;

fn ov4(ns: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, ns as u8, 1)
}
fn ov6(ns: usize) -> Ipv6Addr {
    format!("fd99:{ns}::1").parse().unwrap()
}

/// A raw IP socket of `proto` in the calling thread's namespace, optionally bound to `src`.
fn raw_socket(v6: bool, proto: u8, src: Option<IpAddr>) -> OwnedFd {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW, proto as i32) };
    assert!(
        fd >= 0,
        "raw socket proto {proto}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a new descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(src) = src {
        let (sa, len) = sockaddr(src);
        // SAFETY: sa holds a sockaddr of `len` bytes.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), sa.as_ptr().cast(), len) };
        assert_eq!(rc, 0, "bind {src}: {}", std::io::Error::last_os_error());
    }
    fd
}

fn sockaddr(addr: IpAddr) -> (Vec<u8>, libc::socklen_t) {
    match addr {
        IpAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as _,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in is plain data.
            let b = unsafe {
                std::slice::from_raw_parts((&sin as *const libc::sockaddr_in).cast::<u8>(), 16)
            };
            (b.to_vec(), 16)
        }
        IpAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as _,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                sin6_scope_id: 0,
            };
            let n = std::mem::size_of::<libc::sockaddr_in6>();
            // SAFETY: sockaddr_in6 is plain data.
            let b = unsafe {
                std::slice::from_raw_parts((&sin6 as *const libc::sockaddr_in6).cast::<u8>(), n)
            };
            (b.to_vec(), n as _)
        }
    }
}

/// Sends `payload` as the payload of an outer IP packet of protocol `proto` from `ns` to `dst`.
fn send_raw(ns: &NetNs, proto: u8, src: Option<IpAddr>, dst: IpAddr, payload: &[u8]) {
    ns.run(|| {
        let fd = raw_socket(dst.is_ipv6(), proto, src);
        let (sa, len) = sockaddr(dst);
        // SAFETY: payload and sa are live buffers of the sizes given.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                payload.as_ptr().cast(),
                payload.len(),
                0,
                sa.as_ptr().cast(),
                len,
            )
        };
        assert_eq!(
            n as usize,
            payload.len(),
            "sendto {dst} proto {proto}: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    })
    .unwrap();
}

fn send_fou(ns: &NetNs, dst: IpAddr, inner: &[u8]) {
    ns.run(|| {
        let bind: SocketAddr = if dst.is_ipv6() {
            "[::]:0".parse().unwrap()
        } else {
            "0.0.0.0:0".parse().unwrap()
        };
        let s = UdpSocket::bind(bind).unwrap();
        s.send_to(inner, SocketAddr::new(dst, PORT)).unwrap();
        Ok(())
    })
    .unwrap();
}

/// The application: UDP sockets on the decap namespace's overlay addresses.
struct App {
    v4: UdpSocket,
    v6: UdpSocket,
}

impl App {
    fn bind(ns: &NetNs) -> App {
        ns.run(|| {
            let v4 = UdpSocket::bind(SocketAddr::new(ov4(1).into(), APP_PORT)).unwrap();
            let v6 = UdpSocket::bind(SocketAddr::new(ov6(1).into(), APP_PORT)).unwrap();
            v4.set_read_timeout(Some(Duration::from_millis(1500)))
                .unwrap();
            v6.set_read_timeout(Some(Duration::from_millis(1500)))
                .unwrap();
            Ok(App { v4, v6 })
        })
        .unwrap()
    }

    /// The next payload the v4 or v6 socket receives, with its source, or None after a timeout.
    fn recv(&self, v6: bool) -> Option<(Vec<u8>, SocketAddr)> {
        let s = if v6 { &self.v6 } else { &self.v4 };
        let mut buf = [0u8; 2048];
        s.recv_from(&mut buf)
            .ok()
            .map(|(n, from)| (buf[..n].to_vec(), from))
    }
}

fn inner(v6: bool, payload: &[u8]) -> Vec<u8> {
    if v6 {
        inner_udp6(ov6(0), ov6(1), 4242, APP_PORT, payload)
    } else {
        inner_udp4(ov4(0), ov4(1), 4242, APP_PORT, payload)
    }
}

struct Setup {
    net: common::Line,
    app: App,
}

fn setup() -> Setup {
    let net = common::two_hosts();
    for i in 0..2 {
        let ns = net.ns(i);
        common::ip(ns, &["addr", "add", &format!("{}/32", ov4(i)), "dev", "lo"]);
        common::ip(
            ns,
            &[
                "addr",
                "add",
                &format!("{}/128", ov6(i)),
                "dev",
                "lo",
                "nodad",
            ],
        );
        let other = 1 - i;
        common::ip(
            ns,
            &[
                "route",
                "add",
                &format!("{}/32", ov4(other)),
                "via",
                &net.v4_towards(other, i).to_string(),
            ],
        );
        common::ip(
            ns,
            &[
                "-6",
                "route",
                "add",
                &format!("{}/128", ov6(other)),
                "via",
                &net.v6_towards(other, i).to_string(),
            ],
        );
    }
    let app = App::bind(net.ns(1));
    Setup { net, app }
}

fn load_decap(s: &Setup) -> Decap {
    let mut d = Decap::load().unwrap();
    d.add_local(s.net.v4(1).into()).unwrap();
    d.add_local(s.net.v6(1).into()).unwrap();
    d.add_peer(DecapPeer::host(s.net.v4(0).into()).gre_key(KEY))
        .unwrap();
    d.add_peer(DecapPeer::host(s.net.v6(0).into())).unwrap();
    d.add_udp_port(PORT).unwrap();
    d.attach(&s.net.device(1, "to0")).unwrap();
    d
}

#[test]
fn every_encap_reaches_the_application() {
    require!();
    let s = setup();
    let peer = s.net.ns(0);
    let (u4, u6): (IpAddr, IpAddr) = (s.net.v4(1).into(), s.net.v6(1).into());

    // Without the decap nothing gets through: this kernel has no ipip module.
    send_raw(peer, IPPROTO_IPIP, None, u4, &inner(false, b"before"));
    assert!(
        s.app.recv(false).is_none(),
        "an IPIP packet was delivered without the decap"
    );

    let d = load_decap(&s);
    // What crosses the decap side's underlay: the encapsulated packets, as tcpdump shows them
    // (AF_PACKET taps see a packet before tc ingress strips it).
    let cap = common::Capture::start(
        s.net.ns(1),
        "to0",
        "ip proto 4 or ip proto 41 or ip proto 47 or ip6 proto 4 or ip6 proto 41 or \
         ip6 proto 47 or udp dst port 5555",
        12,
    );
    // (name, outer protocol or None for FOU, outer v6, inner v6)
    let cases: Vec<(&str, Option<u8>, bool, bool)> = vec![
        ("ipip 4in4", Some(IPPROTO_IPIP), false, false),
        ("ipip 6in4", Some(IPPROTO_IPV6), false, true),
        ("ipip 4in6", Some(IPPROTO_IPIP), true, false),
        ("ipip 6in6", Some(IPPROTO_IPV6), true, true),
        ("gre 4in4 key+csum", Some(IPPROTO_GRE), false, false),
        ("gre 6in4 key", Some(IPPROTO_GRE), false, true),
        ("gre 4in6 csum", Some(IPPROTO_GRE), true, false),
        ("gre 6in6", Some(IPPROTO_GRE), true, true),
        ("fou 4in4", None, false, false),
        ("fou 6in4", None, false, true),
        ("fou 4in6", None, true, false),
        ("fou 6in6", None, true, true),
    ];
    let cross_family = lwtun::probe::decap_l3().is_ok();
    for (i, (what, proto, outer_v6, inner_v6)) in cases.iter().enumerate() {
        let payload = format!("{what} #{i}");
        let pkt = inner(*inner_v6, payload.as_bytes());
        let dst = if *outer_v6 { u6 } else { u4 };
        match proto {
            Some(IPPROTO_GRE) => {
                let ethertype = if *inner_v6 { 0x86dd } else { 0x0800 };
                // the v4 peer requires its key; the v6 one takes any
                let key = (!*outer_v6 || i % 2 == 0).then_some(KEY);
                let csum = i % 2 == 0;
                send_raw(
                    peer,
                    IPPROTO_GRE,
                    None,
                    dst,
                    &gre(ethertype, key, csum, &pkt),
                );
            }
            Some(p) => send_raw(peer, *p, None, dst, &pkt),
            None => send_fou(peer, dst, &pkt),
        }
        let got = s.app.recv(*inner_v6);
        if outer_v6 != inner_v6 && !cross_family {
            // Before Linux 6.3 the kernel cannot change the family while stripping: dropped,
            // counted as an error (checked below).
            assert!(got.is_none(), "{what}: delivered without DECAP_L3");
            continue;
        }
        let (data, from) = got.unwrap_or_else(|| {
            panic!(
                "{what}: nothing received; counters {:?}",
                d.counters().unwrap()
            )
        });
        assert_eq!(data, payload.as_bytes(), "{what}: payload");
        let src: IpAddr = if *inner_v6 {
            ov6(0).into()
        } else {
            ov4(0).into()
        };
        assert_eq!(from, SocketAddr::new(src, 4242), "{what}: inner source");
    }
    let lines = cap.finish(Duration::from_secs(3));
    assert_eq!(lines.len(), 12, "{lines:#?}");
    let count = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("GREv0"), 4, "{lines:#?}");
    assert_eq!(count(".5555:"), 4, "{lines:#?}");
    assert_eq!(
        count(&format!("{} > {}: IP", s.net.v4(0), s.net.v4(1)))
            + count(&format!("{} > {}: IP", s.net.v6(0), s.net.v6(1))),
        4,
        "IP-in-IP: {lines:#?}"
    );
    let c = d.counters().unwrap();
    let per_kind = if cross_family { 4 } else { 2 };
    assert_eq!(
        (c.ipip.packets, c.gre.packets, c.udp.packets),
        (per_kind, per_kind, per_kind),
        "{c:?}"
    );
    assert_eq!(c.dropped(), 12 - 3 * per_kind, "{c:?}");
    assert_eq!(c.error.packets, 12 - 3 * per_kind, "{c:?}");

    // Plain traffic to the underlay address still passes (ping, and neighbour discovery
    // before it), counted as not for us.
    let p = common::ping(peer, u4, 2);
    assert_eq!(p.received, 2, "{}", p.output);
    assert!(d.counters().unwrap().not_for_us.packets >= 2);
}

#[test]
fn unknown_peer_and_wrong_key_are_dropped_and_counted() {
    require!();
    let s = setup();
    let peer = s.net.ns(0);
    let stranger: IpAddr = "10.77.0.9".parse().unwrap();
    common::ip(peer, &["addr", "add", "10.77.0.9/24", "dev", "to1"]);
    let u4: IpAddr = s.net.v4(1).into();
    let d = load_decap(&s);

    for i in 0..5 {
        send_raw(
            peer,
            IPPROTO_IPIP,
            Some(stranger),
            u4,
            &inner(false, format!("stranger {i}").as_bytes()),
        );
    }
    send_raw(
        peer,
        IPPROTO_GRE,
        None,
        u4,
        &gre(0x0800, Some(KEY + 1), false, &inner(false, b"wrong key")),
    );
    send_raw(
        peer,
        IPPROTO_GRE,
        None,
        u4,
        &gre(0x0800, Some(KEY), true, &inner(false, b"right key")),
    );
    let (data, _) = s.app.recv(false).expect("the packet from the known peer");
    assert_eq!(
        data, b"right key",
        "only the known peer's packet is delivered"
    );
    assert!(s.app.recv(false).is_none(), "nothing else is delivered");
    let c = d.counters().unwrap();
    assert_eq!(c.unknown_peer.packets, 5, "{c:?}");
    assert_eq!(c.key_mismatch.packets, 1, "{c:?}");
    assert_eq!(c.gre.packets, 1, "{c:?}");

    // Detaching stops the decap: the known peer's packets are no longer delivered.
    let mut d = d;
    d.detach(&s.net.device(1, "to0")).unwrap();
    send_raw(peer, IPPROTO_IPIP, None, u4, &inner(false, b"after detach"));
    assert!(s.app.recv(false).is_none(), "delivered after detach");
}

#[test]
fn ping_through_an_ipip_tunnel() {
    require!();
    let s = setup();
    let peer = s.net.ns(0);
    let _d = load_decap(&s);
    // An ICMP echo request from the peer's overlay address to the decap side's, inside IPIP.
    let mut icmp = vec![8u8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(b"lwtun decap ping");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut echo = ipv4_header(ov4(0), ov4(1), IPPROTO_ICMP, icmp.len(), &[]);
    echo.extend_from_slice(&icmp);
    // The reply comes back unencapsulated (plain route); a raw ICMP socket on the peer sees it.
    let reply = peer
        .run(|| {
            let fd = raw_socket(false, IPPROTO_ICMP, None);
            let tv = libc::timeval {
                tv_sec: 2,
                tv_usec: 0,
            };
            // SAFETY: tv is a live timeval.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as _,
                )
            };
            send_raw_here(IPPROTO_IPIP, s.net.v4(1).into(), &echo);
            let mut buf = [0u8; 2048];
            loop {
                // SAFETY: buf is a live buffer of its length.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n <= 0 {
                    return Ok(None);
                }
                let p = &buf[..n as usize];
                let ihl = (p[0] & 0x0f) as usize * 4;
                if p[ihl] == 0 && p[ihl + 4..ihl + 6] == [0x12, 0x34] {
                    return Ok(Some(p.to_vec()));
                }
            }
        })
        .unwrap()
        .expect("an echo reply");
    assert_eq!(
        &reply[12..16],
        &ov4(1).octets(),
        "reply from the overlay address"
    );
    let ihl = (reply[0] & 0x0f) as usize * 4;
    assert_eq!(&reply[ihl + 8..], b"lwtun decap ping", "echoed payload");
}

/// As [`send_raw`], in the calling thread's namespace.
fn send_raw_here(proto: u8, dst: IpAddr, payload: &[u8]) {
    let fd = raw_socket(dst.is_ipv6(), proto, None);
    let (sa, len) = sockaddr(dst);
    // SAFETY: payload and sa are live buffers of the sizes given.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            0,
            sa.as_ptr().cast(),
            len,
        )
    };
    assert_eq!(n as usize, payload.len());
}

#[test]
fn decapsulated_packets_are_forwarded() {
    require!();
    // ns 0 (peer) ── ns 1 (decap, forwarding) ── ns 2 (host behind the tunnel endpoint)
    let net = common::line(3);
    let (peer, router, host) = (net.ns(0), net.ns(1), net.ns(2));
    common::ip(
        peer,
        &["addr", "add", &format!("{}/32", ov4(0)), "dev", "lo"],
    );
    // the inner source must route back through the tunnel side for rp_filter
    common::ip(
        router,
        &[
            "route",
            "add",
            &format!("{}/32", ov4(0)),
            "via",
            &net.v4(0).to_string(),
        ],
    );
    let mut d = Decap::load().unwrap();
    d.add_local(net.v4_towards(1, 0).into()).unwrap();
    d.add_local(net.v6_towards(1, 0).into()).unwrap();
    d.add_peer(DecapPeer::host(net.v4(0).into())).unwrap();
    d.add_peer(DecapPeer::host(net.v6(0).into())).unwrap();
    d.attach(&net.device(1, "to0")).unwrap();

    let (h4, h6) = (net.v4(2), net.v6(2));
    let (s4, s6) = host
        .run(|| {
            let s4 = UdpSocket::bind(SocketAddr::new(h4.into(), APP_PORT)).unwrap();
            let s6 = UdpSocket::bind(SocketAddr::new(h6.into(), APP_PORT)).unwrap();
            for s in [&s4, &s6] {
                s.set_read_timeout(Some(Duration::from_millis(1500)))
                    .unwrap();
            }
            Ok((s4, s6))
        })
        .unwrap();
    let endpoint4: IpAddr = net.v4_towards(1, 0).into();
    let endpoint6: IpAddr = net.v6_towards(1, 0).into();
    let i4 = inner_udp4(ov4(0), h4, 4242, APP_PORT, b"forwarded v4");
    let i6 = inner_udp6(net.v6(0), h6, 4242, APP_PORT, b"forwarded v6");
    send_raw(peer, IPPROTO_IPIP, None, endpoint4, &i4);
    send_raw(
        peer,
        IPPROTO_GRE,
        None,
        endpoint6,
        &gre(0x86dd, None, true, &i6),
    );
    let mut buf = [0u8; 256];
    let (n, _) = s4
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("v4: {e}; {:?}", d.counters().unwrap()));
    assert_eq!(&buf[..n], b"forwarded v4");
    let (n, _) = s6
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("v6: {e}; {:?}", d.counters().unwrap()));
    assert_eq!(&buf[..n], b"forwarded v6");
    let c = d.counters().unwrap();
    assert_eq!((c.ipip.packets, c.gre.packets), (1, 1), "{c:?}");
}

#[test]
fn tcp_through_lwtun_encap_is_decapsulated_and_forwarded() {
    require!();
    use lwtun::netlink::Netlink;
    use lwtun::peer::{Encap, EncapPeer};
    use lwtun::tunnel::Tunnel;

    // ns 0 (lwtun encap) ══tunnel══ ns 1 (decap, forwards) ── ns 2 (TCP server)
    let net = common::line(3);
    let (a, r, h) = (net.ns(0), net.ns(1), net.ns(2));
    let server: IpAddr = net.v4(2).into();
    common::ip(a, &["addr", "add", &format!("{}/32", ov4(0)), "dev", "lo"]);
    let back = format!("{}/32", ov4(0));
    common::ip(
        h,
        &[
            "route",
            "add",
            &back,
            "via",
            &net.v4_towards(1, 2).to_string(),
        ],
    );
    common::ip(r, &["route", "add", &back, "via", &net.v4(0).to_string()]);

    let mut d = Decap::load().unwrap();
    d.add_local(net.v4_towards(1, 0).into()).unwrap();
    d.add_peer(DecapPeer::host(net.v4(0).into())).unwrap();
    d.add_udp_port(PORT).unwrap();
    d.attach(&net.device(1, "to0")).unwrap();

    let underlay = net.device(0, "to1");
    let mut nl = Netlink::open_in(a).unwrap();
    let mut tunnel = Tunnel::load().unwrap();
    let prefix = format!("{server}/32").parse().unwrap();
    let route = tunnel
        .route(prefix)
        .device(&underlay)
        .source(ov4(0).into())
        .headroom(lwtun::tunnel::WORST_CASE_ENCAP);
    tunnel.steer(&mut nl, route).unwrap();

    for encap in [
        Encap::Ipip,
        Encap::Gre {
            key: None,
            checksum: false,
        },
        Encap::Udp { port: PORT },
    ] {
        let peer = EncapPeer::new(net.v4_towards(1, 0).into(), net.v4(0).into(), encap);
        tunnel.peers_mut().replace(prefix, peer).unwrap();
        let before = d.counters().unwrap();
        let t = common::tcp_stream(h, a, server, 4 << 20);
        assert!(
            t.complete(),
            "{encap:?}: {t:?}; {:?}",
            d.counters().unwrap()
        );
        let after = d.counters().unwrap();
        let moved = match encap {
            Encap::Ipip => after.ipip.packets - before.ipip.packets,
            Encap::Gre { .. } => after.gre.packets - before.gre.packets,
            Encap::Udp { .. } => after.udp.packets - before.udp.packets,
            other => panic!("no decap counter for {other:?}"),
        };
        assert!(moved > 0, "{encap:?}: decapsulated {moved}; {after:?}");
        assert_eq!(after.dropped(), 0, "{encap:?}: {after:?}");
    }
}
