//! Into a tunnel four ways, in one run: lwtun's tc redirect and lwt_xmit redirect into a VXLAN
//! external device, lwtun's own LWT encap (`Tunnel`, GRE key 42 pushed by `bpf_lwt_push_encap`),
//! and the kernel's own VXLAN route as the peer. UDP 64-byte packets per second and TCP
//! throughput, each as a ratio to the peer.
//!
//! ```text
//!  client a0 ──veth── r0 router ──────────────────── r1 ──veth── b0 server
//!                     10.200/16: tc ingress redirect_tc → vx0 (external), VNI 42
//!                     10.201/16: route dev vx0 encap bpf xmit redirect_lwt_xmit → vx0, VNI 42
//!                     10.202/16: route via vxr (plain vxlan id 42, port 4790)      [the peer]
//!                     10.206/16: route dev r1 encap bpf xmit encap_xmit (GRE key 42)
//! ```
//!
//! The UDP sender in the client sends 64-byte datagrams with `sendmmsg` (64 per call) for a fixed
//! time; the rate is what arrived on the server's underlay device `b0` (`IFLA_STATS64`
//! rx_packets), so drops anywhere count against the path. The server has no GRE device (this
//! kernel has none), so the LWT encap row has no TCP figure: its packets are counted on arrival
//! and dropped. TCP streams a fixed amount and times it to the
//! receiver's end of stream. The tc program is attached only while its own path is measured.
//!
//! A second table times the programs alone with BPF_PROG_TEST_RUN (the kernel's average over a
//! million runs), against `tc_count` as the floor.
//!
//! Run as root: `cargo bench --bench tc` (`LWTUN_BENCH_SECS` per UDP run, default 2;
//! `LWTUN_BENCH_TCP_MB`, default 512).

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::peer::{Encap, EncapPeer};
use lwtun::program::Hook;
use lwtun::route::LwtRoute;
use lwtun::tc::{TcAttach, TcDirection};
use lwtun::tunnel::Tunnel;
use lwtun::tunnel_redirect::{RedirectRule, TunnelKey, TunnelRedirect};

const VX0_MAC: &str = "02:00:00:00:a0:01";
const VXB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xb0, 0x01];

