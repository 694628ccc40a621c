//! Attaching XDP programs to interfaces: bpf_link first, netlink where links are missing.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use super::program::{errno_error, owned_fd};
use crate::device::Device;
use crate::error::{Error, ErrorKind, Result};
use crate::program::{program_info, ProgramInfo};

/// Where the program runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum XdpMode {
    /// Native (driver) mode where the driver supports it, generic otherwise (the kernel picks).
    #[default]
    Auto,
    /// Native mode in the driver (`XDP_FLAGS_DRV_MODE`); fails on drivers without XDP.
    Native,
    /// Generic mode on the skb path (`XDP_FLAGS_SKB_MODE`): works on every device, slower.
    ///
    /// Kernel: Linux 4.12+.
    Generic,
}

impl XdpMode {
    fn flags(self) -> u32 {
        match self {
            XdpMode::Auto => 0,
            XdpMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
            XdpMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
        }
    }
}

/// How an attachment was made.
///
/// Kernel: Linux 4.10+ (netlink); `bpf_link`: 5.9+.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachVia {
    /// A bpf_link where the kernel has XDP links (5.9+), netlink otherwise.
    #[default]
    Auto,
    /// A bpf_link (`BPF_LINK_CREATE`): owned by its fd, cannot be replaced by a netlink attach.
    Link,
    /// rtnetlink `IFLA_XDP`: stays attached until detached, whatever happens to the process.
    Netlink,
}

/// Options of [`XdpAttachment::attach`], built with `..Default::default()`.
#[derive(Clone, Copy, Debug, Default)]
pub struct XdpOptions {
    /// Native, generic, or the kernel's choice.
    pub mode: XdpMode,
    /// bpf_link or netlink.
    pub via: AttachVia,
}

/// What is attached to an interface ([`XdpAttachment::query`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpQuery {
    /// The program in native mode, by id.
    pub native: Option<u32>,
    /// The program in generic mode, by id.
    pub generic: Option<u32>,
    /// The program offloaded to hardware, by id.
    pub offloaded: Option<u32>,
}

impl XdpQuery {
    /// Whether nothing is attached.
    pub fn is_empty(&self) -> bool {
        self.native.is_none() && self.generic.is_none() && self.offloaded.is_none()
    }

    /// The id of the program attached in `mode` (`Auto`: any mode).
    pub fn program(&self, mode: XdpMode) -> Option<u32> {
        match mode {
            XdpMode::Native => self.native,
            XdpMode::Generic => self.generic,
            XdpMode::Auto => self.native.or(self.generic).or(self.offloaded),
        }
    }
}

enum Handle {
    Link(OwnedFd),
    Netlink { flags: u32 },
    Released,
}

/// An XDP program attached to an interface. Dropping it detaches the program (errors ignored;
/// call [`detach`](Self::detach) to see them) unless [`pin`](Self::pin) or
/// [`persist`](Self::persist) kept it.
///
/// Kernel: Linux 4.10+ (native XDP 4.8, generic/skb mode 4.12; through a `bpf_link`: 5.9+).
///
/// A link attachment lives as long as its fd: if the process dies, the kernel detaches it. A
/// netlink attachment outlives the process when persisted.
///
/// # Examples
///
/// ```no_run
/// use lwtun::{netns::NetNs, xdp::{XdpAttachment, XdpMode, XdpOptions, XdpPass}};
///
/// let pass = XdpPass::load()?;
/// let veth0 = NetNs::open("lab")?.device("veth0")?;
/// let mut att = XdpAttachment::attach(pass.program(), &veth0, XdpOptions {
///     mode: XdpMode::Native,
///     ..Default::default()
/// })?;
/// assert_eq!(XdpAttachment::query(&veth0)?.native, Some(pass.program().id()));
/// att.replace(pass.drop_program())?;     // atomic: no frame sees an empty hook
/// att.detach()?;
/// # Ok::<(), lwtun::Error>(())
/// ```
#[must_use = "dropping an XdpAttachment detaches the program"]
pub struct XdpAttachment {
    device: Device,
    ifindex: u32,
    mode: XdpMode,
    program_id: u32,
    handle: Handle,
}

impl std::fmt::Debug for XdpAttachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpAttachment")
            .field("device", &self.device)
            .field("mode", &self.mode)
            .field("program_id", &self.program_id)
            .field("via", &self.via())
            .finish()
    }
}

