//! An XDP router with live statistics (the XDP tutorial's xdp_stats, for lwtun's router).
//!
//! ```text
//! xdp_router IFACE...  [--generic] [--direct] [--route-cache MS] [--interval SECS] [--seconds N]
//! xdp_router --demo    [--route-cache MS] [--seconds N]
//! ```
//!
//! With interface names, attaches lwtun's `bpf_fib_lookup` router to each of them (in the current
//! namespace), makes each a port, and prints per-action packet and bit rates plus the FIB lookup
//! outcomes every interval until Ctrl-C (or `--seconds`). Forwarding must be enabled
//! (`sysctl net.ipv4.ip_forward=1`, `net.ipv6.conf.all.forwarding=1`).
//!
//! The router's route cache is on by default (invalidated by every route, rule, neighbour or
//! link change in the namespace, see `XdpRouter`'s "Route cache"); `--route-cache MS` sets its
//! maximum age instead, `--route-cache 0` turns it off (`XdpRouter::set_route_cache`). The FIB
//! line shows the cache hits among the successes.
//!
//! `--demo` builds three namespaces `left ── router ── right` (removed at exit), routes a ping
//! flood through the router and shows the counters move. Run as root.

use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use lwtun::netns::NetNs;
use lwtun::xdp::{FibStats, Stage, XdpAction, XdpAttachment, XdpMode, XdpOptions, XdpRouter};

struct Args {
    ifaces: Vec<String>,
    generic: bool,
    direct: bool,
    /// `None`: the router's default; `Some(None)`: off.
    route_cache: Option<Option<Duration>>,
    interval: f64,
    seconds: Option<f64>,
    demo: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        ifaces: vec![],
        generic: false,
        direct: false,
        route_cache: None,
        interval: 1.0,
        seconds: None,
        demo: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--generic" => a.generic = true,
            "--direct" => a.direct = true,
            "--demo" => a.demo = true,
            "--route-cache" => {
                let ms: u64 = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--route-cache needs a number of milliseconds (0: off)")?;
                a.route_cache = Some((ms > 0).then(|| Duration::from_millis(ms)));
            }
            "--interval" | "--seconds" => {
                let v: f64 = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|v: &f64| *v > 0.0)
                    .ok_or(format!("{arg} needs a positive number"))?;
                if arg == "--interval" {
                    a.interval = v
                } else {
                    a.seconds = Some(v)
                }
            }
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s => a.ifaces.push(s.to_string()),
        }
    }
    if a.ifaces.is_empty() && !a.demo {
        return Err("name at least one interface, or --demo".into());
    }
    Ok(a)
}

fn print_fib(now: &FibStats, before: &FibStats) {
    println!(
        "  fib: success {} no_neigh {} not_fwded {} fwd_disabled {} unsupp_lwt {} frag_needed {} \
         blackhole {} unreachable {} prohibit {} ttl_expired {} not_ip {} other {} (cache hits {})",
        now.success - before.success,
        now.no_neighbour - before.no_neighbour,
        now.not_forwarded - before.not_forwarded,
        now.forwarding_disabled - before.forwarding_disabled,
        now.unsupported_lwt - before.unsupported_lwt,
        now.frag_needed - before.frag_needed,
        now.blackhole - before.blackhole,
        now.unreachable - before.unreachable,
        now.prohibit - before.prohibit,
        now.ttl_expired - before.ttl_expired,
        now.not_ip - before.not_ip,
        now.other - before.other,
        now.cache_hits - before.cache_hits,
    );
}

/// Prints the counters every interval until `seconds` have passed (or forever).
/// Prints the router's verdicts, its FIB results and, next to them, what the ports' devices
/// did with the frames (the verdicts count decisions; drops after a redirect show there).
fn watch(
    router: &XdpRouter,
    ports: &[lwtun::device::Device],
    interval: f64,
    seconds: Option<f64>,
) -> lwtun::Result<()> {
    let start = Instant::now();
    let mut prev = router.stats().snapshot(Stage::Ingress)?;
    let mut prev_fib = router.fib_stats()?;
    let mut prev_dev = ports
        .iter()
        .map(|p| p.counters())
        .collect::<lwtun::Result<Vec<_>>>()?;
    loop {
        std::thread::sleep(Duration::from_secs_f64(interval));
        let now = router.stats().snapshot(Stage::Ingress)?;
        let fib = router.fib_stats()?;
        let rates = now.rates_since(&prev);
        println!(
            "-- {:.1}s (interval {:.3}s)",
            start.elapsed().as_secs_f64(),
            rates.interval.as_secs_f64()
        );
        for action in XdpAction::ALL {
            let r = rates.get(action);
            let total = now.get(action);
            println!(
                "  {:<13} {:>12.0} pps {:>10.3} Mbit/s   total {:>10} pkts {:>12} bytes",
                action.to_string(),
                r.packets_per_sec,
                r.bits_per_sec / 1e6,
                total.packets,
                total.bytes
            );
        }
        print_fib(&fib, &prev_fib);
        for (port, before) in ports.iter().zip(prev_dev.iter_mut()) {
            let c = port.counters()?;
            let d = c.since(before);
            println!(
                "  port {:<9} sent {:>10} pkts  tx dropped {:>6}  xdp drops {:>6}",
                port.name(),
                d.tx_packets,
                d.tx_dropped,
                d.xdp_drops()
            );
            *before = c;
        }
        prev = now;
        prev_fib = fib;
        if seconds.is_some_and(|s| start.elapsed().as_secs_f64() >= s) {
            return Ok(());
        }
    }
}

