//! Owned BPF programs for the LWT hooks, and the names routes give them.
//!
//! The kernel stores only a *name* with an LWT route (no fd, no id), compares routes' encaps by
//! that name alone, and lets two routes whose programs share a name share one fib entry: a route
//! installed with a different program under an existing name silently runs the old one. So every
//! program lwtun installs is named `lwtun:<program>:<id>` ([`route_name`]), unique per loaded
//! program, and a dumped route's name leads back to the program ([`LwtProgram::from_route_name`]).
//!
//! Program families (one `bpf/NAME.bpf.c` each) are loaded into an owned `libbpf_rs::Object`; no
//! skeleton lifetime reaches a public type. [`LwtCounter`] is the smallest family: a counting
//! program per hook.

use std::ffi::CStr;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use libbpf_rs::libbpf_sys;
use libbpf_rs::{MapCore, Object, ObjectBuilder};

use crate::abi;
use crate::error::{Error, ErrorKind, Result};
use crate::netlink::route::ProgRef;
use crate::skel::lwt_count::types::lwtun_counter;

/// Prefix of every route program name lwtun gives.
pub const ROUTE_NAME_PREFIX: &str = "lwtun:";

/// The lightweight-tunnel hooks a route can run programs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// `lwt_in`: packets the route delivers on input (after the input route lookup).
    In,
    /// `lwt_out`: locally generated packets, before the output path.
    Out,
    /// `lwt_xmit`: packets about to be transmitted; may push headers and redirect.
    Xmit,
    /// seg6local `End.BPF`: an SRv6 endpoint function (IPv6 routes).
    Seg6Local,
}

impl Hook {
    /// The three LWT BPF hooks of an `encap bpf` route.
    pub const LWT: [Hook; 3] = [Hook::In, Hook::Out, Hook::Xmit];

    /// The BPF program type a program must have to run at this hook.
    pub fn program_type(self) -> libbpf_rs::ProgramType {
        match self {
            Hook::In => libbpf_rs::ProgramType::LwtIn,
            Hook::Out => libbpf_rs::ProgramType::LwtOut,
            Hook::Xmit => libbpf_rs::ProgramType::LwtXmit,
            Hook::Seg6Local => libbpf_rs::ProgramType::LwtSeg6local,
        }
    }

    fn of_type(raw: u32) -> Option<Hook> {
        match raw {
            libbpf_sys::BPF_PROG_TYPE_LWT_IN => Some(Hook::In),
            libbpf_sys::BPF_PROG_TYPE_LWT_OUT => Some(Hook::Out),
            libbpf_sys::BPF_PROG_TYPE_LWT_XMIT => Some(Hook::Xmit),
            libbpf_sys::BPF_PROG_TYPE_LWT_SEG6LOCAL => Some(Hook::Seg6Local),
            _ => None,
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::In => "lwt_in",
            Hook::Out => "lwt_out",
            Hook::Xmit => "lwt_xmit",
            Hook::Seg6Local => "lwt_seg6local",
        })
    }
}

/// The name lwtun gives a route's program: `lwtun:<program name>:<program id>`.
///
/// # Examples
///
/// ```
/// assert_eq!(lwtun::program::route_name("count_xmit", 42), "lwtun:count_xmit:42");
/// assert_eq!(lwtun::program::id_of_route_name("lwtun:count_xmit:42"), Some(42));
/// assert_eq!(lwtun::program::id_of_route_name("f.o:[xmit]"), None);
/// ```
pub fn route_name(program: &str, id: u32) -> String {
    format!("{ROUTE_NAME_PREFIX}{program}:{id}")
}

/// The program id in a name made by [`route_name`]; `None` for other names (iproute2's
/// `file.o:[section]`, for example).
pub fn id_of_route_name(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(ROUTE_NAME_PREFIX)?;
    rest.rsplit_once(':')?.1.parse().ok()
}

/// The kernel's facts about a loaded program (what `bpftool prog show` prints of it).
///
/// Kernel: Linux 4.13+ (`BPF_OBJ_GET_INFO_BY_FD`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProgramInfo {
    /// Program id, unique while the program is loaded.
    pub id: u32,
    /// The kernel's name for it (at most 15 bytes).
    pub name: String,
    /// `BPF_PROG_TYPE_*`.
    pub prog_type: u32,
    /// The ids of the maps the program uses: how a reader tells which table a program found on
    /// a route or an interface serves.
    pub map_ids: Vec<u32>,
}

