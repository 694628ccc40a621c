//! The `lwtun` command end to end: the real binary, run in namespaces made here, loads a pinned
//! tunnel, adds peers, steers a route and pings through it; its JSON is parsed back and
//! compared; a batch file with a bad line reports FILE:LINE and applies nothing; a library
//! user adopts what the command pinned and the command adopts what a library user pinned.
//!
//! ```text
//!  A (10.30.0.1 on lo)  to1 ══ veth ══ to0  B (10.20.0.2 on lo)
//!     10.77.0.1                              10.77.0.2, decap at tc ingress of to0
//!  route 10.20.0.0/16 dev to1 src 10.30.0.1 encap bpf xmit (made by `lwtun route add`)
//! ```

#[path = "common/cli.rs"]
mod cli;
mod common;

use cli::{
    bpftool_dump, fails_with, hosts, json, lwtun, ok, pcap_records, ping_b, setup, TempFile,
};

use lwtun::peer::{Encap, EncapPeer};
use lwtun::tunnel::Tunnel;
use serde_json::{json, Value};

#[test]
fn load_peer_route_ping_show_adopt_unload() {
    require!();
    let (net, decap) = setup();
    let a = net.ns(0).name().to_string();
    let pin = common::PinDir::new("e2e");
    let p = pin.arg();

    let load = json(&["-n", &a, "tunnel", "load", "--pin", p, "--capacity", "64"]);
    assert_eq!(load["capacity"], 64);
    assert_eq!(load["adopted"], false);
    assert_eq!(load["peers_v4"], 0);
    // A second load adopts, with the capacity of the first.
    let again = json(&["-n", &a, "tunnel", "load", "--pin", p]);
    assert_eq!(again["adopted"], true);
    assert_eq!(again["capacity"], 64);
    assert_eq!(again["maps"], load["maps"], "the same pinned maps");

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
        "ipip",
        "ttl",
        "32",
    ]);
    let peers = json(&["-n", &a, "peer", "show", "--pin", p]);
    assert_eq!(
        peers,
        json!([{
            "prefix": "10.20.0.0/16", "remote": "10.77.0.2", "local": "10.77.0.1",
            "encap": "ipip", "gre_key": null, "gre_checksum": false, "udp_port": null,
            "ttl": 32, "tos": 0
        }])
    );

    let route = json(&[
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
    assert_eq!(route["dst"], "10.20.0.0/16");
    assert_eq!(route["dev"], "to1");
    assert_eq!(route["src"], "10.30.0.1");
    assert_eq!(route["protocol"], 76);
    assert_eq!(route["hooks"][0]["hook"], "xmit");
    let program_id = route["hooks"][0]["program_id"].as_u64().unwrap();

    // The route (and its program) outlived the command: packets go through the tunnel.
    let ping = ping_b(&net, 3);
    assert_eq!(ping.received, 3, "{}", ping.output);
    assert_eq!(
        decap.counters().unwrap().decapsulated(),
        3,
        "B decapsulated the requests"
    );
    let stats = json(&["-n", &a, "peer", "stats", "--pin", p]);
    assert_eq!(stats["peers"][0]["prefix"], "10.20.0.0/16");
    assert_eq!(stats["peers"][0]["packets"], 3);
    assert_eq!(stats["peers"][0]["bytes"], 3 * 84);
    assert_eq!(stats["misses"]["dropped_v4"], 0);
    let human = ok(&["-n", &a, "peer", "stats", "--pin", p]);
    assert!(human.contains("10.20.0.0/16  3"), "{human}");

    // route show: lwtun's route with its program, and one iproute2 made.
    let _iproute2_state = common::Iproute2Bpffs::new();
    common::ip(
        net.ns(0),
        &[
            "route",
            "add",
            "10.99.0.0/16",
            "encap",
            "bpf",
            "xmit",
            "obj",
            concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/obj/lwt_count.bpf.o"),
            "sec",
            "lwt_xmit",
            "dev",
            "to1",
        ],
    );
    let routes = json(&["-n", &a, "route", "show"]);
    let find = |dst: &str| {
        routes
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["dst"] == dst)
            .unwrap_or_else(|| panic!("{dst} in {routes}"))
            .clone()
    };
    let ours = find("10.20.0.0/16");
    assert_eq!(ours["lwtun"], true);
    assert_eq!(ours["hooks"][0]["program_id"].as_u64(), Some(program_id));
    let theirs = find("10.99.0.0/16");
    assert_eq!(theirs["lwtun"], false);
    assert_eq!(theirs["hooks"][0]["hook"], "xmit");
    assert!(theirs["hooks"][0]["program_id"].is_null(), "{theirs}");
    assert!(theirs["hooks"][0]["name"]
        .as_str()
        .unwrap()
        .contains("lwt_count"));
    let show = json(&["-n", &a, "tunnel", "show", "--pin", p]);
    assert_eq!(show["peers_v4"], 1);
    assert_eq!(show["program_ids"], json!([program_id]));
    assert_eq!(show["routes"].as_array().unwrap().len(), 1, "{show}");

    // A library user adopts what the command made; while it owns the folder the commands
    // that change it are refused, naming the owner, and the show commands read the pins.
    {
        let mut tunnel = Tunnel::builder().pin(&pin.0).load().unwrap();
        assert!(tunnel.adopted());
        assert_eq!(tunnel.peers().len(), 1);
        assert_eq!(
            tunnel
                .peers()
                .get("10.20.0.0/16".parse().unwrap())
                .unwrap()
                .encap,
            Encap::Ipip
        );
        for edit in [
            &["peer", "del", "--pin", p, "10.20.0.0/16"][..],
            &[
                "peer",
                "add",
                "--pin",
                p,
                "10.22.0.0/16",
                "remote",
                "10.77.0.2",
                "local",
                "10.77.0.1",
                "encap",
                "ipip",
            ],
            &["tunnel", "unload", "--pin", p],
            &[
                "route",
                "add",
                "--pin",
                p,
                "10.23.0.0/16",
                "--dev",
                "to1",
                "--src",
                "10.30.0.1",
            ],
        ] {
            let mut args = vec!["-n", a.as_str()];
            args.extend_from_slice(edit);
            let err = fails_with(&args, 4);
            assert!(
                err.contains(&format!("process {}", std::process::id())),
                "{edit:?}: {err}"
            );
        }
        tunnel
            .peers_mut()
            .insert(
                "10.24.0.0/16".parse().unwrap(),
                EncapPeer::new(
                    "10.77.0.2".parse().unwrap(),
                    "10.77.0.1".parse().unwrap(),
                    Encap::Ipip,
                ),
            )
            .unwrap();
        // The owner's change is visible to the show commands at once.
        let peers = json(&["-n", &a, "peer", "show", "--pin", p]);
        assert_eq!(peers.as_array().unwrap().len(), 2, "{peers}");
        assert_eq!(peers[1]["prefix"], "10.24.0.0/16");
        let stats = json(&["-n", &a, "peer", "stats", "--pin", p, "10.20.0.0/16"]);
        assert_eq!(stats["peers"][0]["packets"], 3);
        let show = json(&["-n", &a, "tunnel", "show", "--pin", p]);
        assert_eq!(show["peers_v4"], 2);
        assert_eq!(show["routes"].as_array().unwrap().len(), 1, "{show}");
        tunnel
            .peers_mut()
            .remove("10.24.0.0/16".parse().unwrap())
            .unwrap();
        tunnel
            .peers_mut()
            .insert(
                "10.21.0.0/16".parse().unwrap(),
                EncapPeer::new(
                    "10.77.0.2".parse().unwrap(),
                    "10.77.0.1".parse().unwrap(),
                    Encap::Gre {
                        key: Some(7),
                        checksum: false,
                    },
                ),
            )
            .unwrap();
        tunnel.keep_pinned();
    }
    // ... and the command adopts what the library user pinned.
    let peers = json(&["-n", &a, "peer", "show", "--pin", p]);
    assert_eq!(peers[1]["prefix"], "10.21.0.0/16");
    assert_eq!(peers[1]["encap"], "gre");
    assert_eq!(peers[1]["gre_key"], 7);
    // The counters survived both adoptions.
    let stats = json(&["-n", &a, "peer", "stats", "--pin", p, "10.20.0.0/16"]);
    assert_eq!(stats["peers"][0]["packets"], 3);

    ok(&["-n", &a, "peer", "del", "--pin", p, "10.21.0.0/16"]);
    assert_eq!(
        json(&["-n", &a, "peer", "show", "--pin", p])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Unload removes the route it made (not iproute2's), the fix-up, the pins and the folder.
    let unload = json(&["-n", &a, "tunnel", "unload", "--pin", p]);
    assert_eq!(unload["removed_routes"], 1);
    assert!(!pin.0.exists(), "the pin folder is gone");
    let routes = json(&["-n", &a, "route", "show"]);
    let dsts: Vec<&str> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dst"].as_str().unwrap())
        .collect();
    assert_eq!(dsts, ["10.99.0.0/16"]);
    let tc = lwtun::tc::attached(&net.device(0, "to1"), lwtun::tc::TcDirection::Egress).unwrap();
    assert!(tc.is_empty(), "fix-up detached: {tc:?}");
    let ping = ping_b(&net, 2);
    assert_eq!(ping.received, 0, "no tunnel any more: {}", ping.output);
    let err = fails_with(&["-n", &a, "tunnel", "show", "--pin", p], 3);
    assert!(err.contains("no lwtun tunnel pins"), "{err}");
}

#[test]
fn batch_with_a_bad_line_applies_nothing() {
    require!();
    let pin = common::PinDir::new("batch");
    let p = pin.arg();
    ok(&["tunnel", "load", "--pin", p]);
    let good: Vec<String> = (0..5)
        .map(|i| format!("10.40.{i}.0/24 remote 192.0.2.{i} local 192.0.2.100 encap gre key {i}"))
        .collect();
    let mut bad = good.clone();
    bad.insert(2, "# a comment".into());
    bad.insert(
        4,
        "10.50.0.0/16 remote 192.0.2.9 local 192.0.2.100 encap udp".into(),
    );
    let file = TempFile::new("bad", &bad.join("\n"));
    let err = fails_with(&["peer", "add", "--pin", p, "-b", file.arg()], 7);
    assert!(err.contains(&format!("{}:5", file.arg())), "{err}");
    assert!(err.contains("port"), "says what is missing: {err}");
    assert_eq!(json(&["peer", "show", "--pin", p]), json!([]));
    assert_eq!(bpftool_dump(&pin.0.join("peers_v4")), json!([]));

    // A prefix that has a peer already is a bad line too (checked before anything is written).
    ok(&[
        "peer",
        "add",
        "--pin",
        p,
        "10.40.3.0/24",
        "remote",
        "192.0.2.3",
        "local",
        "192.0.2.100",
        "encap",
        "ipip",
    ]);
    let file = TempFile::new("dup", &good.join("\n"));
    let err = fails_with(&["peer", "add", "--pin", p, "-b", file.arg()], 4);
    assert!(err.contains(&format!("{}:4", file.arg())), "{err}");
    assert_eq!(
        json(&["peer", "show", "--pin", p])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        bpftool_dump(&pin.0.join("peers_v4"))
            .as_array()
            .unwrap()
            .len(),
        1
    );

    ok(&["peer", "del", "--pin", p, "10.40.3.0/24"]);
    let added = json(&["peer", "add", "--pin", p, "-b", file.arg()]);
    assert_eq!(added["added"], 5);
    let peers = json(&["peer", "show", "--pin", p]);
    let got: Vec<(String, u64)> = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["prefix"].as_str().unwrap().to_string(),
                v["gre_key"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = (0..5).map(|i| (format!("10.40.{i}.0/24"), i)).collect();
    assert_eq!(got, want);
    assert_eq!(
        bpftool_dump(&pin.0.join("peers_v4"))
            .as_array()
            .unwrap()
            .len(),
        5
    );
    // `-b -` reads standard input.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lwtun"))
        .args(["peer", "add", "--pin", p, "-b", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        b"10.9.0.0/16 remote 192.0.2.9 local 192.0.2.100 encap ipip\n",
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let peers = json(&["peer", "show", "--pin", p]);
    assert_eq!(peers[0]["prefix"], "10.9.0.0/16", "address order: {peers}");
    assert_eq!(peers.as_array().unwrap().len(), 6);
    ok(&["tunnel", "unload", "--pin", p]);
    assert!(!pin.0.exists());
}

#[test]
fn refusals_and_usage_errors() {
    require!();
    // Usage errors exit 2, as clap does.
    fails_with(&["peer", "show"], 2);
    fails_with(&["frobnicate"], 2);
    // A folder that holds another program's pins is refused with the library's error.
    let pin = common::PinDir::new("foreign");
    std::fs::create_dir_all(&pin.0).unwrap();
    let st = std::process::Command::new("bpftool")
        .args([
            "map",
            "create",
            &format!("{}/peers_v4", pin.arg()),
            "type",
            "hash",
            "key",
            "4",
            "value",
            "4",
            "entries",
            "4",
            "name",
            "foreign",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let err = fails_with(&["tunnel", "load", "--pin", pin.arg()], 7);
    assert!(err.contains("another program's pins"), "{err}");
    let err = fails_with(&["peer", "show", "--pin", pin.arg()], 7);
    assert!(err.contains("another program's pins"), "{err}");
    // A folder without pins is not a tunnel (show does not make one).
    let empty = common::PinDir::new("empty");
    let err = fails_with(&["tunnel", "show", "--pin", empty.arg()], 3);
    assert!(err.contains("no lwtun tunnel pins"), "{err}");
    assert!(!empty.0.exists());
    // A bad peer on the command line.
    let good = common::PinDir::new("words");
    ok(&["tunnel", "load", "--pin", good.arg()]);
    let err = fails_with(
        &[
            "peer",
            "add",
            "--pin",
            good.arg(),
            "10.0.0.0/8",
            "remote",
            "1.1.1.1",
            "encap",
            "ipip",
        ],
        7,
    );
    assert!(err.contains("local"), "{err}");
    // -p pretty-prints JSON (and implies -j).
    let pretty = ok(&["-p", "peer", "show", "--pin", good.arg()]);
    assert_eq!(pretty.trim(), "[]");
    let pretty = ok(&["-p", "tunnel", "show", "--pin", good.arg()]);
    assert!(pretty.starts_with("{\n  \""), "{pretty}");
    let v: Value = serde_json::from_str(&pretty).unwrap();
    assert_eq!(v["capacity"], 4096);
    ok(&["tunnel", "unload", "--pin", good.arg()]);
    // Completions.
    let script = ok(&["completions", "bash"]);
    assert!(script.contains("lwtun"), "{script}");
    // The JSON field names are in --help.
    let help = ok(&["--help"]);
    assert!(
        help.contains("gre_checksum") && help.contains("program_id"),
        "{help}"
    );
}

#[test]
fn xdp_attach_stats_detach() {
    require!();
    let net = common::two_hosts();
    let b = net.ns(1).name().to_string();
    let att = json(&["-n", &b, "xdp", "attach", "to0", "--mode", "generic"]);
    let id = att["program_id"].as_u64().unwrap();
    let ping = common::ping(net.ns(0), net.v4(1).into(), 4);
    assert_eq!(ping.received, 4, "xdp_pass passes: {}", ping.output);
    let out = ok(&[
        "-j", "-n", &b, "xdp", "stats", "to0", "--watch", "0.2", "-c", "2",
    ]);
    let samples: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(samples.len(), 2, "{out}");
    for s in &samples {
        assert_eq!(s["program_id"].as_u64(), Some(id));
        let pass = s["actions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["action"] == "pass")
            .unwrap();
        assert!(
            pass["packets"].as_u64().unwrap() >= 4,
            "the echo requests: {s}"
        );
        assert!(pass["pps"].as_f64().unwrap() >= 0.0);
    }
    let human = ok(&["-n", &b, "xdp", "stats", "to0", "--interval", "0.1"]);
    assert!(
        human.contains("ACTION") && human.contains("pass"),
        "{human}"
    );
    ok(&["-n", &b, "xdp", "detach", "to0"]);
    let err = fails_with(&["-n", &b, "xdp", "stats", "to0"], 3);
    assert!(err.contains("XDP program"), "{err}");
}

#[test]
fn decap_attach_show_detach() {
    require!();
    let net = hosts();
    let b = net.ns(1).name().to_string();
    let pin = common::PinDir::new("decap");
    let p = pin.arg();
    // B decapsulates through the command; A's tunnel is a library user's.
    let attached = json(&[
        "-n",
        &b,
        "decap",
        "attach",
        "to0",
        "--pin",
        p,
        "--local",
        "10.77.0.2",
        "--peer",
        "10.77.0.1",
        "--peer",
        "10.78.0.0/24,key=9",
    ]);
    assert_eq!(attached["locals"], json!(["10.77.0.2"]));
    assert_eq!(
        attached["peers"],
        json!([{"prefix": "10.77.0.1/32", "gre_key": null}, {"prefix": "10.78.0.0/24", "gre_key": 9}])
    );
    assert_eq!(attached["links"].as_array().unwrap().len(), 1);
    let err = fails_with(&["-n", &b, "decap", "attach", "to0", "--pin", p], 4);
    assert!(err.contains("already"), "{err}");

    let mut nl = lwtun::netlink::Netlink::open_in(net.ns(0)).unwrap();
    let mut tunnel = Tunnel::builder()
        .source("10.30.0.1".parse().unwrap())
        .load()
        .unwrap();
    tunnel
        .peers_mut()
        .insert(
            "10.20.0.0/16".parse().unwrap(),
            EncapPeer::new(
                "10.77.0.2".parse().unwrap(),
                "10.77.0.1".parse().unwrap(),
                Encap::Ipip,
            ),
        )
        .unwrap();
    let route = tunnel
        .route("10.20.0.0/16".parse().unwrap())
        .device(&net.device(0, "to1"));
    tunnel.steer(&mut nl, route).unwrap();

    let ping = ping_b(&net, 3);
    assert_eq!(ping.received, 3, "{}", ping.output);
    let show = json(&["decap", "show", "--pin", p]);
    assert_eq!(show["decapsulated"], 3, "{show}");
    assert_eq!(show["counters"]["ipip"]["packets"], 3, "{show}");
    assert_eq!(show["dropped"], 0, "{show}");
    let human = ok(&["decap", "show", "--pin", p]);
    assert!(human.contains("decapsulated 3"), "{human}");

    let detached = json(&["-n", &b, "decap", "detach", "to0", "--pin", p]);
    assert_eq!(detached["removed_pins"], true);
    assert!(!pin.0.exists(), "last detach removes the pins");
    let tc = lwtun::tc::attached(&net.device(1, "to0"), lwtun::tc::TcDirection::Ingress).unwrap();
    assert!(tc.is_empty(), "{tc:?}");
    let ping = ping_b(&net, 2);
    assert_eq!(
        ping.received, 0,
        "B no longer decapsulates: {}",
        ping.output
    );
}

#[test]
fn capture_to_pcap_with_a_filter() {
    require!();
    use std::io::BufRead;
    let net = common::two_hosts();
    let b = net.ns(1).name().to_string();
    let file = TempFile::new("capture.pcap", "");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lwtun"))
        .args([
            "-n",
            &b,
            "capture",
            "--hook",
            "tc-ingress",
            "--dev",
            "to0",
            "-w",
            file.arg(),
            "-c",
            "3",
            "--timeout",
            "20",
            "icmp",
            "and",
            "icmp[icmptype]",
            "==",
            "icmp-echo",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().unwrap();
    let mut child = Kill(child);
    let mut lines = std::io::BufReader::new(stderr).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("capturing on to0"), "{first}");
    // 5 requests; the capture stops at 3 (the replies leave B, so ingress sees none).
    let ping = common::ping(net.ns(0), net.v4(1).into(), 5);
    assert_eq!(ping.received, 5, "{}", ping.output);
    let status = child.0.wait().unwrap();
    let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
    assert!(status.success(), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("3 packet(s) captured")),
        "{rest:?}"
    );
    let records = pcap_records(&std::fs::read(&file.0).unwrap(), None);
    assert_eq!(records.len(), 3);
    for r in &records {
        assert_eq!(&r[12..14], &[0x08, 0x00], "IPv4 in Ethernet");
        assert_eq!(r[14 + 9], 1, "ICMP");
        assert_eq!(r[14 + 20], 8, "echo request");
        assert_eq!(&r[14 + 16..14 + 20], &[10, 77, 0, 2], "to B");
    }
    let tc = lwtun::tc::attached(&net.device(1, "to0"), lwtun::tc::TcDirection::Ingress).unwrap();
    assert!(tc.is_empty(), "the capture detached when it ended: {tc:?}");
}

#[test]
fn route_del_and_leftovers() {
    require!();
    let net = hosts();
    let a = net.ns(0).name().to_string();
    let pin = common::PinDir::new("leftovers");
    let p = pin.arg();
    let load = json(&["-n", &a, "tunnel", "load", "--pin", p, "--miss", "pass"]);
    assert_eq!(load["miss_policy_v4"], "pass");
    assert_eq!(load["miss_policy_v6"], "pass");
    for prefix in ["10.20.0.0/16", "10.21.0.0/16"] {
        ok(&[
            "-n",
            &a,
            "route",
            "add",
            "--pin",
            p,
            prefix,
            "--dev",
            "to1",
            "--src",
            "10.30.0.1",
        ]);
    }
    // Without a source the command refuses, as Tunnel::steer does.
    let err = fails_with(
        &[
            "-n",
            &a,
            "route",
            "add",
            "--pin",
            p,
            "10.22.0.0/16",
            "--dev",
            "to1",
        ],
        7,
    );
    assert!(err.contains("--src"), "{err}");
    // Miss policy pass: with no peer the packets leave unencapsulated and B answers.
    let ping = ping_b(&net, 2);
    assert_eq!(ping.received, 2, "{}", ping.output);
    let stats = json(&["-n", &a, "peer", "stats", "--pin", p]);
    assert_eq!(stats["misses"]["passed_v4"], 2, "{stats}");

    ok(&["-n", &a, "route", "del", "10.21.0.0/16"]);
    let err = fails_with(&["-n", &a, "route", "del", "10.21.0.0/16"], 3);
    assert!(err.contains("no lwtun route"), "{err}");
    let human = ok(&["-n", &a, "route", "show"]);
    assert!(
        human.contains("10.20.0.0/16") && !human.contains("10.21.0.0/16"),
        "{human}"
    );

    let left = json(&["-n", &a, "leftovers"]);
    assert!(
        left["tunnel_pins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["pin"] == p && t["owner_pid"].is_null()),
        "{left}"
    );
    let dsts: Vec<&str> = left["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dst"].as_str().unwrap())
        .collect();
    assert_eq!(dsts, ["10.20.0.0/16"]);
    // While a library user owns the folder, leftovers names it.
    {
        let mut owner = Tunnel::builder().pin(&pin.0).load().unwrap();
        owner.keep_pinned();
        let left = json(&["-n", &a, "leftovers"]);
        let mine = left["tunnel_pins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["pin"] == p)
            .unwrap()
            .clone();
        assert_eq!(
            mine["owner_pid"].as_u64(),
            Some(u64::from(std::process::id()))
        );
    }
    // An XDP program of lwtun's left on a device.
    let att = json(&["-n", &a, "xdp", "attach", "to1", "--mode", "generic"]);
    let left = json(&["-n", &a, "leftovers"]);
    assert_eq!(
        left["xdp"],
        json!([{"dev": "to1", "program_id": att["program_id"]}])
    );
    // An LWT nexthop object a library user persisted (its program stays loaded with it).
    {
        use lwtun::program::{Hook, LwtCounter};
        let counter = LwtCounter::load().unwrap();
        let mut nl = lwtun::netlink::Netlink::open_in(net.ns(0)).unwrap();
        let kept = lwtun::nexthop::LwtNexthop::new(Some(4711))
            .device(&net.device(0, "to1"))
            .program(Hook::Xmit, counter.program(Hook::Xmit))
            .install(&mut nl)
            .unwrap()
            .persist();
        assert_eq!(kept.id, 4711);
    }
    let left = json(&["-n", &a, "leftovers"]);
    assert_eq!(
        left["nexthops"],
        json!([{"id": 4711, "dev": "to1"}]),
        "{left}"
    );
    let removed = json(&["-n", &a, "leftovers", "--remove"]);
    assert_eq!(removed["removed_routes"], 1, "{removed}");
    assert_eq!(removed["removed_xdp"], 1, "{removed}");
    assert_eq!(removed["removed_nexthops"], 1, "{removed}");
    let left = json(&["-n", &a, "leftovers"]);
    assert_eq!(left["routes"], json!([]));
    assert_eq!(left["xdp"], json!([]));
    assert_eq!(left["nexthops"], json!([]));
    assert!(!common::ip(net.ns(0), &["nexthop", "show"]).contains("4711"));
    assert!(lwtun::xdp::XdpAttachment::query(&net.device(0, "to1"))
        .unwrap()
        .is_empty());
    ok(&["-n", &a, "tunnel", "unload", "--pin", p]);
    assert!(!pin.0.exists());
}

#[test]
fn adopts_a_library_users_pins_and_large_batches() {
    require!();
    let pin = common::PinDir::new("library");
    let p = pin.arg();
    {
        let mut tunnel = Tunnel::builder()
            .pin(&pin.0)
            .capacity(30_000)
            .load()
            .unwrap();
        tunnel
            .peers_mut()
            .insert(
                "fd20::/64".parse().unwrap(),
                EncapPeer::new(
                    "fd77::2".parse().unwrap(),
                    "fd77::1".parse().unwrap(),
                    Encap::Udp { port: 5555 },
                )
                .inherit_ttl(),
            )
            .unwrap();
        tunnel.keep_pinned();
    }
    let show = json(&["tunnel", "show", "--pin", p]);
    assert_eq!(show["adopted"], true);
    assert_eq!(show["capacity"], 30_000);
    assert_eq!(show["peers_v6"], 1);
    assert_eq!(
        json(&["peer", "show", "--pin", p]),
        json!([{
            "prefix": "fd20::/64", "remote": "fd77::2", "local": "fd77::1", "encap": "udp",
            "gre_key": null, "gre_checksum": false, "udp_port": 5555, "ttl": "inherit", "tos": 0
        }])
    );
    // 20 000 peers from one file in one batch.
    let text: String = (0..20_000u32)
        .map(|i| {
            format!(
                "10.{}.{}.{}/32 remote 192.0.2.{} local 192.0.2.254 encap gre key {i}\n",
                64 + i / 65_536,
                (i / 256) % 256,
                i % 256,
                i % 250 + 1
            )
        })
        .collect();
    let file = TempFile::new("large", &text);
    // On a terminal (script(1) gives the command one) a large file shows a progress bar, also
    // when its last line is bad; with -j it does not. Nothing is applied either way.
    let bad = TempFile::new(
        "large-bad",
        &format!("{text}10.99.0.0/16 remote 192.0.2.1 local 192.0.2.254 encap gre key x\n"),
    );
    let on_terminal = |json: bool| {
        let out = std::process::Command::new("script")
            .args(["-qec"])
            .arg(format!(
                "{} {} peer add --pin {p} -b {}",
                env!("CARGO_BIN_EXE_lwtun"),
                if json { "-j" } else { "" },
                bad.arg()
            ))
            .arg("/dev/null")
            .output()
            .expect("run script(1)");
        assert_eq!(out.status.code(), Some(7), "invalid input: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = on_terminal(false);
    assert!(shown.contains("checking peers"), "{shown:?}");
    assert!(shown.contains(&format!("{}:20001", bad.arg())), "{shown:?}");
    let shown = on_terminal(true);
    assert!(!shown.contains("checking peers"), "{shown:?}");
    assert!(shown.contains(&format!("{}:20001", bad.arg())), "{shown:?}");
    assert_eq!(json(&["tunnel", "show", "--pin", p])["peers_v4"], 0);
    let t = std::time::Instant::now();
    let out = lwtun(&["-j", "peer", "add", "--pin", p, "-b", file.arg()]);
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "no bar when stderr is no terminal");
    let added: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(added["added"], 20_000);
    eprintln!("lwtun peer add -b with 20000 peers: {:?}", t.elapsed());
    let show = json(&["tunnel", "show", "--pin", p]);
    assert_eq!(show["peers_v4"], 20_000);
    assert_eq!(show["peers_v6"], 1);
    let peers = json(&["peer", "show", "--pin", p]);
    let one = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["prefix"] == "10.64.1.7/32")
        .unwrap();
    assert_eq!(one["gre_key"], 263);
    // The library adopts the command's batch.
    {
        let mut tunnel = Tunnel::builder().pin(&pin.0).load().unwrap();
        assert_eq!(tunnel.peers().len(), 20_001);
        tunnel.keep_pinned();
    }
    ok(&["tunnel", "unload", "--pin", p]);
    assert!(!pin.0.exists());
}
