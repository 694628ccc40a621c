//! [`ProgChain`]: the entry program, its prog array and next table, and the stage order.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use libbpf_rs::{MapCore, MapFlags, Object, OpenObject, ProgramType};

use super::membership;
pub(crate) use crate::abi::{ABI_VERSION, MAGIC};
use crate::error::{Error, ErrorKind, Result};
use crate::program::{open_object, program_info, LwtProgram, ProgramInfo};
use crate::skel::chain::types::{lwtun_chain_abi, lwtun_chain_config};

/// Stage slots of a chain (`LWTUN_CHAIN_SLOTS` in `bpf/lwtun.h`).
pub const SLOTS: u32 = 32;
/// Index of the head entry in the next table.
const HEAD: u32 = SLOTS;
/// "No next stage".
const END: u32 = u32::MAX;

/// The maps every chain object shares with the entry's (declared in `bpf/chain.h`).
const SHARED_MAPS: [&str; 5] = [
    "chain_progs",
    "chain_next",
    "chain_cursor",
    "chain_exit",
    "chain_config",
];

/// The hook a chain runs at; all its stages have the matching program type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChainHook {
    /// XDP (`BPF_PROG_TYPE_XDP`); packets start at the Ethernet header.
    Xdp,
    /// tc clsact or tcx (`BPF_PROG_TYPE_SCHED_CLS`); packets start at the Ethernet header.
    Tc,
    /// A route's `lwt_in` hook; packets start at the IP header.
    LwtIn,
    /// A route's `lwt_out` hook; packets start at the IP header.
    LwtOut,
    /// A route's `lwt_xmit` hook; packets start at the IP header.
    LwtXmit,
}

impl ChainHook {
    /// The BPF program type of this hook's programs.
    pub fn program_type(self) -> ProgramType {
        match self {
            ChainHook::Xdp => ProgramType::Xdp,
            ChainHook::Tc => ProgramType::SchedCls,
            ChainHook::LwtIn => ProgramType::LwtIn,
            ChainHook::LwtOut => ProgramType::LwtOut,
            ChainHook::LwtXmit => ProgramType::LwtXmit,
        }
    }

    /// `LWTUN_CHAIN_HOOK_*` (as recorded in capture metadata).
    pub fn code(self) -> u32 {
        match self {
            ChainHook::Xdp => 0,
            ChainHook::Tc => 1,
            ChainHook::LwtIn => 2,
            ChainHook::LwtOut => 3,
            ChainHook::LwtXmit => 4,
        }
    }

    /// The hook of an `LWTUN_CHAIN_HOOK_*` code.
    pub fn from_code(code: u32) -> Option<ChainHook> {
        Some(match code {
            0 => ChainHook::Xdp,
            1 => ChainHook::Tc,
            2 => ChainHook::LwtIn,
            3 => ChainHook::LwtOut,
            4 => ChainHook::LwtXmit,
            _ => return None,
        })
    }

    /// Whether packets at this hook start at the IP header (the LWT hooks) rather than at the
    /// Ethernet header.
    pub fn starts_at_ip(self) -> bool {
        matches!(
            self,
            ChainHook::LwtIn | ChainHook::LwtOut | ChainHook::LwtXmit
        )
    }

    /// The verdict the chain returns when no stage decides: pass the packet on (XDP_PASS,
    /// TC_ACT_UNSPEC, BPF_OK).
    pub fn pass_verdict(self) -> i32 {
        match self {
            ChainHook::Xdp => 2,
            ChainHook::Tc => -1,
            _ => 0,
        }
    }