/// Reads a program's id, name, type and map ids from its fd.
///
/// # Errors
///
/// InvalidInput when `fd` holds something other than a BPF program (a map, a link), naming
/// what it holds; the kernel's error otherwise.
///
/// # Examples
///
/// ```no_run
/// use std::os::fd::AsFd;
/// use lwtun::program::{program_info, Hook, LwtCounter};
///
/// let family = LwtCounter::load()?;
/// let info = program_info(family.program(Hook::Xmit).as_fd())?;
/// println!("{} (id {}) uses maps {:?}", info.name, info.id, info.map_ids);
/// # Ok::<(), lwtun::Error>(())
/// ```
pub fn program_info(fd: BorrowedFd<'_>) -> Result<ProgramInfo> {
    crate::bpf_fd::expect_kind("read program info", fd, crate::bpf_fd::FdKind::Program)?;
    let read = |info: &mut libbpf_sys::bpf_prog_info| -> Result<()> {
        let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
        // SAFETY: info is a valid bpf_prog_info of `len` bytes; its map_ids pointer, when set,
        // points at nr_map_ids u32s; the fd is borrowed for the call.
        let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), info, &mut len) };
        if rc != 0 {
            return Err(Error::io(
                "read program info",
                std::io::Error::from_raw_os_error(-rc),
            ));
        }
        Ok(())
    };
    let mut info = libbpf_sys::bpf_prog_info::default();
    read(&mut info)?;
    let mut map_ids = vec![0u32; info.nr_map_ids as usize];
    if !map_ids.is_empty() {
        // A second call with room for the ids (a program's maps are fixed once it is loaded).
        let mut with_ids = libbpf_sys::bpf_prog_info {
            nr_map_ids: map_ids.len() as u32,
            map_ids: map_ids.as_mut_ptr() as u64,
            ..Default::default()
        };
        read(&mut with_ids)?;
        map_ids.truncate(with_ids.nr_map_ids as usize);
    }
    // SAFETY: the kernel NUL-terminates the name within its 16 bytes.
    let name = unsafe { CStr::from_ptr(info.name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    Ok(ProgramInfo {
        id: info.id,
        name,
        prog_type: info.type_,
        map_ids,
    })
}

/// Reads the facts of the loaded program `id` (`bpftool prog show id ID`).
///
/// # Errors
///
/// NotFound when no program has that id; Permission without CAP_SYS_ADMIN/CAP_BPF.
///
/// # Examples
///
/// ```no_run
/// let info = lwtun::program::program_info_by_id(42)?;
/// println!("{} uses maps {:?}", info.name, info.map_ids);
/// # Ok::<(), lwtun::Error>(())
/// ```
pub fn program_info_by_id(id: u32) -> Result<ProgramInfo> {
    let fd = libbpf_rs::Program::fd_from_id(id)
        .map_err(|e| Error::bpf("open program by id", e).with_object(format!("program {id}")))?;
    program_info(fd.as_fd()).map_err(|e| e.with_object(format!("program {id}")))
}

/// A loaded program of an LWT hook type, owned by fd (the program stays loaded while this value
/// or any route or link using it lives).
///
/// # Examples
///
/// ```no_run
/// use lwtun::program::{LwtCounter, LwtProgram, Hook};
///
/// let family = LwtCounter::load()?;
/// let prog = family.program(Hook::Xmit);
/// assert_eq!(prog.hook(), Hook::Xmit);
/// // What a route dump reports leads back to the program:
/// let again = LwtProgram::from_route_name(prog.route_name())?;
/// assert_eq!(again.id(), prog.id());
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug)]
pub struct LwtProgram {
    fd: OwnedFd,
    info: ProgramInfo,
    hook: Hook,
    route_name: String,
}

