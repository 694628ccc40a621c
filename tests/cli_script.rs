//! Scripting against the `lwtun` command as against `ip`: real failures end with their kind's
//! exit code (the table in `lwtun --help`), under `-j` the error is a JSON object on stderr,
//! a reader that stops early (`| head -1`) ends the command quietly, every subcommand has a
//! man page that renders, and the messages name objects by name with the command that fixes
//! them, and nothing of the Rust API.

#[path = "common/cli.rs"]
mod cli;
mod common;

use cli::{lwtun, ok};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Runs `lwtun ARGS`, which must fail with `code`; its stderr, which must be one `lwtun: ...`
/// sentence (and libbpf's lines after it, if any; clap's text for a usage error), never a
/// panic.
fn fails(args: &[&str], code: i32) -> String {
    let out = lwtun(args);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(code), "lwtun {args:?}: {err}");
    if code != 2 {
        assert!(err.starts_with("lwtun: "), "lwtun {args:?}: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Runs `lwtun -j ARGS`, which must fail with `code`; its JSON error from stderr (nothing on
/// stdout).
fn fails_json(args: &[&str], code: i32) -> Value {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let out = lwtun(&all);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(code), "lwtun {all:?}: {err}");
    assert!(out.stdout.is_empty(), "nothing on stdout");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let v: Value = serde_json::from_str(&err).unwrap_or_else(|e| panic!("{e}: {err}"));
    let e = &v["error"];
    for field in [
        "kind",
        "exit_code",
        "op",
        "object",
        "message",
        "errno",
        "kernel",
        "hint",
        "libbpf",
    ] {
        assert!(e.get(field).is_some(), "field {field} in {v}");
    }
    assert_eq!(e["exit_code"], code, "{v}");
    v
}

/// A message for CLI users names no Rust API and no device by index.
fn speaks_cli(message: &str) {
    for rust in ["::", "Builder", "()", "dev#"] {
        assert!(!message.contains(rust), "{rust:?} in {message}");
    }
}

/// A folder under the temp dir (not on a BPF filesystem), removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("lwtun-script-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn failures_exit_with_their_kinds_code_and_json_errors() {
    require!();
    // usage (clap), also as JSON under -j
    fails(&["frobnicate"], 2);
    let v = fails_json(&["peer", "show"], 2);
    assert_eq!(v["error"]["kind"], "usage", "{v}");

    // not_found: a folder without a tunnel; the fix command has every required flag
    let empty = common::PinDir::new("script-empty");
    let err = fails(&["tunnel", "show", "--pin", empty.arg()], 3);
    assert!(
        err.contains(&format!(
            "load one with `lwtun tunnel load --pin {}`",
            empty.arg()
        )),
        "{err}"
    );
    speaks_cli(&err);
    let v = fails_json(&["peer", "show", "--pin", empty.arg()], 3);
    let e = &v["error"];
    assert_eq!(e["kind"], "not_found", "{v}");
    assert_eq!(e["op"], "read pinned tunnel", "{v}");
    assert_eq!(e["object"], empty.arg(), "{v}");
    assert!(
        e["hint"]
            .as_str()
            .unwrap()
            .contains("lwtun tunnel load --pin"),
        "{v}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("no lwtun tunnel pins"),
        "{v}"
    );

    // invalid_input: a pin folder off bpffs, refused before anything is made
    let off = TempDir::new("offbpffs");
    let nested = off.0.join("a/b");
    let err = fails(&["tunnel", "load", "--pin", nested.to_str().unwrap()], 7);
    assert!(err.contains("is not on a BPF filesystem"), "{err}");
    assert!(err.contains("use a folder under /sys/fs/bpf"), "{err}");
    assert!(!err.contains("Invalid argument"), "{err}");
    assert!(!err.contains("libbpf"), "libbpf was not reached: {err}");
    assert!(!off.0.exists(), "nothing made");
    speaks_cli(&err);
    let v = fails_json(&["tunnel", "load", "--pin", nested.to_str().unwrap()], 7);
    assert_eq!(v["error"]["kind"], "invalid_input", "{v}");

    // permission: an unprivileged user loading a tunnel; no libbpf guesswork after the error
    let perm = common::PinDir::new("script-perm");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_lwtun"))
        .args(["tunnel", "load", "--pin", perm.arg()])
        .output();
    match out {
        Ok(out) if !matches!(out.status.code(), Some(126 | 127)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(5), "{err}");
            assert!(err.contains("run as root"), "{err}");
            assert!(!err.contains("libbpf"), "{err}");
            assert!(!perm.0.exists(), "nothing made");
        }
        _ => eprintln!("SKIPPED the permission exit code: setpriv cannot run lwtun as nobody"),
    }

    // invalid_input: a bad peer on the command line
    let pin = common::PinDir::new("script-codes");
    ok(&["tunnel", "load", "--pin", pin.arg()]);
    let err = fails(
        &[
            "peer",
            "add",
            "--pin",
            pin.arg(),
            "10.0.0.0/8",
            "remote",
            "1.1.1.1",
            "encap",
            "ipip",
        ],
        7,
    );
    assert!(err.contains("local"), "{err}");

    // exists: a peer added twice; then a live owner of the pins (a library process)
    let peer = [
        "peer",
        "add",
        "--pin",
        pin.arg(),
        "10.1.0.0/16",
        "remote",
        "192.0.2.1",
        "local",
        "192.0.2.2",
        "encap",
        "ipip",
    ];
    ok(&peer);
    fails(&peer, 4);
    let owner = lwtun::tunnel::Tunnel::builder()
        .pin(&pin.0)
        .forward_only(true)
        .load()
        .unwrap();
    let v = fails_json(&["peer", "del", "--pin", pin.arg(), "10.1.0.0/16"], 4);
    assert_eq!(v["error"]["kind"], "exists", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("process {}", std::process::id())),
        "names the owner: {v}"
    );
    // the owner loaded without keeping its pins: they go with it
    drop(owner);
}

