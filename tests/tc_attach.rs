//! tc attach in real namespaces: tcx and clsact, ingress and egress, priority order, replace,
//! listing, RAII detach, checked with real pings and with `tc`/`bpftool` as peers.

mod common;

use lwtun::program::{Hook, LwtCounter};
use lwtun::tc::{
    attached, tcx_supported, TcAttach, TcCounter, TcDirection, TcMode, TcVerdict, TcxOrder,
};
use lwtun::ErrorKind;

fn listed(
    net: &common::Line,
    i: usize,
    dev: &str,
    dir: TcDirection,
) -> Vec<lwtun::tc::TcProgramInfo> {
    attached(&net.device(i, dev), dir).unwrap()
}

#[test]
fn clsact_ingress_counts_pings_lists_and_detaches() {
    require!();
    let net = common::two_hosts();
    let counter = TcCounter::load().unwrap();
    let dev = net.device(1, "to0");
    let a = net
        .ns(1)
        .run(|| {
            TcAttach::new(&dev, TcDirection::Ingress)
                .mode(TcMode::Clsact)
                .priority(7)
                .handle(3)
                .attach(counter.program())
        })
        .unwrap();
    assert_eq!(a.mode(), TcMode::Clsact);
    assert_eq!((a.priority(), a.handle()), (Some(7), Some(3)));

    let p = common::ping(net.ns(0), net.v4(1).into(), 3);
    assert_eq!(p.received, 3, "{}", p.output);
    let c = counter.counter().unwrap();
    assert!(c.packets >= 3, "ingress counter saw {c:?}");

    // lwtun's listing and tc's own view agree.
    let list = listed(&net, 1, "to0", TcDirection::Ingress);
    assert_eq!(list.len(), 1, "{list:?}");
    let f = list[0].filter.as_ref().unwrap();
    assert_eq!((f.priority, f.handle), (7, 3));
    assert!(f.direct_action);
    assert_eq!(f.name, "lwtun:count_tc");
    assert_eq!(list[0].program_id, a.program_id());
    assert_eq!(list[0].program_name.as_deref(), Some("count_tc"));
    let tc = common::run_in(
        net.ns(1),
        "tc",
        &["filter", "show", "dev", "to0", "ingress"],
    )
    .unwrap();
    assert!(
        tc.contains("lwtun:count_tc") && tc.contains("direct-action") && tc.contains("pref 7"),
        "{tc}"
    );
    assert!(listed(&net, 1, "to0", TcDirection::Egress).is_empty());

    a.detach().unwrap();
    assert!(listed(&net, 1, "to0", TcDirection::Ingress).is_empty());
    // The qdisc lwtun added went with its last filter.
    let q = common::run_in(net.ns(1), "tc", &["qdisc", "show", "dev", "to0"]).unwrap();
    assert!(!q.contains("clsact"), "{q}");
    let before = counter.counter().unwrap();
    let p = common::ping(net.ns(0), net.v4(1).into(), 2);
    assert_eq!(p.received, 2, "{}", p.output);
    assert_eq!(
        counter.counter().unwrap(),
        before,
        "detached program still counts"
    );
}

#[test]
fn clsact_priority_orders_filters_and_drop_on_panic_detaches() {
    require!();
    let net = common::two_hosts();
    let first = TcCounter::load().unwrap();
    let second = TcCounter::load().unwrap();
    let dev = net.device(1, "to0");
    let how = |p| {
        TcAttach::new(&dev, TcDirection::Egress)
            .mode(TcMode::Clsact)
            .priority(p)
    };
    let a1 = net.ns(1).run(|| how(1).attach(first.program())).unwrap();
    let a2 = net.ns(1).run(|| how(2).attach(second.program())).unwrap();

    // Both see the replies leaving ns 1 (the first hands on with TC_ACT_UNSPEC).
    let p = common::ping(net.ns(0), net.v4(1).into(), 3);
    assert_eq!(p.received, 3, "{}", p.output);
    assert!(first.counter().unwrap().packets >= 3);
    assert!(second.counter().unwrap().packets >= 3);

    // The first drops: no replies, and the second sees nothing more.
    first.set_verdict(TcVerdict::Drop).unwrap();
    let seen = second.counter().unwrap();
    let p = common::ping(net.ns(0), net.v4(1).into(), 3);
    assert_eq!(p.received, 0, "{}", p.output);
    assert_eq!(second.counter().unwrap(), seen);

    // The same priority and handle again is refused, unless replace is asked for.
    let e = net
        .ns(1)
        .run(|| how(1).attach(second.program()))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");

    // Dropping the handles (here by unwinding from a panic) detaches both.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _keep = (a1, a2);
        panic!("test panic while attached");
    }));
    assert!(r.is_err());
    assert!(listed(&net, 1, "to0", TcDirection::Egress).is_empty());
    let p = common::ping(net.ns(0), net.v4(1).into(), 2);
    assert_eq!(p.received, 2, "{}", p.output);
}

