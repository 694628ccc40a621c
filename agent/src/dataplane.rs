//! Where the agent writes the table: [`PeerSink`], implemented by the lwtun data plane
//! ([`DataPlane`]) and by a table in memory ([`MemoryTable`], for tests and dry runs).
//!
//! A [`DataPlane`] keeps its routes in place (a route deleted from outside is added again at
//! once, [`Tunnel::keep_routes`]) and checks on demand that its decap is still attached
//! ([`PeerSink::check`]); see [`crate::repair`].

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use lwtun::decap::{Decap, DecapPeer};
use lwtun::device::Device;
use lwtun::monitor::Event;
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::peer::{Encap, PeerTable};
use lwtun::route::lwt_routes;
use lwtun::tc::{self, TcDirection};
use lwtun::tunnel::{Tunnel, WORST_CASE_ENCAP};

use crate::fleet::{Diff, PeerMap};
use crate::repair::Repair;
use crate::AgentError;

/// A peer table the agent keeps equal to the fleet.
pub trait PeerSink {
    /// What the table holds now.
    fn current(&self) -> PeerMap;

    /// Applies `diff` (removals first, then replacements, then additions).
    ///
    /// # Errors
    ///
    /// The first edit refused; the next sync retries what is still missing.
    fn apply(&mut self, diff: &Diff) -> Result<(), AgentError>;

    /// The outer sources accepted for decapsulation: the other hosts' endpoints.
    ///
    /// # Errors
    ///
    /// The first change refused.
    fn set_remote_endpoints(&mut self, endpoints: &BTreeSet<IpAddr>) -> Result<(), AgentError>;

    /// The endpoints set last.
    fn remote_endpoints(&self) -> BTreeSet<IpAddr>;

    /// What was put back at once since last asked (routes deleted from outside and added
    /// again). Cheap: the agent asks often (every [`ROUTE_REPAIR_POLL`]). None by default.
    fn route_repairs(&mut self) -> Vec<Repair> {
        Vec::new()
    }

    /// Looks at what only a full check shows (the kernel's peer tables equal to what was
    /// written, the decap still attached, its accepted sources still there), puts back what it
    /// can, and says what it did. What it cannot put back
    /// itself (decap sources) it forgets, so the next [`PeerSink::set_remote_endpoints`] adds
    /// it again. The agent calls it at every reconcile. Nothing by default.
    fn check(&mut self) -> Vec<Repair> {
        Vec::new()
    }
}

/// How often the agent asks [`PeerSink::route_repairs`].
pub const ROUTE_REPAIR_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// A peer table in memory: what a [`DataPlane`] would hold, without the kernel.
///
/// # Examples
///
/// ```
/// use lwtun_agent::dataplane::{MemoryTable, PeerSink};
/// use lwtun_agent::fleet::Diff;
///
/// let mut t = MemoryTable::default();
/// t.apply(&Diff::default())?;
/// assert!(t.current().is_empty());
/// # Ok::<(), lwtun_agent::AgentError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryTable {
    /// The peers.
    pub peers: PeerMap,
    /// The accepted outer sources.
    pub endpoints: BTreeSet<IpAddr>,
    /// Calls of [`PeerSink::apply`] with a non-empty diff.
    pub batches: usize,
}

impl PeerSink for MemoryTable {
    fn current(&self) -> PeerMap {
        self.peers.clone()
    }

    fn apply(&mut self, diff: &Diff) -> Result<(), AgentError> {
        if !diff.is_empty() {
            self.batches += 1;
        }
        for p in &diff.remove {
            self.peers.remove(p);
        }
        for (p, e) in diff.replace.iter().chain(&diff.insert) {
            self.peers.insert(*p, *e);
        }
        Ok(())
    }

    fn set_remote_endpoints(&mut self, endpoints: &BTreeSet<IpAddr>) -> Result<(), AgentError> {
        self.endpoints = endpoints.clone();
        Ok(())
    }

    fn remote_endpoints(&self) -> BTreeSet<IpAddr> {
        self.endpoints.clone()
    }
}

/// Applies `diff` to a tunnel's peer table: removals, replacements, additions, in batches.
pub(crate) fn apply_to(peers: &mut PeerTable, diff: &Diff) -> Result<(), AgentError> {
    if !diff.remove.is_empty() {
        peers.remove_batch(&diff.remove)?;
    }
    for (p, e) in &diff.replace {
        peers.replace(*p, *e)?;
    }
    if !diff.insert.is_empty() {
        peers.insert_batch(&diff.insert)?;
    }
    Ok(())
}

