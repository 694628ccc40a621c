//! [`Dispatcher`]: one root program per hook that runs independent programs in order, each
//! verdict deciding whether the next runs (libxdp's design, for XDP, tc and the LWT hooks).
//!
//! Why freplace and not tail calls: a tail call never returns, so a program reached by one decides
//! alone what happens next; only programs written for a chain ([`super::ProgChain`]) can go on.
//! A dispatcher must run programs that know nothing of it and look at their verdicts. The root
//! calls one stub function per slot; a member is loaded as `BPF_PROG_TYPE_EXT` (freplace) against
//! a stub and returns to the root like a function, which then applies the slot's continue mask.
//! Attaching or detaching a freplace link swaps one stub's code atomically while the root stays
//! attached, so members come and go under traffic without a packet lost.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use libbpf_rs::{AsRawLibbpf, MapCore, MapFlags, Object, ProgramType};

use super::prog_chain::{check_abi_words, ChainHook, ABI_VERSION, MAGIC};
use crate::error::{Error, ErrorKind, Result};
use crate::program::{program_info, LwtProgram, ProgramInfo};

/// Slots of a dispatcher (`LWTUN_DISPATCH_SLOTS`).
pub const DISPATCH_SLOTS: u32 = 8;

/// A dispatcher slot holding a member (slots run in ascending order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(u32);

impl MemberId {
    /// The slot (0 runs first).
    pub fn slot(self) -> u32 {
        self.0
    }
}

struct Member {
    object: Object,
    link: OwnedFd,
    info: ProgramInfo,
}

/// A root program that runs up to 8 independent programs in slot order.
///
/// Members are programs of the hook's type in a BPF object (for example a `crate::skel::*::OBJECT`),
/// reloaded as freplace programs against one of the root's stubs. A member's verdict `v` lets the
/// next slot run when `v` is among the verdicts it was attached with (`continue_on`); otherwise
/// the root returns `v`. When every member went on, the root returns the dispatcher's verdict
/// (the hook's pass verdict unless [`set_verdict`](Self::set_verdict) changed it).
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
/// d.detach(first)?; // the stub returns: slot 0 is skipped from the next packet on
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
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("hook", &self.hook)
            .field("entry", &self.entry_info)
            .field(
                "members",
                &self
                    .members
                    .iter()
                    .map(|(s, m)| (s, &m.info))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn stub_prefix(hook: ChainHook) -> &'static str {
    match hook {
        ChainHook::Xdp => "xdp",
        _ => "skb",
    }
}

impl Dispatcher {
    /// Loads an empty dispatcher for `hook` (it passes every packet until members come).
    ///
    /// # Errors
    ///
    /// Permission without CAP_BPF; Kernel on an ABI mismatch.
    pub fn new(hook: ChainHook) -> Result<Self> {
        let op = "load dispatcher";
        let mut open = libbpf_rs::ObjectBuilder::default()
            .name("dispatch")
            .map_err(|e| Error::bpf(op, e))?
            .open_memory(crate::skel::dispatch::OBJECT)
            .map_err(|e| Error::bpf(op, e))?;
        {
            let offset =
                std::mem::offset_of!(crate::skel::dispatch::types::rodata, lwtun_dispatch_abi);
            let rodata = open
                .maps()
                .find(|m| m.name().to_string_lossy().ends_with(".rodata"))
                .and_then(|m| m.initial_value().map(<[u8]>::to_vec))
                .unwrap_or_default();
            let word = |i: usize| {
                rodata
                    .get(offset + i * 4..offset + i * 4 + 4)
                    .map(|b| u32::from_ne_bytes(b.try_into().expect("4")))
                    .unwrap_or(0)
            };
            check_abi_words("check dispatcher ABI", word(0), word(1), 32).and_then(|()| {
                if word(2) == DISPATCH_SLOTS {
                    Ok(())
                } else {
                    Err(Error::other(
                        ErrorKind::Kernel,
                        "check dispatcher ABI",
                        format!("{} slots, expected {DISPATCH_SLOTS}", word(2)),
                    ))
                }
            })?;
        }
        for mut p in open.progs_mut() {
            let ours = p.prog_type() == hook.program_type();
            p.set_autoload(ours);
        }
        let object = crate::program::load_opened(open, op)?;
        let name = format!("dispatch_{hook}");
        let entry = crate::program::program_fd(&object, &name)?;
        let entry_info = program_info(entry.as_fd())?;
        let d = Dispatcher {
            hook,
            object,
            entry,
            entry_info,
            members: BTreeMap::new(),
            masks: [0; DISPATCH_SLOTS as usize],
            verdict: hook.pass_verdict(),
        };
        d.write_config()?;
        Ok(d)
    }

