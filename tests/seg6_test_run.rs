//! The End.BPF functions' logic on crafted SRv6 packets, through their `lwt_xmit` twins
//! (BPF_PROG_TEST_RUN has no lwt_seg6local support): the kernel's End step, the rule lookup by
//! the active segment, the tag written, the action chosen, and every malformed case counted.

mod common;
mod seg6_common;

use std::net::Ipv6Addr;

use lwtun::probe::Feature;
use lwtun::seg6::{
    CrossConnect, MissPolicy, Seg6Action, Seg6EndDt6, Seg6EndX, Seg6Event, Seg6Tag, Verdict,
};
use seg6_common::*;

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

#[test]
fn tag_does_the_end_step_and_writes_the_tag() {
    require!(Feature::Seg6Local);
    let (t, e, _) = sids();
    let mut tag = Seg6Tag::load().unwrap();
    tag.set_tag("fc00:3::/64".parse().unwrap(), 0x2a).unwrap();
    let pkt = srv6(&[t, e], 1, 0, IPV6, &inner_v6());
    let run = tag.test_run(&pkt).unwrap();
    assert_eq!(run.verdict, Verdict::Ok, "{run:?}");
    assert_eq!(run.decision.event, Seg6Event::Done);
    assert_eq!(run.decision.tag, Some(0x2a));
    assert_eq!(run.decision.segments_left, 0);
    assert_eq!(run.decision.action, None);
    let out = &run.packet;
    assert_eq!(out.len(), pkt.len());
    assert_eq!(out[43], 0, "segments left decremented");
    assert_eq!(
        &out[24..40],
        &e.octets(),
        "destination = the new active segment"
    );
    assert_eq!(&out[46..48], &[0, 0x2a], "tag written in network order");
    assert_eq!(&out[48..], &pkt[48..], "list and inner packet untouched");
    let ev = tag.events().unwrap();
    assert_eq!(ev.done.packets, 1);
    assert_eq!(ev.done.bytes, pkt.len() as u64);
    assert_eq!(ev.dropped(), 0);
}

/// A function at its capacity still takes a new value for a segment it has a rule for (older
/// kernels refuse to update a key of a full LPM trie: lwtun keeps one spare entry).
#[test]
fn a_full_function_replaces_rules_and_refuses_more() {
    require!(Feature::Seg6Local);
    let (t, e, _) = sids();
    let mut tag = Seg6Tag::builder().capacity(1).load().unwrap();
    tag.set_tag("fc00:3::/64".parse().unwrap(), 1).unwrap();
    let err = tag.set_tag("fc00:4::/64".parse().unwrap(), 2).unwrap_err();
    assert_eq!(err.kind(), lwtun::ErrorKind::InvalidInput, "{err}");
    tag.set_tag("fc00:3::/64".parse().unwrap(), 0x2b).unwrap();
    let run = tag
        .test_run(&srv6(&[t, e], 1, 0, IPV6, &inner_v6()))
        .unwrap();
    assert_eq!(run.decision.tag, Some(0x2b), "{run:?}");
    assert_eq!(tag.rules().len(), 1);
}

