//! The `lwtun` edit commands at `ip` speed, end to end with the real binary in namespaces made
//! here: `peer add|del|replace` and `route add|del|replace` edit the pinned tables and take the
//! pinned program without loading one (the route's program is the one the load pinned), each
//! has a `-b FILE` form, `lwtun -batch FILE` runs mixed edits checked whole first, and `tunnel
//! resize` grows the tables while a ping flow runs through the tunnel without losing a packet.
//!
//! ```text
//!  A (10.30.0.1 on lo)  to1 ══ veth ══ to0  B (10.20.0.2 on lo)
//!     10.77.0.1                              10.77.0.2, decap at tc ingress of to0
//! ```

#[path = "common/cli.rs"]
mod cli;
mod common;

use cli::{fails, json, ok, ping_b, pinned_program_id, setup, TempFile};

use lwtun::tunnel::Tunnel;
use serde_json::Value;

/// The xmit program id of the lwtun route to `dst` in `ns` (`lwtun route show`).
fn route_program(ns: &str, dst: &str) -> Option<u64> {
    let routes = json(&["-n", ns, "route", "show"]);
    routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dst"] == dst)
        .map(|r| r["hooks"][0]["program_id"].as_u64().unwrap())
}

fn peer_words<'a>(prefix: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut w = vec![prefix, "remote", "10.77.0.2", "local", "10.77.0.1", "encap"];
    w.extend_from_slice(extra);
    w
}