    /// Refuses a verdict the hook does not know (the kernel would drop the packet, or abort
    /// it at XDP): XDP 0..=4, tc -1..=8 (`TC_ACT_*`), `lwt_in` 0, 2, 128 (`BPF_OK`, `BPF_DROP`,
    /// `BPF_LWT_REROUTE`), `lwt_out` 0, 2, `lwt_xmit` 0, 2, 7 (`BPF_REDIRECT`), 128.
    pub(crate) fn check_verdict(self, op: &str, verdict: i32) -> Result<()> {
        let (ok, known): (bool, &str) = match self {
            ChainHook::Xdp => (
                (0..=4).contains(&verdict),
                "0..=4 (XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT)",
            ),
            ChainHook::Tc => (
                (-1..=8).contains(&verdict),
                "-1..=8 (TC_ACT_UNSPEC, TC_ACT_OK, …, TC_ACT_SHOT 2, …, TC_ACT_TRAP 8)",
            ),
            ChainHook::LwtIn => (
                matches!(verdict, 0 | 2 | 128),
                "0 (BPF_OK), 2 (BPF_DROP), 128 (BPF_LWT_REROUTE)",
            ),
            ChainHook::LwtOut => (matches!(verdict, 0 | 2), "0 (BPF_OK), 2 (BPF_DROP)"),
            ChainHook::LwtXmit => (
                matches!(verdict, 0 | 2 | 7 | 128),
                "0 (BPF_OK), 2 (BPF_DROP), 7 (BPF_REDIRECT), 128 (BPF_LWT_REROUTE)",
            ),
        };
        if ok {
            return Ok(());
        }
        Err(Error::invalid_input(
            op,
            format!("verdict {verdict} is not one the {self} hook knows: give {known}"),
        ))
    }

    fn entry_name(self) -> &'static str {
        match self {
            ChainHook::Xdp => "chain_xdp",
            ChainHook::Tc => "chain_tc",
            ChainHook::LwtIn => "chain_lwt_in",
            ChainHook::LwtOut => "chain_lwt_out",
            ChainHook::LwtXmit => "chain_lwt_xmit",
        }
    }
}

impl fmt::Display for ChainHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChainHook::Xdp => "xdp",
            ChainHook::Tc => "tc",
            ChainHook::LwtIn => "lwt_in",
            ChainHook::LwtOut => "lwt_out",
            ChainHook::LwtXmit => "lwt_xmit",
        })
    }
}

/// A stage of a chain: the prog array slot it occupies (stable while it stays in the chain) and
/// a serial number, so the id of a removed stage never names a later stage in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StageId(pub(crate) u32, u64);

impl StageId {
    /// The prog array slot.
    pub fn slot(self) -> u32 {
        self.0
    }
}

impl fmt::Display for StageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stage {} (#{})", self.0, self.1)
    }
}

/// A stage as [`ProgChain::stages`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageInfo {
    /// The stage.
    pub id: StageId,
    /// The program in it.
    pub program: ProgramInfo,
}

struct Stage {
    fd: OwnedFd,
    info: ProgramInfo,
    serial: u64,
}

/// Programs of one type joined by tail calls, in the order the caller sets.
///
/// Kernel: Linux 5.2+ (global data in `.rodata`; tail calls 4.2; tcx: 6.6+).
///
/// The chain owns its entry program and prog array, and holds a reference to every stage program,
/// so nothing vanishes while the chain lives. Attach [`ProgChain::entry`] at the hook (an XDP or
/// tc attach, or a route's program via [`ProgChain::lwt_entry`]). [`insert`](Self::insert),
/// [`remove`](Self::remove) and [`replace`](Self::replace) change the running chain atomically:
/// a packet runs the old order or the new one, and a stage on its way in or out is skipped rather
/// than dropping the packet. Up to 32 stages.
///
/// When the chain ends (the last chain-aware stage went on, or the chain is empty), packets leave
/// through the exit hook, where [`set_exit`](Self::set_exit) attaches a program such as a capture.
///
/// Lifetime: dropping the chain closes its prog arrays, and the kernel clears a prog array's
/// entries when its last user-space reference goes away, so a hook still running the entry
/// (a route, a tc or XDP attachment that outlives the chain) then passes every packet with the
/// chain's verdict. Keep the chain as long as its hook.
///
/// # Examples
///
/// ```no_run
/// use lwtun::chain::{ChainHook, CountingStage, ProgChain};
///
/// let mut chain = ProgChain::new(ChainHook::LwtXmit)?;
/// let counting = CountingStage::load(&chain)?;
/// let first = chain.push(counting.program())?;
/// let second = chain.push(counting.program())?;
/// // ... attach chain.lwt_entry()? to a route, send traffic ...
/// println!("{:?} {:?}", counting.stats(first)?, counting.stats(second)?);
/// # Ok::<(), lwtun::Error>(())
/// ```
pub struct ProgChain {
    hook: ChainHook,
    object: Object,
    entry: OwnedFd,
    entry_info: ProgramInfo,
    slots: Vec<Option<Stage>>,
    order: Vec<u32>,
    exit: Option<Stage>,
    serial: u64,
    /// The ids of the shared maps ([`SHARED_MAPS`]), to tell this chain's programs from
    /// another chain's.
    map_ids: Vec<(&'static str, u32)>,
}

impl fmt::Debug for ProgChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProgChain")
            .field("hook", &self.hook)
            .field("entry", &self.entry_info)
            .field("order", &self.order)
            .field("exit", &self.exit.as_ref().map(|s| &s.info))
            .finish()
    }
}

