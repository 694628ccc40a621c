//! Network namespaces: create, enter, run code in, remove.
//!
//! A [`NetNs`] is a named network namespace that `ip netns list` sees: a file under
//! `/run/netns/` on which the namespace is bind-mounted, made the way iproute2 makes it. lwtun's
//! tests and examples build their topologies in namespaces they own, and users can do the same
//! to try a data plane without touching the host's interfaces.
//!
//! ```text
//!  NetNs::create("lab")          /run/netns/lab  ◄── bind mount of a fresh netns
//!       │
//!       ├── run(|| ...)          closure on a new thread that setns()'d into it
//!       ├── command("ip")        `nsenter --net=/run/netns/lab ip ...` (keeps /sys/fs/bpf)
//!       ├── set_sysctl(..)       /proc/sys/net/... as seen from inside
//!       └── drop / delete()      unmount + unlink (owned namespaces only)
//! ```
//!
//! # Lifetime
//!
//! A namespace lives as long as anything holds it: the bind mount under `/run/netns`, an open
//! file descriptor (for example a socket made inside it, or [`NetNs::fd`]), or a process
//! inside it. Dropping an owned [`NetNs`] (or calling [`NetNs::delete`]) removes the name and
//! its mount; the kernel frees the namespace, with its interfaces and routes, once the last
//! other holder is gone. A process killed with `SIGKILL` runs no destructors: its namespaces
//! stay under `/run/netns` until `ip netns delete NAME` (they carry the prefix the caller
//! chose, so they can be found). [`NetNs::persist`] keeps a namespace on purpose.
//!
//! Sockets remember the namespace they were created in: a socket or a
//! [`Netlink`](crate::netlink::Netlink) handle opened inside [`NetNs::run`] keeps working in
//! that namespace when used from any other thread afterwards. Threads spawned inside `run`
//! start in the namespace too.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, ErrorKind, Result};

/// The folder iproute2 keeps named network namespaces in.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// `statfs` magic of nsfs, the file system namespace files live on.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// `NS_GET_NSTYPE` (`_IO(0xb7, 0x3)`), Linux 4.11.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Serialises this process's changes to the `/run/netns` mount.
static RUN_DIR_LOCK: Mutex<()> = Mutex::new(());
/// Counter for [`NetNs::create_unique`] names.
static UNIQUE: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`/run/netns/NAME`).
///
/// Owned namespaces (from [`create`](NetNs::create) and [`create_unique`](NetNs::create_unique))
/// are removed when the value drops, also while a panic unwinds; namespaces from
/// [`open`](NetNs::open) are never removed on drop. See the [module docs](self) for how long
/// the kernel keeps a namespace alive.
///
/// # Examples
///
/// ```no_run
/// use lwtun::netns::NetNs;
///
/// let ns = NetNs::create_unique("demo")?;               // e.g. demo-4242-0
/// ns.set_sysctl("net.ipv4.ip_forward", "1")?;
/// let out = ns.command("ip").args(["-o", "link", "show"]).output().expect("ran ip");
/// assert!(String::from_utf8_lossy(&out.stdout).contains("lo"));
/// let nl = ns.run(|| {
///     // This closure runs on a thread inside the namespace; the socket stays in it.
///     lwtun::netlink::Netlink::open()
/// })?;
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug)]
#[must_use = "an owned namespace is deleted when dropped"]
pub struct NetNs {
    name: String,
    path: PathBuf,
    owned: bool,
    /// For namespaces without a name ([`NetNs::current`], [`NetNs::of_fd`]): the descriptor that
    /// keeps the namespace alive and that `path` (`/proc/PID/fd/N`) points at.
    held: Option<Arc<OwnedFd>>,
}

