//! The `tokio` feature's async layer against a real kernel, in namespaces: routes added, dumped
//! and deleted through `AsyncNetlink` (checked with `ip route show`), a batch of routes, an LWT
//! route installed and removed; an `AsyncCapture` stream that receives real pings on a
//! single-threaded runtime; and cancellation: a `next_packet` future dropped mid-wait loses no
//! packet, a stream dropped mid-way leaves no descriptor and no program behind, and a netlink
//! call dropped mid-way still completes while the socket stays in step.
// Each test holds SERIAL for its whole body, awaits included: every #[tokio::test] runs on a
// runtime of its own thread, so the lock only keeps tests of this binary from overlapping.
#![allow(clippy::await_holding_lock)]
mod common;

use std::future::Future;
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::time::Duration;

use lwtun::aio::{AsyncCapture, AsyncNetlink};
use lwtun::capture::{Capture, CaptureOptions, Packet};
use lwtun::chain::{ChainHook, ProgChain};
use lwtun::netlink::route::{Route, RouteBatch, RouteFilter};
use lwtun::program::Hook;
use lwtun::route::LwtRoute;
use lwtun::ErrorKind;

/// The tests count this process's descriptors: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn ip_routes(ns: &lwtun::NetNs, prefix: &str) -> Vec<String> {
    common::ip(ns, &["route", "show"])
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn routes_are_added_dumped_and_deleted_asynchronously() {
    require!();
    let _one = serial();
    let net = common::two_hosts();
    let ns = net.ns(0);
    let nl = AsyncNetlink::open_in(ns).unwrap();
    let to1 = nl.link_by_name("to1").await.unwrap();
    assert!(nl.links().await.unwrap().iter().any(|l| l.name == "to1"));
    assert!(nl
        .addresses(Some(to1.index))
        .await
        .unwrap()
        .iter()
        .any(|a| a.network.ip() == std::net::IpAddr::from(net.v4(0))));

    let mut route = Route::new("10.97.0.0/24".parse().unwrap());
    route.oif = Some(to1.index);
    route.scope = Some(libc::RT_SCOPE_LINK);
    nl.add_route(route.clone()).await.unwrap();
    let shown = ip_routes(ns, "10.97.0.0/24");
    assert!(
        shown.len() == 1 && shown[0].contains("dev to1 scope link"),
        "{shown:?}"
    );
    let dumped = nl.routes(RouteFilter::all()).await.unwrap();
    assert_eq!(dumped.iter().filter(|r| r.dst == route.dst).count(), 1);
    let err = nl.add_route(route.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Exists, "{err}");
    nl.delete_route(route.clone()).await.unwrap();
    assert!(ip_routes(ns, "10.97.0.0/24").is_empty());
    assert!(!nl
        .routes(RouteFilter::all())
        .await
        .unwrap()
        .iter()
        .any(|r| r.dst == route.dst));

    // A batch, and calls from concurrent tasks sharing one socket.
    let mut batch = RouteBatch::new();
    for i in 0..100u32 {
        let mut r = Route::new(format!("10.98.{i}.0/24").parse().unwrap());
        r.oif = Some(to1.index);
        r.scope = Some(libc::RT_SCOPE_LINK);
        batch.add(r);
    }
    assert_eq!(
        nl.apply_batch(batch).await.unwrap().into_result().unwrap(),
        100
    );
    assert_eq!(ip_routes(ns, "10.98.").len(), 100);
    let deletes = (0..100u32).map(|i| {
        let nl = nl.clone();
        let mut r = Route::new(format!("10.98.{i}.0/24").parse().unwrap());
        r.oif = Some(to1.index);
        tokio::spawn(async move { nl.delete_route(r).await })
    });
    for d in deletes.collect::<Vec<_>>() {
        d.await.unwrap().unwrap();
    }
    assert!(ip_routes(ns, "10.98.").is_empty());
}

/// An LWT route through a chain whose exit hook is a capture, installed by `AsyncNetlink`.
struct Tap {
    net: common::Line,
    chain: ProgChain,
    nl: AsyncNetlink,
    route: Option<lwtun::route::InstalledRoute>,
}

