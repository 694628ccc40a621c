//! The checked direct path (`DirectMode::Checked`, the default): a tunnel host A with two
//! underlay links to peer host P, ping at 100/s through the tunnel while the underlay changes
//! under it. The peer's packets go direct (the inner route's next hop) exactly while the outer
//! route lookup would pick that next hop too, and are routed again otherwise; `path_counters`
//! and `direct_status` show which; no ping is lost. The control: the same change with
//! `DirectMode::Always` loses the traffic that the check saves.
//!
//! ```text
//!        a0 10.61.1.1 ══ link 1 ══ 10.61.1.2 p0
//!  A  ──                                          ── P   remote 10.69.9.9, inner 10.20.0.1 (lo)
//!  (inner 10.30.0.1)
//!        a1 10.61.2.1 ══ link 2 ══ 10.61.2.2 p1          replies: plain IP over link 2
//! ```

mod common;

use std::net::IpAddr;
use std::process::Child;
use std::thread::sleep;
use std::time::{Duration, Instant};

use lwtun::decap::{Decap, DecapPeer};
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::peer::{Encap, EncapPeer};
use lwtun::tunnel::{DirectMode, PathCounters, Tunnel};

const REMOTE: &str = "10.69.9.9";
const INNER_A: &str = "10.30.0.1";
const INNER_P: &str = "10.20.0.1";
const GW1: &str = "10.61.1.2";
const GW2: &str = "10.61.2.2";
const LOCAL: &str = "10.61.1.1";

struct World {
    a: NetNs,
    p: NetNs,
    tunnel: Tunnel,
    _decap: Decap,
    _nl: Netlink,
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A and P, both links up, P's decap on both, the remote routed over `remote_via` (1 or 2),
/// and the tunnel's routes for `10.20.0.0/16`: `(link, metric)` each.
fn world(mode: DirectMode, remote_via: &[(u8, u32)], tunnel_routes: &[(u8, u32)]) -> World {
    let a = common::netns("dca");
    let p = common::netns("dcp");
    for ns in [&a, &p] {
        // Replies come back over link 2 whichever link carried the request, and P receives the
        // decapsulated requests on either: loose reverse-path checks are the point of the set-up.
        for key in [
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.default.rp_filter",
        ] {
            ns.set_sysctl(key, "0").unwrap();
        }
    }
    for (i, (ours, theirs)) in [("a0", "p0"), ("a1", "p1")].iter().enumerate() {
        common::ip(
            &a,
            &[
                "link",
                "add",
                ours,
                "type",
                "veth",
                "peer",
                "name",
                theirs,
                "netns",
                p.name(),
            ],
        );
        let net = format!("10.61.{}", i + 1);
        common::ip(&a, &["addr", "add", &format!("{net}.1/24"), "dev", ours]);
        common::ip(&p, &["addr", "add", &format!("{net}.2/24"), "dev", theirs]);
        common::ip(&a, &["link", "set", ours, "up"]);
        common::ip(&p, &["link", "set", theirs, "up"]);
    }
    common::wait_oper_up(&a, &["a0".into(), "a1".into()]);
    common::ip(&a, &["addr", "add", &format!("{INNER_A}/32"), "dev", "lo"]);
    common::ip(&p, &["addr", "add", &format!("{INNER_P}/32"), "dev", "lo"]);
    common::ip(&p, &["addr", "add", &format!("{REMOTE}/32"), "dev", "lo"]);
    common::ip(&p, &["route", "add", "10.30.0.0/16", "via", "10.61.2.1"]);
    for &(link, metric) in remote_via {
        route_remote(&a, "add", link, metric);
    }

    let mut decap = Decap::load().unwrap();
    decap.add_local(addr(REMOTE)).unwrap();
    decap.add_peer(DecapPeer::host(addr(LOCAL))).unwrap();
    decap.attach(&common::device(&p, "p0")).unwrap();
    decap.attach(&common::device(&p, "p1")).unwrap();

    let mut nl = Netlink::open_in(&a).unwrap();
    let mut tunnel = Tunnel::builder()
        .direct_mode(mode)
        .source(addr(INNER_A))
        .load()
        .unwrap();
    tunnel
        .peers_mut()
        .insert(
            "10.20.0.0/16".parse().unwrap(),
            EncapPeer::new(
                addr(REMOTE),
                addr(LOCAL),
                Encap::Gre {
                    key: None,
                    checksum: false,
                },
            ),
        )
        .unwrap();
    for &(link, metric) in tunnel_routes {
        let route = tunnel
            .route("10.20.0.0/16".parse().unwrap())
            .device(&common::device(&a, &format!("a{}", link - 1)))
            .via(addr(gw(link)))
            .metric(metric);
        tunnel.steer(&mut nl, route).unwrap();
    }
    World {
        a,
        p,
        tunnel,
        _decap: decap,
        _nl: nl,
    }
}

fn gw(link: u8) -> &'static str {
    if link == 1 {
        GW1
    } else {
        GW2
    }
}

