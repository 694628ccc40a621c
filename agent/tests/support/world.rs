//! Hosts for `lwtun-agent` processes: network namespaces on a bridged underlay (host `i` has
//! endpoint 10.99.0.(i+1) on `ul0` and inner address 10.200.i.1 on `lo`), a pin folder per
//! host, a free metrics port per host, and the agents' status files and logs; plus the
//! probes the tests read them with (status, /metrics, ping).
//!
//! Not a submodule of `support`: it needs the library's `tests/common`, so a test that has
//! `mod common;` includes it with `#[path = "support/world.rs"] mod world;`.
#![allow(dead_code)]

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lwtun::netns::NetNs;
use lwtun_agent::status::Status;

use crate::common;
use crate::support::{free_port, TempDir};

/// Host `i`'s tunnel endpoint on the underlay.
pub fn endpoint(i: usize) -> String {
    format!("10.99.0.{}", i + 1)
}

/// Host `i`'s inner address (on its `lo`).
pub fn service(i: usize) -> String {
    format!("10.200.{i}.1")
}

/// The prefix host `i` publishes.
pub fn prefix(i: usize) -> String {
    format!("10.200.{i}.0/24")
}

/// A running agent, SIGKILLed when dropped.
pub struct AgentProc(pub Child);

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pin folder on bpffs, removed when dropped.
pub struct PinDir(pub PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` hosts and the etcd `E` their agents use.
// Field order is drop order: the agents stop before their namespaces, pins and etcd go, and
// the directory (etcd's data, the agents' files) goes last.
pub struct World<E> {
    pub agents: Vec<AgentProc>,
    /// Each agent's metrics port on 127.0.0.1 (free when the world was made).
    pub metrics: Vec<u16>,
    pub hosts: Vec<NetNs>,
    _underlay: NetNs,
    pins: PinDir,
    pub etcd: E,
    pub dir: TempDir,
}

impl<E> World<E> {
    /// `n` hosts named after `tag` (short: it names namespaces and bridge ports), with the
    /// etcd `start_etcd` starts in the world's directory. No agent runs yet ([`World::spawn`]).
    pub fn new(tag: &str, n: usize, start_etcd: impl FnOnce(&std::path::Path) -> E) -> World<E> {
        let dir = TempDir::new(tag);
        let etcd = start_etcd(&dir.0);
        let underlay = common::netns(&format!("{tag}u"));
        common::ip(&underlay, &["link", "add", "br0", "type", "bridge"]);
        common::ip(&underlay, &["link", "set", "br0", "up"]);
        let mut hosts = Vec::new();
        for i in 0..n {
            let ns = common::netns(&format!("{tag}{i}"));
            let port = format!("{tag}{i}");
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
                &["addr", "add", &format!("{}/24", endpoint(i)), "dev", "ul0"],
            );
            common::ip(&ns, &["link", "set", "ul0", "up"]);
            common::ip(
                &ns,
                &["addr", "add", &format!("{}/32", service(i)), "dev", "lo"],
            );
            common::wait_oper_up(&ns, &["ul0".to_string()]);
            common::wait_oper_up(&underlay, &[port]);
            hosts.push(ns);
        }
        let pins = PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/lwtun-agent-{tag}-{}",
            std::process::id()
        )));
        World {
            agents: Vec::new(),
            metrics: (0..n).map(|_| free_port()).collect(),
            hosts,
            _underlay: underlay,
            pins,
            etcd,
            dir,
        }
    }

    /// Starts `lwtun-agent` with `args` as the next agent (host `agents.len()`), its stderr
    /// in [`World::log_path`].
    pub fn spawn<I, S>(&mut self, args: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let i = self.agents.len();
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let child = Command::new(env!("CARGO_BIN_EXE_lwtun-agent"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log_path(i)).unwrap())
            .spawn()
            .unwrap();
        self.agents.push(AgentProc(child));
    }

    /// The value of the sample `series` (`name{labels}`) in agent `i`'s /metrics, 0 when absent.
    pub fn metric(&self, i: usize, series: &str) -> f64 {
        self.get(i, "/metrics")
            .1
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// `GET path` from agent `i`'s metrics address: the status code and the body.
    pub fn get(&self, i: usize, path: &str) -> (u16, String) {
        self.try_get(i, path)
            .unwrap_or_else(|| panic!("h{i}: GET {path}: no answer\n{}", self.logs()))
    }

    /// [`World::get`], `None` when nothing answers (yet).
    pub fn try_get(&self, i: usize, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics[i])).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        Some((code, body.to_string()))
    }

    /// Host `i`'s pin folder (`--pin`, key `pin`).
    pub fn pin(&self, i: usize) -> PathBuf {
        self.pins.0.join(format!("h{i}"))
    }

    /// Host `i`'s status file (`--status`, key `status`).
    pub fn status_path(&self, i: usize) -> PathBuf {
        self.dir.0.join(format!("h{i}.status"))
    }

    /// Host `i`'s agent's stderr.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.0.join(format!("h{i}.log"))
    }

    pub fn status(&self, i: usize) -> Option<Status> {
        Status::read(&self.status_path(i)).ok()
    }

    /// Every agent's log, for failure messages.
    pub fn logs(&self) -> String {
        (0..self.agents.len())
            .map(|i| {
                format!(
                    "--- h{i} ---\n{}",
                    std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits (up to `timeout`) until `done` holds for host `i`'s status.
    pub fn wait_status(
        &self,
        i: usize,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Status) -> bool,
    ) -> Status {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(i);
            if let Some(s) = s.as_ref().filter(|s| done(s)) {
                return s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "h{i}: {what}: not reached after {timeout:?}; status {s:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Host `a` pings host `b`'s inner address through the tunnel; answered.
    pub fn ping(&self, a: usize, b: usize) {
        let p = common::ping(&self.hosts[a], service(b).parse().unwrap(), 1);
        assert_eq!(
            p.received,
            1,
            "h{a} -> {}: {}\n{}",
            service(b),
            p.output,
            self.logs()
        );
    }
}

/// Polls `check` every millisecond or so until it is true; the time it took. Panics after
/// `bound`.
pub fn time_until(what: &str, bound: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !check() {
        assert!(t.elapsed() < bound, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    t.elapsed()
}

/// Prints a measured figure (`figure: …`) for the closing note.
pub fn figure(line: String) {
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("figure: {line}\n").as_bytes(),
    );
}

/// `d` in milliseconds, one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
