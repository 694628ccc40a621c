//! Tunnel throughput, in one run: plain routing vs lwtun GRE (without and with checksum), IP-in-IP
//! and UDP encap (with the BPF decap) vs the kernel's seg6 encap (End.DX4 decap) vs a VXLAN
//! collect_md device (`encap ip id 42`) vs point-to-point kernel `gre` and `ipip` devices (what a
//! user configures instead, one device per peer), each between two fresh namespaces joined by a
//! veth pair:
//!
//! ```text
//!  A (inner 10.70.0.1) ── a-b ═══ veth 10.80.0.0/24, fd80::/64 ═══ b-a ── B (service 10.90.0.1)
//! ```
//!
//! The lwtun modes run in the default mode (`DirectMode::Checked`: the outer packet takes the
//! inner route's next hop where the tunnel has checked that the outer route lookup would pick
//! it, as it does here), marked `reroute` with `TunnelBuilder::direct(false)` (the second route
//! lookup after the encap, the default before 0.3) and marked `direct` with
//! `TunnelBuilder::direct(true)` (unchecked).
//!
//! `lwtun service IPIP x4` / `GRE x4`: A sends through a `Services` prefix of 4 backends (all
//! B's addresses; one flow, so one backend, remembered in the flow table) with the per-packet
//! LPM, flow-table and row work of a multipath encap, compared with the one-peer tunnel of the
//! same encap, rerouted as the services always are.
//!
//! For each mode: TCP goodput of one stream A→B for 1 s, and UDP 64-byte datagrams per second
//! received by B while A sends for 0.5 s; both as ratios to plain routing measured in the same
//! run. Both ends run the tunnel (B's ACKs go back through it too). The modes take turns over 5
//! rounds and the medians are reported, so that load from elsewhere falls on all modes alike.
//! Beside the UDP rate: the sending thread's CPU time per datagram (`tx ns/pkt`, with the veth
//! receive softirq that runs on the same CPU, decap included), and plain routing's figure over
//! it as a ratio: a cost figure that load from other processes hardly moves. The last lines put
//! lwtun's GRE and IP-in-IP beside the kernel device of the same encapsulation (goal: TCP ≥ 1.0,
//! UDP64 ≥ 0.95). A row whose kernel lacks the feature (seg6, the gre or ipip module) is left
//! out with a line saying so; `scripts/kernel-matrix.sh --bench tunnel` runs the bench in the
//! VMs, whose kernels have them.
//!
//! Run as root: `cargo bench --bench tunnel` (`LWTUN_BENCH_SECS`, `LWTUN_BENCH_ROUNDS`,
//! `LWTUN_BENCH_MODES`: a comma-separated list of mode names to run besides plain routing, and
//! `LWTUN_BENCH_UNCONNECTED=1` to send the UDP datagrams from an unconnected socket (sendto: a
//! route lookup per datagram, and no socket hash on the packet), `LWTUN_BENCH_UDP_ONLY=1` to
//! skip the TCP streams and `LWTUN_BENCH_NO_PLAIN=1` to leave plain
//! routing out, e.g. to profile one mode under `perf record`).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lwtun::decap::{Decap, DecapPeer};
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::peer::{Encap, EncapPeer};
use lwtun::service::{Backend, Services};
use lwtun::tunnel::{DirectMode, Tunnel};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Plain,
    /// The encap, and the tunnel's `DirectMode`.
    Lwtun(Encap, DirectMode),
    Seg6,
    Vxlan,
    /// A point-to-point kernel tunnel device of this kind (`gre`, `ipip`) at each end: what a
    /// user would set up instead of lwtun for one peer.
    Device(&'static str),
    /// A's side a `Services` VIP prefix of [`SERVICE_BACKENDS`] backends (B's addresses) with
    /// this encap; B's side the tunnel back (rerouted).
    Service(Encap),
}

