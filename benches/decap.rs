//! Decap cost per packet via BPF_PROG_TEST_RUN, against a pass-only tc program of the same object,
//! in one run.
//!
//! A decapsulating run changes its skb, and the kernel's `repeat` runs the program again on the
//! same (now inner) packet, so the decapsulating cases are timed one run per syscall (the kernel's
//! own clock around one program run, averaged over many calls); the baseline is timed the same
//! way. The paths that leave the packet alone (drops, not for us) are also timed with `repeat`.
//!
//! Run: `cargo bench --bench decap` (root: loads BPF).
#[path = "../tests/decap_common/mod.rs"]
mod decap_common;
/// The tests' shared packet builders, which `decap_common` sums its checksums with.
#[path = "../tests/common/packets.rs"]
#[allow(dead_code)]
pub mod packets;
mod common {
    pub use super::packets;
}

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::BorrowedFd;
use std::time::Duration;

use decap_common::*;
use lwtun::decap::{test_run, Decap, DecapPeer, TC_ACT_SHOT, TC_ACT_UNSPEC};

const CALLS: u32 = 20_000;
const REPEAT: u32 = 200_000;

fn per_call(prog: BorrowedFd<'_>, frame: &[u8], expect: i32) -> f64 {
    let mut total = Duration::ZERO;
    for _ in 0..CALLS {
        let r = test_run(prog, frame, 1).expect("test_run");
        assert_eq!(r.verdict, expect);
        total += r.duration;
    }
    total.as_nanos() as f64 / CALLS as f64
}

fn repeated(prog: BorrowedFd<'_>, frame: &[u8], expect: i32) -> f64 {
    let r = test_run(prog, frame, REPEAT).expect("test_run");
    assert_eq!(r.verdict, expect);
    r.duration.as_nanos() as f64
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED decap bench: needs root (CAP_BPF)");
        return;
    }
    let local4 = Ipv4Addr::new(192, 0, 2, 1);
    let peer4 = Ipv4Addr::new(192, 0, 2, 2);
    let local6: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let peer6: Ipv6Addr = "2001:db8::2".parse().unwrap();
    let mut d = Decap::load().unwrap();
    d.add_local(local4.into()).unwrap();
    d.add_local(local6.into()).unwrap();
    d.add_peer(DecapPeer::host(peer4.into())).unwrap();
    d.add_peer(DecapPeer::host(peer6.into())).unwrap();
    d.add_udp_port(5555).unwrap();

    // A 1400-byte inner UDP packet: a full-size tunnel packet.
    let payload = vec![0xa5u8; 1372];
    let i4 = inner_udp4(
        Ipv4Addr::new(10, 1, 0, 1),
        Ipv4Addr::new(10, 2, 0, 1),
        1,
        2,
        &payload,
    );
    let i6 = inner_udp6(
        "fd00:1::1".parse().unwrap(),
        "fd00:2::1".parse().unwrap(),
        1,
        2,
        &payload[..1352],
    );
    let decaps: Vec<(&str, Vec<u8>)> = vec![
        ("ipip 4in4", outer4(peer4, local4, IPPROTO_IPIP, &i4)),
        ("ipip 6in6", outer6(peer6, local6, IPPROTO_IPV6, &i6)),
        ("ipip 4in6", outer6(peer6, local6, IPPROTO_IPIP, &i4)),
        (
            "gre 4in4",
            outer4(peer4, local4, IPPROTO_GRE, &gre(0x0800, None, false, &i4)),
        ),
        (
            "gre 4in4 key",
            outer4(
                peer4,
                local4,
                IPPROTO_GRE,
                &gre(0x0800, Some(7), false, &i4),
            ),
        ),
        (
            "gre 4in4 key+csum",
            outer4(peer4, local4, IPPROTO_GRE, &gre(0x0800, Some(7), true, &i4)),
        ),
        (
            "udp 4in4",
            outer4(peer4, local4, IPPROTO_UDP, &udp(1, 5555, &i4)),
        ),
        (
            "udp 6in6",
            outer6(peer6, local6, IPPROTO_UDP, &udp(1, 5555, &i6)),
        ),
    ];
    let untouched: Vec<(&str, Vec<u8>, i32)> = vec![
        (
            "not for us (other dst)",
            outer4(peer4, Ipv4Addr::new(192, 0, 2, 50), IPPROTO_IPIP, &i4),
            TC_ACT_UNSPEC,
        ),
        (
            "unknown peer (drop)",
            outer4(Ipv4Addr::new(192, 0, 2, 99), local4, IPPROTO_IPIP, &i4),
            TC_ACT_SHOT,
        ),
    ];

    let base_call = per_call(d.baseline_program(), &decaps[0].1, TC_ACT_UNSPEC);
    let base_rep = repeated(d.baseline_program(), &decaps[0].1, TC_ACT_UNSPEC);
    println!(
        "decap cost per packet (BPF_PROG_TEST_RUN, {} byte inner packets)",
        i4.len()
    );
    println!(
        "{:<26} {:>10} {:>10} {:>14}",
        "case", "ns/packet", "x pass", "extra ns"
    );
    println!(
        "{:<26} {:>10.1} {:>10.2} {:>14}",
        "pass-only (per call)", base_call, 1.0, "-"
    );
    for (what, frame) in &decaps {
        let ns = per_call(d.program(), frame, TC_ACT_UNSPEC);
        println!(
            "{:<26} {:>10.1} {:>10.2} {:>14.1}",
            what,
            ns,
            ns / base_call,
            ns - base_call
        );
    }
    println!(
        "{:<26} {:>10.1} {:>10.2} {:>14}",
        "pass-only (repeat)", base_rep, 1.0, "-"
    );
    for (what, frame, verdict) in &untouched {
        let ns = repeated(d.program(), frame, *verdict);
        println!(
            "{:<26} {:>10.1} {:>10.2} {:>14.1}",
            what,
            ns,
            ns / base_rep,
            ns - base_rep
        );
    }
    let c = d.counters().unwrap();
    println!(
        "counters: ipip {} gre {} udp {} unknown_peer {} not_for_us {}",
        c.ipip.packets, c.gre.packets, c.udp.packets, c.unknown_peer.packets, c.not_for_us.packets
    );
}
