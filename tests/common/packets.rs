//! Frames and packets for BPF_PROG_TEST_RUN tests, built byte by byte with valid checksums:
//! Ethernet (and 802.1Q), IPv4, IPv6, ICMP, ICMPv6 and UDP. Every IPv4 header has id 0x1234; ICMP
//! messages are echo id 7, sequence 1.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The ones'-complement sum of `data` as 16-bit big-endian words, added to `acc` (not folded).
pub fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for chunk in data.chunks(2) {
        let w = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        acc += w as u32;
    }
    acc
}

/// The internet checksum of a [`sum16`]: folded to 16 bits and complemented.
pub fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// An Ethernet frame: `dst`, `src`, `ethertype`, then `payload`.
pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An 802.1Q tag's body (TCI `tag`, then the inner `ethertype`) before `payload`: the payload
/// of an Ethernet frame of type 0x8100.
pub fn vlan(tag: u16, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = tag.to_be_bytes().to_vec();
    v.extend_from_slice(&ethertype.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// An IPv4 packet (no options, TOS 0, id 0x1234, `frag` as flags and offset) with its header
/// checksum.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ttl: u8,
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[ttl, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = fold(sum16(&h, 0));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// An ICMP message of type `ty` (code 0, id 7, sequence 1) with its checksum.
pub fn icmp(ty: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0, 0x00, 0x07, 0x00, 0x01];
    m.extend_from_slice(payload);
    let c = fold(sum16(&m, 0));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// The sum of the IPv6 pseudo-header of an upper-layer packet of `len` bytes.
pub fn v6_pseudo(src: Ipv6Addr, dst: Ipv6Addr, len: usize, next: u8) -> u32 {
    let mut p = Vec::new();
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, next]);
    sum16(&p, 0)
}

/// An ICMPv6 message of type `ty` (code 0, id 7, sequence 1) with its checksum.
pub fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0, 0x00, 0x07, 0x00, 0x01];
    m.extend_from_slice(payload);
    let c = fold(sum16(&m, v6_pseudo(src, dst, m.len(), 58)));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An IPv6 packet (no extension headers, traffic class and flow label 0).
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, hop]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// A UDP datagram (checksum 0: none, which IPv4 allows and lwtun's programs do not check).
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(8 + payload.len());
    d.extend_from_slice(&sport.to_be_bytes());
    d.extend_from_slice(&dport.to_be_bytes());
    d.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(payload);
    d
}
