//! A big tunnel's tables are emptied step by step when it goes, not left whole to the kernel
//! (whose free of a big LPM trie holds a CPU): in the background on drop, before returning on
//! `Tunnel::close`, never for tables kept pinned or with `drain_on_drop(false)`. The tables are
//! watched through a handle of the test's own, opened by map id, which keeps them alive: what
//! the test sees in them is what the tunnel did to them.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use libbpf_rs::{MapCore, MapHandle};
use lwtun::peer::{Encap, EncapPeer};
use lwtun::tunnel::Tunnel;

const PEERS: u32 = 150_000;

fn filled(builder: lwtun::tunnel::TunnelBuilder) -> (Tunnel, MapHandle) {
    let mut t = builder.capacity(PEERS).load().unwrap();
    let peer = EncapPeer::new(
        "192.0.2.2".parse::<IpAddr>().unwrap(),
        "192.0.2.1".parse::<IpAddr>().unwrap(),
        Encap::Ipip,
    );
    let input: Vec<(IpNetwork, EncapPeer)> = (0..PEERS)
        .map(|i| {
            let a = std::net::Ipv4Addr::from(0x0a00_0000u32 | i);
            (IpNetwork::new(IpAddr::V4(a), 32).unwrap(), peer)
        })
        .collect();
    t.peers_mut().insert_batch(&input).unwrap();
    let id = t
        .map_ids()
        .into_iter()
        .find(|(name, _)| name == "peers_v4")
        .map(|(_, id)| id)
        .unwrap();
    let watch = MapHandle::from_map_id(id).unwrap();
    (t, watch)
}

fn is_empty(map: &MapHandle) -> bool {
    map.keys().next().is_none()
}

fn count(map: &MapHandle) -> usize {
    map.keys().count()
}

#[test]
fn dropping_a_big_tunnel_empties_its_tables_in_the_background() {
    require!();
    let (t, watch) = filled(Tunnel::builder());
    assert_eq!(count(&watch), PEERS as usize);
    let t0 = Instant::now();
    drop(t);
    let returned = t0.elapsed();
    let deadline = Instant::now() + common::patient(Duration::from_secs(10));
    while !is_empty(&watch) {
        assert!(
            Instant::now() < deadline,
            "the dropped tunnel's table still holds {} peers",
            count(&watch)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "drop returned after {returned:?}; table empty after {:?}",
        t0.elapsed()
    );
}

#[test]
fn close_empties_the_tables_before_it_returns() {
    require!();
    let (t, watch) = filled(Tunnel::builder());
    t.close();
    assert!(is_empty(&watch), "{} peers left", count(&watch));
}

#[test]
fn kept_pins_and_drain_on_drop_false_leave_the_table_whole() {
    require!();
    let (t, watch) = filled(Tunnel::builder().drain_on_drop(false));
    drop(t);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(&watch), PEERS as usize, "drain_on_drop(false)");

    let folder = format!("/sys/fs/bpf/lwtun-test-drain-{}", std::process::id());
    let (mut t, watch) = filled(Tunnel::builder().pin(&folder));
    t.keep_pinned();
    t.close();
    assert_eq!(count(&watch), PEERS as usize, "kept pins");
    // Adopt and let go for real: the pins are removed with the tunnel.
    let t = Tunnel::builder().pin(&folder).load().unwrap();
    assert!(t.adopted());
    t.close();
    assert!(is_empty(&watch));
    assert!(!std::path::Path::new(&folder).exists());
}