impl XdpAttachment {
    /// Attaches `program` (any loaded XDP program: an [`XdpProgram`](super::XdpProgram), a
    /// [`ProgChain`](crate::chain::ProgChain)'s or [`Dispatcher`](crate::chain::Dispatcher)'s
    /// entry, a skeleton's program) to `device`, in the device's namespace.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] when `program` is not an XDP program;
    /// [`ErrorKind::Exists`] when a program is attached already (replace it through its own
    /// attachment, or detach it first); [`ErrorKind::NotFound`] when the device is gone;
    /// [`ErrorKind::Unsupported`] for native mode on a driver without XDP, or a bpf_link on a
    /// kernel before 5.9 when [`AttachVia::Link`] is asked for.
    pub fn attach(program: impl AsFd, device: &Device, options: XdpOptions) -> Result<Self> {
        let op = "attach XDP program";
        let info = xdp_info(op, program.as_fd())?;
        device.enter(|| Self::attach_here(program.as_fd(), &info, device, options))
    }

    fn attach_here(
        program: std::os::fd::BorrowedFd<'_>,
        info: &ProgramInfo,
        device: &Device,
        options: XdpOptions,
    ) -> Result<Self> {
        let op = "attach XDP program";
        let ifindex = device.index();
        let object = format!("{} (id {}) on {device}", info.name, info.id);
        let flags = options.mode.flags();
        if options.via != AttachVia::Netlink {
            // SAFETY: zeroed opts with sz set are the defaults; flags select the mode.
            let mut opts: libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
            opts.sz = std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _;
            opts.flags = flags;
            // SAFETY: program fd is live; opts outlives the call.
            let fd = unsafe {
                libbpf_sys::bpf_link_create(
                    program.as_raw_fd(),
                    ifindex as i32,
                    libbpf_sys::BPF_XDP,
                    &opts,
                )
            };
            if fd >= 0 {
                return Ok(XdpAttachment {
                    device: device.clone(),
                    ifindex,
                    mode: options.mode,
                    program_id: info.id,
                    handle: Handle::Link(owned_fd(fd)),
                });
            }
            let errno = -fd;
            // Kernels before 5.9 have no XDP links and answer EINVAL for BPF_LINK_CREATE with
            // BPF_XDP: fall back to netlink then (a genuinely invalid request fails there too,
            // with netlink's own error).
            let no_links = errno == libc::EINVAL && options.via == AttachVia::Auto;
            if !no_links {
                return Err(attach_error(op, errno, options.mode).with_object(object));
            }
        }
        let flags = flags | libbpf_sys::XDP_FLAGS_UPDATE_IF_NOEXIST;
        // SAFETY: program fd is live; null opts are allowed.
        let rc = unsafe {
            libbpf_sys::bpf_xdp_attach(ifindex as i32, program.as_raw_fd(), flags, std::ptr::null())
        };
        if rc < 0 {
            return Err(attach_error(op, -rc, options.mode).with_object(object));
        }
        Ok(XdpAttachment {
            device: device.clone(),
            ifindex,
            mode: options.mode,
            program_id: info.id,
            handle: Handle::Netlink {
                flags: options.mode.flags(),
            },
        })
    }

    /// Replaces the attached program with `program` atomically: frames see either the old or
    /// the new program, never none. A link is updated in place (`BPF_LINK_UPDATE` with
    /// `BPF_F_REPLACE`); a netlink attachment uses `XDP_FLAGS_REPLACE` with the old program as the
    /// expected one, so a program someone else attached meanwhile is not overwritten.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Exists`] / [`ErrorKind::NotFound`] when the attached program is no longer the
    /// one this attachment put there; the attachment then keeps its old state.
    pub fn replace(&mut self, program: impl AsFd) -> Result<()> {
        let op = "replace XDP program";
        let info = xdp_info(op, program.as_fd())?;
        let device = self.device.clone();
        device.enter(|| self.replace_here(program.as_fd(), &info))
    }

