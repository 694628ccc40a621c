//! The encap's header construction and peer lookup under BPF_PROG_TEST_RUN, through
//! `encap_preview` (the data plane's own lookup and header code, storing the header instead of
//! pushing it: the `lwt_xmit` program itself must never run under test_run). Every encap kind x
//! outer family x inner family, byte by byte; TTL/TOS fixed and inherited; longest-prefix match;
//! replaced and removed peers; and frames that must match nothing.

mod common;
mod decap_common;

use std::net::IpAddr;

use lwtun::peer::{Encap, EncapPeer};
use lwtun::tunnel::Tunnel;

const A4: [u8; 4] = [192, 0, 2, 1];
const B4: [u8; 4] = [192, 0, 2, 2];
const A6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const B6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 packet to `dst` with TTL `ttl`, TOS `tos` and 8 bytes of payload (28 bytes).
fn inner4(dst: [u8; 4], ttl: u8, tos: u8) -> Vec<u8> {
    let mut p = vec![0x45, tos, 0, 28, 0, 0, 0x40, 0, ttl, 17, 0, 0, 10, 30, 0, 1];
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0x12, 0x34, 0x56, 0x78, 0, 8, 0, 0]);
    p
}

/// An IPv6 packet to `dst` with hop limit `hl`, traffic class `tc` and 8 bytes of payload (48).
fn inner6(dst: [u8; 16], hl: u8, tc: u8) -> Vec<u8> {
    let mut p = vec![0x60 | (tc >> 4), tc << 4, 0, 0, 0, 8, 17, hl];
    p.extend_from_slice(&[0xfd, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0x12, 0x34, 0x56, 0x78, 0, 8, 0, 0]);
    p
}

fn frame4(dst: [u8; 4]) -> Vec<u8> {
    eth(0x0800, &inner4(dst, 61, 0))
}

fn frame6(dst: [u8; 16]) -> Vec<u8> {
    eth(0x86dd, &inner6(dst, 61, 0))
}

const D4: [u8; 4] = [10, 20, 0, 9];
const D6: [u8; 16] = [0xfd, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];

fn ipv4_checks(h: &[u8], inner_len: usize, proto: u8, ttl: u8, tos: u8) {
    assert_eq!(h[0], 0x45, "version 4, IHL 5");
    assert_eq!(h[1], tos, "TOS");
    assert_eq!(
        u16::from_be_bytes([h[2], h[3]]) as usize,
        h.len() + inner_len,
        "total length"
    );
    assert_eq!(u16::from_be_bytes([h[6], h[7]]), 0x4000, "DF, offset 0");
    assert_eq!(h[8], ttl, "TTL");
    assert_eq!(h[9], proto, "protocol");
    assert_eq!(&h[12..16], &A4, "source");
    assert_eq!(&h[16..20], &B4, "destination");
}

fn ipv6_checks(h: &[u8], inner_len: usize, next: u8, hl: u8, tc: u8) {
    assert_eq!(h[0] >> 4, 6, "version 6");
    assert_eq!((h[0] << 4) | (h[1] >> 4), tc, "traffic class");
    assert_eq!(
        u16::from_be_bytes([h[4], h[5]]) as usize,
        h.len() - 40 + inner_len,
        "payload length"
    );
    assert_eq!(h[6], next, "next header");
    assert_eq!(h[7], hl, "hop limit");
    assert_eq!(&h[8..24], &A6, "source");
    assert_eq!(&h[24..40], &B6, "destination");
}

fn peer(outer_v6: bool, encap: Encap) -> EncapPeer {
    if outer_v6 {
        EncapPeer::new(IpAddr::from(B6), IpAddr::from(A6), encap)
    } else {
        EncapPeer::new(IpAddr::from(B4), IpAddr::from(A4), encap)
    }
}

fn tunnel_with(outer_v6: bool, encap: Encap) -> Tunnel {
    let mut t = Tunnel::load().unwrap();
    t.peers_mut()
        .insert(
            "10.20.0.0/16".parse().unwrap(),
            peer(outer_v6, encap).ttl(40),
        )
        .unwrap();
    t.peers_mut()
        .insert("fd20::/16".parse().unwrap(), peer(outer_v6, encap).ttl(40))
        .unwrap();
    t
}

