//! Big peer tables: what it costs to drop one (1M and 4M IPv4 peers), and what a peer costs
//! to write, remove and look up at 10k, 1M and 4M, next to Cloudflare's published LPM figures.
//!
//! Freeing a multi-million-entry LPM trie is the kernel's work: the map's last reference goes
//! (the `Tunnel` drops, or its pins are removed), and a kernel worker frees the trie node by
//! node. Cloudflare reported that freeing such tries held a CPU for more than 10 s (soft-lockup
//! warnings). The ways of dropping measured here, each for a freshly filled table:
//!
//! - **kernel free**: the `Tunnel` dropped with `drain_on_drop(false)` (the kernel frees the
//!   full trie; what every drop did before 0.3);
//! - **remove, then drop**: `PeerTable::remove_batch` of every peer first (batched deletes from
//!   this process), then the drop of an empty trie;
//! - **paced**: `remove_batch` of 65 536 peers at a time, 10 ms apart, then the drop;
//! - **drop (default)**: the `Tunnel` dropped as it is: it deletes the peers 4 096 at a time,
//!   2 ms apart, on a thread of its own (`TunnelBuilder::drain_on_drop`);
//! - **close**: `Tunnel::close`, the same deletes before it returns.
//!
//! For each: how long the call takes, when the kernel's slab and per-CPU memory are back to
//! where they were before the table was filled ("freed after"), the longest a thread pinned to
//! each CPU, sleeping 1 ms at a time, woke late meanwhile (a CPU held by the kernel shows up
//! there), and the soft-lockup or RCU-stall lines `dmesg` gained.
//!
//! Per-peer costs (ns per peer; lookups are `BPF_PROG_TEST_RUN` of the encap's lookup and
//! header code on a frame to a peer, minus the pass-only floor): Cloudflare's benchmark of the
//! kernel's LPM trie with 10k /32 entries gave lookup ~135 ns, update ~378 ns, delete ~1.4 µs
//! per element (one syscall each).
//!
//! Run as root on a quiet machine: `cargo bench --bench peer_table_drop`
//! (`LWTUN_BENCH_PEERS=N` for one size).

#[path = "support/meminfo.rs"]
mod meminfo;
#[path = "support/peers.rs"]
mod peers;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use lwtun::peer::EncapPeer;
use lwtun::tunnel::Tunnel;
use meminfo::kernel_memory;
use peers::{baseline_ns, lookup_ns, peers};

/// Lines of `dmesg` that say a CPU was held: soft lockups and RCU stalls.
fn stall_lines() -> usize {
    let out = std::process::Command::new("dmesg").output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("soft lockup") || l.contains("rcu_sched self-detected stall"))
        .count()
}

/// Threads pinned one per CPU, each sleeping 1 ms at a time and keeping the longest it woke late.
struct Heartbeats {
    stop: Arc<AtomicBool>,
    worst_us: Vec<Arc<AtomicU64>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Heartbeats {
    fn start() -> Heartbeats {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let mut worst_us = Vec::new();
        let mut threads = Vec::new();
        for cpu in 0..cpus {
            let worst = Arc::new(AtomicU64::new(0));
            worst_us.push(worst.clone());
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                // SAFETY: cpu_set_t is plain data; CPU_SET and sched_setaffinity get a valid set.
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                }
                let tick = Duration::from_millis(1);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    std::thread::sleep(tick);
                    let late = t.elapsed().saturating_sub(tick).as_micros() as u64;
                    worst.fetch_max(late, Ordering::Relaxed);
                }
            }));
        }
        Heartbeats {
            stop,
            worst_us,
            threads,
        }
    }

    /// The longest late wake-up of each CPU, in ms.
    fn stop(self) -> Vec<f64> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.worst_us
            .iter()
            .map(|w| w.load(Ordering::Relaxed) as f64 / 1e3)
            .collect()
    }
}

