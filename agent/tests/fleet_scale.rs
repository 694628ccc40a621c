//! The fleet at scale: many agents in one process, each the real [`Agent`] with its own etcd
//! session and lease against one real etcd, each writing its own real BPF peer tables
//! ([`TablesOnly`]: a loaded, pinned tunnel without routes or decap, so 100 hosts fit on a
//! small machine). Host `i` publishes `P` prefixes (10.0.0.0/8 cut in /28s) behind endpoint
//! 172.16.0.(i+1); every table must end up holding the other hosts' prefixes.
//!
//! Three moments are measured and printed as a table (the agents' own clock: when the last
//! table write returned):
//! - initial convergence: every agent starts at once (tables loaded before) → every table
//!   holds (N-1)×P peers;
//! - one change: one host publishes one more prefix (and withdraws it) → the last table has it;
//! - one host dying (its task killed: no more keep-alives, no revoke) → its prefixes gone from
//!   every table after its lease (TTL 2 s) ends.
//!
//! After each, the pinned kernel tables are read back (prefix → endpoint, every entry).
//!
//! `ten_agents_converge_on_real_tables` (10 × 200) runs with the other tests and asserts no
//! timing. `fleet_scale_100_agents_x_1000_prefixes` is the measurement (ignored by default; run
//! it alone, on a quiet machine):
//!
//! ```text
//! cargo test --release -p lwtun-agent --test fleet_scale -- --ignored --nocapture
//! ```
//!
//! `LWTUN_FLEET_HOSTS` and `LWTUN_FLEET_PREFIXES` change its size.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use lwtun::peer::Encap;
use lwtun::tunnel::PinnedTunnel;
use lwtun_agent::agent::{Agent, AgentConfig, Control};
use lwtun_agent::dataplane::PeerSink;
use lwtun_agent::fleet::{Diff, Fleet, PeerMap};
use lwtun_agent::layout::Layout;
use lwtun_agent::record::HostRecord;
use lwtun_agent::status::now_us;
use lwtun_agent::tables::TablesOnly;
use lwtun_agent::AgentError;
use support::{Etcd, TempDir};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const TTL: i64 = 2;

/// What the test sees of one agent's table without asking the agent: its size after the last
/// write and when that write returned.
#[derive(Default)]
struct Probe {
    peers: AtomicUsize,
    applied_at_us: AtomicU64,
}

/// The agent's sink: real tables, and the probe updated after every write.
struct Observed {
    tables: TablesOnly,
    probe: Arc<Probe>,
}

impl PeerSink for Observed {
    fn current(&self) -> PeerMap {
        self.tables.current()
    }

    fn apply(&mut self, diff: &Diff) -> Result<(), AgentError> {
        let r = self.tables.apply(diff);
        self.probe
            .peers
            .store(self.tables.tunnel().peers().len(), Ordering::SeqCst);
        self.probe.applied_at_us.store(now_us(), Ordering::SeqCst);
        r
    }

    fn set_remote_endpoints(
        &mut self,
        endpoints: &std::collections::BTreeSet<IpAddr>,
    ) -> Result<(), AgentError> {
        self.tables.set_remote_endpoints(endpoints)
    }

    fn remote_endpoints(&self) -> std::collections::BTreeSet<IpAddr> {
        self.tables.remote_endpoints()
    }
}

fn endpoint(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(172, 16, 0, 1)) + i as u32,
    ))
}

/// The `n`-th /28 of 10.0.0.0/8.
fn slot(n: usize) -> IpNetwork {
    let base = u32::from(Ipv4Addr::new(10, 0, 0, 0)) + ((n as u32) << 4);
    IpNetwork::new(IpAddr::V4(Ipv4Addr::from(base)), 28).unwrap()
}

struct Running {
    control: mpsc::Sender<Control>,
    task: JoinHandle<Result<(), AgentError>>,
}

// Field order is drop order: the agents (and their tables) before etcd and the folders.
struct Sim {
    agents: Vec<Option<Running>>,
    probes: Vec<Arc<Probe>>,
    rt: tokio::runtime::Runtime,
    etcd: Etcd,
    pins: common::PinDir,
    _dir: TempDir,
    hosts: usize,
    prefixes: usize,
    layout: Layout,
}

impl Sim {
    fn record(&self, i: usize, extra: Option<IpNetwork>) -> HostRecord {
        let mut prefixes: Vec<IpNetwork> = (0..self.prefixes)
            .map(|k| slot(i * self.prefixes + k))
            .collect();
        prefixes.extend(extra);
        HostRecord {
            endpoint: endpoint(i),
            other_endpoint: None,
            encap: Encap::Udp { port: 6081 },
            prefixes,
        }
    }

    fn pin(&self, i: usize) -> PathBuf {
        self.pins.0.join(format!("h{i}"))
    }

