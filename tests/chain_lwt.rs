//! ProgChain at an LWT route's xmit hook, in namespaces with real pings: the order of the stages
//! and the tail calls shown by per-slot counters, verdicts that end the chain, a foreign program
//! (lwt_count) as the last stage, and stages inserted, replaced and removed under a steady flow
//! with no packet lost.
mod common;

use std::time::Duration;

use lwtun::chain::{ChainHook, CountingStage, ProgChain, StageStats};
use lwtun::netlink::Netlink;
use lwtun::program::{Hook, LwtCounter};
use lwtun::route::{InstalledRoute, LwtRoute};
use lwtun::ErrorKind;

/// Two hosts; in ns 0 the route to ns 1's address runs `chain`'s entry at xmit.
fn routed(chain: &ProgChain) -> (common::Line, InstalledRoute) {
    let net = common::two_hosts();
    let mut nl = Netlink::open_in(net.ns(0)).unwrap();
    let dev = nl.device("to1").unwrap();
    let route = LwtRoute::new(format!("{}/32", net.v4(1)).parse().unwrap())
        .device(&dev)
        .program(Hook::Xmit, chain.lwt_entry().unwrap())
        .install(&mut nl)
        .unwrap();
    (net, route)
}

fn ping(net: &common::Line, count: u32) -> common::Ping {
    common::ping(net.ns(0), net.v4(1).into(), count)
}

