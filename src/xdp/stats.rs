//! Per-CPU, per-action packet and byte counters of lwtun's XDP programs (the tutorial's
//! `xdp_stats`), summed in user space, with rates over an interval.
//!
//! # Verdicts, not deliveries
//!
//! The counters count what the program *decided*: a frame counted under `XDP_REDIRECT` was
//! handed to `bpf_redirect_map`, and `XDP_TX` to the device's transmit path. Whether it then
//! left the machine is the target device's business: a full transmit queue, a veth whose peer
//! went down or lost its XDP program, drop it there and count it there. Read those counters with
//! [`Device::counters`](crate::device::Device::counters) (`ip -s link` and `ethtool -S`; veth
//! has per-queue XDP counters, summed by
//! [`DeviceCounters::xdp_drops`](crate::device::DeviceCounters::xdp_drops)), next to these.

use std::time::{Duration, Instant};

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::program::check_sizes;
use super::XdpAction;
use crate::abi::{self, Pod};
use crate::error::{Error, ErrorKind, Result};
use crate::skel::xdp_pass::types::lwtun_xdp_stats;

/// The name of every XDP family's counter map.
pub(crate) const STATS_MAP: &str = "xdp_stats";

// SAFETY: `struct lwtun_xdp_stats` is five pairs of u64 (80 bytes, asserted in lwtun.h).
unsafe impl Pod for lwtun_xdp_stats {}

/// Where in a family a program runs: on the interface it is attached to, or as the per-port
/// program of a devmap after a redirect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The program attached to an interface (`LWTUN_XDP_STAGE_INGRESS`).
    Ingress,
    /// The devmap per-port program (`LWTUN_XDP_STAGE_EGRESS`).
    Egress,
}

/// Packets and bytes: the one counter type of every family (bytes here are the frame length
/// as the XDP program saw it).
pub use crate::program::Counter;

/// Counters per XDP action, summed over all CPUs, at one moment.
///
/// # Examples
///
/// ```no_run
/// use lwtun::xdp::{XdpPass, XdpAction, Stage};
///
/// let pass = XdpPass::load()?;
/// let before = pass.stats().snapshot(Stage::Ingress)?;
/// std::thread::sleep(std::time::Duration::from_secs(1));
/// let now = pass.stats().snapshot(Stage::Ingress)?;
/// let rates = now.rates_since(&before);
/// println!("pass: {:.0} pps", rates.get(XdpAction::Pass).packets_per_sec);
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct XdpStats {
    /// When the counters were read.
    pub taken_at: Instant,
    counters: [Counter; 5],
}

/// Packet and bit rates of one action.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rate {
    /// Packets per second.
    pub packets_per_sec: f64,
    /// Bits per second (frame bytes × 8).
    pub bits_per_sec: f64,
}

/// Rates per action between two [`XdpStats`].
#[derive(Clone, Copy, Debug)]
pub struct XdpRates {
    /// The time between the two snapshots.
    pub interval: Duration,
    rates: [Rate; 5],
}

impl XdpStats {
    /// The counters of one action.
    pub fn get(&self, action: XdpAction) -> Counter {
        self.counters[action.code() as usize]
    }

    /// All actions summed.
    pub fn total(&self) -> Counter {
        self.counters
            .iter()
            .fold(Counter::default(), |a, c| Counter {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
            })
    }

    /// Counters counted since `earlier` (saturating, in case the map was reset in between).
    pub fn since(&self, earlier: &XdpStats) -> XdpStats {
        let mut counters = [Counter::default(); 5];
        for (i, c) in counters.iter_mut().enumerate() {
            c.packets = self.counters[i]
                .packets
                .saturating_sub(earlier.counters[i].packets);
            c.bytes = self.counters[i]
                .bytes
                .saturating_sub(earlier.counters[i].bytes);
        }
        XdpStats {
            taken_at: self.taken_at,
            counters,
        }
    }

    /// Rates per action over the interval from `earlier` to this snapshot.
    pub fn rates_since(&self, earlier: &XdpStats) -> XdpRates {
        let interval = self.taken_at.saturating_duration_since(earlier.taken_at);
        let secs = interval.as_secs_f64();
        let diff = self.since(earlier);
        let mut rates = [Rate::default(); 5];
        if secs > 0.0 {
            for (r, c) in rates.iter_mut().zip(diff.counters.iter()) {
                r.packets_per_sec = c.packets as f64 / secs;
                r.bits_per_sec = c.bytes as f64 * 8.0 / secs;
            }
        }
        XdpRates { interval, rates }
    }
}

impl std::fmt::Display for XdpStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for a in XdpAction::ALL {
            let c = self.get(a);
            writeln!(
                f,
                "{:<13} {:>12} pkts {:>15} bytes",
                a.to_string(),
                c.packets,
                c.bytes
            )?;
        }
        Ok(())
    }
}

impl XdpRates {
    /// The rates of one action.
    pub fn get(&self, action: XdpAction) -> Rate {
        self.rates[action.code() as usize]
    }
}