impl LwtProgram {
    /// Takes a program fd; its type must be an LWT type (`lwt_in`, `lwt_out`, `lwt_xmit`,
    /// `lwt_seg6local`).
    ///
    /// # Errors
    ///
    /// InvalidInput when the fd is not an LWT program.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        let info = program_info(fd.as_fd())?;
        let hook = Hook::of_type(info.prog_type).ok_or_else(|| {
            Error::invalid_input(
                "take LWT program",
                format!(
                    "program {} (id {}) has type {}, not an LWT type",
                    info.name, info.id, info.prog_type
                ),
            )
        })?;
        let route_name = route_name(&info.name, info.id);
        Ok(LwtProgram {
            fd,
            info,
            hook,
            route_name,
        })
    }

    /// Opens a loaded program by id.
    ///
    /// # Errors
    ///
    /// NotFound when no program has that id; Permission without CAP_SYS_ADMIN/CAP_BPF.
    pub fn from_id(id: u32) -> Result<Self> {
        let fd = libbpf_rs::Program::fd_from_id(id)
            .map_err(|e| Error::bpf("open program by id", e).with_object(format!("id {id}")))?;
        Self::from_fd(fd)
    }

    /// Opens the program a dumped route names, when lwtun named it ([`route_name`]).
    ///
    /// # Errors
    ///
    /// InvalidInput for a name lwtun did not make; NotFound when the program is gone.
    pub fn from_route_name(name: &str) -> Result<Self> {
        let id = id_of_route_name(name).ok_or_else(|| {
            Error::invalid_input(
                "open program by route name",
                format!("'{name}' is not a name lwtun gave (lwtun:<program>:<id>)"),
            )
        })?;
        let p = Self::from_id(id)?;
        if p.route_name != name {
            return Err(Error::not_found(
                "open program by route name",
                format!(
                    "program '{name}' (id {id} now belongs to '{}')",
                    p.route_name
                ),
            ));
        }
        Ok(p)
    }

    /// A second owner of the same program.
    ///
    /// # Errors
    ///
    /// Io when the fd cannot be duplicated (out of file descriptors).
    pub fn try_clone(&self) -> Result<Self> {
        Ok(LwtProgram {
            fd: self
                .fd
                .try_clone()
                .map_err(|e| Error::io("duplicate program fd", e))?,
            info: self.info.clone(),
            hook: self.hook,
            route_name: self.route_name.clone(),
        })
    }

    /// The program id.
    pub fn id(&self) -> u32 {
        self.info.id
    }

    /// The kernel's name for the program.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// The hook the program's type fits.
    pub fn hook(&self) -> Hook {
        self.hook
    }

    /// The unique name routes carry for this program.
    pub fn route_name(&self) -> &str {
        &self.route_name
    }

    /// The program as the netlink layer names it (fd + route name).
    pub fn prog_ref(&self) -> ProgRef {
        ProgRef::new(self.fd.as_raw_fd(), self.route_name.clone())
    }
}

impl AsFd for LwtProgram {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Loads an embedded BPF object (a `crate::skel::NAME::OBJECT`) into an owned object.
pub(crate) fn load_object(name: &str, bytes: &'static [u8]) -> Result<Object> {
    let op = format!("load BPF object {name}");
    load_opened(open_object(name, bytes, &op)?, &op)
}

/// Opens the embedded object `bytes` as `name` (libbpf's object name, which its maps' names
/// are prefixed with), to be sized, given pinned maps and loaded; `op` names the load.
pub(crate) fn open_object(name: &str, bytes: &[u8], op: &str) -> Result<libbpf_rs::OpenObject> {
    ObjectBuilder::default()
        .name(name)
        .map_err(|e| Error::bpf(op.to_string(), e))?
        .open_memory(bytes)
        .map_err(|e| Error::bpf(op.to_string(), e))
}

/// What `BPF_PROG_TEST_RUN` takes besides the program.
#[derive(Default)]
pub(crate) struct TestRunArgs<'a> {
    /// The packet.
    pub data: &'a [u8],
    /// Room for the output packet beyond `data.len()`; `None` asks for no output packet.
    pub out_room: Option<usize>,
    /// The context (`struct __sk_buff`, `struct xdp_md`) to start from.
    pub ctx_in: Option<&'a [u8]>,
    /// Where the context is written back.
    pub ctx_out: Option<&'a mut [u8]>,
    /// Runs in a row (at least 1).
    pub repeat: u32,
    /// `BPF_F_TEST_*` flags.
    pub flags: u32,
    /// Frames per batch with `BPF_F_TEST_XDP_LIVE_FRAMES`.
    pub batch_size: u32,
}

/// What `BPF_PROG_TEST_RUN` gave back.
pub(crate) struct TestRunRaw {
    /// The program's return value.
    pub retval: u32,
    /// The output packet (empty when none was asked for).
    pub data: Vec<u8>,
    /// The kernel's mean time per run.
    pub duration: std::time::Duration,
}

/// Refuses a frame shorter than an Ethernet header, which the kernel refuses too.
pub(crate) fn check_frame(op: &str, frame: &[u8]) -> Result<()> {
    if frame.len() < 14 {
        return Err(Error::invalid_input(
            op,
            format!(
                "a frame has at least an Ethernet header (14 bytes), got {}",
                frame.len()
            ),
        ));
    }
    Ok(())
}

