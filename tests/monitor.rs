//! The event monitor end to end: changes made by another process (`ip`) and by lwtun (an LWT
//! BPF route) in a namespace of the test's own come out of a `Monitor` once each, in order,
//! decoded; a flood of 100k route changes read slowly through a small receive buffer overruns
//! the socket, and the monitor's resyncs still leave its consumer with the kernel's routes.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use lwtun::monitor::{Event, EventKinds, Monitor, Stamped};
use lwtun::netlink::neigh::NUD_PERMANENT;
use lwtun::netlink::route::{Route, RouteFilter, RT_TABLE_MAIN};
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::program::{Hook, LwtCounter};
use lwtun::route::LwtRoute;
use lwtun::ErrorKind;

/// `ip` with its arguments as one string, run in `ns` by another process.
fn ip(ns: &NetNs, args: &str) -> String {
    common::ip(ns, &args.split_whitespace().collect::<Vec<_>>())
}

/// The events as `ip monitor` lines, numbered, for failure messages.
fn lines(events: &[Stamped<Event>]) -> String {
    events
        .iter()
        .map(|e| format!("\n  #{} {e}", e.seq))
        .collect()
}

/// Every event until none comes for `quiet`.
fn drain(m: &mut Monitor, quiet: Duration) -> Vec<Stamped<Event>> {
    let mut out = Vec::new();
    while let Some(e) = m.next_timeout(common::patient(quiet)).unwrap() {
        out.push(e);
    }
    out
}

/// A namespace with a veth device `d0` up (its peer `d0p` too), holding 10.80.0.1/24.
fn with_device(prefix: &str) -> NetNs {
    let ns = common::netns(prefix);
    ip(&ns, "link add d0 type veth peer name d0p");
    ip(&ns, "link set d0p up");
    ip(&ns, "link set d0 up");
    ip(&ns, "addr add 10.80.0.1/24 dev d0");
    ns
}

#[test]
fn route_changes_from_another_process_and_lwt_routes_come_once_in_order() {
    require!();
    let ns = with_device("monr");
    let d0 = common::ifindex(&ns, "d0");
    let mut monitor = Monitor::open_in(&ns, EventKinds::ROUTE).unwrap();
    // Let what bringing d0 up still announces (IPv6 link-local routes) pass.
    drain(&mut monitor, Duration::from_millis(300));

    ip(&ns, "route add 10.81.0.0/24 dev d0");
    ip(&ns, "route replace 10.81.0.0/24 dev d0 mtu 1400");
    ip(&ns, "-6 route add fd81::/64 dev d0");
    let counter = LwtCounter::load().unwrap();
    let mut nl = Netlink::open_in(&ns).unwrap();
    let dev = nl.device("d0").unwrap();
    let lwt = LwtRoute::new("10.82.0.0/24".parse().unwrap())
        .device(&dev)
        .program(Hook::Xmit, counter.program(Hook::Xmit))
        .install(&mut nl)
        .unwrap();
    let xmit_name = lwt
        .route()
        .bpf_encap()
        .unwrap()
        .xmit
        .as_ref()
        .unwrap()
        .name
        .clone();
    ip(&ns, "route del 10.81.0.0/24");
    ip(&ns, "-6 route del fd81::/64");
    drop(lwt);

    let events = drain(&mut monitor, Duration::from_millis(500));
    for pair in events.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "sequence numbers grow by one");
    }
    let ours: Vec<String> = events
        .iter()
        .filter(|e| {
            e.route().is_some_and(|r| {
                ["10.81.0.0/24", "fd81::/64", "10.82.0.0/24"].contains(&r.dst.to_string().as_str())
            })
        })
        .map(|e| format!("{} {}", e.action(), e.route().unwrap().dst))
        .collect();
    assert_eq!(
        ours,
        [
            "add 10.81.0.0/24",
            "change 10.81.0.0/24",
            "add fd81::/64",
            "add 10.82.0.0/24",
            "del 10.81.0.0/24",
            "del fd81::/64",
            "del 10.82.0.0/24"
        ],
        "every change once, in order; all events: {}",
        lines(&events)
    );
    // Decoded fields: device, MTU of the replacement, the LWT program by name.
    let routes: Vec<&Route> = events.iter().filter_map(|e| e.route()).collect();
    assert!(routes.iter().all(|r| r.oif == Some(d0)), "{routes:#?}");
    let changed = events.iter().find(|e| e.action() == "change").unwrap();
    assert_eq!(changed.route().unwrap().mtu.map(|m| m.bytes), Some(1400));
    let lwt_added = events
        .iter()
        .find(|e| matches!(&e.event, Event::RouteAdded(r) if r.dst.to_string() == "10.82.0.0/24"))
        .unwrap();
    let encap = lwt_added
        .route()
        .unwrap()
        .bpf_encap()
        .expect("an LWT BPF encap");
    assert_eq!(encap.xmit.as_ref().unwrap().name, xmit_name);
    assert!(encap.input.is_none() && encap.output.is_none());
    assert!(
        lwt_added
            .to_string()
            .contains(&format!("encap bpf xmit {xmit_name}")),
        "{lwt_added}"
    );
    assert_eq!(monitor.resyncs(), 0);
    assert_eq!(monitor.undecodable(), 0);
}

