//! Routes over rtnetlink: add, replace, delete, dump and pipelined batches, IPv4 and IPv6, with
//! the LWT BPF encap (`RTA_ENCAP_TYPE` = `LWTUNNEL_ENCAP_BPF`), the kernel's SRv6 encap
//! (`LWTUNNEL_ENCAP_SEG6`: push an SRH with a segment list) and seg6local functions (`End`,
//! `End.X`, `End.T`, `End.DT6` and `End.BPF`).
//!
//! A [`Route`] is what one `RTM_NEWROUTE` carries. Attributes lwtun does not model are kept in
//! [`Route::extra`] and other encap types in [`Encap::Other`], so a dump never drops information.
//!
//! This layer knows program fds and names, not BPF objects: [`crate::route::LwtRoute`] is the
//! domain type that owns programs and removes its route on drop.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::RawFd;

use ipnetwork::IpNetwork;
use neli::consts::nl::NlmF;
use neli::consts::rtnl::{RtAddrFamily, RtScope, RtTable, Rta, Rtm, RtmF, Rtn, Rtprot};
use neli::rtnl::{Rtattr, RtattrBuilder, Rtmsg, RtmsgBuilder};
use neli::types::{Buffer, RtBuffer};

use super::attr::{self, Nest, RawAttribute};
use super::{decode_body, Netlink};
use crate::error::{Error, Result};

/// `RTPROT_BOOT`, what `ip route add` uses when no `proto` is given.
pub const RTPROT_BOOT: u8 = 3;
/// `RTPROT_STATIC`.
pub const RTPROT_STATIC: u8 = 4;
/// The main routing table.
pub const RT_TABLE_MAIN: u32 = 254;
/// The local routing table (local and broadcast addresses).
pub const RT_TABLE_LOCAL: u32 = 255;
/// `RT_SCOPE_UNIVERSE`: a route via a gateway.
pub const RT_SCOPE_UNIVERSE: u8 = 0;
/// `RT_SCOPE_LINK`: a directly attached destination.
pub const RT_SCOPE_LINK: u8 = 253;
/// `RTN_UNICAST`.
pub const RTN_UNICAST: u8 = 1;

/// `LWTUNNEL_ENCAP_BPF`.
pub const LWTUNNEL_ENCAP_BPF: u16 = 6;
/// `LWTUNNEL_ENCAP_SEG6`: the kernel pushes an SRv6 header (`ip route ... encap seg6`).
pub const LWTUNNEL_ENCAP_SEG6: u16 = 5;
/// `LWTUNNEL_ENCAP_SEG6_LOCAL`.
pub const LWTUNNEL_ENCAP_SEG6_LOCAL: u16 = 7;
/// The most segments an SRH holds: its length field counts 8-byte units beyond the first 8 in
/// one byte, and a segment is two units, so 127 segments (`hdrlen` 254).
pub const MAX_SEG6_SEGMENTS: usize = 127;
const SEG6_IPTUNNEL_SRH: u16 = 1;
const SEG6_LOCAL_TABLE: u16 = 3;
const SEG6_LOCAL_NH6: u16 = 5;
const SEG6_LOCAL_ACTION_END: u32 = 1;
const SEG6_LOCAL_ACTION_END_X: u32 = 2;
const SEG6_LOCAL_ACTION_END_T: u32 = 3;
const SEG6_LOCAL_ACTION_END_DT6: u32 = 7;
/// `IPV6_SRCRT_TYPE_4`: the routing header type of an SRH.
const SRH_TYPE: u8 = 4;
const LWT_BPF_IN: u16 = 1;
const LWT_BPF_OUT: u16 = 2;
const LWT_BPF_XMIT: u16 = 3;
const LWT_BPF_XMIT_HEADROOM: u16 = 4;
const LWT_BPF_PROG_FD: u16 = 1;
const LWT_BPF_PROG_NAME: u16 = 2;
const SEG6_LOCAL_ACTION: u16 = 1;
const SEG6_LOCAL_BPF: u16 = 8;
const SEG6_LOCAL_ACTION_END_BPF: u32 = 15;
const RTA_ENCAP: u16 = libc::RTA_ENCAP;
const RTA_ENCAP_TYPE: u16 = libc::RTA_ENCAP_TYPE;
/// `RTA_METRICS` (nested `RTAX_*` values) and the two of them lwtun reads and writes.
const RTA_METRICS: u16 = libc::RTA_METRICS;
const RTAX_LOCK: u16 = 1;
const RTAX_MTU: u16 = 2;
/// `RTA_NH_ID`: the id of the nexthop object a route uses.
const RTA_NH_ID: u16 = 30;

/// The kernel's limit on `LWT_BPF_XMIT_HEADROOM` (`LWT_BPF_MAX_HEADROOM`).
pub const MAX_XMIT_HEADROOM: u32 = 256;
/// The kernel's limit on a program name in an LWT encap, NUL included (`MAX_PROG_NAME`).
pub const MAX_PROG_NAME: usize = 256;

/// A BPF program as a route names it: the name the kernel stores and reports in dumps, and, when
/// installing, the fd of the program.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProgRef {
    /// The name stored with the route (`LWT_BPF_PROG_NAME`). The kernel compares encaps by this
    /// name only: two different programs must never share one.
    pub name: String,
    /// The program's fd; needed to install, absent in dumps.
    pub fd: Option<RawFd>,
}

impl ProgRef {
    /// A program to install, by fd and name.
    pub fn new(fd: RawFd, name: impl Into<String>) -> Self {
        ProgRef {
            name: name.into(),
            fd: Some(fd),
        }
    }
}

/// The LWT BPF encap of a route: a program per hook, and the xmit headroom.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct BpfEncap {
    /// `lwt_in`: runs on packets the route receives (input path).
    pub input: Option<ProgRef>,
    /// `lwt_out`: runs on locally generated packets before the output path.
    pub output: Option<ProgRef>,
    /// `lwt_xmit`: runs just before the packet is handed to the neighbour layer.
    pub xmit: Option<ProgRef>,
    /// Bytes of headroom the xmit program may push (at most [`MAX_XMIT_HEADROOM`]); also
    /// subtracted from the path MTU. Not reported by dumps.
    pub headroom: Option<u32>,
}

/// A route's lightweight-tunnel encap.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Encap {
    /// `encap bpf`: BPF programs at the LWT hooks.
    Bpf(BpfEncap),
    /// `encap seg6local action End.BPF endpoint ...`: an SRv6 End.BPF program (IPv6 only).
    Seg6LocalBpf(ProgRef),
    /// `encap seg6 mode ... segs ...`: the kernel pushes an SRH with this segment list.
    Seg6(Seg6Encap),
    /// `encap seg6local action End|End.X|End.T|End.DT6 ...`: one of the kernel's own SRv6
    /// functions (IPv6 only). Other actions decode as [`Encap::Other`].
    Seg6Local(Seg6Local),
    /// Another encap type (mpls, ip, seg6, ...), kept as the raw `RTA_ENCAP` payload.
    Other {
        /// `RTA_ENCAP_TYPE`.
        kind: u16,
        /// The `RTA_ENCAP` payload, as the kernel sent it.
        data: Vec<u8>,
    },
}

/// How the kernel's seg6 encap adds the SRH (`SEG6_IPTUN_MODE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Seg6Mode {
    /// `mode inline`: the SRH is inserted after the packet's own IPv6 header (IPv6 packets only).
    /// The kernel keeps the original destination as the SRH's last segment.
    Inline,
    /// `mode encap`: an outer IPv6 header and the SRH in front of the packet (H.Encaps; IPv4 or
    /// IPv6 packets).
    Encap,
    /// `mode encap.red`: as `Encap`, without the first segment in the SRH (H.Encaps.Red).
    EncapReduced,
}

impl Seg6Mode {
    fn code(self) -> u32 {
        match self {
            Seg6Mode::Inline => 0,
            Seg6Mode::Encap => 1,
            Seg6Mode::EncapReduced => 3,
        }
    }

    fn of_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Seg6Mode::Inline),
            1 => Some(Seg6Mode::Encap),
            3 => Some(Seg6Mode::EncapReduced),
            _ => None,
        }
    }

    /// The word iproute2 uses for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Seg6Mode::Inline => "inline",
            Seg6Mode::Encap => "encap",
            Seg6Mode::EncapReduced => "encap.red",
        }
    }
}

