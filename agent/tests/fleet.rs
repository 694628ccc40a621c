//! The fleet agent end to end, with a real etcd (Debian's etcd-server, started here on free
//! loopback ports in a temporary data dir) and one `lwtun-agent` process per host.
//!
//! Hosts are namespaces on one underlay: a namespace holding a bridge, each host namespace with
//! a veth to it (10.99.0.N/24), a service address 10.200.N.1 on its loopback and the prefix
//! 10.200.N.0/24 published; every agent steers 10.192.0.0/10 into its tunnel (UDP encap, port
//! 6081) and decapsulates at tc ingress. The test checks that every host reaches every other
//! through the tunnels (encapsulated on the underlay, nothing plain), and that a host joining,
//! a prefix moving, a host dying (SIGKILL, lease expiry) and an etcd restart (with a compaction
//! an agent must resync across) are reflected in every table. It prints convergence figures
//! (etcd write → last table updated, from the agents' own status timestamps); it asserts no
//! timing.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, PutOptions};
use lwtun::netns::NetNs;
use lwtun_agent::status::{now_us, Status};
use support::{runtime, Etcd, TempDir};

const TTL: u32 = 3;
const PORT: &str = "6081";

/// One running agent; SIGKILLed when dropped.
struct AgentProc {
    host: String,
    child: Option<Child>,
    status: PathBuf,
    log: PathBuf,
    prefix_file: PathBuf,
}

impl AgentProc {
    fn status(&self) -> Option<Status> {
        Status::read(&self.status).ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().expect("agent running").id();
        // SAFETY: signalling our own child by its pid.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The test's world: the underlay, the hosts, etcd and the agents.
/// A pin folder on bpffs, removed when dropped (a SIGKILLed agent leaves its pins).
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// Field order is drop order: the agents stop before their namespaces and etcd go.
struct Fleet {
    agents: BTreeMap<usize, AgentProc>,
    etcd: Etcd,
    hosts: Vec<NetNs>,
    underlay: NetNs,
    dir: TempDir,
    pins: PinDir,
    name: String,
}

fn endpoint(i: usize) -> String {
    format!("10.99.0.{}", i + 1)
}

fn service(i: usize) -> String {
    format!("10.200.{i}.1")
}

fn prefix(i: usize) -> String {
    format!("10.200.{i}.0/24")
}

impl Fleet {
    fn new(n: usize) -> Fleet {
        let dir = TempDir::new("fleet");
        let etcd = Etcd::start(&dir.0);
        let underlay = common::netns("ul");
        common::ip(&underlay, &["link", "add", "br0", "type", "bridge"]);
        common::ip(&underlay, &["link", "set", "br0", "up"]);
        let mut f = Fleet {
            name: format!("t{}", std::process::id()),
            dir,
            etcd,
            underlay,
            hosts: Vec::new(),
            agents: BTreeMap::new(),
            pins: PinDir(PathBuf::from(format!(
                "/sys/fs/bpf/lwtun-agent-test-{}",
                std::process::id()
            ))),
        };
        for _ in 0..n {
            f.add_host();
        }
        f
    }

    /// A new host namespace wired to the bridge, with its service address.
    fn add_host(&mut self) -> usize {
        let i = self.hosts.len();
        let ns = common::netns(&format!("h{i}"));
        let port = format!("h{i}");
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
                self.underlay.name(),
            ],
        );
        common::ip(
            &self.underlay,
            &["link", "set", &port, "master", "br0", "up"],
        );
        common::ip(
            &ns,
            &["addr", "add", &format!("{}/24", endpoint(i)), "dev", "ul0"],
        );
        common::ip(&ns, &["link", "set", "ul0", "up"]);
        common::ip(
            &ns,
            &["addr", "add", &format!("{}/32", service(i)), "dev", "lo"],
        );
        common::wait_oper_up(&ns, &["ul0".to_string()]);
        common::wait_oper_up(&self.underlay, &[port]);
        self.hosts.push(ns);
        i
    }

