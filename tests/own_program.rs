//! A user's own BPF object (examples/own/own_count.bpf.c, not one of lwtun's), loaded with
//! libbpf-rs through lwtun's re-export and handed to lwtun in the four places a program goes: an
//! LWT route's hook, a chain stage, a dispatcher member, and a chain stage in front of a capture.
//! Each with real traffic between two namespaces, checked by the user's own map (what their
//! program counted) and by what lwtun shows (`ip route show`, the chain's and dispatcher's
//! stats, the captured packets). Then the mistakes: a program of the wrong type for the hook, a
//! map where a program belongs, a chain stage loaded without the chain's maps.
mod common;
// The example, run by the_example_runs: what `cargo run --example own_program` does.
#[path = "../examples/own_program.rs"]
mod example;

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use lwtun::capture::{Capture, CaptureOptions};
use lwtun::chain::{member_stats, ChainHook, CountingStage, Dispatcher, ProgChain};
use lwtun::libbpf_rs::{MapCore, MapFlags, Object, ObjectBuilder, OpenObject};
use lwtun::netlink::Netlink;
use lwtun::route::{Hook, InstalledRoute, LwtRoute};
use lwtun::xdp::{XdpAttachment, XdpMode, XdpOptions};
use lwtun::ErrorKind;

/// The user's object, as built by examples/own/build.sh.
const OWN_OBJECT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/own/own_count.bpf.o");

/// `own_counts` places (one per program) and protocols, as in own_count.bpf.c.
const LWT_XMIT: u32 = 0;
const XDP: u32 = 2;
const STAGE: u32 = 3;
const PROTOS: u32 = 5;
const ICMP: usize = 0;
const ICMPV6: usize = 1;
const TCP: usize = 2;

const BPF_OK: i32 = 0;
const XDP_PASS: i32 = 2;

fn open_own() -> OpenObject {
    ObjectBuilder::default()
        .open_file(OWN_OBJECT)
        .unwrap_or_else(|e| panic!("open {OWN_OBJECT}: {e}"))
}

fn load_own() -> Object {
    open_own()
        .load()
        .unwrap_or_else(|e| panic!("load {OWN_OBJECT}: {e}"))
}

/// The user's program `name` in `object`.
fn prog<'o>(object: &'o Object, name: &str) -> lwtun::libbpf_rs::Program<'o> {
    object
        .progs()
        .find(|p| p.name() == name)
        .unwrap_or_else(|| panic!("no program {name} in {OWN_OBJECT}"))
}

/// What the user's program at `place` counted, by protocol (ICMP, ICMPv6, TCP, UDP, other), read
/// from the user's own map.
fn counts(object: &Object, place: u32) -> [u64; PROTOS as usize] {
    let map = object
        .maps()
        .find(|m| m.name() == "own_counts")
        .expect("map own_counts");
    std::array::from_fn(|proto| {
        let key = place * PROTOS + proto as u32;
        let value = map
            .lookup(&key.to_ne_bytes(), MapFlags::ANY)
            .unwrap()
            .expect("array element");
        u64::from_ne_bytes(value[..8].try_into().unwrap())
    })
}

/// Two hosts; in ns 0 the route to ns 1's address runs `program` at xmit.
fn routed(program: impl AsFd) -> (common::Line, InstalledRoute) {
    let net = common::two_hosts();
    let mut nl = Netlink::open_in(net.ns(0)).unwrap();
    let dev = nl.device("to1").unwrap();
    let route = LwtRoute::new(format!("{}/32", net.v4(1)).parse().unwrap())
        .device(&dev)
        .program(Hook::Xmit, program)
        .install(&mut nl)
        .unwrap();
    (net, route)
}

fn ping(net: &common::Line, count: u32) -> common::Ping {
    common::ping(net.ns(0), net.v4(1).into(), count)
}

#[test]
fn own_program_on_an_lwt_route_counts_pings_and_tcp() {
    require!();
    let object = load_own();
    let program = prog(&object, "own_lwt_xmit");
    let (net, route) = routed(&program);

    // What `ip route show` says: the route runs the user's program at xmit.
    let shown = common::ip(net.ns(0), &["route", "show", &format!("{}/32", net.v4(1))]);
    assert!(
        shown.contains("encap bpf xmit") && shown.contains("own_lwt_xmit"),
        "ip route show: {shown}"
    );
    assert_eq!(route.programs()[0].name(), "own_lwt_xmit");

    let p = ping(&net, 3);
    assert_eq!(p.received, 3, "{}", p.output);
    let c = counts(&object, LWT_XMIT);
    assert_eq!(c, [3, 0, 0, 0, 0], "the three echo requests, nothing else");

    // Content-checked TCP through the same route: the user's program counts its segments.
    let t = common::tcp_stream(net.ns(1), net.ns(0), net.v4(1).into(), 256 * 1024);
    assert!(t.complete(), "{t:?}");
    let c = counts(&object, LWT_XMIT);
    assert!(c[TCP] >= 10, "256 KiB is many segments from ns 0: {c:?}");
    assert_eq!(c[ICMP], 3);

    // The route removed: the program sees no more traffic.
    route.remove().unwrap();
    let before = counts(&object, LWT_XMIT);
    assert_eq!(ping(&net, 2).received, 2);
    assert_eq!(counts(&object, LWT_XMIT), before);

    // The same program on an IPv6 route: it counts ICMPv6 echo requests.
    let mut nl = Netlink::open_in(net.ns(0)).unwrap();
    let dev = nl.device("to1").unwrap();
    let _v6 = LwtRoute::new(format!("{}/128", net.v6(1)).parse().unwrap())
        .device(&dev)
        .program(Hook::Xmit, &program)
        .install(&mut nl)
        .unwrap();
    let p = common::ping(net.ns(0), net.v6(1).into(), 3);
    assert_eq!(p.received, 3, "{}", p.output);
    let after = counts(&object, LWT_XMIT);
    assert_eq!(after[ICMPV6] - before[ICMPV6], 3, "{after:?}");
    assert_eq!(after[ICMP], before[ICMP]);
}

