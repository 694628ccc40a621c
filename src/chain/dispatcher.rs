//! [`Dispatcher`]: one root program per hook that runs independent programs in slot order, each
//! verdict deciding whether the next runs, for the XDP, tc and LWT hooks.
//!
//! ```text
//!  hook ──▶ root ──tail call──▶ slot 0 member ──verdict in slot 0's continue set?──▶ slot 3 member ──▶ …
//!             │                      │ no: the verdict is the packet's                         │
//!             └── no member: the dispatcher's verdict                after the last slot: the dispatcher's verdict
//! ```
//!
//! # Why tail calls, not freplace
//!
//! libxdp's dispatcher calls one stub function per slot and loads each member as a
//! `BPF_PROG_TYPE_EXT` (freplace) program that replaces a stub and returns to the root. On this
//! project's test machines (Linux 6.18 built with `CONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY`) every
//! EXT load fails with EPERM although every capability check passes (traced) and fentry programs
//! load; lockdown is the likely cause, not a proven one. That design cannot run there. This dispatcher uses only tail calls, which work wherever BPF does:
//! the root tail-calls the first member; a member built on `bpf/dispatch.h`
//! (`LWTUN_DISPATCH_MEMBER`) computes its verdict and then, through `lwtun_dispatch_continue()`,
//! either returns it (the verdict is not in its slot's continue set) or tail-calls the next
//! member. A tail call never returns, so the member itself carries the dispatch step: a member must
//! be dispatch-aware to let later members run. Any other program of the hook's type can still be
//! a member ([`attach_program`](Dispatcher::attach_program), or [`attach`](Dispatcher::attach)
//! with an object not built on the header): it ends the run with its own verdict.
//!
//! Members sit in the slots of a prog array. Empty slots are skipped, so attaching, detaching or
//! replacing a member is one prog array write: each packet sees the dispatcher with or without
//! it, and none is lost.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use libbpf_rs::btf::types::{DataSec, Var};
use libbpf_rs::btf::Btf;
use libbpf_rs::{AsRawLibbpf, MapCore, MapFlags, Object, OpenObject};

use super::membership;
use super::prog_chain::{ChainHook, MAGIC};
use crate::abi;
use crate::error::{Error, ErrorKind, Result};
use crate::program::{open_object, program_info, LwtProgram, ProgramInfo};
use crate::skel::dispatch::types::lwtun_dispatch_config;
use crate::skel::dispatch_member::types::lwtun_dispatch_member_stats;

/// Member slots of a dispatcher (`LWTUN_DISPATCH_SLOTS`).
pub const DISPATCH_SLOTS: u32 = 8;
/// `LWTUN_DISPATCH_VERSION`: the dispatcher's maps and structs.
pub const DISPATCH_VERSION: u32 = 2;
/// The name of the ABI variable in a dispatch-aware object's `.rodata`.
const ABI_VAR: &str = "lwtun_dispatch_abi";
/// The maps a dispatch-aware member shares with the root (declared in `bpf/dispatch.h`).
const SHARED_MAPS: [&str; 3] = ["dispatch_progs", "dispatch_config", "dispatch_cursor"];

/// A member of a dispatcher: the slot it occupies and a serial number, so the id of a detached
/// member never names a later member in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(u32, u64);

impl MemberId {
    /// The slot (slots run in ascending order, 0 first).
    pub fn slot(self) -> u32 {
        self.0
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "member in slot {} (#{})", self.0, self.1)
    }
}

/// A member as [`Dispatcher::members`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member.
    pub id: MemberId,
    /// The kernel's facts about its program.
    pub program: ProgramInfo,
    /// The verdicts that let the next member run (empty for a member that is not
    /// dispatch-aware: it always ends the run).
    pub continue_on: Vec<i32>,
    /// Whether the program is built on `bpf/dispatch.h` (it goes on to the next member).
    pub dispatch_aware: bool,
}

