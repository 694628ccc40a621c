//! Nexthop objects over rtnetlink (`RTM_NEWNEXTHOP`, `RTM_DELNEXTHOP`, `RTM_GETNEXTHOP`;
//! `ip nexthop`): a device, a gateway and an encap held once by the kernel, which routes
//! reference by id ([`Route::nhid`](super::route::Route::nhid), `RTA_NH_ID`).
//!
//! A [`Nexthop`] is what one `RTM_NEWNEXTHOP` carries. Its encap is the route layer's
//! [`Encap`], written by the same encoder into `NHA_ENCAP` as into a route's `RTA_ENCAP`.
//! Groups, blackholes and FDB nexthops are not modelled: their attributes decode into
//! [`Nexthop::extra`].
//!
//! [`crate::nexthop::LwtNexthop`] is the domain type that owns programs and removes its
//! nexthop on drop.
//!
//! Kernel: Linux 5.3+ (nexthop objects, with an encap from the start).

use std::fmt;
use std::net::IpAddr;

use super::attr;
use super::attr::RawAttribute;
use super::route::{self, Encap};
use super::Netlink;
use crate::error::{Error, ErrorKind, Result};

const RTM_NEWNEXTHOP: u16 = 104;
const RTM_DELNEXTHOP: u16 = 105;
const RTM_GETNEXTHOP: u16 = 106;
const NHA_ID: u16 = 1;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
const NHA_ENCAP_TYPE: u16 = 7;
const NHA_ENCAP: u16 = 8;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ECHO: u16 = 0x8;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
/// `sizeof(struct nhmsg)`.
const NHMSG_LEN: usize = 8;

/// The first kernel with nexthop objects (and with an LWT encap on them).
///
/// # Examples
///
/// ```
/// assert_eq!(lwtun::netlink::nexthop::NEXTHOP_SINCE, "5.3");
/// ```
pub const NEXTHOP_SINCE: &str = "5.3";

/// What a nexthop request does.
///
/// # Examples
///
/// ```
/// use lwtun::netlink::nexthop::{Nexthop, NexthopOp};
///
/// let del = Nexthop::new(7).to_request(NexthopOp::Delete, 1).unwrap();
/// assert_eq!(u16::from_ne_bytes([del[4], del[5]]), 105); // RTM_DELNEXTHOP
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NexthopOp {
    /// `RTM_NEWNEXTHOP` with `NLM_F_CREATE | NLM_F_EXCL`: fails if the id is taken.
    Add,
    /// `RTM_NEWNEXTHOP` with `NLM_F_CREATE | NLM_F_REPLACE`: every route using the id follows.
    Replace,
    /// `RTM_DELNEXTHOP` by id: the kernel deletes the routes using it too.
    Delete,
    /// `RTM_GETNEXTHOP` by id.
    Get,
}

/// One nexthop object, as `RTM_NEWNEXTHOP` carries it.
///
/// Kernel: Linux 5.3+.
///
/// # Examples
///
/// ```
/// use lwtun::netlink::nexthop::{Nexthop, NexthopOp};
/// use lwtun::netlink::route::{BpfEncap, Encap, ProgRef};
///
/// // ip nexthop add id 7 encap bpf xmit ... dev #3
/// let mut nh = Nexthop::new(7);
/// nh.oif = Some(3);
/// nh.encap = Some(Encap::Bpf(BpfEncap {
///     xmit: Some(ProgRef::new(8, "lwtun:count_xmit:42")),
///     ..Default::default()
/// }));
/// assert!(nh.validate().is_ok());
/// assert_eq!(nh.to_string(), "id 7 encap bpf xmit lwtun:count_xmit:42 dev#3");
/// let bytes = nh.to_request(NexthopOp::Add, 1).unwrap();
/// assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), 104); // RTM_NEWNEXTHOP
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[doc(alias = "nhmsg")]
pub struct Nexthop {
    /// The id routes name it by (`NHA_ID`); 0 when installing lets the kernel pick one.
    pub id: u32,
    /// An IPv6 nexthop (`AF_INET6`) instead of IPv4. Set from the gateway when there is one.
    /// Without a gateway an IPv6 nexthop serves IPv4 and IPv6 routes, an IPv4 one IPv4 routes
    /// only (the kernel: "IPv6 routes can not use an IPv4 nexthop").
    pub ipv6: bool,
    /// `nh_protocol` (default 0, `RTPROT_UNSPEC`, like `ip nexthop add`).
    pub protocol: u8,
    /// `nh_scope` as the kernel reported it (ignored when installing: the kernel picks).
    pub scope: u8,
    /// `nh_flags` as the kernel reported them (ignored when installing).
    pub flags: u32,
    /// Output device index (`NHA_OIF`).
    pub oif: Option<u32>,
    /// Gateway (`NHA_GATEWAY`).
    pub gateway: Option<IpAddr>,
    /// The encap every route over this nexthop gets (`NHA_ENCAP`, `NHA_ENCAP_TYPE`).
    pub encap: Option<Encap>,
    /// Attributes lwtun does not model, kept from dumps (not sent when installing).
    pub extra: Vec<RawAttribute>,
}