impl NetNs {
    /// Creates the network namespace `name`, visible to `ip netns`, owned by the returned value.
    ///
    /// Like iproute2 it makes `/run/netns` a shared mount point if it is not one yet, creates
    /// `/run/netns/NAME`, and bind-mounts a new network namespace (made by `unshare` on a
    /// short-lived thread) onto it. The new namespace has only a loopback device, down.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Exists`] if the name is taken, [`ErrorKind::InvalidInput`] for an empty
    /// name, one with `/` or NUL, `.` or `..`, or longer than 255 bytes,
    /// [`ErrorKind::Permission`] without `CAP_SYS_ADMIN`. Nothing is left behind on failure.
    pub fn create(name: &str) -> Result<NetNs> {
        let op = "create network namespace";
        validate_name(op, name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        prepare_run_dir(op)?;

        // O_EXCL: the name is ours or the call fails with EEXIST.
        if let Err(e) = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
        {
            let err = Error::io(op, e).with_object(name);
            return Err(if err.kind() == ErrorKind::Exists {
                Error::other(
                    ErrorKind::Exists,
                    op,
                    format!(
                        "{} exists already; pick another name or remove it with `ip netns delete {name}`",
                        path.display()
                    ),
                )
                .with_object(name)
            } else {
                err
            });
        }
        // From here on the file is ours: the guard removes it unless the namespace is complete.
        let ns = NetNs {
            name: name.to_string(),
            path,
            owned: true,
            held: None,
        };
        let target = c_path(op, &ns.path)?;
        let made = std::thread::Builder::new()
            .name(format!("lwtun-netns-{name}"))
            .spawn(move || -> io::Result<()> {
                // SAFETY: unshare only changes this thread's namespace; this thread is ours and
                // ends right after.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                // /proc/thread-self appeared in Linux 3.17; the task path works everywhere.
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() };
                let source = if Path::new("/proc/thread-self/ns/net").exists() {
                    c"/proc/thread-self/ns/net".to_owned()
                } else {
                    CString::new(format!("/proc/self/task/{tid}/ns/net"))
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
                };
                // SAFETY: both paths are valid NUL-terminated strings; fstype and data are unused
                // for a bind mount and may be null.
                let rc = unsafe {
                    libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    )
                };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            })
            .map_err(|e| Error::io(op, e).with_object(name))?
            .join();
        match made {
            Ok(Ok(())) => Ok(ns),
            Ok(Err(e)) => {
                let err = Error::io(op, e).with_object(name);
                // Dropping `ns` unlinks the file (the unmount finds nothing mounted).
                drop(ns);
                Err(err)
            }
            Err(_) => Err(
                Error::other(ErrorKind::Io, op, "the namespace thread panicked").with_object(name),
            ),
        }
    }

    /// Creates an owned namespace named `PREFIX-PID-N` (N counts up within this process), so
    /// that concurrent tests and processes never collide, and leftovers name their process.
    ///
    /// # Errors
    ///
    /// As [`create`](NetNs::create); a name left over from an earlier process with the same
    /// pid is skipped, not reused.
    pub fn create_unique(prefix: &str) -> Result<NetNs> {
        let op = "create network namespace";
        if prefix.is_empty() {
            return Err(Error::invalid_input(op, "the name prefix is empty"));
        }
        let pid = std::process::id();
        let mut last = None;
        for _ in 0..64 {
            let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
            match NetNs::create(&format!("{prefix}-{pid}-{n}")) {
                Err(e) if e.kind() == ErrorKind::Exists => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| Error::other(ErrorKind::Exists, op, "no free name")))
    }

    /// Opens the existing namespace `name` (one made by `ip netns add` or by another process).
    /// The returned value does not own it: dropping it leaves the namespace in place.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] if `/run/netns/NAME` does not exist or is not a mounted namespace.
    pub fn open(name: &str) -> Result<NetNs> {
        let op = "open network namespace";
        validate_name(op, name)?;
        let ns = NetNs {
            name: name.to_string(),
            path: Path::new(NETNS_RUN_DIR).join(name),
            owned: false,
            held: None,
        };
        let fd = ns.fd().map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::not_found(op, format!("{}", ns.path.display())).with_object(name)
            } else {
                e
            }
        })?;
        // SAFETY: statfs is plain data; zeroed is a valid value.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open; st is a valid, writable statfs.
        if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(Error::io(op, io::Error::last_os_error()).with_object(name));
        }
        #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
        // SAFETY: NS_GET_NSTYPE takes no argument and returns the namespace type.
        let nstype = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) };
        // (ENOTTY before Linux 4.11: then nsfs is all we can check.)
        let other_type = nstype >= 0 && nstype != libc::CLONE_NEWNET;
        if st.f_type as i64 != NSFS_MAGIC || other_type {
            return Err(Error::not_found(
                op,
                format!(
                    "a network namespace at {} (the file exists, but what is mounted there, if \
                     anything, is not a network namespace)",
                    ns.path.display()
                ),
            )
            .with_object(name));
        }
        Ok(ns)
    }

    /// The network namespace the calling thread is in now (for a program that was not moved,
    /// the host's), as a value the rest of the API takes like a named one. It does not own the
    /// namespace and keeps it alive while it lives, also after the thread has moved or ended.
    ///
    /// Its [`name`](NetNs::name) is `net:[INODE]`, as `/proc/PID/ns/net` reads; its
    /// [`path`](NetNs::path) is `/proc/PID/fd/N`, this process's descriptor of it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when `/proc` is not mounted or no descriptor is free.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::netns::NetNs;
    ///
    /// let host = NetNs::current()?;
    /// let lo = host.device("lo")?;               // a device bound to the host's namespace
    /// assert_eq!(lo.index(), 1);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn current() -> Result<NetNs> {
        let op = "open the calling thread's network namespace";
        let file = File::open(thread_netns_path()).map_err(|e| Error::io(op, e))?;
        NetNs::of_fd(OwnedFd::from(file))
    }

    /// A namespace given by a descriptor (of `/run/netns/NAME`, `/proc/PID/ns/net`, or from
    /// [`Netlink::netns`](crate::netlink::Netlink::netns)). The value holds the descriptor and
    /// does not own the namespace.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] when `fd` is not a network namespace.
    pub fn of_fd(fd: OwnedFd) -> Result<NetNs> {
        let op = "use network namespace descriptor";
        let id = NetNsId::of(fd.as_fd()).map_err(|e| Error::other(e.kind(), op, e.to_string()))?;
        // SAFETY: NS_GET_NSTYPE takes no argument and returns the namespace type.
        let nstype = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) };
        if nstype >= 0 && nstype != libc::CLONE_NEWNET {
            return Err(Error::invalid_input(
                op,
                "the descriptor is a namespace, but not a network namespace",
            ));
        }
        let path = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            fd.as_raw_fd()
        ));
        Ok(NetNs {
            name: id.to_string(),
            path,
            owned: false,
            held: Some(Arc::new(fd)),
        })
    }

    /// The namespace's identity (its nsfs inode), which tells whether two values, a
    /// [`Device`](crate::device::Device) or a [`Netlink`](crate::netlink::Netlink) socket are
    /// in the same namespace.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] if the namespace file is gone.
    pub fn id(&self) -> Result<NetNsId> {
        match &self.held {
            Some(fd) => NetNsId::of(fd.as_fd()),
            None => NetNsId::of(self.fd()?.as_fd()),
        }
        .map_err(|e| e.with_object(&self.name))
    }

    /// A value that holds this namespace by descriptor (so it outlives the name) and keeps its
    /// name and path for messages and commands. Never owning.
    pub(crate) fn held_copy(&self) -> Result<NetNs> {
        let fd = match &self.held {
            Some(fd) => Arc::clone(fd),
            None => Arc::new(self.fd()?),
        };
        Ok(NetNs {
            name: self.name.clone(),
            path: self.path.clone(),
            owned: false,
            held: Some(fd),
        })
    }

    /// The descriptor a namespace without a name holds.
    pub(crate) fn held(&self) -> Option<Arc<OwnedFd>> {
        self.held.clone()
    }

    /// Runs `f` on the calling thread after moving the thread into this namespace, and moves
    /// it back afterwards (also when `f` panics). Cheaper than [`NetNs::run`] (two `setns`
    /// calls, no thread), for short calls that resolve an interface index or open a socket.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Permission`] without `CAP_SYS_ADMIN`; the closure's own error.
    pub fn enter<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        match &self.held {
            Some(fd) => enter(fd.as_fd(), f),
            None => enter(self.fd()?.as_fd(), f),
        }
        .map_err(|e| {
            if e.object().is_some() {
                e
            } else {
                e.with_object(&self.name)
            }
        })
    }

    /// Lists the names under `/run/netns` (what `ip netns list` shows), sorted.
    ///
    /// # Errors
    ///
    /// An I/O error if the folder exists but cannot be read. A missing folder is an empty list.
    pub fn list() -> Result<Vec<String>> {
        let entries = match fs::read_dir(NETNS_RUN_DIR) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list network namespaces", e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Removes namespaces left behind by dead processes: names `PREFIX…-PID-N` (as
    /// [`create_unique`](NetNs::create_unique) makes them) whose PID no longer runs. Returns
    /// the names removed.
    ///
    /// A process that dies without unwinding (`SIGKILL`, `panic = "abort"`) leaves its owned
    /// namespaces in place; this finds them by the pid in their names. Pids are those of this
    /// process's pid namespace: do not share `/run/netns` prefixes with containers.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for an empty prefix; the first failed removal (the others
    /// are still attempted).
    pub fn remove_stale(prefix: &str) -> Result<Vec<String>> {
        let op = "remove stale network namespaces";
        if prefix.is_empty() {
            return Err(Error::invalid_input(op, "the name prefix is empty"));
        }
        let mut removed = Vec::new();
        let mut first_error = None;
        for name in NetNs::list()? {
            let Some(rest) = name.strip_prefix(prefix) else {
                continue;
            };
            let mut parts = rest.rsplitn(3, '-');
            let (Some(n), Some(pid)) = (parts.next(), parts.next()) else {
                continue;
            };
            let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            if !numeric(n) || !numeric(pid) || Path::new("/proc").join(pid).exists() {
                continue;
            }
            match remove(&name, &Path::new(NETNS_RUN_DIR).join(&name)) {
                Ok(()) => removed.push(name),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    /// The namespace's name, as `ip netns` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file, `/run/netns/NAME`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this value removes the namespace when dropped.
    pub fn is_owned(&self) -> bool {
        self.owned
    }

    /// Opens the namespace file. The descriptor keeps the namespace alive while open, and is
    /// what moving a link into the namespace (`IFLA_NET_NS_FD`) or `setns` takes.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] if the namespace file is gone.
    pub fn fd(&self) -> Result<OwnedFd> {
        if let Some(fd) = &self.held {
            return fd
                .try_clone()
                .map_err(|e| Error::io("open network namespace", e).with_object(&self.name));
        }
        File::open(&self.path)
            .map(OwnedFd::from)
            .map_err(|e| Error::io("open network namespace", e).with_object(&self.name))
    }

    /// Runs `f` on a new thread that has entered this namespace (`setns(CLONE_NEWNET)`; the
    /// mount namespace is left alone, so `/sys/fs/bpf` stays visible), and returns its result.
    ///
    /// The closure may borrow from the caller. Sockets it opens stay in this namespace; threads
    /// it spawns start in it. The calling thread's namespace never changes.
    ///
    /// # Errors
    ///
    /// The closure's own error; an error if the namespace cannot be entered; and a panic in
    /// the closure comes back as an [`ErrorKind::Io`] error carrying the panic message instead
    /// of unwinding into the caller.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::netns::NetNs;
    ///
    /// let ns = NetNs::create_unique("run")?;
    /// let listener = ns.run(|| {
    ///     std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| lwtun::Error::io("bind", e))
    /// })?;
    /// // `listener` accepts connections made inside `ns` only.
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> Result<T> + Send,
        T: Send,
    {
        let op = "run in network namespace";
        let fd = self.fd()?;
        // The calling thread's own namespace: run here, without setns (which needs
        // CAP_SYS_ADMIN even to enter the namespace one is in).
        let here = File::open(thread_netns_path()).map_err(|e| Error::io(op, e))?;
        if NetNsId::of(here.as_fd())? == NetNsId::of(fd.as_fd())? {
            return std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(
                |panic| {
                    Err(Error::other(
                        ErrorKind::Io,
                        op,
                        format!("the closure panicked: {}", panic_message(&*panic)),
                    )
                    .with_object(&self.name))
                },
            );
        }
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name(format!("lwtun-in-{}", self.name))
                .spawn_scoped(scope, move || -> Result<T> {
                    // SAFETY: fd is an open namespace file; setns only changes this thread.
                    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        let e = io::Error::last_os_error();
                        return Err(if e.raw_os_error() == Some(libc::EPERM) {
                            Error::permission(op, "CAP_SYS_ADMIN")
                        } else {
                            Error::io(op, e)
                        }
                        .with_object(&self.name));
                    }
                    drop(fd);
                    f()
                })
                .map_err(|e| Error::io(op, e).with_object(&self.name))?;
            match handle.join() {
                Ok(result) => result,
                Err(panic) => Err(Error::other(
                    ErrorKind::Io,
                    op,
                    format!("the closure panicked: {}", panic_message(&*panic)),
                )
                .with_object(&self.name)),
            }
        })
    }

    /// A [`Command`] that runs `program` inside this namespace: `nsenter --net=PATH -- program`.
    /// Add arguments with [`Command::arg`]/[`Command::args`].
    ///
    /// Unlike `ip netns exec` (and `ip -n`), `nsenter` does not remount `/sys`, so pinned BPF
    /// objects under `/sys/fs/bpf` stay reachable (`ip route ... encap bpf xmit pinned PATH`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut net = std::ffi::OsString::from("--net=");
        net.push(self.path.as_os_str());
        let mut cmd = Command::new("nsenter");
        cmd.arg(net).arg("--").arg(program);
        cmd
    }

    /// Runs `program args...` inside this namespace (as [`NetNs::command`] does) and returns its
    /// standard output.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when the program cannot be started; [`ErrorKind::Kernel`] when it exits
    /// with a failure, carrying the command line and its standard error (for `ip`, the kernel's
    /// refusal).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::netns::NetNs;
    ///
    /// let ns = NetNs::create_unique("out")?;
    /// ns.output("ip", ["link", "set", "lo", "up"])?;
    /// println!("{}", ns.output("ip", ["addr", "show", "lo"])?);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn output<I, S>(&self, program: &str, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let line = std::iter::once(program.to_string())
            .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ");
        let out = self
            .command(program)
            .args(&args)
            .output()
            .map_err(|e| Error::io(format!("run {program}"), e).with_object(&self.name))?;
        if !out.status.success() {
            return Err(Error::other(
                ErrorKind::Kernel,
                line,
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            )
            .with_object(&self.name));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sets the sysctl `key` (for example `net.ipv4.ip_forward` or
    /// `net.ipv6.conf.all.forwarding`) to `value` inside this namespace.
    ///
    /// The write happens on a thread inside the namespace: the kernel resolves `/proc/sys/net`
    /// against the network namespace of the task that opens the file (checked by lwtun's tests:
    /// a value set here is not seen by the host or by another namespace). Only `net.*` keys are
    /// per namespace, so only they are accepted; the host's sysctls are never touched. Keys
    /// whose parts contain dots (a VLAN device `eth0.10`) can be written with `/` separators:
    /// `net/ipv4/conf/eth0.10/forwarding`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a key outside `net.`, or with `..` or odd characters;
    /// [`ErrorKind::NotFound`] for an unknown key; the kernel's refusal of the value otherwise.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let op = "set sysctl";
        let path = sysctl_path(op, key)?;
        self.run(|| {
            let mut file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(op, e).with_object(key))?;
            file.write_all(value.as_bytes())
                .map_err(|e| Error::io(op, e).with_object(format!("{key}={value}")))
        })
    }

    /// Reads the sysctl `key` inside this namespace (trailing newline removed). Keys as for
    /// [`set_sysctl`](NetNs::set_sysctl).
    ///
    /// # Errors
    ///
    /// As [`set_sysctl`](NetNs::set_sysctl).
    pub fn sysctl(&self, key: &str) -> Result<String> {
        let op = "read sysctl";
        let path = sysctl_path(op, key)?;
        self.run(|| {
            let text = fs::read_to_string(&path).map_err(|e| Error::io(op, e).with_object(key))?;
            Ok(text.trim_end_matches('\n').to_string())
        })
    }

    /// Keeps the namespace after this value is gone (it stays under `/run/netns` until
    /// `ip netns delete NAME` or [`NetNs::open`] + [`NetNs::delete`]).
    pub fn persist(mut self) {
        self.owned = false;
    }

    /// Removes the namespace name: unmounts `/run/netns/NAME` (lazily, `MNT_DETACH`) and
    /// removes the file, reporting failures. Works on opened (not owned) namespaces too.
    ///
    /// # Errors
    ///
    /// The failed unmount or unlink; [`ErrorKind::NotFound`] if the name is already gone.
    pub fn delete(mut self) -> Result<()> {
        self.owned = false;
        remove(&self.name, &self.path)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.owned {
            let _ = remove(&self.name, &self.path);
        }
    }
}

