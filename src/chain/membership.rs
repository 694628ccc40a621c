//! Whether a program belongs where a caller puts it: a chain's stage or exit, a dispatcher's
//! member.
//!
//! Chain-aware and dispatch-aware programs share their owner's maps (`bpf/chain.h`,
//! `bpf/dispatch.h`): they read its cursor and tail-call into its prog array. Such a program
//! put into another chain or dispatcher reads a cursor nobody set and walks an order that is not
//! this one (every packet XDP_ABORTED, or later stages silently skipped); an owner's own entry
//! put into its own prog array restarts the walk for every packet until the kernel's tail-call
//! limit. What a program is follows from the maps it uses (their ids and names), which the
//! kernel reports for every loaded program.

use crate::bpf_fd::map_name_by_id;
use crate::error::{Error, ErrorKind, Result};
use crate::program::ProgramInfo;

/// The owner of a prog array (a chain or a dispatcher), as the checks see it.
pub(crate) struct Owner<'a> {
    /// "chain" or "dispatcher", for messages.
    pub what: &'static str,
    /// The owner's hook, for messages.
    pub hook: super::ChainHook,
    /// The prefix of the owner family's shared map names (`chain_`, `dispatch_`).
    pub map_prefix: &'static str,
    /// The owner's entry (root) program.
    pub entry: &'a ProgramInfo,
    /// The owner's shared maps: name and id.
    pub maps: &'a [(&'static str, u32)],
}

/// What a program is, relative to one owner.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The owner's own entry program.
    OwnEntry,
    /// Uses the owner's maps; `walks` when it tail-calls into the order (a chain-aware stage),
    /// otherwise it only reads the cursor (an exit program such as a capture).
    Ours { walks: bool },
    /// The entry of another chain or dispatcher: it runs its own walk and ends with its own
    /// verdict, like any program that knows no chain.
    OtherEntry,
    /// Loaded for another chain or dispatcher: `map` is one of the maps it shares with that
    /// owner (its name and id).
    OtherMember {
        /// Name of a map it shares with its owner.
        map: String,
        /// That map's id.
        id: u32,
    },
    /// Knows no chain: it ends the walk with its own verdict.
    Plain,
}

/// Sorts `program` relative to `owner`.
pub(crate) fn kind(owner: &Owner<'_>, program: &ProgramInfo) -> Kind {
    if program.id == owner.entry.id {
        return Kind::OwnEntry;
    }
    let mut ours = Vec::new();
    let mut foreign = Vec::new();
    for &id in &program.map_ids {
        if let Some(&(name, _)) = owner.maps.iter().find(|(_, m)| *m == id) {
            ours.push(name.to_string());
            continue;
        }
        let Some((name, _)) = map_name_by_id(id) else {
            continue;
        };
        if is_shared_name(&name) {
            foreign.push((name, id));
        }
    }
    if let Some((map, id)) = foreign.first().cloned() {
        // A chain's entry is the only chain program that reads `chain_config`; a dispatcher's
        // members read its config too, so its root is told by name (`dispatch_<hook>`).
        let entry = foreign.iter().any(|(n, _)| n == "chain_config")
            || program.name.starts_with("dispatch_");
        return if entry {
            Kind::OtherEntry
        } else {
            Kind::OtherMember { map, id }
        };
    }
    if !ours.is_empty() {
        let walks = ours.iter().any(|n| {
            n == &format!("{}progs", owner.map_prefix) || n == &format!("{}next", owner.map_prefix)
        });
        return Kind::Ours { walks };
    }
    Kind::Plain
}

/// The maps `bpf/chain.h` and `bpf/dispatch.h` declare (a family's private maps, such as a
/// capture's ring, do not make a program a member).
fn is_shared_name(name: &str) -> bool {
    matches!(
        name,
        "chain_progs"
            | "chain_next"
            | "chain_cursor"
            | "chain_exit"
            | "chain_config"
            | "dispatch_progs"
            | "dispatch_config"
            | "dispatch_cursor"
    )
}

