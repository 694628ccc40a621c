//! Peer events in the `Monitor`, end to end with the real kernel and the real `lwtun` command:
//! - a pinned tunnel's peers changed by this process (a `Tunnel`) and by `lwtun peer
//!   add|replace|del` (another process) come as `Peer*` events, each once, in order, with the
//!   writer's pid and command, beside the route events of the same monitor; how long a change
//!   takes to become an event is measured and printed;
//! - a monitor that reads after more changes than the journal's ring holds gets one `Resync`
//!   (reason `Journal(Overflow)`) and then exactly the diff that turns its view into the
//!   kernel's tables;
//! - a folder without a tunnel is refused as not found, and watches nothing.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use lwtun::monitor::{Event, EventKinds, Monitor, ResyncReason, Stamped};
use lwtun::peer::{Encap, EncapPeer, ResyncReason as JournalReason};
use lwtun::tunnel::Tunnel;
use lwtun::ErrorKind;

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn peer(remote: &str, encap: Encap) -> EncapPeer {
    EncapPeer::new(remote.parse().unwrap(), "192.0.2.1".parse().unwrap(), encap)
}

/// A peer event as (action, prefix, new peer, writer pid).
fn summary(e: &Event) -> (&'static str, IpNetwork, Option<EncapPeer>, Option<u32>) {
    match e {
        Event::PeerAdded {
            prefix,
            peer,
            origin,
            ..
        } => (
            "add",
            *prefix,
            Some(*peer),
            origin.as_ref().map(|o| o.writer.pid),
        ),
        Event::PeerChanged {
            prefix,
            new,
            origin,
            ..
        } => (
            "change",
            *prefix,
            Some(*new),
            origin.as_ref().map(|o| o.writer.pid),
        ),
        Event::PeerRemoved { prefix, origin, .. } => {
            ("del", *prefix, None, origin.as_ref().map(|o| o.writer.pid))
        }
        other => panic!("not a peer event: {other:?}"),
    }
}

/// The events that come within `quiet` of each other, up to `want` of them.
fn events(monitor: &mut Monitor, want: usize, quiet: Duration) -> Vec<Stamped<Event>> {
    let mut out = Vec::new();
    while out.len() < want {
        match monitor.next_timeout(quiet).unwrap() {
            Some(e) => out.push(e),
            None => break,
        }
    }
    out
}