/// Unmounts and unlinks a namespace file.
fn remove(name: &str, path: &Path) -> Result<()> {
    let op = "delete network namespace";
    let c = c_path(op, path)?;
    // SAFETY: c is a valid NUL-terminated path.
    let unmounted = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    let umount_err = (unmounted != 0).then(io::Error::last_os_error);
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) => {
            // A missing file after a failed unmount means the name was never there.
            let e = match umount_err {
                Some(u) if e.kind() != io::ErrorKind::NotFound => u,
                _ => e,
            };
            Err(Error::io(op, e).with_object(name))
        }
    }
}

/// Makes sure `/run/netns` exists and is a shared mount point, as iproute2 does, so that a
/// namespace mounted by one process is seen in every mount namespace that shares it.
fn prepare_run_dir(op: &str) -> Result<()> {
    let _guard = RUN_DIR_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Path::new(NETNS_RUN_DIR);
    if let Err(e) = fs::create_dir(dir) {
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(Error::io(op, e).with_object(NETNS_RUN_DIR));
        }
    }
    let c = c_path(op, dir)?;
    let none = c"none";
    let mut bound = false;
    loop {
        // SAFETY: c and none are valid NUL-terminated strings; data is unused.
        let rc = unsafe {
            libc::mount(
                none.as_ptr(),
                c.as_ptr(),
                none.as_ptr(),
                libc::MS_SHARED | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) || bound {
            return Err(Error::io(op, err).with_object(NETNS_RUN_DIR));
        }
        // EINVAL: not a mount point yet. Bind-mount the folder onto itself, then retry.
        // SAFETY: as above; a bind mount ignores fstype and data.
        let rc = unsafe {
            libc::mount(
                c.as_ptr(),
                c.as_ptr(),
                none.as_ptr(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(Error::io(op, io::Error::last_os_error()).with_object(NETNS_RUN_DIR));
        }
        bound = true;
    }
}

fn validate_name(op: &str, name: &str) -> Result<()> {
    let bad = if name.is_empty() {
        Some("the name is empty")
    } else if name == "." || name == ".." {
        Some("the name cannot be . or ..")
    } else if name.contains('/') || name.contains('\0') {
        Some("the name cannot contain / or NUL")
    } else if name.len() > 255 {
        Some("the name is longer than 255 bytes")
    } else {
        None
    };
    match bad {
        Some(reason) => Err(Error::invalid_input(op, reason).with_object(format!("{name:?}"))),
        None => Ok(()),
    }
}

/// Maps a `net.*` sysctl key to its `/proc/sys` path, refusing anything else.
fn sysctl_path(op: &str, key: &str) -> Result<PathBuf> {
    let rel = if key.contains('/') {
        key.trim_start_matches('/').to_string()
    } else {
        key.replace('.', "/")
    };
    let parts: Vec<&str> = rel.split('/').collect();
    let ok_chars = rel
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '@' | ':'));
    if parts.first() != Some(&"net")
        || parts.len() < 2
        || parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
        || !ok_chars
    {
        return Err(Error::invalid_input(
            op,
            "only net.* sysctls are per network namespace; give a key like net.ipv4.ip_forward",
        )
        .with_object(key));
    }
    Ok(Path::new("/proc/sys").join(rel))
}