#[test]
fn every_encap_family_and_inner_family_byte_by_byte() {
    require!();
    let encaps = [
        Encap::Ipip,
        Encap::Gre {
            key: None,
            checksum: false,
        },
        Encap::Gre {
            key: Some(0xdead_beef),
            checksum: false,
        },
        Encap::Gre {
            key: None,
            checksum: true,
        },
        Encap::Gre {
            key: Some(0xdead_beef),
            checksum: true,
        },
        Encap::Udp { port: 5555 },
    ];
    for encap in encaps {
        for outer_v6 in [false, true] {
            let t = tunnel_with(outer_v6, encap);
            for inner_v6 in [false, true] {
                let (frame, inner_len) = if inner_v6 {
                    (frame6(D6), 48)
                } else {
                    (frame4(D4), 28)
                };
                let what = format!("{encap} outer v6 {outer_v6} inner v6 {inner_v6}");
                let h = t
                    .preview(&frame)
                    .unwrap()
                    .unwrap_or_else(|| panic!("{what}: no match"));
                let ip_len = if outer_v6 { 40 } else { 20 };
                assert_eq!(h.len() as u32, peer(outer_v6, encap).encap_len(), "{what}");
                let next = match encap {
                    Encap::Ipip if inner_v6 => 41,
                    Encap::Ipip => 4,
                    Encap::Gre { .. } => 47,
                    Encap::Udp { .. } => 17,
                    other => panic!("{what}: no header check for {other:?}"),
                };
                if outer_v6 {
                    ipv6_checks(&h, inner_len, next, 40, 0);
                } else {
                    ipv4_checks(&h, inner_len, next, 40, 0);
                }
                let l4 = &h[ip_len..];
                let ethertype: u16 = if inner_v6 { 0x86dd } else { 0x0800 };
                match encap {
                    Encap::Ipip => assert!(l4.is_empty(), "{what}"),
                    Encap::Gre { key, checksum } => {
                        let flags = u16::from_be_bytes([l4[0], l4[1]]);
                        assert_eq!(u16::from_be_bytes([l4[2], l4[3]]), ethertype, "{what}");
                        let c_bit = if checksum { 0x8000 } else { 0 };
                        let k_bit = if key.is_some() { 0x2000 } else { 0 };
                        assert_eq!(flags, c_bit | k_bit, "{what}: C and K bits, version 0");
                        let key_at = if checksum { 8 } else { 4 };
                        if let Some(k) = key {
                            let b = &l4[key_at..key_at + 4];
                            assert_eq!(u32::from_be_bytes([b[0], b[1], b[2], b[3]]), k);
                        }
                        if checksum {
                            assert_eq!(&l4[6..8], &[0, 0], "{what}: reserved1");
                            // RFC 2784: GRE header and payload sum to 0xffff.
                            let mut covered = l4.to_vec();
                            covered.extend_from_slice(&frame[14..]);
                            assert_eq!(
                                decap_common::sum16(&covered, 0),
                                0xffff,
                                "{what}: checksum"
                            );
                        }
                    }
                    Encap::Udp { port } => {
                        let sport = u16::from_be_bytes([l4[0], l4[1]]);
                        assert!(sport >= 49152, "{what}: source port {sport} from the hash");
                        assert_eq!(u16::from_be_bytes([l4[2], l4[3]]), port, "{what}");
                        assert_eq!(
                            u16::from_be_bytes([l4[4], l4[5]]) as usize,
                            inner_len + 8,
                            "{what}: UDP length"
                        );
                        assert_eq!(&l4[6..8], &[0, 0], "{what}: zero checksum");
                    }
                    other => panic!("{what}: no header check for {other:?}"),
                }
            }
        }
    }
}

#[test]
fn udp_source_port_follows_the_flow() {
    require!();
    let t = tunnel_with(false, Encap::Udp { port: 5555 });
    let sport = |frame: &[u8]| {
        let h = t.preview(frame).unwrap().unwrap();
        u16::from_be_bytes([h[20], h[21]])
    };
    let f1 = frame4(D4);
    assert_eq!(sport(&f1), sport(&f1), "one flow, one source port");
    let ports: std::collections::BTreeSet<u16> = (1..=40u8)
        .map(|i| {
            let mut f = frame4(D4);
            f[14 + 20] = i; // UDP source port of the inner packet
            sport(&f)
        })
        .collect();
    assert!(
        ports.len() > 20,
        "flows spread over source ports: {ports:?}"
    );
    // IPv6 inner packets: the ports count too (the hash is the encap's own, from the inner
    // addresses, protocol and ports, not the skb's).
    let ports6: std::collections::BTreeSet<u16> = (1..=40u8)
        .map(|i| {
            let mut f = frame6(D6);
            f[14 + 40 + 1] = i; // low byte of the inner UDP source port
            sport(&f)
        })
        .collect();
    assert!(
        ports6.len() > 20,
        "IPv6 flows spread over source ports: {ports6:?}"
    );
    // A later IPv4 fragment carries no ports: what sits there does not move the hash.
    let later_fragment = |b: u8| {
        let mut f = frame4(D4);
        f[14 + 6] = 0x00;
        f[14 + 7] = 0x10; // fragment offset 16 bytes
        f[14 + 20] = b;
        sport(&f)
    };
    assert_eq!(
        later_fragment(1),
        later_fragment(2),
        "a later fragment's payload is not a port"
    );
}

