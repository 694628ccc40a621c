//! The main demo: an lwtun tunnel between two hosts across a routed underlay, with real traffic.
//!
//! It builds `host-a ── router ── host-b` in network namespaces. Each host loads a
//! [`Tunnel`] (the `lwt_xmit` encap programs and their peer tables) and a [`Decap`] (BPF
//! decapsulation at tc ingress: this kernel has no ipip/gre modules, and needs none). Host A
//! reaches three services behind host B through three encapsulations, chosen per prefix by its
//! peer table:
//!
//! ```text
//!  10.90.1.0/24 → GRE key 42 over IPv4      10.90.2.0/24 → IP-in-IP over IPv4
//!  fd90::/64    → UDP (FOU 5555) over IPv6  (and host B answers through GRE over IPv4/IPv6)
//! ```
//!
//! Then it pings each service and streams 16 MiB of TCP to each, prints the peers with their
//! counters and the routes as `ip route` shows them, and removes everything (also on a panic).
//!
//! Run as root: `cargo run --example tunnel` (or `./scripts/demo.sh`).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use lwtun::decap::{Decap, DecapPeer};
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::peer::{Encap, EncapPeer};
use lwtun::tunnel::Tunnel;
use lwtun::{Error, ErrorKind, Result};

const STREAM_BYTES: usize = 16 << 20;
const FOU_PORT: u16 = 5555;

fn main() {
    if let Err(e) = run() {
        eprintln!("tunnel: {e}");
        if e.kind() == ErrorKind::Permission {
            eprintln!("run it as root (it creates namespaces and loads BPF programs)");
        }
        std::process::exit(1);
    }
}

fn ip(ns: &NetNs, args: &str) -> Result<String> {
    ns.output("ip", args.split_whitespace())
}

fn nl(ns: &NetNs) -> Result<Netlink> {
    Netlink::open_in(ns)
}

fn addr(s: &str) -> IpAddr {
    s.parse().expect("a literal address")
}

/// One host's tunnel side: encap (peers, routes, underlay fix-up) and decap.
struct Host {
    tunnel: Tunnel,
    decap: Decap,
}

fn host(
    ns: &NetNs,
    dev: &str,
    locals: &[&str],
    remotes: &[&str],
    peers: &[(&str, EncapPeer)],
    src4: &str,
    src6: &str,
) -> Result<Host> {
    let mut nl = nl(ns)?;
    let underlay = nl.device(dev)?;
    let mut tunnel = Tunnel::builder()
        .source(addr(src4))
        .source(addr(src6))
        .load()?;
    for (prefix, peer) in peers {
        tunnel
            .peers_mut()
            .insert(prefix.parse().expect("a literal prefix"), *peer)?;
    }
    for (prefix, _) in peers {
        let prefix: ipnetwork::IpNetwork = prefix.parse().expect("a literal prefix");
        // The route takes the tunnel's inner source of its family; steering it attaches the
        // IP-in-IP GSO fix-up to the underlay device.
        let route = tunnel.route(prefix).device(&underlay);
        tunnel.steer(&mut nl, route)?;
    }
    let mut decap = Decap::load()?;
    for l in locals {
        decap.add_local(addr(l))?;
    }
    for r in remotes {
        decap.add_peer(DecapPeer::host(addr(r)))?;
    }
    decap.add_udp_port(FOU_PORT)?;
    decap.attach(&underlay)?;
    Ok(Host { tunnel, decap })
}

fn ping(ns: &NetNs, src: &str, dst: &str) -> Result<String> {
    let out = ns
        .command("ping")
        .args([
            "-n", "-q", "-c", "4", "-i", "0.2", "-W", "2", "-I", src, dst,
        ])
        .output()
        .map_err(|e| Error::io("run ping", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find(|l| l.contains("transmitted"))
        .unwrap_or("no ping summary")
        .to_string())
}

/// Streams STREAM_BYTES from `client` to `dst:5201` in `server`; returns (bytes, seconds).
fn stream(server: &NetNs, client: &NetNs, dst: &str) -> Result<(usize, f64)> {
    let target = SocketAddr::new(addr(dst), 5201);
    let listener = server.run(|| TcpListener::bind(target).map_err(|e| Error::io("bind", e)))?;
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    });
    let started = Instant::now();
    let mut c = client.run(|| {
        TcpStream::connect_timeout(&target, Duration::from_secs(3))
            .map_err(|e| Error::io(format!("connect to {target}"), e))
    })?;
    c.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| Error::io("set timeout", e))?;
    let chunk = vec![0x5au8; 64 << 10];
    for _ in 0..STREAM_BYTES / chunk.len() {
        c.write_all(&chunk).map_err(|e| Error::io("send", e))?;
    }
    drop(c);
    let got = reader
        .join()
        .map_err(|_| Error::other(ErrorKind::Io, "TCP server", "panicked"))?
        .map_err(|e| Error::io("receive", e))?;
    Ok((got, started.elapsed().as_secs_f64()))
}

