//! Plumbing the rule-table program families ([`crate::tunnel_redirect`],
//! [`crate::lwt_redirect`]) share: a bpffs pin folder whose maps a later process adopts, and
//! the per-rule counter slots rules take and give back.

use std::path::{Path, PathBuf};

use libbpf_rs::{MapCore, MapFlags, Object, OpenObject};

use crate::abi::{self, Pod};
use crate::error::{Error, Result};

/// A family's pin folder: maps and programs pinned by name, removed again on
/// [`PinFolder::remove`] unless kept.
#[derive(Debug)]
pub(crate) struct PinFolder {
    folder: PathBuf,
    created: bool,
    keep: bool,
    adopted: bool,
}

impl PinFolder {
    /// Creates `folder` when it is missing; the family adopts the folder's maps when
    /// `probe_map` is pinned there already.
    pub(crate) fn open(folder: PathBuf, probe_map: &str, op: &str) -> Result<PinFolder> {
        let mut created = false;
        if !folder.exists() {
            std::fs::create_dir_all(&folder)
                .map_err(|e| Error::io(op, e).with_object(folder.display().to_string()))?;
            created = true;
        }
        Ok(PinFolder {
            adopted: folder.join(probe_map).exists(),
            folder,
            created,
            keep: false,
        })
    }

    /// The folder.
    pub(crate) fn path(&self) -> &Path {
        &self.folder
    }

    /// Whether the folder held the family's maps (which the family then reuses).
    pub(crate) fn adopted(&self) -> bool {
        self.adopted
    }

    /// Leaves the pins in place on [`PinFolder::remove`].
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }

    /// Makes every map of `open` reuse its pinned map, when adopting.
    pub(crate) fn reuse_maps(&self, open: &mut OpenObject) -> Result<()> {
        if !self.adopted {
            return Ok(());
        }
        for mut map in open.maps_mut() {
            let path = self.folder.join(map.name());
            map.reuse_pinned_map(&path).map_err(|e| {
                Error::bpf("adopt pinned map", e).with_object(path.display().to_string())
            })?;
        }
        Ok(())
    }

    /// Pins the maps (unless adopted: they are pinned already) and the programs; a previous
    /// owner's program pin is replaced by this process's program.
    pub(crate) fn pin_all(&self, object: &mut Object, op: &str) -> Result<()> {
        if !self.adopted {
            for mut map in object.maps_mut() {
                let path = self.folder.join(map.name());
                map.pin(&path)
                    .map_err(|e| Error::bpf(op, e).with_object(path.display().to_string()))?;
            }
        }
        for mut prog in object.progs_mut() {
            let path = self.folder.join(prog.name());
            let _ = std::fs::remove_file(&path);
            prog.pin(&path)
                .map_err(|e| Error::bpf(op, e).with_object(path.display().to_string()))?;
        }
        Ok(())
    }

    /// Removes the pins `names` (and the folder, if this family created it), unless kept.
    /// Best effort: for `Drop`.
    pub(crate) fn remove<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        if self.keep {
            return;
        }
        for name in names {
            let _ = std::fs::remove_file(self.folder.join(name));
        }
        if self.created {
            let _ = std::fs::remove_dir(&self.folder);
        }
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