/// Runs an L3 program (LWT, seg6local twin) on `packet` as if `skb->protocol` were
/// `protocol`, `repeat` times, with `out_room` bytes of room for the output (`None`: no output
/// wanted). The kernel takes an Ethernet frame, sets `skb->protocol` from its EtherType and hands
/// an L3 program the packet after it, putting 14 zero bytes back in front on output: the
/// returned `data` is the packet without them.
///
/// # Errors
///
/// InvalidInput for an empty packet (the kernel refuses it too: an skb at an L3 hook has a
/// network header); Io with the kernel's errno, under `op`.
pub(crate) fn test_run_l3(
    fd: BorrowedFd<'_>,
    op: &str,
    protocol: u16,
    packet: &[u8],
    out_room: Option<usize>,
    repeat: u32,
) -> Result<TestRunRaw> {
    if packet.is_empty() {
        return Err(Error::invalid_input(
            op,
            "an empty packet: give at least one byte after the Ethernet header",
        ));
    }
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&protocol.to_be_bytes());
    frame.extend_from_slice(packet);
    let mut run = test_run_raw(
        fd,
        TestRunArgs {
            data: &frame,
            out_room,
            repeat,
            ..Default::default()
        },
    )
    .map_err(|errno| Error::io(op, std::io::Error::from_raw_os_error(errno)))?;
    run.data = run.data.get(14..).unwrap_or_default().to_vec();
    Ok(run)
}

/// Runs `BPF_PROG_TEST_RUN` on `fd`; a failure is the positive errno, for the caller to word.
pub(crate) fn test_run_raw(
    fd: BorrowedFd<'_>,
    args: TestRunArgs<'_>,
) -> std::result::Result<TestRunRaw, i32> {
    let mut out = vec![0u8; args.out_room.map_or(0, |room| args.data.len() + room)];
    // SAFETY: zeroed is a valid bpf_test_run_opts; sz is set below.
    let mut opts: libbpf_sys::bpf_test_run_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _;
    opts.data_in = args.data.as_ptr().cast();
    opts.data_size_in = args.data.len() as u32;
    if args.out_room.is_some() {
        opts.data_out = out.as_mut_ptr().cast();
        opts.data_size_out = out.len() as u32;
    }
    if let Some(ctx) = args.ctx_in {
        opts.ctx_in = ctx.as_ptr().cast();
        opts.ctx_size_in = ctx.len() as u32;
    }
    if let Some(ctx) = args.ctx_out {
        opts.ctx_out = ctx.as_mut_ptr().cast();
        opts.ctx_size_out = ctx.len() as u32;
    }
    opts.repeat = args.repeat.max(1) as i32;
    opts.flags = args.flags;
    opts.batch_size = args.batch_size;
    // SAFETY: every pointer in opts points into a live buffer of the size given, for the call.
    let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(fd.as_raw_fd(), &mut opts) };
    if rc < 0 {
        return Err(-rc);
    }
    out.truncate(opts.data_size_out as usize);
    Ok(TestRunRaw {
        retval: opts.retval,
        data: out,
        duration: std::time::Duration::from_nanos(opts.duration as u64),
    })
}

/// Writes `value` at `offset` of an opened object's `.rodata` (a `const volatile` the program
/// reads), before the load freezes it. `op` names the load in errors.
pub(crate) fn set_rodata(
    open: &mut libbpf_rs::OpenObject,
    op: &str,
    offset: usize,
    value: &[u8],
) -> Result<()> {
    let mut rodata = open
        .maps_mut()
        .find(|m| m.name().to_string_lossy().ends_with(".rodata"))
        .ok_or_else(|| Error::not_found(op.to_string(), "the object's .rodata"))?;
    let mut bytes = rodata
        .initial_value()
        .ok_or_else(|| Error::not_found(op.to_string(), "the .rodata value"))?
        .to_vec();
    let end = offset + value.len();
    if end > bytes.len() {
        return Err(Error::other(
            ErrorKind::Kernel,
            op.to_string(),
            format!(
                ".rodata holds {} bytes, not {end} (mismatched BPF object?)",
                bytes.len()
            ),
        ));
    }
    bytes[offset..end].copy_from_slice(value);
    rodata
        .set_initial_value(&bytes)
        .map_err(|e| Error::bpf(op.to_string(), e))
}

