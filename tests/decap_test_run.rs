//! The decap program under BPF_PROG_TEST_RUN: every encapsulation lwtun sends is stripped (the
//! output bytes are the inner packet behind the same Ethernet addresses), and malformed, foreign
//! or refused inputs get their verdict and their counter.
mod common;
mod decap_common;

use std::net::{Ipv4Addr, Ipv6Addr};

use decap_common::*;
use lwtun::decap::{Decap, DecapCounters, DecapPeer, TC_ACT_SHOT, TC_ACT_UNSPEC};

const LOCAL4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PEER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const KEYED4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
const STRANGER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
const SUBNET_PEER4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);
const OTHER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const PORT: u16 = 5555;
const KEY: u32 = 0x0a0b_0c0d;

fn local6() -> Ipv6Addr {
    "2001:db8::1".parse().unwrap()
}
fn peer6() -> Ipv6Addr {
    "2001:db8::2".parse().unwrap()
}
fn stranger6() -> Ipv6Addr {
    "2001:db8::99".parse().unwrap()
}

fn inner4() -> Vec<u8> {
    inner_udp4(
        Ipv4Addr::new(10, 1, 0, 1),
        Ipv4Addr::new(10, 2, 0, 1),
        4000,
        9000,
        b"inner v4 payload",
    )
}

fn inner6() -> Vec<u8> {
    inner_udp6(
        "fd00:1::1".parse().unwrap(),
        "fd00:2::1".parse().unwrap(),
        4000,
        9000,
        b"inner v6 payload",
    )
}

fn decap() -> Decap {
    let mut d = Decap::load().expect("load decap");
    d.add_local(LOCAL4.into()).unwrap();
    d.add_local(local6().into()).unwrap();
    d.add_peer(DecapPeer::host(PEER4.into())).unwrap();
    d.add_peer(DecapPeer::host(KEYED4.into()).gre_key(KEY))
        .unwrap();
    d.add_peer(DecapPeer::new("198.51.100.0/24".parse().unwrap()))
        .unwrap();
    d.add_peer(DecapPeer::host(peer6().into())).unwrap();
    d.add_udp_port(PORT).unwrap();
    d
}

const NAMES: [&str; 12] = [
    "ipip",
    "gre",
    "udp",
    "unknown_peer",
    "malformed",
    "not_for_us",
    "fragment",
    "bad_checksum",
    "key_mismatch",
    "unsupported",
    "error",
    "ecn",
];

fn packets(c: &DecapCounters) -> [u64; 12] {
    [
        c.ipip.packets,
        c.gre.packets,
        c.udp.packets,
        c.unknown_peer.packets,
        c.malformed.packets,
        c.not_for_us.packets,
        c.fragment.packets,
        c.bad_checksum.packets,
        c.key_mismatch.packets,
        c.unsupported.packets,
        c.error.packets,
        c.ecn.packets,
    ]
}

/// Whether `frame` carries an inner packet of the other family (IPv4 in IPv6, IPv6 in IPv4),
/// by IP-in-IP protocol, GRE protocol type or the version nibble after a UDP header.
fn cross_family(frame: &[u8]) -> bool {
    let at = |i: usize| frame.get(i).copied().unwrap_or(0);
    let outer_v6 = at(12) == 0x86 && at(13) == 0xdd;
    let (mut proto, mut l4) = if outer_v6 {
        (at(14 + 6), 14 + 40)
    } else {
        (at(14 + 9), 14 + usize::from(at(14) & 0xf) * 4)
    };
    if outer_v6 && proto == 60 {
        // a Destination Options header (the tunnel encapsulation limit) before the tunnel
        (proto, l4) = (at(l4), l4 + (usize::from(at(l4 + 1)) + 1) * 8);
    }
    let inner_v6 = match proto {
        4 => false,
        41 => true,
        47 => match (at(l4 + 2), at(l4 + 3)) {
            (0x86, 0xdd) => true,
            (0x08, 0x00) => false,
            _ => return false,
        },
        17 => at(l4 + 8) >> 4 == 6,
        _ => return false,
    };
    inner_v6 != outer_v6
}

/// Runs `frame`, checks the verdict and that exactly counter `counter` moved by one (and by the
/// frame's length in bytes); returns the output packet.
///
/// Where the kernel cannot change a packet's family while stripping its outer header (before
/// 6.3: [`lwtun::probe::decap_l3`]), a cross-family packet the test expects decapsulated must
/// instead be dropped and counted as an error, and the output is empty.
fn run(d: &Decap, what: &str, frame: &[u8], verdict: i32, counter: &str) -> Vec<u8> {
    let fallback = verdict == TC_ACT_UNSPEC
        && matches!(counter, "ipip" | "gre" | "udp")
        && cross_family(frame)
        && lwtun::probe::decap_l3().is_err();
    let (verdict, counter) = if fallback {
        (TC_ACT_SHOT, "error")
    } else {
        (verdict, counter)
    };
    let before = d.counters().unwrap();
    let out = d
        .test_run(frame)
        .unwrap_or_else(|e| panic!("{what}: test_run: {e}"));
    let after = d.counters().unwrap();
    assert_eq!(out.verdict, verdict, "{what}: verdict");
    let (b, a) = (packets(&before), packets(&after));
    let moved: Vec<&str> = (0..12)
        .filter(|i| a[*i] != b[*i])
        .map(|i| NAMES[i])
        .collect();
    assert_eq!(
        moved,
        vec![counter],
        "{what}: counters that moved ({b:?} -> {a:?})"
    );
    let i = NAMES.iter().position(|n| *n == counter).unwrap();
    assert_eq!(a[i] - b[i], 1, "{what}: {counter} packets");
    if fallback {
        return Vec::new();
    }
    out.packet
}

