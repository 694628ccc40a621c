//! tc programs: attach a `sched_cls` program to a device's ingress or egress, list what is
//! attached, detach on drop.
//!
//! Two kernel mechanisms run tc programs, and [`TcAttach`] speaks both:
//!
//! ```text
//!  packet ──► tcx programs (bpf_link, Linux 6.6+) ──TCX_NEXT──► clsact cls_bpf filters ──► stack
//!             ordered first/last                               ordered by priority, handle
//! ```
//!
//! - **tcx** ([`TcMode::Tcx`]): a `bpf_link` per program; the kernel detaches it when the link's
//!   last file descriptor closes, so a crashed process leaves nothing behind.
//! - **clsact** ([`TcMode::Clsact`]): the `clsact` qdisc plus a direct-action `cls_bpf` filter at a
//!   priority and handle, as `tc filter add dev X ingress prio P handle H bpf da` makes. A filter
//!   stays until someone deletes it; lwtun names its filters `lwtun:<program>` so leftovers can
//!   be found with [`attached`].
//!
//! [`TcMode::Auto`] (the default) picks tcx where the kernel has it ([`tcx_supported`], probed
//! once) and clsact otherwise; asking for a priority, handle or replace asks for clsact.
//!
//! Everything here works in the calling thread's network namespace: attach inside
//! [`NetNs::run`](crate::netns::NetNs::run) to attach in another one. The returned
//! [`TcAttachment`] remembers its namespace and can be dropped from any thread.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;
use std::time::Duration;

use libbpf_rs::libbpf_sys;
use libbpf_rs::MapCore;

use crate::device::Device;
use crate::error::{Error, ErrorKind, Result};
use crate::netlink::tc::{BpfFilter, CLSACT_EGRESS, CLSACT_INGRESS};
use crate::netlink::Netlink;
use crate::program::{program_info, ProgramInfo};

/// The prefix of the names lwtun gives its cls_bpf filters.
pub const FILTER_NAME_PREFIX: &str = "lwtun:";

/// Which way the packets a program sees are going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcDirection {
    /// Packets the device receives.
    Ingress,
    /// Packets the device sends.
    Egress,
}

impl TcDirection {
    fn clsact_parent(self) -> u32 {
        match self {
            TcDirection::Ingress => CLSACT_INGRESS,
            TcDirection::Egress => CLSACT_EGRESS,
        }
    }

    fn tcx_attach_type(self) -> libbpf_sys::bpf_attach_type {
        match self {
            TcDirection::Ingress => libbpf_sys::BPF_TCX_INGRESS,
            TcDirection::Egress => libbpf_sys::BPF_TCX_EGRESS,
        }
    }
}

impl fmt::Display for TcDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TcDirection::Ingress => "ingress",
            TcDirection::Egress => "egress",
        })
    }
}

/// The attach mechanism.
///
/// Kernel: Linux 4.10+ (clsact 4.5; [`TcMode::Tcx`]: 6.6+).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TcMode {
    /// tcx where the kernel has it, clsact otherwise (clsact also when a priority, handle or
    /// replace is asked for).
    #[default]
    Auto,
    /// A tcx `bpf_link` (Linux 6.6+).
    Tcx,
    /// The clsact qdisc and a direct-action cls_bpf filter.
    Clsact,
}

/// Where a tcx program goes among the programs already attached to the same hook.
///
/// Kernel: Linux 6.6+ (tcx).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TcxOrder {
    /// After every program already there.
    #[default]
    Last,
    /// Before every program already there.
    First,
}

/// Whether this kernel has tcx (`BPF_TCX_INGRESS`/`BPF_TCX_EGRESS`, Linux 6.6). Probed once per
/// process by querying the loopback device's tcx hook.
pub fn tcx_supported() -> bool {
    static PROBE: OnceLock<bool> = OnceLock::new();
    *PROBE.get_or_init(|| {
        let mut opts = libbpf_sys::bpf_prog_query_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_prog_query_opts>() as _,
            ..Default::default()
        };
        // SAFETY: opts is a valid, sized bpf_prog_query_opts without id arrays (count 0).
        let rc =
            unsafe { libbpf_sys::bpf_prog_query_opts(1, libbpf_sys::BPF_TCX_INGRESS, &mut opts) };
        rc == 0
    })
}

fn prog_info(op: &str, fd: BorrowedFd<'_>) -> Result<ProgramInfo> {
    program_info(fd).map_err(|e| {
        Error::other(e.kind(), op, e.to_string())
            .with_object("the program's file descriptor (is it a BPF program?)")
    })
}

fn program_name_by_id(id: u32) -> Option<String> {
    let fd = libbpf_rs::Program::fd_from_id(id).ok()?;
    prog_info("program info", fd.as_fd()).ok().map(|i| i.name)
}

