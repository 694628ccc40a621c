//! XDP benchmarks: program cost through BPF_PROG_TEST_RUN (with the services' XDP director
//! against `xdp_redirect`), and live-frames traffic
//! (BPF_F_TEST_XDP_LIVE_FRAMES) through veth → forwarder → veth, compared in the same run with
//! the one-hop direct case and with kernel forwarding.
//!
//! Run as root: `cargo bench --bench xdp`. Settings (environment):
//! - `LWTUN_BENCH_FRAMES`: live frames per measurement (default 500,000);
//! - `LWTUN_BENCH_ROUNDS`: repetitions of every measurement (default 9; medians are reported);
//! - `LWTUN_BENCH_PLACEMENT`: `one` (default), `two` or `both` CPU placements (below);
//! - `LWTUN_BENCH_PART`: `cost`, `live` or `all` (default);
//! - `LWTUN_BENCH_BATCH`: live-frames batch size (default 64, the kernel's; at most 256);
//! - `LWTUN_BENCH_ONLY`: measure only the live cases whose name contains this text (the one hop
//!   is always measured), e.g. to profile one with `perf record -a -g`.
//!
//! Topologies (namespaces made here, removed at the end), one frame for all (64-byte IPv4/UDP):
//!
//! ```text
//!  one hop:  [G] gen ──── sink [S]                         xdp_gen live frames → xdp_drop
//!  forward:  [G] gen ──── rin [R] rout ──── sink [S]       R runs, on rin, one of:
//!              xdp_router (bpf_fib_lookup + devmap), xdp_router with its route cache,
//!              xdp_router as it comes (its cache on by default, dropped by the namespace's
//!              change notifications),
//!              xdp_redirect (MAC table + devmap),
//!              xdp_pass (the kernel's IPv4 forwarding does the work)
//! ```
//!
//! CPU placement (this matters more than anything on a small machine): the generator thread is
//! pinned to CPU 0 in every case, and there are two placements:
//! - one CPU (the default, and the one the goal is judged in): every receive runs in the
//!   generator's softirq on CPU 0, so the rate is the inverse of the whole path's CPU cost
//!   (generator + hop + sink) and nothing depends on how the scheduler spreads the stages;
//! - two CPUs: the first veth that receives (sink in one hop, rin when forwarding) polls in a
//!   threaded NAPI kthread pinned to CPU 1, and what it forwards is received in CPU 1's softirq:
//!   the generator is one pipeline stage, the hop under test plus the sink the other. The
//!   generator outruns the receiving stage (frames are lost at the veth ring, "delivered" < 100%),
//!   and the comparison is hop + sink against the sink alone.
//!
//! Rates are what the sink counted divided by the time the generator ran, two ways: wall clock,
//! and kernel-timed (BPF_PROG_TEST_RUN's own time, which leaves out the time the generator is
//! scheduled away for other processes: this machine is shared, and the wall clock swings with
//! their load). In the one-CPU placement every receive runs in the generator's softirq, so the
//! kernel time covers the whole path, unless the kernel defers softirq work to ksoftirqd (the
//! report shows how much ksoftirqd/0 ran). Every case is measured right after a one-hop
//! measurement, the ratio is taken within that pair, and the median over rounds is reported.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lwtun::device::Device;
use lwtun::netns::NetNs;
use lwtun::peer::{Encap, EncapPeer};
use lwtun::service::{Backend, Services};
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

fn device(ns: &NetNs, dev: &str) -> Device {
    ns.device(dev).unwrap()
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
    /// Device names (unique per run: NAPI kthreads are named after them, machine-wide).
    names: Names,
    gen_dev: Device,
    frame: Vec<u8>,
}

#[derive(Clone)]
struct Names {
    gen: String,
    rin: String,
    rout: String,
    sink: String,
}

