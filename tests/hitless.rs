//! Hitless changes under traffic: with a steady flow through a tunnel (ping every 10 ms plus a
//! TCP stream of a known pattern), each change a running data plane goes through happens in the
//! middle of it, and nothing is lost: every echo request answered, every TCP byte intact.
//!
//! ```text
//!  A (ns 0) ──────── B (ns 1) ──────── C (ns 2)
//!  10.30.0.1 (lo)      10.20.0.2 (lo)
//!     └── GRE to B ──────►┘
//!     └── GRE to C (forwarded by B) ─────► decap, then routed back to B's 10.20.0.2
//! ```
//!
//! The service (ping and the TCP server) is B's; A reaches it through a tunnel to B or, once its
//! peer moves, through a tunnel to C, which decapsulates and forwards to B, so a TCP connection
//! survives the move.
//!
//! Each test prints how many packets the tunnel carried while the change itself ran.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use lwtun::decap::{Decap, DecapPeer};
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::peer::{Encap, EncapPeer};
use lwtun::route::{self, Hook};
use lwtun::tunnel::Tunnel;
use lwtun::xdp::{Stage, XdpAction, XdpAttachment, XdpMode, XdpOptions, XdpRouter};
use lwtun::ErrorKind;

/// One flow at a time: the tests measure loss, so they do not share the CPUs.
static SERIAL: Mutex<()> = Mutex::new(());

const GRE: Encap = Encap::Gre {
    key: Some(9),
    checksum: false,
};
const READY: &str = "LWTUN-HITLESS-READY";

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

/// B: the service, a decap for A's tunnel, and a tunnel back to A's 10.30.0.0/16.
struct Service {
    _tunnel: Tunnel,
    decap: Decap,
}

fn service(ns: &NetNs) -> Service {
    let dev = common::device(ns, "to0");
    let mut nl = Netlink::open_in(ns).unwrap();
    let mut tunnel = Tunnel::builder().source(addr("10.20.0.2")).load().unwrap();
    tunnel
        .peers_mut()
        .insert(
            net("10.30.0.0/16"),
            EncapPeer::new(addr("10.77.0.1"), addr("10.77.0.2"), GRE),
        )
        .unwrap();
    let route = tunnel.route(net("10.30.0.0/16")).device(&dev);
    tunnel.steer(&mut nl, route).unwrap();
    Service {
        _tunnel: tunnel,
        decap: decap_for_a(&dev, "10.77.0.2"),
    }
}

fn decap_for_a(dev: &lwtun::device::Device, local: &str) -> Decap {
    let mut decap = Decap::load().unwrap();
    decap.add_local(addr(local)).unwrap();
    decap.add_peer(DecapPeer::host(addr("10.77.0.1"))).unwrap();
    decap.attach(dev).unwrap();
    decap
}

/// The line of three namespaces, B's service, C's decap and A's decap (for B's answers).
struct Setup {
    line: common::Line,
    b: Service,
    c: Decap,
    _a_decap: Decap,
}

fn setup() -> Setup {
    let line = common::line(3);
    common::ip(line.ns(0), &["addr", "add", "10.30.0.1/32", "dev", "lo"]);
    common::ip(line.ns(1), &["addr", "add", "10.20.0.2/32", "dev", "lo"]);
    // C forwards what it decapsulates to B's service address.
    line.ns(2).set_sysctl("net.ipv4.ip_forward", "1").unwrap();
    common::ip(
        line.ns(2),
        &["route", "add", "10.20.0.2/32", "via", "10.77.1.1"],
    );
    let b = service(line.ns(1));
    let c = decap_for_a(&line.device(2, "to1"), "10.77.1.2");
    let mut a_decap = Decap::load().unwrap();
    a_decap.add_local(addr("10.77.0.1")).unwrap();
    a_decap
        .add_peer(DecapPeer::host(addr("10.77.0.2")))
        .unwrap();
    a_decap.attach(&line.device(0, "to1")).unwrap();
    Setup {
        line,
        b,
        c,
        _a_decap: a_decap,
    }
}

impl Setup {
    /// Packets B and C decapsulated so far (A's requests and TCP segments).
    fn carried(&self) -> u64 {
        self.b.decap.counters().unwrap().decapsulated() + self.c.counters().unwrap().decapsulated()
    }
}

