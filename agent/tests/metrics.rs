//! The agent's metrics endpoint end to end: two `lwtun-agent` processes with a real etcd, their
//! data planes in two namespaces on one underlay bridge (as in tests/fleet.rs), each serving
//! `--metrics-address` on loopback. The test reads /readyz before the first sync (503) and
//! after (200), pings between the hosts' service addresses and checks the per-peer counters of
//! both tables (packets exactly the pings, bytes the inner packets), the decap's counters, a
//! refused record counted with its reason, and that every line of /metrics is a comment or a
//! `name{labels} value` sample.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client;
use lwtun::netns::NetNs;
use support::{free_port, runtime, Etcd, TempDir};

/// Pings sent each way.
const N: u32 = 7;
/// An ICMP echo of ping's default 56 bytes of data: 20 (IPv4) + 8 (ICMP) + 56.
const ECHO_BYTES: u64 = 84;

/// One agent process, SIGKILLed when dropped, and its metrics address.
struct AgentProc {
    child: Child,
    port: u16,
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pin folder on bpffs, removed when dropped.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `GET path` on 127.0.0.1:port, HTTP/1.0 (the server closes after the answer): the status
/// code and the body, or `None` while nothing listens.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// The samples of a scrape: `name{labels}` → value. Panics on a line that is neither a
/// comment nor a sample.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(
                labels.ends_with('}')
                    && labels[1..labels.len() - 1]
                        .split("\",")
                        .all(|kv| kv.contains("=\"")),
                "bad labels in {line:?}"
            );
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
        out.insert(series.to_string(), v);
    }
    out
}

