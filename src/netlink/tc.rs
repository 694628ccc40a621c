//! Traffic control over rtnetlink: the `clsact` qdisc and direct-action `cls_bpf` filters.
//!
//! These are the two messages `tc qdisc add dev X clsact` and
//! `tc filter add dev X ingress prio P handle H bpf da fd N name NAME` send, plus the filter dump
//! behind `tc filter show`. The domain module [`crate::tc`] builds attachments (with RAII detach
//! and tcx) on top of them.

use std::os::fd::{AsRawFd, BorrowedFd};

use neli::consts::nl::NlmF;
use neli::consts::rtnl::{Rtm, Tca};
use neli::rtnl::{RtattrBuilder, Tcmsg, TcmsgBuilder};
use neli::types::{Buffer, RtBuffer};

use super::attr::{self, Nest};
use super::{encode_message, Netlink};
use crate::error::{ErrorKind, Result};

/// `TC_H_CLSACT`: the handle (and parent) of the clsact qdisc, `ffff:fff1`.
pub const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
/// `TC_H_MIN_INGRESS`: the minor number of clsact's ingress hook.
pub const TC_H_MIN_INGRESS: u32 = 0xFFF2;
/// `TC_H_MIN_EGRESS`: the minor number of clsact's egress hook.
pub const TC_H_MIN_EGRESS: u32 = 0xFFF3;
/// The parent of filters on clsact's ingress hook (`tc filter ... ingress`).
pub const CLSACT_INGRESS: u32 = (TC_H_CLSACT & 0xFFFF_0000) | TC_H_MIN_INGRESS;
/// The parent of filters on clsact's egress hook (`tc filter ... egress`).
pub const CLSACT_EGRESS: u32 = (TC_H_CLSACT & 0xFFFF_0000) | TC_H_MIN_EGRESS;

const TCMSG_LEN: usize = 20;
const ETH_P_ALL: u16 = 0x0003;
const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_ID: u16 = 11;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
/// `TCA_CHAIN`: the filter chain index (dumps carry it).
const TCA_CHAIN: u16 = 11;

/// One `cls_bpf` filter as the kernel reports it (`tc filter show dev X ingress`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfFilter {
    /// The interface.
    pub ifindex: u32,
    /// The parent: [`CLSACT_INGRESS`] or [`CLSACT_EGRESS`] for clsact filters.
    pub parent: u32,
    /// The filter priority (`prio`); lower runs first.
    pub priority: u16,
    /// The EtherType the filter matches, host byte order (`0x0003`, ETH_P_ALL, for all).
    pub protocol: u16,
    /// The filter handle.
    pub handle: u32,
    /// The filter chain (0 unless chains are used).
    pub chain: u32,
    /// The name given at attach time (`TCA_BPF_NAME`).
    pub name: String,
    /// The kernel id of the attached program.
    pub program_id: Option<u32>,
    /// Whether the filter runs in direct-action mode (the program's return value is the verdict).
    pub direct_action: bool,
}

fn tcmsg(ifindex: u32, handle: u32, parent: u32, info: u32, attrs: RtBuffer<Tca, Buffer>) -> Tcmsg {
    TcmsgBuilder::default()
        .tcm_family(libc::AF_UNSPEC as u8)
        .tcm_ifindex(ifindex as i32)
        .tcm_handle(handle)
        .tcm_parent(parent)
        .tcm_info(info)
        .rtattrs(attrs)
        .build()
        .expect("every field of the tc message is set")
}

fn rtattr(ty: Tca, value: Vec<u8>) -> neli::rtnl::Rtattr<Tca, Buffer> {
    RtattrBuilder::default()
        .rta_type(ty)
        .rta_payload(Buffer::from(value))
        .build()
        .expect("type and payload are set")
}

fn kind_attr(kind: &str) -> neli::rtnl::Rtattr<Tca, Buffer> {
    let mut v = kind.as_bytes().to_vec();
    v.push(0);
    rtattr(Tca::Kind, v)
}

