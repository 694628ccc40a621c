//! A device's own counters: the kernel's link statistics and the driver's (ethtool) ones.
//!
//! lwtun's program counters count *verdicts*: a frame counted as `XDP_REDIRECT` left the
//! program towards a device, and may still be dropped there (a full queue, a peer that went
//! down). Those drops show only in the target device's counters, which these are.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{Error, Result};

const IFLA_STATS64: u16 = 23;
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETH_SS_STATS: u32 = 1;
const ETH_GSTRING_LEN: usize = 32;
/// More driver counters than any driver has; a larger answer is refused, not allocated.
const MAX_DRIVER_STATS: u32 = 4096;

/// A device's counters at one moment ([`Device::counters`](super::Device::counters)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct DeviceCounters {
    /// Packets received (`rx_packets` of `ip -s link`).
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Packets dropped on receive (no buffer, a full backlog, an ingress redirect to a device
    /// that is down, ...).
    pub rx_dropped: u64,
    /// Packets dropped on transmit (an egress redirect to a device that is down or has no
    /// carrier, ...).
    pub tx_dropped: u64,
    /// Transmit carrier errors.
    pub tx_carrier_errors: u64,
    /// The driver's own counters (`ethtool -S`), by name, in the driver's order; empty for
    /// devices without them, and where only the link statistics were read (the target devices
    /// of [`RuleStats`](crate::lwt_redirect::RuleStats)). veth has per-queue XDP counters here
    /// (`rx_queue_0_xdp_drops`, `tx_queue_0_xdp_xmit_errors`, ...).
    pub driver: Vec<(String, u64)>,
}

