//! Peer table inserts and removals, 100k and 1M IPv4 peers, every way at once in one run:
//!
//! - `lwtun batch`: `PeerTable::insert_batch` (sorted, chunked `BPF_MAP_UPDATE_BATCH`, its
//!   default worker threads), from input in prefix order and from shuffled input, and with one
//!   worker (`set_batch_workers(1)`);
//! - `raw kernel`: one `BPF_MAP_UPDATE_BATCH` of prebuilt key and value arrays into the same
//!   table (the floor lwtun's user space adds to), in prefix order on one and on two threads
//!   (two contiguous halves), and shuffled on one;
//! - `bpftool batch`: one `map update` command per peer from a batch file;
//! - `insert loop`: `PeerTable::insert` per peer (one `BPF_MAP_UPDATE_ELEM` each);
//! - removals: `PeerTable::remove_batch` vs one raw `BPF_MAP_DELETE_BATCH`;
//! - `pinned, journaled`: the lwtun batch insert and removal and the insert loop into a pinned
//!   tunnel, which records every change in its peer journal (made by the first write): the
//!   journal's cost, against the same cases unpinned in the same rounds.
//!
//! The cases take turns over several rounds (this machine's load swings single runs by 2x) and
//! the medians are reported, with rates relative to bpftool and to the raw one-thread floor, by
//! the wall clock and per CPU-second (user plus system time of every thread: what a path costs,
//! whatever else runs; for the parallel cases it shows the price of their speed).
//! Then the memory a peer costs at 1M (kernel: measured as the growth of slab and per-CPU memory
//! from loading an empty tunnel to holding 1M peers, and as the maps' memlock that bpftool
//! shows; user space: the process's resident-set growth for the table's copy), and the
//! per-packet cost of the encap's lookup at those sizes (BPF_PROG_TEST_RUN).
//!
//! What the kernel's LPM insert costs depend on (measured here, 1M IPv4 keys, 48-byte values,
//! 6.18, medians of 5): keys per batch call (1: 0.55M/s, 16: 0.78M/s, 128 and up: 0.82-0.86M/s,
//! flat to 1M per call); order (shuffled keys take 1.9x as long as sorted ones, for /32s, /24s,
//! mixed /16-/32 and keys spread over the whole space alike; descending is about as cheap as
//! ascending); prefix lengths little (mixed /16-/32 sorted is the cheapest); CPUs (two threads
//! on halves of the sorted keys reach 1.9M/s when both CPUs are free, nothing when another
//! process holds one). Map flags offer nothing: an LPM trie must be `BPF_F_NO_PREALLOC`, and
//! batch element flags other than `BPF_F_LOCK` are refused (EINVAL). Every node, a peer's and
//! the intermediate one its insert adds, is a `kmalloc-cg-96` object: 192 bytes per /32 peer for
//! any value of 32 to 48 bytes (slabinfo).
//!
//! Run as root: `cargo bench --bench tunnel_peers`. `LWTUN_BENCH_PEERS=N` for one size N,
//! `LWTUN_BENCH_ROUNDS=R` for R rounds (default 5), `LWTUN_BENCH_CASE=NAME` for one case
//! (`NAME|NAME` for several, taking turns: an A/B against the raw floor in the same minutes).

#[path = "support/meminfo.rs"]
mod meminfo;
#[path = "support/peers.rs"]
mod peers;

use std::io::Write;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use lwtun::peer::EncapPeer;
use lwtun::tunnel::Tunnel;
use meminfo::{kernel_memory, kib};
use peers::{baseline_ns, lookup_ns, peers};

/// A fixed pseudo-random permutation of `0..n`.
fn shuffled(n: u32) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n).collect();
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..order.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        order.swap(i, (s % (i as u64 + 1)) as usize);
    }
    order
}