/// What happened to one object, in order: `add`, `change`, `del`.
fn actions(events: &[Stamped<Event>], pick: impl Fn(&Event) -> bool) -> Vec<&'static str> {
    events
        .iter()
        .filter(|e| pick(&e.event))
        .map(|e| e.action())
        .collect()
}

/// The position of the first event `pick` accepts.
fn first(events: &[Stamped<Event>], pick: impl Fn(&Event) -> bool) -> usize {
    events
        .iter()
        .position(|e| pick(&e.event))
        .unwrap_or_else(|| panic!("an expected event is missing from {}", lines(events)))
}

#[test]
fn links_addresses_neighbours_and_nexthops_come_once_in_order() {
    require!();
    let ns = common::netns("monl");
    let mut monitor = Monitor::open_in(
        &ns,
        EventKinds::LINK | EventKinds::ADDRESS | EventKinds::NEIGH | EventKinds::NEXTHOP,
    )
    .unwrap();
    ip(&ns, "link add va type veth peer name vb");
    let va = common::ifindex(&ns, "va");
    ip(&ns, "link set va up");
    ip(&ns, "link set vb up");
    ip(&ns, "addr add 10.83.0.1/24 dev va");
    ip(&ns, "-6 addr add fd83::1/64 dev va nodad");
    ip(
        &ns,
        "neigh add 10.83.0.2 lladdr 02:00:00:00:83:02 dev va nud permanent",
    );
    ip(&ns, "nexthop add id 8301 dev va");
    ip(&ns, "neigh del 10.83.0.2 dev va");
    ip(&ns, "nexthop del id 8301");
    ip(&ns, "addr del 10.83.0.1/24 dev va");
    ip(&ns, "link set va down");
    ip(&ns, "link del va");
    let events = drain(&mut monitor, Duration::from_millis(500));

    let is_va = |e: &Event| matches!(e, Event::LinkAdded(l) | Event::LinkChanged(l) | Event::LinkRemoved(l) if l.name == "va");
    let va_actions = actions(&events, is_va);
    assert_eq!(va_actions.first(), Some(&"add"), "{}", lines(&events));
    assert_eq!(va_actions.last(), Some(&"del"));
    assert_eq!(va_actions.iter().filter(|a| **a == "add").count(), 1);
    assert_eq!(va_actions.iter().filter(|a| **a == "del").count(), 1);
    let vb_actions = actions(
        &events,
        |e| matches!(e, Event::LinkAdded(l) | Event::LinkRemoved(l) if l.name == "vb"),
    );
    assert_eq!(vb_actions, ["add", "del"], "the peer appears and goes once");
    let va_added = first(
        &events,
        |e| matches!(e, Event::LinkAdded(l) if l.name == "va"),
    );
    assert_eq!(
        events[va_added].event,
        Event::LinkAdded(match &events[va_added].event {
            Event::LinkAdded(l) => {
                assert_eq!((l.index, l.kind.as_deref()), (va, Some("veth")));
                l.clone()
            }
            _ => unreachable!(),
        })
    );
    let va_up = first(
        &events,
        |e| matches!(e, Event::LinkChanged(l) if l.name == "va" && l.up),
    );
    let va_down = first(
        &events,
        |e| matches!(e, Event::LinkChanged(l) if l.name == "va" && !l.up),
    );

    let v4: IpNetwork = "10.83.0.1/24".parse().unwrap();
    let v6: IpNetwork = "fd83::1/64".parse().unwrap();
    let addr = |n: IpNetwork| move |e: &Event| matches!(e, Event::AddressAdded(a) | Event::AddressChanged(a) | Event::AddressRemoved(a) if a.network == n && a.index == va);
    assert_eq!(
        actions(&events, addr(v4)),
        ["add", "del"],
        "{}",
        lines(&events)
    );
    let v6_actions = actions(&events, addr(v6));
    assert_eq!(
        (v6_actions.first(), v6_actions.last()),
        (Some(&"add"), Some(&"del")),
        "{}",
        lines(&events)
    );
    assert_eq!(v6_actions.iter().filter(|a| **a != "change").count(), 2);

    let neighbour_ip: IpAddr = "10.83.0.2".parse().unwrap();
    let neigh = |e: &Event| matches!(e, Event::NeighbourAdded(n) | Event::NeighbourChanged(n) | Event::NeighbourRemoved(n) if n.ip == neighbour_ip);
    // Deleting a neighbour is, in the kernel, a change to FAILED and then the removal.
    let neigh_actions = actions(&events, neigh);
    assert_eq!(
        (neigh_actions.first(), neigh_actions.last()),
        (Some(&"add"), Some(&"del")),
        "{}",
        lines(&events)
    );
    assert_eq!(neigh_actions.iter().filter(|a| **a != "change").count(), 2);
    let n_added = first(
        &events,
        |e| matches!(e, Event::NeighbourAdded(n) if n.ip == neighbour_ip),
    );
    match &events[n_added].event {
        Event::NeighbourAdded(n) => {
            assert_eq!(n.index, va);
            assert_eq!(n.lladdr.as_deref(), Some(&[2, 0, 0, 0, 0x83, 2][..]));
            assert!(n.state & NUD_PERMANENT != 0, "{n}");
        }
        _ => unreachable!(),
    }

    let nh = |e: &Event| matches!(e, Event::NexthopAdded(n) | Event::NexthopChanged(n) | Event::NexthopRemoved(n) if n.id == 8301);
    assert_eq!(actions(&events, nh), ["add", "del"], "{}", lines(&events));
    let nh_added = first(
        &events,
        |e| matches!(e, Event::NexthopAdded(n) if n.id == 8301),
    );
    match &events[nh_added].event {
        Event::NexthopAdded(n) => assert_eq!(n.oif, Some(va)),
        _ => unreachable!(),
    }

    // The order the commands ran in. Not the IPv6 address: the kernel announces a new IPv6
    // address from its duplicate address detection work (queued even with nodad), which can
    // run after the next commands (seen here after the neighbour and even the IPv4 address
    // deletion).
    let order = [
        va_added,
        va_up,
        first(
            &events,
            |e| matches!(e, Event::AddressAdded(a) if a.network == v4),
        ),
        n_added,
        nh_added,
        first(
            &events,
            |e| matches!(e, Event::NeighbourRemoved(n) if n.ip == neighbour_ip),
        ),
        first(&events, |e| matches!(e, Event::NexthopRemoved(_))),
        first(
            &events,
            |e| matches!(e, Event::AddressRemoved(a) if a.network == v4),
        ),
        va_down,
        first(
            &events,
            |e| matches!(e, Event::LinkRemoved(l) if l.name == "va"),
        ),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "out of order: {order:?} in {}",
        lines(&events)
    );
    assert_eq!(monitor.resyncs(), 0);
}

