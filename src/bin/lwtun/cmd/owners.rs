//! Who owns what the commands would remove: the live process holding a pin folder's flock, or
//! holding a program, its maps or its link by a descriptor (`lwtun::holders`). The commands
//! that remove state (`leftovers --remove`, `tunnel unload`, `decap detach`) refuse what a live
//! process owns, naming it, unless `--force`.

use std::collections::BTreeMap;

use libbpf_rs::MapCore;
use lwtun::holders::{Holders, Owner};
use lwtun::pins::PinnedFolder;
use lwtun::program::program_info_by_id;
use lwtun::{Error, ErrorKind, Result};
use serde::Serialize;

/// One scan of the owners: descriptors of every other process and the pin folders' locks.
pub(crate) struct Ownership {
    holders: Holders,
    /// The id of every map pinned in a folder a live process owns, with that owner.
    owned_maps: BTreeMap<u32, Owner>,
    /// Every lwtun pin folder under /sys/fs/bpf.
    pub(crate) folders: Vec<PinnedFolder>,
}

impl Ownership {
    pub(crate) fn scan() -> Result<Ownership> {
        let folders = lwtun::pins::discover("/sys/fs/bpf")?;
        let mut owned_maps = BTreeMap::new();
        for f in &folders {
            let Some(owner) = &f.owner else { continue };
            for id in pinned_map_ids(f) {
                owned_maps.insert(id, owner.clone());
            }
        }
        Ok(Ownership {
            holders: steady_holders()?,
            owned_maps,
            folders,
        })
    }

    /// The live owners of program `id`: processes holding it, one of its maps, or the folder
    /// its maps are pinned in.
    pub(crate) fn of_program(&self, id: u32) -> Vec<Owner> {
        let maps = program_info_by_id(id)
            .map(|i| i.map_ids)
            .unwrap_or_default();
        let mut out = self.holders.of_program_and_maps(id, &maps);
        for m in &maps {
            if let Some(o) = self.owned_maps.get(m) {
                if !out.iter().any(|x| x.pid == o.pid) {
                    out.push(o.clone());
                }
            }
        }
        out
    }

    /// [`of_program`](Self::of_program) of several programs, each process once.
    pub(crate) fn of_programs(&self, ids: impl IntoIterator<Item = u32>) -> Vec<Owner> {
        let mut out: Vec<Owner> = Vec::new();
        for id in ids {
            for o in self.of_program(id) {
                if !out.iter().any(|x| x.pid == o.pid) {
                    out.push(o);
                }
            }
        }
        out
    }

    /// The processes holding link `id` by a descriptor.
    pub(crate) fn of_link(&self, id: u32) -> &[Owner] {
        self.holders.of_link(id)
    }
}

/// The processes holding BPF objects, two looks 20 ms apart: another command looking a
/// program up by id at that moment is not taken for its owner.
pub(crate) fn steady_holders() -> Result<Holders> {
    Holders::scan_steady(std::time::Duration::from_millis(20))
}

/// The ids of the state maps pinned in `folder` (those that can be opened).
pub(crate) fn pinned_map_ids(folder: &PinnedFolder) -> Vec<u32> {
    folder
        .layout
        .maps()
        .iter()
        .filter_map(|m| libbpf_rs::MapHandle::from_pinned_path(folder.path.join(m)).ok())
        .filter_map(|h| h.info().ok().map(|i| i.info.id))
        .collect()
}

/// A live owner as the JSON shows it.
#[derive(Serialize, Clone)]
pub(crate) struct OwnerView {
    pub(crate) pid: u32,
    pub(crate) command: Option<String>,
}

pub(crate) fn owner_views(owners: &[Owner]) -> Vec<OwnerView> {
    owners
        .iter()
        .map(|o| OwnerView {
            pid: o.pid,
            command: o.command.clone(),
        })
        .collect()
}

/// "process 42 (lwtun-agent)" or "processes 42 (a), 43 (b)".
pub(crate) fn describe(owners: &[Owner]) -> String {
    let each: Vec<String> = owners
        .iter()
        .map(|o| {
            let text = o.to_string();
            text.strip_prefix("process ").unwrap_or(&text).to_string()
        })
        .collect();
    match each.len() {
        1 => format!("process {}", each[0]),
        _ => format!("processes {}", each.join(", ")),
    }
}

/// The refusal to remove `what` while `owners` hold it: Exists, naming them and the ways out.
pub(crate) fn refuse(op: &str, what: &str, owners: &[Owner], force_command: &str) -> Error {
    Error::other(
        ErrorKind::Exists,
        op,
        format!(
            "{what} is in use by {} (a live process owns it; removing it would break that \
             process's data plane); stop the process first, or run `{force_command}` to \
             remove it anyway",
            describe(owners)
        ),
    )
}

/// ` -n NAME` when the command acts in a named namespace (to repeat it in a fix command).
pub(crate) fn netns_flag(ctx: &crate::Ctx) -> String {
    if ctx.netns.path().starts_with(lwtun::netns::NETNS_RUN_DIR) {
        format!(" -n {}", ctx.netns.name())
    } else {
        String::new()
    }
}
