//! The main demo: an LWT BPF route installed by lwtun, with real traffic through it.
//!
//! It builds three namespaces, `host-a ── router ── host-b`, installs on host-a a route to
//! host-b's service prefix whose packets run counting programs at `lwt_out` and `lwt_xmit`, and on
//! the router one that runs at `lwt_in` and `lwt_xmit`. Then it pings and streams 4 MiB of TCP
//! through them, prints the routes as lwtun and as `ip -d route show` see them with the per-hook
//! counters, and removes everything (also if interrupted by a panic).
//!
//! Run as root: `cargo run --example lwt_route` (or `./scripts/demo.sh`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::program::LwtCounter;
use lwtun::route::{lwt_routes, program_of, Hook, LwtRoute};
use lwtun::{Error, ErrorKind, Result};

const STREAM_BYTES: usize = 4 << 20;

fn main() {
    if let Err(e) = run() {
        eprintln!("lwt_route: {e}");
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

fn run() -> Result<()> {
    println!("== building host-a ── router ── host-b in network namespaces");
    let a = NetNs::create_unique("demo-a")?;
    let r = NetNs::create_unique("demo-r")?;
    let b = NetNs::create_unique("demo-b")?;
    nl(&a)?.add_veth("a-r", "r-a", Some(&r))?;
    nl(&r)?.add_veth("r-b", "b-r", Some(&b))?;
    for (ns, cmds) in [
        (
            &a,
            &[
                "link set lo up",
                "link set a-r up",
                "addr add 10.80.1.1/24 dev a-r",
            ][..],
        ),
        (
            &r,
            &[
                "link set lo up",
                "link set r-a up",
                "link set r-b up",
                "addr add 10.80.1.254/24 dev r-a",
                "addr add 10.80.2.254/24 dev r-b",
            ][..],
        ),
        (
            &b,
            &[
                "link set lo up",
                "link set b-r up",
                "addr add 10.80.2.1/24 dev b-r",
                "addr add 10.90.0.1/32 dev lo",
                "route add default via 10.80.2.254",
            ][..],
        ),
    ] {
        for cmd in cmds {
            ip(ns, cmd)?;
        }
    }
    r.set_sysctl("net.ipv4.ip_forward", "1")?;
    println!(
        "   {} (10.80.1.1) ── {} ── {} (10.80.2.1, service 10.90.0.1)",
        a.name(),
        r.name(),
        b.name()
    );

    println!("== loading the lwt_count programs and installing LWT routes to 10.90.0.0/24");
    let on_a = LwtCounter::load()?;
    let on_r = LwtCounter::load()?;
    let mut nla = nl(&a)?;
    let mut nlr = nl(&r)?;
    let a_dev = nla.device("a-r")?;
    let r_dev = nlr.device("r-b")?;
    let route_a = LwtRoute::new("10.90.0.0/24".parse().unwrap())
        .device(&a_dev)
        .via("10.80.1.254".parse().unwrap())
        .program(Hook::Out, on_a.program(Hook::Out))
        .program(Hook::Xmit, on_a.program(Hook::Xmit))
        .install(&mut nla)?;
    let route_r = LwtRoute::new("10.90.0.0/24".parse().unwrap())
        .device(&r_dev)
        .via("10.80.2.1".parse().unwrap())
        .program(Hook::In, on_r.program(Hook::In))
        .program(Hook::Xmit, on_r.program(Hook::Xmit))
        .install(&mut nlr)?;
    println!("   host-a: {route_a}");
    println!("   router: {route_r}");

    println!("== ping 10.90.0.1 from host-a");
    let out = a
        .command("ping")
        .args(["-c", "5", "-i", "0.2", "-W", "2", "10.90.0.1"])
        .output()
        .map_err(|e| Error::io("run ping", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(summary) = text.lines().find(|l| l.contains("transmitted")) {
        println!("   {summary}");
    }

    println!(
        "== TCP: {} MiB from host-a to 10.90.0.1:5201",
        STREAM_BYTES >> 20
    );
    let listener =
        b.run(|| TcpListener::bind("10.90.0.1:5201").map_err(|e| Error::io("bind", e)))?;
    let server = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    });
    let started = Instant::now();
    let mut client = a.run(|| {
        TcpStream::connect_timeout(&"10.90.0.1:5201".parse().unwrap(), Duration::from_secs(3))
            .map_err(|e| Error::io("connect", e))
    })?;
    let chunk = vec![0x5au8; 64 << 10];
    for _ in 0..STREAM_BYTES / chunk.len() {
        client.write_all(&chunk).map_err(|e| Error::io("send", e))?;
    }
    drop(client);
    let received = server
        .join()
        .map_err(|_| Error::other(ErrorKind::Io, "TCP server", "panicked"))?
        .map_err(|e| Error::io("receive", e))?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "   received {received} of {STREAM_BYTES} bytes in {:.3} s ({:.0} Mbit/s)",
        secs,
        received as f64 * 8.0 / secs / 1e6
    );

    println!("== the routes as lwtun lists them (program names lead back to program ids)");
    println!(
        "   {:<6} {:<16} {:<6} {:<28} {:>6} {:>9} {:>10}",
        "host", "dst", "hook", "program", "id", "packets", "bytes"
    );
    for (host, nl, counter) in [("host-a", &mut nla, &on_a), ("router", &mut nlr, &on_r)] {
        for route in lwt_routes(nl)? {
            for hook in Hook::LWT {
                if let Some(prog) = program_of(&route, hook) {
                    let prog = prog?;
                    let c = counter.counter(hook)?;
                    println!(
                        "   {host:<6} {:<16} {:<6} {:<28} {:>6} {:>9} {:>10}",
                        route.dst.to_string(),
                        format!("{hook}").trim_start_matches("lwt_"),
                        prog.route_name(),
                        prog.id(),
                        c.packets,
                        c.bytes
                    );
                }
            }
        }
    }

    println!("== the same routes as iproute2 shows them");
    print!("   host-a: {}", ip(&a, "-d route show 10.90.0.0/24")?);
    print!("   router: {}", ip(&r, "-d route show 10.90.0.0/24")?);

    println!("== removing routes and namespaces");
    drop(route_a);
    drop(route_r);
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
