//! The pass / drop / tx programs (`bpf/xdp_pass.bpf.c`).

use super::attach::{XdpAttachment, XdpMode, XdpOptions};
use super::program::{Loaded, XdpProgram};
use super::stats::StatsMap;
use crate::error::{Error, Result};
use crate::netns::NetNs;

/// The smallest XDP programs, with statistics: `xdp_pass` (everything to the stack), `xdp_drop`
/// (a counting sink) and `xdp_tx` (a reflector; with live frames a traffic generator).
///
/// A veth accepts frames redirected into it (`XDP_REDIRECT` through a devmap) only while its
/// *peer* runs an XDP program; [`attach_receiver`](Self::attach_receiver) puts `xdp_pass` there.
///
/// # Examples
///
/// ```no_run
/// use lwtun::xdp::{XdpPass, XdpOptions, Stage, XdpAction};
///
/// let pass = XdpPass::load()?;
/// let att = pass.attach(7, XdpOptions::default())?;
/// let stats = pass.stats().snapshot(Stage::Ingress)?;
/// println!("{} frames passed", stats.get(XdpAction::Pass).packets);
/// # drop(att);
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug)]
pub struct XdpPass {
    pass: XdpProgram,
    drop: XdpProgram,
    tx: XdpProgram,
    nop: XdpProgram,
    stats: StatsMap,
}

impl XdpPass {
    /// Loads the programs.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Permission`](crate::ErrorKind::Permission) without CAP_BPF.
    pub fn load() -> Result<Self> {
        let obj = Loaded::load("xdp_pass", crate::skel::xdp_pass::OBJECT)?;
        Ok(XdpPass {
            pass: obj.program("xdp_pass")?,
            drop: obj.program("xdp_drop")?,
            tx: obj.program("xdp_tx")?,
            nop: obj.program("xdp_nop")?,
            stats: StatsMap::new(obj.map("xdp_stats")?)?,
        })
    }

    /// `xdp_pass`: every frame to the stack.
    pub fn program(&self) -> &XdpProgram {
        &self.pass
    }

    /// `xdp_drop`: every frame dropped (and counted).
    pub fn drop_program(&self) -> &XdpProgram {
        &self.drop
    }

    /// `xdp_tx`: every frame back out of the interface it came in on.
    pub fn tx_program(&self) -> &XdpProgram {
        &self.tx
    }

    /// `xdp_nop`: `XDP_PASS` without counting, the floor of cost measurements.
    pub fn nop_program(&self) -> &XdpProgram {
        &self.nop
    }

    /// The counters of the pass, drop and tx programs.
    pub fn stats(&self) -> &StatsMap {
        &self.stats
    }

    /// Attaches `xdp_pass` to `ifindex` in the calling thread's namespace.
    ///
    /// # Errors
    ///
    /// As [`XdpAttachment::attach`].
    pub fn attach(&self, ifindex: u32, options: XdpOptions) -> Result<XdpAttachment> {
        XdpAttachment::attach(&self.pass, ifindex, options)
    }

    /// Makes the veth end `peer_name` in `netns` able to receive frames redirected into its peer:
    /// attaches `xdp_pass` to it in native mode, unless an XDP program is there already (then
    /// `None`: that program receives the frames).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) when `peer_name` is not in `netns`.
    pub fn attach_receiver(&self, netns: &NetNs, peer_name: &str) -> Result<Option<XdpAttachment>> {
        let op = "attach XDP receiver on veth peer";
        let name = peer_name.to_string();
        netns.run(move || {
            let ifindex = ifindex_of(op, &name)?;
            if !XdpAttachment::query(ifindex)?.is_empty() {
                return Ok(None);
            }
            let opts = XdpOptions {
                mode: XdpMode::Native,
                ..Default::default()
            };
            self.attach(ifindex, opts).map(Some)
        })
    }
}

/// The index of interface `name` in the calling thread's namespace.
pub(crate) fn ifindex_of(op: &str, name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| Error::invalid_input(op, "NUL in name"))?;
    // SAFETY: c is NUL-terminated.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(Error::not_found(op, format!("interface {name}")));
    }
    Ok(index)
}