/// The kernel's seg6 encap of a route: the mode and the segment list, in path order (the first
/// segment is the first the packet visits).
///
/// # Examples
///
/// ```
/// use lwtun::netlink::route::{Encap, Route, Seg6Encap, Seg6Mode};
///
/// let mut r = Route::new("2001:db8:9::/64".parse().unwrap());
/// r.oif = Some(3);
/// r.encap = Some(Encap::Seg6(Seg6Encap {
///     mode: Seg6Mode::Encap,
///     segments: vec!["fc00:1::1".parse().unwrap(), "fc00:2::2".parse().unwrap()],
/// }));
/// assert!(r.validate().is_ok());
/// assert_eq!(
///     r.to_string(),
///     "2001:db8:9::/64 encap seg6 mode encap segs 2 [ fc00:1::1 fc00:2::2 ] dev#3"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Seg6Encap {
    /// How the SRH is added.
    pub mode: Seg6Mode,
    /// The segments, first visited first (the SRH stores them in reverse).
    pub segments: Vec<Ipv6Addr>,
}

impl Seg6Encap {
    /// The SRH entries in the order the SRH stores them: reversed, and for inline mode with the
    /// slot for the original destination (`::`, filled in by the kernel) at index 0.
    fn srh_entries(&self) -> Vec<Ipv6Addr> {
        let mut v: Vec<Ipv6Addr> = self.segments.iter().rev().copied().collect();
        if self.mode == Seg6Mode::Inline {
            v.insert(0, Ipv6Addr::UNSPECIFIED);
        }
        v
    }

    /// The `struct seg6_iptunnel_encap` the kernel takes: the mode (int) and an SRH whose
    /// segments left and last entry point at the first segment, next header 0 (the kernel sets
    /// it), no flags, tag or TLVs, as iproute2 builds it.
    fn to_bytes(&self) -> Vec<u8> {
        let entries = self.srh_entries();
        let n = entries.len();
        let mut b = Vec::with_capacity(4 + 8 + 16 * n);
        b.extend_from_slice(&self.mode.code().to_ne_bytes());
        b.extend_from_slice(&[
            0,
            (2 * n) as u8,
            SRH_TYPE,
            (n - 1) as u8,
            (n - 1) as u8,
            0,
            0,
            0,
        ]);
        for e in entries {
            b.extend_from_slice(&e.octets());
        }
        b
    }

    /// Parses what [`Seg6Encap::to_bytes`] writes; `None` for SRHs this type does not model
    /// (flags, a tag, TLVs, segments left not at the first segment, an unknown mode).
    fn from_bytes(data: &[u8]) -> Option<Self> {
        let mode = Seg6Mode::of_code(u32::from_ne_bytes(data.get(..4)?.try_into().ok()?))?;
        let srh = data.get(4..)?;
        let (hdrlen, ty, left, last) = (*srh.get(1)?, *srh.get(2)?, *srh.get(3)?, *srh.get(4)?);
        let n = last as usize + 1;
        if ty != SRH_TYPE
            || left != last
            || hdrlen as usize != 2 * n
            || srh.len() != 8 + 16 * n
            || srh[5..8] != [0, 0, 0]
        {
            return None;
        }
        let mut entries: Vec<Ipv6Addr> = srh[8..]
            .chunks_exact(16)
            .map(|c| Ipv6Addr::from(<[u8; 16]>::try_from(c).expect("16 bytes")))
            .collect();
        if mode == Seg6Mode::Inline {
            entries.remove(0);
        }
        entries.reverse();
        Some(Seg6Encap {
            mode,
            segments: entries,
        })
    }
}

/// One of the kernel's own seg6local functions (RFC 8986 behaviours), for a route whose
/// destination is the SID.
///
/// Kernel: Linux 4.14+ (seg6local; `End.BPF` 4.18+).
///
/// # Examples
///
/// ```
/// use lwtun::netlink::route::{Encap, Route, Seg6Local};
///
/// let mut r = Route::new("fc00:e::6/128".parse().unwrap());
/// r.oif = Some(3);
/// r.encap = Some(Encap::Seg6Local(Seg6Local::EndDt6 { table: 100 }));
/// assert_eq!(r.to_string(), "fc00:e::6 encap seg6local action End.DT6 table 100 dev#3");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Seg6Local {
    /// `End`: the next segment becomes the destination; routed by it.
    End,
    /// `End.X nh6 ADDR`: as End, then forwarded to this IPv6 next hop (layer-3 cross-connect).
    EndX {
        /// The next hop.
        nh6: Ipv6Addr,
    },
    /// `End.T table N`: as End, the next segment looked up in table N.
    EndT {
        /// The routing table.
        table: u32,
    },
    /// `End.DT6 table N`: at the last segment, the outer headers removed and the inner IPv6
    /// packet looked up in table N.
    EndDt6 {
        /// The routing table.
        table: u32,
    },
}

impl Seg6Local {
    /// The function's name as iproute2 writes it (`End.DT6`).
    pub fn name(&self) -> &'static str {
        match self {
            Seg6Local::End => "End",
            Seg6Local::EndX { .. } => "End.X",
            Seg6Local::EndT { .. } => "End.T",
            Seg6Local::EndDt6 { .. } => "End.DT6",
        }
    }
}

impl fmt::Display for Seg6Local {
    /// iproute2's words: `End.X nh6 fc00::1`, `End.DT6 table 100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        match self {
            Seg6Local::End => Ok(()),
            Seg6Local::EndX { nh6 } => write!(f, " nh6 {nh6}"),
            Seg6Local::EndT { table } | Seg6Local::EndDt6 { table } => write!(f, " table {table}"),
        }
    }
}

/// A route's path MTU (`RTAX_MTU` in `RTA_METRICS`): what `ip route add … mtu [lock] N` sets.
///
/// # Examples
///
/// ```
/// use lwtun::netlink::route::{Route, RouteMtu};
///
/// let mut r = Route::new("10.20.0.0/16".parse().unwrap());
/// r.mtu = Some(RouteMtu { bytes: 1448, locked: true });
/// assert!(r.to_string().contains("mtu lock 1448"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteMtu {
    /// The MTU, in bytes.
    pub bytes: u32,
    /// Locked (`RTAX_LOCK`): path MTU discovery leaves it alone, and forwarding uses it on every
    /// kernel (older ones, such as 5.10, check forwarded packets against the device's MTU
    /// unless the route's is locked).
    pub locked: bool,
}

/// The old name of [`RawAttribute`], the one type for an attribute kept as it came.
#[deprecated(
    since = "0.2.0",
    note = "use lwtun::netlink::attr::RawAttribute (field `data` is now `value`)"
)]
pub type RawAttr = RawAttribute;

/// One route, as `RTM_NEWROUTE` carries it.
///
/// # Examples
///
/// ```
/// use lwtun::netlink::route::{Route, Encap, BpfEncap, ProgRef};
///
/// let mut route = Route::new("10.1.0.0/16".parse().unwrap());
/// route.oif = Some(2);
/// route.encap = Some(Encap::Bpf(BpfEncap {
///     xmit: Some(ProgRef::new(7, "lwtun:count_xmit:42")),
///     headroom: Some(20),
///     ..Default::default()
/// }));
/// assert!(route.validate().is_ok());
/// assert_eq!(route.to_string(), "10.1.0.0/16 dev#2 encap bpf xmit lwtun:count_xmit:42 headroom 20");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// The destination prefix; its family is the route's family.
    pub dst: IpNetwork,
    /// Routing table (default [`RT_TABLE_MAIN`]).
    pub table: u32,
    /// Routing protocol (`RTPROT_*`; default [`RTPROT_BOOT`] like iproute2).
    pub protocol: u8,
    /// Scope; `None` picks like iproute2 (link without a gateway, universe with one).
    pub scope: Option<u8>,
    /// Route type (`RTN_*`; default [`RTN_UNICAST`]).
    pub kind: u8,
    /// TOS selector.
    pub tos: u8,
    /// `rtm_flags`, as the kernel reported them (ignored when installing).
    pub flags: u32,
    /// Metric (`RTA_PRIORITY`).
    pub metric: Option<u32>,
    /// Output interface index (`RTA_OIF`).
    pub oif: Option<u32>,
    /// Gateway (`RTA_GATEWAY`), of the route's family.
    pub gateway: Option<IpAddr>,
    /// Preferred source (`RTA_PREFSRC`), of the route's family.
    pub prefsrc: Option<IpAddr>,
    /// The route's MTU (`RTA_METRICS`), when it sets one.
    pub mtu: Option<RouteMtu>,
    /// The lightweight-tunnel encap.
    pub encap: Option<Encap>,
    /// The nexthop object the route forwards over (`RTA_NH_ID`, `ip route add ... nhid N`):
    /// its device, gateway and encap are the nexthop's, so a route with one has no
    /// [`Route::oif`], [`Route::gateway`] or [`Route::encap`] of its own ([`Route::validate`]
    /// refuses them). Kernel: Linux 5.3+ (nexthop objects). See [`crate::nexthop`].
    pub nhid: Option<u32>,
    /// For a dumped route over a nexthop ([`Route::nhid`]): that nexthop's encap, as the kernel
    /// reports it in route dumps (`net.ipv4.nexthop_compat_mode=1`, the default) or as
    /// [`crate::route::lwt_routes`] looked it up. Never sent when installing.
    pub nexthop_encap: Option<Box<Encap>>,
    /// Attributes lwtun does not model, kept from dumps (not sent when installing). For a
    /// route over a nexthop, the device and gateway the kernel copies from the nexthop into
    /// the dump (`RTA_OIF`, `RTA_GATEWAY`) are kept here, not in [`Route::oif`] and
    /// [`Route::gateway`]: a delete naming them would not match the route.
    pub extra: Vec<RawAttribute>,
}

