//! Several endpoints per host, with real traffic: three `lwtun-agent` processes against a real
//! etcd, hosts as namespaces on one bridged underlay that carries IPv4 and IPv6.
//!
//! h0 and h1 publish an IPv4 and an IPv6 endpoint (`--endpoint` twice); h2 has an IPv4
//! underlay only. Every host publishes an IPv4 and an IPv6 prefix (a service address in each)
//! and steers 10.192.0.0/10 and fd20::/16 into its tunnel. The test pings every service
//! address of every other host and checks, with captures on the underlay bridge, which outer
//! family carried it: between h0 and h1 the family of the inner packet (4in4, 6in6); to and
//! from h2 IPv4 (4in4, 6in4); never a plain ping on the underlay.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lwtun::netns::NetNs;
use lwtun_agent::status::Status;
use support::{Etcd, TempDir};

const PORT: &str = "6081";

struct Proc(Child, PathBuf);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn v4_endpoint(i: usize) -> String {
    format!("10.99.0.{}", i + 1)
}

fn v6_endpoint(i: usize) -> String {
    format!("fd99::{}", i + 1)
}

fn service(i: usize, v6: bool) -> String {
    if v6 {
        format!("fd20:{}::1", i + 1)
    } else {
        format!("10.200.{i}.1")
    }
}

fn prefix(i: usize, v6: bool) -> String {
    if v6 {
        format!("fd20:{}::/64", i + 1)
    } else {
        format!("10.200.{i}.0/24")
    }
}