    fn replace_here(
        &mut self,
        program: std::os::fd::BorrowedFd<'_>,
        info: &ProgramInfo,
    ) -> Result<()> {
        let op = "replace XDP program";
        let object = format!(
            "id {} -> {} (id {}) on {}",
            self.program_id, info.name, info.id, self.device
        );
        let old = prog_fd_by_id(op, self.program_id)?;
        let rc = match &self.handle {
            Handle::Link(link) => {
                // SAFETY: zeroed opts with sz set; old_prog_fd makes the update conditional.
                let mut opts: libbpf_sys::bpf_link_update_opts = unsafe { std::mem::zeroed() };
                opts.sz = std::mem::size_of::<libbpf_sys::bpf_link_update_opts>() as _;
                opts.flags = libbpf_sys::BPF_F_REPLACE;
                opts.old_prog_fd = old.as_raw_fd() as u32;
                // SAFETY: fds are live for the call.
                unsafe { libbpf_sys::bpf_link_update(link.as_raw_fd(), program.as_raw_fd(), &opts) }
            }
            Handle::Netlink { flags } => {
                // SAFETY: zeroed opts with sz set.
                let mut opts: libbpf_sys::bpf_xdp_attach_opts = unsafe { std::mem::zeroed() };
                opts.sz = std::mem::size_of::<libbpf_sys::bpf_xdp_attach_opts>() as _;
                opts.old_prog_fd = old.as_raw_fd();
                // SAFETY: fds are live for the call.
                unsafe {
                    libbpf_sys::bpf_xdp_attach(
                        self.ifindex as i32,
                        program.as_raw_fd(),
                        flags | libbpf_sys::XDP_FLAGS_REPLACE,
                        &opts,
                    )
                }
            }
            Handle::Released => {
                return Err(Error::invalid_input(op, "attachment already released"))
            }
        };
        if rc < 0 {
            return Err(attach_error(op, -rc, self.mode).with_object(object));
        }
        self.program_id = info.id;
        Ok(())
    }

    /// The interface index (in the device's namespace).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The device the program is attached to.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The mode asked for.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// The id of the attached program.
    pub fn program_id(&self) -> u32 {
        self.program_id
    }

    /// Whether this is a bpf_link or a netlink attachment.
    pub fn via(&self) -> AttachVia {
        match self.handle {
            Handle::Link(_) => AttachVia::Link,
            _ => AttachVia::Netlink,
        }
    }

    /// What is attached to `device`, per mode.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when the device is gone.
    pub fn query(device: &Device) -> Result<XdpQuery> {
        device
            .enter(|| Self::query_here(device.index()))
            .map_err(|e| e.with_object(device.to_string()))
    }

    fn query_here(ifindex: u32) -> Result<XdpQuery> {
        let op = "query XDP programs";
        // SAFETY: zeroed opts with sz set; the kernel fills them.
        let mut opts: libbpf_sys::bpf_xdp_query_opts = unsafe { std::mem::zeroed() };
        opts.sz = std::mem::size_of::<libbpf_sys::bpf_xdp_query_opts>() as _;
        // SAFETY: opts is live.
        let rc = unsafe { libbpf_sys::bpf_xdp_query(ifindex as i32, 0, &mut opts) };
        if rc < 0 {
            return Err(errno_error(op, -rc).with_object(format!("ifindex {ifindex}")));
        }
        let id = |v: u32| (v != 0).then_some(v);
        let mut q = XdpQuery {
            native: id(opts.drv_prog_id),
            generic: id(opts.skb_prog_id),
            offloaded: id(opts.hw_prog_id),
        };
        // With one program attached the kernel reports it in prog_id and attach_mode only.
        if q.is_empty() && opts.prog_id != 0 {
            match opts.attach_mode as u32 {
                libbpf_sys::XDP_ATTACHED_DRV => q.native = Some(opts.prog_id),
                libbpf_sys::XDP_ATTACHED_SKB => q.generic = Some(opts.prog_id),
                libbpf_sys::XDP_ATTACHED_HW => q.offloaded = Some(opts.prog_id),
                _ => {}
            }
        }
        Ok(q)
    }

    /// Detaches now, reporting failures.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when the interface is gone (the program went with it).
    pub fn detach(mut self) -> Result<()> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<()> {
        let device = self.device.clone();
        device.enter(|| self.detach_here())
    }

