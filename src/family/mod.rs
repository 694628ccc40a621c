//! The family kit: what every BPF program family builds on. A family module keeps only what
//! is unique to its object (its builder, its tables' meaning, its counters); how it pins and
//! adopts its state ([`pins`], with the owner [`lock`]) and hands out counter slots is here.

pub(crate) mod bpffs;
pub(crate) mod endpoint;
pub(crate) mod lock;
pub(crate) mod lpm;
pub mod pins;

use libbpf_rs::{MapCore, MapFlags};

use crate::abi::{self, Pod};
use crate::error::{Error, Result};

pub(crate) use pins::PinFolder;

/// What a family does with a packet that matches none of its entries (a tunnel's peers, a
/// redirect's or SRv6 function's rules).
///
/// # Examples
///
/// ```no_run
/// use lwtun::peer::MissPolicy;
/// use lwtun::tunnel::Tunnel;
///
/// let tunnel = Tunnel::builder().miss_policy(MissPolicy::Pass).load()?;
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MissPolicy {
    /// Drop it and count it (the default): nothing leaks unencapsulated.
    #[default]
    Drop,
    /// Send it on unencapsulated, by the route it matched, and count it.
    Pass,
}

/// The object to load for a family that ships a bounded-loop variant of itself: `main` where
/// the kernel has `bpf_loop` (5.17; the family asks `probe::Feature::BpfLoop`, which sits above
/// the kit), `without_loop` before.
pub(crate) fn bpf_loop_variant(
    has_bpf_loop: bool,
    main: &'static [u8],
    without_loop: &'static [u8],
) -> &'static [u8] {
    if has_bpf_loop {
        main
    } else {
        without_loop
    }
}

/// The counter slots of a family's rules: `0..capacity`, handed out lowest-first after the
/// freed ones.
#[derive(Debug)]
pub(crate) struct Slots {
    free: Vec<u32>,
    next: u32,
    capacity: u32,
}

impl Slots {
    /// `capacity` slots, none taken.
    pub(crate) fn new(capacity: u32) -> Slots {
        Slots {
            free: Vec::new(),
            next: 0,
            capacity,
        }
    }

    /// How many slots there are.
    pub(crate) fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Takes a free slot; InvalidInput naming `op` when all are in use.
    pub(crate) fn take(&mut self, op: &str) -> Result<u32> {
        if let Some(s) = self.free.pop() {
            return Ok(s);
        }
        if self.next >= self.capacity {
            return Err(Error::invalid_input(
                op,
                format!(
                    "all {} rule slots are in use; load the family with a larger capacity",
                    self.capacity
                ),
            ));
        }
        self.next += 1;
        Ok(self.next - 1)
    }

    /// Gives a slot back.
    pub(crate) fn release(&mut self, slot: u32) {
        self.free.push(slot);
    }

    /// The slots of adopted maps: `capacity` as the maps were made, `used` the slots their
    /// rules hold.
    pub(crate) fn adopted(capacity: u32, used: &[u32]) -> Slots {
        let next = used.iter().map(|s| s + 1).max().unwrap_or(0);
        Slots {
            free: (0..next).filter(|s| !used.contains(s)).collect(),
            next,
            capacity,
        }
    }
}

/// Zeroes slot `slot` of a per-CPU array of `T` on every CPU (a new rule's counters).
pub(crate) fn zero_percpu<T: Pod>(map: &dyn MapCore, slot: u32) -> Result<()> {
    let zero = abi::as_bytes(&T::default()).to_vec();
    let cpus = libbpf_rs::num_possible_cpus().map_err(|e| Error::bpf("count CPUs", e))?;
    map.update_percpu(&slot.to_ne_bytes(), &vec![zero; cpus], MapFlags::ANY)
        .map_err(|e| Error::bpf("reset rule counters", e))
}

/// The error of a write into a family's table: a full table (the kernel's E2BIG) is the
/// caller's input, said with the table's name and size and what to do; anything else is
/// libbpf's error. `table` names the table as a user knows it ("decap local endpoints").
pub(crate) fn table_write_error(
    op: &str,
    e: libbpf_rs::Error,
    table: &str,
    map: &dyn MapCore,
) -> Error {
    if e.kind() == libbpf_rs::ErrorKind::TooBig {
        return Error::invalid_input(
            op,
            format!(
                "the {table} table is full ({} entries): remove an entry first",
                map.max_entries()
            ),
        );
    }
    Error::bpf(op, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn slots_are_reused_and_bounded() {
        let mut s = Slots::new(2);
        assert_eq!((s.take("t").unwrap(), s.take("t").unwrap()), (0, 1));
        assert_eq!(s.take("t").unwrap_err().kind(), ErrorKind::InvalidInput);
        s.release(0);
        assert_eq!(s.take("t").unwrap(), 0);
        let mut a = Slots::adopted(8, &[0, 3]);
        assert_eq!(a.capacity(), 8);
        let mut taken = vec![a.take("t").unwrap(), a.take("t").unwrap()];
        taken.sort();
        assert_eq!(taken, [1, 2]);
        assert_eq!(a.take("t").unwrap(), 4);
    }
}
