//! Golden bytes: lwtun's route requests against iproute2's, and kernel dumps decoded.
//!
//! The bytes were captured on Linux 6.18 with iproute2 6.1, inside a throwaway namespace holding
//! a veth `v0` (ifindex 3), by `strace -f -e trace=sendmsg -e write=3 -xx` (requests) and
//! `strace -f -e trace=recvmsg -e read=3 -xx` (dumps). iproute2 leaves uninitialised bytes in
//! some attribute padding; those are zeroed here (marked), since lwtun writes zeros.
//! No privileges needed.

mod common;

use common::{assert_bytes, unhex};
use lwtun::netlink::route::{
    BatchOp, BpfEncap, Encap, ProgRef, Route, LWTUNNEL_ENCAP_BPF, RTPROT_BOOT, RTPROT_STATIC,
    RT_TABLE_MAIN,
};

const SEQ: u32 = 0x6b02_7390;
const NAME: &str = "lwt_count.bpf.o:[lwt_xmit]";

fn xmit_encap(fd: i32, headroom: Option<u32>) -> Encap {
    Encap::Bpf(BpfEncap {
        xmit: Some(ProgRef::new(fd, NAME)),
        headroom,
        ..Default::default()
    })
}

#[test]
fn xmit_route_with_headroom_matches_iproute2() {
    // ip route add 10.1.0.0/16 encap bpf xmit obj lwt_count.bpf.o sec lwt_xmit headroom 20 dev v0
    // (program fd 8). Zeroed: 2 padding bytes after RTA_ENCAP_TYPE (iproute2 sent 01 00).
    let iproute2 = unhex(&[
        "6c000000180005069073026b0000000002100000fe03fd010000000008000100",
        "0a010000380016802c00038008000100080000001f0002006c77745f636f756e",
        "742e6270662e6f3a5b6c77745f786d69745d0000080004001400000006001500",
        "060000000800040003000000",
    ]);
    let mut r = Route::new("10.1.0.0/16".parse().unwrap());
    r.oif = Some(3);
    r.encap = Some(xmit_encap(8, Some(20)));
    assert_bytes(&r.to_request(BatchOp::Add, SEQ).unwrap(), &iproute2);
}

#[test]
fn three_hook_route_in_table_100_matches_iproute2() {
    // ip route add 10.2.0.0/16 encap bpf in obj lwt_count.bpf.o sec lwt_in
    //   out obj lwt_count.bpf.o sec lwt_out xmit obj lwt_count.bpf.o sec lwt_xmit
    //   dev v0 table 100 metric 7 proto static
    // (program fds 8, 11, 13). Zeroed: 3 padding bytes after the lwt_in name (iproute2 sent
    // e1 01 00).
    let iproute2 = unhex(&[
        "c4000000180005069073026b00000000021000006404fd010000000008000100",
        "0a020000880016802c00018008000100080000001d0002006c77745f636f756e",
        "742e6270662e6f3a5b6c77745f696e5d000000002c000280080001000b000000",
        "1e0002006c77745f636f756e742e6270662e6f3a5b6c77745f6f75745d000000",
        "2c000380080001000d0000001f0002006c77745f636f756e742e6270662e6f3a",
        "5b6c77745f786d69745d00000600150006000000080006000700000008000400",
        "03000000",
    ]);
    let mut r = Route::new("10.2.0.0/16".parse().unwrap());
    r.oif = Some(3);
    r.table = 100;
    r.metric = Some(7);
    r.protocol = RTPROT_STATIC;
    r.encap = Some(Encap::Bpf(BpfEncap {
        input: Some(ProgRef::new(8, "lwt_count.bpf.o:[lwt_in]")),
        output: Some(ProgRef::new(11, "lwt_count.bpf.o:[lwt_out]")),
        xmit: Some(ProgRef::new(13, NAME)),
        headroom: None,
    }));
    assert_bytes(&r.to_request(BatchOp::Add, SEQ).unwrap(), &iproute2);
}

#[test]
fn ipv6_route_via_gateway_in_table_1000_matches_iproute2() {
    // ip -6 route add 2001:db8:5::/64 via 2001:db8::2 encap bpf xmit obj lwt_count.bpf.o
    //   sec lwt_xmit dev v0 table 1000
    // (program fd 8; table > 255 travels as RTA_TABLE, scope universe because of the gateway).
    let iproute2 = unhex(&[
        "8c000000180005069073026b000000000a400000000300010000000014000100",
        "20010db80005000000000000000000001400050020010db80000000000000000",
        "00000002300016802c00038008000100080000001f0002006c77745f636f756e",
        "742e6270662e6f3a5b6c77745f786d69745d0000060015000600000008000f00",
        "e80300000800040003000000",
    ]);
    let mut r = Route::new("2001:db8:5::/64".parse().unwrap());
    r.gateway = Some("2001:db8::2".parse().unwrap());
    r.oif = Some(3);
    r.table = 1000;
    r.encap = Some(xmit_encap(8, None));
    assert_bytes(&r.to_request(BatchOp::Add, SEQ).unwrap(), &iproute2);
}