fn c_path(op: &str, path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::invalid_input(op, "the path contains a NUL byte"))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a non-string panic payload)".to_string()
    }
}

/// The identity of a network namespace: the device and inode of its nsfs file, as
/// `/proc/PID/ns/net` shows them (`net:[4026531840]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetNsId {
    dev: u64,
    ino: u64,
}

impl NetNsId {
    /// The identity of the namespace `fd` refers to.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] when `fd` is not a namespace file.
    pub fn of(fd: BorrowedFd<'_>) -> Result<NetNsId> {
        let op = "identify network namespace";
        // SAFETY: stat is plain data; zeroed is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open; st is a valid, writable stat.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(Error::io(op, io::Error::last_os_error()));
        }
        // SAFETY: as above, for statfs.
        let mut sf: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open; sf is a valid, writable statfs.
        if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut sf) } != 0 {
            return Err(Error::io(op, io::Error::last_os_error()));
        }
        #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
        if sf.f_type as i64 != NSFS_MAGIC {
            return Err(Error::invalid_input(
                op,
                "the descriptor is not a namespace file (nsfs)",
            ));
        }
        Ok(NetNsId {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
        })
    }

    /// The calling thread's namespace.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when `/proc` is not mounted.
    pub fn current() -> Result<NetNsId> {
        let file = File::open(thread_netns_path())
            .map_err(|e| Error::io("identify network namespace", e))?;
        NetNsId::of(file.as_fd())
    }

    /// The namespace's inode number, as `ip netns identify` and `lsns` match it.
    pub fn inode(&self) -> u64 {
        self.ino
    }
}

