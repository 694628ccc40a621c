//! One owner per pin folder: an exclusive `flock` on the folder (see the pin protocol in
//! [`super::pins`]).
//!
//! A family that adopts pinned maps keeps a copy of their contents (a peer table's prefixes,
//! counter slots, free slots), so two processes editing one pinned table at once would each
//! write from a stale copy. lwtun therefore lets one process own a pin folder at a time, the way
//! libxdp serialises its dispatcher changes: `flock(LOCK_EX | LOCK_NB)` on the folder (bpffs
//! folders can be locked like any other), held while the family lives.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

/// The process that owns a pin folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Its process id.
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`), when readable.
    pub command: Option<String>,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.command {
            Some(c) => write!(f, "process {} ({c})", self.pid),
            None => write!(f, "process {}", self.pid),
        }
    }
}

/// The held lock; released when dropped.
#[derive(Debug)]
pub(crate) struct PinLock {
    file: File,
}

impl PinLock {
    /// Takes the folder's lock without waiting; Exists naming the holder when it is taken.
    pub(crate) fn acquire(folder: &Path) -> Result<PinLock> {
        let op = "lock pin folder";
        let object = folder.display().to_string();
        let file = File::open(folder).map_err(|e| Error::io(op, e).with_object(object.clone()))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = owner(folder)
                    .ok()
                    .flatten()
                    .map(|o| o.to_string())
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
                .with_object(object));
            }
            return Err(Error::io(op, e).with_object(object));
        }
        Ok(PinLock { file })
    }
}

impl Drop for PinLock {
    fn drop(&mut self) {
        // Unlock before the fd closes: a child forked by another thread of this process (to
        // exec `ip`, say) holds a copy of the fd until its exec, and the lock belongs to the
        // open file, so closing ours alone would leave the folder locked for that moment and
        // refuse the next owner (seen in CI: a test re-adopting its own folder).
        // SAFETY: flock on an fd we own.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// The process holding a flock on `folder`, from `/proc/locks` (read only: the lock is not
/// tried, so a concurrent load is never refused because of this look).
pub(crate) fn owner(folder: &Path) -> Result<Option<Owner>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(folder).map_err(|e| {
        Error::io("look up pin folder owner", e).with_object(folder.display().to_string())
    })?;
    let locks =
        std::fs::read_to_string("/proc/locks").map_err(|e| Error::io("read /proc/locks", e))?;
    Ok(flock_holder(
        &locks,
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino(),
    )
    .map(|pid| Owner {
        pid,
        command: std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/comm")))
            .ok()
            .map(|c| c.trim().to_string()),
    }))
}

/// The pid of the FLOCK on device `major:minor`, inode `ino` in the text of `/proc/locks`.
fn flock_holder(locks: &str, major: u32, minor: u32, ino: u64) -> Option<u32> {
    locks.lines().find_map(|l| {
        // "1: FLOCK  ADVISORY  WRITE 4242 00:2a:1234 0 EOF" (a blocked waiter: "1: -> FLOCK …")
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

#[cfg(test)]
mod tests {
    use super::flock_holder;

    #[test]
    fn the_holder_is_read_from_the_matching_flock_line() {
        let locks = "1: POSIX  ADVISORY  WRITE 10 00:2a:77 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 00:2a:1234 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 99 00:2a:1234 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 7 00:2b:1234 0 EOF\n";
        assert_eq!(flock_holder(locks, 0, 0x2a, 1234), Some(4242));
        assert_eq!(flock_holder(locks, 0, 0x2b, 1234), Some(7));
        assert_eq!(
            flock_holder(locks, 0, 0x2a, 77),
            None,
            "a POSIX lock is not an owner"
        );
        assert_eq!(flock_holder(locks, 0, 0x2c, 1234), None);
    }
}
