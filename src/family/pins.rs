//! The pin protocol: how a program family's state outlives its process on bpffs, and how
//! another process finds it, reads it or takes it over. Every pinned family follows it
//! ([`Tunnel`], [`Decap`], [`LwtRedirect`], [`TunnelRedirect`], [`Seg6End`]), and so do the
//! `lwtun` command and the fleet agent, which read folders through this module.
//!
//! # A pin folder
//!
//! One folder on bpffs (under `/sys/fs/bpf`) holds one instance of one family:
//!
//! - its **state maps**, pinned under their own names ([`PinLayout::maps`]): made empty by the
//!   first owner, taken over as they are by every later one;
//! - its **programs** ([`PinLayout::programs`]), pinned by each owner in place of the previous
//!   owner's, so that a tool attaching from the pins (`ip route … encap bpf pinned`,
//!   `tc filter … pinned`, bpftool) gets the programs that read the state maps.
//!
//! Nothing else is pinned there. The layouts are the constants below ([`TUNNEL`], [`DECAP`],
//! [`LWT_REDIRECT`], [`TUNNEL_REDIRECT`], [`SEG6`]), each also its family's `PIN_LAYOUT`.
//!
//! # One owner
//!
//! At most one process owns a folder: the one whose family value holds `flock(LOCK_EX)` on the
//! folder. A load takes the lock before it reads a pin and the value keeps it until it has
//! removed or kept its pins. A second owner's load fails with
//! [`ErrorKind::Exists`](crate::ErrorKind::Exists) naming the process that holds the folder.
//! The kernel drops the lock when the owner exits, also on `SIGKILL`, so a crashed owner never
//! blocks the next one. [`owner`] tells who holds a folder without taking it. The lock is
//! advisory: it orders lwtun processes and tools that take it (`flock FOLDER cmd`), not
//! `bpftool map update`.
//!
//! # Loading with a folder
//!
//! 1. The folder is made when missing (and removed again when the load fails or the value
//!    drops unkept).
//! 2. The lock is taken.
//! 3. Every pin the layout names must be a map of that name; anything else means the folder is
//!    another program's, and the load fails with InvalidInput touching nothing.
//! 4. A partial set of state maps (a load or an unload killed midway) is removed: it is not
//!    state to take over, and pairing some old maps with fresh ones would make them disagree.
//! 5. A complete set is **adopted**: the new object reuses the maps; the family checks its
//!    configuration's magic and ABI version (`LWTUN_MAGIC`, `LWTUN_ABI_VERSION` in
//!    `bpf/lwtun.h`; another version is InvalidInput and leaves the folder as it was) and
//!    rebuilds its bookkeeping (rules, counter slots, capacity) from the maps.
//! 6. Otherwise the fresh maps are pinned, then the programs.
//!
//! A load that fails leaves the folder as it found it: what it pinned is unpinned, what it
//! adopted stays.
//!
//! # Dropping
//!
//! A family value that drops removes its pins, and the folder when it made it, unless it was
//! told to keep them (`keep_pinned`, or `hand_over` for a tunnel): then everything stays for the
//! next owner, and only the lock goes. What a family attached or installed (routes,
//! attachments) follows the family's own rules.
//!
//! # Reading without owning
//!
//! [`inspect`] reports which family a folder holds, whether its set is complete and who owns
//! it; [`discover`] lists the folders under a root. The maps can be read at any time without
//! the lock (`MapHandle::from_pinned_path`, `bpftool map dump pinned FOLDER/NAME`). Writing
//! behind a live owner's back is not supported: the owner keeps a copy of its tables and would
//! overwrite the change; take the folder over when the owner has ended instead.
//!
//! # The peer journal
//!
//! A tunnel's folder also holds `peer_journal` once a peer changed: the changes lwtun's
//! writers made to the peer tables, which [`PeerJournal`] reads from any process (a BPF map
//! update notifies nobody, so the writers say what they did). Every write through lwtun
//! ([`PeerTable`]'s insert, replace, remove and batches, from a [`Tunnel`], the `lwtun`
//! command's [`TunnelTables`] or the fleet agent) appends one record per changed peer.
//!
//! - **The map**: a `BPF_MAP_TYPE_ARRAY` made by user space with `BPF_F_MMAPABLE` (Linux 5.5),
//!   named `peer_journal`, 160-byte values, `1 + capacity` entries (capacity 16384 records,
//!   2.6 MB). Entry 0 is the header, entries `1..=capacity` the ring. Readers `mmap` it
//!   whole; a writer maps the header page and writes its first 63 records with map updates
//!   (one `BPF_MAP_UPDATE_BATCH` per batch), then maps the ring whole and stores records in
//!   place (a command's single edit does not pay for mapping 2.6 MB; a long-lived owner's
//!   appends cost no system call). No BPF program reads it, so its layout is a `#[repr(C)]`
//!   Rust struct, not part of `bpf/lwtun.h`.
//! - **The header** (entry 0, native byte order): `u32 magic` (`LWTUN_MAGIC`), `u32 version`
//!   (1), `u32 capacity`, `u32 record_size` (160), `u64 head` (the sequence number of the last
//!   record written, 0 for none), `u64 writing` (the last sequence number a writer has begun
//!   to write).
//! - **A record** (160 bytes): `u64 seq` (1, 2, …; record `s` lives in entry
//!   `1 + (s - 1) % capacity`), `u64 time_ns` (`CLOCK_REALTIME`, nanoseconds since the Unix
//!   epoch: comparable between processes and with logs, but it follows the wall clock, so it
//!   can step), `u32 op` (1 added, 2 removed, 3 changed), `u32 pid`, `u8 family` (4 or 6),
//!   `u8 prefix_len`, 6 bytes of padding, `u8 addr[16]`, `char comm[16]` (the writer's
//!   `/proc/self/comm` when it opened the tables), then the old and the new
//!   `struct lwtun_peer` (48 bytes each, the tables' own value layout from `bpf/lwtun.h`; zero
//!   where there is none). A replace that changes nothing is not recorded.
//!
//! **Writers** append only while they own the folder: every lwtun writer of pinned tables holds
//! its owner lock ([one owner](self#one-owner)), so there is one writer at a time and the
//! sequence needs no atomic read-modify-write (a BPF spin lock would serialise only BPF
//! programs). A writer stores `writing` (the last sequence number of what it is about to
//! append), then the records, then `head` (release order); a batch is appended in one go, and
//! of a batch longer than the ring only its last `capacity` records are written. A reader
//! copies the records it has not read, then reads `writing`: a record `s` it copied is intact
//! when `s + capacity > writing` (no write to its entry had begun), as a seqlock. A reader that
//! fell further behind than the ring holds reads the tables whole instead and reports the
//! difference with what it knew (a resync).
//!
//! **Older folders** (lwtun 0.2.0) have no journal: they are adopted as they are, and the first
//! write under the lock makes it before it changes the tables. Changes by an older lwtun or
//! behind lwtun's back (`bpftool map update`) are not journaled: a reader finds them only when
//! it reads the tables whole ([`PeerJournal::verify`], and a resync), and so is a change whose
//! writer was killed between its table write and its append. A [`Tunnel`] that is not
//! pinned keeps no journal (nobody else could read it). The journal is removed with the state
//! maps ([`PinLayout::optional`]); a reader holding it then reads nothing more.
//!
//! [`PeerJournal::verify`]: crate::peer::PeerJournal::verify
//! [`PeerJournal`]: crate::peer::PeerJournal
//! [`PeerTable`]: crate::peer::PeerTable
//! [`TunnelTables`]: crate::tunnel::TunnelTables
//!
//! # Examples
//!
//! ```no_run
//! use lwtun::pins;
//!
//! for folder in pins::discover("/sys/fs/bpf")? {
//!     let owner = folder.owner.map_or("none".to_string(), |o| o.to_string());
//!     println!("{} {} complete={} owner={owner}", folder.path.display(),
//!         folder.layout.family(), folder.complete);
//! }
//! # Ok::<(), lwtun::Error>(())
//! ```
//!
//! [`Tunnel`]: crate::tunnel::Tunnel
//! [`Decap`]: crate::decap::Decap
//! [`LwtRedirect`]: crate::lwt_redirect::LwtRedirect
//! [`TunnelRedirect`]: crate::tunnel_redirect::TunnelRedirect
//! [`Seg6End`]: crate::seg6::Seg6End

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use libbpf_rs::{MapCore, Object, OpenObject};

