//! Capture at an LWT route's xmit hook: pings through the route land in pcap and pcapng files that
//! `tcpdump -r` reads as ICMP between the right addresses (link type RAW), a tcpdump filter keeps
//! only what matches, the terminal view decodes them, and a detached capture sees nothing while
//! traffic still flows.
mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use lwtun::capture::{
    Capture, CaptureFormat, CaptureOptions, CaptureWriter, Filter, LinkType, Packet,
};
use lwtun::chain::{ChainHook, CountingStage, ProgChain};
use lwtun::netlink::Netlink;
use lwtun::program::Hook;
use lwtun::route::LwtRoute;

/// Polls until `want` packets arrived or 5 s passed.
fn collect(capture: &mut Capture, want: usize) -> Vec<Packet> {
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(5);
    while got.len() < want && Instant::now() < until {
        got.extend(capture.poll(Duration::from_millis(100)).unwrap());
    }
    got
}

fn tcpdump_read(path: &std::path::Path) -> String {
    let out = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(path)
        .output()
        .expect("run tcpdump");
    assert!(
        out.status.success(),
        "tcpdump -r {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn pings_through_an_lwt_route_are_captured_to_files_tcpdump_reads() {
    require!();
    let mut chain = ProgChain::new(ChainHook::LwtXmit).unwrap();
    let stage = CountingStage::load(&chain).unwrap();
    let id = chain.push(stage.program()).unwrap();
    let net = common::two_hosts();
    let mut nl = Netlink::open_in(net.ns(0)).unwrap();
    let dev = nl.device("to1").unwrap();
    let _route = LwtRoute::new(format!("{}/32", net.v4(1)).parse().unwrap())
        .device(&dev)
        .program(Hook::Xmit, chain.lwt_entry().unwrap())
        .install(&mut nl)
        .unwrap();
    let (src, dst) = (net.v4(0), net.v4(1));

    let mut capture = Capture::attach(&mut chain, CaptureOptions::default()).unwrap();
    assert_eq!(capture.link_type(), LinkType::Raw);
    let p = common::ping(net.ns(0), dst.into(), 3);
    assert_eq!(p.received, 3, "captured traffic still flows: {}", p.output);
    // Two UDP datagrams through the same route, for the filter to leave out.
    net.ns(0)
        .run(|| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..2 {
                s.send_to(b"not icmp", (dst, 9)).unwrap();
            }
            Ok(())
        })
        .unwrap();
    let packets = collect(&mut capture, 5);
    assert_eq!(packets.len(), 5, "{packets:#?}");
    assert_eq!(capture.lost().unwrap(), 0);
    for p in &packets {
        assert_eq!(p.hook, ChainHook::LwtXmit);
        assert_eq!(p.ifindex, dev.index(), "the route's device");
        assert_eq!(p.verdict, 0, "BPF_OK");
        assert_eq!(p.protocol, 0x0800);
        assert_eq!(p.data.len() as u32, p.len);
        assert_eq!(p.data[0] >> 4, 4, "LWT packets start at the IP header");
    }
    assert_eq!(
        stage.stats(id).unwrap().packets,
        5,
        "the stage ran before the exit hook"
    );

    // The filter keeps the echo requests only.
    let icmp =
        Filter::compile(&format!("icmp and src {src} and dst {dst}"), LinkType::Raw).unwrap();
    let kept: Vec<&Packet> = packets.iter().filter(|p| icmp.matches(p)).collect();
    assert_eq!(kept.len(), 3, "three echo requests of five packets");
    let udp = Filter::compile("udp dst port 9", LinkType::Raw).unwrap();
    assert_eq!(packets.iter().filter(|p| udp.matches(p)).count(), 2);
    assert!(Filter::compile("icmp and", LinkType::Raw).is_err());

    // The terminal view.
    let line = kept[0].summary();
    assert!(
        line.contains(&format!(
            "lwt_xmit if{} BPF_OK IP {src} > {dst}: ICMP echo request",
            dev.index()
        )),
        "{line}"
    );
    assert!(kept[0].dump().contains("  ICMP\n"), "{}", kept[0].dump());

    // pcap and pcapng files that tcpdump reads.
    let dir = std::env::temp_dir().join(format!("lwtun-capture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    for (format, name) in [
        (CaptureFormat::Pcap, "lwt.pcap"),
        (CaptureFormat::PcapNg, "lwt.pcapng"),
    ] {
        let path = dir.join(name);
        let file = std::fs::File::create(&path).unwrap();
        let mut w = CaptureWriter::new(file, format, LinkType::Raw, 1536).unwrap();
        for p in &kept {
            w.write(p).unwrap();
        }
        assert_eq!(w.written(), 3);
        drop(w.into_inner());
        let text = tcpdump_read(&path);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{name}:\n{text}");
        same_as_tcpdump(&kept, &text);
        for l in lines {
            assert!(
                l.contains(&format!("IP {src} > {dst}: ICMP echo request")),
                "{name}: {l}"
            );
        }
    }
    // A stream holds one link type.
    let mut w =
        CaptureWriter::new(Vec::new(), CaptureFormat::Pcap, LinkType::Ethernet, 1536).unwrap();
    assert!(w.write(kept[0]).is_err());

    // Detached: traffic flows, nothing is captured, the chain still runs its stage.
    capture.detach(&mut chain).unwrap();
    assert!(chain.exit().is_none());
    let p = common::ping(net.ns(0), dst.into(), 2);
    assert_eq!(p.received, 2, "{}", p.output);
    assert!(capture.poll(Duration::from_millis(300)).unwrap().is_empty());
    assert_eq!(stage.stats(id).unwrap().packets, 7);

    // A short snap length keeps the headers only; the original length stays.
    let mut short = Capture::attach(&mut chain, CaptureOptions { snaplen: 28 }).unwrap();
    let p = common::ping_with(net.ns(0), dst.into(), 1, &["-s", "400"]);
    assert_eq!(p.received, 1, "{}", p.output);
    let got = collect(&mut short, 1);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].data.len(), got[0].len), (28, 428));
    assert!(Capture::load(&chain, CaptureOptions { snaplen: 0 }).is_err());
    assert!(Capture::load(&chain, CaptureOptions { snaplen: 1537 }).is_err());
}