impl Route {
    /// A unicast route to `dst` in the main table, protocol boot, no device yet.
    pub fn new(dst: IpNetwork) -> Self {
        Route {
            dst,
            table: RT_TABLE_MAIN,
            protocol: RTPROT_BOOT,
            scope: None,
            kind: RTN_UNICAST,
            tos: 0,
            flags: 0,
            metric: None,
            oif: None,
            gateway: None,
            prefsrc: None,
            mtu: None,
            encap: None,
            nhid: None,
            nexthop_encap: None,
            extra: Vec::new(),
        }
    }

    /// The scope this route is installed with: as iproute2 picks it, universe for every IPv6
    /// route (the kernel ignores IPv6 route scopes and reports universe), for IPv4 link without a
    /// gateway and universe with one; universe over a nexthop object ([`Route::nhid`]).
    pub fn effective_scope(&self) -> u8 {
        self.scope.unwrap_or(
            if self.gateway.is_some() || self.nhid.is_some() || self.dst.is_ipv6() {
                RT_SCOPE_UNIVERSE
            } else {
                RT_SCOPE_LINK
            },
        )
    }

    /// The encap the route's packets get: its own, or for a dumped route over a nexthop
    /// object, the nexthop's ([`Route::nexthop_encap`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::netlink::route::{Route, Encap, BpfEncap};
    ///
    /// let mut r = Route::new("10.1.0.0/16".parse().unwrap());
    /// r.nhid = Some(7);
    /// assert!(r.effective_encap().is_none());
    /// r.nexthop_encap = Some(Box::new(Encap::Bpf(BpfEncap::default()))); // as a dump reports it
    /// assert!(matches!(r.effective_encap(), Some(Encap::Bpf(_))));
    /// ```
    pub fn effective_encap(&self) -> Option<&Encap> {
        self.encap.as_ref().or(self.nexthop_encap.as_deref())
    }

    /// The LWT BPF encap, if the route has one.
    pub fn bpf_encap(&self) -> Option<&BpfEncap> {
        match &self.encap {
            Some(Encap::Bpf(b)) => Some(b),
            _ => None,
        }
    }

    /// Checks everything the kernel would refuse, before anything is sent: families agree,
    /// the prefix is canonical, programs have fds and names within limits, headroom within limit,
    /// a route over a nexthop object has no device, gateway or encap of its own.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput), saying what is wrong.
    pub fn validate(&self) -> Result<()> {
        let op = "validate route";
        let bad =
            |why: String| Err(Error::invalid_input(op, why).with_object(self.dst.to_string()));
        if let Some(id) = self.nhid {
            let own: Vec<&str> = [
                ("an encap", self.encap.is_some()),
                ("a gateway", self.gateway.is_some()),
                ("a device", self.oif.is_some()),
            ]
            .into_iter()
            .filter_map(|(what, set)| set.then_some(what))
            .collect();
            if !own.is_empty() {
                return bad(format!(
                    "a route over nexthop {id} takes its device, gateway and encap from the \
                     nexthop object, but it has {} of its own too: give one or the other",
                    own.join(" and ")
                ));
            }
            if id == 0 {
                return bad("nexthop id 0 names no nexthop".into());
            }
        }
        if self.dst.network() != self.dst.ip() {
            return bad(format!(
                "prefix has host bits set: write {}/{}",
                self.dst.network(),
                self.dst.prefix()
            ));
        }
        for (what, addr) in [("gateway", self.gateway), ("prefsrc", self.prefsrc)] {
            if let Some(a) = addr {
                if a.is_ipv4() != self.dst.is_ipv4() {
                    return bad(format!(
                        "{what} {a} is not of the destination's family ({})",
                        if self.dst.is_ipv4() { "IPv4" } else { "IPv6" }
                    ));
                }
            }
        }
        match &self.encap {
            Some(Encap::Bpf(b)) => check_bpf_encap(b).or_else(bad)?,
            Some(Encap::Seg6LocalBpf(p)) => {
                if self.dst.is_ipv4() {
                    return bad("seg6local End.BPF routes are IPv6 only".into());
                }
                check_prog(p, "End.BPF").or_else(bad)?;
            }
            Some(Encap::Seg6(e)) => {
                if e.mode == Seg6Mode::Inline && self.dst.is_ipv4() {
                    return bad(
                        "seg6 inline mode inserts an SRH into IPv6 packets; an IPv4 route needs \
                         mode encap"
                            .into(),
                    );
                }
                let room = MAX_SEG6_SEGMENTS - usize::from(e.mode == Seg6Mode::Inline);
                if e.segments.is_empty() || e.segments.len() > room {
                    return bad(format!(
                        "a seg6 {} encap takes 1 to {room} segments, got {}",
                        e.mode.as_str(),
                        e.segments.len()
                    ));
                }
                if let Some(s) = e
                    .segments
                    .iter()
                    .find(|s| s.is_unspecified() || s.is_multicast())
                {
                    return bad(format!("segment {s} is not a unicast address"));
                }
            }
            Some(Encap::Seg6Local(_)) => {
                if self.dst.is_ipv4() {
                    return bad("seg6local routes are IPv6 only".into());
                }
            }
            Some(Encap::Other { .. }) | None => {}
        }
        Ok(())
    }

    fn family(&self) -> RtAddrFamily {
        if self.dst.is_ipv4() {
            RtAddrFamily::Inet
        } else {
            RtAddrFamily::Inet6
        }
    }

    /// The `RTA_METRICS` payload: the MTU and, when locked, `RTAX_LOCK` naming it.
    fn metrics(&self) -> Option<Vec<u8>> {
        let mtu = self.mtu?;
        let mut out = Vec::new();
        if mtu.locked {
            put_attr(&mut out, RTAX_LOCK, &(1u32 << RTAX_MTU).to_ne_bytes());
        }
        put_attr(&mut out, RTAX_MTU, &mtu.bytes.to_ne_bytes());
        Some(out)
    }

    /// The `Rtmsg` for installing this route, attributes in the order iproute2 sends them
    /// (dst, gateway, encap, encap type, metric, prefsrc, metrics, table above 255, oif).
    pub(crate) fn to_rtmsg(&self) -> Result<Rtmsg> {
        self.validate()?;
        let mut attrs = RtBuffer::new();
        attrs.push(rtattr(Rta::Dst, ip_bytes(self.dst.ip())));
        if let Some(id) = self.nhid {
            attrs.push(rtattr(
                Rta::UnrecognizedConst(RTA_NH_ID),
                id.to_ne_bytes().to_vec(),
            ));
        }
        if let Some(gw) = self.gateway {
            attrs.push(rtattr(Rta::Gateway, ip_bytes(gw)));
        }
        if let Some(encap) = &self.encap {
            let (kind, payload) = encode_encap(encap);
            attrs.push(rtattr(
                Rta::UnrecognizedConst(RTA_ENCAP | attr::NLA_F_NESTED),
                payload,
            ));
            attrs.push(rtattr(Rta::EncapType, kind.to_ne_bytes().to_vec()));
        }
        if let Some(m) = self.metric {
            attrs.push(rtattr(Rta::Priority, m.to_ne_bytes().to_vec()));
        }
        if let Some(src) = self.prefsrc {
            attrs.push(rtattr(Rta::Prefsrc, ip_bytes(src)));
        }
        if let Some(metrics) = self.metrics() {
            attrs.push(rtattr(Rta::UnrecognizedConst(RTA_METRICS), metrics));
        }
        if self.table > 255 {
            attrs.push(rtattr(Rta::Table, self.table.to_ne_bytes().to_vec()));
        }
        if let Some(oif) = self.oif {
            attrs.push(rtattr(Rta::Oif, oif.to_ne_bytes().to_vec()));
        }
        Ok(self.header(self.effective_scope(), attrs))
    }