struct Member {
    /// The member's own object, when the dispatcher loaded it (to read its maps).
    object: Option<Object>,
    /// Keeps the program loaded while it is in the slot.
    _program: OwnedFd,
    info: MemberInfo,
}

/// A root program that runs up to 8 programs in slot order at one hook; each member's verdict
/// decides, through the continue set it was attached with, whether the next member runs.
///
/// Kernel: Linux 5.2+ (global data in `.rodata`; tail calls 4.2; tcx: 6.6+).
///
/// Members are programs of the hook's type. Dispatch-aware members come from BPF objects built on
/// `bpf/dispatch.h` ([`attach`](Self::attach) loads them so they share the root's maps); their
/// verdict `v` lets the next non-empty slot run when `v` is in their `continue_on` set, and
/// otherwise `v` is the packet's verdict. After the last member the packet gets the dispatcher's
/// verdict (the hook's pass verdict unless [`set_verdict`](Self::set_verdict) changed it). A
/// program not built on the header can be a member too, and ends the run with its own verdict.
///
/// Attach, detach and replace change the running dispatcher atomically (one prog array write
/// each): no packet is lost while members come and go.
///
/// Lifetime: the dispatcher owns the root, its prog array and every member program. Dropping it
/// closes the prog array, whose entries the kernel then clears, so a hook still running the root
/// passes every packet with the dispatcher's verdict. Keep the dispatcher as long as its hook.
///
/// # Examples
///
/// ```no_run
/// use lwtun::chain::{ChainHook, Dispatcher};
///
/// let mut d = Dispatcher::new(ChainHook::Xdp)?;
/// // ... attach d.entry() to an interface ...
/// // XDP_PASS (2) goes on to the next slot; any other verdict is final.
/// let first = d.attach(0, lwtun::skel::dispatch_member::OBJECT, "member_xdp", &[2])?;
/// let second = d.attach(1, lwtun::skel::dispatch_member::OBJECT, "member_xdp", &[2])?;
/// d.detach(first)?; // slot 0 is skipped from the next packet on
/// # let _ = second;
/// # Ok::<(), lwtun::Error>(())
/// ```
pub struct Dispatcher {
    hook: ChainHook,
    object: Object,
    entry: OwnedFd,
    entry_info: ProgramInfo,
    members: BTreeMap<u32, Member>,
    masks: [u32; DISPATCH_SLOTS as usize],
    verdict: i32,
    serial: u64,
    /// The ids of the shared maps ([`SHARED_MAPS`]), to tell this dispatcher's programs from
    /// another's.
    map_ids: Vec<(&'static str, u32)>,
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("hook", &self.hook)
            .field("entry", &self.entry_info)
            .field("verdict", &self.verdict)
            .field("members", &self.members())
            .finish()
    }
}

impl Dispatcher {
    /// Loads an empty dispatcher for `hook`: it passes every packet with the hook's pass verdict
    /// until members come.
    ///
    /// # Errors
    ///
    /// Permission without CAP_BPF; InvalidInput when the embedded root object's ABI does not
    /// match this library (a build problem).
    pub fn new(hook: ChainHook) -> Result<Self> {
        let op = "load dispatcher";
        let mut open = open_object("dispatch", crate::skel::dispatch::OBJECT, op)?;
        match read_abi(op, &open, ABI_VAR)? {
            Some(words) => check_abi_words(op, "dispatch", words)?,
            None => {
                return Err(Error::other(
                    ErrorKind::Kernel,
                    op,
                    format!("the root object has no {ABI_VAR}"),
                ))
            }
        }
        for mut p in open.progs_mut() {
            let ours = p.prog_type() == hook.program_type();
            p.set_autoload(ours);
        }
        let object = crate::program::load_opened(open, op)?;
        let entry = crate::program::program_fd(&object, &format!("dispatch_{hook}"))?;
        let entry_info = program_info(entry.as_fd())?;
        let mut map_ids = Vec::new();
        for name in SHARED_MAPS {
            let map = object
                .maps()
                .find(|m| m.name().to_str() == Some(name))
                .ok_or_else(|| Error::not_found(op, format!("map {name} of the root object")))?;
            let info =
                libbpf_rs::MapInfo::new(map.as_fd()).map_err(|e| Error::bpf(op.to_string(), e))?;
            map_ids.push((name, info.info.id));
        }
        let d = Dispatcher {
            hook,
            object,
            entry,
            entry_info,
            members: BTreeMap::new(),
            masks: [0; DISPATCH_SLOTS as usize],
            verdict: hook.pass_verdict(),
            serial: 0,
            map_ids,
        };
        d.write_config()?;
        Ok(d)
    }