/// Loads (verifies) an opened object; a permission failure names the capabilities it needs.
pub(crate) fn load_opened(mut open: libbpf_rs::OpenObject, op: &str) -> Result<Object> {
    // The verifier's log goes into this buffer instead of libbpf's stderr, so that a refusal
    // reaches the caller inside the error. libbpf loads each program without a log first and
    // fills the buffer only when retrying a program the kernel refused; the buffer is large
    // because kernels before 6.4 keep the start of a log that overflows, not its end. It is an
    // anonymous mapping of its own, so its untouched pages cost nothing (a heap allocation
    // would not: once glibc has freed one buffer this size it serves the next from the heap
    // and zeroes, so touches, all of it, and the pages stay resident after the free).
    let mut buffer = LogBuffer::new(VERIFIER_LOG_SIZE);
    let log = buffer.bytes_mut();
    for prog in open.progs_mut() {
        // SAFETY: the program pointer is valid while `open` lives; libbpf writes at most
        // `log.len()` bytes into `log`, which outlives the load below (it is dropped after
        // `open.load()` has returned, and libbpf forgets the buffer with the object).
        unsafe {
            libbpf_sys::bpf_program__set_log_buf(
                libbpf_rs::AsRawLibbpf::as_libbpf_object(&prog).as_ptr(),
                log.as_mut_ptr().cast(),
                log.len() as _,
            );
        }
    }
    open.load().map_err(|e| {
        let text = CStr::from_bytes_until_nul(log)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !text.trim().is_empty() {
            // A refusal with a verifier log is the verifier's, whatever the errno (EACCES for
            // most refusals, EINVAL for an unknown helper or instruction, ENOSPC when the log
            // filled up): never a missing capability.
            return Error::verifier(op, e, &text);
        }
        let err = Error::bpf(op, e);
        if err.kind() == ErrorKind::Permission {
            Error::permission(op, "CAP_BPF and CAP_NET_ADMIN")
        } else {
            err
        }
    })
}

/// Zeroed memory mapped for one load's verifier log: the kernel's pages appear only where the
/// log is written, and all go back when it drops.
struct LogBuffer {
    ptr: *mut u8,
    len: usize,
}

impl LogBuffer {
    fn new(len: usize) -> LogBuffer {
        // SAFETY: an anonymous private mapping: no file, no fixed address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            // No address space for the log: load without one (a refusal then carries
            // libbpf's error alone).
            return LogBuffer {
                ptr: std::ptr::NonNull::dangling().as_ptr(),
                len: 0,
            };
        }
        LogBuffer {
            ptr: ptr.cast(),
            len,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live mapping of len bytes (or dangling with len 0), zero-filled by
        // the kernel and only reachable through this borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for LogBuffer {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping made in new, unmapped once.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

/// Bytes of verifier log kept for a refused program (8 MiB: enough for a level-1 log of
/// lwtun's largest program; the kernel takes up to 16 MiB on every supported version).
const VERIFIER_LOG_SIZE: usize = 8 << 20;

/// A handle of its own on map `name` of a loaded object (it keeps the map alive on its own).
pub(crate) fn map_handle(object: &Object, name: &str, op: &str) -> Result<libbpf_rs::MapHandle> {
    let map = object
        .maps()
        .find(|m| m.name() == name)
        .ok_or_else(|| Error::not_found(op.to_string(), format!("map {name}")))?;
    libbpf_rs::MapHandle::try_from(&map).map_err(|e| Error::bpf(op.to_string(), e))
}

/// An owned fd of program `name` in a loaded object (it keeps the program loaded on its own).
pub(crate) fn program_fd(object: &Object, name: &str) -> Result<OwnedFd> {
    object
        .progs()
        .find(|p| p.name() == name)
        .ok_or_else(|| Error::not_found("find program", format!("program {name} in object")))?
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::io("duplicate program fd", e))
}

/// Takes program `name` out of a loaded object as an [`LwtProgram`].
pub(crate) fn lwt_program(object: &Object, name: &str) -> Result<LwtProgram> {
    LwtProgram::from_fd(program_fd(object, name)?)
}

/// A packet and byte count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes (as the hook saw them: from the network header at LWT hooks).
    pub bytes: u64,
}

impl std::ops::Add for Counter {
    type Output = Counter;
    fn add(self, o: Counter) -> Counter {
        Counter {
            packets: self.packets + o.packets,
            bytes: self.bytes + o.bytes,
        }
    }
}