/// How to attach a tc program: device, direction, mechanism and order.
///
/// Kernel: Linux 4.10+ (cls_bpf direct-action on clsact 4.5; tcx: 6.6+).
///
/// # Examples
///
/// ```no_run
/// use lwtun::{netns::NetNs, tc::{TcAttach, TcDirection, TcMode}};
/// # fn program() -> std::os::fd::OwnedFd { unimplemented!() }
///
/// let prog = program(); // any loaded sched_cls program (a skeleton's program, a ProgramHandle)
/// let ns = NetNs::open("lab")?;
/// let veth0 = ns.device("veth0")?;      // the device remembers its namespace
/// let attachment = TcAttach::new(&veth0, TcDirection::Ingress)
///     .mode(TcMode::Clsact)
///     .priority(10)
///     .attach(&prog)?;
/// println!("{attachment}");
/// // dropping `attachment` detaches the program again
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone)]
#[doc(alias = "tcx")]
#[doc(alias = "clsact")]
#[doc(alias = "cls_bpf")]
pub struct TcAttach {
    device: Device,
    ifindex: u32,
    direction: TcDirection,
    mode: TcMode,
    priority: Option<u16>,
    handle: Option<u32>,
    replace: bool,
    order: TcxOrder,
}

impl TcAttach {
    /// Attach to `device` (in its own namespace, whichever namespace the calling thread is in)
    /// in `direction`.
    pub fn new(device: &Device, direction: TcDirection) -> Self {
        TcAttach {
            device: device.clone(),
            ifindex: device.index(),
            direction,
            mode: TcMode::Auto,
            priority: None,
            handle: None,
            replace: false,
            order: TcxOrder::Last,
        }
    }

    /// Forces a mechanism (default [`TcMode::Auto`]).
    pub fn mode(mut self, mode: TcMode) -> Self {
        self.mode = mode;
        self
    }

    /// clsact: the filter priority, 1..=65535, lower runs first. Default: after every filter
    /// already on the hook.
    pub fn priority(mut self, priority: u16) -> Self {
        self.priority = Some(priority);
        self
    }

    /// clsact: the filter handle (default 1).
    pub fn handle(mut self, handle: u32) -> Self {
        self.handle = Some(handle);
        self
    }

    /// clsact: take over a filter already at this priority and handle (its program is
    /// replaced) instead of failing with [`ErrorKind::Exists`]. The attachment then owns that
    /// filter and deletes it on drop.
    pub fn replace(mut self, replace: bool) -> Self {
        self.replace = replace;
        self
    }

    /// tcx: where the program goes among those already attached (default last).
    pub fn order(mut self, order: TcxOrder) -> Self {
        self.order = order;
        self
    }

    fn wants_clsact(&self) -> bool {
        self.priority.is_some() || self.handle.is_some() || self.replace
    }

    /// The mechanism [`attach`](Self::attach) will use on this kernel.
    pub fn resolved_mode(&self) -> TcMode {
        match self.mode {
            TcMode::Auto if self.wants_clsact() || !tcx_supported() => TcMode::Clsact,
            TcMode::Auto => TcMode::Tcx,
            m => m,
        }
    }

    /// Attaches `program` (a loaded `sched_cls` program) and returns the handle that detaches it.
    ///
    /// Kernel: Linux 4.10+ (clsact with direct-action cls_bpf 4.5; tcx: 6.6+).
    ///
    /// # Errors
    ///
    /// - [`ErrorKind::InvalidInput`]: the fd is not a `sched_cls` program; priority or handle 0; a clsact
    ///   option (priority, handle, replace) with [`TcMode::Tcx`].
    /// - [`ErrorKind::Unsupported`]: [`TcMode::Tcx`] on a kernel without tcx.
    /// - [`ErrorKind::Exists`]: a clsact filter is already at that priority and handle.
    /// - [`ErrorKind::NotFound`]: no such interface.
    pub fn attach(&self, program: impl AsFd) -> Result<TcAttachment> {
        let fd = program.as_fd();
        self.device
            .enter(|| self.attach_here(fd))
            .map_err(|e| e.with_object(format!("{} {}", self.device, self.direction)))
    }

    /// [`attach`](Self::attach), with the thread in the device's namespace.
    fn attach_here(&self, fd: BorrowedFd<'_>) -> Result<TcAttachment> {
        let op = "attach tc program";
        let object = || format!("{} {}", self.device, self.direction);
        let info = prog_info(op, fd)?;
        if info.prog_type != libbpf_sys::BPF_PROG_TYPE_SCHED_CLS {
            return Err(Error::invalid_input(
                op,
                format!(
                    "program {} has type {}, not sched_cls (SEC(\"tc\"))",
                    info.name,
                    crate::bpf_fd::prog_type_name(info.prog_type)
                ),
            )
            .with_object(object()));
        }
        if self.handle == Some(0) {
            return Err(Error::invalid_input(
                op,
                "handle 0 asks the kernel to choose one, and deleting by handle 0 would remove \
                 every filter at the priority; use a handle from 1",
            )
            .with_object(object()));
        }
        if self.priority == Some(0) {
            return Err(Error::invalid_input(
                op,
                "priority 0 asks the kernel to choose one lwtun could not find again; use 1..=65535",
            )
            .with_object(object()));
        }
        match self.mode {
            TcMode::Tcx if self.wants_clsact() => {
                return Err(Error::invalid_input(
                    op,
                    "priority, handle and replace are clsact settings; tcx orders programs with \
                     order(), and TcAttachment::replace_program swaps a program",
                )
                .with_object(object()))
            }
            TcMode::Tcx if !tcx_supported() => {
                return Err(Error::unsupported(
                    op,
                    "tcx (BPF_TCX_INGRESS/EGRESS links)",
                    Some("6.6"),
                )
                .with_object(object()))
            }
            _ => {}
        }
        match self.resolved_mode() {
            TcMode::Tcx => self.attach_tcx(fd, info),
            _ => self.attach_clsact(fd, info),
        }
        .map_err(|e| {
            if e.object().is_some() {
                e
            } else {
                e.with_object(object())
            }
        })
    }