async fn tap() -> Tap {
    let net = common::two_hosts();
    let chain = ProgChain::new(ChainHook::LwtXmit).unwrap();
    let nl = AsyncNetlink::open_in(net.ns(0)).unwrap();
    let dev = net.device(0, "to1");
    let route = nl
        .install(
            LwtRoute::new(format!("{}/32", net.v4(1)).parse().unwrap())
                .device(&dev)
                .program(Hook::Xmit, chain.lwt_entry().unwrap()),
        )
        .await
        .unwrap();
    Tap {
        net,
        chain,
        nl,
        route: Some(route),
    }
}

impl Tap {
    /// Starts `count` pings through the route (a child process: the runtime's thread stays free).
    fn ping(&self, count: u32) -> std::process::Child {
        self.net
            .ns(0)
            .command("ping")
            .args(["-n", "-q", "-c", &count.to_string(), "-i", "0.2", "-W", "2"])
            .arg(self.net.v4(1).to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("run ping")
    }

    async fn remove(mut self) {
        AsyncNetlink::remove(self.route.take().unwrap())
            .await
            .unwrap();
        let left = ip_routes(self.net.ns(0), &self.net.v4(1).to_string());
        assert!(left.is_empty(), "{left:?}");
        let _ = &self.nl;
    }
}

fn echo_seq(p: &Packet) -> u16 {
    p.echo()
        .filter(|e| e.request)
        .unwrap_or_else(|| panic!("not an echo request: {}", p.summary()))
        .seq
}

#[tokio::test]
async fn a_capture_stream_receives_real_pings() {
    require!();
    let _one = serial();
    let mut tap = tap().await;
    let capture = Capture::attach(&mut tap.chain, CaptureOptions::default()).unwrap();
    let mut packets = AsyncCapture::new(capture).unwrap();
    // A timer task on the same (single) thread keeps ticking while the stream waits: nothing
    // blocks the thread.
    let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let mut ping = tap.ping(3);
    let mut seqs = Vec::new();
    let wait = common::patient(Duration::from_secs(5));
    while seqs.len() < 3 {
        let p = tokio::time::timeout(wait, packets.next_packet())
            .await
            .expect("three echo requests within 5 s")
            .unwrap();
        assert_eq!(p.hook, ChainHook::LwtXmit);
        assert_eq!(
            p.ip_addrs(),
            Some((tap.net.v4(0).into(), tap.net.v4(1).into()))
        );
        seqs.push(echo_seq(&p));
    }
    assert!(ping.wait().unwrap().success(), "the pings were answered");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(
        ticks.load(std::sync::atomic::Ordering::Relaxed) > 10,
        "the timer ran while the stream waited"
    );
    ticker.abort();
    assert_eq!(packets.capture().lost().unwrap(), 0);
    // The same through the futures Stream trait, polled by hand.
    let mut ping = tap.ping(1);
    let p = tokio::time::timeout(
        wait,
        std::future::poll_fn(|cx| {
            futures_core::Stream::poll_next(std::pin::Pin::new(&mut packets), cx)
        }),
    )
    .await
    .expect("one echo request within 5 s")
    .expect("the stream does not end")
    .unwrap();
    assert_eq!(echo_seq(&p), 1);
    assert!(ping.wait().unwrap().success());
    packets.into_inner().detach(&mut tap.chain).unwrap();
    assert!(tap.chain.exit().is_none());
    tap.remove().await;
}

#[tokio::test]
async fn cancelled_reads_lose_nothing_and_a_dropped_stream_leaks_nothing() {
    require!();
    let _one = serial();
    let mut tap = tap().await;
    let before = open_fds();
    let capture = Capture::attach(&mut tap.chain, CaptureOptions::default()).unwrap();
    let program = lwtun::program::program_info(capture.program()).unwrap().id;
    let mut packets = AsyncCapture::new(capture).unwrap();

    // Reads cancelled while nothing comes (the future dropped at its timeout)...
    for _ in 0..5 {
        let idle = tokio::time::timeout(Duration::from_millis(20), packets.next_packet()).await;
        assert!(idle.is_err(), "no traffic yet");
    }
    // ...and while packets arrive: every request still comes out once, in order.
    let mut ping = tap.ping(4);
    let mut seqs = Vec::new();
    let until = tokio::time::Instant::now() + common::patient(Duration::from_secs(6));
    while seqs.len() < 4 && tokio::time::Instant::now() < until {
        if let Ok(p) = tokio::time::timeout(Duration::from_millis(3), packets.next_packet()).await {
            seqs.push(echo_seq(&p.unwrap()));
        }
    }
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert!(ping.wait().unwrap().success());

    // Dropped mid-way, with packets still in its ring...
    let mut ping = tap.ping(2);
    assert!(ping.wait().unwrap().success());
    assert!(packets.capture().as_fd().try_clone_to_owned().is_ok());
    drop(packets);
    // ...and once the chain lets go of its exit (it holds the program), no descriptor is left
    // and the program is gone from the kernel.
    assert_eq!(tap.chain.exit().map(|p| p.id), Some(program));
    tap.chain.clear_exit().unwrap();
    assert_eq!(open_fds(), before, "the capture's descriptors are closed");
    let gone = lwtun::program::program_info_by_id(program);
    assert_eq!(
        gone.as_ref().map(|_| ()).unwrap_err().kind(),
        ErrorKind::NotFound,
        "{gone:?}"
    );
    tap.remove().await;
}

/// A call whose future is dropped after it started still completes (a netlink request sent
/// cannot be withdrawn), and the socket stays in step: the next calls get their own answers.
#[tokio::test]
async fn a_dropped_call_completes_and_the_socket_stays_usable() {
    require!();
    let _one = serial();
    let net = common::two_hosts();
    let ns = net.ns(0);
    let nl = AsyncNetlink::open_in(ns).unwrap();
    let to1 = nl.link_by_name("to1").await.unwrap();
    let mut route = Route::new("10.96.0.0/24".parse().unwrap());
    route.oif = Some(to1.index);
    route.scope = Some(libc::RT_SCOPE_LINK);
    {
        let mut call = std::pin::pin!(nl.add_route(route.clone()));
        let waker = std::task::Waker::noop();
        // Polled once (the request is on its way to the blocking pool), then dropped. On a
        // loaded machine the blocking thread can finish before the first poll looks at it:
        // then the call is simply done, and must have succeeded.
        let first = call
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker));
        if let std::task::Poll::Ready(done) = first {
            done.unwrap();
        }
    }
    // The next call on the socket waits for the dropped one, then gets its own answer.
    let until = std::time::Instant::now() + common::patient(Duration::from_secs(5));
    while ip_routes(ns, "10.96.0.0/24").is_empty() {
        assert!(
            std::time::Instant::now() < until,
            "the dropped call never completed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(nl.link_by_name("to1").await.unwrap().index, to1.index);
    let err = nl.add_route(route.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Exists, "{err}");
    nl.delete_route(route).await.unwrap();
    assert!(ip_routes(ns, "10.96.0.0/24").is_empty());
}

#[test]
fn outside_a_runtime_the_calls_say_so() {
    require!();
    let _one = serial();
    let nl = AsyncNetlink::open().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // A runtime without IO or blocking pool is still a runtime: use a future polled by hand
    // outside of one instead.
    drop(rt);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut call = std::pin::pin!(nl.links());
    match call.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Err(e)) => {
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            assert!(e.to_string().contains("tokio runtime"), "{e}");
        }
        other => panic!("expected an error outside a runtime, got {other:?}"),
    }
}