/// A family's `xdp_stats` map (BPF_MAP_TYPE_PERCPU_ARRAY of `struct lwtun_xdp_stats`).
#[derive(Debug)]
#[doc(alias = "xdp_stats")]
pub struct StatsMap {
    map: MapHandle,
}

impl StatsMap {
    /// Opens the `xdp_stats` map of a family loaded by another process (found by id, pin or
    /// through the attached program's map ids), to read its counters.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] when the map's key or value size is not `xdp_stats`'s.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::xdp::{Stage, StatsMap};
    ///
    /// let map = lwtun::libbpf_rs::MapHandle::from_map_id(42).unwrap();
    /// let stats = StatsMap::from_handle(map)?.snapshot(Stage::Ingress)?;
    /// println!("{} frames", stats.total().packets);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn from_handle(map: MapHandle) -> Result<Self> {
        Self::new(map)
    }

    /// The `xdp_stats` map of the loaded program `id` (an XDP program found on an interface, of
    /// any process): `None` when the program has none, that is, when it is not one of lwtun's
    /// XDP families.
    ///
    /// # Errors
    ///
    /// NotFound when no program has that id; as [`StatsMap::from_handle`] for a map of that
    /// name with another layout.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::xdp::{Stage, StatsMap};
    ///
    /// if let Some(stats) = StatsMap::of_program(42)? {
    ///     println!("{} frames", stats.snapshot(Stage::Ingress)?.total().packets);
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn of_program(id: u32) -> Result<Option<Self>> {
        for map_id in crate::program::program_info_by_id(id)?.map_ids {
            let Ok(map) = MapHandle::from_map_id(map_id) else {
                continue; // freed since the program info was read
            };
            if map.name() == STATS_MAP {
                return Self::from_handle(map).map(Some);
            }
        }
        Ok(None)
    }

    pub(crate) fn new(map: MapHandle) -> Result<Self> {
        check_sizes(
            "open XDP stats map",
            &map,
            4,
            std::mem::size_of::<lwtun_xdp_stats>() as u32,
        )?;
        Ok(StatsMap { map })
    }

    /// Reads the counters of `stage` from every CPU and sums them.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Kernel`](crate::ErrorKind::Kernel) when the map cannot be read.
    pub fn snapshot(&self, stage: Stage) -> Result<XdpStats> {
        let op = "read XDP stats";
        let key = match stage {
            Stage::Ingress => 0u32,
            Stage::Egress => 1u32,
        };
        let per_cpu = self
            .map
            .lookup_percpu(&key.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::bpf(op, e))?
            .ok_or_else(|| Error::not_found(op, "stats slot"))?;
        let mut counters = [Counter::default(); 5];
        for bytes in per_cpu {
            let size = std::mem::size_of::<lwtun_xdp_stats>();
            let v: lwtun_xdp_stats =
                abi::from_bytes(bytes.get(..size).unwrap_or(&[])).ok_or_else(|| {
                    Error::other(
                        ErrorKind::Kernel,
                        op,
                        "per-CPU value shorter than lwtun_xdp_stats",
                    )
                })?;
            for (c, a) in counters.iter_mut().zip(v.action.iter()) {
                c.packets += a.packets;
                c.bytes += a.bytes;
            }
        }
        Ok(XdpStats {
            taken_at: Instant::now(),
            counters,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(at: Instant, pass: (u64, u64), redirect: (u64, u64)) -> XdpStats {
        let mut counters = [Counter::default(); 5];
        counters[2] = Counter {
            packets: pass.0,
            bytes: pass.1,
        };
        counters[4] = Counter {
            packets: redirect.0,
            bytes: redirect.1,
        };
        XdpStats {
            taken_at: at,
            counters,
        }
    }

    #[test]
    fn rates_and_differences() {
        let t0 = Instant::now();
        let a = snap(t0, (10, 1000), (0, 0));
        let b = snap(t0 + Duration::from_secs(2), (30, 3000), (100, 6400));
        let d = b.since(&a);
        assert_eq!(
            d.get(XdpAction::Pass),
            Counter {
                packets: 20,
                bytes: 2000
            }
        );
        assert_eq!(
            b.total(),
            Counter {
                packets: 130,
                bytes: 9400
            }
        );
        let r = b.rates_since(&a);
        assert_eq!(r.interval, Duration::from_secs(2));
        assert_eq!(r.get(XdpAction::Pass).packets_per_sec, 10.0);
        assert_eq!(r.get(XdpAction::Redirect).bits_per_sec, 6400.0 * 8.0 / 2.0);
        // A reset map (counters going down) gives zero, not a wrap-around.
        assert_eq!(a.since(&b).get(XdpAction::Redirect).packets, 0);
        // No time between snapshots: no rates rather than infinities.
        assert_eq!(a.rates_since(&a).get(XdpAction::Pass).packets_per_sec, 0.0);
    }
}