fn route_remote(a: &NetNs, verb: &str, link: u8, metric: u32) {
    common::ip(
        a,
        &[
            "route",
            verb,
            &format!("{REMOTE}/32"),
            "via",
            gw(link),
            "dev",
            &format!("a{}", link - 1),
            "metric",
            &metric.to_string(),
        ],
    );
}

/// Pings P's inner address from A's, 100 per second, `count` of them, in the background.
///
/// With a deadline well past the last request: without one, iputils ping waits for the last
/// replies only about twice the round trip (here well under 1 ms), and a loaded machine's late
/// reply would count as lost. (With a deadline ping sends on until it has `count` replies, so a
/// real loss still shows as received < transmitted.)
fn start_pings(a: &NetNs, count: u32) -> Child {
    let deadline = (count / 100 + 5).to_string();
    start_pings_with(a, count, &["-w", &deadline])
}

fn start_pings_with(a: &NetNs, count: u32, extra: &[&str]) -> Child {
    a.command("ping")
        .args(extra)
        .args([
            "-n",
            "-q",
            "-i",
            "0.01",
            "-W",
            "1",
            "-c",
            &count.to_string(),
            "-I",
            INNER_A,
            INNER_P,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ping")
}

/// `(transmitted, received, output)` of a finished ping.
fn finish(ping: Child) -> (u32, u32, String) {
    let out = ping.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_default()
        .to_string();
    let num = |word: &str| -> u32 {
        line.split(',')
            .find(|p| p.trim().ends_with(word))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (num("packets transmitted"), num("received"), text)
}

/// Waits (up to 5 s) until the checker's status says `direct` remotes go direct.
fn wait_direct_remotes(w: &World, direct: usize) {
    let deadline = Instant::now() + common::patient(Duration::from_secs(5));
    loop {
        let s = w.tunnel.direct_status();
        if s.direct_remotes == direct && s.checking {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the check never reached {direct} direct remotes: {s:?}"
        );
        sleep(Duration::from_millis(20));
    }
}

fn counters(w: &World) -> PathCounters {
    w.tunnel.path_counters().unwrap()
}

/// The peer moves behind the other next hop (its remote routed over link 2), then link 1
/// stops carrying anything: the packets that went direct over link 1 are rerouted over link 2
/// from the moment of the move, no ping lost.
#[test]
fn a_peer_moved_behind_another_next_hop_is_rerouted_without_loss() {
    require!();
    let w = world(DirectMode::Checked, &[(1, 10)], &[(1, 10)]);
    wait_direct_remotes(&w, 1);
    let ping = start_pings(&w.a, 500);
    sleep(Duration::from_millis(1500));
    let before = counters(&w);
    assert!(
        before.direct_packets > 50 && before.rerouted_packets == 0,
        "over link 1, the route's own next hop, packets go direct: {before:?}"
    );
    route_remote(&w.a, "replace", 2, 10);
    wait_direct_remotes(&w, 0);
    let moved = counters(&w);
    sleep(Duration::from_millis(1000));
    common::ip(&w.p, &["link", "set", "p0", "down"]);
    let (sent, got, out) = finish(ping);
    let after = counters(&w);
    assert_eq!(sent, 500, "{out}");
    assert_eq!(got, sent, "no ping lost while the peer moved\n{out}");
    assert_eq!(
        after.direct_packets, moved.direct_packets,
        "nothing direct after the move: {moved:?} -> {after:?}"
    );
    assert!(
        after.rerouted_packets >= 250,
        "the rest rerouted over link 2: {after:?}"
    );
    let status = w.tunnel.direct_status();
    assert!(status.underlay_changes >= 2, "{status:?}");
    assert_eq!(status.rerouted_remotes, 1, "{status:?}");
}

/// The control for the test above: forced direct keeps sending over link 1 after the move,
/// and loses everything once link 1 is down. (What the check is for.)
#[test]
fn forced_direct_loses_the_traffic_the_check_saves() {
    require!();
    let w = world(DirectMode::Always, &[(1, 10)], &[(1, 10)]);
    // A deadline: iputils ping slows down once its requests meet errors (host unreachable).
    let ping = start_pings_with(&w.a, 300, &["-w", "4"]);
    sleep(Duration::from_millis(500));
    route_remote(&w.a, "replace", 2, 10);
    sleep(Duration::from_millis(500));
    common::ip(&w.p, &["link", "set", "p0", "down"]);
    let (sent, got, out) = finish(ping);
    let c = counters(&w);
    assert_eq!(c.rerouted_packets, 0, "{c:?}");
    assert!(
        sent >= got + 5,
        "forced direct must lose every ping after link 1 went down (ping then slows down: \
         a few are lost, not hundreds)\n{out}"
    );
    assert_eq!(
        w.tunnel.direct_status().mode,
        DirectMode::Always,
        "no checker for a forced mode"
    );
}

/// The underlay route changes the other way: the remote, first reached over link 2 (not the
/// route's next hop: rerouted), is routed over link 1, the route's own next hop: its packets
/// go direct from then on, no ping lost.
#[test]
fn an_underlay_route_change_to_the_routes_next_hop_makes_the_peer_direct() {
    require!();
    let w = world(DirectMode::Checked, &[(2, 10)], &[(1, 10)]);
    wait_direct_remotes(&w, 0);
    let ping = start_pings(&w.a, 400);
    sleep(Duration::from_millis(1000));
    let before = counters(&w);
    assert!(
        before.rerouted_packets > 50 && before.direct_packets == 0,
        "rerouted while the remote is reached over link 2: {before:?}"
    );
    route_remote(&w.a, "replace", 1, 10);
    wait_direct_remotes(&w, 1);
    let flipped = counters(&w);
    let (sent, got, out) = finish(ping);
    let after = counters(&w);
    assert_eq!(got, sent, "no ping lost\n{out}");
    assert!(
        after.direct_packets >= 150,
        "direct after the change: {flipped:?} -> {after:?}"
    );
    assert!(
        after.rerouted_packets <= flipped.rerouted_packets + 2,
        "rerouted no more once the check ran: {flipped:?} -> {after:?}"
    );
}

/// Link 1 goes down with a backup everywhere (the remote's route and the tunnel's route on
/// link 2, metric 20): the kernel flushes link 1's routes, the packets take the backup tunnel
/// route, and the check lets them go direct over link 2. No ping lost.
#[test]
fn a_link_down_moves_the_direct_path_to_the_backup_link() {
    require!();
    let w = world(
        DirectMode::Checked,
        &[(1, 10), (2, 20)],
        &[(1, 10), (2, 20)],
    );
    wait_direct_remotes(&w, 1);
    let ping = start_pings(&w.a, 500);
    sleep(Duration::from_millis(1500));
    let before = counters(&w);
    assert!(before.direct_packets > 50, "{before:?}");
    common::ip(&w.a, &["link", "set", "a0", "down"]);
    sleep(Duration::from_millis(500));
    wait_direct_remotes(&w, 1);
    let moved = counters(&w);
    let (sent, got, out) = finish(ping);
    let after = counters(&w);
    assert_eq!(got, sent, "no ping lost when link 1 went down\n{out}");
    assert!(
        after.direct_packets >= moved.direct_packets + 150,
        "direct again, over link 2: {before:?} -> {moved:?} -> {after:?}"
    );
    let route = common::ip(&w.a, &["route", "get", REMOTE]);
    assert!(route.contains("dev a1"), "{route}");
}

/// A policy rule on a firewall mark makes the outer route depend on each packet: the check
/// turns itself off (everything rerouted) and says why; removing the rule turns it back on.
#[test]
fn a_packet_dependent_rule_turns_the_check_off_and_says_why() {
    require!();
    let w = world(DirectMode::Checked, &[(1, 10)], &[(1, 10)]);
    wait_direct_remotes(&w, 1);
    common::ip(
        &w.a,
        &[
            "rule", "add", "fwmark", "7", "table", "100", "priority", "50",
        ],
    );
    let deadline = Instant::now() + common::patient(Duration::from_secs(5));
    let status = loop {
        let s = w.tunnel.direct_status();
        if s.reason.is_some() {
            break s;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        sleep(Duration::from_millis(20));
    };
    let reason = status.reason.clone().unwrap();
    assert!(
        reason.contains("policy rule 50") && reason.contains("fwmark"),
        "{reason}"
    );
    let before = counters(&w);
    let ping = start_pings(&w.a, 50);
    let (sent, got, out) = finish(ping);
    assert_eq!(got, sent, "{out}");
    let after = counters(&w);
    assert_eq!(after.direct_packets, before.direct_packets, "{after:?}");
    common::ip(&w.a, &["rule", "del", "priority", "50"]);
    wait_direct_remotes(&w, 1);
}

/// `DirectMode::Never`: no checker, no lease, every packet routed again.
#[test]
fn without_a_checker_everything_is_rerouted() {
    require!();
    let w = world(DirectMode::Never, &[(1, 10)], &[(1, 10)]);
    let ping = start_pings(&w.a, 100);
    let (sent, got, out) = finish(ping);
    assert_eq!(got, sent, "{out}");
    let c = counters(&w);
    assert_eq!(c.direct_packets, 0, "{c:?}");
    assert!(c.rerouted_packets >= 100, "{c:?}");
    let status = w.tunnel.direct_status();
    assert!(!status.checking && status.reason.is_none(), "{status:?}");
}

/// Many peers with distinct remotes (4 000, one kernel lookup each): all checked direct, then
/// all rerouted at once when their covering route moves to link 2. Prints how long a check took.
#[test]
fn thousands_of_distinct_remotes_are_each_checked() {
    require!();
    const N: u32 = 4_000; // the default capacity is 4 096
    let mut w = world(DirectMode::Checked, &[(1, 10)], &[(1, 10)]);
    common::ip(
        &w.a,
        &["route", "add", "10.70.0.0/16", "via", GW1, "dev", "a0"],
    );
    let peers: Vec<_> = (0..N)
        .map(|i| {
            let inner = std::net::Ipv4Addr::from(0x0a15_0000u32 | i); // 10.21.x.y
            let remote = std::net::Ipv4Addr::from(0x0a46_0000u32 | i); // 10.70.x.y
            (
                ipnetwork::IpNetwork::new(IpAddr::V4(inner), 32).unwrap(),
                EncapPeer::new(IpAddr::V4(remote), addr(LOCAL), Encap::Ipip),
            )
        })
        .collect();
    w.tunnel.peers_mut().insert_batch(&peers).unwrap();
    wait_direct_remotes(&w, N as usize + 1);
    let took = w.tunnel.direct_status().last_check;
    common::ip(
        &w.a,
        &["route", "replace", "10.70.0.0/16", "via", GW2, "dev", "a1"],
    );
    wait_direct_remotes(&w, 1);
    let s = w.tunnel.direct_status();
    assert_eq!(s.rerouted_remotes, N as usize, "{s:?}");
    eprintln!(
        "a check of {} remotes took {took:?}; after the move: {:?}",
        N + 1,
        s.last_check
    );
}