#[test]
fn single_edits_use_the_pins_and_replace_changes_in_place() {
    require!();
    let (net, _decap) = setup();
    let a = net.ns(0).name().to_string();
    let pin = common::PinDir::new("edit");
    let p = pin.arg();
    ok(&["-n", &a, "tunnel", "load", "--pin", p]);
    let xmit = pinned_program_id(&pin.0.join("encap_xmit"));
    assert!(pin.0.join("encap_in").exists(), "the load pins encap_in");

    let mut add = vec!["-n", &a, "peer", "add", "--pin", p];
    add.extend(peer_words("10.20.0.0/16", &["gre", "key", "7"]));
    ok(&add);
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
    // The route runs the pinned program: nothing was loaded.
    assert_eq!(route["hooks"][0]["program_id"].as_u64(), Some(xmit));
    let ping = ping_b(&net, 3);
    assert_eq!(ping.received, 3, "{}", ping.output);

    // A second add is refused, naming the command that changes it, with its --pin.
    let err = fails(&add);
    assert!(
        err.contains(&format!("lwtun peer replace --pin {p} 10.20.0.0/16")),
        "{err}"
    );
    assert!(
        err.contains(&format!("lwtun peer del --pin {p} 10.20.0.0/16")),
        "{err}"
    );
    // peer replace changes it in place (the GRE key; B's decap takes any key).
    let mut replace = vec!["-n", &a, "peer", "replace", "--pin", p];
    replace.extend(peer_words("10.20.0.0/16", &["gre", "key", "9"]));
    ok(&replace);
    let peers = json(&["peer", "show", "--pin", p]);
    assert_eq!(peers.as_array().unwrap().len(), 1);
    assert_eq!(peers[0]["gre_key"], 9);
    // ... and adds one that is not there.
    let mut replace2 = vec!["peer", "replace", "--pin", p];
    replace2.extend(peer_words("10.21.0.0/16", &["ipip"]));
    ok(&replace2);
    assert_eq!(
        json(&["peer", "show", "--pin", p])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let ping = ping_b(&net, 3);
    assert_eq!(ping.received, 3, "after replace: {}", ping.output);

    // route add over an existing route is refused naming route replace; replace works.
    let route_args = |verb: &'static str| {
        vec![
            "-n",
            a.as_str(),
            "route",
            verb,
            "--pin",
            p,
            "10.20.0.0/16",
            "--dev",
            "to1",
            "--src",
            "10.30.0.1",
        ]
    };
    let err = fails(&route_args("add"));
    assert!(err.contains("route replace --pin"), "{err}");
    ok(&route_args("replace"));
    assert_eq!(route_program(&a, "10.20.0.0/16"), Some(xmit));
    let ping = ping_b(&net, 3);
    assert_eq!(ping.received, 3, "after route replace: {}", ping.output);

    // While a library process owns the folder, edits are refused naming it.
    {
        let mut owner = Tunnel::builder().pin(&pin.0).load().unwrap();
        let mut del = vec!["peer", "del", "--pin", p, "10.21.0.0/16"];
        let err = fails(&del);
        assert!(
            err.contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        owner.keep_pinned();
        drop(owner);
        del.insert(0, "-j");
        let out: Value = serde_json::from_str(&ok(&del)).unwrap();
        assert_eq!(out["deleted"], 1);
    }
    // The owner's load pinned its own program; new routes take that one.
    assert_ne!(pinned_program_id(&pin.0.join("encap_xmit")), xmit);

    ok(&["-n", &a, "route", "del", "10.20.0.0/16"]);
    assert_eq!(route_program(&a, "10.20.0.0/16"), None);
    let ping = ping_b(&net, 2);
    assert_eq!(ping.received, 0, "no route any more: {}", ping.output);
    ok(&["peer", "del", "--pin", p, "10.20.0.0/16"]);
    assert!(json(&["peer", "show", "--pin", p])
        .as_array()
        .unwrap()
        .is_empty());
    ok(&["-n", &a, "tunnel", "unload", "--pin", p]);
}

#[test]
fn a_folder_without_program_pins_still_takes_routes() {
    require!();
    let (net, _decap) = setup();
    let a = net.ns(0).name().to_string();
    let pin = common::PinDir::new("edit-old");
    let p = pin.arg();
    ok(&["-n", &a, "tunnel", "load", "--pin", p]);
    // What lwtun 0.2.0 left: the maps alone.
    for program in ["encap_xmit", "encap_in"] {
        std::fs::remove_file(pin.0.join(program)).unwrap();
    }
    let mut add = vec!["peer", "add", "--pin", p];
    add.extend(peer_words("10.20.0.0/16", &["ipip"]));
    ok(&add);
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
    // The route add loaded the tunnel once, which pinned the programs it now runs.
    let xmit = pinned_program_id(&pin.0.join("encap_xmit"));
    assert_eq!(route_program(&a, "10.20.0.0/16"), Some(xmit));
    let ping = ping_b(&net, 3);
    assert_eq!(ping.received, 3, "{}", ping.output);
    // --direct: no load pinned that variant yet, so this loads it once; then it is pinned.
    assert!(!pin.0.join("encap_xmit_direct").exists());
    let direct = [
        "-n",
        &a,
        "route",
        "replace",
        "--pin",
        p,
        "10.20.0.0/16",
        "--dev",
        "to1",
        "--src",
        "10.30.0.1",
        "--direct",
    ];
    ok(&direct);
    let direct_id = pinned_program_id(&pin.0.join("encap_xmit_direct"));
    assert_eq!(route_program(&a, "10.20.0.0/16"), Some(direct_id));
    ok(&direct);
    assert_eq!(
        pinned_program_id(&pin.0.join("encap_xmit_direct")),
        direct_id,
        "the second --direct route took the pinned program"
    );
    let ping = ping_b(&net, 3);
    assert_eq!(ping.received, 3, "direct: {}", ping.output);
    ok(&["-n", &a, "tunnel", "unload", "--pin", p]);
}

#[test]
fn every_edit_command_takes_a_batch_file() {
    require!();
    let (net, _decap) = setup();
    let a = net.ns(0).name().to_string();
    let pin = common::PinDir::new("edit-b");
    let p = pin.arg();
    ok(&["-n", &a, "tunnel", "load", "--pin", p]);
    let peers = |key: u32| -> String {
        (0..4)
            .map(|i| {
                format!(
                    "10.{}.0.0/16 remote 10.77.0.2 local 10.77.0.1 encap gre key {key}\n",
                    20 + i
                )
            })
            .collect()
    };
    let count = || {
        json(&["peer", "show", "--pin", p])
            .as_array()
            .unwrap()
            .len()
    };

    // peer add -b, then peer replace -b with the same prefixes and other keys.
    let add = TempFile::new("add", &peers(1));
    assert_eq!(
        json(&["peer", "add", "--pin", p, "-b", add.arg()])["added"],
        4
    );
    let replace = TempFile::new("replace", &format!("# new keys\n{}", peers(2)));
    assert_eq!(
        json(&["peer", "replace", "--pin", p, "-b", replace.arg()])["replaced"],
        4
    );
    let shown = json(&["peer", "show", "--pin", p]);
    assert!(
        shown.as_array().unwrap().iter().all(|v| v["gre_key"] == 2),
        "{shown}"
    );

    // route add -b: each line the arguments after --pin; a bad line applies nothing.
    let bad = TempFile::new(
        "routes-bad",
        "10.20.0.0/16 --dev to1 --src 10.30.0.1\n10.21.0.0/16 --dev nosuchdev --src 10.30.0.1\n",
    );
    let err = fails(&["-n", &a, "route", "add", "--pin", p, "-b", bad.arg()]);
    assert!(err.contains(&format!("{}:2", bad.arg())), "{err}");
    assert_eq!(route_program(&a, "10.20.0.0/16"), None, "nothing applied");
    let routes = TempFile::new(
        "routes",
        "10.20.0.0/16 --dev to1 --src 10.30.0.1\n10.21.0.0/16 --dev to1 --src 10.30.0.1\n",
    );
    ok(&["-n", &a, "route", "add", "--pin", p, "-b", routes.arg()]);
    let xmit = pinned_program_id(&pin.0.join("encap_xmit"));
    assert_eq!(route_program(&a, "10.21.0.0/16"), Some(xmit));
    ok(&["-n", &a, "route", "replace", "--pin", p, "-b", routes.arg()]);
    let ping = ping_b(&net, 3);
    assert_eq!(ping.received, 3, "{}", ping.output);

    // route del -b and peer del -b: a line that names nothing applies nothing.
    let dels = TempFile::new("route-dels", "10.20.0.0/16\n10.99.0.0/16\n");
    let err = fails(&["-n", &a, "route", "del", "-b", dels.arg()]);
    assert!(err.contains(&format!("{}:2", dels.arg())), "{err}");
    assert!(
        route_program(&a, "10.20.0.0/16").is_some(),
        "nothing applied"
    );
    let dels = TempFile::new("route-dels", "10.20.0.0/16\n10.21.0.0/16 --table 254\n");
    ok(&["-n", &a, "route", "del", "-b", dels.arg()]);
    assert_eq!(route_program(&a, "10.20.0.0/16"), None);
    assert_eq!(route_program(&a, "10.21.0.0/16"), None);

    let pdel = TempFile::new("peer-dels", "10.20.0.0/16\n# x\n10.20.0.0/16\n");
    let err = fails(&["peer", "del", "--pin", p, "-b", pdel.arg()]);
    assert!(
        err.contains(&format!("{}:3", pdel.arg())),
        "deleted twice: {err}"
    );
    assert_eq!(count(), 4, "nothing applied");
    let pdel = TempFile::new("peer-dels", "10.20.0.0/16\n10.21.0.0/16\n");
    assert_eq!(
        json(&["peer", "del", "--pin", p, "-b", pdel.arg()])["deleted"],
        2
    );
    assert_eq!(count(), 2);
    ok(&["-n", &a, "tunnel", "unload", "--pin", p]);
}

#[test]
fn a_mixed_batch_is_checked_whole_then_applied_in_order() {
    require!();
    let (net, _decap) = setup();
    let a = net.ns(0).name().to_string();
    let pin = common::PinDir::new("edit-batch");
    let p = pin.arg();
    ok(&["-n", &a, "tunnel", "load", "--pin", p]);
    let good = format!(
        "# peers, then the route into them\n\
         peer add --pin {p} 10.20.0.0/16 remote 10.77.0.2 local 10.77.0.1 encap gre key 5\n\
         peer add --pin {p} 10.22.0.0/16 remote 10.77.0.2 local 10.77.0.1 encap ipip\n\
         \n\
         route add --pin {p} 10.20.0.0/16 --dev to1 --src 10.30.0.1\n\
         peer replace --pin {p} 10.20.0.0/16 remote 10.77.0.2 local 10.77.0.1 encap ipip\n\
         peer del --pin {p} 10.22.0.0/16\n"
    );
    // Bad lines, each alone appended to the good ones: nothing at all is applied.
    for (bad, says) in [
        (format!("peer del --pin {p} 10.22.0.0/16"), "has no peer"),
        (
            format!("peer add --pin {p} 10.20.0.0/16 remote 10.77.0.2 local 10.77.0.1 encap ipip"),
            "peer replace --pin",
        ),
        ("tunnel show --pin /x".to_string(), "not an edit command"),
        (
            format!("peer add --pin {p} 10.23.0.0/16 remote 10.77.0.2"),
            "local",
        ),
        ("route frobnicate".to_string(), "frobnicate"),
        (
            format!("route add --pin {p} 10.24.0.0/16 --dev to1 --src 10.31.0.9"),
            "not an address of this host",
        ),
    ] {
        let file = TempFile::new("bad", &format!("{good}{bad}\n"));
        let err = fails(&["-n", &a, "-batch", file.arg()]);
        assert!(err.contains(&format!("{}:8", file.arg())), "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
        assert!(
            json(&["peer", "show", "--pin", p])
                .as_array()
                .unwrap()
                .is_empty(),
            "{bad}"
        );
        assert_eq!(route_program(&a, "10.20.0.0/16"), None, "{bad}");
    }
    let file = TempFile::new("good", &good);
    let done = json(&["-n", &a, "-batch", file.arg()]);
    assert_eq!(done["peers_added"], 2, "{done}");
    assert_eq!(done["peers_replaced"], 1, "{done}");
    assert_eq!(done["peers_deleted"], 1, "{done}");
    assert_eq!(done["routes_added"], 1, "{done}");
    let peers = json(&["peer", "show", "--pin", p]);
    assert_eq!(peers.as_array().unwrap().len(), 1);
    assert_eq!(peers[0]["encap"], "ipip");
    let ping = ping_b(&net, 3);
    assert_eq!(ping.received, 3, "{}", ping.output);

    // A failure while applying (a gateway the kernel finds unreachable) stops there and says
    // how much was applied.
    let file = TempFile::new(
        "late",
        &format!(
            "peer add --pin {p} 10.24.0.0/16 remote 10.77.0.2 local 10.77.0.1 encap ipip\n\
             route add --pin {p} 10.24.0.0/16 --dev to1 --via 10.99.0.1 --src 10.30.0.1\n\
             peer add --pin {p} 10.25.0.0/16 remote 10.77.0.2 local 10.77.0.1 encap ipip\n"
        ),
    );
    let err = fails(&["-n", &a, "--batch", file.arg()]);
    assert!(err.contains(&format!("{}:2", file.arg())), "{err}");
    assert!(err.contains("1 edit(s) before it were applied"), "{err}");
    let prefixes: Vec<String> = json(&["peer", "show", "--pin", p])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["prefix"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(prefixes, ["10.20.0.0/16", "10.24.0.0/16"]);
    ok(&["-n", &a, "tunnel", "unload", "--pin", p]);
}

#[test]
fn resize_grows_the_tables_under_traffic_without_a_loss() {
    require!();
    let (net, _decap) = setup();
    let a = net.ns(0).name().to_string();
    let pin = common::PinDir::new("edit-resize");
    let p = pin.arg();
    ok(&["-n", &a, "tunnel", "load", "--pin", p, "--capacity", "4"]);
    let peers: String = (0..4)
        .map(|i| {
            format!(
                "10.{}.0.0/16 remote 10.77.0.2 local 10.77.0.1 encap gre key {i}\n",
                20 + i
            )
        })
        .collect();
    let file = TempFile::new("peers", &peers);
    ok(&["peer", "add", "--pin", p, "-b", file.arg()]);
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
    let old_program = route_program(&a, "10.20.0.0/16").unwrap();
    let ping = ping_b(&net, 2);
    assert_eq!(ping.received, 2, "{}", ping.output);

    // The table is full: the refusal names the resize.
    let mut add = vec!["-n", &a, "peer", "add", "--pin", p];
    add.extend(peer_words("10.30.0.0/16", &["ipip"]));
    let err = fails(&add);
    assert!(
        err.contains(&format!("tunnel resize --pin {p} --capacity")),
        "{err}"
    );
    // So is a load asking for another capacity, with a non-zero exit.
    let err = fails(&[
        "-n",
        &a,
        "tunnel",
        "load",
        "--pin",
        p,
        "--capacity",
        "65536",
    ]);
    assert!(
        err.contains(&format!(
            "lwtun -n {a} tunnel resize --pin {p} --capacity 65536"
        )),
        "{err}"
    );

    // Resize while pings flow every 5 ms: none is lost. Run from this namespace, not the
    // route's: the route is found where it is.
    const FLOW: u32 = 400;
    let (flow, resized) = std::thread::scope(|s| {
        let flow = s.spawn(|| common::ping_flow(net.ns(0), "10.20.0.2", FLOW));
        std::thread::sleep(std::time::Duration::from_millis(600));
        let resized = json(&["tunnel", "resize", "--pin", p, "--capacity", "65536"]);
        (flow.join().unwrap(), resized)
    });
    assert_eq!(resized["routes_moved"], 1, "{resized}");
    let text = String::from_utf8_lossy(&flow.stdout);
    assert!(
        text.contains(&format!("{FLOW} packets transmitted, {FLOW} received")),
        "a packet was lost during the resize: {text}"
    );

    let show = json(&["-n", &a, "tunnel", "show", "--pin", p]);
    assert_eq!(show["capacity"], 65536, "{show}");
    assert_eq!(show["peers_v4"], 4, "{show}");
    let new_program = route_program(&a, "10.20.0.0/16").unwrap();
    assert_ne!(new_program, old_program, "the route runs the new program");
    assert_eq!(new_program, pinned_program_id(&pin.0.join("encap_xmit")));
    // The counters came along: every ping of the flow, and the two before it, went through.
    let stats = json(&["peer", "stats", "--pin", p, "10.20.0.0/16"]);
    let packets = stats["peers"][0]["packets"].as_u64().unwrap();
    assert!(packets >= u64::from(FLOW) + 2 - 5, "{stats}");
    // The grown table takes more peers, and edits still reach the route's program.
    ok(&add);
    let mut replace = vec!["peer", "replace", "--pin", p];
    replace.extend(peer_words("10.20.0.0/16", &["ipip"]));
    ok(&replace);
    let ping = ping_b(&net, 3);
    assert_eq!(ping.received, 3, "{}", ping.output);
    let stats = json(&["peer", "stats", "--pin", p, "10.20.0.0/16"]);
    assert!(
        stats["peers"][0]["packets"].as_u64().unwrap() >= packets + 3,
        "{stats}"
    );
    ok(&["-n", &a, "tunnel", "unload", "--pin", p]);
    assert!(!pin.0.exists());
}
