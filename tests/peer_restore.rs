//! `PeerTable::restore` against the real kernel: peers deleted, changed and added behind
//! lwtun's back (raw map writes on the pinned tables, as `bpftool map delete|update` does) are
//! put back to what the tunnel wrote, as the pinned tables show them to any reader; a second
//! call finds nothing to do.

mod common;

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use lwtun::peer::{Encap, EncapPeer};
use lwtun::tunnel::Tunnel;

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

/// `struct lwtun_peer_key4` of an IPv4 prefix.
fn key4(prefix: &str) -> Vec<u8> {
    let n: ipnetwork::Ipv4Network = prefix.parse().unwrap();
    let mut k = u32::from(n.prefix()).to_ne_bytes().to_vec();
    k.extend(n.network().octets());
    k
}

#[test]
fn restore_puts_back_what_was_written_behind_lwtuns_back() {
    require!();
    let pin = common::PinDir::new("peer-restore");
    let mut tunnel = Tunnel::builder()
        .capacity(16_384)
        .pin(&pin.0)
        .load()
        .unwrap();
    let peer = |r: &str| {
        EncapPeer::new(
            r.parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
            Encap::Udp { port: 6081 },
        )
    };
    let written = [
        (net("10.1.0.0/16"), peer("192.0.2.11")),
        (net("10.2.0.0/16"), peer("192.0.2.12")),
        (net("10.3.0.0/16"), peer("192.0.2.13")),
    ];
    tunnel.peers_mut().insert_batch(&written).unwrap();
    let want: BTreeMap<IpNetwork, EncapPeer> = written.iter().copied().collect();
    assert_eq!(common::kernel_peers(&pin.0), want);
    assert_eq!(
        tunnel.peers_mut().restore().unwrap(),
        0,
        "nothing changed yet"
    );

    // Behind lwtun's back: 10.1/16 deleted, 10.2/16 given 10.3/16's value, 10.9/16 added.
    let v4 = MapHandle::from_pinned_path(pin.0.join("peers_v4")).unwrap();
    v4.delete(&key4("10.1.0.0/16")).unwrap();
    let other = v4
        .lookup(&key4("10.3.0.0/16"), MapFlags::ANY)
        .unwrap()
        .unwrap();
    v4.update(&key4("10.2.0.0/16"), &other, MapFlags::EXIST)
        .unwrap();
    v4.update(&key4("10.9.0.0/16"), &other, MapFlags::NO_EXIST)
        .unwrap();
    let changed = common::kernel_peers(&pin.0);
    assert_ne!(changed, want);
    assert_eq!(changed.len(), 3);

    assert_eq!(tunnel.peers_mut().restore().unwrap(), 3);
    assert_eq!(common::kernel_peers(&pin.0), want);
    assert_eq!(tunnel.peers().len(), 3);
    assert_eq!(tunnel.peers_mut().restore().unwrap(), 0, "restored already");

    // What a periodic check costs: 10 000 peers, nothing to do.
    let many: Vec<(IpNetwork, EncapPeer)> = (0..10_000u32)
        .map(|i| {
            let p = IpNetwork::new(
                [10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8].into(),
                32,
            );
            (p.unwrap(), peer("192.0.2.14"))
        })
        .collect();
    tunnel.peers_mut().insert_batch(&many).unwrap();
    let t = std::time::Instant::now();
    assert_eq!(tunnel.peers_mut().restore().unwrap(), 0);
    let took = t.elapsed();
    v4.delete(&key4("10.100.0.7/32")).unwrap();
    assert_eq!(tunnel.peers_mut().restore().unwrap(), 1);
    assert_eq!(common::kernel_peers(&pin.0).len(), 10_003);
    eprintln!(
        "figure: restore() over 10 003 peers with nothing to put back: {:.1} ms",
        took.as_secs_f64() * 1e3
    );
}
