//! A data plane of peer tables only: [`TablesOnly`], a loaded [`Tunnel`] (its BPF programs
//! and LPM tables, pinned if asked) with no routes and no decap.
//!
//! The agent's table work (the fleet in etcd → batches into the kernel's LPM tries) is the same
//! as with a [`DataPlane`](crate::dataplane::DataPlane); what is left out is per-host
//! plumbing (an underlay device, routes, a decap at tc ingress) whose cost does not grow with
//! the fleet. Many agents fit in one process and one namespace this way: the fleet-scale test
//! runs 100 of them against one etcd, each writing its own kernel tables.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use lwtun::tunnel::Tunnel;

use crate::dataplane::{apply_to, PeerSink};
use crate::fleet::{Diff, PeerMap};
use crate::AgentError;

/// A host's peer tables without routes or decap: see the module docs.
///
/// The endpoints set by [`PeerSink::set_remote_endpoints`] are kept (and reported back) but
/// open nothing: there is no decap.
///
/// # Examples
///
/// ```no_run
/// use lwtun_agent::dataplane::PeerSink;
/// use lwtun_agent::tables::TablesOnly;
///
/// let tables = TablesOnly::open(131_072, Some("/sys/fs/bpf/sim/h1".as_ref()))?;
/// assert!(tables.current().is_empty());
/// # Ok::<(), lwtun_agent::AgentError>(())
/// ```
#[derive(Debug)]
pub struct TablesOnly {
    tunnel: Tunnel,
    endpoints: BTreeSet<IpAddr>,
}

impl TablesOnly {
    /// Loads a tunnel of `capacity` peers per family, its tables pinned in `pin` if given
    /// (`bpftool map dump pinned PIN/peers_v4`).
    ///
    /// # Errors
    ///
    /// [`AgentError::DataPlane`] with lwtun's error (privileges, a bad capacity, the
    /// verifier).
    pub fn open(capacity: u32, pin: Option<&Path>) -> Result<Self, AgentError> {
        let mut builder = Tunnel::builder().capacity(capacity);
        if let Some(pin) = pin {
            builder = builder.pin(pin);
        }
        Ok(TablesOnly {
            tunnel: builder.load()?,
            endpoints: BTreeSet::new(),
        })
    }

    /// The tunnel (its peer table, map ids, pin folder).
    pub fn tunnel(&self) -> &Tunnel {
        &self.tunnel
    }
}

impl PeerSink for TablesOnly {
    fn current(&self) -> PeerMap {
        self.tunnel.peers().iter().map(|(p, e)| (p, *e)).collect()
    }

    fn apply(&mut self, diff: &Diff) -> Result<(), AgentError> {
        apply_to(self.tunnel.peers_mut(), diff)
    }

    fn set_remote_endpoints(&mut self, endpoints: &BTreeSet<IpAddr>) -> Result<(), AgentError> {
        self.endpoints = endpoints.clone();
        Ok(())
    }

    fn remote_endpoints(&self) -> BTreeSet<IpAddr> {
        self.endpoints.clone()
    }
}
