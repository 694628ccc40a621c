//! Golden bytes for SRv6 routes: lwtun's requests for the kernel's seg6 encap and seg6local
//! functions against iproute2's, and kernel dumps of routes iproute2 made, decoded.
//!
//! Captured on Linux 6.18 with iproute2 6.1 in a throwaway namespace holding a veth `v0`
//! (ifindex 3), with `strace -f -e trace=sendmsg -e write=3 -xx ip -6 route add ...` (requests)
//! and `strace -f -e trace=recvmsg -e read=3 -xx ip -6 route show` (dumps). iproute2 leaves
//! uninitialised bytes in some attribute padding; those are zeroed here (marked), since lwtun
//! writes zeros. No privileges needed.

mod common;

use common::{assert_bytes, unhex};
use std::net::Ipv6Addr;

use lwtun::netlink::route::{
    BatchOp, Encap, ProgRef, Route, Seg6Encap, Seg6Local, Seg6Mode, RTPROT_BOOT,
};

const SEQ: u32 = 0x6b11_3a9d;

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn route(dst: &str, encap: Encap) -> Route {
    let mut r = Route::new(dst.parse().unwrap());
    r.oif = Some(3);
    r.encap = Some(encap);
    r
}

#[test]
fn seg6_encap_route_matches_iproute2() {
    // ip -6 route add 2001:db8:9::/64 encap seg6 mode encap segs fc00:1::1,fc00:2::2 dev v0
    // The SRH lists the segments in reverse, segments left = last entry = 1, next header 0.
    let iproute2 = unhex(&[
        "74000000180005068e3a116b000000000a400000fe0300010000000014000100",
        "20010db800090000000000000000000034001680300001000100000000040401",
        "01000000fc000002000000000000000000000002fc0000010000000000000000",
        "0000000106001500050000000800040003000000",
    ]);
    let mut iproute2 = iproute2;
    iproute2[8..12].copy_from_slice(&SEQ.to_ne_bytes());
    let r = route(
        "2001:db8:9::/64",
        Encap::Seg6(Seg6Encap {
            mode: Seg6Mode::Encap,
            segments: vec![a("fc00:1::1"), a("fc00:2::2")],
        }),
    );
    assert_bytes(&r.to_request(BatchOp::Add, SEQ).unwrap(), &iproute2);
}

#[test]
fn seg6_inline_route_matches_iproute2() {
    // ip -6 route add 2001:db8:a::/64 encap seg6 mode inline segs fc00:1::1 dev v0
    // Inline mode keeps entry 0 (`::`) for the original destination, which the kernel fills in.
    let iproute2 = unhex(&[
        "74000000180005069d3a116b000000000a400000fe0300010000000014000100",
        "20010db8000a0000000000000000000034001680300001000000000000040401",
        "0100000000000000000000000000000000000000fc0000010000000000000000",
        "0000000106001500050000000800040003000000",
    ]);
    let r = route(
        "2001:db8:a::/64",
        Encap::Seg6(Seg6Encap {
            mode: Seg6Mode::Inline,
            segments: vec![a("fc00:1::1")],
        }),
    );
    assert_bytes(&r.to_request(BatchOp::Add, SEQ).unwrap(), &iproute2);
}

#[test]
fn seg6local_kernel_functions_match_iproute2() {
    // ip -6 route add fc00:e::1/128 encap seg6local action End dev v0
    let end = unhex(&[
        "4c000000180005069d3a116b000000000a800000fe0300010000000014000100",
        "fc00000e0000000000000000000000010c001680080001000100000006001500",
        "070000000800040003000000",
    ]);
    // ip -6 route add fc00:e::6/128 encap seg6local action End.DT6 table 100 dev v0
    let dt6 = unhex(&[
        "54000000180005069d3a116b000000000a800000fe0300010000000014000100",
        "fc00000e00000000000000000000000614001680080001000700000008000300",
        "6400000006001500070000000800040003000000",
    ]);
    // ip -6 route add fc00:e::2/128 encap seg6local action End.X nh6 fc00:9::9 dev v0
    // Zeroed: 2 padding bytes after RTA_ENCAP_TYPE (iproute2 sent 01 00).
    let endx = unhex(&[
        "60000000180005069d3a116b000000000a800000fe0300010000000014000100",
        "fc00000e00000000000000000000000220001680080001000200000014000500",
        "fc00000900000000000000000000000906001500070000000800040003000000",
    ]);
    let cases = [
        ("fc00:e::1/128", Seg6Local::End, end),
        ("fc00:e::6/128", Seg6Local::EndDt6 { table: 100 }, dt6),
        (
            "fc00:e::2/128",
            Seg6Local::EndX {
                nh6: a("fc00:9::9"),
            },
            endx,
        ),
    ];
    for (dst, action, theirs) in cases {
        let r = route(dst, Encap::Seg6Local(action));
        assert_bytes(&r.to_request(BatchOp::Add, SEQ).unwrap(), &theirs);
    }
}

