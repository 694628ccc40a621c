//! Peer table inserts: lwtun's `PeerTable::insert_batch` (one `BPF_MAP_UPDATE_BATCH` per table)
//! vs `bpftool batch` (one `map update` command per peer), in one run, for 100k and 1M IPv4
//! peers, and the memory a peer costs at 1M (kernel: the LPM trie's and the counters' memlock as
//! bpftool reports it; user space: the process's resident-set growth for the table's copy).
//!
//! Run as root: `cargo bench --bench tunnel_peers` (`LWTUN_BENCH_PEERS=N` for one size N).

use std::io::Write;
use std::net::IpAddr;
use std::time::Instant;

use ipnetwork::IpNetwork;
use lwtun::peer::{Encap, EncapPeer};
use lwtun::tunnel::Tunnel;

fn prefix(i: u32) -> IpNetwork {
    IpNetwork::new(IpAddr::from((0x0a00_0000 | i).to_be_bytes()), 32).unwrap()
}

fn peers(n: u32) -> Vec<(IpNetwork, EncapPeer)> {
    let local: IpAddr = "192.0.2.1".parse().unwrap();
    (0..n)
        .map(|i| {
            let remote = IpAddr::from([192, 0, 2, (i % 250 + 2) as u8]);
            (
                prefix(i),
                EncapPeer::new(
                    remote,
                    local,
                    Encap::Gre {
                        key: Some(i),
                        checksum: false,
                    },
                ),
            )
        })
        .collect()
}

fn map_id(t: &Tunnel, name: &str) -> u32 {
    t.map_ids()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, id)| id)
        .expect("map present")
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

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
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

/// Inserts the same peers with `bpftool batch file` into a fresh tunnel's IPv4 table; seconds.
fn bpftool_insert(n: u32) -> f64 {
    let t = Tunnel::builder().capacity(n).load().expect("load tunnel");
    let id = map_id(&t, "peers_v4");
    let path = std::env::temp_dir().join(format!("lwtun-bench-peers-{}.batch", std::process::id()));
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        // The value bytes as the skeleton's generated type lays them out.
        let local = [192u8, 0, 2, 1];
        for i in 0..n {
            let mut v = lwtun::skel::lwt_encap::types::lwtun_peer::default();
            v.remote[..4].copy_from_slice(&[192, 0, 2, (i % 250 + 2) as u8]);
            v.local[..4].copy_from_slice(&local);
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
            };
            let mut k = [0u8; 8];
            k[..4].copy_from_slice(&32u32.to_ne_bytes());
            k[4..].copy_from_slice(&(0x0a00_0000u32 | i).to_be_bytes());
            writeln!(
                f,
                "map update id {id} key hex {} value hex {}",
                hex(&k),
                hex(vb)
            )
            .unwrap();
        }
    }
    let start = Instant::now();
    let out = std::process::Command::new("bpftool")
        .args(["batch", "file"])
        .arg(&path)
        .output()
        .expect("run bpftool");
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "bpftool batch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    secs
}

/// The kernel's share alone: one BPF_MAP_UPDATE_BATCH of prepared bytes into a fresh table.
fn raw_insert(n: u32) -> f64 {
    use libbpf_rs::MapCore;
    let t = Tunnel::builder().capacity(n).load().expect("load tunnel");
    let map = libbpf_rs::MapHandle::from_map_id(map_id(&t, "peers_v4")).unwrap();
    let mut keys = Vec::with_capacity(n as usize * 8);
    let values = vec![0u8; n as usize * 48];
    for i in 0..n {
        keys.extend_from_slice(&32u32.to_ne_bytes());
        keys.extend_from_slice(&(0x0a00_0000u32 | i).to_be_bytes());
    }
    let start = Instant::now();
    map.update_batch(
        &keys,
        &values,
        n,
        libbpf_rs::MapFlags::ANY,
        libbpf_rs::MapFlags::ANY,
    )
    .unwrap();
    start.elapsed().as_secs_f64()
}

/// An Ethernet frame carrying an IPv4 packet to peer `i`'s address.
fn frame_to(i: u32) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 30, 0, 1]);
    f.extend_from_slice(&(0x0a00_0000u32 | i).to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x56, 0x78, 0, 8, 0, 0]);
    f
}

const REPEAT: u32 = 200_000;

/// Mean ns per run of encap_preview (the encap's lookup and header code) on a frame to peer `i`.
fn lookup_ns(t: &Tunnel, i: u32) -> f64 {
    let run = lwtun::decap::test_run(t.preview_program(), &frame_to(i), REPEAT).expect("test_run");
    assert_eq!(run.retval, 0, "the frame matches a peer");
    run.duration.as_nanos() as f64
}

/// Mean ns per run of the decap family's pass-only tc program: the test_run floor.
fn baseline_ns() -> f64 {
    let d = lwtun::decap::Decap::load().expect("load decap");
    let run = lwtun::decap::test_run(d.baseline_program(), &frame_to(0), REPEAT).expect("test_run");
    run.duration.as_nanos() as f64
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("tunnel_peers bench: SKIPPED, needs root (BPF maps)");
        return;
    }
    let sizes: Vec<u32> = match std::env::var("LWTUN_BENCH_PEERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => vec![n],
        None => vec![100_000, 1_000_000],
    };
    println!(
        "{:>9} {:>14} {:>14} {:>8} {:>16} {:>16} {:>14}",
        "peers", "lwtun/s", "bpftool/s", "ratio", "kernel B/peer", "user B/peer", "raw batch/s"
    );
    let mut lookup_costs = Vec::new();
    for n in sizes {
        let batch = peers(n);
        let rss0 = rss_kib();
        let mut t = Tunnel::builder().capacity(n).load().expect("load tunnel");
        let start = Instant::now();
        t.peers_mut().insert_batch(&batch).expect("batch insert");
        let lw = start.elapsed().as_secs_f64();
        let rss1 = rss_kib();
        assert_eq!(t.peers().len(), n as usize);
        let kernel = memlock(map_id(&t, "peers_v4")) + memlock(map_id(&t, "peer_stats")) / 2;
        lookup_costs.push((n, lookup_ns(&t, n / 2)));
        let user = (rss1.saturating_sub(rss0)) * 1024;
        drop(t);
        let bt = bpftool_insert(n);
        let raw = raw_insert(n);
        println!(
            "{:>9} {:>14.0} {:>14.0} {:>8.1} {:>16.1} {:>16.1} {:>14.0}",
            n,
            n as f64 / lw,
            n as f64 / bt,
            bt / lw,
            kernel as f64 / n as f64,
            user as f64 / n as f64,
            n as f64 / raw
        );
    }
    println!("(kernel B/peer: LPM trie memlock plus the peer's share of the per-CPU counters)");
    let one = {
        let mut t = Tunnel::load().expect("load tunnel");
        t.peers_mut().insert_batch(&peers(1)).expect("insert");
        lookup_ns(&t, 0)
    };
    let base = baseline_ns();
    println!(
        "lookup + header build per packet (encap_preview via BPF_PROG_TEST_RUN, pass-only tc program {base:.1} ns):"
    );
    println!("   1 peer: {one:.1} ns");
    for (n, ns) in lookup_costs {
        println!("   {n} peers: {ns:.1} ns");
    }
}