#[test]
fn own_program_as_the_last_stage_of_a_chain() {
    require!();
    let mut chain = ProgChain::new(ChainHook::LwtXmit).unwrap();
    let counting = CountingStage::load(&chain).unwrap();
    let object = load_own();
    let first = chain.push(counting.program()).unwrap();
    let own = chain.push(prog(&object, "own_lwt_xmit")).unwrap();
    let names: Vec<String> = chain
        .stages()
        .iter()
        .map(|s| s.program.name.clone())
        .collect();
    assert_eq!(names.last().map(String::as_str), Some("own_lwt_xmit"));
    let (net, _route) = routed(chain.lwt_entry().unwrap());
    let shown = common::ip(net.ns(0), &["route", "show", &format!("{}/32", net.v4(1))]);
    assert!(shown.contains("chain_lwt_xmit"), "ip route show: {shown}");

    let p = ping(&net, 4);
    assert_eq!(p.received, 4, "{}", p.output);
    // lwtun's stage ran first for every packet, then the user's program, which ended the chain
    // with its own verdict (BPF_OK).
    let s = counting.stats(first).unwrap();
    assert_eq!((s.packets, s.position()), (4, Some(1.0)), "{s:?}");
    assert_eq!(counts(&object, LWT_XMIT), [4, 0, 0, 0, 0]);

    // Out of the chain: lwtun's stage still runs, the user's program no more.
    chain.remove(own).unwrap();
    assert_eq!(ping(&net, 2).received, 2);
    assert_eq!(counting.stats(first).unwrap().packets, 6);
    assert_eq!(counts(&object, LWT_XMIT), [4, 0, 0, 0, 0]);
}

/// The member stats of `id` once traffic has settled (ARP and IPv6 control frames reach XDP at
/// any time).
fn settled(read: impl Fn() -> [u64; 2]) -> [u64; 2] {
    let mut last = read();
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(50));
        let now = read();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

#[test]
fn own_program_as_a_dispatcher_member() {
    require!();
    let net = common::two_hosts();
    let mut d = Dispatcher::new(ChainHook::Xdp).unwrap();
    let native = XdpOptions {
        mode: XdpMode::Native,
        ..Default::default()
    };
    let _att = XdpAttachment::attach(d.entry(), &net.device(1, "to0"), native).unwrap();
    // lwtun's own member in slot 0 lets XDP_PASS go on to slot 1, the user's program.
    let lwtun_member = d
        .attach(
            0,
            lwtun::skel::dispatch_member::OBJECT,
            "member_xdp",
            &[XDP_PASS],
        )
        .unwrap();
    let object = load_own();
    let own = d.attach_program(1, prog(&object, "own_xdp")).unwrap();
    assert_eq!(
        d.members()
            .iter()
            .map(|m| m.program.name.as_str())
            .collect::<Vec<_>>(),
        ["member_xdp", "own_xdp"]
    );

    let p = ping(&net, 3);
    assert_eq!(p.received, 3, "{}", p.output);
    let read = |d: &Dispatcher| {
        let frames = member_stats(d.member_object(lwtun_member).unwrap())
            .unwrap()
            .packets;
        let own_frames: u64 = counts(&object, XDP).iter().sum();
        [frames, own_frames]
    };
    let [frames, own_frames] = settled(|| read(&d));
    // Every frame ran both members: lwtun's member counted what the user's program counted.
    assert_eq!(frames, own_frames, "every frame ran both members");
    assert_eq!(counts(&object, XDP)[ICMP], 3, "the three echo requests");

    // The user's member detached: its counts stay, lwtun's member goes on counting.
    d.detach(own).unwrap();
    assert_eq!(ping(&net, 2).received, 2);
    let [frames_after, _] = settled(|| read(&d));
    assert!(frames_after >= frames + 2);
    assert_eq!(counts(&object, XDP)[ICMP], 3);

    // The object's bytes to the dispatcher instead: it loads own_xdp itself and keeps the
    // object, whose map counts what this member sees.
    let bytes = std::fs::read(OWN_OBJECT).unwrap();
    let loaded = d.attach(1, &bytes, "own_xdp", &[]).unwrap();
    assert_eq!(ping(&net, 2).received, 2);
    let theirs = d.member_object(loaded).expect("the dispatcher loaded it");
    assert_eq!(counts(theirs, XDP)[ICMP], 2);
    assert_eq!(counts(&object, XDP)[ICMP], 3, "a map of its own");
}