impl ProgChain {
    /// Loads an empty chain for `hook`: packets pass with the hook's pass verdict until stages
    /// are added.
    ///
    /// # Errors
    ///
    /// Permission without CAP_BPF; Kernel when the chain object's ABI does not match this library.
    pub fn new(hook: ChainHook) -> Result<Self> {
        let mut open = open_object("chain", crate::skel::chain::OBJECT, "open BPF object chain")?;
        check_abi(
            &open,
            "chain",
            std::mem::offset_of!(crate::skel::chain::types::rodata, lwtun_chain_abi),
        )?;
        select_programs(&mut open, hook);
        let object = load(open, "chain")?;
        let entry = crate::program::program_fd(&object, hook.entry_name())?;
        let entry_info = program_info(entry.as_fd())?;
        let map_ids = shared_map_ids(&object)?;
        let chain = ProgChain {
            hook,
            object,
            entry,
            entry_info,
            slots: (0..SLOTS).map(|_| None).collect(),
            order: Vec::new(),
            exit: None,
            serial: 0,
            map_ids,
        };
        chain.write_next(HEAD, END)?;
        chain.write_config(hook.pass_verdict())?;
        Ok(chain)
    }

    /// The hook the chain's programs are for.
    pub fn hook(&self) -> ChainHook {
        self.hook
    }