#[test]
fn ttl_and_tos_fixed_or_inherited() {
    require!();
    for outer_v6 in [false, true] {
        let mut t = Tunnel::load().unwrap();
        let p = peer(
            outer_v6,
            Encap::Gre {
                key: None,
                checksum: false,
            },
        );
        t.peers_mut()
            .insert(
                "10.20.0.0/16".parse().unwrap(),
                p.inherit_ttl().inherit_tos(),
            )
            .unwrap();
        t.peers_mut()
            .insert("fd20::/16".parse().unwrap(), p.ttl(9).tos(0x20))
            .unwrap();
        let h = t
            .preview(&eth(0x0800, &inner4(D4, 17, 0xb8)))
            .unwrap()
            .unwrap();
        let h6 = t
            .preview(&eth(0x86dd, &inner6(D6, 17, 0xb8)))
            .unwrap()
            .unwrap();
        // A fixed TOS still carries the inner ECN bits (RFC 6040): ECT(1) here.
        let h6e = t
            .preview(&eth(0x86dd, &inner6(D6, 17, 0xb9)))
            .unwrap()
            .unwrap();
        if outer_v6 {
            ipv6_checks(&h, 28, 47, 17, 0xb8);
            ipv6_checks(&h6, 48, 47, 9, 0x20);
            ipv6_checks(&h6e, 48, 47, 9, 0x21);
        } else {
            ipv4_checks(&h, 28, 47, 17, 0xb8);
            ipv4_checks(&h6, 48, 47, 9, 0x20);
            ipv4_checks(&h6e, 48, 47, 9, 0x21);
        }
    }
}

#[test]
fn longest_prefix_wins_and_changes_apply() {
    require!();
    let mut t = Tunnel::load().unwrap();
    let wide = peer(
        false,
        Encap::Gre {
            key: Some(1),
            checksum: false,
        },
    );
    let narrow = peer(
        false,
        Encap::Gre {
            key: Some(2),
            checksum: false,
        },
    );
    t.peers_mut()
        .insert("10.0.0.0/8".parse().unwrap(), wide)
        .unwrap();
    t.peers_mut()
        .insert("10.20.0.0/24".parse().unwrap(), narrow)
        .unwrap();
    let key = |t: &Tunnel, dst: [u8; 4]| {
        t.preview(&frame4(dst))
            .unwrap()
            .map(|h| u32::from_be_bytes([h[24], h[25], h[26], h[27]]))
    };
    assert_eq!(key(&t, [10, 20, 0, 9]), Some(2));
    assert_eq!(key(&t, [10, 20, 1, 9]), Some(1));
    assert_eq!(key(&t, [11, 0, 0, 1]), None);
    t.peers_mut()
        .replace(
            "10.20.0.0/24".parse().unwrap(),
            peer(
                false,
                Encap::Gre {
                    key: Some(3),
                    checksum: false,
                },
            ),
        )
        .unwrap();
    assert_eq!(key(&t, [10, 20, 0, 9]), Some(3));
    t.peers_mut()
        .remove("10.20.0.0/24".parse().unwrap())
        .unwrap();
    assert_eq!(key(&t, [10, 20, 0, 9]), Some(1));
}