#[test]
fn clsact_replace_takes_over_and_replace_program_swaps() {
    require!();
    let net = common::two_hosts();
    let old = TcCounter::load().unwrap();
    let new = TcCounter::load().unwrap();
    let dev = net.device(1, "to0");
    let how = || {
        TcAttach::new(&dev, TcDirection::Ingress)
            .mode(TcMode::Clsact)
            .priority(5)
    };
    let a = net.ns(1).run(|| how().attach(old.program())).unwrap();
    let mut b = net
        .ns(1)
        .run(|| how().replace(true).attach(new.program()))
        .unwrap();
    let list = listed(&net, 1, "to0", TcDirection::Ingress);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].program_id, b.program_id());
    // `a` no longer owns the filter: dropping it leaves b's in place.
    drop(a);
    assert_eq!(listed(&net, 1, "to0", TcDirection::Ingress).len(), 1);
    common::ping(net.ns(0), net.v4(1).into(), 2);
    assert!(new.counter().unwrap().packets >= 2);

    // Swap back in place.
    let seen = new.counter().unwrap();
    b.replace_program(old.program()).unwrap();
    let before_old = old.counter().unwrap();
    common::ping(net.ns(0), net.v4(1).into(), 2);
    assert_eq!(new.counter().unwrap(), seen);
    assert!(old.counter().unwrap().packets >= before_old.packets + 2);
}

#[test]
fn tcx_ingress_and_egress_order_and_detach() {
    require!();
    if !tcx_supported() {
        // Past libtest's capture, so the skip is visible.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"SKIPPED tcx_ingress_and_egress_order_and_detach: this kernel has no tcx (Linux 6.6+)\n",
        );
        return;
    }
    let net = common::two_hosts();
    let ing = TcCounter::load().unwrap();
    let eg = TcCounter::load().unwrap();
    let front = TcCounter::load().unwrap();
    let dev = net.device(1, "to0");
    let (a_in, a_eg) = net
        .ns(1)
        .run(|| {
            let a = TcAttach::new(&dev, TcDirection::Ingress).attach(ing.program())?;
            let b = TcAttach::new(&dev, TcDirection::Egress)
                .mode(TcMode::Tcx)
                .attach(eg.program())?;
            Ok((a, b))
        })
        .unwrap();
    assert_eq!(a_in.mode(), TcMode::Tcx, "Auto picks tcx on this kernel");
    let p = common::ping(net.ns(0), net.v4(1).into(), 3);
    assert_eq!(p.received, 3, "{}", p.output);
    assert!(ing.counter().unwrap().packets >= 3);
    assert!(eg.counter().unwrap().packets >= 3);

    // A program put first runs before the one attached earlier; when it drops, the other sees nothing.
    let a_front = net
        .ns(1)
        .run(|| {
            TcAttach::new(&dev, TcDirection::Ingress)
                .order(TcxOrder::First)
                .attach(front.program())
        })
        .unwrap();
    let list = listed(&net, 1, "to0", TcDirection::Ingress);
    let ids: Vec<u32> = list.iter().map(|p| p.program_id).collect();
    assert_eq!(
        ids,
        vec![a_front.program_id(), a_in.program_id()],
        "{list:?}"
    );
    assert!(list
        .iter()
        .all(|p| p.mode == TcMode::Tcx && p.link_id.is_some()));
    front.set_verdict(TcVerdict::Drop).unwrap();
    let seen = ing.counter().unwrap();
    let p = common::ping(net.ns(0), net.v4(1).into(), 2);
    assert_eq!(p.received, 0, "{}", p.output);
    assert_eq!(ing.counter().unwrap(), seen);

    // bpftool, as a peer, sees the links and the programs they hold (bpftool 7.1 predates tcx,
    // so `bpftool net` does not list them; `link show` does, by program id).
    let bt = common::run_in(net.ns(1), "bpftool", &["link", "show"]).unwrap();
    for a in [&a_front, &a_in, &a_eg] {
        assert!(bt.contains(&format!("prog {}", a.program_id())), "{bt}");
    }

    drop(a_front);
    let p = common::ping(net.ns(0), net.v4(1).into(), 2);
    assert_eq!(p.received, 2, "{}", p.output);
    drop((a_in, a_eg));
    assert!(listed(&net, 1, "to0", TcDirection::Ingress).is_empty());
    assert!(listed(&net, 1, "to0", TcDirection::Egress).is_empty());
}