impl Nexthop {
    /// An IPv4 nexthop `id` (0: the kernel picks), protocol unspec, no device yet.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::netlink::nexthop::Nexthop;
    ///
    /// let nh = Nexthop::new(7);
    /// assert_eq!((nh.id, nh.ipv6, nh.oif), (7, false, None));
    /// ```
    pub fn new(id: u32) -> Self {
        Nexthop {
            id,
            ipv6: false,
            protocol: 0,
            scope: 0,
            flags: 0,
            oif: None,
            gateway: None,
            encap: None,
            extra: Vec::new(),
        }
    }

    /// The LWT BPF encap, if the nexthop has one.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::netlink::nexthop::Nexthop;
    ///
    /// assert!(Nexthop::new(7).bpf_encap().is_none());
    /// ```
    pub fn bpf_encap(&self) -> Option<&route::BpfEncap> {
        match &self.encap {
            Some(Encap::Bpf(b)) => Some(b),
            _ => None,
        }
    }

    /// Checks what the kernel would refuse, before anything is sent: a device, a gateway of
    /// the nexthop's family, an LWT BPF encap with program fds and names within limits.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`], saying what is wrong.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::{netlink::nexthop::Nexthop, ErrorKind};
    ///
    /// let e = Nexthop::new(7).validate().unwrap_err(); // no device
    /// assert_eq!(e.kind(), ErrorKind::InvalidInput);
    /// ```
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| {
            Err(Error::invalid_input("validate nexthop", why).with_object(self.to_string()))
        };
        if self.oif.is_none() {
            return bad("a nexthop needs a device (groups and blackholes are not modelled)".into());
        }
        if let Some(gw) = self.gateway {
            if gw.is_ipv6() != self.ipv6 {
                return bad(format!(
                    "gateway {gw} is not of the nexthop's family ({})",
                    if self.ipv6 { "IPv6" } else { "IPv4" }
                ));
            }
        }
        match &self.encap {
            Some(Encap::Bpf(b)) => route::check_bpf_encap(b).or_else(bad),
            Some(Encap::Other { .. }) | None => Ok(()),
            Some(_) => bad("lwtun installs nexthops with an LWT BPF encap only".into()),
        }
    }

    /// The complete netlink message for `op` with sequence number `seq` and `NLM_F_ACK`: what
    /// [`Netlink::add_nexthop`] and the others send (the golden tests compare it with
    /// iproute2's).
    ///
    /// # Errors
    ///
    /// InvalidInput for a nexthop [`Nexthop::validate`] refuses (adds and replaces).
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::netlink::nexthop::{Nexthop, NexthopOp};
    ///
    /// // ip nexthop del id 7: header, struct nhmsg (AF_UNSPEC), NHA_ID 7
    /// let bytes = Nexthop::new(7).to_request(NexthopOp::Delete, 1).unwrap();
    /// assert_eq!(bytes.len(), 16 + 8 + 8);
    /// assert_eq!(&bytes[24..], &[8, 0, 1, 0, 7, 0, 0, 0]);
    /// ```
    pub fn to_request(&self, op: NexthopOp, seq: u32) -> Result<Vec<u8>> {
        if matches!(op, NexthopOp::Add | NexthopOp::Replace) {
            self.validate()?;
        }
        let mut out = Vec::with_capacity(128);
        self.write_request(&mut out, op, libc::NLM_F_ACK as u16, seq);
        Ok(out)
    }

    /// Appends the framed request for `op` to `out`, without validating: attributes in
    /// iproute2's order (id, gateway, encap, encap type, device). Deletes and gets carry the
    /// id only, in an `AF_UNSPEC` header, as iproute2 sends them.
    pub(crate) fn write_request(&self, out: &mut Vec<u8>, op: NexthopOp, flags: u16, seq: u32) {
        let start = out.len();
        let (ty, op_flags) = match op {
            NexthopOp::Add => (RTM_NEWNEXTHOP, NLM_F_CREATE | NLM_F_EXCL),
            NexthopOp::Replace => (RTM_NEWNEXTHOP, NLM_F_CREATE | NLM_F_REPLACE),
            NexthopOp::Delete => (RTM_DELNEXTHOP, 0),
            NexthopOp::Get => (RTM_GETNEXTHOP, 0),
        };
        out.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set below
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(&(NLM_F_REQUEST | op_flags | flags).to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
        let new = matches!(op, NexthopOp::Add | NexthopOp::Replace);
        let family = match (new, self.ipv6) {
            (false, _) => libc::AF_UNSPEC as u8,
            (true, false) => libc::AF_INET as u8,
            (true, true) => libc::AF_INET6 as u8,
        };
        let protocol = if new { self.protocol } else { 0 };
        // nh_family, nh_scope, nh_protocol, resvd, nh_flags
        out.extend_from_slice(&[family, 0, protocol, 0, 0, 0, 0, 0]);
        if self.id != 0 {
            attr::put(out, NHA_ID, &self.id.to_ne_bytes());
        }
        if new {
            if let Some(gw) = self.gateway {
                attr::put_ip(out, NHA_GATEWAY, gw);
            }
            if let Some(encap) = &self.encap {
                let kind = route::write_encap(out, NHA_ENCAP, encap);
                attr::put(out, NHA_ENCAP_TYPE, &kind.to_ne_bytes());
            }
            if let Some(oif) = self.oif {
                attr::put(out, NHA_OIF, &oif.to_ne_bytes());
            }
        }
        let len = (out.len() - start) as u32;
        out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// Decodes a nexthop from an `RTM_NEWNEXTHOP` body (a dump or get answer). `None` for
    /// families other than IPv4 and IPv6 (groups are `AF_UNSPEC`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Kernel`] for a body shorter than `struct nhmsg`.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::netlink::nexthop::{Nexthop, NexthopOp};
    ///
    /// let mut nh = Nexthop::new(7);
    /// nh.oif = Some(3);
    /// let bytes = nh.to_request(NexthopOp::Add, 1).unwrap();
    /// assert_eq!(Nexthop::decode(&bytes[16..]).unwrap(), Some(nh));
    /// ```
    pub fn decode(body: &[u8]) -> Result<Option<Nexthop>> {
        if body.len() < NHMSG_LEN {
            return Err(Error::other(
                ErrorKind::Kernel,
                "decode nexthop",
                format!("{} bytes, shorter than struct nhmsg", body.len()),
            ));
        }
        let ipv6 = match i32::from(body[0]) {
            libc::AF_INET => false,
            libc::AF_INET6 => true,
            _ => return Ok(None),
        };
        let mut nh = Nexthop::new(0);
        nh.ipv6 = ipv6;
        nh.scope = body[1];
        nh.protocol = body[2];
        nh.flags = u32::from_ne_bytes(body[4..8].try_into().expect("4 bytes"));
        let mut encap_type = None;
        let mut encap_data = None;
        for (kind, data) in attr::iter(&body[NHMSG_LEN..]) {
            match kind {
                NHA_ID => nh.id = attr::u32_of(data).unwrap_or(0),
                NHA_OIF => nh.oif = attr::u32_of(data),
                NHA_GATEWAY => nh.gateway = route::ip_of(data, !ipv6),
                NHA_ENCAP_TYPE if data.len() == 2 => {
                    encap_type = Some(u16::from_ne_bytes([data[0], data[1]]))
                }
                NHA_ENCAP => encap_data = Some(data.to_vec()),
                _ => nh.extra.push(RawAttribute {
                    kind,
                    value: data.to_vec(),
                }),
            }
        }
        if let (Some(kind), Some(data)) = (encap_type, encap_data) {
            nh.encap = Some(route::decode_encap(kind, data));
        }
        Ok(Some(nh))
    }
}

impl fmt::Display for Nexthop {
    /// `ip nexthop show`'s words: `id 7 encap bpf xmit NAME via 10.0.0.2 dev#3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "id {}", self.id)?;
        match &self.encap {
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
            Some(Encap::Other { kind, .. }) => write!(f, " encap type {kind}")?,
            Some(_) => f.write_str(" encap")?,
            None => {}
        }
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev#{oif}")?;
        }
        Ok(())
    }
}