#[test]
fn capture_sees_what_the_users_chain_aware_stage_passes() {
    require!();
    let mut chain = ProgChain::new(ChainHook::LwtXmit).unwrap();
    // The user's object joins the chain's maps before it loads: own_stage, built on lwtun's
    // bpf/chain.h, goes on with lwtun_chain_next() to the exit hook.
    let mut open = open_own();
    chain.share_maps(&mut open).unwrap();
    let object = open.load().unwrap();
    chain.push(prog(&object, "own_stage")).unwrap();
    let mut capture = Capture::attach(&mut chain, CaptureOptions::default()).unwrap();
    let (net, _route) = routed(chain.lwt_entry().unwrap());

    let p = ping(&net, 3);
    assert_eq!(p.received, 3, "{}", p.output);
    assert_eq!(counts(&object, STAGE), [3, 0, 0, 0, 0]);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while seen.len() < 3 && Instant::now() < deadline {
        seen.extend(capture.poll(Duration::from_millis(100)).unwrap());
    }
    assert_eq!(
        seen.len(),
        3,
        "the capture behind the user's stage: {seen:?}"
    );
    for packet in &seen {
        assert_eq!(packet.hook, ChainHook::LwtXmit);
        assert_eq!(packet.verdict, BPF_OK, "the user's stage's verdict");
        assert_eq!(
            packet.ip_addrs(),
            Some((IpAddr::from(net.v4(0)), IpAddr::from(net.v4(1))))
        );
        assert!(packet.echo().is_some(), "{}", packet.summary());
    }
    assert_eq!(capture.lost().unwrap(), 0);
}

#[test]
fn wrong_programs_and_fds_are_refused_naming_both_types() {
    require!();
    let net = common::two_hosts();
    let mut nl = Netlink::open_in(net.ns(0)).unwrap();
    let dev = nl.device("to1").unwrap();
    let dst = format!("{}/32", net.v4(1));
    let object = load_own();

    // An XDP program on an LWT route.
    let e = LwtRoute::new(dst.parse().unwrap())
        .device(&dev)
        .program(Hook::Xmit, prog(&object, "own_xdp"))
        .install(&mut nl)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let text = e.to_string();
    for word in ["own_xdp", "xdp (", "lwt_xmit ("] {
        assert!(text.contains(word), "{word:?} missing from: {text}");
    }
    // A map where a program belongs.
    let map = object
        .maps()
        .find(|m| m.name() == "own_counts")
        .expect("own_counts");
    let e = LwtRoute::new(dst.parse().unwrap())
        .device(&dev)
        .program(Hook::Xmit, map.as_fd())
        .install(&mut nl)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(
        e.to_string().contains("own_counts") && e.to_string().contains("not a BPF program"),
        "{e}"
    );
    // Nothing was installed by either.
    let shown = common::ip(net.ns(0), &["route", "show", &dst]);
    assert!(shown.trim().is_empty(), "{shown}");

    // A tc program as a stage of an LWT chain, and as an XDP dispatcher member.
    let mut chain = ProgChain::new(ChainHook::LwtXmit).unwrap();
    let e = chain.push(prog(&object, "own_tc")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(
        e.to_string().contains("sched_cls (") && e.to_string().contains("lwt_xmit ("),
        "{e}"
    );
    let mut d = Dispatcher::new(ChainHook::Xdp).unwrap();
    let e = d.attach_program(0, prog(&object, "own_tc")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(
        e.to_string().contains("sched_cls (") && e.to_string().contains("xdp ("),
        "{e}"
    );
    assert!(d.members().is_empty());

    // A chain-aware stage loaded without the chain's maps walks a chain of its own: refused.
    let e = chain.push(prog(&object, "own_stage")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("share_maps"), "{e}");
    assert!(chain.stages().is_empty());

    // An object built against another chain ABI (its lwtun_chain_abi, the first 16 bytes of
    // .rodata, says version 99) is refused, and saying to rebuild it.
    let mut other = open_own();
    let mut rodata = other
        .maps_mut()
        .find(|m| m.name().to_string_lossy().ends_with(".rodata"))
        .expect(".rodata");
    rodata.initial_value_mut().expect("initial value")[4..8].copy_from_slice(&99u32.to_ne_bytes());
    let e = chain.share_maps(&mut other).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(
        e.to_string().contains("version 99") && e.to_string().contains("rebuild"),
        "{e}"
    );

    // An object not built on bpf/chain.h cannot share a chain's maps.
    let mut plain = ObjectBuilder::default()
        .open_memory(lwtun::skel::lwt_count::OBJECT)
        .unwrap();
    let e = chain.share_maps(&mut plain).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("bpf/chain.h"), "{e}");
}

#[test]
fn the_example_runs() {
    require!();
    let started = Instant::now();
    example::run().unwrap();
    assert!(started.elapsed() < Duration::from_secs(60), "bounded");
}