    fn attach_tcx(&self, fd: BorrowedFd<'_>, info: ProgramInfo) -> Result<TcAttachment> {
        let mut opts = libbpf_sys::bpf_link_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _,
            ..Default::default()
        };
        opts.flags = match self.order {
            TcxOrder::Last => libbpf_sys::BPF_F_AFTER,
            TcxOrder::First => libbpf_sys::BPF_F_BEFORE,
        };
        // SAFETY: opts is sized and zeroed except flags (relative fd/id 0 = all programs);
        // fd is an open program.
        let rc = unsafe {
            libbpf_sys::bpf_link_create(
                fd.as_raw_fd(),
                self.ifindex as i32,
                self.direction.tcx_attach_type(),
                &opts,
            )
        };
        if rc < 0 {
            return Err(Error::io(
                "attach tcx link",
                std::io::Error::from_raw_os_error(-rc),
            ));
        }
        // SAFETY: rc is a new file descriptor that nothing else owns.
        let link = unsafe { OwnedFd::from_raw_fd(rc) };
        Ok(TcAttachment {
            device: self.device.clone(),
            ifindex: self.ifindex,
            direction: self.direction,
            program_id: info.id,
            program_name: info.name,
            state: State::Tcx { link },
        })
    }

    fn attach_clsact(&self, fd: BorrowedFd<'_>, info: ProgramInfo) -> Result<TcAttachment> {
        let mut nl = Netlink::open()?;
        let parent = self.direction.clsact_parent();
        let created_qdisc = nl.add_clsact(self.ifindex)?;
        let result = (|| {
            let priority = match self.priority {
                Some(p) => p,
                None => next_priority(&nl.bpf_filters(self.ifindex, parent)?),
            };
            let handle = self.handle.unwrap_or(1);
            let name = format!("{FILTER_NAME_PREFIX}{}", info.name);
            nl.add_bpf_filter(
                self.ifindex,
                parent,
                priority,
                handle,
                fd,
                &name,
                self.replace,
            )
            .map_err(|e| {
                if e.kind() == ErrorKind::Exists {
                    Error::other(
                        ErrorKind::Exists,
                        "add tc filter",
                        format!(
                            "a filter is already at priority {priority} handle {handle:#x}; \
                             choose another priority or set replace(true)"
                        ),
                    )
                } else {
                    e
                }
            })?;
            Ok((priority, handle))
        })();
        match result {
            Ok((priority, handle)) => Ok(TcAttachment {
                device: self.device.clone(),
                ifindex: self.ifindex,
                direction: self.direction,
                program_id: info.id,
                program_name: info.name,
                state: State::Clsact {
                    nl,
                    priority,
                    handle,
                    created_qdisc,
                },
            }),
            Err(e) => {
                if created_qdisc {
                    let _ = nl.del_clsact(self.ifindex);
                }
                Err(e)
            }
        }
    }
}

/// The priority after every filter in `existing` (1 on an empty hook); the first free one when
/// the last priority is taken.
fn next_priority(existing: &[BpfFilter]) -> u16 {
    match existing.iter().map(|f| f.priority).max() {
        None => 1,
        Some(u16::MAX) => (1..u16::MAX)
            .find(|p| existing.iter().all(|f| f.priority != *p))
            .unwrap_or(u16::MAX),
        Some(max) => max + 1,
    }
}

enum State {
    Tcx {
        link: OwnedFd,
    },
    Clsact {
        nl: Netlink,
        priority: u16,
        handle: u32,
        created_qdisc: bool,
    },
    Detached,
}

/// An attached tc program. Dropping it detaches the program (also while a panic unwinds).
///
/// Kernel: Linux 4.10+ (cls_bpf on clsact 4.5; tcx links: 6.6+).
///
/// - tcx: the link's file descriptor is closed, which detaches it; a process that dies
///   detaches its tcx programs with it.
/// - clsact: the cls_bpf filter is deleted if it still runs this attachment's program, and the
///   clsact qdisc too when this attachment added it and no filter is left on it. A process
///   killed with `SIGKILL` leaves the filter (named `lwtun:<program>`) in place.
#[must_use = "dropping a TcAttachment detaches the program"]
pub struct TcAttachment {
    device: Device,
    ifindex: u32,
    direction: TcDirection,
    program_id: u32,
    program_name: String,
    state: State,
}

impl fmt::Debug for TcAttachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TcAttachment({self})")
    }
}