/// A table at its capacity still takes a new peer for a prefix it holds (older kernels refuse
/// to update a key of a full LPM trie: lwtun keeps one spare entry), and nothing more.
#[test]
fn a_full_table_replaces_peers_and_refuses_more() {
    require!();
    let mut t = Tunnel::builder().capacity(2).load().unwrap();
    let gre = |key| Encap::Gre {
        key: Some(key),
        checksum: false,
    };
    t.peers_mut()
        .insert("10.1.0.0/16".parse().unwrap(), peer(false, gre(1)))
        .unwrap();
    t.peers_mut()
        .insert("10.2.0.0/16".parse().unwrap(), peer(false, gre(2)))
        .unwrap();
    let err = t
        .peers_mut()
        .insert("10.3.0.0/16".parse().unwrap(), peer(false, gre(3)))
        .unwrap_err();
    assert_eq!(err.kind(), lwtun::ErrorKind::InvalidInput, "{err}");
    t.peers_mut()
        .replace("10.2.0.0/16".parse().unwrap(), peer(false, gre(7)))
        .unwrap();
    let key = t
        .preview(&frame4([10, 2, 0, 9]))
        .unwrap()
        .map(|h| u32::from_be_bytes([h[24], h[25], h[26], h[27]]));
    assert_eq!(key, Some(7), "the replaced peer encapsulates");
    assert_eq!(t.peers().len(), 2);
}

#[test]
fn frames_that_match_nothing() {
    require!();
    let t = tunnel_with(
        false,
        Encap::Gre {
            key: None,
            checksum: false,
        },
    );
    let good4 = inner4(D4, 61, 0);
    let good6 = inner6(D6, 61, 0);
    let mut ihl4 = good4.clone();
    ihl4[0] = 0x44;
    let mut v5 = good4.clone();
    v5[0] = 0x55;
    let mut short_total = good4.clone();
    short_total[3] = 12;
    let mut wrong_ver6 = good6.clone();
    wrong_ver6[0] = 0x40;
    // Frames whose IP header is shorter than its fixed part are refused by test_run itself
    // (EINVAL on 6.18), and the stack never routes such a packet to an LWT hook either.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("ARP", eth(0x0806, &[0u8; 28])),
        ("IHL 4", eth(0x0800, &ihl4)),
        ("version 5 in an IPv4 frame", eth(0x0800, &v5)),
        ("total length below the header", eth(0x0800, &short_total)),
        (
            "IPv4 header in an IPv6 frame",
            eth(0x86dd, &[&good4[..], &[0u8; 20]].concat()),
        ),
        ("IPv6 header in an IPv4 frame", eth(0x0800, &good6)),
        ("no peer (IPv4)", frame4([172, 16, 0, 1])),
        (
            "no peer (IPv6)",
            frame6([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        ),
        ("VLAN-tagged", eth(0x8100, &good4)),
        ("wrong version 6 nibble", eth(0x86dd, &wrong_ver6)),
    ];
    for (what, frame) in cases {
        let got = t.preview(&frame).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got, None, "{what} must match no peer");
    }
    // And the good ones do, so the refusals above are about the frames.
    assert!(t.preview(&eth(0x0800, &good4)).unwrap().is_some());
    assert!(t.preview(&eth(0x86dd, &good6)).unwrap().is_some());
    assert!(
        t.preview(&[0u8; 10]).is_err(),
        "shorter than Ethernet: refused"
    );
}