/// An `AsyncMonitor` stream on a single-threaded runtime: route changes made by another process
/// (`ip`) come once each, in order; a `next_event` future dropped mid-wait loses none.
#[tokio::test(flavor = "current_thread")]
async fn a_monitor_stream_sees_other_processes_route_changes_in_order() {
    use lwtun::aio::AsyncMonitor;
    use lwtun::monitor::{Event, EventKinds, Monitor};
    require!();
    let _one = serial();
    let net = common::two_hosts();
    let ns = net.ns(0);
    let mut events = AsyncMonitor::new(Monitor::open_in(ns, EventKinds::ROUTE).unwrap()).unwrap();

    // Nothing yet: a wait that times out drops its future.
    let quiet = tokio::time::timeout(Duration::from_millis(100), events.next_event()).await;
    assert!(quiet.is_err(), "an event before any change: {quiet:?}");

    let ns_path = ns.name().to_string();
    let changes = tokio::task::spawn_blocking(move || {
        let ns = lwtun::NetNs::open(&ns_path).unwrap();
        for args in [
            "route add 10.96.1.0/24 dev to1",
            "route add 10.96.2.0/24 dev to1",
            "route replace 10.96.1.0/24 dev to1 mtu 1400",
            "route del 10.96.2.0/24",
        ] {
            common::ip(&ns, &args.split(' ').collect::<Vec<_>>());
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let e = tokio::time::timeout(Duration::from_secs(5), events.next_event())
            .await
            .expect("the four changes as events within 5 s")
            .unwrap();
        let Some(r) = e.route() else { continue };
        if !r.dst.to_string().starts_with("10.96.") {
            continue;
        }
        seen.push(format!("{} {}", e.action(), r.dst));
        if let Event::RouteChanged(r) = &*e {
            assert_eq!(r.mtu.map(|m| m.bytes), Some(1400), "{r}");
        }
    }
    changes.await.unwrap();
    assert_eq!(
        seen,
        [
            "add 10.96.1.0/24",
            "add 10.96.2.0/24",
            "change 10.96.1.0/24",
            "del 10.96.2.0/24"
        ]
    );
    assert_eq!(events.monitor().resyncs(), 0);
    let mut monitor = events.into_inner();
    assert!(monitor.try_next().unwrap().is_none(), "events left over");
}

/// An `AsyncMonitor` of a pinned tunnel's peers on a single-threaded runtime: its descriptor
/// (the socket and the journals' timer) wakes the task for peer changes, which carry no socket
/// message; nothing wakes it into an event before a change.
#[tokio::test(flavor = "current_thread")]
async fn a_monitor_stream_wakes_for_peer_changes() {
    use lwtun::aio::AsyncMonitor;
    use lwtun::monitor::{Event, EventKinds, Monitor};
    use lwtun::peer::{Encap, EncapPeer};
    use lwtun::tunnel::Tunnel;
    require!();
    let _one = serial();
    let pin = common::PinDir::new("async-peers");
    let mut tunnel = Tunnel::builder().pin(&pin.0).load().unwrap();
    let mut monitor = Monitor::open(EventKinds::PEER).unwrap();
    monitor.watch_peers(&pin.0).unwrap();
    let mut events = AsyncMonitor::new(monitor).unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(100), events.next_event()).await;
    assert!(quiet.is_err(), "an event before any change: {quiet:?}");

    let prefix: ipnetwork::IpNetwork = "10.97.0.0/16".parse().unwrap();
    let peer = EncapPeer::new(
        "192.0.2.2".parse().unwrap(),
        "192.0.2.1".parse().unwrap(),
        Encap::Ipip,
    );
    let start = std::time::Instant::now();
    tunnel.peers_mut().insert(prefix, peer).unwrap();
    let e = tokio::time::timeout(Duration::from_secs(2), events.next_event())
        .await
        .expect("the peer change as an event within 2 s")
        .unwrap();
    let took = start.elapsed();
    assert!(
        matches!(&*e, Event::PeerAdded { prefix: p, peer: q, origin: Some(o), .. }
            if *p == prefix && *q == peer && o.writer.pid == std::process::id()),
        "{e:?}"
    );
    println!(
        "peer change -> async event: {:.2} ms",
        took.as_secs_f64() * 1e3
    );
    tunnel.peers_mut().remove(prefix).unwrap();
    let e = tokio::time::timeout(Duration::from_secs(2), events.next_event())
        .await
        .expect("the removal as an event")
        .unwrap();
    assert_eq!(e.action(), "del", "{e:?}");
    let mut monitor = events.into_inner();
    assert!(monitor.try_next().unwrap().is_none(), "events left over");
}