/// What the data plane of one host is made of.
#[derive(Debug, Clone)]
pub struct DataPlaneConfig {
    /// The named network namespace of the data plane (`None`: the agent's own). The agent's
    /// process stays where it started (its etcd connection too).
    pub netns: Option<String>,
    /// The underlay device: tunnel routes leave by it, the decap runs at its tc ingress.
    pub device: String,
    /// This host's outer address (the source of encapsulated packets, decapsulated for).
    pub endpoint: IpAddr,
    /// How the other hosts encapsulate towards this one (a UDP port is opened in the decap).
    pub encap: Encap,
    /// This host's inner addresses (one per family): the preferred source of the routes.
    pub sources: Vec<IpAddr>,
    /// Prefixes routed into the tunnel (the fleet's service space); a peer outside every
    /// steered prefix gets no traffic.
    pub steer: Vec<IpNetwork>,
    /// Peers per table.
    pub capacity: u32,
    /// Pin folder of the peer tables (`bpftool map dump pinned DIR/peers_v4`).
    pub pin: Option<PathBuf>,
}

/// A host's lwtun data plane: a [`Tunnel`] with routes for the steered prefixes out of the
/// underlay device, and a [`Decap`] at the device's tc ingress, all in the configured
/// namespace. Dropping it removes the routes and detaches the programs.
///
/// The routes are kept in place ([`Tunnel::keep_routes`]): one deleted by someone else is
/// added again at once, and reported by [`PeerSink::route_repairs`]. [`PeerSink::check`]
/// re-attaches a decap detached from outside.
///
/// # Examples
///
/// ```no_run
/// use lwtun::peer::{Encap, PeerTable};
/// use lwtun_agent::dataplane::{DataPlane, DataPlaneConfig};
///
/// let dp = DataPlane::open(&DataPlaneConfig {
///     netns: Some("host1".into()),
///     device: "eth0".into(),
///     endpoint: "10.99.0.1".parse().unwrap(),
///     encap: Encap::Udp { port: 6081 },
///     sources: vec!["10.200.1.1".parse().unwrap()],
///     steer: vec!["10.200.0.0/16".parse().unwrap()],
///     capacity: 65_536,
///     pin: None,
/// })?;
/// # Ok::<(), lwtun_agent::AgentError>(())
/// ```
pub struct DataPlane {
    // Drop order: the tunnel (its routes) before the decap and the netlink socket.
    tunnel: Tunnel,
    decap: Decap,
    /// The kernel id of the decap program (to tell whether it is still on the device's tc
    /// ingress); `None` when it could not be read after attaching.
    decap_id: Option<u32>,
    nl: Netlink,
    device: Device,
    /// The steered prefixes (re-steered by [`PeerSink::check`] when their route is gone).
    steer: Vec<IpNetwork>,
    endpoints: BTreeSet<IpAddr>,
    /// This host's own endpoints: the decap's local addresses.
    locals: BTreeSet<IpAddr>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("tunnel", &self.tunnel)
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl DataPlane {
    /// Loads the tunnel and the decap and installs the routes. Routes for the steered prefixes
    /// that are there already (left by an agent that died) are replaced in place
    /// ([`Tunnel::steer_replace`]), so traffic through them does not stop.
    ///
    /// # Errors
    ///
    /// [`AgentError::DataPlane`] with lwtun's error (missing namespace or device, privileges,
    /// a route that exists already).
    pub fn open(config: &DataPlaneConfig) -> Result<Self, AgentError> {
        let ns = match &config.netns {
            Some(name) => NetNs::open(name)?,
            None => NetNs::current()?,
        };
        let device = ns.device(&config.device)?;
        let mut nl = Netlink::open_in(&ns)?;
        let mut builder = Tunnel::builder().capacity(config.capacity);
        for s in &config.sources {
            builder = builder.source(*s);
        }
        if let Some(pin) = &config.pin {
            builder = builder.pin(pin);
        }
        let mut tunnel = builder.load()?;
        // An agent that died (SIGKILL, crash) leaves its routes behind, still running its old
        // programs and carrying traffic: each is taken over in one replace (never a moment
        // without the route), and one this agent had not made is installed.
        for prefix in &config.steer {
            let route = tunnel
                .route(*prefix)
                .device(&device)
                .headroom(WORST_CASE_ENCAP);
            tunnel.steer_replace(&mut nl, route)?;
        }
        // From here on a route deleted from outside is added again at once.
        tunnel.keep_routes()?;
        let mut decap = Decap::load()?;
        decap.add_local(config.endpoint)?;
        if let Encap::Udp { port } = config.encap {
            decap.add_udp_port(port)?;
        }
        let decap_id = attach_decap(&mut decap, &device)?;
        Ok(DataPlane {
            tunnel,
            decap,
            decap_id,
            nl,
            device,
            steer: config.steer.clone(),
            endpoints: BTreeSet::new(),
            locals: BTreeSet::from([config.endpoint]),
        })
    }

    /// Whether the decap program is still on the device's tc ingress (true when its id is
    /// unknown: then it cannot be told).
    fn decap_attached(&self) -> Result<bool, AgentError> {
        let Some(id) = self.decap_id else {
            return Ok(true);
        };
        Ok(tc::attached(&self.device, TcDirection::Ingress)?
            .iter()
            .any(|p| p.program_id == id))
    }

    /// Steers again the prefixes whose route is gone without the route keeper seeing it (IPv4
    /// routes the kernel flushes silently when their device goes down), or that it could not
    /// put back then (the device was down).
    fn resteer(&mut self) -> Vec<Repair> {
        let present = match lwt_routes(&mut self.nl) {
            Ok(routes) => routes,
            Err(e) => {
                return vec![Repair::RouteNotRestored {
                    route: "(steered routes)".into(),
                    error: format!("list routes: {e}"),
                }]
            }
        };
        let mut done = Vec::new();
        for prefix in self.steer.clone() {
            let table = self
                .tunnel
                .routes()
                .iter()
                .rev()
                .find(|r| r.route().dst == prefix)
                .map(|r| r.route().table);
            if present
                .iter()
                .any(|r| r.dst == prefix && Some(r.table) == table)
            {
                continue;
            }
            let route = self
                .tunnel
                .route(prefix)
                .device(&self.device)
                .headroom(WORST_CASE_ENCAP);
            let name = format!("{prefix} dev {}", self.device);
            done.push(match self.tunnel.steer_replace(&mut self.nl, route) {
                Ok(()) => Repair::RouteResteered { route: name },
                Err(e) => Repair::RouteNotRestored {
                    route: name,
                    error: e.to_string(),
                },
            });
        }
        done
    }

    /// The decap re-attached, after someone detached it.
    fn reattach_decap(&mut self) -> Result<(), AgentError> {
        // The stale attachment (its link detached, its filter deleted) goes first, whatever
        // the kernel says of it: it no longer attaches anything.
        let _ = self.decap.detach(&self.device);
        self.decap_id = attach_decap(&mut self.decap, &self.device)?;
        Ok(())
    }

    /// Decapsulates for `addr` too: a second endpoint of this host, of the other address family
    /// than [`DataPlaneConfig::endpoint`] (see [`crate::fleet::Fleet::with_endpoint`]).
    ///
    /// # Errors
    ///
    /// [`AgentError::DataPlane`] when the decap refuses the address.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(dp: &mut lwtun_agent::dataplane::DataPlane) -> Result<(), lwtun_agent::AgentError> {
    /// dp.add_endpoint("fd99::1".parse().unwrap())?;
    /// # Ok(()) }
    /// ```
    pub fn add_endpoint(&mut self, addr: IpAddr) -> Result<(), AgentError> {
        self.decap.add_local(addr)?;
        self.locals.insert(addr);
        Ok(())
    }

    /// The tunnel (its peer table, routes, map ids).
    pub fn tunnel(&self) -> &Tunnel {
        &self.tunnel
    }

    /// The decap (its counters).
    pub fn decap(&self) -> &Decap {
        &self.decap
    }
}

impl PeerSink for DataPlane {
    fn current(&self) -> PeerMap {
        self.tunnel.peers().iter().map(|(p, e)| (p, *e)).collect()
    }

