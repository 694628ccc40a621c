//! The batch engine of [`PeerTable`](super::PeerTable): many peers written, replaced or
//! removed with `BPF_MAP_*_BATCH` calls, sorted and split over helper threads.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use libbpf_rs::MapHandle;

use crate::abi;
use crate::error::{Error, Result};
use crate::skel::lwt_encap::types::{lwtun_peer, lwtun_peer_key6, lwtun_peer_stats};

use std::collections::BTreeMap;

use super::EncapPeer;

/// Peers per `BPF_MAP_UPDATE_BATCH` / `BPF_MAP_DELETE_BATCH` call. The kernel's cost per peer
/// stops falling at about a thousand per call (benches/tunnel_peers.rs); 4096 IPv4 keys and
/// values (224 KiB) stay in the CPU cache between their encoding and the kernel's copy.
pub(super) const BATCH_CHUNK: usize = 4096;

/// The smallest range of a batch worth a thread of its own.
pub(super) const MIN_PER_WORKER: usize = 16_384;

pub(super) fn default_batch_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Runs `f` on a thread of its own in `scope`, or gives `None` when no thread can be had (the
/// caller then does the work itself).
pub(super) fn spawn_helper<'scope, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    f: impl FnOnce() -> T + Send + 'scope,
) -> Option<std::thread::ScopedJoinHandle<'scope, T>> {
    std::thread::Builder::new()
        .name("lwtun-peers".into())
        .spawn_scoped(scope, f)
        .ok()
}

