//! The agent puts back what someone else changes in its data plane, with a real etcd and two
//! `lwtun-agent` processes (hosts as namespaces on a bridged underlay, as in `fleet.rs`):
//!
//! - its steered route deleted with `ip route del` is back at once (route keeper), and the
//!   status and the log say so;
//! - `lwtun peer del` (the library's `TunnelTables::open` it uses) is refused while the agent
//!   owns the pin folder, naming the agent's process;
//! - a peer deleted with `bpftool map delete` (unjournaled) is put back by the reconcile;
//! - its decap detached (`bpftool link detach`, or `tc filter del` without tcx) is attached
//!   again by the reconcile;
//! - an accepted source deleted from its decap table (`bpftool map delete id`) is added again
//!   by the reconcile;
//! - its own endpoint deleted from its decap's local addresses is added again by the
//!   reconcile;
//! - its route flushed without an event (the underlay device down and up) is steered again by
//!   the reconcile;
//! - with etcd down, a deleted route is still put back and the status says so (still
//!   disconnected);
//!
//! and after each, the hosts reach each other through the tunnel again (ping between their
//! inner addresses). Restore times are measured and printed; the only bound asserted is a
//! generous "within 5 s".

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;
#[path = "support/world.rs"]
mod world;

use std::process::Command;
use std::time::Duration;

use lwtun::tc::{self, TcDirection, TcMode};
use lwtun::tunnel::TunnelTables;
use lwtun::ErrorKind;
use support::Etcd;
use world::{endpoint, figure, ms, prefix, service};

const PORT: &str = "6081";
const STEER: &str = "10.192.0.0/10";
/// The reconcile interval the agents run with here (the default is 10 s).
const RECONCILE: &str = "300ms";
/// The generous bound on every repair.
const BOUND: Duration = Duration::from_secs(5);

type World = world::World<Etcd>;

/// `n` hosts, each running `lwtun-agent` with flags: its own pin folder, status file and
/// metrics address, the fleet's steered range, a reconcile every [`RECONCILE`].
fn start(n: usize) -> World {
    let mut w = World::new("repair", n, Etcd::start);
    for i in 0..n {
        let args: Vec<std::ffi::OsString> = [
            "--metrics-address".to_string(),
            format!("127.0.0.1:{}", w.metrics[i]),
            "--etcd".into(),
            w.etcd.url(),
            "--fleet".into(),
            "repair".into(),
            "--host".into(),
            format!("h{i}"),
            "--endpoint".into(),
            endpoint(i),
            "--encap".into(),
            "udp".into(),
            "--udp-port".into(),
            PORT.into(),
            "--prefix".into(),
            prefix(i),
            "--steer".into(),
            STEER.into(),
            "--source".into(),
            service(i),
            "--device".into(),
            "ul0".into(),
            "--netns".into(),
            w.hosts[i].name().to_string(),
            "--lease-ttl".into(),
            "3".into(),
            "--reconcile-interval".into(),
            RECONCILE.into(),
        ]
        .into_iter()
        .map(Into::into)
        .chain([
            "--status".into(),
            w.status_path(i).into(),
            "--pin".into(),
            w.pin(i).into(),
        ])
        .collect();
        w.spawn(args);
    }
    w
}

/// Polls `check` until it is true; the time it took. Panics after [`BOUND`].
fn time_until(what: &str, check: impl FnMut() -> bool) -> Duration {
    world::time_until(what, BOUND, check)
}

/// bpftool's words for the IPv4 peer key of `prefix` (`struct lwtun_peer_key4`: prefix length
/// in host byte order, then the address).
fn peer_key(prefix: &str) -> Vec<String> {
    let net: ipnetwork::Ipv4Network = prefix.parse().unwrap();
    let mut words: Vec<String> = u32::from(net.prefix())
        .to_ne_bytes()
        .iter()
        .map(|b| b.to_string())
        .collect();
    words.extend(net.network().octets().iter().map(|b| b.to_string()));
    words
}