fn ip(ns: &NetNs, args: &[&str]) -> lwtun::Result<()> {
    ns.output("ip", args).map(drop)
}

/// left (10.88.0.1) ── (10.88.0.2) router (10.88.1.1) ── (10.88.1.2) right
fn demo(args: &Args) -> lwtun::Result<()> {
    let left = NetNs::create_unique("lwt-demo-left")?;
    let mid = NetNs::create_unique("lwt-demo-router")?;
    let right = NetNs::create_unique("lwt-demo-right")?;
    for (ns, dev, peer_ns, peer, a, b) in [
        (&left, "eth0", &mid, "left", "10.88.0.1/24", "10.88.0.2/24"),
        (
            &right,
            "eth0",
            &mid,
            "right",
            "10.88.1.2/24",
            "10.88.1.1/24",
        ),
    ] {
        ip(
            ns,
            &[
                "link",
                "add",
                dev,
                "type",
                "veth",
                "peer",
                "name",
                peer,
                "netns",
                peer_ns.name(),
            ],
        )?;
        ip(ns, &["addr", "add", a, "dev", dev])?;
        ip(peer_ns, &["addr", "add", b, "dev", peer])?;
        ip(ns, &["link", "set", dev, "up"])?;
        ip(peer_ns, &["link", "set", peer, "up"])?;
    }
    ip(&left, &["route", "add", "default", "via", "10.88.0.2"])?;
    ip(&right, &["route", "add", "default", "via", "10.88.1.1"])?;
    mid.set_sysctl("net.ipv4.ip_forward", "1")?;

    let router = XdpRouter::load()?;
    router.set_direct_lookup(args.direct)?;
    if let Some(choice) = args.route_cache {
        router.set_route_cache(choice)?;
    }
    // Devices carry their namespace: no closure inside `mid` is needed.
    let (l, r) = (mid.device("left")?, mid.device("right")?);
    router.add_port_with_receiver(&l, &left.device("eth0")?)?;
    router.add_port_with_receiver(&r, &right.device("eth0")?)?;
    let opts = XdpOptions {
        mode: XdpMode::Native,
        ..Default::default()
    };
    let atts = vec![router.attach(&l, opts)?, router.attach(&r, opts)?];
    println!("route cache: {:?}", router.route_cache_status()?);
    println!(
        "demo: {} -> router {} -> {}; flooding ping from left to right",
        left.name(),
        mid.name(),
        right.name()
    );
    let mut flood: Child = left
        .command("ping")
        .args(["-f", "-q", &Ipv4Addr::new(10, 88, 1, 2).to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| lwtun::Error::io("start ping", e))?;
    let result = watch(
        &router,
        &[l.clone(), r.clone()],
        args.interval,
        Some(args.seconds.unwrap_or(5.0)),
    );
    let _ = flood.kill();
    let _ = flood.wait();
    drop(atts);
    result
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("xdp_router: {e}");
            }
            eprintln!("usage: xdp_router IFACE... [--generic] [--direct] [--route-cache MS] [--interval SECS] [--seconds N]\n       xdp_router --demo [--route-cache MS] [--seconds N]");
            std::process::exit(2);
        }
    };
    let result = if args.demo {
        demo(&args)
    } else {
        (|| {
            let router = XdpRouter::load()?;
            router.set_direct_lookup(args.direct)?;
            if let Some(choice) = args.route_cache {
                router.set_route_cache(choice)?;
            }
            let mode = if args.generic {
                XdpMode::Generic
            } else {
                XdpMode::Auto
            };
            let mut atts: Vec<XdpAttachment> = Vec::new();
            let mut ports = Vec::new();
            for name in &args.ifaces {
                let device = lwtun::device::Device::current(name)?;
                ports.push(device.clone());
                router.add_port(&device)?;
                atts.push(router.attach(
                    &device,
                    XdpOptions {
                        mode,
                        ..Default::default()
                    },
                )?);
                println!(
                    "attached xdp_router (id {}) to {name} ({:?})",
                    router.program().id(),
                    atts.last().unwrap().via()
                );
            }
            println!("route cache: {:?}", router.route_cache_status()?);
            watch(&router, &ports, args.interval, args.seconds)
        })()
    };
    if let Err(e) = result {
        eprintln!("xdp_router: {e}");
        std::process::exit(1);
    }
}
