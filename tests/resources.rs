//! Loading and dropping every object family many times leaves nothing behind in the process:
//! the open file descriptors (`/proc/self/fd`) and the resident memory (`VmRSS` in
//! `/proc/self/status`) end where they started.
//!
//! `LWTUN_RESOURCE_ROUNDS` sets the rounds per family (default 1000). The tunnel and decap
//! families take the verifier 0.1 s and 1.5 s per load on this machine, so they run
//! `LWTUN_RESOURCE_HEAVY_ROUNDS` rounds (default 20; 1000 for the long run). Families that attach
//! go through their attachments in a namespace of the test's own, so handles are dropped too.

mod common;

use std::time::Instant;

use lwtun::capture::{Capture, CaptureOptions};
use lwtun::chain::{ChainHook, CountingStage, Dispatcher, ProgChain};
use lwtun::decap::Decap;
use lwtun::program::{Hook, LwtCounter};
use lwtun::route::LwtRoute;
use lwtun::tc::{TcAttach, TcCounter, TcDirection};
use lwtun::tunnel::Tunnel;
use lwtun::tunnel_redirect::TunnelRedirect;
use lwtun::xdp::{IcmpEcho, TrafficGen, XdpOptions, XdpPass, XdpRedirect, XdpRouter};

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

type Family<'a> = (&'static str, Box<dyn Fn() -> lwtun::Result<()> + 'a>);

#[test]
fn every_family_loads_and_drops_without_leaking() {
    require!();
    let rounds: u32 = std::env::var("LWTUN_RESOURCE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let heavy: u32 = std::env::var("LWTUN_RESOURCE_HEAVY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let line = common::two_hosts();
    let dev = line.device(0, "to1");
    let mut nl = lwtun::netlink::Netlink::open_in(line.ns(0)).unwrap();
    let nl = std::cell::RefCell::new(&mut nl);
    let families: Vec<Family> = vec![
        (
            "LwtCounter + route",
            Box::new(|| {
                let c = LwtCounter::load()?;
                let r = LwtRoute::new("10.99.0.0/24".parse().unwrap())
                    .device(&dev)
                    .program(Hook::Xmit, c.program(Hook::Xmit))
                    .install(&mut nl.borrow_mut())?;
                r.remove()
            }),
        ),
        ("Tunnel (heavy)", Box::new(|| Tunnel::load().map(drop))),
        (
            "Decap + attach (heavy)",
            Box::new(|| {
                let mut d = Decap::load()?;
                d.attach(&dev)
            }),
        ),
        (
            "TunnelRedirect",
            Box::new(|| TunnelRedirect::load().map(drop)),
        ),
        (
            "TcCounter + tc attach",
            Box::new(|| {
                let c = TcCounter::load()?;
                TcAttach::new(&dev, TcDirection::Egress)
                    .attach(c.program())
                    .map(drop)
            }),
        ),
        (
            "XdpPass + XDP attach",
            Box::new(|| {
                let p = XdpPass::load()?;
                p.attach(&dev, XdpOptions::default()).map(drop)
            }),
        ),
        ("XdpRedirect", Box::new(|| XdpRedirect::load().map(drop))),
        ("XdpRouter", Box::new(|| XdpRouter::load().map(drop))),
        ("IcmpEcho", Box::new(|| IcmpEcho::load().map(drop))),
        ("TrafficGen", Box::new(|| TrafficGen::load().map(drop))),
        (
            "ProgChain + stage + capture",
            Box::new(|| {
                let mut chain = ProgChain::new(ChainHook::Tc)?;
                let stage = CountingStage::load(&chain)?;
                chain.push(stage.program())?;
                let capture = Capture::attach(&mut chain, CaptureOptions::default())?;
                capture.detach(&mut chain)
            }),
        ),
        (
            "Dispatcher",
            Box::new(|| Dispatcher::new(ChainHook::Xdp).map(drop)),
        ),
    ];
    // One round of each first: libbpf, the allocator and the feature probes settle.
    for (name, f) in &families {
        f().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let (fd0, rss0) = (fds(), rss_kib());
    let start = Instant::now();
    for (name, f) in &families {
        let t = Instant::now();
        let rounds = if name.ends_with("(heavy)") {
            heavy
        } else {
            rounds
        };
        for _ in 0..rounds {
            f().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let (fd, rss) = (fds(), rss_kib());
        println!(
            "{name:<30} {rounds} rounds in {:>6.2} s; fds {fd} (start {fd0}), RSS {rss} KiB (start {rss0})",
            t.elapsed().as_secs_f64()
        );
        assert_eq!(fd, fd0, "{name} leaked file descriptors");
    }
    let rss = rss_kib();
    println!(
        "all families: {:.1} s, RSS {rss0} -> {rss} KiB",
        start.elapsed().as_secs_f64()
    );
    // A leak of one page per round would be 4 MB per 1000 rounds of one family.
    assert!(
        rss <= rss0 + 8 * 1024,
        "RSS grew from {rss0} to {rss} KiB over the rounds"
    );
}
