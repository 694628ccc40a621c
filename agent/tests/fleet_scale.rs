//! The fleet at scale: many agents in one process, each the real [`Agent`] on a thread of its
//! own (its own runtime, as a process would have) with its own etcd session and lease against
//! one real etcd, each writing its own real BPF peer tables
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
//!   every table after its lease ends (TTL 3 s in the small test, 10 s, the agent's default,
//!   in the measurement);
//! - that host joining again as a new machine (a fresh agent on empty tables) → its table
//!   holds every other host's prefixes, and theirs hold its own again: one host's
//!   convergence, with the rest of the fleet idle.
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
//! `LWTUN_FLEET_HOSTS` and `LWTUN_FLEET_PREFIXES` change its size, `LWTUN_FLEET_TTL` the
//! lease.

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
use std::thread::JoinHandle;
use support::{Etcd, TempDir};
use tokio::sync::{mpsc, oneshot};

/// What the test sees of one agent's table without asking the agent: its size after the last
/// write, when that write returned, and how many peers it removed in all (a fleet that only
/// grows removes none: more means churn, such as a lease lost under load).
#[derive(Default)]
struct Probe {
    peers: AtomicUsize,
    applied_at_us: AtomicU64,
    removed: AtomicUsize,
    /// Time spent in table writes (the kernel's LPM inserts and removals), in µs.
    writing_us: AtomicU64,
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
        let started = Instant::now();
        let r = self.tables.apply(diff);
        self.probe
            .writing_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::SeqCst);
        self.probe
            .removed
            .fetch_add(diff.remove.len() + diff.replace.len(), Ordering::SeqCst);
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
    /// Dropping it (or sending) kills the agent: its future is dropped mid-flight, no revoke.
    kill: oneshot::Sender<()>,
    thread: JoinHandle<Result<(), AgentError>>,
}

// Field order is drop order: the agents (and their tables) before etcd and the folders.
struct Sim {
    agents: Vec<Option<Running>>,
    probes: Vec<Arc<Probe>>,
    etcd: Etcd,
    pins: common::PinDir,
    _dir: TempDir,
    hosts: usize,
    prefixes: usize,
    ttl: i64,
    layout: Layout,
    capacity: u32,
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
    fn new(hosts: usize, prefixes: usize, ttl: i64) -> (Sim, Vec<TablesOnly>, Duration) {
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
        let sim = Sim {
            agents: Vec::new(),
            probes: (0..hosts).map(|_| Arc::default()).collect(),
            etcd,
            pins,
            _dir: dir,
            hosts,
            prefixes,
            ttl,
            layout: Layout::new("/lwtun/fleet", &format!("scale{}", std::process::id())).unwrap(),
            capacity,
        };
        (sim, tables, load)
    }

    fn start(&mut self, tables: Vec<TablesOnly>) {
        for (i, tables) in tables.into_iter().enumerate() {
            self.agents.push(None);
            self.start_one(i, tables);
        }
    }

    /// Starts host `i`'s agent on `tables`.
    fn start_one(&mut self, i: usize, tables: TablesOnly) {
        {
            let record = self.record(i, None);
            let fleet = Fleet::new(self.layout.clone(), &format!("h{i}"), record.endpoint);
            let config = AgentConfig {
                etcd: vec![self.etcd.url()],
                host: format!("h{i}"),
                record,
                lease_ttl: self.ttl,
                status: None,
            };
            let sink = Observed {
                tables,
                probe: self.probes[i].clone(),
            };
            let (control, rx) = mpsc::channel(4);
            let (kill, killed) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("agent-h{i}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async move {
                        let mut agent = Agent::new(config, fleet, sink);
                        tokio::select! {
                            r = agent.run(rx) => r,
                            _ = killed => Ok(()),
                        }
                    })
                })
                .unwrap();
            self.agents[i] = Some(Running {
                control,
                kill,
                thread,
            });
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
                if self.agents[i].as_ref().unwrap().thread.is_finished() {
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
        let control = &self.agents[i].as_ref().unwrap().control;
        control.blocking_send(Control::Publish(record)).unwrap();
    }

    fn stop(&mut self) {
        for r in self.agents.iter_mut().filter_map(Option::take) {
            let _ = r.control.blocking_send(Control::Shutdown);
            r.thread.join().unwrap().unwrap();
        }
    }

    /// Peers removed by every running agent so far.
    fn removed(&self) -> usize {
        self.alive()
            .map(|i| self.probes[i].removed.load(Ordering::SeqCst))
            .sum()
    }
}

/// CPU time (user + system) used so far by process `pid` ("self": this one).
fn cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // after the command name in parentheses: state is field 3, utime 14, stime 15
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest.split(' ').map(|f| f.parse().unwrap_or(0)).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks = fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0);
    Duration::from_millis(ticks * 1000 / hz)
}