/// The key and value bytes of peer `i` as the encap's maps hold them (the value as the
/// skeleton's generated type lays it out).
fn raw_entry(i: u32) -> ([u8; 8], Vec<u8>) {
    let mut v = lwtun::skel::lwt_encap::types::lwtun_peer::default();
    v.remote[..4].copy_from_slice(&[192, 0, 2, (i % 250 + 2) as u8]);
    v.local[..4].copy_from_slice(&[192, 0, 2, 1]);
    v.kind = 2;
    v.flags = 1 << 1;
    v.ttl = 64;
    v.gre_key = u32::from_ne_bytes(i.to_be_bytes());
    v.slot = i;
    // SAFETY: lwtun_peer is a repr(C) struct of integers with explicit padding (48 bytes).
    let vb = unsafe {
        std::slice::from_raw_parts(
            (&v as *const lwtun::skel::lwt_encap::types::lwtun_peer).cast::<u8>(),
            std::mem::size_of_val(&v),
        )
    }
    .to_vec();
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&32u32.to_ne_bytes());
    k[4..].copy_from_slice(&(0x0a00_0000u32 | i).to_be_bytes());
    (k, vb)
}

fn map_id(t: &Tunnel, name: &str) -> u32 {
    t.map_ids()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, id)| id)
        .expect("map present")
}

fn peers_v4(t: &Tunnel) -> MapHandle {
    MapHandle::from_map_id(map_id(t, "peers_v4")).expect("open peers_v4")
}

