//! Tunnel peers: [`EncapPeer`] (where and how to encapsulate) and [`PeerTable`] (the LPM tables
//! the encap program reads).
//!
//! ```text
//!  inner destination ──► PeerTable (LPM, IPv4 and IPv6 tables) ──► EncapPeer
//!     10.20.3.4              10.20.0.0/16                        GRE key 7 to 192.0.2.2
//! ```
//!
//! A peer says what outer header a packet gets: outer source and destination (both IPv4 or both
//! IPv6), the encapsulation ([`Encap`]: IP-in-IP, GRE with an optional key, UDP/FOU to a port),
//! and the outer TTL and TOS, fixed or inherited from the inner packet. The inner family picks
//! the table: an IPv4 prefix lives in the IPv4 table, an IPv6 prefix in the IPv6 one; either may
//! point at an IPv4 or an IPv6 outer header (4in4, 6in4, 4in6, 6in6).
//!
//! Each peer has its own per-CPU counters ([`PeerStats`]); a packet whose destination matches no
//! peer follows the table's [`MissPolicy`] and is counted ([`MissCounters`]).
//!
//! The table lives in a loaded [`Tunnel`](crate::tunnel::Tunnel); get it with
//! [`Tunnel::peers_mut`](crate::tunnel::Tunnel::peers_mut).

mod batch;
mod drain;
pub(crate) use drain::Drain;
mod journal;
mod value;

use batch::*;
pub use journal::{ChangeOrigin, PeerChange, PeerJournal, ResyncReason};
pub use value::{Encap, EncapPeer, OuterField};

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

use ipnetwork::IpNetwork;
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::abi::{self, Pod, ABI_VERSION as LWTUN_ABI_VERSION, MAGIC as LWTUN_MAGIC};
use crate::error::{Error, ErrorKind, Result};
use crate::family::lpm::{key as key_bytes, normalize, trie_capacity};
use crate::program::sum_percpu;
use crate::skel::lwt_encap::types::{
    lwtun_encap_config, lwtun_peer, lwtun_peer_key4, lwtun_peer_key6, lwtun_peer_stats,
};

// SAFETY: `struct lwtun_peer_key4` is u32 + [u8; 4] (8 bytes, asserted in lwtun.h).
unsafe impl Pod for lwtun_peer_key4 {}
// SAFETY: `struct lwtun_peer_key6` is u32 + [u8; 16] (20 bytes, asserted).
unsafe impl Pod for lwtun_peer_key6 {}
// SAFETY: `struct lwtun_peer` is integers and byte arrays with explicit padding (48, asserted).
unsafe impl Pod for lwtun_peer {}
// SAFETY: `struct lwtun_peer_stats` is three u64s (24 bytes, asserted).
unsafe impl Pod for lwtun_peer_stats {}
// SAFETY: `struct lwtun_encap_config` is five u32s (20 bytes, asserted).
unsafe impl Pod for lwtun_encap_config {}
// SAFETY: `struct lwtun_encap_preview` is two u32s and a byte array (72 bytes, asserted).
unsafe impl Pod for crate::skel::lwt_encap::types::lwtun_encap_preview {}

const EV_MISS_DROP_V4: u32 = 0;
const EV_MISS_DROP_V6: u32 = 1;
const EV_MISS_PASS_V4: u32 = 2;
const EV_MISS_PASS_V6: u32 = 3;
const EV_TOO_BIG: u32 = 5;
const EV_NOT_IP: u32 = 4;

pub use crate::family::MissPolicy;

/// The counters of one peer, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct PeerStats {
    /// Packets encapsulated (wire packets: a GSO packet counts its segments).
    pub packets: u64,
    /// Inner bytes encapsulated.
    pub bytes: u64,
    /// Packets that matched the peer but were dropped: the encap was refused.
    pub errors: u64,
}

/// The table-wide counters: misses by policy and family, and non-IP packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct MissCounters {
    /// IPv4 packets without a peer, dropped.
    pub dropped_v4: u64,
    /// IPv6 packets without a peer, dropped.
    pub dropped_v6: u64,
    /// IPv4 packets without a peer, passed on unencapsulated.
    pub passed_v4: u64,
    /// IPv6 packets without a peer, passed on unencapsulated.
    pub passed_v6: u64,
    /// Packets that were not IP, or truncated: dropped.
    pub not_ip: u64,
    /// Forwarded packets (input routes) too big for the tunnel's forward MTU once
    /// encapsulated, and not to be fragmented: dropped (see
    /// [`Tunnel::forward_mtu`](crate::tunnel::Tunnel::forward_mtu)).
    pub too_big: u64,
}

/// Refuses a pinned config map of another size than this lwtun's `struct lwtun_encap_config`:
/// tables pinned by an older lwtun, whose programs would read the config differently. Checked
/// before anything uses the pins: by `TunnelBuilder::load` before libbpf reuses them, and by
/// [`PeerTable::read_pinned`].
pub(crate) fn check_config_size(config: &MapHandle) -> Result<()> {
    let ours = std::mem::size_of::<lwtun_encap_config>() as u32;
    if config.value_size() == ours {
        return Ok(());
    }
    Err(Error::invalid_input(
        "adopt pinned peer table",
        format!(
            "the pinned tunnel config holds {} bytes, this lwtun's {ours}: the tables were \
             pinned by another lwtun version; unload them with that version (lwtun tunnel \
             unload) or remove the pin folder",
            config.value_size()
        ),
    ))
}

