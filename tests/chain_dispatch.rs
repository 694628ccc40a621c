//! Dispatcher (freplace members) at an LWT route's xmit hook, in namespaces with real pings:
//! members run in slot order, a verdict outside a member's continue set ends the run, members
//! attached and detached under a steady flow lose no packet, and refusals.
mod common;

use std::os::fd::AsFd;
use std::time::Duration;

use lwtun::chain::{member_counter, set_member_verdict, ChainHook, Dispatcher};
use lwtun::netlink::Netlink;
use lwtun::program::Hook;
use lwtun::route::{InstalledRoute, LwtRoute};
use lwtun::skel::dispatch_member::OBJECT as MEMBER;
use lwtun::ErrorKind;

const BPF_OK: i32 = 0;
const BPF_DROP: i32 = 2;

fn routed(d: &Dispatcher) -> (common::Line, InstalledRoute) {
    let net = common::two_hosts();
    let mut nl = Netlink::open_in(net.ns(0).fd().unwrap().as_fd()).unwrap();
    let dev = nl.link_by_name("to1").unwrap().index;
    let route = LwtRoute::new(format!("{}/32", net.v4(1)).parse().unwrap())
        .device(dev)
        .program(Hook::Xmit, &d.lwt_entry().unwrap())
        .install(&mut nl)
        .unwrap();
    (net, route)
}

/// Whether this kernel loads freplace programs; prints the skip reason when it does not.
fn freplace_supported(test: &str) -> bool {
    let mut d = Dispatcher::new(ChainHook::LwtXmit).unwrap();
    match d.attach(0, MEMBER, "member_lwt_xmit", &[BPF_OK]) {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("SKIPPED {test}: {e}\n").as_bytes(),
            );
            false
        }
        Err(e) => panic!("probing freplace: {e}"),
    }
}

fn count(d: &Dispatcher, id: lwtun::chain::MemberId) -> u64 {
    member_counter(d.member_object(id).unwrap())
        .unwrap()
        .packets
}

