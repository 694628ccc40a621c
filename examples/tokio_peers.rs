//! `tokio_peers`: a tokio program that keeps a tunnel's peers in sync with a watched file and
//! prints what happens as it happens: each peer change it applies, each route and link event in
//! its namespace (its own changes and anyone else's), and each packet a capture sees leaving
//! through the tunnel.
//!
//! ```text
//!  peers file ──(mtime, polled every 100 ms)──▶ diff ──▶ Tunnel peers + LWT routes (AsyncNetlink)
//!  tc egress chain on a-b ──▶ Capture ──▶ AsyncCapture (readiness) ──▶ one line per packet
//! ```
//!
//! It builds two namespaces, `a` and `b`, joined by a veth. In `a`, a [`Tunnel`] encapsulates in
//! GRE what its LWT routes send; in `b` a [`Decap`] takes the GRE off at tc ingress and services
//! answer on `10.91.K.1`. The peers file has one peer per line, `PREFIX REMOTE` (`#` starts a
//! comment): each line becomes a peer (GRE from `a`'s underlay address to `REMOTE`) and a route
//! for `PREFIX` into the tunnel; a line removed removes both.
//!
//! ```text
//! tokio_peers [--peers FILE] [--seconds N]   # watch FILE (default: a demo file) for N s (60)
//! tokio_peers --once                         # the self-test CI runs: apply a file, ping
//!                                            # through it, change the file, ping again, exit
//! ```
//!
//! Run as root (it creates namespaces and loads BPF programs). Everything it made goes away
//! when it ends.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, SystemTime};

use ipnetwork::IpNetwork;
use lwtun::aio::{AsyncCapture, AsyncMonitor, AsyncNetlink};
use lwtun::capture::{Capture, CaptureOptions};
use lwtun::chain::{ChainHook, ProgChain};
use lwtun::decap::{Decap, DecapPeer};
use lwtun::monitor::{Event, EventKinds, Monitor};
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::peer::{Encap, EncapPeer};
use lwtun::route::InstalledRoute;
use lwtun::tc::{TcAttach, TcDirection};
use lwtun::tunnel::Tunnel;
use lwtun::{Error, ErrorKind, Result};

/// `a`'s and `b`'s underlay addresses, and `a`'s inner source.
const A_UNDERLAY: &str = "10.81.0.1";
const B_UNDERLAY: &str = "10.81.0.2";
const A_INNER: &str = "10.71.0.1";

#[derive(Debug)]
struct Args {
    peers: Option<PathBuf>,
    seconds: u64,
    once: bool,
}

fn parse() -> std::result::Result<Args, String> {
    let mut a = Args {
        peers: None,
        seconds: 60,
        once: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--peers" => a.peers = Some(it.next().ok_or("--peers needs a file")?.into()),
            "--seconds" => {
                let v = it.next().ok_or("--seconds needs a number")?;
                a.seconds = v.parse().map_err(|e| format!("--seconds {v}: {e}"))?;
            }
            "--once" => a.once = true,
            other => return Err(format!("unknown argument {other} (see the file's header)")),
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tokio_peers: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args).await {
        eprintln!("tokio_peers: {e}");
        if e.kind() == ErrorKind::Permission {
            eprintln!("run it as root (it creates namespaces and loads BPF programs)");
        }
        std::process::exit(1);
    }
}

fn ip(ns: &NetNs, args: &str) -> Result<String> {
    ns.output("ip", args.split_whitespace())
}

fn addr(s: &str) -> IpAddr {
    s.parse().expect("a literal address")
}

/// The two namespaces and what stays attached in them while the program runs.
struct Lab {
    a: NetNs,
    b: NetNs,
    _decap: Decap,
}

