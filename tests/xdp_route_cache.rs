//! The XDP router's route cache follows the kernel's changes: on by default once the router
//! knows its namespace, and dropped by the namespace's own change notifications, so a route
//! replaced, a neighbour's MAC replaced, a link taken down or a policy rule added mid-stream
//! moves the traffic within 10 ms (the bound), although cached slots would live for a
//! second.
//!
//! Topology: sender S ─ router R ─┬─ sink A (10.62.0.2)
//!                                └─ sink B (10.63.0.2)
//! Both sinks own 10.64.0.1 (on lo); R routes it through one of them. S sends numbered UDP
//! datagrams at about 1 kHz; each sink records which numbers it received.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{device, ip, mac, netns};
use lwtun::netns::NetNs;
use lwtun::xdp::{XdpMode, XdpOptions, XdpRouter, ROUTE_CACHE_DEFAULT_AGE};

const DST: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 1);
const PORT: u16 = 7000;
/// The bound: frames sent this long after a change take the new path (stretched only
/// where `LWTUN_TEST_TIME_SCALE` says the machine is emulated, see `common::patient`).
fn bound() -> Duration {
    common::patient(Duration::from_millis(10))
}

/// A UDP socket made in `ns`, bound to `addr`.
fn udp_in(ns: &NetNs, addr: SocketAddr) -> UdpSocket {
    ns.enter(|| UdpSocket::bind(addr).map_err(|e| lwtun::Error::io("bind", e)))
        .unwrap()
}

/// A sink: the sequence numbers (the first 8 bytes) of the datagrams that reach its socket.
struct Sink(common::UdpSink);

impl Sink {
    fn start(ns: &NetNs) -> Sink {
        Sink(common::UdpSink::start(
            ns,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)),
            8,
        ))
    }

    fn has(&self, seq: u64) -> bool {
        self.0.has(&seq.to_be_bytes())
    }
}

struct Lab {
    r: NetNs,
    s: NetNs,
    a: NetNs,
    b: NetNs,
}

fn veth(r: &NetNs, dev: &str, peer: &NetNs, peer_dev: &str, r_addr: &str, peer_addr: &str) {
    ip(
        r,
        &[
            "link",
            "add",
            dev,
            "type",
            "veth",
            "peer",
            "name",
            peer_dev,
            "netns",
            peer.name(),
        ],
    );
    ip(r, &["addr", "add", r_addr, "dev", dev]);
    ip(peer, &["addr", "add", peer_addr, "dev", peer_dev]);
    ip(r, &["link", "set", dev, "up"]);
    ip(peer, &["link", "set", peer_dev, "up"]);
}

fn lab() -> Lab {
    let (r, s, a, b) = (netns("xcr"), netns("xcs"), netns("xca"), netns("xcb"));
    veth(&r, "rs", &s, "s0", "10.61.0.254/24", "10.61.0.1/24");
    veth(&r, "ra", &a, "a0", "10.62.0.254/24", "10.62.0.2/24");
    veth(&r, "rb", &b, "b0", "10.63.0.254/24", "10.63.0.2/24");
    r.set_sysctl("net.ipv4.ip_forward", "1").unwrap();
    common::tx_checksum_off(&s, "s0");
    ip(&s, &["route", "add", "default", "via", "10.61.0.254"]);
    for (h, gw) in [(&a, "10.62.0.254"), (&b, "10.63.0.254")] {
        ip(h, &["addr", "add", "10.64.0.1/32", "dev", "lo"]);
        ip(h, &["route", "add", "default", "via", gw]);
    }
    ip(&r, &["route", "add", "10.64.0.1/32", "via", "10.62.0.2"]);
    // Both next hops resolved, so the first frames take the fast path.
    for gw in ["10.62.0.2", "10.63.0.2"] {
        let p = common::ping(&r, gw.parse().unwrap(), 1);
        assert_eq!(p.received, 1, "{}", p.output);
    }
    Lab { r, s, a, b }
}

/// What one change did to the stream.
struct Moved {
    /// Frames sent at least [`bound`] after the change (it completed), all of which reached the
    /// new sink.
    after_bound: u64,
    /// Of those, the ones that did not reach the new sink.
    missing: Vec<u64>,
    /// Of those, the ones that reached the old sink.
    at_old: Vec<u64>,
    /// The first frame sent after the change began that reached the new sink: its send time
    /// after the change began.
    first_new: Option<Duration>,
    /// The last frame that reached the old sink: its send time after the change began (negative
    /// ones are not shown).
    last_old: Option<Duration>,
    /// How long the `ip` command took.
    change_took: Duration,
    /// Cache hits counted during the stream before the change.
    hits_before: u64,
}

