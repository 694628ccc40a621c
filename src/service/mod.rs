//! Services: a prefix (a VIP) served by a weighted set of backends, the flow choosing one
//! (glb-director's forwarding table, Katran's ring), on an LWT route's xmit hook.
//!
//! ```text
//!  route 10.96.0.10/32 encap bpf xmit service_xmit      (Services::route)
//!    └► services_vN (LPM)  VIP ─► {table, rows}
//!         └► flows (LRU)   the backend this flow was sent to, while it stays up
//!         └► service_tables[table] ─► rows[flow hash % rows] ─► backend
//!              └► backends[i] = EncapPeer (IPIP / GRE / UDP, v4 or v6 outer) ─► encap, reroute
//! ```
//!
//! [`Services::set`] fills a new row table with Maglev (Eisenbud et al., NSDI 2016) from the weighted backend list
//! and swaps it in whole (one update of the outer map: a packet sees the old table or the new
//! one). The flow table keeps an established flow on its backend across such a swap as long
//! as that backend stays in service; [`Services::drain`] takes one out (its flows pick rows
//! again) and [`Services::restore`] brings it back; [`HealthCheck`] does both by probes that
//! take the data's path. ICMP errors about a flow follow it (see
//! `bpf/lwt_service.bpf.c`). [`Services::pick`] asks the data plane's own code, under
//! `BPF_PROG_TEST_RUN`, which backend a new flow gets.
//!
//! Kernel: Linux 5.10+ (`BPF_F_INNER_MAP`: row tables of any size in one outer map).

mod health;
mod maglev;
mod pinned;
mod tables;

pub use health::{HealthChange, HealthCheck, HealthConfig, HealthWatch};
pub use pinned::PinnedServices;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};

use ipnetwork::IpNetwork;
use libbpf_rs::{MapCore, MapFlags, MapHandle, Object};

use crate::abi::{self, Pod, ABI_VERSION, MAGIC};
use crate::error::{Error, ErrorKind, Result};
use crate::family::lpm::{self, normalize};
use crate::family::{PinFolder, Slots};
use crate::peer::{EncapPeer, PeerStats};
use crate::pins::PinLayout;
use crate::program::{Hook, LwtProgram};
use crate::route::LwtRoute;
use crate::skel::lwt_service::types::{
    lwtun_backend, lwtun_peer, lwtun_peer_stats, lwtun_service, lwtun_service_config,
    lwtun_service_pick,
};
use crate::table::{InnerSpec, MapOfMaps};

// SAFETY: `struct lwtun_service` is two u32s (8 bytes, asserted in lwtun.h).
unsafe impl Pod for lwtun_service {}
// SAFETY: `struct lwtun_backend` is a peer (integers and byte arrays) and two u32s (56 bytes).
unsafe impl Pod for lwtun_backend {}
// SAFETY: `struct lwtun_peer` is integers and byte arrays (48 bytes).
unsafe impl Pod for lwtun_peer {}
// SAFETY: `struct lwtun_peer_stats` is three u64s (24 bytes).
unsafe impl Pod for lwtun_peer_stats {}
// SAFETY: `struct lwtun_service_config` is four u32s (16 bytes).
unsafe impl Pod for lwtun_service_config {}
// SAFETY: `struct lwtun_service_pick` is six u32s (24 bytes).
unsafe impl Pod for lwtun_service_pick {}

/// What a pinned services data plane keeps in its folder ([`ServicesBuilder::pin`]).
pub const PIN_LAYOUT: PinLayout = crate::family::pins::SERVICE;

/// Rows of a service's table unless [`ServicesBuilder::rows`] says otherwise: a prime well
/// above 100 × the backends of a service (Katran's default ring size).
pub const DEFAULT_ROWS: u32 = 65_537;

/// The most rows a table may have (64 MiB of row table per service at most).
pub const MAX_ROWS: u32 = 1 << 24;

/// The headroom a service route takes: the longest encapsulation (IPv6 outer, GRE with key and
/// checksum: 52 bytes), since a service's backends change after the route is made.
pub const SERVICE_HEADROOM: u32 = 52;

const BACKEND_UP: u32 = 1;
const BACKEND_DRAINED: u32 = 2;

/// The mark (value, mask) of health probes unless [`ServicesBuilder::probe_mark`] says
/// otherwise: marks `0x4cXXXXXX`, the low 24 bits naming the backend.
pub const DEFAULT_PROBE_MARK: (u32, u32) = (0x4c00_0000, 0xff00_0000);