    fn apply(&mut self, diff: &Diff) -> Result<(), AgentError> {
        apply_to(self.tunnel.peers_mut(), diff)
    }

    fn set_remote_endpoints(&mut self, endpoints: &BTreeSet<IpAddr>) -> Result<(), AgentError> {
        for gone in self
            .endpoints
            .difference(endpoints)
            .copied()
            .collect::<Vec<_>>()
        {
            self.decap.remove_peer(DecapPeer::host(gone).prefix)?;
            self.endpoints.remove(&gone);
        }
        for new in endpoints.difference(&self.endpoints.clone()) {
            self.decap.add_peer(DecapPeer::host(*new))?;
            self.endpoints.insert(*new);
        }
        Ok(())
    }

    fn remote_endpoints(&self) -> BTreeSet<IpAddr> {
        self.endpoints.clone()
    }

    fn route_repairs(&mut self) -> Vec<Repair> {
        self.tunnel
            .route_events()
            .into_iter()
            .filter_map(|e| match e.event {
                Event::RouteRestored { route, after } => Some(Repair::RouteRestored {
                    route: route.to_string(),
                    after,
                }),
                Event::RouteNotRestored { route, error } => Some(Repair::RouteNotRestored {
                    route: route.to_string(),
                    error,
                }),
                _ => None,
            })
            .collect()
    }