/// Streams numbered datagrams from S for 0.6 s, runs `prepare` (not timed) and `change`,
/// streams for 0.4 s more, and says where the frames went relative to the change.
fn stream_through(
    lab: &Lab,
    router: &XdpRouter,
    sinks: (&Sink, &Sink),
    first_seq: u64,
    prepare: impl FnOnce(),
    change: impl FnOnce(),
) -> Moved {
    let (old, new) = sinks;
    let socket = udp_in(&lab.s, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let dst = SocketAddr::from((DST, PORT));
    let stop = Arc::new(AtomicBool::new(false));
    let sent: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let (st, se) = (stop.clone(), sent.clone());
    let sender = std::thread::spawn(move || {
        let mut seq = first_seq;
        while !st.load(Ordering::Relaxed) {
            let t = Instant::now();
            socket.send_to(&seq.to_be_bytes(), dst).unwrap();
            se.lock().unwrap().push((seq, t));
            seq += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let stats0 = router.fib_stats().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let hits_before = router.fib_stats().unwrap().cache_hits - stats0.cache_hits;
    prepare();
    let t0 = Instant::now();
    change();
    let t1 = Instant::now();
    std::thread::sleep(Duration::from_millis(400) + bound());
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    std::thread::sleep(Duration::from_millis(100)); // the last frames land
    let sent = sent.lock().unwrap();
    let mut moved = Moved {
        after_bound: 0,
        missing: Vec::new(),
        at_old: Vec::new(),
        first_new: None,
        last_old: None,
        change_took: t1 - t0,
        hits_before,
    };
    for &(seq, t) in sent.iter() {
        if t >= t0 && moved.first_new.is_none() && new.has(seq) {
            moved.first_new = Some(t - t0);
        }
        if t >= t0 && old.has(seq) {
            moved.last_old = Some(t - t0);
        }
        if t >= t1 + bound() {
            moved.after_bound += 1;
            if !new.has(seq) {
                moved.missing.push(seq);
            }
            if old.has(seq) {
                moved.at_old.push(seq);
            }
        }
    }
    moved
}

fn report(what: &str, m: &Moved) {
    println!(
        "{what}: `ip` took {:?}; last frame at the old next hop sent {:?} after the change \
         began, first at the new one {:?} after; {} frames sent >= {:?} after it: {} \
         missing at the new next hop, {} at the old; {} cache hits before the change",
        m.change_took,
        m.last_old,
        m.first_new,
        m.after_bound,
        bound(),
        m.missing.len(),
        m.at_old.len(),
        m.hits_before
    );
    assert!(
        m.hits_before > 0,
        "{what}: the cache was not in use before the change"
    );
    assert!(m.after_bound >= 20, "{what}: too few frames to judge");
    assert!(
        m.missing.is_empty() && m.at_old.is_empty(),
        "{what}: frames sent {:?} after the change did not take the new path: {} missing \
         (first {:?}), {} at the old next hop (first {:?})",
        bound(),
        m.missing.len(),
        &m.missing[..m.missing.len().min(10)],
        m.at_old.len(),
        &m.at_old[..m.at_old.len().min(10)],
    );
}

#[test]
fn route_neighbour_link_and_rule_changes_move_cached_traffic_within_10_ms() {
    require!();
    let lab = lab();
    let router = XdpRouter::load().unwrap();
    let status = router.route_cache_status().unwrap();
    assert_eq!(
        status.max_age, None,
        "off before the router knows a namespace"
    );
    assert!(!status.follows_changes);
    assert!(status.reason.is_some());
    let rs = device(&lab.r, "rs");
    router
        .add_port_with_receiver(&device(&lab.r, "ra"), &device(&lab.a, "a0"))
        .unwrap();
    router
        .add_port_with_receiver(&device(&lab.r, "rb"), &device(&lab.b, "b0"))
        .unwrap();
    let opts = XdpOptions {
        mode: XdpMode::Native,
        ..Default::default()
    };
    let _att = router.attach(&rs, opts).unwrap();
    let status = router.route_cache_status().unwrap();
    assert_eq!(status.max_age, Some(ROUTE_CACHE_DEFAULT_AGE), "{status:?}");
    assert!(status.follows_changes, "{status:?}");
    let sink_a = Sink::start(&lab.a);
    let sink_b = Sink::start(&lab.b);

    // 1. The route moves to the other next hop.
    let inv0 = router.route_cache_status().unwrap().invalidations;
    let m = stream_through(
        &lab,
        &router,
        (&sink_a, &sink_b),
        0,
        || {},
        || {
            ip(
                &lab.r,
                &["route", "replace", "10.64.0.1/32", "via", "10.63.0.2"],
            );
        },
    );
    report("route replace", &m);
    let inv1 = router.route_cache_status().unwrap().invalidations;
    assert!(
        inv1 > inv0,
        "the change dropped the cache: {inv0} -> {inv1}"
    );
    let fib = router.fib_stats().unwrap();
    assert!(
        fib.cache_hits > 0 && fib.success > fib.cache_hits,
        "{fib:?}"
    );

    // 2. The next hop's MAC changes: B's interface takes a new address (frames to the old one
    // are dropped by B as not its own), then R's neighbour entry is replaced.
    let new_mac = "02:64:00:00:00:0b";
    assert_ne!(mac(&lab.b, "b0"), [2, 0x64, 0, 0, 0, 0xb]);
    let lost = || {
        ip(&lab.b, &["link", "set", "b0", "address", new_mac]);
        std::thread::sleep(Duration::from_millis(50));
    };
    let m = stream_through(&lab, &router, (&sink_a, &sink_b), 1_000_000, lost, || {
        ip(
            &lab.r,
            &[
                "neigh",
                "replace",
                "10.63.0.2",
                "lladdr",
                new_mac,
                "dev",
                "rb",
                "nud",
                "permanent",
            ],
        );
    });
    // Frames sent between B's MAC change and the neighbour replace are lost (B drops them as
    // not its own); the change timed is the neighbour replace.
    report("neighbour replace (B's MAC, same sink)", &m);

    // 3. The link to B goes down; a backup route through A takes over (the kernel flushes the
    // route through rb without an RTM_DELROUTE: the link message is what tells).
    ip(
        &lab.r,
        &[
            "route",
            "add",
            "10.64.0.1/32",
            "via",
            "10.62.0.2",
            "metric",
            "100",
        ],
    );
    let m = stream_through(
        &lab,
        &router,
        (&sink_b, &sink_a),
        2_000_000,
        || {},
        || {
            ip(&lab.r, &["link", "set", "rb", "down"]);
        },
    );
    report("link down", &m);

    // 4. A policy rule sends the destination to another table, through B again (only the rule
    // message tells: the routes of table 100 are in place before the stream).
    ip(&lab.r, &["link", "set", "rb", "up"]);
    common::wait_oper_up(&lab.r, &["rb".to_string()]);
    let p = common::ping(&lab.r, "10.63.0.2".parse().unwrap(), 1);
    assert_eq!(p.received, 1, "{}", p.output);
    ip(
        &lab.r,
        &[
            "route",
            "add",
            "10.64.0.1/32",
            "via",
            "10.63.0.2",
            "table",
            "100",
        ],
    );
    let m = stream_through(
        &lab,
        &router,
        (&sink_a, &sink_b),
        3_000_000,
        || {},
        || {
            ip(
                &lab.r,
                &[
                    "rule",
                    "add",
                    "to",
                    "10.64.0.1",
                    "lookup",
                    "100",
                    "pref",
                    "100",
                ],
            );
        },
    );
    report("policy rule added", &m);
    let status = router.route_cache_status().unwrap();
    assert!(status.follows_changes, "{status:?}");
    println!("{status:?}");
}

#[test]
fn an_explicit_choice_wins_over_the_default() {
    require!();
    let r = netns("xco");
    ip(
        &r,
        &["link", "add", "co0", "type", "veth", "peer", "name", "co1"],
    );
    let router = XdpRouter::load().unwrap();
    router.set_route_cache(None).unwrap();
    let (co0, co1) = (device(&r, "co0"), device(&r, "co1"));
    router.add_port_with_receiver(&co0, &co1).unwrap();
    let status = router.route_cache_status().unwrap();
    assert_eq!(status.max_age, None, "{status:?}");
    assert!(status.follows_changes, "{status:?}");

    drop(router);
    let router = XdpRouter::load().unwrap();
    router
        .set_route_cache(Some(Duration::from_millis(200)))
        .unwrap();
    router.add_port_with_receiver(&co0, &co1).unwrap();
    let status = router.route_cache_status().unwrap();
    assert_eq!(status.max_age, Some(Duration::from_millis(200)));
    // Every kind of change a lookup depends on drops the cache (the generation moves on):
    // one change of each subscribed group, each waited for.
    let changes: &[(&str, &[&str])] = &[
        ("link up", &["link", "set", "co0", "up"]),
        (
            "IPv4 address",
            &["addr", "add", "10.65.0.1/24", "dev", "co0"],
        ),
        (
            "IPv6 address",
            &["-6", "addr", "add", "fd65::1/64", "dev", "co0", "nodad"],
        ),
        (
            "IPv4 route",
            &["route", "add", "10.66.0.0/24", "via", "10.65.0.2"],
        ),
        (
            "IPv6 route",
            &["-6", "route", "add", "fd66::/64", "via", "fd65::2"],
        ),
        (
            "IPv4 rule",
            &["rule", "add", "to", "10.66.0.0/24", "lookup", "100"],
        ),
        (
            "IPv6 rule",
            &["-6", "rule", "add", "to", "fd66::/64", "lookup", "100"],
        ),
        (
            "neighbour",
            &[
                "neigh",
                "add",
                "10.65.0.2",
                "lladdr",
                "02:65:00:00:00:02",
                "dev",
                "co0",
            ],
        ),
    ];
    let count = || router.route_cache_status().unwrap().invalidations;
    // Waits for the invalidation `what` causes, then until none has come for 50 ms, so a late
    // message of one change cannot pass for the next one.
    let wait_for_invalidation = |what: &str, before: u64| {
        let deadline = Instant::now() + common::patient(Duration::from_secs(2));
        while count() == before {
            assert!(Instant::now() < deadline, "no invalidation after: {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut settled = count();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            match count() {
                n if n == settled => return n,
                n => settled = n,
            }
        }
    };
    let mut seen = status.invalidations;
    for (what, args) in changes {
        ip(&r, args);
        seen = wait_for_invalidation(what, seen);
    }
    // Forwarding turned off and on (netconf).
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
    ] {
        r.set_sysctl(key, value).unwrap();
        seen = wait_for_invalidation(key, seen);
    }
    // Nexthop objects, where the kernel has them.
    if common::try_ip(
        &r,
        &[
            "nexthop",
            "add",
            "id",
            "65",
            "via",
            "10.65.0.2",
            "dev",
            "co0",
        ],
    )
    .is_ok()
    {
        wait_for_invalidation("nexthop object", seen);
    }
}

/// The `route_cache_cfg` map of the XDP program `prog_id`, as bpftool dumps it (JSON).
fn cache_cfg_of(prog_id: u32) -> serde_json::Value {
    let run = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new("bpftool")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "bpftool {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let prog = run(&["-j", "prog", "show", "id", &prog_id.to_string()]);
    for id in prog["map_ids"].as_array().unwrap() {
        let id = id.to_string();
        let map = run(&["-j", "map", "show", "id", &id]);
        if map["name"] == "route_cache_cfg" {
            let dump = run(&["-j", "map", "dump", "id", &id]);
            return dump[0]["formatted"]["value"].clone();
        }
    }
    panic!("program {prog_id} has no route_cache_cfg map: {prog}");
}

#[test]
fn a_dropped_router_leaves_its_attachments_without_the_cache_it_turned_on() {
    require!();
    let r = netns("xcd");
    ip(
        &r,
        &["link", "add", "cd0", "type", "veth", "peer", "name", "cd1"],
    );
    let router = XdpRouter::load().unwrap();
    let att = router
        .attach(&device(&r, "cd0"), XdpOptions::default())
        .unwrap();
    let on = cache_cfg_of(att.program_id());
    assert_eq!(on["max_age_ns"], 1_000_000_000u64, "on by default: {on}");
    drop(router);
    // The attachment keeps the program running; nobody follows changes any more, so the
    // cache is off and every frame is looked up.
    let off = cache_cfg_of(att.program_id());
    assert_eq!(off["max_age_ns"], 0, "off after the router dropped: {off}");
    drop(att);
}