/// One backend of a service: where its flows are encapsulated to, and its share of new flows.
///
/// # Examples
///
/// ```
/// use lwtun::peer::{Encap, EncapPeer};
/// use lwtun::service::Backend;
///
/// let peer = EncapPeer::new("192.0.2.2".parse().unwrap(), "192.0.2.1".parse().unwrap(), Encap::Ipip);
/// let b = Backend::new(peer).weight(3);
/// assert_eq!(b.weight, 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backend {
    /// The encapsulation to the backend; its remote names the backend.
    pub peer: EncapPeer,
    /// Its share of new flows, relative to the other backends' (0: none, while the flows it
    /// already has stay).
    pub weight: u32,
}

impl Backend {
    /// A backend of weight 1.
    pub fn new(peer: EncapPeer) -> Self {
        Backend { peer, weight: 1 }
    }

    /// Sets the weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// What names the backend in the Maglev permutation: its remote and encapsulation (not
    /// the local address, which differs from host to host while the table must not).
    fn identity(&self) -> Vec<u8> {
        let v = self.peer.to_abi(0);
        let mut id = v.remote.to_vec();
        id.push(v.kind);
        id.extend_from_slice(&v.gre_key.to_ne_bytes());
        id.extend_from_slice(&v.udp_dport.to_ne_bytes());
        id
    }
}

/// The table-wide counters of a [`Services`] data plane (packets).
///
/// # Examples
///
/// ```no_run
/// # let services = lwtun::service::Services::load()?;
/// let c = services.counters()?;
/// println!("{} new flows, {} remembered, {} without a service", c.flow_picks, c.flow_hits, c.missed);
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct ServiceCounters {
    /// Packets whose destination no service serves (dropped).
    pub missed: u64,
    /// Packets that were not IPv4 or IPv6 (dropped).
    pub not_ip: u64,
    /// Packets of a service without a backend in service (dropped).
    pub no_backend: u64,
    /// Packets sent to the backend their flow was remembered with.
    pub flow_hits: u64,
    /// Packets whose backend a row picked (a new flow, or one whose backend went).
    pub flow_picks: u64,
    /// Health probes sent to the backend their mark named ([`HealthCheck`]).
    pub probes: u64,
    /// XDP director: frames encapsulated and sent back out of their interface (`XDP_TX`).
    pub director_tx: u64,
    /// XDP director: frames encapsulated and redirected to the device of the backend's route.
    pub director_redirected: u64,
    /// XDP director: frames encapsulated and handed to the stack (the next hop had no
    /// neighbour entry yet).
    pub director_passed: u64,
    /// XDP director: frames dropped (no route to the backend, too big for its path, or a
    /// backend with a GRE checksum, which the director does not build).
    pub director_dropped: u64,
}

/// What the data plane picks for a new flow ([`Services::pick`]).
///
/// # Examples
///
/// ```no_run
/// # let services = lwtun::service::Services::load()?;
/// # let frame: Vec<u8> = vec![];
/// if let Some(pick) = services.pick(&frame)? {
///     println!("row {} -> {}", pick.row, pick.backend);
/// }
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pick {
    /// The backend.
    pub backend: EncapPeer,
    /// The row of the service's table that named it.
    pub row: u32,
    /// The flow's hash (the row is this modulo the table's rows).
    pub hash: u32,
}

/// Sizes of a [`Services`] data plane, fixed at load.
///
/// # Examples
///
/// ```no_run
/// use lwtun::service::Services;
///
/// let services = Services::builder().services(8).backends(256).flows(1 << 20).rows(4_099).load()?;
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ServicesBuilder {
    services: u32,
    backends: u32,
    flows: u32,
    rows: u32,
    probe_mark: (u32, u32),
    pin: Option<std::path::PathBuf>,
}

impl Default for ServicesBuilder {
    fn default() -> Self {
        ServicesBuilder {
            services: 64,
            backends: 1024,
            flows: 65_536,
            rows: DEFAULT_ROWS,
            probe_mark: DEFAULT_PROBE_MARK,
            pin: None,
        }
    }
}

impl ServicesBuilder {
    /// How many services (prefixes) it holds (default 64).
    pub fn services(mut self, n: u32) -> Self {
        self.services = n;
        self
    }

    /// How many backends, over all services, it holds (default 1024).
    pub fn backends(mut self, n: u32) -> Self {
        self.backends = n;
        self
    }

    /// How many flows the flow table remembers (default 65 536; the least recently used go
    /// first, and pick a row again when they come back).
    pub fn flows(mut self, n: u32) -> Self {
        self.flows = n;
        self
    }

    /// Rows per service table: a prime, at least the number of backends of a service, best
    /// 100 times it or more (default [`DEFAULT_ROWS`]).
    pub fn rows(mut self, rows: u32) -> Self {
        self.rows = rows;
        self
    }