#[test]
fn ipv6_pings_are_captured_as_raw_ipv6() {
    require!();
    let mut chain = ProgChain::new(ChainHook::LwtXmit).unwrap();
    let net = common::two_hosts();
    let mut nl = Netlink::open_in(net.ns(0)).unwrap();
    let dev = nl.device("to1").unwrap();
    let _route = LwtRoute::new(format!("{}/128", net.v6(1)).parse().unwrap())
        .device(&dev)
        .program(Hook::Xmit, chain.lwt_entry().unwrap())
        .install(&mut nl)
        .unwrap();
    let mut capture = Capture::attach(&mut chain, CaptureOptions::default()).unwrap();
    let p = common::ping(net.ns(0), net.v6(1).into(), 2);
    assert_eq!(p.received, 2, "{}", p.output);
    let packets = collect(&mut capture, 2);
    let filter = Filter::compile("icmp6 and ip6[40] == 128", LinkType::Raw).unwrap();
    let echo: Vec<&Packet> = packets.iter().filter(|p| filter.matches(p)).collect();
    assert_eq!(
        echo.len(),
        2,
        "{:?}",
        packets.iter().map(Packet::summary).collect::<Vec<_>>()
    );
    for p in &echo {
        assert_eq!(p.protocol, 0x86dd);
        assert_eq!(p.data[0] >> 4, 6);
    }
    let path = std::env::temp_dir().join(format!("lwtun-v6-{}.pcap", std::process::id()));
    let mut w = CaptureWriter::new(
        std::fs::File::create(&path).unwrap(),
        CaptureFormat::Pcap,
        LinkType::Raw,
        1536,
    )
    .unwrap();
    for p in &echo {
        w.write(p).unwrap();
    }
    drop(w.into_inner());
    let text = tcpdump_read(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        text.matches(&format!(
            "IP6 {} > {}: ICMP6, echo request",
            net.v6(0),
            net.v6(1)
        ))
        .count(),
        2,
        "{text}"
    );
    // lwtun's summary prints the packet as tcpdump does, lengths included (the 64-byte ICMPv6
    // message, not the 104-byte packet).
    same_as_tcpdump(&echo, &text);
}

/// Each packet's summary ends with what `tcpdump -n -r` printed for it after the timestamp.
fn same_as_tcpdump(packets: &[&Packet], text: &str) {
    assert_eq!(packets.len(), text.lines().count(), "{text}");
    for (p, line) in packets.iter().zip(text.lines()) {
        let theirs = line.split_once(' ').unwrap().1;
        assert!(
            p.summary().ends_with(theirs),
            "lwtun: {}\ntcpdump: {line}",
            p.summary()
        );
    }
}

/// `poll(2)` on the capture's descriptor says when packets wait: idle before traffic, readable
/// after a ping, and `try_packet` then returns the echo requests without blocking and `None`
/// once the ring is empty (the descriptor idle again), as an event loop would drive it.
#[test]
fn the_capture_descriptor_is_readable_when_packets_wait() {
    use std::os::fd::{AsFd, AsRawFd};
    require!();
    let mut chain = ProgChain::new(ChainHook::LwtXmit).unwrap();
    let net = common::two_hosts();
    let mut nl = Netlink::open_in(net.ns(0)).unwrap();
    let dev = nl.device("to1").unwrap();
    let _route = LwtRoute::new(format!("{}/32", net.v4(1)).parse().unwrap())
        .device(&dev)
        .program(Hook::Xmit, chain.lwt_entry().unwrap())
        .install(&mut nl)
        .unwrap();
    let mut capture = Capture::attach(&mut chain, CaptureOptions::default()).unwrap();
    let readable = |capture: &Capture, ms: i32| {
        let mut fds = [libc::pollfd {
            fd: capture.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
        n == 1 && fds[0].revents & libc::POLLIN != 0
    };
    assert!(!readable(&capture, 0), "idle before any traffic");
    let started = Instant::now();
    assert!(capture.try_packet().unwrap().is_none());
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "try_packet never waits"
    );

    let p = common::ping(net.ns(0), net.v4(1).into(), 3);
    assert_eq!(p.received, 3, "{}", p.output);
    assert!(readable(&capture, 5000), "readable once packets wait");
    let mut seqs = Vec::new();
    while let Some(p) = capture.try_packet().unwrap() {
        if let Some(echo) = p.echo().filter(|e| e.request) {
            seqs.push(echo.seq);
        }
    }
    assert_eq!(seqs.len(), 3, "the three echo requests: {seqs:?}");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "in order: {seqs:?}"
    );
    assert!(!readable(&capture, 0), "idle again once drained");
    assert_eq!(capture.lost().unwrap(), 0);
}
