//! The peers the table benches write (10.0.0.0/32 upwards, GRE to 192.0.2.x) and the encap's
//! lookup cost on a frame to one of them.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use lwtun::peer::{Encap, EncapPeer};
use lwtun::tunnel::Tunnel;

/// Peer `i`'s prefix: 10.0.0.0/32 + i.
pub fn prefix(i: u32) -> IpNetwork {
    IpNetwork::new(IpAddr::from((0x0a00_0000 | i).to_be_bytes()), 32).unwrap()
}

/// Peer `i`: GRE with key `i` to one of 250 remotes.
pub fn peer(i: u32) -> EncapPeer {
    let remote = IpAddr::from([192, 0, 2, (i % 250 + 2) as u8]);
    EncapPeer::new(
        remote,
        "192.0.2.1".parse().unwrap(),
        Encap::Gre {
            key: Some(i),
            checksum: false,
        },
    )
}

/// `n` peers for 10.0.0.0/32 upwards, in prefix order.
pub fn peers(n: u32) -> Vec<(IpNetwork, EncapPeer)> {
    (0..n).map(|i| (prefix(i), peer(i))).collect()
}

/// An Ethernet frame carrying an IPv4 packet to peer `i`'s address.
pub fn frame_to(i: u32) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 30, 0, 1]);
    f.extend_from_slice(&(0x0a00_0000u32 | i).to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x56, 0x78, 0, 8, 0, 0]);
    f
}

const REPEAT: u32 = 200_000;

/// Mean ns per run of encap_preview (the encap's lookup and header code) on a frame to peer `i`.
pub fn lookup_ns(t: &Tunnel, i: u32) -> f64 {
    let run = lwtun::decap::test_run(t.preview_program(), &frame_to(i), REPEAT).expect("test_run");
    assert_eq!(run.verdict, 0, "the frame matches a peer");
    run.duration.as_nanos() as f64
}

/// Mean ns per run of the decap family's pass-only tc program: the test_run floor.
pub fn baseline_ns() -> f64 {
    let d = lwtun::decap::Decap::load().expect("load decap");
    let run = lwtun::decap::test_run(d.baseline_program(), &frame_to(0), REPEAT).expect("test_run");
    run.duration.as_nanos() as f64
}
