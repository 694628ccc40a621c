//! A tunnel's tables as its pin folder holds them, without loading its programs: read by
//! tools that show them ([`PinnedTunnel`]), edited and grown by the one process that owns the
//! folder ([`TunnelTables`]), as the `lwtun` command does for every edit.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use libbpf_rs::{MapCore, Object};

use super::{Tunnel, TunnelBuilder, PIN_LAYOUT, WORST_CASE_ENCAP};
use crate::error::{Error, ErrorKind, Result};
use crate::netlink::Netlink;
use crate::peer::PeerTable;
use crate::program::{lwt_program, Hook, LwtProgram};
use crate::route::LwtRoute;

/// A read-only look at the tables a tunnel pinned in a folder ([`TunnelBuilder::pin`]), for
/// tools that show them: the peers, their counters, the miss policies and map ids, read from
/// the pins without loading programs and without the folder's owner lock, so it works while
/// another process owns the tunnel. Nothing can be changed through it (the owner's copy of the
/// table would go stale); what it shows is the tables as they were when it was made.
///
/// # Examples
///
/// ```no_run
/// use lwtun::tunnel::PinnedTunnel;
///
/// let pinned = PinnedTunnel::open("/sys/fs/bpf/lwtun/t0")?;
/// for (prefix, peer) in pinned.peers().iter() {
///     println!("{prefix} → {} ({:?})", peer.remote, pinned.peers().stats(prefix)?);
/// }
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug)]
pub struct PinnedTunnel {
    folder: PathBuf,
    peers: PeerTable,
}

impl PinnedTunnel {
    /// Reads the tables pinned in `folder`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when the folder holds no tunnel pins; [`ErrorKind::InvalidInput`]
    /// for another program's pins or an older ABI's; the kernel's error reading them.
    pub fn open(folder: impl AsRef<Path>) -> Result<Self> {
        let folder = folder.as_ref();
        if !folder.join("peers_v4").exists() {
            return Err(Error::other(
                ErrorKind::NotFound,
                "read pinned tunnel",
                "the folder holds no lwtun tunnel pins (peers_v4)",
            )
            .with_object(folder.display().to_string())
            .with_hint("load a tunnel pinned in this folder first"));
        }
        Ok(PinnedTunnel {
            folder: folder.to_path_buf(),
            peers: PeerTable::read_pinned(folder)?,
        })
    }

    /// The pin folder.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// The peer tables, to read (the counters and miss policy are read live from the maps).
    pub fn peers(&self) -> &PeerTable {
        &self.peers
    }

    /// Names and ids of the pinned maps (for `bpftool map dump id N`).
    pub fn map_ids(&self) -> Vec<(String, u32)> {
        PIN_LAYOUT
            .maps()
            .iter()
            .filter_map(|name| {
                let map = libbpf_rs::MapHandle::from_pinned_path(self.folder.join(name)).ok()?;
                Some((name.to_string(), map.info().ok()?.info.id))
            })
            .collect()
    }

    /// Names and ids of the programs pinned in the folder (the encap programs a load pins for
    /// `route add`; none in a folder pinned by lwtun 0.2.0), for `bpftool prog show id N`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::tunnel::PinnedTunnel;
    ///
    /// let pinned = PinnedTunnel::open("/sys/fs/bpf/lwtun/t0")?;
    /// for (name, id) in pinned.program_ids() {
    ///     println!("{name}: bpftool prog show id {id}");
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn program_ids(&self) -> Vec<(String, u32)> {
        PIN_LAYOUT
            .programs()
            .iter()
            .filter_map(|name| {
                let fd = libbpf_rs::Program::fd_from_pinned_path(self.folder.join(name)).ok()?;
                let info = crate::program::program_info(fd.as_fd()).ok()?;
                Some((name.to_string(), info.id))
            })
            .collect()
    }
}