/// Waits until the kernel's memory is back within 2% of the table's size of `floor` (or 30 s);
/// returns when it got there, from `since`.
fn freed_after(since: Instant, floor: u64, table_bytes: u64) -> Option<Duration> {
    let slack = table_bytes / 50;
    loop {
        if kernel_memory() <= floor + slack {
            return Some(since.elapsed());
        }
        if since.elapsed() > Duration::from_secs(30) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

struct Dropped {
    call: Duration,
    removal: Option<Duration>,
    freed: Option<Duration>,
    worst_late_ms: Vec<f64>,
    stalls: usize,
}

/// How a filled table goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Dropped whole, left to the kernel (`drain_on_drop(false)`).
    Drop,
    /// Dropped as it is: the default background drain.
    DrainOnDrop,
    /// `Tunnel::close`.
    Close,
    /// Emptied by one `remove_batch`, then dropped.
    RemoveAll,
    /// Emptied by `remove_batch` of [`PACED_CHUNK`] peers at a time, [`PACED_PAUSE`] apart.
    Paced,
}

impl Way {
    fn removes(self) -> bool {
        matches!(self, Way::RemoveAll | Way::Paced)
    }
}

const PACED_CHUNK: usize = 65_536;
const PACED_PAUSE: Duration = Duration::from_millis(10);

/// Fills a table of `n` peers and lets it go the `way` given.
fn drop_case(n: u32, input: &[(IpNetwork, EncapPeer)], way: Way) -> Dropped {
    let floor = kernel_memory();
    let mut t = Tunnel::builder()
        .capacity(n)
        .drain_on_drop(way == Way::DrainOnDrop)
        .load()
        .expect("load tunnel");
    t.peers_mut().insert_batch(input).expect("fill");
    let table_bytes = kernel_memory().saturating_sub(floor);
    let stalls = stall_lines();
    let beats = Heartbeats::start();
    let start = Instant::now();
    let removal = way.removes().then(|| {
        let prefixes: Vec<IpNetwork> = input.iter().map(|(p, _)| *p).collect();
        let t0 = Instant::now();
        match way {
            Way::Paced => {
                for chunk in prefixes.chunks(PACED_CHUNK) {
                    t.peers_mut().remove_batch(chunk).expect("remove a chunk");
                    std::thread::sleep(PACED_PAUSE);
                }
            }
            _ => t.peers_mut().remove_batch(&prefixes).expect("remove all"),
        }
        t0.elapsed()
    });
    let t0 = Instant::now();
    if way == Way::Close {
        t.close();
    } else {
        drop(t);
    }
    let call = t0.elapsed();
    let freed = freed_after(start, floor, table_bytes);
    // a moment more: a stall that starts late is seen too
    std::thread::sleep(Duration::from_millis(300));
    Dropped {
        call,
        removal,
        freed,
        worst_late_ms: beats.stop(),
        stalls: stall_lines().saturating_sub(stalls),
    }
}

/// Per-peer costs at `n`: batch insert, one-by-one insert (a sample), lookup, batch remove,
/// one-by-one remove (a sample), in ns.
fn per_peer(n: u32, input: &[(IpNetwork, EncapPeer)], floor_ns: f64) -> [f64; 5] {
    let mut t = Tunnel::builder().capacity(n + 10_000).load().expect("load");
    let t0 = Instant::now();
    t.peers_mut().insert_batch(input).expect("fill");
    let insert_batch = t0.elapsed().as_nanos() as f64 / f64::from(n);
    // one syscall per peer, as Cloudflare's figures are: 10 000 more peers
    let extra = 10_000u32;
    let more = peers(n + extra);
    let t0 = Instant::now();
    for (p, e) in &more[n as usize..] {
        t.peers_mut().insert(*p, *e).expect("insert one");
    }
    let insert_one = t0.elapsed().as_nanos() as f64 / f64::from(extra);
    let lookup = [0, n / 2, n - 1]
        .iter()
        .map(|&i| lookup_ns(&t, i))
        .sum::<f64>()
        / 3.0
        - floor_ns;
    let t0 = Instant::now();
    for (p, _) in &more[n as usize..] {
        t.peers_mut().remove(*p).expect("remove one");
    }
    let remove_one = t0.elapsed().as_nanos() as f64 / f64::from(extra);
    let prefixes: Vec<IpNetwork> = input.iter().map(|(p, _)| *p).collect();
    let t0 = Instant::now();
    t.peers_mut().remove_batch(&prefixes).expect("remove all");
    let remove_batch = t0.elapsed().as_nanos() as f64 / f64::from(n);
    [insert_batch, insert_one, lookup, remove_batch, remove_one]
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("> 30 s".into(), |d| {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    })
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("peer_table_drop bench: SKIPPED, needs root (BPF maps)");
        return;
    }
    let sizes: Vec<u32> = match std::env::var("LWTUN_BENCH_PEERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => vec![n],
        None => vec![10_000, 1_000_000, 4_000_000],
    };
    let floor_ns = baseline_ns();
    println!(
        "per peer, ns (lookup: BPF_PROG_TEST_RUN minus the pass-only floor of {floor_ns:.0} ns)"
    );
    println!(
        "| peers | insert (batch) | insert (one call each) | lookup | remove (batch) | remove (one call each) |"
    );
    println!("|---|---|---|---|---|---|");
    println!("| 10k, Cloudflare's LPM bench | | 378 | 135 | | 1 400 |");
    let mut drops = Vec::new();
    for &n in &sizes {
        let input = peers(n);
        let c = per_peer(n, &input, floor_ns);
        println!(
            "| {n} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            c[0], c[1], c[2], c[3], c[4]
        );
        if n >= 1_000_000 {
            for way in [
                Way::Drop,
                Way::RemoveAll,
                Way::Paced,
                Way::DrainOnDrop,
                Way::Close,
            ] {
                drops.push((n, way, drop_case(n, &input, way)));
            }
        }
    }
    if drops.is_empty() {
        return;
    }
    println!();
    println!(
        "| peers | way | call | freed after | worst late wake-up per CPU | stall lines in dmesg |"
    );
    println!("|---|---|---|---|---|---|");
    for (n, way, d) in drops {
        let removal = d.removal.unwrap_or_default().as_secs_f64() * 1e3;
        let way = match way {
            Way::Drop => "kernel free (drain_on_drop(false))".to_string(),
            Way::DrainOnDrop => "drop (default: drained in the background)".to_string(),
            Way::Close => "close (drained before it returns)".to_string(),
            Way::RemoveAll => format!("remove_batch ({removal:.0} ms), then drop"),
            Way::Paced => format!(
                "remove_batch of {PACED_CHUNK}, {PACED_PAUSE:?} apart ({removal:.0} ms), then drop"
            ),
        };
        let late: Vec<String> = d
            .worst_late_ms
            .iter()
            .map(|w| format!("{w:.1} ms"))
            .collect();
        println!(
            "| {n} | {way} | {:.1} ms | {} | {} | {} |",
            d.call.as_secs_f64() * 1e3,
            ms(d.freed),
            late.join(", "),
            d.stalls
        );
    }
}