/// The body of `tc qdisc add/del dev X clsact`.
fn clsact_body(ifindex: u32) -> Tcmsg {
    let mut attrs = RtBuffer::new();
    attrs.push(kind_attr("clsact"));
    tcmsg(ifindex, TC_H_CLSACT & 0xFFFF_0000, TC_H_CLSACT, 0, attrs)
}

/// The body of `tc filter add dev X PARENT prio P handle H bpf da fd FD name NAME`.
fn bpf_filter_body(
    ifindex: u32,
    parent: u32,
    priority: u16,
    handle: u32,
    fd: u32,
    name: &str,
) -> Tcmsg {
    let mut opts = Nest::new();
    opts.u32(TCA_BPF_FD, fd);
    opts.str(TCA_BPF_NAME, name);
    opts.u32(TCA_BPF_FLAGS, TCA_BPF_FLAG_ACT_DIRECT);
    let mut attrs = RtBuffer::new();
    attrs.push(kind_attr("bpf"));
    attrs.push(rtattr(Tca::Options, opts.into_bytes()));
    tcmsg(ifindex, handle, parent, filter_info(priority), attrs)
}

/// `tcm_info` of a filter: priority in the upper 16 bits, protocol (network order) in the lower.
fn filter_info(priority: u16) -> u32 {
    ((priority as u32) << 16) | ETH_P_ALL.to_be() as u32
}