    /// The complete netlink message lwtun sends for `op` on this route, with sequence number
    /// `seq` and `NLM_F_ACK`: what [`Netlink::add_route`], [`Netlink::replace_route`] and
    /// [`Netlink::delete_route`] send, for tools that write their own netlink batches and for
    /// golden-byte tests.
    ///
    /// # Errors
    ///
    /// InvalidInput for a route [`Route::validate`] refuses (adds and replaces).
    pub fn to_request(&self, op: BatchOp, seq: u32) -> Result<Vec<u8>> {
        const NLM_F_ACK: u16 = 0x4;
        if op != BatchOp::Delete {
            self.validate()?;
        }
        let mut out = Vec::with_capacity(128);
        self.write_request(&mut out, op, NLM_F_ACK, seq);
        Ok(out)
    }

    /// Appends the framed request for `op` on this route to `out` without validating it:
    /// `flags` are the netlink flags beyond the ones `op` implies (`NLM_F_REQUEST` and, for
    /// adds and replaces, `NLM_F_CREATE` with `EXCL` or `REPLACE`), for example `NLM_F_ACK`.
    ///
    /// The bytes are what neli writes for [`Route::to_rtmsg`] and [`Route::to_delete_rtmsg`]
    /// (the unit tests compare the two for every attribute and encap), written straight into
    /// `out`: no allocation per attribute, which is most of a pipelined batch's user-space cost.
    pub(crate) fn write_request(&self, out: &mut Vec<u8>, op: BatchOp, flags: u16, seq: u32) {
        const NLM_F_REQUEST: u16 = 0x1;
        const NLM_F_REPLACE: u16 = 0x100;
        const NLM_F_EXCL: u16 = 0x200;
        const NLM_F_CREATE: u16 = 0x400;
        let start = out.len();
        let (ty, op_flags) = match op {
            BatchOp::Add => (libc::RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL),
            BatchOp::Replace => (libc::RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE),
            BatchOp::Delete => (libc::RTM_DELROUTE, 0),
        };
        out.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set below
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(&(NLM_F_REQUEST | op_flags | flags).to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
        let table = if self.table > 255 {
            0
        } else {
            self.table as u8
        };
        let scope = match op {
            BatchOp::Delete => 255,
            _ => self.effective_scope(),
        };
        out.extend_from_slice(&[
            if self.dst.is_ipv4() {
                libc::AF_INET as u8
            } else {
                libc::AF_INET6 as u8
            },
            self.dst.prefix(),
            0,
            self.tos,
            table,
            self.protocol,
            scope,
            self.kind,
        ]);
        out.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
        put_ip(out, libc::RTA_DST, self.dst.ip());
        if op == BatchOp::Delete {
            if let Some(m) = self.metric {
                put_attr(out, libc::RTA_PRIORITY, &m.to_ne_bytes());
            }
            if let Some(oif) = self.oif {
                put_attr(out, libc::RTA_OIF, &oif.to_ne_bytes());
            }
            if self.table > 255 {
                put_attr(out, libc::RTA_TABLE, &self.table.to_ne_bytes());
            }
        } else {
            if let Some(id) = self.nhid {
                put_attr(out, RTA_NH_ID, &id.to_ne_bytes());
            }
            if let Some(gw) = self.gateway {
                put_ip(out, libc::RTA_GATEWAY, gw);
            }
            if let Some(encap) = &self.encap {
                let kind = write_encap(out, RTA_ENCAP, encap);
                put_attr(out, RTA_ENCAP_TYPE, &kind.to_ne_bytes());
            }
            if let Some(m) = self.metric {
                put_attr(out, libc::RTA_PRIORITY, &m.to_ne_bytes());
            }
            if let Some(src) = self.prefsrc {
                put_ip(out, libc::RTA_PREFSRC, src);
            }
            if let Some(metrics) = self.metrics() {
                put_attr(out, RTA_METRICS, &metrics);
            }
            if self.table > 255 {
                put_attr(out, libc::RTA_TABLE, &self.table.to_ne_bytes());
            }
            if let Some(oif) = self.oif {
                put_attr(out, libc::RTA_OIF, &oif.to_ne_bytes());
            }
        }
        let len = (out.len() - start) as u32;
        out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// The `Rtmsg` for deleting this route: it selects by destination, table, tos, protocol,
    /// metric and device, not by encap.
    pub(crate) fn to_delete_rtmsg(&self) -> Rtmsg {
        let mut attrs = RtBuffer::new();
        attrs.push(rtattr(Rta::Dst, ip_bytes(self.dst.ip())));
        if let Some(m) = self.metric {
            attrs.push(rtattr(Rta::Priority, m.to_ne_bytes().to_vec()));
        }
        if let Some(oif) = self.oif {
            attrs.push(rtattr(Rta::Oif, oif.to_ne_bytes().to_vec()));
        }
        if self.table > 255 {
            attrs.push(rtattr(Rta::Table, self.table.to_ne_bytes().to_vec()));
        }
        // RT_SCOPE_NOWHERE: match any scope, as iproute2 does for deletes.
        self.header(255, attrs)
    }

    fn header(&self, scope: u8, attrs: RtBuffer<Rta, Buffer>) -> Rtmsg {
        let table = if self.table > 255 {
            0
        } else {
            self.table as u8
        };
        RtmsgBuilder::default()
            .rtm_family(self.family())
            .rtm_dst_len(self.dst.prefix())
            .rtm_src_len(0)
            .rtm_tos(self.tos)
            .rtm_table(RtTable::from(table))
            .rtm_protocol(Rtprot::from(self.protocol))
            .rtm_scope(RtScope::from(scope))
            .rtm_type(Rtn::from(self.kind))
            .rtattrs(attrs)
            .build()
            .expect("every field of Rtmsg is set")
    }

    /// Decodes a route from an `RTM_NEWROUTE` body (a dump answer). `None` for families other
    /// than IPv4 and IPv6.
    pub fn decode(body: &[u8]) -> Result<Option<Route>> {
        let msg: Rtmsg = decode_body("decode route", body)?;
        Self::from_rtmsg(&msg)
    }

    fn from_rtmsg(msg: &Rtmsg) -> Result<Option<Route>> {
        let v4 = match msg.rtm_family() {
            RtAddrFamily::Inet => true,
            RtAddrFamily::Inet6 => false,
            _ => return Ok(None),
        };
        let bad =
            |why: &str| Error::other(crate::ErrorKind::Kernel, "decode route", why.to_string());
        let unspecified = if v4 {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u8; 16])
        };
        let mut route = Route::new(IpNetwork::new(unspecified, 0).expect("prefix 0 is valid"));
        route.table = u8::from(*msg.rtm_table()) as u32;
        route.protocol = u8::from(*msg.rtm_protocol());
        route.scope = Some(u8::from(*msg.rtm_scope()));
        route.kind = u8::from(*msg.rtm_type());
        route.tos = *msg.rtm_tos();
        route.flags = u32::from(*msg.rtm_flags());
        let mut dst = if v4 {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u8; 16])
        };
        let mut encap_type = None;
        let mut encap_data = None;
        let mut oif_gw = Vec::new();
        for a in msg.rtattrs().iter() {
            let kind = u16::from(*a.rta_type()) & attr::NLA_TYPE_MASK;
            let data = a.rta_payload().as_ref();
            match kind {
                libc::RTA_DST => dst = ip_of(data, v4).ok_or_else(|| bad("bad RTA_DST"))?,
                libc::RTA_TABLE => {
                    route.table = attr::u32_of(data).ok_or_else(|| bad("bad RTA_TABLE"))?
                }
                libc::RTA_PRIORITY => route.metric = attr::u32_of(data),
                RTA_NH_ID => route.nhid = attr::u32_of(data),
                libc::RTA_OIF | libc::RTA_GATEWAY => oif_gw.push(RawAttribute {
                    kind,
                    value: data.to_vec(),
                }),
                libc::RTA_PREFSRC => route.prefsrc = ip_of(data, v4),
                RTA_ENCAP_TYPE if data.len() == 2 => {
                    encap_type = Some(u16::from_ne_bytes([data[0], data[1]]))
                }
                RTA_ENCAP => encap_data = Some(data.to_vec()),
                RTA_METRICS => {
                    route.mtu = attr::find(data, RTAX_MTU)
                        .and_then(attr::u32_of)
                        .map(|bytes| RouteMtu {
                            bytes,
                            locked: attr::find(data, RTAX_LOCK)
                                .and_then(attr::u32_of)
                                .is_some_and(|mask| mask & (1 << RTAX_MTU) != 0),
                        });
                    // Other metrics (advmss, window, ...) stay as they came.
                    route.extra.push(RawAttribute {
                        kind,
                        value: data.to_vec(),
                    })
                }
                _ => route.extra.push(RawAttribute {
                    kind,
                    value: data.to_vec(),
                }),
            }
        }
        route.dst =
            IpNetwork::new(dst, *msg.rtm_dst_len()).map_err(|_| bad("bad prefix length"))?;
        let encap = match (encap_type, encap_data) {
            (Some(kind), Some(data)) => Some(decode_encap(kind, data)),
            _ => None,
        };
        if route.nhid.is_some() {
            // What the kernel copied from the nexthop object (nexthop_compat_mode).
            route.nexthop_encap = encap.map(Box::new);
            route.extra.extend(oif_gw);
        } else {
            route.encap = encap;
            for a in oif_gw {
                match a.kind {
                    libc::RTA_OIF => route.oif = attr::u32_of(&a.value),
                    _ => route.gateway = ip_of(&a.value, v4),
                }
            }
        }
        Ok(Some(route))
    }
}

