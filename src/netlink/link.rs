//! Network interfaces ("links") over rtnetlink: look up, list, bring up or down, set the MTU,
//! create veth pairs and collect_md ("external") tunnel devices, move to another namespace,
//! delete, and attach or detach an XDP program by fd.
//!
//! Every method works in the network namespace the [`Netlink`] socket was opened in. Requests are
//! built by pure functions and checked before any system call; the bytes they produce are the
//! ones `ip link` sends (tests/golden_link.rs compares them with iproute2's).
//!
//! # Examples
//!
//! ```no_run
//! use lwtun::netlink::Netlink;
//!
//! let mut nl = Netlink::open()?;
//! nl.add_veth("lw0", "lw1", None)?;
//! let lw0 = nl.link_by_name("lw0")?;
//! nl.set_link_mtu(lw0.index, 9000)?;
//! nl.set_link_up(lw0.index, true)?;
//! assert_eq!(nl.link_by_index(lw0.index)?.kind.as_deref(), Some("veth"));
//! nl.delete_link(lw0.index)?; // deleting one end of a veth pair deletes both
//! # Ok::<(), lwtun::Error>(())
//! ```

use std::fmt;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use neli::consts::nl::NlmF;
use neli::consts::rtnl::{Arphrd, Iff, Ifla, RtAddrFamily, Rtm};
use neli::rtnl::{Ifinfomsg, IfinfomsgBuilder, Rtattr, RtattrBuilder};
use neli::types::{Buffer, RtBuffer};

use super::attr::{self, Nest, NLA_TYPE_MASK};
use super::{decode_body, encode_message, Answer, Netlink};
use crate::error::{Error, ErrorKind, Result};
use crate::netns::NetNs;

/// The longest interface name the kernel takes, in bytes (`IFNAMSIZ - 1`).
pub const MAX_NAME_LEN: usize = 15;
/// The smallest MTU [`Netlink::set_link_mtu`] accepts: IPv4's minimum (`ETH_MIN_MTU`).
pub const MIN_MTU: u32 = 68;
/// The largest MTU [`Netlink::set_link_mtu`] accepts: 65536, the loopback default (an IP
/// packet's length field is 16 bits).
pub const MAX_MTU: u32 = 65536;
/// The IANA VXLAN port, [`VxlanOptions::port`]'s default.
pub const VXLAN_PORT: u16 = 4789;

// Link attribute and nest numbers (include/uapi/linux/if_link.h, veth.h) that neli does not name.
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_EXPECTED_FD: u16 = 8;
const IFLA_VXLAN_LOCAL: u16 = 4;
const IFLA_VXLAN_TTL: u16 = 5;
const IFLA_VXLAN_LEARNING: u16 = 7;
const IFLA_VXLAN_PORT: u16 = 15;
const IFLA_VXLAN_LOCAL6: u16 = 17;
const IFLA_VXLAN_COLLECT_METADATA: u16 = 25;
const IFLA_GRE_COLLECT_METADATA: u16 = 18;
const IFLA_IPTUN_COLLECT_METADATA: u16 = 19;
const IFINFOMSG_LEN: usize = 16;

pub use super::attr::RawAttribute;

/// How an XDP program is attached to a link, as the kernel reports it (`IFLA_XDP_ATTACHED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XdpAttachMode {
    /// In the driver (native XDP, `XDP_ATTACHED_DRV`).
    Driver,
    /// Generic XDP in the stack (`XDP_ATTACHED_SKB`).
    Generic,
    /// Offloaded to the NIC (`XDP_ATTACHED_HW`).
    Hardware,
    /// Several modes at once (`XDP_ATTACHED_MULTI`): see the per-mode program ids in
    /// [`Link::attributes`].
    Multi,
}

/// A network interface as the kernel describes it in `RTM_NEWLINK`.
///
/// # Examples
///
/// ```no_run
/// use lwtun::netlink::Netlink;
///
/// let lo = Netlink::open()?.link_by_name("lo")?;
/// assert!(lo.index > 0 && lo.kind.is_none());
/// println!("{} mtu {} up {} xdp {:?}", lo.name, lo.mtu, lo.up, lo.xdp_prog_id);
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The interface index, unique within its namespace.
    pub index: u32,
    /// The interface name (`IFLA_IFNAME`).
    pub name: String,
    /// The device kind (`IFLA_INFO_KIND`): `veth`, `vxlan`, ...; `None` for devices without
    /// rtnetlink link ops, such as `lo` or most physical NICs.
    pub kind: Option<String>,
    /// The MTU in bytes.
    pub mtu: u32,
    /// Whether the interface is administratively up (`IFF_UP`).
    pub up: bool,
    /// All `IFF_*` flags, raw (`IFF_LOWER_UP` = 0x10000 tells the carrier is up).
    pub flags: u32,
    /// The hardware type (`ARPHRD_*`: 1 Ethernet, 772 loopback).
    pub link_type: u16,
    /// The link-layer address, for 6-byte (Ethernet) addresses.
    pub mac: Option<[u8; 6]>,
    /// `IFLA_LINK`: for a veth, its peer's index; for a VLAN, its parent's. The index is in the
    /// namespace named by [`Link::link_netnsid`] when that is set.
    pub link: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the namespace id (as seen from this namespace) of the peer or parent.
    pub link_netnsid: Option<i32>,
    /// `IFLA_MASTER`: the bridge or bond this interface belongs to.
    pub master: Option<u32>,
    /// The id of the attached XDP program (`IFLA_XDP_PROG_ID`), if any.
    pub xdp_prog_id: Option<u32>,
    /// How that program is attached.
    pub xdp_attach_mode: Option<XdpAttachMode>,
    /// Attributes not decoded into the fields above (statistics, queues, `IFLA_LINKINFO`'s
    /// kind-specific data, ...), kept raw in the kernel's order.
    pub attributes: Vec<RawAttribute>,
}