    /// The entry program: attach it where the chain should run.
    pub fn entry(&self) -> BorrowedFd<'_> {
        self.entry.as_fd()
    }

    /// The kernel's facts about the entry program.
    pub fn entry_info(&self) -> &ProgramInfo {
        &self.entry_info
    }

    /// The entry program as an LWT program, to give a route ([`crate::route::LwtRoute::program`]).
    ///
    /// # Errors
    ///
    /// InvalidInput when the chain is not for an LWT hook.
    pub fn lwt_entry(&self) -> Result<LwtProgram> {
        let fd = self
            .entry
            .try_clone()
            .map_err(|e| Error::io("duplicate program fd", e))?;
        LwtProgram::from_fd(fd)
    }

    /// Sets the verdict the chain returns when no stage decides (the hook's pass verdict at first).
    ///
    /// # Errors
    ///
    /// InvalidInput for a verdict the hook does not know (XDP 0..=4, tc -1..=8, `lwt_in` 0, 2,
    /// 128, `lwt_out` 0, 2, `lwt_xmit` 0, 2, 7, 128); the kernel's error updating the config map.
    pub fn set_verdict(&mut self, verdict: i32) -> Result<()> {
        self.hook.check_verdict("set chain verdict", verdict)?;
        self.write_config(verdict)
    }

    /// Appends `program` as the last stage.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    pub fn push(&mut self, program: impl AsFd) -> Result<StageId> {
        self.insert(self.order.len(), program)
    }

    /// Inserts `program` so that it runs at `position` (0 = first), the stages from there on
    /// moving one place later.
    ///
    /// # Errors
    ///
    /// InvalidInput when `program` is not a BPF program, its type is not the chain's, it is the
    /// chain's own entry, it was loaded for another chain or dispatcher (a [`CountingStage`] or
    /// capture loaded with another chain), it is this chain's exit program, it is a program that
    /// knows no chain and is in the chain already (its first copy ends the chain, so the second
    /// would never run), the position is past the end or the chain is full (32 stages); the
    /// kernel's error otherwise. Nothing is changed when it fails.
    ///
    /// [`CountingStage`]: super::CountingStage
    pub fn insert(&mut self, position: usize, program: impl AsFd) -> Result<StageId> {
        self.insert_stage(position, program.as_fd(), None)
    }

    /// [`insert`](Self::insert), where the stage in slot `moving` (about to leave) is no
    /// duplicate of the program.
    fn insert_stage(
        &mut self,
        position: usize,
        program: BorrowedFd<'_>,
        moving: Option<u32>,
    ) -> Result<StageId> {
        let op = "insert chain stage";
        if position > self.order.len() {
            return Err(Error::invalid_input(
                op,
                format!(
                    "position {position} is past the end of a chain of {} stages",
                    self.order.len()
                ),
            ));
        }
        let slot = self.slots.iter().position(Option::is_none).ok_or_else(|| {
            Error::invalid_input(op, format!("the chain is full ({SLOTS} stages)"))
        })? as u32;
        let mut stage = self.stage_of(op, program)?;
        self.check_stage(op, &stage, moving)?;
        self.serial += 1;
        stage.serial = self.serial;
        let prev = self.before(position);
        let succ = self.order.get(position).copied().unwrap_or(END);
        // The stage first, then its link onward, then the link to it: a packet sees the chain
        // without it or with it complete.
        self.write_prog(slot, Some(stage.fd.as_fd()))?;
        if let Err(e) = self.write_next(slot, succ) {
            let _ = self.write_prog(slot, None);
            return Err(e);
        }
        if let Err(e) = self.write_next(prev, slot) {
            let _ = self.write_prog(slot, None);
            return Err(e);
        }
        let id = StageId(slot, stage.serial);
        self.slots[slot as usize] = Some(stage);
        self.order.insert(position, slot);
        Ok(id)
    }

    /// Takes a stage out of the chain; packets go from the stage before it straight to the one
    /// after it.
    ///
    /// # Errors
    ///
    /// NotFound when `id` is not in the chain; the kernel's error otherwise.
    pub fn remove(&mut self, id: StageId) -> Result<()> {
        let position = self.position(id, "remove chain stage")?;
        let prev = self.before(position);
        let succ = self.order.get(position + 1).copied().unwrap_or(END);
        // Unlink first; the slot keeps its next entry, so a packet already on its way to it goes on
        // to the right stage, and an emptied slot is skipped.
        self.write_next(prev, succ)?;
        self.write_prog(id.0, None)?;
        self.order.remove(position);
        self.slots[id.0 as usize] = None;
        Ok(())
    }

    /// Replaces the program of a stage in one prog array write: each packet runs the old
    /// program or the new one.
    ///
    /// # Errors
    ///
    /// NotFound when `id` is not in the chain; InvalidInput for a program that cannot be a
    /// stage (as [`insert`](Self::insert) says). The old program stays when it fails.
    pub fn replace(&mut self, id: StageId, program: impl AsFd) -> Result<()> {
        let op = "replace chain stage";
        self.position(id, op)?;
        let mut stage = self.stage_of(op, program.as_fd())?;
        self.check_stage(op, &stage, Some(id.0))?;
        stage.serial = id.1;
        self.write_prog(id.0, Some(stage.fd.as_fd()))?;
        self.slots[id.0 as usize] = Some(stage);
        Ok(())
    }

    /// Moves a stage to `position` in the order (remove and insert, each atomic).
    ///
    /// # Errors
    ///
    /// As [`remove`](Self::remove) and [`insert`](Self::insert).
    pub fn move_to(&mut self, id: StageId, position: usize) -> Result<StageId> {
        let fd = {
            self.position(id, "move chain stage")?;
            let stage = self.slots[id.0 as usize].as_ref().expect("stage in order");
            stage
                .fd
                .try_clone()
                .map_err(|e| Error::io("duplicate program fd", e))?
        };
        let new = self.insert_stage(position.min(self.order.len()), fd.as_fd(), Some(id.0))?;
        self.remove(id)?;
        Ok(new)
    }

    /// The stages in the order packets run them.
    pub fn stages(&self) -> Vec<StageInfo> {
        self.order
            .iter()
            .map(|&slot| {
                let stage = self.slots[slot as usize]
                    .as_ref()
                    .expect("ordered slot holds a stage");
                StageInfo {
                    id: StageId(slot, stage.serial),
                    program: stage.info.clone(),
                }
            })
            .collect()
    }

    /// Attaches `program` to the exit hook: it runs for every packet that leaves the chain through
    /// `lwtun_chain_next()` or an empty chain, and returns the packet's verdict (`bpf/chain.h`'s
    /// `lwtun_chain_verdict()`). Replaces the program there.
    ///
    /// # Errors
    ///
    /// InvalidInput when `program` is not a BPF program, its type is not the chain's, it is the
    /// chain's own entry or one of its chain-aware stages (either would call itself at the exit
    /// until the kernel's tail-call limit), or it was loaded for another chain or dispatcher;
    /// the kernel's error otherwise. The exit's program stays when it fails.
    pub fn set_exit(&mut self, program: impl AsFd) -> Result<()> {
        let op = "attach chain exit";
        let stage = self.stage_of(op, program.as_fd())?;
        membership::check_exit(op, &self.owner(), &stage.info)?;
        let fd = stage.fd.as_raw_fd() as u32;
        self.map("chain_exit")?
            .update(&0u32.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| membership::refused(op, e, &stage.info, &self.entry_info))?;
        self.exit = Some(stage);
        Ok(())
    }

    /// Detaches the exit hook's program (the chain then costs one failed tail call at its end).
    ///
    /// # Errors
    ///
    /// The kernel's error.
    pub fn clear_exit(&mut self) -> Result<()> {
        if self.exit.is_none() {
            return Ok(());
        }
        match self.map("chain_exit")?.delete(&0u32.to_ne_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::bpf("detach chain exit", e)),
        }
        self.exit = None;
        Ok(())
    }

    /// The program at the exit hook, if any.
    pub fn exit(&self) -> Option<&ProgramInfo> {
        self.exit.as_ref().map(|s| &s.info)
    }

    /// Makes an object the caller opened with libbpf-rs (not loaded yet) share this chain's maps,
    /// so that its programs built on lwtun's `bpf/chain.h` are stages that know this chain: a
    /// stage that ends with `return lwtun_chain_next(ctx, verdict);` hands the packet to the
    /// stage after it, or through the exit hook (a [`Capture`](crate::capture::Capture) there
    /// sees it) when it is the last. Without this, such a program walks a chain of its own that
    /// nothing fills, and [`push`](Self::push) refuses it as another chain's stage.
    ///
    /// Call it between opening the object ([`libbpf_rs::ObjectBuilder::open_file`] or
    /// `open_memory`) and [`libbpf_rs::OpenObject::load`]. The kernel lets only programs of the
    /// chain's type use its prog arrays: turn off the autoload of the object's other programs
    /// that call into the chain (programs that do not use the chain's maps load as usual). The
    /// chain's maps live as long as the chain or the loaded object, whichever is longer.
    ///
    /// # Errors
    ///
    /// InvalidInput when the object has no `lwtun_chain_abi` (not built on `bpf/chain.h`), was
    /// built against another chain ABI (magic, version or slot count: rebuild it against this
    /// lwtun's `bpf/`), or lacks one of the chain's maps; the kernel's error when a map cannot be
    /// shared. Maps already shared stay shared when it fails; drop the open object then.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::capture::{Capture, CaptureOptions};
    /// use lwtun::chain::{ChainHook, ProgChain};
    /// use lwtun::libbpf_rs::ObjectBuilder;
    ///
    /// let mut chain = ProgChain::new(ChainHook::LwtXmit)?;
    /// let mut open = ObjectBuilder::default()
    ///     .open_file("own_count.bpf.o")
    ///     .map_err(|e| lwtun::Error::bpf("open own_count.bpf.o", e))?;
    /// chain.share_maps(&mut open)?;
    /// let object = open.load().map_err(|e| lwtun::Error::bpf("load own_count.bpf.o", e))?;
    /// let stage = object.progs().find(|p| p.name() == "own_stage").expect("own_stage");
    /// chain.push(&stage)?;                 // goes on with lwtun_chain_next()
    /// let capture = Capture::attach(&mut chain, CaptureOptions::default())?; // sees what it passes
    /// # let _ = capture;
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn share_maps(&self, open: &mut OpenObject) -> Result<()> {
        let op = "share chain maps";
        let [magic, version, slots, _] = super::dispatcher::read_abi(op, open, "lwtun_chain_abi")?
            .ok_or_else(|| {
                Error::invalid_input(
                    op,
                    "the object has no lwtun_chain_abi in .rodata: build its chain stages on \
                     lwtun's bpf/chain.h (#include \"chain.h\" with -I on lwtun's bpf/ folder)",
                )
            })?;
        if magic != MAGIC || version != ABI_VERSION || slots != SLOTS {
            return Err(Error::invalid_input(
                op,
                format!(
                    "the object's lwtun_chain_abi is magic {magic:#x}, version {version}, {slots} \
                     slots; this lwtun's chains are magic {MAGIC:#x}, version {ABI_VERSION}, \
                     {SLOTS} slots: rebuild the object against this lwtun's bpf/chain.h"
                ),
            ));
        }
        for shared in SHARED_MAPS {
            let ours = self.map(shared)?;
            let mut theirs = open
                .maps_mut()
                .find(|m| m.name().to_str() == Some(shared))
                .ok_or_else(|| {
                    Error::invalid_input(
                        op,
                        format!(
                            "the object carries lwtun_chain_abi but no map {shared}: build it on \
                             lwtun's bpf/chain.h"
                        ),
                    )
                })?;
            theirs
                .reuse_fd(ours.as_fd())
                .map_err(|e| Error::bpf(format!("{op}: {shared}"), e))?;
        }
        Ok(())
    }

    /// Opens a chain-aware object (built on `bpf/chain.h`) so it shares this chain's maps, loading
    /// only its programs of the chain's type. `abi_offset` is the offset of `lwtun_chain_abi` in
    /// the object's `.rodata`; `configure` may set other read-only values before the load.
    pub(crate) fn open_member(
        &self,
        name: &str,
        bytes: &'static [u8],
        abi_offset: usize,
        configure: impl FnOnce(&mut OpenObject) -> Result<()>,
    ) -> Result<Object> {
        let mut open = open_object(name, bytes, &format!("open BPF object {name}"))?;
        check_abi(&open, name, abi_offset)?;
        select_programs(&mut open, self.hook);
        for shared in SHARED_MAPS {
            let ours = self.map(shared)?;
            let mut theirs = open
                .maps_mut()
                .find(|m| m.name().to_str() == Some(shared))
                .ok_or_else(|| {
                    Error::other(
                        ErrorKind::Kernel,
                        format!("load chain member {name}"),
                        format!("object has no map {shared}: not built on bpf/chain.h"),
                    )
                })?;
            theirs
                .reuse_fd(ours.as_fd())
                .map_err(|e| Error::bpf(format!("share {shared} with {name}"), e))?;
        }
        configure(&mut open)?;
        load(open, name)
    }

    /// The program of the chain's type named `name` in a loaded member object.
    pub(crate) fn member_program(&self, object: &Object, name: &str) -> Result<OwnedFd> {
        let prog = object
            .progs()
            .find(|p| p.name() == name && p.prog_type() == self.hook.program_type())
            .ok_or_else(|| {
                Error::not_found(
                    "find chain member program",
                    format!("{name} for {}", self.hook),
                )
            })?;
        prog.as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::io("duplicate program fd", e))
    }

    fn stage_of(&self, op: &str, fd: BorrowedFd<'_>) -> Result<Stage> {
        let info = program_info(fd)?;
        let want = self.hook.program_type() as u32;
        if info.prog_type != want {
            return Err(Error::invalid_input(
                op.to_string(),
                format!(
                    "program {} (id {}) has type {}, a {} chain takes type {}",
                    info.name,
                    info.id,
                    crate::bpf_fd::prog_type_name(info.prog_type),
                    self.hook,
                    crate::bpf_fd::prog_type_name(want)
                ),
            ));
        }
        let fd = fd
            .try_clone_to_owned()
            .map_err(|e| Error::io("duplicate program fd", e))?;
        Ok(Stage {
            fd,
            info,
            serial: 0,
        })
    }

    fn owner(&self) -> membership::Owner<'_> {
        membership::Owner {
            what: "chain",
            hook: self.hook,
            map_prefix: "chain_",
            entry: &self.entry_info,
            maps: &self.map_ids,
        }
    }

    /// Refuses what cannot be a stage of this chain; `replacing` is the slot a replace writes
    /// (its old program is no duplicate).
    fn check_stage(&self, op: &str, stage: &Stage, replacing: Option<u32>) -> Result<()> {
        let kind = membership::check_stage(op, &self.owner(), &stage.info, true)?;
        if kind != membership::Kind::Plain && kind != membership::Kind::OtherEntry {
            return Ok(());
        }
        let twin = self.order.iter().enumerate().find(|(_, &slot)| {
            Some(slot) != replacing
                && self.slots[slot as usize].as_ref().map(|s| s.info.id) == Some(stage.info.id)
        });
        if let Some((position, _)) = twin {
            return Err(Error::invalid_input(
                op.to_string(),
                format!(
                    "program {} (id {}) is this chain's stage at position {position} already; it \
                     knows no chain and ends the chain with its own verdict, so a second copy \
                     would never run",
                    stage.info.name, stage.info.id
                ),
            ));
        }
        Ok(())
    }

    fn position(&self, id: StageId, op: &str) -> Result<usize> {
        self.order
            .iter()
            .position(|&s| {
                s == id.0 && self.slots[s as usize].as_ref().map(|st| st.serial) == Some(id.1)
            })
            .ok_or_else(|| Error::not_found(op.to_string(), format!("{id} in the chain")))
    }

    fn before(&self, position: usize) -> u32 {
        if position == 0 {
            HEAD
        } else {
            self.order[position - 1]
        }
    }

    fn map(&self, name: &str) -> Result<libbpf_rs::Map<'_>> {
        self.object
            .maps()
            .find(|m| m.name().to_str() == Some(name))
            .ok_or_else(|| Error::not_found("find chain map", name.to_string()))
    }

    fn write_next(&self, slot: u32, next: u32) -> Result<()> {
        self.map("chain_next")?
            .update(&slot.to_ne_bytes(), &next.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::bpf("link chain stages", e))
    }

    fn write_prog(&self, slot: u32, fd: Option<BorrowedFd<'_>>) -> Result<()> {
        let map = self.map("chain_progs")?;
        match fd {
            Some(fd) => map
                .update(
                    &slot.to_ne_bytes(),
                    &(fd.as_raw_fd() as u32).to_ne_bytes(),
                    MapFlags::ANY,
                )
                .map_err(|e| match program_info(fd) {
                    Ok(info) => membership::refused("set chain stage", e, &info, &self.entry_info),
                    Err(_) => Error::bpf("set chain stage", e),
                }),
            None => match map.delete(&slot.to_ne_bytes()) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::bpf("clear chain stage", e)),
            },
        }
    }

    fn write_config(&self, verdict: i32) -> Result<()> {
        let cfg = lwtun_chain_config {
            magic: MAGIC,
            version: ABI_VERSION,
            verdict,
            pad: 0,
        };
        // SAFETY: lwtun_chain_config is four 32-bit integers (16 bytes, asserted in lwtun.h).
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&cfg as *const lwtun_chain_config).cast::<u8>(),
                std::mem::size_of::<lwtun_chain_config>(),
            )
        };
        self.map("chain_config")?
            .update(&0u32.to_ne_bytes(), bytes, MapFlags::ANY)
            .map_err(|e| Error::bpf("write chain config", e))
    }
}

