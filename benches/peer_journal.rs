//! The peer journal's costs, from the reader's side:
//!
//! - a `PeerJournal::poll` that finds nothing (a `stat` of the pin and an atomic load), and one
//!   that reads a 10k-peer batch (10000 records turned into changes);
//! - change → event latency: from the writer's record time (`CLOCK_REALTIME`, stamped when it
//!   appends, after the table write) to the reader's poll returning the change, for a reader
//!   polling in a loop, and for one polling every 10 ms; the writer is a thread of this
//!   process replacing a peer every millisecond, and then `lwtun peer replace` as its own
//!   process (when `LWTUN_BENCH_LWTUN` names the binary).
//!
//! Run as root: `cargo bench --bench peer_journal` (`LWTUN_BENCH_CHANGES=N` single changes,
//! default 500).

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use ipnetwork::IpNetwork;
use lwtun::peer::{Encap, EncapPeer, PeerChange, PeerJournal};
use lwtun::tunnel::Tunnel;

fn peer(key: u32) -> EncapPeer {
    EncapPeer::new(
        "192.0.2.2".parse().unwrap(),
        "192.0.2.1".parse().unwrap(),
        Encap::Gre {
            key: Some(key),
            checksum: false,
        },
    )
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p) as usize]
}

/// The latencies (µs) of the changes in `changes`, seen at `now`.
fn latencies(changes: &[PeerChange], now: SystemTime, out: &mut Vec<f64>) {
    for c in changes {
        if let Some(o) = c.origin() {
            let d = now.duration_since(o.time).unwrap_or_default();
            out.push(d.as_secs_f64() * 1e6);
        }
    }
}

/// A reader polling every `interval` (spinning for zero) until `n` changes came.
fn read(journal: &mut PeerJournal, n: usize, interval: Duration) -> Vec<f64> {
    let mut lat = Vec::new();
    let start = Instant::now();
    while lat.len() < n && start.elapsed() < Duration::from_secs(60) {
        let changes = journal.poll().expect("poll");
        latencies(&changes, SystemTime::now(), &mut lat);
        if interval.is_zero() {
            std::thread::yield_now();
        } else {
            std::thread::sleep(interval);
        }
    }
    lat
}

fn report(what: &str, mut lat: Vec<f64>) {
    if lat.is_empty() {
        println!("  {what}: no changes read");
        return;
    }
    println!(
        "  {what}: {} changes, median {:.0} µs, p99 {:.0} µs, max {:.0} µs",
        lat.len(),
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
        percentile(&mut lat, 1.0)
    );
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("peer_journal bench: SKIPPED, needs root (BPF maps)");
        return;
    }
    let n: usize = std::env::var("LWTUN_BENCH_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let folder = format!(
        "/sys/fs/bpf/lwtun-bench-peer-journal-{}",
        std::process::id()
    );
    let mut tunnel = Tunnel::builder()
        .capacity(16_384)
        .pin(&folder)
        .load()
        .expect("load pinned tunnel");
    let local: IpAddr = "192.0.2.1".parse().unwrap();
    let mut journal = PeerJournal::open(&folder).expect("open journal");

    // Poll costs.
    let polls = 20_000;
    let t = Instant::now();
    for _ in 0..polls {
        assert!(journal.poll().unwrap().is_empty());
    }
    let empty = t.elapsed().as_secs_f64() / f64::from(polls) * 1e9;
    let batch: Vec<(IpNetwork, EncapPeer)> = (0..10_000u32)
        .map(|i| {
            let prefix = IpNetwork::new([10, 60, (i >> 8) as u8, i as u8].into(), 32).unwrap();
            (
                prefix,
                EncapPeer::new("192.0.2.3".parse().unwrap(), local, Encap::Ipip),
            )
        })
        .collect();
    tunnel.peers_mut().insert_batch(&batch).unwrap();
    let t = Instant::now();
    let read_batch = journal.poll().unwrap();
    let batch_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(read_batch.len(), 10_000);
    println!("peer journal, reader side:");
    println!("  poll finding nothing: {empty:.0} ns");
    println!(
        "  poll reading a 10k-peer batch: {batch_ms:.2} ms ({:.0} ns a change)",
        batch_ms * 1e6 / 1e4
    );

    // Change → event, a writer thread changing a peer every millisecond.
    let prefix: IpNetwork = "10.61.0.0/16".parse().unwrap();
    tunnel.peers_mut().insert(prefix, peer(0)).unwrap();
    journal.poll().unwrap();
    println!("change → event (writer's record time to the poll that returns it):");
    for (label, interval) in [
        ("writer thread, reader polling in a loop", Duration::ZERO),
        (
            "writer thread, reader polling every 10 ms",
            Duration::from_millis(10),
        ),
    ] {
        let writer = std::thread::spawn(move || {
            for i in 1..=n as u32 {
                tunnel.peers_mut().replace(prefix, peer(i)).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            tunnel
        });
        let lat = read(&mut journal, n, interval);
        tunnel = writer.join().unwrap();
        report(label, lat);
    }

    // Change → event across processes: the command as writer (it needs the folder's lock).
    if let Ok(lwtun) = std::env::var("LWTUN_BENCH_LWTUN") {
        tunnel.keep_pinned();
        drop(tunnel);
        let runs = 50;
        let writer = std::thread::spawn(move || {
            for i in 0..runs {
                let ok = std::process::Command::new(&lwtun)
                    .args(["peer", "replace", "--pin", &folder, "10.61.0.0/16"])
                    .args(["remote", "192.0.2.4", "local", "192.0.2.1", "encap", "gre"])
                    .args(["key", &(100_000 + i).to_string()])
                    .stdout(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "lwtun peer replace failed");
            }
            folder
        });
        let lat = read(&mut journal, runs, Duration::ZERO);
        let folder = writer.join().unwrap();
        report(
            "`lwtun peer replace` process, reader polling in a loop",
            lat,
        );
        drop(
            Tunnel::builder()
                .pin(&folder)
                .load()
                .expect("adopt to unload"),
        );
    }
}