#[test]
fn messages_name_devices_and_give_complete_commands() {
    require!();
    let ns = common::netns("script-msg");
    let n = ns.name().to_string();
    common::ip(
        &ns,
        &["link", "add", "sc0", "type", "veth", "peer", "name", "sc1"],
    );
    common::ip(&ns, &["addr", "add", "10.77.0.1/24", "dev", "sc0"]);
    common::ip(&ns, &["link", "set", "sc0", "up"]);
    common::ip(&ns, &["link", "set", "sc1", "up"]);

    // xdp stats without a program: the device by name, the attach command with -n
    let err = fails(&["-n", &n, "xdp", "stats", "sc0"], 3);
    assert!(err.contains("no XDP program is attached to sc0"), "{err}");
    assert!(
        err.contains(&format!("`lwtun -n {n} xdp attach sc0`")),
        "{err}"
    );
    speaks_cli(&err);

    // a device that is not there: the namespace by name and the ip command that lists them
    let err = fails(&["-n", &n, "xdp", "stats", "nodev0"], 3);
    assert!(
        err.contains(&format!("no such device in network namespace {n}"))
            && err.contains(&format!("`ip -n {n} link`")),
        "{err}"
    );
    speaks_cli(&err);
    // a route that is not there: the show command in the same namespace
    let err = fails(&["-n", &n, "route", "del", "10.21.0.0/16"], 3);
    assert!(err.contains(&format!("`lwtun -n {n} route show`")), "{err}");

    // a route in the way (found by the check before anything is sent): named by device, with
    // the ip command that shows it and the lwtun command that replaces it
    common::ip(&ns, &["route", "add", "10.20.0.0/16", "dev", "sc0"]);
    let pin = common::PinDir::new("script-route");
    ok(&["tunnel", "load", "--pin", pin.arg()]);
    let add = [
        "-n",
        &n,
        "route",
        "add",
        "--pin",
        pin.arg(),
        "10.20.0.0/16",
        "--dev",
        "sc0",
        "--src",
        "10.77.0.1",
    ];
    let err = fails(&add, 4);
    assert!(err.contains("dev sc0"), "the device by name: {err}");
    assert!(
        err.contains(&format!("`ip -n {n} route show 10.20.0.0/16`")),
        "in the namespace the command acted in: {err}"
    );
    assert!(
        err.contains(&format!("`lwtun -n {n} route replace --pin {}", pin.arg())),
        "{err}"
    );
    speaks_cli(&err);
    let v = fails_json(&add, 4);
    assert_eq!(v["error"]["op"], "add route", "{v}");
    assert!(
        v["error"]["object"].as_str().unwrap().contains("dev sc0"),
        "{v}"
    );
    // the route that was there is untouched
    let routes = common::ip(&ns, &["route", "show", "10.20.0.0/16"]);
    assert!(
        routes.contains("dev sc0") && !routes.contains("encap"),
        "{routes}"
    );
    ok(&["tunnel", "unload", "--pin", pin.arg()]);
}

