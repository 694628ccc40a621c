//! The agent against a real etcd that serves TLS only and asks for client certificates
//! (`--cert-file --key-file --trusted-ca-file --client-cert-auth`), with certificates made here
//! (rcgen): two agents publish and see each other's peers over mutual TLS, then again with
//! etcd's authentication enabled (a user whose role may read and write the fleet's keys only).
//! What no retry can fix — etcd's certificate from another CA, no client certificate, a client
//! certificate from another CA or expired, a server name the certificate does not carry, a
//! wrong password, no user while auth is on, a user whose role does not cover the fleet's
//! keys, an endpoint scheme etcd does not serve — ends the agent
//! within seconds with one line saying what to check; the binary prints that line once and
//! exits with EX_CONFIG (78).

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lwtun_agent::agent::{Agent, AgentConfig, Control};
use lwtun_agent::dataplane::MemoryTable;
use lwtun_agent::etcd::{AccessConfig, EtcdAccess};
use lwtun_agent::fleet::Fleet;
use lwtun_agent::layout::Layout;
use lwtun_agent::record::HostRecord;
use lwtun_agent::status::Status;
use lwtun_agent::AgentError;
use support::tls::{pki, TlsEtcd, AGENT_PASSWORD, AGENT_USER};
use support::{runtime, TempDir};

fn record(i: u8) -> HostRecord {
    HostRecord::decode(
        format!(
            r#"{{"endpoint":"10.99.0.{i}","encap":"udp","udp_port":6081,"prefixes":["10.200.{i}.0/24"]}}"#
        )
        .as_bytes(),
    )
    .unwrap()
}

fn config(url: &str, host: &str, record: HostRecord, status: Option<PathBuf>) -> AgentConfig {
    AgentConfig {
        etcd: vec![url.to_string()],
        host: host.into(),
        record,
        lease_ttl: 5,
        status,
    }
}

/// A running library agent: its control channel and thread.
struct Running {
    tx: tokio::sync::mpsc::Sender<Control>,
    thread: std::thread::JoinHandle<Result<MemoryTable, AgentError>>,
    status: PathBuf,
}

fn start_agent(dir: &Path, url: &str, fleet: &str, i: u8, access: EtcdAccess) -> Running {
    let host = format!("h{i}");
    let status = dir.join(format!("{fleet}-{host}.status"));
    let _ = std::fs::remove_file(&status);
    let record = record(i);
    let fleet = Fleet::new(
        Layout::new("/lwtun/fleet", fleet).unwrap(),
        &host,
        record.endpoint,
    );
    let config = config(url, &host, record, Some(status.clone()));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let thread = std::thread::spawn(move || {
        let mut agent = Agent::new(config, fleet, MemoryTable::default()).with_access(access);
        runtime()
            .block_on(agent.run(rx))
            .map(|()| agent.sink().clone())
    });
    Running { tx, thread, status }
}

fn wait_peer(r: &Running, prefix: &str, remote: &str) -> Duration {
    let t = Instant::now();
    loop {
        let s = Status::read(&r.status).ok();
        if let Some(s) = &s {
            if s.peers
                .iter()
                .any(|p| p.prefix == prefix && p.remote == remote)
            {
                return t.elapsed();
            }
        }
        if r.thread.is_finished() {
            panic!("the agent stopped: status {s:?}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no peer {prefix} → {remote}: status {s:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Two agents over `access`, each until it sees the other's peer; then both stop.
fn two_agents_converge(dir: &Path, url: &str, fleet: &str, access: impl Fn() -> EtcdAccess) {
    let a = start_agent(dir, url, fleet, 1, access());
    let b = start_agent(dir, url, fleet, 2, access());
    let ta = wait_peer(&a, "10.200.2.0/24", "10.99.0.2");
    let tb = wait_peer(&b, "10.200.1.0/24", "10.99.0.1");
    eprintln!("{fleet}: h1 saw h2 after {ta:?}, h2 saw h1 after {tb:?}");
    // (the first to stop revokes its lease, so the other's table may be empty by then)
    for r in [a, b] {
        r.tx.blocking_send(Control::Shutdown).unwrap();
        r.thread.join().unwrap().expect("clean shutdown");
    }
}

/// An agent with `access` that etcd refuses: the line it ends with, and how long it took.
fn refused(url: &str, access: EtcdAccess) -> (String, Duration) {
    let record = record(9);
    let fleet = Fleet::new(
        Layout::new("/lwtun/fleet", "refused").unwrap(),
        "h9",
        record.endpoint,
    );
    let mut agent = Agent::new(
        config(url, "h9", record, None),
        fleet,
        MemoryTable::default(),
    )
    .with_access(access);
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let t = Instant::now();
    let result = runtime()
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), agent.run(rx)).await });
    let took = t.elapsed();
    match result {
        Ok(Err(AgentError::Access(line))) => (line, took),
        other => panic!("not refused at start after {took:?}: {other:?}"),
    }
}

