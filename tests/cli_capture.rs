//! `lwtun capture` end to end, the real binary in namespaces: a capture on the route that carries
//! a tunnel's traffic keeps the encap (B still decapsulates every ping) and puts the route back
//! exactly; a capture of the tunnel's outer packets prints the GRE key and the inner packet with
//! tcpdump's lengths; what cannot be captured is refused, saying what to do.
//!
//! ```text
//!  A (10.30.0.1 on lo)  to1 ══ veth ══ to0  B (10.20.0.2 on lo)
//!     10.77.0.1                              10.77.0.2, decap at tc ingress of to0
//!  route 10.20.0.0/16 dev to1 src 10.30.0.1 encap bpf xmit (lwtun route add), GRE key 77
//! ```
#![cfg(all(feature = "cli", feature = "capture"))]

#[path = "common/cli.rs"]
mod cli;
mod common;

use cli::{hosts, lwtun, ok, pcap_records};

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStderr, Command, Stdio};

use lwtun::decap::{Decap, DecapPeer};
use serde_json::Value;

const KEY: u32 = 77;

/// A running `lwtun capture`, killed when dropped.
struct Running {
    child: Child,
    stderr: Lines<BufReader<ChildStderr>>,
}

impl Running {
    /// Starts `lwtun ARGS` and waits until it says it is capturing.
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lwtun"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let first = stderr.next().unwrap().unwrap();
        assert!(first.contains("capturing on"), "lwtun {args:?}: {first}");
        Running { child, stderr }
    }

    /// Waits for the end; returns stdout and the rest of stderr.
    fn finish(mut self) -> (String, String) {
        let status = self.child.wait().unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut out).unwrap();
        let err: Vec<String> = self.stderr.by_ref().map_while(|l| l.ok()).collect();
        assert!(status.success(), "{status}: {err:?}");
        (out, err.join("\n"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    net: common::Line,
    decap: Decap,
    _pin: common::PinDir,
}

/// A and B as drawn above; A's tunnel made with the command.
fn setup(tag: &str) -> Setup {
    let mut s = setup_tunnel(tag);
    s.decap.attach(&s.net.device(1, "to0")).unwrap();
    s
}

/// [`setup`] but for B's decap: loaded, not attached.
fn setup_tunnel(tag: &str) -> Setup {
    let net = hosts();
    let mut decap = Decap::load().unwrap();
    decap.add_local("10.77.0.2".parse().unwrap()).unwrap();
    decap
        .add_peer(DecapPeer::host("10.77.0.1".parse().unwrap()).gre_key(KEY))
        .unwrap();
    let pin = common::PinDir::new(tag);
    let a = net.ns(0).name().to_string();
    let p = pin.arg();
    ok(&["-n", &a, "tunnel", "load", "--pin", p, "--capacity", "16"]);
    let key = KEY.to_string();
    ok(&[
        "-n",
        &a,
        "peer",
        "add",
        "--pin",
        p,
        "10.20.0.0/16",
        "remote",
        "10.77.0.2",
        "local",
        "10.77.0.1",
        "encap",
        "gre",
        "key",
        &key,
    ]);
    ok(&[
        "-n",
        &a,
        "route",
        "add",
        "--pin",
        p,
        "10.20.0.0/16",
        "--dev",
        "to1",
        "--src",
        "10.30.0.1",
    ]);
    Setup {
        net,
        decap,
        _pin: pin,
    }
}

fn ping_b(net: &common::Line, count: u32) -> common::Ping {
    common::ping_with(
        net.ns(0),
        "10.20.0.2".parse().unwrap(),
        count,
        &["-I", "10.30.0.1", "-i", "0.2", "-W", "1"],
    )
}

fn routes(ns: &lwtun::netns::NetNs) -> String {
    common::ip(ns, &["route", "show"]) + &common::ip(ns, &["-6", "route", "show"])
}

#[test]
fn capture_on_a_tunnel_route_keeps_the_encap_and_puts_the_route_back() {
    require!();
    let s = setup("cap-route");
    let a = s.net.ns(0).name().to_string();
    let before = routes(s.net.ns(0));
    assert!(
        before.contains("encap bpf xmit lwtun:encap_xmit"),
        "{before}"
    );
    let file = std::env::temp_dir().join(format!("lwtun-cap-route-{}.pcap", std::process::id()));
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _rm = Rm(file.clone());

    // No route is 10.20.0.2/32: the capture goes on 10.20.0.0/16, which carries it.
    let cap = Running::start(&[
        "-n",
        &a,
        "capture",
        "--hook",
        "route",
        "--route",
        "10.20.0.2/32",
        "-w",
        file.to_str().unwrap(),
        "-c",
        "3",
        "--timeout",
        "20",
        "icmp",
    ]);
    let during = routes(s.net.ns(0));
    let tunnel_route = during
        .lines()
        .find(|l| l.starts_with("10.20.0.0/16"))
        .unwrap();
    assert!(
        tunnel_route.contains("encap bpf out lwtun:chain_lwt_out:")
            && tunnel_route.contains("xmit lwtun:encap_xmit:"),
        "the capture at lwt_out, the encap kept at xmit: {during}"
    );
    assert!(
        !during.contains("10.20.0.2"),
        "no more specific route: {during}"
    );

    let gre_before = s.decap.counters().unwrap().gre.packets;
    let ping = ping_b(&s.net, 5);
    assert_eq!(ping.received, 5, "{}", ping.output);
    assert_eq!(
        s.decap.counters().unwrap().gre.packets - gre_before,
        5,
        "every request reached B in GRE"
    );
    let (_, err) = cap.finish();
    assert!(err.contains("3 packet(s) captured"), "{err}");
    assert_eq!(routes(s.net.ns(0)), before, "the route is back as it was");

    // The pcap holds the packets as they entered the route: raw IP, not yet encapsulated.
    let records = pcap_records(&std::fs::read(&file).unwrap(), Some(101));
    assert_eq!(records.len(), 3);
    for r in &records {
        assert_eq!(r[0] >> 4, 4);
        assert_eq!(r[9], 1, "ICMP, not GRE");
        assert_eq!(&r[12..20], &[10, 30, 0, 1, 10, 20, 0, 2]);
        assert_eq!(r[20], 8, "echo request");
    }

    // -j: one object per packet, the verdict named.
    let cap = Running::start(&[
        "-j",
        "-n",
        &a,
        "capture",
        "--hook",
        "route",
        "--route",
        "10.20.0.0/16",
        "-c",
        "1",
        "--timeout",
        "20",
        "icmp",
    ]);
    let ping = ping_b(&s.net, 1);
    assert_eq!(ping.received, 1, "{}", ping.output);
    let (out, _) = cap.finish();
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["hook"], "lwt_out");
    assert_eq!(v["dev"], "to1", "at lwt_out, the route's device");
    assert_eq!(v["verdict_name"], "BPF_OK");
    assert_eq!(v["len"], 84);
    let summary = v["summary"].as_str().unwrap();
    assert!(
        summary.contains(" lwt_out to1 BPF_OK IP 10.30.0.1 > 10.20.0.2: ICMP echo request")
            && summary.ends_with("length 64"),
        "{summary}"
    );
    assert_eq!(routes(s.net.ns(0)), before);

    // Ctrl-C ends a capture the same way: the route is put back.
    let cap = Running::start(&[
        "-n",
        &a,
        "capture",
        "--hook",
        "route",
        "--route",
        "10.20.0.0/16",
    ]);
    assert_ne!(routes(s.net.ns(0)), before);
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(
        unsafe { libc::kill(cap.child.id() as i32, libc::SIGINT) },
        0
    );
    let (_, err) = cap.finish();
    assert!(err.contains("0 packet(s) captured"), "{err}");
    assert_eq!(routes(s.net.ns(0)), before);
}