/// The route table as a consumer keeps it: key → (device, MTU).
type View = BTreeMap<(u32, IpNetwork, u8, u32), (Option<u32>, Option<u32>)>;

fn view_key(r: &Route) -> (u32, IpNetwork, u8, u32) {
    (r.table, r.dst, r.tos, r.metric.unwrap_or(0))
}

fn view_value(r: &Route) -> (Option<u32>, Option<u32>) {
    (r.oif, r.mtu.map(|m| m.bytes))
}

#[test]
fn a_flood_read_slowly_overruns_and_resyncs_without_losing_a_change() {
    require!();
    const ROUTES: usize = 50_000;
    let ns = with_device("monf");
    // A small buffer and a slow reader: the kernel has to drop events.
    let mut monitor = Monitor::builder(EventKinds::ROUTE)
        .receive_buffer(64 << 10)
        .open_in(&ns)
        .unwrap();
    let mut view: View = monitor
        .known_routes()
        .map(|r| (view_key(r), view_value(r)))
        .collect();

    // 50k adds, 25k deletes (the even ones), 25k replaces (the odd ones get an MTU): 100k
    // changes, from another process.
    let dir = std::env::temp_dir().join(format!("lwtun-monitor-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let batch = dir.join("routes.batch");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&batch).unwrap());
    let dst = |i: usize| {
        format!(
            "10.{}.{}.{}/28",
            100 + i / 4096,
            (i / 16) % 256,
            (i % 16) * 16
        )
    };
    for i in 0..ROUTES {
        writeln!(f, "route add {} dev d0", dst(i)).unwrap();
    }
    for i in 0..ROUTES {
        if i % 2 == 0 {
            writeln!(f, "route del {} dev d0", dst(i)).unwrap();
        } else {
            writeln!(f, "route replace {} dev d0 mtu 1400", dst(i)).unwrap();
        }
    }
    drop(f);
    let changes = ROUTES * 2;
    let started = Instant::now();
    let mut child = ns.command("ip").arg("-batch").arg(&batch).spawn().unwrap();

    let mut received = 0usize;
    let mut resyncs = 0usize;
    let mut missed = 0usize;
    let mut writer_done = None;
    loop {
        match monitor
            .next_timeout(common::patient(Duration::from_secs(2)))
            .unwrap()
        {
            Some(e) => {
                received += 1;
                match &e.event {
                    Event::RouteAdded(r) | Event::RouteChanged(r) => {
                        view.insert(view_key(r), view_value(r));
                    }
                    Event::RouteRemoved(r) => {
                        view.remove(&view_key(r));
                    }
                    Event::Resync { missed: m, .. } => {
                        resyncs += 1;
                        missed += m;
                    }
                    other => panic!("a route monitor delivered {other}"),
                }
                // The slow reader.
                if received % 16 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            None if writer_done.is_some() => break,
            None => {}
        }
        if writer_done.is_none() {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "ip -batch failed: {status}");
                writer_done = Some(started.elapsed());
            }
        }
    }
    let elapsed = started.elapsed();
    child.wait().unwrap(); // reaped already by try_wait; for the lint's sake
    std::fs::remove_dir_all(&dir).unwrap();

    let mut nl = Netlink::open_in(&ns).unwrap();
    let kernel: View = nl
        .routes(&RouteFilter::all())
        .unwrap()
        .iter()
        .chain(
            nl.routes(&RouteFilter {
                table: Some(255),
                ..RouteFilter::all()
            })
            .unwrap()
            .iter(),
        )
        .map(|r| (view_key(r), view_value(r)))
        .collect();
    // The batch's routes left at the end: the odd ones, with their MTU.
    let ours = |v: &View| {
        v.iter()
            .filter(|(k, val)| k.0 == RT_TABLE_MAIN && val.1 == Some(1400))
            .count()
    };
    // Straight to stderr: libtest hides eprintln! of a passing test, and these are the figures.
    let figures = format!(
        "monitor flood: {changes} route changes by ip -batch in {:.2?}; {received} events read \
         in {elapsed:.2?} (reader sleeping 200 µs every 16 events, receive buffer {} bytes); \
         {resyncs} resync(s) delivering {missed} missed change(s), {} events as they happened; {} \
         routes at the end",
        writer_done.unwrap(),
        monitor.receive_buffer(),
        received - resyncs - missed,
        ours(&kernel)
    );
    let _ = std::io::stderr().write_all(format!("{figures}\n").as_bytes());
    assert_eq!(ours(&kernel), ROUTES / 2, "the batch leaves the odd routes");
    assert!(resyncs >= 1, "a 64 KiB buffer read slowly must overrun");
    assert_eq!(resyncs as u64, monitor.resyncs());
    if view != kernel {
        let only_view: Vec<_> = view
            .iter()
            .filter(|(k, v)| kernel.get(k) != Some(v))
            .take(5)
            .collect();
        let only_kernel: Vec<_> = kernel
            .iter()
            .filter(|(k, v)| view.get(k) != Some(v))
            .take(5)
            .collect();
        panic!("the events' view differs from the kernel's: view has {only_view:?}, kernel has {only_kernel:?}");
    }
}

/// A monitor moves to a reader thread or an async task.
#[test]
fn a_monitor_is_send() {
    fn send<T: Send>() {}
    send::<Monitor>();
    send::<Stamped<Event>>();
}

#[test]
fn no_kinds_is_refused_and_nexthops_are_typed_when_missing() {
    require!();
    let ns = common::netns("monu");
    let e = Monitor::open_in(&ns, EventKinds::empty()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("EventKinds::ROUTE"), "{e}");
    match Monitor::open_in(&ns, EventKinds::NEXTHOP) {
        Ok(m) => assert_eq!(m.kinds(), EventKinds::NEXTHOP),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
            assert!(e.to_string().contains("5.3"), "{e}");
            common::skipped_for_kernel(&common::test_name(), "nexthop objects");
        }
    }
    assert_eq!(
        EventKinds::from_names(["route", "tunnel"])
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        EventKinds::from_names(["route", "peer"]).unwrap(),
        EventKinds::ROUTE | EventKinds::PEER
    );
}