fn lab() -> Result<Lab> {
    let a = NetNs::create_unique("tp-a")?;
    let b = NetNs::create_unique("tp-b")?;
    Netlink::open_in(&a)?.add_veth("a-b", "b-a", Some(&b))?;
    for cmd in [
        "link set lo up",
        "link set a-b up",
        "addr add 10.81.0.1/24 dev a-b",
        "addr add 10.71.0.1/32 dev lo",
    ] {
        ip(&a, cmd)?;
    }
    for cmd in [
        "link set lo up",
        "link set b-a up",
        "addr add 10.81.0.2/24 dev b-a",
        "addr add 10.91.1.1/32 dev lo",
        "addr add 10.91.2.1/32 dev lo",
        "addr add 10.91.3.1/32 dev lo",
        // Answers go back without a tunnel.
        "route add 10.71.0.1/32 via 10.81.0.1",
    ] {
        ip(&b, cmd)?;
    }
    let mut decap = Decap::load()?;
    decap.add_local(addr(B_UNDERLAY))?;
    decap.add_peer(DecapPeer::host(addr(A_UNDERLAY)))?;
    decap.attach(&Netlink::open_in(&b)?.device("b-a")?)?;
    Ok(Lab {
        a,
        b,
        _decap: decap,
    })
}

/// Reads `PREFIX REMOTE` lines.
fn read_peers(path: &Path) -> Result<BTreeMap<IpNetwork, IpAddr>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    let mut peers = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: String| {
            Error::invalid_input(
                format!("read {}", path.display()),
                format!("line {}: {why} (want `PREFIX REMOTE`)", n + 1),
            )
        };
        let mut words = line.split_whitespace();
        let (Some(prefix), Some(remote), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad(format!("`{line}`")));
        };
        let prefix = prefix
            .parse()
            .map_err(|e| bad(format!("prefix {prefix}: {e}")))?;
        let remote = remote
            .parse()
            .map_err(|e| bad(format!("remote {remote}: {e}")))?;
        peers.insert(prefix, remote);
    }
    Ok(peers)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The tunnel and the routes into it, kept equal to the file.
struct Synced {
    tunnel: Tunnel,
    nl: AsyncNetlink,
    underlay: lwtun::Device,
    routes: BTreeMap<IpNetwork, (IpAddr, InstalledRoute)>,
}

