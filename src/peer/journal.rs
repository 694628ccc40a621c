//! The peer journal: what lwtun's writers did to a pinned tunnel's peer tables, for readers in
//! other processes ([`PeerJournal`]).
//!
//! A BPF map update notifies nobody, so every write through lwtun ([`PeerTable`]'s insert,
//! replace, remove and batches, whichever program calls them: a [`Tunnel`], the `lwtun`
//! command's [`TunnelTables`], the fleet agent) appends one record per changed peer to a ring
//! pinned beside the tables, `FOLDER/peer_journal`. Its layout and locking are part of the pin
//! protocol: see [its section there](crate::pins#the-peer-journal).
//!
//! [`PeerTable`]: super::PeerTable
//! [`Tunnel`]: crate::tunnel::Tunnel
//! [`TunnelTables`]: crate::tunnel::TunnelTables

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnetwork::IpNetwork;
use libbpf_rs::{MapCore, MapHandle, MapType};

use super::{EncapPeer, PeerTable, LWTUN_MAGIC};
use crate::abi::{self, Pod};
use crate::error::{Error, ErrorKind, Result};
use crate::family::pins::Owner;
use crate::skel::lwt_encap::types::lwtun_peer;

/// The journal's pin name in a tunnel's folder.
pub(crate) const PIN_NAME: &str = "peer_journal";
/// Records a journal holds before the oldest is overwritten (2.6 MB of memory): a batch of
/// 10k peers fits whole.
pub(crate) const CAPACITY: u32 = 16_384;
const VERSION: u32 = 1;
const RECORD_SIZE: usize = 160;
const OP_ADDED: u32 = 1;
const OP_REMOVED: u32 = 2;
const OP_CHANGED: u32 = 3;

/// One journal record, as the pin protocol lays it out (see the module docs).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct JournalRecord {
    seq: u64,
    time_ns: u64,
    op: u32,
    pid: u32,
    family: u8,
    prefix_len: u8,
    _pad: [u8; 6],
    addr: [u8; 16],
    comm: [u8; 16],
    old: [u8; 48],
    new: [u8; 48],
}

const _: () = assert!(std::mem::size_of::<JournalRecord>() == RECORD_SIZE);

impl Default for JournalRecord {
    fn default() -> Self {
        JournalRecord {
            seq: 0,
            time_ns: 0,
            op: 0,
            pid: 0,
            family: 0,
            prefix_len: 0,
            _pad: [0; 6],
            addr: [0; 16],
            comm: [0; 16],
            old: [0; 48],
            new: [0; 48],
        }
    }
}
const _: () = assert!(std::mem::size_of::<lwtun_peer>() == 48);

// SAFETY: integers and byte arrays, padding explicit (160 bytes, asserted above).
unsafe impl Pod for JournalRecord {}

/// The journal's header (entry 0), as laid out in the module docs; `head` and `writing` are
/// read and written atomically in place.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Header {
    magic: u32,
    version: u32,
    capacity: u32,
    record_size: u32,
    head: u64,
    writing: u64,
}
const HEAD_OFFSET: usize = 16;
/// Records a writer appends with map updates before it maps the ring.
const WHOLE_AFTER: usize = 64;
const WRITING_OFFSET: usize = 24;

impl JournalRecord {
    /// A record of `op` on `prefix` (the sequence number and time are set on append).
    fn new(op: u32, prefix: IpNetwork, old: Option<&lwtun_peer>, new: Option<&lwtun_peer>) -> Self {
        let mut r = JournalRecord {
            op,
            prefix_len: prefix.prefix(),
            ..Default::default()
        };
        match prefix.network() {
            IpAddr::V4(a) => {
                r.family = 4;
                r.addr[..4].copy_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                r.family = 6;
                r.addr = a.octets();
            }
        }
        if let Some(old) = old {
            r.old.copy_from_slice(abi::as_bytes(old));
        }
        if let Some(new) = new {
            r.new.copy_from_slice(abi::as_bytes(new));
        }
        r
    }

    pub(crate) fn added(prefix: IpNetwork, new: &lwtun_peer) -> Self {
        Self::new(OP_ADDED, prefix, None, Some(new))
    }

    pub(crate) fn removed(prefix: IpNetwork, old: &lwtun_peer) -> Self {
        Self::new(OP_REMOVED, prefix, Some(old), None)
    }

