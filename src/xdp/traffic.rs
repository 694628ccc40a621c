//! A live-frames traffic generator (`bpf/xdp_gen.bpf.c`).

use std::time::Duration;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::program::{check_sizes, LiveFrames, Loaded, XdpProgram};
use super::stats::StatsMap;
use crate::error::{Error, Result};

/// Bytes of each frame the generator rewrites from its template before sending.
pub const TEMPLATE_LEN: usize = 64;

/// Sends copies of a frame out of an interface at line rate with BPF_PROG_TEST_RUN and
/// `BPF_F_TEST_XDP_LIVE_FRAMES`: the kernel's own packet generator path, no socket, no skb.
///
/// Kernel: Linux 5.18+ (`BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`).
///
/// Live frames reuse their pages without re-initialising them, and a veth passes the same page
/// to its peer, so changes made downstream (a router decrementing the TTL) would come back in
/// later frames. `xdp_gen` therefore rewrites the first [`TEMPLATE_LEN`] bytes of every frame
/// from the template before `XDP_TX`.
///
/// The sending interface transmits XDP frames only while it runs an XDP program itself (any:
/// [`XdpPass`](super::XdpPass) will do), and a veth peer needs one to receive them.
///
/// # Examples
///
/// ```no_run
/// use lwtun::xdp::{LiveFrames, TrafficGen};
///
/// let gen = TrafficGen::load()?;
/// let frame = vec![0u8; 64]; // Ethernet + IP + UDP, built by you
/// let device = lwtun::netns::NetNs::open("lab")?.device("veth0")?;
/// let took = gen.send(&frame, &LiveFrames { device, repeat: 1_000_000, batch_size: 64 })?;
/// println!("{:.2} Mpps offered", 1e6 / took.as_secs_f64() / 1e6);
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug)]
pub struct TrafficGen {
    program: XdpProgram,
    template: MapHandle,
    stats: StatsMap,
}

impl TrafficGen {
    /// Loads the generator.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Permission`](crate::ErrorKind::Permission) without CAP_BPF.
    pub fn load() -> Result<Self> {
        let obj = Loaded::load("xdp_gen", crate::skel::xdp_gen::OBJECT)?;
        let template = obj.map("gen_template")?;
        check_sizes("open generator template", &template, 4, TEMPLATE_LEN as u32)?;
        Ok(TrafficGen {
            program: obj.program("xdp_gen")?,
            template,
            stats: StatsMap::new(obj.map(super::stats::STATS_MAP)?)?,
        })
    }

    /// The program (`xdp_gen`).
    pub fn program(&self) -> &XdpProgram {
        &self.program
    }

    /// Frames sent count as `XDP_TX`.
    pub fn stats(&self) -> &StatsMap {
        &self.stats
    }

    /// Sends `live.repeat` copies of `frame` out of `live.ifindex` (in the calling thread's
    /// namespace) and returns the wall time it took.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for frames shorter than
    /// [`TEMPLATE_LEN`]; otherwise as [`XdpProgram::run_live`].
    pub fn send(&self, frame: &[u8], live: &LiveFrames) -> Result<Duration> {
        let op = "generate live XDP frames";
        if frame.len() < TEMPLATE_LEN {
            return Err(Error::invalid_input(
                op,
                format!(
                    "frames have at least {TEMPLATE_LEN} bytes, got {}",
                    frame.len()
                ),
            ));
        }
        self.template
            .update(&0u32.to_ne_bytes(), &frame[..TEMPLATE_LEN], MapFlags::ANY)
            .map_err(|e| Error::bpf(op, e))?;
        let start = std::time::Instant::now();
        self.program.run_live(frame, live)?;
        Ok(start.elapsed())
    }
}
