//! Interface addresses over rtnetlink: add, delete and list IPv4 and IPv6 addresses.
//!
//! # Examples
//!
//! ```no_run
//! use lwtun::netlink::{Netlink, addr::AddressOptions};
//!
//! let mut nl = Netlink::open()?;
//! let dev = nl.link_by_name("veth0")?;
//! nl.add_address(dev.index, "10.0.0.1/24".parse().unwrap())?;
//! // IPv6 without duplicate address detection: usable at once.
//! nl.add_address_with(dev.index, "fd00::1/64".parse().unwrap(), &AddressOptions::nodad())?;
//! for a in nl.addresses(Some(dev.index))? {
//!     println!("{}", a.network);
//! }
//! # Ok::<(), lwtun::Error>(())
//! ```

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use neli::consts::nl::NlmF;
use neli::consts::rtnl::{Ifa, IfaF, RtAddrFamily, RtScope, Rtm};
use neli::rtnl::{Ifaddrmsg, IfaddrmsgBuilder, Rtattr, RtattrBuilder};
use neli::types::{Buffer, RtBuffer};

use super::attr::RawAttribute;
use super::attr::{self, NLA_TYPE_MASK};
use super::{decode_body, encode_message, Netlink};
use crate::error::{Error, ErrorKind, Result};

/// `IFA_F_TENTATIVE`: duplicate address detection has not finished.
const IFA_F_TENTATIVE: u32 = 0x40;
/// `IFA_F_DADFAILED`.
const IFA_F_DADFAILED: u32 = 0x08;

/// An address on an interface, as the kernel lists it.
///
/// # Examples
///
/// ```no_run
/// use lwtun::netlink::Netlink;
///
/// let mut nl = Netlink::open()?;
/// let lo = nl.link_by_name("lo")?;
/// let addrs = nl.addresses(Some(lo.index))?;
/// assert!(addrs.iter().any(|a| a.network.ip().is_loopback()));
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The interface index.
    pub index: u32,
    /// The local address and prefix length (`IFA_LOCAL`, or `IFA_ADDRESS` where there is no
    /// `IFA_LOCAL`, as for most IPv6 addresses).
    pub network: IpNetwork,
    /// The peer address of a point-to-point address (`IFA_ADDRESS` when it differs from
    /// `IFA_LOCAL`).
    pub peer: Option<IpAddr>,
    /// The IPv4 broadcast address (`IFA_BROADCAST`), where one is set.
    pub broadcast: Option<IpAddr>,
    /// The scope (`RT_SCOPE_*`: 0 global, 253 link, 254 host).
    pub scope: u8,
    /// The `IFA_F_*` flags (`IFA_FLAGS` when present, which holds all 32 bits).
    pub flags: u32,
    /// The label (`IFA_LABEL`, IPv4 only).
    pub label: Option<String>,
    /// Attributes not decoded into the fields above (cache info, broadcast, ...), raw.
    pub attributes: Vec<RawAttribute>,
}

impl Address {
    /// Whether IPv6 duplicate address detection still holds the address back
    /// (`IFA_F_TENTATIVE`): it cannot be used as a source until then.
    pub fn is_tentative(&self) -> bool {
        self.flags & IFA_F_TENTATIVE != 0
    }

    /// Whether duplicate address detection found the address in use elsewhere.
    pub fn dad_failed(&self) -> bool {
        self.flags & IFA_F_DADFAILED != 0
    }
}

/// Options of [`Netlink::add_address_with`].
///
/// # Examples
///
/// ```
/// use lwtun::netlink::addr::AddressOptions;
///
/// assert!(AddressOptions::nodad().nodad);
/// assert!(!AddressOptions::default().nodad);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressOptions {
    /// Skip IPv6 duplicate address detection (`nodad`, `IFA_F_NODAD`), so the address is usable
    /// at once instead of after a second or more. Ignored by IPv4.
    pub nodad: bool,
    /// Set the IPv4 broadcast address derived from the prefix (`brd +`), for prefixes up to
    /// /30. Ignored by IPv6.
    pub broadcast: bool,
}

impl AddressOptions {
    /// Options with [`AddressOptions::nodad`] set.
    pub fn nodad() -> Self {
        AddressOptions {
            nodad: true,
            ..Default::default()
        }
    }
}

