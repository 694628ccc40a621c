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

/// One measured case: a program, and what runs after each of its batches.
struct Case<'a> {
    name: String,
    prog: BorrowedFd<'a>,
    between: Box<dyn FnMut() + 'a>,
    rounds: Vec<f64>,
}

impl<'a> Case<'a> {
    fn new(name: impl Into<String>, prog: BorrowedFd<'a>) -> Self {
        Case::with(name, prog, || {})
    }

    fn with(name: impl Into<String>, prog: BorrowedFd<'a>, between: impl FnMut() + 'a) -> Self {
        Case {
            name: name.into(),
            prog,
            between: Box::new(between),
            rounds: Vec::new(),
        }
    }

    /// One round: the mean ns per packet over BATCHES batches.
    fn round(&mut self, data: &[u8]) {
        let mut total = 0.0;
        for _ in 0..BATCHES {
            total += run(self.prog, data, BATCH);
            (self.between)();
        }
        self.rounds.push(total / f64::from(BATCHES));
    }

    fn median(&self) -> f64 {
        let mut r = self.rounds.clone();
        r.sort_by(|a, b| a.partial_cmp(b).unwrap());
        r[r.len() / 2]
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("chain bench: SKIPPED, needs root (BPF)");
        return;
    }
    let peer = TcCounter::load().unwrap();

    // Capture hook, detached and attached (each on its own empty chain).
    let detached = ProgChain::new(ChainHook::Tc).unwrap();
    let mut attached = ProgChain::new(ChainHook::Tc).unwrap();
    let capture =
        std::cell::RefCell::new(Capture::attach(&mut attached, CaptureOptions::default()).unwrap());
    let captured = std::cell::Cell::new(0usize);

    // Tail-call chains of 1, 4 and 8 counting stages.
    let chains: Vec<(usize, ProgChain, CountingStage)> = [1, 4, 8]
        .into_iter()
        .map(|n| {
            let mut chain = ProgChain::new(ChainHook::Tc).unwrap();
            let stages = CountingStage::load(&chain).unwrap();
            for _ in 0..n {
                chain.push(stages.program()).unwrap();
            }
            (n, chain, stages)
        })
        .collect();

    // Dispatchers: no member, then 1, 4, 8 dispatch-aware counting members (TC_ACT_UNSPEC goes
    // on), and 2 members in slots 0 and 7 (six empty slots skipped).
    let dispatcher = |slots: &[u32]| {
        let mut d = Dispatcher::new(ChainHook::Tc).unwrap();
        for &slot in slots {
            d.attach(slot, MEMBER, "member_tc", &[-1]).unwrap();
        }
        d
    };
    let dispatchers: Vec<(String, Dispatcher)> = [
        ("Dispatcher, no member", vec![]),
        ("Dispatcher, 1 member", vec![0]),
        ("Dispatcher, 4 members", vec![0, 1, 2, 3]),
        ("Dispatcher, 8 members", (0..8).collect()),
        ("Dispatcher, 2 members in slots 0, 7", vec![0, 7]),
    ]
    .into_iter()
    .map(|(name, slots)| (name.to_string(), dispatcher(&slots)))
    .collect();

    let mut cases = vec![
        Case::new("peer: TcCounter alone", peer.program()),
        Case::new("chain, 0 stages, capture detached", detached.entry()),
        Case::with(
            "chain, 0 stages, capture attached",
            attached.entry(),
            || captured.set(captured.get() + capture.borrow_mut().drain().unwrap().len()),
        ),
    ];
    for (n, chain, _) in &chains {
        cases.push(Case::new(format!("ProgChain, {n} stages"), chain.entry()));
    }
    for (name, d) in &dispatchers {
        cases.push(Case::new(name.clone(), d.entry()));
    }

    // Rounds interleave the cases, so a burst of load from elsewhere hits them all alike.
    let data = frame();
    for _ in 0..ROUNDS {
        for case in cases.iter_mut() {
            case.round(&data);
        }
    }
    assert_eq!(capture.borrow().lost().unwrap(), 0, "the ring kept up");

    let peer_ns = cases[0].median();
    println!();
    println!(
        "chain machinery, BPF_PROG_TEST_RUN of a 98-byte tc frame, median of {ROUNDS} rounds \
         (interleaved) of {BATCHES} x {BATCH} runs"
    );
    println!("{:<46} {:>8} {:>8}", "program", "ns/pkt", "x peer");
    for case in &cases {
        let ns = case.median();
        println!("{:<46} {ns:>8.1} {:>8.2}", case.name, ns / peer_ns);
    }
    println!("({} packets captured)", captured.get());
}
