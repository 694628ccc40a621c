//! The agent's settings as an operator gives them: a TOML file (`--config`) under the flags,
//! `check-config` (exit 0 and the effective settings, or 2 and one line naming the file and
//! key), and SIGHUP reloading the file while the agent runs against a real etcd: a new prefix
//! list is published, a key that cannot change live is refused by name and the agent keeps
//! running. The same run checks the systemd notifications (READY=1 once synced, STOPPING=1 on
//! SIGTERM, WATCHDOG=1 when `$WATCHDOG_USEC` asks) through a fake `$NOTIFY_SOCKET`.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{Etcd, TempDir};

const GOOD: &str = r#"
# a host of the fleet "cfg"
etcd = ["http://127.0.0.1:2379"]
fleet = "cfg"
host = "h1"
endpoint = "10.99.0.1"
device = "ul0"
steer = ["10.192.0.0/10"]
sources = ["10.200.1.1"]
prefixes = ["10.200.1.0/24"]
lease_ttl = 7
"#;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lwtun-agent"))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn check_config(file: &Path, flags: &[&str]) -> Output {
    agent()
        .arg("check-config")
        .arg("--config")
        .arg(file)
        .args(flags)
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_good_file_checks_and_prints_the_effective_settings() {
    let dir = TempDir::new("cfg-good");
    let file = write(&dir.0, "agent.toml", GOOD);
    let out = check_config(&file, &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "exit 0: {stderr}");
    // what the file says, and the defaults it did not say
    let printed: toml::Table = stdout.parse().expect("the output is TOML");
    assert_eq!(printed["host"].as_str(), Some("h1"), "{stdout}");
    assert_eq!(printed["lease_ttl"].as_integer(), Some(7), "{stdout}");
    assert_eq!(printed["capacity"].as_integer(), Some(65_536), "{stdout}");
    assert_eq!(printed["encap"].as_str(), Some("udp"), "{stdout}");
    assert_eq!(printed["udp_port"].as_integer(), Some(6081), "{stdout}");
    // the printed settings are themselves a good file
    let again = write(&dir.0, "again.toml", &stdout);
    assert_eq!(check_config(&again, &[]).status.code(), Some(0));
    // an IPv4 and an IPv6 endpoint: a list in the file, the same list printed
    let both = GOOD.replace(
        "endpoint = \"10.99.0.1\"",
        "endpoint = [\"10.99.0.1\", \"fd99::1\"]",
    );
    let file = write(&dir.0, "both.toml", &both);
    let (stdout, stderr) = text(&check_config(&file, &[]));
    let printed: toml::Table = stdout
        .parse()
        .unwrap_or_else(|e| panic!("the output is TOML ({e}): {stdout} {stderr}"));
    let listed: Vec<_> = printed["endpoint"]
        .as_array()
        .expect("endpoint is printed as a list")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(listed, ["10.99.0.1", "fd99::1"], "{stdout}");
}

#[test]
fn flags_override_the_file_and_lists_replace_it() {
    let dir = TempDir::new("cfg-flags");
    let file = write(&dir.0, "agent.toml", GOOD);
    let out = check_config(
        &file,
        &[
            "--lease-ttl",
            "3",
            "--prefix",
            "10.201.0.0/16",
            "--prefix",
            "10.202.0.0/16",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let printed: toml::Table = stdout.parse().unwrap();
    assert_eq!(printed["lease_ttl"].as_integer(), Some(3), "{stdout}");
    let prefixes: Vec<&str> = printed["prefixes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(prefixes, ["10.201.0.0/16", "10.202.0.0/16"], "{stdout}");
    assert_eq!(
        printed["host"].as_str(),
        Some("h1"),
        "the file's other keys stay"
    );
    // a flag also rescues a bad file value
    let bad = write(
        &dir.0,
        "bad.toml",
        &GOOD.replace("lease_ttl = 7", "lease_ttl = 0"),
    );
    assert_eq!(check_config(&bad, &[]).status.code(), Some(2));
    assert_eq!(
        check_config(&bad, &["--lease-ttl", "5"]).status.code(),
        Some(0)
    );
    // and a bad flag is named as the flag
    let out = check_config(&file, &["--lease-ttl", "0"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("flag --lease-ttl: must be at least 1 second"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let dir = TempDir::new("cfg-key");
    let file = write(&dir.0, "agent.toml", &format!("{GOOD}lease_tll = 4\n"));
    let out = check_config(&file, &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.is_empty(), "nothing printed on stdout: {stdout}");
    let want = format!(
        "config {}: key \"lease_tll\": unknown key; the keys are ",
        file.display()
    );
    assert!(
        stderr.starts_with(&format!("lwtun-agent: {want}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("lease_ttl"),
        "the known keys are listed: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    // the agent itself refuses to start on it, with the same line
    let out = agent().arg("--config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains(&want), "{}", text(&out).1);
}

#[test]
fn a_bad_value_is_refused_naming_file_and_key() {
    let dir = TempDir::new("cfg-value");
    for (from, to, says) in [
        (
            "lease_ttl = 7",
            "lease_ttl = 0",
            "key \"lease_ttl\": must be at least 1 second",
        ),
        (
            "lease_ttl = 7",
            "lease_ttl = \"7s\"",
            "key \"lease_ttl\": invalid type",
        ),
        (
            "endpoint = \"10.99.0.1\"",
            "endpoint = \"10.99.0\"",
            "key \"endpoint\": ",
        ),
        (
            "endpoint = \"10.99.0.1\"",
            "endpoint = [\"10.99.0.1\", \"10.99.0.2\"]",
            "key \"endpoint\": 10.99.0.1, 10.99.0.2: give one address, or one IPv4 and one IPv6",
        ),
        ("host = \"h1\"", "host = \"h/1\"", "key \"host\": "),
        (
            "prefixes = [\"10.200.1.0/24\"]",
            "prefixes = [\"10.200.1.0/33\"]",
            "key \"prefixes\": ",
        ),
        (
            "lease_ttl = 7",
            "lease_ttl = 7\nencap = \"vxlan\"",
            "key \"encap\": ",
        ),
        (
            "lease_ttl = 7",
            "lease_ttl = 7\nlog_level = \"loud\"",
            "key \"log_level\": \"loud\" is not a level",
        ),
        (
            "lease_ttl = 7",
            "lease_ttl = 7\nlog_level = \"x=loud\"",
            "key \"log_level\": ",
        ),
    ] {
        assert!(GOOD.contains(from));
        let file = write(&dir.0, "agent.toml", &GOOD.replace(from, to));
        let out = check_config(&file, &[]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{to}: {stderr}");
        let want = format!("config {}: {says}", file.display());
        assert!(
            stderr.starts_with(&format!("lwtun-agent: {want}")),
            "{to}: want {want:?} in {stderr}"
        );
    }
    // a missing required key names the key, its flag and the file
    let file = write(&dir.0, "agent.toml", &GOOD.replace("device = \"ul0\"", ""));
    let (_, stderr) = text(&check_config(&file, &[]));
    assert!(
        stderr.contains(&format!(
            "key \"device\" (flag --device) is required (none in config {})",
            file.display()
        )),
        "{stderr}"
    );
    // not TOML at all: the line
    let file = write(&dir.0, "agent.toml", "fleet = \"cfg\"\nhost = h1\n");
    let out = check_config(&file, &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains(&format!("config {}: line 2: not TOML", file.display())),
        "{stderr}"
    );
    // a prefix file with a bad line: its path and line
    let prefixes = write(&dir.0, "prefixes", "10.200.2.0/24\n10.200.3.0/33\n");
    let file = write(
        &dir.0,
        "agent.toml",
        &format!("{GOOD}prefix_file = \"{}\"\n", prefixes.display()),
    );
    let out = check_config(&file, &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:2: \"10.200.3.0/33\"", prefixes.display())),
        "{stderr}"
    );
    // a file that is not there
    let out = check_config(&dir.0.join("nope.toml"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("nope.toml"), "{}", text(&out).1);
}

/// This host's published record, as etcd holds it.
fn published(rt: &tokio::runtime::Runtime, url: &str, key: &str) -> Option<String> {
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([url], None).await.ok()?;
        let got = c.get(key, None).await.ok()?;
        got.kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
    })
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Datagrams the agent sent to the fake systemd socket so far.
fn notifications(socket: &UnixDatagram) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = socket.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

#[test]
fn sighup_publishes_the_new_prefixes_refuses_a_fixed_key_and_systemd_hears_ready_and_stopping() {
    require!();
    if !support::etcd_installed(&common::test_name()) {
        return;
    }
    let dir = TempDir::new("cfg-hup");
    let mut etcd = Etcd::start(&dir.0);
    let ns = common::netns("agent-cfg");
    common::ip(
        &ns,
        &["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"],
    );
    common::ip(&ns, &["addr", "add", "10.99.0.1/24", "dev", "ul0"]);
    common::ip(&ns, &["link", "set", "ul0", "up"]);
    common::ip(&ns, &["link", "set", "ul1", "up"]);
    common::ip(&ns, &["addr", "add", "10.200.1.1/32", "dev", "lo"]);
    let pin = common::PinDir::new("agent-cfg");
    let settings = |prefixes: &str, capacity: u32, level: &str| {
        format!(
            "etcd = [\"{}\"]\nfleet = \"cfg\"\nhost = \"h1\"\nendpoint = \"10.99.0.1\"\n\
             device = \"ul0\"\nnetns = \"{}\"\nsteer = [\"10.192.0.0/10\"]\n\
             sources = [\"10.200.1.1\"]\nprefixes = [{prefixes}]\nlease_ttl = 5\n\
             capacity = {capacity}\npin = \"{}\"\nlog_level = \"{level}\"\n",
            etcd.url(),
            ns.name(),
            pin.arg()
        )
    };
    let file = write(
        &dir.0,
        "agent.toml",
        &settings("\"10.200.1.0/24\"", 64, "info"),
    );
    let systemd_path = dir.0.join("notify");
    let systemd = UnixDatagram::bind(&systemd_path).unwrap();
    systemd.set_nonblocking(true).unwrap();
    let log = dir.0.join("agent.log");
    let mut child = agent()
        .arg("--config")
        .arg(&file)
        .env("NOTIFY_SOCKET", &systemd_path)
        .env("WATCHDOG_USEC", "300000")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let rt = support::runtime();
    let key = "/lwtun/fleet/cfg/hosts/h1";
    let has = |p: &str| published(&rt, &etcd.url(), key).is_some_and(|r| r.contains(p));
    wait_for("the first record", Duration::from_secs(20), || {
        has("10.200.1.0/24")
    });
    let mut heard = Vec::new();
    wait_for("READY=1", Duration::from_secs(5), || {
        heard.extend(notifications(&systemd));
        heard.iter().any(|n| n == "READY=1")
    });
    let ready_at = Instant::now();
    assert!(!has("10.200.9.0/24"));

    // new prefixes and log level (reloadable) and a new capacity (not): SIGHUP
    std::fs::write(
        &file,
        settings("\"10.200.1.0/24\", \"10.200.9.0/24\"", 128, "warn"),
    )
    .unwrap();
    let sent = Instant::now();
    // SAFETY: a signal to the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    wait_for("the new prefix in etcd", Duration::from_secs(5), || {
        has("10.200.9.0/24")
    });
    eprintln!("SIGHUP to the new record in etcd: {:?}", sent.elapsed());
    wait_for("the refusal in the log", Duration::from_secs(5), || {
        read_log().contains("key \"capacity\" cannot change")
    });
    let text = read_log();
    let refusal = text
        .lines()
        .find(|l| l.contains("key \"capacity\""))
        .unwrap();
    assert!(
        refusal.contains("WARN") && refusal.contains("keeping 64"),
        "the refusal says the value kept: {refusal}"
    );
    assert!(
        !text.contains("key \"prefixes\" cannot"),
        "prefixes reload: {text}"
    );
    assert!(child.try_wait().unwrap().is_none(), "still running: {text}");

    // a broken file on SIGHUP changes nothing and the agent runs on
    std::fs::write(&file, "fleet = \n").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    wait_for("the error in the log", Duration::from_secs(5), || {
        read_log().contains("not TOML")
    });
    assert!(has("10.200.9.0/24"), "the record stays");
    assert!(child.try_wait().unwrap().is_none(), "still running");

    // running long enough for a few watchdog periods after the start
    std::thread::sleep(Duration::from_millis(600).saturating_sub(ready_at.elapsed()));
    // SIGTERM: STOPPING=1, the record withdrawn, exit 0
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let text = read_log();
    eprintln!("the agent's stderr:\n{text}");
    assert!(status.success(), "{status}: {text}");
    assert!(
        text.contains("SIGHUP: log level warn") && !text.contains("stopping: withdrawing"),
        "the reloaded level (warn) silences the INFO line on SIGTERM: {text}"
    );
    heard.extend(notifications(&systemd));
    // after READY=1 (the data plane's load blocks the loop, and so the pings, before it)
    let pings = heard
        .iter()
        .skip_while(|n| *n != "READY=1")
        .filter(|n| *n == "WATCHDOG=1")
        .count();
    heard.retain(|n| n != "WATCHDOG=1");
    assert_eq!(heard, ["READY=1", "STOPPING=1"], "{text}");
    assert!(
        pings >= 3,
        "WATCHDOG=1 every 0.15 s over {:?} after READY=1: {pings}",
        ready_at.elapsed()
    );
    assert_eq!(published(&rt, &etcd.url(), key), None, "withdrawn at once");
    // every line a timestamped, levelled event
    for line in text.lines() {
        let (stamp, rest) = line.split_once(' ').unwrap_or_default();
        assert!(
            stamp.len() >= 20 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "RFC 3339 UTC timestamp: {line:?}"
        );
        let level = rest.trim_start().split(' ').next().unwrap_or_default();
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level),
            "a level: {line:?}"
        );
        assert!(line.contains(" agent{host=h1}: "), "the host: {line:?}");
    }
    etcd.kill();
}

#[test]
fn the_log_filter_is_log_level_else_rust_log() {
    // A namespace that does not exist: the agent fails at once, with an ERROR line, before
    // touching anything (no etcd, no data plane).
    let dir = TempDir::new("cfg-log");
    let file = write(
        &dir.0,
        "agent.toml",
        &format!(
            "{GOOD}netns = \"lwtun-agent-nosuch-{}\"\n",
            std::process::id()
        ),
    );
    let run = |rust_log: Option<&str>, flags: &[&str]| {
        let mut cmd = agent();
        cmd.arg("--config").arg(&file).args(flags);
        match rust_log {
            Some(v) => cmd.env("RUST_LOG", v),
            None => cmd.env_remove("RUST_LOG"),
        };
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out).1);
        text(&out).1
    };
    let said = run(None, &[]);
    let line = said.lines().next().unwrap_or_default();
    assert!(
        line.contains(" ERROR agent{host=h1}: open network namespace lwtun-agent-nosuch-"),
        "{said}"
    );
    assert_eq!(said.lines().count(), 1, "{said}");
    assert_eq!(run(Some("off"), &[]), "", "RUST_LOG=off silences it");
    assert!(
        run(Some("off"), &["--log-level", "error"]).contains(" ERROR "),
        "log_level wins over RUST_LOG"
    );
}