impl fmt::Display for TcAttachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (id {}) on {} {}",
            self.program_name, self.program_id, self.device, self.direction
        )?;
        match &self.state {
            State::Tcx { .. } => write!(f, " via tcx"),
            State::Clsact {
                priority, handle, ..
            } => write!(f, " via clsact prio {priority} handle {handle:#x}"),
            State::Detached => write!(f, " (detached)"),
        }
    }
}

impl TcAttachment {
    /// The mechanism in use: [`TcMode::Tcx`] or [`TcMode::Clsact`].
    pub fn mode(&self) -> TcMode {
        match self.state {
            State::Tcx { .. } => TcMode::Tcx,
            _ => TcMode::Clsact,
        }
    }

    /// The interface index (in [`TcAttachment::device`]'s namespace).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The device the program is attached to.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The direction.
    pub fn direction(&self) -> TcDirection {
        self.direction
    }

    /// The kernel id of the attached program.
    pub fn program_id(&self) -> u32 {
        self.program_id
    }

    /// clsact: the filter's priority.
    pub fn priority(&self) -> Option<u16> {
        match self.state {
            State::Clsact { priority, .. } => Some(priority),
            _ => None,
        }
    }

    /// clsact: the filter's handle.
    pub fn handle(&self) -> Option<u32> {
        match self.state {
            State::Clsact { handle, .. } => Some(handle),
            _ => None,
        }
    }

    /// Swaps in another `sched_cls` program in place, atomically: no packet sees neither
    /// (tcx: `bpf_link_update`; clsact: the filter is changed at its priority and handle).
    pub fn replace_program(&mut self, program: impl AsFd) -> Result<()> {
        let op = "replace tc program";
        let fd = program.as_fd();
        let info = prog_info(op, fd)?;
        if info.prog_type != libbpf_sys::BPF_PROG_TYPE_SCHED_CLS {
            return Err(Error::invalid_input(
                op,
                format!("program {} is not sched_cls", info.name),
            ));
        }
        match &mut self.state {
            State::Tcx { link } => {
                // SAFETY: both fds are open; a null opts pointer means no flags.
                let rc = unsafe {
                    libbpf_sys::bpf_link_update(link.as_raw_fd(), fd.as_raw_fd(), std::ptr::null())
                };
                if rc < 0 {
                    return Err(Error::io(op, std::io::Error::from_raw_os_error(-rc)));
                }
            }
            State::Clsact {
                nl,
                priority,
                handle,
                ..
            } => {
                let name = format!("{FILTER_NAME_PREFIX}{}", info.name);
                nl.add_bpf_filter(
                    self.ifindex,
                    self.direction.clsact_parent(),
                    *priority,
                    *handle,
                    fd,
                    &name,
                    true,
                )?;
            }
            State::Detached => {
                return Err(Error::invalid_input(op, "the attachment is detached"));
            }
        }
        self.program_id = info.id;
        self.program_name = info.name;
        Ok(())
    }

    /// Leaves the program attached after this value is gone, recorded at `pin` when given.
    ///
    /// - clsact: the filter stays until someone deletes it. With a `pin` (a path on bpffs),
    ///   a symbolic link there records which filter it is (`ls -l` shows
    ///   `tc-clsact:ingress:prio=P:handle=H:prog=ID`), so [`detach_persisted`] later deletes
    ///   exactly that filter. Without one, `tc filter del` or [`remove_leftovers`] (which finds
    ///   it by its `lwtun:` name) removes it.
    /// - tcx: a link lives only while a file descriptor or a bpffs pin holds it, so `pin`
    ///   names the pin to create (`bpftool link show` lists it; removing the pin file detaches).
    ///
    /// Either way, [`detach_persisted`] with the same path undoes it, so a caller that records
    /// its attachments need not know which mechanism the kernel offered.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::{netns::NetNs, tc::{TcAttach, TcCounter, TcDirection}};
    ///
    /// let eth0 = NetNs::current()?.device("eth0")?;
    /// let counter = TcCounter::load()?;
    /// let pin = std::path::Path::new("/sys/fs/bpf/eth0-counter");
    /// TcAttach::new(&eth0, TcDirection::Ingress).attach(counter.program())?.persist(Some(pin))?;
    /// // Later, from any process:
    /// lwtun::tc::detach_persisted(&eth0, pin)?;
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// InvalidInput for a tcx attachment without a pin path; the kernel's error when the pin
    /// cannot be made (the attachment is detached then, as on drop:
    /// [`try_persist`](Self::try_persist) keeps it).
    pub fn persist(mut self, pin: Option<&std::path::Path>) -> Result<()> {
        self.try_persist(pin)
    }

