//! SRv6 packets for the seg6 tests and bench: an IPv6 header, an SRH, an inner packet.
#![allow(dead_code)]

use std::net::Ipv6Addr;

/// Routing header type 4 (SRH) next header value.
pub const ROUTING: u8 = 43;
/// IPv6-in-IPv6.
pub const IPV6: u8 = 41;
/// IPv4-in-IPv6.
pub const IPV4: u8 = 4;

/// An IPv6 header from `src` to `dst` with `nexthdr` and `payload`.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, nexthdr: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.push(nexthdr);
    p.push(64);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// An inner IPv6 packet: an ICMPv6 echo request (checksum not filled: nothing checks it).
pub fn inner_v6() -> Vec<u8> {
    let icmp = [128u8, 0, 0, 0, 0, 1, 0, 1, b'l', b'w', b't', b'n'];
    ipv6(
        "fd77:0::1".parse().unwrap(),
        "fd77:3::2".parse().unwrap(),
        58,
        &icmp,
    )
}

/// An inner IPv4 packet (20-byte header, no options, 4 bytes of payload).
pub fn inner_v4() -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 24, 0, 0, 0x40, 0, 64, 17, 0, 0];
    p.extend_from_slice(&[10, 77, 0, 1, 10, 77, 3, 2]);
    p.extend_from_slice(&[0, 0, 0, 0]);
    p
}

/// An SRv6 packet: outer IPv6 from fd00::1 to `segments[segments_left]` of the SRH (the path
/// `path` reversed: the SRH lists the last segment first), the SRH with `tag`, then `inner`
/// whose protocol is `inner_nh`.
pub fn srv6(path: &[Ipv6Addr], segments_left: u8, tag: u16, inner_nh: u8, inner: &[u8]) -> Vec<u8> {
    let list: Vec<Ipv6Addr> = path.iter().rev().copied().collect();
    let n = list.len() as u8;
    let mut srh = vec![inner_nh, 2 * n, 4, segments_left, n - 1, 0];
    srh.extend_from_slice(&tag.to_be_bytes());
    for s in &list {
        srh.extend_from_slice(&s.octets());
    }
    srh.extend_from_slice(inner);
    let dst = list
        .get(segments_left as usize)
        .copied()
        .unwrap_or(Ipv6Addr::UNSPECIFIED);
    ipv6("fd00::1".parse().unwrap(), dst, ROUTING, &srh)
}

/// The transit SID, the egress decap SID and the service (table) segment of the tests.
pub fn sids() -> (Ipv6Addr, Ipv6Addr, Ipv6Addr) {
    (
        "fc00:2::100".parse().unwrap(),
        "fc00:3::d".parse().unwrap(),
        "fc00:3::100".parse().unwrap(),
    )
}