    fn detach_here(&mut self) -> Result<()> {
        let op = "detach XDP program";
        match std::mem::replace(&mut self.handle, Handle::Released) {
            Handle::Link(fd) => {
                // SAFETY: fd is a live link fd.
                let rc = unsafe { libbpf_sys::bpf_link_detach(fd.as_raw_fd()) };
                drop(fd);
                if rc < 0 && -rc != libc::ENOLINK {
                    return Err(errno_error(op, -rc).with_object(self.device.to_string()));
                }
                Ok(())
            }
            Handle::Netlink { flags } => {
                // Only our program: XDP_FLAGS_REPLACE with ours as expected and -1 as the new one.
                let old = match prog_fd_by_id(op, self.program_id) {
                    Ok(fd) => fd,
                    Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(e),
                };
                // SAFETY: zeroed opts with sz set.
                let mut opts: libbpf_sys::bpf_xdp_attach_opts = unsafe { std::mem::zeroed() };
                opts.sz = std::mem::size_of::<libbpf_sys::bpf_xdp_attach_opts>() as _;
                opts.old_prog_fd = old.as_raw_fd();
                // SAFETY: opts is live.
                let rc = unsafe {
                    libbpf_sys::bpf_xdp_attach(
                        self.ifindex as i32,
                        -1,
                        flags | libbpf_sys::XDP_FLAGS_REPLACE,
                        &opts,
                    )
                };
                if rc < 0 && -rc != libc::ENODEV {
                    return Err(errno_error(op, -rc).with_object(self.device.to_string()));
                }
                Ok(())
            }
            Handle::Released => Ok(()),
        }
    }

    /// Keeps a netlink attachment after this value is dropped (and after the process exits).
    /// Remove it later with [`detach_interface`](Self::detach_interface).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a bpf_link attachment, which ends with its last fd: use
    /// [`pin`](Self::pin) for those. The attachment is then detached as it is dropped.
    pub fn persist(mut self) -> Result<()> {
        self.try_persist()
    }

    /// [`persist`](Self::persist) without giving the attachment up: when it fails, the
    /// attachment is still the caller's, attached as before; when it succeeds, dropping the
    /// value leaves the program attached.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a bpf_link attachment (use [`try_pin`](Self::try_pin)).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::{netns::NetNs, xdp::{XdpAttachment, XdpOptions, XdpPass}};
    ///
    /// let pass = XdpPass::load()?;
    /// let veth0 = NetNs::open("lab")?.device("veth0")?;
    /// let mut att = XdpAttachment::attach(pass.program(), &veth0, XdpOptions::default())?;
    /// if let Err(e) = att.try_persist() {
    ///     eprintln!("{e}; pinning the link instead");
    ///     att.try_pin("/sys/fs/bpf/veth0-xdp")?;
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn try_persist(&mut self) -> Result<()> {
        match self.handle {
            Handle::Netlink { .. } => {
                self.handle = Handle::Released;
                Ok(())
            }
            _ => Err(Error::invalid_input(
                "persist XDP attachment",
                format!(
                    "the XDP program on {} is attached by a bpf_link, which ends when its fd \
                     closes; pin the link with XdpAttachment::try_pin",
                    self.device.name()
                ),
            )),
        }
    }

    /// Pins a bpf_link attachment at `path` (on a bpffs): it stays attached until the pin is
    /// removed with [`detach_pinned`](Self::detach_pinned).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a netlink attachment (use [`persist`](Self::persist)),
    /// [`ErrorKind::Exists`] when `path` exists, [`ErrorKind::NotFound`] when its folder does not.
    /// The attachment is detached then, as on drop: [`try_pin`](Self::try_pin) keeps it.
    pub fn pin(mut self, path: impl AsRef<Path>) -> Result<()> {
        self.try_pin(path)
    }

    /// [`pin`](Self::pin) without giving the attachment up: when it fails, the attachment is
    /// still the caller's, attached as before (to pin elsewhere, or to detach); when it
    /// succeeds, the pin holds the link and dropping the value leaves the program attached.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a netlink attachment (use
    /// [`try_persist`](Self::try_persist)) or a path outside bpffs; [`ErrorKind::Exists`] when
    /// `path` exists; [`ErrorKind::NotFound`] when its folder does not.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::{netns::NetNs, xdp::{AttachVia, XdpAttachment, XdpOptions, XdpPass}};
    ///
    /// let pass = XdpPass::load()?;
    /// let veth0 = NetNs::open("lab")?.device("veth0")?;
    /// let options = XdpOptions { via: AttachVia::Link, ..Default::default() };
    /// let mut att = XdpAttachment::attach(pass.program(), &veth0, options)?;
    /// if att.try_pin("/sys/fs/bpf/no-such-folder/xdp").is_err() {
    ///     att.try_pin("/sys/fs/bpf/veth0-xdp")?; // still attached: pin it elsewhere
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn try_pin(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let op = "pin XDP link";
        let path = path.as_ref();
        let Handle::Link(fd) = &self.handle else {
            return Err(Error::invalid_input(
                op,
                format!(
                    "the XDP program on {} is attached by netlink, which has no link to pin; keep \
                     it with XdpAttachment::try_persist",
                    self.device.name()
                ),
            ));
        };
        crate::family::pins::check_pin_path(op, path)?;
        crate::family::pins::obj_pin(fd.as_fd(), path)
            .map_err(|e| Error::io(op, e).with_object(path.display().to_string()))?;
        // The pin holds the link now; closing our fd leaves it attached.
        self.handle = Handle::Released;
        Ok(())
    }

