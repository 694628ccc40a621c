//! Which live processes hold a BPF program, map or link: the owners of state that has no pin
//! folder (a library process with an unpinned [`Tunnel`](crate::tunnel::Tunnel), the fleet
//! agent without `--pin`), found the way `bpftool prog show` finds its `pids`: through the file
//! descriptors in `/proc/PID/fd` and their `/proc/PID/fdinfo` (`prog_id:`, `map_id:`,
//! `link_id:`).
//!
//! A route or an attachment whose program, one of the program's maps, or whose link a live
//! process holds belongs to that process: removing it behind the process's back breaks what the
//! process believes it runs (its handle would still say "installed"). A pin folder's owner (its
//! flock) is the other kind of owner; see [`pins::owner`](crate::pins::owner).
//!
//! The scan reads every process's descriptors, so it needs root (or `CAP_SYS_PTRACE`) to see
//! other users' processes; a process that ends while it is read is skipped. It is a snapshot: a
//! process may open or close a descriptor right after.
//!
//! # Examples
//!
//! ```no_run
//! use lwtun::holders::Holders;
//!
//! let holders = Holders::scan()?;
//! for owner in holders.of_program(42) {
//!     println!("program 42 is held by {owner}");
//! }
//! # Ok::<(), lwtun::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
pub use crate::family::pins::Owner;
use crate::program::{program_info_by_id, ProgramInfo};

/// A BPF object a file descriptor refers to, as its fdinfo names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Program(u32),
    Map(u32),
    /// A link and the program it runs.
    Link {
        link: u32,
        program: Option<u32>,
    },
}

/// The live processes holding BPF programs, maps and links, from one scan of `/proc`.
///
/// # Examples
///
/// ```no_run
/// let holders = lwtun::holders::Holders::scan()?;
/// if let Some(owner) = holders.of_map(7).first() {
///     eprintln!("map 7 is in use by {owner}");
/// }
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Holders {
    programs: BTreeMap<u32, Vec<Owner>>,
    maps: BTreeMap<u32, Vec<Owner>>,
    links: BTreeMap<u32, Vec<Owner>>,
}

impl Holders {
    /// Reads the BPF descriptors of every process but this one (the caller knows what it holds
    /// itself, and a command that looks at a program by id holds it meanwhile).
    ///
    /// # Errors
    ///
    /// The error listing `/proc` (the descriptors of a process that ends meanwhile, or that may
    /// not be read, are skipped).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let holders = lwtun::holders::Holders::scan()?;
    /// println!("{} programs held by other processes", holders.programs().count());
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn scan() -> Result<Holders> {
        scan_root(Path::new("/proc"), Some(std::process::id()))
    }

    /// Two [`scan`](Self::scan)s `gap` apart, keeping what both saw: a process that opens a
    /// program or map by id only to read it (bpftool, the `lwtun` command looking at routes)
    /// is not taken for its holder. What owns an object holds it for longer than a look.
    ///
    /// # Errors
    ///
    /// As [`scan`](Self::scan).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let holders = lwtun::holders::Holders::scan_steady(Duration::from_millis(20))?;
    /// println!("{:?}", holders.of_program(42));
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn scan_steady(gap: std::time::Duration) -> Result<Holders> {
        let first = Holders::scan()?;
        std::thread::sleep(gap);
        Ok(first.in_both(&Holders::scan()?))
    }

    /// The holdings found in `self` and in `later`.
    fn in_both(&self, later: &Holders) -> Holders {
        let keep = |a: &BTreeMap<u32, Vec<Owner>>, b: &BTreeMap<u32, Vec<Owner>>| {
            let mut out = BTreeMap::new();
            for (id, owners) in a {
                let Some(again) = b.get(id) else { continue };
                let both: Vec<Owner> = owners
                    .iter()
                    .filter(|o| again.iter().any(|x| x.pid == o.pid))
                    .cloned()
                    .collect();
                if !both.is_empty() {
                    out.insert(*id, both);
                }
            }
            out
        };
        Holders {
            programs: keep(&self.programs, &later.programs),
            maps: keep(&self.maps, &later.maps),
            links: keep(&self.links, &later.links),
        }
    }

    /// The processes holding program `id`: by a program descriptor or by a link running it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let holders = lwtun::holders::Holders::scan()?;
    /// let pids: Vec<u32> = holders.of_program(42).iter().map(|o| o.pid).collect();
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn of_program(&self, id: u32) -> &[Owner] {
        self.programs.get(&id).map_or(&[], Vec::as_slice)
    }

    /// The processes holding map `id` by a descriptor.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let holders = lwtun::holders::Holders::scan()?;
    /// assert!(holders.of_map(u32::MAX).is_empty());
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn of_map(&self, id: u32) -> &[Owner] {
        self.maps.get(&id).map_or(&[], Vec::as_slice)
    }

