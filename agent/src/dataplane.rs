//! Where the agent writes the table: [`PeerSink`], implemented by the lwtun data plane
//! ([`DataPlane`]) and by a table in memory ([`MemoryTable`], for tests and dry runs).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use lwtun::decap::{Decap, DecapPeer};
use lwtun::device::Device;
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::peer::{Encap, PeerTable};
use lwtun::tunnel::{Tunnel, WORST_CASE_ENCAP};

use crate::fleet::{Diff, PeerMap};
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
}

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
    _nl: Netlink,
    _device: Device,
    endpoints: BTreeSet<IpAddr>,
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
        let mut decap = Decap::load()?;
        decap.add_local(config.endpoint)?;
        if let Encap::Udp { port } = config.encap {
            decap.add_udp_port(port)?;
        }
        decap.attach(&device)?;
        Ok(DataPlane {
            tunnel,
            decap,
            _nl: nl,
            _device: device,
            endpoints: BTreeSet::new(),
        })
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
}
