//! Repair by events: a tunnel told to keep its routes puts back a route someone else deletes,
//! with its own program (packets are encapsulated again, on the wire and in the peer's
//! counters), says so in its events, and leaves alone what it removes itself or what another
//! owner replaced.
//!
//! ```text
//!  A (inner 10.30.0.1 on lo) ── to1 ═══ veth underlay ═══ to0 ── B (10.20.0.2 on lo)
//!        10.77.0.1                                           10.77.0.2
//! ```

mod common;

use std::time::{Duration, Instant};

use common::Capture;
use lwtun::monitor::Event;
use lwtun::netlink::Netlink;
use lwtun::peer::{Encap, EncapPeer};
use lwtun::tunnel::Tunnel;

const PREFIX: &str = "10.20.0.0/16";

struct Setup {
    net: common::Line,
    tunnel: Tunnel,
}

fn setup() -> Setup {
    let net = common::two_hosts();
    common::ip(net.ns(0), &["addr", "add", "10.30.0.1/32", "dev", "lo"]);
    common::ip(net.ns(1), &["addr", "add", "10.20.0.2/32", "dev", "lo"]);
    let mut nl = Netlink::open_in(net.ns(0)).unwrap();
    let mut tunnel = Tunnel::load().unwrap();
    let peer = EncapPeer::new(
        "10.77.0.2".parse().unwrap(),
        "10.77.0.1".parse().unwrap(),
        Encap::Gre {
            key: Some(7),
            checksum: false,
        },
    );
    tunnel
        .peers_mut()
        .insert(PREFIX.parse().unwrap(), peer)
        .unwrap();
    let route = tunnel
        .route(PREFIX.parse().unwrap())
        .device(&net.device(0, "to1"))
        .source("10.30.0.1".parse().unwrap());
    tunnel.steer(&mut nl, route).unwrap();
    Setup { net, tunnel }
}

impl Setup {
    fn shown(&self) -> String {
        common::ip(self.net.ns(0), &["route", "show", PREFIX])
    }

    /// Waits until `ip route show` has the tunnel's route again; how long that took.
    fn until_back(&self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.shown().contains("encap bpf") {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }

    /// The events the tunnel's keepers reported within `limit`, at least `want` of them.
    fn events(&self, want: usize, limit: Duration) -> Vec<Event> {
        let start = Instant::now();
        let mut got = Vec::new();
        while got.len() < want && start.elapsed() < limit {
            got.extend(self.tunnel.route_events().into_iter().map(|e| e.event));
            std::thread::sleep(Duration::from_millis(5));
        }
        got
    }
}

#[test]
fn a_deleted_route_is_put_back_and_carries_traffic() {
    require!();
    let mut s = setup();
    s.tunnel.keep_routes().unwrap();
    assert!(s.shown().contains("encap bpf"), "{}", s.shown());

    // Someone else (another process) deletes the route.
    common::ip(s.net.ns(0), &["route", "del", PREFIX]);
    let back = s.until_back(common::patient(Duration::from_secs(2)));
    let Some(back) = back else {
        panic!("the route was not put back: `{}`", s.shown());
    };
    eprintln!(
        "route back {:.2} ms after `ip route del` returned",
        back.as_secs_f64() * 1e3
    );

    let events = s.events(1, Duration::from_secs(2));
    let [Event::RouteRestored { route, after }] = events.as_slice() else {
        panic!("expected one RouteRestored, got {events:?}");
    };
    assert_eq!(route.dst.to_string(), PREFIX);
    eprintln!(
        "keeper: deletion event to route back {:.3} ms",
        after.as_secs_f64() * 1e3
    );

    // The restored route runs the tunnel's program: GRE with key 7 on the wire, counted.
    let cap = Capture::start_with(s.net.ns(1), "to0", "ip proto 47", 3, &["-v"]);
    let _ = common::ping_with(
        s.net.ns(0),
        "10.20.0.2".parse().unwrap(),
        3,
        &["-I", "10.30.0.1", "-i", "0.1", "-W", "1"],
    );
    let lines = cap.finish(Duration::from_secs(3));
    let text = lines.join("\n");
    assert!(lines.len() >= 3 && text.contains("key=0x7"), "{text}");
    let stats = s.tunnel.peers().stats(PREFIX.parse().unwrap()).unwrap();
    assert_eq!(stats.packets, 3, "{stats:?}");

    // Deleted again: put back again.
    common::ip(s.net.ns(0), &["route", "del", PREFIX]);
    assert!(s
        .until_back(common::patient(Duration::from_secs(2)))
        .is_some());
    let events = s.events(1, Duration::from_secs(2));
    assert!(
        matches!(events.as_slice(), [Event::RouteRestored { .. }]),
        "{events:?}"
    );
}

#[test]
fn what_the_owner_removes_or_another_owner_replaces_stays_so() {
    require!();
    let mut s = setup();
    s.tunnel.keep_routes().unwrap();

    // Another owner replaces the route with its own (a plain route here): theirs stays.
    common::ip(
        s.net.ns(0),
        &["route", "replace", PREFIX, "dev", "to1", "metric", "0"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let shown = s.shown();
    assert!(
        !shown.contains("encap"),
        "the replacement was undone: {shown}"
    );
    assert!(s.tunnel.route_events().is_empty());

    // The tunnel's own removal is not undone.
    let mut nl = Netlink::open_in(s.net.ns(0)).unwrap();
    common::ip(s.net.ns(0), &["route", "del", PREFIX]);
    let _ = s.events(1, Duration::from_millis(500)); // the deletion of the replacement
    let route = s
        .tunnel
        .route(PREFIX.parse().unwrap())
        .device(&s.net.device(0, "to1"))
        .source("10.30.0.1".parse().unwrap());
    s.tunnel.steer(&mut nl, route).unwrap(); // kept too: steered after keep_routes
                                             // The first route, replaced and deleted by someone else, is not there to remove.
    let err = s.tunnel.remove_routes().unwrap_err();
    assert_eq!(err.kind(), lwtun::ErrorKind::NotFound, "{err}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.shown().trim(), "", "a removed route came back");
    assert!(s.tunnel.route_events().is_empty());

    // A route steered after keep_routes is kept; dropping the tunnel removes it for good.
    let route = s
        .tunnel
        .route(PREFIX.parse().unwrap())
        .device(&s.net.device(0, "to1"))
        .source("10.30.0.1".parse().unwrap());
    s.tunnel.steer(&mut nl, route).unwrap();
    common::ip(s.net.ns(0), &["route", "del", PREFIX]);
    assert!(s
        .until_back(common::patient(Duration::from_secs(2)))
        .is_some());
    let Setup { net, tunnel } = s;
    drop(tunnel);
    std::thread::sleep(Duration::from_millis(300));
    let shown = common::ip(net.ns(0), &["route", "show", PREFIX]);
    assert_eq!(shown.trim(), "", "the dropped tunnel's route came back");
}
