//! Emptying a big peer table before the kernel frees it, so that no CPU is held.
//!
//! When the last reference to an LPM trie goes, the kernel frees it node by node without
//! yielding: on Linux 6.18 a 1M-peer table held one CPU for about 0.5 s and a 4M-peer table for
//! about 1.9 s (`benches/peer_table_drop.rs`; Cloudflare reported more than 10 s on older
//! kernels). Deleted in steps of [`STEP`] peers with [`PAUSE`] between them, the same table goes
//! in about 4.4 s (4M) and no CPU is held for more than about 0.1 s (4M: 94 and 124 ms on
//! the two CPUs, against 1.7 s; `benches/peer_table_drop.rs`). Steps of 16 384 peers 5 ms apart
//! held a CPU up to 210 ms: the freed nodes go through RCU callbacks in batches, and smaller
//! steps make smaller batches. A [`Drain`] holds its own handles on the tables, so they live
//! until it is done, and then go empty.

use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use ipnetwork::IpNetwork;
use libbpf_rs::MapHandle;

use super::batch::{delete_present, sorted_keys, V4, V6};
use super::PeerTable;

/// Tables with fewer peers than this are left to the kernel: freeing them holds a CPU for
/// less than about 50 ms.
pub(crate) const DRAIN_FROM: usize = 100_000;
/// Peers deleted per step.
pub(crate) const STEP: usize = 4_096;
/// The pause after each step, in which the kernel's RCU callbacks free the step's nodes.
pub(crate) const PAUSE: Duration = Duration::from_millis(2);

/// A table's peers, to be deleted step by step, and the tables they are in.
pub(crate) struct Drain {
    v4_map: MapHandle,
    v6_map: MapHandle,
    /// In the table's order; made into keys by whoever runs the drain (not the dropping
    /// thread).
    prefixes: Vec<IpNetwork>,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("peers", &self.prefixes.len())
            .finish()
    }
}

impl PeerTable {
    /// Every peer of the table, to delete paced; `None` for a table smaller than
    /// [`DRAIN_FROM`] (or when the handles cannot be had: the kernel then frees the table
    /// as it is).
    pub(crate) fn drain(&self) -> Option<Drain> {
        if self.peers.len() < DRAIN_FROM {
            return None;
        }
        Some(Drain {
            v4_map: MapHandle::try_from(&self.v4).ok()?,
            v6_map: MapHandle::try_from(&self.v6).ok()?,
            prefixes: self.peers.keys().copied().collect(),
        })
    }
}

impl Drain {
    /// Deletes every peer, [`STEP`] at a time, [`PAUSE`] apart, in the calling thread.
    pub(crate) fn run(self) {
        let prefixes = &self.prefixes;
        let Ok((v4, v6)) = sorted_keys(prefixes.len(), 1, &|i| Ok(prefixes[i])) else {
            return; // cannot happen for the table's own prefixes; the kernel frees the rest
        };
        let fd4 = self.v4_map.as_fd().as_raw_fd();
        for step in v4.chunks(STEP) {
            delete_present::<V4>(fd4, step);
            std::thread::sleep(PAUSE);
        }
        let fd6 = self.v6_map.as_fd().as_raw_fd();
        for step in v6.chunks(STEP) {
            delete_present::<V6>(fd6, step);
            std::thread::sleep(PAUSE);
        }
    }

    /// [`Drain::run`] on a thread of its own, which ends when the tables are empty. Where no
    /// thread can be had, the tables are freed by the kernel as they are.
    pub(crate) fn spawn(self) {
        let _ = std::thread::Builder::new()
            .name("lwtun-drain".into())
            .spawn(move || self.run());
    }
}