#[cfg(test)]
impl Link {
    /// An up link `t0` (index 5, MTU 1500) of `link_type`, for unit tests of what reads links.
    pub(crate) fn for_tests(link_type: u16, mac: Option<[u8; 6]>) -> Link {
        Link {
            index: 5,
            name: "t0".into(),
            kind: None,
            mtu: 1500,
            up: true,
            flags: 0,
            link_type,
            mac,
            link: None,
            link_netnsid: None,
            master: None,
            xdp_prog_id: None,
            xdp_attach_mode: None,
            attributes: Vec::new(),
        }
    }
}

impl Link {
    /// The first raw attribute of type `kind` (an `IFLA_*` number), if the kernel sent one and
    /// lwtun did not decode it into a field.
    pub fn attribute(&self, kind: u16) -> Option<&[u8]> {
        self.attributes
            .iter()
            .find(|a| a.kind == kind)
            .map(|a| a.value.as_slice())
    }
}

bitflags::bitflags! {
    /// Flags of an XDP attachment (`XDP_FLAGS_*` in `include/uapi/linux/if_link.h`).
    ///
    /// At most one of the mode flags ([`SKB_MODE`](Self::SKB_MODE),
    /// [`DRV_MODE`](Self::DRV_MODE), [`HW_MODE`](Self::HW_MODE)) may be set; none lets the kernel
    /// choose (driver mode where the driver has it, generic otherwise).
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::netlink::link::XdpFlags;
    ///
    /// let flags = XdpFlags::DRV_MODE | XdpFlags::UPDATE_IF_NOEXIST;
    /// assert_eq!(flags.bits(), 5);
    /// ```
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct XdpFlags: u32 {
        /// Fail with [`ErrorKind::Exists`] if a program is attached already.
        const UPDATE_IF_NOEXIST = 1 << 0;
        /// Generic XDP, in the stack after the skb is built; works on every device.
        const SKB_MODE = 1 << 1;
        /// Native XDP in the driver (veth has it).
        const DRV_MODE = 1 << 2;
        /// Offloaded to the NIC.
        const HW_MODE = 1 << 3;
        /// Replace only the program given as expected (`IFLA_XDP_EXPECTED_FD`): set by
        /// [`Netlink::replace_xdp_fd`].
        const REPLACE = 1 << 4;
    }
}

impl XdpFlags {
    const MODES: XdpFlags = XdpFlags::SKB_MODE
        .union(XdpFlags::DRV_MODE)
        .union(XdpFlags::HW_MODE);
}

/// Options of a collect_md ("external") VXLAN device, for [`Netlink::add_vxlan_external`].
///
/// # Examples
///
/// ```
/// use lwtun::netlink::link::VxlanOptions;
///
/// let opts = VxlanOptions { local: Some("10.0.0.1".parse().unwrap()), ..Default::default() };
/// assert_eq!(opts.port, 4789);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanOptions {
    /// The UDP destination port (`dstport`), and the port the device listens on: 4789 by
    /// default (the kernel's own default, 8472, is the pre-IANA Linux port).
    pub port: u16,
    /// The source address of encapsulated packets (`local`); `None` lets the route decide.
    pub local: Option<IpAddr>,
    /// Whether the device learns remote MACs from received packets (`learning`). Off by
    /// default, as `ip link add ... external` has it.
    pub learning: bool,
    /// The outer TTL (`ttl`); `None` inherits the kernel default.
    pub ttl: Option<u8>,
}

impl Default for VxlanOptions {
    fn default() -> Self {
        VxlanOptions {
            port: VXLAN_PORT,
            local: None,
            learning: false,
            ttl: None,
        }
    }
}

/// A kernel tunnel device kind with a collect_md ("external") mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TunnelKind {
    Gre,
    Ip6Gre,
    Ipip,
    Ip6Tnl,
    Vxlan,
}

impl TunnelKind {
    fn kind(self) -> &'static str {
        match self {
            TunnelKind::Gre => "gre",
            TunnelKind::Ip6Gre => "ip6gre",
            TunnelKind::Ipip => "ipip",
            TunnelKind::Ip6Tnl => "ip6tnl",
            TunnelKind::Vxlan => "vxlan",
        }
    }

    /// The feature named in an Unsupported error, and the first kernel with its collect_md
    /// mode where that is certain.
    fn feature(self) -> (&'static str, Option<&'static str>) {
        match self {
            TunnelKind::Gre => (
                "collect_md (external) gre tunnel devices (CONFIG_NET_IPGRE)",
                Some("4.3"),
            ),
            TunnelKind::Ip6Gre => (
                "collect_md (external) ip6gre tunnel devices (CONFIG_IPV6_GRE)",
                None,
            ),
            TunnelKind::Ipip => (
                "collect_md (external) ipip tunnel devices (CONFIG_NET_IPIP)",
                Some("4.9"),
            ),
            TunnelKind::Ip6Tnl => (
                "collect_md (external) ip6tnl tunnel devices (CONFIG_IPV6_TUNNEL)",
                Some("4.9"),
            ),
            TunnelKind::Vxlan => (
                "collect_md (external) vxlan devices (CONFIG_VXLAN)",
                Some("4.3"),
            ),
        }
    }

    fn collect_md_attr(self) -> u16 {
        match self {
            TunnelKind::Gre | TunnelKind::Ip6Gre => IFLA_GRE_COLLECT_METADATA,
            TunnelKind::Ipip | TunnelKind::Ip6Tnl => IFLA_IPTUN_COLLECT_METADATA,
            TunnelKind::Vxlan => IFLA_VXLAN_COLLECT_METADATA,
        }
    }
}

/// A request ready to frame: message type, flags (without `NLM_F_REQUEST`/`NLM_F_ACK`) and body.
#[derive(Debug)]
pub(crate) struct LinkRequest {
    pub(crate) ty: Rtm,
    pub(crate) flags: NlmF,
    pub(crate) body: Ifinfomsg,
}