#[test]
fn misses_follow_the_policy() {
    require!(Feature::Seg6Local);
    let (t, e, _) = sids();
    let mut tag = Seg6Tag::load().unwrap();
    tag.set_tag("fc00:9::/64".parse().unwrap(), 1).unwrap();
    let pkt = srv6(&[t, e], 1, 0x77, IPV6, &inner_v6());
    let run = tag.test_run(&pkt).unwrap();
    assert_eq!(run.verdict, Verdict::Drop);
    assert_eq!(run.decision.event, Seg6Event::MissDropped);
    tag.set_miss_policy(MissPolicy::Pass).unwrap();
    let run = tag.test_run(&pkt).unwrap();
    assert_eq!(run.verdict, Verdict::Ok);
    assert_eq!(run.decision.event, Seg6Event::MissPassed);
    assert_eq!(
        &run.packet[46..48],
        &[0, 0x77],
        "untagged: the old tag stays"
    );
    // Removing the rule makes a matching packet miss too.
    tag.set_tag("fc00:3::/64".parse().unwrap(), 5).unwrap();
    assert_eq!(tag.test_run(&pkt).unwrap().decision.event, Seg6Event::Done);
    tag.remove_rule("fc00:3::/64".parse().unwrap()).unwrap();
    assert_eq!(
        tag.test_run(&pkt).unwrap().decision.event,
        Seg6Event::MissPassed
    );
    let ev = tag.events().unwrap();
    assert_eq!(
        (
            ev.missed_dropped.packets,
            ev.missed_passed.packets,
            ev.done.packets
        ),
        (1, 2, 1)
    );
    assert_eq!(
        tag.remove_rule("fc00:3::/64".parse().unwrap())
            .unwrap_err()
            .kind(),
        lwtun::ErrorKind::NotFound
    );
}

#[test]
fn end_x_chooses_the_next_hop_by_the_active_segment() {
    require!(Feature::Seg6Local);
    let (t, e, _) = sids();
    let mut x = Seg6EndX::load().unwrap();
    x.set_next_hop(
        "fc00:3::/64".parse().unwrap(),
        CrossConnect::to(a("fd77:2::2")).tag(7),
    )
    .unwrap();
    x.set_next_hop(
        "fc00:3::d/128".parse().unwrap(),
        CrossConnect::to(a("fd77:2::3")),
    )
    .unwrap();
    // The longest prefix wins: fc00:3::d goes to fd77:2::3, untagged.
    let run = x.test_run(&srv6(&[t, e], 1, 0, IPV6, &inner_v6())).unwrap();
    assert_eq!(run.verdict, Verdict::Redirect);
    assert_eq!(
        run.decision.action,
        Some(Seg6Action::EndX {
            next_hop: a("fd77:2::3")
        })
    );
    assert_eq!(run.decision.tag, None);
    // Another segment of fc00:3::/64 takes the /64's rule, tagged.
    let run = x
        .test_run(&srv6(&[t, a("fc00:3::77")], 1, 0, IPV6, &inner_v6()))
        .unwrap();
    assert_eq!(
        run.decision.action,
        Some(Seg6Action::EndX {
            next_hop: a("fd77:2::2")
        })
    );
    assert_eq!(run.decision.tag, Some(7));
    assert_eq!(&run.packet[46..48], &[0, 7]);
    // A 3-segment list: the next segment after the End step is the second.
    let run = x
        .test_run(&srv6(&[t, e, a("fc00:3::100")], 2, 0, IPV6, &inner_v6()))
        .unwrap();
    assert_eq!(run.decision.segments_left, 1);
    assert_eq!(&run.packet[24..40], &e.octets());
    assert_eq!(x.events().unwrap().done.packets, 3);
    // A next hop that is not a neighbour address is refused.
    let err = x
        .set_next_hop(
            "fc00:4::/64".parse().unwrap(),
            CrossConnect::to(a("ff02::1")),
        )
        .unwrap_err();
    assert_eq!(err.kind(), lwtun::ErrorKind::InvalidInput);
}

#[test]
fn end_dt6_decaps_inner_ipv6_into_the_table_and_refuses_inner_ipv4() {
    require!(Feature::Seg6Local);
    let (t, e, svc) = sids();
    let mut dt6 = Seg6EndDt6::load().unwrap();
    dt6.set_table("fc00:3::100/128".parse().unwrap(), 100)
        .unwrap();
    let pkt = srv6(&[t, e, svc], 1, 0, IPV6, &inner_v6());
    let run = dt6.test_run(&pkt).unwrap();
    assert_eq!(run.verdict, Verdict::Redirect);
    // 40 (IPv6) + 8 + 3 * 16 (SRH).
    assert_eq!(
        run.decision.action,
        Some(Seg6Action::EndDt6 {
            table: 100,
            inner_offset: 96
        })
    );
    assert_eq!(&run.packet[96..], &inner_v6()[..]);
    let v4 = srv6(&[t, e, svc], 1, 0, IPV4, &inner_v4());
    let run = dt6.test_run(&v4).unwrap();
    assert_eq!(run.verdict, Verdict::Drop);
    assert_eq!(run.decision.event, Seg6Event::InnerNotIpv6);
    assert_eq!(run.decision.action, None);
    let ev = dt6.events().unwrap();
    assert_eq!((ev.done.packets, ev.inner_not_ipv6.packets), (1, 1));
    assert_eq!(
        dt6.set_table("fc00:3::1/128".parse().unwrap(), 0)
            .unwrap_err()
            .kind(),
        lwtun::ErrorKind::InvalidInput
    );
}

