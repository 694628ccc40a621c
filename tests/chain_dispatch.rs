//! The tail-call Dispatcher in namespaces with real traffic, at an LWT route's xmit hook, at XDP
//! and at tc ingress: members run in slot order (their counted positions show it), a verdict
//! outside a member's continue set ends the run with that verdict (later members count nothing,
//! the packets get it), a program that is not dispatch-aware ends the run, members attached,
//! replaced and detached under a steady flow lose no packet, and refusals leave the dispatcher
//! as it was.
mod common;

use std::time::Duration;

use lwtun::chain::{
    member_stats, set_member_verdict, ChainHook, Dispatcher, MemberId, MemberStats,
};
use lwtun::netlink::Netlink;
use lwtun::program::{Hook, LwtCounter};
use lwtun::route::{InstalledRoute, LwtRoute};
use lwtun::skel::dispatch_member::OBJECT as MEMBER;
use lwtun::tc::{TcAttach, TcCounter, TcDirection};
use lwtun::xdp::{XdpAttachment, XdpMode, XdpOptions};
use lwtun::ErrorKind;

const BPF_OK: i32 = 0;
const BPF_DROP: i32 = 2;
const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;
const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;

/// Two hosts; in ns 0 the route to ns 1's address runs the dispatcher's root at xmit.
fn routed(d: &Dispatcher) -> (common::Line, InstalledRoute) {
    let net = common::two_hosts();
    let mut nl = Netlink::open_in(net.ns(0)).unwrap();
    let dev = nl.device("to1").unwrap();
    let route = LwtRoute::new(format!("{}/32", net.v4(1)).parse().unwrap())
        .device(&dev)
        .program(Hook::Xmit, d.lwt_entry().unwrap())
        .install(&mut nl)
        .unwrap();
    (net, route)
}

fn stats(d: &Dispatcher, id: MemberId) -> MemberStats {
    member_stats(d.member_object(id).unwrap()).unwrap()
}

/// The stats of `ids` once traffic has settled: read until two reads 50 ms apart agree (a
/// device's own packets, IPv6 neighbour discovery say, reach a tc hook at any time, and one
/// landing between the reads of two members would skew their comparison).
fn settled<const N: usize>(d: &Dispatcher, ids: [MemberId; N]) -> [MemberStats; N] {
    let mut last = ids.map(|id| stats(d, id));
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(50));
        let now = ids.map(|id| stats(d, id));
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

fn slots(d: &Dispatcher) -> Vec<u32> {
    d.members().iter().map(|m| m.id.slot()).collect()
}