#[test]
fn refuses_wrong_programs_and_settings() {
    require!();
    let net = common::two_hosts();
    let dev = net.device(1, "to0");
    let lwt = LwtCounter::load().unwrap();
    let e = net
        .ns(1)
        .run(|| TcAttach::new(&dev, TcDirection::Ingress).attach(lwt.program(Hook::Xmit)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("not sched_cls"), "{e}");

    let counter = TcCounter::load().unwrap();
    let e = net
        .ns(1)
        .run(|| {
            TcAttach::new(&dev, TcDirection::Ingress)
                .mode(TcMode::Tcx)
                .priority(3)
                .attach(counter.program())
        })
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let e = net
        .ns(1)
        .run(|| {
            TcAttach::new(&dev, TcDirection::Ingress)
                .priority(0)
                .attach(counter.program())
        })
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let e = net
        .ns(1)
        .run(|| {
            TcAttach::new(&dev, TcDirection::Ingress)
                .handle(0)
                .attach(counter.program())
        })
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    // A device deleted after it was looked up.
    common::ip(
        net.ns(1),
        &[
            "link", "add", "gone0", "type", "veth", "peer", "name", "gone1",
        ],
    );
    let gone = net.device(1, "gone0");
    common::ip(net.ns(1), &["link", "del", "gone0"]);
    let e = TcAttach::new(&gone, TcDirection::Ingress)
        .mode(TcMode::Clsact)
        .attach(counter.program())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // Nothing was left behind by the failures.
    assert!(listed(&net, 1, "to0", TcDirection::Ingress).is_empty());
}

#[test]
fn persisted_attachments_outlive_their_handles() {
    require!();
    let net = common::two_hosts();
    let counter = TcCounter::load().unwrap();
    let dev = net.device(1, "to0");
    // clsact: the filter stays, and remove_leftovers finds it by its name.
    let a = net
        .ns(1)
        .run(|| {
            TcAttach::new(&dev, TcDirection::Ingress)
                .mode(TcMode::Clsact)
                .attach(counter.program())
        })
        .unwrap();
    a.persist(None).unwrap();
    assert_eq!(listed(&net, 1, "to0", TcDirection::Ingress).len(), 1);
    assert_eq!(
        net.ns(1).run(|| lwtun::tc::remove_leftovers(&dev)).unwrap(),
        1
    );
    assert!(listed(&net, 1, "to0", TcDirection::Ingress).is_empty());

    // Both kinds of pin in a folder of this test's own, removed with everything in it.
    let pins = common::PinDir::new("tc");
    std::fs::create_dir(&pins.0).unwrap();
    // clsact with a pin: a record of the filter, which detach_persisted deletes exactly.
    let record = pins.0.join("clsact");
    let clsact_at = |priority| {
        net.ns(1)
            .run(|| {
                TcAttach::new(&dev, TcDirection::Ingress)
                    .mode(TcMode::Clsact)
                    .priority(priority)
                    .attach(counter.program())
            })
            .unwrap()
    };
    let other = clsact_at(7);
    let a = clsact_at(9);
    let (handle, id) = (a.handle().unwrap(), a.program_id());
    a.persist(Some(&record)).unwrap();
    let target = std::fs::read_link(&record).unwrap();
    assert_eq!(
        target.to_str().unwrap(),
        format!("tc-clsact:ingress:prio=9:handle={handle}:prog={id}")
    );
    let before = counter.counter().unwrap();
    common::ping(net.ns(0), net.v4(1).into(), 2);
    assert!(
        counter.counter().unwrap().packets >= before.packets + 4,
        "both filters count"
    );
    lwtun::tc::detach_persisted(&dev, &record).unwrap();
    assert!(
        std::fs::symlink_metadata(&record).is_err(),
        "the record is removed"
    );
    let left = listed(&net, 1, "to0", TcDirection::Ingress);
    assert_eq!(left.len(), 1, "only the recorded filter goes: {left:?}");
    assert_eq!(left[0].filter.as_ref().unwrap().priority, 7);
    assert_eq!(
        lwtun::tc::detach_persisted(&dev, &record)
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    drop(other);
    assert!(listed(&net, 1, "to0", TcDirection::Ingress).is_empty());

    if !tcx_supported() {
        return;
    }
    // tcx: persisting needs a pin; the program runs until the pin is removed.
    let pin = pins.0.join("tcx");
    let a = net
        .ns(1)
        .run(|| {
            TcAttach::new(&dev, TcDirection::Ingress)
                .mode(TcMode::Tcx)
                .attach(counter.program())
        })
        .unwrap();
    let a2 = net
        .ns(1)
        .run(|| {
            TcAttach::new(&dev, TcDirection::Egress)
                .mode(TcMode::Tcx)
                .attach(counter.program())
        })
        .unwrap();
    assert_eq!(
        a2.persist(None).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    a.persist(Some(&pin)).unwrap();
    let before = counter.counter().unwrap();
    common::ping(net.ns(0), net.v4(1).into(), 2);
    assert!(counter.counter().unwrap().packets >= before.packets + 2);
    assert_eq!(listed(&net, 1, "to0", TcDirection::Ingress).len(), 1);
    lwtun::tc::detach_persisted(&dev, &pin).unwrap();
    // The link goes once nothing holds it (the kernel frees it after an RCU grace period).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while !listed(&net, 1, "to0", TcDirection::Ingress).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "tcx link outlived its pin"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn tcx_runs_before_clsact_and_listing_shows_that_order() {
    require!();
    if !tcx_supported() {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"SKIPPED tcx_runs_before_clsact_and_listing_shows_that_order: no tcx (Linux 6.6+)\n",
        );
        return;
    }
    let net = common::two_hosts();
    let first = TcCounter::load().unwrap();
    let later = TcCounter::load().unwrap();
    let dev = net.device(1, "to0");
    let (cls, tcx) = net
        .ns(1)
        .run(|| {
            let c = TcAttach::new(&dev, TcDirection::Ingress)
                .mode(TcMode::Clsact)
                .attach(later.program())?;
            let t = TcAttach::new(&dev, TcDirection::Ingress)
                .mode(TcMode::Tcx)
                .attach(first.program())?;
            Ok((c, t))
        })
        .unwrap();
    let list = listed(&net, 1, "to0", TcDirection::Ingress);
    let order: Vec<(TcMode, u32)> = list.iter().map(|p| (p.mode, p.program_id)).collect();
    assert_eq!(
        order,
        vec![
            (TcMode::Tcx, tcx.program_id()),
            (TcMode::Clsact, cls.program_id())
        ]
    );
    // Both run (tcx hands on with TCX_NEXT) ...
    assert_eq!(common::ping(net.ns(0), net.v4(1).into(), 2).received, 2);
    assert!(later.counter().unwrap().packets >= 2);
    // ... and a tcx drop keeps the packet from the clsact filter.
    first.set_verdict(TcVerdict::Drop).unwrap();
    let seen = later.counter().unwrap();
    assert_eq!(common::ping(net.ns(0), net.v4(1).into(), 2).received, 0);
    assert_eq!(later.counter().unwrap(), seen);
}