pub use super::lock::Owner;
use super::lock::PinLock;
use crate::error::{Error, Result};

/// What a family pins in its folder: the names of its state maps and of its programs.
///
/// # Examples
///
/// ```
/// let layout = &lwtun::tunnel::PIN_LAYOUT;
/// assert_eq!(layout.family(), "tunnel");
/// assert!(layout.maps().contains(&"peers_v4"));
/// ```
#[derive(Debug, PartialEq, Eq)]
pub struct PinLayout {
    family: &'static str,
    maps: &'static [&'static str],
    programs: &'static [&'static str],
    optional: &'static [&'static str],
}

impl PinLayout {
    pub(crate) const fn new(
        family: &'static str,
        maps: &'static [&'static str],
        programs: &'static [&'static str],
    ) -> PinLayout {
        PinLayout {
            family,
            maps,
            programs,
            optional: &[],
        }
    }

    /// The layout with `optional` pins (see [`PinLayout::optional`]).
    const fn with_optional(self, optional: &'static [&'static str]) -> PinLayout {
        PinLayout { optional, ..self }
    }

    /// The family's name (`tunnel`, `decap`, `lwt_redirect`, `tunnel_redirect`, `seg6`,
    /// `service`).
    pub fn family(&self) -> &'static str {
        self.family
    }

    /// The state maps, each pinned under its own name; the first identifies the family.
    pub fn maps(&self) -> &'static [&'static str] {
        self.maps
    }

    /// The programs an owner may pin (a family that loads some of its programs pins those).
    pub fn programs(&self) -> &'static [&'static str] {
        self.programs
    }

    /// The pins an owner makes when it first needs them (a tunnel's `peer_journal`, made by
    /// its first peer change): not part of a complete set (a folder without them is adopted
    /// as it is), and removed with the state maps.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(lwtun::tunnel::PIN_LAYOUT.optional(), ["peer_journal"]);
    /// assert!(lwtun::decap::PIN_LAYOUT.optional().is_empty());
    /// ```
    pub fn optional(&self) -> &'static [&'static str] {
        self.optional
    }

    /// The layouts of the pinned families of lwtun 0.2.0 (tunnel, decap, both redirects,
    /// seg6); [`PinLayout::layouts`] lists every family's.
    pub fn all() -> [&'static PinLayout; 5] {
        [&TUNNEL, &DECAP, &LWT_REDIRECT, &TUNNEL_REDIRECT, &SEG6]
    }

    /// Every layout of lwtun's pinned families, the services' included.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::pins::PinLayout;
    /// assert!(PinLayout::layouts().iter().any(|l| l.family() == "service"));
    /// ```
    pub fn layouts() -> &'static [&'static PinLayout] {
        &[
            &TUNNEL,
            &DECAP,
            &LWT_REDIRECT,
            &TUNNEL_REDIRECT,
            &SEG6,
            &SERVICE,
        ]
    }

    /// The state maps present in `folder`.
    fn present(&self, folder: &Path) -> Vec<&'static str> {
        self.maps
            .iter()
            .copied()
            .filter(|m| folder.join(m).exists())
            .collect()
    }
}