    pub(crate) fn changed(prefix: IpNetwork, old: &lwtun_peer, new: &lwtun_peer) -> Self {
        Self::new(OP_CHANGED, prefix, Some(old), Some(new))
    }

    fn prefix(&self) -> Option<IpNetwork> {
        let addr = match self.family {
            4 => IpAddr::from(<[u8; 4]>::try_from(&self.addr[..4]).ok()?),
            6 => IpAddr::from(self.addr),
            _ => return None,
        };
        IpNetwork::new(addr, self.prefix_len).ok()
    }

    fn peer(bytes: &[u8; 48]) -> Option<EncapPeer> {
        EncapPeer::from_abi(&abi::from_bytes::<lwtun_peer>(bytes)?)
    }

    /// The peer the record leaves at its prefix (`None` for a removal); `Err` for a record
    /// this lwtun cannot read.
    fn after(&self) -> std::result::Result<Option<EncapPeer>, ()> {
        match self.op {
            OP_REMOVED => Ok(None),
            OP_ADDED | OP_CHANGED => Self::peer(&self.new).map(Some).ok_or(()),
            _ => Err(()),
        }
    }

    fn origin(&self) -> ChangeOrigin {
        let end = self.comm.iter().position(|b| *b == 0).unwrap_or(16);
        let command = String::from_utf8_lossy(&self.comm[..end]).into_owned();
        ChangeOrigin {
            seq: self.seq,
            writer: Owner {
                pid: self.pid,
                command: (!command.is_empty()).then_some(command),
            },
            time: UNIX_EPOCH + Duration::from_nanos(self.time_ns),
        }
    }
}

/// The journal map, mapped into this process: whole for a reader; for a writer first its
/// header page only, the records written with map updates (mapping the 2.6 MB ring costs a
/// command 0.3 ms, more than a few updates), and whole once it has appended
/// [`WHOLE_AFTER`] records (a batch, or a long-lived owner), from then on written in place.
struct Ring {
    map: MapHandle,
    base: *mut u8,
    len: usize,
    capacity: u32,
    /// Records this writer appended.
    appended: usize,
    /// The pin's identity when opened (a journal pinned anew in its place has another).
    pin: Option<PinId>,
}

// SAFETY: the mapping is shared memory owned by the value; through &self it is only read (the
// header's counters atomically); writes need &mut self.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the mapping this value made, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

