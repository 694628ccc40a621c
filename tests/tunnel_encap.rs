//! The LWT encap data plane end to end: a [`Tunnel`] in host A steers a prefix through its
//! `lwt_xmit` program, which pushes the peer's outer header; tcpdump on the underlay in host B
//! shows the outer headers (protocol 4, 41, 47 or the UDP port, with the peer's addresses), and
//! the per-peer counters match what was sent. Miss policies and run-time peer changes too.
//!
//! ```text
//!  A (inner 10.30.0.1, fd30::1 on lo)  ── to1 ═══ veth underlay ═══ to0 ──  B (10.20.0.2, fd20::2 on lo)
//!        10.77.0.1 / fd77:0::1                                            10.77.0.2 / fd77:0::2
//! ```

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::Capture;
use lwtun::netlink::Netlink;
use lwtun::peer::{Encap, EncapPeer, MissPolicy};
use lwtun::tunnel::Tunnel;
use lwtun::ErrorKind;

const A_INNER4: &str = "10.30.0.1";
const A_INNER6: &str = "fd30::1";
const B_INNER4: &str = "10.20.0.2";
const B_INNER6: &str = "fd20::2";

struct Setup {
    net: common::Line,
    nl: Netlink,
    tunnel: Tunnel,
    underlay: lwtun::device::Device,
}

fn a_outer(v6: bool) -> IpAddr {
    if v6 {
        "fd77:0::1".parse().unwrap()
    } else {
        "10.77.0.1".parse().unwrap()
    }
}

fn b_outer(v6: bool) -> IpAddr {
    if v6 {
        "fd77:0::2".parse().unwrap()
    } else {
        "10.77.0.2".parse().unwrap()
    }
}

fn setup() -> Setup {
    let net = common::two_hosts();
    for (i, v4, v6) in [(0, A_INNER4, A_INNER6), (1, B_INNER4, B_INNER6)] {
        common::ip(net.ns(i), &["link", "set", "lo", "up"]);
        common::ip(
            net.ns(i),
            &["addr", "add", &format!("{v4}/32"), "dev", "lo"],
        );
        common::ip(
            net.ns(i),
            &["-6", "addr", "add", &format!("{v6}/128"), "dev", "lo"],
        );
    }
    let nl = Netlink::open_in(net.ns(0)).unwrap();
    let underlay = net.device(0, "to1");
    let tunnel = Tunnel::load().unwrap();
    Setup {
        net,
        nl,
        tunnel,
        underlay,
    }
}

impl Setup {
    /// Routes B's inner prefixes (v4 and v6) from A into the tunnel.
    fn steer(&mut self) {
        for (prefix, src) in [("10.20.0.0/16", A_INNER4), ("fd20::/16", A_INNER6)] {
            let route = self
                .tunnel
                .route(prefix.parse().unwrap())
                .device(&self.underlay)
                .source(src.parse().unwrap());
            self.tunnel.steer(&mut self.nl, route).unwrap();
        }
    }

    fn ping(&self, inner_v6: bool, count: u32) -> common::Ping {
        let (src, dst) = if inner_v6 {
            (A_INNER6, B_INNER6)
        } else {
            (A_INNER4, B_INNER4)
        };
        common::ping_with(
            self.net.ns(0),
            dst.parse().unwrap(),
            count,
            &["-I", src, "-i", "0.1", "-W", "1"],
        )
    }
}

fn b_prefix(inner_v6: bool) -> ipnetwork::IpNetwork {
    if inner_v6 {
        "fd20::/16"
    } else {
        "10.20.0.0/16"
    }
    .parse()
    .unwrap()
}