/// A [`Tunnel`](crate::tunnel::Tunnel)'s folder: the peer tables, their counters, the miss
/// counters and the settings, and the encap programs of the last load (its `lwt_xmit` variant
/// and `encap_in`), which `lwtun route add` puts on routes without loading programs. Folders
/// made by lwtun 0.2.0 hold no programs; they are still adopted as they are. The
/// `peer_journal` (see [the peer journal](self#the-peer-journal)) is made by the first peer
/// change of an owner of this version; folders of lwtun 0.2.0 have none until then.
pub const TUNNEL: PinLayout = PinLayout::new(
    "tunnel",
    &["peers_v4", "peers_v6", "peer_stats", "events", "config"],
    &["encap_xmit", "encap_xmit_direct", "encap_in"],
)
.with_optional(&["peer_journal"]);

/// A [`Decap`](crate::decap::Decap)'s folder: its tables, settings and counters (its per-CPU
/// checksum scratch space is not state), and its program.
pub const DECAP: PinLayout = PinLayout::new(
    "decap",
    &[
        "locals",
        "peers_v4",
        "peers_v6",
        "udp_ports",
        "config",
        "counters",
    ],
    &["decap_tc"],
);

/// An [`LwtRedirect`](crate::lwt_redirect::LwtRedirect)'s folder: its rule tables, their
/// counters, its settings and miss counters, and its program.
pub const LWT_REDIRECT: PinLayout = PinLayout::new(
    "lwt_redirect",
    &["rules_v4", "rules_v6", "rule_stats", "config", "events"],
    &["redirect_xmit"],
);