/// Starts `lwtun ARGS` with stdout piped, reads its first line and closes the pipe, as
/// `| head -1` does; returns the first line and how the command ended.
fn head_1(args: &[&str]) -> (String, Output) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lwtun"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // the reader is dropped here: the rest of the output meets a closed pipe
    let out = child.wait_with_output().unwrap();
    (first, out)
}

#[test]
fn a_reader_that_stops_early_ends_the_command_quietly() {
    require!();
    let pin = common::PinDir::new("script-pipe");
    ok(&["tunnel", "load", "--pin", pin.arg()]);
    // ~200 KB of output: far more than a pipe holds, so the command meets the closed pipe.
    let lines: String = (0..2000)
        .map(|i| {
            format!(
                "10.{}.{}.0/24 remote 192.0.2.{} local 192.0.2.254 encap gre key {i}\n",
                100 + i / 256,
                i % 256,
                1 + i % 200
            )
        })
        .collect();
    let file = std::env::temp_dir().join(format!("lwtun-script-pipe-{}", std::process::id()));
    std::fs::write(&file, lines).unwrap();
    ok(&[
        "peer",
        "add",
        "--pin",
        pin.arg(),
        "-b",
        file.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&file);
    for args in [
        vec!["peer", "show", "--pin", pin.arg()],
        vec!["-j", "peer", "show", "--pin", pin.arg()],
        vec!["peer", "stats", "--pin", pin.arg()],
    ] {
        let (first, out) = head_1(&args);
        assert!(!first.is_empty(), "{args:?} printed");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{args:?} ended with {}: {err}",
            out.status
        );
        assert!(err.is_empty(), "{args:?} said nothing: {err}");
    }
    // Nothing was half-done by the early end: every peer is still there.
    let v: Value = serde_json::from_str(&ok(&["-j", "tunnel", "show", "--pin", pin.arg()]))
        .expect("tunnel show JSON");
    assert_eq!(v["peers_v4"], 2000, "{v}");
    ok(&["tunnel", "unload", "--pin", pin.arg()]);
}

/// The subcommand paths `lwtun --help` lists, at every depth (`peer add`, ...).
fn subcommands(prefix: &[&str]) -> Vec<Vec<String>> {
    let mut args: Vec<&str> = prefix.to_vec();
    args.push("--help");
    let help = ok(&args);
    let mut out = Vec::new();
    let Some((_, rest)) = help.split_once("Commands:\n") else {
        return out;
    };
    for line in rest.lines() {
        if line.trim().is_empty() || !line.starts_with("  ") {
            break;
        }
        let name = line.split_whitespace().next().unwrap();
        if name == "help" {
            continue;
        }
        let mut path: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
        path.push(name.to_string());
        let sub: Vec<&str> = path.iter().map(String::as_str).collect();
        out.extend(subcommands(&sub));
        out.push(path);
    }
    out
}