impl Ring {
    /// Maps `map` (a writer: its header page, writable; a reader: all of it, read-only),
    /// checking it is a journal.
    fn map(map: MapHandle, path: &Path, writable: bool, op: &str) -> Result<Ring> {
        let object = path.display().to_string();
        let flags = libbpf_rs::MapInfo::new(map.as_fd())
            .map_err(|e| Error::bpf(op, e).with_object(object.clone()))?
            .info
            .map_flags;
        if map.map_type() != MapType::Array
            || map.value_size() as usize != RECORD_SIZE
            || map.max_entries() < 2
            || flags & libbpf_rs::libbpf_sys::BPF_F_MMAPABLE == 0
        {
            return Err(not_a_journal(op, path));
        }
        let page = page_size();
        let len = match writable {
            true => page,
            false => (RECORD_SIZE * map.max_entries() as usize).div_ceil(page) * page,
        };
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a fresh shared mapping of the map's fd, at most the size the kernel allows.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                map.as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Error::io(op, std::io::Error::last_os_error()).with_object(object));
        }
        let pin = PinId::of(path);
        let mut ring = Ring {
            capacity: map.max_entries() - 1,
            appended: 0,
            map,
            base: base.cast(),
            len,
            pin,
        };
        let h = ring.header();
        if h.magic == 0 && writable {
            // Made but not yet stamped (only by `create`, before it pins).
            return Ok(ring);
        }
        if h.magic != LWTUN_MAGIC
            || h.version != VERSION
            || h.record_size as usize != RECORD_SIZE
            || h.capacity != ring.capacity
        {
            return Err(not_a_journal(op, path));
        }
        ring.capacity = h.capacity;
        Ok(ring)
    }

    /// Opens the journal pinned at `path`; `None` when there is none.
    fn open(path: &Path, writable: bool, op: &str) -> Result<Option<Ring>> {
        if !path.exists() {
            return Ok(None);
        }
        let map = MapHandle::from_pinned_path(path)
            .map_err(|e| Error::bpf(op, e).with_object(path.display().to_string()))?;
        Ring::map(map, path, writable, op).map(Some)
    }

    /// Makes a journal, stamps its header and pins it at `path` (a journal pinned there
    /// meanwhile is opened instead).
    fn create(path: &Path, op: &str) -> Result<Ring> {
        let object = path.display().to_string();
        let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
            map_flags: libbpf_rs::libbpf_sys::BPF_F_MMAPABLE,
            ..Default::default()
        };
        let map = MapHandle::create(
            MapType::Array,
            Some(PIN_NAME),
            4,
            RECORD_SIZE as u32,
            CAPACITY + 1,
            &opts,
        )
        .map_err(|e| {
            Error::bpf(op, e)
                .with_object(object.clone())
                .with_hint("the peer journal needs an mmap-able BPF array (Linux 5.5+)")
        })?;
        let mut ring = Ring::map(map, path, true, op)?;
        let header = Header {
            magic: LWTUN_MAGIC,
            version: VERSION,
            capacity: CAPACITY,
            record_size: RECORD_SIZE as u32,
            head: 0,
            writing: 0,
        };
        // SAFETY: entry 0 of our writable mapping, nobody else's yet (not pinned).
        unsafe { std::ptr::write_volatile(ring.base.cast::<Header>(), header) };
        match crate::family::pins::obj_pin(ring.map.as_fd(), path) {
            Ok(()) => {
                ring.pin = PinId::of(path);
                Ok(ring)
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ring::open(path, true, op)?
                .ok_or_else(|| Error::not_found(op, format!("journal {}", path.display()))),
            Err(e) => Err(Error::io(op, e).with_object(object)),
        }
    }

    fn header(&self) -> Header {
        // SAFETY: entry 0 lies in the mapping; a racy read of the fixed fields is harmless.
        unsafe { std::ptr::read_volatile(self.base.cast::<Header>()) }
    }

    fn counter(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: 8-aligned (the mapping is page-aligned) u64 inside entry 0, alive as `self`.
        unsafe { &*self.base.add(offset).cast::<AtomicU64>() }
    }

    /// The map entry of record `seq`.
    fn index(&self, seq: u64) -> u32 {
        1 + ((seq - 1) % u64::from(self.capacity)) as u32
    }

    /// Whether the whole map is mapped (a reader's, or a writer's after [`WHOLE_AFTER`]).
    fn whole(&self) -> bool {
        self.len >= RECORD_SIZE * (self.capacity as usize + 1)
    }

    /// Record `seq`'s entry in a mapping of the whole map.
    fn entry(&self, seq: u64) -> *mut JournalRecord {
        debug_assert!(self.whole());
        // SAFETY: index <= capacity: inside a mapping of the whole map.
        unsafe { self.base.add(self.index(seq) as usize * RECORD_SIZE).cast() }
    }

    /// A writer's mapping of the header page replaced by a writable one of the whole map;
    /// false (and the header page kept) when it cannot be had.
    fn map_whole(&mut self) -> bool {
        let page = page_size();
        let len = (RECORD_SIZE * (self.capacity as usize + 1)).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's fd, of the size the kernel allows.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.map.as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return false;
        }
        // SAFETY: the mapping this value made; nothing borrows it (we hold &mut self).
        unsafe { libc::munmap(self.base.cast(), self.len) };
        self.base = base.cast();
        self.len = len;
        true
    }

    /// Appends `n` records, the `i`th from `record(i)`, stamped with sequence numbers, `time`,
    /// `pid` and `comm`: stored in place once the ring is mapped whole, else with one map
    /// update (`BPF_MAP_UPDATE_BATCH` for several); of a batch longer than the ring only the
    /// last `capacity` are written.
    fn append(
        &mut self,
        n: usize,
        time_ns: u64,
        pid: u32,
        comm: [u8; 16],
        mut record: impl FnMut(usize) -> JournalRecord,
    ) {
        if n == 0 {
            return;
        }
        let head = self.counter(HEAD_OFFSET).load(Ordering::Relaxed);
        let last = head + n as u64;
        self.counter(WRITING_OFFSET).store(last, Ordering::Relaxed);
        fence(Ordering::Release);
        let skip = n.saturating_sub(self.capacity as usize);
        self.appended += n;
        if !self.whole() && self.appended >= WHOLE_AFTER {
            self.map_whole();
        }
        if self.whole() {
            for i in skip..n {
                let mut r = record(i);
                r.seq = head + 1 + i as u64;
                r.time_ns = time_ns;
                r.pid = pid;
                r.comm = comm;
                // SAFETY: an entry of our writable mapping of the whole map; a reader copying
                // it meanwhile finds the copy torn by `writing`.
                unsafe { std::ptr::write_volatile(self.entry(r.seq), r) };
            }
            self.counter(HEAD_OFFSET).store(last, Ordering::Release);
            return;
        }
        let mut keys = Vec::with_capacity((n - skip) * 4);
        let mut values = Vec::with_capacity((n - skip) * RECORD_SIZE);
        for i in skip..n {
            let mut r = record(i);
            r.seq = head + 1 + i as u64;
            r.time_ns = time_ns;
            r.pid = pid;
            r.comm = comm;
            keys.extend_from_slice(&self.index(r.seq).to_ne_bytes());
            values.extend_from_slice(abi::as_bytes(&r));
        }
        let flags = libbpf_rs::MapFlags::ANY;
        let written = match n - skip {
            1 => self.map.update(&keys, &values, flags),
            count => self
                .map
                .update_batch(&keys, &values, count as u32, flags, flags),
        };
        // An array update of an index in range does not fail short of a fault. Should it, the
        // head still moves on: the entries left behind do not carry their sequence numbers, so
        // a reader takes them for overwritten and resyncs rather than missing the changes.
        let _ = written;
        self.counter(HEAD_OFFSET).store(last, Ordering::Release);
    }

    /// The records after `after`: `Ok` with them in order, `Err(missed)` when some of them
    /// were overwritten before they could be read (`missed` at least that many).
    fn read_after(&self, after: u64) -> std::result::Result<Vec<JournalRecord>, u64> {
        let head = self.counter(HEAD_OFFSET).load(Ordering::Acquire);
        if head <= after {
            return Ok(Vec::new());
        }
        let cap = u64::from(self.capacity);
        let oldest = head.saturating_sub(cap) + 1;
        if after + 1 < oldest {
            return Err(oldest - after - 1);
        }
        let out: Vec<JournalRecord> = (after + 1..=head)
            // SAFETY: an entry of the mapping; the copy is checked against `writing` below.
            .map(|s| unsafe { std::ptr::read_volatile(self.entry(s)) })
            .collect();
        fence(Ordering::Acquire);
        let writing = self.counter(WRITING_OFFSET).load(Ordering::Relaxed);
        let intact = |r: &JournalRecord, s: u64| r.seq == s && s + cap > writing;
        match out.iter().zip(after + 1..).find(|(r, s)| !intact(r, *s)) {
            Some((_, s)) => Err(writing.saturating_sub(cap).max(s) - after),
            None => Ok(out),
        }
    }

    fn head(&self) -> u64 {
        self.counter(HEAD_OFFSET).load(Ordering::Acquire)
    }
}