/// Sends 4 pings through `encap` (outer/inner family as given) and checks the outer headers on
/// the underlay and the peer's counters.
fn encap_on_the_wire(encap: Encap, outer_v6: bool, inner_v6: bool, filter: &str, expect: &str) {
    let mut s = setup();
    let peer = EncapPeer::new(b_outer(outer_v6), a_outer(outer_v6), encap).ttl(33);
    s.tunnel
        .peers_mut()
        .insert(b_prefix(inner_v6), peer)
        .unwrap();
    s.steer();
    let cap = Capture::start_with(s.net.ns(1), "to0", filter, 4, &["-v"]);
    let _ = s.ping(inner_v6, 4); // no decap in B: the requests are what we look at
    let lines = cap.finish(Duration::from_secs(3));
    let text = lines.join("\n");
    assert!(
        lines.len() >= 4,
        "{encap} outer v6 {outer_v6} inner v6 {inner_v6}: expected 4 packets matching `{filter}`, got:\n{text}"
    );
    assert!(
        text.contains(expect),
        "{encap}: expected `{expect}` in:\n{text}"
    );
    let (src, dst) = (a_outer(outer_v6), b_outer(outer_v6));
    assert!(
        text.contains(&format!("{src} > {dst}")) || text.contains(&format!("{src}.")),
        "outer addresses {src} > {dst} not in:\n{text}"
    );
    let (inner_src, inner_dst) = if inner_v6 {
        (A_INNER6, B_INNER6)
    } else {
        (A_INNER4, B_INNER4)
    };
    // tcpdump does not decode FOU; for UDP the datagram's length shows the inner packet instead.
    let inner_len = if inner_v6 { 40 + 8 + 56 } else { 20 + 8 + 56 };
    assert!(
        text.contains(&format!("{inner_src} > {inner_dst}"))
            || (matches!(encap, Encap::Udp { .. })
                && text.contains(&format!("UDP, length {inner_len}"))),
        "inner {inner_src} > {inner_dst} not decoded in:\n{text}"
    );
    let stats = s.tunnel.peers().stats(b_prefix(inner_v6)).unwrap();
    assert_eq!(stats.packets, 4, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert_eq!(stats.bytes, 4 * inner_len, "{stats:?}");
}

#[test]
fn gre_4in4_on_the_wire() {
    require!();
    encap_on_the_wire(
        Encap::Gre {
            key: None,
            checksum: false,
        },
        false,
        false,
        "ip proto 47",
        "ttl 33",
    );
}

#[test]
fn gre_key_6in6_on_the_wire() {
    require!();
    encap_on_the_wire(
        Encap::Gre {
            key: Some(0x1234),
            checksum: false,
        },
        true,
        true,
        "ip6 proto 47",
        "key=0x1234",
    );
}

#[test]
fn ipip_4in4_and_6in4_on_the_wire() {
    require!();
    encap_on_the_wire(Encap::Ipip, false, false, "ip proto 4", "proto IPIP (4)");
    encap_on_the_wire(Encap::Ipip, false, true, "ip proto 41", "proto IPv6 (41)");
}

#[test]
fn ipip_4in6_and_6in6_on_the_wire() {
    require!();
    encap_on_the_wire(Encap::Ipip, true, false, "ip6 proto 4", "IPIP (4)");
    encap_on_the_wire(Encap::Ipip, true, true, "ip6 proto 41", "IPv6 (41)");
}

#[test]
fn udp_4in4_and_4in6_on_the_wire() {
    require!();
    encap_on_the_wire(
        Encap::Udp { port: 5555 },
        false,
        false,
        "udp dst port 5555",
        ".5555:",
    );
    encap_on_the_wire(
        Encap::Udp { port: 5555 },
        true,
        false,
        "ip6 and udp dst port 5555",
        ".5555:",
    );
}

#[test]
fn miss_policy_drop_and_pass() {
    require!();
    let mut s = setup();
    s.steer(); // no peers: every packet misses
    let cap = Capture::start(s.net.ns(1), "to0", "icmp and host 10.20.0.2", 3);
    let p = s.ping(false, 3);
    assert_eq!(p.received, 0);
    let misses = s.tunnel.peers().miss_counters().unwrap();
    assert_eq!(misses.dropped_v4, 3, "{misses:?}");
    assert_eq!(misses.passed_v4, 0, "{misses:?}");
    // Pass: the requests leave unencapsulated (B answers them: it owns 10.20.0.2 and routes
    // back over the underlay since it knows 10.30.0.1 through its default... it does not, so
    // only the requests are checked on the wire).
    s.tunnel
        .peers_mut()
        .set_miss_policy(false, MissPolicy::Pass)
        .unwrap();
    let _ = s.ping(false, 3);
    let lines = cap.finish(Duration::from_secs(3));
    assert_eq!(
        lines.len(),
        3,
        "passed packets must appear plain on the underlay (only after the policy change): {lines:?}"
    );
    assert!(lines.iter().all(|l| l.contains("10.30.0.1 > 10.20.0.2")));
    let misses = s.tunnel.peers().miss_counters().unwrap();
    assert_eq!((misses.dropped_v4, misses.passed_v4), (3, 3), "{misses:?}");
    assert_eq!(
        s.tunnel.peers().miss_policy(true).unwrap(),
        MissPolicy::Drop
    );
}

#[test]
fn routes_and_fixups_go_with_the_tunnel() {
    require!();
    let mut s = setup();
    s.steer();
    let shown = common::ip(s.net.ns(0), &["route", "show", "10.20.0.0/16"]);
    assert!(shown.contains("encap bpf xmit"), "{shown}");
    assert_eq!(
        s.tunnel.headroom(),
        lwtun::tunnel::WORST_CASE_ENCAP,
        "no peers yet: the worst case"
    );
    assert_eq!(
        lwtun::tunnel::WORST_CASE_ENCAP,
        40 + 12,
        "IPv6 + GRE with checksum and key"
    );
    let Setup {
        net, nl, tunnel, ..
    } = s;
    drop(tunnel);
    drop(nl);
    let shown = common::ip(net.ns(0), &["route", "show", "10.20.0.0/16"]);
    assert!(shown.trim().is_empty(), "route left behind: {shown}");
    let tc = common::run_in(net.ns(0), "bpftool", &["net", "show", "dev", "to1"]).unwrap();
    assert!(!tc.contains("ipip_gso_fixup"), "fix-up left behind: {tc}");
}

#[test]
fn peer_table_refusals() {
    require!();
    let mut tunnel = Tunnel::builder().capacity(2).load().unwrap();
    let peers = tunnel.peers_mut();
    let v4: IpAddr = "192.0.2.2".parse().unwrap();
    let v6: IpAddr = "2001:db8::2".parse().unwrap();
    let mixed = EncapPeer::new(v4, v6, Encap::Ipip);
    let err = peers
        .insert("10.0.0.0/8".parse().unwrap(), mixed)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let ok = EncapPeer::new(v4, "192.0.2.1".parse().unwrap(), Encap::Ipip);
    peers.insert("10.1.2.3/8".parse().unwrap(), ok).unwrap();
    assert_eq!(peers.get("10.0.0.0/8".parse().unwrap()), Some(&ok));
    let err = peers.insert("10.0.0.0/8".parse().unwrap(), ok).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Exists, "{err}");
    peers.insert("10.2.0.0/16".parse().unwrap(), ok).unwrap();
    let err = peers
        .insert("10.3.0.0/16".parse().unwrap(), ok)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "full: {err}");
    let zero_port = EncapPeer::new(v4, "192.0.2.1".parse().unwrap(), Encap::Udp { port: 0 });
    assert_eq!(
        peers
            .replace("10.2.0.0/16".parse().unwrap(), zero_port)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
    let err = peers.remove("10.9.0.0/16".parse().unwrap()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(
        peers.lookup("10.2.3.4".parse().unwrap()).map(|(n, _)| n),
        Some("10.2.0.0/16".parse().unwrap())
    );
    peers.remove("10.0.0.0/8".parse().unwrap()).unwrap();
    assert_eq!(peers.len(), 1);
}

#[test]
fn batch_insert_and_remove() {
    require!();
    let mut tunnel = Tunnel::builder().capacity(20_000).load().unwrap();
    let local: IpAddr = "192.0.2.1".parse().unwrap();
    let batch: Vec<_> = (0..10_000u32)
        .map(|i| {
            let prefix =
                ipnetwork::IpNetwork::new(IpAddr::from([10, (i >> 8) as u8, i as u8, 0]), 24)
                    .unwrap();
            let remote = IpAddr::from([192, 0, 2, (i % 250 + 2) as u8]);
            (
                prefix,
                EncapPeer::new(
                    remote,
                    local,
                    Encap::Gre {
                        key: Some(i),
                        checksum: false,
                    },
                ),
            )
        })
        .collect();
    tunnel.peers_mut().insert_batch(&batch).unwrap();
    assert_eq!(tunnel.peers().len(), 10_000);
    // The kernel holds them: bpftool counts the trie's entries.
    let id = tunnel
        .map_ids()
        .into_iter()
        .find(|(n, _)| n == "peers_v4")
        .unwrap()
        .1;
    assert_eq!(bpftool_elements(id), 10_000);
    // A prefix that has a peer already is refused before anything is written.
    let err = tunnel.peers_mut().insert_batch(&batch[..2]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Exists, "{err}");
    assert_eq!(tunnel.peers().len(), 10_000);
    let prefixes: Vec<_> = batch.iter().map(|(p, _)| *p).take(5_000).collect();
    tunnel.peers_mut().remove_batch(&prefixes).unwrap();
    assert_eq!(tunnel.peers().len(), 5_000);
    assert_eq!(bpftool_elements(id), 5_000);
}

/// The number of elements `bpftool -j map dump` lists (each has one "formatted" value, as the
/// map carries BTF).
fn bpftool_elements(id: u32) -> usize {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "id", &id.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "bpftool map dump id {id} failed");
    String::from_utf8_lossy(&out.stdout)
        .matches("\"formatted\"")
        .count()
}

