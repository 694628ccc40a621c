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
//!
//! The module is the route model (this file), its bytes (`codec`: requests and decoding),
//! changes (`change`: add, replace, delete and batches) and dumps (`dump`).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::RawFd;

use ipnetwork::IpNetwork;

use super::attr::RawAttribute;
use crate::error::{Error, Result};

mod change;
mod codec;
mod dump;
#[cfg(test)]
mod neli_oracle;

pub use change::{BatchOp, BatchReport, RouteBatch};
pub(in crate::netlink) use codec::{decode_encap, ip_of, write_encap};
pub use dump::RouteFilter;

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
#[non_exhaustive]
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
}

impl fmt::Display for Route {
    /// Roughly `ip route show`'s words: `10.1.0.0/16 via 10.0.0.1 dev#2 table 100 metric 7
    /// encap bpf xmit NAME headroom 20`.
    ///
    /// The kernel's SRv6 encaps come right after the destination, worded as `ip -6 route show`
    /// prints them: `2001:db8::/64 encap seg6 mode encap segs 2 [ fc00:1::1 fc00:2::2 ] dev#3`,
    /// `fc00::6 encap seg6local action End.DT6 table 100 dev#3` (a /128 without its length).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_words(f, None)
    }
}

impl Route {
    /// The route in `ip route` words as [`Display`](fmt::Display) says it, with the device
    /// named `dev` (`dev veth0`) instead of by index (`dev#2`): what errors print.
    pub(crate) fn describe(&self, dev: Option<&str>) -> String {
        struct Words<'a>(&'a Route, Option<&'a str>);
        impl fmt::Display for Words<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.write_words(f, self.1)
            }
        }
        Words(self, dev).to_string()
    }

    fn write_words(&self, f: &mut fmt::Formatter<'_>, dev: Option<&str>) -> fmt::Result {
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
        match (dev, self.oif) {
            (Some(name), _) => write!(f, " dev {name}")?,
            (None, Some(oif)) => write!(f, " dev#{oif}")?,
            (None, None) => {}
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
}