/// The peer tables of a loaded tunnel: an IPv4 and an IPv6 LPM trie keyed by inner destination
/// prefix, per-peer counters, and the miss policy.
///
/// Kernel: Linux 5.17+ (its maps come with the programs of [`Tunnel`](crate::tunnel::Tunnel); LPM trie 4.11, batch operations on it 5.13).
///
/// The table keeps a copy of what it wrote, so [`PeerTable::get`] and [`PeerTable::iter`] do not
/// read the kernel; writes go to the kernel first and are recorded only when they succeed.
///
/// # Examples
///
/// ```no_run
/// use lwtun::peer::{Encap, EncapPeer, MissPolicy};
/// use lwtun::tunnel::Tunnel;
///
/// let mut tunnel = Tunnel::load()?;
/// let peers = tunnel.peers_mut();
/// peers.insert(
///     "10.20.0.0/16".parse().unwrap(),
///     EncapPeer::new("192.0.2.2".parse().unwrap(), "192.0.2.1".parse().unwrap(), Encap::Ipip),
/// )?;
/// peers.set_miss_policy(false, MissPolicy::Pass)?;
/// println!("{:?}", peers.stats("10.20.0.0/16".parse().unwrap())?);
/// # Ok::<(), lwtun::Error>(())
/// ```
pub struct PeerTable {
    v4: MapHandle,
    v6: MapHandle,
    stats: MapHandle,
    events: MapHandle,
    config: MapHandle,
    capacity: u32,
    /// The table's copy: each prefix's counter slot; the peer is in `slot_peers` at that slot.
    /// Kept apart so that the map's entries are small (22 bytes instead of 76 with the peer):
    /// the copy of a batch of a million peers is made in half the time (38 ms instead of 80
    /// here, most of it spent faulting in fresh memory), on a CPU the kernel's writers want.
    peers: BTreeMap<IpNetwork, u32>,
    /// The peer of every slot handed out; a free slot keeps its last peer until it is reused.
    slot_peers: Vec<EncapPeer>,
    free_slots: Vec<u32>,
    next_slot: u32,
    /// Whether counter slots never handed out by this table may hold counts (adopted tables:
    /// the process before may have used and freed slots above the highest one in use).
    fresh_slots_dirty: bool,
    count_v4: u32,
    count_v6: u32,
    batch_workers: usize,
    /// The journal of pinned tables ([`PeerJournal`] reads it); `None` for unpinned ones.
    journal: Option<journal::Sink>,
    /// Bumped after every write that reached the kernel: the tunnel's direct-path checker reads
    /// the remotes again when it moved.
    revision: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl fmt::Debug for PeerTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTable")
            .field("capacity", &self.capacity)
            .field("peers", &self.peers.len())
            .finish()
    }
}

impl PeerTable {
    /// Wraps the maps of a loaded encap object (crate-internal: [`crate::tunnel::Tunnel`] does).
    pub(crate) fn new(object: &libbpf_rs::Object, capacity: u32, adopt: bool) -> Result<Self> {
        Self::from_handles(
            |name| crate::program::map_handle(object, name, "open peer table"),
            capacity,
            adopt,
        )
    }

    /// Reads the tables pinned by a tunnel (crate-internal: [`crate::tunnel::PinnedTunnel`]
    /// gives shared access only). Nothing is written; the pins must hold lwtun's config.
    pub(crate) fn read_pinned(folder: &std::path::Path) -> Result<Self> {
        let op = "read pinned peer table";
        let open = |name: &str| -> Result<MapHandle> {
            let path = folder.join(name);
            MapHandle::from_pinned_path(&path)
                .map_err(|e| Error::bpf(op, e).with_object(path.display().to_string()))
        };
        let v4 = open("peers_v4")?;
        if v4.map_type() != libbpf_rs::MapType::LpmTrie || v4.key_size() != 8 {
            return Err(Error::invalid_input(
                op,
                format!(
                    "{}/peers_v4 is a {:?} map with {}-byte keys, not lwtun's IPv4 peer trie: the \
                     folder holds another program's pins",
                    folder.display(),
                    v4.map_type(),
                    v4.key_size()
                ),
            ));
        }
        check_config_size(&open("config")?)?;
        let capacity = trie_capacity(v4.max_entries());
        let mut v4 = Some(v4);
        let mut table = PeerTable::from_handles(
            |name| match (name, v4.take()) {
                ("peers_v4", Some(m)) => Ok(m),
                _ => open(name),
            },
            capacity,
            None,
        )?;
        if table.read_config()?.magic != LWTUN_MAGIC {
            return Err(Error::invalid_input(
                op,
                format!(
                    "{}/config holds no lwtun tunnel config: the folder is not a tunnel's",
                    folder.display()
                ),
            ));
        }
        table.adopt()?;
        Ok(table)
    }