impl fmt::Display for Route {
    /// Roughly `ip route show`'s words: `10.1.0.0/16 via 10.0.0.1 dev#2 table 100 metric 7
    /// encap bpf xmit NAME headroom 20`.
    ///
    /// The kernel's SRv6 encaps come right after the destination, worded as `ip -6 route show`
    /// prints them: `2001:db8::/64 encap seg6 mode encap segs 2 [ fc00:1::1 fc00:2::2 ] dev#3`,
    /// `fc00::6 encap seg6local action End.DT6 table 100 dev#3` (a /128 without its length).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.encap, self.dst) {
            (Some(Encap::Seg6(_) | Encap::Seg6Local(_)), IpNetwork::V6(d)) if d.prefix() == 128 => {
                write!(f, "{}", d.ip())?
            }
            _ => write!(f, "{}", self.dst)?,
        }
        if let Some(id) = self.nhid {
            write!(f, " nhid {id}")?;
        }
        match &self.encap {
            Some(Encap::Seg6(e)) => {
                write!(
                    f,
                    " encap seg6 mode {} segs {} [",
                    e.mode.as_str(),
                    e.srh_entries().len()
                )?;
                let mut shown = e.segments.clone();
                if e.mode == Seg6Mode::Inline {
                    shown.push(Ipv6Addr::UNSPECIFIED);
                }
                for s in shown {
                    write!(f, " {s}")?;
                }
                f.write_str(" ]")?;
            }
            Some(Encap::Seg6Local(a)) => write!(f, " encap seg6local action {a}")?,
            _ => {}
        }
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev#{oif}")?;
        }
        if self.table != RT_TABLE_MAIN {
            write!(f, " table {}", self.table)?;
        }
        if let Some(m) = self.metric {
            write!(f, " metric {m}")?;
        }
        if let Some(mtu) = self.mtu {
            let lock = if mtu.locked { "lock " } else { "" };
            write!(f, " mtu {lock}{}", mtu.bytes)?;
        }
        match self.effective_encap() {
            Some(Encap::Bpf(b)) => {
                f.write_str(" encap bpf")?;
                for (hook, p) in [("in", &b.input), ("out", &b.output), ("xmit", &b.xmit)] {
                    if let Some(p) = p {
                        write!(f, " {hook} {}", p.name)?;
                    }
                }
                if let Some(h) = b.headroom {
                    write!(f, " headroom {h}")?;
                }
            }
            Some(Encap::Seg6LocalBpf(p)) => write!(f, " encap seg6local End.BPF {}", p.name)?,
            Some(Encap::Other { kind, .. }) => write!(f, " encap type {kind}")?,
            Some(Encap::Seg6(_)) | Some(Encap::Seg6Local(_)) | None => {}
        }
        Ok(())
    }
}

/// What the kernel would refuse in an LWT BPF encap (of a route or a nexthop object).
pub(super) fn check_bpf_encap(b: &BpfEncap) -> std::result::Result<(), String> {
    if b.input.is_none() && b.output.is_none() && b.xmit.is_none() {
        return Err("a bpf encap needs a program on at least one hook".into());
    }
    for (hook, p) in [("in", &b.input), ("out", &b.output), ("xmit", &b.xmit)] {
        if let Some(p) = p {
            check_prog(p, hook)?;
        }
    }
    if let Some(h) = b.headroom {
        if h > MAX_XMIT_HEADROOM {
            return Err(format!(
                "xmit headroom {h} is above the kernel's limit of {MAX_XMIT_HEADROOM}"
            ));
        }
        if b.xmit.is_none() {
            return Err("xmit headroom without an xmit program".into());
        }
    }
    Ok(())
}

fn check_prog(p: &ProgRef, hook: &str) -> std::result::Result<(), String> {
    if p.name.is_empty() {
        return Err(format!(
            "the {hook} program has no name; the kernel requires one"
        ));
    }
    if p.name.len() + 1 > MAX_PROG_NAME {
        return Err(format!(
            "the {hook} program's name is {} bytes; the kernel takes at most {}",
            p.name.len(),
            MAX_PROG_NAME - 1
        ));
    }
    if p.name.contains('\0') {
        return Err(format!("the {hook} program's name contains a NUL byte"));
    }
    if p.fd.is_none() {
        return Err(format!(
            "the {hook} program has no fd: a route is installed by program fd"
        ));
    }
    Ok(())
}

fn encode_prog(n: &mut Nest, ty: u16, p: &ProgRef) {
    let at = n.begin(ty);
    n.u32(LWT_BPF_PROG_FD, p.fd.unwrap_or(-1) as u32);
    n.str(LWT_BPF_PROG_NAME, &p.name);
    n.end(at);
}

/// The `RTA_ENCAP_TYPE` and `RTA_ENCAP` payload of an encap.
fn encode_encap(encap: &Encap) -> (u16, Vec<u8>) {
    let mut n = Nest::new();
    match encap {
        Encap::Bpf(b) => {
            for (ty, p) in [
                (LWT_BPF_IN, &b.input),
                (LWT_BPF_OUT, &b.output),
                (LWT_BPF_XMIT, &b.xmit),
            ] {
                if let Some(p) = p {
                    encode_prog(&mut n, ty, p);
                }
            }
            if let Some(h) = b.headroom {
                n.u32(LWT_BPF_XMIT_HEADROOM, h);
            }
            (LWTUNNEL_ENCAP_BPF, n.into_bytes())
        }
        Encap::Seg6LocalBpf(p) => {
            n.u32(SEG6_LOCAL_ACTION, SEG6_LOCAL_ACTION_END_BPF);
            encode_prog(&mut n, SEG6_LOCAL_BPF, p);
            (LWTUNNEL_ENCAP_SEG6_LOCAL, n.into_bytes())
        }
        Encap::Seg6(e) => {
            n.put(SEG6_IPTUNNEL_SRH, &e.to_bytes());
            (LWTUNNEL_ENCAP_SEG6, n.into_bytes())
        }
        Encap::Seg6Local(a) => {
            let code = match a {
                Seg6Local::End => SEG6_LOCAL_ACTION_END,
                Seg6Local::EndX { .. } => SEG6_LOCAL_ACTION_END_X,
                Seg6Local::EndT { .. } => SEG6_LOCAL_ACTION_END_T,
                Seg6Local::EndDt6 { .. } => SEG6_LOCAL_ACTION_END_DT6,
            };
            n.u32(SEG6_LOCAL_ACTION, code);
            match a {
                Seg6Local::End => {}
                Seg6Local::EndX { nh6 } => {
                    n.put(SEG6_LOCAL_NH6, &nh6.octets());
                }
                Seg6Local::EndT { table } | Seg6Local::EndDt6 { table } => {
                    n.u32(SEG6_LOCAL_TABLE, *table);
                }
            }
            (LWTUNNEL_ENCAP_SEG6_LOCAL, n.into_bytes())
        }
        Encap::Other { kind, data } => (*kind, data.clone()),
    }
}

/// A kernel seg6local function from its attributes; `None` for actions (or attribute sets)
/// [`Seg6Local`] does not model, which the caller keeps raw.
fn decode_seg6local(data: &[u8]) -> Option<Seg6Local> {
    let action = attr::find(data, SEG6_LOCAL_ACTION).and_then(attr::u32_of)?;
    let known = |ty: u16| matches!(ty, SEG6_LOCAL_ACTION | SEG6_LOCAL_TABLE | SEG6_LOCAL_NH6);
    if attr::iter(data).any(|(ty, _)| !known(ty)) {
        return None; // counters, flavors, an oif...: keep every byte
    }
    let table = || attr::find(data, SEG6_LOCAL_TABLE).and_then(attr::u32_of);
    match action {
        SEG6_LOCAL_ACTION_END => Some(Seg6Local::End),
        SEG6_LOCAL_ACTION_END_X => {
            let nh: [u8; 16] = attr::find(data, SEG6_LOCAL_NH6)?.try_into().ok()?;
            Some(Seg6Local::EndX {
                nh6: Ipv6Addr::from(nh),
            })
        }
        SEG6_LOCAL_ACTION_END_T => Some(Seg6Local::EndT { table: table()? }),
        SEG6_LOCAL_ACTION_END_DT6 => Some(Seg6Local::EndDt6 { table: table()? }),
        _ => None,
    }
}