#[test]
fn stages_run_in_the_callers_order_and_verdicts_end_the_chain() {
    require!();
    let mut chain = ProgChain::new(ChainHook::LwtXmit).unwrap();
    let stages = CountingStage::load(&chain).unwrap();
    let (net, _route) = routed(&chain);

    // An empty chain passes packets.
    let p = ping(&net, 2);
    assert_eq!(p.received, 2, "empty chain: {}", p.output);

    let a = chain.push(stages.program()).unwrap();
    let b = chain.push(stages.program()).unwrap();
    let c = chain.push(stages.program()).unwrap();
    assert_eq!(
        chain.stages().iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![a, b, c]
    );
    let p = ping(&net, 4);
    assert_eq!(p.received, 4, "{}", p.output);
    for (id, pos) in [(a, 1.0), (b, 2.0), (c, 3.0)] {
        let s = stages.stats(id).unwrap();
        assert_eq!(s.packets, 4, "{id}: {s:?}");
        assert_eq!(
            s.bytes,
            4 * 84,
            "{id}: ICMP echo of 84 bytes from the IP header"
        );
        assert_eq!(s.position(), Some(pos), "{id} runs at position {pos}");
    }

    // A stage put first moves the others one place later.
    let d = chain.insert(0, stages.program()).unwrap();
    let before: Vec<StageStats> = [a, b, c]
        .iter()
        .map(|&i| stages.stats(i).unwrap())
        .collect();
    let p = ping(&net, 3);
    assert_eq!(p.received, 3, "{}", p.output);
    let s = stages.stats(d).unwrap();
    assert_eq!((s.packets, s.depth_sum), (3, 3), "new first stage: {s:?}");
    for (i, (&id, old)) in [a, b, c].iter().zip(&before).enumerate() {
        let s = stages.stats(id).unwrap();
        assert_eq!(s.packets - old.packets, 3, "{id}");
        assert_eq!(
            s.depth_sum - old.depth_sum,
            3 * (i as u64 + 2),
            "{id} now at position {}",
            i + 2
        );
    }

    // b drops (BPF_DROP = 2): c never runs, the pings fail.
    stages.set_verdict(b, Some(2)).unwrap();
    let c_before = stages.stats(c).unwrap().packets;
    let b_before = stages.stats(b).unwrap().packets;
    let p = ping(&net, 3);
    assert_eq!(p.received, 0, "b drops: {}", p.output);
    assert_eq!(stages.stats(b).unwrap().packets - b_before, 3);
    assert_eq!(
        stages.stats(c).unwrap().packets,
        c_before,
        "c is not reached"
    );
    stages.set_verdict(b, None).unwrap();

    // A program that does not know the chain (lwt_count's xmit counter) as the last stage.
    let counter = LwtCounter::load().unwrap();
    let e = chain.push(counter.program(Hook::Xmit)).unwrap();
    let p = ping(&net, 3);
    assert_eq!(p.received, 3, "{}", p.output);
    assert_eq!(counter.counter(Hook::Xmit).unwrap().packets, 3);
    assert_eq!(chain.stages().len(), 5);

    // Removing stages: the ones left still run, in order.
    chain.remove(d).unwrap();
    chain.remove(e).unwrap();
    let c_before = stages.stats(c).unwrap();
    let p = ping(&net, 2);
    assert_eq!(p.received, 2, "{}", p.output);
    let s = stages.stats(c).unwrap();
    assert_eq!(
        (
            s.packets - c_before.packets,
            s.depth_sum - c_before.depth_sum
        ),
        (2, 6)
    );
    assert_eq!(counter.counter(Hook::Xmit).unwrap().packets, 3, "e removed");

    // Moving a stage: c first, then a, then b.
    let c = chain.move_to(c, 0).unwrap();
    assert_eq!(
        chain.stages().iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![c, a, b]
    );
    let before: Vec<StageStats> = [c, a, b]
        .iter()
        .map(|&i| stages.stats(i).unwrap())
        .collect();
    let p = ping(&net, 2);
    assert_eq!(p.received, 2, "{}", p.output);
    for (pos, (&id, old)) in [c, a, b].iter().zip(&before).enumerate() {
        let s = stages.stats(id).unwrap();
        assert_eq!(
            (s.packets - old.packets, s.depth_sum - old.depth_sum),
            (2, 2 * (pos as u64 + 1)),
            "{id} at position {}",
            pos + 1
        );
    }

    // Refusals.
    let err = chain.remove(d).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = chain.insert(9, stages.program()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = chain.push(counter.program(Hook::In)).unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidInput,
        "lwt_in in an lwt_xmit chain: {err}"
    );
    let tc_chain = ProgChain::new(ChainHook::Tc).unwrap();
    let err = chain.push(tc_chain.entry()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

#[test]
fn stages_change_under_a_steady_flow_without_loss() {
    require!();
    let mut chain = ProgChain::new(ChainHook::LwtXmit).unwrap();
    let one = CountingStage::load(&chain).unwrap();
    let two = CountingStage::load(&chain).unwrap();
    let (net, _route) = routed(&chain);
    let first = chain.push(one.program()).unwrap();
    let last = chain.push(one.program()).unwrap();

    // 400 echo requests 5 ms apart (about 2 s) while the middle changes all the time.
    const COUNT: u32 = 400;
    let ns0 = net.ns(0);
    let target = net.v4(1).to_string();
    let flow = std::thread::scope(|s| {
        let flow = s.spawn(|| common::ping_flow(ns0, &target, COUNT));
        let mut changes = 0;
        let mut middle = None;
        while !flow.is_finished() {
            // insert, replace with the other family, remove: each an atomic step.
            let id = chain.insert(1, one.program()).unwrap();
            std::thread::sleep(Duration::from_millis(3));
            chain.replace(id, two.program()).unwrap();
            std::thread::sleep(Duration::from_millis(3));
            chain.remove(id).unwrap();
            middle = Some(id);
            changes += 3;
        }
        assert!(changes > 30, "only {changes} changes during the flow");
        let _ = middle;
        flow.join().unwrap()
    });
    let text = String::from_utf8_lossy(&flow.stdout).into_owned();
    assert!(
        text.contains(&format!("{COUNT} packets transmitted, {COUNT} received")),
        "no packet lost while stages changed:\n{text}"
    );
    // Every request ran the fixed first and last stage exactly once.
    assert_eq!(one.stats(first).unwrap().packets, u64::from(COUNT));
    assert_eq!(one.stats(last).unwrap().packets, u64::from(COUNT));
}