    /// [`persist`](Self::persist) without giving the attachment up: when it fails, the
    /// attachment is still the caller's, attached as before (to persist with a pin path, or to
    /// detach); when it succeeds, dropping the value leaves the program attached.
    ///
    /// # Errors
    ///
    /// InvalidInput for a tcx attachment without a pin path, or a tcx pin path outside bpffs;
    /// NotFound when the pin's folder is missing; Exists when something is at the pin path.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::{netns::NetNs, tc::{TcAttach, TcCounter, TcDirection}};
    ///
    /// let eth0 = NetNs::current()?.device("eth0")?;
    /// let counter = TcCounter::load()?;
    /// let mut att = TcAttach::new(&eth0, TcDirection::Ingress).attach(counter.program())?;
    /// if att.try_persist(None).is_err() {
    ///     // A tcx link needs a pin; the attachment is still ours.
    ///     att.try_persist(Some(std::path::Path::new("/sys/fs/bpf/eth0-counter")))?;
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn try_persist(&mut self, pin: Option<&std::path::Path>) -> Result<()> {
        let op = "persist tc attachment";
        match (&self.state, pin) {
            (State::Clsact { .. }, None) => {
                self.state = State::Detached;
                Ok(())
            }
            (
                State::Clsact {
                    priority, handle, ..
                },
                Some(path),
            ) => {
                let record = ClsactRecord {
                    direction: self.direction,
                    priority: *priority,
                    handle: *handle,
                    program_id: self.program_id,
                };
                std::os::unix::fs::symlink(record.to_string(), path)
                    .map_err(|e| Error::io(op, e).with_object(path.display().to_string()))?;
                self.state = State::Detached;
                Ok(())
            }
            (State::Tcx { link }, Some(path)) => {
                crate::family::pins::check_pin_path(op, path)?;
                crate::family::pins::obj_pin(link.as_fd(), path)
                    .map_err(|e| Error::io(op, e).with_object(path.display().to_string()))?;
                self.state = State::Detached;
                Ok(())
            }
            (State::Tcx { .. }, None) => Err(Error::invalid_input(
                op,
                "a tcx link is detached when its last fd closes: give a bpffs path to pin it at",
            )),
            (State::Detached, _) => Err(Error::invalid_input(op, "the attachment is detached")),
        }
    }

    /// Detaches now and reports failures (drop does the same but cannot report them).
    pub fn detach(mut self) -> Result<()> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.state, State::Detached) {
            State::Tcx { link } => {
                drop(link);
                Ok(())
            }
            State::Clsact {
                mut nl,
                priority,
                handle,
                created_qdisc,
            } => {
                let parent = self.direction.clsact_parent();
                delete_filter_running(
                    &mut nl,
                    self.ifindex,
                    parent,
                    (priority, handle),
                    self.program_id,
                )?;
                if created_qdisc
                    && nl.bpf_filters(self.ifindex, CLSACT_INGRESS)?.is_empty()
                    && nl.bpf_filters(self.ifindex, CLSACT_EGRESS)?.is_empty()
                {
                    match nl.del_clsact(self.ifindex) {
                        Err(e)
                            if e.kind() != ErrorKind::NotFound
                                && e.kind() != ErrorKind::InvalidInput =>
                        {
                            return Err(e)
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            State::Detached => Ok(()),
        }
    }
}

impl Drop for TcAttachment {
    fn drop(&mut self) {
        // An interface that is gone took its filters with it; nothing else can be done here.
        let _ = self.detach_inner();
    }
}

/// What the bpffs symbolic link of a persisted clsact filter records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClsactRecord {
    direction: TcDirection,
    priority: u16,
    handle: u32,
    program_id: u32,
}

impl ClsactRecord {
    const PREFIX: &'static str = "tc-clsact:";

    fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix(Self::PREFIX)?;
        let mut parts = rest.split(':');
        let direction = match parts.next()? {
            "ingress" => TcDirection::Ingress,
            "egress" => TcDirection::Egress,
            _ => return None,
        };
        let mut field = |name: &str| -> Option<u64> {
            parts
                .next()?
                .strip_prefix(name)?
                .strip_prefix('=')?
                .parse()
                .ok()
        };
        let record = ClsactRecord {
            direction,
            priority: u16::try_from(field("prio")?).ok()?,
            handle: u32::try_from(field("handle")?).ok()?,
            program_id: u32::try_from(field("prog")?).ok()?,
        };
        parts.next().is_none().then_some(record)
    }
}

impl fmt::Display for ClsactRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}:prio={}:handle={}:prog={}",
            Self::PREFIX,
            self.direction,
            self.priority,
            self.handle,
            self.program_id
        )
    }
}

/// Deletes the cls_bpf filter at (priority, handle) under `parent` if it still runs program
/// `program_id`; a filter someone replaced or deleted meanwhile is left alone.
fn delete_filter_running(
    nl: &mut Netlink,
    ifindex: u32,
    parent: u32,
    (priority, handle): (u16, u32),
    program_id: u32,
) -> Result<()> {
    let runs = nl
        .bpf_filters(ifindex, parent)?
        .iter()
        .any(|f| f.priority == priority && f.handle == handle && f.program_id == Some(program_id));
    if runs {
        nl.del_bpf_filter(ifindex, parent, priority, handle)?;
    }
    Ok(())
}

