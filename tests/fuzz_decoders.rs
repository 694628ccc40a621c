//! Mutation fuzzing of every decoder that reads bytes from outside the process: netlink link,
//! address, route, neighbour and tc filter messages, capture ring-buffer records, the typed
//! packet decoder, the text views and the pcap/pcapng writers.
//!
//! Each decoder starts from golden inputs (the recorded kernel answers in `tests/data`, and
//! messages lwtun's own encoders produce) and runs on mutated copies: bit flips, byte
//! overwrites with interesting values, truncation, extension, duplicated and spliced ranges,
//! and length fields set to odd values. For every input the harness checks that the decoder
//!
//! - does not panic (`catch_unwind`),
//! - returns within a second (no hang), and
//! - never holds more than 64 MiB at once (a counting global allocator: no unbounded
//!   allocation from a length field).
//!
//! It is a test with its own `main` (`harness = false`), so `cargo test` runs a short pass
//! (`LWTUN_FUZZ_ITERATIONS`, default 20 000 inputs per decoder); the long run is
//! `LWTUN_FUZZ_ITERATIONS=1500000 cargo test --release --test fuzz_decoders` (9 decoders: over
//! 13 million inputs). The seed of the pseudo-random mutations is printed, and
//! `LWTUN_FUZZ_SEED` repeats a run.

mod common;

use common::hex;
use std::alloc::{GlobalAlloc, Layout, System};
use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use lwtun::capture::{CaptureFormat, CaptureWriter, LinkType, Packet};
use lwtun::chain::ChainHook;
use lwtun::netlink::nexthop::{Nexthop, NexthopOp};
use lwtun::netlink::route::{BatchOp, BpfEncap, Encap, ProgRef, Route};

/// The heap this process holds now, and the most it held since the last reset.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on to System.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = HELD.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const MAX_HELD: usize = 64 << 20;
const MAX_TIME: Duration = Duration::from_secs(1);

/// xorshift64*: enough randomness for mutations, and repeatable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: [u8; 10] = [0, 1, 2, 3, 4, 0x7f, 0x80, 0xfe, 0xff, 0x10];

/// One mutation of `input`, of a kind picked at random (a few stacked now and then).
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seeds[rng.below(seeds.len())].clone();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = v.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => v.truncate(rng.below(len + 1)),
            3 => {
                let n = rng.below(64);
                for _ in 0..n {
                    v.push(rng.next() as u8);
                }
            }
            4 if len > 1 => {
                // A 16-bit length field (netlink attributes, message length) set to something odd.
                let i = rng.below(len - 1);
                let value: u16 = match rng.below(5) {
                    0 => 0,
                    1 => 3,
                    2 => 4,
                    3 => 0xffff,
                    _ => rng.next() as u16,
                };
                v[i..i + 2].copy_from_slice(&value.to_ne_bytes());
            }
            5 if len > 3 => {
                let i = rng.below(len - 3);
                let value: u32 = match rng.below(4) {
                    0 => 0,
                    1 => u32::MAX,
                    2 => 0x8000_0000,
                    _ => rng.next() as u32,
                };
                v[i..i + 4].copy_from_slice(&value.to_ne_bytes());
            }
            6 if len > 0 => {
                // Duplicate a range.
                let a = rng.below(len);
                let b = (a + rng.below(len - a + 1)).min(len);
                let chunk = v[a..b].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, chunk);
            }
            7 if len > 0 => {
                // Delete a range.
                let a = rng.below(len);
                let b = (a + rng.below(16)).min(len);
                v.drain(a..b);
            }
            _ => {
                // Splice in the tail of another seed.
                let other = &seeds[rng.below(seeds.len())];
                let at = rng.below(v.len() + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(at);
                v.extend_from_slice(&other[from..]);
            }
        }
    }
    v
}

/// A decoder under test: a name, its seeds and the call.
struct Target {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    run: fn(&[u8]),
}