/// The tables of a tunnel pinned in a folder, opened for editing without loading its programs:
/// what an operator's command does for one `peer add` or `route add` (a few map and netlink
/// calls, about a millisecond, instead of loading and verifying the encap programs, a third of
/// a second).
///
/// It takes the folder's owner lock ([`TunnelBuilder::pin`]) while it lives, so it is refused
/// ([`ErrorKind::Exists`], naming the owner's pid) while a process has the tunnel loaded, and
/// nobody else edits the tables meanwhile. The programs of new routes come from the folder:
/// every load pins its encap programs there ([`PIN_LAYOUT`]); a folder pinned by lwtun 0.2.0 has
/// none, and [`TunnelTables::xmit_program`] says so with `None` (load the tunnel once with
/// [`TunnelBuilder::pin`] to pin them, or install the route from a loaded [`Tunnel`]).
///
/// # Examples
///
/// ```no_run
/// use lwtun::netlink::Netlink;
/// use lwtun::peer::{Encap, EncapPeer};
/// use lwtun::tunnel::TunnelTables;
///
/// let mut tables = TunnelTables::open("/sys/fs/bpf/lwtun/t0")?;
/// tables.peers_mut().replace(
///     "10.20.0.0/16".parse().unwrap(),
///     EncapPeer::new("192.0.2.2".parse().unwrap(), "192.0.2.1".parse().unwrap(), Encap::Ipip),
/// )?;
/// // A route into the tunnel, with the program its last load pinned:
/// let mut nl = Netlink::open()?;
/// let eth0 = nl.device("eth0")?;
/// if let Some(route) = tables.route("10.20.0.0/16".parse().unwrap(), false)? {
///     route.device(&eth0).source("10.30.0.1".parse().unwrap()).install(&mut nl)?.persist();
/// }
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug)]
pub struct TunnelTables {
    folder: PathBuf,
    peers: PeerTable,
    // Last: released after everything else.
    _lock: crate::family::lock::PinLock,
}

impl TunnelTables {
    /// Opens the tables pinned in `folder` for editing, under the folder's owner lock.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when the folder holds no complete set of tunnel pins;
    /// [`ErrorKind::Exists`] while another process owns the folder (the error names it);
    /// [`ErrorKind::InvalidInput`] for another program's pins or another lwtun version's.
    pub fn open(folder: impl AsRef<Path>) -> Result<Self> {
        let folder = folder.as_ref();
        let op = "open pinned tunnel tables";
        // The maps alone, not `pins::inspect`: its owner look-up reads /proc/locks, which took
        // most of a command's time (7 ms of 9 on the bench machine); the lock below names the
        // owner when there is one.
        if !PIN_LAYOUT.maps().iter().all(|m| folder.join(m).exists()) {
            return Err(Error::other(
                ErrorKind::NotFound,
                op,
                format!(
                    "{} holds no pinned tunnel (its maps {}): a tunnel loaded with \
                     TunnelBuilder::pin pins them",
                    folder.display(),
                    PIN_LAYOUT.maps().join(", ")
                ),
            )
            .with_object(folder.display().to_string()));
        }
        let lock = crate::family::lock::PinLock::acquire(folder)?;
        let mut peers = PeerTable::read_pinned(folder)?;
        // Under the lock: the edits are journaled (the journal is made by the first one).
        peers.journal_into(folder);
        Ok(TunnelTables {
            folder: folder.to_path_buf(),
            peers,
            _lock: lock,
        })
    }

    /// The pin folder.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// The peer tables.
    pub fn peers(&self) -> &PeerTable {
        &self.peers
    }

    /// The peer tables, to change peers (packets see each change at once).
    pub fn peers_mut(&mut self) -> &mut PeerTable {
        &mut self.peers
    }

    /// The headroom a route into this tunnel needs (as [`Tunnel::headroom`]).
    pub fn headroom(&self) -> u32 {
        self.peers.max_encap_len().unwrap_or(WORST_CASE_ENCAP)
    }

    /// The `lwt_xmit` encap program pinned in the folder (`encap_xmit`, or `encap_xmit_direct`
    /// for `direct`, see [`TunnelBuilder::direct`]); `None` when no load pinned that variant
    /// (a folder of lwtun 0.2.0, or `direct` for a tunnel never loaded with it).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] when the pin is not this tunnel's program (another type, or
    /// a program that does not read the folder's peer tables).
    pub fn xmit_program(&self, direct: bool) -> Result<Option<LwtProgram>> {
        let name = if direct {
            "encap_xmit_direct"
        } else {
            "encap_xmit"
        };
        self.pinned_program(name, Hook::Xmit)
    }

    /// The `lwt_in` encap program pinned in the folder ([`Tunnel::input_program`]); `None` for
    /// a folder without it.
    ///
    /// # Errors
    ///
    /// As [`TunnelTables::xmit_program`].
    pub fn input_program(&self) -> Result<Option<LwtProgram>> {
        self.pinned_program("encap_in", Hook::In)
    }