/// What tells a pin from another pinned in its place later: its inode number, which bpffs may
/// hand out again, and the time it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PinId {
    ino: u64,
    made: (i64, i64),
}

impl PinId {
    /// The identity of what is pinned at `path`; `None` when nothing is.
    fn of(path: &Path) -> Option<PinId> {
        let m = std::fs::metadata(path).ok()?;
        Some(PinId {
            ino: m.ino(),
            made: (m.ctime(), m.ctime_nsec()),
        })
    }
}

fn not_a_journal(op: &str, path: &Path) -> Error {
    Error::invalid_input(
        op,
        format!(
            "{} is not an lwtun peer journal this version reads (an mmap-able array of \
             {RECORD_SIZE}-byte records with lwtun's header): remove it (`rm {}`), the next \
             write makes a new one",
            path.display(),
            path.display()
        ),
    )
    .with_object(path.display().to_string())
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096).max(1)
}

/// The writer's side, kept by a [`PeerTable`] of pinned tables: made (or opened) before the
/// first change, appended to after each.
#[derive(Debug)]
pub(crate) struct Sink {
    path: PathBuf,
    ring: Option<Ring>,
    pid: u32,
    comm: [u8; 16],
}

impl Sink {
    /// The journal of the tables pinned in `folder` (opened on the first change).
    pub(crate) fn new(folder: &Path) -> Sink {
        let mut comm = [0u8; 16];
        if let Ok(c) = std::fs::read_to_string("/proc/self/comm") {
            let c = c.trim_end().as_bytes();
            let n = c.len().min(15);
            comm[..n].copy_from_slice(&c[..n]);
        }
        Sink {
            path: folder.join(PIN_NAME),
            ring: None,
            pid: std::process::id(),
            comm,
        }
    }