#[test]
fn end_bpf_route_matches_iproute2() {
    // ip -6 route add fc00:e::b/128 encap seg6local action End.BPF endpoint
    //   obj lwt_count.bpf.o sec lwt_seg6local dev v0   (program fd 8)
    let iproute2 = unhex(&[
        "7c000000180005069d3a116b000000000a800000fe0300010000000014000100",
        "fc00000e00000000000000000000000b3c001680080001000f00000030000880",
        "0800010008000000240002006c77745f636f756e742e6270662e6f3a5b6c7774",
        "5f736567366c6f63616c5d0006001500070000000800040003000000",
    ]);
    let r = route(
        "fc00:e::b/128",
        Encap::Seg6LocalBpf(ProgRef::new(8, "lwt_count.bpf.o:[lwt_seg6local]")),
    );
    // lwtun pads the name's attribute with zeros where iproute2 did too (its 2 bytes after the
    // NUL are the attribute's alignment).
    assert_bytes(&r.to_request(BatchOp::Add, SEQ).unwrap(), &iproute2);
}

/// The RTM_NEWROUTE bodies (after the 16-byte header) `ip -6 route show` received for the
/// routes above.
const DUMP_SEG6_ENCAP: &[&str] = &[
    "b000000018002200a63a116bf73300000a400000fe0300011000000008000f00",
    "fe0000001400010020010db80009000000000000000000000800060000040000",
    "08000400030000003400160030000100010000000004040101000000fc000002",
    "000000000000000000000002fc00000100000000000000000000000106001500",
    "0500000024000c00000000000000000000000000000000000000000000000000",
    "00000000000000000500140000000000",
];
const DUMP_SEG6_INLINE: &[&str] = &[
    "b000000018002200a63a116bf73300000a400000fe0300011000000008000f00",
    "fe0000001400010020010db8000a000000000000000000000800060000040000",
    "0800040003000000340016003000010000000000000404010100000000000000",
    "000000000000000000000000fc00000100000000000000000000000106001500",
    "0500000024000c00000000000000000000000000000000000000000000000000",
    "00000000000000000500140000000000",
];
const DUMP_END_DT6: &[&str] = &[
    "9000000018002200a63a116bf73300000a800000fe0300011000000008000f00",
    "fe00000014000100fc00000e0000000000000000000000060800060000040000",
    "0800040003000000140016000800010007000000080003006400000006001500",
    "0700000024000c00000000000000000000000000000000000000000000000000",
    "00000000000000000500140000000000",
];
const DUMP_END_BPF: &[&str] = &[
    "b800000018002200a63a116bf73300000a800000fe0300011000000008000f00",
    "fe00000014000100fc00000e00000000000000000000000b0800060000040000",
    "08000400030000003c001600080001000f0000003000080008000100fd030000",
    "240002006c77745f636f756e742e6270662e6f3a5b6c77745f736567366c6f63",
    "616c5d00060015000700000024000c0000000000000000000000000000000000",
    "000000000000000000000000000000000500140000000000",
];

fn decode(chunks: &[&str]) -> Route {
    let msg = unhex(chunks);
    Route::decode(&msg[16..]).unwrap().expect("an IPv6 route")
}

