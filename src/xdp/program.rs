//! Loaded XDP programs as owned values, and BPF_PROG_TEST_RUN on them.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use libbpf_rs::{MapCore, MapHandle, Object, ObjectBuilder};

use super::XdpAction;
use crate::error::{Error, ErrorKind, Result};

/// One loaded XDP program, owned: it stays loaded while this value (or a clone, or an attachment
/// of it) exists. Families such as [`XdpRouter`](super::XdpRouter) hand these out.
///
/// Kernel: Linux 4.10+ (test runs 4.12; live frames: 5.18+).
///
/// # Examples
///
/// ```no_run
/// use lwtun::xdp::{XdpPass, XdpAction};
///
/// let pass = XdpPass::load()?;
/// let out = pass.program().test_run(&[0u8; 64])?;
/// assert_eq!(out.verdict, XdpAction::Pass);
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct XdpProgram {
    fd: Arc<OwnedFd>,
    name: String,
    id: u32,
}

/// What [`XdpProgram::test_run`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TestRun {
    /// The program's verdict.
    pub verdict: XdpAction,
    /// The frame as the program left it.
    pub packet: Vec<u8>,
    /// Average time of one run, as the kernel measured it.
    pub duration: Duration,
}

/// The old name of [`TestRun`] (fields `action` and `data` are now `verdict` and `packet`).
#[deprecated(since = "0.2.0", note = "use lwtun::xdp::TestRun")]
pub type TestRunOutput = TestRun;

/// Settings of a live-frames run ([`XdpProgram::run_live`]).
///
/// Kernel: Linux 5.18+ (`BPF_F_TEST_XDP_LIVE_FRAMES`).
#[derive(Clone, Debug)]
pub struct LiveFrames {
    /// The device the frames appear to arrive on. Frames the program returns `XDP_TX` for
    /// leave through it; `XDP_REDIRECT` sends them where the program redirected them;
    /// `XDP_PASS` hands them to that device's stack.
    pub device: crate::device::Device,
    /// How many frames to inject.
    pub repeat: u32,
    /// Frames per batch (0: the kernel's default, 64).
    pub batch_size: u32,
}

const XDP_MD_SIZE: usize = 24;
const TEST_RUN_HEADROOM: usize = 256;

impl XdpProgram {
    pub(crate) fn from_fd(op: &str, fd: BorrowedFd<'_>, name: &str) -> Result<Self> {
        let owned = fd
            .try_clone_to_owned()
            .map_err(|e| Error::io(op.to_string(), e))?;
        let id = crate::program::program_info(owned.as_fd())?.id;
        Ok(XdpProgram {
            fd: Arc::new(owned),
            name: name.to_string(),
            id,
        })
    }

    /// Any loaded XDP program, by descriptor (a copy is kept): another family's (such as
    /// [`crate::service::Services::director_program`]) or the caller's own, to test-run it or
    /// run it on live frames like lwtun's.
    ///
    /// ```no_run
    /// use lwtun::xdp::XdpProgram;
    /// # let services = lwtun::service::Services::load()?;
    /// let director = XdpProgram::from_program(services.director_program())?;
    /// let out = director.test_run(&[0u8; 64])?;
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// InvalidInput when `program` is not an XDP program; the kernel's error reading it.
    pub fn from_program(program: impl AsFd) -> Result<Self> {
        let op = "use XDP program";
        let info = crate::program::program_info(program.as_fd())?;
        if info.prog_type != libbpf_rs::libbpf_sys::BPF_PROG_TYPE_XDP {
            return Err(Error::invalid_input(
                op,
                format!(
                    "program {} ({}) is of type {}, not XDP ({})",
                    info.id,
                    info.name,
                    info.prog_type,
                    libbpf_rs::libbpf_sys::BPF_PROG_TYPE_XDP
                ),
            ));
        }
        XdpProgram::from_fd(op, program.as_fd(), &info.name)
    }

    /// The program's name in the object (as `bpftool prog` shows it, cut to 15 characters).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kernel's id of the program (`bpftool prog show id ID`).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Runs the program once on `frame` with BPF_PROG_TEST_RUN (ingress device: the namespace's
    /// loopback) and returns its verdict and the frame it left. Nothing is transmitted: an
    /// `XDP_TX` or `XDP_REDIRECT` verdict is only reported.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for a frame shorter than 14 bytes (the kernel refuses it),
    /// [`ErrorKind::Permission`](crate::ErrorKind::Permission) without CAP_BPF.
    pub fn test_run(&self, frame: &[u8]) -> Result<TestRun> {
        self.test_run_repeat(frame, 1, None)
    }

    /// Like [`test_run`](Self::test_run), `repeat` times in a row (for timing), optionally with a
    /// given ingress device.
    ///
    /// # Errors
    ///
    /// As [`test_run`](Self::test_run); [`ErrorKind::NotFound`](crate::ErrorKind::NotFound)
    /// when `ingress` is gone.
    pub fn test_run_repeat(
        &self,
        frame: &[u8],
        repeat: u32,
        ingress: Option<&crate::device::Device>,
    ) -> Result<TestRun> {
        match ingress {
            Some(d) => d.enter(|| self.test_run_here(frame, repeat, Some(d.index()))),
            None => self.test_run_here(frame, repeat, None),
        }
    }

