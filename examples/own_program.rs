//! Your own BPF programs at lwtun's hooks: a `.bpf.o` you built (examples/own/own_count.bpf.c),
//! loaded with libbpf-rs (named through `lwtun::libbpf_rs`, the version lwtun is built with) and
//! put in the four places lwtun runs programs:
//!
//! 1. on an LWT route's `lwt_xmit` hook ([`LwtRoute::program`] takes any program fd),
//! 2. as a stage of a [`ProgChain`], after one of lwtun's stages,
//! 3. as a member of an XDP [`Dispatcher`], after one of lwtun's members,
//! 4. as a chain-aware stage (built on lwtun's `bpf/chain.h`) with a [`Capture`] behind it, which
//!    records what your program let through, with your program's verdict.
//!
//! It builds two namespaces `own-a ── own-b`, pings through each placement, reads your program's
//! own map (`own_counts`: packets by protocol) to show it ran, and checks the counts: a count
//! that is not what the pings make is an error. Everything it installs is removed when it ends,
//! also when it fails or panics (the namespaces, routes and attachments are lwtun values that
//! remove themselves when dropped).
//!
//! Run as root: `cargo run --example own_program`. tests/own_program.rs runs it too.

use std::time::{Duration, Instant};

use lwtun::capture::{Capture, CaptureOptions};
use lwtun::chain::{member_stats, ChainHook, CountingStage, Dispatcher, ProgChain};
use lwtun::libbpf_rs::{MapCore, MapFlags, Object, ObjectBuilder, OpenObject, Program};
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::route::{Hook, LwtRoute};
use lwtun::xdp::{XdpAttachment, XdpMode, XdpOptions};
use lwtun::{Error, ErrorKind, Result};

/// Your object. A program of your own would name its own file here.
const OBJECT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/own/own_count.bpf.o");

/// Places and protocols of `own_counts` (see own_count.bpf.c).
const PLACE_LWT_XMIT: u32 = 0;
const PLACE_XDP: u32 = 2;
const PLACE_STAGE: u32 = 3;
const PROTOS: [&str; 5] = ["icmp", "icmpv6", "tcp", "udp", "other"];

const PINGS: u32 = 3;
const XDP_PASS: i32 = 2;

#[allow(dead_code)] // tests/own_program.rs includes this file and calls run()
fn main() {
    if let Err(e) = run() {
        eprintln!("own_program: {e}");
        if e.kind() == ErrorKind::Permission {
            eprintln!("run it as root (it creates namespaces and loads BPF programs)");
        }
        std::process::exit(1);
    }
}

/// Errors of libbpf-rs as lwtun errors, saying what was being done.
fn bpf<T>(op: &str, r: std::result::Result<T, lwtun::libbpf_rs::Error>) -> Result<T> {
    r.map_err(|e| Error::bpf(op.to_string(), e))
}

fn open() -> Result<OpenObject> {
    bpf(
        &format!("open {OBJECT}"),
        ObjectBuilder::default().open_file(OBJECT),
    )
}

fn load() -> Result<Object> {
    bpf(&format!("load {OBJECT}"), open()?.load())
}

fn program<'o>(object: &'o Object, name: &str) -> Result<Program<'o>> {
    object
        .progs()
        .find(|p| p.name() == name)
        .ok_or_else(|| Error::not_found("find your program", format!("{name} in {OBJECT}")))
}

/// Your program's counts at `place`, by protocol, from your map.
fn counts(object: &Object, place: u32) -> Result<[u64; 5]> {
    let map = object
        .maps()
        .find(|m| m.name() == "own_counts")
        .ok_or_else(|| Error::not_found("read your counts", "map own_counts"))?;
    let mut out = [0; 5];
    for (proto, n) in out.iter_mut().enumerate() {
        let key = place * PROTOS.len() as u32 + proto as u32;
        let value = bpf(
            "read own_counts",
            map.lookup(&key.to_ne_bytes(), MapFlags::ANY),
        )?
        .unwrap_or_default();
        *n = value
            .get(..8)
            .map_or(0, |b| u64::from_ne_bytes(b.try_into().expect("8 bytes")));
    }
    Ok(out)
}

