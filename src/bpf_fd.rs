//! What a raw file descriptor a caller hands lwtun holds: a BPF program, a map, a link or
//! something else. The kernel's `BPF_OBJ_GET_INFO_BY_FD` answers for whatever BPF object the fd
//! holds, so a map passed where a program belongs would otherwise be described as a program with
//! the map's id and type; every place that takes a raw fd checks its kind here first.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use libbpf_rs::libbpf_sys;

use crate::error::{Error, Result};

/// The kind of kernel object a file descriptor holds, as far as lwtun tells them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FdKind {
    /// A BPF program (`anon_inode:bpf-prog`).
    Program,
    /// A BPF map (`anon_inode:bpf-map`).
    Map,
    /// A BPF link (`anon_inode:bpf_link`).
    Link,
    /// Anything else: the target `/proc/self/fd` shows for it.
    Other(String),
}

impl fmt::Display for FdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdKind::Program => f.write_str("a BPF program"),
            FdKind::Map => f.write_str("a BPF map"),
            FdKind::Link => f.write_str("a BPF link"),
            FdKind::Other(target) => write!(f, "{target}"),
        }
    }
}

/// What `fd` holds, from the anonymous inode `/proc/self/fd` names it by; `None` when /proc
/// cannot tell (not mounted).
pub(crate) fn kind(fd: BorrowedFd<'_>) -> Option<FdKind> {
    let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let target = target.to_string_lossy();
    Some(match target.as_ref() {
        "anon_inode:bpf-prog" => FdKind::Program,
        "anon_inode:bpf-map" => FdKind::Map,
        "anon_inode:bpf_link" => FdKind::Link,
        other => FdKind::Other(other.to_string()),
    })
}

/// Refuses an fd that does not hold `want`, naming what it holds instead: the kernel would read a
/// map's facts into a program's info (or the reverse) and describe one as the other.
pub(crate) fn expect_kind(op: &str, fd: BorrowedFd<'_>, want: FdKind) -> Result<()> {
    let Some(have) = kind(fd) else {
        return Ok(());
    };
    if have == want {
        return Ok(());
    }
    let what = match have {
        FdKind::Map => match libbpf_rs::MapInfo::new(fd) {
            Ok(info) => format!(
                "BPF map {} (id {}, type {:?})",
                info.name().unwrap_or("?"),
                info.info.id,
                info.map_type()
            ),
            Err(_) => "a BPF map".to_string(),
        },
        FdKind::Program => match program_name_and_id(fd) {
            Some((name, id)) => format!("BPF program {name} (id {id})"),
            None => "a BPF program".to_string(),
        },
        other => other.to_string(),
    };
    Err(Error::invalid_input(
        op,
        format!(
            "file descriptor {} holds {what}, not {want}: pass {want}'s file descriptor",
            fd.as_raw_fd()
        ),
    ))
}

/// The name and type (`BPF_MAP_TYPE_*`) of the loaded map `id`; `None` when it is gone or
/// cannot be opened.
pub(crate) fn map_name_by_id(id: u32) -> Option<(String, u32)> {
    // SAFETY: plain syscall wrapper; a negative return is an error, else a new fd we own.
    let raw = unsafe { libbpf_sys::bpf_map_get_fd_by_id(id) };
    if raw < 0 {
        return None;
    }
    // SAFETY: raw is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let info = libbpf_rs::MapInfo::new(fd.as_fd()).ok()?;
    Some((info.name().unwrap_or_default().to_string(), info.info.type_))
}

/// The name libbpf gives program type `raw` (`BPF_PROG_TYPE_*`): "xdp", "sched_cls",
/// "lwt_xmit", ..., with the number; just the number for a type libbpf does not know.
pub(crate) fn prog_type_name(raw: u32) -> String {
    // SAFETY: libbpf returns a static NUL-terminated string, or NULL for an unknown type.
    let name = unsafe { libbpf_sys::libbpf_bpf_prog_type_str(raw) };
    if name.is_null() {
        return format!("{raw}");
    }
    // SAFETY: non-null, static and NUL-terminated (above).
    let name = unsafe { std::ffi::CStr::from_ptr(name) };
    format!("{} ({raw})", name.to_string_lossy())
}

/// A program's kernel name and id, read from its fd.
fn program_name_and_id(fd: BorrowedFd<'_>) -> Option<(String, u32)> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info is a valid bpf_prog_info of `len` bytes without array pointers; the fd is
    // borrowed for the call.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if rc != 0 {
        return None;
    }
    // SAFETY: the kernel NUL-terminates the name within its 16 bytes.
    let name = unsafe { std::ffi::CStr::from_ptr(info.name.as_ptr()) };
    Some((name.to_string_lossy().into_owned(), info.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_types_are_named() {
        assert_eq!(
            prog_type_name(libbpf_sys::BPF_PROG_TYPE_XDP),
            format!("xdp ({})", libbpf_sys::BPF_PROG_TYPE_XDP)
        );
        assert_eq!(
            prog_type_name(libbpf_sys::BPF_PROG_TYPE_LWT_XMIT),
            format!("lwt_xmit ({})", libbpf_sys::BPF_PROG_TYPE_LWT_XMIT)
        );
        assert_eq!(prog_type_name(100_000), "100000");
    }

    #[test]
    fn a_file_is_not_a_bpf_object() {
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let kind = kind(f.as_fd());
        assert!(matches!(kind, Some(FdKind::Other(_)) | None), "{kind:?}");
        if kind.is_some() {
            let e = expect_kind("t", f.as_fd(), FdKind::Program).unwrap_err();
            assert!(e.to_string().contains("not a BPF program"), "{e}");
        }
    }
}