impl Netlink {
    /// Adds the `clsact` qdisc to `ifindex` (`tc qdisc add dev X clsact`). Returns `true` when it
    /// was added, `false` when the device had one already.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] for an unknown interface; [`ErrorKind::Exists`] when another
    /// qdisc occupies the ingress/clsact slot.
    pub fn add_clsact(&mut self, ifindex: u32) -> Result<bool> {
        let body = clsact_body(ifindex);
        let object = format!("clsact on ifindex {ifindex}");
        match self.request(
            "add qdisc",
            &object,
            Rtm::Newqdisc,
            NlmF::CREATE | NlmF::EXCL,
            body,
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::EEXIST) && self.has_clsact(ifindex)? => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether `ifindex` has the clsact qdisc.
    pub fn has_clsact(&mut self, ifindex: u32) -> Result<bool> {
        let body = tcmsg(ifindex, 0, 0, 0, RtBuffer::new());
        let found = self.dump("list qdiscs", Rtm::Getqdisc, body, |_, bytes| {
            Ok(parse_tc(bytes).and_then(|(hdr, attrs)| {
                let kind = attr::find(attrs, Tca::Kind.into()).map(attr::cstr);
                (hdr.ifindex == ifindex
                    && hdr.parent == TC_H_CLSACT
                    && kind.as_deref() == Some("clsact"))
                .then_some(())
            }))
        })?;
        Ok(!found.is_empty())
    }

    /// Removes the `clsact` qdisc of `ifindex`, and with it every filter on its hooks.
    pub fn del_clsact(&mut self, ifindex: u32) -> Result<()> {
        let body = clsact_body(ifindex);
        let object = format!("clsact on ifindex {ifindex}");
        self.request("delete qdisc", &object, Rtm::Delqdisc, NlmF::empty(), body)
    }

    /// Adds a direct-action `cls_bpf` filter running `program` under `parent` (for example
    /// [`CLSACT_INGRESS`]) with the given priority and handle, matching every protocol. With
    /// `replace`, a filter already at that priority and handle gets the new program; without, it
    /// is an [`ErrorKind::Exists`] error.
    #[allow(clippy::too_many_arguments)]
    pub fn add_bpf_filter(
        &mut self,
        ifindex: u32,
        parent: u32,
        priority: u16,
        handle: u32,
        program: BorrowedFd<'_>,
        name: &str,
        replace: bool,
    ) -> Result<()> {
        let body = bpf_filter_body(
            ifindex,
            parent,
            priority,
            handle,
            program.as_raw_fd() as u32,
            name,
        );
        let flags = if replace {
            NlmF::CREATE
        } else {
            NlmF::CREATE | NlmF::EXCL
        };
        let object = format!("bpf {name} on ifindex {ifindex} prio {priority} handle {handle:#x}");
        self.request("add tc filter", &object, Rtm::Newtfilter, flags, body)
    }

    /// Deletes the `cls_bpf` filter at `priority` and `handle` under `parent`.
    pub fn del_bpf_filter(
        &mut self,
        ifindex: u32,
        parent: u32,
        priority: u16,
        handle: u32,
    ) -> Result<()> {
        let mut attrs = RtBuffer::new();
        attrs.push(kind_attr("bpf"));
        let body = tcmsg(ifindex, handle, parent, filter_info(priority), attrs);
        let object = format!("bpf on ifindex {ifindex} prio {priority} handle {handle:#x}");
        self.request(
            "delete tc filter",
            &object,
            Rtm::Deltfilter,
            NlmF::empty(),
            body,
        )
    }

    /// The `cls_bpf` filters under `parent` of `ifindex`, in the kernel's order (by priority).
    /// A device without clsact has none.
    pub fn bpf_filters(&mut self, ifindex: u32, parent: u32) -> Result<Vec<BpfFilter>> {
        let body = tcmsg(ifindex, 0, parent, 0, RtBuffer::new());
        match self.dump("list tc filters", Rtm::Gettfilter, body, |_, bytes| {
            Ok(parse_tc(bytes).and_then(|(hdr, attrs)| decode_filter(hdr, attrs)))
        }) {
            Ok(v) => Ok(v),
            // No qdisc at that parent: nothing attached.
            Err(e) if e.kind() == ErrorKind::InvalidInput || e.kind() == ErrorKind::NotFound => {
                Ok(Vec::new())
            }
            Err(e) => Err(e.with_object(format!("ifindex {ifindex}"))),
        }
    }
}

/// The fixed part of a `struct tcmsg`.
struct TcHeader {
    ifindex: u32,
    handle: u32,
    parent: u32,
    info: u32,
}

fn parse_tc(body: &[u8]) -> Option<(TcHeader, &[u8])> {
    if body.len() < TCMSG_LEN {
        return None;
    }
    let u = |at: usize| u32::from_ne_bytes(body[at..at + 4].try_into().unwrap());
    Some((
        TcHeader {
            ifindex: u(4),
            handle: u(8),
            parent: u(12),
            info: u(16),
        },
        &body[TCMSG_LEN..],
    ))
}

fn decode_filter(hdr: TcHeader, attrs: &[u8]) -> Option<BpfFilter> {
    if attr::find(attrs, Tca::Kind.into())
        .map(attr::cstr)
        .as_deref()
        != Some("bpf")
    {
        return None;
    }
    // The first message of a dump describes the classifier instance itself (handle 0).
    let options = attr::find(attrs, Tca::Options.into())?;
    if hdr.handle == 0 {
        return None;
    }
    let flags = attr::find(options, TCA_BPF_FLAGS)
        .and_then(attr::u32_of)
        .unwrap_or(0);
    Some(BpfFilter {
        ifindex: hdr.ifindex,
        parent: hdr.parent,
        priority: (hdr.info >> 16) as u16,
        protocol: u16::from_be((hdr.info & 0xFFFF) as u16),
        handle: hdr.handle,
        chain: attr::find(attrs, TCA_CHAIN)
            .and_then(attr::u32_of)
            .unwrap_or(0),
        name: attr::find(options, TCA_BPF_NAME)
            .map(attr::cstr)
            .unwrap_or_default(),
        program_id: attr::find(options, TCA_BPF_ID).and_then(attr::u32_of),
        direct_action: flags & TCA_BPF_FLAG_ACT_DIRECT != 0,
    })
}

/// The filter decoder, for golden-byte and fuzz tests. Not part of lwtun's API.
#[doc(hidden)]
pub mod wire {
    use super::*;

    /// The framed `tc filter add dev IFINDEX PARENT prio P handle H bpf da fd FD name NAME`
    /// request lwtun sends, sequence 0.
    pub fn bpf_filter(
        ifindex: u32,
        parent: u32,
        priority: u16,
        handle: u32,
        fd: u32,
        name: &str,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        encode_message(
            &mut out,
            Rtm::Newtfilter,
            NlmF::REQUEST | NlmF::ACK | NlmF::CREATE | NlmF::EXCL,
            0,
            bpf_filter_body(ifindex, parent, priority, handle, fd, name),
        );
        out
    }