fn expect_inner(what: &str, out: &[u8], inner: &[u8], ethertype: u16) {
    if out.is_empty() {
        return; // dropped where the kernel cannot change the family (see `run`)
    }
    assert_eq!(&out[0..6], &DST_MAC, "{what}: destination MAC kept");
    assert_eq!(&out[6..12], &SRC_MAC, "{what}: source MAC kept");
    assert_eq!(
        u16::from_be_bytes([out[12], out[13]]),
        ethertype,
        "{what}: EtherType of the inner family"
    );
    assert_eq!(&out[14..], inner, "{what}: the inner packet, byte for byte");
}

#[test]
fn decapsulates_every_kind_lwtun_sends() {
    require!();
    let d = decap();
    let (i4, i6) = (inner4(), inner6());
    // (what, frame, inner packet expected, inner EtherType, counter)
    type Case<'a> = (&'a str, Vec<u8>, &'a [u8], u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "ipip 4in4",
            outer4(PEER4, LOCAL4, IPPROTO_IPIP, &i4),
            &i4,
            0x0800,
            "ipip",
        ),
        (
            "ipip 6in4",
            outer4(PEER4, LOCAL4, IPPROTO_IPV6, &i6),
            &i6,
            0x86dd,
            "ipip",
        ),
        (
            "ipip 4in6",
            outer6(peer6(), local6(), IPPROTO_IPIP, &i4),
            &i4,
            0x0800,
            "ipip",
        ),
        (
            "ipip 6in6",
            outer6(peer6(), local6(), IPPROTO_IPV6, &i6),
            &i6,
            0x86dd,
            "ipip",
        ),
        (
            "ipip from a peer subnet",
            outer4(SUBNET_PEER4, LOCAL4, IPPROTO_IPIP, &i4),
            &i4,
            0x0800,
            "ipip",
        ),
        (
            "gre 4in4",
            outer4(PEER4, LOCAL4, IPPROTO_GRE, &gre(0x0800, None, false, &i4)),
            &i4,
            0x0800,
            "gre",
        ),
        (
            "gre 6in4 key + checksum",
            outer4(PEER4, LOCAL4, IPPROTO_GRE, &gre(0x86dd, Some(9), true, &i6)),
            &i6,
            0x86dd,
            "gre",
        ),
        (
            "gre 4in6 checksum",
            outer6(
                peer6(),
                local6(),
                IPPROTO_GRE,
                &gre(0x0800, None, true, &i4),
            ),
            &i4,
            0x0800,
            "gre",
        ),
        (
            "gre 6in6 key",
            outer6(
                peer6(),
                local6(),
                IPPROTO_GRE,
                &gre(0x86dd, Some(1), false, &i6),
            ),
            &i6,
            0x86dd,
            "gre",
        ),
        (
            "gre with the key the peer requires",
            outer4(
                KEYED4,
                LOCAL4,
                IPPROTO_GRE,
                &gre(0x0800, Some(KEY), true, &i4),
            ),
            &i4,
            0x0800,
            "gre",
        ),
        (
            // what the kernel's ip6tnl sends by default: a Destination Options header with
            // the Tunnel Encapsulation Limit (4) and PadN
            "ipip 6in6 after a tunnel encapsulation limit",
            outer6(
                peer6(),
                local6(),
                60,
                &[&[IPPROTO_IPV6, 0, 4, 1, 4, 1, 1, 0][..], &i6].concat(),
            ),
            &i6,
            0x86dd,
            "ipip",
        ),
        (
            "gre 4in6 after a tunnel encapsulation limit (Pad1s)",
            outer6(
                peer6(),
                local6(),
                60,
                &[
                    &[IPPROTO_GRE, 0, 4, 1, 0, 0, 0, 0][..],
                    &gre(0x0800, None, false, &i4),
                ]
                .concat(),
            ),
            &i4,
            0x0800,
            "gre",
        ),
        (
            "udp 4in4",
            outer4(PEER4, LOCAL4, IPPROTO_UDP, &udp(40000, PORT, &i4)),
            &i4,
            0x0800,
            "udp",
        ),
        (
            "udp 6in4",
            outer4(PEER4, LOCAL4, IPPROTO_UDP, &udp(40001, PORT, &i6)),
            &i6,
            0x86dd,
            "udp",
        ),
        (
            "udp 4in6",
            outer6(peer6(), local6(), IPPROTO_UDP, &udp(40002, PORT, &i4)),
            &i4,
            0x0800,
            "udp",
        ),
        (
            "udp 6in6",
            outer6(peer6(), local6(), IPPROTO_UDP, &udp(40003, PORT, &i6)),
            &i6,
            0x86dd,
            "udp",
        ),
    ];
    for (what, frame, inner, ethertype, counter) in &cases {
        let out = run(&d, what, frame, TC_ACT_UNSPEC, counter);
        expect_inner(what, &out, inner, *ethertype);
    }

    // An outer IPv4 header with options (NOPs + end) is stripped whole.
    let mut p = ipv4_header(PEER4, LOCAL4, IPPROTO_IPIP, i4.len(), &[1, 1, 1, 0]);
    p.extend_from_slice(&i4);
    let out = run(
        &d,
        "ipip with outer options",
        &eth(0x0800, &p),
        TC_ACT_UNSPEC,
        "ipip",
    );
    expect_inner("ipip with outer options", &out, &i4, 0x0800);

    // Ethernet padding after a short outer packet stays behind the inner packet; the stack
    // trims it by the inner length.
    let small = ipv4_header(
        Ipv4Addr::new(10, 1, 0, 1),
        Ipv4Addr::new(10, 2, 0, 1),
        253,
        0,
        &[],
    );
    let mut frame = outer4(PEER4, LOCAL4, IPPROTO_IPIP, &small);
    frame.resize(60, 0);
    let out = run(&d, "padded minimum frame", &frame, TC_ACT_UNSPEC, "ipip");
    assert_eq!(&out[14..34], &small[..], "inner header at the front");

    // Cross-family cases the kernel cannot decapsulate were dropped as errors (see `run`).
    let kept = |frame: &[u8]| !cross_family(frame) || lwtun::probe::decap_l3().is_ok();
    let dropped = cases.iter().filter(|c| !kept(&c.1)).count() as u64;
    let c = d.counters().unwrap();
    assert_eq!(c.decapsulated(), cases.len() as u64 + 2 - dropped);
    assert_eq!(c.dropped(), dropped);
    let ipip_bytes: u64 = cases
        .iter()
        .filter(|c| c.4 == "ipip" && kept(&c.1))
        .map(|c| c.1.len() as u64)
        .sum::<u64>()
        + (14 + p.len()) as u64
        + 60;
    assert_eq!(c.ipip.bytes, ipip_bytes, "bytes count whole outer frames");
}