/// What a thread of [`spawn_helper`] returned; its panic, if it panicked, goes on here.
pub(super) fn join_helper<T>(thread: std::thread::ScopedJoinHandle<'_, T>) -> T {
    thread
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// One of the two LPM tables: its key as one integer that orders prefixes as [`IpNetwork`]
/// does (address, then length), and the `struct lwtun_peer_key4`/`key6` bytes of that key.
pub(super) trait Family {
    type Key: Ord + Copy + Send + Sync;
    const V6: bool;
    fn put(out: &mut Vec<u8>, key: Self::Key);
    fn prefix(key: Self::Key) -> IpNetwork;
}

/// The IPv4 table.
pub(super) struct V4;
/// The IPv6 table.
pub(super) struct V6;

impl V4 {
    fn key(n: &Ipv4Network) -> u64 {
        (u64::from(u32::from(n.network())) << 8) | u64::from(n.prefix())
    }
}

impl Family for V4 {
    type Key = u64;
    const V6: bool = false;
    fn put(out: &mut Vec<u8>, key: u64) {
        out.extend_from_slice(&((key & 0xff) as u32).to_ne_bytes());
        out.extend_from_slice(&((key >> 8) as u32).to_be_bytes());
    }
    fn prefix(key: u64) -> IpNetwork {
        let addr = Ipv4Addr::from((key >> 8) as u32);
        Ipv4Network::new(addr, (key & 0xff) as u8)
            .map_or_else(|_| IpNetwork::from(IpAddr::V4(addr)), IpNetwork::V4)
    }
}

impl V6 {
    /// The address as two halves (a 24-byte key where `(u128, u8)` would take 32).
    fn key(n: &Ipv6Network) -> (u64, u64, u8) {
        let a = u128::from(n.network());
        ((a >> 64) as u64, a as u64, n.prefix())
    }
}

impl Family for V6 {
    type Key = (u64, u64, u8);
    const V6: bool = true;
    fn put(out: &mut Vec<u8>, (hi, lo, len): (u64, u64, u8)) {
        out.extend_from_slice(&u32::from(len).to_ne_bytes());
        out.extend_from_slice(&hi.to_be_bytes());
        out.extend_from_slice(&lo.to_be_bytes());
    }
    fn prefix((hi, lo, len): (u64, u64, u8)) -> IpNetwork {
        let addr = Ipv6Addr::from((u128::from(hi) << 64) | u128::from(lo));
        Ipv6Network::new(addr, len)
            .map_or_else(|_| IpNetwork::from(IpAddr::V6(addr)), IpNetwork::V6)
    }
}

/// The IPv4 and the IPv6 keys of a batch, each with the entry's index in the caller's input.
pub(super) type Keys = (Vec<(u64, u32)>, Vec<((u64, u64, u8), u32)>);

/// The keys of the `n` prefixes `prefix` gives (it may refuse one), each table's sorted.
/// A large batch is done in two halves on two threads, merged after; the error is the first
/// refused entry's, as one pass would find.
pub(super) fn sorted_keys(
    n: usize,
    workers: usize,
    prefix: &(dyn Fn(usize) -> Result<IpNetwork> + Sync),
) -> Result<Keys> {
    let part = |range: std::ops::Range<usize>| -> Result<Keys> {
        // Room for all in the IPv4 table (pages not written to cost nothing).
        let (mut v4, mut v6) = (Vec::with_capacity(range.len()), Vec::new());
        for i in range {
            match prefix(i)? {
                IpNetwork::V4(p) => v4.push((V4::key(&p), i as u32)),
                IpNetwork::V6(p) => v6.push((V6::key(&p), i as u32)),
            }
        }
        v4.sort_unstable_by_key(|&(k, _)| k);
        v6.sort_unstable_by_key(|&(k, _)| k);
        Ok((v4, v6))
    };
    if workers < 2 || n < 2 * MIN_PER_WORKER {
        return part(0..n);
    }
    let (first, second) = std::thread::scope(|scope| {
        let other = spawn_helper(scope, || part(n / 2..n));
        let first = part(0..n / 2);
        let second = match other {
            Some(t) => join_helper(t),
            None => part(n / 2..n),
        };
        (first, second)
    });
    let ((a4, a6), (b4, b6)) = (first?, second?);
    Ok((merge(a4, b4), merge(a6, b6)))
}

/// Two sorted key lists as one.
pub(super) fn merge<K: Ord + Copy>(mut a: Vec<(K, u32)>, b: Vec<(K, u32)>) -> Vec<(K, u32)> {
    match (a.last(), b.first()) {
        (Some(&(last, _)), Some(&(first, _))) if last >= first => {}
        // Input in order, or one side empty: one after the other.
        _ => {
            a.extend(b);
            return a;
        }
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while let (Some(&x), Some(&y)) = (a.get(i), b.get(j)) {
        if x.0 <= y.0 {
            out.push(x);
            i += 1;
        } else {
            out.push(y);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// The value of a batch entry: from its position in the sorted batch and its index in the
/// caller's input.
pub(super) type ValueFn<'a> = dyn Fn(usize, u32) -> lwtun_peer + Sync + 'a;

/// What a worker did with a contiguous part of the batch: the entries `start..start + done`
/// were applied, and `error` stopped it.
pub(super) struct Share {
    start: usize,
    done: usize,
    error: Option<io::Error>,
}

/// The chunks of one worker's range of a batch that nobody has taken yet: its owner takes them
/// from the front (in table order), a worker done with its own range takes them from the back.
pub(super) struct Range {
    start: usize,
    len: usize,
    /// The next chunk from the front (high half) and one past the next from the back (low
    /// half).
    left: AtomicU64,
}

impl Range {
    fn new(start: usize, len: usize) -> Self {
        Range {
            start,
            len,
            left: AtomicU64::new(len.div_ceil(BATCH_CHUNK) as u64),
        }
    }

    /// Takes the first (`front`) or the last chunk not yet taken, as its entries of the batch.
    fn take(&self, front: bool) -> Option<std::ops::Range<usize>> {
        let mut now = self.left.load(Ordering::Relaxed);
        loop {
            let (first, end) = (now >> 32, now & 0xffff_ffff);
            if first >= end {
                return None;
            }
            let (chunk, next) = if front {
                (first, ((first + 1) << 32) | end)
            } else {
                (end - 1, (first << 32) | (end - 1))
            };
            match self
                .left
                .compare_exchange_weak(now, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    let from = chunk as usize * BATCH_CHUNK;
                    let to = (from + BATCH_CHUNK).min(self.len);
                    return Some(self.start + from..self.start + to);
                }
                Err(seen) => now = seen,
            }
        }
    }
}

/// Applies a sorted batch to the table `fd`: writes each entry with the value `value` gives,
/// or deletes it when `value` is `None`. Contiguous ranges go to up to `workers` threads (the
/// calling one included); each writes its range in chunks of [`BATCH_CHUNK`] entries, one
/// syscall per chunk, then takes chunks from the back of ranges others have not finished (so
/// that all finish together, whatever else the CPUs run); all stop at the first error.
pub(super) fn run<F: Family>(
    fd: RawFd,
    batch: &[(F::Key, u32)],
    value: Option<&ValueFn<'_>>,
    workers: usize,
) -> Vec<Share> {
    let ways = workers.min(batch.len() / MIN_PER_WORKER).max(1);
    let stop = AtomicBool::new(false);
    if ways == 1 {
        return work::<F>(fd, batch, &[Range::new(0, batch.len())], 0, value, &stop);
    }
    let per = batch.len().div_ceil(ways);
    let ranges: Vec<Range> = (0..batch.len())
        .step_by(per)
        .map(|start| Range::new(start, per.min(batch.len() - start)))
        .collect();
    std::thread::scope(|scope| {
        let (stop, ranges) = (&stop, &ranges[..]);
        // A range whose thread cannot be had is taken over by the others.
        let threads: Vec<_> = (1..ranges.len())
            .filter_map(|me| {
                spawn_helper(scope, move || work::<F>(fd, batch, ranges, me, value, stop))
            })
            .collect();
        let mut shares = work::<F>(fd, batch, ranges, 0, value, stop);
        for t in threads {
            shares.extend(join_helper(t));
        }
        shares
    })
}

/// One worker of [`run`]: the chunks of range `me` from the front, then those of the others
/// from the back, until none is left or a worker fails. What it applied, as contiguous parts.
pub(super) fn work<F: Family>(
    fd: RawFd,
    batch: &[(F::Key, u32)],
    ranges: &[Range],
    me: usize,
    value: Option<&ValueFn<'_>>,
    stop: &AtomicBool,
) -> Vec<Share> {
    let entries = ranges.iter().map(|r| r.len).sum();
    let mut buffers = Buffers::new(entries, value.is_some());
    let mut shares: Vec<Share> = Vec::new();
    let n = ranges.len();
    let order = std::iter::once((me, true)).chain((1..n).map(|d| ((me + d) % n, false)));
    for (range, front) in order {
        while let Some(chunk) = ranges[range].take(front) {
            if stop.load(Ordering::Relaxed) {
                return shares;
            }
            let (start, len) = (chunk.start, chunk.len());
            let (done, error) = match buffers.apply::<F>(fd, &batch[chunk], start, value) {
                Ok(()) => (len, None),
                Err((applied, e)) => {
                    stop.store(true, Ordering::Relaxed);
                    (applied, Some(e))
                }
            };
            let failed = error.is_some();
            match shares.last_mut() {
                Some(last) if last.error.is_none() && last.start + last.done == start => {
                    last.done += done;
                    last.error = error;
                }
                _ => shares.push(Share { start, done, error }),
            }
            if failed {
                return shares;
            }
        }
    }
    shares
}

/// A worker's key and value buffers, reused from chunk to chunk.
pub(super) struct Buffers {
    keys: Vec<u8>,
    values: Vec<u8>,
}

impl Buffers {
    /// Buffers for chunks of up to `entries` entries, with `values` or keys only.
    fn new(entries: usize, values: bool) -> Self {
        let chunk = BATCH_CHUNK.min(entries);
        Buffers {
            keys: Vec::with_capacity(chunk * std::mem::size_of::<lwtun_peer_key6>()),
            values: Vec::with_capacity(if values {
                chunk * std::mem::size_of::<lwtun_peer>()
            } else {
                0
            }),
        }
    }

    /// Encodes `part` (at most [`BATCH_CHUNK`] entries, the first of them entry `first` of
    /// the batch) and applies it in one syscall; on error, how many entries the kernel applied
    /// and the error.
    fn apply<F: Family>(
        &mut self,
        fd: RawFd,
        part: &[(F::Key, u32)],
        first: usize,
        value: Option<&ValueFn<'_>>,
    ) -> std::result::Result<(), (usize, io::Error)> {
        self.keys.clear();
        self.values.clear();
        for (j, &(key, i)) in part.iter().enumerate() {
            F::put(&mut self.keys, key);
            if let Some(value) = value {
                self.values
                    .extend_from_slice(abi::as_bytes(&value(first + j, i)));
            }
        }
        batch_call(fd, &self.keys, value.map(|_| &self.values[..]), part.len())
    }
}

/// One `BPF_MAP_UPDATE_BATCH` (with `values`) or `BPF_MAP_DELETE_BATCH` of `count` keys. On
/// error, how many of them the kernel applied before it stopped, and the error.
pub(super) fn batch_call(
    fd: RawFd,
    keys: &[u8],
    values: Option<&[u8]>,
    count: usize,
) -> std::result::Result<(), (usize, io::Error)> {
    let opts = libbpf_sys::bpf_map_batch_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
        ..Default::default()
    };
    let mut n = count as u32;
    // SAFETY: `keys` (and `values`) hold `count` keys (values) of the map's sizes, as the
    // callers encode them; the kernel reads them and writes only `n`.
    let ret = unsafe {
        match values {
            Some(v) => libbpf_sys::bpf_map_update_batch(
                fd,
                keys.as_ptr().cast(),
                v.as_ptr().cast(),
                &mut n,
                &opts,
            ),
            None => libbpf_sys::bpf_map_delete_batch(fd, keys.as_ptr().cast(), &mut n, &opts),
        }
    };
    if ret == 0 {
        return Ok(());
    }
    let errno = ret.saturating_neg();
    if errno == crate::error::ENOTSUPP || errno == libc::EOPNOTSUPP {
        // A kernel without batch operations on this map type (LPM tries before 5.13, per-CPU
        // arrays on 5.10): the same writes one element at a time (Feature::LpmBatch).
        return one_by_one(fd, keys, values, count);
    }
    // The kernel reports how many elements it applied before the one it refused; an error
    // before its loop (bad flags, no memory for the copy) leaves `n` as it was: none applied.
    let applied = if (n as usize) < count { n as usize } else { 0 };
    Err((applied, io::Error::from_raw_os_error(errno)))
}

/// [`batch_call`] one `BPF_MAP_UPDATE_ELEM` / `BPF_MAP_DELETE_ELEM` at a time; on error, how
/// many were applied before it.
fn one_by_one(
    fd: RawFd,
    keys: &[u8],
    values: Option<&[u8]>,
    count: usize,
) -> std::result::Result<(), (usize, io::Error)> {
    if count == 0 {
        return Ok(());
    }
    let key_size = keys.len() / count;
    let value_size = values.map_or(0, |v| v.len() / count);
    for i in 0..count {
        let key = &keys[i * key_size..(i + 1) * key_size];
        // SAFETY: `key` (and the value slice) hold one element of the map's key (value) size,
        // as for the batch call; the kernel only reads them.
        let ret = unsafe {
            match values {
                Some(v) => libbpf_sys::bpf_map_update_elem(
                    fd,
                    key.as_ptr().cast(),
                    v[i * value_size..(i + 1) * value_size].as_ptr().cast(),
                    0,
                ),
                None => libbpf_sys::bpf_map_delete_elem(fd, key.as_ptr().cast()),
            }
        };
        if ret != 0 {
            return Err((i, io::Error::from_raw_os_error(ret.saturating_neg())));
        }
    }
    Ok(())
}

/// The error of the first share that failed, naming the entry the kernel refused.
pub(super) fn first_error<F: Family>(
    batch: &[(F::Key, u32)],
    shares: &mut [Share],
    op: &str,
) -> Option<Error> {
    let share = shares
        .iter_mut()
        .filter(|s| s.error.is_some())
        .min_by_key(|s| s.start)?;
    let e = share.error.take()?;
    let err = Error::bpf(op.to_string(), libbpf_rs::Error::from(e));
    Some(match batch.get(share.start + share.done) {
        Some(&(k, _)) => err.with_object(F::prefix(k).to_string()),
        None => err,
    })
}

/// Writes a sorted batch; when the kernel refuses an entry, deletes what was written and returns
/// the error.
pub(super) fn write_all<F: Family>(
    fd: RawFd,
    batch: &[(F::Key, u32)],
    value: &ValueFn<'_>,
    workers: usize,
    op: &str,
) -> Result<()> {
    let mut shares = run::<F>(fd, batch, Some(value), workers);
    match first_error::<F>(batch, &mut shares, op) {
        None => Ok(()),
        Some(e) => {
            for s in &shares {
                delete_present::<F>(fd, &batch[s.start..s.start + s.done]);
            }
            Err(e)
        }
    }
}

/// Deletes the entries of `batch` from the table, skipping any it no longer holds (an undo:
/// it removes everything it can).
pub(super) fn delete_present<F: Family>(fd: RawFd, batch: &[(F::Key, u32)]) {
    let mut keys = Vec::with_capacity(BATCH_CHUNK.min(batch.len()) * 20);
    let mut rest = batch;
    while !rest.is_empty() {
        let part = &rest[..rest.len().min(BATCH_CHUNK)];
        keys.clear();
        for &(k, _) in part {
            F::put(&mut keys, k);
        }
        rest = match batch_call(fd, &keys, None, part.len()) {
            Ok(()) => &rest[part.len()..],
            // Go on after the key it refused.
            Err((applied, _)) => &rest[(applied + 1).min(rest.len())..],
        };
    }
}

/// Writes back what each share of a refused batch removal had removed.
pub(super) fn rewrite<F: Family>(
    fd: RawFd,
    batch: &[(F::Key, u32)],
    shares: &[Share],
    value: &ValueFn<'_>,
) {
    for s in shares {
        let part = [Range::new(s.start, s.done)];
        let _ = work::<F>(fd, batch, &part, 0, Some(value), &AtomicBool::new(false));
    }
}

/// Takes the entries of `gone` (in the table's order, every one in the table) out of the
/// table's copy and returns them in that order.
pub(super) fn take_out(
    peers: &mut BTreeMap<IpNetwork, u32>,
    gone: impl Iterator<Item = IpNetwork>,
    count: usize,
) -> Vec<(IpNetwork, u32)> {
    let mut out = Vec::with_capacity(count);
    if count >= peers.len() / 8 {
        // One ordered pass: `gone` is in the map's order.
        let mut next = gone.peekable();
        peers.retain(|prefix, v| {
            while next.next_if(|g| g < prefix).is_some() {}
            if next.next_if(|g| g == prefix).is_some() {
                out.push((*prefix, *v));
                false
            } else {
                true
            }
        });
    } else {
        out.extend(gone.filter_map(|g| peers.remove(&g).map(|v| (g, v))));
    }
    out
}

/// Sets the peer of counter slot `slot` in `slot_peers`, which grows as slots are handed out.
pub(super) fn put_peer(slot_peers: &mut Vec<EncapPeer>, slot: u32, peer: EncapPeer) {
    let slot = slot as usize;
    match slot_peers.get_mut(slot) {
        Some(p) => *p = peer,
        None => {
            // Slots are handed out in order, so this is a push; a gap (slots that failed and were
            // freed before their peers were placed) holds copies until the slots are used.
            slot_peers.resize(slot, peer);
            slot_peers.push(peer);
        }
    }
}

/// Zeroes the per-CPU counters of `slots`, one `BPF_MAP_UPDATE_BATCH` per chunk.
pub(super) fn zero_stats_batch(stats: &MapHandle, slots: &[u32]) -> Result<()> {
    if slots.is_empty() {
        return Ok(());
    }
    let op = "reset peer counters";
    let cpus = libbpf_rs::num_possible_cpus().map_err(|e| Error::bpf("count CPUs", e))?;
    // A per-CPU value in a batch: each CPU's copy rounded up to 8 bytes.
    let per_slot = std::mem::size_of::<lwtun_peer_stats>().next_multiple_of(8) * cpus;
    let chunk = BATCH_CHUNK.min(slots.len());
    let zeros = vec![0u8; chunk * per_slot];
    let mut keys = Vec::with_capacity(chunk * 4);
    for part in slots.chunks(BATCH_CHUNK) {
        keys.clear();
        for slot in part {
            keys.extend_from_slice(&slot.to_ne_bytes());
        }
        batch_call(
            stats.as_fd().as_raw_fd(),
            &keys,
            Some(&zeros[..part.len() * per_slot]),
            part.len(),
        )
        .map_err(|(_, e)| Error::bpf(op, libbpf_rs::Error::from(e)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::lpm::put_key;

    #[test]
    fn batch_keys_sort_alike_on_one_and_two_threads() {
        assert_eq!(
            merge(vec![(1u64, 0), (4, 1)], vec![(2, 2), (3, 3), (5, 4)]),
            { vec![(1, 0), (2, 2), (3, 3), (4, 1), (5, 4)] }
        );
        assert_eq!(merge(vec![(1u64, 0)], vec![(1, 1)]), vec![(1, 0), (1, 1)]);
        assert_eq!(merge(vec![], vec![(1u64, 0)]), vec![(1, 0)]);
        assert_eq!(merge(vec![(2u64, 0)], vec![]), vec![(2, 0)]);

        // Shuffled IPv4 and IPv6 prefixes, enough for two halves.
        let n = 5 * MIN_PER_WORKER;
        let prefixes: Vec<IpNetwork> = (0..n as u32)
            .map(|i| {
                // A permutation of 0..n (7919 is prime to n).
                let i = (u64::from(i) * 7919 % n as u64) as u32;
                if i % 3 == 0 {
                    IpNetwork::new(IpAddr::from((u128::from(i) << 64).to_be_bytes()), 64)
                } else {
                    IpNetwork::new(IpAddr::from(i.to_be_bytes()), 32)
                }
                .unwrap()
            })
            .collect();
        let get = |i: usize| Ok(prefixes[i]);
        let one = sorted_keys(n, 1, &get).unwrap();
        let two = sorted_keys(n, 2, &get).unwrap();
        assert!(one == two, "one and two threads differ");
        assert_eq!(one.0.len() + one.1.len(), n);
        assert!(one.0.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(one.1.windows(2).all(|w| w[0].0 < w[1].0));

        // A prefix in both halves: side by side, for the check that follows to find.
        let twice = |i: usize| Ok(prefixes[if i == n - 1 { 0 } else { i }]);
        let (v4, v6) = sorted_keys(n, 2, &twice).unwrap();
        assert!(v4.windows(2).any(|w| w[0].0 == w[1].0) || v6.windows(2).any(|w| w[0].0 == w[1].0));

        // Refused entries in both halves: the first one's error, as one pass gives.
        let refuse = |i: usize| match i {
            7 | 70_000 => Err(Error::invalid_input("test", format!("entry {i}"))),
            _ => Ok(prefixes[i]),
        };
        let err = sorted_keys(n, 2, &refuse).unwrap_err();
        assert!(err.to_string().contains("entry 7"), "{err}");
    }

    #[test]
    fn range_chunks_are_taken_once_from_either_end() {
        let len = 3 * BATCH_CHUNK + 5;
        let r = Range::new(100, len);
        assert_eq!(r.take(true), Some(100..100 + BATCH_CHUNK));
        assert_eq!(r.take(false), Some(100 + 3 * BATCH_CHUNK..100 + len));
        assert_eq!(
            r.take(false),
            Some(100 + 2 * BATCH_CHUNK..100 + 3 * BATCH_CHUNK)
        );
        assert_eq!(r.take(true), Some(100 + BATCH_CHUNK..100 + 2 * BATCH_CHUNK));
        assert_eq!(r.take(true), None);
        assert_eq!(r.take(false), None);
        assert_eq!(Range::new(0, 0).take(true), None);

        // An owner from the front and two others from the back, at once: every entry once.
        let len = 1000 * BATCH_CHUNK + 17;
        let r = Range::new(7, len);
        let mut taken: Vec<std::ops::Range<usize>> = std::thread::scope(|s| {
            let r = &r;
            let side =
                |front| s.spawn(move || std::iter::from_fn(|| r.take(front)).collect::<Vec<_>>());
            let all = [side(true), side(false), side(false)];
            all.into_iter()
                .flat_map(|t| t.join().unwrap_or_default())
                .collect()
        });
        taken.sort_by_key(|c| c.start);
        assert_eq!(taken.first().map(|c| c.start), Some(7));
        assert_eq!(taken.last().map(|c| c.end), Some(7 + len));
        assert!(taken.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn batch_keys_encode_and_order_as_prefixes_do() {
        let nets: Vec<IpNetwork> = [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.0.0.0/16",
            "10.0.0.1/32",
            "10.1.0.0/16",
            "192.0.2.128/25",
            "255.255.255.255/32",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let mut keys = Vec::new();
        for n in &nets {
            let IpNetwork::V4(v4) = n else { unreachable!() };
            let k = V4::key(v4);
            assert_eq!(V4::prefix(k), *n);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            V4::put(&mut a, k);
            put_key(&mut b, n);
            assert_eq!(a, b, "{n}: the same bytes as a single insert's key");
            keys.push(k);
        }
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "IpNetwork's order");

        let nets: Vec<IpNetwork> = ["::/0", "2001:db8::/32", "2001:db8::/64", "2001:db8::1/128"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let mut keys = Vec::new();
        for n in &nets {
            let IpNetwork::V6(v6) = n else { unreachable!() };
            let k = V6::key(v6);
            assert_eq!(V6::prefix(k), *n);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            V6::put(&mut a, k);
            put_key(&mut b, n);
            assert_eq!(a, b, "{n}");
            keys.push(k);
        }
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        // Host bits do not reach the key.
        let IpNetwork::V4(n) = "10.1.2.3/16".parse().unwrap() else {
            unreachable!()
        };
        assert_eq!(V4::prefix(V4::key(&n)), "10.1.0.0/16".parse().unwrap());
    }
}