fn ip(ns: &NetNs, args: &str) {
    let out = ns
        .command("ip")
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Topology {
    a: NetNs,
    r: NetNs,
    b: NetNs,
}

fn topology() -> Topology {
    let a = NetNs::create_unique("bench-tca").unwrap();
    let r = NetNs::create_unique("bench-tcr").unwrap();
    let b = NetNs::create_unique("bench-tcb").unwrap();
    for ns in [&a, &r, &b] {
        ip(ns, "link set lo up");
    }
    ip(
        &a,
        &format!(
            "link add a0 mtu 1450 type veth peer name r0 mtu 1450 netns {}",
            r.name()
        ),
    );
    ip(&a, "addr add 10.77.0.1/24 dev a0");
    ip(&a, "link set a0 up");
    for net in [
        "10.200.0.0/16",
        "10.201.0.0/16",
        "10.202.0.0/16",
        "10.206.0.0/16",
    ] {
        ip(&a, &format!("route add {net} via 10.77.0.2"));
    }
    ip(&r, "addr add 10.77.0.2/24 dev r0");
    ip(&r, "link set r0 up");
    ip(
        &r,
        &format!("link add r1 type veth peer name b0 netns {}", b.name()),
    );
    ip(&r, "addr add 192.168.77.1/24 dev r1");
    ip(&r, "link set r1 up");
    ip(
        &r,
        &format!("link add vx0 address {VX0_MAC} type vxlan external dstport 4789"),
    );
    ip(&r, "link set vx0 up");
    ip(
        &r,
        "link add vxr type vxlan id 42 remote 192.168.77.2 local 192.168.77.1 dstport 4790",
    );
    ip(&r, "link set vxr up");
    ip(
        &r,
        "neigh add 10.202.0.254 lladdr 02:00:00:00:b0:02 dev vxr nud permanent",
    );
    ip(
        &r,
        "route add 10.202.0.0/16 via 10.202.0.254 dev vxr onlink",
    );
    r.set_sysctl("net.ipv4.ip_forward", "1").unwrap();

    ip(&b, "addr add 192.168.77.2/24 dev b0");
    ip(&b, "link set b0 up");
    ip(&b, "link add vxb address 02:00:00:00:b0:01 type vxlan id 42 remote 192.168.77.1 local 192.168.77.2 dstport 4789");
    ip(&b, "addr add 10.200.0.7/24 dev vxb");
    ip(&b, "addr add 10.201.0.7/24 dev vxb");
    ip(&b, "link set vxb up");
    ip(&b, "link add vxb2 address 02:00:00:00:b0:02 type vxlan id 42 remote 192.168.77.1 local 192.168.77.2 dstport 4790");
    ip(&b, "addr add 10.202.0.7/24 dev vxb2");
    ip(&b, "link set vxb2 up");
    ip(
        &b,
        &format!("neigh add 10.200.0.254 lladdr {VX0_MAC} dev vxb nud permanent"),
    );
    ip(&b, "route add 10.77.0.0/24 via 10.200.0.254 dev vxb");
    Topology { a, r, b }
}

/// rx_packets of `dev` in `ns` (the first u64 of IFLA_STATS64).
fn rx_packets(ns: &NetNs, dev: &str) -> u64 {
    let link = ns.run(|| Netlink::open()?.link_by_name(dev)).expect("link");
    let stats = link.attribute(23).expect("IFLA_STATS64");
    u64::from_ne_bytes(stats[0..8].try_into().unwrap())
}

/// Sends 64-byte UDP datagrams from `a` to `dst` for `secs`; returns packets per second that
/// arrived on the server's underlay device.
fn udp_pps(t: &Topology, dst: IpAddr, secs: f64) -> f64 {
    let rx_dev = "b0";
    // A bound socket that is never read: full-buffer drops, not ICMP port-unreachable replies.
    // (The GRE row's destination is no address of the server: its packets end at b0.)
    let _sink =
        t.b.run(|| UdpSocket::bind((dst, 9000)).map_err(|e| lwtun::Error::io("bind", e)))
            .ok();
    let before = rx_packets(&t.b, rx_dev);
    let sent =
        t.a.run(|| {
            let sock = UdpSocket::bind("10.77.0.1:0").map_err(|e| lwtun::Error::io("bind", e))?;
            sock.connect((dst, 9000))
                .map_err(|e| lwtun::Error::io("connect", e))?;
            let payload = [0x5au8; 64];
            let mut iov: Vec<libc::iovec> = (0..64)
                .map(|_| libc::iovec {
                    iov_base: payload.as_ptr() as *mut _,
                    iov_len: payload.len(),
                })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iov
                .iter_mut()
                .map(|v| {
                    // SAFETY: an all-zero mmsghdr is valid; we fill in the iovec.
                    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    m.msg_hdr.msg_iov = v;
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            let end = Instant::now() + Duration::from_secs_f64(secs);
            let mut sent = 0u64;
            while Instant::now() < end {
                // SAFETY: msgs holds 64 initialised headers pointing at live iovecs.
                let n = unsafe {
                    libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0)
                };
                if n > 0 {
                    sent += n as u64;
                }
            }
            Ok(sent)
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let got = rx_packets(&t.b, rx_dev) - before;
    eprintln!("    sent {sent}, arrived {got}");
    got as f64 / secs
}

/// Streams `bytes` from `a` to `dst` in `b`; returns Gbit/s.
fn tcp_gbps(t: &Topology, dst: IpAddr, bytes: usize) -> f64 {
    let listener =
        t.b.run(|| TcpListener::bind((dst, 0)).map_err(|e| lwtun::Error::io("bind", e)))
            .unwrap();
    let port = listener.local_addr().unwrap().port();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0usize;
        loop {
            match s.read(&mut buf).unwrap() {
                0 => return (n, Instant::now()),
                k => n += k,
            }
        }
    });
    let start = Instant::now();
    t.a.run(|| {
        let mut s = TcpStream::connect((dst, port)).map_err(|e| lwtun::Error::io("connect", e))?;
        let chunk = vec![0x5au8; 1 << 16];
        let mut left = bytes;
        while left > 0 {
            let k = left.min(chunk.len());
            s.write_all(&chunk[..k])
                .map_err(|e| lwtun::Error::io("send", e))?;
            left -= k;
        }
        Ok(())
    })
    .unwrap();
    let (n, end) = reader.join().unwrap();
    assert_eq!(n, bytes, "TCP stream incomplete");
    n as f64 * 8.0 / (end - start).as_secs_f64() / 1e9
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("tc bench: SKIPPED, needs root (namespaces, BPF)");
        return;
    }
    let secs: f64 = std::env::var("LWTUN_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    let tcp_bytes: usize = std::env::var("LWTUN_BENCH_TCP_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512usize)
        << 20;
    let t = topology();
    let mut nl = Netlink::open_in(&t.r).unwrap();
    let vx0 = nl.device("vx0").unwrap();
    let r0 = nl.device("r0").unwrap();
    let key = TunnelKey::new("192.168.77.2".parse().unwrap(), 42);

    let mut via_tc = TunnelRedirect::load().unwrap();
    via_tc
        .set_rule(
            &mut nl,
            RedirectRule::new("10.200.0.0/16".parse().unwrap(), &vx0, key).inner_dst_mac(VXB_MAC),
        )
        .unwrap();
    let mut via_lwt = TunnelRedirect::load().unwrap();
    via_lwt
        .set_rule(
            &mut nl,
            RedirectRule::new("10.201.0.0/16".parse().unwrap(), &vx0, key).inner_dst_mac(VXB_MAC),
        )
        .unwrap();
    let _route = LwtRoute::new("10.201.0.0/16".parse().unwrap())
        .device(&vx0)
        .program(Hook::Xmit, via_lwt.lwt_program())
        .install(&mut nl)
        .unwrap();

    let peer: IpAddr = "10.202.0.7".parse().unwrap();
    let lwt: IpAddr = "10.201.0.7".parse().unwrap();
    let tc: IpAddr = "10.200.0.7".parse().unwrap();

    // Warm up every path (ARP, route caches) once.
    for dst in [peer, lwt] {
        tcp_gbps(&t, dst, 1 << 20);
    }

    let mut rows = Vec::new();
    eprintln!("kernel vxlan route (peer):");
    let peer_pps = udp_pps(&t, peer, secs);
    let peer_tcp = tcp_gbps(&t, peer, tcp_bytes);
    rows.push(("kernel vxlan route (peer)", peer_pps, peer_tcp));

    eprintln!("lwtun lwt_xmit redirect:");
    let lwt_pps = udp_pps(&t, lwt, secs);
    let lwt_tcp = tcp_gbps(&t, lwt, tcp_bytes);
    rows.push(("lwtun lwt_xmit redirect", lwt_pps, lwt_tcp));

    eprintln!("lwtun tc redirect:");
    let attachment = TcAttach::new(&r0, TcDirection::Ingress)
        .attach(via_tc.tc_program())
        .unwrap();
    tcp_gbps(&t, tc, 1 << 20);
    let tc_pps = udp_pps(&t, tc, secs);
    let tc_tcp = tcp_gbps(&t, tc, tcp_bytes);
    drop(attachment);
    rows.push(("lwtun tc redirect", tc_pps, tc_tcp));

    eprintln!("lwtun LWT encap (GRE key 42):");
    // R encapsulates what it forwards: its routes need no preferred source.
    let mut tunnel = Tunnel::builder().forward_only(true).load().unwrap();
    let r1 = nl.device("r1").unwrap();
    tunnel
        .peers_mut()
        .insert(
            "10.206.0.0/16".parse().unwrap(),
            EncapPeer::new(
                "192.168.77.2".parse().unwrap(),
                "192.168.77.1".parse().unwrap(),
                Encap::Gre {
                    key: Some(42),
                    checksum: false,
                },
            ),
        )
        .unwrap();
    let route = tunnel.route("10.206.0.0/16".parse().unwrap()).device(&r1);
    tunnel.steer(&mut nl, route).unwrap();
    let encap: IpAddr = "10.206.0.7".parse().unwrap();
    let encap_pps = udp_pps(&t, encap, secs);
    rows.push(("lwtun LWT encap (GRE)", encap_pps, f64::NAN));
    drop(tunnel);

    println!();
    println!(
        "{:<28} {:>12} {:>8} {:>10} {:>8}",
        "path", "UDP64 pps", "ratio", "TCP Gbit/s", "ratio"
    );
    for (name, pps, gbps) in rows {
        let tcp = if gbps.is_nan() {
            format!("{:>10} {:>8}", "n/a", "")
        } else {
            format!("{gbps:>10.2} {:>8.2}", gbps / peer_tcp)
        };
        println!("{name:<28} {pps:>12.0} {:>8.2} {tcp}", pps / peer_pps);
    }
    let st = via_tc.rule_stats("10.200.0.0/16".parse().unwrap()).unwrap();
    let sl = via_lwt
        .rule_stats("10.201.0.0/16".parse().unwrap())
        .unwrap();
    println!(
        "redirect counters: tc {} packets / {} errors; lwt_xmit {} packets / {} errors",
        st.packets, st.errors, sl.packets, sl.errors
    );

    // The programs alone: BPF_PROG_TEST_RUN's average run time over many runs of one frame,
    // against tc_count (a per-CPU counter bump) as the floor.
    let runs = 1_000_000;
    let counter = lwtun::tc::TcCounter::load().unwrap();
    let hit = frame([10, 200, 0, 7]);
    let miss = frame([10, 99, 0, 7]);
    let floor = run_ns(counter.program(), &hit, runs);
    println!();
    println!(
        "{:<40} {:>8} {:>8}",
        "program (BPF_PROG_TEST_RUN)", "ns/pkt", "ratio"
    );
    for (name, fd, data) in [
        ("tc_count (floor)", counter.program(), &hit),
        ("redirect_tc, rule hit", via_tc.tc_program(), &hit),
        ("redirect_tc, miss", via_tc.tc_program(), &miss),
    ] {
        let ns = run_ns(fd, data, runs);
        println!("{name:<40} {ns:>8.1} {:>8.2}", ns / floor);
    }
}

/// An Ethernet + IPv4 + UDP frame to `dst`.
fn frame(dst: [u8; 4]) -> Vec<u8> {
    let mut f = vec![
        0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 2, 0, 0, 0, 0, 0xaa, 0x08, 0x00,
    ];
    f.extend_from_slice(&[0x45, 0, 0, 92, 0, 1, 0, 0, 64, 17, 0, 0, 10, 77, 0, 1]);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&[0x30, 0x39, 0x23, 0x28, 0, 72, 0, 0]);
    f.resize(14 + 92, 0x5a);
    f
}

/// Average run time of `prog` on `data` in nanoseconds, as the kernel measures it.
fn run_ns(prog: std::os::fd::BorrowedFd<'_>, data: &[u8], repeat: i32) -> f64 {
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
        data_in: data.as_ptr().cast(),
        data_size_in: data.len() as u32,
        repeat,
        ..Default::default()
    };
    // SAFETY: data_in points at data.len() readable bytes; no output buffers are given.
    let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    assert_eq!(rc, 0, "BPF_PROG_TEST_RUN");
    opts.duration as f64
}