    /// Notes a write that reached the kernel (see `revision`).
    fn written(&self) {
        self.revision
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// The counter bumped after every write (crate-internal: the direct-path checker).
    pub(crate) fn revision(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        std::sync::Arc::clone(&self.revision)
    }

    /// A second handle on the IPv4 table (crate-internal: the direct-path checker reads the
    /// remotes from its own thread).
    pub(crate) fn v4_handle(&self, op: &str) -> Result<MapHandle> {
        MapHandle::try_from(&self.v4).map_err(|e| Error::bpf(op, e))
    }

    /// Journals every change from now on in `folder`'s peer journal (the tables are pinned
    /// there and the caller holds the folder's owner lock, which orders the journal's writers).
    pub(crate) fn journal_into(&mut self, folder: &std::path::Path) {
        self.journal = Some(journal::Sink::new(folder));
    }

    /// Opens (or makes) the journal before a change, so that one that cannot be had refuses
    /// the change before anything is written.
    fn journal_ready(&mut self, op: &str) -> Result<()> {
        match &mut self.journal {
            Some(j) => j.ready(op),
            None => Ok(()),
        }
    }

    /// `adopt`: `Some(true)` reads the tables back when they hold lwtun's config (else writes a
    /// fresh config), `Some(false)` writes a fresh config, `None` touches nothing.
    fn from_handles(
        mut handle: impl FnMut(&str) -> Result<MapHandle>,
        capacity: u32,
        adopt: impl Into<Option<bool>>,
    ) -> Result<Self> {
        let mut table = PeerTable {
            v4: handle("peers_v4")?,
            v6: handle("peers_v6")?,
            stats: handle("peer_stats")?,
            events: handle("events")?,
            config: handle("config")?,
            capacity,
            peers: BTreeMap::new(),
            slot_peers: Vec::new(),
            free_slots: Vec::new(),
            next_slot: 0,
            fresh_slots_dirty: false,
            batch_workers: default_batch_workers(),
            count_v4: 0,
            count_v6: 0,
            journal: None,
            revision: Default::default(),
        };
        match adopt.into() {
            None => {}
            Some(true) if table.read_config()?.magic == LWTUN_MAGIC => table.adopt()?,
            // Both miss policies drop (0), no forward MTU.
            Some(_) => table.write_config(lwtun_encap_config::default(), |_| {})?,
        }
        Ok(table)
    }

    /// Reads back the peers of adopted (pinned) tables into the table's copy.
    fn adopt(&mut self) -> Result<()> {
        let op = "adopt pinned peer table";
        let cfg = self.read_config()?;
        if cfg.version != LWTUN_ABI_VERSION {
            return Err(Error::other(
                ErrorKind::InvalidInput,
                op,
                format!(
                    "pinned tables have ABI version {}, this lwtun speaks {LWTUN_ABI_VERSION}: remove the pins",
                    cfg.version
                ),
            ));
        }
        let found = self.kernel_entries(op)?;
        let used: std::collections::HashSet<u32> = found.iter().map(|(_, _, s)| *s).collect();
        for (prefix, peer, slot) in found {
            self.peers.insert(prefix, slot);
            put_peer(&mut self.slot_peers, slot, peer);
            *self.count_of(&prefix) += 1;
        }
        self.next_slot = used.iter().max().map_or(0, |m| m + 1);
        self.free_slots = (0..self.next_slot).filter(|s| !used.contains(s)).collect();
        self.fresh_slots_dirty = true;
        Ok(())
    }

    /// Writes the kernel tables back to this table's copy where someone else changed them
    /// without lwtun (`bpftool map delete|update` on the pinned or open maps): a peer deleted
    /// or changed there is written again, one added there is deleted. Returns how many
    /// entries it rewrote (0: the kernel held what this table wrote). It reads both tables
    /// whole (one batch lookup each where the kernel has it), so call it as a periodic check,
    /// not per packet. The rewrites are not journaled: for the journal's readers nothing
    /// changed.
    ///
    /// # Errors
    ///
    /// The kernel's error reading or writing a table; what was rewritten before stays.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let mut tunnel = lwtun::tunnel::Tunnel::builder().pin("/sys/fs/bpf/lwtun/t0").load()?;
    /// // `bpftool map delete pinned /sys/fs/bpf/lwtun/t0/peers_v4 key ...` elsewhere
    /// let rewritten = tunnel.peers_mut().restore()?;
    /// println!("{rewritten} peer(s) put back");
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn restore(&mut self) -> Result<usize> {
        let op = "restore tunnel peers";
        let kernel: BTreeMap<IpNetwork, (EncapPeer, u32)> = self
            .kernel_entries(op)?
            .into_iter()
            .map(|(p, peer, slot)| (p, (peer, slot)))
            .collect();
        let mut rewritten = 0;
        for (prefix, &slot) in &self.peers {
            let Some(want) = self.peer_at(slot) else {
                continue;
            };
            if kernel.get(prefix) == Some(&(*want, slot)) {
                continue;
            }
            self.map_of(prefix)
                .update(
                    &key_bytes(prefix),
                    abi::as_bytes(&want.to_abi(slot)),
                    MapFlags::ANY,
                )
                .map_err(|e| Error::bpf(op, e).with_object(prefix.to_string()))?;
            rewritten += 1;
        }
        for prefix in kernel.keys().filter(|p| !self.peers.contains_key(p)) {
            self.map_of(prefix)
                .delete(&key_bytes(prefix))
                .map_err(|e| Error::bpf(op, e).with_object(prefix.to_string()))?;
            rewritten += 1;
        }
        Ok(rewritten)
    }

    /// Every entry of the kernel tables: prefix, peer, counter slot.
    fn kernel_entries(&self, op: &str) -> Result<Vec<(IpNetwork, EncapPeer, u32)>> {
        let mut found = Vec::new();
        for v6 in [false, true] {
            let map = if v6 { &self.v6 } else { &self.v4 };
            let entries = match read_entries(map).map_err(|e| Error::io(op, e))? {
                Some(entries) => entries,
                // No batch lookup on this kernel for the trie: two calls per peer.
                None => {
                    let mut entries = Entries::default();
                    for key in map.keys() {
                        let Some(value) = map
                            .lookup(&key, MapFlags::ANY)
                            .map_err(|e| Error::bpf(op, e))?
                        else {
                            continue; // removed meanwhile
                        };
                        entries.keys.extend_from_slice(&key);
                        entries.values.extend_from_slice(&value);
                    }
                    entries
                }
            };
            let (ks, vs) = (map.key_size() as usize, map.value_size() as usize);
            for (key, value) in entries.keys.chunks(ks).zip(entries.values.chunks(vs)) {
                let v: lwtun_peer = abi::from_bytes(value).ok_or_else(|| {
                    Error::other(ErrorKind::Kernel, op, "peer value of the wrong size")
                })?;
                let prefix = if v6 {
                    let k: lwtun_peer_key6 = abi::from_bytes(key).ok_or_else(|| {
                        Error::other(ErrorKind::Kernel, op, "IPv6 key of the wrong size")
                    })?;
                    IpNetwork::new(IpAddr::from(k.addr), k.prefixlen as u8)
                } else {
                    let k: lwtun_peer_key4 = abi::from_bytes(key).ok_or_else(|| {
                        Error::other(ErrorKind::Kernel, op, "IPv4 key of the wrong size")
                    })?;
                    IpNetwork::new(IpAddr::from(k.addr), k.prefixlen as u8)
                }
                .map_err(|e| Error::other(ErrorKind::Kernel, op, e.to_string()))?;
                let peer = EncapPeer::from_abi(&v).ok_or_else(|| {
                    Error::other(
                        ErrorKind::Kernel,
                        op,
                        format!("{prefix}: unknown encap kind {}", v.kind),
                    )
                })?;
                found.push((prefix, peer, v.slot));
            }
        }
        Ok(found)
    }

    /// Writes the config with `change` applied to `base` (magic and version set).
    fn write_config(
        &self,
        mut base: lwtun_encap_config,
        change: impl FnOnce(&mut lwtun_encap_config),
    ) -> Result<()> {
        base.magic = LWTUN_MAGIC;
        base.version = LWTUN_ABI_VERSION;
        change(&mut base);
        self.config
            .update(&0u32.to_ne_bytes(), abi::as_bytes(&base), MapFlags::ANY)
            .map_err(|e| Error::bpf("write tunnel config", e))
    }

    fn read_config(&self) -> Result<lwtun_encap_config> {
        let bytes = self
            .config
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::bpf("read tunnel config", e))?
            .unwrap_or_default();
        abi::from_bytes(&bytes).ok_or_else(|| {
            Error::other(
                ErrorKind::Kernel,
                "read tunnel config",
                "config entry of the wrong size",
            )
        })
    }