fn decode_prog(data: &[u8]) -> ProgRef {
    ProgRef {
        name: attr::find(data, LWT_BPF_PROG_NAME)
            .map(attr::cstr)
            .unwrap_or_default(),
        fd: None,
    }
}

/// An encap from its type and nest payload (of `RTA_ENCAP` or `NHA_ENCAP`).
pub(super) fn decode_encap(kind: u16, data: Vec<u8>) -> Encap {
    match kind {
        LWTUNNEL_ENCAP_BPF => {
            let mut b = BpfEncap::default();
            for (ty, v) in attr::iter(&data) {
                match ty {
                    LWT_BPF_IN => b.input = Some(decode_prog(v)),
                    LWT_BPF_OUT => b.output = Some(decode_prog(v)),
                    LWT_BPF_XMIT => b.xmit = Some(decode_prog(v)),
                    LWT_BPF_XMIT_HEADROOM => b.headroom = attr::u32_of(v),
                    _ => {}
                }
            }
            Encap::Bpf(b)
        }
        LWTUNNEL_ENCAP_SEG6_LOCAL
            if attr::find(&data, SEG6_LOCAL_ACTION).and_then(attr::u32_of)
                == Some(SEG6_LOCAL_ACTION_END_BPF) =>
        {
            match attr::find(&data, SEG6_LOCAL_BPF) {
                Some(v) => Encap::Seg6LocalBpf(decode_prog(v)),
                None => Encap::Other { kind, data },
            }
        }
        LWTUNNEL_ENCAP_SEG6 => {
            let e = (attr::iter(&data).count() == 1)
                .then(|| attr::find(&data, SEG6_IPTUNNEL_SRH))
                .flatten()
                .and_then(Seg6Encap::from_bytes);
            match e {
                Some(e) => Encap::Seg6(e),
                None => Encap::Other { kind, data },
            }
        }
        LWTUNNEL_ENCAP_SEG6_LOCAL => match decode_seg6local(&data) {
            Some(a) => Encap::Seg6Local(a),
            None => Encap::Other { kind, data },
        },
        _ => Encap::Other { kind, data },
    }
}

/// Appends one attribute (`u16 len, u16 type, value`, padded to 4 bytes) to `out`.
pub(super) fn put_attr(out: &mut Vec<u8>, ty: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(value);
    pad4(out, value.len());
}

/// Pads what follows a value of `len` bytes to the next multiple of 4.
fn pad4(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&[0; 3][..super::align4(len) - len]);
}

pub(super) fn put_ip(out: &mut Vec<u8>, ty: u16, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => put_attr(out, ty, &a.octets()),
        IpAddr::V6(a) => put_attr(out, ty, &a.octets()),
    }
}

/// Opens a nested attribute of type `ty` (with `NLA_F_NESTED`); [`end_nest`] writes its length.
fn begin_nest(out: &mut Vec<u8>, ty: u16) -> usize {
    let at = out.len();
    out.extend_from_slice(&0u16.to_ne_bytes());
    out.extend_from_slice(&(ty | attr::NLA_F_NESTED).to_ne_bytes());
    at
}

fn end_nest(out: &mut [u8], at: usize) {
    let len = (out.len() - at) as u16;
    out[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

/// Appends the nest `ty` (`RTA_ENCAP` of a route, `NHA_ENCAP` of a nexthop object) for `encap`
/// to `out` and returns its encap type (`RTA_ENCAP_TYPE`, `NHA_ENCAP_TYPE`). The LWT BPF encap
/// (the one batches of many routes carry) is written in place; the others through
/// [`encode_encap`].
pub(super) fn write_encap(out: &mut Vec<u8>, ty: u16, encap: &Encap) -> u16 {
    match encap {
        Encap::Bpf(b) => {
            let at = begin_nest(out, ty);
            for (ty, p) in [
                (LWT_BPF_IN, &b.input),
                (LWT_BPF_OUT, &b.output),
                (LWT_BPF_XMIT, &b.xmit),
            ] {
                if let Some(p) = p {
                    let prog = begin_nest(out, ty);
                    put_attr(
                        out,
                        LWT_BPF_PROG_FD,
                        &(p.fd.unwrap_or(-1) as u32).to_ne_bytes(),
                    );
                    // A NUL-terminated name, padded.
                    out.extend_from_slice(&((4 + p.name.len() + 1) as u16).to_ne_bytes());
                    out.extend_from_slice(&LWT_BPF_PROG_NAME.to_ne_bytes());
                    out.extend_from_slice(p.name.as_bytes());
                    out.push(0);
                    pad4(out, p.name.len() + 1);
                    end_nest(out, prog);
                }
            }
            if let Some(h) = b.headroom {
                put_attr(out, LWT_BPF_XMIT_HEADROOM, &h.to_ne_bytes());
            }
            end_nest(out, at);
            LWTUNNEL_ENCAP_BPF
        }
        other => {
            let (kind, payload) = encode_encap(other);
            put_attr(out, ty | attr::NLA_F_NESTED, &payload);
            kind
        }
    }
}

fn rtattr(kind: Rta, payload: Vec<u8>) -> Rtattr<Rta, Buffer> {
    RtattrBuilder::default()
        .rta_type(kind)
        .rta_payload(Buffer::from(payload))
        .build()
        .expect("type and payload are set")
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

pub(super) fn ip_of(data: &[u8], v4: bool) -> Option<IpAddr> {
    match (v4, data.len()) {
        (true, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(data).ok()?)),
        (false, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(data).ok()?)),
        _ => None,
    }
}

/// Which routes a dump returns.
///
/// # Examples
///
/// ```
/// use lwtun::netlink::route::RouteFilter;
///
/// // IPv4 routes of table 100 with a BPF encap.
/// let f = RouteFilter { ipv4: true, ipv6: false, table: Some(100), bpf_only: true, ..Default::default() };
/// # let _ = f;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteFilter {
    /// Include IPv4 routes.
    pub ipv4: bool,
    /// Include IPv6 routes.
    pub ipv6: bool,
    /// Only this table (`None`: every table but the local one).
    pub table: Option<u32>,
    /// Only routes of this protocol.
    pub protocol: Option<u8>,
    /// Only routes whose encap is LWT BPF or seg6local End.BPF (for a route over a nexthop
    /// object: whose nexthop's encap is, as far as the dump tells; see
    /// [`crate::route::lwt_routes`]).
    pub bpf_only: bool,
}

impl RouteFilter {
    /// IPv4 and IPv6 routes of every table but the local one.
    pub fn all() -> Self {
        RouteFilter {
            ipv4: true,
            ipv6: true,
            ..Default::default()
        }
    }

    /// Whether the filter selects `r`.
    pub(crate) fn keeps(&self, r: &Route) -> bool {
        let fam = if r.dst.is_ipv4() {
            self.ipv4
        } else {
            self.ipv6
        };
        let table = match self.table {
            Some(t) => r.table == t,
            None => r.table != RT_TABLE_LOCAL,
        };
        let bpf = !self.bpf_only
            || matches!(
                r.effective_encap(),
                Some(Encap::Bpf(_)) | Some(Encap::Seg6LocalBpf(_))
            );
        fam && table && bpf && self.protocol.is_none_or(|p| p == r.protocol)
    }
}

/// What a [`RouteBatch`] item does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOp {
    /// Add; fails if the route exists.
    Add,
    /// Add or replace.
    Replace,
    /// Delete.
    Delete,
}

/// Many route changes sent pipelined: up to 256 requests (32 KiB) per `sendmsg`, one ACK per
/// window, every failure reported by index.
///
/// # Examples
///
/// ```no_run
/// use lwtun::netlink::{Netlink, route::{Route, RouteBatch}};
///
/// let mut nl = Netlink::open()?;
/// let mut batch = RouteBatch::new();
/// for i in 0..1000u32 {
///     let mut r = Route::new(format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap());
///     r.oif = Some(2);
///     batch.add(r);
/// }
/// let report = nl.apply_batch(&batch)?;
/// assert!(report.is_complete(), "{report}");
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct RouteBatch {
    items: Vec<(BatchOp, Route)>,
}

impl RouteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues an add.
    pub fn add(&mut self, route: Route) -> &mut Self {
        self.items.push((BatchOp::Add, route));
        self
    }

    /// Queues an add-or-replace.
    pub fn replace(&mut self, route: Route) -> &mut Self {
        self.items.push((BatchOp::Replace, route));
        self
    }

    /// Queues a delete.
    pub fn delete(&mut self, route: Route) -> &mut Self {
        self.items.push((BatchOp::Delete, route));
        self
    }

    /// The queued items, in order.
    pub fn items(&self) -> &[(BatchOp, Route)] {
        &self.items
    }

    /// How many items are queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The outcome of [`Netlink::apply_batch`]: which items failed, and why.