impl Synced {
    /// Applies the difference between what is installed and `want`, printing each change.
    async fn apply(&mut self, want: &BTreeMap<IpNetwork, IpAddr>) -> Result<()> {
        let gone: Vec<IpNetwork> = self
            .routes
            .keys()
            .filter(|p| !want.contains_key(p))
            .copied()
            .collect();
        for prefix in gone {
            let (remote, route) = self.routes.remove(&prefix).expect("listed above");
            AsyncNetlink::remove(route).await?;
            self.tunnel.peers_mut().remove(prefix)?;
            println!("peer removed  {prefix} (was via {remote})");
        }
        for (&prefix, &remote) in want {
            let peer = EncapPeer::new(
                remote,
                addr(A_UNDERLAY),
                Encap::Gre {
                    key: None,
                    checksum: false,
                },
            );
            match self.routes.get_mut(&prefix) {
                Some((old, _)) if *old == remote => {}
                Some((old, _)) => {
                    self.tunnel.peers_mut().replace(prefix, peer)?;
                    println!("peer changed  {prefix} via {old} -> via {remote}");
                    *old = remote;
                }
                None => {
                    self.tunnel.peers_mut().insert(prefix, peer)?;
                    let route = self.tunnel.route(prefix).device(&self.underlay);
                    match self.nl.install(route).await {
                        Ok(route) => {
                            self.routes.insert(prefix, (remote, route));
                            println!("peer added    {prefix} via {remote}");
                        }
                        Err(e) => {
                            // Undo the peer: the tunnel stays as the file was before.
                            self.tunnel.peers_mut().remove(prefix)?;
                            return Err(e);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// What `--once` does, step by step: each step writes the file, then waits for a ping to pass.
struct SelfTest {
    steps: Vec<(&'static str, &'static str)>,
    ping: Option<Child>,
    exited: Option<(std::process::ExitStatus, std::time::Instant)>,
    /// The route events seen, as `add PREFIX` / `del PREFIX`.
    route_events: Vec<String>,
}

impl SelfTest {
    fn new() -> Self {
        SelfTest {
            steps: vec![
                (
                    "10.91.1.0/24 10.81.0.2\n10.91.3.0/24 10.81.0.2\n",
                    "10.91.1.1",
                ),
                (
                    "# 10.91.1.0/24 moved to 10.91.2.0/24\n10.91.2.0/24 10.81.0.2\n10.91.3.0/24 10.81.0.2\n",
                    "10.91.2.1",
                ),
            ],
            ping: None,
            exited: None,
            route_events: Vec::new(),
        }
    }
}

async fn run(args: Args) -> Result<()> {
    if args.once && args.peers.is_some() {
        return Err(Error::invalid_input(
            "tokio_peers",
            "--once writes its own demo file: leave --peers out",
        ));
    }
    let lab = lab()?;
    println!(
        "namespaces {} and {} joined by a-b/b-a",
        lab.a.name(),
        lab.b.name()
    );
    let nl = AsyncNetlink::open_in(&lab.a)?;
    let underlay = Netlink::open_in(&lab.a)?.device("a-b")?;
    let tunnel = Tunnel::builder().source(addr(A_INNER)).load()?;
    let mut synced = Synced {
        tunnel,
        nl,
        underlay: underlay.clone(),
        routes: BTreeMap::new(),
    };

    // The capture: a tc chain at a-b's egress, the capture at its exit hook.
    let mut chain = ProgChain::new(ChainHook::Tc)?;
    let _egress = TcAttach::new(&underlay, TcDirection::Egress).attach(chain.entry())?;
    let mut packets = AsyncCapture::new(Capture::attach(&mut chain, CaptureOptions::default())?)?;
    // The events: every route and link change in `a`, whoever makes it.
    let mut events = AsyncMonitor::new(Monitor::open_in(
        &lab.a,
        EventKinds::ROUTE | EventKinds::LINK,
    )?)?;

    let demo_file = std::env::temp_dir().join(format!("tokio_peers-{}.txt", std::process::id()));
    let path = args.peers.clone().unwrap_or_else(|| demo_file.clone());
    let mut selftest = args.once.then(SelfTest::new);
    if args.peers.is_none() {
        let first = selftest
            .as_ref()
            .map_or("10.91.1.0/24 10.81.0.2\n", |t| t.steps[0].0);
        std::fs::write(&path, first).map_err(|e| Error::io("write the demo peers file", e))?;
        println!(
            "watching {} (edit it: `PREFIX REMOTE` lines)",
            path.display()
        );
    }
    let result = watch(
        &args,
        &path,
        &mut synced,
        &mut packets,
        &mut events,
        &lab,
        selftest.as_mut(),
    )
    .await;
    let _ = std::fs::remove_file(&demo_file);
    packets.into_inner().detach(&mut chain)?;
    for (_, (_, route)) in std::mem::take(&mut synced.routes) {
        AsyncNetlink::remove(route).await?;
    }
    result
}

async fn watch(
    args: &Args,
    path: &Path,
    synced: &mut Synced,
    packets: &mut AsyncCapture,
    events: &mut AsyncMonitor,
    lab: &Lab,
    mut selftest: Option<&mut SelfTest>,
) -> Result<()> {
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(if args.once { 30 } else { args.seconds });
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut seen: Option<SystemTime> = None;
    let mut captured = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if tokio::time::Instant::now() > deadline {
                    return match selftest {
                        Some(_) => Err(Error::other(ErrorKind::Io, "self-test", "did not finish in 30 s")),
                        None => Ok(()),
                    };
                }
                let now = modified(path);
                if now.is_some() && now != seen {
                    seen = now;
                    match read_peers(path) {
                        Ok(want) => synced.apply(&want).await?,
                        // A half-written file: say so and wait for the next change.
                        Err(e) => eprintln!("{e}"),
                    }
                    if let Some(t) = selftest.as_deref_mut() {
                        if t.ping.is_none() {
                            let dst = t.steps[0].1;
                            println!("ping {dst} through the tunnel");
                            t.ping = Some(
                                lab.a
                                    .command("ping")
                                    .args(["-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", "-I", A_INNER, dst])
                                    .spawn()
                                    .map_err(|e| Error::io("run ping", e))?,
                            );
                        }
                    }
                }
                if let Some(t) = selftest.as_deref_mut() {
                    let running = t.ping.is_some();
                    if step_done(t, path, lab, captured)? {
                        return Ok(());
                    }
                    if running && t.ping.is_none() {
                        captured = 0;
                    }
                }
            }
            p = packets.next_packet() => {
                let p = p?;
                if p.protocol == 0x0800 {
                    captured += 1;
                }
                println!("packet  {}", p.summary());
            }
            e = events.next_event() => {
                let e = e?;
                println!("event   {e}");
                if let (Some(t), Some(r)) = (selftest.as_deref_mut(), e.route()) {
                    match &*e {
                        Event::RouteAdded(_) => t.route_events.push(format!("add {}", r.dst)),
                        Event::RouteRemoved(_) => t.route_events.push(format!("del {}", r.dst)),
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Checks the running ping of `--once`; when it passed, moves to the next step (writing the
/// file) or reports the end.
fn step_done(t: &mut SelfTest, path: &Path, lab: &Lab, captured: usize) -> Result<bool> {
    let Some(ping) = t.ping.as_mut() else {
        return Ok(false);
    };
    if t.exited.is_none() {
        t.exited = ping
            .try_wait()
            .map_err(|e| Error::io("wait for ping", e))?
            .map(|status| (status, std::time::Instant::now()));
    }
    let Some((status, when)) = t.exited else {
        return Ok(false);
    };
    // The last request may still wait in the ring when ping has its answer: give it a moment.
    if captured < 3 && when.elapsed() < Duration::from_secs(2) {
        return Ok(false);
    }
    t.exited = None;
    let dst = t.steps[0].1;
    if captured < 3 {
        return Err(Error::other(
            ErrorKind::Kernel,
            "self-test",
            format!("the capture saw {captured} packets leave for {dst}, want the 3 requests"),
        ));
    }
    if !status.success() {
        return Err(Error::other(
            ErrorKind::Kernel,
            "self-test",
            format!("ping {dst} through the tunnel failed"),
        ));
    }
    println!("ping {dst}: answered through the tunnel");
    t.steps.remove(0);
    t.ping = None;
    let Some((next, _)) = t.steps.first() else {
        let routes = ip(&lab.a, "route show")?;
        println!("routes in a:\n{routes}");
        let has = |p: &str| routes.lines().any(|l| l.starts_with(p));
        if has("10.91.1.0/24") || !has("10.91.2.0/24") || !has("10.91.3.0/24") {
            return Err(Error::other(
                ErrorKind::Kernel,
                "self-test",
                "the routes in a are not the file's",
            ));
        }
        // Every route change made was an event, once.
        for want in [
            "add 10.91.1.0/24",
            "add 10.91.3.0/24",
            "del 10.91.1.0/24",
            "add 10.91.2.0/24",
        ] {
            let seen = t.route_events.iter().filter(|e| *e == want).count();
            if seen != 1 {
                return Err(Error::other(
                    ErrorKind::Kernel,
                    "self-test",
                    format!(
                        "route event `{want}` seen {seen} times, want once: {:?}",
                        t.route_events
                    ),
                ));
            }
        }
        println!("route events: {}", t.route_events.join(", "));
        return Ok(true);
    };
    std::fs::write(path, next).map_err(|e| Error::io("rewrite the peers file", e))?;
    Ok(false)
}
