//! XDP benchmarks: program cost through BPF_PROG_TEST_RUN, and live-frames traffic
//! (BPF_F_TEST_XDP_LIVE_FRAMES) through veth → forwarder → veth, compared in the same run with
//! the one-hop direct case and with kernel forwarding.
//!
//! Run as root: `cargo bench --bench xdp`. Set `LWTUN_BENCH_FRAMES` (default 2,000,000 per
//! round) and `LWTUN_BENCH_ROUNDS` (default 3; the best round counts).
//!
//! Topologies (namespaces made here, removed at the end):
//!
//! ```text
//!  direct:   [G] gen ──── sink [S]                         xdp_gen live frames → xdp_drop
//!  forward:  [G] gen ──── rin [R] rout ──── sink [S]       R runs, on rin, one of:
//!              xdp_router (bpf_fib_lookup + devmap), xdp_redirect (MAC table + devmap),
//!              xdp_pass (the kernel's IPv4 forwarding does the work)
//! ```
//! The rate is what the sink counted divided by the time the generator ran.

use std::net::Ipv4Addr;
use std::time::Duration;

use lwtun::netns::NetNs;
use lwtun::xdp::{
    LiveFrames, RedirectRule, Stage, TrafficGen, XdpAction, XdpAttachment, XdpMode, XdpOptions,
    XdpPass, XdpProgram, XdpRedirect, XdpRouter,
};

