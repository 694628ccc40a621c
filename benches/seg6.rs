//! Per-packet cost of lwtun's SRv6 End.BPF functions next to the kernel's own End behaviours,
//! in one run. Three fresh namespaces per mode:
//!
//! ```text
//!  A fd90:1::1 ══ veth ══ R (SID fc00:1::1) ══ veth ══ B fd90:2::2, service fd91::2 on lo
//!  seg6 encap of fd91::/64                              End.DT6 table main at fc00:2::6
//! ```
//!
//! A sends 64-byte UDP datagrams to fd91::2 through an SRv6 encap route; R runs the mode's
//! function at its SID:
//!
//! | mode              | at R (fc00:1::1)                          | segment list            |
//! |-------------------|-------------------------------------------|-------------------------|
//! | plain routing     | none (A routes fd91::/64 to R, no SRv6)   | -                       |
//! | kernel End        | `action End`                              | fc00:1::1, fc00:2::6    |
//! | lwtun tag         | End.BPF Seg6Tag (then End)                | fc00:1::1, fc00:2::6    |
//! | kernel End.X      | `action End.X nh6 fd90:2::2`              | fc00:1::1, fc00:2::6    |
//! | lwtun End.X       | End.BPF Seg6EndX to fd90:2::2             | fc00:1::1, fc00:2::6    |
//! | kernel End.DT6    | `action End.DT6 table 254`                | fc00:1::1               |
//! | lwtun End.DT6     | End.BPF Seg6EndDt6, table 254             | fc00:1::1, fc00:1::100  |
//!
//! In the End and End.X modes B decapsulates (kernel End.DT6 into its local table); in the DT6 modes R does and B
//! gets plain IPv6. Figures per mode: the sending thread's CPU time per datagram (the veth
//! receive softirqs of R and B run on the sender's CPU, so R's SID processing is in it), the
//! datagrams B received per second, and each lwtun function's ns over its kernel counterpart's
//! (same run). Beside them, the twin's time per run in BPF_PROG_TEST_RUN (the function's own
//! logic without the seg6 helpers). The modes take turns over rounds and medians are reported.
//!
//! Run as root: `cargo bench --bench seg6` (`LWTUN_BENCH_SECS` per mode and round, default 1;
//! `LWTUN_BENCH_ROUNDS`, default 5; `LWTUN_BENCH_SMOKE=1` for a very short run that only checks
//! the bench works: 0.05 s, one round).

#[path = "../tests/seg6_common/mod.rs"]
mod seg6_common;

use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use lwtun::netlink::route::{Encap, Route, Seg6Encap, Seg6Mode};
use lwtun::netns::NetNs;
use lwtun::route::InstalledRoute;
use lwtun::seg6::{CrossConnect, Seg6EndDt6, Seg6EndX, Seg6Tag};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Plain,
    KernelEnd,
    BpfTag,
    KernelEndX,
    BpfEndX,
    KernelEndDt6,
    BpfEndDt6,
}

const MODES: [Mode; 7] = [
    Mode::Plain,
    Mode::KernelEnd,
    Mode::BpfTag,
    Mode::KernelEndX,
    Mode::BpfEndX,
    Mode::KernelEndDt6,
    Mode::BpfEndDt6,
];

fn name(m: Mode) -> &'static str {
    match m {
        Mode::Plain => "plain routing",
        Mode::KernelEnd => "kernel End",
        Mode::BpfTag => "lwtun tag",
        Mode::KernelEndX => "kernel End.X",
        Mode::BpfEndX => "lwtun End.X",
        Mode::KernelEndDt6 => "kernel End.DT6",
        Mode::BpfEndDt6 => "lwtun End.DT6",
    }
}