fn show(counts: [u64; 5]) -> String {
    PROTOS
        .iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .map(|(p, n)| format!("{p} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fails unless your program counted exactly `PINGS` more ICMP packets than `before`.
fn expect_pings(what: &str, before: [u64; 5], after: [u64; 5]) -> Result<()> {
    if after[0] - before[0] == u64::from(PINGS) {
        return Ok(());
    }
    Err(Error::other(
        ErrorKind::Kernel,
        format!("check {what}"),
        format!(
            "your program counted {} ICMP packets, {PINGS} pings went through it",
            after[0] - before[0]
        ),
    ))
}

fn ping(a: &NetNs) -> Result<()> {
    let out = a.output(
        "ping",
        [
            "-c",
            &PINGS.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            "10.81.0.2",
        ],
    )?;
    if let Some(summary) = out.lines().find(|l| l.contains("transmitted")) {
        println!("   ping: {summary}");
    }
    Ok(())
}

/// Runs the four placements in two fresh namespaces; everything is removed when it returns.
pub fn run() -> Result<()> {
    println!("== two namespaces: own-a (10.81.0.1) ── own-b (10.81.0.2)");
    let a = NetNs::create_unique("own-a")?;
    let b = NetNs::create_unique("own-b")?;
    let mut nla = Netlink::open_in(&a)?;
    nla.add_veth("a-b", "b-a", Some(&b))?;
    for cmd in [
        "link set lo up",
        "link set a-b up",
        "addr add 10.81.0.1/24 dev a-b",
    ] {
        a.output("ip", cmd.split_whitespace())?;
    }
    for cmd in [
        "link set lo up",
        "link set b-a up",
        "addr add 10.81.0.2/24 dev b-a",
    ] {
        b.output("ip", cmd.split_whitespace())?;
    }
    let a_dev = a.device("a-b")?;
    let b_dev = b.device("b-a")?;
    let to_b = || LwtRoute::new("10.81.0.2/32".parse().unwrap()).device(&a_dev);

    println!("== 1. your own_lwt_xmit on an LWT route (lwt_xmit hook)");
    let object = load()?;
    let route = to_b()
        .program(Hook::Xmit, program(&object, "own_lwt_xmit")?)
        .install(&mut nla)?;
    println!(
        "   ip route: {}",
        a.output("ip", ["route", "show", "10.81.0.2/32"])?.trim()
    );
    let before = counts(&object, PLACE_LWT_XMIT)?;
    ping(&a)?;
    let after = counts(&object, PLACE_LWT_XMIT)?;
    println!("   your own_counts: {}", show(after));
    expect_pings("the route", before, after)?;
    route.remove()?;

    println!("== 2. your own_lwt_xmit as a chain stage, after lwtun's counting stage");
    let mut chain = ProgChain::new(ChainHook::LwtXmit)?;
    let counting = CountingStage::load(&chain)?;
    let first = chain.push(counting.program())?;
    let object = load()?;
    chain.push(program(&object, "own_lwt_xmit")?)?;
    let route = to_b()
        .program(Hook::Xmit, chain.lwt_entry()?)
        .install(&mut nla)?;
    ping(&a)?;
    let after = counts(&object, PLACE_LWT_XMIT)?;
    let stats = counting.stats(first)?;
    println!(
        "   chain: {}",
        chain
            .stages()
            .iter()
            .map(|s| s.program.name.as_str())
            .collect::<Vec<_>>()
            .join(" → ")
    );
    println!(
        "   lwtun's stage: {} packets; your own_counts: {}",
        stats.packets,
        show(after)
    );
    expect_pings("the chain stage", [0; 5], after)?;
    drop(route);
    drop(chain);

    println!("== 3. your own_xdp as an XDP dispatcher member on own-b, after lwtun's member");
    let mut dispatcher = Dispatcher::new(ChainHook::Xdp)?;
    let native = XdpOptions {
        mode: XdpMode::Native,
        ..Default::default()
    };
    let attachment = XdpAttachment::attach(dispatcher.entry(), &b_dev, native)?;
    let lwtun_member = dispatcher.attach(
        0,
        lwtun::skel::dispatch_member::OBJECT,
        "member_xdp",
        &[XDP_PASS],
    )?;
    let object = load()?;
    dispatcher.attach_program(1, program(&object, "own_xdp")?)?;
    ping(&a)?;
    let after = counts(&object, PLACE_XDP)?;
    let frames = member_stats(
        dispatcher
            .member_object(lwtun_member)
            .expect("the dispatcher loaded it"),
    )?
    .packets;
    println!(
        "   lwtun's member: {frames} frames; your own_counts: {}",
        show(after)
    );
    expect_pings("the dispatcher member", [0; 5], after)?;
    drop(attachment);
    drop(dispatcher);

    println!("== 4. your chain-aware own_stage with a capture behind it");
    let mut chain = ProgChain::new(ChainHook::LwtXmit)?;
    let mut open = open()?;
    chain.share_maps(&mut open)?; // before the load: own_stage walks this chain
    let object = bpf("load own_count.bpf.o", open.load())?;
    chain.push(program(&object, "own_stage")?)?;
    let mut capture = Capture::attach(&mut chain, CaptureOptions::default())?;
    let _route = to_b()
        .program(Hook::Xmit, chain.lwt_entry()?)
        .install(&mut nla)?;
    ping(&a)?;
    let mut packets = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while packets.len() < PINGS as usize && Instant::now() < deadline {
        packets.extend(capture.poll(Duration::from_millis(100))?);
    }
    for p in &packets {
        println!("   captured: {}", p.summary());
    }
    let after = counts(&object, PLACE_STAGE)?;
    println!("   your own_counts: {}", show(after));
    expect_pings("the chain-aware stage", [0; 5], after)?;
    if packets.len() != PINGS as usize {
        return Err(Error::other(
            ErrorKind::Kernel,
            "check the capture",
            format!(
                "the capture behind your stage holds {} packets, {PINGS} pings passed it",
                packets.len()
            ),
        ));
    }
    println!("== done: removing the routes, the programs and the namespaces");
    Ok(())
}