    /// A route for `prefix` that runs the pinned `lwt_xmit` program (as [`Tunnel::route`],
    /// without a source: set one with `.source(..)`); `None` when the folder has no such
    /// program pinned (see [`TunnelTables::xmit_program`]).
    ///
    /// # Errors
    ///
    /// As [`TunnelTables::xmit_program`].
    pub fn route(&self, prefix: IpNetwork, direct: bool) -> Result<Option<LwtRoute>> {
        Ok(self.xmit_program(direct)?.map(|program| {
            LwtRoute::new(prefix)
                .program(Hook::Xmit, &program)
                .headroom(self.headroom())
        }))
    }

    /// Gives the tables room for `capacity` peers each (IPv4, IPv6) without a moment in which
    /// a packet finds no route or no peer: new, larger tables are made with new encap programs,
    /// the peers, their counters, the miss counters and the settings are copied into them, every
    /// route of `nl`'s namespace that runs this tunnel's programs is replaced (`NLM_F_REPLACE`)
    /// by the same route running the new programs, and the new maps and programs are pinned
    /// over the old ones (each pin renamed into place). Returns the number of routes moved.
    ///
    /// Counts made by the old tables between the copy and the switch of the routes (a
    /// millisecond or so) are not carried over. Routes into this tunnel in other namespaces
    /// keep the old tables (and stop seeing peer changes): [`resize_in`](Self::resize_in)
    /// moves the routes of several namespaces. A capacity equal to the current one changes
    /// nothing.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::netlink::Netlink;
    /// use lwtun::tunnel::TunnelTables;
    ///
    /// let mut tables = TunnelTables::open("/sys/fs/bpf/lwtun/t0")?;
    /// let moved = tables.resize(&mut Netlink::open()?, 65_536)?;
    /// assert_eq!(tables.peers().capacity(), 65_536);
    /// println!("{moved} route(s) now use the larger tables");
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a capacity below the current one (tables do not shrink)
    /// or above 2^30, and for a route into the tunnel over a nexthop object (replace it by a
    /// route with its own encap first); the kernel's errors otherwise. Before the routes are
    /// switched nothing is changed; a route that cannot be switched puts the ones switched
    /// before it back, and the folder stays as it was.
    pub fn resize(&mut self, nl: &mut Netlink, capacity: u32) -> Result<usize> {
        self.resize_in(std::slice::from_mut(nl), capacity)
    }