/// bytes_memlock of map `id`, as bpftool reports it.
fn memlock(id: u32) -> u64 {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "show", "id", &id.to_string()])
        .output()
        .expect("run bpftool");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("\"bytes_memlock\":")
        .nth(1)
        .and_then(|r| {
            r.trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// CPU seconds (user and system) this process (`libc::RUSAGE_SELF`: every thread) or its
/// waited-for children (`libc::RUSAGE_CHILDREN`) have used.
fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the struct it is given; all-zero is a valid rusage.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `u` is a valid rusage.
    unsafe { libc::getrusage(who, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Wall-clock and CPU seconds of one case. CPU time counts every thread's (spinning on the trie's
/// lock included) and does not grow when other processes take the CPUs, so it shows a path's
/// cost on this loaded, shared machine where the wall clock swings.
#[derive(Clone, Copy)]
struct Timing {
    wall: f64,
    cpu: f64,
}

/// How long `f` takes.
fn time(f: impl FnOnce()) -> Timing {
    let (cpu, start) = (cpu_seconds(libc::RUSAGE_SELF), Instant::now());
    f();
    Timing {
        wall: start.elapsed().as_secs_f64(),
        cpu: cpu_seconds(libc::RUSAGE_SELF) - cpu,
    }
}

fn tunnel(n: u32) -> Tunnel {
    Tunnel::builder().capacity(n).load().expect("load tunnel")
}

/// A tunnel pinned in a folder of its own, so that its peer changes are journaled (the folder
/// goes when it drops).
fn pinned_tunnel(n: u32) -> Tunnel {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let folder = format!(
        "/sys/fs/bpf/lwtun-bench-journal-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    Tunnel::builder()
        .capacity(n)
        .pin(folder)
        .load()
        .expect("load pinned tunnel")
}

/// Drops a filled table and waits until the kernel has freed it: a kernel worker frees the trie
/// after the last reference goes, node by node, for most of a second at 1M peers, and would
/// otherwise hold a CPU during the next case (the two-thread cases then gain nothing). Done when
/// the kernel's slab and per-CPU memory stop shrinking.
fn settle<T>(filled: T, n: u32) {
    drop(filled);
    let start = Instant::now();
    let mut last = kernel_memory();
    loop {
        std::thread::sleep(Duration::from_millis(20 + u64::from(n / 20_000)));
        let now = kernel_memory();
        if last.saturating_sub(now) < 256 * 1024 || start.elapsed() > Duration::from_secs(10) {
            break;
        }
        last = now;
    }
}

/// The cases of one size; each returns seconds for `n` inserts (removals).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    Lwtun,
    LwtunShuffled,
    LwtunOneWorker,
    RawOneThread,
    RawTwoThreads,
    RawShuffled,
    Bpftool,
    InsertLoop,
    LwtunRemove,
    RawRemove,
    LwtunPinned,
    LwtunRemovePinned,
    InsertLoopPinned,
}

const CASES: [(Case, &str); 13] = [
    (Case::Lwtun, "lwtun insert_batch"),
    (Case::LwtunShuffled, "lwtun insert_batch, shuffled input"),
    (Case::LwtunOneWorker, "lwtun insert_batch, 1 worker"),
    (Case::RawOneThread, "raw kernel batch, 1 thread (floor)"),
    (Case::RawTwoThreads, "raw kernel batch, 2 threads"),
    (Case::RawShuffled, "raw kernel batch, shuffled order"),
    (Case::Bpftool, "bpftool batch"),
    (Case::InsertLoop, "lwtun insert per peer"),
    (Case::LwtunRemove, "lwtun remove_batch"),
    (Case::RawRemove, "raw kernel delete batch"),
    (Case::LwtunPinned, "lwtun insert_batch, pinned, journaled"),
    (
        Case::LwtunRemovePinned,
        "lwtun remove_batch, pinned, journaled",
    ),
    (
        Case::InsertLoopPinned,
        "lwtun insert per peer, pinned, journaled",
    ),
];

struct Inputs {
    sorted: Vec<(IpNetwork, EncapPeer)>,
    shuffled: Vec<(IpNetwork, EncapPeer)>,
    keys: Vec<u8>,
    values: Vec<u8>,
    shuffled_keys: Vec<u8>,
    shuffled_values: Vec<u8>,
    batch_file: std::path::PathBuf,
}

fn inputs(n: u32) -> Inputs {
    let sorted = peers(n);
    let order = shuffled(n);
    let shuffled_peers = order.iter().map(|&i| sorted[i as usize]).collect();
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    for i in 0..n {
        let (k, v) = raw_entry(i);
        keys.extend_from_slice(&k);
        values.extend_from_slice(&v);
    }
    let (mut shuffled_keys, mut shuffled_values) = (Vec::new(), Vec::new());
    for &i in &order {
        let (k, v) = raw_entry(i);
        shuffled_keys.extend_from_slice(&k);
        shuffled_values.extend_from_slice(&v);
    }
    let batch_file = std::env::temp_dir().join(format!(
        "lwtun-bench-peers-{}-{n}.batch",
        std::process::id()
    ));
    Inputs {
        sorted,
        shuffled: shuffled_peers,
        keys,
        values,
        shuffled_keys,
        shuffled_values,
        batch_file,
    }
}

fn raw_update(map: &MapHandle, keys: &[u8], values: &[u8]) {
    let n = (keys.len() / 8) as u32;
    map.update_batch(keys, values, n, MapFlags::ANY, MapFlags::ANY)
        .expect("raw batch update");
}

/// Runs `case` once for `n` peers.
fn run_case(case: Case, n: u32, inp: &Inputs) -> Timing {
    match case {
        Case::Lwtun | Case::LwtunShuffled | Case::LwtunOneWorker | Case::LwtunPinned => {
            let mut t = match case {
                Case::LwtunPinned => pinned_tunnel(n),
                _ => tunnel(n),
            };
            let batch = if case == Case::LwtunShuffled {
                &inp.shuffled
            } else {
                &inp.sorted
            };
            if case == Case::LwtunOneWorker {
                t.peers_mut().set_batch_workers(1);
            }
            let secs = time(|| t.peers_mut().insert_batch(batch).expect("batch insert"));
            assert_eq!(t.peers().len(), n as usize);
            settle(t, n);
            secs
        }
        Case::LwtunRemove | Case::LwtunRemovePinned => {
            let mut t = match case {
                Case::LwtunRemovePinned => pinned_tunnel(n),
                _ => tunnel(n),
            };
            t.peers_mut()
                .insert_batch(&inp.sorted)
                .expect("batch insert");
            let prefixes: Vec<IpNetwork> = inp.shuffled.iter().map(|(p, _)| *p).collect();
            let secs = time(|| t.peers_mut().remove_batch(&prefixes).expect("batch remove"));
            assert!(t.peers().is_empty());
            settle(t, n);
            secs
        }
        Case::RawOneThread | Case::RawShuffled | Case::RawRemove => {
            let t = tunnel(n);
            let map = peers_v4(&t);
            let secs = match case {
                Case::RawOneThread => time(|| raw_update(&map, &inp.keys, &inp.values)),
                Case::RawShuffled => {
                    time(|| raw_update(&map, &inp.shuffled_keys, &inp.shuffled_values))
                }
                _ => {
                    raw_update(&map, &inp.keys, &inp.values);
                    time(|| {
                        map.delete_batch(&inp.keys, n, MapFlags::ANY, MapFlags::ANY)
                            .expect("raw batch delete")
                    })
                }
            };
            settle((map, t), n);
            secs
        }
        Case::RawTwoThreads => {
            let t = tunnel(n);
            let map = peers_v4(&t);
            let half = n as usize / 2;
            let secs = time(|| {
                std::thread::scope(|s| {
                    s.spawn(|| raw_update(&map, &inp.keys[half * 8..], &inp.values[half * 48..]));
                    raw_update(&map, &inp.keys[..half * 8], &inp.values[..half * 48]);
                })
            });
            settle((map, t), n);
            secs
        }
        Case::Bpftool => {
            let t = tunnel(n);
            let id = map_id(&t, "peers_v4");
            {
                let mut f =
                    std::io::BufWriter::new(std::fs::File::create(&inp.batch_file).unwrap());
                for i in 0..n {
                    let (k, v) = raw_entry(i);
                    writeln!(
                        f,
                        "map update id {id} key hex {} value hex {}",
                        hex(&k),
                        hex(&v)
                    )
                    .unwrap();
                }
            }
            let (cpu, start) = (cpu_seconds(libc::RUSAGE_CHILDREN), Instant::now());
            let out = std::process::Command::new("bpftool")
                .args(["batch", "file"])
                .arg(&inp.batch_file)
                .output()
                .expect("run bpftool");
            let secs = Timing {
                wall: start.elapsed().as_secs_f64(),
                cpu: cpu_seconds(libc::RUSAGE_CHILDREN) - cpu,
            };
            let _ = std::fs::remove_file(&inp.batch_file);
            assert!(
                out.status.success(),
                "bpftool batch: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            settle(t, n);
            secs
        }
        Case::InsertLoop | Case::InsertLoopPinned => {
            let mut t = match case {
                Case::InsertLoopPinned => pinned_tunnel(n),
                _ => tunnel(n),
            };
            let secs = time(|| {
                let peers = t.peers_mut();
                for (p, e) in &inp.sorted {
                    peers.insert(*p, *e).expect("insert");
                }
            });
            settle(t, n);
            secs
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Memory per peer at `n` peers: (kernel measured, of it the trie, kernel memlock, user space),
/// bytes.
fn memory_per_peer(n: u32, inp: &Inputs) -> (f64, f64, f64, f64) {
    std::thread::sleep(Duration::from_millis(500));
    let k0 = kernel_memory();
    let mut t = tunnel(n);
    let k_empty = kernel_memory();
    let rss0 = kib("/proc/self/status", "VmRSS:");
    t.peers_mut()
        .insert_batch(&inp.sorted)
        .expect("batch insert");
    let rss1 = kib("/proc/self/status", "VmRSS:");
    std::thread::sleep(Duration::from_millis(200));
    let k1 = kernel_memory();
    let memlock = memlock(map_id(&t, "peers_v4")) + memlock(map_id(&t, "peer_stats")) / 2;
    let per = |b: u64| b as f64 / f64::from(n);
    let out = (
        per(k1.saturating_sub(k0)),
        per(k1.saturating_sub(k_empty)),
        per(memlock),
        per(rss1.saturating_sub(rss0) * 1024),
    );
    settle(t, n);
    out
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("tunnel_peers bench: SKIPPED, needs root (BPF maps)");
        return;
    }
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
    let sizes: Vec<u32> = match env("LWTUN_BENCH_PEERS") {
        Some(n) => vec![n],
        None => vec![100_000, 1_000_000],
    };
    let rounds = env("LWTUN_BENCH_ROUNDS").unwrap_or(5).max(1);
    // Only the cases named (for profiling and A/B runs), separated by '|'.
    let only = std::env::var("LWTUN_BENCH_CASE").ok();
    let workers = tunnel(1).peers().batch_workers();
    println!(
        "peer inserts: median of {rounds} rounds (cases take turns), lwtun batch workers: {workers}"
    );
    let mut lookup_costs = Vec::new();
    let mut memory = None;
    for &n in &sizes {
        let inp = inputs(n);
        if only.is_none() && n == *sizes.iter().max().unwrap() {
            memory = Some((n, memory_per_peer(n, &inp)));
        }
        let mut runs: Vec<Vec<Timing>> = vec![Vec::new(); CASES.len()];
        for _ in 0..rounds {
            for (i, &(case, name)) in CASES.iter().enumerate() {
                if only
                    .as_deref()
                    .is_none_or(|o| o.split('|').any(|o| o == name))
                {
                    runs[i].push(run_case(case, n, &inp));
                }
            }
        }
        if only.is_some() {
            for (i, &(_, name)) in CASES.iter().enumerate() {
                if !runs[i].is_empty() {
                    let rates: Vec<(u64, u64)> = runs[i]
                        .iter()
                        .map(|t| {
                            (
                                (f64::from(n) / t.wall) as u64,
                                (f64::from(n) / t.cpu) as u64,
                            )
                        })
                        .collect();
                    println!("{n} {name}: {rates:?} per second (wall, CPU)");
                }
            }
            continue;
        }
        // Median rates by the wall clock and per CPU second.
        let wall: Vec<Vec<f64>> = runs
            .iter()
            .map(|r| r.iter().map(|t| f64::from(n) / t.wall).collect())
            .collect();
        let rate: Vec<f64> = wall.iter().map(|r| median(&mut r.clone())).collect();
        let cpu: Vec<f64> = runs
            .iter()
            .map(|r| median(&mut r.iter().map(|t| f64::from(n) / t.cpu).collect::<Vec<_>>()))
            .collect();
        let of = |c: Case| CASES.iter().position(|&(k, _)| k == c).unwrap();
        let (bpftool, floor) = (rate[of(Case::Bpftool)], rate[of(Case::RawOneThread)]);
        let (bpftool_cpu, floor_cpu) = (cpu[of(Case::Bpftool)], cpu[of(Case::RawOneThread)]);
        println!(
            "\n{n} peers                        {:>10} {:>13} {:>9} {:>7} | {:>10} {:>9} {:>7}",
            "wall /s", "min..max k/s", "x bpftool", "x floor", "per CPU-s", "x bpftool", "x floor"
        );
        for (i, &(_, name)) in CASES.iter().enumerate() {
            let mut w = wall[i].clone();
            w.sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!(
                "  {name:<36} {:>10.0} {:>6.0}..{:<6.0} {:>9.1} {:>7.2} | {:>10.0} {:>9.1} {:>7.2}",
                rate[i],
                w[0] / 1e3,
                w[w.len() - 1] / 1e3,
                rate[i] / bpftool,
                rate[i] / floor,
                cpu[i],
                cpu[i] / bpftool_cpu,
                cpu[i] / floor_cpu
            );
        }
        let (lw, two) = (of(Case::Lwtun), rate[of(Case::RawTwoThreads)]);
        println!(
            "  goal 1M/s and 12x bpftool: lwtun {:.2}M/s, {:.1}x bpftool; raw one-thread floor {:.2}M/s ({:.1}x bpftool)",
            rate[lw] / 1e6,
            rate[lw] / bpftool,
            floor / 1e6,
            floor / bpftool
        );
        // What lwtun's threads can reach on this machine: the kernel's own rate on as many CPUs.
        println!(
            "  lwtun / raw kernel batch on 2 threads: {:.2} ({:.2}M/s, {:.1}x bpftool)",
            rate[lw] / two,
            two / 1e6,
            two / bpftool
        );
        let mut t = tunnel(n);
        t.peers_mut()
            .insert_batch(&inp.sorted)
            .expect("batch insert");
        lookup_costs.push((n, lookup_ns(&t, n / 2)));
        settle(t, n);
    }
    if let Some((n, (measured, trie, memlock, user))) = memory {
        println!(
            "\nmemory per peer at {n}: kernel {measured:.0} B measured (slab + per-CPU growth from \
             before the load; {trie:.0} B of it while inserting: trie nodes), {memlock:.0} B by the \
             maps' memlock; user space {user:.0} B (the table's copy)"
        );
    }
    let one = {
        let mut t = Tunnel::load().expect("load tunnel");
        t.peers_mut().insert_batch(&peers(1)).expect("insert");
        lookup_ns(&t, 0)
    };
    let base = baseline_ns();
    println!(
        "\nlookup + header build per packet (encap_preview via BPF_PROG_TEST_RUN, pass-only tc program {base:.1} ns):"
    );
    println!("   1 peer: {one:.1} ns");
    for (n, ns) in lookup_costs {
        println!("   {n} peers: {ns:.1} ns");
    }
}
