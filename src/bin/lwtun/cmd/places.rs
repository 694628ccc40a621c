//! Where a tunnel's routes may be: every network namespace lwtun can find, for the commands
//! that must reach all of a tunnel's routes (`tunnel unload`, `tunnel resize`).

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;

use lwtun::netns::NetNs;
use lwtun::Result;

use crate::Ctx;

/// A namespace to look for routes in, with the name the output gives it.
pub(crate) struct Place {
    pub(crate) label: String,
    pub(crate) netns: NetNs,
}

/// This namespace, the named ones, the bind-mounted ones and those of running processes, each
/// once.
pub(crate) fn namespaces(ctx: &Ctx) -> Result<Vec<Place>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let here = ctx.netns.id()?.inode();
    seen.insert(here);
    out.push(Place {
        label: ctx.netns.name().to_string(),
        netns: NetNs::of_fd(ctx.netns.fd()?)?,
    });
    for name in NetNs::list()? {
        let Ok(ns) = NetNs::open(&name) else { continue };
        let Ok(id) = ns.id() else { continue };
        if seen.insert(id.inode()) {
            out.push(Place {
                label: name,
                netns: ns,
            });
        }
    }
    use std::os::unix::fs::MetadataExt;
    // Namespaces bind-mounted outside /run/netns (a container runtime's, a test's).
    for point in netns_mounts(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
    {
        let Ok(meta) = std::fs::metadata(&point) else {
            continue;
        };
        if !seen.insert(meta.ino()) {
            continue;
        }
        let Ok(file) = std::fs::File::open(&point) else {
            continue;
        };
        let Ok(ns) = NetNs::of_fd(OwnedFd::from(file)) else {
            continue;
        };
        out.push(Place {
            label: format!("netns mounted at {point}"),
            netns: ns,
        });
    }
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path().join("ns/net");
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !seen.insert(meta.ino()) {
            continue;
        }
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        let Ok(ns) = NetNs::of_fd(OwnedFd::from(file)) else {
            continue;
        };
        out.push(Place {
            label: format!("netns of process {pid}"),
            netns: ns,
        });
    }
    Ok(out)
}

/// The mount points of network namespaces in the text of `/proc/self/mountinfo` (nsfs mounts
/// whose root is `net:[INODE]`), with the kernel's octal escapes (`\040` for a space) undone.
fn netns_mounts(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let fields: Vec<&str> = mount.split(' ').collect();
            let root = fields.get(3)?;
            (fs.split(' ').next() == Some("nsfs") && root.starts_with("net:["))
                .then(|| unescape(fields.get(4)?))
                .flatten()
        })
        .collect()
}

/// Undoes mountinfo's `\NNN` octal escapes.
fn unescape(field: &str) -> Option<String> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let code = std::str::from_utf8(&bytes[i + 1..i + 4]).ok()?;
            out.push(u8::from_str_radix(code, 8).ok()?);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::netns_mounts;

    #[test]
    fn netns_bind_mounts_are_read_from_mountinfo() {
        let text = "\
36 25 0:4 net:[4026532301] /run/netns/a rw shared:5 - nsfs nsfs rw
37 25 0:4 net:[4026532302] /tmp/hidden\\040ns rw - nsfs nsfs rw
38 25 0:4 mnt:[4026532303] /tmp/mnt-ns rw - nsfs nsfs rw
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw";
        assert_eq!(netns_mounts(text), ["/run/netns/a", "/tmp/hidden ns"]);
    }
}
