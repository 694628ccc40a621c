//! One owner per pinned data plane: an exclusive `flock` on the pin folder.
//!
//! A family that adopts pinned maps keeps a copy of their contents (the peer table's prefixes,
//! counter slots, free slots), so two processes editing one pinned table at once would each
//! write from a stale copy. lwtun therefore lets one process own a pin folder at a time, the way
//! libxdp serialises its dispatcher changes: it takes `flock(LOCK_EX | LOCK_NB)` on the folder
//! (bpffs folders can be locked like any other) when a family loads with that folder, and holds
//! it while the family lives. The kernel drops the lock when the owner exits, also on
//! `SIGKILL`, so a crashed owner never blocks the next one. A second owner gets
//! [`ErrorKind::Exists`](crate::ErrorKind::Exists) naming the process that holds the folder.
//!
//! The lock is advisory: it orders lwtun processes (and tools that take the same lock, such as
//! `flock FOLDER cmd`), not `bpftool map update`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

/// The held lock; released when dropped.
#[derive(Debug)]
pub(crate) struct PinLock {
    _file: File,
}

impl PinLock {
    /// Takes the folder's lock without waiting.
    pub(crate) fn acquire(folder: &Path) -> Result<PinLock> {
        let op = "lock pin folder";
        let file = File::open(folder)
            .map_err(|e| Error::io(op, e).with_object(folder.display().to_string()))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = holder(folder)
                    .map(|pid| format!("process {pid}{}", comm(pid)))
                    .unwrap_or_else(|| "another process".to_string());
                return Err(Error::other(
                    ErrorKind::Exists,
                    op,
                    format!(
                        "{holder} owns the pinned data plane in {} (it holds the folder's \
                         flock); stop it, or adopt the pins once it has ended",
                        folder.display()
                    ),
                )
                .with_object(folder.display().to_string()));
            }
            return Err(Error::io(op, e).with_object(folder.display().to_string()));
        }
        Ok(PinLock { _file: file })
    }
}

/// The pid holding a flock on `folder`, from `/proc/locks`.
fn holder(folder: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(folder).ok()?;
    let (dev, ino) = (meta.dev(), meta.ino());
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        // "1: FLOCK  ADVISORY  WRITE 4242 00:2a:1234 0 EOF"
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(1) != Some(&"FLOCK") {
            return None;
        }
        let id: Vec<&str> = f.get(5)?.split(':').collect();
        let hex = |s: &str| u64::from_str_radix(s, 16).ok();
        let same = id.len() == 3
            && hex(id[0]) == Some(u64::from(major))
            && hex(id[1]) == Some(u64::from(minor))
            && id[2].parse::<u64>().ok() == Some(ino);
        same.then(|| f.get(4)?.parse().ok()).flatten()
    })
}

/// ` (NAME)` for a pid, from `/proc/PID/comm`.
fn comm(pid: u32) -> String {
    std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/comm")))
        .map(|c| format!(" ({})", c.trim()))
        .unwrap_or_default()
}
