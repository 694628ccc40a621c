//! Capture at the tc and XDP hooks (Ethernet link type): a chain attached at ns 1's ingress, pings
//! from ns 0 captured with their verdicts, written to pcap, read by `tcpdump -e -r` with the MAC
//! addresses and ICMP between the right addresses; an Ethernet filter keeps only matches.
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use lwtun::capture::{
    Capture, CaptureFormat, CaptureOptions, CaptureWriter, Filter, LinkType, Packet,
};
use lwtun::chain::{ChainHook, CountingStage, ProgChain};
use lwtun::tc::{TcAttach, TcDirection};
use lwtun::xdp::{XdpAttachment, XdpMode, XdpOptions};

fn collect(capture: &mut Capture, want: usize) -> Vec<Packet> {
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(5);
    while got.len() < want && Instant::now() < until {
        got.extend(capture.poll(Duration::from_millis(100)).unwrap());
    }
    got
}

/// Writes `packets` to a pcap file and returns `tcpdump -n -e -r` of it.
fn through_tcpdump(packets: &[&Packet], tag: &str) -> String {
    let path = std::env::temp_dir().join(format!("lwtun-{tag}-{}.pcap", std::process::id()));
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _rm = Rm(path.clone());
    let mut w = CaptureWriter::new(
        std::fs::File::create(&path).unwrap(),
        CaptureFormat::Pcap,
        LinkType::Ethernet,
        1536,
    )
    .unwrap();
    for p in packets {
        w.write(p).unwrap();
    }
    drop(w.into_inner());
    let out = Command::new("tcpdump")
        .args(["-n", "-e", "-r"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mac_of(net: &common::Line, i: usize, dev: &str) -> String {
    let out = common::ip(net.ns(i), &["-o", "link", "show", "dev", dev]);
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn tc_ingress_capture_shows_ethernet_and_icmp() {
    require!();
    let net = common::two_hosts();
    let mut chain = ProgChain::new(ChainHook::Tc).unwrap();
    let stage = CountingStage::load(&chain).unwrap();
    let id = chain.push(stage.program()).unwrap();
    let dev = net.device(1, "to0");
    let ifindex = dev.index();
    let attachment = net
        .ns(1)
        .run(|| TcAttach::new(&dev, TcDirection::Ingress).attach(chain.entry()))
        .unwrap();
    let mut capture = Capture::attach(&mut chain, CaptureOptions::default()).unwrap();
    assert_eq!(capture.link_type(), LinkType::Ethernet);

    let p = common::ping(net.ns(0), net.v4(1).into(), 3);
    assert_eq!(p.received, 3, "{}", p.output);
    // ARP may cross the hook too; the filter picks the echo requests.
    let packets = collect(&mut capture, 3);
    let icmp = Filter::compile(
        &format!(
            "icmp[icmptype] == icmp-echo and src {} and dst {}",
            net.v4(0),
            net.v4(1)
        ),
        LinkType::Ethernet,
    )
    .unwrap();
    let echo: Vec<&Packet> = packets.iter().filter(|p| icmp.matches(p)).collect();
    assert_eq!(
        echo.len(),
        3,
        "{:#?}",
        packets.iter().map(Packet::summary).collect::<Vec<_>>()
    );
    for p in &echo {
        assert_eq!((p.hook, p.ifindex, p.verdict), (ChainHook::Tc, ifindex, -1));
        assert_eq!(p.protocol, 0x0800);
        assert_eq!(
            &p.data[12..14],
            &[0x08, 0x00],
            "tc packets start at the Ethernet header"
        );
    }
    assert!(stage.stats(id).unwrap().packets >= 3);
    let text = through_tcpdump(&echo, "tc");
    let (src_mac, dst_mac) = (mac_of(&net, 0, "to1"), mac_of(&net, 1, "to0"));
    assert_eq!(text.lines().count(), 3, "{text}");
    for l in text.lines() {
        assert!(l.contains(&format!("{src_mac} > {dst_mac}")), "{l}");
        assert!(
            l.contains(&format!("{} > {}: ICMP echo request", net.v4(0), net.v4(1))),
            "{l}"
        );
    }
    net.ns(1).run(|| attachment.detach()).unwrap();
}

#[test]
fn xdp_capture_records_the_verdict() {
    require!(lwtun::probe::Feature::XdpLoadBytes);
    let net = common::two_hosts();
    let mut chain = ProgChain::new(ChainHook::Xdp).unwrap();
    let dev = net.device(1, "to0");
    let ifindex = dev.index();
    // A chain's entry attaches through the same call as every other XDP program.
    let att = XdpAttachment::attach(
        chain.entry(),
        &dev,
        XdpOptions {
            mode: XdpMode::Native,
            ..Default::default()
        },
    )
    .unwrap();
    let mut capture = Capture::attach(&mut chain, CaptureOptions::default()).unwrap();
    let p = common::ping(net.ns(0), net.v4(1).into(), 2);
    assert_eq!(p.received, 2, "{}", p.output);
    let packets = collect(&mut capture, 2);
    let icmp = Filter::compile("icmp", LinkType::Ethernet).unwrap();
    let echo: Vec<&Packet> = packets.iter().filter(|p| icmp.matches(p)).collect();
    assert_eq!(echo.len(), 2);
    for p in &echo {
        assert_eq!(
            (p.hook, p.ifindex, p.verdict),
            (ChainHook::Xdp, ifindex, 2),
            "XDP_PASS"
        );
        assert!(p.summary().contains(&format!("xdp if{ifindex} XDP_PASS")));
    }
    let text = through_tcpdump(&echo, "xdp");
    assert_eq!(
        text.matches(&format!("{} > {}: ICMP echo request", net.v4(0), net.v4(1)))
            .count(),
        2,
        "{text}"
    );

    // XDP_DROP as the chain's verdict: the pings fail and the capture says why.
    chain.set_verdict(1).unwrap();
    let p = common::ping(net.ns(0), net.v4(1).into(), 2);
    assert_eq!(p.received, 0, "{}", p.output);
    let dropped = collect(&mut capture, 2);
    assert!(dropped
        .iter()
        .filter(|p| icmp.matches(p))
        .all(|p| p.verdict == 1));
    assert!(dropped.iter().filter(|p| icmp.matches(p)).count() >= 2);
    att.detach().unwrap();
}

/// Where the kernel has no `bpf_xdp_load_bytes` (before 5.18), an XDP capture is refused as
/// Unsupported, naming the helper and what to do instead; elsewhere it loads.
#[test]
fn xdp_capture_is_unsupported_without_xdp_load_bytes() {
    require!();
    let chain = ProgChain::new(ChainHook::Xdp).unwrap();
    let loaded = Capture::load(&chain, CaptureOptions::default());
    match lwtun::probe::Feature::XdpLoadBytes.check() {
        Ok(()) => {
            loaded.unwrap();
        }
        Err(_) => {
            let e = loaded.unwrap_err();
            assert_eq!(e.kind(), lwtun::ErrorKind::Unsupported, "{e}");
            assert!(e.to_string().contains("bpf_xdp_load_bytes"), "{e}");
            assert!(
                e.hint().is_some_and(|h| h.contains("ChainHook::Tc")),
                "{e:?}"
            );
        }
    }
}

/// A sched_cls program of the test's own, written as raw instructions (not one of lwtun's): it
/// adds one to a u64 in a one-entry array map for every packet and returns TC_ACT_UNSPEC, as a
/// well-behaved program on a shared hook does.
struct UserCounter {
    map: std::os::fd::OwnedFd,
    prog: std::os::fd::OwnedFd,
}

impl UserCounter {
    fn load() -> UserCounter {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: a plain map creation; the name is a NUL-terminated string.
        let map = unsafe {
            libbpf_sys::bpf_map_create(
                libbpf_sys::BPF_MAP_TYPE_ARRAY,
                c"user_count".as_ptr(),
                4,
                8,
                1,
                std::ptr::null(),
            )
        };
        assert!(map >= 0, "create the counter map: errno {}", -map);
        // SAFETY: map is a new descriptor owned by nobody else.
        let map = unsafe { OwnedFd::from_raw_fd(map) };
        // (code, dst, src, off, imm), x86-64 byte order of struct bpf_insn.
        let insn = |code: u8, dst: u8, src: u8, off: i16, imm: i32| -> u64 {
            u64::from(code)
                | u64::from(dst | src << 4) << 8
                | u64::from(off as u16) << 16
                | u64::from(imm as u32) << 32
        };
        let fd = map.as_raw_fd();
        let prog: [u64; 11] = [
            insn(0x62, 10, 0, -4, 0), // *(u32 *)(r10 - 4) = 0
            insn(0xbf, 2, 10, 0, 0),  // r2 = r10
            insn(0x07, 2, 0, 0, -4),  // r2 += -4
            insn(0x18, 1, 1, 0, fd),  // r1 = map (ld_imm64, BPF_PSEUDO_MAP_FD)
            0,
            insn(0x85, 0, 0, 0, 1),  // call bpf_map_lookup_elem
            insn(0x15, 0, 0, 2, 0),  // if r0 == 0 goto +2
            insn(0xb7, 1, 0, 0, 1),  // r1 = 1
            insn(0xdb, 0, 1, 0, 0),  // lock *(u64 *)(r0 + 0) += r1
            insn(0xb7, 0, 0, 0, -1), // r0 = TC_ACT_UNSPEC
            insn(0x95, 0, 0, 0, 0),  // exit
        ];
        // SAFETY: prog holds 11 instructions laid out as struct bpf_insn; the strings are
        // NUL-terminated.
        let fd = unsafe {
            libbpf_sys::bpf_prog_load(
                libbpf_sys::BPF_PROG_TYPE_SCHED_CLS,
                c"user_count".as_ptr(),
                c"GPL".as_ptr(),
                prog.as_ptr().cast(),
                prog.len() as _,
                std::ptr::null_mut(),
            )
        };
        assert!(fd >= 0, "load the counter program: errno {}", -fd);
        UserCounter {
            map,
            // SAFETY: fd is a new descriptor owned by nobody else.
            prog: unsafe { OwnedFd::from_raw_fd(fd) },
        }
    }

    fn packets(&self) -> u64 {
        use std::os::fd::AsRawFd;
        let (key, mut value) = (0u32, 0u64);
        // SAFETY: key and value are live buffers of the map's key and value sizes.
        let rc = unsafe {
            libbpf_sys::bpf_map_lookup_elem(
                self.map.as_raw_fd(),
                (&key as *const u32).cast(),
                (&mut value as *mut u64).cast(),
            )
        };
        assert_eq!(rc, 0, "read the counter map");
        value
    }
}

/// Programs that share a hook share it: decap, a capture and a user's counter on one device's tc
/// ingress, in that order. Tunnelled TCP (lwtun GRE encap, content-checked) and plain pings cross
/// it; decap counts and strips the tunnel packets, and the capture and the counter after it
/// both still see traffic: the plain pings and the decapsulated (inner) TCP packets. Before decap
/// handed packets on (it returned TC_ACT_OK, "skip the rest"), the capture saw nothing at all.
/// Run over tcx links and over clsact direct-action filters (the fallback before Linux 6.6).
#[test]
fn decap_capture_and_a_users_counter_share_tc_ingress() {
    require!();
    use lwtun::decap::{Decap, DecapPeer};
    use lwtun::netlink::Netlink;
    use lwtun::peer::{Encap, EncapPeer};
    use lwtun::tc::{tcx_supported, TcMode};
    use lwtun::tunnel::Tunnel;
    use std::net::{IpAddr, Ipv4Addr};

    let mut modes = vec![TcMode::Clsact];
    if tcx_supported() {
        modes.insert(0, TcMode::Tcx);
    }
    for mode in modes {
        // ns 0 (lwtun GRE encap) ══tunnel══ ns 1 (to0: decap + capture + counter) ── ns 2 (server)
        let net = common::line(3);
        let (a, r, h) = (net.ns(0), net.ns(1), net.ns(2));
        let overlay = Ipv4Addr::new(10, 98, 0, 1);
        let server: IpAddr = net.v4(2).into();
        common::ip(a, &["addr", "add", &format!("{overlay}/32"), "dev", "lo"]);
        let back = format!("{overlay}/32");
        let via = net.v4_towards(1, 2).to_string();
        common::ip(h, &["route", "add", &back, "via", &via]);
        common::ip(r, &["route", "add", &back, "via", &net.v4(0).to_string()]);

        let dev = net.device(1, "to0");
        let mut d = Decap::load().unwrap();
        d.add_local(net.v4_towards(1, 0).into()).unwrap();
        d.add_peer(DecapPeer::host(net.v4(0).into())).unwrap();
        let mut chain = ProgChain::new(ChainHook::Tc).unwrap();
        let mut capture = Capture::attach(&mut chain, CaptureOptions::default()).unwrap();
        let counter = UserCounter::load();
        // In hook order: decap, capture, counter (clsact: by priority; tcx: appended).
        let attach = |prog: std::os::fd::BorrowedFd<'_>, prio: u16| {
            let how = TcAttach::new(&dev, TcDirection::Ingress).mode(mode);
            let how = if mode == TcMode::Clsact {
                how.priority(prio)
            } else {
                how
            };
            r.run(|| how.attach(prog)).unwrap()
        };
        let _decap = attach(d.program(), 1);
        let _capture = attach(chain.entry(), 2);
        let _counter = attach(std::os::fd::AsFd::as_fd(&counter.prog), 3);

        let mut nl = Netlink::open_in(a).unwrap();
        let mut tunnel = Tunnel::load().unwrap();
        let prefix = format!("{server}/32").parse().unwrap();
        let route = tunnel
            .route(prefix)
            .device(&net.device(0, "to1"))
            .source(overlay.into())
            .headroom(lwtun::tunnel::WORST_CASE_ENCAP);
        tunnel.steer(&mut nl, route).unwrap();
        let gre = Encap::Gre {
            key: None,
            checksum: false,
        };
        let peer = EncapPeer::new(net.v4_towards(1, 0).into(), net.v4(0).into(), gre);
        tunnel.peers_mut().replace(prefix, peer).unwrap();

        let t = common::tcp_stream(h, a, server, 1 << 20);
        assert!(t.complete(), "{mode:?}: {t:?}; {:?}", d.counters().unwrap());
        let p = common::ping(a, net.v4_towards(1, 0).into(), 3);
        assert_eq!(p.received, 3, "{mode:?}: {}", p.output);

        // Decap did its work, and handed on both its own and foreign packets.
        let c = d.counters().unwrap();
        assert!(c.gre.packets > 0, "{mode:?}: {c:?}");
        assert!(c.not_for_us.packets >= 3, "{mode:?}: {c:?}");
        assert_eq!(c.dropped(), 0, "{mode:?}: {c:?}");

        // The capture after it saw the pings and the inner TCP packets (never a GRE packet:
        // it runs after the strip), each with the hook's "next" verdict.
        let mut got = Vec::new();
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            let batch = capture.poll(Duration::from_millis(100)).unwrap();
            if batch.is_empty() && got.len() > 3 {
                break;
            }
            got.extend(batch);
        }
        let matching = |expr: &str| {
            let f = Filter::compile(expr, LinkType::Ethernet).unwrap();
            got.iter().filter(|p| f.matches(p)).collect::<Vec<_>>()
        };
        let pings = matching(&format!(
            "icmp[icmptype] == icmp-echo and dst {}",
            net.v4_towards(1, 0)
        ));
        assert_eq!(pings.len(), 3, "{mode:?}: {} captured", got.len());
        let inner = matching(&format!("tcp and src {overlay} and dst {server}"));
        assert!(
            inner.len() as u64 >= c.gre.packets / 2,
            "{mode:?}: {} inner TCP packets captured, {} decapsulated",
            inner.len(),
            c.gre.packets
        );
        assert!(matching("ip proto 47").is_empty(), "{mode:?}: GRE captured");
        assert!(got.iter().all(|p| p.verdict == -1), "{mode:?}");
        // The capture's pcap holds them, as tcpdump reads it.
        let text = through_tcpdump(&pings, &format!("shared-{mode:?}"));
        assert_eq!(
            text.matches(&format!(
                "{} > {}: ICMP echo request",
                net.v4(0),
                net.v4_towards(1, 0)
            ))
            .count(),
            3,
            "{text}"
        );
        // And the user's counter, last on the hook, counted at least what the capture saw.
        let counted = counter.packets();
        assert!(
            counted >= (pings.len() + inner.len()) as u64,
            "{mode:?}: the user's counter saw {counted}"
        );
        capture.detach(&mut chain).unwrap();
    }
}