impl DeviceCounters {
    /// The driver counter `name`, if the driver has it.
    pub fn driver_counter(&self, name: &str) -> Option<u64> {
        self.driver.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// The sum of the driver's XDP drop and error counters (names with `xdp` and `drop` or
    /// `err`): frames an XDP verdict sent here that the device did not deliver.
    pub fn xdp_drops(&self) -> u64 {
        self.driver
            .iter()
            .filter(|(n, _)| n.contains("xdp") && (n.contains("drop") || n.contains("err")))
            .map(|(_, v)| *v)
            .sum()
    }

    /// Every counter's growth since `earlier` (counters that went back, as after a device
    /// reset, count from zero).
    pub fn since(&self, earlier: &DeviceCounters) -> DeviceCounters {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        DeviceCounters {
            rx_packets: d(self.rx_packets, earlier.rx_packets),
            tx_packets: d(self.tx_packets, earlier.tx_packets),
            rx_bytes: d(self.rx_bytes, earlier.rx_bytes),
            tx_bytes: d(self.tx_bytes, earlier.tx_bytes),
            rx_errors: d(self.rx_errors, earlier.rx_errors),
            tx_errors: d(self.tx_errors, earlier.tx_errors),
            rx_dropped: d(self.rx_dropped, earlier.rx_dropped),
            tx_dropped: d(self.tx_dropped, earlier.tx_dropped),
            tx_carrier_errors: d(self.tx_carrier_errors, earlier.tx_carrier_errors),
            driver: self
                .driver
                .iter()
                .map(|(n, v)| (n.clone(), d(*v, earlier.driver_counter(n).unwrap_or(0))))
                .collect(),
        }
    }
}

/// The link statistics of an `RTM_NEWLINK` (its `IFLA_STATS64`, `struct rtnl_link_stats64` in
/// native byte order), without driver counters; `None` when the message has none or it is
/// shorter than the first 18 fields.
pub(crate) fn link_stats(link: &crate::netlink::link::Link) -> Option<DeviceCounters> {
    let raw = link.attribute(IFLA_STATS64)?;
    let field = |i: usize| -> Option<u64> {
        Some(u64::from_ne_bytes(
            raw.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    // struct rtnl_link_stats64: rx_packets, tx_packets, rx_bytes, tx_bytes, rx_errors,
    // tx_errors, rx_dropped, tx_dropped, multicast, collisions, rx_length_errors, ...,
    // tx_aborted_errors (16), tx_carrier_errors (17), ...
    Some(DeviceCounters {
        rx_packets: field(0)?,
        tx_packets: field(1)?,
        rx_bytes: field(2)?,
        tx_bytes: field(3)?,
        rx_errors: field(4)?,
        tx_errors: field(5)?,
        rx_dropped: field(6)?,
        tx_dropped: field(7)?,
        tx_carrier_errors: field(17)?,
        driver: Vec::new(),
    })
}

/// The driver's counters of device `name` in the calling thread's namespace (`ethtool -S`);
/// empty when the driver has none.
pub(super) fn driver_stats(name: &str) -> Result<Vec<(String, u64)>> {
    let op = "read driver counters";
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::io(op, std::io::Error::last_os_error()));
    }
    // SAFETY: a new socket nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let ioctl = |data: &mut [u8]| -> std::io::Result<()> {
        // struct ifreq: the name (16 bytes) then a pointer to the request.
        let mut ifr = [0u8; 40];
        let n = name.len().min(15);
        ifr[..n].copy_from_slice(&name.as_bytes()[..n]);
        ifr[16..24].copy_from_slice(&(data.as_mut_ptr() as usize as u64).to_ne_bytes());
        // SAFETY: ifr is an ifreq whose data pointer names `data`, which is as large as the
        // command's header says (the kernel writes only within it).
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, ifr.as_mut_ptr()) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // How many counters: ETHTOOL_GSSET_INFO for the stats string set.
    let mut info = [0u8; 20];
    info[0..4].copy_from_slice(&ETHTOOL_GSSET_INFO.to_ne_bytes());
    info[8..16].copy_from_slice(&(1u64 << ETH_SS_STATS).to_ne_bytes());
    match ioctl(&mut info) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(op, e).with_object(name.to_string())),
    }
    let mask = u64::from_ne_bytes(info[8..16].try_into().unwrap_or([0; 8]));
    if mask & (1 << ETH_SS_STATS) == 0 {
        return Ok(Vec::new());
    }
    let count = u32::from_ne_bytes(info[16..20].try_into().unwrap_or([0; 4]));
    if count == 0 {
        return Ok(Vec::new());
    }
    if count > MAX_DRIVER_STATS {
        return Err(Error::other(
            crate::ErrorKind::Kernel,
            op,
            format!("the driver reports {count} counters, more than {MAX_DRIVER_STATS}"),
        )
        .with_object(name.to_string()));
    }
    let n = count as usize;
    let mut strings = vec![0u8; 12 + n * ETH_GSTRING_LEN];
    strings[0..4].copy_from_slice(&ETHTOOL_GSTRINGS.to_ne_bytes());
    strings[4..8].copy_from_slice(&ETH_SS_STATS.to_ne_bytes());
    strings[8..12].copy_from_slice(&count.to_ne_bytes());
    ioctl(&mut strings).map_err(|e| Error::io(op, e).with_object(name.to_string()))?;
    let mut stats = vec![0u8; 8 + n * 8];
    stats[0..4].copy_from_slice(&ETHTOOL_GSTATS.to_ne_bytes());
    stats[4..8].copy_from_slice(&count.to_ne_bytes());
    ioctl(&mut stats).map_err(|e| Error::io(op, e).with_object(name.to_string()))?;
    // The kernel may answer with fewer than asked if the set shrank meanwhile.
    let got = (u32::from_ne_bytes(stats[4..8].try_into().unwrap_or([0; 4])) as usize).min(n);
    Ok((0..got)
        .map(|i| {
            let s = &strings[12 + i * ETH_GSTRING_LEN..12 + (i + 1) * ETH_GSTRING_LEN];
            let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
            let v = u64::from_ne_bytes(stats[8 + i * 8..16 + i * 8].try_into().unwrap_or([0; 8]));
            (String::from_utf8_lossy(&s[..end]).into_owned(), v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_drops_sum_the_drop_and_error_counters() {
        let c = DeviceCounters {
            driver: vec![
                ("rx_queue_0_xdp_packets".into(), 10),
                ("rx_queue_0_xdp_drops".into(), 2),
                ("tx_queue_0_xdp_xmit_errors".into(), 3),
                ("rx_queue_0_drops".into(), 100),
            ],
            ..Default::default()
        };
        assert_eq!(c.xdp_drops(), 5);
        assert_eq!(c.driver_counter("rx_queue_0_xdp_packets"), Some(10));
        let later = DeviceCounters {
            rx_packets: 5,
            driver: vec![("rx_queue_0_xdp_drops".into(), 7)],
            ..Default::default()
        };
        let d = later.since(&c);
        assert_eq!(d.rx_packets, 5);
        assert_eq!(d.driver_counter("rx_queue_0_xdp_drops"), Some(5));
    }

    #[test]
    fn link_stats_decode_rtnl_link_stats64() {
        let mut raw = Vec::new();
        for i in 0..24u64 {
            raw.extend_from_slice(&(i + 100).to_ne_bytes());
        }
        let with = |attributes| crate::netlink::link::Link {
            attributes,
            ..crate::netlink::link::Link::for_tests(1, None)
        };
        let stats = |value: Vec<u8>| {
            with(vec![crate::netlink::attr::RawAttribute {
                kind: IFLA_STATS64,
                value,
            }])
        };
        let s = link_stats(&stats(raw.clone())).unwrap();
        assert_eq!((s.rx_packets, s.tx_packets), (100, 101));
        assert_eq!((s.rx_bytes, s.tx_bytes), (102, 103));
        assert_eq!((s.rx_dropped, s.tx_dropped), (106, 107));
        assert_eq!(s.tx_carrier_errors, 117);
        assert_eq!(link_stats(&stats(raw[..100].to_vec())), None);
        assert_eq!(link_stats(&with(Vec::new())), None);
    }
}