fn names() -> Names {
    static N: AtomicU32 = AtomicU32::new(0);
    let tag = format!(
        "{}{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    );
    Names {
        gen: format!("bg{tag}"),
        rin: format!("bi{tag}"),
        rout: format!("bo{tag}"),
        sink: format!("bs{tag}"),
    }
}

/// The route cache's maximum age in the cached router cases.
const CACHE_AGE: Duration = Duration::from_millis(50);

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
    let n = names();
    let g = NetNs::create_unique("lwt-bx-g").unwrap();
    let s = NetNs::create_unique("lwt-bx-s").unwrap();
    veth(&g, &n.gen, &s, &n.sink);
    let frame = udp_frame(mac(&s, &n.sink), mac(&g, &n.gen), G_V4, S_V4);
    Topology {
        gen_dev: device(&g, &n.gen),
        g,
        r: None,
        s,
        names: n,
        frame,
    }
}

fn forward() -> Topology {
    let n = names();
    let g = NetNs::create_unique("lwt-bx-g").unwrap();
    let r = NetNs::create_unique("lwt-bx-r").unwrap();
    let s = NetNs::create_unique("lwt-bx-s").unwrap();
    veth(&g, &n.gen, &r, &n.rin);
    veth(&r, &n.rout, &s, &n.sink);
    ip(&r, &["addr", "add", "10.66.0.254/24", "dev", &n.rin]);
    ip(&r, &["addr", "add", "10.66.1.1/24", "dev", &n.rout]);
    ip(
        &r,
        &[
            "neigh",
            "add",
            &S_V4.to_string(),
            "lladdr",
            &mac_str(&mac(&s, &n.sink)),
            "dev",
            &n.rout,
        ],
    );
    r.set_sysctl("net.ipv4.ip_forward", "1").unwrap();
    let frame = udp_frame(mac(&r, &n.rin), mac(&g, &n.gen), G_V4, S_V4);
    Topology {
        gen_dev: device(&g, &n.gen),
        g,
        r: Some(r),
        s,
        names: n,
        frame,
    }
}

fn native() -> XdpOptions {
    XdpOptions {
        mode: XdpMode::Native,
        ..Default::default()
    }
}

/// Pins the calling thread (`pid` 0) or task `pid` to `cpu`.
fn pin(pid: i32, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "pin {pid} to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Makes `dev` in `ns` poll in a NAPI kthread (it must run XDP already: veth has NAPI only
/// then) and pins that kthread to `cpu`.
fn threaded_napi(ns: &NetNs, dev: &str, cpu: usize) {
    // `ip netns exec` mounts the namespace's own /sys, where `dev` is visible.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "sh", "-c"])
        .arg(format!("echo 1 > /sys/class/net/{dev}/threaded"))
        .output()
        .expect("run ip netns exec");
    assert!(
        out.status.success(),
        "threaded NAPI on {dev}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prefix = format!("napi/{dev}-");
    let mut found = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(&prefix) {
            pin(pid, cpu);
            found += 1;
        }
    }
    assert!(found > 0, "no NAPI kthread {prefix}*");
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Placement {
    OneCpu,
    TwoCpus,
}

impl Placement {
    fn label(self) -> &'static str {
        match self {
            Placement::OneCpu => "one CPU (generator, hop and sink on CPU 0)",
            Placement::TwoCpus => "two CPUs (generator on CPU 0; hop and sink on CPU 1)",
        }
    }
}

/// One live-frames measurement.
#[derive(Clone, Copy, Default)]
struct Blast {
    /// Frames the sink counted per second of the generator's wall time.
    wall: f64,
    /// Frames the sink counted per second of the kernel-timed run: BPF_PROG_TEST_RUN leaves
    /// out the time it is scheduled away (other processes on the CPU), so this follows the
    /// path's own CPU cost even on a busy machine, as long as the receive work runs in the
    /// generator's softirq and not in ksoftirqd (see `ksoftirqd_ms`).
    cpu: f64,
    /// Delivered fraction.
    delivered: f64,
    /// CPU time ksoftirqd/0 used meanwhile (work the kernel timing does not see).
    ksoftirqd_ms: f64,
}

/// utime + stime of ksoftirqd/0 in ms (0 when not found).
fn ksoftirqd0_ms() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == "ksoftirqd/0" {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let f: Vec<&str> = stat
                .rsplit_once(") ")
                .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            return (ticks(11) + ticks(12)) * 1000.0 / hz; // fields 14, 15 of stat
        }
    }
    0.0
}