    /// The processes holding link `id` by a descriptor.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let holders = lwtun::holders::Holders::scan()?;
    /// for owner in holders.of_link(3) {
    ///     println!("link 3: {owner}");
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn of_link(&self, id: u32) -> &[Owner] {
        self.links.get(&id).map_or(&[], Vec::as_slice)
    }

    /// The processes holding a program (`program` and its maps `map_ids`, as
    /// [`ProgramInfo`] lists them): whoever holds the program or
    /// any of its maps, each process once.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let info = lwtun::program::program_info_by_id(42)?;
    /// let holders = lwtun::holders::Holders::scan()?;
    /// for owner in holders.of_program_and_maps(info.id, &info.map_ids) {
    ///     println!("{owner} uses program 42 or its maps");
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn of_program_and_maps(&self, program: u32, map_ids: &[u32]) -> Vec<Owner> {
        let mut out: Vec<Owner> = Vec::new();
        let all = std::iter::once(self.of_program(program))
            .chain(map_ids.iter().map(|m| self.of_map(*m)))
            .flatten();
        for o in all {
            if !out.iter().any(|x| x.pid == o.pid) {
                out.push(o.clone());
            }
        }
        out
    }

    /// The ids of the programs some process holds.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let holders = lwtun::holders::Holders::scan()?;
    /// let ids: Vec<u32> = holders.programs().collect();
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn programs(&self) -> impl Iterator<Item = u32> + '_ {
        self.programs.keys().copied()
    }

    fn add(&mut self, held: Held, owner: &Owner) {
        let push = |table: &mut BTreeMap<u32, Vec<Owner>>, id: u32| {
            let owners = table.entry(id).or_default();
            if !owners.iter().any(|o| o.pid == owner.pid) {
                owners.push(owner.clone());
            }
        };
        match held {
            Held::Program(id) => push(&mut self.programs, id),
            Held::Map(id) => push(&mut self.maps, id),
            Held::Link { link, program } => {
                push(&mut self.links, link);
                if let Some(p) = program {
                    push(&mut self.programs, p);
                }
            }
        }
    }
}

/// The loaded programs that use one of the maps `map_ids` (`bpftool prog show` and each
/// program's `map_ids`): the kernel-side users of a table, found whatever holds them (a route,
/// a link, a pin, a process).
///
/// # Errors
///
/// Permission without CAP_SYS_ADMIN (listing programs by id needs it). A program unloaded
/// while the list is read is skipped.
///
/// # Examples
///
/// ```no_run
/// for p in lwtun::holders::programs_using_maps(&[97])? {
///     println!("program {} ({}) uses map 97", p.id, p.name);
/// }
/// # Ok::<(), lwtun::Error>(())
/// ```
pub fn programs_using_maps(map_ids: &[u32]) -> Result<Vec<ProgramInfo>> {
    let mut out = Vec::new();
    let mut id = 0u32;
    loop {
        let mut next = 0u32;
        // SAFETY: a plain syscall wrapper writing one u32.
        let rc = unsafe { libbpf_rs::libbpf_sys::bpf_prog_get_next_id(id, &mut next) };
        if rc < 0 {
            let e = std::io::Error::from_raw_os_error(-rc);
            if -rc == libc::ENOENT {
                return Ok(out);
            }
            return Err(Error::io("list loaded programs", e));
        }
        id = next;
        // Gone meanwhile (or not readable): skipped.
        let Ok(info) = program_info_by_id(id) else {
            continue;
        };
        if info.map_ids.iter().any(|m| map_ids.contains(m)) {
            out.push(info);
        }
    }
}

/// Scans `root` laid out as `/proc` (`PID/fd/N` links, `PID/fdinfo/N`, `PID/comm`), leaving
/// out process `skip`.
fn scan_root(root: &Path, skip: Option<u32>) -> Result<Holders> {
    let entries = std::fs::read_dir(root)
        .map_err(|e| Error::io("list processes", e).with_object(root.display().to_string()))?;
    let mut holders = Holders::default();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if Some(pid) == skip {
            continue;
        }
        let dir = entry.path();
        // Gone or not readable: nothing to learn from it.
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        let mut owner: Option<Owner> = None;
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if !is_bpf_target(&target.to_string_lossy()) {
                continue;
            }
            let Ok(info) = std::fs::read_to_string(dir.join("fdinfo").join(fd.file_name())) else {
                continue;
            };
            let Some(held) = parse_fdinfo(&info) else {
                continue;
            };
            let owner = owner.get_or_insert_with(|| Owner {
                pid,
                command: std::fs::read_to_string(dir.join("comm"))
                    .ok()
                    .map(|c| c.trim().to_string()),
            });
            holders.add(held, owner);
        }
    }
    Ok(holders)
}