/// Undoes [`TcAttachment::persist`] with a pin: detaches the attachment recorded at `pin` on
/// `device` and removes the pin.
///
/// - tcx: the link pin is removed; the kernel detaches the link once nothing else holds it
///   (after an RCU grace period).
/// - clsact: the filter the record names is deleted if it still runs the recorded program; one
///   that someone replaced or deleted meanwhile is left alone. The clsact qdisc stays.
///
/// # Examples
///
/// ```no_run
/// use lwtun::netns::NetNs;
///
/// let eth0 = NetNs::current()?.device("eth0")?;
/// lwtun::tc::detach_persisted(&eth0, std::path::Path::new("/sys/fs/bpf/eth0-counter"))?;
/// # Ok::<(), lwtun::Error>(())
/// ```
///
/// # Errors
///
/// NotFound when nothing is at `pin`; InvalidInput when `pin` is a symbolic link lwtun did not
/// write; the kernel's error deleting the filter or the pin (the pin stays then).
pub fn detach_persisted(device: &Device, pin: &std::path::Path) -> Result<()> {
    let op = "detach persisted tc attachment";
    let object = || pin.display().to_string();
    let meta =
        std::fs::symlink_metadata(pin).map_err(|e| Error::io(op, e).with_object(object()))?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(pin).map_err(|e| Error::io(op, e).with_object(object()))?;
        let text = target.to_string_lossy();
        let record = ClsactRecord::parse(&text).ok_or_else(|| {
            Error::invalid_input(
                op,
                format!(
                    "{} points to {text:?}, which is no record of a persisted lwtun clsact \
                     filter; remove it by hand if it is not needed",
                    pin.display()
                ),
            )
        })?;
        delete_filter_running(
            &mut device.netlink()?,
            device.index(),
            record.direction.clsact_parent(),
            (record.priority, record.handle),
            record.program_id,
        )
        .map_err(|e| e.with_object(object()))?;
    }
    std::fs::remove_file(pin).map_err(|e| Error::io(op, e).with_object(object()))
}

