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
        assert!(p.summary().contains(&format!("xdp if{ifindex} verdict 2")));
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