    /// The hook.
    pub fn hook(&self) -> ChainHook {
        self.hook
    }

    /// The root program: attach it at the hook.
    pub fn entry(&self) -> BorrowedFd<'_> {
        self.entry.as_fd()
    }

    /// The root as an LWT program, for a route.
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

    /// Sets the verdict returned when every member went on.
    ///
    /// # Errors
    ///
    /// The kernel's error.
    pub fn set_verdict(&mut self, verdict: i32) -> Result<()> {
        self.verdict = verdict;
        self.write_config()
    }

    /// Loads program `program` of `object` as a freplace program into `slot` (0..8, run in
    /// ascending order) while the dispatcher runs. `continue_on` lists the verdicts that let the
    /// next slot run (-1, tc's TC_ACT_UNSPEC, allowed; other negative values are not).
    ///
    /// # Errors
    ///
    /// InvalidInput for a slot out of range or taken, a verdict that cannot go on, or a program
    /// not of the hook's type; the verifier's or kernel's error otherwise (nothing changed then).
    pub fn attach(
        &mut self,
        slot: u32,
        object: &'static [u8],
        program: &str,
        continue_on: &[i32],
    ) -> Result<MemberId> {
        let op = "attach dispatcher member";
        if slot >= DISPATCH_SLOTS {
            return Err(Error::invalid_input(
                op,
                format!("slot {slot}: use 0..{DISPATCH_SLOTS}"),
            ));
        }
        if self.members.contains_key(&slot) {
            return Err(Error::invalid_input(
                op,
                format!("slot {slot} is taken: detach its member first"),
            ));
        }
        let mut mask = 0u32;
        for &v in continue_on {
            let bit = match v {
                -1 => 30,
                0..=30 => v as u32,
                _ => {
                    return Err(Error::invalid_input(
                        op,
                        format!("verdict {v} cannot go on (0..=30 or -1)"),
                    ))
                }
            };
            mask |= 1 << bit;
        }
        let stub = format!("{}_slot{slot}", stub_prefix(self.hook));
        let mut open = libbpf_rs::ObjectBuilder::default()
            .open_memory(object)
            .map_err(|e| Error::bpf(op, e))?;
        let mut found = false;
        for mut p in open.progs_mut() {
            let ours = p.name().to_str() == Some(program);
            if ours {
                if p.prog_type() != self.hook.program_type() {
                    return Err(Error::invalid_input(
                        op,
                        format!(
                            "program {program} is {:?}, the dispatcher runs {:?}",
                            p.prog_type(),
                            self.hook.program_type()
                        ),
                    ));
                }
                p.set_prog_type(ProgramType::Ext);
                p.set_attach_target(self.entry.as_raw_fd(), Some(stub.clone()))
                    .map_err(|e| Error::bpf(op, e))?;
                found = true;
            }
            p.set_autoload(ours);
        }
        if !found {
            return Err(Error::not_found(
                op,
                format!("program {program} in the object"),
            ));
        }
        let loaded = open.load().map_err(|e| {
            let err = Error::bpf(op, e);
            if err.kind() == ErrorKind::Permission {
                // The root loaded with the same privileges, so this is the kernel refusing
                // extension programs (seen on this project's Linux 6.18 VM, which forces lockdown
                // integrity mode, while fentry programs still load).
                Error::unsupported(
                    op,
                    "BPF_PROG_TYPE_EXT (freplace) programs: the kernel answers EPERM",
                    None,
                )
            } else {
                err
            }
        })?;
        let prog = loaded
            .progs()
            .find(|p| p.name().to_str() == Some(program))
            .ok_or_else(|| Error::not_found(op, program.to_string()))?;
        let info = program_info(prog.as_fd())?;
        // The mask first: the member's verdicts are judged right from its first packet.
        self.masks[slot as usize] = mask;
        self.write_config()?;
        let name = CString::new(stub).expect("no NUL in a stub name");
        // SAFETY: prog is a loaded program of `loaded`, the target fd is our root, the name is a
        // valid C string; libbpf returns NULL (errno set) or a link we own.
        let link = unsafe {
            libbpf_rs::libbpf_sys::bpf_program__attach_freplace(
                prog.as_libbpf_object().as_ptr(),
                self.entry.as_raw_fd(),
                name.as_ptr(),
            )
        };
        if link.is_null() {
            let err = std::io::Error::last_os_error();
            self.masks[slot as usize] = 0;
            let _ = self.write_config();
            return Err(Error::io(op, err).with_object(format!("{program} at slot {slot}")));
        }
        // Keep the kernel link by a duplicated fd, then free libbpf's wrapper without detaching.
        // SAFETY: link is a valid bpf_link from libbpf.
        let fd = unsafe { libbpf_rs::libbpf_sys::bpf_link__fd(link) };
        // SAFETY: fcntl on a valid fd.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        // SAFETY: disconnect makes destroy free the wrapper and close its fd without detaching.
        unsafe {
            libbpf_rs::libbpf_sys::bpf_link__disconnect(link);
            libbpf_rs::libbpf_sys::bpf_link__destroy(link);
        }
        if dup < 0 {
            return Err(Error::io(op, std::io::Error::last_os_error()));
        }
        // SAFETY: dup is a new fd we own.
        let link = unsafe { OwnedFd::from_raw_fd(dup) };
        self.members.insert(
            slot,
            Member {
                object: loaded,
                link,
                info,
            },
        );
        Ok(MemberId(slot))
    }

    /// Detaches a member: its stub returns to "empty" at once, and the slot is skipped.
    ///
    /// # Errors
    ///
    /// NotFound when the slot is empty.
    pub fn detach(&mut self, id: MemberId) -> Result<()> {
        let member = self.members.remove(&id.0).ok_or_else(|| {
            Error::not_found(
                "detach dispatcher member",
                format!("a member in slot {}", id.0),
            )
        })?;
        drop(member.link); // closing the last link fd detaches the freplace program
        drop(member.object);
        self.masks[id.0 as usize] = 0;
        self.write_config()
    }

    /// The members by slot, with the kernel's facts about their programs.
    pub fn members(&self) -> Vec<(MemberId, ProgramInfo)> {
        self.members
            .iter()
            .map(|(&s, m)| (MemberId(s), m.info.clone()))
            .collect()
    }

    /// The loaded object of a member (to read its maps).
    pub fn member_object(&self, id: MemberId) -> Option<&Object> {
        self.members.get(&id.0).map(|m| &m.object)
    }

    fn write_config(&self) -> Result<()> {
        let mut bytes = Vec::with_capacity(48);
        for w in [MAGIC, ABI_VERSION, self.verdict as u32, 0] {
            bytes.extend_from_slice(&w.to_ne_bytes());
        }
        for m in self.masks {
            bytes.extend_from_slice(&m.to_ne_bytes());
        }
        let map = self
            .object
            .maps()
            .find(|m| m.name().to_str() == Some("dispatch_config"))
            .ok_or_else(|| Error::not_found("write dispatcher config", "map dispatch_config"))?;
        map.update(&0u32.to_ne_bytes(), &bytes, MapFlags::ANY)
            .map_err(|e| Error::bpf("write dispatcher config", e))
    }
}

/// Packets and bytes a `dispatch_member` instance counted, and its verdict switch: helpers for
/// members loaded from `crate::skel::dispatch_member::OBJECT`.
pub fn member_counter(object: &Object) -> Result<crate::program::Counter> {
    let map = object
        .maps()
        .find(|m| m.name().to_str() == Some("member_count"))
        .ok_or_else(|| Error::not_found("read member counter", "map member_count"))?;
    crate::program::sum_percpu(&map, 0, "read member counter")
}

/// Sets the verdict a `dispatch_member` instance returns (`None`: the hook's pass verdict).
///
/// # Errors
///
/// NotFound when the object is not a dispatch_member; the kernel's error otherwise.
pub fn set_member_verdict(object: &Object, verdict: Option<i32>) -> Result<()> {
    let map = object
        .maps()
        .find(|m| m.name().to_str() == Some("member_verdict"))
        .ok_or_else(|| Error::not_found("set member verdict", "map member_verdict"))?;
    let op = "set member verdict";
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