/// A [`TunnelRedirect`](crate::tunnel_redirect::TunnelRedirect)'s folder: its rule tables,
/// their counters, its miss counters, and its tc and `lwt_xmit` programs.
pub const TUNNEL_REDIRECT: PinLayout = PinLayout::new(
    "tunnel_redirect",
    &["rules_v4", "rules_v6", "rule_stats", "events"],
    &["redirect_tc", "redirect_lwt_xmit"],
);

/// An SRv6 function's ([`Seg6End`](crate::seg6::Seg6End)) folder, one function a folder: its
/// rule table, settings, counters and decision scratch map, and its program and twin.
pub const SEG6: PinLayout = PinLayout::new(
    "seg6",
    &["rules", "config", "events", "decision"],
    &[
        "seg6_tag",
        "seg6_tag_twin",
        "seg6_end_x",
        "seg6_end_x_twin",
        "seg6_end_dt6",
        "seg6_end_dt6_twin",
    ],
);

/// A [`Services`](crate::service::Services) folder: the service tries, the outer map of row
/// tables (which holds the row tables themselves), the backends and their counters, the flow
/// table (so that a new owner keeps every established flow where it was), the counters and
/// settings, and the route and director programs.
pub const SERVICE: PinLayout = PinLayout::new(
    "service",
    &[
        "services_v4",
        "services_v6",
        "service_tables",
        "backends",
        "backend_stats",
        "flows",
        "events",
        "config",
    ],
    &["service_xmit", "service_director"],
);

/// Who owns `folder` (holds its lock), without taking it: `None` when nobody does.
///
/// # Errors
///
/// The error opening the folder (NotFound when it does not exist).
///
/// # Examples
///
/// ```no_run
/// if let Some(owner) = lwtun::pins::owner("/sys/fs/bpf/lwtun-demo")? {
///     eprintln!("{owner} owns it: stop it first");
/// }
/// # Ok::<(), lwtun::Error>(())
/// ```
pub fn owner(folder: impl AsRef<Path>) -> Result<Option<Owner>> {
    super::lock::owner(folder.as_ref())
}

