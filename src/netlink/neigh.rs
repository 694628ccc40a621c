//! Neighbours (the ARP and NDP caches) over rtnetlink: what `ip neigh show` lists, decoded from
//! `RTM_NEWNEIGH` messages (dumps and the `RTNLGRP_NEIGH` events of [`crate::monitor`]).
//!
//! # Examples
//!
//! ```no_run
//! use lwtun::netlink::Netlink;
//!
//! let mut nl = Netlink::open()?;
//! for n in nl.neighbours()? {
//!     println!("{n}");
//! }
//! # Ok::<(), lwtun::Error>(())
//! ```

use std::fmt;
use std::net::IpAddr;

use super::attr::{self, RawAttribute};
use super::Netlink;
use crate::error::{Error, ErrorKind, Result};

/// `RTM_NEWNEIGH`.
pub(crate) const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const NDMSG_LEN: usize = 12;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;

/// One neighbour entry: an IP address on an interface and the link-layer address it resolves
/// to, as `ip neigh show` lists it.
///
/// # Examples
///
/// ```no_run
/// use lwtun::netlink::{neigh::NUD_PERMANENT, Netlink};
///
/// let mut nl = Netlink::open()?;
/// let permanent = nl.neighbours()?.into_iter().filter(|n| n.state & NUD_PERMANENT != 0).count();
/// println!("{permanent} permanent neighbours");
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Neighbour {
    /// The interface index (`ndm_ifindex`).
    pub index: u32,
    /// The neighbour's IP address (`NDA_DST`).
    pub ip: IpAddr,
    /// The link-layer address (`NDA_LLADDR`), absent while unresolved (`INCOMPLETE`,
    /// `FAILED`).
    pub lladdr: Option<Vec<u8>>,
    /// The `NUD_*` state bits (`ndm_state`): [`NUD_REACHABLE`], [`NUD_STALE`],
    /// [`NUD_PERMANENT`]...
    pub state: u16,
    /// The `NTF_*` flags (`ndm_flags`), such as `NTF_ROUTER` (0x80).
    pub flags: u8,
    /// Attributes not decoded into the fields above (cache info, probes), raw.
    pub attributes: Vec<RawAttribute>,
}

/// `NUD_INCOMPLETE`: resolution in progress.
pub const NUD_INCOMPLETE: u16 = 0x01;
/// `NUD_REACHABLE`: confirmed recently.
pub const NUD_REACHABLE: u16 = 0x02;
/// `NUD_STALE`: usable, to be confirmed on next use.
pub const NUD_STALE: u16 = 0x04;
/// `NUD_DELAY`: waiting before probing.
pub const NUD_DELAY: u16 = 0x08;
/// `NUD_PROBE`: being probed.
pub const NUD_PROBE: u16 = 0x10;
/// `NUD_FAILED`: resolution failed.
pub const NUD_FAILED: u16 = 0x20;
/// `NUD_NOARP`: no resolution needed.
pub const NUD_NOARP: u16 = 0x40;
/// `NUD_PERMANENT`: set by an administrator (`ip neigh add ... permanent`).
pub const NUD_PERMANENT: u16 = 0x80;

const STATE_NAMES: [(u16, &str); 8] = [
    (NUD_INCOMPLETE, "INCOMPLETE"),
    (NUD_REACHABLE, "REACHABLE"),
    (NUD_STALE, "STALE"),
    (NUD_DELAY, "DELAY"),
    (NUD_PROBE, "PROBE"),
    (NUD_FAILED, "FAILED"),
    (NUD_NOARP, "NOARP"),
    (NUD_PERMANENT, "PERMANENT"),
];

impl Neighbour {
    /// The state in `ip neigh`'s words (`REACHABLE`, `STALE PERMANENT`, `NONE` for no bit).
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::netlink::neigh::{Neighbour, NUD_PERMANENT};
    ///
    /// let n = Neighbour {
    ///     index: 2,
    ///     ip: "10.0.0.2".parse().unwrap(),
    ///     lladdr: Some(vec![2, 0, 0, 0, 0, 1]),
    ///     state: NUD_PERMANENT,
    ///     flags: 0,
    ///     attributes: vec![],
    /// };
    /// assert_eq!(n.state_name(), "PERMANENT");
    /// assert_eq!(n.to_string(), "10.0.0.2 dev#2 lladdr 02:00:00:00:00:01 PERMANENT");
    /// ```
    pub fn state_name(&self) -> String {
        let words: Vec<&str> = STATE_NAMES
            .iter()
            .filter(|(bit, _)| self.state & bit != 0)
            .map(|(_, name)| *name)
            .collect();
        if words.is_empty() {
            "NONE".to_string()
        } else {
            words.join(" ")
        }
    }