/// Deletes the clsact filters lwtun left on `device` (named `lwtun:...`, from a process that
/// crashed or [persisted](TcAttachment::persist) them), on both hooks. Returns how many were
/// deleted. Filters of other tools are left alone; tcx links
/// need no clean-up (they go with their last fd or pin).
///
/// # Errors
///
/// The kernel's error listing or deleting filters.
pub fn remove_leftovers(device: &Device) -> Result<usize> {
    let ifindex = device.index();
    let mut nl = device.netlink()?;
    let mut removed = 0;
    for parent in [CLSACT_INGRESS, CLSACT_EGRESS] {
        for f in nl.bpf_filters(ifindex, parent)? {
            if f.name.starts_with(FILTER_NAME_PREFIX) {
                nl.del_bpf_filter(ifindex, parent, f.priority, f.handle)?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Detaches the BPF link `id` (a tcx attachment [`attached`] reports with its `link_id`)
/// whatever holds it: the processes and pins that hold the link keep a defunct link, and the
/// program stops running on the hook at once (`BPF_LINK_DETACH`, `bpftool link detach id ID`).
///
/// # Errors
///
/// NotFound when no link has that id; the kernel's error detaching it.
///
/// # Examples
///
/// ```no_run
/// use lwtun::{netns::NetNs, tc::{attached, detach_link, TcDirection}};
///
/// let eth0 = NetNs::current()?.device("eth0")?;
/// for p in attached(&eth0, TcDirection::Ingress)? {
///     if let Some(link) = p.link_id {
///         detach_link(link)?;
///     }
/// }
/// # Ok::<(), lwtun::Error>(())
/// ```
pub fn detach_link(id: u32) -> Result<()> {
    let op = "detach link";
    let object = || format!("link {id}");
    // SAFETY: a plain syscall wrapper; the fd it returns is ours.
    let fd = unsafe { libbpf_sys::bpf_link_get_fd_by_id(id) };
    if fd < 0 {
        return Err(Error::io(op, std::io::Error::from_raw_os_error(-fd)).with_object(object()));
    }
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a valid link fd.
    let rc = unsafe { libbpf_sys::bpf_link_detach(fd.as_raw_fd()) };
    if rc < 0 {
        return Err(Error::io(op, std::io::Error::from_raw_os_error(-rc)).with_object(object()));
    }
    Ok(())
}

/// One program attached to a device's tc hook, as [`attached`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcProgramInfo {
    /// [`TcMode::Tcx`] or [`TcMode::Clsact`].
    pub mode: TcMode,
    /// The hook.
    pub direction: TcDirection,
    /// The program's kernel id.
    pub program_id: u32,
    /// The program's name (up to 15 characters, as the kernel keeps it), where it could be read.
    pub program_name: Option<String>,
    /// tcx: the link's kernel id (`None` for programs attached without a link).
    pub link_id: Option<u32>,
    /// clsact: the filter (priority, handle, name).
    pub filter: Option<BpfFilter>,
}

/// Lists the programs on `device`'s `direction` hook in the order they run: tcx programs
/// first, then clsact filters by priority.
///
/// # Examples
///
/// ```no_run
/// use lwtun::{netns::NetNs, tc::{attached, TcDirection}};
///
/// let eth0 = NetNs::current()?.device("eth0")?;
/// for p in attached(&eth0, TcDirection::Ingress)? {
///     println!("{:?} id {} {:?}", p.mode, p.program_id, p.program_name);
/// }
/// # Ok::<(), lwtun::Error>(())
/// ```
pub fn attached(device: &Device, direction: TcDirection) -> Result<Vec<TcProgramInfo>> {
    device.enter(|| attached_here(device.index(), direction))
}

fn attached_here(ifindex: u32, direction: TcDirection) -> Result<Vec<TcProgramInfo>> {
    let mut out = Vec::new();
    if tcx_supported() {
        let (progs, links) = tcx_query(ifindex, direction)?;
        for (i, id) in progs.iter().enumerate() {
            out.push(TcProgramInfo {
                mode: TcMode::Tcx,
                direction,
                program_id: *id,
                program_name: program_name_by_id(*id),
                link_id: links.get(i).copied().filter(|l| *l != 0),
                filter: None,
            });
        }
    }
    let mut nl = Netlink::open()?;
    let mut filters = nl.bpf_filters(ifindex, direction.clsact_parent())?;
    filters.sort_by_key(|f| (f.chain, f.priority, f.handle));
    for f in filters {
        let id = f.program_id.unwrap_or(0);
        out.push(TcProgramInfo {
            mode: TcMode::Clsact,
            direction,
            program_id: id,
            program_name: program_name_by_id(id),
            link_id: None,
            filter: Some(f),
        });
    }
    Ok(out)
}

fn tcx_query(ifindex: u32, direction: TcDirection) -> Result<(Vec<u32>, Vec<u32>)> {
    let mut cap = 64usize;
    loop {
        let mut progs = vec![0u32; cap];
        let mut links = vec![0u32; cap];
        let mut opts = libbpf_sys::bpf_prog_query_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_prog_query_opts>() as _,
            prog_ids: progs.as_mut_ptr(),
            link_ids: links.as_mut_ptr(),
            ..Default::default()
        };
        opts.__bindgen_anon_1.count = cap as u32;
        // SAFETY: prog_ids and link_ids point at `cap` writable u32s, as count says.
        let rc = unsafe {
            libbpf_sys::bpf_prog_query_opts(ifindex as i32, direction.tcx_attach_type(), &mut opts)
        };
        // SAFETY: the kernel wrote the count (a plain u32 in either union member).
        let count = unsafe { opts.__bindgen_anon_1.count } as usize;
        if rc == -libc::ENOSPC || count > cap {
            cap = count.max(cap * 2);
            continue;
        }
        if rc < 0 {
            return Err(
                Error::io("query tcx programs", std::io::Error::from_raw_os_error(-rc))
                    .with_object(format!("ifindex {ifindex} {direction}")),
            );
        }
        progs.truncate(count);
        links.truncate(count);
        return Ok((progs, links));
    }
}

/// The verdict a [`TcCounter`] returns for every packet it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TcVerdict {
    /// `TC_ACT_UNSPEC` / `TCX_NEXT`: hand the packet to the next program (pass if none).
    #[default]
    Next,
    /// `TC_ACT_OK` / `TCX_PASS`: pass the packet, skipping later programs.
    Pass,
    /// `TC_ACT_SHOT` / `TCX_DROP`: drop the packet.
    Drop,
}

impl TcVerdict {
    fn code(self) -> i32 {
        match self {
            TcVerdict::Next => -1,
            TcVerdict::Pass => 0,
            TcVerdict::Drop => 2,
        }
    }
}

/// The `tc_count` program family: a `sched_cls` program that counts packets and bytes and
/// returns a settable [`TcVerdict`]. It shows which hook, direction and order traffic crosses.
///
/// # Examples
///
/// ```no_run
/// use lwtun::tc::{TcAttach, TcCounter, TcDirection, TcVerdict};
///
/// let counter = TcCounter::load()?;
/// let eth0 = lwtun::netns::NetNs::current()?.device("eth0")?;
/// let _a = TcAttach::new(&eth0, TcDirection::Egress).attach(counter.program())?;
/// counter.set_verdict(TcVerdict::Drop)?;           // now the device sends nothing
/// println!("{:?}", counter.counter()?);
/// # Ok::<(), lwtun::Error>(())
/// ```
#[non_exhaustive]
pub struct TcCounter {
    object: libbpf_rs::Object,
    prog: OwnedFd,
}

impl fmt::Debug for TcCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcCounter")
            .field("prog", &self.prog)
            .finish()
    }
}

impl TcCounter {
    /// Loads the program and its maps.
    ///
    /// # Errors
    ///
    /// Permission without CAP_BPF; the verifier's error otherwise.
    pub fn load() -> Result<Self> {
        let object = crate::program::load_object("tc_count", crate::skel::tc_count::OBJECT)?;
        let prog = crate::program::program_fd(&object, "count_tc")?;
        Ok(TcCounter { object, prog })
    }

    /// The program, for [`TcAttach::attach`].
    pub fn program(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }

    fn map(&self, name: &str) -> Result<libbpf_rs::Map<'_>> {
        self.object
            .maps()
            .find(|m| m.name() == name)
            .ok_or_else(|| Error::not_found("find map", format!("map {name} in tc_count")))
    }

    /// Packets and bytes counted (from the Ethernet header), summed over CPUs.
    ///
    /// # Errors
    ///
    /// The kernel's error reading the map.
    pub fn counter(&self) -> Result<crate::program::Counter> {
        crate::program::sum_percpu(&self.map("tc_counter")?, 0, "read tc counter")
    }

    /// Sets the verdict returned from now on.
    ///
    /// # Errors
    ///
    /// The kernel's error writing the map.
    pub fn set_verdict(&self, verdict: TcVerdict) -> Result<()> {
        self.map("verdict")?
            .update(
                &0u32.to_ne_bytes(),
                &verdict.code().to_ne_bytes(),
                libbpf_rs::MapFlags::ANY,
            )
            .map_err(|e| Error::bpf("set tc verdict", e))
    }
}

