//! Cost per packet of lwtun's chain machinery, by BPF_PROG_TEST_RUN on one tc frame (ICMP echo,
//! 98 bytes), as ratios against a real peer measured in the same run: lwtun's TcCounter, a single
//! program that counts and returns (what a hook costs without any chain).
//!
//! - capture hook detached (the chain's exit: one failed tail call) and attached (ring buffer
//!   copy of the whole frame, drained between batches so no record is lost);
//! - dispatching to 1, 4 and 8 programs: ProgChain with counting stages, and the Dispatcher
//!   (tail calls, a continue mask per slot) with its root alone and with counting members.
//!
//! Run as root: `cargo bench --bench chain`.

use std::os::fd::{AsRawFd, BorrowedFd};

use lwtun::capture::{Capture, CaptureOptions};
use lwtun::chain::{ChainHook, CountingStage, Dispatcher, ProgChain};
use lwtun::skel::dispatch_member::OBJECT as MEMBER;
use lwtun::tc::TcCounter;

const BATCH: u32 = 2_000; // fits the capture ring (4 MiB, 1.6 KB records)
const BATCHES: u32 = 25;
const ROUNDS: usize = 5;

fn frame() -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    f.extend_from_slice(&[
        0x45, 0, 0, 84, 0, 1, 0x40, 0, 64, 1, 0, 0, 10, 77, 0, 1, 10, 77, 0, 2,
    ]);
    f.extend_from_slice(&[8, 0, 0, 0, 0, 7, 0, 1]);
    f.resize(98, 0x5a);
    f
}

/// Mean ns per run over `repeat` runs.
fn run(prog: BorrowedFd<'_>, data: &[u8], repeat: u32) -> f64 {
    let mut out = vec![0u8; data.len() + 256];
    // SAFETY: zeroed is a valid bpf_test_run_opts; sz is set.
    let mut opts: libbpf_sys::bpf_test_run_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _;
    opts.data_in = data.as_ptr().cast();
    opts.data_size_in = data.len() as u32;
    opts.data_out = out.as_mut_ptr().cast();
    opts.data_size_out = out.len() as u32;
    opts.repeat = repeat as i32;
    // SAFETY: the buffers outlive the call and their sizes are given.
    let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    opts.duration as f64
}

/// Median over rounds of the mean ns per packet; `between` runs after every batch.
fn measure(prog: BorrowedFd<'_>, mut between: impl FnMut()) -> f64 {
    let data = frame();
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let mut total = 0.0;
            for _ in 0..BATCHES {
                total += run(prog, &data, BATCH);
                between();
            }
            total / f64::from(BATCHES)
        })
        .collect();
    rounds.sort_by(|a, b| a.partial_cmp(b).unwrap());
    rounds[ROUNDS / 2]
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("chain bench: SKIPPED, needs root (BPF)");
        return;
    }
    let mut rows: Vec<(String, f64)> = Vec::new();
    let peer = TcCounter::load().unwrap();
    let peer_ns = measure(peer.program(), || {});
    rows.push(("peer: TcCounter alone".into(), peer_ns));

    // Capture hook, detached and attached.
    let mut chain = ProgChain::new(ChainHook::Tc).unwrap();
    rows.push((
        "chain, 0 stages, capture detached".into(),
        measure(chain.entry(), || {}),
    ));
    let mut capture = Capture::attach(&mut chain, CaptureOptions::default()).unwrap();
    let mut captured = 0usize;
    let attached = measure(chain.entry(), || captured += capture.drain().unwrap().len());
    assert_eq!(capture.lost().unwrap(), 0, "the ring kept up");
    rows.push((
        format!("chain, 0 stages, capture attached ({captured} rec)"),
        attached,
    ));
    capture.detach(&mut chain).unwrap();
    drop(capture);

    // Tail-call chains of 1, 4 and 8 counting stages.
    let stages = CountingStage::load(&chain).unwrap();
    let mut n = 0;
    for want in [1, 4, 8] {
        while n < want {
            chain.push(stages.program()).unwrap();
            n += 1;
        }
        rows.push((
            format!("ProgChain, {want} stages (tail calls)"),
            measure(chain.entry(), || {}),
        ));
    }

    // The tail-call Dispatcher: its root alone, then 1, 4, 8 dispatch-aware counting members
    // (each its own loaded instance; TC_ACT_UNSPEC goes on).
    let mut d = Dispatcher::new(ChainHook::Tc).unwrap();
    rows.push(("Dispatcher, no member".into(), measure(d.entry(), || {})));
    let mut slot = 0;
    for want in [1, 4, 8] {
        while slot < want {
            d.attach(slot, MEMBER, "member_tc", &[-1]).unwrap();
            slot += 1;
        }
        rows.push((
            format!("Dispatcher, {want} members (tail calls)"),
            measure(d.entry(), || {}),
        ));
    }

    println!();
    println!("chain machinery, BPF_PROG_TEST_RUN of a 98-byte tc frame, median of {ROUNDS} x {BATCHES} x {BATCH} runs");
    println!("{:<46} {:>8} {:>8}", "program", "ns/pkt", "x peer");
    for (name, ns) in &rows {
        println!("{name:<46} {ns:>8.1} {:>8.2}", ns / peer_ns);
    }
}