impl std::fmt::Display for NetNsId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "net:[{}]", self.ino)
    }
}

/// `/proc/thread-self/ns/net` (Linux 3.17) or the task path on older kernels.
fn thread_netns_path() -> PathBuf {
    let modern = Path::new("/proc/thread-self/ns/net");
    if modern.exists() {
        return modern.to_path_buf();
    }
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    PathBuf::from(format!("/proc/self/task/{tid}/ns/net"))
}

/// Runs `f` with the calling thread moved into the namespace `target`, and moves it back
/// afterwards, also while a panic unwinds. Does nothing extra when the thread is there already.
pub(crate) fn enter<T>(target: BorrowedFd<'_>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let op = "enter network namespace";
    let home = File::open(thread_netns_path()).map_err(|e| Error::io(op, e))?;
    if NetNsId::of(home.as_fd())? == NetNsId::of(target)? {
        return f();
    }
    // SAFETY: setns only changes the calling thread's network namespace; `target` is open.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EPERM) {
            Error::permission(op, "CAP_SYS_ADMIN")
        } else {
            Error::io(op, e)
        });
    }
    /// Moves the thread home when dropped.
    struct Home(File);
    impl Drop for Home {
        fn drop(&mut self) {
            // SAFETY: as above; the thread entered the other namespace with the same rights.
            if unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                // A thread left in another namespace would send later calls there silently:
                // stopping is the only safe outcome (it cannot happen with the rights the first
                // setns needed).
                std::process::abort();
            }
        }
    }
    let _home = Home(home);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_before_any_system_call() {
        for bad in ["", ".", "..", "a/b", "a\0b", &"x".repeat(256)] {
            let e = validate_name("create", bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
        validate_name("create", "lwtun-1-0").unwrap();
    }

    #[test]
    fn only_net_sysctls_are_accepted() {
        assert_eq!(
            sysctl_path("s", "net.ipv4.ip_forward").unwrap(),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("s", "net/ipv4/conf/eth0.10/forwarding").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/eth0.10/forwarding")
        );
        for bad in [
            "kernel.panic",
            "net",
            "net/../kernel/panic",
            "net.ipv4..x",
            "vm.swappiness",
            "net.ipv4.ip forward",
        ] {
            let e = sysctl_path("s", bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    /// Descriptors of network namespaces this process holds (`net:[INODE]` links).
    fn netns_fds() -> usize {
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .filter(|t| t.to_string_lossy().starts_with("net:["))
            .count()
    }

    #[test]
    fn create_run_and_drop_leak_no_descriptors() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // Not eprintln!: libtest would capture it in a passing test.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                "SKIPPED create_run_and_drop_leak_no_descriptors: needs root\n".as_bytes(),
            );
            return;
        }
        let before = netns_fds();
        for _ in 0..10 {
            let ns = NetNs::create_unique("lwt-fd").unwrap();
            for _ in 0..5 {
                ns.run(|| Ok(())).unwrap();
            }
            let _ = ns.run(|| -> Result<()> { panic!("in closure") });
            ns.set_sysctl("net.ipv4.ip_forward", "1").unwrap();
            drop(ns.fd().unwrap());
        }
        assert_eq!(netns_fds(), before);
    }

    #[test]
    fn command_uses_nsenter_not_ip_netns_exec() {
        let ns = NetNs {
            name: "x".into(),
            path: PathBuf::from("/run/netns/x"),
            owned: false,
            held: None,
        };
        let cmd = ns.command("ip");
        assert_eq!(cmd.get_program(), "nsenter");
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(args, ["--net=/run/netns/x", "--", "ip"]);
    }
}