/// Every function drops and counts what is not a valid SRv6 packet, the same way.
#[test]
fn malformed_packets_are_dropped_and_counted() {
    require!(Feature::Seg6Local);
    let (t, e, _) = sids();
    let good = srv6(&[t, e], 1, 0, IPV6, &inner_v6());
    let mut cases: Vec<(&str, u16, Vec<u8>, Seg6Event)> = Vec::new();
    cases.push((
        "no SRH (ICMPv6 right after the IPv6 header)",
        0x86dd,
        ipv6(a("fd00::1"), e, 58, &[128, 0, 0, 0, 0, 1, 0, 1]),
        Seg6Event::Malformed,
    ));
    let mut short = good.clone();
    short[41] = 2; // hdrlen 2 (16 bytes of list) for last_entry 1 (32 bytes)
    cases.push((
        "SRH too short for its list",
        0x86dd,
        short,
        Seg6Event::Malformed,
    ));
    let mut long = good.clone();
    long[41] = 40; // 328 bytes, past the packet
    cases.push((
        "SRH longer than the packet",
        0x86dd,
        long,
        Seg6Event::Malformed,
    ));
    let mut rh0 = good.clone();
    rh0[42] = 0; // routing header type 0
    cases.push(("routing header type 0", 0x86dd, rh0, Seg6Event::Malformed));
    let mut beyond = good.clone();
    beyond[43] = 5; // segments left past last_entry 1
    cases.push((
        "segments left beyond the list",
        0x86dd,
        beyond,
        Seg6Event::Malformed,
    ));
    cases.push((
        "truncated in the SRH",
        0x86dd,
        good[..44].to_vec(),
        Seg6Event::Malformed,
    ));
    cases.push(("not IPv6", 0x0800, inner_v4(), Seg6Event::Malformed));
    cases.push((
        "segments left 0",
        0x86dd,
        srv6(&[t, e], 0, 0, IPV6, &inner_v6()),
        Seg6Event::SegmentsLeftZero,
    ));
    let mut tag = Seg6Tag::builder()
        .miss_policy(MissPolicy::Pass)
        .load()
        .unwrap();
    tag.set_tag("::/0".parse().unwrap(), 1).unwrap();
    let mut x = Seg6EndX::load().unwrap();
    x.set_next_hop("::/0".parse().unwrap(), CrossConnect::to(a("fd77:2::2")))
        .unwrap();
    let mut dt6 = Seg6EndDt6::load().unwrap();
    dt6.set_table("::/0".parse().unwrap(), 100).unwrap();
    type Run = Box<dyn Fn(u16, &[u8]) -> lwtun::Result<lwtun::seg6::TestRun>>;
    let runs: Vec<(&str, Run)> = vec![
        ("tag", Box::new(move |p, b| tag.test_run_as(p, b))),
        ("End.X", Box::new(move |p, b| x.test_run_as(p, b))),
        ("End.DT6", Box::new(move |p, b| dt6.test_run_as(p, b))),
    ];
    for (name, run) in &runs {
        for (what, proto, pkt, expect) in &cases {
            let r = run(*proto, pkt).unwrap_or_else(|e| panic!("{name}, {what}: {e}"));
            assert_eq!(r.verdict, Verdict::Drop, "{name}, {what}: {r:?}");
            assert_eq!(r.decision.event, *expect, "{name}, {what}");
            assert_eq!(r.decision.action, None, "{name}, {what}");
            assert_eq!(r.decision.tag, None, "{name}, {what}");
        }
        // The valid packet goes through.
        let r = run(0x86dd, &good).unwrap();
        assert_ne!(r.verdict, Verdict::Drop, "{name}: {r:?}");
        assert_eq!(r.decision.event, Seg6Event::Done, "{name}");
    }
}