    /// Loads every host's tables (not started yet).
    fn new(hosts: usize, prefixes: usize) -> (Sim, Vec<TablesOnly>, Duration) {
        let dir = TempDir::new("scale");
        let etcd = Etcd::start(&dir.0);
        let pins = common::PinDir::new("agent-scale");
        std::fs::create_dir_all(&pins.0).unwrap();
        let capacity = ((hosts * prefixes + 1024) as u32).next_power_of_two();
        let started = Instant::now();
        let tables: Vec<TablesOnly> = (0..hosts)
            .map(|i| {
                TablesOnly::open(capacity, Some(&pins.0.join(format!("h{i}"))))
                    .unwrap_or_else(|e| panic!("load host {i}'s tables: {e}"))
            })
            .collect();
        let load = started.elapsed();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let sim = Sim {
            agents: Vec::new(),
            probes: (0..hosts).map(|_| Arc::default()).collect(),
            rt,
            etcd,
            pins,
            _dir: dir,
            hosts,
            prefixes,
            layout: Layout::new("/lwtun/fleet", &format!("scale{}", std::process::id())).unwrap(),
        };
        (sim, tables, load)
    }

    fn start(&mut self, tables: Vec<TablesOnly>) {
        for (i, tables) in tables.into_iter().enumerate() {
            let record = self.record(i, None);
            let fleet = Fleet::new(self.layout.clone(), &format!("h{i}"), record.endpoint);
            let config = AgentConfig {
                etcd: vec![self.etcd.url()],
                host: format!("h{i}"),
                record,
                lease_ttl: TTL,
                status: None,
            };
            let sink = Observed {
                tables,
                probe: self.probes[i].clone(),
            };
            let (control, rx) = mpsc::channel(4);
            let task = self.rt.spawn(async move {
                let mut agent = Agent::new(config, fleet, sink);
                agent.run(rx).await
            });
            self.agents.push(Some(Running { control, task }));
        }
    }