/// Whether a descriptor's link target is a BPF object (`anon_inode:bpf-prog`,
/// `anon_inode:bpf-map`, `anon_inode:bpf_link`).
fn is_bpf_target(target: &str) -> bool {
    matches!(
        target,
        "anon_inode:bpf-prog" | "anon_inode:bpf-map" | "anon_inode:bpf_link"
    )
}

/// The object an fdinfo text describes: a link has `link_id:` (and the `prog_id:` it runs), a
/// program `prog_id:`, a map `map_id:`.
fn parse_fdinfo(text: &str) -> Option<Held> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().parse::<u32>().ok())?
        })
    };
    if let Some(link) = field("link_id") {
        return Some(Held::Link {
            link,
            program: field("prog_id"),
        });
    }
    if let Some(id) = field("prog_id") {
        return Some(Held::Program(id));
    }
    field("map_id").map(Held::Map)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROG: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2072\n\
                        prog_type:\t10\nprog_jited:\t1\nprog_tag:\t3b185187f1855c4c\n\
                        memlock:\t4096\nprog_id:\t412\nrun_time_ns:\t0\nrun_cnt:\t0\n";
    const MAP: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2072\nmap_type:\t11\n\
                       key_size:\t8\nvalue_size:\t40\nmax_entries:\t4096\nmap_flags:\t0x1\n\
                       map_extra:\t0x0\nmemlock:\t331712\nmap_id:\t97\nfrozen:\t0\n";
    const LINK: &str = "pos:\t0\nflags:\t02000000\nmnt_id:\t16\nino:\t2072\n\
                        link_type:\ttcx\nlink_id:\t31\nprog_tag:\t3b185187f1855c4c\n\
                        prog_id:\t413\nifindex:\t2\nattach_type:\t46\n";

    #[test]
    fn fdinfo_names_the_object() {
        assert_eq!(parse_fdinfo(PROG), Some(Held::Program(412)));
        assert_eq!(parse_fdinfo(MAP), Some(Held::Map(97)));
        assert_eq!(
            parse_fdinfo(LINK),
            Some(Held::Link {
                link: 31,
                program: Some(413)
            })
        );
        assert_eq!(parse_fdinfo("pos:\t0\nflags:\t02\n"), None);
        assert_eq!(parse_fdinfo("prog_id:\tnot a number\n"), None);
    }

    #[test]
    fn a_fake_proc_is_scanned_and_the_caller_left_out() {
        let root = std::env::temp_dir().join(format!("lwtun-holders-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let proc_with = |pid: u32, comm: &str, fds: &[(&str, &str)]| {
            let dir = root.join(pid.to_string());
            std::fs::create_dir_all(dir.join("fd")).unwrap();
            std::fs::create_dir_all(dir.join("fdinfo")).unwrap();
            std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            for (n, (target, info)) in fds.iter().enumerate() {
                std::os::unix::fs::symlink(target, dir.join("fd").join(n.to_string())).unwrap();
                std::fs::write(dir.join("fdinfo").join(n.to_string()), info).unwrap();
            }
        };
        proc_with(
            10,
            "agent",
            &[
                ("anon_inode:bpf-prog", PROG),
                ("anon_inode:bpf-map", MAP),
                ("/dev/null", PROG), // not a BPF descriptor: ignored whatever its fdinfo says
            ],
        );
        proc_with(20, "decapd", &[("anon_inode:bpf_link", LINK)]);
        proc_with(30, "me", &[("anon_inode:bpf-prog", PROG)]);
        std::fs::create_dir_all(root.join("self")).unwrap();
        let h = scan_root(&root, Some(30)).unwrap();
        std::fs::remove_dir_all(&root).unwrap();

        let pids = |owners: &[Owner]| owners.iter().map(|o| o.pid).collect::<Vec<_>>();
        assert_eq!(pids(h.of_program(412)), [10], "30 is the caller");
        assert_eq!(h.of_program(412)[0].command.as_deref(), Some("agent"));
        assert_eq!(pids(h.of_map(97)), [10]);
        assert_eq!(pids(h.of_link(31)), [20]);
        assert_eq!(h.of_link(31)[0].command.as_deref(), Some("decapd"));
        assert_eq!(pids(h.of_program(413)), [20], "a link holds its program");
        assert!(h.of_program(1).is_empty());
        assert_eq!(pids(&h.of_program_and_maps(1, &[97, 98])), [10]);
        assert_eq!(
            pids(&h.of_program_and_maps(412, &[97])),
            [10],
            "each process once"
        );
        assert_eq!(h.programs().collect::<Vec<_>>(), [412, 413]);

        // A later scan without the agent's program (it only looked at it): the map stays.
        let mut later = h.clone();
        later.programs.remove(&412);
        let steady = h.in_both(&later);
        assert!(steady.of_program(412).is_empty());
        assert_eq!(pids(steady.of_map(97)), [10]);
        assert_eq!(pids(steady.of_link(31)), [20]);
    }
}