    fn check(&mut self) -> Vec<Repair> {
        let mut done = self.resteer();
        // The kernel tables against the tunnel's copy: bpftool edits (no event says so).
        match self.tunnel.peers_mut().restore() {
            Ok(0) => {}
            Ok(edits) => done.push(Repair::PeersRestored { edits }),
            Err(e) => done.push(Repair::PeersNotRestored {
                error: e.to_string(),
            }),
        }
        match self.decap_attached() {
            Ok(true) => {}
            Ok(false) => match self.reattach_decap() {
                Ok(()) => done.push(Repair::DecapReattached {
                    device: self.device.to_string(),
                }),
                Err(e) => done.push(Repair::DecapNotRepaired {
                    error: format!("re-attach at tc ingress of {}: {e}", self.device),
                }),
            },
            Err(e) => done.push(Repair::DecapNotRepaired {
                error: format!("list tc ingress programs of {}: {e}", self.device),
            }),
        }
        match self.decap.peers() {
            Ok(peers) => {
                let have: BTreeSet<IpAddr> = peers
                    .iter()
                    .filter(|p| p.prefix == DecapPeer::host(p.prefix.ip()).prefix)
                    .map(|p| p.prefix.ip())
                    .collect();
                let missing = self.endpoints.difference(&have).count();
                if missing > 0 {
                    self.endpoints.retain(|e| have.contains(e));
                    done.push(Repair::DecapPeersRestored { missing });
                }
            }
            Err(e) => done.push(Repair::DecapNotRepaired {
                error: format!("read decap sources: {e}"),
            }),
        }
        match self.decap.locals() {
            Ok(have) => {
                let missing: Vec<IpAddr> = self
                    .locals
                    .iter()
                    .filter(|a| !have.contains(a))
                    .copied()
                    .collect();
                let mut back = Vec::new();
                for addr in missing {
                    match self.decap.add_local(addr) {
                        Ok(()) => back.push(addr),
                        Err(e) => done.push(Repair::DecapNotRepaired {
                            error: format!("add local address {addr} again: {e}"),
                        }),
                    }
                }
                if !back.is_empty() {
                    done.push(Repair::DecapLocalsRestored { addresses: back });
                }
            }
            Err(e) => done.push(Repair::DecapNotRepaired {
                error: format!("read decap local addresses: {e}"),
            }),
        }
        done
    }
}

/// Attaches `decap` at `device`'s tc ingress and returns the kernel id of its program there:
/// the program that was not on the hook before (`None` when that cannot be told).
fn attach_decap(decap: &mut Decap, device: &Device) -> Result<Option<u32>, AgentError> {
    let before: BTreeSet<u32> = tc::attached(device, TcDirection::Ingress)
        .map(|ps| ps.iter().map(|p| p.program_id).collect())
        .unwrap_or_default();
    decap.attach(device)?;
    let after = tc::attached(device, TcDirection::Ingress).unwrap_or_default();
    let mut new = after
        .iter()
        .map(|p| p.program_id)
        .filter(|id| !before.contains(id));
    Ok(match (new.next(), new.next()) {
        (Some(id), None) => Some(id),
        _ => None,
    })
}

/// A sink shared with whoever reads it while the agent writes it (the metrics endpoint): each
/// call holds the lock for its own duration.
///
/// # Examples
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use lwtun_agent::dataplane::{MemoryTable, PeerSink};
/// use lwtun_agent::fleet::Diff;
///
/// let mut shared = Arc::new(Mutex::new(MemoryTable::default()));
/// shared.apply(&Diff::default())?;
/// assert!(shared.current().is_empty());
/// # Ok::<(), lwtun_agent::AgentError>(())
/// ```
impl<S: PeerSink> PeerSink for std::sync::Arc<std::sync::Mutex<S>> {
    fn current(&self) -> PeerMap {
        self.lock().unwrap_or_else(|e| e.into_inner()).current()
    }

    fn apply(&mut self, diff: &Diff) -> Result<(), AgentError> {
        self.lock().unwrap_or_else(|e| e.into_inner()).apply(diff)
    }

    fn set_remote_endpoints(&mut self, endpoints: &BTreeSet<IpAddr>) -> Result<(), AgentError> {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_remote_endpoints(endpoints)
    }

    fn remote_endpoints(&self) -> BTreeSet<IpAddr> {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .remote_endpoints()
    }

    // Every method, defaulted ones too: a default here would hide the shared sink's own.
    fn route_repairs(&mut self) -> Vec<Repair> {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .route_repairs()
    }

    fn check(&mut self) -> Vec<Repair> {
        self.lock().unwrap_or_else(|e| e.into_inner()).check()
    }
}