/// What a pin folder holds, as [`inspect`] and [`discover`] find it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PinnedFolder {
    /// The folder.
    pub path: PathBuf,
    /// The family whose state maps it holds.
    pub layout: &'static PinLayout,
    /// Whether every state map is there (an incomplete set is cleared by the next load).
    pub complete: bool,
    /// The process that owns it now, if any.
    pub owner: Option<Owner>,
}

/// Which family's pins `folder` holds: `None` for a folder without any family's state maps.
///
/// # Errors
///
/// The error reading the folder's lock state.
///
/// # Examples
///
/// ```no_run
/// match lwtun::pins::inspect("/sys/fs/bpf/lwtun-demo")? {
///     Some(f) => println!("{} pins, complete: {}", f.layout.family(), f.complete),
///     None => println!("no lwtun pins there"),
/// }
/// # Ok::<(), lwtun::Error>(())
/// ```
pub fn inspect(folder: impl AsRef<Path>) -> Result<Option<PinnedFolder>> {
    let folder = folder.as_ref();
    // Of the layouts whose first map is there, the one with the largest share of its maps
    // present, then the most (the two redirect families share `rules_v4`, `rules_v6`,
    // `rule_stats` and `events`; only the LWT one has `config`).
    let best = PinLayout::layouts()
        .iter()
        .copied()
        .filter(|l| folder.join(l.maps[0]).exists())
        .map(|l| (l, l.present(folder).len()))
        .max_by_key(|(l, n)| (*n * 1000 / l.maps.len(), *n));
    let Some((layout, n)) = best else {
        return Ok(None);
    };
    Ok(Some(PinnedFolder {
        path: folder.to_path_buf(),
        layout,
        complete: n == layout.maps.len(),
        owner: owner(folder)?,
    }))
}