fn rta(ty: Ifa, value: &[u8]) -> Rtattr<Ifa, Buffer> {
    RtattrBuilder::default()
        .rta_type(ty)
        .rta_payload(Buffer::from(value))
        .build()
        .expect("type and payload are set, and a byte buffer always serializes")
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The body of `ip addr add|del NETWORK dev INDEX [nodad]`: `IFA_LOCAL` then `IFA_ADDRESS`, both
/// the address, as iproute2 sends them.
pub(crate) fn address_body(
    op: &str,
    index: u32,
    network: IpNetwork,
    options: &AddressOptions,
) -> Result<Ifaddrmsg> {
    if index == 0 || index > i32::MAX as u32 {
        return Err(Error::invalid_input(
            op,
            format!("interface index {index} is not a valid index (1..=2147483647)"),
        ));
    }
    let ip = network.ip();
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(Error::invalid_input(
            op,
            format!("{network}: an interface address must be a unicast address"),
        ));
    }
    let family = match ip {
        IpAddr::V4(_) => RtAddrFamily::Inet,
        IpAddr::V6(_) => RtAddrFamily::Inet6,
    };
    let mut flags = IfaF::empty();
    if options.nodad && ip.is_ipv6() {
        flags |= IfaF::NODAD;
    }
    let bytes = ip_bytes(ip);
    let mut attrs = vec![rta(Ifa::Local, &bytes), rta(Ifa::Address, &bytes)];
    if let IpNetwork::V4(v4) = network {
        if options.broadcast && v4.prefix() <= 30 {
            attrs.push(rta(Ifa::Broadcast, &v4.broadcast().octets()));
        }
    }
    let attrs: RtBuffer<Ifa, Buffer> = attrs.into_iter().collect();
    Ok(IfaddrmsgBuilder::default()
        .ifa_family(family)
        .ifa_prefixlen(network.prefix())
        .ifa_flags(flags)
        .ifa_scope(RtScope::Universe)
        .ifa_index(index)
        .rtattrs(attrs)
        .build()
        .expect("every field of Ifaddrmsg has a value"))
}

fn ip_of(v: &[u8]) -> Option<IpAddr> {
    if let Ok(a) = <[u8; 4]>::try_from(v) {
        Some(IpAddr::from(a))
    } else if let Ok(a) = <[u8; 16]>::try_from(v) {
        Some(IpAddr::from(a))
    } else {
        None
    }
}

/// Decodes an `RTM_NEWADDR` body; `None` for families other than IPv4 and IPv6.
pub(crate) fn decode_address(body: &[u8]) -> Result<Option<Address>> {
    let op = "decode address";
    let msg: Ifaddrmsg = decode_body(op, body)?;
    if !matches!(msg.ifa_family(), RtAddrFamily::Inet | RtAddrFamily::Inet6) {
        return Ok(None);
    }
    let mut local = None;
    let mut address = None;
    let mut label = None;
    let mut broadcast = None;
    let mut flags = u32::from(msg.ifa_flags().bits());
    let mut attributes = Vec::new();
    for a in msg.rtattrs().iter() {
        let ty = u16::from(*a.rta_type()) & NLA_TYPE_MASK;
        let v: &[u8] = a.rta_payload().as_ref();
        match Ifa::from(ty) {
            Ifa::Local => local = ip_of(v),
            Ifa::Address => address = ip_of(v),
            Ifa::Label => label = Some(attr::cstr(v)),
            Ifa::Broadcast => broadcast = ip_of(v),
            Ifa::Flags => flags = attr::u32_of(v).unwrap_or(flags),
            _ => attributes.push(RawAttribute {
                kind: ty,
                value: v.to_vec(),
            }),
        }
    }
    let ip = local.or(address).ok_or_else(|| {
        Error::other(
            ErrorKind::Kernel,
            op,
            format!(
                "RTM_NEWADDR on interface index {} carries no address",
                msg.ifa_index()
            ),
        )
    })?;
    let network = IpNetwork::new(ip, *msg.ifa_prefixlen())
        .map_err(|e| Error::other(ErrorKind::Kernel, op, format!("address {ip}: {e}")))?;
    Ok(Some(Address {
        index: *msg.ifa_index(),
        network,
        peer: address.filter(|a| local.is_some() && Some(*a) != local),
        broadcast,
        scope: u8::from(*msg.ifa_scope()),
        flags,
        label,
        attributes,
    }))
}

impl Netlink {
    /// Adds an address to an interface, like `ip addr add NETWORK dev X`. IPv6 addresses go
    /// through duplicate address detection first; see [`Netlink::add_address_with`] to skip it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Exists`] when the interface has the address already;
    /// [`ErrorKind::NotFound`] for an unknown index; [`ErrorKind::InvalidInput`] for a multicast
    /// or unspecified address (before any system call).
    pub fn add_address(&mut self, index: u32, network: IpNetwork) -> Result<()> {
        self.add_address_with(index, network, &AddressOptions::default())
    }