#[test]
fn capture_prints_the_gre_key_and_the_inner_packet() {
    require!();
    let s = setup("cap-gre");
    let a = s.net.ns(0).name().to_string();
    let cap = Running::start(&[
        "-n",
        &a,
        "capture",
        "--hook",
        "tc-egress",
        "--dev",
        "to1",
        "-c",
        "2",
        "--timeout",
        "20",
        "ip",
        "proto",
        "47",
    ]);
    let ping = ping_b(&s.net, 2);
    assert_eq!(ping.received, 2, "{}", ping.output);
    let (out, _) = cap.finish();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (i, l) in lines.iter().enumerate() {
        // As tcpdump prints it, but for the key in decimal, as `peer add ... key 77` set it.
        let want = " tc to1 next IP 10.77.0.1 > 10.77.0.2: GREv0, key=77, length 92: \
                    IP 10.30.0.1 > 10.20.0.2: ICMP echo request, id ";
        assert!(l.contains(want), "{l}");
        assert!(l.ends_with(&format!(", seq {}, length 64", i + 1)), "{l}");
    }

    // -v: every layer, the GRE key and the inner IPv4 header among them.
    let cap = Running::start(&[
        "-n",
        &a,
        "capture",
        "--hook",
        "tc-egress",
        "--dev",
        "to1",
        "-c",
        "1",
        "-v",
        "--timeout",
        "20",
        "ip",
        "proto",
        "47",
    ]);
    let ping = ping_b(&s.net, 1);
    assert_eq!(ping.received, 1, "{}", ping.output);
    let (out, _) = cap.finish();
    for want in [
        "hook tc dev to1 verdict next length 126",
        "  GRE\n",
        "    key             77 (0x4d)",
        "  IPv4 (inner)\n",
        "    src             10.30.0.1",
        "  ICMP\n",
    ] {
        assert!(out.contains(want), "{want:?} in\n{out}");
    }
}

