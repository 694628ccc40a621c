//! The reference encoder of the codec's tests: neli's message framing and attributes, with the
//! encaps in `Nest`s, written the long way. The direct writer must produce the same bytes.

use std::net::IpAddr;

use neli::consts::nl::NlmF;
use neli::consts::rtnl::{RtAddrFamily, RtScope, RtTable, Rta, Rtm, Rtn, Rtprot};
use neli::rtnl::{Rtattr, RtattrBuilder, Rtmsg, RtmsgBuilder};
use neli::types::{Buffer, RtBuffer};

use super::*;
use crate::netlink::attr::{self, Nest};

impl Route {
    fn family(&self) -> RtAddrFamily {
        if self.dst.is_ipv4() {
            RtAddrFamily::Inet
        } else {
            RtAddrFamily::Inet6
        }
    }

    /// The `Rtmsg` for installing this route, attributes in the order iproute2 sends them
    /// (dst, gateway, encap, encap type, metric, prefsrc, metrics, table above 255, oif).
    fn to_rtmsg(&self) -> Result<Rtmsg> {
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
            let (kind, payload) = neli_encap(encap);
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

    /// The `Rtmsg` for deleting this route: it selects by destination, table, tos, protocol,
    /// metric and device, not by encap.
    fn to_delete_rtmsg(&self) -> Rtmsg {
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
}

fn encode_prog(n: &mut Nest, ty: u16, p: &ProgRef) {
    let at = n.begin(ty);
    n.u32(LWT_BPF_PROG_FD, p.fd.unwrap_or(-1) as u32);
    n.str(LWT_BPF_PROG_NAME, &p.name);
    n.end(at);
}

/// The `RTA_ENCAP_TYPE` and `RTA_ENCAP` payload of an encap, the long way.
fn neli_encap(encap: &Encap) -> (u16, Vec<u8>) {
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

/// What neli writes for `op` on `r`: the reference the direct writer must match.
pub(super) fn neli_request(r: &Route, op: BatchOp, flags: NlmF, seq: u32) -> Vec<u8> {
    let mut out = Vec::new();
    match op {
        BatchOp::Add | BatchOp::Replace => {
            let f = if op == BatchOp::Add {
                NlmF::CREATE | NlmF::EXCL
            } else {
                NlmF::CREATE | NlmF::REPLACE
            };
            let msg = r.to_rtmsg().unwrap();
            crate::netlink::encode_message(
                &mut out,
                Rtm::Newroute,
                f | flags | NlmF::REQUEST,
                seq,
                msg,
            );
        }
        BatchOp::Delete => {
            let msg = r.to_delete_rtmsg();
            crate::netlink::encode_message(
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