#[test]
fn hosts_with_v4_and_v6_endpoints_reach_each_other_over_each_family() {
    let test = "hosts_with_v4_and_v6_endpoints_reach_each_other_over_each_family";
    if !common::privileged(test) || !support::etcd_installed(test) {
        return;
    }
    let dir = TempDir::new("endpoints");
    let etcd = Etcd::start(&dir.0);
    let pins = common::PinDir::new("agent-endpoints");
    let underlay = common::netns("ul");
    common::ip(&underlay, &["link", "add", "br0", "type", "bridge"]);
    common::ip(&underlay, &["link", "set", "br0", "up"]);
    // h0, h1: both families; h2: IPv4 only
    let dual = [true, true, false];
    let mut hosts: Vec<NetNs> = Vec::new();
    for (i, has_v6) in dual.iter().enumerate() {
        let ns = common::netns(&format!("ep{i}"));
        let port = format!("ep{i}");
        common::ip(
            &ns,
            &[
                "link",
                "add",
                "ul0",
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                underlay.name(),
            ],
        );
        common::ip(&underlay, &["link", "set", &port, "master", "br0", "up"]);
        common::ip(
            &ns,
            &[
                "addr",
                "add",
                &format!("{}/24", v4_endpoint(i)),
                "dev",
                "ul0",
            ],
        );
        if *has_v6 {
            common::ip(
                &ns,
                &[
                    "addr",
                    "add",
                    &format!("{}/64", v6_endpoint(i)),
                    "dev",
                    "ul0",
                    "nodad",
                ],
            );
        }
        common::ip(&ns, &["link", "set", "ul0", "up"]);
        common::add_loopback_addresses(&ns, &service(i, false), &service(i, true));
        common::wait_oper_up(&ns, &["ul0".to_string()]);
        common::wait_oper_up(&underlay, &[port]);
        hosts.push(ns);
    }
    let fleet = format!("ep{}", std::process::id());
    let mut agents = Vec::new();
    for (i, has_v6) in dual.iter().enumerate() {
        let status = dir.0.join(format!("h{i}.status"));
        let log = dir.0.join(format!("h{i}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lwtun-agent"));
        cmd.args(["--etcd", &etcd.url(), "--fleet", &fleet]).args([
            "--host",
            &format!("h{i}"),
            "--endpoint",
            &v4_endpoint(i),
        ]);
        if *has_v6 {
            cmd.args(["--endpoint", &v6_endpoint(i)]);
        }
        let child = cmd
            .args(["--encap", "udp", "--udp-port", PORT])
            .args(["--prefix", &prefix(i, false), "--prefix", &prefix(i, true)])
            .args(["--steer", "10.192.0.0/10", "--steer", "fd20::/16"])
            .args([
                "--source",
                &service(i, false),
                "--source",
                &service(i, true),
            ])
            .args(["--device", "ul0", "--netns", hosts[i].name()])
            .args(["--lease-ttl", "3", "--status"])
            .arg(&status)
            .arg("--pin")
            .arg(pins.0.join(format!("h{i}")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        agents.push(Proc(child, log));
    }
    let logs = || {
        agents
            .iter()
            .map(|a| std::fs::read_to_string(&a.1).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };

    // Each table: the other hosts' two prefixes, each to the endpoint of the expected family.
    let outer_v6 = |a: usize, b: usize, inner_v6: bool| inner_v6 && dual[a] && dual[b];
    let want = |i: usize| -> Vec<(String, String)> {
        let mut w: Vec<(String, String)> = (0..3)
            .filter(|j| *j != i)
            .flat_map(|j| {
                [false, true].map(|v6| {
                    let remote = if outer_v6(i, j, v6) {
                        v6_endpoint(j)
                    } else {
                        v4_endpoint(j)
                    };
                    (prefix(j, v6), remote)
                })
            })
            .collect();
        w.sort();
        w
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..3 {
        loop {
            let status = Status::read(&dir.0.join(format!("h{i}.status"))).ok();
            let mut table: Vec<(String, String)> = status
                .iter()
                .flat_map(|s| s.peers.iter().map(|p| (p.prefix.clone(), p.remote.clone())))
                .collect();
            table.sort();
            if table == want(i) {
                // decapsulates from every endpoint of the other hosts it can receive on
                let decap = status.unwrap().decap_peers.len();
                let expect: usize = (0..3)
                    .filter(|j| *j != i)
                    .map(|j| 1 + usize::from(dual[i] && dual[j]))
                    .sum();
                assert_eq!(decap, expect, "h{i}'s decap peers");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "h{i}'s table {table:?}, want {:?}\n{}",
                want(i),
                logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    for (a, from) in hosts.iter().enumerate() {
        for b in (0..3).filter(|b| *b != a) {
            for inner_v6 in [false, true] {
                let v6 = outer_v6(a, b, inner_v6);
                let (want_f, other_f) = if v6 { ("ip6", "ip") } else { ("ip", "ip6") };
                let carried = common::Capture::start(
                    &underlay,
                    "br0",
                    &format!("{want_f} and udp dst port {PORT}"),
                    2,
                );
                let wrong = common::Capture::start(
                    &underlay,
                    "br0",
                    &format!("{other_f} and udp dst port {PORT}"),
                    1,
                );
                let plain = common::Capture::start(
                    &underlay,
                    "br0",
                    "icmp or (icmp6 and (ip6[40] == 128 or ip6[40] == 129))",
                    1,
                );
                let to: IpAddr = service(b, inner_v6).parse().unwrap();
                let p = common::ping(from, to, 1);
                assert_eq!(p.received, 1, "h{a} -> {to}: {}\n{}", p.output, logs());
                let carried = carried.finish(Duration::from_secs(3));
                let wrong = wrong.finish(Duration::from_millis(100));
                let plain = plain.finish(Duration::from_millis(100));
                let what = format!(
                    "h{a} -> h{b} {}: want outer {want_f}",
                    if inner_v6 { "IPv6" } else { "IPv4" }
                );
                assert_eq!(carried.len(), 2, "{what}: request and reply: {carried:#?}");
                assert!(wrong.is_empty(), "{what}: outer {other_f} seen: {wrong:#?}");
                assert!(
                    plain.is_empty(),
                    "{what}: plain ping on the underlay: {plain:#?}"
                );
            }
        }
    }
    drop(agents);
}