fn run() -> Result<()> {
    println!("== building host-a ── router ── host-b in network namespaces");
    let a = NetNs::create_unique("tun-a")?;
    let r = NetNs::create_unique("tun-r")?;
    let b = NetNs::create_unique("tun-b")?;
    nl(&a)?.add_veth("a-r", "r-a", Some(&r))?;
    nl(&r)?.add_veth("r-b", "b-r", Some(&b))?;
    let setup: [(&NetNs, &[&str]); 3] = [
        (
            &a,
            &[
                "link set lo up",
                "link set a-r up",
                "addr add 10.80.1.1/24 dev a-r",
                "-6 addr add fd80:1::1/64 dev a-r nodad",
                "route add 10.80.0.0/16 via 10.80.1.254",
                "-6 route add fd80::/16 via fd80:1::254",
                "addr add 10.70.0.1/32 dev lo",
                "-6 addr add fd70::1/128 dev lo",
            ],
        ),
        (
            &r,
            &[
                "link set lo up",
                "link set r-a up",
                "link set r-b up",
                "addr add 10.80.1.254/24 dev r-a",
                "addr add 10.80.2.254/24 dev r-b",
                "-6 addr add fd80:1::254/64 dev r-a nodad",
                "-6 addr add fd80:2::254/64 dev r-b nodad",
            ],
        ),
        (
            &b,
            &[
                "link set lo up",
                "link set b-r up",
                "addr add 10.80.2.1/24 dev b-r",
                "-6 addr add fd80:2::1/64 dev b-r nodad",
                "route add 10.80.0.0/16 via 10.80.2.254",
                "-6 route add fd80::/16 via fd80:2::254",
                "addr add 10.90.1.1/32 dev lo",
                "addr add 10.90.2.1/32 dev lo",
                "-6 addr add fd90::1/128 dev lo",
            ],
        ),
    ];
    for (ns, cmds) in setup {
        for cmd in cmds {
            ip(ns, cmd)?;
        }
    }
    r.set_sysctl("net.ipv4.ip_forward", "1")?;
    r.set_sysctl("net.ipv6.conf.all.forwarding", "1")?;
    // Give the IPv6 addresses and neighbours a moment (nodad: no DAD wait).
    std::thread::sleep(Duration::from_millis(200));
    println!(
        "   {} (10.80.1.1, fd80:1::1; inner 10.70.0.1, fd70::1) ── {} ── {} (10.80.2.1, fd80:2::1; services 10.90.1.1, 10.90.2.1, fd90::1)",
        a.name(),
        r.name(),
        b.name()
    );

    println!("== loading tunnels and decaps, adding peers and routes");
    let (a4, a6, b4, b6) = (
        addr("10.80.1.1"),
        addr("fd80:1::1"),
        addr("10.80.2.1"),
        addr("fd80:2::1"),
    );
    let host_a = host(
        &a,
        "a-r",
        &["10.80.1.1", "fd80:1::1"],
        &["10.80.2.1", "fd80:2::1"],
        &[
            (
                "10.90.1.0/24",
                EncapPeer::new(
                    b4,
                    a4,
                    Encap::Gre {
                        key: Some(42),
                        checksum: true,
                    },
                ),
            ),
            ("10.90.2.0/24", EncapPeer::new(b4, a4, Encap::Ipip)),
            (
                "fd90::/64",
                EncapPeer::new(b6, a6, Encap::Udp { port: FOU_PORT }).inherit_tos(),
            ),
        ],
        "10.70.0.1",
        "fd70::1",
    )?;
    let host_b = host(
        &b,
        "b-r",
        &["10.80.2.1", "fd80:2::1"],
        &["10.80.1.1", "fd80:1::1"],
        &[
            (
                "10.70.0.0/24",
                EncapPeer::new(
                    a4,
                    b4,
                    Encap::Gre {
                        key: None,
                        checksum: false,
                    },
                ),
            ),
            (
                "fd70::/64",
                EncapPeer::new(
                    a6,
                    b6,
                    Encap::Gre {
                        key: None,
                        checksum: false,
                    },
                ),
            ),
        ],
        "10.90.1.1",
        "fd90::1",
    )?;

    println!(
        "== ping and TCP ({} MiB each) from host-a",
        STREAM_BYTES >> 20
    );
    for (src, dst) in [
        ("10.70.0.1", "10.90.1.1"),
        ("10.70.0.1", "10.90.2.1"),
        ("fd70::1", "fd90::1"),
    ] {
        println!("   ping {dst}: {}", ping(&a, src, dst)?);
        let (got, secs) = stream(&b, &a, dst)?;
        println!(
            "   TCP  {dst}: {got} of {STREAM_BYTES} bytes in {secs:.3} s ({:.0} Mbit/s)",
            got as f64 * 8.0 / secs / 1e6
        );
    }

    for (name, h) in [("host-a", &host_a), ("host-b", &host_b)] {
        println!("== {name}: peers and counters");
        println!(
            "   {:<14} {:<34} {:>9} {:>12} {:>7}",
            "prefix", "peer", "packets", "bytes", "errors"
        );
        for (prefix, peer) in h.tunnel.peers().iter() {
            let s = h.tunnel.peers().stats(prefix)?;
            println!(
                "   {:<14} {:<34} {:>9} {:>12} {:>7}",
                prefix.to_string(),
                peer.to_string(),
                s.packets,
                s.bytes,
                s.errors
            );
        }
        let m = h.tunnel.peers().miss_counters()?;
        let d = h.decap.counters()?;
        println!(
            "   misses dropped v4/v6: {}/{}   decapsulated here: {}",
            m.dropped_v4,
            m.dropped_v6,
            d.decapsulated()
        );
    }

    println!("== host-a's routes as iproute2 shows them");
    for line in ip(&a, "route show proto 76")?
        .lines()
        .chain(ip(&a, "-6 route show proto 76")?.lines())
    {
        println!("   {line}");
    }

    println!("== removing tunnels, decaps and namespaces");
    drop(host_a);
    drop(host_b);
    let names = [
        a.name().to_string(),
        r.name().to_string(),
        b.name().to_string(),
    ];
    drop((a, r, b));
    let still: Vec<String> = NetNs::list()?
        .into_iter()
        .filter(|n| names.contains(n))
        .collect();
    if still.is_empty() {
        println!("   done: nothing left behind");
    } else {
        println!("   left behind: {still:?}");
    }
    Ok(())
}