    fn test_run_here(
        &self,
        frame: &[u8],
        repeat: u32,
        ingress_ifindex: Option<u32>,
    ) -> Result<TestRun> {
        let op = "run XDP program (BPF_PROG_TEST_RUN)";
        crate::program::check_frame(op, frame)?;
        if ingress_ifindex.is_some() {
            crate::probe::Feature::XdpTestRunContext.require(op)?;
        }
        let mut ctx = [0u8; XDP_MD_SIZE];
        if let Some(ifindex) = ingress_ifindex {
            ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
            ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        }
        let run = crate::program::test_run_raw(
            self.fd.as_fd(),
            crate::program::TestRunArgs {
                data: frame,
                out_room: Some(TEST_RUN_HEADROOM),
                ctx_in: ingress_ifindex.map(|_| &ctx[..]),
                repeat,
                ..Default::default()
            },
        )
        .map_err(|errno| errno_error(op, errno).with_object(self.name.clone()))?;
        Ok(TestRun {
            verdict: XdpAction::from_code(run.retval),
            packet: run.data,
            duration: run.duration,
        })
    }

    /// Injects `frame` as real traffic with BPF_F_TEST_XDP_LIVE_FRAMES: the program runs on each
    /// copy and its verdict is carried out (transmit, redirect, pass to the stack), which makes the
    /// program a traffic generator. Returns the kernel's measured time per frame.
    ///
    /// Kernel: Linux 5.18+ (`BPF_F_TEST_XDP_LIVE_FRAMES`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) on kernels without live
    /// frames or whose policy refuses them ([`crate::probe::xdp_live_frames`]);
    /// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) when the device is gone.
    pub fn run_live(&self, frame: &[u8], live: &LiveFrames) -> Result<Duration> {
        live.device.enter(|| self.run_live_here(frame, live))
    }

    fn run_live_here(&self, frame: &[u8], live: &LiveFrames) -> Result<Duration> {
        let op = "inject live XDP frames (BPF_F_TEST_XDP_LIVE_FRAMES)";
        crate::program::check_frame(op, frame)?;
        crate::probe::Feature::XdpLiveFrames.require(op)?;
        let mut ctx = [0u8; XDP_MD_SIZE];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&live.device.index().to_ne_bytes());
        let run = crate::program::test_run_raw(
            self.fd.as_fd(),
            crate::program::TestRunArgs {
                data: frame,
                ctx_in: Some(&ctx),
                repeat: live.repeat,
                flags: libbpf_sys::BPF_F_TEST_XDP_LIVE_FRAMES,
                batch_size: live.batch_size,
                ..Default::default()
            },
        )
        .map_err(|errno| {
            errno_error(op, errno).with_object(format!("{} on {}", self.name, live.device))
        })?;
        Ok(run.duration)
    }
}

impl AsFd for XdpProgram {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// An error from a raw libbpf / bpf(2) call that returned `-errno`.
pub(crate) fn errno_error(op: &str, errno: i32) -> Error {
    Error::io(op.to_string(), std::io::Error::from_raw_os_error(errno))
}

/// A program family's object, loaded, with its programs and maps taken out as owned fds (the
/// object itself is closed: the fds keep everything alive).
pub(crate) struct Loaded {
    obj: Object,
    family: &'static str,
}

impl Loaded {
    pub(crate) fn load(family: &'static str, object: &[u8]) -> Result<Self> {
        Self::load_configured(family, object, |_, _| Ok(()))
    }

    /// [`Loaded::load`], with `configure` setting the object's read-only values (given the
    /// opened object and the operation's name) before the load.
    pub(crate) fn load_configured(
        family: &'static str,
        object: &[u8],
        configure: impl FnOnce(&mut libbpf_rs::OpenObject, &str) -> Result<()>,
    ) -> Result<Self> {
        let op = format!("load XDP program family {family}");
        let mut open = ObjectBuilder::default()
            .open_memory(object)
            .map_err(|e| Error::bpf(op.clone(), e))?;
        configure(&mut open, &op)?;
        let obj = crate::program::load_opened(open, &op)?;
        Ok(Loaded { obj, family })
    }

    pub(crate) fn program(&self, name: &str) -> Result<XdpProgram> {
        let op = format!("take program {name} from {}", self.family);
        let prog = self
            .obj
            .progs()
            .find(|p| p.name() == name)
            .ok_or_else(|| Error::not_found(op.clone(), format!("program {name}")))?;
        XdpProgram::from_fd(&op, prog.as_fd(), name)
    }

    pub(crate) fn map(&self, name: &str) -> Result<MapHandle> {
        let op = format!("take map {name} from {}", self.family);
        crate::program::map_handle(&self.obj, name, &op)
    }
}

/// Checks a map's key and value sizes once, when a typed wrapper is made.
pub(crate) fn check_sizes(op: &str, map: &MapHandle, key: u32, value: u32) -> Result<()> {
    if map.key_size() != key || map.value_size() != value {
        return Err(Error::other(
            ErrorKind::InvalidInput,
            op.to_string(),
            format!(
                "map {:?} has key/value sizes {}/{}, expected {key}/{value} (mismatched BPF object?)",
                map.name(),
                map.key_size(),
                map.value_size()
            ),
        ));
    }
    Ok(())
}

/// Wraps a raw fd returned by a bpf(2) call.
pub(crate) fn owned_fd(fd: i32) -> OwnedFd {
    // SAFETY: callers pass a fresh fd that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}
