//! `lwtun monitor` as an operator runs it: started as a process in a namespace of the test's
//! own, it prints one JSON object per route change made by another process (`ip`), each once
//! and in order, flushed as it happens; `--count N` ends it after N events.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lwtun::netns::NetNs;
use serde_json::Value;

fn ip(ns: &NetNs, args: &str) -> String {
    common::ip(ns, &args.split_whitespace().collect::<Vec<_>>())
}

/// `lwtun -n NS ARGS` with its stdout read line by line on a thread.
fn spawn(ns: &NetNs, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lwtun"))
        .arg("-n")
        .arg(ns.name())
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run lwtun monitor");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Adds routes 10.89.0.0/24 with growing metrics until the monitor prints one: then it is
/// subscribed. Returns the lines read so far.
fn wait_subscribed(ns: &NetNs, rx: &mpsc::Receiver<String>) -> Vec<String> {
    let deadline = Instant::now() + common::patient(Duration::from_secs(10));
    for metric in 1.. {
        assert!(Instant::now() < deadline, "lwtun monitor printed nothing");
        ip(
            ns,
            &format!("route add 10.89.0.0/24 dev d0 metric {metric}"),
        );
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            return vec![line];
        }
    }
    unreachable!()
}

fn with_device(prefix: &str) -> NetNs {
    let ns = common::netns(prefix);
    ip(&ns, "link add d0 type veth peer name d0p");
    ip(&ns, "link set d0p up");
    ip(&ns, "link set d0 up");
    ns
}

#[test]
fn json_events_of_route_changes_come_once_in_order() {
    require!();
    let ns = with_device("clim");
    let (mut child, rx) = spawn(&ns, &["-j", "monitor", "route"]);
    let mut lines = wait_subscribed(&ns, &rx);

    ip(&ns, "route add 10.91.0.0/24 dev d0");
    ip(&ns, "route replace 10.91.0.0/24 dev d0 mtu 1400");
    ip(&ns, "-6 route add fd91::/64 dev d0");
    ip(&ns, "route del 10.91.0.0/24");
    ip(&ns, "-6 route del fd91::/64");
    while let Ok(line) = rx.recv_timeout(common::patient(Duration::from_millis(700))) {
        lines.push(line);
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for pair in events.windows(2) {
        assert_eq!(
            pair[1]["seq"].as_u64().unwrap(),
            pair[0]["seq"].as_u64().unwrap() + 1,
            "{lines:#?}"
        );
    }
    let ours: Vec<String> = events
        .iter()
        .filter(|e| ["10.91.0.0/24", "fd91::/64"].contains(&e["dst"].as_str().unwrap_or("")))
        .map(|e| {
            assert_eq!(e["kind"], "route");
            assert_eq!(e["dev"], "d0", "{e}");
            assert!(e["time"].as_f64().unwrap() > 1e9, "{e}");
            format!(
                "{} {} {}",
                e["action"].as_str().unwrap(),
                e["dst"].as_str().unwrap(),
                e["mtu"]
            )
        })
        .collect();
    assert_eq!(
        ours,
        [
            "add 10.91.0.0/24 null",
            "change 10.91.0.0/24 1400",
            "add fd91::/64 null",
            "del 10.91.0.0/24 1400",
            "del fd91::/64 null"
        ],
        "{lines:#?}"
    );
}

#[test]
fn count_ends_the_monitor_and_lines_are_ip_monitor_words() {
    require!();
    let ns = with_device("clic");
    let (mut child, rx) = spawn(&ns, &["monitor", "route", "--count", "2"]);
    let mut lines = wait_subscribed(&ns, &rx);
    let deadline = Instant::now() + common::patient(Duration::from_secs(10));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "--count 2 did not end the monitor"
        );
        ip(&ns, "route add 10.92.0.0/24 dev d0 metric 7");
        let _ = ip(&ns, "route del 10.92.0.0/24 dev d0 metric 7");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    lines.extend(rx.iter());
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].starts_with("route add 10.89.0.0/24 dev d0 metric "),
        "{lines:#?}"
    );
    assert!(lines[1].starts_with("route "), "{lines:#?}");
    let e = cli::fails(&["-n", ns.name(), "monitor", "routes"]);
    assert!(e.contains("unknown event kind 'routes'"), "{e}");
}

