//! [`CountingStage`]: a chain-aware stage that counts what it sees per slot and goes on or ends
//! the chain with a verdict set per slot (`bpf/chain_stages.bpf.c`).

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use libbpf_rs::{MapCore, MapFlags, Object};

use super::prog_chain::{ProgChain, StageId};
use crate::error::{Error, ErrorKind, Result};
use crate::skel::chain_stages::types::{lwtun_chain_stage_stats, lwtun_chain_stage_verdict};

/// What a [`CountingStage`] saw in one slot, summed over the CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageStats {
    /// Packets that ran the stage.
    pub packets: u64,
    /// Their bytes (from the hook's start of packet).
    pub bytes: u64,
    /// Sum of the positions (1 = first stage) the stage ran at; `depth_sum / packets` is its
    /// position while the order did not change.
    pub depth_sum: u64,
}

impl StageStats {
    /// The stage's mean position in the chain (1 = first), `None` before any packet.
    pub fn position(&self) -> Option<f64> {
        (self.packets > 0).then(|| self.depth_sum as f64 / self.packets as f64)
    }
}

/// A chain-aware counting stage for one chain: its program can sit in any number of the chain's
/// slots; it counts per slot, then goes on to the next stage or ends the chain with the verdict
/// set for that slot ([`set_verdict`](Self::set_verdict)).
///
/// Kernel: Linux 5.2+ (global data in `.rodata`).
///
/// # Examples
///
/// ```no_run
/// use lwtun::chain::{ChainHook, CountingStage, ProgChain};
///
/// let mut chain = ProgChain::new(ChainHook::Tc)?;
/// let counting = CountingStage::load(&chain)?;
/// let id = chain.push(counting.program())?;
/// counting.set_verdict(id, Some(2))?; // TC_ACT_SHOT: stages after it never run
/// # Ok::<(), lwtun::Error>(())
/// ```
pub struct CountingStage {
    object: Object,
    program: OwnedFd,
    hook: super::ChainHook,
}

impl fmt::Debug for CountingStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingStage")
            .field("program", &self.program)
            .finish()
    }
}

impl CountingStage {
    /// Loads the stage for `chain` (it shares the chain's maps, and loads only the program of the
    /// chain's type).
    ///
    /// # Errors
    ///
    /// Permission without CAP_BPF; Kernel on an ABI mismatch; the verifier's error otherwise.
    pub fn load(chain: &ProgChain) -> Result<Self> {
        let object = chain.open_member(
            "chain_stages",
            crate::skel::chain_stages::OBJECT,
            std::mem::offset_of!(crate::skel::chain_stages::types::rodata, lwtun_chain_abi),
            |_| Ok(()),
        )?;
        let name = format!("stage_{}", chain.hook());
        let program = chain.member_program(&object, &name)?;
        Ok(CountingStage {
            object,
            program,
            hook: chain.hook(),
        })
    }

    /// The stage program, to give [`ProgChain::insert`] (as often as wanted).
    pub fn program(&self) -> BorrowedFd<'_> {
        self.program.as_fd()
    }

    /// What the stage saw in `id`'s slot.
    ///
    /// # Errors
    ///
    /// The kernel's error reading the counters.
    pub fn stats(&self, id: StageId) -> Result<StageStats> {
        let op = "read stage counters";
        let map = self.map("stage_stats")?;
        let values = map
            .lookup_percpu(&id.slot().to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::bpf(op, e))?
            .unwrap_or_default();
        let mut total = StageStats::default();
        for v in values {
            if v.len() != std::mem::size_of::<lwtun_chain_stage_stats>() {
                return Err(Error::other(
                    ErrorKind::Kernel,
                    op,
                    format!("value of {} bytes", v.len()),
                ));
            }
            let word = |i: usize| u64::from_ne_bytes(v[i * 8..i * 8 + 8].try_into().expect("8"));
            total.packets += word(0);
            total.bytes += word(1);
            total.depth_sum += word(2);
        }
        Ok(total)
    }

    /// Sets what the stage does in `id`'s slot: `None` goes on to the next stage, `Some(v)` ends
    /// the chain with verdict `v` (the hook's return code).
    ///
    /// # Errors
    ///
    /// InvalidInput for a verdict the chain's hook does not know (as
    /// [`ProgChain::set_verdict`] lists them); the kernel's error updating the map.
    pub fn set_verdict(&self, id: StageId, verdict: Option<i32>) -> Result<()> {
        if let Some(v) = verdict {
            self.hook.check_verdict("set stage verdict", v)?;
        }
        let v = lwtun_chain_stage_verdict {
            end: u32::from(verdict.is_some()),
            verdict: verdict.unwrap_or(0),
        };
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&v.end.to_ne_bytes());
        bytes[4..].copy_from_slice(&v.verdict.to_ne_bytes());
        self.map("stage_verdict")?
            .update(&id.slot().to_ne_bytes(), &bytes, MapFlags::ANY)
            .map_err(|e| Error::bpf("set stage verdict", e))
    }

    fn map(&self, name: &str) -> Result<libbpf_rs::Map<'_>> {
        self.object
            .maps()
            .find(|m| m.name().to_str() == Some(name))
            .ok_or_else(|| Error::not_found("find stage map", name.to_string()))
    }
}