    /// Opens the journal, making it when the folder has none (a folder of lwtun 0.2.0): called
    /// before a change, so that a journal that cannot be had refuses the change.
    pub(crate) fn ready(&mut self, op: &str) -> Result<()> {
        if self.ring.is_none() {
            self.ring = Some(match Ring::open(&self.path, true, op)? {
                Some(ring) => ring,
                None => Ring::create(&self.path, op)?,
            });
        }
        Ok(())
    }

    /// Appends `n` records (see [`Ring::append`]); nothing when not [`ready`](Self::ready).
    pub(crate) fn append(&mut self, n: usize, record: impl FnMut(usize) -> JournalRecord) {
        let time_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        if let Some(ring) = &mut self.ring {
            ring.append(n, time_ns, self.pid, self.comm, record);
        }
    }
}

/// Who made a journaled change, and when.
///
/// # Examples
///
/// ```no_run
/// use lwtun::peer::{PeerChange, PeerJournal};
///
/// let mut journal = PeerJournal::open("/sys/fs/bpf/lwtun/t0")?;
/// for change in journal.poll()? {
///     if let Some(origin) = change.origin() {
///         println!("#{} by {} at {:?}", origin.seq, origin.writer, origin.time);
///     }
/// }
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChangeOrigin {
    /// The record's sequence number in the folder's journal (1, 2, …).
    pub seq: u64,
    /// The process that wrote it (it owned the folder then) and its command name.
    pub writer: Owner,
    /// When it was written (`CLOCK_REALTIME`; a batch's records share one time).
    pub time: SystemTime,
}

/// Why a [`PeerJournal`] resynced: it read the tables whole and reports the difference with
/// what it knew as synthesized changes, without [`ChangeOrigin`].
///
/// # Examples
///
/// ```
/// use lwtun::peer::ResyncReason;
///
/// let reason = ResyncReason::Overflow { missed: 12 };
/// assert!(matches!(reason, ResyncReason::Overflow { missed } if missed > 0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResyncReason {
    /// The reader fell behind by more than the journal holds: `missed` records were
    /// overwritten before it read them.
    Overflow {
        /// How many records it lost (at least).
        missed: u64,
    },
    /// The journal was replaced (the tunnel was unloaded and pinned anew in the folder).
    Replaced,
    /// [`PeerJournal::verify`] found the tables differ from what the journal said: someone
    /// changed them without lwtun (`bpftool map update`, an lwtun older than 0.3).
    Untracked,
}

/// One change to a pinned tunnel's peer tables, as a [`PeerJournal`] reports it.
///
/// The old peer is the one the reader knew (the writer's old one, unless the reader missed
/// something); `origin` is `None` for changes the reader synthesized after a
/// [`PeerChange::Resync`].
///
/// # Examples
///
/// ```no_run
/// use lwtun::peer::{PeerChange, PeerJournal};
///
/// let mut journal = PeerJournal::open("/sys/fs/bpf/lwtun/t0")?;
/// for change in journal.poll()? {
///     match change {
///         PeerChange::Resync(reason) => println!("resynced: {reason:?}"),
///         PeerChange::Added { prefix, peer, .. } => println!("+ {prefix} via {}", peer.remote),
///         PeerChange::Removed { prefix, .. } => println!("- {prefix}"),
///         PeerChange::Changed { prefix, new, .. } => println!("~ {prefix} via {}", new.remote),
///         _ => {}
///     }
/// }
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerChange {
    /// The reader lost track and read the tables whole; the changes that follow, up to the
    /// next journaled one, are the difference it found.
    Resync(ResyncReason),
    /// A peer for a prefix that had none.
    Added {
        /// The inner destination prefix.
        prefix: IpNetwork,
        /// Its peer.
        peer: EncapPeer,
        /// Who added it, when journaled.
        origin: Option<ChangeOrigin>,
    },
    /// A prefix's peer removed.
    Removed {
        /// The inner destination prefix.
        prefix: IpNetwork,
        /// The peer it had.
        peer: EncapPeer,
        /// Who removed it, when journaled.
        origin: Option<ChangeOrigin>,
    },
    /// A prefix's peer replaced by another.
    Changed {
        /// The inner destination prefix.
        prefix: IpNetwork,
        /// The peer it had.
        old: EncapPeer,
        /// The peer it has now.
        new: EncapPeer,
        /// Who changed it, when journaled.
        origin: Option<ChangeOrigin>,
    },
}