impl LinkRequest {
    /// The framed request as [`Netlink`] sends it, with sequence number `seq`.
    pub(crate) fn to_bytes(&self, seq: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        encode_message(
            &mut out,
            self.ty,
            self.flags | NlmF::REQUEST | NlmF::ACK,
            seq,
            self.body.clone(),
        );
        out
    }
}

/// Checks an interface name the way the kernel's `dev_valid_name` does.
pub(crate) fn validate_name(op: &str, name: &str) -> Result<()> {
    let bad_char = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || *c == '\0' || c.is_ascii_whitespace());
    let why = if name.is_empty() {
        Some("is empty".to_string())
    } else if name.len() > MAX_NAME_LEN {
        Some(format!(
            "is {} bytes long; the kernel takes at most {MAX_NAME_LEN}",
            name.len()
        ))
    } else if name == "." || name == ".." {
        Some("is reserved".to_string())
    } else {
        bad_char.map(|c| format!("contains {c:?}, which interface names cannot hold"))
    };
    match why {
        Some(why) => Err(Error::invalid_input(
            op,
            format!("interface name {name:?} {why}"),
        )),
        None => Ok(()),
    }
}

fn validate_index(op: &str, index: u32) -> Result<i32> {
    match i32::try_from(index) {
        Ok(i) if i > 0 => Ok(i),
        _ => Err(Error::invalid_input(
            op,
            format!("interface index {index} is not a valid index (1..=2147483647)"),
        )),
    }
}

fn rta(ty: Ifla, value: &[u8]) -> Rtattr<Ifla, Buffer> {
    RtattrBuilder::default()
        .rta_type(ty)
        .rta_payload(Buffer::from(value))
        .build()
        .expect("type and payload are set, and a byte buffer always serializes")
}

fn ifinfomsg(index: i32, flags: Iff, change: Iff, attrs: Vec<Rtattr<Ifla, Buffer>>) -> Ifinfomsg {
    IfinfomsgBuilder::default()
        .ifi_family(RtAddrFamily::Unspecified)
        .ifi_type(Arphrd::from(0))
        .ifi_index(index)
        .ifi_flags(flags)
        .ifi_change(change)
        .rtattrs(attrs.into_iter().collect::<RtBuffer<_, _>>())
        .build()
        .expect("every field of Ifinfomsg has a value")
}

fn cstring(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

/// `IFLA_LINKINFO { IFLA_INFO_KIND kind, IFLA_INFO_DATA data }`, laid out as iproute2 does (kind
/// without NUL, nests without `NLA_F_NESTED`).
fn linkinfo(kind: &str, data: &[u8]) -> Rtattr<Ifla, Buffer> {
    let mut info = Nest::new();
    info.put(IFLA_INFO_KIND, kind.as_bytes());
    info.put(IFLA_INFO_DATA, data);
    rta(Ifla::Linkinfo, info.bytes())
}

fn new_link(name: &str, kind: &str, data: &[u8]) -> LinkRequest {
    LinkRequest {
        ty: Rtm::Newlink,
        flags: NlmF::CREATE | NlmF::EXCL,
        body: ifinfomsg(
            0,
            Iff::empty(),
            Iff::empty(),
            vec![rta(Ifla::Ifname, &cstring(name)), linkinfo(kind, data)],
        ),
    }
}

/// `ip link add NAME type veth peer name PEER [netns FD]`.
pub(crate) fn veth_request(name: &str, peer: &str, peer_netns: Option<i32>) -> Result<LinkRequest> {
    let op = "add veth pair";
    validate_name(op, name)?;
    validate_name(op, peer)?;
    if name == peer && peer_netns.is_none() {
        return Err(Error::invalid_input(
            op,
            format!("both ends are named {name:?} in the same namespace"),
        ));
    }
    // VETH_INFO_PEER holds a struct ifinfomsg (all zero) followed by the peer's attributes.
    // iproute2's order: the namespace fd, then the name.
    let mut peer_attrs = Nest::new();
    if let Some(fd) = peer_netns {
        peer_attrs.u32(IFLA_NET_NS_FD, fd as u32);
    }
    peer_attrs.put(Ifla::Ifname.into(), &cstring(peer));
    let mut peer_value = vec![0u8; IFINFOMSG_LEN];
    peer_value.extend_from_slice(peer_attrs.bytes());
    let mut data = Nest::new();
    data.put(VETH_INFO_PEER, &peer_value);
    Ok(new_link(name, "veth", data.bytes()))
}

/// `ip link add NAME type vxlan external dstport PORT [local ADDR] [ttl TTL] [learning]`.
pub(crate) fn vxlan_request(name: &str, opts: &VxlanOptions) -> Result<LinkRequest> {
    let op = "add vxlan device";
    validate_name(op, name)?;
    if opts.port == 0 {
        return Err(Error::invalid_input(
            op,
            "UDP port 0 is not a valid VXLAN port",
        ));
    }
    if let Some(local) = opts.local {
        if local.is_unspecified() || local.is_multicast() {
            return Err(Error::invalid_input(
                op,
                format!("local address {local} must be a unicast address"),
            ));
        }
    }
    // iproute2's order, whatever the order of its arguments: collect_md, ttl, local, learning,
    // port.
    let mut data = Nest::new();
    data.u8(IFLA_VXLAN_COLLECT_METADATA, 1);
    if let Some(ttl) = opts.ttl {
        data.u8(IFLA_VXLAN_TTL, ttl);
    }
    match opts.local {
        Some(IpAddr::V4(a)) => {
            data.put(IFLA_VXLAN_LOCAL, &a.octets());
        }
        Some(IpAddr::V6(a)) => {
            data.put(IFLA_VXLAN_LOCAL6, &a.octets());
        }
        None => {}
    }
    data.u8(IFLA_VXLAN_LEARNING, opts.learning as u8);
    data.put(IFLA_VXLAN_PORT, &opts.port.to_be_bytes());
    Ok(new_link(name, TunnelKind::Vxlan.kind(), data.bytes()))
}

/// `ip link add NAME type KIND external` for the gre and ip tunnel kinds.
fn tunnel_request(name: &str, kind: TunnelKind) -> Result<LinkRequest> {
    validate_name(&format!("add {} device", kind.kind()), name)?;
    let mut data = Nest::new();
    data.put(kind.collect_md_attr(), &[]);
    Ok(new_link(name, kind.kind(), data.bytes()))
}

/// `ip link set dev INDEX up|down`.
pub(crate) fn set_up_request(index: u32, up: bool) -> Result<LinkRequest> {
    let index = validate_index("set link up/down", index)?;
    let flags = if up { Iff::UP } else { Iff::empty() };
    Ok(LinkRequest {
        ty: Rtm::Newlink,
        flags: NlmF::empty(),
        body: ifinfomsg(index, flags, Iff::UP, Vec::new()),
    })
}

/// `ip link set dev INDEX mtu MTU`.
pub(crate) fn set_mtu_request(index: u32, mtu: u32) -> Result<LinkRequest> {
    let op = "set link mtu";
    let index = validate_index(op, index)?;
    if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
        return Err(Error::invalid_input(
            op,
            format!("MTU {mtu} is outside {MIN_MTU}..={MAX_MTU}"),
        ));
    }
    Ok(LinkRequest {
        ty: Rtm::Newlink,
        flags: NlmF::empty(),
        body: ifinfomsg(
            index,
            Iff::empty(),
            Iff::empty(),
            vec![rta(Ifla::Mtu, &mtu.to_ne_bytes())],
        ),
    })
}