/// The pin folders under `root` (itself and two levels down), sorted by path.
///
/// # Errors
///
/// The error reading `root`.
///
/// # Examples
///
/// ```no_run
/// let folders = lwtun::pins::discover("/sys/fs/bpf")?;
/// println!("{} lwtun pin folders", folders.len());
/// # Ok::<(), lwtun::Error>(())
/// ```
pub fn discover(root: impl AsRef<Path>) -> Result<Vec<PinnedFolder>> {
    let root = root.as_ref();
    std::fs::read_dir(root)
        .map_err(|e| Error::io("list pin folders", e).with_object(root.display().to_string()))?;
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        if let Some(found) = inspect(&dir).ok().flatten() {
            out.push(found);
            continue;
        }
        if depth == 2 {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// An owner's pin folder: the lock, what it adopted, what it pinned, and the clean-up when the
/// family drops (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct PinFolder {
    folder: PathBuf,
    layout: &'static PinLayout,
    created: bool,
    /// The folders this load made, the pin folder first and its outermost new parent last:
    /// removed again (when empty) with the folder, so that a failed load of `A/B/C` into a
    /// missing `A` leaves no `A/B`.
    made: Vec<PathBuf>,
    adopted: bool,
    /// Set once the family's load has succeeded: from then on the pins are the family's to
    /// remove on drop (before it, only what this load pinned is removed).
    committed: bool,
    keep: bool,
    maps_pinned: bool,
    programs_pinned: Vec<&'static str>,
    // Last: released after the pins are removed.
    _lock: PinLock,
}

impl PinFolder {
    /// Steps 1 to 4 of a load: makes the folder when missing, takes its lock, checks that its
    /// pins are the family's and clears an incomplete set. `op` names the load in errors.
    pub(crate) fn open(folder: PathBuf, layout: &'static PinLayout, op: &str) -> Result<PinFolder> {
        super::bpffs::require(&folder, op)?;
        let object = folder.display().to_string();
        let made = missing_dirs(&folder);
        let created = !made.is_empty();
        if created {
            if let Err(e) = std::fs::create_dir_all(&folder) {
                remove_dirs(&made);
                return Err(Error::io(op, e).with_object(object.clone()));
            }
        }
        let undo = |e: Error| {
            remove_dirs(&made);
            e
        };
        let lock = PinLock::acquire(&folder).map_err(undo)?;
        let complete = match checked_set(&folder, layout, op) {
            Ok(complete) => complete,
            Err(e) => {
                drop(lock);
                return Err(undo(e));
            }
        };
        Ok(PinFolder {
            folder,
            layout,
            created,
            made,
            adopted: complete,
            committed: false,
            keep: false,
            maps_pinned: false,
            programs_pinned: Vec::new(),
            _lock: lock,
        })
    }

    /// The folder.
    pub(crate) fn path(&self) -> &Path {
        &self.folder
    }

    /// Whether the folder held the family's complete set of maps, which the family reuses.
    pub(crate) fn adopted(&self) -> bool {
        self.adopted
    }

    /// An adopted state map, before the object is loaded (to read the size it was made with).
    pub(crate) fn adopted_map(&self, name: &str, op: &str) -> Result<libbpf_rs::MapHandle> {
        let path = self.folder.join(name);
        libbpf_rs::MapHandle::from_pinned_path(&path)
            .map_err(|e| Error::bpf(op, e).with_object(path.display().to_string()))
    }

    /// Step 5: makes the state maps of `open` reuse the pinned ones, when adopting; the ABI
    /// check of every family: each pinned map must have the type, key size, value size and
    /// flags the object declares (a look-alike map of the same name, or another lwtun version's
    /// layout, is refused as InvalidInput saying what differs, not adopted and misread: libbpf
    /// would take the pinned map's definition over the object's). Its size is state, which the
    /// family reads from the adopted map.
    pub(crate) fn reuse_maps(&self, open: &mut OpenObject) -> Result<()> {
        if !self.adopted {
            return Ok(());
        }
        for mut map in open.maps_mut() {
            let name = map.name().to_string_lossy().into_owned();
            if !self.layout.maps.contains(&name.as_str()) {
                continue;
            }
            let path = self.folder.join(&name);
            let op = format!("adopt pinned {} map", self.layout.family);
            let pinned = libbpf_rs::MapHandle::from_pinned_path(&path)
                .map_err(|e| Error::bpf(op.clone(), e).with_object(path.display().to_string()))?;
            let flags = libbpf_rs::MapInfo::new(pinned.as_fd())
                .map_err(|e| Error::bpf(op.clone(), e).with_object(path.display().to_string()))?
                .info
                .map_flags;
            let differences = abi_differences(
                (
                    pinned.map_type(),
                    pinned.key_size(),
                    pinned.value_size(),
                    flags,
                ),
                (
                    map.map_type(),
                    map.key_size(),
                    map.value_size(),
                    map.map_flags(),
                ),
            );
            if !differences.is_empty() {
                return Err(Error::invalid_input(
                    op,
                    format!(
                        "{} is not the map this lwtun's {} {name} is: {}; the folder holds \
                         another program's pins or another lwtun version's; unload it with the \
                         program that made it, or remove the folder (`rm -r {}`)",
                        path.display(),
                        self.layout.family,
                        differences.join(", "),
                        self.folder.display()
                    ),
                )
                .with_object(path.display().to_string()));
            }
            map.reuse_pinned_map(&path).map_err(|e| {
                Error::bpf(format!("adopt pinned {} map", self.layout.family), e)
                    .with_object(path.display().to_string())
            })?;
        }
        Ok(())
    }

    /// Step 6: pins the state maps of `object` (unless adopted: they are pinned already); a set
    /// pinned halfway is unpinned again on error.
    pub(crate) fn pin_maps(&mut self, object: &mut Object, op: &str) -> Result<()> {
        if self.adopted {
            return Ok(());
        }
        let mut pinned: Vec<PathBuf> = Vec::new();
        for name in self.layout.maps {
            let path = self.folder.join(name);
            let result = match object.maps_mut().find(|m| m.name() == *name) {
                Some(mut map) => map
                    .pin(&path)
                    .map_err(|e| Error::bpf(op, e).with_object(path.display().to_string())),
                None => Err(Error::not_found(op, format!("map {name}"))),
            };
            if let Err(e) = result {
                for p in &pinned {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
            pinned.push(path);
        }
        self.maps_pinned = true;
        Ok(())
    }

    /// Pins program `name` (one of the layout's) in place of a previous owner's.
    pub(crate) fn pin_program(
        &mut self,
        name: &'static str,
        fd: BorrowedFd<'_>,
        op: &str,
    ) -> Result<()> {
        debug_assert!(
            self.layout.programs.contains(&name),
            "{name} not in the layout"
        );
        let path = self.folder.join(name);
        let _ = std::fs::remove_file(&path);
        obj_pin(fd, &path).map_err(|e| Error::io(op, e).with_object(path.display().to_string()))?;
        if !self.programs_pinned.contains(&name) {
            self.programs_pinned.push(name);
        }
        Ok(())
    }

    /// The family's load succeeded: from now on dropping removes all of its pins (unless kept).
    pub(crate) fn commit(&mut self) {
        self.committed = true;
    }

    /// Leaves the pins in place when the family drops.
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }

    /// Whether the pins stay when the family drops ([`PinFolder::keep`]).
    pub(crate) fn kept(&self) -> bool {
        self.keep
    }
}

/// What differs between a pinned map `(type, key size, value size, flags)` and the one this
/// lwtun declares, in words (empty when they agree).
fn abi_differences(
    pinned: (libbpf_rs::MapType, u32, u32, u32),
    ours: (libbpf_rs::MapType, u32, u32, u32),
) -> Vec<String> {
    let mut out = Vec::new();
    if pinned.0 != ours.0 {
        out.push(format!("type {:?} (expected {:?})", pinned.0, ours.0));
    }
    if pinned.1 != ours.1 {
        out.push(format!("{}-byte keys (expected {})", pinned.1, ours.1));
    }
    if pinned.2 != ours.2 {
        out.push(format!("{}-byte values (expected {})", pinned.2, ours.2));
    }
    if pinned.3 != ours.3 {
        out.push(format!("flags {:#x} (expected {:#x})", pinned.3, ours.3));
    }
    out
}

/// Steps 3 and 4 of a load, under the lock: every pin the layout names in `folder` must be a
/// map of that name; a partial set is removed. Whether the set is complete (to adopt).
fn checked_set(folder: &Path, layout: &PinLayout, op: &str) -> Result<bool> {
    let present = layout.present(folder);
    for name in &present {
        let path = folder.join(name);
        let map = libbpf_rs::MapHandle::from_pinned_path(&path).map_err(|e| {
            Error::bpf(op, e)
                .with_hint("the folder holds another program's pins: pin elsewhere or remove them")
                .with_object(path.display().to_string())
        })?;
        if map.name().to_str() != Some(*name) {
            return Err(Error::invalid_input(
                op,
                format!(
                    "{} is map {:?}, not lwtun's {name}: the folder holds another program's \
                     pins; pin the {} elsewhere or remove them",
                    path.display(),
                    map.name(),
                    layout.family
                ),
            ));
        }
    }
    let complete = present.len() == layout.maps.len();
    if !complete {
        for name in &present {
            let path = folder.join(name);
            std::fs::remove_file(&path).map_err(|e| {
                Error::io("clear an incomplete set of pins", e)
                    .with_object(path.display().to_string())
            })?;
        }
    }
    Ok(complete)
}

impl Drop for PinFolder {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if self.committed || self.maps_pinned {
            for name in self.layout.maps.iter().chain(self.layout.optional) {
                let _ = std::fs::remove_file(self.folder.join(name));
            }
        }
        // A committed owner removes every program pin of its layout (a previous owner's of a
        // program this one did not load too); a failed load only what it pinned.
        let programs: Vec<&str> = if self.committed {
            self.layout.programs.to_vec()
        } else {
            self.programs_pinned.clone()
        };
        for name in programs {
            let _ = std::fs::remove_file(self.folder.join(name));
        }
        if self.created || self.committed {
            // Only an empty folder goes (rmdir): a folder that holds anything else stays.
            let _ = std::fs::remove_dir(&self.folder);
            // And the parents this owner made, while they are empty.
            remove_dirs(&self.made);
        }
    }
}
/// Checks where a single object (a link, a program) is to be pinned: its folder exists and is
/// on bpffs, and nothing is pinned at `path` yet. Nothing is made.
pub(crate) fn check_pin_path(op: &str, path: &Path) -> Result<()> {
    let object = path.display().to_string();
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !folder.is_dir() {
        return Err(Error::not_found(
            op,
            format!(
                "pin folder {} (make it first: `mkdir -p {}`)",
                folder.display(),
                folder.display()
            ),
        )
        .with_object(object));
    }
    super::bpffs::require(path, op)?;
    if path.exists() {
        return Err(Error::other(
            crate::error::ErrorKind::Exists,
            op,
            format!(
                "{} is pinned already: remove it first (`rm {}`) or pin elsewhere",
                path.display(),
                path.display()
            ),
        )
        .with_object(object));
    }
    Ok(())
}

/// The folders `create_dir_all(folder)` would make: `folder` and each missing parent, innermost
/// first.
fn missing_dirs(folder: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dir = Some(folder);
    while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        out.push(d.to_path_buf());
        dir = d.parent();
    }
    out
}