/// The pid of the etcd whose data dir is under `dir`.
fn etcd_pid(dir: &std::path::Path) -> String {
    let want = dir.to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.starts_with(support::ETCD) && c.contains(&want)
                })
                .unwrap_or(false)
        })
        .map(|e| e.file_name().to_string_lossy().to_string())
        .expect("etcd's pid")
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn say(line: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
}

/// Runs the three moments on `hosts` × `prefixes`, checks the kernel tables after each, and
/// returns the figures as printable lines.
fn scale(hosts: usize, prefixes: usize, samples: usize, ttl: i64) -> Vec<String> {
    let mut figures = Vec::new();
    let (mut sim, tables, load) = Sim::new(hosts, prefixes, ttl);
    figures.push(format!(
        "load {hosts} tunnels (BPF load + verify, tables pinned), before the agents start: {} ({} each)",
        ms(load),
        ms(load / hosts as u32)
    ));
    let full = (hosts - 1) * prefixes;

    // --- initial convergence ---
    let etcd = etcd_pid(&sim._dir.0);
    let (agents_cpu, etcd_cpu) = (cpu("self"), cpu(&etcd));
    let t0 = now_us();
    sim.start(tables);
    let initial = sim.wait("initial convergence", t0, Duration::from_secs(300), |_| {
        full
    });
    let (agents_cpu, etcd_cpu) = (cpu("self") - agents_cpu, cpu(&etcd) - etcd_cpu);
    let writing: u64 = sim
        .probes
        .iter()
        .map(|p| p.writing_us.load(Ordering::SeqCst))
        .sum();
    figures.push(format!(
        "initial convergence: {hosts} agents start at once -> every table holds {full} peers: {} \
         ({} peers removed on the way: churn)",
        ms(initial),
        sim.removed()
    ));
    say(&figures[figures.len() - 1]);
    figures.push(format!(
        "  CPU meanwhile: agents {} (of which table writes {}), etcd {}",
        ms(agents_cpu),
        ms(Duration::from_micros(writing)),
        ms(etcd_cpu)
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
    drop(running.kill);
    let _ = running.thread.join().unwrap();
    let patience = Duration::from_secs(ttl as u64 + 30);
    let gone = sim.wait("dead host removed", t0, patience, |_| full - prefixes);
    let first = sim.first_write(dead);
    figures.push(format!(
        "one host dies (lease TTL {ttl} s) -> its {prefixes} prefixes gone from every table: {} \
         (first table -> last table: {})",
        ms(gone),
        ms(Duration::from_micros(
            (t0 + gone.as_micros() as u64).saturating_sub(first)
        ))
    ));
    say(&figures[figures.len() - 1]);
    sim.check_kernel_tables(&publishers[..dead]);

    // --- the dead host comes back as a new machine: a fresh agent on empty tables ---
    let pin = sim.pin(dead);
    // (the dead agent's tables took their pins with them; whatever is left goes)
    if pin.exists() {
        std::fs::remove_dir_all(&pin).unwrap_or_else(|e| panic!("remove {}: {e}", pin.display()));
    }
    let tables = TablesOnly::open(sim.capacity, Some(&pin))
        .unwrap_or_else(|e| panic!("load host {dead}'s new tables: {e}"));
    sim.probes[dead] = Arc::default();
    let (agents_cpu, etcd_cpu) = (cpu("self"), cpu(&etcd));
    let t0 = now_us();
    sim.start_one(dead, tables);
    let all = sim.wait("the host back", t0, Duration::from_secs(120), |_| full);
    let (agents_cpu, etcd_cpu) = (cpu("self") - agents_cpu, cpu(&etcd) - etcd_cpu);
    let own = sim.probes[dead].applied_at_us.load(Ordering::SeqCst);
    figures.push(format!(
        "one host joins with empty tables -> its table holds {full} peers: {}; every other \
         table has its {prefixes} prefixes again: {} (CPU: agents {}, etcd {})",
        ms(Duration::from_micros(own.saturating_sub(t0))),
        ms(all),
        ms(agents_cpu),
        ms(etcd_cpu)
    ));
    say(&figures[figures.len() - 1]);
    sim.check_kernel_tables(&publishers);
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
    let figures = scale(10, 200, 2, 3);
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
    // The production default: 100 agents' work squeezed onto a few shared cores can delay a
    // keep-alive by seconds, which a short lease turns into churn (counted in the figures).
    let ttl = size("LWTUN_FLEET_TTL", 10) as i64;
    let figures = scale(hosts, prefixes, 10, ttl);
    print(hosts, prefixes, &figures);
}