/// `ip link del dev INDEX`.
pub(crate) fn delete_request(index: u32) -> Result<LinkRequest> {
    let index = validate_index("delete link", index)?;
    Ok(LinkRequest {
        ty: Rtm::Dellink,
        flags: NlmF::empty(),
        body: ifinfomsg(index, Iff::empty(), Iff::empty(), Vec::new()),
    })
}

/// `ip link set dev INDEX netns FD`.
pub(crate) fn move_request(index: u32, netns: i32) -> Result<LinkRequest> {
    let index = validate_index("move link to namespace", index)?;
    Ok(LinkRequest {
        ty: Rtm::Newlink,
        flags: NlmF::empty(),
        body: ifinfomsg(
            index,
            Iff::empty(),
            Iff::empty(),
            vec![rta(Ifla::NetNsFd, &(netns as u32).to_ne_bytes())],
        ),
    })
}

/// `IFLA_XDP { FD fd, FLAGS flags [, EXPECTED_FD expected] }` on link `index`; `fd` -1 detaches.
pub(crate) fn xdp_request(
    index: u32,
    fd: i32,
    expected: Option<i32>,
    flags: XdpFlags,
) -> Result<LinkRequest> {
    let op = if fd < 0 { "detach XDP" } else { "attach XDP" };
    let index = validate_index(op, index)?;
    if (flags & XdpFlags::MODES).bits().count_ones() > 1 {
        return Err(Error::invalid_input(
            op,
            format!("XDP flags {flags:?} name more than one of SKB_MODE, DRV_MODE and HW_MODE"),
        ));
    }
    if flags.contains(XdpFlags::REPLACE) != expected.is_some() {
        return Err(Error::invalid_input(
            op,
            "XdpFlags::REPLACE goes with an expected program: use Netlink::replace_xdp_fd",
        ));
    }
    // Detaching with UPDATE_IF_NOEXIST is what iproute2 sends (`ip link set dev X xdp off`
    // has flags 1|mode); the kernel ignores it there. REPLACE would need an expected program.
    if fd < 0 && flags.contains(XdpFlags::REPLACE) {
        return Err(Error::invalid_input(
            op,
            "detaching takes a mode flag, not REPLACE",
        ));
    }
    let mut xdp = Nest::new();
    xdp.u32(IFLA_XDP_FD, fd as u32);
    if !flags.is_empty() {
        xdp.u32(IFLA_XDP_FLAGS, flags.bits());
    }
    if let Some(e) = expected {
        xdp.u32(IFLA_XDP_EXPECTED_FD, e as u32);
    }
    Ok(LinkRequest {
        ty: Rtm::Newlink,
        flags: NlmF::empty(),
        body: ifinfomsg(
            index,
            Iff::empty(),
            Iff::empty(),
            vec![rta(Ifla::Xdp, xdp.bytes())],
        ),
    })
}

/// A `RTM_GETLINK` for one link, by index or by name.
fn get_request(index: i32, name: Option<&str>) -> Ifinfomsg {
    let attrs = match name {
        Some(n) => vec![rta(Ifla::Ifname, &cstring(n))],
        None => Vec::new(),
    };
    ifinfomsg(index, Iff::empty(), Iff::empty(), attrs)
}

