//! Crash safety: a child process (this test binary, running the ignored `crash_child` test)
//! is killed with SIGKILL in the middle of an operation, and a fresh owner then adopts the
//! pinned state or removes the leftovers. Afterwards the kernel holds one consistent state:
//! the peer table equals what the adopter reports, every route has its program, no pin is
//! orphaned and nothing stays attached.
//!
//! The tests run one at a time (a 1M peer batch wants both CPUs to itself).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use libbpf_rs::{MapCore, MapHandle};
use lwtun::netlink::route::{BpfEncap, Encap as RouteEncap, RouteBatch};
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::peer::{Encap, EncapPeer};
use lwtun::route::{self, Hook};
use lwtun::tunnel::Tunnel;
use lwtun::ErrorKind;

/// One crash test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const PEERS: u32 = 1_000_000;
const ROUTES: u32 = 10_000;
const READY: &str = "LWTUN-CRASH-READY";
const DONE: &str = "LWTUN-CRASH-DONE";

/// Peer `i` of the big batch: 10.(i)/32 → GRE with key `i` to one of 250 remotes, so every
/// value is distinct and a torn or misplaced one shows.
fn big_peer(i: u32) -> (IpNetwork, EncapPeer) {
    let prefix = IpNetwork::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i)), 32).unwrap();
    let remote = IpAddr::V4(Ipv4Addr::new(192, 0, 2, (i % 250 + 2) as u8));
    let local = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let peer = EncapPeer::new(
        remote,
        local,
        Encap::Gre {
            key: Some(i),
            checksum: false,
        },
    );
    (prefix, peer)
}

fn route_prefix(i: u32) -> IpNetwork {
    IpNetwork::new(IpAddr::V4(Ipv4Addr::from(0x0a80_0000 | i)), 32).unwrap()
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"))
}

fn say(line: &str) {
    let mut out = std::io::stdout();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// The child's side: runs the operation `LWTUN_CRASH_CHILD` names, saying [`READY`] just before
/// it starts, then waits to be killed. Not a test by itself (ignored; the tests below run it).
#[test]
#[ignore = "the child process of the crash tests, run by them"]
fn crash_child() {
    let Ok(scenario) = std::env::var("LWTUN_CRASH_CHILD") else {
        return;
    };
    match scenario.as_str() {
        "peer-batch" => {
            let mut t = Tunnel::builder()
                .capacity(1 << 20)
                .pin(env("LWTUN_CRASH_DIR"))
                .load()
                .unwrap();
            t.keep_pinned();
            let batch: Vec<_> = (0..PEERS).map(big_peer).collect();
            say(READY);
            t.peers_mut().insert_batch(&batch).unwrap();
        }
        "route-batch" => {
            let ns = NetNs::open(&env("LWTUN_CRASH_NS")).unwrap();
            let dev = ns.device("to1").unwrap();
            let mut nl = Netlink::open_in(&ns).unwrap();
            let t = Tunnel::builder()
                .source("10.77.0.1".parse().unwrap())
                .load()
                .unwrap();
            let mut batch = RouteBatch::new();
            for i in 0..ROUTES {
                let mut r = t.route(route_prefix(i)).device(&dev).spec().clone();
                r.encap = Some(RouteEncap::Bpf(BpfEncap {
                    xmit: Some(t.xmit_program().prog_ref()),
                    headroom: Some(t.headroom()),
                    ..Default::default()
                }));
                batch.add(r);
            }
            say(READY);
            let report = nl.apply_batch(&batch).unwrap();
            assert!(report.is_complete(), "{report}");
        }
        "tunnel-load" => {
            say(READY);
            let mut t = Tunnel::builder()
                .capacity(4096)
                .pin(env("LWTUN_CRASH_DIR"))
                .load()
                .unwrap();
            t.keep_pinned();
            let (prefix, peer) = big_peer(7);
            if t.peers().get(prefix).is_none() {
                t.peers_mut().insert(prefix, peer).unwrap();
            }
        }
        "upgrade" => {
            // Takes the pinned tunnel over again and again, each time with a new program that
            // replaces the route's (the upgrade a new daemon version does).
            let ns = NetNs::open(&env("LWTUN_CRASH_NS")).unwrap();
            let dev = ns.device("to1").unwrap();
            let mut nl = Netlink::open_in(&ns).unwrap();
            say(READY);
            for round in 0u32.. {
                let mut t = Tunnel::builder()
                    .pin(env("LWTUN_CRASH_DIR"))
                    .direct(round % 2 == 1)
                    .source("10.77.0.1".parse().unwrap())
                    .auto_underlay_fixup(false)
                    .load()
                    .unwrap();
                let route = t.route("10.20.0.0/16".parse().unwrap()).device(&dev);
                t.steer_replace(&mut nl, route).unwrap();
                t.hand_over().unwrap();
            }
        }
        other => panic!("unknown crash scenario {other}"),
    }
    say(DONE);
    std::thread::sleep(Duration::from_secs(3600));
}

/// A running child, killed when dropped if the test did not kill it.
struct ChildProcess {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl ChildProcess {
    fn spawn(scenario: &str, vars: &[(&str, &str)]) -> ChildProcess {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LWTUN_CRASH_CHILD", scenario)
        .stdout(Stdio::piped());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the crash child");
        let out = BufReader::new(child.stdout.take().unwrap());
        ChildProcess { child, out }
    }

    /// Waits for the child's [`READY`] line.
    fn wait_ready(&mut self) {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.out.read_line(&mut line).unwrap();
            assert!(n > 0, "the crash child ended before it was ready");
            if line.trim_end().ends_with(READY) {
                return;
            }
        }
    }

    fn kill(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let status = self.child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "the child ended on its own ({status}) before the kill: the operation did not run \
             to the point the test wanted"
        );
        // What the child printed after READY (a panic message, DONE).
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.out, &mut rest);
        assert!(
            !rest.contains(DONE),
            "the operation finished before the kill"
        );
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Loads the pinned tunnel once the killed owner's lock is gone.
fn adopt(folder: &Path) -> Tunnel {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Tunnel::builder().pin(folder).load() {
            Ok(t) => return t,
            Err(e) if e.kind() == ErrorKind::Exists && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("adopt {}: {e}", folder.display()),
        }
    }
}