#[test]
fn peer_changes_from_two_processes_come_once_in_order_with_their_writers() {
    require!();
    let ns = common::netns("monp");
    common::ip(
        &ns,
        &["link", "add", "d0", "type", "veth", "peer", "name", "d0p"],
    );
    common::ip(&ns, &["link", "set", "d0p", "up"]);
    common::ip(&ns, &["link", "set", "d0", "up"]);
    let pin = common::PinDir::new("monpeers");
    let p = pin.arg();
    let me = std::process::id();
    let mut tunnel = Tunnel::builder().pin(&pin.0).load().unwrap();
    let gre7 = peer(
        "10.77.0.2",
        Encap::Gre {
            key: Some(7),
            checksum: false,
        },
    );
    // Pinned before the monitor: the start of its view, no event.
    tunnel
        .peers_mut()
        .insert(net("10.19.0.0/16"), gre7)
        .unwrap();

    let mut monitor = Monitor::open_in(&ns, EventKinds::ROUTE).unwrap();
    monitor.watch_peers(&pin.0).unwrap();
    monitor.watch_peers(&pin.0).unwrap(); // watched already: nothing more
    assert!(monitor
        .kinds()
        .contains(EventKinds::PEER | EventKinds::ROUTE));
    assert_eq!(
        monitor.peer_folders().collect::<Vec<_>>(),
        [pin.0.as_path()]
    );
    assert!(
        monitor
            .next_timeout(Duration::from_millis(50))
            .unwrap()
            .is_none(),
        "no event before a change"
    );

    // This process.
    let ipip = peer("10.77.0.3", Encap::Ipip);
    let peers = tunnel.peers_mut();
    peers.insert(net("10.20.0.0/16"), gre7).unwrap();
    peers.replace(net("10.20.0.0/16"), ipip).unwrap();
    peers.replace(net("10.20.0.0/16"), ipip).unwrap(); // no change, no event
    peers
        .insert_batch(&[(net("10.22.0.0/16"), gre7), (net("10.21.0.0/16"), ipip)])
        .unwrap();
    peers.remove(net("10.19.0.0/16")).unwrap();
    tunnel.keep_pinned();
    drop(tunnel);
    // A route change between them: the same monitor, its own source.
    common::ip(&ns, &["route", "add", "10.66.0.0/24", "dev", "d0"]);

    // Another process.
    let words = ["remote", "10.77.0.4", "local", "192.0.2.1", "encap", "ipip"];
    let mut add = vec!["peer", "add", "--pin", p, "10.30.0.0/16"];
    add.extend(words);
    let cli_add = cli::lwtun_pid(&add);
    let udp_words = [
        "remote",
        "10.77.0.5",
        "local",
        "192.0.2.1",
        "encap",
        "udp",
        "port",
        "5555",
    ];
    let mut replace = vec!["peer", "replace", "--pin", p, "10.30.0.0/16"];
    replace.extend(udp_words);
    let cli_replace = cli::lwtun_pid(&replace);
    let cli_del = cli::lwtun_pid(&["peer", "del", "--pin", p, "10.20.0.0/16"]);

    let got = events(&mut monitor, 100, Duration::from_millis(300));
    let (routes, peer_events): (Vec<_>, Vec<_>) = got
        .iter()
        .partition(|e| e.kind() == Some(EventKinds::ROUTE));
    assert!(
        routes
            .iter()
            .any(|e| e.action() == "add" && e.route().unwrap().dst == net("10.66.0.0/24")),
        "the route change beside the peers: {routes:?}"
    );
    let udp = peer("10.77.0.5", Encap::Udp { port: 5555 });
    let expected = [
        ("add", net("10.20.0.0/16"), Some(gre7), Some(me)),
        ("change", net("10.20.0.0/16"), Some(ipip), Some(me)),
        // A batch in table order.
        ("add", net("10.21.0.0/16"), Some(ipip), Some(me)),
        ("add", net("10.22.0.0/16"), Some(gre7), Some(me)),
        ("del", net("10.19.0.0/16"), None, Some(me)),
        (
            "add",
            net("10.30.0.0/16"),
            Some(peer("10.77.0.4", Encap::Ipip)),
            Some(cli_add),
        ),
        ("change", net("10.30.0.0/16"), Some(udp), Some(cli_replace)),
        ("del", net("10.20.0.0/16"), None, Some(cli_del)),
    ];
    let summaries: Vec<_> = peer_events.iter().map(|e| summary(e)).collect();
    assert_eq!(summaries, expected, "each change once, in order");
    for e in &peer_events {
        let (Event::PeerAdded { folder, origin, .. }
        | Event::PeerChanged { folder, origin, .. }
        | Event::PeerRemoved { folder, origin, .. }) = &e.event
        else {
            unreachable!()
        };
        assert_eq!(folder, &pin.0);
        let o = origin.as_ref().unwrap();
        if o.writer.pid != me {
            assert_eq!(o.writer.command.as_deref(), Some("lwtun"), "{o:?}");
        }
        assert!(o.time <= e.time, "written before read: {o:?} {:?}", e.time);
    }
    // The old peer of a change, and the line as `lwtun monitor` prints it.
    assert!(matches!(&peer_events[1].event, Event::PeerChanged { old, .. } if *old == gre7));
    let line = peer_events[0].to_string();
    assert_eq!(
        line,
        format!(
            "peer add 10.20.0.0/16 via 10.77.0.2 gre key 7 (pid {me} {})",
            std::fs::read_to_string("/proc/self/comm")
                .unwrap()
                .trim_end()
        )
    );
    // Stamped in order: the monitor's sequence numbers grow by one.
    assert!(got.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert_eq!(monitor.resyncs(), 0);

    // Latency: a change by this process to its event, 50 times; at most the interval (10 ms)
    // plus the time to read, about half of it on average.
    let mut tunnel = Tunnel::builder().pin(&pin.0).load().unwrap();
    let mut took = Vec::new();
    for i in 0..50u8 {
        let prefix = IpNetwork::new(IpAddr::from([10, 50, i, 0]), 24).unwrap();
        // At a different point of the timer's period each time (an event is handed out just
        // after a tick: a change right after it would always wait the whole interval).
        std::thread::sleep(Duration::from_micros(u64::from(i) * 3_700 % 10_000));
        let start = Instant::now();
        tunnel.peers_mut().insert(prefix, ipip).unwrap();
        let e = monitor
            .next_timeout(common::patient(Duration::from_secs(2)))
            .unwrap()
            .expect("the change as an event");
        took.push(start.elapsed());
        assert_eq!(summary(&e), ("add", prefix, Some(ipip), Some(me)));
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "peer change -> event (interval 10 ms, 50 changes): median {:.2} ms, p90 {:.2} ms, max \
         {:.2} ms",
        ms(took[25]),
        ms(took[45]),
        ms(took[49])
    );
    assert!(
        took[25] < common::patient(Duration::from_millis(50)),
        "median latency {:?} far above the 10 ms interval",
        took[25]
    );
    assert_eq!(common::kernel_peers(&pin.0).len(), 53);
}

#[test]
fn a_monitor_left_behind_resyncs_then_diffs_to_the_real_tables() {
    require!();
    let pin = common::PinDir::new("monpeers-flood");
    let mut tunnel = Tunnel::builder()
        .capacity(32_768)
        .pin(&pin.0)
        .load()
        .unwrap();
    let host = |i: u32, key: u32| common::flood_host(41, i, key);
    let start: Vec<_> = (0..300).map(|i| host(i, 0)).collect();
    tunnel.peers_mut().insert_batch(&start).unwrap();
    let mut monitor = Monitor::builder(EventKinds::PEER)
        .peer_interval(Duration::from_millis(5))
        .open()
        .unwrap();
    monitor.watch_peers(&pin.0).unwrap();
    let mut view = common::kernel_peers(&pin.0);

    // More changes than the ring holds (16384) before the monitor reads: 20000 added, 100
    // removed, 50 changed.
    let flood: Vec<_> = (300..20_300).map(|i| host(i, 0)).collect();
    tunnel.peers_mut().insert_batch(&flood).unwrap();
    let gone: Vec<IpNetwork> = (0..100).map(|i| host(i, 0).0).collect();
    tunnel.peers_mut().remove_batch(&gone).unwrap();
    for i in 100..150 {
        let (prefix, peer) = host(i, 9);
        tunnel.peers_mut().replace(prefix, peer).unwrap();
    }

    let first = monitor
        .next_timeout(Duration::from_secs(2))
        .unwrap()
        .expect("an event");
    let Event::Resync {
        reason: ResyncReason::Journal(JournalReason::Overflow { missed }),
        missed: follow,
    } = first.event
    else {
        panic!("no journal resync first: {first:?}");
    };
    assert!(missed > 0);
    assert_eq!(follow, 20_000 + 100 + 50, "the diff, change by change");
    assert!(first
        .to_string()
        .starts_with("resync (peer journal overflow"));
    let diff = events(&mut monitor, follow, Duration::from_secs(1));
    assert_eq!(diff.len(), follow);
    for e in &diff {
        match &e.event {
            Event::PeerAdded {
                prefix,
                peer,
                origin: None,
                ..
            } => assert!(view.insert(*prefix, *peer).is_none()),
            Event::PeerRemoved {
                prefix,
                peer,
                origin: None,
                ..
            } => assert_eq!(view.remove(prefix), Some(*peer)),
            Event::PeerChanged {
                prefix,
                old,
                new,
                origin: None,
                ..
            } => assert_eq!(view.insert(*prefix, *new), Some(*old)),
            other => panic!("not a synthesized peer change: {other:?}"),
        }
    }
    assert_eq!(
        view,
        common::kernel_peers(&pin.0),
        "the diff leads to the kernel's tables"
    );
    assert_eq!(monitor.resyncs(), 1);

    // Then change by change again, with the writer.
    let (prefix, peer) = host(30_000, 1);
    tunnel.peers_mut().insert(prefix, peer).unwrap();
    let next = events(&mut monitor, 2, Duration::from_millis(200));
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(
        summary(&next[0]),
        ("add", prefix, Some(peer), Some(std::process::id()))
    );
}

#[test]
fn a_folder_without_a_tunnel_is_not_found() {
    require!();
    let pin = common::PinDir::new("monpeers-none");
    std::fs::create_dir_all(&pin.0).unwrap();
    let mut monitor = Monitor::open(EventKinds::LINK).unwrap();
    let e = monitor.watch_peers(&pin.0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(monitor.peer_folders().count(), 0);
    assert_eq!(monitor.kinds(), EventKinds::LINK);
}