/// `lwtun peer ARGS --pin DIR` to success, returning its pid.
fn peer_edit(pin: &str, args: &[&str]) -> u32 {
    let mut all = vec!["peer", args[0], "--pin", pin];
    all.extend(&args[1..]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_lwtun"))
        .args(&all)
        .spawn()
        .expect("run lwtun peer");
    let pid = child.id();
    assert!(child.wait().unwrap().success(), "lwtun {all:?} failed");
    pid
}

#[test]
fn json_peer_events_of_another_process_come_once_in_order() {
    require!();
    let ns = with_device("clipe");
    let pin = common::PinDir::new("cli-monpeer");
    let p = pin.arg();
    cli::ok(&["tunnel", "load", "--pin", p]);
    let probe = |key: u32| {
        let key = key.to_string();
        peer_edit(
            p,
            &[
                if key == "0" { "add" } else { "replace" },
                "10.89.0.0/24",
                "remote",
                "10.77.0.9",
                "local",
                "10.77.0.1",
                "encap",
                "gre",
                "key",
                &key,
            ],
        );
    };
    probe(0);
    let (mut child, rx) = spawn(&ns, &["-j", "monitor", "peer", "--pin", p]);
    // Replaced until the monitor prints one: then it watches the journal.
    let deadline = Instant::now() + common::patient(Duration::from_secs(10));
    for key in 1.. {
        assert!(Instant::now() < deadline, "lwtun monitor printed nothing");
        probe(key);
        if rx.recv_timeout(Duration::from_millis(300)).is_ok() {
            break;
        }
    }
    while rx.recv_timeout(Duration::from_millis(100)).is_ok() {}

    let gre = [
        "10.20.0.0/16",
        "remote",
        "10.77.0.2",
        "local",
        "10.77.0.1",
        "encap",
        "gre",
        "key",
        "7",
    ];
    let add = peer_edit(p, &[&["add"][..], &gre[..]].concat());
    let udp = [
        "10.20.0.0/16",
        "remote",
        "10.77.0.3",
        "local",
        "10.77.0.1",
        "encap",
        "udp",
        "port",
        "5555",
    ];
    let replace = peer_edit(p, &[&["replace"][..], &udp[..]].concat());
    let del = peer_edit(p, &["del", "10.20.0.0/16"]);
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(common::patient(Duration::from_millis(700))) {
        lines.push(line);
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let got: Vec<String> = events
        .iter()
        .map(|e| {
            assert_eq!(e["kind"], "peer", "{e}");
            assert_eq!(e["pin"], p, "{e}");
            assert_eq!(e["comm"], "lwtun", "{e}");
            assert!(
                e["written"].as_f64().unwrap() <= e["time"].as_f64().unwrap(),
                "{e}"
            );
            format!(
                "{} {} {} {} {} {} old {} pid {}",
                e["action"].as_str().unwrap(),
                e["prefix"].as_str().unwrap(),
                e["remote"].as_str().unwrap(),
                e["encap"].as_str().unwrap(),
                e["gre_key"],
                e["udp_port"],
                e["old"]["remote"],
                e["pid"]
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            format!("add 10.20.0.0/16 10.77.0.2 gre 7 null old null pid {add}"),
            format!("change 10.20.0.0/16 10.77.0.3 udp null 5555 old \"10.77.0.2\" pid {replace}"),
            format!("del 10.20.0.0/16 10.77.0.3 udp null 5555 old null pid {del}"),
        ],
        "{lines:#?}"
    );
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["journal_seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    // A folder without a tunnel, and peers without a folder: refused, saying what to do.
    let none = common::PinDir::new("cli-monpeer-none");
    let e = cli::fails_with(&["monitor", "peer", "--pin", none.arg()], 3);
    assert!(
        e.contains(&format!("lwtun tunnel load --pin {}", none.arg())),
        "{e}"
    );
    let e = cli::fails_with(&["-n", ns.name(), "monitor", "peer"], 7);
    assert!(e.contains("--pin DIR"), "{e}");
    cli::ok(&["tunnel", "unload", "--pin", p]);
}