    /// As [`resize`](Self::resize), moving the tunnel's routes in every namespace of
    /// `namespaces` (a socket opened in each, [`Netlink::open_in`]): all of them switch to the
    /// new tables, or, when one cannot, none does.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::netlink::Netlink;
    /// use lwtun::netns::NetNs;
    /// use lwtun::tunnel::TunnelTables;
    ///
    /// let mut tables = TunnelTables::open("/sys/fs/bpf/lwtun/t0")?;
    /// let mut sockets = vec![Netlink::open()?, Netlink::open_in(&NetNs::open("blue")?)?];
    /// let moved = tables.resize_in(&mut sockets, 65_536)?;
    /// println!("{moved} route(s) in two namespaces now use the larger tables");
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`resize`](Self::resize).
    pub fn resize_in(&mut self, namespaces: &mut [Netlink], capacity: u32) -> Result<usize> {
        let op = "resize tunnel";
        let object = self.folder.display().to_string();
        let old_capacity = self.peers.capacity();
        if capacity == old_capacity {
            return Ok(0);
        }
        if capacity < old_capacity {
            return Err(Error::invalid_input(
                op,
                format!(
                    "capacity {capacity} is below the tables' {old_capacity}: tables grow, they \
                     do not shrink"
                ),
            )
            .with_object(object));
        }
        // The routes to move, with the programs they run now (kept for a way back).
        let mut moves: Vec<(usize, crate::netlink::route::Route, Vec<LwtProgram>)> = Vec::new();
        for (ns, route) in namespaces
            .iter_mut()
            .enumerate()
            .map(|(ns, nl)| Ok((ns, crate::route::lwt_routes(nl)?)))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flat_map(|(ns, routes)| routes.into_iter().map(move |r| (ns, r)))
        {
            let programs: Vec<LwtProgram> = Hook::LWT
                .iter()
                .filter_map(|h| crate::route::program_of(&route, *h)?.ok())
                .collect();
            let ours = programs.iter().any(|p| {
                crate::program::program_info(p.as_fd()).is_ok_and(|i| self.peers.serves(&i))
            });
            if !ours {
                continue;
            }
            if route.bpf_encap().is_none() {
                return Err(Error::invalid_input(
                    op,
                    format!(
                        "the route to {} reaches the tunnel through nexthop object {}: replace it \
                         by a route with its own encap before resizing",
                        route.dst,
                        route.nhid.unwrap_or_default()
                    ),
                )
                .with_object(object));
            }
            moves.push((ns, route, programs));
        }
        // New tables and programs, filled with a copy of the old tables.
        let fresh = TunnelBuilder {
            capacity,
            forward_only: true,
            both_xmit: true,
            ..TunnelBuilder::default()
        }
        .load()?;
        let direct = lwt_program(&fresh.object, "encap_xmit_direct")?;
        self.copy_into(&fresh.object)
            .map_err(|e| e.with_object(object.clone()))?;
        let headroom = fresh.peers.max_encap_len().unwrap_or(WORST_CASE_ENCAP);
        let replacement = |p: &LwtProgram| -> Option<&LwtProgram> {
            let info = crate::program::program_info(p.as_fd()).ok()?;
            if !self.peers.serves(&info) {
                return None;
            }
            Some(match (p.hook(), info.name.starts_with("encap_xmit_d")) {
                (Hook::In, _) => &fresh.input,
                (_, true) => &direct,
                _ => &fresh.xmit,
            })
        };
        // Switch the routes, one atomic replace each; back again on a failure.
        let rebuilt = |route: &crate::netlink::route::Route,
                       programs: &[&LwtProgram],
                       headroom: Option<u32>| {
            let mut next = route.clone();
            let mut encap = crate::netlink::route::BpfEncap {
                headroom,
                ..Default::default()
            };
            for p in programs {
                let slot = match p.hook() {
                    Hook::In => &mut encap.input,
                    Hook::Out => &mut encap.output,
                    _ => &mut encap.xmit,
                };
                *slot = Some(p.prog_ref());
            }
            next.encap = Some(crate::netlink::route::Encap::Bpf(encap));
            next
        };
        // The routes `moves[..n]` back on their old programs (a failure after switching them).
        let switch_back = |namespaces: &mut [Netlink], n: usize| {
            for (ns, route, programs) in &moves[..n] {
                let old: Vec<&LwtProgram> = programs.iter().collect();
                let has_xmit = old.iter().any(|p| p.hook() == Hook::Xmit);
                let _ = namespaces[*ns].replace_route(&rebuilt(
                    route,
                    &old,
                    has_xmit.then_some(WORST_CASE_ENCAP.max(headroom)),
                ));
            }
        };
        for (i, (ns, route, programs)) in moves.iter().enumerate() {
            let new: Vec<&LwtProgram> = programs
                .iter()
                .map(|p| replacement(p).unwrap_or(p))
                .collect();
            let has_xmit = new.iter().any(|p| p.hook() == Hook::Xmit);
            if let Err(e) =
                namespaces[*ns].replace_route(&rebuilt(route, &new, has_xmit.then_some(headroom)))
            {
                switch_back(namespaces, i);
                return Err(e.with_object(format!("{object}: route to {}", route.dst)));
            }
        }
        // Pin the new maps and programs over the old ones, each renamed into place.
        if let Err(e) = self.pin_over(&fresh, &direct) {
            switch_back(namespaces, moves.len());
            return Err(e);
        }
        self.peers = PeerTable::read_pinned(&self.folder)?;
        // The journal stays pinned as it was (it is not one of the maps resized).
        self.peers.journal_into(&self.folder);
        Ok(moves.len())
    }

    /// Pins the maps and programs of `fresh` (and its direct xmit program) over the folder's,
    /// each pinned under a temporary name and renamed into place.
    fn pin_over(&self, fresh: &Tunnel, direct: &LwtProgram) -> Result<()> {
        let op = "resize tunnel";
        let mut pins: Vec<(&str, BorrowedFd<'_>)> = Vec::new();
        let maps: Vec<(String, libbpf_rs::MapHandle)> = PIN_LAYOUT
            .maps()
            .iter()
            .map(|name| {
                let map = fresh
                    .object
                    .maps()
                    .find(|m| m.name() == *name)
                    .ok_or_else(|| Error::not_found(op, format!("map {name}")))?;
                let handle = libbpf_rs::MapHandle::try_from(&map).map_err(|e| Error::bpf(op, e))?;
                Ok((name.to_string(), handle))
            })
            .collect::<Result<_>>()?;
        for (name, handle) in &maps {
            pins.push((name.as_str(), handle.as_fd()));
        }
        pins.push(("encap_xmit", fresh.xmit.as_fd()));
        pins.push(("encap_xmit_direct", direct.as_fd()));
        pins.push(("encap_in", fresh.input.as_fd()));
        // All staged first (bpffs refuses names with a dot): a failure there leaves the folder
        // as it was; then each renamed over the old pin, which the kernel does atomically.
        let staged = |name: &str| self.folder.join(format!("resizing-{name}"));
        for (i, (name, fd)) in pins.iter().enumerate() {
            let _ = std::fs::remove_file(staged(name));
            if let Err(e) = crate::family::pins::obj_pin(*fd, &staged(name)) {
                for (name, _) in &pins[..i] {
                    let _ = std::fs::remove_file(staged(name));
                }
                return Err(Error::io(op, e).with_object(staged(name).display().to_string()));
            }
        }
        for (name, _) in &pins {
            let path = self.folder.join(name);
            std::fs::rename(staged(name), &path)
                .map_err(|e| Error::io(op, e).with_object(path.display().to_string()))?;
        }
        Ok(())
    }

    /// Copies the tables (peers, counters, miss counters, settings) into the maps of `object`,
    /// entry by entry as they are (the counter slots stay).
    fn copy_into(&self, object: &Object) -> Result<()> {
        let op = "copy tunnel tables";
        let map = |name: &str| -> Result<libbpf_rs::MapHandle> {
            let m = object
                .maps()
                .find(|m| m.name() == name)
                .ok_or_else(|| Error::not_found(op, format!("map {name}")))?;
            libbpf_rs::MapHandle::try_from(&m).map_err(|e| Error::bpf(op, e))
        };
        let pinned = |name: &str| -> Result<libbpf_rs::MapHandle> {
            let path = self.folder.join(name);
            libbpf_rs::MapHandle::from_pinned_path(&path)
                .map_err(|e| Error::bpf(op, e).with_object(path.display().to_string()))
        };
        let flags = libbpf_rs::MapFlags::ANY;
        for name in ["config", "peers_v4", "peers_v6"] {
            let (from, to) = (pinned(name)?, map(name)?);
            for key in from.keys() {
                if let Some(value) = from.lookup(&key, flags).map_err(|e| Error::bpf(op, e))? {
                    to.update(&key, &value, flags)
                        .map_err(|e| Error::bpf(op, e).with_object(name.to_string()))?;
                }
            }
        }
        for name in ["peer_stats", "events"] {
            let (from, to) = (pinned(name)?, map(name)?);
            for index in 0..from.max_entries() {
                let key = index.to_ne_bytes();
                if let Some(values) = from
                    .lookup_percpu(&key, flags)
                    .map_err(|e| Error::bpf(op, e))?
                {
                    if values.iter().any(|v| v.iter().any(|b| *b != 0)) {
                        to.update_percpu(&key, &values, flags)
                            .map_err(|e| Error::bpf(op, e).with_object(name.to_string()))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn pinned_program(&self, name: &str, hook: Hook) -> Result<Option<LwtProgram>> {
        let op = "open pinned tunnel program";
        let path = self.folder.join(name);
        if !path.exists() {
            return Ok(None);
        }
        let object = path.display().to_string();
        let fd = libbpf_rs::Program::fd_from_pinned_path(&path)
            .map_err(|e| Error::bpf(op, e).with_object(object.clone()))?;
        let program = LwtProgram::from_fd(fd).map_err(|e| e.with_object(object.clone()))?;
        let info = crate::program::program_info(program.as_fd())?;
        if program.hook() != hook || !self.peers.serves(&info) {
            return Err(Error::invalid_input(
                op,
                format!(
                    "{object} is program {} (id {}), not this tunnel's {name}: it does not read \
                     the folder's peer tables; load the tunnel again with TunnelBuilder::pin to \
                     pin its programs",
                    info.name, info.id
                ),
            )
            .with_object(object));
        }
        Ok(Some(program))
    }
}