/// Sums a per-CPU array entry of `struct lwtun_counter`.
pub(crate) fn sum_percpu(map: &dyn MapCore, index: u32, op: &str) -> Result<Counter> {
    let values = map
        .lookup_percpu(&index.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
        .map_err(|e| Error::bpf(op.to_string(), e))?
        .unwrap_or_default();
    let mut total = Counter::default();
    for v in values {
        let c: lwtun_counter = abi::from_bytes(&v).ok_or_else(|| {
            Error::other(
                ErrorKind::Kernel,
                op.to_string(),
                format!("counter value of {} bytes, expected 16", v.len()),
            )
        })?;
        total = total
            + Counter {
                packets: c.packets,
                bytes: c.bytes,
            };
    }
    Ok(total)
}

/// The `lwt_count` family: one program per LWT hook (and one for seg6local End.BPF) that counts packets and bytes and lets them
/// pass (`BPF_OK`). Attach it to see which hooks a route's traffic crosses.
///
/// # Examples
///
/// ```no_run
/// use lwtun::program::{LwtCounter, Hook};
///
/// let counter = LwtCounter::load()?;
/// let c = counter.counter(Hook::Xmit)?;
/// println!("{} packets, {} bytes", c.packets, c.bytes);
/// # Ok::<(), lwtun::Error>(())
/// ```
pub struct LwtCounter {
    object: Object,
    programs: [LwtProgram; 4],
}

impl fmt::Debug for LwtCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LwtCounter")
            .field("programs", &self.programs)
            .finish()
    }
}

impl LwtCounter {
    /// Loads the family (verifies the three programs).
    ///
    /// # Errors
    ///
    /// Permission without CAP_BPF; the verifier's error otherwise.
    pub fn load() -> Result<Self> {
        let object = load_object("lwt_count", crate::skel::lwt_count::OBJECT)?;
        let programs = [
            lwt_program(&object, "count_in")?,
            lwt_program(&object, "count_out")?,
            lwt_program(&object, "count_xmit")?,
            lwt_program(&object, "count_seg6local")?,
        ];
        Ok(LwtCounter { object, programs })
    }

    /// The counting program for `hook`.
    pub fn program(&self, hook: Hook) -> &LwtProgram {
        &self.programs[Self::index(hook)]
    }

    fn index(hook: Hook) -> usize {
        match hook {
            Hook::In => 0,
            Hook::Out => 1,
            Hook::Xmit => 2,
            Hook::Seg6Local => 3,
        }
    }

    /// Packets and bytes counted at `hook`, summed over CPUs.
    ///
    /// # Errors
    ///
    /// The kernel's error reading the map.
    pub fn counter(&self, hook: Hook) -> Result<Counter> {
        let map = self
            .object
            .maps()
            .find(|m| m.name() == "hook_counters")
            .ok_or_else(|| Error::not_found("read counters", "map hook_counters"))?;
        sum_percpu(&map, Self::index(hook) as u32, "read hook counters")
    }
}

/// What an LWT program (`lwt_xmit`, `lwt_seg6local`, …) returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// `BPF_OK`: the route sends the packet on as usual.
    Ok,
    /// `BPF_DROP`.
    Drop,
    /// `BPF_REDIRECT`: the packet goes to the device `bpf_redirect` named.
    Redirect,
    /// Any other value (the kernel drops the packet).
    Other(i32),
}

impl Verdict {
    /// The verdict a program's return value stands for.
    pub(crate) fn of(retval: u32) -> Verdict {
        match retval as i32 {
            0 => Verdict::Ok,
            2 => Verdict::Drop,
            7 => Verdict::Redirect,
            v => Verdict::Other(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program the verifier refuses (`tests/data/verifier_refuses.bpf.c`: a map value read
    /// past its end) is a Verifier error carrying the log's last lines, never a missing
    /// capability, although the kernel answers EACCES.
    #[test]
    fn a_verifier_refusal_is_the_verifiers_error_with_its_log() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"SKIPPED a_verifier_refusal_is_the_verifiers_error_with_its_log: needs root\n",
            );
            return;
        }
        let bytes: &'static [u8] = include_bytes!("../tests/data/verifier_refuses.bpf.o");
        let e = load_object("verifier_refuses", bytes).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Verifier, "{e}");
        let log = e.verifier_log().expect("a verifier log");
        assert!(
            log.contains("invalid access to map value"),
            "the log ends with the refusal:\n{log}"
        );
        assert!(log.lines().count() <= 12, "{log}");
        let text = e.to_string();
        assert!(
            text.starts_with("load BPF object verifier_refuses: "),
            "{text}"
        );
        assert!(!text.contains("CAP_BPF"), "{text}");
    }
}