fn route_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (dst, gw) in [("10.20.0.0/16", "10.77.0.2"), ("fd20::/16", "fd77::2")] {
        let mut r = Route::new(dst.parse().unwrap());
        r.oif = Some(3);
        r.gateway = Some(gw.parse::<IpAddr>().unwrap());
        r.table = 1000;
        r.metric = Some(7);
        r.protocol = 76;
        r.encap = Some(Encap::Bpf(BpfEncap {
            input: Some(ProgRef {
                name: "lwtun:encap_in:41".into(),
                fd: Some(5),
            }),
            xmit: Some(ProgRef {
                name: "lwtun:encap_xmit:42".into(),
                fd: Some(6),
            }),
            headroom: Some(24),
            ..Default::default()
        }));
        for op in [BatchOp::Add, BatchOp::Replace] {
            out.push(r.to_request(op, 9).unwrap()[16..].to_vec());
        }
        let mut plain = Route::new(dst.parse().unwrap());
        plain.oif = Some(2);
        out.push(plain.to_request(BatchOp::Add, 1).unwrap()[16..].to_vec());
        let mut over = Route::new(dst.parse().unwrap());
        over.nhid = Some(7);
        out.push(over.to_request(BatchOp::Add, 1).unwrap()[16..].to_vec());
    }
    out
}

/// `RTM_NEWNEIGH` bodies as `ip neigh add 10.0.0.2 lladdr 02:00:00:00:00:02 dev#3 nud
/// permanent` and its IPv6 twin announce them: `struct ndmsg`, `NDA_DST`, `NDA_LLADDR`.
fn neighbour_seeds() -> Vec<Vec<u8>> {
    let body = |family: u8, ip: &[u8]| {
        let mut b = vec![family, 0, 0, 0];
        b.extend_from_slice(&3i32.to_ne_bytes());
        b.extend_from_slice(&0x80u16.to_ne_bytes());
        b.extend_from_slice(&[0, 1]);
        for (ty, v) in [(1u16, ip), (2u16, &[2, 0, 0, 0, 0, 2][..])] {
            b.extend_from_slice(&(4 + v.len() as u16).to_ne_bytes());
            b.extend_from_slice(&ty.to_ne_bytes());
            b.extend_from_slice(v);
            b.resize(b.len().div_ceil(4) * 4, 0);
        }
        b
    };
    vec![
        body(libc::AF_INET as u8, &[10, 0, 0, 2]),
        body(
            libc::AF_INET6 as u8,
            &[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        ),
    ]
}

fn nexthop_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for gw in ["10.77.0.2", "fd77::2"] {
        let gw: IpAddr = gw.parse().unwrap();
        let mut nh = Nexthop::new(7);
        nh.oif = Some(3);
        nh.ipv6 = gw.is_ipv6();
        nh.gateway = Some(gw);
        nh.protocol = 76;
        nh.encap = Some(Encap::Bpf(BpfEncap {
            output: Some(ProgRef {
                name: "lwtun:count_out:41".into(),
                fd: Some(5),
            }),
            xmit: Some(ProgRef {
                name: "lwtun:count_xmit:42".into(),
                fd: Some(6),
            }),
            headroom: Some(24),
            ..Default::default()
        }));
        out.push(nh.to_request(NexthopOp::Replace, 9).unwrap()[16..].to_vec());
    }
    out
}

/// A capture record as the capture program writes it (`struct lwtun_capture_meta` + bytes).
fn record(hook: u32, data: &[u8], len: u32) -> Vec<u8> {
    let mut rec = vec![0u8; 32];
    rec[0..8].copy_from_slice(&123_456_789u64.to_ne_bytes());
    rec[8..12].copy_from_slice(&3u32.to_ne_bytes());
    rec[12..16].copy_from_slice(&len.to_ne_bytes());
    rec[16..20].copy_from_slice(&(data.len() as u32).to_ne_bytes());
    rec[20..24].copy_from_slice(&hook.to_ne_bytes());
    rec[28..30].copy_from_slice(&0x0800u16.to_be_bytes());
    rec.extend_from_slice(data);
    rec
}