/// The ids of the chain's shared maps.
fn shared_map_ids(object: &Object) -> Result<Vec<(&'static str, u32)>> {
    SHARED_MAPS
        .iter()
        .map(|&name| {
            let map = object
                .maps()
                .find(|m| m.name().to_str() == Some(name))
                .ok_or_else(|| Error::not_found("find chain map", name.to_string()))?;
            let info = libbpf_rs::MapInfo::new(map.as_fd())
                .map_err(|e| Error::bpf("read chain map info", e))?;
            Ok((name, info.info.id))
        })
        .collect()
}

fn load(open: OpenObject, name: &str) -> Result<Object> {
    let op = format!("load BPF object {name}");
    crate::program::load_opened(open, &op)
}

/// Loads only the programs of `hook`'s type: a prog array takes programs of one type.
fn select_programs(open: &mut OpenObject, hook: ChainHook) {
    for mut prog in open.progs_mut() {
        let ours = prog.prog_type() == hook.program_type();
        prog.set_autoload(ours);
    }
}

/// Checks the object's `lwtun_chain_abi` (in `.rodata` at `offset`) against this library's.
fn check_abi(open: &OpenObject, name: &str, offset: usize) -> Result<()> {
    let op = format!("check chain ABI of {name}");
    let rodata = open
        .maps()
        .find(|m| m.name().to_string_lossy().ends_with(".rodata"))
        .and_then(|m| m.initial_value().map(<[u8]>::to_vec))
        .ok_or_else(|| {
            Error::other(
                ErrorKind::Kernel,
                op.clone(),
                "object has no .rodata with lwtun_chain_abi",
            )
        })?;
    let size = std::mem::size_of::<lwtun_chain_abi>();
    let bytes = rodata.get(offset..offset + size).ok_or_else(|| {
        Error::other(
            ErrorKind::Kernel,
            op.clone(),
            "lwtun_chain_abi lies outside .rodata",
        )
    })?;
    let word = |i: usize| u32::from_ne_bytes(bytes[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    check_abi_words(&op, word(0), word(1), word(2))
}

/// The ABI check proper: magic, version and slot count must be this library's.
pub(crate) fn check_abi_words(op: &str, magic: u32, version: u32, slots: u32) -> Result<()> {
    if magic != MAGIC {
        return Err(Error::other(
            ErrorKind::Kernel,
            op.to_string(),
            format!("magic {magic:#x}, expected {MAGIC:#x}: not an lwtun chain object"),
        ));
    }
    if version != ABI_VERSION || slots != SLOTS {
        return Err(Error::other(
            ErrorKind::Kernel,
            op.to_string(),
            format!(
                "ABI version {version} with {slots} slots, this library speaks version \
                 {ABI_VERSION} with {SLOTS}: rebuild the object against this lwtun"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_check_refuses_mismatches() {
        assert!(check_abi_words("t", MAGIC, ABI_VERSION, SLOTS).is_ok());
        let e = check_abi_words("t", 0xdead, ABI_VERSION, SLOTS).unwrap_err();
        assert!(e.to_string().contains("not an lwtun chain object"), "{e}");
        let e = check_abi_words("t", MAGIC, ABI_VERSION + 1, SLOTS).unwrap_err();
        assert!(e.to_string().contains("rebuild"), "{e}");
        assert!(check_abi_words("t", MAGIC, ABI_VERSION, 16).is_err());
    }

    #[test]
    fn embedded_objects_carry_this_abi() {
        for (name, bytes, offset) in [
            (
                "chain",
                crate::skel::chain::OBJECT,
                std::mem::offset_of!(crate::skel::chain::types::rodata, lwtun_chain_abi),
            ),
            (
                "chain_stages",
                crate::skel::chain_stages::OBJECT,
                std::mem::offset_of!(crate::skel::chain_stages::types::rodata, lwtun_chain_abi),
            ),
            (
                "capture",
                crate::skel::capture::OBJECT,
                std::mem::offset_of!(crate::skel::capture::types::rodata, lwtun_chain_abi),
            ),
        ] {
            let open = open_object(name, bytes, "t").unwrap();
            check_abi(&open, name, offset).unwrap();
        }
    }

    #[test]
    fn hook_codes_round_trip() {
        for h in [
            ChainHook::Xdp,
            ChainHook::Tc,
            ChainHook::LwtIn,
            ChainHook::LwtOut,
            ChainHook::LwtXmit,
        ] {
            assert_eq!(ChainHook::from_code(h.code()), Some(h));
        }
        assert_eq!(ChainHook::from_code(9), None);
    }
}