    /// Adds an address with options, like `ip addr add NETWORK dev X nodad`.
    ///
    /// # Errors
    ///
    /// As [`Netlink::add_address`].
    pub fn add_address_with(
        &mut self,
        index: u32,
        network: IpNetwork,
        options: &AddressOptions,
    ) -> Result<()> {
        let op = "add address";
        let body = address_body(op, index, network, options)?;
        let object = format!("{network} on interface index {index}");
        self.request(op, &object, Rtm::Newaddr, NlmF::CREATE | NlmF::EXCL, body)
    }

    /// Removes an address from an interface, like `ip addr del NETWORK dev X`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when the interface has no such address or does not exist.
    pub fn delete_address(&mut self, index: u32, network: IpNetwork) -> Result<()> {
        let op = "delete address";
        let body = address_body(op, index, network, &AddressOptions::default())?;
        let object = format!("{network} on interface index {index}");
        self.request(op, &object, Rtm::Deladdr, NlmF::empty(), body)
    }

    /// Lists IPv4 and IPv6 addresses, of one interface or (with `None`) of all.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when the socket fails.
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>> {
        let body = IfaddrmsgBuilder::default()
            .ifa_family(RtAddrFamily::Unspecified)
            .ifa_prefixlen(0)
            .ifa_scope(RtScope::Universe)
            .ifa_index(0)
            .build()
            .expect("every field of Ifaddrmsg has a value");
        self.dump("list addresses", Rtm::Getaddr, body, |ty, b| {
            if ty != u16::from(Rtm::Newaddr) {
                return Ok(None);
            }
            Ok(decode_address(b)?.filter(|a| index.is_none_or(|i| a.index == i)))
        })
    }
}

/// Request encoders and the address decoder, for golden-byte tests against iproute2. Not part
/// of lwtun's API.
#[doc(hidden)]
pub mod wire {
    use super::*;

    /// The framed `ip addr add NETWORK dev INDEX [nodad]` request, sequence 0.
    pub fn add(index: u32, network: IpNetwork, options: &AddressOptions) -> Result<Vec<u8>> {
        let body = address_body("add address", index, network, options)?;
        let mut out = Vec::new();
        encode_message(
            &mut out,
            Rtm::Newaddr,
            NlmF::REQUEST | NlmF::ACK | NlmF::CREATE | NlmF::EXCL,
            0,
            body,
        );
        Ok(out)
    }

    /// The framed `ip addr del NETWORK dev INDEX` request, sequence 0.
    pub fn delete(index: u32, network: IpNetwork) -> Result<Vec<u8>> {
        let body = address_body("delete address", index, network, &AddressOptions::default())?;
        let mut out = Vec::new();
        encode_message(&mut out, Rtm::Deladdr, NlmF::REQUEST | NlmF::ACK, 0, body);
        Ok(out)
    }

    /// Decodes one framed `RTM_NEWADDR` message (header included).
    pub fn decode_address_message(msg: &[u8]) -> Result<Option<Address>> {
        let body = msg.get(16..).ok_or_else(|| {
            Error::invalid_input("decode address", "message shorter than a netlink header")
        })?;
        decode_address(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unusable_addresses_before_any_syscall() {
        let o = AddressOptions::default();
        for bad in ["0.0.0.0/0", "224.0.0.1/32", "ff02::1/128", "::/0"] {
            let e = address_body("t", 1, bad.parse().unwrap(), &o).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad}");
        }
        let e = address_body("t", 0, "10.0.0.1/24".parse().unwrap(), &o).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn nodad_only_marks_ipv6() {
        let o = AddressOptions::nodad();
        let v4 = address_body("t", 1, "10.0.0.1/24".parse().unwrap(), &o).unwrap();
        assert!(v4.ifa_flags().is_empty());
        let v6 = address_body("t", 1, "fd00::1/64".parse().unwrap(), &o).unwrap();
        assert_eq!(u32::from(v6.ifa_flags().bits()), libc::IFA_F_NODAD);
    }

    #[test]
    fn round_trips_through_the_decoder() {
        let msg = wire::add(3, "fd00::5/64".parse().unwrap(), &AddressOptions::nodad()).unwrap();
        let a = wire::decode_address_message(&msg).unwrap().unwrap();
        assert_eq!(a.index, 3);
        assert_eq!(a.network, "fd00::5/64".parse::<IpNetwork>().unwrap());
        assert_eq!(a.peer, None);
        assert_eq!(a.flags, libc::IFA_F_NODAD);
        assert!(decode_address(&[1, 2]).is_err());
    }
}
