//! A pinned services folder read without owning it: what `lwtun service show` prints while
//! an agent or a library process owns the services.

use std::path::Path;

use ipnetwork::IpNetwork;

use super::{tables, Backend, ServiceCounters};
use crate::error::{Error, Result};
use crate::peer::PeerStats;

/// One backend of a [`PinnedServices`] service: its peer and weight, whether it is in
/// service, and its counters.
pub type PinnedBackend = (Backend, bool, PeerStats);

/// The services pinned in a folder, read without taking its owner lock (a snapshot).
///
/// # Examples
///
/// ```no_run
/// let pinned = lwtun::service::PinnedServices::open("/sys/fs/bpf/lwtun-lb")?;
/// for (prefix, backends) in pinned.services() {
///     for (b, up, stats) in backends {
///         println!("{prefix} {} weight {} up {up}: {} packets", b.peer.remote, b.weight, stats.packets);
///     }
/// }
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct PinnedServices {
    services: Vec<(IpNetwork, Vec<PinnedBackend>)>,
    counters: ServiceCounters,
}

impl PinnedServices {
    /// Reads the services pinned in `folder`.
    ///
    /// # Errors
    ///
    /// NotFound when `folder` holds no services; the kernel's error reading the maps.
    pub fn open(folder: impl AsRef<Path>) -> Result<PinnedServices> {
        let folder = folder.as_ref();
        let op = "read pinned services";
        let map = |name: &str| {
            let path = folder.join(name);
            if !path.exists() {
                return Err(Error::not_found(
                    op,
                    format!("services pinned in {}", folder.display()),
                ));
            }
            libbpf_rs::MapHandle::from_pinned_path(&path)
                .map_err(|e| Error::bpf(op, e).with_object(path.display().to_string()))
        };
        let backends = map("backends")?;
        let stats = map("backend_stats")?;
        let read = tables::read(
            &map("services_v4")?,
            &map("services_v6")?,
            &backends,
            libbpf_rs::MapCore::max_entries(&backends),
        )?;
        let mut services = Vec::new();
        for (_, (prefix, held)) in read.services {
            let mut list = Vec::new();
            for h in held {
                list.push((h.backend, h.up, tables::backend_counters(&stats, h.index)?));
            }
            services.push((prefix, list));
        }
        services.sort_by_key(|(p, _)| *p);
        Ok(PinnedServices {
            services,
            counters: tables::counters(&map("events")?)?,
        })
    }

    /// The services, by prefix, each with its backends.
    pub fn services(&self) -> &[(IpNetwork, Vec<PinnedBackend>)] {
        &self.services
    }

    /// The table-wide counters.
    pub fn counters(&self) -> &ServiceCounters {
        &self.counters
    }
}