/// Decodes an `RTM_NEWLINK` body (`struct ifinfomsg` and attributes) into a [`Link`].
pub(crate) fn decode_link(body: &[u8]) -> Result<Link> {
    let op = "decode link";
    let msg: Ifinfomsg = decode_body(op, body)?;
    let mut link = Link {
        index: (*msg.ifi_index()).max(0) as u32,
        name: String::new(),
        kind: None,
        mtu: 0,
        up: msg.ifi_flags().contains(Iff::UP),
        flags: msg.ifi_flags().bits(),
        link_type: (*msg.ifi_type()).into(),
        mac: None,
        link: None,
        link_netnsid: None,
        master: None,
        xdp_prog_id: None,
        xdp_attach_mode: None,
        attributes: Vec::new(),
    };
    for a in msg.rtattrs().iter() {
        let ty = u16::from(*a.rta_type()) & NLA_TYPE_MASK;
        let v: &[u8] = a.rta_payload().as_ref();
        let mut keep = false;
        match Ifla::from(ty) {
            Ifla::Ifname => link.name = attr::cstr(v),
            Ifla::Mtu => link.mtu = attr::u32_of(v).unwrap_or(0),
            Ifla::Address => link.mac = v.try_into().ok(),
            Ifla::Link => link.link = attr::u32_of(v),
            Ifla::LinkNetnsid => link.link_netnsid = attr::u32_of(v).map(|n| n as i32),
            Ifla::Master => link.master = attr::u32_of(v),
            Ifla::Linkinfo => {
                link.kind = attr::find(v, IFLA_INFO_KIND).map(attr::cstr);
                keep = true;
            }
            Ifla::Xdp => {
                link.xdp_attach_mode = match attr::find(v, IFLA_XDP_ATTACHED) {
                    Some([1]) => Some(XdpAttachMode::Driver),
                    Some([2]) => Some(XdpAttachMode::Generic),
                    Some([3]) => Some(XdpAttachMode::Hardware),
                    Some([4]) => Some(XdpAttachMode::Multi),
                    _ => None,
                };
                link.xdp_prog_id = attr::find(v, IFLA_XDP_PROG_ID).and_then(attr::u32_of);
                keep = link.xdp_attach_mode == Some(XdpAttachMode::Multi);
            }
            _ => keep = true,
        }
        if keep {
            link.attributes.push(RawAttribute {
                kind: ty,
                value: v.to_vec(),
            });
        }
    }
    if link.name.is_empty() {
        return Err(Error::other(
            ErrorKind::Kernel,
            op,
            format!(
                "RTM_NEWLINK for index {} carries no IFLA_IFNAME",
                link.index
            ),
        ));
    }
    Ok(link)
}

/// Names an interface in errors: `'veth0'` or `index 7`.
struct Named<'a>(&'a str);

impl fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}'", self.0)
    }
}

struct Index(u32);

impl fmt::Display for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "interface index {}", self.0)
    }
}

impl Netlink {
    /// Sends a non-dump request with `NLM_F_ACK` and returns the first answer `decode` accepts,
    /// after the kernel's ACK.
    fn get_one<R>(
        &mut self,
        op: &str,
        object: &dyn fmt::Display,
        ty: Rtm,
        body: Ifinfomsg,
        mut decode: impl FnMut(u16, &[u8]) -> Result<Option<R>>,
    ) -> Result<R> {
        let mut out = Vec::with_capacity(64);
        let seq = self.encode(&mut out, ty, NlmF::ACK, body);
        self.send(op, &out)?;
        let mut item: Option<Result<R>> = None;
        let mut result = None;
        while result.is_none() {
            self.recv_each(op, |a| {
                match a {
                    Answer::Payload { ty, body } if item.is_none() => {
                        item = decode(ty, body).transpose();
                    }
                    Answer::Ack { seq: s, result: r } if s == seq => {
                        result = Some(r);
                        return false;
                    }
                    _ => {}
                }
                true
            })?;
        }
        match result {
            Some(Err((errno, ext_ack))) => {
                Err(Error::netlink(op, errno, ext_ack).with_object(object.to_string()))
            }
            _ => item.unwrap_or_else(|| {
                Err(Error::other(
                    ErrorKind::Kernel,
                    op,
                    format!("the kernel acknowledged but sent no answer for {object}"),
                ))
            }),
        }
    }

    fn link_request(
        &mut self,
        op: &str,
        object: &dyn fmt::Display,
        req: LinkRequest,
    ) -> Result<()> {
        self.request(op, object, req.ty, req.flags, req.body)
    }