    /// Decodes one framed `RTM_NEWTFILTER` message (header included): the cls_bpf filter it
    /// describes, `None` for other filters or malformed bytes.
    pub fn decode_filter_message(msg: &[u8]) -> Option<BpfFilter> {
        let (hdr, attrs) = parse_tc(msg.get(16..)?)?;
        decode_filter(hdr, attrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clsact_parents_match_tc() {
        // `tc filter show dev X ingress` asks for parent ffff:fff2, egress for ffff:fff3.
        assert_eq!(CLSACT_INGRESS, 0xFFFF_FFF2);
        assert_eq!(CLSACT_EGRESS, 0xFFFF_FFF3);
    }

    #[test]
    fn filter_info_carries_priority_and_eth_p_all() {
        // iproute2 `prio 1 protocol all`: tcm_info = TC_H_MAKE(1 << 16, htons(ETH_P_ALL)).
        let info = filter_info(1);
        assert_eq!(info >> 16, 1);
        assert_eq!(u16::from_be((info & 0xFFFF) as u16), ETH_P_ALL);
    }

    fn bytes_of(body: Tcmsg) -> Vec<u8> {
        use neli::ToBytes;
        let mut c = std::io::Cursor::new(Vec::new());
        body.to_bytes(&mut c).unwrap();
        c.into_inner()
    }

    #[test]
    fn clsact_request_matches_iproute2() {
        // `tc qdisc add dev d0 clsact` (iproute2 6.1, ifindex 3), body captured with strace.
        let golden = b"\x00\x00\x00\x00\x03\x00\x00\x00\x00\x00\xff\xff\xf1\xff\xff\xff\
                       \x00\x00\x00\x00\x0b\x00\x01\x00clsact\x00\x00";
        assert_eq!(bytes_of(clsact_body(3)), golden.to_vec());
    }

    #[test]
    fn bpf_filter_request_matches_iproute2() {
        // `tc filter add dev d1 ingress prio 1 handle 1 bpf da obj tc_count.bpf.o sec tc`
        // (iproute2 6.1, ifindex 2, program fd 9), body captured with strace.
        let golden = b"\x00\x00\x00\x00\x02\x00\x00\x00\x01\x00\x00\x00\xf2\xff\xff\xff\
                       \x00\x03\x01\x00\x08\x00\x01\x00bpf\x00\x2c\x00\x02\x00\
                       \x08\x00\x06\x00\x09\x00\x00\x00\x18\x00\x07\x00tc_count.bpf.o:[tc]\x00\
                       \x08\x00\x08\x00\x01\x00\x00\x00";
        let body = bpf_filter_body(2, CLSACT_INGRESS, 1, 1, 9, "tc_count.bpf.o:[tc]");
        assert_eq!(bytes_of(body), golden.to_vec());
    }

    #[test]
    fn decodes_a_dumped_filter() {
        let mut body = vec![0u8; TCMSG_LEN];
        body[4..8].copy_from_slice(&7u32.to_ne_bytes());
        body[8..12].copy_from_slice(&1u32.to_ne_bytes());
        body[12..16].copy_from_slice(&CLSACT_INGRESS.to_ne_bytes());
        body[16..20].copy_from_slice(&filter_info(3).to_ne_bytes());
        let mut a = Nest::new();
        a.str(Tca::Kind.into(), "bpf");
        let o = a.begin(Tca::Options.into());
        a.u32(TCA_BPF_ID, 42);
        a.str(TCA_BPF_NAME, "lwtun:x");
        a.u32(TCA_BPF_FLAGS, 1);
        a.end(o);
        body.extend_from_slice(a.bytes());
        let (hdr, attrs) = parse_tc(&body).unwrap();
        let f = decode_filter(hdr, attrs).unwrap();
        assert_eq!(f.ifindex, 7);
        assert_eq!(f.priority, 3);
        assert_eq!(f.protocol, ETH_P_ALL);
        assert_eq!(f.handle, 1);
        assert_eq!(f.program_id, Some(42));
        assert_eq!(f.name, "lwtun:x");
        assert!(f.direct_action);
    }
}