    /// The hook.
    pub fn hook(&self) -> ChainHook {
        self.hook
    }

    /// The root program: attach it at the hook (an XDP or tc attach; for a route, see
    /// [`lwt_entry`](Self::lwt_entry)).
    pub fn entry(&self) -> BorrowedFd<'_> {
        self.entry.as_fd()
    }

    /// The kernel's facts about the root program.
    pub fn entry_info(&self) -> &ProgramInfo {
        &self.entry_info
    }

    /// The root as an LWT program, to give a route ([`crate::route::LwtRoute::program`]).
    ///
    /// # Errors
    ///
    /// InvalidInput when the dispatcher is not for an LWT hook.
    pub fn lwt_entry(&self) -> Result<LwtProgram> {
        LwtProgram::from_fd(
            self.entry
                .try_clone()
                .map_err(|e| Error::io("duplicate program fd", e))?,
        )
    }

    /// The verdict a packet gets after the last member went on (or with no member).
    pub fn verdict(&self) -> i32 {
        self.verdict
    }

    /// Sets the verdict a packet gets after the last member went on (or with no member).
    ///
    /// # Errors
    ///
    /// InvalidInput for a verdict the hook does not know (as [`ProgChain::set_verdict`]
    /// lists them); the kernel's error updating the config map (the verdict is unchanged then).
    ///
    /// [`ProgChain::set_verdict`]: super::ProgChain::set_verdict
    pub fn set_verdict(&mut self, verdict: i32) -> Result<()> {
        self.hook.check_verdict("set dispatcher verdict", verdict)?;
        let old = std::mem::replace(&mut self.verdict, verdict);
        self.write_config().inspect_err(|_| self.verdict = old)
    }

    /// Loads program `program` of the BPF object `object` and puts it into `slot` (0..8, run in
    /// ascending order) while the dispatcher runs.
    ///
    /// When the object is built on `bpf/dispatch.h` (it carries `lwtun_dispatch_abi`), it is loaded
    /// sharing the root's maps, and `continue_on` lists the member's verdicts that let the next
    /// member run (any verdict 0..=29, -1 for tc's TC_ACT_UNSPEC, 128 for BPF_LWT_REROUTE).
    /// Otherwise the program ends the run with its own verdict, and `continue_on` must be empty.
    /// Only `program` is loaded from the object, as its own instance (its maps are its own).
    ///
    /// # Errors
    ///
    /// InvalidInput for a slot out of range, a verdict that cannot go on (or that the hook does
    /// not know), a program not of the hook's type, a continue set for a program that is not
    /// dispatch-aware, or an object built against another dispatcher ABI (magic, version or
    /// slot count); Exists when the slot is taken; NotFound when the object has no program
    /// `program`; the verifier's or kernel's error otherwise. Nothing changes when it fails.
    pub fn attach(
        &mut self,
        slot: u32,
        object: &[u8],
        program: &str,
        continue_on: &[i32],
    ) -> Result<MemberId> {
        let op = "attach dispatcher member";
        self.free_slot(op, slot)?;
        for &v in continue_on {
            self.hook.check_verdict(op, v)?;
        }
        let mask = continue_mask(op, continue_on)?;
        let (object, fd, aware) = self.load_member(op, object, program, continue_on)?;
        self.install(op, slot, Some(object), fd, aware, mask, continue_on)
    }

    /// Puts an already loaded program of the hook's type into `slot`. The dispatcher cannot make
    /// it share its maps, so it runs as a member that is not dispatch-aware: it ends the run with
    /// its own verdict. The dispatcher keeps its own reference to the program.
    ///
    /// # Errors
    ///
    /// As [`attach`](Self::attach); also InvalidInput when `program` is not a BPF program, is
    /// the dispatcher's own root (it would restart the run until the kernel's tail-call limit),
    /// was loaded for another dispatcher or chain (a chain's stage or capture, another
    /// dispatcher's member: they read state this dispatcher never sets), or is a member already.
    pub fn attach_program(&mut self, slot: u32, program: impl AsFd) -> Result<MemberId> {
        let op = "attach dispatcher member";
        self.free_slot(op, slot)?;
        let fd = self.own_program(op, program.as_fd())?;
        self.install(op, slot, None, fd, false, 0, &[])
    }

    /// Replaces the member `id` with program `program` of `object` (as [`attach`](Self::attach)
    /// loads it) in one prog array write: each packet runs the old member or the new one. The
    /// continue set is written just before the swap, so a packet passing in between may judge
    /// the old member's verdict by the new set.
    ///
    /// # Errors
    ///
    /// NotFound when `id` is not a member; otherwise as [`attach`](Self::attach). The old member
    /// stays when it fails.
    pub fn replace(
        &mut self,
        id: MemberId,
        object: &[u8],
        program: &str,
        continue_on: &[i32],
    ) -> Result<MemberId> {
        let op = "replace dispatcher member";
        self.member(op, id)?;
        for &v in continue_on {
            self.hook.check_verdict(op, v)?;
        }
        let mask = continue_mask(op, continue_on)?;
        let (object, fd, aware) = self.load_member(op, object, program, continue_on)?;
        let old = self.members.remove(&id.0).expect("checked above");
        let old_mask = self.masks[id.0 as usize];
        match self.install(op, id.0, Some(object), fd, aware, mask, continue_on) {
            Ok(new) => Ok(new),
            Err(e) => {
                self.masks[id.0 as usize] = old_mask;
                let _ = self.write_config();
                self.members.insert(id.0, old);
                Err(e)
            }
        }
    }

    /// Detaches a member: its slot is empty from the next packet on and skipped, and the program
    /// is released.
    ///
    /// Emptying a slot is slower than filling it: the JIT jumps straight to each slot's program
    /// from every member before it and from the root, and the kernel waits for an RCU grace period
    /// per such jump it takes out (measured on this project's VM: 40 ms with no other member,
    /// 120 ms with 7 others). Attaching and replacing take about 1 ms.
    ///
    /// # Errors
    ///
    /// NotFound when `id` is not a member; the kernel's error otherwise (the member stays then).
    pub fn detach(&mut self, id: MemberId) -> Result<()> {
        let op = "detach dispatcher member";
        self.member(op, id)?;
        self.write_prog(op, id.0, None)?;
        // The slot's continue mask stays: a packet still inside the member on another CPU goes on
        // as it would have. The next member attached to the slot writes its own.
        self.members.remove(&id.0);
        Ok(())
    }

    /// The members in slot order (the order packets run them).
    pub fn members(&self) -> Vec<MemberInfo> {
        self.members.values().map(|m| m.info.clone()).collect()
    }

    /// The loaded object of a member the dispatcher loaded (to read its maps); `None` for an
    /// unknown id or a program given by [`attach_program`](Self::attach_program).
    pub fn member_object(&self, id: MemberId) -> Option<&Object> {
        self.members
            .get(&id.0)
            .filter(|m| m.info.id == id)
            .and_then(|m| m.object.as_ref())
    }

    fn member(&self, op: &str, id: MemberId) -> Result<&Member> {
        self.members
            .get(&id.0)
            .filter(|m| m.info.id == id)
            .ok_or_else(|| Error::not_found(op.to_string(), format!("{id} of the dispatcher")))
    }

    fn free_slot(&self, op: &str, slot: u32) -> Result<()> {
        if slot >= DISPATCH_SLOTS {
            return Err(Error::invalid_input(
                op.to_string(),
                format!("slot {slot}: a dispatcher has slots 0..{DISPATCH_SLOTS}"),
            ));
        }
        if let Some(m) = self.members.get(&slot) {
            return Err(Error::other(
                ErrorKind::Exists,
                op.to_string(),
                format!(
                    "slot {slot} holds program {} (id {}): detach or replace it",
                    m.info.program.name, m.info.program.id
                ),
            ));
        }
        Ok(())
    }

    /// Opens `bytes`, checks its ABI, makes a dispatch-aware object share the root's maps, and
    /// loads only `program`.
    fn load_member(
        &self,
        op: &str,
        bytes: &[u8],
        program: &str,
        continue_on: &[i32],
    ) -> Result<(Object, OwnedFd, bool)> {
        let mut open = open_object("dispatch_member", bytes, op)?;
        let mut found = None;
        let mut names = Vec::new();
        for mut p in open.progs_mut() {
            let name = p.name().to_string_lossy().into_owned();
            let ours = name == program;
            if ours {
                found = Some(p.prog_type());
            }
            p.set_autoload(ours);
            names.push(name);
        }
        let ty = found.ok_or_else(|| {
            Error::not_found(
                op.to_string(),
                format!(
                    "program {program} in the object (it has: {})",
                    names.join(", ")
                ),
            )
        })?;
        if ty != self.hook.program_type() {
            return Err(Error::invalid_input(
                op.to_string(),
                format!(
                    "program {program} is {ty:?}, a {} dispatcher runs {:?} programs",
                    self.hook,
                    self.hook.program_type()
                ),
            ));
        }
        let aware = match read_abi(op, &open, ABI_VAR)? {
            Some(words) => {
                check_abi_words(op, program, words)?;
                true
            }
            None => false,
        };
        if aware {
            for shared in SHARED_MAPS {
                let ours = self.map(shared)?;
                let mut theirs = open
                    .maps_mut()
                    .find(|m| m.name().to_str() == Some(shared))
                    .ok_or_else(|| {
                        Error::invalid_input(
                            op.to_string(),
                            format!(
                                "the object carries {ABI_VAR} but no map {shared}: build it on \
                                 bpf/dispatch.h"
                            ),
                        )
                    })?;
                theirs
                    .reuse_fd(ours.as_fd())
                    .map_err(|e| Error::bpf(format!("{op}: share {shared}"), e))?;
            }
        } else if !continue_on.is_empty() {
            return Err(Error::invalid_input(
                op.to_string(),
                format!(
                    "program {program} is not dispatch-aware (its object has no {ABI_VAR}): it \
                     ends the run with its own verdict, so its continue set must be empty"
                ),
            ));
        }
        let object = crate::program::load_opened(open, op)?;
        let fd = crate::program::program_fd(&object, program)?;
        Ok((object, fd, aware))
    }

    fn own_program(&self, op: &str, fd: BorrowedFd<'_>) -> Result<OwnedFd> {
        let info = program_info(fd)?;
        let want = self.hook.program_type() as u32;
        if info.prog_type != want {
            return Err(Error::invalid_input(
                op.to_string(),
                format!(
                    "program {} (id {}) has type {}, a {} dispatcher runs type {}",
                    info.name,
                    info.id,
                    crate::bpf_fd::prog_type_name(info.prog_type),
                    self.hook,
                    crate::bpf_fd::prog_type_name(want)
                ),
            ));
        }
        let owner = membership::Owner {
            what: "dispatcher",
            hook: self.hook,
            map_prefix: "dispatch_",
            entry: &self.entry_info,
            maps: &self.map_ids,
        };
        membership::check_stage(op, &owner, &info, false)?;
        if let Some(m) = self.members.values().find(|m| m.info.program.id == info.id) {
            return Err(Error::invalid_input(
                op.to_string(),
                format!(
                    "program {} (id {}) is this dispatcher's member in slot {} already; given \
                     as a program it ends the run with its own verdict, so a second copy would \
                     never run (attach its object again for a second dispatch-aware instance)",
                    info.name,
                    info.id,
                    m.info.id.slot()
                ),
            ));
        }
        fd.try_clone_to_owned()
            .map_err(|e| Error::io("duplicate program fd", e))
    }

    /// Writes the slot's continue mask, then the program into the slot; undoes the mask when the
    /// program write fails.
    #[allow(clippy::too_many_arguments)]
    fn install(
        &mut self,
        op: &str,
        slot: u32,
        object: Option<Object>,
        fd: OwnedFd,
        aware: bool,
        mask: u32,
        continue_on: &[i32],
    ) -> Result<MemberId> {
        let program = program_info(fd.as_fd())?;
        let old_mask = self.masks[slot as usize];
        self.masks[slot as usize] = mask;
        if let Err(e) = self.write_config() {
            self.masks[slot as usize] = old_mask;
            return Err(e);
        }
        if let Err(e) = self.write_prog(op, slot, Some(fd.as_fd())) {
            let e = match e.kind() {
                ErrorKind::InvalidInput => Error::invalid_input(
                    op.to_string(),
                    format!(
                        "the kernel refused program {} (id {}) in the prog array of root {} (id \
                         {}): a tail-called program must match the root's type, expected attach \
                         type, JIT state and XDP frags support ({e})",
                        program.name, program.id, self.entry_info.name, self.entry_info.id
                    ),
                ),
                _ => e,
            };
            self.masks[slot as usize] = old_mask;
            let _ = self.write_config();
            return Err(e);
        }
        self.serial += 1;
        let id = MemberId(slot, self.serial);
        let mut continue_on = continue_on.to_vec();
        continue_on.sort_unstable();
        continue_on.dedup();
        self.members.insert(
            slot,
            Member {
                object,
                _program: fd,
                info: MemberInfo {
                    id,
                    program,
                    continue_on,
                    dispatch_aware: aware,
                },
            },
        );
        Ok(id)
    }

    fn map(&self, name: &str) -> Result<libbpf_rs::Map<'_>> {
        self.object
            .maps()
            .find(|m| m.name().to_str() == Some(name))
            .ok_or_else(|| Error::not_found("find dispatcher map", name.to_string()))
    }

    fn write_prog(&self, op: &str, slot: u32, fd: Option<BorrowedFd<'_>>) -> Result<()> {
        let map = self.map("dispatch_progs")?;
        match fd {
            Some(fd) => map
                .update(
                    &slot.to_ne_bytes(),
                    &(fd.as_raw_fd() as u32).to_ne_bytes(),
                    MapFlags::ANY,
                )
                .map_err(|e| Error::bpf(op.to_string(), e)),
            None => match map.delete(&slot.to_ne_bytes()) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::bpf(op.to_string(), e)),
            },
        }
    }

    fn write_config(&self) -> Result<()> {
        let cfg = lwtun_dispatch_config {
            magic: MAGIC,
            version: DISPATCH_VERSION,
            verdict: self.verdict,
            pad: 0,
            continue_mask: self.masks,
        };
        self.map("dispatch_config")?
            .update(&0u32.to_ne_bytes(), abi::as_bytes(&cfg), MapFlags::ANY)
            .map_err(|e| Error::bpf("write dispatcher config", e))
    }
}