#[test]
fn lwt_xmit_members_run_in_slot_order_and_verdicts_decide() {
    require!();
    let mut d = Dispatcher::new(ChainHook::LwtXmit).unwrap();
    let (net, _route) = routed(&d);
    let ping = |n| common::ping(net.ns(0), net.v4(1).into(), n);
    assert_eq!(ping(2).received, 2, "an empty dispatcher passes");

    let a = d.attach(0, MEMBER, "member_lwt_xmit", &[BPF_OK]).unwrap();
    let c = d.attach(7, MEMBER, "member_lwt_xmit", &[BPF_OK]).unwrap();
    let b = d.attach(3, MEMBER, "member_lwt_xmit", &[BPF_OK]).unwrap();
    assert_eq!(slots(&d), vec![0, 3, 7], "listed in slot order");
    assert!(d.members().iter().all(|m| m.dispatch_aware));
    let p = ping(3);
    assert_eq!(p.received, 3, "{}", p.output);
    // Only the pings take the route: exact counts. Positions 1, 2, 3 follow the slots, not the
    // order of attachment.
    for (id, position) in [(a, 1), (b, 2), (c, 3)] {
        let s = stats(&d, id);
        assert_eq!(s.packets, 3, "{id}: {s:?}");
        assert_eq!(
            s.bytes,
            3 * 84,
            "{id}: ICMP echo of 84 bytes from the IP header"
        );
        assert_eq!(
            s.depth_sum,
            3 * position,
            "{id} runs at position {position}"
        );
        assert_eq!(
            s.slot_sum,
            3 * u64::from(id.slot()),
            "{id} sees its own slot"
        );
    }

    // b drops: the pings are lost, c never runs, a still does (it comes first).
    set_member_verdict(d.member_object(b).unwrap(), Some(BPF_DROP)).unwrap();
    let before = [a, b, c].map(|id| stats(&d, id));
    let p = ping(2);
    assert_eq!(
        p.received, 0,
        "b's BPF_DROP is the packets' verdict: {}",
        p.output
    );
    let delta = [a, b, c].map(|id| stats(&d, id).packets);
    assert_eq!(
        [0, 1, 2].map(|i| delta[i] - before[i].packets),
        [2, 2, 0],
        "a and b run, c does not"
    );

    // With BPF_DROP in its continue set, b's drop goes on: c runs and passes, and the packets get
    // the dispatcher's verdict (BPF_OK).
    let b = d
        .replace(b, MEMBER, "member_lwt_xmit", &[BPF_OK, BPF_DROP])
        .unwrap();
    set_member_verdict(d.member_object(b).unwrap(), Some(BPF_DROP)).unwrap();
    let c_before = stats(&d, c);
    let p = ping(2);
    assert_eq!(p.received, 2, "{}", p.output);
    assert_eq!(stats(&d, b).packets, 2, "the replacement counts from zero");
    let s = stats(&d, c).since(&c_before);
    assert_eq!((s.packets, s.depth_sum), (2, 2 * 3), "c, third");

    // a with an empty continue set: its BPF_OK ends the run after a.
    let a = d.replace(a, MEMBER, "member_lwt_xmit", &[]).unwrap();
    let c_before = stats(&d, c);
    let p = ping(2);
    assert_eq!(p.received, 2, "{}", p.output);
    assert_eq!(stats(&d, a).packets, 2);
    assert_eq!(stats(&d, b).packets, 2, "b not reached");
    assert_eq!(stats(&d, c).since(&c_before).packets, 0, "c not reached");
    let a = d.replace(a, MEMBER, "member_lwt_xmit", &[BPF_OK]).unwrap();

    // A program that is not dispatch-aware (lwt_count's xmit counter) in slot 5: it runs after
    // a and b, and ends the run with its own BPF_OK, so c is not reached.
    let counter = LwtCounter::load().unwrap();
    let foreign = d.attach_program(5, counter.program(Hook::Xmit)).unwrap();
    assert!(!d.members()[2].dispatch_aware);
    assert_eq!(d.members()[2].id, foreign);
    set_member_verdict(d.member_object(b).unwrap(), None).unwrap();
    let before = [a, b, c].map(|id| stats(&d, id));
    let p = ping(3);
    assert_eq!(p.received, 3, "{}", p.output);
    assert_eq!(counter.counter(Hook::Xmit).unwrap().packets, 3);
    assert_eq!(
        [0, 1, 2].map(|i| stats(&d, [a, b, c][i]).since(&before[i]).packets),
        [3, 3, 0],
        "the foreign member ends the run"
    );
    // The same from an object not built on bpf/dispatch.h, loaded by the dispatcher.
    d.detach(foreign).unwrap();
    let e = d
        .attach(5, lwtun::skel::lwt_count::OBJECT, "count_xmit", &[BPF_OK])
        .unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::InvalidInput,
        "a continue set it cannot honour: {e}"
    );
    let foreign = d
        .attach(5, lwtun::skel::lwt_count::OBJECT, "count_xmit", &[])
        .unwrap();
    let c_before = stats(&d, c);
    assert_eq!(ping(2).received, 2);
    assert_eq!(stats(&d, c).since(&c_before).packets, 0);
    d.detach(foreign).unwrap();
    let c_before = stats(&d, c);
    assert_eq!(ping(1).received, 1);
    assert_eq!(stats(&d, c).since(&c_before).packets, 1, "c runs again");

    // The dispatcher's own verdict after the last member, and with none.
    d.set_verdict(BPF_DROP).unwrap();
    assert_eq!(
        ping(1).received,
        0,
        "everyone went on: the dispatcher drops"
    );
    for id in [a, b, c] {
        d.detach(id).unwrap();
    }
    assert!(d.members().is_empty());
    assert_eq!(ping(1).received, 0, "no member: the dispatcher's verdict");
    d.set_verdict(BPF_OK).unwrap();
    assert_eq!(ping(1).received, 1);
}