/// Pinned tables outlive their tunnel with `keep_pinned` and a later tunnel adopts them: the same
/// peers (and kinds, keys, TTL/TOS modes), policies, capacity and counter slots; bpftool reads
/// the pins; the adopting tunnel removes the pins when it drops.
#[test]
fn pinned_tables_are_adopted() {
    require!();
    let dir = common::PinDir::new("tunnel");
    let folder = dir.0.clone();
    let local: IpAddr = "192.0.2.1".parse().unwrap();
    let v6local: IpAddr = "2001:db8::1".parse().unwrap();
    let peers = [
        (
            "10.1.0.0/16",
            EncapPeer::new(
                "192.0.2.2".parse().unwrap(),
                local,
                Encap::Gre {
                    key: Some(9),
                    checksum: false,
                },
            )
            .ttl(7),
        ),
        (
            "10.2.0.0/24",
            EncapPeer::new("192.0.2.3".parse().unwrap(), local, Encap::Ipip).inherit_tos(),
        ),
        (
            "fd20::/16",
            EncapPeer::new(
                "2001:db8::2".parse().unwrap(),
                v6local,
                Encap::Udp { port: 7777 },
            )
            .inherit_ttl(),
        ),
    ];
    let mut first = Tunnel::builder().capacity(64).pin(&folder).load().unwrap();
    assert!(!first.adopted());
    for (p, peer) in &peers {
        first.peers_mut().insert(p.parse().unwrap(), *peer).unwrap();
    }
    first
        .peers_mut()
        .remove("10.1.0.0/16".parse().unwrap())
        .unwrap();
    first
        .peers_mut()
        .insert("10.1.0.0/16".parse().unwrap(), peers[0].1)
        .unwrap();
    first
        .peers_mut()
        .set_miss_policy(true, MissPolicy::Pass)
        .unwrap();
    first.keep_pinned();
    drop(first);
    let dump = common_bpftool(&folder.join("peers_v4"));
    assert!(
        dump.contains("\"gre_key\""),
        "bpftool shows field names: {dump}"
    );

    let mut second = Tunnel::builder()
        .capacity(9999)
        .pin(&folder)
        .load()
        .unwrap();
    assert!(second.adopted());
    assert_eq!(second.peers().capacity(), 64, "the pinned capacity wins");
    assert_eq!(second.peers().len(), 3);
    for (p, peer) in &peers {
        assert_eq!(second.peers().get(p.parse().unwrap()), Some(peer), "{p}");
    }
    assert_eq!(second.peers().miss_policy(true).unwrap(), MissPolicy::Pass);
    assert_eq!(second.peers().miss_policy(false).unwrap(), MissPolicy::Drop);
    // New peers take free counter slots without clashing with the adopted ones.
    second
        .peers_mut()
        .insert("10.3.0.0/16".parse().unwrap(), peers[1].1)
        .unwrap();
    let frame = {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        f.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 30, 0, 1]);
        f.extend_from_slice(&[10, 1, 2, 3, 0, 1, 0, 2, 0, 8, 0, 0]);
        f
    };
    let h = second
        .preview(&frame)
        .unwrap()
        .expect("the adopted peer answers");
    assert_eq!((h[8], h[9]), (7, 47), "TTL 7, GRE");
    drop(second);
    assert!(!folder.exists(), "pins removed with the adopting tunnel");
}

fn common_bpftool(pin: &std::path::Path) -> String {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