/// Injects `frames` live frames from G (the sending thread pinned to CPU 0).
fn blast(t: &Topology, gen: &TrafficGen, sink: &XdpPass, frames: u32, batch: u32) -> Blast {
    let count = || {
        sink.stats()
            .snapshot(Stage::Ingress)
            .unwrap()
            .get(XdpAction::Drop)
            .packets
    };
    let live = |repeat| LiveFrames {
        device: t.gen_dev.clone(),
        repeat,
        batch_size: batch,
    };
    // One frame first: it sets the generator's template; the measured run then goes straight to
    // the program, whose result carries the kernel's time per frame.
    t.g.run(|| gen.send(&t.frame, &live(1))).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let before = count();
    let soft0 = ksoftirqd0_ms();
    let (elapsed, per_frame) =
        t.g.run(|| {
            pin(0, 0);
            let start = std::time::Instant::now();
            let per_frame = gen.program().run_live(&t.frame, &live(frames))?;
            Ok((start.elapsed(), per_frame))
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let got = (count() - before) as f64;
    let kernel_time = per_frame.as_secs_f64() * frames as f64;
    Blast {
        wall: got / elapsed.as_secs_f64(),
        cpu: if kernel_time > 0.0 {
            got / kernel_time
        } else {
            f64::NAN
        },
        delivered: got / frames as f64,
        ksoftirqd_ms: ksoftirqd0_ms() - soft0,
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One program-cost measurement: a program, the verdict it must give, and how it is run.
/// BPF_PROG_TEST_RUN repeats on the same buffer, so a program that rewrites the frame sees its
/// own output on the next repeat (the router decrements the TTL each time). Programs whose rewrite
/// is idempotent (`calls` 1) run 200k repeats in one call; the router runs 40 calls of 250 repeats
/// on a fresh copy with TTL 255 (each call costs ~20 ms of XDP dispatcher update, so not more),
/// and is compared with the no-op floor measured the same way.
struct CostCase<'a> {
    name: &'static str,
    program: &'a XdpProgram,
    want: XdpAction,
    calls: u32,
    setup: Box<dyn Fn() + Sync + 'a>,
}

fn cost_case<'a>(
    name: &'static str,
    program: &'a XdpProgram,
    want: XdpAction,
    calls: u32,
    setup: Box<dyn Fn() + Sync + 'a>,
) -> CostCase<'a> {
    CostCase {
        name,
        program,
        want,
        calls,
        setup,
    }
}

/// Kernel-measured ns per run of every case, `rounds` times, the cases taking turns within a
/// round (a burst of load from elsewhere then hits them alike): `[case][round]`.
fn cost_samples(
    cases: &[CostCase],
    ns: &NetNs,
    frame: &[u8],
    ingress: &Device,
    rounds: u32,
) -> Vec<Vec<f64>> {
    let mut frame = frame.to_vec();
    frame[22] = 255; // TTL
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&frame[14..34]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
    ns.run(|| {
        pin(0, 0);
        let mut samples = vec![Vec::new(); cases.len()];
        for _ in 0..rounds {
            for (i, case) in cases.iter().enumerate() {
                (case.setup)();
                let repeat = if case.calls == 1 { 200_000 } else { 250 };
                let mut total = Duration::ZERO;
                for _ in 0..case.calls {
                    let out = case
                        .program
                        .test_run_repeat(&frame, repeat, Some(ingress))?;
                    assert_eq!(out.verdict, case.want, "{}", case.name);
                    total += out.duration;
                }
                samples[i].push(total.as_nanos() as f64 / case.calls as f64);
            }
        }
        Ok(samples)
    })
    .unwrap()
}

fn min_of(v: &[f64]) -> f64 {
    v.iter().cloned().fold(f64::INFINITY, f64::min)
}

/// Turns threaded NAPI on `dev` on (kthread pinned to CPU 1) or off.
fn placement_napi(ns: &NetNs, dev: &str, placement: Placement) {
    match placement {
        Placement::TwoCpus => threaded_napi(ns, dev, 1),
        Placement::OneCpu => {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", ns.name(), "sh", "-c"])
                .arg(format!("echo 0 > /sys/class/net/{dev}/threaded"))
                .output()
                .expect("run ip netns exec");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// One forwarding case: the program on rin and how to configure it before a measurement.
struct Case<'a> {
    name: &'static str,
    program: &'a XdpProgram,
    setup: Box<dyn Fn() + 'a>,
}

/// The services' XDP director (glb-director's shape: a frame to a VIP encapsulated in place to
/// its flow's backend, next hop by `bpf_fib_lookup`) against `xdp_redirect` and the no-op floor,
/// in R with S as the one backend. One frame per call for all three: the director's output is no
/// longer a frame to the VIP, so a repeat would measure its pass branch. Kernel-timed ns per
/// call, the median of 2 000 calls per round, the median over rounds.
fn director_cost(
    t: &Topology,
    r: &NetNs,
    rin: &Device,
    fwd: &XdpRedirect,
    gen: &XdpPass,
    rounds: u32,
) {
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    let mut services = Services::builder().rows(4_099).load().unwrap();
    services
        .set(
            "10.96.0.10/32".parse().unwrap(),
            &[Backend::new(EncapPeer::new(
                IpAddr::V4(S_V4),
                IpAddr::V4(Ipv4Addr::new(10, 66, 1, 1)),
                Encap::Ipip,
            ))],
        )
        .unwrap();
    let director = XdpProgram::from_program(services.director_program()).unwrap();
    let n = &t.names;
    let vip_frame = udp_frame(mac(r, &n.rin), mac(&t.g, &n.gen), G_V4, VIP);
    let cases: [(&str, &XdpProgram, &[u8], XdpAction); 3] = [
        (
            "xdp_nop (floor)",
            gen.nop_program(),
            &t.frame,
            XdpAction::Pass,
        ),
        (
            "xdp_redirect: devmap forward + MAC rewrite",
            fwd.program(),
            &t.frame,
            XdpAction::Redirect,
        ),
        (
            "service director: flow, encap, fib, redirect",
            &director,
            &vip_frame,
            XdpAction::Redirect,
        ),
    ];
    let samples: Vec<Vec<f64>> = r
        .run(|| {
            pin(0, 0);
            let mut samples = vec![Vec::new(); cases.len()];
            for _ in 0..rounds {
                for (i, (name, program, frame, want)) in cases.iter().enumerate() {
                    let mut calls = Vec::with_capacity(2_000);
                    for _ in 0..2_000 {
                        let out = program.test_run_repeat(frame, 1, Some(rin))?;
                        assert_eq!(out.verdict, *want, "{name}");
                        calls.push(out.duration.as_nanos() as f64);
                    }
                    samples[i].push(median(&calls));
                }
            }
            Ok(samples)
        })
        .unwrap();
    println!("XDP director cost (BPF_PROG_TEST_RUN one frame per call, kernel-timed ns, median of {rounds} rounds):");
    let floor = median(&samples[0]);
    for (i, (name, ..)) in cases.iter().enumerate() {
        println!(
            "  {:<44} {:>6.1}   {:>6.1} above the floor",
            name,
            median(&samples[i]),
            median(&samples[i]) - floor
        );
    }
    let (redirect, dir) = (median(&samples[1]) - floor, median(&samples[2]) - floor);
    println!(
        "  director / xdp_redirect above the floor: {:.2} ({:.1} ns more per frame); {:?}",
        dir / redirect.max(1.0),
        dir - redirect,
        services.counters().unwrap()
    );
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED xdp benchmarks: need root (CAP_BPF, CAP_NET_ADMIN, namespaces)");
        return;
    }
    let frames = env_u32("LWTUN_BENCH_FRAMES", 500_000);
    let rounds = env_u32("LWTUN_BENCH_ROUNDS", 9).max(1);
    let batch = env_u32("LWTUN_BENCH_BATCH", 64);
    let part = std::env::var("LWTUN_BENCH_PART").unwrap_or_else(|_| "all".into());
    let placement_env = std::env::var("LWTUN_BENCH_PLACEMENT").unwrap_or_else(|_| "one".into());
    let gen = XdpPass::load().unwrap(); // the generating device's own XDP program, and the floor
    let sink = XdpPass::load().unwrap();
    let traffic = TrafficGen::load().unwrap();

    let t = forward();
    let n = t.names.clone();
    let r = t.r.as_ref().unwrap();
    let (rin, rout) = (device(r, &n.rin), device(r, &n.rout));
    let (s_mac, rout_mac) = (mac(&t.s, &n.sink), mac(r, &n.rout));
    // The sink's program goes on first: a devmap port refuses a veth whose peer cannot take
    // redirected frames.
    let _sink_f =
        XdpAttachment::attach(sink.drop_program(), &device(&t.s, &n.sink), native()).unwrap();
    let router = XdpRouter::load().unwrap();
    // A router left with its defaults: the cache turns on (1 s age) once the router follows its
    // namespace's changes, from its first port on. The other router's settings are set per case.
    let default_router = XdpRouter::load().unwrap();
    let fwd = XdpRedirect::load().unwrap();
    r.run(|| {
        router.add_port(&rout)?;
        default_router.add_port(&rout)?;
        fwd.ports().set(0, &rout, None)?;
        // The second rule matches the rewritten frame, so repeated test runs stay on the path.
        fwd.set_rule(
            s_mac,
            RedirectRule {
                port: 0,
                rewrite_dst: s_mac,
                rewrite_src: rout_mac,
            },
        )?;
        fwd.set_rule(
            mac(r, &n.rin),
            RedirectRule {
                port: 0,
                rewrite_dst: s_mac,
                rewrite_src: rout_mac,
            },
        )
    })
    .unwrap();

    if part == "all" || part == "cost" {
        println!(
            "XDP program cost (BPF_PROG_TEST_RUN, 64-byte UDP frame, kernel-timed ns per frame, median [min] of {rounds} rounds):"
        );
        let plain = || {
            router.set_direct_lookup(false).unwrap();
            router.set_route_cache(None).unwrap();
        };
        let cases = [
            cost_case(
                "xdp_nop (test_run floor)",
                gen.nop_program(),
                XdpAction::Pass,
                1,
                Box::new(|| ()),
            ),
            cost_case(
                "xdp_pass (per-action stats only)",
                gen.program(),
                XdpAction::Pass,
                1,
                Box::new(|| ()),
            ),
            cost_case(
                "xdp_redirect: devmap forward + MAC rewrite",
                fwd.program(),
                XdpAction::Redirect,
                1,
                Box::new(|| ()),
            ),
            cost_case(
                "xdp_nop (test_run floor), 40 x 250",
                gen.nop_program(),
                XdpAction::Pass,
                40,
                Box::new(|| ()),
            ),
            cost_case(
                "xdp_router: fib lookup + TTL + devmap",
                router.program(),
                XdpAction::Redirect,
                40,
                Box::new(plain),
            ),
            cost_case(
                "xdp_router, BPF_FIB_LOOKUP_DIRECT",
                router.program(),
                XdpAction::Redirect,
                40,
                Box::new(|| {
                    router.set_route_cache(None).unwrap();
                    router.set_direct_lookup(true).unwrap();
                }),
            ),
            cost_case(
                "xdp_router, route cache hit",
                router.program(),
                XdpAction::Redirect,
                40,
                Box::new(|| {
                    router.set_direct_lookup(false).unwrap();
                    router.set_route_cache(Some(CACHE_AGE)).unwrap();
                }),
            ),
            cost_case(
                "xdp_router, defaults (cache on, followed)",
                default_router.program(),
                XdpAction::Redirect,
                40,
                Box::new(|| ()),
            ),
        ];
        let samples = cost_samples(&cases, r, &t.frame, &rin, rounds);
        plain();
        // Above the floor: per round against the floor measured the same way, then the median.
        let above = |i: usize, floor: usize| {
            median(
                &samples[i]
                    .iter()
                    .zip(&samples[floor])
                    .map(|(x, f)| x - f)
                    .collect::<Vec<_>>(),
            )
        };
        for (i, case) in cases.iter().enumerate() {
            let floor = if case.calls == 1 { 0 } else { 3 };
            println!(
                "  {:<44} {:>6.1} [{:>5.1}]   {:>6.1} above the floor",
                case.name,
                median(&samples[i]),
                min_of(&samples[i]),
                above(i, floor)
            );
        }
        let fwd_ns = median(&samples[2]);
        println!(
            "  devmap forward with MAC rewrite: {fwd_ns:.1} ns (goal <= 60 ns: {})",
            if fwd_ns <= 60.0 { "met" } else { "NOT met" }
        );
    }
    if part == "all" || part == "cost" {
        director_cost(&t, r, &rin, &fwd, &gen, rounds);
    }
    if part != "all" && part != "live" {
        return;
    }
    if let Err(e) = lwtun::probe::xdp_live_frames() {
        println!("left out: the live-frame rows ({e})");
        return;
    }

    // ---- live frames ----
    println!(
        "\nLive frames (BPF_F_TEST_XDP_LIVE_FRAMES, {frames} x 64 B per measurement, batch {}, median of {rounds}):",
        if batch == 0 { 64 } else { batch }
    );
    let d = direct();
    let dn = d.names.clone();
    let _sink_d =
        XdpAttachment::attach(sink.drop_program(), &device(&d.s, &dn.sink), native()).unwrap();
    let _gen_d = gen.attach(&d.gen_dev, native()).unwrap();
    let _gen_f = gen.attach(&t.gen_dev, native()).unwrap();
    let mut on_rin = XdpAttachment::attach(router.program(), &rin, native()).unwrap();
    let cases = [
        Case {
            name: "XDP router, defaults (cache on)",
            program: default_router.program(),
            setup: Box::new(|| ()),
        },
        Case {
            name: "XDP router, no cache (fib + devmap)",
            program: router.program(),
            setup: Box::new(|| {
                router.set_direct_lookup(false).unwrap();
                router.set_route_cache(None).unwrap();
            }),
        },
        Case {
            name: "XDP router, direct fib lookup",
            program: router.program(),
            setup: Box::new(|| router.set_direct_lookup(true).unwrap()),
        },
        Case {
            name: "XDP router + route cache (50 ms)",
            program: router.program(),
            setup: Box::new(|| {
                router.set_direct_lookup(false).unwrap();
                router.set_route_cache(Some(CACHE_AGE)).unwrap();
            }),
        },
        Case {
            name: "XDP redirect (MAC table + devmap)",
            program: fwd.program(),
            setup: Box::new(|| ()),
        },
        Case {
            name: "kernel forwarding (xdp_pass on rin)",
            program: gen.program(),
            setup: Box::new(|| ()),
        },
    ];
    let only = std::env::var("LWTUN_BENCH_ONLY").unwrap_or_default();
    let cases: Vec<Case> = cases
        .into_iter()
        .filter(|c| c.name.contains(&only))
        .collect();
    let placements: Vec<Placement> = match placement_env.as_str() {
        "two" => vec![Placement::TwoCpus],
        "both" => vec![Placement::OneCpu, Placement::TwoCpus],
        _ => vec![Placement::OneCpu],
    };
    let kernel_case = cases.iter().position(|c| c.name.starts_with("kernel"));
    // Per placement, case and round: the case's measurement and the one hop measured right
    // before it (so a change of load from elsewhere hits both sides of the ratio alike).
    let mut got = vec![vec![Vec::new(); cases.len()]; placements.len()];
    let _ = blast(&d, &traffic, &sink, frames / 10, batch); // warm up
    for _ in 0..rounds {
        for (p, &placement) in placements.iter().enumerate() {
            placement_napi(&d.s, &dn.sink, placement);
            placement_napi(r, &n.rin, placement);
            for (i, case) in cases.iter().enumerate() {
                (case.setup)();
                on_rin.replace(case.program).unwrap();
                let _ = blast(&t, &traffic, &sink, frames / 20, batch); // neighbours, caches
                let one = blast(&d, &traffic, &sink, frames, batch);
                let fwd = blast(&t, &traffic, &sink, frames, batch);
                got[p][i].push((one, fwd));
            }
        }
    }
    router.set_direct_lookup(false).unwrap();
    router.set_route_cache(None).unwrap();
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (p, placement) in placements.iter().enumerate() {
        println!("  {}:", placement.label());
        let all_one: Vec<Blast> = got[p].iter().flatten().map(|m| m.0).collect();
        println!(
            "    one hop   G -> S                       {:>6.3} Mpps wall, {:>6.3} Mpps kernel-timed  ({:5.1}% delivered)",
            median(&all_one.iter().map(|b| b.wall).collect::<Vec<_>>()) / 1e6,
            median(&all_one.iter().map(|b| b.cpu).collect::<Vec<_>>()) / 1e6,
            median(&all_one.iter().map(|b| b.delivered).collect::<Vec<_>>()) * 100.0,
        );
        for (i, case) in cases.iter().enumerate() {
            let m = &got[p][i];
            let col = |f: fn(&(Blast, Blast)) -> f64| m.iter().map(f).collect::<Vec<_>>();
            let wall_ratio = col(|(o, f)| f.wall / o.wall);
            let cpu_ratio = col(|(o, f)| f.cpu / o.cpu);
            let vs_kernel = kernel_case.map_or(f64::NAN, |k| {
                let kr: Vec<f64> = got[p][k].iter().map(|m| m.1.cpu).collect();
                median(
                    &col(|m| m.1.cpu)
                        .iter()
                        .zip(&kr)
                        .map(|(r, k)| r / k)
                        .collect::<Vec<_>>(),
                )
            });
            println!(
                "    G -> R -> S via {:<36} {:>6.3} Mpps wall, {:>6.3} kernel-timed ({:5.1}% delivered)",
                case.name,
                median(&col(|m| m.1.wall)) / 1e6,
                median(&col(|m| m.1.cpu)) / 1e6,
                median(&col(|m| m.1.delivered)) * 100.0,
            );
            println!(
                "        of one hop: {:.2} kernel-timed [per round: {}], {:.2} wall [{}]; {:.2}x kernel forwarding; ksoftirqd/0 {:.0} ms per run",
                median(&cpu_ratio),
                list(&cpu_ratio),
                median(&wall_ratio),
                list(&wall_ratio),
                vs_kernel,
                median(&col(|m| m.1.ksoftirqd_ms)),
            );
            if case.name.contains("defaults") {
                let r = median(&cpu_ratio);
                println!(
                    "        the default router of one hop: {r:.2} kernel-timed (goal >= 0.60: {})",
                    if r >= 0.60 { "met" } else { "NOT met" }
                );
            }
        }
    }
    println!("  router fib results: {:?}", router.fib_stats().unwrap());
    println!(
        "  default router fib results: {:?}; its route cache: {:?}",
        default_router.fib_stats().unwrap(),
        default_router.route_cache_status().unwrap()
    );
}
