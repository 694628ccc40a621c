//! Map-in-map forwarding tables: a TableStage's table (an inner map of an ARRAY_OF_MAPS) rebuilt
//! aside and swapped in whole under a steady ping flow with nothing lost, a swap to a table
//! without the destination taking effect at once, and the typed HASH_OF_MAPS/ARRAY_OF_MAPS
//! wrappers with their refusals.
mod common;

use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use libbpf_rs::MapType;
use lwtun::chain::{ChainHook, ProgChain, TableStage};
use lwtun::netlink::Netlink;
use lwtun::program::Hook;
use lwtun::route::LwtRoute;
use lwtun::table::{InnerSpec, MapOfMaps, OuterKind};
use lwtun::ErrorKind;

#[test]
fn forwarding_table_swaps_whole_under_traffic_without_loss() {
    require!();
    let mut chain = ProgChain::new(ChainHook::LwtXmit).unwrap();
    let stage = TableStage::load(&chain).unwrap();
    chain.push(stage.program()).unwrap();
    let net = common::two_hosts();
    let mut nl = Netlink::open_in(net.ns(0)).unwrap();
    let dev = nl.device("to1").unwrap();
    let _route = LwtRoute::new(format!("{}/32", net.v4(1)).parse().unwrap())
        .device(&dev)
        .program(Hook::Xmit, chain.lwt_entry().unwrap())
        .install(&mut nl)
        .unwrap();
    let dst = net.v4(1);

    // The table loaded in place is empty: every packet misses and is dropped.
    let p = common::ping(net.ns(0), dst.into(), 2);
    assert_eq!(p.received, 0, "{}", p.output);
    assert_eq!(stage.hits(0).unwrap().packets, 2, "misses counted");

    let build = |tag: u32| {
        let t = stage.new_table().unwrap();
        for i in 1..=200u8 {
            t.insert(Ipv4Addr::new(10, 99, 0, i), 1).unwrap();
        }
        t.insert(dst, tag).unwrap();
        t
    };
    let v1 = build(1);
    // A new table carries the BTF of the one loaded in place (the kernel compares it at the
    // swap; bpftool prints entries by field with it).
    let shown = std::process::Command::new("bpftool")
        .args(["-j", "map", "show", "id", &v1.id().unwrap().to_string()])
        .output()
        .unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert!(
        shown["btf_id"].as_u64().is_some_and(|id| id > 0),
        "a new table has BTF: {shown}"
    );
    let initial = stage.current().unwrap();
    assert_eq!(
        stage.swap(&v1).unwrap(),
        initial,
        "swap returns the replaced table"
    );
    assert_eq!(stage.current().unwrap(), Some(v1.id().unwrap()));
    let p = common::ping(net.ns(0), dst.into(), 3);
    assert_eq!(p.received, 3, "{}", p.output);
    assert_eq!(stage.hits(1).unwrap().packets, 3);

    // Swapping under a steady flow: tables tagged 1 and 2 alternate, each built aside.
    const COUNT: u32 = 400;
    let ns0 = net.ns(0);
    let target = dst.to_string();
    let ns1 = net.ns(1);
    let (out, swaps, tcp) = std::thread::scope(|s| {
        // A TCP stream of a known pattern alongside the pings, through the same route.
        let tcp = s.spawn(|| common::tcp_stream(ns1, ns0, dst.into(), 32 << 20));
        let flow = s.spawn(|| common::ping_flow(ns0, &target, COUNT));
        let mut swaps = 0u32;
        while !flow.is_finished() {
            let t = build(1 + swaps % 2);
            stage.swap(&t).unwrap();
            swaps += 1;
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        (flow.join().unwrap(), swaps, tcp.join().unwrap())
    });
    assert!(tcp.complete(), "TCP across the swaps: {tcp:?}");
    eprintln!(
        "{swaps} table swaps under {COUNT} pings and a 32 MB TCP stream ({:?}): nothing lost",
        tcp.elapsed
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(swaps > 50, "only {swaps} swaps");
    assert!(
        text.contains(&format!("{COUNT} packets transmitted, {COUNT} received")),
        "no packet lost over {swaps} swaps:\n{text}"
    );
    let (h1, h2) = (
        stage.hits(1).unwrap().packets,
        stage.hits(2).unwrap().packets,
    );
    assert!(
        h1 + h2 > 3 + u64::from(COUNT),
        "every request and the TCP segments hit one table: {h1} + {h2}"
    );
    assert!(h2 > 0 && h1 > 3, "both tables served traffic: {h1} {h2}");
    assert_eq!(
        stage.hits(0).unwrap().packets,
        2,
        "no miss during the swaps"
    );

    // A table without the destination takes effect at the next packet.
    let without = stage.new_table().unwrap();
    without.insert(Ipv4Addr::new(10, 99, 0, 1), 3).unwrap();
    stage.swap(&without).unwrap();
    let p = common::ping(net.ns(0), dst.into(), 2);
    assert_eq!(p.received, 0, "{}", p.output);
    assert_eq!(stage.hits(0).unwrap().packets, 4);
    assert!(
        stage.new_table().unwrap().insert(dst, 0).is_err(),
        "tag 0 is the miss counter"
    );
}

#[test]
fn maps_of_maps_are_typed_and_refuse_mismatches() {
    require!();
    let spec = InnerSpec {
        map_type: MapType::Hash,
        key_size: 4,
        value_size: 8,
        max_entries: 16,
        flags: 0,
        btf: None,
    };
    let by_peer = MapOfMaps::create_hash("lwtun_t_hom", 16, &spec, 8).unwrap();
    assert_eq!(by_peer.kind(), OuterKind::Hash);
    let key = [7u8; 16];
    assert_eq!(by_peer.get(&key).unwrap(), None);
    let a = spec.create("lwtun_t_a").unwrap();
    a.insert(&[1, 2, 3, 4], &[9; 8]).unwrap();
    assert_eq!(by_peer.swap(&key, &a).unwrap(), None);
    assert_eq!(by_peer.get(&key).unwrap(), Some(a.id().unwrap()));
    let b = spec.create("lwtun_t_b").unwrap();
    assert_eq!(by_peer.swap(&key, &b).unwrap(), Some(a.id().unwrap()));
    assert!(by_peer.remove(&key).unwrap());
    assert!(!by_peer.remove(&key).unwrap());

    // Wrong key size, wrong value size, a table of another shape, a map that is no map of maps.
    assert_eq!(
        by_peer.get(&[0; 4]).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        a.insert(&[1, 2, 3, 4], &[0; 4]).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let other = InnerSpec {
        value_size: 16,
        ..spec
    }
    .create("lwtun_t_c")
    .unwrap();
    assert!(
        by_peer.swap(&key, &other).is_err(),
        "a table of another shape is refused"
    );
    let arr = MapOfMaps::create_array("lwtun_t_aom", &spec, 2).unwrap();
    assert_eq!(arr.kind(), OuterKind::Array);
    assert!(
        arr.swap(&5u32.to_ne_bytes(), &a).is_err(),
        "past the array's end"
    );
    assert_eq!(
        MapOfMaps::from_map(a.as_fd()).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let again = MapOfMaps::from_map(arr.as_fd()).unwrap();
    again.swap(&1u32.to_ne_bytes(), &a).unwrap();
    assert_eq!(arr.get(&1u32.to_ne_bytes()).unwrap(), Some(a.id().unwrap()));
}