fn assert_line(line: &str, took: Duration, says: &[&str]) {
    eprintln!("refused in {took:?}: {line}");
    assert!(!line.contains('\n'), "one line: {line:?}");
    for raw in ["tonic", "Transport", "{", "Status {"] {
        assert!(!line.contains(raw), "no debug dump ({raw}): {line}");
    }
    for s in says {
        assert!(line.contains(s), "says {s:?}: {line}");
    }
    assert!(took < Duration::from_secs(5), "refused after {took:?}");
}

#[test]
fn agents_converge_over_mutual_tls_and_auth_and_refusals_are_one_line() {
    if !support::etcd_installed(
        "agents_converge_over_mutual_tls_and_auth_and_refusals_are_one_line",
    ) {
        return;
    }
    let dir = TempDir::new("tls");
    let pki = pki(&dir.0);
    let etcd = TlsEtcd::start(&dir.0, &pki);
    let url = etcd.url();
    let at = format!("etcd at 127.0.0.1:{}", etcd.port);

    // mutual TLS, no auth yet (etcd's certificate names localhost and 127.0.0.1: the name
    // checked can be either)
    two_agents_converge(&dir.0, &url, "mtls", || etcd.access(&pki, |_| {}));
    two_agents_converge(&dir.0, &url, "mtls-named", || {
        etcd.access(&pki, |c| c.server_name = Some("localhost".into()))
    });
    let (line, took) = refused(
        &url,
        etcd.access(&pki, |c| c.server_name = Some("etcd.invalid".into())),
    );
    assert_line(
        &line,
        took,
        &[&at, "not made for --etcd-server-name etcd.invalid"],
    );

    // refused TLS: etcd's certificate from another CA; no client certificate; one from
    // another CA
    let (line, took) = refused(
        &url,
        etcd.access(&pki, |c| c.ca = Some(pki.other_ca.clone())),
    );
    let other_ca = pki.other_ca.display().to_string();
    assert_line(&line, took, &[&at, "not signed by --etcd-ca", &other_ca]);
    let (line, took) = refused(
        &url,
        etcd.access(&pki, |c| {
            c.cert = None;
            c.key = None;
        }),
    );
    assert_line(
        &line,
        took,
        &[&at, "requires a client certificate: give --etcd-cert"],
    );
    let (line, took) = refused(
        &url,
        etcd.access(&pki, |c| {
            c.cert = Some(pki.stranger.0.clone());
            c.key = Some(pki.stranger.1.clone());
        }),
    );
    let stranger = pki.stranger.0.display().to_string();
    assert_line(
        &line,
        took,
        &[&at, "refuse", "client certificate", &stranger],
    );
    let (line, took) = refused(
        &url,
        etcd.access(&pki, |c| {
            c.cert = Some(pki.expired.0.clone());
            c.key = Some(pki.expired.1.clone());
        }),
    );
    let expired = pki.expired.0.display().to_string();
    assert_line(&line, took, &[&at, "client certificate", &expired]);

    // a user for an etcd without authentication: the client cannot get a token
    let password = dir.0.join("password");
    std::fs::write(&password, format!("{AGENT_PASSWORD}\n")).unwrap();
    let (line, took) = refused(
        &url,
        etcd.access(&pki, |c| {
            c.user = Some(AGENT_USER.into());
            c.password_file = Some(password.clone());
        }),
    );
    assert_line(&line, took, &[&at, "does not have authentication enabled"]);

    // authentication on: the agents' user and password work; nothing else does
    etcd.enable_auth(&pki, "/lwtun/fleet/");
    let with_user = |c: &mut AccessConfig| {
        c.user = Some(AGENT_USER.into());
        c.password_file = Some(password.clone());
    };
    let a = start_agent(&dir.0, &url, "auth", 1, etcd.access(&pki, with_user));
    let b = start_agent(&dir.0, &url, "auth", 2, etcd.access(&pki, with_user));
    let ta = wait_peer(&a, "10.200.2.0/24", "10.99.0.2");
    let tb = wait_peer(&b, "10.200.1.0/24", "10.99.0.1");
    eprintln!("auth: h1 saw h2 after {ta:?}, h2 saw h1 after {tb:?}");
    // past the tokens' 1 s TTL, h1 publishes a new prefix: its put renews the token, and h2's
    // watch, opened with the old one, still delivers
    std::thread::sleep(Duration::from_millis(2500));
    let mut moved = record(1);
    moved.prefixes.push("10.201.1.0/24".parse().unwrap());
    a.tx.blocking_send(Control::Publish(moved)).unwrap();
    let t = wait_peer(&b, "10.201.1.0/24", "10.99.0.1");
    eprintln!("auth: h2 saw h1's new prefix {t:?} after the token expired");
    for r in [&a, &b] {
        let s = Status::read(&r.status).unwrap();
        assert_eq!(s.reconnects, 0, "a session was lost: {s:?}");
    }
    for r in [a, b] {
        r.tx.blocking_send(Control::Shutdown).unwrap();
        r.thread.join().unwrap().expect("clean shutdown");
    }

    let wrong = dir.0.join("wrong-password");
    std::fs::write(&wrong, "not-it\n").unwrap();
    let (line, took) = refused(
        &url,
        etcd.access(&pki, |c| {
            c.user = Some(AGENT_USER.into());
            c.password_file = Some(wrong.clone());
        }),
    );
    let wrong_name = wrong.display().to_string();
    assert_line(
        &line,
        took,
        &[&at, "wrong user or password", AGENT_USER, &wrong_name],
    );
    let (line, took) = refused(&url, etcd.access(&pki, |_| {}));
    assert_line(&line, took, &[&at, "--etcd-user"]);
    let (line, took) = refused(
        &url,
        etcd.access(&pki, |c| {
            c.user = Some("other".into());
            c.password_file = Some(password.clone());
        }),
    );
    assert_line(
        &line,
        took,
        &[&at, "denied user other access to the fleet's keys"],
    );
}