    /// Lists every link in the socket's namespace.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when the socket fails; [`ErrorKind::Kernel`] for an undecodable answer.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let body = ifinfomsg(0, Iff::empty(), Iff::empty(), Vec::new());
        self.dump("list links", Rtm::Getlink, body, |ty, body| {
            if ty != u16::from(Rtm::Newlink) {
                return Ok(None);
            }
            decode_link(body).map(Some)
        })
    }

    /// Looks a link up by name.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] saying `unknown interface 'NAME'` when there is none;
    /// [`ErrorKind::InvalidInput`] for a name the kernel could never hold.
    pub fn link_by_name(&mut self, name: &str) -> Result<Link> {
        let op = "look up interface";
        validate_name(op, name)?;
        let named = Named(name);
        self.get_one(
            op,
            &named,
            Rtm::Getlink,
            get_request(0, Some(name)),
            |ty, b| {
                if ty == u16::from(Rtm::Newlink) {
                    decode_link(b).map(Some)
                } else {
                    Ok(None)
                }
            },
        )
        .map_err(|e| unknown_interface(e, op, &named))
    }

    /// Looks a link up by index.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] saying `unknown interface index N` when there is none.
    pub fn link_by_index(&mut self, index: u32) -> Result<Link> {
        let op = "look up interface";
        let i = validate_index(op, index)?;
        let object = Index(index);
        self.get_one(op, &object, Rtm::Getlink, get_request(i, None), |ty, b| {
            if ty == u16::from(Rtm::Newlink) {
                decode_link(b).map(Some)
            } else {
                Ok(None)
            }
        })
        .map_err(|e| unknown_interface(e, op, &object))
    }

    /// Sets a link administratively up (`true`) or down (`false`), like `ip link set dev X up`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] for an unknown index.
    pub fn set_link_up(&mut self, index: u32, up: bool) -> Result<()> {
        let req = set_up_request(index, up)?;
        let op = if up { "set link up" } else { "set link down" };
        self.link_request(op, &Index(index), req)
            .map_err(|e| unknown_interface(e, op, &Index(index)))
    }

    /// Sets a link's MTU, like `ip link set dev X mtu N`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for an MTU outside [`MIN_MTU`]`..=`[`MAX_MTU`] (before any
    /// system call) or outside the device's own range (the kernel says which);
    /// [`ErrorKind::NotFound`] for an unknown index.
    pub fn set_link_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let req = set_mtu_request(index, mtu)?;
        let op = "set link mtu";
        self.link_request(op, &Index(index), req)
            .map_err(|e| unknown_interface(e, op, &Index(index)))
    }

    /// Creates a veth pair `name` <-> `peer_name`; the peer goes into the namespace `peer_netns`
    /// (an open `/run/netns/NAME` or `/proc/PID/ns/net`) when given, else it stays here. Both ends
    /// start down.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for invalid names (nothing is sent); [`ErrorKind::Exists`] when
    /// either name is taken (nothing is created).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::{netlink::Netlink, netns::NetNs};
    ///
    /// let blue = NetNs::open("blue")?;
    /// Netlink::open()?.add_veth("to-blue", "from-host", Some(&blue))?;
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn add_veth(
        &mut self,
        name: &str,
        peer_name: &str,
        peer_netns: Option<&NetNs>,
    ) -> Result<()> {
        let fd = peer_netns.map(NetNs::fd).transpose()?;
        let req = veth_request(name, peer_name, fd.as_ref().map(|fd| fd.as_raw_fd()))?;
        let object = format!("'{name}' (peer '{peer_name}')");
        self.link_request("add veth pair", &object, req)
    }

    /// Deletes a link (for a veth, both ends).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] for an unknown index; [`ErrorKind::InvalidInput`] (EOPNOTSUPP is
    /// reported as [`ErrorKind::Unsupported`]) for devices that cannot be deleted, such as `lo`.
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let req = delete_request(index)?;
        self.link_request("delete link", &Index(index), req)
            .map_err(|e| unknown_interface(e, "delete link", &Index(index)))
    }

    /// Moves a link into the namespace `netns`, like
    /// `ip link set dev X netns NS`. The link keeps its name and goes down; its index in the new
    /// namespace may differ.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] for an unknown index; [`ErrorKind::Exists`] when the target
    /// namespace has a link of that name already; [`ErrorKind::InvalidInput`] when the device
    /// cannot change namespace (`lo`, vxlan with a bound device...).
    pub fn move_link_to_netns(&mut self, index: u32, netns: &NetNs) -> Result<()> {
        let fd = netns.fd()?;
        let req = move_request(index, fd.as_raw_fd())?;
        self.link_request("move link to namespace", &Index(index), req)
            .map_err(|e| unknown_interface(e, "move link to namespace", &Index(index)))
    }

    /// Creates a collect_md ("external") VXLAN device, like `ip link add NAME type vxlan external
    /// dstport 4789`: one device for every VNI and remote, chosen per packet by the tunnel key
    /// a BPF program sets (`bpf_skb_set_tunnel_key`). The device starts down.
    ///
    /// Kernel: Linux 4.3+ (collect_md VXLAN), with `CONFIG_VXLAN`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Exists`] for a taken name, or when an external VXLAN device on the same port
    /// exists already; [`ErrorKind::Unsupported`] without `CONFIG_VXLAN`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::netlink::{Netlink, link::VxlanOptions};
    ///
    /// Netlink::open()?.add_vxlan_external("vx0", &VxlanOptions::default())?;
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn add_vxlan_external(&mut self, name: &str, options: &VxlanOptions) -> Result<()> {
        let req = vxlan_request(name, options)?;
        self.add_tunnel(name, TunnelKind::Vxlan, req)
    }

    /// Creates a collect_md ("external") GRE device, like `ip link add NAME type gre external`.
    ///
    /// Kernel: Linux 4.3+ (collect_md GRE), with `CONFIG_NET_IPGRE`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unsupported`] naming `CONFIG_NET_IPGRE` when the kernel has no gre devices;
    /// [`ErrorKind::Exists`] when the name is taken or an external gre device exists already.
    pub fn add_gre_external(&mut self, name: &str) -> Result<()> {
        self.add_tunnel(
            name,
            TunnelKind::Gre,
            tunnel_request(name, TunnelKind::Gre)?,
        )
    }

    /// Creates a collect_md ("external") IPv6 GRE device (`type ip6gre external`).
    ///
    /// Kernel: Linux 4.16+ (collect_md ip6gre), with `CONFIG_IPV6_GRE`.
    ///
    /// # Errors
    ///
    /// As [`Netlink::add_gre_external`], naming `CONFIG_IPV6_GRE`.
    pub fn add_ip6gre_external(&mut self, name: &str) -> Result<()> {
        let req = tunnel_request(name, TunnelKind::Ip6Gre)?;
        self.add_tunnel(name, TunnelKind::Ip6Gre, req)
    }

    /// Creates a collect_md ("external") IPIP device (`type ipip external`).
    ///
    /// Kernel: Linux 4.9+ (collect_md IPIP), with `CONFIG_NET_IPIP`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unsupported`] naming `CONFIG_NET_IPIP` when the kernel has no ipip devices;
    /// [`ErrorKind::Exists`] as for gre.
    pub fn add_ipip_external(&mut self, name: &str) -> Result<()> {
        self.add_tunnel(
            name,
            TunnelKind::Ipip,
            tunnel_request(name, TunnelKind::Ipip)?,
        )
    }

    /// Creates a collect_md ("external") IPv6 tunnel device (`type ip6tnl external`), carrying
    /// IPv4 or IPv6 inside IPv6.
    ///
    /// Kernel: Linux 4.9+ (collect_md ip6tnl), with `CONFIG_IPV6_TUNNEL`.
    ///
    /// # Errors
    ///
    /// As [`Netlink::add_ipip_external`], naming `CONFIG_IPV6_TUNNEL`.
    pub fn add_ip6tnl_external(&mut self, name: &str) -> Result<()> {
        let req = tunnel_request(name, TunnelKind::Ip6Tnl)?;
        self.add_tunnel(name, TunnelKind::Ip6Tnl, req)
    }

    fn add_tunnel(&mut self, name: &str, kind: TunnelKind, req: LinkRequest) -> Result<()> {
        let op = format!("add {} device", kind.kind());
        let object = Named(name);
        self.link_request(&op, &object, req).map_err(|e| {
            // rtnl_newlink answers EOPNOTSUPP "Unknown device type" when no module provides
            // the kind.
            if e.errno() == Some(libc::EOPNOTSUPP) {
                let (feature, since) = kind.feature();
                Error::unsupported(op.as_str(), feature, since).with_object(object.to_string())
            } else {
                e
            }
        })
    }

    /// Attaches the XDP program `fd` to a link, replacing whatever is attached unless `flags`
    /// has [`XdpFlags::UPDATE_IF_NOEXIST`]. The attachment is not tied to this process: it stays
    /// until [`Netlink::clear_xdp`] or the link goes away. (For an attachment that ends with its
    /// owner, use a BPF link instead.)
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for contradictory flags (before any system call) or a program
    /// that is not XDP; [`ErrorKind::Exists`] with `UPDATE_IF_NOEXIST` when a program is attached
    /// or a BPF link holds the hook; [`ErrorKind::Unsupported`] for a mode the driver lacks.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn prog_fd() -> std::os::fd::BorrowedFd<'static> { unimplemented!() }
    /// use lwtun::netlink::{Netlink, link::XdpFlags};
    ///
    /// let mut nl = Netlink::open()?;
    /// let eth = nl.link_by_name("veth0")?;
    /// nl.set_xdp_fd(eth.index, prog_fd(), XdpFlags::DRV_MODE)?;
    /// assert!(nl.link_by_index(eth.index)?.xdp_prog_id.is_some());
    /// nl.clear_xdp(eth.index, XdpFlags::DRV_MODE)?;
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn set_xdp_fd(&mut self, index: u32, fd: BorrowedFd<'_>, flags: XdpFlags) -> Result<()> {
        let req = xdp_request(index, fd.as_raw_fd(), None, flags)?;
        self.link_request("attach XDP", &Index(index), req)
            .map_err(|e| unknown_interface(e, "attach XDP", &Index(index)))
    }

    /// Replaces the XDP program `expected` on a link with `fd`, atomically: fails with
    /// [`ErrorKind::Exists`] (EEXIST) if another program is attached by then.
    ///
    /// Kernel: Linux 5.7+ (`XDP_FLAGS_REPLACE`).
    ///
    /// # Errors
    ///
    /// As [`Netlink::set_xdp_fd`].
    pub fn replace_xdp_fd(
        &mut self,
        index: u32,
        fd: BorrowedFd<'_>,
        expected: BorrowedFd<'_>,
        flags: XdpFlags,
    ) -> Result<()> {
        let flags = flags | XdpFlags::REPLACE;
        let req = xdp_request(index, fd.as_raw_fd(), Some(expected.as_raw_fd()), flags)?;
        self.link_request("replace XDP", &Index(index), req)
            .map_err(|e| unknown_interface(e, "replace XDP", &Index(index)))
    }

    /// Detaches the XDP program attached in the mode `flags` names (none: the kernel's default
    /// mode). Detaching where nothing is attached succeeds.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] for an unknown index; [`ErrorKind::InvalidInput`] for more than
    /// one mode flag or [`XdpFlags::REPLACE`] (`UPDATE_IF_NOEXIST` is accepted and ignored, as
    /// iproute2 sends it).
    pub fn clear_xdp(&mut self, index: u32, flags: XdpFlags) -> Result<()> {
        let req = xdp_request(index, -1, None, flags)?;
        self.link_request("detach XDP", &Index(index), req)
            .map_err(|e| unknown_interface(e, "detach XDP", &Index(index)))
    }
}

