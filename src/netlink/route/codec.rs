//! The bytes of a route: the request lwtun sends to add, replace or delete it, written straight
//! into the caller's buffer (a pipelined batch of many routes allocates nothing per attribute),
//! and a route decoded from the kernel's `RTM_NEWROUTE`. The encap writer serves nexthop objects
//! too (`NHA_ENCAP` holds the same nest as `RTA_ENCAP`).

use std::net::{IpAddr, Ipv6Addr};

use ipnetwork::IpNetwork;
use neli::consts::rtnl::RtAddrFamily;
use neli::rtnl::Rtmsg;

use super::*;
use crate::netlink::attr;
use crate::netlink::decode_body;

impl Route {
    /// The `RTA_METRICS` payload: the MTU and, when locked, `RTAX_LOCK` naming it.
    pub(super) fn metrics(&self) -> Option<Vec<u8>> {
        let mtu = self.mtu?;
        let mut out = Vec::new();
        if mtu.locked {
            attr::put(&mut out, RTAX_LOCK, &(1u32 << RTAX_MTU).to_ne_bytes());
        }
        attr::put(&mut out, RTAX_MTU, &mtu.bytes.to_ne_bytes());
        Some(out)
    }

    /// The complete netlink message lwtun sends for `op` on this route, with sequence number
    /// `seq` and `NLM_F_ACK`: what [`Netlink::add_route`](crate::netlink::Netlink::add_route), [`Netlink::replace_route`](crate::netlink::Netlink::replace_route) and
    /// [`Netlink::delete_route`](crate::netlink::Netlink::delete_route) send, for tools that write their own netlink batches and for
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
    /// The bytes are written straight into `out`: no allocation per attribute, which is most of
    /// a pipelined batch's user-space cost. The unit tests compare them with what neli writes
    /// for the same route, for every attribute and encap.
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
        attr::put_ip(out, libc::RTA_DST, self.dst.ip());
        if op == BatchOp::Delete {
            if let Some(m) = self.metric {
                attr::put(out, libc::RTA_PRIORITY, &m.to_ne_bytes());
            }
            if let Some(oif) = self.oif {
                attr::put(out, libc::RTA_OIF, &oif.to_ne_bytes());
            }
            if self.table > 255 {
                attr::put(out, libc::RTA_TABLE, &self.table.to_ne_bytes());
            }
        } else {
            if let Some(id) = self.nhid {
                attr::put(out, RTA_NH_ID, &id.to_ne_bytes());
            }
            if let Some(gw) = self.gateway {
                attr::put_ip(out, libc::RTA_GATEWAY, gw);
            }
            if let Some(encap) = &self.encap {
                let kind = write_encap(out, RTA_ENCAP, encap);
                attr::put(out, RTA_ENCAP_TYPE, &kind.to_ne_bytes());
            }
            if let Some(m) = self.metric {
                attr::put(out, libc::RTA_PRIORITY, &m.to_ne_bytes());
            }
            if let Some(src) = self.prefsrc {
                attr::put_ip(out, libc::RTA_PREFSRC, src);
            }
            if let Some(metrics) = self.metrics() {
                attr::put(out, RTA_METRICS, &metrics);
            }
            if self.table > 255 {
                attr::put(out, libc::RTA_TABLE, &self.table.to_ne_bytes());
            }
            if let Some(oif) = self.oif {
                attr::put(out, libc::RTA_OIF, &oif.to_ne_bytes());
            }
        }
        let len = (out.len() - start) as u32;
        out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
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

/// Appends the nest `ty` (`RTA_ENCAP` of a route, `NHA_ENCAP` of a nexthop object) for `encap`
/// to `out` and returns its encap type (`RTA_ENCAP_TYPE`, `NHA_ENCAP_TYPE`).
pub(in crate::netlink) fn write_encap(out: &mut Vec<u8>, ty: u16, encap: &Encap) -> u16 {
    let at = attr::begin(out, ty);
    let kind = match encap {
        Encap::Bpf(b) => {
            for (hook, p) in [
                (LWT_BPF_IN, &b.input),
                (LWT_BPF_OUT, &b.output),
                (LWT_BPF_XMIT, &b.xmit),
            ] {
                if let Some(p) = p {
                    write_prog(out, hook, p);
                }
            }
            if let Some(h) = b.headroom {
                attr::put(out, LWT_BPF_XMIT_HEADROOM, &h.to_ne_bytes());
            }
            LWTUNNEL_ENCAP_BPF
        }
        Encap::Seg6LocalBpf(p) => {
            attr::put(
                out,
                SEG6_LOCAL_ACTION,
                &SEG6_LOCAL_ACTION_END_BPF.to_ne_bytes(),
            );
            write_prog(out, SEG6_LOCAL_BPF, p);
            LWTUNNEL_ENCAP_SEG6_LOCAL
        }
        Encap::Seg6(e) => {
            attr::put(out, SEG6_IPTUNNEL_SRH, &e.to_bytes());
            LWTUNNEL_ENCAP_SEG6
        }
        Encap::Seg6Local(a) => {
            let code = match a {
                Seg6Local::End => SEG6_LOCAL_ACTION_END,
                Seg6Local::EndX { .. } => SEG6_LOCAL_ACTION_END_X,
                Seg6Local::EndT { .. } => SEG6_LOCAL_ACTION_END_T,
                Seg6Local::EndDt6 { .. } => SEG6_LOCAL_ACTION_END_DT6,
            };
            attr::put(out, SEG6_LOCAL_ACTION, &code.to_ne_bytes());
            match a {
                Seg6Local::End => {}
                Seg6Local::EndX { nh6 } => attr::put(out, SEG6_LOCAL_NH6, &nh6.octets()),
                Seg6Local::EndT { table } | Seg6Local::EndDt6 { table } => {
                    attr::put(out, SEG6_LOCAL_TABLE, &table.to_ne_bytes())
                }
            }
            LWTUNNEL_ENCAP_SEG6_LOCAL
        }
        // Kept as it came: the nest's payload, whatever its length.
        Encap::Other { kind, data } => {
            out.extend_from_slice(data);
            *kind
        }
    };
    attr::end(out, at);
    out.resize(at + crate::netlink::align4(out.len() - at), 0);
    kind
}

/// One program of an LWT BPF encap: its fd and the name the kernel shows in dumps.
fn write_prog(out: &mut Vec<u8>, ty: u16, p: &ProgRef) {
    let at = attr::begin(out, ty);
    attr::put(
        out,
        LWT_BPF_PROG_FD,
        &(p.fd.unwrap_or(-1) as u32).to_ne_bytes(),
    );
    attr::put_str(out, LWT_BPF_PROG_NAME, &p.name);
    attr::end(out, at);
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
pub(in crate::netlink) fn decode_encap(kind: u16, data: Vec<u8>) -> Encap {
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

pub(in crate::netlink) fn ip_of(data: &[u8], v4: bool) -> Option<IpAddr> {
    match (v4, data.len()) {
        (true, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(data).ok()?)),
        (false, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(data).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use neli::consts::nl::NlmF;

    use super::*;
    use crate::netlink::route::neli_oracle::neli_request;

    /// An encap's type and nest payload as the writer writes them.
    fn encoded(e: &Encap) -> (u16, Vec<u8>) {
        let mut out = Vec::new();
        let kind = write_encap(&mut out, RTA_ENCAP, e);
        (kind, out[4..].to_vec())
    }

    #[test]
    fn a_dumped_route_over_a_nexthop_keeps_the_nexthops_encap_apart() {
        // What the kernel dumps for `ip route add 10.1.0.0/24 nhid 1` over
        // `ip nexthop add id 1 encap bpf xmit ... dev #3` with nexthop_compat_mode=1: RTA_NH_ID
        // plus copies of the nexthop's device and encap.
        let mut r = Route::new("10.1.0.0/24".parse().unwrap());
        r.nhid = Some(1);
        let mut body = r.to_request(BatchOp::Add, 1).unwrap()[16..].to_vec();
        attr::put(&mut body, libc::RTA_OIF, &3u32.to_ne_bytes());
        let kind = write_encap(
            &mut body,
            RTA_ENCAP,
            &Encap::Bpf(BpfEncap {
                xmit: Some(ProgRef::new(8, "lwtun:count_xmit:9")),
                ..Default::default()
            }),
        );
        attr::put(&mut body, RTA_ENCAP_TYPE, &kind.to_ne_bytes());
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
        let (kind, data) = encoded(&e);
        assert_eq!(kind, LWTUNNEL_ENCAP_BPF);
        let back = decode_encap(kind, data);
        let Encap::Bpf(b) = back else {
            panic!("not bpf")
        };
        assert_eq!(b.input.unwrap().name, "a");
        assert_eq!(b.xmit.unwrap().name, "b");
        assert_eq!(b.headroom, Some(40));
        assert!(b.output.is_none());

        let (kind, data) = encoded(&Encap::Seg6LocalBpf(ProgRef::new(5, "end")));
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