/// The binary: data plane up, then a refused CA or password ends it with one line and
/// EX_CONFIG, no retries.
#[test]
fn the_agent_binary_exits_78_with_one_line_when_etcd_refuses_it() {
    require!();
    if !support::etcd_installed("the_agent_binary_exits_78_with_one_line_when_etcd_refuses_it") {
        return;
    }
    let dir = TempDir::new("tls-bin");
    let pki = pki(&dir.0);
    let etcd = TlsEtcd::start(&dir.0, &pki);
    etcd.enable_auth(&pki, "/lwtun/fleet/");
    let wrong = dir.0.join("wrong-password");
    std::fs::write(&wrong, "not-it\n").unwrap();
    let ns = common::netns("agent-tls");
    common::ip(
        &ns,
        &["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"],
    );
    common::ip(&ns, &["addr", "add", "10.99.0.1/24", "dev", "ul0"]);
    common::ip(&ns, &["link", "set", "ul0", "up"]);
    common::ip(&ns, &["link", "set", "ul1", "up"]);
    common::ip(&ns, &["addr", "add", "10.200.1.1/32", "dev", "lo"]);
    let at = format!("etcd at 127.0.0.1:{}", etcd.port);
    let path = |p: &Path| p.display().to_string();
    let cases: [(&str, Vec<String>, Vec<String>); 2] = [
        (
            "wrong CA",
            vec![
                "--etcd-ca".into(),
                path(&pki.other_ca),
                "--etcd-cert".into(),
                path(&pki.client.0),
                "--etcd-key".into(),
                path(&pki.client.1),
            ],
            vec![
                at.clone(),
                "not signed by --etcd-ca".into(),
                path(&pki.other_ca),
            ],
        ),
        (
            "wrong password",
            vec![
                "--etcd-ca".into(),
                path(&pki.ca),
                "--etcd-cert".into(),
                path(&pki.client.0),
                "--etcd-key".into(),
                path(&pki.client.1),
                "--etcd-user".into(),
                AGENT_USER.into(),
                "--etcd-password-file".into(),
                path(&wrong),
            ],
            vec![at.clone(), "wrong user or password".into(), path(&wrong)],
        ),
    ];
    for (what, flags, says) in cases {
        let pin = common::PinDir::new("agent-tls");
        let log = dir.0.join("agent.log");
        let t = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_lwtun-agent"))
            .args(["--etcd", &etcd.url()])
            .args(&flags)
            .args(["--fleet", "tls", "--host", "h1", "--endpoint", "10.99.0.1"])
            .args(["--prefix", "10.200.1.0/24", "--steer", "10.192.0.0/10"])
            .args(["--source", "10.200.1.1", "--device", "ul0"])
            .args(["--netns", ns.name()])
            .args(["--lease-ttl", "3", "--capacity", "64", "--pin", pin.arg()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if t.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{what}: still running after 10 s: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = t.elapsed();
        let text = std::fs::read_to_string(&log).unwrap();
        eprintln!("{what}: exit {status} after {took:?}:\n{text}");
        assert_eq!(status.code(), Some(78), "{what}: EX_CONFIG: {text}");
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("data plane loaded"))
            .collect();
        assert_eq!(lines.len(), 1, "{what}: one line: {text}");
        assert!(lines[0].starts_with("lwtun-agent: etcd at "), "{text}");
        for s in &says {
            assert!(lines[0].contains(s.as_str()), "{what}: says {s:?}: {text}");
        }
        assert!(took < Duration::from_secs(5), "{what}: took {took:?}");
    }
}

/// Endpoint schemes that do not match what etcd serves: https:// to a plain etcd, http:// to
/// a TLS-only one. Both end at start with one line saying which.
#[test]
fn a_scheme_etcd_does_not_serve_is_one_line() {
    if !support::etcd_installed("a_scheme_etcd_does_not_serve_is_one_line") {
        return;
    }
    let dir = TempDir::new("tls-scheme");
    let pki = pki(&dir.0);
    let tls = TlsEtcd::start(&dir.0, &pki);
    let plain_dir = dir.0.join("plain");
    std::fs::create_dir_all(&plain_dir).unwrap();
    let plain = support::Etcd::start(&plain_dir);

    let url = format!("http://127.0.0.1:{}", tls.port);
    let (line, took) = refused(&url, EtcdAccess::default());
    assert_line(
        &line,
        took,
        &[
            &format!("etcd at 127.0.0.1:{}", tls.port),
            "does it serve TLS only? use https://",
        ],
    );

    let url = plain.url().replace("http://", "https://");
    let access = AccessConfig {
        ca: Some(pki.ca.clone()),
        ..AccessConfig::default()
    }
    .load(std::slice::from_ref(&url))
    .unwrap();
    let (line, took) = refused(&url, access);
    assert_line(
        &line,
        took,
        &[
            &url.replace("https://", "etcd at "),
            "during the TLS handshake: does it serve plain http? use http://",
        ],
    );
}