/// Rewrites ENODEV into a NotFound that names the interface the way users know it.
fn unknown_interface(e: Error, op: &str, object: &dyn fmt::Display) -> Error {
    if e.errno() == Some(libc::ENODEV) {
        let what = object.to_string();
        let what = what.strip_prefix("interface ").unwrap_or(&what);
        Error::other(
            ErrorKind::NotFound,
            op,
            format!("unknown interface {what} in this network namespace"),
        )
    } else {
        e
    }
}

/// Request encoders and the link decoder, for golden-byte tests against iproute2. Not part of
/// lwtun's API: they may change in any release.
#[doc(hidden)]
pub mod wire {
    use super::*;

    /// The framed `ip link add NAME type veth peer name PEER` request, sequence 0.
    pub fn veth(name: &str, peer: &str, peer_netns: Option<i32>) -> Result<Vec<u8>> {
        Ok(veth_request(name, peer, peer_netns)?.to_bytes(0))
    }

    /// The framed vxlan external request.
    pub fn vxlan_external(name: &str, opts: &VxlanOptions) -> Result<Vec<u8>> {
        Ok(vxlan_request(name, opts)?.to_bytes(0))
    }

    /// The framed `ip link set dev INDEX up|down` request.
    pub fn set_up(index: u32, up: bool) -> Result<Vec<u8>> {
        Ok(set_up_request(index, up)?.to_bytes(0))
    }

    /// The framed `ip link set dev INDEX mtu MTU` request.
    pub fn set_mtu(index: u32, mtu: u32) -> Result<Vec<u8>> {
        Ok(set_mtu_request(index, mtu)?.to_bytes(0))
    }

    /// The framed `ip link del dev INDEX` request.
    pub fn delete(index: u32) -> Result<Vec<u8>> {
        Ok(delete_request(index)?.to_bytes(0))
    }

    /// The framed `ip link set dev INDEX netns FD` request.
    pub fn move_to_netns(index: u32, netns_fd: i32) -> Result<Vec<u8>> {
        Ok(move_request(index, netns_fd)?.to_bytes(0))
    }

    /// The framed XDP attach/detach request.
    pub fn xdp(index: u32, fd: i32, expected: Option<i32>, flags: XdpFlags) -> Result<Vec<u8>> {
        Ok(xdp_request(index, fd, expected, flags)?.to_bytes(0))
    }