    /// Sets the miss policy of the IPv4 (`v6 == false`) or IPv6 table. Takes effect for the next
    /// packet.
    ///
    /// # Errors
    ///
    /// The kernel's error writing the config map.
    pub fn set_miss_policy(&mut self, v6: bool, policy: MissPolicy) -> Result<()> {
        let code = match policy {
            MissPolicy::Drop => 0, // LWTUN_MISS_DROP
            MissPolicy::Pass => 1, // LWTUN_MISS_PASS
        };
        self.write_config(self.read_config()?, |c| {
            if v6 {
                c.miss_v6 = code
            } else {
                c.miss_v4 = code
            }
        })
    }

    /// The forward MTU `encap_in` checks forwarded packets against (0: none), see
    /// [`Tunnel::forward_mtu`](crate::tunnel::Tunnel::forward_mtu).
    pub(crate) fn forward_mtu(&self) -> Result<u32> {
        Ok(self.read_config()?.forward_mtu)
    }

    /// Sets the forward MTU; the next packet sees it.
    pub(crate) fn set_forward_mtu(&mut self, mtu: u32) -> Result<()> {
        self.write_config(self.read_config()?, |c| c.forward_mtu = mtu)
    }

    /// The miss policy of the IPv4 (`v6 == false`) or IPv6 table.
    ///
    /// # Errors
    ///
    /// The kernel's error reading the config map.
    pub fn miss_policy(&self, v6: bool) -> Result<MissPolicy> {
        let cfg = self.read_config()?;
        let code = if v6 { cfg.miss_v6 } else { cfg.miss_v4 };
        Ok(if code == 1 {
            MissPolicy::Pass
        } else {
            MissPolicy::Drop
        })
    }

    /// How many peers each table holds at most.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Whether a loaded program reads these tables (its maps include the IPv4 or the IPv6
    /// trie): how a reader that did not load the tunnel tells its programs, on routes or
    /// interfaces, from other programs.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::program::program_info_by_id;
    /// use lwtun::tunnel::PinnedTunnel;
    ///
    /// let tunnel = PinnedTunnel::open("/sys/fs/bpf/lwtun")?;
    /// let program = program_info_by_id(42)?;
    /// println!("program 42 is this tunnel's: {}", tunnel.peers().serves(&program));
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn serves(&self, program: &crate::program::ProgramInfo) -> bool {
        [&self.v4, &self.v6]
            .iter()
            .filter_map(|m| m.info().ok())
            .any(|info| program.map_ids.contains(&info.info.id))
    }

    /// Peers in both tables.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether both tables are empty.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The peer for exactly `prefix` (not a longest-prefix lookup).
    pub fn get(&self, prefix: IpNetwork) -> Option<&EncapPeer> {
        self.peer_at(*self.peers.get(&normalize(prefix))?)
    }

    /// The peer a packet to `dst` would use: the longest matching prefix, as the data plane
    /// looks it up.
    pub fn lookup(&self, dst: IpAddr) -> Option<(IpNetwork, &EncapPeer)> {
        let longest = if dst.is_ipv4() { 32 } else { 128 };
        (0..=longest).rev().find_map(|len| {
            let prefix = normalize(IpNetwork::new(dst, len).ok()?);
            let (n, &slot) = self.peers.get_key_value(&prefix)?;
            Some((*n, self.peer_at(slot)?))
        })
    }