/// How many keys a pinned map holds, read from the kernel (not from lwtun's copy).
fn kernel_keys(path: &Path) -> usize {
    MapHandle::from_pinned_path(path).unwrap().keys().count()
}

/// Whether a program with this id is still loaded (the kernel frees it after an RCU grace
/// period, so this waits up to 2 s for it to go).
fn program_gone(id: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        // SAFETY: plain syscall wrapper; a returned fd is closed right away.
        let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
        if fd < 0 {
            return true;
        }
        // SAFETY: the fd was just returned to us.
        unsafe { libc::close(fd) };
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Killed in the middle of `insert_batch` of 1M peers: the adopter's table is exactly what the
/// kernel's trie holds, every peer in it is whole and the one the batch meant, and the adopter
/// finishes the batch with the ones it lacks.
#[test]
fn killed_during_a_million_peer_batch() {
    require!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::PinDir::new("peers");
    let mut child = ChildProcess::spawn("peer-batch", &[("LWTUN_CRASH_DIR", dir.arg())]);
    child.wait_ready();
    // Kill as soon as the first peer is in the kernel's trie: the batch is under way.
    let v4 = dir.0.join("peers_v4");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(m) = MapHandle::from_pinned_path(&v4) {
            if m.keys().next().is_some() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the batch never started");
        std::thread::sleep(Duration::from_micros(500));
    }
    std::thread::sleep(Duration::from_millis(50));
    child.kill();

    let in_kernel = kernel_keys(&v4);
    let mut t = adopt(&dir.0);
    assert!(t.adopted());
    assert_eq!(t.peers().len(), in_kernel, "adopted table = kernel trie");
    assert!(
        in_kernel > 0 && in_kernel < PEERS as usize,
        "killed midway: {in_kernel} of {PEERS} peers written"
    );
    eprintln!("killed after {in_kernel} of {PEERS} peers were written; all adopted");
    let mut have = vec![false; PEERS as usize];
    for (prefix, peer) in t.peers().iter() {
        let IpAddr::V4(a) = prefix.ip() else {
            panic!("an IPv6 peer {prefix} nobody wrote")
        };
        let i = u32::from(a) & 0x00ff_ffff;
        assert!(i < PEERS, "a peer nobody wrote: {prefix}");
        assert_eq!(
            (prefix, *peer),
            big_peer(i),
            "peer {i} is torn or misplaced"
        );
        have[i as usize] = true;
    }
    let missing: Vec<_> = (0..PEERS)
        .filter(|&i| !have[i as usize])
        .map(big_peer)
        .collect();
    t.peers_mut().insert_batch(&missing).unwrap();
    assert_eq!(t.peers().len(), PEERS as usize);
    assert_eq!(kernel_keys(&v4), PEERS as usize);
    let (prefix, peer) = big_peer(PEERS - 1);
    assert_eq!(t.peers().lookup(prefix.ip()), Some((prefix, &peer)));
    drop(t);
    assert!(!dir.0.exists(), "the adopter's drop removed every pin");
}

/// Killed in the middle of a 10k route batch: every route that made it has its program (the
/// kernel holds it for the route), and `route::remove_leftovers` deletes exactly those, after
/// which their program is gone too.
#[test]
fn killed_during_a_10k_route_batch() {
    require!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let hosts = common::two_hosts();
    let ns = hosts.ns(0);
    let mut child = ChildProcess::spawn("route-batch", &[("LWTUN_CRASH_NS", ns.name())]);
    child.wait_ready();
    let mut nl = Netlink::open_in(ns).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while route::lwt_routes(&mut nl).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the batch never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill();

    let routes = route::lwt_routes(&mut nl).unwrap();
    let n = routes.len();
    assert!(
        n > 0 && n < ROUTES as usize,
        "killed midway: {n} of {ROUTES} routes installed"
    );
    eprintln!("killed after {n} of {ROUTES} routes were installed");
    let mut ids = std::collections::BTreeSet::new();
    for r in &routes {
        assert_eq!(r.protocol, route::RTPROT_LWTUN, "{r}");
        let p = route::program_of(r, Hook::Xmit)
            .unwrap_or_else(|| panic!("route without a program: {r}"))
            .unwrap_or_else(|e| panic!("the program of {r} is gone: {e}"));
        ids.insert(p.id());
    }
    assert_eq!(
        ids.len(),
        1,
        "every route runs the killed process's program"
    );
    assert_eq!(route::remove_leftovers(&mut nl).unwrap(), n);
    assert!(route::lwt_routes(&mut nl).unwrap().is_empty());
    let id = *ids.first().unwrap();
    assert!(program_gone(id), "program {id} outlived its last route");
    let shown = common::ip(ns, &["route", "show", "proto", "76"]);
    assert!(shown.trim().is_empty(), "{shown}");
}

/// Killed at 12 points spread over a pinned tunnel load (before, while and after pinning): the
/// next load always succeeds, adopts a complete set or starts fresh, its table equals the
/// kernel's, and its drop leaves no pin. Also the half-unpinned folder a kill during a drop
/// leaves is loaded fresh, not half adopted.
#[test]
fn killed_during_a_pinned_tunnel_load() {
    require!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::PinDir::new("load");
    // How long a load takes here, to spread the kills over it.
    let start = Instant::now();
    drop(Tunnel::builder().capacity(4096).pin(&dir.0).load().unwrap());
    let load = start.elapsed();
    let (mut fresh, mut adopted) = (0, 0);
    for k in 0..12u32 {
        let mut child = ChildProcess::spawn("tunnel-load", &[("LWTUN_CRASH_DIR", dir.arg())]);
        child.wait_ready();
        std::thread::sleep(load * k / 8);
        // The child may have finished by now (the later points): then it waits to be killed,
        // which is a kill after the load. Either way it is killed, not ended.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.child.id() as i32, libc::SIGKILL) };
        child.child.wait().unwrap();

        let mut t = adopt(&dir.0);
        if t.adopted() {
            adopted += 1;
            assert_eq!(t.peers().len(), kernel_keys(&dir.0.join("peers_v4")));
        } else {
            fresh += 1;
            assert!(t.peers().is_empty());
        }
        let (prefix, peer) = big_peer(7);
        if let Some(p) = t.peers().get(prefix) {
            assert_eq!(p, &peer);
        }
        t.keep_pinned();
        // The next round starts from what this one left (a complete set, or none).
        if k % 3 == 2 {
            drop(t);
            for name in std::fs::read_dir(&dir.0).unwrap() {
                std::fs::remove_file(name.unwrap().path()).unwrap();
            }
        }
    }
    eprintln!("12 kills during a pinned load: {fresh} fresh loads, {adopted} adoptions after");

    // A drop killed after it unpinned peers_v4 (the first it removes) leaves the others.
    let mut t = Tunnel::builder().capacity(4096).pin(&dir.0).load().unwrap();
    let v6: IpNetwork = "fd20::/64".parse().unwrap();
    t.peers_mut()
        .insert(
            v6,
            EncapPeer::new(
                "fd77::2".parse().unwrap(),
                "fd77::1".parse().unwrap(),
                Encap::Ipip,
            ),
        )
        .unwrap();
    t.keep_pinned();
    drop(t);
    std::fs::remove_file(dir.0.join("peers_v4")).unwrap();
    let t = Tunnel::builder().capacity(4096).pin(&dir.0).load().unwrap();
    assert!(!t.adopted(), "half a pin set is not adopted");
    assert!(t.peers().is_empty());
    assert_eq!(
        kernel_keys(&dir.0.join("peers_v6")),
        0,
        "the stale IPv6 trie was not reused"
    );
    drop(t);
    assert!(!dir.0.exists(), "no pin left");
}

/// Killed while upgrading (each round: adopt the pins, replace the route's program with its
/// own, hand over): the route is there with a live program, the pins are a complete set, and
/// the next owner takes both over; removing them leaves nothing.
#[test]
fn killed_during_program_upgrades() {
    require!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let hosts = common::two_hosts();
    let ns = hosts.ns(0);
    let dir = common::PinDir::new("upgrade");
    let mut nl = Netlink::open_in(ns).unwrap();
    {
        let mut t = Tunnel::builder()
            .pin(&dir.0)
            .source("10.77.0.1".parse().unwrap())
            .load()
            .unwrap();
        t.peers_mut()
            .insert(
                "10.20.0.0/16".parse().unwrap(),
                EncapPeer::new(
                    "10.77.0.2".parse().unwrap(),
                    "10.77.0.1".parse().unwrap(),
                    Encap::Udp { port: 5555 },
                ),
            )
            .unwrap();
        let route = t
            .route("10.20.0.0/16".parse().unwrap())
            .device(&hosts.device(0, "to1"));
        t.steer(&mut nl, route).unwrap();
        t.hand_over().unwrap();
    }
    for delay_ms in [150u64, 400, 900] {
        let mut child = ChildProcess::spawn(
            "upgrade",
            &[
                ("LWTUN_CRASH_NS", ns.name()),
                ("LWTUN_CRASH_DIR", dir.arg()),
            ],
        );
        child.wait_ready();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill();

        let routes = route::lwt_routes(&mut nl).unwrap();
        assert_eq!(routes.len(), 1, "{routes:?}");
        let p = route::program_of(&routes[0], Hook::Xmit)
            .expect("the route has a program")
            .expect("and it is loaded");
        let t = adopt(&dir.0);
        assert!(t.adopted());
        assert_eq!(t.peers().len(), 1);
        drop(p);
        t.hand_over().unwrap();
    }
    eprintln!("3 kills during upgrades: the route and the pins were whole each time");
    assert_eq!(route::remove_leftovers(&mut nl).unwrap(), 1);
    let t = adopt(&dir.0);
    drop(t);
    assert!(!dir.0.exists());
}