/// Refuses a program that cannot run as a stage (chain) or member (dispatcher) of `owner`:
/// the owner's own entry, a program loaded for another chain or dispatcher, and (with
/// `exit_only_refused`) a program that only reads the owner's cursor (an exit program).
pub(crate) fn check_stage(
    op: &str,
    owner: &Owner<'_>,
    program: &ProgramInfo,
    exit_only_refused: bool,
) -> Result<Kind> {
    let k = kind(owner, program);
    let name = format!("program {} (id {})", program.name, program.id);
    match &k {
        Kind::OwnEntry => Err(Error::invalid_input(
            op,
            format!(
                "{name} is this {what}'s own entry: in its own prog array it would restart the \
                 {what} for every packet until the kernel's tail-call limit; give a program that \
                 runs inside the {what}",
                what = owner.what
            ),
        )),
        Kind::OtherMember { map, id } => Err(foreign(op, owner, &name, map, *id)),
        Kind::Ours { walks: false } if exit_only_refused => Err(Error::invalid_input(
            op,
            format!(
                "{name} is this chain's exit program (it returns the chain's verdict and ends \
                 the chain, so the stages after it would never run): attach it with \
                 ProgChain::set_exit"
            ),
        )),
        _ => Ok(k),
    }
}

/// Refuses a program that cannot sit at `owner`'s exit hook: the entry, a stage that walks the
/// chain (at the exit it would call itself until the tail-call limit), a program loaded for
/// another chain or dispatcher.
pub(crate) fn check_exit(op: &str, owner: &Owner<'_>, program: &ProgramInfo) -> Result<Kind> {
    let k = kind(owner, program);
    let name = format!("program {} (id {})", program.name, program.id);
    match &k {
        Kind::OwnEntry => Err(Error::invalid_input(
            op,
            format!(
                "{name} is this chain's own entry: at the exit it would restart the chain for \
                 every packet until the kernel's tail-call limit; attach a capture or a program \
                 that knows no chain"
            ),
        )),
        Kind::Ours { walks: true } => Err(Error::invalid_input(
            op,
            format!(
                "{name} is a stage of this chain (it goes on with lwtun_chain_next): at the exit \
                 it would call itself until the kernel's tail-call limit; insert it as a stage"
            ),
        )),
        Kind::OtherMember { map, id } => Err(foreign(op, owner, &name, map, *id)),
        _ => Ok(k),
    }
}

/// A prog array write the kernel refused: with EINVAL, the program differs from the entry in
/// what a prog array requires to be the same (type, JIT, XDP frags, attach type).
pub(crate) fn refused(
    op: &str,
    e: libbpf_rs::Error,
    program: &ProgramInfo,
    entry: &ProgramInfo,
) -> Error {
    let err = Error::bpf(op.to_string(), e);
    if err.kind() != ErrorKind::InvalidInput {
        return err;
    }
    Error::invalid_input(
        op.to_string(),
        format!(
            "the kernel refused program {} (id {}) in the prog array of entry {} (id {}): a \
             tail-called program must match the entry's type, expected attach type, JIT state \
             and XDP frags support ({err})",
            program.name, program.id, entry.name, entry.id
        ),
    )
}

fn foreign(op: &str, owner: &Owner<'_>, name: &str, map: &str, id: u32) -> Error {
    let other = if map.starts_with("chain_") {
        "chain"
    } else {
        "dispatcher"
    };
    let ours = owner
        .maps
        .iter()
        .find(|(n, _)| *n == map)
        .map(|(_, id)| format!(", this {}'s is map {id}", owner.what))
        .unwrap_or_default();
    let how = if owner.what == "chain" {
        "load it for this chain (CountingStage::load(&chain), Capture::load(&chain, ..), \
         TableStage::load(&chain); an object of your own: chain.share_maps(&mut open) before \
         loading it)"
    } else {
        "load it for this dispatcher (Dispatcher::attach with the program's object)"
    };
    Error::invalid_input(
        op,
        format!(
            "{name} was loaded for another {other} (its {map} is map {id}{ours}): it would read \
             that {other}'s state, not this {} {}'s; {how}",
            owner.hook, owner.what
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_names_are_the_headers_maps() {
        assert!(is_shared_name("chain_cursor"));
        assert!(is_shared_name("dispatch_progs"));
        assert!(!is_shared_name("capture_ring"));
        assert!(!is_shared_name("chain_stats"));
    }
}