    /// Detaches the bpf_link pinned at `path` and removes the pin.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when nothing is pinned there.
    pub fn detach_pinned(path: impl AsRef<Path>) -> Result<()> {
        let op = "detach pinned XDP link";
        let path = path.as_ref();
        let c = cpath(op, path)?;
        // SAFETY: c is NUL-terminated.
        let fd = unsafe { libbpf_sys::bpf_obj_get(c.as_ptr()) };
        if fd < 0 {
            return Err(errno_error(op, -fd).with_object(path.display().to_string()));
        }
        let fd = owned_fd(fd);
        // SAFETY: fd is live.
        let rc = unsafe { libbpf_sys::bpf_link_detach(fd.as_raw_fd()) };
        if rc < 0 && -rc != libc::ENOLINK {
            return Err(errno_error(op, -rc).with_object(path.display().to_string()));
        }
        std::fs::remove_file(path).map_err(|e| Error::io(op, e))
    }

    /// Detaches whatever netlink-attached program runs on `device` in `mode` (`Auto`: native and
    /// generic). For cleaning up persisted attachments; bpf_link attachments are not affected.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when the device is gone.
    pub fn detach_interface(device: &Device, mode: XdpMode) -> Result<()> {
        device
            .enter(|| Self::detach_interface_here(device.index(), mode))
            .map_err(|e| e.with_object(device.to_string()))
    }

    fn detach_interface_here(ifindex: u32, mode: XdpMode) -> Result<()> {
        let op = "detach XDP programs from interface";
        let modes: &[XdpMode] = match mode {
            XdpMode::Auto => &[XdpMode::Native, XdpMode::Generic],
            m => std::slice::from_ref(match m {
                XdpMode::Native => &XdpMode::Native,
                _ => &XdpMode::Generic,
            }),
        };
        for m in modes {
            // SAFETY: null opts are allowed.
            let rc =
                unsafe { libbpf_sys::bpf_xdp_detach(ifindex as i32, m.flags(), std::ptr::null()) };
            if rc < 0 {
                return Err(errno_error(op, -rc).with_object(format!("ifindex {ifindex}")));
            }
        }
        Ok(())
    }
}

impl Drop for XdpAttachment {
    fn drop(&mut self) {
        let _ = self.detach_inner();
    }
}

/// The program's info, or InvalidInput when it is not an XDP program.
fn xdp_info(op: &str, fd: std::os::fd::BorrowedFd<'_>) -> Result<ProgramInfo> {
    let info = program_info(fd)?;
    if info.prog_type != libbpf_sys::BPF_PROG_TYPE_XDP {
        return Err(Error::invalid_input(
            op,
            format!(
                "program {} (id {}) has type {}, not xdp (SEC(\"xdp\"))",
                info.name,
                info.id,
                crate::bpf_fd::prog_type_name(info.prog_type)
            ),
        ));
    }
    Ok(info)
}

fn cpath(op: &str, path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::invalid_input(op, "path contains a NUL byte"))
}

fn prog_fd_by_id(op: &str, id: u32) -> Result<OwnedFd> {
    // SAFETY: plain syscall wrapper.
    let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return Err(errno_error(op, -fd).with_object(format!("program id {id}")));
    }
    Ok(owned_fd(fd))
}

fn attach_error(op: &str, errno: i32, mode: XdpMode) -> Error {
    match errno {
        libc::EOPNOTSUPP if mode == XdpMode::Native => {
            Error::unsupported(op, "native XDP on this driver", None)
                .with_hint("attach in generic mode (XdpMode::Generic), which every driver has")
        }
        libc::EBUSY | libc::EEXIST => Error::other(
            ErrorKind::Exists,
            op,
            "another XDP program is attached to this interface; replace it through its owner or \
             detach it first",
        ),
        e => errno_error(op, e),
    }
}