#[test]
fn kernel_dumps_of_iproute2_seg6_routes_decode() {
    let r = decode(DUMP_SEG6_ENCAP);
    assert_eq!(r.dst, "2001:db8:9::/64".parse().unwrap());
    assert_eq!(
        (r.protocol, r.oif, r.metric),
        (RTPROT_BOOT, Some(3), Some(1024))
    );
    assert_eq!(
        r.encap,
        Some(Encap::Seg6(Seg6Encap {
            mode: Seg6Mode::Encap,
            segments: vec![a("fc00:1::1"), a("fc00:2::2")],
        }))
    );
    // iproute2 printed: 2001:db8:9::/64  encap seg6 mode encap segs 2 [ fc00:1::1 fc00:2::2 ]
    //   dev v0 metric 1024 linkdown pref medium
    assert_eq!(
        r.to_string(),
        "2001:db8:9::/64 encap seg6 mode encap segs 2 [ fc00:1::1 fc00:2::2 ] dev#3 metric 1024"
    );

    let r = decode(DUMP_SEG6_INLINE);
    assert_eq!(
        r.encap,
        Some(Encap::Seg6(Seg6Encap {
            mode: Seg6Mode::Inline,
            segments: vec![a("fc00:1::1")],
        }))
    );
    // iproute2 printed: ... encap seg6 mode inline segs 2 [ fc00:1::1 :: ] dev v0 ...
    assert!(r
        .to_string()
        .contains("encap seg6 mode inline segs 2 [ fc00:1::1 :: ]"));

    let r = decode(DUMP_END_DT6);
    assert_eq!(
        r.encap,
        Some(Encap::Seg6Local(Seg6Local::EndDt6 { table: 100 }))
    );
    // iproute2 printed: fc00:e::6  encap seg6local action End.DT6 table 100 dev v0 ...
    assert_eq!(
        r.to_string(),
        "fc00:e::6 encap seg6local action End.DT6 table 100 dev#3 metric 1024"
    );
}

#[test]
fn kernel_dump_of_an_iproute2_end_bpf_route_decodes() {
    // The dump names the program (and carries its id, 0x3fd here, which lwtun does not need:
    // the name leads back to lwtun's own programs).
    let r = decode(DUMP_END_BPF);
    assert_eq!(r.dst, "fc00:e::b/128".parse().unwrap());
    assert_eq!(
        r.encap,
        Some(Encap::Seg6LocalBpf(ProgRef {
            name: "lwt_count.bpf.o:[lwt_seg6local]".into(),
            fd: None
        }))
    );
}

#[test]
fn decoded_seg6_routes_re_encode_to_what_was_dumped() {
    // A dumped seg6 route is a request again, byte for byte in its encap.
    for chunks in [DUMP_SEG6_ENCAP, DUMP_SEG6_INLINE, DUMP_END_DT6] {
        let r = decode(chunks);
        let bytes = r.to_request(BatchOp::Replace, 1).unwrap();
        let again = Route::decode(&bytes[16..]).unwrap().unwrap();
        assert_eq!(again.encap, r.encap);
        assert_eq!(again.dst, r.dst);
    }
}

#[test]
fn srhs_lwtun_does_not_model_stay_raw() {
    // The encap route's SRH with a tag set (byte 6 of the SRH): kept whole as Encap::Other.
    let mut msg = unhex(DUMP_SEG6_ENCAP);
    let srh_at = msg
        .windows(4)
        .position(|w| w == [0x00, 0x04, 0x04, 0x01])
        .unwrap();
    msg[srh_at + 6] = 0x12;
    let r = Route::decode(&msg[16..]).unwrap().unwrap();
    assert!(
        matches!(r.encap, Some(Encap::Other { kind: 5, .. })),
        "{:?}",
        r.encap
    );
}

#[test]
fn invalid_seg6_routes_are_refused_before_sending() {
    let e = |mode, segments: Vec<Ipv6Addr>, dst: &str| {
        route(dst, Encap::Seg6(Seg6Encap { mode, segments }))
            .validate()
            .unwrap_err()
            .to_string()
    };
    assert!(e(Seg6Mode::Encap, vec![], "2001:db8::/64").contains("1 to 127 segments"));
    assert!(e(Seg6Mode::Inline, vec![a("fc00::1")], "10.0.0.0/8").contains("mode encap"));
    assert!(e(Seg6Mode::Encap, vec![a("ff02::1")], "2001:db8::/64").contains("unicast"));
    assert!(e(Seg6Mode::Inline, vec![a("fc00::1"); 127], "2001:db8::/64").contains("1 to 126"));
    // An IPv4 route with an IPv6 SRv6 encap is fine (H.Encaps of IPv4).
    let ok = route(
        "10.0.0.0/8",
        Encap::Seg6(Seg6Encap {
            mode: Seg6Mode::Encap,
            segments: vec![a("fc00::1")],
        }),
    );
    assert!(ok.validate().is_ok());
    let v4_local = route("10.0.0.0/8", Encap::Seg6Local(Seg6Local::End));
    assert!(v4_local
        .validate()
        .unwrap_err()
        .to_string()
        .contains("IPv6 only"));
}