/// Turns "no such message type" (`EOPNOTSUPP` without ext-ack text: rtnetlink has no handler
/// for the type) into an error naming the feature and Linux 5.3. An `EOPNOTSUPP` with text,
/// such as "LWT encapsulation type not supported" from a kernel without `CONFIG_LWTUNNEL_BPF`,
/// keeps the kernel's words.
fn unsupported_before_5_3(e: Error) -> Error {
    if e.errno() == Some(libc::EOPNOTSUPP) && e.ext_ack().is_none() {
        let op = e.operation().to_string();
        Error::unsupported(op, "nexthop objects (RTM_NEWNEXTHOP)", Some(NEXTHOP_SINCE))
    } else {
        e
    }
}

impl Netlink {
    /// Adds a nexthop object and returns its id (the kernel's pick when [`Nexthop::id`] is 0,
    /// learnt from its `NLM_F_ECHO` answer).
    ///
    /// Kernel: Linux 5.3+.
    ///
    /// # Errors
    ///
    /// InvalidInput for a nexthop [`Nexthop::validate`] refuses (nothing is sent);
    /// Unsupported naming Linux 5.3 on kernels without nexthop objects; Exists when the id is
    /// taken; the kernel's error and ext-ack text otherwise.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::netlink::{nexthop::Nexthop, route::{BpfEncap, Encap, Route}, Netlink};
    /// use lwtun::program::{Hook, LwtCounter};
    ///
    /// let counter = LwtCounter::load()?;
    /// let mut nl = Netlink::open()?;
    /// let mut nh = Nexthop::new(0); // the kernel picks the id
    /// nh.oif = Some(nl.device("veth0")?.index());
    /// nh.encap = Some(Encap::Bpf(BpfEncap {
    ///     xmit: Some(counter.program(Hook::Xmit).prog_ref()),
    ///     ..Default::default()
    /// }));
    /// let id = nl.add_nexthop(&nh)?;
    /// let mut r = Route::new("10.20.0.0/16".parse().unwrap());
    /// r.nhid = Some(id);
    /// nl.add_route(&r)?;
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    #[doc(alias = "RTM_NEWNEXTHOP")]
    pub fn add_nexthop(&mut self, nexthop: &Nexthop) -> Result<u32> {
        self.new_nexthop("add nexthop", nexthop, NexthopOp::Add)
    }

