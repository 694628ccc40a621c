//! Reading a services data plane's tables: the services and their backends as the maps hold
//! them (what an adopting owner rebuilds and [`super::PinnedServices`] shows), and the
//! counters.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::{Backend, Held, ServiceCounters, BACKEND_DRAINED, BACKEND_UP};
use crate::abi;
use crate::error::{Error, ErrorKind, Result};
use crate::family::lpm;
use crate::peer::{EncapPeer, PeerStats};
use crate::skel::lwt_service::types::{lwtun_backend, lwtun_service};

const EV_MISS: u32 = 0;
const EV_NOT_IP: u32 = 1;
const EV_NO_BACKEND: u32 = 2;
const EV_FLOW_HIT: u32 = 3;
const EV_FLOW_NEW: u32 = 4;
const EV_PROBE: u32 = 5;
const EV_DIRECTOR_TX: u32 = 6;
const EV_DIRECTOR_REDIRECT: u32 = 7;
const EV_DIRECTOR_PASS: u32 = 8;
const EV_DIRECTOR_DROP: u32 = 9;

/// What the tables hold.
pub(super) struct Read {
    /// By row table index: the service's prefix and its backends (by index).
    pub(super) services: BTreeMap<u32, (IpNetwork, Vec<Held>)>,
    /// The services' rows (None without a service).
    pub(super) rows: Option<u32>,
    /// Every backend index's generation.
    pub(super) generations: Vec<u32>,
}

/// Reads the services (tries `v4`, `v6`) and their backends (`backends`, `capacity` entries).
pub(super) fn read(
    v4: &MapHandle,
    v6: &MapHandle,
    backends: &MapHandle,
    capacity: u32,
) -> Result<Read> {
    let op = "read services";
    let mut services = BTreeMap::new();
    let mut rows = None;
    for map in [v4, v6] {
        for key in map.keys() {
            let (Some(prefix), Some(value)) = (
                lpm::decode(&key),
                map.lookup(&key, MapFlags::ANY)
                    .map_err(|e| Error::bpf(op, e))?,
            ) else {
                continue;
            };
            let svc: lwtun_service = abi::from_bytes(&value).ok_or_else(|| {
                Error::other(ErrorKind::Kernel, op, "service entry of the wrong size")
            })?;
            rows = Some(svc.rows);
            services.insert(svc.table, (prefix, Vec::new()));
        }
    }
    let mut generations = vec![0; capacity as usize];
    for index in 0..capacity {
        let Some(bytes) = backends
            .lookup(&index.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::bpf(op, e))?
        else {
            continue;
        };
        let b: lwtun_backend = abi::from_bytes(&bytes).ok_or_else(|| {
            Error::other(ErrorKind::Kernel, op, "backend entry of the wrong size")
        })?;
        generations[index as usize] = b.generation;
        if b.state != BACKEND_UP && b.state != BACKEND_DRAINED {
            continue;
        }
        let peer =
            abi::from_bytes::<crate::skel::lwt_encap::types::lwtun_peer>(abi::as_bytes(&b.peer))
                .and_then(|p| EncapPeer::from_abi(&p))
                .ok_or_else(|| {
                    Error::other(
                        ErrorKind::Kernel,
                        op,
                        format!("backend {index}: unknown encap"),
                    )
                })?;
        if let Some((_, held)) = services.get_mut(&b.table) {
            held.push(Held {
                backend: Backend {
                    peer,
                    weight: b.weight,
                },
                index,
                up: b.state == BACKEND_UP,
            });
        }
    }
    Ok(Read {
        services,
        rows,
        generations,
    })
}

/// Backend `index`'s counters, summed over CPUs.
pub(super) fn backend_counters(stats: &MapHandle, index: u32) -> Result<PeerStats> {
    crate::peer::sum_stats(stats, index, "read backend counters")
}

/// The table-wide counters in `events`.
pub(super) fn counters(events: &MapHandle) -> Result<ServiceCounters> {
    let op = "read service counters";
    let get = |i| crate::program::sum_percpu(events, i, op).map(|c| c.packets);
    Ok(ServiceCounters {
        missed: get(EV_MISS)?,
        not_ip: get(EV_NOT_IP)?,
        no_backend: get(EV_NO_BACKEND)?,
        flow_hits: get(EV_FLOW_HIT)?,
        flow_picks: get(EV_FLOW_NEW)?,
        probes: get(EV_PROBE)?,
        director_tx: get(EV_DIRECTOR_TX)?,
        director_redirected: get(EV_DIRECTOR_REDIRECT)?,
        director_passed: get(EV_DIRECTOR_PASS)?,
        director_dropped: get(EV_DIRECTOR_DROP)?,
    })
}