impl PeerChange {
    /// The prefix changed (`None` for a resync marker).
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::peer::{PeerChange, ResyncReason};
    ///
    /// assert_eq!(PeerChange::Resync(ResyncReason::Replaced).prefix(), None);
    /// ```
    pub fn prefix(&self) -> Option<IpNetwork> {
        match self {
            PeerChange::Resync(_) => None,
            PeerChange::Added { prefix, .. }
            | PeerChange::Removed { prefix, .. }
            | PeerChange::Changed { prefix, .. } => Some(*prefix),
        }
    }

    /// Who made the change and when (`None` for a resync and what it synthesized).
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::peer::{PeerChange, ResyncReason};
    ///
    /// assert!(PeerChange::Resync(ResyncReason::Untracked).origin().is_none());
    /// ```
    pub fn origin(&self) -> Option<&ChangeOrigin> {
        match self {
            PeerChange::Resync(_) => None,
            PeerChange::Added { origin, .. }
            | PeerChange::Removed { origin, .. }
            | PeerChange::Changed { origin, .. } => origin.as_ref(),
        }
    }

    /// The change that takes a prefix from `old` to `new` (`None` when they are the same).
    fn between(
        prefix: IpNetwork,
        old: Option<EncapPeer>,
        new: Option<EncapPeer>,
        origin: Option<ChangeOrigin>,
    ) -> Option<PeerChange> {
        Some(match (old, new) {
            (None, Some(peer)) => PeerChange::Added {
                prefix,
                peer,
                origin,
            },
            (Some(peer), None) => PeerChange::Removed {
                prefix,
                peer,
                origin,
            },
            (Some(old), Some(new)) if old != new => PeerChange::Changed {
                prefix,
                old,
                new,
                origin,
            },
            _ => return None,
        })
    }
}

/// A reader of the changes lwtun's writers make to a pinned tunnel's peer tables (see the
/// [journal's layout](crate::pins#the-peer-journal)), from any process, without the folder's
/// lock and without disturbing the owner.
///
/// It keeps its own view of the tables: read whole when it opens, then brought forward by
/// each [`poll`](Self::poll). A reader that falls more than the journal's 16384 records behind,
/// or finds the journal replaced, reads the tables whole again and reports
/// [`PeerChange::Resync`] followed by the difference. Holding it costs one mapped map (no file
/// descriptor of the peer tables); [`poll`](Self::poll) costs one `stat` and shared-memory
/// reads when nothing changed (2.7 µs here; `benches/peer_journal.rs`). It is `Send + Sync`.
///
/// Kernel: Linux 5.5+ (mmap-able arrays).
///
/// # Examples
///
/// ```no_run
/// use lwtun::peer::PeerJournal;
///
/// let mut journal = PeerJournal::open("/sys/fs/bpf/lwtun/t0")?;
/// loop {
///     for change in journal.poll()? {
///         println!("{change:?}");
///     }
///     std::thread::sleep(std::time::Duration::from_millis(100));
/// }
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug)]
pub struct PeerJournal {
    folder: PathBuf,
    path: PathBuf,
    ring: Option<Ring>,
    /// The last sequence number read.
    seen: u64,
    view: BTreeMap<IpNetwork, EncapPeer>,
    /// A resync whose dump failed: the next poll starts with it again, so what it was to
    /// report is not lost.
    resync_due: Option<ResyncReason>,
}

impl PeerJournal {
    /// Opens the journal of the tunnel pinned in `folder` and reads its tables: the first
    /// [`poll`](Self::poll) reports what changed after this. A folder without a journal yet
    /// (pinned by lwtun 0.2.0, or never written) is read from the first record its next writer
    /// appends. A change being written while the reader opens may show in its first view
    /// rather than in a poll.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when the folder holds no tunnel; [`ErrorKind::InvalidInput`]
    /// when its `peer_journal` is not a journal this lwtun reads; the kernel's errors.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let journal = lwtun::peer::PeerJournal::open("/sys/fs/bpf/lwtun/t0")?;
    /// println!("{} peers now", journal.peers().len());
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn open(folder: impl AsRef<Path>) -> Result<Self> {
        let folder = folder.as_ref();
        let path = folder.join(PIN_NAME);
        let ring = Ring::open(&path, false, "open peer journal")?;
        let seen = ring.as_ref().map_or(0, Ring::head);
        let mut journal = PeerJournal {
            folder: folder.to_path_buf(),
            path,
            ring,
            seen,
            view: BTreeMap::new(),
            resync_due: None,
        };
        journal.view = journal.dump()?;
        Ok(journal)
    }