/// Deletes `key` from map `map` with bpftool; returns whether it was gone right after, and how
/// long until it was back.
fn delete_until_back(map: &str, key: &[String], what: &str) -> (bool, Duration) {
    let mut del = vec!["map", "delete", "id", map, "key"];
    del.extend(key.iter().map(String::as_str));
    let out = bpftool(&del);
    assert!(
        out.status.success(),
        "bpftool map delete ({what}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lookup = vec!["map", "lookup", "id", map, "key"];
    lookup.extend(key.iter().map(String::as_str));
    let gone = !bpftool(&lookup).status.success();
    let took = time_until(&format!("{what} back"), || {
        bpftool(&lookup).status.success()
    });
    (gone, took)
}

/// The id of the map named `name` used by program `program`.
fn map_of(program: u32, name: &str) -> String {
    let info = lwtun::program::program_info_by_id(program).unwrap();
    info.map_ids
        .iter()
        .find(|id| {
            let out = bpftool(&["-j", "map", "show", "id", &id.to_string()]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v["name"] == name
        })
        .unwrap_or_else(|| panic!("the program's {name} map"))
        .to_string()
}

fn bpftool(args: &[&str]) -> std::process::Output {
    Command::new("bpftool")
        .args(args)
        .output()
        .expect("run bpftool")
}

#[test]
fn the_agent_puts_back_its_route_peers_and_decap() {
    let test = "the_agent_puts_back_its_route_peers_and_decap";
    if !common::privileged(test) || !support::etcd_installed(test) {
        return;
    }
    let mut w = start(2);
    for i in 0..2 {
        w.wait_status(i, "the other host's peer", Duration::from_secs(20), |s| {
            s.connected && s.peers.len() == 1 && s.decap_peers.len() == 1
        });
    }
    w.ping(0, 1);
    w.ping(1, 0);

    // --- the route: `ip route del` → back at once, counted, logged ---
    let shown = common::ip(&w.hosts[0], &["route", "show", STEER]);
    assert!(shown.contains("encap bpf"), "before: {shown}");
    common::ip(&w.hosts[0], &["route", "del", STEER]);
    let took = time_until("route back", || {
        common::try_ip(&w.hosts[0], &["route", "show", STEER])
            .map(|s| s.contains("encap bpf"))
            .unwrap_or(false)
    });
    figure(format!(
        "route {STEER} deleted with `ip route del`, seen back by `ip route show` after {} \
         (polling ip)",
        ms(took)
    ));
    let s = w.wait_status(0, "route restore in the status", BOUND, |s| {
        s.repairs.routes_restored == 1
    });
    let line = s.repairs.last_repair.clone().unwrap_or_default();
    assert!(
        line.contains(STEER) && line.contains("restored"),
        "status says {line:?}"
    );
    assert!(s.repairs.last_repair_at_us > 0);
    let log = std::fs::read_to_string(w.log_path(0)).unwrap();
    let logged = log
        .lines()
        .find(|l| l.contains("repaired: route") && l.contains(STEER))
        .unwrap_or_else(|| panic!("no repair line in the log:\n{log}"));
    figure(format!("h0 logged: {logged}"));
    w.ping(0, 1);

    // --- the peers: what an operator can do to a live agent's pinned tables ---
    // `lwtun peer del --pin` opens the tables under the folder's owner lock: refused.
    let Err(refused) = TunnelTables::open(w.pin(0)) else {
        panic!("the tables opened for editing under the live agent's lock");
    };
    assert_eq!(refused.kind(), ErrorKind::Exists, "{refused}");
    assert!(refused.to_string().contains("owns"), "{refused}");
    figure(format!(
        "lwtun peer del on the live agent's folder: {refused}"
    ));
    // bpftool deletes it without lwtun (nothing journaled): the reconcile puts it back.
    let map = w.pin(0).join("peers_v4");
    let map = map.to_str().unwrap();
    let key = peer_key(&prefix(1));
    let mut del = vec!["map", "delete", "pinned", map, "key"];
    del.extend(key.iter().map(String::as_str));
    let out = bpftool(&del);
    assert!(
        out.status.success(),
        "bpftool map delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lookup = vec!["map", "lookup", "pinned", map, "key"];
    lookup.extend(key.iter().map(String::as_str));
    let gone = !bpftool(&lookup).status.success();
    let took = time_until("peer back", || bpftool(&lookup).status.success());
    figure(format!(
        "peer {} deleted with `bpftool map delete` (gone right after: {gone}), back after {} \
         (reconcile every {RECONCILE})",
        prefix(1),
        ms(took)
    ));
    let s = w.wait_status(0, "peer restore in the status", BOUND, |s| {
        s.repairs.peers_restored == 1 && s.peers.len() == 1
    });
    assert!(
        s.repairs
            .last_repair
            .as_deref()
            .unwrap_or("")
            .contains("peer table"),
        "{:?}",
        s.repairs
    );
    assert!(s.repairs.reconcile_runs >= 1);
    figure(format!(
        "h0 reconcile runs {}, last took {} µs",
        s.repairs.reconcile_runs, s.repairs.last_reconcile_us
    ));
    w.ping(0, 1);

    // --- the decap: detached from outside → attached again ---
    let device = common::device(&w.hosts[1], "ul0");
    let decap = || {
        tc::attached(&device, TcDirection::Ingress)
            .unwrap()
            .into_iter()
            .find(|p| p.program_name.as_deref() == Some("decap_tc"))
    };
    let before = decap().expect("h1's decap at tc ingress");
    let out = match (before.mode, before.link_id) {
        (TcMode::Tcx, Some(link)) => bpftool(&["link", "detach", "id", &link.to_string()]),
        _ => {
            let f = before.filter.clone().expect("a clsact filter");
            common::run_in(
                &w.hosts[1],
                "tc",
                &[
                    "filter",
                    "del",
                    "dev",
                    "ul0",
                    "ingress",
                    "pref",
                    &f.priority.to_string(),
                ],
            )
            .map(|_| Command::new("true").output().unwrap())
            .unwrap_or_else(|e| panic!("tc filter del: {e}"))
        }
    };
    assert!(
        out.status.success(),
        "detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gone = decap().is_none();
    let took = time_until("decap back", || {
        decap().is_some_and(|p| p.program_id == before.program_id)
    });
    figure(format!(
        "h1's decap detached ({:?}, gone right after: {gone}), attached again after {}",
        before.mode,
        ms(took)
    ));
    w.wait_status(1, "decap re-attach in the status", BOUND, |s| {
        s.repairs.decap_reattached == 1
    });
    // h0 → h1 needs h1's decap (the request), h1 → h0 h0's (the reply)
    w.ping(0, 1);
    w.ping(1, 0);

    // --- the decap's accepted sources: h0's endpoint deleted from h1's decap table ---
    let table = map_of(before.program_id, "peers_v4");
    let mut key = vec!["32".to_string(), "0".into(), "0".into(), "0".into()];
    key.extend(endpoint(0).split('.').map(String::from));
    let (gone, took) = delete_until_back(&table, &key, "decap source");
    figure(format!(
        "h1's decap source {} deleted with `bpftool map delete` (gone right after: {gone}), \
         back after {}",
        endpoint(0),
        ms(took)
    ));
    w.wait_status(1, "decap source re-added in the status", BOUND, |s| {
        s.repairs.decap_peers_restored == 1
    });
    w.ping(0, 1);

    // --- the decap's own address: h1's endpoint deleted from its decap's locals ---
    let locals = map_of(before.program_id, "locals");
    // `struct lwtun_ip_addr`: 16 bytes, an IPv4 address mapped (::ffff:a.b.c.d)
    let mut key: Vec<String> = ["0"; 10].iter().map(|s| s.to_string()).collect();
    key.extend(["255".to_string(), "255".to_string()]);
    key.extend(endpoint(1).split('.').map(String::from));
    let (gone, took) = delete_until_back(&locals, &key, "decap local address");
    figure(format!(
        "h1's own endpoint {} deleted from its decap's locals (gone right after: {gone}), \
         back after {}",
        endpoint(1),
        ms(took)
    ));
    w.wait_status(1, "decap local re-added in the status", BOUND, |s| {
        s.repairs.decap_locals_restored == 1
    });
    w.ping(0, 1);

    // --- the device flaps: IPv4 routes flushed without an event, steered again ---
    let restored = w.status(0).unwrap().repairs.routes_restored;
    common::ip(&w.hosts[0], &["link", "set", "ul0", "down"]);
    let flushed = common::ip(&w.hosts[0], &["route", "show", STEER]);
    assert!(
        !flushed.contains("encap bpf"),
        "route kept on a down device: {flushed}"
    );
    common::ip(&w.hosts[0], &["link", "set", "ul0", "up"]);
    common::wait_oper_up(&w.hosts[0], &["ul0".to_string()]);
    let took = time_until("route back after the flap", || {
        common::try_ip(&w.hosts[0], &["route", "show", STEER])
            .map(|s| s.contains("encap bpf"))
            .unwrap_or(false)
    });
    let s = w.wait_status(0, "re-steer in the status", BOUND, |s| {
        s.repairs.routes_restored > restored
    });
    figure(format!(
        "ul0 down/up on h0: route {STEER} back {} after the link came up; status: {:?}",
        ms(took),
        s.repairs.last_repair
    ));
    w.ping(0, 1);

    // --- etcd away: still repaired, and said so ---
    let restored = w.status(0).unwrap().repairs.routes_restored;
    w.etcd.kill();
    w.wait_status(0, "etcd seen away", BOUND, |s| !s.connected);
    common::ip(&w.hosts[0], &["route", "del", STEER]);
    let took = time_until("route back with etcd away", || {
        common::try_ip(&w.hosts[0], &["route", "show", STEER])
            .map(|s| s.contains("encap bpf"))
            .unwrap_or(false)
    });
    let s = w.wait_status(0, "restore reported with etcd away", BOUND, |s| {
        s.repairs.routes_restored > restored
    });
    assert!(!s.connected);
    assert!(s.last_error.is_some(), "etcd's absence forgotten: {s:?}");
    figure(format!(
        "etcd down: route deleted, back after {}, reported while disconnected ({:?})",
        ms(took),
        s.repairs.last_repair
    ));
    w.ping(0, 1);

    // Every repair above is counted in the metrics too (the decap's were on h1).
    for (host, what, at_least) in [
        (0, "route_restored", 2.0),
        (0, "peers_restored", 1.0),
        (1, "decap_reattached", 1.0),
        (1, "decap_peers_restored", 1.0),
        (1, "decap_locals_restored", 1.0),
    ] {
        let series = format!("lwtun_agent_repairs_total{{what=\"{what}\"}}");
        let v = w.metric(host, &series);
        assert!(v >= at_least, "{series} = {v}, want at least {at_least}");
    }
    let runs = w.metric(0, "lwtun_agent_reconcile_runs_total{kind=\"repair\"}");
    assert!(runs >= 1.0, "no periodic reconcile counted: {runs}");
}