    /// The packet marks that make a packet a health probe ([`HealthCheck`]): `mark & mask ==
    /// value`, the bits outside `mask` naming the backend (default [`DEFAULT_PROBE_MARK`]).
    /// Choose bits no other fwmark user of the host sets; `mask` 0 turns probes off.
    pub fn probe_mark(mut self, value: u32, mask: u32) -> Self {
        self.probe_mark = (value, mask);
        self
    }

    /// Pins the state in `folder` (on a BPF filesystem), or adopts what a previous owner
    /// left there: its services, backends, counters and flow table, so that every established
    /// flow stays where it was across a restart of the control plane (see [`crate::pins`]:
    /// the folder's owner lock refuses a second live owner). Sizes, rows and the probe mark
    /// are then the folder's, whatever this builder says. The pins go with the data plane
    /// unless [`Services::keep_pinned`].
    ///
    /// ```no_run
    /// let services = lwtun::service::Services::builder().pin("/sys/fs/bpf/lwtun-lb").load()?;
    /// println!("{} services adopted", services.iter().count());
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn pin(mut self, folder: impl Into<std::path::PathBuf>) -> Self {
        self.pin = Some(folder.into());
        self
    }

    /// Loads the data plane (no service yet, or the pinned folder's).
    ///
    /// # Errors
    ///
    /// InvalidInput for a size of 0, or rows that are not a prime up to [`MAX_ROWS`];
    /// Permission without CAP_BPF and CAP_NET_ADMIN; the kernel's error otherwise.
    pub fn load(self) -> Result<Services> {
        // A pin folder this call creates is removed again when the load fails.
        let made = self.pin.clone().filter(|f| !f.exists());
        let result = self.load_inner();
        if let (Err(_), Some(folder)) = (&result, made) {
            let _ = std::fs::remove_dir(folder);
        }
        result
    }

    fn load_inner(mut self) -> Result<Services> {
        let op = "load services";
        for (what, n) in [
            ("services", self.services),
            ("backends", self.backends),
            ("flows", self.flows),
        ] {
            if n == 0 || n > 1 << 24 {
                return Err(Error::invalid_input(op, format!("{n} {what} (1..=2^24)")));
            }
        }
        if !maglev::is_prime(self.rows) || self.rows > MAX_ROWS {
            return Err(Error::invalid_input(
                op,
                format!(
                    "{} rows: a service's table has a prime number of rows up to {MAX_ROWS} \
                     (Maglev's permutations need it), such as 65537 or 4099",
                    self.rows
                ),
            ));
        }
        let (value, mask) = self.probe_mark;
        if value & !mask != 0 || (mask != 0 && u64::from(!mask) + 1 < u64::from(self.backends)) {
            return Err(Error::invalid_input(
                op,
                format!(
                    "probe mark {value:#x}/{mask:#x}: the value must lie inside the mask, and \
                     the bits outside it must number {} backends",
                    self.backends
                ),
            ));
        }
        // The pin protocol (crate::pins): folder, owner lock, complete set or none.
        let mut pin = match &self.pin {
            Some(folder) => Some(PinFolder::open(folder.clone(), &PIN_LAYOUT, op)?),
            None => None,
        };
        let mut adopted_config = None;
        if let Some(pin) = pin.as_ref().filter(|p| p.adopted()) {
            let op = "adopt pinned services";
            let bytes = pin
                .adopted_map("config", op)?
                .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
                .map_err(|e| Error::bpf(op, e))?
                .unwrap_or_default();
            let cfg: lwtun_service_config = abi::from_bytes(&bytes)
                .filter(|c: &lwtun_service_config| c.magic == MAGIC && c.version == ABI_VERSION)
                .ok_or_else(|| {
                    Error::invalid_input(
                        op,
                        format!(
                            "{} holds services of another lwtun version (config magic/version): \
                             unload it with that version, or remove the folder",
                            pin.path().display()
                        ),
                    )
                })?;
            self.services = lpm::trie_capacity(pin.adopted_map("services_v4", op)?.max_entries());
            self.backends = pin.adopted_map("backends", op)?.max_entries();
            self.flows = pin.adopted_map("flows", op)?.max_entries();
            self.probe_mark = (cfg.probe_value, cfg.probe_mask);
            adopted_config = Some(cfg);
        }
        let (value, mask) = self.probe_mark;
        let mut open = crate::program::open_object(
            "lwt_service",
            crate::family::bpf_loop_variant(
                crate::probe::Feature::BpfLoop.present(),
                crate::skel::lwt_service::OBJECT,
                crate::skel::lwt_service_compat::OBJECT,
            ),
            op,
        )?;
        for mut map in open.maps_mut() {
            let name = map.name().to_string_lossy().into_owned();
            let entries = match name.as_str() {
                "services_v4" | "services_v6" => lpm::trie_entries(self.services),
                "service_tables" => self.services,
                "backends" | "backend_stats" => self.backends,
                "flows" => self.flows,
                _ => continue,
            };
            map.set_max_entries(entries)
                .map_err(|e| Error::bpf(op, e).with_object(name))?;
        }
        if let Some(pin) = &pin {
            pin.reuse_maps(&mut open)?;
        }
        let mut object = crate::program::load_opened(open, op)?;
        let xmit = crate::program::lwt_program(&object, "service_xmit")?;
        let pick = crate::program::program_fd(&object, "service_pick")?;
        let director = crate::program::program_fd(&object, "service_director")?;
        if let Some(pin) = &mut pin {
            pin.pin_maps(&mut object, "pin service map")?;
            pin.pin_program("service_xmit", xmit.as_fd(), "pin service program")?;
            pin.pin_program("service_director", director.as_fd(), "pin service program")?;
        }
        let map = |name| crate::program::map_handle(&object, name, op);
        let template = map("rows_template")?;
        let mut rows_spec = InnerSpec::of(template.as_fd())?;
        rows_spec.max_entries = self.rows;
        if adopted_config.is_none() {
            let config = lwtun_service_config {
                magic: MAGIC,
                version: ABI_VERSION,
                probe_mask: mask,
                probe_value: value,
            };
            map("config")?
                .update(&0u32.to_ne_bytes(), abi::as_bytes(&config), MapFlags::ANY)
                .map_err(|e| Error::bpf(op, e).with_object("config"))?;
        }
        let mut services = Services {
            probe_mark: self.probe_mark,
            tables: MapOfMaps::from_map(map("service_tables")?.as_fd())?,
            services_v4: map("services_v4")?,
            services_v6: map("services_v6")?,
            backends: map("backends")?,
            backend_stats: map("backend_stats")?,
            events: map("events")?,
            pick_out: map("pick")?,
            rows_spec,
            rows: self.rows,
            table_slots: Slots::new(self.services),
            backend_slots: Slots::new(self.backends),
            generations: vec![0; self.backends as usize],
            entries: BTreeMap::new(),
            pick_lock: std::sync::Mutex::new(()),
            xmit,
            pick,
            director,
            object,
            pin: None,
        };
        if adopted_config.is_some() {
            services.adopt()?;
        }
        if let Some(mut pin) = pin {
            pin.commit();
            services.pin = Some(pin);
        }
        Ok(services)
    }
}