    /// Every peer, IPv4 prefixes first, in prefix order.
    pub fn iter(&self) -> impl Iterator<Item = (IpNetwork, &EncapPeer)> + '_ {
        self.peers
            .iter()
            .filter_map(|(n, &slot)| Some((*n, self.peer_at(slot)?)))
    }

    /// The largest [`EncapPeer::encap_len`] of the peers, or `None` for an empty table.
    pub fn max_encap_len(&self) -> Option<u32> {
        self.peers
            .values()
            .filter_map(|&slot| Some(self.peer_at(slot)?.encap_len()))
            .max()
    }

    /// The peer at counter slot `slot` (every slot of the table's copy has one).
    fn peer_at(&self, slot: u32) -> Option<&EncapPeer> {
        self.slot_peers.get(slot as usize)
    }

    fn map_of(&self, prefix: &IpNetwork) -> &MapHandle {
        if prefix.is_ipv4() {
            &self.v4
        } else {
            &self.v6
        }
    }

    fn count_of(&mut self, prefix: &IpNetwork) -> &mut u32 {
        if prefix.is_ipv4() {
            &mut self.count_v4
        } else {
            &mut self.count_v6
        }
    }

    fn check_room(&self, v6: bool, more: usize, op: &str) -> Result<()> {
        let count = if v6 { self.count_v6 } else { self.count_v4 };
        if count as usize + more > self.capacity as usize {
            return Err(Error::other(
                ErrorKind::InvalidInput,
                op.to_string(),
                format!(
                    "the {} table is full (capacity {} peers): grow its capacity (a pinned \
                     tunnel's resize keeps its routes and peers), or remove peers",
                    if v6 { "IPv6" } else { "IPv4" },
                    self.capacity
                ),
            ));
        }
        Ok(())
    }

    /// A counter slot for a new peer, and whether its counters must be zeroed first.
    fn take_slot(&mut self) -> Result<(u32, bool)> {
        if let Some(s) = self.free_slots.pop() {
            return Ok((s, true));
        }
        if self.next_slot >= self.capacity.saturating_mul(2) {
            return Err(Error::other(
                ErrorKind::InvalidInput,
                "allocate peer counters",
                "no counter slot left",
            ));
        }
        self.next_slot += 1;
        Ok((self.next_slot - 1, self.fresh_slots_dirty))
    }

    /// `n` counter slots for new peers, their counters zeroed. Give them back with
    /// [`PeerTable::release_slots`] if the peers are not written after all.
    fn take_slots(&mut self, n: usize, op: &str) -> Result<Vec<u32>> {
        let reused = n.min(self.free_slots.len());
        let fresh = (n - reused) as u64;
        if u64::from(self.next_slot) + fresh > u64::from(self.capacity) * 2 {
            return Err(Error::other(
                ErrorKind::InvalidInput,
                op.to_string(),
                "no counter slot left: load the tunnel with a larger capacity",
            ));
        }
        let mut slots = self.free_slots.split_off(self.free_slots.len() - reused);
        let first_fresh = self.next_slot;
        self.next_slot += fresh as u32;
        slots.extend(first_fresh..self.next_slot);
        let dirty = if self.fresh_slots_dirty {
            &slots[..]
        } else {
            &slots[..reused]
        };
        if let Err(e) = zero_stats_batch(&self.stats, dirty) {
            self.release_slots(slots);
            return Err(e);
        }
        Ok(slots)
    }

    fn release_slots(&mut self, slots: Vec<u32>) {
        self.free_slots.extend(slots);
    }

    fn zero_stats(&self, slot: u32) -> Result<()> {
        zero_stats_batch(&self.stats, &[slot])
    }

    /// Adds a peer for `prefix` (host bits are ignored).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Exists`] when `prefix` has a peer already (use [`PeerTable::replace`]);
    /// [`ErrorKind::InvalidInput`] for an invalid peer or a full table; the kernel's error
    /// otherwise. Nothing changes on error.
    pub fn insert(&mut self, prefix: IpNetwork, peer: EncapPeer) -> Result<()> {
        let prefix = normalize(prefix);
        let op = "insert tunnel peer";
        peer.validate()?;
        if self.peers.contains_key(&prefix) {
            return Err(Error::other(
                ErrorKind::Exists,
                op,
                format!("{prefix} has a peer already; replace that peer, or remove it first"),
            ));
        }
        self.check_room(prefix.is_ipv6(), 1, op)?;
        self.journal_ready(op)?;
        let (slot, reused) = self.take_slot()?;
        let write = (|| {
            if reused {
                self.zero_stats(slot)?;
            }
            self.map_of(&prefix)
                .update(
                    &key_bytes(&prefix),
                    abi::as_bytes(&peer.to_abi(slot)),
                    MapFlags::NO_EXIST,
                )
                .map_err(|e| Error::bpf(op, e).with_object(prefix.to_string()))
        })();
        if let Err(e) = write {
            self.free_slots.push(slot);
            return Err(e);
        }
        self.peers.insert(prefix, slot);
        put_peer(&mut self.slot_peers, slot, peer);
        *self.count_of(&prefix) += 1;
        self.written();
        if let Some(j) = &mut self.journal {
            j.append(1, |_| {
                journal::JournalRecord::added(prefix, &peer.to_abi(slot))
            });
        }
        Ok(())
    }

    /// Sets the peer for `prefix`, adding it or replacing the one there. A replaced peer keeps its
    /// counters, and the change is atomic for packets: each one sees the old or the new peer.
    ///
    /// # Errors
    ///
    /// As [`PeerTable::insert`], without `Exists`.
    pub fn replace(&mut self, prefix: IpNetwork, peer: EncapPeer) -> Result<()> {
        let prefix = normalize(prefix);
        let Some(&slot) = self.peers.get(&prefix) else {
            return self.insert(prefix, peer);
        };
        peer.validate()?;
        let op = "replace tunnel peer";
        self.journal_ready(op)?;
        self.map_of(&prefix)
            .update(
                &key_bytes(&prefix),
                abi::as_bytes(&peer.to_abi(slot)),
                MapFlags::EXIST,
            )
            .map_err(|e| Error::bpf(op, e).with_object(prefix.to_string()))?;
        let old = self.peer_at(slot).copied();
        put_peer(&mut self.slot_peers, slot, peer);
        self.written();
        if let (Some(j), Some(old)) = (&mut self.journal, old.filter(|o| *o != peer)) {
            j.append(1, |_| {
                journal::JournalRecord::changed(prefix, &old.to_abi(slot), &peer.to_abi(slot))
            });
        }
        Ok(())
    }

    /// Removes the peer of `prefix` and returns it; packets to it then follow the longest
    /// remaining prefix, or the miss policy.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when `prefix` has no peer.
    pub fn remove(&mut self, prefix: IpNetwork) -> Result<EncapPeer> {
        let prefix = normalize(prefix);
        let Some((&slot, &peer)) = self
            .peers
            .get(&prefix)
            .and_then(|s| Some((s, self.peer_at(*s)?)))
        else {
            return Err(Error::not_found(
                "remove tunnel peer",
                format!("peer for {prefix}"),
            ));
        };
        self.journal_ready("remove tunnel peer")?;
        self.map_of(&prefix)
            .delete(&key_bytes(&prefix))
            .map_err(|e| Error::bpf("remove tunnel peer", e).with_object(prefix.to_string()))?;
        self.peers.remove(&prefix);
        self.free_slots.push(slot);
        *self.count_of(&prefix) -= 1;
        self.written();
        if let Some(j) = &mut self.journal {
            j.append(1, |_| {
                journal::JournalRecord::removed(prefix, &peer.to_abi(slot))
            });
        }
        Ok(peer)
    }

    /// Adds many peers with `BPF_MAP_UPDATE_BATCH`. Prefixes must be new and distinct (host
    /// bits are ignored); the order of `peers` does not matter.
    ///
    /// The whole batch is checked before anything is written. The peers are then written in
    /// table order (by prefix: the kernel's LPM trie takes sorted keys about twice as fast as
    /// shuffled ones), in chunks encoded into reused buffers, and split into contiguous ranges
    /// written by up to [`PeerTable::batch_workers`] threads at once (the trie's inserts run
    /// in parallel on several CPUs); a thread done with its range takes chunks from the end of
    /// another's, so that all finish together. Counter slots are given in table order too, so
    /// the same peers inserted into an empty table in any order give the same table.
    ///
    /// # Errors
    ///
    /// Checked before anything is written: [`ErrorKind::InvalidInput`] for an invalid peer, a
    /// prefix twice in the batch, or too little room; [`ErrorKind::Exists`] for a prefix that
    /// has a peer already (use [`PeerTable::replace`]). The kernel's error otherwise (the error
    /// names the prefix it refused), in which case every peer of the batch that was written is
    /// removed again: the table is as before.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use ipnetwork::IpNetwork;
    /// use lwtun::peer::{Encap, EncapPeer};
    /// use lwtun::tunnel::Tunnel;
    ///
    /// let mut tunnel = Tunnel::builder().capacity(100_000).load()?;
    /// let local = "192.0.2.1".parse().unwrap();
    /// let batch: Vec<(IpNetwork, EncapPeer)> = (0..65_536u32)
    ///     .map(|i| {
    ///         let prefix = IpNetwork::new([10, 20, (i >> 8) as u8, i as u8].into(), 32).unwrap();
    ///         let remote = [192, 0, 2, (i % 250 + 2) as u8].into();
    ///         (prefix, EncapPeer::new(remote, local, Encap::Gre { key: Some(i), checksum: false }))
    ///     })
    ///     .collect();
    /// tunnel.peers_mut().insert_batch(&batch)?;
    /// assert_eq!(tunnel.peers().len(), 65_536);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn insert_batch(&mut self, peers: &[(IpNetwork, EncapPeer)]) -> Result<()> {
        let op = "insert tunnel peers (batch)";
        if peers.is_empty() {
            return Ok(());
        }
        if u32::try_from(peers.len()).is_err() {
            return Err(Error::invalid_input(
                op,
                "more than 2^32 peers in one batch",
            ));
        }
        let (v4, v6) = sorted_keys(peers.len(), self.batch_workers, &|i| {
            let (prefix, peer) = &peers[i];
            peer.validate()
                .map_err(|e| e.with_object(prefix.to_string()))?;
            Ok(*prefix)
        })?;
        self.check_new::<V4>(&v4, op)?;
        self.check_new::<V6>(&v6, op)?;
        self.journal_ready(op)?;

        let slots = self.take_slots(peers.len(), op)?;
        let (s4, s6) = slots.split_at(v4.len());
        let value4 = |k: usize, i: u32| peers[i as usize].1.to_abi(s4[k]);
        let value6 = |k: usize, i: u32| peers[i as usize].1.to_abi(s6[k]);
        let fd4 = self.v4.as_fd().as_raw_fd();
        let fd6 = self.v6.as_fd().as_raw_fd();
        let workers = self.batch_workers;
        // The table's copy: the prefixes with their slots, in table order, and the peer of each
        // slot.
        let entries = || {
            v4.iter()
                .map(|&(key, _)| V4::prefix(key))
                .chain(v6.iter().map(|&(key, _)| V6::prefix(key)))
                .zip(slots.iter().copied())
        };
        let top = self.next_slot as usize;
        let place = |slot_peers: &mut Vec<EncapPeer>| {
            slot_peers.reserve(top.saturating_sub(slot_peers.len()));
            let order = v4.iter().map(|&(_, i)| i).chain(v6.iter().map(|&(_, i)| i));
            for (i, &slot) in order.zip(&slots) {
                put_peer(slot_peers, slot, peers[i as usize].1);
            }
        };
        // The copy of a batch that is large next to the table is built on a thread of its own
        // while the kernel writes (for 1M peers about a twentieth of the kernel's time), then
        // moved or merged in; a small batch is inserted after. A failed batch leaves its peers
        // at slots that are free again, where nothing reads them.
        let aside = peers.len() >= self.peers.len() / 8;
        let slot_peers = &mut self.slot_peers;
        let (written, built) = std::thread::scope(|scope| {
            let builder = aside
                .then(|| {
                    spawn_helper(scope, move || {
                        place(slot_peers);
                        entries().collect::<BTreeMap<_, _>>()
                    })
                })
                .flatten();
            let written = write_all::<V4>(fd4, &v4, &value4, workers, op).and_then(|()| {
                write_all::<V6>(fd6, &v6, &value6, workers, op).inspect_err(|_| {
                    delete_present::<V4>(fd4, &v4);
                })
            });
            let built = builder.map(join_helper);
            (written, built)
        });
        if let Err(e) = written {
            self.release_slots(slots);
            return Err(e);
        }
        let new = match built {
            Some(new) => Some(new),
            // No thread to be had (or a small batch): the copy is made here.
            None => {
                place(&mut self.slot_peers);
                aside.then(|| entries().collect())
            }
        };
        match new {
            Some(new) if self.peers.is_empty() => self.peers = new,
            // Merging two sorted maps is linear; inserting one by one is not.
            Some(mut new) => self.peers.append(&mut new),
            None => self.peers.extend(entries()),
        }
        self.count_v4 += v4.len() as u32;
        self.count_v6 += v6.len() as u32;
        self.written();
        if let Some(j) = &mut self.journal {
            // In table order, as written: one record per peer, appended in one go.
            j.append(slots.len(), |k| {
                let (prefix, i) = match v4.get(k) {
                    Some(&(key, i)) => (V4::prefix(key), i),
                    None => (V6::prefix(v6[k - v4.len()].0), v6[k - v4.len()].1),
                };
                journal::JournalRecord::added(prefix, &peers[i as usize].1.to_abi(slots[k]))
            });
        }
        Ok(())
    }

    /// Checks the keys of a batch of new peers (in table order, as [`sorted_keys`] gives them):
    /// distinct, not in the table, room for them.
    fn check_new<F: Family>(&self, keys: &[(F::Key, u32)], op: &str) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        if let Some(w) = keys.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::invalid_input(
                op,
                format!("{} is twice in the batch", F::prefix(w[0].0)),
            ));
        }
        if let Some(k) = self.first_key::<F>(keys, true) {
            return Err(Error::other(
                ErrorKind::Exists,
                op,
                format!(
                    "{} has a peer already; replace that peer, or remove it first",
                    F::prefix(k)
                ),
            ));
        }
        self.check_room(F::V6, keys.len(), op)
    }

    /// The first of the sorted `keys` that is (`present`) or is not in the table.
    fn first_key<F: Family>(&self, keys: &[(F::Key, u32)], present: bool) -> Option<F::Key> {
        let &(first, _) = keys.first()?;
        if keys.len() >= self.peers.len() / 8 {
            // One ordered pass over the table instead of a search per key.
            let mut table = self
                .peers
                .range(F::prefix(first)..)
                .map(|(p, _)| p)
                .peekable();
            keys.iter()
                .find(|&&(k, _)| {
                    let p = F::prefix(k);
                    while table.next_if(|q| **q < p).is_some() {}
                    table.next_if(|q| **q == p).is_some() == present
                })
                .map(|&(k, _)| k)
        } else {
            keys.iter()
                .find(|&&(k, _)| self.peers.contains_key(&F::prefix(k)) == present)
                .map(|&(k, _)| k)
        }
    }

    /// Removes many peers with `BPF_MAP_DELETE_BATCH`, in table order, in chunks, by up to
    /// [`PeerTable::batch_workers`] threads (as [`PeerTable::insert_batch`] writes).
    ///
    /// # Errors
    ///
    /// Checked before anything is removed: [`ErrorKind::NotFound`] when a prefix has no peer,
    /// [`ErrorKind::InvalidInput`] for a prefix twice in the batch. The kernel's error
    /// otherwise, in which case the peers already removed are written back: the table is as
    /// before.
    pub fn remove_batch(&mut self, prefixes: &[IpNetwork]) -> Result<()> {
        let op = "remove tunnel peers (batch)";
        if prefixes.is_empty() {
            return Ok(());
        }
        if u32::try_from(prefixes.len()).is_err() {
            return Err(Error::invalid_input(
                op,
                "more than 2^32 peers in one batch",
            ));
        }
        let (v4, v6) = sorted_keys(prefixes.len(), self.batch_workers, &|i| Ok(prefixes[i]))?;
        self.check_present::<V4>(&v4, op)?;
        self.check_present::<V6>(&v6, op)?;
        self.journal_ready(op)?;

        let fd4 = self.v4.as_fd().as_raw_fd();
        let fd6 = self.v6.as_fd().as_raw_fd();
        let workers = self.batch_workers;
        let gone = || {
            v4.iter()
                .map(|&(k, _)| V4::prefix(k))
                .chain(v6.iter().map(|&(k, _)| V6::prefix(k)))
        };
        // The table's copy gives up the peers on a thread of its own while the kernel deletes
        // them (they come back if the kernel refuses part of the batch).
        let table = &mut self.peers;
        let (shares4, shares6, error, taken) = std::thread::scope(|scope| {
            let taker = spawn_helper(scope, || take_out(table, gone(), prefixes.len()));
            let mut shares4 = run::<V4>(fd4, &v4, None, workers);
            let mut error = first_error::<V4>(&v4, &mut shares4, op);
            let mut shares6 = Vec::new();
            if error.is_none() {
                shares6 = run::<V6>(fd6, &v6, None, workers);
                error = first_error::<V6>(&v6, &mut shares6, op);
            }
            let taken = taker.map(join_helper);
            (shares4, shares6, error, taken)
        });
        // No thread to be had: taken out here.
        let taken = taken.unwrap_or_else(|| take_out(&mut self.peers, gone(), prefixes.len()));
        if let Some(e) = error {
            let (t4, t6) = taken.split_at(v4.len());
            // Every slot of the table's copy has its peer.
            let value = |slot: u32| {
                self.peer_at(slot)
                    .map_or_else(lwtun_peer::default, |p| p.to_abi(slot))
            };
            let value4 = |k: usize, _: u32| value(t4[k].1);
            let value6 = |k: usize, _: u32| value(t6[k].1);
            rewrite::<V6>(fd6, &v6, &shares6, &value6);
            rewrite::<V4>(fd4, &v4, &shares4, &value4);
            self.peers.extend(taken);
            return Err(e);
        }
        self.free_slots.extend(taken.iter().map(|&(_, slot)| slot));
        self.count_v4 -= v4.len() as u32;
        self.count_v6 -= v6.len() as u32;
        self.written();
        if let Some(j) = &mut self.journal {
            // A freed slot keeps its last peer: the one removed.
            let slot_peers = &self.slot_peers;
            j.append(taken.len(), |k| {
                let (prefix, slot) = taken[k];
                let old = slot_peers
                    .get(slot as usize)
                    .map_or_else(lwtun_peer::default, |p| p.to_abi(slot));
                journal::JournalRecord::removed(prefix, &old)
            });
        }
        Ok(())
    }

    /// Checks the keys of a batch of peers to remove (in table order, as [`sorted_keys`] gives
    /// them): distinct, each in the table.
    fn check_present<F: Family>(&self, keys: &[(F::Key, u32)], op: &str) -> Result<()> {
        if let Some(w) = keys.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::invalid_input(
                op,
                format!("{} is twice in the batch", F::prefix(w[0].0)),
            ));
        }
        if let Some(k) = self.first_key::<F>(keys, false) {
            return Err(Error::not_found(op, format!("peer for {}", F::prefix(k))));
        }
        Ok(())
    }

    /// How many threads [`PeerTable::insert_batch`] and [`PeerTable::remove_batch`] use at most:
    /// by default the CPUs this process may run on, up to 4. A batch is split only into ranges
    /// of at least 16384 peers.
    pub fn batch_workers(&self) -> usize {
        self.batch_workers
    }

    /// Sets how many threads batch inserts and removals use at most (1: the calling thread
    /// only; 0 counts as 1).
    pub fn set_batch_workers(&mut self, workers: usize) {
        self.batch_workers = workers.max(1);
    }

    /// The counters of the peer of `prefix`, summed over CPUs.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when `prefix` has no peer; the kernel's error reading the map.
    pub fn stats(&self, prefix: IpNetwork) -> Result<PeerStats> {
        let prefix = normalize(prefix);
        let op = "read peer counters";
        let &slot = self
            .peers
            .get(&prefix)
            .ok_or_else(|| Error::not_found(op, format!("peer for {prefix}")))?;
        sum_stats(&self.stats, slot, op)
    }

    /// The miss and non-IP counters.
    ///
    /// # Errors
    ///
    /// The kernel's error reading the map.
    pub fn miss_counters(&self) -> Result<MissCounters> {
        let op = "read tunnel miss counters";
        let get = |i| sum_percpu(&self.events, i, op).map(|c| c.packets);
        Ok(MissCounters {
            dropped_v4: get(EV_MISS_DROP_V4)?,
            dropped_v6: get(EV_MISS_DROP_V6)?,
            passed_v4: get(EV_MISS_PASS_V4)?,
            passed_v6: get(EV_MISS_PASS_V6)?,
            not_ip: get(EV_NOT_IP)?,
            too_big: get(EV_TOO_BIG)?,
        })
    }
}