/// A's tunnel as the tests load it: pinned when `pin` is given, its peer to B, steered.
fn a_tunnel(s: &Setup, pin: Option<&PathBuf>) -> Tunnel {
    a_tunnel_sized(s, pin, 4096)
}

fn a_tunnel_sized(s: &Setup, pin: Option<&PathBuf>, capacity: u32) -> Tunnel {
    let mut b = Tunnel::builder()
        .source(addr("10.30.0.1"))
        .capacity(capacity);
    if let Some(p) = pin {
        b = b.pin(p);
    }
    let mut t = b.load().unwrap();
    t.peers_mut()
        .insert(
            net("10.20.0.0/16"),
            EncapPeer::new(addr("10.77.0.2"), addr("10.77.0.1"), GRE),
        )
        .unwrap();
    let mut nl = Netlink::open_in(s.line.ns(0)).unwrap();
    let route = t
        .route(net("10.20.0.0/16"))
        .device(&s.line.device(0, "to1"));
    t.steer(&mut nl, route).unwrap();
    t
}

/// What the flow saw.
struct Flow {
    ping: common::Ping,
    tcp: common::TcpTransfer,
    /// Packets decapsulated at B and C while the change ran.
    during_change: u64,
    change_took: Duration,
}

/// Runs ping (300 requests, 10 ms apart) and a 48 MB TCP stream from A to B's 10.20.0.2, and
/// `change` 0.3 s into them; asserts that nothing was lost and that the stream was still going
/// when the change ended.
fn under_traffic(s: &Setup, what: &str, change: impl FnOnce()) -> Flow {
    steady_flow(
        s.line.ns(0),
        s.line.ns(1),
        addr("10.20.0.2"),
        &["-I", "10.30.0.1"],
        || s.carried(),
        what,
        change,
    )
}

/// The flow of [`under_traffic`] from `client` to `dst` in `server`; `carried` counts what the
/// changed part of the data plane handled.
fn steady_flow(
    client: &NetNs,
    server: &NetNs,
    dst: IpAddr,
    ping_args: &[&str],
    carried: impl Fn() -> u64,
    what: &str,
    change: impl FnOnce(),
) -> Flow {
    let warm = common::ping_with(client, dst, 2, ping_args);
    assert_eq!(
        warm.received, 2,
        "no path before the change: {}",
        warm.output
    );
    let mut args = ping_args.to_vec();
    args.extend_from_slice(&["-i", "0.01", "-W", "2"]);
    let flow = std::thread::scope(|sc| {
        let ping = sc.spawn(|| common::ping_with(client, dst, 300, &args));
        let tcp = sc.spawn(|| common::tcp_stream(server, client, dst, 48 << 20));
        std::thread::sleep(Duration::from_millis(300));
        let before = carried();
        let start = Instant::now();
        change();
        let change_took = start.elapsed();
        let during_change = carried() - before;
        Flow {
            ping: ping.join().unwrap(),
            tcp: tcp.join().unwrap(),
            during_change,
            change_took,
        }
    });
    assert_eq!(flow.ping.transmitted, 300, "{}", flow.ping.output);
    assert_eq!(
        flow.ping.received, 300,
        "{what}: echo replies lost: {}",
        flow.ping.output
    );
    assert!(flow.tcp.complete(), "{what}: TCP: {:?}", flow.tcp);
    assert!(
        flow.tcp.elapsed > Duration::from_millis(300) + flow.change_took,
        "{what}: the TCP stream ended ({:?}) before the change did (0.3 s + {:?}): it tested \
         nothing; make the stream longer",
        flow.tcp.elapsed,
        flow.change_took
    );
    eprintln!(
        "{what}: 300/300 pings, {} MB TCP intact ({:?}); the change took {:?}, {} packets \
         went through during it",
        flow.tcp.sent >> 20,
        flow.tcp.elapsed,
        flow.change_took,
        flow.during_change
    );
    flow
}