/// One service as user space keeps it.
#[derive(Debug)]
struct Entry {
    table: u32,
    backends: Vec<Held>,
}

/// A backend of a service, with its index in `backends` and whether it is in service.
#[derive(Debug, Clone, Copy)]
struct Held {
    backend: Backend,
    index: u32,
    up: bool,
}

/// A loaded services data plane: the `lwt_xmit` program routes to a service run, the service,
/// row, backend and flow tables, and the services set on it. Dropping it unloads the program
/// and its tables (routes that still name the program drop their packets: remove them first).
///
/// # Examples
///
/// ```no_run
/// use lwtun::netlink::Netlink;
/// use lwtun::peer::{Encap, EncapPeer};
/// use lwtun::service::{Backend, Services};
///
/// let mut nl = Netlink::open()?;
/// let eth0 = nl.device("eth0")?;
/// let local = "192.0.2.1".parse().unwrap();
/// let mut services = Services::load()?;
/// let vip = "10.96.0.10/32".parse().unwrap();
/// services.set(vip, &[
///     Backend::new(EncapPeer::new("192.0.2.11".parse().unwrap(), local, Encap::Ipip)),
///     Backend::new(EncapPeer::new("192.0.2.12".parse().unwrap(), local, Encap::Ipip)).weight(2),
/// ])?;
/// let _route = services.route(vip).device(&eth0).install(&mut nl)?;
/// // each flow to 10.96.0.10 now goes to one of the two, a third of them to .11
/// # Ok::<(), lwtun::Error>(())
/// ```
pub struct Services {
    entries: BTreeMap<IpNetwork, Entry>,
    probe_mark: (u32, u32),
    tables: MapOfMaps,
    services_v4: MapHandle,
    services_v6: MapHandle,
    backends: MapHandle,
    backend_stats: MapHandle,
    events: MapHandle,
    pick_out: MapHandle,
    rows_spec: InnerSpec,
    rows: u32,
    table_slots: Slots,
    backend_slots: Slots,
    generations: Vec<u32>,
    pick_lock: std::sync::Mutex<()>,
    xmit: LwtProgram,
    pick: OwnedFd,
    director: OwnedFd,
    // The maps and programs above are handles on what it loaded.
    #[allow(dead_code)]
    object: Object,
    // Last: the pins go (unless kept) and the owner lock is released after everything else.
    pin: Option<PinFolder>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("services", &self.entries.len())
            .field("rows", &self.rows)
            .field("program", &self.xmit.id())
            .finish()
    }
}