fn scrape(port: u16) -> (String, BTreeMap<String, f64>) {
    let (code, text) = get(port, "/metrics").expect("metrics endpoint answers");
    assert_eq!(code, 200, "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    let s = samples(&text);
    (text, s)
}

fn wait_for<T>(what: &str, logs: &dyn Fn() -> String, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "{what}: not reached\n{}", logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_count_the_traffic_and_readyz_follows_the_sync() {
    if !common::privileged("metrics_count_the_traffic_and_readyz_follows_the_sync")
        || !support::etcd_installed("metrics_count_the_traffic_and_readyz_follows_the_sync")
    {
        return;
    }
    let dir = TempDir::new("metrics");
    let mut etcd = Etcd::start(&dir.0);
    let fleet = format!("m{}", std::process::id());
    let pins = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/lwtun-agent-metrics-{}",
        std::process::id()
    )));
    let underlay = common::netns("mul");
    common::ip(&underlay, &["link", "add", "br0", "type", "bridge"]);
    common::ip(&underlay, &["link", "set", "br0", "up"]);
    let mut hosts: Vec<NetNs> = Vec::new();
    for i in 0..2 {
        let ns = common::netns(&format!("mh{i}"));
        let port = format!("mh{i}");
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
                &format!("10.99.0.{}/24", i + 1),
                "dev",
                "ul0",
            ],
        );
        common::ip(&ns, &["link", "set", "ul0", "up"]);
        common::ip(
            &ns,
            &["addr", "add", &format!("10.200.{i}.1/32"), "dev", "lo"],
        );
        common::wait_oper_up(&ns, &["ul0".to_string()]);
        common::wait_oper_up(&underlay, &[port]);
        hosts.push(ns);
    }
    // etcd is down when the first agent starts: its endpoint serves, not ready
    etcd.kill();
    let url = etcd.url();
    let start = |i: usize| -> AgentProc {
        let port = free_port();
        let log = dir.0.join(format!("mh{i}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_lwtun-agent"))
            .args(["--etcd", &url, "--fleet", &fleet])
            .args(["--host", &format!("mh{i}")])
            .args(["--endpoint", &format!("10.99.0.{}", i + 1)])
            .args(["--encap", "udp", "--udp-port", "6081"])
            .args(["--prefix", &format!("10.200.{i}.0/24")])
            .args(["--steer", "10.192.0.0/10"])
            .args(["--source", &format!("10.200.{i}.1")])
            .args(["--device", "ul0", "--netns", hosts[i].name()])
            .args(["--lease-ttl", "3"])
            .args(["--metrics-address", &format!("127.0.0.1:{port}")])
            .arg("--pin")
            .arg(pins.0.join(format!("mh{i}")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        AgentProc { child, port }
    };
    let mut agents = vec![start(0)];
    let logs = || -> String {
        (0..2)
            .map(|i| std::fs::read_to_string(dir.0.join(format!("mh{i}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let p0 = agents[0].port;
    let (code, why) = wait_for("the endpoint answers", &logs, || get(p0, "/readyz"));
    assert_eq!(code, 503, "ready without etcd: {why}");
    assert!(
        why.starts_with("initial sync not done") && why.lines().count() == 1,
        "{why}"
    );
    // alive all the same
    let (code, body) = get(p0, "/healthz").unwrap();
    assert_eq!(code, 200, "{body}");
    let (_, s) = scrape(p0);
    assert_eq!(s["lwtun_agent_etcd_connected"], 0.0);

    etcd.restart();
    agents.push(start(1));
    for a in &agents {
        let port = a.port;
        // ready, with the other host's peer
        let s = wait_for("ready with one peer", &logs, || {
            get(port, "/readyz").filter(|(c, _)| *c == 200)?;
            let (_, s) = scrape(port);
            (s["lwtun_agent_peers{family=\"ipv4\"}"] == 1.0).then_some(s)
        });
        assert_eq!(s["lwtun_agent_etcd_connected"], 1.0);
        assert_eq!(s["lwtun_agent_peers{family=\"ipv4\"}"], 1.0, "{s:?}");
        assert_eq!(s["lwtun_agent_decap_peers"], 1.0);
        assert_eq!(s["lwtun_agent_dataplane_readable"], 1.0);
        assert!(s["lwtun_agent_reconcile_runs_total{kind=\"full\"}"] >= 1.0);
    }
    let peer0 = "lwtun_agent_peer_packets_total{prefix=\"10.200.1.0/24\",host=\"mh1\"}";
    let peer1 = "lwtun_agent_peer_packets_total{prefix=\"10.200.0.0/24\",host=\"mh0\"}";
    let bytes0 = "lwtun_agent_peer_bytes_total{prefix=\"10.200.1.0/24\",host=\"mh1\"}";
    let udp1 = "lwtun_agent_decap_packets_total{verdict=\"udp\"}";
    let (_, before0) = scrape(agents[0].port);
    let (_, before1) = scrape(agents[1].port);

    // N echo requests mh0 → mh1 and their N replies mh1 → mh0, all through the tunnels
    let p = common::ping(&hosts[0], "10.200.1.1".parse().unwrap(), N);
    assert_eq!(p.received, N, "{}\n{}", p.output, logs());
    let (_, after0) = scrape(agents[0].port);
    let (text1, after1) = scrape(agents[1].port);
    assert_eq!(
        after0[peer0] - before0[peer0],
        f64::from(N),
        "mh0's peer for mh1"
    );
    assert_eq!(
        after0[bytes0] - before0[bytes0],
        (u64::from(N) * ECHO_BYTES) as f64,
        "inner bytes of {N} echo requests"
    );
    assert_eq!(
        after1[peer1] - before1[peer1],
        f64::from(N),
        "mh1's peer for mh0 (the replies)"
    );
    assert!(
        after1[udp1] - before1[udp1] >= f64::from(N),
        "mh1 decapsulated fewer than {N} UDP packets:\n{text1}"
    );
    assert_eq!(
        after0["lwtun_agent_peer_errors_total{prefix=\"10.200.1.0/24\",host=\"mh1\"}"],
        0.0
    );
    // Every encapsulated request left either direct or rerouted, and the check reports.
    let path = |s: &BTreeMap<String, f64>, p: &str| {
        s[&format!("lwtun_agent_tunnel_path_packets_total{{path=\"{p}\"}}")]
    };
    assert_eq!(
        path(&after0, "direct") + path(&after0, "rerouted")
            - path(&before0, "direct")
            - path(&before0, "rerouted"),
        f64::from(N),
        "direct + rerouted = the {N} requests"
    );
    assert_eq!(after0["lwtun_agent_direct_checking"], 1.0, "{after0:?}");
    assert_eq!(
        after0["lwtun_agent_direct_remotes{state=\"direct\"}"]
            + after0["lwtun_agent_direct_remotes{state=\"rerouted\"}"],
        1.0,
        "mh1's one endpoint"
    );
    for k in [
        "lwtun_agent_tunnel_misses_total{family=\"ipv4\",verdict=\"dropped\"}",
        "lwtun_agent_tunnel_drops_total{reason=\"not_ip\"}",
        "lwtun_agent_decap_packets_total{verdict=\"unknown_peer\"}",
    ] {
        assert!(after0.contains_key(k), "{k} missing");
    }
    assert!(after0["lwtun_agent_convergence_seconds_count"] >= 1.0);
    // the first keep-alive tick (TTL/3 = 1 s) asked for the watch's progress
    let s = wait_for("a watch lag sample", &logs, || {
        let (_, s) = scrape(p0);
        (s["lwtun_agent_etcd_watch_lag_seconds_count"] >= 1.0).then_some(s)
    });
    assert!(s["lwtun_agent_etcd_watch_lag_seconds_sum"] < 1.0, "{s:?}");

    // a host that publishes garbage is counted with its reason
    let rt = runtime();
    let mut client = rt.block_on(Client::connect([etcd.url()], None)).unwrap();
    rt.block_on(client.put(
        format!("/lwtun/fleet/{fleet}/hosts/bad"),
        "{\"endpoint\":",
        None,
    ))
    .unwrap();
    let port = agents[0].port;
    let s = wait_for("the refusal counted", &logs, || {
        let (_, s) = scrape(port);
        s.contains_key("lwtun_agent_records_rejected_total{reason=\"json\"}")
            .then_some(s)
    });
    assert_eq!(
        s["lwtun_agent_records_rejected_total{reason=\"json\"}"],
        1.0
    );
    assert_eq!(s["lwtun_agent_records_refused{reason=\"json\"}"], 1.0);
    assert_eq!(
        s["lwtun_agent_peers{family=\"ipv4\"}"], 1.0,
        "the table kept mh1"
    );
    assert_eq!(get(port, "/readyz").unwrap().0, 200);

    // etcd goes away: not ready, the table kept; ready again as soon as the watch resumes
    etcd.kill();
    let (_, why) = wait_for("503 while etcd is down", &logs, || {
        get(port, "/readyz").filter(|(c, _)| *c == 503)
    });
    assert!(
        why.starts_with("not connected to etcd: ") && why.lines().count() == 1,
        "{why}"
    );
    let (_, s) = scrape(port);
    assert_eq!(s["lwtun_agent_etcd_connected"], 0.0);
    assert_eq!(s["lwtun_agent_peers{family=\"ipv4\"}"], 1.0, "table kept");
    assert_eq!(get(port, "/healthz").unwrap().0, 200);
    etcd.restart();
    wait_for("ready after etcd's restart", &logs, || {
        get(port, "/readyz").filter(|(c, _)| *c == 200)
    });
    let mut client = rt.block_on(Client::connect([etcd.url()], None)).unwrap();

    // a large host: one series per peer, all read at the scrape (timed)
    let many: Vec<String> = (0..10_000u32)
        .map(|k| format!("\"10.{}.{}.0/24\"", 210 + k / 256, k % 256))
        .collect();
    rt.block_on(client.put(
        format!("/lwtun/fleet/{fleet}/hosts/big"),
        format!(
            r#"{{"endpoint":"10.99.0.50","encap":"ipip","prefixes":[{}]}}"#,
            many.join(",")
        ),
        None,
    ))
    .unwrap();
    wait_for("10 001 peers", &logs, || {
        let (_, s) = scrape(port);
        (s["lwtun_agent_peers{family=\"ipv4\"}"] == 10_001.0).then_some(())
    });
    let t = Instant::now();
    let (text, s) = scrape(port);
    let took = t.elapsed();
    let series = s
        .keys()
        .filter(|k| k.starts_with("lwtun_agent_peer_packets_total{") && k.contains("host=\"big\""))
        .count();
    assert_eq!(series, 10_000);
    eprintln!(
        "figure: /metrics with 10 001 peers: {:.1} ms, {} KiB",
        took.as_secs_f64() * 1e3,
        text.len() / 1024
    );
    rt.block_on(client.delete(format!("/lwtun/fleet/{fleet}/hosts/big"), None))
        .unwrap();

    // mh1 stops: mh0 is ready again once its table dropped mh1's prefix
    drop(agents.pop());
    let s = wait_for("mh1's peer gone", &logs, || {
        let (_, s) = scrape(port);
        (s["lwtun_agent_peers{family=\"ipv4\"}"] == 0.0).then_some(s)
    });
    assert!(!s.contains_key(peer0), "{s:?}");
    assert_eq!(get(port, "/readyz").unwrap().0, 200);
}

/// A busy `--metrics-address` is a start error naming the flag, before the data plane loads (no
/// privileges or etcd needed: the agent stops before using either).
#[test]
fn a_busy_metrics_address_fails_at_start_in_one_line() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap().to_string();
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_lwtun-agent"))
        .args([
            "--etcd",
            "http://127.0.0.1:1",
            "--fleet",
            "f",
            "--host",
            "h",
        ])
        .args(["--endpoint", "10.99.0.1", "--steer", "10.192.0.0/10"])
        .args(["--source", "10.200.0.1", "--device", "nosuchdev0"])
        .args(["--netns", "lwtun-no-such-namespace"])
        .args(["--metrics-address", &address])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    // One line, as every log line: timestamp, level, host, then the error naming the flag.
    let lines: Vec<_> = err.lines().collect();
    let want = format!(
        "ERROR agent{{host=h}}: listen on --metrics-address {address}: Address already in use (os error 98)"
    );
    assert!(
        lines.len() == 1 && lines[0].ends_with(&want) && lines[0].starts_with("20"),
        "took {:?}; want one line ending `{want}`, got:\n{err}",
        t.elapsed()
    );
}