/// The issue's case: `lwtun decap attach to0`, then `lwtun capture --hook tc-ingress --dev to0`
/// captured nothing, not even plain pings, because decap ended the hook (TC_ACT_OK). Now the
/// capture after it sees the plain pings and the tunnel's pings, decapsulated.
#[test]
fn capture_behind_the_commands_decap_sees_plain_and_decapsulated_packets() {
    require!();
    let s = setup_tunnel("cap-decap");
    let b = s.net.ns(1).name().to_string();
    let pin = common::PinDir::new("cap-decap-b");
    let peer = format!("10.77.0.1,key={KEY}");
    ok(&[
        "-n",
        &b,
        "decap",
        "attach",
        "to0",
        "--pin",
        pin.arg(),
        "--local",
        "10.77.0.2",
        "--peer",
        &peer,
    ]);
    let cap = Running::start(&[
        "-n",
        &b,
        "capture",
        "--hook",
        "tc-ingress",
        "--dev",
        "to0",
        "-c",
        "4",
        "--timeout",
        "20",
        "icmp[icmptype] == icmp-echo",
    ]);
    let tunnelled = ping_b(&s.net, 2);
    assert_eq!(tunnelled.received, 2, "{}", tunnelled.output);
    let plain = common::ping(s.net.ns(0), "10.77.0.2".parse().unwrap(), 2);
    assert_eq!(plain.received, 2, "{}", plain.output);
    let (out, _) = cap.finish();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    for l in &lines[..2] {
        assert!(
            l.contains(" tc to0 next IP 10.30.0.1 > 10.20.0.2: ICMP echo request"),
            "decapsulated: {l}"
        );
    }
    for l in &lines[2..] {
        assert!(
            l.contains(" tc to0 next IP 10.77.0.1 > 10.77.0.2: ICMP echo request"),
            "plain: {l}"
        );
    }
    let shown = ok(&["-j", "-n", &b, "decap", "show", "--pin", pin.arg()]);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["decapsulated"], 2, "{shown}");
    ok(&["-n", &b, "decap", "detach", "to0", "--pin", pin.arg()]);
}

#[test]
fn what_cannot_be_captured_is_refused() {
    require!();
    let s = setup("cap-refused");
    let a = s.net.ns(0).name().to_string();
    let before = routes(s.net.ns(0));
    // A has no default route: nothing carries 10.99.0.0/16.
    let out = lwtun(&[
        "-n",
        &a,
        "capture",
        "--hook",
        "route",
        "--route",
        "10.99.0.0/16",
        "--timeout",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("no route of the main table carries 10.99.0.0/16")
            && err.contains("lwtun route add"),
        "{err}"
    );
    // The tunnel route leaves through to1, not lo.
    let out = lwtun(&[
        "-n",
        &a,
        "capture",
        "--hook",
        "route",
        "--route",
        "10.20.0.0/16",
        "--dev",
        "lo",
        "--timeout",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("another device than lo"), "{err}");
    assert_eq!(routes(s.net.ns(0)), before, "nothing changed");
    // A route has one encap: one of the kernel's own (here ip) cannot take an LWT BPF hook.
    common::ip(
        s.net.ns(0),
        &[
            "route",
            "add",
            "10.5.0.0/16",
            "encap",
            "ip",
            "id",
            "1",
            "dst",
            "10.77.0.2",
            "dev",
            "to1",
        ],
    );
    let before = routes(s.net.ns(0));
    let out = lwtun(&[
        "-n",
        &a,
        "capture",
        "--hook",
        "route",
        "--route",
        "10.5.1.1/32",
        "--timeout",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("10.5.0.0/16 has an encap that is not LWT BPF")
            && err.contains("--hook tc-egress"),
        "{err}"
    );
    // A hook on a device needs the device.
    let out = lwtun(&[
        "-n",
        &a,
        "capture",
        "--hook",
        "tc-ingress",
        "--timeout",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("--dev"), "{err}");
    assert_eq!(routes(s.net.ns(0)), before, "nothing changed");
}