#[test]
fn kernel_dump_of_an_iproute2_xmit_route_decodes() {
    // The RTM_NEWROUTE answer (body after the 16-byte header) to `ip route show 10.1.0.0/16`
    // for the route of xmit_route_with_headroom_matches_iproute2: the dump carries the name
    // only, no fd and no headroom.
    let msg = unhex(&[
        "64000000180022009073026b495f000002100000fe03fd010000000008000f00",
        "fe000000080001000a010000080004000300000028001600240003001f000200",
        "6c77745f636f756e742e6270662e6f3a5b6c77745f786d69745d000006001500",
        "06000000",
    ]);
    let r = Route::decode(&msg[16..]).unwrap().expect("an IPv4 route");
    assert_eq!(r.dst, "10.1.0.0/16".parse().unwrap());
    assert_eq!(r.table, RT_TABLE_MAIN);
    assert_eq!(r.protocol, RTPROT_BOOT);
    assert_eq!(r.oif, Some(3));
    assert_eq!(r.scope, Some(253));
    assert_eq!(
        r.encap,
        Some(Encap::Bpf(BpfEncap {
            xmit: Some(ProgRef {
                name: NAME.into(),
                fd: None
            }),
            ..Default::default()
        }))
    );
    assert!(r.extra.is_empty(), "{:?}", r.extra);
    assert_eq!(
        r.to_string(),
        format!("10.1.0.0/16 dev#3 encap bpf xmit {NAME}")
    );
}

#[test]
fn kernel_dump_of_an_ipv6_route_keeps_unknown_attributes() {
    // The answer to `ip -6 route show table 1000` for the route of
    // ipv6_route_via_gateway_in_table_1000_matches_iproute2: it adds RTA_PRIORITY 1024,
    // RTA_CACHEINFO and RTA_PREF, which lwtun keeps as raw attributes.
    let msg = unhex(&[
        "b8000000180022009073026b4f5f00000a400000fc0300010000000008000f00",
        "e80300001400010020010db80005000000000000000000000800060000040000",
        "1400050020010db8000000000000000000000002080004000300000028001600",
        "240003001f0002006c77745f636f756e742e6270662e6f3a5b6c77745f786d69",
        "745d0000060015000600000024000c0000000000000000000000000000000000",
        "000000000000000000000000000000000500140000000000",
    ]);
    let r = Route::decode(&msg[16..]).unwrap().expect("an IPv6 route");
    assert_eq!(r.dst, "2001:db8:5::/64".parse().unwrap());
    assert_eq!(r.table, 1000);
    assert_eq!(r.metric, Some(1024));
    assert_eq!(r.gateway, Some("2001:db8::2".parse().unwrap()));
    assert_eq!(r.oif, Some(3));
    assert!(matches!(&r.encap, Some(Encap::Bpf(b)) if b.xmit.as_ref().unwrap().name == NAME));
    let kinds: Vec<u16> = r.extra.iter().map(|a| a.kind).collect();
    assert_eq!(kinds, vec![12, 20], "RTA_CACHEINFO and RTA_PREF kept");
    assert_eq!(r.extra[1].value, vec![0]);
}

#[test]
fn decoded_route_re_encodes_with_a_program_fd() {
    // A dumped route plus an fd is a request again: what `replace` on a listed route does.
    let msg = unhex(&[
        "64000000180022009073026b495f000002100000fe03fd010000000008000f00",
        "fe000000080001000a010000080004000300000028001600240003001f000200",
        "6c77745f636f756e742e6270662e6f3a5b6c77745f786d69745d000006001500",
        "06000000",
    ]);
    let mut r = Route::decode(&msg[16..]).unwrap().unwrap();
    assert!(r.to_request(BatchOp::Add, 1).is_err(), "no fd: refused");
    if let Some(Encap::Bpf(b)) = &mut r.encap {
        b.xmit.as_mut().unwrap().fd = Some(8);
    }
    let bytes = r.to_request(BatchOp::Replace, 1).unwrap();
    let body = &bytes[16..];
    let again = Route::decode(body).unwrap().unwrap();
    assert_eq!(again.dst, r.dst);
    assert_eq!(again.encap.as_ref().map(|_| LWTUNNEL_ENCAP_BPF), Some(6));
    // NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE
    assert_eq!(u16::from_ne_bytes([bytes[6], bytes[7]]), 0x0505);
}