impl Services {
    /// A builder for sizes other than the defaults.
    pub fn builder() -> ServicesBuilder {
        ServicesBuilder::default()
    }

    /// Loads a data plane of the default sizes (64 services, 1024 backends, 65 536 flows,
    /// [`DEFAULT_ROWS`] rows per service).
    ///
    /// # Errors
    ///
    /// As [`ServicesBuilder::load`].
    pub fn load() -> Result<Services> {
        ServicesBuilder::default().load()
    }

    /// Leaves the pins in place when the data plane drops: a next owner
    /// ([`ServicesBuilder::pin`]) adopts every service, backend and remembered flow, while the
    /// routes' programs (which hold the same tables) go on forwarding meanwhile.
    ///
    /// ```no_run
    /// let mut services = lwtun::service::Services::builder().pin("/sys/fs/bpf/lwtun-lb").load()?;
    /// services.keep_pinned();
    /// drop(services); // the pins stay; a restarted process adopts them
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn keep_pinned(&mut self) {
        if let Some(pin) = &mut self.pin {
            pin.keep();
        }
    }

    /// The pin folder, if the data plane is pinned.
    pub fn pin_folder(&self) -> Option<&std::path::Path> {
        self.pin.as_ref().map(PinFolder::path)
    }

    /// Whether the load adopted a previous owner's pins.
    pub fn adopted(&self) -> bool {
        self.pin.as_ref().is_some_and(PinFolder::adopted)
    }

    /// Rebuilds what user space keeps from adopted tables: the services (tries), their
    /// backends (`backends`, by their `table`), the indexes in use and their generations.
    fn adopt(&mut self) -> Result<()> {
        let read = tables::read(
            &self.services_v4,
            &self.services_v6,
            &self.backends,
            self.generations.len() as u32,
        )?;
        if let Some(rows) = read.rows {
            self.rows = rows;
            self.rows_spec.max_entries = rows;
        }
        self.generations = read.generations;
        let used: Vec<u32> = read
            .services
            .values()
            .flat_map(|(_, held)| held.iter().map(|h| h.index))
            .collect();
        let in_use: Vec<u32> = read.services.keys().copied().collect();
        for (table, (prefix, backends)) in read.services {
            self.entries.insert(prefix, Entry { table, backends });
        }
        self.table_slots = Slots::adopted(self.table_slots.capacity(), &in_use);
        self.backend_slots = Slots::adopted(self.backend_slots.capacity(), &used);
        Ok(())
    }

    /// The `lwt_xmit` program a route to a service runs.
    pub fn xmit_program(&self) -> &LwtProgram {
        &self.xmit
    }