    /// Adds a nexthop object, or replaces the one with the same id: every route over it uses
    /// the new device, gateway and encap from then on, in one step.
    ///
    /// Kernel: Linux 5.3+.
    ///
    /// # Errors
    ///
    /// As [`Netlink::add_nexthop`], but never Exists.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::netlink::{nexthop::Nexthop, route::{BpfEncap, Encap}, Netlink};
    /// use lwtun::program::{Hook, LwtCounter};
    ///
    /// let next = LwtCounter::load()?;
    /// let mut nl = Netlink::open()?;
    /// // A dump has program names, no fds: name the programs again to replace.
    /// let mut nh = nl.nexthop(7)?;
    /// nh.encap = Some(Encap::Bpf(BpfEncap {
    ///     xmit: Some(next.program(Hook::Xmit).prog_ref()),
    ///     ..Default::default()
    /// }));
    /// nl.replace_nexthop(&nh)?; // every route over nexthop 7 runs `next` now
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    #[doc(alias = "NLM_F_REPLACE")]
    pub fn replace_nexthop(&mut self, nexthop: &Nexthop) -> Result<u32> {
        self.new_nexthop("replace nexthop", nexthop, NexthopOp::Replace)
    }

    fn new_nexthop(&mut self, op: &str, nexthop: &Nexthop, kind: NexthopOp) -> Result<u32> {
        nexthop.validate()?;
        let echo = if nexthop.id == 0 { NLM_F_ECHO } else { 0 };
        let answers = self
            .request_raw(op, nexthop, |seq, out| {
                nexthop.write_request(out, kind, echo, seq)
            })
            .map_err(unsupported_before_5_3)?;
        if nexthop.id != 0 {
            return Ok(nexthop.id);
        }
        answers
            .iter()
            .filter(|(ty, _)| *ty == RTM_NEWNEXTHOP)
            .find_map(|(_, body)| Nexthop::decode(body).ok().flatten())
            .map(|nh| nh.id)
            .ok_or_else(|| {
                Error::other(
                    ErrorKind::Kernel,
                    op,
                    "the kernel did not echo the nexthop it made, so its id is unknown",
                )
            })
    }