#[test]
fn counters_add_up_by_reason() {
    require!(Feature::Seg6Local);
    let (t, e, _) = sids();
    let mut x = Seg6EndX::load().unwrap();
    x.set_next_hop(
        "fc00:3::/64".parse().unwrap(),
        CrossConnect::to(a("fd77:2::2")),
    )
    .unwrap();
    let good = srv6(&[t, e], 1, 0, IPV6, &inner_v6());
    for _ in 0..3 {
        x.test_run(&good).unwrap();
    }
    x.test_run(&srv6(&[t, e], 0, 0, IPV6, &inner_v6())).unwrap();
    x.test_run(&good[..50]).unwrap();
    x.test_run(&srv6(&[t, a("fc00:9::1")], 1, 0, IPV6, &inner_v6()))
        .unwrap();
    let ev = x.events().unwrap();
    assert_eq!(ev.done.packets, 3);
    assert_eq!(ev.done.bytes, 3 * good.len() as u64);
    assert_eq!(ev.segments_left_zero.packets, 1);
    assert_eq!(ev.malformed.packets, 1);
    assert_eq!(ev.missed_dropped.packets, 1);
    assert_eq!(ev.dropped(), 3);
    assert_eq!(ev.helper_failed.packets, 0);
}

#[test]
fn pinned_functions_are_adopted_by_the_same_function_only() {
    require!(Feature::Seg6Local);
    let dir = common::PinDir::new("seg6");
    let (t, e, _) = sids();
    let mut first = Seg6EndX::builder()
        .capacity(16)
        .miss_policy(MissPolicy::Pass)
        .pin(&dir.0)
        .load()
        .unwrap();
    first
        .set_next_hop(
            "fc00:3::/64".parse().unwrap(),
            CrossConnect::to(a("fd77:2::2")).tag(9),
        )
        .unwrap();
    first.keep_pinned();
    drop(first);
    for name in [
        "rules",
        "config",
        "events",
        "decision",
        "seg6_end_x",
        "seg6_end_x_twin",
    ] {
        assert!(dir.0.join(name).exists(), "{name} not pinned");
    }
    // Another function refuses the folder and leaves it as it was.
    let err = Seg6Tag::builder().pin(&dir.0).load().unwrap_err();
    assert!(err.to_string().contains("folder of its own"), "{err}");
    let err = Seg6EndX::builder()
        .capacity(32)
        .pin(&dir.0)
        .load()
        .unwrap_err();
    assert_eq!(err.kind(), lwtun::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("hold 16 rules"), "{err}");
    assert_eq!(err.kind(), lwtun::ErrorKind::InvalidInput, "{err}");
    assert!(dir.0.join("rules").exists());
    // The same function adopts the rules, the capacity and the policy.
    let second = Seg6EndX::builder().pin(&dir.0).load().unwrap();
    assert_eq!(second.capacity(), 16);
    assert_eq!(second.miss_policy(), MissPolicy::Pass);
    let rules = second.rules();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0].0, "fc00:3::/64".parse().unwrap());
    assert_eq!(rules[0].1.next_hop, Some(a("fd77:2::2")));
    assert_eq!(rules[0].1.tag, Some(9));
    let run = second
        .test_run(&srv6(&[t, e], 1, 0, IPV6, &inner_v6()))
        .unwrap();
    assert_eq!(run.decision.tag, Some(9));
    assert_eq!(second.pin_folder(), Some(dir.0.as_path()));
    drop(second);
    assert!(!dir.0.join("rules").exists(), "pins removed when not kept");
}