    fn start_agent(&mut self, i: usize, extra_prefixes: &[&str]) {
        let host = format!("h{i}");
        let status = self.dir.0.join(format!("{host}.status"));
        let log = self.dir.0.join(format!("{host}.log"));
        let prefix_file = self.dir.0.join(format!("{host}.prefixes"));
        std::fs::write(&prefix_file, extra_prefixes.join("\n")).unwrap();
        let _ = std::fs::remove_file(&status);
        let child = Command::new(env!("CARGO_BIN_EXE_lwtun-agent"))
            .args(["--etcd", &self.etcd.url(), "--fleet", &self.name])
            .args(["--host", &host, "--endpoint", &endpoint(i)])
            .args(["--encap", "udp", "--udp-port", PORT])
            .args(["--prefix", &prefix(i), "--prefix-file"])
            .arg(&prefix_file)
            .args(["--steer", "10.192.0.0/10", "--source", &service(i)])
            .args(["--device", "ul0", "--netns", self.hosts[i].name()])
            .args(["--lease-ttl", &TTL.to_string(), "--status"])
            .arg(&status)
            .arg("--pin")
            .arg(self.pin(i))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.agents.insert(
            i,
            AgentProc {
                host,
                child: Some(child),
                status,
                log,
                prefix_file,
            },
        );
    }

    /// Host `i`'s pin folder of its peer tables.
    fn pin(&self, i: usize) -> PathBuf {
        self.pins.0.join(format!("h{i}"))
    }