    /// The XDP director: attached to an interface (with [`crate::xdp::XdpAttachment`]), it
    /// encapsulates frames to a service's address arriving there to the backend their flow
    /// picks, from the same tables as the route's program, and sends them on by the route to
    /// the backend: back out (`XDP_TX`, glb-director's shape), redirected to the route's
    /// device, or, while the next hop has no neighbour entry, through the stack (which must
    /// forward). Frames to other addresses pass. Backends with a GRE checksum are not built
    /// here (dropped, counted in [`ServiceCounters::director_dropped`]).
    ///
    /// ```no_run
    /// use lwtun::xdp::{XdpAttachment, XdpOptions};
    /// # let services = lwtun::service::Services::load()?;
    /// # let mut nl = lwtun::netlink::Netlink::open()?;
    /// let eth0 = nl.device("eth0")?;
    /// let _director = XdpAttachment::attach(services.director_program(), &eth0, XdpOptions::default())?;
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn director_program(&self) -> std::os::fd::BorrowedFd<'_> {
        self.director.as_fd()
    }

    /// A route for `prefix` (a service's, or a wider one holding several) running the
    /// services program, with the headroom of the longest encapsulation
    /// ([`SERVICE_HEADROOM`]). Add the device (and gateway) the encapsulated packets leave
    /// by, and install it: the route is the caller's, removed when its handle drops.
    pub fn route(&self, prefix: IpNetwork) -> LwtRoute {
        LwtRoute::new(prefix)
            .program(Hook::Xmit, &self.xmit)
            .headroom(SERVICE_HEADROOM)
    }

    /// Serves `prefix` with `backends`: a new service, or a new backend list for one. The
    /// new row table is filled aside and swapped in whole; flows already going to a backend
    /// that stays keep it. A backend that stays keeps its counters and whether it is
    /// [drained](Services::drain).
    ///
    /// ```no_run
    /// # use lwtun::peer::{Encap, EncapPeer};
    /// # use lwtun::service::{Backend, Services};
    /// # let mut services = Services::load()?;
    /// let local = "192.0.2.1".parse().unwrap();
    /// let b = |r: &str| Backend::new(EncapPeer::new(r.parse().unwrap(), local, Encap::Ipip));
    /// let vip = "10.96.0.10/32".parse().unwrap();
    /// services.set(vip, &[b("192.0.2.11"), b("192.0.2.12")])?;
    /// services.set(vip, &[b("192.0.2.11"), b("192.0.2.12"), b("192.0.2.13")])?; // flows stay
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// InvalidInput for an invalid peer, two backends with the same remote and
    /// encapsulation, more backends of non-zero weight than rows, or a data plane full of
    /// services or backends; the kernel's error otherwise. On error the service is as it was.
    pub fn set(&mut self, prefix: IpNetwork, backends: &[Backend]) -> Result<()> {
        let op = "set service";
        let prefix = normalize(prefix);
        for b in backends {
            b.peer.validate()?;
        }
        let mut ids: Vec<Vec<u8>> = backends.iter().map(Backend::identity).collect();
        ids.sort();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::invalid_input(
                op,
                format!("{prefix}: two backends with the same remote and encapsulation"),
            ));
        }
        let weighted = backends.iter().filter(|b| b.weight > 0).count();
        if weighted as u64 > u64::from(self.rows) {
            return Err(Error::invalid_input(
                op,
                format!(
                    "{prefix}: {weighted} backends with a weight but {} rows: load with more rows",
                    self.rows
                ),
            ));
        }
        let old: Vec<Held> = self
            .entries
            .get(&prefix)
            .map(|e| e.backends.clone())
            .unwrap_or_default();
        // Backends that stay keep their index (and so their flows and counters).
        let mut held = Vec::with_capacity(backends.len());
        let mut taken = Vec::new();
        let undo = |s: &mut Self, taken: &[u32]| {
            for &i in taken {
                s.release_backend(i);
            }
        };
        for b in backends {
            let kept = old
                .iter()
                .find(|h| h.backend.identity() == b.identity())
                .copied();
            let h = match kept {
                Some(h) => Held { backend: *b, ..h },
                None => match self.backend_slots.take(op) {
                    Ok(index) => {
                        taken.push(index);
                        Held {
                            backend: *b,
                            index,
                            up: true,
                        }
                    }
                    Err(e) => {
                        undo(self, &taken);
                        return Err(e.with_hint(format!(
                            "the data plane holds {} backends: load it with \
                             Services::builder().backends(..)",
                            self.backend_slots.capacity()
                        )));
                    }
                },
            };
            held.push(h);
        }
        let result = self.publish(prefix, &held, &taken, &old);
        if result.is_err() {
            undo(self, &taken);
        }
        result
    }

    /// Writes the backends, the new row table and (for a new service) the service entry, in
    /// the order a packet can follow at every step; then retires the backends that went.
    fn publish(
        &mut self,
        prefix: IpNetwork,
        held: &[Held],
        taken: &[u32],
        old: &[Held],
    ) -> Result<()> {
        let op = "set service";
        let new_service = !self.entries.contains_key(&prefix);
        let table = match self.entries.get(&prefix) {
            Some(e) => e.table,
            None => self.table_slots.take(op).map_err(|e| {
                e.with_hint(format!(
                    "the data plane holds {} services: load it with Services::builder().services(..)",
                    self.table_slots.capacity()
                ))
            })?,
        };
        let mut written_backends = Ok(());
        for h in held {
            let fresh = taken.contains(&h.index);
            if fresh {
                self.generations[h.index as usize] =
                    self.generations[h.index as usize].wrapping_add(1);
                written_backends =
                    crate::family::zero_percpu::<lwtun_peer_stats>(&self.backend_stats, h.index);
            }
            written_backends = written_backends.and_then(|()| self.write_backend(h, table));
            if written_backends.is_err() {
                break;
            }
        }
        if let Err(e) = written_backends {
            if new_service {
                self.table_slots.release(table);
            }
            return Err(e);
        }
        let swapped = self.swap_rows(prefix, table, held);
        let written = swapped.and_then(|()| {
            if new_service {
                self.write_service(prefix, table)
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            if new_service {
                let _ = self.tables.remove(&table.to_ne_bytes());
                self.table_slots.release(table);
            }
            return Err(e);
        }
        for gone in old
            .iter()
            .filter(|o| !held.iter().any(|h| h.index == o.index))
        {
            self.release_backend(gone.index);
        }
        self.entries.insert(
            prefix,
            Entry {
                table,
                backends: held.to_vec(),
            },
        );
        Ok(())
    }

    fn write_backend(&self, h: &Held, table: u32) -> Result<()> {
        let peer: lwtun_peer = abi::from_bytes(abi::as_bytes(&h.backend.peer.to_abi(h.index)))
            .ok_or_else(|| Error::other(ErrorKind::Kernel, "write backend", "peer layout"))?;
        let v = lwtun_backend {
            peer,
            state: if h.up { BACKEND_UP } else { BACKEND_DRAINED },
            generation: self.generations[h.index as usize],
            table,
            weight: h.backend.weight,
        };
        self.backends
            .update(&h.index.to_ne_bytes(), abi::as_bytes(&v), MapFlags::ANY)
            .map_err(|e| Error::bpf("write backend", e).with_object(h.backend.peer.to_string()))
    }

    /// Marks backend `index` out of service (its remembered flows pick rows again) and frees
    /// the index.
    fn release_backend(&mut self, index: u32) {
        let gone = lwtun_backend::default();
        let _ = self
            .backends
            .update(&index.to_ne_bytes(), abi::as_bytes(&gone), MapFlags::ANY);
        self.backend_slots.release(index);
    }

    /// Builds the row table of `held` (the backends in service and of non-zero weight) aside
    /// and swaps it in at `table`.
    fn swap_rows(&self, prefix: IpNetwork, table: u32, held: &[Held]) -> Result<()> {
        let live: Vec<&Held> = held
            .iter()
            .filter(|h| h.up && h.backend.weight > 0)
            .collect();
        let ids: Vec<(Vec<u8>, u32)> = live
            .iter()
            .map(|h| (h.backend.identity(), h.backend.weight))
            .collect();
        let rows = maglev::fill(&ids, self.rows);
        let keys: Vec<u8> = (0..self.rows).flat_map(u32::to_ne_bytes).collect();
        let values: Vec<u8> = rows
            .iter()
            .map(|&r| {
                if r == maglev::NO_BACKEND {
                    maglev::NO_BACKEND
                } else {
                    live[r as usize].index
                }
            })
            .flat_map(u32::to_ne_bytes)
            .collect();
        let new = self.rows_spec.create(&format!("svc_rows_{table}"))?;
        new.insert_batch(&keys, &values, self.rows)
            .map_err(|e| e.with_object(prefix.to_string()))?;
        self.tables.swap(&table.to_ne_bytes(), &new)?;
        Ok(())
    }

    fn write_service(&self, prefix: IpNetwork, table: u32) -> Result<()> {
        let v = lwtun_service {
            table,
            rows: self.rows,
        };
        let map = if prefix.is_ipv4() {
            &self.services_v4
        } else {
            &self.services_v6
        };
        map.update(&lpm::key(&prefix), abi::as_bytes(&v), MapFlags::ANY)
            .map_err(|e| {
                crate::family::table_write_error("set service", e, "services", map)
                    .with_object(prefix.to_string())
            })
    }

    /// Stops serving `prefix`: its packets are dropped (and counted as missed) from now on.
    /// Returns its backends.
    ///
    /// # Errors
    ///
    /// NotFound when no service has that prefix; the kernel's error otherwise.
    pub fn remove(&mut self, prefix: IpNetwork) -> Result<Vec<Backend>> {
        let op = "remove service";
        let prefix = normalize(prefix);
        let entry = self
            .entries
            .get(&prefix)
            .ok_or_else(|| Error::not_found(op, format!("service {prefix}")))?;
        let map = if prefix.is_ipv4() {
            &self.services_v4
        } else {
            &self.services_v6
        };
        match map.delete(&lpm::key(&prefix)) {
            Ok(()) => {}
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::bpf(op, e).with_object(prefix.to_string())),
        }
        let table = entry.table;
        let _ = self.tables.remove(&table.to_ne_bytes());
        self.table_slots.release(table);
        let entry = self.entries.remove(&prefix).unwrap_or(Entry {
            table,
            backends: Vec::new(),
        });
        for h in &entry.backends {
            self.release_backend(h.index);
        }
        Ok(entry.backends.iter().map(|h| h.backend).collect())
    }

    /// The services: each prefix and its backends.
    pub fn iter(&self) -> impl Iterator<Item = (IpNetwork, Vec<Backend>)> + '_ {
        self.entries
            .iter()
            .map(|(p, e)| (*p, e.backends.iter().map(|h| h.backend).collect()))
    }

    /// The backends of the service of `prefix`, each with whether it is in service.
    pub fn backends(&self, prefix: IpNetwork) -> Option<Vec<(Backend, bool)>> {
        self.entries
            .get(&normalize(prefix))
            .map(|e| e.backends.iter().map(|h| (h.backend, h.up)).collect())
    }

    /// Takes the backend with remote `remote` out of `prefix`'s service: its rows go to the
    /// others (a new table, swapped in), and the flows it had pick rows again. Flows of the
    /// other backends stay where they are. A health check's answer to a backend that stopped
    /// answering.
    ///
    /// ```no_run
    /// # let mut services = lwtun::service::Services::load()?;
    /// let vip = "10.96.0.10/32".parse().unwrap();
    /// services.drain(vip, "192.0.2.12".parse().unwrap())?;   // stopped answering
    /// services.restore(vip, "192.0.2.12".parse().unwrap())?; // answers again
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// NotFound for an unknown service or backend; the kernel's error otherwise (the backend
    /// is then still in service).
    pub fn drain(&mut self, prefix: IpNetwork, remote: IpAddr) -> Result<()> {
        self.set_up(prefix, remote, false)
    }

    /// Puts a [drained](Services::drain) backend back into service: it gets its rows again.
    ///
    /// # Errors
    ///
    /// As [`Services::drain`].
    pub fn restore(&mut self, prefix: IpNetwork, remote: IpAddr) -> Result<()> {
        self.set_up(prefix, remote, true)
    }

    fn set_up(&mut self, prefix: IpNetwork, remote: IpAddr, up: bool) -> Result<()> {
        let op = if up {
            "restore backend"
        } else {
            "drain backend"
        };
        let prefix = normalize(prefix);
        let entry = self
            .entries
            .get(&prefix)
            .ok_or_else(|| Error::not_found(op, format!("service {prefix}")))?;
        let i = entry
            .backends
            .iter()
            .position(|h| h.backend.peer.remote == remote)
            .ok_or_else(|| Error::not_found(op, format!("backend {remote} of service {prefix}")))?;
        let mut held = entry.backends.clone();
        if held[i].up == up {
            return Ok(());
        }
        held[i].up = up;
        let table = entry.table;
        if up {
            // In service before its rows name it.
            self.write_backend(&held[i], table)?;
            self.swap_rows(prefix, table, &held)?;
        } else {
            // Out of the rows before it is out of service: no packet finds a row naming a
            // backend that refuses it.
            self.swap_rows(prefix, table, &held)?;
            self.write_backend(&held[i], table)?;
        }
        if let Some(e) = self.entries.get_mut(&prefix) {
            e.backends = held;
        }
        Ok(())
    }

    /// The counters of each backend of `prefix`'s service.
    ///
    /// # Errors
    ///
    /// NotFound for an unknown service; the kernel's error reading the counters.
    pub fn backend_stats(&self, prefix: IpNetwork) -> Result<Vec<(Backend, PeerStats)>> {
        let op = "read backend counters";
        let prefix = normalize(prefix);
        let entry = self
            .entries
            .get(&prefix)
            .ok_or_else(|| Error::not_found(op, format!("service {prefix}")))?;
        entry
            .backends
            .iter()
            .map(|h| {
                Ok((
                    h.backend,
                    tables::backend_counters(&self.backend_stats, h.index)?,
                ))
            })
            .collect()
    }

    /// The table-wide counters.
    ///
    /// # Errors
    ///
    /// The kernel's error reading the map.
    pub fn counters(&self) -> Result<ServiceCounters> {
        tables::counters(&self.events)
    }

    /// The backend a new flow of `frame` (an Ethernet frame carrying the IPv4 or IPv6 packet)
    /// gets, computed by the data plane's own code under `BPF_PROG_TEST_RUN` (the flow table
    /// is neither read nor written); `None` when no service serves its destination or the
    /// service has no backend in service.
    ///
    /// # Errors
    ///
    /// InvalidInput for a frame shorter than an Ethernet header; the kernel's error otherwise.
    pub fn pick(&self, frame: &[u8]) -> Result<Option<Pick>> {
        let op = "pick backend";
        let _one_at_a_time = self.pick_lock.lock().unwrap_or_else(|p| p.into_inner());
        let run = crate::tc::test_run(self.pick.as_fd(), frame, 1)?;
        if run.verdict != 0 {
            return Ok(None);
        }
        let bytes = self
            .pick_out
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::bpf(op, e))?
            .unwrap_or_default();
        let v: lwtun_service_pick = abi::from_bytes(&bytes)
            .ok_or_else(|| Error::other(ErrorKind::Kernel, op, "pick entry of the wrong size"))?;
        if v.found == 0 {
            return Ok(None);
        }
        let backend = self
            .entries
            .values()
            .filter(|e| e.table == v.table)
            .flat_map(|e| e.backends.iter())
            .find(|h| h.index == v.backend)
            .map(|h| h.backend.peer);
        Ok(backend.map(|backend| Pick {
            backend,
            row: v.row,
            hash: v.hash,
        }))
    }
}