    /// The pin folder.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let journal = lwtun::peer::PeerJournal::open("/sys/fs/bpf/lwtun/t0")?;
    /// assert_eq!(journal.folder(), std::path::Path::new("/sys/fs/bpf/lwtun/t0"));
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// The peers as the reader knows them after its last poll.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let mut journal = lwtun::peer::PeerJournal::open("/sys/fs/bpf/lwtun/t0")?;
    /// journal.poll()?;
    /// for (prefix, peer) in journal.peers() {
    ///     println!("{prefix} → {}", peer.remote);
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn peers(&self) -> &BTreeMap<IpNetwork, EncapPeer> {
        &self.view
    }

    /// The sequence number of the last journal record read (0 before any).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let mut journal = lwtun::peer::PeerJournal::open("/sys/fs/bpf/lwtun/t0")?;
    /// let changes = journal.poll()?;
    /// println!("{} changes, up to record {}", changes.len(), journal.sequence());
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn sequence(&self) -> u64 {
        self.seen
    }

    /// The changes written since the last poll (or the open), in the order they were made,
    /// each once. Never blocks.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open), when a resync reads the tables (the folder was unloaded, say).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::peer::{PeerChange, PeerJournal};
    ///
    /// let mut journal = PeerJournal::open("/sys/fs/bpf/lwtun/t0")?;
    /// for change in journal.poll()? {
    ///     if let PeerChange::Resync(reason) = change {
    ///         eprintln!("lost track ({reason:?}); what follows is a diff of the tables");
    ///     }
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn poll(&mut self) -> Result<Vec<PeerChange>> {
        let op = "read peer journal";
        // The journal as pinned now: made since the open, or replaced.
        let pin = PinId::of(&self.path);
        match (&self.ring, pin) {
            (None, Some(_)) => {
                // Made by the first write after the open: read from its first record.
                self.ring = Ring::open(&self.path, false, op)?;
                self.seen = 0;
            }
            // Another journal pinned in its place (the tunnel unloaded and pinned anew).
            (Some(ring), Some(pin)) if ring.pin != Some(pin) => {
                self.ring = Ring::open(&self.path, false, op)?;
                return self.resync(ResyncReason::Replaced);
            }
            _ => {}
        }
        if let Some(reason) = self.resync_due {
            return self.resync(reason);
        }
        let Some(ring) = &self.ring else {
            return Ok(Vec::new());
        };
        match ring.read_after(self.seen) {
            Ok(records) => {
                // A record this lwtun cannot read: the tables will say, before any of the
                // batch is applied to the view (the diff then carries them all).
                let parsed: Option<Vec<_>> = records
                    .iter()
                    .map(|r| Some((r, r.prefix()?, r.after().ok()?)))
                    .collect();
                let Some(parsed) = parsed else {
                    return self.resync(ResyncReason::Overflow { missed: 1 });
                };
                let mut out = Vec::with_capacity(parsed.len());
                for (r, prefix, after) in parsed {
                    self.seen = r.seq;
                    let before = match after {
                        Some(peer) => self.view.insert(prefix, peer),
                        None => self.view.remove(&prefix),
                    };
                    // A change the view holds already (made while the view was read) is not
                    // reported twice.
                    out.extend(PeerChange::between(prefix, before, after, Some(r.origin())));
                }
                Ok(out)
            }
            Err(missed) => self.resync(ResyncReason::Overflow { missed }),
        }
    }

    /// Reads the tables whole and reports how they differ from the reader's view: empty when
    /// every change went through lwtun, else [`ResyncReason::Untracked`] and the differences
    /// (changes made behind lwtun's back, which no journal sees). Call it when writers are
    /// quiet: a change being written meanwhile is reported here, without its origin, and
    /// not again by [`poll`](Self::poll). Journaled changes not yet polled are polled first.
    ///
    /// # Errors
    ///
    /// As [`poll`](Self::poll).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let mut journal = lwtun::peer::PeerJournal::open("/sys/fs/bpf/lwtun/t0")?;
    /// let untracked = journal.verify()?;
    /// if !untracked.is_empty() {
    ///     eprintln!("the tables were changed without lwtun: {untracked:?}");
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn verify(&mut self) -> Result<Vec<PeerChange>> {
        let mut out = self.poll()?;
        let actual = self.dump()?;
        let diff = diff(&self.view, &actual);
        if !diff.is_empty() {
            out.push(PeerChange::Resync(ResyncReason::Untracked));
            out.extend(diff);
        }
        self.view = actual;
        Ok(out)
    }