    /// The IPv4 peers in host `i`'s kernel table, as bpftool dumps the pinned map.
    fn kernel_peers(&self, i: usize) -> usize {
        let out = Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(self.pin(i).join("peers_v4"))
            .output()
            .expect("run bpftool");
        assert!(
            out.status.success(),
            "bpftool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        entries.len()
    }

    fn logs(&self) -> String {
        self.agents
            .values()
            .map(|a| format!("--- {} ---\n{}", a.host, a.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until `done` holds for every running agent's status, and returns the statuses.
    fn wait_all(
        &self,
        what: &str,
        timeout: Duration,
        poll: Duration,
        done: impl Fn(usize, &Status) -> bool,
    ) -> BTreeMap<usize, Status> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut all = BTreeMap::new();
            let mut missing = Vec::new();
            for (i, a) in &self.agents {
                if a.child.is_none() {
                    continue;
                }
                match a.status() {
                    Some(s) if done(*i, &s) => {
                        all.insert(*i, s);
                    }
                    other => missing.push((a.host.clone(), other)),
                }
            }
            if missing.is_empty() {
                return all;
            }
            if Instant::now() > deadline {
                let brief: Vec<String> = missing
                    .iter()
                    .map(|(h, s)| match s {
                        Some(s) => format!(
                            "{h}: revision {} peers {:?} error {:?}",
                            s.revision,
                            s.peers
                                .iter()
                                .take(8)
                                .map(|p| (&p.prefix, &p.remote))
                                .collect::<Vec<_>>(),
                            s.last_error
                        ),
                        None => format!("{h}: no status"),
                    })
                    .collect();
                panic!(
                    "{what}: not reached after {timeout:?}:\n{}\n{}",
                    brief.join("\n"),
                    self.logs()
                );
            }
            std::thread::sleep(poll);
        }
    }

    fn client(&self, rt: &tokio::runtime::Runtime) -> Client {
        rt.block_on(Client::connect([self.etcd.url()], None))
            .unwrap()
    }

    fn key(&self, host: &str) -> String {
        format!("/lwtun/fleet/{}/hosts/{host}", self.name)
    }
}

/// A status's table as prefix → remote.
fn table(s: &Status) -> BTreeMap<String, String> {
    s.peers
        .iter()
        .map(|p| (p.prefix.clone(), p.remote.clone()))
        .collect()
}

/// The table host `i` should have when `hosts` run (each with its own prefix).
fn expected(i: usize, hosts: &[usize]) -> BTreeMap<String, String> {
    hosts
        .iter()
        .filter(|j| **j != i)
        .map(|j| (prefix(*j), endpoint(*j)))
        .collect()
}

/// The latest table update over `statuses`, in µs after `t0_us`.
fn spread(statuses: &BTreeMap<usize, Status>, t0_us: u64) -> Duration {
    let last = statuses
        .values()
        .map(|s| s.updated_at_us)
        .max()
        .unwrap_or(t0_us);
    Duration::from_micros(last.saturating_sub(t0_us))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Every host pings every other host's service address; all answered, and the underlay saw
/// only UDP-encapsulated traffic (the plain ICMP capture stays empty).
fn ping_all(f: &Fleet, hosts: &[usize]) {
    let pairs: Vec<(usize, usize)> = hosts
        .iter()
        .flat_map(|a| hosts.iter().filter(move |b| *b != a).map(move |b| (*a, *b)))
        .collect();
    let n = pairs.len() as u32;
    let encapsulated =
        common::Capture::start(&f.underlay, "br0", &format!("udp dst port {PORT}"), 2 * n);
    let plain = common::Capture::start(&f.underlay, "br0", "icmp", 1);
    for (a, b) in &pairs {
        let p = common::ping(&f.hosts[*a], service(*b).parse().unwrap(), 1);
        assert_eq!(
            p.received,
            1,
            "h{a} -> {}: {}\n{}",
            service(*b),
            p.output,
            f.logs()
        );
    }
    let udp = encapsulated.finish(Duration::from_secs(3));
    let icmp = plain.finish(Duration::from_millis(100));
    assert!(
        udp.len() as u32 >= 2 * n,
        "{} encapsulated packets on the underlay for {n} pings: {udp:#?}",
        udp.len()
    );
    assert!(icmp.is_empty(), "plain ICMP on the underlay: {icmp:#?}");
}

/// The measured figures, printed as they come and together at the end.
#[derive(Default)]
struct Figures(Vec<String>);

impl Figures {
    fn add(&mut self, line: String) {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("figure: {line}\n").as_bytes(),
        );
        self.0.push(line);
    }

    fn print(&self) {
        let mut out =
            String::from("\nfleet convergence (5 hosts + 1 joining, etcd 3.4 on loopback):\n");
        for l in &self.0 {
            out.push_str(&format!("  {l}\n"));
        }
        let _ = std::io::Write::write_all(&mut std::io::stderr(), out.as_bytes());
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn five_hosts_follow_the_fleet_in_etcd() {
    if !common::privileged("five_hosts_follow_the_fleet_in_etcd") {
        return;
    }
    if !support::etcd_installed("five_hosts_follow_the_fleet_in_etcd") {
        return;
    }
    let rt = runtime();
    let mut f = Fleet::new(5);
    let mut figures = Figures::default();
    let poll = Duration::from_millis(10);

    // --- initial sync: five agents, host 1 also publishes 10.210.0.0/24 (moved later) ---
    let t0 = now_us();
    // host 1 first, so that its claim of 10.210.0.0/24 is the oldest
    f.start_agent(1, &["10.210.0.0/24"]);
    f.wait_all("host 1 published", Duration::from_secs(30), poll, |_, s| {
        s.published_at_us > 0
    });
    for i in [0, 2, 3, 4] {
        f.start_agent(i, &[]);
    }
    let five = [0, 1, 2, 3, 4];
    let st = f.wait_all("initial sync", Duration::from_secs(30), poll, |i, s| {
        let mut want = expected(i, &five);
        if i != 1 {
            want.insert("10.210.0.0/24".into(), endpoint(1));
        }
        table(s) == want && s.decap_peers.len() == 4
    });
    let mut loads: Vec<Duration> = f
        .agents
        .values()
        .filter_map(|a| {
            let log = a.log();
            let ms = log
                .split("data plane loaded in ")
                .nth(1)?
                .split(' ')
                .next()?;
            Some(Duration::from_millis(ms.parse().ok()?))
        })
        .collect();
    assert_eq!(loads.len(), 5, "{}", f.logs());
    let slowest = *loads.iter().max().unwrap();
    figures.add(format!(
        "start of 5 agents (host 1 first) -> every table complete: {}; of which loading the \
         data plane (BPF load and verify, routes, decap) per agent: median {}, max {}",
        ms(spread(&st, t0)),
        ms(median(&mut loads)),
        ms(slowest)
    ));
    common::ip(&f.hosts[1], &["addr", "add", "10.210.0.1/32", "dev", "lo"]);
    ping_all(&f, &five);
    let p = common::ping(&f.hosts[0], "10.210.0.1".parse().unwrap(), 1);
    assert_eq!(p.received, 1, "{}", p.output);

    // --- single changes written by the test: median and max of etcd put -> last table ---
    let mut client = f.client(&rt);
    let probe_key = f.key("probe");
    let mut samples = Vec::new();
    for k in 0..20u32 {
        let pfx = format!("10.240.{k}.0/24");
        let value = format!(r#"{{"endpoint":"10.99.0.200","encap":"gre","prefixes":["{pfx}"]}}"#);
        let t0 = now_us();
        rt.block_on(client.put(probe_key.clone(), value, None))
            .unwrap();
        let st = f.wait_all(
            "probe put",
            Duration::from_secs(10),
            Duration::from_millis(2),
            |_, s| s.peers.iter().any(|p| p.prefix == pfx),
        );
        samples.push(spread(&st, t0));
    }
    let t0 = now_us();
    rt.block_on(client.delete(probe_key.clone(), None)).unwrap();
    let st = f.wait_all("probe delete", Duration::from_secs(10), poll, |_, s| {
        !s.peers.iter().any(|p| p.prefix.starts_with("10.240."))
    });
    samples.push(spread(&st, t0));
    let max = *samples.iter().max().unwrap();
    figures.add(format!(
        "one change (put or delete), {} samples, etcd write -> last of 5 tables: median {}, max {}",
        samples.len(),
        ms(median(&mut samples)),
        ms(max)
    ));

    // --- a host joining ---
    let j = f.add_host();
    f.start_agent(j, &[]);
    let six = [0, 1, 2, 3, 4, 5];
    let st = f.wait_all("host 5 joined", Duration::from_secs(30), poll, |i, s| {
        let t = table(s);
        expected(i, &six).iter().all(|(p, r)| t.get(p) == Some(r))
    });
    let joined_at = st[&j].published_at_us;
    let others: BTreeMap<usize, Status> = st.into_iter().filter(|(i, _)| *i != j).collect();
    figures.add(format!(
        "host joining: its record written -> last of 5 other tables: {}",
        ms(spread(&others, joined_at))
    ));
    for (a, b) in [(0, j), (j, 0), (j, 3)] {
        let p = common::ping(&f.hosts[a], service(b).parse().unwrap(), 1);
        assert_eq!(p.received, 1, "h{a} -> h{b}: {}", p.output);
    }

    // --- a prefix moving from host 1 to host 3 (host 3 claims it first: the older claim,
    // host 1's, keeps it until host 1 withdraws) ---
    std::fs::write(&f.agents[&3].prefix_file, "10.210.0.0/24\n").unwrap();
    let before = f.agents[&3].status().unwrap().published_at_us;
    f.agents[&3].signal(libc::SIGHUP);
    f.wait_all("host 3 claimed", Duration::from_secs(10), poll, |i, s| {
        i != 3 || s.published_at_us > before
    });
    std::thread::sleep(Duration::from_millis(200));
    for (i, a) in &f.agents {
        if *i != 1 && *i != 3 {
            let t = table(&a.status().unwrap());
            assert_eq!(
                t.get("10.210.0.0/24"),
                Some(&endpoint(1)),
                "h{i}: the older claim (host 1) must win"
            );
        }
    }
    common::ip(&f.hosts[1], &["addr", "del", "10.210.0.1/32", "dev", "lo"]);
    common::ip(&f.hosts[3], &["addr", "add", "10.210.0.1/32", "dev", "lo"]);
    std::fs::write(&f.agents[&1].prefix_file, "").unwrap();
    let before = f.agents[&1].status().unwrap().published_at_us;
    f.agents[&1].signal(libc::SIGHUP);
    let st = f.wait_all("prefix moved", Duration::from_secs(10), poll, |i, s| {
        let t = table(s);
        match i {
            3 => !t.contains_key("10.210.0.0/24"),
            _ => t.get("10.210.0.0/24") == Some(&endpoint(3)),
        }
    });
    let moved_at = f.agents[&1].status().unwrap().published_at_us;
    assert!(moved_at > before);
    figures.add(format!(
        "prefix moving: withdrawal written -> last of 6 tables: {}",
        ms(spread(&st, moved_at))
    ));
    let p = common::ping(&f.hosts[0], "10.210.0.1".parse().unwrap(), 1);
    assert_eq!(p.received, 1, "10.210.0.1 now behind host 3: {}", p.output);

    // --- a host dying: SIGKILL its agent, its peers go at lease expiry ---
    let t_kill = now_us();
    f.agents.get_mut(&2).unwrap().kill();
    let st = f.wait_all(
        "host 2 expired",
        Duration::from_secs(TTL as u64 * 4),
        poll,
        |_, s| {
            !s.peers.iter().any(|p| p.prefix == prefix(2)) && !s.decap_peers.contains(&endpoint(2))
        },
    );
    figures.add(format!(
        "host dying (SIGKILL, lease TTL {TTL} s): kill -> last of 5 tables: {}",
        ms(spread(&st, t_kill))
    ));
    let p = common::ping(&f.hosts[0], service(2).parse().unwrap(), 1);
    assert_eq!(
        p.received, 0,
        "host 2 is gone from host 0's table: {}",
        p.output
    );

    // --- the crashed host's agent starts again (its routes were left behind) and rejoins ---
    f.start_agent(2, &[]);
    let st = f.wait_all("host 2 back", Duration::from_secs(30), poll, |i, s| {
        let t = table(s);
        expected(i, &six).iter().all(|(p, r)| t.get(p) == Some(r))
    });
    let back_at = st[&2].published_at_us;
    let others: BTreeMap<usize, Status> = st.into_iter().filter(|(i, _)| *i != 2).collect();
    figures.add(format!(
        "crashed host restarting: its record written -> last of 5 other tables: {}",
        ms(spread(&others, back_at))
    ));
    let p = common::ping(&f.hosts[0], service(2).parse().unwrap(), 1);
    assert_eq!(p.received, 1, "host 2 back: {}", p.output);

    // --- etcd restarting; host 0's agent is stopped meanwhile, and the history it would
    // resume from is compacted: it must resync with a full Get ---
    let alive = [0, 1, 2, 3, 4, 5];
    let tables: BTreeMap<usize, _> = f
        .agents
        .iter()
        .filter(|(_, a)| a.child.is_some())
        .map(|(i, a)| (*i, table(&a.status().unwrap())))
        .collect();
    let resyncs0 = f.agents[&0].status().unwrap().resyncs;
    f.agents[&0].signal(libc::SIGSTOP);
    f.etcd.restart();
    let mut client = f.client(&rt);
    let value = r#"{"endpoint":"10.99.0.201","encap":"ipip","prefixes":["10.250.0.0/24"]}"#;
    rt.block_on(client.put(f.key("late"), value, None)).unwrap();
    let put = rt
        .block_on(client.put(
            f.key("late"),
            value.replace("10.250.0.0", "10.250.1.0"),
            None,
        ))
        .unwrap();
    let rev = put.header().unwrap().revision();
    rt.block_on(client.compact(rev, None)).unwrap();
    let t_restart = now_us();
    f.agents[&0].signal(libc::SIGCONT);
    let st = f.wait_all(
        "after the etcd restart",
        Duration::from_secs(15),
        poll,
        |i, s| {
            let t = table(s);
            s.connected
                && t.get("10.250.1.0/24") == Some(&"10.99.0.201".to_string())
                && !t.contains_key("10.250.0.0/24")
                && tables[&i].iter().all(|(p, r)| t.get(p) == Some(r))
        },
    );
    assert!(
        st[&0].resyncs > resyncs0,
        "host 0 resumed across a compaction without a resync: {:?}\n{}",
        st[&0],
        f.logs()
    );
    assert!(st.values().all(|s| s.reconnects >= 1));
    figures.add(format!(
        "etcd restart (+ compaction for one agent): change -> last of 5 tables: {}",
        ms(spread(&st, t_restart))
    ));
    // the leases survived the restart: after more than a TTL every host is still everywhere
    std::thread::sleep(Duration::from_secs(TTL as u64 + 1));
    f.wait_all(
        "hosts kept after the restart",
        Duration::from_secs(5),
        poll,
        |i, s| {
            let t = table(s);
            alive
                .iter()
                .filter(|j| **j != i)
                .all(|j| t.get(&prefix(*j)) == Some(&endpoint(*j)))
        },
    );
    rt.block_on(client.delete(f.key("late"), None)).unwrap();
    ping_all(&f, &alive);

    // --- 10k peers published at once (one record of 10 000 prefixes) and withdrawn ---
    let bulk: Vec<String> = (0..10_000u32)
        .map(|k| format!("\"10.230.{}.{}/32\"", k / 256, k % 256))
        .collect();
    let value = format!(
        r#"{{"endpoint":"10.99.0.202","encap":"gre","prefixes":[{}]}}"#,
        bulk.join(",")
    );
    let base: BTreeMap<usize, usize> = f
        .agents
        .iter()
        .filter(|(_, a)| a.child.is_some())
        .map(|(i, a)| (*i, a.status().unwrap().peers.len()))
        .collect();
    let t0 = now_us();
    rt.block_on(client.put(f.key("bulk"), value, Some(PutOptions::new())))
        .unwrap();
    let st = f.wait_all(
        "10k peers",
        Duration::from_secs(60),
        Duration::from_millis(50),
        |i, s| s.peers.len() == base[&i] + 10_000,
    );
    // the status is what the kernel holds: the pinned trie has the same entries
    for (i, s) in &st {
        assert_eq!(
            f.kernel_peers(*i),
            s.peers.len(),
            "h{i}: kernel table vs status"
        );
    }
    figures.add(format!(
        "10 000 peers published at once: etcd write -> last of 5 tables: {}",
        ms(spread(&st, t0))
    ));
    let t0 = now_us();
    rt.block_on(client.delete(f.key("bulk"), None)).unwrap();
    let st = f.wait_all(
        "10k peers gone",
        Duration::from_secs(60),
        Duration::from_millis(50),
        |i, s| s.peers.len() == base[&i],
    );
    figures.add(format!(
        "10 000 peers withdrawn at once: etcd delete -> last of 5 tables: {}",
        ms(spread(&st, t0))
    ));

    // --- hostile values: refused, reported, and nobody's table changes ---
    rt.block_on(client.put(
        f.key("bad"),
        "{\"endpoint\":\"10.99.0.9\",\"encap\":\"udp\"}",
        None,
    ))
    .unwrap();
    rt.block_on(client.put(
        f.key("thief"),
        format!(
            r#"{{"endpoint":"10.99.0.203","encap":"ipip","prefixes":["{}"]}}"#,
            prefix(0)
        ),
        None,
    ))
    .unwrap();
    let st = f.wait_all("hostile values", Duration::from_secs(10), poll, |i, s| {
        s.rejected.contains_key("bad") && (i == 0 || table(s).get(&prefix(0)) == Some(&endpoint(0)))
    });
    assert!(
        st[&1].rejected["bad"].contains("udp_port"),
        "{:?}",
        st[&1].rejected
    );
    let n = rt
        .block_on(client.get(
            format!("/lwtun/fleet/{}/hosts/", f.name),
            Some(GetOptions::new().with_prefix().with_count_only()),
        ))
        .unwrap()
        .count();
    assert!(n >= 7, "{n} keys");

    // --- a clean stop withdraws the host at once (lease revoked, no TTL wait) ---
    let t0 = now_us();
    f.agents[&4].signal(libc::SIGTERM);
    let rest = f
        .agents
        .get_mut(&4)
        .unwrap()
        .child
        .take()
        .unwrap()
        .wait_with_output()
        .unwrap();
    assert!(rest.status.success(), "agent 4 exit: {:?}", rest.status);
    let st = f.wait_all(
        "host 4 withdrawn",
        Duration::from_secs(TTL as u64),
        poll,
        |_, s| !s.peers.iter().any(|p| p.prefix == prefix(4)),
    );
    figures.add(format!(
        "clean stop (SIGTERM, lease revoked): signal -> last of 4 tables: {}",
        ms(spread(&st, t0))
    ));
    let routes = common::ip(&f.hosts[4], &["route", "show"]);
    assert!(
        !routes.contains("10.192.0.0/10"),
        "host 4's tunnel route left behind: {routes}"
    );

    figures.print();
}