/// Slot `slot` of a per-CPU map of `struct lwtun_peer_stats` (a tunnel's peer counters, a
/// service's backend counters), summed over CPUs. `op` names the read in errors.
pub(crate) fn sum_stats(map: &dyn MapCore, slot: u32, op: &str) -> Result<PeerStats> {
    let values = map
        .lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)
        .map_err(|e| Error::bpf(op, e))?
        .unwrap_or_default();
    let mut total = PeerStats::default();
    for v in values {
        let s: lwtun_peer_stats = abi::from_bytes(&v).ok_or_else(|| {
            Error::other(ErrorKind::Kernel, op, "counter value of the wrong size")
        })?;
        total.packets += s.packets;
        total.bytes += s.bytes;
        total.errors += s.errors;
    }
    Ok(total)
}

/// The keys and values of a map, each packed back to back.
#[derive(Default)]
pub(crate) struct Entries {
    pub(crate) keys: Vec<u8>,
    pub(crate) values: Vec<u8>,
}

/// Every entry of `map`, read with `BPF_MAP_LOOKUP_BATCH` a few thousand at a time (one system
/// call per chunk, where a key walk takes two per entry: 100k peers read in a fraction of the
/// 0.25 s the walk takes); `None` where the kernel has no batch lookup for the map (the caller
/// walks the keys instead).
pub(crate) fn read_entries(map: &MapHandle) -> std::io::Result<Option<Entries>> {
    const CHUNK: u32 = 4096;
    let (ks, vs) = (map.key_size() as usize, map.value_size() as usize);
    let mut out = Entries::default();
    let mut keys = vec![0u8; ks * CHUNK as usize];
    let mut values = vec![0u8; vs * CHUNK as usize];
    let mut token = vec![0u8; ks];
    let mut prev: Option<Vec<u8>> = None;
    let opts = libbpf_rs::libbpf_sys::bpf_map_batch_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_batch_opts>() as _,
        ..Default::default()
    };
    loop {
        let mut count = CHUNK;
        // SAFETY: the key and value buffers hold CHUNK entries, `token` and `prev` one key
        // each; the fd is borrowed for the call.
        let rc = unsafe {
            libbpf_rs::libbpf_sys::bpf_map_lookup_batch(
                map.as_fd().as_raw_fd(),
                prev.as_mut()
                    .map_or(std::ptr::null_mut(), |p| p.as_mut_ptr().cast()),
                token.as_mut_ptr().cast(),
                keys.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                &mut count,
                &opts,
            )
        };
        let errno = if rc < 0 { -rc } else { 0 };
        if errno != 0 && errno != libc::ENOENT {
            if prev.is_none()
                && (errno == libc::EINVAL || errno == libc::EOPNOTSUPP || errno == 524)
            {
                return Ok(None); // 524: ENOTSUPP, the kernel's "no batch ops for this map"
            }
            return Err(std::io::Error::from_raw_os_error(errno));
        }
        let n = count as usize;
        out.keys.extend_from_slice(&keys[..n * ks]);
        out.values.extend_from_slice(&values[..n * vs]);
        if errno == libc::ENOENT {
            return Ok(Some(out));
        }
        prev = Some(token.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_round_trip_through_the_abi() {
        let v4 = |s: &str| -> IpAddr { s.parse().unwrap() };
        let peers = [
            EncapPeer::new(v4("192.0.2.2"), v4("192.0.2.1"), Encap::Ipip),
            EncapPeer::new(
                v4("192.0.2.2"),
                v4("192.0.2.1"),
                Encap::Gre {
                    key: None,
                    checksum: false,
                },
            )
            .ttl(3),
            EncapPeer::new(
                v4("2001:db8::2"),
                v4("2001:db8::1"),
                Encap::Gre {
                    key: Some(0x0102_0304),
                    checksum: true,
                },
            )
            .inherit_ttl()
            .tos(0x28),
            EncapPeer::new(
                v4("2001:db8::2"),
                v4("2001:db8::1"),
                Encap::Udp { port: 0x1234 },
            )
            .inherit_tos(),
        ];
        for (slot, p) in peers.iter().enumerate() {
            let abi = p.to_abi(slot as u32);
            assert_eq!(abi.slot, slot as u32);
            assert_eq!(EncapPeer::from_abi(&abi), Some(*p), "{p}");
        }
        // Network byte order on the wire side.
        let gre = peers[2].to_abi(0);
        assert_eq!(gre.gre_key.to_ne_bytes(), [1, 2, 3, 4]);
        let udp = peers[3].to_abi(0);
        assert_eq!(udp.udp_dport.to_ne_bytes(), [0x12, 0x34]);
        assert_eq!(
            abi::as_bytes(&gre).len(),
            48,
            "struct lwtun_peer is 48 bytes"
        );
    }

    #[test]
    fn validation_and_lengths() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let six: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(EncapPeer::new(b, a, Encap::Ipip).encap_len(), 20);
        assert_eq!(
            EncapPeer::new(
                six,
                six,
                Encap::Gre {
                    key: Some(1),
                    checksum: false
                }
            )
            .encap_len(),
            48
        );
        assert_eq!(
            EncapPeer::new(b, six, Encap::Ipip)
                .validate()
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidInput
        );
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        assert!(EncapPeer::new(any, a, Encap::Ipip).validate().is_err());
        let mcast: IpAddr = "224.0.0.1".parse().unwrap();
        assert!(EncapPeer::new(mcast, a, Encap::Ipip).validate().is_err());
        assert!(EncapPeer::new(b, a, Encap::Udp { port: 0 })
            .validate()
            .is_err());
        assert_eq!(
            normalize("10.1.2.3/16".parse().unwrap()),
            "10.1.0.0/16".parse().unwrap()
        );
    }
}