/// A TCP segment (20-byte header, ACK|PSH) with `payload`, checksum 0.
fn tcp(payload: &[u8]) -> Vec<u8> {
    let mut t = vec![
        0x9c, 0x40, 0x1f, 0x90, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff,
    ];
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

/// The GRE checksum the encap computes is right for the packet as it leaves the host, through
/// both of its paths: from the headers (TCP/UDP/ICMP, also while the transport checksum is still
/// partial) and byte by byte (UDP without checksum, fragments, IPv4 options, IPv6 extension
/// headers, other protocols, odd lengths, several 256-byte chunks).
#[test]
fn gre_checksum_is_right_for_the_finished_packet() {
    require!();
    use decap_common::{ipv4_header, ipv6_header};
    let src4: std::net::Ipv4Addr = "10.30.0.1".parse().unwrap();
    let dst4 = std::net::Ipv4Addr::from(D4);
    let src6: std::net::Ipv6Addr = "fd30::1".parse().unwrap();
    let dst6 = std::net::Ipv6Addr::from(D6);
    let long: Vec<u8> = (0..1361u32).map(|i| (i * 7 + 3) as u8).collect();
    let with4 = |proto: u8, l4: &[u8], options: &[u8]| {
        let mut p = ipv4_header(src4, dst4, proto, l4.len(), options);
        p.extend_from_slice(l4);
        p
    };
    let with6 = |next: u8, l4: &[u8]| {
        let mut p = ipv6_header(src6, dst6, next, l4.len());
        p.extend_from_slice(l4);
        p
    };
    // (what, packet as it leaves the host, packet as lwt_xmit sees it)
    let mut cases: Vec<(&str, Vec<u8>, Vec<u8>)> = Vec::new();
    for (what, mut p) in [
        ("TCP v4", with4(6, &tcp(&long), &[])),
        ("TCP v6", with6(6, &tcp(&long[..999]))),
        (
            "UDP v4",
            with4(17, &decap_common::udp(1, 2, &long[..77]), &[]),
        ),
        ("UDP v6", with6(17, &decap_common::udp(1, 2, &long[..300]))),
    ] {
        decap_common::set_l4_checksum(&mut p, false);
        let mut partial = p.clone();
        decap_common::set_l4_checksum(&mut partial, true);
        assert_ne!(p, partial);
        cases.push((what, p.clone(), p.clone()));
        let partial_what = match what {
            "TCP v4" => "TCP v4, partial checksum",
            "TCP v6" => "TCP v6, partial checksum",
            "UDP v4" => "UDP v4, partial checksum",
            _ => "UDP v6, partial checksum",
        };
        cases.push((partial_what, p, partial));
    }
    let mut icmp = vec![8, 0, 0, 0, 0, 1, 0, 1];
    icmp.extend_from_slice(&long[..56]);
    let c = decap_common::checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut frag = with4(6, &tcp(&long[..400]), &[]);
    frag[6] = 0x20; // MF: a first fragment, whose TCP checksum covers more than it carries
    decap_common::fix_ipv4_checksum(&mut frag);
    let mut hop_by_hop = vec![17, 0, 1, 4, 0, 0, 0, 0];
    hop_by_hop.extend_from_slice(&decap_common::udp(1, 2, &long[..33]));
    for (what, p) in [
        ("ICMP v4", with4(1, &icmp, &[])),
        (
            "UDP v4 without checksum, odd",
            with4(17, &decap_common::udp(1, 2, &long[..1001]), &[]),
        ),
        ("IPv4 fragment", frag),
        ("IPv4 options", with4(6, &tcp(&long[..64]), &[1, 1, 1, 0])),
        ("IPv6 hop-by-hop", with6(0, &hop_by_hop)),
        ("GRE in GRE", with4(47, &long[..555], &[])),
    ] {
        cases.push((what, p.clone(), p));
    }
    let encap = Encap::Gre {
        key: Some(5),
        checksum: true,
    };
    for outer_v6 in [false, true] {
        let t = tunnel_with(outer_v6, encap);
        for (what, finished, seen) in &cases {
            let ethertype = if seen[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
            let h = t
                .preview(&eth(ethertype, seen))
                .unwrap()
                .unwrap_or_else(|| panic!("{what}: no match"));
            let gre = &h[if outer_v6 { 40 } else { 20 }..];
            assert_eq!(gre.len(), 12, "{what}: checksum and key");
            let mut covered = gre.to_vec();
            covered.extend_from_slice(finished);
            assert_eq!(
                decap_common::sum16(&covered, 0),
                0xffff,
                "{what} (outer v6 {outer_v6}): GRE checksum {:#06x}",
                u16::from_be_bytes([gre[4], gre[5]])
            );
        }
    }
}

/// What `bpftool prog show` tells of the maps a program uses is what the tunnel says it holds:
/// the `lwtun` command finds a tunnel's routes this way.
#[test]
fn program_info_names_the_tables_a_program_reads() {
    require!();
    use lwtun::program::{program_info, program_info_by_id};
    use std::os::fd::AsFd;
    let t = tunnel_with(false, Encap::Ipip);
    let xmit = t.xmit_program();
    let info = program_info_by_id(xmit.id()).unwrap();
    assert_eq!(info.id, xmit.id());
    assert_eq!(info, program_info(xmit.as_fd()).unwrap());
    let tables = t.map_ids();
    let id_of = |name: &str| {
        tables
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
            .unwrap_or_else(|| panic!("the tunnel holds no map {name}: {tables:?}"))
    };
    for name in ["peers_v4", "peers_v6"] {
        assert!(
            info.map_ids.contains(&id_of(name)),
            "{name} (id {}) is not among the xmit program's maps {:?}",
            id_of(name),
            info.map_ids
        );
    }
    assert!(info.map_ids.len() <= tables.len(), "{:?}", info.map_ids);
    assert!(
        t.peers().serves(&info),
        "the xmit program reads the tunnel's peers"
    );
    let other = tunnel_with(false, Encap::Ipip);
    assert!(
        !other.peers().serves(&info),
        "another tunnel's tables are not this program's"
    );
    let gone = program_info_by_id(u32::MAX).unwrap_err();
    assert_eq!(gone.kind(), lwtun::ErrorKind::NotFound, "{gone}");
}