    /// Deletes nexthop `id`. The kernel deletes every route over it too (IPv4 and IPv6, in
    /// every table): it does not refuse a nexthop in use.
    ///
    /// Kernel: Linux 5.3+.
    ///
    /// # Errors
    ///
    /// NotFound for an unknown id; Unsupported naming Linux 5.3 without nexthop objects.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::{netlink::Netlink, ErrorKind};
    ///
    /// let mut nl = Netlink::open()?;
    /// match nl.delete_nexthop(7) {
    ///     Err(e) if e.kind() == ErrorKind::NotFound => println!("no nexthop 7"),
    ///     other => other?,
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    #[doc(alias = "RTM_DELNEXTHOP")]
    pub fn delete_nexthop(&mut self, id: u32) -> Result<()> {
        let nh = Nexthop::new(id);
        self.request_raw("delete nexthop", &nh, |seq, out| {
            nh.write_request(out, NexthopOp::Delete, 0, seq)
        })
        .map(|_| ())
        .map_err(unsupported_before_5_3)
    }

    /// Nexthop `id`, as the kernel holds it.
    ///
    /// Kernel: Linux 5.3+.
    ///
    /// # Errors
    ///
    /// NotFound for an unknown id; Unsupported naming Linux 5.3 without nexthop objects.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::netlink::Netlink;
    ///
    /// let mut nl = Netlink::open()?;
    /// println!("{}", nl.nexthop(7)?); // id 7 encap bpf xmit ... dev#3
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    #[doc(alias = "RTM_GETNEXTHOP")]
    pub fn nexthop(&mut self, id: u32) -> Result<Nexthop> {
        let nh = Nexthop::new(id);
        let answers = self
            .request_raw("get nexthop", &nh, |seq, out| {
                nh.write_request(out, NexthopOp::Get, 0, seq)
            })
            .map_err(unsupported_before_5_3)?;
        answers
            .iter()
            .filter(|(ty, _)| *ty == RTM_NEWNEXTHOP)
            .find_map(|(_, body)| Nexthop::decode(body).transpose())
            .unwrap_or_else(|| Err(Error::not_found("get nexthop", format!("nexthop {id}"))))
    }

