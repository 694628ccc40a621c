//! Event latency: from a route change to its event, in lwtun's `Monitor` and in `ip monitor
//! route` (iproute2, the real peer: spawned, its stdout read line by line on a thread that
//! stamps each line as it arrives), both subscribed in one namespace and seeing the same changes
//! in the same run.
//!
//! Two kinds of change, N of each (`LWTUN_BENCH_EVENTS`, default 300): a route added by
//! netlink from this process (`Netlink::add_route`, the clock starting right before the
//! request), and a route added by `ip route add` (another process; the clock starts before the
//! spawn, so both sides include the same start-up of `ip`). Each route is deleted before the
//! next change (its events are read and not timed). Reported: median and p99 of each side and
//! the ratio of the medians (ip monitor / lwtun).
//!
//! Measured on the shared 2-vCPU machine (kernel 6.18, iproute2's `ip monitor`, 300 changes
//! each, issue 24): by netlink, lwtun median 9 µs / p99 20 µs, ip monitor 17 µs / 46 µs
//! (1.91x); by `ip route add`, 1907 µs / 7113 µs against 1950 µs / 7123 µs (1.02x: the
//! start-up of `ip` is almost all of it). Both read the same multicast message; lwtun decodes it
//! in the reading thread, ip monitor prints it and the pipe carries it to this process.
//!
//! Run as root: `cargo bench --bench monitor`.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lwtun::monitor::{Event, EventKinds, Monitor};
use lwtun::netlink::route::Route;
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;

fn dst(i: usize) -> String {
    format!("10.200.{}.{}", i / 256, i % 256)
}

/// Median and p99 in microseconds.
fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("monitor bench: SKIPPED, needs root (namespaces, routes)");
        return;
    }
    let n: usize = std::env::var("LWTUN_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let ns = NetNs::create_unique("bench-mon").expect("namespace");
    let mut nl = Netlink::open_in(&ns).unwrap();
    nl.add_veth("d0", "d1", None).unwrap();
    let d0 = nl.link_by_name("d0").unwrap().index;
    let d1 = nl.link_by_name("d1").unwrap().index;
    nl.set_link_up(d1, true).unwrap();
    nl.set_link_up(d0, true).unwrap();
    std::thread::sleep(Duration::from_millis(300)); // IPv6 link-local routes settle

    let mut monitor = Monitor::open_in(&ns, EventKinds::ROUTE).unwrap();
    let mut ipmon = ns
        .command("ip")
        .args(["monitor", "route"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ip monitor");
    let out = ipmon.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    // Until ip monitor prints, it is not subscribed yet.
    for metric in 1.. {
        let mut r = Route::new("10.199.0.0/24".parse().unwrap());
        r.oif = Some(d0);
        r.metric = Some(metric);
        nl.add_route(&r).unwrap();
        if lines.recv_timeout(Duration::from_millis(200)).is_ok() {
            break;
        }
        assert!(metric < 50, "ip monitor printed nothing");
    }
    while lines.recv_timeout(Duration::from_millis(200)).is_ok() {}
    while monitor.try_next().unwrap().is_some() {}

    for how in ["netlink", "ip route add"] {
        let mut ours = Vec::with_capacity(n);
        let mut theirs = Vec::with_capacity(n);
        for i in 0..n {
            let ip = dst(i);
            let mut r = Route::new(format!("{ip}/32").parse().unwrap());
            r.oif = Some(d0);
            let t0 = Instant::now();
            // `ip` is not waited for before reading: its event comes before it exits.
            let child = if how == "netlink" {
                nl.add_route(&r).unwrap();
                None
            } else {
                Some(
                    ns.command("ip")
                        .args(["route", "add", &format!("{ip}/32"), "dev", "d0"])
                        .spawn()
                        .unwrap(),
                )
            };
            loop {
                let e = monitor.next().unwrap();
                if matches!(&e.event, Event::RouteAdded(r2) if r2.dst == r.dst) {
                    ours.push(t0.elapsed());
                    break;
                }
            }
            let prefix = format!("{ip} ");
            loop {
                let (at, line) = lines
                    .recv_timeout(Duration::from_secs(5))
                    .expect("ip monitor line");
                if line.starts_with(&prefix) {
                    theirs.push(at - t0);
                    break;
                }
            }
            if let Some(mut child) = child {
                assert!(child.wait().unwrap().success());
            }
            nl.delete_route(&r).unwrap();
            // The deletion's events, untimed.
            loop {
                let e = monitor.next().unwrap();
                if matches!(&e.event, Event::RouteRemoved(r2) if r2.dst == r.dst) {
                    break;
                }
            }
            loop {
                let (_, line) = lines
                    .recv_timeout(Duration::from_secs(5))
                    .expect("ip monitor line");
                if line.starts_with(&format!("Deleted {prefix}")) {
                    break;
                }
            }
        }
        let (om, o99) = stats(ours);
        let (tm, t99) = stats(theirs);
        println!(
            "monitor latency, {n} changes by {how}: lwtun Monitor median {om:.0} µs p99 {o99:.0} \
             µs; ip monitor route median {tm:.0} µs p99 {t99:.0} µs; ip monitor / lwtun \
             (medians) {:.2}x",
            tm / om
        );
    }
    let _ = ipmon.kill();
    let _ = ipmon.wait();
}
