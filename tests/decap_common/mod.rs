//! Packet builders for the decap tests: inner packets, outer IPv4/IPv6 headers, GRE and UDP, with
//! correct checksums (RFC 1071) unless a test breaks them on purpose.
#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_GRE: u8 = 47;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;

/// One's-complement sum (RFC 1071) of `data`, folded, not inverted (the shared harness's
/// [`sum16`](crate::common::packets::sum16), folded).
pub fn sum16(data: &[u8], acc: u32) -> u32 {
    u32::from(!crate::common::packets::fold(
        crate::common::packets::sum16(data, acc),
    ))
}

pub fn checksum(data: &[u8]) -> u16 {
    !(sum16(data, 0) as u16)
}

/// An IPv4 header (20 bytes + `options`) with a correct checksum.
pub fn ipv4_header(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    payload_len: usize,
    options: &[u8],
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let hlen = 20 + options.len();
    let mut h = vec![0u8; hlen];
    h[0] = 0x40 | (hlen / 4) as u8;
    h[2..4].copy_from_slice(&((hlen + payload_len) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    h[20..].copy_from_slice(options);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// Recomputes an IPv4 header's checksum after a test edited it.
pub fn fix_ipv4_checksum(h: &mut [u8]) {
    let hlen = ((h[0] & 0x0f) as usize) * 4;
    h[10] = 0;
    h[11] = 0;
    let c = checksum(&h[..hlen]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
}

pub fn ipv6_header(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload_len: usize) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h
}

/// An inner IPv4/UDP packet carrying `payload` (UDP checksum computed).
pub fn inner_udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = udp_header(sport, dport, payload.len());
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, IPPROTO_UDP]);
    pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    let c = !(sum16(&udp, sum16(&pseudo, 0)) as u16);
    udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    let mut p = ipv4_header(src, dst, IPPROTO_UDP, udp.len(), &[]);
    p.extend_from_slice(&udp);
    p
}

/// An inner IPv6/UDP packet carrying `payload` (UDP checksum computed, as IPv6 requires).
pub fn inner_udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = udp_header(sport, dport, payload.len());
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(udp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_UDP]);
    let c = !(sum16(&udp, sum16(&pseudo, 0)) as u16);
    udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    let mut p = ipv6_header(src, dst, IPPROTO_UDP, udp.len());
    p.extend_from_slice(&udp);
    p
}

/// A UDP header for `payload_len` bytes, checksum 0.
pub fn udp_header(sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    h
}

/// A GRE header (RFC 2784/2890) and payload: `csum` fills the checksum over header and payload.
pub fn gre(proto: u16, key: Option<u32>, csum: bool, payload: &[u8]) -> Vec<u8> {
    let mut flags = 0u16;
    if csum {
        flags |= 0x8000;
    }
    if key.is_some() {
        flags |= 0x2000;
    }
    let mut g = Vec::new();
    g.extend_from_slice(&flags.to_be_bytes());
    g.extend_from_slice(&proto.to_be_bytes());
    if csum {
        g.extend_from_slice(&[0, 0, 0, 0]);
    }
    if let Some(k) = key {
        g.extend_from_slice(&k.to_be_bytes());
    }
    g.extend_from_slice(payload);
    if csum {
        let c = checksum(&g);
        g[4..6].copy_from_slice(&c.to_be_bytes());
    }
    g
}

pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// An Ethernet frame of `ethertype` around `payload`.
pub fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An outer IPv4 packet (in Ethernet) around `payload`.
pub fn outer4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = ipv4_header(src, dst, proto, payload.len(), &[]);
    p.extend_from_slice(payload);
    eth(0x0800, &p)
}

/// An outer IPv6 packet (in Ethernet) around `payload`.
pub fn outer6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = ipv6_header(src, dst, next, payload.len());
    p.extend_from_slice(payload);
    eth(0x86dd, &p)
}

/// A UDP datagram (header + payload, checksum 0) for FOU.
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = udp_header(sport, dport, payload.len());
    u.extend_from_slice(payload);
    u
}

/// Writes the TCP/UDP checksum of an IPv4/IPv6 packet without extension headers or options:
/// final (`partial` false) or as CHECKSUM_PARTIAL leaves it (the folded pseudo-header sum).
pub fn set_l4_checksum(p: &mut [u8], partial: bool) {
    let v6 = p[0] >> 4 == 6;
    let (l4, proto, mut pseudo) = if v6 {
        (40, p[6], p[8..40].to_vec())
    } else {
        (20, p[9], p[12..20].to_vec())
    };
    let len = p.len() - l4;
    if v6 {
        pseudo.extend_from_slice(&(len as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
    } else {
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(len as u16).to_be_bytes());
    }
    let at = l4 + if proto == 6 { 16 } else { 6 };
    p[at..at + 2].copy_from_slice(&[0, 0]);
    let ph = sum16(&pseudo, 0);
    let value = if partial {
        ph as u16
    } else {
        !(sum16(&p[l4..], ph) as u16)
    };
    p[at..at + 2].copy_from_slice(&value.to_be_bytes());
}