#[derive(Debug, Default)]
pub struct BatchReport {
    /// Items the kernel applied.
    pub applied: usize,
    /// Failed items: their index in the batch and the error.
    pub failures: Vec<(usize, Error)>,
}

impl BatchReport {
    /// Whether every item was applied.
    pub fn is_complete(&self) -> bool {
        self.failures.is_empty()
    }

    /// Turns a partial outcome into an error naming the first failure and the count.
    pub fn into_result(self) -> Result<usize> {
        match self.failures.into_iter().next() {
            None => Ok(self.applied),
            Some((i, e)) => Err(Error::other(
                e.kind(),
                "apply route batch",
                format!("item {i} failed: {e} ({} applied)", self.applied),
            )),
        }
    }
}

impl fmt::Display for BatchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} applied, {} failed",
            self.applied,
            self.failures.len()
        )?;
        for (i, e) in self.failures.iter().take(5) {
            write!(f, "; #{i}: {e}")?;
        }
        Ok(())
    }
}

impl Netlink {
    /// Adds a route; fails with [`ErrorKind::Exists`](crate::ErrorKind::Exists) if it is there.
    ///
    /// # Errors
    ///
    /// InvalidInput for a route [`Route::validate`] refuses (nothing is sent); the kernel's
    /// error otherwise (NotFound for an unknown device, Exists, InvalidInput with its ext-ack
    /// text, Unsupported where the kernel lacks LWT BPF).
    pub fn add_route(&mut self, route: &Route) -> Result<()> {
        let msg = route.to_rtmsg()?;
        self.request(
            "add route",
            route,
            Rtm::Newroute,
            NlmF::CREATE | NlmF::EXCL,
            msg,
        )
    }

    /// Adds a route, or replaces the one with the same destination, table, tos and metric.
    pub fn replace_route(&mut self, route: &Route) -> Result<()> {
        let msg = route.to_rtmsg()?;
        self.request(
            "replace route",
            route,
            Rtm::Newroute,
            NlmF::CREATE | NlmF::REPLACE,
            msg,
        )
    }

    /// Deletes the route matching `route`'s destination, table, tos, protocol, metric and device.
    pub fn delete_route(&mut self, route: &Route) -> Result<()> {
        let msg = route.to_delete_rtmsg();
        self.request("delete route", route, Rtm::Delroute, NlmF::empty(), msg)
    }

    /// Dumps the routes `filter` selects.
    pub fn routes(&mut self, filter: &RouteFilter) -> Result<Vec<Route>> {
        let mut all = Vec::new();
        for (want, family) in [
            (filter.ipv4, RtAddrFamily::Inet),
            (filter.ipv6, RtAddrFamily::Inet6),
        ] {
            if !want {
                continue;
            }
            let req = RtmsgBuilder::default()
                .rtm_family(family)
                .rtm_dst_len(0)
                .rtm_src_len(0)
                .rtm_tos(0)
                .rtm_table(RtTable::Unspec)
                .rtm_protocol(Rtprot::Unspec)
                .rtm_scope(RtScope::Universe)
                .rtm_type(Rtn::Unspec)
                .rtm_flags(RtmF::empty())
                .build()
                .expect("every field of Rtmsg is set");
            let routes = self.dump("dump routes", Rtm::Getroute, req, |ty, body| {
                if ty != libc::RTM_NEWROUTE {
                    return Ok(None);
                }
                Ok(Route::decode(body)?.filter(|r| filter.keeps(r)))
            })?;
            all.extend(routes);
        }
        Ok(all)
    }

    /// Applies a batch, pipelined. Every item is attempted; the report lists each failure by
    /// index. Items are independent: a failure does not undo the others (see
    /// [`Netlink::apply_batch_atomic`] for all-or-nothing).
    ///
    /// # Errors
    ///
    /// Only when the socket itself fails (then nothing more is known of the items after the
    /// last answered one) or an item is refused by [`Route::validate`] before anything is sent.
    pub fn apply_batch(&mut self, batch: &RouteBatch) -> Result<BatchReport> {
        // Validate everything before the first send: invalid input never half-applies.
        for (i, (op, route)) in batch.items.iter().enumerate() {
            if *op != BatchOp::Delete {
                route.validate().map_err(|e| {
                    Error::invalid_input("apply route batch", format!("item {i}: {e}"))
                })?;
            }
        }
        let answers = self.pipeline("apply route batch", batch.len(), |i, seq, out| {
            let (op, route) = &batch.items[i];
            route.write_request(out, *op, 0, seq);
        })?;
        let mut report = BatchReport::default();
        for (i, answer) in answers.into_iter().enumerate() {
            match answer {
                None => report.applied += 1,
                Some((errno, ext)) => {
                    let (op, route) = &batch.items[i];
                    let what = match op {
                        BatchOp::Add => "add route",
                        BatchOp::Replace => "replace route",
                        BatchOp::Delete => "delete route",
                    };
                    report.failures.push((
                        i,
                        Error::netlink(what, errno, ext).with_object(route.to_string()),
                    ));
                }
            }
        }
        Ok(report)
    }

