//! The agent binary with etcd down: its data plane loads, then every attempt to reach etcd
//! fails (a loopback port nobody listens on). What an operator reads on stderr must be one line
//! per failure, with an RFC 3339 timestamp and a level, naming the endpoint and what to check,
//! never the transport's debug dump; a failure that repeats (the agent retries every 0.1 to
//! 2 s) is printed at most once per [`lwtun_agent::report::QUIET`], the repeat saying how many
//! times it happened meanwhile.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use lwtun_agent::report::QUIET;

#[test]
fn a_down_etcd_is_one_line_naming_it_with_a_hint_and_rate_limited() {
    require!();
    let ns = common::netns("agent-down");
    common::ip(
        &ns,
        &["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"],
    );
    common::ip(&ns, &["addr", "add", "10.99.0.1/24", "dev", "ul0"]);
    common::ip(&ns, &["link", "set", "ul0", "up"]);
    common::ip(&ns, &["link", "set", "ul1", "up"]);
    common::ip(&ns, &["addr", "add", "10.200.1.1/32", "dev", "lo"]);
    let pin = common::PinDir::new("agent-down");
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("127.0.0.1:{port}");
    let log = std::env::temp_dir().join(format!("lwtun-agent-down-{}.log", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_lwtun-agent"))
        .args(["--etcd", &format!("http://{endpoint}")])
        .args(["--fleet", "down", "--host", "h1", "--endpoint", "10.99.0.1"])
        .args(["--prefix", "10.200.1.0/24", "--steer", "10.192.0.0/10"])
        .args([
            "--source",
            "10.200.1.1",
            "--device",
            "ul0",
            "--netns",
            ns.name(),
        ])
        .args(["--lease-ttl", "3", "--capacity", "64", "--pin", pin.arg()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Long enough for a repeat after QUIET (retries: 0.1 s doubling to at most 0.75 s with
    // this TTL, so a dozen or more are held back meanwhile).
    let run = QUIET + Duration::from_secs(2);
    std::thread::sleep(run);
    // SAFETY: a signal to the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    eprintln!("the agent's stderr:\n{text}");
    assert!(
        status.success(),
        "exits cleanly on SIGTERM ({status}): {text}"
    );
    assert!(
        text.contains("data plane loaded"),
        "the data plane came up first: {text}"
    );
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("etcd") && !l.contains("data plane loaded"))
        .collect();
    assert!(!errors.is_empty(), "the failure is reported: {text}");
    for line in &errors {
        let (stamp, rest) = line.split_once(' ').unwrap_or_default();
        assert!(
            stamp.len() >= 20 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "an RFC 3339 UTC timestamp first: {line:?}"
        );
        assert!(
            rest.trim_start()
                .starts_with("WARN agent{host=h1}: etcd at ")
                && line.contains(&endpoint)
                && line.contains("refused the connection: is it running?"),
            "one warning naming the endpoint with a hint: {line:?}"
        );
    }
    for raw in [
        "tonic",
        "ConnectError",
        "transport error",
        "Transport",
        "{\"",
        "{ ",
    ] {
        assert!(!text.contains(raw), "no debug dump ({raw}): {text}");
    }
    // The first line, then at most one repeat per QUIET.
    let allowed = 1 + (run.as_secs() / QUIET.as_secs()) as usize;
    assert!(
        errors.len() <= allowed,
        "{} lines in {run:?}, at most {allowed}: {text}",
        errors.len()
    );
    // The repeat after QUIET says how often the failure happened meanwhile.
    let repeat = errors
        .iter()
        .find_map(|l| l.split(" (repeated ").nth(1))
        .unwrap_or_else(|| panic!("a repeat line with its count: {text}"));
    let count: u32 = repeat
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count: {repeat}"));
    assert!(
        count >= 5 && repeat.contains(" times in 1"),
        "held back retries counted ({count}) over about {QUIET:?}: {repeat}"
    );
}