/// Two hosts and an XDP dispatcher attached natively to host 1's veth (the namespace takes the
/// attachment with it).
fn xdp_dispatcher() -> (common::Line, Dispatcher, XdpAttachment) {
    let net = common::two_hosts();
    let d = Dispatcher::new(ChainHook::Xdp).unwrap();
    // The dispatcher's entry attaches through the same call as every other XDP program.
    let native = XdpOptions {
        mode: XdpMode::Native,
        ..Default::default()
    };
    let att = XdpAttachment::attach(d.entry(), &net.device(1, "to0"), native).unwrap();
    (net, d, att)
}

#[test]
fn xdp_members_run_in_order_and_a_drop_stops_the_run() {
    require!();
    let (net, mut d, _att) = xdp_dispatcher();
    let ping = |n| common::ping(net.ns(0), net.v4(1).into(), n);
    let a = d.attach(1, MEMBER, "member_xdp", &[XDP_PASS]).unwrap();
    let b = d.attach(2, MEMBER, "member_xdp", &[XDP_PASS]).unwrap();
    let c = d.attach(5, MEMBER, "member_xdp", &[XDP_PASS]).unwrap();
    let p = ping(3);
    assert_eq!(p.received, 3, "{}", p.output);
    // ARP and IPv6 control frames cross the hook too, so counts are at least the pings, equal
    // for the three members (each frame ran all of them), at positions 1, 2, 3 for every frame.
    let s = settled(&d, [a, b, c]);
    assert!(s[0].packets >= 3, "{s:?}");
    for (i, st) in s.iter().enumerate() {
        assert_eq!(
            st.packets, s[0].packets,
            "every frame ran every member: {s:?}"
        );
        assert_eq!(
            st.depth_sum,
            st.packets * (i as u64 + 1),
            "position {}: {st:?}",
            i + 1
        );
    }

    // b drops: the pings are lost, c sees nothing more.
    set_member_verdict(d.member_object(b).unwrap(), Some(XDP_DROP)).unwrap();
    let p = ping(2);
    assert_eq!(
        p.received, 0,
        "XDP_DROP is the frames' verdict: {}",
        p.output
    );
    let delta = [0, 1, 2].map(|i| stats(&d, [a, b, c][i]).since(&s[i]).packets);
    assert!(delta[0] >= 2, "{delta:?}");
    assert_eq!(
        delta[1], delta[0],
        "b ran for every frame a let on: {delta:?}"
    );
    assert_eq!(delta[2], 0, "c is not reached: {delta:?}");

    // b detached: a and c alone, the pings work again.
    d.detach(b).unwrap();
    let c_before = stats(&d, c);
    let p = ping(2);
    assert_eq!(p.received, 2, "{}", p.output);
    let s = stats(&d, c).since(&c_before);
    assert!(s.packets >= 2);
    assert_eq!(s.depth_sum, 2 * s.packets, "c is second now");
}