fn renders(page: &Path) -> Option<String> {
    let out = Command::new("groff")
        // -P-cbou: plain text, no overstrikes for bold and underline
        .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
        .arg(page)
        .output()
        .ok()?;
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && warnings.trim().is_empty(),
        "groff {}: {warnings}",
        page.display()
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn every_subcommand_has_a_man_page_that_renders() {
    let dir = TempDir::new("man");
    let out = lwtun(&["-j", "man", "--out", dir.0.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let written = v["pages"].as_array().unwrap().len();
    let subs = subcommands(&[]);
    assert!(subs.len() > 20, "{subs:?}");
    assert!(subs.contains(&vec!["peer".to_string(), "add".to_string()]));
    for path in &subs {
        let page = dir.0.join(format!("lwtun-{}.1", path.join("-")));
        assert!(
            page.exists(),
            "{} for `lwtun {}`",
            page.display(),
            path.join(" ")
        );
    }
    assert_eq!(written, subs.len() + 1, "lwtun.1 and one per subcommand");
    let top = dir.0.join("lwtun.1");
    let roff = std::fs::read_to_string(&top).unwrap();
    assert!(roff.contains(".SH \"EXIT STATUS\""), "{roff}");
    assert!(
        roff.contains("not_found") && roff.contains("gre_checksum"),
        "{roff}"
    );
    // `lwtun man` prints the same top page
    assert_eq!(ok(&["man"]), roff);
    match renders(&top) {
        Some(text) => {
            assert!(
                text.contains("EXIT STATUS") && text.contains("invalid_input"),
                "{text}"
            );
            for path in &subs {
                renders(&dir.0.join(format!("lwtun-{}.1", path.join("-"))));
            }
        }
        None => eprintln!(
            "SKIPPED rendering the man pages: groff is not installed (generation was checked)"
        ),
    }
}

#[test]
fn the_exit_status_table_is_in_help() {
    let help = ok(&["--help"]);
    for row in [
        "  2   usage",
        "  3   not_found",
        "  4   exists",
        "  7   invalid_input",
        "  10  verifier",
    ] {
        assert!(help.contains(row), "{row:?} in --help: {help}");
    }
}

#[cfg(feature = "capture")]
#[test]
fn a_capture_whose_reader_stops_detaches_and_ends_quietly() {
    require!();
    let net = common::two_hosts();
    let b = net.ns(1).name().to_string();
    // Summaries to stdout, read by a reader that stops after the first (as `| head -1`).
    let mut child = Command::new(env!("CARGO_BIN_EXE_lwtun"))
        .args(["-n", &b, "capture", "--hook", "tc-ingress", "--dev", "to0"])
        .args(["--timeout", "20", "icmp"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(child);
    let mut errors = BufReader::new(stderr);
    let mut started = String::new();
    errors.read_line(&mut started).unwrap();
    assert!(started.contains("capturing on to0"), "{started}");
    let pinger = {
        let ns = net.ns(0).name().to_string();
        let to = net.v4(1).to_string();
        std::thread::spawn(move || {
            Command::new("ip")
                .args(["netns", "exec", &ns, "ping", "-c", "20", "-i", "0.05", &to])
                .output()
        })
    };
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    assert!(first.contains("ICMP") || first.contains("icmp"), "{first}");
    // the reader is gone: the next summary meets a closed pipe
    let status = child.0.wait().unwrap();
    let _ = pinger.join();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut errors, &mut rest).unwrap();
    assert!(status.success(), "ended with {status}: {rest}");
    assert!(!rest.contains("panicked"), "{rest}");
    let tc = lwtun::tc::attached(&net.device(1, "to0"), lwtun::tc::TcDirection::Ingress).unwrap();
    assert!(tc.is_empty(), "the capture detached when it ended: {tc:?}");
}