    fn alive(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.hosts).filter(|i| self.agents[*i].is_some())
    }

    /// Waits until every running agent's table holds `want(i)` peers; returns the last write's
    /// time after `t0_us`.
    fn wait(
        &self,
        what: &str,
        t0_us: u64,
        timeout: Duration,
        want: impl Fn(usize) -> usize,
    ) -> Duration {
        let deadline = Instant::now() + timeout;
        loop {
            let behind: Vec<(usize, usize, usize)> = self
                .alive()
                .map(|i| (i, self.probes[i].peers.load(Ordering::SeqCst), want(i)))
                .filter(|(_, have, want)| have != want)
                .collect();
            if behind.is_empty() {
                let last = self
                    .alive()
                    .map(|i| self.probes[i].applied_at_us.load(Ordering::SeqCst))
                    .max()
                    .unwrap_or(t0_us);
                return Duration::from_micros(last.saturating_sub(t0_us));
            }
            for i in self.alive() {
                if self.agents[i].as_ref().unwrap().task.is_finished() {
                    panic!("{what}: agent h{i} stopped");
                }
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not reached after {timeout:?}; (host, peers, wanted): {:?}",
                &behind[..behind.len().min(10)]
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The first write after `t0_us` among running agents (other than `except`).
    fn first_write(&self, except: usize) -> u64 {
        self.alive()
            .filter(|i| *i != except)
            .map(|i| self.probes[i].applied_at_us.load(Ordering::SeqCst))
            .min()
            .unwrap_or(0)
    }

    /// Reads every running host's pinned kernel tables back: exactly the prefixes of the
    /// `publishers` other than itself, each to its publisher's endpoint, from its own.
    fn check_kernel_tables(&self, publishers: &[(usize, Vec<IpNetwork>)]) {
        for i in self.alive() {
            let pinned = PinnedTunnel::open(self.pin(i))
                .unwrap_or_else(|e| panic!("read h{i}'s pinned tables: {e}"));
            let peers = pinned.peers();
            let mut want = 0;
            for (j, prefixes) in publishers.iter().filter(|(j, _)| *j != i) {
                for p in prefixes {
                    let got = peers
                        .get(*p)
                        .unwrap_or_else(|| panic!("h{i}'s kernel table lacks {p} of h{j}"));
                    assert_eq!(
                        (got.remote, got.local),
                        (endpoint(*j), endpoint(i)),
                        "h{i}: {p}"
                    );
                    want += 1;
                }
            }
            assert_eq!(peers.len(), want, "h{i}'s kernel table holds other peers");
        }
    }

    fn publish(&self, i: usize, record: HostRecord) {
        let control = self.agents[i].as_ref().unwrap().control.clone();
        self.rt
            .block_on(control.send(Control::Publish(record)))
            .unwrap();
    }

    fn stop(&mut self) {
        for r in self.agents.iter_mut().filter_map(Option::take) {
            let _ = self.rt.block_on(r.control.send(Control::Shutdown));
            let result = self.rt.block_on(r.task).unwrap();
            result.unwrap();
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn say(line: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
}

/// Runs the three moments on `hosts` × `prefixes`, checks the kernel tables after each, and
/// returns the figures as printable lines.
fn scale(hosts: usize, prefixes: usize, samples: usize) -> Vec<String> {
    let mut figures = Vec::new();
    let (mut sim, tables, load) = Sim::new(hosts, prefixes);
    figures.push(format!(
        "load {hosts} tunnels (BPF load + verify, tables pinned), before the agents start: {} ({} each)",
        ms(load),
        ms(load / hosts as u32)
    ));
    let full = (hosts - 1) * prefixes;

    // --- initial convergence ---
    let t0 = now_us();
    sim.start(tables);
    let initial = sim.wait("initial convergence", t0, Duration::from_secs(300), |_| {
        full
    });
    figures.push(format!(
        "initial convergence: {hosts} agents start at once -> every table holds {full} peers: {}",
        ms(initial)
    ));
    say(&figures[figures.len() - 1]);
    let publishers: Vec<(usize, Vec<IpNetwork>)> = (0..hosts)
        .map(|i| (i, sim.record(i, None).prefixes))
        .collect();
    sim.check_kernel_tables(&publishers);

    // --- one change: host 0 adds a prefix, then withdraws it ---
    let mut adds = Vec::new();
    let mut withdrawals = Vec::new();
    for s in 0..samples {
        let extra = slot(hosts * prefixes + s);
        let t0 = now_us();
        sim.publish(0, sim.record(0, Some(extra)));
        adds.push(
            sim.wait("one prefix added", t0, Duration::from_secs(30), |i| {
                full + usize::from(i != 0)
            }),
        );
        if s == 0 {
            let mut with_extra = publishers.clone();
            with_extra[0].1.push(extra);
            sim.check_kernel_tables(&with_extra);
        }
        let t0 = now_us();
        sim.publish(0, sim.record(0, None));
        withdrawals.push(
            sim.wait("one prefix withdrawn", t0, Duration::from_secs(30), |_| {
                full
            }),
        );
    }
    sim.check_kernel_tables(&publishers);
    let stat = |v: &mut Vec<Duration>| {
        v.sort();
        format!("median {}, max {}", ms(v[v.len() / 2]), ms(v[v.len() - 1]))
    };
    figures.push(format!(
        "one change -> last of {} tables, {samples} samples: prefix added {}; withdrawn {}",
        hosts - 1,
        stat(&mut adds),
        stat(&mut withdrawals)
    ));
    say(&figures[figures.len() - 1]);

    // --- one host dies: its task is killed (no revoke), its lease ends ---
    let dead = hosts - 1;
    let running = sim.agents[dead].take().unwrap();
    let t0 = now_us();
    running.task.abort();
    let _ = sim.rt.block_on(running.task);
    let gone = sim.wait("dead host removed", t0, Duration::from_secs(30), |_| {
        full - prefixes
    });
    let first = sim.first_write(dead);
    figures.push(format!(
        "one host dies (lease TTL {TTL} s) -> its {prefixes} prefixes gone from every table: {} \
         (first table -> last table: {})",
        ms(gone),
        ms(Duration::from_micros(
            (t0 + gone.as_micros() as u64).saturating_sub(first)
        ))
    ));
    say(&figures[figures.len() - 1]);
    sim.check_kernel_tables(&publishers[..dead]);
    sim.stop();
    figures
}

fn print(hosts: usize, prefixes: usize, figures: &[String]) {
    let mut out = format!(
        "\nfleet scale: {hosts} agents x {prefixes} prefixes in one process, one etcd on \
         loopback, {} CPUs\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for f in figures {
        out.push_str(&format!("  {f}\n"));
    }
    say(&out);
}

#[test]
fn ten_agents_converge_on_real_tables() {
    if !common::privileged("ten_agents_converge_on_real_tables")
        || !support::etcd_installed("ten_agents_converge_on_real_tables")
    {
        return;
    }
    let figures = scale(10, 200, 2);
    print(10, 200, &figures);
}

#[test]
#[ignore = "the 100-host measurement: minutes of CPU; run alone with --ignored"]
fn fleet_scale_100_agents_x_1000_prefixes() {
    if !common::privileged("fleet_scale_100_agents_x_1000_prefixes")
        || !support::etcd_installed("fleet_scale_100_agents_x_1000_prefixes")
    {
        return;
    }
    let size = |var: &str, default: usize| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let hosts = size("LWTUN_FLEET_HOSTS", 100).max(2);
    let prefixes = size("LWTUN_FLEET_PREFIXES", 1000).max(1);
    let figures = scale(hosts, prefixes, 10);
    print(hosts, prefixes, &figures);
}