#[test]
fn tc_members_run_in_order_and_a_shot_stops_the_run() {
    require!();
    let net = common::two_hosts();
    let mut d = Dispatcher::new(ChainHook::Tc).unwrap();
    let dev = net.device(1, "to0");
    let _attachment = net
        .ns(1)
        .run(|| TcAttach::new(&dev, TcDirection::Ingress).attach(d.entry()))
        .unwrap();
    let ping = |n| common::ping(net.ns(0), net.v4(1).into(), n);
    let go_on = [TC_ACT_UNSPEC, TC_ACT_OK];
    let a = d.attach(0, MEMBER, "member_tc", &go_on).unwrap();
    let b = d.attach(4, MEMBER, "member_tc", &go_on).unwrap();
    let c = d.attach(6, MEMBER, "member_tc", &go_on).unwrap();
    let p = ping(3);
    assert_eq!(p.received, 3, "{}", p.output);
    let s = settled(&d, [a, b, c]);
    assert!(s[0].packets >= 3, "{s:?}");
    for (i, st) in s.iter().enumerate() {
        assert_eq!(st.packets, s[0].packets, "{s:?}");
        assert_eq!(
            st.depth_sum,
            st.packets * (i as u64 + 1),
            "position {}: {st:?}",
            i + 1
        );
    }

    set_member_verdict(d.member_object(b).unwrap(), Some(TC_ACT_SHOT)).unwrap();
    let p = ping(2);
    assert_eq!(
        p.received, 0,
        "TC_ACT_SHOT is the packets' verdict: {}",
        p.output
    );
    let delta = [0, 1, 2].map(|i| stats(&d, [a, b, c][i]).since(&s[i]).packets);
    assert!(
        delta[0] >= 2 && delta[1] == delta[0] && delta[2] == 0,
        "{delta:?}"
    );

    // A tc program that is not dispatch-aware (TcCounter) replaces b: it passes and ends the run.
    d.detach(b).unwrap();
    let counter = TcCounter::load().unwrap();
    d.attach_program(4, counter.program()).unwrap();
    let c_before = stats(&d, c);
    let p = ping(2);
    assert_eq!(p.received, 2, "{}", p.output);
    assert!(counter.counter().unwrap().packets >= 2);
    assert_eq!(stats(&d, c).since(&c_before).packets, 0, "c not reached");
}

/// Sends flows of 400 pings 5 ms apart from ns 0 to ns 1 while members come and go between
/// `d`'s first (slot 0) and last (slot 7) members, until at least [`MIN_ROUNDS`] rounds ran: each
/// round inserts a member, replaces it, inserts a second and removes both, each change one prog
/// array write (a removal waits for RCU grace periods, about 40 ms each here, so a round takes
/// about 150 ms; much longer under emulation). Asserts that no ping was lost,
/// that the changing members ran for some packets, and returns the first and last members'
/// counts.
fn flow_with_changes(
    d: &mut Dispatcher,
    net: &common::Line,
    program: &str,
    go_on: &[i32],
) -> (MemberStats, MemberStats) {
    let first = d.attach(0, MEMBER, program, go_on).unwrap();
    let last = d.attach(7, MEMBER, program, go_on).unwrap();
    let ns0 = net.ns(0);
    let target = net.v4(1).to_string();
    let mut middle = 0u64; // what the members that came and went counted
    let mut rounds = 0u32;
    let mut flows = 0u32;
    // However slow the machine (a round waits for RCU grace periods), flows go on until at
    // least MIN_ROUNDS rounds of changes ran under them.
    while rounds < MIN_ROUNDS {
        let out = std::thread::scope(|s| {
            let flow = s.spawn(|| common::ping_flow(ns0, &target, FLOW));
            while !flow.is_finished() {
                let slot = 1 + rounds % 5;
                let id = d.attach(slot, MEMBER, program, go_on).unwrap();
                std::thread::sleep(Duration::from_millis(2));
                let id = d.replace(id, MEMBER, program, go_on).unwrap();
                let other = d.attach(slot + 1, MEMBER, program, go_on).unwrap();
                std::thread::sleep(Duration::from_millis(2));
                middle += stats(d, id).packets + stats(d, other).packets;
                d.detach(id).unwrap();
                d.detach(other).unwrap();
                rounds += 1;
            }
            flow.join().unwrap()
        });
        flows += 1;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("{FLOW} packets transmitted, {FLOW} received")),
            "no packet lost over {rounds} rounds of insert/replace/remove:\n{text}"
        );
    }
    eprintln!("{program}: {flows} x {FLOW} pings, {rounds} rounds of 5 changes, none lost");
    assert!(
        middle > 0,
        "the members that came and went ran for some packets"
    );
    assert_eq!(slots(d), vec![0, 7]);
    let (f, l) = (stats(d, first), stats(d, last));
    assert_eq!(
        f.depth_sum, f.packets,
        "the first member was always first: {f:?}"
    );
    assert!(
        l.depth_sum > 2 * l.packets,
        "the last member ran third or later while others were in: {l:?}"
    );
    (f, l)
}