/// The XDP router of a three-namespace line is replaced by a new one (its own maps and ports,
/// set up aside) on both ports, atomically per port, under traffic.
#[test]
fn xdp_program_replaced_under_traffic() {
    require!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let l = common::line(3);
    let (left, right) = (l.ns(0), l.ns(2));
    common::tx_checksum_off(left, "to1");
    common::tx_checksum_off(right, "to1");
    let (to0, to2) = (l.device(1, "to0"), l.device(1, "to2"));
    let (left_dev, right_dev) = (l.device(0, "to1"), l.device(2, "to1"));
    let native = XdpOptions {
        mode: XdpMode::Native,
        ..Default::default()
    };
    let router = || {
        let r = XdpRouter::load().unwrap();
        r.add_port_with_receiver(&to0, &left_dev).unwrap();
        r.add_port_with_receiver(&to2, &right_dev).unwrap();
        r
    };
    let old = router();
    let mut atts = vec![
        old.attach(&to0, native).unwrap(),
        old.attach(&to2, native).unwrap(),
    ];
    let new = router();
    let redirected = |r: &XdpRouter| {
        r.stats()
            .snapshot(Stage::Ingress)
            .unwrap()
            .get(XdpAction::Redirect)
            .packets
    };
    let dst = IpAddr::V4(l.v4(2));
    steady_flow(
        left,
        right,
        dst,
        &[],
        || redirected(&old) + redirected(&new),
        "XDP router replaced",
        || {
            for a in &mut atts {
                a.replace(new.program()).unwrap();
            }
        },
    );
    let (by_old, by_new) = (redirected(&old), redirected(&new));
    assert!(
        by_old > 100 && by_new > 100,
        "both routers forwarded: old {by_old}, new {by_new}"
    );
    for (a, dev) in atts.iter().zip([&to0, &to2]) {
        assert_eq!(
            XdpAttachment::query(dev).unwrap().native,
            Some(new.program().id()),
            "{a:?}"
        );
    }
}

fn xmit_program_id(ns: &NetNs) -> u32 {
    let mut nl = Netlink::open_in(ns).unwrap();
    let routes = route::lwt_routes(&mut nl).unwrap();
    let r = routes
        .iter()
        .find(|r| r.dst == net("10.20.0.0/16"))
        .expect("A's route");
    route::program_of(r, Hook::Xmit).unwrap().unwrap().id()
}

/// A new version of the encap program replaces the running one: the new owner adopts the pinned
/// tables and swaps the route's program in one replace.
#[test]
fn encap_program_replaced_under_traffic() {
    require!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup();
    let dir = common::PinDir::new("program");
    let old = a_tunnel(&s, Some(&dir.0));
    let old_id = xmit_program_id(s.line.ns(0));
    let mut new = None;
    under_traffic(&s, "encap program replaced", || {
        old.hand_over().unwrap();
        let mut t = Tunnel::builder()
            .pin(&dir.0)
            .source(addr("10.30.0.1"))
            .load()
            .unwrap();
        assert!(t.adopted());
        let mut nl = Netlink::open_in(s.line.ns(0)).unwrap();
        let route = t
            .route(net("10.20.0.0/16"))
            .device(&s.line.device(0, "to1"));
        t.steer_replace(&mut nl, route).unwrap();
        new = Some(t);
    });
    let new = new.unwrap();
    let new_id = xmit_program_id(s.line.ns(0));
    assert_ne!(old_id, new_id, "the route runs the new program");
    assert_eq!(new.xmit_program().id(), new_id);
    assert!(
        new.peers().stats(net("10.20.0.0/16")).unwrap().packets > 300,
        "the adopted peer's counters go on"
    );
}

/// 10 000 peers move from B to C (each replaced in place), among them the flow's own.
#[test]
fn ten_thousand_peers_moved_under_traffic() {
    require!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup();
    let mut a = a_tunnel_sized(&s, None, 16_384);
    let others: Vec<IpNetwork> = (0..9_999u32)
        .map(|i| IpNetwork::new(IpAddr::from([10, 21, (i >> 8) as u8, i as u8]), 32).unwrap())
        .collect();
    let to_b = EncapPeer::new(addr("10.77.0.2"), addr("10.77.0.1"), GRE);
    let to_c = EncapPeer::new(addr("10.77.1.2"), addr("10.77.0.1"), GRE);
    let batch: Vec<_> = others.iter().map(|p| (*p, to_b)).collect();
    a.peers_mut().insert_batch(&batch).unwrap();
    let mut all = others.clone();
    // The flow's peer moves in the middle of the others.
    all.insert(5_000, net("10.20.0.0/16"));
    let flow = under_traffic(&s, "10k peers moved", || {
        for p in &all {
            a.peers_mut().replace(*p, to_c).unwrap();
        }
    });
    assert_eq!(a.peers().len(), 10_000);
    assert!(a.peers().iter().all(|(_, p)| *p == to_c));
    let at_c = s.c.counters().unwrap().decapsulated();
    assert!(
        at_c > 100,
        "the flow reached C after the move: {at_c} (moved in {:?})",
        flow.change_took
    );
}

