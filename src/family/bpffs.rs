//! Pin folders live on a BPF filesystem: checked before anything is made, so a folder
//! elsewhere is refused with what to use instead, not with libbpf's `EINVAL` after a half-made
//! load.

use std::path::Path;

use crate::error::{Error, ErrorKind, Result};

/// `BPF_FS_MAGIC` from `<linux/magic.h>`: `statfs(2)`'s `f_type` on a BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Refuses a pin folder that is not on a BPF filesystem. A folder that does not exist yet is
/// judged by the nearest folder above it that does (where it would be made).
///
/// # Errors
///
/// InvalidInput naming the folder, the filesystem it is on, and where pins can go.
pub(crate) fn require(folder: &Path, op: &str) -> Result<()> {
    let mut at = folder;
    while !at.exists() {
        match at.parent() {
            Some(up) if !up.as_os_str().is_empty() => at = up,
            _ => return Ok(()),
        }
    }
    let magic = match statfs_type(at) {
        Ok(m) => m,
        // Not knowing is not a refusal: the load says what fails.
        Err(_) => return Ok(()),
    };
    if magic == BPF_FS_MAGIC {
        return Ok(());
    }
    Err(Error::other(
        ErrorKind::InvalidInput,
        op,
        format!(
            "the folder is not on a BPF filesystem, bpffs ({} is on {}), and only a BPF filesystem \
             holds pins",
            at.display(),
            fs_name(magic)
        ),
    )
    .with_object(folder.display().to_string())
    .with_hint(
        "use a folder under /sys/fs/bpf (if that is not mounted: mount -t bpf bpf /sys/fs/bpf)",
    ))
}

/// `statfs(2)`'s `f_type` of `path`.
fn statfs_type(path: &Path) -> std::io::Result<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statfs writes into a zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// A filesystem's name by its magic, for the message.
fn fs_name(magic: i64) -> String {
    match magic {
        0x0102_1994 => "tmpfs".into(),
        0xef53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683e => "btrfs".into(),
        0x794c_7630 => "overlayfs".into(),
        0x6265_6572 => "sysfs".into(),
        0x9fa0 => "procfs".into(),
        other => format!("a filesystem of type {other:#x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_off_bpffs_is_refused_with_where_to_pin() {
        let dir = std::env::temp_dir().join(format!("lwtun-bpffs-{}/a/b", std::process::id()));
        let e = require(&dir, "load tunnel").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let text = e.to_string();
        assert!(text.contains("is not on a BPF filesystem"), "{text}");
        assert!(text.contains("/sys/fs/bpf"), "{text}");
        assert!(!dir.exists(), "nothing made");
    }

    #[test]
    fn a_folder_on_bpffs_passes() {
        let bpffs = Path::new("/sys/fs/bpf");
        if statfs_type(bpffs).ok() != Some(BPF_FS_MAGIC) {
            eprintln!("SKIPPED a_folder_on_bpffs_passes: /sys/fs/bpf is not mounted");
            return;
        }
        require(&bpffs.join("lwtun-bpffs-test/nested"), "load").unwrap();
    }
}
