//! Running the `lwtun` command in tests: the process, its output checked, its JSON parsed, batch
//! files, and the two-host tunnel the command tests build on (A sends into the tunnel, B
//! decapsulates and answers plainly).
//!
//! Not a module of `common` (the agent's tests include that harness, in a crate without the
//! command): a command test includes it next to it.
//!
//! ```ignore
//! mod common;
//! #[path = "common/cli.rs"]
//! mod cli;
//! use cli::{json, ok};
//! let peers = json(&["peer", "show", "--pin", "/sys/fs/bpf/t0"]);
//! ```

#![allow(dead_code)] // each command test uses part of it

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lwtun::decap::{Decap, DecapPeer};
use serde_json::Value;

/// Runs `lwtun ARGS` (the binary cargo built for these tests) and returns its output.
pub fn lwtun(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lwtun"))
        .args(args)
        .output()
        .expect("run lwtun")
}

/// Runs `lwtun ARGS`, which must succeed, and returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = lwtun(args);
    assert!(
        out.status.success(),
        "lwtun {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `lwtun -j ARGS`, which must succeed, and parses its stdout.
pub fn json(args: &[&str]) -> Value {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let out = ok(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("lwtun {all:?}: {e}: {out}"))
}

/// Runs `lwtun ARGS`, which must fail (with any code), and returns its stderr.
pub fn fails(args: &[&str]) -> String {
    let out = lwtun(args);
    assert!(
        !out.status.success(),
        "lwtun {args:?} should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// Runs `lwtun ARGS`, which must fail with exit code `code`, and returns its stderr.
pub fn fails_with(args: &[&str], code: i32) -> String {
    let out = lwtun(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "lwtun {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// A file under the temp dir (a batch file, say), removed when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// Writes `text` to a file named after this process and `name`.
    pub fn new(name: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("lwtun-cli-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    /// The path, as a command-line argument.
    pub fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The records of a little-endian pcap file (what `lwtun capture -w` writes), after checking
/// its link type when one is given.
pub fn pcap_records(bytes: &[u8], link_type: Option<u32>) -> Vec<Vec<u8>> {
    assert!(
        bytes.len() >= 24,
        "a pcap file starts with a 24-byte header"
    );
    if let Some(link_type) = link_type {
        assert_eq!(
            u32::from_le_bytes(bytes[20..24].try_into().unwrap()),
            link_type
        );
    }
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let incl = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        out.push(bytes[at + 16..at + 16 + incl].to_vec());
        at += 16 + incl;
    }
    assert_eq!(at, bytes.len(), "whole records");
    out
}

/// `bpftool -j map dump pinned MAP`, parsed.
pub fn bpftool_dump(map: &Path) -> Value {
    bpftool(&["map", "dump", "pinned"], map)
}

/// The id of the program pinned at `path` (`bpftool prog show pinned`).
pub fn pinned_program_id(path: &Path) -> u64 {
    bpftool(&["prog", "show", "pinned"], path)["id"]
        .as_u64()
        .unwrap()
}

fn bpftool(args: &[&str], path: &Path) -> Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .arg(path)
        .output()
        .expect("run bpftool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Hosts A and B ([`crate::common::two_hosts`]) with their inner addresses (A 10.30.0.1, B 10.20.0.2),
/// and B's answers to A's inner address routed back plainly.
pub fn hosts() -> crate::common::Line {
    let net = crate::common::two_hosts();
    crate::common::ip(net.ns(0), &["addr", "add", "10.30.0.1/32", "dev", "lo"]);
    crate::common::ip(net.ns(1), &["addr", "add", "10.20.0.2/32", "dev", "lo"]);
    crate::common::ip(
        net.ns(1),
        &["route", "add", "10.30.0.1/32", "via", "10.77.0.1"],
    );
    net
}

/// [`hosts`], B decapsulating what comes from A (held by the test process, attached in B).
pub fn setup() -> (crate::common::Line, Decap) {
    let net = hosts();
    let mut decap = Decap::load().unwrap();
    decap.add_local("10.77.0.2".parse().unwrap()).unwrap();
    decap
        .add_peer(DecapPeer::host("10.77.0.1".parse().unwrap()))
        .unwrap();
    decap.attach(&net.device(1, "to0")).unwrap();
    (net, decap)
}

/// Pings B's inner address from A's, `count` times 0.1 s apart.
pub fn ping_b(net: &crate::common::Line, count: u32) -> crate::common::Ping {
    crate::common::ping_with(
        net.ns(0),
        "10.20.0.2".parse().unwrap(),
        count,
        &["-I", "10.30.0.1", "-i", "0.1", "-W", "1"],
    )
}

/// Runs `lwtun ARGS` to success and returns the pid it ran as (the writer a peer journal names).
pub fn lwtun_pid(args: &[&str]) -> u32 {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lwtun"))
        .args(args)
        .spawn()
        .expect("run lwtun");
    let pid = child.id();
    assert!(child.wait().unwrap().success(), "lwtun {args:?} failed");
    pid
}