fn ipv4_icmp() -> Vec<u8> {
    let mut ip = vec![
        0x45, 0, 0, 32, 0, 1, 0x40, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    ip.extend_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0, 7, 1, 2, 3, 4]);
    ip
}

fn ipv6_udp() -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0, 0, 12, 17, 64];
    ip.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    ip.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    ip.extend_from_slice(&[0x13, 0x88, 0, 9, 0, 12, 0, 0, 0xaa, 0xbb, 0xcc, 0xdd]);
    ip
}

fn gre_in_ethernet() -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    let inner = ipv4_icmp();
    let mut outer = vec![
        0x45,
        0,
        0,
        (20 + 4 + inner.len()) as u8,
        0,
        2,
        0x40,
        0,
        64,
        47,
        0,
        0,
        192,
        0,
        2,
        1,
        192,
        0,
        2,
        2,
    ];
    outer.extend_from_slice(&[0, 0, 0x08, 0x00]);
    outer.extend_from_slice(&inner);
    f.extend_from_slice(&outer);
    f
}

fn packet_seeds() -> Vec<Vec<u8>> {
    // The first byte picks the hook, the rest is the packet.
    let mut out = Vec::new();
    for (hook, data) in [
        (4u8, ipv4_icmp()),
        (4, ipv6_udp()),
        (1, gre_in_ethernet()),
        (0, gre_in_ethernet()),
    ] {
        let mut v = vec![hook];
        v.extend_from_slice(&data);
        out.push(v);
    }
    out
}

fn packet_of(input: &[u8]) -> Option<Packet> {
    let (&hook, data) = input.split_first()?;
    let hook = ChainHook::from_code(u32::from(hook % 5))?;
    Some(Packet {
        time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        hook,
        ifindex: 3,
        verdict: 0,
        len: data.len() as u32 + u32::from(hook == ChainHook::Xdp),
        protocol: 0x0800,
        data: data.to_vec(),
    })
}

fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "netlink link (RTM_NEWLINK)",
            seeds: vec![
                hex(include_str!("data/golden_link_veth_newlink.hex")),
                hex(include_str!("data/golden_link_vxlan_newlink.hex")),
                lwtun::netlink::link::wire::veth("v0", "v1", Some(7)).unwrap(),
            ],
            run: |b| {
                let _ = lwtun::netlink::link::wire::decode_link_message(b);
            },
        },
        Target {
            name: "netlink address (RTM_NEWADDR)",
            seeds: vec![
                lwtun::netlink::addr::wire::add(
                    2,
                    "10.77.0.1/24".parse().unwrap(),
                    &Default::default(),
                )
                .unwrap(),
                lwtun::netlink::addr::wire::add(
                    2,
                    "fd77::1/64".parse().unwrap(),
                    &lwtun::netlink::addr::AddressOptions::nodad(),
                )
                .unwrap(),
            ],
            run: |b| {
                let _ = lwtun::netlink::addr::wire::decode_address_message(b);
            },
        },
        Target {
            name: "netlink route (RTM_NEWROUTE, LWT BPF encap)",
            seeds: route_seeds(),
            run: |b| {
                let _ = Route::decode(b);
            },
        },
        Target {
            name: "netlink nexthop (RTM_NEWNEXTHOP, LWT BPF encap)",
            seeds: nexthop_seeds(),
            run: |b| {
                let _ = Nexthop::decode(b);
            },
        },
        Target {
            name: "netlink neighbour (RTM_NEWNEIGH)",
            seeds: neighbour_seeds(),
            run: |b| {
                let _ = lwtun::netlink::neigh::Neighbour::decode(b);
            },
        },
        Target {
            name: "netlink tc filter (RTM_NEWTFILTER)",
            seeds: vec![
                lwtun::netlink::tc::wire::bpf_filter(2, 0xffff_fff2, 5, 1, 9, "lwtun:count_tc"),
                lwtun::netlink::tc::wire::bpf_filter(3, 0xffff_fff3, 1, 7, 4, "x"),
            ],
            run: |b| {
                let _ = lwtun::netlink::tc::wire::decode_filter_message(b);
            },
        },
        Target {
            name: "capture ring-buffer record",
            seeds: vec![
                record(4, &ipv4_icmp(), 32),
                record(0, &gre_in_ethernet(), 70),
                record(1, &[], 0),
            ],
            run: |b| {
                if let Ok(p) = lwtun::capture::wire::decode_record(b) {
                    let _ = (p.summary(), p.headers().is_ok());
                }
            },
        },
        Target {
            name: "captured packet decode (typed headers, summary, dump)",
            seeds: packet_seeds(),
            run: |b| {
                if let Some(p) = packet_of(b) {
                    let _ = p.headers().map(|h| h.transport.is_some());
                    let _ = (p.ip_addrs(), p.echo(), p.summary(), p.dump());
                }
            },
        },
        Target {
            name: "pcap / pcapng writer input",
            seeds: packet_seeds(),
            run: |b| {
                if let Some(p) = packet_of(b) {
                    for format in [CaptureFormat::Pcap, CaptureFormat::PcapNg] {
                        let link = p.link_type();
                        if let Ok(mut w) = CaptureWriter::new(Vec::new(), format, link, 1536) {
                            let _ = w.write(&p);
                        }
                        // A packet of the other link type must be refused, not written.
                        let other = match link {
                            LinkType::Raw => LinkType::Ethernet,
                            LinkType::Ethernet => LinkType::Raw,
                        };
                        if let Ok(mut w) = CaptureWriter::new(Vec::new(), format, other, 64) {
                            assert!(w.write(&p).is_err(), "wrong link type accepted");
                        }
                    }
                }
            },
        },
    ]
}

fn main() {
    let iterations: u64 = std::env::var("LWTUN_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("LWTUN_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    println!("fuzz_decoders: {iterations} inputs per decoder, LWTUN_FUZZ_SEED={seed}");
    // Panics are caught and reported here; the default hook would print each one.
    std::panic::set_hook(Box::new(|_| {}));
    let mut passed = 0;
    let mut failed = 0;
    for target in targets() {
        let mut rng = Rng(seed);
        let start = Instant::now();
        let mut slowest = Duration::ZERO;
        let mut problem = None;
        // The seeds themselves first, then their mutations.
        let mut inputs = target.seeds.clone().into_iter();
        for i in 0..iterations + target.seeds.len() as u64 {
            let input = inputs
                .next()
                .unwrap_or_else(|| mutate(&mut rng, &target.seeds));
            let base = HELD.load(Ordering::Relaxed);
            PEAK.store(base, Ordering::Relaxed);
            let t0 = Instant::now();
            let outcome = catch_unwind(AssertUnwindSafe(|| (target.run)(&input)));
            let took = t0.elapsed();
            slowest = slowest.max(took);
            let held = PEAK.load(Ordering::Relaxed).saturating_sub(base);
            let why = match outcome {
                Err(_) => Some("panicked"),
                Ok(()) if took > MAX_TIME => Some("took over a second"),
                Ok(()) if held > MAX_HELD => Some("held over 64 MiB"),
                Ok(()) => None,
            };
            if let Some(why) = why {
                problem = Some(format!("input {i} {why}: {input:02x?}"));
                break;
            }
        }
        let rate = iterations as f64 / start.elapsed().as_secs_f64();
        match problem {
            None => {
                passed += 1;
                println!(
                    "test {} ... ok ({rate:.0} inputs/s, slowest {:?})",
                    target.name, slowest
                );
            }
            Some(p) => {
                failed += 1;
                println!("test {} ... FAILED: {p}", target.name);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