/// The result of one [`test_run`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TestRun {
    /// The program's return value (`TC_ACT_OK` 0, `TC_ACT_SHOT` 2, ...).
    pub verdict: i32,
    /// The packet after the program (with its Ethernet header).
    pub packet: Vec<u8>,
    /// `skb->mark` after the program (see [`Decap::set_key_to_mark`](crate::decap::Decap::set_key_to_mark)).
    pub mark: u32,
    /// The kernel's mean time per run.
    pub duration: Duration,
}

/// Bytes handed to and read back from BPF_PROG_TEST_RUN as `struct __sk_buff`: more than the
/// struct has (192 bytes on 6.18) and all zero, which the kernel accepts as a context with no
/// field set; it writes the struct back, so a shorter output buffer would be refused (ENOSPC).
const SKB_CTX_LEN: usize = 256;
const SKB_MARK_OFFSET: usize = 8;

/// `TC_ACT_UNSPEC` (`TCX_NEXT` for tcx): not decided, the next program on the hook runs; after
/// the last one the packet goes on. What lwtun's own tc programs return for packets that are not
/// theirs, so programs attached after them still see traffic.
///
/// # Examples
///
/// ```no_run
/// use lwtun::tc::{test_run, TC_ACT_UNSPEC};
/// # fn check(prog: std::os::fd::BorrowedFd<'_>, frame: &[u8]) -> lwtun::Result<()> {
/// let run = test_run(prog, frame, 1)?;
/// if run.verdict == TC_ACT_UNSPEC {
///     println!("handed on to the next program");
/// }
/// # Ok(()) }
/// ```
pub const TC_ACT_UNSPEC: i32 = -1;
/// `TC_ACT_OK`: the packet goes on, skipping the programs after this one.
pub const TC_ACT_OK: i32 = 0;
/// `TC_ACT_SHOT`: the packet is dropped.
pub const TC_ACT_SHOT: i32 = 2;

/// Runs a `sched_cls` program on `frame` (an Ethernet frame) with BPF_PROG_TEST_RUN, `repeat`
/// times, and returns the verdict, the packet after the last run and the mean time per run.
///
/// # Errors
///
/// InvalidInput for a frame shorter than an Ethernet header; the kernel's error otherwise.
///
/// # Examples
///
/// ```no_run
/// use lwtun::decap::Decap;
/// use lwtun::tc::test_run;
///
/// let decap = Decap::load()?;
/// let frame = [0u8; 64];
/// let run = test_run(decap.program(), &frame, 1)?;
/// println!("verdict {} after {:?}", run.verdict, run.duration);
/// # Ok::<(), lwtun::Error>(())
/// ```
pub fn test_run(program: impl AsFd, frame: &[u8], repeat: u32) -> Result<TestRun> {
    let op = "run tc program (BPF_PROG_TEST_RUN)";
    crate::program::check_frame(op, frame)?;
    let ctx_in = [0u8; SKB_CTX_LEN];
    let mut ctx_out = [0u8; SKB_CTX_LEN];
    let run = crate::program::test_run_raw(
        program.as_fd(),
        crate::program::TestRunArgs {
            data: frame,
            out_room: Some(512),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            repeat,
            ..Default::default()
        },
    )
    .map_err(|errno| Error::io(op, std::io::Error::from_raw_os_error(errno)))?;
    Ok(TestRun {
        verdict: run.retval as i32,
        packet: run.data,
        mark: u32::from_ne_bytes(
            ctx_out[SKB_MARK_OFFSET..SKB_MARK_OFFSET + 4]
                .try_into()
                .expect("4 bytes"),
        ),
        duration: run.duration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(priority: u16) -> BpfFilter {
        BpfFilter {
            ifindex: 1,
            parent: CLSACT_INGRESS,
            priority,
            protocol: 3,
            handle: 1,
            chain: 0,
            name: String::new(),
            program_id: None,
            direct_action: true,
        }
    }

    #[test]
    fn default_priority_goes_after_the_last_filter() {
        assert_eq!(next_priority(&[]), 1);
        assert_eq!(next_priority(&[filter(1), filter(5)]), 6);
        assert_eq!(next_priority(&[filter(1), filter(u16::MAX)]), 2);
    }

    #[test]
    fn clsact_settings_select_clsact_in_auto_mode() {
        let lo = crate::netns::NetNs::current()
            .unwrap()
            .device("lo")
            .unwrap();
        let a = TcAttach::new(&lo, TcDirection::Ingress).priority(3);
        assert_eq!(a.resolved_mode(), TcMode::Clsact);
        let a = TcAttach::new(&lo, TcDirection::Ingress).mode(TcMode::Clsact);
        assert_eq!(a.resolved_mode(), TcMode::Clsact);
    }
}
