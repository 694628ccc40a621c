//! The kernel's own answers about output routing, for code that must agree with it: one output
//! route lookup (`RTM_GETROUTE` for one destination, what `ip route get` prints) and the
//! selectors of the IPv4 policy rules (`RTM_GETRULE`, what `ip rule` prints), crate-internal.
//! The tunnel's direct-path check asks them whether an outer packet would leave by the inner
//! route's next hop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::attr;
use super::Netlink;
use crate::error::Result;

const RTM_GETROUTE: u16 = 26;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETRULE: u16 = 34;
const RTM_NEWRULE: u16 = 32;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const RTMSG_LEN: usize = 12;
const FIB_RULE_HDR_LEN: usize = 12;

const RTA_DST: u16 = 1;
const RTA_SRC: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_VIA: u16 = 18;
const RTA_IP_PROTO: u16 = 27;

const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_FWMASK: u16 = 16;
const FRA_UID_RANGE: u16 = 20;
const FRA_IP_PROTO: u16 = 22;
const FRA_DSCP: u16 = 25;

/// What an output route lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutputRoute {
    /// The route's type (`RTN_UNICAST` 1, `RTN_BLACKHOLE` 6, ...).
    pub(crate) kind: u8,
    /// The device the packet leaves by.
    pub(crate) oif: Option<u32>,
    /// The next hop; `None` when the destination is on-link.
    pub(crate) gateway: Option<IpAddr>,
}

/// `RTN_UNICAST`.
pub(crate) const RTN_UNICAST: u8 = 1;

impl Netlink {
    /// The kernel's output route for an IPv4 packet from `src` (any source when `None`) to
    /// `dst` with IP protocol `proto`, looked up in the VRF of `oif` when given, as
    /// `ip route get DST [from SRC] ipproto P [oif DEV]` asks it.
    pub(crate) fn output_route_v4(
        &mut self,
        dst: Ipv4Addr,
        src: Option<Ipv4Addr>,
        proto: u8,
        oif: Option<u32>,
    ) -> Result<OutputRoute> {
        let answers = self.request_raw("look up the output route", &dst, |seq, out| {
            let start = out.len();
            header(out, RTM_GETROUTE, NLM_F_REQUEST, seq);
            let rtmsg = [
                libc::AF_INET as u8,
                32,                                 // rtm_dst_len
                if src.is_some() { 32 } else { 0 }, // rtm_src_len
                0,
                0,
                0,
                0,
                0,
            ];
            out.extend_from_slice(&rtmsg);
            out.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
            attr::put(out, RTA_DST, &dst.octets());
            if let Some(src) = src {
                attr::put(out, RTA_SRC, &src.octets());
            }
            if let Some(oif) = oif {
                attr::put(out, RTA_OIF, &oif.to_ne_bytes());
            }
            // The kernel takes only TCP, UDP and ICMP here ("Unsupported ip proto"); the
            // protocol matters only to rules with an `ipproto` selector, which
            // packet_dependent_rules_v4 reports.
            if matches!(proto, 1 | 6 | 17) {
                attr::put(out, RTA_IP_PROTO, &[proto]);
            }
            finish(out, start);
        })?;
        let body = answers
            .iter()
            .find(|(ty, _)| *ty == RTM_NEWROUTE)
            .map(|(_, body)| body.as_slice())
            .filter(|b| b.len() >= RTMSG_LEN)
            .ok_or_else(|| {
                crate::error::Error::not_found("look up the output route", dst.to_string())
            })?;
        let mut route = OutputRoute {
            kind: body[7],
            oif: None,
            gateway: None,
        };
        for (ty, value) in attr::iter(&body[RTMSG_LEN..]) {
            match ty {
                RTA_OIF => route.oif = attr::u32_of(value),
                RTA_GATEWAY if value.len() == 4 => {
                    route.gateway = Some(IpAddr::V4(Ipv4Addr::new(
                        value[0], value[1], value[2], value[3],
                    )))
                }
                // struct rtvia: family (2 bytes), then the address
                RTA_VIA if value.len() == 18 => {
                    let octets: [u8; 16] = value[2..18].try_into().unwrap_or([0; 16]);
                    route.gateway = Some(IpAddr::V6(Ipv6Addr::from(octets)));
                }
                _ => {}
            }
        }
        Ok(route)
    }

    /// The IPv4 policy rules whose match depends on the packet or its socket rather than on
    /// its addresses and output device (a firewall mark, a user id range, a TOS or DSCP), or
    /// on an IP protocol that [`Netlink::output_route_v4`] cannot ask with. Each as
    /// `(priority, what it matches on)`.
    pub(crate) fn packet_dependent_rules_v4(&mut self) -> Result<Vec<(u32, &'static str)>> {
        let rules = self.dump_raw(
            "dump policy rules",
            |seq, out| {
                let start = out.len();
                header(out, RTM_GETRULE, NLM_F_REQUEST | NLM_F_DUMP, seq);
                let mut hdr = [0u8; FIB_RULE_HDR_LEN];
                hdr[0] = libc::AF_INET as u8;
                out.extend_from_slice(&hdr);
                finish(out, start);
            },
            |ty, body| {
                if ty != RTM_NEWRULE || body.len() < FIB_RULE_HDR_LEN {
                    return Ok(None);
                }
                let mut priority = 0;
                let mut what = (body[3] != 0).then_some("tos");
                for (ty, value) in attr::iter(&body[FIB_RULE_HDR_LEN..]) {
                    match ty {
                        FRA_PRIORITY => priority = attr::u32_of(value).unwrap_or(0),
                        FRA_FWMARK | FRA_FWMASK if attr::u32_of(value).unwrap_or(0) != 0 => {
                            what = Some("fwmark")
                        }
                        FRA_UID_RANGE => what = Some("uidrange"),
                        FRA_DSCP => what = Some("dscp"),
                        // Not packet-dependent, but `ip route get` cannot ask with GRE's or
                        // IP-in-IP's protocol.
                        FRA_IP_PROTO => what = Some("ipproto"),
                        _ => {}
                    }
                }
                Ok(what.map(|w| (priority, w)))
            },
        )?;
        Ok(rules)
    }
}

fn header(out: &mut Vec<u8>, ty: u16, flags: u16, seq: u32) {
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
}

fn finish(out: &mut [u8], start: usize) {
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}