    /// Every IPv4 and IPv6 nexthop object (groups and other families are left out), in one
    /// dump.
    ///
    /// Kernel: Linux 5.3+.
    ///
    /// # Errors
    ///
    /// Unsupported naming Linux 5.3 without nexthop objects; the kernel's error for the dump.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::netlink::Netlink;
    ///
    /// let mut nl = Netlink::open()?;
    /// for nh in nl.nexthops()? {
    ///     println!("{nh}");
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    #[doc(alias = "RTM_GETNEXTHOP")]
    pub fn nexthops(&mut self) -> Result<Vec<Nexthop>> {
        self.dump_raw(
            "dump nexthops",
            |seq, out| {
                let start = out.len();
                out.extend_from_slice(&0u32.to_ne_bytes());
                out.extend_from_slice(&RTM_GETNEXTHOP.to_ne_bytes());
                out.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
                out.extend_from_slice(&seq.to_ne_bytes());
                out.extend_from_slice(&0u32.to_ne_bytes());
                out.extend_from_slice(&[0; NHMSG_LEN]);
                let len = (out.len() - start) as u32;
                out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
            },
            |ty, body| {
                if ty != RTM_NEWNEXTHOP {
                    return Ok(None);
                }
                Nexthop::decode(body)
            },
        )
        .map_err(unsupported_before_5_3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::route::{BpfEncap, ProgRef};

    fn lwt(id: u32) -> Nexthop {
        let mut nh = Nexthop::new(id);
        nh.oif = Some(3);
        nh.encap = Some(Encap::Bpf(BpfEncap {
            input: Some(ProgRef::new(5, "a")),
            xmit: Some(ProgRef::new(6, "bb")),
            headroom: Some(24),
            ..Default::default()
        }));
        nh
    }

    #[test]
    fn request_round_trips_through_decode() {
        for (ipv6, gw) in [(false, "10.0.0.1"), (true, "fd00::1")] {
            let mut nh = lwt(9);
            nh.ipv6 = ipv6;
            nh.gateway = Some(gw.parse().unwrap());
            nh.protocol = 76;
            let bytes = nh.to_request(NexthopOp::Replace, 3).unwrap();
            assert_eq!(
                u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize,
                bytes.len()
            );
            // NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE
            assert_eq!(u16::from_ne_bytes([bytes[6], bytes[7]]), 0x0505);
            let back = Nexthop::decode(&bytes[16..]).unwrap().unwrap();
            let mut want = nh.clone();
            if let Some(Encap::Bpf(b)) = &mut want.encap {
                b.input.as_mut().unwrap().fd = None;
                b.xmit.as_mut().unwrap().fd = None;
            }
            assert_eq!(back, want);
        }
    }

    #[test]
    fn delete_and_get_carry_the_id_only() {
        let nh = lwt(7);
        for op in [NexthopOp::Delete, NexthopOp::Get] {
            let bytes = nh.to_request(op, 1).unwrap();
            assert_eq!(bytes.len(), 16 + 8 + 8, "{op:?}");
            assert_eq!(bytes[16], 0, "AF_UNSPEC");
            assert_eq!(&bytes[24..], &[8, 0, 1, 0, 7, 0, 0, 0]);
        }
        // Id 0 (auto) sends no NHA_ID: the kernel picks.
        let bytes = lwt(0).to_request(NexthopOp::Add, 1).unwrap();
        assert_ne!(u16::from_ne_bytes([bytes[26], bytes[27]]), NHA_ID);
    }

    #[test]
    fn validate_refuses_what_the_kernel_would() {
        assert!(lwt(1).validate().is_ok());
        let mut nh = lwt(1);
        nh.oif = None;
        assert!(nh.validate().unwrap_err().to_string().contains("device"));
        let mut nh = lwt(1);
        nh.gateway = Some("fd00::1".parse().unwrap());
        assert!(nh.validate().unwrap_err().to_string().contains("family"));
        let mut nh = lwt(1);
        if let Some(Encap::Bpf(b)) = &mut nh.encap {
            b.headroom = Some(300);
        }
        assert_eq!(nh.validate().unwrap_err().kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn eopnotsupp_names_linux_5_3() {
        let e = unsupported_before_5_3(Error::netlink("add nexthop", libc::EOPNOTSUPP, None));
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("Linux 5.3"), "{e}");
        let text = Some("LWT encapsulation type not supported".to_string());
        let e = unsupported_before_5_3(Error::netlink("add nexthop", libc::EOPNOTSUPP, text));
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("LWT encapsulation type"), "{e}");
        let e = unsupported_before_5_3(Error::netlink("add nexthop", libc::ENOENT, None));
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }
}
