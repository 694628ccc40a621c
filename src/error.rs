//! One error type for all of lwtun.
//!
//! Every [`Error`] says which operation failed and on what object, carries the kernel's own words
//! where it gave any (netlink's extended-ack text, the verifier log's last lines), and sorts itself
//! into an [`ErrorKind`] that callers match on instead of parsing messages.

use std::fmt;
use std::io;

/// The broad class of an [`Error`], for callers that react differently to each.
///
/// # Examples
///
/// ```
/// use lwtun::{Error, ErrorKind};
///
/// let e = Error::invalid_input("add route", "xmit headroom 300 is above the kernel's limit of 256");
/// assert_eq!(e.kind(), ErrorKind::InvalidInput);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The object (interface, route, map entry, namespace, a gateway's network) does not exist.
    NotFound,
    /// The object exists already (for example a route added twice without replace).
    Exists,
    /// The caller lacks a capability; the error names it.
    Permission,
    /// The kernel (or this machine) lacks a feature; the error names it and the first kernel
    /// version that has it, where known.
    Unsupported,
    /// The caller's input was refused, by lwtun before any system call or by the kernel.
    InvalidInput,
    /// The kernel refused for another reason; see the message and errno.
    Kernel,
    /// A system call or I/O failure outside netlink (files, sockets, threads).
    Io,
    /// The kernel's verifier refused a BPF program. The error carries the verifier's last
    /// lines ([`Error::verifier_log`]). On a kernel older than the ones lwtun's programs were
    /// verified on this usually means the kernel cannot run that program; it is never a
    /// missing capability.
    Verifier,
}

/// What went wrong, beneath the operation and the object.
#[derive(Debug)]
enum Cause {
    /// The kernel answered a netlink request with an error.
    Netlink { errno: i32, ext_ack: Option<String> },
    /// A libbpf call (load, attach, map operation) failed.
    Bpf(libbpf_rs::Error),
    /// An I/O failure.
    Io(io::Error),
    /// A feature the kernel lacks.
    Unsupported {
        feature: String,
        since: Option<&'static str>,
    },
    /// A missing capability.
    Permission { capability: &'static str },
    /// The verifier refused a program: the libbpf error and the log's last lines.
    Verifier {
        err: libbpf_rs::Error,
        log_tail: String,
    },
    /// Any other reason, said in words.
    Message(String),
}

/// The error type of every fallible lwtun operation.
///
/// Its `Display` reads as one sentence a user can act on, for example:
/// `add route 10.1.0.0/16 dev veth0: Invalid argument (errno 22); kernel: "Unknown device"`.
///
/// # Examples
///
/// ```
/// use lwtun::{Error, ErrorKind};
///
/// let e = Error::unsupported("create ipip device", "ipip tunnel devices (CONFIG_NET_IPIP)", None);
/// assert_eq!(e.kind(), ErrorKind::Unsupported);
/// assert!(e.to_string().contains("CONFIG_NET_IPIP"));
/// ```
#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    op: String,
    object: Option<String>,
    cause: Cause,
    /// What to do instead (an alternative feature, a command), said after the cause.
    hint: Option<String>,
}