    /// Applies a batch of adds and deletes all or nothing: if any item fails, the items that
    /// were applied are undone (added routes deleted, deleted routes added back) and the first
    /// failure is returned with the count of failures.
    ///
    /// Replaces cannot be undone without the old route, so a batch holding one is refused.
    ///
    /// # Errors
    ///
    /// The first failure, with its index; InvalidInput for a batch with replaces.
    pub fn apply_batch_atomic(&mut self, batch: &RouteBatch) -> Result<usize> {
        if batch.items.iter().any(|(op, _)| *op == BatchOp::Replace) {
            return Err(Error::invalid_input(
                "apply route batch atomically",
                "a replace cannot be undone without the old route: use apply_batch",
            ));
        }
        let report = self.apply_batch(batch)?;
        if report.is_complete() {
            return Ok(report.applied);
        }
        let failed: std::collections::HashSet<usize> =
            report.failures.iter().map(|(i, _)| *i).collect();
        let mut undo = RouteBatch::new();
        for (i, (op, route)) in batch.items.iter().enumerate().rev() {
            if failed.contains(&i) {
                continue;
            }
            match op {
                BatchOp::Add => undo.delete(route.clone()),
                _ => undo.add(route.clone()),
            };
        }
        let undo_report = self.apply_batch(&undo)?;
        let (i, first) = report.failures.into_iter().next().expect("not complete");
        let mut msg = format!(
            "item {i} failed: {first}; {} of {} items failed, the {} applied were undone",
            failed.len(),
            batch.len(),
            undo.len()
        );
        if !undo_report.is_complete() {
            msg.push_str(&format!("; undoing failed too: {undo_report}"));
        }
        Err(Error::other(
            first.kind(),
            "apply route batch atomically",
            msg,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xmit_route() -> Route {
        let mut r = Route::new("10.1.0.0/16".parse().unwrap());
        r.oif = Some(3);
        r.encap = Some(Encap::Bpf(BpfEncap {
            xmit: Some(ProgRef::new(8, "prog")),
            headroom: Some(20),
            ..Default::default()
        }));
        r
    }

    #[test]
    fn validate_refuses_what_the_kernel_would() {
        let mut r = xmit_route();
        assert!(r.validate().is_ok());
        if let Some(Encap::Bpf(b)) = &mut r.encap {
            b.headroom = Some(257);
        }
        assert_eq!(
            r.validate().unwrap_err().kind(),
            crate::ErrorKind::InvalidInput
        );

        let mut r = xmit_route();
        r.gateway = Some("2001:db8::1".parse().unwrap());
        let e = r.validate().unwrap_err();
        assert!(
            e.to_string().contains("not of the destination's family"),
            "{e}"
        );

        let mut r = xmit_route();
        if let Some(Encap::Bpf(b)) = &mut r.encap {
            b.xmit.as_mut().unwrap().name.clear();
        }
        assert!(r.validate().unwrap_err().to_string().contains("no name"));

        let mut r = xmit_route();
        r.dst = "10.1.2.3/16".parse().unwrap();
        assert!(r.validate().unwrap_err().to_string().contains("host bits"));

        let mut r = xmit_route();
        r.encap = Some(Encap::Bpf(BpfEncap::default()));
        assert!(r.validate().is_err());

        let mut r = xmit_route();
        r.encap = Some(Encap::Seg6LocalBpf(ProgRef::new(3, "x")));
        assert!(r.validate().unwrap_err().to_string().contains("IPv6 only"));
    }

    #[test]
    fn a_route_over_a_nexthop_has_nothing_of_its_own() {
        let mut r = Route::new("10.1.0.0/16".parse().unwrap());
        r.nhid = Some(3);
        assert!(r.validate().is_ok());
        assert_eq!(r.effective_scope(), RT_SCOPE_UNIVERSE);
        assert_eq!(r.to_string(), "10.1.0.0/16 nhid 3");
        let both = xmit_route();
        let mut both = Route {
            nhid: Some(3),
            ..both
        };
        let e = both.validate().unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("an encap and a device"), "{e}");
        both.encap = None;
        both.oif = None;
        both.nhid = Some(0);
        assert!(both.validate().unwrap_err().to_string().contains("id 0"));
    }

    #[test]
    fn a_dumped_route_over_a_nexthop_keeps_the_nexthops_encap_apart() {
        // What the kernel dumps for `ip route add 10.1.0.0/24 nhid 1` over
        // `ip nexthop add id 1 encap bpf xmit ... dev #3` with nexthop_compat_mode=1: RTA_NH_ID
        // plus copies of the nexthop's device and encap.
        let mut r = Route::new("10.1.0.0/24".parse().unwrap());
        r.nhid = Some(1);
        let mut body = r.to_request(BatchOp::Add, 1).unwrap()[16..].to_vec();
        put_attr(&mut body, libc::RTA_OIF, &3u32.to_ne_bytes());
        let kind = write_encap(
            &mut body,
            RTA_ENCAP,
            &Encap::Bpf(BpfEncap {
                xmit: Some(ProgRef::new(8, "lwtun:count_xmit:9")),
                ..Default::default()
            }),
        );
        put_attr(&mut body, RTA_ENCAP_TYPE, &kind.to_ne_bytes());
        let d = Route::decode(&body).unwrap().unwrap();
        assert_eq!(d.nhid, Some(1));
        assert_eq!((d.oif, d.gateway, &d.encap), (None, None, &None));
        assert!(matches!(d.nexthop_encap.as_deref(), Some(Encap::Bpf(b)) if b.xmit.is_some()));
        assert_eq!(d.extra[0].kind, libc::RTA_OIF);
        assert_eq!(
            d.to_string(),
            "10.1.0.0/24 nhid 1 encap bpf xmit lwtun:count_xmit:9"
        );
        assert!(RouteFilter {
            bpf_only: true,
            ..RouteFilter::all()
        }
        .keeps(&d));
        // A dumped route can be deleted as it came (no device to mismatch).
        assert!(d.to_request(BatchOp::Delete, 2).is_ok());
    }

    /// What neli writes for `op` on `r`: the reference the direct writer must match.
    fn neli_request(r: &Route, op: BatchOp, flags: NlmF, seq: u32) -> Vec<u8> {
        let mut out = Vec::new();
        match op {
            BatchOp::Add | BatchOp::Replace => {
                let f = if op == BatchOp::Add {
                    NlmF::CREATE | NlmF::EXCL
                } else {
                    NlmF::CREATE | NlmF::REPLACE
                };
                let msg = r.to_rtmsg().unwrap();
                super::super::encode_message(
                    &mut out,
                    Rtm::Newroute,
                    f | flags | NlmF::REQUEST,
                    seq,
                    msg,
                );
            }
            BatchOp::Delete => {
                let msg = r.to_delete_rtmsg();
                super::super::encode_message(
                    &mut out,
                    Rtm::Delroute,
                    flags | NlmF::REQUEST,
                    seq,
                    msg,
                );
            }
        }
        out
    }

    #[test]
    fn direct_writer_matches_neli_for_every_attribute_and_encap() {
        let mut routes = Vec::new();
        let encaps = [
            None,
            Some(Encap::Bpf(BpfEncap {
                xmit: Some(ProgRef::new(8, "prog")),
                ..Default::default()
            })),
            Some(Encap::Bpf(BpfEncap {
                input: Some(ProgRef::new(5, "a")),
                output: Some(ProgRef::new(6, "bb")),
                xmit: Some(ProgRef::new(7, "ccc")),
                headroom: Some(20),
            })),
            Some(Encap::Bpf(BpfEncap {
                output: Some(ProgRef::new(9, "lwtun:count_out:123456")),
                ..Default::default()
            })),
            Some(Encap::Seg6LocalBpf(ProgRef::new(4, "end_bpf"))),
            Some(Encap::Seg6(Seg6Encap {
                mode: Seg6Mode::Encap,
                segments: vec!["fc00::1".parse().unwrap(), "fc00::2".parse().unwrap()],
            })),
            Some(Encap::Seg6(Seg6Encap {
                mode: Seg6Mode::Inline,
                segments: vec!["fc00::1".parse().unwrap()],
            })),
            Some(Encap::Seg6Local(Seg6Local::EndX {
                nh6: "fc00::9".parse().unwrap(),
            })),
            Some(Encap::Seg6Local(Seg6Local::EndDt6 { table: 100 })),
            Some(Encap::Other {
                kind: 1,
                data: vec![8, 0, 1, 0, 1, 2, 3, 4, 7],
            }),
        ];
        for (k, encap) in encaps.iter().enumerate() {
            for v6 in [false, true] {
                let mut r = Route::new(if v6 {
                    "2001:db8:1::/64".parse().unwrap()
                } else {
                    "10.9.0.0/16".parse().unwrap()
                });
                r.encap = encap.clone();
                if k % 2 == 0 {
                    r.oif = Some(3 + k as u32);
                }
                if k % 3 == 0 {
                    r.metric = Some(77);
                    r.table = 1000;
                } else {
                    r.table = 100;
                }
                if k % 4 == 1 {
                    r.gateway = Some(if v6 {
                        "2001:db8::1".parse().unwrap()
                    } else {
                        "10.0.0.1".parse().unwrap()
                    });
                    r.prefsrc = Some(if v6 {
                        "2001:db8::2".parse().unwrap()
                    } else {
                        "10.0.0.2".parse().unwrap()
                    });
                }
                r.tos = (k % 2) as u8 * 8;
                r.protocol = RTPROT_STATIC;
                if r.validate().is_ok() {
                    routes.push(r);
                }
            }
        }
        for (dst, table, metric) in [
            ("10.9.0.0/16", 100, None),
            ("2001:db8:1::/64", 1000, Some(5)),
        ] {
            let mut r = Route::new(dst.parse().unwrap());
            r.nhid = Some(7);
            r.table = table;
            r.metric = metric;
            r.validate().unwrap();
            routes.push(r);
        }
        assert!(routes.len() >= 17, "{} routes", routes.len());
        for (n, r) in routes.iter().enumerate() {
            for op in [BatchOp::Add, BatchOp::Replace, BatchOp::Delete] {
                for (flags, bits) in [(NlmF::empty(), 0u16), (NlmF::ACK, 4)] {
                    let seq = 1000 + n as u32;
                    let mut ours = vec![0xee; 3]; // appends after what is there
                    r.write_request(&mut ours, op, bits, seq);
                    assert_eq!(&ours[..3], &[0xee; 3]);
                    assert_eq!(
                        ours[3..],
                        neli_request(r, op, flags, seq)[..],
                        "{op:?} {r} flags {bits}"
                    );
                }
            }
            assert_eq!(
                r.to_request(BatchOp::Add, 5).unwrap(),
                neli_request(r, BatchOp::Add, NlmF::ACK, 5)
            );
        }
    }

    #[test]
    fn encap_round_trips_through_bytes() {
        let e = Encap::Bpf(BpfEncap {
            input: Some(ProgRef::new(5, "a")),
            output: None,
            xmit: Some(ProgRef::new(6, "b")),
            headroom: Some(40),
        });
        let (kind, data) = encode_encap(&e);
        assert_eq!(kind, LWTUNNEL_ENCAP_BPF);
        let back = decode_encap(kind, data);
        let Encap::Bpf(b) = back else {
            panic!("not bpf")
        };
        assert_eq!(b.input.unwrap().name, "a");
        assert_eq!(b.xmit.unwrap().name, "b");
        assert_eq!(b.headroom, Some(40));
        assert!(b.output.is_none());

        let (kind, data) = encode_encap(&Encap::Seg6LocalBpf(ProgRef::new(5, "end")));
        assert_eq!(kind, LWTUNNEL_ENCAP_SEG6_LOCAL);
        assert_eq!(
            decode_encap(kind, data),
            Encap::Seg6LocalBpf(ProgRef {
                name: "end".into(),
                fd: None
            })
        );
        // Unknown encap types are kept whole.
        assert_eq!(
            decode_encap(1, vec![1, 2, 3, 4]),
            Encap::Other {
                kind: 1,
                data: vec![1, 2, 3, 4]
            }
        );
    }
}
