//! The pass / drop / tx programs (`bpf/xdp_pass.bpf.c`).

use super::attach::{XdpAttachment, XdpMode, XdpOptions};
use super::program::{Loaded, XdpProgram};
use super::stats::StatsMap;
use crate::device::Device;
use crate::error::Result;
use std::sync::Mutex;

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
/// let veth0 = lwtun::netns::NetNs::open("lab")?.device("veth0")?;
/// let att = pass.attach(&veth0, XdpOptions::default())?;
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
            stats: StatsMap::new(obj.map(super::stats::STATS_MAP)?)?,
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

    /// Attaches `xdp_pass` to `device`.
    ///
    /// # Errors
    ///
    /// As [`XdpAttachment::attach`].
    pub fn attach(&self, device: &Device, options: XdpOptions) -> Result<XdpAttachment> {
        XdpAttachment::attach(&self.pass, device, options)
    }

    /// Makes the veth `peer` able to receive frames redirected into its other end: attaches
    /// `xdp_pass` to it in native mode, unless an XDP program is there already (then `None`:
    /// that program receives the frames).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) when `peer` is gone; the errors of
    /// [`XdpAttachment::attach`].
    pub fn attach_receiver(&self, peer: &Device) -> Result<Option<XdpAttachment>> {
        if !XdpAttachment::query(peer)?.is_empty() {
            return Ok(None);
        }
        let opts = XdpOptions {
            mode: XdpMode::Native,
            ..Default::default()
        };
        self.attach(peer, opts).map(Some)
    }
}

/// The pass programs a forwarding family puts on the veth peers of its ports
/// (`*_with_receiver`), kept while the family lives. Shared by the families so that their
/// setters can all take `&self`.
#[derive(Debug, Default)]
pub(crate) struct Receivers {
    pass: Mutex<Option<XdpPass>>,
    attached: Mutex<Vec<XdpAttachment>>,
}

impl Receivers {
    /// Puts `xdp_pass` on `peer` unless it runs an XDP program already (ours or another).
    pub(crate) fn ensure(&self, peer: &Device) -> Result<()> {
        let mut pass = self.pass.lock().unwrap_or_else(|p| p.into_inner());
        if pass.is_none() {
            *pass = Some(XdpPass::load()?);
        }
        let Some(pass) = pass.as_ref() else {
            return Ok(());
        };
        if let Some(att) = pass.attach_receiver(peer)? {
            self.attached
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(att);
        }
        Ok(())
    }
}