/// Removes `dirs` (innermost first) while each is empty; stops at the first that is not (it
/// holds something else's, and so do its parents).
fn remove_dirs(dirs: &[PathBuf]) {
    for d in dirs {
        if std::fs::remove_dir(d).is_err() && d.exists() {
            break;
        }
    }
}

/// Pins a program, map or link fd at `path` (`BPF_OBJ_PIN`); InvalidInput for a path with a
/// NUL byte.
pub(crate) fn obj_pin(fd: BorrowedFd<'_>, path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid fd and a NUL-terminated path that outlives the call.
    let rc = unsafe {
        libbpf_rs::libbpf_sys::bpf_obj_pin(std::os::fd::AsRawFd::as_raw_fd(&fd), c.as_ptr())
    };
    if rc < 0 {
        return Err(std::io::Error::from_raw_os_error(-rc));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A load into `A/B/C` under a missing `A` makes three folders and, when it fails, removes
    /// all three; a folder that holds something else stays, and so do its parents.
    #[test]
    fn the_folders_a_load_made_go_again() {
        let top = std::env::temp_dir().join(format!("lwtun-pins-made-{}", std::process::id()));
        let folder = top.join("b").join("c");
        let made = missing_dirs(&folder);
        assert_eq!(made, [folder.clone(), top.join("b"), top.clone()]);
        std::fs::create_dir_all(&folder).unwrap();
        remove_dirs(&made);
        assert!(!top.exists());

        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(top.join("b").join("other"), b"x").unwrap();
        remove_dirs(&made);
        assert!(!folder.exists());
        assert!(top.join("b").join("other").exists(), "another's file stays");
        std::fs::remove_dir_all(&top).unwrap();
        assert!(missing_dirs(Path::new("/")).is_empty());
    }

    #[test]
    fn abi_differences_name_each_field() {
        use libbpf_rs::MapType::{Array, Hash};
        assert!(abi_differences((Array, 4, 8, 0), (Array, 4, 8, 0)).is_empty());
        let d = abi_differences((Hash, 3, 5, 0x80), (Array, 4, 8, 0));
        assert_eq!(
            d,
            [
                "type Hash (expected Array)",
                "3-byte keys (expected 4)",
                "5-byte values (expected 8)",
                "flags 0x80 (expected 0x0)"
            ]
        );
    }
}