/// The result type of lwtun operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    fn new(kind: ErrorKind, op: impl Into<String>, cause: Cause) -> Self {
        Error {
            kind,
            op: op.into(),
            object: None,
            cause,
            hint: None,
        }
    }

    /// The caller's input was refused before anything was sent to the kernel.
    pub fn invalid_input(op: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, op, Cause::Message(reason.into()))
    }

    /// The named object does not exist.
    pub fn not_found(op: impl Into<String>, what: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::NotFound,
            op,
            Cause::Message(format!("{} not found", what.into())),
        )
    }

    /// The kernel lacks `feature`; `since` is the first kernel version that has it, where known.
    pub fn unsupported(
        op: impl Into<String>,
        feature: impl Into<String>,
        since: Option<&'static str>,
    ) -> Self {
        Self::new(
            ErrorKind::Unsupported,
            op,
            Cause::Unsupported {
                feature: feature.into(),
                since,
            },
        )
    }

    /// The caller lacks `capability` (for example `CAP_NET_ADMIN`).
    pub fn permission(op: impl Into<String>, capability: &'static str) -> Self {
        Self::new(ErrorKind::Permission, op, Cause::Permission { capability })
    }

    /// Any other failure of the given kind, said in words.
    pub fn other(kind: ErrorKind, op: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(kind, op, Cause::Message(message.into()))
    }

    /// The kernel answered a netlink request with `errno` (positive) and optionally an
    /// extended-ack message. The kind follows the errno.
    pub fn netlink(op: impl Into<String>, errno: i32, ext_ack: Option<String>) -> Self {
        Self::new(kind_of_errno(errno), op, Cause::Netlink { errno, ext_ack })
    }

    /// An I/O failure; the kind follows the errno where there is one.
    pub fn io(op: impl Into<String>, err: io::Error) -> Self {
        let kind = match err.raw_os_error() {
            Some(errno) => match kind_of_errno(errno) {
                ErrorKind::Kernel => ErrorKind::Io,
                k => k,
            },
            None => match err.kind() {
                io::ErrorKind::NotFound => ErrorKind::NotFound,
                io::ErrorKind::PermissionDenied => ErrorKind::Permission,
                io::ErrorKind::AlreadyExists => ErrorKind::Exists,
                io::ErrorKind::InvalidInput => ErrorKind::InvalidInput,
                _ => ErrorKind::Io,
            },
        };
        Self::new(kind, op, Cause::Io(err))
    }

    /// A libbpf failure (load, verify, attach, map access).
    pub fn bpf(op: impl Into<String>, err: libbpf_rs::Error) -> Self {
        let kind = match err.kind() {
            libbpf_rs::ErrorKind::NotFound => ErrorKind::NotFound,
            libbpf_rs::ErrorKind::PermissionDenied => ErrorKind::Permission,
            libbpf_rs::ErrorKind::AlreadyExists => ErrorKind::Exists,
            // E2BIG (a full table, a list past the kernel's limit) is the caller's input, as
            // `kind_of_errno` sorts it for netlink.
            libbpf_rs::ErrorKind::InvalidInput
            | libbpf_rs::ErrorKind::InvalidData
            | libbpf_rs::ErrorKind::TooBig => ErrorKind::InvalidInput,
            libbpf_rs::ErrorKind::Unsupported => ErrorKind::Unsupported,
            _ => ErrorKind::Kernel,
        };
        Self::new(kind, op, Cause::Bpf(err))
    }

    /// A program load refused by the kernel's verifier: `err` is libbpf's error, `log` the
    /// verifier's log (its last lines are kept).
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::{Error, ErrorKind};
    ///
    /// let log = "0: R1=ctx() R10=fp0\n; len = bpf_skb_load_bytes(...)\n\
    ///            invalid access to map value, value_size=260 off=0 size=0\n";
    /// let e = Error::verifier(
    ///     "load tunnel",
    ///     lwtun::libbpf_rs::Error::from(std::io::Error::from_raw_os_error(13)),
    ///     log,
    /// );
    /// assert_eq!(e.kind(), ErrorKind::Verifier);
    /// assert!(e.verifier_log().unwrap().contains("value_size=260"));
    /// assert!(!e.to_string().contains("CAP_BPF"));
    /// ```
    pub fn verifier(op: impl Into<String>, err: libbpf_rs::Error, log: &str) -> Self {
        Self::new(
            ErrorKind::Verifier,
            op,
            Cause::Verifier {
                err,
                log_tail: log_tail(log, VERIFIER_LINES),
            },
        )
    }

    /// Adds what to do instead (an alternative, a command to run), shown after the cause.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::Error;
    ///
    /// let e = Error::unsupported("create gre device", "GRE devices (CONFIG_NET_IPGRE)", None)
    ///     .with_hint("use a Tunnel peer with GRE encapsulation, which needs no device");
    /// assert!(e.to_string().ends_with("which needs no device"));
    /// ```
    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// What to do instead, where the error says.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// The last lines of the verifier's log, for a [`ErrorKind::Verifier`] error.
    pub fn verifier_log(&self) -> Option<&str> {
        match &self.cause {
            Cause::Verifier { log_tail, .. } => Some(log_tail),
            _ => None,
        }
    }

    /// Names the object the operation was about (an interface, a route, a map key).
    #[must_use]
    pub fn with_object(mut self, object: impl Into<String>) -> Self {
        self.object = Some(object.into());
        self
    }

    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The operation that failed, such as `add route`.
    pub fn operation(&self) -> &str {
        &self.op
    }

    /// The object the operation was about, where known.
    pub fn object(&self) -> Option<&str> {
        self.object.as_deref()
    }

    /// The errno the kernel answered with, where it answered with one.
    pub fn errno(&self) -> Option<i32> {
        match &self.cause {
            Cause::Netlink { errno, .. } => Some(*errno),
            Cause::Io(e) => e.raw_os_error(),
            _ => None,
        }
    }

    /// The kernel's extended-ack text for a failed netlink request, where it gave one.
    pub fn ext_ack(&self) -> Option<&str> {
        match &self.cause {
            Cause::Netlink { ext_ack, .. } => ext_ack.as_deref(),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.op)?;
        if let Some(object) = &self.object {
            write!(f, " {object}")?;
        }
        f.write_str(": ")?;
        let cause: fmt::Result = match &self.cause {
            Cause::Netlink { errno, ext_ack } => {
                write!(f, "{} (errno {errno})", strerror(*errno))?;
                if let Some(msg) = ext_ack {
                    write!(f, "; kernel: \"{msg}\"")?;
                }
                if *errno == libc::EPERM || *errno == libc::EACCES {
                    f.write_str("; run as root or with CAP_NET_ADMIN")?;
                }
                Ok(())
            }
            Cause::Bpf(e) => {
                write!(f, "{e}")?;
                if self.kind == ErrorKind::Permission {
                    f.write_str("; loading BPF programs needs CAP_BPF (and CAP_NET_ADMIN for networking programs)")?;
                }
                Ok(())
            }
            Cause::Io(e) => write!(f, "{e}"),
            Cause::Unsupported { feature, since } => {
                write!(f, "this kernel does not support {feature}")?;
                if let Some(v) = since {
                    write!(f, " (available since Linux {v})")?;
                }
                Ok(())
            }
            Cause::Permission { capability } => {
                write!(
                    f,
                    "permission denied: needs {capability} (run as root or grant it)"
                )
            }
            Cause::Verifier { err, log_tail } => {
                write!(f, "the kernel's verifier refused the program ({err})")?;
                if !log_tail.is_empty() {
                    write!(f, "; the verifier's last lines:\n{log_tail}")?;
                }
                Ok(())
            }
            Cause::Message(m) => f.write_str(m),
        };
        cause?;
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

/// How many lines of a verifier log an error keeps.
const VERIFIER_LINES: usize = 12;

/// Linux's internal "operation not supported" (not in libc), which BPF map batch operations
/// return on map types without them.
pub(crate) const ENOTSUPP: i32 = 524;

/// The last `lines` non-empty lines of `log`, without libbpf's trailing processing summary
/// being cut.
fn log_tail(log: &str, lines: usize) -> String {
    let kept: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

/// The C library's text for `errno`, without std's " (os error N)" suffix.
fn strerror(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Sorts a (positive) errno into an [`ErrorKind`].
pub(crate) fn kind_of_errno(errno: i32) -> ErrorKind {
    match errno {
        libc::ENOENT
        | libc::ENODEV
        | libc::ESRCH
        | libc::ENXIO
        | libc::EADDRNOTAVAIL
        | libc::ENETUNREACH
        | libc::EHOSTUNREACH => ErrorKind::NotFound,
        libc::EEXIST | libc::EBUSY => ErrorKind::Exists,
        libc::EPERM | libc::EACCES => ErrorKind::Permission,
        libc::EOPNOTSUPP | libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT | libc::ENOSYS => {
            ErrorKind::Unsupported
        }
        libc::EINVAL | libc::ERANGE | libc::E2BIG | libc::ENAMETOOLONG => ErrorKind::InvalidInput,
        _ => ErrorKind::Kernel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netlink_errors_carry_errno_kind_and_ext_ack() {
        let e = Error::netlink("add route", libc::EEXIST, Some("File exists".into()))
            .with_object("10.0.0.0/8");
        assert_eq!(e.kind(), ErrorKind::Exists);
        assert_eq!(e.errno(), Some(libc::EEXIST));
        assert_eq!(e.ext_ack(), Some("File exists"));
        let text = e.to_string();
        assert!(text.starts_with("add route 10.0.0.0/8: "), "{text}");
        assert!(text.contains("kernel: \"File exists\""), "{text}");
    }

    #[test]
    fn permission_errors_name_what_to_do() {
        let e = Error::netlink("add link", libc::EPERM, None);
        assert_eq!(e.kind(), ErrorKind::Permission);
        assert!(e.to_string().contains("CAP_NET_ADMIN"));
        let e = Error::permission("load program", "CAP_BPF");
        assert!(e.to_string().contains("needs CAP_BPF"));
    }

    #[test]
    fn unsupported_names_feature_and_version() {
        let e = Error::unsupported("attach", "tcx", Some("6.6"));
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("tcx (available since Linux 6.6)"));
    }

    #[test]
    fn io_errors_sort_by_errno() {
        let e = Error::io("open", io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = Error::io("read", io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(e.kind(), ErrorKind::Io);
    }
}