/// The continue-mask bit of a verdict (`lwtun_dispatch_bit()` in `bpf/dispatch.h`).
fn verdict_bit(verdict: i32) -> Option<u32> {
    match verdict {
        0..=29 => Some(verdict as u32),
        -1 => Some(30),
        128 => Some(31),
        _ => None,
    }
}

fn continue_mask(op: &str, continue_on: &[i32]) -> Result<u32> {
    continue_on.iter().try_fold(0u32, |mask, &v| {
        verdict_bit(v).map(|bit| mask | 1 << bit).ok_or_else(|| {
            Error::invalid_input(
                op.to_string(),
                format!("verdict {v} cannot go on: use 0..=29, -1 (TC_ACT_UNSPEC) or 128 (BPF_LWT_REROUTE)"),
            )
        })
    })
}

/// The four words of the object's ABI variable `var` in `.rodata` (`lwtun_dispatch_abi`,
/// `lwtun_chain_abi`), found through the object's BTF; `None` when the object has no such
/// variable (it is not dispatch- or chain-aware).
pub(super) fn read_abi(op: &str, open: &OpenObject, var: &str) -> Result<Option<[u32; 4]>> {
    // SAFETY: the pointer is the open object's, valid while `open` is borrowed.
    let btf = Btf::from_bpf_object(unsafe { open.as_libbpf_object().as_ref() })
        .map_err(|e| Error::bpf(op.to_string(), e))?;
    let Some(btf) = btf else {
        return Ok(None);
    };
    let Some(rodata) = btf.type_by_name::<DataSec<'_>>(".rodata") else {
        return Ok(None);
    };
    let Some(offset) = rodata.iter().find_map(|v| {
        let found = btf.type_by_id::<Var<'_>>(v.ty)?;
        (found.name()?.to_str()? == var).then_some(v.offset as usize)
    }) else {
        return Ok(None);
    };
    let bytes = open
        .maps()
        .find(|m| m.name().to_string_lossy().ends_with(".rodata"))
        .and_then(|m| m.initial_value().map(<[u8]>::to_vec))
        .ok_or_else(|| Error::invalid_input(op.to_string(), format!("{var} but no .rodata map")))?;
    let field = bytes.get(offset..offset + 16).ok_or_else(|| {
        Error::invalid_input(op.to_string(), format!("{var} lies outside .rodata"))
    })?;
    let word = |i: usize| u32::from_ne_bytes(field[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    Ok(Some([word(0), word(1), word(2), word(3)]))
}

/// The ABI check proper: magic, dispatcher version and slot count must be this library's.
fn check_abi_words(op: &str, what: &str, [magic, version, slots, _]: [u32; 4]) -> Result<()> {
    if magic != MAGIC {
        return Err(Error::invalid_input(
            op.to_string(),
            format!(
                "{what}: magic {magic:#x}, expected {MAGIC:#x}: not an lwtun dispatcher object"
            ),
        ));
    }
    if version != DISPATCH_VERSION || slots != DISPATCH_SLOTS {
        return Err(Error::invalid_input(
            op.to_string(),
            format!(
                "{what}: dispatcher ABI version {version} with {slots} slots, this library speaks \
                 version {DISPATCH_VERSION} with {DISPATCH_SLOTS}: rebuild the object against \
                 this lwtun's bpf/dispatch.h"
            ),
        ));
    }
    Ok(())
}

/// What a counting member (`crate::skel::dispatch_member::OBJECT`) saw, summed over the CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberStats {
    /// Packets that ran the member.
    pub packets: u64,
    /// Their bytes (from the hook's start of packet).
    pub bytes: u64,
    /// Sum of the positions (1 = first member of the run) it ran at.
    pub depth_sum: u64,
    /// Sum of the slots it ran in.
    pub slot_sum: u64,
}

