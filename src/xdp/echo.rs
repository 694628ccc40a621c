//! An XDP_TX ICMP / ICMPv6 echo responder (`bpf/xdp_echo.bpf.c`).

use std::net::{IpAddr, Ipv6Addr};

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::attach::{XdpAttachment, XdpOptions};
use super::pass::Receivers;
use super::program::{check_sizes, Loaded, XdpProgram};
use super::stats::StatsMap;
use crate::device::Device;
use crate::error::{Error, Result};

/// Answers ICMP and ICMPv6 echo requests for its configured addresses in XDP (`XDP_TX`): the
/// stack never sees them. MACs and addresses are swapped, TTL / hop limit set to 64 and the
/// checksums updated incrementally (RFC 1624). Other frames pass to the stack untouched.
///
/// # Examples
///
/// ```no_run
/// use lwtun::xdp::{IcmpEcho, XdpOptions};
///
/// let echo = IcmpEcho::load()?;
/// echo.add_address("10.0.0.1".parse().unwrap())?;
/// echo.add_address("fd00::1".parse().unwrap())?;
/// let ns = lwtun::netns::NetNs::open("lab")?;
/// // replies leave through veth0 with XDP_TX; its other end, eth0 in "peer", gets a pass
/// // program so that a veth takes them
/// let att = echo.attach_with_receiver(
///     &ns.device("veth0")?,
///     &lwtun::netns::NetNs::open("peer")?.device("eth0")?,
///     XdpOptions::default(),
/// )?;
/// # drop(att);
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug)]
pub struct IcmpEcho {
    program: XdpProgram,
    addrs: MapHandle,
    stats: StatsMap,
    receivers: Receivers,
}

fn key(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

impl IcmpEcho {
    /// Loads the program with an empty address set.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Permission`](crate::ErrorKind::Permission) without CAP_BPF.
    pub fn load() -> Result<Self> {
        let obj = Loaded::load("xdp_echo", crate::skel::xdp_echo::OBJECT)?;
        let addrs = obj.map("echo_addrs")?;
        check_sizes("open echo addresses", &addrs, 16, 4)?;
        Ok(IcmpEcho {
            program: obj.program("xdp_echo")?,
            addrs,
            stats: StatsMap::new(obj.map(super::stats::STATS_MAP)?)?,
            receivers: Receivers::default(),
        })
    }

    /// The program (`xdp_echo`).
    pub fn program(&self) -> &XdpProgram {
        &self.program
    }

    /// The per-action counters (answered requests count as `XDP_TX`).
    pub fn stats(&self) -> &StatsMap {
        &self.stats
    }

    /// Answers echo requests to `addr` from now on.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for unspecified, multicast or
    /// broadcast addresses (a reply from those would be wrong);
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when the set (1024) is full.
    pub fn add_address(&self, addr: IpAddr) -> Result<()> {
        let op = "add echo address";
        let bad = addr.is_unspecified()
            || addr.is_multicast()
            || matches!(addr, IpAddr::V4(a) if a.is_broadcast());
        if bad {
            return Err(Error::invalid_input(
                op,
                format!("{addr} is not a unicast address"),
            ));
        }
        self.addrs
            .update(&key(addr), &1u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| {
                crate::family::table_write_error(op, e, "echo addresses", &self.addrs)
                    .with_object(addr.to_string())
            })
    }

    /// Stops answering for `addr`; returns whether it was configured.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Kernel`](crate::ErrorKind::Kernel) when the set cannot be changed.
    pub fn remove_address(&self, addr: IpAddr) -> Result<bool> {
        match self.addrs.delete(&key(addr)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::bpf("remove echo address", e).with_object(addr.to_string())),
        }
    }

    /// The configured addresses.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.addrs
            .keys()
            .filter_map(|k| <[u8; 16]>::try_from(k.as_slice()).ok())
            .map(|b| {
                let a = Ipv6Addr::from(b);
                match a.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => IpAddr::V6(a),
                }
            })
            .collect()
    }

    /// Attaches the responder to `device`.
    ///
    /// On a veth, replies sent with `XDP_TX` reach the other end only while that end runs an
    /// XDP program: use [`attach_with_receiver`](Self::attach_with_receiver) there.
    ///
    /// # Errors
    ///
    /// As [`XdpAttachment::attach`].
    pub fn attach(&self, device: &Device, options: XdpOptions) -> Result<XdpAttachment> {
        XdpAttachment::attach(&self.program, device, options)
    }

    /// Attaches the responder to `device` after putting a pass program on `receiver`, the
    /// veth at its other end (kept while this value lives), so the replies are taken there.
    ///
    /// # Errors
    ///
    /// As [`attach`](Self::attach) and
    /// [`XdpPass::attach_receiver`](super::XdpPass::attach_receiver).
    pub fn attach_with_receiver(
        &self,
        device: &Device,
        receiver: &Device,
        options: XdpOptions,
    ) -> Result<XdpAttachment> {
        self.receivers.ensure(receiver)?;
        self.attach(device, options)
    }
}
