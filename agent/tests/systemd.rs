//! The systemd unit (agent/systemd/lwtun-agent.service) and its example config: the unit passes
//! `systemd-analyze verify` (this machine's PID 1 is not systemd, so the unit cannot run for
//! real here), the example config passes `check-config`, and the unit's capability set is
//! measured, not guessed: the agent loads its data plane with exactly that bounding set, fails
//! without any one of its capabilities, and needs CAP_SYS_ADMIN only for a named netns.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const UNIT: &str = include_str!("../systemd/lwtun-agent.service");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/agent.toml.example");
const BIN: &str = env!("CARGO_BIN_EXE_lwtun-agent");

/// The value of `key=` in the unit (the last one, as systemd takes it).
fn unit_value(key: &str) -> String {
    UNIT.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key}= in the unit"))
        .to_string()
}

#[test]
fn the_unit_says_what_a_notify_service_needs() {
    assert_eq!(unit_value("Type"), "notify");
    assert_eq!(unit_value("Restart"), "on-failure");
    assert_eq!(unit_value("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(
        unit_value("ExecStart"),
        "/usr/local/bin/lwtun-agent --config /etc/lwtun/agent.toml"
    );
    assert_eq!(
        unit_value("CapabilityBoundingSet"),
        unit_value("AmbientCapabilities")
    );
    assert_eq!(unit_value("ReadWritePaths"), "/sys/fs/bpf", "pins");
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let tool = "/usr/bin/systemd-analyze";
    if !Path::new(tool).exists() {
        eprintln!("SKIPPED the_unit_passes_systemd_analyze_verify: {tool} missing (apt-get install systemd)");
        return;
    }
    if Path::new("/run/systemd/system").is_dir() {
        eprintln!("note: systemd runs here; this test still only verifies the unit");
    }
    // verify checks that ExecStart's binary exists: point it at the one just built
    let dir = std::env::temp_dir().join(format!("lwtun-agent-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("lwtun-agent.service");
    std::fs::write(&unit, UNIT.replace("/usr/local/bin/lwtun-agent", BIN)).unwrap();
    let out = Command::new(tool)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{stderr}");
    // unknown keys and bad values are only warnings: there must be none about this unit
    let about: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("lwtun-agent.service"))
        .collect();
    assert!(about.is_empty(), "{stderr}");
}

#[test]
fn the_example_config_is_valid() {
    let out = Command::new(BIN)
        .args(["check-config", "--config", EXAMPLE])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the agent (etcd unreachable: only the data plane matters) with `caps` as its bounding
/// set, in `ns` (entered before, with `inside`) or naming it (`--netns`); returns whether the
/// data plane loaded, and the agent's stderr.
fn loads_with(ns: &lwtun::netns::NetNs, caps: &[&str], inside: bool) -> (bool, String) {
    let set: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let bounding = format!("--bounding-set=-all,{}", set.join(","));
    let netns_file = format!("/run/netns/{}", ns.name());
    let mut cmd = if inside {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={netns_file}")).arg("setpriv");
        c
    } else {
        Command::new("setpriv")
    };
    cmd.arg(&bounding).arg(BIN);
    cmd.args([
        "--etcd",
        "http://127.0.0.1:9",
        "--fleet",
        "caps",
        "--host",
        "h1",
    ])
    .args(["--endpoint", "10.99.0.1", "--steer", "10.192.0.0/10"])
    .args([
        "--source",
        "10.200.1.1",
        "--device",
        "ul0",
        "--capacity",
        "64",
    ]);
    if !inside {
        cmd.args(["--netns", ns.name()]);
    }
    let pin = common::PinDir::new("agent-caps");
    cmd.args(["--pin", pin.arg()]);
    let log = std::env::temp_dir().join(format!("lwtun-agent-caps-{}.log", std::process::id()));
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let loaded = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("data plane loaded") {
            break true;
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: a signal to the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_dir_all(&pin.0);
    (loaded, text)
}

#[test]
fn the_units_capabilities_are_enough_and_each_is_needed() {
    require!();
    for tool in ["setpriv", "nsenter"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("SKIPPED the_units_capabilities_are_enough_and_each_is_needed: {tool} missing (util-linux)");
            return;
        }
    }
    let ns = common::netns("agent-caps");
    common::ip(
        &ns,
        &["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"],
    );
    common::ip(&ns, &["addr", "add", "10.99.0.1/24", "dev", "ul0"]);
    common::ip(&ns, &["link", "set", "ul0", "up"]);
    common::ip(&ns, &["link", "set", "ul1", "up"]);
    common::ip(&ns, &["addr", "add", "10.200.1.1/32", "dev", "lo"]);
    let set = unit_value("CapabilityBoundingSet");
    let caps: Vec<&str> = set.split_whitespace().collect();
    assert!(!caps.contains(&"CAP_SYS_ADMIN"), "not by default: {set}");

    // the agent in the data plane's namespace (no netns key): the unit's set is enough...
    let (loaded, text) = loads_with(&ns, &caps, true);
    assert!(loaded, "loads with {set}: {text}");
    // ...and each capability of it is needed
    for drop in &caps {
        let fewer: Vec<&str> = caps.iter().copied().filter(|c| c != drop).collect();
        let (loaded, text) = loads_with(&ns, &fewer, true);
        assert!(
            !loaded,
            "loads without {drop}, so the unit should not grant it: {text}"
        );
        assert!(
            text.contains("ERROR"),
            "without {drop} the failure is said: {text}"
        );
    }
    // with the netns key: CAP_SYS_ADMIN too (setns), as the unit's comment says
    let (loaded, text) = loads_with(&ns, &caps, false);
    assert!(!loaded, "setns needs CAP_SYS_ADMIN: {text}");
    assert!(text.contains("CAP_SYS_ADMIN"), "the error names it: {text}");
    let mut more = caps.clone();
    more.push("CAP_SYS_ADMIN");
    let (loaded, text) = loads_with(&ns, &more, false);
    assert!(loaded, "loads with {more:?} and --netns: {text}");
}