#[test]
fn members_run_in_slot_order_and_verdicts_decide() {
    if !common::privileged("members_run_in_slot_order_and_verdicts_decide")
        || !freplace_supported("members_run_in_slot_order_and_verdicts_decide")
    {
        return;
    }
    let mut d = Dispatcher::new(ChainHook::LwtXmit).unwrap();
    let (net, _route) = routed(&d);
    let ping = |n| common::ping(net.ns(0), net.v4(1).into(), n);
    assert_eq!(ping(2).received, 2, "an empty dispatcher passes");

    let a = d.attach(0, MEMBER, "member_lwt_xmit", &[BPF_OK]).unwrap();
    let b = d.attach(3, MEMBER, "member_lwt_xmit", &[BPF_OK]).unwrap();
    let c = d.attach(7, MEMBER, "member_lwt_xmit", &[BPF_OK]).unwrap();
    assert_eq!(
        d.members()
            .iter()
            .map(|(id, _)| id.slot())
            .collect::<Vec<_>>(),
        vec![0, 3, 7]
    );
    let p = ping(3);
    assert_eq!(p.received, 3, "{}", p.output);
    assert_eq!((count(&d, a), count(&d, b), count(&d, c)), (3, 3, 3));

    // b drops: c never runs; a still does (it comes first).
    set_member_verdict(d.member_object(b).unwrap(), Some(BPF_DROP)).unwrap();
    let p = ping(2);
    assert_eq!(p.received, 0, "{}", p.output);
    assert_eq!((count(&d, a), count(&d, b), count(&d, c)), (5, 5, 3));

    // With BPF_DROP in b's continue set, c runs and decides: it passes, so the pings work... but
    // the root returns c's BPF_OK only if c goes on, and then the dispatcher's verdict (BPF_OK).
    d.detach(b).unwrap();
    let b = d
        .attach(3, MEMBER, "member_lwt_xmit", &[BPF_OK, BPF_DROP])
        .unwrap();
    set_member_verdict(d.member_object(b).unwrap(), Some(BPF_DROP)).unwrap();
    let p = ping(2);
    assert_eq!(p.received, 2, "{}", p.output);
    assert_eq!((count(&d, b), count(&d, c)), (2, 5));

    // a's own verdict: OK but not in its continue set ends the run after a.
    d.detach(a).unwrap();
    let a = d.attach(0, MEMBER, "member_lwt_xmit", &[]).unwrap();
    let p = ping(2);
    assert_eq!(p.received, 2, "{}", p.output);
    assert_eq!((count(&d, a), count(&d, b), count(&d, c)), (2, 2, 5));

    // The dispatcher's own verdict when everyone goes on.
    d.detach(a).unwrap();
    d.set_verdict(BPF_DROP).unwrap();
    assert_eq!(ping(1).received, 0);
    d.set_verdict(BPF_OK).unwrap();
    assert_eq!(ping(1).received, 1);

    // Refusals.
    let e = d.attach(3, MEMBER, "member_lwt_xmit", &[0]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "slot taken: {e}");
    let e = d.attach(8, MEMBER, "member_lwt_xmit", &[0]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let e = d.attach(1, MEMBER, "member_tc", &[0]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "a tc program: {e}");
    let e = d.attach(1, MEMBER, "no_such", &[0]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = d.attach(1, MEMBER, "member_lwt_xmit", &[-5]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert_eq!(d.detach(a).unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn members_come_and_go_under_a_steady_flow_without_loss() {
    if !common::privileged("members_come_and_go_under_a_steady_flow_without_loss")
        || !freplace_supported("members_come_and_go_under_a_steady_flow_without_loss")
    {
        return;
    }
    let mut d = Dispatcher::new(ChainHook::LwtXmit).unwrap();
    let (net, _route) = routed(&d);
    let first = d.attach(0, MEMBER, "member_lwt_xmit", &[BPF_OK]).unwrap();
    let last = d.attach(7, MEMBER, "member_lwt_xmit", &[BPF_OK]).unwrap();

    const COUNT: u32 = 400;
    let ns0 = net.ns(0);
    let target = net.v4(1).to_string();
    let (out, changes) = std::thread::scope(|s| {
        let flow = s.spawn(|| {
            ns0.command("ping")
                .args([
                    "-n",
                    "-q",
                    "-c",
                    &COUNT.to_string(),
                    "-i",
                    "0.005",
                    "-W",
                    "1",
                ])
                .arg(&target)
                .output()
                .unwrap()
        });
        let mut changes = 0u32;
        while !flow.is_finished() {
            let slot = 1 + changes % 6;
            let id = d
                .attach(slot, MEMBER, "member_lwt_xmit", &[BPF_OK])
                .unwrap();
            std::thread::sleep(Duration::from_millis(3));
            d.detach(id).unwrap();
            changes += 1;
        }
        (flow.join().unwrap(), changes)
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(changes >= 10, "only {changes} attach/detach rounds");
    assert!(
        text.contains(&format!("{COUNT} packets transmitted, {COUNT} received")),
        "no packet lost over {changes} attach/detach rounds:\n{text}"
    );
    assert_eq!(count(&d, first), u64::from(COUNT));
    assert_eq!(count(&d, last), u64::from(COUNT));
}

#[test]
fn the_root_runs_at_the_hook_with_empty_stubs_and_its_verdict() {
    if !common::privileged("the_root_runs_at_the_hook_with_empty_stubs_and_its_verdict") {
        return;
    }
    // Runs where freplace does not: the root, its stubs and its config, at a real route.
    let mut d = Dispatcher::new(ChainHook::LwtXmit).unwrap();
    assert!(d.members().is_empty());
    let (net, _route) = routed(&d);
    let ping = |n| common::ping(net.ns(0), net.v4(1).into(), n);
    assert_eq!(ping(2).received, 2, "eight empty stubs go on; BPF_OK");
    d.set_verdict(BPF_DROP).unwrap();
    assert_eq!(
        ping(2).received,
        0,
        "the dispatcher's verdict after the stubs"
    );
    d.set_verdict(BPF_OK).unwrap();
    assert_eq!(ping(1).received, 1);
    for hook in [
        ChainHook::Xdp,
        ChainHook::Tc,
        ChainHook::LwtIn,
        ChainHook::LwtOut,
    ] {
        let other = Dispatcher::new(hook).unwrap();
        assert_eq!(
            lwtun::program::program_info(other.entry())
                .unwrap()
                .prog_type,
            hook.program_type() as u32
        );
    }
}