const FLOW: u32 = 400;
/// The fewest rounds of changes [`flow_with_changes`] makes under its flows.
const MIN_ROUNDS: u32 = 5;

#[test]
fn members_come_and_go_under_a_steady_flow_without_loss() {
    require!();
    let mut d = Dispatcher::new(ChainHook::LwtXmit).unwrap();
    let (net, _route) = routed(&d);
    let (f, l) = flow_with_changes(&mut d, &net, "member_lwt_xmit", &[BPF_OK]);
    // Only the echo requests take the route.
    assert_eq!((f.packets, l.packets), (u64::from(FLOW), u64::from(FLOW)));
}

#[test]
fn xdp_members_come_and_go_under_a_steady_flow_without_loss() {
    require!();
    let (net, mut d, _att) = xdp_dispatcher();
    let (f, l) = flow_with_changes(&mut d, &net, "member_xdp", &[XDP_PASS]);
    // ARP may cross the hook too: every frame ran both, at least the requests.
    assert_eq!(f.packets, l.packets);
    assert!(f.packets >= u64::from(FLOW), "{f:?}");
}

/// MEMBER with its `lwtun_dispatch_abi` (magic, version 2, 8 slots) rewritten.
fn member_with_abi(magic: u32, version: u32, slots: u32) -> Vec<u8> {
    let mut bytes = MEMBER.to_vec();
    let mut want = Vec::new();
    for w in [
        0x4c57_544e_u32,
        lwtun::chain::DISPATCH_VERSION,
        lwtun::chain::DISPATCH_SLOTS,
    ] {
        want.extend_from_slice(&w.to_ne_bytes());
    }
    let at: Vec<usize> = (0..bytes.len() - 12)
        .filter(|&i| bytes[i..i + 12] == want[..])
        .collect();
    assert_eq!(at.len(), 1, "the ABI words occur once in the object");
    for (k, w) in [magic, version, slots].iter().enumerate() {
        bytes[at[0] + 4 * k..at[0] + 4 * k + 4].copy_from_slice(&w.to_ne_bytes());
    }
    bytes
}

