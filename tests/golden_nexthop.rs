//! Golden bytes: lwtun's nexthop requests against iproute2's, and a kernel answer decoded.
//!
//! Captured on Linux 6.18 with iproute2 6.1 inside a throwaway namespace holding a veth `v0`
//! (ifindex 3) with 10.9.0.1/24, by `strace -f -e trace=sendmsg,recvmsg -e write=3 -e read=3
//! -xx ip nexthop ...` (program fd 8, and 11 for a second one). iproute2 zeroed every padding
//! byte here. No privileges needed.

mod common;

use common::{assert_bytes, unhex};
use lwtun::netlink::nexthop::{Nexthop, NexthopOp};
use lwtun::netlink::route::{BpfEncap, Encap, ProgRef};

const SEQ: u32 = 0x6b11_9bd8;

#[test]
fn xmit_nexthop_with_headroom_matches_iproute2() {
    // ip nexthop add id 7 encap bpf xmit obj lwt_count.bpf.o sec lwt_xmit headroom 20 dev v0
    let iproute2 = unhex(&[
        "6800000068000506d89b116b00000000020000000000000008000100",
        "0700000038000880",
        "2c00038008000100080000001f0002006c77745f636f756e742e6270",
        "662e6f3a5b6c77745f786d69745d0000080004001400000006000700",
        "060000000800050003000000",
    ]);
    let mut nh = Nexthop::new(7);
    nh.oif = Some(3);
    nh.encap = Some(Encap::Bpf(BpfEncap {
        xmit: Some(ProgRef::new(8, "lwt_count.bpf.o:[lwt_xmit]")),
        headroom: Some(20),
        ..Default::default()
    }));
    assert_bytes(&nh.to_request(NexthopOp::Add, SEQ).unwrap(), &iproute2);
}

#[test]
fn in_out_nexthop_via_gateway_matches_iproute2() {
    // ip nexthop add id 9 via 10.9.0.2 encap bpf in obj lwt_count.bpf.o sec lwt_in
    //   out obj lwt_count.bpf.o sec lwt_out dev v0
    let iproute2 = unhex(&[
        "9400000068000506d89b116b0000000002000000000000000800010009000000",
        "080006000a0900025c0008802c00018008000100080000001d0002006c77745f",
        "636f756e742e6270662e6f3a5b6c77745f696e5d000000002c00028008000100",
        "0b0000001e0002006c77745f636f756e742e6270662e6f3a5b6c77745f6f7574",
        "5d000000060007000600000008000500",
        "03000000",
    ]);
    let mut nh = Nexthop::new(9);
    nh.oif = Some(3);
    nh.gateway = Some("10.9.0.2".parse().unwrap());
    nh.encap = Some(Encap::Bpf(BpfEncap {
        input: Some(ProgRef::new(8, "lwt_count.bpf.o:[lwt_in]")),
        output: Some(ProgRef::new(11, "lwt_count.bpf.o:[lwt_out]")),
        ..Default::default()
    }));
    assert_bytes(&nh.to_request(NexthopOp::Add, SEQ).unwrap(), &iproute2);
}

#[test]
fn delete_and_get_match_iproute2() {
    // ip nexthop del id 7 (NLM_F_REQUEST | NLM_F_ACK)
    let del = unhex(&[
        "2000000069000500d89b116b00000000",
        "000000000000000008000100",
        "07000000",
    ]);
    assert_bytes(
        &Nexthop::new(7).to_request(NexthopOp::Delete, SEQ).unwrap(),
        &del,
    );
    // ip nexthop show id 9 sends RTM_GETNEXTHOP without NLM_F_ACK; lwtun asks for one.
    let mut get = unhex(&[
        "200000006a000100de9b116b00000000",
        "000000000000000008000100",
        "09000000",
    ]);
    get[6] |= 0x4;
    assert_bytes(
        &Nexthop::new(9)
            .to_request(NexthopOp::Get, 0x6b11_9bde)
            .unwrap(),
        &get,
    );
}

#[test]
fn kernel_answer_for_an_in_out_nexthop_decodes() {
    // The RTM_NEWNEXTHOP answer to `ip nexthop show id 9` (body after the 16-byte header): the
    // kernel reports scope link (253), the program names without fds.
    let msg = unhex(&[
        "8400000068000000de9b116b602b000002fd000000000000080001000900000008000500",
        "03000000080006000a0900024c000800240001001d0002006c77745f636f756e742e6270",
        "662e6f3a5b6c77745f696e5d00000000240002001e0002006c77745f636f756e742e6270",
        "662e6f3a5b6c77745f6f75745d0000000600070006000000",
    ]);
    let nh = Nexthop::decode(&msg[16..])
        .unwrap()
        .expect("an IPv4 nexthop");
    assert_eq!(nh.id, 9);
    assert!(!nh.ipv6);
    assert_eq!(nh.scope, 253);
    assert_eq!(nh.oif, Some(3));
    assert_eq!(nh.gateway, Some("10.9.0.2".parse().unwrap()));
    let b = nh.bpf_encap().expect("encap bpf");
    assert_eq!(b.input.as_ref().unwrap().name, "lwt_count.bpf.o:[lwt_in]");
    assert_eq!(b.output.as_ref().unwrap().name, "lwt_count.bpf.o:[lwt_out]");
    assert!(b.xmit.is_none() && b.input.as_ref().unwrap().fd.is_none());
    assert!(nh.extra.is_empty(), "{:?}", nh.extra);
    assert_eq!(
        nh.to_string(),
        "id 9 encap bpf in lwt_count.bpf.o:[lwt_in] out lwt_count.bpf.o:[lwt_out] via 10.9.0.2 dev#3"
    );
}