impl MemberStats {
    /// The member's mean position in the runs it took part in (1 = first), `None` before any
    /// packet: its place in the order while the members did not change.
    pub fn position(&self) -> Option<f64> {
        (self.packets > 0).then(|| self.depth_sum as f64 / self.packets as f64)
    }

    /// What changed since `earlier` (counters only grow).
    pub fn since(&self, earlier: &MemberStats) -> MemberStats {
        MemberStats {
            packets: self.packets - earlier.packets,
            bytes: self.bytes - earlier.bytes,
            depth_sum: self.depth_sum - earlier.depth_sum,
            slot_sum: self.slot_sum - earlier.slot_sum,
        }
    }
}

/// What a `dispatch_member` instance (loaded by [`Dispatcher::attach`] from
/// `crate::skel::dispatch_member::OBJECT`) counted.
///
/// # Errors
///
/// NotFound when the object is not a dispatch_member; the kernel's error otherwise.
pub fn member_stats(object: &Object) -> Result<MemberStats> {
    let op = "read dispatcher member counters";
    let map = object
        .maps()
        .find(|m| m.name().to_str() == Some("member_stats"))
        .ok_or_else(|| Error::not_found(op, "map member_stats"))?;
    let values = map
        .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
        .map_err(|e| Error::bpf(op, e))?
        .unwrap_or_default();
    let mut total = MemberStats::default();
    for v in values {
        let s: lwtun_dispatch_member_stats = abi::from_bytes(&v).ok_or_else(|| {
            Error::other(ErrorKind::Kernel, op, format!("value of {} bytes", v.len()))
        })?;
        total.packets += s.packets;
        total.bytes += s.bytes;
        total.depth_sum += s.depth_sum;
        total.slot_sum += s.slot_sum;
    }
    Ok(total)
}