#[test]
fn refusals_leave_the_dispatcher_as_it_was() {
    require!();
    let mut d = Dispatcher::new(ChainHook::LwtXmit).unwrap();
    let a = d.attach(3, MEMBER, "member_lwt_xmit", &[BPF_OK]).unwrap();
    let before = d.members();

    // An object built against another dispatcher ABI.
    for (bytes, what) in [
        (member_with_abi(0x4c57_544e, 1, 8), "rebuild"),
        (member_with_abi(0x4c57_544e, 2, 16), "rebuild"),
        (
            member_with_abi(0xdead_beef, 2, 8),
            "not an lwtun dispatcher object",
        ),
    ] {
        let e = d
            .attach(1, &bytes, "member_lwt_xmit", &[BPF_OK])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains(what), "{e}");
        let e = d
            .replace(a, &bytes, "member_lwt_xmit", &[BPF_OK])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    }
    // The untouched object still loads: the patch, not the loader, made the difference.
    let ok = member_with_abi(0x4c57_544e, 2, 8);
    let b = d.attach(1, &ok, "member_lwt_xmit", &[BPF_OK]).unwrap();
    d.detach(b).unwrap();

    // Bad and occupied slots.
    let e = d
        .attach(8, MEMBER, "member_lwt_xmit", &[BPF_OK])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let e = d
        .attach(3, MEMBER, "member_lwt_xmit", &[BPF_OK])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "slot 3 is taken: {e}");
    let counter = TcCounter::load().unwrap();
    let e = d.attach_program(3, counter.program()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");

    // Wrong program types, unknown names, verdicts that cannot go on.
    let e = d.attach(1, MEMBER, "member_tc", &[BPF_OK]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "a tc program: {e}");
    let e = d.attach(1, MEMBER, "member_lwt_in", &[BPF_OK]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "an lwt_in program: {e}");
    let e = d.attach_program(1, counter.program()).unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::InvalidInput,
        "a loaded tc program: {e}"
    );
    let e = d.attach(1, MEMBER, "no_such", &[BPF_OK]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(
        e.to_string().contains("member_lwt_xmit"),
        "names what there is: {e}"
    );
    let e = d.attach(1, MEMBER, "member_lwt_xmit", &[-5]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let e = d
        .attach(1, b"not an ELF object", "member_lwt_xmit", &[])
        .unwrap_err();
    assert_ne!(e.kind(), ErrorKind::NotFound, "{e}");

    // Stale ids.
    assert_eq!(d.detach(b).unwrap_err().kind(), ErrorKind::NotFound);
    let e = d.replace(b, MEMBER, "member_lwt_xmit", &[]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);

    assert_eq!(d.members(), before, "nothing changed");
    assert!(stats(&d, a).packets == 0);
    // Dispatchers of the other hooks load, with the root of their type.
    for hook in [
        ChainHook::Xdp,
        ChainHook::Tc,
        ChainHook::LwtIn,
        ChainHook::LwtOut,
    ] {
        let other = Dispatcher::new(hook).unwrap();
        assert_eq!(other.entry_info().prog_type, hook.program_type() as u32);
    }
}

#[test]
fn tc_verdicts_by_test_run() {
    require!();
    // BPF_PROG_TEST_RUN of the tc root on one frame: which verdict the dispatcher returns for
    // members' verdicts and continue sets (TC_ACT_UNSPEC is -1, bit 30 of a mask).
    let mut d = Dispatcher::new(ChainHook::Tc).unwrap();
    let frame = {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        f.extend_from_slice(&[
            0x45, 0, 0, 20, 0, 1, 0x40, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        f
    };
    let run = |d: &Dispatcher| {
        lwtun::decap::test_run(d.entry(), &frame, 1)
            .unwrap()
            .verdict
    };
    assert_eq!(run(&d), TC_ACT_UNSPEC, "no member: the hook's pass verdict");
    d.set_verdict(TC_ACT_SHOT).unwrap();
    assert_eq!(run(&d), TC_ACT_SHOT, "no member: the dispatcher's verdict");

    let a = d.attach(2, MEMBER, "member_tc", &[TC_ACT_UNSPEC]).unwrap();
    let b = d.attach(6, MEMBER, "member_tc", &[TC_ACT_OK]).unwrap();
    let obj = |id| d.member_object(id).unwrap();
    // a: UNSPEC goes on; b: UNSPEC is not in its set, so it is the verdict.
    assert_eq!(run(&d), TC_ACT_UNSPEC);
    assert_eq!((stats(&d, a).packets, stats(&d, b).packets), (1, 1));
    // b: OK goes on, to the end: the dispatcher's verdict.
    set_member_verdict(obj(b), Some(TC_ACT_OK)).unwrap();
    assert_eq!(run(&d), TC_ACT_SHOT);
    // a: 7 (TC_ACT_REDIRECT) is not in a's set: the run ends with it, b is not reached.
    set_member_verdict(obj(a), Some(7)).unwrap();
    assert_eq!(run(&d), 7);
    assert_eq!((stats(&d, a).packets, stats(&d, b).packets), (3, 2));
    // A verdict outside every mask's range (99) ends the run too.
    set_member_verdict(obj(a), Some(99)).unwrap();
    assert_eq!(run(&d), 99);
    set_member_verdict(obj(a), None).unwrap();
    d.set_verdict(TC_ACT_OK).unwrap();
    assert_eq!(run(&d), TC_ACT_OK);
    let s = stats(&d, b);
    assert_eq!(
        (s.packets, s.depth_sum),
        (3, 3 * 2),
        "b ran second, twice before and now"
    );
}