#[test]
fn malformed_foreign_and_refused_inputs() {
    require!();
    let d = decap();
    let (i4, i6) = (inner4(), inner6());
    let mut cases: Vec<(&str, Vec<u8>, i32, &str)> = Vec::new();
    let mut add = |what: &'static str, frame: Vec<u8>, verdict: i32, counter: &'static str| {
        cases.push((what, frame, verdict, counter));
    };

    // Not ours: passed untouched.
    add("ARP", eth(0x0806, &[0u8; 28]), TC_ACT_UNSPEC, "not_for_us");
    add(
        "VLAN-tagged frame",
        eth(0x8100, &[0, 5, 0x08, 0x00]),
        TC_ACT_UNSPEC,
        "not_for_us",
    );
    add(
        "ipip to another address",
        outer4(PEER4, OTHER4, IPPROTO_IPIP, &i4),
        TC_ACT_UNSPEC,
        "not_for_us",
    );
    add(
        "ICMP to the endpoint",
        outer4(PEER4, LOCAL4, IPPROTO_ICMP, &[8, 0, 0xf7, 0xff, 0, 0, 0, 0]),
        TC_ACT_UNSPEC,
        "not_for_us",
    );
    add(
        "UDP to the endpoint on another port",
        outer4(PEER4, LOCAL4, IPPROTO_UDP, &udp(40000, 53, &i4)),
        TC_ACT_UNSPEC,
        "not_for_us",
    );
    add(
        "IPv6 to another address",
        outer6(peer6(), "2001:db8::77".parse().unwrap(), IPPROTO_IPV6, &i6),
        TC_ACT_UNSPEC,
        "not_for_us",
    );
    {
        // a later UDP fragment: the port cannot be seen, it may be anyone's
        let mut f = outer4(PEER4, LOCAL4, IPPROTO_UDP, &[0u8; 64]);
        f[14 + 6..14 + 8].copy_from_slice(&100u16.to_be_bytes());
        fix_ipv4_checksum(&mut f[14..]);
        add("later UDP fragment", f, TC_ACT_UNSPEC, "not_for_us");
    }

    // Broken outer headers: dropped.
    // (BPF_PROG_TEST_RUN itself refuses frames shorter than an IPv4 or IPv6 header, so the
    // truncations are of options and extension headers.)
    {
        let mut h = ipv4_header(PEER4, LOCAL4, IPPROTO_IPIP, 0, &[]);
        h[0] = 0x46; // IHL 6: the options run past the packet
        add(
            "truncated IPv4 options",
            eth(0x0800, &h),
            TC_ACT_SHOT,
            "malformed",
        );
    }
    {
        let mut f = outer4(PEER4, LOCAL4, IPPROTO_IPIP, &i4);
        f[14] = 0x44; // IHL 4
        add("IHL < 5", f, TC_ACT_SHOT, "malformed");
    }
    {
        let mut f = outer4(PEER4, LOCAL4, IPPROTO_IPIP, &i4);
        f[14] = 0x65; // version 6 in an IPv4 EtherType
        add("wrong IP version", f, TC_ACT_SHOT, "malformed");
    }
    {
        let mut f = outer4(PEER4, LOCAL4, IPPROTO_IPIP, &i4);
        let tot = (20 + i4.len() + 100) as u16;
        f[16..18].copy_from_slice(&tot.to_be_bytes());
        fix_ipv4_checksum(&mut f[14..]);
        add(
            "IPv4 total length beyond the frame",
            f,
            TC_ACT_SHOT,
            "malformed",
        );
    }
    add(
        "truncated IPv6 extension header",
        outer6(peer6(), local6(), 0, &[IPPROTO_IPV6, 0, 1, 0]),
        TC_ACT_SHOT,
        "malformed",
    );
    {
        let mut f = outer6(peer6(), local6(), IPPROTO_IPV6, &i6);
        f[18..20].copy_from_slice(&((i6.len() + 8) as u16).to_be_bytes());
        add(
            "IPv6 payload length beyond the frame",
            f,
            TC_ACT_SHOT,
            "malformed",
        );
    }
    add(
        "ipip with a truncated inner header",
        outer4(PEER4, LOCAL4, IPPROTO_IPIP, &i4[..12]),
        TC_ACT_SHOT,
        "malformed",
    );
    add(
        "protocol 4 carrying IPv6",
        outer4(PEER4, LOCAL4, IPPROTO_IPIP, &i6),
        TC_ACT_SHOT,
        "malformed",
    );
    add(
        "GRE 0x86DD carrying IPv4",
        outer4(PEER4, LOCAL4, IPPROTO_GRE, &gre(0x86dd, None, false, &i4)),
        TC_ACT_SHOT,
        "malformed",
    );
    add(
        "truncated GRE header",
        outer4(PEER4, LOCAL4, IPPROTO_GRE, &[0, 0]),
        TC_ACT_SHOT,
        "malformed",
    );
    add(
        "GRE key flag without the key",
        outer4(PEER4, LOCAL4, IPPROTO_GRE, &[0x20, 0, 0x08, 0]),
        TC_ACT_SHOT,
        "malformed",
    );
    add(
        "truncated UDP header",
        outer4(PEER4, LOCAL4, IPPROTO_UDP, &[0x13, 0x88, 0x15]),
        TC_ACT_SHOT,
        "malformed",
    );
    {
        let mut u = udp(40000, PORT, &i4);
        let short = (u.len() - 4) as u16;
        u[4..6].copy_from_slice(&short.to_be_bytes());
        add(
            "UDP length not the datagram's",
            outer4(PEER4, LOCAL4, IPPROTO_UDP, &u),
            TC_ACT_SHOT,
            "malformed",
        );
    }
    add(
        "FOU payload that is not IP",
        outer4(PEER4, LOCAL4, IPPROTO_UDP, &udp(40000, PORT, &[0x50; 40])),
        TC_ACT_SHOT,
        "malformed",
    );

    // Who sent it.
    add(
        "ipip from an unknown peer",
        outer4(STRANGER4, LOCAL4, IPPROTO_IPIP, &i4),
        TC_ACT_SHOT,
        "unknown_peer",
    );
    add(
        "GRE from an unknown IPv6 peer",
        outer6(
            stranger6(),
            local6(),
            IPPROTO_GRE,
            &gre(0x86dd, None, false, &i6),
        ),
        TC_ACT_SHOT,
        "unknown_peer",
    );
    add(
        "FOU from an unknown peer",
        outer4(STRANGER4, LOCAL4, IPPROTO_UDP, &udp(40000, PORT, &i4)),
        TC_ACT_SHOT,
        "unknown_peer",
    );

    // Fragments of the outer header.
    {
        let mut f = outer4(PEER4, LOCAL4, IPPROTO_GRE, &gre(0x0800, None, false, &i4));
        f[20..22].copy_from_slice(&0x2000u16.to_be_bytes()); // MF, offset 0
        fix_ipv4_checksum(&mut f[14..]);
        add("first fragment of a GRE packet", f, TC_ACT_SHOT, "fragment");
    }
    {
        let mut f = outer4(PEER4, LOCAL4, IPPROTO_IPIP, &i4);
        f[20..22].copy_from_slice(&0x0010u16.to_be_bytes()); // offset 128 bytes
        fix_ipv4_checksum(&mut f[14..]);
        add(
            "later fragment of an ipip packet",
            f,
            TC_ACT_SHOT,
            "fragment",
        );
    }
    {
        let mut f = outer4(PEER4, LOCAL4, IPPROTO_UDP, &udp(40000, PORT, &i4));
        f[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
        fix_ipv4_checksum(&mut f[14..]);
        add("first fragment of a FOU packet", f, TC_ACT_SHOT, "fragment");
    }
    {
        let mut fh = vec![IPPROTO_GRE, 0, 0, 1, 0, 0, 0, 7]; // offset 0, M set
        fh.extend_from_slice(&gre(0x86dd, None, false, &i6));
        add(
            "IPv6 fragment header before GRE",
            outer6(peer6(), local6(), 44, &fh),
            TC_ACT_SHOT,
            "fragment",
        );
    }

    // Checksums.
    {
        let mut f = outer4(PEER4, LOCAL4, IPPROTO_IPIP, &i4);
        f[24] ^= 0x55;
        add(
            "bad outer IPv4 header checksum",
            f,
            TC_ACT_SHOT,
            "bad_checksum",
        );
    }
    {
        let mut g = gre(0x0800, None, true, &i4);
        let last = g.len() - 1;
        g[last] ^= 1;
        add(
            "bad GRE checksum",
            outer4(PEER4, LOCAL4, IPPROTO_GRE, &g),
            TC_ACT_SHOT,
            "bad_checksum",
        );
    }

    // Keys.
    add(
        "GRE with the wrong key",
        outer4(
            KEYED4,
            LOCAL4,
            IPPROTO_GRE,
            &gre(0x0800, Some(KEY + 1), false, &i4),
        ),
        TC_ACT_SHOT,
        "key_mismatch",
    );
    add(
        "GRE without the key the peer requires",
        outer4(KEYED4, LOCAL4, IPPROTO_GRE, &gre(0x0800, None, false, &i4)),
        TC_ACT_SHOT,
        "key_mismatch",
    );

    // What lwtun never sends.
    for (what, flags) in [
        ("GRE version 1 (PPTP)", 0x0001u16),
        ("GRE with sequence numbers", 0x1000),
        ("GRE with routing", 0x4000),
        ("GRE with strict source route", 0x0800),
        ("GRE with recursion control", 0x0100),
        ("GRE with reserved flags", 0x0040),
    ] {
        let mut g = gre(0x0800, None, false, &i4);
        g[0..2].copy_from_slice(&flags.to_be_bytes());
        if flags == 0x1000 {
            g.splice(4..4, [0, 0, 0, 1]);
        }
        add(
            what,
            outer4(PEER4, LOCAL4, IPPROTO_GRE, &g),
            TC_ACT_SHOT,
            "unsupported",
        );
    }
    add(
        "GRE carrying Ethernet (0x6558)",
        outer4(PEER4, LOCAL4, IPPROTO_GRE, &gre(0x6558, None, false, &i4)),
        TC_ACT_SHOT,
        "unsupported",
    );
    {
        let mut hbh = vec![IPPROTO_IPV6, 0, 1, 4, 0, 0, 0, 0]; // hop-by-hop, PadN
        hbh.extend_from_slice(&i6);
        add(
            "IPv6 hop-by-hop header before IPIP",
            outer6(peer6(), local6(), 0, &hbh),
            TC_ACT_SHOT,
            "unsupported",
        );
    }
    {
        let mut dst = vec![IPPROTO_GRE, 0, 1, 4, 0, 0, 0, 0]; // destination options
        dst.extend_from_slice(&gre(0x86dd, None, false, &i6));
        add(
            "IPv6 destination options before GRE",
            outer6(peer6(), local6(), 60, &dst),
            TC_ACT_SHOT,
            "unsupported",
        );
    }

    assert!(cases.len() >= 20, "{} cases", cases.len());
    for (what, frame, verdict, counter) in &cases {
        let out = run(&d, what, frame, *verdict, counter);
        if *verdict == TC_ACT_UNSPEC {
            assert_eq!(&out, frame, "{what}: passed untouched");
        }
    }
    let c = d.counters().unwrap();
    assert_eq!(c.decapsulated(), 0, "nothing here is decapsulated");
}

#[test]
fn tables_round_trip_and_refuse_nonsense() {
    require!();
    let mut d = decap();
    assert_eq!(
        d.locals().unwrap(),
        vec![
            std::net::IpAddr::from(LOCAL4),
            std::net::IpAddr::from(local6())
        ]
    );
    let peers = d.peers().unwrap();
    assert_eq!(peers.len(), 4);
    assert!(peers.contains(&DecapPeer::host(KEYED4.into()).gre_key(KEY)));
    assert!(peers.contains(&DecapPeer::new("198.51.100.0/24".parse().unwrap())));
    // a host prefix given with host bits is normalised
    d.add_peer(DecapPeer::new("203.0.113.9/24".parse().unwrap()))
        .unwrap();
    assert!(d
        .peers()
        .unwrap()
        .contains(&DecapPeer::new("203.0.113.0/24".parse().unwrap())));
    assert_eq!(
        d.add_udp_port(0).unwrap_err().kind(),
        lwtun::ErrorKind::InvalidInput
    );
    assert_eq!(
        d.remove_udp_port(6000).unwrap_err().kind(),
        lwtun::ErrorKind::NotFound
    );
    assert_eq!(
        d.remove_local("192.0.2.200".parse().unwrap())
            .unwrap_err()
            .kind(),
        lwtun::ErrorKind::NotFound
    );
    let lo = lwtun::netns::NetNs::current()
        .unwrap()
        .device("lo")
        .unwrap();
    assert_eq!(
        d.detach(&lo).unwrap_err().kind(),
        lwtun::ErrorKind::NotFound
    );

    // Removing entries changes verdicts.
    let i4 = inner4();
    let f = outer4(PEER4, LOCAL4, IPPROTO_IPIP, &i4);
    run(&d, "before removal", &f, TC_ACT_UNSPEC, "ipip");
    d.remove_peer(format!("{PEER4}/32").parse().unwrap())
        .unwrap();
    run(&d, "peer removed", &f, TC_ACT_SHOT, "unknown_peer");
    d.remove_local(LOCAL4.into()).unwrap();
    run(&d, "endpoint removed", &f, TC_ACT_UNSPEC, "not_for_us");
    let u = outer6(peer6(), local6(), IPPROTO_UDP, &udp(1, PORT, &i4));
    run(&d, "FOU port set", &u, TC_ACT_UNSPEC, "udp");
    d.remove_udp_port(PORT).unwrap();
    run(&d, "FOU port removed", &u, TC_ACT_UNSPEC, "not_for_us");
    assert!(Decap::load().unwrap().test_run(&[0u8; 10]).is_err());
}

#[test]
fn gre_key_to_mark() {
    require!();
    let mut d = decap();
    let i4 = inner4();
    let keyed = outer4(
        PEER4,
        LOCAL4,
        IPPROTO_GRE,
        &gre(0x0800, Some(4242), false, &i4),
    );
    let keyless = outer4(PEER4, LOCAL4, IPPROTO_GRE, &gre(0x0800, None, false, &i4));
    assert_eq!(d.test_run(&keyed).unwrap().mark, 0, "off by default");
    d.set_key_to_mark(true).unwrap();
    let r = d.test_run(&keyed).unwrap();
    assert_eq!(
        (r.verdict, r.mark),
        (TC_ACT_UNSPEC, 4242),
        "the key becomes the mark"
    );
    assert_eq!(d.test_run(&keyless).unwrap().mark, 0, "no key, no mark");
    d.set_key_to_mark(false).unwrap();
    assert_eq!(d.test_run(&keyed).unwrap().mark, 0, "off again");
}

/// Sets the ECN bits of an IPv4 header (fixing its checksum) or an IPv6 header.
fn set_ecn(ip: &mut [u8], ecn: u8) {
    if ip[0] >> 4 == 4 {
        ip[1] = (ip[1] & !3) | ecn;
        fix_ipv4_checksum(ip);
    } else {
        ip[1] = (ip[1] & !0x30) | (ecn << 4);
    }
}

#[test]
fn ecn_congestion_is_kept_rfc6040() {
    require!();
    let d = decap();
    for inner_v6 in [false, true] {
        for outer_v6 in [false, true] {
            let what = format!("outer v6 {outer_v6}, inner v6 {inner_v6}");
            let base = if inner_v6 { inner6() } else { inner4() };
            let proto = if inner_v6 { IPPROTO_IPV6 } else { IPPROTO_IPIP };
            let frame = |outer_ecn: u8, inner_ecn: u8| {
                let mut inner = base.clone();
                set_ecn(&mut inner, inner_ecn);
                let mut f = if outer_v6 {
                    outer6(peer6(), local6(), proto, &inner)
                } else {
                    outer4(PEER4, LOCAL4, proto, &inner)
                };
                set_ecn(&mut f[14..], outer_ecn);
                (f, inner)
            };
            // outer CE, inner ECT(0) -> inner CE (with a valid IPv4 checksum)
            let (f, _) = frame(3, 2);
            let (_, want) = frame(3, 3);
            let out = run(
                &d,
                &format!("{what}: CE over ECT(0)"),
                &f,
                TC_ACT_UNSPEC,
                "ipip",
            );
            if !out.is_empty() {
                assert_eq!(&out[14..], &want[..], "{what}: inner marked CE");
            }
            // outer CE, inner ECT(1) -> CE
            let (f, _) = frame(3, 1);
            let out = run(
                &d,
                &format!("{what}: CE over ECT(1)"),
                &f,
                TC_ACT_UNSPEC,
                "ipip",
            );
            if !out.is_empty() {
                assert_eq!(&out[14..], &want[..], "{what}: inner marked CE");
            }
            // outer CE, inner not-ECT -> dropped
            let (f, _) = frame(3, 0);
            run(
                &d,
                &format!("{what}: CE over not-ECT"),
                &f,
                TC_ACT_SHOT,
                "ecn",
            );
            // outer ECT(0), inner ECT(1) -> unchanged
            let (f, inner) = frame(2, 1);
            let out = run(
                &d,
                &format!("{what}: ECT over ECT"),
                &f,
                TC_ACT_UNSPEC,
                "ipip",
            );
            if !out.is_empty() {
                assert_eq!(&out[14..], &inner[..], "{what}: inner untouched");
            }
            // outer not-ECT, inner CE -> unchanged
            let (f, inner) = frame(0, 3);
            let out = run(
                &d,
                &format!("{what}: inner CE kept"),
                &f,
                TC_ACT_UNSPEC,
                "ipip",
            );
            if !out.is_empty() {
                assert_eq!(&out[14..], &inner[..], "{what}: inner untouched");
            }
        }
    }
}

#[test]
fn pinned_tables_are_adopted_by_a_later_load() {
    require!();
    let dir = common::PinDir::new("decap");
    let i4 = inner4();
    let keyed = outer4(
        PEER4,
        LOCAL4,
        IPPROTO_GRE,
        &gre(0x0800, Some(5), false, &i4),
    );
    {
        let mut d = Decap::load_pinned(&dir.0).unwrap();
        d.add_local(LOCAL4.into()).unwrap();
        d.add_peer(DecapPeer::host(PEER4.into())).unwrap();
        d.add_udp_port(PORT).unwrap();
        d.set_key_to_mark(true).unwrap();
        run(&d, "first owner", &keyed, TC_ACT_UNSPEC, "gre");
        d.keep_pinned();
    }
    for name in [
        "locals",
        "peers_v4",
        "peers_v6",
        "udp_ports",
        "config",
        "counters",
        "decap_tc",
    ] {
        assert!(dir.0.join(name).exists(), "{name} pinned");
    }
    // bpftool sees the counters with their BTF field names.
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(dir.0.join("counters"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // Where the map carries BTF (libbpf creates it without when the kernel refuses the
    // object's BTF, as 5.10 did here), that is: `map show` names a btf_id.
    let show = std::process::Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(dir.0.join("counters"))
        .output()
        .unwrap();
    let has_btf = String::from_utf8_lossy(&show.stdout).contains("\"btf_id\"");
    assert!(out.status.success(), "{text}");
    assert_eq!(text.contains("\"packets\""), has_btf, "{text}");

    let d = Decap::load_pinned(&dir.0).unwrap();
    assert_eq!(d.locals().unwrap(), vec![std::net::IpAddr::from(LOCAL4)]);
    assert_eq!(d.peers().unwrap(), vec![DecapPeer::host(PEER4.into())]);
    assert_eq!(d.counters().unwrap().gre.packets, 1, "counters adopted");
    let r = d.test_run(&keyed).unwrap();
    assert_eq!(
        (r.verdict, r.mark),
        (TC_ACT_UNSPEC, 5),
        "tables and settings adopted"
    );
    let u = outer4(PEER4, LOCAL4, IPPROTO_UDP, &udp(1, PORT, &i4));
    run(&d, "adopted FOU port", &u, TC_ACT_UNSPEC, "udp");
    drop(d);
    // The pins go, and the folder with them (the pin protocol: an owner that drops unkept
    // leaves nothing).
    assert!(!dir.0.exists(), "pins removed without keep_pinned");

    // A folder whose config is not this ABI's is refused and left alone.
    let mut d = Decap::load_pinned(&dir.0).unwrap();
    d.keep_pinned();
    drop(d);
    let st = std::process::Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(dir.0.join("config"))
        .args(["key", "0", "0", "0", "0", "value"])
        .args(["0"; 16])
        .status()
        .unwrap();
    assert!(st.success());
    let e = Decap::load_pinned(&dir.0).unwrap_err();
    assert_eq!(e.kind(), lwtun::ErrorKind::InvalidInput, "{e}");
    assert!(
        dir.0.join("config").exists(),
        "a refused folder is left as it was"
    );
}

#[test]
fn gre_checksum_verification_can_be_turned_off() {
    require!();
    let mut d = decap();
    let i4 = inner4();
    let mut g = gre(0x0800, None, true, &i4);
    g[4] ^= 0xff;
    let bad = outer4(PEER4, LOCAL4, IPPROTO_GRE, &g);
    run(&d, "verified", &bad, TC_ACT_SHOT, "bad_checksum");
    d.set_verify_gre_checksum(false).unwrap();
    let out = run(&d, "not verified", &bad, TC_ACT_UNSPEC, "gre");
    expect_inner("not verified", &out, &i4, 0x0800);
    d.set_verify_gre_checksum(true).unwrap();
    run(&d, "verified again", &bad, TC_ACT_SHOT, "bad_checksum");
}

/// A GRE checksum computed for the finished inner packet is accepted while the inner checksum is
/// still partial (a sender on this machine with offload, through a veth), for IPv4 and IPv6; the
/// same packet damaged on the way (a final checksum that is wrong, or a wrong GRE checksum) is not.
#[test]
fn gre_checksum_of_a_packet_with_a_partial_inner_checksum() {
    require!();
    let d = decap();
    for (inner, ethertype) in [(inner4(), 0x0800u16), (inner6(), 0x86dd)] {
        let what = format!("inner {ethertype:#06x}");
        // The GRE checksum of the finished packet, the inner bytes as a partial sender has them.
        let finished = gre(ethertype, None, true, &inner);
        // As a locally sent packet leaves it with checksum offload (CHECKSUM_PARTIAL).
        let mut partial = inner.clone();
        set_l4_checksum(&mut partial, true);
        assert_ne!(
            partial, inner,
            "{what}: the partial checksum differs from the final one"
        );
        let mut g = finished[..8].to_vec();
        g.extend_from_slice(&partial);
        let frame = |g: &[u8]| {
            if ethertype == 0x0800 {
                outer4(PEER4, LOCAL4, IPPROTO_GRE, g)
            } else {
                outer6(peer6(), local6(), IPPROTO_GRE, g)
            }
        };
        let out = run(&d, &what, &frame(&g), TC_ACT_UNSPEC, "gre");
        expect_inner(&what, &out, &partial, ethertype);

        // Damaged payload under a final (now wrong) checksum: the bytes do not add up, and the
        // checksum field is not the partial pattern either.
        let mut damaged = finished.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 0x10;
        run(&d, &what, &frame(&damaged), TC_ACT_SHOT, "bad_checksum");

        // Partial inner checksum, but a GRE checksum that is wrong for the finished packet.
        let mut wrong = g.clone();
        wrong[4] ^= 0x01;
        run(&d, &what, &frame(&wrong), TC_ACT_SHOT, "bad_checksum");
    }
}

/// The kernel's own gre device with `csum` (`ip link add kt type gre ... key 42 csum`) leaves the
/// GRE checksum to the device, and through a veth it arrives unfinished: the field is 0 and the
/// bytes do not sum right. This frame is one such packet as tcpdump saw it on Debian's 6.12 (an
/// echo request 10.20.0.2 -> 10.30.0.1 inside 10.77.0.2 -> 10.77.0.1, key 42). The decap accepts
/// it, as the kernel's own receiver does, while a nonzero wrong checksum is still dropped.
#[test]
fn an_unfinished_gre_checksum_from_a_kernel_gre_device_is_accepted() {
    require!();
    let frame = common::unhex(&[
        "5647 8643 2635 361f d082 1b2b 0800 4500",
        "0074 7a9d 4000 402f ab21 0a4d 0002 0a4d",
        "0001 a000 0800 0000 0000 0000 002a 4500",
        "0054 d295 4000 4001 53df 0a14 0002 0a1e",
        "0001 0800 b866 0135 0001 32f3 156b 0000",
        "0000 3032 0700 0000 0000 1011 1213 1415",
        "1617 1819 1a1b 1c1d 1e1f 2021 2223 2425",
        "2627 2829 2a2b 2c2d 2e2f 3031 3233 3435",
        "3637",
    ]);
    let mut d = Decap::load().expect("load decap");
    d.add_local("10.77.0.1".parse().unwrap()).unwrap();
    d.add_peer(DecapPeer::host("10.77.0.2".parse().unwrap()).gre_key(42))
        .unwrap();
    let out = run(
        &d,
        "kernel gre, checksum unfinished",
        &frame,
        TC_ACT_UNSPEC,
        "gre",
    );
    assert_eq!(&out[..14], &frame[..14], "the Ethernet header is kept");
    assert_eq!(
        &out[14..],
        &frame[14 + 20 + 12..],
        "the inner packet, untouched"
    );

    // The same packet with a checksum that is not 0 and not right: damaged, dropped.
    let mut bad = frame.clone();
    bad[14 + 20 + 4] = 0x12;
    run(
        &d,
        "kernel gre, wrong checksum",
        &bad,
        TC_ACT_SHOT,
        "bad_checksum",
    );

    // lwtun's own test frames: a right checksum zeroed is accepted the same way.
    let d = decap();
    let i4 = inner4();
    let mut g = gre(0x0800, None, true, &i4);
    g[4..6].copy_from_slice(&[0, 0]);
    let out = run(
        &d,
        "GRE checksum field 0",
        &outer4(PEER4, LOCAL4, IPPROTO_GRE, &g),
        TC_ACT_UNSPEC,
        "gre",
    );
    expect_inner("GRE checksum field 0", &out, &i4, 0x0800);
}
