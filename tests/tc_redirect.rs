//! TunnelRedirect: the redirect programs' lookup under BPF_PROG_TEST_RUN, then the seed scenario
//! (samples/bpf tc_l2_redirect) in namespaces with a VXLAN external device: ping and TCP both
//! ways, VNI and outer addresses on the underlay, rules changed at run time, bpftool's view of
//! the pinned maps, refused targets, and the lwt_xmit variant through a route.
//!
//! ```text
//!  ns A (client)            ns R (router)                               ns B (server)
//!  a0 10.77.0.1 ──veth── r0 10.77.0.2  [tc ingress: redirect_tc]
//!                                 │ 10.200.0.0/16 → vx0, VNI 42, remote 192.168.77.2
//!                           vx0 (vxlan external) r1 192.168.77.1 ──veth── b0 192.168.77.2
//!                                                                        vxb (vxlan id 42)
//!                                                                        10.200.0.7, 10.201.0.7
//! ```

mod common;

use common::packets;

use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use lwtun::device::Device;
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::program::Hook;
use lwtun::route::LwtRoute;
use lwtun::tc::{TcAttach, TcDirection};
use lwtun::tunnel_redirect::{RedirectRule, TunnelKey, TunnelKeyFlags, TunnelRedirect};
use lwtun::ErrorKind;

const VX0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xa0, 0x01];
const VXB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xb0, 0x01];
const VX0_MAC_S: &str = "02:00:00:00:a0:01";
const VXB_MAC_S: &str = "02:00:00:00:b0:01";

/// Says why part of a test did not run, past libtest's output capture.
fn skip(what: &str, why: &str) {
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("SKIPPED {what}: {why}\n").as_bytes(),
    );
}

fn ipaddr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// BPF_PROG_TEST_RUN
// ---------------------------------------------------------------------------------------------

/// Runs `prog` once on `data`; returns the verdict and the packet as the program left it.
fn test_run(prog: BorrowedFd<'_>, data: &[u8]) -> (i32, Vec<u8>) {
    let mut out = vec![0u8; data.len() + 256];
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
        data_in: data.as_ptr().cast(),
        data_size_in: data.len() as u32,
        data_out: out.as_mut_ptr().cast(),
        data_size_out: out.len() as u32,
        repeat: 1,
        ..Default::default()
    };
    // SAFETY: data_in/data_out point at buffers of the sizes given; the fd is an open program.
    let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN failed: {}",
        std::io::Error::from_raw_os_error(-rc)
    );
    out.truncate(opts.data_size_out as usize);
    (opts.retval as i32, out)
}

/// The frames the redirect program is tried on: UDP 12345 -> 12345 from 10.77.0.1 / fd77::1 to
/// `dst`, from MAC 02:00:00:00:00:aa to ee:ee:ee:ee:ee:ee.
fn ipv4_frame(dst: [u8; 4]) -> Vec<u8> {
    let udp = packets::udp(12345, 12345, &[]);
    let ip = packets::ipv4([10, 77, 0, 1].into(), dst.into(), 17, 64, 0, &udp);
    packets::eth(MAC_EE, MAC_AA, 0x0800, &ip)
}

fn ipv6_frame(dst: [u8; 16]) -> Vec<u8> {
    let udp = packets::udp(12345, 12345, &[]);
    let ip = packets::ipv6("fd77::1".parse().unwrap(), dst.into(), 17, 64, &udp);
    packets::eth(MAC_EE, MAC_AA, 0x86dd, &ip)
}

const MAC_EE: [u8; 6] = [0xee; 6];
const MAC_AA: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];

/// A namespace with one collect_md VXLAN device (`vx0`) to point rules at.
fn vxlan_ns() -> (NetNs, Device) {
    let ns = common::netns("rdt");
    common::ip(
        &ns,
        &[
            "link", "add", "vx0", "address", VX0_MAC_S, "type", "vxlan", "external", "dstport",
            "4789",
        ],
    );
    let vx0 = common::device(&ns, "vx0");
    (ns, vx0)
}