    /// Decodes one framed `RTM_NEWLINK` message (header included).
    pub fn decode_link_message(msg: &[u8]) -> Result<Link> {
        let body = msg.get(16..).ok_or_else(|| {
            Error::invalid_input("decode link", "message shorter than a netlink header")
        })?;
        decode_link(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_the_kernel_does() {
        for bad in ["", "sixteen-bytes-xx", "a/b", "a b", "a:b", ".", ".."] {
            let e = validate_name("t", bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
        for good in ["eth0", "fifteen-bytes-x", "v-1.2_3"] {
            validate_name("t", good).unwrap();
        }
        let e = veth_request("ok", "way-too-long-name", None).unwrap_err();
        assert!(e.to_string().contains("way-too-long-name"), "{e}");
        assert!(e.to_string().contains("at most 15"), "{e}");
    }

    #[test]
    fn mtu_and_index_are_checked() {
        assert_eq!(
            set_mtu_request(1, 67).err().unwrap().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            set_mtu_request(1, 65537).err().unwrap().kind(),
            ErrorKind::InvalidInput
        );
        assert!(set_mtu_request(1, 68).is_ok());
        assert!(set_mtu_request(1, 65536).is_ok());
        assert_eq!(
            delete_request(0).err().unwrap().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            set_up_request(u32::MAX, true).err().unwrap().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn xdp_flags_are_checked() {
        let both = XdpFlags::SKB_MODE | XdpFlags::DRV_MODE;
        assert_eq!(
            xdp_request(1, 3, None, both).err().unwrap().kind(),
            ErrorKind::InvalidInput
        );
        assert!(xdp_request(1, 3, None, XdpFlags::REPLACE).is_err());
        assert!(xdp_request(1, 3, Some(4), XdpFlags::empty()).is_err());
        assert!(xdp_request(1, -1, Some(3), XdpFlags::REPLACE).is_err());
        assert!(xdp_request(1, -1, None, XdpFlags::UPDATE_IF_NOEXIST).is_ok());
        assert!(xdp_request(1, 3, Some(4), XdpFlags::REPLACE | XdpFlags::SKB_MODE).is_ok());
    }

    #[test]
    fn xdp_request_nests_fd_flags_and_expected_fd() {
        let req = xdp_request(7, 5, Some(6), XdpFlags::REPLACE | XdpFlags::DRV_MODE).unwrap();
        let bytes = req.to_bytes(1);
        let body = &bytes[16..];
        assert_eq!(&body[4..8], &7i32.to_ne_bytes());
        let (ty, nest) = attr::iter(&body[16..]).next().unwrap();
        assert_eq!(ty, u16::from(Ifla::Xdp));
        let got: Vec<(u16, u32)> = attr::iter(nest)
            .map(|(t, v)| (t, attr::u32_of(v).unwrap()))
            .collect();
        assert_eq!(
            got,
            vec![
                (IFLA_XDP_FD, 5),
                (IFLA_XDP_FLAGS, 0x14),
                (IFLA_XDP_EXPECTED_FD, 6)
            ]
        );
    }

    #[test]
    fn tunnel_requests_carry_kind_and_collect_md() {
        for (kind, md) in [
            (TunnelKind::Gre, IFLA_GRE_COLLECT_METADATA),
            (TunnelKind::Ip6Gre, IFLA_GRE_COLLECT_METADATA),
            (TunnelKind::Ipip, IFLA_IPTUN_COLLECT_METADATA),
            (TunnelKind::Ip6Tnl, IFLA_IPTUN_COLLECT_METADATA),
        ] {
            let bytes = tunnel_request("t0", kind).unwrap().to_bytes(1);
            let attrs = &bytes[32..];
            let info = attr::find(attrs, u16::from(Ifla::Linkinfo)).unwrap();
            assert_eq!(
                attr::find(info, IFLA_INFO_KIND).unwrap(),
                kind.kind().as_bytes()
            );
            let data = attr::find(info, IFLA_INFO_DATA).unwrap();
            assert_eq!(attr::iter(data).collect::<Vec<_>>(), vec![(md, &[][..])]);
        }
    }

    #[test]
    fn vxlan_options_are_encoded() {
        let opts = VxlanOptions {
            port: 8472,
            local: Some("fd00::1".parse().unwrap()),
            learning: true,
            ttl: Some(64),
        };
        let bytes = vxlan_request("vx1", &opts).unwrap().to_bytes(1);
        let info = attr::find(&bytes[32..], u16::from(Ifla::Linkinfo)).unwrap();
        let data = attr::find(info, IFLA_INFO_DATA).unwrap();
        let types: Vec<u16> = attr::iter(data).map(|(t, _)| t).collect();
        assert_eq!(
            types,
            vec![
                IFLA_VXLAN_COLLECT_METADATA,
                IFLA_VXLAN_TTL,
                IFLA_VXLAN_LOCAL6,
                IFLA_VXLAN_LEARNING,
                IFLA_VXLAN_PORT
            ]
        );
        assert_eq!(
            attr::find(data, IFLA_VXLAN_PORT).unwrap(),
            &8472u16.to_be_bytes()
        );
        assert_eq!(attr::find(data, IFLA_VXLAN_LEARNING).unwrap(), &[1]);
        let zero = VxlanOptions {
            port: 0,
            ..Default::default()
        };
        assert!(vxlan_request("vx1", &zero).is_err());
    }

    #[test]
    fn decoding_rejects_garbage_without_panicking() {
        assert!(decode_link(&[]).is_err());
        assert!(decode_link(&[0u8; 15]).is_err());
        // A header with a truncated attribute.
        let mut b = vec![0u8; 16];
        b.extend_from_slice(&[40, 0, 3, 0, b'x']);
        assert!(decode_link(&b).is_err());
    }
}