/// Sets the verdict a `dispatch_member` instance returns (`None`: the hook's pass verdict).
///
/// # Errors
///
/// NotFound when the object is not a dispatch_member; the kernel's error otherwise.
pub fn set_member_verdict(object: &Object, verdict: Option<i32>) -> Result<()> {
    let op = "set member verdict";
    let map = object
        .maps()
        .find(|m| m.name().to_str() == Some("member_verdict"))
        .ok_or_else(|| Error::not_found(op, "map member_verdict"))?;
    map.update(
        &1u32.to_ne_bytes(),
        &verdict.unwrap_or(0).to_ne_bytes(),
        MapFlags::ANY,
    )
    .map_err(|e| Error::bpf(op, e))?;
    map.update(
        &0u32.to_ne_bytes(),
        &i32::from(verdict.is_some()).to_ne_bytes(),
        MapFlags::ANY,
    )
    .map_err(|e| Error::bpf(op, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_bits_match_the_header() {
        assert_eq!(continue_mask("t", &[]).unwrap(), 0);
        assert_eq!(continue_mask("t", &[0, 2]).unwrap(), 0b101);
        assert_eq!(continue_mask("t", &[-1]).unwrap(), 1 << 30);
        assert_eq!(continue_mask("t", &[128]).unwrap(), 1 << 31);
        for bad in [-2, 30, 31, 127, 129] {
            let e = continue_mask("t", &[bad]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn abi_is_found_in_aware_objects_only() {
        for (name, bytes) in [
            ("dispatch", crate::skel::dispatch::OBJECT),
            ("dispatch_member", crate::skel::dispatch_member::OBJECT),
        ] {
            let open = open_object(name, bytes, "t").unwrap();
            let words = read_abi("t", &open, ABI_VAR).unwrap().expect(name);
            check_abi_words("t", name, words).unwrap();
        }
        let open = open_object("lwt_count", crate::skel::lwt_count::OBJECT, "t").unwrap();
        assert_eq!(read_abi("t", &open, ABI_VAR).unwrap(), None);
    }

    #[test]
    fn abi_check_refuses_mismatches() {
        let ok = [MAGIC, DISPATCH_VERSION, DISPATCH_SLOTS, 0];
        assert!(check_abi_words("t", "x", ok).is_ok());
        let e =
            check_abi_words("t", "x", [0xdead, DISPATCH_VERSION, DISPATCH_SLOTS, 0]).unwrap_err();
        assert!(
            e.to_string().contains("not an lwtun dispatcher object"),
            "{e}"
        );
        let e = check_abi_words("t", "x", [MAGIC, 1, DISPATCH_SLOTS, 0]).unwrap_err();
        assert!(e.to_string().contains("rebuild"), "{e}");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(check_abi_words("t", "x", [MAGIC, DISPATCH_VERSION, 16, 0]).is_err());
    }
}