fn ip(ns: &NetNs, args: &[&str]) -> String {
    let out = ns.command("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ifindex(ns: &NetNs, dev: &str) -> u32 {
    ip(ns, &["-o", "link", "show", "dev", dev])
        .split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn mac(ns: &NetNs, dev: &str) -> [u8; 6] {
    let out = ip(ns, &["-o", "link", "show", "dev", dev]);
    let s = out.split("link/ether ").nth(1).unwrap();
    let mut m = [0u8; 6];
    for (i, p) in s[..17].split(':').enumerate() {
        m[i] = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn csum(data: &[u8]) -> u16 {
    let mut acc: u32 = data
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// A 64-byte Ethernet + IPv4 + UDP frame (UDP checksum 0: none).
fn udp_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut iph = vec![0x45, 0, 0, 50, 0, 1, 0x40, 0, 64, 17, 0, 0];
    iph.extend_from_slice(&src.octets());
    iph.extend_from_slice(&dst.octets());
    let c = csum(&iph);
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&iph);
    f.extend_from_slice(&[0x30, 0x39, 0x30, 0x3a, 0, 30, 0, 0]);
    f.resize(64, 0xab);
    f
}

fn env_u32(key: &str, default: u32) -> u32 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Topology {
    g: NetNs,
    r: Option<NetNs>,
    s: NetNs,
    gen_ifindex: u32,
    frame: Vec<u8>,
}

const G_V4: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 1);
const S_V4: Ipv4Addr = Ipv4Addr::new(10, 66, 1, 2);

fn veth(a: &NetNs, a_dev: &str, b: &NetNs, b_dev: &str) {
    ip(
        a,
        &[
            "link",
            "add",
            a_dev,
            "type",
            "veth",
            "peer",
            "name",
            b_dev,
            "netns",
            b.name(),
        ],
    );
    ip(a, &["link", "set", a_dev, "up"]);
    ip(b, &["link", "set", b_dev, "up"]);
}

fn direct() -> Topology {
    let g = NetNs::create_unique("lwt-bx-g").unwrap();
    let s = NetNs::create_unique("lwt-bx-s").unwrap();
    veth(&g, "gen", &s, "sink");
    let frame = udp_frame(mac(&s, "sink"), mac(&g, "gen"), G_V4, S_V4);
    Topology {
        gen_ifindex: ifindex(&g, "gen"),
        g,
        r: None,
        s,
        frame,
    }
}

fn forward() -> Topology {
    let g = NetNs::create_unique("lwt-bx-g").unwrap();
    let r = NetNs::create_unique("lwt-bx-r").unwrap();
    let s = NetNs::create_unique("lwt-bx-s").unwrap();
    veth(&g, "gen", &r, "rin");
    veth(&r, "rout", &s, "sink");
    ip(&r, &["addr", "add", "10.66.0.254/24", "dev", "rin"]);
    ip(&r, &["addr", "add", "10.66.1.1/24", "dev", "rout"]);
    ip(
        &r,
        &[
            "neigh",
            "add",
            &S_V4.to_string(),
            "lladdr",
            &mac_str(&mac(&s, "sink")),
            "dev",
            "rout",
        ],
    );
    r.set_sysctl("net.ipv4.ip_forward", "1").unwrap();
    let frame = udp_frame(mac(&r, "rin"), mac(&g, "gen"), G_V4, S_V4);
    Topology {
        gen_ifindex: ifindex(&g, "gen"),
        g,
        r: Some(r),
        s,
        frame,
    }
}

fn native() -> XdpOptions {
    XdpOptions {
        mode: XdpMode::Native,
        ..Default::default()
    }
}

/// Injects `frames` live frames from G and returns (delivered per second, delivered fraction).
fn blast(t: &Topology, gen: &TrafficGen, sink: &XdpPass, frames: u32) -> (f64, f64) {
    let before = sink
        .stats()
        .snapshot(Stage::Ingress)
        .unwrap()
        .get(XdpAction::Drop)
        .packets;
    let live = LiveFrames {
        ifindex: t.gen_ifindex,
        repeat: frames,
        batch_size: 64,
    };
    let elapsed = t.g.run(|| gen.send(&t.frame, live)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let after = sink
        .stats()
        .snapshot(Stage::Ingress)
        .unwrap()
        .get(XdpAction::Drop)
        .packets;
    let got = after - before;
    (
        got as f64 / elapsed.as_secs_f64(),
        got as f64 / frames as f64,
    )
}

/// Kernel-measured time per run. BPF_PROG_TEST_RUN repeats on the same buffer, so a program that
/// rewrites the frame sees its own output on the next repeat (the router decrements the TTL each
/// time). Programs whose rewrite is idempotent run 1M repeats in one call; the router runs 4000
/// calls of 250 repeats on a fresh copy with TTL 255, and is compared with the no-op floor
/// measured the same way.
fn cost(
    name: &str,
    prog: &XdpProgram,
    ns: &NetNs,
    frame: &[u8],
    ingress: u32,
    want: XdpAction,
    calls: u32,
) -> f64 {
    let mut frame = frame.to_vec();
    frame[22] = 255; // TTL
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&frame[14..34]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
    let repeat = 1_000_000 / calls;
    let total = ns
        .run(|| {
            let mut total = Duration::ZERO;
            for _ in 0..calls {
                let out = prog.test_run_repeat(&frame, repeat, Some(ingress))?;
                assert_eq!(out.action, want, "{name}");
                total += out.duration;
            }
            Ok(total)
        })
        .unwrap();
    let ns_per = total.as_nanos() as f64 / calls as f64;
    println!("  {name:<48} {ns_per:>6.1} ns/frame  ({want}, {calls} x {repeat})");
    ns_per
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED xdp benchmarks: need root (CAP_BPF, CAP_NET_ADMIN, namespaces)");
        return;
    }
    let frames = env_u32("LWTUN_BENCH_FRAMES", 2_000_000);
    let rounds = env_u32("LWTUN_BENCH_ROUNDS", 3);
    let gen = XdpPass::load().unwrap(); // the generating device's own XDP program, and the floor
    let sink = XdpPass::load().unwrap();
    let traffic = TrafficGen::load().unwrap();

    // ---- program cost (BPF_PROG_TEST_RUN, 1M repeats, kernel-measured) ----
    let t = forward();
    let r = t.r.as_ref().unwrap();
    let (rin, rout) = (ifindex(r, "rin"), ifindex(r, "rout"));
    let (s_mac, rout_mac) = (mac(&t.s, "sink"), mac(r, "rout"));
    let router = XdpRouter::load().unwrap();
    let fwd = XdpRedirect::load().unwrap();
    r.run(|| {
        router.add_port(rout)?;
        fwd.ports().set(0, rout, None)?;
        // The second rule matches the rewritten frame, so repeated test runs stay on the path.
        fwd.set_rule(
            s_mac,
            RedirectRule {
                port: 0,
                dst: s_mac,
                src: rout_mac,
            },
        )?;
        fwd.set_rule(
            mac(r, "rin"),
            RedirectRule {
                port: 0,
                dst: s_mac,
                src: rout_mac,
            },
        )
    })
    .unwrap();
    println!("XDP program cost (BPF_PROG_TEST_RUN, 64-byte UDP frame, 1M runs, kernel-timed):");
    let floor = cost(
        "xdp_nop (test_run floor)",
        gen.nop_program(),
        r,
        &t.frame,
        rin,
        XdpAction::Pass,
        1,
    );
    cost(
        "xdp_pass (per-action stats only)",
        gen.program(),
        r,
        &t.frame,
        rin,
        XdpAction::Pass,
        1,
    );
    let fwd_ns = cost(
        "xdp_redirect: devmap forward + MAC rewrite",
        fwd.program(),
        r,
        &t.frame,
        rin,
        XdpAction::Redirect,
        1,
    );
    let floor_250 = cost(
        "xdp_nop (test_run floor)",
        gen.nop_program(),
        r,
        &t.frame,
        rin,
        XdpAction::Pass,
        4000,
    );
    let rt_ns = cost(
        "xdp_router: fib lookup + TTL + devmap",
        router.program(),
        r,
        &t.frame,
        rin,
        XdpAction::Redirect,
        4000,
    );
    println!(
        "  devmap forward with MAC rewrite: {fwd_ns:.1} ns, {:.1} ns above the floor (goal <= 60 ns: {})",
        fwd_ns - floor,
        if fwd_ns <= 60.0 { "met" } else { "NOT met" }
    );
    println!(
        "  router: {rt_ns:.1} ns, {:.1} ns above the floor",
        rt_ns - floor_250
    );
    router.set_direct_lookup(true).unwrap();
    let rtd_ns = cost(
        "xdp_router, BPF_FIB_LOOKUP_DIRECT",
        router.program(),
        r,
        &t.frame,
        rin,
        XdpAction::Redirect,
        4000,
    );
    println!(
        "  router with direct lookup: {rtd_ns:.1} ns, {:.1} ns above the floor",
        rtd_ns - floor_250
    );
    router.set_direct_lookup(false).unwrap();

    // ---- live frames ----
    println!(
        "\nLive frames (BPF_F_TEST_XDP_LIVE_FRAMES, {frames} x 64 B per round, best of {rounds}):"
    );
    // Both topologies stand at once and every round measures every case in turn, so a burst of
    // load from elsewhere hits all cases alike; the best round of each case counts.
    let d = direct();
    let sink_d =
        d.s.run(|| XdpAttachment::attach(sink.drop_program(), ifindex(&d.s, "sink"), native()))
            .unwrap();
    let gen_d = d.g.run(|| gen.attach(d.gen_ifindex, native())).unwrap();
    let sink_f =
        t.s.run(|| XdpAttachment::attach(sink.drop_program(), ifindex(&t.s, "sink"), native()))
            .unwrap();
    let gen_f = t.g.run(|| gen.attach(t.gen_ifindex, native())).unwrap();
    let cases = [
        ("XDP router (fib + devmap)", Some(router.program()), false),
        (
            "XDP router, direct fib lookup",
            Some(router.program()),
            true,
        ),
        (
            "XDP redirect (MAC table + devmap)",
            Some(fwd.program()),
            false,
        ),
        (
            "kernel forwarding (xdp_pass on rin)",
            Some(gen.program()),
            false,
        ),
    ];
    let _ = blast(&d, &traffic, &sink, frames / 10); // warm up
    let mut one = (0.0f64, 0.0f64);
    let mut best_of = vec![(0.0f64, 0.0f64); cases.len()];
    for _ in 0..rounds {
        let m = blast(&d, &traffic, &sink, frames);
        if m.0 > one.0 {
            one = m;
        }
        for (i, (_, prog, direct)) in cases.iter().enumerate() {
            router.set_direct_lookup(*direct).unwrap();
            let att = r
                .run(|| XdpAttachment::attach(prog.unwrap(), rin, native()))
                .unwrap();
            let _ = blast(&t, &traffic, &sink, frames / 20); // neighbours, caches
            let m = blast(&t, &traffic, &sink, frames);
            drop(att);
            if m.0 > best_of[i].0 {
                best_of[i] = m;
            }
        }
    }
    let one_hop = one.0;
    println!(
        "  one hop   G -> S                       {:>7.3} Mpps  ({:.1}% delivered)",
        one_hop / 1e6,
        one.1 * 100.0
    );
    let mut results = Vec::new();
    for ((name, _, _), (rate, frac)) in cases.iter().zip(&best_of) {
        println!(
            "  G -> R -> S via {name:<36} {:>7.3} Mpps  ({:.1}% delivered)  {:.2} of one hop",
            rate / 1e6,
            frac * 100.0,
            rate / one_hop
        );
        results.push(*rate);
    }
    for (name, rate) in [
        ("XDP router", results[0]),
        ("XDP router, direct", results[1]),
        ("XDP redirect", results[2]),
    ] {
        println!(
            "  {name} vs one hop: {:.2} (goal >= 0.6: {}); vs kernel forwarding: {:.2}x",
            rate / one_hop,
            if rate / one_hop >= 0.6 {
                "met"
            } else {
                "NOT met"
            },
            rate / results[3]
        );
    }
    let fib = router.fib_stats().unwrap();
    println!("  router fib results: {fib:?}");
    drop((sink_f, gen_f, t, sink_d, gen_d, d));
}