/// The process that controls the tunnel restarts: once handing over cleanly, once killed with
/// SIGKILL; each time a new process adopts the pins and takes the route over.
#[test]
fn controlling_process_restarts_under_traffic() {
    require!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup();
    let dir = common::PinDir::new("restart");
    a_tunnel(&s, Some(&dir.0)).hand_over().unwrap();
    let ns0 = s.line.ns(0).name().to_string();
    let dir_s = dir.0.to_str().unwrap().to_string();
    let mut first = Owner::start(&ns0, &dir_s);
    let first_id = xmit_program_id(s.line.ns(0));
    let mut third = None;
    under_traffic(
        &s,
        "controlling process restarted (hand-over, then SIGKILL)",
        || {
            first.hand_over();
            let mut second = Owner::start(&ns0, &dir_s);
            second.kill();
            third = Some(Owner::start(&ns0, &dir_s));
        },
    );
    let third_id = xmit_program_id(s.line.ns(0));
    assert_ne!(
        first_id, third_id,
        "the last owner's program runs the route"
    );
    third.unwrap().hand_over();
    // What the owners left: one route and the pins, which this process removes.
    let mut nl = Netlink::open_in(s.line.ns(0)).unwrap();
    assert_eq!(route::remove_leftovers(&mut nl).unwrap(), 1);
    let t = Tunnel::builder().pin(&dir.0).load().unwrap();
    assert!(t.adopted());
    assert!(t.peers().stats(net("10.20.0.0/16")).unwrap().packets > 300);
    drop(t);
    assert!(!dir.0.exists());
}

/// The controlling process of [`controlling_process_restarts_under_traffic`]: adopts the pins,
/// takes the route over, says [`READY`], and hands over when its stdin says so.
#[test]
#[ignore = "the child process of controlling_process_restarts_under_traffic"]
fn tunnel_owner_child() {
    let (Ok(ns), Ok(dir)) = (
        std::env::var("LWTUN_HITLESS_NS"),
        std::env::var("LWTUN_HITLESS_DIR"),
    ) else {
        return;
    };
    let ns = NetNs::open(&ns).unwrap();
    let mut nl = Netlink::open_in(&ns).unwrap();
    let t = loop {
        match Tunnel::builder().pin(&dir).source(addr("10.30.0.1")).load() {
            Ok(t) => break t,
            // The previous owner is still exiting.
            Err(e) if e.kind() == ErrorKind::Exists => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("{e}"),
        }
    };
    assert!(t.adopted());
    let mut t = t;
    let route = t
        .route(net("10.20.0.0/16"))
        .device(&ns.device("to1").unwrap());
    t.steer_replace(&mut nl, route).unwrap();
    let mut out = std::io::stdout();
    writeln!(out, "{READY}").unwrap();
    out.flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    t.hand_over().unwrap();
}

struct Owner {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Kept open: the child's test harness writes its summary there after the hand-over.
    _out: BufReader<ChildStdout>,
}

impl Owner {
    fn start(ns: &str, dir: &str) -> Owner {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "tunnel_owner_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LWTUN_HITLESS_NS", ns)
            .env("LWTUN_HITLESS_DIR", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out: BufReader<ChildStdout> = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "the owner ended before it was ready"
            );
            if line.trim_end().ends_with(READY) {
                break;
            }
        }
        let stdin = child.stdin.take();
        Owner {
            child,
            stdin,
            _out: out,
        }
    }

    fn hand_over(&mut self) {
        let mut stdin = self.stdin.take().unwrap();
        writeln!(stdin, "hand over").unwrap();
        drop(stdin);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the owner's hand-over failed: {status}");
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