/// Backends of the `Service` mode's prefix.
const SERVICE_BACKENDS: u8 = 4;

fn name(m: Mode) -> String {
    match m {
        Mode::Plain => "plain routing".into(),
        Mode::Lwtun(e, DirectMode::Checked) => format!("lwtun {e}"),
        Mode::Lwtun(e, DirectMode::Never) => format!("lwtun {e} reroute"),
        Mode::Lwtun(e, DirectMode::Always) => format!("lwtun {e} direct"),
        Mode::Seg6 => "seg6 encap (End.DX4)".into(),
        Mode::Vxlan => "vxlan collect_md".into(),
        Mode::Device(kind) => format!("kernel {kind} device"),
        Mode::Service(e) => format!("lwtun service {e} x{SERVICE_BACKENDS}"),
    }
}

fn ip(ns: &NetNs, args: &str) -> String {
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
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Why the kernel cannot create a `kind` tunnel device (tried in a throwaway namespace), if
/// it cannot.
fn device_kind_missing(kind: &str) -> Option<String> {
    let ns = NetNs::create_unique("bt-probe").unwrap();
    let out = ns
        .command("ip")
        .args([
            "link", "add", "kt", "type", kind, "remote", "10.0.0.1", "local", "10.0.0.2",
        ])
        .output()
        .expect("run ip");
    let config = if kind == "gre" {
        "CONFIG_NET_IPGRE"
    } else {
        "CONFIG_NET_IPIP"
    };
    (!out.status.success()).then(|| {
        format!(
            "the kernel has no {kind} devices ({config}): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac(ns: &NetNs, dev: &str) -> String {
    let out = ip(ns, &format!("-o link show {dev}"));
    out.split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("a MAC")
        .to_string()
}

/// What keeps a mode's data plane alive.
struct Side {
    _route: Option<lwtun::route::InstalledRoute>,
    _services: Option<Services>,
    _tunnel: Option<Tunnel>,
    _decap: Option<Decap>,
    _nl: Option<Netlink>,
}

struct Pair {
    a: NetNs,
    b: NetNs,
    _sides: Vec<Side>,
}

fn pair(mode: Mode) -> Pair {
    let a = NetNs::create_unique("bt-a").unwrap();
    let b = NetNs::create_unique("bt-b").unwrap();
    Netlink::open_in(&a)
        .unwrap()
        .add_veth("a-b", "b-a", Some(&b))
        .unwrap();
    let ends = [
        (&a, "a-b", "10.80.0.1", "fd80::1", "10.70.0.1"),
        (&b, "b-a", "10.80.0.2", "fd80::2", "10.90.0.1"),
    ];
    for (ns, dev, v4, v6, inner) in ends {
        for cmd in [
            "link set lo up".to_string(),
            format!("link set {dev} up"),
            format!("addr add {v4}/24 dev {dev}"),
            format!("-6 addr add {v6}/64 dev {dev} nodad"),
            format!("addr add {inner}/32 dev lo"),
        ] {
            ip(ns, &cmd);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut sides = Vec::new();
    // (ns, dev, local outer v4, remote outer v4, local v6, remote v6, remote inner prefix, own inner)
    let specs = [
        (
            &a,
            "a-b",
            "10.80.0.1",
            "10.80.0.2",
            "fd80::1",
            "fd80::2",
            "10.90.0.0/24",
            "10.70.0.1",
        ),
        (
            &b,
            "b-a",
            "10.80.0.2",
            "10.80.0.1",
            "fd80::2",
            "fd80::1",
            "10.70.0.0/24",
            "10.90.0.1",
        ),
    ];
    for (i, (ns, dev, l4, r4, l6, r6, prefix, own)) in specs.into_iter().enumerate() {
        match mode {
            Mode::Plain => {
                ip(ns, &format!("route add {prefix} via {r4} src {own}"));
            }
            Mode::Service(encap) if i == 0 => {
                // The VIP prefix is B's inner prefix; its backends are B's outer addresses.
                let mut nl = Netlink::open_in(ns).unwrap();
                let underlay = nl.device(dev).unwrap();
                let mut services = Services::builder().rows(4_099).load().unwrap();
                let backends: Vec<Backend> = (0..SERVICE_BACKENDS)
                    .map(|k| {
                        Backend::new(EncapPeer::new(
                            addr(&format!("10.80.0.{}", 2 + k)),
                            addr(l4),
                            encap,
                        ))
                    })
                    .collect();
                services.set(prefix.parse().unwrap(), &backends).unwrap();
                let route = services
                    .route(prefix.parse().unwrap())
                    .device(&underlay)
                    .source(addr(own))
                    .install(&mut nl)
                    .unwrap();
                let mut d = Decap::load().unwrap();
                d.add_local(addr(l4)).unwrap();
                d.add_peer(DecapPeer::host(addr(r4))).unwrap();
                if let Encap::Udp { port } = encap {
                    d.add_udp_port(port).unwrap();
                }
                d.attach(&underlay).unwrap();
                sides.push(Side {
                    _route: Some(route),
                    _services: Some(services),
                    _tunnel: None,
                    _decap: Some(d),
                    _nl: Some(nl),
                });
            }
            Mode::Lwtun(encap, _) | Mode::Service(encap) => {
                let direct = match mode {
                    Mode::Lwtun(_, direct) => direct,
                    _ => DirectMode::Never,
                };
                let mut nl = Netlink::open_in(ns).unwrap();
                let underlay = nl.device(dev).unwrap();
                let mut t = Tunnel::builder().direct_mode(direct).load().unwrap();
                t.peers_mut()
                    .insert(
                        prefix.parse().unwrap(),
                        EncapPeer::new(addr(r4), addr(l4), encap),
                    )
                    .unwrap();
                let route = t
                    .route(prefix.parse().unwrap())
                    .device(&underlay)
                    .source(addr(own));
                t.steer(&mut nl, route).unwrap();
                let mut d = Decap::load().unwrap();
                d.add_local(addr(l4)).unwrap();
                if matches!(mode, Mode::Service(_)) {
                    // B is every backend of A's service.
                    for k in 1..SERVICE_BACKENDS {
                        let extra = format!("10.80.0.{}", 2 + k);
                        ip(ns, &format!("addr add {extra}/24 dev {dev}"));
                        d.add_local(addr(&extra)).unwrap();
                    }
                }
                d.add_peer(DecapPeer::host(addr(r4))).unwrap();
                if let Encap::Udp { port } = encap {
                    d.add_udp_port(port).unwrap();
                }
                d.attach(&underlay).unwrap();
                sides.push(Side {
                    _route: None,
                    _services: None,
                    _tunnel: Some(t),
                    _decap: Some(d),
                    _nl: Some(nl),
                });
            }
            Mode::Seg6 => {
                // Each end decapsulates at its own segment fdff::N with End.DX4 to its service.
                ns.set_sysctl("net.ipv6.conf.all.seg6_enabled", "1")
                    .unwrap();
                ns.set_sysctl(&format!("net.ipv6.conf.{dev}.seg6_enabled"), "1")
                    .unwrap();
                let me = i + 1;
                let other = 2 - i;
                let _ = l6;
                ip(
                    ns,
                    &format!(
                        "-6 route add fdff::{me}/128 encap seg6local action End.DX4 nh4 {own} dev {dev}"
                    ),
                );
                ip(ns, &format!("-6 route add fdff::{other}/128 via {r6}"));
                ip(
                    ns,
                    &format!(
                        "route add {prefix} encap seg6 mode encap segs fdff::{other} dev {dev} src {own}"
                    ),
                );
            }
            Mode::Device(kind) => {
                ip(
                    ns,
                    &format!("link add kt type {kind} remote {r4} local {l4}"),
                );
                ip(ns, "link set kt up");
                ip(ns, &format!("route add {prefix} dev kt src {own}"));
            }
            Mode::Vxlan => {
                ip(ns, "link add vx0 type vxlan external dstport 4789");
                ip(ns, "link set vx0 up");
                let _ = (l4, l6, r6);
                sides.push(Side {
                    _route: None,
                    _services: None,
                    _tunnel: None,
                    _decap: None,
                    _nl: None,
                });
            }
        }
    }
    if mode == Mode::Vxlan {
        let (ma, mb) = (mac(&a, "vx0"), mac(&b, "vx0"));
        ip(
            &a,
            "route add 10.90.0.0/24 encap ip id 42 dst 10.80.0.2 dev vx0 src 10.70.0.1",
        );
        ip(&a, &format!("neigh add 10.90.0.1 lladdr {mb} dev vx0"));
        ip(
            &b,
            "route add 10.70.0.0/24 encap ip id 42 dst 10.80.0.1 dev vx0 src 10.90.0.1",
        );
        ip(&b, &format!("neigh add 10.70.0.1 lladdr {ma} dev vx0"));
    }
    Pair {
        a,
        b,
        _sides: sides,
    }
}

/// TCP goodput A→B in bit/s over `secs`.
fn tcp(p: &Pair, secs: f64) -> f64 {
    let target = SocketAddr::new(addr("10.90.0.1"), 5201);
    let listener =
        p.b.run(|| TcpListener::bind(target).map_err(|e| lwtun::Error::io("bind", e)))
            .unwrap();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 256 << 10];
        let (mut total, start) = (0usize, Instant::now());
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        (total, start.elapsed().as_secs_f64())
    });
    let mut c =
        p.a.run(|| {
            TcpStream::connect_timeout(&target, Duration::from_secs(3))
                .map_err(|e| lwtun::Error::io("connect", e))
        })
        .unwrap();
    let chunk = vec![0x5au8; 256 << 10];
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        c.write_all(&chunk).unwrap();
    }
    drop(c);
    let (bytes, elapsed) = reader.join().unwrap();
    bytes as f64 * 8.0 / elapsed
}

/// The calling thread's CPU time in ns (CLOCK_THREAD_CPUTIME_ID).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for clock_gettime to write.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// 64-byte UDP datagrams per second B receives while A sends for `secs`, and the sending
/// thread's CPU time per datagram sent in ns. The second figure hardly depends on load from
/// elsewhere: it is CPU time, not wall time. It covers the send path (socket, routing, the LWT
/// program, encap, reroute, the veth) and, as this kernel has no IRQ time accounting, the veth
/// receive softirq that runs on the sender's CPU (tc ingress decap, ip_rcv, the UDP socket
/// enqueue); not the receiver's recv() calls.
fn udp(p: &Pair, secs: f64) -> (f64, f64) {
    let target = SocketAddr::new(addr("10.90.0.1"), 5301);
    let rx =
        p.b.run(|| UdpSocket::bind(target).map_err(|e| lwtun::Error::io("bind", e)))
            .unwrap();
    // The receiver never sleeps on the socket: it drains it without blocking and naps when it
    // is empty. A receiver blocked in recv() must be woken for the next datagram, and that
    // wake-up (an IPI to the other CPU, microseconds in a VM) is paid by the sender's softirq:
    // a slower sender lets the receiver fall asleep more often, so each wake-up taxes it again
    // and magnifies any difference between modes. With no sleeper, the socket wakes nobody.
    rx.set_nonblocking(true).unwrap();
    let rcvbuf: libc::c_int = 16 << 20;
    // SAFETY: a valid socket and a c_int option value of the given size.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&rx),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &rcvbuf as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n = 0u64;
        loop {
            match rx.recv(&mut buf) {
                Ok(_) => n += 1,
                // empty: the sender's last datagrams are in once it has stopped
                Err(_) if stop2.load(Ordering::Relaxed) => return n,
                Err(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    });
    let unconnected = std::env::var("LWTUN_BENCH_UNCONNECTED").is_ok_and(|v| v == "1");
    let tx =
        p.a.run(|| {
            let s = UdpSocket::bind("10.70.0.1:0").map_err(|e| lwtun::Error::io("bind", e))?;
            if !unconnected {
                s.connect(target)
                    .map_err(|e| lwtun::Error::io("connect", e))?;
            }
            Ok(s)
        })
        .unwrap();
    let payload = [0u8; 64 - 28];
    let mut sent = 0u64;
    let start = Instant::now();
    let cpu0 = thread_cpu_ns();
    while start.elapsed().as_secs_f64() < secs {
        // 64 sends between clock reads keep the clock's cost out of the per-packet figure
        for _ in 0..64 {
            let r = if unconnected {
                tx.send_to(&payload, target)
            } else {
                tx.send(&payload)
            };
            if r.is_ok() {
                sent += 1;
            }
        }
    }
    let cpu = thread_cpu_ns() - cpu0;
    let elapsed = start.elapsed().as_secs_f64();
    // datagrams still in the veth backlog reach the socket within a few ms
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    let received = counter.join().unwrap() as f64;
    (received / elapsed, cpu as f64 / sent.max(1) as f64)
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("tunnel bench: SKIPPED, needs root (namespaces, BPF, routes)");
        return;
    }
    let secs: f64 = std::env::var("LWTUN_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let gre = Encap::Gre {
        key: None,
        checksum: false,
    };
    let gre_csum = Encap::Gre {
        key: None,
        checksum: true,
    };
    let udp_encap = Encap::Udp { port: 5555 };
    let modes = [
        Mode::Plain,
        Mode::Lwtun(gre, DirectMode::Checked),
        Mode::Lwtun(gre_csum, DirectMode::Checked),
        Mode::Lwtun(Encap::Ipip, DirectMode::Checked),
        Mode::Lwtun(udp_encap, DirectMode::Checked),
        Mode::Lwtun(gre, DirectMode::Never),
        Mode::Lwtun(gre_csum, DirectMode::Never),
        Mode::Lwtun(Encap::Ipip, DirectMode::Never),
        Mode::Lwtun(udp_encap, DirectMode::Never),
        Mode::Lwtun(gre, DirectMode::Always),
        Mode::Seg6,
        Mode::Vxlan,
        Mode::Device("gre"),
        Mode::Device("ipip"),
        Mode::Service(Encap::Ipip),
        Mode::Service(gre),
    ];
    // LWTUN_BENCH_MODES="lwtun gre,lwtun ipip" keeps those modes (by name) and plain routing;
    // LWTUN_BENCH_NO_PLAIN=1 leaves plain routing out (a profile of one mode alone; the ratios
    // are then to the first mode).
    let no_plain = std::env::var("LWTUN_BENCH_NO_PLAIN").is_ok_and(|v| v == "1");
    let modes: Vec<Mode> = match std::env::var("LWTUN_BENCH_MODES") {
        Ok(keep) => modes
            .into_iter()
            .filter(|&m| {
                (m == Mode::Plain && !no_plain) || keep.split(',').any(|k| k.trim() == name(m))
            })
            .collect(),
        Err(_) => modes.to_vec(),
    };
    // A comparison row the kernel cannot build is left out, with a line saying so.
    let modes: Vec<Mode> = modes
        .into_iter()
        .filter(|&m| match m {
            Mode::Seg6 => match lwtun::probe::seg6local() {
                Ok(()) => true,
                Err(e) => {
                    println!("left out: {} ({e})", name(m));
                    false
                }
            },
            Mode::Device(kind) => match device_kind_missing(kind) {
                None => true,
                Some(why) => {
                    println!("left out: {} ({why})", name(m));
                    false
                }
            },
            _ => true,
        })
        .collect();
    let udp_only = std::env::var("LWTUN_BENCH_UDP_ONLY").is_ok_and(|v| v == "1");
    let rounds: usize = std::env::var("LWTUN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // Every mode's namespaces exist at once and the modes take turns, round after round, so
    // that load from elsewhere on the machine falls on all of them alike; medians are reported.
    let pairs: Vec<Pair> = modes.iter().map(|&m| pair(m)).collect();
    let mut tcp_runs = vec![Vec::new(); modes.len()];
    let mut udp_runs = vec![Vec::new(); modes.len()];
    let mut cpu_runs = vec![Vec::new(); modes.len()];
    for round in 0..rounds {
        for k in 0..modes.len() {
            // Alternate the order between rounds.
            let i = if round % 2 == 0 {
                k
            } else {
                modes.len() - 1 - k
            };
            tcp_runs[i].push(if udp_only { 1.0 } else { tcp(&pairs[i], secs) });
            let (pps, ns) = udp(&pairs[i], secs / 2.0);
            udp_runs[i].push(pps);
            cpu_runs[i].push(ns);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let results: Vec<(f64, f64, f64)> = (0..modes.len())
        .map(|i| {
            (
                median(&mut tcp_runs[i]),
                median(&mut udp_runs[i]),
                median(&mut cpu_runs[i]),
            )
        })
        .collect();
    let base = results[0];
    println!(
        "{:<24} {:>12} {:>8} {:>14} {:>8} {:>10} {:>8}   (medians of {rounds} interleaved rounds of {secs} s)",
        "mode", "TCP Mbit/s", "ratio", "UDP64 pkt/s", "ratio", "tx ns/pkt", "ratio"
    );
    for (mode, &(t, u, c)) in modes.iter().zip(&results) {
        println!(
            "{:<24} {:>12.0} {:>8.2} {:>14.0} {:>8.2} {:>10.0} {:>8.2}",
            name(*mode),
            t / 1e6,
            t / base.0,
            u,
            u / base.1,
            c,
            base.2 / c
        );
    }
    // A multipath service against the one-peer tunnel of the same encap (both rerouted) and
    // against plain routing.
    for (service, single) in [
        (
            Mode::Service(Encap::Ipip),
            Mode::Lwtun(Encap::Ipip, DirectMode::Never),
        ),
        (Mode::Service(gre), Mode::Lwtun(gre, DirectMode::Never)),
    ] {
        let at = |m: Mode| modes.iter().position(|&x| x == m);
        if let (Some(sv), Some(one)) = (at(service), at(single)) {
            println!(
                "{} vs {}: UDP64 {:.2}, tx CPU per datagram {:.2} (ns/pkt {:.0} vs {:.0}); vs plain routing: UDP64 {:.2}",
                name(service),
                name(single),
                results[sv].1 / results[one].1,
                results[one].2 / results[sv].2,
                results[sv].2,
                results[one].2,
                results[sv].1 / base.1,
            );
        }
    }
    // lwtun against the device a user would otherwise configure per peer, same encapsulation.
    for (lwtun_mode, kind) in [
        (Mode::Lwtun(gre, DirectMode::Checked), "gre"),
        (Mode::Lwtun(Encap::Ipip, DirectMode::Checked), "ipip"),
    ] {
        let at = |m: Mode| modes.iter().position(|&x| x == m);
        if let (Some(l), Some(d)) = (at(lwtun_mode), at(Mode::Device(kind))) {
            println!(
                "{} vs {}: TCP {:.2}, UDP64 {:.2}, tx CPU per datagram {:.2} (goal: TCP >= 1.00, UDP64 >= 0.95)",
                name(lwtun_mode),
                name(Mode::Device(kind)),
                results[l].0 / results[d].0,
                results[l].1 / results[d].1,
                results[d].2 / results[l].2,
            );
        }
    }
}