#[test]
fn test_run_tc_lookup_redirects_rewrites_macs_and_counts() {
    require!();
    let (ns, vx0) = vxlan_ns();
    let mut nl = ns.run(Netlink::open).unwrap();
    let mut redirect = TunnelRedirect::load().unwrap();
    let wide: ipnetwork::IpNetwork = "10.200.0.0/16".parse().unwrap();
    let narrow: ipnetwork::IpNetwork = "10.200.9.0/24".parse().unwrap();
    let v6: ipnetwork::IpNetwork = "fd77:200::/64".parse().unwrap();
    let key = TunnelKey::new(ipaddr("192.168.77.2"), 42);
    redirect
        .set_rule(
            &mut nl,
            RedirectRule::new(wide, &vx0, key).inner_dst_mac(VXB_MAC),
        )
        .unwrap();
    redirect
        .set_rule(
            &mut nl,
            RedirectRule::new(narrow, &vx0, TunnelKey::new(ipaddr("192.168.77.3"), 43))
                .inner_dst_mac([2, 0, 0, 0, 0xc0, 1])
                .to_ingress(),
        )
        .unwrap();
    redirect
        .set_rule(
            &mut nl,
            RedirectRule::new(v6, &vx0, key).inner_dst_mac(VXB_MAC),
        )
        .unwrap();

    // A hit: TC_ACT_REDIRECT, MACs rewritten (destination from the rule, source = vx0's).
    let (rc, out) = test_run(redirect.tc_program(), &ipv4_frame([10, 200, 0, 7]));
    assert_eq!(rc, 7, "TC_ACT_REDIRECT");
    assert_eq!(&out[0..6], &VXB_MAC);
    assert_eq!(&out[6..12], &VX0_MAC);
    assert_eq!(
        &out[12..],
        &ipv4_frame([10, 200, 0, 7])[12..],
        "the IP packet is untouched"
    );
    // The longest prefix wins.
    let (rc, out) = test_run(redirect.tc_program(), &ipv4_frame([10, 200, 9, 1]));
    assert_eq!(rc, 7);
    assert_eq!(&out[0..6], &[2, 0, 0, 0, 0xc0, 1]);
    // IPv6.
    let mut d6 = [0u8; 16];
    d6[..2].copy_from_slice(&[0xfd, 0x77]);
    d6[2..4].copy_from_slice(&[0x02, 0x00]);
    d6[15] = 7;
    let (rc, _) = test_run(redirect.tc_program(), &ipv6_frame(d6));
    assert_eq!(rc, 7);
    // A miss and a non-IP frame are handed on (TC_ACT_UNSPEC) untouched.
    let miss = ipv4_frame([10, 99, 0, 1]);
    let (rc, out) = test_run(redirect.tc_program(), &miss);
    assert_eq!(rc, -1);
    assert_eq!(out, miss);
    let mut arp = ipv4_frame([10, 200, 0, 7]);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let (rc, _) = test_run(redirect.tc_program(), &arp);
    assert_eq!(rc, -1);

    let s = redirect.rule_stats(wide).unwrap();
    assert_eq!((s.packets, s.errors), (1, 0));
    assert_eq!(s.bytes, ipv4_frame([0; 4]).len() as u64);
    assert_eq!(redirect.rule_stats(narrow).unwrap().packets, 1);
    assert_eq!(redirect.rule_stats(v6).unwrap().packets, 1);
    let ev = redirect.events().unwrap();
    assert_eq!((ev.missed.packets, ev.not_ip.packets), (1, 1));

    // Removing a rule sends its packets back to the stack; the wider rule takes over.
    redirect.remove_rule(narrow).unwrap();
    let (_, out) = test_run(redirect.tc_program(), &ipv4_frame([10, 200, 9, 1]));
    assert_eq!(&out[0..6], &VXB_MAC);
    assert_eq!(
        redirect.remove_rule(narrow).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn test_run_lwt_xmit_pushes_an_ethernet_header_for_vxlan() {
    require!();
    // This program never calls bpf_lwt_push_encap, so BPF_PROG_TEST_RUN is safe for it.
    let (ns, vx0) = vxlan_ns();
    let mut nl = ns.run(Netlink::open).unwrap();
    let mut redirect = TunnelRedirect::load().unwrap();
    let prefix = "10.201.0.0/24".parse().unwrap();
    redirect
        .set_rule(
            &mut nl,
            RedirectRule::new(prefix, &vx0, TunnelKey::new(ipaddr("192.168.77.2"), 42))
                .inner_dst_mac(VXB_MAC),
        )
        .unwrap();
    let frame = ipv4_frame([10, 201, 0, 7]);
    let (rc, out) = test_run(redirect.lwt_program().as_fd_for_test(), &frame);
    assert_eq!(rc, 7, "BPF_REDIRECT");
    // test_run prepends 14 zero bytes for an L3 program; after them, the pushed header.
    let pushed = &out[14..];
    assert_eq!(&pushed[0..6], &VXB_MAC);
    assert_eq!(&pushed[6..12], &VX0_MAC);
    assert_eq!(&pushed[12..14], &[0x08, 0x00]);
    assert_eq!(&pushed[14..], &frame[14..]);
    let (rc, _) = test_run(
        redirect.lwt_program().as_fd_for_test(),
        &ipv4_frame([10, 9, 9, 9]),
    );
    assert_eq!(rc, 0, "BPF_OK for a miss");
    assert_eq!(redirect.rule_stats(prefix).unwrap().packets, 1);
}

/// `LwtProgram` is `AsFd`; this names the borrow for the helper above.
trait AsFdForTest {
    fn as_fd_for_test(&self) -> BorrowedFd<'_>;
}

impl<T: std::os::fd::AsFd> AsFdForTest for T {
    fn as_fd_for_test(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
}

// ---------------------------------------------------------------------------------------------
// The seed scenario
// ---------------------------------------------------------------------------------------------

struct Seed {
    a: NetNs,
    r: NetNs,
    b: NetNs,
    r0: Device,
    vx0: Device,
}

fn seed() -> Seed {
    let a = common::netns("rda");
    let r = common::netns("rdr");
    let b = common::netns("rdb");
    let ip = common::ip;
    ip(
        &a,
        &[
            "link",
            "add",
            "a0",
            "mtu",
            "1450",
            "type",
            "veth",
            "peer",
            "name",
            "r0",
            "mtu",
            "1450",
            "netns",
            r.name(),
        ],
    );
    ip(&a, &["addr", "add", "10.77.0.1/24", "dev", "a0"]);
    ip(&a, &["addr", "add", "fd77::1/64", "dev", "a0", "nodad"]);
    ip(&a, &["link", "set", "a0", "up"]);
    ip(&a, &["route", "add", "10.200.0.0/16", "via", "10.77.0.2"]);
    ip(&a, &["route", "add", "10.201.0.0/16", "via", "10.77.0.2"]);
    ip(&a, &["route", "add", "fd77:200::/64", "via", "fd77::2"]);

    ip(&r, &["addr", "add", "10.77.0.2/24", "dev", "r0"]);
    ip(&r, &["addr", "add", "fd77::2/64", "dev", "r0", "nodad"]);
    ip(&r, &["link", "set", "r0", "up"]);
    ip(
        &r,
        &[
            "link",
            "add",
            "r1",
            "type",
            "veth",
            "peer",
            "name",
            "b0",
            "netns",
            b.name(),
        ],
    );
    ip(&r, &["addr", "add", "192.168.77.1/24", "dev", "r1"]);
    ip(&r, &["link", "set", "r1", "up"]);
    ip(
        &r,
        &[
            "link", "add", "vx0", "address", VX0_MAC_S, "type", "vxlan", "external", "dstport",
            "4789",
        ],
    );
    ip(&r, &["link", "set", "vx0", "up"]);
    r.set_sysctl("net.ipv4.ip_forward", "1").unwrap();
    r.set_sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();

    ip(&b, &["addr", "add", "192.168.77.2/24", "dev", "b0"]);
    ip(&b, &["link", "set", "b0", "up"]);
    ip(
        &b,
        &[
            "link",
            "add",
            "vxb",
            "address",
            VXB_MAC_S,
            "type",
            "vxlan",
            "id",
            "42",
            "remote",
            "192.168.77.1",
            "local",
            "192.168.77.2",
            "dstport",
            "4789",
        ],
    );
    ip(&b, &["addr", "add", "10.200.0.7/24", "dev", "vxb"]);
    ip(&b, &["addr", "add", "10.201.0.7/24", "dev", "vxb"]);
    ip(
        &b,
        &["addr", "add", "fd77:200::7/64", "dev", "vxb", "nodad"],
    );
    ip(&b, &["link", "set", "vxb", "up"]);
    ip(
        &b,
        &[
            "neigh",
            "add",
            "10.200.0.254",
            "lladdr",
            VX0_MAC_S,
            "dev",
            "vxb",
            "nud",
            "permanent",
        ],
    );
    ip(&b, &["route", "add", "10.77.0.0/24", "via", "10.200.0.254"]);
    ip(
        &b,
        &[
            "neigh",
            "add",
            "fd77:200::fe",
            "lladdr",
            VX0_MAC_S,
            "dev",
            "vxb",
            "nud",
            "permanent",
        ],
    );
    ip(&b, &["route", "add", "fd77::/64", "via", "fd77:200::fe"]);

    let (r0, vx0) = (common::device(&r, "r0"), common::device(&r, "vx0"));
    Seed { a, r, b, r0, vx0 }
}

fn vxlan_rule(seed: &Seed, prefix: &str, vni: u32) -> RedirectRule {
    RedirectRule::new(
        prefix.parse().unwrap(),
        &seed.vx0,
        TunnelKey::new(ipaddr("192.168.77.2"), vni).ttl(33),
    )
    .inner_dst_mac(VXB_MAC)
}

#[test]
fn seed_scenario_ping_tcp_both_ways_through_vxlan() {
    require!();
    let s = seed();
    let pins = common::PinDir::new("seed");
    let mut nl = s.r.run(Netlink::open).unwrap();
    let mut redirect = TunnelRedirect::builder().pin(&pins.0).load().unwrap();
    redirect
        .set_rule(&mut nl, vxlan_rule(&s, "10.200.0.0/16", 42))
        .unwrap();
    redirect
        .set_rule(&mut nl, vxlan_rule(&s, "fd77:200::/64", 42))
        .unwrap();

    // Before the program is attached, the router has no route to the virtual IP.
    assert_eq!(common::ping(&s.a, ipaddr("10.200.0.7"), 1).received, 0);

    let r0 = s.r0.clone();
    let _tc =
        s.r.run(|| TcAttach::new(&r0, TcDirection::Ingress).attach(redirect.tc_program()))
            .unwrap();

    // The underlay shows VXLAN with VNI 42 between the outer addresses, with the rule's TTL.
    let (lines, p) = common::tcpdump(
        &s.b,
        "b0",
        "udp port 4789",
        6,
        Duration::from_secs(3),
        || common::ping(&s.a, ipaddr("10.200.0.7"), 3),
    );
    assert_eq!(p.received, 3, "{}", p.output);
    let outbound: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("192.168.77.1.") && l.contains("> 192.168.77.2.4789"))
        .collect();
    assert!(
        !outbound.is_empty(),
        "no encapsulated packets toward B: {lines:?}"
    );
    assert!(outbound.iter().all(|l| l.contains("vni 42")), "{lines:?}");
    let verbose = common::Capture::start_with(
        &s.b,
        "b0",
        "udp port 4789 and src host 192.168.77.1",
        1,
        &["-v"],
    );
    common::ping(&s.a, ipaddr("10.200.0.7"), 1);
    let v = verbose.finish(Duration::from_secs(3));
    assert!(
        v.iter().any(|l| l.contains("ttl 33")),
        "outer TTL from the tunnel key: {v:?}"
    );

    // IPv6 inside the IPv4 underlay.
    let p = common::ping(&s.a, ipaddr("fd77:200::7"), 3);
    assert_eq!(p.received, 3, "{}", p.output);

    // TCP both ways: A → the virtual IP, and B → A (whose answers take the redirect).
    let t = common::tcp_stream(&s.b, &s.a, ipaddr("10.200.0.7"), 4_000_000);
    assert!(t.complete(), "A→B: {t:?}");
    let t = common::tcp_stream(&s.a, &s.b, ipaddr("10.77.0.1"), 4_000_000);
    assert!(t.complete(), "B→A: {t:?}");
    let t = common::tcp_stream(&s.b, &s.a, ipaddr("fd77:200::7"), 1_000_000);
    assert!(t.complete(), "A→B over IPv6: {t:?}");

    let st = redirect
        .rule_stats("10.200.0.0/16".parse().unwrap())
        .unwrap();
    // A→B's 4 MB plus B→A's ACKs. veth hands GSO packets across unsegmented, so about a
    // hundred skbs carry the data.
    assert!(st.packets > 100 && st.bytes > 4_000_000, "{st:?}");
    assert_eq!(st.errors, 0);
    assert!(
        redirect
            .rule_stats("fd77:200::/64".parse().unwrap())
            .unwrap()
            .bytes
            > 1_000_000
    );
}

#[test]
fn rules_change_at_run_time() {
    require!();
    let s = seed();
    let mut nl = s.r.run(Netlink::open).unwrap();
    let mut redirect = TunnelRedirect::load().unwrap();
    let prefix: ipnetwork::IpNetwork = "10.200.0.0/16".parse().unwrap();
    redirect
        .set_rule(&mut nl, vxlan_rule(&s, "10.200.0.0/16", 42))
        .unwrap();
    let r0 = s.r0.clone();
    let _tc =
        s.r.run(|| TcAttach::new(&r0, TcDirection::Ingress).attach(redirect.tc_program()))
            .unwrap();
    assert_eq!(common::ping(&s.a, ipaddr("10.200.0.7"), 2).received, 2);
    let before = redirect.rule_stats(prefix).unwrap();

    // VNI 43: B has no device for it, so nothing comes back; the underlay shows the new VNI.
    redirect
        .set_rule(&mut nl, vxlan_rule(&s, "10.200.0.0/16", 43))
        .unwrap();
    // Up to 8 packets within 3 s, not the first 2: the underlay also carries the hosts' own
    // IPv6 chatter (MLD reports in VNI 42, seen on 6.1 filling a 2-packet capture before
    // the pings).
    let (lines, p) = common::tcpdump(
        &s.b,
        "b0",
        "udp port 4789",
        8,
        Duration::from_secs(3),
        || common::ping(&s.a, ipaddr("10.200.0.7"), 2),
    );
    assert_eq!(p.received, 0, "{}", p.output);
    assert!(lines.iter().any(|l| l.contains("vni 43")), "{lines:?}");
    // The counters carried over the change.
    assert!(redirect.rule_stats(prefix).unwrap().packets >= before.packets + 2);

    // Back to 42: traffic flows again.
    redirect
        .set_rule(&mut nl, vxlan_rule(&s, "10.200.0.0/16", 42))
        .unwrap();
    assert_eq!(common::ping(&s.a, ipaddr("10.200.0.7"), 2).received, 2);

    // Without the rule the router's stack sees the packets: it has no route, nothing arrives.
    redirect.remove_rule(prefix).unwrap();
    assert_eq!(common::ping(&s.a, ipaddr("10.200.0.7"), 2).received, 0);
    assert!(redirect.events().unwrap().missed.packets >= 2);
}

#[test]
fn pinned_maps_read_by_bpftool_and_adopted() {
    require!();
    let s = seed();
    let pins = common::PinDir::new("bpftool");
    let mut nl = s.r.run(Netlink::open).unwrap();
    let mut redirect = TunnelRedirect::builder().pin(&pins.0).load().unwrap();
    redirect
        .set_rule(&mut nl, vxlan_rule(&s, "10.200.0.0/16", 42))
        .unwrap();

    let path = pins.0.join("rules_v4");
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // BTF gives bpftool the field names of struct lwtun_redirect_rule and its key.
    for needle in [
        "\"formatted\"",
        "\"prefixlen\":16",
        "\"tunnel_id\":42",
        "\"ttl\":33",
        "\"ifindex\":",
    ] {
        assert!(
            text.contains(needle),
            "{needle} missing in bpftool's dump: {text}"
        );
    }
    assert!(
        text.contains(&format!("\"ifindex\":{}", s.vx0.index())),
        "{text}"
    );
    for name in [
        "rules_v6",
        "rule_stats",
        "events",
        "redirect_tc",
        "redirect_lwt_xmit",
    ] {
        assert!(pins.0.join(name).exists(), "{name} not pinned");
    }

    // A second family at the same folder adopts the rules (and keeps them working).
    redirect.keep_pinned();
    drop(redirect);
    // The adopted maps keep their size, whatever capacity the adopter asked for.
    let adopted = TunnelRedirect::builder()
        .capacity(16)
        .pin(&pins.0)
        .load()
        .unwrap();
    assert_eq!(adopted.capacity(), lwtun::tunnel_redirect::DEFAULT_CAPACITY);
    assert_eq!(
        adopted.rules(),
        vec![vxlan_rule(&s, "10.200.0.0/16", 42).inner_src_mac(VX0_MAC)]
    );
    let r0 = s.r0.clone();
    let _tc =
        s.r.run(|| TcAttach::new(&r0, TcDirection::Ingress).attach(adopted.tc_program()))
            .unwrap();
    assert_eq!(common::ping(&s.a, ipaddr("10.200.0.7"), 2).received, 2);
    drop(_tc);
    drop(adopted);
    assert!(!pins.0.join("rules_v4").exists(), "pins removed on drop");
}

#[test]
fn refuses_targets_that_are_not_collect_md_tunnels() {
    require!();
    let s = seed();
    let mut nl = s.r.run(Netlink::open).unwrap();
    let mut redirect = TunnelRedirect::load().unwrap();
    let key = TunnelKey::new(ipaddr("192.168.77.2"), 42);
    let prefix = "10.200.0.0/16".parse().unwrap();
    // A veth.
    let e = redirect
        .set_rule(
            &mut nl,
            RedirectRule::new(prefix, &s.r0, key).inner_dst_mac(VXB_MAC),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("not a tunnel device"), "{e}");
    // A VXLAN device without `external`.
    common::ip(
        &s.r,
        &[
            "link",
            "add",
            "vxplain",
            "type",
            "vxlan",
            "id",
            "7",
            "remote",
            "192.168.77.2",
            "dstport",
            "4790",
        ],
    );
    let plain = common::device(&s.r, "vxplain");
    let e = redirect
        .set_rule(
            &mut nl,
            RedirectRule::new(prefix, &plain, key).inner_dst_mac(VXB_MAC),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("without collect_md"), "{e}");
    // An Ethernet-carrying tunnel without an inner MAC.
    let e = redirect
        .set_rule(&mut nl, RedirectRule::new(prefix, &s.vx0, key))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    // A device deleted after it was looked up.
    common::ip(
        &s.r,
        &[
            "link", "add", "gone0", "type", "veth", "peer", "name", "gone1",
        ],
    );
    let gone = common::device(&s.r, "gone0");
    common::ip(&s.r, &["link", "del", "gone0"]);
    let e = redirect
        .set_rule(
            &mut nl,
            RedirectRule::new(prefix, &gone, key).inner_dst_mac(VXB_MAC),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // A device of another namespace than the netlink socket's.
    let (_other, elsewhere) = vxlan_ns();
    let e = redirect
        .set_rule(
            &mut nl,
            RedirectRule::new(prefix, &elsewhere, key).inner_dst_mac(VXB_MAC),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("Netlink::open_in"), "{e}");
    assert!(redirect.rules().is_empty(), "no refused rule was kept");
}

#[test]
fn gre_and_ipip_external_targets() {
    require!();
    let s = seed();
    let mut nl = s.r.run(Netlink::open).unwrap();
    let created = s.r.run(|| {
        let mut nl = Netlink::open()?;
        Ok((nl.add_gre_external("gre01"), nl.add_ipip_external("ipip01")))
    });
    let (gre, ipip) = created.unwrap();
    let mut redirect = TunnelRedirect::load().unwrap();
    let r0 = s.r0.clone();
    let _tc =
        s.r.run(|| TcAttach::new(&r0, TcDirection::Ingress).attach(redirect.tc_program()))
            .unwrap();
    // (kind, creation result, device in R, far device in B with its creation arguments, VIP net)
    let cases = [
        (
            "gre",
            gre,
            "gre01",
            "greb",
            "type gre remote 192.168.77.1 local 192.168.77.2 key 42",
            "10.204",
        ),
        (
            "ipip",
            ipip,
            "ipip01",
            "ipipb",
            "type ipip remote 192.168.77.1 local 192.168.77.2",
            "10.205",
        ),
    ];
    for (kind, result, name, far, far_args, net) in cases {
        match result {
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                skip(&format!("{kind} external target"), &e.to_string());
            }
            Err(e) => panic!("create {kind} external: {e}"),
            Ok(()) => {
                common::ip(&s.r, &["link", "set", name, "up"]);
                let idx = common::device(&s.r, name);
                // L3 tunnels need no inner MAC; an IPv6 remote does not suit them. B's plain
                // device expects no GRE checksum, which the kernel adds unless told not to.
                let rule = RedirectRule::new(
                    format!("{net}.0.0/16").parse().unwrap(),
                    &idx,
                    TunnelKey::new(ipaddr("192.168.77.2"), 42).flags(TunnelKeyFlags::ZERO_CSUM_TX),
                );
                redirect.set_rule(&mut nl, rule).unwrap();
                let v6 = RedirectRule {
                    key: TunnelKey::new(ipaddr("fd78::2"), 42),
                    ..rule
                };
                assert_eq!(
                    redirect.set_rule(&mut nl, v6).unwrap_err().kind(),
                    ErrorKind::InvalidInput
                );
                // Traffic: B decapsulates with a plain device; answers return over VXLAN.
                let mut args = vec!["link", "add", far];
                args.extend(far_args.split_whitespace());
                common::ip(&s.b, &args);
                common::ip(&s.b, &["addr", "add", &format!("{net}.0.7/24"), "dev", far]);
                common::ip(&s.b, &["link", "set", far, "up"]);
                common::ip(
                    &s.a,
                    &["route", "add", &format!("{net}.0.0/16"), "via", "10.77.0.2"],
                );
                let p = common::ping(&s.a, ipaddr(&format!("{net}.0.7")), 3);
                assert_eq!(p.received, 3, "{kind}: {}", p.output);
                assert!(redirect.rule_stats(rule.prefix).unwrap().packets >= 3);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The lwt_xmit variant
// ---------------------------------------------------------------------------------------------

#[test]
fn lwt_xmit_route_redirects_into_vxlan_with_per_destination_keys() {
    require!();
    let s = seed();
    let mut nl = s.r.run(Netlink::open).unwrap();
    let mut redirect = TunnelRedirect::load().unwrap();
    // Two destinations behind one route, with different keys: .7 reaches B's VNI 42, .8 is
    // sent with VNI 44 (B has no device for it).
    let host7: ipnetwork::IpNetwork = "10.201.0.7/32".parse().unwrap();
    let host8: ipnetwork::IpNetwork = "10.201.0.8/32".parse().unwrap();
    redirect
        .set_rule(&mut nl, vxlan_rule(&s, "10.201.0.7/32", 42))
        .unwrap();
    redirect
        .set_rule(&mut nl, vxlan_rule(&s, "10.201.0.8/32", 44))
        .unwrap();
    let _route = LwtRoute::new("10.201.0.0/24".parse().unwrap())
        .device(&s.vx0)
        .program(Hook::Xmit, redirect.lwt_program())
        .install(&mut nl)
        .unwrap();
    let shown = common::ip(&s.r, &["route", "show", "10.201.0.0/24"]);
    assert!(
        shown.contains("encap bpf xmit") && shown.contains("dev vx0"),
        "{shown}"
    );

    let outbound = "udp port 4789 and src host 192.168.77.1";
    let (lines, p) = common::tcpdump(&s.b, "b0", outbound, 3, Duration::from_secs(3), || {
        let p = common::ping(&s.a, ipaddr("10.201.0.7"), 2);
        common::ping(&s.a, ipaddr("10.201.0.8"), 1);
        p
    });
    assert_eq!(p.received, 2, "{}", p.output);
    assert!(lines.iter().any(|l| l.contains("vni 42")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("vni 44")), "{lines:?}");
    let t = common::tcp_stream(&s.b, &s.a, ipaddr("10.201.0.7"), 4_000_000);
    assert!(t.complete(), "{t:?}");
    assert!(redirect.rule_stats(host7).unwrap().bytes > 4_000_000);
    assert_eq!(redirect.rule_stats(host8).unwrap().packets, 1);

    // IPv6 inside: an IPv6 route whose program pushes an Ethernet header with EtherType 86dd.
    common::ip(
        &s.b,
        &["addr", "add", "fd77:201::7/64", "dev", "vxb", "nodad"],
    );
    common::ip(&s.a, &["route", "add", "fd77:201::/64", "via", "fd77::2"]);
    redirect
        .set_rule(&mut nl, vxlan_rule(&s, "fd77:201::/64", 42))
        .unwrap();
    let _route6 = LwtRoute::new("fd77:201::/64".parse().unwrap())
        .device(&s.vx0)
        .program(Hook::Xmit, redirect.lwt_program())
        .install(&mut nl)
        .unwrap();
    let p = common::ping(&s.a, ipaddr("fd77:201::7"), 3);
    assert_eq!(p.received, 3, "{}", p.output);
    let t = common::tcp_stream(&s.b, &s.a, ipaddr("fd77:201::7"), 1_000_000);
    assert!(t.complete(), "{t:?}");
}

// ---------------------------------------------------------------------------------------------
// Other directions and families
// ---------------------------------------------------------------------------------------------

#[test]
fn redirect_to_the_tunnel_devices_ingress() {
    require!();
    // Packets for 10.210.0.1 (a router address) are handed to vx0's ingress with a tunnel key,
    // as if vx0 had decapsulated them: a tc counter on vx0 ingress sees them, the router answers.
    let s = seed();
    common::ip(&s.r, &["addr", "add", "10.210.0.1/32", "dev", "lo"]);
    common::ip(&s.a, &["route", "add", "10.210.0.0/16", "via", "10.77.0.2"]);
    let mut nl = s.r.run(Netlink::open).unwrap();
    let mut redirect = TunnelRedirect::load().unwrap();
    let rule = RedirectRule::new(
        "10.210.0.1/32".parse().unwrap(),
        &s.vx0,
        TunnelKey::new(ipaddr("192.168.77.2"), 42),
    )
    .inner_dst_mac(VX0_MAC)
    .to_ingress();
    redirect.set_rule(&mut nl, rule).unwrap();
    let counter = lwtun::tc::TcCounter::load().unwrap();
    let (r0, vx0) = (s.r0.clone(), s.vx0.clone());
    let (_tc, _count) =
        s.r.run(|| {
            let a = TcAttach::new(&r0, TcDirection::Ingress).attach(redirect.tc_program())?;
            let b = TcAttach::new(&vx0, TcDirection::Ingress).attach(counter.program())?;
            Ok((a, b))
        })
        .unwrap();
    let p = common::ping(&s.a, ipaddr("10.210.0.1"), 3);
    assert_eq!(p.received, 3, "{}", p.output);
    assert!(
        counter.counter().unwrap().packets >= 3,
        "vx0 ingress saw nothing"
    );
    assert_eq!(redirect.rule_stats(rule.prefix).unwrap().packets, 3);
}

#[test]
fn ipv6_underlay_remote() {
    require!();
    let s = seed();
    // A redirect skips the stack's MTU handling and an IPv6 outer header is never fragmented on
    // the way: inner packets must leave room for 70 bytes of VXLAN-over-IPv6 (1430 + 70 = 1500).
    common::ip(&s.a, &["link", "set", "a0", "mtu", "1430"]);
    common::ip(&s.r, &["addr", "add", "fd78::1/64", "dev", "r1", "nodad"]);
    common::ip(&s.b, &["addr", "add", "fd78::2/64", "dev", "b0", "nodad"]);
    common::ip(
        &s.b,
        &[
            "link",
            "add",
            "vxb6",
            "address",
            "02:00:00:00:b6:01",
            "type",
            "vxlan",
            "id",
            "46",
            "remote",
            "fd78::1",
            "local",
            "fd78::2",
            "dstport",
            "4789",
        ],
    );
    common::ip(&s.b, &["addr", "add", "10.203.0.7/24", "dev", "vxb6"]);
    common::ip(&s.b, &["link", "set", "vxb6", "up"]);
    common::ip(&s.a, &["route", "add", "10.203.0.0/16", "via", "10.77.0.2"]);
    let mut nl = s.r.run(Netlink::open).unwrap();
    let mut redirect = TunnelRedirect::load().unwrap();
    let mut rule = RedirectRule::new(
        "10.203.0.0/16".parse().unwrap(),
        &s.vx0,
        TunnelKey::new(ipaddr("fd78::2"), 46)
            .local(ipaddr("fd78::1"))
            .ttl(20),
    )
    .inner_dst_mac([0x02, 0, 0, 0, 0xb6, 0x01]);
    match redirect.set_rule(&mut nl, rule) {
        Ok(()) => {}
        // Before 6.0 the kernel takes no outer source: refused, saying so, and nothing kept;
        // the route to the remote picks fd78::1 all the same.
        Err(e) if lwtun::probe::Feature::TunnelKeyLocal.check().is_err() => {
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
            assert!(e.to_string().contains("bpf_skb_set_tunnel_key"), "{e}");
            assert!(redirect.rules().is_empty());
            rule.key.local = None;
            redirect.set_rule(&mut nl, rule).unwrap();
        }
        Err(e) => panic!("set the rule: {e}"),
    }
    let r0 = s.r0.clone();
    let _tc =
        s.r.run(|| TcAttach::new(&r0, TcDirection::Ingress).attach(redirect.tc_program()))
            .unwrap();
    // Replies come back over the IPv4 tunnel (B's route to 10.77.0.0/24 is via vxb).
    let (lines, p) = common::tcpdump(
        &s.b,
        "b0",
        // R's packets only: B's own VXLAN device sends its MLD reports meanwhile.
        "ip6 and src fd78::1 and udp port 4789",
        2,
        Duration::from_secs(3),
        || common::ping(&s.a, ipaddr("10.203.0.7"), 2),
    );
    assert_eq!(p.received, 2, "{}", p.output);
    assert!(
        lines.iter().any(|l| l.contains("fd78::1.")
            && l.contains("> fd78::2.4789")
            && l.contains("vni 46")),
        "{lines:?}"
    );
    let t = common::tcp_stream(&s.b, &s.a, ipaddr("10.203.0.7"), 2_000_000);
    assert!(t.complete(), "{t:?}");
}