    /// Decodes an `RTM_NEWNEIGH` or `RTM_DELNEIGH` body; `None` for families other than IPv4
    /// and IPv6 (bridge forwarding entries) and for entries without an address.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Kernel`] for a body shorter than `struct ndmsg`.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::netlink::neigh::Neighbour;
    ///
    /// // ndmsg: AF_INET, ifindex 3, NUD_REACHABLE; NDA_DST 10.0.0.9.
    /// let mut body = vec![2, 0, 0, 0];
    /// body.extend_from_slice(&3i32.to_ne_bytes());
    /// body.extend_from_slice(&2u16.to_ne_bytes());
    /// body.extend_from_slice(&[0, 1]);
    /// body.extend_from_slice(&8u16.to_ne_bytes());
    /// body.extend_from_slice(&1u16.to_ne_bytes());
    /// body.extend_from_slice(&[10, 0, 0, 9]);
    /// let n = Neighbour::decode(&body)?.unwrap();
    /// assert_eq!((n.index, n.ip.to_string(), n.state_name().as_str()), (3, "10.0.0.9".into(), "REACHABLE"));
    /// assert!(Neighbour::decode(&[2, 0]).is_err());
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn decode(body: &[u8]) -> Result<Option<Neighbour>> {
        if body.len() < NDMSG_LEN {
            return Err(Error::other(
                ErrorKind::Kernel,
                "decode neighbour",
                format!(
                    "neighbour message of {} bytes, shorter than struct ndmsg",
                    body.len()
                ),
            ));
        }
        let family = body[0] as i32;
        if family != libc::AF_INET && family != libc::AF_INET6 {
            return Ok(None);
        }
        let index = i32::from_ne_bytes(body[4..8].try_into().expect("4 bytes")) as u32;
        let state = u16::from_ne_bytes([body[8], body[9]]);
        let flags = body[10];
        let mut ip = None;
        let mut lladdr = None;
        let mut attributes = Vec::new();
        for (ty, v) in attr::iter(&body[NDMSG_LEN..]) {
            match ty {
                NDA_DST => ip = super::route::ip_of(v, family == libc::AF_INET),
                NDA_LLADDR => lladdr = Some(v.to_vec()),
                _ => attributes.push(RawAttribute {
                    kind: ty,
                    value: v.to_vec(),
                }),
            }
        }
        Ok(ip.map(|ip| Neighbour {
            index,
            ip,
            lladdr,
            state,
            flags,
            attributes,
        }))
    }
}

impl fmt::Display for Neighbour {
    /// `ip neigh`'s words: `10.0.0.2 dev#2 lladdr 02:00:00:00:00:01 REACHABLE`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} dev#{}", self.ip, self.index)?;
        if let Some(ll) = &self.lladdr {
            let hex: Vec<String> = ll.iter().map(|b| format!("{b:02x}")).collect();
            write!(f, " lladdr {}", hex.join(":"))?;
        }
        write!(f, " {}", self.state_name())
    }
}

impl Netlink {
    /// Lists the IPv4 and IPv6 neighbours of every interface, like `ip neigh show`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when the socket fails.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let mut nl = lwtun::netlink::Netlink::open()?;
    /// println!("{} neighbours", nl.neighbours()?.len());
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    #[doc(alias = "RTM_GETNEIGH")]
    pub fn neighbours(&mut self) -> Result<Vec<Neighbour>> {
        self.dump_raw(
            "dump neighbours",
            |seq, out| {
                let start = out.len();
                out.extend_from_slice(&0u32.to_ne_bytes());
                out.extend_from_slice(&RTM_GETNEIGH.to_ne_bytes());
                out.extend_from_slice(
                    &((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes(),
                );
                out.extend_from_slice(&seq.to_ne_bytes());
                out.extend_from_slice(&0u32.to_ne_bytes());
                out.extend_from_slice(&[0; NDMSG_LEN]);
                let len = (out.len() - start) as u32;
                out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
            },
            |ty, body| {
                if ty != RTM_NEWNEIGH {
                    return Ok(None);
                }
                Neighbour::decode(body)
            },
        )
    }
}