/// The kernel behaviour an lwtun function is compared with.
fn counterpart(m: Mode) -> Option<Mode> {
    match m {
        Mode::BpfTag => Some(Mode::KernelEnd),
        Mode::BpfEndX => Some(Mode::KernelEndX),
        Mode::BpfEndDt6 => Some(Mode::KernelEndDt6),
        _ => None,
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
        "ip {args} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn a6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// What keeps a mode's data plane alive (its maps; routes hold the program).
enum Function {
    None,
    Tag(Seg6Tag),
    EndX(Seg6EndX),
    EndDt6(Seg6EndDt6),
}

struct Setup {
    a: NetNs,
    _r: NetNs,
    b: NetNs,
    _route: Option<InstalledRoute>,
    function: Function,
}

fn setup(mode: Mode) -> Setup {
    let a = NetNs::create_unique("bs6-a").unwrap();
    let r = NetNs::create_unique("bs6-r").unwrap();
    let b = NetNs::create_unique("bs6-b").unwrap();
    ip(
        &a,
        &format!("link add a-r type veth peer name r-a netns {}", r.name()),
    );
    ip(
        &r,
        &format!("link add r-b type veth peer name b-r netns {}", b.name()),
    );
    for (ns, devs) in [
        (&a, vec!["a-r"]),
        (&r, vec!["r-a", "r-b"]),
        (&b, vec!["b-r"]),
    ] {
        ns.set_sysctl("net.ipv6.conf.all.accept_dad", "0").unwrap();
        ns.set_sysctl("net.ipv6.conf.all.seg6_enabled", "1")
            .unwrap();
        ip(ns, "link set lo up");
        for d in devs {
            ns.set_sysctl(&format!("net.ipv6.conf.{d}.seg6_enabled"), "1")
                .unwrap();
            ip(ns, &format!("link set {d} up"));
        }
    }
    r.set_sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    b.set_sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    ip(&a, "-6 addr add fd90:1::1/64 dev a-r nodad");
    ip(&r, "-6 addr add fd90:1::2/64 dev r-a nodad");
    ip(&r, "-6 addr add fd90:2::1/64 dev r-b nodad");
    ip(&b, "-6 addr add fd90:2::2/64 dev b-r nodad");
    ip(&b, "-6 addr add fd91::2/128 dev lo");
    ip(&a, "-6 route add fc00:1::/64 via fd90:1::2 dev a-r");
    ip(&r, "-6 route add fc00:2::/64 via fd90:2::2 dev r-b");
    ip(&r, "-6 route add fd91::/64 via fd90:2::2 dev r-b");
    ip(&b, "-6 route add fd90:1::/64 via fd90:2::1 dev b-r");
    let b_mac = ip(&b, "-o link show b-r");
    let b_mac = b_mac
        .split("link/ether ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string();
    ip(
        &r,
        &format!("-6 neigh replace fd90:2::2 lladdr {b_mac} dev r-b"),
    );
    ip(
        &b,
        // Table local: the service address is B's own.
        "-6 route add fc00:2::6/128 encap seg6local action End.DT6 table 255 dev b-r",
    );
    let segments = match mode {
        Mode::Plain => None,
        Mode::KernelEndDt6 => Some(vec![a6("fc00:1::1")]),
        Mode::BpfEndDt6 => Some(vec![a6("fc00:1::1"), a6("fc00:1::100")]),
        _ => Some(vec![a6("fc00:1::1"), a6("fc00:2::6")]),
    };
    match &segments {
        None => {
            ip(&a, "-6 route add fd91::/64 via fd90:1::2 dev a-r");
        }
        Some(segs) => {
            let dev = a.device("a-r").unwrap();
            let mut route = Route::new(IpNetwork::V6("fd91::/64".parse().unwrap()));
            route.oif = Some(dev.index());
            route.encap = Some(Encap::Seg6(Seg6Encap {
                mode: Seg6Mode::Encap,
                segments: segs.clone(),
            }));
            dev.netlink().unwrap().add_route(&route).unwrap();
        }
    }
    let sid = "fc00:1::1/128".parse().unwrap();
    let r_b = r.device("r-b").unwrap();
    let (route, function) = match mode {
        Mode::Plain => (None, Function::None),
        Mode::KernelEnd => {
            ip(
                &r,
                "-6 route add fc00:1::1/128 encap seg6local action End dev r-b",
            );
            (None, Function::None)
        }
        Mode::KernelEndX => {
            ip(
                &r,
                "-6 route add fc00:1::1/128 encap seg6local action End.X nh6 fd90:2::2 dev r-b",
            );
            (None, Function::None)
        }
        Mode::KernelEndDt6 => {
            ip(
                &r,
                "-6 route add fc00:1::1/128 encap seg6local action End.DT6 table 254 dev r-b",
            );
            (None, Function::None)
        }
        Mode::BpfTag => {
            let mut f = Seg6Tag::load().unwrap();
            f.set_tag("fc00:2::/64".parse().unwrap(), 7).unwrap();
            (Some(f.install_route(sid, &r_b).unwrap()), Function::Tag(f))
        }
        Mode::BpfEndX => {
            let mut f = Seg6EndX::load().unwrap();
            f.set_next_hop(
                "fc00:2::/64".parse().unwrap(),
                CrossConnect::to(a6("fd90:2::2")),
            )
            .unwrap();
            (Some(f.install_route(sid, &r_b).unwrap()), Function::EndX(f))
        }
        Mode::BpfEndDt6 => {
            let mut f = Seg6EndDt6::load().unwrap();
            f.set_table("fc00:1::100/128".parse().unwrap(), 254)
                .unwrap();
            (
                Some(f.install_route(sid, &r_b).unwrap()),
                Function::EndDt6(f),
            )
        }
    };
    // The veths' carrier comes up through linkwatch (up to 1 s).
    std::thread::sleep(Duration::from_millis(1100));
    Setup {
        a,
        _r: r,
        b,
        _route: route,
        function,
    }
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

/// Datagrams per second B received while A sent for `secs`, and the sender's CPU ns per
/// datagram (see the module docs for what that covers).
fn udp(s: &Setup, secs: f64) -> (f64, f64) {
    let target = SocketAddr::new(IpAddr::V6(a6("fd91::2")), 5301);
    let rx =
        s.b.run(|| UdpSocket::bind(target).map_err(|e| lwtun::Error::io("bind", e)))
            .unwrap();
    // A receiver that never sleeps on the socket, so no wake-up is charged to the sender.
    rx.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n = 0u64;
        loop {
            match rx.recv(&mut buf) {
                Ok(_) => n += 1,
                Err(_) if stop2.load(Ordering::Relaxed) => return n,
                Err(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    });
    let tx =
        s.a.run(|| {
            let t = UdpSocket::bind("[fd90:1::1]:0").map_err(|e| lwtun::Error::io("bind", e))?;
            t.connect(target)
                .map_err(|e| lwtun::Error::io("connect", e))?;
            Ok(t)
        })
        .unwrap();
    let payload = [0u8; 64 - 48];
    let mut sent = 0u64;
    let start = Instant::now();
    let cpu0 = thread_cpu_ns();
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..64 {
            if tx.send(&payload).is_ok() {
                sent += 1;
            }
        }
    }
    let cpu = thread_cpu_ns() - cpu0;
    let elapsed = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    let received = counter.join().unwrap() as f64;
    (received / elapsed, cpu as f64 / sent.max(1) as f64)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The twins' time per run (BPF_PROG_TEST_RUN, `repeat` runs) on the packet R sees.
fn twin_ns(repeat: u32) -> Vec<(&'static str, f64)> {
    use seg6_common::*;
    let (t, e, svc) = sids();
    let two = srv6(&[t, e], 1, 0, IPV6, &inner_v6());
    let three = srv6(&[t, e, svc], 2, 0, IPV6, &inner_v6());
    let mut tag = Seg6Tag::load().unwrap();
    tag.set_tag("fc00:3::/64".parse().unwrap(), 7).unwrap();
    let mut x = Seg6EndX::load().unwrap();
    x.set_next_hop(
        "fc00:3::/64".parse().unwrap(),
        CrossConnect::to(a6("fd77:2::2")),
    )
    .unwrap();
    let mut dt6 = Seg6EndDt6::load().unwrap();
    dt6.set_table("fc00:3::/64".parse().unwrap(), 100).unwrap();
    let per = |d: Duration| d.as_nanos() as f64;
    vec![
        (
            "lwtun tag (twin)",
            per(tag.time_twin(&two, repeat).unwrap()),
        ),
        (
            "lwtun End.X (twin)",
            per(x.time_twin(&two, repeat).unwrap()),
        ),
        (
            "lwtun End.DT6 (twin)",
            per(dt6.time_twin(&three, repeat).unwrap()),
        ),
    ]
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("seg6 bench: SKIPPED, needs root (namespaces, BPF, routes)");
        return;
    }
    if let Err(e) = lwtun::probe::seg6local() {
        println!("seg6 bench: SKIPPED, the kernel cannot run End.BPF: {e}");
        return;
    }
    let smoke = std::env::var("LWTUN_BENCH_SMOKE").is_ok_and(|v| v == "1");
    let secs: f64 = if smoke {
        0.05
    } else {
        std::env::var("LWTUN_BENCH_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1.0)
    };
    let rounds: usize = if smoke {
        1
    } else {
        std::env::var("LWTUN_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5)
    };
    let setups: Vec<Setup> = MODES.iter().map(|&m| setup(m)).collect();
    let mut rate = vec![Vec::new(); MODES.len()];
    let mut cost = vec![Vec::new(); MODES.len()];
    for round in 0..rounds {
        for k in 0..MODES.len() {
            let i = if round % 2 == 0 {
                k
            } else {
                MODES.len() - 1 - k
            };
            let (pps, ns) = udp(&setups[i], secs);
            rate[i].push(pps);
            cost[i].push(ns);
        }
    }
    let rate: Vec<f64> = rate.iter_mut().map(|v| median(v)).collect();
    let cost: Vec<f64> = cost.iter_mut().map(|v| median(v)).collect();
    println!(
        "seg6: 64-byte UDP A→R→B, {rounds} round(s) of {secs} s per mode, medians{}",
        if smoke {
            " (SMOKE RUN: not a measurement)"
        } else {
            ""
        }
    );
    println!(
        "{:<16} {:>12} {:>12} {:>14} {:>20}",
        "mode", "rx pkt/s", "tx ns/pkt", "over plain ns", "vs kernel (ns ratio)"
    );
    let mut broken = Vec::new();
    for (i, &m) in MODES.iter().enumerate() {
        let vs = counterpart(m)
            .map(|k| {
                let j = MODES.iter().position(|&x| x == k).unwrap();
                format!("{:.2} x {}", cost[i] / cost[j], name(k))
            })
            .unwrap_or_default();
        println!(
            "{:<16} {:>12.0} {:>12.0} {:>14.0} {:>20}",
            name(m),
            rate[i],
            cost[i],
            cost[i] - cost[0],
            vs
        );
        let done = match &setups[i].function {
            Function::None => None,
            Function::Tag(f) => Some(f.events().unwrap()),
            Function::EndX(f) => Some(f.events().unwrap()),
            Function::EndDt6(f) => Some(f.events().unwrap()),
        };
        if let Some(ev) = done {
            if ev.done.packets == 0 || ev.dropped() > 0 {
                broken.push(format!("{} did not run as set up: {ev:?}", name(m)));
            }
        }
        if rate[i] == 0.0 {
            broken.push(format!(
                "{} delivered nothing: the setup is broken",
                name(m)
            ));
        }
    }
    // The namespaces go before exiting (process::exit runs no destructors).
    drop(setups);
    if !broken.is_empty() {
        for b in &broken {
            eprintln!("seg6 bench: {b}");
        }
        std::process::exit(1);
    }
    let repeat = if smoke { 100 } else { 1_000_000 };
    for (n, ns) in twin_ns(repeat) {
        println!("{n:<22} {ns:>8.1} ns/run (BPF_PROG_TEST_RUN, {repeat} runs)");
    }
}