    /// Reads the tables whole, from the journal's head as it is now.
    fn resync(&mut self, reason: ResyncReason) -> Result<Vec<PeerChange>> {
        // Until a dump succeeds, every poll starts with this resync again.
        self.resync_due = Some(reason);
        // The head before the dump: a change written while the tables are read is read again
        // by the next poll, and not reported twice (the view holds it).
        let head = self.ring.as_ref().map_or(0, Ring::head);
        let actual = self.dump()?;
        self.seen = head;
        self.resync_due = None;
        let mut out = vec![PeerChange::Resync(reason)];
        out.extend(diff(&self.view, &actual));
        self.view = actual;
        Ok(out)
    }

    fn dump(&self) -> Result<BTreeMap<IpNetwork, EncapPeer>> {
        if !self.folder.join("peers_v4").exists() {
            return Err(Error::other(
                ErrorKind::NotFound,
                "read peer journal",
                "the folder holds no lwtun tunnel pins (peers_v4)",
            )
            .with_object(self.folder.display().to_string()));
        }
        let table = PeerTable::read_pinned(&self.folder)?;
        Ok(table.iter().map(|(p, peer)| (p, *peer)).collect())
    }
}

/// The changes from `old` to `new`, by prefix, without origin.
fn diff(
    old: &BTreeMap<IpNetwork, EncapPeer>,
    new: &BTreeMap<IpNetwork, EncapPeer>,
) -> Vec<PeerChange> {
    let prefixes: std::collections::BTreeSet<&IpNetwork> = old.keys().chain(new.keys()).collect();
    prefixes
        .into_iter()
        .filter_map(|p| PeerChange::between(*p, old.get(p).copied(), new.get(p).copied(), None))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Encap;

    fn via(last: u8) -> EncapPeer {
        EncapPeer::new(
            IpAddr::from([192, 0, 2, last]),
            IpAddr::from([192, 0, 2, 1]),
            Encap::Ipip,
        )
    }

    #[test]
    fn records_round_trip_prefix_peer_and_origin() {
        let p: IpNetwork = "2001:db8:7::/48".parse().unwrap();
        let mut r = JournalRecord::changed(p, &via(2).to_abi(3), &via(4).to_abi(3));
        r.seq = 9;
        r.pid = 42;
        r.comm[..5].copy_from_slice(b"lwtun");
        r.time_ns = 1_500_000_000;
        let r: JournalRecord = abi::from_bytes(abi::as_bytes(&r)).unwrap();
        assert_eq!(r.prefix(), Some(p));
        assert_eq!(r.after(), Ok(Some(via(4))));
        let o = r.origin();
        assert_eq!((o.seq, o.writer.pid), (9, 42));
        assert_eq!(o.writer.command.as_deref(), Some("lwtun"));
        assert_eq!(o.time, UNIX_EPOCH + Duration::from_millis(1500));
        let v4: IpNetwork = "10.1.0.0/16".parse().unwrap();
        let gone = JournalRecord::removed(v4, &via(2).to_abi(0));
        assert_eq!((gone.prefix(), gone.after()), (Some(v4), Ok(None)));
        assert_eq!(JournalRecord::default().after(), Err(()));
    }

    #[test]
    fn readers_and_tables_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<PeerJournal>();
        shared::<PeerTable>();
    }

    #[test]
    fn diff_names_each_kind_of_change() {
        let p = |s: &str| s.parse::<IpNetwork>().unwrap();
        let old = BTreeMap::from([(p("10.0.0.0/8"), via(2)), (p("10.1.0.0/16"), via(3))]);
        let new = BTreeMap::from([(p("10.1.0.0/16"), via(4)), (p("fd00::/8"), via(5))]);
        let d = diff(&old, &new);
        assert_eq!(d.len(), 3);
        assert!(matches!(d[0], PeerChange::Removed { peer, .. } if peer == via(2)));
        assert!(
            matches!(d[1], PeerChange::Changed { old, new, .. } if old == via(3) && new == via(4))
        );
        assert!(matches!(d[2], PeerChange::Added { peer, origin: None, .. } if peer == via(5)));
        assert!(diff(&new, &new).is_empty());
    }
}
